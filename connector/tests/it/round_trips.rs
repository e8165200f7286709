//! The round trips a POP3 session costs before its first RETR: with PIPELINING offered,
//! USER and PASS share one write, and so do the CAPA after login, LIST and UIDL; without
//! it, one command at a time. Replies stay matched to their commands whatever the server
//! answers. On a server 40 ms away every round trip saved is 80 ms per session.
//!
//! The server here is a script over an in-memory stream: each step waits for every line it
//! names, then answers, and fails when a line of a later step arrived before the answer (a
//! client that pipelines where it must not). A client that waits where it could have sent
//! stalls the script; its command timeout then ends the test, at once under the paused
//! clock.

use std::sync::{Arc, Mutex};

use popbridge::config::Config;
use popbridge::net::{BoxIo, MemoryDialer};
use popbridge::pop3::{self, Pop3Error, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

use crate::harness::{in_memory_setup, PASSWORD};

/// One step: the command lines it waits for, then its answer.
type Step = (Vec<String>, String);

/// A step waiting for `expect`, then answering `answer`.
fn step(expect: &[&str], answer: impl Into<String>) -> Step {
    (
        expect.iter().map(|l| l.to_string()).collect(),
        answer.into(),
    )
}

/// Plays `steps` after a greeting; what the client did wrong, if anything.
async fn play(mut io: DuplexStream, steps: Vec<Step>) -> Result<(), String> {
    io.write_all(b"+OK ready\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    for (expect, answer) in steps {
        let mut got = Vec::new();
        while got.len() < expect.len() {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                got.push(String::from_utf8_lossy(&buf[..i]).into_owned());
                buf.drain(..i + 2);
                continue;
            }
            let mut chunk = [0u8; 4096];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    return Err(format!("closed while waiting for {expect:?}: {got:?}"))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if got != expect {
            return Err(format!("expected {expect:?}, got {got:?}"));
        }
        if !buf.is_empty() {
            return Err(format!(
                "sent before the answer to {expect:?}: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        io.write_all(answer.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A configuration (its state in a folder that lives as long as it) whose one account
/// logs in with USER/PASS to `pop3.test:110` in plain text, and a dialer that connects it
/// to a server playing `steps`; the script's verdict comes through the receiver once it
/// ends.
fn scripted(
    steps: Vec<Step>,
) -> (
    (tempfile::TempDir, Config),
    MemoryDialer,
    oneshot::Receiver<Result<(), String>>,
) {
    let (dir, config) = in_memory_setup();
    let (tx, rx) = oneshot::channel();
    let once = Mutex::new(Some((steps, tx)));
    let dialer = MemoryDialer::new();
    dialer.route(
        "pop3.test",
        110,
        Arc::new(move || {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (steps, tx) = once.lock().unwrap().take().expect("one connection");
            tokio::spawn(async move {
                let _ = tx.send(play(server, steps).await);
            });
            Box::new(client) as BoxIo
        }),
    );
    ((dir, config), dialer, rx)
}

/// Connects and logs in with the account of `config`, then LIST (and UIDL sent ahead).
async fn open(
    config: &Config,
    dialer: &MemoryDialer,
) -> Result<(pop3::Transaction, popbridge::listing::Sizes), Pop3Error> {
    let a = &config.accounts[0];
    let settings = pop3::Settings::for_account(config, a).unwrap();
    let secret = a
        .secret
        .resolve(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    pop3::connect(dialer, &settings)
        .await?
        .authenticate_and_list(a.auth, &a.username, &secret)
        .await
}

const CAPA_PIPELINING: &str = "+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n";

/// A script that starts with a CAPA offering PIPELINING and a pipelined USER/PASS login,
/// then plays `rest`.
fn with_pipelined_login(rest: Vec<Step>) -> Vec<Step> {
    let mut steps = vec![
        step(&["CAPA"], CAPA_PIPELINING),
        step(&["USER info", &pass()], "+OK\r\n+OK logged in\r\n"),
    ];
    steps.extend(rest);
    steps
}

/// The PASS line of the account.
fn pass() -> String {
    format!("PASS {PASSWORD}")
}

/// Guards against: a login and listing that wait for each reply before the next command
/// on a server offering PIPELINING (six round trips where three do).
#[tokio::test(start_paused = true)]
async fn with_pipelining_login_and_listing_take_three_round_trips() {
    let ((_dir, config), dialer, verdict) = scripted(with_pipelined_login(vec![
        step(
            &["CAPA", "LIST", "UIDL"],
            format!(
                "{CAPA_PIPELINING}+OK 2 messages\r\n1 120\r\n2 340\r\n.\r\n+OK\r\n1 uid-a\r\n2 uid-b\r\n.\r\n"
            ),
        ),
        step(&["QUIT"], "+OK bye\r\n"),
    ]));
    let (mut txn, sizes) = open(&config, &dialer).await.unwrap();
    assert_eq!(sizes.iter().collect::<Vec<_>>(), [(1, 120), (2, 340)]);
    let uids = txn.uidl().await.unwrap().expect("UIDL offered");
    assert_eq!(
        uids.held().collect::<Vec<_>>(),
        [(1, "uid-a"), (2, "uid-b")]
    );
    txn.quit().await.unwrap();
    verdict.await.unwrap().unwrap();
}

/// Guards against: pipelining on a server that did not offer it.
#[tokio::test(start_paused = true)]
async fn without_pipelining_every_command_waits_for_its_reply() {
    let capa = "+OK\r\nUSER\r\nUIDL\r\n.\r\n";
    let ((_dir, config), dialer, verdict) = scripted(vec![
        step(&["CAPA"], capa),
        step(&["USER info"], "+OK\r\n"),
        step(&[&pass()], "+OK logged in\r\n"),
        step(&["CAPA"], capa),
        step(&["LIST"], "+OK\r\n1 120\r\n.\r\n"),
        step(&["UIDL"], "+OK\r\n1 uid-a\r\n.\r\n"),
        step(&["QUIT"], "+OK bye\r\n"),
    ]);
    let (mut txn, sizes) = open(&config, &dialer).await.unwrap();
    assert_eq!(sizes.iter().collect::<Vec<_>>(), [(1, 120)]);
    assert!(txn.uidl().await.unwrap().is_some());
    txn.quit().await.unwrap();
    verdict.await.unwrap().unwrap();
}

/// Guards against: a UIDL sent ahead on the strength of the CAPA before login, by a server
/// whose CAPA after login leaves UIDL out, read as the mailbox's UIDs (the mailbox would
/// switch keys between sessions) or left unread (every later reply one behind).
#[tokio::test(start_paused = true)]
async fn a_uidl_sent_ahead_that_capa_after_login_withdraws_is_read_and_dropped() {
    let ((_dir, config), dialer, verdict) = scripted(with_pipelined_login(vec![
        step(
            &["CAPA", "LIST", "UIDL"],
            "+OK\r\nUSER\r\nPIPELINING\r\n.\r\n+OK\r\n1 12\r\n.\r\n+OK\r\n1 uid-a\r\n.\r\n",
        ),
        step(&["RETR 1"], "+OK\r\nSubject: x\r\n\r\nhi\r\n.\r\n"),
        step(&["QUIT"], "+OK bye\r\n"),
    ]));
    let (mut txn, _) = open(&config, &dialer).await.unwrap();
    assert!(
        txn.uidl().await.unwrap().is_none(),
        "UIDL withdrawn after login"
    );
    txn.send_retr(1, 500, 1000);
    let spool = tempfile::tempdir().unwrap();
    match txn.next(spool.path(), 1 << 20).await.unwrap() {
        Response::Retr { msg: 1, body } => assert_eq!(body.len(), 18),
        other => panic!("expected message 1, got {other:?}"),
    }
    txn.quit().await.unwrap();
    verdict.await.unwrap().unwrap();
}

/// Guards against: a refused USER under pipelining read as anything but refused
/// credentials, or its PASS reply left unread.
#[tokio::test(start_paused = true)]
async fn a_refused_user_under_pipelining_is_an_authentication_failure() {
    let ((_dir, config), dialer, verdict) = scripted(vec![
        step(&["CAPA"], CAPA_PIPELINING),
        step(
            &["USER info", &pass()],
            "-ERR no such user\r\n-ERR give USER first\r\n",
        ),
    ]);
    match open(&config, &dialer).await {
        Err(e @ Pop3Error::Auth { .. }) => {
            assert!(e.to_string().contains("no such user"), "{e}");
            assert!(!e.to_string().contains(PASSWORD), "{e}");
        }
        Err(e) => panic!("expected an authentication failure, got {e}"),
        Ok(_) => panic!("expected an authentication failure"),
    }
    verdict.await.unwrap().unwrap();
}

/// Guards against: a pass that waits for the replies to its last DELEs before sending QUIT,
/// or for the DELE replies of earlier commits before committing its last deliveries (two
/// round trips more at the end of every session). Here the last DELE and QUIT must arrive
/// together, and the message is delivered and deleted.
#[tokio::test(start_paused = true)]
async fn the_last_deles_and_quit_share_one_write() {
    let message = "From: a@example.net\r\nSubject: x\r\nMessage-ID: <m1@example.net>\r\n\r\nhi\r\n";
    let ((_dir, config), dialer, verdict) = scripted(with_pipelined_login(vec![
        step(
            &["CAPA", "LIST", "UIDL"],
            format!(
                "{CAPA_PIPELINING}+OK\r\n1 {}\r\n.\r\n+OK\r\n1 uid-a\r\n.\r\n",
                message.len()
            ),
        ),
        step(&["RETR 1"], format!("+OK\r\n{message}.\r\n")),
        step(&["DELE 1", "QUIT"], "+OK\r\n+OK bye\r\n"),
    ]));
    let smtp = Arc::new(crate::harness::smtp(mock_smtp::MockSmtp::builder()).await);
    let s = smtp.clone();
    dialer.route(
        "smtp.test",
        25,
        Arc::new(move || Box::new(s.connect_duplex()) as BoxIo),
    );
    let ledger = popbridge::ledger::Ledger::open(&config.state_dir).unwrap();
    let accounts = config.accounts.clone();
    let summaries = popbridge::pass::Runner::new(
        Arc::new(config),
        Arc::new(dialer),
        Arc::new(popbridge::events::EventSink::none()),
        Arc::new(Mutex::new(ledger)),
    )
    .run(accounts)
    .await;
    verdict.await.unwrap().unwrap();
    let s = &summaries[0];
    assert_eq!((s.delivered, s.deleted), (1, 1), "{s:?}");
    assert!(s.aborted.is_none() && s.failure.is_none(), "{s:?}");
    assert_eq!(crate::harness::delivered_ids(&smtp), ["<m1@example.net>"]);
}
