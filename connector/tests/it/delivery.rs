//! Delivery targets and routing against the mocks: the pickup folder (SBS 2003 style) with
//! its crash and failure cases, and catch-all ("global") mailboxes routed by header.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use mock_pop3::MockPop3;
use mock_smtp::{Delivery, MailboxSpec, MockSmtp, MockSmtpHandle};
use popbridge::body::Body;
use popbridge::config::{PickupTransport, Transport};
use popbridge::events::Event;
use popbridge::pickup::{Pickup, Staged, STAGING_DIR};

use crate::harness::*;

/// The exact bytes of message `i`.
fn message_bytes(i: usize) -> Vec<u8> {
    format!(
        "Return-Path: <a@example.net>\r\nFrom: A <a@example.net>\r\nTo: info@isp.example\r\n\
         Subject: pickup {i}\r\nMessage-ID: <p{i}@isp.example>\r\n\r\nline one of {i}\r\n\
         .leading dot kept as is\r\n\r\nlast line\r\n"
    )
    .into_bytes()
}

/// `n` messages with UIDs `u0`, `u1`, ...
fn messages(n: usize) -> Vec<mock_pop3::Message> {
    (0..n)
        .map(|i| raw(&message_bytes(i)).with_uid(format!("u{i}")))
        .collect()
}

/// A setup delivering into `pickup_dir` (failed copies into `failed_dir`, by default
/// `<state>/failed`), without the trace header so file contents can be compared exactly.
fn pickup_setup(
    pop: &mock_pop3::MockPop3Handle,
    smtp: &MockSmtpHandle,
    extra: &str,
    pickup_dir: &Path,
    failed_dir: Option<PathBuf>,
) -> Setup {
    let mut s = setup(pop, smtp, extra, "");
    s.config.received_header = false;
    let failed_dir = failed_dir.unwrap_or_else(|| s.state().join("failed"));
    point_at_pickup(&mut s, pickup_dir, failed_dir);
    s
}

/// Delivers `s`'s mail into `pickup_dir`, failed copies into `failed_dir`.
fn point_at_pickup(s: &mut Setup, pickup_dir: &Path, failed_dir: PathBuf) {
    s.config.transport = Transport::Pickup(PickupTransport {
        dir: pickup_dir.to_path_buf(),
        failed_dir,
        mode: popbridge::config::DEFAULT_PICKUP_MODE,
        helo: s.config.transport.helo().to_string(),
    });
}

/// A file where a folder is expected, in a fresh temporary root: the root (removed on
/// drop) and the file. Tests run as root, so permissions would not stop a write: a path
/// through a file does.
fn not_a_folder() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    (root, file)
}

/// `.eml` files at the top of a folder (what a pickup service would take), sorted.
fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "eml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Message-ID → file, failing on a message written twice.
fn by_message_id(files: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or_else(|| panic!("no Message-ID in {}", f.display()))
            .to_string();
        if let Some(other) = out.insert(id.clone(), f.clone()) {
            panic!(
                "{id} written twice: {} and {}",
                other.display(),
                f.display()
            );
        }
    }
    out
}

fn staged_files(pickup_dir: &Path) -> Vec<PathBuf> {
    files_under(&pickup_dir.join(STAGING_DIR))
}

/// A fresh `Pickup` folder: its temporary root (removed on drop) and the folder.
fn pickup_folder() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("Pickup");
    std::fs::create_dir(&dir).unwrap();
    (root, dir)
}

/// Mocks serving `msgs` and a [`pickup_setup`] delivering them into a fresh [`pickup_folder`]:
/// the mocks, the folder's temporary root (removed on drop), the folder and the setup.
async fn served_into_pickup(
    msgs: Vec<mock_pop3::Message>,
) -> (
    mock_pop3::MockPop3Handle,
    MockSmtpHandle,
    tempfile::TempDir,
    PathBuf,
    Setup,
) {
    let (pop, smtp) = mocks(mailbox_with(msgs)).await;
    let (root, dir) = pickup_folder();
    let s = pickup_setup(&pop, &smtp, "", &dir, None);
    (pop, smtp, root, dir, s)
}

