//! The cluster database's tables, created idempotently and versioned by the one row of
//! `schema_version`.
//!
//! Responsible for: creating `lease` and `server_slot` when missing, serialised between
//! instances that start together, and refusing a database whose schema is not ours.
//! Must never: alter or drop a table of a schema version it does not know.

use tokio_postgres::Client;

use super::ClusterError;

/// The schema this build creates and uses.
pub(super) const SCHEMA_VERSION: i32 = 1;

/// Serialises schema creation between instances (`pg_advisory_xact_lock`); "popbrdg1".
const SCHEMA_LOCK: i64 = 0x706f_7062_7264_6731;

/// The tables of version 1.
const TABLES: &str = "
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
";

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
    match found[..] {
        [] => {
            tx.batch_execute(TABLES).await.map_err(db)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(db)?;
        }
        [SCHEMA_VERSION] => {}
        _ => {
            return Err(ClusterError::Schema {
                target: target.to_owned(),
                found: found.iter().copied().max().unwrap_or_default(),
                supported: SCHEMA_VERSION,
            })
        }
    }
    tx.commit().await.map_err(db)
}
