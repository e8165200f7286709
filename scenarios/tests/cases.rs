//! Every scenario under `cases/` as a test (rstest `#[files]`), its report an insta
//! snapshot (run time redacted; the runner already hides temporary paths and ports), and
//! the harness's own acceptance: a wrong expectation fails, names expected and actual,
//! and makes the `poplab` binary exit 1.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};

use rstest::rstest;

mod common;
use common::{poplab, runtime, wrong_copy};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases")
}

#[rstest]
fn case(#[files("cases/*.toml")] path: PathBuf) {
    let report = runtime()
        .block_on(poplab::run_file(&path))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = report.render_table();
    assert!(report.passed(), "{text}");
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    insta::with_settings!({
        filters => vec![(r"\(\d+\.\d+ s\)", "([DURATION])")],
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!("poplab run scenarios/cases/{name}.toml"),
    }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn a_wrong_expectation_fails_and_says_expected_and_got() {
    let dir = tempfile::tempdir().unwrap();
    let report = runtime()
        .block_on(poplab::run_file(wrong_copy(dir.path())))
        .unwrap();
    assert!(!report.passed());
    let failures = report.failures();
    assert_eq!(
        failures,
        ["hello: expected left, got delivered (accepted, delivered to info@contoso.local)"]
    );
    let table = report.render_table();
    assert!(
        table.contains("FAIL: 1 of 13 expectations failed"),
        "{table}"
    );
    assert!(
        table.contains(
            "    hello: expected left, got delivered (accepted, delivered to info@contoso.local)"
        ),
        "{table}"
    );
    let json = report.to_json();
    assert_eq!(json["passed"], false);
    let check = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "hello")
        .unwrap();
    assert_eq!(check["expected"], "left");
    assert_eq!(check["actual"], "delivered");
}

#[test]
fn the_binary_exits_1_on_a_wrong_expectation_and_0_on_a_good_case() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = wrong_copy(dir.path());
    let (code, out, err) = poplab(&["run", wrong.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("hello: expected left, got delivered"), "{out}");
    assert!(out.trim_end().ends_with("0 passed, 1 failed"), "{out}");

    let good = cases_dir().join("basic-delivery.toml");
    let (code, out, err) = poplab(&["run", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("PASS: 13 of 13 expectations hold"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 0 failed"), "{out}");

    // A folder: every *.toml inside, sorted; one bad one fails the run.
    std::fs::copy(&good, dir.path().join("a-good.toml")).unwrap();
    let (code, out, err) = poplab(&["run", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    let (a, b) = (
        out.find("== a-good").unwrap(),
        out.find("== basic-delivery-wrong").unwrap(),
    );
    assert!(a < b, "{out}");
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");

    // --json: one document on stdout, the closing line on stderr.
    let (code, out, err) = poplab(&["run", "--json", wrong.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["failed"], 1);
    assert_eq!(doc["scenarios"][0]["labels"][0]["label"], "hello");
    assert!(err.contains("0 passed, 1 failed"), "{err}");
}

#[test]
fn the_binary_exits_2_on_an_invalid_file_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_case(dir.path(), "typo.toml", "description = \"typo\"\n\n[[pop3.mailbox]]\nuser = \"info\"\n\n[[pop3.mailbox.message]]\nlabel = \"a\"\nsubjet = \"hi\"\n");
    let (code, out, err) = poplab(&["run", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}{err}");
    let want = format!(
        "{}:8: pop3.mailbox[0].message[0].subjet: unknown key \"subjet\"",
        path.display()
    );
    assert!(err.contains(&want), "{err}");
    let (code, _, err) = poplab(&["run", "/nonexistent/poplab/case.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/poplab/case.toml"), "{err}");
}

/// Writes `text` as file `name` in `dir`; its path.
fn write_case(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run_text(name: &str, text: &str) -> poplab::ScenarioReport {
    let dir = tempfile::tempdir().unwrap();
    let path = write_case(dir.path(), name, text);
    runtime()
        .block_on(poplab::run_file(&path))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_run_past_its_timeout_is_a_failed_report() {
    let report = run_text(
        "slow.toml",
        r#"
[[pop3.mailbox]]
[[pop3.mailbox.message]]
label = "m"
[[pop3.fault]]
on = "greeting"
action = "delay"
delay = "20s"
[run]
timeout = "1s"
clock = "real"
[expect.labels]
m = "delivered"
"#,
    );
    assert!(!report.passed());
    let table = report.render_table();
    assert!(
        table.contains(
            "run: expected it to finish, got an error (timed out after 1s (pass 1 of 1))"
        ),
        "{table}"
    );
    assert!(report.elapsed_ms < 15_000, "{}", report.elapsed_ms);
    // What the servers saw is still reported.
    assert_eq!(report.messages[0].outcome, poplab::schema::Outcome::Left);
}

#[test]
fn a_temporary_refusal_without_uidl_is_left_and_explained_by_its_event() {
    // No UIDL: the connector keys the message by its header digest, and the report still
    // finds the message's deferral event.
    let report = run_text(
        "defer.toml",
        r#"
[pop3]
uidl = false
[[pop3.mailbox]]
[[pop3.mailbox.message]]
label = "later"
from = "later@example.net"
[[pop3.mailbox.message]]
label = "now"
from = "now@example.net"
[[smtp.fault]]
on = "data-end"
action = "reply"
reply = "451 4.3.0 Try again later"
[expect.labels]
later = "left"
now = "delivered"
[expect.events]
"message.deferred" = 1
"#,
    );
    let table = report.render_table();
    assert!(report.passed(), "{table}");
    let later = &report.messages[0];
    assert!(
        later.why.starts_with("message.deferred: ") && later.why.contains("451 4.3.0"),
        "{table}"
    );
}

#[test]
fn a_slow_server_runs_on_the_paused_clock_in_well_under_a_second() {
    let path = cases_dir().join("slow-server-timeouts.toml");
    let started = std::time::Instant::now();
    let report = runtime()
        .block_on(poplab::run_file(&path))
        .unwrap_or_else(|e| panic!("{e}"));
    let real = started.elapsed();
    let table = report.render_table();
    assert!(report.passed(), "{table}");
    assert!(real < std::time::Duration::from_secs(10), "{real:?}");
    assert_eq!(report.clock, poplab::schema::Clock::Paused);
    // The 10-minute stall happened, in virtual time.
    let virtual_ms = report.virtual_ms.expect("virtual time on the paused clock");
    assert!(virtual_ms >= 10 * 60 * 1000, "{virtual_ms}");
    let json = report.to_json();
    assert_eq!(json["clock"], "paused");
    assert_eq!(json["virtual_ms"], virtual_ms);
    assert!(
        table.contains("clock: paused, 10m 0s of virtual time"),
        "{table}"
    );
}

#[test]
fn after_the_first_pass_the_stalled_message_and_what_follows_are_left() {
    let text = std::fs::read_to_string(cases_dir().join("slow-server-timeouts.toml")).unwrap();
    let mut one = String::new();
    for line in text.lines() {
        // One pass, and the state it leaves: expectations rewritten, events dropped.
        let line = match line.split('#').next().unwrap_or("").trim() {
            "passes = 2" => "passes = 1",
            "stalled = \"delivered\"" => "stalled = \"left\"",
            "after = \"delivered\"" => "after = \"left\"",
            "[expect.events]" => break,
            _ => line,
        };
        one.push_str(line);
        one.push('\n');
    }
    let report = run_text("slow-server-one-pass.toml", &one);
    let table = report.render_table();
    assert!(report.passed(), "{table}");
    assert_eq!(report.totals.lost, 0);
    assert_eq!(report.events.get("pass.interrupted"), Some(&1), "{table}");
    assert_eq!(report.events.get("message.delivered"), Some(&1), "{table}");
    let before = &report.messages[0];
    assert_eq!(before.outcome, poplab::schema::Outcome::Delivered);
    assert!(
        report.messages[1]
            .why
            .contains("did not complete its reply to RETR 2 within 300 s (timeouts.command)"),
        "{table}"
    );
}

#[test]
fn a_real_clock_scenario_reports_no_virtual_time() {
    let report = runtime()
        .block_on(poplab::run_file(cases_dir().join("basic-delivery.toml")))
        .unwrap();
    assert_eq!(report.clock, poplab::schema::Clock::Real);
    assert_eq!(report.virtual_ms, None);
    assert_eq!(report.to_json()["clock"], "real");
    assert!(!report.render_table().contains("clock:"));
}

#[test]
fn an_external_connector_falls_back_to_the_real_clock_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_case(
        dir.path(),
        "ext.toml",
        "[[pop3.fault]]\non = \"greeting\"\naction = \"delay\"\ndelay = \"1s\"\n",
    );
    let connector = poplab::Connector::External {
        template: "true {user}".into(),
    };
    let report = runtime()
        .block_on(poplab::run_file_with(&path, &connector))
        .unwrap();
    assert_eq!(report.clock, poplab::schema::Clock::Real);
    assert_eq!(report.virtual_ms, None);
    assert!(
        report
            .not_applicable
            .iter()
            .any(|n| n.starts_with("[run] clock = \"paused\"") && n.contains("real clock")),
        "{:?}",
        report.not_applicable
    );
}

#[test]
fn an_oauth2_provider_works_on_the_paused_clock_over_in_memory_streams_with_rotation() {
    let report = run_text(
        "oauth2-paused.toml",
        r#"description = "oauth2 on the paused clock, a rotating provider, TLS POP3 too"
[pop3]
tls = "implicit"
[[pop3.mailbox]]
user = "info"
auth = ["xoauth2"]
[pop3.mailbox.oauth2]
rotate = true
client_secret = ""
[[pop3.mailbox.message]]
label = "m"
count = 3
[connector.limits]
max_messages_per_session = 1
[run]
passes = 3
clock = "paused"
[expect.labels]
m = "delivered"
[expect.events]
"auth.token_refreshed" = 1
"auth.failed" = 0
"#,
    );
    let text = report.render_table();
    assert!(report.passed(), "{text}");
    assert!(text.contains("clock: paused"), "{text}");
}

#[test]
fn an_oauth2_mailbox_must_accept_xoauth2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_case(dir.path(), "bad.toml", "[[pop3.mailbox]]\nuser = \"info\"\nauth = [\"user\"]\n[pop3.mailbox.oauth2]\nlifetime = \"0s\"\n");
    let e = poplab::schema::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("pop3.mailbox[0].auth") && e.contains("xoauth2"),
        "{e}"
    );
    std::fs::write(
        &path,
        "[[pop3.mailbox]]\nuser = \"info\"\n[pop3.mailbox.oauth2]\nlifetime = \"0s\"\nrotat = true\n",
    )
    .unwrap();
    let e = poplab::schema::load(&path).unwrap_err().to_string();
    assert!(e.contains("unknown") && e.contains("rotat"), "{e}");
}
