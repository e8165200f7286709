//! OAuth2 access tokens for SASL XOAUTH2 (Gmail, Office 365): the refresh-token grant
//! (RFC 6749 §6) against the account's token endpoint, an in-memory cache, and the
//! refresh token a provider rotates.
//!
//! Responsible for: parsing `token_url` ([`TokenUrl`]), the form-encoded `POST` to it over
//! HTTPS through the crate's [`Dialer`] with the account's CA settings, bounded in time
//! (`timeouts.connect` + `timeouts.command` for the whole exchange) and in size
//! ([`MAX_RESPONSE`]); reading the token response or the error response (RFC 6749 §5.1,
//! §5.2); caching each account's access token in memory, for the whole process (the
//! daemon's passes share it), until [`EXPIRY_MARGIN`] before it expires; and storing a
//! rotated refresh token in `state_dir/oauth2/<account>.refresh` (mode 0600, written to a
//! temporary file and renamed), which later runs use instead of the configured one for as
//! long as the configured one stays the same.
//! Must never: log, quote or put into an error, event or Debug string a refresh token,
//! client secret or access token (a provider's error text is scrubbed of them); retry a
//! refused refresh in a loop (one request per call); follow a redirect; send anything to a
//! `token_url` that is not `https`.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::time::Instant;

use crate::config::{Account, Config, OAuth2};
use crate::http::{self, HttpError};
use crate::net::{self, Dialer, TlsError};
use crate::secret::{Secret, SecretError, SecretSource};

/// The most octets read of a token endpoint's response (status line and headers included).
pub const MAX_RESPONSE: usize = 64 * 1024;
/// A cached access token is used until this long before its expiry.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The lifetime assumed for an access token whose response had no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The most characters of a provider's error description quoted in a message.
const MAX_DESCRIPTION: usize = 300;
/// The most octets of a stored refresh-token file read.
const MAX_STORED: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------
// The token endpoint's address
// ---------------------------------------------------------------------------------------

/// A validated `https://` token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenUrl {
    /// The host name or IP address (without brackets), checked as a TLS server name.
    pub host: String,
    /// The port (443 unless the URL names one).
    pub port: u16,
    /// The path and query sent in the request line (at least `/`).
    pub path: String,
    text: String,
}

impl TokenUrl {
    /// Parses `https://host[:port][/path][?query]`; the message says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let rest = match text.get(..8) {
            Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &text[8..],
            _ => {
                return Err(
                    "must be an https:// URL (the refresh token and the client secret are \
                     sent to it)"
                        .into(),
                )
            }
        };
        if !text.is_ascii() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must be ASCII without spaces (percent-encode anything else)".into());
        }
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.contains('#') {
            return Err("must not have a fragment (#...)".into());
        }
        if authority.contains('@') {
            return Err("must not carry credentials (user@host)".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(after) => {
                let Some(end) = after.find(']') else {
                    return Err("has an unclosed [ in its host".into());
                };
                let tail = &after[end + 1..];
                let port = match tail.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if tail.is_empty() => None,
                    None => return Err("has text after its host's ]".into()),
                };
                (&after[..end], port)
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("has an invalid port {p:?}")),
            },
        };
        if rustls::pki_types::ServerName::try_from(host).is_err() {
            return Err(format!(
                "has an invalid host {host:?}: expected a DNS name or IP address"
            ));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            path,
            text: text.to_string(),
        })
    }

    /// The `Host` header's value: the host (bracketed when IPv6), with the port unless 443.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for TokenUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for TokenUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenUrl({})", self.text)
    }
}

/// `application/x-www-form-urlencoded`: each name and value percent-encoded (alphanumerics
/// and `*-._` as they are, a space as `+`), pairs joined with `&`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, name);
        out.push('=');
        encode_into(&mut out, value);
    }
    out
}

