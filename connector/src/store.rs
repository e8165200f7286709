//! The ledger a pass reads and writes: the local SQLite ledger of the state directory, or
//! the shared one in the cluster database under the account's lease.
//!
//! Responsible for: one set of calls for both, with the local ledger's error type (a
//! cluster failure is [`LedgerError::Cluster`]); for the cluster, each call in a fenced
//! transaction of its own, committed before it returns, so a write is durable when the
//! call returns, as with the local ledger, and made only while the lease is this
//! instance's.
//! Must never: write the cluster ledger outside the lease's fenced transaction, touch
//! another account than the lease's, or run local ledger work (an fsync) on a runtime
//! worker where the runtime allows moving it off.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::cluster::{Cluster, ClusterError, Lease, Slot};
use crate::config::ClusterSettings;
use crate::ledger::{
    Along, Delivery, FailureKind, Ledger, LedgerError, PassRow, QuarantineAction, Status,
    Unconfirmed,
};

/// Why the cluster database named by `[cluster]` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The database password could not be obtained (never quoted).
    #[error("cluster database password: {0}")]
    Password(#[from] crate::secret::SecretError),
    /// The connection (with the schema check) took longer than the connect timeout.
    #[error("cluster database: no connection within {0} s")]
    Timeout(u64),
    /// The connection or the schema check failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl ConnectError {
    /// True when the database could not be reached (rather than refused the settings).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Cluster(e) => e.is_connection_lost(),
            Self::Password(_) => false,
        }
    }
}

/// Connects to the database `settings` name, as this instance (its `instance`, else the
/// host name and process id), with the password from its secret source; bounded by
/// `timeout`.
pub async fn connect(
    settings: &ClusterSettings,
    timeout: std::time::Duration,
) -> Result<Cluster, ConnectError> {
    let instance = match &settings.instance {
        Some(name) => name.clone(),
        None => default_instance(),
    };
    let mut config =
        crate::cluster::ClusterConfig::new(&settings.database, &instance, settings.lease_ttl)?;
    if let Some(source) = &settings.password {
        let secret = source.resolve(timeout).await?;
        config = config.with_password(secret.expose());
    }
    tokio::time::timeout(timeout, Cluster::connect_with(config))
        .await
        .map_err(|_| ConnectError::Timeout(timeout.as_secs()))?
        .map_err(ConnectError::Cluster)
}

/// This instance's name when the configuration gives none: the host name and the
/// process id.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "popbridge".into());
    format!("{host}:{}", std::process::id())
}

/// Where a pass records what it did.
#[derive(Clone)]
pub enum Store<'a> {
    /// The state directory's SQLite ledger, shared by the accounts of a run.
    Local(&'a Mutex<Ledger>),
    /// The cluster ledger, through one account's lease.
    Cluster(Arc<ClusterStore>),
}

/// One account's lease and the connection it is used through, for the passes of that
/// account: every call waits for the one before (one transaction at a time).
pub struct ClusterStore {
    held: tokio::sync::Mutex<Held>,
    account: String,
    /// Until when the lease allows work, as of its last claim or fence: readable while a
    /// transaction holds the lease (an instant already past once the lease is lost).
    act_until: Mutex<tokio::time::Instant>,
}

struct Held {
    cluster: Cluster,
    lease: Lease,
    /// The POP3 server's session slot the pass holds, if it took one.
    slot: Option<Slot>,
}

/// Runs `$body` with `$tx`, a fenced transaction of the store's lease, then commits it:
/// the call's result once the commit returned, else the error (nothing of it committed).
macro_rules! fenced {
    ($store:expr, $account:expr, |$tx:ident| $body:expr) => {{
        let store: &ClusterStore = $store;
        let account: &str = $account;
        if store.account != account {
            return Err(LedgerError::Cluster(ClusterError::Config {
                reason: format!(
                    "the lease of account {:?} does not cover account {:?}",
                    store.account, account
                ),
            }));
        }
        let mut held = store.held.lock().await;
        let Held { cluster, lease, .. } = &mut *held;
        let result = async {
            let mut $tx = lease.fenced_transaction(cluster).await?;
            let out = $body;
            $tx.commit().await?;
            Ok::<_, LedgerError>(out)
        }
        .await;
        store.note(lease);
        result
    }};
}

impl ClusterStore {
    /// The store of `lease`'s account, used through `cluster` (which claimed the lease).
    pub fn new(cluster: Cluster, lease: Lease) -> Arc<Self> {
        Self::with_slot(cluster, lease, None)
    }

