//! The SMTP client: EHLO (HELO fallback), STARTTLS, SIZE, PIPELINING, BDAT or DATA, and a
//! count of protocol errors so the caller can reconnect before the server's limit.
//!
//! Two ways to submit. [`SmtpClient::send`] submits one message and waits for its
//! outcome (MAIL and RCPT first, the data only once they are accepted). With PIPELINING
//! and CHUNKING, [`SmtpClient::submit`] writes a whole transaction (RSET, MAIL, RCPT, BDAT
//! ... LAST) without waiting, so several messages are on the wire at once, and
//! [`SmtpClient::outcome`] reads their replies in order (RFC 2920, RFC 3030). A reply that
//! never came for a transaction whose last chunk was written leaves its outcome unknown;
//! a transaction behind a 421 was certainly not processed. The wire is a
//! [`crate::conn::Connection`]; a pipelined transaction is queued whole and goes out in
//! one write.
//!
//! Must never: report a message as delivered unless the server answered 2xx to the end of
//! its data for a recipient, send a bare CR or LF in DATA, or wait without a timeout.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use popbridge_proto::smtp::{
    AddressError, EnvelopeAddress, Param, Reply, ReplyParser, SmtpCommand,
};
use popbridge_proto::DotStuffer;
use thiserror::Error;
use tokio::io::AsyncReadExt;

use crate::body::Body;
use crate::config::{Config, SmtpTransport};
use crate::conn::{ConnError, Connection, Deadline, Setting, Timeouts, TlsTarget, Transcript};
use crate::net::{self, BoxIo, Dialer, Io, TlsError};

/// Chunk size for BDAT and for streaming DATA.
const CHUNK: usize = 1024 * 1024;

/// The largest message written ahead of its replies with DATA: it waits, stuffed (a
/// second copy of a body already held in memory), for its 354. Bodies over
/// `memory_threshold` are spooled and always go one at a time.
pub const DATA_AHEAD_MAX: usize = 8 * 1024 * 1024;
/// A session without a reply for this long is probed (RSET) before transactions are
/// written ahead of their replies: servers close idle sessions.
const IDLE_PROBE: Duration = Duration::from_secs(1);

/// Where in the transaction a reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The greeting.
    Greeting,
    /// EHLO or HELO.
    Hello,
    /// STARTTLS.
    StartTls,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (the 354).
    Data,
    /// A BDAT chunk before the last one: the server cannot have taken the message yet.
    Chunk,
    /// The end of the data (final dot or last BDAT): the reply that decides delivery.
    EndOfData,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Greeting => "greeting",
            Self::Hello => "EHLO",
            Self::StartTls => "STARTTLS",
            Self::Mail => "MAIL FROM",
            Self::Rcpt => "RCPT TO",
            Self::Data => "DATA",
            Self::Chunk => "BDAT chunk",
            Self::EndOfData => "end of data",
        })
    }
}

/// Why an SMTP operation failed. Server refusals keep the whole reply.
#[derive(Debug, Error)]
pub enum SmtpError {
    /// The TCP connection could not be made.
    #[error("cannot connect to SMTP server {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The connection broke or the server closed it.
    #[error("SMTP connection lost at {stage}: {source}")]
    Io {
        /// Where.
        stage: Stage,
        /// The cause.
        source: io::Error,
    },
    /// No complete reply in time (the deadline covers the whole reply, however it
    /// trickles in).
    #[error(
        "SMTP server did not complete its reply at {stage} within {secs} s (timeouts.{setting})"
    )]
    Timeout {
        /// Where.
        stage: Stage,
        /// The limit.
        secs: u64,
        /// The setting that gave it (`command` or `data`).
        setting: &'static str,
    },
    /// The message could not be read back from its spool (a local fault, not the server's):
    /// nothing was submitted (the connection was dropped before the end of the data).
    #[error("cannot read the message back from its spool: {0}; it stays on the POP3 server")]
    Spool(io::Error),
    /// TLS failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// STARTTLS was required but not possible.
    #[error("STARTTLS required but {0}")]
    StartTlsUnavailable(String),
    /// The server sent something that is not SMTP.
    #[error("SMTP server sent an invalid reply at {stage}: {detail}")]
    Protocol {
        /// Where.
        stage: Stage,
        /// What was wrong.
        detail: String,
    },
    /// The server refused (4xx or 5xx).
    #[error("SMTP server refused {stage}: {}", .reply.first_line())]
    Refused {
        /// Where.
        stage: Stage,
        /// The full reply.
        reply: Reply,
    },
    /// A pipelined transaction the server never processed: it closed the session with
    /// `reply` (a 421) at an earlier command.
    #[error("SMTP server closed the session before this message: {}", .reply.first_line())]
    NotProcessed {
        /// The 421 that ended the session.
        reply: Reply,
    },
    /// A pipelined transaction without a single reply: the server hung up right after
    /// refusing an earlier command with `reply`. Servers that drop a session do so at
    /// that refusal, so this message was most likely never processed; it is submitted
    /// again, announced as a possible duplicate.
    #[error(
        "SMTP server hung up after refusing an earlier command ({}) before answering this \
         message",
        .reply.first_line()
    )]
    Dropped {
        /// The refusal after which it hung up.
        reply: Reply,
    },
}

impl SmtpError {
    /// The server's reply, if it gave one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Refused { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// True for 5xx refusals: the same message will be refused again.
    pub fn is_permanent(&self) -> bool {
        self.reply().is_some_and(Reply::is_permanent)
    }

    /// True when the refusal is about the message (its sender, recipients or content:
    /// MAIL, RCPT, DATA, BDAT, the end of data), not about the session (greeting, EHLO,
    /// STARTTLS): only those count towards quarantining a message.
    pub fn is_message_refusal(&self) -> bool {
        match self {
            // 503 (bad sequence) is about the session's state, never the message.
            Self::Refused { reply, .. } if reply.code == 503 => false,
            Self::Refused { stage, .. } => matches!(
                stage,
                Stage::Mail | Stage::Rcpt | Stage::Data | Stage::Chunk | Stage::EndOfData
            ),
            _ => false,
        }
    }

    /// True for everything worth retrying later: 4xx, lost connections, timeouts.
    pub fn is_transient(&self) -> bool {
        !self.is_permanent() && !matches!(self, Self::Tls(_) | Self::StartTlsUnavailable(_))
    }

    /// True when the session is gone (421, I/O, timeout): reconnect before going on.
    pub fn session_lost(&self) -> bool {
        match self {
            // 421: the server is closing. 503: the session's state is not what this side
            // thinks (bad sequence): a new session starts clean.
            Self::Refused { reply, .. } => matches!(reply.code, 421 | 503),
            Self::Io { .. }
            | Self::Timeout { .. }
            | Self::Protocol { .. }
            | Self::Spool(_)
            | Self::NotProcessed { .. }
            | Self::Dropped { .. } => true,
            _ => false,
        }
    }

    /// True when the whole message, end marker included, may have reached the server but
    /// its reply never came back (a lost connection or a timeout at the end of the data):
    /// the server may have accepted it. Such a message must not be sent again in the same
    /// pass, and sending it later is a possible duplicate.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Io {
                stage: Stage::EndOfData,
                ..
            } | Self::Timeout {
                stage: Stage::EndOfData,
                ..
            } | Self::Protocol {
                stage: Stage::EndOfData,
                ..
            }
        )
    }

    /// True for a local fault (the spool), which retrying in this pass would repeat.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Spool(_))
    }
}

/// What EHLO advertised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// True when EHLO worked (false after a HELO fallback).
    pub esmtp: bool,
    /// SIZE and its value (`Some(0)` or bare SIZE: no fixed limit given).
    pub size: Option<u64>,
    /// PIPELINING
    pub pipelining: bool,
    /// CHUNKING
    pub chunking: bool,
    /// 8BITMIME
    pub eightbitmime: bool,
    /// SMTPUTF8
    pub smtputf8: bool,
    /// STARTTLS
    pub starttls: bool,
    /// Every line after the first.
    pub lines: Vec<String>,
}

