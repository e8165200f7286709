//! Hostile servers and local faults: one test per defect fixed in 23cdd7b, each asserting
//! what a user relies on (no mail lost, no mail submitted twice without saying so, every
//! failure reported with the right exit code, nothing waits or grows without bound).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock_pop3::{
    FaultAction as PopFault, FaultRule as PopRule, Hook as PopHook, MockPop3, MockPop3Handle,
};
use mock_smtp::{FaultAction, FaultRule, Hook, MockSmtp, MockSmtpHandle, Outcome, SizeAdvert};
use popbridge::body::BodyBuilder;
use popbridge::config::Config;
use popbridge::events::{Event, EventSink};
use popbridge::ledger::Ledger;
use popbridge::net::{DialFuture, Dialer, MemoryDialer, TcpDialer};
use popbridge::pass::{self, AccountFailure, Faults, Step, Summary};
use popbridge::pop3::{self, Pop3Error};
use popbridge::smtp::{self, Envelope, SmtpClient, SmtpError};
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::*;

/// The UID the mock gives the `i`-th message (from 1) of mailbox `info`.
fn uid(i: usize) -> String {
    format!("info-{i:06}")
}

/// The Message-ID of [`mail`]`(i, ..)`.
fn mid(i: usize) -> String {
    format!("<m{i}@isp.example>")
}

/// Events of one kind, as JSON.
fn of_kind(events: &[Event], kind: &str) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// Field `field` of the one event of kind `kind`, checked to be of message 1.
fn only_for_first(events: &[Event], kind: &str, field: &str) -> String {
    let of = of_kind(events, kind);
    assert_eq!(of.len(), 1, "{of:?}");
    assert_eq!(of[0]["uid"], uid(1));
    of[0][field].as_str().unwrap().to_string()
}

