//! The POP3 client: connect (plain, STLS, implicit TLS), authenticate, list, and retrieve
//! and delete through a bounded pipeline.
//!
//! The protocol states are types: [`connect`] gives an [`Authorization`], whose
//! `authenticate` gives a [`Transaction`]; only a `Transaction` can RETR, DELE or QUIT.
//! LIST and UIDL are read line by line as they arrive, into the compact forms of
//! [`crate::listing`]; a UIDL scan holds only the UIDs its caller selects. The wire is a
//! [`crate::conn::Connection`]: a login that sends a secret ([`login`]) takes only a
//! [`Confidential`] one, so sending it in clear without the account's consent does not
//! compile.
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
    AuthMethod, Pop3Command, Pop3Reply, Pop3Response, RespCode, SaslResponse, Status,
    MAX_COMMAND_LINE, MAX_RESPONSE_LINE,
};
use popbridge_proto::{DotDecoder, DotError, LineDecoder};
use thiserror::Error;

use crate::body::{Body, BodyBuilder};
use crate::config::{Account, Config, TlsMode};
use crate::conn::{
    Confidential, ConnError, Connection, Consented, Deadline, PlaintextConsent, Setting, Timeouts,
    TlsStream, TlsTarget, Transcript,
};
use crate::listing::{self, Budget, LineReader, ListingError, Sizes, UidListing, UidScan, Want};
use crate::net::{self, BoxIo, Dialer, Io, TlsError};
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
    /// The account's consent to credentials over an unencrypted connection, if it gave it.
    pub plaintext: Option<PlaintextConsent>,
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
            plaintext: PlaintextConsent::of(account),
            connect_timeout: config.timeouts.connect,
            command_timeout: config.timeouts.command,
            data_timeout: config.timeouts.data,
        })
    }
}

/// A POP3 connection over `S`: status lines framed by a [`LineDecoder`] of `MAX_LINE` octets.
pub type Pop3Connection<S> = Connection<S, LineDecoder>;

/// A connection failure while waiting for the reply to `command`.
/// A multi-line reply to `command` that went past its limit, as the error it is.
fn too_large(command: &str) -> impl Fn(DotError) -> Pop3Error + '_ {
    move |DotError::TooLarge { limit }| Pop3Error::TooLarge {
        command: command.into(),
        limit,
    }
}

fn conn_error(command: &str, e: ConnError) -> Pop3Error {
    match e {
        ConnError::Write(e) | ConnError::Flush(e) | ConnError::Read(e) => Pop3Error::Io(e),
        ConnError::Closed => Pop3Error::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("server closed the connection (waiting for the reply to {command})"),
        )),
        ConnError::Timeout { secs, setting } => Pop3Error::Timeout {
            command: command.into(),
            secs,
            setting,
        },
        ConnError::Invalid(e) => Pop3Error::Protocol {
            command: command.into(),
            detail: e.to_string(),
        },
    }
}

/// POP3 over the shared connection: status lines, multi-line bodies and listings.
impl<S: Io> Connection<S, LineDecoder> {
    /// Sends what is queued, within the `command` timeout.
    async fn flush_for(&mut self, command: &str) -> Result<(), Pop3Error> {
        let deadline = self.deadline(Setting::Command);
        self.send(&deadline)
            .await
            .map_err(|e| conn_error(command, e))
    }

