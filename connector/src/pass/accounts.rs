//! Running passes over several accounts: the per-account lock, the pass history, and the
//! bound on passes at once.
//!
//! Must never: run two passes of one account at once, or drop a pass that panicked
//! without reporting it.

use super::*;

/// How a pass ended, for the history: failed (the account could not be processed, or the
/// pass was interrupted), stuck (messages stay that no later pass delivers unchanged:
/// refused, over the size limit, not matching their LIST size), backlog (messages wait
/// for the next pass: deferred, postponed), else ok.
pub fn outcome(s: &Summary) -> (Outcome, Option<String>) {
    if let Some(f) = &s.failure {
        return (Outcome::Failed, Some(f.to_string()));
    }
    if let Some(a) = &s.aborted {
        return (Outcome::Failed, Some(a.clone()));
    }
    // The same meanings as the exit codes: one definition of "stuck" and "backlog".
    match crate::exit::Exit::of(s) {
        crate::exit::Exit::Stuck => (Outcome::Stuck, None),
        crate::exit::Exit::Backlog => (Outcome::Backlog, None),
        _ => (Outcome::Ok, None),
    }
}

/// Records a finished pass in the ledger's history (a failure to do so is only logged:
/// the history is for people, the delivery records are what matters).
pub(super) async fn record_history(store: &Store<'_>, s: &Summary, started_at: i64) {
    let (outcome, reason) = outcome(s);
    let row = PassRow {
        account: s.account.clone(),
        started_at,
        finished_at: unix_now(),
        outcome,
        reason,
        counts: PassCounts {
            listed: s.listed,
            delivered: s.delivered,
            deleted: s.deleted,
            left: s.remaining(),
            rejected: s.rejected,
            deferred: s.deferred,
            skipped: s.skipped,
            quarantined: s.quarantined,
        },
    };
    if let Err(e) = store.record_pass(&row).await {
        tracing::warn!(account = %s.account, "ledger: pass history not recorded: {e}");
    }
}

/// One pass over `account` under its cluster lease, claimed through a connection of its
/// own and released after the pass; skipped (like a pass whose account is locked) when
/// another instance holds the lease, and a failure when the database cannot be used.
async fn run_leased(
    cx: &Context<'_>,
    cluster: &crate::config::ClusterSettings,
    claimer: &Claimer,
    account: &Account,
    id: &PassId,
) -> Summary {
    let not_run = |failure: Option<AccountFailure>, aborted: Option<String>| {
        let why = failure
            .as_ref()
            .map(ToString::to_string)
            .or(aborted.clone());
        cx.events.pass(id).emit(Event::AccountFailed {
            account: account.name.clone(),
            error: why.unwrap_or_default(),
        });
        Summary {
            account: account.name.clone(),
            pass: Some(id.clone()),
            failure,
            aborted,
            ..Summary::default()
        }
    };
    let store = match lease(cluster, claimer, account, cx.config.timeouts.connect).await {
        Ok(Ok(store)) => store,
        Ok(Err(busy)) => return not_run(None, Some(busy)),
        Err(failure) => return not_run(Some(failure), None),
    };
    // Renewed a third of the way through each lease while the pass runs, whatever the
    // pass is waiting for; stopped between two renewals, never in the middle of one.
    let (stop_beat, mut stopped) = tokio::sync::watch::channel(false);
    let period = cluster.lease_ttl / 3;
    let beat = tokio::spawn({
        let store = store.clone();
        let name = account.name.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stopped.changed() => return,
                }
                if let Err(e) = store.heartbeat().await {
                    tracing::warn!(account = %name, "cluster lease not renewed: {e}");
                    if !store.may_act() {
                        return;
                    }
                }
            }
        }
    });
    let summary = run_account_in(cx, account, id, Store::Cluster(store.clone())).await;
    let _ = stop_beat.send(true);
    let _ = beat.await;
    // Given back at once, so that the next due instance need not wait for it to expire.
    if let Ok(store) = Arc::try_unwrap(store) {
        let (mut cluster, lease, slot) = store.into_parts();
        if let Some(slot) = slot {
            if let Err(e) = slot.release(&mut cluster).await {
                tracing::warn!(account = %account.name, "server session slot not released: {e}");
            }
        }
        match lease.release(&mut cluster).await {
            // Used again by the run's next pass (a new connection costs the database a
            // process).
            Ok(()) => {
                if let Ok(claiming) = claimer {
                    claiming.spare.lock().await.push(cluster);
                }
            }
            Err(e) => tracing::warn!(account = %account.name, "cluster lease not released: {e}"),
        }
    }
    summary
}

