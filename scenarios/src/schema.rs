//! The scenario file format (`scenarios/FORMAT.md`): serde structs as written, and their
//! validation into a [`Scenario`] ready to run.
//!
//! Responsible for: refusing unknown keys everywhere, applying the documented defaults,
//! checking every value (sizes, durations, labels, faults, expectations, the connector's
//! keys through popbridge's own configuration parser), and reporting each problem as an
//! [`Error`] that names the file, the 1-based line and the key.
//! Must never: contain connector logic, start a server, or panic on any file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_core::fault::{FaultAction, FaultRule, Hook};
use mock_pop3::TlsOffer;
use mock_smtp::{Extensions, Limits, MailboxSpec, SpamField, SpamRule};
use popbridge::config::{parse_duration, parse_size};
use popbridge::faults::{FailPoint, Sabotage, Step};
use popbridge::toml_locate::{render, KeyPath, Located, Locator, Seg};
use popbridge_proto::pop3::AuthMethod;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::generate::{self, Planned};
use crate::proxy::Shape;

/// How long a scenario may run before it is reported as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The most passes a scenario may ask for.
const MAX_PASSES: u32 = 100;
/// The most copies one message declaration may ask for.
pub(crate) const MAX_COUNT: u32 = 100_000;
/// The largest generated message.
pub(crate) const MAX_SIZE: u64 = 256 * 1024 * 1024;

/// A scenario file that cannot be used; Display reads `FILE:LINE: KEY: MESSAGE`. The same
/// type as popbridge's configuration errors: one shape for every file a user writes.
pub use popbridge::config::ConfigError as Error;

// ---------------------------------------------------------------------------------------
// As written
// ---------------------------------------------------------------------------------------

/// A whole scenario file, as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ScenarioFile {
    /// One line saying what the scenario reproduces.
    pub description: Option<String>,
    /// The POP3 server.
    pub pop3: Pop3,
    /// The Exchange-like SMTP server.
    pub smtp: Smtp,
    /// popbridge's configuration keys (see FORMAT.md for what the runner fills in).
    pub connector: toml::Table,
    /// How the connector is run.
    pub run: Run,
    /// What must come of it.
    pub expect: Expect,
    /// The WAN link between the connector and each server (absent: direct).
    pub network: Option<Network>,
}

/// `[network]`: the link between the connector and each server, as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way delay to and from the POP3 server (`"40ms"`; a bare number is seconds).
    pub pop3_latency: Option<Scalar>,
    /// One-way delay to and from the SMTP server.
    pub smtp_latency: Option<Scalar>,
    /// Bytes per second each way on both links: a number, or `"10MB/s"` (units as sizes).
    pub bandwidth: Option<Scalar>,
    /// Each POP3 connection is cut after this many bytes both ways (`"20KB"`).
    pub pop3_cut_after: Option<Scalar>,
    /// Each SMTP connection is cut after this many bytes both ways.
    pub smtp_cut_after: Option<Scalar>,
}

/// `[pop3]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3 {
    /// TLS mode.
    pub tls: TlsOffer,
    /// UIDL works.
    pub uidl: bool,
    /// TOP works.
    pub top: bool,
    /// PIPELINING is advertised.
    pub pipelining: bool,
    /// RESP-CODES (`[IN-USE]`, `[LOGIN-DELAY]`, `[SYS/...]`).
    pub resp_codes: bool,
    /// The greeting carries an APOP timestamp.
    pub apop_timestamp: bool,
    /// LOGIN-DELAY seconds, enforced; 0 for none.
    pub login_delay: u32,
    /// Message lines are dot-stuffed (false: a hostile server that sends them as they are).
    pub dot_stuffing: bool,
    /// Seed of probabilistic faults, timestamps and challenges.
    pub seed: u64,
    /// The mailboxes.
    pub mailbox: Vec<Pop3Mailbox>,
    /// Fault rules.
    pub fault: Vec<Fault>,
}

impl Default for Pop3 {
    fn default() -> Self {
        Self {
            tls: TlsOffer::None,
            uidl: true,
            top: true,
            pipelining: true,
            resp_codes: true,
            apop_timestamp: true,
            login_delay: 0,
            dot_stuffing: true,
            seed: 0,
            mailbox: Vec::new(),
            fault: Vec::new(),
        }
    }
}

/// `[[pop3.mailbox]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Mailbox {
    /// Login name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Accepted authentication methods.
    pub auth: Vec<AuthMethod>,
    /// Messages in maildrop order.
    pub message: Vec<MessageSpec>,
    /// An OAuth2 provider for this mailbox: XOAUTH2 then takes only its access tokens.
    pub oauth2: Option<OAuth2Spec>,
}

impl Default for Pop3Mailbox {
    fn default() -> Self {
        Self {
            user: "info".into(),
            password: "secret".into(),
            auth: AuthMethod::ALL.to_vec(),
            message: Vec::new(),
            oauth2: None,
        }
    }
}

/// `[pop3.mailbox.oauth2]`: a mock OAuth2 token endpoint for the mailbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Spec {
    /// The client id the provider knows (and the connector is configured with).
    pub client_id: String,
    /// The client secret; `""` for a public client.
    pub client_secret: String,
    /// The refresh token the provider accepts (and the connector is configured with).
    pub refresh_token: String,
    /// The scope the connector asks for, when set.
    pub scope: Option<String>,
    /// Access tokens' lifetime (`expires_in`).
    pub lifetime: Option<Scalar>,
    /// Each refresh also issues a new refresh token (the old one stops working).
    pub rotate: bool,
    /// Every refresh token is revoked: refreshes get `invalid_grant`.
    pub revoked: bool,
    /// The first access token stops working after its first login (the POP3 server then
    /// refuses it as expired, though its lifetime says otherwise).
    pub expire_first_token: bool,
}

impl Default for OAuth2Spec {
    fn default() -> Self {
        Self {
            client_id: "poplab-client".into(),
            client_secret: "poplab-client-secret".into(),
            refresh_token: "poplab-refresh-token".into(),
            scope: None,
            lifetime: None,
            rotate: false,
            revoked: false,
            expire_first_token: false,
        }
    }
}

/// A mailbox's mock OAuth2 provider, validated.
#[derive(Debug, Clone)]
pub struct OAuth2Plan {
    /// How the mock provider behaves.
    pub provider: mock_pop3::oauth::ProviderConfig,
    /// The scope the connector asks for.
    pub scope: Option<String>,
}

/// `[[pop3.mailbox.message]]`: a generated message (or copies of it), or a raw fixture.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// Names the message(s) in expectations.
    pub label: String,
    /// Copies, labelled `label-1` ... when more than 1.
    pub count: Option<u32>,
    /// From header.
    pub from: Option<String>,
    /// Return-Path header; `""` omits it.
    pub return_path: Option<String>,
    /// Sender header.
    pub sender: Option<String>,
    /// To header.
    pub to: Option<String>,
    /// Cc header.
    pub cc: Option<String>,
    /// Delivered-To headers.
    pub delivered_to: Option<OneOrMany>,
    /// X-Original-To header.
    pub x_original_to: Option<String>,
    /// Subject header.
    pub subject: Option<String>,
    /// Approximate total size.
    pub size: Option<Scalar>,
    /// A fixture file with the exact bytes, relative to the scenario's folder.
    pub raw: Option<String>,
    /// UIDL value.
    pub uid: Option<String>,
    /// The size LIST and STAT report instead of the true one.
    pub list_size: Option<Scalar>,
    /// What the body holds besides plain lines (malformed mail as servers serve it).
    pub body: Option<BodyShape>,
    /// With `count`: every copy byte-identical (the same Message-ID and Subject), as a
    /// mailbox can hold the same message twice.
    pub identical: Option<bool>,
    /// Attachments: the message becomes multipart/mixed, built with mail-builder.
    #[serde(default)]
    pub attachments: Vec<AttachmentSpec>,
    /// An HTML alternative of the text part (multipart/alternative).
    pub html: Option<bool>,
}

/// `attachments = [{ size = "15MB", type = "application/pdf", name = "scan.pdf" }]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentSpec {
    /// Decoded size of the attachment.
    pub size: Scalar,
    /// Its MIME type.
    #[serde(rename = "type")]
    pub content_type: String,
    /// Its file name (any Unicode; encoded as MIME requires).
    pub name: String,
    /// True: an inline part (an image the HTML shows), not an attachment.
    #[serde(default)]
    pub inline: bool,
}