fn encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why no access token was obtained. Never holds a token or a client secret.
#[derive(Debug, Error)]
pub enum OAuth2Error {
    /// A secret source (`refresh_token*`, `client_secret*`) could not be read.
    #[error("oauth2.{key}: {source}")]
    Secret {
        /// `refresh_token` or `client_secret`.
        key: &'static str,
        /// Why (never the value).
        source: SecretError,
    },
    /// The TLS configuration for the token endpoint could not be built (`ca_file`).
    #[error("OAuth2 token endpoint {url}: {source}")]
    TlsConfig {
        /// The token endpoint.
        url: String,
        /// Why.
        source: TlsError,
    },
    /// The stored refresh token could not be read.
    #[error("cannot read the stored refresh token {}: {reason}", path.display())]
    Stored {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to the OAuth2 token endpoint {url}: {source}")]
    Connect {
        /// The token endpoint.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("OAuth2 token endpoint {url}: {source}")]
    Tls {
        /// The token endpoint.
        url: String,
        /// Why.
        source: TlsError,
    },
    /// The exchange did not finish in time.
    #[error(
        "the OAuth2 token endpoint {url} did not answer within {secs} s (timeouts.connect + \
         timeouts.command)"
    )]
    Timeout {
        /// The token endpoint.
        url: String,
        /// The bound applied.
        secs: u64,
    },
    /// The response was not usable HTTP (too large, malformed, cut short).
    #[error("OAuth2 token endpoint {url}: {source}")]
    Http {
        /// The token endpoint.
        url: String,
        /// Why.
        source: HttpError,
    },
    /// The endpoint is temporarily unable (5xx, 429, `temporarily_unavailable`).
    #[error("the OAuth2 token endpoint {url} is unavailable: HTTP {status} {reason}{detail}")]
    Unavailable {
        /// The token endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// `: error: description` when the body said more (scrubbed).
        detail: String,
    },
    /// Another status without an RFC 6749 error (a redirect, a 404): `token_url` is
    /// probably wrong.
    #[error(
        "the OAuth2 token endpoint {url} answered HTTP {status} {reason} (redirects are not \
         followed): check token_url"
    )]
    Status {
        /// The token endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The reason phrase.
        reason: String,
    },
    /// The provider refused the grant (RFC 6749 §5.2): an authentication failure.
    #[error(
        "the OAuth2 token endpoint {url} refused {which}: {error}{}; {}",
        description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
        advice(error)
    )]
    Refused {
        /// The token endpoint.
        url: String,
        /// Which refresh token was sent (configured, or stored after a rotation).
        which: String,
        /// The HTTP status.
        status: u16,
        /// The `error` code (`invalid_grant`, `invalid_client` ...).
        error: String,
        /// The `error_description`, scrubbed of secrets and shortened.
        description: Option<String>,
    },
    /// A success status whose body is not a usable token response.
    #[error("the OAuth2 token endpoint {url} sent an unusable token response: {reason}")]
    BadResponse {
        /// The token endpoint.
        url: String,
        /// What is wrong (never a token).
        reason: String,
    },
}

/// What to do about a refusal, by its RFC 6749 error code.
fn advice(error: &str) -> &'static str {
    match error {
        "invalid_grant" => {
            "the refresh token was revoked or has expired: obtain a new one (sign in and \
             consent again) and put it in the account's oauth2.refresh_token"
        }
        "invalid_client" | "unauthorized_client" => {
            "check the account's oauth2.client_id and oauth2.client_secret"
        }
        "interaction_required" | "consent_required" | "login_required" => {
            "the user must sign in and consent again in a browser: obtain a new refresh token"
        }
        "invalid_scope" => "check the account's oauth2.scope",
        _ => "check the account's oauth2 settings",
    }
}

impl OAuth2Error {
    /// True when the provider refused the grant: an authentication failure (exit code 3,
    /// an `auth.failed` event), not to be retried before the configuration changes.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// True for a problem of the local configuration (a secret source, `ca_file`, the
    /// stored refresh token's file).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Secret { .. } | Self::TlsConfig { .. } | Self::Stored { .. }
        )
    }

    /// True for failures worth retrying on a later pass as they are (the network, 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Tls { .. }
                | Self::Timeout { .. }
                | Self::Http { .. }
                | Self::Unavailable { .. }
        )
    }
}

// ---------------------------------------------------------------------------------------
// Token responses
// ---------------------------------------------------------------------------------------

