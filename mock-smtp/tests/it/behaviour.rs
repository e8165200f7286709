//! The receive connector's behaviour: every limit, reply and fault, with the exact reply
//! line and the capture outcome.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mock_smtp::pki::TestPki;
use mock_smtp::{
    CaptureMode, Delivery, Extensions, FaultAction, FaultRule, Hook, Limits, MailboxSpec, MockSmtp,
    Outcome, SessionEnd, SizeAdvert, SpamField, SpamRule,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client::{message, spawn, Client};

async fn ehlo(server: &mock_smtp::MockSmtpHandle) -> (Client<TcpStream>, Vec<String>) {
    let (mut c, g) = Client::connect(server).await;
    assert_eq!(g.code, 220);
    let r = c.cmd("EHLO client.example").await;
    assert_eq!(r.code, 250);
    (c, r.lines)
}

fn contoso() -> mock_smtp::Builder {
    MockSmtp::builder()
        .mailbox(MailboxSpec::new("bob@contoso.local"))
        .mailbox(MailboxSpec::new("carol@contoso.local"))
}

/// A client over `server` that waits up to an hour for each reply (paused-time tests).
async fn patient_client(server: &mock_smtp::MockSmtpHandle) -> Client<tokio::io::DuplexStream> {
    let (mut c, _) = Client::over(server.connect_duplex()).await;
    c.wire.step = Duration::from_secs(3600);
    c
}

#[tokio::test]
async fn greeting_and_ehlo_look_like_exchange() {
    let server = spawn(MockSmtp::builder()).await;
    let (mut c, g) = Client::connect(&server).await;
    assert_eq!(
        g.first_line(),
        "220 exchange.contoso.local Microsoft ESMTP MAIL Service ready"
    );
    let r = c.cmd("EHLO client.example").await;
    assert_eq!(
        r.lines,
        [
            "exchange.contoso.local Hello [127.0.0.1]",
            "SIZE 10485760",
            "PIPELINING",
            "DSN",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "BINARYMIME",
            "CHUNKING"
        ]
    );
    assert_eq!(
        c.cmd("QUIT").await.first_line(),
        "221 2.0.0 Service closing transmission channel"
    );
    assert!(c.wire.closed().await);
}

#[tokio::test]
async fn every_extension_can_be_switched() {
    let pki = TestPki::localhost().unwrap();
    // A server with TLS and credentials that offers `extensions`.
    let offering = |extensions| {
        MockSmtp::builder()
            .extensions(extensions)
            .tls(pki.server_config().unwrap())
            .credentials("u", "p")
    };
    let all = Extensions {
        smtputf8: true,
        auth: true,
        ..Extensions::default()
    };
    let server = spawn(offering(all)).await;
    let (_, lines) = ehlo(&server).await;
    for ext in [
        "SIZE 10485760",
        "PIPELINING",
        "8BITMIME",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "STARTTLS",
        "AUTH PLAIN LOGIN",
    ] {
        assert!(
            lines.contains(&ext.to_string()),
            "{ext} missing from {lines:?}"
        );
    }
    let none = Extensions {
        size: SizeAdvert::Absent,
        pipelining: false,
        dsn: false,
        enhanced_status_codes: false,
        starttls: false,
        eightbitmime: false,
        binarymime: false,
        chunking: false,
        smtputf8: false,
        auth: false,
    };
    let server = spawn(offering(none)).await;
    let (mut c, lines) = ehlo(&server).await;
    assert_eq!(lines, ["exchange.contoso.local Hello [127.0.0.1]"]);
    // Without ENHANCEDSTATUSCODES, replies carry no enhanced code.
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await.first_line(),
        "250 Sender OK"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net> BODY=8BITMIME").await.code,
        503
    );
    assert_eq!(c.cmd("STARTTLS").await.code, 500);
    assert_eq!(c.cmd("AUTH PLAIN AHUAcA==").await.code, 500);
    assert_eq!(c.cmd("BDAT 0 LAST").await.code, 500);
    let server = spawn(MockSmtp::builder().extensions(Extensions {
        size: SizeAdvert::Bare,
        ..Extensions::default()
    }))
    .await;
    let (_, lines) = ehlo(&server).await;
    assert!(lines.contains(&"SIZE".to_string()));
}

