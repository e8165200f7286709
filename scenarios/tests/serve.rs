//! `poplab serve` on basic-delivery.toml, fetched by fetchmail by hand (through the
//! fetchmail template script), then standard input closed: the final JSON says every
//! message was retrieved, deleted and delivered once. Also `poplab mock-smtp --scenario`.
//!
//! fetchmail missing skips the fetchmail test (with the reason printed), unless
//! `POPBRIDGE_REQUIRE_PEERS=1` (CI), in which case it fails.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{require_fetchmail, root, said};

/// Bound of every wait on the served child.
const BOUND: Duration = Duration::from_secs(30);

/// A served child whose stdout lines arrive on a channel (so every read is bounded); killed
/// on drop.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Served {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_poplab"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start poplab");
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn json_line(&self) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(BOUND)
            .expect("a JSON line from poplab in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Closes standard input (the stop signal) and returns the final state line.
    fn stop(&mut self) -> serde_json::Value {
        drop(self.child.stdin.take());
        let state = self.json_line();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{status}");
                return state;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("poplab did not exit after printing its final state");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port(addr: &serde_json::Value) -> String {
    let a = addr.as_str().expect("an address");
    assert!(a.starts_with("127.0.0.1:"), "{a}");
    a.rsplit(':').next().unwrap().to_string()
}

#[test]
fn serve_then_fetchmail_by_hand_then_stdin_closed_gives_the_final_state() {
    if !require_fetchmail() {
        return;
    }
    let case = root().join("cases/basic-delivery.toml");
    let mut served = Served::start(&["serve", case.to_str().unwrap()]);
    let addrs = served.json_line();
    assert_eq!(addrs["mailboxes"][0]["user"], "info");
    assert_eq!(addrs["ca"], serde_json::Value::Null);
    let user = addrs["mailboxes"][0]["user"].as_str().unwrap();
    let password = addrs["mailboxes"][0]["password"].as_str().unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new(root().join("connectors/fetchmail.sh"))
        .args([
            "127.0.0.1",
            &port(&addrs["pop3"]),
            user,
            password,
            "127.0.0.1",
            &port(&addrs["smtp"]),
            "info@contoso.local",
            scratch.path().to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run fetchmail");
    let said = said(&out);
    assert!(out.status.success(), "{said}");

    let state = served.stop();
    let messages = state["messages"].as_array().unwrap();
    let labels: Vec<&str> = messages
        .iter()
        .map(|m| m["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["hello", "with-cc", "on-behalf"], "{state}");
    for m in messages {
        assert_eq!(m["retrieved"], true, "{m}\n{said}");
        assert_eq!(m["deleted"], true, "{m}");
        assert_eq!(m["on_server"], false, "{m}");
        assert_eq!(m["delivered"], 1, "{m}");
        assert_eq!(m["ndr"].as_array().unwrap().len(), 0, "{m}");
        assert_eq!(m["rejected"].as_array().unwrap().len(), 0, "{m}");
        assert_eq!(m["outcome"], "delivered", "{m}");
        assert_eq!(m["recipients"][0], "info@contoso.local", "{m}");
    }
    assert_eq!(state["lost"], 0);
    assert_eq!(state["duplicates"], 0);
    assert_eq!(state["unmatched"].as_array().unwrap().len(), 0);
}

#[test]
fn mock_smtp_from_a_scenario_serves_only_that_side() {
    let case = root().join("cases/basic-delivery.toml");
    let mut served = Served::start(&["mock-smtp", "--scenario", case.to_str().unwrap()]);
    let addrs = served.json_line();
    assert!(addrs.get("pop3").is_none(), "{addrs}");
    let smtp = addrs["smtp"].as_str().unwrap().to_string();
    assert!(smtp.starts_with("127.0.0.1:"), "{smtp}");
    let data = std::fs::read_to_string(&case).unwrap();
    assert!(data.contains("label = \"hello\""));
    // One SMTP transaction by hand: the captured message shows up in the final state.
    let msg = "From: alice@example.net\r\nMessage-ID: <hello@poplab.invalid>\r\n\r\nhi\r\n.\r\n";
    smtp_by_hand(&smtp, msg);
    let state = served.stop();
    let hello = &state["messages"][0];
    assert_eq!(hello["label"], "hello", "{state}");
    assert_eq!(hello["delivered"], 1, "{state}");
    assert_eq!(hello["retrieved"], false, "{state}");
}

/// One message for mailbox info/secret, expected delivered to info@contoso.local.
const ONE_MESSAGE: &str = r#"description = "one message, fetched by hand"

[[pop3.mailbox]]
user = "info"
password = "secret"

[[pop3.mailbox.message]]
label = "hello"
from = "alice@example.net"
subject = "hello"

[expect.labels]
hello = "delivered"

[expect.recipients]
hello = ["info@contoso.local"]
"#;

impl Served {
    /// Closes standard input and returns the exit code and everything printed after.
    fn finish(&mut self) -> (Option<i32>, String) {
        drop(self.child.stdin.take());
        let mut out = String::new();
        while let Ok(line) = self.lines.recv_timeout(BOUND) {
            out.push_str(&line);
            out.push('\n');
        }
        let status = self.child.wait().expect("poplab exits");
        (status.code(), out)
    }
}

/// A line reader over `s` that checks each reply starts with `code` (multi-line SMTP
/// replies read whole; an empty `code` reads exactly one line, such as a body line).
fn replies(s: &std::net::TcpStream) -> impl FnMut(&str) -> String {
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    move |code: &str| loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "{line}");
        if code.is_empty()
            || !line.starts_with(|c: char| c.is_ascii_digit())
            || line.as_bytes().get(3) == Some(&b' ')
        {
            break line;
        }
    }
}

/// One SMTP transaction by hand on `addr`, from alice@example.net to info@contoso.local:
/// `message` is the DATA text with its final dot; every reply is checked.
fn smtp_by_hand(addr: &str, message: &str) {
    let mut smtp = std::net::TcpStream::connect(addr).unwrap();
    let mut smtp_reply = replies(&smtp);
    smtp_reply("220");
    for (cmd, code) in [
        ("EHLO t\r\n", "250"),
        ("MAIL FROM:<alice@example.net>\r\n", "250"),
        ("RCPT TO:<info@contoso.local>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        smtp.write_all(cmd.as_bytes()).unwrap();
        smtp_reply(code);
    }
    smtp.write_all(message.as_bytes()).unwrap();
    smtp_reply("250");
    smtp.write_all(b"QUIT\r\n").unwrap();
    smtp_reply("221");
}

/// `poplab serve --check` on [`ONE_MESSAGE`], written into `dir`.
fn serve_check_one_message(dir: &std::path::Path) -> Served {
    let case = dir.join("one.toml");
    std::fs::write(&case, ONE_MESSAGE).unwrap();
    Served::start(&["serve", "--check", case.to_str().unwrap()])
}

#[test]
fn serve_check_with_nothing_fetched_fails_the_expectations_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_check_one_message(dir.path());
    let _ = served.json_line();
    let (code, out) = served.finish();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("hello: expected delivered, got left"), "{out}");
    assert!(out.trim_end().ends_with("0 passed, 1 failed"), "{out}");
}

#[test]
fn serve_check_after_a_delivery_by_hand_passes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_check_one_message(dir.path());
    let addrs = served.json_line();

    // POP3 by hand: RETR the message, keep its dot-stuffed lines and final dot as sent.
    let mut pop = std::net::TcpStream::connect(addrs["pop3"].as_str().unwrap()).unwrap();
    let mut pop_reply = replies(&pop);
    pop_reply("+OK");
    for cmd in ["USER info\r\n", "PASS secret\r\n"] {
        pop.write_all(cmd.as_bytes()).unwrap();
        pop_reply("+OK");
    }
    pop.write_all(b"RETR 1\r\n").unwrap();
    pop_reply("+OK");
    let mut body = String::new();
    loop {
        let line = pop_reply("");
        body.push_str(&line);
        if line == ".\r\n" {
            break;
        }
    }
    assert!(
        body.contains("Message-ID: <hello@poplab.invalid>"),
        "{body}"
    );

    // SMTP by hand.
    smtp_by_hand(addrs["smtp"].as_str().unwrap(), &body);

    for cmd in ["DELE 1\r\n", "QUIT\r\n"] {
        pop.write_all(cmd.as_bytes()).unwrap();
        pop_reply("+OK");
    }
    drop(pop);

    let (code, out) = served.finish();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("PASS:"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 0 failed"), "{out}");
}
