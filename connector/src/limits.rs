//! `check-limits`: the size-limit chain a message passes through, per account, and what
//! happens to a message of each size (ARCHITECTURE.md, invariant 5 and
//! "Where it hurt" 1 and 2).
//!
//! Responsible for: collecting the limits a message meets (popbridge's
//! `max_message_size`, the receive connector's EHLO `SIZE`, Exchange's organisation and
//! mailbox receive limits) with where each value came from ([`Source`]), the limit
//! popbridge downloads up to ([`effective_limit`]), splitting the size axis into bands at
//! every known limit and naming each band's outcome ([`analyse`], pure), optionally probing
//! the servers and naming the messages on the server that will not be delivered ([`check`]
//! with `probe`), and rendering the table and the verdict ([`Report`]).
//! Must never: change a mailbox (the probe is POP3 login, LIST, `TOP n 0` for the messages
//! it names, QUIT: no RETR, no DELE; SMTP EHLO then QUIT: no MAIL), connect anywhere
//! without `probe`, call a limit it does not know "unlimited" or a chain with an unknown
//! limit "safe", panic on a failed probe (the failure is reported in
//! [`AccountReport::probe_error`]), or show a secret.
//!
//! # The rule (stuck, lost, safe)
//!
//! The download limit: profile `default` downloads up to the smallest known limit of
//! `max_message_size`, the receive connector's SIZE, `organization_receive_limit` and
//! `mailbox_receive_limit` ([`effective_limit`]); profile `sbs2008` downloads up to the
//! receive connector's SIZE, or 10 MB when it is not advertised (what the old connector
//! did: it ignored every other limit). For a message of `s` octets (a limit `L` refuses
//! `s > L`):
//!
//! - `s` above the receive connector's SIZE: [`Outcome::Stuck`] naming
//!   [`RECEIVE_CONNECTOR`]: "too large for this server". It is not downloaded, kept and
//!   reported. This is the server's own hard limit, which any sender meets; it does not
//!   make the configuration unsafe.
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
//! # Unknown limits and the verdict
//!
//! Exchange's limits act after the SMTP 250 and cannot be probed: one the configuration
//! does not declare (a size, or `"unlimited"`) is unknown. The receive connector's SIZE is
//! known only from `--probe` (or not applicable with a pickup folder). The bands are drawn
//! from the known limits. The verdict ([`Verdict`]):
//!
//! - [`Verdict::Lost`] / [`Verdict::Stuck`] (exit 1): the known limits already lose or
//!   strand mail whatever the unknown ones are (this needs the SIZE: a small SIZE turns
//!   every band above it into "too large"), or `--probe` found messages on the server
//!   that will not be delivered ([`AccountReport::stuck`], named with TOP).
//! - [`Verdict::Unknown`] (exit [`EXIT_UNKNOWN`]): otherwise, while a limit is unknown,
//!   unless the only unknown is the SIZE and the chain is safe whatever it is.
//! - [`Verdict::Safe`] (exit 0): every limit known (or irrelevant) and no band unsafe.
//!
//! [`Report::exit_code`] is the worst over the accounts: 1, then [`EXIT_UNKNOWN`], then 0.
//! Adjacent bands with the same outcome are merged.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::config::{Account, Config, Profile, ReceiveLimit, SizeRule};
use crate::exit::Exit;
use crate::message::Named;
use crate::net::Dialer;
use crate::pop3;
use crate::smtp::{self, SmtpClient};

/// Name of popbridge's own limit (`limits.max_message_size`).
pub const MAX_MESSAGE_SIZE: &str = "max_message_size";
/// Name of the receive connector's `MaxMessageSize`, advertised as EHLO `SIZE`.
pub const RECEIVE_CONNECTOR: &str = "receive connector SIZE";
/// Name of Exchange's organisation-wide receive limit (`exchange.organization_receive_limit`).
pub const ORGANIZATION: &str = "organization_receive_limit";
/// Name of the Exchange mailbox's receive limit (`account.mailbox_receive_limit`).
pub const MAILBOX: &str = "mailbox_receive_limit";
/// `check-limits`' exit code when a limit is unknown and nothing is proven unsafe.
pub const EXIT_UNKNOWN: u8 = Exit::Unknown.code();

/// How many of the largest probed messages `render` names.
const LARGEST_SHOWN: usize = 5;
/// The most messages an account's probe names with `TOP n 0`.
const MAX_NAMED: usize = 50;

/// The size-limit chain of every account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One entry per account, in configuration order.
    pub accounts: Vec<AccountReport>,
}

/// Where a limit's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration declares it (a size, `"unlimited"`, `"auto"`).
    Declared,
    /// Left out of the configuration, with a default that is known (`max_message_size`:
    /// auto).
    Default,
    /// The receive connector's EHLO SIZE, read by `--probe`.
    Ehlo,
    /// `--probe` found no SIZE in the receive connector's EHLO: no fixed limit.
    NotAdvertised,
    /// Delivery into a pickup folder: there is no receive connector.
    Pickup,
    /// Unknown: an Exchange limit the configuration does not declare.
    Undeclared,
    /// Unknown: the receive connector's SIZE without `--probe`.
    NotProbed,
    /// Unknown: `--probe` could not read it.
    ProbeFailed,
}

