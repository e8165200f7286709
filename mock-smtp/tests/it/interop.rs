//! Real SMTP clients (swaks, Postfix's smtp-source) against the mock.
//!
//! Each test runs a client as a child process in a fresh temporary directory, with a
//! cleared environment, against a mock bound on loopback; then it waits for the client
//! to exit and the mock to go idle, and checks what the mock captured and counted.
//!
//! A missing client skips its test, unless `POPBRIDGE_REQUIRE_PEERS=1`, in which case
//! the test fails.
//!
//! Client quirks these tests rely on (swaks 20201014, Postfix 3.7 smtp-source):
//! - swaks tries neither STARTTLS nor AUTH unless asked (`--tls`, `--auth`).
//! - swaks `--tls-verify` checks the certificate chain against `--tls-ca-path` but not
//!   the host name (no `SSL_set1_host`), so `--tls-sni localhost` only sets SNI.
//! - swaks `--pipeline` buffers MAIL, RCPT and DATA and sends them in one write.
//! - smtp-source greets with HELO (never EHLO) and does not pipeline ("BUGS: No SMTP
//!   command pipelining support" in its manual page); with `-d` each of the `-s`
//!   parallel sessions sends messages until `-m` are sent, so there are exactly `-s`
//!   sessions when `-m >= -s`. It needs no privileges (unlike smtp-sink's `-u`).

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock_core::test_support::{self, ClientRun};
use mock_smtp::pki::TestPki;
use mock_smtp::{
    CaptureMode, Delivery, MockSmtp, MockSmtpHandle, Outcome as TxnOutcome, Received, SessionEnd,
    SessionStats,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::client::spawn;

const FROM: &str = "sender@example.net";
const TO: &str = "user@contoso.local";
const HELO: &str = "client.example.net";
/// A client that has not finished by then is killed and the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// `PATH` for the clients.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Where Debian keeps Postfix's test programs besides `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/lib/postfix/sbin"];

/// The client's path (on `PATH` or in [`EXTRA_DIRS`]), or `None` (test skipped) when it
/// is not installed. Panics instead when `POPBRIDGE_REQUIRE_PEERS=1`.
fn require(name: &str) -> Option<PathBuf> {
    test_support::require(name, EXTRA_DIRS)
}

/// A fresh directory for the client's cwd, `HOME` and output files.
fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("smtp-interop-")
        .tempdir()
        .unwrap()
}

/// How a client run ended.
struct Run(ClientRun);

impl Deref for Run {
    type Target = ClientRun;

    fn deref(&self) -> &ClientRun {
        &self.0
    }
}

impl Run {
    /// Everything needed to debug a failure in CI: the client's output and the mock's
    /// transcript and counters.
    fn diagnostics(&self, server: &MockSmtpHandle) -> String {
        let mut s = self.describe();
        let _ = writeln!(s, "---- client stdout ----\n{}", tail(&self.stdout));
        let _ = writeln!(s, "---- client stderr ----\n{}", tail(&self.stderr));
        let _ = writeln!(
            s,
            "---- mock transcript ----\n{}",
            server.transcript().trim_end()
        );
        let _ = writeln!(s, "---- mock counts ----\n{:?}", server.counts());
        s
    }

    /// The client succeeded (else a panic saying `what` failed, with the diagnostics);
    /// returns once the mock saw its sessions end.
    async fn succeeded_on(&self, server: &MockSmtpHandle, what: &str) {
        assert!(
            self.succeeded(),
            "{what} failed\n{}",
            self.diagnostics(server)
        );
        server.wait_idle().await;
    }
}