    /// Sends what is queued and reads one status line (or continuation), complete within
    /// the `command` timeout.
    async fn response(&mut self, command: &str) -> Result<Pop3Response, Pop3Error> {
        self.flush_for(command).await?;
        let deadline = self.deadline(Setting::Command);
        let line = self
            .next(&deadline)
            .await
            .map_err(|e| conn_error(command, e))?;
        let r = Pop3Response::parse(&line).map_err(|e| Pop3Error::Protocol {
            command: command.into(),
            detail: e.to_string(),
        })?;
        if self.transcript().on() {
            match &r {
                Pop3Response::Status(s) => self.transcript().note('S', reply_text(s)),
                Pop3Response::Continue(_) => self.transcript().note('S', "+ (challenge)"),
            }
        }
        Ok(r)
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
        let deadline = self.deadline(Setting::Data);
        loop {
            // Decoded straight into the body while it is held in memory.
            let done = match sink.in_memory() {
                Some(mem) => {
                    let from = mem.len();
                    let done = self.dot_step(command, &mut dec, mem)?;
                    sink.appended(from).await?;
                    done
                }
                None => {
                    let done = self.dot_step(command, &mut dec, &mut chunk)?;
                    sink.push(&chunk).await?;
                    chunk.clear();
                    done
                }
            };
            if self.ended_or_fill(command, done, &deadline).await? {
                return Ok(());
            }
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
        let deadline = self.deadline(Setting::Data);
        loop {
            let p = reader
                .feed(self.buffered(), &mut on_line)
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
            self.consume(p.consumed);
            if self.ended_or_fill(command, p.done, &deadline).await? {
                return Ok(());
            }
        }
    }

    /// Reads a CAPA listing, bounded by [`MAX_LISTING`] and, as a whole, by the `data`
    /// timeout.
    async fn listing(&mut self, command: &str) -> Result<Vec<u8>, Pop3Error> {
        let mut dec = DotDecoder::new(MAX_LISTING).with_lf_terminator();
        let mut out = BytesMut::new();
        let deadline = self.deadline(Setting::Data);
        loop {
            let done = self.dot_step(command, &mut dec, &mut out)?;
            if self.ended_or_fill(command, done, &deadline).await? {
                return Ok(out.to_vec());
            }
        }
    }

    /// Decodes what is buffered of a dot-stuffed reply to `command` into `out` and consumes
    /// it: true when the reply ended.
    fn dot_step(
        &mut self,
        command: &str,
        dec: &mut DotDecoder,
        out: &mut BytesMut,
    ) -> Result<bool, Pop3Error> {
        let p = dec
            .decode(self.buffered(), out)
            .map_err(too_large(command))?;
        self.consume(p.consumed);
        Ok(p.done)
    }

    /// After a step of reading a multi-line reply: true when it `done` (the decoder reset
    /// for the next reply); otherwise false once more of it arrived within `deadline`.
    async fn ended_or_fill(
        &mut self,
        command: &str,
        done: bool,
        deadline: &Deadline,
    ) -> Result<bool, Pop3Error> {
        if done {
            self.reset_decoder();
            return Ok(true);
        }
        self.fill(deadline)
            .await
            .map_err(|e| conn_error(command, e))?;
        Ok(false)
    }

    /// Reads and drops everything until the server closes, within `deadline`: what is
    /// left of a session whose replies can no longer be matched to its commands.
    async fn drain(&mut self, deadline: &Deadline) -> Result<u64, Pop3Error> {
        let mut total = 0u64;
        loop {
            total += self.discard_buffered() as u64;
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(ConnError::Closed) => return Ok(total),
                Err(e) => return Err(conn_error("QUIT", e)),
            }
        }
    }

    async fn capa(&mut self) -> Result<Capabilities, Pop3Error> {
        self.queue(&Pop3Command::Capa);
        self.capa_reply().await
    }

    /// Reads the reply to a CAPA already queued or sent (a refusal: nothing known).
    async fn capa_reply(&mut self) -> Result<Capabilities, Pop3Error> {
        match self.response("CAPA").await? {
            Pop3Response::Status(r) if r.is_ok() => {
                Ok(Capabilities::parse(&self.listing("CAPA").await?))
            }
            _ => Ok(Capabilities::default()),
        }
    }

    /// Reads the greeting (its APOP timestamp, if any) and asks CAPA.
    async fn greeting(&mut self) -> Result<(Option<String>, Capabilities), Pop3Error> {
        let greeting = self.ok("greeting").await?;
        let timestamp = greeting
            .text
            .find('<')
            .and_then(|a| {
                greeting.text[a..]
                    .find('>')
                    .map(|b| greeting.text[a..a + b + 1].to_string())
            })
            .filter(|t| t.contains('@'));
        Ok((timestamp, self.capa().await?))
    }

    /// STLS, failing closed: anything but `+OK` is [`Pop3Error::StlsUnavailable`].
    async fn stls(&mut self) -> Result<(), Pop3Error> {
        self.queue(&Pop3Command::Stls);
        match self.response("STLS").await? {
            Pop3Response::Status(r) if r.is_ok() => Ok(()),
            Pop3Response::Status(r) => Err(Pop3Error::StlsUnavailable(format!(
                "the server refused STLS: {}",
                reply_text(&r)
            ))),
            Pop3Response::Continue(_) => Err(Pop3Error::StlsUnavailable(
                "the server answered STLS with a continuation".into(),
            )),
        }
    }
}

/// The connection of an [`Authorization`], typed by whether credentials may cross it.
enum Link {
    /// Encrypted (implicit TLS or STLS).
    Tls(Box<Pop3Connection<TlsStream<BoxIo>>>),
    /// Plain, for an account with `allow_plaintext = true`.
    Consented(Pop3Connection<Consented<BoxIo>>),
    /// Plain: only a login that sends no secret (APOP, CRAM-MD5).
    Plain(Pop3Connection<BoxIo>),
}

