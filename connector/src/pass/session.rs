//! A POP3 session of a pass: logging in, reading the listing into the slice of work it
//! holds, retrieving in a window, and ending the session (QUIT, or a blind QUIT or a drop
//! when replies stopped making sense).
//!
//! Must never: send a DELE that is not for a delivery the ledger holds, or read on after a
//! reply that did not make sense.

use super::item::read_copy;
use super::*;

/// How a POP3 session ends after `e`: replies that stopped making sense end it with a QUIT
/// sent blind; anything else (a broken or stalled connection) drops it.
pub(super) fn broken_by(e: Pop3Error) -> Broken {
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

impl Run<'_> {
    /// Connects and logs in with the password, or for an OAuth2 account with an access
    /// token: a cached one the server refuses (it expired early, or was revoked) is
    /// dropped, and one new token gets one more login; a token just obtained that is
    /// refused is an authentication failure.
    pub(super) async fn login(
        &mut self,
        settings: &pop3::Settings<'_>,
        credential: &Credential<'_>,
    ) -> Result<(Transaction, Sizes), AccountFailure> {
        let a = self.account;
        let tokens = match credential {
            Credential::Password(secret) => {
                let auth = pop3::connect(self.cx.dialer, settings)
                    .await
                    .map_err(pop3_failure)?;
                return match auth
                    .authenticate_and_list(a.auth, &a.username, secret)
                    .await
                {
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
        match auth
            .authenticate_and_list(a.auth, &a.username, &access.token)
            .await
        {
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
                auth.authenticate_and_list(a.auth, &a.username, &access.token)
                    .await
                    .map_err(|e| self.login_failure(e))
            }
            Err(e) => Err(self.login_failure(e)),
        }
    }

    /// A refused login: `auth.failed` when the server refused the credentials.
    pub(super) fn login_failure(&self, e: Pop3Error) -> AccountFailure {
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
    pub(super) fn token(
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
    pub(super) async fn pop3_session(
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
        let (mut txn, sizes) = self.login(settings, credential).await?;
        if restarts == 0 {
            self.summary.listed = sizes.len() as u32;
        }
        self.emit(Event::Listed {
            account: a.name.clone(),
            messages: self.summary.listed,
            octets: sizes.octets(),
        });
        let ledger_error = AccountFailure::of_ledger;
        // Read once per session. The marks are read here too: nothing before the first
        // message writes them.
        let opening = (self.store.opening(&a.name).await).map_err(ledger_error)?;
        (self.known, self.actions) = (opening.known, opening.actions);
        let shared = opening.shared;
        let slice = self.slice(&mut txn, &sizes, &shared).await?;
        self.summary.sliced = slice.not_held as u32;
        let unaccounted = slice.unaccounted;
        {
            let store = &self.store;
            (store.record_shared_uids(&a.name, &slice.fresh).await).map_err(ledger_error)?;
            if slice.unkeyed {
                // Header-digest keys: settle the DELEs an earlier session could not confirm,
                // against the whole listing's sizes.
                for (_, size) in sizes.iter() {
                    *self.size_counts.entry(size).or_default() += 1;
                }
                (store.resolve_unconfirmed(&a.name, &self.size_counts).await)
                    .map_err(ledger_error)?;
                self.known = (store.statuses(&a.name).await).map_err(ledger_error)?;
            }
            // The leftover marks are the first session's: a restarted session would find
            // this pass's own marks, which are not left over from an earlier pass (what
            // this pass sent is tracked where it went), while the earlier passes' marks
            // not yet used stay here.
            self.session_marks = opening.marks;
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
        if result.is_ok() && self.lease_lapsed() {
            // Another instance may hold the account by now: no QUIT, so that no deletion
            // of this session applies (RFC 1939: a dropped session deletes nothing).
            drop(txn);
            self.summary.aborted = Some(format!(
                "{LEASE_LAPSED}; the POP3 session was dropped without QUIT, nothing deleted"
            ));
            return Ok(None);
        }
        match result {
            Ok(()) => {
                if self.reached(Step::DuringQuit) {
                    txn.quit_and_vanish().await;
                    return Ok(None);
                }
                match txn.quit().await {
                    Ok(_) => self.confirm_deleted().await,
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
                let quit = if self.lease_lapsed() {
                    drop(txn);
                    format!("{LEASE_LAPSED}; connection dropped without QUIT")
                } else if self.digest_deles.is_empty() {
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
    pub(super) async fn slice(
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
        self.forget_gone(&seen).await;
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
    pub(super) fn window(&self, sizes: &Sizes) -> Slice {
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
    pub(super) async fn forget_gone(&mut self, seen: &HashSet<String>) {
        let a = &self.account.name;
        let retention =
            i64::try_from(self.cx.config.ledger_retention.as_secs()).unwrap_or(i64::MAX);
        let result = (self.store)
            .record_listing_and_prune(a, seen, retention)
            .await;
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
    pub(super) async fn release(&mut self, txn: &mut Transaction) -> Result<(), Broken> {
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
                let cleared = self.store.set_quarantine_action(&a.name, &key, None).await;
                if let Err(e) = cleared {
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

    pub(super) async fn confirm_deleted(&mut self) {
        let keys: Vec<String> = self.deleting.values().cloned().collect();
        self.summary.deleted = keys.len() as u32;
        if let Err(e) = self.store.record_deleted(&self.account.name, &keys).await {
            tracing::warn!(account = %self.account.name, "ledger: {e}");
        }
    }

    /// Ends this pass's submission marks, except those naming a message the SMTP server
    /// may have without this pass knowing: its final data went out without a reply, or an
    /// earlier one's did and the message was not submitted again.
    pub(super) async fn end_marks(&mut self) {
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
        if let Err(e) = self
            .store
            .clear_submissions(&self.account.name, &keep)
            .await
        {
            tracing::warn!(account = %self.account.name, "ledger: {e}");
        }
    }

    /// True when this session's next command is its QUIT, which may then go out with the
    /// last DELEs: no released message is waiting to be delivered in this session, and no
    /// DELE in flight is for a message known by header digest alone (whether the server
    /// refused one of those must be seen before deletions may apply, see `pop3_session`).
    fn quit_comes_next(&self) -> bool {
        let releases = !self.releases_done
            && (self.actions.values()).any(|act| *act == QuarantineAction::Release);
        !releases && self.digest_deles.is_empty() && self.crashed.is_none()
    }

    pub(super) async fn process(
        &mut self,
        txn: &mut Transaction,
        work: Vec<Item>,
    ) -> Result<(), Broken> {
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
            // suspect goes alone, once everything before it is answered. The window is
            // topped up once an eighth of it is free, not after every message: RETRs then
            // go out several to a write and the server wakes once for them, while a
            // distant server still has nearly the whole window to answer.
            let low = in_flight_retr == 0
                || (in_flight_retr <= window - window / 8
                    && retr_bytes <= window_bytes - window_bytes / 8);
            while low
                && in_flight_retr < window
                && !self.cx.stop.is_stopped()
                && !self.lease_lapsed()
            {
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
                        txn.send_retr(item.n, item.size, bound(item.size));
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
            // Only DELE replies owed, and nothing left to retrieve: they are read with the
            // last commit's, below, rather than waited for before it.
            let retrieved_all = in_flight_retr == 0 && queue.peek().is_none();
            if txn.in_flight() == 0
                || (self.suspects_waiting && in_flight_retr == 0)
                || retrieved_all
            {
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
                        self.suspect(item, &reason).await;
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
                }) => self.dele_refused(msg, &reply).await,
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
                        self.mismatch(item, limit, true).await;
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
                        self.suspect(item, &e.to_string()).await;
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
                if self.quit_comes_next() {
                    txn.queue_quit();
                }
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
}
