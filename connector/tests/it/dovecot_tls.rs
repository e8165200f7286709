//! popbridge against a real Dovecot whose certificate was made the usual way:
//! `openssl req -x509`, which marks it `CA:TRUE`, so WebPKI refuses it as a server's own.
//!
//! The account trusts that certificate through `ca_file`, then through `tls_fingerprint`
//! alone, over implicit TLS (pop3s) and over STLS; a wrong fingerprint fails closed with
//! exit 3 before any login (Dovecot's log shows no authentication attempt); `diagnose`
//! shows the certificate and the line that pins it (a snapshot, with the run's
//! fingerprint, dates and ports redacted).
//!
//! Peers and helpers are those of `interop`: a skip unless `POPBRIDGE_REQUIRE_PEERS=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use popbridge::certinfo::CertificateInfo;

use super::interop::{
    chown_tree, head_of_config, mail, maildir_files, mkdir, peers, popbridge, popbridge_command,
    read_lossy, require_tool, sink_count, start_dovecot, start_smtp_sink, toml_str, wait_for_log,
    workdir, write_maildir, DovecotTls, Mail, Peer, Run, DEFAULT_PATH, DELIVER_TO, PASSWORD, USER,
};

/// The name the certificate carries and the accounts verify (`tls_server_name`).
const SERVER_NAME: &str = "pop.example.test";

/// A key and a self-signed certificate made as a tutorial says: `openssl req -x509`.
fn openssl_self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let openssl = require_tool("openssl", "openssl")?;
    let (cert, key) = (dir.join("dovecot-cert.pem"), dir.join("dovecot-key.pem"));
    let status = Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .arg("-subj")
        .arg(format!("/CN={SERVER_NAME}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{SERVER_NAME}"))
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req -x509 failed: {status}");
    Some((cert, key))
}

/// The certificate's DER, from its PEM file.
fn der_of(pem: &Path) -> Vec<u8> {
    let text = fs::read(pem).unwrap();
    let der = rustls_pemfile::certs(&mut text.as_slice())
        .next()
        .expect("a certificate in the PEM file")
        .unwrap();
    der.to_vec()
}

/// How an account trusts the server.
enum Trust<'a> {
    /// The system's authorities only.
    System,
    CaFile(&'a Path),
    Pin(String),
}

/// A configuration with one account on Dovecot (`tls` mode on `port`) delivering
/// through smtp-sink.
fn config(dir: &Path, label: &str, tls: &str, port: u16, trust: Trust<'_>, smtp: u16) -> PathBuf {
    let secret = dir.join("dovecot.pass");
    crate::harness::write_private(&secret, format!("{PASSWORD}\n"));
    let trust = match trust {
        Trust::System => String::new(),
        Trust::CaFile(p) => format!("ca_file = {}", toml_str(&p.display().to_string())),
        Trust::Pin(pin) => format!("tls_fingerprint = {}", toml_str(&pin)),
    };
    let text = format!(
        r#"{head}[[account]]
name = "dovecot"
host = "127.0.0.1"
port = {port}
tls = "{tls}"
tls_server_name = "{SERVER_NAME}"
{trust}
auth = "user"
username = "{USER}"
password_file = {secret}
deliver_to = "{DELIVER_TO}"
"#,
        head = head_of_config(dir, smtp),
        secret = toml_str(&secret.display().to_string()),
    );
    let path = dir.join(format!("{label}.toml"));
    fs::write(&path, text).unwrap();
    path
}

/// Everything a failure report needs.
/// The run exited `code` having delivered `delivered` messages (else a panic naming
/// `label`, with `why`).
fn exited(run: &Run, code: i32, delivered: usize, label: &str, why: &dyn Fn() -> String) {
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(code),
        "{label}: exit code\n{}",
        why()
    );
    assert_eq!(
        run.count("message.delivered"),
        delivered,
        "{label}\n{}",
        why()
    );
}

fn why(run: &Run, dovecot: &Peer, maildir: &Path) -> String {
    format!(
        "command: {}\nstatus: {:?}\n---- stdout ----\n{}\n---- stderr ----\n{}\n---- events ----\n{}\n{}\nleft: {:?}",
        run.cmdline,
        run.status,
        run.stdout,
        run.stderr,
        read_lossy(&run.events_path),
        dovecot.logs(),
        maildir_files(maildir)
    )
}

/// Dovecot's log of this instance (a start that lost its port logged before it).
fn dovecot_log(dovecot: &Peer) -> String {
    let log = read_lossy(&dovecot.logs[0]);
    match log.rsplit_once(" starting up ") {
        Some((_, l)) => l.to_string(),
        None => log,
    }
}

