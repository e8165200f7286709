//! The machinery around a mock's sessions: the fault plan, the accept loop, one record
//! per session (transcript, TLS, how it ended), waiting for quiet, shutdown, and the
//! handle tests inspect.
//!
//! Must never: share state between server instances, sleep to wait for sessions, or
//! know a protocol (a mock brings its sessions through [`Protocol`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpListener;

use crate::fault::{FaultPlan, FaultRule};
use crate::stream::{is_disconnect, Conn};
use crate::tracker::Tracker;

/// How a session ended (both mocks; each uses the variants its protocol has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// POP3: QUIT in the TRANSACTION state: deletions applied.
    QuitUpdate,
    /// POP3: QUIT before login: nothing to apply.
    QuitUnauthenticated,
    /// SMTP: QUIT.
    Quit,
    /// The client closed the connection without QUIT (POP3: nothing deleted).
    ClientClosed,
    /// A fault closed the connection.
    FaultClosed,
    /// SMTP: a fault kept the final reply to a message from leaving, then closed.
    FaultReplyLost,
    /// SMTP: too many protocol errors or failed logons (`421 4.7.0`).
    TooManyErrors,
    /// The client was idle past the timeout.
    Timeout,
    /// The server was shut down.
    Shutdown,
    /// A protocol or I/O error, with its text.
    Error(String),
}

impl SessionEnd {
    /// The end an I/O error means: a timeout, the client gone, or an error.
    pub fn from_io(e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::TimedOut {
            Self::Timeout
        } else if is_disconnect(e) {
            Self::ClientClosed
        } else {
            Self::Error(e.to_string())
        }
    }

    /// True when the connection is already gone (nothing to close gracefully).
    pub fn dropped(&self) -> bool {
        matches!(self, Self::ClientClosed | Self::FaultClosed)
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QuitUpdate => f.write_str("quit (update)"),
            Self::QuitUnauthenticated => f.write_str("quit (unauthenticated)"),
            Self::Quit => f.write_str("quit"),
            Self::ClientClosed => f.write_str("client closed"),
            Self::FaultClosed => f.write_str("fault: closed"),
            Self::FaultReplyLost => f.write_str("fault: reply lost"),
            Self::TooManyErrors => f.write_str("too many errors"),
            Self::Timeout => f.write_str("timeout"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What a command asks of a session's serving loop.
pub enum Flow {
    /// Read the next command.
    Continue,
    /// The reply to STLS / STARTTLS went out: the TLS handshake is next.
    StartTls,
    /// Stop, for this reason.
    End(SessionEnd),
}

/// Why a session's serving loop returned.
pub enum Step {
    /// The TLS handshake is due (implicit TLS, STLS, STARTTLS); serving resumes after it.
    Tls(Arc<rustls::ServerConfig>),
    /// The session is over.
    End(SessionEnd),
}

/// What every mock's builder sets the same way (see [`host_setters`](crate::host_setters)).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The fault rules.
    pub faults: Vec<FaultRule>,
    /// The seed of the server's generator.
    pub seed: u64,
    /// Each session's sending speed limit, in octets a second.
    pub throttle: Option<u64>,
    /// Whether commands and transcripts are kept (off in benchmarks).
    pub record: bool,
}

impl Default for Settings {
    /// No faults, seed 0, no speed limit, recording on.
    fn default() -> Self {
        Self {
            faults: Vec::new(),
            seed: 0,
            throttle: None,
            record: true,
        }
    }
}

/// The keyword of a command line that did not parse (for its fault hook and transcript):
/// its first word, at most 16 characters, upper-case.
pub fn keyword_of(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let word = text.split(' ').next().unwrap_or("");
    word.chars()
        .take(16)
        .collect::<String>()
        .to_ascii_uppercase()
}

/// What a mock records about each session; the host fills in the common parts.
pub trait Record: Clone + Send + 'static {
    /// A fresh record for session `id` (from 1).
    fn open(id: u64) -> Self;
    /// The session number.
    fn id(&self) -> u64;
    /// `C:`/`S:` lines so far.
    fn transcript(&self) -> &[String];
    /// Adds a transcript line.
    fn push_line(&mut self, line: String);
    /// Notes that the session is now encrypted.
    fn set_tls(&mut self);
    /// How the session ended; `None` while it runs.
    fn end_mut(&mut self) -> &mut Option<SessionEnd>;
}

/// Runs sessions for a [`Host`]: one mock's protocol.
pub trait Protocol: Send + Sync + Sized + 'static {
    /// What the mock records per session.
    type Record: Record;

