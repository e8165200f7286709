//! popbridge against real peers: Dovecot as the POP3 source, Postfix smtp-sink as the sink.
//!
//! The acceptance run: the `popbridge` binary fetches 200 messages of 10 kB from a private
//! Dovecot instance and submits them to `smtp-sink`; afterwards the mailbox is empty and
//! the sink holds exactly the 200 messages, byte for byte. A second run finds nothing to
//! do and delivers nothing twice.
//!
//! Both peers are children of the test, bound on free loopback ports, configured and
//! logging inside one temporary directory, and killed when the test ends (also when it
//! panics). A missing peer, a missing system user, or not running as root skips the
//! test, unless `POPBRIDGE_REQUIRE_PEERS=1`, in which case the test fails.
//!
//! Peer quirks these tests rely on (Dovecot 2.3.19, Postfix 3.7 smtp-sink):
//! - Dovecot refuses to run mail processes as root and, on Debian, for users below
//!   `first_valid_uid` (500 by default): the store belongs to `mail` (uid 8), so the
//!   configuration lowers `first_valid_uid` to that uid. Its unprivileged processes
//!   (`dovecot`, `dovenull`, `mail`) must traverse the directories, so everything lives
//!   under `/tmp` in a 0755 directory rather than under `$TMPDIR`, which may be private.
//! - Dovecot has no readiness signal: the test polls its port (bounded) and reads the
//!   greeting. After SIGTERM it takes about a second to stop; the next instance on the
//!   same `base_dir` would refuse to start meanwhile.
//! - Maildir file names carry `,S=<file size>,W=<size with CRLF>`, so Dovecot trusts the
//!   sizes instead of reading every file; the files use LF line ends, as in a real store.
//! - smtp-sink needs `-u postfix` when started as root; `-c` writes cumulative counters
//!   (`sess=N quit=N mesg=N`, separated by CR) to stdout; `-d DIR/` writes one file per
//!   message with its own trace lines (`X-Mail-Args:`, `X-Rcpt-Args:`, a 3-line
//!   `Received:`), then the DATA lines with every CR and the first dot of each line
//!   removed (so a line whose dot the client did not double loses it), then an empty
//!   line. It counts a message and closes its file before answering the final dot, so
//!   both are exact as soon as popbridge has its reply.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) use mock_core::test_support::unavailable;
use mock_core::test_support::{self, is_executable};
use serde_json::Value;

/// Messages in the mailbox.
const MESSAGES: usize = 200;
/// Size of each message on the wire (CRLF line ends), in octets.
const MESSAGE_SIZE: usize = 10 * 1024;
/// The message with lines starting with a dot (dot-stuffing both ways).
const DOT_MESSAGE: usize = 17;
/// The message with 8-bit (and not UTF-8) bytes in its body.
const EIGHT_BIT_MESSAGE: usize = 42;
pub(super) const USER: &str = "info";
/// No `:` (the passwd-file separator).
pub(super) const PASSWORD: &str = "Sw0rdfish-s3cret!";
pub(super) const DELIVER_TO: &str = "info@contoso.local";
/// A popbridge run that has not finished by then is killed and the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Polls for a peer's port: at most `READY_POLLS` × `READY_POLL` (10 s).
const READY_POLLS: u32 = 400;
const READY_POLL: Duration = Duration::from_millis(25);
/// How long a peer's log may lag behind popbridge's exit.
const LOG_SETTLE: Duration = Duration::from_secs(5);
/// How long a peer may take to stop after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `PATH` for the children, and for finding the peers when unset.
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where Debian keeps Postfix's test programs besides `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/lib/postfix/sbin"];
/// Where Dovecot's `pop3` and `pop3-login` programs live (dovecot-pop3d).
const DOVECOT_LIBEXEC: &[&str] = &["/usr/lib/dovecot", "/usr/libexec/dovecot"];

// ---------------------------------------------------------------- environment

/// Finds an executable on `PATH` or in [`EXTRA_DIRS`].
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    test_support::tool(name, EXTRA_DIRS)
}

