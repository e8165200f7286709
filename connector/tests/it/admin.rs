//! The administrator's commands over a real ledger: `popbridge status`, `popbridge
//! quarantine list|show|release|delete`, and the ledger's pruning under real passes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use mock_pop3::MockPop3;
use mock_smtp::{MockSmtp, MockSmtpHandle};
use popbridge::config::Config;
use popbridge::daemon::{self, Daemon};
use popbridge::events::EventSink;
use popbridge::ledger::{Ledger, Status};
use popbridge::net::TcpDialer;

use crate::harness::*;

/// Writes (or rewrites) `dir/popbridge.toml` for account `info` (state in `dir/state`),
/// mode 0600 since it holds the password.
fn write_config(
    dir: &Path,
    pop3: &mock_pop3::MockPop3Handle,
    smtp: &MockSmtpHandle,
    account: &str,
    limits: &str,
) -> String {
    let path = dir.join("popbridge.toml");
    write_private(&path, config_text(dir, pop3, smtp, account, limits));
    path.display().to_string()
}

fn kinds(events: &Path) -> Vec<String> {
    read_events(events)
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A mailbox with one deliverable message (`m0`) and one whose sender Exchange refuses
/// (`m1`, "Subject: message 1", with an escape sequence in its subject line).
fn poison_mailbox() -> mock_pop3::Maildrop {
    let bad = b"Return-Path: <bad@refused.example>\r\nFrom: Bad <bad@refused.example>\r\n\
To: info@isp.example\r\nSubject: message 1 \x1b[31mred\r\nDate: Mon, 7 Dec 2026 04:00:00 +0000\r\n\
Message-ID: <m1@isp.example>\r\n\r\nbody of the poison message\r\n";
    mailbox_with([
        mail(0, "ok@example.net", 600).with_uid("u0"),
        raw(bad).with_uid("u1"),
    ])
}

/// A POP3 mock serving [`poison_mailbox`], an SMTP mock refusing its poison sender, a
/// temporary folder, the events file in it, and the configuration [`write_config`] wrote
/// there (with `account` and `limits`).
async fn poison_refused(
    account: &str,
    limits: &str,
) -> (
    mock_pop3::MockPop3Handle,
    MockSmtpHandle,
    tempfile::TempDir,
    std::path::PathBuf,
    String,
) {
    let pop = pop3(MockPop3::builder().maildrop(poison_mailbox())).await;
    let refusing = smtp(MockSmtp::builder().reject_sender("@refused.example")).await;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let cfg = write_config(dir.path(), &pop, &refusing, account, limits);
    (pop, refusing, dir, events, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_release_delivers_exactly_once_across_two_passes() {
    let (pop, refusing, dir, events, cfg) = poison_refused("", "poison_after = 1").await;

    let (code, out, err) = run(&cfg, &events, &["fetch"]).await;
    assert_eq!(code, Some(1), "quarantined: {out}{err}");
    assert_eq!(delivered_ids(&refusing), ["<m0@isp.example>"]);

    // list: the header's fields, the escape sequence escaped.
    let (code, out, err) = run(&cfg, &events, &["quarantine", "list"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("ACCOUNT\tKEY\tSINCE\tFROM\tSUBJECT"),
        "{out}"
    );
    assert_contains_all(
        &out,
        &[
            "info\tu1\t",
            "Bad <bad@refused.example>",
            "message 1 \\u{1b}[31mred",
            "Mon, 7 Dec 2026 04:00:00 +0000",
        ],
    );
    assert!(!out.contains('\x1b'), "no raw control character: {out:?}");
    assert!(
        out.contains("501 5.1.7"),
        "the refusal is the reason: {out}"
    );
    let (code, out, _) = run(&cfg, &events, &["quarantine", "list", "--json"]).await;
    assert_eq!(code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["account"], "info");
    assert_eq!(list[0]["key"], "u1");
    assert_eq!(list[0]["message_id"], "<m1@isp.example>");
    assert!(list[0]["action"].is_null());

    // show: the stored copy as it is.
    let (code, out, _) = run(&cfg, &events, &["quarantine", "show", "info", "u1"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("body of the poison message"), "{out}");
    let (code, _, err) = run(&cfg, &events, &["quarantine", "show", "info", "u0"]).await;
    assert_eq!(
        code,
        Some(1),
        "a delivered message is not quarantined: {err}"
    );
    assert!(err.contains("no quarantined message"), "{err}");

    let (code, out, err) = run(&cfg, &events, &["quarantine", "release", "info", "u1"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(kinds(&events).contains(&"quarantine.released".to_string()));
    let (_, out, _) = run(&cfg, &events, &["quarantine", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["action"], "release");

    // The Exchange side now takes that sender: the next pass delivers the local copy once,
    // and the one after only deletes the server's copy.
    let accepting = smtp(MockSmtp::builder()).await;
    let cfg = write_config(dir.path(), &pop, &accepting, "", "poison_after = 1");
    for pass in 1..=2 {
        let (code, out, err) = run(&cfg, &events, &["fetch"]).await;
        assert_eq!(code, Some(0), "pass {pass}: {out}{err}");
        accepting.wait_idle().await;
        assert_eq!(
            delivered_ids(&accepting),
            ["<m1@isp.example>"],
            "pass {pass}: delivered exactly once"
        );
    }
    pop.wait_idle().await;
    let report = pop.maildrop("info").unwrap();
    assert!(report.remaining.is_empty(), "{report:?}");
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| *k == "quarantine.redelivered")
            .count(),
        1
    );
    let (_, out, _) = run(&cfg, &events, &["quarantine", "list"]).await;
    assert_eq!(out, "no quarantined messages\n");
    let ledger = Ledger::open(&dir.path().join("state")).unwrap();
    assert!(matches!(
        ledger.status("info", "u1").unwrap(),
        Status::Delivered { deleted: true, .. }
    ));
    // Releasing it again is refused: it is delivered.
    drop(ledger);
    let (code, _, err) = run(&cfg, &events, &["quarantine", "release", "info", "u1"]).await;
    assert_eq!(code, Some(1), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_delete_removes_the_copy_and_the_server_copy_without_delivering_it() {
    let (pop, _refusing, dir, events, cfg) = poison_refused("", "poison_after = 1").await;
    let (code, out, err) = run(&cfg, &events, &["fetch"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    let copies = files_under(&dir.path().join("state/quarantine"));
    assert_eq!(copies.len(), 1, "{copies:?}");

    let (code, _, err) = run(&cfg, &events, &["quarantine", "delete", "nobody", "u1"]).await;
    assert_eq!(code, Some(2), "unknown account: {err}");
    let (code, out, err) = run(&cfg, &events, &["quarantine", "delete", "info", "u1"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("deleted at the next pass"), "{out}");
    assert!(!copies[0].exists(), "the local copy is gone");
    let deleted: Vec<_> = read_events(&events)
        .into_iter()
        .filter(|e| e["kind"] == "quarantine.deleted")
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (&deleted[0]["uid"], &deleted[0]["server"]),
        (&"u1".into(), &true.into())
    );
    let (_, out, _) = run(&cfg, &events, &["quarantine", "list"]).await;
    assert_eq!(out, "no quarantined messages\n");
    let (code, _, _) = run(&cfg, &events, &["quarantine", "show", "info", "u1"]).await;
    assert_eq!(code, Some(1));
    let (code, _, _) = run(&cfg, &events, &["quarantine", "release", "info", "u1"]).await;
    assert_eq!(code, Some(1), "a deleted message cannot be released");

    // The next pass deletes the server's copy; nothing is delivered.
    let accepting = smtp(MockSmtp::builder()).await;
    let cfg = write_config(dir.path(), &pop, &accepting, "", "poison_after = 1");
    let (code, out, err) = run(&cfg, &events, &["fetch"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    pop.wait_idle().await;
    accepting.wait_idle().await;
    assert!(delivered_ids(&accepting).is_empty());
    let report = pop.maildrop("info").unwrap();
    assert_eq!(report.deleted, ["u0", "u1"], "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_delete_with_leave_on_server_keeps_the_server_copy_and_never_delivers_it() {
    let keep = "leave_on_server = true";
    let (pop, _refusing, dir, events, cfg) = poison_refused(keep, "poison_after = 1").await;
    run(&cfg, &events, &["fetch"]).await;
    let (code, out, err) = run(&cfg, &events, &["quarantine", "delete", "info", "u1"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("is kept"), "{out}");
    let accepting = smtp(MockSmtp::builder()).await;
    let cfg = write_config(dir.path(), &pop, &accepting, keep, "poison_after = 1");
    for _ in 0..2 {
        let (code, out, err) = run(&cfg, &events, &["fetch"]).await;
        assert_eq!(code, Some(0), "{out}{err}");
    }
    pop.wait_idle().await;
    accepting.wait_idle().await;
    assert!(delivered_ids(&accepting).is_empty());
    assert_eq!(pop.maildrop("info").unwrap().remaining, ["u0", "u1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_last_pass_stuck_messages_and_quarantine_in_text_and_json() {
    let (_pop, _refusing, dir, events, cfg) = poison_refused("", "poison_after = 3").await;

    // Before any pass: nothing recorded, and it says so.
    let (code, out, err) = run(&cfg, &events, &["status"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("daemon: daemon not running"), "{out}");
    assert!(out.contains("last pass:   none recorded"), "{out}");
    assert!(!dir.path().join("state").exists(), "status created nothing");

    let (code, out, err) = run(&cfg, &events, &["fetch"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    let ledger_before = std::fs::read(dir.path().join("state/ledger.sqlite3")).unwrap();

    let (code, out, err) = run(&cfg, &events, &["status"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_contains_all(
        &out,
        &[
            "account info",
            // The last pass left a refused message.
            " stuck\n",
            "2 listed, 1 delivered, 1 deleted, 1 left (1 rejected",
            "next pass:   daemon not running",
            "quarantined: 0",
            "u1\trefused\t1\t",
        ],
    );
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));

    let (code, out, _) = run(&cfg, &events, &["status", "--json"]).await;
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["daemon"]["running"], false);
    let a = &v["accounts"][0];
    assert_eq!(a["account"], "info");
    assert_eq!(a["last_pass"]["outcome"], "stuck");
    assert_eq!(a["last_pass"]["counts"]["delivered"], 1);
    assert_eq!(a["last_pass"]["counts"]["rejected"], 1);
    assert_eq!(a["last_pass"]["counts"]["left"], 1);
    assert!(a["last_pass"]["finished_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(a["stuck"][0]["key"], "u1");
    assert_eq!(a["stuck"][0]["kind"], "refused");
    assert!(a["stuck"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("501 5.1.7"));
    assert!(a["stuck"][0]["age_secs"].as_i64().unwrap() >= 0);
    assert_eq!(a["quarantined"], 0);
    assert!(a["next_pass"].is_null());

    // Reading changed nothing.
    assert_eq!(
        std::fs::read(dir.path().join("state/ledger.sqlite3")).unwrap(),
        ledger_before
    );
    assert!(!kinds(&events).iter().any(|k| k.starts_with("quarantine.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_the_daemon_running_shows_the_next_pass() {
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with([mail(0, "a@b.example", 500)]))).await;
    let smtp = smtp(MockSmtp::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &pop, &smtp, "", "");
    let config = Config::load(Path::new(&cfg)).unwrap();
    let ledger = Ledger::open(&config.state_dir).unwrap();
    let socket = daemon::socket_path(&config.state_dir);
    let (d, handle) = Daemon::new(
        config,
        Arc::new(TcpDialer),
        Arc::new(EventSink::none()),
        Arc::new(Mutex::new(ledger)),
    );
    let server = tokio::spawn(daemon::serve_trigger_socket(socket.clone(), handle.clone()));
    let running = tokio::spawn(d.run());
    handle.wait_scheduled().await;
    // The socket answers once it is bound: a trigger proves it (and records a pass).
    let mut done = None;
    for _ in 0..100_000 {
        match daemon::request_trigger(&socket, None).await {
            Ok(r) => {
                done = Some(r);
                break;
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
    assert!(matches!(done, Some(daemon::TriggerResponse::Done(_))));

    let events = dir.path().join("events.jsonl");
    let (code, out, err) = run(&cfg, &events, &["status", "--json"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["daemon"]["running"], true, "{v}");
    assert_eq!(v["daemon"]["interval_secs"], 900);
    let secs = v["daemon"]["next_pass_in_secs"].as_i64().unwrap();
    assert!((0..=900 + 30).contains(&secs), "{v}");
    assert_eq!(v["accounts"][0]["next_pass"], v["daemon"]["next_pass"]);
    assert_eq!(v["accounts"][0]["last_pass"]["outcome"], "ok");
    let (code, out, _) = run(&cfg, &events, &["status"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("daemon: running, next pass 20"), "{out}");
    assert!(out.contains("next pass:   20"), "{out}");

    handle.stop().await;
    running.await.unwrap();
    server.abort();
    assert_eq!(
        delivered_ids(&smtp).len(),
        1,
        "the status request ran no pass"
    );
}

/// Guards against: pruning the row of a message still on the server (leave_on_server),
/// which would deliver it again; and a ledger that keeps rows of messages long gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_prune_rows_gone_from_the_server_past_the_retention_never_a_kept_one() {
    let kept = mail(0, "a@b.example", 500).with_uid("kept");
    let gone = mail(1, "a@b.example", 500).with_uid("gone");
    let full = pop3(MockPop3::builder().maildrop(mailbox_with([kept.clone(), gone]))).await;
    let smtp = smtp(MockSmtp::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let at = |pop: &mock_pop3::MockPop3Handle| {
        let text = config_text(dir.path(), pop, &smtp, "leave_on_server = true", "");
        Config::from_str(&text, &dir.path().join("popbridge.toml")).unwrap()
    };
    let pass = |config: Config| async move {
        let ledger = Arc::new(Mutex::new(Ledger::open(&config.state_dir).unwrap()));
        let accounts = config.accounts.clone();
        popbridge::pass::Runner::new(
            Arc::new(config),
            Arc::new(TcpDialer),
            Arc::new(EventSink::none()),
            ledger,
        )
        .run(accounts)
        .await
        .remove(0)
    };
    let s = pass(at(&full)).await;
    assert_eq!(s.delivered, 2, "{s:?}");
    // The same maildrop later: "gone" was deleted by someone else, "kept" stays.
    let later = pop3(MockPop3::builder().maildrop(mailbox_with([kept]))).await;
    let state = dir.path().join("state");
    let age_all = |days: i64| {
        let conn = rusqlite::Connection::open(state.join("ledger.sqlite3")).unwrap();
        conn.execute(
            "UPDATE messages SET gone_since = gone_since - ?1, delivered_at = delivered_at - ?1,
                created_at = created_at - ?1, updated_at = updated_at - ?1",
            [days * 86_400],
        )
        .unwrap();
    };
    age_all(200);
    let s = pass(at(&later)).await;
    assert_eq!((s.listed, s.delivered), (1, 0), "{s:?}");
    let l = Ledger::open(&state).unwrap();
    assert_eq!(l.statuses("info").unwrap().len(), 2, "gone only now: kept");
    drop(l);
    age_all(89);
    pass(at(&later)).await;
    assert_eq!(
        Ledger::open(&state)
            .unwrap()
            .statuses("info")
            .unwrap()
            .len(),
        2,
        "gone for 89 days: kept (retention 90 days)"
    );
    age_all(2);
    let s = pass(at(&later)).await;
    assert_eq!(s.delivered, 0, "{s:?}");
    let l = Ledger::open(&state).unwrap();
    let left = l.statuses("info").unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(matches!(
        left["kept"],
        Status::Delivered { deleted: false, .. }
    ));
    drop(l);
    // And the kept message, 291 days old and still listed, is never delivered again.
    let s = pass(at(&later)).await;
    later.wait_idle().await;
    smtp.wait_idle().await;
    assert_eq!(s.delivered, 0, "{s:?}");
    assert_eq!(delivered_ids(&smtp).len(), 2);
}

/// A message quarantined and deleted from the server (`quarantine_delete`) is delivered
/// from its local copy once released, and only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_message_no_longer_on_the_server_is_delivered_from_its_copy_once() {
    let pop = pop3(MockPop3::builder().maildrop(poison_mailbox())).await;
    let refusing = smtp(MockSmtp::builder().reject_sender("@refused.example")).await;
    let mut s = setup(
        &pop,
        &refusing,
        "",
        "poison_after = 1\nquarantine_delete = true",
    );
    let (sum, _) = s.pass(&pop, &refusing).await;
    assert_eq!(
        (sum.delivered, sum.quarantined, sum.deleted),
        (1, 1, 2),
        "{sum:?}"
    );
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());

    let events = EventSink::memory();
    let mut ledger = Ledger::open(&s.state()).unwrap();
    let copy = match ledger.status("info", "u1").unwrap() {
        Status::Quarantined { path } => path,
        other => panic!("{other:?}"),
    };
    // A copy that cannot be read is not released.
    let saved = std::fs::read(&copy).unwrap();
    std::fs::remove_file(&copy).unwrap();
    let err = popbridge::quarantine::release(&mut ledger, &events, "info", "u1").unwrap_err();
    assert!(
        matches!(err, popbridge::quarantine::QuarantineError::Copy { .. }),
        "{err:?}"
    );
    std::fs::write(&copy, saved).unwrap();
    popbridge::quarantine::release(&mut ledger, &events, "info", "u1").unwrap();
    assert_eq!(count(&events.collected(), "quarantine.released"), 1);
    drop(ledger);

    let accepting = smtp(MockSmtp::builder()).await;
    s.config.transport.smtp_mut().unwrap().port = accepting.addr().unwrap().port();
    for pass in 1..=2 {
        let (sum, events) = s.pass(&pop, &accepting).await;
        assert_eq!(sum.delivered, u32::from(pass == 1), "pass {pass}: {sum:?}");
        assert_eq!(
            count(&events, "quarantine.redelivered"),
            usize::from(pass == 1)
        );
        assert_eq!(
            delivered_ids(&accepting),
            ["<m1@isp.example>"],
            "pass {pass}"
        );
    }
    let ledger = Ledger::open(&s.state()).unwrap();
    assert!(matches!(
        ledger.status("info", "u1").unwrap(),
        Status::Delivered { .. }
    ));
    assert!(ledger.quarantined(None).unwrap().is_empty());
}
