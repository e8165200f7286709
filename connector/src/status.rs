//! `popbridge status`: per account, the last pass (time, outcome, counts), the next pass
//! (from a running daemon), the messages the ledger knows as stuck (refused, or not
//! matching their LIST size) with their reason and age, and the quarantined count; as a
//! table for people or as stable JSON (`--json`, `"version": 1`).
//!
//! With a `[cluster]` section the records come from the cluster database, each account
//! also shows who holds its lease, and the report opens with the cluster's view: the
//! instances holding leases with their accounts, and how many accounts have stuck
//! messages.
//!
//! Must never: change anything (the ledger is only read; the daemon is only asked), or
//! print untrusted text (keys, server replies) unescaped.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::Config;
use crate::daemon::DaemonStatus;
use crate::ledger::{
    Ledger, LedgerError, PassCounts, PassRow, QuarantineAction, QuarantineRow, StuckRow,
};
use crate::report::{age, clean, rfc3339};

/// The JSON format's version: raised only when a field changes meaning or goes away.
pub const FORMAT_VERSION: u32 = 1;

/// The longest reply or key printed, in characters.
const TEXT_MAX: usize = 200;

/// What is known of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// Nobody answers on the trigger socket.
    NotRunning,
    /// It answered.
    Running(DaemonStatus),
}

/// What the ledger (local or the cluster's) holds of one account, as the report reads it.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// The last pass recorded.
    pub last_pass: Option<PassRow>,
    /// The messages known as stuck, oldest first.
    pub stuck: Vec<StuckRow>,
    /// The quarantined messages (not discarded).
    pub quarantined: Vec<QuarantineRow>,
    /// Who holds the account's cluster lease (cluster only).
    pub lease: Option<LeaseStatus>,
}

/// An account's cluster lease as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// The instance holding it, while it holds it.
    pub holder: Option<String>,
    /// Until when, RFC 3339 (the database's clock).
    pub until: Option<String>,
    /// Raised by every claim: how many times the account changed hands.
    pub epoch: i64,
}

/// The records of every configured account in the local ledger.
pub fn local_records(
    config: &Config,
    ledger: &Ledger,
) -> Result<HashMap<String, Records>, LedgerError> {
    let mut out = HashMap::new();
    for a in &config.accounts {
        let records = Records {
            last_pass: ledger.passes(&a.name, 1)?.into_iter().next(),
            stuck: ledger.stuck(&a.name)?,
            quarantined: ledger.quarantined(Some(&a.name))?,
            lease: None,
        };
        out.insert(a.name.clone(), records);
    }
    Ok(out)
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// When the report was made, RFC 3339.
    pub generated_at: String,
    /// The daemon.
    pub daemon: DaemonJson,
    /// One entry per configured account, in configuration order.
    pub accounts: Vec<AccountStatus>,
    /// The cluster database the records come from (`user@host/db`, no password), when
    /// the configuration has a `[cluster]` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// With a `[cluster]` section: each instance that holds leases now, with its
    /// accounts, by instance name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceStatus>>,
}

/// An instance of the cluster as its leases show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceStatus {
    /// Its name (`[cluster] instance`).
    pub instance: String,
    /// The accounts whose lease it holds, in configuration order.
    pub accounts: Vec<String>,
}

/// The daemon as reported.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonJson {
    /// True when it answered on its socket.
    pub running: bool,
    /// The next scheduled pass, RFC 3339.
    pub next_pass: Option<String>,
    /// Seconds until then (0 when due).
    pub next_pass_in_secs: Option<i64>,
    /// The interval between passes, seconds.
    pub interval_secs: Option<u64>,
}