/// The last 8 KB of a client's output (smtp-source `-c` prints a counter per message).
fn tail(text: &str) -> &str {
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(8 * 1024);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A command with a minimal, predictable environment rooted in `home`.
fn command(program: &Path, home: &Path) -> Command {
    test_support::clean_command(program, home, DEFAULT_PATH)
}

/// Runs `cmd` to completion (killed after [`CLIENT_TIMEOUT`]) in `dir`, its output going
/// to files there.
async fn run(cmd: Command, dir: &Path, label: &str) -> Run {
    Run(test_support::run_client(cmd, dir, label, CLIENT_TIMEOUT).await)
}

/// swaks sending one message from [`FROM`] to [`TO`] at `server`, without STARTTLS or AUTH.
fn swaks(bin: &Path, dir: &Path, server: SocketAddr, subject: &str, body: &str) -> Command {
    let mut cmd = command(bin, dir);
    cmd.arg("--server")
        .arg(server.to_string())
        .arg("--helo")
        .arg(HELO)
        .arg("--from")
        .arg(FROM)
        .arg("--to")
        .arg(TO)
        .arg("--header")
        .arg(format!("Subject: {subject}"))
        .arg("--body")
        .arg(body)
        .arg("--timeout")
        .arg("30");
    cmd
}

/// The first word of each client line in a session's transcript (`EHLO`, `MAIL`, ...;
/// `(message,` for a DATA body).
fn client_verbs(session: &SessionStats) -> Vec<&str> {
    session
        .transcript
        .iter()
        .filter_map(|l| l.strip_prefix("C: "))
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect()
}

/// Index of the first transcript line of `session` at or after `from` that starts with `prefix`.
fn line_index(session: &SessionStats, from: usize, prefix: &str) -> Option<usize> {
    session
        .transcript
        .iter()
        .skip(from)
        .position(|l| l.starts_with(prefix))
        .map(|i| i + from)
}

/// Checks a transaction from [`FROM`] to [`TO`] that was accepted and delivered.
fn assert_delivered(t: &Received, why: &dyn Fn() -> String) {
    assert_eq!(t.outcome, TxnOutcome::Accepted, "outcome\n{}", why());
    assert!(t.delivered(), "not delivered\n{}", why());
    assert_eq!(
        t.deliveries,
        vec![Delivery::Delivered {
            recipient: TO.into()
        }],
        "deliveries\n{}",
        why()
    );
    assert_eq!(t.mail_from, FROM, "MAIL FROM\n{}", why());
    assert_eq!(t.sender.as_deref(), Some(FROM), "sender\n{}", why());
    let rcpts: Vec<(&str, bool)> = t
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.accepted))
        .collect();
    assert_eq!(rcpts, [(TO, true)], "recipients\n{}", why());
    assert!(!t.bdat, "swaks and smtp-source use DATA\n{}", why());
    assert_eq!(t.size, t.data.len() as u64, "size vs data\n{}", why());
}

/// The header and the body of a captured message.
fn split_message(data: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(data);
    match text.split_once("\r\n\r\n") {
        Some((h, b)) => (format!("{h}\r\n"), b.to_string()),
        None => (text.into_owned(), String::new()),
    }
}

