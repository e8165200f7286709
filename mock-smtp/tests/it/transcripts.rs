//! Canonical transcripts, snapshotted with insta: a change in any reply text, order or
//! limit shows up as a snapshot diff. Run over in-memory streams, so they are deterministic.

use mock_smtp::{Limits, MailboxSpec, MockSmtp, MockSmtpHandle};

use crate::client::{message, Client};

/// Says `EHLO client.example`, then runs a script of (bytes to send, replies they
/// produce) and returns the transcript.
async fn session(server: &MockSmtpHandle, script: &[(&[u8], usize)]) -> String {
    let (mut c, _) = Client::over(server.connect_duplex()).await;
    let ehlo: (&[u8], usize) = (b"EHLO client.example\r\n", 1);
    for (chunk, replies) in std::iter::once(&ehlo).chain(script) {
        c.wire.send_raw(chunk).await;
        for _ in 0..*replies {
            c.reply().await;
        }
    }
    // Every script ends with the server closing (QUIT or the error limit).
    assert!(c.wire.closed().await);
    drop(c);
    server.wait_idle().await;
    server.transcript()
}

/// [`session`] on a fresh server with the default settings: the server and the transcript.
async fn default_session(script: &[(&[u8], usize)]) -> (MockSmtpHandle, String) {
    let server = MockSmtp::builder().spawn_in_memory();
    let t = session(&server, script).await;
    (server, t)
}

/// One delivery from alice to bob, MAIL FROM (with `mail_params`), RCPT and DATA in one
/// write, then `message` dot-stuffed, then QUIT: the transcript.
async fn pipelined_delivery(server: &MockSmtpHandle, mail_params: &str, message: &[u8]) -> String {
    let head = format!(
        "MAIL FROM:<alice@example.net>{mail_params}\r\nRCPT TO:<bob@contoso.local>\r\nDATA\r\n"
    );
    let wire = popbridge_proto::DotStuffer::stuff_all(message, true);
    session(
        server,
        &[(head.as_bytes(), 3), (&wire, 1), (b"QUIT\r\n", 1)],
    )
    .await
}

#[tokio::test]
async fn normal_pipelined_delivery() {
    let server = MockSmtp::builder()
        .mailbox(MailboxSpec::new("bob@contoso.local"))
        .spawn_in_memory();
    let t = pipelined_delivery(&server, " SIZE=200", &message("hello", 200)).await;
    let stats = &server.sessions()[0];
    // MAIL, RCPT and DATA arrive together and are answered in one write.
    let t = format!(
        "{t}-- {} replies in {} writes --\n",
        stats.replies, stats.writes
    );
    insta::assert_snapshot!(t);
}

#[tokio::test]
async fn five_malformed_senders_end_in_421() {
    let (_server, t) = default_session(&[
        (b"MAIL FROM:<user one@example.net>\r\n", 1),
        (b"MAIL FROM:<@example.net>\r\n", 1),
        (b"MAIL FROM:<user..two@example.net>\r\n", 1),
        (b"MAIL FROM:<user@-bad-.example>\r\n", 1),
        (b"MAIL FROM:<user\"@example.net>\r\n", 2),
    ])
    .await;
    insta::assert_snapshot!(t);
}

#[tokio::test]
async fn size_over_the_limit_at_mail_from() {
    let (_server, t) = default_session(&[
        (b"MAIL FROM:<alice@example.net> SIZE=20971520\r\n", 1),
        (b"QUIT\r\n", 1),
    ])
    .await;
    insta::assert_snapshot!(t);
}

#[tokio::test]
async fn default_domain_repairs_a_bare_local_part() {
    let server = MockSmtp::builder()
        .default_domain("contoso.local")
        .spawn_in_memory();
    let body = popbridge_proto::DotStuffer::stuff_all(&message("repaired", 150), true);
    let t = session(
        &server,
        &[
            (b"MAIL FROM:<user>\r\n", 1),
            (b"RCPT TO:<bob@contoso.local>\r\n", 1),
            (b"DATA\r\n", 1),
            (&body, 1),
            (b"QUIT\r\n", 1),
        ],
    )
    .await;
    insta::assert_snapshot!(t);
    assert_eq!(
        server.captured()[0].sender.as_deref(),
        Some("user@contoso.local")
    );
}

#[tokio::test]
async fn bdat_delivery() {
    let (server, t) = default_session(&[
        (
            b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@contoso.local>\r\n",
            2,
        ),
        (b"BDAT 20\r\nSubject: chunked\r\n\r\n", 1),
        (b"BDAT 6 LAST\r\nbody\r\n", 1),
        (b"QUIT\r\n", 1),
    ])
    .await;
    insta::assert_snapshot!(t);
    assert_eq!(
        &server.captured()[0].data[..],
        b"Subject: chunked\r\n\r\nbody\r\n"
    );
}

#[tokio::test]
async fn mailbox_limit_ndr_after_a_250() {
    let server = MockSmtp::builder()
        .limits(Limits {
            max_message_size: Some(50 * 1024 * 1024),
            ..Limits::default()
        })
        .mailbox(MailboxSpec::new("bob@contoso.local").receive_limit(10 * 1024))
        .spawn_in_memory();
    let body = message("twenty kilobytes", 20 * 1024);
    let t = pipelined_delivery(&server, " SIZE=20480", &body).await;
    let txn = &server.captured()[0];
    let report = format!(
        "{t}-- capture --\nsession reply: {:?}\ndeliveries: {:?}\n",
        txn.outcome, txn.deliveries
    );
    insta::assert_snapshot!(report);
}
