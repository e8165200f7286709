//! The shared delivery ledger in the cluster database: per account and message key, the
//! same records as the local SQLite ledger ([`crate::ledger`]): delivered, failed,
//! quarantined, deleted from the server, DELEs whose QUIT was never confirmed, submission
//! marks (possible duplicates), and the UIDs a server listed for more than one message.
//!
//! Every read and write goes through a [`Fenced`] transaction of the account's lease, so
//! a write lands only while the lease is this instance's, and only the lease's own
//! account is touched; each row keeps the epoch of its last write. Nothing is durable
//! until the caller commits the transaction ([`Fenced::commit`]): a DELE may follow only
//! that commit. Times are unix seconds by the database's clock.
//!
//! Responsible for: the `ledger_*` tables' rows (the history of passes too) and reading
//! them back; what the administrator reads and asks outside any lease (history,
//! quarantine, stuck messages) as methods of [`Cluster`].
//! Must never: write outside a fenced transaction, downgrade a Delivered row (to Failed,
//! Quarantined or New), format a caller's string into SQL, or panic on a row that breaks
//! the schema's rules (it is [`ClusterError::Corrupt`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use super::{AccountKey, Cluster, ClusterError, Fenced};
use crate::keys;
use crate::ledger::{
    Delivery, FailureKind, Outcome, PassCounts, PassRow, QuarantineAction, QuarantineRow, Status,
    StuckRow, Unconfirmed, HISTORY_KEEP,
};

/// The database's clock in unix seconds as `clock.t`, for a statement's FROM (a macro so
/// statements stay `&'static str`). `now()` is the transaction's start: one time per
/// fenced transaction.
macro_rules! clock {
    () => {
        "(SELECT floor(extract(epoch FROM now()))::bigint AS t) clock"
    };
}

