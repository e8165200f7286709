//! The daemon under tokio's paused clock, over in-memory streams (real sockets would let
//! the paused clock run ahead): schedule, no overlap, triggers, reload, stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock_pop3::{FaultAction, FaultRule, Hook, Mailbox, MockPop3, MockPop3Handle};
use mock_smtp::{MockSmtp, MockSmtpHandle};
use popbridge::config::Config;
use popbridge::daemon::{Cause, Daemon, DaemonHandle};
use popbridge::events::EventSink;
use popbridge::ledger::Ledger;
use popbridge::net::{BoxIo, MemoryDialer};
use tempfile::TempDir;

use crate::harness::PASSWORD;

struct World {
    pop: Arc<MockPop3Handle>,
    smtp: Arc<MockSmtpHandle>,
    dir: TempDir,
    handle: DaemonHandle,
    run: tokio::task::JoinHandle<()>,
}

fn config_text(dir: &TempDir, interval: &str) -> String {
    format!(
        r#"state_dir = "{}"
interval = "{interval}"
jitter = 0
[transport]
host = "smtp.test"
port = 25
[timeouts]
command = "2h"
data = "2h"
[[account]]
name = "info"
host = "pop3.test"
port = 110
tls = "none"
allow_plaintext = true
username = "info"
password = "{PASSWORD}"
deliver_to = "info@contoso.local"
"#,
        dir.path().join("state").display()
    )
}

fn start(pop: MockPop3Handle, interval: &str) -> World {
    let pop = Arc::new(pop);
    let smtp = Arc::new(MockSmtp::builder().spawn_in_memory());
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_str(
        &config_text(&dir, interval),
        &dir.path().join("popbridge.toml"),
    )
    .unwrap();
    let dialer = MemoryDialer::new();
    let p = pop.clone();
    dialer.route(
        "pop3.test",
        110,
        Arc::new(move || Box::new(p.connect_duplex()) as BoxIo),
    );
    let s = smtp.clone();
    dialer.route(
        "smtp.test",
        25,
        Arc::new(move || Box::new(s.connect_duplex()) as BoxIo),
    );
    let ledger = Arc::new(Mutex::new(Ledger::open(&config.state_dir).unwrap()));
    let (daemon, handle) = Daemon::new(
        config,
        Arc::new(dialer),
        Arc::new(EventSink::memory()),
        ledger,
    );
    let run = tokio::spawn(daemon.run());
    World {
        pop,
        smtp,
        dir,
        handle,
        run,
    }
}

fn mailbox(n: usize) -> Mailbox {
    Mailbox::new("info", PASSWORD).with_demo_messages(n, 600)
}

