//! Several popbridge instances over one PostgreSQL: fenced account leases, per-server
//! session slots and the shared delivery ledger, used by the pass through `store.rs`
//! when the configuration has a `[cluster]` section.
//!
//! Responsible for: the connection to the cluster database (a unix socket or the
//! loopback, no TLS yet), a deadline on every statement and on opening a connection
//! (ttl / 4, at least two seconds: a database that stops answering cannot hold a pass
//! past its lease), reconnecting after the connection was lost or a statement went
//! unanswered, the tables (created idempotently, versioned by `schema_version`), and
//! claiming free or expired rows by the database's clock (`FOR UPDATE SKIP LOCKED`,
//! epoch + 1). What a claim guarantees, and how it fences writes, is in
//! [`claim`](Claim); the ledger's records, written only inside a fenced transaction, are
//! methods of [`Fenced`].
//! Must never: wait for the database without a deadline, keep using a connection on
//! which a statement went unanswered, judge a lease's expiry by the local wall clock,
//! connect to a database on another machine without TLS, or put the database password
//! in a `Display`/`Debug` string, an error or a log line.

mod claim;
mod error;
mod ledger;
mod migrate;
mod schema;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

pub use claim::{AccountKey, Claim, Fenced, Key, Lease, Slot, SlotKey};
pub use error::{ClusterError, Refusal};
pub use ledger::LeaseState;
pub use migrate::{Migrated, MIGRATED_EPOCH};

use error::{bounded, Failure};

/// The shortest deadline for a statement, whatever the lease time.
const MIN_DEADLINE: Duration = Duration::from_secs(2);

/// Where the cluster database is and who this instance is in it.
#[derive(Clone)]
pub struct ClusterConfig {
    pg: tokio_postgres::Config,
    /// `user@host/dbname`, for messages: never the password.
    target: String,
    instance_id: String,
    ttl: Duration,
    margin: Duration,
}

impl ClusterConfig {
    /// Parses `url` (a `postgres://` URL or `key=value` pairs) for `instance_id`, with
    /// leases of `ttl` and a self-fencing margin of a quarter of it.
    pub fn new(url: &str, instance_id: &str, ttl: Duration) -> Result<Self, ClusterError> {
        // The parser's messages can quote the connection string: none is kept.
        let pg = tokio_postgres::Config::from_str(url).map_err(|_| {
            config_error(
                "the connection string cannot be parsed (not quoted: it may hold a password)",
            )
        })?;
        check_local(&pg)?;
        if instance_id.is_empty() {
            return Err(config_error("the instance id is empty"));
        }
        if ttl.is_zero() {
            return Err(config_error("the lease time to live is zero"));
        }
        let mut pg = pg;
        session_settings(&mut pg, deadline_for(ttl));
        Ok(Self {
            target: target(&pg),
            pg,
            instance_id: instance_id.to_owned(),
            ttl,
            margin: ttl / 4,
        })
    }

    /// The same with another self-fencing margin, which must be shorter than the ttl.
    pub fn with_margin(mut self, margin: Duration) -> Result<Self, ClusterError> {
        if margin >= self.ttl {
            return Err(config_error(
                "the self-fencing margin is not shorter than the lease time to live",
            ));
        }
        self.margin = margin;
        Ok(self)
    }

    /// True when the connection string itself holds a password.
    pub fn has_password(&self) -> bool {
        self.pg.get_password().is_some()
    }

    /// The same with `password` for the database (from a secret source, never from the
    /// connection string).
    pub fn with_password(mut self, password: &str) -> Self {
        self.pg.password(password);
        self
    }

    /// This instance's name in the `owner` columns.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// How long a claim lasts by the database's clock after each claim or fence.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long before the ttl runs out (by the local monotonic clock) a claim stops
    /// allowing work.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// How long after a successful claim or fence was sent work may go on.
    fn act_for(&self) -> Duration {
        self.ttl - self.margin
    }

    /// How long one statement, or the opening of a connection (with the schema check),
    /// may take: a quarter of the ttl, at least [`MIN_DEADLINE`].
    pub fn deadline(&self) -> Duration {
        deadline_for(self.ttl)
    }
}

