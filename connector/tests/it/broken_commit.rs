//! A POP3 session that breaks while a group commit is under way, for messages known by
//! header digest (their UID is shared): the commit records the delivery, but its DELE is
//! never sent. Later passes must deliver every message once and delete it, whatever the
//! commit recorded about the DELE that did not go out.

use std::sync::{Arc, Mutex};

use std::time::Duration;

use mock_pop3::{Capabilities, FaultAction, FaultRule, Hook, MockPop3};
use mock_smtp::MockSmtp;
use popbridge::events::EventSink;
use popbridge::ledger::Ledger;
use popbridge::pass::Runner;

use crate::harness::{
    delivered_ids, in_memory_setup, mail, mailbox_with, memory_dialer, pop3, smtp,
};

/// Guards against: a duplicate after a session broke with a commit of digest-keyed
/// deliveries under way (their unconfirmed DELEs recorded, never sent).
#[tokio::test(start_paused = true)]
async fn a_session_broken_during_a_commit_of_digest_keyed_deliveries_costs_no_duplicate() {
    // Messages 1 and 3 are listed under one UID: both are keyed by their header digest. The
    // server does not pipeline (one RETR at a time, so a group commit starts before each
    // wait for the server), and its reply to the second RETR comes too late: the session
    // breaks by timeout while the commit of message 1's delivery is under way.
    let messages = (1..=4).map(|i| {
        let m = mail(i, "a@example.net", 3000 + 100 * i);
        if i == 1 || i == 3 {
            m.with_uid("shared")
        } else {
            m.with_uid(format!("u{i}"))
        }
    });
    let no_pipelining = |c: Capabilities| Capabilities {
        pipelining: false,
        ..c
    };
    let pop = Arc::new(
        pop3(
            MockPop3::builder()
                .capabilities(no_pipelining(Capabilities::full()))
                .capabilities_after_login(no_pipelining(Capabilities::full_after_login()))
                .maildrop(mailbox_with(messages))
                .fault(FaultRule {
                    nth: 2,
                    times: Some(1),
                    ..FaultRule::new(
                        Hook::command("RETR"),
                        FaultAction::Delay(Duration::from_secs(268)),
                    )
                }),
        )
        .await,
    );
    let smtp = Arc::new(smtp(MockSmtp::builder()).await);
    let (_dir, config) = in_memory_setup();
    let config = Arc::new(config);
    let dialer = Arc::new(memory_dialer(&pop, &smtp));
    for _ in 0..3 {
        let ledger = Arc::new(Mutex::new(Ledger::open(&config.state_dir).unwrap()));
        Runner::new(
            config.clone(),
            dialer.clone(),
            Arc::new(EventSink::none()),
            ledger,
        )
        .run(config.accounts.clone())
        .await;
        pop.wait_idle().await;
        smtp.wait_idle().await;
    }
    let mut ids = delivered_ids(&smtp);
    ids.sort();
    assert_eq!(
        ids,
        (1..=4)
            .map(|i| format!("<m{i}@isp.example>"))
            .collect::<Vec<_>>(),
        "every message delivered exactly once"
    );
    assert!(
        pop.maildrop("info").unwrap().remaining.is_empty(),
        "every message deleted"
    );
}