/// `body = "..."`: what a generated message's body holds besides plain CRLF lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyShape {
    /// Plain CRLF lines (the default).
    Plain,
    /// Every body line ends in a bare LF.
    BareLf,
    /// A line holding NUL octets.
    Nul,
    /// A line of unencoded 8-bit octets.
    #[serde(rename = "8bit")]
    EightBit,
    /// A 2,000-character line (over RFC 5321's 1,000).
    LongLine,
    /// Lines starting with dots, among them a lone `.` followed by lines that look like
    /// POP3 replies (a quoted transcript): harmless when the server dot-stuffs, a trap when
    /// it does not.
    DotLines,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// An integer or a string (sizes such as `"10MB"`, durations such as `"30s"`).
pub use popbridge::toml_locate::Scalar;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Close before the reply.
    Close,
    /// Reply with `reply` instead.
    Reply,
    /// Reply with `reply`, then close.
    ReplyClose,
    /// Wait `delay`, then reply normally.
    Delay,
    /// Send `reply` as a garbage line before the normal reply.
    Garbage,
    /// Send `bytes` octets of the reply, then close.
    CloseAfter,
    /// Perform the command, then close without sending its reply (on `data-end`: the
    /// message is accepted, the client never hears so).
    LoseReply,
}

/// `[[pop3.fault]]` and `[[smtp.fault]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// `"greeting"`, `"any"`, a command keyword, or (SMTP) `"data-end"`.
    pub on: String,
    /// What happens.
    pub action: FaultKind,
    /// The line for reply / reply-close / garbage.
    pub reply: Option<String>,
    /// For delay.
    pub delay: Option<Scalar>,
    /// For close-after.
    pub bytes: Option<u64>,
    /// The first matching event that fires (1-based).
    pub nth: Option<u32>,
    /// How many times (0 = always).
    pub times: Option<u32>,
    /// Chance of firing, seeded.
    pub probability: Option<f64>,
}

/// `[smtp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// MaxMessageSize (EHLO SIZE), or `"none"`.
    pub max_message_size: Option<Scalar>,
    /// MaxProtocolErrors; 0 = no limit.
    pub max_protocol_errors: Option<u32>,
    /// Exchange DefaultDomain.
    pub default_domain: Option<String>,
    /// The organisation's receive limit, applied after the 250.
    pub organization_receive_limit: Option<Scalar>,
    /// CHUNKING / BDAT.
    pub chunking: bool,
    /// PIPELINING.
    pub pipelining: bool,
    /// EHLO advertises SIZE (false: the limit is enforced without being announced).
    pub advertise_size: bool,
    /// Senders refused with 501 5.1.7.
    pub reject_senders: Vec<String>,
    /// Accept every recipient (the default when no mailbox is declared).
    pub accept_all: Option<bool>,
    /// Seed of probabilistic faults.
    pub seed: u64,
    /// Local mailboxes.
    pub mailbox: Vec<SmtpMailbox>,
    /// Anti-spam rules.
    pub spam_rule: Vec<SpamRuleSpec>,
    /// Fault rules.
    pub fault: Vec<Fault>,
}

impl Default for Smtp {
    fn default() -> Self {
        Self {
            max_message_size: None,
            max_protocol_errors: None,
            default_domain: None,
            organization_receive_limit: None,
            chunking: true,
            pipelining: true,
            advertise_size: true,
            reject_senders: Vec::new(),
            accept_all: None,
            seed: 0,
            mailbox: Vec::new(),
            spam_rule: Vec::new(),
            fault: Vec::new(),
        }
    }
}

/// `[[smtp.mailbox]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpMailbox {
    /// The SMTP address.
    pub address: String,
    /// Per-mailbox receive limit, applied after the 250.
    pub receive_limit: Option<Scalar>,
    /// Storage quota.
    pub quota: Option<Scalar>,
}

/// `[[smtp.spam_rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpamRuleSpec {
    /// `"subject"`, `"sender"` or a header name.
    pub field: String,
    /// Case-insensitive substring.
    pub contains: String,
}

/// `[run]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Run {
    /// Connector passes, one after the other.
    pub passes: u32,
    /// Simulated crashes of the connector (a table, or an array of them).
    pub crash: Option<Crashes>,
    /// After `passes`, with every fault turned off: up to this many more passes, ending
    /// after the first that changes nothing on either server.
    pub settle: u32,
    /// A deliberately broken popbridge (`"dele-before-ledger"`, `"skip-ledger-check"`).
    pub sabotage: Option<String>,
    /// How long the scenario may run (default 120 s).
    pub timeout: Option<Scalar>,
    /// Real or paused (virtual) time; default paused when the scenario involves time.
    pub clock: Option<Clock>,
    /// Run the scenario once per connector profile named here (`"default"`, `"sbs2008"`),
    /// each run with its own fresh servers; empty: once, with `[connector] profile`.
    pub profiles: Vec<String>,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            passes: 1,
            crash: None,
            settle: 0,
            sabotage: None,
            timeout: None,
            clock: None,
            profiles: Vec::new(),
        }
    }
}

/// `[run] crash`: one crash or several (at most one per pass).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a crash table or an array of crash tables")]
pub enum Crashes {
    /// One.
    One(Crash),
    /// Several.
    Many(Vec<Crash>),
}

impl Crashes {
    /// Every crash, in the order written.
    pub fn all(&self) -> Vec<Crash> {
        match self {
            Self::One(c) => vec![c.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `[run] clock`: the clock a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// Real time, both mocks on loopback TCP.
    #[default]
    Real,
    /// tokio's paused clock on a runtime of its own, both mocks over in-memory streams:
    /// delays and timeouts take no real time.
    Paused,
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Real => "real",
            Self::Paused => "paused",
        })
    }
}

/// `[run] crash = { pass, after_deliveries }` or `{ pass, step, nth }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    /// Which pass (1-based).
    pub pass: u32,
    /// The connector dies right after this many recorded deliveries (the same as
    /// `step = "after-record"`, `nth = after_deliveries`).
    pub after_deliveries: Option<u32>,
    /// The step of a message where it dies (`after-retr`, `after-accept`,
    /// `after-record`, `after-dele`, `during-quit`).
    pub step: Option<String>,
    /// The how-many-th message reaching `step` in that pass (default 1).
    pub nth: Option<u32>,
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Accepted and delivered to every recipient.
    Delivered,
    /// Still on the POP3 server, not delivered.
    Left,
    /// Still on the server, refused in the SMTP session.
    Rejected,
    /// A copy in the quarantine (on the server, or deleted with quarantine_delete).
    Quarantined,
    /// Accepted (250), then bounced by Exchange.
    Ndr,
    /// Gone from the server, never delivered.
    Deleted,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delivered => "delivered",
            Self::Left => "left",
            Self::Rejected => "rejected",
            Self::Quarantined => "quarantined",
            Self::Ndr => "ndr",
            Self::Deleted => "deleted",
        })
    }
}

/// `[expect]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Messages gone from the POP3 server without a good delivery.
    pub lost: u64,
    /// Extra deliveries: a number, or `"explained"` (any number, each one the protocol
    /// made unavoidable: the server accepted a copy whose reply the connector never saw).
    pub duplicates: Duplicates,
    /// Per label (all copies).
    pub labels: BTreeMap<String, Outcome>,
    /// popbridge event counts by kind.
    pub events: BTreeMap<String, u64>,
    /// Per label: envelope recipients it was delivered to.
    pub recipients: BTreeMap<String, Vec<String>>,
    /// Expectations that hold only for popbridge.
    pub popbridge_only: PopbridgeOnly,
    /// `[expect.default]`: what differs under the default profile (with `[run] profiles`).
    pub default: Option<ExpectOverride>,
    /// `[expect.sbs2008]`: what differs under the sbs2008 profile (with `[run] profiles`).
    pub sbs2008: Option<ExpectOverride>,
}

/// `[expect.PROFILE]`: expectations of one profile's run that replace the shared ones
/// (per label, event kind and recipient key; `lost` and `duplicates` when given).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectOverride {
    /// Replaces `[expect] lost`.
    pub lost: Option<u64>,
    /// Replaces `[expect] duplicates`.
    pub duplicates: Option<Duplicates>,
    /// Per label, replacing the shared expectation of that label.
    pub labels: BTreeMap<String, Outcome>,
    /// Per event kind, replacing the shared count.
    pub events: BTreeMap<String, u64>,
    /// Per label, replacing the shared recipients.
    pub recipients: BTreeMap<String, Vec<String>>,
}

impl Expect {
    /// The override table of `profile`, if the file has one.
    pub fn override_for(&self, profile: &str) -> Option<&ExpectOverride> {
        match profile {
            "default" => self.default.as_ref(),
            "sbs2008" => self.sbs2008.as_ref(),
            _ => None,
        }
    }

