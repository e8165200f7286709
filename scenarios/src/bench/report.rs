//! What `poplab bench` prints: per connector and per ceiling leg, each round's figures,
//! their median with min–max, the ratios; as a markdown table or one JSON document.
//!
//! Units: msg/s; MB/s and peak RSS MB in 10^6 octets; latencies in milliseconds; CPU in
//! seconds. A figure that was not measured is `—` in the table and `null` in JSON.
//! Must never: invent a figure (a missing one stays missing), or drop a failed round
//! from what is said (it is named, and excluded from the medians).

use serde::Serialize;
use serde_json::{json, Value};

/// What one round of one connector (or ceiling leg) measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    /// Wall time of the run, in seconds.
    pub wall_s: f64,
    /// Messages moved.
    pub messages: u64,
    /// Octets of message data moved.
    pub bytes: u64,
    /// Median per-message latency, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th-percentile per-message latency, in milliseconds.
    pub p99_ms: Option<f64>,
    /// CPU seconds (user + system) of the connector's processes.
    pub cpu_s: Option<f64>,
    /// Peak resident set size of its largest process, in MB.
    pub peak_rss_mb: Option<f64>,
    /// How many of the machine's cores were busy on average during the run, every process
    /// counted (the servers' too): near the core count, the machine was the limit.
    pub busy_cores: Option<f64>,
    /// Why the round does not count (the mailbox was not moved whole, a timeout...).
    pub failure: Option<String>,
    /// A ceiling leg's phases, in seconds: what the serial bound is made of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
}

/// Where a ceiling leg's time went, in seconds (see `ceiling::LegRun`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Connection to the first message asked for (greeting, login, LIST; or EHLO).
    pub setup_s: f64,
    /// Moving the messages.
    pub stream_s: f64,
    /// QUIT to its reply.
    pub quit_s: f64,
}

/// The serial bound of one round from the two legs' rounds: the POP3 reader's setup,
/// then the slower of the two legs' streaming, then the reader's QUIT. A connector must
/// log in and list before its first submission and QUIT after its last deletion, so
/// however well it overlaps the two legs it needs at least this long. `None` unless both
/// legs moved the whole mailbox.
pub fn serial_bound(pop3: &Round, smtp: &Round) -> Option<Round> {
    let (Some(p), Some(s)) = (pop3.phases, smtp.phases) else {
        return None;
    };
    if pop3.failure.is_some() || smtp.failure.is_some() {
        return None;
    }
    Some(Round {
        wall_s: p.setup_s + p.stream_s.max(s.stream_s) + p.quit_s,
        messages: pop3.messages,
        bytes: pop3.bytes,
        ..Round::default()
    })
}

impl Round {
    /// Messages per second.
    pub fn msg_per_s(&self) -> f64 {
        self.messages as f64 / self.wall_s.max(1e-9)
    }

    /// MB (10^6 octets) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall_s.max(1e-9)
    }
}

/// A connector, or one of the two ceiling legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A connector moving the mailbox end to end.
    Connector,
    /// A connector measured without the latency proxy the others and the ceiling legs go
    /// through (`--compare-loopback`): no ratio to the ceilings.
    LoopbackConnector,
    /// The pipelined POP3 reader.
    Pop3Ceiling,
    /// The pipelined SMTP writer.
    SmtpCeiling,
    /// Computed from the two legs' phases (see [`serial_bound`]), not run.
    SerialBound,
}

impl Kind {
    /// True for a connector row (either kind).
    pub fn is_connector(self) -> bool {
        matches!(self, Self::Connector | Self::LoopbackConnector)
    }
}

/// One line of the table: a name and its rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// How it is named.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Every round, failed ones included.
    pub rounds: Vec<Round>,
}

/// The median of the successful rounds, with their range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Stat {
    /// The statistic of `values`; `None` when there are none.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }
}

