//! OAuth2 for XOAUTH2: popbridge refreshes its access token at the mock token endpoint
//! (HTTPS with the test CA), caches it, replaces a cached one the POP3 server refuses
//! once, stores a rotated refresh token, and reports a revoked one as an auth failure.

use std::path::{Path, PathBuf};

use mock_pop3::oauth::{OAuthHandle, OAuthProvider, ProviderConfig};
use mock_pop3::pki::TestPki;
use mock_pop3::{MockPop3, MockPop3Handle};
use mock_smtp::{MockSmtp, MockSmtpHandle};
use popbridge::pass::AccountFailure;
use popbridge_proto::pop3::AuthMethod;

use crate::harness::*;

pub const REFRESH: &str = "1//refresh-TOKEN-s3cret";
pub const CLIENT_SECRET: &str = "GOCSPX-client-s3cret";
pub const CLIENT_ID: &str = "1234.apps.example";

/// A token endpoint over HTTPS on loopback, a POP3 mock whose `info` mailbox takes only
/// its tokens, an SMTP mock, and the test CA written to `dir/ca.pem`.
pub struct World {
    pub provider: OAuthProvider,
    pub endpoint: OAuthHandle,
    pub pop: MockPop3Handle,
    pub smtp: MockSmtpHandle,
    pub ca: PathBuf,
}

pub async fn world(dir: &Path, cfg: ProviderConfig, messages: usize) -> World {
    let pki = TestPki::localhost().unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let provider = OAuthProvider::new(cfg);
    let endpoint = provider.spawn(listener().await, pki.server_config().unwrap());
    let mb = mailbox_with((0..messages).map(|i| mail(i, "alice@example.net", 600)))
        .with_methods([AuthMethod::Xoauth2])
        .with_oauth(provider.clone());
    let pop = pop3(MockPop3::builder().maildrop(mb)).await;
    let smtp = smtp(MockSmtp::builder()).await;
    World {
        provider,
        endpoint,
        pop,
        smtp,
        ca,
    }
}

/// [`world`] with [`provider_config`] changed by `change`.
async fn world_with(
    dir: &Path,
    messages: usize,
    change: impl FnOnce(&mut ProviderConfig),
) -> World {
    let mut cfg = provider_config();
    change(&mut cfg);
    world(dir, cfg, messages).await
}

pub fn provider_config() -> ProviderConfig {
    let mut cfg = ProviderConfig::new("info", CLIENT_ID, REFRESH);
    cfg.client_secret = Some(CLIENT_SECRET.into());
    cfg
}

/// The account's oauth2 keys (replacing the password) for the world's endpoint.
pub fn oauth_keys(w: &World) -> String {
    format!(
        "ca_file = \"{}\"\noauth2 = {{ token_url = \"https://127.0.0.1:{}/token\", client_id = \"{CLIENT_ID}\", client_secret = \"{CLIENT_SECRET}\", refresh_token = \"{REFRESH}\", scope = \"https://mail.google.com/\" }}\n",
        w.ca.display(),
        w.endpoint.addr().unwrap().port()
    )
}