    /// The host this protocol's sessions run in.
    fn host(&self) -> &Host<Self::Record>;

    /// Session `id` over `stream`, from a client at `peer`.
    fn session<S>(
        self: Arc<Self>,
        stream: S,
        id: u64,
        peer: IpAddr,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// The protocol-independent part of a server instance.
#[derive(Debug)]
pub struct Host<R> {
    faults: FaultPlan,
    tracker: Tracker,
    record: bool,
    throttle: Option<u64>,
    sessions: Mutex<Vec<R>>,
}

impl<R: Record> Host<R> {
    /// A host as a builder's settings say.
    pub fn new(settings: Settings) -> Self {
        Self {
            faults: FaultPlan::new(settings.faults, settings.seed),
            tracker: Tracker::new(),
            record: settings.record,
            throttle: settings.throttle,
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// A session's connection over `stream`: reads and writes time out after `deadline`,
    /// sending at the server's speed limit.
    pub fn connection<S>(&self, stream: S, deadline: Duration) -> Conn<S>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Conn::new(stream, deadline, self.throttle)
    }

    /// The server's fault plan and seeded generator.
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// True when transcripts are kept.
    pub fn recording(&self) -> bool {
        self.record
    }

    fn records(&self) -> MutexGuard<'_, Vec<R>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session; returns its id.
    fn open_session(&self) -> u64 {
        let mut records = self.records();
        let id = records.len() as u64 + 1;
        records.push(R::open(id));
        id
    }

    /// Runs `f` on a session's record.
    pub fn with_record(&self, id: u64, f: impl FnOnce(&mut R)) {
        if let Some(r) = self.records().get_mut(id as usize - 1) {
            f(r);
        }
    }

    /// Adds a transcript line when recording is on.
    pub fn log(&self, id: u64, line: String) {
        if self.record {
            self.with_record(id, |r| r.push_line(line));
        }
    }

    /// Records how a session ended.
    pub fn end(&self, id: u64, end: SessionEnd) {
        self.with_record(id, |r| *r.end_mut() = Some(end));
    }

    /// The TLS handshake on a session's connection: the upgraded connection (recorded and
    /// logged), or `None` after recording the end the failure means.
    pub async fn upgrade<S>(
        &self,
        id: u64,
        conn: Conn<S>,
        config: Arc<rustls::ServerConfig>,
    ) -> Option<Conn<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match conn.upgrade(config).await {
            Ok(conn) => {
                self.with_record(id, |r| r.set_tls());
                self.log(id, "-- TLS established --".into());
                Some(conn)
            }
            Err(e) => {
                self.end(id, SessionEnd::from_io(&e));
                None
            }
        }
    }

    /// Closes the connection unless `end` says it is gone already, then records `end`.
    pub async fn finish<S>(&self, id: u64, conn: &mut Conn<S>, end: SessionEnd)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !end.dropped() {
            conn.close().await;
        }
        self.end(id, end);
    }

    /// Every session so far, in connection order.
    pub fn sessions(&self) -> Vec<R> {
        self.records().clone()
    }

    /// All sessions' transcripts, one block per session.
    pub fn transcript(&self) -> String {
        let mut out = String::new();
        for s in self.records().iter() {
            out.push_str(&format!("-- session {} --\n", s.id()));
            for l in s.transcript() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Records [`SessionEnd::Shutdown`] for a session whose task stops (is aborted) before
/// recording its end.
pub struct EndGuard<P: Protocol> {
    protocol: Arc<P>,
    id: u64,
}

impl<P: Protocol> EndGuard<P> {
    /// Guards session `id`.
    pub fn new(protocol: Arc<P>, id: u64) -> Self {
        Self { protocol, id }
    }

    /// The protocol's shared state.
    pub fn protocol(&self) -> &Arc<P> {
        &self.protocol
    }
}

impl<P: Protocol> Drop for EndGuard<P> {
    fn drop(&mut self) {
        self.protocol.host().with_record(self.id, |r| {
            r.end_mut().get_or_insert(SessionEnd::Shutdown);
        });
    }
}

fn spawn_session<P: Protocol, S>(protocol: &Arc<P>, stream: S, peer: IpAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = protocol.host();
    let id = host.open_session();
    host.tracker
        .spawn_session(protocol.clone().session(stream, id, peer));
}

/// A running mock server: its address, its sessions, and control over it. Each mock's
/// handle dereferences to this.
pub struct Handle<P> {
    addr: Option<SocketAddr>,
    protocol: Arc<P>,
}

impl<P: Protocol> Handle<P> {
    /// Serves `protocol` on a listener the caller bound (tests bind `127.0.0.1:0`).
    pub fn spawn(protocol: Arc<P>, listener: TcpListener) -> Self {
        let addr = listener.local_addr().ok();
        let p = protocol.clone();
        protocol
            .host()
            .tracker
            .accept_loop(listener, move |sock, peer| spawn_session(&p, sock, peer));
        Self { addr, protocol }
    }

    /// A server without a listener: connect with [`Handle::connect_duplex`].
    pub fn in_memory(protocol: Arc<P>) -> Self {
        Self {
            addr: None,
            protocol,
        }
    }

    /// The protocol's shared state.
    pub fn protocol(&self) -> &Arc<P> {
        &self.protocol
    }

    /// The bound address (`None` for an in-memory server).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Turns the scripted faults off (`false`) or back on (a harness's clean passes).
    pub fn set_faults_armed(&self, on: bool) {
        self.protocol.host().faults.set_armed(on);
    }

    /// Serves one session over any stream (an in-memory duplex, a socket accepted
    /// elsewhere), as from a client at 127.0.0.1.
    pub fn serve<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        spawn_session(&self.protocol, stream, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    /// A client end of an in-memory connection to this server.
    pub fn connect_duplex(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(256 * 1024);
        self.serve(server);
        client
    }

    /// Every session so far, in connection order.
    pub fn sessions(&self) -> Vec<P::Record> {
        self.protocol.host().sessions()
    }

    /// All sessions' transcripts, one block per session.
    pub fn transcript(&self) -> String {
        self.protocol.host().transcript()
    }

    /// Waits until no session is running (after a client left, before inspecting).
    pub async fn wait_idle(&self) {
        self.protocol.host().tracker.wait_idle().await;
    }

    /// The most sessions that ran at the same time so far (a cap across clients holds
    /// when this stays within it).
    pub fn peak_sessions(&self) -> usize {
        self.protocol.host().tracker.peak()
    }

    /// Stops accepting and ends every session.
    pub async fn shutdown(&self) {
        self.protocol.host().tracker.shutdown().await;
    }
}

/// Implements [`Record`] for a mock's per-session record: a `Default` struct with the
/// fields `id: u64`, `tls: bool`, `transcript: Vec<String>` and `end: Option<SessionEnd>`.
#[macro_export]
macro_rules! impl_record {
    ($record:ty) => {
        impl $crate::host::Record for $record {
            fn open(id: u64) -> Self {
                Self {
                    id,
                    ..Default::default()
                }
            }

            fn id(&self) -> u64 {
                self.id
            }

            fn transcript(&self) -> &[String] {
                &self.transcript
            }

            fn push_line(&mut self, line: String) {
                self.transcript.push(line);
            }

            fn set_tls(&mut self) {
                self.tls = true;
            }

            fn end_mut(&mut self) -> &mut Option<$crate::host::SessionEnd> {
                &mut self.end
            }
        }
    };
}

/// Declares a mock's handle: a newtype over [`Handle`] that dereferences to it, so the
/// mock adds only its own inspection methods (through the private `shared()`); and its
/// builder's `spawn` and `spawn_in_memory`, over the builder's `build(self) -> Arc<_>`.
#[macro_export]
macro_rules! handle_type {
    ($(#[$meta:meta])* $vis:vis struct $name:ident($protocol:ty) from $builder:ty;) => {
        $(#[$meta])*
        $vis struct $name($crate::host::Handle<$protocol>);

        impl ::std::ops::Deref for $name {
            type Target = $crate::host::Handle<$protocol>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl $name {
            fn shared(&self) -> &$protocol {
                self.0.protocol()
            }
        }

        impl $builder {
            /// Starts serving on a listener the caller bound (tests bind `127.0.0.1:0`).
            pub fn spawn(self, listener: ::tokio::net::TcpListener) -> $name {
                $name($crate::host::Handle::spawn(self.build(), listener))
            }

            /// Starts a server without a listener: connect with
            /// [`mock_core::Handle::connect_duplex`].
            pub fn spawn_in_memory(self) -> $name {
                $name($crate::host::Handle::in_memory(self.build()))
            }
        }
    };
}

/// The builder methods every mock has, over its `host: Settings` field: `fault`, `seed`,
/// `throttle` and `record_transcript`.
#[macro_export]
macro_rules! host_setters {
    () => {
        /// Adds a fault rule.
        pub fn fault(mut self, rule: $crate::fault::FaultRule) -> Self {
            self.host.faults.push(rule);
            self
        }

        /// Seeds the generator behind probabilistic faults and the mock's other random
        /// choices (POP3: APOP timestamps, CRAM-MD5 and NTLM challenges).
        pub fn seed(mut self, seed: u64) -> Self {
            self.host.seed = seed;
            self
        }

        /// Limits every session's sending speed to `bytes_per_second`.
        pub fn throttle(mut self, bytes_per_second: u64) -> Self {
            self.host.throttle = Some(bytes_per_second.max(1));
            self
        }

        /// Turns command and transcript recording off (benchmarks).
        pub fn record_transcript(mut self, on: bool) -> Self {
            self.host.record = on;
            self
        }
    };
}

/// Builder methods that each set one field: `name(field: Type);` becomes
/// `pub fn name(mut self, field: Type) -> Self`, with the doc comment written above it.
#[macro_export]
macro_rules! setters {
    ($($(#[$meta:meta])* $name:ident($field:ident: $ty:ty);)*) => {
        $(
            $(#[$meta])*
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyword_of_a_bad_line_is_its_first_word_bounded_and_upper_case() {
        assert_eq!(keyword_of(b"retr x y\r\n"), "RETR");
        assert_eq!(keyword_of(b"noop\n"), "NOOP");
        assert_eq!(keyword_of(b"\r\n"), "");
        assert_eq!(
            keyword_of(b"abcdefghijklmnopqrstuvwxyz\r\n"),
            "ABCDEFGHIJKLMNOP"
        );
    }

    #[test]
    fn an_end_from_an_io_error() {
        let e = |k| io::Error::new(k, "x");
        assert_eq!(
            SessionEnd::from_io(&e(io::ErrorKind::TimedOut)),
            SessionEnd::Timeout
        );
        assert_eq!(
            SessionEnd::from_io(&e(io::ErrorKind::ConnectionReset)),
            SessionEnd::ClientClosed
        );
        assert_eq!(
            SessionEnd::from_io(&e(io::ErrorKind::Other)),
            SessionEnd::Error("x".into())
        );
        assert_eq!(SessionEnd::Error("x".into()).to_string(), "error: x");
    }
}
