//! CPU seconds and peak RSS of one measured command, how busy the whole machine was
//! meanwhile, and the per-message latency distribution.
//!
//! A process's resource usage is only exact once it has been waited for, so the command
//! runs under a small wrapper (`poplab bench-rusage --out FILE -- COMMAND…`, this module's
//! [`rusage_main`]): it starts the command, waits for it, reads `getrusage(RUSAGE_CHILDREN)`
//! (the command and every descendant it waited for: user + system CPU, the largest peak
//! RSS among them) and writes it as one JSON object. The wrapper has no other child, so
//! the figures are the command's alone.
//! Must never: measure a process that was not waited for, or print into the command's
//! output streams.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the wrapper measured of one command.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall time from spawning the command to its exit, in seconds.
    pub wall_s: f64,
    /// User plus system CPU time of the command and its waited-for descendants, in seconds.
    pub cpu_s: f64,
    /// The largest peak resident set size among them, in KiB.
    pub max_rss_kib: u64,
    /// The command's exit code (128 + the signal when a signal ended it).
    pub exit: i32,
}

/// Why a measurement could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The wrapper wrote no usable result (it was killed, or could not start the command).
    #[error("no resource usage was recorded ({0})")]
    Missing(String),
}

/// The wrapper's body: runs `argv`, waits, writes its [`Usage`] to `out`; returns the exit
/// code to leave with (the command's, or 127 when it could not be started).
pub fn rusage_main(out: &Path, argv: &[OsString]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("poplab bench-rusage: no command given");
        return 2;
    };
    let started = Instant::now();
    let status = match Command::new(program).args(args).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "poplab bench-rusage: cannot start {}: {e}",
                Path::new(program).display()
            );
            return 127;
        }
    };
    let wall = started.elapsed();
    let exit = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt as _;
        128 + status.signal().unwrap_or(0)
    });
    let usage = match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => Usage {
            wall_s: wall.as_secs_f64(),
            cpu_s: timeval_secs(u.user_time()) + timeval_secs(u.system_time()),
            max_rss_kib: u64::try_from(u.max_rss()).unwrap_or(0),
            exit,
        },
        Err(e) => {
            eprintln!("poplab bench-rusage: getrusage: {e}");
            return exit;
        }
    };
    let written = serde_json::to_vec(&usage)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(out, b));
    if let Err(e) = written {
        eprintln!("poplab bench-rusage: cannot write {}: {e}", out.display());
    }
    exit
}

fn timeval_secs(t: nix::sys::time::TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// Reads what the wrapper wrote to `out`.
pub fn read_usage(out: &Path) -> Result<Usage, MeasureError> {
    let bytes = std::fs::read(out).map_err(|e| MeasureError::Missing(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| MeasureError::Missing(e.to_string()))
}

/// The `sh` command line that runs `inner` (itself a `sh` command line) under the wrapper
/// `poplab` (this executable), writing its usage to `out`.
pub fn wrapped(poplab: &Path, out: &Path, inner: &str) -> String {
    use crate::external::shell_quote as q;
    format!(
        "exec {} bench-rusage --out {} -- /bin/sh -c {}",
        q(&poplab.display().to_string()),
        q(&out.display().to_string()),
        q(inner)
    )
}

/// The whole machine's CPU time so far (Linux `/proc/stat`, in clock ticks): read before
/// and after a round, it tells how many cores were busy meanwhile, with every process on
/// the machine counted (the servers', the connector's, the harness's). A round whose cores
/// were all busy was limited by the machine, whatever its ratios say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
    cores: u32,
}

impl MachineCpu {
    /// Reads the counters now; `None` where `/proc/stat` is missing or unreadable.
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Reads the aggregate `cpu` line and counts the `cpuN` lines of a `/proc/stat` text.
    pub fn parse(stat: &str) -> Option<Self> {
        let mut lines = stat.lines();
        let first = lines.next()?;
        let mut fields = first.split_ascii_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
        let cores = lines
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        Some(Self {
            busy: total.checked_sub(idle)?,
            total,
            cores: u32::try_from(cores).ok().filter(|&c| c > 0)?,
        })
    }

    /// How many cores were busy on average between `self` and `later` (0 to the number of
    /// cores); `None` when no tick passed.
    pub fn busy_cores(self, later: Self) -> Option<f64> {
        let total = later.total.checked_sub(self.total).filter(|&t| t > 0)?;
        let busy = later.busy.checked_sub(self.busy)?;
        Some(busy as f64 / total as f64 * f64::from(self.cores))
    }

    /// The number of cores the counters cover.
    pub fn cores(self) -> u32 {
        self.cores
    }
}

/// Runs `work` and tells how many of the machine's cores were busy meanwhile (`None`
/// where the counters cannot be read).
pub async fn busy_while<T>(work: impl std::future::Future<Output = T>) -> (T, Option<f64>) {
    let before = MachineCpu::now();
    let out = work.await;
    let busy = before.and_then(|b| b.busy_cores(MachineCpu::now()?));
    (out, busy)
}

/// The `p`-th percentile (0–100) of `sorted` (ascending), nearest rank; `None` when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Per-message latencies from two ascending event clocks: the k-th message left the POP3
/// server at `sent[k]` and the k-th was accepted by the SMTP server at `accepted[k]`
/// (connectors deliver in the order they download). Sorted ascending.
pub fn latencies(
    sent: &[tokio::time::Instant],
    accepted: &[tokio::time::Instant],
) -> Vec<Duration> {
    let mut v: Vec<Duration> = sent
        .iter()
        .zip(accepted)
        .map(|(s, a)| a.saturating_duration_since(*s))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v[..1], 99.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn busy_cores_come_from_the_aggregate_line() {
        let at = |user: u64, idle: u64| {
            format!(
                "cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0\nintr 5\n"
            )
        };
        let before = MachineCpu::parse(&at(100, 100)).unwrap();
        assert_eq!(before.cores(), 2);
        // 150 ticks busy out of 200: three quarters of two cores.
        let after = MachineCpu::parse(&at(250, 150)).unwrap();
        assert_eq!(before.busy_cores(after), Some(1.5));
        assert_eq!(before.busy_cores(before), None);
        assert_eq!(MachineCpu::parse("intr 5\n"), None);
        assert_eq!(MachineCpu::parse("cpu  x 0 0 0\ncpu0 1 1\n"), None);
    }

    #[test]
    fn the_wrapper_measures_its_child() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("usage.json");
        let code = rusage_main(
            &out,
            &[
                "/bin/sh".into(),
                "-c".into(),
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 3".into(),
            ],
        );
        assert_eq!(code, 3);
        let u = read_usage(&out).unwrap();
        assert_eq!(u.exit, 3);
        assert!(u.max_rss_kib > 0, "{u:?}");
        assert!(u.cpu_s > 0.0 && u.wall_s > 0.0, "{u:?}");
    }
}
