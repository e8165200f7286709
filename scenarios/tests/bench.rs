//! `poplab bench` smoke: 20 messages of 2 KiB, one round, against the mocks; the JSON has
//! its shape and says every message moved, for popbridge as a child process (when its
//! binary was built beside poplab) and in-process, and for both ceiling legs. No timing is
//! asserted: only that figures are there and positive. Bad arguments exit 2.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// `poplab bench` over 20 messages of 2 KiB, one round.
const ONE_ROUND_OF_20: [&str; 7] = [
    "bench",
    "--messages",
    "20",
    "--size",
    "2KiB",
    "--rounds",
    "1",
];

fn poplab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_poplab"))
}

fn bench_json(extra: &[&str]) -> Value {
    let out = poplab()
        .args(ONE_ROUND_OF_20)
        .args(["--round-timeout", "120", "--json"])
        .args(extra)
        .output()
        .expect("run poplab bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn positive(v: &Value) -> bool {
    v["median"].as_f64().is_some_and(|m| m > 0.0)
}

fn check_row(row: &Value, name: &str) {
    assert_eq!(row["name"], name, "{row}");
    assert_eq!(row["failures"], Value::Array(vec![]), "{row}");
    let round = &row["rounds"][0];
    assert_eq!(round["messages"], 20, "{row}");
    assert_eq!(round["failure"], Value::Null, "{row}");
    assert!(
        positive(&row["msg_per_s"]) && positive(&row["mb_per_s"]),
        "{row}"
    );
    if row["kind"] != "loopback_connector" {
        assert!(
            row["x_slower_leg"].as_f64().is_some_and(|x| x > 0.0),
            "{row}"
        );
    }
}

/// A connector row measured against the ceilings: its ratio to the serial bound too.
fn check_bounded(row: &Value) {
    assert!(
        row["x_serial_bound"].as_f64().is_some_and(|x| x > 0.0),
        "{row}"
    );
}

fn check_ceilings(doc: &Value) {
    let ceilings = doc["ceilings"].as_array().expect("ceilings");
    assert_eq!(ceilings.len(), 3, "{doc}");
    check_row(&ceilings[0], "POP3 reader");
    check_row(&ceilings[1], "SMTP writer");
    check_row(&ceilings[2], "serial bound");
    // Computed from the legs' phases: never faster than the slower leg's stream allows.
    let phases = |i: usize| ceilings[i]["rounds"][0]["phases"].clone();
    for i in 0..2 {
        for part in ["setup_s", "stream_s", "quit_s"] {
            assert!(phases(i)[part].as_f64().is_some_and(|s| s >= 0.0), "{doc}");
        }
    }
    let bound_s = ceilings[2]["rounds"][0]["wall_s"].as_f64().expect("wall_s");
    let reader = phases(0);
    let slower_stream = reader["stream_s"]
        .as_f64()
        .expect("stream")
        .max(phases(1)["stream_s"].as_f64().expect("stream"));
    assert!(bound_s >= slower_stream, "{doc}");
    assert!(doc["slower_leg"].is_string(), "{doc}");
    assert!(positive(&doc["serial_bound"]), "{doc}");
    for row in doc["connectors"].as_array().expect("connectors") {
        if row["kind"] == "connector" {
            check_bounded(row);
        }
    }
    assert_eq!(doc["parameters"]["messages"], 20);
    assert_eq!(doc["parameters"]["servers"]["kind"], "mocks");
    assert_eq!(doc["passed"], true);
}

#[test]
fn popbridge_in_process_moves_every_message() {
    let doc = bench_json(&["--in-process"]);
    check_ceilings(&doc);
    let c = &doc["connectors"][0];
    check_row(c, "popbridge (in-process)");
    // The mocks timestamp every message; CPU and RSS are not separable in-process.
    assert!(positive(&c["p50_ms"]) && positive(&c["p99_ms"]), "{c}");
    assert_eq!(c["cpu_s"], Value::Null);
    assert_eq!(c["x_first_connector"], 1.0);
}

#[test]
fn popbridge_as_a_child_process_is_measured() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_poplab")).with_file_name("popbridge");
    if !bin.is_file() {
        assert!(
            !std::env::var("POPBRIDGE_REQUIRE_PEERS").is_ok_and(|v| v == "1"),
            "{} not built (POPBRIDGE_REQUIRE_PEERS=1)",
            bin.display()
        );
        eprintln!(
            "skipping: {} not built (cargo build -p popbridge)",
            bin.display()
        );
        return;
    }
    let doc = bench_json(&[]);
    check_ceilings(&doc);
    let c = &doc["connectors"][0];
    check_row(c, "popbridge");
    for figure in ["p50_ms", "p99_ms", "cpu_s", "peak_rss_mb"] {
        assert!(positive(&c[figure]), "{figure}: {c}");
    }
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["bench", "--size", "ten"][..],
        &["bench", "--size-mix", "1KiB:50,2KiB:40"],
        &["bench", "--messages", "0"],
        &[
            "bench",
            "--pop3",
            "192.0.2.1:110",
            "--user",
            "u",
            "--password-file",
            "/dev/null",
            "--smtp",
            "127.0.0.1:25",
            "--refill-maildir",
            "/tmp",
        ],
        &["bench", "--connector", "nosuch"],
        &["bench", "--tls", "--connector", "fetchmail"],
        &["bench", "--compare-loopback"],
        &[
            "bench",
            "--compare-loopback",
            "--pop3-latency",
            "5",
            "--no-popbridge",
        ],
    ] {
        let out = poplab().args(args).output().expect("run poplab");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn a_round_that_moves_nothing_fails_and_says_so() {
    let out = poplab()
        .args(ONE_ROUND_OF_20)
        .args(["--no-popbridge", "--no-ceilings", "--json"])
        .args(["--connector-cmd", "true {pop3_port}"])
        .output()
        .expect("run poplab bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let doc: Value = serde_json::from_str(&stdout).expect("JSON");
    let c = &doc["connectors"][0];
    assert_eq!(c["name"], "true {pop3_port}");
    assert_eq!(
        c["failures"][0],
        "round 1: moved 0 of 20: 20 left on the POP3 server, 0 accepted by SMTP"
    );
    assert_eq!(c["msg_per_s"], Value::Null);
    assert_eq!(doc["passed"], false);
}

#[test]
fn latency_goes_through_the_proxy_on_both_sides() {
    let doc = bench_json(&[
        "--in-process",
        "--pop3-latency",
        "5",
        "--smtp-latency",
        "5",
        "--compare-loopback",
    ]);
    check_ceilings(&doc);
    // The loopback comparison comes first, so the shaped row's "×first" is against it.
    check_row(&doc["connectors"][0], "popbridge (in-process) (loopback)");
    check_row(&doc["connectors"][1], "popbridge (in-process)");
    assert!(doc["connectors"][1]["x_first_connector"].is_f64(), "{doc}");
    assert_eq!(doc["connectors"][0]["kind"], "loopback_connector");
    assert_eq!(doc["connectors"][0]["x_slower_leg"], Value::Null);
    assert_eq!(doc["parameters"]["pop3_latency_ms"], 5);
    assert_eq!(doc["parameters"]["smtp_latency_ms"], 5);
    let notes = doc["notes"].to_string();
    assert!(
        notes.contains("POP3 side is reached through a loopback latency proxy: 5 ms")
            && notes.contains("SMTP side is reached through a loopback latency proxy: 5 ms"),
        "{notes}"
    );
}