pub(super) fn require_tool(name: &str, package: &str) -> Option<PathBuf> {
    match tool(name) {
        Some(p) => Some(p),
        None => unavailable(
            format!("{name} is required (POPBRIDGE_REQUIRE_PEERS=1) but not installed"),
            format!("{name} not installed (package {package})"),
        ),
    }
}

/// A system account's uid and gid, through NSS as the peers see it.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let out = Command::new("getent")
        .arg("passwd")
        .arg(name)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let mut fields = line.trim_end().split(':').skip(2);
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    out.status.success().then_some((uid, gid))
}

fn require_user(name: &str, why: &str) -> Option<(u32, u32)> {
    match lookup_user(name) {
        Some(ids) => Some(ids),
        None => unavailable(
            format!("system user {name:?} ({why}) is required (POPBRIDGE_REQUIRE_PEERS=1) but `getent passwd {name}` finds none"),
            format!("no system user {name:?} ({why})"),
        ),
    }
}

/// Everything the test needs from the machine.
pub(super) struct Peers {
    dovecot: PathBuf,
    smtp_sink: PathBuf,
    /// Owner of the mail store.
    pub(super) mail: (u32, u32),
    /// smtp-sink runs as this user; it writes the dump files.
    postfix: (u32, u32),
}

/// The peers, or `None` when the test is skipped. `dir` is the test's fresh directory:
/// its owner tells whether the test runs as root.
pub(super) fn peers(dir: &Path) -> Option<Peers> {
    let dovecot = require_tool("dovecot", "dovecot-pop3d")?;
    let pop3 = DOVECOT_LIBEXEC
        .iter()
        .any(|d| is_executable(&Path::new(d).join("pop3")));
    if !pop3 {
        return unavailable(
            "dovecot-pop3d is required (POPBRIDGE_REQUIRE_PEERS=1) but not installed (no pop3 program in /usr/lib/dovecot)".into(),
            "dovecot-pop3d not installed (no pop3 program in /usr/lib/dovecot)".into(),
        );
    }
    let smtp_sink = require_tool("smtp-sink", "postfix")?;
    // A new directory belongs to the effective uid.
    let uid = fs::metadata(dir).unwrap().uid();
    if uid != 0 {
        return unavailable(
            format!("running as root is required (POPBRIDGE_REQUIRE_PEERS=1) to give the mail store to `mail` and run smtp-sink -u postfix, but the test runs as uid {uid}"),
            format!("not running as root (uid {uid}): the test gives the mail store to `mail` (chown) and runs smtp-sink -u postfix"),
        );
    }
    let mail = require_user("mail", "owner of the Dovecot mail store")?;
    require_user("dovecot", "Dovecot's default_internal_user")?;
    require_user("dovenull", "Dovecot's default_login_user")?;
    let postfix = require_user("postfix", "smtp-sink -u postfix")?;
    Some(Peers {
        dovecot,
        smtp_sink,
        mail,
        postfix,
    })
}

/// A fresh directory under `/tmp`, traversable by the peers' unprivileged users.
pub(super) fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("popbridge-interop-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub(super) fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub(super) fn chown_tree(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), (uid, gid));
        }
    }
}

/// A loopback port nobody listened on a moment ago (a peer that loses the race fails
/// to bind and is started again on another port).
pub(super) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TOML basic string.
pub(super) fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub(super) fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The last `limit` octets of `text`, marked when cut.
pub(super) fn tail(text: &str, limit: usize) -> String {
    let text = text.trim_end();
    if text.len() <= limit {
        return text.to_string();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} octets cut ...]\n{}", &text[start..])
}

// ---------------------------------------------------------------- the mailbox

/// One message of the mailbox, as stored (LF line ends).
pub(super) struct Mail {
    pub(super) message_id: String,
    sender: String,
    /// The file's content: LF line ends.
    stored: Vec<u8>,
}

impl Mail {
    /// A message of the store: `stored` with LF line ends.
    pub(super) fn new(message_id: String, sender: String, stored: Vec<u8>) -> Mail {
        Mail {
            message_id,
            sender,
            stored,
        }
    }

    /// Octets on the wire: every LF becomes CRLF.
    pub(super) fn wire_size(&self) -> usize {
        self.stored.len() + self.stored.iter().filter(|&&b| b == b'\n').count()
    }

