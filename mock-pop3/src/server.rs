//! The server: builder, shared state and the handle tests inspect (the accept loop,
//! session records and shutdown are the core's [`Host`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use mock_core::host::{Host, Protocol, SessionEnd, Settings};
use popbridge_proto::DotStuffer;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::caps::Capabilities;
use crate::maildrop::{Maildrop, Message};
use popbridge_proto::pop3::AuthMethod;

/// How the server offers TLS, without its certificate: the scenario file's `tls` and the
/// standalone server's `--tls` (`none`, `stls`, `implicit`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsOffer {
    /// Plain text only; STLS is refused.
    #[default]
    None,
    /// Plain text with STLS (RFC 2595).
    Stls,
    /// TLS from the first byte (RFC 8314, port 995 style).
    Implicit,
}

impl TlsOffer {
    /// This offer with the certificate the server presents (`None` needs none).
    pub fn with_config(self, config: Arc<rustls::ServerConfig>) -> ServerTls {
        match self {
            Self::None => ServerTls::None,
            Self::Stls => ServerTls::Stls(config),
            Self::Implicit => ServerTls::Implicit(config),
        }
    }
}

/// How the server offers TLS, with the configuration it serves it with.
#[derive(Clone, Default)]
pub enum ServerTls {
    /// Plain text only; STLS is refused.
    #[default]
    None,
    /// Plain text with STLS (RFC 2595).
    Stls(Arc<rustls::ServerConfig>),
    /// TLS from the first byte (RFC 8314, port 995 style).
    Implicit(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Stls(_) => "Stls",
            Self::Implicit(_) => "Implicit",
        })
    }
}

/// What one session did, for inspection.
#[derive(Debug, Clone, Default, Serialize)]
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

mock_core::impl_record!(SessionRecord);

/// A mailbox's state, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaildropReport {
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

pub(crate) struct MaildropState {
    pub spec: Maildrop,
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
    pub mailboxes: BTreeMap<String, MaildropState>,
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
    pub tls: ServerTls,
    pub apop_timestamp: bool,
    pub hostname: String,
    pub idle_timeout: Duration,
}

/// State shared by the accept loop, the sessions and the handle.
pub struct Shared {
    pub(crate) cfg: Config,
    state: Mutex<State>,
    pub(crate) host: Host<SessionRecord>,
    /// The running count of complete RETR replies written, in all mailboxes, for waiters.
    pub(crate) retrievals: tokio::sync::watch::Sender<u64>,
}

impl Protocol for Shared {
    type Record = SessionRecord;

    fn host(&self) -> &Host<SessionRecord> {
        &self.host
    }

    fn session<S>(
        self: Arc<Self>,
        stream: S,
        id: u64,
        _peer: IpAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        crate::session::run(self, stream, id)
    }
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds a mock POP3 server.
pub struct Builder {
    mailboxes: Vec<Maildrop>,
    before: Capabilities,
    after: Capabilities,
    tls: ServerTls,
    host: Settings,
    apop_timestamp: bool,
    hostname: String,
    idle_timeout: Duration,
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
            tls: ServerTls::None,
            host: Settings::default(),
            apop_timestamp: true,
            hostname: "mock-pop3.invalid".into(),
            idle_timeout: Duration::from_secs(600),
            dot_stuffing: true,
        }
    }
}

impl Builder {
    /// Adds a maildrop.
    pub fn maildrop(mut self, maildrop: Maildrop) -> Self {
        self.mailboxes.push(maildrop);
        self
    }

    mock_core::setters! {
        /// Capabilities before login (CAPA listing and which commands work).
        capabilities(before: Capabilities);
        /// Capabilities after login.
        capabilities_after_login(after: Capabilities);
        /// TLS mode.
        tls(tls: ServerTls);
        /// Whether the greeting carries an APOP timestamp (without one, APOP is impossible).
        apop_timestamp(apop_timestamp: bool);
        /// A hostile server when `false`: message lines go out without dot-stuffing, so a
        /// line holding a lone dot ends a RETR early and the rest of the message reads as
        /// further replies.
        dot_stuffing(dot_stuffing: bool);
        /// Closes a session idle for this long (RFC 1939 asks for at least 10 minutes).
        idle_timeout(idle_timeout: Duration);
    }

    mock_core::host_setters!();

    /// The host name used in the greeting and challenges.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }

    fn build(self) -> Arc<Shared> {
        let mut state = State {
            mailboxes: BTreeMap::new(),
            next_message_id: 1,
            dot_stuffing: self.dot_stuffing,
        };
        for mb in self.mailboxes {
            let messages = mb.messages.clone();
            let user = mb.user.clone();
            let spec = Maildrop {
                messages: Vec::new(),
                ..mb
            };
            state.mailboxes.insert(
                user.clone(),
                MaildropState {
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
                idle_timeout: self.idle_timeout,
            },
            state: Mutex::new(state),
            host: Host::new(self.host),
            retrievals: tokio::sync::watch::Sender::new(0),
        })
    }
}

mock_core::handle_type! {
    /// A running mock POP3 server: the core [`mock_core::Handle`] (address, sessions, transcripts,
    /// faults on or off, in-memory connections, waiting, shutdown) and the mailboxes.
    pub struct MockPop3Handle(Shared) from Builder;
}

impl MockPop3Handle {
    /// A receiver of the count of complete RETR replies written (all mailboxes, duplicates
    /// included), updated after each write that completed some (benchmarks timestamp it).
    pub fn retrievals_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared().retrievals.subscribe()
    }

    /// A maildrop's state.
    pub fn maildrop(&self, user: &str) -> Option<MaildropReport> {
        let st = self.shared().state();
        st.mailboxes.get(user).map(|mb| MaildropReport {
            user: user.to_string(),
            remaining: mb.messages.iter().map(|m| m.uid.clone()).collect(),
            remaining_positions: mb.messages.iter().map(|m| m.position).collect(),
            retrieved: mb.retrieved.clone(),
            deleted: mb.deleted.clone(),
            retrievals: mb.retrievals,
        })
    }

    /// Every maildrop's state, by user.
    pub fn maildrops(&self) -> Vec<MaildropReport> {
        let users: Vec<String> = self.shared().state().mailboxes.keys().cloned().collect();
        users.iter().filter_map(|u| self.maildrop(u)).collect()
    }

    /// Adds a message to a mailbox now; false when there is no such mailbox.
    pub fn add_message(&self, user: &str, message: Message) -> bool {
        self.shared().state().store(user, message)
    }

    /// The methods a mailbox accepts (for harness reports).
    pub fn methods(&self, user: &str) -> Option<Vec<AuthMethod>> {
        self.shared()
            .state()
            .mailboxes
            .get(user)
            .map(|m| m.spec.methods.clone())
    }
}
