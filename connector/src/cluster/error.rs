//! The errors of the cluster module, and how to tell a lost lease from a database fault.
//!
//! Responsible for: keeping the database's own error (never flattening it to text),
//! naming the database by its redacted target, and the questions a caller asks of an
//! error (`is_fenced`, `is_connection_lost`).
//! Must never: quote a connection string (it may hold a password), or classify an error
//! by its message text (only by kind and SQLSTATE).

use std::error::Error as _;
use std::fmt;

use tokio_postgres::error::SqlState;

/// Errors of [`super::Cluster`] and of the claims it hands out.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster settings are unusable; the reason never quotes the connection string.
    #[error("cluster database settings: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The database refused a statement, or could not be reached.
    #[error("cluster database {target}: {}", Described(source))]
    Database {
        /// The database, as [`super::ClusterConfig`] displays it (no password).
        target: String,
        /// The database client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database holds a schema this build does not know.
    #[error("cluster database {target}: schema version {found}, this build knows {supported}")]
    Schema {
        /// The database, as [`super::ClusterConfig`] displays it.
        target: String,
        /// The version found in `schema_version`.
        found: i32,
        /// The version this build creates and uses.
        supported: i32,
    },
    /// The claim is no longer ours: it expired and was (or may be) taken by another
    /// instance, or it was released. Nothing of the fenced transaction was committed.
    #[error("{claim} at epoch {epoch} is no longer held by this instance (fenced)")]
    Fenced {
        /// The account or server slot, e.g. `account alice`.
        claim: String,
        /// The epoch this instance held.
        epoch: i64,
    },
    /// A statement of the fenced transaction failed, so nothing was committed.
    #[error("{claim}: a statement of the fenced transaction failed; rolled back")]
    Aborted {
        /// The account or server slot.
        claim: String,
    },
    /// `migrate-ledger` refused before writing anything.
    #[error("migrate-ledger: {0}")]
    Migration(#[from] Refusal),
    /// A ledger row that cannot be read as any status (it breaks the schema's rules).
    #[error("cluster ledger: account {account:?}, key {key:?}: {detail}")]
    Corrupt {
        /// The row's account.
        account: String,
        /// The row's key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The database did not answer a statement (or the opening of a connection) within
    /// the deadline: the connection is given up, the next call opens another, and
    /// whatever the statement would have done counts as not done.
    #[error(
        "cluster database {target}: no answer to {what} within {:.1} s; the connection was dropped and the outcome counts as not committed",
        after.as_secs_f64()
    )]
    Stalled {
        /// The database, as [`super::ClusterConfig`] displays it.
        target: String,
        /// What went unanswered (`COMMIT`, `the lease fence`, `connecting`, ...).
        what: &'static str,
        /// The deadline that passed.
        after: std::time::Duration,
    },
    /// COMMIT of a fenced transaction did not succeed: its outcome may be unknown (the
    /// connection dropped), and it must be treated as not committed.
    #[error(
        "cluster database {target}: commit for {claim} failed or its outcome is unknown: {}",
        Described(source)
    )]
    Commit {
        /// The database, as [`super::ClusterConfig`] displays it.
        target: String,
        /// The account or server slot.
        claim: String,
        /// The database client's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Why a migration of the local ledger into the cluster's was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The local ledger could not be read.
    #[error("the local ledger cannot be read: {0}")]
    Local(#[source] Box<crate::ledger::LedgerError>),
    /// An instance holds an account's lease: it may be writing that account's records.
    #[error(
        "an instance holds the lease of account {account:?}: stop every instance before migrating the ledger"
    )]
    LeaseHeld {
        /// The account.
        account: String,
    },
    /// The cluster ledger already has records of an account: copying would merge them.
    #[error(
        "the cluster ledger already has records of account {account:?} (in {table}): nothing was copied; a ledger is migrated once, into a cluster that has none of its accounts"
    )]
    RecordsExist {
        /// The account.
        account: String,
        /// The cluster table holding them.
        table: &'static str,
    },
}

impl ClusterError {
    /// True when our claim is gone (expired and taken over, or released): stop working on
    /// it. False for database faults, after which the claim may still be ours.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClusterError::Fenced { .. })
    }

    /// True when the connection to the database was lost (or never made): the next call
    /// on the same [`super::Cluster`] reconnects.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            ClusterError::Database { source, .. } | ClusterError::Commit { source, .. } => {
                connection_lost(source)
            }
            ClusterError::Stalled { .. } => true,
            _ => false,
        }
    }
}

/// How a statement failed, before it becomes a [`ClusterError`]: the database's own
/// error, or no answer within the deadline.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client's error.
    Db(tokio_postgres::Error),
    /// Nothing came back in time; the named statement's outcome is unknown.
    Stalled(&'static str),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

impl Failure {
    /// True when the session with the server is gone or cannot be trusted any more: a
    /// lost connection, or a statement left unanswered.
    pub(crate) fn connection_lost(&self) -> bool {
        match self {
            Failure::Db(e) => connection_lost(e),
            Failure::Stalled(_) => true,
        }
    }

    /// The error for `target` (the redacted database name), given the deadline.
    pub(crate) fn into_error(self, target: &str, deadline: std::time::Duration) -> ClusterError {
        match self {
            Failure::Db(source) => ClusterError::Database {
                target: target.to_owned(),
                source,
            },
            Failure::Stalled(what) => ClusterError::Stalled {
                target: target.to_owned(),
                what,
                after: deadline,
            },
        }
    }
}

/// Awaits `statement` for at most `deadline`: its result, or [`Failure::Stalled`] naming
/// `what`. The whole exchange (sending, the server's work, every row of the reply) falls
/// under the one deadline.
pub(crate) async fn bounded<T>(
    deadline: std::time::Duration,
    what: &'static str,
    statement: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(deadline, statement).await {
        Ok(result) => result.map_err(Failure::Db),
        Err(_) => Err(Failure::Stalled(what)),
    }
}

/// True for an error that means the session with the server is gone: the client saw the
/// connection close, an I/O error, or the server said it is shutting down or not ready.
pub(crate) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
        None => e.source().is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// The client's error with its cause: the client's own `Display` names only the kind.
struct Described<'a>(&'a tokio_postgres::Error);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.source() {
            Some(cause) => write!(f, "{}: {cause}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}