/// One account's state.
#[derive(Debug, Clone, Serialize)]
pub struct AccountStatus {
    /// Account name.
    pub account: String,
    /// The last pass recorded, if any.
    pub last_pass: Option<LastPass>,
    /// The next scheduled pass (the daemon's), RFC 3339.
    pub next_pass: Option<String>,
    /// Messages the ledger knows as stuck, oldest first.
    pub stuck: Vec<Stuck>,
    /// Quarantined messages (not discarded).
    pub quarantined: usize,
    /// Of those, released and waiting for the next pass.
    pub release_pending: usize,
    /// Who holds the account's cluster lease (cluster only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
}

/// A pass as reported.
#[derive(Debug, Clone, Serialize)]
pub struct LastPass {
    /// Start, RFC 3339.
    pub started_at: String,
    /// End, RFC 3339.
    pub finished_at: String,
    /// `ok`, `backlog`, `stuck` or `failed`.
    pub outcome: &'static str,
    /// Why it failed, when it did (escaped).
    pub reason: Option<String>,
    /// Its counts.
    pub counts: PassCounts,
}

/// A stuck message as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Stuck {
    /// Ledger key (escaped).
    pub key: String,
    /// `refused` (the SMTP server or pickup folder refused it) or `mismatch` (its
    /// download did not match its LIST size).
    pub kind: &'static str,
    /// The last reply or reason (escaped).
    pub reason: String,
    /// Failures so far.
    pub failures: u32,
    /// The first failure, RFC 3339.
    pub since: String,
    /// Seconds since then.
    pub age_secs: i64,
}

/// Builds the report from the accounts' records (`None` when there is no ledger yet),
/// the cluster database they came from (if any) and what the daemon said, as of `now`
/// (unix seconds).
pub fn build(
    config: &Config,
    records: Option<&HashMap<String, Records>>,
    cluster: Option<String>,
    daemon: &Daemon,
    now: i64,
) -> Report {
    let (daemon_json, next) = match daemon {
        Daemon::NotRunning => (
            DaemonJson {
                running: false,
                next_pass: None,
                next_pass_in_secs: None,
                interval_secs: None,
            },
            None,
        ),
        Daemon::Running(s) => (
            DaemonJson {
                running: true,
                next_pass: s.next_pass.map(rfc3339),
                next_pass_in_secs: s.next_pass.map(|t| (t - now).max(0)),
                interval_secs: Some(s.interval_secs),
            },
            s.next_pass.map(rfc3339),
        ),
    };
    let mut accounts = Vec::new();
    for a in &config.accounts {
        // The account's own next pass when the daemon says, else the daemon's next one.
        let next = match daemon {
            Daemon::Running(s) => s
                .accounts
                .get(&a.name)
                .copied()
                .map(rfc3339)
                .or(next.clone()),
            Daemon::NotRunning => None,
        };
        let empty = Records::default();
        let r = records.and_then(|r| r.get(&a.name)).unwrap_or(&empty);
        let last_pass = r.last_pass.clone().map(last);
        let stuck = (r.stuck.iter())
            .map(|s| Stuck {
                key: clean(&s.key, TEXT_MAX),
                kind: s.kind.as_str(),
                reason: clean(&s.reason, TEXT_MAX),
                failures: s.failures,
                since: rfc3339(s.since),
                age_secs: (now - s.since).max(0),
            })
            .collect();
        let quarantined = &r.quarantined;
        accounts.push(AccountStatus {
            account: a.name.clone(),
            last_pass,
            next_pass: next.clone(),
            stuck,
            quarantined: quarantined.len(),
            release_pending: quarantined
                .iter()
                .filter(|q| q.action == Some(QuarantineAction::Release))
                .count(),
            lease: r.lease.clone(),
        });
    }
    let instances = cluster.is_some().then(|| instances_of(&accounts));
    Report {
        version: FORMAT_VERSION,
        generated_at: rfc3339(now),
        daemon: daemon_json,
        accounts,
        cluster,
        instances,
    }
}

