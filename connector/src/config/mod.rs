//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Responsible for: the validated configuration's types and its entry points
//! ([`Config::load`], [`Config::from_str`]); the file is read as raw TOML types
//! (`raw`), validated and resolved into a [`Config`] (`resolve`), and each problem is
//! reported as a [`ConfigError`] that names the file, the 1-based line and the key path
//! (`error`); unknown keys are refused everywhere and relative paths resolve against the
//! configuration file's folder.
//! Must never: do network I/O, resolve a password source (that happens at connect
//! time), or quote a password in an error message or a Debug string.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::oauth2::TokenUrl;
use crate::pin::Fingerprint;
use crate::secret::SecretSource;
use raw::RawConfig;
use resolve::Ctx;

mod error;
mod files;
mod policy;
mod raw;
mod resolve;
mod values;

pub use error::ConfigError;
pub use policy::{Policy, SizeRule, SBS_DEFAULT_LIMIT};
pub use popbridge_proto::pop3::AuthMethod;
pub use values::{parse_duration, parse_size};

/// How long the ledger remembers a message after it left the server (`ledger_retention`).
pub const DEFAULT_LEDGER_RETENTION: Duration = Duration::from_secs(90 * 86_400);

/// The validated configuration of one connector instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The configuration file (as given; used in messages and to resolve relative paths).
    pub path: PathBuf,
    /// Where the ledger, spool and quarantine live.
    pub state_dir: PathBuf,
    /// Behaviour profile.
    pub profile: Profile,
    /// How many accounts are fetched at the same time.
    pub parallel_accounts: usize,
    /// Whether a `Received:` trace header is prepended to each message.
    pub received_header: bool,
    /// Where messages are delivered: an SMTP server or a pickup folder.
    pub transport: Transport,
    /// Size, count and failure limits.
    pub limits: Limits,
    /// Network timeouts.
    pub timeouts: Timeouts,
    /// The POP3 mailboxes to fetch, in file order (at least one).
    pub accounts: Vec<Account>,
    /// The daemon's time between passes (5 minutes to 24 hours).
    pub interval: Duration,
    /// The most a scheduled pass is delayed at random, so many connectors do not all
    /// connect at the same second.
    pub jitter: Duration,
    /// Where the daemon serves Prometheus metrics (`GET /metrics`), when set. Loopback
    /// unless `metrics_allow_non_loopback = true`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Limits the Exchange server applies after accepting a message (not visible over SMTP).
    pub exchange: Exchange,
    /// How long the ledger keeps the row of a message after complete listings stopped
    /// showing it (or, without a UID, after its deletion was confirmed); at least a day.
    pub ledger_retention: Duration,
    /// Several instances over one PostgreSQL (`[cluster]`): leases on the accounts and
    /// the shared ledger, instead of the state directory's ledger.
    pub cluster: Option<ClusterSettings>,
}

/// The `[cluster]` section: where the shared database is, and how this instance holds
/// accounts in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The connection string (a `postgres://` URL or `key=value` pairs): a unix socket
    /// or a loopback address, without a password.
    pub database: String,
    /// The database password, when it needs one.
    pub password: Option<SecretSource>,
    /// This instance's name in the leases (default: the host name and the process id).
    pub instance: Option<String>,
    /// How long a lease lasts unless renewed; the pass stops acting a quarter earlier.
    pub lease_ttl: Duration,
    /// The most POP3 sessions the instances of the cluster hold on one server at once
    /// (every instance must give the same number).
    pub server_sessions: u32,
}

/// Limits Exchange applies after it accepted a message over SMTP (the categoriser): they
/// bounce mail with an NDR instead of refusing it, which is how SBS customers lost mail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exchange {
    /// The organisation-wide receive limit (`Set-TransportConfig -MaxReceiveSize`).
    pub organization_receive_limit: ReceiveLimit,
}

/// A receive limit Exchange applies after it accepted a message, as the configuration
/// declares it. SMTP cannot reveal it, so one left out is unknown, not unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReceiveLimit {
    /// Not in the configuration: unknown (a pass applies none; `check-limits` says so).
    #[default]
    Undeclared,
    /// Declared as `"unlimited"`.
    Unlimited,
    /// Declared as this many octets.
    Octets(u64),
}

