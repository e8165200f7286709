//! `popbridge`: the command line. Thin: parses arguments, loads the configuration, runs
//! the library, prints a summary, and maps the outcome to the documented exit codes.

use popbridge::report::unix_now;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, Subcommand};
use popbridge::config::Config;
use popbridge::events::EventSink;
use popbridge::exit::Exit;
use popbridge::ledger::Ledger;
use popbridge::net::TcpDialer;
use popbridge::pass::{self, Summary};

/// What `--help` says after the one-line description.
fn long_about() -> String {
    format!(
        "Moves mail from POP3 mailboxes to an SMTP server (Exchange, Postfix...), deleting \
         each message from the POP3 server only after the SMTP server accepted it and the \
         local ledger recorded it, so nothing is lost and nothing is delivered twice.\n\n\
         {table}\n\n\
         Logs go to standard error. The default level shows warnings and, for the daemon, \
         one line per account pass (listed, delivered, left, duration, next pass). \
         --log-level LEVEL (error, warn, info, debug, trace, or a tracing filter such as \
         \"info,popbridge::wire=debug\") sets it; without it the POPBRIDGE_LOG environment \
         variable does (same syntax); --verbose is info with the protocol transcript.",
        table = popbridge::exit::TABLE
    )
}

/// Moves mail from POP3 mailboxes to an SMTP server (Exchange, Postfix...), deleting each
/// message from the POP3 server only after the SMTP server accepted it and the local
/// ledger recorded it, so nothing is lost and nothing is delivered twice.
///
/// Commands: fetch, run, trigger, check-limits, diagnose, status, quarantine
/// (list|show|release|delete).
#[derive(Parser, Debug)]
#[command(name = "popbridge", version, about, long_about = long_about())]
struct Cli {
    /// The configuration file (TOML; see popbridge.example.toml).
    #[arg(
        long,
        short = 'c',
        global = true,
        default_value = "/etc/popbridge/popbridge.toml"
    )]
    config: PathBuf,
    /// Add the protocol transcript (secrets redacted) to the log on standard error.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    /// The log level or filter (error, warn, info, debug, trace, or a tracing filter);
    /// overrides POPBRIDGE_LOG and --verbose.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Append one JSON object per event to this file (each with its RFC 3339 UTC `time`
    /// and the `pass` id); the daemon reopens it on SIGHUP (after logrotate).
    #[arg(long, global = true)]
    events: Option<PathBuf>,
    /// Accept a configuration file holding a password, or a password_file, that other
    /// users can read (refused otherwise). Only where file modes mean nothing, as in some
    /// containers.
    #[arg(long, global = true)]
    allow_insecure_config_mode: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One pass now over every account, or one ("Retrieve now" without a daemon).
    Fetch {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
    },
    /// The daemon: the first pass at start-up after the jitter, then a pass of each account
    /// every `interval` (its own or the global one; 5m to 24h, default 15m). SIGTERM lets
    /// the messages in flight finish, QUITs and exits 0; SIGHUP reopens the --events file
    /// and reloads the configuration (an invalid file is refused and the running one kept).
    /// With `metrics_listen` set it serves Prometheus metrics on GET /metrics.
    Run,
    /// Validates the size-limit chain (popbridge, the receive connector's SIZE, Exchange's
    /// organisation and mailbox limits) and shows, per size band, whether a message is
    /// delivered, left on the server, or could be lost, and where each limit's value came
    /// from (declared, EHLO SIZE, probe). A limit neither declared nor probed is unknown,
    /// never "unlimited": declare Exchange's limits as a size or "unlimited".
    ///
    /// Exit codes: 0 safe (every limit known, nothing lost or stuck); 1 mail can be lost
    /// or stuck forever, or --probe found messages on the server that will not be
    /// delivered (listed with sender, subject and size); 2 configuration error; 5 unknown:
    /// a limit is neither declared nor probed and nothing is proven unsafe.
    CheckLimits {
        /// Also ask the servers: the SMTP server's EHLO SIZE and the POP3 messages' sizes
        /// (LIST), and the sender and subject of each message that will not be delivered
        /// (TOP n 0); nothing is downloaded or deleted.
        #[arg(long)]
        probe: bool,
    },
    /// Checks every account and the transport without changing anything: connection and
    /// TLS, capabilities before and after login, login, message count and largest sizes,
    /// the SMTP server's extensions and SIZE. Exit 3 on any failure.
    Diagnose,
    /// Asks the running daemon for a pass now ("Retrieve now") and prints its summary.
    Trigger {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
    },
    /// Per account: the last pass (time, outcome, counts), the next pass (asked of a
    /// running daemon, else "daemon not running"), the messages stuck with their reason
    /// and age, the quarantined count; with [cluster], read from the cluster database, with
    /// who holds each account's lease, the instances holding leases and how many accounts
    /// have stuck messages. Changes nothing. Exit 0; 2 when the ledger cannot be read; 3
    /// when the cluster database cannot be reached.
    Status {
        /// Print stable JSON (`"version": 1`) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The quarantined messages: list them, show one, release one for delivery at the
    /// next pass, or delete one. Exit 0; 1 when the message is not quarantined or its copy
    /// cannot be read; 2 when the ledger cannot be opened or the account is unknown.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineCommand,
    },
    /// Copies the ledger of state_dir into the cluster database the [cluster] section
    /// names, once, before the first run with [cluster]: every record (deliveries,
    /// failures, quarantine, submission marks, the pass history), so that nothing is
    /// delivered again. Stop every instance first. Exit 0 copied; 1 refused, nothing
    /// written (an instance holds one of the accounts, or the cluster already has their
    /// records); 2 no [cluster] section, or the ledger cannot be read; 3 the database cannot
    /// be reached.
    MigrateLedger,
}