impl Fenced<'_, AccountKey> {
    /// Every recorded row of the account, by key (keys absent from the map are `New`).
    pub async fn statuses(&mut self) -> Result<HashMap<String, Status>, ClusterError> {
        let account = self.account().to_owned();
        let rows = self
            .query(
                "SELECT key, state, delivered_at, failures, last_reply, failure_kind, \
                        quarantine_path, deleted_at \
                 FROM ledger_message WHERE account = $1",
                &[&account],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let key: String = column(row, 0, &account, "?")?;
                let status = decode(row, &account, &key)?;
                Ok((key, status))
            })
            .collect()
    }

    /// The account's keys marked as submitting.
    pub async fn submitting(&mut self) -> Result<HashSet<String>, ClusterError> {
        self.keys("SELECT key FROM ledger_submission WHERE account = $1")
            .await
    }

    /// The UIDs the server listed for more than one message at some point.
    pub async fn shared_uids(&mut self) -> Result<HashSet<String>, ClusterError> {
        self.keys("SELECT uid FROM ledger_shared_uid WHERE account = $1")
            .await
    }

    /// Group commit: records every accepted delivery of `batch` (overriding Failed and
    /// Quarantined; a repeat keeps the first record), ends each one's submission mark,
    /// records its unconfirmed DELE where it has one, and marks `next` as submitting.
    pub async fn record_deliveries(
        &mut self,
        batch: &[Delivery<'_>],
        next: &[&str],
    ) -> Result<(), ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        for d in batch {
            // Sizes beyond i64::MAX cannot occur; clamp rather than fail the record that
            // prevents a duplicate.
            let size = i64::try_from(d.size).unwrap_or(i64::MAX);
            self.execute(
                concat!(
                    "INSERT INTO ledger_message \
                        (account, key, state, delivered_at, size, delivery_reply, failures, \
                         created_at, updated_at, epoch) \
                     SELECT $1, $2, 'delivered', t, $3, $4, 0, t, t, $5 FROM ",
                    clock!(),
                    " ON CONFLICT (account, key) DO UPDATE SET \
                        state = 'delivered', delivered_at = excluded.delivered_at, \
                        size = excluded.size, delivery_reply = excluded.delivery_reply, \
                        updated_at = excluded.updated_at, epoch = excluded.epoch, \
                        quarantine_action = NULL \
                     WHERE ledger_message.state <> 'delivered'"
                ),
                &[&account, &d.key, &size, &d.reply, &epoch],
            )
            .await?;
            self.unmark(d.key).await?;
            if let Some((size, listed)) = d.dele {
                self.set_unconfirmed(d.key, size, listed).await?;
            }
        }
        for key in next {
            if !batch.iter().any(|d| d.key == *key) {
                self.execute(
                    concat!(
                        "INSERT INTO ledger_submission (account, key, since, epoch) \
                         SELECT $1, $2, t, $3 FROM ",
                        clock!(),
                        " ON CONFLICT (account, key) DO NOTHING"
                    ),
                    &[&account, key, &epoch],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Marks `keys` as submitting: their final data is about to go to the SMTP server
    /// (a repeat keeps the first time).
    pub async fn begin_submissions(&mut self, keys: &[&str]) -> Result<(), ClusterError> {
        self.record_deliveries(&[], keys).await
    }

    /// Ends the account's submission marks, except those in `keep` (messages whose final
    /// data was sent without a reply: the server may have them).
    pub async fn clear_submissions(&mut self, keep: &HashSet<String>) -> Result<(), ClusterError> {
        let account = self.account().to_owned();
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        self.execute(
            "DELETE FROM ledger_submission WHERE account = $1 AND NOT (key = ANY($2))",
            &[&account, &keep],
        )
        .await
        .map(|_| ())
    }

    /// Counts a failed attempt of `kind` and keeps its reply; returns the new count. A
    /// Delivered or Quarantined row is left as it is (its stored count is returned). Ends
    /// the submission mark, except for a [`FailureKind::Mismatch`] (nothing was submitted
    /// in that attempt, so a mark from an earlier one still stands).
    pub async fn record_failure_of(
        &mut self,
        key: &str,
        reply: &str,
        kind: FailureKind,
    ) -> Result<u32, ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        // One statement: a new row counts 1, a Failed row one more, any other is kept.
        let rows = self
            .query(
                concat!(
                    "INSERT INTO ledger_message \
                        (account, key, state, failures, last_reply, failure_kind, \
                         created_at, updated_at, epoch) \
                     SELECT $1, $2, 'failed', 1, $3, $4, t, t, $5 FROM ",
                    clock!(),
                    " ON CONFLICT (account, key) DO UPDATE SET \
                        failures = LEAST(ledger_message.failures + 1, 4294967295), \
                        last_reply = excluded.last_reply, \
                        failure_kind = excluded.failure_kind, \
                        updated_at = excluded.updated_at, epoch = excluded.epoch \
                     WHERE ledger_message.state = 'failed' \
                     RETURNING failures"
                ),
                &[&account, &key, &reply, &kind.as_str(), &epoch],
            )
            .await?;
        let count = match rows.first() {
            Some(row) => column::<i64>(row, 0, &account, key)?,
            None => {
                // Delivered or Quarantined: left alone, its count told.
                let row = self
                    .query(
                        "SELECT failures FROM ledger_message WHERE account = $1 AND key = $2",
                        &[&account, &key],
                    )
                    .await?;
                tracing::warn!(
                    account,
                    key,
                    "failure not recorded: the message is already delivered or quarantined"
                );
                let count = match row.first() {
                    Some(row) => column::<i64>(row, 0, &account, key)?,
                    None => 0,
                };
                self.unmark(key).await?;
                return failures(count, &account, key);
            }
        };
        if kind != FailureKind::Mismatch {
            self.unmark(key).await?;
        }
        failures(count, &account, key)
    }

    /// Records that a durable local copy of the message is at `path`; never downgrades
    /// Delivered.
    pub async fn record_quarantined(&mut self, key: &str, path: &Path) -> Result<(), ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        let text = path.to_str().ok_or_else(|| ClusterError::Corrupt {
            account: account.clone(),
            key: key.to_owned(),
            detail: format!("the quarantine path {} is not UTF-8", path.display()),
        })?;
        let changed = self
            .execute(
                concat!(
                    "INSERT INTO ledger_message \
                        (account, key, state, failures, quarantine_path, created_at, \
                         updated_at, epoch) \
                     SELECT $1, $2, 'quarantined', 0, $3, t, t, $4 FROM ",
                    clock!(),
                    " ON CONFLICT (account, key) DO UPDATE SET \
                        state = 'quarantined', quarantine_path = excluded.quarantine_path, \
                        updated_at = excluded.updated_at, epoch = excluded.epoch, \
                        quarantine_action = NULL, action_at = NULL \
                     WHERE ledger_message.state <> 'delivered'"
                ),
                &[&account, &key, &text, &epoch],
            )
            .await?;
        if changed == 0 {
            crate::ledger::quarantine_kept_delivered(&account, key);
        }
        Ok(())
    }

    /// Marks `keys` as deleted from the server (after a successful QUIT).
    pub async fn record_deleted(&mut self, keys: &[String]) -> Result<(), ClusterError> {
        if keys.is_empty() {
            return Ok(());
        }
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        self.execute(
            concat!(
                "UPDATE ledger_message SET deleted_at = t, updated_at = t, epoch = $3, \
                    unconfirmed_size = NULL, unconfirmed_listed = NULL FROM ",
                clock!(),
                " WHERE account = $1 AND key = ANY($2) AND deleted_at IS NULL"
            ),
            &[&account, &keys, &epoch],
        )
        .await
        .map(|_| ())
    }

    /// Remembers UIDs listed for more than one message: their messages stay keyed by
    /// header digest even once the UID is unique again.
    pub async fn record_shared_uids(&mut self, uids: &[String]) -> Result<(), ClusterError> {
        let account = self.account().to_owned();
        self.execute(
            "INSERT INTO ledger_shared_uid (account, uid) SELECT $1, unnest($2::text[]) \
             ON CONFLICT (account, uid) DO NOTHING",
            &[&account, &uids],
        )
        .await
        .map(|_| ())
    }

    /// Remembers DELEs of header-digest messages whose QUIT was never confirmed.
    pub async fn record_unconfirmed(&mut self, dele: &[Unconfirmed]) -> Result<(), ClusterError> {
        for u in dele {
            self.set_unconfirmed(&u.key, u.size, u.listed).await?;
        }
        Ok(())
    }

    /// Forgets an unconfirmed DELE the server refused (so it certainly did not apply).
    pub async fn clear_unconfirmed(&mut self, key: &str) -> Result<(), ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        self.execute(
            "UPDATE ledger_message SET unconfirmed_size = NULL, unconfirmed_listed = NULL, \
                epoch = $3 \
             WHERE account = $1 AND key = $2",
            &[&account, &key, &epoch],
        )
        .await
        .map(|_| ())
    }

    /// Decides the account's unconfirmed DELEs from a new listing, `listed` giving how
    /// many messages it holds of each LIST size, as [`crate::ledger::Ledger::resolve_unconfirmed`]
    /// does: the same number listed as before means not applied; anything else counts as
    /// applied (a look-alike still listed is delivered again rather than taken for the
    /// deleted one). Returns the keys now recorded as deleted.
    pub async fn resolve_unconfirmed(
        &mut self,
        listed: &HashMap<u64, u32>,
    ) -> Result<Vec<String>, ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        let rows = self
            .query(
                "SELECT key, unconfirmed_size, unconfirmed_listed FROM ledger_message \
                 WHERE account = $1 AND unconfirmed_size IS NOT NULL",
                &[&account],
            )
            .await?;
        let mut deleted = Vec::new();
        for row in &rows {
            let key: String = column(row, 0, &account, "?")?;
            let size: i64 = column(row, 1, &account, &key)?;
            let before: Option<i64> = column(row, 2, &account, &key)?;
            let seen = i64::from(listed.get(&(size.max(0) as u64)).copied().unwrap_or(0));
            let kept = Some(seen) == before;
            if !kept {
                deleted.push(key.clone());
            }
            self.execute(
                concat!(
                    "UPDATE ledger_message SET unconfirmed_size = NULL, \
                        unconfirmed_listed = NULL, epoch = $4, \
                        deleted_at = CASE WHEN $3 THEN deleted_at ELSE t END FROM ",
                    clock!(),
                    " WHERE account = $1 AND key = $2"
                ),
                &[&account, &key, &kept, &epoch],
            )
            .await?;
        }
        Ok(deleted)
    }

    /// Records what a complete listing (UIDL) showed: `seen` holds the UID keys of the
    /// ledger's rows that it listed. A UID-keyed row it did not show is gone from the
    /// server from now on (unless already so); one it showed is not. Header-digest and
    /// size keys are left alone (no listing names them).
    pub async fn record_listing(&mut self, seen: &HashSet<String>) -> Result<(), ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
        let prefixes = [keys::DIGEST_PREFIX, keys::SIZE_PREFIX];
        self.execute(
            concat!(
                "UPDATE ledger_message SET gone_since = \
                    CASE WHEN key = ANY($2) THEN NULL ELSE t END, epoch = $5 FROM ",
                clock!(),
                " WHERE account = $1 AND NOT starts_with(key, $3) AND NOT starts_with(key, $4) \
                   AND (key = ANY($2)) = (gone_since IS NOT NULL)"
            ),
            &[&account, &seen, &prefixes[0], &prefixes[1], &epoch],
        )
        .await
        .map(|_| ())
    }

    /// Forgets the rows of messages gone from the server for longer than
    /// `retention_secs` (by the database's clock); returns how many. Gone means, as in the
    /// local ledger: a UID key that complete listings have not shown since then, a
    /// header-digest key whose DELE a QUIT applied then, a size key unchanged since then.
    /// A row whose message is still listed is never forgotten.
    pub async fn prune(&mut self, retention_secs: i64) -> Result<usize, ClusterError> {
        let account = self.account().to_owned();
        let retention = retention_secs.max(0);
        let changed = self
            .execute(
                concat!(
                    "DELETE FROM ledger_message USING ",
                    clock!(),
                    " WHERE account = $1 AND \
                       CASE WHEN starts_with(key, $3) THEN updated_at \
                            WHEN starts_with(key, $4) THEN deleted_at \
                            ELSE gone_since END <= t - $2"
                ),
                &[
                    &account,
                    &retention,
                    &keys::SIZE_PREFIX,
                    &keys::DIGEST_PREFIX,
                ],
            )
            .await?;
        if changed > 0 {
            tracing::info!(account, pruned = changed, "pruned cluster ledger rows");
        }
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    /// Records one pass of the lease's account in the history, keeping its last
    /// [`HISTORY_KEEP`].
    pub async fn record_pass(&mut self, pass: &PassRow) -> Result<(), ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        let counts: Vec<i64> = (pass.counts.in_order()).map(i64::from).to_vec();
        self.execute(
            "INSERT INTO ledger_pass (account, started_at, finished_at, outcome, reason, \
                listed, delivered, deleted, left_over, rejected, deferred, skipped, \
                quarantined, epoch) \
             SELECT $1, $2, $3, $4, $5, c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], $7 \
             FROM (SELECT $6::bigint[] AS c) counts",
            &[
                &account,
                &pass.started_at,
                &pass.finished_at,
                &pass.outcome.as_str(),
                &pass.reason,
                &counts,
                &epoch,
            ],
        )
        .await?;
        self.execute(
            "DELETE FROM ledger_pass WHERE account = $1 AND id NOT IN \
                (SELECT id FROM ledger_pass WHERE account = $1 ORDER BY id DESC LIMIT $2)",
            &[&account, &HISTORY_KEEP],
        )
        .await
        .map(|_| ())
    }

    /// The quarantine actions pending for the account, by key.
    pub async fn quarantine_actions(
        &mut self,
    ) -> Result<HashMap<String, QuarantineAction>, ClusterError> {
        let account = self.account().to_owned();
        let rows = self
            .query(
                "SELECT key, quarantine_action FROM ledger_message \
                 WHERE account = $1 AND state = 'quarantined' \
                    AND quarantine_action IS NOT NULL",
                &[&account],
            )
            .await?;
        let mut out = HashMap::new();
        for row in &rows {
            let key: String = column(row, 0, &account, "?")?;
            let action: Option<String> = column(row, 1, &account, &key)?;
            if let Some(a) = action_of(action.as_deref(), &account, &key)? {
                out.insert(key, a);
            }
        }
        Ok(out)
    }

    /// Sets (or with `None` clears) what is asked for a quarantined message of the
    /// account; false when the ledger has no quarantined message of that key.
    pub async fn set_quarantine_action(
        &mut self,
        key: &str,
        action: Option<QuarantineAction>,
    ) -> Result<bool, ClusterError> {
        let account = self.account().to_owned();
        let changed = self
            .execute(
                SET_ACTION,
                &[&account, &key, &action.map(QuarantineAction::as_str)],
            )
            .await?;
        Ok(changed > 0)
    }

    /// The first column of `select` (a constant query taking the account as `$1`).
    async fn keys(&mut self, select: &str) -> Result<HashSet<String>, ClusterError> {
        let account = self.account().to_owned();
        let rows = self.query(select, &[&account]).await?;
        rows.iter()
            .map(|row| column(row, 0, &account, "?"))
            .collect()
    }

    /// Ends `key`'s submission mark, if any.
    async fn unmark(&mut self, key: &str) -> Result<(), ClusterError> {
        let account = self.account().to_owned();
        self.execute(
            "DELETE FROM ledger_submission WHERE account = $1 AND key = $2",
            &[&account, &key],
        )
        .await
        .map(|_| ())
    }

    /// Records a DELE of `key` (LIST size `size`, `listed` messages of that size) as
    /// unconfirmed, unless the message is already recorded as deleted.
    async fn set_unconfirmed(
        &mut self,
        key: &str,
        size: u64,
        listed: u32,
    ) -> Result<(), ClusterError> {
        let (account, epoch) = (self.account().to_owned(), self.epoch());
        let (size, listed) = (i64::try_from(size).unwrap_or(i64::MAX), i64::from(listed));
        self.execute(
            "UPDATE ledger_message SET unconfirmed_size = $3, unconfirmed_listed = $4, \
                epoch = $5 \
             WHERE account = $1 AND key = $2 AND deleted_at IS NULL",
            &[&account, &key, &size, &listed, &epoch],
        )
        .await
        .map(|_| ())
    }
}

