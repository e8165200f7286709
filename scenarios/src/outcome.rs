//! What became of each message: the POP3 server's final state and the SMTP capture,
//! matched message by message, with the reply or event that explains it.
//!
//! Matching: a generated message by its `Message-ID` in the captured data; a raw fixture
//! by the `id <uid>` of the connector's `Received:` header, else by its exact bytes at the
//! end of the captured data. Transactions refused before their data (MAIL FROM refused,
//! a faulted end of data) carry no bytes: such a transaction is attributed by its MAIL FROM
//! when exactly one message's header sender (Return-Path, else Sender, else From) is that
//! address, or exactly one of those messages was not delivered; otherwise it is listed as
//! `552 for one of a, b, c` and is each candidate's reason when nothing else explains it
//! (never "never submitted"). The connector's events (account and UID) explain those
//! messages too.
//!
//! Decision, per message copy, first match wins:
//! 1. `delivered`: at least one transaction answered 2xx at the end of data and delivered
//!    to every recipient;
//! 2. `ndr`: accepted (250) but bounced by the categoriser for a recipient;
//! 3. `quarantined`: a `message.quarantined` event whose durable copy exists;
//! 4. `deleted`: gone from the POP3 server (not in its final maildrop);
//! 5. `rejected`: still on the server, refused permanently (5xx) in an SMTP session (a
//!    matched refused transaction or a `message.rejected` event);
//! 6. `left`: still on the server, never refused permanently (oversize, deferred after a
//!    4xx or a lost session, never fetched).
//!
//! `lost` counts copies gone from the POP3 server without a good delivery and without a
//! quarantine copy; `duplicates` counts accepted transactions beyond the first per copy.
//!
//! Must never: contain connector logic (it reads the mocks and the events only).

use std::collections::{BTreeMap, HashMap};

use mock_pop3::MaildropReport;
use mock_smtp::{Delivery, Outcome as SmtpOutcome, Received};
use popbridge::events::Event;
use serde::Serialize;

use crate::generate::Planned;
use crate::schema::Outcome;
use crate::world::{Observed, Redactor};

/// What became of one message copy.
#[derive(Debug, Clone, Serialize)]
pub struct MessageOutcome {
    /// The label it was declared with.
    pub label: String,
    /// Its own name (`label` or `label-n`).
    pub name: String,
    /// The outcome.
    pub outcome: Outcome,
    /// The reply or event that explains it.
    pub why: String,
    /// Envelope recipients it was delivered to (good deliveries only).
    pub recipients: Vec<String>,
    /// Transactions answered 2xx at the end of its data.
    pub accepted: u32,
    /// Extra acceptances the connector could have avoided: an acceptance before the last
    /// whose reply the connector saw (the server recorded it as acknowledged).
    pub unexplained: u32,
    /// Still in the POP3 maildrop at the end.
    pub on_server: bool,
    /// Counted as lost.
    pub lost: bool,
}

/// A run's global counts: lost copies and extra deliveries (the report's `lost`,
/// `duplicates` and `unexplained`, flattened into it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Copies gone from the POP3 server without a good delivery (nor a quarantine copy).
    pub lost: u64,
    /// Accepted transactions beyond the first, summed over copies.
    pub duplicates: u64,
    /// Of those, the ones the protocol did not make unavoidable (see
    /// [`MessageOutcome::unexplained`]).
    pub unexplained: u64,
}

/// Every message's outcome and the global counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decided {
    /// Per message copy, in declaration order.
    pub messages: Vec<MessageOutcome>,
    /// Lost copies and extra deliveries.
    #[serde(flatten)]
    pub totals: Totals,
    /// Captured transactions no message could be matched to, described.
    pub unmatched: Vec<String>,
}