impl fmt::Display for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres {} as {}", self.target, self.instance_id)
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("target", &self.target)
            .field("password", &self.pg.get_password().map(|_| "***"))
            .field("instance_id", &self.instance_id)
            .field("ttl", &self.ttl)
            .field("margin", &self.margin)
            .finish()
    }
}

/// The deadline of a statement for leases of `ttl`.
fn deadline_for(ttl: Duration) -> Duration {
    (ttl / 4).max(MIN_DEADLINE)
}

/// The session settings the guarantees rest on. The server enforces the same deadline
/// from its side: a statement running longer is cancelled (`statement_timeout`), and a
/// session left idle inside a transaction longer is ended
/// (`idle_in_transaction_session_timeout`), so a fenced transaction whose client went
/// silent releases its lease row instead of holding it until the server notices the
/// connection is dead. A COMMIT returns only once it is durable (`synchronous_commit`
/// on, whatever the server's default): a DELE follows a commit that survives a crash of
/// the database. Options of the connection string are kept; these follow them, so where
/// both set one of these, ours win.
fn session_settings(pg: &mut tokio_postgres::Config, deadline: Duration) {
    let ms = deadline.as_millis();
    let ours = format!(
        "-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms} \
         -c synchronous_commit=on"
    );
    let options = match pg.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    pg.options(&options);
}

fn config_error(reason: &str) -> ClusterError {
    ClusterError::Config {
        reason: reason.to_owned(),
    }
}

/// Refuses TLS settings and any host that is not a unix socket or on the loopback.
fn check_local(pg: &tokio_postgres::Config) -> Result<(), ClusterError> {
    if !matches!(pg.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
        return Err(config_error(
            "TLS to the cluster database is not supported yet (sslmode must be disable or prefer)",
        ));
    }
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        return Err(config_error(
            "no host: name a unix socket directory or a loopback address",
        ));
    }
    let tcp_local =
        |name: &str| name == "localhost" || IpAddr::from_str(name).is_ok_and(|ip| ip.is_loopback());
    for host in pg.get_hosts() {
        if let Host::Tcp(name) = host {
            if !tcp_local(name) {
                return Err(ClusterError::Config {
                    reason: format!(
                        "host {name:?} is not on this machine: without TLS only a unix socket or the loopback is allowed"
                    ),
                });
            }
        }
    }
    if let Some(ip) = pg.get_hostaddrs().iter().find(|ip| !ip.is_loopback()) {
        return Err(ClusterError::Config {
            reason: format!(
                "hostaddr {ip} is not on this machine: without TLS only a unix socket or the loopback is allowed"
            ),
        });
    }
    Ok(())
}