/// Sets (`$3`, or clears with NULL) the action asked for quarantined message `$2` of
/// `$1`, at the database's time.
const SET_ACTION: &str = concat!(
    "UPDATE ledger_message SET quarantine_action = $3, action_at = t FROM ",
    clock!(),
    " WHERE account = $1 AND key = $2 AND state = 'quarantined'"
);

/// What the administrator reads and asks of the shared ledger, outside any lease: the
/// history, the quarantine and the stuck messages. The pass only acts on an asked action
/// under its lease.
impl Cluster {
    /// The last `limit` passes of `account`, newest first.
    pub async fn passes(
        &mut self,
        account: &str,
        limit: u32,
    ) -> Result<Vec<PassRow>, ClusterError> {
        let rows = self
            .read(
                "SELECT started_at, finished_at, outcome, reason, listed, delivered, deleted, \
                        left_over, rejected, deferred, skipped, quarantined \
                 FROM ledger_pass WHERE account = $1 ORDER BY id DESC LIMIT $2",
                &[&account, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let count = |i| -> Result<u32, ClusterError> {
                    failures(column(row, i, account, "-")?, account, "-")
                };
                let outcome: String = column(row, 2, account, "-")?;
                Ok(PassRow {
                    account: account.to_owned(),
                    started_at: column(row, 0, account, "-")?,
                    finished_at: column(row, 1, account, "-")?,
                    outcome: Outcome::parse(&outcome).ok_or_else(|| ClusterError::Corrupt {
                        account: account.to_owned(),
                        key: "-".into(),
                        detail: format!("unknown pass outcome {outcome:?}"),
                    })?,
                    reason: column(row, 3, account, "-")?,
                    counts: PassCounts {
                        listed: count(4)?,
                        delivered: count(5)?,
                        deleted: count(6)?,
                        left: count(7)?,
                        rejected: count(8)?,
                        deferred: count(9)?,
                        skipped: count(10)?,
                        quarantined: count(11)?,
                    },
                })
            })
            .collect()
    }

