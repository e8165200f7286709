//! The `popbridge` binary: the exit codes and outputs scripts rely on.

use std::path::Path;
use std::time::Duration;

use mock_pop3::{Maildrop, MockPop3};
use mock_smtp::{Limits, MockSmtp};
use tokio::io::AsyncBufReadExt;

use crate::harness::*;

fn write_config(dir: &Path, pop3_port: u16, smtp_port: u16, extra: &str) -> String {
    let head = loopback_head(smtp_port, FIVE_AND_TEN, "info", pop3_port);
    let account = format!(
        "username = \"info\"\npassword_file = \"pass\"\ndeliver_to = \"info@contoso.local\"\n{extra}\n"
    );
    let path = write_with_password_file(dir, PASSWORD, &head, &account);
    path.display().to_string()
}

/// Runs `popbridge --config CFG ARGS...`; it must exit `code`. Its standard output.
async fn exits(cfg: &str, args: &[&str], code: i32) -> String {
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    exited(&popbridge(&all).await, code)
}

/// `out` is of a run that exited `code`. Its standard output.
fn exited(out: &std::process::Output, code: i32) -> String {
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}{}",
        text(&out.stderr)
    );
    stdout
}

/// Both mocks on loopback and a configuration for them (account `extra`) in a new folder.
struct World {
    pop: mock_pop3::MockPop3Handle,
    smtp: mock_smtp::MockSmtpHandle,
    dir: tempfile::TempDir,
    cfg: String,
}

async fn world(mailbox: Maildrop, smtp_builder: mock_smtp::Builder, extra: &str) -> World {
    let pop = pop3(MockPop3::builder().maildrop(mailbox)).await;
    let smtp = smtp(smtp_builder).await;
    let dir = tempfile::tempdir().unwrap();
    let (pop3_port, smtp_port) = (pop.addr().unwrap().port(), smtp.addr().unwrap().port());
    let cfg = write_config(dir.path(), pop3_port, smtp_port, extra);
    World {
        pop,
        smtp,
        dir,
        cfg,
    }
}

/// Maildrop `info` holding `n` demo messages of about `size` octets.
fn demo(n: usize, size: usize) -> Maildrop {
    Maildrop::new("info", PASSWORD).with_demo_messages(n, size)
}

/// An SMTP mock that refuses messages over `max` octets.
fn limited(max: u64) -> mock_smtp::Builder {
    MockSmtp::builder().limits(Limits {
        max_message_size: Some(max),
        ..Limits::default()
    })
}

/// `popbridge fetch` over `small` demo messages and one of 50 KB, behind an SMTP mock that
/// refuses over 20 KB, the account with `extra`: it must exit 1. Its standard output.
async fn one_over_the_limit(small: usize, extra: &str) -> String {
    let mb = demo(small, 800).with_demo_messages(1, 50_000);
    let w = world(mb, limited(20_000), extra).await;
    exits(&w.cfg, &["fetch"], 1).await
}

/// Prepends `top` (top-level keys) to the configuration file `cfg`.
fn prepend(cfg: &str, top: &str) {
    let original = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, format!("{top}{original}")).unwrap();
}

/// Sends `signal` (`-HUP`, `-TERM`) to the process `pid`.
fn kill(signal: &str, pid: &str) {
    assert!(std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap()
        .success());
}