#[derive(Subcommand, Debug)]
enum QuarantineCommand {
    /// Quarantined messages with account, key, sender, subject, date, reason and when.
    List {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// Print JSON (one array of objects) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Prints the stored copy of one message.
    Show {
        /// The account.
        account: String,
        /// The message's ledger key (as `list` shows it).
        key: String,
    },
    /// Delivers the message from its local copy at the next pass, exactly once; a later
    /// pass then deletes the server's copy (or keeps it with leave_on_server).
    Release {
        /// The account.
        account: String,
        /// The message's ledger key.
        key: String,
    },
    /// Removes the local copy; the server's copy, if still there, is deleted at the next
    /// pass unless the account keeps mail on the server (leave_on_server) or the message
    /// has no UID.
    Delete {
        /// The account.
        account: String,
        /// The message's ledger key.
        key: String,
    },
}

/// Loads the configuration and, unless allowed, refuses secrets others can read.
fn load_config(
    path: &std::path::Path,
    allow_insecure_mode: bool,
) -> Result<Config, popbridge::config::ConfigError> {
    let config = Config::load(path)?;
    if !allow_insecure_mode {
        config.check_private()?;
    }
    Ok(config)
}

/// Makes `state_dir` private (a warning event for each path tightened), then opens the
/// ledger; `Err` is the exit code after the reason was printed.
fn open_state(config: &Config, events: &EventSink) -> Result<Ledger, Exit> {
    let pickup: Vec<&std::path::Path> = config
        .transport
        .pickup()
        .map(|t| t.dir.as_path())
        .into_iter()
        .collect();
    match popbridge::private::secure_state_dir(&config.state_dir, &pickup) {
        Ok(changed) => {
            for t in changed {
                eprintln!(
                    "popbridge: warning: {} was readable by other users (mode {:04o}); made private",
                    t.path.display(),
                    t.was
                );
                events.emit(popbridge::events::Event::StateTightened {
                    path: t.path.display().to_string(),
                    was: format!("{:04o}", t.was),
                });
            }
        }
        Err(e) => {
            eprintln!("popbridge: {e}");
            return Err(Exit::Config);
        }
    }
    Ledger::open(&config.state_dir).map_err(|e| {
        eprintln!("popbridge: {e}");
        Exit::Config
    })
}

/// One progress bar per account, fed by events.
#[derive(Default)]
struct Progress {
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl Progress {
    fn on(&self, e: &popbridge::events::Event) {
        use popbridge::events::Event;
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Listed {
                account, messages, ..
            } => {
                let bar = self
                    .multi
                    .add(indicatif::ProgressBar::new(u64::from(*messages)));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {pos}/{len} messages ({per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style.progress_chars("=> "));
                bar.set_prefix(account.clone());
                bars.insert(account.clone(), bar);
            }
            Event::Delivered { account, .. }
            | Event::AlreadyDelivered { account, .. }
            | Event::Rejected { account, .. }
            | Event::Deferred { account, .. }
            | Event::SkippedOversize { account, .. }
            | Event::Quarantined { account, .. } => {
                if let Some(b) = bars.get(account) {
                    b.inc(1);
                }
            }
            Event::PassFinished { account, .. } => {
                if let Some(b) = bars.remove(account) {
                    b.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}

fn print_summary(s: &Summary) {
    if let Some(f) = &s.failure {
        println!("{}: FAILED: {f}", s.account);
        return;
    }
    let mut kept = Vec::new();
    for (n, what) in [
        (s.rejected, "rejected"),
        (s.deferred, "deferred"),
        (s.skipped, "over the size limit"),
        (s.quarantined, "quarantined"),
        (s.backlog(), "for the next pass"),
        (
            s.postponed.saturating_sub(s.backlog()),
            "not reached (pass interrupted)",
        ),
        (s.mismatched, "not as large as listed"),
    ] {
        if n > 0 {
            kept.push(format!("{n} {what}"));
        }
    }
    let kept = if kept.is_empty() {
        String::new()
    } else {
        format!(
            ", {} left on the server ({})",
            s.remaining(),
            kept.join(", ")
        )
    };
    println!(
        "{}: {} listed, {} delivered, {} deleted{kept}",
        s.account, s.listed, s.delivered, s.deleted
    );
    for left in &s.left {
        println!("{}: {}", s.account, left.describe());
    }
    if s.left_unnamed > 0 {
        println!(
            "{}: and {} more (the events name every one)",
            s.account, s.left_unnamed
        );
    }
    if let Some(a) = &s.aborted {
        println!("{}: pass stopped early: {a}", s.account);
    }
}

async fn fetch(cli: &Cli, config: Config, only: Option<&str>) -> anyhow::Result<Exit> {
    let accounts = match only {
        Some(name) => match config.account(name) {
            Some(a) => vec![a.clone()],
            None => {
                eprintln!(
                    "popbridge: {}: no account named {name:?}",
                    config.path.display()
                );
                return Ok(Exit::Config);
            }
        },
        None => config.accounts.clone(),
    };
    let events = match &cli.events {
        Some(p) => EventSink::file(p)
            .with_context(|| format!("opening the events file {}", p.display()))?,
        None => EventSink::none(),
    };
    // A progress bar for people at a terminal; scripts and logs get none.
    let events = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let progress = Progress::default();
        events.with_observer(move |e| progress.on(e))
    } else {
        events
    };
    let ledger = match open_state(&config, &events) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let summaries = pass::Runner::new(
        Arc::new(config),
        Arc::new(TcpDialer),
        Arc::new(events),
        Arc::new(Mutex::new(ledger)),
    )
    .run(accounts)
    .await;
    for s in &summaries {
        print_summary(s);
    }
    Ok(Exit::of_all(&summaries))
}

#[cfg(unix)]
async fn run_daemon(cli: &Cli, config: Config) -> anyhow::Result<Exit> {
    use popbridge::daemon::{self, Daemon};
    use tokio::signal::unix::{signal, SignalKind};
    let events = match &cli.events {
        Some(p) => EventSink::file(p)
            .with_context(|| format!("opening the events file {}", p.display()))?,
        None => EventSink::none(),
    };
    let ledger = match open_state(&config, &events) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let socket = daemon::socket_path(&config.state_dir);
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?,
        ),
        None => None,
    };
    let events = Arc::new(events);
    let (daemon, handle) = Daemon::new(
        config,
        Arc::new(TcpDialer),
        events.clone(),
        Arc::new(Mutex::new(ledger)),
    );
    let metrics_server = metrics_listener.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(target: "popbridge::daemon", "metrics on http://{addr}/metrics");
        }
        tokio::spawn(popbridge::metrics::serve(l, handle.metrics()))
    });
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let sock = socket.clone();
    let h = handle.clone();
    let server = tokio::spawn(async move { daemon::serve_trigger_socket(sock, h).await });
    let path = cli.config.clone();
    let insecure_ok = cli.allow_insecure_config_mode;
    let h = handle.clone();
    let signals = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if let Err(e) = events.reopen() {
                        let path = events.path().map(|p| p.display().to_string()).unwrap_or_default();
                        eprintln!("popbridge: cannot reopen the events file {path}: {e} (events go on to the file open so far)");
                    }
                    let loaded = load_config(&path, insecure_ok).map_err(|e| e.to_string());
                    if let Ok(c) = &loaded {
                        if c.metrics_listen != h.config().metrics_listen {
                            eprintln!("popbridge: metrics_listen changed; the new address is used after a restart");
                        }
                    }
                    match h.reload(loaded).await {
                        Ok(()) => eprintln!("popbridge: configuration reloaded from {}", path.display()),
                        Err(e) => eprintln!("popbridge: {e} (the running configuration stays in force)"),
                    }
                }
            }
        }
        h.stop().await;
    });
    tracing::info!(target: "popbridge::daemon", "daemon started; trigger socket {}", socket.display());
    daemon.run().await;
    signals.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    if server.is_finished() {
        if let Ok(Err(e)) = server.await {
            eprintln!("popbridge: trigger socket: {e}");
        }
    } else {
        server.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(Exit::Delivered)
}

