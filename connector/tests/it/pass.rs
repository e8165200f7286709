//! The connector core's acceptance behaviours, each against the mocks on loopback.

use mock_pop3::pki::TestPki;
use mock_pop3::{Maildrop, MockPop3, ServerTls};
use mock_smtp::{FaultAction, FaultRule, Hook, Limits, MailboxSpec, MockSmtp};
use popbridge::pass::AccountFailure;
use popbridge_proto::pop3::AuthMethod;

use crate::harness::*;

#[tokio::test]
async fn twelve_hundred_messages_in_three_passes_of_at_most_500() {
    let (pop, smtp, s) = served(
        mailbox_with((0..1200).map(|i| mail(i, "a@example.net", 600))),
        "",
        "",
    )
    .await;
    let per_pass = s
        .passes(&pop, &smtp, 3, |sum| {
            (sum.delivered, sum.deleted, sum.postponed)
        })
        .await;
    assert_eq!(per_pass, [(500, 500, 700), (500, 500, 200), (200, 200, 0)]);
    exactly_once(&delivered_ids(&smtp), 1200);
    let mb = pop.maildrop("info").unwrap();
    assert!(mb.remaining.is_empty());
    assert_eq!(mb.retrievals, 1200, "nothing downloaded twice");
}

#[tokio::test]
async fn a_drop_after_dele_before_quit_costs_nothing() {
    let (pop, smtp, s) = served_from(
        MockPop3::builder()
            .maildrop(mails(0..10, 800))
            .fault(quit_lost()),
        "",
        "",
    )
    .await;
    let (first, _) = s.pass(&pop, &smtp).await;
    assert_eq!(first.delivered, 10);
    assert_eq!(first.deleted, 0, "no QUIT, no deletion");
    assert!(
        first.aborted.as_deref().unwrap_or("").contains("QUIT"),
        "{first:?}"
    );
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        10,
        "the server kept everything"
    );
    let (second, events) = s.pass(&pop, &smtp).await;
    assert_eq!((second.delivered, second.deleted), (0, 10));
    assert_eq!(count(&events, "message.already_delivered"), 10);
    exactly_once(&delivered_ids(&smtp), 10);
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
}

#[tokio::test]
async fn malformed_return_paths_are_repaired_and_never_stall_the_mailbox() {
    let bad = [
        "user one@example.net",
        "@example.net",
        "a..b@example.net",
        "x@-bad-.example",
        "q\"@example.net",
        "no domain",
        "a@b@c.example",
    ];
    let mut msgs = Vec::new();
    for (i, b) in bad.iter().enumerate() {
        let raw = format!("Return-Path: <{b}>\r\nFrom: {b}\r\nSubject: bad {i}\r\nMessage-ID: <bad{i}@x>\r\n\r\nbody\r\n");
        msgs.push(raw.into_bytes());
    }
    let mut all: Vec<mock_pop3::Message> = msgs.into_iter().map(mock_pop3::Message::new).collect();
    all.extend((0..40).map(|i| mail(100 + i, "good@example.net", 500)));
    let (pop, smtp, s) = served(mailbox_with(all), "", "").await;
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 47, "{sum:?}");
    assert_eq!(count(&events, "sender.repaired"), 7);
    let nulls = smtp
        .captured()
        .iter()
        .filter(|t| t.mail_from.is_empty())
        .count();
    assert_eq!(nulls, 7, "unusable return paths fall back to <>");
    assert!(smtp.sessions().iter().all(|s| s.protocol_errors == 0));
}