/// The pickup of `s`, and messages 0 and 1 (UIDs `u0`, `u1`) for `info@contoso.local`
/// staged in it as an earlier pass would.
async fn two_staged(s: &Setup) -> (Pickup, Vec<Staged>) {
    let pickup = Pickup::from_config(&s.config).unwrap();
    let mut staged = Vec::new();
    for i in 0..2 {
        let body = Body::from_bytes(Bytes::from(message_bytes(i)));
        let (key, to) = (format!("u{i}"), ["info@contoso.local".to_string()]);
        let one = pickup.stage("info", &key, "a@example.net", &to, &body);
        staged.push(one.await.unwrap());
    }
    (pickup, staged)
}

fn rejected_replies(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Rejected { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn pickup_writes_each_message_once_with_its_envelope_and_never_connects_to_smtp() {
    let pop = pop3(
        MockPop3::builder()
            .maildrop(mailbox_with(messages(6)))
            // The first pass's QUIT is lost: nothing deleted, the ledger must prevent copies.
            .fault(quit_lost()),
    )
    .await;
    let smtp = smtp(MockSmtp::builder()).await;
    let (_root, dir) = pickup_folder();
    let s = pickup_setup(&pop, &smtp, "", &dir, None);

    let (first, events) = s.pass(&pop, &smtp).await;
    assert_eq!((first.delivered, first.deleted), (6, 0), "{first:?}");
    assert_eq!(count(&events, "message.delivered"), 6);
    let files = eml_files(&dir);
    assert_eq!(files.len(), 6, "{files:?}");
    let ids = by_message_id(&files);
    for i in 0..6 {
        let file = &ids[&format!("<p{i}@isp.example>")];
        let mut expected =
            b"X-Sender: a@example.net\r\nX-Receiver: info@contoso.local\r\n".to_vec();
        expected.extend_from_slice(&message_bytes(i));
        assert_eq!(
            std::fs::read(file).unwrap(),
            expected,
            "exact bytes after the envelope lines"
        );
    }
    assert!(staged_files(&dir).is_empty(), "nothing left staged");
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 6);

    let (second, events) = s.pass(&pop, &smtp).await;
    assert_eq!((second.delivered, second.deleted), (0, 6), "{second:?}");
    assert_eq!(count(&events, "message.already_delivered"), 6);
    assert_eq!(eml_files(&dir), files, "no second copy");
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
    assert!(smtp.sessions().is_empty(), "no SMTP connection at all");
    assert!(
        files_under(&s.state().join("pickup-journal")).is_empty(),
        "markers settled"
    );
}

#[tokio::test]
async fn pickup_keeps_the_trace_header_after_the_envelope_lines() {
    let (pop, smtp, _root, dir, mut s) = served_into_pickup(messages(1)).await;
    s.config.received_header = true;
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 1);
    let data = std::fs::read(&eml_files(&dir)[0]).unwrap();
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.starts_with(
            "X-Sender: a@example.net\r\nX-Receiver: info@contoso.local\r\nReceived: from 127.0.0.1"
        ),
        "{text}"
    );
    assert!(text.contains("for <info@contoso.local>;"), "{text}");
    assert!(data.ends_with(&message_bytes(0)));
}

/// Two small messages and a 5000-octet one through the pickup folder, with `limit` set
/// on the configuration: the large one must be skipped and kept on the server. The SMTP
/// mock, to check it was never used.
async fn pickup_with_a_4000_octet_limit(limit: impl FnOnce(&mut Setup)) -> MockSmtpHandle {
    let mut msgs = messages(2);
    msgs.push(raw(&vec![b'x'; 5000]).with_uid("big"));
    let (pop, smtp, _root, _dir, mut s) = served_into_pickup(msgs).await;
    limit(&mut s);
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.skipped), (2, 1), "{sum:?}");
    assert_eq!(count(&events, "message.skipped_oversize"), 1);
    assert_eq!(pop.maildrop("info").unwrap().remaining, ["big"]);
    smtp
}

#[tokio::test]
async fn pickup_applies_the_configured_size_limit_only() {
    let smtp =
        pickup_with_a_4000_octet_limit(|s| s.config.limits.max_message_size = Some(4000)).await;
    assert!(smtp.sessions().is_empty());
}

#[tokio::test]
async fn pickup_keeps_what_exchange_would_bounce() {
    // The pickup service hands messages to the categoriser, which applies Exchange's
    // organisation and mailbox limits: a larger message is kept, never written.
    pickup_with_a_4000_octet_limit(|s| {
        s.config.exchange.organization_receive_limit = popbridge::config::ReceiveLimit::Octets(4000)
    })
    .await;
}

