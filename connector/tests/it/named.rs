//! Messages a pass leaves undelivered are named in its events and summary: From,
//! Subject, Date and Message-ID, from the downloaded header or, for a message never
//! downloaded, from `TOP n 0`; escaped and bounded.

use mock_pop3::{
    Capabilities, FaultAction as PopFault, FaultRule as PopRule, Hook as PopHook, MockPop3,
};
use mock_smtp::{Limits, MockSmtp};
use serde_json::Value;

use crate::harness::*;

/// A message with exactly this header and a body of about `size` octets.
fn with_header(header: &str, size: usize) -> mock_pop3::Message {
    let mut m = format!("{header}\r\n\r\n").into_bytes();
    while m.len() + 2 < size {
        let n = (size - 2 - m.len()).min(70);
        m.extend(std::iter::repeat_n(b'x', n));
        m.extend_from_slice(b"\r\n");
    }
    mock_pop3::Message::new(m)
}

fn json(events: &[popbridge::events::Event], kind: &str) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// A POP3 mock serving `msgs` with the fault `rule`, an SMTP mock taking at most 64 KB a
/// message, and a [`setup`] for them.
async fn against_a_64_kb_limit(
    msgs: Vec<mock_pop3::Message>,
    rule: PopRule,
) -> (mock_pop3::MockPop3Handle, mock_smtp::MockSmtpHandle, Setup) {
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with(msgs)).fault(rule)).await;
    let smtp = smtp(MockSmtp::builder().limits(Limits {
        max_message_size: Some(64 * 1024),
        ..Limits::default()
    }))
    .await;
    let s = setup(&pop, &smtp, "", "");
    (pop, smtp, s)
}

/// How many TOP commands the POP3 mock was sent, over all its sessions.
fn tops(pop: &mock_pop3::MockPop3Handle) -> usize {
    pop.sessions()
        .iter()
        .map(|s| s.commands.iter().filter(|c| c.starts_with("TOP")).count())
        .sum()
}

const SCANS: &str = "From: Alice Example <alice@example.net>\r\nSubject: Scans\r\n\
    Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <scans-1@example.net>";

#[tokio::test]
async fn an_oversize_skip_event_names_its_sender_and_subject_from_top() {
    // Two small messages delivered in a first pass whose QUIT is lost: the second pass
    // DELEs them (replies owed) before it asks TOP about the big one.
    let msgs = vec![
        mail(0, "a@example.net", 800),
        with_header(SCANS, 100 * 1024),
        mail(2, "b@example.net", 800),
    ];
    let (pop, smtp, s) = against_a_64_kb_limit(msgs, quit_lost().times(1)).await;
    let (first, events) = s.pass(&pop, &smtp).await;
    assert_eq!((first.delivered, first.skipped, first.deleted), (2, 1, 0));
    let skips = json(&events, "message.skipped_oversize");
    assert_eq!(skips.len(), 1);
    assert_eq!(skips[0]["from"], "Alice Example <alice@example.net>");
    assert_eq!(skips[0]["subject"], "Scans");
    assert_eq!(skips[0]["date"], "Tue, 1 Dec 2026 10:00:00 +0000");
    assert_eq!(skips[0]["message_id"], "<scans-1@example.net>");
    assert_eq!(skips[0]["limit"], 64 * 1024);

    let (second, events) = s.pass(&pop, &smtp).await;
    assert_eq!((second.deleted, second.skipped), (2, 1), "{second:?}");
    let skips = json(&events, "message.skipped_oversize");
    assert_eq!(skips[0]["subject"], "Scans", "{skips:?}");
    // The summary names it too.
    assert_eq!(second.left.len(), 1);
    assert_eq!(
        second.left[0].describe(),
        "left on the server: 100 KB from Alice Example <alice@example.net> \"Scans\" \
         (2026-12-01): over the 64 KB limit"
    );
    // One TOP per pass for it, never pipelined behind the DELEs, never a RETR.
    assert_eq!(tops(&pop), 2);
    assert!(pop
        .sessions()
        .iter()
        .all(|s| !s.commands.contains(&"RETR 2".to_string())));
    let mb = pop.maildrop("info").unwrap();
    assert_eq!(mb.remaining.len(), 1, "the big one stays");
}

