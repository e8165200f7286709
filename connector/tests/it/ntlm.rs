//! NTLM (SPA) login: popbridge against the mock's NTLM acceptor, against a scripted
//! server whose challenge is unusable, and, through the `popbridge` binary, against an
//! independent acceptor: pyspnego behind the small POP3 server
//! `connector/tests/peers/ntlm_pop3.py`.
//!
//! The pyspnego tests skip with a printed reason when `python3` or pyspnego is missing,
//! unless `POPBRIDGE_REQUIRE_PEERS=1` makes a skip a failure. The peer is a child of the
//! test; it prints its port on standard output when it listens (the readiness signal),
//! logs each login on standard error (kept in a file), and is killed when the test ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use mock_pop3::MockPop3;
use mock_smtp::MockSmtp;
use popbridge::config::TlsMode;
use popbridge::conn::PlaintextConsent;
use popbridge::net::TcpDialer;
use popbridge::pass::AccountFailure;
use popbridge::pop3::{self, NtlmChallengeError, Pop3Error, Settings};
use popbridge::secret::Secret;
use popbridge_proto::ntlm::NtlmError;
use popbridge_proto::pop3::AuthMethod;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::*;
use crate::interop::{tool, unavailable};

/// The base64 form of every NTLM AUTHENTICATE message starts with this (`NTLMSSP\0`,
/// type 3): it must never appear in a transcript.
const TYPE3_PREFIX: &str = "TlRMTVNTUAADAAAA";

fn ntlm_setup(s: Setup, username: &str, password: &str, allow_plaintext: bool) -> Setup {
    let mut cfg = s.config.clone();
    let a = &mut cfg.accounts[0];
    a.auth = AuthMethod::Ntlm;
    a.username = username.into();
    a.secret = popbridge::secret::SecretSource::Value(Secret::new(password.into()));
    a.allow_plaintext = allow_plaintext;
    Setup {
        config: cfg,
        dir: s.dir,
    }
}

#[tokio::test]
async fn ntlm_logs_in_as_domain_user_and_delivers_but_never_in_clear_unless_allowed() {
    let mb = mailbox_with([mail(1, "a@example.net", 400), mail(2, "b@example.net", 400)])
        .with_methods([AuthMethod::Ntlm]);
    let pop = pop3(MockPop3::builder().maildrop(mb)).await;
    let smtp = smtp(MockSmtp::builder()).await;

    let s = ntlm_setup(setup(&pop, &smtp, "", ""), "CONTOSO\\info", PASSWORD, false);
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert!(
        matches!(&sum.failure, Some(AccountFailure::Connect(e)) if e.contains("in clear")),
        "{sum:?}"
    );
    assert!(
        !pop.sessions()[0]
            .commands
            .iter()
            .any(|c| c.starts_with("AUTH")),
        "nothing of the login crossed the plain connection"
    );

    let s = ntlm_setup(s, "CONTOSO\\info", PASSWORD, true);
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert!(sum.failure.is_none(), "{sum:?}");
    assert_eq!(sum.delivered, 2);
    let session = pop.sessions().pop().unwrap();
    assert_eq!(session.user.as_deref(), Some("info"));
    assert_eq!(session.commands.first().map(String::as_str), Some("CAPA"));
    assert!(
        session.commands.iter().any(|c| c == "AUTH NTLM"),
        "{session:?}"
    );
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
}

#[tokio::test]
async fn a_bare_user_and_a_upn_log_in_too() {
    for (mailbox, login) in [
        ("info", "info"),
        ("info@contoso.example", "info@contoso.example"),
    ] {
        let mb = mock_pop3::Maildrop::new(mailbox, PASSWORD)
            .with_message(mail(1, "a@example.net", 400))
            .with_methods([AuthMethod::Ntlm]);
        let pop = pop3(MockPop3::builder().maildrop(mb)).await;
        let smtp = smtp(MockSmtp::builder()).await;
        let s = ntlm_setup(setup(&pop, &smtp, "", ""), login, PASSWORD, true);
        let (sum, _) = s.pass(&pop, &smtp).await;
        assert_eq!(sum.delivered, 1, "{login}: {sum:?}");
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_failure_and_nothing_moves() {
    let mb = mailbox_with([mail(1, "a@example.net", 400)]).with_methods([AuthMethod::Ntlm]);
    let pop = pop3(MockPop3::builder().maildrop(mb)).await;
    let smtp = smtp(MockSmtp::builder()).await;
    let s = ntlm_setup(
        setup(&pop, &smtp, "", ""),
        "CONTOSO\\info",
        "Sw0rdfish-s3cret?",
        true,
    );
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert!(
        matches!(&sum.failure, Some(AccountFailure::Auth(e)) if e.contains("[AUTH]")),
        "{sum:?}"
    );
    assert_eq!(count(&events, "auth.failed"), 1);
    assert!(smtp.captured().is_empty());
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 1);
}

/// A POP3 server that answers AUTH NTLM's NEGOTIATE with `challenge`; returns the lines
/// it received.
async fn scripted(challenge: String) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let listener = listener().await;
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut seen = Vec::new();
        write.write_all(b"+OK ready\r\n").await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = match line.as_str() {
                "CAPA" => "+OK\r\nUIDL\r\nSASL NTLM\r\n.\r\n".to_string(),
                "AUTH NTLM" => "+\r\n".to_string(),
                "*" => "-ERR cancelled\r\n".to_string(),
                l if l.starts_with("TlRMTVNTUAAB") => format!("+ {challenge}\r\n"),
                _ => "-ERR what\r\n".to_string(),
            };
            seen.push(line);
            if write.write_all(reply.as_bytes()).await.is_err() {
                break;
            }
        }
        seen
    });
    (port, task)
}