#[tokio::test]
async fn a_crash_between_write_and_rename_publishes_nothing_and_the_next_pass_delivers_once() {
    let (pop, smtp, _root, dir, s) = served_into_pickup(messages(3)).await;

    // An earlier pass wrote u0 and u1 to their temporary names and died before the rename.
    let (_pickup, staged) = two_staged(&s).await;
    for staged in staged {
        assert!(staged.path().exists());
        drop(staged); // the crash: no rename
    }
    assert_eq!(staged_files(&dir).len(), 2);
    assert!(
        eml_files(&dir).is_empty(),
        "a staged file is not a delivered .eml"
    );

    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.deleted), (3, 3), "{sum:?}");
    assert_eq!(count(&events, "message.delivered"), 3);
    let ids = by_message_id(&eml_files(&dir));
    assert_eq!(ids.len(), 3, "each message exactly once");
    assert!(
        staged_files(&dir).is_empty(),
        "stale temporary files cleaned up"
    );
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
}

#[tokio::test]
async fn a_crash_after_the_rename_before_the_ledger_does_not_write_a_second_copy() {
    let (pop, smtp, _root, dir, s) = served_into_pickup(messages(3)).await;

    // An earlier pass published u0 and u1 and died before recording them; the pickup
    // service has already taken u1's file.
    let (pickup, staged) = two_staged(&s).await;
    for staged in staged {
        pickup.commit(staged).await.unwrap();
    }
    std::fs::remove_file(pickup.delivered_path("info", "u1")).unwrap();

    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.deleted), (3, 3), "{sum:?}");
    let already: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Delivered { reply, .. } if reply.contains("interrupted earlier attempt")))
        .collect();
    assert_eq!(already.len(), 2, "{events:?}");
    let ids = by_message_id(&eml_files(&dir));
    assert_eq!(
        ids.keys().collect::<Vec<_>>(),
        ["<p0@isp.example>", "<p2@isp.example>"],
        "u1 was consumed and not written again; u0 not written twice"
    );
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
    assert!(files_under(&s.state().join("pickup-journal")).is_empty());
}

#[tokio::test]
async fn an_unwritable_pickup_folder_keeps_mail_on_the_server_with_a_failed_mail_copy() {
    let (pop, smtp) = mocks(mailbox_with(messages(2))).await;
    let (root, file) = not_a_folder();
    let mut s = pickup_setup(&pop, &smtp, "", &file.join("Pickup"), None);

    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!(
        (sum.delivered, sum.rejected, sum.deleted),
        (0, 2, 0),
        "{sum:?}"
    );
    assert_eq!(sum.remaining(), 2);
    let replies = rejected_replies(&events);
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert!(r.starts_with("pickup failed: "), "{r}");
        assert!(r.contains("not-a-folder"), "names the folder: {r}");
        assert!(r.contains("failed-mail folder"), "{r}");
    }
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 2);
    let failed_dir = s.state().join("failed");
    let copies = by_message_id(&eml_files(&failed_dir));
    assert_eq!(copies.len(), 2);
    let mut expected = b"X-Sender: a@example.net\r\nX-Receiver: info@contoso.local\r\n".to_vec();
    expected.extend_from_slice(&message_bytes(0));
    assert_eq!(
        std::fs::read(&copies["<p0@isp.example>"]).unwrap(),
        expected
    );

    // A second failing pass does not pile up copies, nor count towards quarantine.
    let (again, _) = s.pass(&pop, &smtp).await;
    assert_eq!((again.rejected, again.quarantined), (2, 0));
    let (third, _) = s.pass(&pop, &smtp).await;
    assert_eq!((third.rejected, third.quarantined), (2, 0), "{third:?}");
    assert_eq!(eml_files(&failed_dir).len(), 2);

    // Once the folder is fixed the mail flows, and the failed copies go away.
    let dir = root.path().join("Pickup");
    std::fs::create_dir(&dir).unwrap();
    point_at_pickup(&mut s, &dir, failed_dir.clone());
    let (ok, _) = s.pass(&pop, &smtp).await;
    assert_eq!((ok.delivered, ok.deleted), (2, 2), "{ok:?}");
    assert_eq!(by_message_id(&eml_files(&dir)).len(), 2);
    assert!(
        eml_files(&failed_dir).is_empty(),
        "no copy left to resubmit twice"
    );
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
    assert!(smtp.sessions().is_empty());
}

