//! One pass over one account: the connector's invariants in code (ARCHITECTURE.md,
//! "Invariants").
//!
//! Order of work for a message: download (bounded, spooled when large), check it against
//! what LIST promised, submit over SMTP (or write it into the pickup folder, see
//! [`crate::pickup`]), record the delivery durably in the ledger, and only then DELE;
//! deletions take effect at QUIT. A message already recorded as delivered is never
//! submitted again, only deleted. Permanent refusals leave the message and count towards
//! quarantine; temporary ones leave it for the next pass; a lost SMTP session is replaced
//! (bounded) and the pass goes on.
//!
//! A server whose replies stop making sense: a retrieved message whose size does not match
//! its LIST size (beyond what line ends explain, see [`crate::body::LineEnds`]) is never
//! delivered or deleted; when it came back shorter than listed (its end may have come
//! early, so what follows may be its rest) or ran past its bound, or when a reply is not
//! POP3 at all, nothing more is read from the session: it ends with a QUIT sent blind,
//! which applies only the DELEs sent before, each for a proven delivery. Such a message is
//! retried last and alone on later passes, so it never holds up the others.
//!
//! Overlap (ARCHITECTURE.md, "The pipelined pass"): RETRs go out ahead in a window bounded
//! by count and octets; with PIPELINING and CHUNKING, and room under the server's
//! protocol-error limit, messages are written to the SMTP server ahead of their replies
//! ([`Flight`]s, answered in order), and accepted deliveries wait for a group commit
//! (one fsync for several) before their DELEs go out. Everything in flight is answered and
//! committed before the POP3 session ends.
//!
//! Possible duplicates: before a message's final data goes to the SMTP server, the ledger
//! marks it as submitting (ahead, in the commit of earlier deliveries, so usually at no
//! extra fsync); its delivery record ends the mark. A mark found at the start of a pass (a crash, a lost
//! reply, a timeout after the final data) names a message the server may already have:
//! it is reported as `message.possible_duplicate` when it is submitted again. A message
//! whose final reply never came is not sent again in the same pass.
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
//! Large maildrops: LIST and UIDL are read as they arrive (see [`crate::listing`]); a
//! session holds the UIDs of at most a budget of messages that need work
//! ([`Context::listing_budget`]), chosen while UIDL streams in: messages the ledger has as
//! delivered and kept (`leave_on_server`), or quarantined and kept, take no room, and
//! messages likely to stay (refused before, over the configured size limits) only room
//! the others leave. What needs work but was not held is counted as postponed (see
//! [`Summary::sliced`]) and reached by later passes. Without UIDL a session works on a
//! budget of messages; with `leave_on_server` it starts as many messages in as the ledger
//! holds delivered by header digest (new mail comes last in a maildrop), wrapping round,
//! and what it did not hold counts as postponed only as far as the ledger cannot account
//! for it.
//!
//! Must never: DELE before the ledger has the delivery, DELE anything a ledger failure
//! left unrecorded, trust a reply read after one that did not make sense, key a message by
//! a UID listed more than once anywhere in the listing (held or not), or stop the whole
//! account because one message is poison.

use crate::report::unix_now;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::body::Body;
use crate::config::{Account, Config, Policy};
use crate::events::{Event, EventSink, Named, PassEvents, PassId};
pub use crate::faults::{FailPoint, Faults, Sabotage, Step};
use crate::keys::{self, DigestKeys};
use crate::ledger::{
    Along, FailureKind, Ledger, LedgerError, Outcome, PassCounts, PassRow, QuarantineAction, Status,
};
use crate::listing::{Budget, Sizes, UidScan, Want};
use crate::message;
use crate::net::{Dialer, TlsError};
use crate::oauth2;
use crate::pickup::{Pickup, PickupOutcome};
use crate::pop3::{self, Pending, Pop3Error, Response, Transaction};
use crate::routing;
use crate::smtp::{self, Envelope, SmtpClient, SmtpError};

/// The most RETRs kept in flight when the server offers PIPELINING...
const RETR_WINDOW: usize = 512;
/// ...and the most octets (by LIST size) they may add up to (one message at least).
const RETR_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// The most messages written to the SMTP server ahead of their replies...
const SMTP_WINDOW: usize = 8;
/// ...and the most octets they may hold (one message at least).
const SMTP_WINDOW_BYTES: u64 = 2 * 1024 * 1024;
/// Protocol errors one pipelined transaction can cost at worst (MAIL refused, then its
/// RCPT and BDAT refused as out of sequence).
const ERRORS_PER_TRANSACTION: u32 = 3;
/// Group commit: the most accepted deliveries recorded in one commit. A commit also starts
/// before the pass waits for the POP3 server (so a slow server never holds records back),
/// and every one is finished when the session's work ends. One commit at a time runs on a
/// blocking thread while the pass goes on; its deliveries are reported and DELE'd when the
/// next one starts (or earlier, when a message needs its submission mark).
const GROUP_MAX: usize = 8;
/// How many messages beyond the SMTP window a commit marks as submitting ahead, so that
/// with one commit under way the messages submitted meanwhile are already marked: two
/// groups (a crash names at most these as possible duplicates without having sent them).
const MARKS_AHEAD: usize = 2 * GROUP_MAX;
/// The most `TOP n 0` a pass sends to name messages it leaves on the server unread.
const MAX_TOPS_PER_PASS: usize = 50;
/// The most messages a summary names ([`Summary::left`]); the events name every one.
const MAX_LEFT_NAMED: usize = 100;
/// New POP3 sessions a pass may start after one ended on a message whose size did not
/// match its LIST size (it goes last from then on, so each new session gets further).
const MAX_RESTARTS: u32 = 8;

/// Why an account could not be processed at all (exit codes 2 and 3), or broke down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "error", rename_all = "snake_case")]
pub enum AccountFailure {
    /// A configuration problem found at run time (secret source, CA file).
    Config(String),
    /// Could not connect to or talk to a server.
    Connect(String),
    /// The POP3 server refused the credentials.
    Auth(String),
    /// The pass itself failed (a bug): nothing it had not recorded was deleted.
    Internal(String),
}

impl std::fmt::Display for AccountFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "configuration: {e}"),
            Self::Connect(e) => write!(f, "{e}"),
            Self::Auth(e) => write!(f, "{e}"),
            Self::Internal(e) => write!(
                f,
                "internal error, please report it: {e}; messages not yet delivered stay on \
                 the server"
            ),
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
    /// Not reached because of the per-session cap, a stop request, a session that ended
    /// early, or the listing budget (`sliced`).
    pub postponed: u32,
    /// Retrieved, but not as large as LIST said (left on the server, never deleted).
    #[serde(default)]
    pub mismatched: u32,
    /// Of `postponed`: messages needing work that the session's listing budget did not
    /// hold (a maildrop larger than the budget is worked through over several passes).
    #[serde(default)]
    pub sliced: u32,
    /// Of `postponed`: messages not attempted because the per-session cap
    /// (`max_messages_per_session`) was reached; the next pass takes them.
    #[serde(default)]
    pub capped: u32,
    /// Octets of the messages delivered this pass (as submitted).
    #[serde(default)]
    pub delivered_octets: u64,
    /// Set when the account could not be processed.
    pub failure: Option<AccountFailure>,
    /// Set when the pass stopped early for a reason other than `failure`.
    pub aborted: Option<String>,
    /// The id its events carry.
    #[serde(default)]
    pub pass: Option<PassId>,
    /// The messages this pass skipped, refused, deferred or quarantined, named (at most
    /// a hundred; `left_unnamed` counts the rest).
    #[serde(default)]
    pub left: Vec<Left>,
    /// Messages left beyond those in `left`.
    #[serde(default)]
    pub left_unnamed: u32,
}

/// What became of a message a pass did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftKind {
    /// Over the size limit: not downloaded, left on the server.
    SkippedOversize,
    /// Refused permanently: left on the server.
    Rejected,
    /// Failed for now: left for the next pass.
    Deferred,
    /// Kept under `state_dir` after too many refusals.
    Quarantined,
}

/// A message a pass did not deliver, named for people (the summary lists them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Left {
    /// What became of it.
    pub kind: LeftKind,
    /// UIDL, digest, or `#n`.
    pub uid: String,
    /// Its LIST size, when the reason is its size.
    pub size: Option<u64>,
    /// Why, for people: the limit, the server's reply, the quarantine copy.
    pub reason: String,
    /// Its From, Subject, Date and Message-ID, when known.
    #[serde(flatten)]
    pub named: Named,
}

impl Left {
    /// The event's message, for a summary; `None` for other events.
    pub fn from_event(e: &Event) -> Option<Self> {
        let (kind, uid, size, reason, named) = match e {
            Event::SkippedOversize {
                uid,
                size,
                limit,
                named,
                ..
            } => (
                LeftKind::SkippedOversize,
                uid,
                Some(*size),
                format!("over the {} limit", crate::limits::human_size(*limit)),
                named,
            ),
            Event::Rejected {
                uid, reply, named, ..
            } => (LeftKind::Rejected, uid, None, reply.clone(), named),
            Event::Deferred {
                uid, reason, named, ..
            } => (LeftKind::Deferred, uid, None, reason.clone(), named),
            Event::Quarantined {
                uid,
                path,
                deleted,
                named,
                ..
            } => {
                let reason = if *deleted {
                    format!("a copy is in {path}; deleted from the server")
                } else {
                    format!("a copy is in {path}")
                };
                (LeftKind::Quarantined, uid, None, reason, named)
            }
            _ => return None,
        };
        Some(Self {
            kind,
            uid: uid.clone(),
            size,
            reason,
            named: named.clone(),
        })
    }

    /// One line for people: `left on the server: 14.5 MB from alice@example.net "Scans"
    /// (2026-12-01): over the 10 MB limit`.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            LeftKind::SkippedOversize => "left on the server",
            LeftKind::Rejected => "refused, left on the server",
            LeftKind::Deferred => "deferred to the next pass",
            LeftKind::Quarantined => "quarantined",
        };
        let mut line = format!("{what}:");
        if let Some(size) = self.size {
            line.push(' ');
            line.push_str(&crate::limits::human_size(size));
        }
        let named = self.named.describe();
        if named.is_empty() {
            line.push_str(&format!(" {}", self.uid));
        } else {
            line.push(' ');
            line.push_str(&named);
        }
        format!("{line}: {}", self.reason)
    }
}

impl Summary {
    /// Messages that still need delivery and stay on the server.
    pub fn remaining(&self) -> u32 {
        self.rejected
            + self.deferred
            + self.skipped
            + self.quarantined
            + self.postponed
            + self.mismatched
    }

    /// Messages left for the next pass by design (the per-session cap, the listing
    /// budget), not because anything went wrong with them.
    pub fn backlog(&self) -> u32 {
        self.capped.saturating_add(self.sliced)
    }

    /// Messages that stay on the server for a reason other than the backlog: refused,
    /// deferred, oversize, quarantined, mismatched, or not reached by an interrupted pass.
    pub fn stuck(&self) -> u32 {
        self.remaining().saturating_sub(self.backlog())
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
    /// Fault injection for harnesses ([`Faults::NONE`] otherwise).
    pub faults: Faults,
    /// How many messages of a listing a POP3 session holds ([`Budget::DEFAULT`] outside
    /// harnesses; a small one makes slices testable).
    pub listing_budget: Budget,
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

/// Runs ledger work (an fsync) off the async runtime's worker where the runtime allows
/// it, so other accounts' network I/O goes on meanwhile; in place on a current-thread
/// runtime (tests under the paused clock), where there is no other worker.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
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

/// Splits `work` at its first message (lowest message number) over `over`: what is kept
/// (that message and every message before it in maildrop order) and what waits behind it.
/// Without an oversize message, everything is kept.
fn stall_at_first_oversize(work: Vec<Item>, over: u64) -> (Vec<Item>, Vec<Item>) {
    let Some(first) = work.iter().filter(|i| i.size > over).map(|i| i.n).min() else {
        return (work, Vec::new());
    };
    work.into_iter().partition(|i| i.n <= first)
}

/// A message to retrieve this pass.
#[derive(Debug, Clone)]
struct Item {
    /// Message number.
    n: u32,
    /// LIST size.
    size: u64,
    /// Its UID key, when the server gave a unique one.
    key: Option<String>,
    /// A size-mismatch suspect: retrieved last, alone.
    alone: bool,
    /// The UID key of the item after it (marked as submitting in advance); set when it is
    /// taken from the queue.
    next: Option<String>,
}

impl Item {
    /// The key a size mismatch is recorded under.
    fn mismatch_key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| keys::size_key(self.size))
    }