impl ReceiveLimit {
    /// The limit in octets, when one is declared (`None` for unlimited or undeclared).
    pub fn octets(self) -> Option<u64> {
        match self {
            Self::Octets(n) => Some(n),
            Self::Undeclared | Self::Unlimited => None,
        }
    }

    /// True when the configuration says what the limit is (a size or `"unlimited"`).
    pub fn is_declared(self) -> bool {
        !matches!(self, Self::Undeclared)
    }
}

/// The default `pickup_mode`: readable by the pickup service whatever its user; protect
/// the pickup folder itself when others must not read mail in it.
pub const DEFAULT_PICKUP_MODE: u32 = 0o644;

/// Routing of a catch-all ("global") mailbox: one POP3 account for many local users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchAll {
    /// Domains whose addresses are local (any local part).
    pub local_domains: Vec<String>,
    /// Individual local addresses (outside the local domains).
    pub local_addresses: Vec<String>,
}

/// Behaviour profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Popbridge's own behaviour.
    #[default]
    Default,
    /// Reproduces the SBS 2008 POP3 connector's known behaviour, for side-by-side comparison.
    Sbs2008,
}

/// Where messages are delivered (`[transport]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Submitted over SMTP (`kind = "smtp"`, the default).
    Smtp(SmtpTransport),
    /// Written as `.eml` files into an SMTP service's pickup folder (`kind = "pickup"`,
    /// the SBS 2003 path).
    Pickup(PickupTransport),
}

/// The SMTP server messages are submitted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTransport {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The name sent in EHLO/HELO (and written in the `Received:` header).
    pub helo: String,
    /// Whether STARTTLS is required.
    pub starttls: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (testing only).
    pub tls_accept_invalid_certs: bool,
    /// Trust only the server certificate with this SHA-256 fingerprint.
    pub tls_fingerprint: Option<Fingerprint>,
}

/// The pickup folder messages are written into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickupTransport {
    /// The pickup folder.
    pub dir: PathBuf,
    /// Where messages that cannot be written go.
    pub failed_dir: PathBuf,
    /// The permission bits of each file published into the pickup folder: the SMTP
    /// service that picks them up must be able to read them.
    pub mode: u32,
    /// The name written in the `Received:` header (`helo`).
    pub helo: String,
}

impl Transport {
    /// The name this host goes by: sent in EHLO/HELO and written in the `Received:` header.
    pub fn helo(&self) -> &str {
        match self {
            Self::Smtp(t) => &t.helo,
            Self::Pickup(t) => &t.helo,
        }
    }

    /// The SMTP server, when messages are submitted over SMTP.
    pub fn smtp(&self) -> Option<&SmtpTransport> {
        match self {
            Self::Smtp(t) => Some(t),
            Self::Pickup(_) => None,
        }
    }

    /// The SMTP server to change, when messages are submitted over SMTP.
    pub fn smtp_mut(&mut self) -> Option<&mut SmtpTransport> {
        match self {
            Self::Smtp(t) => Some(t),
            Self::Pickup(_) => None,
        }
    }

    /// The pickup folder, when messages are written into one.
    pub fn pickup(&self) -> Option<&PickupTransport> {
        match self {
            Self::Smtp(_) => None,
            Self::Pickup(t) => Some(t),
        }
    }
}

/// Size, count and failure limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message submitted, in octets; `None` = automatic (the SMTP server's SIZE).
    pub max_message_size: Option<u64>,
    /// Most messages handled per account per pass.
    pub max_messages_per_session: usize,
    /// Permanent failures after which a message is quarantined.
    pub poison_after: u32,
    /// Domain appended to a bare local part in the return path.
    pub default_domain: Option<String>,
    /// Reverse path used when none is usable; `""` is the null sender `<>`.
    pub fallback_sender: String,
    /// Delete a quarantined message from the POP3 server.
    pub quarantine_delete: bool,
    /// The SMTP server's protocol-error limit per session (Exchange: 5).
    pub smtp_max_protocol_errors: u32,
    /// Reconnects allowed per pass after a 421 or a dropped connection.
    pub smtp_reconnects: u32,
    /// Messages larger than this are spooled to a temporary file under `state_dir`.
    pub memory_threshold: u64,
    /// The hard ceiling on what one message may take to download (and spool), whatever
    /// the servers advertise or LIST says.
    pub max_download_size: u64,
}