#[tokio::test]
async fn with_nowhere_to_write_the_mail_stays_and_the_event_says_why() {
    let (pop, smtp) = mocks(mailbox_with(messages(2))).await;
    let (_root, file) = not_a_folder();
    let s = pickup_setup(
        &pop,
        &smtp,
        "",
        &file.join("Pickup"),
        Some(file.join("Failed")),
    );
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!(
        (sum.delivered, sum.rejected, sum.deleted),
        (0, 2, 0),
        "{sum:?}"
    );
    for r in rejected_replies(&events) {
        assert!(r.starts_with("pickup failed: "), "{r}");
        assert!(r.contains("the failed-mail copy failed too"), "{r}");
        assert!(r.contains("kept on the server"), "{r}");
    }
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 2);
    assert_eq!(pop.maildrop("info").unwrap().retrievals, 2);
}

#[tokio::test]
async fn a_catch_all_through_the_pickup_folder_writes_one_file_with_a_receiver_line_each() {
    let msg = b"Return-Path: <a@example.net>\r\nDelivered-To: Alice@Contoso.local\r\n\
                Delivered-To: bob@contoso.local\r\nTo: ext@example.net\r\n\
                Message-ID: <c1@x>\r\n\r\nhello\r\n";
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with([raw(msg)]))).await;
    let smtp = smtp(MockSmtp::builder()).await;
    let (_root, dir) = pickup_folder();
    let s = pickup_setup(
        &pop,
        &smtp,
        "catch_all = { local_domains = [\"contoso.local\"] }",
        &dir,
        None,
    );
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 1);
    let files = eml_files(&dir);
    assert_eq!(files.len(), 1, "one file for both recipients");
    let mut expected = b"X-Sender: a@example.net\r\nX-Receiver: alice@contoso.local\r\n\
                         X-Receiver: bob@contoso.local\r\n"
        .to_vec();
    expected.extend_from_slice(msg);
    assert_eq!(std::fs::read(&files[0]).unwrap(), expected);
}

// ---------------------------------------------------------------------------------------
// Catch-all routing over SMTP
// ---------------------------------------------------------------------------------------

const CATCH_ALL: &str = "catch_all = { local_domains = [\"contoso.local\"], \
                         local_addresses = [\"boss@other.example\"] }";

fn routed(id: &str, headers: &str) -> mock_pop3::Message {
    raw(format!(
        "Return-Path: <sender@example.net>\r\nFrom: sender@example.net\r\n{headers}\
         Subject: {id}\r\nMessage-ID: <{id}>\r\n\r\nbody of {id}\r\n"
    )
    .as_bytes())
}