/// A successful token response (RFC 6749 §5.1).
pub struct Grant {
    /// The access token (sent in XOAUTH2).
    pub access_token: Secret,
    /// Its lifetime in seconds, when the provider said.
    pub expires_in: Option<u64>,
    /// A new refresh token, when the provider rotated it.
    pub refresh_token: Option<Secret>,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("access_token", &self.access_token)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token)
            .finish()
    }
}

/// Reads a token endpoint's response. `secrets` are removed from any provider text quoted
/// in an error; `url` and `which` name the endpoint and the refresh token in messages.
pub fn read_response(
    response: &http::Response,
    url: &str,
    which: &str,
    secrets: &[&Secret],
) -> Result<Grant, OAuth2Error> {
    let status = response.status;
    let reason = clean(&response.reason, secrets, 100);
    if (200..300).contains(&status) {
        return parse_grant(&response.body).map_err(|reason| OAuth2Error::BadResponse {
            url: url.into(),
            reason,
        });
    }
    let rfc_error = parse_error(&response.body, secrets);
    let unavailable = status >= 500 || status == 429 || status == 408;
    match rfc_error {
        Some((error, description))
            if !unavailable
                && (400..500).contains(&status)
                && !matches!(
                    error.as_str(),
                    "temporarily_unavailable" | "server_error" | "slow_down"
                ) =>
        {
            Err(OAuth2Error::Refused {
                url: url.into(),
                which: which.into(),
                status,
                error,
                description,
            })
        }
        Some((error, description)) => Err(OAuth2Error::Unavailable {
            url: url.into(),
            status,
            reason,
            detail: format!(
                ": {error}{}",
                description.map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        }),
        None if unavailable => Err(OAuth2Error::Unavailable {
            url: url.into(),
            status,
            reason,
            detail: String::new(),
        }),
        None => Err(OAuth2Error::Status {
            url: url.into(),
            status,
            reason,
        }),
    }
}

/// A token response's fields; the error says which is missing or wrong (never a value).
fn parse_grant(body: &[u8]) -> Result<Grant, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_string())?;
    let serde_json::Value::Object(map) = value else {
        return Err("the body is not a JSON object".into());
    };
    let access_token = match map.get("access_token") {
        Some(serde_json::Value::String(t)) if is_token(t) => Secret::new(t.clone()),
        Some(serde_json::Value::String(_)) => {
            return Err("access_token is empty or holds spaces or control characters".into())
        }
        Some(_) => return Err("access_token is not a string".into()),
        None => return Err("no access_token".into()),
    };
    match map.get("token_type") {
        None => {}
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(serde_json::Value::String(t)) => {
            return Err(format!(
                "token_type {:?} is not Bearer",
                clean(t, &[&access_token], 40)
            ))
        }
        Some(_) => return Err("token_type is not a string".into()),
    }
    let expires_in = match map.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Some(v),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Some(f as u64),
            _ => return Err("expires_in is negative".into()),
        },
        // Some providers send it as a string of digits.
        Some(serde_json::Value::String(s)) => Some(
            s.trim()
                .parse::<u64>()
                .map_err(|_| "expires_in is not a number".to_string())?,
        ),
        Some(_) => return Err("expires_in is not a number".into()),
    };
    let refresh_token = match map.get("refresh_token") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) if is_token(t) => Some(Secret::new(t.clone())),
        Some(_) => {
            return Err("refresh_token is not a string without spaces or control characters".into())
        }
    };
    Ok(Grant {
        access_token,
        expires_in,
        refresh_token,
    })
}

/// Printable ASCII without spaces, 1 to 16 KiB: what a bearer or refresh token can be.
fn is_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 16 * 1024 && t.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// An RFC 6749 §5.2 error response's `error` and `error_description`, cleaned.
fn parse_error(body: &[u8], secrets: &[&Secret]) -> Option<(String, Option<String>)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?;
    let error = clean(error, secrets, 80);
    if error.is_empty() {
        return None;
    }
    let description = value
        .get("error_description")
        .and_then(|d| d.as_str())
        .map(|d| clean(d, secrets, MAX_DESCRIPTION))
        .filter(|d| !d.is_empty());
    Some((error, description))
}