/// The run's connection that claims leases and slots, and the pass connections free for
/// the next pass (or why the claiming connection could not be made).
type Claimer = Result<Claiming, AccountFailure>;

/// A failure to connect to the cluster database as the pass reports it:
/// [`AccountFailure::Connect`] when the database could not be reached (exit 3, like a
/// POP3 server that cannot be reached), [`AccountFailure::Config`] otherwise (the
/// password's source, the database's schema).
fn connect_failure(e: crate::store::ConnectError) -> AccountFailure {
    // The errors name the database themselves.
    match e.is_unreachable() {
        true => AccountFailure::Connect(e.to_string()),
        false => AccountFailure::Config(e.to_string()),
    }
}

/// See [`Claimer`].
pub(super) struct Claiming {
    claims: tokio::sync::Mutex<crate::cluster::Cluster>,
    spare: tokio::sync::Mutex<Vec<crate::cluster::Cluster>>,
}

impl Claiming {
    /// The claiming connection for a run.
    pub(super) fn new(cluster: crate::cluster::Cluster) -> Self {
        Self {
            claims: tokio::sync::Mutex::new(cluster),
            spare: tokio::sync::Mutex::new(Vec::new()),
        }
    }
}

/// Claims `account`'s lease, then one of its POP3 server's session slots, waiting for
/// one to come free (for at most five lease times to live, renewing the lease meanwhile),
/// through the run's claiming connection: the store of the pass (over a connection of its
/// own), or why the pass is skipped (another instance holds the account, or no session
/// slot came free).
async fn lease(
    settings: &crate::config::ClusterSettings,
    claimer: &Claimer,
    account: &Account,
    timeout: std::time::Duration,
) -> Result<Result<Arc<crate::store::ClusterStore>, String>, AccountFailure> {
    let claimer = claimer.as_ref().map_err(Clone::clone)?;
    let claimed = (claimer.claims.lock().await)
        .claim_named(&[&account.name])
        .await;
    let Some(mut lease) = claimed.map_err(AccountFailure::of_cluster)?.pop() else {
        return Ok(Err(
            "another instance holds this account's cluster lease; this pass was skipped".into(),
        ));
    };
    let server = format!("{}:{}", account.host, account.port);
    let give_up = tokio::time::Instant::now() + settings.lease_ttl * 5;
    let mut backoff = std::time::Duration::from_millis(50);
    let slot = loop {
        let mut claiming = claimer.claims.lock().await;
        let cluster = &mut *claiming;
        let claimed = cluster.claim_slot(&server, settings.server_sessions).await;
        let waited_out = tokio::time::Instant::now() + backoff > give_up;
        let renewed = match &claimed {
            Ok(None) if !waited_out => lease.heartbeat(cluster).await,
            _ => Ok(()),
        };
        match (claimed, renewed) {
            (Ok(Some(slot)), _) => break slot,
            (Ok(None), Ok(())) if !waited_out => {}
            (claimed, renewed) => {
                if let Err(e) = lease.release(cluster).await {
                    tracing::warn!(account = %account.name, "cluster lease not released: {e}");
                }
                claimed.map_err(AccountFailure::of_cluster)?;
                renewed.map_err(AccountFailure::of_cluster)?;
                return Ok(Err(format!(
                    "the cluster held all {} sessions allowed on {server} for {} s; this pass was skipped",
                    settings.server_sessions,
                    (settings.lease_ttl * 5).as_secs()
                )));
            }
        }
        drop(claiming);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
    };
    let spare = claimer.spare.lock().await.pop();
    let mut claiming = claimer.claims.lock().await;
    let cluster = &mut *claiming;
    let own = match spare {
        Some(connection) => Ok(Ok(connection)),
        None => tokio::time::timeout(timeout, cluster.connect_again()).await,
    };
    match own {
        Ok(Ok(connection)) => Ok(Ok(crate::store::ClusterStore::with_slot(
            connection,
            lease,
            Some(slot),
        ))),
        failed => {
            let _ = slot.release(cluster).await;
            let _ = lease.release(cluster).await;
            Err(match failed {
                Ok(Err(e)) => AccountFailure::of_cluster(e),
                _ => AccountFailure::Connect(format!(
                    "cluster database: no connection within {} s",
                    timeout.as_secs()
                )),
            })
        }
    }
}

