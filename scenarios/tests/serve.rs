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
use common::{require_fetchmail, root};

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
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    // One SMTP transaction by hand: the captured message shows up in the final state.
    let mut s = std::net::TcpStream::connect(&smtp).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut expect = |code: &str| loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "{line}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect("220");
    let data = std::fs::read_to_string(&case).unwrap();
    assert!(data.contains("label = \"hello\""));
    let msg = "From: alice@example.net\r\nMessage-ID: <hello@poplab.invalid>\r\n\r\nhi\r\n.\r\n";
    for (cmd, code) in [
        ("EHLO t\r\n", "250"),
        ("MAIL FROM:<alice@example.net>\r\n", "250"),
        ("RCPT TO:<info@contoso.local>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        s.write_all(cmd.as_bytes()).unwrap();
        expect(code);
    }
    s.write_all(msg.as_bytes()).unwrap();
    expect("250");
    s.write_all(b"QUIT\r\n").unwrap();
    expect("221");
    drop(s);
    let state = served.stop();
    let hello = &state["messages"][0];
    assert_eq!(hello["label"], "hello", "{state}");
    assert_eq!(hello["delivered"], 1, "{state}");
    assert_eq!(hello["retrieved"], false, "{state}");
}