/// `user@host[,host]/dbname`, without the password.
fn target(pg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .chain(pg.get_hostaddrs().iter().map(IpAddr::to_string))
        .collect();
    let user = pg.get_user().unwrap_or("");
    let db = pg.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

/// One instance's connection to the cluster database.
///
/// A lost connection is reopened by the next call. A claim or fence sent on a connection
/// that turns out lost before anything could commit is retried once on a new one.
pub struct Cluster {
    config: ClusterConfig,
    client: Client,
    /// The task driving `client`'s connection: stopped when the connection is replaced
    /// or the `Cluster` dropped, so a connection stuck on a silent link does not linger.
    driver: tokio::task::AbortHandle,
    /// The connection must be replaced before the next statement.
    reconnect_owed: bool,
    /// A fenced transaction was dropped open: ROLLBACK before the next statement.
    rollback_owed: bool,
}

impl Cluster {
    /// Connects to `url` as `instance_id` with leases of `ttl`, creating the tables when
    /// missing.
    pub async fn connect(
        url: &str,
        instance_id: &str,
        ttl: Duration,
    ) -> Result<Self, ClusterError> {
        Self::connect_with(ClusterConfig::new(url, instance_id, ttl)?).await
    }

    /// Connects with a prepared configuration, creating the tables when missing.
    pub async fn connect_with(config: ClusterConfig) -> Result<Self, ClusterError> {
        let (mut client, driver) = open(&config).await?;
        let ensured = tokio::time::timeout(
            config.deadline(),
            schema::ensure(&mut client, &config.target),
        )
        .await;
        let stalled =
            || Failure::Stalled("the schema check").into_error(&config.target, config.deadline());
        if let Err(e) = ensured.unwrap_or_else(|_| Err(stalled())) {
            driver.abort();
            return Err(e);
        }
        Ok(Self {
            config,
            client,
            driver,
            reconnect_owed: false,
            rollback_owed: false,
        })
    }

    /// Another connection of this instance to the same database, without checking the
    /// schema again (this one did): for a pass, while this one goes on claiming. A claim
    /// made through either is used through either (the fence names the instance and the
    /// epoch, not the connection).
    pub async fn connect_again(&self) -> Result<Self, ClusterError> {
        let (client, driver) = open(&self.config).await?;
        Ok(Self {
            config: self.config.clone(),
            client,
            driver,
            reconnect_owed: false,
            rollback_owed: false,
        })
    }

    /// The configuration this instance connected with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Adds a lease row, free, for each account that has none.
    pub async fn register<S: AsRef<str>>(&mut self, accounts: &[S]) -> Result<u64, ClusterError> {
        let names: Vec<&str> = accounts.iter().map(AsRef::as_ref).collect();
        self.ready().await?;
        let result = bounded(
            self.config.deadline(),
            "the lease registration",
            self.client.execute(
                "INSERT INTO lease (account) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                &[&names],
            ),
        )
        .await;
        result.map_err(|e| self.fail(e))
    }

    /// Claims up to `max` accounts whose lease is free or expired by the database's clock,
    /// each with its epoch raised by one; in account order.
    pub async fn claim(&mut self, max: usize) -> Result<Vec<Lease>, ClusterError> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.ready().await?;
        let (rows, act_until) = self
            .claim_rows(
                "UPDATE lease SET owner = $1, epoch = lease.epoch + 1, \
                     expires_at = now() + make_interval(secs => $2) \
                 FROM (SELECT account FROM lease \
                       WHERE owner IS NULL OR expires_at <= now() \
                       ORDER BY account FOR UPDATE SKIP LOCKED LIMIT $3) due \
                 WHERE lease.account = due.account \
                 RETURNING lease.account, lease.epoch, lease.expires_at",
                &[&limit],
            )
            .await?;
        Ok(leases_of(&rows, act_until))
    }

    /// Claims those of `accounts` whose lease is free or expired by the database's clock
    /// (adding a lease row for any that has none), each with its epoch raised by one; a
    /// lease another instance holds, or is claiming right now, is left alone.
    pub async fn claim_named<S: AsRef<str>>(
        &mut self,
        accounts: &[S],
    ) -> Result<Vec<Lease>, ClusterError> {
        self.register(accounts).await?;
        let names: Vec<&str> = accounts.iter().map(AsRef::as_ref).collect();
        let (rows, act_until) = self
            .claim_rows(
                "UPDATE lease SET owner = $1, epoch = lease.epoch + 1, \
                     expires_at = now() + make_interval(secs => $2) \
                 FROM (SELECT account FROM lease \
                       WHERE account = ANY($3) AND (owner IS NULL OR expires_at <= now()) \
                       ORDER BY account FOR UPDATE SKIP LOCKED) due \
                 WHERE lease.account = due.account \
                 RETURNING lease.account, lease.epoch, lease.expires_at",
                &[&names],
            )
            .await?;
        Ok(leases_of(&rows, act_until))
    }

    /// Claims one of the slots `0..cap` of `server` that is free or expired, or `None`
    /// when `cap` sessions are held. Every instance must use the same `cap` for a server.
    pub async fn claim_slot(
        &mut self,
        server: &str,
        cap: u32,
    ) -> Result<Option<Slot>, ClusterError> {
        let cap = i32::try_from(cap).unwrap_or(i32::MAX);
        self.ready().await?;
        let mut rows = Vec::new();
        let mut act_until = Instant::now();
        // The slot rows are made the first time a server is seen (or its cap grew), not on
        // every claim.
        for create in [false, true] {
            if create {
                let created = bounded(
                    self.config.deadline(),
                    "the slot creation",
                    self.client.execute(
                        "INSERT INTO server_slot (server, slot) \
                         SELECT $1, n FROM generate_series(0, $2 - 1) n ON CONFLICT DO NOTHING",
                        &[&server, &cap],
                    ),
                )
                .await;
                // Rows another instance made at the same moment count too: claim again
                // whatever this insert added.
                created.map_err(|e| self.fail(e))?;
            }
            (rows, act_until) = self
                .claim_rows(
                    "UPDATE server_slot SET owner = $1, epoch = server_slot.epoch + 1, \
                         expires_at = now() + make_interval(secs => $2) \
                     FROM (SELECT server, slot FROM server_slot \
                           WHERE server = $3 AND slot < $4 \
                             AND (owner IS NULL OR expires_at <= now()) \
                           ORDER BY slot FOR UPDATE SKIP LOCKED LIMIT 1) free \
                     WHERE server_slot.server = free.server AND server_slot.slot = free.slot \
                     RETURNING server_slot.slot, server_slot.epoch, server_slot.expires_at",
                    &[&server, &cap],
                )
                .await?;
            if !rows.is_empty() {
                break;
            }
        }
        Ok(rows.first().map(|row| {
            let key = SlotKey {
                server: server.to_owned(),
                slot: row.get(0),
            };
            Claim::new(key, row.get(1), row.get(2), act_until)
        }))
    }

    /// Runs a claiming statement (`$1` owner, `$2` ttl in seconds, then `params`): the
    /// rows claimed, and until when they allow work.
    async fn claim_rows(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<Row>, Instant), ClusterError> {
        let ttl = self.config.ttl.as_secs_f64();
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&self.config.instance_id, &ttl];
        all.extend_from_slice(params);
        let sent = Instant::now();
        let result = bounded(
            self.config.deadline(),
            "a claim",
            self.client.query(sql, &all),
        )
        .await;
        let rows = result.map_err(|e| self.fail(e))?;
        Ok((rows, sent + self.config.act_for()))
    }

    /// Makes the connection usable: rolls back a transaction left open, reconnects when
    /// the connection was lost.
    async fn ready(&mut self) -> Result<(), ClusterError> {
        if self.rollback_owed && !self.reconnect_owed {
            let deadline = self.config.deadline();
            if let Err(e) =
                bounded(deadline, "ROLLBACK", self.client.batch_execute("ROLLBACK")).await
            {
                return Err(self.fail(e));
            }
        }
        self.rollback_owed = false;
        if self.reconnect_owed || self.client.is_closed() {
            self.reconnect().await?;
        }
        Ok(())
    }

    /// Replaces the connection; the old session's open transaction dies with it.
    async fn reconnect(&mut self) -> Result<(), ClusterError> {
        // Until a new connection is made, the next call tries again.
        self.reconnect_owed = true;
        self.driver.abort();
        (self.client, self.driver) = open(&self.config).await?;
        self.reconnect_owed = false;
        self.rollback_owed = false;
        Ok(())
    }

    /// The error for a failed statement; a lost connection, or one on which a statement
    /// went unanswered, is replaced by the next call.
    fn fail(&mut self, failure: impl Into<Failure>) -> ClusterError {
        let failure = failure.into();
        if failure.connection_lost() {
            self.reconnect_owed = true;
        }
        failure.into_error(&self.config.target, self.config.deadline())
    }

    /// Ends an open transaction after a failure inside it, now or before the next
    /// statement.
    async fn abandon(&mut self) {
        let deadline = self.config.deadline();
        if let Err(e) = bounded(deadline, "ROLLBACK", self.client.batch_execute("ROLLBACK")).await {
            self.rollback_owed = true;
            self.fail(e);
        }
    }
}

/// The leases in rows of `(account, epoch, expires_at)`, in account order.
fn leases_of(rows: &[Row], act_until: Instant) -> Vec<Lease> {
    let mut leases: Vec<Lease> = rows
        .iter()
        .map(|row| {
            let key = AccountKey {
                account: row.get(0),
            };
            Claim::new(key, row.get(1), row.get(2), act_until)
        })
        .collect();
    leases.sort_by(|a, b| a.account().cmp(b.account()));
    leases
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens a connection (within the deadline); its driver runs as a task until the
/// connection ends or the returned handle stops it.
async fn open(config: &ClusterConfig) -> Result<(Client, tokio::task::AbortHandle), ClusterError> {
    let deadline = config.deadline();
    let (client, connection) = bounded(deadline, "connecting", config.pg.connect(NoTls))
        .await
        .map_err(|e| e.into_error(&config.target, deadline))?;
    // The client sees the end of the connection as `is_closed`; the driver's own error
    // adds nothing a caller could act on.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver.abort_handle()))
}
