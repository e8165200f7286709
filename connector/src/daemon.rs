//! The daemon: a pass of each account every `interval` (the account's own, or the global
//! one; plus a little jitter), "Retrieve now" triggers, configuration reloads and a clean
//! stop. After each account pass it logs one line (listed, delivered, left, duration, next
//! pass) and updates the metrics.
//!
//! The core is driven through a [`DaemonHandle`] (channels), so it runs the same under
//! tokio's paused clock in tests; signals and the trigger socket are thin adapters.
//! The trigger socket also answers a read-only status request (`popbridge status`: the
//! next scheduled pass and the interval).
//! Scheduled and triggered passes share one semaphore of `parallel_accounts` permits, so
//! no more accounts than that are fetched at once whatever started them; the in-memory
//! pass history keeps the last [`HISTORY_KEEP`] passes of each account, as the ledger's.
//! Must never: run two passes of one account at once, apply an invalid configuration,
//! stop in the middle of a message (a stop lets in-flight messages finish and QUITs), or
//! run a pass for a status request.

use crate::report::unix_secs;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;
use crate::events::EventSink;
use crate::ledger::{Ledger, HISTORY_KEEP};
use crate::metrics::{LedgerView, Metrics};
use crate::net::Dialer;
use crate::pass::{self, StopFlag, Summary};

/// Why a pass ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The schedule.
    Scheduled,
    /// "Retrieve now".
    Triggered,
}

/// One pass the daemon ran, for inspection.
#[derive(Debug, Clone)]
pub struct PassRecord {
    /// Account name.
    pub account: String,
    /// Why it ran.
    pub cause: Cause,
    /// When it started (tokio clock).
    pub started: Instant,
    /// When it finished.
    pub finished: Instant,
    /// What it did.
    pub summary: Summary,
}

enum Request {
    Trigger {
        account: Option<String>,
        reply: oneshot::Sender<Result<Vec<Summary>, String>>,
    },
    Reload {
        config: Box<Result<Config, String>>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Stop,
}

/// Controls a running daemon.
#[derive(Clone)]
pub struct DaemonHandle {
    tx: mpsc::Sender<Request>,
    config: watch::Receiver<Arc<Config>>,
    history: Arc<Mutex<Vec<PassRecord>>>,
    completed: watch::Receiver<u64>,
    stop: StopFlag,
    metrics: Arc<Metrics>,
    next_pass: watch::Receiver<Option<SystemTime>>,
    schedule: Arc<Mutex<HashMap<String, Instant>>>,
}

impl DaemonHandle {
    /// The daemon's metrics (what `metrics_listen` serves).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// When the next scheduled pass starts (wall clock), once the schedule is running.
    pub fn next_pass(&self) -> Option<SystemTime> {
        *self.next_pass.borrow()
    }

    /// Waits until the schedule is running (the next pass's time is known).
    pub async fn wait_scheduled(&self) {
        let mut rx = self.next_pass.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// What `popbridge status` is told: the next scheduled pass, overall and per account,
    /// and the interval.
    pub fn status(&self) -> DaemonStatus {
        let now = (Instant::now(), SystemTime::now());
        let accounts = self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, due)| {
                let wall = now.1 + due.saturating_duration_since(now.0);
                (name.clone(), unix_secs(wall))
            })
            .collect();
        DaemonStatus {
            next_pass: self.next_pass().map(unix_secs),
            interval_secs: self.config().interval.as_secs(),
            accounts,
        }
    }