/// Connected, not yet logged in.
pub struct Authorization {
    link: Link,
    /// The greeting's APOP timestamp, if any.
    timestamp: Option<String>,
    /// Capabilities before login (after STLS when used).
    pub capabilities: Capabilities,
    host: String,
}

/// Connects, reads the greeting, upgrades to TLS as configured, and asks CAPA.
pub async fn connect(dialer: &dyn Dialer, s: &Settings<'_>) -> Result<Authorization, Pop3Error> {
    let addr = format!("{}:{}", s.host, s.port);
    let io = net::dial(dialer, s.host, s.port, s.connect_timeout)
        .await
        .map_err(|source| Pop3Error::Connect {
            addr: addr.clone(),
            source,
        })?;
    let conn = Connection::new(
        io,
        LineDecoder::new(MAX_LINE),
        Timeouts {
            command: s.command_timeout,
            data: s.data_timeout,
        },
        Transcript::pop3(s.account),
    );
    let target = || {
        let config = s.tls_config.clone().ok_or(TlsError::Handshake {
            server: addr.clone(),
            reason: "no TLS configuration".into(),
        })?;
        Ok::<_, TlsError>(TlsTarget {
            config,
            server_name: s.server_name,
            host: s.host,
            port: s.port,
            limit: s.connect_timeout,
        })
    };
    let (link, timestamp, capabilities) = match s.tls {
        TlsMode::Implicit => {
            let mut tls = conn.start_tls(&target()?).await?;
            let (timestamp, capabilities) = tls.greeting().await?;
            (Link::Tls(Box::new(tls)), timestamp, capabilities)
        }
        TlsMode::StartTls => {
            let mut plain = conn;
            let (timestamp, _) = plain.greeting().await?;
            // Sent even when CAPA did not list STLS: a refusal is the server's to give, and
            // we fail closed either way.
            plain.stls().await?;
            let mut tls = plain.start_tls(&target()?).await?;
            let capabilities = tls.capa().await?;
            (Link::Tls(Box::new(tls)), timestamp, capabilities)
        }
        TlsMode::None => {
            let mut plain = conn;
            let (timestamp, capabilities) = plain.greeting().await?;
            let link = match &s.plaintext {
                Some(consent) => Link::Consented(plain.consent(consent)),
                None => Link::Plain(plain),
            };
            (link, timestamp, capabilities)
        }
    };
    Ok(Authorization {
        link,
        timestamp,
        capabilities,
        host: addr,
    })
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// What the server offered before login: its capabilities and its greeting's APOP
/// timestamp.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// CAPA before login.
    pub capabilities: &'a Capabilities,
    /// The greeting's `<...@...>` timestamp.
    pub timestamp: Option<&'a str>,
}