#[tokio::test]
async fn senders_exchange_refuses_do_not_block_the_40_good_ones_and_end_in_quarantine() {
    // Five refused senders first, as in the SBS customer case, two more further down.
    let mut all = Vec::new();
    for i in 0..47usize {
        let bad = i < 5 || i == 20 || i == 40;
        let from = if bad {
            format!("sender{i}@refused.example")
        } else {
            format!("ok{i}@example.net")
        };
        all.push(mail(i, &from, 400));
    }
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with(all))).await;
    let smtp = smtp(MockSmtp::builder().reject_sender("@refused.example")).await;
    let s = setup(&pop, &smtp, "", "poison_after = 3");
    let (first, events) = s.pass(&pop, &smtp).await;
    assert_eq!((first.delivered, first.rejected), (40, 7), "{first:?}");
    assert_eq!(count(&events, "message.rejected"), 7);
    assert!(
        smtp.sessions()
            .iter()
            .all(|s| s.protocol_errors < 5 && s.end != Some(mock_smtp::SessionEnd::TooManyErrors)),
        "the connector reconnects before Exchange's limit: {:?}",
        smtp.sessions()
            .iter()
            .map(|s| (s.protocol_errors, s.end.clone()))
            .collect::<Vec<_>>()
    );
    assert!(count(&events, "session.reconnected") >= 1);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 7);
    let (second, _) = s.pass(&pop, &smtp).await;
    assert_eq!(
        (second.delivered, second.rejected, second.quarantined),
        (0, 7, 0)
    );
    let (third, events) = s.pass(&pop, &smtp).await;
    assert_eq!(third.quarantined, 7, "{third:?}");
    assert_eq!(count(&events, "message.quarantined"), 7);
    let copies = files_under(&s.state().join("quarantine"));
    assert_eq!(copies.len(), 7);
    assert!(copies.iter().all(|p| std::fs::read_to_string(p)
        .unwrap()
        .contains("@refused.example")));
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        7,
        "quarantine keeps them on the server by default"
    );
    // A fourth pass leaves quarantined messages alone.
    let (fourth, _) = s.pass(&pop, &smtp).await;
    assert_eq!(
        (fourth.delivered, fourth.rejected, fourth.quarantined),
        (0, 0, 0)
    );
    exactly_once(&delivered_ids(&smtp), 40);
}

#[tokio::test]
async fn a_sender_without_domain_gets_the_default_domain() {
    let msg = raw(b"Return-Path: <user>\r\nFrom: user\r\nSubject: local\r\nMessage-ID: <l1@x>\r\n\r\nhello\r\n");
    let (pop, smtp, s) = served(
        mailbox_with([msg]),
        "",
        "default_domain = \"contoso.local\"",
    )
    .await;
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 1);
    assert_eq!(smtp.captured()[0].mail_from, "user@contoso.local");
    assert_eq!(count(&events, "sender.repaired"), 1);
    let data = String::from_utf8_lossy(&smtp.captured()[0].data).into_owned();
    assert!(
        data.starts_with("Received: from 127.0.0.1"),
        "trace header first: {data}"
    );
}

#[tokio::test]
async fn a_421_at_message_10_of_30_reconnects_and_delivers_all() {
    let pop = pop3(MockPop3::builder().maildrop(mails(0..30, 700))).await;
    let smtp = smtp(
        MockSmtp::builder().fault(
            FaultRule::new(
                Hook::EndOfData,
                FaultAction::ReplyAndClose(
                    "421 4.3.2 Service not available, closing transmission channel".into(),
                ),
            )
            .nth(10),
        ),
    )
    .await;
    let s = setup(&pop, &smtp, "", "");
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 30, "{sum:?}");
    assert_eq!(count(&events, "session.reconnected"), 1);
    exactly_once(&delivered_ids(&smtp), 30);
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
    assert_eq!(smtp.sessions().len(), 2);
}

#[tokio::test]
async fn an_oversize_message_is_never_retrieved_and_is_reported() {
    let mut msgs: Vec<_> = (0..4).map(|i| mail(i, "a@example.net", 2000)).collect();
    msgs.insert(2, mail(99, "big@example.net", 12 * 1024 * 1024));
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with(msgs))).await;
    let smtp = smtp(MockSmtp::builder().limits(Limits {
        max_message_size: Some(10 * 1024 * 1024),
        ..Limits::default()
    }))
    .await;
    let s = setup(&pop, &smtp, "", "");
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.skipped), (4, 1), "{sum:?}");
    assert_eq!(count(&events, "message.skipped_oversize"), 1);
    let mb = pop.maildrop("info").unwrap();
    assert_eq!(mb.remaining, vec!["info-000003"], "the big one stays");
    assert!(
        !mb.retrieved.contains(&"info-000003".to_string()),
        "and was never downloaded"
    );
    assert!(pop
        .sessions()
        .iter()
        .all(|s| !s.commands.contains(&"RETR 3".to_string())));
}

