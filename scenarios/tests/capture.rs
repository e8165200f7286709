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

use mock_pop3::{Maildrop, Message, MockPop3};
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
/// `poplab run` of `scenario` passes with its three labels delivered once each.
fn replays_three_delivered(scenario: &Path) {
    let (code, labels, stdout) = replay(scenario);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(labels.len(), 3, "{stdout}");
    assert!(
        labels.iter().all(|(_, o)| o == r#"{"delivered":1}"#),
        "{labels:?}"
    );
}

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
    let mut mailbox = Maildrop::new("info", "pw-not-in-output");
    for (i, m) in MESSAGES.iter().enumerate() {
        mailbox =
            mailbox.with_message(Message::new(m.as_bytes().to_vec()).with_uid(format!("uid-{i}")));
    }
    let pop = MockPop3::builder().maildrop(mailbox).spawn(listener);
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
    let report = pop.maildrop("info").unwrap();
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
    replays_three_delivered(&scenario);

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
    replays_three_delivered(&scenario);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 3);
}

// ------------------------------------------------------------------- Dovecot

/// A Dovecot child, killed (and reaped) when dropped, also when the test panics.
struct Dovecot {
    child: Child,
    port: u16,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The numeric id of system user `name` (`id -u`/`id -g`), or of this process for "".
fn system_id(name: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id")
        .arg(flag)
        .args(Some(name).filter(|n| !n.is_empty()))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Why Dovecot cannot be started here, if it cannot.
fn dovecot_missing() -> Option<String> {
    if common::tool("dovecot").is_none() {
        return Some("dovecot not installed".into());
    }
    if !["/usr/lib/dovecot/pop3", "/usr/libexec/dovecot/pop3"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        return Some("dovecot-pop3d not installed".into());
    }
    if system_id("", "-u") != Some(0) {
        return Some("not running as root (Dovecot drops privileges)".into());
    }
    for user in ["mail", "dovecot", "dovenull"] {
        if system_id(user, "-u").is_none() {
            return Some(format!("no system user {user}"));
        }
    }
    None
}

/// Starts Dovecot on a free loopback port with user `info` / `password` and the Maildir
/// `dir/home/info/Maildir` (owned by `mail`); ready once it greets.
fn start_dovecot(dir: &Path, password: &str) -> Dovecot {
    let (uid, gid) = (
        system_id("mail", "-u").unwrap(),
        system_id("mail", "-g").unwrap(),
    );
    let d = dir.display();
    for sub in ["run", "state"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join("passwd"),
        format!("info:{{PLAIN}}{password}::::::\n"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
         listen = 127.0.0.1\nprotocols = pop3\nssl = no\ndisable_plaintext_auth = no\n\
         default_internal_user = dovecot\ndefault_login_user = dovenull\n\
         first_valid_uid = {uid}\n\
         passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
         userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={d}/home/%u\n}}\n\
         mail_location = maildir:~/Maildir\n\
         service pop3-login {{\n  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("dovecot.conf"), conf).unwrap();
    let child = Command::new("dovecot")
        .arg("-F")
        .arg("-c")
        .arg(dir.join("dovecot.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dovecot");
    let dovecot = Dovecot { child, port };
    // No readiness signal: poll the port, bounded, until it greets.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 3];
            if s.read_exact(&mut buf).is_ok() && &buf == b"+OK" {
                let _ = s.write_all(b"QUIT\r\n");
                return dovecot;
            }
        }
        assert!(
            Instant::now() < deadline,
            "dovecot did not greet on 127.0.0.1:{port} within 20 s: {}",
            std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The message files of a Maildir (`cur/` and `new/`), by name.
fn maildir_files(maildir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        for e in std::fs::read_dir(maildir.join(sub)).unwrap().flatten() {
            out.push((
                format!("{sub}/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

/// `poplab capture` (the binary) into `out`, the password from the environment.
fn capture_cli(port: u16, out: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_poplab"))
        .args([
            "capture",
            "--host",
            "127.0.0.1",
            "--user",
            "info",
            "--tls",
            "none",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--password-env",
            "POPLAB_TEST_PASSWORD",
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("POPLAB_TEST_PASSWORD", "dovecot-pw-7")
        .output()
        .expect("run poplab capture");
    let text = common::said(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("captured 3 messages"), "{text}");
    assert!(!text.contains("dovecot-pw-7"), "{text}");
}

#[test]
fn capture_from_dovecot_replays_leaves_the_maildir_unchanged_and_redacts() {
    if let Some(why) = dovecot_missing() {
        mock_core::test_support::skip(
            &format!("Dovecot required (POPBRIDGE_REQUIRE_PEERS=1): {why}"),
            &format!("{why} (set POPBRIDGE_REQUIRE_PEERS=1 to fail instead)"),
        );
        return;
    }
    // Under /tmp, 0755: Dovecot's unprivileged processes must reach it.
    let dir = tempfile::Builder::new()
        .prefix("poplab-capture-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let maildir = dir.path().join("home/info/Maildir");
    let (uid, gid) = (system_id("mail", "-u"), system_id("mail", "-g"));
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    // Stored as a real store holds mail: LF line ends, already seen (no rename on read).
    for (i, m) in MESSAGES.iter().enumerate() {
        let lf = m.replace("\r\n", "\n");
        let name = format!(
            "17000000{i:02}.M1P1Q{i}.capture-test,S={},W={}:2,S",
            lf.len(),
            m.len()
        );
        std::fs::write(maildir.join("cur").join(name), lf).unwrap();
    }
    for p in [
        dir.path().join("home"),
        dir.path().join("home/info"),
        maildir.clone(),
    ]
    .into_iter()
    .chain(["cur", "new", "tmp"].map(|s| maildir.join(s)))
    .chain(
        std::fs::read_dir(maildir.join("cur"))
            .unwrap()
            .flatten()
            .map(|e| e.path()),
    ) {
        std::os::unix::fs::chown(&p, uid, gid).unwrap();
    }
    let before = maildir_files(&maildir);
    let dovecot = start_dovecot(dir.path(), "dovecot-pw-7");

    let out = dir.path().join("out");
    capture_cli(dovecot.port, &out, &[]);
    assert_eq!(maildir_files(&maildir), before, "the Maildir changed");
    let scenario = out.join("capture.toml");
    let text = std::fs::read_to_string(&scenario).unwrap();
    assert!(text.contains("uidl = true"), "{text}");
    for (i, m) in MESSAGES.iter().enumerate() {
        let fixture = std::fs::read(out.join(format!("fixtures/{:04}.eml", i + 1))).unwrap();
        assert_eq!(fixture, m.as_bytes(), "message {i}");
        assert!(
            text.contains(&format!("list_size = {}\n", m.len())),
            "{text}"
        );
    }
    replays_three_delivered(&scenario);

    let red = dir.path().join("redacted");
    capture_cli(dovecot.port, &red, &["--redact"]);
    assert_redacted(&red);
    let (code, labels, stdout) = replay(&red.join("capture.toml"));
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(labels.len(), 3, "{stdout}");
    assert_eq!(maildir_files(&maildir), before, "the Maildir changed");
}
