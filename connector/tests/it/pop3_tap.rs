//! A recording proxy in front of a real POP3 server: it forwards every byte unchanged and
//! keeps, per session, when each command was sent, which user logged in, the UIDL
//! listing, and each DELE with the UIDL it names. It is the server's session record for
//! servers that keep none a test can read (Dovecot logs logins, not commands).
//!
//! Commands are recorded before they are forwarded, so the server's reply to a command
//! always finds it queued; replies are paired with commands in order (POP3 answers
//! pipelined commands in order), multi-line replies read to their final dot.
//!
//! Must never: change, drop or reorder a byte, record a password (PASS and AUTH
//! arguments are kept as `***`), listen on anything but the loopback, or outlive the
//! test (everything stops when the `Tap` is dropped).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The longest line kept whole; longer ones (message bodies) are cut, which only the
/// recording sees.
const MAX_LINE: usize = 4096;

/// One POP3 session as the tap saw it.
#[derive(Debug, Clone, Default)]
pub struct TapSession {
    /// In the order sessions were accepted.
    pub id: u64,
    /// The USER argument.
    pub user: Option<String>,
    /// Every command line, with when it passed the tap (passwords as `***`).
    pub commands: Vec<(SystemTime, String)>,
    /// The UIDL listing: message number → UIDL.
    pub uidl: BTreeMap<u32, String>,
    /// Each DELE: when, and the message number.
    pub deles: Vec<(SystemTime, u32)>,
    /// The server answered QUIT with +OK: its deletions took effect.
    pub quit_ok: bool,
}

impl TapSession {
    /// When the first and the last command passed, if any did.
    pub fn active(&self) -> Option<(SystemTime, SystemTime)> {
        Some((self.commands.first()?.0, self.commands.last()?.0))
    }
}

/// A running tap; dropping it stops it.
pub struct Tap {
    addr: SocketAddr,
    sessions: Arc<Mutex<Vec<TapSession>>>,
    accept: JoinHandle<()>,
}

impl Tap {
    /// Listens on a free loopback port and forwards each connection to `server`.
    pub async fn start(server: SocketAddr) -> Tap {
        assert!(server.ip().is_loopback(), "the tap dials the loopback only");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(listener, server, sessions.clone()));
        Tap {
            addr,
            sessions,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every session so far.
    pub fn sessions(&self) -> Vec<TapSession> {
        self.sessions.lock().unwrap().clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    server: SocketAddr,
    sessions: Arc<Mutex<Vec<TapSession>>>,
) {
    let mut links = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let index = {
            let mut all = sessions.lock().unwrap();
            let id = all.len() as u64;
            all.push(TapSession {
                id,
                ..TapSession::default()
            });
            id as usize
        };
        let sessions = sessions.clone();
        links.spawn(async move {
            let Ok(upstream) = TcpStream::connect(server).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = upstream.into_split();
            let pending = Arc::new(Mutex::new(VecDeque::new()));
            let record = Recorder { sessions, index };
            tokio::join!(
                commands(cr, sw, pending.clone(), record.clone()),
                replies(sr, cw, pending, record),
            );
        });
    }
}

/// Where one session's record lives.
#[derive(Clone)]
struct Recorder {
    sessions: Arc<Mutex<Vec<TapSession>>>,
    index: usize,
}

impl Recorder {
    fn with(&self, f: impl FnOnce(&mut TapSession)) {
        f(&mut self.sessions.lock().unwrap()[self.index]);
    }
}

/// Splits complete lines off `buf` (CRLF or LF ends, the end removed).
fn lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = buf.drain(..=end).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        line.truncate(MAX_LINE);
        out.push(String::from_utf8_lossy(&line).into_owned());
    }
    if buf.len() > MAX_LINE {
        // A runaway line: keep its start only (the recording, never the traffic).
        buf.truncate(MAX_LINE);
    }
    out
}

/// Copies `from` to `to` a chunk at a time, handing the complete lines each chunk ends
/// to `seen` before the chunk is forwarded.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut seen: impl FnMut(Vec<String>)) {
    let mut chunk = vec![0; 64 * 1024];
    let mut buf = Vec::new();
    loop {
        let n = from.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        seen(lines(&mut buf));
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// Client → server: records each command line and queues it for its reply before it is
/// forwarded.
async fn commands(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    pending: Arc<Mutex<VecDeque<String>>>,
    record: Recorder,
) {
    relay(from, to, move |lines| {
        let now = SystemTime::now();
        for line in lines {
            let mut words = line.splitn(2, ' ');
            let verb = words.next().unwrap_or_default().to_ascii_uppercase();
            let arg = words.next().unwrap_or_default().trim().to_owned();
            let shown = match verb.as_str() {
                "PASS" | "AUTH" | "APOP" => format!("{verb} ***"),
                _ => line.clone(),
            };
            record.with(|s| {
                s.commands.push((now, shown));
                match verb.as_str() {
                    "USER" => s.user = Some(arg.clone()),
                    "DELE" => {
                        if let Ok(n) = arg.parse() {
                            s.deles.push((now, n));
                        }
                    }
                    _ => {}
                }
            });
            pending.lock().unwrap().push_back(line_key(&verb, &arg));
        }
    })
    .await;
}

/// The command as its reply needs it: the verb, and whether it lists (`UIDL` with no
/// argument is a listing, `UIDL 3` one line).
fn line_key(verb: &str, arg: &str) -> String {
    if arg.is_empty() {
        verb.to_owned()
    } else {
        format!("{verb} _")
    }
}

/// True when `key`'s +OK reply is multi-line.
fn multi_line(key: &str) -> bool {
    matches!(key, "CAPA" | "LIST" | "UIDL" | "RETR _" | "TOP _")
}

/// Server → client: reads the replies, paired with the queued commands, for the UIDL
/// listing and QUIT.
async fn replies(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    pending: Arc<Mutex<VecDeque<String>>>,
    record: Recorder,
) {
    let mut greeted = false;
    // The multi-line reply being read, by its command.
    let mut body: Option<String> = None;
    relay(from, to, move |lines| {
        for line in lines {
            if let Some(key) = &body {
                if line == "." {
                    body = None;
                } else if key == "UIDL" {
                    let mut f = line.split_whitespace();
                    if let (Some(Ok(n)), Some(uid)) = (f.next().map(str::parse), f.next()) {
                        let uid = uid.to_owned();
                        record.with(|s| {
                            s.uidl.insert(n, uid);
                        });
                    }
                }
                continue;
            }
            if !greeted {
                greeted = true;
                continue;
            }
            let Some(key) = pending.lock().unwrap().pop_front() else {
                continue;
            };
            let ok = line.starts_with("+OK");
            if ok && multi_line(&key) {
                body = Some(key);
            } else if ok && key == "QUIT" {
                record.with(|s| s.quit_ok = true);
            }
        }
    })
    .await;
}
