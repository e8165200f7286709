//! The group commit: accepted deliveries recorded in one transaction on the pass's own
//! ledger connection, on a blocking thread, and only then reported and DELE'd.
//!
//! Must never: DELE a delivery whose commit failed or is still under way.

use super::*;

/// A group commit under way on a blocking thread, through the pass's own ledger
/// connection: its deliveries are reported and DELE'd once it is durable.
pub(super) struct Committing {
    pub(super) batch: Vec<Done>,
    /// Per delivery, as [`crate::ledger::Delivery::dele`].
    pub(super) deles: Vec<Option<(u64, u32)>>,
    /// The keys it marks as submitting.
    pub(super) next: Vec<String>,
    /// The commit's task: the local ledger's connection comes back with its outcome (the
    /// cluster's commits through the store).
    pub(super) job: tokio::task::JoinHandle<(Option<Ledger>, Result<(), LedgerError>)>,
}

/// A delivery as the commit's blocking thread records it (owned: see
/// [`crate::ledger::Delivery`]).
pub(super) struct Record {
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) reply: String,
    pub(super) dele: Option<(u64, u32)>,
}

impl Record {
    /// `records` as the ledgers take them, and `marks` as keys.
    fn borrowed<'r>(
        records: &'r [Record],
        marks: &'r [String],
    ) -> (Vec<crate::ledger::Delivery<'r>>, Vec<&'r str>) {
        let deliveries = records
            .iter()
            .map(|r| crate::ledger::Delivery {
                key: &r.key,
                size: r.size,
                reply: &r.reply,
                dele: r.dele,
            })
            .collect();
        (deliveries, marks.iter().map(String::as_str).collect())
    }
}

/// A delivery the server accepted, waiting for its group commit.
pub(super) struct Done {
    pub(super) item: Item,
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) sender: String,
    pub(super) reply: String,
    pub(super) named: Named,
}

impl Run<'_> {
    /// A group commit point when the group is full: see [`Run::advance_commit`].
    pub(super) async fn maybe_commit(&mut self, txn: &mut Transaction) {
        if self.batch.len() >= GROUP_MAX {
            self.advance_commit(txn).await;
        }
    }

    /// A group commit point: the commit under way is finished (its deliveries reported and
    /// DELE'd), and the next one starts with what waits, running while the pass goes on.
    pub(super) async fn advance_commit(&mut self, txn: &mut Transaction) {
        self.finish_commit(txn).await;
        self.start_commit();
    }

    /// Every accepted delivery waiting is recorded, reported and DELE'd before this
    /// returns.
    pub(super) async fn commit(&mut self, txn: &mut Transaction) {
        self.advance_commit(txn).await;
        self.finish_commit(txn).await;
    }

    /// Starts the group commit of every accepted delivery waiting, with the submission
    /// marks of the messages after them (when none is under way: the caller finishes that
    /// one first): on a blocking thread through the pass's own connection to the local
    /// ledger, or as a task committing one fenced transaction of the cluster ledger.
    pub(super) fn start_commit(&mut self) {
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
        let writer = match (&self.store, self.writer.take()) {
            (Store::Cluster(c), _) => Ok(Err(c.clone())),
            (Store::Local(_), Some(w)) => Ok(Ok(w)),
            (Store::Local(l), None) => lock(l).reopen().map(Ok),
        };
        let writer = match writer {
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
        let job = match writer {
            Ok(mut writer) => tokio::task::spawn_blocking(move || {
                let (deliveries, marks) = Record::borrowed(&records, &marks);
                let committed = writer.record_deliveries(&account, &deliveries, &marks);
                (Some(writer), committed)
            }),
            Err(cluster) => tokio::spawn(async move {
                let (deliveries, marks) = Record::borrowed(&records, &marks);
                let committed = cluster
                    .record_deliveries(&account, &deliveries, &marks)
                    .await;
                (None, committed)
            }),
        };
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
    pub(super) async fn finish_commit(&mut self, txn: &mut Transaction) {
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
            if !self.recorded(txn, d, unconfirmed.is_some()).await {
                return;
            }
        }
    }

    /// After a simulated crash: the commit under way finishes, and nothing of it is
    /// reported or DELE'd.
    pub(super) async fn abandon_commit(&mut self) {
        if let Some(c) = self.committing.take() {
            let _ = self.join_commit(c.job).await;
        }
    }

    /// The outcome of a commit's blocking task; the pass's connection comes back with it.
    pub(super) async fn join_commit(
        &mut self,
        job: tokio::task::JoinHandle<(Option<Ledger>, Result<(), LedgerError>)>,
    ) -> Result<(), LedgerError> {
        match job.await {
            Ok((writer, committed)) => {
                self.writer = writer;
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
    pub(super) fn not_recorded(&mut self, batch: Vec<Done>, e: &LedgerError) {
        tracing::error!(account = %self.account.name, "ledger: {e}");
        for d in batch {
            self.defer_named(
                d.key,
                format!("delivered but the ledger failed: {e}"),
                d.named,
            );
        }
    }

    /// A delivery just recorded: counted, reported, then its DELE queued (`unconfirmed`:
    /// recorded as an unconfirmed DELE of a header-digest key). False when the crash fail
    /// point stopped the pass here.
    pub(super) async fn recorded(
        &mut self,
        txn: &mut Transaction,
        d: Done,
        unconfirmed: bool,
    ) -> bool {
        let a = self.account;
        let Done {
            item,
            key,
            size,
            sender,
            reply,
            ..
        } = d;
        self.marked.remove(&key);
        self.summary.delivered += 1;
        self.summary.delivered_octets = self.summary.delivered_octets.saturating_add(size);
        self.emit(Event::Delivered {
            account: a.name.clone(),
            uid: key.clone(),
            size,
            sender,
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
            if let Err(e) = self.store.clear_unconfirmed(&a.name, &key).await {
                tracing::warn!(account = %a.name, "ledger: {e}");
            }
        }
        true
    }
}