    /// The shared expectations with `profile`'s overrides applied (the override tables
    /// themselves removed).
    pub fn for_profile(&self, profile: &str) -> Expect {
        let mut out = Expect {
            default: None,
            sbs2008: None,
            ..self.clone()
        };
        if let Some(o) = self.override_for(profile) {
            if let Some(lost) = o.lost {
                out.lost = lost;
            }
            if let Some(d) = o.duplicates {
                out.duplicates = d;
            }
            out.labels.extend(o.labels.clone());
            out.events.extend(o.events.clone());
            out.recipients.extend(o.recipients.clone());
        }
        out
    }
}

/// `[expect] duplicates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// Exactly this many.
    Count(u64),
    /// Any number, each explained.
    Explained,
}

impl Default for Duplicates {
    fn default() -> Self {
        Self::Count(0)
    }
}

impl fmt::Display for Duplicates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Explained => f.write_str("explained"),
        }
    }
}

impl<'de> Deserialize<'de> for Duplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duplicates;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or \"explained\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duplicates, E> {
                u64::try_from(v)
                    .map(Duplicates::Count)
                    .map_err(|_| E::custom("must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duplicates, E> {
                Ok(Duplicates::Count(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duplicates, E> {
                match v {
                    "explained" => Ok(Duplicates::Explained),
                    _ => Err(E::custom("a number or \"explained\"")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `[expect.popbridge_only]`.
#[derive(Debug, Clone, Deserialize, Default, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PopbridgeOnly {
    /// Labels whose expectation holds only for popbridge.
    pub labels: Vec<String>,
    /// `lost` holds only for popbridge.
    pub lost: bool,
    /// `duplicates` holds only for popbridge.
    pub duplicates: bool,
}

// ---------------------------------------------------------------------------------------
// Validated
// ---------------------------------------------------------------------------------------

/// A validated scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file it came from.
    pub path: PathBuf,
    /// The file as written.
    pub file: ScenarioFile,
    /// The POP3 mailboxes (a default `info` mailbox when none is declared).
    pub mailboxes: Vec<Pop3Mailbox>,
    /// Every message copy, per mailbox in maildrop order.
    pub messages: Vec<Planned>,
    /// The mock OAuth2 providers, by mailbox user.
    pub oauth2: BTreeMap<String, OAuth2Plan>,
    /// POP3 fault rules.
    pub pop3_faults: Vec<FaultRule>,
    /// The SMTP server.
    pub smtp: SmtpPlan,
    /// The connector's keys.
    pub connector: ConnectorPlan,
    /// Copy names by expectation key (a label names all its copies).
    pub selectors: BTreeMap<String, Vec<String>>,
    /// The run bound (real time, whatever the clock).
    pub timeout: Duration,
    /// The clock it runs on: `[run] clock`, else paused when it involves time (a delay
    /// fault, a LOGIN-DELAY), else real.
    pub clock: Clock,
    /// Simulated crashes by pass.
    pub crashes: BTreeMap<u32, FailPoint>,
    /// A deliberately broken popbridge.
    pub sabotage: Option<Sabotage>,
    /// The 1-based line of each expectation written in the file, by key path
    /// (`["expect", "labels", "good"]`, `["expect", "lost"]`, `["run", "settle"]`).
    pub lines: BTreeMap<Vec<String>, usize>,
    /// The profile of this run when `[run] profiles` runs the scenario several times.
    pub profile: Option<String>,
    /// With `[network]`: how the connector's links to each server are shaped.
    pub network: Option<NetworkPlan>,
}

/// `[network]`, validated: the shape of each link (the connector's side to the server's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The link to the POP3 server.
    pub pop3: Shape,
    /// The link to the SMTP server.
    pub smtp: Shape,
}

impl Scenario {
    /// The line of the key at `path` (see [`Scenario::lines`]), when the file has it.
    pub fn line_of(&self, path: &[&str]) -> Option<usize> {
        let key: Vec<String> = path.iter().map(|s| (*s).to_string()).collect();
        self.lines.get(&key).copied()
    }

    /// True when the scenario involves time: a `delay` fault on either server, a
    /// `[pop3] login_delay`, or a `[network]` latency or bandwidth.
    pub fn involves_time(&self) -> bool {
        let delay = |f: &Fault| f.action == FaultKind::Delay;
        let slow = |l: &Shape| !l.latency.is_zero() || l.bandwidth.is_some();
        self.network.is_some_and(|n| slow(&n.pop3) || slow(&n.smtp))
            || self.file.pop3.login_delay > 0
            || self.file.pop3.fault.iter().any(delay)
            || self.file.smtp.fault.iter().any(delay)
    }

    /// How long delay faults could hold one session in all: each delay times how often it
    /// fires (an unbounded one counted ten times). Virtual time on the paused clock; on
    /// the real clock the run's own timeout still bounds the wait.
    pub fn delays_in_all(&self) -> Duration {
        self.pop3_faults
            .iter()
            .chain(&self.smtp.faults)
            .filter_map(|f| match f.action {
                FaultAction::Delay(d) => Some(d * f.times.map_or(10, |t| t.max(1))),
                _ => None,
            })
            .sum::<Duration>()
    }

    /// The longest `delay` fault (zero without one).
    pub fn longest_delay(&self) -> Duration {
        self.pop3_faults
            .iter()
            .chain(&self.smtp.faults)
            .filter_map(|f| match f.action {
                FaultAction::Delay(d) => Some(d),
                _ => None,
            })
            .max()
            .unwrap_or_default()
    }
}

/// The SMTP server's settings, resolved.
#[derive(Debug, Clone)]
pub struct SmtpPlan {
    /// Receive-connector limits.
    pub limits: Limits,
    /// EHLO extensions.
    pub extensions: Extensions,
    /// DefaultDomain.
    pub default_domain: Option<String>,
    /// Organisation receive limit.
    pub organization_receive_limit: Option<u64>,
    /// Refused sender patterns.
    pub reject_senders: Vec<String>,
    /// Local mailboxes.
    pub mailboxes: Vec<MailboxSpec>,
    /// Refuse every recipient (accept_all = false without mailboxes).
    pub refuse_all: bool,
    /// Anti-spam rules.
    pub spam_rules: Vec<SpamRule>,
    /// Fault rules.
    pub faults: Vec<FaultRule>,
    /// Fault seed.
    pub seed: u64,
}

/// The `[connector]` keys: everything but the accounts, and per mailbox user the extra keys
/// of its `[[connector.account]]` (with their index in the file).
#[derive(Debug, Clone, Default)]
pub struct ConnectorPlan {
    /// Top-level keys and tables (`profile`, `[limits]`, ...).
    pub top: toml::Table,
    /// Extra account keys by user: (index in `connector.account`, keys without `user`).
    pub accounts: BTreeMap<String, (usize, toml::Table)>,
}

/// Keys the runner fills in.
const RUNNER_TOP_KEYS: [&str; 1] = ["state_dir"];
const RUNNER_TRANSPORT_KEYS: [&str; 2] = ["host", "port"];
const RUNNER_ACCOUNT_KEYS: [&str; 3] = ["name", "host", "port"];

/// Validation context: the file, its text positions.
pub(crate) struct Ctx<'a> {
    pub path: &'a Path,
    pub loc: Locator<'a>,
}

impl Ctx<'_> {
    /// An error at a key path.
    pub(crate) fn err(&self, at: &KeyPath, message: impl Into<String>) -> Error {
        Error::Invalid {
            path: self.path.to_path_buf(),
            line: self.loc.line(&at.0),
            key: (!at.0.is_empty()).then(|| at.to_string()),
            message: message.into(),
        }
    }

    fn size(&self, v: &Scalar, at: &KeyPath) -> Result<u64, Error> {
        let n = match v {
            Scalar::Int(n) => {
                u64::try_from(*n).map_err(|_| self.err(at, "must not be negative"))?
            }
            Scalar::Text(s) => parse_size(s).map_err(|m| self.err(at, m))?,
        };
        Ok(n)
    }

    fn duration(&self, v: &Scalar, at: &KeyPath) -> Result<Duration, Error> {
        match v {
            Scalar::Int(n) => u64::try_from(*n)
                .map(Duration::from_secs)
                .map_err(|_| self.err(at, "must not be negative")),
            Scalar::Text(s) => parse_duration(s).map_err(|m| self.err(at, m)),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> Error {
        let Located {
            line,
            key,
            mut message,
            ..
        } = self.loc.locate(e);
        if let Some(rest) = message.strip_prefix("unknown variant ") {
            message = format!("unknown value {rest}");
        }
        Error::Invalid {
            path: self.path.to_path_buf(),
            line,
            key,
            message: message.replace('`', "\""),
        }
    }
}

/// The connector profiles `[run] profiles` may name.
const PROFILES: [&str; 2] = ["default", "sbs2008"];

/// Reads and validates a scenario file (with `[run] profiles`: its first profile's run;
/// [`load_all`] gives every run).
pub fn load(path: &Path) -> Result<Scenario, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Reads and validates a scenario file: one scenario per `[run] profiles` entry, in the
/// order written (one scenario without that key).
pub fn load_all(path: &Path) -> Result<Vec<Scenario>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_all(&text, path)
}

/// Validates scenario text; `path` names it in errors and anchors relative fixture paths.
/// With `[run] profiles`, the first profile's run.
pub fn parse(text: &str, path: &Path) -> Result<Scenario, Error> {
    let mut all = parse_all(text, path)?;
    // parse_all never returns an empty list.
    Ok(all.remove(0))
}

/// Validates scenario text: one scenario per `[run] profiles` entry (else one).
pub fn parse_all(text: &str, path: &Path) -> Result<Vec<Scenario>, Error> {
    let cx = Ctx {
        path,
        loc: Locator::new(text),
    };
    let file: ScenarioFile = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
    let run_at = KeyPath::root().key("run").key("profiles");
    let expect_at = KeyPath::root().key("expect");
    let profiles = file.run.profiles.clone();
    if profiles.is_empty() {
        for name in PROFILES {
            if file.expect.override_for(name).is_some() {
                return Err(cx.err(
                    &expect_at.key(name),
                    "per-profile expectations need [run] profiles naming this profile",
                ));
            }
        }
        return Ok(vec![resolve(&cx, file)?]);
    }
    let mut seen = BTreeSet::new();
    for (i, p) in profiles.iter().enumerate() {
        if !PROFILES.contains(&p.as_str()) {
            return Err(cx.err(
                &run_at.index(i),
                format!("unknown profile {p:?}, expected \"default\" or \"sbs2008\""),
            ));
        }
        if !seen.insert(p.clone()) {
            return Err(cx.err(&run_at.index(i), format!("profile {p:?} named twice")));
        }
    }
    if file.connector.contains_key("profile") {
        return Err(cx.err(
            &KeyPath::root().key("connector").key("profile"),
            "not with [run] profiles (each run sets its own profile)",
        ));
    }
    for name in PROFILES {
        if file.expect.override_for(name).is_some() && !seen.contains(name) {
            return Err(cx.err(
                &expect_at.key(name),
                format!("[run] profiles does not name {name:?}"),
            ));
        }
    }
    let mut out = Vec::with_capacity(profiles.len());
    for p in profiles {
        let mut f = file.clone();
        f.connector
            .insert("profile".into(), toml::Value::String(p.clone()));
        let mut s = resolve(&cx, f)?;
        s.file.expect = s.file.expect.for_profile(&p);
        s.profile = Some(p);
        out.push(s);
    }
    Ok(out)
}

fn resolve(cx: &Ctx<'_>, file: ScenarioFile) -> Result<Scenario, Error> {
    let root = KeyPath::root();
    let base = cx.path.parent().map(Path::to_path_buf).unwrap_or_default();

    // POP3 side.
    let pop3_path = root.key("pop3");
    let mailboxes = if file.pop3.mailbox.is_empty() {
        vec![Pop3Mailbox::default()]
    } else {
        file.pop3.mailbox.clone()
    };
    let mut users = BTreeSet::new();
    let mut oauth2 = BTreeMap::new();
    for (i, mb) in mailboxes.iter().enumerate() {
        let at = pop3_path.key("mailbox").index(i);
        if mb.user.trim().is_empty() || mb.user.chars().any(|c| c.is_whitespace()) {
            return Err(cx.err(
                &at.key("user"),
                "must be a non-empty login name without spaces",
            ));
        }
        if !users.insert(mb.user.clone()) {
            return Err(cx.err(&at.key("user"), format!("duplicate mailbox {:?}", mb.user)));
        }
        if mb.auth.is_empty() {
            return Err(cx.err(&at.key("auth"), "must allow at least one method"));
        }
        if let Some(o) = &mb.oauth2 {
            let oat = at.key("oauth2");
            if !mb.auth.contains(&AuthMethod::Xoauth2) {
                return Err(cx.err(
                    &at.key("auth"),
                    "must allow \"xoauth2\" when the mailbox has an oauth2 provider",
                ));
            }
            for (k, v) in [
                ("client_id", &o.client_id),
                ("refresh_token", &o.refresh_token),
            ] {
                if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(cx.err(&oat.key(k), "must be non-empty, without spaces"));
                }
            }
            if o.client_secret
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(cx.err(&oat.key("client_secret"), "must not hold spaces"));
            }
            let lifetime = match &o.lifetime {
                Some(v) => {
                    let d = cx.duration(v, &oat.key("lifetime"))?;
                    if d.as_secs() == 0 {
                        return Err(cx.err(&oat.key("lifetime"), "must be at least 1s"));
                    }
                    d
                }
                None => Duration::from_secs(3600),
            };
            let mut provider = mock_pop3::oauth::ProviderConfig::new(
                mb.user.clone(),
                o.client_id.clone(),
                o.refresh_token.clone(),
            );
            provider.client_secret = (!o.client_secret.is_empty()).then(|| o.client_secret.clone());
            provider.lifetime = lifetime;
            provider.rotate = o.rotate;
            provider.revoked = o.revoked;
            provider.expire_first_token = o.expire_first_token;
            provider.token_prefix = format!("poplab-access-{i}");
            oauth2.insert(
                mb.user.clone(),
                OAuth2Plan {
                    provider,
                    scope: o.scope.clone(),
                },
            );
        }
    }
    let messages = generate::plan(cx, &mailboxes, &base)?;
    let pop3_faults = file
        .pop3
        .fault
        .iter()
        .enumerate()
        .map(|(i, f)| fault_rule(cx, f, &pop3_path.key("fault").index(i), false))
        .collect::<Result<Vec<_>, _>>()?;

    let smtp = smtp_plan(cx, &file.smtp)?;
    let connector = connector_plan(cx, &file.connector, &mailboxes)?;

    // Run.
    let run_path = root.key("run");
    if !(1..=MAX_PASSES).contains(&file.run.passes) {
        return Err(cx.err(
            &run_path.key("passes"),
            format!("must be between 1 and {MAX_PASSES}"),
        ));
    }
    let mut crashes = BTreeMap::new();
    for (i, c) in file
        .run
        .crash
        .as_ref()
        .map(Crashes::all)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let at = match &file.run.crash {
            Some(Crashes::Many(_)) => run_path.key("crash").index(i),
            _ => run_path.key("crash"),
        };
        if c.pass < 1 || c.pass > file.run.passes {
            return Err(cx.err(
                &at,
                format!("pass must be between 1 and passes ({})", file.run.passes),
            ));
        }
        let point = match (c.after_deliveries, &c.step) {
            (Some(_), Some(_)) => {
                return Err(cx.err(&at, "give either after_deliveries or step, not both"))
            }
            (Some(0), None) => return Err(cx.err(&at, "after_deliveries must be at least 1")),
            (Some(n), None) => FailPoint {
                step: Step::AfterRecord,
                nth: n,
            },
            (None, Some(step)) => FailPoint {
                step: step.parse().map_err(|e: String| cx.err(&at, e))?,
                nth: match c.nth {
                    Some(0) => return Err(cx.err(&at, "nth must be at least 1 (it is 1-based)")),
                    Some(n) => n,
                    None => 1,
                },
            },
            (None, None) => return Err(cx.err(&at, "needs step (or after_deliveries)")),
        };
        if crashes.insert(c.pass, point).is_some() {
            return Err(cx.err(&at, format!("a second crash in pass {}", c.pass)));
        }
    }
    if file.run.settle > MAX_PASSES {
        return Err(cx.err(&run_path.key("settle"), format!("at most {MAX_PASSES}")));
    }
    let sabotage = match &file.run.sabotage {
        Some(name) => Some(
            name.parse::<Sabotage>()
                .map_err(|e| cx.err(&run_path.key("sabotage"), e))?,
        ),
        None => None,
    };
    let timeout = match &file.run.timeout {
        Some(v) => {
            let at = run_path.key("timeout");
            let d = cx.duration(v, &at)?;
            if d.is_zero() {
                return Err(cx.err(&at, "must be greater than 0"));
            }
            d
        }
        None => DEFAULT_TIMEOUT,
    };
    let network = match &file.network {
        Some(n) => Some(network_plan(cx, n)?),
        None => None,
    };

    // Expectations.
    let selectors = selectors(&messages);
    let expect_path = root.key("expect");
    for key in file.expect.labels.keys() {
        check_selector(cx, &selectors, key, &expect_path.key("labels").key(key))?;
    }
    for name in PROFILES {
        let Some(o) = file.expect.override_for(name) else {
            continue;
        };
        let at = expect_path.key(name);
        for key in o.labels.keys() {
            check_selector(cx, &selectors, key, &at.key("labels").key(key))?;
        }
        for (key, rcpts) in &o.recipients {
            check_selector(cx, &selectors, key, &at.key("recipients").key(key))?;
            if rcpts.is_empty() {
                return Err(cx.err(
                    &at.key("recipients").key(key),
                    "name at least one recipient",
                ));
            }
        }
        for key in o.events.keys() {
            if !known_event_kinds().iter().any(|k| k == key) {
                return Err(cx.err(
                    &at.key("events").key(key),
                    format!("unknown event kind {key:?}"),
                ));
            }
        }
    }
    for (key, rcpts) in &file.expect.recipients {
        let at = expect_path.key("recipients").key(key);
        check_selector(cx, &selectors, key, &at)?;
        if rcpts.is_empty() {
            return Err(cx.err(&at, "name at least one recipient"));
        }
    }
    for (i, key) in file.expect.popbridge_only.labels.iter().enumerate() {
        let at = expect_path.key("popbridge_only").key("labels").index(i);
        check_selector(cx, &selectors, key, &at)?;
    }
    let kinds = known_event_kinds();
    for key in file.expect.events.keys() {
        if !kinds.iter().any(|k| k == key) {
            return Err(cx.err(
                &expect_path.key("events").key(key),
                format!("unknown event kind {key:?}; known: {}", kinds.join(", ")),
            ));
        }
    }

    let lines = expectation_lines(cx, &file);
    let scenario = Scenario {
        path: cx.path.to_path_buf(),
        lines,
        file,
        mailboxes,
        messages,
        oauth2,
        pop3_faults,
        smtp,
        connector,
        selectors,
        timeout,
        clock: Clock::Real,
        crashes,
        sabotage,
        profile: None,
        network,
    };
    let scenario = Scenario {
        clock: scenario
            .file
            .run
            .clock
            .unwrap_or(if scenario.involves_time() {
                Clock::Paused
            } else {
                Clock::Real
            }),
        ..scenario
    };
    // The connector's keys are checked by popbridge's own parser, with placeholder
    // addresses, so a bad key is reported before anything starts.
    crate::world::connector_config(&scenario, &crate::world::Endpoints::placeholder())
        .map_err(|e| map_config_error(cx, &scenario, &e))?;
    Ok(scenario)
}

