//! Submitting messages: the SMTP session (opened and replaced, bounded), messages in
//! flight ahead of their replies and answered in order, and delivery into a pickup folder.
//!
//! Must never: send a message's final data again in a pass after its reply was lost, or
//! count a delivery before the server (or the pickup folder) accepted it.

use super::*;

impl Run<'_> {
    /// The limit a message must fit: the smaller of the configured one and the SMTP
    /// server's SIZE (learnt by connecting), or the fixed SBS limit.
    pub(super) async fn limit(&mut self) -> Result<Option<u64>, SmtpError> {
        if self.pickup.is_some() {
            // No SMTP server to ask: the configured limits alone, Exchange's included (the
            // pickup service hands the message to the same categoriser that bounces it).
            // Under sbs2008: the old connector's fixed limit.
            return Ok(crate::limits::effective_limit(
                self.cx.config,
                self.account,
                None,
            ));
        }
        let server = self.session().await?.ext.max_size();
        // The smallest of every limit on the way, Exchange's after-acceptance limits
        // included: what the categoriser would bounce after a 250 is never downloaded.
        // (Under sbs2008: the receive connector's SIZE, as the old connector read it.)
        Ok(crate::limits::effective_limit(
            self.cx.config,
            self.account,
            server,
        ))
    }

    /// The SMTP session, connecting (or reconnecting before the error limit) as needed.
    pub(super) async fn session(&mut self) -> Result<&mut SmtpClient, SmtpError> {
        let max = self.cx.config.limits.smtp_max_protocol_errors;
        // Each transaction can add up to two protocol errors (MAIL and RCPT refused):
        // replace the session while two more still fit under the server's limit.
        let worn = self
            .smtp
            .as_ref()
            .is_some_and(|s| s.protocol_errors() + 2 >= max);
        if worn && self.policy.reconnect_before_error_limit {
            if let Some(s) = self.smtp.take() {
                let errors = s.protocol_errors();
                s.quit().await;
                self.emit(Event::Reconnected {
                    account: self.account.name.clone(),
                    reason: format!(
                        "{errors} protocol errors in this session (server limit {max})"
                    ),
                });
            }
        }
        if self.smtp.is_none() {
            let cfg = self.cx.config;
            let t = cfg
                .transport
                .smtp()
                .expect("a pickup folder never opens an SMTP session");
            let s = smtp::Settings::for_transport(cfg, t, self.policy.pipelining)
                .map_err(SmtpError::Tls)?;
            self.smtp = Some(SmtpClient::connect(self.cx.dialer, &s).await?);
            self.smtp_gen += 1;
        }
        Ok(self.smtp.as_mut().expect("connected above"))
    }

    /// The most messages submitted per pass.
    pub(super) fn cap(&self) -> usize {
        self.policy.max_per_session
    }

    /// Submits a downloaded message under `key` and acts on the outcome.
    pub(super) async fn deliver(
        &mut self,
        txn: &mut Transaction,
        item: &Item,
        key: String,
        body: Body,
    ) {
        let cfg = self.cx.config;
        let a = self.account;
        self.attempts += 1;
        let info = message::parse_headers(body.head(), crate::body::HEAD_MAX);
        let named = Named::from_info(&info);
        let smtputf8 = self.smtp.as_ref().is_some_and(|s| s.ext.smtputf8);
        let sender = message::envelope_sender(
            &info,
            cfg.limits.default_domain.as_deref(),
            &cfg.limits.fallback_sender,
            smtputf8,
            self.policy.repair_senders,
        );
        if let Some(r) = &sender.repair {
            self.emit(Event::SenderRepaired {
                account: a.name.clone(),
                uid: key.clone(),
                original: r.original.clone(),
                used: sender.address.clone(),
                reason: r.reason.clone(),
            });
        }
        let recipients = match &a.catch_all {
            Some(c) => {
                let r = routing::recipients(&info, c, &a.deliver_to);
                tracing::debug!(account = %a.name, uid = %key, source = r.source, "recipients {:?}", r.recipients);
                r.recipients
            }
            None => vec![a.deliver_to.clone()],
        };
        // The `for` clause names the recipient only when there is one: with several (some
        // maybe Bcc'd), each would see the others.
        let for_rcpt = match recipients.as_slice() {
            [one] => one.as_str(),
            _ => "",
        };
        let prefix = if cfg.received_header {
            message::received_header(
                &a.host,
                cfg.transport.helo(),
                &key,
                for_rcpt,
                SystemTime::now(),
            )
        } else {
            String::new()
        };
        let env = match Envelope::new(&sender.address, &recipients) {
            Ok(env) => env,
            Err(e) => {
                self.defer_named(key, format!("not submitted: {e}"), named);
                return;
            }
        };
        if self.pickup.is_some() {
            return self
                .deliver_pickup(txn, item, key, &env, prefix.as_bytes(), body, named)
                .await;
        }
        if self.unknown.contains(&key) {
            // An earlier session of this pass sent its final data and never had a reply.
            self.defer_named(
                key,
                "the server may have accepted it earlier in this pass: not sent again in this \
                 pass"
                    .into(),
                named,
            );
            return;
        }
        if self.leftover.remove(&key) {
            self.emit(Event::PossibleDuplicate {
                account: a.name.clone(),
                uid: key.clone(),
                message_id: info.message_id.clone(),
            });
        }
        if self.marking.contains(&key) {
            // Marked by the commit under way: durable once it is.
            self.finish_commit(txn).await;
        }
        if !self.marked.contains(&key) {
            // Durable before the final data goes out (normally done ahead, in the commit
            // of earlier deliveries).
            if let Err(e) = self.mark_ahead(&key).await {
                tracing::error!(account = %a.name, "ledger: {e}");
                self.defer_named(key, format!("not submitted: the ledger failed: {e}"), named);
                return;
            }
        }
        self.retry.push_back(Flight {
            item: item.clone(),
            key,
            body,
            env,
            prefix: prefix.into_bytes(),
            named,
            gen: 0,
        });
        // This message, then any whose session was lost meanwhile.
        while let Some(f) = self.retry.pop_front() {
            if self.crashed.is_some() {
                return;
            }
            self.dispatch(txn, f).await;
        }
    }

    /// Marks `key` as submitting, with the messages after it that the SMTP session may
    /// take before the next commit, in one commit.
    pub(super) async fn mark_ahead(&mut self, key: &str) -> Result<(), LedgerError> {
        let mut keys = vec![key.to_string()];
        keys.extend(self.upcoming(key));
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        (self.store.begin_submissions(&self.account.name, &refs)).await?;
        self.marked.extend(keys);
        Ok(())
    }

    /// The UID keys not yet marked among those after `key` in this session's order that
    /// the SMTP session may take before a commit after the next one: the window it takes
    /// ahead of its replies (one when it takes none) and [`MARKS_AHEAD`] more.
    pub(super) fn upcoming(&self, key: &str) -> Vec<String> {
        let ahead = match self.smtp.as_ref() {
            Some(s) if s.can_pipeline() => self.room(s).max(1),
            _ => 1,
        };
        let Some(&at) = self.order_at.get(key) else {
            return Vec::new();
        };
        self.order[at + 1..]
            .iter()
            .take(ahead + MARKS_AHEAD)
            .filter(|k| {
                !self.marked.contains(*k)
                    && !self.marking.contains(*k)
                    && !self.unknown.contains(*k)
            })
            .cloned()
            .collect()
    }

    /// How many transactions may be in flight on `s`: within the window, and such that
    /// even if every one of them were refused as badly as can be, two more protocol errors
    /// would still fit under the server's limit (the margin [`Run::session`] keeps).
    pub(super) fn room(&self, s: &SmtpClient) -> usize {
        let max = self.cx.config.limits.smtp_max_protocol_errors;
        let free = max.saturating_sub(2 + s.protocol_errors());
        ((free / ERRORS_PER_TRANSACTION) as usize).min(SMTP_WINDOW)
    }

    /// Submits one message: ahead of the replies when the session allows it (one
    /// recipient, a message of this POP3 session, room under the error budget and the
    /// window), otherwise on its own once everything in flight is answered.
    pub(super) async fn dispatch(&mut self, txn: &mut Transaction, mut f: Flight) {
        if self.stop_smtp.is_none() && self.lease_lapsed() {
            self.stop_smtp = Some(LEASE_LAPSED.into());
        }
        if f.env.to.len() == 1 && f.item.n != 0 {
            loop {
                if let Some(why) = self.stop_smtp.clone() {
                    self.defer_named(f.key, why, f.named);
                    return;
                }
                let Some(s) = self.smtp.as_ref() else { break };
                // With room for one only, nothing would overlap: one at a time then, which
                // also keeps a refused sender from costing a refused data transfer.
                let room = self.room(s);
                if !s.can_pipeline_body(&f.body) || room < 2 {
                    break;
                }
                let held: u64 = self.flights.iter().map(|x| x.body.len()).sum();
                let fits = self.flights.is_empty() || held + f.body.len() <= SMTP_WINDOW_BYTES;
                if self.flights.len() < room && fits {
                    f.gen = self.smtp_gen;
                    let s = self.smtp.as_mut().expect("checked above");
                    match s.submit(&f.env, &f.prefix, &f.body).await {
                        Ok(()) => self.flights.push_back(f),
                        Err(e) => {
                            // The messages written before it are answered first.
                            self.settle_flights(txn).await;
                            if self.crashed.is_none() {
                                self.settled(txn, f, Err(e)).await;
                                self.tidy();
                            }
                        }
                    }
                    return;
                }
                self.settle_one(txn).await;
                if self.crashed.is_some() {
                    return;
                }
            }
        }
        // One at a time: whatever is in flight is answered first.
        self.settle_flights(txn).await;
        if self.crashed.is_some() {
            return;
        }
        if let Some(why) = self.stop_smtp.clone() {
            self.defer_named(f.key, why, f.named);
            return;
        }
        self.send_serial(txn, f).await;
    }

    /// Submits one message and waits for its outcome.
    pub(super) async fn send_serial(&mut self, txn: &mut Transaction, mut f: Flight) {
        loop {
            match self.session().await {
                Ok(_) => break,
                Err(e) => {
                    // No session to submit in: not this message's doing.
                    self.smtp = None;
                    let why = format!("no SMTP session: {e}");
                    if self.replace_session(&why) {
                        continue;
                    }
                    self.defer_named(f.key, why, f.named);
                    return;
                }
            }
        }
        f.gen = self.smtp_gen;
        let s = self.smtp.as_mut().expect("connected above");
        let r = s.send(&f.env, &f.prefix, &f.body).await;
        self.settled(txn, f, r).await;
        self.tidy();
        self.maybe_commit(txn).await;
    }

    /// Reads the outcome of the oldest message in flight and acts on it; when its session
    /// turned out lost, the rest of that session's messages too, then the session goes.
    pub(super) async fn settle_one(&mut self, txn: &mut Transaction) {
        let (Some(f), Some(s)) = (self.flights.pop_front(), self.smtp.as_mut()) else {
            return;
        };
        let r = s.outcome().await;
        self.settled(txn, f, r).await;
        if self.lost_gen == self.smtp_gen {
            while let (Some(f), Some(s)) = (self.flights.pop_front(), self.smtp.as_mut()) {
                if self.crashed.is_some() {
                    return;
                }
                let r = s.outcome().await;
                self.settled(txn, f, r).await;
            }
        }
        self.tidy();
        self.maybe_commit(txn).await;
    }

    /// Reads the outcome of every message in flight.
    pub(super) async fn settle_flights(&mut self, txn: &mut Transaction) {
        while !self.flights.is_empty() && self.crashed.is_none() {
            self.settle_one(txn).await;
        }
    }

    /// Everything sent is answered and every acceptance committed: before the POP3
    /// session ends (`dele` false when it broke: nothing more is DELE'd in it).
    pub(super) async fn settle_all(&mut self, txn: &mut Transaction, dele: bool) {
        self.hold_deles = !dele;
        loop {
            self.settle_flights(txn).await;
            let Some(f) = self.retry.pop_front() else {
                break;
            };
            if self.crashed.is_some() {
                break;
            }
            self.dispatch(txn, f).await;
        }
        if self.crashed.is_none() {
            self.commit(txn).await;
        }
        self.hold_deles = false;
    }

    /// Drops an SMTP session that cannot take another message, once nothing of it is in
    /// flight.
    pub(super) fn tidy(&mut self) {
        let spent = self
            .smtp
            .as_ref()
            .is_some_and(|s| !s.is_usable() || self.lost_gen == self.smtp_gen);
        if spent && self.flights.is_empty() {
            self.smtp = None;
        }
    }

    /// The SMTP session `gen` is lost: counted once (see [`Run::replace_session`]);
    /// true when another may be opened for the messages it did not take.
    pub(super) fn session_lost(&mut self, gen: u32, reason: &str) -> bool {
        if gen == self.smtp_gen && self.lost_gen != gen {
            self.lost_gen = gen;
            self.lost_may_retry = self.replace_session(reason);
        }
        self.lost_may_retry && self.stop_smtp.is_none()
    }

    /// Acts on a message's SMTP outcome: accepted (waits for its group commit), refused,
    /// unknown, or to be submitted again in a new session.
    pub(super) async fn settled(
        &mut self,
        txn: &mut Transaction,
        f: Flight,
        attempt: Result<smtp::Accepted, SmtpError>,
    ) {
        let a = self.account;
        let Flight {
            item,
            key,
            body,
            env,
            named,
            gen,
            ..
        } = f;
        match attempt {
            Ok(accepted) => {
                if self.reached(Step::AfterAccept) {
                    return;
                }
                self.batch.push(Done {
                    item,
                    key,
                    size: body.len(),
                    sender: env.from.into(),
                    reply: accepted.reply.first_line(),
                    named,
                });
            }
            Err(e) if e.outcome_unknown() => {
                // The server may have it: never sent again in this pass; the mark stays
                // and names it as a possible duplicate when it is sent next time.
                self.unknown.insert(key.clone());
                self.defer_named(
                    key,
                    format!("{e}; the server may have accepted it: not sent again in this pass"),
                    named,
                );
                self.session_lost(gen, &e.to_string());
            }
            Err(e) if e.is_local() => {
                // The message could not be read back: the connection was dropped before
                // its end, so the server does not have it.
                self.lost_gen = gen;
                self.defer_named(key, e.to_string(), named);
            }
            Err(e) if e.session_lost() => {
                if self.session_lost(gen, &e.to_string()) {
                    if matches!(e, SmtpError::Dropped { .. }) {
                        // Most likely never processed, yet without a reply: announced.
                        self.emit(Event::PossibleDuplicate {
                            account: a.name.clone(),
                            uid: key.clone(),
                            message_id: message::parse_headers(body.head(), crate::body::HEAD_MAX)
                                .message_id,
                        });
                    }
                    self.retry.push_back(Flight {
                        item,
                        key,
                        body,
                        env,
                        prefix: f.prefix,
                        named,
                        gen: 0,
                    });
                    return;
                }
                self.defer_named(key, e.to_string(), named);
            }
            Err(e) if e.is_permanent() && e.is_message_refusal() => {
                let reply = e
                    .reply()
                    .map(|r| r.first_line())
                    .unwrap_or_else(|| e.to_string());
                let recorded = (self.store)
                    .record_failure_of(&a.name, &key, &reply, FailureKind::Refused)
                    .await;
                self.marked.remove(&key);
                let failures = match recorded {
                    Ok(n) => n,
                    Err(le) => {
                        // Without a count the message can never be quarantined safely: it
                        // stays on the server, refused.
                        tracing::error!(account = %a.name, "ledger: {le}");
                        self.rejected(
                            key,
                            format!("{reply} (not counted: the ledger failed: {le})"),
                            0,
                            named,
                        );
                        return;
                    }
                };
                // The old connector never gave up on a message: no quarantine under sbs2008.
                if self.policy.quarantine_after.is_some_and(|n| failures >= n) {
                    self.quarantine(txn, item.n, &key, &body, named).await;
                } else {
                    self.rejected(key, reply, failures, named);
                }
            }
            Err(e) => self.defer_named(key, e.to_string(), named),
        }
    }

    /// After the SMTP session was lost: true when another may be opened this pass (bounded
    /// by `smtp_reconnects`, none under sbs2008); otherwise every later message waits for
    /// the next pass.
    pub(super) fn replace_session(&mut self, reason: &str) -> bool {
        let max = self.policy.smtp_reconnects;
        if self.reconnects < max {
            self.reconnects += 1;
            self.emit(Event::Reconnected {
                account: self.account.name.clone(),
                reason: reason.to_string(),
            });
            return true;
        }
        self.stop_smtp = Some(reason.to_string());
        false
    }

    /// Writes a downloaded message into the pickup folder and acts on the outcome (the
    /// module header says how failures are handled).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn deliver_pickup(
        &mut self,
        txn: &mut Transaction,
        item: &Item,
        key: String,
        env: &Envelope,
        prefix: &[u8],
        body: Body,
        named: Named,
    ) {
        let a = self.account;
        let Some(pickup) = self.pickup.clone() else {
            return;
        };
        let to: Vec<String> = env.to.iter().map(ToString::to_string).collect();
        let outcome = pickup
            .deliver(&a.name, &key, &env.from, &to, prefix, &body)
            .await;
        let reply = match outcome {
            Ok(PickupOutcome::Delivered(path)) => format!("written to {}", path.display()),
            Ok(PickupOutcome::AlreadyThere(path)) => format!(
                "already written to {} by an interrupted earlier attempt",
                path.display()
            ),
            Ok(PickupOutcome::Failed { path, error }) => {
                self.rejected(
                    key,
                    format!(
                        "pickup failed: {error}; kept on the server, a copy is in the \
                     failed-mail folder: {}",
                        path.display()
                    ),
                    0,
                    named,
                );
                return;
            }
            Err(e) => {
                self.rejected(
                    key,
                    format!("pickup failed: {e}; kept on the server"),
                    0,
                    named,
                );
                return;
            }
        };
        // Published but not recorded (ledger failure): the journal marker stays, so the next
        // pass finds the message published and records it without writing it again.
        let done = Done {
            item: item.clone(),
            key: key.clone(),
            size: body.len(),
            sender: env.from.to_string(),
            reply,
            named,
        };
        if self.delivered(txn, done).await {
            pickup.settle(&a.name, &key).await;
        }
    }

    /// A delivery the server (or the pickup folder) accepted: record it durably (with the
    /// next message's submission mark, and for a digest key its coming DELE), report it,
    /// then queue its DELE. This order is the no-loss, no-duplicate point. Returns false
    /// when the ledger failed: the message then stays on the server (`named` names it).
    pub(super) async fn delivered(&mut self, txn: &mut Transaction, d: Done) -> bool {
        let a = self.account;
        let (item, key) = (&d.item, &d.key);
        let dele = !a.leave_on_server;
        let along = Along {
            next: item.next.as_deref().filter(|_| self.pickup.is_none()),
            dele: (item.key.is_none() && dele).then(|| (item.size, self.listed_of(item.size))),
        };
        let recorded = (self.store)
            .record_delivered_then(&a.name, key, d.size, &d.reply, along)
            .await;
        if let Err(e) = recorded {
            // Delivered but not recorded: the message stays on the server rather than risk
            // losing track; its submission mark names it as a possible duplicate next time.
            tracing::error!(account = %a.name, "ledger: {e}");
            self.defer_named(
                d.key,
                format!("delivered but the ledger failed: {e}"),
                d.named,
            );
            return false;
        }
        if let Some(next) = along.next {
            self.marked.insert(next.to_string());
        }
        let unconfirmed = along.dele.is_some();
        self.recorded(txn, d, unconfirmed).await;
        true
    }
}
