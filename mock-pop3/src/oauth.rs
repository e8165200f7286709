//! A mock OAuth2 token endpoint (RFC 6749 §6, the refresh-token grant) over HTTPS, and
//! the bearer tokens it issues, which the mock POP3 server's XOAUTH2 then accepts.
//!
//! Responsible for: serving `POST <path>` on a listener the caller bound (or over
//! in-memory streams) with TLS from the test PKI; checking the client id, the client
//! secret (when one is configured) and the refresh token; issuing access tokens with a
//! lifetime on a mock clock that only moves when told ([`OAuthProvider::advance`]),
//! rotating the refresh token when asked, refusing everything as `invalid_grant` once
//! revoked; and deciding, for a mailbox given this provider, whether an XOAUTH2 bearer
//! token is one it issued and still valid. Controls make expiry deterministic: advance the
//! clock, expire every token now, or expire the first token after its first login.
//! Must never: read a request without a bound, sleep, or listen beyond loopback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;

use mock_core::tracker::Tracker;

/// The most octets of a request read (head and body).
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What `invalid_grant` says (Google's wording).
pub const REVOKED_DESCRIPTION: &str = "Token has been expired or revoked.";

/// How the provider behaves.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The path of the token endpoint (default `/token`).
    pub path: String,
    /// The client id it knows.
    pub client_id: String,
    /// The client secret it requires; `None` for a public client.
    pub client_secret: Option<String>,
    /// The refresh tokens it accepts.
    pub refresh_tokens: Vec<String>,
    /// The user (mailbox) its tokens are for.
    pub user: String,
    /// The lifetime it gives access tokens (`expires_in`).
    pub lifetime: Duration,
    /// Whether each refresh also issues a new refresh token (the old one stops working).
    pub rotate: bool,
    /// Whether every refresh token is revoked (`invalid_grant`).
    pub revoked: bool,
    /// Whether the first access token stops working after its first successful login,
    /// although its lifetime says otherwise (the POP3 server then refuses it as expired).
    pub expire_first_token: bool,
    /// Prefix of the tokens it makes (distinct per provider in one test).
    pub token_prefix: String,
}

impl ProviderConfig {
    /// A provider for `user` with one client and one refresh token, access tokens lasting
    /// an hour, no rotation.
    pub fn new(
        user: impl Into<String>,
        client_id: impl Into<String>,
        refresh_token: impl Into<String>,
    ) -> Self {
        Self {
            path: "/token".into(),
            client_id: client_id.into(),
            client_secret: None,
            refresh_tokens: vec![refresh_token.into()],
            user: user.into(),
            lifetime: Duration::from_secs(3600),
            rotate: false,
            revoked: false,
            expire_first_token: false,
            token_prefix: "mock-access".into(),
        }
    }
}

/// One request to the token endpoint, as the provider judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRequest {
    /// The HTTP status it answered.
    pub status: u16,
    /// The RFC 6749 `error` code, when it refused.
    pub error: Option<String>,
    /// The `grant_type` sent.
    pub grant_type: Option<String>,
    /// The `scope` sent.
    pub scope: Option<String>,
    /// Whether a `client_secret` was sent.
    pub client_secret_sent: bool,
    /// Whether the refresh token sent was one the provider had issued by rotation (not
    /// one of the initial ones).
    pub rotated_refresh_token: bool,
}

#[derive(Debug)]
struct Issued {
    token: String,
    expires_at: u64,
    expired: bool,
    logins: u32,
    first: bool,
}

#[derive(Debug)]
struct State {
    cfg: ProviderConfig,
    /// The mock clock, in seconds.
    now: u64,
    valid_refresh: BTreeSet<String>,
    rotated: BTreeSet<String>,
    issued: Vec<Issued>,
    requests: Vec<TokenRequest>,
    logins: Vec<(String, bool)>,
}

/// A mock OAuth2 provider: its configuration, the tokens it issued, its clock. Cloning
/// shares it (the endpoint and the mailbox hold the same one).
#[derive(Debug, Clone)]
pub struct OAuthProvider {
    state: Arc<Mutex<State>>,
}

