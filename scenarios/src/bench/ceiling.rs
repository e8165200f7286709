//! The two legs' ceilings: a pipelined POP3 reader and a pipelined SMTP writer written for
//! the purpose, as fast as each protocol goes on its own over the same path a connector
//! takes. `poplab bench` measures them in the same run as the connectors and divides a
//! connector's rate by the slower one.
//!
//! The reader logs in (USER/PASS), LISTs, sends RETR for every message keeping up to
//! `window` in flight, reads each body whole (kept in memory, then dropped), DELEs them
//! all (pipelined the same way) and QUITs: the mailbox is really emptied. The writer says
//! EHLO (STARTTLS when asked), then sends each message as MAIL, RCPT and BDAT LAST (or
//! DATA when the server has no CHUNKING), keeping up to `window` transactions unanswered,
//! and reads the replies in order. Both use the `popbridge-proto` codecs.
//! Must never: write without a bound on what is in flight, read without the deadline, or
//! treat a refused command as a success.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use popbridge_proto::pop3::{Pop3Command, Pop3Reply};
use popbridge_proto::smtp::{EnvelopeAddress, Param, Reply, ReplyParser, SmtpCommand};
use popbridge_proto::{DotDecoder, DotStuffer, LineDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The longest status or reply line read.
const MAX_LINE: usize = 8192;

/// What a ceiling leg did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LegRun {
    /// Messages moved (read whole, or accepted).
    pub messages: u64,
    /// Octets of message data moved.
    pub bytes: u64,
    /// From the connection to the QUIT reply.
    pub elapsed: Duration,
    /// From the connection until the first message could be asked for (POP3: greeting,
    /// login and LIST read; SMTP: greeting and EHLO, STARTTLS included).
    pub setup: Duration,
    /// Moving the messages: from the first RETR (or MAIL) written to the last message read
    /// whole (or accepted). The reader's DELEs are not in it.
    pub stream: Duration,
    /// From QUIT written to its reply (for POP3 the server applies the deletions then).
    pub quit: Duration,
}

/// Why a ceiling leg failed.
#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    /// A network error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Past the round's deadline.
    #[error("timed out")]
    Timeout,
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server refused something or answered out of the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// TLS towards a server: the client configuration and the name to check.
#[derive(Clone)]
pub struct TlsClient {
    /// Trust anchors and protocol versions.
    pub config: Arc<rustls::ClientConfig>,
    /// The server name (or IP address) its certificate must carry.
    pub name: String,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection with its read buffer and the deadline every read keeps.
struct Conn {
    stream: Box<dyn Io>,
    buf: BytesMut,
    deadline: Instant,
}

impl Conn {
    async fn open(addr: SocketAddr, deadline: Instant) -> Result<Self, CeilingError> {
        let tcp = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| CeilingError::Timeout)??;
        tcp.set_nodelay(true)?;
        Ok(Self {
            stream: Box::new(tcp),
            buf: BytesMut::with_capacity(64 * 1024),
            deadline,
        })
    }

    async fn tls(self, tls: &TlsClient) -> Result<Self, CeilingError> {
        let name = rustls::pki_types::ServerName::try_from(tls.name.clone())
            .map_err(|e| CeilingError::Protocol(format!("TLS name {:?}: {e}", tls.name)))?;
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = tokio::time::timeout_at(self.deadline, connector.connect(name, self.stream))
            .await
            .map_err(|_| CeilingError::Timeout)??;
        Ok(Self {
            stream: Box::new(stream),
            buf: self.buf,
            deadline: self.deadline,
        })
    }