// ---------------------------------------------------------------- swaks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_delivers_plain() {
    let Some(bin) = require("swaks") else { return };
    let dir = workdir();
    let server = spawn(MockSmtp::builder()).await;
    let subject = "Interop plain 1";
    // A line starting with a dot checks dot-stuffing end to end.
    let body = "Hello from swaks.\n.a line that starts with a dot\nLast line.";

    let cmd = swaks(&bin, dir.path(), server.addr().unwrap(), subject, body);
    let out = run(cmd, dir.path(), "swaks").await;
    let why = || out.diagnostics(&server);
    out.succeeded_on(&server, "swaks").await;

    let txns = server.captured();
    assert_eq!(txns.len(), 1, "captured transactions\n{}", why());
    let t = &txns[0];
    assert_delivered(t, &why);
    let (header, text) = split_message(&t.data);
    assert!(
        header.contains(&format!("\r\nSubject: {subject}\r\n")),
        "subject not in the captured header {header:?}\n{}",
        why()
    );
    let expected = body.replace('\n', "\r\n");
    assert!(
        text.starts_with(&format!("{expected}\r\n")),
        "captured body {text:?} does not start with {expected:?}\n{}",
        why()
    );
    assert!(
        !text.contains("\r\n..a line"),
        "a stuffed dot leaked into the capture\n{}",
        why()
    );
    assert!(
        out.stdout.contains("<-  250 2.6.0 "),
        "no `250 2.6.0` in swaks output\n{}",
        why()
    );

    let sessions = server.sessions();
    assert_eq!(sessions.len(), 1, "sessions\n{}", why());
    let s = &sessions[0];
    assert!(!s.tls, "TLS without --tls\n{}", why());
    assert_eq!(
        client_verbs(s),
        ["EHLO", "MAIL", "RCPT", "DATA", "(message,", "QUIT"],
        "swaks tried more than a plain delivery (STARTTLS, AUTH?)\n{}",
        why()
    );
    assert_eq!(s.commands, 5, "command count\n{}", why());
    assert_eq!(s.end, Some(SessionEnd::Quit), "session end\n{}", why());
    let counts = server.counts();
    assert_eq!(
        (counts.accepted, counts.delivered, counts.bytes),
        (1, 1, t.size),
        "counts\n{}",
        why()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_delivers_with_starttls() {
    let Some(bin) = require("swaks") else { return };
    let dir = workdir();
    let pki = TestPki::localhost().unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, &pki.ca_pem).unwrap();
    let server = spawn(MockSmtp::builder().tls(pki.server_config().unwrap())).await;
    let addr = server.addr().unwrap();
    let subject = "Interop STARTTLS 1";
    let body = "Sent over STARTTLS.";

    // 127.0.0.1 rather than `localhost`, which may resolve to ::1 first; swaks 2020
    // verifies the chain only, so the name the certificate carries goes in SNI.
    let mut cmd = swaks(&bin, dir.path(), addr, subject, body);
    cmd.arg("--tls")
        .arg("--tls-verify")
        .arg("--tls-ca-path")
        .arg(&ca)
        .arg("--tls-sni")
        .arg("localhost");
    let out = run(cmd, dir.path(), "swaks-tls").await;
    let why = || out.diagnostics(&server);
    out.succeeded_on(&server, "swaks --tls").await;

    let txns = server.captured();
    assert_eq!(txns.len(), 1, "captured transactions\n{}", why());
    assert_delivered(&txns[0], &why);
    let (header, text) = split_message(&txns[0].data);
    assert!(
        header.contains(&format!("\r\nSubject: {subject}\r\n")) && text.starts_with(body),
        "captured message {:?}\n{}",
        String::from_utf8_lossy(&txns[0].data),
        why()
    );

    let sessions = server.sessions();
    assert_eq!(sessions.len(), 1, "sessions\n{}", why());
    let s = &sessions[0];
    assert!(s.tls, "session not marked TLS\n{}", why());
    assert_eq!(
        client_verbs(s),
        [
            "EHLO",
            "STARTTLS",
            "EHLO",
            "MAIL",
            "RCPT",
            "DATA",
            "(message,",
            "QUIT"
        ],
        "commands\n{}",
        why()
    );
    let starttls = line_index(s, 0, "C: STARTTLS").unwrap();
    let ready = line_index(s, starttls, "S: 220 2.0.0").unwrap();
    let up = line_index(s, ready, "-- TLS established --");
    let ehlo = up.and_then(|up| line_index(s, up, "C: EHLO "));
    assert!(
        up.is_some() && ehlo.is_some(),
        "no TLS handshake and second EHLO after STARTTLS\n{}",
        why()
    );
    assert_eq!(s.end, Some(SessionEnd::Quit), "session end\n{}", why());
    // swaks marks TLS traffic with `~>`/`<~`; the EHLO after TLS no longer offers STARTTLS.
    assert!(
        out.stdout.contains("=== TLS started")
            && out.stdout.contains(" ~> MAIL FROM:")
            && out.stdout.contains("<~  250 2.6.0 ")
            && !out.stdout.contains("<~  250-STARTTLS"),
        "swaks output does not show the transaction inside TLS\n{}",
        why()
    );

    // Control: the same client trusting only the system CAs must refuse the certificate,
    // so the success above did verify it against the test CA.
    let mut cmd = swaks(&bin, dir.path(), addr, subject, body);
    cmd.arg("--tls")
        .arg("--tls-verify")
        .arg("--tls-sni")
        .arg("localhost");
    let control = run(cmd, dir.path(), "swaks-untrusted").await;
    let why = || control.diagnostics(&server);
    assert!(
        control.status.is_some() && !control.succeeded(),
        "swaks accepted a certificate from an untrusted CA\n{}",
        why()
    );
    assert!(
        control.stderr.contains("certificate verify failed"),
        "swaks failed for another reason than verification\n{}",
        why()
    );
    server.wait_idle().await;
    assert_eq!(server.captured().len(), 1, "a second message\n{}", why());
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 2, "sessions\n{}", why());
    assert!(!sessions[1].tls, "failed handshake marked TLS\n{}", why());
    server.shutdown().await;
}

// ------------------------------------------------------- pipelining (swaks)

/// Which way a chunk went through [`relay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

/// Every read the relay made, in the order it made them, each logged before forwarding.
type Wire = Arc<Mutex<Vec<(Dir, Vec<u8>)>>>;

