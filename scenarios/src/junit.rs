//! The JUnit XML report of `poplab run --junit FILE`, the format CI systems read.
//!
//! Responsible for: one `<testsuite>` per path given on the command line (a file, or a
//! folder and the scenario files in it), one `<testcase>` per scenario file, a
//! `<failure>` listing each broken expectation as `FILE:LINE: what: expected X, got Y`,
//! a failing testcase for a file that does not parse, `<skipped>` for a scenario the
//! connector cannot run. XML is written by `quick-junit`.
//! Must never: decide whether a scenario passed (that is `report`), or write files.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::report::{InvalidFile, ScenarioReport};

/// Why the JUnit document could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the JUnit report: {0}")]
pub struct JunitError(#[from] quick_junit::SerializeError);

/// One scenario file's result: its report, or why it could not be loaded.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// It ran (or was skipped by the connector).
    Ran(&'a ScenarioReport),
    /// It does not parse or could not be read.
    Invalid(&'a InvalidFile),
}

/// One `<testsuite>`: a path given to `poplab run` and its scenario files' results.
#[derive(Debug, Clone)]
pub struct Suite<'a> {
    /// The path as given (a file or a folder).
    pub name: String,
    /// Its files' results, in run order.
    pub entries: Vec<Entry<'a>>,
}

/// The JUnit XML document for `suites`, run against `connector`.
pub fn render(suites: &[Suite<'_>], connector: &str) -> Result<String, JunitError> {
    let mut report = Report::new("poplab");
    for suite in suites {
        let mut ts = TestSuite::new(suite.name.as_str());
        ts.add_property(Property::new("connector", connector));
        let mut total = Duration::ZERO;
        for entry in &suite.entries {
            let case = match entry {
                Entry::Ran(r) => {
                    total += Duration::from_millis(r.elapsed_ms);
                    scenario_case(&suite.name, r)
                }
                Entry::Invalid(bad) => invalid_case(&suite.name, bad),
            };
            ts.add_test_case(case);
        }
        ts.set_time(total);
        report.add_test_suite(ts);
    }
    Ok(report.to_string()?)
}

/// The testcase name of a file: its name without `.toml`.
fn case_name(file: &str) -> String {
    std::path::Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned())
}

fn scenario_case(suite: &str, r: &ScenarioReport) -> TestCase {
    let status = if let Some(why) = &r.skipped {
        let mut st = TestCaseStatus::skipped();
        st.set_message(format!("skipped with this connector: {why}"));
        st
    } else if r.passed() {
        TestCaseStatus::success()
    } else {
        let mut lines: Vec<String> = r
            .error
            .iter()
            .map(|e| format!("{}: run: expected it to finish, got an error ({e})", r.file))
            .collect();
        lines.extend(r.checks.iter().filter(|c| !c.passed).map(|c| match c.line {
            Some(l) => format!("{}:{l}: {}", r.file, c.failure_line()),
            None => format!("{}: {} (implicit)", r.file, c.failure_line()),
        }));
        let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
        st.set_type("expectation");
        st.set_message(match lines.len() {
            1 => lines[0].clone(),
            n => format!("{n} expectations failed; first: {}", lines[0]),
        });
        st.set_description(lines.join("\n"));
        st
    };
    let mut case = TestCase::new(r.name.as_str(), status);
    case.set_classname(suite);
    case.set_time(Duration::from_millis(r.elapsed_ms));
    case.set_assertions(r.checks.len());
    case.set_system_out(r.render_table());
    case
}

fn invalid_case(suite: &str, bad: &InvalidFile) -> TestCase {
    let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
    st.set_type("invalid-scenario");
    st.set_message(bad.line_text());
    st.set_description(bad.line_text());
    let mut case = TestCase::new(case_name(&bad.file), st);
    case.set_classname(suite);
    case
}