    /// Reads more into the buffer.
    async fn fill(&mut self) -> Result<(), CeilingError> {
        self.buf.reserve(64 * 1024);
        let n = tokio::time::timeout_at(self.deadline, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| CeilingError::Timeout)??;
        if n == 0 {
            return Err(CeilingError::Closed);
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), CeilingError> {
        tokio::time::timeout_at(self.deadline, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| CeilingError::Timeout)??;
        Ok(())
    }

    async fn line(&mut self) -> Result<BytesMut, CeilingError> {
        let mut lines = LineDecoder::new(MAX_LINE);
        loop {
            match lines.next_line(&mut self.buf) {
                Ok(Some(l)) => return Ok(l),
                Ok(None) => self.fill().await?,
                Err(e) => return Err(CeilingError::Protocol(e.to_string())),
            }
        }
    }

    /// A POP3 status line, which must be `+OK`.
    async fn pop3_ok(&mut self, what: &str) -> Result<Pop3Reply, CeilingError> {
        let line = self.line().await?;
        let reply =
            Pop3Reply::parse(&line).map_err(|e| CeilingError::Protocol(format!("{what}: {e}")))?;
        if !reply.is_ok() {
            return Err(CeilingError::Protocol(format!(
                "{what} refused: -ERR {}",
                reply.text
            )));
        }
        Ok(reply)
    }

    /// A dot-terminated body; returns its unstuffed length (the octets are kept until the
    /// end, as a client would hold them, then dropped).
    async fn pop3_body(&mut self) -> Result<u64, CeilingError> {
        let mut dec = DotDecoder::new(u64::MAX).with_lf_terminator();
        let mut body = BytesMut::new();
        loop {
            let p = dec
                .decode(&self.buf, &mut body)
                .map_err(|e| CeilingError::Protocol(e.to_string()))?;
            let _ = self.buf.split_to(p.consumed);
            if p.done {
                return Ok(dec.total());
            }
            self.fill().await?;
        }
    }

    async fn smtp_reply(&mut self, parser: &mut ReplyParser) -> Result<Reply, CeilingError> {
        loop {
            match parser.parse(&mut self.buf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => self.fill().await?,
                Err(e) => return Err(CeilingError::Protocol(e.to_string())),
            }
        }
    }
}

/// Where the POP3 reader logs in.
#[derive(Clone)]
pub struct Pop3Leg {
    /// The server (or the proxy in front of it).
    pub addr: SocketAddr,
    /// Implicit TLS, when set.
    pub tls: Option<TlsClient>,
    /// The login name.
    pub user: String,
    /// The password.
    pub password: String,
}

/// Reads and deletes the whole mailbox, pipelined with up to `window` RETRs (and DELEs)
/// in flight.
pub async fn pop3_read(
    leg: &Pop3Leg,
    window: usize,
    deadline: Instant,
) -> Result<LegRun, CeilingError> {
    let started = Instant::now();
    let mut c = Conn::open(leg.addr, deadline).await?;
    if let Some(t) = &leg.tls {
        c = c.tls(t).await?;
    }
    c.pop3_ok("greeting").await?;
    c.send(Pop3Command::User(leg.user.clone()).to_string().as_bytes())
        .await?;
    c.pop3_ok("USER").await?;
    c.send(
        Pop3Command::Pass(leg.password.clone())
            .to_string()
            .as_bytes(),
    )
    .await?;
    c.pop3_ok("PASS").await?;
    c.send(Pop3Command::List(None).to_string().as_bytes())
        .await?;
    c.pop3_ok("LIST").await?;
    let mut numbers = Vec::new();
    loop {
        let line = c.line().await?;
        let l = popbridge_proto::line::trim_eol(&line);
        if l == b"." {
            break;
        }
        let n = std::str::from_utf8(l)
            .ok()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|w| w.parse::<u32>().ok())
            .ok_or_else(|| CeilingError::Protocol("a LIST line without a number".into()))?;
        numbers.push(n);
    }
    let setup = started.elapsed();
    let mut bytes = 0u64;
    pipelined(&mut c, &numbers, window, Pop3Command::Retr, |c| {
        Box::pin(async move {
            c.pop3_ok("RETR").await?;
            c.pop3_body().await
        })
    })
    .await?
    .into_iter()
    .for_each(|b| bytes += b);
    let stream = started.elapsed() - setup;
    pipelined(&mut c, &numbers, window, Pop3Command::Dele, |c| {
        Box::pin(async move { c.pop3_ok("DELE").await.map(|_| 0) })
    })
    .await?;
    let quitting = Instant::now();
    c.send(Pop3Command::Quit.to_string().as_bytes()).await?;
    c.pop3_ok("QUIT").await?;
    Ok(LegRun {
        messages: numbers.len() as u64,
        bytes,
        elapsed: started.elapsed(),
        setup,
        stream,
        quit: quitting.elapsed(),
    })
}

type ReplyFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, CeilingError>> + Send + 'a>>;

/// Sends `command(n)` for every number, at most `window` unanswered, reading each reply with
/// `read`; returns what each read returned, in order.
async fn pipelined(
    c: &mut Conn,
    numbers: &[u32],
    window: usize,
    command: fn(u32) -> Pop3Command,
    read: for<'a> fn(&'a mut Conn) -> ReplyFuture<'a>,
) -> Result<Vec<u64>, CeilingError> {
    let window = window.max(1);
    let (mut sent, mut out) = (0usize, Vec::with_capacity(numbers.len()));
    while out.len() < numbers.len() {
        let mut batch = String::new();
        while sent < numbers.len() && sent - out.len() < window {
            batch.push_str(&command(numbers[sent]).to_string());
            sent += 1;
        }
        if !batch.is_empty() {
            c.send(batch.as_bytes()).await?;
        }
        out.push(read(c).await?);
    }
    Ok(out)
}

/// Where the SMTP writer submits.
#[derive(Clone)]
pub struct SmtpLeg {
    /// The server (or the proxy in front of it).
    pub addr: SocketAddr,
    /// STARTTLS with this, when set.
    pub tls: Option<TlsClient>,
    /// The envelope recipient.
    pub rcpt: String,
}

/// Which reply the writer waits for next.
enum Expect {
    Mail,
    Rcpt,
    /// The 354 after DATA; the body is sent once it came.
    DataGo(usize),
    /// The final reply to the message's data.
    Final(usize),
}

