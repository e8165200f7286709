//! One pass over one account: the invariants of design.md in code.
//!
//! Order of work for a message: download (bounded, spooled when large), submit over SMTP
//! (or write it into the pickup folder, see [`crate::pickup`]), record the delivery
//! durably in the ledger, and only then DELE; deletions take effect at QUIT. A message
//! already recorded as delivered is never submitted again, only deleted. Permanent
//! refusals leave the message and count towards quarantine; temporary ones leave it for
//! the next pass; a lost SMTP session is replaced (bounded) and the pass goes on.
//!
//! Envelope recipients: the account's `deliver_to`, or for a catch-all account the local
//! recipients [`crate::routing`] finds in the header; a message with several is submitted
//! once, with all of them.
//!
//! Pickup delivery: no SMTP connection is made; the size limit is the configured
//! `max_message_size` alone. A published file (or one an earlier, interrupted attempt
//! published) counts as delivered. A message the pickup folder cannot take stays on the
//! POP3 server and is reported as `message.rejected` with a reply starting
//! `pickup failed:`; a copy goes to the failed-mail folder when that can be written, for
//! the administrator to see, and is removed again once a later pass delivers the message.
//! Such a failure is the folder's fault, not the message's: it does not count towards
//! quarantine and the message is retried on every pass.
//!
//! Must never: DELE before the ledger has the delivery, or stop the whole account
//! because one message is poison.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::body::Body;
use crate::config::{Account, Config, Profile};
use crate::events::{Event, EventSink};
use crate::ledger::{Ledger, Status};
use crate::message;
use crate::net::Dialer;
use crate::pickup::{Pickup, PickupOutcome};
use crate::pop3::{self, Pending, Pop3Error, Response, Transaction};
use crate::routing;
use crate::smtp::{self, Envelope, SmtpClient, SmtpError};

/// The old SBS connector's fixed limit, used by `profile = "sbs2008"`.
const SBS_LIMIT: u64 = 10 * 1024 * 1024;
/// The old SBS connector's per-session cap.
const SBS_MAX_PER_SESSION: usize = 500;
/// RETRs kept in flight when the server offers PIPELINING.
const RETR_WINDOW: usize = 8;

/// Why an account could not be processed at all (exit codes 2 and 3).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "error", rename_all = "snake_case")]
pub enum AccountFailure {
    /// A configuration problem found at run time (secret source, CA file).
    Config(String),
    /// Could not connect to or talk to a server.
    Connect(String),
    /// The POP3 server refused the credentials.
    Auth(String),
}

impl std::fmt::Display for AccountFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "configuration: {e}"),
            Self::Connect(e) => write!(f, "{e}"),
            Self::Auth(e) => write!(f, "{e}"),
        }
    }
}

/// What a pass did for one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Account name.
    pub account: String,
    /// Messages on the server at login.
    pub listed: u32,
    /// Delivered this pass.
    pub delivered: u32,
    /// Deleted from the server at QUIT (this pass's deliveries and earlier ones).
    pub deleted: u32,
    /// Permanently refused this pass (left on the server).
    pub rejected: u32,
    /// Temporarily failed this pass (left for the next pass).
    pub deferred: u32,
    /// Oversize, not downloaded (left on the server).
    pub skipped: u32,
    /// Quarantined this pass.
    pub quarantined: u32,
    /// Not reached because of the per-session cap.
    pub postponed: u32,
    /// Set when the account could not be processed.
    pub failure: Option<AccountFailure>,
    /// Set when the pass stopped early for a reason other than `failure`.
    pub aborted: Option<String>,
}

impl Summary {
    /// Messages that still need delivery and stay on the server.
    pub fn remaining(&self) -> u32 {
        self.rejected + self.deferred + self.skipped + self.quarantined + self.postponed
    }
}

