//! The shared delivery ledger over a real PostgreSQL (the `pg` fixture): that it keeps the
//! same records as the local SQLite ledger, that only the lease's current holder writes
//! to it, and that nothing of a transaction that did not commit is recorded.
//!
//! A machine without PostgreSQL skips these tests (fails with `POPBRIDGE_REQUIRE_PEERS=1`).
//!
//! Must never: mock the database, or compare times taken from two clocks.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use popbridge::cluster::{Cluster, ClusterError, Lease, Refusal};
use popbridge::ledger::{
    Delivery, FailureKind, Ledger, Outcome, PassCounts, PassRow, QuarantineAction, QuarantineRow,
    Status, StuckRow, Unconfirmed,
};
use tokio_postgres::NoTls;

use crate::cluster::pg::Postgres;
use crate::cluster::wait_for_db_clock;

/// A lease time to live no test outlasts.
const LONG_TTL: Duration = Duration::from_secs(600);
const ACCOUNT: &str = "alice";

async fn instance(pg: &Postgres, id: &str, ttl: Duration) -> Cluster {
    let mut c = Cluster::connect(&pg.url(), id, ttl).await.unwrap();
    c.register(&[ACCOUNT]).await.unwrap();
    c
}

async fn lease_of(cluster: &mut Cluster) -> Lease {
    cluster
        .claim(1)
        .await
        .unwrap()
        .pop()
        .expect("the account is free")
}

/// Statuses with their delivery times left out (the two ledgers read different clocks).
fn timeless(statuses: HashMap<String, Status>) -> HashMap<String, Status> {
    statuses
        .into_iter()
        .map(|(k, s)| match s {
            Status::Delivered { deleted, .. } => (k, Status::Delivered { at: 0, deleted }),
            other => (k, other),
        })
        .collect()
}

fn set(keys: &[&str]) -> HashSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

/// What one script of ledger calls returned, and what the ledger held after it.
#[derive(Debug, PartialEq)]
struct Trace {
    counts: Vec<u32>,
    /// The marks right after the group commit (the end of the script clears most).
    marked_after_commit: HashSet<String>,
    deleted: Vec<String>,
    statuses: HashMap<String, Status>,
    submitting: HashSet<String>,
    shared: HashSet<String>,
    /// The administrator's side, then pruning and the history.
    admin: Admin,
}

/// What the second half of the script returned: quarantine actions, stuck messages,
/// pruning and the pass history (times the ledgers take themselves left out).
#[derive(Debug, Default, PartialEq)]
struct Admin {
    asked: Vec<bool>,
    actions: HashMap<String, QuarantineAction>,
    quarantined: Vec<QuarantineRow>,
    stuck: Vec<StuckRow>,
    failed_since: bool,
    pruned: Vec<usize>,
    after_prune: Vec<String>,
    passes: Vec<PassRow>,
}

fn pass_row(started_at: i64, outcome: Outcome, delivered: u32) -> PassRow {
    PassRow {
        account: ACCOUNT.into(),
        started_at,
        finished_at: started_at + 5,
        outcome,
        reason: (outcome == Outcome::Failed).then(|| "POP3 server gone".into()),
        counts: PassCounts {
            listed: 9,
            delivered,
            deleted: delivered,
            left: 1,
            rejected: 2,
            deferred: 3,
            skipped: 4,
            quarantined: 5,
        },
    }
}

/// The local ledger's admin half of the script.
fn local_admin(l: &mut Ledger) -> Admin {
    let a = ACCOUNT;
    let mut admin = Admin::default();
    for (key, action) in [
        ("k6", QuarantineAction::Release),
        ("k1", QuarantineAction::Discard),
    ] {
        admin
            .asked
            .push(l.set_quarantine_action(a, key, Some(action)).unwrap());
    }
    admin.actions = l.quarantine_actions(a).unwrap();
    admin.quarantined = l.quarantined(Some(a)).unwrap();
    admin.stuck = l.stuck(a).unwrap();
    admin.failed_since = l.oldest_failed_since(a).unwrap().is_some();
    l.record_listing(a, &set(&["k4"])).unwrap();
    admin.pruned = vec![l.prune(a, 86_400).unwrap(), l.prune(a, 0).unwrap()];
    admin.after_prune = l.statuses(a).unwrap().into_keys().collect();
    for (i, outcome) in [Outcome::Ok, Outcome::Failed, Outcome::Backlog]
        .into_iter()
        .enumerate()
    {
        l.record_pass(&pass_row(1_000 + i as i64, outcome, i as u32))
            .unwrap();
    }
    admin.passes = l.passes(a, 2).unwrap();
    admin.timeless()
}