/// A loopback TCP relay for one connection to `target` that records what it forwards.
///
/// Because a chunk is logged before it is forwarded, a client that waits for each reply
/// can never have two commands in one client chunk: seeing MAIL, RCPT and DATA in one
/// chunk proves that the client pipelined them.
async fn relay(target: SocketAddr) -> (SocketAddr, Wire, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = Wire::default();
    let log = wire.clone();
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::join!(
            pump(cr, sw, Dir::ToServer, log.clone()),
            pump(sr, cw, Dir::ToClient, log)
        );
    });
    (addr, wire, task)
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, dir: Dir, log: Wire) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        log.lock().unwrap().push((dir, buf[..n].to_vec()));
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn show_wire(wire: &Wire) -> String {
    let mut s = String::from("---- relay chunks ----\n");
    for (dir, bytes) in wire.lock().unwrap().iter() {
        let arrow = match dir {
            Dir::ToServer => "C>",
            Dir::ToClient => "<S",
        };
        let _ = writeln!(s, "{arrow} {:?}", String::from_utf8_lossy(bytes));
    }
    s
}

/// Not smtp-source (it does not pipeline): swaks `--pipeline` sends MAIL, RCPT and DATA
/// in one write, and the mock answers the batch with one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_pipelines_mail_rcpt_data() {
    let Some(bin) = require("swaks") else { return };
    let dir = workdir();
    let server = spawn(MockSmtp::builder()).await;
    let (via, wire, relay_task) = relay(server.addr().unwrap()).await;
    let subject = "Interop pipelining 1";
    let body = "Pipelined.";

    let mut cmd = swaks(&bin, dir.path(), via, subject, body);
    cmd.arg("--pipeline");
    let out = run(cmd, dir.path(), "swaks-pipeline").await;
    let why = || format!("{}{}", out.diagnostics(&server), show_wire(&wire));
    assert!(out.succeeded(), "swaks --pipeline failed\n{}", why());
    tokio::time::timeout(CLIENT_TIMEOUT, relay_task)
        .await
        .unwrap_or_else(|_| panic!("relay did not finish\n{}", why()))
        .unwrap();
    server.wait_idle().await;

    let txns = server.captured();
    assert_eq!(txns.len(), 1, "captured transactions\n{}", why());
    assert_delivered(&txns[0], &why);
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 1, "sessions\n{}", why());
    assert!(
        sessions[0]
            .transcript
            .iter()
            .any(|l| l == "S: 250-PIPELINING"),
        "EHLO did not advertise PIPELINING\n{}",
        why()
    );
    assert_eq!(
        client_verbs(&sessions[0]),
        ["EHLO", "MAIL", "RCPT", "DATA", "(message,", "QUIT"],
        "commands\n{}",
        why()
    );

    let chunks = wire.lock().unwrap().clone();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let batch = format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\n");
    assert!(
        chunks
            .iter()
            .any(|(d, b)| *d == Dir::ToServer && text(b).contains(&batch)),
        "MAIL, RCPT and DATA did not reach the server together\n{}",
        why()
    );
    let replies = "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 ";
    assert!(
        chunks
            .iter()
            .any(|(d, b)| *d == Dir::ToClient && text(b).starts_with(replies)),
        "the mock did not answer the pipelined batch in one write\n{}",
        why()
    );
    // swaks's own account: DATA sent before the first reply was read.
    let pos = |needle: &str| out.stdout.find(needle);
    assert!(
        matches!((pos(" -> DATA"), pos("<-  250 2.1.0")), (Some(a), Some(b)) if a < b),
        "swaks did not pipeline\n{}",
        why()
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------- smtp-source

/// smtp-source with `-d` (sessions stay connected), sending from [`FROM`] to [`TO`].
fn smtp_source(
    bin: &Path,
    dir: &Path,
    server: SocketAddr,
    sessions: u32,
    messages: u32,
    len: u32,
) -> Command {
    let mut cmd = command(bin, dir);
    cmd.arg("-d")
        .arg("-c")
        .arg("-s")
        .arg(sessions.to_string())
        .arg("-m")
        .arg(messages.to_string())
        .arg("-l")
        .arg(len.to_string())
        .arg("-M")
        .arg(HELO)
        .arg("-f")
        .arg(FROM)
        .arg("-t")
        .arg(TO)
        .arg("-S")
        .arg("smtp-source interop")
        .arg(server.to_string());
    cmd
}

/// The last value of smtp-source's `-c` counter (`1\r2\r...1000\r\n`).
fn last_counter(stdout: &str) -> Option<u64> {
    stdout
        .split(['\r', '\n'])
        .rfind(|s| !s.is_empty())
        .and_then(|s| s.trim().parse().ok())
}

/// 1000 messages of 2 KB over 10 parallel, persistent sessions into a count-only mock,
/// after a small run with transcripts that checks what each session sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_delivers_1000_messages_over_parallel_sessions() {
    let Some(bin) = require("smtp-source") else {
        return;
    };
    let dir = workdir();

    // Small run, full capture and transcripts: 2 sessions, 4 messages.
    let server = spawn(MockSmtp::builder()).await;
    let cmd = smtp_source(&bin, dir.path(), server.addr().unwrap(), 2, 4, 512);
    let out = run(cmd, dir.path(), "smtp-source-small").await;
    let why = || out.diagnostics(&server);
    out.succeeded_on(&server, "smtp-source").await;
    assert_eq!(last_counter(&out.stdout), Some(4), "counter\n{}", why());
    let txns = server.captured();
    assert_eq!(txns.len(), 4, "captured transactions\n{}", why());
    for t in &txns {
        assert_delivered(t, &why);
        let (header, text) = split_message(&t.data);
        assert!(
            header.contains("\r\nSubject: smtp-source interop\r\n") && text.len() >= 512,
            "captured message {:?}\n{}",
            String::from_utf8_lossy(&t.data),
            why()
        );
    }
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 2, "sessions\n{}", why());
    let mut sent = 0;
    for s in &sessions {
        let verbs = client_verbs(s);
        // HELO, then MAIL RCPT DATA (message) per message, then QUIT: no EHLO, so no
        // PIPELINING offered, and smtp-source would not use it anyway.
        let per_message = ["MAIL", "RCPT", "DATA", "(message,"];
        let k = (verbs.len().saturating_sub(2)) / per_message.len();
        let mut expected = vec!["HELO"];
        for _ in 0..k {
            expected.extend(per_message);
        }
        expected.push("QUIT");
        assert!(k >= 1, "session {} sent no message\n{}", s.id, why());
        assert_eq!(verbs, expected, "session {} commands\n{}", s.id, why());
        assert_eq!(s.accepted, k as u64, "session {} accepted\n{}", s.id, why());
        assert_eq!(s.end, Some(SessionEnd::Quit), "session end\n{}", why());
        sent += k;
    }
    assert_eq!(sent, 4, "messages across sessions\n{}", why());
    server.shutdown().await;

    // The load run: counters only, no transcripts.
    const SESSIONS: u32 = 10;
    const MESSAGES: u64 = 1000;
    const LEN: u32 = 2048;
    let server = spawn(
        MockSmtp::builder()
            .capture(CaptureMode::CountOnly)
            .record_transcript(false),
    )
    .await;
    let cmd = smtp_source(
        &bin,
        dir.path(),
        server.addr().unwrap(),
        SESSIONS,
        MESSAGES as u32,
        LEN,
    );
    let out = run(cmd, dir.path(), "smtp-source-1000").await;
    let why = || out.diagnostics(&server);
    out.succeeded_on(&server, "smtp-source").await;
    eprintln!(
        "smtp-source: {MESSAGES} messages of {LEN} octets over {SESSIONS} sessions in {:?}",
        out.elapsed
    );

    assert_eq!(
        last_counter(&out.stdout),
        Some(MESSAGES),
        "counter\n{}",
        why()
    );
    let counts = server.counts();
    assert_eq!(counts.accepted, MESSAGES, "accepted\n{}", why());
    assert_eq!(counts.delivered, MESSAGES, "delivered\n{}", why());
    assert_eq!(
        (counts.ndr, counts.rejected, counts.badmail),
        (0, 0, 0),
        "refused or bounced\n{}",
        why()
    );
    assert!(
        counts.bytes >= MESSAGES * u64::from(LEN),
        "octets accepted: {}\n{}",
        counts.bytes,
        why()
    );
    assert!(
        server.captured().is_empty(),
        "count-only mode kept transactions\n{}",
        why()
    );
    let sessions = server.sessions();
    assert_eq!(sessions.len(), SESSIONS as usize, "sessions\n{}", why());
    for s in &sessions {
        assert!(
            s.accepted >= 1,
            "session {} sent no message\n{}",
            s.id,
            why()
        );
        assert_eq!(s.transactions, s.accepted, "session {}\n{}", s.id, why());
        assert_eq!(s.end, Some(SessionEnd::Quit), "session end\n{}", why());
        assert!(s.transcript.is_empty(), "transcript recorded\n{}", why());
    }
    let per_session: u64 = sessions.iter().map(|s| s.accepted).sum();
    assert_eq!(per_session, MESSAGES, "accepted across sessions\n{}", why());
    server.shutdown().await;
}
