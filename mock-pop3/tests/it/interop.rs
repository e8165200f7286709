//! Real POP3 clients (fetchmail, mpop) against the mock.
//!
//! Each test runs one client once, as a child process in a fresh temporary
//! directory, against a mock bound on loopback, then checks the mock's state
//! (every message retrieved and deleted) and what the client delivered.
//!
//! A missing client skips its test, unless `POPBRIDGE_REQUIRE_PEERS=1`, in
//! which case the test fails.

use std::fmt::Write as _;
use std::fs;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_core::test_support::{self, ClientRun};
use mock_pop3::pki::TestPki;
use mock_pop3::{demo_message, Maildrop, MockPop3, MockPop3Handle, ServerTls, SessionEnd};
use popbridge_proto::pop3::AuthMethod;
use tokio::process::Command;

use crate::client::spawn;

const USER: &str = "demo";
/// Safe inside single quotes, double quotes and an `echo`.
const PASS: &str = "Pop-bridge_42";
/// A client that has not finished by then is killed and the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Message sizes for most tests: 2 KB .. 100 KB, the largest not last, so that a
/// pipelining client has replies queued behind a large body.
const SIZES: &[usize] = &[2_048, 100_000, 10_000, 64_000, 33_333];
/// The same with one ~1 MB message.
const SIZES_LARGE: &[usize] = &[2_048, 1 << 20, 10_000, 100_000, 64_000];
/// A body line of every tenth line of a demo message: dot-stuffed on the wire.
const DOT_LINE: &str = ".a line that starts with a dot";

/// `PATH` for the clients (and their `/bin/sh -c` helpers).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The client's path, or `None` (test skipped) when it is not installed.
/// Panics instead when `POPBRIDGE_REQUIRE_PEERS=1`.
fn require(name: &str) -> Option<PathBuf> {
    test_support::require(name, &[])
}

/// What the test serves and how.
struct Setup {
    sizes: &'static [usize],
    /// The only method the mailbox accepts: a client cannot silently fall back.
    method: AuthMethod,
    tls: bool,
}

impl Setup {
    /// No TLS, the usual sizes, `method` only.
    fn plain(method: AuthMethod) -> Self {
        Self {
            sizes: SIZES,
            method,
            tls: false,
        }
    }

    /// Implicit TLS, one large message, USER/PASS.
    fn implicit_tls() -> Self {
        Self {
            sizes: SIZES_LARGE,
            method: AuthMethod::User,
            tls: true,
        }
    }
}

/// A running mock with its mailbox and, for TLS, the CA file clients trust.
struct Fixture {
    server: MockPop3Handle,
    dir: tempfile::TempDir,
    /// UIDs in the maildrop before the client ran.
    uids: Vec<String>,
    /// `.a line ...` lines across all messages (checks dot-unstuffing end to end).
    dot_lines: usize,
    ca_file: Option<PathBuf>,
}