/// Provider text made safe to quote: every secret replaced by `***` (before anything is
/// cut, so no part of one survives), control characters dropped, at most `max` characters.
fn clean(text: &str, secrets: &[&Secret], max: usize) -> String {
    let mut s = text.to_string();
    for secret in secrets {
        let v = secret.expose();
        if !v.is_empty() && s.contains(v) {
            s = s.replace(v, "***");
        }
    }
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().filter(|c| !c.is_control()).count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

// ---------------------------------------------------------------------------------------
// The stored (rotated) refresh token
// ---------------------------------------------------------------------------------------

/// Where a rotated refresh token of `account` is kept.
pub fn stored_path(state_dir: &Path, account: &str) -> PathBuf {
    state_dir.join("oauth2").join(format!("{account}.refresh"))
}

/// The SHA-256 of the configured refresh token, as hex: tells whether the stored token
/// replaced the one configured now.
fn fingerprint(token: &Secret) -> String {
    hex::encode(Sha256::digest(token.expose().as_bytes()))
}

/// A stored refresh token: the token, and which configured one it replaced.
struct StoredToken {
    replaces: String,
    token: Secret,
}

/// Reads the stored refresh token, `None` when there is none (or it is unusable: then it
/// is ignored with a warning and the configured one is used).
fn read_stored(path: &Path) -> Result<Option<StoredToken>, OAuth2Error> {
    let fail = |reason: String| OAuth2Error::Stored {
        path: path.to_path_buf(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_STORED + 1), &mut text)
        .map_err(|e| fail(e.to_string()))?;
    let parsed = (text.len() as u64 <= MAX_STORED)
        .then(|| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .flatten();
    let fields = parsed.as_ref().and_then(|v| {
        Some((
            v.get("replaces_sha256")?.as_str()?.to_string(),
            v.get("refresh_token")?.as_str()?.to_string(),
        ))
    });
    // The copy read from disk is wiped like any secret buffer.
    drop(Secret::new(String::from_utf8_lossy(&text).into_owned()));
    match fields {
        Some((replaces, token)) if is_token(&token) => Ok(Some(StoredToken {
            replaces,
            token: Secret::new(token),
        })),
        _ => {
            tracing::warn!(
                "{}: not a stored refresh token; ignored (the configured one is used)",
                path.display()
            );
            Ok(None)
        }
    }
}

/// Stores `token` (replacing the configured token with fingerprint `replaces`) at `path`:
/// a mode-0600 temporary file in the same folder, synced, renamed over the old one.
fn write_stored(path: &Path, replaces: &str, token: &Secret) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::private::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("refresh.tmp{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = crate::private::open_options();
    options.write(true).create_new(true);
    let content = Secret::new(
        serde_json::json!({
            "replaces_sha256": replaces,
            "refresh_token": token.expose(),
        })
        .to_string(),
    );
    let written = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(content.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

// ---------------------------------------------------------------------------------------
// The cache and the client
// ---------------------------------------------------------------------------------------

/// Which account and provider a cache entry belongs to: a reloaded configuration that
/// changes any of these starts afresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    state_dir: PathBuf,
    account: String,
    username: String,
    token_url: String,
    client_id: String,
    scope: Option<String>,
}

/// What the process remembers of an account.
#[derive(Default)]
struct Entry {
    /// The access token and when it expires.
    access: Option<(Secret, Instant)>,
    /// The latest rotated refresh token and the fingerprint of the configured one it
    /// replaced (kept in memory as well, in case storing it failed).
    refresh: Option<(String, Secret)>,
}

/// Every account's tokens in this process (the daemon's passes share them).
static CACHE: LazyLock<Mutex<HashMap<Key, Entry>>> = LazyLock::new(Mutex::default);

fn cache() -> std::sync::MutexGuard<'static, HashMap<Key, Entry>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets every token this process holds for accounts under `state_dir`: what a restart
/// does (harnesses simulating one; a stored refresh token stays on disk).
pub fn forget(state_dir: &Path) {
    cache().retain(|k, _| k.state_dir != state_dir);
}

/// Why a new access token was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// None was cached (the first login of this process).
    NoneCached,
    /// The cached one expires within [`EXPIRY_MARGIN`].
    Expiring,
    /// The POP3 server refused the cached one.
    Rejected,
}

impl fmt::Display for RefreshReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoneCached => "no access token cached",
            Self::Expiring => "the cached access token expires",
            Self::Rejected => "the POP3 server refused the cached access token",
        })
    }
}

