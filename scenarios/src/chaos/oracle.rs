//! The chaos oracle: accounts for every message of a run from both servers' side and says
//! what went wrong.
//!
//! Responsible for: per message, what the POP3 mock still holds and deleted, what the SMTP
//! mock accepted (and whether the connector could have seen each acceptance), refused and
//! bounced, and what the connector quarantined; and from that, the violations:
//! - **lost**: gone from the POP3 server, never accepted, not quarantined;
//! - **duplicate**: accepted more than once, unavoidable only when the acceptance before it
//!   was never seen by the connector (its reply lost, or the connector sent nothing more on
//!   that session), or, for popbridge, seen but never recorded (no `message.delivered`
//!   event: it crashed while the acceptance waited for its group commit); for popbridge
//!   each such duplicate must also be named by a `message.possible_duplicate` event;
//! - **corrupt**: a delivery whose bytes are not the message's (popbridge);
//! - **forward progress**: once the faults stopped and the clean passes settled, every
//!   deliverable message delivered, every poison or spam message quarantined, everything
//!   the connector must leave on the server left there, nothing delivered left undeleted;
//! - **bounded**: the run settled within its clean passes and finished in time.
//!
//! Under the `sbs2008` profile losses and stalls are the old connector's known failures:
//! reported as expected, not as violations of popbridge's promises.
//! Must never: contain connector logic, or judge by anything but what the servers saw and
//! the connector's events.

use std::collections::BTreeMap;

use mock_smtp::{Delivery, Outcome as SmtpOutcome, Received};
use popbridge::events::Event;
use popbridge_proto::line::crlf_normalised;
use serde::Serialize;

use super::spec::{Class, Expected, Msg, Profile, Spec, USER};
use crate::generate::Planned;
use crate::outcome::{duplicates_recorded, transactions_by_message};
use crate::schema::Scenario;
use crate::world::Observed;

/// What went wrong, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Gone from the server, never accepted, not quarantined.
    Lost,
    /// Accepted again although the connector had seen the acceptance before.
    AvoidableDuplicate,
    /// An unavoidable duplicate popbridge did not report as a possible duplicate.
    UnnamedDuplicate,
    /// Delivered bytes that are not the message's.
    Corrupt,
    /// A deliverable message not delivered once the faults stopped.
    Stuck,
    /// A message that did not end as the policy says (poison not quarantined, ...).
    Policy,
    /// Delivered but never deleted (without leave_on_server).
    NotDeleted,
    /// The clean passes never settled.
    NotSettled,
    /// The run did not finish or could not start.
    Harness,
}

impl Kind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::AvoidableDuplicate => "avoidable duplicate",
            Self::UnnamedDuplicate => "unnamed duplicate",
            Self::Corrupt => "corrupt",
            Self::Stuck => "stuck",
            Self::Policy => "policy",
            Self::NotDeleted => "not deleted",
            Self::NotSettled => "not settled",
            Self::Harness => "harness",
        }
    }
}

/// One thing that went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// What.
    pub kind: Kind,
    /// The message copy (empty for the run as a whole).
    pub message: String,
    /// The details.
    pub detail: String,
    /// True when the profile expects it (sbs2008's known failures).
    pub expected: bool,
}

/// What became of one message copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fate {
    /// Accepted and delivered to every recipient.
    Delivered,
    /// Accepted, then bounced.
    Ndr,
    /// A copy in the quarantine.
    Quarantined,
    /// On the server, not delivered.
    Left,
    /// Gone from the server, never delivered, no quarantine copy.
    Lost,
}

/// The judgement of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Message copies by fate.
    pub fates: BTreeMap<Fate, u32>,
    /// Duplicates the protocol made unavoidable.
    pub unavoidable: u32,
    /// Duplicates the connector could have avoided.
    pub avoidable: u32,
    /// Everything that went wrong.
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// True when something went wrong that the profile does not expect.
    pub fn failed(&self) -> bool {
        self.violations.iter().any(|v| !v.expected)
    }

    /// Copies with this fate.
    pub fn count(&self, f: Fate) -> u32 {
        self.fates.get(&f).copied().unwrap_or(0)
    }
}