    /// What tells it apart when its session is restarted within a pass: its UID (message
    /// numbers move once deletions apply), else its size key and number.
    fn tried_id(&self) -> (String, u32) {
        match &self.key {
            Some(k) => (k.clone(), 0),
            None => (keys::size_key(self.size), self.n),
        }
    }

    /// How it is named in events before its key is known.
    fn label(&self) -> String {
        self.key.clone().unwrap_or_else(|| format!("#{}", self.n))
    }
}

/// How a POP3 session ended before its work was done.
enum Broken {
    /// Replies stopped making sense: end with a QUIT sent blind. `suspect` when a message
    /// that did not match its LIST size was recorded (it goes last from now on).
    OutOfStep {
        /// Why.
        reason: String,
        /// A size-mismatch suspect was recorded.
        suspect: bool,
    },
    /// The connection broke or stalled: drop it.
    Lost(Pop3Error),
    /// A simulated crash: stop dead.
    Crashed,
}

/// The messages of a session's listing that the session works on.
struct Slice {
    /// `(number, LIST size, UID key)`: by number, or without UIDL from where the window
    /// starts. No key: keyed by header digest once downloaded.
    entries: Vec<(u32, u64, Option<String>)>,
    /// Messages needing work that were not held (left for later passes).
    not_held: usize,
    /// UIDs newly found listed more than once (for the ledger).
    fresh: Vec<String>,
    /// Some listed message has no UID key (header digests are in use).
    unkeyed: bool,
    /// Without UIDL, past the budget: listed messages the ledger does not have as delivered
    /// and kept, at most (what is not held is unknown, not necessarily work).
    unaccounted: Option<usize>,
}

/// A message ready for the SMTP server: what it takes to submit it (again, after a lost
/// session) and to act on its outcome.
struct Flight {
    item: Item,
    key: String,
    body: Body,
    env: Envelope,
    /// The trace header written before the body.
    prefix: Vec<u8>,
    named: Named,
    /// The SMTP session it was written in ([`Run::smtp_gen`]).
    gen: u32,
}

/// A group commit under way on a blocking thread, through the pass's own ledger
/// connection: its deliveries are reported and DELE'd once it is durable.
struct Committing {
    batch: Vec<Done>,
    /// Per delivery, as [`crate::ledger::Delivery::dele`].
    deles: Vec<Option<(u64, u32)>>,
    /// The keys it marks as submitting.
    next: Vec<String>,
    job: tokio::task::JoinHandle<(Ledger, Result<(), LedgerError>)>,
}

/// A delivery as the commit's blocking thread records it (owned: see
/// [`crate::ledger::Delivery`]).
struct Record {
    key: String,
    size: u64,
    reply: String,
    dele: Option<(u64, u32)>,
}

/// A delivery the server accepted, waiting for its group commit.
struct Done {
    item: Item,
    key: String,
    size: u64,
    sender: String,
    reply: String,
    named: Named,
}

struct Run<'a> {
    cx: &'a Context<'a>,
    /// This pass's events (each carries the pass id).
    events: PassEvents<'a>,
    account: &'a Account,
    summary: Summary,
    smtp: Option<SmtpClient>,
    reconnects: u32,
    /// What the profile makes of this pass (derived once from the configuration).
    policy: Policy,
    spool: PathBuf,
    /// Message number → ledger key, for DELEs confirmed at QUIT.
    deleting: HashMap<u32, String>,
    stop_smtp: Option<String>,
    /// Digest keys handed out this pass (servers without a usable UIDL).
    digests: DigestKeys,
    /// What the ledger knew at the start of the pass.
    known: HashMap<String, Status>,
    /// Messages per LIST size in this session's listing.
    size_counts: HashMap<u64, u32>,
    /// Set when messages go to a pickup folder instead of over SMTP.
    pickup: Option<Pickup>,
    /// Set by a simulated crash: the pass ends now, without DELE or QUIT.
    crashed: Option<Step>,
    /// How often each step was reached this pass (for the crash fail point).
    steps: HashMap<Step, u32>,
    /// Submission marks found at the start of the pass: possible duplicates when
    /// submitted again.
    leftover: HashSet<String>,
    /// Submission marks in the ledger when this POP3 session started (this pass's own
    /// included): keys whose fate is unknown, for giving identical copies their keys.
    session_marks: HashSet<String>,
    /// Keys this pass marked as submitting.
    marked: HashSet<String>,
    /// Keys whose final data went out without a reply: not sent again this pass.
    unknown: HashSet<String>,
    /// Messages submitted (or refused, or deferred) this pass: what the cap bounds.
    attempts: usize,
    /// Size-mismatch suspects retrieved this pass (see [`Item::tried_id`]): not again.
    tried_alone: HashSet<(String, u32)>,
    /// Header-digest keys whose DELE this session recorded as unconfirmed.
    digest_deles: HashSet<String>,
    /// Set when this session stopped before its size-mismatch suspects (they get a session
    /// of their own).
    suspects_waiting: bool,
    /// `TOP n 0` sent this pass (bounded by [`MAX_TOPS_PER_PASS`]).
    tops: usize,
    /// Set once the server refused TOP: not asked again this pass.
    top_refused: bool,
    /// Names read with TOP this pass, by UID key (a restarted session does not ask again).
    top_names: HashMap<String, Named>,
    /// What the administrator asked for quarantined messages (read with `known`).
    actions: HashMap<String, QuarantineAction>,
    /// Set once this pass went through the released messages (once per pass).
    releases_done: bool,
    /// Messages written to the SMTP session ahead of their replies, oldest first.
    flights: VecDeque<Flight>,
    /// Messages whose SMTP session was lost before it took them: submitted again.
    retry: VecDeque<Flight>,
    /// Accepted deliveries waiting for their group commit.
    batch: Vec<Done>,
    /// The group commit under way, and the keys it marks as submitting.
    committing: Option<Committing>,
    marking: HashSet<String>,
    /// The pass's own ledger connection for group commits (opened at the first; held by
    /// the commit under way meanwhile).
    writer: Option<Ledger>,
    /// The UID keys this session works on, in order, and where each stands (what is
    /// marked as submitting ahead of time).
    order: Vec<String>,
    order_at: HashMap<String, usize>,
    /// SMTP sessions opened this pass (the current one's number), and the last one found
    /// lost, with whether another may be opened after it.
    smtp_gen: u32,
    lost_gen: u32,
    lost_may_retry: bool,
    /// Set while committed deliveries must not be DELE'd (the POP3 session broke).
    hold_deles: bool,
}

/// Runs one pass over `account`, under a new pass id.
pub async fn run_account(cx: &Context<'_>, account: &Account) -> Summary {
    run_account_as(cx, account, &PassId::new()).await
}