/// Logs in with `method` over a connection credentials may cross: TLS, or a plain one for
/// an account that allows it ([`Connection::consent`]). Refused credentials are `Auth`; a
/// mailbox only temporarily unavailable is `Refused`.
///
/// On a plain connection without the account's consent this does not compile:
///
/// ```compile_fail
/// use popbridge::config::AuthMethod;
/// use popbridge::conn::Connection;
/// use popbridge::net::BoxIo;
/// use popbridge::pop3::{login, Offer, Pop3Error};
/// use popbridge::proto::LineDecoder;
/// use popbridge::secret::Secret;
///
/// async fn in_clear(
///     conn: &mut Connection<BoxIo, LineDecoder>,
///     offer: Offer<'_>,
///     secret: &Secret,
/// ) -> Result<(), Pop3Error> {
///     login(conn, offer, AuthMethod::User, "bob", secret).await?;
///     Ok(())
/// }
/// ```
///
/// Over TLS, or with the account's consent, it does:
///
/// ```
/// use popbridge::config::AuthMethod;
/// use popbridge::conn::{Connection, PlaintextConsent, TlsStream};
/// use popbridge::net::BoxIo;
/// use popbridge::pop3::{login, Offer, Pop3Error};
/// use popbridge::proto::LineDecoder;
/// use popbridge::secret::Secret;
///
/// async fn over_tls(
///     conn: &mut Connection<TlsStream<BoxIo>, LineDecoder>,
///     offer: Offer<'_>,
///     secret: &Secret,
/// ) -> Result<(), Pop3Error> {
///     login(conn, offer, AuthMethod::User, "bob", secret).await?;
///     Ok(())
/// }
///
/// async fn in_clear_by_consent(
///     conn: Connection<BoxIo, LineDecoder>,
///     consent: &PlaintextConsent,
///     offer: Offer<'_>,
///     secret: &Secret,
/// ) -> Result<(), Pop3Error> {
///     let mut conn = conn.consent(consent);
///     login(&mut conn, offer, AuthMethod::User, "bob", secret).await?;
///     Ok(())
/// }
/// ```
pub async fn login<S: Io + Confidential>(
    conn: &mut Pop3Connection<S>,
    offer: Offer<'_>,
    method: AuthMethod,
    user: &str,
    secret: &Secret,
) -> Result<Pop3Reply, Pop3Error> {
    let caps = offer.capabilities;
    match method {
        AuthMethod::Apop => digest_login(conn, offer, DigestLogin::Apop, user, secret).await,
        AuthMethod::CramMd5 => digest_login(conn, offer, DigestLogin::CramMd5, user, secret).await,
        AuthMethod::User if caps.pipelining => {
            // RFC 2449 PIPELINING: USER and PASS in one write, one round trip. Both replies
            // are read to stay in step; a refused USER is the error (its PASS is refused
            // too). After a USER reply that never came, nothing more is read.
            conn.queue(&Pop3Command::User(user.into()));
            conn.queue(&Pop3Command::Pass(secret.expose().into()));
            let user = conn.ok("USER").await;
            if matches!(user, Ok(_) | Err(Pop3Error::Refused { .. })) {
                let pass = conn.ok("PASS").await;
                user.and(pass).map_err(login_refused)
            } else {
                user.map_err(login_refused)
            }
        }
        AuthMethod::User => {
            let user_pass = async {
                conn.queue(&Pop3Command::User(user.into()));
                conn.ok("USER").await?;
                conn.queue(&Pop3Command::Pass(secret.expose().into()));
                conn.ok("PASS").await
            };
            user_pass.await.map_err(login_refused)
        }
        AuthMethod::Plain => {
            let payload = format!("\0{user}\0{}", secret.expose());
            let r = sasl(conn, caps, "PLAIN", payload.as_bytes()).await;
            r.map_err(login_refused)
        }
        AuthMethod::Login => {
            // A refusal before the password was asked for is not about the credentials.
            sasl_begin(conn, caps, "LOGIN").await?;
            conn.queue(&SaslResponse::described(user.as_bytes(), "(username)"));
            expect_continue(conn, "AUTH LOGIN").await?;
            conn.queue(&SaslResponse::secret(secret.expose().as_bytes()));
            conn.ok("AUTH LOGIN").await.map_err(login_refused)
        }
        AuthMethod::Xoauth2 => {
            let payload = format!("user={user}\x01auth=Bearer {}\x01\x01", secret.expose());
            let r = sasl(conn, caps, "XOAUTH2", payload.as_bytes()).await;
            r.map_err(login_refused)
        }
        AuthMethod::Ntlm => ntlm_login(conn, caps, user, secret)
            .await
            .map_err(login_refused),
    }
}

/// A refused login: `Auth` (the credentials), or `Refused` when the response code says
/// the mailbox is only temporarily unavailable (locked, busy).
fn login_refused(e: Pop3Error) -> Pop3Error {
    match e {
        Pop3Error::Refused { reply, .. } => {
            if reply.code.as_ref().is_some_and(RespCode::is_transient) {
                Pop3Error::Refused {
                    command: "login".into(),
                    reply,
                }
            } else {
                Pop3Error::Auth { reply }
            }
        }
        other => other,
    }
}

/// A login that sends a digest of the secret, never the secret: fit for any connection.
#[derive(Debug, Clone, Copy)]
enum DigestLogin {
    /// APOP: MD5 of the greeting's timestamp and the secret.
    Apop,
    /// AUTH CRAM-MD5: HMAC-MD5 of the server's challenge.
    CramMd5,
}

async fn digest_login<S: Io>(
    conn: &mut Pop3Connection<S>,
    offer: Offer<'_>,
    digest: DigestLogin,
    user: &str,
    secret: &Secret,
) -> Result<Pop3Reply, Pop3Error> {
    match digest {
        DigestLogin::Apop => {
            let ts = offer.timestamp.ok_or(Pop3Error::NoApopTimestamp)?;
            let digest = md5_hex(format!("{ts}{}", secret.expose()).as_bytes());
            conn.queue(&Pop3Command::Apop {
                name: user.into(),
                digest,
            });
            conn.ok("APOP").await.map_err(login_refused)
        }
        DigestLogin::CramMd5 => {
            let challenge = sasl_begin(conn, offer.capabilities, "CRAM-MD5").await?;
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
            conn.queue(&SaslResponse::secret(resp.as_bytes()));
            conn.ok("AUTH CRAM-MD5").await.map_err(login_refused)
        }
    }
}

