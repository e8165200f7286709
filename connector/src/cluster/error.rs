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
            _ => false,
        }
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
