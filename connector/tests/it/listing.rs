//! Large maildrops: listings held compactly, worked through in slices, pass after pass.

use std::sync::Mutex;

use mock_pop3::{Message, MockPop3, MockPop3Handle};
use mock_smtp::{MockSmtp, MockSmtpHandle};
use popbridge::events::{Event, EventSink};
use popbridge::ledger::Ledger;
use popbridge::listing::{Budget, LineReader, Sizes, UidScan, Want, MAX_LINE, MAX_OCTETS};
use popbridge::net::TcpDialer;
use popbridge::pass::{self, Context, Faults, StopFlag, Summary};

use crate::harness::*;

/// A 70-character UID for message `i`.
fn long_uid(i: usize) -> String {
    let uid = format!("{i:07}-{}", "u".repeat(62));
    debug_assert_eq!(uid.len(), 70);
    uid
}

/// The process's peak resident set, in KiB (Linux).
fn vm_hwm_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One pass with a listing budget of `budget` messages; waits until both mocks are idle.
async fn pass_with(
    s: &Setup,
    pop: &MockPop3Handle,
    smtp: &MockSmtpHandle,
    budget: usize,
) -> (Summary, Vec<Event>) {
    let events = EventSink::memory();
    let ledger = Mutex::new(Ledger::open(&s.config.state_dir).unwrap());
    let stop = StopFlag::default();
    let cx = Context {
        config: &s.config,
        dialer: &TcpDialer,
        events: &events,
        ledger: &ledger,
        stop: &stop,
        faults: Faults::NONE,
        listing_budget: Budget { messages: budget },
    };
    let summary = pass::run_account(&cx, &s.config.accounts[0]).await;
    pop.wait_idle().await;
    smtp.wait_idle().await;
    (summary, events.collected())
}

/// Four passes under a budget of 10 messages, each without a failure or an abort: `pick`
/// of each one's summary and events.
async fn four_passes_of_ten<T>(
    s: &Setup,
    pop: &MockPop3Handle,
    smtp: &MockSmtpHandle,
    pick: impl Fn(&Summary, &[Event]) -> T,
) -> Vec<T> {
    let mut per_pass = Vec::new();
    for _ in 0..4 {
        let (sum, events) = pass_with(s, pop, smtp, 10).await;
        assert!(sum.failure.is_none() && sum.aborted.is_none(), "{sum:?}");
        per_pass.push(pick(&sum, &events));
    }
    per_pass
}

/// Guards against: a maildrop whose UIDL reply outgrows what the connector holds failing
/// every pass (a million 70-character UIDs are about 80 MB on the wire, past the old
/// 64 MiB bound on a whole reply), instead of making progress on a slice of it.
#[tokio::test]
async fn a_million_uids_of_70_characters_make_progress_instead_of_failing() {
    const MESSAGES: usize = 1_000_000;
    let before = vm_hwm_kib();
    // One shared body: the mock keeps one copy of it (and of its wire form).
    let body = mail(0, "a@example.net", 300).data;
    let (pop, smtp, s) = served_from(
        MockPop3::builder()
            .record_transcript(false)
            .maildrop(mailbox_with(
                (0..MESSAGES).map(|i| Message::new(body.clone()).with_uid(long_uid(i))),
            )),
        "",
        "max_messages_per_session = 3",
    )
    .await;
    let (sum, events) = s.pass(&pop, &smtp).await;
    assert!(sum.failure.is_none(), "{sum:?}");
    assert!(sum.aborted.is_none(), "{sum:?}");
    assert_eq!(sum.listed as usize, MESSAGES);
    assert_eq!((sum.delivered, sum.deleted), (3, 3), "{sum:?}");
    // The cap postponed the rest of the slice; the budget left out the rest.
    assert_eq!(sum.sliced as usize, MESSAGES - Budget::DEFAULT.messages);
    assert_eq!(sum.remaining() as usize, MESSAGES - 3, "{sum:?}");
    let finished = events
        .iter()
        .find_map(|e| match e {
            Event::PassFinished { remaining, .. } => Some(*remaining),
            _ => None,
        })
        .unwrap();
    assert_eq!(finished as usize, MESSAGES - 3);
    assert_eq!(smtp.counts().accepted, 3);
    let mb = pop.maildrop("info").unwrap();
    assert_eq!(mb.remaining.len(), MESSAGES - 3);
    assert_eq!(mb.deleted, [long_uid(0), long_uid(1), long_uid(2)]);
    eprintln!(
        "VmHWM of this test process (mocks included): {:?} KiB before, {:?} KiB after",
        before,
        vm_hwm_kib()
    );
}