impl Authorization {
    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.link, Link::Tls(_))
    }

    /// Logs in; `Auth` for refused credentials, `Refused` for a locked or busy mailbox.
    /// A method that sends a secret (USER/PASS, PLAIN, LOGIN, XOAUTH2, and NTLM, whose
    /// response can be relayed or attacked offline) needs TLS or the account's
    /// `allow_plaintext = true`: otherwise `Plaintext`, and nothing is sent.
    pub async fn authenticate(
        self,
        method: AuthMethod,
        user: &str,
        secret: &Secret,
    ) -> Result<Transaction, Pop3Error> {
        let (conn, before) = self.log_in(method, user, secret).await?;
        Transaction::after_login(conn, before).await
    }

    /// [`Authorization::authenticate`], then LIST: every message's size by number (see
    /// [`Transaction::list_sizes`]). With PIPELINING offered before login, the CAPA after
    /// login, LIST and (when UIDL was offered too) UIDL go out in one write, two round
    /// trips fewer on a distant server; the UIDL reply then waits for
    /// [`Transaction::uidl_scan`], which must come next.
    pub async fn authenticate_and_list(
        self,
        method: AuthMethod,
        user: &str,
        secret: &Secret,
    ) -> Result<(Transaction, Sizes), Pop3Error> {
        let (mut conn, before) = self.log_in(method, user, secret).await?;
        if !(before.known && before.pipelining) {
            let mut txn = Transaction::after_login(conn, before).await?;
            let sizes = txn.list_sizes().await?;
            return Ok((txn, sizes));
        }
        conn.queue(&Pop3Command::Capa);
        conn.queue(&Pop3Command::List(None));
        if before.uidl {
            conn.queue(&Pop3Command::Uidl(None));
        }
        let capabilities = conn.capa_reply().await?;
        let mut txn = Transaction::new(conn, capabilities);
        txn.uidl_ahead = before.uidl;
        let sizes = txn.read_list().await?;
        Ok((txn, sizes))
    }

    /// Logs in: the connection in the TRANSACTION state, and the capabilities offered
    /// before login.
    async fn log_in(
        self,
        method: AuthMethod,
        user: &str,
        secret: &Secret,
    ) -> Result<(Pop3Connection<BoxIo>, Capabilities), Pop3Error> {
        let Self {
            link,
            timestamp,
            capabilities,
            host,
        } = self;
        let offer = Offer {
            capabilities: &capabilities,
            timestamp: timestamp.as_deref(),
        };
        let (result, conn) = match link {
            Link::Tls(mut c) => {
                let r = login(&mut *c, offer, method, user, secret).await;
                (r, (*c).settle())
            }
            Link::Consented(mut c) => {
                (login(&mut c, offer, method, user, secret).await, c.settle())
            }
            Link::Plain(mut c) => {
                let digest = match method {
                    AuthMethod::Apop => DigestLogin::Apop,
                    AuthMethod::CramMd5 => DigestLogin::CramMd5,
                    _ => return Err(Pop3Error::Plaintext(host)),
                };
                let r = digest_login(&mut c, offer, digest, user, secret).await;
                (r, c)
            }
        };
        result?;
        Ok((conn, capabilities))
    }
}

/// Starts a SASL exchange without an initial response: returns the first challenge.
async fn sasl_begin<S: Io>(
    conn: &mut Pop3Connection<S>,
    caps: &Capabilities,
    mech: &str,
) -> Result<String, Pop3Error> {
    offered(caps, mech)?;
    conn.queue(&auth(mech, None));
    expect_continue(conn, &format!("AUTH {mech}")).await
}

/// `AUTH mech [initial]`.
fn auth(mech: &str, initial: Option<String>) -> Pop3Command {
    Pop3Command::Auth {
        mechanism: mech.into(),
        initial,
    }
}

/// `MechanismUnavailable` when CAPA lists SASL mechanisms and not `mech`.
fn offered(caps: &Capabilities, mech: &str) -> Result<(), Pop3Error> {
    if caps.known && !caps.sasl.is_empty() && !caps.sasl.iter().any(|m| m == mech) {
        return Err(Pop3Error::MechanismUnavailable(mech.into()));
    }
    Ok(())
}