/// What a pass needs besides the configuration.
pub struct Context<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// How to open connections.
    pub dialer: &'a dyn Dialer,
    /// Where events go.
    pub events: &'a EventSink,
    /// The ledger, shared by the accounts of a run.
    pub ledger: &'a Mutex<Ledger>,
    /// Set to stop taking new messages (SIGTERM): in-flight ones finish, then QUIT.
    pub stop: &'a StopFlag,
    /// Fault injection for harnesses: abort the pass like a crash (no DELE, no QUIT) right
    /// after this many deliveries were recorded.
    pub crash_after_deliveries: Option<u32>,
}

/// A request to stop a pass between messages, shared with whoever asks (the daemon).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    /// Asks every pass using this flag to stop after the messages in flight.
    pub fn stop(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once `stop` was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn lock(l: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// A file-system-safe name for a key (UIDs may hold `/`).
fn safe_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect()
}

struct Run<'a> {
    cx: &'a Context<'a>,
    account: &'a Account,
    summary: Summary,
    smtp: Option<SmtpClient>,
    reconnects: u32,
    sbs: bool,
    spool: PathBuf,
    /// Message number → ledger key, for DELEs confirmed at QUIT.
    deleting: HashMap<u32, String>,
    stop_smtp: Option<String>,
    /// Header digests met in this pass (servers without UIDL).
    digests: HashSet<String>,
    /// Set when messages go to a pickup folder instead of over SMTP.
    pickup: Option<Pickup>,
    /// Set by the crash fail point: the pass must end now, without DELE or QUIT.
    crashed: bool,
}

/// Runs one pass over `account`.
pub async fn run_account(cx: &Context<'_>, account: &Account) -> Summary {
    let mut run = Run {
        cx,
        account,
        summary: Summary {
            account: account.name.clone(),
            ..Summary::default()
        },
        smtp: None,
        reconnects: 0,
        sbs: cx.config.profile == Profile::Sbs2008,
        spool: cx.config.state_dir.join("spool"),
        deleting: HashMap::new(),
        stop_smtp: None,
        digests: HashSet::new(),
        pickup: Pickup::from_config(cx.config),
        crashed: false,
    };
    cx.events.emit(Event::PassStarted {
        account: account.name.clone(),
    });
    // One pass per account at a time, across processes too: an advisory lock the kernel
    // releases if this process dies, so it can never go stale.
    let _lock = match lock_account(&cx.config.state_dir, &account.name) {
        Ok(l) => l,
        Err(reason) => {
            cx.events.emit(Event::AccountFailed {
                account: account.name.clone(),
                error: reason.clone(),
            });
            run.summary.aborted = Some(reason);
            return run.summary;
        }
    };
    // Under the lock: files an interrupted earlier pass of this account left staged.
    // Failing here is safe (a staged file is never mistaken for a published one).
    if let Some(p) = &run.pickup {
        match p.clean_stale(&account.name).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(account = %account.name, "removed {n} stale staged pickup file(s)")
            }
            Err(e) => tracing::warn!(account = %account.name, "pickup clean-up: {e}"),
        }
    }
    if let Err(f) = run.pass().await {
        cx.events.emit(Event::AccountFailed {
            account: account.name.clone(),
            error: f.to_string(),
        });
        run.summary.failure = Some(f);
    }
    if let Some(s) = run.smtp.take() {
        s.quit().await;
    }
    let s = &run.summary;
    cx.events.emit(Event::PassFinished {
        account: account.name.clone(),
        delivered: s.delivered,
        deleted: s.deleted,
        remaining: s.remaining(),
        rejected: s.rejected,
        deferred: s.deferred,
        skipped: s.skipped,
        quarantined: s.quarantined,
    });
    run.summary
}

/// Lock files held by passes of this process.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// An account's lock: the advisory file lock (other processes) and this process's entry.
struct AccountLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for AccountLock {
    fn drop(&mut self) {
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != &self.path);
    }
}

