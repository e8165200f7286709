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
use std::time::Duration;

use serde::Serialize;

use crate::external::ExternalRun;
use crate::outcome::{Decided, MessageOutcome, Totals};
use crate::schema::{event_kind, Clock, Duplicates, Outcome, Scenario};
use crate::world::Observed;

/// How an expectation came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    /// It held.
    Held,
    /// It did not hold: the scenario fails.
    Failed,
    /// Marked `[expect.popbridge_only]`, run against an external connector, and not held:
    /// reported with expected and actual, not a failure.
    DiffersFromPopbridge,
    /// Cannot apply to this connector (popbridge's events, for an external connector).
    NotApplicable,
}

impl CheckStatus {
    /// `held`, `failed`, `differs from popbridge`, `not applicable`.
    pub fn text(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Failed => "failed",
            Self::DiffersFromPopbridge => "differs from popbridge",
            Self::NotApplicable => "not applicable",
        }
    }
}

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
    /// True unless it failed (a difference from popbridge, or an expectation that does not
    /// apply to an external connector, does not fail the scenario).
    pub passed: bool,
    /// True when `[expect.popbridge_only]` marks it as holding for popbridge only.
    pub popbridge_only: bool,
    /// How it came out.
    pub status: CheckStatus,
    /// The 1-based line of the scenario file where the expectation is written (none for
    /// an implicit one, such as the default `lost = 0`).
    pub line: Option<usize>,
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

    /// `what: expected X (popbridge), got Y (why)`, for a difference from popbridge.
    pub fn difference_line(&self) -> String {
        let mut s = format!(
            "{}: popbridge {}, this connector {}",
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
    /// Messages lost, extra deliveries, and of those the ones the protocol did not make
    /// unavoidable (`lost`, `duplicates`, `unexplained`).
    #[serde(flatten)]
    pub totals: Totals,
    /// popbridge event counts by kind.
    pub events: BTreeMap<String, u64>,
    /// Every expectation checked.
    pub checks: Vec<Check>,
    /// Captured SMTP transactions attributed to no message.
    pub unmatched: Vec<String>,
    /// Why the run itself failed (setup, timeout), if it did.
    pub error: Option<String>,
    /// Run time in milliseconds (real time).
    pub elapsed_ms: u64,
    /// The clock the run was on: `real`, or `paused` (tokio's paused clock, in-memory
    /// streams).
    pub clock: Clock,
    /// On the paused clock: the run's virtual time in milliseconds (what its delays and
    /// timeouts added up to); `null` on the real clock.
    pub virtual_ms: Option<u64>,
    /// The connector: `popbridge (in-process)` or the `--connector-cmd` template.
    pub connector: String,
    /// True for an external connector.
    pub external: bool,
    /// An external connector's runs (pass, mailbox, exit status, output).
    pub external_runs: Vec<ExternalRun>,
    /// Parts of the scenario that do not apply to this connector (`[run] crash` for an
    /// external one), said in a sentence each.
    pub not_applicable: Vec<String>,
    /// The bound of each external run, in milliseconds.
    pub timeout_ms: u64,
    /// Why the scenario was not run at all with this connector (it needs what the
    /// connector cannot be given); then nothing was checked.
    pub skipped: Option<String>,
    /// The connector profile of this run, when `[run] profiles` names several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// With `[run] profiles`: the runs of the further profiles, in the order written
    /// (this report is the first profile's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ScenarioReport>,
    /// Messages with attachments: their attachments' size and their size on the wire.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachment_sizes: Vec<AttachmentSize>,
}

/// One message with attachments: declared (decoded) size against octets on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentSize {
    /// The message's name (label, or `label-n`).
    pub name: String,
    /// Its attachments' decoded octets in all.
    pub attachments: u64,
    /// The whole message's octets as generated (base64 and headers included).
    pub wire: u64,
}

impl ScenarioReport {
    /// True when the run finished and every expectation held (a skipped scenario has
    /// none, see [`ScenarioReport::skipped`]).
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// True when the scenario was not run with this connector.
    pub fn is_skipped(&self) -> bool {
        self.skipped.is_some()
    }

    /// One report of the runs of one file (the first run's, the others in `profiles`),
    /// passed only when every run passed.
    pub fn combine(mut runs: Vec<ScenarioReport>) -> ScenarioReport {
        if runs.len() <= 1 {
            if let Some(only) = runs.pop() {
                return only;
            }
        }
        let mut first = runs.remove(0);
        first.passed = first.passed && runs.iter().all(|r| r.passed);
        first.profiles = runs;
        first
    }

    /// Every run of this report: itself, then the further profiles' runs.
    pub fn runs(&self) -> impl Iterator<Item = &ScenarioReport> {
        std::iter::once(self).chain(self.profiles.iter())
    }

