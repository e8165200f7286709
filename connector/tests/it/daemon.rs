//! The daemon under tokio's paused clock, over in-memory streams (real sockets would let
//! the paused clock run ahead): schedule, no overlap, triggers, reload, stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock_pop3::{FaultAction, FaultRule, Hook, Maildrop, MockPop3, MockPop3Handle};
use mock_smtp::{MockSmtp, MockSmtpHandle};
use popbridge::config::Config;
use popbridge::daemon::{Cause, Daemon, DaemonHandle};
use popbridge::events::EventSink;
use popbridge::ledger::Ledger;
use popbridge::ledger::HISTORY_KEEP;
use popbridge::net::{DialFuture, Dialer, MemoryDialer};
use tempfile::TempDir;
use tokio::sync::{mpsc, Semaphore};

use crate::harness::{memory_dialer, PASSWORD};

struct World {
    pop: Arc<MockPop3Handle>,
    smtp: Arc<MockSmtpHandle>,
    dir: TempDir,
    handle: DaemonHandle,
    run: tokio::task::JoinHandle<()>,
}

impl World {
    /// Stops the daemon and waits for its task to end.
    async fn stop(self) {
        self.handle.stop().await;
        self.run.await.unwrap();
    }
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
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_str(
        &config_text(&dir, interval),
        &dir.path().join("popbridge.toml"),
    )
    .unwrap();
    launch(pop, dir, config, |dialer| Arc::new(dialer))
}

/// Runs a daemon for `config` over the mocks (`pop3.test:110`, `smtp.test:25`, in
/// memory); `wrap` may put the routes behind a dialer of the test's own.
fn launch(
    pop: MockPop3Handle,
    dir: TempDir,
    config: Config,
    wrap: impl FnOnce(MemoryDialer) -> Arc<dyn Dialer>,
) -> World {
    let pop = Arc::new(pop);
    let smtp = Arc::new(MockSmtp::builder().spawn_in_memory());
    let dialer = memory_dialer(&pop, &smtp);
    let ledger = Arc::new(Mutex::new(Ledger::open(&config.state_dir).unwrap()));
    let (daemon, handle) = Daemon::new(config, wrap(dialer), Arc::new(EventSink::memory()), ledger);
    let run = tokio::spawn(daemon.run());
    World {
        pop,
        smtp,
        dir,
        handle,
        run,
    }
}

/// A POP3 mock holding [`mailbox`]`(n)` whose every RETR is answered only after `delay`.
fn slow_retr(n: usize, delay: Duration) -> mock_pop3::Builder {
    MockPop3::builder()
        .maildrop(mailbox(n))
        .fault(FaultRule::new(
            Hook::command("RETR"),
            FaultAction::Delay(delay),
        ))
}

fn mailbox(n: usize) -> Maildrop {
    Maildrop::new("info", PASSWORD).with_demo_messages(n, 600)
}

/// A POP3 server holding `n` demo messages for `info`.
fn serving(n: usize) -> MockPop3Handle {
    MockPop3::builder().maildrop(mailbox(n)).spawn_in_memory()
}

