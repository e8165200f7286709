//! The server: builder, shared state, accept loop and the handle tests inspect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use popbridge_proto::DotStuffer;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::caps::Capabilities;
use crate::fault::{FaultPlan, FaultRule};
use crate::mailbox::{AuthMethod, Mailbox, Message};
use crate::tracker::Tracker;

/// How the server offers TLS.
#[derive(Clone, Default)]
pub enum TlsMode {
    /// Plain text only; STLS is refused.
    #[default]
    None,
    /// Plain text with STLS (RFC 2595).
    Stls(Arc<rustls::ServerConfig>),
    /// TLS from the first byte (RFC 8314, port 995 style).
    Implicit(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Stls(_) => "Stls",
            Self::Implicit(_) => "Implicit",
        })
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// QUIT in the TRANSACTION state: deletions applied.
    QuitUpdate,
    /// QUIT before login: nothing to apply.
    QuitUnauthenticated,
    /// The client closed the connection without QUIT: nothing deleted.
    ClientClosed,
    /// A fault closed the connection.
    FaultClosed,
    /// The client was idle past the timeout.
    Timeout,
    /// The server was shut down.
    Shutdown,
    /// A protocol or I/O error, with its text.
    Error(String),
}

/// What one session did, for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    /// Session number, from 1 in connection order.
    pub id: u64,
    /// The authenticated user, once logged in.
    pub user: Option<String>,
    /// True once the session is encrypted.
    pub tls: bool,
    /// Every command line received, secrets redacted.
    pub commands: Vec<String>,
    /// `C: ` and `S: ` lines, secrets redacted, message bodies summarised.
    pub transcript: Vec<String>,
    /// How it ended; `None` while it runs.
    pub end: Option<SessionEnd>,
}

/// A mailbox's state, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailboxReport {
    /// Login name.
    pub user: String,
    /// UIDs still in the maildrop, in order.
    pub remaining: Vec<String>,
    /// UIDs sent in full by RETR at least once, in order of first retrieval.
    pub retrieved: Vec<String>,
    /// UIDs removed at a QUIT, in order.
    pub deleted: Vec<String>,
    /// Number of complete RETR replies sent, duplicates included.
    pub retrievals: u64,
    /// Where each message still in the maildrop was declared (0-based, in the order the
    /// mailbox was filled): tells apart messages that share a UID.
    pub remaining_positions: Vec<usize>,
}

/// A stored message, shared by every session that lists it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub id: u64,
    pub uid: String,
    pub data: Bytes,
    /// Dot-stuffed with the terminator: what RETR sends after its status line.
    pub wire: Bytes,
    pub size: u64,
    /// Its place in its mailbox's filling order (0-based).
    pub position: usize,
}

impl Stored {
    /// End of the header (index of the blank line's first byte), or the whole message.
    pub fn header_end(&self) -> usize {
        let d = &self.data;
        let crlf = d.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2);
        let lf = d.windows(2).position(|w| w == b"\n\n").map(|p| p + 1);
        match (crlf, lf) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(d.len()),
        }
    }
}

pub(crate) struct MailboxState {
    pub spec: Mailbox,
    pub messages: Arc<Vec<Arc<Stored>>>,
    pub reported: BTreeMap<u64, u64>,
    pub locked_by: Option<u64>,
    pub last_login: Option<Instant>,
    pub retrieved: Vec<String>,
    pub retrieved_ids: std::collections::HashSet<u64>,
    pub retrievals: u64,
    pub deleted: Vec<String>,
    pub next_uid: usize,
}

pub(crate) struct State {
    pub mailboxes: BTreeMap<String, MailboxState>,
    pub sessions: Vec<SessionRecord>,
    pub next_message_id: u64,
    /// False for a hostile server that sends message lines without dot-stuffing them.
    pub dot_stuffing: bool,
}

impl State {
    fn store(&mut self, user: &str, m: Message) -> bool {
        let id = self.next_message_id;
        let Some(mb) = self.mailboxes.get_mut(user) else {
            return false;
        };
        self.next_message_id += 1;
        mb.next_uid += 1;
        let uid = m
            .uid
            .unwrap_or_else(|| format!("{user}-{:06}", mb.next_uid));
        // Many messages sharing one body (a huge synthetic maildrop) share its wire form
        // too: only the first of a run is stuffed.
        let previous = mb
            .messages
            .last()
            .filter(|p| p.data.as_ptr() == m.data.as_ptr() && p.data.len() == m.data.len());
        let wire = if let Some(p) = previous {
            p.wire.clone()
        } else if self.dot_stuffing {
            DotStuffer::stuff_all(&m.data, false).freeze()
        } else {
            // The lines as they are, then the terminator: a line holding a lone dot ends
            // the reply early, and what follows it reads as further replies.
            let mut w = m.data.to_vec();
            if !w.is_empty() && !w.ends_with(b"\n") {
                w.extend_from_slice(b"\r\n");
            }
            w.extend_from_slice(b".\r\n");
            Bytes::from(w)
        };
        // The octets RETR sends before the terminator (a last line without a line end gets
        // a CRLF).
        let mut size = m.data.len() as u64;
        if !m.data.is_empty() && !m.data.ends_with(b"\n") {
            size += 2;
        }
        if let Some(r) = m.reported_size {
            mb.reported.insert(id, r);
        }
        let stored = Arc::new(Stored {
            id,
            uid,
            data: m.data,
            wire,
            size,
            position: mb.next_uid - 1,
        });
        Arc::make_mut(&mut mb.messages).push(stored);
        true
    }
}