    /// The failed expectations, one `what: expected X, got Y (why)` line each (prefixed
    /// with `[PROFILE]` when the scenario ran under several profiles).
    pub fn failures(&self) -> Vec<String> {
        if self.profiles.is_empty() {
            return self.own_failures();
        }
        self.runs()
            .flat_map(|r| {
                let p = r.profile.clone().unwrap_or_default();
                r.own_failures()
                    .into_iter()
                    .map(move |f| format!("[{p}] {f}"))
            })
            .collect()
    }

    fn own_failures(&self) -> Vec<String> {
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

    /// The report as a table for people (with several profiles: one table per profile,
    /// one after the other, each headed with its profile).
    pub fn render_table(&self) -> String {
        let mut s = self.render_one();
        for r in &self.profiles {
            s.push_str(&r.render_one());
        }
        s
    }

    fn render_one(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "== {}", self.name);
        if let Some(p) = &self.profile {
            let _ = write!(s, " [profile {p}]");
        }
        if let Some(d) = &self.description {
            let _ = write!(s, ": {d}");
        }
        s.push_str(" ==\n");
        if let Some(why) = &self.skipped {
            let _ = writeln!(s, "  connector: {}", self.connector);
            let _ = writeln!(s, "  SKIPPED: {why}");
            return s;
        }
        if self.external && self.connector == crate::serve::BY_HAND {
            let _ = writeln!(s, "  connector: {}", self.connector);
        } else if self.external {
            let _ = writeln!(
                s,
                "  connector: {} (external command, once per pass and mailbox)",
                self.connector
            );
        }
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
        for a in &self.attachment_sizes {
            let _ = writeln!(
                s,
                "  size of {}: attachments {} octets, {} octets on the wire",
                a.name, a.attachments, a.wire
            );
        }
        let find = |what: &str| self.checks.iter().find(|c| c.what == what);
        let against = |c: &Check| {
            if c.status == CheckStatus::DiffersFromPopbridge {
                format!(" (popbridge: {})", c.expected)
            } else {
                format!(" (expected {})", c.expected)
            }
        };
        let unexplained = if self.totals.duplicates > 0 {
            format!(" ({} unexplained)", self.totals.unexplained)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  lost {}{}, duplicates {}{unexplained}{}",
            self.totals.lost,
            find("lost").map_or(String::new(), against),
            self.totals.duplicates,
            find("duplicates").map_or(String::new(), against),
        );
        if self.external {
            self.render_external(&mut s);
        } else {
            self.render_events(&mut s);
        }
        if let (Clock::Paused, Some(ms)) = (self.clock, self.virtual_ms) {
            let _ = writeln!(
                s,
                "  clock: paused, {} of virtual time",
                virtual_text(Duration::from_millis(ms))
            );
        }
        if !self.unmatched.is_empty() {
            let _ = writeln!(
                s,
                "  SMTP transactions tied to no single message (no data to match):"
            );
            for u in &self.unmatched {
                let _ = writeln!(s, "    {u}");
            }
        }
        let secs = self.elapsed_ms as f64 / 1000.0;
        let failures = self.failures();
        let count = |st: CheckStatus| self.checks.iter().filter(|c| c.status == st).count();
        let (differ, na) = (
            count(CheckStatus::DiffersFromPopbridge),
            count(CheckStatus::NotApplicable),
        );
        let total = self.checks.len() - differ - na;
        let mut aside = String::new();
        if differ > 0 {
            let verb = if differ == 1 { "differs" } else { "differ" };
            let _ = write!(aside, ", {differ} {verb} from popbridge");
        }
        if na > 0 {
            let _ = write!(aside, ", {na} not applicable");
        }
        for c in self
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::DiffersFromPopbridge)
        {
            let _ = writeln!(s, "  differs from popbridge: {}", c.difference_line());
        }
        if failures.is_empty() {
            let _ = writeln!(
                s,
                "  PASS: {total} of {total} expectations hold{aside} ({secs:.2} s)"
            );
        } else {
            let _ = writeln!(
                s,
                "  FAIL: {} of {} expectations failed{aside} ({secs:.2} s)",
                failures.len(),
                total + usize::from(self.error.is_some())
            );
            for f in failures {
                let _ = writeln!(s, "    {f}");
            }
        }
        s
    }

    fn render_events(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "  events over {} pass{}: {}",
            self.passes,
            if self.passes == 1 { "" } else { "es" },
            if self.events.is_empty() {
                "none".to_string()
            } else {
                counts_text(&self.events)
            }
        );
    }

    /// What an external connector did: each run with its exit status and the last lines
    /// of its output, and what did not apply.
    fn render_external(&self, s: &mut String) {
        const TAIL: usize = 6;
        let bound = std::time::Duration::from_millis(self.timeout_ms);
        for r in &self.external_runs {
            let _ = writeln!(
                s,
                "  pass {}, mailbox {}: {} ({:.2} s)",
                r.pass,
                r.user,
                r.status_text(bound),
                r.elapsed_ms as f64 / 1000.0
            );
            let lines: Vec<&str> = r
                .stdout
                .lines()
                .chain(r.stderr.lines())
                .filter(|l| !l.trim().is_empty())
                .collect();
            if lines.len() > TAIL {
                let _ = writeln!(
                    s,
                    "    | ... {} earlier lines (see --json)",
                    lines.len() - TAIL
                );
            }
            for l in lines.iter().skip(lines.len().saturating_sub(TAIL)) {
                let _ = writeln!(s, "    | {l}");
            }
        }
        for n in &self.not_applicable {
            let _ = writeln!(s, "  not applicable: {n}");
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// `10m 0.5s`-style virtual time: minutes and seconds (hours when they are many).
fn virtual_text(d: Duration) -> String {
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let sec = if millis == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{millis:03}s")
    };
    match (h, m) {
        (0, 0) => sec,
        (0, m) => format!("{m}m {sec}"),
        (h, m) => format!("{h}h {m}m {sec}"),
    }
}

fn outcome_text(o: &BTreeMap<Outcome, u32>) -> String {
    match o.len() {
        0 => "-".into(),
        1 => o.keys().next().map(ToString::to_string).unwrap_or_default(),
        _ => counts_text(o),
    }
}

/// Counts as `key n, key n, ...` in key order.
pub(crate) fn counts_text<K: std::fmt::Display, V: std::fmt::Display>(
    counts: &BTreeMap<K, V>,
) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    let external = obs.external;
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
            passed: status(passed, only.labels.contains(key), external) != CheckStatus::Failed,
            popbridge_only: only.labels.contains(key),
            status: status(passed, only.labels.contains(key), external),
            line: s.line_of(&["expect", "labels", key]),
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
            passed: status(passed, only.labels.contains(key), external) != CheckStatus::Failed,
            popbridge_only: only.labels.contains(key),
            status: status(passed, only.labels.contains(key), external),
            line: s.line_of(&["expect", "recipients", key]),
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
        actual: decided.totals.lost.to_string(),
        why: if decided.totals.lost == expect.lost {
            String::new()
        } else {
            summarise(&lost_names)
        },
        passed: status(decided.totals.lost == expect.lost, only.lost, external)
            != CheckStatus::Failed,
        popbridge_only: only.lost,
        status: status(decided.totals.lost == expect.lost, only.lost, external),
        line: s.line_of(&["expect", "lost"]),
    });
    let dup_names: Vec<String> = decided
        .messages
        .iter()
        .filter(|m| m.accepted > 1)
        .map(|m| format!("{} accepted {} times", m.name, m.accepted))
        .collect();
    let (dups_ok, dups_actual) = match expect.duplicates {
        Duplicates::Count(n) => (
            decided.totals.duplicates == n,
            decided.totals.duplicates.to_string(),
        ),
        Duplicates::Explained => (
            decided.totals.unexplained == 0,
            format!(
                "{} ({} unexplained)",
                decided.totals.duplicates, decided.totals.unexplained
            ),
        ),
    };
    checks.push(Check {
        what: "duplicates".into(),
        expected: expect.duplicates.to_string(),
        actual: dups_actual,
        why: if dups_ok {
            String::new()
        } else {
            summarise(&dup_names)
        },
        passed: status(dups_ok, only.duplicates, external) != CheckStatus::Failed,
        popbridge_only: only.duplicates,
        status: status(dups_ok, only.duplicates, external),
        line: s.line_of(&["expect", "duplicates"]),
    });
    // Events.
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for pe in &obs.events {
        *events.entry(event_kind(&pe.event)).or_default() += 1;
    }
    for (kind, want) in &expect.events {
        let got = events.get(kind).copied().unwrap_or(0);
        let st = if external {
            CheckStatus::NotApplicable
        } else if got == *want {
            CheckStatus::Held
        } else {
            CheckStatus::Failed
        };
        checks.push(Check {
            what: format!("events.{kind:?}"),
            expected: want.to_string(),
            actual: if external {
                "none (an external connector has no events)".into()
            } else {
                got.to_string()
            },
            why: String::new(),
            passed: st != CheckStatus::Failed,
            popbridge_only: true,
            status: st,
            line: s.line_of(&["expect", "events", kind]),
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

    if let Some(settled) = obs.settled {
        let bound = s.file.run.settle;
        checks.push(Check {
            what: "settled".into(),
            expected: format!("a clean pass changing nothing, within {bound}"),
            actual: if settled {
                "yes".into()
            } else {
                format!("no: every one of the {bound} clean passes changed something")
            },
            why: String::new(),
            passed: settled,
            popbridge_only: false,
            status: if settled {
                CheckStatus::Held
            } else {
                CheckStatus::Failed
            },
            line: s.line_of(&["run", "settle"]),
        });
    }
    if obs.skipped.is_some() {
        // Nothing ran: there is nothing to hold the connector to.
        checks.clear();
    }
    let passed = obs.error.is_none() && checks.iter().all(|c| c.passed);
    let mut not_applicable = Vec::new();
    if s.clock == Clock::Paused && obs.clock == Clock::Real {
        not_applicable.push(format!(
            "[run] clock = \"paused\"{}: an external connector needs real sockets, so the \
             scenario ran on the real clock (every delay took its real time)",
            if s.file.run.clock.is_none() {
                " (the default: this scenario has delays)"
            } else {
                ""
            }
        ));
    }
    if external {
        for (pass, point) in &s.crashes {
            not_applicable.push(format!(
                "[run] crash (pass {pass}, at {} #{}): crash points apply to popbridge only; \
                 the external connector ran every pass to its end",
                point.step, point.nth
            ));
        }
        if let Some(sabotage) = s.sabotage {
            not_applicable.push(format!(
                "[run] sabotage ({}): a broken popbridge; the external connector ran as it is",
                sabotage.name()
            ));
        }
        if !expect.events.is_empty() {
            not_applicable
                .push("[expect.events]: an external connector has no popbridge events".to_string());
        }
    }
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
        totals: decided.totals,
        events,
        checks,
        unmatched: decided.unmatched,
        error: obs.error.clone(),
        elapsed_ms: obs.elapsed.as_millis() as u64,
        clock: obs.clock,
        virtual_ms: obs.virtual_elapsed.map(|d| d.as_millis() as u64),
        connector: obs.connector.clone(),
        external,
        external_runs: obs.external_runs.clone(),
        not_applicable,
        timeout_ms: s.timeout.as_millis() as u64,
        skipped: obs.skipped.clone(),
        profile: s.profile.clone(),
        profiles: Vec::new(),
        attachment_sizes: s
            .messages
            .iter()
            .filter(|p| p.attachment_octets > 0)
            .map(|p| AttachmentSize {
                name: p.name.clone(),
                attachments: p.attachment_octets,
                wire: p.data.len() as u64,
            })
            .collect(),
    }
}

/// How an expectation came out: held or failed, except that a popbridge-only expectation
/// that does not hold for an external connector is a difference, not a failure.
fn status(held: bool, popbridge_only: bool, external: bool) -> CheckStatus {
    match (held, popbridge_only && external) {
        (true, _) => CheckStatus::Held,
        (false, true) => CheckStatus::DiffersFromPopbridge,
        (false, false) => CheckStatus::Failed,
    }
}

fn summarise(items: &[String]) -> String {
    first_few(items, 3, "; ", "; and")
}

/// The first `shown` of `items` joined by `sep`, then `{and} N more` when there are more.
pub(crate) fn first_few(items: &[impl AsRef<str>], shown: usize, sep: &str, and: &str) -> String {
    let mut s = items
        .iter()
        .take(shown)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(sep);
    if items.len() > shown {
        let _ = write!(s, "{and} {} more", items.len() - shown);
    }
    s
}

/// A scenario file that could not be read or does not parse: a structured entry of the
/// JSON report (`invalid`) and a failing testcase of the JUnit report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidFile {
    /// The file, as given.
    pub file: String,
    /// The 1-based line the problem is on, when known.
    pub line: Option<usize>,
    /// The key path the problem is about (`pop3.mailbox[0].message[1].size`), when known.
    pub key: Option<String>,
    /// What is wrong, without the file, line and key.
    pub message: String,
}

impl InvalidFile {
    /// The entry for `file`, which failed to load with `e`.
    pub fn new(file: &std::path::Path, e: &crate::Error) -> Self {
        let message = match e {
            crate::Error::Invalid { message, .. } => message.clone(),
            crate::Error::Read { source, .. } => format!("cannot read: {source}"),
            other => other.to_string(),
        };
        Self {
            file: file.display().to_string(),
            line: e.line(),
            key: e.key().map(str::to_string),
            message,
        }
    }

    /// `file:line: key: message`, as the table mode prints it.
    pub fn line_text(&self) -> String {
        let mut s = self.file.clone();
        if let Some(l) = self.line {
            let _ = write!(s, ":{l}");
        }
        s.push_str(": ");
        if let Some(k) = &self.key {
            let _ = write!(s, "{k}: ");
        }
        s.push_str(&self.message);
        s
    }
}
