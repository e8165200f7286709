//! `check-limits`: the size-limit chain a message passes through, per account, and what
//! happens to a message of each size (ARCHITECTURE.md, invariant 5 and
//! "Where it hurt" 1 and 2).
//!
//! Responsible for: collecting the limits a message meets (popbridge's
//! `max_message_size`, the receive connector's EHLO `SIZE`, Exchange's organisation and
//! mailbox receive limits), the limit popbridge downloads up to ([`effective_limit`]),
//! splitting the size axis into bands at every known limit and naming each band's outcome
//! ([`analyse`], pure), optionally probing the servers ([`check`] with `probe`), and
//! rendering the table and the verdict ([`Report`]).
//! Must never: change a mailbox (the probe is POP3 login, LIST, QUIT: no RETR, no DELE;
//! SMTP EHLO then QUIT: no MAIL), connect anywhere without `probe`, panic on a failed
//! probe (the failure is reported in [`AccountReport::probe_error`]), or show a secret.
//!
//! # The rule (stuck, lost, safe)
//!
//! The download limit: profile `default` downloads up to the smallest known limit of
//! `max_message_size`, the receive connector's SIZE, `organization_receive_limit` and
//! `mailbox_receive_limit` ([`effective_limit`]); profile `sbs2008` downloads up to the
//! receive connector's SIZE, or 10 MB when it is not known (what the old connector did: it
//! ignored every other limit). For a message of `s` octets (a limit `L` refuses `s > L`):
//!
//! - `s` above the receive connector's SIZE: [`Outcome::Stuck`] naming
//!   [`RECEIVE_CONNECTOR`]: "too large for this server". It is not downloaded, kept and
//!   reported. This is the server's own hard limit, which any sender meets; it does not
//!   make the configuration unsafe. (sbs2008 with an unknown SIZE: the assumed 10 MB.)
//! - otherwise, above any other known limit:
//!   - profile `default`: [`Outcome::Stuck`] naming the smallest such limit (on a tie the
//!     Exchange limit is named: organisation, then mailbox, then `max_message_size`).
//!     Popbridge keeps and reports it, but it is never delivered unless that limit is
//!     raised: **unsafe** ("stuck forever").
//!   - profile `sbs2008`, the organisation or mailbox limit: [`Outcome::Lost`] naming the
//!     smallest: downloaded, deleted, accepted with 250, then bounced by the categoriser:
//!     the message exists nowhere: **unsafe**. (With `leave_on_server` the POP3 copy
//!     survives, so it is `Stuck` instead; still unsafe.)
//! - otherwise [`Outcome::Delivered`].
//!
//! When the receive connector's SIZE is unknown (no probe), a stuck band above a known
//! limit counts as unsafe: it might only be the server's own limit, but that cannot be
//! told without `--probe`. An unknown SIZE never hides a loss in profile `default`.
//! [`Report::exit_code`] is 1 when any account can lose mail or has a band stuck forever,
//! else 0. Adjacent bands with the same outcome are merged.

use std::fmt::Write as _;

use crate::config::{Account, Config, DeliveryKind, Profile};
use crate::net::Dialer;
use crate::pop3;
use crate::smtp::{self, SmtpClient};

/// The old SBS connector's limit when its receive connector's SIZE is not known (10 MB).
pub const SBS_DEFAULT_LIMIT: u64 = 10 * 1024 * 1024;
/// Name of popbridge's own limit (`limits.max_message_size`).
pub const MAX_MESSAGE_SIZE: &str = "max_message_size";
/// Name of the receive connector's `MaxMessageSize`, advertised as EHLO `SIZE`.
pub const RECEIVE_CONNECTOR: &str = "receive connector SIZE";
/// Name of Exchange's organisation-wide receive limit (`exchange.organization_receive_limit`).
pub const ORGANIZATION: &str = "organization_receive_limit";
/// Name of the Exchange mailbox's receive limit (`account.mailbox_receive_limit`).
pub const MAILBOX: &str = "mailbox_receive_limit";

/// How many of the largest probed messages `render` names.
const LARGEST_SHOWN: usize = 5;

/// The size-limit chain of every account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One entry per account, in configuration order.
    pub accounts: Vec<AccountReport>,
}

/// One account's limits, download limit, size bands and (when probed) message sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountReport {
    /// Account name.
    pub account: String,
    /// The behaviour profile the analysis assumes.
    pub profile: Profile,
    /// `limits.max_message_size`; `None` = auto (the receive connector's SIZE).
    pub configured: Option<u64>,
    /// The receive connector's EHLO SIZE; `None` = unknown (not probed) or not advertised.
    pub receive_connector: Option<u64>,
    /// `exchange.organization_receive_limit`; `None` = unlimited.
    pub organization: Option<u64>,
    /// The account's `mailbox_receive_limit`; `None` = unlimited.
    pub mailbox: Option<u64>,
    /// The largest message popbridge downloads ([`effective_limit`]); `None` = no limit known.
    pub effective: Option<u64>,
    /// The size axis split at every known limit, from 0 upwards, each with its outcome.
    pub bands: Vec<Band>,
    /// Probed message sizes from LIST, in LIST order (index + 1 is the message number).
    pub messages: Option<Vec<u64>>,
    /// Why probing failed (no secret in it), when it did.
    pub probe_error: Option<String>,
}

