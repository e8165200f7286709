//! Shared set-up: mocks on loopback (or in memory), a configuration pointing at them, a
//! pass runner, and the `popbridge` binary run to its end. It never asserts what a test
//! checks: only the plumbing every test needs lives here.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock_pop3::{Maildrop, Message, MockPop3Handle};
use mock_smtp::MockSmtpHandle;
use popbridge::config::Config;
use popbridge::events::{Event, EventSink};
use popbridge::ledger::Ledger;
use popbridge::net::{BoxIo, Dialer, MemoryDialer, TcpDialer};
use popbridge::pass::{self, Summary};
use tempfile::TempDir;
use tokio::net::TcpListener;

/// The `[timeouts]` body of most configurations the binary reads: 5 s to connect, 10 s a
/// command.
pub const FIVE_AND_TEN: &str = "connect = \"5s\"\ncommand = \"10s\"";

pub const PASSWORD: &str = "Sw0rdfish-s3cret!";

pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

pub async fn pop3(builder: mock_pop3::Builder) -> MockPop3Handle {
    builder.spawn(listener().await)
}

pub async fn smtp(builder: mock_smtp::Builder) -> MockSmtpHandle {
    builder.spawn(listener().await)
}

/// A message with the given sender header and a body of about `size` octets.
pub fn mail(i: usize, from: &str, size: usize) -> Message {
    let mut m = format!(
        "Return-Path: <{from}>\r\nFrom: Sender <{from}>\r\nTo: info@isp.example\r\nSubject: message {i}\r\nMessage-ID: <m{i}@isp.example>\r\n\r\n"
    )
    .into_bytes();
    while m.len() + 2 < size {
        let n = (size - 2 - m.len()).min(70);
        m.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, n));
        m.extend_from_slice(b"\r\n");
    }
    Message::new(m)
}

/// A raw message from its exact bytes.
pub fn raw(bytes: &[u8]) -> Message {
    Message::new(bytes.to_vec())
}

/// A state directory and a configuration for one account `info` on the POP3 mock
/// delivering to `info@contoso.local` through the SMTP mock; `extra` is appended to the
/// account, `limits` to the `[limits]` table.
pub struct Setup {
    pub dir: TempDir,
    pub config: Config,
}

pub fn setup(
    pop3: &MockPop3Handle,
    smtp: &MockSmtpHandle,
    account_extra: &str,
    limits: &str,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), pop3, smtp, account_extra, limits);
    let config = Config::from_str(&text, &dir.path().join("popbridge.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    Setup { dir, config }
}

/// The text of [`setup`]'s configuration, with its state under `dir`.
pub fn config_text(
    dir: &Path,
    pop3: &MockPop3Handle,
    smtp: &MockSmtpHandle,
    account_extra: &str,
    limits: &str,
) -> String {
    format!(
        r#"
state_dir = "{state}"
{transport}helo = "popbridge.test"
[limits]
{limits}
[timeouts]
connect = "10s"
command = "10s"
data = "60s"
{account}auth = "user"
username = "info"
password = "{PASSWORD}"
deliver_to = "info@contoso.local"
{account_extra}
"#,
        state = dir.join("state").display(),
        transport = transport("127.0.0.1", smtp.addr().unwrap().port()),
        account = plain_account("info", "127.0.0.1", pop3.addr().unwrap().port()),
    )
}

/// The opening of a plain-text `[[account]]` table (no TLS, plaintext allowed) named
/// `name` on the POP3 server `host:port`; the caller adds its credentials and the rest.
pub fn plain_account(name: &str, host: &str, port: u16) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nhost = \"{host}\"\nport = {port}\ntls = \"none\"\nallow_plaintext = true\n"
    )
}

/// The head of a configuration the binary reads from its folder: state in `state`, the
/// transport on 127.0.0.1:`smtp_port`, the `[timeouts]` body `timeouts`, then the opening
/// of account `name` on 127.0.0.1:`pop3_port` (see [`plain_account`]).
pub fn loopback_head(smtp_port: u16, timeouts: &str, name: &str, pop3_port: u16) -> String {
    format!(
        "state_dir = \"state\"\n{}[timeouts]\n{timeouts}\n{}",
        transport("127.0.0.1", smtp_port),
        plain_account(name, "127.0.0.1", pop3_port)
    )
}

/// Writes `dir/pass` (holding `password`, private) and `dir/popbridge.toml`: `head` (see
/// [`loopback_head`]), then `account` (the rest of the account, reading `password_file =
/// "pass"`). The configuration's path.
pub fn write_with_password_file(dir: &Path, password: &str, head: &str, account: &str) -> PathBuf {
    write_private(&dir.join("pass"), format!("{password}\n"));
    let path = dir.join("popbridge.toml");
    std::fs::write(&path, format!("{head}{account}")).unwrap();
    path
}

