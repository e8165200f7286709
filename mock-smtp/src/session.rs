//! One SMTP session, as an Exchange receive connector runs it.
//!
//! Replies are gathered and written when the client has no further complete command
//! buffered, so a pipelined batch gets one write. Protocol errors are counted per session;
//! at `MaxProtocolErrors` the error reply is followed by `421 4.7.0` and the connection closes.

use std::io;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use mock_core::fault::{FaultAction, Hook};
use mock_core::host::{EndGuard, Flow, SessionEnd, Step};
use mock_core::stream::Conn;
use popbridge_proto::smtp::{AddressError, Mailbox, Param, Path, Reply, SmtpCommand};
use popbridge_proto::{DotDecoder, LineDecoder, LineError};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::capture::{Delivery, Outcome, RcptRecord, Received};
use crate::config::{SizeAdvert, SpamField};
use crate::server::{CaptureMode, Shared};

/// Longest command line accepted (RFC 5321 says 512; Exchange is more lenient).
const MAX_LINE: usize = 2048;

struct Txn {
    record: Received,
    accepted_rcpts: Vec<String>,
    bdat: BytesMut,
    bdat_total: u64,
    bdat_too_big: bool,
}

struct Session<S> {
    shared: Arc<Shared>,
    id: u64,
    peer: String,
    conn: Conn<S>,
    /// True once the greeting went out (serving resumes after a handshake).
    greeted: bool,
    inbuf: BytesMut,
    out: BytesMut,
    lines: LineDecoder,
    helo: Option<String>,
    txn: Option<Txn>,
    errors: u32,
    logon_failures: u32,
    authenticated: bool,
    limit_hit: bool,
    /// After an over-long line: drop input up to its end before reading commands again.
    skip_line: bool,
    /// Set by a `LoseReply` fault on the command being answered.
    lose_reply: bool,
    /// The last accepted transaction of this session, until the client sends more.
    unacknowledged: Option<u64>,
    /// Marks an unfinished session however the task ends.
    _guard: EndGuard<Shared>,
}

pub(crate) async fn run<S>(shared: Arc<Shared>, stream: S, id: u64, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut s = Session {
        shared: shared.clone(),
        id,
        peer,
        conn: shared
            .host
            .connection(stream, shared.cfg.limits.connection_timeout),
        greeted: false,
        inbuf: BytesMut::with_capacity(8192),
        out: BytesMut::with_capacity(4096),
        lines: LineDecoder::new(MAX_LINE),
        helo: None,
        txn: None,
        errors: 0,
        logon_failures: 0,
        authenticated: false,
        limit_hit: false,
        skip_line: false,
        lose_reply: false,
        unacknowledged: None,
        _guard: EndGuard::new(shared.clone(), id),
    };
    let end = loop {
        match s.serve().await {
            Ok(Step::Tls(cfg)) => match shared.host.upgrade(id, s.conn, cfg).await {
                Some(conn) => {
                    s.conn = conn;
                    // RFC 3207: forget everything learned before TLS; the client must EHLO again.
                    s.helo = None;
                    s.txn = None;
                }
                None => {
                    if let Some(txn) = s.txn.take() {
                        shared.record(txn.record, Outcome::Abandoned);
                    }
                    return;
                }
            },
            Ok(Step::End(end)) => break end,
            Err(e) => break SessionEnd::from_io(&e),
        }
    };
    if let Some(txn) = s.txn.take() {
        shared.record(txn.record, Outcome::Abandoned);
    }
    shared.host.finish(id, &mut s.conn, end).await;
}

/// Index just past the header's blank line (or the whole message).
fn header_len(data: &[u8]) -> usize {
    let crlf = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    let lf = data.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(data.len()),
    }
}