impl Row {
    /// `f` over the rounds that count.
    pub fn stat(&self, f: impl Fn(&Round) -> Option<f64>) -> Option<Stat> {
        Stat::of(
            self.rounds
                .iter()
                .filter(|r| r.failure.is_none())
                .filter_map(f)
                .collect(),
        )
    }

    /// Median messages per second.
    pub fn rate(&self) -> Option<Stat> {
        self.stat(|r| Some(r.msg_per_s()))
    }

    /// The failed rounds, as `round N: why`.
    pub fn failures(&self) -> Vec<String> {
        self.rounds
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.failure.as_ref().map(|f| format!("round {}: {f}", i + 1)))
            .collect()
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The parameters, as given and as resolved (sizes, servers, latency...).
    pub parameters: Value,
    /// Connectors first (in the order given), then the ceiling legs.
    pub rows: Vec<Row>,
    /// What p50/p99 mean in this run.
    pub latency_basis: String,
    /// Notes printed under the table.
    pub notes: Vec<String>,
}

impl Report {
    /// The slower ceiling leg (the lower median rate), when both were measured.
    pub fn slower_leg(&self) -> Option<&Row> {
        self.rows
            .iter()
            .filter(|r| matches!(r.kind, Kind::Pop3Ceiling | Kind::SmtpCeiling))
            .filter(|r| r.rate().is_some())
            .min_by(|a, b| {
                let (x, y) = (a.rate().map(|s| s.median), b.rate().map(|s| s.median));
                x.unwrap_or(f64::MAX).total_cmp(&y.unwrap_or(f64::MAX))
            })
    }