/// A `[transport]` table opening on the SMTP server `host:port`.
pub fn transport(host: &str, port: u16) -> String {
    format!("[transport]\nhost = \"{host}\"\nport = {port}\n")
}

/// A state directory (kept as long as the value lives) and a configuration for one
/// account `info` logging in with USER/PASS in plain text to `pop3.test:110` and
/// delivering through `smtp.test:25`: the routes of [`memory_dialer`].
pub fn in_memory_setup() -> (TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = \"{}\"\n{}[timeouts]\ncommand = \"10s\"\n{}auth = \"user\"\nusername = \"info\"\npassword = \"{PASSWORD}\"\ndeliver_to = \"info@contoso.local\"\n",
        dir.path().join("state").display(),
        transport("smtp.test", 25),
        plain_account("info", "pop3.test", 110),
    );
    let config = Config::from_str(&text, &dir.path().join("popbridge.toml")).unwrap();
    (dir, config)
}

/// A dialer that reaches the in-memory mocks as `pop3.test:110` and `smtp.test:25`.
pub fn memory_dialer(pop: &Arc<MockPop3Handle>, smtp: &Arc<MockSmtpHandle>) -> MemoryDialer {
    let dialer = MemoryDialer::new();
    let p = pop.clone();
    dialer.route(
        "pop3.test",
        110,
        Arc::new(move || Box::new(p.connect_duplex()) as BoxIo),
    );
    let s = smtp.clone();
    dialer.route(
        "smtp.test",
        25,
        Arc::new(move || Box::new(s.connect_duplex()) as BoxIo),
    );
    dialer
}

/// Runs `cmd` to its end (killed if the test gives up on it), bounded by `limit`.
pub async fn finish(mut cmd: tokio::process::Command, limit: Duration) -> Output {
    let run = cmd.kill_on_drop(true).output();
    tokio::time::timeout(limit, run)
        .await
        .expect("popbridge hung")
        .unwrap()
}

/// The `popbridge` binary with `args`, not started yet.
pub fn popbridge_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_popbridge"));
    cmd.args(args);
    cmd
}

/// Runs `popbridge ARGS...` to its end, bounded by two minutes.
pub async fn popbridge(args: &[&str]) -> Output {
    finish(popbridge_command(args), Duration::from_secs(120)).await
}

/// Runs `popbridge --config CFG --events EVENTS ARGS...`.
pub async fn run(cfg: &str, events: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["--config", cfg, "--events", events.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = popbridge(&all).await;
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A process's output as text (invalid UTF-8 replaced).
pub fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

impl Setup {
    pub fn state(&self) -> PathBuf {
        self.config.state_dir.clone()
    }

    /// One pass over every account; waits until both mocks saw the sessions end.
    pub async fn pass(
        &self,
        pop3: &MockPop3Handle,
        smtp: &MockSmtpHandle,
    ) -> (Summary, Vec<Event>) {
        let (mut s, events) = self.run_through(Arc::new(TcpDialer)).await;
        pop3.wait_idle().await;
        smtp.wait_idle().await;
        (s.remove(0), events)
    }

    /// `n` passes, each without an account failure: `pick` of each one's summary.
    pub async fn passes<T>(
        &self,
        pop3: &MockPop3Handle,
        smtp: &MockSmtpHandle,
        n: usize,
        pick: impl Fn(&Summary) -> T,
    ) -> Vec<T> {
        let mut per_pass = Vec::new();
        for _ in 0..n {
            let (sum, _) = self.pass(pop3, smtp).await;
            assert!(sum.failure.is_none(), "{sum:?}");
            per_pass.push(pick(&sum));
        }
        per_pass
    }

    /// One pass over every account through `dialer`: a summary per account, the events.
    pub async fn run_through(&self, dialer: Arc<dyn Dialer>) -> (Vec<Summary>, Vec<Event>) {
        let events = Arc::new(EventSink::memory());
        let ledger = Arc::new(Mutex::new(Ledger::open(&self.config.state_dir).unwrap()));
        let summaries = pass::Runner::new(
            Arc::new(self.config.clone()),
            dialer,
            events.clone(),
            ledger,
        )
        .run(self.config.accounts.clone())
        .await;
        (summaries, events.collected())
    }
}

/// Asserts that `text` contains each of `wanted`, showing `text` when one is missing.
pub fn assert_contains_all(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "{w:?} missing from:\n{text}");
    }
}

pub fn count(events: &[Event], kind: &str) -> usize {
    events
        .iter()
        .filter(|e| serde_json::to_value(e).unwrap()["kind"] == kind)
        .count()
}