impl OAuthProvider {
    /// A provider as configured.
    pub fn new(cfg: ProviderConfig) -> Self {
        let valid_refresh = cfg.refresh_tokens.iter().cloned().collect();
        Self {
            state: Arc::new(Mutex::new(State {
                cfg,
                now: 0,
                valid_refresh,
                rotated: BTreeSet::new(),
                issued: Vec::new(),
                requests: Vec::new(),
                logins: Vec::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the mock clock forward: tokens whose lifetime ran out stop working.
    pub fn advance(&self, by: Duration) {
        self.state().now += by.as_secs();
    }

    /// Expires every access token issued so far.
    pub fn expire_all(&self) {
        for t in &mut self.state().issued {
            t.expired = true;
        }
    }

    /// Revokes (or restores) every refresh token: refreshes get `invalid_grant`.
    pub fn set_revoked(&self, revoked: bool) {
        self.state().cfg.revoked = revoked;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state().requests.clone()
    }

    /// Access tokens issued so far, oldest first.
    pub fn issued(&self) -> Vec<String> {
        self.state()
            .issued
            .iter()
            .map(|t| t.token.clone())
            .collect()
    }

    /// The refresh tokens that work now.
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        self.state().valid_refresh.iter().cloned().collect()
    }

    /// Every XOAUTH2 login judged so far: (user, accepted).
    pub fn logins(&self) -> Vec<(String, bool)> {
        self.state().logins.clone()
    }

    /// True when `token` is an access token this provider issued for `user` and still
    /// valid; counts the login (the first token may expire by it, see
    /// [`ProviderConfig::expire_first_token`]).
    pub fn accept_bearer(&self, user: &str, token: &str) -> bool {
        let mut st = self.state();
        let now = st.now;
        let for_user = st.cfg.user == user;
        let expire_first = st.cfg.expire_first_token;
        let ok = match st.issued.iter_mut().find(|t| t.token == token) {
            Some(t) if for_user && !t.expired && now < t.expires_at => {
                t.logins += 1;
                if expire_first && t.first {
                    t.expired = true;
                }
                true
            }
            _ => false,
        };
        st.logins.push((user.to_string(), ok));
        ok
    }

    /// Judges one request: the status and the JSON body to answer with.
    fn grant(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        let mut st = self.state();
        let form = parse_form(body);
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut record = TokenRequest {
            status: 200,
            error: None,
            grant_type: field("grant_type"),
            scope: field("scope"),
            client_secret_sent: field("client_secret").is_some(),
            rotated_refresh_token: field("refresh_token").is_some_and(|r| st.rotated.contains(&r)),
        };
        let refuse = |status: u16, error: &str, description: &str| {
            (
                status,
                serde_json::json!({ "error": error, "error_description": description }).to_string(),
            )
        };
        let answer = if method != "POST" || path != st.cfg.path {
            refuse(404, "not_found", "No such endpoint.")
        } else if !content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            refuse(400, "invalid_request", "Expected a form.")
        } else if field("grant_type").as_deref() != Some("refresh_token") {
            refuse(
                400,
                "unsupported_grant_type",
                "Only refresh_token is supported.",
            )
        } else if field("client_id").as_deref() != Some(st.cfg.client_id.as_str())
            || st
                .cfg
                .client_secret
                .as_ref()
                .is_some_and(|s| field("client_secret").as_ref() != Some(s))
        {
            refuse(401, "invalid_client", "The OAuth client was not found.")
        } else {
            match field("refresh_token") {
                None => refuse(
                    400,
                    "invalid_request",
                    "Missing required parameter: refresh_token",
                ),
                Some(r) if st.cfg.revoked || !st.valid_refresh.contains(&r) => {
                    refuse(400, "invalid_grant", REVOKED_DESCRIPTION)
                }
                Some(r) => {
                    let n = st.issued.len() + 1;
                    let token = format!("{}-{n}", st.cfg.token_prefix);
                    let lifetime = st.cfg.lifetime.as_secs();
                    let expires_at = st.now + lifetime;
                    st.issued.push(Issued {
                        token: token.clone(),
                        expires_at,
                        expired: false,
                        logins: 0,
                        first: n == 1,
                    });
                    let mut json = serde_json::json!({
                        "access_token": token,
                        "expires_in": lifetime,
                        "token_type": "Bearer",
                    });
                    if let Some(scope) = field("scope") {
                        json["scope"] = serde_json::Value::String(scope);
                    }
                    if st.cfg.rotate {
                        let new = format!("{}-refresh-{n}", st.cfg.token_prefix);
                        st.valid_refresh.remove(&r);
                        st.valid_refresh.insert(new.clone());
                        st.rotated.insert(new.clone());
                        json["refresh_token"] = serde_json::Value::String(new);
                    }
                    (200, json.to_string())
                }
            }
        };
        record.status = answer.0;
        record.error = (answer.0 != 200)
            .then(|| {
                serde_json::from_str::<serde_json::Value>(&answer.1)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
            })
            .flatten();
        st.requests.push(record);
        answer
    }

    /// Serves the token endpoint over TLS on a listener the caller bound.
    pub fn spawn(&self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) -> OAuthHandle {
        let handle = OAuthHandle {
            addr: listener.local_addr().ok(),
            provider: self.clone(),
            tls: tls.clone(),
            tracker: Arc::new(Tracker::new()),
        };
        let (provider, tracker) = (self.clone(), handle.tracker.clone());
        handle.tracker.accept_loop(listener, move |sock, _peer| {
            tracker.spawn_session(serve(provider.clone(), tls.clone(), sock));
        });
        handle
    }

    /// The token endpoint without a listener: connect with [`OAuthHandle::connect_duplex`].
    pub fn spawn_in_memory(&self, tls: Arc<rustls::ServerConfig>) -> OAuthHandle {
        OAuthHandle {
            addr: None,
            provider: self.clone(),
            tls,
            tracker: Arc::new(Tracker::new()),
        }
    }
}

/// A running mock token endpoint.
pub struct OAuthHandle {
    addr: Option<SocketAddr>,
    provider: OAuthProvider,
    tls: Arc<rustls::ServerConfig>,
    tracker: Arc<Tracker>,
}

impl OAuthHandle {
    /// The bound address (`None` in memory).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The provider behind it.
    pub fn provider(&self) -> &OAuthProvider {
        &self.provider
    }

    /// A client end of an in-memory connection (TLS is still spoken over it).
    pub fn connect_duplex(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        self.tracker
            .spawn_session(serve(self.provider.clone(), self.tls.clone(), server));
        client
    }

    /// Waits until no request is being served.
    pub async fn wait_idle(&self) {
        self.tracker.wait_idle().await;
    }

    /// Stops accepting and ends every connection.
    pub async fn shutdown(self) {
        self.tracker.shutdown().await;
    }
}

/// One connection: TLS, one request, one response, close.
async fn serve<S>(provider: OAuthProvider, tls: Arc<rustls::ServerConfig>, sock: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let Ok(Ok(mut stream)) = tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(sock)).await
    else {
        return;
    };
    let (status, body) = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream))
        .await
    {
        Ok(Ok(req)) => provider.grant(&req.method, &req.path, &req.content_type, &req.body),
        Ok(Err(why)) => (
            400,
            serde_json::json!({ "error": "invalid_request", "error_description": why }).to_string(),
        ),
        Err(_) => return,
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Cache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

struct Request {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Reads one request with a `Content-Length` body, at most [`MAX_REQUEST`] octets.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                if header("transfer-encoding").is_some() {
                    return Err("Transfer-Encoding is not supported here.".into());
                }
                let length: usize = match header("content-length") {
                    Some(v) => v.parse().map_err(|_| "Bad Content-Length.".to_string())?,
                    None => 0,
                };
                if head + length > MAX_REQUEST {
                    return Err("Request too large.".into());
                }
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                let content_type = header("content-type").unwrap_or_default();
                while buf.len() < head + length {
                    let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("Request cut short.".into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(Request {
                    method,
                    path,
                    content_type,
                    body: buf[head..head + length].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("Malformed request: {e}.")),
        }
        if buf.len() >= MAX_REQUEST {
            return Err("Request too large.".into());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("Request cut short.".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space, `%XX` an octet; a bad
/// escape is kept as written).
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let name = decode(it.next().unwrap_or(b""));
            let value = decode(it.next().unwrap_or(b""));
            (name, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        assert_eq!(
            parse_form(b"a=1%2F2+3&b=&c&d=%zz%4"),
            vec![
                ("a".to_string(), "1/2 3".to_string()),
                ("b".into(), "".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz%4".into()),
            ]
        );
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    /// A refresh-token grant of client `cid` for `token`, with `secret` when given.
    fn refresh(token: &str, secret: Option<&str>) -> Vec<u8> {
        let mut pairs = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "cid"),
        ];
        pairs.extend(secret.map(|s| ("client_secret", s)));
        form(&pairs)
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    #[test]
    fn grants_rotation_revocation_and_expiry() {
        let mut cfg = ProviderConfig::new("info", "cid", "rt-0");
        cfg.client_secret = Some("cs".into());
        cfg.rotate = true;
        let p = OAuthProvider::new(cfg);
        let ok = refresh("rt-0", Some("cs"));
        let (status, body) = p.grant("POST", "/token", FORM, &ok);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let token = v["access_token"].as_str().unwrap().to_string();
        assert_eq!(v["expires_in"], 3600);
        assert_eq!(v["refresh_token"], "mock-access-refresh-1");
        // The old refresh token no longer works; the new one does.
        let (status, body) = p.grant("POST", "/token", FORM, &ok);
        assert_eq!(status, 400);
        assert!(body.contains("invalid_grant") && body.contains(REVOKED_DESCRIPTION));
        assert!(p.accept_bearer("info", &token));
        assert!(!p.accept_bearer("other", &token));
        assert!(!p.accept_bearer("info", "forged"));
        p.advance(Duration::from_secs(3600));
        assert!(!p.accept_bearer("info", &token), "expired by the clock");
        // A wrong secret, a wrong client, a wrong grant type, a wrong path.
        for (body, status, error) in [
            (
                refresh("mock-access-refresh-1", Some("nope")),
                401,
                "invalid_client",
            ),
            (
                form(&[("grant_type", "password"), ("client_id", "cid")]),
                400,
                "unsupported_grant_type",
            ),
        ] {
            let (s, b) = p.grant("POST", "/token", FORM, &body);
            assert_eq!(s, status, "{b}");
            assert!(b.contains(error), "{b}");
        }
        assert_eq!(p.grant("POST", "/other", FORM, &ok).0, 404);
        p.set_revoked(true);
        let rotated = refresh("mock-access-refresh-1", Some("cs"));
        assert_eq!(p.grant("POST", "/token", FORM, &rotated).0, 400);
        let errors: Vec<_> = p.requests().into_iter().map(|r| r.error).collect();
        assert_eq!(errors.last().unwrap().as_deref(), Some("invalid_grant"));
        assert!(p.requests().last().unwrap().rotated_refresh_token);
    }

    #[test]
    fn the_first_token_can_expire_after_its_first_login() {
        let mut cfg = ProviderConfig::new("info", "cid", "rt");
        cfg.expire_first_token = true;
        let p = OAuthProvider::new(cfg);
        let ok = refresh("rt", None);
        p.grant("POST", "/token", FORM, &ok);
        p.grant("POST", "/token", FORM, &ok);
        let issued = p.issued();
        assert!(p.accept_bearer("info", &issued[0]));
        assert!(!p.accept_bearer("info", &issued[0]));
        assert!(p.accept_bearer("info", &issued[1]));
        assert!(p.accept_bearer("info", &issued[1]));
        p.expire_all();
        assert!(!p.accept_bearer("info", &issued[1]));
    }
}