#[tokio::test(start_paused = true)]
async fn passes_run_at_the_interval() {
    let w = start(
        MockPop3::builder().mailbox(mailbox(2)).spawn_in_memory(),
        "15m",
    );
    w.handle.wait_completed(1).await;
    w.pop.add_message(
        "info",
        mock_pop3::Message::new(&b"Subject: later\r\n\r\nx\r\n"[..]),
    );
    w.handle.wait_completed(3).await;
    let h = w.handle.history();
    let gaps: Vec<Duration> = h.windows(2).map(|p| p[1].started - p[0].started).collect();
    assert_eq!(gaps, [Duration::from_secs(900), Duration::from_secs(900)]);
    assert!(h.iter().all(|r| r.cause == Cause::Scheduled));
    assert_eq!(
        h.iter().map(|r| r.summary.delivered).sum::<u32>(),
        3,
        "{:#?}",
        h.iter().map(|r| &r.summary).collect::<Vec<_>>()
    );
    assert!(w.pop.mailbox("info").unwrap().remaining.is_empty());
    assert_eq!(w.smtp.counts().accepted, 3);
    w.handle.stop().await;
    w.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slow_pass_is_never_overlapped_by_the_schedule() {
    // The first RETR takes 22 minutes; the interval is 5.
    let pop = MockPop3::builder()
        .mailbox(mailbox(3))
        .fault(FaultRule::new(
            Hook::command("RETR"),
            FaultAction::Delay(Duration::from_secs(22 * 60)),
        ))
        .spawn_in_memory();
    let w = start(pop, "5m");
    w.handle.wait_completed(3).await;
    let h = w.handle.history();
    assert!(
        h[0].finished - h[0].started >= Duration::from_secs(22 * 60),
        "{:?}",
        h[0].finished - h[0].started
    );
    for pair in h.windows(2) {
        assert!(
            pair[1].started >= pair[0].finished,
            "passes overlapped: {:?}",
            h.iter()
                .map(|r| (r.started, r.finished))
                .collect::<Vec<_>>()
        );
    }
    // The turns due during the slow pass were skipped, not queued up.
    assert!(h[1].started - h[0].finished <= Duration::from_secs(5 * 60));
    assert_eq!(
        w.pop.sessions().iter().filter(|s| s.user.is_some()).count(),
        3
    );
    w.handle.stop().await;
    w.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_trigger_during_a_pass_waits_for_it_then_runs() {
    let pop = MockPop3::builder()
        .mailbox(mailbox(1))
        .fault(FaultRule::new(
            Hook::command("RETR"),
            FaultAction::Delay(Duration::from_secs(10 * 60)),
        ))
        .spawn_in_memory();
    let w = start(pop, "1h");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        w.handle.history().is_empty(),
        "the first pass is still in its slow RETR"
    );
    w.pop.add_message(
        "info",
        mock_pop3::Message::new(&b"Subject: urgent\r\n\r\nx\r\n"[..]),
    );
    let summaries = w.handle.trigger(None).await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        summaries[0].delivered, 1,
        "the message that arrived during the first pass"
    );
    let h = w.handle.history();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0].cause, h[1].cause),
        (Cause::Scheduled, Cause::Triggered)
    );
    assert!(h[1].started >= h[0].finished);
    assert!(w.pop.mailbox("info").unwrap().remaining.is_empty());
    assert!(w
        .handle
        .trigger(Some("nobody".into()))
        .await
        .unwrap_err()
        .contains("no account named"));
    w.handle.stop().await;
    w.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_bad_configuration_on_reload_keeps_the_old_one() {
    let w = start(
        MockPop3::builder().mailbox(mailbox(1)).spawn_in_memory(),
        "15m",
    );
    w.handle.wait_completed(1).await;
    let bad_path = w.dir.path().join("bad.toml");
    std::fs::write(&bad_path, "state_dir = \"x\"\ninterval = \"1m\"\n").unwrap();
    let bad = Config::load(&bad_path).map_err(|e| e.to_string());
    let err = w.handle.reload(bad).await.unwrap_err();
    assert!(err.contains("bad.toml"), "{err}");
    assert_eq!(
        w.handle.config().interval,
        Duration::from_secs(900),
        "old configuration kept"
    );
    let good = Config::from_str(
        &config_text(&w.dir, "30m"),
        &w.dir.path().join("popbridge.toml"),
    )
    .map_err(|e| e.to_string());
    w.handle.reload(good).await.unwrap();
    assert_eq!(w.handle.config().interval, Duration::from_secs(1800));
    // The turn already scheduled keeps its time; the ones after use the new interval.
    w.handle.wait_completed(3).await;
    let h = w.handle.history();
    assert_eq!(h[2].started - h[1].started, Duration::from_secs(1800));
    w.handle.stop().await;
    w.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stop_finishes_the_message_in_flight_and_quits() {
    let pop = MockPop3::builder()
        .mailbox(mailbox(5))
        .fault(FaultRule::new(
            Hook::command("RETR"),
            FaultAction::Delay(Duration::from_secs(120)),
        ))
        .capabilities_after_login(mock_pop3::Capabilities {
            pipelining: false,
            ..mock_pop3::Capabilities::full_after_login()
        })
        .spawn_in_memory();
    let w = start(pop, "1h");
    tokio::time::sleep(Duration::from_secs(60)).await;
    w.handle.stop().await;
    w.run.await.unwrap();
    let h = w.handle.history();
    assert_eq!(h.len(), 1);
    assert_eq!(
        (
            h[0].summary.delivered,
            h[0].summary.deleted,
            h[0].summary.postponed
        ),
        (1, 1, 4),
        "{:?}",
        h[0].summary
    );
    w.pop.wait_idle().await;
    assert_eq!(
        w.pop.sessions()[0].end,
        Some(mock_pop3::SessionEnd::QuitUpdate)
    );
    assert_eq!(w.pop.mailbox("info").unwrap().remaining.len(), 4);
}
