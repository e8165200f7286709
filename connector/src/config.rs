//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Responsible for: parsing `popbridge.toml` with unknown keys refused everywhere,
//! applying defaults, validating every value, resolving relative paths against the
//! configuration file's folder, and reporting each problem as a [`ConfigError`] that
//! names the file, the 1-based line and the key path.
//! Must never: do network I/O, resolve a password source (that happens at connect
//! time), or quote a password in an error message or a Debug string.

use std::fmt;
use std::fmt::Write as _;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use popbridge_proto::pop3::AuthMethod;
use popbridge_proto::smtp::{AddressError, Mailbox};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::oauth2::TokenUrl;
use crate::pin::Fingerprint;

use crate::secret::{Secret, SecretSource};

const DEFAULT_PARALLEL_ACCOUNTS: usize = 4;
const DEFAULT_SMTP_PORT: u16 = 25;
const DEFAULT_HELO: &str = "popbridge.localdomain";
const DEFAULT_MAX_MESSAGES_PER_SESSION: usize = 500;
const DEFAULT_POISON_AFTER: u32 = 3;
const DEFAULT_SMTP_MAX_PROTOCOL_ERRORS: u32 = 5;
const DEFAULT_SMTP_RECONNECTS: u32 = 3;
const DEFAULT_MEMORY_THRESHOLD: u64 = 1024 * 1024;
/// The largest message ever downloaded, whatever the servers say: Office 365's largest
/// message (150 MB) with room to spare. A body that runs past it is never spooled further.
const DEFAULT_MAX_DOWNLOAD_SIZE: u64 = 256 * 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);
const MIN_INTERVAL: Duration = Duration::from_secs(5 * 60);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How long the ledger remembers a message after it left the server (`ledger_retention`).
pub const DEFAULT_LEDGER_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// The shortest `ledger_retention` accepted.
const MIN_LEDGER_RETENTION: Duration = Duration::from_secs(86_400);
const DEFAULT_JITTER: Duration = Duration::from_secs(30);
const PASSWORD_KEYS: &str = "password, password_env, password_file, password_command";
/// Keys whose values are secrets: an error about one never quotes its value.
const SECRET_KEYS: [&str; 3] = ["password", "refresh_token", "client_secret"];

// ---------------------------------------------------------------------------------------
// Public, validated configuration
// ---------------------------------------------------------------------------------------

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
    /// The SMTP server messages are submitted to.
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

/// Where messages are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryKind {
    /// Submitted over SMTP to `host:port`.
    Smtp,
    /// Written as `.eml` files into an SMTP service's pickup folder (the SBS 2003 path).
    Pickup {
        /// The pickup folder.
        dir: PathBuf,
        /// Where messages that cannot be written go.
        failed_dir: PathBuf,
        /// The permission bits of each file published into the pickup folder: the SMTP
        /// service that picks them up must be able to read them.
        mode: u32,
    },
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

/// The SMTP server messages are submitted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The name sent in EHLO/HELO.
    pub helo: String,
    /// Whether STARTTLS is required.
    pub starttls: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (testing only).
    pub tls_accept_invalid_certs: bool,
    /// Trust only the server certificate with this SHA-256 fingerprint.
    pub tls_fingerprint: Option<Fingerprint>,
    /// SMTP or a pickup folder.
    pub delivery: DeliveryKind,
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

/// A configuration problem; Display reads `FILE:LINE: KEY: MESSAGE`.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value is not acceptable.
    #[error("{}", describe(path, *line, key.as_deref(), message))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the offending key or value, when known.
        line: Option<usize>,
        /// Key path such as `account[0].tls`, when known.
        key: Option<String>,
        /// What is wrong (never quotes a password).
        message: String,
    },
    /// A file holding a secret can be read by other users.
    #[error(
        "{} holds {holds} and is readable by other users (mode {mode:04o}): run chmod 600 {}, \
         or keep the secret in a password_file of mode 0600, in password_env or in \
         password_command; where file modes mean nothing (some containers), pass \
         --allow-insecure-config-mode",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file (the configuration, or a `password_file`).
        path: PathBuf,
        /// What it holds, e.g. `the password of account "sales"`.
        holds: String,
        /// Its permission bits.
        mode: u32,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } | Self::Exposed { .. } => None,
            Self::Invalid { line, .. } => *line,
        }
    }

    /// The key path the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Exposed { .. } => None,
            Self::Invalid { key, .. } => key.as_deref(),
        }
    }
}

fn describe(path: &Path, line: Option<usize>, key: Option<&str>, message: &str) -> String {
    let mut out = path.display().to_string();
    if let Some(line) = line {
        let _ = write!(out, ":{line}");
    }
    if let Some(key) = key {
        let _ = write!(out, ": {key}");
    }
    let _ = write!(out, ": {message}");
    out
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

    /// Checks the files the configuration names that must be there before any pass: every
    /// `ca_file` (readable, holding at least one certificate).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let t = &self.transport;
        let named = std::iter::once(("transport.ca_file".to_string(), t.ca_file.as_ref())).chain(
            self.accounts
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("account[{i}].ca_file"), a.ca_file.as_ref())),
        );
        for (key, file) in named {
            let Some(file) = file else { continue };
            if let Err(e) = crate::net::client_config(Some(file), false, None) {
                return Err(ConfigError::Invalid {
                    path: self.path.clone(),
                    line: None,
                    key: Some(key),
                    message: format!("{e}; fix the path or remove the key"),
                });
            }
        }
        Ok(())
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

// ---------------------------------------------------------------------------------------
// Sizes and durations
// ---------------------------------------------------------------------------------------

/// Parses a size: `"10MB"`, `"512 kb"`, `"1GB"`, `"123B"`, `"123"` (binary units:
/// 1 KB = 1024 octets; also K/KiB, M/MiB, G/GiB, T/TB/TiB), case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: &str = "use B, KB, MB or GB";
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a whole number with an optional unit ({UNITS})"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "invalid size {s:?}: fractions are not supported, use a smaller unit"
        ));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let unit = unit.trim_start();
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} ({UNITS})"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Parses a duration: `"500ms"`, `"30s"`, `"15m"`, `"2h"`, `"1d"`, or a bare number of
/// seconds (`"30"`), case-insensitive, optional space before the unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "use ms, s, m, h or d";
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a whole number with an optional unit ({UNITS})"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "invalid duration {s:?}: fractions are not supported, use a smaller unit"
        ));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
    let unit = unit.trim_start();
    let too_large = || format!("invalid duration {s:?}: too large");
    match unit.to_ascii_lowercase().as_str() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        "d" => n
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        _ => Err(format!(
            "invalid duration {s:?}: unknown unit {unit:?} ({UNITS})"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Raw, as written in the file
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document")]
struct RawConfig {
    state_dir: Option<Spanned<String>>,
    profile: Option<Profile>,
    parallel_accounts: Option<Spanned<Int>>,
    received_header: Option<bool>,
    transport: Option<RawTransport>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    account: Vec<Spanned<RawAccount>>,
    interval: Option<Spanned<DurationValue>>,
    jitter: Option<Spanned<DurationValue>>,
    ledger_retention: Option<Spanned<DurationValue>>,
    #[serde(default)]
    exchange: RawExchange,
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    metrics_allow_non_loopback: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "an [exchange] table")]
struct RawExchange {
    organization_receive_limit: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawDeliveryKind {
    Smtp,
    Pickup,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a catch_all table")]
struct RawCatchAll {
    #[serde(default)]
    local_domains: Vec<Spanned<String>>,
    #[serde(default)]
    local_addresses: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [transport] table")]
struct RawTransport {
    kind: Option<RawDeliveryKind>,
    host: Option<Spanned<String>>,
    pickup_dir: Option<Spanned<String>>,
    failed_dir: Option<Spanned<String>>,
    pickup_mode: Option<Spanned<String>>,
    port: Option<Spanned<Int>>,
    helo: Option<Spanned<String>>,
    #[serde(default)]
    starttls: bool,
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    tls_accept_invalid_certs: bool,
    tls_fingerprint: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [limits] table")]
struct RawLimits {
    max_message_size: Option<Spanned<SizeValue>>,
    max_messages_per_session: Option<Spanned<Int>>,
    poison_after: Option<Spanned<Int>>,
    default_domain: Option<Spanned<String>>,
    fallback_sender: Option<Spanned<String>>,
    #[serde(default)]
    quarantine_delete: bool,
    smtp_max_protocol_errors: Option<Spanned<Int>>,
    smtp_reconnects: Option<Spanned<Int>>,
    memory_threshold: Option<Spanned<SizeValue>>,
    max_download_size: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a [timeouts] table")]
struct RawTimeouts {
    connect: Option<Spanned<DurationValue>>,
    command: Option<Spanned<DurationValue>>,
    data: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[account]] table")]
struct RawAccount {
    name: Spanned<String>,
    host: Spanned<String>,
    port: Option<Spanned<Int>>,
    tls: Option<TlsMode>,
    auth: Option<AuthMethod>,
    username: Spanned<String>,
    password: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_command: Option<Spanned<String>>,
    deliver_to: Spanned<String>,
    mailbox_receive_limit: Option<Spanned<SizeValue>>,
    catch_all: Option<Spanned<RawCatchAll>>,
    #[serde(default)]
    leave_on_server: bool,
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    tls_accept_invalid_certs: bool,
    tls_fingerprint: Option<Spanned<String>>,
    #[serde(default)]
    allow_plaintext: bool,
    tls_server_name: Option<Spanned<String>>,
    verify_list_size: Option<bool>,
    oauth2: Option<Spanned<RawOAuth2>>,
    interval: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an oauth2 table")]
struct RawOAuth2 {
    token_url: Spanned<String>,
    client_id: Spanned<String>,
    client_secret: Option<Spanned<String>>,
    client_secret_env: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<String>>,
    client_secret_command: Option<Spanned<String>>,
    refresh_token: Option<Spanned<String>>,
    refresh_token_env: Option<Spanned<String>>,
    refresh_token_file: Option<Spanned<String>>,
    refresh_token_command: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
}

/// A TOML integer, with a readable type error.
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom("integer too large"))
            }
        }
        d.deserialize_i64(V)
    }
}

/// An integer or a string, as sizes and durations may be written.
enum Scalar {
    Int(i64),
    Text(String),
}

struct ScalarVisitor(&'static str);

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
}

struct SizeValue(Scalar);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(
            "a size such as \"10MB\" or a number of octets",
        ))
        .map(SizeValue)
    }
}

