//! poplab: scenario files, their runner and report.
//!
//! Responsible for: the scenario schema (`schema`, FORMAT.md), deterministic messages
//! (`generate`), the world a scenario runs in (`world`: both mocks on loopback and
//! popbridge in-process), deciding what became of each message (`outcome`) and the
//! report (`report`); and `chaos`, thousands of seeded fault schedules judged by an
//! oracle; `bench`, throughput of popbridge and other connectors beside the two legs'
//! ceilings. [`run_file`] is the front door; the `poplab` binary is a thin shell around it.
//! Must never: contain connector logic (popbridge is driven through its public API only),
//! or panic on a bad scenario file (every problem is an [`Error`] naming file, line, key).

pub mod bench;
pub mod capture;
pub mod chaos;
pub mod external;
pub mod generate;
pub mod junit;
pub mod outcome;
pub use mock_core::proxy;
pub mod report;
pub mod schema;
pub mod serve;
pub mod world;

use std::path::{Path, PathBuf};

pub use external::Connector;
pub use report::{Check, CheckStatus, ScenarioReport};
pub use schema::{Error, Scenario};

pub use mock_pop3;
pub use mock_smtp;

/// Loads, runs and checks one scenario file (bounded by its `[run] timeout`, 120 s by
/// default; a run that does not finish is a failed report, not an error).
pub async fn run_file(path: impl AsRef<Path>) -> Result<ScenarioReport, Error> {
    run_file_with(path, &Connector::Popbridge).await
}

/// Loads, runs and checks one scenario file against `connector` (popbridge in-process or
/// an external command); with `[run] profiles`, once per profile, in one report.
pub async fn run_file_with(
    path: impl AsRef<Path>,
    connector: &Connector,
) -> Result<ScenarioReport, Error> {
    let scenarios = schema::load_all(path.as_ref())?;
    let mut reports = Vec::with_capacity(scenarios.len());
    for scenario in &scenarios {
        reports.push(run_scenario_with(scenario, connector).await);
    }
    Ok(ScenarioReport::combine(reports))
}

/// Runs and checks a loaded scenario.
pub async fn run_scenario(scenario: &Scenario) -> ScenarioReport {
    run_scenario_with(scenario, &Connector::Popbridge).await
}

/// Runs and checks a loaded scenario against `connector`.
pub async fn run_scenario_with(scenario: &Scenario, connector: &Connector) -> ScenarioReport {
    let observed = world::run_with(scenario, connector).await;
    let decided = outcome::decide(&scenario.messages, &observed);
    report::build(scenario, &observed, decided)
}

/// The scenario files `paths` name: files as given, and every `*.toml` directly inside a
/// folder, sorted by name.
pub fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    Ok(scenario_groups(paths)?
        .into_iter()
        .flat_map(|(_, files)| files)
        .collect())
}

/// Like [`scenario_files`], grouped by the path that named them (a file alone, or a
/// folder and its files): the JUnit report's test suites.
pub fn scenario_groups(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<PathBuf>)>, Error> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| Error::Read {
            path: p.clone(),
            source,
        })?;
        if !meta.is_dir() {
            out.push((p.clone(), vec![p.clone()]));
            continue;
        }
        let read = std::fs::read_dir(p).map_err(|source| Error::Read {
            path: p.clone(),
            source,
        })?;
        let mut found: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "toml"))
            .collect();
        if found.is_empty() {
            return Err(Error::Invalid {
                path: p.clone(),
                line: None,
                key: None,
                message: "no *.toml scenario files in this folder".into(),
            });
        }
        found.sort();
        out.push((p.clone(), found));
    }
    Ok(out)
}

/// The closing line of a run: `N passed, M failed`.
pub fn summary_line(passed: usize, failed: usize) -> String {
    format!("{passed} passed, {failed} failed")
}

/// The closing line of a run with skipped scenarios: `N passed, M failed, K skipped`.
pub fn summary_line_skipped(passed: usize, failed: usize, skipped: usize) -> String {
    if skipped == 0 {
        summary_line(passed, failed)
    } else {
        format!("{passed} passed, {failed} failed, {skipped} skipped")
    }
}