/// The longest `[network]` latency accepted.
const MAX_LATENCY: Duration = Duration::from_secs(60);

/// `[network]` checked: latencies up to [`MAX_LATENCY`], a bandwidth and cuts above 0.
fn network_plan(cx: &Ctx<'_>, n: &Network) -> Result<NetworkPlan, Error> {
    let at = KeyPath::root().key("network");
    let latency = |v: &Option<Scalar>, key: &str| -> Result<Duration, Error> {
        let Some(v) = v else {
            return Ok(Duration::ZERO);
        };
        let d = cx.duration(v, &at.key(key))?;
        if d > MAX_LATENCY {
            return Err(cx.err(&at.key(key), format!("at most {}s", MAX_LATENCY.as_secs())));
        }
        Ok(d)
    };
    let cut = |v: &Option<Scalar>, key: &str| -> Result<Option<u64>, Error> {
        let Some(v) = v else {
            return Ok(None);
        };
        match cx.size(v, &at.key(key))? {
            0 => Err(cx.err(&at.key(key), "must be at least 1 byte")),
            n => Ok(Some(n)),
        }
    };
    let bandwidth = match &n.bandwidth {
        None => None,
        Some(v) => {
            let key = at.key("bandwidth");
            let rate = match v {
                Scalar::Int(_) => cx.size(v, &key)?,
                Scalar::Text(t) => {
                    let Some(size) = t.trim().strip_suffix("/s") else {
                        return Err(cx.err(
                            &key,
                            format!(
                                "invalid bandwidth {t:?}: expected bytes per second, a number \
                                 or a size per second such as \"10MB/s\""
                            ),
                        ));
                    };
                    parse_size(size).map_err(|m| cx.err(&key, m))?
                }
            };
            if rate == 0 {
                return Err(cx.err(&key, "must be at least 1 byte per second"));
            }
            Some(rate)
        }
    };
    Ok(NetworkPlan {
        pop3: Shape {
            latency: latency(&n.pop3_latency, "pop3_latency")?,
            bandwidth,
            cut_after: cut(&n.pop3_cut_after, "pop3_cut_after")?,
        },
        smtp: Shape {
            latency: latency(&n.smtp_latency, "smtp_latency")?,
            bandwidth,
            cut_after: cut(&n.smtp_cut_after, "smtp_cut_after")?,
        },
    })
}