#[tokio::test]
async fn helo_works_and_sequence_errors_have_exchange_texts() {
    let server = spawn(contoso().limits(Limits {
        max_protocol_errors: None,
        ..Limits::default()
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    c.dialogue(&[
        ("MAIL FROM:<a@example.net>", "503 5.5.2 Send hello first"),
        (
            "HELO client",
            "250 exchange.contoso.local Hello [127.0.0.1]",
        ),
        ("RCPT TO:<bob@contoso.local>", "503 5.5.2 Need mail command"),
        ("DATA", "503 5.5.2 Need mail command"),
        ("MAIL FROM:<a@example.net>", "250 2.1.0 Sender OK"),
        (
            "MAIL FROM:<a@example.net>",
            "503 5.5.2 Sender already specified",
        ),
        ("DATA", "503 5.5.2 Need rcpt command"),
        ("XYZZY", "500 5.3.3 Unrecognized command"),
        ("MAIL TO:<x@y.z>", "501 5.5.4 Invalid arguments"),
        ("RCPT TO:<bob@contoso.local>", "250 2.1.5 Recipient OK"),
    ])
    .await;
    assert_eq!(c.cmd("RSET").await.code, 250);
    assert_eq!(c.cmd("NOOP").await.first_line(), "250 2.0.0 OK");
    drop(c);
    server.wait_idle().await;
    assert_eq!(server.sessions()[0].protocol_errors, 7);
}

#[tokio::test]
async fn size_is_refused_at_mail_from_and_again_after_the_data() {
    let limit = 10_000u64;
    let server = spawn(MockSmtp::builder().limits(Limits {
        max_message_size: Some(limit),
        ..Limits::default()
    }))
    .await;
    let (mut c, lines) = ehlo(&server).await;
    assert!(lines.contains(&format!("SIZE {limit}")));
    let r = c
        .cmd(&format!("MAIL FROM:<a@example.net> SIZE={}", limit + 1))
        .await;
    assert_eq!(
        r.first_line(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // A client that lies about SIZE (or sends none) is stopped after the data.
    assert!(c
        .cmd("MAIL FROM:<a@example.net> SIZE=100")
        .await
        .is_positive());
    c.cmd("RCPT TO:<bob@contoso.local>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    let r = c.data_body(&message("big", 20_000)).await;
    assert_eq!(
        r.first_line(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // The session goes on, and a message at the limit passes.
    let r = c
        .deliver(
            "a@example.net",
            "bob@contoso.local",
            &message("fits", limit as usize),
        )
        .await;
    assert_eq!(r.code, 250);
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let t = server.captured();
    assert_eq!(t.len(), 3);
    assert_eq!(
        t[0].outcome,
        Outcome::Rejected {
            reply: "552 5.3.4 Message size exceeds fixed maximum message size".into()
        }
    );
    assert!(matches!(&t[1].outcome, Outcome::Rejected { reply } if reply.starts_with("552 5.3.4")));
    assert!(t[1].data.is_empty(), "an oversize message is not kept");
    assert_eq!(t[1].size, 20_000);
    assert!(t[2].delivered());
    assert_eq!(t[2].size, limit);
}

#[tokio::test]
async fn header_size_and_recipient_count_limits() {
    let server = spawn(MockSmtp::builder().limits(Limits {
        max_header_size: Some(200),
        max_recipients: 2,
        ..Limits::default()
    }))
    .await;
    let (mut c, _) = ehlo(&server).await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    assert!(c.cmd("RCPT TO:<r1@example.org>").await.is_positive());
    assert!(c.cmd("RCPT TO:<r2@example.org>").await.is_positive());
    assert_eq!(
        c.cmd("RCPT TO:<r3@example.org>").await.first_line(),
        "452 4.5.3 Too many recipients"
    );
    assert_eq!(c.cmd("DATA").await.code, 354);
    let mut big_header = b"Subject: x\r\nX-Padding: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'p', 300));
    big_header.extend_from_slice(b"\r\n\r\nbody\r\n");
    assert_eq!(
        c.data_body(&big_header).await.first_line(),
        "552 5.3.4 Header size exceeds fixed maximum size"
    );
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let t = &server.captured()[0];
    assert_eq!(
        t.recipients.iter().map(|r| r.accepted).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(t.recipients[2].reply, "452 4.5.3 Too many recipients");
}

#[tokio::test]
async fn five_malformed_senders_end_the_session_with_421() {
    let server = spawn(MockSmtp::builder()).await;
    let (mut c, _) = ehlo(&server).await;
    for i in 1..=4 {
        let r = c
            .cmd(&format!("MAIL FROM:<bad sender{i}@@example.net>"))
            .await;
        assert_eq!(r.first_line(), "501 5.1.7 Invalid address");
    }
    c.wire.send("MAIL FROM:<still..bad@example.net>").await;
    assert_eq!(c.reply().await.first_line(), "501 5.1.7 Invalid address");
    assert_eq!(
        c.reply().await.first_line(),
        "421 4.7.0 Too many errors on this connection, closing transmission channel"
    );
    assert!(c.wire.closed().await);
    server.wait_idle().await;
    let s = &server.sessions()[0];
    assert_eq!(s.protocol_errors, 5);
    assert_eq!(s.end, Some(SessionEnd::TooManyErrors));
    let t = server.captured();
    assert_eq!(t.len(), 5);
    assert!(t.iter().all(|t| t.outcome
        == Outcome::Rejected {
            reply: "501 5.1.7 Invalid address".into()
        }));
}

#[tokio::test]
async fn senders_exchange_refuses_get_501_and_count_as_protocol_errors() {
    let server = spawn(MockSmtp::builder().reject_sender("@Refused.example")).await;
    let (mut c, _) = ehlo(&server).await;
    assert_eq!(
        c.cmd("MAIL FROM:<x@refused.example>").await.first_line(),
        "501 5.1.7 Invalid address"
    );
    assert_eq!(c.cmd("MAIL FROM:<x@fine.example>").await.code, 250);
    c.cmd("QUIT").await;
    server.wait_idle().await;
    assert_eq!(server.sessions()[0].protocol_errors, 1);
}

#[tokio::test]
async fn which_codes_count_and_the_limit_are_configurable() {
    let limits = Limits {
        max_protocol_errors: Some(2),
        protocol_error_codes: vec![500],
        ..Limits::default()
    };
    let server = spawn(MockSmtp::builder().limits(limits)).await;
    let (mut c, _) = ehlo(&server).await;
    for _ in 0..5 {
        assert_eq!(
            c.cmd("MAIL FROM:<a@@b>").await.code,
            501,
            "501 does not count here"
        );
    }
    assert_eq!(c.cmd("BOGUS").await.code, 500);
    c.wire.send("BOGUS").await;
    assert_eq!(c.reply().await.code, 500);
    assert_eq!(c.reply().await.code, 421);
    assert!(c.wire.closed().await);
}

#[tokio::test]
async fn default_domain_repairs_a_missing_domain_and_nothing_else() {
    let server = spawn(contoso().default_domain("contoso.local")).await;
    let (mut c, _) = ehlo(&server).await;
    c.deliver_ok("user", "bob@contoso.local", &message("repaired", 200))
        .await;
    c.dialogue(&[
        ("MAIL FROM:<bad..user>", "501 5.1.7 Invalid address"),
        ("MAIL FROM:<user@>", "501 5.1.7 Invalid address"),
    ])
    .await;
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let t = server.captured();
    assert_eq!(t[0].mail_from, "user");
    assert_eq!(t[0].sender.as_deref(), Some("user@contoso.local"));
    assert!(t[0].delivered());
    // Without DefaultDomain the same sender is a 501.
    let server = spawn(contoso()).await;
    let (mut c, _) = ehlo(&server).await;
    assert_eq!(
        c.cmd("MAIL FROM:<user>").await.first_line(),
        "501 5.1.7 Invalid address"
    );
}

#[tokio::test]
async fn recipients_known_unknown_relay_and_malformed() {
    let server = spawn(contoso()).await;
    let (mut c, _) = ehlo(&server).await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.dialogue(&[
        ("RCPT TO:<Bob@Contoso.local>", "250 2.1.5 Recipient OK"),
        ("RCPT TO:<nobody@contoso.local>", "550 5.1.1 User unknown"),
    ])
    .await;
    assert_eq!(
        c.cmd("RCPT TO:<someone@elsewhere.example>")
            .await
            .first_line(),
        "550 5.7.1 Unable to relay"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bad recipient>").await.first_line(),
        "501 5.1.3 Invalid address"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_recipients_are_tarpitted() {
    let server = contoso()
        .limits(Limits {
            tarpit: Duration::from_secs(5),
            ..Limits::default()
        })
        .spawn_in_memory();
    let mut c = patient_client(&server).await;
    c.cmd("EHLO x").await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    let t = Instant::now();
    assert!(c.cmd("RCPT TO:<bob@contoso.local>").await.is_positive());
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "known recipients are not delayed"
    );
    assert_eq!(c.cmd("RCPT TO:<nobody@contoso.local>").await.code, 550);
    assert!(t.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn limits_after_acceptance_produce_ndrs_after_a_250() {
    let server = spawn(
        MockSmtp::builder()
            .mailbox(MailboxSpec::new("small@contoso.local").receive_limit(1000))
            .mailbox(MailboxSpec::new("full@contoso.local").quota(1500))
            .mailbox(MailboxSpec::new("big@contoso.local")),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    // Mailbox receive limit: the session says 250, the categoriser bounces it.
    let r = c
        .deliver(
            "a@example.net",
            "small@contoso.local",
            &message("too big for small", 2000),
        )
        .await;
    assert_eq!(r.code, 250);
    // Quota: the first fits, the second overflows.
    c.deliver_ok("a@example.net", "full@contoso.local", &message("q1", 1000))
        .await;
    c.deliver_ok("a@example.net", "full@contoso.local", &message("q2", 1000))
        .await;
    // Several recipients: delivered to one, bounced for the other.
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<small@contoso.local>").await;
    c.cmd("RCPT TO:<big@contoso.local>").await;
    c.cmd("DATA").await;
    assert_eq!(c.data_body(&message("split", 2000)).await.code, 250);
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let t = server.captured();
    assert_eq!(t[0].outcome, Outcome::Accepted);
    assert_eq!(
        t[0].ndrs(),
        ["550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient"]
    );
    assert!(t[1].delivered());
    assert_eq!(t[2].ndrs(), ["550 5.2.2 Mailbox full"]);
    assert_eq!(server.mailbox_usage("full@contoso.local"), 1000);
    assert_eq!(
        t[3].deliveries,
        [
            Delivery::Ndr {
                recipient: "small@contoso.local".into(),
                text: "550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient"
                    .into()
            },
            Delivery::Delivered {
                recipient: "big@contoso.local".into()
            },
        ]
    );
    let counts = server.counts();
    assert_eq!((counts.accepted, counts.delivered, counts.ndr), (4, 1, 3));
}

#[tokio::test]
async fn organization_limit_bounces_for_everyone_after_acceptance() {
    let server = spawn(
        MockSmtp::builder()
            .organization_receive_limit(1000)
            .limits(Limits {
                max_message_size: Some(50_000),
                ..Limits::default()
            }),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    c.deliver_ok(
        "a@example.net",
        "bob@contoso.local",
        &message("org", 20_000),
    )
    .await;
    c.cmd("QUIT").await;
    server.wait_idle().await;
    assert_eq!(
        server.captured()[0].ndrs(),
        ["550 5.2.3 RESOLVER.RST.SendSizeLimit.Org; message too large for this organization"]
    );
}

#[tokio::test]
async fn anti_spam_rules_reject_with_550_and_keep_badmail() {
    let spool = tempfile::tempdir().unwrap();
    let server = spawn(
        MockSmtp::builder()
            .spam_rule(SpamRule {
                field: SpamField::Subject,
                contains: "viagra".into(),
            })
            .spam_rule(SpamRule {
                field: SpamField::Sender,
                contains: "@spammer.example".into(),
            })
            .spam_rule(SpamRule {
                field: SpamField::Header("X-Spam-Flag".into()),
                contains: "yes".into(),
            })
            .spool_dir(spool.path()),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    let spam_reply = "550 5.7.1 Message rejected as spam by Content Filtering.";
    assert_eq!(
        c.deliver(
            "a@example.net",
            "bob@contoso.local",
            &message("Cheap VIAGRA", 300)
        )
        .await
        .first_line(),
        spam_reply
    );
    assert_eq!(
        c.deliver(
            "x@spammer.example",
            "bob@contoso.local",
            &message("hello", 300)
        )
        .await
        .first_line(),
        spam_reply
    );
    let flagged = b"Subject: hi\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n";
    assert_eq!(
        c.deliver("a@example.net", "bob@contoso.local", flagged)
            .await
            .first_line(),
        spam_reply
    );
    c.deliver_ok("a@example.net", "bob@contoso.local", &message("fine", 300))
        .await;
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let t = server.captured();
    assert!(t[..3].iter().all(|t| t.outcome
        == Outcome::Badmail {
            reply: spam_reply.into()
        }));
    assert_eq!(
        std::fs::read_dir(spool.path().join("badmail"))
            .unwrap()
            .count(),
        3
    );
    let kept: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(kept[0].path()).unwrap(), message("fine", 300));
    assert_eq!(server.counts().badmail, 3);
}

#[tokio::test]
async fn capture_keeps_the_envelope_and_dot_unstuffed_bytes() {
    let server = spawn(contoso()).await;
    let (mut c, _) = ehlo(&server).await;
    let body = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n".to_vec();
    c.wire.send_raw(b"MAIL FROM:<a@example.net> SIZE=55 BODY=8BITMIME\r\nRCPT TO:<bob@contoso.local>\r\nRCPT TO:<nobody@contoso.local>\r\nRCPT TO:<carol@contoso.local>\r\nDATA\r\n").await;
    let codes: Vec<u16> = [
        c.reply().await,
        c.reply().await,
        c.reply().await,
        c.reply().await,
        c.reply().await,
    ]
    .iter()
    .map(|r| r.code)
    .collect();
    assert_eq!(
        codes,
        [250, 250, 550, 250, 354],
        "pipelined replies in order"
    );
    let r = c.data_body(&body).await;
    assert_eq!(
        r.first_line(),
        "250 2.6.0 <1.1@exchange.contoso.local> Queued mail for delivery"
    );
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let t = &server.captured()[0];
    assert_eq!(t.mail_from, "a@example.net");
    assert_eq!(
        t.params.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["SIZE=55", "BODY=8BITMIME"]
    );
    assert_eq!(
        t.recipients
            .iter()
            .map(|r| (r.address.as_str(), r.reply.as_str()))
            .collect::<Vec<_>>(),
        [
            ("bob@contoso.local", "250 2.1.5 Recipient OK"),
            ("nobody@contoso.local", "550 5.1.1 User unknown"),
            ("carol@contoso.local", "250 2.1.5 Recipient OK"),
        ]
    );
    assert_eq!(&t.data[..], &body[..]);
    assert_eq!(t.size, body.len() as u64);
    assert_eq!(t.deliveries.len(), 2, "only the accepted recipients get it");
}

#[tokio::test]
async fn bdat_chunks_are_joined_and_size_checked() {
    let server = spawn(MockSmtp::builder().limits(Limits {
        max_message_size: Some(1000),
        ..Limits::default()
    }))
    .await;
    let (mut c, _) = ehlo(&server).await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<bob@contoso.local>").await;
    // Raw bytes: no dot-stuffing, a lone dot line is data.
    c.wire.send_raw(b"BDAT 12\r\nSubject: a\r\n").await;
    assert_eq!(c.reply().await.first_line(), "250 2.0.0 12 octets received");
    c.wire.send_raw(b"BDAT 10 LAST\r\n\r\n.\r\nend\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    // Too big in chunks: refused at the last chunk, chunk bytes still consumed.
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<bob@contoso.local>").await;
    let chunk = vec![b'x'; 800];
    c.wire
        .send_raw(format!("BDAT {}\r\n", chunk.len()).as_bytes())
        .await;
    c.wire.send_raw(&chunk).await;
    assert_eq!(c.reply().await.code, 250);
    c.wire
        .send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes())
        .await;
    c.wire.send_raw(&chunk).await;
    assert_eq!(
        c.reply().await.first_line(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(c.cmd("NOOP").await.code, 250, "the stream is still in step");
    c.cmd("QUIT").await;
    server.wait_idle().await;
    let t = server.captured();
    assert!(t[0].bdat);
    assert_eq!(&t[0].data[..], b"Subject: a\r\n\r\n.\r\nend\r\n");
    assert!(matches!(&t[1].outcome, Outcome::Rejected { reply } if reply.starts_with("552")));
    assert_eq!(t[1].size, 1600);
}

#[tokio::test]
async fn auth_plain_and_login_and_the_logon_failure_limit() {
    let server = spawn(
        MockSmtp::builder()
            .extensions(Extensions {
                auth: true,
                ..Extensions::default()
            })
            .credentials("svc", "pw"),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0svc\0pw")))
            .await
            .first_line(),
        "235 2.7.0 Authentication successful"
    );
    c.cmd("QUIT").await;
    let (mut c, _) = ehlo(&server).await;
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&B64.encode("svc")).await.code, 334);
    assert_eq!(c.cmd(&B64.encode("pw")).await.code, 235);
    c.cmd("QUIT").await;
    let (mut c, _) = ehlo(&server).await;
    for _ in 0..2 {
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {}", B64.encode("\0svc\0nope")))
                .await
                .first_line(),
            "535 5.7.3 Authentication unsuccessful"
        );
    }
    c.wire
        .send(&format!("AUTH PLAIN {}", B64.encode("\0svc\0nope")))
        .await;
    assert_eq!(c.reply().await.code, 535);
    assert_eq!(
        c.reply().await.first_line(),
        "421 4.7.0 Too many errors on this connection, closing transmission channel"
    );
    assert!(c.wire.closed().await);
    server.wait_idle().await;
    assert!(!server.transcript().contains(&B64.encode("\0svc\0pw")));
    assert!(!server.transcript().contains(&B64.encode("pw")));
}

#[tokio::test]
async fn starttls_discards_injected_commands_and_requires_a_new_ehlo() {
    let pki = TestPki::localhost().unwrap();
    let server = spawn(MockSmtp::builder().tls(pki.server_config().unwrap())).await;
    let (mut c, lines) = ehlo(&server).await;
    assert!(lines.contains(&"STARTTLS".to_string()));
    c.wire
        .send_raw(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        .await;
    assert_eq!(c.reply().await.first_line(), "220 2.0.0 SMTP server ready");
    assert!(c.wire.buf.is_empty());
    let connector = tokio_rustls::TlsConnector::from(pki.client_config().unwrap());
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), c.wire.stream)
        .await
        .unwrap();
    let mut c = Client::resume(tls);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.net>").await.first_line(),
        "503 5.5.2 Send hello first"
    );
    let r = c.cmd("EHLO again").await;
    assert!(!r.lines.contains(&"STARTTLS".to_string()));
    c.deliver_ok("a@example.net", "bob@contoso.local", &message("tls", 300))
        .await;
    c.cmd("QUIT").await;
    server.wait_idle().await;
    assert!(server.sessions()[0].tls);
    let t = server.captured();
    assert!(
        t.iter().all(|t| t.mail_from != "injected@evil.example"),
        "{t:?}"
    );
}

#[tokio::test]
async fn replace_reply_on_the_nth_use_for_k_times() {
    let server = spawn(
        MockSmtp::builder().fault(
            FaultRule::new(
                Hook::command("MAIL"),
                FaultAction::Reply("451 4.3.0 Temporary failure".into()),
            )
            .nth(2)
            .times(2),
        ),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = c.cmd("MAIL FROM:<a@example.net>").await;
        codes.push(r.code);
        if r.is_positive() {
            c.cmd("RSET").await;
        }
    }
    assert_eq!(codes, [250, 451, 451, 250]);
}

#[tokio::test]
async fn a_421_at_message_k_closes_the_connection_and_the_message_is_not_taken() {
    let server = spawn(
        MockSmtp::builder().fault(
            FaultRule::new(
                Hook::EndOfData,
                FaultAction::ReplyAndClose(
                    "421 4.3.2 Service not available, closing transmission channel".into(),
                ),
            )
            .nth(3),
        ),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    for i in 1..=2 {
        c.deliver_ok(
            "a@example.net",
            "bob@contoso.local",
            &message(&format!("m{i}"), 300),
        )
        .await;
    }
    let r = c
        .deliver("a@example.net", "bob@contoso.local", &message("m3", 300))
        .await;
    assert_eq!(
        r.first_line(),
        "421 4.3.2 Service not available, closing transmission channel"
    );
    assert!(c.wire.closed().await);
    server.wait_idle().await;
    let t = server.captured();
    assert_eq!(t.len(), 3);
    assert!(t[0].delivered() && t[1].delivered());
    assert_eq!(
        t[2].outcome,
        Outcome::Rejected {
            reply: "421 4.3.2 Service not available, closing transmission channel".into()
        }
    );
    assert_eq!(server.counts().accepted, 2);
}

#[tokio::test]
async fn a_421_at_command_n_counts_every_command() {
    let server = spawn(MockSmtp::builder().fault(
        FaultRule::new(Hook::AnyCommand, FaultAction::ReplyAndClose("421 4.4.2 Message submission rate for this client has exceeded the configured limit".into())).nth(4),
    ))
    .await;
    let (mut c, _) = ehlo(&server).await;
    assert!(c.cmd("MAIL FROM:<a@example.net>").await.is_positive());
    assert!(c.cmd("RCPT TO:<bob@contoso.local>").await.is_positive());
    let r = c.cmd("DATA").await;
    assert_eq!(
        r.first_line(),
        "421 4.4.2 Message submission rate for this client has exceeded the configured limit"
    );
    assert!(c.wire.closed().await);
    server.wait_idle().await;
    assert_eq!(server.captured()[0].outcome, Outcome::Abandoned);
    assert_eq!(server.counts().accepted, 0);
}

#[tokio::test]
async fn close_without_reply_at_command_n() {
    let server = spawn(
        MockSmtp::builder()
            .fault(FaultRule::new(Hook::AnyCommand, FaultAction::CloseBeforeReply).nth(3)),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    assert!(c.cmd("MAIL FROM:<a@example.net>").await.is_positive());
    c.wire.send("RCPT TO:<bob@contoso.local>").await;
    assert!(c.try_reply().await.is_none(), "closed without a reply");
    server.wait_idle().await;
    assert_eq!(server.captured()[0].outcome, Outcome::Abandoned);
}

#[tokio::test(start_paused = true)]
async fn delay_throttle_and_idle_timeout_on_the_paused_clock() {
    let server = MockSmtp::builder()
        .fault(FaultRule::new(
            Hook::command("EHLO"),
            FaultAction::Delay(Duration::from_secs(20)),
        ))
        .throttle(100)
        .limits(Limits {
            connection_timeout: Duration::from_secs(600),
            ..Limits::default()
        })
        .spawn_in_memory();
    let mut c = patient_client(&server).await;
    let t = Instant::now();
    let r = c.cmd("EHLO x").await;
    assert_eq!(r.code, 250);
    // 20 s of delay, then about 150 octets of EHLO reply at 100 octets/s.
    let e = t.elapsed();
    assert!(
        e >= Duration::from_secs(21) && e <= Duration::from_secs(23),
        "{e:?}"
    );
    tokio::time::advance(Duration::from_secs(601)).await;
    assert_eq!(
        c.reply().await.first_line(),
        "421 4.4.1 Connection timed out"
    );
    assert!(c.wire.closed().await);
}

#[tokio::test]
async fn count_only_mode_keeps_counters_and_no_records() {
    let server = spawn(
        MockSmtp::builder()
            .capture(CaptureMode::CountOnly)
            .record_transcript(false),
    )
    .await;
    let (mut c, _) = ehlo(&server).await;
    for i in 0..20 {
        c.deliver_ok(
            "a@example.net",
            "bob@contoso.local",
            &message(&format!("m{i}"), 500),
        )
        .await;
    }
    c.cmd("QUIT").await;
    server.wait_idle().await;
    assert!(server.captured().is_empty());
    assert_eq!(server.counts().accepted, 20);
    assert_eq!(server.counts().bytes, 20 * 500);
    assert!(server.sessions()[0].transcript.is_empty());
}

#[tokio::test]
async fn faults_with_probability_replay_with_the_seed() {
    async fn run(seed: u64) -> Vec<u16> {
        let server = spawn(
            MockSmtp::builder().seed(seed).fault(
                FaultRule::new(
                    Hook::command("RCPT"),
                    FaultAction::Reply("452 4.3.1 Insufficient system resources".into()),
                )
                .always()
                .probability(0.4),
            ),
        )
        .await;
        let (mut c, _) = ehlo(&server).await;
        c.cmd("MAIL FROM:<a@example.net>").await;
        let mut v = Vec::new();
        for i in 0..30 {
            v.push(c.cmd(&format!("RCPT TO:<r{i}@example.org>")).await.code);
        }
        v
    }
    let (a, b, c) = (run(1).await, run(1).await, run(2).await);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.contains(&452) && a.contains(&250));
}

#[tokio::test]
async fn a_line_longer_than_the_limit_is_a_500_not_a_crash() {
    let server = spawn(MockSmtp::builder()).await;
    let (mut c, _) = ehlo(&server).await;
    let mut line = vec![b'A'; 100_000];
    line.extend_from_slice(b"\r\n");
    c.wire.send_raw(&line).await;
    assert_eq!(c.reply().await.first_line(), "500 5.5.2 Line too long");
    c.wire.send_raw(b"\0\xff\xfe\r\n").await;
    assert_eq!(c.reply().await.code, 501);
    assert_eq!(c.cmd("NOOP").await.code, 250);
}