    /// The quarantined messages of `account` (or of every account), oldest first; those
    /// discarded are left out (their copy is gone).
    pub async fn quarantined(
        &mut self,
        account: Option<&str>,
    ) -> Result<Vec<QuarantineRow>, ClusterError> {
        let rows = self
            .read(
                "SELECT account, key, quarantine_path, last_reply, updated_at, \
                        quarantine_action \
                 FROM ledger_message \
                 WHERE state = 'quarantined' AND ($1::text IS NULL OR account = $1) \
                    AND (quarantine_action IS NULL OR quarantine_action <> 'discard') \
                 ORDER BY updated_at, account, key",
                &[&account],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let account: String = column(row, 0, "?", "?")?;
                let key: String = column(row, 1, &account, "?")?;
                let path: Option<String> = column(row, 2, &account, &key)?;
                let action: Option<String> = column(row, 5, &account, &key)?;
                Ok(QuarantineRow {
                    path: PathBuf::from(path.ok_or_else(|| ClusterError::Corrupt {
                        account: account.clone(),
                        key: key.clone(),
                        detail: "quarantined without a path".into(),
                    })?),
                    reason: column(row, 3, &account, &key)?,
                    since: column(row, 4, &account, &key)?,
                    action: action_of(action.as_deref(), &account, &key)?,
                    account,
                    key,
                })
            })
            .collect()
    }

    /// Asks (or with `None` withdraws) an action for a quarantined message; false when
    /// the ledger has no quarantined message of that account and key.
    pub async fn ask_quarantine_action(
        &mut self,
        account: &str,
        key: &str,
        action: Option<QuarantineAction>,
    ) -> Result<bool, ClusterError> {
        self.ready().await?;
        let result = (self.client)
            .execute(
                SET_ACTION,
                &[&account, &key, &action.map(QuarantineAction::as_str)],
            )
            .await;
        Ok(result.map_err(|e| self.fail(e))? > 0)
    }

    /// The failed messages of `account`, oldest first.
    pub async fn stuck(&mut self, account: &str) -> Result<Vec<StuckRow>, ClusterError> {
        let rows = self
            .read(
                "SELECT key, failure_kind, last_reply, failures, created_at FROM ledger_message \
                 WHERE account = $1 AND state = 'failed' ORDER BY created_at, key",
                &[&account],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let key: String = column(row, 0, account, "?")?;
                let kind: String = column(row, 1, account, &key)?;
                let reason: Option<String> = column(row, 2, account, &key)?;
                Ok(StuckRow {
                    kind: FailureKind::parse(&kind).ok_or_else(|| ClusterError::Corrupt {
                        account: account.to_owned(),
                        key: key.clone(),
                        detail: format!("unknown failure kind {kind:?}"),
                    })?,
                    reason: reason.unwrap_or_default(),
                    failures: failures(column(row, 3, account, &key)?, account, &key)?,
                    since: column(row, 4, account, &key)?,
                    key,
                })
            })
            .collect()
    }

    /// When the oldest message of `account` that failed and is still on the server first
    /// failed (unix seconds), if there is one.
    pub async fn oldest_failed_since(
        &mut self,
        account: &str,
    ) -> Result<Option<i64>, ClusterError> {
        let rows = self
            .read(
                "SELECT MIN(created_at) FROM ledger_message \
                 WHERE account = $1 AND state = 'failed' AND deleted_at IS NULL",
                &[&account],
            )
            .await?;
        match rows.first() {
            Some(row) => column(row, 0, account, "-"),
            None => Ok(None),
        }
    }

    /// `account`'s lease as the database has it: holder (while unexpired by its clock),
    /// until when, and its epoch; `None` when the account has no lease row yet.
    pub async fn lease_state(&mut self, account: &str) -> Result<Option<LeaseState>, ClusterError> {
        let rows = self
            .read(
                "SELECT CASE WHEN expires_at > now() THEN owner END, \
                        CASE WHEN expires_at > now() THEN expires_at END, epoch \
                 FROM lease WHERE account = $1",
                &[&account],
            )
            .await?;
        rows.first()
            .map(|row| {
                Ok(LeaseState {
                    holder: column(row, 0, account, "-")?,
                    until: column(row, 1, account, "-")?,
                    epoch: column(row, 2, account, "-")?,
                })
            })
            .transpose()
    }

    /// A query outside any transaction.
    async fn read(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, ClusterError> {
        self.ready().await?;
        let deadline = self.config.deadline();
        let result =
            super::error::bounded(deadline, "a ledger read", self.client.query(sql, params)).await;
        result.map_err(|e| self.fail(e))
    }
}