impl Fixture {
    async fn start(setup: &Setup) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("interop-")
            .tempdir()
            .unwrap();
        // Paths go into shell commands and rc files unquoted or single-quoted.
        let shown = dir.path().display().to_string();
        assert!(
            !shown.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)),
            "temporary directory {shown:?} is unsafe to quote"
        );
        let mut mailbox = Maildrop::new(USER, PASS).with_methods([setup.method]);
        let mut dot_lines = 0;
        for (i, &size) in setup.sizes.iter().enumerate() {
            // One message at a time keeps the demo indices 0.. and sizes varied.
            mailbox = mailbox.with_demo_messages(1, size);
            let data = demo_message(USER, i, size);
            dot_lines += String::from_utf8_lossy(&data)
                .lines()
                .filter(|l| *l == DOT_LINE)
                .count();
        }
        let mut builder = MockPop3::builder().maildrop(mailbox);
        let mut ca_file = None;
        if setup.tls {
            let pki = TestPki::localhost().unwrap();
            let path = dir.path().join("ca.pem");
            fs::write(&path, &pki.ca_pem).unwrap();
            ca_file = Some(path);
            builder = builder.tls(ServerTls::Implicit(pki.server_config().unwrap()));
        }
        let server = spawn(builder).await;
        let uids = server.maildrop(USER).unwrap().remaining;
        assert_eq!(uids.len(), setup.sizes.len());
        Self {
            server,
            dir,
            uids,
            dot_lines,
            ca_file,
        }
    }

    fn port(&self) -> u16 {
        self.server.addr().unwrap().port()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// How a client run ended, with extra context (the rc file).
struct Outcome {
    run: ClientRun,
    notes: String,
}

impl Deref for Outcome {
    type Target = ClientRun;

    fn deref(&self) -> &ClientRun {
        &self.run
    }
}

impl Outcome {
    /// Everything needed to debug a failure in CI: the client's output and the mock's transcript.
    fn diagnostics(&self, server: &MockPop3Handle) -> String {
        let mut s = self.describe();
        if !self.notes.is_empty() {
            let _ = writeln!(s, "---- notes ----\n{}", self.notes.trim_end());
        }
        let _ = writeln!(s, "---- client stdout ----\n{}", self.stdout.trim_end());
        let _ = writeln!(s, "---- client stderr ----\n{}", self.stderr.trim_end());
        let _ = writeln!(
            s,
            "---- mock transcript ----\n{}",
            server.transcript().trim_end()
        );
        let _ = writeln!(s, "---- mailbox ----\n{:?}", server.maildrop(USER));
        s
    }
}

/// Runs `cmd` to completion (bounded by [`CLIENT_TIMEOUT`]); its output goes to files in `dir`.
async fn run(cmd: Command, dir: &Path, label: &str, notes: String) -> Outcome {
    Outcome {
        run: test_support::run_client(cmd, dir, label, CLIENT_TIMEOUT).await,
        notes,
    }
}

/// A command with a minimal, predictable environment rooted in the test's directory.
fn command(program: &Path, home: &Path) -> Command {
    test_support::clean_command(program, home, DEFAULT_PATH)
}

/// Waits for the client to succeed and the mock to go idle, then checks that every
/// message was retrieved once, deleted, and delivered intact.
async fn check(fx: &Fixture, outcome: &Outcome, delivered: &Path, tls: bool, auth_prefix: &str) {
    let server = &fx.server;
    assert!(
        outcome.succeeded(),
        "client failed\n{}",
        outcome.diagnostics(server)
    );
    server.wait_idle().await;
    let why = || outcome.diagnostics(server);

    let report = server.maildrop(USER).unwrap();
    let mut retrieved = report.retrieved.clone();
    retrieved.sort();
    let mut deleted = report.deleted.clone();
    deleted.sort();
    let mut all = fx.uids.clone();
    all.sort();
    assert_eq!(retrieved, all, "not every message was retrieved\n{}", why());
    assert_eq!(deleted, all, "not every message was deleted\n{}", why());
    assert!(
        report.remaining.is_empty(),
        "messages left in the maildrop\n{}",
        why()
    );
    assert_eq!(
        report.retrievals,
        fx.uids.len() as u64,
        "messages retrieved more than once\n{}",
        why()
    );

    let sessions = server.sessions();
    assert!(!sessions.is_empty(), "no session recorded\n{}", why());
    for s in &sessions {
        assert_eq!(s.tls, tls, "session {} tls flag\n{}", s.id, why());
    }
    let last = sessions.last().unwrap();
    assert_eq!(
        last.end,
        Some(SessionEnd::QuitUpdate),
        "the session did not end with QUIT\n{}",
        why()
    );
    assert_eq!(last.user.as_deref(), Some(USER), "wrong login\n{}", why());
    assert!(
        last.commands.iter().any(|c| c.starts_with(auth_prefix)),
        "no `{auth_prefix}` command in the session\n{}",
        why()
    );
    for s in &sessions {
        assert!(
            !s.transcript.iter().any(|l| l.contains(PASS)),
            "password in the transcript\n{}",
            why()
        );
    }

    let text = fs::read(delivered).unwrap_or_else(|e| {
        panic!(
            "no delivered mail at {}: {e}\n{}",
            delivered.display(),
            why()
        )
    });
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let ids = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .count();
    assert_eq!(
        ids,
        fx.uids.len(),
        "delivered message count (Message-ID lines)\n{}",
        why()
    );
    for i in 0..fx.uids.len() {
        let id = format!("Message-ID: <demo-{i}-{USER}@mock-pop3.invalid>");
        assert_eq!(
            lines.iter().filter(|l| **l == id).count(),
            1,
            "{id} delivered once\n{}",
            why()
        );
    }
    let dots = lines.iter().filter(|l| **l == DOT_LINE).count();
    assert_eq!(
        dots,
        fx.dot_lines,
        "dot-stuffed lines not delivered intact\n{}",
        why()
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("..a line")),
        "a stuffed dot leaked into the delivery\n{}",
        why()
    );
}

/// One multi-threaded test each `name => client(setup, ...)`, running that client.
macro_rules! client_tests {
    ($($name:ident => $run:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $run.await;
        }
    )*};
}

// ---------------------------------------------------------------- fetchmail