    /// [`ClusterStore::new`], also holding one of the POP3 server's session slots,
    /// renewed with the lease.
    pub fn with_slot(cluster: Cluster, lease: Lease, slot: Option<Slot>) -> Arc<Self> {
        Arc::new(Self {
            account: lease.account().to_owned(),
            act_until: Mutex::new(if lease.may_act() {
                lease.act_until()
            } else {
                tokio::time::Instant::now()
            }),
            held: tokio::sync::Mutex::new(Held {
                cluster,
                lease,
                slot,
            }),
        })
    }

    /// The account whose lease this is.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// True while the lease allows starting work on the account (a RETR, an SMTP
    /// submission, a DELE, a QUIT that applies them): it was not found lost, and its
    /// self-fencing deadline has not passed on the local clock, whether or not the
    /// database answers (see [`crate::cluster::Claim::may_act`]). Never waits for a
    /// transaction under way.
    pub fn may_act(&self) -> bool {
        tokio::time::Instant::now() < *self.act_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews the lease (the fence in a transaction of its own), waiting for a
    /// transaction under way; what a pass does between ledger calls, so that a long
    /// download does not outlive the lease.
    pub async fn heartbeat(&self) -> Result<(), LedgerError> {
        let mut held = self.held.lock().await;
        let Held {
            cluster,
            lease,
            slot,
        } = &mut *held;
        let result = lease.heartbeat(cluster).await;
        self.note(lease);
        result?;
        // A slot that could not be renewed only lets the cap be exceeded for a while: the
        // pass goes on (its lease is what keeps the mail safe).
        if let Some(slot) = slot {
            if let Err(e) = slot.heartbeat(cluster).await {
                tracing::warn!(account = %self.account, "server session slot not renewed: {e}");
            }
        }
        Ok(())
    }

    /// The group commit on the cluster ledger, one fenced transaction (the local ledger
    /// commits through a connection of the pass's own: see the pass's commit).
    pub async fn record_deliveries(
        &self,
        account: &str,
        batch: &[Delivery<'_>],
        next: &[&str],
    ) -> Result<(), LedgerError> {
        fenced!(self, account, |tx| tx
            .record_deliveries(batch, next)
            .await?)
    }

    /// Notes the lease's deadline after a transaction (past, once it is lost).
    fn note(&self, lease: &Lease) {
        let until = if lease.is_lost() {
            tokio::time::Instant::now()
        } else {
            lease.act_until()
        };
        *self.act_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// The connection, the lease and the slot back (to release them).
    pub fn into_parts(self) -> (Cluster, Lease, Option<Slot>) {
        let Held {
            cluster,
            lease,
            slot,
        } = self.held.into_inner();
        (cluster, lease, slot)
    }
}

/// Runs `f` on the local ledger off the runtime's worker where it can.
fn local<R>(l: &Mutex<Ledger>, f: impl FnOnce(&mut Ledger) -> R) -> R {
    crate::pass::blocking(|| f(&mut l.lock().unwrap_or_else(|p| p.into_inner())))
}

/// What a pass reads of its account before the first message (see [`Store::opening`]).
#[derive(Debug, Default)]
pub struct Opening {
    /// Every recorded message, by key.
    pub known: HashMap<String, Status>,
    /// The quarantine actions pending, by key.
    pub actions: HashMap<String, QuarantineAction>,
    /// The UIDs the server listed for more than one message.
    pub shared: HashSet<String>,
    /// The keys marked as submitting.
    pub marks: HashSet<String>,
}

impl Store<'_> {
    /// What a session reads of `account` before its first message: every recorded
    /// message, the pending quarantine actions, the shared UIDs and the submission marks.
    /// With a cluster, one fenced transaction instead of four.
    pub async fn opening(&self, account: &str) -> Result<Opening, LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| {
                Ok(Opening {
                    known: l.statuses(account)?,
                    actions: l.quarantine_actions(account)?,
                    shared: l.shared_uids(account)?,
                    marks: l.submitting(account)?,
                })
            }),
            Store::Cluster(c) => fenced!(c, account, |tx| Opening {
                known: tx.statuses().await?,
                actions: tx.quarantine_actions().await?,
                shared: tx.shared_uids().await?,
                marks: tx.submitting().await?,
            }),
        }
    }

    /// Every recorded message of `account`, by key.
    pub async fn statuses(&self, account: &str) -> Result<HashMap<String, Status>, LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.statuses(account)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.statuses().await?),
        }
    }

    /// See [`Ledger::record_shared_uids`].
    pub async fn record_shared_uids(
        &self,
        account: &str,
        uids: &[String],
    ) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.record_shared_uids(account, uids)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.record_shared_uids(uids).await?),
        }
    }

    /// See [`Ledger::resolve_unconfirmed`].
    pub async fn resolve_unconfirmed(
        &self,
        account: &str,
        listed: &HashMap<u64, u32>,
    ) -> Result<Vec<String>, LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.resolve_unconfirmed(account, listed)),
            Store::Cluster(c) => {
                fenced!(c, account, |tx| tx.resolve_unconfirmed(listed).await?)
            }
        }
    }

    /// [`Ledger::record_listing`], then [`Ledger::prune`], in one call.
    pub async fn record_listing_and_prune(
        &self,
        account: &str,
        seen: &HashSet<String>,
        retention_secs: i64,
    ) -> Result<usize, LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| {
                l.record_listing(account, seen)?;
                l.prune(account, retention_secs)
            }),
            Store::Cluster(c) => fenced!(c, account, |tx| {
                tx.record_listing(seen).await?;
                tx.prune(retention_secs).await?
            }),
        }
    }

    /// See [`Ledger::set_quarantine_action`].
    pub async fn set_quarantine_action(
        &self,
        account: &str,
        key: &str,
        action: Option<QuarantineAction>,
    ) -> Result<bool, LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.set_quarantine_action(account, key, action)),
            Store::Cluster(c) => {
                fenced!(c, account, |tx| tx
                    .set_quarantine_action(key, action)
                    .await?)
            }
        }
    }

    /// See [`Ledger::record_deleted`].
    pub async fn record_deleted(&self, account: &str, keys: &[String]) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.record_deleted(account, keys)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.record_deleted(keys).await?),
        }
    }

    /// See [`Ledger::clear_submissions`].
    pub async fn clear_submissions(
        &self,
        account: &str,
        keep: &HashSet<String>,
    ) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.clear_submissions(account, keep)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.clear_submissions(keep).await?),
        }
    }

    /// See [`Ledger::begin_submissions`].
    pub async fn begin_submissions(&self, account: &str, keys: &[&str]) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.begin_submissions(account, keys)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.begin_submissions(keys).await?),
        }
    }

    /// See [`Ledger::record_failure_of`].
    pub async fn record_failure_of(
        &self,
        account: &str,
        key: &str,
        reply: &str,
        kind: FailureKind,
    ) -> Result<u32, LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.record_failure_of(account, key, reply, kind)),
            Store::Cluster(c) => {
                fenced!(c, account, |tx| tx
                    .record_failure_of(key, reply, kind)
                    .await?)
            }
        }
    }

    /// See [`Ledger::record_delivered_then`].
    pub async fn record_delivered_then(
        &self,
        account: &str,
        key: &str,
        size: u64,
        reply: &str,
        along: Along<'_>,
    ) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| {
                l.record_delivered_then(account, key, size, reply, along)
            }),
            Store::Cluster(c) => {
                let (one, next) = along.as_batch(key, size, reply);
                fenced!(c, account, |tx| tx.record_deliveries(&[one], &next).await?)
            }
        }
    }

    /// See [`Ledger::clear_unconfirmed`].
    pub async fn clear_unconfirmed(&self, account: &str, key: &str) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.clear_unconfirmed(account, key)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.clear_unconfirmed(key).await?),
        }
    }

    /// See [`Ledger::record_unconfirmed`].
    pub async fn record_unconfirmed(
        &self,
        account: &str,
        dele: &[Unconfirmed],
    ) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.record_unconfirmed(account, dele)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.record_unconfirmed(dele).await?),
        }
    }

    /// See [`Ledger::record_quarantined`].
    pub async fn record_quarantined(
        &self,
        account: &str,
        key: &str,
        path: &Path,
    ) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.record_quarantined(account, key, path)),
            Store::Cluster(c) => fenced!(c, account, |tx| tx.record_quarantined(key, path).await?),
        }
    }

    /// See [`Ledger::record_pass`].
    pub async fn record_pass(&self, pass: &PassRow) -> Result<(), LedgerError> {
        match self {
            Store::Local(l) => local(l, |l| l.record_pass(pass)),
            Store::Cluster(c) => fenced!(c, &pass.account, |tx| tx.record_pass(pass).await?),
        }
    }
}