struct DurationValue(Scalar);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(
            "a duration such as \"30s\" or a number of seconds",
        ))
        .map(DurationValue)
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    base: PathBuf,
}

type Res<T> = Result<T, ConfigError>;

impl Ctx<'_> {
    /// The byte range of a `[name]` table header line, if the file has one.
    fn table_header(&self, name: &str) -> Option<Range<usize>> {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim();
            if t.strip_prefix('[')
                .and_then(|t| t.split(']').next())
                .map(str::trim)
                == Some(name)
                && !t.starts_with("[[")
            {
                return Some(offset..offset + line.len());
            }
            offset += line.len();
        }
        None
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            key,
            message,
        }
    }

    fn at<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(Some(value.span()), Some(key.to_string()), message.into())
    }

    fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let mut message = e.message().trim().lines().collect::<Vec<_>>().join("; ");
        let mut key = span.as_ref().and_then(|s| key_path_at(self.text, s.start));
        if let Some(field) = backticked(&message, "missing field ") {
            key = Some(match key {
                Some(k) => format!("{k}.{field}"),
                None => field,
            });
            message = "missing required key".to_string();
        } else if let Some(rest) = message.strip_prefix("unknown field ") {
            message = format!("unknown key {rest}");
        } else if let Some(table) = message
            .strip_prefix("invalid length ")
            .and_then(|m| m.split_once(", expected "))
            .map(|(_, t)| t.to_string())
            .filter(|t| t.ends_with(" table"))
        {
            // A table written as an array.
            message = format!("invalid type: array, expected {table}");
        } else if message.contains("struct Raw") {
            // serde's wording for a table given as an array names our private types.
            message = "invalid type, expected a table".to_string();
        } else if message == "wanted string or table" {
            message = "invalid type, expected a string".to_string();
        } else if key.as_deref() == Some("account") && message.starts_with("invalid type: map") {
            message = "accounts are written as [[account]] (an array of tables)".to_string();
        }
        let on_password = key.as_deref().is_some_and(|k| {
            SECRET_KEYS
                .iter()
                .any(|s| k == *s || k.ends_with(&format!(".{s}")))
        }) || span
            .as_ref()
            .is_some_and(|s| is_password_line(self.text, s.start));
        let harmless = ["unknown key", "missing required key", "duplicate key"]
            .iter()
            .any(|p| message.starts_with(p));
        if on_password && !harmless {
            message = "invalid secret value (not shown); expected a string".to_string();
        }
        self.error(span, key, quote_backticks(&message))
    }

    fn string(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        if v.get_ref().trim().is_empty() {
            return Err(self.at(v, key, "must not be empty"));
        }
        Ok(v.get_ref().clone())
    }

    fn host(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        let host = self.string(v, key)?;
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.at(v, key, "must be a host name or IP address"));
        }
        Ok(host)
    }

    /// An optional integer within `range` (inclusive), converted to the field's type.
    fn int<T: TryFrom<i64>>(
        &self,
        v: Option<&Spanned<Int>>,
        key: &str,
        range: RangeInclusive<i64>,
        default: T,
    ) -> Res<T> {
        let Some(v) = v else { return Ok(default) };
        let n = v.get_ref().0;
        let (lo, hi) = (*range.start(), *range.end());
        match T::try_from(n) {
            Ok(value) if range.contains(&n) => Ok(value),
            _ => Err(self.at(v, key, format!("must be between {lo} and {hi} (got {n})"))),
        }
    }

    fn size(&self, v: &Spanned<SizeValue>, key: &str) -> Res<u64> {
        match &v.get_ref().0 {
            Scalar::Int(n) => {
                u64::try_from(*n).map_err(|_| self.at(v, key, "must not be negative"))
            }
            Scalar::Text(s) => parse_size(s).map_err(|m| self.at(v, key, m)),
        }
    }

    /// A receive limit: a size, `"unlimited"`, or left out (undeclared).
    fn receive_limit(&self, v: Option<&Spanned<SizeValue>>, key: &str) -> Res<ReceiveLimit> {
        match v {
            None => Ok(ReceiveLimit::Undeclared),
            Some(v) if matches!(&v.get_ref().0, Scalar::Text(s) if s.trim().eq_ignore_ascii_case("unlimited")) => {
                Ok(ReceiveLimit::Unlimited)
            }
            Some(v) => match self.size(v, key)? {
                0 => Err(self.at(v, key, "must be greater than 0 (or \"unlimited\")")),
                n => Ok(ReceiveLimit::Octets(n)),
            },
        }
    }

    fn duration(
        &self,
        v: Option<&Spanned<DurationValue>>,
        key: &str,
        default: Duration,
    ) -> Res<Duration> {
        let Some(v) = v else { return Ok(default) };
        let d = match &v.get_ref().0 {
            Scalar::Int(n) => Duration::from_secs(
                u64::try_from(*n).map_err(|_| self.at(v, key, "must not be negative"))?,
            ),
            Scalar::Text(s) => parse_duration(s).map_err(|m| self.at(v, key, m))?,
        };
        if d.is_zero() {
            return Err(self.at(v, key, "must be greater than 0"));
        }
        Ok(d)
    }

    fn domain(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        let d = v.get_ref();
        match Mailbox::parse(&format!("x@{d}")) {
            Ok(_) => Ok(d.clone()),
            Err(AddressError::Invalid { reason, .. }) => {
                Err(self.at(v, key, format!("invalid domain {d:?}: {reason}")))
            }
            Err(_) => Err(self.at(v, key, format!("invalid domain {d:?}"))),
        }
    }

    fn mailbox(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        match Mailbox::parse(v.get_ref()) {
            Ok(_) => Ok(v.get_ref().clone()),
            Err(e) => Err(self.at(
                v,
                key,
                format!("{e}; a full address local@domain is required"),
            )),
        }
    }

    fn resolve(&self, raw: RawConfig) -> Res<Config> {
        let state_dir = match &raw.state_dir {
            Some(v) => self.relative(&self.string(v, "state_dir")?),
            None => {
                return Err(self.error(
                    None,
                    Some("state_dir".into()),
                    "missing required key".into(),
                ))
            }
        };
        let parallel_accounts = self.int(
            raw.parallel_accounts.as_ref(),
            "parallel_accounts",
            1..=64,
            DEFAULT_PARALLEL_ACCOUNTS,
        )?;
        let Some(transport) = &raw.transport else {
            return Err(self.error(None, None, "missing [transport] section".into()));
        };
        let transport = self.transport(transport, &state_dir)?;
        let limits = self.limits(&raw.limits)?;
        let interval = self.interval(raw.interval.as_ref(), "interval")?;
        let metrics_listen = match &raw.metrics_listen {
            Some(v) => Some(self.metrics_listen(v, raw.metrics_allow_non_loopback)?),
            None => None,
        };
        let jitter = match &raw.jitter {
            Some(v) if matches!(&v.get_ref().0, Scalar::Int(0)) => Duration::ZERO,
            Some(v) if matches!(&v.get_ref().0, Scalar::Text(t) if t.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0") => {
                Duration::ZERO
            }
            other => self.duration(other.as_ref(), "jitter", DEFAULT_JITTER)?,
        };
        if jitter > interval / 2 {
            return Err(self.error(
                None,
                Some("jitter".into()),
                "must be at most half the interval".into(),
            ));
        }
        let ledger_retention = self.duration(
            raw.ledger_retention.as_ref(),
            "ledger_retention",
            DEFAULT_LEDGER_RETENTION,
        )?;
        if let Some(v) = &raw.ledger_retention {
            if ledger_retention < MIN_LEDGER_RETENTION {
                return Err(self.at(v, "ledger_retention", "must be at least 1 day"));
            }
        }
        let exchange = Exchange {
            organization_receive_limit: self.receive_limit(
                raw.exchange.organization_receive_limit.as_ref(),
                "exchange.organization_receive_limit",
            )?,
        };
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            connect: self.duration(
                t.connect.as_ref(),
                "timeouts.connect",
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            command: self.duration(
                t.command.as_ref(),
                "timeouts.command",
                DEFAULT_COMMAND_TIMEOUT,
            )?,
            data: self.duration(t.data.as_ref(), "timeouts.data", DEFAULT_DATA_TIMEOUT)?,
        };
        if raw.account.is_empty() {
            return Err(self.error(
                None,
                Some("account".into()),
                "at least one [[account]] is required".into(),
            ));
        }
        let mut accounts: Vec<Account> = Vec::with_capacity(raw.account.len());
        let mut first_lines: Vec<(String, usize)> = Vec::new();
        for (i, raw_account) in raw.account.into_iter().enumerate() {
            let prefix = format!("account[{i}]");
            let name_span = raw_account.get_ref().name.span();
            let account = self.account(raw_account, &prefix)?;
            let folded = account.name.to_ascii_lowercase();
            if let Some((_, line)) = first_lines.iter().find(|(n, _)| *n == folded) {
                return Err(self.error(
                    Some(name_span),
                    Some(format!("{prefix}.name")),
                    format!(
                        "duplicate account name {:?} (first defined at line {line})",
                        account.name
                    ),
                ));
            }
            first_lines.push((folded, self.line_of(name_span.start)));
            if account.interval.is_some_and(|i| jitter > i / 2) {
                return Err(self.error(
                    None,
                    Some(format!("{prefix}.interval")),
                    "must be at least twice the jitter".into(),
                ));
            }
            accounts.push(account);
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            state_dir,
            profile: raw.profile.unwrap_or_default(),
            parallel_accounts,
            received_header: raw.received_header.unwrap_or(true),
            transport,
            limits,
            timeouts,
            accounts,
            interval,
            jitter,
            exchange,
            metrics_listen,
            ledger_retention,
        })
    }

    /// A time between passes (`key` names it): 5 minutes to 24 hours, default 15 minutes.
    fn interval(&self, v: Option<&Spanned<DurationValue>>, key: &str) -> Res<Duration> {
        let interval = self.duration(v, key, DEFAULT_INTERVAL)?;
        if let Some(v) = v {
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
                return Err(self.at(
                    v,
                    key,
                    "must be between 5 minutes and 24 hours (as the SBS connector allowed)",
                ));
            }
        }
        Ok(interval)
    }

    /// `metrics_listen`: an `address:port`, on loopback unless explicitly allowed.
    fn metrics_listen(&self, v: &Spanned<String>, allow_remote: bool) -> Res<std::net::SocketAddr> {
        let text = v.get_ref().trim();
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            self.at(
                v,
                "metrics_listen",
                format!("invalid address {text:?}: expected an IP address and port such as \"127.0.0.1:9725\""),
            )
        })?;
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(self.at(
                v,
                "metrics_listen",
                format!(
                    "{addr} is not a loopback address: metrics describe your mail flow to \
                     whoever can reach them; use 127.0.0.1:{port} (a reverse proxy can \
                     publish it), or set metrics_allow_non_loopback = true",
                    port = addr.port()
                ),
            ));
        }
        Ok(addr)
    }

    fn transport(&self, raw: &RawTransport, state_dir: &Path) -> Res<Transport> {
        // The `[transport]` header's position, for keys missing from it.
        let span = self.table_header("transport");
        let kind = raw.kind.unwrap_or(RawDeliveryKind::Smtp);
        let delivery = match kind {
            RawDeliveryKind::Smtp => DeliveryKind::Smtp,
            RawDeliveryKind::Pickup => {
                let Some(dir) = &raw.pickup_dir else {
                    return Err(self.error(
                        span,
                        Some("transport.pickup_dir".into()),
                        "missing required key (kind = \"pickup\")".into(),
                    ));
                };
                let dir = self.relative(&self.string(dir, "transport.pickup_dir")?);
                let failed_dir = match &raw.failed_dir {
                    Some(v) => self.relative(&self.string(v, "transport.failed_dir")?),
                    None => state_dir.join("failed"),
                };
                let mode = match &raw.pickup_mode {
                    Some(v) => parse_mode(v.get_ref()).ok_or_else(|| {
                        self.at(
                            v,
                            "transport.pickup_mode",
                            format!(
                                "{:?} is not a file mode: three or four octal digits with the \
                                 owner's read and write bits, such as \"0640\"",
                                v.get_ref()
                            ),
                        )
                    })?,
                    None => DEFAULT_PICKUP_MODE,
                };
                DeliveryKind::Pickup {
                    dir,
                    failed_dir,
                    mode,
                }
            }
        };
        let host = match (&raw.host, kind) {
            (Some(h), _) => self.host(h, "transport.host")?,
            (None, RawDeliveryKind::Pickup) => String::new(),
            (None, RawDeliveryKind::Smtp) => {
                return Err(self.error(
                    span,
                    Some("transport.host".into()),
                    "missing required key".into(),
                ))
            }
        };
        Ok(Transport {
            delivery,
            host,
            port: self.int(
                raw.port.as_ref(),
                "transport.port",
                1..=65535,
                DEFAULT_SMTP_PORT,
            )?,
            helo: match &raw.helo {
                Some(v) => self.domain(v, "transport.helo")?,
                None => DEFAULT_HELO.to_string(),
            },
            starttls: raw.starttls,
            ca_file: match &raw.ca_file {
                Some(v) => Some(self.relative(&self.string(v, "transport.ca_file")?)),
                None => None,
            },
            tls_accept_invalid_certs: raw.tls_accept_invalid_certs,
            tls_fingerprint: self
                .fingerprint(raw.tls_fingerprint.as_ref(), "transport.tls_fingerprint")?,
        })
    }

    fn fingerprint(&self, v: Option<&Spanned<String>>, key: &str) -> Res<Option<Fingerprint>> {
        v.map(|v| Fingerprint::parse(v.get_ref()).map_err(|m| self.at(v, key, &m)))
            .transpose()
    }

    fn limits(&self, raw: &RawLimits) -> Res<Limits> {
        let max_message_size = match &raw.max_message_size {
            Some(v) if matches!(&v.get_ref().0, Scalar::Text(s) if s.trim().eq_ignore_ascii_case("auto")) => {
                None
            }
            Some(v) => {
                let key = "limits.max_message_size";
                let n = self.size(v, key)?;
                if n == 0 {
                    return Err(self.at(v, key, "must be greater than 0 (or \"auto\")"));
                }
                Some(n)
            }
            None => None,
        };
        let fallback_sender = match &raw.fallback_sender {
            Some(v) if v.get_ref().is_empty() => String::new(),
            Some(v) => self.mailbox(v, "limits.fallback_sender")?,
            None => String::new(),
        };
        Ok(Limits {
            max_message_size,
            max_messages_per_session: self.int(
                raw.max_messages_per_session.as_ref(),
                "limits.max_messages_per_session",
                1..=100_000,
                DEFAULT_MAX_MESSAGES_PER_SESSION,
            )?,
            poison_after: self.int(
                raw.poison_after.as_ref(),
                "limits.poison_after",
                1..=100,
                DEFAULT_POISON_AFTER,
            )?,
            default_domain: match &raw.default_domain {
                Some(v) => Some(self.domain(v, "limits.default_domain")?),
                None => None,
            },
            fallback_sender,
            quarantine_delete: raw.quarantine_delete,
            smtp_max_protocol_errors: self.int(
                raw.smtp_max_protocol_errors.as_ref(),
                "limits.smtp_max_protocol_errors",
                2..=1000,
                DEFAULT_SMTP_MAX_PROTOCOL_ERRORS,
            )?,
            smtp_reconnects: self.int(
                raw.smtp_reconnects.as_ref(),
                "limits.smtp_reconnects",
                0..=100,
                DEFAULT_SMTP_RECONNECTS,
            )?,
            memory_threshold: match &raw.memory_threshold {
                Some(v) => self.size(v, "limits.memory_threshold")?,
                None => DEFAULT_MEMORY_THRESHOLD,
            },
            max_download_size: match &raw.max_download_size {
                Some(v) => match self.size(v, "limits.max_download_size")? {
                    0 => {
                        return Err(self.error(
                            Some(v.span()),
                            Some("limits.max_download_size".into()),
                            "must be larger than 0".into(),
                        ))
                    }
                    n => n,
                },
                None => DEFAULT_MAX_DOWNLOAD_SIZE,
            },
        })
    }

    fn account(&self, raw: Spanned<RawAccount>, prefix: &str) -> Res<Account> {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = |k: &str| format!("{prefix}.{k}");

        let name = raw.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(self.at(
                &raw.name,
                &key("name"),
                format!("invalid account name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"),
            ));
        }
        let tls = raw.tls.unwrap_or(TlsMode::Implicit);
        let default_port = if tls == TlsMode::Implicit { 995 } else { 110 };

        let mut sources: Vec<(&str, &Spanned<String>)> = [
            ("password", &raw.password),
            ("password_env", &raw.password_env),
            ("password_file", &raw.password_file),
            ("password_command", &raw.password_command),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
        sources.sort_by_key(|(_, v)| v.span().start);
        let oauth2 = match &raw.oauth2 {
            Some(o) => Some(self.oauth2(o, &key("oauth2"), raw.auth)?),
            None => None,
        };
        if let (Some(_), Some((which, v))) = (&oauth2, sources.first()) {
            return Err(self.at(
                v,
                &key(which),
                "not used with oauth2 (the access token comes from the token endpoint); \
                 remove it",
            ));
        }
        let secret = match sources.as_slice() {
            [] if oauth2.is_some() => SecretSource::Value(Secret::default()),
            [] => {
                return Err(self.error(
                    Some(span),
                    Some(prefix.to_string()),
                    format!("no password source; set exactly one of {PASSWORD_KEYS}"),
                ))
            }
            [(first, _), (second, v), ..] => {
                return Err(self.at(
                    v,
                    &key(second),
                    format!("conflicts with {first}; set exactly one of {PASSWORD_KEYS}"),
                ))
            }
            [(which, v)] => {
                let k = key(which);
                if v.get_ref().is_empty() {
                    return Err(self.at(v, &k, "must not be empty"));
                }
                match *which {
                    "password" => SecretSource::Value(Secret::new(v.get_ref().clone())),
                    "password_env" => {
                        let var = v.get_ref();
                        if var.contains(['=', '\0']) || var.trim() != var {
                            return Err(self.at(
                                v,
                                &k,
                                format!("invalid environment variable name {var:?}"),
                            ));
                        }
                        SecretSource::Env(var.clone())
                    }
                    "password_file" => SecretSource::File(self.relative(&self.string(v, &k)?)),
                    _ => SecretSource::Command(self.string(v, &k)?),
                }
            }
        };

        let tls_server_name = match &raw.tls_server_name {
            Some(v) => {
                let k = key("tls_server_name");
                let s = self.string(v, &k)?;
                if rustls::pki_types::ServerName::try_from(s.as_str()).is_err() {
                    return Err(self.at(
                        v,
                        &k,
                        format!("invalid server name {s:?}: expected a DNS name or IP address"),
                    ));
                }
                Some(s)
            }
            None => None,
        };

        Ok(Account {
            name: name.clone(),
            host: self.host(&raw.host, &key("host"))?,
            port: self.int(raw.port.as_ref(), &key("port"), 1..=65535, default_port)?,
            tls,
            auth: raw.auth.unwrap_or(if oauth2.is_some() {
                AuthMethod::Xoauth2
            } else {
                AuthMethod::User
            }),
            username: self.string(&raw.username, &key("username"))?,
            secret,
            deliver_to: self.mailbox(&raw.deliver_to, &key("deliver_to"))?,
            mailbox_receive_limit: self.receive_limit(
                raw.mailbox_receive_limit.as_ref(),
                &key("mailbox_receive_limit"),
            )?,
            catch_all: match &raw.catch_all {
                Some(c) => {
                    let c = c.get_ref();
                    let mut local_domains = Vec::new();
                    for d in &c.local_domains {
                        local_domains.push(
                            self.domain(d, &key("catch_all.local_domains"))?
                                .to_ascii_lowercase(),
                        );
                    }
                    let mut local_addresses = Vec::new();
                    for a in &c.local_addresses {
                        local_addresses.push(
                            self.mailbox(a, &key("catch_all.local_addresses"))?
                                .to_ascii_lowercase(),
                        );
                    }
                    if local_domains.is_empty() && local_addresses.is_empty() {
                        return Err(self.error(
                            None,
                            Some(key("catch_all")),
                            "needs local_domains or local_addresses".into(),
                        ));
                    }
                    Some(CatchAll {
                        local_domains,
                        local_addresses,
                    })
                }
                None => None,
            },
            leave_on_server: raw.leave_on_server,
            ca_file: match &raw.ca_file {
                Some(v) => Some(self.relative(&self.string(v, &key("ca_file"))?)),
                None => None,
            },
            tls_accept_invalid_certs: raw.tls_accept_invalid_certs,
            tls_fingerprint: self
                .fingerprint(raw.tls_fingerprint.as_ref(), &key("tls_fingerprint"))?,
            allow_plaintext: raw.allow_plaintext,
            tls_server_name,
            verify_list_size: raw.verify_list_size.unwrap_or(true),
            oauth2,
            interval: match &raw.interval {
                Some(v) => Some(self.interval(Some(v), &key("interval"))?),
                None => None,
            },
        })
    }

    /// An account's `oauth2` table (`key` is its path); `auth` must be `xoauth2` or unset.
    fn oauth2(&self, raw: &Spanned<RawOAuth2>, key: &str, auth: Option<AuthMethod>) -> Res<OAuth2> {
        if let Some(other) = auth.filter(|a| *a != AuthMethod::Xoauth2) {
            return Err(self.at(
                raw,
                key,
                format!(
                    "needs auth = \"xoauth2\" (the account has auth = \"{other}\"); set it, or \
                     leave auth out"
                ),
            ));
        }
        let span = raw.span();
        let o = raw.get_ref();
        let sub = |k: &str| format!("{key}.{k}");
        let token_url = TokenUrl::parse(o.token_url.get_ref())
            .map_err(|m| self.at(&o.token_url, &sub("token_url"), m))?;
        let client_id = self.string(&o.client_id, &sub("client_id"))?;
        if client_id.chars().any(char::is_control) {
            return Err(self.at(
                &o.client_id,
                &sub("client_id"),
                "must not hold control characters",
            ));
        }
        let scope = match &o.scope {
            Some(v) => {
                let scope = self.string(v, &sub("scope"))?;
                if scope.chars().any(char::is_control) {
                    return Err(self.at(v, &sub("scope"), "must not hold control characters"));
                }
                Some(scope)
            }
            None => None,
        };
        let client_secret = self.secret_family(
            key,
            "client_secret",
            [
                &o.client_secret,
                &o.client_secret_env,
                &o.client_secret_file,
                &o.client_secret_command,
            ],
        )?;
        let Some(refresh_token) = self.secret_family(
            key,
            "refresh_token",
            [
                &o.refresh_token,
                &o.refresh_token_env,
                &o.refresh_token_file,
                &o.refresh_token_command,
            ],
        )?
        else {
            return Err(self.error(
                Some(span),
                Some(key.to_string()),
                "no refresh token source; set exactly one of refresh_token, refresh_token_env, \
                 refresh_token_file, refresh_token_command"
                    .into(),
            ));
        };
        Ok(OAuth2 {
            token_url,
            client_id,
            client_secret,
            refresh_token,
            scope,
        })
    }

    /// At most one of `NAME`, `NAME_env`, `NAME_file`, `NAME_command` (in `values`, in that
    /// order) under the table at `key`, as a secret source; never quotes a value.
    fn secret_family(
        &self,
        key: &str,
        name: &str,
        values: [&Option<Spanned<String>>; 4],
    ) -> Res<Option<SecretSource>> {
        let names = [
            name.to_string(),
            format!("{name}_env"),
            format!("{name}_file"),
            format!("{name}_command"),
        ];
        let all = names.join(", ");
        let mut set: Vec<(&String, &Spanned<String>)> = names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
            .collect();
        set.sort_by_key(|(_, v)| v.span().start);
        let (which, v) = match set.as_slice() {
            [] => return Ok(None),
            [(first, _), (second, v), ..] => {
                return Err(self.at(
                    v,
                    &format!("{key}.{second}"),
                    format!("conflicts with {first}; set exactly one of {all}"),
                ))
            }
            [(which, v)] => (*which, *v),
        };
        let k = format!("{key}.{which}");
        if v.get_ref().is_empty() {
            return Err(self.at(v, &k, "must not be empty"));
        }
        Ok(Some(if *which == name {
            SecretSource::Value(Secret::new(v.get_ref().clone()))
        } else if which.ends_with("_env") {
            let var = v.get_ref();
            if var.contains(['=', '\0']) || var.trim() != var {
                return Err(self.at(v, &k, format!("invalid environment variable name {var:?}")));
            }
            SecretSource::Env(var.clone())
        } else if which.ends_with("_file") {
            SecretSource::File(self.relative(&self.string(v, &k)?))
        } else {
            SecretSource::Command(self.string(v, &k)?)
        }))
    }
}