impl Source {
    /// True unless the value is unknown.
    pub fn is_known(self) -> bool {
        !matches!(self, Self::Undeclared | Self::NotProbed | Self::ProbeFailed)
    }

    /// Where the value came from, for people.
    pub fn words(self) -> &'static str {
        match self {
            Self::Declared => "declared",
            Self::Default => "default",
            Self::Ehlo => "EHLO SIZE, probed",
            Self::NotAdvertised => "probed: EHLO has no SIZE",
            Self::Pickup => "pickup folder",
            Self::Undeclared => "not declared",
            Self::NotProbed => "not probed",
            Self::ProbeFailed => "probe failed",
        }
    }
}

/// One limit of the chain: its value and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// In octets; `None` = no limit, or unknown (see `source`).
    pub value: Option<u64>,
    /// Where the value came from.
    pub source: Source,
}

impl Limit {
    /// A limit as the configuration declares it.
    fn declared(l: ReceiveLimit) -> Self {
        match l {
            ReceiveLimit::Undeclared => Self {
                value: None,
                source: Source::Undeclared,
            },
            ReceiveLimit::Unlimited => Self {
                value: None,
                source: Source::Declared,
            },
            ReceiveLimit::Octets(n) => Self {
                value: Some(n),
                source: Source::Declared,
            },
        }
    }
}

/// What `--probe` learnt of the receive connector's SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeProbe {
    /// Not probed.
    NotProbed,
    /// The probe failed.
    Failed,
    /// EHLO advertised this SIZE (0 = no fixed limit, RFC 1870).
    Advertised(u64),
    /// EHLO advertised no SIZE.
    NotAdvertised,
}

/// The verdict on one account (see the module's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every limit known, nothing lost or stuck.
    Safe,
    /// Mail is stuck on the POP3 server forever (a band, or messages found there).
    Stuck,
    /// Mail can be downloaded, deleted and bounced.
    Lost,
    /// A limit is unknown and nothing is proven unsafe.
    Unknown,
}

impl Verdict {
    /// The exit code of this verdict.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Safe => Exit::Delivered.code(),
            Self::Stuck | Self::Lost => Exit::Stuck.code(),
            Self::Unknown => EXIT_UNKNOWN,
        }
    }

    /// How bad it is, for picking the worst (1 over unknown over 0).
    fn rank(self) -> u8 {
        match self {
            Self::Safe => 0,
            Self::Unknown => 1,
            Self::Stuck => 2,
            Self::Lost => 3,
        }
    }
}

/// A message on the POP3 server that will not be delivered with the limits as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckMessage {
    /// Its message number in the probe's session.
    pub number: u32,
    /// Its LIST size.
    pub size: u64,
    /// What happens to it.
    pub outcome: Outcome,
    /// Its From, Subject, Date and Message-ID from `TOP n 0` (empty when TOP is not
    /// offered, refused, or past the bound of named messages).
    pub named: Named,
}

