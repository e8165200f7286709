//! The cluster database's tables, created idempotently and versioned by the one row of
//! `schema_version`.
//!
//! Responsible for: creating the tables when missing and bringing an older schema up to
//! date (the ordered [`MIGRATIONS`]), serialised between instances that start together,
//! and refusing a database whose schema is newer than ours.
//! Must never: alter or drop a table of a schema version it does not know, or edit a
//! released migration (append a new one).

use tokio_postgres::Client;

use super::ClusterError;

/// The schema migrations, in order: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: account leases and server session slots.
    "
CREATE TABLE IF NOT EXISTS lease (
    account text PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz
);
CREATE TABLE IF NOT EXISTS server_slot (
    server text NOT NULL,
    slot integer NOT NULL,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz,
    PRIMARY KEY (server, slot)
);
",
    // v2: the shared delivery ledger, the same records as the local SQLite one (see
    // `cluster::ledger`), each row with the lease epoch of its last write. Times are unix
    // seconds by the database's clock.
    "
CREATE TABLE ledger_message (
    account text NOT NULL,
    key text NOT NULL,
    state text NOT NULL CHECK (state IN ('delivered', 'failed', 'quarantined')),
    delivered_at bigint,
    size bigint CHECK (size IS NULL OR size >= 0),
    delivery_reply text,
    failures bigint NOT NULL DEFAULT 0 CHECK (failures BETWEEN 0 AND 4294967295),
    last_reply text,
    failure_kind text NOT NULL DEFAULT 'refused' CHECK (failure_kind IN ('refused', 'mismatch')),
    quarantine_path text,
    deleted_at bigint,
    unconfirmed_size bigint,
    unconfirmed_listed bigint,
    gone_since bigint,
    quarantine_action text CHECK (quarantine_action IS NULL OR quarantine_action IN ('release', 'discard')),
    action_at bigint,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (account, key),
    CHECK (state <> 'delivered' OR delivered_at IS NOT NULL),
    CHECK (state <> 'failed' OR last_reply IS NOT NULL),
    CHECK (state <> 'quarantined' OR quarantine_path IS NOT NULL)
);
CREATE TABLE ledger_submission (
    account text NOT NULL,
    key text NOT NULL,
    since bigint NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (account, key)
);
CREATE TABLE ledger_shared_uid (
    account text NOT NULL,
    uid text NOT NULL,
    PRIMARY KEY (account, uid)
);
CREATE TABLE ledger_pass (
    id bigserial PRIMARY KEY,
    account text NOT NULL,
    started_at bigint NOT NULL,
    finished_at bigint NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('ok', 'backlog', 'stuck', 'failed')),
    reason text,
    listed bigint NOT NULL,
    delivered bigint NOT NULL,
    deleted bigint NOT NULL,
    left_over bigint NOT NULL,
    rejected bigint NOT NULL,
    deferred bigint NOT NULL,
    skipped bigint NOT NULL,
    quarantined bigint NOT NULL,
    epoch bigint NOT NULL
);
CREATE INDEX ledger_pass_by_account ON ledger_pass (account, id);
",
];

/// The schema this build creates and uses.
pub(super) const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Serialises schema creation between instances (`pg_advisory_xact_lock`); "popbrdg1".
const SCHEMA_LOCK: i64 = 0x706f_7062_7264_6731;

/// Creates the tables when missing, in one transaction.
pub(super) async fn ensure(client: &mut Client, target: &str) -> Result<(), ClusterError> {
    let db = |source| ClusterError::Database {
        target: target.to_owned(),
        source,
    };
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        .await
        .map_err(db)?;
    let found: Vec<i32> = tx
        .query("SELECT version FROM schema_version", &[])
        .await
        .map_err(db)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let current = match found[..] {
        [] => 0,
        [v] if (0..=SCHEMA_VERSION).contains(&v) => v,
        _ => {
            return Err(ClusterError::Schema {
                target: target.to_owned(),
                found: found.iter().copied().max().unwrap_or_default(),
                supported: SCHEMA_VERSION,
            })
        }
    };
    if current == SCHEMA_VERSION {
        return tx.commit().await.map_err(db);
    }
    for (i, batch) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tracing::info!(db = target, to = i + 1, "migrating the cluster schema");
        tx.batch_execute(batch).await.map_err(db)?;
    }
    tx.execute("DELETE FROM schema_version", &[])
        .await
        .map_err(db)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}