    /// What smtp-sink's dump file must end with: the message with LF line ends (as
    /// stored), then the empty line smtp-sink appends.
    fn dumped(&self) -> Vec<u8> {
        let mut out = self.stored.clone();
        out.push(b'\n');
        out
    }
}

/// Message `i` of [`MESSAGES`]: exactly [`MESSAGE_SIZE`] octets on the wire, a unique
/// Message-ID and sender, body lines naming the message so mix-ups show.
pub(super) fn mail(i: usize, nonce: &str) -> Mail {
    let message_id = format!("<interop-{i:03}.{nonce}@isp.example>");
    let sender = format!("sender-{i:03}@example.net");
    let mut lines: Vec<Vec<u8>> = vec![
        format!("Return-Path: <{sender}>").into_bytes(),
        b"Delivered-To: info@isp.example".to_vec(),
        format!("From: Sender {i} <{sender}>").into_bytes(),
        b"To: info@isp.example".to_vec(),
        format!("Subject: interop message {i} of {MESSAGES}").into_bytes(),
        format!("Message-ID: {message_id}").into_bytes(),
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000".to_vec(),
        b"MIME-Version: 1.0".to_vec(),
    ];
    if i == EIGHT_BIT_MESSAGE {
        lines.push(b"Content-Type: text/plain; charset=iso-8859-1".to_vec());
        lines.push(b"Content-Transfer-Encoding: 8bit".to_vec());
    } else {
        lines.push(b"Content-Type: text/plain; charset=us-ascii".to_vec());
    }
    lines.push(Vec::new());
    match i {
        DOT_MESSAGE => {
            lines.push(b".a line that starts with a dot".to_vec());
            lines.push(b".".to_vec());
            lines.push(b"..two dots".to_vec());
            lines.push(b"after the lone dot".to_vec());
        }
        EIGHT_BIT_MESSAGE => {
            lines.push(b"Caf\xe9 na\xefve \xa4uro, not UTF-8: \xff\xfe\x80\x81".to_vec());
            lines.push("Déjà vu in UTF-8, ☃".as_bytes().to_vec());
        }
        _ => {}
    }
    let wire = |lines: &[Vec<u8>]| lines.iter().map(|l| l.len() + 2).sum::<usize>();
    let filler = b'a' + (i % 26) as u8;
    let mut j = 0;
    loop {
        let left = MESSAGE_SIZE - wire(&lines);
        if left == 0 {
            break;
        }
        let mut line = format!("{i:03}-{j:03} ").into_bytes();
        // Full lines while a last line of at least 10 octets still fits after them.
        let len = if left >= 72 + 2 + 12 { 72 } else { left - 2 };
        line.truncate(len);
        line.resize(len, filler);
        lines.push(line);
        j += 1;
    }
    let mut stored = Vec::with_capacity(MESSAGE_SIZE);
    for l in &lines {
        stored.extend_from_slice(l);
        stored.push(b'\n');
    }
    let m = Mail {
        message_id,
        sender,
        stored,
    };
    assert_eq!(m.wire_size(), MESSAGE_SIZE);
    m
}

/// Writes the mailbox into `maildir/new` as a delivery agent would.
pub(super) fn write_maildir(maildir: &Path, mails: &[Mail]) {
    for sub in ["new", "cur", "tmp"] {
        mkdir(&maildir.join(sub), 0o700);
    }
    let pid = std::process::id();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    for (i, m) in mails.iter().enumerate() {
        let name = format!(
            "{}.M{}P{pid}Q{i}.popbridge-interop,S={},W={}",
            now.as_secs(),
            now.subsec_micros(),
            m.stored.len(),
            m.wire_size()
        );
        fs::write(maildir.join("new").join(name), &m.stored).unwrap();
    }
}

