//! The delivery ledger: a durable record, per account and message key (POP3 UIDL or a
//! `sha256:...` digest), of what happened to each message: delivered (with time, size and
//! the SMTP reply), failed (count and last reply), quarantined (local copy path), and
//! whether it was deleted from the server, since when a complete listing no longer shows it
//! (for pruning), what the administrator asked for a quarantined message; and the last
//! passes of each account (`popbridge status`). It is what makes delivery idempotent
//! (ARCHITECTURE.md, invariants 1-3): the pass engine DELEs a message only after
//! [`Ledger::record_delivered`] returned, and never submits a message again that the
//! ledger knows as delivered.
//!
//! Storage: SQLite at `<state_dir>/ledger.sqlite3`, WAL journal, `synchronous = FULL`, a
//! 5 s busy timeout, schema versioned by `PRAGMA user_version` with ordered migrations.
//!
//! Must never: return from a `record_*` call before the change is committed durably,
//! downgrade a Delivered row (to Failed, Quarantined or New), prune a Delivered row whose
//! message is still on the server, open a database written by a newer schema (no silent
//! downgrade), format a caller's string into SQL, or panic on a corrupt row.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::keys;

/// File name of the ledger database inside the state directory.
pub const FILE_NAME: &str = "ledger.sqlite3";

/// How long a connection waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema migrations, in order: entry `i` takes `user_version` from `i` to `i + 1`.
/// Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // v1: one row per (account, key) that something was recorded for. No row means New.
    "CREATE TABLE messages (
        account         TEXT    NOT NULL,
        key             TEXT    NOT NULL,
        state           TEXT    NOT NULL
                        CHECK (state IN ('delivered', 'failed', 'quarantined')),
        delivered_at    INTEGER,
        size            INTEGER CHECK (size IS NULL OR size >= 0),
        delivery_reply  TEXT,
        failures        INTEGER NOT NULL DEFAULT 0
                        CHECK (failures BETWEEN 0 AND 4294967295),
        last_reply      TEXT,
        quarantine_path TEXT,
        deleted_at      INTEGER,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        PRIMARY KEY (account, key),
        CHECK (state <> 'delivered'   OR delivered_at IS NOT NULL),
        CHECK (state <> 'failed'      OR last_reply IS NOT NULL),
        CHECK (state <> 'quarantined' OR quarantine_path IS NOT NULL)
    ) STRICT;",
    // v2: why a message failed (refused by the SMTP server, or its RETR did not match its
    // LIST size); for header-digest keys, DELEs whose QUIT was never confirmed (the LIST
    // size of the message and how many messages of that size the listing had, to tell
    // next time whether the server applied them); and the messages whose final data may
    // have reached the SMTP server without their outcome being recorded; and the UIDs a
    // server ever listed for more than one message (keyed by header digest from then on).
    "ALTER TABLE messages ADD COLUMN failure_kind TEXT NOT NULL DEFAULT 'refused'
        CHECK (failure_kind IN ('refused', 'mismatch'));
     ALTER TABLE messages ADD COLUMN unconfirmed_size INTEGER;
     ALTER TABLE messages ADD COLUMN unconfirmed_listed INTEGER;
     CREATE TABLE submissions (
        account TEXT    NOT NULL,
        key     TEXT    NOT NULL,
        since   INTEGER NOT NULL,
        PRIMARY KEY (account, key)
     ) STRICT;
     CREATE TABLE shared_uids (
        account TEXT    NOT NULL,
        uid     TEXT    NOT NULL,
        PRIMARY KEY (account, uid)
     ) STRICT;",
    // v3: when a complete listing last failed to show a UID-keyed message (pruning counts
    // from then); what the administrator asked for a quarantined message (redeliver it, or
    // discard it) and when; and the history of passes per account.
    "ALTER TABLE messages ADD COLUMN gone_since INTEGER;
     ALTER TABLE messages ADD COLUMN quarantine_action TEXT
        CHECK (quarantine_action IS NULL OR quarantine_action IN ('release', 'discard'));
     ALTER TABLE messages ADD COLUMN action_at INTEGER;
     CREATE TABLE passes (
        id          INTEGER PRIMARY KEY,
        account     TEXT    NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        outcome     TEXT    NOT NULL CHECK (outcome IN ('ok', 'backlog', 'stuck', 'failed')),
        reason      TEXT,
        listed      INTEGER NOT NULL,
        delivered   INTEGER NOT NULL,
        deleted     INTEGER NOT NULL,
        left_over   INTEGER NOT NULL,
        rejected    INTEGER NOT NULL,
        deferred    INTEGER NOT NULL,
        skipped     INTEGER NOT NULL,
        quarantined INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX passes_by_account ON passes (account, id);",
];

/// Passes kept in the history per account (older ones are dropped as new ones are recorded).
pub const HISTORY_KEEP: i64 = 100;

/// How a pass over an account ended, as the history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Everything due was delivered.
    Ok,
    /// Messages wait for a later pass by themselves (deferred, postponed): a backlog.
    Backlog,
    /// Messages stay that no later pass delivers unchanged (refused, oversize, size
    /// mismatch).
    Stuck,
    /// The account could not be processed, or the pass was interrupted (see the reason).
    Failed,
}

impl Outcome {
    /// The stored (and printed) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Backlog => "backlog",
            Self::Stuck => "stuck",
            Self::Failed => "failed",
        }
    }

    /// The outcome a stored name stands for.
    pub(crate) fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "ok" => Self::Ok,
            "backlog" => Self::Backlog,
            "stuck" => Self::Stuck,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// Message counts of one pass, as the history records them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PassCounts {
    /// Messages on the server at login.
    pub listed: u32,
    /// Delivered.
    pub delivered: u32,
    /// Deleted from the server.
    pub deleted: u32,
    /// Left on the server still needing delivery.
    pub left: u32,
    /// Permanently refused.
    pub rejected: u32,
    /// Temporarily failed.
    pub deferred: u32,
    /// Over the size limit, not downloaded.
    pub skipped: u32,
    /// Quarantined.
    pub quarantined: u32,
}

impl PassCounts {
    /// The counts in the order the history stores them: listed, delivered, deleted, left,
    /// rejected, deferred, skipped, quarantined.
    pub fn in_order(&self) -> [u32; 8] {
        [
            self.listed,
            self.delivered,
            self.deleted,
            self.left,
            self.rejected,
            self.deferred,
            self.skipped,
            self.quarantined,
        ]
    }
}

/// One pass of the history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PassRow {
    /// Account name.
    pub account: String,
    /// When it started, unix seconds.
    pub started_at: i64,
    /// When it finished, unix seconds.
    pub finished_at: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed (or what stopped it), when it did.
    pub reason: Option<String>,
    /// What it did.
    pub counts: PassCounts,
}

/// What the administrator asked for a quarantined message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineAction {
    /// Deliver the local copy at the next pass (once; the delivery record ends it).
    Release,
    /// The local copy was removed; delete the server's copy at the next pass where the
    /// account does not keep mail on the server.
    Discard,
}

impl QuarantineAction {
    /// The stored name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Discard => "discard",
        }
    }

    /// The action a stored name stands for.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "release" => Some(Self::Release),
            "discard" => Some(Self::Discard),
            _ => None,
        }
    }
}

/// A quarantined message as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    /// Account name.
    pub account: String,
    /// Ledger key.
    pub key: String,
    /// The local copy.
    pub path: PathBuf,
    /// The last refusal that led to it (when recorded).
    pub reason: Option<String>,
    /// When it was quarantined or last changed, unix seconds.
    pub since: i64,
    /// What was asked for it, if anything.
    pub action: Option<QuarantineAction>,
}

/// A message the ledger knows as failed (refused, or not matching its LIST size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckRow {
    /// Ledger key.
    pub key: String,
    /// Why.
    pub kind: FailureKind,
    /// The last reply or reason.
    pub reason: String,
    /// Failures so far.
    pub failures: u32,
    /// When the first failure was recorded, unix seconds.
    pub since: i64,
}

/// A table of the ledger, as `migrate-ledger` copies it whole into the cluster ledger
/// (whose tables have the same columns under the names [`Table::cluster_name`] gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row per message something was recorded for.
    Messages,
    /// Submission marks (possible duplicates).
    Submissions,
    /// UIDs listed for more than one message.
    SharedUids,
    /// The history of passes, oldest first.
    Passes,
}

impl Table {
    /// Every table, in the order they are copied.
    pub const ALL: [Table; 4] = [
        Table::Messages,
        Table::Submissions,
        Table::SharedUids,
        Table::Passes,
    ];

    /// The columns copied, in order, each with whether it holds text (else an integer);
    /// the first is always the account.
    pub fn columns(self) -> &'static [(&'static str, bool)] {
        match self {
            Table::Messages => &[
                ("account", true),
                ("key", true),
                ("state", true),
                ("delivered_at", false),
                ("size", false),
                ("delivery_reply", true),
                ("failures", false),
                ("last_reply", true),
                ("failure_kind", true),
                ("quarantine_path", true),
                ("deleted_at", false),
                ("unconfirmed_size", false),
                ("unconfirmed_listed", false),
                ("gone_since", false),
                ("quarantine_action", true),
                ("action_at", false),
                ("created_at", false),
                ("updated_at", false),
            ],
            Table::Submissions => &[("account", true), ("key", true), ("since", false)],
            Table::SharedUids => &[("account", true), ("uid", true)],
            Table::Passes => &[
                ("account", true),
                ("started_at", false),
                ("finished_at", false),
                ("outcome", true),
                ("reason", true),
                ("listed", false),
                ("delivered", false),
                ("deleted", false),
                ("left_over", false),
                ("rejected", false),
                ("deferred", false),
                ("skipped", false),
                ("quarantined", false),
            ],
        }
    }

    /// The same table in the cluster database.
    pub fn cluster_name(self) -> &'static str {
        match self {
            Table::Messages => "ledger_message",
            Table::Submissions => "ledger_submission",
            Table::SharedUids => "ledger_shared_uid",
            Table::Passes => "ledger_pass",
        }
    }

    /// Selects [`Table::columns`] of every row, in a stable order (passes by id).
    fn select(self) -> String {
        let columns: Vec<&str> = self.columns().iter().map(|(name, _)| *name).collect();
        let (table, order) = match self {
            Table::Messages => ("messages", "account, key"),
            Table::Submissions => ("submissions", "account, key"),
            Table::SharedUids => ("shared_uids", "account, uid"),
            Table::Passes => ("passes", "id"),
        };
        format!(
            "SELECT {} FROM {table} ORDER BY {order}",
            columns.join(", ")
        )
    }
}