#[tokio::test(start_paused = true)]
async fn passes_run_at_the_interval() {
    let w = start(serving(2), "15m");
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
    assert!(w.pop.maildrop("info").unwrap().remaining.is_empty());
    assert_eq!(w.smtp.counts().accepted, 3);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_pass_is_never_overlapped_by_the_schedule() {
    // The first RETR takes 22 minutes; the interval is 5.
    let pop = slow_retr(3, Duration::from_secs(22 * 60)).spawn_in_memory();
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
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_trigger_during_a_pass_waits_for_it_then_runs() {
    let pop = slow_retr(1, Duration::from_secs(10 * 60)).spawn_in_memory();
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
    assert!(w.pop.maildrop("info").unwrap().remaining.is_empty());
    assert!(w
        .handle
        .trigger(Some("nobody".into()))
        .await
        .unwrap_err()
        .contains("no account named"));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_configuration_on_reload_keeps_the_old_one() {
    let w = start(serving(1), "15m");
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
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stop_finishes_the_message_in_flight_and_quits() {
    let pop = slow_retr(5, Duration::from_secs(120))
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
    assert_eq!(w.pop.maildrop("info").unwrap().remaining.len(), 4);
}

/// A configuration with `top` (global keys after `state_dir`) and one `[[account]]` per
/// `(name, extra keys)`, each logging in as `name` on the POP3 mock.
fn accounts_config(dir: &TempDir, top: &str, accounts: &[(&str, &str)]) -> Config {
    let mut text = format!(
        r#"state_dir = "{}"
{top}
[transport]
host = "smtp.test"
port = 25
[timeouts]
connect = "2h"
command = "2h"
data = "2h"
"#,
        dir.path().join("state").display(),
    );
    for (name, extra) in accounts {
        text.push_str(&format!(
            r#"[[account]]
name = "{name}"
host = "pop3.test"
port = 110
tls = "none"
allow_plaintext = true
username = "{name}"
password = "{PASSWORD}"
deliver_to = "{name}@contoso.local"
{extra}
"#
        ));
    }
    Config::from_str(&text, &dir.path().join("popbridge.toml")).unwrap()
}

/// A daemon over two accounts, `fast` (its own `interval = "10m"`) and `slow` (the global
/// 30 minutes), each on its own maildrop of the POP3 mock.
fn start_two(pop: MockPop3Handle) -> World {
    let dir = tempfile::tempdir().unwrap();
    let config = accounts_config(
        &dir,
        "interval = \"30m\"\njitter = 0",
        &[("fast", "interval = \"10m\""), ("slow", "")],
    );
    launch(pop, dir, config, |dialer| Arc::new(dialer))
}

/// Guards against: a per-account `interval` being ignored (every account on the global
/// schedule) or applied to every account.
#[tokio::test(start_paused = true)]
async fn an_account_interval_overrides_the_global_one() {
    let pop = MockPop3::builder()
        .maildrop(Maildrop::new("fast", PASSWORD).with_demo_messages(1, 600))
        .maildrop(Maildrop::new("slow", PASSWORD).with_demo_messages(1, 600))
        .spawn_in_memory();
    let w = start_two(pop);
    // 29 minutes on the paused clock: passes at 0, 10 and 20 minutes for `fast`, at 0 for
    // `slow` (its next is at 30).
    tokio::time::sleep(Duration::from_secs(29 * 60)).await;
    let h = w.handle.history();
    let starts = |name: &str| -> Vec<Duration> {
        let first = h[0].started;
        h.iter()
            .filter(|r| r.account == name)
            .map(|r| r.started - first)
            .collect()
    };
    assert_eq!(
        starts("fast"),
        [0, 600, 1200].map(Duration::from_secs),
        "{:?}",
        h.iter()
            .map(|r| (&r.account, r.started))
            .collect::<Vec<_>>()
    );
    assert_eq!(starts("slow"), [Duration::ZERO]);
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    let h = w.handle.history();
    assert_eq!(h.iter().filter(|r| r.account == "slow").count(), 2);
    assert_eq!(h.iter().filter(|r| r.account == "fast").count(), 4);
    assert_eq!(w.smtp.counts().accepted, 2);
    w.stop().await;
}

/// One HTTP/1.1 request over loopback; the whole response as text.
async fn http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the metrics responder hung")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The samples of an OpenMetrics text exposition: `name{labels}` → value. Checks the
/// format on the way: every line is a comment or `name[{labels}] value`, and it ends
/// with `# EOF`.
fn parse_exposition(text: &str) -> std::collections::HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        out.insert(series.to_string(), value);
    }
    out
}

/// Guards against: a metrics endpoint that answers without the documented metrics, or
/// with values that do not match the pass it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_pass_have_the_documented_names_and_values() {
    let w = start(serving(2), "24h");
    w.handle.wait_completed(1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(popbridge::metrics::serve(listener, w.handle.metrics()));
    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    let m = parse_exposition(body);
    let a = "{account=\"info\"}";
    let get = |name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("{name} missing from:\n{body}"))
    };
    let octets = w.handle.history()[0].summary.delivered_octets as f64;
    assert!(octets > 1000.0);
    assert_eq!(get(&format!("popbridge_messages_delivered_total{a}")), 2.0);
    for zero in ["rejected", "deferred", "skipped", "quarantined"] {
        assert_eq!(get(&format!("popbridge_messages_{zero}_total{a}")), 0.0);
    }
    assert_eq!(get(&format!("popbridge_delivered_bytes_total{a}")), octets);
    assert_eq!(
        get(&format!("popbridge_pass_duration_seconds_count{a}")),
        1.0
    );
    assert_eq!(
        get("popbridge_passes_total{account=\"info\",outcome=\"delivered\"}"),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    for ts in [
        "popbridge_last_pass_timestamp_seconds",
        "popbridge_last_successful_pass_timestamp_seconds",
    ] {
        let t = get(&format!("{ts}{a}"));
        assert!((now - 600.0..=now + 1.0).contains(&t), "{ts} = {t}");
    }
    assert_eq!(get(&format!("popbridge_messages_waiting{a}")), 0.0);
    assert_eq!(
        get(&format!("popbridge_oldest_waiting_message_age_seconds{a}")),
        0.0
    );
    assert!(get("popbridge_ledger_size_bytes") > 0.0);
    // Anything but GET /metrics is refused; an endless request head is cut off.
    assert!(http(addr, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 404 "));
    assert!(http(addr, b"POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 405 "));
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert!(http(addr, &huge).await.starts_with("HTTP/1.1 431 "));
    server.abort();
    w.stop().await;
}

/// Routes of a [`MemoryDialer`] whose POP3 connections each announce themselves on
/// `dialed`, then wait for a permit of `gate` (the test lets them through one by one).
struct GatedDialer {
    routes: MemoryDialer,
    dialed: mpsc::UnboundedSender<()>,
    gate: Arc<Semaphore>,
}

impl Dialer for GatedDialer {
    fn dial<'a>(&'a self, host: &'a str, port: u16) -> DialFuture<'a> {
        Box::pin(async move {
            if host == "pop3.test" {
                let _ = self.dialed.send(());
                self.gate.acquire().await.unwrap().forget();
            }
            self.routes.dial(host, port).await
        })
    }
}

/// The next POP3 connection, if one is made within a minute (the paused clock only moves
/// once every task waits, so "none" means none is coming).
async fn next_dial(dialed: &mut mpsc::UnboundedReceiver<()>) -> bool {
    tokio::time::timeout(Duration::from_secs(60), dialed.recv())
        .await
        .is_ok()
}

/// Guards against: `parallel_accounts` ignored by the daemon, both by the schedule (every
/// due account connecting at once) and by "Retrieve now" (one account after another).
#[tokio::test(start_paused = true)]
async fn scheduled_and_triggered_passes_honour_parallel_accounts() {
    let names = ["a", "b", "c"];
    let mut pop = MockPop3::builder();
    for n in names {
        pop = pop.maildrop(Maildrop::new(n, PASSWORD).with_demo_messages(1, 600));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = accounts_config(
        &dir,
        "interval = \"30m\"\njitter = 0\nparallel_accounts = 2",
        &names.map(|n| (n, "")),
    );
    let (tx, mut dialed) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let w = launch(pop.spawn_in_memory(), dir, config, move |routes| {
        Arc::new(GatedDialer {
            routes,
            dialed: tx,
            gate: g,
        })
    });
    // The schedule: all three are due; two connect, the third waits for a place.
    assert!(next_dial(&mut dialed).await && next_dial(&mut dialed).await);
    assert!(!next_dial(&mut dialed).await, "a third account connected");
    gate.add_permits(1);
    assert!(next_dial(&mut dialed).await, "the third never got a place");
    gate.add_permits(2);
    w.handle.wait_completed(3).await;
    // "Retrieve now" for every account: two at once as well, not one after another.
    let h = w.handle.clone();
    let trigger = tokio::spawn(async move { h.trigger(None).await });
    assert!(next_dial(&mut dialed).await);
    assert!(
        next_dial(&mut dialed).await,
        "the trigger ran one account at a time"
    );
    assert!(!next_dial(&mut dialed).await, "a third account connected");
    gate.add_permits(1);
    assert!(next_dial(&mut dialed).await);
    gate.add_permits(2);
    let summaries = trigger.await.unwrap().unwrap();
    assert_eq!(
        summaries
            .iter()
            .map(|s| s.account.as_str())
            .collect::<Vec<_>>(),
        names
    );
    assert_eq!(w.smtp.counts().accepted, 3);
    w.stop().await;
}

/// Guards against: the daemon's pass history growing without bound in a long-running
/// daemon (it keeps what the ledger keeps: the last passes of each account).
#[tokio::test(start_paused = true)]
async fn the_pass_history_keeps_the_last_passes_of_each_account() {
    let keep = usize::try_from(HISTORY_KEEP).unwrap();
    let w = start(serving(1), "5m");
    w.handle.wait_completed(keep as u64 + 5).await;
    let h = w.handle.history();
    assert_eq!(h.len(), keep);
    assert_eq!(
        h[keep - 1].started - h[0].started,
        Duration::from_secs(300) * (keep as u32 - 1),
        "the latest passes are kept"
    );
    assert_eq!(w.smtp.counts().accepted, 1);
    w.stop().await;
}
