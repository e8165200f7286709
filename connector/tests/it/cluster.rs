//! Fenced account leases and server slots over a real PostgreSQL (the `pg` fixture): what
//! several instances sharing one database rely on.
//!
//! Every test starts its own server; a machine without PostgreSQL skips them (fails with
//! `POPBRIDGE_REQUIRE_PEERS=1`). Waiting for the database's clock to pass an expiry is a
//! bounded poll of `now()`, never a fixed sleep.
//!
//! Must never: mock the database, or depend on the order in which the instances' requests
//! reach it (concurrent claims are checked by their sum, not their split).

/// The PostgreSQL fixture, a file of its own beside this one.
#[path = "pg.rs"]
pub(crate) mod pg;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use pg::Postgres;
use popbridge::cluster::{Cluster, ClusterConfig, ClusterError, Lease};
use tokio::time::Instant;
use tokio_postgres::NoTls;

/// A lease time to live no test outlasts.
const LONG_TTL: Duration = Duration::from_secs(600);
/// The longest a test waits for the database's clock.
const CLOCK_WAIT: Duration = Duration::from_secs(30);
/// The server of the slot tests.
const SERVER: &str = "pop.contoso.local";

async fn instance(pg: &Postgres, id: &str, ttl: Duration) -> Cluster {
    Cluster::connect(&pg.url(), id, ttl).await.unwrap()
}

