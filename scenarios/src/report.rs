//! A scenario's report: per label what happened and why, every expectation checked, as a
//! table for people and as JSON for machines.
//!
//! Responsible for: comparing the decided outcomes, `lost`, `duplicates`, event counts
//! and recipients with `[expect]`, writing each failed expectation as
//! `what: expected X, got Y (why)`, and rendering. Reports hold no temporary paths or
//! ports (the runner redacts them); the table's only time-dependent text is the run
//! time in its last line.
//! Must never: contain connector logic or decide outcomes (that is `outcome`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::outcome::{Decided, MessageOutcome};
use crate::schema::{event_kind, Outcome, Scenario};
use crate::world::Observed;

/// One expectation and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked: a label, `lost`, `duplicates`, `events."kind"`, `recipients of L`.
    pub what: String,
    /// The expected value, as text.
    pub expected: String,
    /// The actual value, as text.
    pub actual: String,
    /// The reply or event that explains the actual value (may be empty).
    pub why: String,
    /// True when it held.
    pub passed: bool,
    /// True when `[expect.popbridge_only]` marks it as holding for popbridge only.
    pub popbridge_only: bool,
}

impl Check {
    /// `what: expected X, got Y (why)`.
    pub fn failure_line(&self) -> String {
        let mut s = format!(
            "{}: expected {}, got {}",
            self.what, self.expected, self.actual
        );
        if !self.why.is_empty() {
            let _ = write!(s, " ({})", self.why);
        }
        s
    }
}

/// One label: its copies' outcomes.
#[derive(Debug, Clone, Serialize)]
pub struct LabelReport {
    /// The label.
    pub label: String,
    /// How many copies it has.
    pub copies: u32,
    /// The expected outcome, when the scenario names one.
    pub expected: Option<Outcome>,
    /// How many copies ended each way.
    pub outcomes: BTreeMap<Outcome, u32>,
    /// The reply or event that explains it (of the first copy that is not as expected, or
    /// of the first copy).
    pub why: String,
}

/// Everything a scenario run showed.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// The scenario file, as given.
    pub file: String,
    /// Its name (the file name without `.toml`).
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// True when every expectation held and the run finished.
    pub passed: bool,
    /// Connector passes asked for.
    pub passes: u32,
    /// Per label, in declaration order.
    pub labels: Vec<LabelReport>,
    /// Per message copy.
    pub messages: Vec<MessageOutcome>,
    /// Messages lost.
    pub lost: u64,
    /// Extra deliveries.
    pub duplicates: u64,
    /// popbridge event counts by kind.
    pub events: BTreeMap<String, u64>,
    /// Every expectation checked.
    pub checks: Vec<Check>,
    /// Captured SMTP transactions attributed to no message.
    pub unmatched: Vec<String>,
    /// Why the run itself failed (setup, timeout), if it did.
    pub error: Option<String>,
    /// Run time in milliseconds.
    pub elapsed_ms: u64,
}