/// Header fields of a message: (lower-case name, unfolded value), in order.
fn header_fields(data: &[u8]) -> Vec<(String, String)> {
    // The header ends at the first empty line (CRLF CRLF or LF LF), within 256 KiB.
    let head = &data[..data.len().min(256 * 1024)];
    let end = head
        .windows(2)
        .enumerate()
        .find_map(|(i, w)| match w {
            b"\n\n" => Some(i + 1),
            b"\n\r" if head.get(i + 2) == Some(&b'\n') => Some(i + 1),
            _ => None,
        })
        .unwrap_or(head.len());
    let text = String::from_utf8_lossy(&head[..end]);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

/// The UID the connector's own `Received:` header names (`... with POP3 id UID ...`).
fn received_id(fields: &[(String, String)]) -> Option<String> {
    let (_, v) = fields.iter().find(|(n, _)| n == "received")?;
    if !v.contains("(Popbridge)") {
        return None;
    }
    let mut words = v.split_whitespace();
    while let Some(w) = words.next() {
        if w == "id" {
            return words.next().map(|s| s.trim_end_matches(';').to_string());
        }
    }
    None
}

/// The address of the first of Return-Path, Sender, From (the part in angle brackets, or
/// the whole value).
fn header_sender(fields: &[(String, String)]) -> Option<String> {
    let (_, v) = ["return-path", "sender", "from"]
        .iter()
        .find_map(|want| fields.iter().find(|(n, _)| n == want))?;
    Some(match (v.find('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].trim().to_string(),
        _ => v.trim().to_string(),
    })
}

/// A UID as the connector writes it into `Received:` (printable, no specials, 70 max).
fn received_form(uid: &str) -> String {
    uid.chars()
        .filter(|&c| ('\x21'..='\x7e').contains(&c) && !"()<>;\"\\".contains(c))
        .take(70)
        .collect()
}

fn strip_eol(d: &[u8]) -> &[u8] {
    let mut d = d;
    while let Some(rest) = d.strip_suffix(b"\n") {
        d = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    d
}

/// How the acceptances of one message (or of its byte-identical copies) divide into
/// first deliveries and duplicates: `(unavoidable, avoidable)` duplicates. `accepted` is
/// in the server's order; `copies` is how many deliveries were owed. A duplicate is
/// unavoidable when an earlier acceptance went unconfirmed (the connector never saw it),
/// each such acceptance explaining one.
pub fn duplicates_of(accepted: &[&Received], copies: usize) -> (u32, u32) {
    duplicates_recorded(accepted, copies, None)
}

/// [`duplicates_of`], knowing also how many deliveries the connector `recorded` (its
/// `message.delivered` events, which come once the delivery is committed): an acceptance it
/// saw but never recorded (it crashed while the acceptance waited for its group commit)
/// explains one later duplicate too, like an unconfirmed one.
pub fn duplicates_recorded(
    accepted: &[&Received],
    copies: usize,
    recorded: Option<usize>,
) -> (u32, u32) {
    let mut owed = copies;
    let mut unseen = 0u32;
    // Seen acceptances beyond those recorded: taken to be the earliest (a crash before the
    // commit, then a later pass that recorded the delivery).
    let seen = accepted.iter().filter(|t| !t.unconfirmed()).count();
    let mut unrecorded = recorded.map_or(0, |r| seen.saturating_sub(r));
    let (mut unavoidable, mut avoidable) = (0u32, 0u32);
    for t in accepted {
        if owed > 0 {
            owed -= 1;
        } else if unseen > 0 {
            unseen -= 1;
            unavoidable += 1;
        } else {
            avoidable += 1;
        }
        if t.unconfirmed() {
            unseen += 1;
        } else if unrecorded > 0 {
            unrecorded -= 1;
            unseen += 1;
        }
    }
    (unavoidable, avoidable)
}

/// Which planned message each transaction belongs to, and for a transaction without data
/// that several messages' senders fit, those candidates (attributed to the one that
/// remains when every other was delivered).
fn match_transactions(planned: &[Planned], captured: &[Received]) -> Attribution {
    let by_data = match_by_data(planned, captured);
    let mut by_sender: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in planned.iter().enumerate() {
        if let Some(a) = header_sender(&header_fields(&p.data)) {
            by_sender.entry(a.to_ascii_lowercase()).or_default().push(i);
        }
    }
    let delivered: std::collections::HashSet<usize> = by_data
        .iter()
        .zip(captured)
        .filter(|(_, t)| t.outcome == SmtpOutcome::Accepted && t.delivered())
        .filter_map(|(m, _)| *m)
        .collect();
    let mut out = Attribution {
        to: by_data,
        candidates: vec![Vec::new(); captured.len()],
    };
    for (k, t) in captured.iter().enumerate() {
        if out.to[k].is_some() || !t.data.is_empty() {
            continue;
        }
        let Some(all) = by_sender.get(&t.mail_from.to_ascii_lowercase()) else {
            continue;
        };
        let open: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| !delivered.contains(i))
            .collect();
        match open.as_slice() {
            [one] => out.to[k] = Some(*one),
            [] => out.candidates[k] = all.clone(),
            _ => out.candidates[k] = open,
        }
    }
    out
}

/// Per captured transaction: the message it belongs to, or the messages it may belong to.
struct Attribution {
    /// The message each transaction is attributed to.
    to: Vec<Option<usize>>,
    /// For an unattributed transaction without data: the messages whose sender it carries
    /// (every one not delivered; all of them when each was), empty when none fits.
    candidates: Vec<Vec<usize>>,
}

/// Which planned message each transaction belongs to by its data. Byte-identical copies
/// share a Message-ID: their acceptances are handed to the copies in turn. A transaction
/// without data is attributed when exactly one message's sender is its MAIL FROM.
fn match_by_data(planned: &[Planned], captured: &[Received]) -> Vec<Option<usize>> {
    let mut by_id: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in planned.iter().enumerate() {
        if let Some(m) = p.message_id.as_deref() {
            by_id.entry(m).or_default().push(i);
        }
    }
    let mut turn: HashMap<&str, usize> = HashMap::new();
    let mut by_uid: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in planned.iter().enumerate() {
        by_uid.entry(received_form(&p.uid)).or_default().push(i);
    }
    let mut by_sender: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in planned.iter().enumerate() {
        if let Some(a) = header_sender(&header_fields(&p.data)) {
            by_sender.entry(a.to_ascii_lowercase()).or_default().push(i);
        }
    }
    captured
        .iter()
        .map(|t| {
            if t.data.is_empty() {
                return match by_sender.get(&t.mail_from.to_ascii_lowercase()) {
                    Some(v) if v.len() == 1 => Some(v[0]),
                    _ => None,
                };
            }
            let fields = header_fields(&t.data);
            for (_, v) in fields.iter().filter(|(n, _)| n == "message-id") {
                if let Some((id, copies)) = by_id.get_key_value(v.as_str()) {
                    if copies.len() > 1 {
                        // A copy the connector's trace header names (by its UID) is that
                        // copy; otherwise they take turns.
                        let named = received_id(&fields).and_then(|uid| {
                            copies
                                .iter()
                                .copied()
                                .find(|&c| received_form(&planned[c].uid) == uid)
                        });
                        if named.is_some() {
                            return named;
                        }
                    }
                    let n = turn.entry(id).or_default();
                    let i = copies[*n % copies.len()];
                    if t.outcome == SmtpOutcome::Accepted {
                        *n += 1;
                    }
                    return Some(i);
                }
            }
            if let Some(uid) = received_id(&fields) {
                if let Some([i]) = by_uid.get(&uid).map(Vec::as_slice) {
                    return Some(*i);
                }
            }
            let body = strip_eol(&t.data);
            planned
                .iter()
                .position(|p| p.raw && !p.data.is_empty() && body.ends_with(strip_eol(&p.data)))
        })
        .collect()
}

/// For each planned message, the indices of the captured transactions attributed to it
/// (the same matching as [`decide`]); and the indices attributed to no message.
pub fn transactions_by_message(
    planned: &[Planned],
    captured: &[Received],
) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut per = vec![Vec::new(); planned.len()];
    let mut none = Vec::new();
    for (t, m) in match_transactions(planned, captured)
        .to
        .into_iter()
        .enumerate()
    {
        match m {
            Some(i) => per[i].push(t),
            None => none.push(t),
        }
    }
    (per, none)
}

/// A captured transaction described in one line (for reports and `poplab serve`).
pub fn describe(t: &Received) -> String {
    describe_transaction(t)
}

/// The account/UID keys the connector may use for a planned message in its events.
fn event_keys(p: &Planned, account: &str) -> Vec<(String, String)> {
    let mut size = p.data.len() as u64;
    if !p.data.is_empty() && !p.data.ends_with(b"\r\n") {
        size += 2;
    }
    let digest = popbridge::message::header_digest(&p.data, size, popbridge::body::HEAD_MAX);
    vec![
        (account.to_string(), p.uid.clone()),
        (account.to_string(), digest),
    ]
}

fn event_account_uid(e: &Event) -> Option<(&str, &str)> {
    match e {
        Event::Delivered { account, uid, .. }
        | Event::AlreadyDelivered { account, uid }
        | Event::SkippedOversize { account, uid, .. }
        | Event::Rejected { account, uid, .. }
        | Event::Deferred { account, uid, .. }
        | Event::Quarantined { account, uid, .. }
        | Event::SenderRepaired { account, uid, .. } => Some((account, uid)),
        _ => None,
    }
}

/// Why a message that was not delivered stayed (or went): the latest telling event.
fn explain_from_events(events: &[&Event]) -> Option<String> {
    events.iter().rev().find_map(|e| match e {
        Event::SkippedOversize {
            size, limit, named, ..
        } => {
            let mut s = format!(
                "message.skipped_oversize: {size} octets over the {limit}-octet limit, not downloaded"
            );
            if let Some(from) = &named.from {
                s.push_str(&format!(", from {from}"));
            }
            if let Some(subject) = &named.subject {
                s.push_str(&format!(", subject {subject:?}"));
            }
            Some(s)
        }
        Event::Rejected {
            reply, failures, ..
        } => Some(if *failures > 0 {
            format!("message.rejected: {reply} (failure {failures})")
        } else {
            format!("message.rejected: {reply}")
        }),
        Event::Deferred { reason, .. } => Some(format!("message.deferred: {reason}")),
        _ => None,
    })
}

/// A permanent (5xx) refusal of a transaction, described.
fn smtp_refusal(t: &Received) -> Option<String> {
    match &t.outcome {
        SmtpOutcome::Rejected { reply } if reply.starts_with('5') => {
            Some(format!("refused: {reply}"))
        }
        SmtpOutcome::Badmail { reply } => Some(format!("refused as spam (badmail): {reply}")),
        _ => None,
    }
}

/// A temporary (4xx) refusal or a cut-off transaction, described.
fn smtp_transient(t: &Received) -> Option<String> {
    match &t.outcome {
        SmtpOutcome::Rejected { reply } if !reply.starts_with('5') => {
            Some(format!("temporarily refused: {reply}"))
        }
        SmtpOutcome::Abandoned => Some("SMTP session ended before the data was taken".into()),
        _ => None,
    }
}

/// What a transaction without data did, for one of several messages:
/// `552 for one of big-1, big-2, big-3` (the reply code; `abandoned` for a session that
/// ended first).
fn one_of<'a>(t: &Received, names: impl Iterator<Item = &'a str>) -> String {
    let what = match &t.outcome {
        SmtpOutcome::Rejected { reply } | SmtpOutcome::Badmail { reply } => reply
            .split_whitespace()
            .next()
            .unwrap_or("refused")
            .to_string(),
        SmtpOutcome::Accepted => "accepted".into(),
        SmtpOutcome::Abandoned => "abandoned".into(),
    };
    let names: Vec<&str> = names.collect();
    let list = crate::report::first_few(&names, 5, ", ", " and");
    format!("{what} for one of {list}")
}