/// An account's lease as [`Cluster::lease_state`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The instance holding it, while unexpired.
    pub holder: Option<String>,
    /// Until when it is held.
    pub until: Option<std::time::SystemTime>,
    /// Raised by every claim.
    pub epoch: i64,
}

/// A stored quarantine action.
fn action_of(
    stored: Option<&str>,
    account: &str,
    key: &str,
) -> Result<Option<QuarantineAction>, ClusterError> {
    stored
        .map(|s| {
            QuarantineAction::parse(s).ok_or_else(|| ClusterError::Corrupt {
                account: account.to_owned(),
                key: key.to_owned(),
                detail: format!("unknown quarantine action {s:?}"),
            })
        })
        .transpose()
}

/// Column `i` of `row` as `T`; a value of another type is [`ClusterError::Corrupt`].
fn column<'r, T: FromSql<'r>>(
    row: &'r Row,
    i: usize,
    account: &str,
    key: &str,
) -> Result<T, ClusterError> {
    row.try_get(i).map_err(|e| ClusterError::Corrupt {
        account: account.to_owned(),
        key: key.to_owned(),
        detail: format!("column {i}: {e}"),
    })
}

/// A stored failure count as a `u32`.
fn failures(n: i64, account: &str, key: &str) -> Result<u32, ClusterError> {
    u32::try_from(n).map_err(|_| ClusterError::Corrupt {
        account: account.to_owned(),
        key: key.to_owned(),
        detail: format!("failure count {n} out of range"),
    })
}