/// The fetchmailrc: one poll entry, delivering through an MDA that appends to `out`.
fn fetchmail_rc(fx: &Fixture, protocol: &str, tls: bool) -> String {
    let out = fx.path("out");
    let security = match &fx.ca_file {
        Some(ca) if tls => format!("  ssl\n  sslcertck\n  sslcertfile \"{}\"\n", ca.display()),
        // Without this fetchmail 6.4 tries STLS whenever CAPA offers it.
        _ => "  sslproto ''\n".to_string(),
    };
    // fetchmail 6.4 checks only DNS names in the certificate (not IP SANs): name the
    // host as the certificate does when verifying it.
    let host = if tls { "localhost" } else { "127.0.0.1" };
    format!(
        "poll {host} port {port} protocol {protocol}\n\
         {auth}\
         \x20 user \"{USER}\" there with password \"{PASS}\"\n\
         {security}\
         \x20 fetchall\n\
         \x20 nokeep\n\
         \x20 mda \"/bin/sh -c 'cat >> {out}'\"\n",
        port = fx.port(),
        auth = if protocol == "POP3" {
            "  auth password\n"
        } else {
            ""
        },
        out = out.display(),
    )
}

async fn fetchmail(setup: Setup, protocol: &str, auth_prefix: &str) {
    let Some(bin) = require("fetchmail") else {
        return;
    };
    let fx = Fixture::start(&setup).await;
    let rc_path = fx.path("fetchmailrc");
    let rc = fetchmail_rc(&fx, protocol, setup.tls);
    fs::write(&rc_path, &rc).unwrap();
    fs::set_permissions(&rc_path, fs::Permissions::from_mode(0o600)).unwrap();

    let mut cmd = command(&bin, fx.dir.path());
    cmd.env("FETCHMAILHOME", fx.dir.path())
        .arg("-f")
        .arg(&rc_path)
        .arg("-N")
        .arg("--nosyslog")
        // Run as root, fetchmail locks /var/run/fetchmail.pid whatever FETCHMAILHOME says,
        // and refuses to run beside another instance: give each test its own lock.
        .arg("--pidfile")
        .arg(fx.path("fetchmail.pid"))
        .arg("--idfile")
        .arg(fx.path("ids"))
        .arg("-v");
    let outcome = run(
        cmd,
        fx.dir.path(),
        "fetchmail",
        format!("fetchmailrc:\n{rc}"),
    )
    .await;
    check(&fx, &outcome, &fx.path("out"), setup.tls, auth_prefix).await;
    fx.server.shutdown().await;
}

client_tests! {
    fetchmail_user_pass => fetchmail(Setup::plain(AuthMethod::User), "POP3", "PASS ");
    fetchmail_apop => fetchmail(Setup::plain(AuthMethod::Apop), "APOP", "APOP ");
    fetchmail_implicit_tls => fetchmail(Setup::implicit_tls(), "POP3", "PASS ");
}

// ---------------------------------------------------------------- mpop

async fn mpop(setup: Setup, auth: &str, auth_prefix: &str) {
    let Some(bin) = require("mpop") else { return };
    let fx = Fixture::start(&setup).await;
    // mpop creates the mbox file (mode 0600) itself.
    let mbox = fx.path("mbox");

    let mut cmd = command(&bin, fx.dir.path());
    // --host: command-line settings only, no configuration file is read.
    cmd.arg("--host=127.0.0.1")
        .arg(format!("--port={}", fx.port()))
        .arg(format!("--user={USER}"))
        .arg(format!("--passwordeval=echo {PASS}"))
        .arg(format!("--auth={auth}"))
        .arg(format!("--delivery=mbox,{}", mbox.display()))
        .arg(format!("--uidls-file={}", fx.path("uidls").display()))
        .arg("--keep=off")
        .arg("--timeout=30")
        // Status lines but no progress meters in the output kept for diagnostics.
        .arg("--half-quiet");
    match &fx.ca_file {
        Some(ca) if setup.tls => {
            cmd.arg("--tls=on")
                .arg("--tls-starttls=off")
                .arg(format!("--tls-trust-file={}", ca.display()));
        }
        _ => {
            cmd.arg("--tls=off");
        }
    }
    let outcome = run(cmd, fx.dir.path(), "mpop", String::new()).await;
    check(&fx, &outcome, &mbox, setup.tls, auth_prefix).await;
    fx.server.shutdown().await;
}

client_tests! {
    mpop_user_pass => mpop(Setup::plain(AuthMethod::User), "user", "PASS ");
    mpop_apop => mpop(Setup::plain(AuthMethod::Apop), "apop", "APOP ");
    mpop_implicit_tls => mpop(Setup::implicit_tls(), "user", "PASS ");
}