    /// Runs a pass now (all accounts, or one) and returns when it finished. If a pass of
    /// that account is running, this one waits for it, then runs.
    pub async fn trigger(&self, account: Option<String>) -> Result<Vec<Summary>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Trigger { account, reply })
            .await
            .map_err(|_| "the daemon is stopping".to_string())?;
        rx.await
            .map_err(|_| "the daemon stopped before the pass ended".to_string())?
    }

    /// Replaces the configuration; an invalid one (`Err`) is refused and the old one kept.
    pub async fn reload(&self, config: Result<Config, String>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Reload {
                config: Box::new(config),
                reply,
            })
            .await
            .map_err(|_| "the daemon is stopping".to_string())?;
        rx.await.map_err(|_| "the daemon stopped".to_string())?
    }

    /// Asks the daemon to stop: no new message is started, passes QUIT, `run` returns.
    pub async fn stop(&self) {
        self.stop.stop();
        let _ = self.tx.send(Request::Stop).await;
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The last [`HISTORY_KEEP`] passes of each account, in order of completion.
    pub fn history(&self) -> Vec<PassRecord> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until at least `n` passes (per account) have completed.
    pub async fn wait_completed(&self, n: u64) {
        let mut rx = self.completed.clone();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

/// The scheduler and everything a pass needs.
pub struct Daemon {
    rx: mpsc::Receiver<Request>,
    config_tx: watch::Sender<Arc<Config>>,
    dialer: Arc<dyn Dialer>,
    events: Arc<EventSink>,
    ledger: Arc<Mutex<Ledger>>,
    busy: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// `parallel_accounts` permits, one per account pass running (scheduled or triggered).
    permits: Arc<Semaphore>,
    history: Arc<Mutex<Vec<PassRecord>>>,
    completed: watch::Sender<u64>,
    stop: StopFlag,
    metrics: Arc<Metrics>,
    /// When each account's next scheduled pass is due.
    schedule: Arc<Mutex<HashMap<String, Instant>>>,
    next_pass: watch::Sender<Option<SystemTime>>,
}

/// A random delay in `0..=jitter`.
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let ms = max.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
}

impl Daemon {
    /// A daemon for `config`, and the handle that controls it.
    pub fn new(
        config: Config,
        dialer: Arc<dyn Dialer>,
        events: Arc<EventSink>,
        ledger: Arc<Mutex<Ledger>>,
    ) -> (Daemon, DaemonHandle) {
        let permits = Arc::new(Semaphore::new(config.parallel_accounts.max(1)));
        let (tx, rx) = mpsc::channel(16);
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let (completed, completed_rx) = watch::channel(0);
        let history = Arc::new(Mutex::new(Vec::new()));
        let stop = StopFlag::default();
        let metrics = Arc::new(Metrics::new());
        let (next_pass, next_pass_rx) = watch::channel(None);
        let schedule: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let handle = DaemonHandle {
            tx,
            config: config_rx,
            history: history.clone(),
            completed: completed_rx,
            stop: stop.clone(),
            metrics: metrics.clone(),
            next_pass: next_pass_rx,
            schedule: schedule.clone(),
        };
        let daemon = Daemon {
            rx,
            config_tx,
            dialer,
            events,
            ledger,
            busy: HashMap::new(),
            permits,
            history,
            completed,
            stop,
            metrics,
            schedule,
            next_pass,
        };
        (daemon, handle)
    }

    fn lock_for(&mut self, account: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.busy.entry(account.to_string()).or_default().clone()
    }

    /// Runs until stopped. Each account's first pass starts after the jitter, then every
    /// interval (its own, else the global one) plus jitter.
    pub async fn run(mut self) {
        let mut tasks = JoinSet::new();
        {
            let config = self.config_tx.borrow().clone();
            let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
            let first = Instant::now() + jitter(config.jitter);
            for a in &config.accounts {
                schedule.insert(a.name.clone(), first);
            }
        }
        loop {
            let due = self
                .schedule
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .min()
                .copied();
            let wait = async move {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            if let Some(t) = due {
                self.publish_next(t);
            }
            tokio::select! {
                _ = wait => {
                    let config = self.config_tx.borrow().clone();
                    let now = Instant::now();
                    for account in config.accounts.clone() {
                        let is_due = {
                            let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
                            match schedule.get(&account.name) {
                                Some(t) if *t <= now => {
                                    let next = now + config.interval_of(&account) + jitter(config.jitter);
                                    schedule.insert(account.name.clone(), next);
                                    true
                                }
                                _ => false,
                            }
                        };
                        if !is_due {
                            continue;
                        }
                        let lock = self.lock_for(&account.name);
                        // A pass still running when the next one is due: skip this turn.
                        let Ok(guard) = lock.try_lock_owned() else {
                            tracing::info!(account = %account.name, "previous pass still running; skipping this turn");
                            continue;
                        };
                        let job = self.job(config.clone(), account.name.clone(), Cause::Scheduled);
                        tasks.spawn(async move {
                            let _ = job.run().await;
                            drop(guard);
                        });
                    }
                }
                req = self.rx.recv() => match req {
                    None | Some(Request::Stop) => break,
                    Some(Request::Trigger { account, reply }) => {
                        let config = self.config_tx.borrow().clone();
                        let names: Vec<String> = match &account {
                            Some(a) if config.account(a).is_none() => {
                                let _ = reply.send(Err(format!("no account named {a:?}")));
                                continue;
                            }
                            Some(a) => vec![a.clone()],
                            None => config.accounts.iter().map(|a| a.name.clone()).collect(),
                        };
                        // One task per account, as the schedule does: the permits, not this
                        // loop, decide how many run at once.
                        let runs: Vec<_> = names
                            .iter()
                            .map(|n| {
                                let lock = self.lock_for(n);
                                let job = self.job(config.clone(), n.clone(), Cause::Triggered);
                                tokio::spawn(async move {
                                    // Waits for a running pass of the account, never overlaps it.
                                    let _guard = lock.lock_owned().await;
                                    job.run().await
                                })
                            })
                            .collect();
                        tasks.spawn(async move {
                            let mut out = Vec::new();
                            for run in runs {
                                out.extend(run.await.unwrap_or_default());
                            }
                            let _ = reply.send(Ok(out));
                        });
                    }
                    Some(Request::Reload { config, reply }) => {
                        let result = match *config {
                            Ok(c) => {
                                let interval = c.interval;
                                self.reschedule(&c);
                                if c.parallel_accounts != self.config_tx.borrow().parallel_accounts {
                                    // Passes already running finish under the old bound.
                                    self.permits = Arc::new(Semaphore::new(c.parallel_accounts.max(1)));
                                }
                                self.config_tx.send_replace(Arc::new(c));
                                tracing::info!("configuration reloaded; interval {}s", interval.as_secs());
                                Ok(())
                            }
                            Err(e) => {
                                tracing::error!("configuration not reloaded, the old one stays in force: {e}");
                                Err(e)
                            }
                        };
                        let _ = reply.send(result);
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        self.stop.stop();
        while tasks.join_next().await.is_some() {}
    }

    /// After a reload: accounts that stay keep the turn already scheduled, new ones get
    /// their first pass after the jitter, removed ones are forgotten.
    fn reschedule(&self, config: &Config) {
        let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        schedule.retain(|name, _| config.account(name).is_some());
        let first = Instant::now() + jitter(config.jitter);
        for a in &config.accounts {
            schedule.entry(a.name.clone()).or_insert(first);
        }
    }

    /// Makes the next scheduled pass's time (tokio clock) known to the handle, as wall
    /// clock time.
    fn publish_next(&self, next: Instant) {
        let wall = SystemTime::now() + next.saturating_duration_since(Instant::now());
        self.next_pass.send_replace(Some(wall));
    }

    fn job(&self, config: Arc<Config>, account: String, cause: Cause) -> Job {
        Job {
            metrics: self.metrics.clone(),
            schedule: self.schedule.clone(),
            config,
            account,
            cause,
            permits: self.permits.clone(),
            dialer: self.dialer.clone(),
            events: self.events.clone(),
            ledger: self.ledger.clone(),
            history: self.history.clone(),
            completed: self.completed.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// One account's pass, with what it needs to report back.
struct Job {
    config: Arc<Config>,
    account: String,
    cause: Cause,
    permits: Arc<Semaphore>,
    dialer: Arc<dyn Dialer>,
    events: Arc<EventSink>,
    ledger: Arc<Mutex<Ledger>>,
    history: Arc<Mutex<Vec<PassRecord>>>,
    completed: watch::Sender<u64>,
    stop: StopFlag,
    metrics: Arc<Metrics>,
    schedule: Arc<Mutex<HashMap<String, Instant>>>,
}

/// A duration for people: `1.2s`, `3m05s`, `2h00m`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

impl Job {
    /// The daemon's one log line for an account pass, and its metrics.
    fn report(&self, s: &Summary, took: Duration) {
        let view = {
            let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            LedgerView {
                oldest_failed_since: ledger.oldest_failed_since(&s.account).unwrap_or_else(|e| {
                    tracing::warn!(account = %s.account, "ledger: {e}");
                    None
                }),
                size: ledger.size_on_disk(),
            }
        };
        self.metrics.record_pass(s, took, view);
        let next = self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&s.account)
            .copied();
        let next = match next {
            Some(t) => {
                let wait = t.saturating_duration_since(Instant::now());
                format!(
                    "next pass {} (in {})",
                    crate::events::rfc3339(std::time::SystemTime::now() + wait),
                    human_duration(wait)
                )
            }
            None => "no next pass scheduled".into(),
        };
        let cause = match self.cause {
            Cause::Scheduled => "scheduled",
            Cause::Triggered => "triggered",
        };
        let pass = s.pass.as_ref().map(|p| p.as_str()).unwrap_or("-");
        match (&s.failure, &s.aborted) {
            (Some(f), _) => tracing::warn!(
                target: "popbridge::daemon",
                "{}: {cause} pass {pass} failed after {}: {f}; {next}",
                s.account,
                human_duration(took)
            ),
            (None, aborted) => tracing::info!(
                target: "popbridge::daemon",
                "{}: {cause} pass {pass}: {} listed, {} delivered, {} left, {}{}; {next}",
                s.account,
                s.listed,
                s.delivered,
                s.remaining(),
                human_duration(took),
                aborted
                    .as_ref()
                    .map(|a| format!(", stopped early: {a}"))
                    .unwrap_or_default()
            ),
        }
    }

    async fn run(self) -> Vec<Summary> {
        let Some(account) = self.config.account(&self.account).cloned() else {
            return Vec::new();
        };
        // Waits for a place among the `parallel_accounts` passes running.
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return Vec::new();
        };
        if self.stop.is_stopped() {
            return Vec::new();
        }
        let started = Instant::now();
        let summaries = pass::Runner::new(
            self.config.clone(),
            self.dialer.clone(),
            self.events.clone(),
            self.ledger.clone(),
        )
        .stop_on(self.stop.clone())
        .run(vec![account])
        .await;
        let finished = Instant::now();
        for s in &summaries {
            self.report(s, finished - started);
        }
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            for s in &summaries {
                h.push(PassRecord {
                    account: self.account.clone(),
                    cause: self.cause,
                    started,
                    finished,
                    summary: s.clone(),
                });
            }
            trim_history(&mut h, &self.account);
        }
        self.completed.send_modify(|c| *c += 1);
        summaries
    }
}

/// Forgets the oldest passes of `account` beyond the last [`HISTORY_KEEP`].
fn trim_history(history: &mut Vec<PassRecord>, account: &str) {
    let keep = usize::try_from(HISTORY_KEEP).unwrap_or(usize::MAX);
    let mut extra = history
        .iter()
        .filter(|r| r.account == account)
        .count()
        .saturating_sub(keep);
    history.retain(|r| {
        let drop = extra > 0 && r.account == account;
        extra -= usize::from(drop);
        !drop
    });
}

/// The trigger socket's path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("popbridge.sock")
}

/// What `popbridge trigger` (or `status`) sends over the socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct TriggerRequest {
    /// One account, or all.
    pub account: Option<String>,
    /// True for a read-only status request (`popbridge status`): no pass is run. Absent
    /// (older clients) means false.
    #[serde(default)]
    pub status: bool,
}

/// What a running daemon tells `popbridge status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// When the next scheduled pass (of any account) starts, unix seconds.
    pub next_pass: Option<i64>,
    /// The configured interval between passes, in seconds.
    pub interval_secs: u64,
    /// Each account's next scheduled pass, unix seconds (accounts may have intervals of
    /// their own); empty from a daemon that predates it.
    #[serde(default)]
    pub accounts: std::collections::BTreeMap<String, i64>,
}

/// What the daemon answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum TriggerResponse {
    /// The passes ran.
    Done(Vec<Summary>),
    /// They could not run.
    Error(String),
    /// The answer to a status request.
    Status(DaemonStatus),
}

/// Serves "Retrieve now" requests on a Unix socket (one JSON line each way) until the
/// daemon stops. A stale socket file from a crashed daemon is replaced.
#[cfg(unix)]
pub async fn serve_trigger_socket(path: PathBuf, handle: DaemonHandle) -> std::io::Result<()> {
    if tokio::net::UnixStream::connect(&path).await.is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another daemon is listening on {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    // Only popbridge's own user (and root) may ask for a pass; the state directory is 0700
    // as well, so nobody else could reach the socket before this.
    crate::private::set_mode(&path, crate::private::FILE_MODE)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let handle = handle.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(64 * 1024));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<TriggerRequest>(&line) {
                Ok(req) if req.status => TriggerResponse::Status(handle.status()),
                Ok(req) => match handle.trigger(req.account).await {
                    Ok(s) => TriggerResponse::Done(s),
                    Err(e) => TriggerResponse::Error(e),
                },
                Err(e) => TriggerResponse::Error(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_string(&response).unwrap_or_else(|_| "\"Error\"".into());
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
        });
    }
}

/// Asks a running daemon for a pass and waits for its summaries.
#[cfg(unix)]
pub async fn request_trigger(
    path: &Path,
    account: Option<String>,
) -> std::io::Result<TriggerResponse> {
    request(
        path,
        TriggerRequest {
            account,
            status: false,
        },
    )
    .await
}

/// Asks a running daemon for its status (read-only: no pass is run).
#[cfg(unix)]
pub async fn request_status(path: &Path) -> std::io::Result<TriggerResponse> {
    request(
        path,
        TriggerRequest {
            account: None,
            status: true,
        },
    )
    .await
}

/// Sends one request line and reads the one-line answer.
#[cfg(unix)]
async fn request(path: &Path, req: TriggerRequest) -> std::io::Result<TriggerResponse> {
    let mut stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "no daemon is listening on {} ({e}); is `popbridge run` running?",
                path.display()
            ),
        )
    })?;
    let mut req = serde_json::to_string(&req)?;
    req.push('\n');
    stream.write_all(req.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_from_an_older_client_is_a_trigger_and_status_round_trips() {
        let r: TriggerRequest = serde_json::from_str(r#"{"account":"info"}"#).unwrap();
        assert_eq!((r.account.as_deref(), r.status), (Some("info"), false));
        let r: TriggerRequest = serde_json::from_str(r#"{"account":null,"status":true}"#).unwrap();
        assert!(r.status);
        let s = TriggerResponse::Status(DaemonStatus {
            next_pass: Some(1_796_619_552),
            interval_secs: 900,
            accounts: [("info".to_string(), 1_796_619_552)].into(),
        });
        let back: TriggerResponse =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(matches!(
            &back,
            TriggerResponse::Status(DaemonStatus {
                next_pass: Some(1_796_619_552),
                interval_secs: 900,
                accounts,
            }) if accounts.get("info") == Some(&1_796_619_552)
        ));
        // A daemon that predates per-account times still answers something usable.
        let old: TriggerResponse =
            serde_json::from_str(r#"{"Status":{"next_pass":5,"interval_secs":900}}"#).unwrap();
        assert!(
            matches!(&old, TriggerResponse::Status(DaemonStatus { next_pass: Some(5), accounts, .. }) if accounts.is_empty())
        );
    }
}