/// A row of [`Fenced::statuses`]' query as a [`Status`].
fn decode(row: &Row, account: &str, key: &str) -> Result<Status, ClusterError> {
    let corrupt = |detail: String| ClusterError::Corrupt {
        account: account.to_owned(),
        key: key.to_owned(),
        detail,
    };
    let state: String = column(row, 1, account, key)?;
    match state.as_str() {
        "delivered" => {
            let at: Option<i64> = column(row, 2, account, key)?;
            let deleted: Option<i64> = column(row, 7, account, key)?;
            Ok(Status::Delivered {
                at: at.ok_or_else(|| corrupt("delivered_at is NULL".into()))?,
                deleted: deleted.is_some(),
            })
        }
        "failed" => {
            let count: i64 = column(row, 3, account, key)?;
            let last_reply: Option<String> = column(row, 4, account, key)?;
            let kind: String = column(row, 5, account, key)?;
            let kind = FailureKind::parse(&kind)
                .ok_or_else(|| corrupt(format!("failure_kind is {kind:?}")))?;
            Ok(Status::Failed {
                failures: failures(count, account, key)?,
                last_reply: last_reply.ok_or_else(|| corrupt("last_reply is NULL".into()))?,
                kind,
            })
        }
        "quarantined" => {
            let path: Option<String> = column(row, 6, account, key)?;
            Ok(Status::Quarantined {
                path: PathBuf::from(path.ok_or_else(|| corrupt("quarantine_path is NULL".into()))?),
            })
        }
        other => Err(corrupt(format!("unknown state {other:?}"))),
    }
}