/// Submits every message, pipelined with up to `window` transactions unanswered.
pub async fn smtp_write(
    leg: &SmtpLeg,
    messages: &[Bytes],
    window: usize,
    deadline: Instant,
) -> Result<LegRun, CeilingError> {
    let started = Instant::now();
    let mut c = Conn::open(leg.addr, deadline).await?;
    let mut parser = ReplyParser::new();
    let greeting = c.smtp_reply(&mut parser).await?;
    positive(&greeting, "greeting")?;
    let ehlo = SmtpCommand::Ehlo("poplab-bench.invalid".into()).to_string();
    c.send(ehlo.as_bytes()).await?;
    let mut caps = c.smtp_reply(&mut parser).await?;
    positive(&caps, "EHLO")?;
    if let Some(t) = &leg.tls {
        c.send(SmtpCommand::StartTls.to_string().as_bytes()).await?;
        positive(&c.smtp_reply(&mut parser).await?, "STARTTLS")?;
        c = c.tls(t).await?;
        c.send(ehlo.as_bytes()).await?;
        caps = c.smtp_reply(&mut parser).await?;
        positive(&caps, "EHLO")?;
    }
    let has = |ext: &str| {
        caps.lines.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(ext))
        })
    };
    let (chunking, size) = (has("CHUNKING"), has("SIZE"));
    let setup = started.elapsed();
    let address =
        |text: &str| EnvelopeAddress::new(text).map_err(|e| CeilingError::Protocol(e.to_string()));
    let (from, rcpt) = (address("bench@poplab.invalid")?, address(&leg.rcpt)?);
    let mut w = Writer {
        c,
        parser,
        expect: Default::default(),
        messages,
        finals: 0,
        bytes: 0,
    };
    let envelope = |m: &Bytes| {
        let mut params = Vec::new();
        if size {
            params
                .push(Param::new("SIZE", m.len().to_string()).expect("digits are an esmtp-value"));
        }
        let mut out = SmtpCommand::Mail {
            from: from.clone(),
            params,
        }
        .to_string();
        out.push_str(
            &SmtpCommand::Rcpt {
                to: rcpt.clone(),
                params: Vec::new(),
            }
            .to_string(),
        );
        out
    };
    if !chunking {
        // DATA: a message may only follow its 354, so one transaction is ahead at most;
        // each message goes out in one write with the next one's commands, as a client
        // that knows the protocol best does (the server then answers both in one write).
        let data_cmds = |i: usize| {
            let mut out = envelope(&messages[i]);
            out.push_str(&SmtpCommand::Data.to_string());
            out
        };
        // One buffer for every message's write, and each write made ready (stuffed, the
        // next commands behind it) before its 354 is waited for, so the writer's own work
        // overlaps the server's handling of the message before.
        let mut wire = BytesMut::new();
        for i in 0..messages.len() {
            if i == 0 {
                w.c.send(data_cmds(0).as_bytes()).await?;
                w.expect
                    .extend([Expect::Mail, Expect::Rcpt, Expect::DataGo(0)]);
            }
            wire.clear();
            let mut stuffer = DotStuffer::new(false);
            stuffer.stuff(&messages[i], &mut wire);
            stuffer.finish(&mut wire);
            let next = (i + 1 < messages.len()).then(|| data_cmds(i + 1));
            if let Some(cmds) = &next {
                wire.extend_from_slice(cmds.as_bytes());
            }
            // The body may only follow its 354: read up to it (earlier finals on the way).
            while w.expect.iter().any(|e| matches!(e, Expect::DataGo(_))) {
                w.settle().await?;
            }
            w.expect.push_back(Expect::Final(i));
            if next.is_some() {
                w.expect
                    .extend([Expect::Mail, Expect::Rcpt, Expect::DataGo(i + 1)]);
            }
            w.c.send(&wire).await?;
        }
    }
    for (i, m) in messages.iter().enumerate().filter(|_| chunking) {
        let mut out = envelope(m);
        w.expect.push_back(Expect::Mail);
        w.expect.push_back(Expect::Rcpt);
        out.push_str(
            &SmtpCommand::Bdat {
                size: m.len() as u64,
                last: true,
            }
            .to_string(),
        );
        let mut wire = BytesMut::from(out.as_bytes());
        wire.extend_from_slice(m);
        w.c.send(&wire).await?;
        w.expect.push_back(Expect::Final(i));
        while w
            .expect
            .iter()
            .filter(|e| matches!(e, Expect::Final(_)))
            .count()
            > window.max(1)
        {
            w.settle().await?;
        }
    }
    while !w.expect.is_empty() {
        w.settle().await?;
    }
    let stream = started.elapsed() - setup;
    let quitting = Instant::now();
    w.c.send(SmtpCommand::Quit.to_string().as_bytes()).await?;
    let _ = w.c.smtp_reply(&mut w.parser).await;
    Ok(LegRun {
        messages: w.finals as u64,
        bytes: w.bytes,
        elapsed: started.elapsed(),
        setup,
        stream,
        quit: quitting.elapsed(),
    })
}

/// The writer's connection and the replies it still waits for.
struct Writer<'m> {
    c: Conn,
    parser: ReplyParser,
    expect: std::collections::VecDeque<Expect>,
    messages: &'m [Bytes],
    finals: usize,
    bytes: u64,
}

impl Writer<'_> {
    /// Reads the next reply and checks it against what it answers (the caller sends a
    /// body once its 354 came).
    async fn settle(&mut self) -> Result<(), CeilingError> {
        let Some(e) = self.expect.pop_front() else {
            return Ok(());
        };
        let r = self.c.smtp_reply(&mut self.parser).await?;
        match e {
            Expect::Mail => positive(&r, "MAIL"),
            Expect::Rcpt => positive(&r, "RCPT"),
            Expect::DataGo(i) => {
                if r.code != 354 {
                    return Err(CeilingError::Protocol(format!(
                        "DATA refused for message {i}: {}",
                        r.first_line()
                    )));
                }
                Ok(())
            }
            Expect::Final(i) => {
                positive(&r, "end of data")?;
                self.finals += 1;
                self.bytes += self.messages[i].len() as u64;
                Ok(())
            }
        }
    }
}

fn positive(r: &Reply, what: &str) -> Result<(), CeilingError> {
    if r.is_positive() {
        Ok(())
    } else {
        Err(CeilingError::Protocol(format!(
            "{what} refused: {}",
            r.first_line()
        )))
    }
}
