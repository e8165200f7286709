//! The POP3 client: connect (plain, STLS, implicit TLS), authenticate, list, and retrieve
//! and delete through a bounded pipeline.
//!
//! The protocol states are types: [`connect`] gives an [`Authorization`], whose
//! `authenticate` gives a [`Transaction`]; only a `Transaction` can RETR, DELE or QUIT.
//! LIST and UIDL are read line by line as they arrive, into the compact forms of
//! [`crate::listing`]; a UIDL scan holds only the UIDs its caller selects.
//! Must never: send a password in clear unless allowed, continue in clear when STLS was
//! required, keep bytes received before a TLS handshake, read an unbounded reply, hold a
//! LIST or UIDL reply whole, or log a secret.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use popbridge_proto::ntlm::{self, NtlmError};
use popbridge_proto::pop3::{
    AuthMethod, Pop3Command, Pop3Reply, Pop3Response, RespCode, Status, MAX_COMMAND_LINE,
    MAX_RESPONSE_LINE,
};
use popbridge_proto::{DotDecoder, DotError, LineDecoder};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{Body, BodyBuilder};
use crate::config::{Account, Config, TlsMode};
use crate::listing::{self, Budget, LineReader, ListingError, Sizes, UidListing, UidScan, Want};
use crate::net::{self, BoxIo, Dialer, TlsError};
use crate::secret::Secret;

/// Longest status line accepted (RFC 2449 says 512; some servers are longer).
const MAX_LINE: usize = 8 * 1024;
/// Bound on a CAPA listing: generous, finite (LIST and UIDL have their own, see
/// [`crate::listing`]).
const MAX_LISTING: u64 = 64 * 1024 * 1024;

/// Why a POP3 operation failed. Every variant that comes from the server keeps its reply.
#[derive(Debug, Error)]
pub enum Pop3Error {
    /// The TCP connection could not be made.
    #[error("cannot connect to POP3 server {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The connection broke.
    #[error("POP3 connection lost: {0}")]
    Io(#[from] io::Error),
    /// The server did not complete its reply in time (the deadline covers the whole reply,
    /// however it trickles in).
    #[error(
        "POP3 server did not complete its reply to {command} within {secs} s (timeouts.{setting})"
    )]
    Timeout {
        /// The command waited for.
        command: String,
        /// The limit.
        secs: u64,
        /// The setting that gave it (`command` or `data`).
        setting: &'static str,
    },
    /// TLS failed (certificate, handshake).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server sent something that is not POP3.
    #[error("POP3 server sent an invalid reply to {command}: {detail}")]
    Protocol {
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// The server answered `-ERR`.
    #[error("POP3 server refused {command}: {}", reply_text(.reply))]
    Refused {
        /// The command.
        command: String,
        /// The full reply.
        reply: Pop3Reply,
    },
    /// The credentials were refused.
    #[error("POP3 authentication failed: {}", reply_text(.reply))]
    Auth {
        /// The full reply.
        reply: Pop3Reply,
    },
    /// `tls = "starttls"` but the server would not: nothing was sent in clear.
    #[error("STLS required but {0}; nothing was sent in clear")]
    StlsUnavailable(String),
    /// A password would have crossed an unencrypted connection.
    #[error("refusing to send credentials in clear to {0}: use tls = \"starttls\" or \"implicit\", or set allow_plaintext = true")]
    Plaintext(String),
    /// APOP needs a timestamp in the greeting.
    #[error("APOP impossible: the server's greeting has no timestamp")]
    NoApopTimestamp,
    /// The server does not offer the configured SASL mechanism.
    #[error("POP3 server does not offer AUTH {0}")]
    MechanismUnavailable(String),
    /// The server's NTLM challenge could not be used; the exchange was cancelled with `*`.
    #[error("POP3 server sent an unusable NTLM challenge ({0}); the login was cancelled")]
    NtlmChallenge(#[source] NtlmChallengeError),
    /// The NTLM challenge could not be answered for this login (an empty user name, or
    /// text the server's character set cannot carry); the exchange was cancelled with `*`.
    #[error("cannot answer the POP3 server's NTLM challenge ({0}); the login was cancelled")]
    NtlmResponse(#[source] NtlmError),
    /// The server sent more after its reply to the last command outstanding: octets no
    /// command asked for. A reply ended early (a message that was not dot-stuffed, an
    /// extra line before a reply), so what was read may belong to another command.
    #[error(
        "POP3 server sent {octets} octets after its reply to {command} that no command asked \
         for: its replies are out of step"
    )]
    Unasked {
        /// The command whose reply came before them.
        command: String,
        /// How many were waiting.
        octets: usize,
    },
    /// A multi-line reply grew past its bound before its end (the connection is out of
    /// step: the rest of the reply is still coming).
    #[error("POP3 server's reply to {command} exceeds {limit} octets")]
    TooLarge {
        /// The command.
        command: String,
        /// The bound applied.
        limit: u64,
    },
}

