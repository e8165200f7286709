//! One POP3 session: AUTHORIZATION, TRANSACTION, UPDATE, over a plain or TLS stream.
//!
//! Replies are gathered in an output buffer and written when the client has no further
//! complete command buffered, so pipelined commands get one write per batch.

use std::io;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use mock_core::fault::{FaultAction, Hook};
use mock_core::host::{EndGuard, Flow, SessionEnd, Step};
use mock_core::stream::Conn;
use popbridge_proto::ntlm;
use popbridge_proto::pop3::{Pop3Command, Pop3Reply, RespCode, MAX_COMMAND_LINE, MAX_SASL_LINE};
use popbridge_proto::{DotStuffer, LineDecoder, LineError};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::caps::{Capabilities, Expire};
use crate::server::{ServerTls, Shared, Stored};
use popbridge_proto::pop3::AuthMethod;

/// Messages at most this big are copied into the output buffer to batch with other replies;
/// bigger ones go out from their shared bytes in a vectored write.
const COPY_LIMIT: usize = 64 * 1024;

enum Phase {
    Authorization,
    Transaction(Tx),
}

struct Tx {
    user: String,
    messages: Arc<Vec<Arc<Stored>>>,
    sizes: Vec<u64>,
    deleted: Vec<bool>,
}

/// What a reply is made from.
enum Produce {
    /// A fixed status line (the greeting, a parse error).
    Status(Pop3Reply),
    /// The outcome of a command.
    Command(Pop3Command),
}

/// Releases the mailbox lock and records the end however the session stops.
struct Guard {
    end: EndGuard<Shared>,
    id: u64,
    user: Option<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut st = self.end.protocol().state();
        if let Some(user) = &self.user {
            if let Some(mb) = st.mailboxes.get_mut(user) {
                if mb.locked_by == Some(self.id) {
                    mb.locked_by = None;
                }
            }
        }
    }
}

struct Session<S> {
    shared: Arc<Shared>,
    id: u64,
    conn: Conn<S>,
    /// True once the greeting went out (serving resumes after a handshake).
    greeted: bool,
    inbuf: BytesMut,
    out: BytesMut,
    /// A large body to send right after `out`.
    body: Option<Bytes>,
    /// Message ids whose complete RETR reply is in `out`/`body`, counted once written.
    retrieving: Vec<(u64, String)>,
    lines: LineDecoder,
    phase: Phase,
    timestamp: Option<String>,
    pending_user: Option<String>,
    guard: Guard,
}