/// The text between the backticks right after `prefix`, e.g. the field of "missing field `x`".
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

/// Serde quotes names with backticks; show them in double quotes like the rest of the
/// messages (a quoted part that itself holds a `"` keeps its backticks).
fn quote_backticks(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let inner = &after[..close];
        out.push_str(&rest[..open]);
        if inner.contains('"') {
            out.push('`');
            out.push_str(inner);
            out.push('`');
        } else {
            out.push('"');
            out.push_str(inner);
            out.push('"');
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// True when the line holding `offset` assigns a secret key (`password`, `refresh_token`,
/// `client_secret`; used to keep values of unparsable secret lines out of messages).
fn is_password_line(text: &str, offset: usize) -> bool {
    let offset = offset.min(text.len());
    let start = text.as_bytes()[..offset]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let line = text.get(start..).unwrap_or("");
    let line = line.split('\n').next().unwrap_or("");
    line.split(['=', ',', '{'])
        .any(|part| SECRET_KEYS.contains(&part.trim().trim_matches(['"', '\''])))
}

// ---------------------------------------------------------------------------------------
// Key paths of error spans
//
// toml reports where an error is (a byte span) but not the key path in a usable form.
// The document is read a second time into a tree of keys and values with their spans,
// and the path of the innermost key or value holding the error's offset is named.
// Spans come from toml's Spanned protocol; tables made implicitly by dotted keys have
// no span of their own, so the tree accepts values with and without one.
// ---------------------------------------------------------------------------------------

const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

#[derive(Default)]
struct Node {
    entries: Vec<(TreeKey, TreeValue)>,
    items: Vec<TreeValue>,
}

struct TreeKey {
    name: String,
    span: Option<Range<usize>>,
}

struct TreeValue {
    span: Option<Range<usize>>,
    node: Node,
}

impl<'de> Deserialize<'de> for TreeKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TreeKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TreeKey, E> {
                Ok(TreeKey {
                    name: v.to_string(),
                    span: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TreeKey, A::Error> {
                let (span, name) = read_spanned::<A, String>(&mut map)?;
                Ok(TreeKey { name, span })
            }
        }
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, V)
    }
}

/// Reads a Spanned map: the three private keys (start, end, value) in order.
fn read_spanned<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
) -> Result<(Option<Range<usize>>, T), A::Error> {
    let _start_key: Option<TreeKey> = map.next_key()?;
    let start: usize = map.next_value()?;
    let _end_key: Option<TreeKey> = map.next_key()?;
    let end: usize = map.next_value()?;
    let _value_key: Option<TreeKey> = map.next_key()?;
    let value: T = map.next_value()?;
    Ok((Some(start..end), value))
}

