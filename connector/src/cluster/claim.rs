//! Claims on rows of the cluster database (an account's lease, a server's session slot):
//! the fence that starts every write made on a claim's behalf, and self-fencing.
//!
//! The fence is `UPDATE … SET expires_at = now() + ttl WHERE key AND owner = me AND
//! epoch = mine AND expires_at > now()`, the first statement of a transaction: exactly
//! one row, or the transaction is rolled back and the claim is lost for good. Because a
//! claim by another instance raises the epoch, and the fence's row lock holds off that
//! claim until the transaction ends, a fenced transaction that commits was written while
//! the claim was ours. Independently of the database, a claim allows work only until
//! (the instant its last successful claim or fence was *sent*) + ttl − margin on the local
//! monotonic clock, so an instance that cannot reach the database stops on its own
//! before another one can take over.
//!
//! Responsible for: [`Claim`] (its epoch, `may_act`), [`Fenced`] transactions, heartbeat
//! and release.
//! Must never: extend `act_until` for a fence whose COMMIT did not return success,
//! commit a transaction in which a statement failed, or let a lost claim act again.

use std::fmt;
use std::time::SystemTime;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::error::{bounded, Failure};
use super::{Cluster, ClusterError};

/// What a claim is on: the SQL that fences and releases it.
pub trait Key: fmt::Display + Send + Sync {
    /// The fence: `$1` ttl in seconds, `$2` owner, `$3` epoch, then [`Key::params`];
    /// returns the new `expires_at`.
    const FENCE: &'static str;
    /// The release: `$1` owner, `$2` epoch, then [`Key::params`].
    const RELEASE: &'static str;
    /// The values of the row's primary key.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)>;
}

/// An account's lease (a row of `lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKey {
    /// The account's name.
    pub account: String,
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account {}", self.account)
    }
}

impl Key for AccountKey {
    const FENCE: &'static str = "UPDATE lease SET expires_at = now() + make_interval(secs => $1) \
         WHERE owner = $2 AND epoch = $3 AND expires_at > now() AND account = $4 \
         RETURNING expires_at";
    const RELEASE: &'static str = "UPDATE lease SET owner = NULL, expires_at = NULL \
         WHERE owner = $1 AND epoch = $2 AND account = $3";
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.account]
    }
}

/// One session slot of a POP3 server (a row of `server_slot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotKey {
    /// The POP3 server, as the configuration names it.
    pub server: String,
    /// The slot's number, below the server's cap.
    pub slot: i32,
}

impl fmt::Display for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {} of server {}", self.slot, self.server)
    }
}

impl Key for SlotKey {
    const FENCE: &'static str =
        "UPDATE server_slot SET expires_at = now() + make_interval(secs => $1) \
         WHERE owner = $2 AND epoch = $3 AND expires_at > now() AND server = $4 AND slot = $5 \
         RETURNING expires_at";
    const RELEASE: &'static str = "UPDATE server_slot SET owner = NULL, expires_at = NULL \
         WHERE owner = $1 AND epoch = $2 AND server = $3 AND slot = $4";
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.server, &self.slot]
    }
}

/// An account lease held by this instance.
pub type Lease = Claim<AccountKey>;
/// A session slot of a POP3 server held by this instance.
pub type Slot = Claim<SlotKey>;

/// A row this instance claimed, at one epoch. Use it only through a [`super::Cluster`] of
/// the instance that claimed it (that one, or another connection of it).
#[derive(Debug)]
pub struct Claim<K> {
    key: K,
    epoch: i64,
    expires_at: SystemTime,
    act_until: Instant,
    lost: bool,
}

impl<K> Claim<K> {
    pub(super) fn new(key: K, epoch: i64, expires_at: SystemTime, act_until: Instant) -> Self {
        Self {
            key,
            epoch,
            expires_at,
            act_until,
            lost: false,
        }
    }

    /// What is claimed.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The fencing token: raised by every claim of the row, never by a fence.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// When the claim expires by the database's clock, as of the last claim or fence.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Until when (local monotonic clock) work may go on without another fence.
    pub fn act_until(&self) -> Instant {
        self.act_until
    }

    /// True while this instance may start work on the claim (RETR, SMTP, DELE): it has
    /// not been fenced and `act_until` has not passed, whether or not the database can
    /// be reached.
    pub fn may_act(&self) -> bool {
        !self.lost && Instant::now() < self.act_until
    }

    /// True once a fence or release found the claim no longer ours.
    pub fn is_lost(&self) -> bool {
        self.lost
    }
}

impl Lease {
    /// The account leased.
    pub fn account(&self) -> &str {
        &self.key.account
    }
}

impl Slot {
    /// The POP3 server.
    pub fn server(&self) -> &str {
        &self.key.server
    }

    /// The slot's number.
    pub fn slot(&self) -> i32 {
        self.key.slot
    }
}