    /// The serial bound's row, when both legs were measured.
    pub fn serial_bound(&self) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.kind == Kind::SerialBound && r.rate().is_some())
    }

    fn first_connector(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.kind.is_connector())
    }

    fn ratio(row: &Row, to: Option<&Row>) -> Option<f64> {
        if row.kind == Kind::LoopbackConnector && to.is_some_and(|t| !t.kind.is_connector()) {
            return None;
        }
        let mine = row.rate()?.median;
        let theirs = to?.rate()?.median;
        (theirs > 0.0).then(|| mine / theirs)
    }

    /// True when every round of every row moved the whole mailbox.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.failures().is_empty())
    }

    /// The markdown table, the notes and any failed rounds.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        out.push_str("| connector | msg/s | MB/s | p50 ms | p99 ms | CPU s | peak RSS MB | busy cores | ×slower leg | ×serial bound | ×first connector |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        let slower = self.slower_leg();
        let bound = self.serial_bound();
        let first = self.first_connector();
        for row in &self.rows {
            let cell = |s: Option<Stat>, digits: usize| match s {
                None => "—".to_string(),
                // A figure below 10 keeps two decimals (one 60 MiB message: 2.41 msg/s).
                Some(s) if s.median < 10.0 && digits < 2 => {
                    let d = 2;
                    if self.rounds_counted(row) > 1 {
                        format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max)
                    } else {
                        format!("{:.d$}", s.median)
                    }
                }
                Some(s) if self.rounds_counted(row) > 1 => {
                    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
                }
                Some(s) => format!("{:.d$}", s.median, d = digits),
            };
            let ratio = |to: Option<&Row>| {
                Self::ratio(row, to).map_or("—".to_string(), |r| {
                    // Small ratios keep three decimals (fetchmail at 40 ms: 0.004).
                    if r < 0.1 {
                        format!("{r:.3}")
                    } else {
                        format!("{r:.2}")
                    }
                })
            };
            let name = match row.kind {
                Kind::Connector | Kind::LoopbackConnector => row.name.clone(),
                Kind::SerialBound => format!("{} (computed)", row.name),
                _ => format!("{} (ceiling)", row.name),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                name.replace('|', "\\|"),
                cell(row.rate(), 0),
                cell(row.stat(|r| Some(r.mb_per_s())), 1),
                cell(row.stat(|r| r.p50_ms), 1),
                cell(row.stat(|r| r.p99_ms), 1),
                cell(row.stat(|r| r.cpu_s), 2),
                cell(row.stat(|r| r.peak_rss_mb), 1),
                cell(row.stat(|r| r.busy_cores), 2),
                ratio(slower),
                if row.kind.is_connector() {
                    ratio(bound)
                } else {
                    "—".into()
                },
                if row.kind.is_connector() {
                    ratio(first)
                } else {
                    "—".into()
                },
            ));
        }
        out.push('\n');
        if let Some(s) = slower {
            out.push_str(&format!(
                "slower leg: {} ({} msg/s)\n",
                s.name,
                s.rate().map_or("—".into(), |r| format!("{:.0}", r.median))
            ));
        }
        if let Some(b) = bound {
            out.push_str(&format!(
                "serial bound: {} msg/s, the POP3 reader's login, LIST and QUIT around the slower leg's streaming: by the ceilings measured, the best a connector that lists before its first message and QUITs after its last deletion can do\n",
                b.rate().map_or("—".into(), |r| format!("{:.0}", r.median))
            ));
        }
        out.push_str(&format!("p50/p99: {}\n", self.latency_basis));
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for row in &self.rows {
            for f in row.failures() {
                out.push_str(&format!("FAILED: {}: {f}\n", row.name));
            }
        }
        out
    }

    fn rounds_counted(&self, row: &Row) -> usize {
        row.rounds.iter().filter(|r| r.failure.is_none()).count()
    }

    /// The same figures as one JSON document.
    pub fn to_json(&self) -> Value {
        let slower = self.slower_leg();
        let bound = self.serial_bound();
        let first = self.first_connector();
        let row_json = |row: &Row| {
            json!({
                "name": row.name,
                "kind": row.kind,
                "msg_per_s": row.rate(),
                "mb_per_s": row.stat(|r| Some(r.mb_per_s())),
                "p50_ms": row.stat(|r| r.p50_ms),
                "p99_ms": row.stat(|r| r.p99_ms),
                "cpu_s": row.stat(|r| r.cpu_s),
                "peak_rss_mb": row.stat(|r| r.peak_rss_mb),
                "busy_cores": row.stat(|r| r.busy_cores),
                "x_slower_leg": Self::ratio(row, slower),
                "x_serial_bound": if row.kind.is_connector() { Self::ratio(row, bound) } else { None },
                "x_first_connector": if row.kind.is_connector() { Self::ratio(row, first) } else { None },
                "rounds": row.rounds,
                "failures": row.failures(),
            })
        };
        json!({
            "parameters": self.parameters,
            "connectors": self.rows.iter().filter(|r| r.kind.is_connector()).map(row_json).collect::<Vec<_>>(),
            "ceilings": self.rows.iter().filter(|r| !r.kind.is_connector()).map(row_json).collect::<Vec<_>>(),
            "slower_leg": slower.map(|r| r.name.clone()),
            "serial_bound": bound.and_then(Row::rate),
            "latency_basis": self.latency_basis,
            "notes": self.notes,
            "passed": self.passed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: Vec<(&str, Kind, Vec<Round>)>) -> Report {
        Report {
            parameters: json!({}),
            rows: (rows.into_iter())
                .map(|(name, kind, rounds)| Row {
                    name: name.into(),
                    kind,
                    rounds,
                })
                .collect(),
            latency_basis: "x".into(),
            notes: vec![],
        }
    }

    fn round(wall_s: f64, messages: u64) -> Round {
        Round {
            wall_s,
            messages,
            bytes: messages * 1000,
            ..Round::default()
        }
    }

    #[test]
    fn medians_skip_failed_rounds_and_ratios_use_the_slower_leg() {
        let mut failed = round(1.0, 5);
        failed.failure = Some("moved 5 of 10".into());
        let report = report(vec![
            (
                "a",
                Kind::Connector,
                vec![round(1.0, 10), failed, round(2.0, 10), round(0.5, 10)],
            ),
            ("b", Kind::Connector, vec![round(1.0, 20)]),
            ("POP3 reader", Kind::Pop3Ceiling, vec![round(1.0, 40)]),
            ("SMTP writer", Kind::SmtpCeiling, vec![round(1.0, 100)]),
        ]);
        assert_eq!(
            report.rows[0].rate(),
            Some(Stat {
                median: 10.0,
                min: 5.0,
                max: 20.0
            })
        );
        assert_eq!(
            report.slower_leg().map(|r| r.name.as_str()),
            Some("POP3 reader")
        );
        let j = report.to_json();
        assert_eq!(j["connectors"][0]["x_slower_leg"], json!(0.25));
        assert_eq!(j["connectors"][1]["x_first_connector"], json!(2.0));
        assert_eq!(
            j["connectors"][0]["failures"],
            json!(["round 2: moved 5 of 10"])
        );
        assert_eq!(j["passed"], json!(false));
        let t = report.render_table();
        assert!(
            t.contains("| a | 10 (5–20) | 0.01 (0.01–0.02) | — | — |"),
            "{t}"
        );
        assert!(t.contains("FAILED: a: round 2: moved 5 of 10"), "{t}");
        assert!(t.contains("| POP3 reader (ceiling) | 40 |"), "{t}");
    }

    fn leg(messages: u64, setup_s: f64, stream_s: f64, quit_s: f64) -> Round {
        Round {
            phases: Some(Phases {
                setup_s,
                stream_s,
                quit_s,
            }),
            ..round(setup_s + stream_s + quit_s + 0.1, messages)
        }
    }

    #[test]
    fn the_serial_bound_is_login_then_the_slower_stream_then_quit_and_never_the_slower_leg() {
        // The reader streams in 0.5 s, the writer in 0.8 s: 0.2 + 0.8 + 0.1.
        let bound = serial_bound(&leg(100, 0.2, 0.5, 0.1), &leg(100, 0.05, 0.8, 0.01));
        let bound = bound.expect("both legs moved everything");
        assert!((bound.wall_s - 1.1).abs() < 1e-9, "{}", bound.wall_s);
        assert_eq!((bound.messages, bound.bytes), (100, 100_000));
        // The writer's own setup and QUIT are not the connector's: only the reader's are.
        let faster_writer = serial_bound(&leg(100, 0.2, 0.5, 0.1), &leg(100, 3.0, 0.1, 3.0));
        assert!((faster_writer.expect("moved").wall_s - 0.8).abs() < 1e-9);
        // A failed leg, or one without phases, gives none.
        let mut failed = leg(100, 0.2, 0.5, 0.1);
        failed.failure = Some("timed out".into());
        assert!(serial_bound(&failed, &leg(100, 0.05, 0.8, 0.01)).is_none());
        assert!(serial_bound(&round(1.0, 100), &leg(100, 0.05, 0.8, 0.01)).is_none());

        let report = report(vec![
            ("a", Kind::Connector, vec![round(2.2, 100)]),
            (
                "POP3 reader",
                Kind::Pop3Ceiling,
                vec![leg(100, 0.2, 0.5, 0.1)],
            ),
            (
                "SMTP writer",
                Kind::SmtpCeiling,
                vec![leg(100, 0.05, 0.8, 0.01)],
            ),
            ("serial bound", Kind::SerialBound, vec![bound]),
        ]);
        // Slower than both legs, yet never taken for the slower leg.
        assert_eq!(
            report.slower_leg().map(|r| r.name.as_str()),
            Some("SMTP writer")
        );
        let j = report.to_json();
        assert_eq!(j["connectors"][0]["x_serial_bound"], json!(0.5));
        assert_eq!(j["ceilings"][2]["x_serial_bound"], json!(null));
        let t = report.render_table();
        assert!(t.contains("| serial bound (computed) | 91 |"), "{t}");
        assert!(t.contains("| 0.50 | 1.00 |"), "{t}");
        assert!(t.contains("serial bound: 91 msg/s"), "{t}");
    }
}