impl ScenarioReport {
    /// True when the run finished and every expectation held.
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// The failed expectations, one `what: expected X, got Y (why)` line each.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .error
            .iter()
            .map(|e| format!("run: expected it to finish, got an error ({e})"))
            .collect();
        out.extend(
            self.checks
                .iter()
                .filter(|c| !c.passed)
                .map(Check::failure_line),
        );
        out
    }

    /// The report as a table for people.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "== {}", self.name);
        if let Some(d) = &self.description {
            let _ = write!(s, ": {d}");
        }
        s.push_str(" ==\n");
        let rows: Vec<[String; 5]> = self
            .labels
            .iter()
            .map(|l| {
                [
                    l.label.clone(),
                    l.copies.to_string(),
                    outcome_text(&l.outcomes),
                    l.expected.map_or_else(|| "-".into(), |e| e.to_string()),
                    l.why.clone(),
                ]
            })
            .collect();
        let header = ["label", "n", "outcome", "expected", "why"].map(String::from);
        let mut widths = [0usize; 4];
        for r in std::iter::once(&header).chain(rows.iter()) {
            for (w, c) in widths.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in std::iter::once(&header).chain(rows.iter()) {
            let _ = writeln!(
                s,
                "  {:<w0$}  {:>w1$}  {:<w2$}  {:<w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
            );
        }
        let find = |what: &str| self.checks.iter().find(|c| c.what == what);
        let _ = writeln!(
            s,
            "  lost {}{}, duplicates {}{}",
            self.lost,
            find("lost").map_or(String::new(), |c| format!(" (expected {})", c.expected)),
            self.duplicates,
            find("duplicates").map_or(String::new(), |c| format!(" (expected {})", c.expected)),
        );
        let events: Vec<String> = self
            .events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  events over {} pass{}: {}",
            self.passes,
            if self.passes == 1 { "" } else { "es" },
            if events.is_empty() {
                "none".to_string()
            } else {
                events.join(", ")
            }
        );
        if !self.unmatched.is_empty() {
            let _ = writeln!(s, "  SMTP transactions attributed to no message (no data to match, several candidates):");
            for u in &self.unmatched {
                let _ = writeln!(s, "    {u}");
            }
        }
        let secs = self.elapsed_ms as f64 / 1000.0;
        let failures = self.failures();
        let total = self.checks.len();
        if failures.is_empty() {
            let _ = writeln!(
                s,
                "  PASS: {total} of {total} expectations hold ({secs:.2} s)"
            );
        } else {
            let _ = writeln!(
                s,
                "  FAIL: {} of {} expectations failed ({secs:.2} s)",
                failures.len(),
                total + usize::from(self.error.is_some())
            );
            for f in failures {
                let _ = writeln!(s, "    {f}");
            }
        }
        s
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn outcome_text(o: &BTreeMap<Outcome, u32>) -> String {
    match o.len() {
        0 => "-".into(),
        1 => o.keys().next().map(ToString::to_string).unwrap_or_default(),
        _ => o
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn norm(addrs: &[String]) -> Vec<String> {
    let mut v: Vec<String> = addrs
        .iter()
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Checks a run against the scenario's expectations.
pub fn build(s: &Scenario, obs: &Observed, decided: Decided) -> ScenarioReport {
    let expect = &s.file.expect;
    let only = &expect.popbridge_only;
    let by_name: BTreeMap<&str, &MessageOutcome> = decided
        .messages
        .iter()
        .map(|m| (m.name.as_str(), m))
        .collect();
    let copies_of = |key: &str| -> Vec<&MessageOutcome> {
        s.selectors
            .get(key)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| by_name.get(n.as_str()).copied())
                    .collect()
            })
            .unwrap_or_default()
    };

    let mut checks = Vec::new();
    // Per label.
    for (key, expected) in &expect.labels {
        let copies = copies_of(key);
        let bad: Vec<&&MessageOutcome> = copies.iter().filter(|m| m.outcome != *expected).collect();
        let mut counts: BTreeMap<Outcome, u32> = BTreeMap::new();
        for m in &copies {
            *counts.entry(m.outcome).or_default() += 1;
        }
        let (actual, why) = match (copies.len(), bad.first()) {
            (1, _) => (copies[0].outcome.to_string(), copies[0].why.clone()),
            (_, None) => (expected.to_string(), String::new()),
            (n, Some(first)) => (
                format!("{} (of {n})", outcome_text(&counts)),
                format!("{}: {}", first.name, first.why),
            ),
        };
        let passed = bad.is_empty() && !copies.is_empty();
        checks.push(Check {
            what: key.clone(),
            expected: expected.to_string(),
            actual,
            why: if passed { String::new() } else { why },
            passed,
            popbridge_only: only.labels.contains(key),
        });
    }
    // Recipients.
    for (key, want) in &expect.recipients {
        let want = norm(want);
        let copies = copies_of(key);
        let bad = copies.iter().find(|m| norm(&m.recipients) != want).copied();
        let passed = bad.is_none() && !copies.is_empty();
        let shown = |v: &[String]| format!("[{}]", v.join(", "));
        let (actual, why) = match bad {
            Some(m) => (
                shown(&norm(&m.recipients)),
                if copies.len() > 1 {
                    format!("{}: {} ({})", m.name, m.outcome, m.why)
                } else {
                    format!("{} ({})", m.outcome, m.why)
                },
            ),
            None => (shown(&want), String::new()),
        };
        checks.push(Check {
            what: format!("recipients of {key}"),
            expected: shown(&want),
            actual,
            why,
            passed,
            popbridge_only: only.labels.contains(key),
        });
    }
    // Lost and duplicates.
    let lost_names: Vec<String> = decided
        .messages
        .iter()
        .filter(|m| m.lost)
        .map(|m| format!("{}: {}", m.name, m.why))
        .collect();
    checks.push(Check {
        what: "lost".into(),
        expected: expect.lost.to_string(),
        actual: decided.lost.to_string(),
        why: if decided.lost == expect.lost {
            String::new()
        } else {
            summarise(&lost_names)
        },
        passed: decided.lost == expect.lost,
        popbridge_only: only.lost,
    });
    let dup_names: Vec<String> = decided
        .messages
        .iter()
        .filter(|m| m.accepted > 1)
        .map(|m| format!("{} accepted {} times", m.name, m.accepted))
        .collect();
    checks.push(Check {
        what: "duplicates".into(),
        expected: expect.duplicates.to_string(),
        actual: decided.duplicates.to_string(),
        why: if decided.duplicates == expect.duplicates {
            String::new()
        } else {
            summarise(&dup_names)
        },
        passed: decided.duplicates == expect.duplicates,
        popbridge_only: only.duplicates,
    });
    // Events.
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for pe in &obs.events {
        *events.entry(event_kind(&pe.event)).or_default() += 1;
    }
    for (kind, want) in &expect.events {
        let got = events.get(kind).copied().unwrap_or(0);
        checks.push(Check {
            what: format!("events.{kind:?}"),
            expected: want.to_string(),
            actual: got.to_string(),
            why: String::new(),
            passed: got == *want,
            popbridge_only: true,
        });
    }

    // Per label rows, in declaration order.
    let mut groups: Vec<(String, Vec<&MessageOutcome>)> = Vec::new();
    for m in &decided.messages {
        match groups.last_mut() {
            Some((label, v)) if *label == m.label => v.push(m),
            _ => groups.push((m.label.clone(), vec![m])),
        }
    }
    let labels: Vec<LabelReport> = groups
        .into_iter()
        .map(|(label, copies)| {
            let expected = expect.labels.get(&label).copied();
            let mut outcomes: BTreeMap<Outcome, u32> = BTreeMap::new();
            for m in &copies {
                *outcomes.entry(m.outcome).or_default() += 1;
            }
            let shown = copies
                .iter()
                .find(|m| expected.is_some_and(|e| e != m.outcome))
                .or(copies.first())
                .map(|m| {
                    if m.name == m.label {
                        m.why.clone()
                    } else {
                        format!("{}: {}", m.name, m.why)
                    }
                })
                .unwrap_or_default();
            LabelReport {
                label,
                copies: copies.len() as u32,
                expected,
                outcomes,
                why: shown,
            }
        })
        .collect();

    let passed = obs.error.is_none() && checks.iter().all(|c| c.passed);
    let name = s
        .path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ScenarioReport {
        file: s.path.display().to_string(),
        name,
        description: s.file.description.clone(),
        passed,
        passes: s.file.run.passes,
        labels,
        messages: decided.messages,
        lost: decided.lost,
        duplicates: decided.duplicates,
        events,
        checks,
        unmatched: decided.unmatched,
        error: obs.error.clone(),
        elapsed_ms: obs.elapsed.as_millis() as u64,
    }
}

fn summarise(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > SHOWN {
        let _ = write!(s, "; and {} more", items.len() - SHOWN);
    }
    s
}