fn setup_oauth(w: &World, limits: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &w.pop, &w.smtp, "", limits)
        .replace("auth = \"user\"\n", "")
        .replace(&format!("password = \"{PASSWORD}\"\n"), &oauth_keys(w));
    let config = popbridge::config::Config::from_str(&text, &dir.path().join("popbridge.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    Setup { dir, config }
}

fn kinds(events: &[popbridge::events::Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_logs_in_and_is_cached_for_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path(), provider_config(), 3).await;
    let s = setup_oauth(&w, "");
    let (summary, events) = s.pass(&w.pop, &w.smtp).await;
    assert_eq!((summary.delivered, summary.failure), (3, None));
    let requests = w.provider.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, 200);
    assert!(requests[0].client_secret_sent);
    assert_eq!(
        requests[0].scope.as_deref(),
        Some("https://mail.google.com/")
    );
    let refreshed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            popbridge::events::Event::TokenRefreshed {
                reason,
                expires_in,
                rotated,
                ..
            } => Some((reason.clone(), *expires_in, *rotated)),
            _ => None,
        })
        .collect();
    assert_eq!(
        refreshed,
        vec![("no access token cached".to_string(), Some(3600), false)]
    );
    // The next pass of this process uses the cached token: no request.
    w.pop.add_message("info", mail(9, "bob@example.net", 600));
    let (summary, events) = s.pass(&w.pop, &w.smtp).await;
    assert_eq!(summary.delivered, 1);
    assert_eq!(w.provider.requests().len(), 1);
    assert_eq!(count(&events, "auth.token_refreshed"), 0);
    assert_eq!(w.provider.logins(), vec![("info".to_string(), true); 2]);
    assert!(!popbridge::oauth2::stored_path(&s.state(), "info").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_the_server_refuses_is_replaced_once_and_the_login_retried() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path(), provider_config(), 2).await;
    let s = setup_oauth(&w, "max_messages_per_session = 1");
    let (summary, _) = s.pass(&w.pop, &w.smtp).await;
    assert_eq!(summary.delivered, 1);
    // The server's side of the token ends early (revoked, or a clock ahead).
    w.provider.expire_all();
    let (summary, events) = s.pass(&w.pop, &w.smtp).await;
    assert_eq!((summary.delivered, summary.failure), (1, None));
    assert_eq!(w.provider.requests().len(), 2);
    assert_eq!(
        w.provider.logins(),
        vec![
            ("info".to_string(), true),
            ("info".to_string(), false),
            ("info".to_string(), true)
        ]
    );
    assert_eq!(count(&events, "auth.failed"), 0);
    assert!(events.iter().any(|e| matches!(e,
        popbridge::events::Event::TokenRefreshed { reason, .. }
            if reason == "the POP3 server refused the cached access token")));
    exactly_once(&delivered_ids(&w.smtp), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_the_server_refuses_is_an_auth_failure_without_a_second_request() {
    let dir = tempfile::tempdir().unwrap();
    // Tokens for another user: the POP3 server refuses them for `info`.
    let w = world_with(dir.path(), 2, |cfg| cfg.user = "someone-else".into()).await;
    let s = setup_oauth(&w, "");
    let (summary, events) = s.pass(&w.pop, &w.smtp).await;
    assert!(
        matches!(&summary.failure, Some(AccountFailure::Auth(_))),
        "{summary:?}"
    );
    assert_eq!(w.provider.requests().len(), 1, "never refreshed in a loop");
    assert_eq!(w.provider.logins().len(), 1);
    assert_eq!(count(&events, "auth.failed"), 1);
    assert_eq!(w.pop.maildrop("info").unwrap().retrieved.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_is_an_auth_failure_reported_once_and_nothing_moves() {
    let dir = tempfile::tempdir().unwrap();
    let w = world_with(dir.path(), 2, |cfg| cfg.revoked = true).await;
    let s = setup_oauth(&w, "");
    for _ in 0..2 {
        let (summary, events) = s.pass(&w.pop, &w.smtp).await;
        let Some(AccountFailure::Auth(text)) = &summary.failure else {
            panic!("{summary:?}")
        };
        assert!(
            text.contains("invalid_grant (Token has been expired or revoked.)"),
            "{text}"
        );
        assert!(!text.contains(REFRESH) && !text.contains(CLIENT_SECRET));
        assert_eq!(count(&events, "auth.failed"), 1, "{:?}", kinds(&events));
        assert_eq!(count(&events, "account.failed"), 1);
    }
    assert_eq!(w.provider.requests().len(), 2, "one request per pass");
    assert!(w.provider.logins().is_empty(), "no POP3 login attempted");
    let mb = w.pop.maildrop("info").unwrap();
    assert_eq!((mb.retrieved.len(), mb.deleted.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_stored_0600_and_replaces_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let w = world_with(dir.path(), 1, |cfg| cfg.rotate = true).await;
    let s = setup_oauth(&w, "");
    let (summary, events) = s.pass(&w.pop, &w.smtp).await;
    assert_eq!(summary.delivered, 1);
    assert!(events.iter().any(|e| matches!(
        e,
        popbridge::events::Event::TokenRefreshed { rotated: true, .. }
    )));
    let stored = popbridge::oauth2::stored_path(&s.state(), "info");
    let text = std::fs::read_to_string(&stored).unwrap();
    assert!(text.contains("mock-access-refresh-1") && !text.contains(REFRESH));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // A restart: nothing in memory; the configured token no longer works at the provider,
    // the stored one does.
    popbridge::oauth2::forget(&s.state());
    w.pop.add_message("info", mail(5, "bob@example.net", 600));
    let (summary, _) = s.pass(&w.pop, &w.smtp).await;
    assert_eq!((summary.delivered, summary.failure), (1, None));
    let requests = w.provider.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].rotated_refresh_token && requests[1].status == 200);
    // A new configured refresh token (the user consented again) wins over the stored one.
    popbridge::oauth2::forget(&s.state());
    let mut config = s.config.clone();
    let oauth = config.accounts[0].oauth2.as_mut().unwrap();
    oauth.refresh_token = popbridge::secret::SecretSource::Value(popbridge::secret::Secret::new(
        "a-new-consent".into(),
    ));
    let again = Setup {
        dir: tempfile::tempdir().unwrap(),
        config,
    };
    let (summary, _) = again.pass(&w.pop, &w.smtp).await;
    assert!(
        matches!(&summary.failure, Some(AccountFailure::Auth(t)) if t.contains("the configured refresh token")),
        "{summary:?}"
    );
}

async fn popbridge_cli(args: &[&str]) -> std::process::Output {
    let mut cmd = popbridge_command(args);
    cmd.env("POPBRIDGE_TEST_CLIENT_SECRET", CLIENT_SECRET);
    finish(cmd, std::time::Duration::from_secs(120)).await
}

/// Every file under `dir` holding one of `needles`, with the needle.
fn files_holding(dir: &Path, needles: &[String]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                out.push((f.clone(), n.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_client_secret_in_any_output_events_or_state_file_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let w = world_with(dir.path(), 3, |cfg| cfg.rotate = true).await;
    write_private(&dir.path().join("refresh"), format!("{REFRESH}\n"));
    let config = dir.path().join("popbridge.toml");
    write_private(
        &config,
        format!(
            r#"{head}username = "info"
deliver_to = "info@contoso.local"
ca_file = "ca.pem"
[account.oauth2]
token_url = "https://127.0.0.1:{token}/token"
client_id = "{CLIENT_ID}"
client_secret_env = "POPBRIDGE_TEST_CLIENT_SECRET"
refresh_token_file = "refresh"
scope = "https://mail.google.com/"
"#,
            head = loopback_head(
                w.smtp.addr().unwrap().port(),
                FIVE_AND_TEN,
                "gmail",
                w.pop.addr().unwrap().port()
            ),
            token = w.endpoint.addr().unwrap().port(),
        ),
    );
    let events = dir.path().join("events.jsonl");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--verbose",
        "--events",
        events.to_str().unwrap(),
        "fetch",
    ];
    let ok = popbridge_cli(&args).await;
    let text = |o: &[u8]| String::from_utf8_lossy(o).into_owned();
    let (stdout, stderr) = (text(&ok.stdout), text(&ok.stderr));
    assert_eq!(ok.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("gmail: 3 listed, 3 delivered"), "{stdout}");
    assert!(
        stderr.contains("OAuth2 C: POST https://127.0.0.1:")
            && stderr.contains("refresh_token=***")
            && stderr.contains("client_secret=***")
            && stderr.contains("access_token=***"),
        "--verbose shows the token exchange, redacted: {stderr}"
    );
    assert!(stderr.contains("POP3 C: AUTH XOAUTH2 ***"), "{stderr}");
    // The revoked case: a second run with the (stored, rotated) refresh token revoked.
    w.provider.set_revoked(true);
    let revoked = popbridge_cli(&args).await;
    let (stdout2, stderr2) = (text(&revoked.stdout), text(&revoked.stderr));
    assert_eq!(revoked.status.code(), Some(3), "{stdout2}\n{stderr2}");
    assert!(stdout2.contains("invalid_grant") || stderr2.contains("invalid_grant"));
    assert!(
        w.provider.requests()[1].rotated_refresh_token,
        "the second run sent the stored, rotated refresh token"
    );

    let mut secrets = vec![REFRESH.to_string(), CLIENT_SECRET.to_string()];
    secrets.extend(w.provider.issued());
    let rotated: Vec<String> = w
        .provider
        .valid_refresh_tokens()
        .into_iter()
        .filter(|t| t != REFRESH)
        .collect();
    assert_eq!(rotated, vec!["mock-access-refresh-1".to_string()]);
    secrets.extend(rotated.clone());
    for (name, out) in [
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("stdout (revoked)", &stdout2),
        ("stderr (revoked)", &stderr2),
    ] {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "{name} holds a secret:\n{out}");
        }
    }
    let events_text = std::fs::read_to_string(&events).unwrap();
    assert!(events_text.contains("\"kind\":\"auth.token_refreshed\""));
    assert!(events_text.contains("\"kind\":\"auth.failed\""));
    let state = dir.path().join("state");
    let stored = popbridge::oauth2::stored_path(&state, "gmail");
    for s in &secrets {
        assert!(
            !events_text.contains(s.as_str()),
            "the events hold a secret"
        );
    }
    let found = files_holding(&state, &secrets);
    assert_eq!(
        found,
        vec![(stored.clone(), rotated[0].clone())],
        "only the stored refresh token file holds a secret: its own"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

/// What a hostile token endpoint does after the TLS handshake.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    Stall,
    Huge,
    ServerError,
    NotJson,
    Redirect,
}

/// A token endpoint in memory (TLS with the test PKI) that misbehaves as `mode` says.
fn hostile_route(pki: &TestPki, mode: Hostile) -> popbridge::net::Connect {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = pki.server_config().unwrap();
    std::sync::Arc::new(move || {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
        tokio::spawn(async move {
            let Ok(mut s) = acceptor.accept(server).await else {
                return;
            };
            let mut req = vec![0u8; 8192];
            let _ = s.read(&mut req).await;
            let reply: Vec<u8> = match mode {
                Hostile::Stall => {
                    std::future::pending::<()>().await;
                    return;
                }
                Hostile::Huge => {
                    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    for _ in 0..100 {
                        r.extend_from_slice(b"400\r\n");
                        r.extend_from_slice(&[b'a'; 0x400]);
                        r.extend_from_slice(b"\r\n");
                    }
                    r
                }
                Hostile::ServerError => {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_vec()
                }
                Hostile::NotJson => {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n<html></html".to_vec()
                }
                Hostile::Redirect => {
                    b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\nContent-Length: 0\r\n\r\n"
                        .to_vec()
                }
            };
            let _ = s.write_all(&reply).await;
            let _ = s.shutdown().await;
        });
        Box::new(client) as popbridge::net::BoxIo
    })
}

#[tokio::test(start_paused = true)]
async fn a_hostile_token_endpoint_is_a_bounded_typed_transient_failure_never_a_refusal() {
    use popbridge::oauth2::{OAuth2Error, Tokens};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::localhost().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let text = format!(
        r#"state_dir = "state"
[transport]
host = "127.0.0.1"
[timeouts]
connect = "5s"
command = "10s"
[[account]]
name = "info"
host = "127.0.0.1"
username = "info"
deliver_to = "info@contoso.local"
ca_file = "ca.pem"
oauth2 = {{ token_url = "https://127.0.0.1:8443/token", client_id = "c", refresh_token = "{REFRESH}" }}
"#
    );
    let config =
        popbridge::config::Config::from_str(&text, &dir.path().join("popbridge.toml")).unwrap();
    for mode in [
        Hostile::Stall,
        Hostile::Huge,
        Hostile::ServerError,
        Hostile::NotJson,
        Hostile::Redirect,
    ] {
        let dialer = popbridge::net::MemoryDialer::new();
        dialer.route("127.0.0.1", 8443, hostile_route(&pki, mode));
        let tokens = Tokens::for_account(&config, &config.accounts[0], &dialer).unwrap();
        let started = tokio::time::Instant::now();
        let e = tokens.access_token().await.unwrap_err();
        assert!(!e.is_refusal(), "{mode:?}: {e}");
        assert!(!e.to_string().contains(REFRESH), "{mode:?}: {e}");
        match mode {
            Hostile::Stall => {
                assert!(matches!(e, OAuth2Error::Timeout { secs: 15, .. }), "{e}");
                assert_eq!(started.elapsed(), std::time::Duration::from_secs(15));
            }
            Hostile::Huge => assert!(
                matches!(&e, OAuth2Error::Http { source, .. }
                    if matches!(source, popbridge::http::HttpError::TooLarge { .. })),
                "{e}"
            ),
            Hostile::ServerError => {
                assert!(
                    matches!(e, OAuth2Error::Unavailable { status: 503, .. }),
                    "{e}"
                )
            }
            Hostile::NotJson => assert!(matches!(e, OAuth2Error::BadResponse { .. }), "{e}"),
            Hostile::Redirect => {
                assert!(matches!(e, OAuth2Error::Status { status: 302, .. }), "{e}")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_logs_in_with_a_token_and_shows_a_refusal_without_any_secret() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path(), provider_config(), 2).await;
    let s = setup_oauth(&w, "");
    let report = popbridge::diagnose::diagnose(&s.config, &popbridge::net::TcpDialer).await;
    let a = &report.accounts[0];
    assert_eq!(a.auth, Ok(()), "{}", report.render());
    assert_eq!(a.messages, Some(2));
    assert!(a
        .auth_method
        .contains("OAuth2 access token from https://127.0.0.1:"));
    w.provider.set_revoked(true);
    popbridge::oauth2::forget(&s.state());
    let report = popbridge::diagnose::diagnose(&s.config, &popbridge::net::TcpDialer).await;
    let text = report.render();
    let a = &report.accounts[0];
    assert!(
        matches!(&a.auth, Err(e) if e.contains("invalid_grant")),
        "{text}"
    );
    let mut secrets = vec![REFRESH.to_string(), CLIENT_SECRET.to_string()];
    secrets.extend(w.provider.issued());
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert_eq!(w.pop.maildrop("info").unwrap().deleted.len(), 0);
}