/// Takes the account's lock under `state_dir/locks`, or says why not.
///
/// Within this process a registry decides. Across processes an advisory `flock` does; a
/// child process forked by another thread holds a copy of our descriptor until its `exec`,
/// which keeps a released flock alive for a moment, so a busy flock is retried briefly
/// before the account is declared busy.
fn lock_account(state_dir: &std::path::Path, account: &str) -> Result<AccountLock, String> {
    let dir = state_dir.join("locks");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{}.lock", safe_name(account)));
    {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains(&path) {
            return Err("another pass of this account is running; this one was skipped".into());
        }
        held.push(path.clone());
    }
    let release = |path: &PathBuf| {
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != path)
    };
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            release(&path);
            return Err(format!("cannot open {}: {e}", path.display()));
        }
    };
    for attempt in 0..50 {
        match file.try_lock() {
            Ok(()) => return Ok(AccountLock { path, _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if attempt < 49 => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => break,
            Err(std::fs::TryLockError::Error(e)) => {
                release(&path);
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
    }
    release(&path);
    Err("another pass of this account is running (another process); this one was skipped".into())
}

fn pop3_failure(e: Pop3Error) -> AccountFailure {
    match e {
        Pop3Error::Auth { .. } => AccountFailure::Auth(e.to_string()),
        other => AccountFailure::Connect(other.to_string()),
    }
}

impl Run<'_> {
    fn emit(&self, e: Event) {
        self.cx.events.emit(e);
    }

    async fn pass(&mut self) -> Result<(), AccountFailure> {
        let cfg = self.cx.config;
        let a = self.account;
        let secret = a
            .secret
            .resolve(cfg.timeouts.command)
            .await
            .map_err(|e| AccountFailure::Config(e.to_string()))?;
        let settings = pop3::Settings::for_account(cfg, a)
            .map_err(|e| AccountFailure::Config(e.to_string()))?;
        let auth = pop3::connect(self.cx.dialer, &settings)
            .await
            .map_err(pop3_failure)?;
        let mut txn = match auth.authenticate(a.auth, &a.username, &secret).await {
            Ok(t) => t,
            Err(e) => {
                if let Some(r) = e.reply().filter(|_| e.is_auth()) {
                    self.emit(Event::AuthFailed {
                        account: a.name.clone(),
                        reply: r.to_string().trim_end().to_string(),
                    });
                }
                return Err(pop3_failure(e));
            }
        };
        let listing = txn.list().await.map_err(pop3_failure)?;
        self.summary.listed = listing.len() as u32;
        self.emit(Event::Listed {
            account: a.name.clone(),
            messages: self.summary.listed,
            octets: listing.iter().map(|(_, s)| *s).sum(),
        });
        let uids = txn.uidl().await.map_err(pop3_failure)?;
        let keys = self.keys(&listing, uids);
        let known = lock(self.cx.ledger)
            .statuses(&a.name)
            .map_err(|e| AccountFailure::Config(e.to_string()))?;

        // Decide per message: delete what was delivered before, collect what needs work.
        let cap = if self.sbs {
            SBS_MAX_PER_SESSION
        } else {
            cfg.limits.max_messages_per_session
        };
        let mut work: Vec<(u32, u64, Option<String>)> = Vec::new();
        for &(n, size) in &listing {
            let key = keys.get(&n).cloned();
            match key.as_ref().and_then(|k| known.get(k)) {
                Some(Status::Delivered { .. }) => {
                    let key = key.clone().unwrap_or_default();
                    self.emit(Event::AlreadyDelivered {
                        account: a.name.clone(),
                        uid: key.clone(),
                    });
                    if !a.leave_on_server {
                        txn.send(Pending::Dele(n));
                        self.deleting.insert(n, key);
                    }
                }
                Some(Status::Quarantined { .. }) => {
                    if cfg.limits.quarantine_delete && !a.leave_on_server {
                        txn.send(Pending::Dele(n));
                        self.deleting.insert(n, key.clone().unwrap_or_default());
                    }
                }
                _ if work.len() >= cap => self.summary.postponed += 1,
                _ => work.push((n, size, key)),
            }
        }
        let result = self.process(&mut txn, work).await;
        // Drain replies (DELEs) and QUIT: only a successful QUIT applies the deletions.
        match result {
            Ok(()) => match txn.quit().await {
                Ok(_) => self.confirm_deleted(),
                Err(e) => {
                    self.summary.aborted = Some(format!("QUIT failed, deletions not applied: {e}"))
                }
            },
            Err(e) => {
                // The POP3 session is unusable: drop it without QUIT. Nothing is deleted;
                // what was delivered is in the ledger and will only be deleted next time.
                self.summary.aborted = Some(e.to_string());
                return Err(AccountFailure::Connect(e.to_string()));
            }
        }
        Ok(())
    }

    fn confirm_deleted(&mut self) {
        let keys: Vec<String> = self.deleting.values().cloned().collect();
        self.summary.deleted = keys.len() as u32;
        if let Err(e) = lock(self.cx.ledger).record_deleted(&self.account.name, &keys) {
            tracing::warn!(account = %self.account.name, "ledger: {e}");
        }
    }

    /// Ledger keys by message number: the UIDL, except where the server lists a UID more
    /// than once (then the header digest decides, after TOP or RETR).
    fn keys(
        &self,
        listing: &[(u32, u64)],
        uids: Option<Vec<(u32, String)>>,
    ) -> HashMap<u32, String> {
        let Some(uids) = uids else {
            return HashMap::new();
        };
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (_, u) in &uids {
            *count.entry(u.as_str()).or_default() += 1;
        }
        let listed: HashSet<u32> = listing.iter().map(|(n, _)| *n).collect();
        uids.iter()
            .filter(|(n, u)| listed.contains(n) && count.get(u.as_str()) == Some(&1))
            .map(|(n, u)| (*n, u.clone()))
            .collect()
    }

    /// The limit a message must fit: the smaller of the configured one and the SMTP
    /// server's SIZE (learnt by connecting), or the fixed SBS limit.
    async fn limit(&mut self) -> Result<Option<u64>, SmtpError> {
        if self.pickup.is_some() {
            // No SMTP server to ask: the configured limit alone.
            return Ok(if self.sbs {
                Some(SBS_LIMIT)
            } else {
                self.cx.config.limits.max_message_size
            });
        }
        let server = self.session().await?.ext.max_size();
        // The smallest of every limit on the way, Exchange's after-acceptance limits
        // included: what the categoriser would bounce after a 250 is never downloaded.
        // (Under sbs2008: the receive connector's SIZE, as the old connector read it.)
        Ok(crate::limits::effective_limit(
            self.cx.config,
            self.account,
            server,
        ))
    }

    /// The SMTP session, connecting (or reconnecting before the error limit) as needed.
    async fn session(&mut self) -> Result<&mut SmtpClient, SmtpError> {
        let max = self.cx.config.limits.smtp_max_protocol_errors;
        // Each transaction can add up to two protocol errors (MAIL and RCPT refused):
        // replace the session while two more still fit under the server's limit.
        let worn = self
            .smtp
            .as_ref()
            .is_some_and(|s| s.protocol_errors() + 2 >= max);
        if worn && !self.sbs {
            if let Some(s) = self.smtp.take() {
                let errors = s.protocol_errors();
                s.quit().await;
                self.emit(Event::Reconnected {
                    account: self.account.name.clone(),
                    reason: format!(
                        "{errors} protocol errors in this session (server limit {max})"
                    ),
                });
            }
        }
        if self.smtp.is_none() {
            let cfg = self.cx.config;
            let s = smtp::Settings::for_transport(cfg, !self.sbs).map_err(SmtpError::Tls)?;
            self.smtp = Some(SmtpClient::connect(self.cx.dialer, &s).await?);
        }
        Ok(self.smtp.as_mut().expect("connected above"))
    }

    async fn process(
        &mut self,
        txn: &mut Transaction,
        work: Vec<(u32, u64, Option<String>)>,
    ) -> Result<(), Pop3Error> {
        if work.is_empty() {
            return Ok(());
        }
        let a = self.account;
        let limit = match self.limit().await {
            Ok(l) => l,
            Err(e) => {
                // No SMTP server: nothing can be delivered; everything stays.
                self.summary.deferred += work.len() as u32;
                for (_, _, key) in &work {
                    self.emit(Event::Deferred {
                        account: a.name.clone(),
                        uid: key.clone().unwrap_or_default(),
                        reason: e.to_string(),
                    });
                }
                // Could not reach the SMTP server: an account failure (exit 3), after which the
                // POP3 session still QUITs so earlier deliveries get deleted.
                self.summary.failure = Some(AccountFailure::Connect(e.to_string()));
                return Ok(());
            }
        };
        // Oversize messages are never downloaded.
        let mut todo = Vec::new();
        for (n, size, key) in work {
            match limit {
                Some(l) if size > l => {
                    self.summary.skipped += 1;
                    self.emit(Event::SkippedOversize {
                        account: a.name.clone(),
                        uid: key.unwrap_or_else(|| format!("#{n}")),
                        size,
                        limit: l,
                    });
                }
                _ => todo.push((n, size, key)),
            }
        }
        let window = if txn.capabilities.pipelining {
            RETR_WINDOW
        } else {
            1
        };
        // A lying server is bounded: a body may exceed its LIST size by a margin only.
        let read_limit = |size: u64| {
            (size.saturating_mul(2))
                .max(size + 64 * 1024)
                .min(limit.map_or(u64::MAX, |l| l + 64 * 1024))
        };
        let keys_by_n: HashMap<u32, (u64, Option<String>)> =
            todo.iter().map(|(n, s, k)| (*n, (*s, k.clone()))).collect();
        let mut queue = todo.into_iter().map(|(n, _, _)| n);
        let mut in_flight_retr = 0usize;
        let threshold = self.cx.config.limits.memory_threshold;
        loop {
            // After a stop request, no new message is started; those in flight finish.
            while in_flight_retr < window && !self.cx.stop.is_stopped() {
                match queue.next() {
                    Some(n) => {
                        txn.send(Pending::Retr(n));
                        in_flight_retr += 1;
                    }
                    None => break,
                }
            }
            if txn.in_flight() == 0 {
                break;
            }
            // The oldest pending command is answered next; a RETR is bounded by its LIST size.
            let bound = match txn.peek() {
                Some(Pending::Retr(n)) => {
                    keys_by_n.get(&n).map_or(u64::MAX, |(s, _)| read_limit(*s))
                }
                _ => u64::MAX,
            };
            match txn.next(bound, &self.spool, threshold).await? {
                Response::Retr { msg, body } => {
                    in_flight_retr -= 1;
                    let (size, key) = keys_by_n.get(&msg).cloned().unwrap_or((0, None));
                    if self.stop_smtp.is_some() {
                        self.defer(
                            key.unwrap_or_else(|| format!("#{msg}")),
                            self.stop_smtp.clone().unwrap_or_default(),
                        );
                        continue;
                    }
                    self.handle(txn, msg, size, key, body).await;
                    if self.crashed {
                        // Like a crash: no DELE for this one, no QUIT, nothing more.
                        return Err(Pop3Error::Io(std::io::Error::other("simulated crash")));
                    }
                }
                Response::Deleted { .. } => {}
                Response::Refused {
                    pending: Pending::Retr(msg),
                    reply,
                } => {
                    in_flight_retr -= 1;
                    let key = keys_by_n
                        .get(&msg)
                        .and_then(|(_, k)| k.clone())
                        .unwrap_or_else(|| format!("#{msg}"));
                    self.defer(
                        key,
                        format!("RETR refused: {}", reply.to_string().trim_end()),
                    );
                }
                Response::Refused {
                    pending: Pending::Dele(msg),
                    reply,
                } => {
                    // Delivered and recorded; the next pass deletes it.
                    self.deleting.remove(&msg);
                    tracing::warn!(account = %a.name, "DELE {msg} refused: {}", reply.to_string().trim_end());
                }
            }
        }
        // Not started because a stop was requested: they wait for the next pass.
        self.summary.postponed += queue.count() as u32;
        Ok(())
    }

    /// True (and remembered) when the crash fail point is reached.
    fn crash_due(&mut self) -> bool {
        if self.cx.crash_after_deliveries == Some(self.summary.delivered) {
            tracing::warn!(account = %self.account.name, "simulated crash after {} deliveries", self.summary.delivered);
            self.crashed = true;
        }
        self.crashed
    }

    fn defer(&mut self, uid: String, reason: String) {
        self.summary.deferred += 1;
        self.emit(Event::Deferred {
            account: self.account.name.clone(),
            uid,
            reason,
        });
    }

    /// One downloaded message: submit, record, delete, or keep with a reason.
    async fn handle(
        &mut self,
        txn: &mut Transaction,
        msg: u32,
        size: u64,
        key: Option<String>,
        body: Body,
    ) {
        let a = self.account;
        let key = match key {
            Some(k) => k,
            None => {
                // No usable UIDL: the header digest is the key; it may show this message
                // was delivered before.
                let k = message::header_digest(body.head(), body.len(), crate::body::HEAD_MAX);
                if !self.digests.insert(k.clone()) {
                    // Two messages of this listing look the same: never take the second for
                    // "already delivered" (that could delete mail unseen); deliver it under
                    // its own key. A true duplicate costs a duplicate, never a loss.
                    let k = format!("{k}#{msg}");
                    return self.deliver(txn, msg, k, body).await;
                }
                let status = lock(self.cx.ledger).status(&a.name, &k);
                if let Ok(Status::Delivered { .. }) = status {
                    self.emit(Event::AlreadyDelivered {
                        account: a.name.clone(),
                        uid: k.clone(),
                    });
                    if !a.leave_on_server {
                        txn.send(Pending::Dele(msg));
                        self.deleting.insert(msg, k);
                    }
                    return;
                }
                if let Ok(Status::Quarantined { .. }) = status {
                    return;
                }
                k
            }
        };
        let _ = size;
        self.deliver(txn, msg, key, body).await;
    }

    /// Submits a downloaded message under `key` and acts on the outcome.
    async fn deliver(&mut self, txn: &mut Transaction, msg: u32, key: String, body: Body) {
        let cfg = self.cx.config;
        let a = self.account;
        let info = message::parse_headers(body.head(), crate::body::HEAD_MAX);
        let smtputf8 = self.smtp.as_ref().is_some_and(|s| s.ext.smtputf8);
        let sender = message::envelope_sender(
            &info,
            cfg.limits.default_domain.as_deref(),
            &cfg.limits.fallback_sender,
            smtputf8,
            !self.sbs,
        );
        if let Some(r) = &sender.repair {
            self.emit(Event::SenderRepaired {
                account: a.name.clone(),
                uid: key.clone(),
                original: r.original.clone(),
                used: sender.address.clone(),
                reason: r.reason.clone(),
            });
        }
        let recipients = match &a.catch_all {
            Some(c) => {
                let r = routing::recipients(&info, c, &a.deliver_to);
                tracing::debug!(account = %a.name, uid = %key, source = r.source, "recipients {:?}", r.recipients);
                r.recipients
            }
            None => vec![a.deliver_to.clone()],
        };
        // The `for` clause names the recipient only when there is one: with several (some
        // maybe Bcc'd), each would see the others.
        let for_rcpt = match recipients.as_slice() {
            [one] => one.as_str(),
            _ => "",
        };
        let prefix = if cfg.received_header {
            message::received_header(
                &a.host,
                &cfg.transport.helo,
                &key,
                for_rcpt,
                SystemTime::now(),
            )
        } else {
            String::new()
        };
        let env = Envelope {
            from: sender.address.clone(),
            to: recipients,
        };
        if self.pickup.is_some() {
            return self
                .deliver_pickup(txn, msg, key, &env, prefix.as_bytes(), body)
                .await;
        }
        loop {
            let attempt = match self.session().await {
                Ok(s) => s.send(&env, prefix.as_bytes(), &body).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(accepted) => {
                    // Delivered but not recorded (ledger failure): the message stays on the
                    // server rather than risk losing track; the worst case is one duplicate.
                    self.delivered(
                        txn,
                        msg,
                        key,
                        body.len(),
                        &sender.address,
                        accepted.reply.first_line(),
                    );
                    return;
                }
                Err(e) if e.session_lost() => {
                    self.smtp = None;
                    let max = if self.sbs {
                        0
                    } else {
                        cfg.limits.smtp_reconnects
                    };
                    if self.reconnects < max {
                        self.reconnects += 1;
                        self.emit(Event::Reconnected {
                            account: a.name.clone(),
                            reason: e.to_string(),
                        });
                        continue;
                    }
                    // Out of reconnects: this and every later message waits for the next pass.
                    self.stop_smtp = Some(e.to_string());
                    self.defer(key, e.to_string());
                    return;
                }
                Err(e) if e.is_permanent() => {
                    let reply = e
                        .reply()
                        .map(|r| r.first_line())
                        .unwrap_or_else(|| e.to_string());
                    let failures = lock(self.cx.ledger)
                        .record_failure(&a.name, &key, &reply)
                        .unwrap_or(1);
                    // The old connector never gave up on a message: no quarantine under sbs2008.
                    if !self.sbs && failures >= cfg.limits.poison_after {
                        self.quarantine(txn, msg, &key, &body).await;
                    } else {
                        self.summary.rejected += 1;
                        self.emit(Event::Rejected {
                            account: a.name.clone(),
                            uid: key,
                            reply,
                            failures,
                        });
                    }
                    return;
                }
                Err(e) => {
                    self.defer(key, e.to_string());
                    return;
                }
            }
        }
    }

    /// Writes a downloaded message into the pickup folder and acts on the outcome (the
    /// module header says how failures are handled).
    async fn deliver_pickup(
        &mut self,
        txn: &mut Transaction,
        msg: u32,
        key: String,
        env: &Envelope,
        prefix: &[u8],
        body: Body,
    ) {
        let a = self.account;
        let Some(pickup) = self.pickup.clone() else {
            return;
        };
        let outcome = pickup
            .deliver(&a.name, &key, &env.from, &env.to, prefix, &body)
            .await;
        let reply = match outcome {
            Ok(PickupOutcome::Delivered(path)) => format!("written to {}", path.display()),
            Ok(PickupOutcome::AlreadyThere(path)) => format!(
                "already written to {} by an interrupted earlier attempt",
                path.display()
            ),
            Ok(PickupOutcome::Failed { path, error }) => {
                self.summary.rejected += 1;
                self.emit(Event::Rejected {
                    account: a.name.clone(),
                    uid: key,
                    reply: format!(
                        "pickup failed: {error}; kept on the server, a copy is in the \
                         failed-mail folder: {}",
                        path.display()
                    ),
                    failures: 0,
                });
                return;
            }
            Err(e) => {
                self.summary.rejected += 1;
                self.emit(Event::Rejected {
                    account: a.name.clone(),
                    uid: key,
                    reply: format!("pickup failed: {e}; kept on the server"),
                    failures: 0,
                });
                return;
            }
        };
        // Published but not recorded (ledger failure): the journal marker stays, so the next
        // pass finds the message published and records it without writing it again.
        if self.delivered(txn, msg, key.clone(), body.len(), &env.from, reply) {
            pickup.settle(&a.name, &key).await;
        }
    }

    /// A delivery the server (or the pickup folder) accepted: record it durably, report it,
    /// then queue its DELE. This order is the no-loss, no-duplicate point. Returns false when
    /// the ledger failed: the message then stays on the server.
    fn delivered(
        &mut self,
        txn: &mut Transaction,
        msg: u32,
        key: String,
        size: u64,
        sender: &str,
        reply: String,
    ) -> bool {
        let a = self.account;
        if let Err(e) = lock(self.cx.ledger).record_delivered(&a.name, &key, size, &reply) {
            tracing::error!(account = %a.name, "ledger: {e}");
            self.defer(key, format!("delivered but the ledger failed: {e}"));
            return false;
        }
        self.summary.delivered += 1;
        self.emit(Event::Delivered {
            account: a.name.clone(),
            uid: key.clone(),
            size,
            sender: sender.to_string(),
            reply,
        });
        // Fault injection: die between the recorded delivery and its DELE.
        if self.crash_due() {
            return true;
        }
        if !a.leave_on_server {
            txn.send(Pending::Dele(msg));
            self.deleting.insert(msg, key);
        }
        true
    }

    async fn quarantine(&mut self, txn: &mut Transaction, msg: u32, key: &str, body: &Body) {
        let cfg = self.cx.config;
        let a = self.account;
        let path: PathBuf = cfg
            .state_dir
            .join("quarantine")
            .join(safe_name(&a.name))
            .join(format!("{}.eml", safe_name(key)));
        if let Err(e) = body.persist(&path).await {
            // Without a durable copy the message must stay where it is.
            self.summary.rejected += 1;
            self.emit(Event::Rejected {
                account: a.name.clone(),
                uid: key.into(),
                reply: format!("quarantine failed: {e}"),
                failures: 0,
            });
            return;
        }
        let _ = lock(self.cx.ledger).record_quarantined(&a.name, key, &path);
        let delete = cfg.limits.quarantine_delete && !a.leave_on_server;
        if delete {
            txn.send(Pending::Dele(msg));
            self.deleting.insert(msg, key.to_string());
        }
        self.summary.quarantined += 1;
        self.emit(Event::Quarantined {
            account: a.name.clone(),
            uid: key.into(),
            path: path.display().to_string(),
            deleted: delete,
        });
    }
}

/// Runs a pass over several accounts, at most `config.parallel_accounts` at once.
pub async fn run_accounts(
    config: Arc<Config>,
    dialer: Arc<dyn Dialer>,
    events: Arc<EventSink>,
    ledger: Arc<Mutex<Ledger>>,
    accounts: Vec<Account>,
) -> Vec<Summary> {
    run_accounts_until(
        config,
        dialer,
        events,
        ledger,
        accounts,
        StopFlag::default(),
    )
    .await
}

/// [`run_accounts`] that stops taking new messages once `stop` is set.
pub async fn run_accounts_until(
    config: Arc<Config>,
    dialer: Arc<dyn Dialer>,
    events: Arc<EventSink>,
    ledger: Arc<Mutex<Ledger>>,
    accounts: Vec<Account>,
    stop: StopFlag,
) -> Vec<Summary> {
    run_accounts_with(config, dialer, events, ledger, accounts, stop, None).await
}

/// [`run_accounts_until`] with a simulated crash after `crash` recorded deliveries per
/// account (harnesses reproducing "a crash after delivery and before DELE").
pub async fn run_accounts_with(
    config: Arc<Config>,
    dialer: Arc<dyn Dialer>,
    events: Arc<EventSink>,
    ledger: Arc<Mutex<Ledger>>,
    accounts: Vec<Account>,
    stop: StopFlag,
    crash: Option<u32>,
) -> Vec<Summary> {
    let sem = Arc::new(tokio::sync::Semaphore::new(config.parallel_accounts.max(1)));
    let mut tasks = Vec::new();
    for account in accounts {
        let (config, dialer, events, ledger, sem, stop) = (
            config.clone(),
            dialer.clone(),
            events.clone(),
            ledger.clone(),
            sem.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            let cx = Context {
                config: &config,
                dialer: dialer.as_ref(),
                events: &events,
                ledger: &ledger,
                stop: &stop,
                crash_after_deliveries: crash,
            };
            run_account(&cx, &account).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            out.push(s);
        }
    }
    out
}