#[tokio::test]
async fn stls_refused_means_nothing_in_clear_and_a_clear_error() {
    let (pop, smtp, mut s) = served(
        mailbox_with([mail(1, "a@example.net", 300)]),
        "tls_server_name = \"localhost\"",
        "",
    )
    .await;
    s.config.accounts[0].tls = popbridge::config::TlsMode::StartTls;
    let (sum, _) = s.pass(&pop, &smtp).await;
    match &sum.failure {
        Some(AccountFailure::Connect(e)) => assert!(e.contains("STLS required"), "{e}"),
        other => panic!("expected a connection failure, got {other:?}"),
    }
    let cmds = &pop.sessions()[0].commands;
    assert_eq!(
        cmds,
        &vec!["CAPA".to_string(), "STLS".to_string()],
        "nothing else went out in clear"
    );
    assert!(smtp.captured().is_empty());
}

#[tokio::test]
async fn an_unknown_ca_is_refused_unless_ca_file_names_it() {
    let pki = TestPki::localhost().unwrap();
    let (pop, smtp, mut s) = served_from(
        MockPop3::builder()
            .maildrop(mailbox_with([mail(1, "a@example.net", 300)]))
            .tls(ServerTls::Implicit(pki.server_config().unwrap())),
        "",
        "",
    )
    .await;
    s.config.accounts[0].tls = popbridge::config::TlsMode::Implicit;
    s.config.accounts[0].allow_plaintext = false;
    s.config.accounts[0].tls_server_name = Some("localhost".into());
    let (sum, _) = s.pass(&pop, &smtp).await;
    match &sum.failure {
        Some(AccountFailure::Connect(e)) => assert!(e.contains("TLS handshake"), "{e}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert_eq!(pop.maildrop("info").unwrap().retrievals, 0);
    let ca = s.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    s.config.accounts[0].ca_file = Some(ca);
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert!(sum.failure.is_none(), "{sum:?}");
    assert_eq!(sum.delivered, 1);
    assert!(pop.sessions().last().unwrap().tls);
}

#[tokio::test]
async fn a_password_over_plain_text_is_refused_unless_allowed() {
    let (pop, smtp, mut s) = served(mailbox_with([mail(1, "a@example.net", 300)]), "", "").await;
    s.config.accounts[0].allow_plaintext = false;
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert!(
        matches!(&sum.failure, Some(AccountFailure::Connect(e)) if e.contains("in clear")),
        "{sum:?}"
    );
    assert!(!pop.sessions()[0]
        .commands
        .iter()
        .any(|c| c.starts_with("USER") || c.starts_with("PASS")));
}

#[tokio::test]
async fn wrong_password_is_an_auth_failure_with_an_event() {
    let (pop, smtp, s) = served(Maildrop::new("info", "another password"), "", "").await;
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert!(
        matches!(sum.failure, Some(AccountFailure::Auth(_))),
        "{sum:?}"
    );
    assert_eq!(count(&events, "auth.failed"), 1);
}

#[tokio::test]
async fn leave_on_server_delivers_once_and_keeps_everything() {
    let (pop, smtp, s) = served(mails(0..5, 500), "leave_on_server = true", "").await;
    let (a, _) = s.pass(&pop, &smtp).await;
    let (b, _) = s.pass(&pop, &smtp).await;
    assert_eq!(
        (a.delivered, a.deleted, b.delivered, b.deleted),
        (5, 0, 0, 0)
    );
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 5);
    exactly_once(&delivered_ids(&smtp), 5);
    assert_eq!(
        pop.maildrop("info").unwrap().retrievals,
        5,
        "known UIDs are not downloaded again"
    );
}

#[tokio::test]
async fn a_server_without_uidl_is_deduplicated_by_header_digest() {
    let caps = no_uidl();
    let (pop, smtp, s) = served_from(
        MockPop3::builder()
            .maildrop(mails(0..6, 500))
            .capabilities_after_login(caps)
            .fault(quit_lost()),
        "",
        "",
    )
    .await;
    let (a, _) = s.pass(&pop, &smtp).await;
    assert_eq!(a.delivered, 6);
    let (b, events) = s.pass(&pop, &smtp).await;
    assert_eq!((b.delivered, b.deleted), (0, 6), "{b:?}");
    assert_eq!(count(&events, "message.already_delivered"), 6);
    exactly_once(&delivered_ids(&smtp), 6);
}

#[tokio::test]
async fn a_temporary_refusal_keeps_the_message_for_the_next_pass() {
    let pop = pop3(MockPop3::builder().maildrop(mails(0..3, 500))).await;
    let smtp = smtp(
        MockSmtp::builder()
            .mailbox(MailboxSpec::new("info@contoso.local"))
            .fault(
                FaultRule::new(
                    Hook::EndOfData,
                    FaultAction::Reply("451 4.3.0 Mail server temporarily rejected message".into()),
                )
                .nth(2),
            ),
    )
    .await;
    let s = setup(&pop, &smtp, "", "");
    let (a, events) = s.pass(&pop, &smtp).await;
    assert_eq!((a.delivered, a.deferred), (2, 1), "{a:?}");
    assert_eq!(count(&events, "message.deferred"), 1);
    let (b, _) = s.pass(&pop, &smtp).await;
    assert_eq!(b.delivered, 1);
    exactly_once(&delivered_ids(&smtp), 3);
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
}

#[tokio::test]
async fn two_passes_of_one_account_never_overlap() {
    let (pop, smtp, s) = served(mails(0..3, 500), "", "").await;
    // Another process (here: this test) holds the account's lock.
    let locks = s.state().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(locks.join("info.lock"))
        .unwrap();
    held.lock().unwrap();
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert!(
        sum.aborted
            .as_deref()
            .unwrap_or("")
            .contains("another pass"),
        "{sum:?}"
    );
    assert_eq!(sum.delivered, 0);
    assert_eq!(count(&events, "account.failed"), 1);
    assert!(
        pop.sessions().is_empty(),
        "the POP3 server was not even contacted"
    );
    drop(held);
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 3);
}