/// Guards against: holding a large listing whole. A million 70-character UIDs (and their
/// LIST) are read from a reply fed in pieces into a few megabytes: LIST sizes, a
/// fingerprint per UID and the UIDs of one budget of messages.
#[test]
fn a_million_entry_listing_is_held_in_a_few_megabytes() {
    const MESSAGES: usize = 1_000_000;
    /// Feeds a generated reply of `MESSAGES` lines to `on_line`, a thousand lines at a time.
    fn feed(
        line: impl Fn(usize) -> String,
        mut on_line: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> u64 {
        let mut reader = LineReader::new(MAX_OCTETS, MAX_LINE);
        let mut wire = Vec::new();
        let mut total = 0u64;
        for start in (0..MESSAGES).step_by(1000) {
            wire.clear();
            for i in start..(start + 1000).min(MESSAGES) {
                wire.extend_from_slice(line(i).as_bytes());
            }
            if start + 1000 >= MESSAGES {
                wire.extend_from_slice(b".\r\n");
            }
            total += wire.len() as u64;
            let p = reader.feed(&wire, &mut on_line).unwrap();
            assert_eq!(p.consumed, wire.len());
            assert_eq!(p.done, start + 1000 >= MESSAGES);
        }
        total
    }
    let mut sizes = Sizes::new();
    feed(
        |i| format!("{} {}\r\n", i + 1, 1000 + i % 5000),
        |l| sizes.line(l),
    );
    assert_eq!(sizes.len(), MESSAGES);
    let mut scan = UidScan::new(Budget::DEFAULT, |n, _| {
        // Every tenth message is done; the rest all want work.
        if n % 10 == 0 {
            Want::Skip
        } else {
            Want::First
        }
    });
    let wire = feed(
        |i| format!("{} {}\r\n", i + 1, long_uid(i)),
        |l| scan.line(l),
    );
    assert!(
        wire > 64 << 20,
        "the UIDL reply is {wire} octets, over the old whole-reply bound"
    );
    let scanning = scan.heap_bytes();
    let uids = scan.finish().unwrap();
    eprintln!(
        "UIDL reply {} octets; held while scanning {} octets, after {} octets; LIST sizes {} octets",
        wire,
        scanning,
        uids.heap_bytes(),
        sizes.heap_bytes()
    );
    assert_eq!(uids.len(), MESSAGES);
    assert_eq!(uids.held_len(), Budget::DEFAULT.messages);
    assert_eq!(
        uids.not_held(),
        MESSAGES * 9 / 10 - Budget::DEFAULT.messages
    );
    assert!(uids.shared().is_empty());
    let (n, uid) = uids.held().last().unwrap();
    assert_eq!((n, uid), (111_111, long_uid(111_110).as_str()));
    // Capacities, not guesses (with room for any growth strategy up to doubling): while
    // scanning, 8 octets a fingerprint and one budget of UIDs (about 16 MB); then the
    // budget of UIDs alone (about 8 MB); 4 octets a LIST entry. The reply itself is
    // about 79 MB.
    assert!(scanning < 32 << 20, "{scanning}");
    assert!(uids.heap_bytes() < 16 << 20, "{}", uids.heap_bytes());
    assert!(sizes.heap_bytes() < 8 << 20, "{}", sizes.heap_bytes());
}

/// Guards against: a maildrop larger than the listing budget never being emptied, or
/// losing or repeating messages between slices.
#[tokio::test]
async fn a_maildrop_larger_than_the_budget_is_emptied_over_several_passes() {
    let (pop, smtp, s) = served(mails(0..25, 400), "", "").await;
    let per_pass = four_passes_of_ten(&s, &pop, &smtp, |sum, _| {
        (
            sum.listed,
            sum.delivered,
            sum.deleted,
            sum.sliced,
            sum.remaining(),
        )
    })
    .await;
    assert_eq!(
        per_pass,
        [
            (25, 10, 10, 15, 15),
            (15, 10, 10, 5, 5),
            (5, 5, 5, 0, 0),
            (0, 0, 0, 0, 0)
        ]
    );
    exactly_once(&delivered_ids(&smtp), 25);
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
}

/// Guards against: a `leave_on_server` maildrop larger than the budget re-reading the
/// same first slice on every pass (delivered messages kept on the server must take no
/// room), or downloading a delivered message again.
#[tokio::test]
async fn with_leave_on_server_passes_advance_over_slices() {
    let (pop, smtp, s) = served(mails(0..25, 400), "leave_on_server = true", "").await;
    let per_pass = four_passes_of_ten(&s, &pop, &smtp, |sum, events| {
        (
            sum.delivered,
            sum.remaining(),
            count(events, "message.already_delivered"),
        )
    })
    .await;
    assert_eq!(per_pass, [(10, 15, 0), (10, 5, 10), (5, 0, 20), (0, 0, 25)]);
    exactly_once(&delivered_ids(&smtp), 25);
    let mb = pop.maildrop("info").unwrap();
    assert_eq!(mb.remaining.len(), 25);
    assert_eq!(mb.retrievals, 25, "nothing downloaded twice");
}

/// Guards against: a `leave_on_server` maildrop without UIDL and larger than the budget
/// downloading the same first window on every pass (mail beyond it never reached), or
/// reporting what it delivered before as still to do.
#[tokio::test]
async fn without_uidl_leave_on_server_passes_advance_over_windows() {
    let pop = without_uidl(mails(0..25, 400)).await;
    let smtp = smtp(MockSmtp::builder()).await;
    let s = setup(&pop, &smtp, "leave_on_server = true", "");
    let per_pass =
        four_passes_of_ten(&s, &pop, &smtp, |sum, _| (sum.delivered, sum.remaining())).await;
    assert_eq!(per_pass, [(10, 15), (10, 5), (5, 0), (0, 0)]);
    exactly_once(&delivered_ids(&smtp), 25);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 25);
}