/// Where each expectation is written: the lines of `[expect]`'s keys (each label,
/// recipient list and event kind; `lost`, `duplicates`) and of `[run] settle`.
fn expectation_lines(cx: &Ctx<'_>, file: &ScenarioFile) -> BTreeMap<Vec<String>, usize> {
    let mut paths: Vec<Vec<String>> = vec![
        vec!["expect".into(), "lost".into()],
        vec!["expect".into(), "duplicates".into()],
        vec!["run".into(), "settle".into()],
    ];
    for (table, keys) in [
        ("labels", file.expect.labels.keys().collect::<Vec<_>>()),
        ("recipients", file.expect.recipients.keys().collect()),
        ("events", file.expect.events.keys().collect()),
    ] {
        paths.extend(
            keys.into_iter()
                .map(|k| vec!["expect".into(), table.into(), k.clone()]),
        );
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let at = p.iter().fold(KeyPath::root(), |at, k| at.key(k));
            // Only a key written in the file has a line of its own (a default has none).
            if !cx.loc.has(&at.0) {
                return None;
            }
            cx.loc.line(&at.0).map(|line| (p, line))
        })
        .collect()
}

fn check_selector(
    cx: &Ctx<'_>,
    selectors: &BTreeMap<String, Vec<String>>,
    key: &str,
    at: &KeyPath,
) -> Result<(), Error> {
    if selectors.contains_key(key) {
        Ok(())
    } else {
        Err(cx.err(at, format!("no message is labelled {key:?}")))
    }
}

/// Expectation keys: each label (all its copies) and each copy name.
fn selectors(messages: &[Planned]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in messages {
        out.entry(m.label.clone()).or_default().push(m.name.clone());
        if m.name != m.label {
            out.entry(m.name.clone()).or_default().push(m.name.clone());
        }
    }
    out
}

fn fault_rule(cx: &Ctx<'_>, f: &Fault, at: &KeyPath, smtp: bool) -> Result<FaultRule, Error> {
    let on = f.on.trim();
    let hook = match on.to_ascii_lowercase().as_str() {
        "greeting" => Hook::Greeting,
        "any" => Hook::AnyCommand,
        "data-end" if smtp => Hook::EndOfData,
        "data-end" => {
            return Err(cx.err(&at.key("on"), "\"data-end\" is an SMTP hook only"));
        }
        _ if !on.is_empty() && on.chars().all(|c| c.is_ascii_alphanumeric()) => Hook::command(on),
        _ => {
            return Err(cx.err(
                &at.key("on"),
                format!(
                    "unknown hook {on:?}: use \"greeting\", \"any\", a command keyword{}",
                    if smtp { " or \"data-end\"" } else { "" }
                ),
            ))
        }
    };
    let needs = |key: &str, present: bool, what: FaultKind| -> Result<(), Error> {
        let used = matches!(
            (key, what),
            (
                "reply",
                FaultKind::Reply | FaultKind::ReplyClose | FaultKind::Garbage
            ) | ("delay", FaultKind::Delay)
                | ("bytes", FaultKind::CloseAfter)
        );
        match (used, present) {
            (true, false) => Err(cx.err(
                &at.key("action"),
                format!("this action needs `{key}`").replace('`', "\""),
            )),
            (false, true) => Err(cx.err(
                &at.key(key),
                "not used by this action (see FORMAT.md, [[pop3.fault]])",
            )),
            _ => Ok(()),
        }
    };
    needs("reply", f.reply.is_some(), f.action)?;
    needs("delay", f.delay.is_some(), f.action)?;
    needs("bytes", f.bytes.is_some(), f.action)?;
    let action = match f.action {
        FaultKind::Close => FaultAction::CloseBeforeReply,
        FaultKind::Reply => FaultAction::Reply(f.reply.clone().unwrap_or_default()),
        FaultKind::ReplyClose => FaultAction::ReplyAndClose(f.reply.clone().unwrap_or_default()),
        FaultKind::Garbage => {
            FaultAction::GarbageLine(f.reply.clone().unwrap_or_default().into_bytes())
        }
        FaultKind::Delay => {
            let d = f
                .delay
                .as_ref()
                .map_or(Ok(Duration::ZERO), |d| cx.duration(d, &at.key("delay")))?;
            FaultAction::Delay(d)
        }
        FaultKind::CloseAfter => FaultAction::CloseAfterBytes(f.bytes.unwrap_or(0) as usize),
        FaultKind::LoseReply => FaultAction::LoseReply,
    };
    let mut rule = FaultRule::new(hook, action);
    if let Some(n) = f.nth {
        if n < 1 {
            return Err(cx.err(&at.key("nth"), "must be at least 1 (it is 1-based)"));
        }
        rule = rule.nth(n);
    }
    rule = match f.times {
        Some(0) => rule.always(),
        Some(t) => rule.times(t),
        None => rule,
    };
    if let Some(p) = f.probability {
        if !(0.0..=1.0).contains(&p) {
            return Err(cx.err(&at.key("probability"), "must be between 0 and 1"));
        }
        rule = rule.probability(p);
    }
    Ok(rule)
}

