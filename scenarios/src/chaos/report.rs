//! The chaos report: fault classes × outcomes, totals, and every failure with its seed.
//!
//! Responsible for: adding up the runs' verdicts (each run counts in every fault class it
//! had), the table for people and the JSON for machines. Holds nothing that changes from
//! one run of the same seeds to the next (no wall-clock times).
//! Must never: hide a failure (every failing seed is listed with what went wrong).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::oracle::{Fate, Kind, Verdict};
use super::{classes, Options, RunResult};
use crate::report::counts_text;

/// Outcomes added up over runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Runs.
    pub runs: u64,
    /// Message copies.
    pub messages: u64,
    /// Delivered.
    pub delivered: u64,
    /// Left on the server.
    pub left: u64,
    /// Quarantined.
    pub quarantined: u64,
    /// Accepted then bounced.
    pub ndr: u64,
    /// Lost (gone without a delivery; NDR'd and deleted counts too).
    pub lost: u64,
    /// Duplicates the protocol made unavoidable.
    pub unavoidable_duplicates: u64,
    /// Duplicates the connector could have avoided.
    pub avoidable_duplicates: u64,
    /// Runs with a violation the profile does not expect.
    pub failed_runs: u64,
}

impl Tally {
    fn add(&mut self, r: &RunResult) {
        let v: &Verdict = &r.verdict;
        self.runs += 1;
        self.messages += u64::from(r.messages);
        self.delivered += u64::from(v.count(Fate::Delivered));
        self.left += u64::from(v.count(Fate::Left));
        self.quarantined += u64::from(v.count(Fate::Quarantined));
        self.ndr += u64::from(v.count(Fate::Ndr));
        self.lost += v.violations.iter().filter(|x| x.kind == Kind::Lost).count() as u64;
        self.unavoidable_duplicates += u64::from(v.unavoidable);
        self.avoidable_duplicates += u64::from(v.avoidable);
        self.failed_runs += u64::from(v.failed());
    }
}

/// One failing run.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Its seed (replay: `poplab chaos --runs 1 --seed SEED`).
    pub seed: u64,
    /// What went wrong (the first few violations).
    pub violations: Vec<String>,
    /// The shrunk scenario file, when saved.
    pub saved: Option<String>,
    /// Messages and faults left after shrinking.
    pub shrunk_to: Option<(u32, u32)>,
}

/// A whole `poplab chaos` run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// The connector judged.
    pub connector: String,
    /// The profile.
    pub profile: String,
    /// The deliberate sabotage, if any.
    pub sabotage: Option<String>,
    /// The first seed.
    pub seed: u64,
    /// Runs.
    pub runs: u64,
    /// Everything added up.
    pub total: Tally,
    /// Per fault class (a run counts in each class it had).
    pub classes: BTreeMap<String, Tally>,
    /// Runs without any fault rule, crash or kill.
    pub no_faults: Tally,
    /// Violations the profile expects (sbs2008's losses and stalls), by kind.
    pub expected: BTreeMap<String, u64>,
    /// Violations it does not, by kind.
    pub violations: BTreeMap<String, u64>,
    /// Every failing run.
    pub failures: Vec<Failure>,
    /// Virtual time of the slowest run, in milliseconds (the paused clock).
    pub slowest_virtual_ms: Option<u64>,
}

/// Adds up `results` (sorted by seed).
pub fn build(opts: &Options, results: Vec<RunResult>) -> ChaosReport {
    let mut total = Tally::default();
    let mut per: BTreeMap<String, Tally> = classes(&results)
        .into_iter()
        .map(|c| (c, Tally::default()))
        .collect();
    let mut no_faults = Tally::default();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut violations: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for r in &results {
        total.add(r);
        let faulty = r.classes.iter().any(|c| {
            !c.starts_with("message-")
                && c != "no-uidl"
                && c != "identical-copies"
                && c != "shared-uid"
        });
        if !faulty {
            no_faults.add(r);
        }
        for c in &r.classes {
            if let Some(t) = per.get_mut(c) {
                t.add(r);
            }
        }
        for v in &r.verdict.violations {
            let map = if v.expected {
                &mut expected
            } else {
                &mut violations
            };
            *map.entry(v.kind.name().to_string()).or_default() += 1;
        }
        if r.verdict.failed() {
            failures.push(Failure {
                seed: r.seed,
                violations: r
                    .verdict
                    .violations
                    .iter()
                    .filter(|v| !v.expected)
                    .take(5)
                    .map(|v| {
                        if v.message.is_empty() {
                            format!("{}: {}", v.kind.name(), v.detail)
                        } else {
                            format!("{} {}: {}", v.kind.name(), v.message, v.detail)
                        }
                    })
                    .collect(),
                saved: r.saved.clone(),
                shrunk_to: r.shrunk_to,
            });
        }
    }
    ChaosReport {
        connector: opts.connector.name(),
        profile: opts.profile.name().to_string(),
        sabotage: opts.sabotage.map(|s| s.name().to_string()),
        seed: opts.seed,
        runs: results.len() as u64,
        total,
        classes: per,
        no_faults,
        expected,
        violations,
        failures,
        slowest_virtual_ms: results.iter().filter_map(|r| r.virtual_ms).max(),
    }
}

