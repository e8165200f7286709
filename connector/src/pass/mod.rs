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
//! (`Flight`s, answered in order), and accepted deliveries wait for a group commit
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

mod accounts;
mod commit;
mod item;
mod session;
mod submit;

use accounts::{lock_account, record_history};
pub use accounts::{outcome, Runner};
use commit::{Committing, Done};

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
use crate::store::Store;

/// The most RETRs kept in flight when the server offers PIPELINING...
const RETR_WINDOW: usize = 1024;
/// ...and the most octets (by LIST size) they may add up to (one message at least).
const RETR_WINDOW_BYTES: u64 = 8 * 1024 * 1024;
/// The most messages written to the SMTP server ahead of their replies...
const SMTP_WINDOW: usize = 8;
/// ...and the most octets they may hold (one message at least).
const SMTP_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
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
    /// The account's cluster lease was taken over by another instance (this one was
    /// too slow to renew it): the pass stopped, nothing it had not recorded was deleted,
    /// and the instance holding the lease goes on.
    LeaseLost(String),
}

impl AccountFailure {
    /// A ledger failure as the pass reports it: a cluster database that cannot be reached
    /// fails it like a server that cannot be, a lease taken over stops it, and any other
    /// ledger failure is the configuration's (the state directory, the database's schema).
    pub fn of_ledger(e: crate::ledger::LedgerError) -> Self {
        if e.is_unreachable() {
            Self::Connect(e.to_string())
        } else if e.is_lease_lost() {
            Self::LeaseLost(e.to_string())
        } else {
            Self::Config(e.to_string())
        }
    }

    /// [`AccountFailure::of_ledger`] of a cluster database error.
    pub fn of_cluster(e: crate::cluster::ClusterError) -> Self {
        Self::of_ledger(e.into())
    }
}

impl std::fmt::Display for AccountFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "configuration: {e}"),
            Self::Connect(e) => write!(f, "{e}"),
            Self::Auth(e) => write!(f, "{e}"),
            Self::LeaseLost(e) => write!(f, "{e}"),
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
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
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

struct Run<'a> {
    cx: &'a Context<'a>,
    /// This pass's events (each carries the pass id).
    events: PassEvents<'a>,
    account: &'a Account,
    /// The ledger this pass records in: the local one, or the cluster's under the
    /// account's lease.
    store: Store<'a>,
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

/// Why a pass stopped starting work when the account's cluster lease lapsed.
const LEASE_LAPSED: &str =
    "the account's cluster lease lapsed (not renewed in time, or taken over): no new work started";

impl Run<'_> {
    /// True once the pass records in the cluster ledger and the account's lease no
    /// longer allows starting work (a RETR, a submission, a DELE, a QUIT); never for the
    /// local ledger.
    fn lease_lapsed(&self) -> bool {
        matches!(&self.store, Store::Cluster(c) if !c.may_act())
    }
}

/// Runs one pass over `account`, under a new pass id.
pub async fn run_account(cx: &Context<'_>, account: &Account) -> Summary {
    run_account_as(cx, account, &PassId::new()).await
}

/// Runs one pass over `account` whose events carry `id`.
pub async fn run_account_as(cx: &Context<'_>, account: &Account, id: &PassId) -> Summary {
    run_account_in(cx, account, id, Store::Local(cx.ledger)).await
}

/// Runs one pass over `account` whose events carry `id`, recording in `store`: with a
/// cluster store, every ledger read and write is fenced by the account's lease.
pub async fn run_account_in<'a>(
    cx: &'a Context<'a>,
    account: &'a Account,
    id: &PassId,
    store: Store<'a>,
) -> Summary {
    let events = cx.events.pass(id);
    let mut run = Run {
        cx,
        events,
        account,
        store,
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
            record_history(&run.store, &run.summary, started_at).await;
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
    run.end_marks().await;
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
    record_history(&run.store, &run.summary, started_at).await;
    run.summary
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
