//! `poplab chaos` as its users rely on it: the oracle catches a connector that loses or
//! duplicates mail (shown with deliberately broken builds), a failure is shrunk into a
//! scenario file that `poplab run` reproduces, a seed replays exactly, the old connector's
//! failures are reported as expected under `--profile sbs2008`, and popbridge keeps every
//! promise over a sweep of seeds.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};

use popbridge::faults::Sabotage;
use poplab::chaos::{self, ChaosReport, Options, Profile};
use poplab::Connector;

mod common;
use common::runtime;

fn options(seed: u64, runs: u64) -> Options {
    Options {
        runs,
        seed,
        jobs: 2,
        profile: Profile::Default,
        connector: Connector::Popbridge,
        save_failures: None,
        sabotage: None,
        save_worlds: None,
    }
}

fn run(opts: &Options) -> ChaosReport {
    runtime().block_on(chaos::run(opts, |_, _, _| {}))
}

/// Seeds 3 and 4 run with `sabotage`, failures saved in `dir`: the report, checked failed.
fn sabotaged(sabotage: Sabotage, dir: &Path) -> ChaosReport {
    let mut opts = options(3, 2);
    opts.sabotage = Some(sabotage);
    opts.save_failures = Some(dir.to_path_buf());
    let report = run(&opts);
    assert!(!report.passed(), "{}", report.render_table());
    report
}

/// The first saved reproduction of a report.
fn saved(report: &ChaosReport) -> PathBuf {
    let path = report
        .failures
        .iter()
        .find_map(|f| f.saved.clone())
        .unwrap_or_else(|| panic!("no saved failure: {}", report.render_table()));
    PathBuf::from(path)
}

#[test]
fn popbridge_keeps_every_promise_over_a_sweep_of_seeds() {
    // CI runs 1,000 seeds on a release build (.ci/run); this is the quick guard.
    let report = run(&options(1, 30));
    assert!(report.passed(), "{}", report.render_table());
    assert_eq!(report.runs, 30);
    // The sweep really had faults, crashes and poison to survive.
    assert!(report.classes.keys().any(|c| c.starts_with("crash-")));
    assert!(report.classes.contains_key("smtp-reply-lost"));
    assert!(report.total.quarantined > 0 && report.total.delivered > 100);
    assert!(report.classes.contains_key("message-liar"));
}

#[test]
fn a_seed_replays_to_the_same_json_report() {
    let opts = options(4242, 4);
    let a = serde_json::to_string_pretty(&run(&opts).to_json()).unwrap();
    let b = serde_json::to_string_pretty(&run(&opts).to_json()).unwrap();
    assert_eq!(a, b);
    assert!(a.contains("\"seed\": 4242"), "{a}");
}

#[test]
fn a_build_that_deletes_before_the_ledger_records_is_caught_and_shrunk() {
    let dir = tempfile::tempdir().unwrap();
    // Seeds 3 and 4 lose mail with this build.
    let report = sabotaged(Sabotage::DeleBeforeLedger, dir.path());
    assert!(report.violations.get("lost").copied().unwrap_or(0) > 0);
    assert!(report.total.lost > 0);
    // The shrunk reproduction is small and ordinary: `poplab run` shows the loss.
    let f = report.failures.iter().find(|f| f.saved.is_some()).unwrap();
    let (messages, faults) = f.shrunk_to.unwrap();
    assert!(
        messages <= 5 && faults <= 3,
        "shrunk to {messages}, {faults}"
    );
    let path = saved(&report);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("chaos seed {}", f.seed)), "{text}");
    assert!(text.contains("sabotage = \"dele-before-ledger\""), "{text}");
    let replay = runtime().block_on(poplab::run_file(&path)).unwrap();
    assert!(!replay.passed(), "{}", replay.render_table());
    assert!(replay.totals.lost > 0, "{}", replay.render_table());
}

#[test]
fn a_build_that_skips_the_ledger_check_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    // Seeds 3 and 4 duplicate mail with this build.
    let report = sabotaged(Sabotage::SkipLedgerCheck, dir.path());
    assert!(report.total.avoidable_duplicates > 0);
    assert!(report.violations.contains_key("avoidable duplicate"));
    let replay = runtime()
        .block_on(poplab::run_file(saved(&report)))
        .unwrap();
    assert!(!replay.passed(), "{}", replay.render_table());
    assert!(replay.totals.unexplained > 0, "{}", replay.render_table());
}

#[test]
fn the_old_connectors_failures_are_expected_under_sbs2008() {
    let mut opts = options(1, 6);
    opts.profile = Profile::Sbs2008;
    let report = run(&opts);
    // Its stalls and losses are what the profile reproduces: reported, not failures.
    assert!(report.passed(), "{}", report.render_table());
    let expected: u64 = report.expected.values().sum();
    assert!(expected > 0, "{}", report.render_table());
    assert!(
        report
            .render_table()
            .contains("expected under the sbs2008 profile"),
        "{}",
        report.render_table()
    );
}

/// CI relies on the exit status: 1 when a run broke a promise, 0 when none did.
#[test]
fn the_binary_exits_1_on_a_broken_promise_and_0_otherwise() {
    let chaos = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_poplab"))
            .args(["chaos", "--runs", "1", "--seed", "3"])
            .args(extra)
            .output()
            .expect("run poplab")
    };
    let broken = chaos(&["--sabotage", "skip-ledger-check"]);
    let text = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL"), "{text}");
    let sound = chaos(&[]);
    let text = String::from_utf8_lossy(&sound.stdout);
    assert_eq!(sound.status.code(), Some(0), "{text}");
    assert!(text.contains("PASS"), "{text}");
}
