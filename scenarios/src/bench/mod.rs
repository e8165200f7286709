//! `poplab bench`: the throughput of popbridge and of external connectors moving one
//! mailbox from POP3 to SMTP, beside the two legs' own ceilings, over several rounds.
//!
//! Responsible for: the command's arguments, the message sizes (one size or a mix), the
//! servers of each round (fresh mocks on loopback, or real loopback servers whose Maildir
//! is refilled before each round), running each connector (popbridge as a child process
//! under the resource-usage wrapper, or in-process; external commands from the `poplab
//! run` templates), checking that each round moved the whole mailbox, the ceiling legs
//! (`ceiling.rs`), and handing the figures to `report.rs`.
//! Must never: reach a non-loopback address, run a round without its timeout, assert a
//! timing, or count a round that did not move the whole mailbox.

pub mod ceiling;
pub mod measure;
pub mod report;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mock_pop3::{Maildrop, Message, MockPop3, MockPop3Handle};
use mock_smtp::{CaptureMode, MockSmtp, MockSmtpHandle};
use serde_json::json;
use tokio::time::Instant;

use crate::external;
use crate::proxy::{ProxyHandle, Shape};
use report::{Kind, Report, Round, Row};

/// The most messages a round may move (popbridge's per-session cap).
pub const MAX_MESSAGES: u32 = 100_000;
/// The largest message size accepted (popbridge's default download ceiling).
pub const MAX_SIZE: u64 = 256 * 1024 * 1024;
/// The most octets one round may move.
pub const MAX_TOTAL: u64 = 8 * 1024 * 1024 * 1024;
/// The mailbox's login on the mocks.
const USER: &str = "bench";
/// Its password on the mocks.
const PASSWORD: &str = "bench-password";

/// `poplab bench`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Messages in the mailbox each round (1–100000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MESSAGES)))]
    pub messages: u32,
    /// The size of every message: a number of octets with an optional unit B, KiB, MiB
    /// (KB and MB are read as KiB and MiB), e.g. 10KiB or 60MiB. At most 256 MiB.
    #[arg(long, default_value = "10KiB", value_name = "SIZE")]
    pub size: String,
    /// A mix of sizes instead of --size: SIZE:PERCENT pairs, e.g. 2KiB:70,64KiB:25,1MiB:5.
    /// Counts are rounded to whole messages and the order is shuffled (fixed seed: every
    /// round and every connector gets the same mailbox).
    #[arg(long, value_name = "MIX", conflicts_with = "size")]
    pub size_mix: Option<String>,
    /// Rounds per connector and ceiling leg; the median of each figure is reported with its
    /// min–max range (1–50).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// On the mocks: POP3 over implicit TLS and SMTP with STARTTLS (a test CA generated for
    /// the run, given to every connector). Default: plain text.
    #[arg(long)]
    pub tls: bool,
    /// Also measure a connector from scenarios/connectors/: fetchmail, mpop, getmail (the
    /// same templates `poplab run --connector-cmd` uses). Repeatable.
    #[arg(long = "connector", value_name = "NAME")]
    pub connectors: Vec<String>,
    /// Also measure this external command (`sh -c`, once per round), with the `poplab run`
    /// placeholders ({pop3_host} {pop3_port} {smtp_host} {smtp_port} {user} {password}
    /// {rcpt} {scratch} {pass} {timeout}). Repeatable.
    #[arg(long = "connector-cmd", value_name = "TEMPLATE")]
    pub connector_cmds: Vec<String>,
    /// The popbridge binary (default: `popbridge` next to this poplab executable).
    #[arg(long, value_name = "PATH")]
    pub popbridge: Option<PathBuf>,
    /// Run popbridge inside poplab instead of as a child process (quick runs; its CPU and
    /// peak RSS cannot be told apart from the mocks' and are not reported).
    #[arg(long)]
    pub in_process: bool,
    /// Leave popbridge out (measure only the external connectors and the ceilings).
    #[arg(long)]
    pub no_popbridge: bool,
    /// A real POP3 server instead of the mock, HOST:PORT (loopback only; plain text).
    /// Needs --user, --password-file, --smtp and --refill-maildir.
    #[arg(long, value_name = "HOST:PORT", requires_all = ["user", "password_file", "smtp", "refill_maildir"])]
    pub pop3: Option<String>,
    /// The real POP3 server's login name.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// A file whose first line is the real POP3 server's password.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// A real SMTP server instead of the mock, HOST:PORT (loopback only; plain text).
    #[arg(long, value_name = "HOST:PORT", requires = "pop3")]
    pub smtp: Option<String>,
    /// The Maildir behind --pop3's mailbox: before each round, the messages are written
    /// into its new/ (owned by the folder's owner, `,S=` and `,W=` sizes in the names); a
    /// round moved the mailbox when new/ and cur/ are empty afterwards.
    #[arg(long, value_name = "DIR")]
    pub refill_maildir: Option<PathBuf>,
    /// The envelope recipient the connectors deliver to.
    #[arg(long, default_value = "sink@contoso.local", value_name = "ADDRESS")]
    pub rcpt: String,
    /// One-way delay added on the POP3 side, in milliseconds, each direction (0–10000;
    /// default 0: no proxy). Every connector and the POP3 reader then reach the POP3
    /// server through a loopback latency proxy.
    #[arg(long, default_value_t = 0, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub pop3_latency: u64,
    /// One-way delay added on the SMTP side, in milliseconds, each direction (0–10000;
    /// default 0: no proxy), for every connector and the SMTP writer.
    #[arg(long, default_value_t = 0, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub smtp_latency: u64,
    /// With --pop3-latency or --smtp-latency: also measure popbridge without the proxies,
    /// as the first row, "popbridge (loopback)", so that the other rows' "×first
    /// connector" is their rate against popbridge's own loopback rate.
    #[arg(long)]
    pub compare_loopback: bool,
    /// Commands (RETR, DELE) or transactions the ceiling legs keep in flight (1–10000).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
    /// Skip the ceiling legs.
    #[arg(long)]
    pub no_ceilings: bool,
    /// Seconds one round of one connector (or leg) may take before it is killed and
    /// counted as failed (1–3600).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub round_timeout: u64,
    /// The SMTP server's protocol-error limit (2–1000), given to popbridge as
    /// `smtp_max_protocol_errors`: popbridge writes several messages ahead of their replies
    /// only while that limit leaves room for all of them to be refused. On the mocks it is
    /// also the mock's MaxProtocolErrors. Default: 5 on the mocks (Exchange's default);
    /// against a real server give its own (Postfix smtpd: smtpd_hard_error_limit, 20 by
    /// default; smtp-sink has none), or popbridge assumes Exchange's 5.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub smtp_error_limit: Option<u32>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Why `poplab bench` could not run (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad or inconsistent argument.
    #[error("{0}")]
    Usage(String),
    /// Something the run needs is missing or failed to start.
    #[error("{0}")]
    Setup(String),
}