fn smtp_plan(cx: &Ctx<'_>, s: &Smtp) -> Result<SmtpPlan, Error> {
    let at = KeyPath::root().key("smtp");
    let defaults = Limits::default();
    let max_message_size = match &s.max_message_size {
        Some(Scalar::Text(t)) if t.trim().eq_ignore_ascii_case("none") => None,
        Some(v) => {
            let n = cx.size(v, &at.key("max_message_size"))?;
            if n == 0 {
                return Err(cx.err(
                    &at.key("max_message_size"),
                    "must be greater than 0 (or \"none\")",
                ));
            }
            Some(n)
        }
        None => defaults.max_message_size,
    };
    let max_protocol_errors = match s.max_protocol_errors {
        Some(0) => None,
        Some(n) => Some(n),
        None => defaults.max_protocol_errors,
    };
    let organization_receive_limit = match &s.organization_receive_limit {
        Some(v) => Some(cx.size(v, &at.key("organization_receive_limit"))?),
        None => None,
    };
    if let Some(d) = &s.default_domain {
        if d.trim().is_empty() || d.contains(['@', ' ', '<', '>']) {
            return Err(cx.err(&at.key("default_domain"), "must be a domain name"));
        }
    }
    for (i, p) in s.reject_senders.iter().enumerate() {
        if p.trim().is_empty() {
            return Err(cx.err(&at.key("reject_senders").index(i), "must not be empty"));
        }
    }
    let mut mailboxes = Vec::new();
    for (i, m) in s.mailbox.iter().enumerate() {
        let mat = at.key("mailbox").index(i);
        if !m.address.contains('@') || m.address.contains(char::is_whitespace) {
            return Err(cx.err(&mat.key("address"), "must be an address local@domain"));
        }
        let mut spec = MailboxSpec::new(m.address.clone());
        if let Some(v) = &m.receive_limit {
            spec = spec.receive_limit(cx.size(v, &mat.key("receive_limit"))?);
        }
        if let Some(v) = &m.quota {
            spec = spec.quota(cx.size(v, &mat.key("quota"))?);
        }
        mailboxes.push(spec);
    }
    let refuse_all = match s.accept_all {
        Some(true) if !mailboxes.is_empty() => {
            return Err(cx.err(
                &at.key("accept_all"),
                "cannot be true with [[smtp.mailbox]]: like Exchange, the server refuses \
                 unknown recipients once mailboxes are declared",
            ))
        }
        Some(false) => mailboxes.is_empty(),
        _ => false,
    };
    let mut spam_rules = Vec::new();
    for (i, r) in s.spam_rule.iter().enumerate() {
        let rat = at.key("spam_rule").index(i);
        let field = match r.field.trim().to_ascii_lowercase().as_str() {
            "subject" => SpamField::Subject,
            "sender" => SpamField::Sender,
            "" => return Err(cx.err(&rat.key("field"), "must not be empty")),
            _ if r.field.chars().all(|c| c.is_ascii_graphic() && c != ':') => {
                SpamField::Header(r.field.trim().to_string())
            }
            _ => {
                return Err(cx.err(
                    &rat.key("field"),
                    "use \"subject\", \"sender\" or a header name",
                ))
            }
        };
        if r.contains.is_empty() {
            return Err(cx.err(&rat.key("contains"), "must not be empty"));
        }
        spam_rules.push(SpamRule {
            field,
            contains: r.contains.clone(),
        });
    }
    let faults = s
        .fault
        .iter()
        .enumerate()
        .map(|(i, f)| fault_rule(cx, f, &at.key("fault").index(i), true))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SmtpPlan {
        limits: Limits {
            max_message_size,
            max_protocol_errors,
            ..defaults
        },
        extensions: Extensions {
            chunking: s.chunking,
            pipelining: s.pipelining,
            size: if s.advertise_size {
                mock_smtp::SizeAdvert::Value
            } else {
                mock_smtp::SizeAdvert::Absent
            },
            ..Extensions::default()
        },
        default_domain: s.default_domain.clone(),
        organization_receive_limit,
        reject_senders: s.reject_senders.clone(),
        mailboxes,
        refuse_all,
        spam_rules,
        faults,
        seed: s.seed,
    })
}

fn connector_plan(
    cx: &Ctx<'_>,
    table: &toml::Table,
    mailboxes: &[Pop3Mailbox],
) -> Result<ConnectorPlan, Error> {
    let at = KeyPath::root().key("connector");
    let mut top = table.clone();
    for k in RUNNER_TOP_KEYS {
        if top.contains_key(k) {
            return Err(cx.err(
                &at.key(k),
                "is filled in by poplab (a temporary folder per run)",
            ));
        }
    }
    if let Some(t) = top.get("transport") {
        let Some(t) = t.as_table() else {
            return Err(cx.err(&at.key("transport"), "must be a table"));
        };
        for k in RUNNER_TRANSPORT_KEYS {
            if t.contains_key(k) {
                return Err(cx.err(
                    &at.key("transport").key(k),
                    "is filled in by poplab (the mock SMTP server's address)",
                ));
            }
        }
    }
    let mut accounts = BTreeMap::new();
    if let Some(list) = top.remove("account") {
        let Some(list) = list.as_array() else {
            return Err(cx.err(
                &at.key("account"),
                "write accounts as [[connector.account]] tables",
            ));
        };
        for (i, item) in list.iter().enumerate() {
            let aat = at.key("account").index(i);
            let Some(extra) = item.as_table() else {
                return Err(cx.err(&aat, "must be a table"));
            };
            let mut extra = extra.clone();
            let user = match extra.remove("user") {
                Some(toml::Value::String(u)) => u,
                Some(_) => return Err(cx.err(&aat.key("user"), "must be a string")),
                None => {
                    return Err(cx.err(
                        &aat,
                        "missing required key \"user\" (which [[pop3.mailbox]] it is for)",
                    ))
                }
            };
            if !mailboxes.iter().any(|m| m.user == user) {
                return Err(cx.err(
                    &aat.key("user"),
                    format!("no [[pop3.mailbox]] has user {user:?}"),
                ));
            }
            for k in RUNNER_ACCOUNT_KEYS {
                if extra.contains_key(k) {
                    return Err(cx.err(
                        &aat.key(k),
                        "is filled in by poplab (the mock POP3 server and the mailbox)",
                    ));
                }
            }
            if accounts.insert(user.clone(), (i, extra)).is_some() {
                return Err(cx.err(
                    &aat.key("user"),
                    format!("a second [[connector.account]] for {user:?}"),
                ));
            }
        }
    }
    Ok(ConnectorPlan { top, accounts })
}

/// Maps an error of popbridge's configuration parser (about the text poplab generated) to
/// the scenario key it comes from.
fn map_config_error(
    cx: &Ctx<'_>,
    scenario: &Scenario,
    e: &popbridge::config::ConfigError,
) -> Error {
    let message = match e {
        popbridge::config::ConfigError::Invalid { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let connector = KeyPath::root().key("connector");
    let Some(key) = e.key() else {
        return cx.err(&connector, message);
    };
    let segs = parse_key(key);
    // account[i].rest → the [[connector.account]] of that mailbox, or the mailbox itself.
    if let (Some(Seg::Key(first)), Some(Seg::Index(i))) = (segs.first(), segs.get(1)) {
        if first == "account" {
            let rest = &segs[2..];
            let user = scenario.mailboxes.get(*i).map(|m| m.user.clone());
            if let Some((j, extra)) = user
                .as_ref()
                .and_then(|u| scenario.connector.accounts.get(u))
            {
                if let Some(Seg::Key(k)) = rest.first() {
                    if extra.contains_key(k) {
                        let mut at = connector.key("account").index(*j);
                        at.0.extend(rest.iter().cloned());
                        return cx.err(&at, message);
                    }
                }
            }
            let mut at = KeyPath::root().key("pop3").key("mailbox").index(*i);
            if scenario.file.pop3.mailbox.is_empty() {
                at = KeyPath::root().key("pop3");
            }
            return cx.err(
                &at,
                format!(
                    "in the account poplab made for this mailbox: {}: {message}",
                    render(rest)
                ),
            );
        }
    }
    let mut at = connector;
    at.0.extend(segs);
    cx.err(&at, message)
}

/// Splits a rendered key path (`account[0].catch_all."x.y"`) into segments.
fn parse_key(key: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = key.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => {
                if !cur.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut cur)));
                }
            }
            '[' if !quoted => {
                if !cur.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut cur)));
                }
                let mut n = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    n.push(d);
                }
                if let Ok(i) = n.parse() {
                    out.push(Seg::Index(i));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(Seg::Key(cur));
    }
    out
}

