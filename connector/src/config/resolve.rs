//! Validation and resolution: raw TOML values into the validated [`Config`].
//!
//! Responsible for: defaults, the range and form of every value, relative paths against
//! the configuration file's folder, and an error at the key and line of each problem.
//! Must never: read a file the configuration names (that is `files`), or quote a secret.

use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use popbridge_proto::smtp::{AddressError, Mailbox};
use toml::Spanned;

use super::raw::{
    DurationValue, Int, RawAccount, RawCluster, RawConfig, RawDeliveryKind, RawLimits, RawOAuth2,
    RawTransport, Scalar, SizeValue,
};
use super::values::{parse_duration, parse_mode, parse_size};
use super::{
    Account, AuthMethod, CatchAll, ClusterSettings, Config, ConfigError, Exchange, Limits, OAuth2,
    PickupTransport, ReceiveLimit, SmtpTransport, Timeouts, TlsMode, Transport,
    DEFAULT_LEDGER_RETENTION, DEFAULT_PICKUP_MODE,
};
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
pub(super) const DEFAULT_MAX_DOWNLOAD_SIZE: u64 = 256 * 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);
const MIN_INTERVAL: Duration = Duration::from_secs(5 * 60);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How long the ledger remembers a message after it left the server (`ledger_retention`).
/// The shortest `ledger_retention` accepted.
const MIN_LEDGER_RETENTION: Duration = Duration::from_secs(86_400);
const DEFAULT_JITTER: Duration = Duration::from_secs(30);
const PASSWORD_KEYS: &str = "password, password_env, password_file, password_command";
/// A cluster lease's time to live: the default, and the range accepted.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
const MIN_LEASE_TTL: Duration = Duration::from_secs(10);
const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// POP3 sessions the cluster holds on one server at once, unless configured.
const DEFAULT_SERVER_SESSIONS: u32 = 4;

pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) base: PathBuf,
}

pub(super) type Res<T> = Result<T, ConfigError>;

