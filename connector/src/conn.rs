//! One client connection, shared by the POP3 and SMTP clients: the stream, the read buffer
//! with its reply decoder (POP3 status lines, SMTP replies), and the write buffer that
//! commands are queued in; every read and write under a deadline; STARTTLS/STLS by value
//! (the plain connection is consumed and the TLS one returned, which alone says it is TLS);
//! and the types through which credentials may cross only a connection fit for them
//! ([`Confidential`]).
//!
//! Must never: keep octets received before a TLS handshake, wait without a deadline, frame
//! a line longer than its decoder allows, write a command line that is not a `proto` type's
//! wire form, or show a secret in a transcript (commands are logged by their redacted form).

use std::fmt::{self, Write as _};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use popbridge_proto::pop3::{Pop3Command, SaslResponse};
use popbridge_proto::smtp::{Reply, ReplyError, ReplyParser, SmtpCommand};
use popbridge_proto::{LineDecoder, LineError};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::config::Account;
use crate::net::{self, BoxIo, TlsError};

/// A TLS client stream over `S`.
pub type TlsStream<S> = tokio_rustls::client::TlsStream<S>;

/// Read buffer capacity reserved before each read.
const READ_AHEAD: usize = 128 * 1024;
/// A write buffer grown past this by a large transaction is given back once sent.
const KEEP_OUT: usize = 64 * 1024;

/// Turns buffered octets into replies, one at a time, resumably (`Ok(None)`: incomplete).
pub trait Decoder: Send {
    /// One reply.
    type Item;
    /// Why the octets are not a reply.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Takes the first complete reply off `buf`, leaving what follows.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error>;
    /// Forgets any partly read reply (the buffer was discarded or consumed elsewhere).
    fn reset(&mut self);
}

impl Decoder for LineDecoder {
    type Item = BytesMut;
    type Error = LineError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        self.next_line(buf)
    }

    fn reset(&mut self) {
        LineDecoder::reset(self);
    }
}

impl Decoder for ReplyParser {
    type Item = Reply;
    type Error = ReplyError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        self.parse(buf)
    }

    /// A fresh parser with the default bounds (the SMTP client's).
    fn reset(&mut self) {
        *self = ReplyParser::new();
    }
}

/// A line a client writes: a `proto` type whose `Display` is the exact wire line and whose
/// redacted form is what transcripts show.
pub trait Command: fmt::Display {
    /// The line with secrets replaced, without its CRLF.
    fn redacted(&self) -> String;
}

impl Command for Pop3Command {
    fn redacted(&self) -> String {
        Pop3Command::redacted(self)
    }
}

impl Command for SaslResponse {
    fn redacted(&self) -> String {
        SaslResponse::redacted(self)
    }
}

impl Command for SmtpCommand {
    fn redacted(&self) -> String {
        SmtpCommand::redacted(self)
    }
}

/// Which configured timeout a deadline comes from (named in timeout errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `timeouts.command`: a command's write, a status line or an SMTP reply.
    Command,
    /// `timeouts.data`: a whole message, a listing, the reply to the end of data.
    Data,
}

/// When a whole reply (or write) must be complete, and which setting said so.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    limit: Duration,
    setting: &'static str,
}

impl Deadline {
    /// `limit` from now, from `setting` (`"command"` or `"data"`).
    pub fn after(limit: Duration, setting: &'static str) -> Self {
        Self {
            at: Instant::now() + limit,
            limit,
            setting,
        }
    }

    fn timeout(&self) -> ConnError {
        ConnError::Timeout {
            secs: self.limit.as_secs(),
            setting: self.setting,
        }
    }
}

/// The two configured timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `timeouts.command`
    pub command: Duration,
    /// `timeouts.data`
    pub data: Duration,
}

