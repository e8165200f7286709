//! `poplab chaos`: thousands of seeded worlds and fault schedules, each judged by an oracle
//! that accounts for every message; failures shrunk to a small scenario file that
//! `poplab run` reproduces.
//!
//! Responsible for: running seeds `S..S+N` ([`spec::draw`] makes each world, written as a
//! scenario file and run through the ordinary runner: popbridge in-process on the paused
//! clock over in-memory streams, or an external connector over loopback with SIGKILLs),
//! judging each ([`oracle::judge`]), shrinking and saving failures ([`shrink`]), and the
//! report (fault classes × outcomes, failures with their seeds, JSON for machines).
//! The same seed replays the same run: same world, same faults, same outcome (popbridge
//! in-process). Reports hold no wall-clock times, so two runs of a seed give the same JSON.
//! Must never: contain connector logic, or let one run's state reach another.

pub mod oracle;
pub mod report;
pub mod shrink;
pub mod spec;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use popbridge::faults::Sabotage;
use serde::Serialize;

use crate::external::Connector;
use crate::schema;
use crate::world::{self, Observed};
pub use oracle::{Fate, Kind, Verdict, Violation};
pub use report::ChaosReport;
pub use spec::{Profile, Spec};

/// What `poplab chaos` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many runs.
    pub runs: u64,
    /// The first seed (run `i` uses `seed + i`).
    pub seed: u64,
    /// Runs at once.
    pub jobs: usize,
    /// The policy worlds are judged against.
    pub profile: Profile,
    /// popbridge in-process, or an external command.
    pub connector: Connector,
    /// Where shrunk failures are written as scenario files.
    pub save_failures: Option<PathBuf>,
    /// A deliberately broken popbridge (to show the oracle catches it).
    pub sabotage: Option<Sabotage>,
    /// Where every run's world is written as a scenario file, as drawn (to replay or read
    /// any seed, failing or not).
    pub save_worlds: Option<PathBuf>,
}

/// One run's result.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Its seed.
    pub seed: u64,
    /// Messages in its world.
    pub messages: u32,
    /// Its fault classes.
    pub classes: Vec<String>,
    /// The oracle's judgement.
    pub verdict: Verdict,
    /// Passes run (fault passes and clean ones).
    pub passes: u32,
    /// Virtual time it took (popbridge in-process, on the paused clock), in milliseconds.
    pub virtual_ms: Option<u64>,
    /// The shrunk reproduction, when it failed and failures are saved.
    pub saved: Option<String>,
    /// How small the reproduction got: (messages, faults and crashes).
    pub shrunk_to: Option<(u32, u32)>,
}

/// The scenario file name of a seed's world.
pub fn file_name(seed: u64) -> String {
    format!("chaos-seed-{seed}.toml")
}

/// Runs one world and judges it.
pub async fn run_spec(spec: &Spec, connector: &Connector) -> (Verdict, Observed) {
    let text = spec::render(spec, &format!("chaos seed {}", spec.seed));
    let path = PathBuf::from(file_name(spec.seed));
    let scenario = match schema::parse(&text, &path) {
        Ok(s) => s,
        Err(e) => {
            let v = harness_failure(format!(
                "the world is not a valid scenario (a poplab bug): {e}"
            ));
            return (v, Observed::default());
        }
    };
    let obs = match connector {
        Connector::Popbridge => world::run_with(&scenario, connector).await,
        Connector::External { .. } => {
            world::run_external_with_kills(&scenario, connector, &spec.kills).await
        }
    };
    (oracle::judge(spec, &scenario, &obs), obs)
}

/// The most failing runs one `poplab chaos` shrinks (each can take a hundred re-runs);
/// later failures are listed with their seeds to replay.
pub const SHRINK_AT_MOST: u64 = 10;