impl Extensions {
    fn parse(reply: &Reply) -> Self {
        let mut e = Self {
            esmtp: true,
            ..Self::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut w = line.split_whitespace();
            match w.next().map(str::to_ascii_uppercase).as_deref() {
                Some("SIZE") => e.size = Some(w.next().and_then(|v| v.parse().ok()).unwrap_or(0)),
                Some("PIPELINING") => e.pipelining = true,
                Some("CHUNKING") => e.chunking = true,
                Some("8BITMIME") => e.eightbitmime = true,
                Some("SMTPUTF8") => e.smtputf8 = true,
                Some("STARTTLS") => e.starttls = true,
                _ => {}
            }
            e.lines.push(line.clone());
        }
        e
    }

    /// The server's fixed maximum message size, if it gave one.
    pub fn max_size(&self) -> Option<u64> {
        self.size.filter(|&s| s > 0)
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Settings<'a> {
    /// Server host.
    pub host: &'a str,
    /// Server port.
    pub port: u16,
    /// EHLO name.
    pub helo: &'a str,
    /// STARTTLS configuration when required.
    pub starttls: Option<Arc<rustls::ClientConfig>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-command timeout.
    pub command_timeout: Duration,
    /// Whole-message timeout.
    pub data_timeout: Duration,
    /// Pipeline MAIL and RCPT when the server allows it.
    pub pipelining: bool,
}

impl<'a> Settings<'a> {
    /// How the pass, `diagnose` and `check-limits` reach the SMTP transport `t`: its
    /// server and EHLO name, a STARTTLS configuration when required, and the configured
    /// timeouts; `pipelining` says whether MAIL and RCPT may be pipelined.
    pub fn for_transport(
        config: &Config,
        t: &'a SmtpTransport,
        pipelining: bool,
    ) -> Result<Self, TlsError> {
        let starttls = match t.starttls {
            true => Some(net::client_config(
                t.ca_file.as_deref(),
                t.tls_accept_invalid_certs,
                t.tls_fingerprint,
            )?),
            false => None,
        };
        Ok(Self {
            host: &t.host,
            port: t.port,
            helo: &t.helo,
            starttls,
            connect_timeout: config.timeouts.connect,
            command_timeout: config.timeouts.command,
            data_timeout: config.timeouts.data,
            pipelining,
        })
    }
}

/// One message's envelope: addresses that can only be sent as one path each (no CR or
/// LF), valid mailboxes or not (the server judges).
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Reverse path (empty for `<>`).
    pub from: EnvelopeAddress,
    /// Recipients.
    pub to: Vec<EnvelopeAddress>,
}