/// True when a transaction carries the message intact (after the connector's trace
/// header): byte for byte over BDAT, line ends normalised over DATA.
fn intact(t: &Received, original: &[u8]) -> bool {
    if t.bdat {
        t.data.ends_with(original)
    } else {
        crlf_normalised(&t.data).ends_with(&crlf_normalised(original))
    }
}

fn delivered(t: &Received) -> bool {
    t.outcome == SmtpOutcome::Accepted
        && t.deliveries
            .iter()
            .all(|d| matches!(d, Delivery::Delivered { .. }))
}

/// The declaration a planned copy comes from.
fn msg_of<'a>(spec: &'a Spec, p: &Planned) -> Option<&'a Msg> {
    spec.messages.iter().find(|m| m.label == p.label)
}

/// Judges one run of `spec` (run as `scenario`) from what it observed.
pub fn judge(spec: &Spec, scenario: &Scenario, obs: &Observed) -> Verdict {
    let mut v = Verdict::default();
    let sbs = spec.profile == Profile::Sbs2008;
    let popbridge = !spec.external;
    if let Some(e) = &obs.error {
        v.violations.push(Violation {
            kind: Kind::Harness,
            message: String::new(),
            detail: e.clone(),
            expected: false,
        });
    }
    if obs.error.is_none() && obs.settled == Some(false) {
        v.violations.push(Violation {
            kind: Kind::NotSettled,
            message: String::new(),
            detail: format!(
                "every one of the {} clean passes changed something",
                spec.settle
            ),
            expected: sbs || spec.external,
        });
    }
    let planned = &scenario.messages;
    let (per_msg, unattributed) = transactions_by_message(planned, &obs.captured);
    let refused = |t: &Received| match &t.outcome {
        SmtpOutcome::Rejected { reply } | SmtpOutcome::Badmail { reply } => reply.starts_with('5'),
        _ => false,
    };
    let mailbox = obs.mailboxes.iter().find(|m| m.user == USER);
    // By declaration order: exact even where messages share a UID.
    let remaining = |i: usize| mailbox.is_some_and(|m| m.remaining_positions.contains(&i));
    // popbridge's view: quarantine copies and possible-duplicate reports by key.
    let account = crate::world::account_name(USER);
    let mut named: BTreeMap<String, u32> = BTreeMap::new();
    let mut recorded: BTreeMap<String, usize> = BTreeMap::new();
    for pe in &obs.events {
        match &pe.event {
            Event::PossibleDuplicate {
                account: a, uid, ..
            } if *a == account => *named.entry(uid.clone()).or_default() += 1,
            Event::Delivered {
                account: a, uid, ..
            } if *a == account => *recorded.entry(uid.clone()).or_default() += 1,
            _ => {}
        }
    }
    // Each declaration is judged as a whole: byte-identical copies cannot be told apart
    // (by the connector without UIDs, nor here), only counted.
    let mut first = 0;
    while first < planned.len() {
        let label = &planned[first].label;
        let end = first
            + planned[first..]
                .iter()
                .take_while(|q| &q.label == label)
                .count();
        let group = first..end;
        first = end;
        let p = &planned[group.start];
        let Some(m) = msg_of(spec, p) else { continue };
        let copies = group.len() as u32;
        let name = if copies == 1 {
            p.name.clone()
        } else {
            format!("{} ({copies} identical copies)", m.label)
        };
        let txns: Vec<&Received> = group
            .clone()
            .flat_map(|j| per_msg[j].iter().map(|&t| &obs.captured[t]))
            .collect();
        let mut accepted: Vec<&Received> = txns
            .iter()
            .copied()
            .filter(|t| t.outcome == SmtpOutcome::Accepted)
            .collect();
        accepted.sort_by_key(|t| t.id);
        let on_server = group.clone().filter(|&j| remaining(j)).count() as u32;
        let mut family: Vec<String> = group
            .clone()
            .flat_map(|j| popbridge_keys(&planned[j]))
            .collect();
        family.sort();
        family.dedup();
        let quarantine_copies = family
            .iter()
            .filter(|k| {
                obs.quarantine_copies
                    .contains(&(account.clone(), (*k).clone()))
            })
            .count() as u32;
        // Copies by fate: delivered ones first, then quarantined, then what stays on the
        // server; a copy gone from it with none of those is lost.
        let good = accepted.iter().filter(|t| delivered(t)).count() as u32;
        let bounced = accepted.len() as u32 - good;
        let delivered_copies = good.min(copies);
        let quarantined_copies = quarantine_copies.min(copies - delivered_copies);
        let gone = copies - on_server;
        let lost_copies = gone.saturating_sub(delivered_copies + quarantined_copies);
        let left_copies = copies - delivered_copies - quarantined_copies - lost_copies;
        let ndr_copies = lost_copies.min(bounced);
        for (fate, n) in [
            (Fate::Delivered, delivered_copies),
            (Fate::Quarantined, quarantined_copies),
            (Fate::Left, left_copies),
            (Fate::Ndr, ndr_copies),
            (Fate::Lost, lost_copies - ndr_copies),
        ] {
            if n > 0 {
                *v.fates.entry(fate).or_default() += n;
            }
        }
        let mut flag = |kind: Kind, detail: String, expected: bool| {
            v.violations.push(Violation {
                kind,
                message: name.clone(),
                detail,
                expected,
            });
        };
        if lost_copies > 0 {
            flag(
                Kind::Lost,
                format!(
                    "{}: {lost_copies} gone from the POP3 server {}",
                    m.class.name(),
                    if ndr_copies > 0 {
                        "after being accepted then bounced (NDR)"
                    } else {
                        "without being accepted or quarantined"
                    }
                ),
                // The old connector's losses are known. An external connector cannot be
                // told the world's Exchange limits, so mail bounced after a 250 is not held
                // against it; mail it deleted without any acceptance is.
                sbs || (spec.external && ndr_copies == lost_copies),
            );
        }
        // Duplicates: every acceptance beyond the copies owed, explained by one before it
        // that the connector never saw.
        // For popbridge, an acceptance it saw but never recorded (a crash before the group
        // commit) explains a duplicate too; it must still be named below.
        let records = popbridge.then(|| family.iter().filter_map(|k| recorded.get(k)).sum());
        let (unavoidable, avoidable) = duplicates_recorded(&accepted, copies as usize, records);
        v.unavoidable += unavoidable;
        v.avoidable += avoidable;
        if avoidable > 0 {
            flag(
                Kind::AvoidableDuplicate,
                format!(
                    "accepted {} times for {copies} cop{}; {avoidable} after an acceptance the \
                     connector had seen",
                    accepted.len(),
                    if copies == 1 { "y" } else { "ies" }
                ),
                false,
            );
        }
        if popbridge && unavoidable > 0 {
            let reported: u32 = family.iter().filter_map(|k| named.get(k)).sum();
            if reported < unavoidable {
                flag(
                    Kind::UnnamedDuplicate,
                    format!(
                        "{unavoidable} unavoidable duplicate(s), {reported} \
                         message.possible_duplicate event(s) naming it"
                    ),
                    false,
                );
            }
        }
        if popbridge {
            if let Some(t) = accepted.iter().find(|t| !intact(t, &p.data)) {
                flag(
                    Kind::Corrupt,
                    format!(
                        "transaction {} carries {} octets that are not the message's {}",
                        t.id,
                        t.data.len(),
                        p.data.len()
                    ),
                    false,
                );
            }
        }
        // Forward progress, after the clean passes. Permanent refusals: attributed ones,
        // and for identical copies (which share a sender) the ones no copy could be told
        // from.
        let refusals = (txns.iter().filter(|t| refused(t)).count()
            + unattributed
                .iter()
                .map(|&t| &obs.captured[t])
                .filter(|t| refused(t) && t.mail_from.eq_ignore_ascii_case(&m.from))
                .count()) as u32;
        if let Some(allowed) = acceptable(spec, m, refusals) {
            let reached = |f: Fate| match f {
                Fate::Delivered => delivered_copies,
                Fate::Quarantined => quarantined_copies,
                Fate::Left => left_copies,
                Fate::Ndr | Fate::Lost => 0,
            };
            let ok: u32 = allowed.iter().map(|f| reached(*f)).sum();
            if ok < copies && lost_copies == 0 {
                let kind = if allowed.contains(&Fate::Delivered) {
                    Kind::Stuck
                } else {
                    Kind::Policy
                };
                // A server that refuses RSET (RFC 5321 says it must not) after a refused
                // transaction can join the next pipelined message to that still-open
                // transaction: accepted under another message's sender. The connector
                // cannot prevent that once the message is on the wire; it reports the
                // outcome as unknown. Expected, not a broken promise.
                let joined = kind == Kind::Policy
                    && accepted
                        .iter()
                        .any(|t| !t.mail_from.eq_ignore_ascii_case(&m.from));
                flag(
                    kind,
                    format!(
                        "{}: {delivered_copies} delivered, {quarantined_copies} quarantined, \
                         {left_copies} left of {copies}; expected {}",
                        m.class.name(),
                        allowed
                            .iter()
                            .map(|f| format!("{f:?}"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                    // The old connector's stalls (mail stuck behind malformed senders).
                    sbs || joined,
                );
            }
        }
        // More copies left on the server than were never delivered, although the
        // connector saw an acceptance (one it never saw may rightly stay: the connector
        // cannot know it went, and quarantines or retries it).
        let seen = accepted.iter().any(|t| !t.unconfirmed());
        let undelivered = copies - delivered_copies;
        if popbridge && seen && on_server > undelivered && !spec.leave_on_server && !sbs {
            flag(
                Kind::NotDeleted,
                format!(
                    "{} delivered cop{} still on the server after the clean passes",
                    on_server - undelivered,
                    if on_server - undelivered == 1 {
                        "y"
                    } else {
                        "ies"
                    }
                ),
                false,
            );
        }
    }
    v
}

/// What `m` may end as in this run, from the world's expectation: a deliverable message
/// that the faults refused permanently (`poison_after` times, or at all when a fault
/// answers a message command with a 5xx the capture cannot attribute) may be quarantined;
/// an oversize one may be quarantined too, when the connector could not learn the size
/// limit (no SIZE, or EHLO refused) and the server refused it after the data.
fn acceptable(spec: &Spec, m: &Msg, refusals: u32) -> Option<&'static [Fate]> {
    let expected = spec.expected(m)?;
    let popbridge_default = spec.profile == Profile::Default && !spec.external;
    let refusing_faults = spec.faults.iter().any(|f| {
        f.side == super::spec::Side::Smtp && f.reply.as_deref().is_some_and(|r| r.starts_with('5'))
    });
    Some(match (expected, m.class) {
        (Expected::Delivered, _)
            if popbridge_default && (refusals >= spec.poison_after || refusing_faults) =>
        {
            &[Fate::Delivered, Fate::Quarantined]
        }
        (Expected::Delivered, _) => &[Fate::Delivered],
        (Expected::Quarantined, _) => &[Fate::Quarantined],
        (Expected::Left, Class::Oversize) => &[Fate::Left, Fate::Quarantined],
        (Expected::Left, _) => &[Fate::Left],
    })
}

/// The keys popbridge may record a planned copy under: its UID, or its header digest
/// (numbered by occurrence for identical copies).
fn popbridge_keys(p: &Planned) -> Vec<String> {
    let mut size = p.data.len() as u64;
    if !p.data.is_empty() && !p.data.ends_with(b"\n") {
        size += 2;
    }
    let digest = popbridge::message::header_digest(&p.data, size, popbridge::body::HEAD_MAX);
    let mut keys = vec![p.uid.clone(), digest.clone()];
    for n in 2..=4 {
        keys.push(format!("{digest}#{n}"));
    }
    keys
}