/// Everything immutable about a server instance.
pub(crate) struct Config {
    pub before: Capabilities,
    pub after: Capabilities,
    pub tls: TlsMode,
    pub apop_timestamp: bool,
    pub hostname: String,
    pub throttle: Option<u64>,
    pub idle_timeout: Duration,
    pub record: bool,
}

/// State shared by the accept loop, the sessions and the handle.
pub(crate) struct Shared {
    pub cfg: Config,
    state: Mutex<State>,
    pub faults: FaultPlan,
    tracker: Arc<Tracker>,
    /// The running count of complete RETR replies written, in all mailboxes, for waiters.
    pub retrievals: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session; returns its id.
    pub fn open_session(&self) -> u64 {
        let mut st = self.state();
        let id = st.sessions.len() as u64 + 1;
        st.sessions.push(SessionRecord {
            id,
            user: None,
            tls: false,
            commands: Vec::new(),
            transcript: Vec::new(),
            end: None,
        });
        id
    }

    /// Runs `f` on a session's record.
    pub fn with_record(&self, id: u64, f: impl FnOnce(&mut SessionRecord)) {
        if let Some(r) = self.state().sessions.get_mut(id as usize - 1) {
            f(r);
        }
    }

    /// Adds a transcript line when recording is on.
    pub fn log(&self, id: u64, line: String) {
        if self.cfg.record {
            self.with_record(id, |r| r.transcript.push(line));
        }
    }
}

/// Builds a mock POP3 server.
pub struct Builder {
    mailboxes: Vec<Mailbox>,
    before: Capabilities,
    after: Capabilities,
    tls: TlsMode,
    faults: Vec<FaultRule>,
    seed: u64,
    apop_timestamp: bool,
    hostname: String,
    throttle: Option<u64>,
    idle_timeout: Duration,
    record: bool,
    dot_stuffing: bool,
}

/// Entry point: `MockPop3::builder()`.
pub struct MockPop3;

impl MockPop3 {
    /// A builder with every capability on, no TLS, no faults, seed 0.
    pub fn builder() -> Builder {
        Builder {
            mailboxes: Vec::new(),
            before: Capabilities::full(),
            after: Capabilities::full_after_login(),
            tls: TlsMode::None,
            faults: Vec::new(),
            seed: 0,
            apop_timestamp: true,
            hostname: "mock-pop3.invalid".into(),
            throttle: None,
            idle_timeout: Duration::from_secs(600),
            record: true,
            dot_stuffing: true,
        }
    }
}

impl Builder {
    /// Adds a mailbox.
    pub fn mailbox(mut self, mailbox: Mailbox) -> Self {
        self.mailboxes.push(mailbox);
        self
    }

    /// Capabilities before login (CAPA listing and which commands work).
    pub fn capabilities(mut self, caps: Capabilities) -> Self {
        self.before = caps;
        self
    }

    /// Capabilities after login.
    pub fn capabilities_after_login(mut self, caps: Capabilities) -> Self {
        self.after = caps;
        self
    }

    /// TLS mode.
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Adds a fault rule.
    pub fn fault(mut self, rule: FaultRule) -> Self {
        self.faults.push(rule);
        self
    }

    /// Seeds the generator behind probabilistic faults, APOP timestamps and CRAM-MD5 challenges.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether the greeting carries an APOP timestamp (without one, APOP is impossible).
    pub fn apop_timestamp(mut self, on: bool) -> Self {
        self.apop_timestamp = on;
        self
    }

    /// The host name used in the greeting and challenges.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }

    /// A hostile server when `false`: message lines go out without dot-stuffing, so a line
    /// holding a lone dot ends a RETR early and the rest of the message reads as further
    /// replies.
    pub fn dot_stuffing(mut self, on: bool) -> Self {
        self.dot_stuffing = on;
        self
    }

    /// Limits every session's sending speed to `bytes_per_second`.
    pub fn throttle(mut self, bytes_per_second: u64) -> Self {
        self.throttle = Some(bytes_per_second.max(1));
        self
    }