/// Network timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection (TCP and TLS).
    pub connect: Duration,
    /// Each command and its reply.
    pub command: Duration,
    /// A whole message transfer.
    pub data: Duration,
}

/// One POP3 mailbox and where its mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Unique name, `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// POP3 server host name or IP address.
    pub host: String,
    /// POP3 server port.
    pub port: u16,
    /// How the POP3 connection is protected.
    pub tls: TlsMode,
    /// How the connector authenticates.
    pub auth: AuthMethod,
    /// The POP3 user name.
    pub username: String,
    /// Where the password (or token) comes from.
    pub secret: SecretSource,
    /// The envelope recipient of every message of this mailbox (for a catch-all account:
    /// of the messages no local recipient was found for, e.g. the postmaster).
    pub deliver_to: String,
    /// The Exchange mailbox's receive limit (`MaxReceiveSize`), applied after acceptance.
    pub mailbox_receive_limit: ReceiveLimit,
    /// Catch-all routing by the message's recipient headers, when set.
    pub catch_all: Option<CatchAll>,
    /// Keep messages on the POP3 server after delivery.
    pub leave_on_server: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (testing only).
    pub tls_accept_invalid_certs: bool,
    /// Trust only the server certificate with this SHA-256 fingerprint.
    pub tls_fingerprint: Option<Fingerprint>,
    /// Allow a password over an unencrypted connection.
    pub allow_plaintext: bool,
    /// The name the server certificate is verified against (default: `host`).
    pub tls_server_name: Option<String>,
    /// Check each retrieved message against its LIST size (the default); off for a server
    /// that lists estimated sizes, which then also retrieves one message at a time.
    pub verify_list_size: bool,
    /// OAuth2 for XOAUTH2: where the access token comes from (then `secret` is unused
    /// and empty).
    pub oauth2: Option<OAuth2>,
    /// This account's time between the daemon's passes, overriding the global
    /// `interval` (5 minutes to 24 hours).
    pub interval: Option<Duration>,
}

/// An account's OAuth2 client (the refresh-token grant, RFC 6749 §6): the access token
/// XOAUTH2 sends comes from `token_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2 {
    /// The provider's token endpoint (`https` only).
    pub token_url: TokenUrl,
    /// The client (application) id.
    pub client_id: String,
    /// The client secret; `None` for a public client.
    pub client_secret: Option<SecretSource>,
    /// The refresh token as configured (a rotated one stored under `state_dir` takes
    /// precedence while this one stays the same).
    pub refresh_token: SecretSource,
    /// The scope to ask for, when set.
    pub scope: Option<String>,
}

/// How a POP3 connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum TlsMode {
    /// Plain text.
    #[serde(rename = "none")]
    None,
    /// Plain text upgraded with STLS (RFC 2595).
    #[serde(rename = "starttls")]
    StartTls,
    /// TLS from the first byte (port 995).
    #[serde(rename = "implicit")]
    Implicit,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Default => "default",
            Self::Sbs2008 => "sbs2008",
        })
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::StartTls => "starttls",
            Self::Implicit => "implicit",
        })
    }
}

impl Config {
    /// Reads and validates a configuration file, including the CA files it names (which
    /// must exist and hold a certificate).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::from_str(&text, path)?;
        config.check_files()?;
        Ok(config)
    }

    /// Parses and validates configuration text; `path` is used in messages and to
    /// resolve relative paths (against its folder).
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx {
            path,
            text,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let raw = RawConfig::deserialize(toml::Deserializer::new(text))
            .map_err(|e| ctx.toml_error(&e))?;
        ctx.resolve(raw)
    }

    /// The account with this name.
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The daemon's time between passes of `account`: its own `interval`, else the
    /// global one.
    pub fn interval_of(&self, account: &Account) -> Duration {
        account.interval.unwrap_or(self.interval)
    }
}

#[cfg(test)]
pub(crate) mod tests;