/// Why a read or write failed; each client names the command or stage it was for.
#[derive(Debug, Error)]
pub enum ConnError {
    /// Writing failed before every octet was handed to the stream.
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
    /// Every octet was handed to the stream; pushing them out failed.
    #[error("flush failed: {0}")]
    Flush(#[source] io::Error),
    /// Reading failed.
    #[error("read failed: {0}")]
    Read(#[source] io::Error),
    /// The server closed the connection while a reply was awaited.
    #[error("the server closed the connection")]
    Closed,
    /// The deadline passed first.
    #[error("not complete within {secs} s (timeouts.{setting})")]
    Timeout {
        /// The limit.
        secs: u64,
        /// The setting that gave it.
        setting: &'static str,
    },
    /// The octets are not a reply (a line too long, a malformed reply).
    #[error("{0}")]
    Invalid(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where wire transcripts go (`popbridge::wire` at debug level): the protocol's name and,
/// for POP3, the account.
#[derive(Debug, Clone)]
pub struct Transcript {
    protocol: &'static str,
    account: Option<Arc<str>>,
}

impl Transcript {
    /// A POP3 transcript for `account`.
    pub fn pop3(account: &str) -> Self {
        Self {
            protocol: "POP3",
            account: Some(account.into()),
        }
    }

    /// An SMTP transcript.
    pub fn smtp() -> Self {
        Self {
            protocol: "SMTP",
            account: None,
        }
    }

    /// True when transcripts are logged (what is shown need not be built otherwise).
    pub fn on(&self) -> bool {
        tracing::enabled!(target: "popbridge::wire", tracing::Level::DEBUG)
    }

    /// Logs what the client sent (`C:`) or the server answered (`S:`).
    pub fn note(&self, side: char, shown: impl fmt::Display) {
        let protocol = self.protocol;
        match &self.account {
            Some(account) => tracing::debug!(
                target: "popbridge::wire", account = %account, "{protocol} {side}: {shown}"
            ),
            None => tracing::debug!(target: "popbridge::wire", "{protocol} {side}: {shown}"),
        }
    }
}

/// Where a TLS handshake goes and what it checks.
#[derive(Clone)]
pub struct TlsTarget<'a> {
    /// The client configuration (trust, pin).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the certificate must carry.
    pub server_name: &'a str,
    /// The server's host, for errors.
    pub host: &'a str,
    /// The server's port, for errors.
    pub port: u16,
    /// The handshake's time limit (`timeouts.connect`).
    pub limit: Duration,
}

/// A connection to a server: the stream `S`, the replies `D` decodes.
pub struct Connection<S, D> {
    io: S,
    inbuf: BytesMut,
    out: BytesMut,
    decoder: D,
    timeouts: Timeouts,
    transcript: Transcript,
    /// Set by [`Connection::start_tls`] only: the stream is TLS, boxed or not.
    tls: bool,
}

impl<S, D: Decoder> Connection<S, D> {
    /// A connection over `io`, its replies read by `decoder`.
    pub fn new(io: S, decoder: D, timeouts: Timeouts, transcript: Transcript) -> Self {
        Self {
            io,
            inbuf: BytesMut::with_capacity(READ_AHEAD),
            out: BytesMut::new(),
            decoder,
            timeouts,
            transcript,
            tls: false,
        }
    }

    /// True when the connection went through a TLS handshake.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A deadline `setting`'s timeout from now.
    pub fn deadline(&self, setting: Setting) -> Deadline {
        match setting {
            Setting::Command => Deadline::after(self.timeouts.command, "command"),
            Setting::Data => Deadline::after(self.timeouts.data, "data"),
        }
    }

    /// The configured timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The transcript this connection logs to.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Queues `command`'s wire line (sent by the next [`Connection::send`]); the
    /// transcript shows its redacted form.
    pub fn queue(&mut self, command: &impl Command) {
        if self.transcript.on() {
            self.transcript.note('C', command.redacted());
        }
        // Writing into a BytesMut cannot fail.
        let _ = write!(self.out, "{command}");
    }

    /// Queues octets that are not a command line (message data after BDAT).
    pub fn queue_data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    /// Octets received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.inbuf
    }

    /// Consumes `n` buffered octets read by a decoder of the caller's (a message body, a
    /// listing); [`Connection::reset_decoder`] once done.
    pub fn consume(&mut self, n: usize) {
        self.inbuf.advance(n);
    }

    /// Drops every buffered octet; returns how many there were.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.inbuf.len();
        self.inbuf.clear();
        self.decoder.reset();
        n
    }

    /// Forgets the decoder's partial state after the caller consumed octets itself.
    pub fn reset_decoder(&mut self) {
        self.decoder.reset();
    }

    /// The same connection over `f(stream)`: what was buffered stays.
    fn map_stream<T>(self, f: impl FnOnce(S) -> T) -> Connection<T, D> {
        Connection {
            io: f(self.io),
            inbuf: self.inbuf,
            out: self.out,
            decoder: self.decoder,
            timeouts: self.timeouts,
            transcript: self.transcript,
            tls: self.tls,
        }
    }

    /// This plain connection, for an account that explicitly allows credentials in clear:
    /// a [`Confidential`] connection.
    pub fn consent(self, _consent: &PlaintextConsent) -> Connection<Consented<S>, D> {
        self.map_stream(Consented)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, D: Decoder> Connection<S, D> {
    /// Writes the queued lines and flushes, by `deadline` (nothing queued: nothing to do).
    /// The queue is empty afterwards, whatever happened.
    pub async fn send(&mut self, deadline: &Deadline) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Self { io, out, .. } = self;
        let r = async {
            bounded(deadline, io.write_all(out))
                .await?
                .map_err(ConnError::Write)?;
            bounded(deadline, io.flush())
                .await?
                .map_err(ConnError::Flush)
        }
        .await;
        if out.capacity() > KEEP_OUT {
            *out = BytesMut::new();
        } else {
            out.clear();
        }
        r
    }

    /// Writes `data` (nothing may be queued) without flushing, by `deadline`: a part of a
    /// message streamed after its command.
    pub async fn write_data(&mut self, data: &[u8], deadline: &Deadline) -> Result<(), ConnError> {
        debug_assert!(
            self.out.is_empty(),
            "queued lines would go out after the data"
        );
        bounded(deadline, self.io.write_all(data))
            .await?
            .map_err(ConnError::Write)
    }

    /// Writes `data` with the queued lines behind it, in one write where the stream takes
    /// it whole, and flushes, by `deadline`; gives the buffer back emptied, for the next
    /// message. On failure, also whether every octet of `data` was handed to the stream.
    /// The queue is empty afterwards.
    pub async fn send_after(
        &mut self,
        mut data: BytesMut,
        deadline: &Deadline,
    ) -> Result<BytesMut, (ConnError, bool)> {
        let end = data.len();
        data.extend_from_slice(&self.out);
        self.out.clear();
        let mut written = 0;
        while written < data.len() {
            let n = match bounded(deadline, self.io.write(&data[written..])).await {
                Err(e) => return Err((e, written >= end)),
                Ok(Ok(0)) => Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(r) => r,
            };
            match n {
                Ok(n) => written += n,
                Err(e) => return Err((ConnError::Write(e), written >= end)),
            }
        }
        bounded(deadline, self.io.flush())
            .await
            .map_err(|e| (e, true))?
            .map_err(|e| (ConnError::Flush(e), true))?;
        data.clear();
        Ok(data)
    }

    /// Drops the queued lines unsent (the session they were for ended).
    pub fn discard_queued(&mut self) {
        self.out.clear();
    }

    /// Flushes what [`Connection::write_data`] wrote, by `deadline`.
    pub async fn flush(&mut self, deadline: &Deadline) -> Result<(), ConnError> {
        bounded(deadline, self.io.flush())
            .await?
            .map_err(ConnError::Flush)
    }

    /// Reads more octets into the buffer by `deadline` (what was buffered stays); the end
    /// of the stream is [`ConnError::Closed`].
    pub async fn fill(&mut self, deadline: &Deadline) -> Result<(), ConnError> {
        use tokio::io::AsyncReadExt;
        self.inbuf.reserve(READ_AHEAD);
        let n = bounded(deadline, self.io.read_buf(&mut self.inbuf))
            .await?
            .map_err(ConnError::Read)?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }

    /// The next reply, complete by `deadline` however it trickles in; octets after it stay
    /// buffered (pipelined replies).
    pub async fn next(&mut self, deadline: &Deadline) -> Result<D::Item, ConnError> {
        loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(item)) => return Ok(item),
                Ok(None) => {}
                Err(e) => return Err(ConnError::Invalid(Box::new(e))),
            }
            self.fill(deadline).await?;
        }
    }

    /// Closes the sending side, within the `command` timeout; errors do not matter here.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.timeouts.command, self.io.shutdown()).await;
    }

    /// STARTTLS or STLS once the server agreed, or implicit TLS before anything was read:
    /// consumes this connection and returns it over TLS. Octets buffered before the
    /// handshake came in clear and are dropped.
    pub async fn start_tls(
        self,
        target: &TlsTarget<'_>,
    ) -> Result<Connection<TlsStream<S>, D>, TlsError> {
        debug_assert!(self.out.is_empty(), "queued lines would go out over TLS");
        let Self {
            io,
            mut inbuf,
            out,
            mut decoder,
            timeouts,
            transcript,
            tls: _,
        } = self;
        inbuf.clear();
        decoder.reset();
        let io = net::handshake(
            target.config.clone(),
            target.server_name,
            target.host,
            target.port,
            io,
            target.limit,
        )
        .await?;
        Ok(Connection {
            io,
            inbuf,
            out,
            decoder,
            timeouts,
            transcript,
            tls: true,
        })
    }
}

