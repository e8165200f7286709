//! A server connection: plain or TLS (upgraded by value for STLS and STARTTLS), every read
//! and write bounded by a deadline, and an optional sending-speed limit.
//!
//! Must never: wait on the client without a deadline, or keep a half-upgraded stream
//! (an upgrade consumes the plain connection and gives back the TLS one, or an error).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;

/// The session's transport.
pub enum MaybeTls<S> {
    /// Clear text.
    Plain(S),
    /// After a handshake.
    Tls(Box<TlsStream<S>>),
}

impl<S> MaybeTls<S> {
    /// True once the handshake completed.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// True for the errors that mean the peer went away (not a server fault).
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

/// One session's connection: the transport, the deadline of each read and write, and
/// the sending speed limit.
pub struct Conn<S> {
    stream: MaybeTls<S>,
    deadline: Duration,
    throttle: Option<u64>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A plain connection; reads and writes time out after `deadline`, sending goes at
    /// most `throttle` octets a second when set.
    pub fn new(stream: S, deadline: Duration, throttle: Option<u64>) -> Self {
        Self {
            stream: MaybeTls::Plain(stream),
            deadline,
            throttle,
        }
    }

    /// True once the TLS handshake completed.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// True when sending is speed-limited.
    pub fn is_throttled(&self) -> bool {
        self.throttle.is_some()
    }

    /// Reads what the client sent into `buf`; `Ok(0)` at end of stream, `TimedOut` when
    /// nothing came within the deadline.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        timeout(self.deadline, self.stream.read_buf(buf))
            .await
            .map_err(|_| timed_out("client idle"))?
    }

    /// Writes all of `data` (at the speed limit, if any) without flushing; `TimedOut`
    /// when the client stops reading.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(rate) = self.throttle else {
            return timeout(self.deadline, self.stream.write_all(data))
                .await
                .map_err(|_| timed_out("client not reading"))?;
        };
        let chunk = (rate / 20).clamp(1, 64 * 1024) as usize;
        for part in data.chunks(chunk) {
            timeout(self.deadline, self.stream.write_all(part))
                .await
                .map_err(|_| timed_out("client not reading"))??;
            let _ = timeout(self.deadline, self.stream.flush()).await;
            tokio::time::sleep(Duration::from_secs_f64(part.len() as f64 / rate as f64)).await;
        }
        Ok(())
    }

    /// Writes `head` then `body` (one vectored write when not speed-limited) and flushes.
    pub async fn send(&mut self, head: Bytes, body: Option<Bytes>) -> io::Result<()> {
        match body {
            Some(body) if self.throttle.is_none() => {
                let mut chain = head.chain(body);
                timeout(self.deadline, self.stream.write_all_buf(&mut chain))
                    .await
                    .map_err(|_| timed_out("client not reading"))??;
            }
            Some(body) => {
                self.write(&head).await?;
                self.write(&body).await?;
            }
            None => self.write(&head).await?,
        }
        self.flush().await
    }

    /// Flushes what was written; `TimedOut` when the client stops reading.
    pub async fn flush(&mut self) -> io::Result<()> {
        timeout(self.deadline, self.stream.flush())
            .await
            .map_err(|_| timed_out("client not reading"))?
    }

    /// The TLS handshake over this plain connection (bounded by the deadline): the TLS
    /// connection, or the error that ended it.
    pub async fn upgrade(self, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let MaybeTls::Plain(plain) = self.stream else {
            return Err(io::Error::other("TLS already active"));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = timeout(self.deadline, acceptor.accept(plain))
            .await
            .map_err(|_| timed_out("TLS handshake timed out"))??;
        Ok(Self {
            stream: MaybeTls::Tls(Box::new(tls)),
            ..self
        })
    }

    /// Closes the sending side (a TLS close_notify first), bounded by the deadline.
    pub async fn close(&mut self) {
        let _ = timeout(self.deadline, self.stream.shutdown()).await;
    }
}