/// AUTH NTLM as Exchange's POP3 service speaks it: `AUTH NTLM`, `+`, the NEGOTIATE
/// message, `+ CHALLENGE`, the AUTHENTICATE message (NTLMv2), then `+OK` or `-ERR`.
/// A challenge that cannot be used is answered with `*` (cancel) and a typed error.
async fn ntlm_login<S: Io + Confidential>(
    conn: &mut Pop3Connection<S>,
    caps: &Capabilities,
    user: &str,
    secret: &Secret,
) -> Result<Pop3Reply, Pop3Error> {
    const COMMAND: &str = "AUTH NTLM";
    sasl_begin(conn, caps, "NTLM").await?;
    conn.queue(&SaslResponse::described(
        &ntlm::negotiate(),
        "(NTLM negotiate)",
    ));
    let challenge = expect_continue(conn, COMMAND).await?;
    let challenge = B64
        .decode(challenge.trim())
        .map_err(|_| NtlmChallengeError::NotBase64)
        .and_then(|bytes| Ok(ntlm::Challenge::parse(&bytes)?));
    let challenge = match challenge {
        Ok(c) => c,
        Err(e) => {
            cancel(conn, COMMAND).await;
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
            cancel(conn, COMMAND).await;
            return Err(Pop3Error::NtlmResponse(e));
        }
    };
    conn.queue(&SaslResponse::secret(message.as_bytes()));
    conn.ok(COMMAND).await
}

/// Cancels a SASL exchange (`*`, RFC 5034) and reads the server's answer, whatever it is:
/// the login has failed either way.
async fn cancel<S: Io>(conn: &mut Pop3Connection<S>, command: &str) {
    conn.queue(&SaslResponse::cancel());
    let _ = conn.response(command).await;
}

/// A one-step SASL mechanism (PLAIN, XOAUTH2) with `payload` as its initial response: a
/// continuation instead of the final reply is an error challenge, answered with an empty
/// line.
async fn sasl<S: Io + Confidential>(
    conn: &mut Pop3Connection<S>,
    caps: &Capabilities,
    mech: &str,
    payload: &[u8],
) -> Result<Pop3Reply, Pop3Error> {
    offered(caps, mech)?;
    let command = format!("AUTH {mech}");
    let first = auth(mech, Some(B64.encode(payload)));
    // RFC 5034: an initial response that would make the line longer than 255 octets goes
    // after the continuation instead (long XOAUTH2 tokens).
    if first.to_string().len() <= MAX_COMMAND_LINE {
        conn.queue(&first);
    } else {
        conn.queue(&auth(mech, None));
        expect_continue(conn, &command).await?;
        conn.queue(&SaslResponse::secret(payload));
    }
    match conn.response(&command).await? {
        Pop3Response::Status(r) if r.is_ok() => Ok(r),
        Pop3Response::Status(reply) => Err(Pop3Error::Refused { command, reply }),
        Pop3Response::Continue(_) => {
            conn.queue(&SaslResponse::empty());
            conn.ok(&command).await
        }
    }
}