#[tokio::test]
async fn apop_and_cram_md5_log_in() {
    for (method, name) in [
        (AuthMethod::Apop, "apop"),
        (AuthMethod::CramMd5, "cram-md5"),
    ] {
        let mb = mailbox_with([mail(1, "a@example.net", 400)]).with_methods([method]);
        let pop = pop3(MockPop3::builder().maildrop(mb)).await;
        let smtp = smtp(MockSmtp::builder()).await;
        let mut s = setup(&pop, &smtp, "", "");
        s.config.accounts[0].auth = if name == "apop" {
            AuthMethod::Apop
        } else {
            AuthMethod::CramMd5
        };
        s.config.accounts[0].allow_plaintext = false;
        let (sum, _) = s.pass(&pop, &smtp).await;
        assert_eq!(sum.delivered, 1, "{name}: {sum:?}");
        let cmds = &pop.sessions()[0].commands;
        let expected = if name == "apop" {
            "APOP info ***"
        } else {
            "AUTH CRAM-MD5"
        };
        assert!(cmds.iter().any(|c| c == expected), "{name}: {cmds:?}");
    }
}

#[tokio::test]
async fn an_unreachable_smtp_server_is_a_connection_failure_and_nothing_moves() {
    let (pop, smtp, mut s) = served(mails(0..3, 500), "", "").await;
    s.config.transport.smtp_mut().unwrap().port = listener().await.local_addr().unwrap().port();
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert!(
        matches!(&sum.failure, Some(AccountFailure::Connect(e)) if e.contains("SMTP")),
        "{sum:?}"
    );
    assert_eq!((sum.delivered, sum.deferred), (0, 3));
    assert_eq!(count(&events, "message.deferred"), 3);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 3);
    assert_eq!(
        pop.maildrop("info").unwrap().retrievals,
        0,
        "nothing downloaded without a place to put it"
    );
}