/// Message-IDs delivered to the SMTP mock, in order.
pub fn delivered_ids(smtp: &MockSmtpHandle) -> Vec<String> {
    smtp.captured()
        .iter()
        .filter(|t| t.delivered())
        .filter_map(|t| {
            let text = String::from_utf8_lossy(&t.data).into_owned();
            text.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .map(|l| l["Message-ID:".len()..].trim().to_string())
        })
        .collect()
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The `Message-ID` header's value of a captured SMTP transaction, if it has one.
pub fn message_id_of(t: &mock_smtp::Received) -> Option<String> {
    let text = String::from_utf8_lossy(&t.data);
    let header = text.split("\r\n\r\n").next().unwrap_or_default();
    header
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID:"))
        .map(|v| v.trim().to_string())
}

/// The events a `popbridge --events FILE` run wrote, one JSON object a line; a last line
/// left unfinished by a killed process is skipped (any other bad line panics).
pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(v) => out.push(v),
            Err(e) if i + 1 == lines.len() && !text.ends_with('\n') => {
                eprintln!("{}: unfinished last line skipped: {e}", path.display());
            }
            Err(e) => panic!("{}: line {}: {e}: {l}", path.display(), i + 1),
        }
    }
    out
}

/// The events file as JSON values, every line whole (a bad line panics).
pub fn event_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Maildrop `info` (password [`PASSWORD`]) holding `messages`.
pub fn mailbox_with(messages: impl IntoIterator<Item = mock_pop3::Message>) -> Maildrop {
    let mut mb = Maildrop::new("info", PASSWORD);
    mb.messages.extend(messages);
    mb
}

/// Maildrop `info` holding a message from `a@example.net` of about `size` octets for each
/// number in `ids` (see [`mail`]).
pub fn mails(ids: impl IntoIterator<Item = usize>, size: usize) -> Maildrop {
    mailbox_with(ids.into_iter().map(|i| mail(i, "a@example.net", size)))
}

/// A POP3 mock on loopback serving `mailbox` and a default SMTP mock.
pub async fn mocks(mailbox: Maildrop) -> (MockPop3Handle, MockSmtpHandle) {
    let pop = pop3(mock_pop3::MockPop3::builder().maildrop(mailbox)).await;
    (pop, smtp(mock_smtp::MockSmtp::builder()).await)
}

/// [`mocks`] serving `mailbox`, and a [`setup`] for them.
pub async fn served(
    mailbox: Maildrop,
    account_extra: &str,
    limits: &str,
) -> (MockPop3Handle, MockSmtpHandle, Setup) {
    served_from(
        mock_pop3::MockPop3::builder().maildrop(mailbox),
        account_extra,
        limits,
    )
    .await
}

/// A POP3 mock on loopback from `builder`, a default SMTP mock, and a [`setup`] for them.
pub async fn served_from(
    builder: mock_pop3::Builder,
    account_extra: &str,
    limits: &str,
) -> (MockPop3Handle, MockSmtpHandle, Setup) {
    let pop = pop3(builder).await;
    let smtp = smtp(mock_smtp::MockSmtp::builder()).await;
    let s = setup(&pop, &smtp, account_extra, limits);
    (pop, smtp, s)
}

/// A POP3 fault: the connection closes instead of answering QUIT, so nothing is deleted.
pub fn quit_lost() -> mock_pop3::FaultRule {
    mock_pop3::FaultRule::new(
        mock_pop3::Hook::command("QUIT"),
        mock_pop3::FaultAction::CloseBeforeReply,
    )
}

/// A POP3 mock on loopback serving `mailbox` without UIDL (see [`no_uidl`]).
pub async fn without_uidl(mailbox: Maildrop) -> MockPop3Handle {
    pop3(
        mock_pop3::MockPop3::builder()
            .capabilities_after_login(no_uidl())
            .maildrop(mailbox),
    )
    .await
}

/// A POP3 server's capabilities after login: everything but UIDL.
pub fn no_uidl() -> mock_pop3::Capabilities {
    mock_pop3::Capabilities {
        uidl: false,
        ..mock_pop3::Capabilities::full_after_login()
    }
}

/// Every Message-ID in `ids` delivered exactly once, and `expected` of them.
pub fn exactly_once(ids: &[String], expected: usize) {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for id in ids {
        *seen.entry(id).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    assert_eq!(seen.len(), expected, "distinct messages delivered");
}

/// Writes a configuration or password file as an administrator must: readable by its
/// owner only (popbridge refuses a password others can read).
/// `popbridge --config CONFIG --events EVENTS fetch` as a child the caller gives its
/// output files to: no input, killed when dropped.
pub fn fetch_command(config: &Path, events: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_popbridge"));
    command
        .arg("--config")
        .arg(config)
        .arg("--events")
        .arg(events)
        .arg("fetch")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

pub fn write_private(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}