/// What a refresh did (for the `auth.token_refreshed` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// Why it was needed.
    pub reason: RefreshReason,
    /// The new token's lifetime in seconds, when the provider said.
    pub expires_in: Option<u64>,
    /// True when the provider sent a new refresh token (stored under `state_dir`).
    pub rotated: bool,
}

/// An access token to log in with.
#[derive(Debug)]
pub struct Access {
    /// The token.
    pub token: Secret,
    /// `Some` when it was just obtained from the token endpoint, `None` when cached.
    pub refreshed: Option<Refreshed>,
}

/// The access tokens of one OAuth2 account.
pub struct Tokens<'a> {
    config: &'a Config,
    account: &'a Account,
    oauth: &'a OAuth2,
    dialer: &'a dyn Dialer,
    key: Key,
    /// Every secret handled so far (for reports that must scrub them).
    seen: Mutex<Vec<Secret>>,
}

impl<'a> Tokens<'a> {
    /// The tokens of `account`, `None` when it has no `oauth2` table.
    pub fn for_account(
        config: &'a Config,
        account: &'a Account,
        dialer: &'a dyn Dialer,
    ) -> Option<Self> {
        let oauth = account.oauth2.as_ref()?;
        Some(Self {
            config,
            account,
            oauth,
            dialer,
            key: Key {
                state_dir: config.state_dir.clone(),
                account: account.name.clone(),
                username: account.username.clone(),
                token_url: oauth.token_url.to_string(),
                client_id: oauth.client_id.clone(),
                scope: oauth.scope.clone(),
            },
            seen: Mutex::new(Vec::new()),
        })
    }

    /// Every secret this client has handled (refresh tokens, client secret, access
    /// tokens), for a report to scrub.
    pub fn secrets(&self) -> Vec<Secret> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The secret `source` holds (the setting `key`), read within the command timeout and
    /// recorded among [`Self::secrets`].
    async fn resolve(
        &self,
        source: &SecretSource,
        key: &'static str,
    ) -> Result<Secret, OAuth2Error> {
        let secret = source
            .resolve(self.config.timeouts.command)
            .await
            .map_err(|source| OAuth2Error::Secret { key, source })?;
        self.saw(&secret);
        Ok(secret)
    }