/// Messages from `from` to `to` octets (both inclusive) and what happens to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    /// Smallest size in the band, in octets.
    pub from: u64,
    /// Largest size in the band, in octets; `None` = unbounded.
    pub to: Option<u64>,
    /// What happens to a message of this size.
    pub outcome: Outcome,
    /// How many of the probed messages fall in the band (`None` without a probe).
    pub messages: Option<usize>,
}

/// What happens to a message of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fits every limit: delivered.
    Delivered,
    /// Not downloaded (or kept): stays on the POP3 server, reported, never delivered
    /// while `limit` stays as it is.
    Stuck {
        /// The limit responsible, one of the names in this module's constants.
        limit: &'static str,
    },
    /// Downloaded, deleted, accepted with 250, then bounced by Exchange: exists nowhere.
    Lost {
        /// The limit responsible ([`ORGANIZATION`] or [`MAILBOX`]).
        limit: &'static str,
    },
}

impl Outcome {
    /// True for a band that makes the configuration unsafe: lost, or stuck by a limit
    /// other than the receive connector's own SIZE (see the module's rule).
    pub fn is_unsafe(&self) -> bool {
        match self {
            Self::Delivered => false,
            Self::Stuck { limit } => *limit != RECEIVE_CONNECTOR,
            Self::Lost { .. } => true,
        }
    }

    /// The limit responsible, unless delivered.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Self::Delivered => None,
            Self::Stuck { limit } | Self::Lost { limit } => Some(limit),
        }
    }
}

impl AccountReport {
    /// True when some size band is downloaded, deleted and then bounced.
    pub fn can_lose_mail(&self) -> bool {
        self.bands
            .iter()
            .any(|b| matches!(b.outcome, Outcome::Lost { .. }))
    }

    /// True when some size band stays on the server forever because of a limit below
    /// the receive connector's SIZE (or with SIZE unknown).
    pub fn can_stick(&self) -> bool {
        self.bands
            .iter()
            .any(|b| matches!(b.outcome, Outcome::Stuck { .. }) && b.outcome.is_unsafe())
    }

    /// The outcome for a message of `size` octets.
    pub fn outcome_of(&self, size: u64) -> Outcome {
        self.bands
            .iter()
            .find(|b| size >= b.from && b.to.is_none_or(|to| size <= to))
            .map_or(Outcome::Delivered, |b| b.outcome)
    }

    /// The value of the limit named `name` in this report (the assumed 10 MB for an
    /// unknown SIZE under `sbs2008`).
    fn value_of(&self, name: &str) -> Option<u64> {
        match name {
            MAX_MESSAGE_SIZE => self.configured,
            RECEIVE_CONNECTOR => match self.profile {
                Profile::Sbs2008 => self.receive_connector.or(self.effective),
                Profile::Default => self.receive_connector,
            },
            ORGANIZATION => self.organization,
            MAILBOX => self.mailbox,
            _ => None,
        }
    }
}

impl Report {
    /// True when any account can lose mail (some band is [`Outcome::Lost`]).
    pub fn can_lose_mail(&self) -> bool {
        self.accounts.iter().any(AccountReport::can_lose_mail)
    }

    /// True when any account has a band stuck forever (see the module's rule).
    pub fn can_stick(&self) -> bool {
        self.accounts.iter().any(AccountReport::can_stick)
    }

    /// True when a probe of some account failed (the analysis used what was known).
    pub fn probe_failed(&self) -> bool {
        self.accounts.iter().any(|a| a.probe_error.is_some())
    }

    /// 1 when mail can be lost or stuck forever, 0 when the configuration is safe.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.can_lose_mail() || self.can_stick())
    }

    /// A readable table per account, the verdict, and how to read the outcomes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for a in &self.accounts {
            render_account(&mut out, a);
            out.push('\n');
        }
        let verdict = if self.can_lose_mail() {
            "MAIL CAN BE LOST"
        } else if self.can_stick() {
            "mail can be stuck on the POP3 server forever"
        } else {
            "safe: no size limit can lose mail or keep it forever"
        };
        let _ = writeln!(out, "Verdict: {verdict} (exit {}).", self.exit_code());
        out.push_str(RULE);
        out
    }
}

/// How to read the outcomes; printed once under the tables.
const RULE: &str = "\
How to read this:
  delivered                  fits every limit.
  left on the server, never delivered
                             popbridge keeps and reports it because a limit below the
                             receive connector's SIZE would refuse it; it stays until that
                             limit is raised. Counts against the configuration (exit 1).
  LOST                       downloaded, deleted from the POP3 server, accepted with 250,
                             then bounced by Exchange: the message exists nowhere (exit 1).
  too large for this server  above the receive connector's SIZE, the server's own hard
                             limit: refused at the SMTP SIZE limit, kept and reported; it
                             does not count against the configuration.
";