/// Runs and judges seed `seed`; shrinks and saves it when it fails, `save_failures` is set
/// and `shrinks` (counted down) allows another.
pub async fn run_seed(seed: u64, opts: &Options, shrinks: &AtomicU64) -> RunResult {
    let external = opts.connector.is_external();
    let spec = spec::draw(seed, opts.profile, external, opts.sabotage);
    if let Some(dir) = &opts.save_worlds {
        let text = spec::render(&spec, &format!("chaos seed {seed}, as drawn"));
        let _ = popbridge::private::write_file(&dir.join(file_name(seed)), text.as_bytes());
    }
    let (verdict, obs) = run_spec(&spec, &opts.connector).await;
    let mut result = RunResult {
        seed,
        messages: spec.messages.iter().map(|m| m.copies).sum(),
        classes: spec.fault_classes(),
        passes: obs
            .summaries
            .len()
            .max(obs.external_runs.iter().map(|r| r.pass).max().unwrap_or(0) as usize)
            as u32,
        virtual_ms: obs.virtual_elapsed.map(|d| d.as_millis() as u64),
        verdict,
        saved: None,
        shrunk_to: None,
    };
    let shrink = || {
        shrinks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    if result.verdict.failed() && opts.save_failures.is_some() && shrink() {
        if let Some(dir) = &opts.save_failures {
            let small = shrink::shrink(&spec, &opts.connector, &result.verdict).await;
            let (verdict, _) = run_spec(&small, &opts.connector).await;
            let headline = headline(&small, &verdict, &spec);
            let text = spec::render(&small, &headline);
            let path = dir.join(file_name(seed));
            match popbridge::private::write_file(&path, text.as_bytes()) {
                Ok(()) => result.saved = Some(path.display().to_string()),
                Err(e) => result.saved = Some(format!("could not write {}: {e}", path.display())),
            }
            result.shrunk_to = Some((
                small.messages.iter().map(|m| m.copies).sum(),
                (small.faults.len() + small.crashes.len() + small.kills.len()) as u32,
            ));
        }
    }
    result
}

/// A verdict of one harness failure (not the connector's): `detail` says what broke.
fn harness_failure(detail: String) -> Verdict {
    let mut v = Verdict::default();
    v.violations.push(Violation {
        kind: Kind::Harness,
        message: String::new(),
        detail,
        expected: false,
    });
    v
}

/// The description of a saved failure: its seed and what went wrong.
fn headline(small: &Spec, verdict: &Verdict, original: &Spec) -> String {
    let what = verdict
        .violations
        .iter()
        .find(|v| !v.expected)
        .map(|v| {
            if v.message.is_empty() {
                format!("{}: {}", v.kind.name(), v.detail)
            } else {
                format!("{} ({}): {}", v.kind.name(), v.message, v.detail)
            }
        })
        .unwrap_or_else(|| "no violation left after shrinking".into());
    format!(
        "chaos seed {} (shrunk from {} messages and {} faults to {} and {}): {what}",
        original.seed,
        original.messages.len(),
        original.faults.len() + original.crashes.len() + original.kills.len(),
        small.messages.len(),
        small.faults.len() + small.crashes.len() + small.kills.len(),
    )
}

/// Runs every seed of `opts`, `jobs` at a time; `progress` hears of each finished run.
pub async fn run(opts: &Options, progress: impl Fn(&RunResult, u64, u64)) -> ChaosReport {
    let opts = Arc::new(opts.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let shrinks = Arc::new(AtomicU64::new(SHRINK_AT_MOST));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..opts.runs {
        let (opts, sem, shrinks) = (opts.clone(), sem.clone(), shrinks.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            run_seed(opts.seed.wrapping_add(i), &opts, &shrinks).await
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => {
                progress(&r, results.len() as u64 + 1, opts.runs);
                results.push(r);
            }
            Err(e) => {
                // A panicking run is a harness failure of its own: reported, not lost.
                let v = harness_failure(format!("the run panicked: {e}"));
                results.push(RunResult {
                    seed: u64::MAX,
                    messages: 0,
                    classes: Vec::new(),
                    verdict: v,
                    passes: 0,
                    virtual_ms: None,
                    saved: None,
                    shrunk_to: None,
                });
            }
        }
    }
    results.sort_by_key(|r| r.seed);
    report::build(&opts, results)
}

/// The scratch folder chaos runs use for state: memory-backed where the machine has one
/// (`/dev/shm`), so the ledger's fsyncs cost nothing, else the system's temporary folder.
pub fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && tempfile::Builder::new()
            .prefix("poplab-probe-")
            .tempdir_in(shm)
            .is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Distinct fault classes across results (for the table's rows).
pub(crate) fn classes(results: &[RunResult]) -> BTreeSet<String> {
    results
        .iter()
        .flat_map(|r| r.classes.iter().cloned())
        .collect()
}
