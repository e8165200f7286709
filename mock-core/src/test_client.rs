//! The protocol-blind half of the mock suites' test clients: a connection, the octets
//! read and not yet taken, and a bound on every read.
//!
//! Responsible for: writing a command line in one write, reading under a deadline (a hang
//! fails the test instead of stalling CI), telling when the server closed, and the
//! loopback TCP connection the clients start from. Each suite frames replies itself.
//! Must never: know a protocol's commands or replies, read without a deadline, or be a
//! normal dependency (only behind the `test-support` feature).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The bound on each read a [`Wire`] starts with.
pub const STEP: Duration = Duration::from_secs(10);

/// A TCP connection to `addr` with Nagle off (a command goes out in one segment).
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A test client's side of a connection.
pub struct Wire<S> {
    /// The connection (taken by value for a TLS upgrade).
    pub stream: S,
    /// Octets read and not yet taken.
    pub buf: BytesMut,
    /// Bound on each read; raise it for paused-clock tests where time jumps.
    pub step: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Wraps a connected stream; nothing is read yet.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            step: STEP,
        }
    }

    /// Writes raw bytes in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Writes `line` and CRLF in one write: a line split over two writes stalls on
    /// delayed ACKs.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Reads what the server sent into `buf` (bounded by `step`, panicking when it
    /// stalls): how many octets, 0 once it closed (or the read failed).
    pub async fn read_more(&mut self) -> usize {
        timeout(self.step, self.stream.read_buf(&mut self.buf))
            .await
            .expect("server stalled")
            .unwrap_or(0)
    }

    /// True once the server closed the connection (what it sends meanwhile is dropped;
    /// each read bounded).
    pub async fn closed(&mut self) -> bool {
        loop {
            if self.read_more().await == 0 {
                return true;
            }
            self.buf.clear();
        }
    }
}