/// Runs one pass over `account` whose events carry `id`.
pub async fn run_account_as(cx: &Context<'_>, account: &Account, id: &PassId) -> Summary {
    let events = cx.events.pass(id);
    let mut run = Run {
        cx,
        events,
        account,
        summary: Summary {
            account: account.name.clone(),
            pass: Some(id.clone()),
            ..Summary::default()
        },
        smtp: None,
        reconnects: 0,
        policy: cx.config.policy(),
        spool: cx.config.state_dir.join("spool"),
        deleting: HashMap::new(),
        stop_smtp: None,
        digests: DigestKeys::default(),
        known: HashMap::new(),
        size_counts: HashMap::new(),
        pickup: Pickup::from_config(cx.config),
        crashed: None,
        steps: HashMap::new(),
        leftover: HashSet::new(),
        marked: HashSet::new(),
        unknown: HashSet::new(),
        session_marks: HashSet::new(),
        attempts: 0,
        tried_alone: HashSet::new(),
        digest_deles: HashSet::new(),
        suspects_waiting: false,
        tops: 0,
        top_refused: false,
        top_names: HashMap::new(),

        actions: HashMap::new(),
        releases_done: false,
        flights: VecDeque::new(),
        retry: VecDeque::new(),
        batch: Vec::new(),
        committing: None,
        marking: HashSet::new(),
        writer: None,
        order: Vec::new(),
        order_at: HashMap::new(),
        smtp_gen: 0,
        lost_gen: 0,
        lost_may_retry: false,
        hold_deles: false,
    };
    let started_at = unix_now();
    events.emit(Event::PassStarted {
        account: account.name.clone(),
    });
    // One pass per account at a time, across processes too: an advisory lock the kernel
    // releases if this process dies, so it can never go stale.
    let _lock = match lock_account(&cx.config.state_dir, &account.name) {
        Ok(l) => l,
        Err(reason) => {
            events.emit(Event::AccountFailed {
                account: account.name.clone(),
                error: reason.clone(),
            });
            run.summary.aborted = Some(reason);
            record_history(cx.ledger, &run.summary, started_at);
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
        events.emit(Event::AccountFailed {
            account: account.name.clone(),
            error: f.to_string(),
        });
        run.summary.failure = Some(f);
    }
    // What the listing budget left out waits for the next pass, like the rest postponed.
    run.summary.postponed += run.summary.sliced;
    if let Some(step) = run.crashed {
        // The commit under way finishes (on disk or not is a real crash's chance; here it
        // always is, so a test's restart sees one outcome), nothing of it is reported.
        run.abandon_commit().await;
        // Like a killed process: no SMTP QUIT, no clean-up, nothing more written.
        tracing::warn!(account = %account.name, "simulated crash at {step}");
        run.summary.aborted = Some(format!("simulated crash at {step}"));
        return run.summary;
    }
    if let Some(reason) = &run.summary.aborted {
        events.emit(Event::PassInterrupted {
            account: account.name.clone(),
            reason: reason.clone(),
        });
    }
    if let Some(s) = run.smtp.take() {
        s.quit().await;
    }
    run.end_marks();
    let s = &run.summary;
    events.emit(Event::PassFinished {
        account: account.name.clone(),
        delivered: s.delivered,
        deleted: s.deleted,
        remaining: s.remaining(),
        rejected: s.rejected,
        deferred: s.deferred,
        skipped: s.skipped,
        quarantined: s.quarantined,
    });
    record_history(cx.ledger, &run.summary, started_at);
    run.summary
}

/// How a pass ended, for the history: failed (the account could not be processed, or the
/// pass was interrupted), stuck (messages stay that no later pass delivers unchanged:
/// refused, over the size limit, not matching their LIST size), backlog (messages wait
/// for the next pass: deferred, postponed), else ok.
pub fn outcome(s: &Summary) -> (Outcome, Option<String>) {
    if let Some(f) = &s.failure {
        return (Outcome::Failed, Some(f.to_string()));
    }
    if let Some(a) = &s.aborted {
        return (Outcome::Failed, Some(a.clone()));
    }
    // The same meanings as the exit codes: one definition of "stuck" and "backlog".
    match crate::exit::Exit::of(s) {
        crate::exit::Exit::Stuck => (Outcome::Stuck, None),
        crate::exit::Exit::Backlog => (Outcome::Backlog, None),
        _ => (Outcome::Ok, None),
    }
}

/// Records a finished pass in the ledger's history (a failure to do so is only logged:
/// the history is for people, the delivery records are what matters).
fn record_history(ledger: &Mutex<Ledger>, s: &Summary, started_at: i64) {
    let (outcome, reason) = outcome(s);
    let row = PassRow {
        account: s.account.clone(),
        started_at,
        finished_at: unix_now(),
        outcome,
        reason,
        counts: PassCounts {
            listed: s.listed,
            delivered: s.delivered,
            deleted: s.deleted,
            left: s.remaining(),
            rejected: s.rejected,
            deferred: s.deferred,
            skipped: s.skipped,
            quarantined: s.quarantined,
        },
    };
    if let Err(e) = lock(ledger).record_pass(&row) {
        tracing::warn!(account = %s.account, "ledger: pass history not recorded: {e}");
    }
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
    crate::private::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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
    let file = match crate::private::open_options()
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

/// How an account logs in: a password (resolved once per pass), or OAuth2 access tokens.
enum Credential<'a> {
    /// The password (or a static token).
    Password(crate::secret::Secret),
    /// Access tokens from the account's token endpoint.
    OAuth2(oauth2::Tokens<'a>),
}

fn pop3_failure(e: Pop3Error) -> AccountFailure {
    match e {
        Pop3Error::Auth { .. } => AccountFailure::Auth(e.to_string()),
        other => AccountFailure::Connect(other.to_string()),
    }
}

fn smtp_failure(e: SmtpError) -> AccountFailure {
    match e {
        SmtpError::Tls(TlsError::CaFile { .. }) => AccountFailure::Config(e.to_string()),
        other => AccountFailure::Connect(other.to_string()),
    }
}

impl Run<'_> {
    fn emit(&self, e: Event) {
        self.events.emit(e);
    }

    /// Emits an event about a message left undelivered and names it in the summary.
    fn emit_left(&mut self, e: Event) {
        if let Some(left) = Left::from_event(&e) {
            if self.summary.left.len() < MAX_LEFT_NAMED {
                self.summary.left.push(left);
            } else {
                self.summary.left_unnamed += 1;
            }
        }
        self.cx.events.emit(e);
    }

    /// Counts one arrival at `step`; true (and remembered) when the crash fail point is
    /// there.
    fn reached(&mut self, step: Step) -> bool {
        let n = self.steps.entry(step).or_default();
        *n += 1;
        let due = self
            .cx
            .faults
            .crash
            .is_some_and(|fp| fp.step == step && (step == Step::DuringQuit || fp.nth == *n));
        if due {
            self.crashed = Some(step);
        }
        due
    }

    fn sabotaged(&self, s: Sabotage) -> bool {
        self.cx.faults.sabotage == Some(s)
    }

    async fn pass(&mut self) -> Result<(), AccountFailure> {
        let cfg = self.cx.config;
        let a = self.account;
        let credential = match oauth2::Tokens::for_account(cfg, a, self.cx.dialer) {
            Some(tokens) => Credential::OAuth2(tokens),
            None => Credential::Password(
                a.secret
                    .resolve(cfg.timeouts.command)
                    .await
                    .map_err(|e| AccountFailure::Config(e.to_string()))?,
            ),
        };
        let settings = pop3::Settings::for_account(cfg, a)
            .map_err(|e| AccountFailure::Config(e.to_string()))?;
        let mut restarts = 0;
        while let Some(reason) = self.pop3_session(&settings, &credential, restarts).await? {
            // The message that ended it goes last next time: a new session gets further.
            if restarts >= MAX_RESTARTS || self.cx.stop.is_stopped() {
                self.summary.aborted = Some(format!(
                    "{reason}; no further POP3 session this pass ({restarts} already)"
                ));
                break;
            }
            restarts += 1;
            self.emit(Event::Reconnected {
                account: a.name.clone(),
                reason: format!("new POP3 session: {reason}"),
            });
        }
        Ok(())
    }

    /// Connects and logs in with the password, or for an OAuth2 account with an access
    /// token: a cached one the server refuses (it expired early, or was revoked) is
    /// dropped, and one new token gets one more login; a token just obtained that is
    /// refused is an authentication failure.
    async fn login(
        &mut self,
        settings: &pop3::Settings<'_>,
        credential: &Credential<'_>,
    ) -> Result<Transaction, AccountFailure> {
        let a = self.account;
        let tokens = match credential {
            Credential::Password(secret) => {
                let auth = pop3::connect(self.cx.dialer, settings)
                    .await
                    .map_err(pop3_failure)?;
                return match auth.authenticate(a.auth, &a.username, secret).await {
                    Ok(t) => Ok(t),
                    Err(e) => Err(self.login_failure(e)),
                };
            }
            Credential::OAuth2(tokens) => tokens,
        };
        let access = tokens.access_token().await;
        let access = self.token(access)?;
        let auth = pop3::connect(self.cx.dialer, settings)
            .await
            .map_err(pop3_failure)?;
        match auth.authenticate(a.auth, &a.username, &access.token).await {
            Ok(t) => Ok(t),
            Err(e) if e.is_auth() && access.refreshed.is_none() => {
                tracing::info!(
                    account = %a.name,
                    "the POP3 server refused the cached OAuth2 access token ({}); getting a \
                     new one",
                    e.reply().map(|r| r.to_string()).unwrap_or_default().trim_end()
                );
                let access = tokens.replace_rejected().await;
                let access = self.token(access)?;
                let auth = pop3::connect(self.cx.dialer, settings)
                    .await
                    .map_err(pop3_failure)?;
                auth.authenticate(a.auth, &a.username, &access.token)
                    .await
                    .map_err(|e| self.login_failure(e))
            }
            Err(e) => Err(self.login_failure(e)),
        }
    }

    /// A refused login: `auth.failed` when the server refused the credentials.
    fn login_failure(&self, e: Pop3Error) -> AccountFailure {
        if let Some(r) = e.reply().filter(|_| e.is_auth()) {
            self.emit(Event::AuthFailed {
                account: self.account.name.clone(),
                reply: r.to_string().trim_end().to_string(),
            });
        }
        pop3_failure(e)
    }

    /// An access token, with `auth.token_refreshed` when it is new; a refused refresh
    /// token is an authentication failure (`auth.failed`, once).
    fn token(
        &self,
        access: Result<oauth2::Access, oauth2::OAuth2Error>,
    ) -> Result<oauth2::Access, AccountFailure> {
        let account = self.account.name.clone();
        match access {
            Ok(access) => {
                if let Some(r) = &access.refreshed {
                    self.emit(Event::TokenRefreshed {
                        account,
                        reason: r.reason.to_string(),
                        expires_in: r.expires_in,
                        rotated: r.rotated,
                    });
                }
                Ok(access)
            }
            Err(e) if e.is_refusal() => {
                self.emit(Event::AuthFailed {
                    account,
                    reply: e.to_string(),
                });
                Err(AccountFailure::Auth(e.to_string()))
            }
            Err(e) if e.is_config() => Err(AccountFailure::Config(e.to_string())),
            Err(e) => Err(AccountFailure::Connect(e.to_string())),
        }
    }

    /// One POP3 session of the pass (`restarts` before it): login, listing, the work, QUIT.
    /// `Some(reason)` when it ended on a message that did not match its LIST size, with
    /// work left that another session can reach.
    async fn pop3_session(
        &mut self,
        settings: &pop3::Settings<'_>,
        credential: &Credential<'_>,
        restarts: u32,
    ) -> Result<Option<String>, AccountFailure> {
        let cfg = self.cx.config;
        let a = self.account;
        self.deleting.clear();
        self.digest_deles.clear();
        self.suspects_waiting = false;
        self.size_counts.clear();
        self.digests = DigestKeys::default();
        let mut txn = self.login(settings, credential).await?;
        let sizes = txn.list_sizes().await.map_err(pop3_failure)?;
        if restarts == 0 {
            self.summary.listed = sizes.len() as u32;
        }
        self.emit(Event::Listed {
            account: a.name.clone(),
            messages: self.summary.listed,
            octets: sizes.octets(),
        });
        let ledger_error = |e: crate::ledger::LedgerError| AccountFailure::Config(e.to_string());
        let shared = {
            let l = lock(self.cx.ledger);
            self.known = l.statuses(&a.name).map_err(ledger_error)?;
            self.actions = l.quarantine_actions(&a.name).map_err(ledger_error)?;
            l.shared_uids(&a.name).map_err(ledger_error)?
        };
        let slice = self.slice(&mut txn, &sizes, &shared).await?;
        self.summary.sliced = slice.not_held as u32;
        let unaccounted = slice.unaccounted;
        {
            let mut l = lock(self.cx.ledger);
            l.record_shared_uids(&a.name, &slice.fresh)
                .map_err(ledger_error)?;
            if slice.unkeyed {
                // Header-digest keys: settle the DELEs an earlier session could not confirm,
                // against the whole listing's sizes.
                for (_, size) in sizes.iter() {
                    *self.size_counts.entry(size).or_default() += 1;
                }
                l.resolve_unconfirmed(&a.name, &self.size_counts)
                    .map_err(ledger_error)?;
                self.known = l.statuses(&a.name).map_err(ledger_error)?;
            }
            // Read once per pass: a restarted session would find this pass's own marks,
            // which are not left over from an earlier pass (what this pass sent is tracked
            // where it went), while the earlier passes' marks not yet used stay here.
            self.session_marks = l.submitting(&a.name).map_err(ledger_error)?;
            if restarts == 0 {
                self.leftover = self.session_marks.clone();
            }
        }
        drop(sizes);
        let suspect_sizes: HashSet<u64> = self
            .known
            .iter()
            .filter(|(_, st)| {
                matches!(
                    st,
                    Status::Failed {
                        kind: FailureKind::Mismatch,
                        ..
                    }
                )
            })
            .filter_map(|(k, _)| keys::size_of_key(k))
            .collect();

        // Decide per message: delete what was delivered before, collect what needs work
        // (size-mismatch suspects last).
        let (mut work, mut alone) = (Vec::new(), Vec::new());
        for (n, size, key) in slice.entries {
            let status = key.as_ref().and_then(|k| self.known.get(k));
            let status = status.filter(|st| {
                !(matches!(st, Status::Delivered { .. })
                    && self.sabotaged(Sabotage::SkipLedgerCheck))
            });
            match status {
                Some(Status::Delivered { .. }) => {
                    let key = key.clone().unwrap_or_default();
                    self.emit(Event::AlreadyDelivered {
                        account: a.name.clone(),
                        uid: key.clone(),
                    });
                    if !a.leave_on_server {
                        txn.send_dele(n);
                        self.deleting.insert(n, key);
                    }
                }
                Some(Status::Quarantined { .. }) => {
                    let discarded = key
                        .as_ref()
                        .is_some_and(|k| self.actions.get(k) == Some(&QuarantineAction::Discard));
                    if (cfg.limits.quarantine_delete || discarded) && !a.leave_on_server {
                        txn.send_dele(n);
                        self.deleting.insert(n, key.clone().unwrap_or_default());
                    }
                }
                st => {
                    let suspect = match (&key, st) {
                        (
                            Some(_),
                            Some(Status::Failed {
                                kind: FailureKind::Mismatch,
                                ..
                            }),
                        ) => true,
                        (None, _) => suspect_sizes.contains(&size),
                        _ => false,
                    };
                    let item = Item {
                        n,
                        size,
                        key,
                        alone: suspect,
                        next: None,
                    };
                    if suspect {
                        alone.push(item);
                    } else {
                        work.push(item);
                    }
                }
            }
        }
        // Suspects least often tried first, the order turning from pass to pass, and none
        // twice in a pass: a message whose mismatch a passing fault caused (or that only
        // shares a LIST size with a liar, without UIDs) is never starved behind one that
        // lies every time.
        let tries = |item: &Item| match self.known.get(&item.mismatch_key()) {
            Some(Status::Failed { failures, .. }) => *failures,
            _ => 0,
        };
        alone.retain(|item| !self.tried_alone.contains(&item.tried_id()));
        alone.sort_by_key(|item| (tries(item), item.n));
        if !alone.is_empty() {
            let turn: u32 = alone.iter().map(tries).sum();
            let len = alone.len();
            alone.rotate_left(turn as usize % len);
        }
        work.append(&mut alone);
        let (postponed, delivered) = (self.summary.postponed, self.summary.delivered);
        let mut result = self.process(&mut txn, work).await;
        if result.is_ok() && !self.releases_done && self.crashed.is_none() {
            self.releases_done = true;
            result = self.release(&mut txn).await;
        }
        if let Some(unaccounted) = unaccounted {
            // Without UIDL, what was not held counts as work only as far as the ledger
            // cannot account for it, after this session's deliveries.
            let delivered = (self.summary.delivered - delivered) as usize;
            let bound = unaccounted.saturating_sub(delivered) as u32;
            self.summary.sliced = self.summary.sliced.min(bound);
        }
        // Drain replies (DELEs) and QUIT: only a successful QUIT applies the deletions.
        match result {
            Ok(()) => {
                if self.reached(Step::DuringQuit) {
                    txn.quit_and_vanish().await;
                    return Ok(None);
                }
                match txn.quit().await {
                    Ok(_) => self.confirm_deleted(),
                    Err(e) => {
                        self.summary.aborted =
                            Some(format!("QUIT failed, deletions not confirmed: {e}"));
                        return Ok(None);
                    }
                }
                if self.suspects_waiting {
                    self.summary.postponed = postponed;
                    return Ok(Some(
                        "messages whose size did not match LIST are retried in a session of \
                         their own"
                            .into(),
                    ));
                }
            }
            Err(Broken::Crashed) => {}
            Err(Broken::OutOfStep { reason, suspect }) => {
                // Only the DELEs sent before, each for a proven delivery, can take effect.
                // Unless some are for messages known by header digest alone: whether the
                // server refused one of those (a reply never read) could not be told apart
                // from the QUIT applying it, so the connection is dropped and the next
                // session deletes them again.
                let quit = if self.digest_deles.is_empty() {
                    match txn.quit_blind().await {
                        Ok(()) => "QUIT sent without reading further replies".to_string(),
                        Err(e) => format!("the connection was then dropped: {e}"),
                    }
                } else {
                    drop(txn);
                    "connection dropped without QUIT (deletions of messages without a UID \
                     must be seen to apply)"
                        .to_string()
                };
                let reason = format!("{reason}; {quit}; deletions of this session not confirmed");
                if suspect && self.summary.postponed > postponed {
                    // What was not reached is for the next session, not postponed.
                    self.summary.postponed = postponed;
                    return Ok(Some(reason));
                }
                self.summary.aborted = Some(reason);
            }
            Err(Broken::Lost(e)) => {
                // The POP3 session is unusable: drop it without QUIT. Nothing is deleted;
                // what was delivered is in the ledger and will only be deleted next time.
                self.summary.aborted = Some(format!("POP3 session lost: {e}"));
            }
        }
        Ok(None)
    }

    /// Reads UIDL, when the server has it, and picks the messages this session works on
    /// (the module header says how): UID-keyed ones, those whose UID the listing or the
    /// ledger has as shared, and listed ones UIDL left out (both keyed by header digest),
    /// within the listing budget. Emits `message.already_delivered` for the delivered ones
    /// kept on the server, as their entries arrive.
    async fn slice(
        &mut self,
        txn: &mut Transaction,
        sizes: &Sizes,
        shared: &HashSet<String>,
    ) -> Result<Slice, AccountFailure> {
        let a = self.account;
        let budget = self.cx.listing_budget;
        let leave = a.leave_on_server;
        let trust_ledger = !self.sabotaged(Sabotage::SkipLedgerCheck);
        let dele_quarantined = self.cx.config.limits.quarantine_delete && !leave;
        // Over this a message is never downloaded, whatever the SMTP server says.
        let ceiling = crate::limits::effective_limit(self.cx.config, a, None)
            .unwrap_or(u64::MAX)
            .min(self.cx.config.limits.max_download_size);
        let (known, events, actions) = (&self.known, self.events, &self.actions);
        let discarded = |uid: &str| actions.get(uid) == Some(&QuarantineAction::Discard) && !leave;
        // The ledger's UID keys this listing shows (for pruning: what it does not show has
        // left the server).
        let mut seen = HashSet::new();
        let mut shared_listed = false;
        let select = |n: u32, uid: &str| -> Want {
            // A UIDL entry LIST does not have is not a message of this session.
            let Some(size) = sizes.get(n) else {
                return Want::Skip;
            };
            if known.contains_key(uid) {
                seen.insert(uid.to_string());
            }
            if shared.contains(uid) {
                shared_listed = true;
                // Kept on the server, it is downloaded on every pass.
                return if leave { Want::Later } else { Want::First };
            }
            match known.get(uid) {
                Some(Status::Delivered { .. }) if trust_ledger => {
                    if !leave {
                        return Want::First;
                    }
                    events.emit(Event::AlreadyDelivered {
                        account: a.name.clone(),
                        uid: uid.to_string(),
                    });
                    Want::Skip
                }
                Some(Status::Quarantined { .. }) if !dele_quarantined && !discarded(uid) => {
                    Want::Skip
                }
                Some(Status::Quarantined { .. }) => Want::First,
                Some(Status::Failed { .. }) => Want::Later,
                _ if size > ceiling => Want::Later,
                _ => Want::First,
            }
        };
        let uids = txn
            .uidl_scan(UidScan::new(budget, select))
            .await
            .map_err(pop3_failure)?;
        let Some(uids) = uids else {
            return Ok(self.window(sizes));
        };
        // A complete listing: what it no longer shows has left the server, and what left
        // long enough ago is forgotten.
        self.forget_gone(&seen);
        let mut fresh = Vec::new();
        let mut entries = Vec::with_capacity(uids.held_len());
        for (n, uid) in uids.held() {
            let size = sizes.get(n).unwrap_or_default();
            let key = if uids.is_shared(n) {
                if !shared.contains(uid) {
                    fresh.push(uid.to_string());
                }
                None
            } else if shared.contains(uid) {
                None
            } else {
                Some(uid.to_string())
            };
            entries.push((n, size, key));
        }
        fresh.sort_unstable();
        fresh.dedup();
        let mut unkeyed = shared_listed || entries.iter().any(|e| e.2.is_none());
        // Listed messages without a usable UID that were not held (a UID listed more than
        // once, one a delivered message kept on the server has too; or no UIDL entry):
        // keyed by header digest, in the room left.
        let mut not_held = uids.not_held();
        let room = budget.messages.saturating_sub(entries.len());
        // (A twin the selection wanted and did not hold is already counted as not held.)
        let twins = uids
            .shared_entries()
            .filter(|&(n, _)| sizes.contains(n) && !uids.is_held(n));
        let missing = sizes
            .iter()
            .map(|(n, _)| (n, false))
            .filter(|&(n, _)| !uids.has_uid(n));
        let mut added = 0;
        for (n, counted) in twins.chain(missing) {
            unkeyed = true;
            if added < room {
                entries.push((n, sizes.get(n).unwrap_or_default(), None));
                added += 1;
                not_held -= usize::from(counted);
            } else if !counted {
                not_held += 1;
            }
        }
        if added > 0 {
            entries.sort_by_key(|e| e.0);
        }
        Ok(Slice {
            entries,
            not_held,
            fresh,
            unkeyed,
            unaccounted: None,
        })
    }

    /// Without UIDL: every listed message, keyed by header digest once downloaded; past the
    /// budget, a window of it (the module header says where it starts).
    fn window(&self, sizes: &Sizes) -> Slice {
        let budget = self.cx.listing_budget.messages;
        let count = sizes.len();
        // Past the budget: start as many messages in as the ledger has delivered by header
        // digest and (as far as it knows) kept on the server, and bound what is not held.
        let (start, unaccounted) = if count > budget {
            let kept = self
                .known
                .iter()
                .filter(|(k, st)| {
                    k.starts_with("sha256:")
                        && matches!(st, Status::Delivered { deleted: false, .. })
                })
                .count();
            let start = if self.account.leave_on_server {
                kept % count
            } else {
                0
            };
            (start, Some(count.saturating_sub(kept)))
        } else {
            (0, None)
        };
        let entry = |(n, size): (u32, u64)| (n, size, None);
        let mut entries: Vec<_> = sizes.iter().skip(start).take(budget).map(entry).collect();
        let wrap = budget.min(count).saturating_sub(entries.len());
        entries.extend(sizes.iter().take(wrap).map(entry));
        Slice {
            not_held: count - entries.len(),
            entries,
            fresh: Vec::new(),
            unkeyed: count > 0,
            unaccounted,
        }
    }

    /// Records which of the ledger's UID keys a complete listing showed, then prunes the
    /// rows gone for longer than `ledger_retention`. Failures are only logged: pruning
    /// can wait, and a row kept is never a risk.
    fn forget_gone(&mut self, seen: &HashSet<String>) {
        let a = &self.account.name;
        let retention =
            i64::try_from(self.cx.config.ledger_retention.as_secs()).unwrap_or(i64::MAX);
        let mut l = lock(self.cx.ledger);
        let result = l
            .record_listing(a, seen)
            .and_then(|()| l.prune(a, retention));
        if let Err(e) = result {
            tracing::warn!(account = %a, "ledger: not pruned: {e}");
        }
    }

    /// Delivers the quarantined messages the administrator released, from their local
    /// copies (whether or not the server still has them), through the same path as any
    /// message: submission mark, delivery record, which ends the release, so a later pass
    /// only DELEs (or keeps) the server's copy and never submits it again. A copy that
    /// cannot be read is deferred; a refusal leaves the message quarantined and ends the
    /// release.
    async fn release(&mut self, txn: &mut Transaction) -> Result<(), Broken> {
        let a = self.account;
        let mut released: Vec<String> = self
            .actions
            .iter()
            .filter(|(_, act)| **act == QuarantineAction::Release)
            .map(|(k, _)| k.clone())
            .collect();
        released.sort();
        for key in released {
            if self.cx.stop.is_stopped() || self.crashed.is_some() {
                break;
            }
            let Some(Status::Quarantined { path }) = self.known.get(&key).cloned() else {
                continue;
            };
            let body =
                match read_copy(&path, &self.spool, self.cx.config.limits.memory_threshold).await {
                    Ok(b) => b,
                    Err(e) => {
                        self.defer(
                            key,
                            format!(
                                "released, but its copy {} cannot be read: {e}",
                                path.display()
                            ),
                        );
                        continue;
                    }
                };
            let item = Item {
                // Not a message of this session: never DELE'd by number.
                n: 0,
                size: body.len(),
                key: Some(key.clone()),
                alone: false,
                next: None,
            };
            let (delivered, rejected) = (self.summary.delivered, self.summary.rejected);
            self.deliver(txn, &item, key.clone(), body).await;
            // Recorded now: the release ends with the record.
            self.commit(txn).await;
            if self.summary.delivered > delivered {
                self.emit(Event::QuarantineRedelivered {
                    account: a.name.clone(),
                    uid: key,
                });
            } else if self.summary.rejected > rejected {
                if let Err(e) = lock(self.cx.ledger).set_quarantine_action(&a.name, &key, None) {
                    tracing::warn!(account = %a.name, "ledger: {e}");
                }
            }
        }
        if self.crashed.is_some() {
            // A simulated crash while delivering one: stop dead, no QUIT.
            return Err(Broken::Crashed);
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

    /// Ends this pass's submission marks, except those naming a message the SMTP server
    /// may have without this pass knowing: its final data went out without a reply, or an
    /// earlier one's did and the message was not submitted again.
    fn end_marks(&mut self) {
        let mut keep = self.unknown.clone();
        keep.extend(
            self.leftover
                .iter()
                .filter(|k| {
                    !matches!(
                        self.known.get(*k),
                        Some(Status::Delivered { .. } | Status::Quarantined { .. })
                    )
                })
                .cloned(),
        );
        if self.marked.is_empty() && self.leftover.is_empty() {
            return;
        }
        if let Err(e) = lock(self.cx.ledger).clear_submissions(&self.account.name, &keep) {
            tracing::warn!(account = %self.account.name, "ledger: {e}");
        }
    }

    /// The limit a message must fit: the smaller of the configured one and the SMTP
    /// server's SIZE (learnt by connecting), or the fixed SBS limit.
    async fn limit(&mut self) -> Result<Option<u64>, SmtpError> {
        if self.pickup.is_some() {
            // No SMTP server to ask: the configured limits alone, Exchange's included (the
            // pickup service hands the message to the same categoriser that bounces it).
            // Under sbs2008: the old connector's fixed limit.
            return Ok(crate::limits::effective_limit(
                self.cx.config,
                self.account,
                None,
            ));
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
        if worn && self.policy.reconnect_before_error_limit {
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
            let t = cfg
                .transport
                .smtp()
                .expect("a pickup folder never opens an SMTP session");
            let s = smtp::Settings::for_transport(cfg, t, self.policy.pipelining)
                .map_err(SmtpError::Tls)?;
            self.smtp = Some(SmtpClient::connect(self.cx.dialer, &s).await?);
            self.smtp_gen += 1;
        }
        Ok(self.smtp.as_mut().expect("connected above"))
    }

    /// The most messages submitted per pass.
    fn cap(&self) -> usize {
        self.policy.max_per_session
    }

    async fn process(&mut self, txn: &mut Transaction, work: Vec<Item>) -> Result<(), Broken> {
        if work.is_empty() {
            return Ok(());
        }
        let cap = self.cap();
        let a = self.account;
        let limit = match self.limit().await {
            Ok(l) => l,
            Err(e) => {
                // No SMTP server: nothing can be delivered; everything stays.
                self.summary.deferred += work.len() as u32;
                for item in &work {
                    self.emit_left(Event::Deferred {
                        account: a.name.clone(),
                        uid: item.key.clone().unwrap_or_default(),
                        reason: e.to_string(),
                        named: Named::default(),
                    });
                }
                // Could not reach the SMTP server: an account failure (exit 3, or 2 for a
                // CA file), after which the POP3 session still QUITs so earlier deliveries
                // get deleted.
                self.summary.failure = Some(smtp_failure(e));
                return Ok(());
            }
        };
        // Nothing is downloaded past the hard ceiling, whatever the servers say.
        let ceiling = self.cx.config.limits.max_download_size;
        let over = limit.map_or(ceiling, |l| l.min(ceiling));
        let limit = Some(over);
        // Under sbs2008, the old connector's documented field behaviour: the first message
        // over the limit (in maildrop order) stops the mailbox's pass, so nothing behind it
        // arrives, on this pass or any later one while it stays on the server.
        let (work, behind) = if self.policy.stop_at_oversize {
            stall_at_first_oversize(work, over)
        } else {
            (work, Vec::new())
        };
        if let Some(first) = work
            .iter()
            .filter(|i| i.size > over)
            .map(|i| i.label())
            .next()
        {
            for item in &behind {
                self.summary.deferred += 1;
                self.emit_left(Event::Deferred {
                    account: a.name.clone(),
                    uid: item.label(),
                    reason: format!(
                        "behind oversize message {first}: the sbs2008 profile stops the \
                         mailbox's pass at the first message over the limit"
                    ),
                    named: Named::default(),
                });
            }
        }
        // Oversize messages are never downloaded; TOP names them where the server allows.
        let (oversize, mut todo): (Vec<Item>, Vec<Item>) =
            work.into_iter().partition(|item| item.size > over);
        if !oversize.is_empty() {
            let (names, broken) = match self.name_unread(txn, &oversize).await {
                Ok(names) => (names, None),
                Err((names, b)) => (names, Some(b)),
            };
            for (i, item) in oversize.iter().enumerate() {
                self.summary.skipped += 1;
                self.emit_left(Event::SkippedOversize {
                    account: a.name.clone(),
                    uid: item.label(),
                    size: item.size,
                    limit: over,
                    named: names.get(i).cloned().unwrap_or_default(),
                });
            }
            if let Some(b) = broken {
                // Nothing of the rest was started: it waits for the next pass.
                self.summary.postponed += todo.len() as u32;
                return Err(b);
            }
        }
        // The cap bounds submissions, and counts only what will be downloaded. A message
        // without a UID may turn out, once downloaded, to be one already delivered or
        // quarantined: those are all queued, and the cap is applied as they are submitted.
        let mut with_uid = 0;
        todo.retain(|item| {
            if item.key.is_none() {
                return true;
            }
            with_uid += 1;
            with_uid <= cap
        });
        let over_cap = with_uid.saturating_sub(cap) as u32;
        self.summary.postponed += over_cap;
        self.summary.capped += over_cap;
        // Estimated LIST sizes prove nothing: one message at a time then. Otherwise RETRs
        // go out ahead, bounded by count and by octets.
        let (window, window_bytes) = if txn.capabilities.pipelining && a.verify_list_size {
            (RETR_WINDOW, RETR_WINDOW_BYTES)
        } else {
            (1, 0)
        };
        // A lying server is bounded: a body may exceed its LIST size by a margin only.
        let bound = |size: u64| {
            (size.saturating_mul(2))
                .max(size + 64 * 1024)
                .min(limit.map_or(u64::MAX, |l| l.saturating_add(64 * 1024)))
                .min(ceiling)
        };
        // Each item once: the map and the queue point into `todo`.
        let by_n: HashMap<u32, usize> = todo.iter().enumerate().map(|(i, it)| (it.n, i)).collect();
        let take = |i: usize| Item {
            next: todo.get(i + 1).and_then(|after| after.key.clone()),
            ..todo[i].clone()
        };
        // The UID keys in the order they will be submitted (marked as submitting ahead).
        self.order = todo.iter().filter_map(|i| i.key.clone()).collect();
        self.order_at = (self.order.iter().enumerate())
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let mut queue = (0..todo.len()).peekable();
        let mut in_flight_retr = 0usize;
        // The LIST sizes of the RETRs in flight, in the order sent, and their sum.
        let mut retr_sizes: VecDeque<u64> = VecDeque::new();
        let mut retr_bytes = 0u64;
        // Set when the cap stopped the queue (what is left is backlog, not a failure).
        let mut cap_reached = false;
        let threshold = self.cx.config.limits.memory_threshold;
        let result = loop {
            // After a stop request, no new message is started; those in flight finish. A
            // suspect goes alone, once everything before it is answered.
            while in_flight_retr < window && !self.cx.stop.is_stopped() {
                match queue.peek().map(|&i| &todo[i]) {
                    Some(item) if item.alone && txn.in_flight() > 0 => break,
                    // Suspects go in a session of their own, once this one's deletions are
                    // applied by a clean QUIT: one that ends it out of step costs nothing.
                    Some(item)
                        if item.alone
                            && !(self.deleting.is_empty()
                                && self.flights.is_empty()
                                && self.batch.is_empty()) =>
                    {
                        self.suspects_waiting = true;
                        break;
                    }
                    // Never more submissions than the cap, counting those in flight.
                    Some(item) if item.key.is_none() && self.attempts + in_flight_retr >= cap => {
                        cap_reached = true;
                        break;
                    }
                    Some(item) if in_flight_retr > 0 && retr_bytes + item.size > window_bytes => {
                        break
                    }
                    Some(_) => {
                        let item = &todo[queue.next().expect("peeked")];
                        txn.send_retr(item.n, bound(item.size));
                        in_flight_retr += 1;
                        retr_sizes.push_back(item.size);
                        retr_bytes += item.size;
                        if item.alone {
                            self.tried_alone.insert(item.tried_id());
                            break;
                        }
                    }
                    None => break,
                }
            }
            if txn.in_flight() == 0 || (self.suspects_waiting && in_flight_retr == 0) {
                break Ok(());
            }
            // Accepted deliveries never wait for a server that has not started its next
            // reply: they are committed first.
            if !txn.buffered() && !self.batch.is_empty() {
                self.advance_commit(txn).await;
            }
            let answering = txn.peek();
            if matches!(answering, Some(Pending::Retr(_))) {
                retr_bytes = retr_bytes.saturating_sub(retr_sizes.pop_front().unwrap_or(0));
            }
            match txn.next(&self.spool, threshold).await {
                Ok(Response::Retr { msg, body }) => {
                    in_flight_retr -= 1;
                    let Some(item) = by_n.get(&msg).map(|&i| take(i)) else {
                        continue;
                    };
                    if let Err(b) = self.retrieved(txn, item, body).await {
                        break Err(b);
                    }
                }
                Ok(Response::Deleted { .. }) => {
                    if self.reached(Step::AfterDele) {
                        break Err(Broken::Crashed);
                    }
                }
                Ok(Response::Refused {
                    pending: Pending::Retr(msg),
                    reply,
                }) => {
                    // A listed message the server will not send is rare, and an extra
                    // `-ERR` line before a reply reads exactly like it: the replies after it
                    // may each answer the command before. Nothing more is read; the message
                    // goes last and alone from now on, so it never holds up the others.
                    in_flight_retr -= 1;
                    let reason = format!("RETR refused: {}", reply.to_string().trim_end());
                    let item = by_n.get(&msg).map(|&i| take(i));
                    if let Some(item) = &item {
                        self.suspect(item, &reason);
                    }
                    break Err(Broken::OutOfStep {
                        reason: format!(
                            "message {msg}: {reason}; the replies after it cannot be trusted"
                        ),
                        suspect: item.is_some(),
                    });
                }
                Ok(Response::Refused {
                    pending: Pending::Dele(msg),
                    reply,
                }) => self.dele_refused(msg, &reply),
                Err(Pop3Error::TooLarge { limit, .. }) => {
                    let Some(Pending::Retr(msg)) = answering else {
                        break Err(Broken::OutOfStep {
                            reason: format!("a reply ran past {limit} octets"),
                            suspect: false,
                        });
                    };
                    // Answered, however wrongly: not work left for another session.
                    in_flight_retr -= 1;
                    let item = by_n.get(&msg).map(|&i| take(i));
                    if let Some(item) = &item {
                        self.mismatch(item, limit, true);
                    }
                    break Err(Broken::OutOfStep {
                        reason: format!(
                            "message {msg} ran past {limit} octets (LIST said {})",
                            item.as_ref().map_or(0, |i| i.size)
                        ),
                        suspect: item.is_some(),
                    });
                }
                Err(e @ Pop3Error::Unasked { .. }) => {
                    // The reply just read may be another command's: not used. When it was a
                    // message's, that message goes last and alone from now on.
                    let item = match answering {
                        Some(Pending::Retr(msg)) => {
                            in_flight_retr -= 1;
                            by_n.get(&msg).map(|&i| take(i))
                        }
                        _ => None,
                    };
                    if let Some(item) = &item {
                        self.suspect(item, &e.to_string());
                    }
                    break Err(Broken::OutOfStep {
                        reason: e.to_string(),
                        suspect: item.is_some(),
                    });
                }
                Err(e @ Pop3Error::Protocol { .. }) => {
                    break Err(Broken::OutOfStep {
                        reason: e.to_string(),
                        suspect: false,
                    })
                }
                Err(e) => break Err(Broken::Lost(e)),
            }
        };
        // Everything submitted is answered and committed before the session goes on (or
        // ends); after a simulated crash, nothing more happens.
        let mut result = result;
        if !matches!(result, Err(Broken::Crashed)) {
            self.settle_all(txn, result.is_ok()).await;
            if self.crashed.is_some() {
                result = Err(Broken::Crashed);
            } else if result.is_ok() {
                // The DELEs of the last commit are answered here, like the others.
                result = self.answer_pending(txn).await;
            }
        }
        // Not started (a stop request, or the session ended early): they wait for the next
        // pass.
        let left = queue.count() as u32;
        self.summary.postponed += left + in_flight_retr as u32;
        if cap_reached && result.is_ok() && !self.cx.stop.is_stopped() {
            self.summary.capped += left;
        }
        result
    }

    /// A refused DELE: the message was delivered and recorded, and the next pass deletes
    /// it. A refused DELE certainly did not apply: it must not count as one that may have.
    fn dele_refused(&mut self, msg: u32, reply: &popbridge_proto::pop3::Pop3Reply) {
        let a = self.account;
        if let Some(key) = self.deleting.remove(&msg) {
            if self.digest_deles.remove(&key) {
                if let Err(e) = lock(self.cx.ledger).clear_unconfirmed(&a.name, &key) {
                    tracing::warn!(account = %a.name, "ledger: {e}");
                }
            }
        }
        tracing::warn!(account = %a.name, "DELE {msg} refused: {}", reply.to_string().trim_end());
    }

    /// The names of messages left unread (over the size limit), one `TOP n 0` each, in
    /// order: at most [`MAX_TOPS_PER_PASS`] a pass, none once the server refused TOP, a
    /// message's name read earlier in the pass reused. Replies still owed (DELEs) are read
    /// first: TOP is never pipelined. A name not read is empty. When the session breaks,
    /// the names read so far and why.
    async fn name_unread(
        &mut self,
        txn: &mut Transaction,
        items: &[Item],
    ) -> Result<Vec<Named>, (Vec<Named>, Broken)> {
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            if let Some(n) = item.key.as_ref().and_then(|k| self.top_names.get(k)) {
                names.push(n.clone());
                continue;
            }
            if self.top_refused || self.tops >= MAX_TOPS_PER_PASS {
                names.push(Named::default());
                continue;
            }
            if let Err(b) = self.answer_pending(txn).await {
                return Err((names, b));
            }
            self.tops += 1;
            match txn.top(item.n, &self.spool).await {
                Ok(Some(head)) => {
                    let n = Named::from_head(head.head());
                    if let Some(k) = &item.key {
                        self.top_names.insert(k.clone(), n.clone());
                    }
                    names.push(n);
                }
                Ok(None) => {
                    self.top_refused = true;
                    names.push(Named::default());
                }
                Err(e) => return Err((names, broken_by(e))),
            }
        }
        Ok(names)
    }

    /// Reads every reply still owed (only DELEs are sent before any RETR).
    async fn answer_pending(&mut self, txn: &mut Transaction) -> Result<(), Broken> {
        while txn.in_flight() > 0 {
            match txn.next(&self.spool, 0).await {
                Ok(Response::Deleted { .. }) => {
                    if self.reached(Step::AfterDele) {
                        return Err(Broken::Crashed);
                    }
                }
                Ok(Response::Refused {
                    pending: Pending::Dele(msg),
                    reply,
                }) => self.dele_refused(msg, &reply),
                Ok(_) => {
                    return Err(Broken::OutOfStep {
                        reason: "a message arrived where a DELE reply was due".into(),
                        suspect: false,
                    })
                }
                Err(e) => return Err(broken_by(e)),
            }
        }
        Ok(())
    }

    /// A message came back from RETR: check it against its LIST size, then deliver it.
    async fn retrieved(
        &mut self,
        txn: &mut Transaction,
        item: Item,
        body: Body,
    ) -> Result<(), Broken> {
        if self.reached(Step::AfterRetr) {
            return Err(Broken::Crashed);
        }
        if self.sabotaged(Sabotage::DeleBeforeLedger) && !self.account.leave_on_server {
            txn.send_dele(item.n);
            self.deleting.insert(item.n, item.label());
        }
        if body.head().starts_with(b"+OK") || body.head().starts_with(b"-ERR") {
            // A status line where the message should start: a reply was read as another's
            // (an extra line came before it). Nothing after this can be trusted.
            return Err(Broken::OutOfStep {
                reason: format!(
                    "message {} began with a POP3 status line: the replies are out of step",
                    item.n
                ),
                suspect: false,
            });
        }
        let plausible = body.line_ends().plausible_sizes(body.len());
        if self.account.verify_list_size && !plausible.contains(&item.size) {
            self.mismatch(&item, body.len(), false);
            if body.len() < item.size {
                // Its end came early: what follows may be the rest of it.
                return Err(Broken::OutOfStep {
                    reason: format!(
                        "message {} came back with {} octets where LIST said {}",
                        item.n,
                        body.len(),
                        item.size
                    ),
                    // Another session goes on past it (it is not retried this pass).
                    suspect: true,
                });
            }
            return Ok(());
        }
        if let Some(why) = self.stop_smtp.clone() {
            self.defer_named(item.label(), why, Named::from_head(body.head()));
            return Ok(());
        }
        self.handle(txn, item, body).await;
        if self.crashed.is_some() {
            return Err(Broken::Crashed);
        }
        Ok(())
    }

    /// Records and reports a message whose retrieval did not match its LIST size (not to be
    /// tried again in this pass).
    fn mismatch(&mut self, item: &Item, received: u64, overran: bool) {
        let what = if overran {
            format!("RETR ran past {received} octets")
        } else {
            format!("RETR gave {received} octets")
        };
        let failures = self.record_suspect(item, &format!("{what}, LIST said {}", item.size));
        self.summary.mismatched += 1;
        self.emit(Event::SizeMismatch {
            account: self.account.name.clone(),
            uid: item.mismatch_key(),
            listed: item.size,
            received,
            overran,
            failures,
        });
    }

    /// Records a message whose retrieval could not be trusted (refused, or followed by
    /// octets nobody asked for) like a size mismatch: retried last and alone on later
    /// sessions, not again in this pass. Reported as deferred.
    fn suspect(&mut self, item: &Item, reason: &str) {
        self.record_suspect(item, reason);
        self.defer(item.label(), reason.to_string());
    }

    /// Marks `item` as tried alone this pass and records its failure as a mismatch (the
    /// ledger then has it retried last and alone); returns the failure count (0 when the
    /// ledger could not record it).
    fn record_suspect(&mut self, item: &Item, reason: &str) -> u32 {
        let a = self.account;
        self.tried_alone.insert(item.tried_id());
        lock(self.cx.ledger)
            .record_failure_of(&a.name, &item.mismatch_key(), reason, FailureKind::Mismatch)
            .unwrap_or_else(|e| {
                tracing::error!(account = %a.name, "ledger: {e}");
                0
            })
    }

    fn defer(&mut self, uid: String, reason: String) {
        self.defer_named(uid, reason, Named::default());
    }

    /// [`Run::defer`] for a message whose header was read.
    fn defer_named(&mut self, uid: String, reason: String, named: Named) {
        self.summary.deferred += 1;
        self.emit_left(Event::Deferred {
            account: self.account.name.clone(),
            uid,
            reason,
            named,
        });
    }

    /// Queues the DELE of message `msg`, recorded under `key`.
    fn dele(&mut self, txn: &mut Transaction, msg: u32, key: String) {
        if msg == 0 {
            // A released message delivered from its local copy: not a message of this
            // session's listing (a later pass deletes the server's copy, if any).
            return;
        }
        txn.send_dele(msg);
        self.deleting.insert(msg, key);
    }

    /// One downloaded message: find its key, then submit, record, delete, or keep it.
    async fn handle(&mut self, txn: &mut Transaction, item: Item, body: Body) {
        let a = self.account;
        let key = match item.key.clone() {
            Some(k) => k,
            None => {
                // No usable UIDL: the header digest, numbered by occurrence, is the key; it
                // may show this copy was delivered before.
                let digest = message::header_digest(body.head(), body.len(), crate::body::HEAD_MAX);
                let k = self
                    .digests
                    .assign(&digest, &self.known, &self.session_marks);
                let status = self.known.get(&k).filter(|st| {
                    !(matches!(st, Status::Delivered { .. })
                        && self.sabotaged(Sabotage::SkipLedgerCheck))
                });
                match status {
                    Some(Status::Delivered { .. }) => {
                        self.emit(Event::AlreadyDelivered {
                            account: a.name.clone(),
                            uid: k.clone(),
                        });
                        if !a.leave_on_server {
                            // Remembered before it is sent: whether a QUIT applied it must be
                            // decided next time, even after a crash.
                            let dele = [crate::ledger::Unconfirmed {
                                key: k.clone(),
                                size: item.size,
                                listed: self.listed_of(item.size),
                            }];
                            match lock(self.cx.ledger).record_unconfirmed(&a.name, &dele) {
                                Ok(()) => {
                                    self.digest_deles.insert(k.clone());
                                    self.dele(txn, item.n, k)
                                }
                                Err(e) => {
                                    tracing::error!(account = %a.name, "ledger: {e}; not deleted")
                                }
                            }
                        }
                        return;
                    }
                    Some(Status::Quarantined { .. }) => return,
                    _ => k,
                }
            }
        };
        self.deliver(txn, &item, key, body).await;
    }

    /// Messages of LIST size `size` in this session's listing.
    fn listed_of(&self, size: u64) -> u32 {
        self.size_counts.get(&size).copied().unwrap_or(0)
    }

    /// Submits a downloaded message under `key` and acts on the outcome.
    async fn deliver(&mut self, txn: &mut Transaction, item: &Item, key: String, body: Body) {
        let cfg = self.cx.config;
        let a = self.account;
        self.attempts += 1;
        let info = message::parse_headers(body.head(), crate::body::HEAD_MAX);
        let named = Named::from_info(&info);
        let smtputf8 = self.smtp.as_ref().is_some_and(|s| s.ext.smtputf8);
        let sender = message::envelope_sender(
            &info,
            cfg.limits.default_domain.as_deref(),
            &cfg.limits.fallback_sender,
            smtputf8,
            self.policy.repair_senders,
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
                cfg.transport.helo(),
                &key,
                for_rcpt,
                SystemTime::now(),
            )
        } else {
            String::new()
        };
        let env = match Envelope::new(&sender.address, &recipients) {
            Ok(env) => env,
            Err(e) => {
                self.defer_named(key, format!("not submitted: {e}"), named);
                return;
            }
        };
        if self.pickup.is_some() {
            return self
                .deliver_pickup(txn, item, key, &env, prefix.as_bytes(), body, named)
                .await;
        }
        if self.unknown.contains(&key) {
            // An earlier session of this pass sent its final data and never had a reply.
            self.defer_named(
                key,
                "the server may have accepted it earlier in this pass: not sent again in this \
                 pass"
                    .into(),
                named,
            );
            return;
        }
        if self.leftover.remove(&key) {
            self.emit(Event::PossibleDuplicate {
                account: a.name.clone(),
                uid: key.clone(),
                message_id: info.message_id.clone(),
            });
        }
        if self.marking.contains(&key) {
            // Marked by the commit under way: durable once it is.
            self.finish_commit(txn).await;
        }
        if !self.marked.contains(&key) {
            // Durable before the final data goes out (normally done ahead, in the commit
            // of earlier deliveries).
            if let Err(e) = self.mark_ahead(&key) {
                tracing::error!(account = %a.name, "ledger: {e}");
                self.defer_named(key, format!("not submitted: the ledger failed: {e}"), named);
                return;
            }
        }
        self.retry.push_back(Flight {
            item: item.clone(),
            key,
            body,
            env,
            prefix: prefix.into_bytes(),
            named,
            gen: 0,
        });
        // This message, then any whose session was lost meanwhile.
        while let Some(f) = self.retry.pop_front() {
            if self.crashed.is_some() {
                return;
            }
            self.dispatch(txn, f).await;
        }
    }

    /// Marks `key` as submitting, with the messages after it that the SMTP session may
    /// take before the next commit, in one commit.
    fn mark_ahead(&mut self, key: &str) -> Result<(), crate::ledger::LedgerError> {
        let mut keys = vec![key.to_string()];
        keys.extend(self.upcoming(key));
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        blocking(|| lock(self.cx.ledger).begin_submissions(&self.account.name, &refs))?;
        self.marked.extend(keys);
        Ok(())
    }

    /// The UID keys not yet marked among those after `key` in this session's order that
    /// the SMTP session may take before a commit after the next one: the window it takes
    /// ahead of its replies (one when it takes none) and [`MARKS_AHEAD`] more.
    fn upcoming(&self, key: &str) -> Vec<String> {
        let ahead = match self.smtp.as_ref() {
            Some(s) if s.can_pipeline() => self.room(s).max(1),
            _ => 1,
        };
        let Some(&at) = self.order_at.get(key) else {
            return Vec::new();
        };
        self.order[at + 1..]
            .iter()
            .take(ahead + MARKS_AHEAD)
            .filter(|k| {
                !self.marked.contains(*k)
                    && !self.marking.contains(*k)
                    && !self.unknown.contains(*k)
            })
            .cloned()
            .collect()
    }

    /// How many transactions may be in flight on `s`: within the window, and such that
    /// even if every one of them were refused as badly as can be, two more protocol errors
    /// would still fit under the server's limit (the margin [`Run::session`] keeps).
    fn room(&self, s: &SmtpClient) -> usize {
        let max = self.cx.config.limits.smtp_max_protocol_errors;
        let free = max.saturating_sub(2 + s.protocol_errors());
        ((free / ERRORS_PER_TRANSACTION) as usize).min(SMTP_WINDOW)
    }

    /// Submits one message: ahead of the replies when the session allows it (one
    /// recipient, a message of this POP3 session, room under the error budget and the
    /// window), otherwise on its own once everything in flight is answered.
    async fn dispatch(&mut self, txn: &mut Transaction, mut f: Flight) {
        if f.env.to.len() == 1 && f.item.n != 0 {
            loop {
                if let Some(why) = self.stop_smtp.clone() {
                    self.defer_named(f.key, why, f.named);
                    return;
                }
                let Some(s) = self.smtp.as_ref() else { break };
                // With room for one only, nothing would overlap: one at a time then, which
                // also keeps a refused sender from costing a refused data transfer.
                let room = self.room(s);
                if !s.can_pipeline_body(&f.body) || room < 2 {
                    break;
                }
                let held: u64 = self.flights.iter().map(|x| x.body.len()).sum();
                let fits = self.flights.is_empty() || held + f.body.len() <= SMTP_WINDOW_BYTES;
                if self.flights.len() < room && fits {
                    f.gen = self.smtp_gen;
                    let s = self.smtp.as_mut().expect("checked above");
                    match s.submit(&f.env, &f.prefix, &f.body).await {
                        Ok(()) => self.flights.push_back(f),
                        Err(e) => {
                            // The messages written before it are answered first.
                            self.settle_flights(txn).await;
                            if self.crashed.is_none() {
                                self.settled(txn, f, Err(e)).await;
                                self.tidy();
                            }
                        }
                    }
                    return;
                }
                self.settle_one(txn).await;
                if self.crashed.is_some() {
                    return;
                }
            }
        }
        // One at a time: whatever is in flight is answered first.
        self.settle_flights(txn).await;
        if self.crashed.is_some() {
            return;
        }
        if let Some(why) = self.stop_smtp.clone() {
            self.defer_named(f.key, why, f.named);
            return;
        }
        self.send_serial(txn, f).await;
    }

    /// Submits one message and waits for its outcome.
    async fn send_serial(&mut self, txn: &mut Transaction, mut f: Flight) {
        loop {
            match self.session().await {
                Ok(_) => break,
                Err(e) => {
                    // No session to submit in: not this message's doing.
                    self.smtp = None;
                    let why = format!("no SMTP session: {e}");
                    if self.replace_session(&why) {
                        continue;
                    }
                    self.defer_named(f.key, why, f.named);
                    return;
                }
            }
        }
        f.gen = self.smtp_gen;
        let s = self.smtp.as_mut().expect("connected above");
        let r = s.send(&f.env, &f.prefix, &f.body).await;
        self.settled(txn, f, r).await;
        self.tidy();
        self.maybe_commit(txn).await;
    }

    /// Reads the outcome of the oldest message in flight and acts on it; when its session
    /// turned out lost, the rest of that session's messages too, then the session goes.
    async fn settle_one(&mut self, txn: &mut Transaction) {
        let (Some(f), Some(s)) = (self.flights.pop_front(), self.smtp.as_mut()) else {
            return;
        };
        let r = s.outcome().await;
        self.settled(txn, f, r).await;
        if self.lost_gen == self.smtp_gen {
            while let (Some(f), Some(s)) = (self.flights.pop_front(), self.smtp.as_mut()) {
                if self.crashed.is_some() {
                    return;
                }
                let r = s.outcome().await;
                self.settled(txn, f, r).await;
            }
        }
        self.tidy();
        self.maybe_commit(txn).await;
    }

    /// Reads the outcome of every message in flight.
    async fn settle_flights(&mut self, txn: &mut Transaction) {
        while !self.flights.is_empty() && self.crashed.is_none() {
            self.settle_one(txn).await;
        }
    }

    /// Everything sent is answered and every acceptance committed: before the POP3
    /// session ends (`dele` false when it broke: nothing more is DELE'd in it).
    async fn settle_all(&mut self, txn: &mut Transaction, dele: bool) {
        self.hold_deles = !dele;
        loop {
            self.settle_flights(txn).await;
            let Some(f) = self.retry.pop_front() else {
                break;
            };
            if self.crashed.is_some() {
                break;
            }
            self.dispatch(txn, f).await;
        }
        if self.crashed.is_none() {
            self.commit(txn).await;
        }
        self.hold_deles = false;
    }

    /// Drops an SMTP session that cannot take another message, once nothing of it is in
    /// flight.
    fn tidy(&mut self) {
        let spent = self
            .smtp
            .as_ref()
            .is_some_and(|s| !s.is_usable() || self.lost_gen == self.smtp_gen);
        if spent && self.flights.is_empty() {
            self.smtp = None;
        }
    }

    /// The SMTP session `gen` is lost: counted once (see [`Run::replace_session`]);
    /// true when another may be opened for the messages it did not take.
    fn session_lost(&mut self, gen: u32, reason: &str) -> bool {
        if gen == self.smtp_gen && self.lost_gen != gen {
            self.lost_gen = gen;
            self.lost_may_retry = self.replace_session(reason);
        }
        self.lost_may_retry && self.stop_smtp.is_none()
    }

    /// Acts on a message's SMTP outcome: accepted (waits for its group commit), refused,
    /// unknown, or to be submitted again in a new session.
    async fn settled(
        &mut self,
        txn: &mut Transaction,
        f: Flight,
        attempt: Result<smtp::Accepted, SmtpError>,
    ) {
        let a = self.account;
        let Flight {
            item,
            key,
            body,
            env,
            named,
            gen,
            ..
        } = f;
        match attempt {
            Ok(accepted) => {
                if self.reached(Step::AfterAccept) {
                    return;
                }
                self.batch.push(Done {
                    item,
                    key,
                    size: body.len(),
                    sender: env.from.into(),
                    reply: accepted.reply.first_line(),
                    named,
                });
            }
            Err(e) if e.outcome_unknown() => {
                // The server may have it: never sent again in this pass; the mark stays
                // and names it as a possible duplicate when it is sent next time.
                self.unknown.insert(key.clone());
                self.defer_named(
                    key,
                    format!("{e}; the server may have accepted it: not sent again in this pass"),
                    named,
                );
                self.session_lost(gen, &e.to_string());
            }
            Err(e) if e.is_local() => {
                // The message could not be read back: the connection was dropped before
                // its end, so the server does not have it.
                self.lost_gen = gen;
                self.defer_named(key, e.to_string(), named);
            }
            Err(e) if e.session_lost() => {
                if self.session_lost(gen, &e.to_string()) {
                    if matches!(e, SmtpError::Dropped { .. }) {
                        // Most likely never processed, yet without a reply: announced.
                        self.emit(Event::PossibleDuplicate {
                            account: a.name.clone(),
                            uid: key.clone(),
                            message_id: message::parse_headers(body.head(), crate::body::HEAD_MAX)
                                .message_id,
                        });
                    }
                    self.retry.push_back(Flight {
                        item,
                        key,
                        body,
                        env,
                        prefix: f.prefix,
                        named,
                        gen: 0,
                    });
                    return;
                }
                self.defer_named(key, e.to_string(), named);
            }
            Err(e) if e.is_permanent() && e.is_message_refusal() => {
                let reply = e
                    .reply()
                    .map(|r| r.first_line())
                    .unwrap_or_else(|| e.to_string());
                let recorded =
                    blocking(|| lock(self.cx.ledger).record_failure(&a.name, &key, &reply));
                self.marked.remove(&key);
                let failures = match recorded {
                    Ok(n) => n,
                    Err(le) => {
                        // Without a count the message can never be quarantined safely: it
                        // stays on the server, refused.
                        tracing::error!(account = %a.name, "ledger: {le}");
                        self.summary.rejected += 1;
                        self.emit_left(Event::Rejected {
                            account: a.name.clone(),
                            uid: key,
                            reply: format!("{reply} (not counted: the ledger failed: {le})"),
                            failures: 0,
                            named,
                        });
                        return;
                    }
                };
                // The old connector never gave up on a message: no quarantine under sbs2008.
                if self.policy.quarantine_after.is_some_and(|n| failures >= n) {
                    self.quarantine(txn, item.n, &key, &body, named).await;
                } else {
                    self.summary.rejected += 1;
                    self.emit_left(Event::Rejected {
                        account: a.name.clone(),
                        uid: key,
                        reply,
                        failures,
                        named,
                    });
                }
            }
            Err(e) => self.defer_named(key, e.to_string(), named),
        }
    }

    /// A group commit point when the group is full: see [`Run::advance_commit`].
    async fn maybe_commit(&mut self, txn: &mut Transaction) {
        if self.batch.len() >= GROUP_MAX {
            self.advance_commit(txn).await;
        }
    }

    /// A group commit point: the commit under way is finished (its deliveries reported and
    /// DELE'd), and the next one starts with what waits, running while the pass goes on.
    async fn advance_commit(&mut self, txn: &mut Transaction) {
        self.finish_commit(txn).await;
        self.start_commit();
    }

    /// Every accepted delivery waiting is recorded, reported and DELE'd before this
    /// returns.
    async fn commit(&mut self, txn: &mut Transaction) {
        self.advance_commit(txn).await;
        self.finish_commit(txn).await;
    }

    /// Starts the group commit of every accepted delivery waiting, with the submission
    /// marks of the messages after them, on a blocking thread through the pass's own
    /// ledger connection (when none is under way: the caller finishes that one first).
    fn start_commit(&mut self) {
        if self.batch.is_empty() || self.committing.is_some() || self.crashed.is_some() {
            return;
        }
        let a = self.account;
        let batch = std::mem::take(&mut self.batch);
        let dele = !a.leave_on_server;
        let deles: Vec<Option<(u64, u32)>> = batch
            .iter()
            .map(|d| {
                (d.item.key.is_none() && dele).then(|| (d.item.size, self.listed_of(d.item.size)))
            })
            .collect();
        let next = batch
            .last()
            .map(|d| self.upcoming(&d.key))
            .unwrap_or_default();
        let writer = match self.writer.take() {
            Some(w) => Ok(w),
            None => lock(self.cx.ledger).reopen(),
        };
        let mut writer = match writer {
            Ok(w) => w,
            Err(e) => return self.not_recorded(batch, &e),
        };
        let account = a.name.clone();
        let records: Vec<Record> = batch
            .iter()
            .zip(&deles)
            .map(|(d, dele)| Record {
                key: d.key.clone(),
                size: d.size,
                reply: d.reply.clone(),
                dele: *dele,
            })
            .collect();
        let marks = next.clone();
        let job = tokio::task::spawn_blocking(move || {
            let deliveries: Vec<crate::ledger::Delivery<'_>> = records
                .iter()
                .map(|r| crate::ledger::Delivery {
                    key: &r.key,
                    size: r.size,
                    reply: &r.reply,
                    dele: r.dele,
                })
                .collect();
            let marks: Vec<&str> = marks.iter().map(String::as_str).collect();
            let committed = writer.record_deliveries(&account, &deliveries, &marks);
            (writer, committed)
        });
        self.marking.extend(next.iter().cloned());
        self.committing = Some(Committing {
            batch,
            deles,
            next,
            job,
        });
    }

    /// Waits for the group commit under way, then reports each of its deliveries and
    /// DELEs it; when the commit failed, they all stay on the server (their marks name
    /// them as possible duplicates next time).
    async fn finish_commit(&mut self, txn: &mut Transaction) {
        let Some(c) = self.committing.take() else {
            return;
        };
        let committed = self.join_commit(c.job).await;
        self.marking.clear();
        if self.crashed.is_some() {
            return;
        }
        if let Err(e) = committed {
            return self.not_recorded(c.batch, &e);
        }
        self.marked.extend(c.next);
        for (d, unconfirmed) in c.batch.into_iter().zip(c.deles) {
            if !self.recorded(
                txn,
                &d.item,
                d.key,
                d.size,
                &d.sender,
                d.reply,
                unconfirmed.is_some(),
            ) {
                return;
            }
        }
    }

    /// After a simulated crash: the commit under way finishes, and nothing of it is
    /// reported or DELE'd.
    async fn abandon_commit(&mut self) {
        if let Some(c) = self.committing.take() {
            let _ = self.join_commit(c.job).await;
        }
    }

    /// The outcome of a commit's blocking task; the pass's connection comes back with it.
    async fn join_commit(
        &mut self,
        job: tokio::task::JoinHandle<(Ledger, Result<(), LedgerError>)>,
    ) -> Result<(), LedgerError> {
        match job.await {
            Ok((writer, committed)) => {
                self.writer = Some(writer);
                committed
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels it: its outcome is unknown.
            Err(e) => Err(LedgerError::Io {
                path: self.cx.config.state_dir.clone(),
                source: std::io::Error::other(format!("group commit not finished: {e}")),
            }),
        }
    }

    /// Delivered but not recorded: the messages stay on the server rather than risk
    /// losing track; their submission marks name them as possible duplicates next time.
    fn not_recorded(&mut self, batch: Vec<Done>, e: &LedgerError) {
        tracing::error!(account = %self.account.name, "ledger: {e}");
        for d in batch {
            self.defer_named(
                d.key,
                format!("delivered but the ledger failed: {e}"),
                d.named,
            );
        }
    }

    /// After the SMTP session was lost: true when another may be opened this pass (bounded
    /// by `smtp_reconnects`, none under sbs2008); otherwise every later message waits for
    /// the next pass.
    fn replace_session(&mut self, reason: &str) -> bool {
        let max = self.policy.smtp_reconnects;
        if self.reconnects < max {
            self.reconnects += 1;
            self.emit(Event::Reconnected {
                account: self.account.name.clone(),
                reason: reason.to_string(),
            });
            return true;
        }
        self.stop_smtp = Some(reason.to_string());
        false
    }

    /// Writes a downloaded message into the pickup folder and acts on the outcome (the
    /// module header says how failures are handled).
    #[allow(clippy::too_many_arguments)]
    async fn deliver_pickup(
        &mut self,
        txn: &mut Transaction,
        item: &Item,
        key: String,
        env: &Envelope,
        prefix: &[u8],
        body: Body,
        named: Named,
    ) {
        let a = self.account;
        let Some(pickup) = self.pickup.clone() else {
            return;
        };
        let to: Vec<String> = env.to.iter().map(ToString::to_string).collect();
        let outcome = pickup
            .deliver(&a.name, &key, &env.from, &to, prefix, &body)
            .await;
        let reply = match outcome {
            Ok(PickupOutcome::Delivered(path)) => format!("written to {}", path.display()),
            Ok(PickupOutcome::AlreadyThere(path)) => format!(
                "already written to {} by an interrupted earlier attempt",
                path.display()
            ),
            Ok(PickupOutcome::Failed { path, error }) => {
                self.summary.rejected += 1;
                self.emit_left(Event::Rejected {
                    account: a.name.clone(),
                    uid: key,
                    reply: format!(
                        "pickup failed: {error}; kept on the server, a copy is in the \
                         failed-mail folder: {}",
                        path.display()
                    ),
                    failures: 0,
                    named,
                });
                return;
            }
            Err(e) => {
                self.summary.rejected += 1;
                self.emit_left(Event::Rejected {
                    account: a.name.clone(),
                    uid: key,
                    reply: format!("pickup failed: {e}; kept on the server"),
                    failures: 0,
                    named,
                });
                return;
            }
        };
        // Published but not recorded (ledger failure): the journal marker stays, so the next
        // pass finds the message published and records it without writing it again.
        if self.delivered(txn, item, key.clone(), body.len(), &env.from, reply, named) {
            pickup.settle(&a.name, &key).await;
        }
    }

    /// A delivery the server (or the pickup folder) accepted: record it durably (with the
    /// next message's submission mark, and for a digest key its coming DELE), report it,
    /// then queue its DELE. This order is the no-loss, no-duplicate point. Returns false
    /// when the ledger failed: the message then stays on the server (`named` names it).
    #[allow(clippy::too_many_arguments)]
    fn delivered(
        &mut self,
        txn: &mut Transaction,
        item: &Item,
        key: String,
        size: u64,
        sender: &str,
        reply: String,
        named: Named,
    ) -> bool {
        let a = self.account;
        let dele = !a.leave_on_server;
        let along = Along {
            next: item.next.as_deref().filter(|_| self.pickup.is_none()),
            dele: (item.key.is_none() && dele).then(|| (item.size, self.listed_of(item.size))),
        };
        if let Err(e) = blocking(|| {
            lock(self.cx.ledger).record_delivered_then(&a.name, &key, size, &reply, along)
        }) {
            // Delivered but not recorded: the message stays on the server rather than risk
            // losing track; its submission mark names it as a possible duplicate next time.
            tracing::error!(account = %a.name, "ledger: {e}");
            self.defer_named(key, format!("delivered but the ledger failed: {e}"), named);
            return false;
        }
        if let Some(next) = along.next {
            self.marked.insert(next.to_string());
        }
        self.recorded(txn, item, key, size, sender, reply, along.dele.is_some());
        true
    }

    /// A delivery just recorded: counted, reported, then its DELE queued (`unconfirmed`:
    /// recorded as an unconfirmed DELE of a header-digest key). False when the crash fail
    /// point stopped the pass here.
    #[allow(clippy::too_many_arguments)]
    fn recorded(
        &mut self,
        txn: &mut Transaction,
        item: &Item,
        key: String,
        size: u64,
        sender: &str,
        reply: String,
        unconfirmed: bool,
    ) -> bool {
        let a = self.account;
        self.marked.remove(&key);
        self.summary.delivered += 1;
        self.summary.delivered_octets = self.summary.delivered_octets.saturating_add(size);
        self.emit(Event::Delivered {
            account: a.name.clone(),
            uid: key.clone(),
            size,
            sender: sender.to_string(),
            reply,
        });
        // Fault injection: die between the recorded delivery and its DELE.
        if self.reached(Step::AfterRecord) {
            return false;
        }
        let already = self.sabotaged(Sabotage::DeleBeforeLedger);
        if !a.leave_on_server && !already && !self.hold_deles {
            if unconfirmed {
                self.digest_deles.insert(key.clone());
            }
            self.dele(txn, item.n, key);
        } else if unconfirmed && !already {
            // Recorded with the delivery, but the session broke before its DELE went out:
            // an unconfirmed DELE that was never sent would make the message, listed
            // again, look like another identical copy.
            if let Err(e) = lock(self.cx.ledger).clear_unconfirmed(&a.name, &key) {
                tracing::warn!(account = %a.name, "ledger: {e}");
            }
        }
        true
    }

    async fn quarantine(
        &mut self,
        txn: &mut Transaction,
        msg: u32,
        key: &str,
        body: &Body,
        named: Named,
    ) {
        let cfg = self.cx.config;
        let a = self.account;
        let path: PathBuf = cfg
            .state_dir
            .join("quarantine")
            .join(safe_name(&a.name))
            .join(format!("{}.eml", safe_name(key)));
        let kept = match body.persist(&path).await {
            Err(e) => Err(format!("quarantine failed: {e}")),
            Ok(()) => lock(self.cx.ledger)
                .record_quarantined(&a.name, key, &path)
                .map_err(|e| format!("quarantine not recorded: the ledger failed: {e}")),
        };
        if let Err(reply) = kept {
            // Without a durable, recorded copy the message must stay where it is.
            self.summary.rejected += 1;
            self.emit_left(Event::Rejected {
                account: a.name.clone(),
                uid: key.into(),
                reply: format!("{reply}; kept on the server"),
                failures: 0,
                named,
            });
            return;
        }
        let delete = cfg.limits.quarantine_delete && !a.leave_on_server;
        if delete {
            self.dele(txn, msg, key.to_string());
        }
        self.summary.quarantined += 1;
        self.emit_left(Event::Quarantined {
            account: a.name.clone(),
            uid: key.into(),
            path: path.display().to_string(),
            deleted: delete,
            named,
        });
    }
}

/// How a POP3 session ends after `e`: replies that stopped making sense end it with a QUIT
/// sent blind; anything else (a broken or stalled connection) drops it.
fn broken_by(e: Pop3Error) -> Broken {
    match e {
        Pop3Error::Protocol { .. } | Pop3Error::Unasked { .. } | Pop3Error::TooLarge { .. } => {
            Broken::OutOfStep {
                reason: e.to_string(),
                suspect: false,
            }
        }
        other => Broken::Lost(other),
    }
}

/// Reads a quarantined copy back as a body (spooled past `threshold`).
async fn read_copy(
    path: &std::path::Path,
    spool: &std::path::Path,
    threshold: u64,
) -> std::io::Result<Body> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut builder = crate::body::BodyBuilder::new(spool, threshold);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        builder.push(&buf[..n]).await?;
    }
    builder.finish().await
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
    run_accounts_with(config, dialer, events, ledger, accounts, stop, Faults::NONE).await
}

/// [`run_accounts_until`] with injected `faults` (harnesses: a simulated crash at a step of
/// a message, a sabotage). A pass that panics is reported as that account's
/// [`AccountFailure::Internal`] with an `account.failed` event, never dropped.
pub async fn run_accounts_with(
    config: Arc<Config>,
    dialer: Arc<dyn Dialer>,
    events: Arc<EventSink>,
    ledger: Arc<Mutex<Ledger>>,
    accounts: Vec<Account>,
    stop: StopFlag,
    faults: Faults,
) -> Vec<Summary> {
    let sem = Arc::new(tokio::sync::Semaphore::new(config.parallel_accounts.max(1)));
    let mut tasks = Vec::new();
    for account in accounts {
        let name = account.name.clone();
        let (config, dialer, events, ledger, sem, stop) = (
            config.clone(),
            dialer.clone(),
            events.clone(),
            ledger.clone(),
            sem.clone(),
            stop.clone(),
        );
        let id = PassId::new();
        let pass = id.clone();
        let task = tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            let cx = Context {
                config: &config,
                dialer: dialer.as_ref(),
                events: &events,
                ledger: &ledger,
                stop: &stop,
                faults,
                listing_budget: Budget::DEFAULT,
            };
            run_account_as(&cx, &account, &pass).await
        });
        tasks.push((name, id, task));
    }
    let mut out = Vec::new();
    let started_at = unix_now();
    for (account, id, t) in tasks {
        match t.await {
            Ok(s) => out.push(s),
            Err(e) => {
                let why = if e.is_panic() {
                    let p = e.into_panic();
                    let text = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    format!("the pass panicked: {text}")
                } else {
                    "the pass was cancelled".to_string()
                };
                let failure = AccountFailure::Internal(why);
                events.pass(&id).emit(Event::AccountFailed {
                    account: account.clone(),
                    error: failure.to_string(),
                });
                let summary = Summary {
                    account,
                    failure: Some(failure),
                    pass: Some(id),
                    ..Summary::default()
                };
                record_history(&ledger, &summary, started_at);
                out.push(summary);
            }
        }
    }
    out
}

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn outcomes_tell_failure_stuck_backlog_and_ok_apart() {
        let s = |f: fn(&mut Summary)| {
            let mut s = Summary::default();
            f(&mut s);
            outcome(&s)
        };
        assert_eq!(s(|_| {}), (Outcome::Ok, None));
        // A backlog is postponed by design (capped or sliced).
        assert_eq!(
            s(|s| {
                s.capped = 3;
                s.postponed = 3
            }),
            (Outcome::Backlog, None)
        );
        assert_eq!(
            s(|s| {
                s.sliced = 3;
                s.postponed = 3
            }),
            (Outcome::Backlog, None)
        );
        // Postponed by an interrupted pass is not a backlog.
        assert_eq!(s(|s| s.postponed = 3), (Outcome::Stuck, None));
        for stuck in [
            |s: &mut Summary| s.rejected = 1,
            |s: &mut Summary| s.skipped = 1,
            |s: &mut Summary| s.mismatched = 1,
            |s: &mut Summary| s.deferred = 1,
            |s: &mut Summary| s.quarantined = 1,
        ] {
            assert_eq!(s(stuck), (Outcome::Stuck, None));
        }
        assert_eq!(
            s(|s| {
                s.capped = 1;
                s.postponed = 1;
                s.rejected = 1
            }),
            (Outcome::Stuck, None),
            "stuck outranks backlog"
        );
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    fn item(n: u32, size: u64) -> Item {
        Item {
            n,
            size,
            key: Some(format!("u{n}")),
            alone: false,
            next: None,
        }
    }

    #[test]
    fn sbs2008_stall_keeps_what_precedes_the_first_oversize_message() {
        // A suspect (appended last) with a low number still precedes the oversize message.
        let work = vec![
            item(2, 10),
            item(3, 500),
            item(4, 10),
            item(5, 600),
            item(1, 10),
        ];
        let (kept, behind) = stall_at_first_oversize(work, 100);
        let ns = |v: &[Item]| v.iter().map(|i| i.n).collect::<Vec<_>>();
        assert_eq!(ns(&kept), [2, 3, 1]);
        assert_eq!(ns(&behind), [4, 5]);
    }

    #[test]
    fn sbs2008_stall_changes_nothing_without_an_oversize_message() {
        let (kept, behind) = stall_at_first_oversize(vec![item(1, 10), item(2, 100)], 100);
        assert_eq!(kept.len(), 2);
        assert!(behind.is_empty());
    }
}