#[tokio::test]
async fn a_large_message_is_spooled_and_arrives_byte_exact_over_bdat_and_data() {
    let big = {
        let mut m =
            b"Return-Path: <a@example.net>\r\nSubject: big\r\nMessage-ID: <big@x>\r\n\r\n".to_vec();
        let mut i = 0u32;
        while m.len() < 3 * 1024 * 1024 {
            m.extend_from_slice(format!(".line {i} ").as_bytes());
            m.extend_from_slice(b"\xe9 with a leading dot\r\n");
            i += 1;
        }
        m
    };
    for chunking in [true, false] {
        let pop = pop3(MockPop3::builder().maildrop(mailbox_with([raw(&big)]))).await;
        let ext = mock_smtp::Extensions {
            chunking,
            ..mock_smtp::Extensions::default()
        };
        let smtp = smtp(MockSmtp::builder().extensions(ext)).await;
        let s = setup(&pop, &smtp, "", "memory_threshold = \"256KB\"");
        let (sum, _) = s.pass(&pop, &smtp).await;
        assert_eq!(sum.delivered, 1, "chunking {chunking}: {sum:?}");
        let t = &smtp.captured()[0];
        assert_eq!(t.bdat, chunking);
        let data = &t.data[..];
        let body_start = data
            .windows(big.len().min(64))
            .position(|w| w == &big[..64])
            .expect("original bytes follow the trace header");
        assert_eq!(
            &data[body_start..],
            &big[..],
            "chunking {chunking}: byte exact"
        );
        assert!(t.params.iter().any(|p| p.to_string() == "BODY=8BITMIME"));
        assert!(
            files_under(&s.state().join("spool")).is_empty(),
            "spool files are removed"
        );
    }
}

#[tokio::test]
async fn helo_is_used_when_ehlo_is_refused() {
    let pop =
        pop3(MockPop3::builder().maildrop(mailbox_with([mail(1, "a@example.net", 400)]))).await;
    let smtp = smtp(MockSmtp::builder().fault(FaultRule::new(
        Hook::command("EHLO"),
        FaultAction::Reply("500 5.3.3 Unrecognized command".into()),
    )))
    .await;
    let s = setup(&pop, &smtp, "", "");
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 1, "{sum:?}");
    let t = smtp.transcript();
    assert!(t.contains("C: HELO popbridge.test"), "{t}");
    assert!(
        !smtp.captured()[0].bdat,
        "no extensions after HELO: plain DATA"
    );
}

#[tokio::test]
async fn the_sbs2008_profile_stalls_on_five_malformed_senders_and_the_default_profile_does_not() {
    let build = || {
        let mut all: Vec<mock_pop3::Message> = (0..5)
            .map(|i| raw(format!("Return-Path: <bad sender{i}@example.net>\r\nFrom: x\r\nSubject: bad {i}\r\nMessage-ID: <bad{i}@x>\r\n\r\nbody\r\n").as_bytes()))
            .collect();
        all.extend((0..20).map(|i| mail(10 + i, "good@example.net", 500)));
        MockPop3::builder().maildrop(mailbox_with(all))
    };
    // The old connector: no return-path repair, no reconnect before the error limit.
    let (pop, smtp, mut s) = served_from(build(), "", "").await;
    s.config.profile = popbridge::config::Profile::Sbs2008;
    for pass in 1..=3 {
        let (sum, _) = s.pass(&pop, &smtp).await;
        assert_eq!(sum.delivered, 0, "sbs2008 pass {pass}: {sum:?}");
    }
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        25,
        "the same five come first again, every pass"
    );
    assert!(
        files_under(&s.state().join("quarantine")).is_empty(),
        "the old connector never gave up on a message"
    );
    assert!(smtp
        .sessions()
        .iter()
        .all(|s| s.end == Some(mock_smtp::SessionEnd::TooManyErrors)));
    assert_eq!(smtp.counts().accepted, 0);
    // Popbridge's own profile, same mailbox, same server: one pass.
    let pop2 = pop3(build()).await;
    let smtp2 = crate::harness::smtp(MockSmtp::builder()).await;
    let s = setup(&pop2, &smtp2, "", "");
    let (sum, _) = s.pass(&pop2, &smtp2).await;
    assert_eq!(sum.delivered, 25, "{sum:?}");
    assert!(pop2.maildrop("info").unwrap().remaining.is_empty());
    assert!(smtp2.sessions().iter().all(|s| s.protocol_errors == 0));
}

