//! `migrate-ledger`: copying a local SQLite ledger whole into the cluster's, so that a
//! setup moving to several instances keeps every record (nothing delivered again).
//!
//! Responsible for: reading every table of the local ledger and writing it into the
//! `ledger_*` tables in one transaction, with a free lease for every account it names;
//! refusing when the cluster already has records of one of those accounts, or an instance
//! holds one of their leases (records would then be merged or written twice).
//! Must never: overwrite or merge a record already in the cluster ledger, commit part of a
//! copy, or format a caller's string into SQL (table and column names come from
//! [`Table`]).

use std::collections::BTreeSet;

use tokio_postgres::types::ToSql;

use super::error::{bounded, Failure, Refusal};
use super::{Cluster, ClusterError};
use crate::ledger::{Cell, Ledger, Table};

/// The epoch the copied rows carry: below any lease's, which start at 1.
pub const MIGRATED_EPOCH: i64 = 0;

/// What a migration copied, per table, and for how many accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Accounts the local ledger named (each now has a lease row).
    pub accounts: usize,
    /// Rows copied, per table, in the order of [`Table::ALL`].
    pub rows: [u64; 4],
}

impl Cluster {
    /// Copies `local` whole into the cluster ledger, in one transaction: every row of
    /// every table (each carrying [`MIGRATED_EPOCH`]), and a free lease for each account.
    /// Refused, with nothing written, when the cluster ledger already has a row of one of
    /// those accounts or one of their leases is held.
    pub async fn migrate_from(&mut self, local: &Ledger) -> Result<Migrated, ClusterError> {
        let mut tables = Vec::new();
        for table in Table::ALL {
            let rows = local.rows(table).map_err(|e| Refusal::Local(Box::new(e)))?;
            tables.push((table, rows));
        }
        let accounts: Vec<String> = (tables.iter())
            .flat_map(|(_, rows)| rows.iter())
            .filter_map(|row| match row.first() {
                Some(Cell::Text(account)) => Some(account.clone()),
                _ => None,
            })
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        self.ready().await?;
        let result = copy(self, &accounts, &tables).await;
        match &result {
            Err(e) if e.is_connection_lost() => self.reconnect_owed = true,
            Err(_) => self.abandon().await,
            Ok(_) => {}
        }
        result
    }
}

/// The transaction of [`Cluster::migrate_from`].
async fn copy(
    cluster: &Cluster,
    accounts: &[String],
    tables: &[(Table, Vec<Vec<Cell>>)],
) -> Result<Migrated, ClusterError> {
    let client = &cluster.client;
    // Every statement of the copy is bounded like any other.
    let deadline = cluster.config.deadline();
    let db = |e: Failure| e.into_error(&cluster.config.target, deadline);
    bounded(deadline, "BEGIN", client.batch_execute("BEGIN"))
        .await
        .map_err(db)?;
    // Holds off claims and other migrations of these accounts until the copy commits.
    let params: [&(dyn ToSql + Sync); 1] = [&accounts];
    let register = client.execute(
        "INSERT INTO lease (account) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        &params,
    );
    bounded(deadline, "the lease registration", register)
        .await
        .map_err(db)?;
    let held = client.query(
        "SELECT account FROM lease WHERE account = ANY($1) \
         AND owner IS NOT NULL AND expires_at > now() ORDER BY account FOR UPDATE",
        &params,
    );
    let held = bounded(deadline, "the lease check", held)
        .await
        .map_err(db)?;
    if let Some(row) = held.first() {
        return Err(Refusal::LeaseHeld {
            account: row.get(0),
        }
        .into());
    }
    let mut migrated = Migrated {
        accounts: accounts.len(),
        ..Migrated::default()
    };
    for (i, (table, rows)) in tables.iter().enumerate() {
        let probe = format!(
            "SELECT account FROM {} WHERE account = ANY($1) LIMIT 1",
            table.cluster_name()
        );
        let found = client.query(&probe, &params);
        let found = bounded(deadline, "the records check", found)
            .await
            .map_err(db)?;
        if let Some(row) = found.first() {
            return Err(Refusal::RecordsExist {
                account: row.get(0),
                table: table.cluster_name(),
            }
            .into());
        }
        let insert = insert_statement(*table);
        let statement = bounded(deadline, "PREPARE", client.prepare(&insert))
            .await
            .map_err(db)?;
        for row in rows {
            let values: Vec<Box<dyn ToSql + Sync + Send>> = (row.iter().zip(table.columns()))
                .map(|(cell, (_, text))| value(cell, *text))
                .collect();
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            bounded(
                deadline,
                "a copied row",
                client.execute(&statement, &params),
            )
            .await
            .map_err(db)?;
        }
        migrated.rows[i] = rows.len() as u64;
    }
    bounded(deadline, "COMMIT", client.batch_execute("COMMIT"))
        .await
        .map_err(db)?;
    Ok(migrated)
}

/// `INSERT INTO <cluster table> (<columns>[, epoch]) VALUES ($1, …)`.
fn insert_statement(table: Table) -> String {
    let columns = table.columns();
    let mut names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let mut values: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    if table != Table::SharedUids {
        names.push("epoch");
        values.push(MIGRATED_EPOCH.to_string());
    }
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.cluster_name(),
        names.join(", "),
        values.join(", ")
    )
}

/// A cell as the parameter of a text or bigint column.
fn value(cell: &Cell, text: bool) -> Box<dyn ToSql + Sync + Send> {
    match (cell, text) {
        (Cell::Text(t), _) => Box::new(t.clone()),
        (Cell::Integer(n), _) => Box::new(*n),
        (Cell::Null, true) => Box::new(None::<String>),
        (Cell::Null, false) => Box::new(None::<i64>),
    }
}