/// A stored value, as [`Ledger::rows`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// No value.
    Null,
    /// An integer column's value.
    Integer(i64),
    /// A text column's value.
    Text(String),
}

/// The newest schema version this code knows (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What the ledger knows about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Nothing recorded: the message has never been delivered, failed or quarantined.
    New,
    /// Accepted by the SMTP server and recorded; never submit again, only DELE (or keep).
    Delivered {
        /// When the delivery was recorded, unix seconds.
        at: i64,
        /// True once a successful QUIT applied its DELE (the server no longer holds it).
        deleted: bool,
    },
    /// Refused at least once and not delivered since.
    Failed {
        /// Number of recorded failures.
        failures: u32,
        /// The SMTP reply (or error text) of the last failure.
        last_reply: String,
        /// What the failures were.
        kind: FailureKind,
    },
    /// Given up on: a durable local copy exists at `path`.
    Quarantined {
        /// Where the quarantined copy was written.
        path: PathBuf,
    },
}

/// Why a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The SMTP server (or the pickup folder) refused it permanently.
    Refused,
    /// What RETR sent did not match the message's LIST size: never delivered, never
    /// deleted, retried last and alone on later passes.
    Mismatch,
}

impl FailureKind {
    /// The stored (and printed) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Mismatch => "mismatch",
        }
    }

    /// The kind a stored name stands for.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "refused" => Some(Self::Refused),
            "mismatch" => Some(Self::Mismatch),
            _ => None,
        }
    }
}

/// What else a delivery's commit records (see [`Ledger::record_delivered_then`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Along<'a> {
    /// The message the pass submits next: marked as submitting (see
    /// [`Ledger::begin_submission`]).
    pub next: Option<&'a str>,
    /// For a header-digest key whose DELE follows: its LIST size and how many messages of
    /// that size the listing holds, recorded as an unconfirmed DELE until a QUIT confirms it.
    pub dele: Option<(u64, u32)>,
}

impl<'a> Along<'a> {
    /// One delivery with what it brings along, as a group commit of one: the delivery,
    /// and the keys to mark as submitting.
    pub fn as_batch(self, key: &'a str, size: u64, reply: &'a str) -> (Delivery<'a>, Vec<&'a str>) {
        let one = Delivery {
            key,
            size,
            reply,
            dele: self.dele,
        };
        (one, self.next.into_iter().collect())
    }
}

/// One accepted delivery of a group commit (see [`Ledger::record_deliveries`]).
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The message's key.
    pub key: &'a str,
    /// Its size as delivered.
    pub size: u64,
    /// The server's reply to the end of its data.
    pub reply: &'a str,
    /// As [`Along::dele`]: for a header-digest key whose DELE follows, its LIST size and
    /// how many messages of that size the listing holds.
    pub dele: Option<(u64, u32)>,
}

/// A DELE of a header-digest message whose QUIT was never confirmed: the message's LIST
/// size and how many messages of that size the session's listing held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    /// The ledger key.
    pub key: String,
    /// Its LIST size.
    pub size: u64,
    /// Messages of that LIST size in the session's listing.
    pub listed: u32,
}

/// Errors of the ledger; every variant that involves the database names its file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite failed on the ledger database.
    #[error("ledger {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The shared ledger in the cluster database failed, or the account's lease is no
    /// longer this instance's ([`crate::cluster::ClusterError::is_fenced`]).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A file system operation on the state directory failed.
    #[error("ledger {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer Popbridge; refusing to use (or downgrade) it.
    #[error(
        "ledger schema version {found} is newer than this build supports ({supported}); \
         upgrade popbridge instead of downgrading the ledger"
    )]
    TooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The database's schema version is impossible (negative).
    #[error("ledger {}: invalid schema version {found}", path.display())]
    BadVersion {
        /// The database file.
        path: PathBuf,
        /// The `PRAGMA user_version` found.
        found: i64,
    },
    /// A setting the ledger's durability relies on did not take effect.
    #[error("ledger {}: PRAGMA {pragma} is {found:?}, expected {expected:?}", path.display())]
    Pragma {
        /// The database file.
        path: PathBuf,
        /// The pragma's name.
        pragma: &'static str,
        /// The value the ledger requires.
        expected: &'static str,
        /// The value SQLite reported.
        found: String,
    },
    /// A row could not be decoded; the database was damaged or edited by hand.
    #[error("ledger {}: corrupt row for account {account:?} key {key:?}: {detail}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The row's account.
        account: String,
        /// The row's key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A quarantine path that is not valid UTF-8 (the ledger stores paths as text).
    #[error("quarantine path {} is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The offending path.
        path: PathBuf,
    },
}

impl LedgerError {
    /// True when the ledger is the cluster's and its database could not be reached or
    /// stopped answering: a connection failure, not a configuration one.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, LedgerError::Cluster(e) if e.is_connection_lost())
    }

    /// True when the ledger is the cluster's and the account's lease is no longer this
    /// instance's (taken over by another).
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, LedgerError::Cluster(e) if e.is_fenced())
    }
}

/// Attach the database path to a rusqlite result.
trait At<T> {
    fn at(self, path: &Path) -> Result<T, LedgerError>;
}

impl<T> At<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, LedgerError> {
        self.map_err(|source| LedgerError::Sqlite {
            path: path.to_owned(),
            source,
        })
    }
}

/// The columns a [`Status`] is decoded from, read untyped so that a bad value becomes a
/// [`LedgerError::Corrupt`] rather than a panic or a bare type error.
struct RawStatus {
    state: Value,
    delivered_at: Value,
    failures: Value,
    last_reply: Value,
    quarantine_path: Value,
    failure_kind: Value,
    deleted_at: Value,
}

impl RawStatus {
    /// Read from a row whose columns start at `first` in the order of `status_columns!()`.
    fn read(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<RawStatus> {
        Ok(RawStatus {
            state: row.get(first)?,
            delivered_at: row.get(first + 1)?,
            failures: row.get(first + 2)?,
            last_reply: row.get(first + 3)?,
            quarantine_path: row.get(first + 4)?,
            failure_kind: row.get(first + 5)?,
            deleted_at: row.get(first + 6)?,
        })
    }
}

/// The column list [`RawStatus::read`] expects (a macro so queries stay `&'static str`).
macro_rules! status_columns {
    () => {
        "state, delivered_at, failures, last_reply, quarantine_path, failure_kind, deleted_at"
    };
}

/// The three stored states (no row means [`Status::New`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Delivered,
    Failed,
    Quarantined,
}

/// The durable delivery ledger of one state directory (one SQLite connection).
#[derive(Debug)]
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