/// Files in `maildir/{new,cur,tmp}`: messages still in the store.
pub(super) fn maildir_files(maildir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur", "tmp"] {
        if let Ok(rd) = fs::read_dir(maildir.join(sub)) {
            for e in rd.flatten() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------- the peers

/// A peer process, stopped when dropped (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]).
pub(super) struct Peer {
    name: &'static str,
    child: Child,
    pub(super) addr: SocketAddr,
    /// The peer's log files, shown on failure.
    pub(super) logs: Vec<PathBuf>,
}

impl Peer {
    pub(super) fn logs(&self) -> String {
        let mut s = String::new();
        for log in &self.logs {
            let text = read_lossy(log);
            // smtp-sink's `-c` records end with CR: only the last one matters.
            let text = match text.trim_end_matches('\r').rsplit_once('\r') {
                Some((_, last)) if !text.contains('\n') => format!("(last counters) {last}"),
                _ => text,
            };
            let _ = writeln!(
                s,
                "---- {} {} ----\n{}",
                self.name,
                log.display(),
                tail(&text, 12 * 1024)
            );
        }
        s
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            sleep(READY_POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Readiness {
    Ready,
    /// The process ended (on a lost race for the port, among other reasons).
    Exited(ExitStatus),
    TimedOut,
    /// Something else answered on the port (this greeting) while the child runs.
    Stranger(String),
}

/// Polls `addr` until it accepts and greets with `greeting`, the child exits, or
/// [`READY_POLLS`] × [`READY_POLL`] pass.
fn wait_ready(child: &mut Child, addr: SocketAddr, greeting: &str, quit: &str) -> Readiness {
    for _ in 0..READY_POLLS {
        if let Some(status) = child.try_wait().unwrap() {
            return Readiness::Exited(status);
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, READY_POLL) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\n") && line.len() < 512 {
                match s.read(&mut b) {
                    Ok(1) => line.push(b[0]),
                    _ => break,
                }
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if !line.starts_with(greeting) {
                // Most likely the port was taken between `free_port` and the bind: the
                // child fails to listen and exits.
                for _ in 0..READY_POLLS / 4 {
                    if let Some(status) = child.try_wait().unwrap() {
                        return Readiness::Exited(status);
                    }
                    sleep(READY_POLL);
                }
                return Readiness::Stranger(line);
            }
            let _ = s.write_all(quit.as_bytes());
            let _ = s.read(&mut [0u8; 512]);
            return Readiness::Ready;
        }
        sleep(READY_POLL);
    }
    Readiness::TimedOut
}

/// Starts `cmd` (made by `make` for a port) and waits until it greets; on a lost race
/// for the port, tries again on another one.
fn start_peer(
    name: &'static str,
    greeting: &str,
    quit: &str,
    logs: Vec<PathBuf>,
    mut make: impl FnMut(u16) -> Command,
) -> Peer {
    for attempt in 1..=3 {
        let port = free_port();
        let mut cmd = make(port);
        cmd.stdin(Stdio::null());
        let cmdline = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
        let mut peer = Peer {
            name,
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            logs: logs.clone(),
        };
        match wait_ready(&mut peer.child, peer.addr, greeting, quit) {
            Readiness::Ready => return peer,
            Readiness::Exited(status) => {
                let logs = peer.logs();
                if attempt < 3 && logs.contains("in use") {
                    eprintln!("{name}: port {port} taken, trying another");
                    continue;
                }
                panic!("{name} exited with {status} before accepting on {}\ncommand: {cmdline}\n{logs}", peer.addr);
            }
            Readiness::Stranger(line) => {
                peer.stop();
                panic!(
                    "{name}: {} answered {line:?}, not {greeting:?}: another server on the port?\ncommand: {cmdline}\n{}",
                    peer.addr,
                    peer.logs()
                );
            }
            Readiness::TimedOut => {
                peer.stop();
                panic!(
                    "{name} did not greet on {} within {:?}\ncommand: {cmdline}\n{}",
                    peer.addr,
                    READY_POLL * READY_POLLS,
                    peer.logs()
                );
            }
        }
    }
    unreachable!()
}

/// Dovecot's TLS set-up: its certificate and key, and the implicit-TLS (pop3s) port.
pub(super) struct DovecotTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) pop3s_port: std::cell::Cell<u16>,
}

/// The private Dovecot's configuration: POP3 only, on `port`, plain text allowed, the
/// passwd-file users, each with the Maildir is `dir/home/<user>/Maildir`, owned by `mail`; with
/// `tls`, STLS on `port` and implicit TLS on a second port.
fn dovecot_conf(dir: &Path, port: u16, mail: (u32, u32), tls: Option<&DovecotTls>) -> String {
    let d = dir.display();
    let (ssl, pop3s) = match tls {
        None => ("ssl = no".to_string(), String::new()),
        Some(t) => (
            format!(
                "ssl = yes\nssl_cert = <{}\nssl_key = <{}\nssl_min_protocol = TLSv1.2",
                t.cert.display(),
                t.key.display()
            ),
            format!(
                "  inet_listener pop3s {{\n    address = 127.0.0.1\n    port = {}\n    ssl = yes\n  }}\n",
                t.pop3s_port.get()
            ),
        ),
    };
    format!(
        r#"# popbridge interop test: a private Dovecot instance.
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
debug_log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = pop3
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {uid}
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%u
}}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
{pop3s}}}
"#,
        uid = mail.0,
        gid = mail.1,
    )
}

