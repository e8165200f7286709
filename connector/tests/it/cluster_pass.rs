//! A pass recording in the cluster ledger through the account's lease (the mocks for the
//! servers, a real PostgreSQL from the `pg` fixture): what it delivers is recorded there
//! under the lease's epoch before its DELE, and an instance whose lease was taken over
//! delivers and deletes nothing.
//!
//! A machine without PostgreSQL skips these tests (fails with `POPBRIDGE_REQUIRE_PEERS=1`).
//!
//! Must never: mock the database, or wait for the database's clock other than by a
//! bounded poll.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock_pop3::MockPop3Handle;
use mock_pop3::{FaultAction as PopFault, FaultRule as PopRule, Hook as PopHook, MockPop3};
use mock_smtp::{MockSmtp, MockSmtpHandle};
use popbridge::cluster::{Cluster, Lease};
use popbridge::config::Config;
use popbridge::events::{EventSink, PassId};
use popbridge::faults::Faults;
use popbridge::ledger::{Delivery, Ledger};
use popbridge::listing::Budget;
use popbridge::net::TcpDialer;
use popbridge::pass::{run_account_in, Context, StopFlag, Summary};
use popbridge::store::{ClusterStore, Store};

use crate::cluster::pg::Postgres;
use crate::cluster::{connect_plain, wait_for_db_clock};
use crate::harness::{
    config_text, delivered_ids, mails, plain_account, pop3, setup, smtp, Setup, PASSWORD,
};

const LONG_TTL: Duration = Duration::from_secs(600);

/// Instance `id` with the setup's account registered, and its lease on it.
async fn holder(pg: &Postgres, id: &str, ttl: Duration, account: &str) -> (Cluster, Lease) {
    let mut c = Cluster::connect(&pg.url(), id, ttl).await.unwrap();
    c.register(&[account]).await.unwrap();
    let lease = c
        .claim(1)
        .await
        .unwrap()
        .pop()
        .expect("the account is free");
    (c, lease)
}

/// One pass over the setup's account recording in `store`; the local ledger of the state
/// directory is there too, and must stay empty.
async fn pass_in(s: &Setup, store: Arc<ClusterStore>, local: &Mutex<Ledger>) -> Summary {
    let events = EventSink::none();
    let stop = StopFlag::default();
    let cx = Context {
        config: &s.config,
        dialer: &TcpDialer,
        events: &events,
        ledger: local,
        stop: &stop,
        faults: Faults::NONE,
        listing_budget: Budget::DEFAULT,
    };
    let account = &s.config.accounts[0];
    run_account_in(&cx, account, &PassId::new(), Store::Cluster(store)).await
}