/// The largest message popbridge downloads for `account`, octets; `None` = no limit known.
///
/// Profile `default`: the smallest known of `limits.max_message_size`, `smtp_size` (the
/// receive connector's EHLO SIZE), `exchange.organization_receive_limit` and the account's
/// `mailbox_receive_limit`. The last two are applied by Exchange after it answered 250, so
/// a pass that downloads past them loses the message; a pass must refuse to download
/// anything above this limit (leave it on the server, emit `SkippedOversize`).
/// Profile `sbs2008`: `smtp_size`, or 10 MB when unknown (the old connector's behaviour:
/// it ignored the other limits). A `smtp_size` of 0 means "no fixed limit" (RFC 1870).
pub fn effective_limit(config: &Config, account: &Account, smtp_size: Option<u64>) -> Option<u64> {
    let smtp_size = smtp_size.filter(|&s| s > 0);
    match config.profile {
        Profile::Sbs2008 => Some(smtp_size.unwrap_or(SBS_DEFAULT_LIMIT)),
        Profile::Default => [
            config.limits.max_message_size,
            smtp_size,
            config.exchange.organization_receive_limit,
            account.mailbox_receive_limit,
        ]
        .into_iter()
        .flatten()
        .min(),
    }
}

/// The limits of one account, as the outcome of a size is decided from them.
struct Chain {
    profile: Profile,
    configured: Option<u64>,
    receive: Option<u64>,
    organization: Option<u64>,
    mailbox: Option<u64>,
    download: Option<u64>,
    leave_on_server: bool,
}