pub(super) fn start_dovecot(peers: &Peers, dir: &Path, tls: Option<&DovecotTls>) -> Peer {
    start_dovecot_for(peers, dir, tls, &[(USER, PASSWORD)])
}

/// A private Dovecot whose passwd-file holds `users` (name, password; neither with a
/// `:`), each with the Maildir `dir/home/<user>/Maildir`.
pub(super) fn start_dovecot_for(
    peers: &Peers,
    dir: &Path,
    tls: Option<&DovecotTls>,
    users: &[(&str, &str)],
) -> Peer {
    mkdir(&dir.join("run"), 0o755);
    mkdir(&dir.join("state"), 0o750);
    let passwd = dir.join("passwd");
    let lines: String = (users.iter())
        .map(|(user, password)| format!("{user}:{{PLAIN}}{password}::::::\n"))
        .collect();
    fs::write(&passwd, lines).unwrap();
    fs::set_permissions(&passwd, fs::Permissions::from_mode(0o644)).unwrap();
    let conf = dir.join("dovecot.conf");
    let (out, err) = (dir.join("dovecot.stdout"), dir.join("dovecot.stderr"));
    let logs = vec![dir.join("dovecot.log"), out.clone(), err.clone()];
    start_peer("dovecot", "+OK", "QUIT\r\n", logs, |port| {
        if let Some(t) = tls {
            t.pop3s_port.set(free_port());
        }
        fs::write(&conf, dovecot_conf(dir, port, peers.mail, tls)).unwrap();
        let mut cmd = Command::new(&peers.dovecot);
        cmd.arg("-F").arg("-c").arg(&conf);
        run_logged(&mut cmd, dir, &out, &err);
        cmd
    })
}

/// Sets `cmd` to run in `dir` with nothing of the environment but a default PATH, its
/// standard output and error written to the files `out` and `err`.
fn run_logged(cmd: &mut Command, dir: &Path, out: &Path, err: &Path) {
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .stdout(fs::File::create(out).unwrap())
        .stderr(fs::File::create(err).unwrap())
        .current_dir(dir);
}

pub(super) fn start_smtp_sink(peers: &Peers, dir: &Path, dump: &Path) -> Peer {
    mkdir(dump, 0o755);
    chown_tree(dump, peers.postfix);
    let (out, err) = (dir.join("smtp-sink.stdout"), dir.join("smtp-sink.stderr"));
    let logs = vec![out.clone(), err.clone()];
    start_peer("smtp-sink", "220 ", "QUIT\r\n", logs, |port| {
        let mut cmd = Command::new(&peers.smtp_sink);
        cmd.arg("-u")
            .arg("postfix")
            .arg("-c")
            .arg("-d")
            .arg(format!("{}/", dump.display()))
            .arg("-h")
            .arg("sink.test")
            .arg(format!("127.0.0.1:{port}"))
            .arg("256");
        run_logged(&mut cmd, dir, &out, &err);
        cmd
    })
}