impl ChaosReport {
    /// True when no run broke a promise its profile makes.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The report as a table.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== poplab chaos: {} runs from seed {}, profile {}, connector {}{} ==",
            self.runs,
            self.seed,
            self.profile,
            self.connector,
            self.sabotage
                .as_ref()
                .map(|x| format!(", SABOTAGED ({x})"))
                .unwrap_or_default()
        );
        let header = [
            "fault class",
            "runs",
            "messages",
            "delivered",
            "left",
            "quarantined",
            "lost",
            "dup unavoidable",
            "dup avoidable",
            "failed runs",
        ];
        let row = |name: &str, t: &Tally| -> Vec<String> {
            vec![
                name.to_string(),
                t.runs.to_string(),
                t.messages.to_string(),
                t.delivered.to_string(),
                t.left.to_string(),
                t.quarantined.to_string(),
                t.lost.to_string(),
                t.unavoidable_duplicates.to_string(),
                t.avoidable_duplicates.to_string(),
                t.failed_runs.to_string(),
            ]
        };
        let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        for (c, t) in &self.classes {
            rows.push(row(c, t));
        }
        rows.push(row("(no faults)", &self.no_faults));
        rows.push(row("ALL", &self.total));
        let widths: Vec<usize> = (0..header.len())
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let mut line = String::from(" ");
            for (i, cell) in r.iter().enumerate() {
                if i == 0 {
                    let _ = write!(line, " {cell:<w$}", w = widths[i]);
                } else {
                    let _ = write!(line, " {cell:>w$}", w = widths[i]);
                }
            }
            let _ = writeln!(s, "{}", line.trim_end());
        }
        if !self.expected.is_empty() {
            let _ = writeln!(
                s,
                "  expected under the {} profile (the old connector's known failures, or a \
                 server joining a message to a transaction it should have reset): {}",
                self.profile,
                counts_text(&self.expected)
            );
        }
        if self.failures.is_empty() && !self.expected.is_empty() {
            let _ = writeln!(
                s,
                "  PASS: {} runs; every failure is one the {} profile expects",
                self.runs, self.profile
            );
        } else if self.failures.is_empty() {
            let _ = writeln!(
                s,
                "  PASS: {} runs, 0 lost, 0 avoidable or unreported duplicates, 0 stuck",
                self.runs
            );
        } else {
            let _ = writeln!(
                s,
                "  FAIL: {} of {} runs broke a promise ({})",
                self.failures.len(),
                self.runs,
                counts_text(&self.violations)
            );
            for f in self.failures.iter().take(20) {
                let _ = writeln!(s, "  seed {}:", f.seed);
                for v in &f.violations {
                    let _ = writeln!(s, "    {v}");
                }
                match (&f.saved, f.shrunk_to) {
                    (Some(p), Some((m, k))) => {
                        let _ = writeln!(
                            s,
                            "    reproduce: poplab run {p}   (shrunk to {m} messages, {k} faults)"
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            s,
                            "    replay: poplab chaos --runs 1 --seed {}{}",
                            f.seed,
                            if self.profile == "default" {
                                String::new()
                            } else {
                                format!(" --profile {}", self.profile)
                            }
                        );
                    }
                }
            }
            if self.failures.len() > 20 {
                let _ = writeln!(
                    s,
                    "  ... and {} more (see --json)",
                    self.failures.len() - 20
                );
            }
        }
        s
    }
}