    /// Closes a session idle for this long (RFC 1939 asks for at least 10 minutes).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Turns command and transcript recording off (benchmarks).
    pub fn record_transcript(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    fn build(self) -> Arc<Shared> {
        let mut state = State {
            mailboxes: BTreeMap::new(),
            sessions: Vec::new(),
            next_message_id: 1,
            dot_stuffing: self.dot_stuffing,
        };
        for mb in self.mailboxes {
            let messages = mb.messages.clone();
            let user = mb.user.clone();
            let spec = Mailbox {
                messages: Vec::new(),
                ..mb
            };
            state.mailboxes.insert(
                user.clone(),
                MailboxState {
                    spec,
                    messages: Arc::new(Vec::new()),
                    reported: BTreeMap::new(),
                    locked_by: None,
                    last_login: None,
                    retrieved: Vec::new(),
                    retrieved_ids: Default::default(),
                    retrievals: 0,
                    deleted: Vec::new(),
                    next_uid: 0,
                },
            );
            for m in messages {
                state.store(&user, m);
            }
        }
        Arc::new(Shared {
            cfg: Config {
                before: self.before,
                after: self.after,
                tls: self.tls,
                apop_timestamp: self.apop_timestamp,
                hostname: self.hostname,
                throttle: self.throttle,
                idle_timeout: self.idle_timeout,
                record: self.record,
            },
            state: Mutex::new(state),
            faults: FaultPlan::new(self.faults, self.seed),
            tracker: Arc::new(Tracker::new()),
            retrievals: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Starts serving on a listener the caller bound (tests bind `127.0.0.1:0`).
    pub fn spawn(self, listener: TcpListener) -> MockPop3Handle {
        let shared = self.build();
        let addr = listener.local_addr().ok();
        let s = shared.clone();
        shared
            .tracker
            .accept_loop(listener, move |sock, _peer| spawn_session(&s, sock));
        MockPop3Handle { addr, shared }
    }

    /// Starts a server without a listener: connect with [`MockPop3Handle::connect_duplex`].
    pub fn spawn_in_memory(self) -> MockPop3Handle {
        MockPop3Handle {
            addr: None,
            shared: self.build(),
        }
    }
}

fn spawn_session<S>(shared: &Arc<Shared>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = shared.open_session();
    shared
        .tracker
        .spawn_session(crate::session::run(shared.clone(), stream, id));
}

/// A running mock POP3 server.
pub struct MockPop3Handle {
    addr: Option<SocketAddr>,
    shared: Arc<Shared>,
}

impl MockPop3Handle {
    /// The bound address (`None` for an in-memory server).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// A receiver of the count of complete RETR replies written (all mailboxes, duplicates
    /// included), updated after each write that completed some (benchmarks timestamp it).
    pub fn retrievals_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.retrievals.subscribe()
    }

    /// Turns the scripted faults off (`false`) or back on (a harness's clean passes).
    pub fn set_faults_armed(&self, on: bool) {
        self.shared.faults.set_armed(on);
    }

    /// Serves one session over any stream (an in-memory duplex, a socket accepted elsewhere).
    pub fn serve<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        spawn_session(&self.shared, stream);
    }

    /// A client end of an in-memory connection to this server.
    pub fn connect_duplex(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(256 * 1024);
        self.serve(server);
        client
    }

    /// A mailbox's state.
    pub fn mailbox(&self, user: &str) -> Option<MailboxReport> {
        let st = self.shared.state();
        st.mailboxes.get(user).map(|mb| MailboxReport {
            user: user.to_string(),
            remaining: mb.messages.iter().map(|m| m.uid.clone()).collect(),
            remaining_positions: mb.messages.iter().map(|m| m.position).collect(),
            retrieved: mb.retrieved.clone(),
            deleted: mb.deleted.clone(),
            retrievals: mb.retrievals,
        })
    }

    /// Every mailbox's state, by user.
    pub fn mailboxes(&self) -> Vec<MailboxReport> {
        let users: Vec<String> = self.shared.state().mailboxes.keys().cloned().collect();
        users.iter().filter_map(|u| self.mailbox(u)).collect()
    }

    /// Every session so far, in connection order.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.shared.state().sessions.clone()
    }

    /// All sessions' transcripts, one block per session.
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        for s in self.sessions() {
            out.push_str(&format!("-- session {} --\n", s.id));
            for l in &s.transcript {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Adds a message to a mailbox now; false when there is no such mailbox.
    pub fn add_message(&self, user: &str, message: Message) -> bool {
        self.shared.state().store(user, message)
    }

    /// The methods a mailbox accepts (for harness reports).
    pub fn methods(&self, user: &str) -> Option<Vec<AuthMethod>> {
        self.shared
            .state()
            .mailboxes
            .get(user)
            .map(|m| m.spec.methods.clone())
    }

    /// Waits until no session is running (after a client left, before inspecting).
    pub async fn wait_idle(&self) {
        self.shared.tracker.wait_idle().await;
    }

    /// Stops accepting and ends every session (without applying their deletions).
    pub async fn shutdown(self) {
        self.shared.tracker.shutdown().await;
    }
}