/// The unfolded value of a header field, if present.
fn header_value(data: &[u8], name: &str) -> Option<String> {
    let head = String::from_utf8_lossy(&data[..header_len(data)]);
    let mut value: Option<String> = None;
    for line in head.split('\n') {
        let line = line.trim_end_matches('\r');
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line);
                continue;
            }
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case(name) {
                value = Some(v.trim().to_string());
            }
        }
    }
    value
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves until the session ends or a TLS handshake is due; called again after it.
    async fn serve(&mut self) -> io::Result<Step> {
        if !self.greeted {
            self.greeted = true;
            let greeting = Reply::new(220, None, &self.shared.cfg.greeting);
            match self.fault(&[Hook::Greeting]).await? {
                Some((Flow::End(e), _)) => return Ok(Step::End(e)),
                Some(_) => {}
                None => self.send(&greeting),
            }
        }
        loop {
            let line = match self.read_line().await {
                Ok(Some(l)) => l,
                Ok(None) => return Ok(Step::End(SessionEnd::ClientClosed)),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    let r = self.shared.cfg.replies.timeout.clone();
                    self.send(&r);
                    self.flush().await?;
                    return Ok(Step::End(SessionEnd::Timeout));
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // Over-long line: discard it to its end and answer 500.
                    self.lines.reset();
                    self.skip_line = true;
                    let r = Reply::new(
                        500,
                        Some(popbridge_proto::smtp::EnhancedCode::new(5, 5, 2)),
                        "Line too long",
                    );
                    self.send(&r);
                    if self.limit_hit {
                        return Ok(Step::End(self.too_many_errors().await?));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.shared.stats(self.id, |s| s.commands += 1);
            if let Some(id) = self.unacknowledged.take() {
                // More from the client after the final reply: it could have read it.
                let mut st = self.shared.state();
                if let Some(t) = st.transactions.iter_mut().rev().find(|t| t.id == id) {
                    t.acknowledged = true;
                }
            }
            let parsed = SmtpCommand::parse(&line);
            let verb = match &parsed {
                Ok(c) => c.verb().to_string(),
                Err(_) => mock_core::host::keyword_of(&line),
            };
            let shown = match &parsed {
                Ok(c) => c.redacted(),
                Err(_) if verb == "AUTH" => "AUTH *** (invalid)".into(),
                Err(_) => format!(
                    "{} (invalid)",
                    String::from_utf8_lossy(popbridge_proto::line::trim_eol(&line))
                        .chars()
                        .take(80)
                        .collect::<String>()
                ),
            };
            self.shared.host.log(self.id, format!("C: {shown}"));
            let answered = self.out.len();
            let reads_on = matches!(verb.as_str(), "DATA" | "BDAT" | "AUTH" | "STARTTLS");
            let flow = match self.fault(&[Hook::Command(verb), Hook::AnyCommand]).await? {
                Some((flow, _)) => match (&parsed, &flow) {
                    // A chunk's bytes follow its BDAT whatever the reply (RFC 3030): a
                    // scripted reply to BDAT still reads them, as any server must.
                    (Ok(SmtpCommand::Bdat { size, .. }), Flow::Continue) => {
                        let size = *size;
                        self.skip_chunk(size).await?;
                        flow
                    }
                    _ => flow,
                },
                None if self.lose_reply && reads_on => {
                    // It would go on reading from a client still waiting for this reply.
                    self.lose_reply = false;
                    self.shared
                        .host
                        .log(self.id, "S: (fault: connection closed)".into());
                    self.flush().await?;
                    return Ok(Step::End(SessionEnd::FaultClosed));
                }
                None => match parsed {
                    Ok(cmd) => self.dispatch(cmd).await?,
                    Err(popbridge_proto::smtp::CommandError::Unknown(_)) => {
                        let r = self.shared.cfg.replies.unrecognized.clone();
                        self.send(&r);
                        Flow::Continue
                    }
                    Err(_) => {
                        let r = self.shared.cfg.replies.bad_arguments.clone();
                        self.send(&r);
                        Flow::Continue
                    }
                },
            };
            if self.lose_reply {
                // Performed; its reply never leaves.
                self.lose_reply = false;
                self.out.truncate(answered);
                self.shared
                    .host
                    .log(self.id, "S: (fault: reply lost, connection closed)".into());
                self.flush().await?;
                return Ok(Step::End(SessionEnd::FaultReplyLost));
            }
            if self.limit_hit {
                return Ok(Step::End(self.too_many_errors().await?));
            }
            match flow {
                Flow::Continue => {}
                Flow::End(e) => {
                    self.flush().await?;
                    return Ok(Step::End(e));
                }
                Flow::StartTls => {
                    self.flush().await?;
                    // Bytes pipelined after STARTTLS came in clear: drop them.
                    self.inbuf.clear();
                    self.lines.reset();
                    let Some(cfg) = self.shared.cfg.tls.clone() else {
                        return Err(io::Error::other("no TLS configuration"));
                    };
                    return Ok(Step::Tls(cfg));
                }
            }
        }
    }

    async fn too_many_errors(&mut self) -> io::Result<SessionEnd> {
        let r = self.shared.cfg.replies.too_many_errors.clone();
        self.send(&r);
        self.flush().await?;
        Ok(SessionEnd::TooManyErrors)
    }

    /// Applies a scripted fault for these hooks; `Some((flow, line))` when it replaced the
    /// reply, with the line it sent instead (if any).
    async fn fault(&mut self, hooks: &[Hook]) -> io::Result<Option<(Flow, Option<String>)>> {
        let Some(action) = self.shared.host.faults().take(hooks) else {
            return Ok(None);
        };
        match action {
            FaultAction::Reply(line) => {
                self.raw_line(&line);
                Ok(Some((Flow::Continue, Some(line))))
            }
            FaultAction::ReplyAndClose(line) => {
                self.raw_line(&line);
                self.flush().await?;
                Ok(Some((Flow::End(SessionEnd::FaultClosed), Some(line))))
            }
            FaultAction::CloseBeforeReply | FaultAction::CloseAfterBytes(_) => {
                self.shared
                    .host
                    .log(self.id, "S: (fault: connection closed)".into());
                self.flush().await?;
                Ok(Some((Flow::End(SessionEnd::FaultClosed), None)))
            }
            FaultAction::Delay(d) => {
                self.flush().await?;
                tokio::time::sleep(d).await;
                Ok(None)
            }
            FaultAction::GarbageLine(g) => {
                self.shared
                    .host
                    .log(self.id, "S: (fault: garbage line)".into());
                self.out.extend_from_slice(&g);
                self.out.extend_from_slice(b"\r\n");
                Ok(None)
            }
            FaultAction::LoseReply => {
                self.lose_reply = true;
                Ok(None)
            }
        }
    }

    fn raw_line(&mut self, line: &str) {
        self.shared.host.log(self.id, format!("S: {line} (fault)"));
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Queues a reply, counting it as a protocol error when its code says so.
    fn send(&mut self, reply: &Reply) {
        let mut reply = reply.clone();
        if !self.shared.cfg.ext.enhanced_status_codes {
            reply.enhanced = None;
        }
        let wire = reply.to_string();
        self.shared.stats(self.id, |s| s.replies += 1);
        for l in wire.lines() {
            self.shared.host.log(self.id, format!("S: {l}"));
        }
        self.out.extend_from_slice(wire.as_bytes());
        let limits = &self.shared.cfg.limits;
        if limits.protocol_error_codes.contains(&reply.code) {
            self.errors += 1;
            let n = self.errors;
            self.shared.stats(self.id, |s| s.protocol_errors = n);
            if limits.max_protocol_errors.is_some_and(|max| n >= max) {
                self.limit_hit = true;
            }
        }
    }

    async fn read_line(&mut self) -> io::Result<Option<BytesMut>> {
        loop {
            if self.skip_line {
                match self.inbuf.iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        let _ = self.inbuf.split_to(p + 1);
                        self.skip_line = false;
                    }
                    None => {
                        self.inbuf.clear();
                        self.flush().await?;
                        if !self.fill().await? {
                            return Ok(None);
                        }
                        continue;
                    }
                }
            }
            match self.lines.next_line(&mut self.inbuf) {
                Ok(Some(l)) => return Ok(Some(l)),
                Ok(None) => {}
                Err(LineError::TooLong { .. }) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"))
                }
            }
            self.flush().await?;
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        self.inbuf.reserve(16 * 1024);
        Ok(self.conn.read(&mut self.inbuf).await? > 0)
    }

    /// Reads more; an `UnexpectedEof` error saying `what` when the client closed.
    async fn fill_or_eof(&mut self, what: &'static str) -> io::Result<()> {
        if self.fill().await? {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, what))
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.out);
        self.shared.stats(self.id, |s| s.writes += 1);
        self.conn.write(&data).await?;
        self.conn.flush().await?;
        self.out = data;
        self.out.clear();
        Ok(())
    }

    fn ehlo_reply(&self, domain: &str) -> Reply {
        let cfg = &self.shared.cfg;
        let ext = &cfg.ext;
        let mut lines = vec![format!("{} Hello [{}]", cfg.hostname, self.peer)];
        match (ext.size, cfg.limits.max_message_size) {
            (SizeAdvert::Value, Some(n)) => lines.push(format!("SIZE {n}")),
            (SizeAdvert::Value, None) | (SizeAdvert::Bare, _) => lines.push("SIZE".into()),
            (SizeAdvert::Absent, _) => {}
        }
        let flags = [
            (ext.pipelining, "PIPELINING"),
            (ext.dsn, "DSN"),
            (ext.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            (
                ext.starttls && cfg.tls.is_some() && !self.conn.is_tls(),
                "STARTTLS",
            ),
            (
                ext.auth && cfg.credentials.is_some() && !self.authenticated,
                "AUTH PLAIN LOGIN",
            ),
            (ext.eightbitmime, "8BITMIME"),
            (ext.binarymime, "BINARYMIME"),
            (ext.chunking, "CHUNKING"),
            (ext.smtputf8, "SMTPUTF8"),
        ];
        lines.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| name.to_string()),
        );
        let _ = domain;
        Reply {
            code: 250,
            enhanced: None,
            lines,
        }
    }

    async fn dispatch(&mut self, cmd: SmtpCommand) -> io::Result<Flow> {
        let replies = self.shared.cfg.replies.clone();
        match cmd {
            SmtpCommand::Ehlo(d) => {
                self.abandon();
                let r = self.ehlo_reply(&d);
                self.helo = Some(d);
                self.send(&r);
            }
            SmtpCommand::Helo(d) => {
                self.abandon();
                let r = Reply::new(250, None, &format!("{} Hello [{}]", self.shared.cfg.hostname, self.peer));
                self.helo = Some(d);
                self.send(&r);
            }
            SmtpCommand::Mail { from, params } => self.mail(from.into(), params),
            SmtpCommand::Rcpt { to, .. } => self.rcpt(to.into()).await?,
            SmtpCommand::Data => return self.data().await,
            SmtpCommand::Bdat { size, last } => return self.bdat(size, last).await,
            SmtpCommand::Rset => {
                self.abandon();
                self.send(&replies.reset);
            }
            SmtpCommand::Noop => self.send(&replies.ok),
            SmtpCommand::Help => self.send(&Reply::new(214, None, "This server supports the following commands:\nHELO EHLO STARTTLS RCPT DATA RSET MAIL QUIT HELP AUTH BDAT")),
            SmtpCommand::Vrfy(what) => self.send(&Reply::new(
                252,
                Some(popbridge_proto::smtp::EnhancedCode::new(2, 1, 5)),
                &format!("Cannot VRFY user, but will accept message for {what}"),
            )),
            SmtpCommand::Quit => {
                self.send(&replies.quit);
                return Ok(Flow::End(SessionEnd::Quit));
            }
            SmtpCommand::StartTls => {
                let cfg = &self.shared.cfg;
                if !cfg.ext.starttls || self.conn.is_tls() {
                    self.send(&replies.unrecognized);
                } else if cfg.tls.is_none() {
                    self.send(&replies.tls_unavailable);
                } else {
                    self.send(&replies.start_tls);
                    return Ok(Flow::StartTls);
                }
            }
            SmtpCommand::Auth { mechanism, initial } => return self.auth(mechanism, initial).await,
        }
        Ok(Flow::Continue)
    }

    /// Ends an open transaction without a message (RSET, EHLO).
    fn abandon(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.shared.record(txn.record, Outcome::Abandoned);
        }
    }

    fn new_record(&mut self, from: &str, params: Vec<Param>) -> Received {
        let id = {
            let mut st = self.shared.state();
            let id = st.next_txn;
            st.next_txn += 1;
            id
        };
        self.shared.stats(self.id, |s| s.transactions += 1);
        Received {
            session: self.id,
            id,
            helo: self.helo.clone(),
            mail_from: from.to_string(),
            sender: None,
            params,
            recipients: Vec::new(),
            size: 0,
            data: Bytes::new(),
            bdat: false,
            outcome: Outcome::Abandoned,
            deliveries: Vec::new(),
            reply_lost: false,
            acknowledged: false,
        }
    }

    fn mail(&mut self, from: String, params: Vec<Param>) {
        let replies = self.shared.cfg.replies.clone();
        if self.helo.is_none() {
            self.send(&replies.need_hello);
            return;
        }
        if self.txn.is_some() {
            self.send(&replies.sender_already);
            return;
        }
        let mut record = self.new_record(&from, params.clone());
        let refuse = |s: &mut Self, record: Received, reply: &Reply| {
            s.send(reply);
            s.shared.record(
                record,
                Outcome::Rejected {
                    reply: reply.first_line(),
                },
            );
        };
        let ext = &self.shared.cfg.ext;
        let mut needs_utf8 = false;
        for p in &params {
            let ok = match (p.keyword(), p.value()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) => {
                        if self
                            .shared
                            .cfg
                            .limits
                            .max_message_size
                            .is_some_and(|max| n > max)
                        {
                            return refuse(self, record, &replies.too_big);
                        }
                        true
                    }
                    Err(_) => false,
                },
                ("BODY", Some(v)) => {
                    v.eq_ignore_ascii_case("7BIT")
                        || (v.eq_ignore_ascii_case("8BITMIME") && ext.eightbitmime)
                        || (v.eq_ignore_ascii_case("BINARYMIME") && ext.binarymime)
                }
                ("SMTPUTF8", None) => {
                    needs_utf8 = true;
                    ext.smtputf8
                }
                ("RET", Some(_)) | ("ENVID", Some(_)) => ext.dsn,
                ("AUTH", Some(_)) => true,
                _ => false,
            };
            if !ok {
                return refuse(self, record, &replies.bad_arguments);
            }
        }
        let sender = match Path::parse(&from) {
            Ok(Path::Null) => String::new(),
            Ok(Path::Mailbox(m)) if m.needs_utf8() && !needs_utf8 => {
                return refuse(self, record, &replies.invalid_sender);
            }
            Ok(Path::Mailbox(m)) => m.to_string(),
            Err(AddressError::MissingDomain(local)) => match &self.shared.cfg.default_domain {
                // DefaultDomain repairs a missing domain, and only that.
                Some(d) => format!("{local}@{d}"),
                None => return refuse(self, record, &replies.invalid_sender),
            },
            Err(_) => return refuse(self, record, &replies.invalid_sender),
        };
        let lower = sender.to_ascii_lowercase();
        if self
            .shared
            .cfg
            .reject_senders
            .iter()
            .any(|p| lower.contains(p.as_str()))
        {
            return refuse(self, record, &replies.invalid_sender);
        }
        record.sender = Some(sender);
        self.send(&replies.sender_ok);
        self.txn = Some(Txn {
            record,
            accepted_rcpts: Vec::new(),
            bdat: BytesMut::new(),
            bdat_total: 0,
            bdat_too_big: false,
        });
    }

    async fn rcpt(&mut self, to: String) -> io::Result<()> {
        let replies = self.shared.cfg.replies.clone();
        let Some(txn) = self.txn.as_ref() else {
            self.send(&replies.need_mail);
            return Ok(());
        };
        let accepted_so_far = txn.accepted_rcpts.len();
        let reply = match Mailbox::parse(&to) {
            Err(_) => replies.invalid_recipient.clone(),
            Ok(_) if accepted_so_far >= self.shared.cfg.limits.max_recipients => {
                replies.too_many_recipients.clone()
            }
            Ok(m) => {
                let shared = self.shared.clone();
                let cfg = &shared.cfg;
                let addr = m.to_string().to_ascii_lowercase();
                if cfg.mailboxes.is_empty() || cfg.mailboxes.contains_key(&addr) {
                    replies.recipient_ok.clone()
                } else if cfg.domains.contains(&m.domain.to_ascii_lowercase()) {
                    if !cfg.limits.tarpit.is_zero() && !self.authenticated {
                        self.flush().await?;
                        tokio::time::sleep(cfg.limits.tarpit).await;
                    }
                    replies.unknown_user.clone()
                } else {
                    replies.relay_denied.clone()
                }
            }
        };
        self.send(&reply);
        if let Some(txn) = self.txn.as_mut() {
            txn.record.recipients.push(RcptRecord {
                address: to.clone(),
                reply: reply.first_line(),
                accepted: reply.is_positive(),
            });
            if reply.is_positive() {
                txn.accepted_rcpts.push(to);
            }
        }
        Ok(())
    }

    /// Checks that DATA or BDAT may start; replies and returns false when not.
    fn ready_for_data(&mut self) -> bool {
        let replies = self.shared.cfg.replies.clone();
        match &self.txn {
            None => {
                self.send(&replies.need_mail);
                false
            }
            Some(t) if t.accepted_rcpts.is_empty() => {
                self.send(&replies.need_rcpt);
                false
            }
            Some(_) => true,
        }
    }

    async fn data(&mut self) -> io::Result<Flow> {
        if !self.ready_for_data() {
            return Ok(Flow::Continue);
        }
        if self.txn.as_ref().is_some_and(|t| t.bdat_total > 0) {
            let r = self.shared.cfg.replies.need_mail.clone();
            self.send(&r);
            return Ok(Flow::Continue);
        }
        let r = self.shared.cfg.replies.start_data.clone();
        self.send(&r);
        self.flush().await?;
        let max = self.shared.cfg.limits.max_message_size.unwrap_or(u64::MAX);
        let mut dec = if self.shared.cfg.capture == CaptureMode::CountOnly {
            DotDecoder::discarding()
        } else {
            DotDecoder::new(u64::MAX)
        };
        let mut data = BytesMut::new();
        let mut too_big = false;
        loop {
            // Unbounded decoder, bounded here: at most one read past the limit is held.
            let p = dec
                .decode(&self.inbuf, &mut data)
                .map_err(io::Error::other)?;
            let _ = self.inbuf.split_to(p.consumed);
            if !too_big && dec.total() > max {
                // Over the limit: keep reading to the end marker, storing nothing.
                too_big = true;
                dec.start_discarding();
                data = BytesMut::new();
            }
            if p.done {
                break;
            }
            self.fill_or_eof("closed during DATA").await?;
        }
        self.lines.reset();
        let size = dec.total();
        too_big |= self
            .shared
            .cfg
            .limits
            .max_message_size
            .is_some_and(|m| size > m);
        self.shared
            .host
            .log(self.id, format!("C: (message, {size} octets)"));
        self.finish(data.freeze(), size, too_big, false).await
    }

    /// Reads and drops a chunk of `size` octets (after a scripted reply to its BDAT).
    async fn skip_chunk(&mut self, size: u64) -> io::Result<()> {
        let mut remaining = size;
        loop {
            let take = (remaining as usize).min(self.inbuf.len());
            let _ = self.inbuf.split_to(take);
            remaining -= take as u64;
            if remaining == 0 {
                self.lines.reset();
                return Ok(());
            }
            self.fill_or_eof("closed during BDAT").await?;
        }
    }

    async fn bdat(&mut self, size: u64, last: bool) -> io::Result<Flow> {
        let cfg_chunking = self.shared.cfg.ext.chunking;
        // The chunk's bytes follow the command whatever the answer: consume them first.
        let keep = cfg_chunking
            && self
                .txn
                .as_ref()
                .is_some_and(|t| !t.accepted_rcpts.is_empty() && !t.bdat_too_big)
            && self.shared.cfg.capture == CaptureMode::Full;
        let max = self.shared.cfg.limits.max_message_size.unwrap_or(u64::MAX);
        let mut chunk = BytesMut::new();
        let mut remaining = size;
        loop {
            let take = (remaining as usize).min(self.inbuf.len());
            let part = self.inbuf.split_to(take);
            let total_before = self
                .txn
                .as_ref()
                .map_or(0, |t| t.bdat_total + chunk.len() as u64);
            if keep && total_before + part.len() as u64 <= max {
                chunk.extend_from_slice(&part);
            }
            remaining -= take as u64;
            if remaining == 0 {
                break;
            }
            self.fill_or_eof("closed during BDAT").await?;
        }
        self.lines.reset();
        if !cfg_chunking {
            let r = self.shared.cfg.replies.unrecognized.clone();
            self.send(&r);
            return Ok(Flow::Continue);
        }
        if !self.ready_for_data() {
            return Ok(Flow::Continue);
        }
        let Some(txn) = self.txn.as_mut() else {
            return Ok(Flow::Continue);
        };
        txn.bdat_total += size;
        txn.bdat.extend_from_slice(&chunk);
        if txn.bdat_total > max {
            txn.bdat_too_big = true;
            txn.bdat.clear();
        }
        self.shared
            .host
            .log(self.id, format!("C: (chunk, {size} octets)"));
        if !last {
            let mut r = self.shared.cfg.replies.bdat_ok.clone();
            for l in &mut r.lines {
                *l = l.replace("{n}", &size.to_string());
            }
            self.send(&r);
            return Ok(Flow::Continue);
        }
        let total = txn.bdat_total;
        let too_big = txn.bdat_too_big;
        let data = std::mem::take(&mut txn.bdat).freeze();
        self.finish(data, total, too_big, true).await
    }

    /// The end of a message's data: session checks, the final reply, then the categoriser.
    async fn finish(
        &mut self,
        data: Bytes,
        size: u64,
        too_big: bool,
        bdat: bool,
    ) -> io::Result<Flow> {
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        let mut record = txn.record;
        record.size = size;
        record.bdat = bdat;
        let replies = self.shared.cfg.replies.clone();
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        if let Some((flow, line)) = self.fault(&[Hook::EndOfData]).await? {
            // The client got the scripted line (or nothing): the message was not taken.
            let outcome = match line {
                Some(reply) => Outcome::Rejected { reply },
                None => Outcome::Abandoned,
            };
            self.shared.record(record, outcome);
            return Ok(flow);
        }
        let reject = |reply: &Reply| Outcome::Rejected {
            reply: reply.first_line(),
        };
        let (reply, outcome) = if too_big {
            (replies.too_big.clone(), reject(&replies.too_big))
        } else if cfg
            .limits
            .max_header_size
            .is_some_and(|m| header_len(&data) as u64 > m)
        {
            (
                replies.header_too_big.clone(),
                reject(&replies.header_too_big),
            )
        } else if let Some(rule) = cfg.spam.iter().find(|rule| {
            let hay = match &rule.field {
                SpamField::Sender => record.sender.clone(),
                SpamField::Subject => header_value(&data, "Subject"),
                SpamField::Header(h) => header_value(&data, h),
            };
            hay.is_some_and(|h| {
                h.to_ascii_lowercase()
                    .contains(&rule.contains.to_ascii_lowercase())
            })
        }) {
            let _ = rule;
            (
                replies.spam.clone(),
                Outcome::Badmail {
                    reply: replies.spam.first_line(),
                },
            )
        } else {
            let mut r = replies.queued.clone();
            let qid = format!("<{}.{}@{}>", self.id, record.id, cfg.hostname);
            for l in &mut r.lines {
                *l = l.replace("{id}", &qid);
            }
            (r, Outcome::Accepted)
        };
        let lost = std::mem::take(&mut self.lose_reply);
        if lost {
            // Taken, but the reply never leaves: the client cannot know.
            self.shared
                .host
                .log(self.id, "S: (fault: reply lost, connection closed)".into());
            record.reply_lost = true;
        } else {
            self.send(&reply);
        }
        if outcome == Outcome::Accepted {
            self.shared.stats(self.id, |s| s.accepted += 1);
            record.deliveries = self.categorise(&txn.accepted_rcpts, size);
            self.unacknowledged = Some(record.id);
        }
        if self.shared.cfg.capture == CaptureMode::Full {
            record.data = data;
        }
        self.spool(&record, &outcome);
        self.shared.record(record, outcome);
        if lost {
            self.flush().await?;
            return Ok(Flow::End(SessionEnd::FaultReplyLost));
        }
        Ok(Flow::Continue)
    }

    /// What Exchange's categoriser does after the 250: organisation and mailbox limits, quota.
    fn categorise(&self, rcpts: &[String], size: u64) -> Vec<Delivery> {
        let cfg = &self.shared.cfg;
        let mut st = self.shared.state();
        rcpts
            .iter()
            .map(|rcpt| {
                let key = rcpt.to_ascii_lowercase();
                let spec = cfg.mailboxes.get(&key);
                let ndr = |reply: &Reply| Delivery::Ndr {
                    recipient: rcpt.clone(),
                    text: reply.first_line(),
                };
                if cfg.org_limit.is_some_and(|l| size > l) {
                    return ndr(&cfg.replies.ndr_org_size);
                }
                if spec.and_then(|s| s.receive_limit).is_some_and(|l| size > l) {
                    return ndr(&cfg.replies.ndr_recipient_size);
                }
                let used = st.used.entry(key).or_insert(0);
                if spec.and_then(|s| s.quota).is_some_and(|q| *used + size > q) {
                    return ndr(&cfg.replies.ndr_mailbox_full);
                }
                *used += size;
                Delivery::Delivered {
                    recipient: rcpt.clone(),
                }
            })
            .collect()
    }

    fn spool(&self, record: &Received, outcome: &Outcome) {
        let Some(dir) = &self.shared.cfg.spool else {
            return;
        };
        let dir = match outcome {
            Outcome::Accepted => dir.clone(),
            Outcome::Badmail { .. } => dir.join("badmail"),
            _ => return,
        };
        let name = format!("{:04}-{:06}.eml", record.session, record.id);
        let write = std::fs::create_dir_all(&dir).and_then(|_| {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &record.data)?;
            std::fs::rename(&tmp, dir.join(&name))
        });
        if let Err(e) = write {
            self.shared
                .host
                .log(self.id, format!("-- spool failed: {e} --"));
        }
    }

    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> io::Result<Flow> {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let replies = cfg.replies.clone();
        let Some((user, pass)) = cfg.credentials.clone().filter(|_| cfg.ext.auth) else {
            self.send(&replies.unrecognized);
            return Ok(Flow::Continue);
        };
        if self.helo.is_none() {
            self.send(&replies.need_hello);
            return Ok(Flow::Continue);
        }
        let decoded = |s: &str| B64.decode(s.trim()).ok();
        let ok = match mechanism.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(i) => decoded(&i),
                    None => self.ask("").await?.as_deref().and_then(decoded),
                };
                resp.is_some_and(|r| {
                    let parts: Vec<&[u8]> = r.split(|&b| b == 0).collect();
                    matches!(parts.as_slice(), [_, u, p] if *u == user.as_bytes() && *p == pass.as_bytes())
                })
            }
            "LOGIN" => {
                let u = match initial {
                    Some(i) => decoded(&i),
                    None => self.ask("VXNlcm5hbWU6").await?.as_deref().and_then(decoded),
                };
                let p = self.ask("UGFzc3dvcmQ6").await?.as_deref().and_then(decoded);
                u.is_some_and(|u| u == user.as_bytes()) && p.is_some_and(|p| p == pass.as_bytes())
            }
            _ => {
                self.send(&Reply::new(
                    504,
                    Some(popbridge_proto::smtp::EnhancedCode::new(5, 7, 4)),
                    "Unrecognized authentication type",
                ));
                return Ok(Flow::Continue);
            }
        };
        if ok {
            self.authenticated = true;
            self.send(&replies.auth_ok);
        } else {
            self.logon_failures += 1;
            let n = self.logon_failures;
            self.shared.stats(self.id, |s| s.logon_failures = n);
            self.send(&replies.auth_failed);
            if cfg.limits.max_logon_failures.is_some_and(|m| n >= m) {
                return Ok(Flow::End(self.too_many_errors().await?));
            }
        }
        Ok(Flow::Continue)
    }

    /// Sends `334 challenge` and reads the answer line (`None` on `*` or end of stream).
    async fn ask(&mut self, challenge: &str) -> io::Result<Option<String>> {
        self.out
            .extend_from_slice(format!("334 {challenge}\r\n").as_bytes());
        self.shared.host.log(self.id, format!("S: 334 {challenge}"));
        let Some(line) = self.read_line().await? else {
            return Ok(None);
        };
        self.shared.host.log(self.id, "C: ***".into());
        let text = String::from_utf8_lossy(popbridge_proto::line::trim_eol(&line)).into_owned();
        Ok((text != "*").then_some(text))
    }
}