/// Every event kind popbridge emits (`"message.delivered"`, ...).
pub fn known_event_kinds() -> Vec<String> {
    use popbridge::events::Event;
    let s = String::new;
    let all = [
        Event::PassStarted { account: s() },
        Event::Listed {
            account: s(),
            messages: 0,
            octets: 0,
        },
        Event::Delivered {
            account: s(),
            uid: s(),
            size: 0,
            sender: s(),
            reply: s(),
        },
        Event::AlreadyDelivered {
            account: s(),
            uid: s(),
        },
        Event::SkippedOversize {
            account: s(),
            uid: s(),
            size: 0,
            limit: 0,
            named: Default::default(),
        },
        Event::Rejected {
            account: s(),
            uid: s(),
            reply: s(),
            failures: 0,
            named: Default::default(),
        },
        Event::Deferred {
            account: s(),
            uid: s(),
            reason: s(),
            named: Default::default(),
        },
        Event::SizeMismatch {
            account: s(),
            uid: s(),
            listed: 0,
            received: 0,
            overran: false,
            failures: 0,
        },
        Event::PossibleDuplicate {
            account: s(),
            uid: s(),
            message_id: None,
        },
        Event::Quarantined {
            account: s(),
            uid: s(),
            path: s(),
            deleted: false,
            named: Default::default(),
        },
        Event::SenderRepaired {
            account: s(),
            uid: s(),
            original: s(),
            used: s(),
            reason: s(),
        },
        Event::Reconnected {
            account: s(),
            reason: s(),
        },
        Event::AuthFailed {
            account: s(),
            reply: s(),
        },
        Event::TokenRefreshed {
            account: s(),
            reason: s(),
            expires_in: None,
            rotated: false,
        },
        Event::AccountFailed {
            account: s(),
            error: s(),
        },
        Event::PassInterrupted {
            account: s(),
            reason: s(),
        },
        Event::PassFinished {
            account: s(),
            delivered: 0,
            deleted: 0,
            remaining: 0,
            rejected: 0,
            deferred: 0,
            skipped: 0,
            quarantined: 0,
        },
        Event::StateTightened {
            path: String::new(),
            was: String::new(),
        },
        Event::QuarantineReleased {
            account: s(),
            uid: s(),
        },
        Event::QuarantineRedelivered {
            account: s(),
            uid: s(),
        },
        Event::QuarantineDeleted {
            account: s(),
            uid: s(),
            server: false,
        },
    ];
    // A new variant must be added above: this match stops compiling until it is.
    for e in &all {
        match e {
            Event::PassStarted { .. }
            | Event::Listed { .. }
            | Event::Delivered { .. }
            | Event::AlreadyDelivered { .. }
            | Event::SkippedOversize { .. }
            | Event::Rejected { .. }
            | Event::Deferred { .. }
            | Event::SizeMismatch { .. }
            | Event::PossibleDuplicate { .. }
            | Event::Quarantined { .. }
            | Event::SenderRepaired { .. }
            | Event::Reconnected { .. }
            | Event::AuthFailed { .. }
            | Event::TokenRefreshed { .. }
            | Event::AccountFailed { .. }
            | Event::PassInterrupted { .. }
            | Event::PassFinished { .. }
            | Event::StateTightened { .. }
            | Event::QuarantineReleased { .. }
            | Event::QuarantineRedelivered { .. }
            | Event::QuarantineDeleted { .. } => {}
        }
    }
    all.iter().map(event_kind).collect()
}