impl<K: Key> Claim<K> {
    /// Opens a transaction on `cluster` whose first statement is the fence, for the
    /// caller's writes; commit it with [`Fenced::commit`]. Fails with
    /// [`ClusterError::Fenced`] (and the claim is lost) when the row is no longer ours.
    /// A fence whose connection turns out lost is retried once on a new connection
    /// (nothing of it can have committed).
    pub async fn fenced_transaction<'a>(
        &'a mut self,
        cluster: &'a mut Cluster,
    ) -> Result<Fenced<'a, K>, ClusterError> {
        if self.lost {
            return Err(self.fenced());
        }
        let mut retried = false;
        loop {
            cluster.ready().await?;
            let sent = Instant::now();
            match self.begin(cluster).await {
                Ok(Some(expires_at)) => {
                    return Ok(Fenced {
                        cluster,
                        claim: self,
                        sent,
                        expires_at,
                        failed: false,
                        open: true,
                    })
                }
                Ok(None) => {
                    cluster.abandon().await;
                    self.lost = true;
                    return Err(self.fenced());
                }
                Err(e) if e.connection_lost() && !retried => {
                    retried = true;
                    cluster.reconnect().await?;
                }
                Err(e) => {
                    let error = cluster.fail(e);
                    cluster.abandon().await;
                    return Err(error);
                }
            }
        }
    }

    /// Extends the claim by the ttl (the fence in a transaction of its own).
    pub async fn heartbeat(&mut self, cluster: &mut Cluster) -> Result<(), ClusterError> {
        self.fenced_transaction(cluster).await?.commit().await
    }

    /// Gives the row back: free for any instance at once. Fails with
    /// [`ClusterError::Fenced`] when it was no longer ours.
    pub async fn release(mut self, cluster: &mut Cluster) -> Result<(), ClusterError> {
        self.lost = true;
        cluster.ready().await?;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&cluster.config.instance_id, &self.epoch];
        params.extend(self.key.params());
        let deadline = cluster.config.deadline();
        let result = bounded(
            deadline,
            "the release",
            cluster.client.execute(K::RELEASE, &params),
        )
        .await;
        match result {
            Ok(1) => Ok(()),
            Ok(_) => Err(self.fenced()),
            Err(e) => Err(cluster.fail(e)),
        }
    }

    /// BEGIN and the fence: the new expiry, or `None` when the row is not ours.
    async fn begin(&self, cluster: &Cluster) -> Result<Option<SystemTime>, Failure> {
        let deadline = cluster.config.deadline();
        bounded(deadline, "BEGIN", cluster.client.batch_execute("BEGIN")).await?;
        let ttl = cluster.config.ttl.as_secs_f64();
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&ttl, &cluster.config.instance_id, &self.epoch];
        params.extend(self.key.params());
        let fence = cluster.client.query(K::FENCE, &params);
        let rows = bounded(deadline, "the fence", fence).await?;
        Ok(match rows[..] {
            [ref row] => Some(row.get(0)),
            _ => None,
        })
    }

    fn fenced(&self) -> ClusterError {
        ClusterError::Fenced {
            claim: self.key.to_string(),
            epoch: self.epoch,
        }
    }
}

/// A transaction that started with a successful fence. Dropping it without
/// [`commit`](Fenced::commit) rolls it back (before the cluster's next statement).
pub struct Fenced<'a, K: Key> {
    cluster: &'a mut Cluster,
    claim: &'a mut Claim<K>,
    /// When the BEGIN was sent: the database's `now()` for the fence is not earlier.
    sent: Instant,
    expires_at: SystemTime,
    /// A statement failed: the transaction can only roll back.
    failed: bool,
    open: bool,
}

impl<K: Key> Fenced<'_, K> {
    /// Runs a statement inside the transaction; the number of rows it changed.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ClusterError> {
        let statement = self.cluster.client.execute(sql, params);
        self.check(bounded(self.cluster.config.deadline(), "a ledger write", statement).await)
    }

    /// Runs a query inside the transaction.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ClusterError> {
        let statement = self.cluster.client.query(sql, params);
        self.check(bounded(self.cluster.config.deadline(), "a ledger read", statement).await)
    }

    /// Commits. Only when COMMIT returned success does the claim's `act_until` move on;
    /// any error (the outcome may be unknown) means: treat the writes as not committed.
    pub async fn commit(mut self) -> Result<(), ClusterError> {
        self.open = false;
        if self.failed {
            self.cluster.abandon().await;
            return Err(ClusterError::Aborted {
                claim: self.claim.key.to_string(),
            });
        }
        let deadline = self.cluster.config.deadline();
        let commit = self.cluster.client.batch_execute("COMMIT");
        match bounded(deadline, "COMMIT", commit).await {
            Ok(()) => {
                let claim = &mut *self.claim;
                claim.act_until = claim
                    .act_until
                    .max(self.sent + self.cluster.config.act_for());
                claim.expires_at = self.expires_at;
                Ok(())
            }
            // Unanswered: the outcome is unknown, so the connection is given up and the
            // writes count as not committed.
            Err(stalled @ Failure::Stalled(_)) => Err(self.cluster.fail(stalled)),
            Err(Failure::Db(source)) => {
                if super::error::connection_lost(&source) {
                    self.cluster.reconnect_owed = true;
                }
                Err(ClusterError::Commit {
                    target: self.cluster.config.target.clone(),
                    claim: self.claim.key.to_string(),
                    source,
                })
            }
        }
    }

    /// Rolls back.
    pub async fn rollback(mut self) {
        self.open = false;
        self.cluster.abandon().await;
    }

    fn check<T>(&mut self, result: Result<T, Failure>) -> Result<T, ClusterError> {
        result.map_err(|e| {
            self.failed = true;
            self.cluster.fail(e)
        })
    }
}

impl Fenced<'_, AccountKey> {
    /// The account whose lease fences this transaction: the only one its ledger writes
    /// touch.
    pub fn account(&self) -> &str {
        &self.claim.key.account
    }

    /// The lease's epoch, kept with every ledger row this transaction writes.
    pub fn epoch(&self) -> i64 {
        self.claim.epoch
    }
}

impl<K: Key> Drop for Fenced<'_, K> {
    fn drop(&mut self) {
        if self.open {
            self.cluster.rollback_owed = true;
        }
    }
}