async fn expect_continue<S: Io>(
    conn: &mut Pop3Connection<S>,
    command: &str,
) -> Result<String, Pop3Error> {
    match conn.response(command).await? {
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

/// What a command in flight is expected to bring back: for a RETR, the octets its body
/// may reach before the reply is `TooLarge`, and the octets LIST gave (a hint only, for
/// the buffer's first size).
#[derive(Debug, Clone, Copy, Default)]
struct Expect {
    bound: u64,
    listed: u64,
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
    conn: Pop3Connection<BoxIo>,
    /// Capabilities after login.
    pub capabilities: Capabilities,
    /// Commands sent whose replies are still to be read, each RETR with its bound.
    pending: VecDeque<(Pending, Expect)>,
    /// Set while the reply to a UIDL sent ahead with LIST is still to be read (by
    /// [`Transaction::uidl_scan`], or dropped before any other command).
    uidl_ahead: bool,
    /// Set once QUIT is queued behind the commands in flight ([`Transaction::queue_quit`]).
    quit_queued: bool,
}

impl Transaction {
    /// A session just logged in, nothing in flight.
    fn new(conn: Pop3Connection<BoxIo>, capabilities: Capabilities) -> Self {
        Self {
            conn,
            capabilities,
            pending: VecDeque::new(),
            uidl_ahead: false,
            quit_queued: false,
        }
    }

    /// A session just logged in, with the capabilities asked again (RFC 2449: they may
    /// change at login) unless CAPA was refused before it (`before` then stays).
    async fn after_login(
        mut conn: Pop3Connection<BoxIo>,
        before: Capabilities,
    ) -> Result<Self, Pop3Error> {
        let capabilities = if before.known {
            conn.capa().await?
        } else {
            before
        };
        Ok(Self::new(conn, capabilities))
    }

    /// Every message's size by number, from LIST, read as it arrives (about 4 octets a
    /// message). A bad line, or a number listed twice, is a protocol error.
    pub async fn list_sizes(&mut self) -> Result<Sizes, Pop3Error> {
        self.settle_ahead().await?;
        self.conn.queue(&Pop3Command::List(None));
        self.read_list().await
    }

    /// Reads the reply to a LIST already queued or sent.
    async fn read_list(&mut self) -> Result<Sizes, Pop3Error> {
        self.conn.ok("LIST").await?;
        let mut sizes = Sizes::new();
        self.conn
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
        let ahead = std::mem::take(&mut self.uidl_ahead);
        if self.capabilities.known && !self.capabilities.uidl {
            if ahead {
                // Offered before login, not after: the same answer as when it was not sent.
                self.drop_uidl_reply().await?;
            }
            return Ok(None);
        }
        if !ahead {
            self.conn.queue(&Pop3Command::Uidl(None));
        }
        match self.conn.ok("UIDL").await {
            Ok(_) => {}
            Err(Pop3Error::Refused { reply, .. })
                if !self.capabilities.known && reply.code.is_none() =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        self.conn
            .listing_lines("UIDL", |line| scan.line(line))
            .await?;
        scan.finish()
            .map(Some)
            .map_err(|detail| Pop3Error::Protocol {
                command: "UIDL".into(),
                detail,
            })
    }

    /// Reads and drops the reply to a UIDL sent ahead and not asked for since, so that the
    /// next command's reply is the next one read.
    async fn settle_ahead(&mut self) -> Result<(), Pop3Error> {
        if std::mem::take(&mut self.uidl_ahead) {
            self.drop_uidl_reply().await?;
        }
        Ok(())
    }

    /// Reads the reply to a UIDL already sent and drops it (bounded like any listing).
    async fn drop_uidl_reply(&mut self) -> Result<(), Pop3Error> {
        match self.conn.ok("UIDL").await {
            Ok(_) => self.conn.listing_lines("UIDL", |_| Ok(())).await,
            Err(Pop3Error::Refused { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The header of message `n` (TOP n 0), bounded; `None` when TOP is unavailable (not
    /// in CAPA, or refused). Never pipelined: with replies still owed it is a protocol
    /// error, and octets waiting after its reply make it [`Pop3Error::Unasked`].
    pub async fn top(&mut self, n: u32, spool: &Path) -> Result<Option<Body>, Pop3Error> {
        self.settle_ahead().await?;
        if self.capabilities.known && !self.capabilities.top {
            return Ok(None);
        }
        if !self.pending.is_empty() {
            return Err(Pop3Error::Protocol {
                command: format!("TOP {n} 0"),
                detail: "not sent: replies to earlier commands are still owed".into(),
            });
        }
        self.conn.queue(&Pop3Command::Top { msg: n, lines: 0 });
        match self.conn.ok("TOP").await {
            Ok(_) => {}
            Err(Pop3Error::Refused { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut b = BodyBuilder::new(spool, u64::MAX);
        self.conn
            .multiline("TOP", crate::body::HEAD_MAX as u64 * 4, &mut b)
            .await?;
        if !self.conn.buffered().is_empty() {
            return Err(Pop3Error::Unasked {
                command: format!("TOP {n} 0"),
                octets: self.conn.buffered().len(),
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
        !self.conn.buffered().is_empty()
    }

    /// Commands sent whose replies are not read yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Sends `RETR n` without waiting; its body, listed as `listed` octets, will be read up
    /// to `bound` octets (past it the reply is `TooLarge`). The reply comes from
    /// [`Transaction::next`].
    pub fn send_retr(&mut self, n: u32, listed: u64, bound: u64) {
        self.send_with(Pending::Retr(n), Expect { bound, listed });
    }

    /// Sends `DELE n` without waiting (the reply comes from [`Transaction::next`]).
    pub fn send_dele(&mut self, n: u32) {
        self.send_with(Pending::Dele(n), Expect::default());
    }

    fn send_with(&mut self, p: Pending, expect: Expect) {
        debug_assert!(!self.quit_queued, "a command after QUIT");
        self.conn.queue(&match p {
            Pending::Retr(n) => Pop3Command::Retr(n),
            Pending::Dele(n) => Pop3Command::Dele(n),
        });
        self.pending.push_back((p, expect));
    }

    /// Queues QUIT behind the commands in flight, to go out in the same write as the last
    /// of them (one round trip fewer at the end of a session); [`Transaction::quit`] then
    /// reads its reply after theirs. QUIT must be the session's last command: the server
    /// applies the DELEs it was sent, so it is queued only once every DELE in flight is for
    /// a delivery the ledger holds and nothing needs the connection dropped without QUIT.
    pub fn queue_quit(&mut self) {
        if !std::mem::replace(&mut self.quit_queued, true) {
            self.conn.queue(&Pop3Command::Quit);
        }
    }

    /// Reads the reply to the oldest pending command. A RETR body is bounded as given to
    /// [`Transaction::send_retr`] (past it the connection is out of step: `TooLarge`);
    /// bodies over `threshold` spill to `spool`.
    pub async fn next(&mut self, spool: &Path, threshold: u64) -> Result<Response, Pop3Error> {
        self.settle_ahead().await?;
        let Some((p, expect)) = self.pending.pop_front() else {
            return Err(Pop3Error::Protocol {
                command: "(pipeline)".into(),
                detail: "no command pending".into(),
            });
        };
        let command = match p {
            Pending::Retr(n) => format!("RETR {n}"),
            Pending::Dele(n) => format!("DELE {n}"),
        };
        let reply = match self.conn.ok(&command).await {
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
                let mut b = BodyBuilder::new(spool, threshold).expecting(expect.listed);
                self.conn.multiline(&command, expect.bound, &mut b).await?;
                Response::Retr {
                    msg,
                    body: b.finish().await?,
                }
            }
        };
        // A server speaks only when asked: with nothing outstanding, octets already waiting
        // mean this reply ended before the server's did (or an extra line came first), so it
        // may not be this command's. It is not used. With QUIT queued, one line may wait:
        // the QUIT reply (read by `quit`).
        let waiting = self.conn.buffered();
        let quit_reply = |w: &[u8]| memchr::memchr(b'\n', w).is_none_or(|i| i + 1 == w.len());
        if self.pending.is_empty()
            && !waiting.is_empty()
            && !(self.quit_queued && quit_reply(waiting))
        {
            return Err(Pop3Error::Unasked {
                command,
                octets: self.conn.buffered().len(),
            });
        }
        Ok(response)
    }

    /// RSET: the server unmarks every message marked deleted in this session (a
    /// read-only client sends it before QUIT, so the QUIT commits nothing).
    pub async fn rset(&mut self) -> Result<Pop3Reply, Pop3Error> {
        self.settle_ahead().await?;
        self.conn.queue(&Pop3Command::Rset);
        self.conn.ok("RSET").await
    }

    /// QUIT: the server applies the deletions (UPDATE state). Pending replies are read
    /// first, each as bounded as when it was sent (bodies are dropped, never spooled).
    pub async fn quit(mut self) -> Result<Pop3Reply, Pop3Error> {
        self.settle_ahead().await?;
        while let Some((p, expect)) = self.pending.pop_front() {
            if let Pending::Retr(n) = p {
                let command = format!("RETR {n}");
                if self.conn.ok(&command).await.is_ok() {
                    let mut sink = BodyBuilder::discarding();
                    self.conn
                        .multiline(&command, expect.bound, &mut sink)
                        .await?;
                }
            } else {
                self.pending.push_front((p, expect));
                self.next(Path::new("."), 0).await?;
            }
        }
        self.queue_quit();
        let r = self.conn.ok("QUIT").await?;
        self.conn.shutdown().await;
        Ok(r)
    }

    /// Sends QUIT and drops the connection without reading anything: what a process
    /// killed right after writing QUIT leaves behind (harnesses' crash fail point). The
    /// server applies the DELEs it was sent; this side never learns whether it did.
    pub async fn quit_and_vanish(mut self) {
        self.queue_quit();
        let _ = self.conn.flush_for("QUIT").await;
        self.conn.transcript().note('C', "(gone without reading)");
    }

    /// QUIT for a session whose replies stopped making sense: sends QUIT without reading
    /// the replies still owed (they cannot be matched to their commands any more) and drops
    /// everything until the server closes, within the `data` timeout. The server applies
    /// the DELEs it was sent, which were sent only for deliveries proven before; whether it
    /// did is unknown (`Ok` only says it closed the connection after the QUIT).
    pub async fn quit_blind(mut self) -> Result<(), Pop3Error> {
        self.pending.clear();
        self.queue_quit();
        self.conn.flush_for("QUIT").await?;
        let deadline = self.conn.deadline(Setting::Data);
        let dropped = self.conn.drain(&deadline).await?;
        self.conn
            .transcript()
            .note('S', format_args!("({dropped} octets dropped, then closed)"));
        Ok(())
    }
}

/// The MAX_RESPONSE_LINE constant is the RFC's; ours is larger on purpose.
const _: () = assert!(MAX_LINE >= MAX_RESPONSE_LINE);
