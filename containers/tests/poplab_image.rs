//! The `popbridge/poplab:test` image as a CI job in any language uses it: `docker run
//! --network host -i popbridge/poplab:test serve FILE` prints the mocks' addresses (on
//! the host's loopback) as one JSON line, the job talks to them, closes standard input,
//! and reads the final state line.
//!
//! Without a Docker engine or the image the test prints why and passes, unless
//! `POPBRIDGE_REQUIRE_DOCKER=1`, when it fails.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

/// Bound on the container's start (address line) and on its end after stdin closes.
const START: Duration = Duration::from_secs(60);
/// Bound on each POP3 reply, read whole.
const REPLY: Duration = Duration::from_secs(10);

/// Sends `command` (none for the greeting) and reads the reply's first line (and, for a
/// multi-line reply, up to the lone dot).
async fn ask<R>(
    r: &mut BufReader<R>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    command: &str,
    multi: bool,
) -> String
where
    R: tokio::io::AsyncRead + Unpin,
{
    if !command.is_empty() {
        w.write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
    }
    timeout(REPLY, async {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            assert!(
                r.read_line(&mut line).await.unwrap() > 0,
                "connection closed"
            );
            reply.push_str(&line);
            if !multi || line == ".\r\n" || reply.starts_with("-ERR") {
                return reply;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no whole reply to {command:?} within {REPLY:?}"))
}

/// The next line poplab prints, as JSON (`what` names it when it does not come).
async fn json_line<R>(out: &mut tokio::io::Lines<BufReader<R>>, what: &str) -> Value
where
    R: tokio::io::AsyncRead + Unpin,
{
    let line = timeout(START, out.next_line())
        .await
        .unwrap_or_else(|_| panic!("no {what} in time"))
        .unwrap()
        .unwrap_or_else(|| panic!("poplab ended before {what}"));
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn the_poplab_image_serves_a_scenario_on_the_host_loopback() {
    if !popbridge_containers::ready_or_skip(&["poplab"]) {
        return;
    }
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/cases/basic-delivery.toml");
    let case = case.canonicalize().unwrap();
    let mut child = Command::new("docker")
        .args(["run", "--rm", "-i", "--network", "host", "-v"])
        .arg(format!("{}:/case.toml:ro", case.display()))
        .args(["popbridge/poplab:test", "serve", "/case.toml"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let addresses = json_line(&mut out, "the address line").await;
    let pop3 = addresses["pop3"].as_str().unwrap();
    assert!(pop3.starts_with("127.0.0.1:"), "not on loopback: {pop3}");
    let user = addresses["mailboxes"][0]["user"].as_str().unwrap();
    let password = addresses["mailboxes"][0]["password"].as_str().unwrap();

    let (r, mut w) = TcpStream::connect(pop3).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    for (command, reply) in [
        (String::new(), "+OK"),
        (format!("USER {user}"), "+OK"),
        (format!("PASS {password}"), "+OK"),
        ("STAT".into(), "+OK 3 "),
    ] {
        let got = ask(&mut r, &mut w, &command, false).await;
        assert!(got.starts_with(reply), "{command}: {got}");
    }
    let first_message = ask(&mut r, &mut w, "RETR 1", true).await;
    assert!(
        first_message.contains("Hello from Alice"),
        "{first_message}"
    );
    assert!(ask(&mut r, &mut w, "DELE 1", false)
        .await
        .starts_with("+OK"));
    assert!(ask(&mut r, &mut w, "QUIT", false).await.starts_with("+OK"));

    drop(child.stdin.take());
    let state = json_line(&mut out, "the final state").await;
    let messages = state["messages"].as_array().unwrap();
    let deleted: Vec<bool> = messages.iter().map(|m| m["deleted"] == true).collect();
    assert_eq!(deleted, [true, false, false], "{state}");
    let status = timeout(START, child.wait())
        .await
        .expect("poplab did not end")
        .unwrap();
    assert!(status.success(), "{status}");
}