impl Chain {
    /// What happens to a message of `s` octets (the module's rule).
    fn outcome(&self, s: u64) -> Outcome {
        let over = |l: Option<u64>| l.is_some_and(|l| s > l);
        // The smallest exceeded limit; on a tie, the first in this order.
        let smallest = |limits: &[(Option<u64>, &'static str)]| {
            let mut best: Option<(u64, &'static str)> = None;
            for &(l, name) in limits {
                if let Some(l) = l.filter(|&l| s > l) {
                    if best.is_none_or(|(b, _)| l < b) {
                        best = Some((l, name));
                    }
                }
            }
            best.map(|(_, name)| name)
        };
        match self.profile {
            Profile::Default => {
                if over(self.receive) {
                    return Outcome::Stuck {
                        limit: RECEIVE_CONNECTOR,
                    };
                }
                match smallest(&[
                    (self.organization, ORGANIZATION),
                    (self.mailbox, MAILBOX),
                    (self.configured, MAX_MESSAGE_SIZE),
                ]) {
                    Some(limit) => Outcome::Stuck { limit },
                    None => Outcome::Delivered,
                }
            }
            Profile::Sbs2008 => {
                if over(self.download) || over(self.receive) {
                    return Outcome::Stuck {
                        limit: RECEIVE_CONNECTOR,
                    };
                }
                match smallest(&[(self.organization, ORGANIZATION), (self.mailbox, MAILBOX)]) {
                    Some(limit) if self.leave_on_server => Outcome::Stuck { limit },
                    Some(limit) => Outcome::Lost { limit },
                    None => Outcome::Delivered,
                }
            }
        }
    }
}

/// The size-limit chain of `account`: its limits, download limit and size bands, with
/// `smtp_size` the receive connector's EHLO SIZE (`None` = unknown) and `sizes` the
/// probed LIST sizes (`None` = not probed). Pure: no I/O.
pub fn analyse(
    config: &Config,
    account: &Account,
    smtp_size: Option<u64>,
    sizes: Option<Vec<u64>>,
) -> AccountReport {
    let receive = smtp_size.filter(|&s| s > 0);
    let effective = effective_limit(config, account, receive);
    let chain = Chain {
        profile: config.profile,
        configured: config.limits.max_message_size,
        receive,
        organization: config.exchange.organization_receive_limit,
        mailbox: account.mailbox_receive_limit,
        download: effective,
        leave_on_server: account.leave_on_server,
    };
    let mut points: Vec<u64> = [
        chain.configured,
        chain.receive,
        chain.organization,
        chain.mailbox,
        chain.download,
    ]
    .into_iter()
    .flatten()
    .collect();
    points.sort_unstable();
    points.dedup();

    let mut bands: Vec<Band> = Vec::new();
    let mut from = Some(0u64);
    for to in points.into_iter().map(Some).chain(std::iter::once(None)) {
        let Some(lo) = from else { break };
        if to.is_some_and(|to| to < lo) {
            continue;
        }
        let outcome = chain.outcome(lo);
        match bands.last_mut() {
            Some(last) if last.outcome == outcome => last.to = to,
            _ => bands.push(Band {
                from: lo,
                to,
                outcome,
                messages: None,
            }),
        }
        from = to.and_then(|t| t.checked_add(1));
    }
    if let Some(sizes) = &sizes {
        for b in &mut bands {
            let n = sizes
                .iter()
                .filter(|&&s| s >= b.from && b.to.is_none_or(|to| s <= to))
                .count();
            b.messages = Some(n);
        }
    }
    AccountReport {
        account: account.name.clone(),
        profile: config.profile,
        configured: chain.configured,
        receive_connector: receive,
        organization: chain.organization,
        mailbox: chain.mailbox,
        effective,
        bands,
        messages: sizes,
        probe_error: None,
    }
}

/// The size-limit chain of every account. Without `probe` nothing is connected to (the
/// receive connector's SIZE is then unknown). With `probe`: one SMTP session (EHLO for
/// SIZE, then QUIT; skipped for a pickup folder) and, per account, a POP3 login, LIST and
/// QUIT, nothing retrieved or deleted. A failed probe is reported in `probe_error` and the
/// analysis uses what is known.
pub async fn check(config: &Config, probe: bool, dialer: &dyn Dialer) -> Report {
    if !probe {
        return Report {
            accounts: config
                .accounts
                .iter()
                .map(|a| analyse(config, a, None, None))
                .collect(),
        };
    }
    let smtp = probe_smtp(config, dialer).await;
    let mut accounts = Vec::with_capacity(config.accounts.len());
    for account in &config.accounts {
        let listed = probe_pop3(config, account, dialer).await;
        let mut errors = Vec::new();
        let size = match &smtp {
            Ok(s) => *s,
            Err(e) => {
                errors.push(format!("SMTP: {e}"));
                None
            }
        };
        let sizes = match listed {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(format!("POP3: {e}"));
                None
            }
        };
        let mut report = analyse(config, account, size, sizes);
        if !errors.is_empty() {
            report.probe_error = Some(errors.join("; "));
        }
        accounts.push(report);
    }
    Report { accounts }
}

/// The receive connector's EHLO SIZE (`None`: not advertised, or a pickup folder).
async fn probe_smtp(config: &Config, dialer: &dyn Dialer) -> Result<Option<u64>, String> {
    if matches!(config.transport.delivery, DeliveryKind::Pickup { .. }) {
        return Ok(None);
    }
    let settings = smtp::Settings::for_transport(config, false).map_err(|e| e.to_string())?;
    let client = SmtpClient::connect(dialer, &settings)
        .await
        .map_err(|e| e.to_string())?;
    let size = client.ext.max_size();
    client.quit().await;
    Ok(size)
}

/// The account's message sizes from LIST, in LIST order; logs in, LISTs, QUITs.
async fn probe_pop3(
    config: &Config,
    account: &Account,
    dialer: &dyn Dialer,
) -> Result<Vec<u64>, String> {
    let secret = match crate::oauth2::Tokens::for_account(config, account, dialer) {
        Some(tokens) => {
            tokens
                .access_token()
                .await
                .map_err(|e| e.to_string())?
                .token
        }
        None => account
            .secret
            .resolve(config.timeouts.command)
            .await
            .map_err(|e| e.to_string())?,
    };
    let settings = pop3::Settings::for_account(config, account).map_err(|e| e.to_string())?;
    let auth = pop3::connect(dialer, &settings)
        .await
        .map_err(|e| e.to_string())?;
    let mut txn = auth
        .authenticate(account.auth, &account.username, &secret)
        .await
        .map_err(|e| e.to_string())?;
    let listing = txn.list().await.map_err(|e| e.to_string())?;
    // Nothing was marked for deletion, so QUIT changes nothing; its failure is harmless.
    let _ = txn.quit().await;
    Ok(listing.into_iter().map(|(_, size)| size).collect())
}

/// A size for people: `10 MB` when exact, else one decimal (`20.3 MB`); binary units.
pub fn human_size(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TB", 40), ("GB", 30), ("MB", 20), ("KB", 10)];
    for (unit, shift) in UNITS {
        let u = 1u64 << shift;
        if n >= u {
            if n.is_multiple_of(u) {
                return format!("{} {unit}", n >> shift);
            }
            let tenths = (u128::from(n) * 10 + u128::from(u) / 2) / u128::from(u);
            return format!("{}.{} {unit}", tenths / 10, tenths % 10);
        }
    }
    format!("{n} B")
}

/// A limit's value: human-readable, with the exact octets when that is not round.
fn exact_size(n: u64) -> String {
    let h = human_size(n);
    if h.contains('.') {
        format!("{h} ({n} octets)")
    } else {
        h
    }
}

fn band_label(b: &Band) -> String {
    let upto = |to: u64| format!("up to {}", exact_size(to));
    match (b.from, b.to) {
        (0, None) => "any size".to_string(),
        (0, Some(to)) => upto(to),
        (from, None) => format!("over {}", exact_size(from - 1)),
        (from, Some(to)) => format!("over {}, {}", exact_size(from - 1), upto(to)),
    }
}

fn outcome_words(a: &AccountReport, o: Outcome) -> String {
    let limit = |name: &str| match a.value_of(name) {
        Some(v) => format!("{name} {}", exact_size(v)),
        None => name.to_string(),
    };
    match o {
        Outcome::Delivered => "delivered".to_string(),
        Outcome::Stuck {
            limit: RECEIVE_CONNECTOR,
        } => format!(
            "too large for this server: left on the server, reported ({})",
            limit(RECEIVE_CONNECTOR)
        ),
        Outcome::Stuck { limit: name } => {
            format!("left on the server, never delivered ({})", limit(name))
        }
        Outcome::Lost { limit: name } => format!(
            "LOST: downloaded, deleted, then bounced by Exchange ({})",
            limit(name)
        ),
    }
}

fn render_account(out: &mut String, a: &AccountReport) {
    let sbs = a.profile == Profile::Sbs2008;
    let probed = a.messages.is_some() || a.probe_error.is_some();
    let _ = writeln!(out, "Account {} (profile {})", a.account, a.profile);
    let unlimited = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), exact_size);

    let mut configured = match a.configured {
        Some(v) => exact_size(v),
        None => "auto (the receive connector's SIZE)".to_string(),
    };
    if sbs {
        configured.push_str(" - not used by profile sbs2008");
    }
    let mut receive = match a.receive_connector {
        Some(v) => exact_size(v),
        None if !probed => "unknown (use --probe)".to_string(),
        None if a
            .probe_error
            .as_deref()
            .is_some_and(|e| e.contains("SMTP: ")) =>
        {
            "unknown (probe failed)".to_string()
        }
        None => "not advertised (no fixed limit)".to_string(),
    };
    if sbs && a.receive_connector.is_none() {
        if let Some(e) = a.effective {
            let _ = write!(receive, ", assumed {}", exact_size(e));
        }
    }
    let effective = match a.effective {
        Some(v) if sbs => format!("{} (sbs2008: the receive connector's SIZE)", exact_size(v)),
        Some(v) => format!("{} (the smallest known limit)", exact_size(v)),
        None => "no limit known".to_string(),
    };
    let rows = [
        ("max_message_size (popbridge)", configured),
        ("receive connector SIZE (EHLO, in session: 552)", receive),
        (
            "organization_receive_limit (Exchange, after 250: NDR)",
            unlimited(a.organization),
        ),
        (
            "mailbox_receive_limit (Exchange, after 250: NDR)",
            unlimited(a.mailbox),
        ),
        ("popbridge downloads up to", effective),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        let _ = writeln!(out, "  {k:<w$}  {v}");
    }
    if let Some(e) = &a.probe_error {
        let _ = writeln!(out, "  probe failed: {e}");
    }
    if let Some(sizes) = &a.messages {
        let total: u64 = sizes.iter().sum();
        let _ = write!(
            out,
            "  messages on the POP3 server: {} ({})",
            sizes.len(),
            human_size(total)
        );
        let mut largest: Vec<(usize, u64)> = sizes.iter().copied().enumerate().collect();
        largest.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        if !largest.is_empty() {
            out.push_str("; largest:");
            for (i, (n, s)) in largest.iter().take(LARGEST_SHOWN).enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                let word = match a.outcome_of(*s) {
                    Outcome::Delivered => "delivered",
                    Outcome::Stuck {
                        limit: RECEIVE_CONNECTOR,
                    } => "too large",
                    Outcome::Stuck { .. } => "stuck",
                    Outcome::Lost { .. } => "LOST",
                };
                let _ = write!(out, "{sep}#{} {} ({word})", n + 1, human_size(*s));
            }
        }
        out.push('\n');
    }

    // The band table.
    let labels: Vec<String> = a.bands.iter().map(band_label).collect();
    let lw = labels
        .iter()
        .map(String::len)
        .chain(std::iter::once("size".len()))
        .max()
        .unwrap_or(4);
    let counted = a.messages.is_some();
    if counted {
        let _ = writeln!(out, "  {:<lw$}  messages  outcome", "size");
    } else {
        let _ = writeln!(out, "  {:<lw$}  outcome", "size");
    }
    for (b, label) in a.bands.iter().zip(&labels) {
        let words = outcome_words(a, b.outcome);
        match b.messages {
            Some(n) if counted => {
                let _ = writeln!(out, "  {label:<lw$}  {n:>8}  {words}");
            }
            _ if counted => {
                let _ = writeln!(out, "  {label:<lw$}  {:>8}  {words}", "-");
            }
            _ => {
                let _ = writeln!(out, "  {label:<lw$}  {words}");
            }
        }
    }

    let verdict = if a.can_lose_mail() {
        "MAIL CAN BE LOST"
    } else if a.can_stick() {
        "mail can be stuck on the POP3 server forever"
    } else {
        "safe"
    };
    let _ = writeln!(out, "  verdict: {verdict}");
    if !sbs && a.receive_connector.is_none() && a.can_stick() {
        let _ = writeln!(
            out,
            "  note: the receive connector's SIZE is unknown (run with --probe); a band \
             above it would only be \"too large for this server\"."
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::net::TcpDialer;

    const MB: u64 = 1024 * 1024;

    fn config(profile: &str, max: &str, org: Option<&str>, mailbox: Option<&str>) -> Config {
        let org = org
            .map(|o| format!("[exchange]\norganization_receive_limit = \"{o}\"\n"))
            .unwrap_or_default();
        let mailbox = mailbox
            .map(|m| format!("mailbox_receive_limit = \"{m}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"profile = "{profile}"
state_dir = "/var/lib/popbridge"
{org}
[transport]
host = "127.0.0.1"

[limits]
max_message_size = "{max}"

[[account]]
name = "info"
host = "pop.isp.example"
username = "info@isp.example"
password = "hunter2-secret"
deliver_to = "info@contoso.local"
{mailbox}"#
        );
        Config::from_str(&text, Path::new("popbridge.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn report(c: &Config, smtp: Option<u64>, sizes: Option<Vec<u64>>) -> Report {
        Report {
            accounts: vec![analyse(c, &c.accounts[0], smtp, sizes)],
        }
    }

    /// Reference case (a): global 10 MB, receive connector 50 MB, mailbox unlimited.
    fn case_a(profile: &str) -> Config {
        config(profile, "auto", Some("10MB"), None)
    }

    /// Reference case (b): global 50 MB, receive connector 50 MB, mailbox 10 MB.
    fn case_b(profile: &str) -> Config {
        config(profile, "auto", Some("50MB"), Some("10MB"))
    }

    #[test]
    fn sbs2008_case_a_loses_20mb_to_the_organization_limit() {
        let c = case_a("sbs2008");
        let r = report(&c, Some(50 * MB), None);
        let a = &r.accounts[0];
        assert_eq!(a.effective, Some(50 * MB));
        assert_eq!(
            a.outcome_of(20 * MB),
            Outcome::Lost {
                limit: ORGANIZATION
            }
        );
        assert_eq!(
            a.bands,
            vec![
                Band {
                    from: 0,
                    to: Some(10 * MB),
                    outcome: Outcome::Delivered,
                    messages: None
                },
                Band {
                    from: 10 * MB + 1,
                    to: Some(50 * MB),
                    outcome: Outcome::Lost {
                        limit: ORGANIZATION
                    },
                    messages: None
                },
                Band {
                    from: 50 * MB + 1,
                    to: None,
                    outcome: Outcome::Stuck {
                        limit: RECEIVE_CONNECTOR
                    },
                    messages: None
                },
            ]
        );
        assert!(r.can_lose_mail());
        assert_eq!(r.exit_code(), 1);
        let text = r.render();
        assert!(
            text.contains(
                "LOST: downloaded, deleted, then bounced by Exchange (organization_receive_limit 10 MB)"
            ),
            "{text}"
        );
        assert!(
            text.contains("Verdict: MAIL CAN BE LOST (exit 1)"),
            "{text}"
        );
    }

    #[test]
    fn sbs2008_case_b_loses_20mb_to_the_mailbox_limit() {
        let c = case_b("sbs2008");
        let r = report(&c, Some(50 * MB), Some(vec![20 * MB]));
        let a = &r.accounts[0];
        assert_eq!(a.outcome_of(20 * MB), Outcome::Lost { limit: MAILBOX });
        let lost: Vec<&Band> = a
            .bands
            .iter()
            .filter(|b| matches!(b.outcome, Outcome::Lost { .. }))
            .collect();
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].from, lost[0].to), (10 * MB + 1, Some(50 * MB)));
        assert_eq!(lost[0].messages, Some(1));
        assert!(r.can_lose_mail());
        assert_eq!(r.exit_code(), 1);
        assert!(r.render().contains(
            "LOST: downloaded, deleted, then bounced by Exchange (mailbox_receive_limit 10 MB)"
        ));
    }

    #[test]
    fn default_profile_keeps_what_exchange_would_bounce() {
        for (c, limit) in [
            (case_a("default"), ORGANIZATION),
            (case_b("default"), MAILBOX),
        ] {
            let r = report(&c, Some(50 * MB), Some(vec![20 * MB, MB]));
            let a = &r.accounts[0];
            assert_eq!(a.effective, Some(10 * MB), "{limit}");
            assert!(!r.can_lose_mail(), "{limit}");
            assert!(a
                .bands
                .iter()
                .all(|b| !matches!(b.outcome, Outcome::Lost { .. })));
            assert_eq!(a.outcome_of(20 * MB), Outcome::Stuck { limit });
            assert!(r.can_stick());
            assert_eq!(r.exit_code(), 1, "{limit}");
            let text = r.render();
            assert!(
                text.contains(&format!(
                    "left on the server, never delivered ({limit} 10 MB)"
                )),
                "{text}"
            );
            assert!(!text.contains("LOST:"), "{text}");
        }
    }

    #[test]
    fn all_limits_at_the_connector_size_are_safe() {
        let c = config("default", "auto", Some("50MB"), Some("50MB"));
        let r = report(&c, Some(50 * MB), None);
        let a = &r.accounts[0];
        assert_eq!(
            a.bands
                .iter()
                .map(|b| (b.from, b.to, b.outcome))
                .collect::<Vec<_>>(),
            vec![
                (0, Some(50 * MB), Outcome::Delivered),
                (
                    50 * MB + 1,
                    None,
                    Outcome::Stuck {
                        limit: RECEIVE_CONNECTOR
                    }
                ),
            ]
        );
        assert!(!r.can_lose_mail() && !r.can_stick());
        assert_eq!(r.exit_code(), 0);
        let text = r.render();
        assert!(text.contains("too large for this server"), "{text}");
        assert!(text.contains("(exit 0)"), "{text}");
        // The same limits under sbs2008 lose nothing either.
        let c = config("sbs2008", "auto", Some("50MB"), Some("50MB"));
        assert_eq!(report(&c, Some(50 * MB), None).exit_code(), 0);
    }

    #[test]
    fn a_connector_limit_below_size_sticks_and_names_it() {
        let c = config("default", "10MB", None, None);
        let r = report(&c, Some(50 * MB), None);
        let a = &r.accounts[0];
        assert_eq!(
            a.outcome_of(20 * MB),
            Outcome::Stuck {
                limit: MAX_MESSAGE_SIZE
            }
        );
        assert_eq!(r.exit_code(), 1);
        // A limit equal to SIZE is safe.
        let c = config("default", "50MB", None, None);
        assert_eq!(report(&c, Some(50 * MB), None).exit_code(), 0);
        // SIZE smaller than the configured limit: nothing to keep that the server takes.
        let c = config("default", "50MB", None, None);
        let r = report(&c, Some(10 * MB), None);
        assert_eq!(r.accounts[0].effective, Some(10 * MB));
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn unknown_size_is_conservative_and_says_so() {
        // auto, nothing else: nothing known, nothing can go wrong.
        let c = config("default", "auto", None, None);
        let r = report(&c, None, None);
        assert_eq!(r.accounts[0].effective, None);
        assert_eq!(r.accounts[0].bands.len(), 1);
        assert_eq!(r.exit_code(), 0);
        assert!(r.render().contains("unknown (use --probe)"));
        // A known limit with SIZE unknown cannot be proven harmless.
        let c = case_a("default");
        let r = report(&c, None, None);
        assert_eq!(r.exit_code(), 1);
        assert!(!r.can_lose_mail());
        assert!(r.render().contains("run with --probe"));
        // sbs2008 assumes the 10 MB default: (a) with a 5 MB org limit still loses.
        let c = config("sbs2008", "auto", Some("5MB"), None);
        let r = report(&c, None, None);
        assert_eq!(r.accounts[0].effective, Some(10 * MB));
        assert_eq!(
            r.accounts[0].outcome_of(8 * MB),
            Outcome::Lost {
                limit: ORGANIZATION
            }
        );
        assert!(r.render().contains("assumed 10 MB"));
    }

    #[test]
    fn sbs2008_ignores_the_configured_limit_and_leave_on_server_is_not_lost() {
        let c = config("sbs2008", "5MB", Some("10MB"), None);
        let r = report(&c, Some(50 * MB), None);
        assert_eq!(r.accounts[0].effective, Some(50 * MB));
        assert_eq!(r.accounts[0].outcome_of(6 * MB), Outcome::Delivered);
        assert!(r.render().contains("not used by profile sbs2008"));

        let mut c = case_a("sbs2008");
        c.accounts[0].leave_on_server = true;
        let r = report(&c, Some(50 * MB), None);
        assert!(!r.can_lose_mail());
        assert_eq!(
            r.accounts[0].outcome_of(20 * MB),
            Outcome::Stuck {
                limit: ORGANIZATION
            }
        );
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn effective_limit_is_the_smallest_known() {
        let c = config("default", "40MB", Some("30MB"), Some("20MB"));
        let a = &c.accounts[0];
        assert_eq!(effective_limit(&c, a, Some(50 * MB)), Some(20 * MB));
        assert_eq!(effective_limit(&c, a, Some(10 * MB)), Some(10 * MB));
        assert_eq!(effective_limit(&c, a, Some(0)), Some(20 * MB));
        let c = config("default", "auto", None, None);
        assert_eq!(effective_limit(&c, &c.accounts[0], None), None);
        let c = config("sbs2008", "5MB", Some("1MB"), None);
        assert_eq!(effective_limit(&c, &c.accounts[0], None), Some(10 * MB));
        assert_eq!(
            effective_limit(&c, &c.accounts[0], Some(50 * MB)),
            Some(50 * MB)
        );
    }

    #[test]
    fn ties_and_merges() {
        // max_message_size equal to the org limit: the Exchange limit is named; the bands
        // between 10 and 20 and between 20 and 50 MB merge (same outcome).
        let c = config("default", "10MB", Some("10MB"), Some("20MB"));
        let a = analyse(&c, &c.accounts[0], Some(50 * MB), None);
        assert_eq!(a.bands.len(), 3, "{:?}", a.bands);
        assert_eq!(
            a.bands[1].outcome,
            Outcome::Stuck {
                limit: ORGANIZATION
            }
        );
        assert_eq!(
            (a.bands[1].from, a.bands[1].to),
            (10 * MB + 1, Some(50 * MB))
        );
        // Extreme values do not overflow.
        let c = config("default", &u64::MAX.to_string(), None, None);
        let a = analyse(&c, &c.accounts[0], None, Some(vec![0, u64::MAX]));
        assert_eq!(a.bands.len(), 1);
        assert_eq!(a.bands[0].messages, Some(2));
        let _ = Report { accounts: vec![a] }.render();
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(10 * MB), "10 MB");
        assert_eq!(human_size(20 * MB + MB / 2), "20.5 MB");
        assert_eq!(exact_size(10 * MB + 1), "10.0 MB (10485761 octets)");
        assert!(human_size(u64::MAX).ends_with(" TB"));
    }

    #[test]
    fn render_counts_and_names_the_largest() {
        let c = case_a("sbs2008");
        let r = report(&c, Some(50 * MB), Some(vec![MB, 20 * MB, 60 * MB, 2 * MB]));
        let text = r.render();
        assert!(text.contains("messages on the POP3 server: 4"), "{text}");
        assert!(
            text.contains("largest: #3 60 MB (too large), #2 20 MB (LOST), #4 2 MB (delivered)"),
            "{text}"
        );
        let counts: Vec<Option<usize>> = r.accounts[0].bands.iter().map(|b| b.messages).collect();
        assert_eq!(counts, vec![Some(2), Some(1), Some(1)]);
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn without_probe_nothing_is_contacted() {
        // The transport and the POP3 host are unreachable names: a connection attempt
        // would show up as a probe error.
        let c = case_a("default");
        let r = check(&c, false, &TcpDialer).await;
        assert_eq!(r.accounts[0].probe_error, None);
        assert_eq!(r.accounts[0].receive_connector, None);
        assert_eq!(r.accounts[0].messages, None);
    }

    #[tokio::test]
    async fn probe_reads_size_and_list_and_changes_nothing() {
        use mock_pop3::{Mailbox, MockPop3};
        use mock_smtp::MockSmtp;
        use tokio::net::TcpListener;

        const PASSWORD: &str = "Sw0rdfish-s3cret!";
        let pop3 = MockPop3::builder()
            .mailbox(
                Mailbox::new("info", PASSWORD)
                    .with_demo_messages(2, 5_000)
                    .with_demo_messages(1, 40_000)
                    .with_demo_messages(1, 100_000),
            )
            .spawn(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let smtp = MockSmtp::builder()
            .limits(mock_smtp::Limits {
                max_message_size: Some(64 * 1024),
                ..Default::default()
            })
            .spawn(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let before = pop3.mailbox("info").unwrap();
        let text = format!(
            r#"state_dir = "/var/lib/popbridge"
[exchange]
organization_receive_limit = "20KB"
[transport]
host = "127.0.0.1"
port = {smtp_port}
[timeouts]
connect = "10s"
command = "10s"
[[account]]
name = "info"
host = "127.0.0.1"
port = {pop3_port}
tls = "none"
allow_plaintext = true
auth = "user"
username = "info"
password = "{PASSWORD}"
deliver_to = "info@contoso.local"
"#,
            smtp_port = smtp.addr().unwrap().port(),
            pop3_port = pop3.addr().unwrap().port(),
        );
        let c = Config::from_str(&text, Path::new("popbridge.toml")).unwrap();
        let r = check(&c, true, &TcpDialer).await;
        pop3.wait_idle().await;
        smtp.wait_idle().await;
        let a = &r.accounts[0];
        assert_eq!(a.probe_error, None);
        assert_eq!(a.receive_connector, Some(64 * 1024));
        assert_eq!(a.effective, Some(20 * 1024));
        let sizes = a.messages.clone().unwrap();
        assert_eq!(sizes.len(), 4);
        assert!(sizes[3] > 64 * 1024, "{sizes:?}");
        assert_eq!(
            a.bands
                .iter()
                .map(|b| (b.outcome, b.messages))
                .collect::<Vec<_>>(),
            vec![
                (Outcome::Delivered, Some(2)),
                (
                    Outcome::Stuck {
                        limit: ORGANIZATION
                    },
                    Some(1)
                ),
                (
                    Outcome::Stuck {
                        limit: RECEIVE_CONNECTOR
                    },
                    Some(1)
                ),
            ]
        );
        assert_eq!(r.exit_code(), 1);
        // Nothing retrieved, nothing deleted, nothing submitted.
        let after = pop3.mailbox("info").unwrap();
        assert_eq!(after.remaining, before.remaining);
        assert!(after.deleted.is_empty() && after.retrieved.is_empty());
        for s in pop3.sessions() {
            assert!(
                s.commands
                    .iter()
                    .all(|c| !c.starts_with("DELE") && !c.starts_with("RETR")),
                "{:?}",
                s.commands
            );
        }
        assert!(smtp.captured().is_empty());
        let rendered = r.render();
        assert!(!rendered.contains(PASSWORD), "{rendered}");
        assert!(
            rendered.contains("receive connector SIZE 64 KB"),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn a_failed_probe_is_reported_not_fatal() {
        // Bind and drop listeners to get ports nobody listens on.
        let closed = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (smtp_port, pop3_port) = (closed(), closed());
        let text = format!(
            r#"state_dir = "/var/lib/popbridge"
[transport]
host = "127.0.0.1"
port = {smtp_port}
[timeouts]
connect = "2s"
[[account]]
name = "info"
host = "127.0.0.1"
port = {pop3_port}
tls = "none"
allow_plaintext = true
username = "info"
password = "hunter2-secret"
deliver_to = "info@contoso.local"
"#
        );
        let c = Config::from_str(&text, Path::new("popbridge.toml")).unwrap();
        let r = check(&c, true, &TcpDialer).await;
        let a = &r.accounts[0];
        let e = a.probe_error.as_deref().unwrap();
        assert!(e.contains("SMTP: ") && e.contains("POP3: "), "{e}");
        assert!(r.probe_failed());
        assert_eq!(a.messages, None);
        let text = r.render();
        assert!(text.contains("unknown (probe failed)"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
