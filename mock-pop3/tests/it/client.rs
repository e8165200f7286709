//! A deliberately small POP3 test client built on `proto`, plus server helpers.

use bytes::BytesMut;
use mock_core::test_client::{connect, Wire};
use mock_pop3::{Builder, MockPop3Handle};
use popbridge_proto::pop3::{Pop3Reply, Pop3Response};
use popbridge_proto::{DotDecoder, LineDecoder};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

pub use mock_core::test_client::STEP;

/// Spawns the server on a fresh loopback port.
pub async fn spawn(builder: Builder) -> MockPop3Handle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    builder.spawn(listener)
}

/// A POP3 client: the connection (`wire`: sending, reading under a deadline, EOF) and
/// its line framing.
pub struct Client<S> {
    pub wire: Wire<S>,
    lines: LineDecoder,
}

impl Client<TcpStream> {
    pub async fn connect(server: &MockPop3Handle) -> (Self, Pop3Reply) {
        Self::over(connect(server.addr().unwrap()).await).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Wraps a stream without reading a greeting (after a TLS upgrade).
    pub fn resume(stream: S) -> Self {
        Self {
            wire: Wire::new(stream),
            lines: LineDecoder::new(4096),
        }
    }

    /// Wraps a connected stream and reads the greeting.
    pub async fn over(stream: S) -> (Self, Pop3Reply) {
        let mut c = Self::resume(stream);
        let g = c.reply().await;
        (c, g)
    }

    /// Reads until `buf` holds more, or returns false at EOF.
    async fn fill(&mut self) -> bool {
        self.wire.read_more().await > 0
    }

    /// The next raw line, or `None` at EOF.
    pub async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(l) = self.lines.next_line(&mut self.wire.buf).unwrap() {
                return Some(l.to_vec());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    pub async fn response(&mut self) -> Pop3Response {
        let l = self.line().await.expect("connection closed before a reply");
        Pop3Response::parse(&l).unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn reply(&mut self) -> Pop3Reply {
        match self.response().await {
            Pop3Response::Status(r) => r,
            other => panic!("expected a status line, got {other:?}"),
        }
    }

    /// Sends a command and returns its status reply.
    pub async fn cmd(&mut self, line: &str) -> Pop3Reply {
        self.wire.send(line).await;
        self.reply().await
    }

    /// Cancels an AUTH exchange with `*`: refused, "Authentication cancelled".
    pub async fn cancel(&mut self) {
        let r = self.cmd("*").await;
        assert!(!r.is_ok());
        assert_eq!(r.text, "Authentication cancelled");
    }

    /// Opens an AUTH exchange with `line` (e.g. `AUTH LOGIN`), skipping its first reply.
    pub async fn begin(&mut self, line: &str) {
        self.wire.send(line).await;
        let _ = self.response().await;
    }

    /// The body of a multi-line response (after its `+OK`), unstuffed.
    pub async fn body(&mut self) -> Vec<u8> {
        let mut d = DotDecoder::new(64 << 20);
        let mut out = BytesMut::new();
        loop {
            let p = d.decode(&self.wire.buf.clone(), &mut out).unwrap();
            let _ = self.wire.buf.split_to(p.consumed);
            if p.done {
                return out.to_vec();
            }
            assert!(
                self.fill().await,
                "connection closed inside a multi-line response"
            );
        }
    }

    /// A command with a multi-line answer: its reply and body (empty on -ERR).
    pub async fn multi(&mut self, line: &str) -> (Pop3Reply, Vec<u8>) {
        let r = self.cmd(line).await;
        if r.is_ok() {
            let b = self.body().await;
            (r, b)
        } else {
            (r, Vec::new())
        }
    }

    /// Body lines as strings.
    pub async fn list(&mut self, line: &str) -> Vec<String> {
        let (r, b) = self.multi(line).await;
        assert!(r.is_ok(), "{line}: {r:?}");
        String::from_utf8(b)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub async fn login(&mut self, user: &str, pass: &str) -> Pop3Reply {
        let r = self.cmd(&format!("USER {user}")).await;
        assert!(r.is_ok(), "USER: {r:?}");
        self.cmd(&format!("PASS {pass}")).await
    }

    /// Everything until the server closes the connection (what is buffered included).
    pub async fn drain(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.wire.buf).to_vec()
    }
}