/// One account's limits, download limit, size bands and (when probed) message sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountReport {
    /// Account name.
    pub account: String,
    /// The behaviour profile the analysis assumes.
    pub profile: Profile,
    /// How that profile finds the download limit.
    pub size_rule: SizeRule,
    /// `limits.max_message_size`; `None` = auto (the receive connector's SIZE).
    pub configured: Option<u64>,
    /// The receive connector's EHLO SIZE.
    pub receive_connector: Limit,
    /// `exchange.organization_receive_limit`.
    pub organization: Limit,
    /// The account's `mailbox_receive_limit`.
    pub mailbox: Limit,
    /// The largest message popbridge downloads ([`effective_limit`]); `None` = no limit known.
    pub effective: Option<u64>,
    /// The size axis split at every known limit, from 0 upwards, each with its outcome.
    pub bands: Vec<Band>,
    /// Probed message sizes from LIST, in LIST order (index + 1 is the message number).
    pub messages: Option<Vec<u64>>,
    /// Probed messages that will not be delivered, largest first.
    pub stuck: Vec<StuckMessage>,
    /// Why probing failed (no secret in it), when it did.
    pub probe_error: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
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
        outcome_in(&self.bands, size)
    }

    /// The names of the limits that are unknown.
    pub fn unknown(&self) -> Vec<&'static str> {
        [
            (RECEIVE_CONNECTOR, self.receive_connector),
            (ORGANIZATION, self.organization),
            (MAILBOX, self.mailbox),
        ]
        .into_iter()
        .filter(|(_, l)| !l.source.is_known())
        .map(|(name, _)| name)
        .collect()
    }

    /// What would make the unknown limits known, for people.
    pub fn to_know(&self) -> Vec<String> {
        let mut todo = Vec::new();
        let exchange: Vec<&str> = self
            .unknown()
            .into_iter()
            .filter(|n| *n != RECEIVE_CONNECTOR)
            .collect();
        if !exchange.is_empty() {
            todo.push(format!(
                "declare {} (a size, or \"unlimited\")",
                exchange.join(" and ")
            ));
        }
        match self.receive_connector.source {
            Source::NotProbed => {
                todo.push("run with --probe to read the receive connector's SIZE".into())
            }
            Source::ProbeFailed => todo.push("fix what made the probe fail and probe again".into()),
            _ => {}
        }
        todo
    }

    /// The value of the limit named `name` in this report (the 10 MB the old connector
    /// used without a SIZE under `sbs2008`).
    fn value_of(&self, name: &str) -> Option<u64> {
        match name {
            MAX_MESSAGE_SIZE => self.configured,
            RECEIVE_CONNECTOR => match self.size_rule {
                SizeRule::ReceiveConnector { .. } => {
                    self.receive_connector.value.or(self.effective)
                }
                SizeRule::SmallestKnown => self.receive_connector.value,
            },
            ORGANIZATION => self.organization.value,
            MAILBOX => self.mailbox.value,
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

    /// The worst verdict of the accounts.
    pub fn verdict(&self) -> Verdict {
        self.accounts
            .iter()
            .map(|a| a.verdict)
            .max_by_key(|v| v.rank())
            .unwrap_or(Verdict::Safe)
    }

    /// 0 safe, 1 mail can be lost or is stuck, [`EXIT_UNKNOWN`] a limit is unknown.
    pub fn exit_code(&self) -> u8 {
        self.verdict().exit_code()
    }

    /// A readable table per account, the verdict, and how to read the outcomes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for a in &self.accounts {
            render_account(&mut out, a);
            out.push('\n');
        }
        let verdict = match self.verdict() {
            Verdict::Lost => "MAIL CAN BE LOST".to_string(),
            Verdict::Stuck => "mail is or can be stuck on the POP3 server forever".to_string(),
            Verdict::Unknown => {
                let mut todo: Vec<String> = Vec::new();
                for a in &self.accounts {
                    if a.verdict == Verdict::Unknown {
                        for t in a.to_know() {
                            if !todo.contains(&t) {
                                todo.push(t);
                            }
                        }
                    }
                }
                format!("unknown: {}", todo.join("; "))
            }
            Verdict::Safe => "safe: no size limit can lose mail or keep it forever".to_string(),
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
                             does not count against the configuration, but a message
                             found there is stuck (exit 1).
  unknown                    a limit is neither declared nor probed: nothing can be
                             called safe until it is (exit 5).
Exit codes: 0 safe; 1 mail can be lost or stuck, or messages on the server will not be
delivered; 2 configuration error; 5 a limit is unknown.
";

/// Octets a message with one attachment needs besides the attachment's base64 lines: its
/// header, the text part and the MIME part headers.
pub const ATTACHMENT_ALLOWANCE: u64 = 4096;

/// The largest attachment (decoded octets) whose message fits `limit`: base64 turns 3
/// octets into 4 characters, in lines of 76 characters plus CRLF, after
/// [`ATTACHMENT_ALLOWANCE`] octets of everything else.
pub fn largest_attachment(limit: u64) -> u64 {
    let lines = limit.saturating_sub(ATTACHMENT_ALLOWANCE) / 78;
    lines * 76 / 4 * 3
}

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
    match config.policy().size_rule {
        SizeRule::ReceiveConnector { unadvertised } => Some(smtp_size.unwrap_or(unadvertised)),
        SizeRule::SmallestKnown => [
            config.limits.max_message_size,
            smtp_size,
            config.exchange.organization_receive_limit.octets(),
            account.mailbox_receive_limit.octets(),
        ]
        .into_iter()
        .flatten()
        .min(),
    }
}

/// The limits of one account, as the outcome of a size is decided from them.
struct Chain {
    size_rule: SizeRule,
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
        match self.size_rule {
            SizeRule::SmallestKnown => {
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
            SizeRule::ReceiveConnector { .. } => {
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

/// The bands of a chain: the size axis split at every limit, from 0 upwards, adjacent
/// bands with the same outcome merged.
fn bands_of(chain: &Chain) -> Vec<Band> {
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
    bands
}

/// The outcome of a message of `size` octets in `bands`.
fn outcome_in(bands: &[Band], size: u64) -> Outcome {
    bands
        .iter()
        .find(|b| size >= b.from && b.to.is_none_or(|to| size <= to))
        .map_or(Outcome::Delivered, |b| b.outcome)
}

/// The size-limit chain of `account`: its limits and where each came from, download
/// limit, size bands, the probed messages that will not be delivered, and the verdict
/// (the module's rule), with `size` what `--probe` learnt of the receive connector's SIZE
/// and `sizes` the probed LIST sizes (`None` = not probed). Pure: no I/O; the stuck
/// messages are not named yet.
pub fn analyse(
    config: &Config,
    account: &Account,
    size: SizeProbe,
    sizes: Option<Vec<u64>>,
) -> AccountReport {
    let pickup = config.transport.pickup().is_some();
    let limit = |value, source| Limit { value, source };
    let receive_connector = match size {
        _ if pickup => limit(None, Source::Pickup),
        SizeProbe::NotProbed => limit(None, Source::NotProbed),
        SizeProbe::Failed => limit(None, Source::ProbeFailed),
        SizeProbe::Advertised(0) | SizeProbe::NotAdvertised => limit(None, Source::NotAdvertised),
        SizeProbe::Advertised(n) => limit(Some(n), Source::Ehlo),
    };
    let organization = Limit::declared(config.exchange.organization_receive_limit);
    let mailbox = Limit::declared(account.mailbox_receive_limit);
    let size_rule = config.policy().size_rule;
    let chain_with = |receive: Option<u64>| Chain {
        size_rule,
        configured: config.limits.max_message_size,
        receive,
        organization: organization.value,
        mailbox: mailbox.value,
        download: effective_limit(config, account, receive),
        leave_on_server: account.leave_on_server,
    };
    let chain = chain_with(receive_connector.value);
    let mut bands = bands_of(&chain);
    if let Some(sizes) = &sizes {
        for b in &mut bands {
            let n = sizes
                .iter()
                .filter(|&&s| s >= b.from && b.to.is_none_or(|to| s <= to))
                .count();
            b.messages = Some(n);
        }
    }
    let size_known = receive_connector.source.is_known();
    // With the SIZE unknown, what a message meets at the most SIZE could be: only what
    // fails even then is certainly not delivered, and only a chain safe even then is safe.
    let reach = (!size_known).then(|| bands_of(&chain_with(Some(u64::MAX))));
    let reach = reach.as_deref().unwrap_or(&bands);
    let mut stuck: Vec<StuckMessage> = sizes
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, &s)| {
            let outcome = outcome_in(reach, s);
            (outcome != Outcome::Delivered).then(|| StuckMessage {
                number: u32::try_from(i + 1).unwrap_or(u32::MAX),
                size: s,
                outcome,
                named: Named::default(),
            })
        })
        .collect();
    stuck.sort_by(|x, y| y.size.cmp(&x.size).then(x.number.cmp(&y.number)));
    let lost = bands
        .iter()
        .any(|b| matches!(b.outcome, Outcome::Lost { .. }));
    let unsafe_bands = bands.iter().any(|b| b.outcome.is_unsafe());
    let exchange_unknown = !organization.source.is_known() || !mailbox.source.is_known();
    let verdict = if size_known && lost {
        Verdict::Lost
    } else if (size_known && unsafe_bands) || !stuck.is_empty() {
        Verdict::Stuck
    } else if exchange_unknown || reach.iter().any(|b| b.outcome.is_unsafe()) {
        Verdict::Unknown
    } else {
        Verdict::Safe
    };
    AccountReport {
        account: account.name.clone(),
        profile: config.profile,
        size_rule,
        configured: chain.configured,
        receive_connector,
        organization,
        mailbox,
        effective: chain.download,
        bands,
        messages: sizes,
        stuck,
        probe_error: None,
        verdict,
    }
}

/// The size-limit chain of every account. Without `probe` nothing is connected to (the
/// receive connector's SIZE is then unknown). With `probe`: one SMTP session (EHLO for
/// SIZE, then QUIT; skipped for a pickup folder) and, per account, a POP3 login, LIST,
/// `TOP n 0` for each message that will not be delivered (at most fifty; the names are
/// left empty where TOP is not offered or refused) and QUIT, nothing retrieved or deleted.
/// A failed probe is reported in `probe_error` and the analysis uses what is known.
pub async fn check(config: &Config, probe: bool, dialer: &dyn Dialer) -> Report {
    if !probe {
        return Report {
            accounts: config
                .accounts
                .iter()
                .map(|a| analyse(config, a, SizeProbe::NotProbed, None))
                .collect(),
        };
    }
    let smtp = probe_smtp(config, dialer).await;
    let size = match &smtp {
        Ok(Some(n)) => SizeProbe::Advertised(*n),
        Ok(None) => SizeProbe::NotAdvertised,
        Err(_) => SizeProbe::Failed,
    };
    let mut accounts = Vec::with_capacity(config.accounts.len());
    for account in &config.accounts {
        let listed = probe_pop3(config, account, dialer, size).await;
        let mut errors = Vec::new();
        if let Err(e) = &smtp {
            errors.push(format!("SMTP: {e}"));
        }
        let (sizes, mut names) = match listed {
            Ok((sizes, names)) => (Some(sizes), names),
            Err(e) => {
                errors.push(format!("POP3: {e}"));
                (None, HashMap::new())
            }
        };
        let mut report = analyse(config, account, size, sizes);
        for m in &mut report.stuck {
            if let Some(n) = names.remove(&m.number) {
                m.named = n;
            }
        }
        if !errors.is_empty() {
            report.probe_error = Some(errors.join("; "));
        }
        accounts.push(report);
    }
    Report { accounts }
}

/// The receive connector's EHLO SIZE (`None`: not advertised, or a pickup folder).
async fn probe_smtp(config: &Config, dialer: &dyn Dialer) -> Result<Option<u64>, String> {
    let Some(t) = config.transport.smtp() else {
        return Ok(None);
    };
    let settings = smtp::Settings::for_transport(config, t, false).map_err(|e| e.to_string())?;
    let client = SmtpClient::connect(dialer, &settings)
        .await
        .map_err(|e| e.to_string())?;
    let size = client.ext.max_size();
    client.quit().await;
    Ok(size)
}

/// The account's message sizes from LIST, in LIST order, and the names (`TOP n 0`) of
/// the messages that will not be delivered, by number; logs in, LISTs, TOPs, QUITs.
async fn probe_pop3(
    config: &Config,
    account: &Account,
    dialer: &dyn Dialer,
    size: SizeProbe,
) -> Result<(Vec<u64>, HashMap<u32, Named>), String> {
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
    let sizes: Vec<u64> = listing.iter().map(|&(_, size)| size).collect();
    let numbers: Vec<u32> = listing.iter().map(|&(n, _)| n).collect();
    let stuck = analyse(config, account, size, Some(sizes.clone())).stuck;
    let mut names = HashMap::new();
    for m in stuck.iter().take(MAX_NAMED) {
        let Some(&n) = numbers.get(m.number as usize - 1) else {
            continue;
        };
        // Held in memory (the bound is far below the threshold): nothing is written.
        match txn.top(n, Path::new(".")).await {
            Ok(Some(head)) => {
                names.insert(m.number, Named::from_head(head.head()));
            }
            // Not offered or refused: the rest stay unnamed.
            Ok(None) => break,
            Err(e) => {
                // The session cannot be trusted any more; nothing was marked for deletion,
                // so dropping it changes nothing.
                tracing::warn!(account = %account.name, "TOP {n} 0: {e}");
                return Ok((sizes, names));
            }
        }
    }
    // Nothing was marked for deletion, so QUIT changes nothing; its failure is harmless.
    let _ = txn.quit().await;
    Ok((sizes, names))
}

/// A size for people (every command prints sizes with it): `10 MB` when exact, else one
/// decimal (`20.3 MB`, `35.0 MB` just over 35 MB); binary units, as the configuration
/// writes them (1 KB = 1024 octets).
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

/// An Exchange limit's row: its value and where it came from, or how to declare it.
fn exchange_row(l: Limit, key: &str) -> String {
    match (l.source, l.value) {
        (Source::Undeclared, _) => {
            format!("unknown (not declared: set {key} to Exchange's value, or \"unlimited\")")
        }
        (source, Some(v)) => format!("{} ({})", exact_size(v), source.words()),
        (source, None) => format!("unlimited ({})", source.words()),
    }
}

/// A probed message for people: `#3 20 MB from Alice <a@example.net> "Scans" (2026-12-01)`,
/// with `(unknown)` for what TOP did not give.
fn stuck_label(m: &StuckMessage) -> String {
    let from = m.named.from.as_deref().unwrap_or("(unknown)");
    let subject = match &m.named.subject {
        Some(s) => format!("\"{s}\""),
        None => "(unknown)".to_string(),
    };
    let mut label = format!(
        "#{} {} from {from}, subject {subject}",
        m.number,
        human_size(m.size)
    );
    if let Some(d) = &m.named.date {
        let d = crate::message::short_date(d).unwrap_or_else(|| d.clone());
        let _ = write!(label, " ({d})");
    }
    label
}

fn render_account(out: &mut String, a: &AccountReport) {
    // Only the receive connector's SIZE counts: profile sbs2008.
    let sbs = matches!(a.size_rule, SizeRule::ReceiveConnector { .. });
    let _ = writeln!(out, "Account {} (profile {})", a.account, a.profile);

    let mut configured = match a.configured {
        Some(v) => format!("{} (declared)", exact_size(v)),
        None => "auto: the receive connector's SIZE (declared or default)".to_string(),
    };
    if sbs {
        configured.push_str(" - not used by profile sbs2008");
    }
    let r = a.receive_connector;
    let mut receive = match (r.source, r.value) {
        (Source::NotProbed, _) => "unknown (not probed: run with --probe)".to_string(),
        (Source::ProbeFailed, _) => "unknown (probe failed, see below)".to_string(),
        (Source::Pickup, _) => "none (pickup folder)".to_string(),
        (Source::NotAdvertised, _) => format!("no fixed limit ({})", r.source.words()),
        (source, Some(v)) => format!("{} ({})", exact_size(v), source.words()),
        (source, None) => format!("none ({})", source.words()),
    };
    if sbs && r.value.is_none() && r.source != Source::Pickup {
        if let Some(e) = a.effective {
            let _ = write!(receive, "; sbs2008 assumes {}", exact_size(e));
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
            exchange_row(a.organization, "[exchange] organization_receive_limit"),
        ),
        (
            "mailbox_receive_limit (Exchange, after 250: NDR)",
            exchange_row(a.mailbox, "the account's mailbox_receive_limit"),
        ),
        ("popbridge downloads up to", effective.clone()),
        (
            "largest attachment that fits (base64)",
            a.effective.map_or_else(
                || "unknown (no limit known)".to_string(),
                |e| {
                    format!(
                        "about {}; base64 adds a third, {} octets kept for headers and text",
                        exact_size(largest_attachment(e)),
                        ATTACHMENT_ALLOWANCE
                    )
                },
            ),
        ),
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
    let unknown = a.unknown();
    if !unknown.is_empty() {
        let _ = writeln!(
            out,
            "  (the bands leave out what is unknown: {})",
            unknown.join(", ")
        );
    }

    if !a.stuck.is_empty() {
        let _ = writeln!(
            out,
            "  messages on the server that will not be delivered: {}",
            a.stuck.len()
        );
        for m in a.stuck.iter().take(MAX_NAMED) {
            let _ = writeln!(
                out,
                "    {}: {}",
                stuck_label(m),
                outcome_words(a, m.outcome)
            );
        }
        if a.stuck.len() > MAX_NAMED {
            let _ = writeln!(out, "    and {} more", a.stuck.len() - MAX_NAMED);
        }
    }

    let verdict = match a.verdict {
        Verdict::Lost => "MAIL CAN BE LOST".to_string(),
        Verdict::Stuck if a.can_stick() => {
            "mail can be stuck on the POP3 server forever".to_string()
        }
        Verdict::Stuck => format!(
            "stuck: {} message(s) on the server will not be delivered",
            a.stuck.len()
        ),
        Verdict::Unknown => format!("unknown: {}", a.to_know().join("; ")),
        Verdict::Safe => "safe".to_string(),
    };
    let _ = writeln!(out, "  verdict: {verdict}");
    if a.verdict != Verdict::Unknown && !unknown.is_empty() {
        let _ = writeln!(
            out,
            "  note: also unknown: {} (the verdict holds whatever they are)",
            unknown.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::net::TcpDialer;

    const MB: u64 = 1024 * 1024;

    /// The opening of the plain-text `[[account]]` table `info` on `127.0.0.1:pop3_port`.
    fn loopback_account(pop3_port: u16) -> String {
        format!(
            "[[account]]\nname = \"info\"\nhost = \"127.0.0.1\"\nport = {pop3_port}\n\
             tls = \"none\"\nallow_plaintext = true\n"
        )
    }

    fn config(profile: &str, max: &str, org: Option<&str>, mailbox: Option<&str>) -> Config {
        let org = org
            .map(|o| format!("[exchange]\norganization_receive_limit = \"{o}\"\n"))
            .unwrap_or_default();
        let mailbox = mailbox
            .map(|m| format!("mailbox_receive_limit = \"{m}\"\n"))
            .unwrap_or_default();
        // The configuration tests' minimal file (one account, `info`), then the account's
        // own limit and the tables after it.
        let minimal = crate::config::tests::MINIMAL;
        let text = format!(
            "profile = \"{profile}\"\n{minimal}{mailbox}\n{org}\n[limits]\nmax_message_size = \"{max}\"\n"
        );
        Config::from_str(&text, Path::new("popbridge.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The report of `c`'s first account: `smtp` the probed SIZE (`None`: not probed).
    fn report(c: &Config, smtp: Option<u64>, sizes: Option<Vec<u64>>) -> Report {
        let size = smtp.map_or(SizeProbe::NotProbed, SizeProbe::Advertised);
        Report {
            accounts: vec![analyse(c, &c.accounts[0], size, sizes)],
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
        let c = config("default", "50MB", Some("unlimited"), Some("unlimited"));
        assert_eq!(report(&c, Some(50 * MB), None).exit_code(), 0);
        // SIZE smaller than the configured limit: nothing to keep that the server takes.
        let c = config("default", "50MB", Some("unlimited"), Some("unlimited"));
        let r = report(&c, Some(10 * MB), None);
        assert_eq!(r.accounts[0].effective, Some(10 * MB));
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn undeclared_limits_are_unknown_never_safe() {
        // auto, nothing declared, nothing probed: nothing is known, so nothing is safe.
        let c = config("default", "auto", None, None);
        let r = report(&c, None, None);
        let a = &r.accounts[0];
        assert_eq!(a.effective, None);
        assert_eq!(a.bands.len(), 1);
        assert_eq!(a.organization.source, Source::Undeclared);
        assert_eq!(a.mailbox.source, Source::Undeclared);
        assert_eq!(a.receive_connector.source, Source::NotProbed);
        assert_eq!(a.verdict, Verdict::Unknown);
        assert_eq!(r.exit_code(), EXIT_UNKNOWN);
        let text = r.render();
        assert!(!text.to_lowercase().contains("verdict: safe"), "{text}");
        assert!(!text.contains("unlimited ("), "{text}");
        assert!(
            text.contains(
                "verdict: unknown: declare organization_receive_limit and \
                 mailbox_receive_limit (a size, or \"unlimited\"); run with --probe"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "Verdict: unknown: declare organization_receive_limit and mailbox_receive_limit \
                 (a size, or \"unlimited\"); run with --probe to read the receive connector's \
                 SIZE (exit 5)."
            ),
            "{text}"
        );
        // The SIZE probed, the Exchange limits still undeclared: still unknown.
        let r = report(&c, Some(50 * MB), Some(vec![MB]));
        assert_eq!(r.accounts[0].verdict, Verdict::Unknown);
        assert_eq!(r.exit_code(), EXIT_UNKNOWN);
        // One of them declared is not enough.
        let c = config("default", "auto", Some("unlimited"), None);
        assert_eq!(report(&c, Some(50 * MB), None).exit_code(), EXIT_UNKNOWN);
        // A known limit with SIZE unknown cannot be proven harmless, nor harmful.
        let c = config("default", "auto", Some("10MB"), Some("unlimited"));
        let r = report(&c, None, None);
        assert_eq!(r.exit_code(), EXIT_UNKNOWN);
        assert!(!r.can_lose_mail());
        assert!(r.render().contains("run with --probe"));
        assert!(r.render().contains("largest attachment that fits (base64)"));
        // sbs2008 assumes the 10 MB default for the bands, but the verdict waits for SIZE.
        let c = config("sbs2008", "auto", Some("5MB"), Some("unlimited"));
        let r = report(&c, None, None);
        assert_eq!(r.accounts[0].effective, Some(10 * MB));
        assert_eq!(
            r.accounts[0].outcome_of(8 * MB),
            Outcome::Lost {
                limit: ORGANIZATION
            }
        );
        assert_eq!(r.exit_code(), EXIT_UNKNOWN);
        assert!(r.render().contains("sbs2008 assumes 10 MB"));
    }

    #[test]
    fn known_losses_are_reported_whatever_the_unknown_limits() {
        // The SIZE probed and the organisation limit below it: lost under sbs2008 and
        // stuck under default, whatever the undeclared mailbox limit is.
        let r = report(&case_a("sbs2008"), Some(50 * MB), None);
        assert_eq!(r.accounts[0].verdict, Verdict::Lost);
        assert_eq!(r.exit_code(), 1);
        let text = r.render();
        assert!(
            text.contains("also unknown: mailbox_receive_limit"),
            "{text}"
        );
        let r = report(&case_a("default"), Some(50 * MB), None);
        assert_eq!(r.accounts[0].verdict, Verdict::Stuck);
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn a_declared_safe_chain_is_safe() {
        // Exchange's limits declared at the receive connector's SIZE, SIZE probed.
        let c = config("default", "auto", Some("50MB"), Some("50MB"));
        let r = report(&c, Some(50 * MB), Some(vec![MB, 2 * MB]));
        assert_eq!(r.accounts[0].verdict, Verdict::Safe);
        assert_eq!(r.exit_code(), 0);
        let text = r.render();
        assert!(text.contains("50 MB (declared)"), "{text}");
        assert!(text.contains("50 MB (EHLO SIZE, probed)"), "{text}");
        assert!(text.contains("Verdict: safe"), "{text}");
        // Declared unlimited with popbridge following the SIZE: safe whatever the SIZE is,
        // even without a probe.
        let c = config("default", "auto", Some("unlimited"), Some("unlimited"));
        let r = report(&c, None, None);
        assert_eq!(r.accounts[0].verdict, Verdict::Safe);
        assert_eq!(r.exit_code(), 0);
        assert!(r.render().contains("unlimited (declared)"));
        // But a fixed max_message_size with SIZE unknown is not.
        let c = config("default", "10MB", Some("unlimited"), Some("unlimited"));
        assert_eq!(report(&c, None, None).exit_code(), EXIT_UNKNOWN);
    }

    #[test]
    fn messages_that_will_not_be_delivered_are_stuck() {
        // A safe chain, but a message above the server's own SIZE is on the server.
        let c = config("default", "auto", Some("50MB"), Some("50MB"));
        let r = report(&c, Some(50 * MB), Some(vec![MB, 60 * MB]));
        let a = &r.accounts[0];
        assert!(!a.can_stick() && !a.can_lose_mail());
        assert_eq!(a.verdict, Verdict::Stuck);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(a.stuck.len(), 1);
        assert_eq!((a.stuck[0].number, a.stuck[0].size), (2, 60 * MB));
        let text = r.render();
        assert!(
            text.contains("#2 60 MB from (unknown), subject (unknown): too large"),
            "{text}"
        );
        assert!(text.contains("stuck: 1 message(s)"), "{text}");
        // With the SIZE unknown only what no SIZE could let through is stuck.
        let c = config("sbs2008", "auto", Some("unlimited"), Some("unlimited"));
        let r = analyse(&c, &c.accounts[0], SizeProbe::Failed, Some(vec![20 * MB]));
        assert!(r.stuck.is_empty(), "{:?}", r.stuck);
        // (and that chain is safe whatever the SIZE is)
        assert_eq!(r.verdict, Verdict::Safe);
        let c = config("sbs2008", "auto", Some("10MB"), Some("unlimited"));
        let r = analyse(&c, &c.accounts[0], SizeProbe::Failed, Some(vec![20 * MB]));
        assert_eq!(r.stuck.len(), 1);
        assert_eq!(r.verdict, Verdict::Stuck);
    }

    #[test]
    fn after_a_probe_there_is_no_probe_hint() {
        for size in [
            SizeProbe::Advertised(50 * MB),
            SizeProbe::NotAdvertised,
            SizeProbe::Failed,
        ] {
            for c in [
                config("default", "auto", None, None),
                case_a("default"),
                case_b("sbs2008"),
                config("default", "10MB", Some("unlimited"), Some("unlimited")),
            ] {
                let r = Report {
                    accounts: vec![analyse(&c, &c.accounts[0], size, Some(vec![MB]))],
                };
                let text = r.render();
                assert!(!text.contains("--probe"), "{size:?}\n{text}");
            }
        }
        // Not probed: the hint is there.
        let c = config("default", "auto", None, None);
        assert!(report(&c, None, None).render().contains("run with --probe"));
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
        let a = analyse(&c, &c.accounts[0], SizeProbe::Advertised(50 * MB), None);
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
        let a = analyse(
            &c,
            &c.accounts[0],
            SizeProbe::NotProbed,
            Some(vec![0, u64::MAX]),
        );
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
        // What `diagnose` prints as well: one function for every size shown.
        assert_eq!(human_size(1024), "1 KB");
        assert_eq!(human_size(1536), "1.5 KB");
        assert_eq!(human_size(3_565_158), "3.4 MB");
        assert_eq!(human_size(35 * MB + 1), "35.0 MB");
        assert_eq!(human_size(u64::MAX), "16777216.0 TB");
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
        assert_eq!(r.accounts[0].receive_connector.source, Source::NotProbed);
        assert_eq!(r.accounts[0].messages, None);
    }

    #[tokio::test]
    async fn probe_reads_size_and_list_and_changes_nothing() {
        use mock_pop3::{Maildrop, MockPop3};
        use mock_smtp::MockSmtp;
        use tokio::net::TcpListener;

        const PASSWORD: &str = "Sw0rdfish-s3cret!";
        let pop3 = MockPop3::builder()
            .maildrop(
                Maildrop::new("info", PASSWORD)
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
        let before = pop3.maildrop("info").unwrap();
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
{account}auth = "user"
username = "info"
password = "{PASSWORD}"
deliver_to = "info@contoso.local"
"#,
            smtp_port = smtp.addr().unwrap().port(),
            account = loopback_account(pop3.addr().unwrap().port()),
        );
        let c = Config::from_str(&text, Path::new("popbridge.toml")).unwrap();
        let r = check(&c, true, &TcpDialer).await;
        pop3.wait_idle().await;
        smtp.wait_idle().await;
        let a = &r.accounts[0];
        assert_eq!(a.probe_error, None);
        assert_eq!(a.receive_connector.value, Some(64 * 1024));
        assert_eq!(a.receive_connector.source, Source::Ehlo);
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
        // The two that will not be delivered, largest first, named by TOP.
        let named: Vec<(u32, Option<&str>, Option<&str>)> = a
            .stuck
            .iter()
            .map(|m| {
                (
                    m.number,
                    m.named.from.as_deref(),
                    m.named.subject.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            named,
            vec![
                (
                    4,
                    Some("Sender 3 <sender3@example.net>"),
                    Some("Demo message 3")
                ),
                (
                    3,
                    Some("Sender 2 <sender2@example.net>"),
                    Some("Demo message 2")
                ),
            ]
        );
        // Nothing retrieved, nothing deleted, nothing submitted.
        let after = pop3.maildrop("info").unwrap();
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
        assert!(
            rendered.contains(
                "from Sender 2 <sender2@example.net>, subject \"Demo message 2\" (2006-01-02): \
                 left on the server, never delivered (organization_receive_limit 20 KB)"
            ),
            "{rendered}"
        );
        assert!(!rendered.contains("--probe"), "{rendered}");
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
{account}username = "info"
password = "hunter2-secret"
deliver_to = "info@contoso.local"
"#,
            account = loopback_account(pop3_port),
        );
        let c = Config::from_str(&text, Path::new("popbridge.toml")).unwrap();
        let r = check(&c, true, &TcpDialer).await;
        let a = &r.accounts[0];
        let e = a.probe_error.as_deref().unwrap();
        assert!(e.contains("SMTP: ") && e.contains("POP3: "), "{e}");
        assert!(r.probe_failed());
        assert_eq!(a.messages, None);
        let text = r.render();
        assert!(text.contains("unknown (probe failed"), "{text}");
        assert!(!text.contains("--probe"), "{text}");
        assert_eq!(r.exit_code(), EXIT_UNKNOWN);
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[cfg(test)]
mod attachment_tests {
    use super::*;

    #[test]
    fn the_largest_attachment_grows_by_base64_into_the_limit() {
        let limit = 10 * 1024 * 1024;
        let a = largest_attachment(limit);
        // Its message: base64 lines of 76 characters plus CRLF, plus the allowance.
        let chars = a.div_ceil(3) * 4;
        let wire = chars + chars.div_ceil(76) * 2 + ATTACHMENT_ALLOWANCE;
        assert!(wire <= limit, "{wire} > {limit}");
        // ... and it is the largest such, within one base64 line.
        assert!(limit - wire < 78 + 4, "{} octets unused", limit - wire);
        assert_eq!(largest_attachment(0), 0);
        assert!(a < limit * 3 / 4 && a > limit * 7 / 10, "{a}");
    }
}