/// The instances holding the accounts' leases, by name.
fn instances_of(accounts: &[AccountStatus]) -> Vec<InstanceStatus> {
    let mut held: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for a in accounts {
        if let Some(holder) = a.lease.as_ref().and_then(|l| l.holder.as_deref()) {
            held.entry(holder).or_default().push(a.account.clone());
        }
    }
    (held.into_iter())
        .map(|(instance, accounts)| InstanceStatus {
            instance: instance.to_owned(),
            accounts,
        })
        .collect()
}

fn last(p: PassRow) -> LastPass {
    LastPass {
        started_at: rfc3339(p.started_at),
        finished_at: rfc3339(p.finished_at),
        outcome: p.outcome.as_str(),
        reason: p.reason.map(|r| clean(&r, TEXT_MAX)),
        counts: p.counts,
    }
}

impl Report {
    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match (&self.daemon.running, &self.daemon.next_pass) {
            (false, _) => out.push_str("daemon: daemon not running\n"),
            (true, Some(t)) => out.push_str(&format!(
                "daemon: running, next pass {t} (in {})\n",
                age(self.daemon.next_pass_in_secs.unwrap_or(0))
            )),
            (true, None) => out.push_str("daemon: running, next pass not scheduled yet\n"),
        }
        if let Some(c) = &self.cluster {
            out.push_str(&format!("cluster: {c}\n"));
            let holding: Vec<String> = (self.instances.iter().flatten())
                .map(|i| {
                    format!(
                        "{} holds {} ({})",
                        i.instance,
                        i.accounts.len(),
                        i.accounts.join(", ")
                    )
                })
                .collect();
            out.push_str(&match holding.is_empty() {
                true => "instances: none holds a lease now\n".to_string(),
                false => format!("instances: {}\n", holding.join("; ")),
            });
            let stuck = self.accounts.iter().filter(|a| !a.stuck.is_empty()).count();
            out.push_str(&format!(
                "accounts with stuck messages: {stuck} of {}\n",
                self.accounts.len()
            ));
        }
        for a in &self.accounts {
            out.push_str(&format!("\naccount {}\n", a.account));
            match &a.last_pass {
                None => out.push_str("  last pass:   none recorded\n"),
                Some(p) => {
                    let PassCounts {
                        listed,
                        delivered,
                        deleted,
                        left,
                        rejected,
                        deferred,
                        skipped,
                        quarantined,
                    } = p.counts;
                    out.push_str(&format!(
                        "  last pass:   {} {}{}\n",
                        p.finished_at,
                        p.outcome,
                        p.reason
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ));
                    out.push_str(&format!(
                        "  counts:      {listed} listed, {delivered} delivered, {deleted} deleted, \
                         {left} left ({rejected} rejected, {deferred} deferred, {skipped} skipped, \
                         {quarantined} quarantined)\n"
                    ));
                }
            }
            if let Some(l) = &a.lease {
                out.push_str(&match (&l.holder, &l.until) {
                    (Some(h), Some(t)) => format!("  lease:       held by {h} until {t}\n"),
                    _ => "  lease:       free\n".to_string(),
                });
            }
            out.push_str(&format!(
                "  next pass:   {}\n",
                a.next_pass.as_deref().unwrap_or(if self.daemon.running {
                    "not scheduled yet"
                } else {
                    "daemon not running"
                })
            ));
            out.push_str(&format!(
                "  quarantined: {}{}\n",
                a.quarantined,
                if a.release_pending > 0 {
                    format!(
                        " ({} released, delivered at the next pass)",
                        a.release_pending
                    )
                } else {
                    String::new()
                }
            ));
            if a.stuck.is_empty() {
                out.push_str("  stuck:       none\n");
            } else {
                out.push_str(&format!("  stuck:       {}\n", a.stuck.len()));
                out.push_str("    KEY\tKIND\tFAILURES\tAGE\tREASON\n");
                for s in &a.stuck {
                    out.push_str(&format!(
                        "    {}\t{}\t{}\t{}\t{}\n",
                        s.key,
                        s.kind,
                        s.failures,
                        age(s.age_secs),
                        s.reason
                    ));
                }
            }
        }
        out
    }
}
