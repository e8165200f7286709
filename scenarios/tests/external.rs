//! `poplab run --connector-cmd` with the fetchmail template (scenarios/connectors/
//! fetchmail.sh) on the 1,200-message and drop-before-QUIT cases: every expectation that
//! is not popbridge-only holds (exit 0), the report names fetchmail, and the duplicates
//! fetchmail makes after a drop before QUIT are reported as a difference from popbridge.
//!
//! fetchmail missing skips the test (with the reason printed), unless
//! `POPBRIDGE_REQUIRE_PEERS=1` (CI), in which case it fails.
#![allow(missing_docs)]

mod common;
use common::{case, poplab_files, require_fetchmail, root, with_drop_before_quit};

const TEMPLATE: &str =
    "{script} {pop3_host} {pop3_port} {user} {password} {smtp_host} {smtp_port} {rcpt} {scratch}";

/// Asserts that `text` holds every one of `parts` (showing `shown` when one is missing).
fn says(text: &str, parts: &[&str], shown: &str) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from:\n{shown}");
    }
}

#[test]
fn fetchmail_through_the_twelve_hundred_and_drop_before_quit_cases() {
    if !require_fetchmail() {
        return;
    }
    let (stdout, twelve, drop) = with_drop_before_quit(
        TEMPLATE,
        &root().join("connectors/fetchmail.sh"),
        "twelve-hundred-three-passes.toml",
    );
    // The report names the connector.
    for part in [&twelve, &drop] {
        assert!(
            part.contains("connector: ") && part.contains("fetchmail.sh"),
            "{stdout}"
        );
        assert!(part.contains("not applicable: [expect.events]"), "{stdout}");
    }
    // 1,200: all delivered once, nothing differs from popbridge.
    says(
        &twelve,
        &[
            "msg    1200  delivered  delivered",
            "lost 0 (expected 0), duplicates 0 (expected 0)",
        ],
        &stdout,
    );
    assert!(!twelve.contains("differs from popbridge"), "{stdout}");
    // Drop before QUIT: fetchmail delivers the three messages again, and says so.
    says(
        &drop,
        &[
            "duplicates 3 (3 unexplained) (popbridge: 0)",
            "differs from popbridge: duplicates: popbridge 0, this connector 3",
            "pass 2, mailbox info: exit 0",
            "1 differs from popbridge",
        ],
        &stdout,
    );
}

#[test]
fn the_json_report_names_the_connector_and_each_checks_status() {
    if !require_fetchmail() {
        return;
    }
    let script = root().join("connectors/fetchmail.sh");
    let template = TEMPLATE.replace("{script}", &script.display().to_string());
    let (code, stdout, _) = poplab_files(
        &["run", "--json", "--connector-cmd", &template],
        &[case("drop-before-quit.toml")],
    );
    assert_eq!(code, Some(0), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["connector"], template.as_str());
    let sc = &doc["scenarios"][0];
    assert_eq!(sc["external"], true);
    assert_eq!(sc["duplicates"], 3);
    assert_eq!(sc["external_runs"].as_array().unwrap().len(), 2);
    let status = |what: &str| {
        sc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["what"] == what)
            .map(|c| c["status"].clone())
            .unwrap()
    };
    assert_eq!(status("duplicates"), "differs-from-popbridge");
    assert_eq!(status("lost"), "held");
    assert_eq!(status("msg"), "held");
    assert_eq!(status("events.\"message.delivered\""), "not-applicable");
}

#[test]
fn a_connector_that_does_nothing_fails_the_other_expectations_and_crash_is_not_applicable() {
    // Needs no peer: the "connector" only prints its arguments.
    let echo = "echo pass {pass} for {user} at {pop3_host}:{pop3_port} to {rcpt}";
    let (code, stdout, _) = poplab_files(
        &["run", "--connector-cmd", echo],
        &[case("crash-after-delivery.toml")],
    );
    assert_eq!(code, Some(1), "{stdout}");
    says(
        &stdout,
        &[
            "not applicable: [run] crash (pass 1",
            "pass 1, mailbox info: exit 0",
            "| pass 1 for info at 127.0.0.1:[POP3-PORT] to info@contoso.local",
            ": expected delivered, got left",
        ],
        &stdout,
    );
    assert!(!stdout.contains("events.\""), "{stdout}");

    // A template without a placeholder cannot reach the mocks: refused up front.
    let (code, _, stderr) = poplab_files(
        &["run", "--connector-cmd", "fetchmail"],
        &[case("basic-delivery.toml")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no placeholder"));
}

#[test]
fn an_oauth2_scenario_is_skipped_for_an_external_connector_and_said_so() {
    // Needs no peer: the "connector" leaves a file named after the mailbox it ran for.
    let dir = tempfile::tempdir().unwrap();
    let touch = format!("touch {}/{{user}}", dir.path().display());
    let (code, stdout, _) = poplab_files(
        &["run", "--connector-cmd", &touch],
        &[
            case("oauth2-token-refresh.toml"),
            case("basic-delivery.toml"),
        ],
    );
    assert!(
        !dir.path().join("info@example.com").exists(),
        "the command ran for the skipped scenario's mailbox"
    );
    assert!(dir.path().join("info").exists(), "the other scenario ran");
    assert!(
        stdout.contains("SKIPPED: the scenario needs OAuth2 (a [pop3.mailbox.oauth2] provider"),
        "{stdout}"
    );
    // The other case ran (and failed: `touch` delivers nothing); the skip is counted apart.
    assert!(
        stdout.trim_end().ends_with("0 passed, 1 failed, 1 skipped"),
        "{stdout}"
    );
    assert_eq!(code, Some(1), "{stdout}");
}