/// A plain client with nothing set up.
pub(crate) async fn connect_plain(pg: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A plain client, for what the test itself reads and writes.
async fn observer(pg: &Postgres) -> tokio_postgres::Client {
    let client = connect_plain(pg).await;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS scratch (account text, writer text)")
        .await
        .unwrap();
    client
}

/// A plain client, and instances `a` (leases of `ttl_a`) and `b` (long leases) with
/// `accounts` registered.
async fn a_and_b(
    pg: &Postgres,
    ttl_a: Duration,
    accounts: &[&str],
) -> (tokio_postgres::Client, Cluster, Cluster) {
    let db = observer(pg).await;
    let mut a = instance(pg, "a", ttl_a).await;
    let b = instance(pg, "b", LONG_TTL).await;
    a.register(accounts).await.unwrap();
    (db, a, b)
}

/// Waits (bounded) until the database's clock is past `t`.
pub(crate) async fn wait_for_db_clock(db: &tokio_postgres::Client, t: SystemTime) {
    let deadline = Instant::now() + CLOCK_WAIT;
    loop {
        let past: bool = db
            .query_one("SELECT now() > $1", &[&t])
            .await
            .unwrap()
            .get(0);
        if past {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the database clock never passed {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The caller's side of a fenced write: one row in `scratch`, in the fenced transaction.
async fn write_fenced(
    lease: &mut Lease,
    cluster: &mut Cluster,
    writer: &str,
) -> Result<(), ClusterError> {
    let account = lease.account().to_owned();
    let mut tx = lease.fenced_transaction(cluster).await?;
    tx.execute(
        "INSERT INTO scratch (account, writer) VALUES ($1, $2)",
        &[&account, &writer],
    )
    .await?;
    tx.commit().await
}

async fn scratch_writers(db: &tokio_postgres::Client) -> Vec<String> {
    db.query("SELECT writer FROM scratch ORDER BY writer", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Claims in small batches until nothing is left (at most `rounds` claims); the accounts
/// claimed.
async fn claim_all(cluster: &mut Cluster, rounds: usize) -> Vec<String> {
    let mut claimed = Vec::new();
    for _ in 0..rounds {
        let batch = cluster.claim(2).await.unwrap();
        if batch.is_empty() {
            return claimed;
        }
        claimed.extend(batch.iter().map(|l| l.account().to_owned()));
    }
    panic!("still claiming after {rounds} claims: held leases are claimed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_claim_disjoint_sets_covering_every_account() {
    let Some(pg) = Postgres::start() else { return };
    let accounts: Vec<String> = (0..50).map(|i| format!("user{i:02}")).collect();
    let mut a = instance(&pg, "a", LONG_TTL).await;
    let mut b = instance(&pg, "b", LONG_TTL).await;
    assert_eq!(a.register(&accounts).await.unwrap(), 50);
    assert_eq!(
        b.register(&accounts).await.unwrap(),
        0,
        "registering is idempotent"
    );

    let (by_a, by_b) = tokio::join!(claim_all(&mut a, 50), claim_all(&mut b, 50));

    let set_a: BTreeSet<&String> = by_a.iter().collect();
    let set_b: BTreeSet<&String> = by_b.iter().collect();
    assert_eq!(set_a.len(), by_a.len(), "a claimed an account twice");
    assert_eq!(set_b.len(), by_b.len(), "b claimed an account twice");
    assert!(
        set_a.is_disjoint(&set_b),
        "both hold {:?}",
        set_a.intersection(&set_b).collect::<Vec<_>>()
    );
    let all: BTreeSet<&String> = set_a.union(&set_b).copied().collect();
    assert_eq!(all, accounts.iter().collect::<BTreeSet<_>>());
    // The database agrees: every row has the owner that claimed it, at epoch 1.
    let db = observer(&pg).await;
    for row in db
        .query("SELECT account, owner, epoch FROM lease", &[])
        .await
        .unwrap()
    {
        let (account, owner, epoch): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        let claimed_by = if set_a.contains(&account) { "a" } else { "b" };
        assert_eq!((owner.as_str(), epoch), (claimed_by, 1), "{account}");
    }
}

/// A database that stops answering (a silent link, not a closed one: the link proxy holds every
/// byte) costs a fenced write at most its deadlines, never a hang, and nothing of it
/// commits, also when the held bytes reach the server late; the claim works again once
/// the link is back. Without the deadlines the write waits until the link returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_fails_a_fenced_write_by_its_deadline() {
    let Some(pg) = Postgres::start() else { return };
    let db = observer(&pg).await;
    let link = pg.link().await;
    let ttl = Duration::from_secs(20);
    let mut a = Cluster::connect(&pg.url_via(link.addr()), "a", ttl)
        .await
        .unwrap();
    let deadline = a.config().deadline();
    let mut lease = a.claim_named(&["alice"]).await.unwrap().pop().unwrap();
    write_fenced(&mut lease, &mut a, "before the cut")
        .await
        .unwrap();

    link.cut();
    // The fence, then one retry on a new connection: two deadlines, and some slack.
    let bound = 3 * deadline + Duration::from_secs(5);
    let err = tokio::time::timeout(bound, write_fenced(&mut lease, &mut a, "during the cut"))
        .await
        .expect("a fenced write waited on a silent database past its deadlines")
        .unwrap_err();
    assert!(matches!(err, ClusterError::Stalled { .. }), "{err}");
    assert!(err.is_connection_lost() && !err.is_fenced(), "{err}");

    // Before the restore, so that what the link held has reached the server by the time
    // the writers are read.
    link.restore();
    write_fenced(&mut lease, &mut a, "after the restore")
        .await
        .unwrap();
    assert_eq!(
        scratch_writers(&db).await,
        ["after the restore", "before the cut"],
        "the write sent during the cut must not commit, even late"
    );
}

/// The guarantees rest on session settings that the server's defaults must not undo:
/// durable commits (a DELE follows a commit that survives a crash of the database), and
/// the deadline enforced from the server's side too.
#[tokio::test]
async fn every_connection_commits_durably_and_carries_its_deadline() {
    let Some(pg) = Postgres::start() else { return };
    let db = observer(&pg).await;
    db.batch_execute("ALTER SYSTEM SET synchronous_commit = off")
        .await
        .unwrap();
    db.query("SELECT pg_reload_conf()", &[]).await.unwrap();
    let show = |row: Vec<tokio_postgres::Row>| -> String { row[0].get(0) };
    // The server's default is off now, for a plain new session.
    let plain = connect_plain(&pg).await;
    let default = show(plain.query("SHOW synchronous_commit", &[]).await.unwrap());
    assert_eq!(default, "off");

    let mut a = instance(&pg, "a", Duration::from_secs(20)).await;
    let mut lease = a.claim_named(&["alice"]).await.unwrap().pop().unwrap();
    let mut tx = lease.fenced_transaction(&mut a).await.unwrap();
    for (setting, expected) in [
        ("synchronous_commit", "on"),
        ("statement_timeout", "5s"),
        ("idle_in_transaction_session_timeout", "5s"),
    ] {
        let value = show(tx.query(&format!("SHOW {setting}"), &[]).await.unwrap());
        assert_eq!(value, expected, "{setting}");
    }
    tx.rollback().await;
}

#[tokio::test]
async fn expired_lease_is_taken_over_and_the_old_owners_write_is_refused() {
    let Some(pg) = Postgres::start() else { return };
    let (db, mut a, mut b) = a_and_b(&pg, Duration::from_secs(1), &["alice"]).await;
    let mut old = a.claim(10).await.unwrap().pop().unwrap();
    write_fenced(&mut old, &mut a, "a while it held the lease")
        .await
        .unwrap();

    wait_for_db_clock(&db, old.expires_at()).await;
    let mut new = b.claim(10).await.unwrap();
    assert_eq!(new.len(), 1, "the expired lease is free for b");
    let mut new = new.pop().unwrap();
    assert_eq!(new.account(), "alice");
    assert!(
        new.epoch() > old.epoch(),
        "{} > {}",
        new.epoch(),
        old.epoch()
    );

    let err = write_fenced(&mut old, &mut a, "a after losing the lease")
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(old.is_lost() && !old.may_act());
    let again = old.heartbeat(&mut a).await.unwrap_err();
    assert!(again.is_fenced(), "{again}");
    write_fenced(&mut new, &mut b, "b").await.unwrap();
    assert_eq!(
        scratch_writers(&db).await,
        ["a while it held the lease", "b"],
        "the old owner's write after the takeover must not be in the database"
    );
}

#[tokio::test]
async fn an_open_fenced_transaction_holds_off_a_takeover_without_blocking_other_claims() {
    let Some(pg) = Postgres::start() else { return };
    let (db, mut a, mut b) = a_and_b(&pg, Duration::from_secs(1), &["alice", "bob"]).await;
    let mut leases = a.claim(10).await.unwrap();
    let bob_expiry = leases[1].expires_at();
    let alice = &mut leases[0];
    let account = alice.account().to_owned();
    let mut tx = alice.fenced_transaction(&mut a).await.unwrap();
    tx.execute(
        "INSERT INTO scratch (account, writer) VALUES ($1, 'a')",
        &[&account],
    )
    .await
    .unwrap();

    // The fence set alice's expiry to its transaction's start + 1 s: before this.
    let after_fence: SystemTime = db
        .query_one("SELECT now() + interval '1 second'", &[])
        .await
        .unwrap()
        .get(0);
    wait_for_db_clock(&db, after_fence.max(bob_expiry)).await;
    // Both leases have expired by the database's clock; alice's row is still locked by
    // a's open transaction, so b skips it (and does not wait for it).
    let taken = tokio::time::timeout(CLOCK_WAIT, b.claim(10))
        .await
        .expect("a claim must not wait for a locked lease")
        .unwrap();
    let taken: Vec<&str> = taken.iter().map(|l| l.account()).collect();
    assert_eq!(taken, ["bob"]);

    tx.commit().await.unwrap();
    assert_eq!(scratch_writers(&db).await, ["a"]);
    let taken = b.claim(10).await.unwrap();
    assert_eq!(taken.len(), 1, "alice is free once a's transaction ended");
    assert!(taken[0].epoch() > leases[0].epoch());
}

#[tokio::test]
async fn heartbeat_extends_the_lease_past_its_first_expiry() {
    let Some(pg) = Postgres::start() else { return };
    let ttl = Duration::from_secs(2);
    let (db, mut a, mut b) = a_and_b(&pg, ttl, &["alice"]).await;
    let mut lease = a.claim(1).await.unwrap().pop().unwrap();
    let first_expiry = lease.expires_at();

    wait_for_db_clock(&db, first_expiry - ttl / 2).await;
    lease.heartbeat(&mut a).await.unwrap();
    assert!(lease.expires_at() > first_expiry);
    wait_for_db_clock(&db, first_expiry).await;

    let taken = b.claim(10).await.unwrap();
    assert!(
        taken.is_empty(),
        "b took {} although a's heartbeat extended it",
        taken[0].account()
    );
    write_fenced(&mut lease, &mut a, "a").await.unwrap();
    assert_eq!(scratch_writers(&db).await, ["a"]);
}

#[tokio::test]
async fn an_instance_that_cannot_reach_the_database_stops_acting_after_ttl_minus_margin() {
    let Some(pg) = Postgres::start() else { return };
    let (ttl, margin) = (Duration::from_secs(60), Duration::from_secs(10));
    let config = ClusterConfig::new(&pg.url(), "a", ttl)
        .unwrap()
        .with_margin(margin)
        .unwrap();
    let mut a = Cluster::connect_with(config).await.unwrap();
    a.register(&["alice"]).await.unwrap();

    let before = Instant::now();
    let mut lease = a.claim(1).await.unwrap().pop().unwrap();
    let after = Instant::now();
    pg.stop();
    // Paused only now: on the paused clock a statement's deadline would pass the moment
    // the test waited for a live server. The stopped one's answers are already there.
    tokio::time::pause();

    let err = lease.heartbeat(&mut a).await.unwrap_err();
    assert!(
        !err.is_fenced(),
        "an unreachable database is not a lost lease: {err}"
    );
    assert!(err.is_connection_lost(), "{err}");
    tokio::time::advance((before + ttl - margin - Duration::from_millis(1)) - Instant::now()).await;
    assert!(lease.may_act(), "still within ttl - margin of the claim");
    let err = lease.heartbeat(&mut a).await.unwrap_err();
    assert!(!err.is_fenced(), "{err}");
    tokio::time::advance((after + ttl - margin).saturating_duration_since(Instant::now())).await;
    assert!(
        !lease.may_act(),
        "ttl - margin has passed since the claim was sent, and no fence succeeded"
    );
    assert!(!lease.is_lost(), "nobody said the lease was taken");
}

#[tokio::test]
async fn three_instances_never_hold_more_slots_than_the_cap() {
    let Some(pg) = Postgres::start() else { return };
    let db = observer(&pg).await;
    let mut c1 = instance(&pg, "one", LONG_TTL).await;
    let mut c2 = instance(&pg, "two", LONG_TTL).await;
    let mut c3 = instance(&pg, "three", LONG_TTL).await;

    let (s1, s2, s3) = tokio::join!(
        c1.claim_slot(SERVER, 2),
        c2.claim_slot(SERVER, 2),
        c3.claim_slot(SERVER, 2)
    );
    let mut got = [s1.unwrap(), s2.unwrap(), s3.unwrap()];
    let held: BTreeSet<i32> = got.iter().flatten().map(|s| s.slot()).collect();
    assert_eq!(held, BTreeSet::from([0, 1]), "two distinct slots held");
    let refused = got.iter().position(Option::is_none).unwrap();
    let held_in_db: i64 = db
        .query_one(
            "SELECT count(*) FROM server_slot \
             WHERE server = $1 AND owner IS NOT NULL AND expires_at > now()",
            &[&SERVER],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held_in_db, 2);
    let mut clusters = [c1, c2, c3];
    let again = clusters[refused].claim_slot(SERVER, 2).await.unwrap();
    assert!(again.is_none(), "a third slot while two are held");

    // One holder releases its slot: the refused instance gets it, at a new epoch.
    let holder = (refused + 1) % 3;
    let released = got[holder].take().unwrap();
    let (number, epoch) = (released.slot(), released.epoch());
    released.release(&mut clusters[holder]).await.unwrap();
    let mut slot = clusters[refused]
        .claim_slot(SERVER, 2)
        .await
        .unwrap()
        .expect("the released slot is free");
    assert_eq!(slot.slot(), number);
    assert!(slot.epoch() > epoch);
    assert!(slot.may_act());
    slot.heartbeat(&mut clusters[refused]).await.unwrap();
}

#[tokio::test]
async fn a_lease_survives_a_database_restart_through_a_new_connection() {
    let Some(pg) = Postgres::start() else { return };
    let db = observer(&pg).await;
    let mut a = instance(&pg, "a", LONG_TTL).await;
    a.register(&["alice"]).await.unwrap();
    let mut lease = a.claim(1).await.unwrap().pop().unwrap();
    let act_until = lease.act_until();
    drop(db);

    pg.restart();

    lease.heartbeat(&mut a).await.unwrap();
    assert!(lease.may_act());
    assert!(
        lease.act_until() > act_until,
        "the fence after the restart extended it"
    );
    write_fenced(&mut lease, &mut a, "a after the restart")
        .await
        .unwrap();
    let db = observer(&pg).await;
    assert_eq!(scratch_writers(&db).await, ["a after the restart"]);
}

#[tokio::test]
async fn the_database_password_never_appears_in_settings_or_errors() {
    const PASSWORD: &str = "Sw0rdfish-s3cret";
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgresql://popbridge:{PASSWORD}@/cluster?host={}",
        dir.path().display()
    );
    let config = ClusterConfig::new(&url, "a", LONG_TTL).unwrap();
    let shown = format!("{config} {config:?}");
    assert!(
        shown.contains("popbridge@") && !shown.contains(PASSWORD),
        "{shown}"
    );

    // No server in that directory: the connection fails.
    let err = Cluster::connect_with(config).await.err().unwrap();
    assert!(err.is_connection_lost(), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");

    for bad in [
        format!("postgresql://popbridge:{PASSWORD}@db.contoso.com/cluster"),
        format!("postgresql://popbridge:{PASSWORD}@[::1]:99999999/cluster"),
        format!("host=/tmp password='{PASSWORD}"),
    ] {
        let err = ClusterConfig::new(&bad, "a", LONG_TTL).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}