/// What was wrong with the server's NTLM challenge.
#[derive(Debug, Error)]
pub enum NtlmChallengeError {
    /// The continuation was not base64.
    #[error("not base64")]
    NotBase64,
    /// The decoded octets are not a usable CHALLENGE message.
    #[error(transparent)]
    Message(#[from] NtlmError),
}

fn reply_text(r: &Pop3Reply) -> String {
    r.to_string().trim_end().to_string()
}

impl Pop3Error {
    /// True for failures worth retrying on a later pass without changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Io(_) | Self::Timeout { .. } => true,
            Self::Refused { reply, .. } => reply.code.as_ref().is_some_and(RespCode::is_transient),
            _ => false,
        }
    }

    /// True when the credentials were refused (do not hammer the account).
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. })
    }

    /// The server's reply, when the failure carries one.
    pub fn reply(&self) -> Option<&Pop3Reply> {
        match self {
            Self::Refused { reply, .. } | Self::Auth { reply } => Some(reply),
            _ => None,
        }
    }
}

/// What CAPA listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// CAPA itself worked.
    pub known: bool,
    /// UIDL
    pub uidl: bool,
    /// TOP
    pub top: bool,
    /// USER
    pub user: bool,
    /// PIPELINING
    pub pipelining: bool,
    /// STLS
    pub stls: bool,
    /// SASL mechanisms, upper case.
    pub sasl: Vec<String>,
    /// LOGIN-DELAY seconds.
    pub login_delay: Option<u64>,
    /// EXPIRE value (`NEVER` or days).
    pub expire: Option<String>,
    /// Every line as sent.
    pub lines: Vec<String>,
}

impl Capabilities {
    fn parse(listing: &[u8]) -> Self {
        let mut c = Self {
            known: true,
            ..Self::default()
        };
        for line in String::from_utf8_lossy(listing).lines() {
            let line = line.trim();
            let mut words = line.split_whitespace();
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("UIDL") => c.uidl = true,
                Some("TOP") => c.top = true,
                Some("USER") => c.user = true,
                Some("PIPELINING") => c.pipelining = true,
                Some("STLS") => c.stls = true,
                Some("SASL") => c.sasl = words.map(str::to_ascii_uppercase).collect(),
                Some("LOGIN-DELAY") => c.login_delay = words.next().and_then(|w| w.parse().ok()),
                Some("EXPIRE") => c.expire = words.next().map(str::to_string),
                _ => {}
            }
            if !line.is_empty() {
                c.lines.push(line.to_string());
            }
        }
        c
    }

    /// True when the server deletes messages once retrieved (`EXPIRE 0`).
    pub fn expires_on_retrieval(&self) -> bool {
        self.expire.as_deref() == Some("0")
    }
}

/// Where and how to connect and log in.
#[derive(Clone)]
pub struct Settings<'a> {
    /// Account name for logs.
    pub account: &'a str,
    /// Server host.
    pub host: &'a str,
    /// Server port.
    pub port: u16,
    /// TLS mode.
    pub tls: TlsMode,
    /// Name to verify in the certificate.
    pub server_name: &'a str,
    /// TLS client configuration (required unless `tls` is none).
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Whether credentials may cross an unencrypted connection.
    pub allow_plaintext: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-command timeout.
    pub command_timeout: Duration,
    /// Whole-message timeout.
    pub data_timeout: Duration,
}

impl<'a> Settings<'a> {
    /// How the pass, `diagnose` and `check-limits` reach `account`: its server and TLS
    /// mode, the name its certificate must carry (`tls_server_name`, else the host), a TLS
    /// configuration from its CA settings, and the configured timeouts.
    pub fn for_account(config: &Config, account: &'a Account) -> Result<Self, TlsError> {
        let tls_config = match account.tls {
            TlsMode::None => None,
            _ => Some(net::client_config(
                account.ca_file.as_deref(),
                account.tls_accept_invalid_certs,
                account.tls_fingerprint,
            )?),
        };
        Ok(Self {
            account: &account.name,
            host: &account.host,
            port: account.port,
            tls: account.tls,
            server_name: account.tls_server_name.as_deref().unwrap_or(&account.host),
            tls_config,
            allow_plaintext: account.allow_plaintext,
            connect_timeout: config.timeouts.connect,
            command_timeout: config.timeouts.command,
            data_timeout: config.timeouts.data,
        })
    }
}

/// The framed connection: owns the stream, the input buffer and the output buffer.
struct Wire {
    io: BoxIo,
    inbuf: BytesMut,
    out: BytesMut,
    lines: LineDecoder,
    account: String,
    command_timeout: Duration,
    data_timeout: Duration,
}

impl Wire {
    /// Queues a command; `shown` is what the transcript says (secrets redacted).
    fn queue(&mut self, line: &str, shown: &str) {
        tracing::debug!(target: "popbridge::wire", account = %self.account, "POP3 C: {shown}");
        self.out.extend_from_slice(line.as_bytes());
    }