/// `run` and `trigger` need a Unix system (signals, the trigger socket).
#[cfg(not(unix))]
async fn run_daemon(_cli: &Cli, _config: Config) -> anyhow::Result<Exit> {
    anyhow::bail!("`popbridge run` needs a Unix system (signals and a Unix socket)")
}

#[cfg(not(unix))]
async fn trigger(_config: &Config, _account: Option<String>) -> anyhow::Result<Exit> {
    anyhow::bail!("`popbridge trigger` needs a Unix system (the daemon's Unix socket)")
}

#[cfg(unix)]
async fn trigger(config: &Config, account: Option<String>) -> anyhow::Result<Exit> {
    use popbridge::daemon::{request_trigger, socket_path, TriggerResponse};
    match request_trigger(&socket_path(&config.state_dir), account).await {
        Ok(TriggerResponse::Done(summaries)) => {
            for s in &summaries {
                print_summary(s);
            }
            Ok(Exit::of_all(&summaries))
        }
        Ok(TriggerResponse::Error(e)) => {
            eprintln!("popbridge: {e}");
            Ok(Exit::Config)
        }
        Ok(TriggerResponse::Status(_)) => {
            eprintln!("popbridge: the daemon answered a status to a trigger request");
            Ok(Exit::Stuck)
        }
        Err(e) => {
            eprintln!("popbridge: {e}");
            Ok(Exit::Connect)
        }
    }
}