/// Every row of the cluster ledger: key, whether deleted, and the epoch of its last write.
async fn cluster_rows(pg: &Postgres) -> Vec<(String, bool, i64)> {
    let db = connect_plain(pg).await;
    db.query(
        "SELECT key, deleted_at IS NOT NULL, epoch FROM ledger_message \
         WHERE state = 'delivered' ORDER BY key",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_under_the_lease_records_every_delivery_in_the_cluster_before_deleting_it() {
    let Some(pg) = Postgres::start() else { return };
    let pop = pop3(MockPop3::builder().maildrop(mails(1..=5, 700))).await;
    let sink = smtp(MockSmtp::builder()).await;
    let s = setup(&pop, &sink, "", "");
    let name = s.config.accounts[0].name.clone();
    let (cluster, lease) = holder(&pg, "a", LONG_TTL, &name).await;
    let epoch = lease.epoch();
    let local = Mutex::new(Ledger::open(&s.state()).unwrap());
    let summary = pass_in(&s, ClusterStore::new(cluster, lease), &local).await;
    pop.wait_idle().await;
    sink.wait_idle().await;
    assert!(summary.failure.is_none(), "{summary:?}");
    assert_eq!((summary.delivered, summary.deleted), (5, 5), "{summary:?}");
    assert_eq!(delivered_ids(&sink).len(), 5);
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
    // Recorded in the cluster, by this lease, and confirmed deleted there.
    let rows = cluster_rows(&pg).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter().all(|(_, deleted, e)| *deleted && *e == epoch),
        "{rows:?}"
    );
    // The local ledger was not written.
    let l = local.lock().unwrap();
    assert!(l.statuses(&name).unwrap().is_empty());
    assert!(l.passes(&name, 10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_lease_was_taken_over_delivers_and_deletes_nothing() {
    let Some(pg) = Postgres::start() else { return };
    let pop = pop3(MockPop3::builder().maildrop(mails(1..=3, 700))).await;
    let sink = smtp(MockSmtp::builder()).await;
    let s = setup(&pop, &sink, "", "");
    let name = s.config.accounts[0].name.clone();
    let (stale, old) = holder(&pg, "a", Duration::from_secs(1), &name).await;
    let db = connect_plain(&pg).await;
    wait_for_db_clock(&db, old.expires_at()).await;
    let (_b, new) = holder(&pg, "b", LONG_TTL, &name).await;
    assert!(new.epoch() > old.epoch());
    let local = Mutex::new(Ledger::open(&s.state()).unwrap());
    let summary = pass_in(&s, ClusterStore::new(stale, old), &local).await;
    pop.wait_idle().await;
    sink.wait_idle().await;
    assert!(summary.failure.is_some(), "{summary:?}");
    assert_eq!((summary.delivered, summary.deleted), (0, 0), "{summary:?}");
    assert!(delivered_ids(&sink).is_empty());
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 3);
    assert!(cluster_rows(&pg).await.is_empty());
}

/// Three messages on a POP3 server that takes 3 s to answer UIDL (longer than a 2 s
/// lease), and an SMTP server.
async fn stalling_servers() -> (MockPop3Handle, MockSmtpHandle) {
    let pop = pop3(
        MockPop3::builder()
            .maildrop(mails(1..=3, 700))
            .fault(PopRule::new(
                PopHook::command("UIDL"),
                PopFault::Delay(Duration::from_secs(3)),
            )),
    )
    .await;
    (pop, smtp(MockSmtp::builder()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_outlives_its_lease_sends_no_dele_and_no_quit() {
    let Some(pg) = Postgres::start() else { return };
    // Three messages this account already delivered (recorded in the cluster ledger),
    // still on the server: a pass would DELE them. The server takes 3 s to answer UIDL,
    // longer than a 2 s lease allows acting (ttl − margin: 1.5 s) after the fence that
    // read the ledger.
    let (pop, sink) = stalling_servers().await;
    let s = setup(&pop, &sink, "", "");
    let name = s.config.accounts[0].name.clone();
    let (mut cluster, mut lease) = holder(&pg, "a", Duration::from_secs(2), &name).await;
    let uids: Vec<String> = (1..=3).map(|i| format!("info-{i:06}")).collect();
    let records: Vec<Delivery<'_>> = uids
        .iter()
        .map(|key| Delivery {
            key,
            size: 700,
            reply: "250 ok",
            dele: None,
        })
        .collect();
    let mut tx = lease.fenced_transaction(&mut cluster).await.unwrap();
    tx.record_deliveries(&records, &[]).await.unwrap();
    tx.commit().await.unwrap();
    let local = Mutex::new(Ledger::open(&s.state()).unwrap());
    let summary = pass_in(&s, ClusterStore::new(cluster, lease), &local).await;
    pop.wait_idle().await;
    sink.wait_idle().await;
    assert_eq!(summary.deleted, 0, "{summary:?}");
    // No DELE went out and the session ended without QUIT: nothing deleted, nothing
    // submitted again; whoever holds the account next deletes them.
    let session = &pop.sessions()[0];
    assert!(
        !(session.commands.iter()).any(|c| c.starts_with("DELE") || c.starts_with("QUIT")),
        "{:?}",
        session.commands
    );
    assert_eq!(session.end, Some(mock_pop3::SessionEnd::ClientClosed));
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 3);
    assert!(delivered_ids(&sink).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_stops_allowing_work_before_the_database_would_give_the_lease_away() {
    let Some(pg) = Postgres::start() else { return };
    let (cluster, lease) = holder(&pg, "a", Duration::from_secs(2), "alice").await;
    let store = ClusterStore::new(cluster, lease);
    assert!(store.may_act());
    // No call reaches the database meanwhile: the local deadline alone ends it.
    let db = connect_plain(&pg).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.may_act() {
        assert!(tokio::time::Instant::now() < deadline, "never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_ours: bool = db
        .query_one(
            "SELECT expires_at > now() FROM lease WHERE account = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(still_ours, "the database expired the lease first");
}

/// A setup of its own (state directory, configuration) over the same mocks, with a
/// `[cluster]` section naming `pg`.
fn instance_setup(pop: &MockPop3Handle, sink: &MockSmtpHandle, pg: &Postgres, id: &str) -> Setup {
    instance_with(pop, sink, pg, id, "leave_on_server = true")
}

/// [`instance_setup`] with `account_extra` in the account's table.
fn instance_with(
    pop: &MockPop3Handle,
    sink: &MockSmtpHandle,
    pg: &Postgres,
    id: &str,
    account_extra: &str,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[cluster]\ndatabase = \"{}\"\ninstance = \"{id}\"\n",
        config_text(dir.path(), pop, sink, account_extra, ""),
        pg.url()
    );
    let config = Config::from_str(&text, &dir.path().join("popbridge.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    Setup { dir, config }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_configured_for_one_cluster_deliver_each_message_once() {
    let Some(pg) = Postgres::start() else { return };
    // Mail kept on the server: only the shared ledger tells an instance what the other
    // one already delivered (each has a state directory, and a local ledger, of its own).
    let pop = pop3(MockPop3::builder().maildrop(mails(1..=8, 700))).await;
    let sink = smtp(MockSmtp::builder()).await;
    let (a, b) = (
        instance_setup(&pop, &sink, &pg, "a"),
        instance_setup(&pop, &sink, &pg, "b"),
    );
    // Both at once, then each again: the lease keeps them apart, the shared ledger keeps
    // each from delivering what the other did.
    let ((first_a, _), (first_b, _)) = tokio::join!(
        a.run_through(Arc::new(TcpDialer)),
        b.run_through(Arc::new(TcpDialer))
    );
    let (again_b, _) = b.run_through(Arc::new(TcpDialer)).await;
    let (again_a, _) = a.run_through(Arc::new(TcpDialer)).await;
    pop.wait_idle().await;
    sink.wait_idle().await;
    let all = [&first_a[0], &first_b[0], &again_b[0], &again_a[0]];
    for s in all {
        assert!(s.failure.is_none(), "{s:?}");
        // Skipped for the other instance's lease, and saying so, or run in full.
        assert!(
            s.aborted.is_none() || s.aborted.as_deref().is_some_and(|a| a.contains("lease")),
            "{s:?}"
        );
    }
    assert_eq!(all.iter().map(|s| s.delivered).sum::<u32>(), 8, "{all:?}");
    let mut ids = delivered_ids(&sink);
    assert_eq!(ids.len(), 8, "each message once: {ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 8);
    assert_eq!(cluster_rows(&pg).await.len(), 8);
    // Neither wrote its local ledger.
    for setup in [&a, &b] {
        let local = Ledger::open(&setup.state()).unwrap();
        assert!(local.statuses("info").unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_renews_the_lease_while_its_pass_waits_for_the_server() {
    let Some(pg) = Postgres::start() else { return };
    // The same stall as above (UIDL after 3 s, longer than a 2 s lease), but through a
    // run, which renews the lease while the pass waits: it completes.
    let (pop, sink) = stalling_servers().await;
    let mut a = instance_with(&pop, &sink, &pg, "a", "");
    // Below what the configuration accepts (10 s), to keep the test short.
    a.config.cluster.as_mut().unwrap().lease_ttl = Duration::from_secs(2);
    let (summaries, _) = a.run_through(Arc::new(TcpDialer)).await;
    pop.wait_idle().await;
    sink.wait_idle().await;
    let s = &summaries[0];
    assert!(s.failure.is_none() && s.aborted.is_none(), "{s:?}");
    assert_eq!((s.delivered, s.deleted), (3, 3), "{s:?}");
    assert!(pop.maildrop("info").unwrap().remaining.is_empty());
    assert_eq!(cluster_rows(&pg).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_hold_more_sessions_on_one_server_than_the_cap() {
    let Some(pg) = Postgres::start() else { return };
    // Three mailboxes on one server, allowed one session at a time by the cluster; two
    // instances, each running all three accounts at once.
    let users = ["info", "sales", "support"];
    let mut builder = MockPop3::builder();
    for (i, user) in users.iter().enumerate() {
        let mut m = mails(10 * i + 1..=10 * i + 3, 700);
        m.user = user.to_string();
        builder = builder.maildrop(m);
    }
    let pop = pop3(builder).await;
    let sink = smtp(MockSmtp::builder()).await;
    let port = pop.addr().unwrap().port();
    let instance = |id: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "parallel_accounts = 3\n{}",
            config_text(dir.path(), &pop, &sink, "", "")
        );
        for user in &users[1..] {
            text.push_str(&format!(
                "{}auth = \"user\"\nusername = \"{user}\"\npassword = \"{PASSWORD}\"\n\
                 deliver_to = \"{user}@contoso.local\"\n",
                plain_account(user, "127.0.0.1", port)
            ));
        }
        text.push_str(&format!(
            "[cluster]\ndatabase = \"{}\"\ninstance = \"{id}\"\nserver_sessions = 1\n",
            pg.url()
        ));
        let config = Config::from_str(&text, &dir.path().join("popbridge.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        Setup { dir, config }
    };
    let (a, b) = (instance("a"), instance("b"));
    // Passes wait for a free session slot; a run repeats only if one gave up waiting.
    let mut delivered = 0;
    for _ in 0..6 {
        let ((sa, _), (sb, _)) = tokio::join!(
            a.run_through(Arc::new(TcpDialer)),
            b.run_through(Arc::new(TcpDialer))
        );
        for s in sa.iter().chain(&sb) {
            assert!(s.failure.is_none(), "{s:?}");
            delivered += s.delivered;
        }
        if delivered == 9 {
            break;
        }
    }
    pop.wait_idle().await;
    sink.wait_idle().await;
    assert_eq!(delivered, 9);
    assert_eq!(
        pop.peak_sessions(),
        1,
        "more POP3 sessions at once than the cap"
    );
    let mut ids = delivered_ids(&sink);
    assert_eq!(ids.len(), 9);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9, "each message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_cluster_ledger_and_shows_the_lease() {
    let Some(pg) = Postgres::start() else { return };
    let pop = pop3(MockPop3::builder().maildrop(mails(1..=2, 700))).await;
    let sink = smtp(MockSmtp::builder()).await;
    let a = instance_with(&pop, &sink, &pg, "a", "");
    let (summaries, _) = a.run_through(Arc::new(TcpDialer)).await;
    assert_eq!(summaries[0].delivered, 2, "{:?}", summaries[0]);
    // The same configuration, written for the binary (private: it holds a password).
    let path = a.dir.path().join("popbridge.toml");
    let text = format!(
        "{}\n[cluster]\ndatabase = \"{}\"\ninstance = \"admin\"\n",
        config_text(a.dir.path(), &pop, &sink, "", ""),
        pg.url()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out =
        crate::harness::popbridge(&["--config", path.to_str().unwrap(), "status", "--json"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        doc["cluster"]
            .as_str()
            .is_some_and(|c| c.starts_with("postgres ")),
        "{doc}"
    );
    let account = &doc["accounts"][0];
    assert_eq!(account["last_pass"]["outcome"], "ok", "{doc}");
    assert_eq!(account["last_pass"]["counts"]["delivered"], 2, "{doc}");
    // Given back after the pass: free, and claimed once.
    assert_eq!(account["lease"]["holder"], serde_json::Value::Null, "{doc}");
    assert_eq!(account["lease"]["epoch"], 1, "{doc}");
    assert_eq!(doc["instances"], serde_json::json!([]), "{doc}");

    // Held by an instance: the cluster's view names it, with its accounts.
    let mut b = Cluster::connect(&pg.url(), "b", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(b.claim_named(&["info"]).await.unwrap().len(), 1);
    let config = path.to_str().unwrap();
    let out = crate::harness::popbridge(&["--config", config, "status", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["instances"],
        serde_json::json!([{"instance": "b", "accounts": ["info"]}]),
        "{doc}"
    );
    assert_eq!(doc["accounts"][0]["lease"]["holder"], "b", "{doc}");
    let out = crate::harness::popbridge(&["--config", config, "status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("instances: b holds 1 (info)\n"), "{text}");
    assert!(
        text.contains("accounts with stuck messages: 0 of 1\n"),
        "{text}"
    );
}

/// A setup that has been running on its local ledger (mail kept on the server) is
/// switched to the cluster: after `migrate-ledger`, a run delivers nothing it had
/// delivered before. The same switch without the migration delivers everything again,
/// which is what the migration is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_running_setup_to_the_cluster_after_migrate_ledger_delivers_nothing_twice() {
    let Some(pg) = Postgres::start() else { return };
    let pop = pop3(MockPop3::builder().maildrop(mails(1..=4, 700))).await;
    let sink = smtp(MockSmtp::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("popbridge.toml");
    let local = config_text(dir.path(), &pop, &sink, "leave_on_server = true", "");
    let popbridge = |text: String, command: &'static str| {
        crate::harness::write_private(&config, text);
        let path = config.to_str().unwrap().to_owned();
        async move {
            let out = crate::harness::popbridge(&["--config", &path, command]).await;
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(0), "{command}: {err}");
        }
    };
    popbridge(local.clone(), "fetch").await;
    assert_eq!(sink.counts().accepted, 4, "the local ledger's run");

    // Without the migration: a cluster database of its own knows nothing of them.
    let db = connect_plain(&pg).await;
    db.batch_execute("CREATE DATABASE unmigrated")
        .await
        .unwrap();
    let unmigrated = pg.url().replace("/postgres?", "/unmigrated?");
    let cluster = |url: &str| format!("{local}\n[cluster]\ndatabase = \"{url}\"\n");
    popbridge(cluster(&unmigrated), "fetch").await;
    assert_eq!(sink.counts().accepted, 8, "unmigrated, all four again");

    // With it.
    popbridge(cluster(&pg.url()), "migrate-ledger").await;
    popbridge(cluster(&pg.url()), "fetch").await;
    assert_eq!(
        sink.counts().accepted,
        8,
        "after migrate-ledger, none again"
    );
}
