//! `poplab serve FILE` and `poplab mock-pop3|mock-smtp --scenario FILE`: a scenario's mocks
//! standalone on loopback for a connector run by hand, and their final state as JSON.
//!
//! Responsible for: the address line printed on start (`pop3`, `smtp`, `mailboxes`, `ca`)
//! and the final state per message (retrieved, deleted, delivered, NDR'd, refused with the
//! reply, still on the server, the outcome `poplab run` would decide), matched to the
//! scenario's messages exactly as `outcome` does; with `--check`, the scenario's
//! `[expect]` judged against that state (the report `poplab run` prints).
//! Must never: contain connector logic, listen off loopback, or wait without a bound once
//! told to stop.

use std::net::SocketAddr;

use mock_pop3::MaildropReport;
use mock_smtp::{Delivery, Outcome as SmtpOutcome, Received};
use serde_json::{json, Value};

use crate::outcome;
use crate::report::{self, ScenarioReport};
use crate::world::Observed;
use crate::Scenario;

/// The line printed when the mocks are up (`None` for a side that is not running).
pub fn address_line(
    s: &Scenario,
    pop3: Option<SocketAddr>,
    smtp: Option<SocketAddr>,
    ca: Option<&std::path::Path>,
) -> Value {
    let mut v = serde_json::Map::new();
    if let Some(a) = pop3 {
        v.insert("pop3".into(), json!(a.to_string()));
        v.insert(
            "mailboxes".into(),
            s.mailboxes
                .iter()
                .map(|m| json!({ "user": m.user, "password": m.password }))
                .collect(),
        );
        v.insert("ca".into(), json!(ca.map(|p| p.display().to_string())));
    }
    if let Some(a) = smtp {
        v.insert("smtp".into(), json!(a.to_string()));
    }
    Value::Object(v)
}

/// The final state: per message what the POP3 server and the SMTP server saw, and the
/// outcome `poplab run` would decide from it (without connector events). `mailboxes` or
/// `captured` is empty when that side did not run.
pub fn final_state(s: &Scenario, mailboxes: Vec<MaildropReport>, captured: Vec<Received>) -> Value {
    let (per, unmatched) = outcome::transactions_by_message(&s.messages, &captured);
    let obs = observed(s, mailboxes, captured);
    let decided = outcome::decide(&s.messages, &obs);
    let messages: Vec<Value> = s
        .messages
        .iter()
        .zip(&decided.messages)
        .zip(&per)
        .map(|((p, d), txns)| {
            let mb = obs.mailboxes.iter().find(|m| m.user == p.user);
            let txns: Vec<&Received> = txns.iter().map(|&i| &obs.captured[i]).collect();
            let accepted = txns.iter().filter(|t| t.outcome == SmtpOutcome::Accepted);
            let delivered = accepted.clone().filter(|t| t.delivered()).count();
            let ndr: Vec<&str> = accepted.flat_map(|t| t.ndrs()).collect();
            let rejected: Vec<String> = txns
                .iter()
                .filter_map(|t| match &t.outcome {
                    SmtpOutcome::Rejected { reply } | SmtpOutcome::Badmail { reply } => {
                        Some(reply.clone())
                    }
                    _ => None,
                })
                .collect();
            let recipients: Vec<&str> = txns
                .iter()
                .flat_map(|t| &t.deliveries)
                .filter_map(|d| match d {
                    Delivery::Delivered { recipient } => Some(recipient.as_str()),
                    Delivery::Ndr { .. } => None,
                })
                .collect();
            json!({
                "label": p.label,
                "name": p.name,
                "user": p.user,
                "uid": p.uid,
                "retrieved": mb.is_some_and(|m| m.retrieved.contains(&p.uid)),
                "deleted": mb.is_some_and(|m| m.deleted.contains(&p.uid)),
                "on_server": d.on_server,
                "delivered": delivered,
                "ndr": ndr,
                "rejected": rejected,
                "recipients": recipients,
                "outcome": d.outcome,
                "why": d.why,
            })
        })
        .collect();
    json!({
        "messages": messages,
        "lost": decided.totals.lost,
        "duplicates": decided.totals.duplicates,
        "unmatched": unmatched.iter().map(|&i| outcome::describe(&obs.captured[i])).collect::<Vec<_>>(),
        "retrievals": obs.mailboxes.iter().map(|m| json!({ "user": m.user, "retrievals": m.retrievals })).collect::<Vec<_>>(),
    })
}

/// What the mocks saw, as a run's observation (no connector events: the connector was run
/// by hand).
fn observed(s: &Scenario, mailboxes: Vec<MaildropReport>, captured: Vec<Received>) -> Observed {
    Observed {
        mailboxes,
        captured,
        ..Observed::of_accounts(s)
    }
}

/// The name a `poplab serve --check` report gives the connector.
pub const BY_HAND: &str = "run by hand against poplab serve";

/// `poplab serve --check`: the scenario's `[expect]` judged against what the mocks saw, as
/// for an external connector (popbridge's events and crash points do not apply;
/// `[expect.popbridge_only]` differences are reported, not failed). `elapsed` is how long
/// the mocks served.
pub fn check(
    s: &Scenario,
    mailboxes: Vec<MaildropReport>,
    captured: Vec<Received>,
    elapsed: std::time::Duration,
) -> ScenarioReport {
    let obs = Observed {
        external: true,
        connector: BY_HAND.into(),
        elapsed,
        ..observed(s, mailboxes, captured)
    };
    let decided = outcome::decide(&s.messages, &obs);
    report::build(s, &obs, decided)
}