/// The cluster ledger's: the pass's part under the lease, the administrator's outside it.
async fn cluster_admin(lease: &mut Lease, c: &mut Cluster) -> Admin {
    let a = ACCOUNT;
    let mut admin = Admin::default();
    for (key, action) in [
        ("k6", QuarantineAction::Release),
        ("k1", QuarantineAction::Discard),
    ] {
        let asked = c.ask_quarantine_action(a, key, Some(action)).await;
        admin.asked.push(asked.unwrap());
    }
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    admin.actions = tx.quarantine_actions().await.unwrap();
    tx.commit().await.unwrap();
    admin.quarantined = c.quarantined(Some(a)).await.unwrap();
    admin.stuck = c.stuck(a).await.unwrap();
    admin.failed_since = c.oldest_failed_since(a).await.unwrap().is_some();
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    tx.record_listing(&set(&["k4"])).await.unwrap();
    tx.commit().await.unwrap();
    for retention in [86_400, 0] {
        let mut tx = lease.fenced_transaction(c).await.unwrap();
        admin.pruned.push(tx.prune(retention).await.unwrap());
        tx.commit().await.unwrap();
    }
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    admin.after_prune = tx.statuses().await.unwrap().into_keys().collect();
    for (i, outcome) in [Outcome::Ok, Outcome::Failed, Outcome::Backlog]
        .into_iter()
        .enumerate()
    {
        tx.record_pass(&pass_row(1_000 + i as i64, outcome, i as u32))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    admin.passes = c.passes(a, 2).await.unwrap();
    admin.timeless()
}

impl Admin {
    /// Without the times each ledger took from its own clock, and in key order.
    fn timeless(mut self) -> Self {
        self.after_prune.sort();
        for q in &mut self.quarantined {
            q.since = 0;
        }
        for s in &mut self.stuck {
            s.since = 0;
        }
        self
    }
}

const QUARANTINE: &str = "/var/lib/popbridge/quarantine/alice/k6.eml";

fn deliveries() -> [Delivery<'static>; 2] {
    [
        Delivery {
            key: "k1",
            size: 100,
            reply: "250 2.0.0 queued",
            dele: None,
        },
        Delivery {
            key: "sha256:k2",
            size: 200,
            reply: "250 2.0.0 queued",
            dele: Some((200, 1)),
        },
    ]
}

/// The script on the local SQLite ledger.
fn local_trace(l: &mut Ledger) -> Trace {
    let a = ACCOUNT;
    let mut counts = vec![
        l.record_failure_of(a, "k1", "550 5.7.1 no", FailureKind::Refused)
            .unwrap(),
        l.record_failure_of(a, "k1", "550 5.7.1 still no", FailureKind::Refused)
            .unwrap(),
        l.record_failure_of(a, "k4", "size mismatch", FailureKind::Mismatch)
            .unwrap(),
    ];
    l.begin_submissions(a, &["k3", "k4", "sha256:k2"]).unwrap();
    l.record_deliveries(a, &deliveries(), &["k5"]).unwrap();
    let marked_after_commit = l.submitting(a).unwrap();
    counts.push(
        l.record_failure_of(a, "k1", "550 late", FailureKind::Refused)
            .unwrap(),
    );
    l.record_quarantined(a, "k6", Path::new(QUARANTINE))
        .unwrap();
    l.record_quarantined(a, "k1", Path::new(QUARANTINE))
        .unwrap();
    l.record_deleted(a, &["k1".into(), "gone".into()]).unwrap();
    l.record_shared_uids(a, &["u1".into(), "u2".into(), "u1".into()])
        .unwrap();
    l.record_unconfirmed(
        a,
        &[Unconfirmed {
            key: "k6".into(),
            size: 300,
            listed: 2,
        }],
    )
    .unwrap();
    let mut deleted = l
        .resolve_unconfirmed(a, &HashMap::from([(200, 0), (300, 2)]))
        .unwrap();
    l.clear_unconfirmed(a, "k6").unwrap();
    l.clear_submissions(a, &set(&["k3"])).unwrap();
    deleted.sort();
    let (statuses, submitting) = (l.statuses(a).unwrap(), l.submitting(a).unwrap());
    Trace {
        counts,
        marked_after_commit,
        deleted,
        statuses: timeless(statuses),
        submitting,
        shared: l.shared_uids(a).unwrap(),
        admin: local_admin(l),
    }
}

/// The same script on the cluster ledger, in one fenced transaction per call, as a pass
/// would commit them.
async fn cluster_trace(lease: &mut Lease, c: &mut Cluster) -> Trace {
    let mut counts = Vec::new();
    for (reply, kind, key) in [
        ("550 5.7.1 no", FailureKind::Refused, "k1"),
        ("550 5.7.1 still no", FailureKind::Refused, "k1"),
        ("size mismatch", FailureKind::Mismatch, "k4"),
    ] {
        let mut tx = lease.fenced_transaction(c).await.unwrap();
        counts.push(tx.record_failure_of(key, reply, kind).await.unwrap());
        tx.commit().await.unwrap();
    }
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    tx.begin_submissions(&["k3", "k4", "sha256:k2"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    tx.record_deliveries(&deliveries(), &["k5"]).await.unwrap();
    let marked_after_commit = tx.submitting().await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    counts.push(
        tx.record_failure_of("k1", "550 late", FailureKind::Refused)
            .await
            .unwrap(),
    );
    tx.record_quarantined("k6", Path::new(QUARANTINE))
        .await
        .unwrap();
    tx.record_quarantined("k1", Path::new(QUARANTINE))
        .await
        .unwrap();
    tx.record_deleted(&["k1".into(), "gone".into()])
        .await
        .unwrap();
    tx.record_shared_uids(&["u1".into(), "u2".into(), "u1".into()])
        .await
        .unwrap();
    tx.record_unconfirmed(&[Unconfirmed {
        key: "k6".into(),
        size: 300,
        listed: 2,
    }])
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    let mut deleted = tx
        .resolve_unconfirmed(&HashMap::from([(200, 0), (300, 2)]))
        .await
        .unwrap();
    tx.clear_unconfirmed("k6").await.unwrap();
    tx.clear_submissions(&set(&["k3"])).await.unwrap();
    tx.commit().await.unwrap();
    deleted.sort();
    let mut tx = lease.fenced_transaction(c).await.unwrap();
    let (statuses, submitting) = (tx.statuses().await.unwrap(), tx.submitting().await.unwrap());
    let shared = tx.shared_uids().await.unwrap();
    tx.commit().await.unwrap();
    Trace {
        counts,
        marked_after_commit,
        deleted,
        statuses: timeless(statuses),
        submitting,
        shared,
        admin: cluster_admin(lease, c).await,
    }
}

#[tokio::test]
async fn the_cluster_ledger_keeps_the_same_records_as_the_local_one() {
    let Some(pg) = Postgres::start() else { return };
    let state = tempfile::tempdir().unwrap();
    let local = local_trace(&mut Ledger::open(state.path()).unwrap());
    let mut a = instance(&pg, "a", LONG_TTL).await;
    let mut lease = lease_of(&mut a).await;
    let shared = cluster_trace(&mut lease, &mut a).await;
    assert_eq!(shared, local);
    // What the script must have left, whichever ledger: a delivery overrides failures and
    // is never downgraded, its mark ends, and the DELE of a digest key that vanished from
    // the listing counts as applied.
    assert_eq!(local.counts, [1, 2, 1, 2]);
    assert_eq!(local.marked_after_commit, set(&["k3", "k4", "k5"]));
    assert_eq!(local.deleted, ["sha256:k2"]);
    assert_eq!(
        local.statuses["k1"],
        Status::Delivered {
            at: 0,
            deleted: true
        }
    );
    assert!(matches!(local.statuses["k6"], Status::Quarantined { .. }));
    assert!(matches!(
        local.statuses["k4"],
        Status::Failed {
            kind: FailureKind::Mismatch,
            ..
        }
    ));
    assert_eq!(local.submitting, set(&["k3"]));
    assert_eq!(local.shared, set(&["u1", "u2"]));
    // An action is asked only of a quarantined message; a complete listing that no longer
    // shows a message starts its retention, and only the listed one outlives a zero one.
    let admin = &local.admin;
    assert_eq!(admin.asked, [true, false]);
    assert_eq!(
        admin.actions,
        HashMap::from([("k6".into(), QuarantineAction::Release)])
    );
    assert_eq!(admin.stuck.len(), 1);
    assert_eq!(admin.pruned, [0, 3]);
    assert_eq!(admin.after_prune, ["k4"]);
    assert_eq!(
        admin.passes.iter().map(|p| p.outcome).collect::<Vec<_>>(),
        [Outcome::Backlog, Outcome::Failed]
    );
}

/// A plain client, for what the test itself reads.
async fn observer(pg: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Every ledger row of the account: key and the epoch of its last write.
async fn row_epochs(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    db.query(
        "SELECT key, epoch FROM ledger_message WHERE account = $1 ORDER BY key",
        &[&ACCOUNT],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

async fn deliver(lease: &mut Lease, c: &mut Cluster, key: &str) -> Result<(), ClusterError> {
    let mut tx = lease.fenced_transaction(c).await?;
    let d = Delivery {
        key,
        size: 10,
        reply: "250 ok",
        dele: None,
    };
    tx.record_deliveries(&[d], &[]).await?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_current_holder_writes_and_the_next_one_sees_every_delivery() {
    let Some(pg) = Postgres::start() else { return };
    let db = observer(&pg).await;
    let mut a = instance(&pg, "a", Duration::from_secs(1)).await;
    let mut b = instance(&pg, "b", LONG_TTL).await;
    let mut old = lease_of(&mut a).await;
    deliver(&mut old, &mut a, "m1").await.unwrap();
    // The lease runs out by the database's clock; b takes the account over.
    wait_for_db_clock(&db, old.expires_at()).await;
    let mut new = lease_of(&mut b).await;
    assert!(new.epoch() > old.epoch());
    // a's delivery is b's to see: b never submits it again.
    let mut tx = new.fenced_transaction(&mut b).await.unwrap();
    let seen = tx.statuses().await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(
        seen["m1"],
        Status::Delivered { deleted: false, .. }
    ));
    // a, no longer the holder, can record nothing.
    let refused = deliver(&mut old, &mut a, "m2").await.unwrap_err();
    assert!(refused.is_fenced(), "{refused}");
    deliver(&mut new, &mut b, "m3").await.unwrap();
    assert_eq!(
        row_epochs(&db).await,
        [("m1".into(), old.epoch()), ("m3".into(), new.epoch())]
    );
}

#[tokio::test]
async fn a_transaction_that_does_not_commit_records_nothing() {
    let Some(pg) = Postgres::start() else { return };
    let db = observer(&pg).await;
    let mut a = instance(&pg, "a", LONG_TTL).await;
    let mut lease = lease_of(&mut a).await;
    {
        let mut tx = lease.fenced_transaction(&mut a).await.unwrap();
        tx.begin_submissions(&["m1"]).await.unwrap();
        tx.record_deliveries(&deliveries(), &[]).await.unwrap();
        tx.rollback().await;
    }
    {
        // Dropped without a commit: rolled back before the next statement.
        let mut tx = lease.fenced_transaction(&mut a).await.unwrap();
        tx.record_deliveries(&deliveries(), &["m2"]).await.unwrap();
    }
    let mut tx = lease.fenced_transaction(&mut a).await.unwrap();
    assert!(tx.statuses().await.unwrap().is_empty());
    assert!(tx.submitting().await.unwrap().is_empty());
    tx.commit().await.unwrap();
    assert!(row_epochs(&db).await.is_empty());
}

#[tokio::test]
async fn a_database_of_the_lease_only_schema_gains_the_ledger_and_keeps_its_leases() {
    let Some(pg) = Postgres::start() else { return };
    let db = observer(&pg).await;
    // What the first cluster release created: schema 1, leases only.
    db.batch_execute(
        "CREATE TABLE schema_version (version integer NOT NULL);
         INSERT INTO schema_version VALUES (1);
         CREATE TABLE lease (account text PRIMARY KEY, owner text,
             epoch bigint NOT NULL DEFAULT 0, expires_at timestamptz);
         CREATE TABLE server_slot (server text NOT NULL, slot integer NOT NULL, owner text,
             epoch bigint NOT NULL DEFAULT 0, expires_at timestamptz,
             PRIMARY KEY (server, slot));
         INSERT INTO lease (account, epoch) VALUES ('alice', 7);",
    )
    .await
    .unwrap();
    let mut a = instance(&pg, "a", LONG_TTL).await;
    let mut lease = lease_of(&mut a).await;
    assert_eq!(
        lease.epoch(),
        8,
        "the lease row was kept, its epoch raised by the claim"
    );
    deliver(&mut lease, &mut a, "m1").await.unwrap();
    let versions: Vec<i32> = db
        .query("SELECT version FROM schema_version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [2]);
    // A newer schema than this build knows is refused, not altered.
    db.batch_execute("UPDATE schema_version SET version = 99")
        .await
        .unwrap();
    let refused = Cluster::connect(&pg.url(), "b", LONG_TTL).await.err();
    assert!(
        matches!(refused, Some(ClusterError::Schema { found: 99, .. })),
        "{refused:?}"
    );
}

/// A local ledger with a record of every kind, none pruned.
fn filled(dir: &Path) -> Ledger {
    let a = ACCOUNT;
    let mut l = Ledger::open(dir).unwrap();
    l.record_failure_of(a, "k4", "size mismatch", FailureKind::Mismatch)
        .unwrap();
    l.begin_submissions(a, &["k3"]).unwrap();
    l.record_deliveries(a, &deliveries(), &[]).unwrap();
    l.record_quarantined(a, "k6", Path::new(QUARANTINE))
        .unwrap();
    l.set_quarantine_action(a, "k6", Some(QuarantineAction::Release))
        .unwrap();
    l.record_shared_uids(a, &["u1".into()]).unwrap();
    for (i, outcome) in [Outcome::Ok, Outcome::Stuck].into_iter().enumerate() {
        l.record_pass(&pass_row(2_000 + i as i64, outcome, 1))
            .unwrap();
    }
    l.record_deleted(a, &["k1".into()]).unwrap();
    l.record_listing(a, &set(&["k4", "k6"])).unwrap();
    l
}

#[tokio::test]
async fn a_migrated_ledger_holds_every_record_of_the_local_one_and_is_migrated_once() {
    let Some(pg) = Postgres::start() else { return };
    let state = tempfile::tempdir().unwrap();
    let mut local = filled(state.path());
    let mut admin = instance(&pg, "admin", LONG_TTL).await;
    let migrated = admin.migrate_from(&local).await.unwrap();
    assert_eq!(migrated.accounts, 1);
    assert_eq!(migrated.rows, [4, 1, 1, 2]);
    let mut a = instance(&pg, "a", LONG_TTL).await;
    let mut lease = lease_of(&mut a).await;
    // Every answer the same, times included (they were copied, not taken anew).
    assert_eq!(
        a.quarantined(Some(ACCOUNT)).await.unwrap(),
        local.quarantined(Some(ACCOUNT)).unwrap()
    );
    assert_eq!(
        a.stuck(ACCOUNT).await.unwrap(),
        local.stuck(ACCOUNT).unwrap()
    );
    assert_eq!(
        a.passes(ACCOUNT, 10).await.unwrap(),
        local.passes(ACCOUNT, 10).unwrap()
    );
    let mut tx = lease.fenced_transaction(&mut a).await.unwrap();
    assert_eq!(
        tx.statuses().await.unwrap(),
        local.statuses(ACCOUNT).unwrap()
    );
    assert_eq!(tx.submitting().await.unwrap(), set(&["k3"]));
    assert_eq!(tx.shared_uids().await.unwrap(), set(&["u1"]));
    assert_eq!(
        tx.quarantine_actions().await.unwrap(),
        local.quarantine_actions(ACCOUNT).unwrap()
    );
    // The unconfirmed DELE and the listing came along: the same decisions follow.
    let listed = HashMap::from([(200, 0)]);
    assert_eq!(
        tx.resolve_unconfirmed(&listed).await.unwrap(),
        local.resolve_unconfirmed(ACCOUNT, &listed).unwrap()
    );
    assert_eq!(tx.prune(0).await.unwrap(), local.prune(ACCOUNT, 0).unwrap());
    tx.commit().await.unwrap();
    // Again: refused while a holds the lease, and refused once it is free, since the
    // records are there; nothing is written twice.
    let held = admin.migrate_from(&local).await.unwrap_err();
    assert!(
        matches!(&held, ClusterError::Migration(Refusal::LeaseHeld { account }) if account == ACCOUNT),
        "{held}"
    );
    lease.release(&mut a).await.unwrap();
    let twice = admin.migrate_from(&local).await.unwrap_err();
    assert!(
        matches!(
            &twice,
            ClusterError::Migration(Refusal::RecordsExist { account, .. }) if account == ACCOUNT
        ),
        "{twice}"
    );
    assert_eq!(a.passes(ACCOUNT, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn migrate_ledger_copies_the_state_directorys_ledger_once() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let local = filled(&state);
    let config = dir.path().join("popbridge.toml");
    let head = format!(
        "state_dir = \"{}\"\n[transport]\nhost = \"127.0.0.1\"\n[[account]]\nname = \"{ACCOUNT}\"\n\
         host = \"127.0.0.1\"\nusername = \"{ACCOUNT}\"\npassword_env = \"UNUSED_PW\"\n\
         deliver_to = \"alice@contoso.local\"\n",
        state.display()
    );
    let run = |text: String| {
        std::fs::write(&config, text).unwrap();
        let path = config.to_str().unwrap().to_owned();
        async move {
            let out = crate::harness::popbridge(&["--config", &path, "migrate-ledger"]).await;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        }
    };
    let (code, _, err) = run(head.clone()).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no [cluster] section"), "{err}");
    let with_cluster = format!("{head}[cluster]\ndatabase = \"{}\"\n", pg.url());
    let (code, out, err) = run(with_cluster.clone()).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("copied the ledger of 1 account(s)"), "{out}");
    let mut a = instance(&pg, "a", LONG_TTL).await;
    let mut lease = lease_of(&mut a).await;
    let mut tx = lease.fenced_transaction(&mut a).await.unwrap();
    assert_eq!(
        tx.statuses().await.unwrap(),
        local.statuses(ACCOUNT).unwrap()
    );
    tx.commit().await.unwrap();
    lease.release(&mut a).await.unwrap();
    let (code, _, err) = run(with_cluster).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already has records"), "{err}");
}

#[tokio::test]
async fn quarantine_commands_say_they_are_not_there_yet_with_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("popbridge.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[transport]\nhost = \"127.0.0.1\"\n[[account]]\nname = \"{ACCOUNT}\"\n\
             host = \"127.0.0.1\"\nusername = \"{ACCOUNT}\"\npassword_env = \"UNUSED_PW\"\n\
             deliver_to = \"alice@contoso.local\"\n[cluster]\ndatabase = \"host=/nonexistent\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out =
        crate::harness::popbridge(&["--config", config.to_str().unwrap(), "quarantine", "list"])
            .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not available yet with a [cluster] section"),
        "{err}"
    );
}