impl Ctx<'_> {
    /// The byte range of a `[name]` table header line, if the file has one.
    pub(super) fn table_header(&self, name: &str) -> Option<Range<usize>> {
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

    pub(super) fn line_of(&self, offset: usize) -> usize {
        crate::toml_locate::line_of(self.text, offset)
    }

    pub(super) fn error(
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

    pub(super) fn at<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(Some(value.span()), Some(key.to_string()), message.into())
    }

    pub(super) fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn string(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        if v.get_ref().trim().is_empty() {
            return Err(self.at(v, key, "must not be empty"));
        }
        Ok(v.get_ref().clone())
    }

    pub(super) fn host(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        let host = self.string(v, key)?;
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.at(v, key, "must be a host name or IP address"));
        }
        Ok(host)
    }

    /// An optional integer within `range` (inclusive), converted to the field's type.
    pub(super) fn int<T: TryFrom<i64>>(
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

    pub(super) fn size(&self, v: &Spanned<SizeValue>, key: &str) -> Res<u64> {
        match &v.get_ref().0 {
            Scalar::Int(n) => {
                u64::try_from(*n).map_err(|_| self.at(v, key, "must not be negative"))
            }
            Scalar::Text(s) => parse_size(s).map_err(|m| self.at(v, key, m)),
        }
    }

    /// A receive limit: a size, `"unlimited"`, or left out (undeclared).
    pub(super) fn receive_limit(
        &self,
        v: Option<&Spanned<SizeValue>>,
        key: &str,
    ) -> Res<ReceiveLimit> {
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

    pub(super) fn duration(
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

    pub(super) fn domain(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        let d = v.get_ref();
        match Mailbox::parse(&format!("x@{d}")) {
            Ok(_) => Ok(d.clone()),
            Err(AddressError::Invalid { reason, .. }) => {
                Err(self.at(v, key, format!("invalid domain {d:?}: {reason}")))
            }
            Err(_) => Err(self.at(v, key, format!("invalid domain {d:?}"))),
        }
    }

    pub(super) fn mailbox(&self, v: &Spanned<String>, key: &str) -> Res<String> {
        match Mailbox::parse(v.get_ref()) {
            Ok(_) => Ok(v.get_ref().clone()),
            Err(e) => Err(self.at(
                v,
                key,
                format!("{e}; a full address local@domain is required"),
            )),
        }
    }

    pub(super) fn resolve(&self, raw: RawConfig) -> Res<Config> {
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
            cluster: match &raw.cluster {
                Some(c) => Some(self.cluster(c)?),
                None => None,
            },
        })
    }

    /// The `[cluster]` section: the connection string is parsed and checked here (local,
    /// no TLS setting, no password in it) without connecting.
    fn cluster(&self, raw: &Spanned<RawCluster>) -> Res<ClusterSettings> {
        let c = raw.get_ref();
        let Some(database) = &c.database else {
            return Err(self.at(raw, "cluster.database", "missing required key"));
        };
        let lease_ttl =
            self.duration(c.lease_ttl.as_ref(), "cluster.lease_ttl", DEFAULT_LEASE_TTL)?;
        if let Some(v) = &c.lease_ttl {
            if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease_ttl) {
                return Err(self.at(
                    v,
                    "cluster.lease_ttl",
                    "must be between 10 seconds and 1 hour",
                ));
            }
        }
        let text = self.string(database, "cluster.database")?;
        let checked = crate::cluster::ClusterConfig::new(&text, "check", lease_ttl)
            .map_err(|e| self.at(database, "cluster.database", e.to_string()))?;
        if checked.has_password() {
            return Err(self.at(
                database,
                "cluster.database",
                "holds a password: give it with cluster.password_file, password_env or \
                 password_command instead (a connection string is shown in process lists and \
                 error reports)",
            ));
        }
        let instance = match &c.instance {
            Some(v) => {
                let name = self.string(v, "cluster.instance")?;
                if name.len() > 64 || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                    return Err(self.at(
                        v,
                        "cluster.instance",
                        "must be at most 64 characters, without spaces or control characters",
                    ));
                }
                Some(name)
            }
            None => None,
        };
        let password = self.secret_family(
            "cluster",
            "password",
            [
                &c.password,
                &c.password_env,
                &c.password_file,
                &c.password_command,
            ],
        )?;
        let server_sessions = self.int(
            c.server_sessions.as_ref(),
            "cluster.server_sessions",
            1..=64,
            DEFAULT_SERVER_SESSIONS,
        )?;
        Ok(ClusterSettings {
            database: text,
            password,
            instance,
            lease_ttl,
            server_sessions,
        })
    }

    /// A time between passes (`key` names it): 5 minutes to 24 hours, default 15 minutes.
    pub(super) fn interval(&self, v: Option<&Spanned<DurationValue>>, key: &str) -> Res<Duration> {
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
    pub(super) fn metrics_listen(
        &self,
        v: &Spanned<String>,
        allow_remote: bool,
    ) -> Res<std::net::SocketAddr> {
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

    /// `[transport]`: an SMTP server, or a pickup folder. Every key given is validated
    /// (in file-format order) whichever kind uses it.
    pub(super) fn transport(&self, raw: &RawTransport, state_dir: &Path) -> Res<Transport> {
        // The `[transport]` header's position, for keys missing from it.
        let span = self.table_header("transport");
        let kind = raw.kind.unwrap_or(RawDeliveryKind::Smtp);
        let pickup = match kind {
            RawDeliveryKind::Smtp => None,
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
                Some((dir, failed_dir, mode))
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
        let smtp = SmtpTransport {
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
        };
        Ok(match pickup {
            None => Transport::Smtp(smtp),
            // The SMTP keys are not used with a pickup folder, but for the name in the
            // `Received:` header.
            Some((dir, failed_dir, mode)) => Transport::Pickup(PickupTransport {
                dir,
                failed_dir,
                mode,
                helo: smtp.helo,
            }),
        })
    }

    pub(super) fn fingerprint(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
    ) -> Res<Option<Fingerprint>> {
        v.map(|v| Fingerprint::parse(v.get_ref()).map_err(|m| self.at(v, key, &m)))
            .transpose()
    }

    pub(super) fn limits(&self, raw: &RawLimits) -> Res<Limits> {
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

    pub(super) fn account(&self, raw: Spanned<RawAccount>, prefix: &str) -> Res<Account> {
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
    pub(super) fn oauth2(
        &self,
        raw: &Spanned<RawOAuth2>,
        key: &str,
        auth: Option<AuthMethod>,
    ) -> Res<OAuth2> {
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
    pub(super) fn secret_family(
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