/// Recipient → Message-IDs the mock put in that mailbox, and Message-ID → RCPTs of its
/// single transaction (panics when a message was submitted twice).
fn deliveries(
    smtp: &MockSmtpHandle,
) -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, Vec<String>>,
) {
    let mut per_mailbox: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rcpts = BTreeMap::new();
    for t in smtp.captured() {
        assert!(t.delivered(), "{:?}", t.outcome);
        let text = String::from_utf8_lossy(&t.data).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .and_then(|l| l.strip_suffix('>'))
            .unwrap()
            .to_string();
        let to: Vec<String> = t.recipients.iter().map(|r| r.address.clone()).collect();
        assert!(
            rcpts.insert(id.clone(), to).is_none(),
            "{id} submitted more than once"
        );
        for d in &t.deliveries {
            if let Delivery::Delivered { recipient } = d {
                per_mailbox
                    .entry(recipient.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
    }
    (per_mailbox, rcpts)
}

#[tokio::test]
async fn a_catch_all_routes_each_message_once_to_its_local_recipients() {
    let msgs = [
        // Two local recipients in Delivered-To, one external in To: once, with both.
        routed(
            "two",
            "Delivered-To: alice@contoso.local\r\nDelivered-To: Bob@Contoso.Local\r\n\
             To: ext@example.net\r\n",
        ),
        // Bcc: only Delivered-To names carol; To names someone else (even a local user).
        routed(
            "bcc",
            "Delivered-To: carol@contoso.local\r\nTo: alice@contoso.local\r\n",
        ),
        // Postfix style: Delivered-To names the ISP mailbox, X-Original-To the recipient.
        routed(
            "xot",
            "Delivered-To: contoso-catchall@isp.example\r\nX-Original-To: bob@contoso.local\r\n\
             To: list@lists.example\r\n",
        ),
        // No envelope headers: To and Cc, local ones only, in order, once each.
        routed(
            "tocc",
            "To: \"Smith, Alice\" <alice@contoso.local>, ext@example.net\r\n\
             Cc: Carol <CAROL@contoso.local>, other@example.org, alice@contoso.local\r\n",
        ),
        // A local address outside the local domains.
        routed(
            "boss",
            "To: Boss <boss@other.example>, peer@other.example\r\n",
        ),
        // Nothing local: the account's deliver_to (the postmaster).
        routed("none", "To: nobody@example.net\r\n"),
    ];
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with(msgs))).await;
    let mut builder = MockSmtp::builder();
    for m in [
        "alice@contoso.local",
        "bob@contoso.local",
        "carol@contoso.local",
        "boss@other.example",
        "info@contoso.local",
    ] {
        builder = builder.mailbox(MailboxSpec::new(m));
    }
    let smtp = smtp(builder).await;
    let s = setup(&pop, &smtp, CATCH_ALL, "");
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!(
        (sum.delivered, sum.deleted, sum.rejected),
        (6, 6, 0),
        "{sum:?}"
    );

    let (per_mailbox, rcpts) = deliveries(&smtp);
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rcpts["two"],
        v(&["alice@contoso.local", "bob@contoso.local"])
    );
    assert_eq!(rcpts["bcc"], v(&["carol@contoso.local"]));
    assert_eq!(rcpts["xot"], v(&["bob@contoso.local"]));
    assert_eq!(
        rcpts["tocc"],
        v(&["alice@contoso.local", "carol@contoso.local"])
    );
    assert_eq!(rcpts["boss"], v(&["boss@other.example"]));
    assert_eq!(rcpts["none"], v(&["info@contoso.local"]));
    let set = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(per_mailbox["alice@contoso.local"], set(&["two", "tocc"]));
    assert_eq!(per_mailbox["bob@contoso.local"], set(&["two", "xot"]));
    assert_eq!(per_mailbox["carol@contoso.local"], set(&["bcc", "tocc"]));
    assert_eq!(per_mailbox["boss@other.example"], set(&["boss"]));
    assert_eq!(per_mailbox["info@contoso.local"], set(&["none"]));
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());

    // The trace header names a recipient only when there is one (Bcc privacy).
    for t in smtp.captured() {
        let text = String::from_utf8_lossy(&t.data).into_owned();
        let head = &text[..text.find("\r\nReturn-Path:").unwrap()];
        if t.recipients.len() == 1 {
            assert!(
                head.contains(&format!("for <{}>;", t.recipients[0].address)),
                "{head}"
            );
        } else {
            assert!(!head.contains("for <"), "{head}");
        }
    }
}

#[tokio::test]
async fn without_catch_all_the_recipient_headers_are_ignored() {
    let msg = routed(
        "plain",
        "Delivered-To: alice@contoso.local\r\nTo: bob@contoso.local\r\n",
    );
    let (pop, smtp, s) = served(mailbox_with([msg]), "", "").await;
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!(sum.delivered, 1);
    let (_, rcpts) = deliveries(&smtp);
    assert_eq!(rcpts["plain"], ["info@contoso.local"]);
}

#[tokio::test]
async fn a_refused_local_recipient_keeps_the_whole_message_never_half_delivered() {
    let msg = routed(
        "ghost",
        "Delivered-To: alice@contoso.local\r\nDelivered-To: ghost@contoso.local\r\n",
    );
    let ok = routed("fine", "To: alice@contoso.local\r\n");
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with([msg, ok]))).await;
    let smtp = smtp(
        MockSmtp::builder()
            .accepted_domain("contoso.local")
            .mailbox(MailboxSpec::new("alice@contoso.local"))
            .mailbox(MailboxSpec::new("info@contoso.local")),
    )
    .await;
    let s = setup(&pop, &smtp, CATCH_ALL, "");
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.rejected), (1, 1), "{sum:?}");
    let replies = rejected_replies(&events);
    assert!(replies[0].starts_with("550"), "{replies:?}");
    let delivered: Vec<_> = smtp
        .captured()
        .into_iter()
        .filter(|t| t.delivered())
        .collect();
    assert_eq!(delivered.len(), 1, "alice did not get the refused message");
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 1);
}