/// smtp-sink's message counter: the last `mesg=N` of its `-c` output.
pub(super) fn sink_count(sink: &Peer) -> Option<u64> {
    let out = read_lossy(&sink.logs[0]);
    out.rsplit(['\r', '\n'])
        .find_map(|rec| rec.split(' ').find_map(|f| f.strip_prefix("mesg=")))
        .and_then(|n| n.trim().parse().ok())
}

/// The content of `log` once `done` holds for it, or after [`LOG_SETTLE`] anyway.
pub(super) fn wait_for_log(log: &Path, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + LOG_SETTLE;
    loop {
        let text = read_lossy(log);
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        sleep(READY_POLL);
    }
}

fn dump_files(dump: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dump)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------- popbridge

/// How a popbridge run ended.
pub(super) struct Run {
    pub(super) cmdline: String,
    /// `None` when killed after [`RUN_TIMEOUT`].
    pub(super) status: Option<ExitStatus>,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) events_path: PathBuf,
    pub(super) events: Vec<Value>,
    elapsed: Duration,
}

impl Run {
    pub(super) fn count(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e["kind"] == kind).count()
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == kind).collect()
    }
}

/// The configuration file for one account on Dovecot delivering through smtp-sink.
/// What precedes the account in the configurations written for the peers: state under
/// `dir`, the transport to smtp-sink on `smtp_port`, the timeouts.
pub(super) fn head_of_config(dir: &Path, smtp_port: u16) -> String {
    let state = toml_str(&dir.join("popbridge-state").display().to_string());
    format!(
        "state_dir = {state}\n\n[transport]\nhost = \"127.0.0.1\"\nport = {smtp_port}\n\
         helo = \"popbridge.test\"\n\n[timeouts]\nconnect = \"10s\"\ncommand = \"30s\"\n\
         data = \"60s\"\n\n"
    )
}

fn write_config(dir: &Path, pop3: SocketAddr, smtp: SocketAddr) -> PathBuf {
    let secret = dir.join("dovecot.pass");
    fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"# popbridge interop test
{head}[[account]]
name = "dovecot"
host = "127.0.0.1"
port = {pop3_port}
tls = "none"
allow_plaintext = true
auth = "user"
username = "{USER}"
password_file = {secret}
deliver_to = "{DELIVER_TO}"
"#,
        head = head_of_config(dir, smtp.port()),
        pop3_port = pop3.port(),
        secret = toml_str(&secret.display().to_string()),
    );
    let path = dir.join("popbridge.toml");
    fs::write(&path, text).unwrap();
    path
}

/// Runs `popbridge --config CONFIG --events EVENTS -v fetch`, killed after [`RUN_TIMEOUT`].
pub(super) fn popbridge(dir: &Path, config: &Path, label: &str) -> Run {
    popbridge_command(dir, config, label, "fetch")
}

/// Runs `popbridge --config CONFIG --events EVENTS -v COMMAND`, killed after
/// [`RUN_TIMEOUT`].
pub(super) fn popbridge_command(dir: &Path, config: &Path, label: &str, command: &str) -> Run {
    let events_path = dir.join(format!("{label}.events.jsonl"));
    let out_path = dir.join(format!("{label}.stdout"));
    let err_path = dir.join(format!("{label}.stderr"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_popbridge"));
    cmd.arg("--config")
        .arg(config)
        .arg("--events")
        .arg(&events_path)
        .arg("-v")
        .arg(command)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", dir)
        .env("LC_ALL", "C")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .current_dir(dir);
    let cmdline = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    let events = read_lossy(&events_path)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| Value::String(format!("{e}: {l}"))))
        .collect();
    Run {
        cmdline,
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
        events_path,
        events,
        elapsed,
    }
}