/// The bytes of one message size argument: `2048`, `10KiB`, `1MiB`, `10KB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err(format!("not a size: {s:?} (try 2048, 10KiB or 1MiB)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 2048, 10KiB or 1MiB)"))?;
    let v = (n * mul as f64).round();
    if !(1.0..=MAX_SIZE as f64).contains(&v) {
        return Err(format!("size {s:?} must be between 1 octet and 256 MiB"));
    }
    Ok(v as u64)
}

/// The size of each of `count` messages: one size, or a mix (`SIZE:PERCENT,...`) whose
/// counts are rounded by largest remainder and whose order is shuffled with a fixed seed.
pub fn message_sizes(count: u32, size: &str, mix: Option<&str>) -> Result<Vec<u64>, String> {
    let Some(mix) = mix else {
        return Ok(vec![parse_size(size)?; count as usize]);
    };
    let mut parts = Vec::new();
    for p in mix.split(',').filter(|p| !p.trim().is_empty()) {
        let (s, pct) = p
            .split_once(':')
            .ok_or_else(|| format!("--size-mix: {p:?} is not SIZE:PERCENT"))?;
        let pct: f64 = pct
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("--size-mix: {pct:?} is not a percentage"))?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(format!("--size-mix: {pct} is not between 0 and 100"));
        }
        parts.push((parse_size(s)?, pct));
    }
    let total: f64 = parts.iter().map(|p| p.1).sum();
    if parts.is_empty() || (total - 100.0).abs() > 0.01 {
        return Err(format!(
            "--size-mix: the percentages add up to {total}, not 100"
        ));
    }
    let exact: Vec<f64> = parts
        .iter()
        .map(|p| p.1 / 100.0 * f64::from(count))
        .collect();
    let mut counts: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let missing = count - counts.iter().sum::<u32>();
    for &i in order.iter().cycle().take(missing as usize) {
        counts[i] += 1;
    }
    let mut sizes: Vec<u64> = parts
        .iter()
        .zip(&counts)
        .flat_map(|(p, &n)| std::iter::repeat_n(p.0, n as usize))
        .collect();
    use rand::seq::SliceRandom as _;
    use rand::SeedableRng as _;
    sizes.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    Ok(sizes)
}

/// One connector to measure.
#[derive(Debug, Clone)]
enum Subject {
    /// popbridge, as a child process (`popbridge --config F fetch`).
    PopbridgeChild(PathBuf),
    /// popbridge inside this process.
    PopbridgeInProcess,
    /// An external command from a template.
    External { name: String, template: String },
}

impl Subject {
    fn name(&self) -> String {
        match self {
            Self::PopbridgeChild(_) => "popbridge".into(),
            Self::PopbridgeInProcess => "popbridge (in-process)".into(),
            Self::External { name, .. } => name.clone(),
        }
    }
}

/// The servers a round runs against.
enum Servers {
    /// Fresh mocks per round.
    Mocks {
        tls: Option<Arc<mock_pop3::pki::TestPki>>,
    },
    /// Real loopback servers.
    Real(RealServers),
}

/// Real POP3 and SMTP servers on loopback, and the Maildir behind the mailbox.
struct RealServers {
    pop3: SocketAddr,
    smtp: SocketAddr,
    user: String,
    password: String,
    maildir: PathBuf,
}

/// The addresses one round's connector connects to.
struct Endpoints {
    pop3: SocketAddr,
    smtp: SocketAddr,
    user: String,
    password: String,
}

/// A resolved `HOST:PORT` that must be a loopback address.
fn loopback(flag: &str, s: &str) -> Result<SocketAddr, BenchError> {
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| BenchError::Usage(format!("{flag} {s}: {e}")))?
        .collect();
    match addrs.first() {
        Some(a) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*a),
        _ => Err(BenchError::Usage(format!(
            "{flag} {s}: only loopback servers may be benchmarked (127.0.0.0/8 or ::1)"
        ))),
    }
}

/// The connector templates' folder (scenarios/connectors).
fn connectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors")
}

/// The template of a named connector script, as `poplab run` documents it.
fn named_template(name: &str) -> Result<String, BenchError> {
    let script = connectors_dir().join(format!("{name}.sh"));
    if !script.is_file() || name.contains('/') {
        return Err(BenchError::Usage(format!(
            "--connector {name}: no {} (known: fetchmail, mpop, getmail)",
            script.display()
        )));
    }
    Ok(format!(
        "{} {{pop3_host}} {{pop3_port}} {{user}} {{password}} {{smtp_host}} {{smtp_port}} {{rcpt}} {{scratch}} {{timeout}}",
        external::shell_quote(&script.display().to_string())
    ))
}