/// Guards against: messages that stay on the server every pass (over the size limit,
/// refused) filling the budget ahead of new mail, which would then never be reached.
#[tokio::test]
async fn messages_likely_to_stay_do_not_crowd_out_new_ones() {
    let big = (0..8).map(|i| mail(i, "a@example.net", 20_000));
    let small = (8..13).map(|i| mail(i, "a@example.net", 500));
    let (pop, smtp, s) = served(
        mailbox_with(big.chain(small)),
        "",
        "max_message_size = 10000",
    )
    .await;
    let (sum, _) = pass_with(&s, &pop, &smtp, 5).await;
    assert!(sum.failure.is_none(), "{sum:?}");
    assert_eq!(
        (sum.delivered, sum.skipped, sum.sliced),
        (5, 0, 8),
        "{sum:?}"
    );
    assert_eq!(sum.remaining(), 8);
    let (sum, _) = pass_with(&s, &pop, &smtp, 5).await;
    assert_eq!(
        (sum.delivered, sum.skipped, sum.sliced),
        (0, 5, 3),
        "{sum:?}"
    );
    assert_eq!(sum.remaining(), 8, "the oversize ones stay, counted");
    exactly_once(&delivered_ids(&smtp), 5);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 8);
}

/// Guards against: a UID listed twice, once inside the budget and once beyond it, keying
/// the first copy by that UID: its delivery would then make the second copy look
/// delivered, and the second would be deleted without ever being delivered.
#[tokio::test]
async fn a_uid_listed_twice_is_no_key_even_when_one_copy_is_beyond_the_budget() {
    let uid_of = |i: usize| {
        if i == 0 || i == 6 {
            "twin".to_string()
        } else {
            format!("uid-{i}")
        }
    };
    let (pop, smtp, s) = served(
        mailbox_with((0..7).map(|i| mail(i, "a@example.net", 400).with_uid(uid_of(i)))),
        "",
        "",
    )
    .await;
    for _ in 0..4 {
        let (sum, _) = pass_with(&s, &pop, &smtp, 3).await;
        assert!(sum.failure.is_none(), "{sum:?}");
    }
    exactly_once(&delivered_ids(&smtp), 7);
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
}