/// Lock files held by passes of this process.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// An account's lock: the advisory file lock (other processes) and this process's entry.
pub(super) struct AccountLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for AccountLock {
    fn drop(&mut self) {
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != &self.path);
    }
}

/// Takes the account's lock under `state_dir/locks`, or says why not.
///
/// Within this process a registry decides. Across processes an advisory `flock` does; a
/// child process forked by another thread holds a copy of our descriptor until its `exec`,
/// which keeps a released flock alive for a moment, so a busy flock is retried briefly
/// before the account is declared busy.
pub(super) fn lock_account(
    state_dir: &std::path::Path,
    account: &str,
) -> Result<AccountLock, String> {
    let dir = state_dir.join("locks");
    crate::private::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{}.lock", safe_name(account)));
    {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains(&path) {
            return Err("another pass of this account is running; this one was skipped".into());
        }
        held.push(path.clone());
    }
    let release = |path: &PathBuf| {
        HELD.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != path)
    };
    let file = match crate::private::open_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            release(&path);
            return Err(format!("cannot open {}: {e}", path.display()));
        }
    };
    for attempt in 0..50 {
        match file.try_lock() {
            Ok(()) => return Ok(AccountLock { path, _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if attempt < 49 => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => break,
            Err(std::fs::TryLockError::Error(e)) => {
                release(&path);
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
    }
    release(&path);
    Err("another pass of this account is running (another process); this one was skipped".into())
}

/// Runs passes over several accounts, at most `config.parallel_accounts` at once: built
/// from what every run needs, with what only some need (a stop flag, injected faults) set
/// by name.
///
/// ```no_run
/// # async fn f(config: std::sync::Arc<popbridge::config::Config>,
/// #   ledger: popbridge::ledger::Ledger) {
/// use popbridge::{events::EventSink, net::TcpDialer, pass::{Runner, StopFlag}};
/// use std::sync::{Arc, Mutex};
/// let stop = StopFlag::default();
/// let accounts = config.accounts.clone();
/// let summaries = Runner::new(config, Arc::new(TcpDialer), Arc::new(EventSink::none()),
///     Arc::new(Mutex::new(ledger)))
///     .stop_on(stop.clone())
///     .run(accounts)
///     .await;
/// # }
/// ```
#[derive(Clone)]
pub struct Runner {
    config: Arc<Config>,
    dialer: Arc<dyn Dialer>,
    events: Arc<EventSink>,
    ledger: Arc<Mutex<Ledger>>,
    stop: StopFlag,
    faults: Faults,
}

impl Runner {
    /// A runner with the configuration, how to connect, where events go and the ledger.
    pub fn new(
        config: Arc<Config>,
        dialer: Arc<dyn Dialer>,
        events: Arc<EventSink>,
        ledger: Arc<Mutex<Ledger>>,
    ) -> Self {
        Self {
            config,
            dialer,
            events,
            ledger,
            stop: StopFlag::default(),
            faults: Faults::NONE,
        }
    }

    /// Stops taking new messages once `stop` is set (passes finish what is in hand).
    pub fn stop_on(mut self, stop: StopFlag) -> Self {
        self.stop = stop;
        self
    }

    /// Injects `faults` (harnesses: a simulated crash at a step of a message, a sabotage).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Runs one pass over each of `accounts` and returns their summaries, in the order
    /// given. A pass that panics is reported as that account's
    /// [`AccountFailure::Internal`] with an `account.failed` event, never dropped.
    pub async fn run(&self, accounts: Vec<Account>) -> Vec<Summary> {
        let Self {
            config,
            dialer,
            events,
            ledger,
            stop,
            faults,
        } = self.clone();
        let sem = Arc::new(tokio::sync::Semaphore::new(config.parallel_accounts.max(1)));
        // With a cluster: one connection claims the accounts' leases for the whole run;
        // each claimed pass gets a connection of its own.
        let claimer = match &config.cluster {
            Some(settings) => {
                let connected = crate::store::connect(settings, config.timeouts.connect).await;
                Some(Arc::new(
                    connected.map(Claiming::new).map_err(connect_failure),
                ))
            }
            None => None,
        };
        let mut tasks = Vec::new();
        for account in accounts {
            let name = account.name.clone();
            let (config, dialer, events, ledger, sem, stop, claimer) = (
                config.clone(),
                dialer.clone(),
                events.clone(),
                ledger.clone(),
                sem.clone(),
                stop.clone(),
                claimer.clone(),
            );
            let id = PassId::new();
            let pass = id.clone();
            let task = tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok();
                let cx = Context {
                    config: &config,
                    dialer: dialer.as_ref(),
                    events: &events,
                    ledger: &ledger,
                    stop: &stop,
                    faults,
                    listing_budget: Budget::DEFAULT,
                };
                match (&config.cluster, &claimer) {
                    (Some(cluster), Some(claimer)) => {
                        run_leased(&cx, cluster, claimer, &account, &pass).await
                    }
                    _ => run_account_as(&cx, &account, &pass).await,
                }
            });
            tasks.push((name, id, task));
        }
        let mut out = Vec::new();
        let started_at = unix_now();
        for (account, id, t) in tasks {
            match t.await {
                Ok(s) => out.push(s),
                Err(e) => {
                    let why = if e.is_panic() {
                        let p = e.into_panic();
                        let text = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into());
                        format!("the pass panicked: {text}")
                    } else {
                        "the pass was cancelled".to_string()
                    };
                    let failure = AccountFailure::Internal(why);
                    events.pass(&id).emit(Event::AccountFailed {
                        account: account.clone(),
                        error: failure.to_string(),
                    });
                    let summary = Summary {
                        account,
                        failure: Some(failure),
                        pass: Some(id),
                        ..Summary::default()
                    };
                    record_history(&Store::Local(&ledger), &summary, started_at).await;
                    out.push(summary);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn outcomes_tell_failure_stuck_backlog_and_ok_apart() {
        let s = |f: fn(&mut Summary)| {
            let mut s = Summary::default();
            f(&mut s);
            outcome(&s)
        };
        assert_eq!(s(|_| {}), (Outcome::Ok, None));
        // A backlog is postponed by design (capped or sliced).
        assert_eq!(
            s(|s| {
                s.capped = 3;
                s.postponed = 3
            }),
            (Outcome::Backlog, None)
        );
        assert_eq!(
            s(|s| {
                s.sliced = 3;
                s.postponed = 3
            }),
            (Outcome::Backlog, None)
        );
        // Postponed by an interrupted pass is not a backlog.
        assert_eq!(s(|s| s.postponed = 3), (Outcome::Stuck, None));
        for stuck in [
            |s: &mut Summary| s.rejected = 1,
            |s: &mut Summary| s.skipped = 1,
            |s: &mut Summary| s.mismatched = 1,
            |s: &mut Summary| s.deferred = 1,
            |s: &mut Summary| s.quarantined = 1,
        ] {
            assert_eq!(s(stuck), (Outcome::Stuck, None));
        }
        assert_eq!(
            s(|s| {
                s.capped = 1;
                s.postponed = 1;
                s.rejected = 1
            }),
            (Outcome::Stuck, None),
            "stuck outranks backlog"
        );
    }
}