/// Opens the ledger for the administrator's commands (nothing else under `state_dir` is
/// touched); `Err` is the exit code after the reason was printed.
fn open_ledger(config: &Config) -> Result<Ledger, Exit> {
    Ledger::open(&config.state_dir).map_err(|e| {
        eprintln!("popbridge: {e}");
        Exit::Config
    })
}

async fn migrate_ledger(config: &Config) -> anyhow::Result<Exit> {
    use popbridge::cluster::ClusterError;
    let Some(settings) = &config.cluster else {
        eprintln!(
            "popbridge: migrate-ledger: {} has no [cluster] section naming the database to copy the ledger into",
            config.path.display()
        );
        return Ok(Exit::Config);
    };
    let ledger = match open_ledger(config) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let mut cluster = match connect_cluster(config, settings).await {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match cluster.migrate_from(&ledger).await {
        Ok(m) => {
            let [messages, marks, shared, passes] = m.rows;
            println!(
                "copied the ledger of {} account(s) into {}: {messages} message record(s), \
                 {marks} submission mark(s), {shared} shared UID(s), {passes} pass(es)",
                m.accounts,
                cluster.config()
            );
            Ok(Exit::Delivered)
        }
        Err(ClusterError::Migration(refusal)) => {
            eprintln!("popbridge: migrate-ledger: {refusal}");
            Ok(Exit::Stuck)
        }
        Err(e) => {
            eprintln!("popbridge: migrate-ledger: {e}");
            Ok(if e.is_connection_lost() {
                Exit::Connect
            } else {
                Exit::Config
            })
        }
    }
}

/// The cluster database of `[cluster]`; `Err` is the exit code (3 when it cannot be
/// reached, 2 otherwise) after the reason was printed.
async fn connect_cluster(
    config: &Config,
    settings: &popbridge::config::ClusterSettings,
) -> Result<popbridge::cluster::Cluster, Exit> {
    popbridge::store::connect(settings, config.timeouts.connect)
        .await
        .map_err(|e| {
            eprintln!("popbridge: {e}");
            if e.is_unreachable() {
                Exit::Connect
            } else {
                Exit::Config
            }
        })
}

/// Every account's records and lease from the cluster database, and the database's name;
/// `Err` is the exit code after the reason was printed.
async fn cluster_records(
    config: &Config,
    settings: &popbridge::config::ClusterSettings,
) -> Result<
    (
        std::collections::HashMap<String, popbridge::status::Records>,
        String,
    ),
    Exit,
> {
    use popbridge::status::{LeaseStatus, Records};
    let mut cluster = connect_cluster(config, settings).await?;
    let mut out = std::collections::HashMap::new();
    for a in &config.accounts {
        let c = &mut cluster;
        let read = async {
            let lease = c.lease_state(&a.name).await?.map(|l| LeaseStatus {
                holder: l.holder,
                until: l.until.map(|t| {
                    let secs = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    popbridge::report::rfc3339(i64::try_from(secs).unwrap_or(i64::MAX))
                }),
                epoch: l.epoch,
            });
            Ok::<_, popbridge::cluster::ClusterError>(Records {
                last_pass: c.passes(&a.name, 1).await?.into_iter().next(),
                stuck: c.stuck(&a.name).await?,
                quarantined: c.quarantined(Some(&a.name)).await?,
                lease,
            })
        };
        match read.await {
            Ok(r) => {
                out.insert(a.name.clone(), r);
            }
            Err(e) => {
                eprintln!("popbridge: {e}");
                return Err(if e.is_connection_lost() {
                    Exit::Connect
                } else {
                    Exit::Config
                });
            }
        }
    }
    Ok((out, cluster.config().to_string()))
}

async fn status(config: &Config, json: bool) -> anyhow::Result<Exit> {
    use popbridge::status::{self, Daemon};
    // No ledger yet (no pass ever ran): nothing to read, and nothing is created.
    let exists = config
        .state_dir
        .join(popbridge::ledger::FILE_NAME)
        .try_exists()
        .unwrap_or(true);
    let (records, cluster) = match &config.cluster {
        Some(settings) => match cluster_records(config, settings).await {
            Ok((records, name)) => (Some(records), Some(name)),
            Err(code) => return Ok(code),
        },
        None if exists => {
            let ledger = match open_ledger(config) {
                Ok(l) => l,
                Err(code) => return Ok(code),
            };
            match status::local_records(config, &ledger) {
                Ok(r) => (Some(r), None),
                Err(e) => {
                    eprintln!("popbridge: {e}");
                    return Ok(Exit::Config);
                }
            }
        }
        None => (None, None),
    };
    #[cfg(unix)]
    let daemon = {
        use popbridge::daemon::{request_status, socket_path, TriggerResponse};
        match request_status(&socket_path(&config.state_dir)).await {
            Ok(TriggerResponse::Status(s)) => Daemon::Running(s),
            Ok(_) | Err(_) => Daemon::NotRunning,
        }
    };
    #[cfg(not(unix))]
    let daemon = Daemon::NotRunning;
    let report = status::build(config, records.as_ref(), cluster, &daemon, unix_now());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(Exit::Delivered)
}

fn quarantine(cli: &Cli, config: &Config, action: &QuarantineCommand) -> anyhow::Result<Exit> {
    use popbridge::quarantine as q;
    if config.cluster.is_some() {
        // The records are the cluster's, but each copy is a file on the machine whose
        // instance quarantined it: acting on the local ledger here would change nothing
        // the cluster's passes see.
        eprintln!(
            "popbridge: quarantine: not available yet with a [cluster] section (the quarantine \
             records are in the cluster database, the copies on the machine that made them); \
             `popbridge status` shows each account's quarantined count"
        );
        return Ok(Exit::Config);
    }
    let events = match &cli.events {
        Some(p) => EventSink::file(p)
            .with_context(|| format!("opening the events file {}", p.display()))?,
        None => EventSink::none(),
    };
    let account_of = |name: &str| {
        let found = config.account(name);
        if found.is_none() {
            eprintln!(
                "popbridge: {}: no account named {name:?}",
                config.path.display()
            );
        }
        found
    };
    if let QuarantineCommand::List {
        account: Some(a), ..
    }
    | QuarantineCommand::Show { account: a, .. }
    | QuarantineCommand::Release { account: a, .. }
    | QuarantineCommand::Delete { account: a, .. } = action
    {
        if account_of(a).is_none() {
            return Ok(Exit::Config);
        }
    }
    let mut ledger = match open_ledger(config) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let failed = |e: q::QuarantineError| {
        eprintln!("popbridge: {e}");
        match e {
            q::QuarantineError::Ledger(_) => Exit::Config,
            _ => Exit::Stuck,
        }
    };
    match action {
        QuarantineCommand::List { account, json } => {
            let entries = match q::list(&ledger, account.as_deref()) {
                Ok(e) => e,
                Err(e) => return Ok(failed(e)),
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", q::render(&entries));
            }
        }
        QuarantineCommand::Show { account, key } => {
            let path = match q::copy_path(&ledger, account, key) {
                Ok(p) => p,
                Err(e) => return Ok(failed(e)),
            };
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(source) => return Ok(failed(q::QuarantineError::Copy { path, source })),
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            std::io::copy(&mut file, &mut out).context("writing the copy to standard output")?;
        }
        QuarantineCommand::Release { account, key } => {
            if let Err(e) = q::release(&mut ledger, &events, account, key) {
                return Ok(failed(e));
            }
            println!(
                "{account}: {}: released; the next pass delivers it from its local copy",
                popbridge::report::clean(key, 200)
            );
        }
        QuarantineCommand::Delete { account, key } => {
            let Some(a) = account_of(account) else {
                return Ok(Exit::Config);
            };
            match q::delete(&mut ledger, &events, a, key) {
                Ok(server) => println!(
                    "{account}: {}: local copy deleted; {}",
                    popbridge::report::clean(key, 200),
                    if server {
                        "the server's copy, if still there, is deleted at the next pass"
                    } else {
                        "the server's copy, if any, is kept (never delivered again)"
                    }
                ),
                Err(e) => return Ok(failed(e)),
            }
        }
    }
    Ok(Exit::Delivered)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // --log-level, else POPBRIDGE_LOG, else --verbose, else warnings and the daemon's
    // per-pass lines.
    let filter = match (&cli.log_level, std::env::var("POPBRIDGE_LOG")) {
        (Some(level), _) => level.clone(),
        (None, Ok(env)) => env,
        (None, Err(_)) if cli.verbose => "info,popbridge::wire=debug".into(),
        (None, Err(_)) => "warn,popbridge::daemon=info".into(),
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("popbridge: invalid log level or filter {filter:?}: {e}");
            return ExitCode::from(Exit::Config.code());
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let config = match load_config(&cli.config, cli.allow_insecure_config_mode) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("popbridge: {e}");
            return ExitCode::from(Exit::Config.code());
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("popbridge: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Config.code());
        }
    };
    let result = match &cli.command {
        Command::Fetch { account } => rt
            .block_on(fetch(&cli, config, account.as_deref()))
            .map(Exit::code),
        Command::Run => rt.block_on(run_daemon(&cli, config)).map(Exit::code),
        Command::CheckLimits { probe } => rt.block_on(async {
            let report = popbridge::limits::check(&config, *probe, &TcpDialer).await;
            print!("{}", report.render());
            Ok(report.exit_code())
        }),
        Command::Diagnose => rt.block_on(async {
            let report = popbridge::diagnose::diagnose(&config, &TcpDialer).await;
            print!("{}", report.render());
            Ok(report.exit_code())
        }),
        Command::Trigger { account } => rt
            .block_on(trigger(&config, account.clone()))
            .map(Exit::code),
        Command::Status { json } => rt.block_on(status(&config, *json)).map(Exit::code),
        Command::Quarantine { action } => quarantine(&cli, &config, action).map(Exit::code),
        Command::MigrateLedger => rt.block_on(migrate_ledger(&config)).map(Exit::code),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("popbridge: {e:#}");
            ExitCode::from(Exit::Config.code())
        }
    }
}