    async fn flush(&mut self, command: &str) -> Result<(), Pop3Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.out);
        let write = async {
            self.io.write_all(&data).await?;
            self.io.flush().await
        };
        tokio::time::timeout(self.command_timeout, write)
            .await
            .map_err(|_| Pop3Error::Timeout {
                command: command.into(),
                secs: self.command_timeout.as_secs(),
                setting: "command",
            })??;
        self.out = data;
        self.out.clear();
        Ok(())
    }

    /// Reads more input before `deadline` (the whole reply's); an end of stream is an
    /// error here.
    async fn fill(&mut self, command: &str, deadline: &Deadline) -> Result<(), Pop3Error> {
        self.inbuf.reserve(16 * 1024);
        let n = tokio::time::timeout_at(deadline.at, self.io.read_buf(&mut self.inbuf))
            .await
            .map_err(|_| Pop3Error::Timeout {
                command: command.into(),
                secs: deadline.limit.as_secs(),
                setting: deadline.setting,
            })??;
        if n == 0 {
            return Err(Pop3Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("server closed the connection (waiting for the reply to {command})"),
            )));
        }
        Ok(())
    }

    /// A deadline for a status line: the `command` timeout from now.
    fn status_deadline(&self) -> Deadline {
        Deadline::new(self.command_timeout, "command")
    }

    /// A deadline for a multi-line body: the `data` timeout from now.
    fn data_deadline(&self) -> Deadline {
        Deadline::new(self.data_timeout, "data")
    }

    async fn response(&mut self, command: &str) -> Result<Pop3Response, Pop3Error> {
        self.flush(command).await?;
        let deadline = self.status_deadline();
        loop {
            let found = self
                .lines
                .next_line(&mut self.inbuf)
                .map_err(|e| Pop3Error::Protocol {
                    command: command.into(),
                    detail: e.to_string(),
                })?;
            if let Some(line) = found {
                let r = Pop3Response::parse(&line).map_err(|e| Pop3Error::Protocol {
                    command: command.into(),
                    detail: e.to_string(),
                })?;
                match &r {
                    Pop3Response::Status(s) => {
                        tracing::debug!(target: "popbridge::wire", account = %self.account, "POP3 S: {}", reply_text(s))
                    }
                    Pop3Response::Continue(_) => {
                        tracing::debug!(target: "popbridge::wire", account = %self.account, "POP3 S: + (challenge)")
                    }
                }
                return Ok(r);
            }
            self.fill(command, &deadline).await?;
        }
    }

    /// A status reply; `-ERR` becomes `Refused`.
    async fn ok(&mut self, command: &str) -> Result<Pop3Reply, Pop3Error> {
        match self.response(command).await? {
            Pop3Response::Status(r) if r.status == Status::Ok => Ok(r),
            Pop3Response::Status(reply) => Err(Pop3Error::Refused {
                command: command.into(),
                reply,
            }),
            Pop3Response::Continue(_) => Err(Pop3Error::Protocol {
                command: command.into(),
                detail: "unexpected continuation".into(),
            }),
        }
    }

    /// Reads a multi-line body into `sink`, bounded by `limit` octets and, as a whole, by
    /// the `data` timeout. A bare-LF server's `LF . CRLF` ends it too.
    async fn multiline(
        &mut self,
        command: &str,
        limit: u64,
        sink: &mut BodyBuilder,
    ) -> Result<(), Pop3Error> {
        let mut dec = DotDecoder::new(limit).with_lf_terminator();
        let mut chunk = BytesMut::new();
        let deadline = self.data_deadline();
        loop {
            let p =
                dec.decode(&self.inbuf, &mut chunk)
                    .map_err(|DotError::TooLarge { limit }| Pop3Error::TooLarge {
                        command: command.into(),
                        limit,
                    })?;
            let _ = self.inbuf.split_to(p.consumed);
            sink.push(&chunk).await?;
            chunk.clear();
            if p.done {
                self.lines.reset();
                return Ok(());
            }
            self.fill(command, &deadline).await?;
        }
    }

    /// Reads a LIST or UIDL reply into `on_line` line by line as it arrives, never whole:
    /// bounded by [`listing::MAX_OCTETS`], each line by [`listing::MAX_LINE`], and as a
    /// whole by the `data` timeout. A line `on_line` refuses is a protocol error.
    async fn listing_lines(
        &mut self,
        command: &str,
        mut on_line: impl FnMut(&[u8]) -> Result<(), String> + Send,
    ) -> Result<(), Pop3Error> {
        let mut reader = LineReader::new(listing::MAX_OCTETS, listing::MAX_LINE);
        let deadline = self.data_deadline();
        loop {
            let p = reader
                .feed(&self.inbuf, &mut on_line)
                .map_err(|e| match e {
                    ListingError::TooLarge { limit } => Pop3Error::TooLarge {
                        command: command.into(),
                        limit,
                    },
                    ListingError::Invalid(detail) => Pop3Error::Protocol {
                        command: command.into(),
                        detail,
                    },
                })?;
            let _ = self.inbuf.split_to(p.consumed);
            if p.done {
                self.lines.reset();
                return Ok(());
            }
            self.fill(command, &deadline).await?;
        }
    }

    /// Reads a CAPA listing, bounded by [`MAX_LISTING`] and, as a whole, by the `data`
    /// timeout.
    async fn listing(&mut self, command: &str) -> Result<Vec<u8>, Pop3Error> {
        let mut dec = DotDecoder::new(MAX_LISTING).with_lf_terminator();
        let mut out = BytesMut::new();
        let deadline = self.data_deadline();
        loop {
            let p = dec
                .decode(&self.inbuf, &mut out)
                .map_err(|DotError::TooLarge { limit }| Pop3Error::TooLarge {
                    command: command.into(),
                    limit,
                })?;
            let _ = self.inbuf.split_to(p.consumed);
            if p.done {
                self.lines.reset();
                return Ok(out.to_vec());
            }
            self.fill(command, &deadline).await?;
        }
    }

    /// Reads and drops everything until the server closes, within `deadline`: what is
    /// left of a session whose replies can no longer be matched to its commands.
    async fn drain(&mut self, deadline: &Deadline) -> Result<u64, Pop3Error> {
        let mut total = 0u64;
        loop {
            total += self.inbuf.len() as u64;
            self.inbuf.clear();
            match self.fill("QUIT", deadline).await {
                Ok(()) => {}
                Err(Pop3Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(total)
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn capa(&mut self) -> Result<Capabilities, Pop3Error> {
        self.queue("CAPA\r\n", "CAPA");
        match self.response("CAPA").await? {
            Pop3Response::Status(r) if r.is_ok() => {
                Ok(Capabilities::parse(&self.listing("CAPA").await?))
            }
            _ => Ok(Capabilities::default()),
        }
    }
}

/// When a reply must be complete, and which setting said so (for the error).
struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
    setting: &'static str,
}

impl Deadline {
    fn new(limit: Duration, setting: &'static str) -> Self {
        Self {
            at: tokio::time::Instant::now() + limit,
            limit,
            setting,
        }
    }
}

/// Connected, not yet logged in.
pub struct Authorization {
    wire: Wire,
    /// The greeting's APOP timestamp, if any.
    timestamp: Option<String>,
    /// Capabilities before login (after STLS when used).
    pub capabilities: Capabilities,
    /// True when the connection is encrypted.
    pub tls: bool,
    host: String,
    allow_plaintext: bool,
}

/// Connects, reads the greeting, upgrades to TLS as configured, and asks CAPA.
pub async fn connect(dialer: &dyn Dialer, s: &Settings<'_>) -> Result<Authorization, Pop3Error> {
    let addr = format!("{}:{}", s.host, s.port);
    let mut io = net::dial(dialer, s.host, s.port, s.connect_timeout)
        .await
        .map_err(|source| Pop3Error::Connect {
            addr: addr.clone(),
            source,
        })?;
    let tls_config = || {
        s.tls_config.clone().ok_or(TlsError::Handshake {
            server: addr.clone(),
            reason: "no TLS configuration".into(),
        })
    };
    let mut tls = false;
    if s.tls == TlsMode::Implicit {
        io = net::handshake(
            tls_config()?,
            s.server_name,
            s.host,
            s.port,
            io,
            s.connect_timeout,
        )
        .await?;
        tls = true;
    }
    let mut wire = Wire {
        io,
        inbuf: BytesMut::with_capacity(16 * 1024),
        out: BytesMut::new(),
        lines: LineDecoder::new(MAX_LINE),
        account: s.account.to_string(),
        command_timeout: s.command_timeout,
        data_timeout: s.data_timeout,
    };
    let greeting = wire.ok("greeting").await?;
    let timestamp = greeting
        .text
        .find('<')
        .and_then(|a| {
            greeting.text[a..]
                .find('>')
                .map(|b| greeting.text[a..a + b + 1].to_string())
        })
        .filter(|t| t.contains('@'));
    let mut capabilities = wire.capa().await?;
    if s.tls == TlsMode::StartTls {
        // Sent even when CAPA did not list STLS: a refusal is the server's to give, and we
        // fail closed either way.
        wire.queue("STLS\r\n", "STLS");
        match wire.response("STLS").await {
            Ok(Pop3Response::Status(r)) if r.is_ok() => {}
            Ok(Pop3Response::Status(r)) => {
                return Err(Pop3Error::StlsUnavailable(format!(
                    "the server refused STLS: {}",
                    reply_text(&r)
                )))
            }
            Ok(Pop3Response::Continue(_)) => {
                return Err(Pop3Error::StlsUnavailable(
                    "the server answered STLS with a continuation".into(),
                ))
            }
            Err(e) => return Err(e),
        }
        // Anything that arrived before the handshake came in clear: drop it.
        wire.inbuf.clear();
        wire.lines.reset();
        wire.io = net::handshake(
            tls_config()?,
            s.server_name,
            s.host,
            s.port,
            wire.io,
            s.connect_timeout,
        )
        .await?;
        tls = true;
        capabilities = wire.capa().await?;
    }
    Ok(Authorization {
        wire,
        timestamp,
        capabilities,
        tls,
        host: addr,
        allow_plaintext: s.allow_plaintext,
    })
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

impl Authorization {
    /// Logs in; `Auth` for refused credentials, `Refused` for a locked or busy mailbox.
    pub async fn authenticate(
        mut self,
        method: AuthMethod,
        user: &str,
        secret: &Secret,
    ) -> Result<Transaction, Pop3Error> {
        // NTLM sends no password, but its response names the (Windows) account and can be
        // relayed or attacked offline by whoever sees it: it needs TLS like a password.
        let sends_secret = matches!(
            method,
            AuthMethod::User
                | AuthMethod::Plain
                | AuthMethod::Login
                | AuthMethod::Xoauth2
                | AuthMethod::Ntlm
        );
        if sends_secret && !self.tls && !self.allow_plaintext {
            return Err(Pop3Error::Plaintext(self.host.clone()));
        }
        let w = &mut self.wire;
        let result = match method {
            AuthMethod::User => {
                w.queue(
                    &Pop3Command::User(user.into()).to_string(),
                    &format!("USER {user}"),
                );
                let r = w.ok("USER").await;
                match r {
                    Ok(_) => {
                        w.queue(
                            &Pop3Command::Pass(secret.expose().into()).to_string(),
                            "PASS ***",
                        );
                        w.ok("PASS").await
                    }
                    Err(e) => Err(e),
                }
            }
            AuthMethod::Apop => {
                let ts = self.timestamp.clone().ok_or(Pop3Error::NoApopTimestamp)?;
                let digest = md5_hex(format!("{ts}{}", secret.expose()).as_bytes());
                w.queue(
                    &format!("APOP {user} {digest}\r\n"),
                    &format!("APOP {user} ***"),
                );
                w.ok("APOP").await
            }
            AuthMethod::Plain => {
                let payload = B64.encode(format!("\0{user}\0{}", secret.expose()));
                sasl(w, &self.capabilities, "PLAIN", Some(payload)).await
            }
            AuthMethod::Login => {
                sasl_start(w, &self.capabilities, "LOGIN", None).await?;
                w.queue(&format!("{}\r\n", B64.encode(user)), "(username)");
                expect_continue(w, "AUTH LOGIN").await?;
                w.queue(&format!("{}\r\n", B64.encode(secret.expose())), "***");
                w.ok("AUTH LOGIN").await
            }
            AuthMethod::CramMd5 => {
                let challenge = sasl_start(w, &self.capabilities, "CRAM-MD5", None).await?;
                let challenge = B64
                    .decode(challenge.trim())
                    .map_err(|_| Pop3Error::Protocol {
                        command: "AUTH CRAM-MD5".into(),
                        detail: "challenge is not base64".into(),
                    })?;
                let mut mac =
                    Hmac::<Md5>::new_from_slice(secret.expose().as_bytes()).map_err(|_| {
                        Pop3Error::Protocol {
                            command: "AUTH CRAM-MD5".into(),
                            detail: "bad key".into(),
                        }
                    })?;
                mac.update(&challenge);
                let resp = format!("{user} {}", hex::encode(mac.finalize().into_bytes()));
                w.queue(&format!("{}\r\n", B64.encode(resp)), "***");
                w.ok("AUTH CRAM-MD5").await
            }
            AuthMethod::Xoauth2 => {
                let payload = B64.encode(format!(
                    "user={user}\x01auth=Bearer {}\x01\x01",
                    secret.expose()
                ));
                sasl(w, &self.capabilities, "XOAUTH2", Some(payload)).await
            }
            AuthMethod::Ntlm => ntlm_login(w, &self.capabilities, user, secret).await,
        };
        match result {
            Ok(_) => {}
            Err(Pop3Error::Refused { reply, .. }) => {
                let transient = reply.code.as_ref().is_some_and(RespCode::is_transient);
                return Err(if transient {
                    Pop3Error::Refused {
                        command: "login".into(),
                        reply,
                    }
                } else {
                    Pop3Error::Auth { reply }
                });
            }
            Err(e) => return Err(e),
        }
        let mut w = self.wire;
        let capabilities = if self.capabilities.known {
            w.capa().await?
        } else {
            self.capabilities
        };
        Ok(Transaction {
            wire: w,
            capabilities,
            pending: VecDeque::new(),
        })
    }
}

/// Starts a SASL exchange: returns the first challenge.
async fn sasl_start(
    w: &mut Wire,
    caps: &Capabilities,
    mech: &str,
    initial: Option<String>,
) -> Result<String, Pop3Error> {
    if caps.known && !caps.sasl.is_empty() && !caps.sasl.iter().any(|m| m == mech) {
        return Err(Pop3Error::MechanismUnavailable(mech.into()));
    }
    match initial {
        // RFC 5034: an initial response that would make the line longer than 255 octets
        // goes after the continuation instead (long XOAUTH2 tokens).
        Some(i) if format!("AUTH {mech} {i}\r\n").len() <= MAX_COMMAND_LINE => {
            w.queue(&format!("AUTH {mech} {i}\r\n"), &format!("AUTH {mech} ***"));
            Ok(String::new())
        }
        Some(i) => {
            w.queue(&format!("AUTH {mech}\r\n"), &format!("AUTH {mech}"));
            expect_continue(w, &format!("AUTH {mech}")).await?;
            w.queue(&format!("{i}\r\n"), "***");
            Ok(String::new())
        }
        None => {
            w.queue(&format!("AUTH {mech}\r\n"), &format!("AUTH {mech}"));
            expect_continue(w, &format!("AUTH {mech}")).await
        }
    }
}

/// AUTH NTLM as Exchange's POP3 service speaks it: `AUTH NTLM`, `+`, the NEGOTIATE
/// message, `+ CHALLENGE`, the AUTHENTICATE message (NTLMv2), then `+OK` or `-ERR`.
/// A challenge that cannot be used is answered with `*` (cancel) and a typed error.
async fn ntlm_login(
    w: &mut Wire,
    caps: &Capabilities,
    user: &str,
    secret: &Secret,
) -> Result<Pop3Reply, Pop3Error> {
    const COMMAND: &str = "AUTH NTLM";
    sasl_start(w, caps, "NTLM", None).await?;
    w.queue(
        &format!("{}\r\n", B64.encode(ntlm::negotiate())),
        "(NTLM negotiate)",
    );
    let challenge = expect_continue(w, COMMAND).await?;
    let challenge = B64
        .decode(challenge.trim())
        .map_err(|_| NtlmChallengeError::NotBase64)
        .and_then(|bytes| Ok(ntlm::Challenge::parse(&bytes)?));
    let challenge = match challenge {
        Ok(c) => c,
        Err(e) => {
            cancel(w, COMMAND).await;
            return Err(Pop3Error::NtlmChallenge(e));
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let client_challenge: [u8; 8] = rand::random();
    let message = match ntlm::authenticate(
        &challenge,
        user,
        secret.expose(),
        client_challenge,
        ntlm::filetime(now),
    ) {
        Ok(m) => m,
        Err(e) => {
            cancel(w, COMMAND).await;
            return Err(Pop3Error::NtlmResponse(e));
        }
    };
    w.queue(&format!("{}\r\n", B64.encode(message.as_bytes())), "***");
    w.ok(COMMAND).await
}

/// Cancels a SASL exchange (`*`, RFC 5034) and reads the server's answer, whatever it is:
/// the login has failed either way.
async fn cancel(w: &mut Wire, command: &str) {
    w.queue("*\r\n", "*");
    let _ = w.response(command).await;
}

/// A one-step SASL mechanism (PLAIN, XOAUTH2): a continuation instead of the final
/// reply is an error challenge, answered with an empty line.
async fn sasl(
    w: &mut Wire,
    caps: &Capabilities,
    mech: &str,
    initial: Option<String>,
) -> Result<Pop3Reply, Pop3Error> {
    sasl_start(w, caps, mech, initial).await?;
    let command = format!("AUTH {mech}");
    match w.response(&command).await? {
        Pop3Response::Status(r) if r.is_ok() => Ok(r),
        Pop3Response::Status(reply) => Err(Pop3Error::Refused { command, reply }),
        Pop3Response::Continue(_) => {
            w.queue("\r\n", "(empty)");
            w.ok(&command).await
        }
    }
}

async fn expect_continue(w: &mut Wire, command: &str) -> Result<String, Pop3Error> {
    match w.response(command).await? {
        Pop3Response::Continue(c) => Ok(c),
        Pop3Response::Status(reply) if !reply.is_ok() => Err(Pop3Error::Refused {
            command: command.into(),
            reply,
        }),
        Pop3Response::Status(_) => Err(Pop3Error::Protocol {
            command: command.into(),
            detail: "expected a continuation".into(),
        }),
    }
}

/// A command whose reply is still to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// RETR n
    Retr(u32),
    /// DELE n
    Dele(u32),
}

/// The reply to a pipelined command.
#[derive(Debug)]
pub enum Response {
    /// RETR succeeded.
    Retr {
        /// Message number.
        msg: u32,
        /// The message.
        body: Body,
    },
    /// A command answered `-ERR` (the pipeline goes on).
    Refused {
        /// The command.
        pending: Pending,
        /// The reply.
        reply: Pop3Reply,
    },
    /// DELE succeeded.
    Deleted {
        /// Message number.
        msg: u32,
    },
}

/// Logged in: the maildrop is locked for this session.
pub struct Transaction {
    wire: Wire,
    /// Capabilities after login.
    pub capabilities: Capabilities,
    /// Commands sent whose replies are still to be read, each RETR with its bound.
    pending: VecDeque<(Pending, u64)>,
}

impl Transaction {
    /// Every message's size by number, from LIST, read as it arrives (about 4 octets a
    /// message). A bad line, or a number listed twice, is a protocol error.
    pub async fn list_sizes(&mut self) -> Result<Sizes, Pop3Error> {
        self.wire.queue("LIST\r\n", "LIST");
        self.wire.ok("LIST").await?;
        let mut sizes = Sizes::new();
        self.wire
            .listing_lines("LIST", |line| sizes.line(line))
            .await?;
        Ok(sizes)
    }

    /// `(number, size)` of every message, from LIST, by number.
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>, Pop3Error> {
        Ok(self.list_sizes().await?.iter().collect())
    }

    /// Every UIDL entry, held compactly, or `None` when the server has no UIDL (see
    /// [`Transaction::uidl_scan`]).
    pub async fn uidl(&mut self) -> Result<Option<UidListing>, Pop3Error> {
        self.uidl_scan(UidScan::new(Budget::ALL, |_, _| Want::First))
            .await
    }

    /// UIDL, each entry handed to `scan` as it arrives (it keeps what its selection wants,
    /// within its budget), or `None` when the server has no UIDL. A bad line, or a number
    /// listed twice, is a protocol error.
    ///
    /// Only a server that does not offer UIDL gets `None`: one whose CAPA leaves it out,
    /// or, without CAPA, one that refuses it with no response code. A refusal by a server
    /// that offers it, or a temporary one, is an error: switching a mailbox to header-digest
    /// keys for one session could deliver its messages again under their other key.
    pub async fn uidl_scan<F>(
        &mut self,
        mut scan: UidScan<F>,
    ) -> Result<Option<UidListing>, Pop3Error>
    where
        F: FnMut(u32, &str) -> Want + Send,
    {
        if self.capabilities.known && !self.capabilities.uidl {
            return Ok(None);
        }
        self.wire.queue("UIDL\r\n", "UIDL");
        match self.wire.ok("UIDL").await {
            Ok(_) => {}
            Err(Pop3Error::Refused { reply, .. })
                if !self.capabilities.known && reply.code.is_none() =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        self.wire
            .listing_lines("UIDL", |line| scan.line(line))
            .await?;
        scan.finish()
            .map(Some)
            .map_err(|detail| Pop3Error::Protocol {
                command: "UIDL".into(),
                detail,
            })
    }

    /// The header of message `n` (TOP n 0), bounded; `None` when TOP is unavailable (not
    /// in CAPA, or refused). Never pipelined: with replies still owed it is a protocol
    /// error, and octets waiting after its reply make it [`Pop3Error::Unasked`].
    pub async fn top(&mut self, n: u32, spool: &Path) -> Result<Option<Body>, Pop3Error> {
        if self.capabilities.known && !self.capabilities.top {
            return Ok(None);
        }
        if !self.pending.is_empty() {
            return Err(Pop3Error::Protocol {
                command: format!("TOP {n} 0"),
                detail: "not sent: replies to earlier commands are still owed".into(),
            });
        }
        self.wire.queue(
            &Pop3Command::Top { msg: n, lines: 0 }.to_string(),
            &format!("TOP {n} 0"),
        );
        match self.wire.ok("TOP").await {
            Ok(_) => {}
            Err(Pop3Error::Refused { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut b = BodyBuilder::new(spool, u64::MAX);
        self.wire
            .multiline("TOP", crate::body::HEAD_MAX as u64 * 4, &mut b)
            .await?;
        if !self.wire.inbuf.is_empty() {
            return Err(Pop3Error::Unasked {
                command: format!("TOP {n} 0"),
                octets: self.wire.inbuf.len(),
            });
        }
        Ok(Some(b.finish().await?))
    }

    /// The command whose reply comes next.
    pub fn peek(&self) -> Option<Pending> {
        self.pending.front().map(|(p, _)| *p)
    }

    /// True when part of the next reply has already arrived (reading it will not wait
    /// for the server from scratch).
    pub fn buffered(&self) -> bool {
        !self.wire.inbuf.is_empty()
    }

    /// Commands sent whose replies are not read yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Sends `RETR n` without waiting; its body will be read up to `bound` octets (past it
    /// the reply is `TooLarge`). The reply comes from [`Transaction::next`].
    pub fn send_retr(&mut self, n: u32, bound: u64) {
        self.send_with(Pending::Retr(n), bound);
    }

    /// Sends `DELE n` without waiting (the reply comes from [`Transaction::next`]).
    pub fn send_dele(&mut self, n: u32) {
        self.send_with(Pending::Dele(n), 0);
    }

    fn send_with(&mut self, p: Pending, bound: u64) {
        let line = match p {
            Pending::Retr(n) => Pop3Command::Retr(n).to_string(),
            Pending::Dele(n) => Pop3Command::Dele(n).to_string(),
        };
        let shown = line.trim_end().to_string();
        self.wire.queue(&line, &shown);
        self.pending.push_back((p, bound));
    }

    /// Reads the reply to the oldest pending command. A RETR body is bounded as given to
    /// [`Transaction::send_retr`] (past it the connection is out of step: `TooLarge`);
    /// bodies over `threshold` spill to `spool`.
    pub async fn next(&mut self, spool: &Path, threshold: u64) -> Result<Response, Pop3Error> {
        let Some((p, limit)) = self.pending.pop_front() else {
            return Err(Pop3Error::Protocol {
                command: "(pipeline)".into(),
                detail: "no command pending".into(),
            });
        };
        let command = match p {
            Pending::Retr(n) => format!("RETR {n}"),
            Pending::Dele(n) => format!("DELE {n}"),
        };
        let reply = match self.wire.ok(&command).await {
            Ok(r) => r,
            Err(Pop3Error::Refused { reply, .. }) => {
                return Ok(Response::Refused { pending: p, reply })
            }
            Err(e) => return Err(e),
        };
        let _ = reply;
        let response = match p {
            Pending::Dele(msg) => Response::Deleted { msg },
            Pending::Retr(msg) => {
                let mut b = BodyBuilder::new(spool, threshold);
                self.wire.multiline(&command, limit, &mut b).await?;
                Response::Retr {
                    msg,
                    body: b.finish().await?,
                }
            }
        };
        // A server speaks only when asked: with nothing outstanding, octets already waiting
        // mean this reply ended before the server's did (or an extra line came first), so it
        // may not be this command's. It is not used.
        if self.pending.is_empty() && !self.wire.inbuf.is_empty() {
            return Err(Pop3Error::Unasked {
                command,
                octets: self.wire.inbuf.len(),
            });
        }
        Ok(response)
    }

    /// RSET: the server unmarks every message marked deleted in this session (a
    /// read-only client sends it before QUIT, so the QUIT commits nothing).
    pub async fn rset(&mut self) -> Result<Pop3Reply, Pop3Error> {
        self.wire.queue("RSET\r\n", "RSET");
        self.wire.ok("RSET").await
    }

    /// QUIT: the server applies the deletions (UPDATE state). Pending replies are read
    /// first, each as bounded as when it was sent (bodies are dropped, never spooled).
    pub async fn quit(mut self) -> Result<Pop3Reply, Pop3Error> {
        while let Some((p, limit)) = self.pending.pop_front() {
            if let Pending::Retr(n) = p {
                let command = format!("RETR {n}");
                if self.wire.ok(&command).await.is_ok() {
                    let mut sink = BodyBuilder::discarding();
                    self.wire.multiline(&command, limit, &mut sink).await?;
                }
            } else {
                self.pending.push_front((p, limit));
                self.next(Path::new("."), 0).await?;
            }
        }
        self.wire.queue("QUIT\r\n", "QUIT");
        let r = self.wire.ok("QUIT").await?;
        let _ = tokio::time::timeout(self.wire.command_timeout, self.wire.io.shutdown()).await;
        Ok(r)
    }

    /// Sends QUIT and drops the connection without reading anything: what a process
    /// killed right after writing QUIT leaves behind (harnesses' crash fail point). The
    /// server applies the DELEs it was sent; this side never learns whether it did.
    pub async fn quit_and_vanish(mut self) {
        self.wire.queue("QUIT\r\n", "QUIT (then gone)");
        let _ = self.wire.flush("QUIT").await;
    }

    /// QUIT for a session whose replies stopped making sense: sends QUIT without reading
    /// the replies still owed (they cannot be matched to their commands any more) and drops
    /// everything until the server closes, within the `data` timeout. The server applies
    /// the DELEs it was sent, which were sent only for deliveries proven before; whether it
    /// did is unknown (`Ok` only says it closed the connection after the QUIT).
    pub async fn quit_blind(mut self) -> Result<(), Pop3Error> {
        self.pending.clear();
        self.wire
            .queue("QUIT\r\n", "QUIT (replies no longer trusted)");
        self.wire.flush("QUIT").await?;
        let deadline = self.wire.data_deadline();
        let dropped = self.wire.drain(&deadline).await?;
        tracing::debug!(target: "popbridge::wire", account = %self.wire.account, "POP3 S: ({dropped} octets dropped, then closed)");
        Ok(())
    }
}

/// The MAX_RESPONSE_LINE constant is the RFC's; ours is larger on purpose.
const _: () = assert!(MAX_LINE >= MAX_RESPONSE_LINE);