#[tokio::test]
async fn without_top_the_skip_event_has_no_names_and_the_pass_goes_on() {
    let msgs = vec![
        with_header(SCANS, 100 * 1024),
        with_header(SCANS, 90 * 1024),
        mail(1, "a@example.net", 800),
    ];
    // TOP listed by CAPA but refused.
    let (pop, smtp, s) = against_a_64_kb_limit(
        msgs.clone(),
        PopRule::new(
            PopHook::command("TOP"),
            PopFault::Reply("-ERR not today".into()),
        ),
    )
    .await;
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.skipped), (1, 2), "{sum:?}");
    for skip in json(&events, "message.skipped_oversize") {
        assert!(
            skip.get("from").is_none() && skip.get("subject").is_none(),
            "{skip}"
        );
    }
    assert_eq!(tops(&pop), 1, "a refusal is not asked again");
    assert!(sum.left[0].describe().contains(": over the 64 KB limit"));

    // TOP not in CAPA: not asked at all.
    let pop = pop3(
        MockPop3::builder()
            .maildrop(mailbox_with(msgs))
            .capabilities_after_login(Capabilities {
                top: false,
                ..Capabilities::full_after_login()
            }),
    )
    .await;
    let s = setup(&pop, &smtp, "", "");
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.skipped, 2);
    assert!(json(&events, "message.skipped_oversize")
        .iter()
        .all(|e| e.get("subject").is_none()));
    assert!(pop
        .sessions()
        .iter()
        .all(|s| s.commands.iter().all(|c| !c.starts_with("TOP"))));
}

#[tokio::test]
async fn a_rejected_message_is_named_escaped_and_cut() {
    let long = "Ω".repeat(500);
    let header = format!(
        "Return-Path: <bad@refused.example>\r\nFrom: Mallory \x1b[31m<bad@refused.example>\r\n\
         Subject: =?UTF-8?Q?Invoice_=E2=80=AE?= {long}\r\nMessage-ID: <r1@refused.example>"
    );
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with([
        with_header(&header, 600),
        mail(1, "ok@example.net", 600),
    ])))
    .await;
    let smtp = smtp(MockSmtp::builder().reject_sender("@refused.example")).await;
    let s = setup(&pop, &smtp, "", "poison_after = 3");
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.rejected), (1, 1), "{sum:?}");
    let rejected = json(&events, "message.rejected");
    assert_eq!(rejected.len(), 1);
    let r = &rejected[0];
    assert_eq!(r["from"], "Mallory \\u{1b}[31m<bad@refused.example>");
    assert_eq!(r["message_id"], "<r1@refused.example>");
    let subject = r["subject"].as_str().unwrap();
    assert!(subject.starts_with("Invoice \\u{202e} ΩΩ"), "{subject}");
    assert_eq!(subject.chars().count(), popbridge::message::NAME_MAX);
    assert!(subject.ends_with('…'));
    assert!(!subject.chars().any(char::is_control));
    assert!(r.get("date").is_none(), "no Date header, no date field");
    let line = sum.left[0].describe();
    assert!(
        line.starts_with(
            "refused, left on the server: from Mallory \\u{1b}[31m<bad@refused.example> \"Invoice"
        ),
        "{line}"
    );
    assert!(!line.contains('\x1b'));
}

#[tokio::test]
async fn a_top_that_breaks_the_session_costs_nothing() {
    // The connection closes instead of answering TOP: the skip is still reported (without
    // names), nothing is lost, and the next pass delivers the rest.
    let msgs = vec![
        with_header(SCANS, 100 * 1024),
        mail(1, "a@example.net", 800),
        mail(2, "b@example.net", 800),
    ];
    let (pop, smtp, s) = against_a_64_kb_limit(
        msgs,
        PopRule::new(PopHook::command("TOP"), PopFault::CloseBeforeReply).times(1),
    )
    .await;
    let (first, events) = s.pass(&pop, &smtp).await;
    assert_eq!((first.delivered, first.skipped), (0, 1), "{first:?}");
    assert!(first.aborted.is_some(), "{first:?}");
    let skips = json(&events, "message.skipped_oversize");
    assert_eq!(skips.len(), 1);
    assert!(skips[0].get("subject").is_none());
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 3);
    let (second, events) = s.pass(&pop, &smtp).await;
    assert_eq!((second.delivered, second.skipped), (2, 1), "{second:?}");
    assert_eq!(
        json(&events, "message.skipped_oversize")[0]["subject"],
        "Scans"
    );
    exactly_once(&delivered_ids(&smtp), 2);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 1);
}
