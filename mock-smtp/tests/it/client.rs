//! A small SMTP test client built on `proto`, plus server helpers.

use mock_core::test_client::{connect, Wire};
use mock_smtp::{Builder, MockSmtpHandle};
use popbridge_proto::smtp::{Reply, ReplyParser};
use popbridge_proto::DotStuffer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Spawns the server on a fresh loopback port.
pub async fn spawn(builder: Builder) -> MockSmtpHandle {
    builder.spawn(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// An SMTP client: the connection (`wire`: sending, reading under a deadline, EOF) and
/// its reply parser.
pub struct Client<S> {
    pub wire: Wire<S>,
    parser: ReplyParser,
}

impl Client<TcpStream> {
    /// Connects and reads the greeting.
    pub async fn connect(server: &MockSmtpHandle) -> (Self, Reply) {
        Self::over(connect(server.addr().unwrap()).await).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn resume(stream: S) -> Self {
        Self {
            wire: Wire::new(stream),
            parser: ReplyParser::new(),
        }
    }

    pub async fn over(stream: S) -> (Self, Reply) {
        let mut c = Self::resume(stream);
        let g = c.reply().await;
        (c, g)
    }

    /// Sends each command in turn and checks the first line of its reply.
    pub async fn dialogue(&mut self, steps: &[(&str, &str)]) {
        for (command, reply) in steps {
            assert_eq!(self.cmd(command).await.first_line(), *reply, "{command}");
        }
    }

    /// The next reply, or `None` when the server closed.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some(r) = self.parser.parse(&mut self.wire.buf).unwrap() {
                return Some(r);
            }
            if self.wire.read_more().await == 0 {
                return None;
            }
        }
    }

    pub async fn reply(&mut self) -> Reply {
        self.try_reply()
            .await
            .expect("connection closed before a reply")
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.wire.send(line).await;
        self.reply().await
    }

    /// Sends a message body dot-stuffed with its terminator (one write) and reads the reply.
    pub async fn data_body(&mut self, body: &[u8]) -> Reply {
        let wire = DotStuffer::stuff_all(body, true);
        self.wire.send_raw(&wire).await;
        self.reply().await
    }

    /// EHLO, MAIL, RCPT, DATA, body; returns the final reply (panics if an earlier step fails).
    pub async fn deliver(&mut self, from: &str, to: &str, body: &[u8]) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.is_positive(), "MAIL: {r:?}");
        let r = self.cmd(&format!("RCPT TO:<{to}>")).await;
        assert!(r.is_positive(), "RCPT: {r:?}");
        let r = self.cmd("DATA").await;
        assert_eq!(r.code, 354);
        self.data_body(body).await
    }

    /// Delivers as [`Client::deliver`] does and checks the final reply is 250.
    pub async fn deliver_ok(&mut self, from: &str, to: &str, body: &[u8]) {
        let r = self.deliver(from, to, body).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
}

/// A small message with a header and `size` octets in all (at least the header).
pub fn message(subject: &str, size: usize) -> Vec<u8> {
    let mut m = format!("From: a@example.net\r\nTo: b@contoso.local\r\nSubject: {subject}\r\n\r\n")
        .into_bytes();
    while m.len() + 2 < size {
        let n = (size - 2 - m.len()).min(76);
        m.extend(std::iter::repeat_n(b'x', n));
        m.extend_from_slice(b"\r\n");
    }
    m
}