/// How often each Message-ID was delivered.
fn tally(ids: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

/// No loss: every UID the server deleted at a QUIT belongs to a message delivered before.
/// `uid_to_mid` maps the mock's UIDs to the Message-IDs of the messages.
fn nothing_lost(pop: &MockPop3Handle, smtp: &MockSmtpHandle, uid_to_mid: &HashMap<String, String>) {
    let delivered = delivered_ids(smtp);
    for u in pop.maildrop("info").unwrap().deleted {
        let m = &uid_to_mid[&u];
        assert!(
            delivered.contains(m),
            "{u} ({m}) was deleted from the server without having been delivered; delivered: {delivered:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. A panicking account task.

/// A dialer that panics: stands for any bug that panics inside an account's pass.
struct PanickingDialer;

impl Dialer for PanickingDialer {
    fn dial<'a>(&'a self, _host: &'a str, _port: u16) -> DialFuture<'a> {
        panic!("dialer exploded (injected)")
    }
}

/// Guards against: a pass that panicked being silently dropped from the summaries, so
/// `fetch` exited 0 although the account was never processed.
#[tokio::test]
async fn a_panicking_pass_is_reported_as_an_internal_failure_of_its_account() {
    let (pop, _smtp, s) = served(mailbox_with([mail(1, "a@example.net", 400)]), "", "").await;
    let (summaries, events) = s.run_through(Arc::new(PanickingDialer)).await;
    assert_eq!(summaries.len(), 1, "one summary per account: {summaries:?}");
    let sum = &summaries[0];
    assert_eq!(sum.account, "info");
    match &sum.failure {
        Some(AccountFailure::Internal(why)) => assert!(why.contains("dialer exploded"), "{why}"),
        other => panic!("expected an internal failure, got {other:?}"),
    }
    let failed = of_kind(&events, "account.failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["account"], "info");
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 1);
}

// ---------------------------------------------------------------------------------------
// 2. A spool that reads back short.

/// Sends a spooled message whose spool file was cut to half its length after download.
async fn send_short_spool(chunking: bool) {
    let ext = mock_smtp::Extensions {
        chunking,
        ..mock_smtp::Extensions::default()
    };
    let smtp = smtp(MockSmtp::builder().extensions(ext)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut b = BodyBuilder::new(dir.path(), 0);
    b.push(b"Subject: short spool\r\nMessage-ID: <spool@x>\r\n\r\n")
        .await
        .unwrap();
    for i in 0..40_000 {
        b.push(format!("line {i} of a message that will lose its end\r\n").as_bytes())
            .await
            .unwrap();
    }
    let body = b.finish().await.unwrap();
    assert!(body.as_bytes().is_none(), "spooled to a file");
    let files = files_under(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    f.set_len(body.len() / 2).unwrap();
    drop(f);

    let settings = smtp::Settings {
        host: "127.0.0.1",
        port: smtp.addr().unwrap().port(),
        helo: "popbridge.test",
        starttls: None,
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(60),
        pipelining: true,
    };
    let mut client = SmtpClient::connect(&TcpDialer, &settings).await.unwrap();
    let env = Envelope::new("a@example.net", &["info@contoso.local".into()]).unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(30), client.send(&env, b"", &body)).await;
    let sent = sent.unwrap_or_else(|_| {
        panic!("chunking {chunking}: send did not end within 30 s on a short spool")
    });
    match sent {
        Err(SmtpError::Spool(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}")
        }
        other => panic!("chunking {chunking}: expected a spool error, got {other:?}"),
    }
    drop(client);
    smtp.wait_idle().await;
    let accepted: Vec<_> = smtp
        .captured()
        .into_iter()
        .filter(|t| t.outcome == Outcome::Accepted)
        .collect();
    assert!(
        accepted.is_empty(),
        "chunking {chunking}: a truncated message was accepted: {} octets",
        accepted[0].size
    );
}

/// Guards against: a spool file that reads back shorter than the downloaded message making
/// BDAT loop forever on `BDAT 0`.
#[tokio::test]
async fn a_short_spool_is_a_local_error_and_submits_nothing_over_bdat() {
    send_short_spool(true).await;
}

/// Guards against: a spool file that reads back shorter than the downloaded message being
/// submitted over DATA, truncated, as if complete (and then deleted from the server).
#[tokio::test]
async fn a_short_spool_is_a_local_error_and_submits_nothing_over_data() {
    send_short_spool(false).await;
}

// ---------------------------------------------------------------------------------------
// 3. Ledger failures keep the message on the server.

/// Opens the ledger's database directly and installs `sql` (triggers that inject failures).
fn sabotage_ledger(state: &std::path::Path, sql: &str) {
    drop(Ledger::open(state).unwrap());
    let conn = rusqlite::Connection::open(state.join("ledger.sqlite3")).unwrap();
    conn.execute_batch(sql).unwrap();
}

/// Message 1 from a sender the SMTP mock refuses, then a good message 2; poison after one
/// failure, quarantined mail deleted; the ledger sabotaged with `sql` (see
/// [`sabotage_ledger`]).
async fn refused_then_good_on_a_sabotaged_ledger(
    sql: &str,
) -> (MockPop3Handle, MockSmtpHandle, Setup) {
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with([
        mail(1, "bad@refused.example", 400),
        mail(2, "good@example.net", 400),
    ])))
    .await;
    let smtp = smtp(MockSmtp::builder().reject_sender("@refused.example")).await;
    let s = setup(
        &pop,
        &smtp,
        "",
        "poison_after = 1\nquarantine_delete = true",
    );
    sabotage_ledger(&s.state(), sql);
    (pop, smtp, s)
}

/// Guards against: a quarantine whose ledger record failed being reported as quarantined
/// and (with `quarantine_delete`) deleted from the server, leaving no record of it.
#[tokio::test]
async fn a_quarantine_the_ledger_cannot_record_keeps_the_message_on_the_server() {
    let (pop, smtp, s) = refused_then_good_on_a_sabotaged_ledger(
        "CREATE TRIGGER no_quarantine_update BEFORE UPDATE ON messages
             WHEN NEW.state = 'quarantined'
             BEGIN SELECT RAISE(ABORT, 'injected'); END;
         CREATE TRIGGER no_quarantine_insert BEFORE INSERT ON messages
             WHEN NEW.state = 'quarantined'
             BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .await;
    for pass in 1..=2 {
        let (sum, events) = s.pass(&pop, &smtp).await;
        assert_eq!(sum.quarantined, 0, "pass {pass}: {sum:?}");
        assert_eq!(count(&events, "message.quarantined"), 0, "pass {pass}");
        let reply = only_for_first(&events, "message.rejected", "reply");
        assert!(
            reply.contains("quarantine not recorded") && reply.contains("kept on the server"),
            "pass {pass}: {reply}"
        );
        assert_eq!(
            pop.maildrop("info").unwrap().remaining,
            [uid(1)],
            "pass {pass}: the refused message stays, the good one is gone"
        );
    }
    assert_eq!(delivered_ids(&smtp), [mid(2)]);
}

/// Guards against: a failure count the ledger could not record being taken as the first
/// failure (`unwrap_or(1)`), so a message was quarantined (and deleted) on a ledger error.
#[tokio::test]
async fn a_failure_the_ledger_cannot_count_never_quarantines_or_deletes() {
    let (pop, smtp, s) = refused_then_good_on_a_sabotaged_ledger(
        "CREATE TRIGGER no_failure BEFORE INSERT ON messages
             WHEN NEW.state = 'failed'
             BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .await;
    for pass in 1..=3 {
        let (sum, events) = s.pass(&pop, &smtp).await;
        assert_eq!(
            (sum.quarantined, sum.rejected),
            (0, 1),
            "pass {pass}: {sum:?}"
        );
        assert_eq!(count(&events, "message.quarantined"), 0, "pass {pass}");
        let reply = only_for_first(&events, "message.rejected", "reply");
        assert!(reply.contains("not counted"), "pass {pass}: {reply}");
        assert_eq!(
            pop.maildrop("info").unwrap().remaining,
            [uid(1)],
            "pass {pass}"
        );
    }
    assert!(files_under(&s.state().join("quarantine")).is_empty());
    assert_eq!(delivered_ids(&smtp), [mid(2)]);
}

// ---------------------------------------------------------------------------------------
// 4. QUIT with a RETR pending is bounded.

/// Logs in to the mock with the account of `s`.
async fn login(s: &Setup) -> pop3::Transaction {
    let a = &s.config.accounts[0];
    let settings = pop3::Settings::for_account(&s.config, a).unwrap();
    let secret = a.secret.resolve(Duration::from_secs(5)).await.unwrap();
    pop3::connect(&TcpDialer, &settings)
        .await
        .unwrap()
        .authenticate(a.auth, &a.username, &secret)
        .await
        .unwrap()
}

/// Guards against: QUIT reading the body of a pending RETR without any bound (a server
/// listing 100 octets and sending gigabytes was read to its end).
#[tokio::test]
async fn quit_with_a_retr_pending_reads_no_more_than_its_bound() {
    let big = mail(1, "a@example.net", 5 * 1024 * 1024).with_reported_size(100);
    let (pop, _smtp, s) = served(mailbox_with([big]), "", "").await;

    let mut txn = login(&s).await;
    txn.send_retr(1, 500, 1000);
    match txn.quit().await {
        Err(Pop3Error::TooLarge { limit, .. }) => assert_eq!(limit, 1000),
        other => panic!("expected TooLarge from QUIT, got {other:?}"),
    }
    pop.wait_idle().await;

    let spool = tempfile::tempdir().unwrap();
    let mut txn = login(&s).await;
    txn.send_retr(1, 500, 1000);
    match txn.next(spool.path(), 0).await {
        Err(Pop3Error::TooLarge { limit, .. }) => assert_eq!(limit, 1000),
        Err(e) => panic!("expected TooLarge, got {e:?}"),
        Ok(r) => panic!("expected TooLarge, got {r:?}"),
    }
    drop(txn);
    pop.wait_idle().await;
    assert!(files_under(spool.path()).is_empty(), "nothing left spooled");
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        1,
        "no QUIT applied"
    );
}

// ---------------------------------------------------------------------------------------
// 5. A pipelined RETR desync.

/// Guards against: a server that does not dot-stuff ending a RETR early at a lone `.`
/// line, after which the rest of that message was taken for the replies to the next
/// pipelined RETRs: one message's bytes delivered under another's UID and that one deleted
/// without ever having been delivered.
#[tokio::test]
async fn a_server_that_does_not_dot_stuff_loses_no_mail() {
    let head = "Return-Path: <a@example.net>\r\nFrom: A <a@example.net>\r\nTo: info@isp.example\r\nSubject: a quoted transcript\r\nMessage-ID: <m1@isp.example>\r\n\r\n";
    let quoted = "Here is what the server said:\r\n.\r\n+OK POP3 server ready\r\n+OK 2 messages\r\n+OK 340 octets\r\nSubject: not a header\r\n\r\nthe end of the quote\r\n";
    let first = raw(format!("{head}{quoted}").as_bytes());
    let others: Vec<_> = (2..=4).map(|i| mail(i, "a@example.net", 900)).collect();
    let originals: HashMap<String, Vec<u8>> = others
        .iter()
        .enumerate()
        .map(|(k, m)| (mid(k + 2), m.data.to_vec()))
        .collect();
    let (pop, smtp, s) = served_from(
        MockPop3::builder()
            .dot_stuffing(false)
            .maildrop(mailbox_with(std::iter::once(first).chain(others))),
        "",
        "",
    )
    .await;
    let uid_to_mid: HashMap<String, String> = (1..=4).map(|i| (uid(i), mid(i))).collect();
    let (mut mismatches, mut failures) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..5 {
        let (sum, events) = s.pass(&pop, &smtp).await;
        nothing_lost(&pop, &smtp, &uid_to_mid);
        failures.extend(sum.failure);
        mismatches.extend(of_kind(&events, "message.size_mismatch"));
        let now = (
            pop.maildrop("info").unwrap().remaining,
            delivered_ids(&smtp),
        );
        if last.as_ref() == Some(&now) {
            break;
        }
        last = Some(now);
    }
    assert!(
        failures.is_empty(),
        "an account failure (exit 3): {failures:?}"
    );
    let counts = tally(&delivered_ids(&smtp));
    for i in 2..=4 {
        assert_eq!(
            counts.get(&mid(i)),
            Some(&1),
            "{} delivered: {counts:?}",
            mid(i)
        );
    }
    assert!(
        !counts.contains_key(&mid(1)),
        "the desynchronised message was not delivered"
    );
    for t in smtp.captured().iter().filter(|t| t.delivered()) {
        let id = String::from_utf8_lossy(&t.data)
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID:").map(|v| v.trim().to_string()))
            .unwrap();
        assert!(
            t.data.ends_with(&originals[&id]),
            "{id} arrived altered ({} octets)",
            t.data.len()
        );
    }
    assert_eq!(pop.maildrop("info").unwrap().remaining, [uid(1)]);
    assert!(!mismatches.is_empty());
    assert!(
        mismatches.iter().all(|m| m["uid"] == uid(1)),
        "{mismatches:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. One lying message does not block the mailbox.

/// Guards against: one message whose body runs far past its LIST size failing the whole
/// account (exit 3) on every pass, so the messages after it were never delivered.
#[tokio::test]
async fn one_message_larger_than_listed_never_blocks_the_others() {
    let mut msgs: Vec<_> = (1..=6).map(|i| mail(i, "a@example.net", 1500)).collect();
    msgs[1] = mail(2, "a@example.net", 1024 * 1024).with_reported_size(100);
    let (pop, smtp, s) = served(mailbox_with(msgs), "", "").await;
    let mut mismatches = Vec::new();
    for pass in 1..=2 {
        let (sum, events) = s.pass(&pop, &smtp).await;
        assert!(sum.failure.is_none(), "pass {pass}: exit 1, not 3: {sum:?}");
        assert_eq!(sum.mismatched, 1, "pass {pass}: {sum:?}");
        mismatches.extend(of_kind(&events, "message.size_mismatch"));
    }
    assert_eq!(pop.maildrop("info").unwrap().remaining, [uid(2)]);
    let counts = tally(&delivered_ids(&smtp));
    for i in [1, 3, 4, 5, 6] {
        assert_eq!(counts.get(&mid(i)), Some(&1), "{counts:?}");
    }
    assert!(!counts.contains_key(&mid(2)));
    assert_eq!(mismatches.len(), 2, "{mismatches:?}");
    for m in &mismatches {
        assert_eq!(m["uid"], uid(2));
        assert_eq!(m["listed"], 100);
        assert_eq!(m["overran"], true);
    }
    // A new message arrives: the liar is retried after it, alone (in a session of its own,
    // once the new one's deletion is applied), and never holds it up.
    assert!(pop.add_message("info", mail(7, "a@example.net", 1500)));
    let before = pop.sessions().len();
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!((sum.delivered, sum.mismatched), (1, 1), "{sum:?}");
    assert!(sum.failure.is_none());
    let pass: Vec<Vec<String>> = pop.sessions()[before..]
        .iter()
        .map(|s| s.commands.clone())
        .collect();
    let at = |n: &str| {
        pass.iter()
            .enumerate()
            .find_map(|(i, c)| c.iter().position(|x| x == n).map(|p| (i, p)))
    };
    assert!(
        at("RETR 2").unwrap() < at("RETR 1").unwrap(),
        "the suspect (now message 1) comes last: {pass:?}"
    );
    assert_eq!(
        pass.len(),
        2,
        "the suspect in a session of its own: {pass:?}"
    );
    assert!(pass[0].iter().any(|c| c == "DELE 2") && pass[0].last().is_some_and(|c| c == "QUIT"));
    let (sum, _) = s.pass(&pop, &smtp).await;
    assert_eq!(pop.maildrop("info").unwrap().remaining, [uid(2)], "{sum:?}");
}

// ---------------------------------------------------------------------------------------
// 7. Byte-identical copies on a server without UIDL.

/// Guards against: the second of two identical messages (keyed `sha256:…#2`) being
/// delivered again on every pass of a `leave_on_server` account without UIDL.
#[tokio::test]
async fn identical_copies_without_uidl_are_delivered_once_each() {
    let pop = without_uidl(mailbox_with([
        mail(1, "a@example.net", 600),
        mail(1, "a@example.net", 600),
    ]))
    .await;
    let smtp = smtp(MockSmtp::builder()).await;
    let s = setup(&pop, &smtp, "leave_on_server = true", "");
    let per_pass = s.passes(&pop, &smtp, 3, |sum| sum.delivered).await;
    assert_eq!(per_pass, [2, 0, 0]);
    assert_eq!(smtp.counts().accepted, 2);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 2);
}

// ---------------------------------------------------------------------------------------
// In-memory world under the paused clock (tests 8 and 9).

struct MemWorld {
    pop: Arc<MockPop3Handle>,
    smtp: Arc<MockSmtpHandle>,
    _dir: TempDir,
    config: Config,
    dialer: Arc<MemoryDialer>,
}

/// A [`mem_world`] whose POP3 mock holds one message of about `size` octets and sends at
/// most `rate` octets a second.
fn dripping(size: usize, rate: u64, timeouts: &str) -> MemWorld {
    mem_world(
        MockPop3::builder()
            .maildrop(mailbox_with([mail(1, "a@example.net", size)]))
            .throttle(rate),
        MockSmtp::builder(),
        timeouts,
    )
}

/// An SMTP mock that answers the end of each message's data only after `delay`.
fn slow_end_of_data(delay: Duration) -> mock_smtp::Builder {
    MockSmtp::builder().fault(FaultRule::new(Hook::EndOfData, FaultAction::Delay(delay)))
}

fn mem_world(pop: mock_pop3::Builder, smtp: mock_smtp::Builder, timeouts: &str) -> MemWorld {
    let pop = Arc::new(pop.spawn_in_memory());
    let smtp = Arc::new(smtp.spawn_in_memory());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"state_dir = "{}"
{transport}[timeouts]
{timeouts}
{account}username = "info"
password = "{PASSWORD}"
deliver_to = "info@contoso.local"
"#,
        dir.path().join("state").display(),
        transport = transport("smtp.test", 25),
        account = plain_account("info", "pop3.test", 110),
    );
    let config = Config::from_str(&text, &dir.path().join("popbridge.toml")).unwrap();
    let dialer = memory_dialer(&pop, &smtp);
    MemWorld {
        pop,
        smtp,
        _dir: dir,
        config,
        dialer: Arc::new(dialer),
    }
}

impl MemWorld {
    /// One pass; returns its summary, events and how long it took (virtual time).
    async fn pass(&self) -> (Summary, Vec<Event>, Duration) {
        let events = Arc::new(EventSink::memory());
        let ledger = Arc::new(Mutex::new(Ledger::open(&self.config.state_dir).unwrap()));
        let started = tokio::time::Instant::now();
        let mut s = pass::Runner::new(
            Arc::new(self.config.clone()),
            self.dialer.clone(),
            events.clone(),
            ledger,
        )
        .run(self.config.accounts.clone())
        .await;
        let took = started.elapsed();
        self.pop.wait_idle().await;
        self.smtp.wait_idle().await;
        (s.remove(0), events.collected(), took)
    }
}

// ---------------------------------------------------------------------------------------
// 8. Whole-reply deadlines.

/// Guards against: each received byte restarting the timer, so a server dripping one byte
/// a second kept a session alive forever (a 40-byte line took 40 s under a 10 s timeout).
#[tokio::test(start_paused = true)]
async fn a_status_line_that_drips_is_cut_off_at_the_command_timeout() {
    let w = dripping(400, 1, "command = \"10s\"\ndata = \"60s\"");
    let (sum, _, took) = w.pass().await;
    match &sum.failure {
        Some(AccountFailure::Connect(e)) => {
            assert!(e.contains("timeouts.command") && e.contains("10 s"), "{e}")
        }
        other => panic!("expected a connection failure, got {other:?}"),
    }
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(12),
        "gave up after {took:?}"
    );
    assert_eq!(w.pop.maildrop("info").unwrap().remaining.len(), 1);
}

/// Guards against: the same for a message body (it took as long as the server liked as
/// long as bytes kept coming), and a timeout message saying "within 0 s".
#[tokio::test(start_paused = true)]
async fn a_body_that_drips_is_cut_off_at_the_data_timeout() {
    let w = dripping(100_000, 1000, "command = \"10s\"\ndata = \"30s\"");
    let (sum, events, took) = w.pass().await;
    assert!(sum.failure.is_none(), "{sum:?}");
    let why = sum.aborted.clone().unwrap_or_default();
    assert!(
        why.contains("timeouts.data") && why.contains("30 s"),
        "{sum:?}"
    );
    assert_eq!(count(&events, "pass.interrupted"), 1);
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert_eq!(sum.delivered, 0);
    assert_eq!(w.pop.maildrop("info").unwrap().remaining.len(), 1);
}

// ---------------------------------------------------------------------------------------
// 9. The final reply waits the data timeout; an unknown outcome is not re-sent.

/// Guards against: the reply to the end of the data being held to the `command` timeout
/// (a content filter taking 90 s cost a duplicate: timed out at 30 s and sent again).
#[tokio::test(start_paused = true)]
async fn a_slow_final_reply_within_the_data_timeout_is_one_delivery() {
    let w = mem_world(
        MockPop3::builder().maildrop(mailbox_with([mail(1, "a@example.net", 500)])),
        slow_end_of_data(Duration::from_secs(90)),
        "command = \"30s\"\ndata = \"120s\"",
    );
    let (sum, _, _) = w.pass().await;
    assert_eq!(
        (sum.delivered, sum.deleted, sum.deferred),
        (1, 1, 0),
        "{sum:?}"
    );
    let txns = w.smtp.captured();
    assert_eq!(txns.len(), 1, "sent once");
    assert_eq!(txns[0].outcome, Outcome::Accepted);
    assert!(!txns[0].unconfirmed());
    assert!(w.pop.maildrop("info").unwrap().remaining.is_empty());
}

/// Guards against: a message whose final reply never came being sent again in the same
/// pass (a certain duplicate when the server had taken it), and being sent again later
/// without the operator learning it may be a duplicate.
#[tokio::test(start_paused = true)]
async fn a_final_reply_that_never_comes_is_not_resent_in_the_pass_and_flagged_next_time() {
    let w = mem_world(
        MockPop3::builder().maildrop(mailbox_with([
            mail(1, "a@example.net", 500),
            mail(2, "a@example.net", 500),
        ])),
        slow_end_of_data(Duration::from_secs(200)),
        "command = \"30s\"\ndata = \"120s\"",
    );
    let (first, events, _) = w.pass().await;
    assert_eq!((first.delivered, first.deferred), (1, 1), "{first:?}");
    let reason = only_for_first(&events, "message.deferred", "reason");
    assert!(
        reason.contains("may have accepted") && reason.contains("timeouts.data"),
        "{reason}"
    );
    let ids = |w: &MemWorld| -> Vec<String> {
        w.smtp
            .captured()
            .iter()
            .map(|t| {
                String::from_utf8_lossy(&t.data)
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID:").map(|v| v.trim().to_string()))
                    .unwrap_or_default()
            })
            .collect()
    };
    assert_eq!(
        ids(&w).iter().filter(|m| **m == mid(1)).count(),
        1,
        "not re-sent in the same pass: {:?}",
        ids(&w)
    );
    assert_eq!(w.pop.maildrop("info").unwrap().remaining, [uid(1)]);

    let (second, events, _) = w.pass().await;
    assert_eq!(second.delivered, 1, "{second:?}");
    let dups = of_kind(&events, "message.possible_duplicate");
    assert_eq!(dups.len(), 1, "{dups:?}");
    assert_eq!(dups[0]["uid"], uid(1));
    assert_eq!(dups[0]["message_id"], mid(1));
    let ones: Vec<_> = w
        .smtp
        .captured()
        .into_iter()
        .zip(ids(&w))
        .filter(|(_, m)| *m == mid(1))
        .map(|(t, _)| t)
        .collect();
    assert_eq!(ones.len(), 2);
    assert!(ones[0].unconfirmed(), "the first acceptance was never seen");
    assert!(!ones[1].unconfirmed());
    assert!(w.pop.maildrop("info").unwrap().remaining.is_empty());
}

// ---------------------------------------------------------------------------------------
// 10. The absolute download cap.

/// Guards against: with no SIZE from the SMTP server and no configured limit, nothing
/// bounding a download: a huge message, or one whose LIST size lies, was read and spooled
/// to its end.
#[tokio::test]
async fn max_download_size_caps_every_download_when_the_smtp_server_gives_no_size() {
    let ext = mock_smtp::Extensions {
        size: SizeAdvert::Absent,
        ..mock_smtp::Extensions::default()
    };
    let three_mb = 3 * 1024 * 1024;
    // (LIST size, whether it is the truth)
    for (listed, truthful) in [(three_mb as u64, true), (100, false), (900_000, false)] {
        let m = mail(1, "a@example.net", three_mb);
        let m = if truthful {
            m
        } else {
            m.with_reported_size(listed)
        };
        let pop = pop3(MockPop3::builder().maildrop(mailbox_with([m]))).await;
        let smtp = smtp(MockSmtp::builder().extensions(ext.clone())).await;
        let s = setup(
            &pop,
            &smtp,
            "",
            "max_message_size = \"auto\"\nmax_download_size = \"1MB\"\nmemory_threshold = \"64KB\"",
        );
        let (sum, events) = s.pass(&pop, &smtp).await;
        assert!(sum.failure.is_none(), "LIST {listed}: {sum:?}");
        assert_eq!(sum.delivered, 0, "LIST {listed}");
        if truthful {
            assert_eq!(sum.skipped, 1, "{sum:?}");
            let skipped = of_kind(&events, "message.skipped_oversize");
            assert_eq!(skipped.len(), 1);
            assert_eq!(skipped[0]["limit"], 1_048_576);
            assert!(
                !pop.sessions()
                    .iter()
                    .any(|s| s.commands.iter().any(|c| c.starts_with("RETR"))),
                "never downloaded"
            );
        } else {
            let mm = of_kind(&events, "message.size_mismatch");
            assert_eq!(mm.len(), 1, "LIST {listed}: {events:?}");
            assert_eq!(mm[0]["overran"], true);
            let received = mm[0]["received"].as_u64().unwrap();
            assert!(
                received <= 1_048_576,
                "LIST {listed}: read {received} octets"
            );
        }
        assert!(files_under(&s.state().join("spool")).is_empty());
        assert_eq!(pop.maildrop("info").unwrap().remaining, [uid(1)]);
    }
}

// ---------------------------------------------------------------------------------------
// 11. A crash at every step.

/// Guards against: loss or silent duplicates when the process dies at any step of a
/// message's way (after RETR, after the SMTP server's 250, after the ledger record, after
/// a DELE, during QUIT): the next clean pass must deliver everything, and a message
/// delivered twice only when the crash came between its acceptance and the commit that
/// records it (a message written ahead of its reply, or waiting for its group commit),
/// and then announced. Such a message was never deleted before it was recorded.
#[tokio::test]
async fn a_crash_at_any_step_loses_nothing_and_announces_every_possible_duplicate() {
    for step in Step::ALL {
        let pop = pop3(MockPop3::builder().maildrop(mails(1..=4, 700))).await;
        let smtp = smtp(MockSmtp::builder()).await;
        let s = setup(&pop, &smtp, "", "");
        let uid_to_mid: HashMap<String, String> = (1..=4).map(|i| (uid(i), mid(i))).collect();
        let cfg = Arc::new(s.config.clone());
        let crashed = pass::Runner::new(
            cfg.clone(),
            Arc::new(TcpDialer),
            Arc::new(EventSink::none()),
            Arc::new(Mutex::new(Ledger::open(&cfg.state_dir).unwrap())),
        )
        .faults(Faults::crash(step, 2))
        .run(cfg.accounts.clone())
        .await;
        pop.wait_idle().await;
        smtp.wait_idle().await;
        assert!(
            crashed[0]
                .aborted
                .as_deref()
                .unwrap_or("")
                .contains("crash"),
            "{step}: {crashed:?}"
        );
        nothing_lost(&pop, &smtp, &uid_to_mid);
        let mut dup_events = Vec::new();
        for _ in 0..2 {
            let (sum, events) = s.pass(&pop, &smtp).await;
            assert!(
                sum.failure.is_none() && sum.aborted.is_none(),
                "{step}: {sum:?}"
            );
            dup_events.extend(of_kind(&events, "message.possible_duplicate"));
            nothing_lost(&pop, &smtp, &uid_to_mid);
        }
        assert!(
            pop.maildrop("info").unwrap().remaining.is_empty(),
            "{step}: all delivered and deleted"
        );
        let counts = tally(&delivered_ids(&smtp));
        let twice: Vec<&String> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(m, _)| m)
            .collect();
        assert_eq!(counts.len(), 4, "{step}: {counts:?}");
        // Every message delivered twice is announced, and its first acceptance was never
        // recorded: the crash came before its commit (for a message written ahead of its
        // reply, before the reply was even read).
        let announced: Vec<String> = dup_events
            .iter()
            .filter_map(|e| e["uid"].as_str())
            .map(|u| uid_to_mid[u].clone())
            .collect();
        for m in &twice {
            assert!(
                announced.contains(*m),
                "{step}: {m} delivered twice without an announcement: {announced:?}"
            );
        }
        if step == Step::AfterAccept {
            // The acceptance read just before the crash: re-submitted, announced.
            assert!(twice.contains(&&mid(2)), "{step}: {counts:?}");
            let first = smtp
                .captured()
                .into_iter()
                .find(|t| String::from_utf8_lossy(&t.data).contains(&mid(2)))
                .unwrap();
            assert!(
                first.unconfirmed(),
                "{step}: the first acceptance was never seen"
            );
        }
        if step == Step::DuringQuit {
            // Everything is answered and committed before QUIT: nothing is sent twice.
            assert!(twice.is_empty(), "{step}: duplicates {twice:?}");
        }
        // Not asserted: a possible duplicate announced for a message that was only marked
        // (marks are written ahead of submission). A false alarm, not a duplicate.
    }
}

// ---------------------------------------------------------------------------------------
// 12. Exit codes and configuration checks of the binary.

fn write_config(
    dir: &std::path::Path,
    pop3_port: u16,
    smtp_port: u16,
    transport: &str,
    account: &str,
) -> String {
    let path = dir.join("popbridge.toml");
    write_private(
        &path,
        format!(
            r#"state_dir = "state"
{opening}{transport}
[timeouts]
connect = "5s"
command = "10s"
data = "30s"
{info}username = "info"
password = "{PASSWORD}"
deliver_to = "info@contoso.local"
{account}
"#,
            opening = crate::harness::transport("127.0.0.1", smtp_port),
            info = plain_account("info", "127.0.0.1", pop3_port),
        ),
    );
    path.display().to_string()
}

/// Runs `fetch` with a `ca_file` (in `[transport]` or the account) that does not exist:
/// exit 2, the message names `key`, and neither server was contacted.
async fn fetch_with_missing_ca_file(transport: &str, account: &str, key: &str) {
    let pop =
        pop3(MockPop3::builder().maildrop(mailbox_with([mail(1, "a@example.net", 400)]))).await;
    let smtp = smtp(MockSmtp::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem").display().to_string();
    let cfg = write_config(
        dir.path(),
        pop.addr().unwrap().port(),
        smtp.addr().unwrap().port(),
        &transport.replace("{missing}", &missing),
        &account.replace("{missing}", &missing),
    );
    let out = popbridge(&["--config", &cfg, "fetch"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{key}: {stdout}\n{stderr}");
    assert!(stderr.contains(key), "{key}: {stderr}");
    assert!(pop.sessions().is_empty(), "{key}: POP3 server contacted");
    assert!(smtp.sessions().is_empty(), "{key}: SMTP server contacted");
}

/// Guards against: a transport `ca_file` that does not exist going unnoticed (with
/// STARTTLS off it was never read, so a typo surfaced only when TLS was turned on), instead
/// of being a configuration error (exit 2) before anything is contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_transport_ca_file_is_exit_2_before_any_connection() {
    fetch_with_missing_ca_file("ca_file = \"{missing}\"", "", "transport.ca_file").await;
}

/// Guards against: the same for an account's `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_account_ca_file_is_exit_2_before_any_connection() {
    fetch_with_missing_ca_file("", "ca_file = \"{missing}\"", "account[0].ca_file").await;
}

/// Guards against: a reply that is not POP3 in place of a RETR reply being an account
/// failure (exit 3, "cannot connect") instead of an interrupted pass (exit 1) that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_place_of_a_retr_reply_is_exit_1_and_an_interrupted_pass() {
    let pop = pop3(
        MockPop3::builder()
            .maildrop(mails(1..=3, 500))
            .fault(PopRule::new(
                PopHook::command("RETR"),
                PopFault::Reply("*** this is not POP3 ***".into()),
            )),
    )
    .await;
    let smtp = smtp(MockSmtp::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        pop.addr().unwrap().port(),
        smtp.addr().unwrap().port(),
        "",
        "",
    );
    let events = dir.path().join("events.jsonl");
    let (code, stdout, stderr) = run(&cfg, &events, &["fetch"]).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let lines = event_lines(&events);
    let interrupted: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "pass.interrupted")
        .collect();
    assert_eq!(interrupted.len(), 1, "{lines:?}");
    assert!(
        interrupted[0]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid reply"),
        "{interrupted:?}"
    );
    assert!(!lines.iter().any(|l| l["kind"] == "account.failed"));
    pop.wait_idle().await;
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        3,
        "nothing deleted that was not delivered"
    );
}