fn recipients_of(t: &Received) -> Vec<String> {
    t.deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Delivered { recipient } => Some(recipient.clone()),
            Delivery::Ndr { .. } => None,
        })
        .collect()
}

fn describe_transaction(t: &Received) -> String {
    let to: Vec<&str> = t.recipients.iter().map(|r| r.address.as_str()).collect();
    let what = match &t.outcome {
        SmtpOutcome::Accepted => {
            let ndr = t.ndrs();
            if ndr.is_empty() {
                "accepted".to_string()
            } else {
                format!("accepted then NDR: {}", ndr.join("; "))
            }
        }
        SmtpOutcome::Rejected { reply } => format!("refused: {reply}"),
        SmtpOutcome::Badmail { reply } => format!("badmail: {reply}"),
        SmtpOutcome::Abandoned => "abandoned (session ended)".into(),
    };
    format!(
        "transaction {} (session {}) MAIL FROM:<{}> to {}: {what}",
        t.id,
        t.session,
        t.mail_from,
        if to.is_empty() {
            "nobody".to_string()
        } else {
            to.join(", ")
        }
    )
}

/// Decides every message's outcome from what a run observed.
pub fn decide(planned: &[Planned], obs: &Observed) -> Decided {
    let red: &Redactor = &obs.redactor;
    let matched = match_transactions(planned, &obs.captured);
    let mut per_msg: Vec<Vec<&Received>> = vec![Vec::new(); planned.len()];
    let mut unmatched = Vec::new();
    // Per message: the refusals that were for it or another message, described.
    let mut shared: Vec<Vec<String>> = vec![Vec::new(); planned.len()];
    for ((t, m), candidates) in obs
        .captured
        .iter()
        .zip(&matched.to)
        .zip(&matched.candidates)
    {
        match m {
            Some(i) => per_msg[*i].push(t),
            None if candidates.is_empty() => unmatched.push(red.apply(&describe_transaction(t))),
            None => {
                let one_of = one_of(t, candidates.iter().map(|&c| planned[c].name.as_str()));
                unmatched.push(red.apply(&format!("{one_of}: {}", describe_transaction(t))));
                for &c in candidates {
                    shared[c].push(one_of.clone());
                }
            }
        }
    }
    let account_of = |user: &str| {
        obs.accounts
            .iter()
            .find(|(_, u)| u == user)
            .map_or_else(|| user.to_string(), |(a, _)| a.clone())
    };
    // Events by (account, uid).
    let mut events: HashMap<(String, String), Vec<&Event>> = HashMap::new();
    for pe in &obs.events {
        if let Some((a, u)) = event_account_uid(&pe.event) {
            events
                .entry((a.to_string(), u.to_string()))
                .or_default()
                .push(&pe.event);
        }
    }
    let account_failure: BTreeMap<String, String> = obs
        .events
        .iter()
        .filter_map(|pe| match &pe.event {
            Event::AccountFailed { account, error } => Some((account.clone(), error.clone())),
            Event::PassInterrupted { account, reason } => {
                Some((account.clone(), format!("pass interrupted: {reason}")))
            }
            _ => None,
        })
        .collect();
    let mailbox =
        |user: &str| -> Option<&MaildropReport> { obs.mailboxes.iter().find(|m| m.user == user) };
    // UIDs several messages share: hand out the server's occurrences in order,
    // delivered messages first to the deleted ones.
    let mut remaining_left: HashMap<(String, String), usize> = HashMap::new();
    for m in &obs.mailboxes {
        for u in &m.remaining {
            *remaining_left
                .entry((m.user.clone(), u.clone()))
                .or_default() += 1;
        }
    }

    let mut out = Decided::default();
    let mut order: Vec<usize> = (0..planned.len()).collect();
    // Undelivered first, so shared UIDs still on the server go to them.
    order.sort_by_key(|&i| {
        per_msg[i]
            .iter()
            .any(|t| t.outcome == SmtpOutcome::Accepted)
    });
    let mut results: Vec<Option<MessageOutcome>> = vec![None; planned.len()];
    for i in order {
        let p = &planned[i];
        let account = account_of(&p.user);
        let txns = &per_msg[i];
        let accepted: Vec<&&Received> = txns
            .iter()
            .filter(|t| t.outcome == SmtpOutcome::Accepted)
            .collect();
        let good: Vec<&&Received> = accepted.iter().copied().filter(|t| t.delivered()).collect();
        let mut evs: Vec<&Event> = Vec::new();
        let keys = event_keys(p, &account);
        for key in &keys {
            if let Some(v) = events.get(key) {
                evs.extend(v.iter().copied());
            }
        }
        let on_server = match remaining_left.get_mut(&(p.user.clone(), p.uid.clone())) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => mailbox(&p.user).is_none(),
        };
        let quarantined = keys.iter().any(|k| obs.quarantine_copies.contains(k));
        let recipients: Vec<String> = good.iter().flat_map(|t| recipients_of(t)).collect();
        let times = |n: usize| {
            if n > 1 {
                format!(" ({n} times)")
            } else {
                String::new()
            }
        };
        let (outcome, why) = if !good.is_empty() {
            (
                Outcome::Delivered,
                format!(
                    "accepted, delivered to {}{}",
                    recipients_of(good[0]).join(", "),
                    times(accepted.len())
                ),
            )
        } else if let Some(t) = accepted.first() {
            (
                Outcome::Ndr,
                format!(
                    "accepted (250), then NDR: {}{}",
                    t.ndrs().join("; "),
                    times(accepted.len())
                ),
            )
        } else if quarantined {
            let last = explain_from_events(&evs)
                .map(|w| format!("; last {w}"))
                .unwrap_or_default();
            let gone = if on_server {
                "kept on the server"
            } else {
                "deleted from the server"
            };
            (
                Outcome::Quarantined,
                format!("message.quarantined: copy in the quarantine, {gone}{last}"),
            )
        } else if !on_server {
            let why = txns
                .iter()
                .rev()
                .find_map(|t| smtp_refusal(t).or_else(|| smtp_transient(t)))
                .or_else(|| explain_from_events(&evs))
                .map(|w| format!(" (last: {w})"))
                .unwrap_or_default();
            (
                Outcome::Deleted,
                format!("deleted from the POP3 server without a good delivery{why}"),
            )
        } else if let Some(w) = txns.iter().rev().find_map(|t| smtp_refusal(t)).or_else(|| {
            evs.iter().rev().find_map(|e| match e {
                Event::Rejected { .. } => explain_from_events(&[*e]),
                _ => None,
            })
        }) {
            let refusals = txns.iter().filter(|t| smtp_refusal(t).is_some()).count();
            (Outcome::Rejected, format!("{w}{}", times(refusals)))
        } else {
            let why = explain_from_events(&evs)
                .or_else(|| txns.iter().rev().find_map(|t| smtp_transient(t)))
                .or_else(|| shared[i].last().cloned())
                .or_else(|| {
                    account_failure
                        .get(&account)
                        .map(|e| format!("account.failed: {e}"))
                })
                .unwrap_or_else(|| {
                    let retrieved = mailbox(&p.user).is_some_and(|m| m.retrieved.contains(&p.uid));
                    if retrieved {
                        "retrieved, never submitted".into()
                    } else {
                        "never retrieved".into()
                    }
                });
            (Outcome::Left, why)
        };
        let lost = !on_server && good.is_empty() && !quarantined;
        let (_, unexplained) = duplicates_of(&accepted.iter().map(|t| **t).collect::<Vec<_>>(), 1);
        results[i] = Some(MessageOutcome {
            label: p.label.clone(),
            name: p.name.clone(),
            outcome,
            why: red.apply(&why),
            recipients,
            accepted: accepted.len() as u32,
            unexplained,
            on_server,
            lost,
        });
    }
    // Byte-identical copies cannot be told apart: their duplicates are judged together
    // (and shown on the first copy).
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, p) in planned.iter().enumerate() {
        if let Some(id) = p.message_id.as_deref() {
            groups.entry(id).or_default().push(i);
        }
    }
    for copies in groups.values().filter(|c| c.len() > 1) {
        let mut accepted: Vec<&Received> = copies
            .iter()
            .flat_map(|&c| per_msg[c].iter().copied())
            .filter(|t| t.outcome == SmtpOutcome::Accepted)
            .collect();
        accepted.sort_by_key(|t| t.id);
        let (_, avoidable) = duplicates_of(&accepted, copies.len());
        for (k, &c) in copies.iter().enumerate() {
            if let Some(r) = results[c].as_mut() {
                r.unexplained = if k == 0 { avoidable } else { 0 };
            }
        }
    }
    for r in results.into_iter().flatten() {
        out.totals.lost += u64::from(r.lost);
        out.totals.duplicates += u64::from(r.accepted.saturating_sub(1));
        out.totals.unexplained += u64::from(r.unexplained);
        out.messages.push(r);
    }
    out.unmatched = unmatched;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_unfold_and_stop_at_the_body() {
        let f = header_fields(
            b"Received: from a\r\n\t(Popbridge) with POP3 id u-1\r\n\tfor <x@y>; date\r\nMessage-ID: <m@poplab.invalid>\r\n\r\nMessage-ID: body\r\n",
        );
        assert_eq!(f.len(), 2);
        assert_eq!(received_id(&f).as_deref(), Some("u-1"));
        assert_eq!(f[1], ("message-id".into(), "<m@poplab.invalid>".into()));
    }

    #[test]
    fn received_form_matches_the_connectors() {
        assert_eq!(received_form("a b<c>;d"), "abcd");
    }

    /// One of three large messages from one sender, as a connector that sends no data
    /// after a refused MAIL FROM leaves them.
    fn big(name: &str) -> Planned {
        Planned {
            label: "big".into(),
            name: name.into(),
            user: "info".into(),
            uid: name.into(),
            message_id: Some(format!("<{name}@poplab.invalid>")),
            raw: false,
            list_size: None,
            attachment_octets: 0,
            data: bytes::Bytes::from(format!(
                "Return-Path: <scanner@example.net>\r\nFrom: scanner@example.net\r\n\
                 Message-ID: <{name}@poplab.invalid>\r\n\r\nbody\r\n"
            )),
        }
    }

    fn transaction(id: u64, data: &[u8], outcome: SmtpOutcome) -> Received {
        let delivered = outcome == SmtpOutcome::Accepted;
        Received {
            session: 1,
            id,
            helo: Some("popbridge.test".into()),
            mail_from: "scanner@example.net".into(),
            sender: None,
            params: Vec::new(),
            recipients: Vec::new(),
            size: data.len() as u64,
            data: bytes::Bytes::copy_from_slice(data),
            bdat: false,
            outcome,
            deliveries: if delivered {
                vec![Delivery::Delivered {
                    recipient: "info@contoso.local".into(),
                }]
            } else {
                Vec::new()
            },
            reply_lost: false,
            acknowledged: true,
        }
    }

    fn refused_552(id: u64) -> Received {
        transaction(
            id,
            b"",
            SmtpOutcome::Rejected {
                reply: "552 5.3.4 Message size exceeds fixed maximum message size".into(),
            },
        )
    }

    fn observed(remaining: &[&str], captured: Vec<Received>) -> Observed {
        let names = ["big-1", "big-2", "big-3"];
        Observed {
            mailboxes: vec![MaildropReport {
                user: "info".into(),
                remaining: remaining.iter().map(|s| s.to_string()).collect(),
                retrieved: names.iter().map(|s| s.to_string()).collect(),
                deleted: names
                    .iter()
                    .filter(|n| !remaining.contains(n))
                    .map(|s| s.to_string())
                    .collect(),
                retrievals: 3,
                remaining_positions: Vec::new(),
            }],
            captured,
            external: true,
            ..Observed::default()
        }
    }

    #[test]
    fn a_refusal_several_messages_fit_is_shown_for_one_of_them_never_as_never_submitted() {
        let planned = [big("big-1"), big("big-2"), big("big-3")];
        let obs = observed(
            &["big-1", "big-2", "big-3"],
            vec![refused_552(1), refused_552(2), refused_552(3)],
        );
        let d = decide(&planned, &obs);
        for m in &d.messages {
            assert_eq!(m.outcome, Outcome::Left, "{m:?}");
            assert_eq!(m.why, "552 for one of big-1, big-2, big-3", "{m:?}");
            assert!(!m.why.contains("never submitted"), "{m:?}");
        }
        assert_eq!(d.unmatched.len(), 3);
        assert!(
            d.unmatched[0].starts_with("552 for one of big-1, big-2, big-3: transaction 1"),
            "{:?}",
            d.unmatched
        );
    }

    #[test]
    fn a_refusal_is_attributed_to_the_one_candidate_left_once_the_others_were_delivered() {
        let planned = [big("big-1"), big("big-2"), big("big-3")];
        let obs = observed(
            &["big-3"],
            vec![
                transaction(1, &planned[0].data, SmtpOutcome::Accepted),
                refused_552(2),
                transaction(3, &planned[1].data, SmtpOutcome::Accepted),
            ],
        );
        let d = decide(&planned, &obs);
        assert!(d.unmatched.is_empty(), "{:?}", d.unmatched);
        assert_eq!(d.messages[0].outcome, Outcome::Delivered);
        assert_eq!(d.messages[1].outcome, Outcome::Delivered);
        let last = &d.messages[2];
        assert_eq!(last.outcome, Outcome::Rejected, "{last:?}");
        assert!(last.why.starts_with("refused: 552 5.3.4"), "{last:?}");
        let (per, none) = transactions_by_message(&planned, &obs.captured);
        assert_eq!(per[2], vec![1]);
        assert!(none.is_empty());
    }
}
