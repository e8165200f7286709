//! One retrieved message: checking it against its LIST size, deciding what happens to it
//! (deliver, defer, quarantine, delete a copy already delivered) and naming what is left.
//!
//! Must never: deliver or delete a message whose size does not match what LIST promised.

use super::session::broken_by;
use super::*;

/// Reads a quarantined copy back as a body (spooled past `threshold`).
pub(super) async fn read_copy(
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

impl Run<'_> {
    /// A refused DELE: the message was delivered and recorded, and the next pass deletes
    /// it. A refused DELE certainly did not apply: it must not count as one that may have.
    pub(super) async fn dele_refused(
        &mut self,
        msg: u32,
        reply: &popbridge_proto::pop3::Pop3Reply,
    ) {
        let a = self.account;
        if let Some(key) = self.deleting.remove(&msg) {
            if self.digest_deles.remove(&key) {
                if let Err(e) = self.store.clear_unconfirmed(&a.name, &key).await {
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
    pub(super) async fn name_unread(
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
    pub(super) async fn answer_pending(&mut self, txn: &mut Transaction) -> Result<(), Broken> {
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
                }) => self.dele_refused(msg, &reply).await,
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
    pub(super) async fn retrieved(
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
            self.mismatch(&item, body.len(), false).await;
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
    pub(super) async fn mismatch(&mut self, item: &Item, received: u64, overran: bool) {
        let what = if overran {
            format!("RETR ran past {received} octets")
        } else {
            format!("RETR gave {received} octets")
        };
        let failures =
            (self.record_suspect(item, &format!("{what}, LIST said {}", item.size))).await;
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
    pub(super) async fn suspect(&mut self, item: &Item, reason: &str) {
        self.record_suspect(item, reason).await;
        self.defer(item.label(), reason.to_string());
    }

    /// Marks `item` as tried alone this pass and records its failure as a mismatch (the
    /// ledger then has it retried last and alone); returns the failure count (0 when the
    /// ledger could not record it).
    pub(super) async fn record_suspect(&mut self, item: &Item, reason: &str) -> u32 {
        let a = self.account;
        self.tried_alone.insert(item.tried_id());
        let key = item.mismatch_key();
        (self.store)
            .record_failure_of(&a.name, &key, reason, FailureKind::Mismatch)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(account = %a.name, "ledger: {e}");
                0
            })
    }

    /// A message left on the server for a later pass (a temporary failure).
    pub(super) fn defer(&mut self, uid: String, reason: String) {
        self.defer_named(uid, reason, Named::default());
    }

    /// A message left on the server, refused (`failures`: the count towards quarantine, 0
    /// when the refusal is not the message's fault or could not be counted).
    pub(super) fn rejected(&mut self, uid: String, reply: String, failures: u32, named: Named) {
        self.summary.rejected += 1;
        self.emit_left(Event::Rejected {
            account: self.account.name.clone(),
            uid,
            reply,
            failures,
            named,
        });
    }

    /// [`Run::defer`] for a message whose header was read.
    pub(super) fn defer_named(&mut self, uid: String, reason: String, named: Named) {
        self.summary.deferred += 1;
        self.emit_left(Event::Deferred {
            account: self.account.name.clone(),
            uid,
            reason,
            named,
        });
    }

    /// Queues the DELE of message `msg`, recorded under `key`.
    pub(super) fn dele(&mut self, txn: &mut Transaction, msg: u32, key: String) {
        if msg == 0 {
            // A released message delivered from its local copy: not a message of this
            // session's listing (a later pass deletes the server's copy, if any).
            return;
        }
        if self.lease_lapsed() {
            // Recorded as delivered: whoever holds the account next deletes it.
            return;
        }
        txn.send_dele(msg);
        self.deleting.insert(msg, key);
    }

    /// One downloaded message: find its key, then submit, record, delete, or keep it.
    pub(super) async fn handle(&mut self, txn: &mut Transaction, item: Item, body: Body) {
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
                            match self.store.record_unconfirmed(&a.name, &dele).await {
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
    pub(super) fn listed_of(&self, size: u64) -> u32 {
        self.size_counts.get(&size).copied().unwrap_or(0)
    }

    pub(super) async fn quarantine(
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
            Ok(()) => (self.store.record_quarantined(&a.name, key, &path).await)
                .map_err(|e| format!("quarantine not recorded: the ledger failed: {e}")),
        };
        if let Err(reply) = kept {
            // Without a durable, recorded copy the message must stay where it is.
            self.rejected(key.into(), format!("{reply}; kept on the server"), 0, named);
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