/// `f` by `deadline`: its output, or [`ConnError::Timeout`].
async fn bounded<F: std::future::Future>(
    deadline: &Deadline,
    f: F,
) -> Result<F::Output, ConnError> {
    tokio::time::timeout_at(deadline.at, f)
        .await
        .map_err(|_| deadline.timeout())
}

impl<D: Decoder> Connection<Consented<BoxIo>, D> {
    /// The connection over its dialled stream again, once the login is done.
    pub fn settle(self) -> Connection<BoxIo, D> {
        self.map_stream(|c| c.0)
    }
}

impl<D: Decoder> Connection<TlsStream<BoxIo>, D> {
    /// The connection over a boxed stream (still TLS: [`Connection::is_tls`] says so), so
    /// that a session has one type whatever its security.
    pub fn settle(self) -> Connection<BoxIo, D> {
        self.map_stream(|t| Box::new(t) as BoxIo)
    }
}

mod sealed {
    pub trait Sealed {}
    impl<S> Sealed for super::TlsStream<S> {}
    impl<S> Sealed for super::Consented<S> {}
}

/// A stream credentials may cross: TLS, or a plain one whose account explicitly allows it
/// ([`Consented`]). Sealed: no other stream can claim it, so a function that takes a
/// `Connection<S, _>` with `S: Confidential` cannot be called on a plain connection.
pub trait Confidential: sealed::Sealed {}