    fn saw(&self, s: &Secret) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(s.clone());
    }

    /// The cached access token while it is good for [`EXPIRY_MARGIN`] more, else a new one
    /// from the token endpoint (one request).
    pub async fn access_token(&self) -> Result<Access, OAuth2Error> {
        let reason = {
            let c = cache();
            match c.get(&self.key).and_then(|e| e.access.as_ref()) {
                Some((token, until)) if Instant::now() + EXPIRY_MARGIN < *until => {
                    let token = token.clone();
                    drop(c);
                    self.saw(&token);
                    return Ok(Access {
                        token,
                        refreshed: None,
                    });
                }
                Some(_) => RefreshReason::Expiring,
                None => RefreshReason::NoneCached,
            }
        };
        self.refresh(reason).await
    }

    /// Drops the cached access token the POP3 server refused and gets a new one (one
    /// request).
    pub async fn replace_rejected(&self) -> Result<Access, OAuth2Error> {
        if let Some(e) = cache().get_mut(&self.key) {
            e.access = None;
        }
        self.refresh(RefreshReason::Rejected).await
    }

    /// The refresh token to use and how to name it: the rotated one this process holds or
    /// `state_dir` stores, while the configured one is the one it replaced; else the
    /// configured one. Also the configured one's fingerprint.
    async fn refresh_token(&self) -> Result<(Secret, String, String), OAuth2Error> {
        let configured = self
            .resolve(&self.oauth.refresh_token, "refresh_token")
            .await?;
        let fp = fingerprint(&configured);
        let path = stored_path(&self.config.state_dir, &self.account.name);
        let in_memory = cache()
            .get(&self.key)
            .and_then(|e| e.refresh.as_ref())
            .filter(|(replaces, _)| *replaces == fp)
            .map(|(_, t)| t.clone());
        let rotated = match in_memory {
            Some(t) => Some(t),
            None => read_stored(&path)?
                .filter(|s| s.replaces == fp)
                .map(|s| s.token),
        };
        Ok(match rotated {
            Some(t) => {
                self.saw(&t);
                let which = format!(
                    "the refresh token stored in {} (rotated by the provider)",
                    path.display()
                );
                (t, which, fp)
            }
            None => (configured, "the configured refresh token".into(), fp),
        })
    }

    async fn refresh(&self, reason: RefreshReason) -> Result<Access, OAuth2Error> {
        let url = self.oauth.token_url.to_string();
        let (refresh, which, configured_fp) = self.refresh_token().await?;
        let client_secret = match &self.oauth.client_secret {
            Some(source) => Some(self.resolve(source, "client_secret").await?),
            None => None,
        };
        let mut pairs = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose()),
            ("client_id", self.oauth.client_id.as_str()),
        ];
        if let Some(s) = &client_secret {
            pairs.push(("client_secret", s.expose()));
        }
        if let Some(scope) = &self.oauth.scope {
            pairs.push(("scope", scope.as_str()));
        }
        let body = Secret::new(form_encode(&pairs));
        tracing::debug!(
            target: "popbridge::wire",
            account = %self.account.name,
            "OAuth2 C: POST {url} (grant_type=refresh_token, client_id={}, refresh_token=***{}{})",
            self.oauth.client_id,
            if client_secret.is_some() { ", client_secret=***" } else { "" },
            self.oauth.scope.as_deref().map(|s| format!(", scope={s}")).unwrap_or_default(),
        );
        let request = Secret::new(
            String::from_utf8(http::form_post(
                &self.oauth.token_url.host_header(),
                &self.oauth.token_url.path,
                body.expose(),
            ))
            .unwrap_or_default(),
        );
        let response = self.post(&url, request.expose().as_bytes()).await?;
        let mut secrets: Vec<&Secret> = vec![&refresh];
        secrets.extend(client_secret.as_ref());
        let outcome = read_response(&response, &url, &which, &secrets);
        match &outcome {
            Ok(g) => tracing::debug!(
                target: "popbridge::wire",
                account = %self.account.name,
                "OAuth2 S: HTTP {} (access_token=***, expires_in={}{})",
                response.status,
                g.expires_in.map_or("none".to_string(), |s| format!("{s} s")),
                if g.refresh_token.is_some() { ", refresh_token=*** (rotated)" } else { "" },
            ),
            Err(e) => tracing::debug!(
                target: "popbridge::wire",
                account = %self.account.name,
                "OAuth2 S: HTTP {} ({e})",
                response.status,
            ),
        }
        // The response body may hold tokens: wipe it with the rest.
        drop(Secret::new(
            String::from_utf8_lossy(&response.body).into_owned(),
        ));
        let grant = outcome?;
        self.saw(&grant.access_token);
        let lifetime = grant
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let until = Instant::now() + lifetime;
        let rotated = grant
            .refresh_token
            .as_ref()
            .filter(|new| **new != refresh)
            .cloned();
        {
            let mut c = cache();
            let entry = c.entry(self.key.clone()).or_default();
            entry.access = Some((grant.access_token.clone(), until));
            if let Some(new) = &rotated {
                self.saw(new);
                entry.refresh = Some((configured_fp.clone(), new.clone()));
            }
        }
        if let Some(new) = &rotated {
            let path = stored_path(&self.config.state_dir, &self.account.name);
            if let Err(e) = write_stored(&path, &configured_fp, new) {
                tracing::error!(
                    account = %self.account.name,
                    "cannot store the rotated OAuth2 refresh token in {}: {e}; this process \
                     keeps it in memory, but a restart will use the configured one",
                    path.display()
                );
            }
        }
        Ok(Access {
            token: grant.access_token,
            refreshed: Some(Refreshed {
                reason,
                expires_in: grant.expires_in,
                rotated: rotated.is_some(),
            }),
        })
    }

    /// One HTTPS exchange with the token endpoint, bounded by `timeouts.connect` +
    /// `timeouts.command` as a whole.
    async fn post(&self, url: &str, request: &[u8]) -> Result<http::Response, OAuth2Error> {
        let t = &self.oauth.token_url;
        let tls =
            net::client_config(self.account.ca_file.as_deref(), false, None).map_err(|source| {
                OAuth2Error::TlsConfig {
                    url: url.into(),
                    source,
                }
            })?;
        let timeouts = self.config.timeouts;
        let limit = timeouts.connect + timeouts.command;
        let exchange = async {
            let io = net::dial(self.dialer, &t.host, t.port, timeouts.connect)
                .await
                .map_err(|source| OAuth2Error::Connect {
                    url: url.into(),
                    source,
                })?;
            let mut io = net::handshake(tls, &t.host, &t.host, t.port, io, timeouts.connect)
                .await
                .map_err(|source| OAuth2Error::Tls {
                    url: url.into(),
                    source,
                })?;
            http::exchange(&mut io, request, MAX_RESPONSE)
                .await
                .map_err(|source| OAuth2Error::Http {
                    url: url.into(),
                    source,
                })
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) => Err(OAuth2Error::Timeout {
                url: url.into(),
                secs: limit.as_secs(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> http::Response {
        http::Response {
            status,
            reason: "Whatever".into(),
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn token_urls() {
        let u = TokenUrl::parse("https://oauth2.googleapis.com/token").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("oauth2.googleapis.com", 443, "/token")
        );
        assert_eq!(u.host_header(), "oauth2.googleapis.com");
        let u = TokenUrl::parse("HTTPS://127.0.0.1:8443?x=1").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8443, "/?x=1"));
        assert_eq!(u.host_header(), "127.0.0.1:8443");
        let u = TokenUrl::parse("https://[::1]:9/t").unwrap();
        assert_eq!(
            (u.host.as_str(), u.host_header()),
            ("::1", "[::1]:9".into())
        );
        assert_eq!(TokenUrl::parse("https://h").unwrap().path, "/");
        for (bad, why) in [
            ("http://localhost/token", "https://"),
            ("oauth2.googleapis.com/token", "https://"),
            ("https:///token", "no host"),
            ("https://h:0/", "invalid port"),
            ("https://h:99999/", "invalid port"),
            ("https://h:+1/", "invalid port"),
            ("https://u:p@h/", "credentials"),
            ("https://h/t#frag", "fragment"),
            ("https://h/a b", "spaces"),
            ("https://bad_host!/", "invalid host"),
            ("https://[::1/", "unclosed"),
            ("https://hé/", "ASCII"),
        ] {
            let e = TokenUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "1//0g+a/b=c&d"),
                (
                    "scope",
                    "https://outlook.office.com/POP.AccessAsUser.All offline_access"
                ),
                ("x", "é~*-._"),
            ]),
            "grant_type=refresh_token&refresh_token=1%2F%2F0g%2Ba%2Fb%3Dc%26d\
             &scope=https%3A%2F%2Foutlook.office.com%2FPOP.AccessAsUser.All+offline_access\
             &x=%C3%A9%7E*-._"
        );
    }

    #[test]
    fn token_responses() {
        let g = read_response(
            &response(
                200,
                r#"{"access_token":"ya29.a0","expires_in":3599,"token_type":"Bearer","scope":"s"}"#,
            ),
            "u",
            "w",
            &[],
        )
        .unwrap();
        assert_eq!(
            (
                g.access_token.expose(),
                g.expires_in,
                g.refresh_token.is_none()
            ),
            ("ya29.a0", Some(3599), true)
        );
        let g = read_response(
            &response(
                200,
                r#"{"access_token":"t","expires_in":"3600","refresh_token":"r2","token_type":"bearer"}"#,
            ),
            "u",
            "w",
            &[],
        )
        .unwrap();
        assert_eq!(g.expires_in, Some(3600));
        assert_eq!(g.refresh_token.unwrap().expose(), "r2");
        for (body, why) in [
            ("not json", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"token_type":"Bearer"}"#, "no access_token"),
            (r#"{"access_token":""}"#, "empty"),
            (r#"{"access_token":"a b"}"#, "spaces"),
            (r#"{"access_token":5}"#, "not a string"),
            (r#"{"access_token":"t","token_type":"mac"}"#, "not Bearer"),
            (r#"{"access_token":"t","expires_in":-5}"#, "negative"),
            (
                r#"{"access_token":"t","expires_in":"soon"}"#,
                "not a number",
            ),
            (r#"{"access_token":"t","refresh_token":7}"#, "refresh_token"),
        ] {
            let e = read_response(&response(200, body), "u", "w", &[]).unwrap_err();
            assert!(
                matches!(e, OAuth2Error::BadResponse { .. }) && e.to_string().contains(why),
                "{body}: {e}"
            );
        }
    }

    #[test]
    fn error_responses_are_classified_and_scrubbed() {
        let refresh = Secret::new("1//refresh-SECRET".into());
        let client = Secret::new("client-SECRET".into());
        let secrets = [&refresh, &client];
        let e = read_response(
            &response(
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            ),
            "https://oauth2.googleapis.com/token",
            "the configured refresh token",
            &secrets,
        )
        .unwrap_err();
        assert!(e.is_refusal() && !e.is_transient());
        assert_eq!(
            e.to_string(),
            "the OAuth2 token endpoint https://oauth2.googleapis.com/token refused the \
             configured refresh token: invalid_grant (Token has been expired or revoked.); \
             the refresh token was revoked or has expired: obtain a new one (sign in and \
             consent again) and put it in the account's oauth2.refresh_token"
        );
        for code in [
            "invalid_client",
            "unauthorized_client",
            "interaction_required",
            "consent_required",
        ] {
            let body = format!(r#"{{"error":"{code}"}}"#);
            assert!(read_response(&response(401, &body), "u", "w", &[])
                .unwrap_err()
                .is_refusal());
        }
        // A provider that echoes the request: the secrets never come back out.
        let echo = r#"{"error":"invalid_request","error_description":"bad refresh_token=1//refresh-SECRET&client_secret=client-SECRET\n"}"#;
        let e = read_response(&response(400, echo), "u", "w", &secrets).unwrap_err();
        let text = e.to_string();
        assert!(
            !text.contains("SECRET") && text.contains("refresh_token=***"),
            "{text}"
        );
        // Transient: 5xx, 429, temporarily_unavailable.
        for (status, body) in [
            (503, "<html>down</html>"),
            (500, r#"{"error":"server_error"}"#),
            (429, r#"{"error":"invalid_grant"}"#),
            (400, r#"{"error":"temporarily_unavailable"}"#),
        ] {
            let e = read_response(&response(status, body), "u", "w", &[]).unwrap_err();
            assert!(e.is_transient() && !e.is_refusal(), "{status} {body}: {e}");
        }
        for status in [302, 404] {
            let e = read_response(&response(status, "nope"), "u", "w", &[]).unwrap_err();
            assert!(matches!(e, OAuth2Error::Status { .. }), "{e}");
        }
        // A long description is cut, after the scrubbing.
        let long = format!(
            r#"{{"error":"invalid_grant","error_description":"{}1//refresh-SECRET"}}"#,
            "x".repeat(295)
        );
        let e = read_response(&response(400, &long), "u", "w", &secrets).unwrap_err();
        assert!(!e.to_string().contains("1//refresh"), "{e}");
    }

    #[test]
    fn stored_tokens_are_private_files_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = stored_path(dir.path(), "info");
        assert!(read_stored(&path).unwrap().is_none());
        write_stored(&path, "fp1", &Secret::new("rt-1".into())).unwrap();
        write_stored(&path, "fp2", &Secret::new("rt-2".into())).unwrap();
        let s = read_stored(&path).unwrap().unwrap();
        assert_eq!((s.replaces.as_str(), s.token.expose()), ("fp2", "rt-2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let dmode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(dmode, 0o700);
        }
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("info.refresh")]);
        std::fs::write(&path, "garbage").unwrap();
        assert!(read_stored(&path).unwrap().is_none());
    }

    #[test]
    fn errors_never_print_secrets() {
        let g = Grant {
            access_token: Secret::new("AT-SECRET".into()),
            expires_in: Some(1),
            refresh_token: Some(Secret::new("RT-SECRET".into())),
        };
        assert!(!format!("{g:?}").contains("SECRET"));
    }
}