/// Opens one connection to the ledger database at `path` with the settings its
/// durability relies on (WAL, `synchronous = FULL`), after refusing a newer schema.
fn connect(path: &Path) -> Result<Connection, LedgerError> {
    // No SQLITE_OPEN_URI: a state directory named "file:..." must stay a plain path.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).at(path)?;
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;

    // Refuse a newer schema before changing anything in the file (not even the journal mode).
    let found = user_version(&conn).at(path)?;
    check_version(path, found)?;

    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .at(path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Pragma {
            path: path.to_owned(),
            pragma: "journal_mode",
            expected: "wal",
            found: mode,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL").at(path)?;
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .at(path)?;
    if sync != 2 {
        return Err(LedgerError::Pragma {
            path: path.to_owned(),
            pragma: "synchronous",
            expected: "2 (FULL)",
            found: sync.to_string(),
        });
    }
    // macOS only (a no-op elsewhere): plain fsync there does not flush the drive's cache.
    conn.pragma_update(None, "fullfsync", true).at(path)?;
    conn.pragma_update(None, "checkpoint_fullfsync", true)
        .at(path)?;
    Ok(conn)
}

impl Ledger {
    /// Open (creating if needed) `<state_dir>/ledger.sqlite3` and bring its schema up to date.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        crate::private::create_dir_all(state_dir).map_err(|source| LedgerError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(FILE_NAME);
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        // database file's mode.
        crate::private::open_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| LedgerError::Io {
                path: path.clone(),
                source,
            })?;
        let conn = connect(&path)?;

        let mut ledger = Ledger { conn, path };
        ledger.migrate()?;
        sync_dir(state_dir);
        Ok(ledger)
    }

    /// A second connection to this ledger's database, with the same durability settings:
    /// a pass writes its group commits through one on a blocking thread while the first
    /// stays with the accounts' other reads and writes.
    pub fn reopen(&self) -> Result<Ledger, LedgerError> {
        Ok(Ledger {
            conn: connect(&self.path)?,
            path: self.path.clone(),
        })
    }

    /// A write transaction that takes the database's write lock as it begins, and the
    /// database path for its errors.
    fn immediate(&mut self) -> Result<(rusqlite::Transaction<'_>, &Path), LedgerError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&self.path)?;
        Ok((tx, &self.path))
    }

    /// Runs `each` on every one of `items` in one write transaction (see
    /// [`Ledger::immediate`]); with no items, no transaction at all.
    fn each_in_one_transaction<T>(
        &mut self,
        items: &[T],
        mut each: impl FnMut(&rusqlite::Transaction<'_>, &Path, &T) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        if items.is_empty() {
            return Ok(());
        }
        let (tx, path) = self.immediate()?;
        for item in items {
            each(&tx, path, item)?;
        }
        tx.commit().at(path)
    }

    /// Apply the missing migrations in one transaction (re-checking the version under the lock).
    fn migrate(&mut self) -> Result<(), LedgerError> {
        let (tx, path) = self.immediate()?;
        let current = user_version(&tx).at(path)?;
        check_version(path, current)?;
        if current == SCHEMA_VERSION {
            return Ok(()); // dropping tx rolls back the empty transaction
        }
        // check_version guarantees 0 <= current < SCHEMA_VERSION.
        let start = usize::try_from(current).unwrap_or(0);
        for (i, batch) in MIGRATIONS.iter().enumerate().skip(start) {
            tracing::info!(db = %path.display(), to = i + 1, "migrating ledger schema");
            tx.execute_batch(batch).at(path)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .at(path)?;
        tx.commit().at(path)
    }

    /// What the ledger knows about one message (`New` when nothing was recorded).
    pub fn status(&self, account: &str, key: &str) -> Result<Status, LedgerError> {
        let sql = concat!(
            "SELECT ",
            status_columns!(),
            " FROM messages WHERE account = ?1 AND key = ?2"
        );
        let raw = self
            .conn
            .prepare_cached(sql)
            .at(&self.path)?
            .query_row(params![account, key], |row| RawStatus::read(row, 0))
            .optional()
            .at(&self.path)?;
        match raw {
            None => Ok(Status::New),
            Some(raw) => decode(&self.path, account, key, &raw),
        }
    }

    /// All recorded rows of one account, by key (keys absent from the map are `New`).
    pub fn statuses(&self, account: &str) -> Result<HashMap<String, Status>, LedgerError> {
        let sql = concat!(
            "SELECT key, ",
            status_columns!(),
            " FROM messages WHERE account = ?1"
        );
        let mut out = HashMap::new();
        self.each_row(
            sql,
            params![account],
            |row| Ok((row.get::<_, Value>(0)?, RawStatus::read(row, 1)?)),
            |(key, raw)| {
                let key = match key {
                    Value::Text(key) => key,
                    other => {
                        return Err(corrupt(
                            &self.path,
                            account,
                            &format!("{other:?}"),
                            "key is not text",
                        ))
                    }
                };
                let status = decode(&self.path, account, &key, &raw)?;
                out.insert(key, status);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Record an accepted delivery; durable when it returns, overrides Failed/Quarantined,
    /// and a repeat keeps the first record.
    pub fn record_delivered(
        &mut self,
        account: &str,
        key: &str,
        size: u64,
        reply: &str,
    ) -> Result<(), LedgerError> {
        self.record_delivered_then(account, key, size, reply, Along::default())
    }

    /// [`Ledger::record_delivered`], which also ends `key`'s submission mark and, in the
    /// same commit (no extra fsync), records what `along` says.
    pub fn record_delivered_then(
        &mut self,
        account: &str,
        key: &str,
        size: u64,
        reply: &str,
        along: Along<'_>,
    ) -> Result<(), LedgerError> {
        let (one, next) = along.as_batch(key, size, reply);
        self.record_deliveries(account, &[one], &next)
    }

    /// Group commit: records every accepted delivery in `batch` (each ending its submission
    /// mark, as [`Ledger::record_delivered_then`] does) and marks `next` as submitting, in
    /// one transaction: one fsync for all. Durable when it returns; on an error nothing of
    /// it is recorded.
    pub fn record_deliveries(
        &mut self,
        account: &str,
        batch: &[Delivery<'_>],
        next: &[&str],
    ) -> Result<(), LedgerError> {
        let now = now();
        // One transaction: committed (and, with synchronous = FULL, the WAL fsynced) before
        // commit returns.
        let (tx, path) = self.immediate()?;
        for d in batch {
            // Sizes beyond i64::MAX cannot occur; clamp rather than fail the record that
            // prevents a duplicate.
            let size = i64::try_from(d.size).unwrap_or(i64::MAX);
            let changed = tx
                .prepare_cached(
                    "INSERT INTO messages
                        (account, key, state, delivered_at, size, delivery_reply,
                         failures, created_at, updated_at)
                     VALUES (?1, ?2, 'delivered', ?3, ?4, ?5, 0, ?3, ?3)
                     ON CONFLICT (account, key) DO UPDATE SET
                        state = 'delivered',
                        delivered_at = excluded.delivered_at,
                        size = excluded.size,
                        delivery_reply = excluded.delivery_reply,
                        updated_at = excluded.updated_at,
                        quarantine_action = NULL
                     WHERE state <> 'delivered'",
                )
                .at(path)?
                .execute(params![account, d.key, now, size, d.reply])
                .at(path)?;
            unmark(&tx, path, account, d.key)?;
            if let Some((size, listed)) = d.dele {
                set_unconfirmed(&tx, path, account, d.key, size, listed)?;
            }
            if changed == 0 {
                tracing::debug!(account, key = d.key, "already recorded as delivered");
            }
        }
        for key in next {
            if !batch.iter().any(|d| d.key == *key) {
                mark(&tx, path, account, key, now)?;
            }
        }
        tx.commit().at(path)
    }

    /// Marks `key` as submitting: its final data is about to go to the SMTP server, which
    /// may accept it even if this process never learns so (a crash, a lost reply). A mark
    /// that outlives its pass names a possible duplicate; [`Ledger::record_delivered_then`]
    /// and [`Ledger::record_failure`] end it.
    pub fn begin_submission(&mut self, account: &str, key: &str) -> Result<(), LedgerError> {
        mark(&self.conn, &self.path, account, key, now())
    }

    /// [`Ledger::begin_submission`] for several keys in one commit (the messages about to
    /// be written to the SMTP server ahead of their replies).
    pub fn begin_submissions(&mut self, account: &str, keys: &[&str]) -> Result<(), LedgerError> {
        self.record_deliveries(account, &[], keys)
    }

    /// The keys of `account` marked as submitting.
    pub fn submitting(&self, account: &str) -> Result<HashSet<String>, LedgerError> {
        self.strings_of(account, "SELECT key FROM submissions WHERE account = ?1")
    }

    /// The first column of `select` (a constant query taking the account as `?1`).
    fn strings_of(&self, account: &str, select: &str) -> Result<HashSet<String>, LedgerError> {
        let mut out = HashSet::new();
        self.each_row(
            select,
            params![account],
            |row| row.get::<_, String>(0),
            |s| {
                out.insert(s);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Hands each row `sql` selects with `params`, as `read` reads it, to `each`, in order;
    /// the first error of either ends it.
    fn each_row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        mut each: impl FnMut(T) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql).at(&self.path)?;
        for row in stmt.query_map(params, read).at(&self.path)? {
            each(row.at(&self.path)?)?;
        }
        Ok(())
    }

    /// Ends the submission marks of `account`, except those in `keep` (messages whose final
    /// data was sent without a reply: the server may have them).
    pub fn clear_submissions(
        &mut self,
        account: &str,
        keep: &HashSet<String>,
    ) -> Result<(), LedgerError> {
        let marked = self.submitting(account)?;
        let doomed: Vec<&String> = marked.iter().filter(|k| !keep.contains(*k)).collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let (tx, path) = self.immediate()?;
        for key in doomed {
            unmark(&tx, path, account, key)?;
        }
        tx.commit().at(path)
    }

    /// Count a failed attempt (a permanent refusal) and keep its reply; returns the new
    /// count. Delivered and Quarantined rows are left as they are (their stored count is
    /// returned). Ends the message's submission mark.
    pub fn record_failure(
        &mut self,
        account: &str,
        key: &str,
        reply: &str,
    ) -> Result<u32, LedgerError> {
        self.record_failure_of(account, key, reply, FailureKind::Refused)
    }

    /// [`Ledger::record_failure`] for a failure of `kind`; the row takes the latest kind.
    /// A [`FailureKind::Mismatch`] leaves the submission mark as it is: nothing was
    /// submitted in that attempt, so a mark from an earlier one (the server may have that
    /// copy) still stands.
    pub fn record_failure_of(
        &mut self,
        account: &str,
        key: &str,
        reply: &str,
        kind: FailureKind,
    ) -> Result<u32, LedgerError> {
        let now = now();
        let (tx, path) = self.immediate()?;
        let existing = tx
            .prepare_cached("SELECT state, failures FROM messages WHERE account = ?1 AND key = ?2")
            .at(path)?
            .query_row(params![account, key], |row| {
                Ok((row.get::<_, Value>(0)?, row.get::<_, Value>(1)?))
            })
            .optional()
            .at(path)?;
        let count = match existing {
            None => {
                tx.prepare_cached(
                    "INSERT INTO messages
                        (account, key, state, failures, last_reply, failure_kind,
                         created_at, updated_at)
                     VALUES (?1, ?2, 'failed', 1, ?3, ?5, ?4, ?4)",
                )
                .at(path)?
                .execute(params![account, key, reply, now, kind.as_str()])
                .at(path)?;
                1
            }
            Some((state, failures)) => {
                let state = decode_state(path, account, key, &state)?;
                let failures = decode_failures(path, account, key, &failures)?;
                if state != State::Failed {
                    tracing::warn!(
                        account,
                        key,
                        ?state,
                        "failure not recorded: the message is already {state:?}"
                    );
                    unmark(&tx, path, account, key)?;
                    tx.commit().at(path)?;
                    return Ok(failures);
                }
                let count = failures.saturating_add(1);
                tx.prepare_cached(
                    "UPDATE messages SET failures = ?3, last_reply = ?4, updated_at = ?5,
                        failure_kind = ?6
                     WHERE account = ?1 AND key = ?2",
                )
                .at(path)?
                .execute(params![account, key, count, reply, now, kind.as_str()])
                .at(path)?;
                count
            }
        };
        if kind != FailureKind::Mismatch {
            unmark(&tx, path, account, key)?;
        }
        tx.commit().at(path)?;
        Ok(count)
    }

    /// Record that a durable local copy of the message is at `path`; never downgrades Delivered.
    pub fn record_quarantined(
        &mut self,
        account: &str,
        key: &str,
        path: &Path,
    ) -> Result<(), LedgerError> {
        let text = path.to_str().ok_or_else(|| LedgerError::NonUtf8Path {
            path: path.to_owned(),
        })?;
        let now = now();
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO messages
                    (account, key, state, failures, quarantine_path, created_at, updated_at)
                 VALUES (?1, ?2, 'quarantined', 0, ?3, ?4, ?4)
                 ON CONFLICT (account, key) DO UPDATE SET
                    state = 'quarantined',
                    quarantine_path = excluded.quarantine_path,
                    updated_at = excluded.updated_at,
                    quarantine_action = NULL,
                    action_at = NULL
                 WHERE state <> 'delivered'",
            )
            .at(&self.path)?
            .execute(params![account, key, text, now])
            .at(&self.path)?;
        if changed == 0 {
            quarantine_kept_delivered(account, key);
        }
        Ok(())
    }

    /// Mark keys as deleted from the server (after a successful QUIT), in one transaction.
    pub fn record_deleted(&mut self, account: &str, keys: &[String]) -> Result<(), LedgerError> {
        if keys.is_empty() {
            return Ok(());
        }
        let now = now();
        let (tx, path) = self.immediate()?;
        let mut unknown = 0usize;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE messages SET deleted_at = ?3, updated_at = ?3,
                        unconfirmed_size = NULL, unconfirmed_listed = NULL
                     WHERE account = ?1 AND key = ?2 AND deleted_at IS NULL",
                )
                .at(path)?;
            let mut exists = tx
                .prepare_cached("SELECT 1 FROM messages WHERE account = ?1 AND key = ?2")
                .at(path)?;
            for key in keys {
                if update.execute(params![account, key, now]).at(path)? == 0
                    && !exists.exists(params![account, key]).at(path)?
                {
                    unknown += 1;
                }
            }
        }
        tx.commit().at(path)?;
        if unknown > 0 {
            tracing::warn!(
                account,
                unknown,
                "deleted messages the ledger had no record of"
            );
        }
        Ok(())
    }

    /// The UIDs the server listed for more than one message at some point.
    pub fn shared_uids(&self, account: &str) -> Result<HashSet<String>, LedgerError> {
        self.strings_of(account, "SELECT uid FROM shared_uids WHERE account = ?1")
    }

    /// Remembers UIDs listed for more than one message: their messages stay keyed by header
    /// digest even once the UID is unique again, so their keys never change.
    pub fn record_shared_uids(
        &mut self,
        account: &str,
        uids: &[String],
    ) -> Result<(), LedgerError> {
        const INSERT: &str = "INSERT INTO shared_uids (account, uid) VALUES (?1, ?2)
                              ON CONFLICT (account, uid) DO NOTHING";
        self.each_in_one_transaction(uids, |tx, path, uid| {
            tx.prepare_cached(INSERT)
                .at(path)?
                .execute(params![account, uid])
                .at(path)?;
            Ok(())
        })
    }

    /// Remembers DELEs of header-digest messages whose QUIT was never confirmed (whether
    /// the server applied them is decided next time by [`Ledger::resolve_unconfirmed`]).
    pub fn record_unconfirmed(
        &mut self,
        account: &str,
        dele: &[Unconfirmed],
    ) -> Result<(), LedgerError> {
        self.each_in_one_transaction(dele, |tx, path, u| {
            set_unconfirmed(tx, path, account, &u.key, u.size, u.listed)
        })
    }

    /// Forgets an unconfirmed DELE the server refused (so it certainly did not apply).
    pub fn clear_unconfirmed(&mut self, account: &str, key: &str) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "UPDATE messages SET unconfirmed_size = NULL, unconfirmed_listed = NULL
                 WHERE account = ?1 AND key = ?2",
            )
            .at(&self.path)?
            .execute(params![account, key])
            .at(&self.path)
            .map(|_| ())
    }

    /// Decides the unconfirmed DELEs of `account` from a new listing, `listed` giving how
    /// many messages it holds of each LIST size: where exactly the unconfirmed ones of a
    /// size are missing, the server applied them (recorded as deleted); where as many as
    /// before are listed, it did not; anything else (mail arrived or went meanwhile) counts
    /// as applied, so that a look-alike still listed is delivered again rather than taken
    /// for the deleted one (a possible duplicate, never a loss). Returns the keys now
    /// recorded as deleted.
    pub fn resolve_unconfirmed(
        &mut self,
        account: &str,
        listed: &HashMap<u64, u32>,
    ) -> Result<Vec<String>, LedgerError> {
        let (tx, path) = self.immediate()?;
        let rows: Vec<(String, i64, i64)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, unconfirmed_size, unconfirmed_listed FROM messages
                     WHERE account = ?1 AND unconfirmed_size IS NOT NULL",
                )
                .at(path)?;
            let rows = stmt
                .query_map(params![account], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .at(path)?;
            rows.collect::<rusqlite::Result<_>>().at(path)?
        };
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let now = now();
        let mut deleted = Vec::new();
        for (key, size, before) in rows {
            let seen = i64::from(listed.get(&(size.max(0) as u64)).copied().unwrap_or(0));
            let kept = seen == before;
            if !kept {
                deleted.push(key.clone());
            }
            tx.prepare_cached(
                "UPDATE messages SET unconfirmed_size = NULL, unconfirmed_listed = NULL,
                    deleted_at = CASE WHEN ?3 THEN deleted_at ELSE ?4 END
                 WHERE account = ?1 AND key = ?2",
            )
            .at(path)?
            .execute(params![account, key, kept, now])
            .at(path)?;
        }
        tx.commit().at(path)?;
        Ok(deleted)
    }

    /// Records what a complete listing (UIDL) of `account` showed: `seen` holds the
    /// UID keys of the ledger's rows that it listed. A UID-keyed row it did not show is
    /// gone from the server from now on (unless already so); one it showed is not.
    /// Header-digest and size keys are left alone (no listing names them).
    pub fn record_listing(
        &mut self,
        account: &str,
        seen: &HashSet<String>,
    ) -> Result<(), LedgerError> {
        let now = now();
        let (tx, path) = self.immediate()?;
        let rows: Vec<(String, bool)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, gone_since IS NOT NULL FROM messages WHERE account = ?1",
                )
                .at(path)?;
            let rows = stmt
                .query_map(params![account], |row| Ok((row.get(0)?, row.get(1)?)))
                .at(path)?;
            rows.collect::<rusqlite::Result<_>>().at(path)?
        };
        for (key, gone) in rows {
            if !is_uid_key(&key) {
                continue;
            }
            let listed = seen.contains(&key);
            let set = match (listed, gone) {
                (true, true) => None,
                (false, false) => Some(now),
                _ => continue,
            };
            tx.prepare_cached(
                "UPDATE messages SET gone_since = ?3 WHERE account = ?1 AND key = ?2",
            )
            .at(path)?
            .execute(params![account, key, set])
            .at(path)?;
        }
        tx.commit().at(path)
    }

    /// Forgets rows of messages gone from the server for longer than `retention_secs`;
    /// returns how many. Gone means: a UID key that complete listings have not shown since
    /// then ([`Ledger::record_listing`]); a header-digest key whose DELE a QUIT applied
    /// then; a size key (a mismatch record without a UID) unchanged since then. A row
    /// whose message is still listed is never forgotten, whatever its age (it would be
    /// delivered again).
    pub fn prune(&mut self, account: &str, retention_secs: i64) -> Result<usize, LedgerError> {
        self.prune_at(account, retention_secs, now())
    }

    /// [`Ledger::prune`] as if the time were `now` (unix seconds).
    pub fn prune_at(
        &mut self,
        account: &str,
        retention_secs: i64,
        now: i64,
    ) -> Result<usize, LedgerError> {
        let cutoff = now.saturating_sub(retention_secs.max(0));
        let (tx, path) = self.immediate()?;
        let mut doomed = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, gone_since, deleted_at, updated_at FROM messages
                     WHERE account = ?1",
                )
                .at(path)?;
            let rows = stmt
                .query_map(params![account], |row| {
                    Ok((
                        row.get::<_, Value>(0)?,
                        row.get::<_, Option<i64>>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                    ))
                })
                .at(path)?;
            for row in rows {
                let (key, gone_since, deleted_at, updated_at) = row.at(path)?;
                let Value::Text(key) = key else {
                    return Err(corrupt(path, account, "?", "key is not text"));
                };
                let since = if key.starts_with(keys::SIZE_PREFIX) {
                    updated_at
                } else if is_uid_key(&key) {
                    gone_since
                } else {
                    deleted_at
                };
                if since.is_some_and(|t| t <= cutoff) {
                    doomed.push(key);
                }
            }
        }
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM messages WHERE account = ?1 AND key = ?2")
                .at(path)?;
            for key in &doomed {
                delete.execute(params![account, key]).at(path)?;
            }
        }
        tx.commit().at(path)?;
        if !doomed.is_empty() {
            tracing::info!(account, pruned = doomed.len(), "pruned ledger rows");
        }
        Ok(doomed.len())
    }

    /// Records one pass in the history, keeping the last [`HISTORY_KEEP`] of its account.
    pub fn record_pass(&mut self, pass: &PassRow) -> Result<(), LedgerError> {
        let counts = pass.counts.in_order();
        let outcome = pass.outcome.as_str();
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![
            &pass.account,
            &pass.started_at,
            &pass.finished_at,
            &outcome,
            &pass.reason,
        ];
        values.extend(counts.iter().map(|c| c as &dyn rusqlite::ToSql));
        let (tx, path) = self.immediate()?;
        tx.prepare_cached(
            "INSERT INTO passes (account, started_at, finished_at, outcome, reason, listed,
                delivered, deleted, left_over, rejected, deferred, skipped, quarantined)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .at(path)?
        .execute(values.as_slice())
        .at(path)?;
        tx.prepare_cached(
            "DELETE FROM passes WHERE account = ?1 AND id NOT IN
                (SELECT id FROM passes WHERE account = ?1 ORDER BY id DESC LIMIT ?2)",
        )
        .at(path)?
        .execute(params![pass.account, HISTORY_KEEP])
        .at(path)?;
        tx.commit().at(path)
    }

    /// The last `limit` passes of `account`, newest first.
    pub fn passes(&self, account: &str, limit: u32) -> Result<Vec<PassRow>, LedgerError> {
        let path = &self.path;
        let mut out = Vec::new();
        self.each_row(
            "SELECT started_at, finished_at, outcome, reason, listed, delivered, deleted,
                    left_over, rejected, deferred, skipped, quarantined
                 FROM passes WHERE account = ?1 ORDER BY id DESC LIMIT ?2",
            params![account, limit],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    PassCounts {
                        listed: row.get(4)?,
                        delivered: row.get(5)?,
                        deleted: row.get(6)?,
                        left: row.get(7)?,
                        rejected: row.get(8)?,
                        deferred: row.get(9)?,
                        skipped: row.get(10)?,
                        quarantined: row.get(11)?,
                    },
                ))
            },
            |(started_at, finished_at, outcome, reason, counts)| {
                let outcome = Outcome::parse(&outcome).ok_or_else(|| {
                    corrupt(
                        path,
                        account,
                        "-",
                        &format!("unknown pass outcome {outcome:?}"),
                    )
                })?;
                out.push(PassRow {
                    account: account.to_string(),
                    started_at,
                    finished_at,
                    outcome,
                    reason,
                    counts,
                });
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The quarantined messages of `account` (or of every account), oldest first. Those
    /// discarded (`quarantine delete`) are left out: their copy is gone.
    pub fn quarantined(&self, account: Option<&str>) -> Result<Vec<QuarantineRow>, LedgerError> {
        let path = &self.path;
        let mut out = Vec::new();
        self.each_row(
            "SELECT account, key, quarantine_path, last_reply, updated_at,
                    quarantine_action, action_at
                 FROM messages
                 WHERE state = 'quarantined' AND (?1 IS NULL OR account = ?1)
                    AND (quarantine_action IS NULL OR quarantine_action <> 'discard')
                 ORDER BY updated_at, account, key",
            params![account],
            |row| row.try_into(),
            |(account, key, qpath, reason, since, action): (
                String,
                String,
                Option<String>,
                Option<String>,
                i64,
                Option<String>,
            )| {
                let Some(qpath) = qpath else {
                    return Err(corrupt(path, &account, &key, "quarantined without a path"));
                };
                let action = decode_action(path, &account, &key, action.as_deref())?;
                out.push(QuarantineRow {
                    account,
                    key,
                    path: PathBuf::from(qpath),
                    reason,
                    since,
                    action,
                });
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The quarantine actions pending for `account`, by key.
    pub fn quarantine_actions(
        &self,
        account: &str,
    ) -> Result<HashMap<String, QuarantineAction>, LedgerError> {
        let path = &self.path;
        let mut out = HashMap::new();
        self.each_row(
            "SELECT key, quarantine_action FROM messages
                 WHERE account = ?1 AND state = 'quarantined'
                    AND quarantine_action IS NOT NULL",
            params![account],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?)),
            |(key, action)| {
                if let Some(a) = decode_action(path, account, &key, action.as_deref())? {
                    out.insert(key, a);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Sets (or with `None` clears) what is asked for a quarantined message; false when
    /// the ledger has no quarantined message of that account and key (a delivered one is
    /// never touched).
    pub fn set_quarantine_action(
        &mut self,
        account: &str,
        key: &str,
        action: Option<QuarantineAction>,
    ) -> Result<bool, LedgerError> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE messages SET quarantine_action = ?3, action_at = ?4
                 WHERE account = ?1 AND key = ?2 AND state = 'quarantined'",
            )
            .at(&self.path)?
            .execute(params![
                account,
                key,
                action.map(QuarantineAction::as_str),
                now()
            ])
            .at(&self.path)?;
        Ok(changed > 0)
    }

    /// The failed messages of `account` (refused, or not matching their LIST size), oldest
    /// first.
    pub fn stuck(&self, account: &str) -> Result<Vec<StuckRow>, LedgerError> {
        let path = &self.path;
        let mut out = Vec::new();
        self.each_row(
            "SELECT key, failure_kind, last_reply, failures, created_at FROM messages
                 WHERE account = ?1 AND state = 'failed' ORDER BY created_at, key",
            params![account],
            |row| row.try_into(),
            |(key, kind, reason, failures, since): (String, String, Option<String>, i64, i64)| {
                let Some(kind) = FailureKind::parse(&kind) else {
                    return Err(corrupt(
                        path,
                        account,
                        &key,
                        &format!("unknown failure kind {kind:?}"),
                    ));
                };
                out.push(StuckRow {
                    key,
                    kind,
                    reason: reason.unwrap_or_default(),
                    failures: u32::try_from(failures).unwrap_or(u32::MAX),
                    since,
                });
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Every row of `table` as its [`Table::columns`]' values, in a stable order: what
    /// `migrate-ledger` copies. A value of a type its column does not hold is
    /// [`LedgerError::Corrupt`].
    pub fn rows(&self, table: Table) -> Result<Vec<Vec<Cell>>, LedgerError> {
        let columns = table.columns();
        let path = &self.path;
        let mut out = Vec::new();
        self.each_row(
            &table.select(),
            [],
            |row| {
                (0..columns.len())
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<Value>>>()
            },
            |values| {
                let cells = (values.into_iter().zip(columns))
                    .map(|(v, (name, text))| match (v, text) {
                        (Value::Null, _) => Ok(Cell::Null),
                        (Value::Integer(n), false) => Ok(Cell::Integer(n)),
                        (Value::Text(t), true) => Ok(Cell::Text(t)),
                        (other, _) => Err(format!("{name} is {other:?}")),
                    })
                    .collect::<Result<Vec<Cell>, String>>();
                out.push(cells.map_err(|detail| corrupt(path, "-", "-", &detail))?);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The database file (`<state_dir>/ledger.sqlite3`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the oldest message of `account` that failed and is still on the server first
    /// failed (unix seconds), if there is one.
    pub fn oldest_failed_since(&self, account: &str) -> Result<Option<i64>, LedgerError> {
        self.conn
            .prepare_cached(
                "SELECT MIN(created_at) FROM messages
                 WHERE account = ?1 AND state = 'failed' AND deleted_at IS NULL",
            )
            .at(&self.path)?
            .query_row(params![account], |row| row.get::<_, Option<i64>>(0))
            .at(&self.path)
    }

    /// The ledger's size on disk in octets: the database and its write-ahead log.
    pub fn size_on_disk(&self) -> u64 {
        let wal = {
            let mut p = self.path.clone().into_os_string();
            p.push("-wal");
            PathBuf::from(p)
        };
        [self.path.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Records a DELE of `key` (LIST size `size`, `listed` messages of that size) as
/// unconfirmed.
fn set_unconfirmed(
    conn: &Connection,
    path: &Path,
    account: &str,
    key: &str,
    size: u64,
    listed: u32,
) -> Result<(), LedgerError> {
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "UPDATE messages SET unconfirmed_size = ?3, unconfirmed_listed = ?4
         WHERE account = ?1 AND key = ?2 AND deleted_at IS NULL",
    )
    .at(path)?
    .execute(params![account, key, size, listed])
    .at(path)
    .map(|_| ())
}

/// Sets `key`'s submission mark (a repeat keeps the first time).
fn mark(
    conn: &Connection,
    path: &Path,
    account: &str,
    key: &str,
    now: i64,
) -> Result<(), LedgerError> {
    conn.prepare_cached(
        "INSERT INTO submissions (account, key, since) VALUES (?1, ?2, ?3)
         ON CONFLICT (account, key) DO NOTHING",
    )
    .at(path)?
    .execute(params![account, key, now])
    .at(path)
    .map(|_| ())
}

/// Ends `key`'s submission mark, if any.
fn unmark(conn: &Connection, path: &Path, account: &str, key: &str) -> Result<(), LedgerError> {
    conn.prepare_cached("DELETE FROM submissions WHERE account = ?1 AND key = ?2")
        .at(path)?
        .execute(params![account, key])
        .at(path)
        .map(|_| ())
}

/// Says that a quarantine was not recorded because the message is already delivered
/// (a Delivered row is never downgraded); either ledger's.
pub(crate) fn quarantine_kept_delivered(account: &str, key: &str) {
    tracing::warn!(
        account,
        key,
        "quarantine not recorded: the message is already delivered"
    );
}

/// True for a key taken from a UIDL (what a listing names), false for a header-digest or
/// size key.
fn is_uid_key(key: &str) -> bool {
    !key.starts_with(keys::DIGEST_PREFIX) && !key.starts_with(keys::SIZE_PREFIX)
}

fn decode_action(
    path: &Path,
    account: &str,
    key: &str,
    v: Option<&str>,
) -> Result<Option<QuarantineAction>, LedgerError> {
    match v {
        None => Ok(None),
        Some(s) => QuarantineAction::parse(s).map(Some).ok_or_else(|| {
            corrupt(
                path,
                account,
                key,
                &format!("unknown quarantine action {s:?}"),
            )
        }),
    }
}

/// `PRAGMA user_version` of the main database.
fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Refuse versions this code cannot handle.
fn check_version(path: &Path, found: i64) -> Result<(), LedgerError> {
    if found > SCHEMA_VERSION {
        return Err(LedgerError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(LedgerError::BadVersion {
            path: path.to_owned(),
            found,
        });
    }
    Ok(())
}

/// Current time in unix seconds (0 if the clock is before 1970).
fn now() -> i64 {
    crate::report::unix_now()
}

/// Best effort: make the directory entries of a freshly created ledger durable.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    {
        let result = std::fs::File::open(dir).and_then(|d| d.sync_all());
        if let Err(err) = result {
            tracing::debug!(dir = %dir.display(), %err, "could not fsync the state directory");
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

fn corrupt(path: &Path, account: &str, key: &str, detail: &str) -> LedgerError {
    LedgerError::Corrupt {
        path: path.to_owned(),
        account: account.to_owned(),
        key: key.to_owned(),
        detail: detail.to_owned(),
    }
}

fn decode_state(path: &Path, account: &str, key: &str, v: &Value) -> Result<State, LedgerError> {
    match v {
        Value::Text(s) if s == "delivered" => Ok(State::Delivered),
        Value::Text(s) if s == "failed" => Ok(State::Failed),
        Value::Text(s) if s == "quarantined" => Ok(State::Quarantined),
        other => Err(corrupt(
            path,
            account,
            key,
            &format!("unknown state {other:?}"),
        )),
    }
}

fn decode_failures(path: &Path, account: &str, key: &str, v: &Value) -> Result<u32, LedgerError> {
    match v {
        Value::Integer(n) => u32::try_from(*n).map_err(|_| {
            corrupt(
                path,
                account,
                key,
                &format!("failure count {n} out of range"),
            )
        }),
        other => Err(corrupt(
            path,
            account,
            key,
            &format!("failure count is {other:?}"),
        )),
    }
}

fn decode(path: &Path, account: &str, key: &str, raw: &RawStatus) -> Result<Status, LedgerError> {
    match decode_state(path, account, key, &raw.state)? {
        State::Delivered => match raw.delivered_at {
            Value::Integer(at) => Ok(Status::Delivered {
                at,
                deleted: !matches!(raw.deleted_at, Value::Null),
            }),
            ref other => Err(corrupt(
                path,
                account,
                key,
                &format!("delivered_at is {other:?}"),
            )),
        },
        State::Failed => {
            let failures = decode_failures(path, account, key, &raw.failures)?;
            let kind = match &raw.failure_kind {
                Value::Text(k) => FailureKind::parse(k),
                _ => None,
            };
            let Some(kind) = kind else {
                return Err(corrupt(
                    path,
                    account,
                    key,
                    &format!("failure_kind is {:?}", raw.failure_kind),
                ));
            };
            match &raw.last_reply {
                Value::Text(reply) => Ok(Status::Failed {
                    failures,
                    last_reply: reply.clone(),
                    kind,
                }),
                other => Err(corrupt(
                    path,
                    account,
                    key,
                    &format!("last_reply is {other:?}"),
                )),
            }
        }
        State::Quarantined => match &raw.quarantine_path {
            Value::Text(p) => Ok(Status::Quarantined {
                path: PathBuf::from(p),
            }),
            other => Err(corrupt(
                path,
                account,
                key,
                &format!("quarantine_path is {other:?}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const A: &str = "alice@pop.example";
    const B: &str = "bob@pop.example";

    fn open() -> (TempDir, Ledger) {
        let dir = TempDir::new().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        (dir, ledger)
    }

    fn set(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    /// The status of a message refused `failures` times, last with `last_reply`.
    fn refused(failures: u32, last_reply: &str) -> Status {
        Status::Failed {
            failures,
            last_reply: last_reply.into(),
            kind: FailureKind::Refused,
        }
    }

    #[test]
    fn open_creates_file_with_wal_and_full_sync() {
        let dir = TempDir::new().unwrap();
        let state = dir.path().join("nested").join("state");
        let ledger = Ledger::open(&state).unwrap();
        assert_eq!(ledger.path(), state.join(FILE_NAME));
        assert!(ledger.path().is_file());
        let mode: String = ledger
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = ledger
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
        assert_eq!(user_version(&ledger.conn).unwrap(), SCHEMA_VERSION);
        #[cfg(unix)]
        {
            // The database, its WAL and shared-memory files and the new folders are
            // private: they say whose mail came from where.
            use std::os::unix::fs::PermissionsExt;
            let mut ledger = ledger;
            ledger.record_delivered(A, "k", 10, "250 ok").unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            for suffix in ["", "-wal", "-shm"] {
                let p = PathBuf::from(format!("{}{suffix}", ledger.path().display()));
                assert_eq!(mode(&p), 0o600, "{}", p.display());
            }
            assert_eq!(mode(&state), 0o700);
            assert_eq!(mode(state.parent().unwrap()), 0o700);
        }
    }

    #[test]
    fn the_oldest_failure_still_on_the_server_and_the_size_on_disk() {
        let (_dir, mut l) = open();
        assert_eq!(l.oldest_failed_since(A).unwrap(), None);
        l.record_delivered(A, "d", 10, "250 ok").unwrap();
        assert_eq!(l.oldest_failed_since(A).unwrap(), None);
        l.record_failure(A, "old", "550 no").unwrap();
        l.record_failure(A, "new", "451 later").unwrap();
        l.conn
            .execute("UPDATE messages SET created_at = 100 WHERE key = 'old'", [])
            .unwrap();
        assert_eq!(l.oldest_failed_since(A).unwrap(), Some(100));
        assert_eq!(l.oldest_failed_since("other").unwrap(), None);
        l.record_deleted(A, &["old".to_string()]).unwrap();
        let since = l.oldest_failed_since(A).unwrap().unwrap();
        assert!(since > 100, "the deleted one no longer counts: {since}");
        assert!(l.size_on_disk() > 0);
    }

    #[test]
    fn round_trip_every_state() {
        let (dir, mut l) = open();
        assert_eq!(l.status(A, "new").unwrap(), Status::New);

        let before = now();
        l.record_delivered(A, "d", 1234, "250 2.6.0 queued as X")
            .unwrap();
        match l.status(A, "d").unwrap() {
            Status::Delivered { at, .. } => assert!(at >= before && at <= now()),
            other => panic!("expected Delivered, got {other:?}"),
        }

        assert_eq!(l.record_failure(A, "f", "550 5.7.1 rejected").unwrap(), 1);
        assert_eq!(l.status(A, "f").unwrap(), refused(1, "550 5.7.1 rejected"));

        let q = dir.path().join("quarantine").join("q.eml");
        l.record_quarantined(A, "q", &q).unwrap();
        assert_eq!(
            l.status(A, "q").unwrap(),
            Status::Quarantined { path: q.clone() }
        );

        // The other columns are kept too.
        let (size, reply): (i64, String) = l
            .conn
            .query_row(
                "SELECT size, delivery_reply FROM messages WHERE account = ?1 AND key = 'd'",
                params![A],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((size, reply.as_str()), (1234, "250 2.6.0 queued as X"));
    }

    #[test]
    fn failures_count_up() {
        let (_dir, mut l) = open();
        assert_eq!(l.record_failure(A, "k", "550 one").unwrap(), 1);
        assert_eq!(l.record_failure(A, "k", "550 two").unwrap(), 2);
        assert_eq!(l.record_failure(A, "k", "554 three").unwrap(), 3);
        assert_eq!(l.status(A, "k").unwrap(), refused(3, "554 three"));
        // Another key and another account count separately.
        assert_eq!(l.record_failure(A, "other", "550").unwrap(), 1);
        assert_eq!(l.record_failure(B, "k", "550").unwrap(), 1);
    }

    #[test]
    fn failure_never_downgrades_delivered_or_quarantined() {
        let (dir, mut l) = open();
        l.record_delivered(A, "d", 10, "250 ok").unwrap();
        let delivered = l.status(A, "d").unwrap();
        assert_eq!(l.record_failure(A, "d", "550 late").unwrap(), 0);
        assert_eq!(l.status(A, "d").unwrap(), delivered);

        let q = dir.path().join("q.eml");
        l.record_failure(A, "q", "550 a").unwrap();
        l.record_failure(A, "q", "550 b").unwrap();
        l.record_quarantined(A, "q", &q).unwrap();
        assert_eq!(l.record_failure(A, "q", "550 c").unwrap(), 2);
        assert_eq!(
            l.status(A, "q").unwrap(),
            Status::Quarantined { path: q.clone() }
        );

        // Quarantine does not downgrade Delivered either.
        l.record_quarantined(A, "d", &q).unwrap();
        assert_eq!(l.status(A, "d").unwrap(), delivered);
    }

    /// `l` records `key` of `account` as delivered.
    fn delivered(l: &Ledger, account: &str, key: &str) -> bool {
        matches!(l.status(account, key).unwrap(), Status::Delivered { .. })
    }

    #[test]
    fn delivered_after_failures_and_idempotent() {
        let (dir, mut l) = open();
        l.record_failure(A, "k", "451 later").unwrap();
        l.record_failure(A, "k", "451 later").unwrap();
        l.record_delivered(A, "k", 99, "250 ok").unwrap();
        let first = l.status(A, "k").unwrap();
        assert!(matches!(first, Status::Delivered { .. }));

        // A repeat keeps the first record.
        l.conn
            .execute("UPDATE messages SET delivered_at = 1 WHERE key = 'k'", [])
            .unwrap();
        l.record_delivered(A, "k", 99, "250 again").unwrap();
        assert_eq!(
            l.status(A, "k").unwrap(),
            Status::Delivered {
                at: 1,
                deleted: false
            }
        );

        // Delivered wins over Quarantined (a delivery must never be forgotten).
        l.record_quarantined(A, "q", &dir.path().join("q")).unwrap();
        l.record_delivered(A, "q", 5, "250 ok").unwrap();
        assert!(delivered(&l, A, "q"));
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = TempDir::new().unwrap();
        let q = dir.path().join("q.eml");
        let expected = {
            let mut l = Ledger::open(dir.path()).unwrap();
            l.record_delivered(A, "d", 1, "250 ok").unwrap();
            l.record_failure(A, "f", "550 no").unwrap();
            l.record_failure(A, "f", "550 no").unwrap();
            l.record_quarantined(B, "q", &q).unwrap();
            l.record_deleted(A, &["d".to_string()]).unwrap();
            (l.statuses(A).unwrap(), l.statuses(B).unwrap())
        };
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!((l.statuses(A).unwrap(), l.statuses(B).unwrap()), expected);
        assert_eq!(l.status(A, "f").unwrap(), refused(2, "550 no"));
        let deleted: Option<i64> = l
            .conn
            .query_row("SELECT deleted_at FROM messages WHERE key = 'd'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(deleted.is_some());
    }

    #[test]
    fn statuses_are_per_account() {
        let (dir, mut l) = open();
        l.record_delivered(A, "1", 1, "250").unwrap();
        l.record_failure(A, "2", "550").unwrap();
        l.record_quarantined(A, "3", &dir.path().join("3")).unwrap();
        l.record_delivered(B, "1", 1, "250").unwrap();
        l.record_delivered(B, "9", 1, "250").unwrap();

        let a = l.statuses(A).unwrap();
        assert_eq!(a.len(), 3);
        assert!(matches!(a["1"], Status::Delivered { .. }));
        assert!(matches!(a["2"], Status::Failed { failures: 1, .. }));
        assert!(matches!(a["3"], Status::Quarantined { .. }));
        assert!(!a.contains_key("9"));

        let b = l.statuses(B).unwrap();
        assert_eq!(b.len(), 2);
        assert!(l.statuses("nobody").unwrap().is_empty());
        assert_eq!(l.status(B, "2").unwrap(), Status::New);
    }

    const DAY: i64 = 86_400;

    #[test]
    fn prune_forgets_only_rows_gone_from_the_server_for_longer_than_the_retention() {
        let (dir, mut l) = open();
        let q = dir.path().join("q");
        // Delivered and kept on the server (leave_on_server): listed on every pass.
        l.record_delivered(A, "kept", 1, "250").unwrap();
        // Delivered, deleted, then no longer listed.
        l.record_delivered(A, "deleted", 1, "250").unwrap();
        // Failed, then deleted by someone else (no longer listed).
        l.record_failure(A, "fail-gone", "550").unwrap();
        // Quarantined and kept on the server: listed.
        l.record_quarantined(A, "quar-kept", &q).unwrap();
        // A header-digest key delivered and kept, and one whose DELE a QUIT applied.
        l.record_delivered(A, "sha256:kept", 1, "250").unwrap();
        l.record_delivered(A, "sha256:gone", 1, "250").unwrap();
        // Another account, never listed.
        l.record_delivered(B, "deleted", 1, "250").unwrap();
        l.record_deleted(A, &["deleted".into(), "sha256:gone".into()])
            .unwrap();
        l.record_listing(A, &set(&["kept", "quar-kept"])).unwrap();
        let now = super::now();
        let retention = 90 * DAY;
        // Nothing is old enough yet, however often it is asked.
        assert_eq!(l.prune_at(A, retention, now).unwrap(), 0);
        assert_eq!(l.prune_at(A, retention, now + 89 * DAY).unwrap(), 0);
        // Past the retention: the gone rows go; the listed ones stay however old.
        assert_eq!(l.prune_at(A, retention, now + 91 * DAY).unwrap(), 3);
        let mut left: Vec<String> = l.statuses(A).unwrap().into_keys().collect();
        left.sort();
        assert_eq!(left, ["kept", "quar-kept", "sha256:kept"]);
        assert_eq!(l.statuses(B).unwrap().len(), 1, "per account");
        assert_eq!(l.prune_at(A, retention, now + 1000 * DAY).unwrap(), 0);
    }

    #[test]
    fn a_message_listed_again_restarts_its_retention() {
        let (_dir, mut l) = open();
        l.record_delivered(A, "k", 1, "250").unwrap();
        // A listing that missed it (a server glitch), then one that shows it again.
        l.record_listing(A, &set(&[])).unwrap();
        l.record_listing(A, &set(&["k"])).unwrap();
        assert_eq!(l.prune_at(A, DAY, super::now() + 10 * DAY).unwrap(), 0);
        // Gone for good: forgotten only after the retention.
        l.record_listing(A, &set(&[])).unwrap();
        // A later listing without it does not move the time it went.
        l.conn
            .execute(
                "UPDATE messages SET gone_since = gone_since - ?1",
                [2 * DAY],
            )
            .unwrap();
        l.record_listing(A, &set(&[])).unwrap();
        assert_eq!(l.prune_at(A, DAY, super::now()).unwrap(), 1);
    }

    #[test]
    fn pass_history_is_bounded_per_account_and_newest_first() {
        let (_dir, mut l) = open();
        let row = |account: &str, i: i64, outcome: Outcome| PassRow {
            account: account.into(),
            started_at: i,
            finished_at: i + 1,
            outcome,
            reason: (outcome == Outcome::Failed).then(|| "connection refused".to_string()),
            counts: PassCounts {
                listed: i as u32,
                ..PassCounts::default()
            },
        };
        for i in 0..(HISTORY_KEEP + 20) {
            l.record_pass(&row(A, i, Outcome::Ok)).unwrap();
        }
        l.record_pass(&row(A, 1000, Outcome::Failed)).unwrap();
        l.record_pass(&row(B, 5, Outcome::Stuck)).unwrap();
        let all = l.passes(A, 1000).unwrap();
        assert_eq!(all.len() as i64, HISTORY_KEEP);
        assert_eq!(all[0], row(A, 1000, Outcome::Failed));
        assert_eq!(all[1].started_at, HISTORY_KEEP + 19);
        assert_eq!(l.passes(B, 10).unwrap(), [row(B, 5, Outcome::Stuck)]);
        assert!(l.passes("nobody", 10).unwrap().is_empty());
    }

    #[test]
    fn quarantine_actions_apply_to_quarantined_rows_only_and_end_with_the_outcome() {
        let (dir, mut l) = open();
        let q = dir.path().join("q.eml");
        l.record_failure(A, "q", "550 5.7.1 spam").unwrap();
        l.record_quarantined(A, "q", &q).unwrap();
        l.record_delivered(A, "d", 1, "250").unwrap();
        assert!(!l
            .set_quarantine_action(A, "d", Some(QuarantineAction::Release))
            .unwrap());
        assert!(!l
            .set_quarantine_action(A, "none", Some(QuarantineAction::Release))
            .unwrap());
        assert!(l
            .set_quarantine_action(A, "q", Some(QuarantineAction::Release))
            .unwrap());
        let rows = l.quarantined(Some(A)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].reason.as_deref(), Some("550 5.7.1 spam"));
        assert_eq!(rows[0].action, Some(QuarantineAction::Release));
        assert_eq!(
            l.quarantine_actions(A).unwrap(),
            HashMap::from([("q".to_string(), QuarantineAction::Release)])
        );
        // The delivery ends the release.
        l.record_delivered(A, "q", 1, "250").unwrap();
        assert!(l.quarantine_actions(A).unwrap().is_empty());
        assert!(l.quarantined(None).unwrap().is_empty());
        // A discarded one is no longer listed as quarantined, but its row stays.
        l.record_quarantined(A, "x", &q).unwrap();
        l.set_quarantine_action(A, "x", Some(QuarantineAction::Discard))
            .unwrap();
        assert!(l.quarantined(None).unwrap().is_empty());
        assert!(matches!(
            l.status(A, "x").unwrap(),
            Status::Quarantined { .. }
        ));
    }

    #[test]
    fn stuck_lists_failed_rows_with_their_kind() {
        let (_dir, mut l) = open();
        l.record_failure(A, "r", "550 no").unwrap();
        l.record_failure_of(A, "m", "size", FailureKind::Mismatch)
            .unwrap();
        l.record_delivered(A, "d", 1, "250").unwrap();
        let mut rows = l.stuck(A).unwrap();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].kind, FailureKind::Mismatch);
        assert_eq!((rows[1].reason.as_str(), rows[1].failures), ("550 no", 1));
    }

    #[test]
    fn record_deleted_is_idempotent() {
        let (_dir, mut l) = open();
        l.record_delivered(A, "k", 1, "250").unwrap();
        l.record_deleted(A, &["k".into()]).unwrap();
        l.conn
            .execute("UPDATE messages SET deleted_at = 5, updated_at = 5", [])
            .unwrap();
        l.record_deleted(A, &["k".into()]).unwrap();
        l.record_deleted(A, &[]).unwrap();
        let (deleted, updated): (i64, i64) = l
            .conn
            .query_row("SELECT deleted_at, updated_at FROM messages", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((deleted, updated), (5, 5));
    }

    #[test]
    fn newer_schema_is_refused_and_left_alone() {
        let dir = TempDir::new().unwrap();
        drop(Ledger::open(dir.path()).unwrap());
        let file = dir.path().join(FILE_NAME);
        {
            let conn = Connection::open(&file).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        match Ledger::open(dir.path()) {
            Err(LedgerError::TooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
        let conn = Connection::open(&file).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION + 1);
    }

    #[test]
    fn hostile_keys_are_plain_data() {
        let (dir, mut l) = open();
        let keys = [
            "x'); DROP TABLE messages; --",
            "\"quoted\" 'single'",
            "ünïcødé ✉ 郵便",
            "",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ];
        let account = "a'; DELETE FROM messages; --";
        for (i, key) in keys.iter().enumerate() {
            match i % 3 {
                0 => l.record_delivered(account, key, 1, "250 'ok'; --").unwrap(),
                1 => {
                    l.record_failure(account, key, "550 x'); DROP TABLE messages; --")
                        .unwrap();
                }
                _ => l
                    .record_quarantined(account, key, &dir.path().join("ü ' \".eml"))
                    .unwrap(),
            }
        }
        let all = l.statuses(account).unwrap();
        assert_eq!(all.len(), keys.len());
        for key in keys {
            assert_ne!(l.status(account, key).unwrap(), Status::New, "{key:?}");
        }
        assert_eq!(
            l.status(account, keys[1]).unwrap(),
            refused(1, "550 x'); DROP TABLE messages; --")
        );
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        l.record_deleted(account, &keys).unwrap();
        l.record_listing(account, &HashSet::new()).unwrap();
        // (The digest key counts as gone by its DELE.)
        assert_eq!(l.prune(account, 0).unwrap(), keys.len());
    }

    #[test]
    fn second_connection_reads_concurrently() {
        let dir = TempDir::new().unwrap();
        let mut writer = Ledger::open(dir.path()).unwrap();
        let reader = Ledger::open(dir.path()).unwrap();
        writer.record_delivered(A, "k", 1, "250").unwrap();
        assert!(delivered(&reader, A, "k"));

        // A reader in the middle of a read transaction does not block the writer (WAL).
        let mut stmt = reader
            .conn
            .prepare("SELECT key FROM messages WHERE account = ?1")
            .unwrap();
        let mut rows = stmt.query(params![A]).unwrap();
        assert!(rows.next().unwrap().is_some());
        assert_eq!(writer.record_failure(A, "f", "550").unwrap(), 1);
        drop(rows);
        drop(stmt);
        assert_eq!(reader.statuses(A).unwrap().len(), 2);

        // And the second connection can write too.
        let mut second = reader;
        second.record_delivered(B, "x", 1, "250").unwrap();
        assert!(delivered(&writer, B, "x"));
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        let (_dir, l) = open();
        l.conn
            .pragma_update(None, "ignore_check_constraints", true)
            .unwrap();
        l.conn
            .execute(
                "INSERT INTO messages (account, key, state, failures, created_at, updated_at)
                 VALUES (?1, 'bad-state', 'lost', 0, 0, 0),
                        (?1, 'no-reply', 'failed', 3, 0, 0),
                        (?1, 'neg', 'failed', -1, 0, 0)",
                params![A],
            )
            .unwrap();
        for key in ["bad-state", "no-reply", "neg"] {
            match l.status(A, key) {
                Err(LedgerError::Corrupt { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected Corrupt, got {other:?}"),
            }
        }
        let err = l.statuses(A).unwrap_err();
        assert!(matches!(err, LedgerError::Corrupt { .. }));
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }

    #[test]
    fn sqlite_errors_name_the_file() {
        let dir = TempDir::new().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"this is not a database, just text padding it out to more than a header's length",
        )
        .unwrap();
        let err = Ledger::open(dir.path()).unwrap_err();
        assert!(matches!(err, LedgerError::Sqlite { .. }), "{err:?}");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }

    #[test]
    fn state_dir_that_is_a_file_is_an_io_error() {
        let dir = TempDir::new().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = Ledger::open(&file).unwrap_err();
        assert!(matches!(err, LedgerError::Io { .. }), "{err:?}");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_quarantine_path_is_refused() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let (_dir, mut l) = open();
        let bad = Path::new(OsStr::from_bytes(b"/tmp/\xff.eml"));
        assert!(matches!(
            l.record_quarantined(A, "k", bad),
            Err(LedgerError::NonUtf8Path { .. })
        ));
        assert_eq!(l.status(A, "k").unwrap(), Status::New);
    }

    #[test]
    fn a_version_1_ledger_is_migrated_and_keeps_its_rows() {
        let dir = TempDir::new().unwrap();
        let file = dir.path().join(FILE_NAME);
        {
            let conn = Connection::open(&file).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(
                "INSERT INTO messages (account, key, state, failures, last_reply,
                    created_at, updated_at) VALUES (?1, 'old', 'failed', 2, '550 no', 1, 1)",
                params![A],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let mut l = Ledger::open(dir.path()).unwrap();
        assert_eq!(user_version(&l.conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(l.status(A, "old").unwrap(), refused(2, "550 no"));
        l.begin_submission(A, "old").unwrap();
        assert_eq!(l.submitting(A).unwrap(), set(&["old"]));
    }

    #[test]
    fn submission_marks_end_with_the_outcome_and_chain_to_the_next() {
        let (_dir, mut l) = open();
        l.begin_submission(A, "m1").unwrap();
        l.begin_submission(B, "m1").unwrap();
        // Delivering m1 ends its mark and marks m2 in the same commit.
        let along = Along {
            next: Some("m2"),
            dele: None,
        };
        l.record_delivered_then(A, "m1", 10, "250 ok", along)
            .unwrap();
        assert_eq!(l.submitting(A).unwrap(), set(&["m2"]));
        assert_eq!(l.submitting(B).unwrap(), set(&["m1"]), "per account");
        // A retrieval that could not be trusted submitted nothing: an earlier attempt's
        // mark (the server may have that copy) stands.
        l.record_failure_of(A, "m2", "RETR refused", FailureKind::Mismatch)
            .unwrap();
        assert_eq!(l.submitting(A).unwrap(), set(&["m2"]));
        // A permanent refusal ends the mark.
        l.record_failure(A, "m2", "550 no").unwrap();
        assert!(l.submitting(A).unwrap().is_empty());
        // End of pass: every mark but the kept ones goes.
        for k in ["x", "y", "z"] {
            l.begin_submission(A, k).unwrap();
        }
        l.clear_submissions(A, &set(&["y"])).unwrap();
        assert_eq!(l.submitting(A).unwrap(), set(&["y"]));
        // A mark survives a reopen (that is its point: it outlives a crash).
        drop(l);
        let l = Ledger::open(_dir.path()).unwrap();
        assert_eq!(l.submitting(A).unwrap(), set(&["y"]));
    }

    #[test]
    fn mismatch_failures_are_told_apart_from_refusals() {
        let (_dir, mut l) = open();
        l.record_failure_of(
            A,
            "k",
            "RETR gave 10 octets, LIST said 99",
            FailureKind::Mismatch,
        )
        .unwrap();
        assert!(matches!(
            l.status(A, "k").unwrap(),
            Status::Failed {
                failures: 1,
                kind: FailureKind::Mismatch,
                ..
            }
        ));
        // The latest kind wins; the count goes on.
        l.record_failure(A, "k", "550 5.7.1 no").unwrap();
        assert!(matches!(
            l.status(A, "k").unwrap(),
            Status::Failed {
                failures: 2,
                kind: FailureKind::Refused,
                ..
            }
        ));
    }

    #[test]
    fn unconfirmed_deletions_are_decided_by_the_next_listing() {
        let (_dir, mut l) = open();
        for k in ["a", "b", "c"] {
            l.record_delivered(A, k, 100, "250 ok").unwrap();
        }
        // a and b (size 100, 3 such messages listed) and c (size 7, 1 listed) were DELE'd
        // in a session whose QUIT was never confirmed.
        l.record_unconfirmed(
            A,
            &[
                Unconfirmed {
                    key: "a".into(),
                    size: 100,
                    listed: 3,
                },
                Unconfirmed {
                    key: "b".into(),
                    size: 100,
                    listed: 3,
                },
                Unconfirmed {
                    key: "c".into(),
                    size: 7,
                    listed: 1,
                },
            ],
        )
        .unwrap();
        // Next listing: one message of size 100 (two fewer: applied), one of size 7 (as
        // before: not applied).
        let listed = HashMap::from([(100, 1), (7, 1)]);
        let mut gone = l.resolve_unconfirmed(A, &listed).unwrap();
        gone.sort();
        assert_eq!(gone, ["a", "b"]);
        let deleted = |l: &Ledger, k: &str| match l.status(A, k).unwrap() {
            Status::Delivered { deleted, .. } => deleted,
            other => panic!("{other:?}"),
        };
        assert!(deleted(&l, "a") && deleted(&l, "b") && !deleted(&l, "c"));
        // Decided once: nothing left to decide.
        assert!(l
            .resolve_unconfirmed(A, &HashMap::new())
            .unwrap()
            .is_empty());
        assert!(!deleted(&l, "c"));
    }
}