impl<S> Confidential for TlsStream<S> {}
impl<S> Confidential for Consented<S> {}

/// An account's explicit consent to credentials in clear (`allow_plaintext = true`): the
/// only way to a [`Consented`] connection.
///
/// It cannot be made by hand:
///
/// ```compile_fail
/// let forged = popbridge::conn::PlaintextConsent(());
/// ```
#[derive(Debug, Clone)]
pub struct PlaintextConsent(());

impl PlaintextConsent {
    /// The consent of `account`, when its configuration gives it: the connector's only way
    /// to one.
    pub fn of(account: &Account) -> Option<Self> {
        account.allow_plaintext.then_some(Self(()))
    }

    /// The consent of the operator of a tool that reads a mailbox outside any account
    /// (`poplab capture`), given on its own command line. Never used by the connector.
    pub fn by_operator() -> Self {
        Self(())
    }
}

/// A plain stream its account allows credentials on (see [`Connection::consent`]).
pub struct Consented<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for Consented<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Consented<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! The connection over an in-memory stream: deadlines over a whole reply, leftover
    //! octets, and STARTTLS dropping what came in clear.

    use super::*;
    use tokio::io::AsyncWriteExt;

    fn timeouts() -> Timeouts {
        Timeouts {
            command: Duration::from_secs(5),
            data: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_that_trickles_in_is_bounded_as_a_whole_and_leftovers_stay() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut c = Connection::new(client, LineDecoder::new(64), timeouts(), Transcript::smtp());
        server.write_all(b"+OK one\r\n+OK tw").await.unwrap();
        let d = c.deadline(Setting::Command);
        assert_eq!(&c.next(&d).await.unwrap()[..], b"+OK one\r\n");
        // The rest of the second line never comes: the deadline covers the whole reply.
        let e = c.next(&d).await.unwrap_err();
        assert!(
            matches!(
                e,
                ConnError::Timeout {
                    secs: 5,
                    setting: "command"
                }
            ),
            "{e}"
        );
        assert_eq!(c.buffered(), b"+OK tw");
        server.write_all(b"o\r\n").await.unwrap();
        let d = c.deadline(Setting::Data);
        assert_eq!(&c.next(&d).await.unwrap()[..], b"+OK two\r\n");
        drop(server);
        assert!(matches!(c.next(&d).await, Err(ConnError::Closed)));
    }

    #[tokio::test]
    async fn queued_lines_go_out_in_one_write_and_a_long_line_is_refused() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut c = Connection::new(client, LineDecoder::new(8), timeouts(), Transcript::smtp());
        c.queue(&Pop3Command::Retr(1));
        c.queue(&Pop3Command::Dele(1));
        c.send(&c.deadline(Setting::Command)).await.unwrap();
        let mut got = [0u8; 16];
        use tokio::io::AsyncReadExt;
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"RETR 1\r\nDELE 1\r\n");
        server.write_all(b"123456789\r\n").await.unwrap();
        let d = c.deadline(Setting::Command);
        assert!(matches!(c.next(&d).await, Err(ConnError::Invalid(_))));
    }
}