/// The popbridge binary: `--popbridge`, or next to this executable.
fn popbridge_binary(given: Option<&Path>) -> Result<PathBuf, BenchError> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::Setup(format!("cannot locate poplab itself: {e}")))?
            .with_file_name("popbridge"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::Setup(format!(
            "no popbridge binary at {}: build it with `cargo build --release -p popbridge` \
             (and poplab with --release beside it), or name it with --popbridge PATH",
            path.display()
        )))
    }
}

/// Everything a run needs, resolved from the arguments.
struct Plan {
    /// Each connector, and whether it goes through the latency proxies (a loopback
    /// comparison does not).
    subjects: Vec<(Subject, bool)>,
    messages: Arc<Vec<Bytes>>,
    servers: Servers,
    rounds: u32,
    window: usize,
    ceilings: bool,
    timeout: Duration,
    rcpt: String,
    poplab: PathBuf,
    /// How the POP3 side is shaped (the latency proxy).
    pop3_shape: Shape,
    /// How the SMTP side is shaped.
    smtp_shape: Shape,
    /// The SMTP server's protocol-error limit (see [`BenchArgs::smtp_error_limit`]).
    error_limit: Option<u32>,
}

impl Plan {
    /// The largest message's size.
    fn largest(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| m.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

fn plan(a: &BenchArgs) -> Result<Plan, BenchError> {
    let sizes =
        message_sizes(a.messages, &a.size, a.size_mix.as_deref()).map_err(BenchError::Usage)?;
    let total: u64 = sizes.iter().sum();
    if total > MAX_TOTAL {
        return Err(BenchError::Usage(format!(
            "{} messages of these sizes make {total} octets a round; at most 8 GiB",
            sizes.len()
        )));
    }
    let messages: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| mock_pop3::demo_message(USER, i, s as usize))
        .collect();
    let servers = match &a.pop3 {
        None => {
            let tls = if a.tls {
                Some(Arc::new(
                    mock_pop3::pki::TestPki::localhost()
                        .map_err(|e| BenchError::Setup(format!("test PKI: {e}")))?,
                ))
            } else {
                None
            };
            Servers::Mocks { tls }
        }
        Some(pop3) => {
            if a.tls {
                return Err(BenchError::Usage(
                    "--tls applies to the mocks only; real servers are reached in plain text"
                        .into(),
                ));
            }
            let file = a.password_file.as_deref().unwrap_or(Path::new(""));
            let password = std::fs::read_to_string(file)
                .map_err(|e| BenchError::Usage(format!("--password-file {}: {e}", file.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let maildir = a.refill_maildir.clone().unwrap_or_default();
            if !maildir.join("new").is_dir() && !maildir.is_dir() {
                return Err(BenchError::Usage(format!(
                    "--refill-maildir {}: not a folder",
                    maildir.display()
                )));
            }
            Servers::Real(RealServers {
                pop3: loopback("--pop3", pop3)?,
                smtp: loopback("--smtp", a.smtp.as_deref().unwrap_or_default())?,
                user: a.user.clone().unwrap_or_default(),
                password,
                maildir,
            })
        }
    };
    let mut subjects = Vec::new();
    if !a.no_popbridge {
        subjects.push(if a.in_process {
            Subject::PopbridgeInProcess
        } else {
            Subject::PopbridgeChild(popbridge_binary(a.popbridge.as_deref())?)
        });
    }
    for name in &a.connectors {
        subjects.push(Subject::External {
            name: name.clone(),
            template: named_template(name)?,
        });
    }
    for t in &a.connector_cmds {
        external::check_template(t)
            .map_err(|e| BenchError::Usage(format!("--connector-cmd: {e}")))?;
        subjects.push(Subject::External {
            name: t.clone(),
            template: t.clone(),
        });
    }
    if a.tls
        && subjects
            .iter()
            .any(|s| matches!(s, Subject::External { .. }))
    {
        return Err(BenchError::Usage(
            "--tls: the connector templates speak plain text; measure external connectors without --tls".into(),
        ));
    }
    let shaped = a.pop3_latency > 0 || a.smtp_latency > 0;
    let mut subjects: Vec<(Subject, bool)> = subjects.into_iter().map(|s| (s, true)).collect();
    if a.compare_loopback {
        match subjects.first() {
            Some((s @ (Subject::PopbridgeChild(_) | Subject::PopbridgeInProcess), _)) if shaped => {
                subjects.insert(0, (s.clone(), false));
            }
            _ => {
                return Err(BenchError::Usage(
                    "--compare-loopback needs popbridge and --pop3-latency or --smtp-latency"
                        .into(),
                ))
            }
        }
    }
    if subjects.is_empty() && a.no_ceilings {
        return Err(BenchError::Usage(
            "nothing to measure: --no-popbridge and --no-ceilings without a --connector".into(),
        ));
    }
    Ok(Plan {
        subjects,
        messages: Arc::new(messages),
        servers,
        rounds: a.rounds,
        window: a.window as usize,
        ceilings: !a.no_ceilings,
        timeout: Duration::from_secs(a.round_timeout),
        error_limit: a.smtp_error_limit,
        rcpt: a.rcpt.clone(),
        pop3_shape: Shape {
            latency: Duration::from_millis(a.pop3_latency),
            ..Shape::default()
        },
        smtp_shape: Shape {
            latency: Duration::from_millis(a.smtp_latency),
            ..Shape::default()
        },
        poplab: std::env::current_exe()
            .map_err(|e| BenchError::Setup(format!("cannot locate poplab itself: {e}")))?,
    })
}

/// Runs the benchmark; the report says whether every round moved the whole mailbox.
pub async fn run(a: &BenchArgs) -> Result<Report, BenchError> {
    let plan = plan(a)?;
    let scratch = tempfile::Builder::new()
        .prefix("poplab-bench-")
        .tempdir()
        .map_err(|e| BenchError::Setup(format!("a scratch folder: {e}")))?;
    let mut rows: Vec<Row> = plan
        .subjects
        .iter()
        .map(|(s, shaped)| Row {
            name: if *shaped {
                s.name()
            } else {
                format!("{} (loopback)", s.name())
            },
            kind: if *shaped {
                Kind::Connector
            } else {
                Kind::LoopbackConnector
            },
            rounds: Vec::new(),
        })
        .collect();
    if plan.ceilings {
        rows.push(Row {
            name: "POP3 reader".into(),
            kind: Kind::Pop3Ceiling,
            rounds: Vec::new(),
        });
        rows.push(Row {
            name: "SMTP writer".into(),
            kind: Kind::SmtpCeiling,
            rounds: Vec::new(),
        });
    }
    for round in 1..=plan.rounds {
        for (i, (subject, shaped)) in plan.subjects.iter().enumerate() {
            let dir = scratch.path().join(format!("r{round}-c{i}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| BenchError::Setup(format!("{}: {e}", dir.display())))?;
            let r = connector_round(&plan, subject, *shaped, &dir).await?;
            rows[i].rounds.push(r);
        }
        if plan.ceilings {
            let n = plan.subjects.len();
            rows[n].rounds.push(pop3_ceiling_round(&plan).await?);
            rows[n + 1].rounds.push(smtp_ceiling_round(&plan).await?);
        }
    }
    if plan.ceilings {
        let n = plan.subjects.len();
        let rounds = (rows[n].rounds.iter().zip(&rows[n + 1].rounds))
            .filter_map(|(p, s)| report::serial_bound(p, s))
            .collect();
        rows.push(Row {
            name: "serial bound".into(),
            kind: Kind::SerialBound,
            rounds,
        });
    }
    let sizes: Vec<usize> = plan.messages.iter().map(Bytes::len).collect();
    let mut notes = Vec::new();
    if let Some(cores) = measure::MachineCpu::now().map(measure::MachineCpu::cores) {
        notes.push(format!(
            "busy cores: how many of this machine's {cores} cores were busy on average during each run, every process counted (servers, connector, poplab); near {cores}, the machine was the limit"
        ));
    }
    if plan
        .subjects
        .iter()
        .any(|(s, _)| matches!(s, Subject::PopbridgeInProcess))
    {
        notes.push(
            "popbridge ran in-process: its CPU seconds and peak RSS are not separable from the mocks' and are not reported".into(),
        );
    }
    for (side, shape) in [("POP3", plan.pop3_shape), ("SMTP", plan.smtp_shape)] {
        if !shape.is_transparent() {
            notes.push(format!(
                "the {side} side is reached through a loopback latency proxy: {} ms one way, each direction",
                shape.latency.as_millis()
            ));
        }
    }
    if plan.ceilings {
        notes.push(format!(
            "ceilings: a pipelined POP3 reader and SMTP writer ({} in flight) run inside poplab; no CPU or RSS figures",
            plan.window
        ));
    }
    let (latency_basis, servers) = match &plan.servers {
        Servers::Mocks { tls } => (
            "per message, from the mock POP3 server finishing writing its RETR reply to the mock SMTP server accepting it (the k-th retrieved paired with the k-th accepted)".to_string(),
            json!({"kind": "mocks", "tls": tls.is_some()}),
        ),
        Servers::Real(r) => (
            "not measured against real servers".to_string(),
            json!({"kind": "real", "pop3": r.pop3.to_string(), "smtp": r.smtp.to_string(), "maildir": r.maildir.display().to_string()}),
        ),
    };
    Ok(Report {
        parameters: json!({
            "messages": plan.messages.len(),
            "size": a.size_mix.is_none().then(|| a.size.clone()),
            "size_mix": a.size_mix,
            "octets_per_round": sizes.iter().sum::<usize>(),
            "largest_octets": sizes.iter().max(),
            "rounds": plan.rounds,
            "window": plan.window,
            "round_timeout_s": plan.timeout.as_secs(),
            "servers": servers,
            "rcpt": plan.rcpt,
            "pop3_latency_ms": plan.pop3_shape.latency.as_millis() as u64,
            "smtp_latency_ms": plan.smtp_shape.latency.as_millis() as u64,
        }),
        rows,
        latency_basis,
        notes,
    })
}

/// Timestamps each increase of a counter (several at once share the time they were seen);
/// the receiver tells how many increases were stamped so far.
fn stamp(mut rx: tokio::sync::watch::Receiver<u64>) -> Stamps {
    let times = Arc::new(Mutex::new(Vec::new()));
    let (seen_tx, seen_rx) = tokio::sync::watch::channel(0u64);
    let out = times.clone();
    tokio::spawn(async move {
        let mut seen = *rx.borrow_and_update();
        while rx.changed().await.is_ok() {
            let now = Instant::now();
            let n = *rx.borrow_and_update();
            {
                let mut t = out.lock().unwrap_or_else(|e| e.into_inner());
                for _ in seen..n {
                    t.push(now);
                }
            }
            seen = seen.max(n);
            seen_tx.send_replace(seen);
        }
    });
    Stamps {
        times,
        seen: seen_rx,
    }
}

/// The times a counter increased, and how many were stamped.
struct Stamps {
    times: Arc<Mutex<Vec<Instant>>>,
    seen: tokio::sync::watch::Receiver<u64>,
}

impl Stamps {
    /// The times, once `n` were stamped (waiting at most [`SETTLE`]).
    async fn upto(&mut self, n: u64) -> Vec<Instant> {
        let _ = tokio::time::timeout(SETTLE, self.seen.wait_for(|s| *s >= n)).await;
        self.times.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// How long the mocks may take to see a finished run's last events.
const SETTLE: Duration = Duration::from_secs(5);

/// A round's mocks with their clocks.
struct Mocks {
    pop3: MockPop3Handle,
    smtp: MockSmtpHandle,
    sent: Stamps,
    accepted: Stamps,
    ca_file: Option<PathBuf>,
}

/// A mock's listening address (`what` names the mock in the error).
fn mock_addr(addr: Option<SocketAddr>, what: &str) -> Result<SocketAddr, BenchError> {
    addr.ok_or_else(|| BenchError::Setup(format!("{what} mock address")))
}

async fn listener() -> Result<tokio::net::TcpListener, BenchError> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Setup(format!("bind 127.0.0.1:0: {e}")))
}

async fn mock_pop3(
    messages: &[Bytes],
    tls: Option<&mock_pop3::pki::TestPki>,
) -> Result<MockPop3Handle, BenchError> {
    let mut mailbox = Maildrop::new(USER, PASSWORD);
    for m in messages {
        mailbox = mailbox.with_message(Message::new(m.clone()));
    }
    let mut b = MockPop3::builder()
        .maildrop(mailbox)
        .record_transcript(false)
        .idle_timeout(Duration::from_secs(600));
    if let Some(pki) = tls {
        let cfg = pki
            .server_config()
            .map_err(|e| BenchError::Setup(format!("test PKI: {e}")))?;
        b = b.tls(mock_pop3::ServerTls::Implicit(cfg));
    }
    Ok(b.spawn(listener().await?))
}

async fn mock_smtp(
    tls: Option<&mock_pop3::pki::TestPki>,
    largest: u64,
    error_limit: Option<u32>,
) -> Result<MockSmtpHandle, BenchError> {
    let defaults = mock_smtp::Limits::default();
    let limits = mock_smtp::Limits {
        max_message_size: Some(largest.max(1024 * 1024) * 2),
        max_header_size: None,
        max_protocol_errors: error_limit.or(defaults.max_protocol_errors),
        ..defaults
    };
    let mut b = MockSmtp::builder()
        .capture(CaptureMode::CountOnly)
        .record_transcript(false)
        .limits(limits);
    if let Some(pki) = tls {
        let cfg = pki
            .server_config()
            .map_err(|e| BenchError::Setup(format!("test PKI: {e}")))?;
        b = b.tls(cfg);
    }
    Ok(b.spawn(listener().await?))
}

async fn start_mocks(plan: &Plan, dir: &Path) -> Result<Mocks, BenchError> {
    let Servers::Mocks { tls } = &plan.servers else {
        return Err(BenchError::Setup(
            "mocks wanted against real servers".into(),
        ));
    };
    let largest = plan.largest();
    let pop3 = mock_pop3(&plan.messages, tls.as_deref()).await?;
    let smtp = mock_smtp(tls.as_deref(), largest, plan.error_limit).await?;
    let ca_file = match tls {
        Some(pki) => {
            let p = dir.join("ca.pem");
            std::fs::write(&p, &pki.ca_pem)
                .map_err(|e| BenchError::Setup(format!("{}: {e}", p.display())))?;
            Some(p)
        }
        None => None,
    };
    Ok(Mocks {
        sent: stamp(pop3.retrievals_watch()),
        accepted: stamp(smtp.accepted_watch()),
        pop3,
        smtp,
        ca_file,
    })
}

/// `upstream`, or a latency proxy in front of it when `shape` shapes anything.
async fn via(upstream: SocketAddr, shape: Shape) -> Result<Via, BenchError> {
    if shape.is_transparent() {
        return Ok(Via {
            addr: upstream,
            proxy: None,
        });
    }
    let proxy = crate::proxy::spawn_tcp(listener().await?, upstream, shape)
        .map_err(|e| BenchError::Setup(format!("latency proxy: {e}")))?;
    Ok(Via {
        addr: proxy.addr(),
        proxy: Some(proxy),
    })
}

/// An address to connect to, and the proxy behind it (if any).
struct Via {
    addr: SocketAddr,
    proxy: Option<ProxyHandle>,
}

impl Via {
    /// Stops the proxy.
    async fn close(self) {
        if let Some(p) = self.proxy {
            p.shutdown().await;
        }
    }
}

/// popbridge's configuration for one round.
fn popbridge_config(
    dir: &Path,
    ep: &Endpoints,
    rcpt: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
    error_limit: Option<u32>,
) -> String {
    let q = |s: &str| toml_edit::Value::from(s).to_string();
    let (tls, starttls, ca) = match ca_file {
        Some(ca) => (
            "implicit",
            "true",
            format!("ca_file = {}\n", q(&ca.display().to_string())),
        ),
        None => ("none", "false", String::new()),
    };
    let secs = timeout.as_secs().max(1);
    format!(
        "state_dir = {state}\n\n[transport]\nhost = {smtp_host}\nport = {smtp}\nhelo = \"popbridge.bench.invalid\"\nstarttls = {starttls}\n{ca}\n\
         [limits]\nmax_messages_per_session = {max}\n{errors}\n\
         [timeouts]\nconnect = \"10s\"\ncommand = \"{secs}s\"\ndata = \"{secs}s\"\n\n\
         [[account]]\nname = \"bench\"\nhost = {pop3_host}\nport = {pop3}\ntls = \"{tls}\"\nallow_plaintext = true\n{ca}\
         username = {user}\npassword = {password}\ndeliver_to = {rcpt}\n",
        state = q(&dir.join("state").display().to_string()),
        smtp = ep.smtp.port(),
        pop3 = ep.pop3.port(),
        smtp_host = q(&ep.smtp.ip().to_string()),
        pop3_host = q(&ep.pop3.ip().to_string()),
        max = MAX_MESSAGES,
        errors = error_limit
            .map(|n| format!("smtp_max_protocol_errors = {n}\n"))
            .unwrap_or_default(),
        user = q(&ep.user),
        password = q(&ep.password),
        rcpt = q(rcpt),
    )
}

/// What a connector's run left to judge by.
struct Ran {
    wall: Duration,
    usage: Option<measure::Usage>,
    /// Cores busy on the whole machine during the run.
    busy: Option<f64>,
    failure: Option<String>,
}

/// A connector's round from its run: `messages` moved, failed with the run's own failure
/// or else `shortfall`; the whole mailbox's bytes only when it did not fail. No latencies.
fn subject_round(plan: &Plan, ran: Ran, messages: u64, shortfall: Option<String>) -> Round {
    let failure = ran.failure.or(shortfall);
    Round {
        wall_s: ran.wall.as_secs_f64(),
        messages,
        bytes: if failure.is_none() {
            total_bytes(plan)
        } else {
            0
        },
        cpu_s: ran.usage.map(|u| u.cpu_s),
        peak_rss_mb: ran.usage.map(|u| u.max_rss_kib as f64 * 1024.0 / 1e6),
        busy_cores: ran.busy,
        failure,
        ..Round::default()
    }
}

/// Runs one connector once against `ep`.
async fn run_subject(
    plan: &Plan,
    subject: &Subject,
    ep: &Endpoints,
    ca_file: Option<&Path>,
    dir: &Path,
) -> Result<Ran, BenchError> {
    let config_text =
        popbridge_config(dir, ep, &plan.rcpt, ca_file, plan.timeout, plan.error_limit);
    let inner = match subject {
        Subject::PopbridgeInProcess => return Ok(in_process(plan, &config_text, dir).await),
        Subject::PopbridgeChild(bin) => {
            let conf = dir.join("popbridge.toml");
            write_private(&conf, &config_text)?;
            format!(
                "exec {} --config {} fetch",
                external::shell_quote(&bin.display().to_string()),
                external::shell_quote(&conf.display().to_string())
            )
        }
        Subject::External { template, .. } => {
            let values = external::Values {
                pop3_host: ep.pop3.ip().to_string(),
                pop3_port: ep.pop3.port(),
                smtp_host: ep.smtp.ip().to_string(),
                smtp_port: ep.smtp.port(),
                user: ep.user.clone(),
                password: ep.password.clone(),
                rcpt: plan.rcpt.clone(),
                scratch: dir.join("scratch"),
                pass: 1,
                timeout: plan.timeout.as_secs(),
            };
            external::substitute(template, &values)
        }
    };
    let usage_file = dir.join("usage.json");
    let command = measure::wrapped(&plan.poplab, &usage_file, &inner);
    let started = Instant::now();
    let (run, busy) =
        measure::busy_while(external::run_command(&command, plan.timeout, 1, &ep.user)).await;
    let wall = started.elapsed();
    let usage = measure::read_usage(&usage_file).ok();
    let failure = if run.timed_out {
        Some(format!(
            "killed after {} s (--round-timeout)",
            plan.timeout.as_secs()
        ))
    } else if run.exit != Some(0) {
        let tail: String = run
            .stderr
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" / ");
        Some(format!("{} ({tail})", run.status_text(plan.timeout)))
    } else {
        None
    };
    Ok(Ran {
        wall: usage.map_or(wall, |u| Duration::from_secs_f64(u.wall_s)),
        usage,
        busy,
        failure,
    })
}

/// popbridge in this process: one pass over the account.
async fn in_process(plan: &Plan, config_text: &str, dir: &Path) -> Ran {
    let fail = |failure: String| Ran {
        wall: Duration::ZERO,
        usage: None,
        busy: None,
        failure: Some(failure),
    };
    let config = match popbridge::config::Config::from_str(config_text, &dir.join("popbridge.toml"))
    {
        Ok(c) => c,
        Err(e) => return fail(format!("configuration: {e}")),
    };
    let ledger = match popbridge::ledger::Ledger::open(&config.state_dir) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(e) => return fail(format!("ledger: {e}")),
    };
    let accounts = config.accounts.clone();
    let started = Instant::now();
    let pass = popbridge::pass::Runner::new(
        Arc::new(config),
        Arc::new(popbridge::net::TcpDialer),
        Arc::new(popbridge::events::EventSink::none()),
        ledger,
    );
    let pass = pass.run(accounts);
    match measure::busy_while(tokio::time::timeout(plan.timeout, pass)).await {
        (Ok(_), busy) => Ran {
            wall: started.elapsed(),
            usage: None,
            busy,
            failure: None,
        },
        (Err(_), _) => fail(format!(
            "did not finish within {} s (--round-timeout)",
            plan.timeout.as_secs()
        )),
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), BenchError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))
}

fn total_bytes(plan: &Plan) -> u64 {
    plan.messages.iter().map(|m| m.len() as u64).sum()
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

/// One round of one connector: fresh servers (or a refilled Maildir), the run, the check.
async fn connector_round(
    plan: &Plan,
    subject: &Subject,
    shaped: bool,
    dir: &Path,
) -> Result<Round, BenchError> {
    let n = plan.messages.len() as u64;
    let (pop3_shape, smtp_shape) = if shaped {
        (plan.pop3_shape, plan.smtp_shape)
    } else {
        (Shape::default(), Shape::default())
    };
    match &plan.servers {
        Servers::Mocks { .. } => {
            let mocks = start_mocks(plan, dir).await?;
            let pop3 = via(mock_addr(mocks.pop3.addr(), "POP3")?, pop3_shape).await?;
            let smtp = via(mock_addr(mocks.smtp.addr(), "SMTP")?, smtp_shape).await?;
            let ep = Endpoints {
                pop3: pop3.addr,
                smtp: smtp.addr,
                user: USER.into(),
                password: PASSWORD.into(),
            };
            let ran = run_subject(plan, subject, &ep, mocks.ca_file.as_deref(), dir).await;
            pop3.close().await;
            smtp.close().await;
            let ran = ran?;
            let _ = tokio::time::timeout(SETTLE, mocks.pop3.wait_idle()).await;
            let _ = tokio::time::timeout(SETTLE, mocks.smtp.wait_idle()).await;
            let left = mocks
                .pop3
                .maildrop(USER)
                .map_or(n as usize, |m| m.remaining.len()) as u64;
            let accepted = mocks.smtp.counts().accepted;
            let retrieved = *mocks.pop3.retrievals_watch().borrow();
            let mut mocks = mocks;
            let sent = mocks.sent.upto(retrieved).await;
            let acc = mocks.accepted.upto(accepted).await;
            let lat = measure::latencies(&sent, &acc);
            mocks.pop3.shutdown().await;
            mocks.smtp.shutdown().await;
            let shortfall = (left != 0 || accepted != n).then(|| {
                format!(
                    "moved {} of {n}: {left} left on the POP3 server, {accepted} accepted by SMTP",
                    n - left
                )
            });
            Ok(Round {
                p50_ms: ms(measure::percentile(&lat, 50.0)),
                p99_ms: ms(measure::percentile(&lat, 99.0)),
                ..subject_round(plan, ran, accepted.min(n), shortfall)
            })
        }
        Servers::Real(real) => {
            refill(&real.maildir, &plan.messages)?;
            let pop3 = via(real.pop3, pop3_shape).await?;
            let smtp = via(real.smtp, smtp_shape).await?;
            let ep = Endpoints {
                pop3: pop3.addr,
                smtp: smtp.addr,
                user: real.user.clone(),
                password: real.password.clone(),
            };
            let ran = run_subject(plan, subject, &ep, None, dir).await;
            pop3.close().await;
            smtp.close().await;
            let ran = ran?;
            let left = maildir_count(&real.maildir);
            let shortfall = (left != 0).then(|| {
                format!(
                    "moved {} of {n}: {left} left in the Maildir",
                    n.saturating_sub(left)
                )
            });
            Ok(subject_round(plan, ran, n.saturating_sub(left), shortfall))
        }
    }
}

fn tls_client(pki: &mock_pop3::pki::TestPki) -> Result<ceiling::TlsClient, BenchError> {
    Ok(ceiling::TlsClient {
        config: pki
            .client_config()
            .map_err(|e| BenchError::Setup(format!("test PKI: {e}")))?,
        name: "127.0.0.1".into(),
    })
}

fn leg_round(r: Result<ceiling::LegRun, ceiling::CeilingError>, n: u64) -> Round {
    match r {
        Ok(run) if run.messages == n => Round {
            wall_s: run.elapsed.as_secs_f64(),
            messages: run.messages,
            bytes: run.bytes,
            phases: Some(report::Phases {
                setup_s: run.setup.as_secs_f64(),
                stream_s: run.stream.as_secs_f64(),
                quit_s: run.quit.as_secs_f64(),
            }),
            ..Round::default()
        },
        Ok(run) => Round {
            wall_s: run.elapsed.as_secs_f64(),
            messages: run.messages,
            failure: Some(format!("moved {} of {n}", run.messages)),
            ..Round::default()
        },
        Err(e) => Round {
            failure: Some(e.to_string()),
            ..Round::default()
        },
    }
}

/// The POP3 reader's leg to `upstream` (through the latency proxy when shaped).
async fn pop3_leg_run(
    plan: &Plan,
    upstream: SocketAddr,
    tls: Option<ceiling::TlsClient>,
    user: &str,
    password: &str,
) -> Result<Round, BenchError> {
    let deadline = Instant::now() + plan.timeout;
    let v = via(upstream, plan.pop3_shape).await?;
    let leg = ceiling::Pop3Leg {
        addr: v.addr,
        tls,
        user: user.into(),
        password: password.into(),
    };
    let (run, busy) = measure::busy_while(ceiling::pop3_read(&leg, plan.window, deadline)).await;
    v.close().await;
    Ok(Round {
        busy_cores: busy,
        ..leg_round(run, plan.messages.len() as u64)
    })
}

async fn pop3_ceiling_round(plan: &Plan) -> Result<Round, BenchError> {
    match &plan.servers {
        Servers::Mocks { tls } => {
            let pop3 = mock_pop3(&plan.messages, tls.as_deref()).await?;
            let upstream = mock_addr(pop3.addr(), "POP3")?;
            let tls = tls.as_deref().map(tls_client).transpose()?;
            let mut round = pop3_leg_run(plan, upstream, tls, USER, PASSWORD).await?;
            let _ = tokio::time::timeout(SETTLE, pop3.wait_idle()).await;
            let left = pop3.maildrop(USER).map_or(0, |m| m.remaining.len());
            if round.failure.is_none() && left != 0 {
                round.failure = Some(format!("{left} left on the POP3 server after QUIT"));
            }
            pop3.shutdown().await;
            Ok(round)
        }
        Servers::Real(real) => {
            refill(&real.maildir, &plan.messages)?;
            let mut round = pop3_leg_run(plan, real.pop3, None, &real.user, &real.password).await?;
            let left = maildir_count(&real.maildir);
            if round.failure.is_none() && left != 0 {
                round.failure = Some(format!("{left} left in the Maildir after QUIT"));
            }
            Ok(round)
        }
    }
}

/// The SMTP writer's leg to `upstream` (through the latency proxy when shaped).
async fn smtp_leg_run(
    plan: &Plan,
    upstream: SocketAddr,
    tls: Option<ceiling::TlsClient>,
) -> Result<Round, BenchError> {
    let deadline = Instant::now() + plan.timeout;
    let v = via(upstream, plan.smtp_shape).await?;
    let leg = ceiling::SmtpLeg {
        addr: v.addr,
        tls,
        rcpt: plan.rcpt.clone(),
    };
    let (run, busy) = measure::busy_while(ceiling::smtp_write(
        &leg,
        &plan.messages,
        plan.window,
        deadline,
    ))
    .await;
    v.close().await;
    Ok(Round {
        busy_cores: busy,
        ..leg_round(run, plan.messages.len() as u64)
    })
}

async fn smtp_ceiling_round(plan: &Plan) -> Result<Round, BenchError> {
    let n = plan.messages.len() as u64;
    match &plan.servers {
        Servers::Mocks { tls } => {
            let smtp = mock_smtp(tls.as_deref(), plan.largest(), plan.error_limit).await?;
            let upstream = mock_addr(smtp.addr(), "SMTP")?;
            let tls = tls.as_deref().map(tls_client).transpose()?;
            let mut round = smtp_leg_run(plan, upstream, tls).await?;
            let _ = tokio::time::timeout(SETTLE, smtp.wait_idle()).await;
            let accepted = smtp.counts().accepted;
            if round.failure.is_none() && accepted != n {
                round.failure = Some(format!("the SMTP mock accepted {accepted} of {n}"));
            }
            smtp.shutdown().await;
            Ok(round)
        }
        Servers::Real(real) => smtp_leg_run(plan, real.smtp, None).await,
    }
}

/// Messages in a Maildir's new/ and cur/.
fn maildir_count(maildir: &Path) -> u64 {
    ["new", "cur"]
        .iter()
        .filter_map(|s| std::fs::read_dir(maildir.join(s)).ok())
        .map(|rd| rd.filter_map(Result::ok).count() as u64)
        .sum()
}

/// Writes the messages into `maildir/new` (LF line ends, as Maildir stores them; `,S=`
/// the file's size and `,W=` the size with CRLF, so the server need not count), owned by
/// the folder's owner.
fn refill(maildir: &Path, messages: &[Bytes]) -> Result<(), BenchError> {
    use std::os::unix::fs::MetadataExt as _;
    let err = |p: &Path, e: std::io::Error| {
        BenchError::Setup(format!("--refill-maildir {}: {e}", p.display()))
    };
    let owner = std::fs::metadata(maildir).map_err(|e| err(maildir, e))?;
    for sub in ["new", "cur", "tmp"] {
        let d = maildir.join(sub);
        if !d.is_dir() {
            std::fs::create_dir(&d).map_err(|e| err(&d, e))?;
            let _ = std::os::unix::fs::chown(&d, Some(owner.uid()), Some(owner.gid()));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let pid = std::process::id();
    for (i, m) in messages.iter().enumerate() {
        let lf: Vec<u8> = {
            let mut v = Vec::with_capacity(m.len());
            let mut prev = 0u8;
            for &b in m.iter() {
                if b == b'\n' && prev == b'\r' {
                    v.pop();
                }
                v.push(b);
                prev = b;
            }
            v
        };
        let name = format!(
            "{}.M{}P{pid}Q{i}.poplab-bench,S={},W={}",
            now.as_secs(),
            now.subsec_micros(),
            lf.len(),
            m.len()
        );
        let tmp = maildir.join("tmp").join(&name);
        std::fs::write(&tmp, &lf).map_err(|e| err(&tmp, e))?;
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| err(&tmp, e))?;
        let new = maildir.join("new").join(&name);
        std::fs::rename(&tmp, &new).map_err(|e| err(&new, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_mixes() {
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("10KiB"), Ok(10240));
        assert_eq!(parse_size("10kb"), Ok(10240));
        assert_eq!(parse_size("60MiB"), Ok(60 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("257MiB").is_err());
        assert!(parse_size("ten").is_err());
        let mix = message_sizes(100, "", Some("2KiB:70,64KiB:25,1MiB:5")).unwrap();
        assert_eq!(mix.len(), 100);
        assert_eq!(mix.iter().filter(|&&s| s == 2048).count(), 70);
        assert_eq!(mix.iter().filter(|&&s| s == 1 << 20).count(), 5);
        // Rounding by largest remainder still gives the count asked for.
        let odd = message_sizes(7, "", Some("1KiB:50,2KiB:50")).unwrap();
        assert_eq!(odd.len(), 7);
        assert_eq!(odd, message_sizes(7, "", Some("1KiB:50,2KiB:50")).unwrap());
        assert!(message_sizes(7, "", Some("1KiB:50,2KiB:40")).is_err());
        assert!(message_sizes(7, "", Some("1KiB")).is_err());
    }

    #[test]
    fn only_loopback_servers() {
        assert!(loopback("--pop3", "127.0.0.1:110").is_ok());
        assert!(loopback("--pop3", "[::1]:110").is_ok());
        assert!(matches!(
            loopback("--pop3", "192.0.2.1:110"),
            Err(BenchError::Usage(_))
        ));
    }

    #[test]
    fn refill_writes_lf_files_with_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let m = Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n");
        refill(dir.path(), &[m.clone(), m]).unwrap();
        assert_eq!(maildir_count(dir.path()), 2);
        let f = std::fs::read_dir(dir.path().join("new"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(",S=17,W=20"), "{name}");
        assert_eq!(std::fs::read(f.path()).unwrap(), b"Subject: x\n\nbody\n");
    }
}