/// Waits (bounded) for the daemon to end; it must exit 0.
async fn exits_0(daemon: &mut tokio::process::Child) {
    let status = tokio::time::timeout(Duration::from_secs(30), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A mailbox of a small demo message and a 200 KB one from Alice, "Scans", behind an SMTP
/// mock that refuses over 100 KB; the account gets `extra`.
async fn big_scan_world(extra: &str) -> World {
    let big = "From: Alice Example <alice@example.net>\r\nSubject: Scans\r\n\
               Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n";
    let mut data = big.as_bytes().to_vec();
    data.resize(200 * 1024, b'x');
    let mut mb = demo(1, 1000);
    mb.messages.push(mock_pop3::Message::new(data));
    world(mb, limited(100 * 1024), extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_0_when_everything_was_delivered_with_summary_events_and_a_redacted_transcript() {
    let w = world(demo(3, 800), MockSmtp::builder(), "").await;
    let events = w.dir.path().join("events.jsonl");
    let (code, stdout, stderr) = run(&w.cfg, &events, &["--verbose", "fetch"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("info: 3 listed, 3 delivered, 3 deleted"),
        "{stdout}"
    );
    assert!(
        stderr.contains("POP3 C: PASS ***"),
        "--verbose shows the transcript: {stderr}"
    );
    assert!(stderr.contains("SMTP S: 250 2.6.0"), "{stderr}");
    assert!(!stderr.contains(PASSWORD) && !stdout.contains(PASSWORD));
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes when stderr is not a terminal"
    );
    let lines = event_lines(&events);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"pass.started"));
    assert_eq!(kinds.last(), Some(&"pass.finished"));
    assert_eq!(
        kinds.iter().filter(|k| **k == "message.delivered").count(),
        3
    );
    assert_eq!(lines.last().unwrap()["delivered"], 3);
    assert!(!std::fs::read_to_string(&events).unwrap().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_1_when_messages_stay_on_the_server() {
    let stdout = one_over_the_limit(2, "").await;
    assert!(
        stdout.contains("1 left on the server (1 over the size limit)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_2_for_configuration_errors_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 1, 1, "tls_mode = \"implicit\"");
    let out = popbridge(&["--config", &cfg, "fetch"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("popbridge.toml:17:") && stderr.contains("tls_mode"),
        "{stderr}"
    );
    let cfg = write_config(dir.path(), 1, 1, "");
    let out = popbridge(&["--config", &cfg, "fetch", "--account", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no account named \"nope\""));
    let out = popbridge(&["--config", "/nonexistent/popbridge.toml", "fetch"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/popbridge.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_3_when_the_server_cannot_be_reached_or_refuses_the_login() {
    let smtp = smtp(MockSmtp::builder()).await;
    let closed = {
        let l = listener().await;
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), closed, smtp.addr().unwrap().port(), "");
    let out = popbridge(&["--config", &cfg, "fetch"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("cannot connect to POP3 server"),
        "{}",
        text(&out.stdout)
    );

    let pop = pop3(MockPop3::builder().maildrop(Maildrop::new("info", "different"))).await;
    let cfg = write_config(
        dir.path(),
        pop.addr().unwrap().port(),
        smtp.addr().unwrap().port(),
        "",
    );
    let out = popbridge(&["--config", &cfg, "fetch"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stdout).contains("authentication failed"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn help_explains_the_exit_codes() {
    let out = popbridge(&["--help"]).await;
    let help = text(&out.stdout);
    assert!(out.status.success());
    for line in [
        "Exit codes of fetch and trigger (the most severe account wins: 2 > 3 > 1 > 4 > 0):",
        "  0  everything due was delivered",
        "  1  something stays on the server that will not go by itself",
        "  2  configuration error",
        "  3  could not connect or authenticate",
        "  4  everything attempted was delivered; a backlog",
    ] {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
    assert!(
        help.contains("POPBRIDGE_LOG") && help.contains("--log-level"),
        "{help}"
    );
    assert!(help.contains("fetch"));
}

/// Guards against: a normal backlog (more mail than one pass takes) and mail that will
/// never go by itself giving monitoring the same exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_exits_4_and_stuck_mail_exits_1() {
    let cap = "[limits]\nmax_messages_per_session = 2";
    let w = world(demo(5, 800), MockSmtp::builder(), cap).await;
    let cfg = &w.cfg;
    let stdout = exits(cfg, &["fetch"], 4).await;
    assert!(
        stdout.contains("2 delivered, 2 deleted, 3 left on the server (3 for the next pass)"),
        "{stdout}"
    );
    let out = popbridge(&["--config", cfg, "fetch"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    let out = popbridge(&["--config", cfg, "fetch"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the backlog is gone: {}",
        text(&out.stdout)
    );

    // Stuck mail outranks a backlog: one message over the size limit, and the cap.
    let stdout = one_over_the_limit(4, cap).await;
    assert!(
        stdout.contains("1 over the size limit, 2 for the next pass"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_trigger_reload_and_sigterm() {
    let w = world(demo(2, 800), MockSmtp::builder(), "").await;
    let (pop, smtp, dir, cfg) = (&w.pop, &w.smtp, &w.dir, &w.cfg);
    // Long interval, no jitter: one scheduled pass at start, then only triggers.
    prepend(cfg, "interval = \"24h\"\njitter = 0\n");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_popbridge"))
        .args(["--config", cfg, "run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The socket is the daemon's only readiness signal: retry the trigger, bounded.
    let mut out = None;
    for _ in 0..200 {
        let o = popbridge(&["--config", cfg, "trigger"]).await;
        if o.status.code() != Some(3) {
            out = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stdout = exited(&out.expect("the daemon never listened"), 0);
    assert!(stdout.starts_with("info: "), "{stdout}");
    pop.add_message(
        "info",
        mock_pop3::Message::new(&b"Subject: now\r\n\r\nx\r\n"[..]),
    );
    let out = popbridge(&["--config", cfg, "trigger", "--account", "info"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("1 delivered"),
        "{}",
        text(&out.stdout)
    );
    // SIGHUP with a broken file: refused, the daemon goes on.
    std::fs::write(cfg, "this is not toml [").unwrap();
    let pid = daemon.id().unwrap().to_string();
    kill("-HUP", &pid);
    let out = popbridge(&["--config", cfg, "trigger"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "the trigger itself needs a valid file"
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "still running after a bad reload"
    );
    // SIGTERM: clean exit 0, socket gone.
    kill("-TERM", &pid);
    exits_0(&mut daemon).await;
    let stderr = {
        let mut s = String::new();
        use tokio::io::AsyncReadExt;
        daemon
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .await
            .unwrap();
        s
    };
    assert!(
        stderr.contains("running configuration stays in force"),
        "{stderr}"
    );
    assert!(!dir.path().join("state/popbridge.sock").exists());
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
    assert_eq!(smtp.counts().accepted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_reports_and_changes_nothing() {
    let w = world(demo(3, 900), MockSmtp::builder(), "").await;
    let (pop, dir, cfg) = (&w.pop, &w.dir, &w.cfg);
    let stdout = exits(cfg, &["diagnose"], 0).await;
    assert!(
        stdout.contains("messages: 3") && stdout.contains("SIZE 10485760"),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD));
    pop.wait_idle().await;
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 3);
    assert_eq!(pop.maildrop("info").unwrap().retrievals, 0);
    let cfg = write_config(dir.path(), pop.addr().unwrap().port(), 1, "");
    let out = popbridge(&["--config", &cfg, "diagnose"]).await;
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_limits_flags_the_two_sbs_losses() {
    // The customer reports: a 20 MB message; the connector's receive connector at 50 MB.
    let mb = demo(1, 20 * 1024 * 1024).with_demo_messages(1, 1000);
    let w = world(mb, limited(50 * 1024 * 1024), "").await;
    let (pop, smtp, dir) = (&w.pop, &w.smtp, &w.dir);
    let (pp, sp) = (pop.addr().unwrap().port(), smtp.addr().unwrap().port());
    let run = |org: &'static str, account_extra: &'static str| {
        let cfg = write_config(dir.path(), pp, sp, account_extra);
        let original = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("profile = \"sbs2008\"\n{original}\n[exchange]\norganization_receive_limit = \"{org}\"\n")).unwrap();
        async move { popbridge(&["--config", &cfg, "check-limits", "--probe"]).await }
    };
    // Case 1: global 10 MB, receive connector 50 MB, mailbox unlimited.
    let so = exited(&run("10MB", "").await, 1);
    assert!(
        so.contains("LOST") && so.contains("organization_receive_limit"),
        "{so}"
    );
    // The 20 MB message on the server is named (TOP), and the mailbox limit nobody
    // declared is called unknown, not unlimited.
    assert!(
        so.contains(
            "#1 20 MB from Sender 0 <sender0@example.net>, subject \"Demo message 0\" \
             (2006-01-02): LOST"
        ),
        "{so}"
    );
    assert!(so.contains("unknown (not declared"), "{so}");
    assert!(!so.contains("--probe"), "{so}");
    // Case 2: global 50 MB, connector 50 MB, mailbox 10 MB.
    let so = exited(&run("50MB", "mailbox_receive_limit = \"10MB\"").await, 1);
    assert!(
        so.contains("LOST") && so.contains("mailbox_receive_limit"),
        "{so}"
    );
    pop.wait_idle().await;
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        2,
        "probing deletes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_limits_with_probe_passes_a_safe_configuration() {
    // Every limit agrees with the receive connector's SIZE (50 MB): nothing can be lost or stuck.
    let limit = "mailbox_receive_limit = \"50MB\"";
    let w = world(demo(2, 5000), limited(50 * 1024 * 1024), limit).await;
    let (pop, cfg) = (&w.pop, &w.cfg);
    let original = std::fs::read_to_string(cfg).unwrap();
    // [exchange] goes last: the account's keys belong to the [[account]] table above it.
    std::fs::write(
        cfg,
        format!("{original}\n[exchange]\norganization_receive_limit = \"50MB\"\n"),
    )
    .unwrap();
    let so = exits(cfg, &["check-limits", "--probe"], 0).await;
    assert!(so.contains("Verdict: safe"), "{so}");
    assert!(so.contains("50 MB (EHLO SIZE, probed)"), "{so}");
    assert!(so.contains("50 MB (declared)"), "{so}");
    assert!(
        !so.contains("--probe"),
        "after --probe, no hint to run it: {so}"
    );
    pop.wait_idle().await;
    assert_eq!(
        pop.maildrop("info").unwrap().remaining.len(),
        2,
        "probing changes nothing"
    );
}

/// Unix seconds of an RFC 3339 UTC time as popbridge writes it
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`); `None` if it is not one.
fn parse_rfc3339_utc(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() != 24 || &t[4..5] != "-" || &t[7..8] != "-" || &t[10..11] != "T" {
        return None;
    }
    if &t[13..14] != ":" || &t[16..17] != ":" || &t[19..20] != "." || &t[23..] != "Z" {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        t.get(r.clone())
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    num(20..23)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days since 1970-01-01, counted year by year then month by month (Gregorian leap
    // years; the times checked are recent ones, so never before 1970).
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let feb = if leap(y) { 29 } else { 28 };
    let months = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let days = (1970..y)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<i64>()
        + months[..mo as usize - 1].iter().sum::<i64>()
        + d
        - 1;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Guards against: events that cannot be placed in time or told apart by pass (two
/// accounts or two passes interleaved in one file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_an_rfc3339_time_and_one_pass_id_per_account_pass() {
    let w = world(demo(2, 800), MockSmtp::builder(), "").await;
    let (pop, dir, cfg) = (&w.pop, &w.dir, &w.cfg);
    let events = dir.path().join("events.jsonl");
    let args = [
        "--config",
        cfg,
        "--events",
        events.to_str().unwrap(),
        "fetch",
    ];
    assert_eq!(popbridge(&args).await.status.code(), Some(0));
    let first = event_lines(&events).len();
    pop.add_message(
        "info",
        mock_pop3::Message::new(
            &b"Return-Path: <b@example.net>\r\nSubject: later\r\nMessage-ID: <later@x>\r\n\r\nx\r\n"[..],
        ),
    );
    assert_eq!(popbridge(&args).await.status.code(), Some(0));
    let lines = event_lines(&events);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for l in &lines {
        let t = l["time"].as_str().unwrap_or_else(|| panic!("no time: {l}"));
        let at = parse_rfc3339_utc(t).unwrap_or_else(|| panic!("not RFC 3339 UTC: {t}"));
        assert!((now - 600..=now + 5).contains(&at), "{t} is not now");
    }
    let ids: Vec<&str> = lines.iter().map(|l| l["pass"].as_str().unwrap()).collect();
    assert!(ids[..first].iter().all(|id| *id == ids[0]), "{ids:?}");
    assert!(ids[first..].iter().all(|id| *id == ids[first]), "{ids:?}");
    assert_ne!(ids[0], ids[first], "two passes, two ids");
    // The snapshot, as written: time and pass ids redacted (pass ids numbered by first
    // appearance).
    let raw = std::fs::read_to_string(&events).unwrap();
    let mut seen: Vec<&str> = Vec::new();
    let redacted: Vec<String> = raw
        .lines()
        .zip(&lines)
        .map(|(text, l)| {
            let (time, id) = (l["time"].as_str().unwrap(), l["pass"].as_str().unwrap());
            let n = match seen.iter().position(|s| *s == id) {
                Some(i) => i + 1,
                None => {
                    seen.push(id);
                    seen.len()
                }
            };
            text.replacen(time, "[time]", 1)
                .replacen(id, &format!("[pass {n}]"), 1)
        })
        .collect();
    insta::assert_snapshot!(redacted.join("\n"));
}

type Log = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Reads a daemon's log until a line containing `what` (bounded), keeping every line.
async fn until(stderr: &mut Log, what: &str, log: &mut Vec<String>) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            let done = line.contains(what);
            log.push(line);
            if done {
                return;
            }
        }
        panic!("the daemon's log ended before {what:?}: {log:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {what:?} in the daemon's log"));
}

/// Guards against: logrotate renaming the events file and the daemon writing on into the
/// renamed file forever (the new file stays empty, the old one grows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_events_file_after_a_rename() {
    let w = world(demo(1, 800), MockSmtp::builder(), "").await;
    let (pop, dir, cfg) = (&w.pop, &w.dir, &w.cfg);
    prepend(cfg, "interval = \"24h\"\njitter = 0\n");
    let events = dir.path().join("events.jsonl");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_popbridge"))
        .args(["--config", cfg, "--events", events.to_str().unwrap(), "run"])
        .env_remove("POPBRIDGE_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(daemon.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    // The pass at start-up: one log line at the default level.
    until(&mut stderr, "info: scheduled pass", &mut log).await;
    let line = log.last().unwrap().clone();
    assert!(
        line.contains("1 listed, 1 delivered, 0 left") && line.contains("next pass 20"),
        "{line}"
    );
    let before = event_lines(&events);
    assert_eq!(before.last().unwrap()["kind"], "pass.finished");
    let rotated = dir.path().join("events.jsonl.1");
    std::fs::rename(&events, &rotated).unwrap();
    let pid = daemon.id().unwrap().to_string();
    kill("-HUP", &pid);
    until(&mut stderr, "configuration reloaded", &mut log).await;
    pop.add_message(
        "info",
        mock_pop3::Message::new(
            &b"Return-Path: <a@example.net>\r\nFrom: a@example.net\r\nSubject: after\r\n\r\nx\r\n"
                [..],
        ),
    );
    let out = popbridge(&["--config", cfg, "trigger"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let after = event_lines(&events);
    let kinds: Vec<&str> = after.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "pass.started",
            "pass.listed",
            "message.delivered",
            "pass.finished"
        ],
        "the new file has the triggered pass"
    );
    assert_eq!(
        event_lines(&rotated),
        before,
        "the renamed file is left as it was"
    );
    kill("-TERM", &pid);
    exits_0(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_limits_with_undeclared_limits_is_unknown_not_safe() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on these ports: without --probe nothing is contacted.
    let cfg = write_config(dir.path(), 1, 1, "");
    let so = exits(&cfg, &["check-limits"], 5).await;
    assert!(
        !so.contains("Verdict: safe") && !so.contains("unlimited ("),
        "{so}"
    );
    assert!(
        so.contains(
            "Verdict: unknown: declare organization_receive_limit and mailbox_receive_limit"
        ),
        "{so}"
    );
    assert!(so.contains("run with --probe"), "{so}");
    // Declared unlimited, popbridge following the SIZE: safe whatever the SIZE is.
    let cfg = write_config(
        dir.path(),
        1,
        1,
        "mailbox_receive_limit = \"unlimited\"\n[exchange]\norganization_receive_limit = \"unlimited\"",
    );
    let so = exits(&cfg, &["check-limits"], 0).await;
    assert!(so.contains("unlimited (declared)"), "{so}");
    // The exit codes are in --help.
    let out = popbridge(&["check-limits", "--help"]).await;
    let help = text(&out.stdout);
    assert!(
        help.contains("5 unknown") && help.contains("1 mail can be lost"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_limits_probe_names_a_stuck_message_with_its_sender_and_subject() {
    // A safe chain: only the server's own SIZE keeps the big one out.
    let w = big_scan_world(
        "mailbox_receive_limit = \"unlimited\"\n[exchange]\norganization_receive_limit = \"unlimited\"",
    )
    .await;
    let (pop, cfg) = (&w.pop, &w.cfg);
    let so = exits(cfg, &["check-limits", "--probe"], 1).await;
    assert!(
        so.contains(
            "#2 200.0 KB from Alice Example <alice@example.net>, subject \"Scans\" (2026-12-01): \
             too large for this server"
        ),
        "{so}"
    );
    assert!(so.contains("stuck: 1 message(s)"), "{so}");
    assert!(!so.contains("--probe"), "{so}");
    pop.wait_idle().await;
    let mailbox = pop.maildrop("info").unwrap();
    assert_eq!(mailbox.remaining.len(), 2, "probing changes nothing");
    assert!(mailbox.retrieved.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_names_the_message_it_leaves_on_the_server() {
    let w = big_scan_world("").await;
    let so = exits(&w.cfg, &["fetch"], 1).await;
    assert!(
        so.contains(
            "info: left on the server: 200.0 KB from Alice Example <alice@example.net> \
             \"Scans\" (2026-12-01): over the 100 KB limit"
        ),
        "{so}"
    );
}