/// Builds a [`TreeValue`] from whatever toml hands over: a Spanned map, a plain
/// table (an implicit one has no span), an array or a scalar.
struct TreeValueVisitor;

impl<'de> Visitor<'de> for TreeValueVisitor {
    type Value = TreeValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TreeValue, E> {
        Ok(TreeValue::leaf())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TreeValue, E> {
        Ok(TreeValue::leaf())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TreeValue, E> {
        Ok(TreeValue::leaf())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TreeValue, E> {
        Ok(TreeValue::leaf())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<TreeValue, E> {
        Ok(TreeValue::leaf())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TreeValue, A::Error> {
        Ok(TreeValue {
            span: None,
            node: Node::from_seq(seq)?,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TreeValue, A::Error> {
        let first: Option<TreeKey> = map.next_key()?;
        match first {
            Some(k) if k.span.is_none() && k.name == SPANNED_START => {
                let start: usize = map.next_value()?;
                let _end_key: Option<TreeKey> = map.next_key()?;
                let end: usize = map.next_value()?;
                let _value_key: Option<TreeKey> = map.next_key()?;
                let node: Node = map.next_value()?;
                Ok(TreeValue {
                    span: Some(start..end),
                    node,
                })
            }
            first => Ok(TreeValue {
                span: None,
                node: Node::from_map(first, map)?,
            }),
        }
    }
}

impl<'de> Deserialize<'de> for TreeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, TreeValueVisitor)
    }
}

impl TreeValue {
    fn leaf() -> Self {
        Self {
            span: None,
            node: Node::default(),
        }
    }
}

impl Node {
    fn from_map<'de, A: MapAccess<'de>>(
        first: Option<TreeKey>,
        mut map: A,
    ) -> Result<Self, A::Error> {
        let mut node = Node::default();
        let mut next = first;
        while let Some(key) = next {
            let value: TreeValue = map.next_value()?;
            node.entries.push((key, value));
            next = map.next_key()?;
        }
        Ok(node)
    }

    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut node = Node::default();
        while let Some(item) = seq.next_element::<TreeValue>()? {
            node.items.push(item);
        }
        Ok(node)
    }
}

impl<'de> Deserialize<'de> for Node {
    /// The value itself, without asking for its span again (that would recurse).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeValueVisitor).map(|v| v.node)
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    (span.start <= offset && offset < span.end) || (span.is_empty() && span.start == offset)
}

struct Best {
    key: Option<Vec<String>>,
    value: Option<(usize, Vec<String>)>,
}

fn walk(node: &Node, offset: usize, path: &mut Vec<Segment>, best: &mut Best) {
    let render = |path: &Vec<Segment>| -> Vec<String> {
        path.iter()
            .map(|s| match s {
                Segment::Key(k) => k.clone(),
                Segment::Index(i) => format!("[{i}]"),
            })
            .collect()
    };
    let mut visit =
        |seg: Segment, key_span: Option<&Range<usize>>, value: &TreeValue, best: &mut Best| {
            path.push(seg);
            if key_span.is_some_and(|s| contains(s, offset)) && best.key.is_none() {
                best.key = Some(render(path));
            }
            if let Some(s) = value.span.as_ref().filter(|s| contains(s, offset)) {
                let len = s.end - s.start;
                if best.value.as_ref().is_none_or(|(l, _)| len <= *l) {
                    best.value = Some((len, render(path)));
                }
            }
            walk(&value.node, offset, path, best);
            path.pop();
        };
    for (key, value) in &node.entries {
        visit(
            Segment::Key(key.name.clone()),
            key.span.as_ref(),
            value,
            best,
        );
    }
    for (i, value) in node.items.iter().enumerate() {
        visit(Segment::Index(i), None, value, best);
    }
}

fn render_path(parts: &[String]) -> String {
    let mut out = String::new();
    for part in parts {
        if part.starts_with('[') {
            out.push_str(part);
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        let bare = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if bare {
            out.push_str(part);
        } else {
            let _ = write!(out, "{part:?}");
        }
    }
    out
}

/// The key path (`account[1].tls`) of the innermost key or value at `offset`, if any.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let root = Node::deserialize(toml::Deserializer::new(text)).ok()?;
    let mut best = Best {
        key: None,
        value: None,
    };
    walk(&root, offset, &mut Vec::new(), &mut best);
    let parts = best.key.or(best.value.map(|(_, p)| p))?;
    (!parts.is_empty()).then(|| render_path(&parts))
}

impl Config {
    /// Every secret source of the configuration, with what it is for.
    fn secret_sources(&self) -> Vec<(String, &SecretSource)> {
        let mut v = Vec::new();
        for a in &self.accounts {
            match &a.oauth2 {
                Some(o) => {
                    v.push((
                        format!("the OAuth2 refresh token of account {:?}", a.name),
                        &o.refresh_token,
                    ));
                    if let Some(c) = &o.client_secret {
                        v.push((
                            format!("the OAuth2 client secret of account {:?}", a.name),
                            c,
                        ));
                    }
                }
                None => v.push((format!("the password of account {:?}", a.name), &a.secret)),
            }
        }
        v
    }

    /// Refuses a configuration file holding a secret, or a `password_file`, that users
    /// other than its owner can read (as fetchmail and msmtp do).
    pub fn check_private(&self) -> Result<(), ConfigError> {
        let mut inline = None;
        for (what, source) in self.secret_sources() {
            match source {
                SecretSource::Value(_) => inline = inline.or(Some(what)),
                SecretSource::File(path) => exposed(path, &what)?,
                SecretSource::Env(_) | SecretSource::Command(_) => {}
            }
        }
        if let Some(what) = inline {
            exposed(&self.path, &what)?;
        }
        Ok(())
    }
}

/// `Err` when `path` exists and its group or others may read or write it.
fn exposed(path: &Path, holds: &str) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o066 != 0 {
                return Err(ConfigError::Exposed {
                    path: path.to_path_buf(),
                    holds: holds.to_string(),
                    mode,
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, holds);
    Ok(())
}

/// A file mode written as three or four octal digits (`"640"`, `"0640"`); only the
/// permission bits, and the owner must be able to read and write.
fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim();
    if !(3..=4).contains(&t.len()) || !t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let mode = u32::from_str_radix(t, 8).ok()?;
    (mode <= 0o777 && mode & 0o600 == 0o600).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "popbridge.toml";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new(FILE))
    }

    fn err(text: &str) -> String {
        match load(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const MINIMAL: &str = r#"state_dir = "/var/lib/popbridge"

[transport]
host = "127.0.0.1"

[[account]]
name = "info"
host = "pop.isp.example"
username = "info@isp.example"
password = "hunter2-secret"
deliver_to = "info@contoso.local"
"#;

    const FULL: &str = r#"# everything
state_dir = "/var/lib/popbridge"
profile = "sbs2008"
parallel_accounts = 8
received_header = false
interval = "30m"
jitter = "10s"

[exchange]
organization_receive_limit = "50MB"

[transport]
host = "mail.contoso.local"
port = 2525
helo = "popbridge.contoso.local"
starttls = true
ca_file = "/etc/popbridge/ca.pem"
tls_accept_invalid_certs = true

[limits]
max_message_size = "10MB"
max_messages_per_session = 200
poison_after = 5
default_domain = "contoso.local"
fallback_sender = "postmaster@contoso.local"
quarantine_delete = true
smtp_max_protocol_errors = 10
smtp_reconnects = 0
memory_threshold = "512 KB"

[timeouts]
connect = "5s"
command = 90
data = "1h"

[[account]]
name = "info"
host = "pop.isp.example"
port = 1995
tls = "starttls"
auth = "cram-md5"
username = "info@isp.example"
password = "hunter2-secret"
deliver_to = "info@contoso.local"
leave_on_server = true
ca_file = "/etc/popbridge/isp.pem"
tls_accept_invalid_certs = true
allow_plaintext = true
tls_server_name = "pop.isp.example"
mailbox_receive_limit = "10MB"

[[account]]
name = "sales"
host = "pop2.isp.example"
tls = "none"
auth = "xoauth2"
username = "sales"
password_command = "pass show isp/sales"
deliver_to = "sales@contoso.local"
catch_all = { local_domains = ["Contoso.local"], local_addresses = ["boss@other.example"] }
"#;

    #[test]
    fn a_full_example_loads_with_the_exact_values() {
        let c = load(FULL).unwrap();
        let want = Config {
            path: PathBuf::from(FILE),
            state_dir: PathBuf::from("/var/lib/popbridge"),
            profile: Profile::Sbs2008,
            parallel_accounts: 8,
            received_header: false,
            transport: Transport {
                host: "mail.contoso.local".into(),
                port: 2525,
                helo: "popbridge.contoso.local".into(),
                starttls: true,
                ca_file: Some(PathBuf::from("/etc/popbridge/ca.pem")),
                tls_accept_invalid_certs: true,
                tls_fingerprint: None,
                delivery: DeliveryKind::Smtp,
            },
            limits: Limits {
                max_message_size: Some(10 * 1024 * 1024),
                max_messages_per_session: 200,
                poison_after: 5,
                default_domain: Some("contoso.local".into()),
                fallback_sender: "postmaster@contoso.local".into(),
                quarantine_delete: true,
                smtp_max_protocol_errors: 10,
                smtp_reconnects: 0,
                memory_threshold: 512 * 1024,
                max_download_size: DEFAULT_MAX_DOWNLOAD_SIZE,
            },
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                command: Duration::from_secs(90),
                data: Duration::from_secs(3600),
            },
            accounts: vec![
                Account {
                    name: "info".into(),
                    host: "pop.isp.example".into(),
                    port: 1995,
                    tls: TlsMode::StartTls,
                    auth: AuthMethod::CramMd5,
                    username: "info@isp.example".into(),
                    secret: SecretSource::Value(Secret::new("hunter2-secret".into())),
                    deliver_to: "info@contoso.local".into(),
                    mailbox_receive_limit: ReceiveLimit::Octets(10 * 1024 * 1024),
                    catch_all: None,
                    leave_on_server: true,
                    ca_file: Some(PathBuf::from("/etc/popbridge/isp.pem")),
                    tls_accept_invalid_certs: true,
                    tls_fingerprint: None,
                    allow_plaintext: true,
                    tls_server_name: Some("pop.isp.example".into()),
                    verify_list_size: true,
                    oauth2: None,
                    interval: None,
                },
                Account {
                    name: "sales".into(),
                    host: "pop2.isp.example".into(),
                    port: 110,
                    tls: TlsMode::None,
                    auth: AuthMethod::Xoauth2,
                    username: "sales".into(),
                    secret: SecretSource::Command("pass show isp/sales".into()),
                    deliver_to: "sales@contoso.local".into(),
                    mailbox_receive_limit: ReceiveLimit::Undeclared,
                    catch_all: Some(CatchAll {
                        local_domains: vec!["contoso.local".into()],
                        local_addresses: vec!["boss@other.example".into()],
                    }),
                    leave_on_server: false,
                    ca_file: None,
                    tls_accept_invalid_certs: false,
                    tls_fingerprint: None,
                    allow_plaintext: false,
                    tls_server_name: None,
                    verify_list_size: true,
                    oauth2: None,
                    interval: None,
                },
            ],
            interval: Duration::from_secs(30 * 60),
            jitter: Duration::from_secs(10),
            exchange: Exchange {
                organization_receive_limit: ReceiveLimit::Octets(50 * 1024 * 1024),
            },
            metrics_listen: None,
            ledger_retention: DEFAULT_LEDGER_RETENTION,
        };
        assert_eq!(c, want);
        assert_eq!(c.account("sales").unwrap().port, 110);
        assert!(c.account("nobody").is_none());
    }

    #[test]
    fn defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.profile, Profile::Default);
        assert_eq!(c.parallel_accounts, 4);
        assert!(c.received_header);
        assert_eq!(
            c.transport,
            Transport {
                host: "127.0.0.1".into(),
                port: 25,
                helo: "popbridge.localdomain".into(),
                starttls: false,
                ca_file: None,
                tls_accept_invalid_certs: false,
                tls_fingerprint: None,
                delivery: DeliveryKind::Smtp,
            }
        );
        assert_eq!(
            (c.interval, c.jitter),
            (Duration::from_secs(900), Duration::from_secs(30))
        );
        assert_eq!(c.exchange, Exchange::default());
        assert_eq!(
            c.limits,
            Limits {
                max_message_size: None,
                max_messages_per_session: 500,
                poison_after: 3,
                default_domain: None,
                fallback_sender: String::new(),
                quarantine_delete: false,
                smtp_max_protocol_errors: 5,
                smtp_reconnects: 3,
                memory_threshold: 1024 * 1024,
                max_download_size: DEFAULT_MAX_DOWNLOAD_SIZE,
            }
        );
        assert_eq!(
            c.timeouts,
            Timeouts {
                connect: Duration::from_secs(30),
                command: Duration::from_secs(60),
                data: Duration::from_secs(600),
            }
        );
        let a = &c.accounts[0];
        assert_eq!(
            (a.port, a.tls, a.auth, a.leave_on_server, a.allow_plaintext),
            (995, TlsMode::Implicit, AuthMethod::User, false, false)
        );
        assert_eq!(
            (a.ca_file.as_ref(), a.tls_server_name.as_ref()),
            (None, None)
        );
        assert!(!a.tls_accept_invalid_certs);
    }

    #[test]
    fn explicit_auto_and_integer_sizes() {
        let text = MINIMAL.replace(
            "[[account]]",
            "[limits]\nmax_message_size = \"Auto\"\nmemory_threshold = 4096\n\n[[account]]",
        );
        let c = load(&text).unwrap();
        assert_eq!(c.limits.max_message_size, None);
        assert_eq!(c.limits.memory_threshold, 4096);
        let text = MINIMAL.replace(
            "[[account]]",
            "[limits]\nmax_message_size = 1048576\n\n[[account]]",
        );
        assert_eq!(load(&text).unwrap().limits.max_message_size, Some(1 << 20));
    }

    #[test]
    fn receive_limits_are_undeclared_unlimited_or_a_size() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(
            c.exchange.organization_receive_limit,
            ReceiveLimit::Undeclared
        );
        assert_eq!(
            c.accounts[0].mailbox_receive_limit,
            ReceiveLimit::Undeclared
        );
        assert!(!c.accounts[0].mailbox_receive_limit.is_declared());
        let text = MINIMAL.replace(
            "[[account]]",
            "[exchange]\norganization_receive_limit = \" Unlimited \"\n\n[[account]]",
        ) + "mailbox_receive_limit = \"25MB\"\n";
        let c = load(&text).unwrap();
        assert_eq!(
            c.exchange.organization_receive_limit,
            ReceiveLimit::Unlimited
        );
        assert!(c.exchange.organization_receive_limit.is_declared());
        assert_eq!(c.exchange.organization_receive_limit.octets(), None);
        assert_eq!(
            c.accounts[0].mailbox_receive_limit,
            ReceiveLimit::Octets(25 << 20)
        );
        assert_eq!(c.accounts[0].mailbox_receive_limit.octets(), Some(25 << 20));
        let text = MINIMAL.to_string() + "mailbox_receive_limit = 0\n";
        assert_eq!(
            err(&text),
            "popbridge.toml:12: account[0].mailbox_receive_limit: must be greater than 0 (or \"unlimited\")"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let text = MINIMAL.replace("/var/lib/popbridge", "state").replace(
            "password = \"hunter2-secret\"",
            "password_file = \"secrets/info.pass\"\nca_file = \"ca.pem\"",
        );
        let c = Config::from_str(&text, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/popbridge/state"));
        assert_eq!(
            c.accounts[0].secret,
            SecretSource::File(PathBuf::from("/etc/popbridge/secrets/info.pass"))
        );
        assert_eq!(
            c.accounts[0].ca_file,
            Some(PathBuf::from("/etc/popbridge/ca.pem"))
        );
        let abs = text.replace("\"secrets/info.pass\"", "\"/run/info.pass\"");
        let c = Config::from_str(&abs, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
        assert_eq!(
            c.accounts[0].secret,
            SecretSource::File(PathBuf::from("/run/info.pass"))
        );
    }

    #[test]
    fn other_password_sources() {
        let env = MINIMAL.replace(
            "password = \"hunter2-secret\"",
            "password_env = \"INFO_PASS\"",
        );
        assert_eq!(
            load(&env).unwrap().accounts[0].secret,
            SecretSource::Env("INFO_PASS".into())
        );
    }

    #[test]
    fn the_password_never_appears_in_debug_output() {
        for text in [MINIMAL, FULL] {
            let c = load(text).unwrap();
            let debug = format!("{c:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(debug.contains("***"));
            let alt = format!("{c:#?}");
            assert!(!alt.contains("hunter2"));
        }
    }

    #[test]
    fn a_bad_password_value_is_not_quoted() {
        for bad in [
            "password = 987654321",
            "password = 98765.4321",
            "password = [\"hunter2-secret\"]",
            "password = \"hunter2-secret",
            "password = \"hunter2\\q-secret\"",
            "password = hunter2-secret",
        ] {
            let text = MINIMAL.replace("password = \"hunter2-secret\"", bad);
            let e = err(&text);
            assert!(!e.contains("hunter2") && !e.contains("98765"), "{bad}: {e}");
            assert!(e.starts_with("popbridge.toml:10:"), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_fingerprint_is_parsed_for_accounts_and_the_transport_and_refused_when_malformed() {
        let pin = format!("sha256:{}", "ab:".repeat(31) + "ab");
        let text = MINIMAL
            .replace(
                "host = \"127.0.0.1\"",
                &format!("host = \"127.0.0.1\"\ntls_fingerprint = \"{pin}\""),
            )
            .replace(
                "[[account]]",
                &format!("[[account]]\ntls_fingerprint = \"{}\"", "CD".repeat(32)),
            );
        let cfg = Config::from_str(&text, Path::new("popbridge.toml")).unwrap();
        assert_eq!(cfg.transport.tls_fingerprint, Some(Fingerprint([0xab; 32])));
        assert_eq!(
            cfg.accounts[0].tls_fingerprint,
            Some(Fingerprint([0xcd; 32]))
        );
        let bad = MINIMAL.replace(
            "[[account]]",
            "[[account]]\ntls_fingerprint = \"sha256:12:34\"",
        );
        let e = err(&bad);
        assert!(
            e.contains("tls_fingerprint") && e.contains("64 hexadecimal digits"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key() {
        let text = MINIMAL.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nbogus = 1");
        assert_eq!(
            err(&text),
            "popbridge.toml:5: transport.bogus: unknown key \"bogus\", expected one of \"kind\", \"host\", \
             \"pickup_dir\", \"failed_dir\", \"pickup_mode\", \"port\", \"helo\", \"starttls\", \"ca_file\", \
             \"tls_accept_invalid_certs\", \"tls_fingerprint\""
        );
        let text = format!("statedir = 1\n{MINIMAL}");
        assert!(
            err(&text).starts_with(
                "popbridge.toml:1: statedir: unknown key \"statedir\", expected one of"
            ),
            "{}",
            err(&text)
        );
        let text = format!("{MINIMAL}leave_on_sever = true\n");
        assert!(err(&text).starts_with(
            "popbridge.toml:12: account[0].leave_on_sever: unknown key \"leave_on_sever\""
        ));
    }

    #[test]
    fn unknown_key_in_a_dotted_table_is_located() {
        let text = MINIMAL.replace(
            "[transport]\nhost = \"127.0.0.1\"",
            "transport.host = \"h\"\ntransport.prot = 1",
        );
        assert!(
            err(&text).starts_with("popbridge.toml:4: transport.prot: unknown key \"prot\""),
            "{}",
            err(&text)
        );
    }

    #[test]
    fn bad_enum_value() {
        let text = format!("{MINIMAL}tls = \"ssl\"\n");
        assert_eq!(
            err(&text),
            "popbridge.toml:12: account[0].tls: unknown variant \"ssl\", expected one of \"none\", \"starttls\", \"implicit\""
        );
        let text = format!("{MINIMAL}\n[[account]]\nname = \"b\"\nauth = \"md5\"\n");
        assert_eq!(
            err(&text),
            "popbridge.toml:15: account[1].auth: unknown variant \"md5\", expected one of \"user\", \"apop\", \"plain\", \"login\", \"cram-md5\", \"xoauth2\", \"ntlm\", \"spa\""
        );
    }

    #[test]
    fn ntlm_is_also_called_spa() {
        for name in ["ntlm", "spa"] {
            let c = load(&format!("{MINIMAL}auth = \"{name}\"\n")).unwrap();
            assert_eq!(c.accounts[0].auth, AuthMethod::Ntlm, "{name}");
            assert_eq!(c.accounts[0].auth.to_string(), "ntlm");
        }
    }

    #[test]
    fn bad_size() {
        let text = MINIMAL.replace(
            "[[account]]",
            "[limits]\nmax_message_size = \"10XB\"\n\n[[account]]",
        );
        assert_eq!(
            err(&text),
            "popbridge.toml:7: limits.max_message_size: invalid size \"10XB\": unknown unit \"XB\" (use B, KB, MB or GB)"
        );
        let text = MINIMAL.replace(
            "[[account]]",
            "[limits]\nmemory_threshold = -1\n\n[[account]]",
        );
        assert_eq!(
            err(&text),
            "popbridge.toml:7: limits.memory_threshold: must not be negative"
        );
        let text = MINIMAL.replace(
            "[[account]]",
            "[limits]\nmemory_threshold = 1.5\n\n[[account]]",
        );
        assert_eq!(
            err(&text),
            "popbridge.toml:7: limits.memory_threshold: invalid type: floating point \"1.5\", expected a size such as \"10MB\" or a number of octets"
        );
        let text = MINIMAL.replace(
            "[[account]]",
            "[limits]\nmax_message_size = 0\n\n[[account]]",
        );
        assert_eq!(
            err(&text),
            "popbridge.toml:7: limits.max_message_size: must be greater than 0 (or \"auto\")"
        );
    }

    #[test]
    fn bad_duration() {
        let text = MINIMAL.replace(
            "[[account]]",
            "[timeouts]\ncommand = \"1m\"\nconnect = \"30x\"\n\n[[account]]",
        );
        assert_eq!(
            err(&text),
            "popbridge.toml:8: timeouts.connect: invalid duration \"30x\": unknown unit \"x\" (use ms, s, m, h or d)"
        );
        let text = MINIMAL.replace("[[account]]", "[timeouts]\ndata = \"0s\"\n\n[[account]]");
        assert_eq!(
            err(&text),
            "popbridge.toml:7: timeouts.data: must be greater than 0"
        );
    }

    #[test]
    fn two_password_sources() {
        let text = format!("{MINIMAL}password_env = \"X\"\n");
        assert_eq!(
            err(&text),
            "popbridge.toml:12: account[0].password_env: conflicts with password; set exactly one of password, password_env, password_file, password_command"
        );
        // The later one in the file is blamed, whatever the order of the keys.
        let text = MINIMAL.replace("username = ", "password_command = \"pass x\"\nusername = ");
        assert_eq!(
            err(&text),
            "popbridge.toml:11: account[0].password: conflicts with password_command; set exactly one of password, password_env, password_file, password_command"
        );
    }

    #[test]
    fn no_password_source() {
        let text = MINIMAL.replace("password = \"hunter2-secret\"\n", "");
        assert_eq!(
            err(&text),
            "popbridge.toml:6: account[0]: no password source; set exactly one of password, password_env, password_file, password_command"
        );
    }

    #[test]
    fn duplicate_account_name() {
        let second = "\n[[account]]\nname = \"Info\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\ndeliver_to = \"a@b.c\"\n";
        let text = format!("{MINIMAL}{second}");
        assert_eq!(
            err(&text),
            "popbridge.toml:14: account[1].name: duplicate account name \"Info\" (first defined at line 7)"
        );
    }

    #[test]
    fn invalid_deliver_to() {
        let text = MINIMAL.replace("\"info@contoso.local\"", "\"info\"");
        assert_eq!(
            err(&text),
            "popbridge.toml:11: account[0].deliver_to: address \"info\" has no domain; a full address local@domain is required"
        );
        let text = MINIMAL.replace("\"info@contoso.local\"", "\"info@contoso..local\"");
        assert_eq!(
            err(&text),
            "popbridge.toml:11: account[0].deliver_to: invalid address \"info@contoso..local\": empty or over-long domain label; a full address local@domain is required"
        );
    }

    #[test]
    fn missing_transport() {
        let text = MINIMAL.replace("[transport]\nhost = \"127.0.0.1\"\n", "");
        assert_eq!(err(&text), "popbridge.toml: missing [transport] section");
    }

    #[test]
    fn missing_keys() {
        let text = MINIMAL.replace("username = \"info@isp.example\"\n", "");
        assert_eq!(
            err(&text),
            "popbridge.toml:6: account[0].username: missing required key"
        );
        let text = MINIMAL.replace("host = \"127.0.0.1\"\n", "port = 25\n");
        assert_eq!(
            err(&text),
            "popbridge.toml:3: transport.host: missing required key"
        );
        let text = MINIMAL.replace("state_dir = \"/var/lib/popbridge\"\n", "");
        assert_eq!(
            err(&text),
            "popbridge.toml: state_dir: missing required key"
        );
        let text = MINIMAL.split("[[account]]").next().unwrap().to_string();
        assert_eq!(
            err(&text),
            "popbridge.toml: account: at least one [[account]] is required"
        );
        let text = MINIMAL.replace("[[account]]", "[account]");
        assert_eq!(
            err(&text),
            "popbridge.toml:6: account: accounts are written as [[account]] (an array of tables)"
        );
    }

    #[test]
    fn other_validation_errors() {
        let cases = [
            ("parallel_accounts = 0\n", "popbridge.toml:1: parallel_accounts: must be between 1 and 64 (got 0)"),
            ("parallel_accounts = \"4\"\n", "popbridge.toml:1: parallel_accounts: invalid type: string \"4\", expected an integer"),
            ("profile = \"sbs2003\"\n", "popbridge.toml:1: profile: unknown variant \"sbs2003\", expected \"default\" or \"sbs2008\""),
        ];
        for (prefix, want) in cases {
            assert_eq!(err(&format!("{prefix}{MINIMAL}")), want);
        }
        let in_limits = [
            ("poison_after = 101", "popbridge.toml:7: limits.poison_after: must be between 1 and 100 (got 101)"),
            ("smtp_max_protocol_errors = 1", "popbridge.toml:7: limits.smtp_max_protocol_errors: must be between 2 and 1000 (got 1)"),
            ("smtp_reconnects = -1", "popbridge.toml:7: limits.smtp_reconnects: must be between 0 and 100 (got -1)"),
            ("max_messages_per_session = 100001", "popbridge.toml:7: limits.max_messages_per_session: must be between 1 and 100000 (got 100001)"),
            ("default_domain = \"contoso..local\"", "popbridge.toml:7: limits.default_domain: invalid domain \"contoso..local\": empty or over-long domain label"),
            ("fallback_sender = \"postmaster\"", "popbridge.toml:7: limits.fallback_sender: address \"postmaster\" has no domain; a full address local@domain is required"),
        ];
        for (line, want) in in_limits {
            let text = MINIMAL.replace("[[account]]", &format!("[limits]\n{line}\n\n[[account]]"));
            assert_eq!(err(&text), want);
        }
        let in_account = [
            ("port = 0", "popbridge.toml:12: account[0].port: must be between 1 and 65535 (got 0)"),
            ("tls_server_name = \"bad name\"", "popbridge.toml:12: account[0].tls_server_name: invalid server name \"bad name\": expected a DNS name or IP address"),
        ];
        for (line, want) in in_account {
            assert_eq!(err(&format!("{MINIMAL}{line}\n")), want);
        }
        let text = MINIMAL.replace("name = \"info\"", "name = \"in fo\"");
        assert_eq!(
            err(&text),
            "popbridge.toml:7: account[0].name: invalid account name \"in fo\": use 1 to 64 of A-Z a-z 0-9 . _ -"
        );
        let text = MINIMAL.replace("\"hunter2-secret\"", "\"\"");
        assert_eq!(
            err(&text),
            "popbridge.toml:10: account[0].password: must not be empty"
        );
    }

    #[test]
    fn type_errors_are_readable() {
        assert_eq!(
            err(&format!("limits = 5\n{MINIMAL}")),
            "popbridge.toml:1: limits: invalid type: integer \"5\", expected a [limits] table"
        );
        assert_eq!(
            err(&format!("timeouts = []\n{MINIMAL}")),
            "popbridge.toml:1: timeouts: invalid type: array, expected a [timeouts] table"
        );
        assert_eq!(
            err(&format!("{MINIMAL}tls = 5\n")),
            "popbridge.toml:12: account[0].tls: invalid type, expected a string"
        );
        assert_eq!(
            err(&format!("{MINIMAL}leave_on_server = \"yes\"\n")),
            "popbridge.toml:12: account[0].leave_on_server: invalid type: string \"yes\", expected a boolean"
        );
        let text = MINIMAL.replace("password = \"hunter2-secret\"", "password_file = \"\"");
        assert_eq!(
            err(&text),
            "popbridge.toml:10: account[0].password_file: must not be empty"
        );
    }

    #[test]
    fn plaintext_password_without_tls_still_loads() {
        let text = format!("{MINIMAL}tls = \"none\"\nauth = \"login\"\n");
        let c = load(&text).unwrap();
        assert_eq!(
            (c.accounts[0].tls, c.accounts[0].port),
            (TlsMode::None, 110)
        );
        assert!(!c.accounts[0].allow_plaintext);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let text = MINIMAL.replace("host = \"127.0.0.1\"", "host = ");
        let e = load(&text).unwrap_err();
        assert_eq!(e.line(), Some(4));
        assert!(e.to_string().starts_with("popbridge.toml:4: "), "{e}");
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = Config::load(Path::new("/nonexistent/popbridge.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/popbridge.toml: cannot read: "),
            "{e}"
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("popbridge.toml");
        std::fs::write(&path, MINIMAL.replace("/var/lib/popbridge", "state")).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(c.state_dir, dir.path().join("state"));
    }

    #[test]
    fn the_example_file_loads() {
        let text = include_str!("../popbridge.example.toml");
        let c = Config::from_str(text, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
        assert!(!c.accounts.is_empty());
        for name in ["gmail", "office365"] {
            let a = c.account(name).unwrap();
            assert_eq!(a.auth, AuthMethod::Xoauth2);
            assert!(a.oauth2.is_some(), "{name}");
        }
        let sales = c.account("sales").unwrap();
        assert_eq!(c.interval_of(sales), Duration::from_secs(300));
    }

    #[test]
    fn sizes() {
        for (s, want) in [
            ("10MB", 10 << 20),
            ("512KB", 512 << 10),
            ("512 kb", 512 << 10),
            ("1GB", 1 << 30),
            ("1gib", 1 << 30),
            ("123B", 123),
            ("123", 123),
            ("0", 0),
            ("2K", 2048),
            (" 3 MiB ", 3 << 20),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "MB",
            "1.5MB",
            "-1",
            "10 XB",
            "99999999999999999999",
            "17179869184GB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_size("1.5MB"),
            Err("invalid size \"1.5MB\": fractions are not supported, use a smaller unit".into())
        );
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("30s", Duration::from_secs(30)),
            ("15m", Duration::from_secs(900)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("500ms", Duration::from_millis(500)),
            ("500 MS", Duration::from_millis(500)),
            ("45", Duration::from_secs(45)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "s",
            "1.5s",
            "-3s",
            "10x",
            "1 week",
            "99999999999999999999d",
            "999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_input_panics() {
        // Every prefix of a full file, and every prefix with one byte changed to a quote.
        for (i, _) in FULL.char_indices() {
            let _ = load(&FULL[..i]);
            let mut broken = FULL.to_string();
            broken.replace_range(
                i..i + FULL[i..].chars().next().map_or(0, char::len_utf8),
                "\"",
            );
            let _ = load(&broken);
        }
        let _ = load("");
        let _ = load("\u{0}");
        let _ = load("[[account]]\n[[account.x]]\n");
    }

    #[test]
    fn key_paths() {
        let text = "a = 1\n[b]\nc = [1, {d = 2}]\n[[e]]\nf = 1\n[[e]]\ng = 'x'\n";
        let at = |needle: &str| key_path_at(text, text.find(needle).unwrap());
        assert_eq!(at("a =").as_deref(), Some("a"));
        assert_eq!(at("d =").as_deref(), Some("b.c[1].d"));
        assert_eq!(at("g =").as_deref(), Some("e[1].g"));
        assert_eq!(at("'x'").as_deref(), Some("e[1].g"));
        assert_eq!(key_path_at("x = \"unterminated\n", 4), None);
    }

    #[test]
    fn ledger_retention_defaults_to_90_days_and_is_at_least_a_day() {
        assert_eq!(
            load(MINIMAL).unwrap().ledger_retention,
            Duration::from_secs(90 * 86_400)
        );
        let with = |v: &str| format!("ledger_retention = {v}\n{MINIMAL}");
        assert_eq!(
            load(&with("\"30d\"")).unwrap().ledger_retention,
            Duration::from_secs(30 * 86_400)
        );
        for (bad, why) in [
            ("\"12h\"", "must be at least 1 day"),
            ("\"0\"", "must be greater than 0"),
            ("\"soon\"", "invalid duration"),
        ] {
            let e = load(&with(bad)).unwrap_err().to_string();
            assert!(
                e.starts_with("popbridge.toml:1: ledger_retention: ") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn interval_is_bounded_like_the_sbs_connector() {
        let with = |v: &str| format!("interval = {v}\n{MINIMAL}");
        assert_eq!(
            load(&with("\"5m\"")).unwrap().interval,
            Duration::from_secs(300)
        );
        assert_eq!(
            load(&with("\"24h\"")).unwrap().interval,
            Duration::from_secs(86_400)
        );
        for bad in ["\"4m\"", "\"25h\"", "60"] {
            let e = load(&with(bad)).unwrap_err().to_string();
            assert_eq!(e, "popbridge.toml:1: interval: must be between 5 minutes and 24 hours (as the SBS connector allowed)", "{bad}");
        }
        assert_eq!(
            load(&format!("jitter = 0\n{MINIMAL}")).unwrap().jitter,
            Duration::ZERO
        );
        assert!(load(&format!("interval = \"5m\"\njitter = \"3m\"\n{MINIMAL}")).is_err());
    }

    #[test]
    fn an_account_may_have_its_own_interval_with_the_same_bounds() {
        let c = load(&format!(
            "interval = \"30m\"\n{MINIMAL}interval = \"10m\"\n"
        ))
        .unwrap();
        assert_eq!(c.accounts[0].interval, Some(Duration::from_secs(600)));
        assert_eq!(c.interval_of(&c.accounts[0]), Duration::from_secs(600));
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.accounts[0].interval, None);
        assert_eq!(c.interval_of(&c.accounts[0]), Duration::from_secs(900));
        for bad in ["\"4m\"", "\"25h\"", "60"] {
            let e = err(&format!("{MINIMAL}interval = {bad}\n"));
            assert_eq!(
                e,
                "popbridge.toml:12: account[0].interval: must be between 5 minutes and 24 \
                 hours (as the SBS connector allowed)",
                "{bad}"
            );
        }
        let e = err(&format!(
            "jitter = \"200s\"\ninterval = \"1h\"\n{MINIMAL}interval = \"6m\"\n"
        ));
        assert!(
            e.contains("account[0].interval: must be at least twice the jitter"),
            "{e}"
        );
    }

    #[test]
    fn metrics_listen_is_loopback_unless_explicitly_allowed() {
        let c = load(&format!("metrics_listen = \"127.0.0.1:9725\"\n{MINIMAL}")).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9725".parse().unwrap()));
        let c = load(&format!("metrics_listen = \"[::1]:9725\"\n{MINIMAL}")).unwrap();
        assert!(c.metrics_listen.unwrap().ip().is_loopback());
        assert_eq!(load(MINIMAL).unwrap().metrics_listen, None);
        let e = err(&format!("metrics_listen = \"0.0.0.0:9725\"\n{MINIMAL}"));
        assert!(
            e.starts_with(
                "popbridge.toml:1: metrics_listen: 0.0.0.0:9725 is not a loopback address"
            ) && e.contains("metrics_allow_non_loopback = true"),
            "{e}"
        );
        let c = load(&format!(
            "metrics_listen = \"0.0.0.0:9725\"\nmetrics_allow_non_loopback = true\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9725".parse().unwrap()));
        let e = err(&format!("metrics_listen = \"localhost\"\n{MINIMAL}"));
        assert!(
            e.starts_with("popbridge.toml:1: metrics_listen: invalid address"),
            "{e}"
        );
    }

    #[test]
    fn pickup_transport_needs_its_folder_and_no_host() {
        let text = MINIMAL.replace(
            "host = \"127.0.0.1\"\n",
            "kind = \"pickup\"\npickup_dir = \"pickup\"\n",
        );
        let c = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        match &c.transport.delivery {
            DeliveryKind::Pickup {
                dir,
                failed_dir,
                mode,
            } => {
                assert!(dir.ends_with("pickup"), "{dir:?}");
                assert_eq!(failed_dir, &c.state_dir.join("failed"));
                assert_eq!(*mode, DEFAULT_PICKUP_MODE);
            }
            other => panic!("{other:?}"),
        }
        for (given, want) in [("\"0640\"", Some(0o640)), ("\"600\"", Some(0o600))] {
            let c =
                load(&text.replace("pickup_dir", &format!("pickup_mode = {given}\npickup_dir")))
                    .unwrap();
            assert!(
                matches!(c.transport.delivery, DeliveryKind::Pickup { mode, .. } if Some(mode) == want),
                "{given}"
            );
        }
        for bad in ["\"0400\"", "\"rw-r--r--\"", "\"4755\"", "\"0888\""] {
            let e = load(&text.replace("pickup_dir", &format!("pickup_mode = {bad}\npickup_dir")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("transport.pickup_mode: ") && e.contains("is not a file mode"),
                "{e}"
            );
        }
        let text = MINIMAL.replace("host = \"127.0.0.1\"\n", "kind = \"pickup\"\n");
        assert!(load(&text)
            .unwrap_err()
            .to_string()
            .contains("transport.pickup_dir: missing required key"));
    }

    const OAUTH: &str = r#"state_dir = "/var/lib/popbridge"

[transport]
host = "127.0.0.1"

[[account]]
name = "gmail"
host = "pop.gmail.com"
username = "info@example.com"
deliver_to = "info@contoso.local"
oauth2 = { token_url = "https://oauth2.googleapis.com/token", client_id = "123.apps", client_secret_env = "GMAIL_SECRET", refresh_token_file = "gmail.refresh", scope = "https://mail.google.com/" }
"#;

    #[test]
    fn an_oauth2_account_needs_no_password_and_implies_xoauth2() {
        let c = Config::from_str(OAUTH, Path::new("/etc/popbridge/popbridge.toml")).unwrap();
        let a = &c.accounts[0];
        assert_eq!(a.auth, AuthMethod::Xoauth2);
        assert_eq!(a.secret, SecretSource::Value(Secret::default()));
        let o = a.oauth2.as_ref().unwrap();
        assert_eq!(
            o.token_url.to_string(),
            "https://oauth2.googleapis.com/token"
        );
        assert_eq!(o.client_id, "123.apps");
        assert_eq!(
            o.client_secret,
            Some(SecretSource::Env("GMAIL_SECRET".into()))
        );
        assert_eq!(
            o.refresh_token,
            SecretSource::File(PathBuf::from("/etc/popbridge/gmail.refresh"))
        );
        assert_eq!(o.scope.as_deref(), Some("https://mail.google.com/"));
        // Explicit xoauth2, a public client (no secret), a table of its own.
        let text = OAUTH.replace(
            "oauth2 = { token_url = \"https://oauth2.googleapis.com/token\", client_id = \"123.apps\", client_secret_env = \"GMAIL_SECRET\", refresh_token_file = \"gmail.refresh\", scope = \"https://mail.google.com/\" }",
            "auth = \"xoauth2\"\n[account.oauth2]\ntoken_url = \"https://login.microsoftonline.com/t/oauth2/v2.0/token\"\nclient_id = \"c\"\nrefresh_token = \"0.AAA-refresh\"",
        );
        let c = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let o = c.accounts[0].oauth2.as_ref().unwrap();
        assert_eq!((o.client_secret.as_ref(), o.scope.as_ref()), (None, None));
        assert!(!format!("{c:?}").contains("0.AAA-refresh"));
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_file_with_an_inline_refresh_token_or_client_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("popbridge.toml");
        let inline = OAUTH.replace(
            "client_secret_env = \"GMAIL_SECRET\", refresh_token_file = \"gmail.refresh\"",
            "client_secret = \"GOCSPX-secret\", refresh_token = \"1//0g-refresh\"",
        );
        assert_ne!(inline, OAUTH);
        std::fs::write(&path, &inline).unwrap();
        let set =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        set(0o644);
        let c = Config::load(&path).unwrap();
        let e = c.check_private().unwrap_err().to_string();
        assert!(
            e.contains("holds the OAuth2 refresh token of account") && e.contains("mode 0644"),
            "{e}"
        );
        assert!(!e.contains("1//0g-refresh") && !e.contains("GOCSPX"), "{e}");
        set(0o600);
        Config::load(&path).unwrap().check_private().unwrap();
        // A refresh_token_file others can read is refused too.
        let token = dir.path().join("gmail.refresh");
        std::fs::write(&token, "1//0g-refresh\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o604)).unwrap();
        std::fs::write(&path, OAUTH).unwrap();
        let e = Config::load(&path).unwrap().check_private().unwrap_err();
        assert!(matches!(e, ConfigError::Exposed { mode: 0o604, .. }), "{e}");
    }

    #[test]
    fn oauth2_errors_name_the_line_and_key() {
        let line = |needle: &str, with: &str| OAUTH.replace(needle, with);
        let cases = [
            (
                line("deliver_to", "auth = \"plain\"\ndeliver_to"),
                "popbridge.toml:12: account[0].oauth2: needs auth = \"xoauth2\" (the account has auth = \"plain\"); set it, or leave auth out",
            ),
            (
                line("deliver_to", "password = \"hunter2\"\ndeliver_to"),
                "popbridge.toml:10: account[0].password: not used with oauth2 (the access token comes from the token endpoint); remove it",
            ),
            (
                line("https://oauth2", "http://oauth2"),
                "popbridge.toml:11: account[0].oauth2.token_url: must be an https:// URL (the refresh token and the client secret are sent to it)",
            ),
            (
                line("refresh_token_file = \"gmail.refresh\", ", ""),
                "popbridge.toml:11: account[0].oauth2: no refresh token source; set exactly one of refresh_token, refresh_token_env, refresh_token_file, refresh_token_command",
            ),
            (
                line("client_secret_env = \"GMAIL_SECRET\"", "client_secret_env = \"GMAIL_SECRET\", client_secret = \"s3cr3t\""),
                "popbridge.toml:11: account[0].oauth2.client_secret: conflicts with client_secret_env; set exactly one of client_secret, client_secret_env, client_secret_file, client_secret_command",
            ),
            (
                line("client_id = \"123.apps\"", "client_id = \"\""),
                "popbridge.toml:11: account[0].oauth2.client_id: must not be empty",
            ),
            (
                line("scope =", "scopes ="),
                "popbridge.toml:11: account[0].oauth2.scopes: unknown key \"scopes\", expected one of \"token_url\", \"client_id\", \"client_secret\", \"client_secret_env\", \"client_secret_file\", \"client_secret_command\", \"refresh_token\", \"refresh_token_env\", \"refresh_token_file\", \"refresh_token_command\", \"scope\"",
            ),
            (
                line("token_url = \"https://oauth2.googleapis.com/token\", ", ""),
                "popbridge.toml:11: account[0].oauth2.token_url: missing required key",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(&text), want, "{text}");
        }
    }

    #[test]
    fn a_bad_refresh_token_or_client_secret_value_is_not_quoted() {
        for bad in [
            "refresh_token = 987654321",
            "refresh_token = [\"1//hunter2\"]",
            "client_secret = 98765.4321",
            "client_secret = hunter2",
        ] {
            let text = format!(
                "{}\n[account.oauth2]\ntoken_url = \"https://h/t\"\nclient_id = \"c\"\n{bad}\n",
                MINIMAL.replace("password = \"hunter2-secret\"\n", "")
            );
            let e = err(&text);
            assert!(!e.contains("hunter2") && !e.contains("98765"), "{bad}: {e}");
            assert!(e.contains("not shown"), "{bad}: {e}");
        }
    }

    #[test]
    fn catch_all_needs_something_local_and_valid_domains() {
        let bad = format!("{MINIMAL}catch_all = {{ local_domains = [] }}\n");
        assert!(load(&bad)
            .unwrap_err()
            .to_string()
            .contains("catch_all: needs local_domains or local_addresses"));
        let bad = format!("{MINIMAL}catch_all = {{ local_domains = [\"bad..domain\"] }}\n");
        assert!(load(&bad)
            .unwrap_err()
            .to_string()
            .contains("invalid domain"));
    }
}