#[test]
fn a_self_signed_ca_true_dovecot_is_reached_by_ca_file_or_by_pin_and_a_wrong_pin_sends_nothing() {
    let dir = workdir();
    let Some(peers) = peers(dir.path()) else {
        return;
    };
    let Some((cert, key)) = openssl_self_signed(dir.path()) else {
        return;
    };
    let der = der_of(&cert);
    let info = CertificateInfo::from_der(&der);
    assert!(
        info.ca && info.self_signed,
        "openssl req -x509 no longer makes a self-signed CA:TRUE certificate: {info:?}"
    );
    let pin = info.fingerprint.to_string();
    let home = dir.path().join("home");
    mkdir(&home, 0o755);
    let maildir = home.join(USER).join("Maildir");
    write_maildir(&maildir, &[]);
    chown_tree(&home.join(USER), peers.mail);
    let tls = DovecotTls {
        cert,
        key,
        pop3s_port: std::cell::Cell::new(0),
    };
    let dovecot = start_dovecot(&peers, dir.path(), Some(&tls));
    let sink = start_smtp_sink(&peers, dir.path(), &dir.path().join("sink"));
    let (stls_port, pop3s_port) = (dovecot.addr.port(), tls.pop3s_port.get());
    let smtp = sink.addr.port();
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();

    // ---- a wrong pin, on both ports: exit 3, nothing fetched, no login attempted.
    let mut wrong = pin.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let mails: Vec<Mail> = (0..2).map(|i| mail(i, &nonce)).collect();
    write_maildir(&maildir, &mails);
    chown_tree(&home.join(USER), peers.mail);
    for (label, mode, port) in [
        ("wrong-implicit", "implicit", pop3s_port),
        ("wrong-stls", "starttls", stls_port),
    ] {
        let cfg = config(
            dir.path(),
            label,
            mode,
            port,
            Trust::Pin(wrong.clone()),
            smtp,
        );
        let run = popbridge(dir.path(), &cfg, label);
        let why = || why(&run, &dovecot, &maildir);
        exited(&run, 3, 0, label, &why);
        let said = format!("{}{}", run.stdout, run.stderr);
        for needle in [
            format!("127.0.0.1:{port}"),
            "not the one pinned by tls_fingerprint".to_string(),
            pin.clone(),
        ] {
            assert!(
                said.contains(&needle),
                "{label}: the error does not name {needle:?}\n{}",
                why()
            );
        }
        assert!(
            !said.contains(PASSWORD),
            "{label}: the password was printed\n{}",
            why()
        );
    }
    assert_eq!(maildir_files(&maildir).len(), 2, "the wrong pin lost mail");
    // Server side: both connections ended without an authentication attempt. Dovecot logs
    // each login-process disconnect with its count of attempts.
    let log = wait_for_log(&dovecot.logs[0], |l| {
        l.matches("no auth attempts").count() >= 2
    });
    let log = match log.rsplit_once(" starting up ") {
        Some((_, l)) => l.to_string(),
        None => log,
    };
    assert!(
        log.matches("no auth attempts").count() >= 2,
        "Dovecot did not log two connections without an authentication attempt\n{log}"
    );
    for sign in [
        format!("user=<{USER}>"),
        "auth attempt".to_string(),
        "Password mismatch".into(),
    ] {
        let attempts: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&sign) && !l.contains("no auth attempts"))
            .collect();
        assert!(
            attempts.is_empty(),
            "a login was attempted despite the wrong pin ({sign}): {attempts:#?}\n{log}"
        );
    }

    // ---- the right trust, four ways: every message arrives and leaves the mailbox.
    let mut delivered = 0u64;
    let ways = [
        (
            "cafile-implicit",
            "implicit",
            pop3s_port,
            Trust::CaFile(&tls.cert),
        ),
        (
            "cafile-stls",
            "starttls",
            stls_port,
            Trust::CaFile(&tls.cert),
        ),
        (
            "pin-implicit",
            "implicit",
            pop3s_port,
            Trust::Pin(pin.clone()),
        ),
        (
            "pin-stls",
            "starttls",
            stls_port,
            // Without the prefix or colons, in lower case: as `sha256sum` prints it.
            Trust::Pin(pin["sha256:".len()..].replace(':', "").to_lowercase()),
        ),
    ];
    for (n, (label, mode, port, trust)) in ways.into_iter().enumerate() {
        if n > 0 {
            let mails: Vec<Mail> = (0..2).map(|i| mail(10 * n + i, &nonce)).collect();
            write_maildir(&maildir, &mails);
            chown_tree(&home.join(USER), peers.mail);
        }
        let cfg = config(dir.path(), label, mode, port, trust, smtp);
        let run = popbridge(dir.path(), &cfg, label);
        let why = || why(&run, &dovecot, &maildir);
        exited(&run, 0, 2, label, &why);
        delivered += 2;
        assert!(maildir_files(&maildir).is_empty(), "{label}\n{}", why());
        let count = wait_for_counter(&sink, delivered);
        assert_eq!(count, Some(delivered), "{label}: smtp-sink\n{}", why());
    }
    let log = dovecot_log(&dovecot);
    assert!(
        log.lines().filter(|l| l.contains("TLS")).count() >= 4,
        "Dovecot did not log TLS sessions\n{log}"
    );

    // ---- diagnose: the certificate, why it would not verify without trust, the pin line.
    let cfg = config(
        dir.path(),
        "diagnose",
        "implicit",
        pop3s_port,
        Trust::System,
        smtp,
    );
    let run = popbridge_command(dir.path(), &cfg, "diagnose", "diagnose");
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(3),
        "diagnose without trust must fail\n{}",
        why(&run, &dovecot, &maildir)
    );
    assert!(
        run.stdout.contains(&format!("tls_fingerprint = \"{pin}\"")),
        "diagnose does not print the pin line\n{}",
        run.stdout
    );
    let redacted = run
        .stdout
        .replace(&pin, "sha256:[FINGERPRINT]")
        .replace(&info.not_before, "[NOT BEFORE]")
        .replace(&info.not_after, "[NOT AFTER]")
        .replace(&format!(":{pop3s_port}"), ":[POP3S]")
        .replace(&format!(":{smtp}"), ":[SMTP]");
    insta::assert_snapshot!("diagnose_self_signed_dovecot", redacted);
}

/// smtp-sink's counter once it reaches `n`, or its last value after the log settles.
fn wait_for_counter(sink: &Peer, n: u64) -> Option<u64> {
    wait_for_log(&sink.logs[0], |_| sink_count(sink) == Some(n));
    sink_count(sink)
}