#[tokio::test]
async fn an_unusable_challenge_is_cancelled_with_a_star_and_a_typed_error() {
    let not_ntlm =
        base64::engine::general_purpose::STANDARD.encode("NTLMSSP\0\x02\0\0\0 far too short");
    for challenge in ["!!! not base64".to_string(), not_ntlm.clone()] {
        let (port, task) = scripted(challenge.clone()).await;
        let settings = Settings {
            account: "info",
            host: "127.0.0.1",
            port,
            tls: TlsMode::None,
            server_name: "127.0.0.1",
            tls_config: None,
            plaintext: Some(PlaintextConsent::by_operator()),
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(10),
        };
        let auth = pop3::connect(&TcpDialer, &settings).await.unwrap();
        let secret = Secret::new(PASSWORD.into());
        let err = match auth
            .authenticate(AuthMethod::Ntlm, "CONTOSO\\info", &secret)
            .await
        {
            Ok(_) => panic!("{challenge}: logged in"),
            Err(e) => e,
        };
        match (&err, challenge.as_str()) {
            (Pop3Error::NtlmChallenge(NtlmChallengeError::NotBase64), "!!! not base64") => {}
            (
                Pop3Error::NtlmChallenge(NtlmChallengeError::Message(NtlmError::TooShort {
                    ..
                })),
                _,
            ) if challenge == not_ntlm => {}
            _ => panic!("{challenge}: {err:?}"),
        }
        assert!(!err.is_auth() && !err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("unusable NTLM challenge"), "{err}");
        let seen = task.await.unwrap();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[..2], ["CAPA", "AUTH NTLM"]);
        assert_eq!(seen[3], "*", "the exchange was cancelled: {seen:?}");
    }
}

// ------------------------------------------------------------------ pyspnego peer

/// The pyspnego version `.ci/run` installs.
const PYSPNEGO: &str = "pyspnego==0.12.4";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ntlm_pop3.py");
/// A peer or popbridge run that takes longer has hung: the test fails.
/// The `[timeouts]` of the binary's configuration.
const TEN_AND_THIRTY: &str = "connect = \"10s\"\ncommand = \"30s\"";

const STEP: Duration = Duration::from_secs(60);

/// `python3` with pyspnego, or `None` when the test is skipped.
async fn python_with_pyspnego() -> Option<PathBuf> {
    let Some(python) = tool("python3") else {
        return unavailable(
            "python3 is required (POPBRIDGE_REQUIRE_PEERS=1) but not installed".into(),
            "python3 not installed".into(),
        );
    };
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import spnego"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !probe.is_ok_and(|s| s.success()) {
        return unavailable(
            format!("pyspnego is required (POPBRIDGE_REQUIRE_PEERS=1) but `{} -c 'import spnego'` fails: pip install {PYSPNEGO}", python.display()),
            format!("pyspnego not installed (pip install {PYSPNEGO})"),
        );
    }
    Some(python)
}

/// The Python POP3 server with pyspnego's NTLM acceptor.
struct Peer {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
}

