//! `poplab capture`: a mailbox read without change and written as a scenario that
//! `poplab run` replays.
//!
//! Against mock-pop3 (in-process, always run): the fixtures are the messages' exact
//! octets in server order with their UIDLs and LIST sizes, the session sends RSET before
//! QUIT and never DELE, the mailbox keeps every message, the files are private, the
//! written scenario replays with every message delivered, and a redacted capture holds no
//! original address or subject while a malformed sender stays malformed.
//!
//! Against a private Dovecot (passwd-file auth, a Maildir owned by `mail`, under /tmp so
//! Dovecot's unprivileged processes can reach it): the `poplab capture` binary, then
//! `poplab run` of what it wrote (all delivered), the Maildir's message files unchanged,
//! and `--redact` output free of the original addresses and subjects. Dovecot missing, or
//! not running as root, skips that test with the reason printed, unless
//! `POPBRIDGE_REQUIRE_PEERS=1` (CI), in which case it fails.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mock_pop3::{Mailbox, Message, MockPop3};
use popbridge::config::TlsMode;
use popbridge::secret::Secret;
use poplab::capture::{self, CaptureOptions};

mod common;

/// The messages both tests capture: ordinary, with a Cc, and one with a malformed sender.
const MESSAGES: [&str; 3] = [
    "Return-Path: <alice@example.net>\r\nFrom: Alice Example <alice@example.net>\r\nTo: info@isp.example\r\nSubject: Quarterly figures attached\r\nMessage-ID: <one@example.net>\r\n\r\nHello,\r\n.leading dot\r\nsee you\r\n",
    "From: bob@example.org\r\nCc: carol@example.org\r\nTo: info@isp.example\r\nSubject: Lunch on Friday\r\n\r\nbody two\r\n",
    "From: <broken@@example.com\r\nTo: info@isp.example\r\nSubject: Invoice overdue notice\r\n\r\nbody three\r\n",
];
/// What must not survive `--redact`.
const SECRETS: [&str; 10] = [
    "alice@example.net",
    "Alice Example",
    "bob@example.org",
    "carol@example.org",
    "broken@@example.com",
    "info@isp.example",
    "Quarterly figures",
    "Lunch on Friday",
    "Invoice overdue",
    "example",
];

fn options(port: u16, password: &str) -> CaptureOptions {
    CaptureOptions {
        host: "127.0.0.1".into(),
        port,
        user: "info".into(),
        password: Secret::new(password.into()),
        tls: TlsMode::None,
        ca_file: None,
        headers_only: false,
        redact_key: None,
        timeout: Duration::from_secs(10),
    }
}

/// Every file under `dir`, with its octets.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// `poplab run --json FILE`: the exit code, each label's outcomes (as JSON text) and the
/// output.
fn replay(scenario: &Path) -> (Option<i32>, Vec<(String, String)>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_poplab"))
        .args(["run", "--json"])
        .arg(scenario)
        .output()
        .expect("run poplab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    let labels = doc["scenarios"][0]["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    (
                        l["label"].as_str().unwrap_or_default().to_string(),
                        l["outcomes"].to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (out.status.code(), labels, stdout)
}

fn assert_redacted(dir: &Path) {
    for (path, bytes) in files(dir) {
        let text = String::from_utf8_lossy(&bytes);
        for s in SECRETS {
            assert!(!text.contains(s), "{s:?} in {}:\n{text}", path.display());
        }
    }
}

#[tokio::test]
async fn capture_from_mock_pop3_is_exact_read_only_private_and_replays() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut mailbox = Mailbox::new("info", "pw-not-in-output");
    for (i, m) in MESSAGES.iter().enumerate() {
        mailbox =
            mailbox.with_message(Message::new(m.as_bytes().to_vec()).with_uid(format!("uid-{i}")));
    }
    let pop = MockPop3::builder().mailbox(mailbox).spawn(listener);
    let port = pop.addr().unwrap().port();
    let spool = tempfile::tempdir().unwrap();

    let c = capture::capture(&options(port, "pw-not-in-output"), spool.path())
        .await
        .unwrap();
    assert_eq!(c.messages.len(), 3);
    for (i, m) in c.messages.iter().enumerate() {
        assert_eq!(m.bytes, MESSAGES[i].as_bytes(), "message {i}");
        assert_eq!(m.uid.as_deref(), Some(format!("uid-{i}").as_str()));
        assert_eq!(m.list_size, MESSAGES[i].len() as u64);
    }
    // Read-only: RSET then QUIT, no DELE, every message still there.
    let transcript = pop.transcript();
    assert!(!transcript.contains("DELE"), "{transcript}");
    let rset = transcript.find("RSET").expect("RSET sent");
    assert!(transcript[rset..].contains("QUIT"), "{transcript}");
    let report = pop.mailbox("info").unwrap();
    assert_eq!(report.remaining, ["uid-0", "uid-1", "uid-2"]);
    assert!(report.deleted.is_empty());

    let out = tempfile::tempdir().unwrap();
    let scenario = capture::write(&c, out.path(), "the mock").unwrap();
    let all = files(out.path());
    assert_eq!(all.len(), 4);
    for (path, bytes) in &all {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        assert!(!String::from_utf8_lossy(bytes).contains("pw-not-in-output"));
    }
    let text = std::fs::read_to_string(&scenario).unwrap();
    let entry = format!("uid = \"uid-1\"\nlist_size = {}\n", MESSAGES[1].len());
    assert!(text.contains(&entry), "{text}");
    let (code, labels, stdout) = replay(&scenario);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(labels.len(), 3, "{stdout}");
    assert!(
        labels.iter().all(|(_, o)| o == r#"{"delivered":1}"#),
        "{labels:?}"
    );

    // Headers only: same sizes, bodies filled.
    let mut o = options(port, "pw-not-in-output");
    o.headers_only = true;
    let h = capture::capture(&o, spool.path()).await.unwrap();
    for (i, m) in h.messages.iter().enumerate() {
        assert_eq!(m.bytes.len(), MESSAGES[i].len());
        assert!(!String::from_utf8_lossy(&m.bytes).contains("body"), "{i}");
        assert!(
            String::from_utf8_lossy(&m.bytes).contains("Subject: "),
            "{i}"
        );
    }

    // Redacted: nothing original, the malformed sender still malformed, stable per key.
    let mut o = options(port, "pw-not-in-output");
    o.redact_key = Some(b"test key".to_vec());
    let r = capture::capture(&o, spool.path()).await.unwrap();
    let again = capture::capture(&o, spool.path()).await.unwrap();
    let red = tempfile::tempdir().unwrap();
    let scenario = capture::write(&r, red.path(), "the mock, redacted").unwrap();
    assert_redacted(red.path());
    let third = String::from_utf8_lossy(&r.messages[2].bytes).into_owned();
    assert!(
        third.starts_with("From: <") && third.contains("@@"),
        "{third}"
    );
    assert!(
        !third.split("\r\n").next().unwrap().contains('>'),
        "{third}"
    );
    assert_eq!(r.messages[0].bytes, again.messages[0].bytes);
    assert_eq!(r.messages[0].bytes.len(), MESSAGES[0].len());
    let (code, labels, stdout) = replay(&scenario);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(labels.len(), 3, "{stdout}");
    assert!(
        labels.iter().all(|(_, o)| o == r#"{"delivered":1}"#),
        "{labels:?}"
    );
    assert_eq!(pop.mailbox("info").unwrap().remaining.len(), 3);
}