#[tokio::test]
async fn the_sbs_size_loss_happens_under_sbs2008_and_never_by_default() {
    let mk = || {
        let msgs = vec![
            mail(1, "a@example.net", 20 * 1024 * 1024),
            mail(2, "a@example.net", 1000),
        ];
        (
            MockPop3::builder().maildrop(mailbox_with(msgs)),
            MockSmtp::builder()
                .limits(Limits {
                    max_message_size: Some(50 * 1024 * 1024),
                    ..Limits::default()
                })
                .organization_receive_limit(10 * 1024 * 1024),
        )
    };
    // sbs2008: downloads up to the receive connector's 50 MB, Exchange says 250, then bounces.
    let (p, m) = mk();
    let (pop, smtp) = (pop3(p).await, crate::harness::smtp(m).await);
    let mut s = setup(&pop, &smtp, "", "");
    s.config.profile = popbridge::config::Profile::Sbs2008;
    s.config.exchange.organization_receive_limit =
        popbridge::config::ReceiveLimit::Octets(10 * 1024 * 1024);
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.deleted), (2, 2));
    assert!(
        pop.maildrop("info").unwrap().remaining.is_empty(),
        "gone from the POP3 server"
    );
    let ndrs: Vec<String> = smtp
        .captured()
        .iter()
        .flat_map(|t| t.ndrs().into_iter().map(str::to_string))
        .collect();
    assert_eq!(
        ndrs,
        ["550 5.2.3 RESOLVER.RST.SendSizeLimit.Org; message too large for this organization"],
        "and bounced: lost"
    );
    // Default profile, same servers: the organisation limit is known, the message is kept.
    let (p, m) = mk();
    let (pop, smtp) = (pop3(p).await, crate::harness::smtp(m).await);
    let mut s = setup(&pop, &smtp, "", "");
    s.config.exchange.organization_receive_limit =
        popbridge::config::ReceiveLimit::Octets(10 * 1024 * 1024);
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.skipped), (1, 1), "{sum:?}");
    assert_eq!(count(&events, "message.skipped_oversize"), 1);
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        1,
        "kept on the server and reported"
    );
    assert!(smtp.captured().iter().all(|t| t.ndrs().is_empty()));
}

#[tokio::test]
async fn a_crash_after_delivery_and_before_dele_costs_nothing() {
    use popbridge::events::EventSink;
    use popbridge::ledger::Ledger;
    use popbridge::net::TcpDialer;
    use popbridge::pass::Runner;
    use std::sync::Arc;
    let (pop, smtp, s) = served(mails(0..10, 500), "", "").await;
    let ledger = || {
        Arc::new(std::sync::Mutex::new(
            Ledger::open(&s.config.state_dir).unwrap(),
        ))
    };
    let cfg = Arc::new(s.config.clone());
    let crashed = Runner::new(
        cfg.clone(),
        Arc::new(TcpDialer),
        Arc::new(EventSink::none()),
        ledger(),
    )
    .faults(popbridge::pass::Faults::crash(
        popbridge::pass::Step::AfterRecord,
        3,
    ))
    .run(cfg.accounts.clone())
    .await;
    pop.wait_idle().await;
    assert_eq!(crashed[0].delivered, 3);
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        10,
        "no QUIT: nothing deleted"
    );
    assert_eq!(
        pop.sessions()[0].end,
        Some(mock_pop3::SessionEnd::ClientClosed)
    );
    let (after, events) = s.pass(&pop, &smtp).await;
    // The crash came after the commit that recorded the third delivery (with the others
    // of its group, the first eight): every recorded one is only deleted now, the rest
    // delivered.
    let already = count(&events, "message.already_delivered");
    assert!(already >= 3, "{already}");
    assert_eq!(after.delivered as usize + already, 10, "{after:?}");
    assert_eq!(after.deleted, 10);
    // The deliveries accepted while that commit ran were not recorded yet: submitted again,
    // each announced as a possible duplicate. None of the recorded group is sent twice.
    let announced: std::collections::HashSet<String> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|v| v["kind"] == "message.possible_duplicate")
        .map(|v| v["message_id"].as_str().unwrap().to_string())
        .collect();
    let mut times: std::collections::HashMap<String, usize> = Default::default();
    for id in delivered_ids(&smtp) {
        *times.entry(id).or_default() += 1;
    }
    assert_eq!(times.len(), 10, "nothing lost: {times:?}");
    for (id, n) in &times {
        assert!(
            *n == 1 || (*n == 2 && announced.contains(id)),
            "{id} x{n}: {announced:?}"
        );
    }
    for i in 0..8 {
        assert_eq!(
            times[&format!("<m{i}@isp.example>")],
            1,
            "recorded: never sent again"
        );
    }
}