impl Peer {
    /// Starts it on `maildrop` with pyspnego's credential file `users`; returns once it
    /// printed its port.
    async fn start(python: &Path, dir: &Path, maildrop: &Path, users: &Path) -> Self {
        let log = dir.join("peer.log");
        let mut child = tokio::process::Command::new(python)
            .arg(SCRIPT)
            .arg(maildrop)
            .env("NTLM_USER_FILE", users)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut first);
        tokio::time::timeout(STEP, read)
            .await
            .expect("the peer printed no port")
            .unwrap();
        let port = first.trim().parse().unwrap_or_else(|_| {
            panic!(
                "the peer printed {first:?} instead of its port; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Self { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `popbridge fetch` for one NTLM account on the peer, delivering to `smtp_port`.
async fn fetch(dir: &Path, pop3_port: u16, smtp_port: u16, username: &str, password: &str) -> Run {
    let head = loopback_head(smtp_port, TEN_AND_THIRTY, "info", pop3_port);
    let account = format!(
        "auth = \"spa\"\nusername = '{username}'\npassword_file = \"pass\"\ndeliver_to = \"info@contoso.local\"\n"
    );
    let config = write_with_password_file(dir, password, &head, &account);
    let events = dir.join("events.jsonl");
    let (config, events) = (config.to_str().unwrap(), events.to_str().unwrap());
    let args = ["--config", config, "--verbose", "--events", events, "fetch"];
    let out = finish(popbridge_command(&args), STEP).await;
    Run {
        code: out.status.code(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// A maildrop of two messages (CRLF line ends, one line starting with a dot) and
/// pyspnego's credential file for `Contoso\info` and `info@contoso.example` (a domain
/// in mixed case: NTOWFv2 takes the domain as typed and the user name upper-cased).
fn world(dir: &Path) -> (PathBuf, PathBuf) {
    let maildrop = dir.join("maildrop");
    std::fs::create_dir(&maildrop).unwrap();
    for i in 1..=2 {
        let mut m = mail(i, "sender@example.net", 900).data.to_vec();
        m.extend_from_slice(b".a line with a leading dot\r\n");
        std::fs::write(maildrop.join(format!("{i:03}.eml")), m).unwrap();
    }
    let users = dir.join("ntlm-users");
    std::fs::write(
        &users,
        format!("Contoso:info:{PASSWORD}\n:info@contoso.example:{PASSWORD}\n"),
    )
    .unwrap();
    (maildrop, users)
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyspnego_accepts_popbridge_and_the_mail_is_delivered() {
    let Some(python) = python_with_pyspnego().await else {
        return;
    };
    for login in ["Contoso\\info", "info@contoso.example"] {
        let dir = tempfile::tempdir().unwrap();
        let (maildrop, users) = world(dir.path());
        let peer = Peer::start(&python, dir.path(), &maildrop, &users).await;
        let smtp = smtp(MockSmtp::builder()).await;
        let run = fetch(
            dir.path(),
            peer.port,
            smtp.addr().unwrap().port(),
            login,
            PASSWORD,
        )
        .await;
        let why = format!(
            "{login}\n{}\n{}\npeer:\n{}",
            run.stdout,
            run.stderr,
            peer.log()
        );
        assert_eq!(run.code, Some(0), "{why}");
        smtp.wait_idle().await;
        let mut ids = delivered_ids(&smtp);
        ids.sort();
        assert_eq!(ids, ["<m1@isp.example>", "<m2@isp.example>"], "{why}");
        assert!(
            smtp.captured()
                .iter()
                .all(|t| String::from_utf8_lossy(&t.data)
                    .contains("\r\n.a line with a leading dot\r\n")),
            "dot-unstuffed: {why}"
        );
        assert_eq!(files(&maildrop), 0, "deleted after delivery: {why}");
        assert!(peer.log().contains(&format!("AUTH OK {login}")), "{why}");
        // The transcript shows the exchange with the AUTHENTICATE message redacted.
        assert!(run.stderr.contains("POP3 C: AUTH NTLM"), "{why}");
        assert!(run.stderr.contains("POP3 C: (NTLM negotiate)"), "{why}");
        assert!(run.stderr.contains("POP3 C: ***"), "{why}");
        assert!(!run.stderr.contains(TYPE3_PREFIX), "{why}");
        assert!(!run.stderr.contains(PASSWORD) && !run.stdout.contains(PASSWORD));
        peer.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyspnego_refuses_a_wrong_password_exit_3_and_nothing_deleted() {
    let Some(python) = python_with_pyspnego().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (maildrop, users) = world(dir.path());
    let peer = Peer::start(&python, dir.path(), &maildrop, &users).await;
    let smtp = smtp(MockSmtp::builder()).await;
    let wrong = "Sw0rdfish-s3cret?";
    let run = fetch(
        dir.path(),
        peer.port,
        smtp.addr().unwrap().port(),
        "Contoso\\info",
        wrong,
    )
    .await;
    let why = format!("{}\n{}\npeer:\n{}", run.stdout, run.stderr, peer.log());
    assert_eq!(run.code, Some(3), "{why}");
    assert!(run.stdout.contains("authentication failed"), "{why}");
    assert!(run.stdout.contains("[AUTH]"), "{why}");
    assert!(peer.log().contains("AUTH FAILED"), "{why}");
    assert!(!peer.log().contains("AUTH OK"), "{why}");
    assert_eq!(files(&maildrop), 2, "nothing deleted: {why}");
    assert!(smtp.captured().is_empty(), "{why}");
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert!(events.contains("\"auth.failed\""), "{events}");
    assert!(!run.stderr.contains(wrong) && !run.stdout.contains(wrong) && !events.contains(wrong));
    assert!(!run.stderr.contains(TYPE3_PREFIX), "{why}");
    peer.stop().await;
}