/// An event's `kind` (`"message.delivered"`).
pub fn event_kind(e: &popbridge::events::Event) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Error {
        match parse(text, Path::new("cases/x.toml")) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    const TWO_PROFILES: &str = "[[pop3.mailbox]]\n[[pop3.mailbox.message]]\nlabel = \"a\"\n\
        [[pop3.mailbox.message]]\nlabel = \"b\"\n[run]\nprofiles = [\"default\", \"sbs2008\"]\n\
        [expect]\nlost = 0\n[expect.labels]\na = \"delivered\"\nb = \"delivered\"\n\
        [expect.sbs2008]\nlost = 1\n[expect.sbs2008.labels]\nb = \"left\"\n";

    #[test]
    fn profiles_give_one_run_each_with_their_own_expectations() {
        let all = parse_all(TWO_PROFILES, Path::new("cases/x.toml")).unwrap();
        let profiles: Vec<_> = all.iter().map(|s| s.profile.clone()).collect();
        assert_eq!(profiles, [Some("default".into()), Some("sbs2008".into())]);
        let (d, sbs) = (&all[0].file.expect, &all[1].file.expect);
        assert_eq!((d.lost, d.labels["b"]), (0, Outcome::Delivered));
        assert_eq!((sbs.lost, sbs.labels["b"]), (1, Outcome::Left));
        assert_eq!(
            sbs.labels["a"],
            Outcome::Delivered,
            "shared expectation kept"
        );
        assert!(sbs.sbs2008.is_none(), "override tables are consumed");
        for s in &all {
            let p = s.connector.top.get("profile").and_then(|v| v.as_str());
            assert_eq!(p, s.profile.as_deref());
        }
        // Without the key: one run, no profile named.
        let one = parse_all("", Path::new("cases/x.toml")).unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].profile.is_none());
    }

    #[test]
    fn bad_attachments_are_errors_with_their_key() {
        let m = "[[pop3.mailbox]]\n[[pop3.mailbox.message]]\nlabel = \"a\"\n";
        let e = err(&format!(
            "{m}size = \"1MB\"\nattachments = [{{ size = \"1MB\", type = \"application/pdf\", name = \"a.pdf\" }}]\n"
        ));
        assert_eq!(e.key(), Some("pop3.mailbox[0].message[0].size"), "{e}");
        let e = err(&format!(
            "{m}attachments = [{{ size = \"1MB\", type = \"pdf\", name = \"a.pdf\" }}]\n"
        ));
        assert_eq!(
            e.key(),
            Some("pop3.mailbox[0].message[0].attachments[0].type"),
            "{e}"
        );
        let e = err(&format!(
            "{m}attachments = [{{ size = \"-1\", type = \"application/pdf\", name = \"a.pdf\" }}]\n"
        ));
        assert_eq!(
            e.key(),
            Some("pop3.mailbox[0].message[0].attachments[0].size"),
            "{e}"
        );
        let ok = format!(
            "{m}html = true\nattachments = [{{ size = \"2KB\", type = \"image/png\", name = \"i.png\", inline = true }}]\n"
        );
        let s = parse(&ok, Path::new("cases/x.toml")).unwrap();
        assert_eq!(s.messages[0].attachment_octets, 2048);
    }

    #[test]
    fn bad_profile_lists_are_errors_with_their_key() {
        let e = err("[run]\nprofiles = [\"sbs2003\"]\n");
        assert_eq!(e.key(), Some("run.profiles[0]"), "{e}");
        let e = err("[run]\nprofiles = [\"default\", \"default\"]\n");
        assert!(e.to_string().contains("named twice"), "{e}");
        let e = err("[connector]\nprofile = \"sbs2008\"\n[run]\nprofiles = [\"default\"]\n");
        assert_eq!(e.key(), Some("connector.profile"), "{e}");
        let e = err("[expect.sbs2008]\nlost = 1\n");
        assert_eq!(e.key(), Some("expect.sbs2008"), "{e}");
        let e = err("[run]\nprofiles = [\"default\"]\n[expect.sbs2008]\nlost = 1\n");
        assert_eq!(e.key(), Some("expect.sbs2008"), "{e}");
        let bad_label = TWO_PROFILES.replace("b = \"left\"", "zz = \"left\"");
        let e = err(&bad_label);
        assert_eq!(e.key(), Some("expect.sbs2008.labels.zz"), "{e}");
    }

    #[test]
    fn an_empty_file_is_one_empty_info_mailbox() {
        let s = parse("", Path::new("x.toml")).unwrap();
        assert_eq!(s.mailboxes.len(), 1);
        assert_eq!(s.mailboxes[0].user, "info");
        assert!(s.messages.is_empty());
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let e = err("description = \"x\"\n\n[[pop3.mailbox]]\nuser = \"info\"\n\n[[pop3.mailbox.message]]\nlabel = \"a\"\nsizze = \"1KB\"\n");
        assert_eq!(e.line(), Some(8), "{e}");
        assert_eq!(e.key(), Some("pop3.mailbox[0].message[0].sizze"), "{e}");
        assert!(e.to_string().starts_with("cases/x.toml:8: "), "{e}");
        assert!(e.to_string().contains("unknown key"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = err("[[pop3.mailbox]]\n[[pop3.mailbox.message]]\nlabel = \"a\"\nsize = \"12XB\"\n");
        assert_eq!(e.line(), Some(4), "{e}");
        assert_eq!(e.key(), Some("pop3.mailbox[0].message[0].size"), "{e}");
        let e = err("[expect.labels]\nnope = \"delivered\"\n");
        assert_eq!(e.line(), Some(2), "{e}");
        assert_eq!(e.key(), Some("expect.labels.nope"), "{e}");
        let e = err("[[pop3.mailbox]]\n[[pop3.mailbox.message]]\nlabel = \"a\"\n[expect.labels]\na = \"gone\"\n");
        assert_eq!(e.line(), Some(5), "{e}");
        assert_eq!(e.key(), Some("expect.labels.a"), "{e}");
        let e = err("[expect.events]\n\"message.delivred\" = 1\n");
        assert_eq!(e.line(), Some(2), "{e}");
        let e = err("[run]\npasses = 0\n");
        assert_eq!((e.line(), e.key()), (Some(2), Some("run.passes")), "{e}");
        let e = err("[[pop3.mailbox]]\n[[pop3.mailbox.message]]\nfrom = \"a@b\"\n");
        assert_eq!(e.key(), Some("pop3.mailbox[0].message[0].label"), "{e}");
        assert!(e.to_string().contains("missing required key"), "{e}");
    }

    #[test]
    fn connector_keys_are_checked_by_popbridge_and_mapped_back() {
        let e = err("[connector]\nprofile = \"default\"\n[connector.limits]\npoison_after = 0\n");
        assert_eq!(e.key(), Some("connector.limits.poison_after"), "{e}");
        assert_eq!(e.line(), Some(4), "{e}");
        let e = err("[connector.limits]\npoison_aftr = 1\n");
        assert_eq!(e.key(), Some("connector.limits.poison_aftr"), "{e}");
        assert_eq!(e.line(), Some(2), "{e}");
        let e = err("[[pop3.mailbox]]\nuser = \"info\"\n[[connector.account]]\nuser = \"info\"\ndeliver_to = \"not an address\"\n");
        assert_eq!(e.key(), Some("connector.account[0].deliver_to"), "{e}");
        assert_eq!(e.line(), Some(5), "{e}");
        let e = err("[connector]\nstate_dir = \"/tmp\"\n");
        assert_eq!(
            (e.line(), e.key()),
            (Some(2), Some("connector.state_dir")),
            "{e}"
        );
        let e = err("[[connector.account]]\nuser = \"nobody\"\n");
        assert_eq!(e.key(), Some("connector.account[0].user"), "{e}");
    }

    #[test]
    fn faults_need_their_arguments() {
        let e = err("[[pop3.fault]]\non = \"QUIT\"\naction = \"reply\"\n");
        assert_eq!(e.key(), Some("pop3.fault[0].action"), "{e}");
        let e = err("[[pop3.fault]]\non = \"data-end\"\naction = \"close\"\n");
        assert_eq!(e.key(), Some("pop3.fault[0].on"), "{e}");
        let e = err("[[smtp.fault]]\non = \"data-end\"\naction = \"explode\"\n");
        assert_eq!(e.key(), Some("smtp.fault[0].action"), "{e}");
        assert_eq!(e.line(), Some(3), "{e}");
        let ok = "[[smtp.fault]]\non = \"data-end\"\naction = \"reply-close\"\nreply = \"421 4.3.2 bye\"\nnth = 2\n";
        let s = parse(ok, Path::new("x.toml")).unwrap();
        assert_eq!(s.smtp.faults[0].nth, 2);
        assert_eq!(s.smtp.faults[0].on, Hook::EndOfData);
    }

    #[test]
    fn labels_must_be_unique_across_copies() {
        let e = err("[[pop3.mailbox]]\n[[pop3.mailbox.message]]\nlabel = \"a\"\ncount = 2\n[[pop3.mailbox.message]]\nlabel = \"a-2\"\n");
        assert_eq!(e.key(), Some("pop3.mailbox[0].message[1].label"), "{e}");
        assert_eq!(e.line(), Some(6), "{e}");
    }

    #[test]
    fn the_clock_is_paused_when_the_scenario_involves_time() {
        let clock = |text: &str| parse(text, Path::new("x.toml")).unwrap().clock;
        assert_eq!(clock(""), Clock::Real);
        let delay = "[[pop3.fault]]\non = \"RETR\"\naction = \"delay\"\ndelay = \"10m\"\n";
        assert_eq!(clock(delay), Clock::Paused);
        let smtp = delay.replace("pop3", "smtp").replace("RETR", "data-end");
        assert_eq!(clock(&smtp), Clock::Paused);
        assert_eq!(clock("[pop3]\nlogin_delay = 60\n"), Clock::Paused);
        assert_eq!(
            clock(&format!("{delay}[run]\nclock = \"real\"\n")),
            Clock::Real
        );
        assert_eq!(clock("[run]\nclock = \"paused\"\n"), Clock::Paused);
        let e = err("[run]\nclock = \"virtual\"\n");
        assert_eq!((e.line(), e.key()), (Some(2), Some("run.clock")), "{e}");
    }

    #[test]
    fn network_links_are_shaped_as_written() {
        let text = "[network]\npop3_latency = \"40ms\"\nsmtp_latency = 1\nbandwidth = \"2KB/s\"\npop3_cut_after = \"20KB\"\n";
        let s = parse(text, Path::new("x.toml")).unwrap();
        let ms = Duration::from_millis;
        let n = s.network.unwrap();
        assert_eq!(
            n.pop3,
            Shape {
                latency: ms(40),
                bandwidth: Some(2048),
                cut_after: Some(20 * 1024)
            }
        );
        assert_eq!(
            n.smtp,
            Shape {
                latency: ms(1000),
                bandwidth: Some(2048),
                cut_after: None
            }
        );
        // Latency is time: the paused clock by default; a cut alone is not.
        assert_eq!(s.clock, Clock::Paused);
        let cut = parse("[network]\nsmtp_cut_after = 100\n", Path::new("x.toml")).unwrap();
        assert_eq!(cut.clock, Clock::Real);
        assert_eq!(cut.network.unwrap().smtp.cut_after, Some(100));
        assert!(parse("", Path::new("x.toml")).unwrap().network.is_none());
        assert_eq!(
            parse("[network]\nbandwidth = 500\n", Path::new("x.toml"))
                .unwrap()
                .network
                .unwrap()
                .pop3
                .bandwidth,
            Some(500)
        );
        for (text, key) in [
            (
                "[network]\npop3_latency = \"40 parsecs\"\n",
                "network.pop3_latency",
            ),
            (
                "[network]\nsmtp_latency = \"61s\"\n",
                "network.smtp_latency",
            ),
            ("[network]\nbandwidth = \"10MB\"\n", "network.bandwidth"),
            ("[network]\nbandwidth = \"10XB/s\"\n", "network.bandwidth"),
            ("[network]\nbandwidth = 0\n", "network.bandwidth"),
            ("[network]\npop3_cut_after = 0\n", "network.pop3_cut_after"),
            ("[network]\nlatency = \"40ms\"\n", "network.latency"),
        ] {
            let e = err(text);
            assert_eq!((e.line(), e.key()), (Some(2), Some(key)), "{e}");
        }
    }

    #[test]
    fn event_kinds_are_popbridges() {
        let k = known_event_kinds();
        assert!(k.contains(&"message.delivered".to_string()));
        assert!(k.contains(&"pass.finished".to_string()));
        assert!(k.contains(&"state.tightened".to_string()));
        assert!(k.contains(&"auth.token_refreshed".to_string()));
        for q in [
            "quarantine.released",
            "quarantine.redelivered",
            "quarantine.deleted",
        ] {
            assert!(k.contains(&q.to_string()), "{q}");
        }
        assert_eq!(k.len(), 21);
    }
}