/// Everything needed to debug a failure in CI.
fn diagnostics(run: &Run, dovecot: &Peer, sink: &Peer, maildir: &Path, dump: &Path) -> String {
    let mut s = String::new();
    let status = match run.status {
        Some(st) => st.to_string(),
        None => format!("killed after {RUN_TIMEOUT:?} (timeout)"),
    };
    let _ = writeln!(s, "command: {}", run.cmdline);
    let _ = writeln!(s, "status: {status} after {:?}", run.elapsed);
    let _ = writeln!(
        s,
        "---- popbridge stdout ----\n{}",
        tail(&run.stdout, 8 * 1024)
    );
    let _ = writeln!(
        s,
        "---- popbridge stderr ----\n{}",
        tail(&run.stderr, 16 * 1024)
    );
    let _ = writeln!(
        s,
        "---- events {} ----\n{}",
        run.events_path.display(),
        tail(&read_lossy(&run.events_path), 16 * 1024)
    );
    s.push_str(&dovecot.logs());
    s.push_str(&sink.logs());
    let left = maildir_files(maildir);
    let _ = writeln!(
        s,
        "---- mailbox: {} files left ----\n{}",
        left.len(),
        left.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let _ = writeln!(
        s,
        "---- smtp-sink: counter {:?}, {} dump files ----",
        sink_count(sink),
        dump_files(dump).len()
    );
    s
}

/// The value of the first `name: value` line of a dump file (smtp-sink's or the message's).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The run's one `pass.finished` event counts `(delivered, deleted, remaining)`.
fn assert_finished(run: &Run, expected: (usize, usize, usize), why: &dyn Fn() -> String) {
    let finished = run.of_kind("pass.finished");
    assert_eq!(finished.len(), 1, "pass.finished events\n{}", why());
    let (delivered, deleted, remaining) = expected;
    assert_eq!(
        (
            &finished[0]["delivered"],
            &finished[0]["deleted"],
            &finished[0]["remaining"]
        ),
        (
            &Value::from(delivered),
            &Value::from(deleted),
            &Value::from(remaining)
        ),
        "pass.finished\n{}",
        why()
    );
}

/// smtp-sink counted [`MESSAGES`] messages and wrote as many dump files.
fn assert_sink_took_all(sink: &Peer, dump: &Path, why: &dyn Fn() -> String) {
    assert_eq!(
        sink_count(sink),
        Some(MESSAGES as u64),
        "smtp-sink's message counter\n{}",
        why()
    );
    assert_eq!(
        dump_files(dump).len(),
        MESSAGES,
        "smtp-sink dump files\n{}",
        why()
    );
}

/// Checks smtp-sink's dump files: one per message, each message once, intact, with the
/// right envelope.
fn check_dumps(dump: &Path, mails: &[Mail], why: &dyn Fn() -> String) {
    let by_id: BTreeMap<&str, &Mail> = mails.iter().map(|m| (m.message_id.as_str(), m)).collect();
    let mut seen = BTreeSet::new();
    for file in dump_files(dump) {
        let bytes = fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let name = file.display();
        let id = field(&text, "Message-ID")
            .unwrap_or_else(|| panic!("{name}: no Message-ID\n{text}\n{}", why()));
        let m = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{name}: unknown Message-ID {id}\n{}", why()));
        assert!(
            seen.insert(id.to_string()),
            "{id} delivered twice\n{}",
            why()
        );
        let rcpts: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("X-Rcpt-Args: "))
            .collect();
        assert_eq!(
            rcpts,
            [format!("<{DELIVER_TO}>")],
            "{name}: recipients of {id}\n{}",
            why()
        );
        let mail_from = field(&text, "X-Mail-Args").unwrap_or_default();
        assert!(
            mail_from.starts_with(&format!("<{}>", m.sender)),
            "{name}: MAIL FROM of {id} is {mail_from:?}, expected <{}>\n{}",
            m.sender,
            why()
        );
        let expected = m.dumped();
        assert!(
            bytes.ends_with(&expected),
            "{name}: {id} altered in transit\n---- expected tail ----\n{}\n---- dumped ----\n{}\n{}",
            tail(&String::from_utf8_lossy(&expected), 2048),
            tail(&text, 2048),
            why()
        );
    }
    assert_eq!(
        seen.len(),
        mails.len(),
        "distinct messages dumped\n{}",
        why()
    );
}

// ---------------------------------------------------------------- the test