pub(crate) async fn run<S>(shared: Arc<Shared>, stream: S, id: u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let guard = Guard {
        end: EndGuard::new(shared.clone(), id),
        id,
        user: None,
    };
    let mut s = Session {
        shared: shared.clone(),
        id,
        conn: shared.host.connection(stream, shared.cfg.idle_timeout),
        greeted: false,
        inbuf: BytesMut::with_capacity(4096),
        out: BytesMut::with_capacity(4096),
        body: None,
        retrieving: Vec::new(),
        lines: LineDecoder::new(MAX_COMMAND_LINE),
        phase: Phase::Authorization,
        timestamp: None,
        pending_user: None,
        guard,
    };
    let end = loop {
        match s.serve().await {
            Ok(Step::Tls(cfg)) => match shared.host.upgrade(id, s.conn, cfg).await {
                Some(conn) => s.conn = conn,
                None => return,
            },
            Ok(Step::End(end)) => break end,
            Err(e) => break SessionEnd::from_io(&e),
        }
    };
    shared.host.finish(id, &mut s.conn, end).await;
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn caps(&self) -> &Capabilities {
        match self.phase {
            Phase::Authorization => &self.shared.cfg.before,
            Phase::Transaction(_) => &self.shared.cfg.after,
        }
    }

    fn code(&self, code: RespCode) -> Option<RespCode> {
        let caps = self.caps();
        let on = match code {
            RespCode::Auth => caps.auth_resp_code,
            _ => caps.resp_codes,
        };
        on.then_some(code)
    }

    /// Serves until the session ends or a TLS handshake is due; called again after it.
    async fn serve(&mut self) -> io::Result<Step> {
        if !self.greeted {
            if let ServerTls::Implicit(cfg) = &self.shared.cfg.tls {
                if !self.conn.is_tls() {
                    return Ok(Step::Tls(cfg.clone()));
                }
            }
            self.greeted = true;
            if self.shared.cfg.apop_timestamp {
                let n: u32 = self.shared.host.faults().rng().gen();
                self.timestamp = Some(format!("<{n}.{}@{}>", self.id, self.shared.cfg.hostname));
            }
            let greeting = match &self.timestamp {
                Some(ts) => Pop3Reply::ok(format!("POP3 server ready {ts}")),
                None => Pop3Reply::ok("POP3 server ready"),
            };
            if let Some(step) = self
                .respond(Hook::Greeting, Produce::Status(greeting))
                .await?
            {
                return Ok(step);
            }
        }
        loop {
            let line = match self.read_line(MAX_COMMAND_LINE).await {
                Ok(Some(l)) => l,
                Ok(None) => return Ok(Step::End(SessionEnd::ClientClosed)),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.status(&Pop3Reply::err("Line too long"));
                    self.flush().await?;
                    return Ok(Step::End(SessionEnd::Error(e.to_string())));
                }
                Err(e) => return Err(e),
            };
            let parsed = Pop3Command::parse(&line);
            let (keyword, shown) = match &parsed {
                Ok(cmd) => (cmd.keyword().to_string(), cmd.redacted()),
                Err(_) => redact_invalid(&line),
            };
            if self.shared.host.recording() {
                self.shared
                    .host
                    .with_record(self.id, |r| r.commands.push(shown.clone()));
            }
            self.shared.host.log(self.id, format!("C: {shown}"));
            let hook = Hook::Command(keyword);
            let produce = match parsed {
                Ok(cmd) => Produce::Command(cmd),
                Err(e) => Produce::Status(Pop3Reply::err(e.to_string())),
            };
            if let Some(step) = self.respond(hook, produce).await? {
                return Ok(step);
            }
        }
    }

    /// Produces one reply through `produce`, applying any fault scripted for `hook`.
    /// Returns `Some(step)` when the session must stop or upgrade to TLS.
    async fn respond(&mut self, hook: Hook, produce: Produce) -> io::Result<Option<Step>> {
        // A large body goes out by reference after `out`; every later reply is appended to
        // `out`, so send a parked body first or the next reply would overtake it.
        if self.body.is_some() {
            self.flush().await?;
        }
        let fault = self.shared.host.faults().take(&[hook, Hook::AnyCommand]);
        let mut cut = None;
        match fault {
            Some(FaultAction::CloseBeforeReply) => {
                self.shared
                    .host
                    .log(self.id, "S: (fault: connection closed)".into());
                self.flush().await?;
                return Ok(Some(Step::End(SessionEnd::FaultClosed)));
            }
            Some(FaultAction::ReplyAndClose(line)) => {
                self.shared
                    .host
                    .log(self.id, format!("S: {line} (fault, then close)"));
                self.out.extend_from_slice(line.as_bytes());
                self.out.extend_from_slice(b"\r\n");
                self.flush().await?;
                return Ok(Some(Step::End(SessionEnd::FaultClosed)));
            }
            Some(FaultAction::Reply(line)) => {
                self.shared.host.log(self.id, format!("S: {line} (fault)"));
                self.out.extend_from_slice(line.as_bytes());
                self.out.extend_from_slice(b"\r\n");
                return Ok(None);
            }
            Some(FaultAction::Delay(d)) => {
                self.flush().await?;
                tokio::time::sleep(d).await;
            }
            Some(FaultAction::GarbageLine(g)) => {
                self.shared
                    .host
                    .log(self.id, "S: (fault: garbage line)".into());
                self.out.extend_from_slice(&g);
                self.out.extend_from_slice(b"\r\n");
            }
            Some(FaultAction::CloseAfterBytes(n)) => {
                self.flush().await?;
                cut = Some(n);
            }
            Some(FaultAction::LoseReply) => {
                // Performed below, then not one octet of its reply is sent.
                self.flush().await?;
                cut = Some(0);
            }
            None => {}
        }
        let flow = match produce {
            Produce::Status(reply) => {
                self.status(&reply);
                Flow::Continue
            }
            Produce::Command(cmd) => self.dispatch(cmd).await?,
        };
        if let Some(n) = cut {
            let mut all = std::mem::take(&mut self.out);
            if let Some(b) = self.body.take() {
                all.extend_from_slice(&b);
            }
            all.truncate(n);
            self.retrieving.clear();
            self.conn.write(&all).await?;
            self.shared
                .host
                .log(self.id, format!("S: (fault: closed after {n} octets)"));
            return Ok(Some(Step::End(SessionEnd::FaultClosed)));
        }
        match flow {
            Flow::Continue => Ok(None),
            Flow::End(end) => {
                self.flush().await?;
                Ok(Some(Step::End(end)))
            }
            Flow::StartTls => {
                self.flush().await?;
                // Anything the client pipelined after STLS was sent in clear: discard it
                // (the STARTTLS command-injection class of bugs).
                self.inbuf.clear();
                self.lines.reset();
                let ServerTls::Stls(cfg) = self.shared.cfg.tls.clone() else {
                    return Ok(Some(Step::End(SessionEnd::Error(
                        "STLS without TLS configuration".into(),
                    ))));
                };
                Ok(Some(Step::Tls(cfg)))
            }
        }
    }

    /// The next complete line, reading (and flushing pending replies) as needed.
    /// `Ok(None)` on a clean end of stream; `InvalidData` when a line is too long.
    async fn read_line(&mut self, max: usize) -> io::Result<Option<BytesMut>> {
        self.lines.set_max(max);
        loop {
            match self.lines.next_line(&mut self.inbuf) {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {}
                Err(LineError::TooLong { max }) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line longer than {max} octets"),
                    ))
                }
            }
            self.flush().await?;
            self.inbuf.reserve(4096);
            if self.conn.read(&mut self.inbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes pending replies: the buffer and any large body, in one vectored write when possible.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() && self.body.is_none() {
            return Ok(());
        }
        let head = std::mem::take(&mut self.out).freeze();
        self.conn.send(head, self.body.take()).await?;
        self.out = BytesMut::with_capacity(4096);
        if !self.retrieving.is_empty() {
            let done = std::mem::take(&mut self.retrieving);
            if let Phase::Transaction(tx) = &self.phase {
                let mut st = self.shared.state();
                if let Some(mb) = st.mailboxes.get_mut(&tx.user) {
                    let n = done.len() as u64;
                    for (id, uid) in done {
                        mb.retrievals += 1;
                        if mb.retrieved_ids.insert(id) {
                            mb.retrieved.push(uid);
                        }
                    }
                    drop(st);
                    self.shared.retrievals.send_modify(|c| *c += n);
                }
            }
        }
        Ok(())
    }

    fn status(&mut self, reply: &Pop3Reply) {
        let line = reply.to_string();
        self.shared
            .host
            .log(self.id, format!("S: {}", line.trim_end()));
        self.out.extend_from_slice(line.as_bytes());
    }

    fn ok(&mut self, text: impl Into<String>) {
        self.status(&Pop3Reply::ok(text));
    }

    fn err(&mut self, text: impl Into<String>) {
        self.status(&Pop3Reply::err(text));
    }

    fn err_code(&mut self, code: RespCode, text: &str) {
        let reply = match self.code(code) {
            Some(c) => Pop3Reply::err_code(c, text),
            None => Pop3Reply::err(text),
        };
        self.status(&reply);
    }

    /// A `+OK` line and a multi-line listing.
    fn listing(&mut self, head: &str, lines: &[String]) {
        self.ok(head);
        for l in lines {
            if l.starts_with('.') {
                self.out.extend_from_slice(b".");
            }
            self.out.extend_from_slice(l.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b".\r\n");
        self.shared
            .host
            .log(self.id, format!("S: ({} lines)", lines.len()));
    }

    async fn dispatch(&mut self, cmd: Pop3Command) -> io::Result<Flow> {
        if matches!(cmd, Pop3Command::Capa) {
            if !self.caps().capa {
                self.err("Unknown command: CAPA");
                return Ok(Flow::Continue);
            }
            let stls_possible =
                matches!(self.shared.cfg.tls, ServerTls::Stls(_)) && !self.conn.is_tls();
            let lines = self.caps().listing(stls_possible);
            self.listing("Capability list follows", &lines);
            return Ok(Flow::Continue);
        }
        if matches!(self.phase, Phase::Authorization) {
            self.authorization(cmd).await
        } else {
            Ok(self.transaction(cmd))
        }
    }

    async fn authorization(&mut self, cmd: Pop3Command) -> io::Result<Flow> {
        match cmd {
            Pop3Command::User(name) => {
                if !self.caps().user {
                    self.err("USER not supported");
                } else {
                    self.pending_user = Some(name);
                    self.ok("send PASS");
                }
            }
            Pop3Command::Pass(pass) => match self.pending_user.take() {
                None => self.err("USER first"),
                Some(user) => {
                    let ok = self.check(&user, AuthMethod::User, |mb| mb.password == pass);
                    self.finish_auth(user, ok);
                }
            },
            Pop3Command::Apop { name, digest } => match self.timestamp.clone() {
                None => self.err("APOP not available: no timestamp in greeting"),
                Some(ts) => {
                    let ok = self.check(&name, AuthMethod::Apop, |mb| {
                        md5_hex(format!("{ts}{}", mb.password).as_bytes())
                            .eq_ignore_ascii_case(&digest)
                    });
                    self.finish_auth(name, ok);
                }
            },
            Pop3Command::Auth { mechanism, initial } => return self.auth(mechanism, initial).await,
            Pop3Command::Stls => {
                let possible =
                    matches!(self.shared.cfg.tls, ServerTls::Stls(_)) && self.caps().stls;
                if self.conn.is_tls() {
                    self.err("Already using TLS");
                } else if !possible {
                    self.err("STLS not available");
                } else {
                    self.ok("Begin TLS negotiation");
                    return Ok(Flow::StartTls);
                }
            }
            Pop3Command::Quit => {
                self.ok("Bye");
                return Ok(Flow::End(SessionEnd::QuitUnauthenticated));
            }
            other => self.err(format!("{} not allowed before login", other.keyword())),
        }
        Ok(Flow::Continue)
    }

    /// True when `user` exists, accepts `method` and `verify` holds for its mailbox.
    fn check(
        &self,
        user: &str,
        method: AuthMethod,
        verify: impl FnOnce(&crate::maildrop::Maildrop) -> bool,
    ) -> bool {
        let st = self.shared.state();
        st.mailboxes
            .get(user)
            .is_some_and(|mb| mb.spec.methods.contains(&method) && verify(&mb.spec))
    }

    /// After credentials were checked: lock the maildrop and enter TRANSACTION, or refuse.
    fn finish_auth(&mut self, user: String, credentials_ok: bool) {
        if !credentials_ok {
            self.err_code(RespCode::Auth, "Authentication failed");
            return;
        }
        let login_delay = self
            .shared
            .cfg
            .before
            .login_delay
            .or(self.shared.cfg.after.login_delay);
        let now = Instant::now();
        let outcome = {
            let mut st = self.shared.state();
            let Some(mb) = st.mailboxes.get_mut(&user) else {
                drop(st);
                self.err_code(RespCode::Auth, "Authentication failed");
                return;
            };
            if mb.locked_by.is_some() {
                Err((RespCode::InUse, "Maildrop is locked by another session"))
            } else if login_delay.zip(mb.last_login).is_some_and(|(d, last)| {
                now.duration_since(last) < std::time::Duration::from_secs(d.into())
            }) {
                Err((
                    RespCode::LoginDelay,
                    "Login too soon, wait before logging in again",
                ))
            } else {
                mb.locked_by = Some(self.id);
                mb.last_login = Some(now);
                let messages = mb.messages.clone();
                let sizes = messages
                    .iter()
                    .map(|m| mb.reported.get(&m.id).copied().unwrap_or(m.size))
                    .collect();
                Ok((messages, sizes))
            }
        };
        match outcome {
            Err((code, text)) => self.err_code(code, text),
            Ok((messages, sizes)) => {
                let sizes: Vec<u64> = sizes;
                let total: u64 = sizes.iter().sum();
                let n = messages.len();
                self.guard.user = Some(user.clone());
                self.shared
                    .host
                    .with_record(self.id, |r| r.user = Some(user.clone()));
                self.phase = Phase::Transaction(Tx {
                    user,
                    deleted: vec![false; n],
                    messages,
                    sizes,
                });
                self.ok(format!("Logged in, {n} messages ({total} octets)"));
            }
        }
    }

    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> io::Result<Flow> {
        if mechanism.is_empty() {
            let names: Vec<String> = self
                .caps()
                .sasl
                .iter()
                .filter_map(|m| m.sasl_name())
                .map(str::to_string)
                .collect();
            self.listing("Methods supported", &names);
            return Ok(Flow::Continue);
        }
        let Some(method) =
            AuthMethod::from_sasl(&mechanism).filter(|m| self.caps().sasl.contains(m))
        else {
            self.err(format!("Unsupported authentication mechanism {mechanism}"));
            return Ok(Flow::Continue);
        };
        match method {
            AuthMethod::Plain => {
                let Some(resp) = self.initial_or_ask(initial, "").await? else {
                    return Ok(Flow::Continue);
                };
                let parts: Vec<&[u8]> = resp.split(|&b| b == 0).collect();
                match parts.as_slice() {
                    [_authz, user, pass] => {
                        let user = String::from_utf8_lossy(user).into_owned();
                        let ok = self.check(&user, AuthMethod::Plain, |mb| {
                            mb.password.as_bytes() == *pass
                        });
                        self.finish_auth(user, ok);
                    }
                    _ => self.err("Malformed PLAIN response"),
                }
            }
            AuthMethod::Login => {
                let Some(user) = self.initial_or_ask(initial, "VXNlcm5hbWU6").await? else {
                    return Ok(Flow::Continue);
                };
                let Some(pass) = self.ask("UGFzc3dvcmQ6").await? else {
                    return Ok(Flow::Continue);
                };
                let user = String::from_utf8_lossy(&user).into_owned();
                let ok = self.check(&user, AuthMethod::Login, |mb| {
                    mb.password.as_bytes() == pass.as_slice()
                });
                self.finish_auth(user, ok);
            }
            AuthMethod::CramMd5 => {
                let n: u64 = self.shared.host.faults().rng().gen();
                let challenge = format!("<{n}.{}@{}>", self.id, self.shared.cfg.hostname);
                let Some(resp) = self.ask(&B64.encode(&challenge)).await? else {
                    return Ok(Flow::Continue);
                };
                let resp = String::from_utf8_lossy(&resp).into_owned();
                match resp.rsplit_once(' ') {
                    Some((user, digest)) => {
                        let user = user.to_string();
                        let ok = self.check(&user, AuthMethod::CramMd5, |mb| {
                            let Ok(mut mac) = Hmac::<Md5>::new_from_slice(mb.password.as_bytes())
                            else {
                                return false;
                            };
                            mac.update(challenge.as_bytes());
                            hex::encode(mac.finalize().into_bytes()).eq_ignore_ascii_case(digest)
                        });
                        self.finish_auth(user, ok);
                    }
                    None => self.err("Malformed CRAM-MD5 response"),
                }
            }
            AuthMethod::Xoauth2 => {
                let Some(resp) = self.initial_or_ask(initial, "").await? else {
                    return Ok(Flow::Continue);
                };
                let text = String::from_utf8_lossy(&resp).into_owned();
                let mut user = None;
                let mut token = None;
                for field in text.split('\x01') {
                    if let Some(u) = field.strip_prefix("user=") {
                        user = Some(u.to_string());
                    } else if let Some(t) = field.strip_prefix("auth=Bearer ") {
                        token = Some(t.to_string());
                    }
                }
                let ok = match (&user, &token) {
                    (Some(u), Some(t)) => {
                        self.check(u, AuthMethod::Xoauth2, |mb| match &mb.oauth {
                            Some(provider) => provider.accept_bearer(u, t),
                            None => mb.token.as_deref().unwrap_or(&mb.password) == t.as_str(),
                        })
                    }
                    _ => false,
                };
                if ok {
                    self.finish_auth(user.unwrap_or_default(), true);
                } else {
                    // RFC 7628 style: an error challenge, the client answers with an empty line.
                    let err = B64.encode(
                        r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#,
                    );
                    if self.ask(&err).await?.is_none() {
                        return Ok(Flow::Continue);
                    }
                    self.err_code(RespCode::Auth, "Authentication failed");
                }
            }
            AuthMethod::Ntlm => return self.ntlm(initial).await,
            AuthMethod::User | AuthMethod::Apop => unreachable!("not SASL mechanisms"),
        }
        Ok(Flow::Continue)
    }

    /// AUTH NTLM as Exchange speaks it: an empty continuation, the client's NEGOTIATE,
    /// `+ <CHALLENGE>`, the client's AUTHENTICATE, then `+OK` or `-ERR [AUTH]`. A message
    /// that does not parse is `-ERR` without a code (back to AUTHORIZATION).
    async fn ntlm(&mut self, initial: Option<String>) -> io::Result<Flow> {
        let Some(negotiate) = self.initial_or_ask(initial, "").await? else {
            return Ok(Flow::Continue);
        };
        let Ok(negotiate) = ntlm::Negotiate::parse(&negotiate) else {
            self.err("Malformed NTLM negotiate message");
            return Ok(Flow::Continue);
        };
        let server_challenge: [u8; 8] = self.shared.host.faults().rng().gen();
        let challenge =
            ntlm_challenge(negotiate.flags, server_challenge, &self.shared.cfg.hostname);
        let Ok(bytes) = challenge.to_bytes() else {
            self.err("Cannot build an NTLM challenge");
            return Ok(Flow::Continue);
        };
        let Some(authenticate) = self.ask(&B64.encode(bytes)).await? else {
            return Ok(Flow::Continue);
        };
        let Ok(authenticate) = ntlm::Authenticate::parse(&authenticate) else {
            self.err("Malformed NTLM authenticate message");
            return Ok(Flow::Continue);
        };
        let user = authenticate.user.clone();
        let ok = self.check(&user, AuthMethod::Ntlm, |mb| {
            authenticate.verify(&server_challenge, &mb.password)
        });
        self.finish_auth(user, ok);
        Ok(Flow::Continue)
    }

    /// The initial response if the client sent one (`=` is empty), else a continuation.
    async fn initial_or_ask(
        &mut self,
        initial: Option<String>,
        challenge: &str,
    ) -> io::Result<Option<Vec<u8>>> {
        match initial {
            Some(i) if i == "=" => Ok(Some(Vec::new())),
            Some(i) => match B64.decode(i.trim()) {
                Ok(v) => Ok(Some(v)),
                Err(_) => {
                    self.err("Invalid base64 in initial response");
                    Ok(None)
                }
            },
            None => self.ask(challenge).await,
        }
    }

    /// Sends `+ challenge`, reads the client's line; `None` (after replying) when cancelled,
    /// malformed or the connection ended.
    async fn ask(&mut self, challenge: &str) -> io::Result<Option<Vec<u8>>> {
        self.out.extend_from_slice(b"+ ");
        self.out.extend_from_slice(challenge.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.shared.host.log(self.id, format!("S: + {challenge}"));
        let line = match self.read_line(MAX_SASL_LINE).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during AUTH",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.err("SASL response too long");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.lines.set_max(MAX_COMMAND_LINE);
        self.shared.host.log(self.id, "C: ***".into());
        let text = popbridge_proto::line::trim_eol(&line);
        if text == b"*" {
            self.err("Authentication cancelled");
            return Ok(None);
        }
        match B64.decode(text) {
            Ok(v) => Ok(Some(v)),
            Err(_) => {
                self.err("Invalid base64 in response");
                Ok(None)
            }
        }
    }

    fn transaction(&mut self, cmd: Pop3Command) -> Flow {
        let caps = self.shared.cfg.after.clone();
        let Phase::Transaction(tx) = &mut self.phase else {
            return Flow::Continue;
        };
        // Resolves a message number to its index, refusing unknown and deleted ones.
        let pick = |tx: &Tx, n: u32| -> Result<usize, String> {
            let i = (n as usize)
                .checked_sub(1)
                .filter(|&i| i < tx.messages.len());
            match i {
                None => Err(format!("No such message {n}")),
                Some(i) if tx.deleted[i] => Err(format!("Message {n} already deleted")),
                Some(i) => Ok(i),
            }
        };
        match cmd {
            Pop3Command::Stat => {
                let (n, total) = live(tx).fold((0, 0), |(n, t), (_, _, s)| (n + 1, t + s));
                self.ok(format!("{n} {total}"));
            }
            Pop3Command::List(None) => {
                let lines: Vec<String> =
                    live(tx).map(|(i, _, s)| format!("{} {s}", i + 1)).collect();
                self.listing(&format!("{} messages", lines.len()), &lines);
            }
            Pop3Command::List(Some(n)) => match pick(tx, n) {
                Ok(i) => {
                    let s = tx.sizes[i];
                    self.ok(format!("{n} {s}"));
                }
                Err(e) => self.err(e),
            },
            Pop3Command::Uidl(_) if !caps.uidl => self.err("UIDL not supported"),
            Pop3Command::Uidl(None) => {
                let lines: Vec<String> = live(tx)
                    .map(|(i, m, _)| format!("{} {}", i + 1, m.uid))
                    .collect();
                self.listing("Unique-ID listing follows", &lines);
            }
            Pop3Command::Uidl(Some(n)) => match pick(tx, n) {
                Ok(i) => {
                    let uid = tx.messages[i].uid.clone();
                    self.ok(format!("{n} {uid}"));
                }
                Err(e) => self.err(e),
            },
            Pop3Command::Retr(n) => match pick(tx, n) {
                Ok(i) => {
                    let m = tx.messages[i].clone();
                    if caps.expire == Some(Expire::Days(0)) {
                        tx.deleted[i] = true;
                    }
                    let size = tx.sizes[i];
                    self.ok(format!("{size} octets"));
                    self.shared
                        .host
                        .log(self.id, format!("S: (message, {} octets)", m.size));
                    self.retrieving.push((m.id, m.uid.clone()));
                    // `respond` flushed any parked body, so at most one is pending.
                    if m.wire.len() <= COPY_LIMIT {
                        self.out.extend_from_slice(&m.wire);
                    } else {
                        self.body = Some(m.wire.clone());
                    }
                }
                Err(e) => self.err(e),
            },
            Pop3Command::Top { .. } if !caps.top => self.err("TOP not supported"),
            Pop3Command::Top { msg, lines } => match pick(tx, msg) {
                Ok(i) => {
                    let m = tx.messages[i].clone();
                    let head_end = m.header_end();
                    let mut end = head_end;
                    let data = &m.data;
                    // The blank line, then `lines` body lines.
                    let mut remaining = lines as u64 + 1;
                    while end < data.len() && remaining > 0 {
                        match data[end..].iter().position(|&b| b == b'\n') {
                            Some(p) => end += p + 1,
                            None => end = data.len(),
                        }
                        remaining -= 1;
                    }
                    let wire = DotStuffer::stuff_all(&data[..end], false);
                    self.ok("top of message follows");
                    self.shared
                        .host
                        .log(self.id, format!("S: (top, {} octets)", end));
                    self.out.extend_from_slice(&wire);
                }
                Err(e) => self.err(e),
            },
            Pop3Command::Dele(n) => match pick(tx, n) {
                Ok(i) => {
                    tx.deleted[i] = true;
                    self.ok(format!("Message {n} deleted"));
                }
                Err(e) => self.err(e),
            },
            Pop3Command::Rset => {
                tx.deleted.iter_mut().for_each(|d| *d = false);
                let n = tx.messages.len();
                self.ok(format!("{n} messages"));
            }
            Pop3Command::Noop => self.ok(""),
            Pop3Command::Quit => {
                let removed = self.update();
                self.ok(format!("Bye, {removed} messages deleted"));
                return Flow::End(SessionEnd::QuitUpdate);
            }
            other => self.err(format!("{} not allowed after login", other.keyword())),
        }
        Flow::Continue
    }

    /// The UPDATE state: removes the marked messages from the maildrop and releases the lock.
    fn update(&mut self) -> usize {
        let Phase::Transaction(tx) = &self.phase else {
            return 0;
        };
        let gone: std::collections::HashSet<u64> = tx
            .messages
            .iter()
            .zip(&tx.deleted)
            .filter(|(_, d)| **d)
            .map(|(m, _)| m.id)
            .collect();
        let mut st = self.shared.state();
        let Some(mb) = st.mailboxes.get_mut(&tx.user) else {
            return 0;
        };
        let mut uids = Vec::new();
        let kept: Vec<Arc<Stored>> = mb
            .messages
            .iter()
            .filter(|m| {
                if gone.contains(&m.id) {
                    uids.push(m.uid.clone());
                    false
                } else {
                    true
                }
            })
            .cloned()
            .collect();
        mb.messages = Arc::new(kept);
        for id in &gone {
            mb.reported.remove(id);
        }
        let n = uids.len();
        mb.deleted.extend(uids);
        if mb.locked_by == Some(self.id) {
            mb.locked_by = None;
        }
        n
    }
}

/// The NetBIOS domain the mock's NTLM challenge names (its target name).
const NTLM_DOMAIN: &str = "MOCK";

/// The CHALLENGE for a client that asked for `requested`: Unicode text when asked for
/// (else OEM), a domain target, and target information with NetBIOS and DNS names and
/// the current time (MsvAvTimestamp, as Windows servers send it).
fn ntlm_challenge(requested: u32, server_challenge: [u8; 8], hostname: &str) -> ntlm::Challenge {
    use ntlm::{av, flags, AvPair, TargetInfo};
    let charset = if requested & flags::NEGOTIATE_UNICODE != 0 {
        flags::NEGOTIATE_UNICODE
    } else {
        flags::NEGOTIATE_OEM
    };
    let kept = requested
        & (flags::NEGOTIATE_ALWAYS_SIGN
            | flags::NEGOTIATE_EXTENDED_SESSIONSECURITY
            | flags::NEGOTIATE_128
            | flags::NEGOTIATE_56);
    // AV pair names are UTF-16LE whatever the negotiated character set (MS-NLMP 2.2.2.1).
    let text = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let pair = |id, value| AvPair { id, value };
    ntlm::Challenge {
        flags: charset
            | kept
            | flags::REQUEST_TARGET
            | flags::NEGOTIATE_NTLM
            | flags::TARGET_TYPE_DOMAIN
            | flags::NEGOTIATE_TARGET_INFO,
        server_challenge,
        target_name: NTLM_DOMAIN.into(),
        target_info: TargetInfo {
            pairs: vec![
                pair(av::NB_DOMAIN_NAME, text(NTLM_DOMAIN)),
                pair(av::NB_COMPUTER_NAME, text("MOCK-POP3")),
                pair(av::DNS_COMPUTER_NAME, text(hostname)),
                pair(av::TIMESTAMP, ntlm::filetime(now).to_le_bytes().to_vec()),
            ],
        },
    }
}

/// The live (not deleted) messages: (index, message, reported size).
fn live(tx: &Tx) -> impl Iterator<Item = (usize, &Arc<Stored>, u64)> {
    tx.messages
        .iter()
        .enumerate()
        .filter(|(i, _)| !tx.deleted[*i])
        .map(|(i, m)| (i, m, tx.sizes[i]))
}

/// The keyword and a transcript form of a line that did not parse, secrets hidden.
fn redact_invalid(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(popbridge_proto::line::trim_eol(line)).into_owned();
    let kw = mock_core::host::keyword_of(line);
    let shown = match kw.as_str() {
        "PASS" | "APOP" | "AUTH" => format!("{kw} *** (invalid)"),
        _ => format!(
            "{} (invalid)",
            text.chars().take(64).collect::<String>().escape_debug()
        ),
    };
    (kw, shown)
}