impl Envelope {
    /// The envelope from `from` (`""` for `<>`) to `to`; an error names the first address
    /// that holds a CR or LF.
    pub fn new(from: &str, to: &[String]) -> Result<Self, AddressError> {
        Ok(Self {
            from: EnvelopeAddress::new(from)?,
            to: to
                .iter()
                .map(|t| EnvelopeAddress::new(t.as_str()))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// `RCPT TO:<to>`.
fn rcpt_command(to: &EnvelopeAddress) -> SmtpCommand {
    SmtpCommand::Rcpt {
        to: to.clone(),
        params: vec![],
    }
}

/// A successful submission.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The reply to the end of data.
    pub reply: Reply,
}

/// An SMTP session.
pub struct SmtpClient {
    conn: SmtpConnection<BoxIo>,
    /// What the replies read so far said.
    tally: Tally,
    /// What the server advertised.
    pub ext: Extensions,
    pipelining: bool,
    /// Transactions written by [`SmtpClient::submit`] whose replies are not read yet.
    flights: VecDeque<Flight>,
    /// Set once a transaction was written in this session (the next starts with RSET).
    began: bool,
    /// The buffer the last message went out of, kept for the next one's stuffed data (no
    /// fresh pages to fault in for every message).
    spare: BytesMut,
    /// The 421 with which the server closed the session: nothing after it was processed.
    closing: Option<Reply>,
    /// Set when a reply timed out or stopped making sense: no later reply is read.
    dead: bool,
    /// Set once a transaction written ahead was refused (or an RSET was): what follows
    /// goes one at a time on this session, each waiting for its MAIL and RCPT replies.
    wary: bool,
    /// Set when [`SmtpClient::submit`] left commands on the wire that no flight tracks
    /// (a spool failure part-way): the session ends once the flights are answered.
    spent: bool,
}

/// Room left behind a DATA transaction's message for the next one's commands (RSET, MAIL,
/// RCPT, DATA), so they join its write without moving it.
const NEXT_ROOM: usize = 1024;

/// The largest emptied message buffer kept for the next message (a larger one is freed).
const SPARE_MAX: usize = 4 * 1024 * 1024;

/// A transaction written ahead of its replies: which replies it is owed, in order.
#[derive(Debug)]
struct Flight {
    /// It starts with RSET (its reply is read and ignored, as [`SmtpClient::rset`] does).
    rset: bool,
    /// RCPT commands.
    rcpts: usize,
    /// BDAT chunks, the last one `LAST` (none for a DATA transaction).
    chunks: usize,
    /// A DATA transaction (no CHUNKING): its message goes out only once DATA is answered
    /// 354, after the replies of MAIL and RCPT said the transaction is the one written.
    by_data: bool,
    /// DATA: the dot-stuffed message, end marker included, until it is sent (room left
    /// for the next transaction's commands, which go out in the same write).
    data: Option<BytesMut>,
    /// DATA: its outcome, when it had to be read before its turn (the replies of a later
    /// transaction come after it on the wire).
    result: Option<Result<Accepted, SmtpError>>,
}

/// A read failure for a transaction whose last chunk was written: the server may have
/// accepted it, so the failure is reported at the end of the data (outcome unknown).
fn at_end(e: SmtpError) -> SmtpError {
    match e {
        SmtpError::Io { source, .. } => SmtpError::Io {
            stage: Stage::EndOfData,
            source,
        },
        SmtpError::Timeout { secs, setting, .. } => SmtpError::Timeout {
            stage: Stage::EndOfData,
            secs,
            setting,
        },
        SmtpError::Protocol { detail, .. } => SmtpError::Protocol {
            stage: Stage::EndOfData,
            detail,
        },
        other => other,
    }
}

/// A write failure before the end marker: the server cannot have the message.
fn data_io(source: io::Error) -> SmtpError {
    SmtpError::Io {
        stage: Stage::Data,
        source,
    }
}

/// A write failure of the end marker: the server may have the message.
fn end_io(source: io::Error) -> SmtpError {
    SmtpError::Io {
        stage: Stage::EndOfData,
        source,
    }
}

/// The spool gave `read` octets of a message of `expected`.
fn short_spool(read: u64, expected: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the spool holds {read} of the message's {expected} octets"),
    )
}

/// True when `code`, a positive or intermediate reply, is one that answers `stage` (RFC
/// 5321 section 4.3.2; RFC 3030 for BDAT). A 2xx or 3xx that answers something else means
/// the replies are out of step with the commands (a hostile or broken server): trusting
/// it could count a message as accepted on another command's reply.
fn answers(stage: Stage, code: u16) -> bool {
    match stage {
        Stage::Greeting | Stage::StartTls => code == 220,
        Stage::Hello | Stage::Mail | Stage::Chunk | Stage::EndOfData => code == 250,
        Stage::Rcpt => matches!(code, 250 | 251),
        Stage::Data => code == 354,
    }
}

fn counts_as_protocol_error(code: u16) -> bool {
    matches!(code, 500 | 501 | 503)
}

/// An SMTP connection over `S`: replies read by a [`ReplyParser`].
pub type SmtpConnection<S> = Connection<S, ReplyParser>;

/// A connection failure at `stage`.
fn conn_error(stage: Stage, e: ConnError) -> SmtpError {
    match e {
        ConnError::Write(source) | ConnError::Flush(source) | ConnError::Read(source) => {
            SmtpError::Io { stage, source }
        }
        ConnError::Closed => SmtpError::Io {
            stage,
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"),
        },
        ConnError::Timeout { secs, setting } => SmtpError::Timeout {
            stage,
            secs,
            setting,
        },
        ConnError::Invalid(e) => SmtpError::Protocol {
            stage,
            detail: e.to_string(),
        },
    }
}

/// A failure writing what ends a transaction's data: before every octet was handed to the
/// connection the server cannot have the whole message ([`Stage::Data`]); after that, or
/// on a timeout, it may have received it all ([`Stage::EndOfData`]: outcome unknown).
fn whole_error(e: ConnError) -> SmtpError {
    match e {
        ConnError::Write(source) => data_io(source),
        ConnError::Flush(source) => end_io(source),
        other => conn_error(Stage::EndOfData, other),
    }
}

/// Sends the queued commands at `stage`, within the `command` timeout.
async fn flush<S: Io>(conn: &mut SmtpConnection<S>, stage: Stage) -> Result<(), SmtpError> {
    let deadline = conn.deadline(Setting::Command);
    conn.send(&deadline).await.map_err(|e| conn_error(stage, e))
}

/// What the replies read so far in a session said.
#[derive(Debug)]
struct Tally {
    /// Replies counted as protocol errors (500, 501, 503).
    protocol_errors: u32,
    /// The last reply read, when it was a refusal (4xx or 5xx).
    last_refusal: Option<Reply>,
    /// Replies read in this session (to tell whether a transaction got any).
    replies: u64,
    /// The refusal after which the server hung up (see [`SmtpError::Dropped`]).
    dropped: Option<Reply>,
    /// When the last reply was read (a session idle longer than [`IDLE_PROBE`] is probed
    /// before transactions are written ahead of its replies).
    last_reply: tokio::time::Instant,
}

impl Tally {
    fn new() -> Self {
        Self {
            protocol_errors: 0,
            last_refusal: None,
            replies: 0,
            dropped: None,
            last_reply: tokio::time::Instant::now(),
        }
    }

    /// The next reply on `conn`, which must be complete by `deadline` as a whole.
    async fn read<S: Io>(
        &mut self,
        conn: &mut SmtpConnection<S>,
        stage: Stage,
        deadline: &Deadline,
    ) -> Result<Reply, SmtpError> {
        let r = match conn.next(deadline).await {
            Ok(r) => r,
            Err(ConnError::Closed) => {
                if conn.buffered().is_empty() {
                    // Hung up at a reply boundary: right after a refusal, a deliberate drop.
                    self.dropped = self.dropped.take().or(self.last_refusal.clone());
                }
                return Err(conn_error(stage, ConnError::Closed));
            }
            Err(e) => return Err(conn_error(stage, e)),
        };
        if conn.transcript().on() {
            conn.transcript().note('S', r.first_line());
        }
        self.last_reply = tokio::time::Instant::now();
        self.replies += 1;
        self.last_refusal = (r.code >= 400).then(|| r.clone());
        if counts_as_protocol_error(r.code) {
            self.protocol_errors += 1;
        }
        if r.code < 400 && !answers(stage, r.code) {
            return Err(SmtpError::Protocol {
                stage,
                detail: format!(
                    "{} does not answer {stage}: the replies are out of step",
                    r.first_line()
                ),
            });
        }
        Ok(r)
    }

    /// The next reply on `conn`, complete within the `command` timeout.
    async fn command_reply<S: Io>(
        &mut self,
        conn: &mut SmtpConnection<S>,
        stage: Stage,
    ) -> Result<Reply, SmtpError> {
        let deadline = conn.deadline(Setting::Command);
        self.read(conn, stage, &deadline).await
    }

    /// EHLO (HELO if refused): what the server advertised.
    async fn hello<S: Io>(
        &mut self,
        conn: &mut SmtpConnection<S>,
        helo: &str,
    ) -> Result<Extensions, SmtpError> {
        conn.queue(&SmtpCommand::Ehlo(helo.into()));
        flush(conn, Stage::Hello).await?;
        let r = self.command_reply(conn, Stage::Hello).await?;
        if r.is_positive() {
            return Ok(Extensions::parse(&r));
        }
        conn.queue(&SmtpCommand::Helo(helo.into()));
        flush(conn, Stage::Hello).await?;
        let r = self.command_reply(conn, Stage::Hello).await?;
        if !r.is_positive() {
            return Err(SmtpError::Refused {
                stage: Stage::Hello,
                reply: r,
            });
        }
        Ok(Extensions::default())
    }
}

impl SmtpClient {
    /// Connects, reads the greeting, says EHLO (HELO if refused), and does STARTTLS when
    /// configured (failing closed).
    pub async fn connect(dialer: &dyn Dialer, s: &Settings<'_>) -> Result<Self, SmtpError> {
        let addr = format!("{}:{}", s.host, s.port);
        let dialed = net::dial(dialer, s.host, s.port, s.connect_timeout).await;
        let io = dialed.map_err(|source| SmtpError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let mut plain = Connection::new(
            io,
            ReplyParser::new(),
            Timeouts {
                command: s.command_timeout,
                data: s.data_timeout,
            },
            Transcript::smtp(),
        );
        let mut tally = Tally::new();
        let greeting = tally.command_reply(&mut plain, Stage::Greeting).await?;
        if !greeting.is_positive() {
            return Err(SmtpError::Refused {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        let ext = tally.hello(&mut plain, s.helo).await?;
        let (conn, ext) = match &s.starttls {
            None => (plain, ext),
            Some(config) => {
                if !ext.starttls {
                    return Err(SmtpError::StartTlsUnavailable(format!(
                        "{addr} does not offer it"
                    )));
                }
                plain.queue(&SmtpCommand::StartTls);
                flush(&mut plain, Stage::StartTls).await?;
                let r = tally.command_reply(&mut plain, Stage::StartTls).await?;
                if r.code != 220 {
                    return Err(SmtpError::StartTlsUnavailable(format!(
                        "the server answered {}",
                        r.first_line()
                    )));
                }
                let target = TlsTarget {
                    config: config.clone(),
                    server_name: s.host,
                    host: s.host,
                    port: s.port,
                    limit: s.connect_timeout,
                };
                let mut tls = plain.start_tls(&target).await?;
                let ext = tally.hello(&mut tls, s.helo).await?;
                (tls.settle(), ext)
            }
        };
        Ok(Self {
            conn,
            tally,
            ext,
            pipelining: s.pipelining,
            flights: VecDeque::new(),
            began: false,
            spare: BytesMut::new(),
            closing: None,
            dead: false,
            spent: false,
            wary: false,
        })
    }

    /// True when the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// Replies this session counted as protocol errors (500, 501, 503).
    pub fn protocol_errors(&self) -> u32 {
        self.tally.protocol_errors
    }

    /// Sends the queued commands at `stage`, within the `command` timeout.
    async fn write(&mut self, stage: Stage) -> Result<(), SmtpError> {
        flush(&mut self.conn, stage).await
    }

    /// Sends the queued commands and data that end a transaction, within the `command`
    /// timeout (see [`whole_error`] for what a failure means).
    async fn write_whole(&mut self) -> Result<(), SmtpError> {
        let deadline = self.conn.deadline(Setting::Command);
        self.conn.send(&deadline).await.map_err(whole_error)
    }

    /// The next reply, complete within the `command` timeout.
    async fn reply(&mut self, stage: Stage) -> Result<Reply, SmtpError> {
        self.tally.command_reply(&mut self.conn, stage).await
    }

    /// The reply to the end of a message's data, complete within the `data` timeout (RFC
    /// 5321 asks a client to wait ten minutes for it: content filters run before it).
    async fn final_reply(&mut self) -> Result<Reply, SmtpError> {
        let r = self.reply_within(Stage::EndOfData, Setting::Data).await?;
        if !self.conn.buffered().is_empty() {
            // Nothing was asked after the end of the data: more bytes mean the replies are
            // out of step, and this one may answer something else.
            return Err(SmtpError::Protocol {
                stage: Stage::EndOfData,
                detail: "more data after the final reply: the replies are out of step".into(),
            });
        }
        Ok(r)
    }

    /// The next reply, which must be complete within `setting`'s timeout as a whole.
    async fn reply_within(&mut self, stage: Stage, setting: Setting) -> Result<Reply, SmtpError> {
        let deadline = self.conn.deadline(setting);
        self.tally.read(&mut self.conn, stage, &deadline).await
    }

    /// Submits one message: `prefix` (a trace header) then `body`. Succeeds only on 2xx at the
    /// end of data with every recipient accepted.
    pub async fn send(
        &mut self,
        env: &Envelope,
        prefix: &[u8],
        body: &Body,
    ) -> Result<Accepted, SmtpError> {
        let mail = self.mail_command(env, prefix, body);
        if self.pipelining && self.ext.pipelining {
            // MAIL and RCPT together; DATA only once they are known to be accepted, so a
            // refused sender costs at most one protocol error per recipient plus one.
            self.conn.queue(&mail);
            env.to
                .iter()
                .for_each(|t| self.conn.queue(&rcpt_command(t)));
            self.write(Stage::Mail).await?;
            let m = self.reply(Stage::Mail).await?;
            let mut refused = None;
            for _ in &env.to {
                let r = self.reply(Stage::Rcpt).await?;
                if !r.is_positive() && refused.is_none() {
                    refused = Some(r);
                }
            }
            if !m.is_positive() {
                return Err(SmtpError::Refused {
                    stage: Stage::Mail,
                    reply: m,
                });
            }
            if let Some(reply) = refused {
                self.rset().await?;
                return Err(SmtpError::Refused {
                    stage: Stage::Rcpt,
                    reply,
                });
            }
        } else {
            self.conn.queue(&mail);
            self.write(Stage::Mail).await?;
            let m = self.reply(Stage::Mail).await?;
            if !m.is_positive() {
                return Err(SmtpError::Refused {
                    stage: Stage::Mail,
                    reply: m,
                });
            }
            for t in &env.to {
                self.conn.queue(&rcpt_command(t));
                self.write(Stage::Rcpt).await?;
                let reply = self.reply(Stage::Rcpt).await?;
                if !reply.is_positive() {
                    self.rset().await?;
                    return Err(SmtpError::Refused {
                        stage: Stage::Rcpt,
                        reply,
                    });
                }
            }
        }
        let fin = if self.ext.chunking {
            self.bdat(prefix, body).await?
        } else {
            self.data(prefix, body).await?
        };
        if fin.is_positive() {
            Ok(Accepted { reply: fin })
        } else {
            Err(SmtpError::Refused {
                stage: Stage::EndOfData,
                reply: fin,
            })
        }
    }

    async fn data(&mut self, prefix: &[u8], body: &Body) -> Result<Reply, SmtpError> {
        self.conn.queue(&SmtpCommand::Data);
        self.write(Stage::Data).await?;
        let r = self.reply(Stage::Data).await?;
        if r.code != 354 {
            // The transaction is still open on the server: end it, or the next MAIL meets
            // "sender already specified".
            self.rset().await?;
            return Err(SmtpError::Refused {
                stage: Stage::Data,
                reply: r,
            });
        }
        tracing::debug!(target: "popbridge::wire", "SMTP C: (message, {} octets)", prefix.len() as u64 + body.len());
        let deadline = self.conn.deadline(Setting::Data);
        // The spool's reads count against the deadline too.
        let limit = self.conn.timeouts().data;
        // Until the end marker is written, the server cannot have the message: a failure
        // before it (the spool read short, the connection broke) is a known refusal.
        let before_end = |e| match e {
            ConnError::Write(source) => data_io(source),
            other => conn_error(Stage::EndOfData, other),
        };
        let at_end = |e| match e {
            ConnError::Write(source) | ConnError::Flush(source) => end_io(source),
            other => conn_error(Stage::EndOfData, other),
        };
        let send = async {
            let mut stuffer = DotStuffer::new(true);
            let mut out = BytesMut::with_capacity(CHUNK + CHUNK / 16);
            stuffer.stuff(prefix, &mut out);
            let mut reader = body.reader().await.map_err(SmtpError::Spool)?;
            let mut buf = vec![0u8; CHUNK.min(body.len() as usize + 1).max(4096)];
            let mut read = 0u64;
            loop {
                let n = reader.read(&mut buf).await.map_err(SmtpError::Spool)?;
                if n == 0 {
                    break;
                }
                read += n as u64;
                stuffer.stuff(&buf[..n], &mut out);
                if out.len() >= CHUNK {
                    self.conn
                        .write_data(&out, &deadline)
                        .await
                        .map_err(before_end)?;
                    out.clear();
                }
            }
            if read != body.len() {
                return Err(SmtpError::Spool(short_spool(read, body.len())));
            }
            // The end marker goes out with the last data: one write, no delayed-ACK stall.
            stuffer.finish(&mut out);
            self.conn
                .write_data(&out, &deadline)
                .await
                .map_err(at_end)?;
            self.conn.flush(&deadline).await.map_err(at_end)
        };
        tokio::time::timeout(limit, send)
            .await
            .map_err(|_| SmtpError::Timeout {
                stage: Stage::EndOfData,
                secs: limit.as_secs(),
                setting: "data",
            })??;
        self.final_reply().await
    }

    /// Queues one BDAT chunk, its command line then its data; returns the stage whose
    /// reply it is owed.
    fn queue_chunk(&mut self, data: &[u8], last: bool) -> Stage {
        self.conn.queue(&SmtpCommand::Bdat {
            size: data.len() as u64,
            last,
        });
        self.conn.queue_data(data);
        if last {
            Stage::EndOfData
        } else {
            Stage::Chunk
        }
    }

    /// Queues `prefix` and `body` as one last BDAT chunk, its command line then its data,
    /// when they fit one [`CHUNK`] in memory; false (nothing queued) when they do not.
    fn queue_whole(&mut self, prefix: &[u8], body: &Body) -> bool {
        let Some(bytes) = body.as_bytes().filter(|b| b.len() + prefix.len() <= CHUNK) else {
            return false;
        };
        self.conn.queue(&SmtpCommand::Bdat {
            size: prefix.len() as u64 + body.len(),
            last: true,
        });
        self.conn.queue_data(prefix);
        self.conn.queue_data(bytes);
        true
    }

    async fn bdat(&mut self, prefix: &[u8], body: &Body) -> Result<Reply, SmtpError> {
        let total = prefix.len() as u64 + body.len();
        tracing::debug!(target: "popbridge::wire", "SMTP C: BDAT (message, {total} octets)");
        if self.queue_whole(prefix, body) {
            // Small message: command and data in one write.
            self.write(Stage::EndOfData).await?;
            return self.final_reply().await;
        }
        let mut reader = body.reader().await.map_err(SmtpError::Spool)?;
        let mut pending: Vec<u8> = prefix.to_vec();
        let mut sent = 0u64;
        let mut read = 0u64;
        let mut eof = false;
        let mut buf = vec![0u8; CHUNK];
        loop {
            while pending.len() < CHUNK && !eof {
                let n = reader
                    .read(&mut buf[..CHUNK - pending.len()])
                    .await
                    .map_err(SmtpError::Spool)?;
                read += n as u64;
                eof = n == 0;
                pending.extend_from_slice(&buf[..n]);
            }
            if (eof && read != body.len()) || read > body.len() {
                // The spool does not hold the message as downloaded: never announce a LAST
                // chunk for it. The transaction is left open; the caller drops the
                // connection.
                return Err(SmtpError::Spool(short_spool(read, body.len())));
            }
            let last = sent + pending.len() as u64 >= total;
            let stage = self.queue_chunk(&pending, last);
            self.write(stage).await?;
            sent += pending.len() as u64;
            pending.clear();
            if last {
                return self.final_reply().await;
            }
            let r = self.reply(Stage::Chunk).await?;
            if !r.is_positive() {
                // RFC 3030: no more chunks for a failed transaction; end it.
                self.rset().await?;
                return Err(SmtpError::Refused {
                    stage: Stage::Chunk,
                    reply: r,
                });
            }
        }
    }

    /// MAIL (with SIZE, BODY=8BITMIME and SMTPUTF8 as the server allows).
    fn mail_command(&self, env: &Envelope, prefix: &[u8], body: &Body) -> SmtpCommand {
        let size = prefix.len() as u64 + body.len();
        let mut params = Vec::new();
        if self.ext.size.is_some() {
            params.push(Param::new("SIZE", size.to_string()).expect("digits are an esmtp-value"));
        }
        if body.has_8bit() && self.ext.eightbitmime {
            params.push(Param::new("BODY", "8BITMIME").expect("a valid ESMTP parameter"));
        }
        let utf8 = !env.from.is_ascii() || env.to.iter().any(|t| !t.is_ascii());
        if utf8 && self.ext.smtputf8 {
            params.push(Param::flag("SMTPUTF8").expect("a valid ESMTP parameter"));
        }
        SmtpCommand::Mail {
            from: env.from.clone(),
            params,
        }
    }

    /// Queues a transaction's envelope: RSET first when `rset`, MAIL, one RCPT per
    /// recipient.
    fn queue_envelope(&mut self, rset: bool, env: &Envelope, prefix: &[u8], body: &Body) {
        if rset {
            self.conn.queue(&SmtpCommand::Rset);
        }
        let mail = self.mail_command(env, prefix, body);
        self.conn.queue(&mail);
        env.to
            .iter()
            .for_each(|t| self.conn.queue(&rcpt_command(t)));
    }

    /// True when transactions may be written ahead of their replies: the server offers
    /// PIPELINING, pipelining is allowed, and the session is still in step.
    pub fn can_pipeline(&self) -> bool {
        self.pipelining
            && self.ext.pipelining
            && !self.wary
            && !self.spent
            && !self.dead
            && self.closing.is_none()
            && self.tally.dropped.is_none()
    }

    /// [`SmtpClient::can_pipeline`] for `body`: with CHUNKING any message; with DATA one
    /// held in memory (it is kept, stuffed, until its 354) of at most [`DATA_AHEAD_MAX`].
    pub fn can_pipeline_body(&self, body: &Body) -> bool {
        self.can_pipeline()
            && (self.ext.chunking || body.as_bytes().is_some_and(|b| b.len() <= DATA_AHEAD_MAX))
    }

    /// Transactions written by [`SmtpClient::submit`] whose outcome is not read yet.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// False once the session cannot take another transaction: the server closed it
    /// (421), a reply timed out or stopped making sense, or a submission broke off.
    pub fn is_usable(&self) -> bool {
        !self.spent && !self.dead && self.closing.is_none() && self.tally.dropped.is_none()
    }

    /// Writes one whole transaction for a single recipient without waiting for a reply:
    /// RSET (after the session's first), MAIL, RCPT, then the data as BDAT chunks, the last
    /// one `LAST`. Its outcome comes from [`SmtpClient::outcome`], in the order submitted.
    ///
    /// An error here is this message's: at [`Stage::EndOfData`] the last chunk may have
    /// reached the server (outcome unknown); before it, the server cannot have the message.
    /// The transactions submitted earlier are still answered by `outcome`.
    pub async fn submit(
        &mut self,
        env: &Envelope,
        prefix: &[u8],
        body: &Body,
    ) -> Result<(), SmtpError> {
        if self.flights.is_empty() && self.tally.last_reply.elapsed() >= IDLE_PROBE {
            // A session idle for a while may have been closed by the server: find out with
            // an RSET first, so that a dead session costs a retry, not an unknown outcome.
            self.conn.queue(&SmtpCommand::Rset);
            self.write(Stage::Mail).await?;
            let r = self.reply(Stage::Mail).await?;
            if r.code == 421 {
                self.closing = Some(r.clone());
                return Err(SmtpError::Refused {
                    stage: Stage::Mail,
                    reply: r,
                });
            }
            self.began = false;
        }
        if !self.ext.chunking {
            return self.submit_data(env, prefix, body).await;
        }
        let rset = self.began;
        self.began = true;
        self.queue_envelope(rset, env, prefix, body);
        let total = prefix.len() as u64 + body.len();
        let mut flight = Flight {
            rset,
            rcpts: env.to.len(),
            chunks: 0,
            by_data: false,
            data: None,
            result: None,
        };
        if self.queue_whole(prefix, body) {
            // The usual case: the whole transaction in one write.
            if let Err(e) = self.write_whole().await {
                self.spent = true;
                return Err(e);
            }
            flight.chunks = 1;
            self.flights.push_back(flight);
            return Ok(());
        }
        if let Err(e) = self.write(Stage::Mail).await {
            self.spent = true;
            return Err(e);
        }
        let mut reader = match body.reader().await {
            Ok(r) => r,
            Err(e) => {
                self.spent = true;
                return Err(SmtpError::Spool(e));
            }
        };
        let mut pending: Vec<u8> = prefix.to_vec();
        let (mut sent, mut read, mut eof) = (0u64, 0u64, false);
        let mut buf = vec![0u8; CHUNK];
        loop {
            while pending.len() < CHUNK && !eof {
                let n = match reader.read(&mut buf[..CHUNK - pending.len()]).await {
                    Ok(n) => n,
                    Err(e) => {
                        self.spent = true;
                        return Err(SmtpError::Spool(e));
                    }
                };
                read += n as u64;
                eof = n == 0;
                pending.extend_from_slice(&buf[..n]);
            }
            if (eof && read != body.len()) || read > body.len() {
                // Never announce a LAST chunk for a message the spool does not hold whole;
                // the commands already written are answered but tracked by no flight.
                self.spent = true;
                return Err(SmtpError::Spool(short_spool(read, body.len())));
            }
            let last = sent + pending.len() as u64 >= total;
            let stage = self.queue_chunk(&pending, last);
            flight.chunks += 1;
            let written = if last {
                self.write_whole().await
            } else {
                self.write(stage).await
            };
            if let Err(e) = written {
                self.spent = true;
                return Err(e);
            }
            sent += pending.len() as u64;
            pending.clear();
            if last {
                self.flights.push_back(flight);
                return Ok(());
            }
        }
    }

    /// Why no transaction can go on in this session, if so: the server closed it (421:
    /// what follows was not processed), or an earlier reply timed out or was out of step
    /// (nothing more is read; `stage` says where the transaction stands: at the end of its
    /// data once that went out, so its outcome is unknown, before it otherwise).
    fn ended(&self, stage: Stage) -> Option<SmtpError> {
        if let Some(reply) = &self.closing {
            return Some(SmtpError::NotProcessed {
                reply: reply.clone(),
            });
        }
        self.dead.then(|| SmtpError::Io {
            stage,
            source: io::Error::other("no reply read: an earlier one timed out or was out of step"),
        })
    }

    /// [`SmtpError::Dropped`] once the server hung up right after a refusal.
    fn hung_up_before(&self) -> Option<SmtpError> {
        (self.tally.dropped.clone()).map(|reply| SmtpError::Dropped { reply })
    }

    /// True when `e`, a read failure, is that hang-up and came before any reply since
    /// `before` (so the transaction being read got none).
    fn hung_up(&self, e: &SmtpError, before: u64) -> bool {
        matches!(e, SmtpError::Io { .. })
            && self.tally.replies == before
            && self.tally.dropped.is_some()
    }

    /// Reads the replies of the oldest transaction written by [`SmtpClient::submit`]: `Ok`
    /// only when MAIL, the RCPT and every chunk were accepted. After a timeout or a reply
    /// out of step, nothing more is read: the later transactions' outcomes are unknown.
    /// Behind a 421, they were not processed ([`SmtpError::NotProcessed`]).
    pub async fn outcome(&mut self) -> Result<Accepted, SmtpError> {
        let Some(f) = self.flights.pop_front() else {
            return Err(SmtpError::Protocol {
                stage: Stage::EndOfData,
                detail: "no transaction in flight".into(),
            });
        };
        if f.by_data {
            // An outcome read ahead stands whatever came after it.
            return self.data_outcome(f).await;
        }
        if let Some(e) = self
            .ended(Stage::EndOfData)
            .or_else(|| self.hung_up_before())
        {
            return Err(e);
        }
        let before = self.tally.replies;
        let r = self.read_flight(f).await;
        match r {
            Err(e) if self.hung_up(&e, before) => Err(self.hung_up_before().unwrap_or(e)),
            Err(e) => {
                if matches!(e, SmtpError::Timeout { .. } | SmtpError::Protocol { .. }) {
                    self.dead = true;
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// DATA without CHUNKING, one message ahead: before this transaction's MAIL, RCPT and
    /// DATA are written, the previous one's are answered and its message sent (it needed
    /// its 354). So the message before goes out with this one's commands, and one round
    /// trip per message remains. Only messages held in memory (see
    /// [`SmtpClient::can_pipeline_body`]).
    async fn submit_data(
        &mut self,
        env: &Envelope,
        prefix: &[u8],
        body: &Body,
    ) -> Result<(), SmtpError> {
        let Some(bytes) = body.as_bytes().cloned() else {
            return Err(SmtpError::Spool(io::Error::other(
                "a spooled message is not written ahead of its replies",
            )));
        };
        let rset = self.began;
        let mut stuffer = DotStuffer::new(true);
        let mut data = std::mem::take(&mut self.spare);
        data.reserve(prefix.len() + bytes.len() + bytes.len() / 32 + 8 + NEXT_ROOM);
        stuffer.stuff(prefix, &mut data);
        stuffer.stuff(&bytes, &mut data);
        stuffer.finish(&mut data);
        // These commands go out right behind the message before them (in its write), so
        // the server reads both at once and answers them in one write: a server that
        // answered the message alone would hold the next replies until this end
        // acknowledged the first (Nagle's algorithm against a delayed ACK: 40 ms).
        self.queue_envelope(rset, env, prefix, body);
        self.conn.queue(&SmtpCommand::Data);
        if !self.advance().await {
            if let Some(e) = self.ended(Stage::Mail) {
                self.conn.discard_queued();
                return Err(e);
            }
            if let Err(e) = self.write(Stage::Mail).await {
                self.spent = true;
                return Err(e);
            }
        }
        self.began = true;
        self.flights.push_back(Flight {
            rset,
            rcpts: env.to.len(),
            chunks: 0,
            by_data: true,
            data: Some(data),
            result: None,
        });
        Ok(())
    }

    /// Reads what is owed before the newest DATA transaction's 354 (the final replies of
    /// those before it), then its MAIL, RCPT and DATA replies, and sends its message with
    /// the queued commands (the next transaction's) behind it. Outcomes read here wait in
    /// their flights. True when the queued commands went out.
    async fn advance(&mut self) -> bool {
        let Some(last) = self.flights.len().checked_sub(1) else {
            return false;
        };
        if !self.flights[last].by_data || self.flights[last].data.is_none() {
            return false;
        }
        for i in 0..last {
            if self.flights[i].result.is_none() {
                let r = self.data_final().await;
                self.flights[i].result = Some(r);
            }
        }
        let f = &mut self.flights[last];
        let (rset, rcpts, data) = (f.rset, f.rcpts, f.data.take());
        match self.data_go(rset, rcpts, data).await {
            Ok(()) => true,
            Err(e) => {
                self.flights[last].result = Some(Err(e));
                false
            }
        }
    }

    /// The outcome of DATA transaction `f`, the oldest in flight.
    async fn data_outcome(&mut self, mut f: Flight) -> Result<Accepted, SmtpError> {
        if let Some(r) = f.result.take() {
            return r;
        }
        if let Some(data) = f.data.take() {
            // No message came after it: its 354 is read now.
            self.data_go(f.rset, f.rcpts, Some(data)).await?;
        }
        self.data_final().await
    }

    /// The replies to a DATA transaction's commands, then its message when DATA is
    /// answered 354 for the transaction written. A 354 after a refused MAIL or RCPT means
    /// the server waits for data of another transaction (one it should have reset): no
    /// data goes out and the session ends here.
    async fn data_go(
        &mut self,
        rset: bool,
        rcpts: usize,
        data: Option<BytesMut>,
    ) -> Result<(), SmtpError> {
        if let Some(e) = self.ended(Stage::Mail) {
            return Err(e);
        }
        let mut stages = Vec::with_capacity(rcpts + 3);
        if rset {
            stages.push(None);
        }
        stages.push(Some(Stage::Mail));
        stages.extend(std::iter::repeat_n(Some(Stage::Rcpt), rcpts));
        stages.push(Some(Stage::Data));
        let mut refused: Option<SmtpError> = None;
        for stage in stages {
            let r = match self.reply(stage.unwrap_or(Stage::Mail)).await {
                Ok(r) => r,
                Err(e) => {
                    self.dead = true;
                    return Err(e);
                }
            };
            let stage = match stage {
                // A refused RSET changes nothing by itself: the MAIL after it tells.
                None if r.code != 421 => continue,
                None => Stage::Mail,
                Some(s) => s,
            };
            if r.code == 421 {
                self.closing = Some(r.clone());
                return Err(refused.unwrap_or(SmtpError::Refused { stage, reply: r }));
            }
            if stage == Stage::Data {
                if r.code != 354 {
                    return Err(refused.unwrap_or(SmtpError::Refused { stage, reply: r }));
                }
                if let Some(e) = refused {
                    self.dead = true;
                    return Err(e);
                }
                break;
            }
            if !r.is_positive() && refused.is_none() {
                refused = Some(SmtpError::Refused { stage, reply: r });
            }
        }
        let data = data.unwrap_or_default();
        tracing::debug!(target: "popbridge::wire", "SMTP C: (message, {} octets on the wire)", data.len());
        // The queued commands (the next transaction's, if any) go out behind it.
        let deadline = self.conn.deadline(Setting::Command);
        match self.conn.send_after(data, &deadline).await {
            Ok(emptied) if emptied.capacity() <= SPARE_MAX => self.spare = emptied,
            Ok(_) => {}
            Err((e, whole)) => {
                self.dead = true;
                return Err(match e {
                    // Every octet of the message was handed over: the server may have it.
                    ConnError::Write(source) if whole => end_io(source),
                    e => whole_error(e),
                });
            }
        }
        Ok(())
    }

    /// The final reply of the oldest DATA transaction whose message went out.
    async fn data_final(&mut self) -> Result<Accepted, SmtpError> {
        if let Some(e) = self
            .ended(Stage::EndOfData)
            .or_else(|| self.hung_up_before())
        {
            return Err(e);
        }
        let stage = Stage::EndOfData;
        let before = self.tally.replies;
        let r = match self.reply_within(stage, Setting::Data).await {
            Ok(r) => r,
            Err(e) if self.hung_up(&e, before) => {
                return Err(self.hung_up_before().unwrap_or(e));
            }
            Err(e) => {
                self.dead = true;
                return Err(at_end(e));
            }
        };
        if r.code == 421 {
            self.closing = Some(r.clone());
        }
        if !r.is_positive() {
            return Err(SmtpError::Refused { stage, reply: r });
        }
        let owed = self.flights.iter().any(|f| f.result.is_none());
        if !owed && !self.conn.buffered().is_empty() {
            self.dead = true;
            return Err(SmtpError::Protocol {
                stage,
                detail: "more data after the final reply: the replies are out of step".into(),
            });
        }
        Ok(Accepted { reply: r })
    }

    async fn read_flight(&mut self, f: Flight) -> Result<Accepted, SmtpError> {
        if f.rset {
            // A refused RSET may leave a failed transaction open (the MAIL after it tells).
            let r = self.reply(Stage::Mail).await.map_err(at_end)?;
            if r.code == 421 {
                self.closing = Some(r.clone());
                return Err(SmtpError::Refused {
                    stage: Stage::Mail,
                    reply: r,
                });
            }
            if !r.is_positive() {
                self.wary = true;
            }
        }
        let mut stages = vec![Stage::Mail];
        stages.extend(std::iter::repeat_n(Stage::Rcpt, f.rcpts));
        stages.extend(std::iter::repeat_n(
            Stage::Chunk,
            f.chunks.saturating_sub(1),
        ));
        let mut refused: Option<SmtpError> = None;
        for stage in stages {
            let r = match self.reply(stage).await {
                Ok(r) => r,
                // Refused already (one recipient): the server cannot have taken it.
                Err(e) => return Err(refused.unwrap_or_else(|| at_end(e))),
            };
            if r.code == 421 {
                // The server is closing: nothing after this reply was processed.
                self.closing = Some(r.clone());
                return Err(refused.unwrap_or(SmtpError::Refused { stage, reply: r }));
            }
            if !r.is_positive() && refused.is_none() {
                refused = Some(SmtpError::Refused { stage, reply: r });
            }
        }
        if refused.is_some() {
            // A refused transaction may stay open on the server: no more are written
            // ahead on this session.
            self.wary = true;
        }
        let stage = Stage::EndOfData;
        let r = self
            .reply_within(stage, Setting::Data)
            .await
            .map_err(at_end)?;
        if r.code == 421 {
            self.closing = Some(r.clone());
        }
        if !r.is_positive() {
            self.wary = true;
            return Err(refused.unwrap_or(SmtpError::Refused { stage, reply: r }));
        }
        if refused.is_some() {
            // One recipient, refused or its sender refused, yet the data accepted: these
            // replies cannot be matched to their commands.
            return Err(SmtpError::Protocol {
                stage,
                detail: format!(
                    "{} accepts the data of a transaction it refused: the replies are out of \
                     step",
                    r.first_line()
                ),
            });
        }
        if self.flights.is_empty() && !self.conn.buffered().is_empty() {
            return Err(SmtpError::Protocol {
                stage,
                detail: "more data after the final reply: the replies are out of step".into(),
            });
        }
        Ok(Accepted { reply: r })
    }

    /// RSET, ignoring a refusal (the next MAIL will tell).
    pub async fn rset(&mut self) -> Result<(), SmtpError> {
        self.conn.queue(&SmtpCommand::Rset);
        self.write(Stage::Mail).await?;
        self.reply(Stage::Mail).await.map(|_| ())
    }

    /// QUIT and close; errors (and the reply) are irrelevant at this point.
    pub async fn quit(mut self) {
        self.conn.queue(&SmtpCommand::Quit);
        if self.write(Stage::Hello).await.is_ok() {
            let _ = self.reply(Stage::Hello).await;
        }
        self.conn.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    //! The pipelined client against a scripted server over an in-memory stream: what is
    //! written before any reply, how outcomes are matched, and what a lost reply means.

    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};

    use super::*;
    use crate::net::{BoxIo, MemoryDialer};

    const EHLO: &str = "250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE 1000000\r\n";

    /// The server end writes `text`.
    async fn send(server: &mut BufReader<DuplexStream>, text: &[u8]) {
        server.get_mut().write_all(text).await.unwrap();
    }

    /// A client connected to the returned server end (greeting and EHLO answered).
    async fn connected() -> (SmtpClient, BufReader<DuplexStream>) {
        connected_with(EHLO).await
    }

    /// [`connected`] to a server whose EHLO reply is `ehlo`.
    async fn connected_with(ehlo: &'static str) -> (SmtpClient, BufReader<DuplexStream>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let slot = Arc::new(Mutex::new(Some(client)));
        let dialer = MemoryDialer::new();
        dialer.route(
            "mx.test",
            25,
            Arc::new(move || {
                let io = slot.lock().unwrap().take().expect("dialled once");
                Box::new(io) as BoxIo
            }),
        );
        let settings = Settings {
            host: "mx.test",
            port: 25,
            helo: "popbridge.test",
            starttls: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
            pipelining: true,
        };
        let mut server = BufReader::new(server);
        let serve = async {
            send(&mut server, b"220 mx.test\r\n").await;
            let mut line = String::new();
            server.read_line(&mut line).await.unwrap();
            assert!(line.starts_with("EHLO"), "{line}");
            send(&mut server, ehlo.as_bytes()).await;
        };
        let (c, ()) = tokio::join!(SmtpClient::connect(&dialer, &settings), serve);
        (c.unwrap(), server)
    }

    fn envelope(n: usize) -> Envelope {
        Envelope::new(
            &format!("sender{n}@example.net"),
            &["info@contoso.test".into()],
        )
        .unwrap()
    }

    fn body(n: usize) -> Body {
        Body::from_bytes(Bytes::from(format!("Subject: {n}\r\n\r\nbody {n}\r\n")))
    }

    /// Reads one transaction as the client wrote it: `[RSET] MAIL RCPT BDAT n LAST` and
    /// the chunk. Returns the MAIL line.
    async fn read_transaction(server: &mut BufReader<DuplexStream>, rset: bool) -> String {
        let mut line = String::new();
        if rset {
            server.read_line(&mut line).await.unwrap();
            assert_eq!(line, "RSET\r\n");
            line.clear();
        }
        server.read_line(&mut line).await.unwrap();
        let mail = line.clone();
        assert!(mail.starts_with("MAIL FROM:"), "{mail}");
        line.clear();
        server.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("RCPT TO:"), "{line}");
        line.clear();
        server.read_line(&mut line).await.unwrap();
        let size: usize = line
            .strip_prefix("BDAT ")
            .and_then(|r| r.strip_suffix(" LAST\r\n"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a BDAT LAST: {line:?}"));
        let mut chunk = vec![0; size];
        server.read_exact(&mut chunk).await.unwrap();
        mail
    }

    /// Three transactions submitted and read by the server, which then sends `replies` and
    /// hangs up.
    async fn three_answered(replies: &[u8]) -> SmtpClient {
        let (mut c, mut server) = connected().await;
        for n in 0..3 {
            c.submit(&envelope(n), b"", &body(n)).await.unwrap();
        }
        for n in 0..3 {
            read_transaction(&mut server, n > 0).await;
        }
        send(&mut server, replies).await;
        c
    }

    #[tokio::test]
    async fn transactions_go_out_before_any_reply_and_outcomes_come_in_order() {
        let (mut c, mut server) = connected().await;
        for n in 0..4 {
            c.submit(&envelope(n), b"", &body(n)).await.unwrap();
        }
        assert_eq!(c.in_flight(), 4);
        // All four are on the wire although the server has not answered anything.
        for n in 0..4 {
            let mail = read_transaction(&mut server, n > 0).await;
            assert!(mail.contains(&format!("sender{n}@")), "{mail}");
        }
        let mut replies = String::new();
        for n in 0..4 {
            if n > 0 {
                replies.push_str("250 reset\r\n");
            }
            replies.push_str("250 sender ok\r\n250 rcpt ok\r\n");
            if n == 2 {
                replies.push_str("554 5.6.0 content refused\r\n");
            } else {
                replies.push_str(&format!("250 queued as {n}\r\n"));
            }
        }
        send(&mut server, replies.as_bytes()).await;
        for n in 0..4 {
            let r = c.outcome().await;
            match n {
                2 => {
                    let e = r.unwrap_err();
                    assert!(e.is_permanent() && e.is_message_refusal(), "{e}");
                    assert!(!e.outcome_unknown());
                }
                _ => assert_eq!(r.unwrap().reply.first_line(), format!("250 queued as {n}")),
            }
        }
        // A refused transaction may stay open: no more are written ahead.
        assert!(!c.can_pipeline());
    }

    #[tokio::test]
    async fn behind_a_421_nothing_was_processed_and_a_missing_final_reply_is_unknown() {
        // The first accepted, the second's MAIL answered 421: the server is closing.
        let mut c =
            three_answered(b"250 ok\r\n250 ok\r\n250 queued\r\n250 reset\r\n421 4.3.2 closing\r\n")
                .await;
        assert!(c.outcome().await.is_ok());
        let second = c.outcome().await.unwrap_err();
        assert!(
            second.session_lost() && !second.outcome_unknown(),
            "{second}"
        );
        let third = c.outcome().await.unwrap_err();
        assert!(
            matches!(third, SmtpError::NotProcessed { .. }),
            "{third}: submitted again, not unknown"
        );

        // Without a 421, a connection that ends after the last chunk was written leaves
        // the outcome unknown: the server may have taken the message.
        let (mut c, mut server) = connected().await;
        c.submit(&envelope(0), b"", &body(0)).await.unwrap();
        read_transaction(&mut server, false).await;
        send(&mut server, b"250 ok\r\n").await;
        drop(server);
        let e = c.outcome().await.unwrap_err();
        assert!(e.outcome_unknown(), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_after_a_refusal_processed_nothing_after_it() {
        // The second's sender refused, and the server hangs up there (Exim's `drop`).
        let mut c = three_answered(
            b"250 ok\r\n250 ok\r\n250 queued\r\n250 reset\r\n550 too many errors\r\n",
        )
        .await;
        assert!(c.outcome().await.is_ok());
        let second = c.outcome().await.unwrap_err();
        assert!(
            second.is_permanent() && second.is_message_refusal(),
            "{second}"
        );
        let third = c.outcome().await.unwrap_err();
        assert!(
            matches!(third, SmtpError::Dropped { .. }) && !third.outcome_unknown(),
            "{third}"
        );
        assert!(!c.is_usable());
    }

    #[tokio::test]
    async fn a_transaction_that_could_not_be_written_whole_is_not_unknown() {
        let (mut c, server) = connected().await;
        drop(server);
        let e = c.submit(&envelope(0), b"", &body(0)).await.unwrap_err();
        assert!(e.session_lost() && !e.outcome_unknown(), "{e}");
        assert_eq!(c.in_flight(), 0);
    }

    /// A small pipelining server without CHUNKING: replies to each command as it reads it;
    /// senders containing "refused" are refused at MAIL. Returns the messages it received.
    async fn data_server(mut server: BufReader<DuplexStream>) -> Vec<String> {
        let mut got = Vec::new();
        let mut sender_ok = false;
        loop {
            let mut line = String::new();
            if server.read_line(&mut line).await.unwrap_or(0) == 0 {
                return got;
            }
            let reply = match &line[..4] {
                "RSET" => {
                    sender_ok = false;
                    "250 reset\r\n".to_string()
                }
                "MAIL" if line.contains("refused") => "550 5.7.1 sender refused\r\n".into(),
                "MAIL" => {
                    sender_ok = true;
                    "250 sender ok\r\n".into()
                }
                "RCPT" if sender_ok => "250 rcpt ok\r\n".into(),
                "RCPT" => "503 5.5.1 need MAIL\r\n".into(),
                "DATA" if sender_ok => {
                    send(&mut server, b"354 go ahead\r\n").await;
                    let mut text = String::new();
                    loop {
                        let mut l = String::new();
                        server.read_line(&mut l).await.unwrap();
                        if l == ".\r\n" {
                            break;
                        }
                        text.push_str(&l);
                    }
                    got.push(text);
                    sender_ok = false;
                    format!("250 queued as {}\r\n", got.len())
                }
                "DATA" => "503 5.5.1 need RCPT\r\n".into(),
                _ => "500 what\r\n".into(),
            };
            send(&mut server, reply.as_bytes()).await;
        }
    }

    #[tokio::test]
    async fn without_chunking_each_message_goes_out_with_the_next_ones_commands() {
        let (mut c, server) = connected_with("250-mx.test\r\n250 PIPELINING\r\n").await;
        let serve = tokio::spawn(data_server(server));
        let envs = [
            envelope(0),
            Envelope::new("refused@example.net", &["info@contoso.test".into()]).unwrap(),
            envelope(2),
        ];
        for (n, env) in envs.iter().enumerate() {
            assert!(c.can_pipeline_body(&body(n)));
            c.submit(env, b"X-Trace: t\r\n", &body(n)).await.unwrap();
        }
        assert_eq!(
            c.outcome().await.unwrap().reply.first_line(),
            "250 queued as 1"
        );
        let refused = c.outcome().await.unwrap_err();
        assert!(
            refused.is_permanent() && refused.is_message_refusal(),
            "{refused}"
        );
        assert_eq!(
            c.outcome().await.unwrap().reply.first_line(),
            "250 queued as 2"
        );
        c.quit().await;
        let got = serve.await.unwrap();
        // The refused message's data never went out; the others arrived whole, the
        // trace header first.
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("X-Trace: t\r\nSubject: 0\r\n"),
            "{got:?}"
        );
        assert!(got[1].contains("body 2"), "{got:?}");
    }

    #[tokio::test]
    async fn messages_of_megabytes_held_in_memory_go_ahead_too_each_with_its_own_data() {
        let (mut c, server) = connected_with("250-mx.test\r\n250 PIPELINING\r\n").await;
        let serve = tokio::spawn(data_server(server));
        // Past the streaming chunk size, and each one's lines its own: the buffer one
        // message went out of carries the next, and must carry nothing of the one before.
        let big = |n: usize, lines: usize| {
            let line = format!("{n}{}\r\n", "x".repeat(998));
            Body::from_bytes(Bytes::from(format!(
                "Subject: {n}\r\n\r\n{}",
                line.repeat(lines)
            )))
        };
        let bodies = [big(0, 2100), big(1, 1500), big(2, 2300)];
        for (n, b) in bodies.iter().enumerate() {
            assert!(b.len() > CHUNK as u64);
            assert!(c.can_pipeline_body(b), "message {n} goes ahead");
            c.submit(&envelope(n), b"", b).await.unwrap();
        }
        assert_eq!(c.in_flight(), 3);
        for n in 0..3 {
            let r = c.outcome().await.unwrap();
            assert_eq!(r.reply.first_line(), format!("250 queued as {}", n + 1));
        }
        c.quit().await;
        let got = serve.await.unwrap();
        assert_eq!(got.len(), 3);
        for (n, (text, b)) in got.iter().zip(&bodies).enumerate() {
            assert_eq!(
                text.as_bytes(),
                &b.as_bytes().unwrap()[..],
                "message {n} arrived as it was"
            );
        }
        // Past the bound, a message waits for the replies before it (one at a time).
        let (c, _server) = connected_with("250-mx.test\r\n250 PIPELINING\r\n").await;
        let over = Body::from_bytes(Bytes::from(vec![b'a'; DATA_AHEAD_MAX + 1]));
        assert!(!c.can_pipeline_body(&over));
    }

    #[tokio::test]
    async fn a_354_after_a_refused_sender_gets_no_data() {
        let (mut c, mut server) = connected_with("250-mx.test\r\n250 PIPELINING\r\n").await;
        c.submit(&envelope(0), b"", &body(0)).await.unwrap();
        // A server that kept another transaction open: MAIL refused, yet DATA says 354.
        send(
            &mut server,
            b"503 sender already given\r\n250 ok\r\n354 go\r\n",
        )
        .await;
        let e = c.outcome().await.unwrap_err();
        assert!(!e.outcome_unknown(), "{e}");
        assert!(!c.is_usable());
        drop(c);
        let mut rest = String::new();
        server.read_to_string(&mut rest).await.unwrap();
        assert!(rest.starts_with("MAIL FROM:"), "{rest}");
        assert!(!rest.contains("body 0"), "no data was sent: {rest}");
    }

    #[tokio::test]
    async fn data_accepted_for_a_refused_sender_is_out_of_step() {
        let (mut c, mut server) = connected().await;
        c.submit(&envelope(0), b"", &body(0)).await.unwrap();
        read_transaction(&mut server, false).await;
        send(&mut server, b"501 bad sender\r\n250 ok\r\n250 queued\r\n").await;
        let e = c.outcome().await.unwrap_err();
        assert!(e.outcome_unknown(), "{e}");
        assert!(!c.is_usable());
    }
}