#[test]
fn popbridge_moves_200_messages_from_dovecot_to_smtp_sink() {
    let dir = workdir();
    let Some(peers) = peers(dir.path()) else {
        return;
    };
    let nonce = format!(
        "{}.{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mails: Vec<Mail> = (0..MESSAGES).map(|i| mail(i, &nonce)).collect();
    let home = dir.path().join("home");
    mkdir(&home, 0o755);
    let maildir = home.join(USER).join("Maildir");
    write_maildir(&maildir, &mails);
    chown_tree(&home.join(USER), peers.mail);
    let dump = dir.path().join("sink");

    // Declared after `dir`: stopped before the directory goes.
    let dovecot = start_dovecot(&peers, dir.path(), None);
    let sink = start_smtp_sink(&peers, dir.path(), &dump);
    let config = write_config(dir.path(), dovecot.addr, sink.addr);

    // ---- first run: everything moves.
    let run = popbridge(dir.path(), &config, "run1");
    let why = || diagnostics(&run, &dovecot, &sink, &maildir, &dump);
    let secs = run.elapsed.as_secs_f64();
    eprintln!(
        "popbridge: {MESSAGES} messages of {MESSAGE_SIZE} octets from Dovecot to smtp-sink in {:.3} s ({:.0} messages/s; process start to exit)",
        secs,
        MESSAGES as f64 / secs
    );
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(0),
        "popbridge did not exit 0\n{}",
        why()
    );
    for kind in [
        "message.rejected",
        "message.deferred",
        "message.quarantined",
        "message.skipped_oversize",
        "message.already_delivered",
        "session.reconnected",
        "auth.failed",
        "account.failed",
    ] {
        assert_eq!(run.count(kind), 0, "{kind} events\n{}", why());
    }
    let delivered = run.of_kind("message.delivered");
    assert_eq!(
        delivered.len(),
        MESSAGES,
        "message.delivered events\n{}",
        why()
    );
    let uids: BTreeSet<&str> = delivered.iter().filter_map(|e| e["uid"].as_str()).collect();
    assert_eq!(uids.len(), MESSAGES, "distinct UIDs delivered\n{}", why());
    assert!(
        uids.iter()
            .all(|u| u.len() == 16 && u.bytes().all(|b| b.is_ascii_hexdigit())),
        "UIDs are not Dovecot's %08Xu%08Xv\n{}",
        why()
    );
    assert_finished(&run, (MESSAGES, MESSAGES, 0), &why);
    let left = maildir_files(&maildir);
    assert!(
        left.is_empty(),
        "{} messages left in the mailbox\n{}",
        left.len(),
        why()
    );
    assert_sink_took_all(&sink, &dump, &why);
    check_dumps(&dump, &mails, &why);
    // Dovecot's own account of the session (logged asynchronously, after its reply to
    // QUIT): every message retrieved and deleted, and nothing went wrong on its side.
    let session_end = format!("retr={MESSAGES}/");
    let deleted = format!("del={MESSAGES}/{MESSAGES}");
    let log = wait_for_log(&dovecot.logs[0], |log| log.contains(&deleted));
    // Only this instance's lines: a start that lost its port logged a Fatal before.
    let log = log
        .rsplit_once(" starting up ")
        .map_or(&log[..], |(_, l)| l);
    assert!(
        log.lines()
            .any(|l| l.contains(&session_end) && l.contains(&deleted)),
        "Dovecot did not log {session_end}... {deleted}\n{}",
        why()
    );
    assert!(
        !log.lines()
            .any(|l| ["Error:", "Fatal:", "Panic:"].iter().any(|e| l.contains(e))),
        "errors in Dovecot's log\n{}",
        why()
    );

    // ---- second run: nothing left, nothing delivered twice.
    let run = popbridge(dir.path(), &config, "run2");
    let why = || diagnostics(&run, &dovecot, &sink, &maildir, &dump);
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(0),
        "second popbridge run did not exit 0\n{}",
        why()
    );
    assert_eq!(
        run.count("message.delivered"),
        0,
        "delivered again\n{}",
        why()
    );
    assert_eq!(run.count("account.failed"), 0, "account.failed\n{}", why());
    assert_finished(&run, (0, 0, 0), &why);
    assert_sink_took_all(&sink, &dump, &why);
    assert!(maildir_files(&maildir).is_empty(), "mailbox\n{}", why());
    eprintln!(
        "popbridge: second run in {:.3} s, nothing to do",
        run.elapsed.as_secs_f64()
    );
}
