//! A chaos run's world and fault schedule: drawn from a seed, written as an ordinary
//! scenario file.
//!
//! Responsible for: drawing, from one seed and nothing else, a mailbox (1 to 200
//! messages of mixed sizes, a few over the SMTP size limit, poison senders, spam, malformed
//! mail, byte-identical copies, shared UIDs, messages whose LIST size lies), the servers'
//! capabilities, the connector's settings, and a schedule of faults over the whole run
//! (every fault both mocks can make, at any command, byte or message, and connector
//! crashes at every step of a message); saying what each message must end as; and
//! writing all of it as scenario TOML that `poplab run` replays.
//! Must never: use a source of randomness other than the seed, or describe a world the
//! scenario format cannot express (a saved failure must reproduce as a file).

use std::fmt::Write as _;

use popbridge::faults::{Sabotage, Step};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::schema::BodyShape;

/// Which connector behaviour the world is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// popbridge's own policy.
    Default,
    /// The old SBS 2008 connector's (its losses and stalls are expected).
    Sbs2008,
}

impl Profile {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Sbs2008 => "sbs2008",
        }
    }
}

/// What a message is, for the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Deliverable: must be delivered, intact, exactly once.
    Good,
    /// A malformed return path (deliverable once repaired; the old connector did not).
    Malformed,
    /// A sender the SMTP server refuses permanently (501 5.1.7).
    Poison,
    /// Refused by an anti-spam rule (550 5.7.1, kept as badmail).
    Spam,
    /// Larger than what the SMTP server (or the organisation) takes.
    Oversize,
    /// Its LIST size lies (RETR does not match it).
    Liar,
    /// Holds a lone `.` line on a server that does not dot-stuff (its RETR ends early).
    Trap,
}

impl Class {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Malformed => "malformed-sender",
            Self::Poison => "poison",
            Self::Spam => "spam",
            Self::Oversize => "oversize",
            Self::Liar => "liar",
            Self::Trap => "dot-trap",
        }
    }
}

/// One message declaration (several copies when `copies > 1`, byte-identical).
#[derive(Debug, Clone)]
pub struct Msg {
    /// Its label.
    pub label: String,
    /// What it is.
    pub class: Class,
    /// Its size in octets.
    pub size: u64,
    /// The size LIST reports instead (a liar).
    pub list_size: Option<u64>,
    /// What its body holds.
    pub body: BodyShape,
    /// Its From header (unique per message, so refusals are attributable).
    pub from: String,
    /// Its Return-Path header, when not the From address.
    pub return_path: Option<String>,
    /// Its Subject.
    pub subject: Option<String>,
    /// Byte-identical copies.
    pub copies: u32,
    /// A UID shared with another message (a broken server), when set.
    pub uid: Option<String>,
}

/// Which server a fault is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The POP3 mock.
    Pop3,
    /// The SMTP mock.
    Smtp,
}

/// One fault rule.
#[derive(Debug, Clone)]
pub struct FaultSpec {
    /// Which server.
    pub side: Side,
    /// Its class in reports (`pop3-close`, `smtp-reply-lost`, ...).
    pub class: &'static str,
    /// The hook (`RETR`, `data-end`, `greeting`, `any`).
    pub on: String,
    /// The scenario action name.
    pub action: &'static str,
    /// The line for reply / reply-close / garbage.
    pub reply: Option<String>,
    /// For delay, in seconds.
    pub delay: Option<u64>,
    /// For close-after.
    pub bytes: Option<u64>,
    /// The first matching event that fires.
    pub nth: u32,
    /// How many times.
    pub times: u32,
}

/// A simulated connector crash.
#[derive(Debug, Clone, Copy)]
pub struct CrashSpec {
    /// The pass.
    pub pass: u32,
    /// The step.
    pub step: Step,
    /// The occurrence.
    pub nth: u32,
}

/// A whole chaos world.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The connector policy it is judged against.
    pub profile: Profile,
    /// An external connector (smaller worlds, kills instead of fail points).
    pub external: bool,
    /// POP3 capabilities.
    pub uidl: bool,
    /// TOP.
    pub top: bool,
    /// POP3 PIPELINING.
    pub pop3_pipelining: bool,
    /// The POP3 server dot-stuffs.
    pub dot_stuffing: bool,
    /// SMTP CHUNKING.
    pub chunking: bool,
    /// SMTP PIPELINING.
    pub smtp_pipelining: bool,
    /// EHLO advertises SIZE.
    pub advertise_size: bool,
    /// The receive connector's MaxMessageSize.
    pub max_message_size: u64,
    /// MaxProtocolErrors.
    pub max_protocol_errors: u32,
    /// The organisation's receive limit (told to the connector too).
    pub org_limit: Option<u64>,
    /// Connector: keep delivered mail on the server.
    pub leave_on_server: bool,
    /// Connector: permanent failures before quarantine.
    pub poison_after: u32,
    /// Connector: messages per pass.
    pub max_per_session: u32,
    /// Connector: delete quarantined mail from the server.
    pub quarantine_delete: bool,
    /// Connector: spool messages above this size.
    pub memory_threshold: u64,
    /// The messages, in maildrop order.
    pub messages: Vec<Msg>,
    /// The fault schedule.
    pub faults: Vec<FaultSpec>,
    /// Connector crashes.
    pub crashes: Vec<CrashSpec>,
    /// External connectors: kill the process this many milliseconds into these passes.
    pub kills: Vec<(u32, u64)>,
    /// Passes with faults armed.
    pub fault_passes: u32,
    /// Clean passes allowed afterwards.
    pub settle: u32,
    /// A deliberately broken popbridge.
    pub sabotage: Option<Sabotage>,
}

/// The connector's command timeout in chaos worlds (POP3 and SMTP), in seconds.
pub const COMMAND_TIMEOUT: u64 = 30;
/// The connector's data timeout in chaos worlds, in seconds.
pub const DATA_TIMEOUT: u64 = 60;
/// The command timeout of external connectors' worlds, which run in real time: short, so
/// that a delay past it costs seconds, not minutes (templates get it as `{timeout}`).
pub const EXTERNAL_COMMAND_TIMEOUT: u64 = 5;
/// The data timeout of external connectors' worlds.
pub const EXTERNAL_DATA_TIMEOUT: u64 = 10;
/// The mailbox user.
pub const USER: &str = "info";
/// The most clean passes a world gets (the scenario format's bound).
const MAX_SETTLE: u32 = 100;

/// What a message must end as, under the world's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// Delivered intact (and, unless kept on the server, deleted).
    Delivered,
    /// Quarantined (a durable copy; left on the server unless `quarantine_delete`).
    Quarantined,
    /// Left on the server, never delivered.
    Left,
}

impl Spec {
    /// The connector's command timeout in this world, in seconds.
    pub fn command_timeout(&self) -> u64 {
        if self.external {
            EXTERNAL_COMMAND_TIMEOUT
        } else {
            COMMAND_TIMEOUT
        }
    }

    /// The connector's data timeout in this world, in seconds.
    pub fn data_timeout(&self) -> u64 {
        if self.external {
            EXTERNAL_DATA_TIMEOUT
        } else {
            DATA_TIMEOUT
        }
    }

    /// What `m` must end as, or `None` where this profile or connector promises nothing
    /// (the old connector, or an external one, for messages it cannot deliver).
    pub fn expected(&self, m: &Msg) -> Option<Expected> {
        let popbridge_default = self.profile == Profile::Default && !self.external;
        match m.class {
            Class::Good => Some(Expected::Delivered),
            Class::Malformed if self.profile == Profile::Default => Some(Expected::Delivered),
            Class::Malformed => None,
            Class::Poison | Class::Spam if popbridge_default => Some(Expected::Quarantined),
            Class::Poison | Class::Spam => None,
            Class::Oversize | Class::Liar | Class::Trap if popbridge_default => {
                Some(Expected::Left)
            }
            Class::Oversize | Class::Liar | Class::Trap => None,
        }
    }

    /// The fault classes of this world (fault rules, message classes beyond good ones,
    /// crashes, kills), for the report's table.
    pub fn fault_classes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.faults.iter().map(|f| f.class.to_string()).collect();
        v.extend(self.crashes.iter().map(|c| format!("crash-{}", c.step)));
        if !self.kills.is_empty() {
            v.push("sigkill".into());
        }
        v.extend(
            self.messages
                .iter()
                .filter(|m| m.class != Class::Good)
                .map(|m| format!("message-{}", m.class.name())),
        );
        if self.messages.iter().any(|m| m.copies > 1) {
            v.push("identical-copies".into());
        }
        if self.messages.iter().any(|m| m.uid.is_some()) {
            v.push("shared-uid".into());
        }
        if !self.uidl {
            v.push("no-uidl".into());
        }
        v.sort();
        v.dedup();
        v
    }
}

fn pick<'a, T>(r: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    items.choose(r).expect("non-empty")
}

/// Draws the world of chaos run `seed`.
pub fn draw(seed: u64, profile: Profile, external: bool, sabotage: Option<Sabotage>) -> Spec {
    let r = &mut ChaCha8Rng::seed_from_u64(seed);
    // 1 to 200 messages, most runs small (external connectors: at most 20).
    let n: u32 = if external {
        r.gen_range(1..=20)
    } else {
        match r.gen_range(0..100) {
            0..=44 => r.gen_range(1..=10),
            45..=79 => r.gen_range(11..=40),
            _ => r.gen_range(41..=200),
        }
    };
    let max_message_size = *pick(
        r,
        &[
            256 * 1024u64,
            256 * 1024,
            1024 * 1024,
            1024 * 1024,
            1024 * 1024,
            10 * 1024 * 1024,
        ],
    );
    let org_limit = r.gen_bool(0.15).then_some(max_message_size / 2);
    let take = org_limit.unwrap_or(max_message_size);
    let uidl = r.gen_bool(0.8);
    let dot_stuffing = !r.gen_bool(0.1);
    let mut spec = Spec {
        seed,
        profile,
        external,
        uidl,
        top: r.gen_bool(0.8),
        pop3_pipelining: r.gen_bool(0.7),
        dot_stuffing,
        chunking: r.gen_bool(0.6),
        smtp_pipelining: r.gen_bool(0.7),
        advertise_size: r.gen_bool(0.8),
        max_message_size,
        // 20 and 50 give popbridge room to write several transactions ahead of their
        // replies (it needs room for three errors each under the limit).
        max_protocol_errors: *pick(r, &[3u32, 5, 5, 10, 20, 50]),
        org_limit,
        leave_on_server: r.gen_bool(0.15),
        poison_after: r.gen_range(1..=3),
        // A cap that makes the clean passes drain the mailbox in a handful of rounds.
        max_per_session: if r.gen_bool(0.3) {
            r.gen_range(n.div_ceil(4).max(1)..=n.max(1))
        } else {
            500
        },
        quarantine_delete: r.gen_bool(0.3),
        memory_threshold: *pick(r, &[16 * 1024u64, 256 * 1024, 1024 * 1024, 1024 * 1024]),
        messages: Vec::new(),
        faults: Vec::new(),
        crashes: Vec::new(),
        kills: Vec::new(),
        fault_passes: r.gen_range(1..=3),
        settle: 0,
        sabotage,
    };
    let mut shared_uid: Option<String> = None;
    for i in 1..=n {
        let label = format!("m{i:03}");
        let roll = r.gen_range(0..100);
        let class = match roll {
            0..=69 => Class::Good,
            70..=74 => Class::Malformed,
            75..=80 => Class::Poison,
            81..=83 => Class::Spam,
            // Oversize only under small limits: a 10 MB one costs more time than it finds.
            84..=89 if take <= 1024 * 1024 => Class::Oversize,
            84..=89 => Class::Good,
            90..=94 => Class::Liar,
            _ if !spec.dot_stuffing => Class::Trap,
            _ => Class::Good,
        };
        let size: u64 = match class {
            Class::Oversize => take + r.gen_range(1..=take / 8),
            _ => match r.gen_range(0..100) {
                0..=77 => r.gen_range(600..=8 * 1024),
                78..=97 => r.gen_range(8 * 1024..=64 * 1024),
                _ => r.gen_range(64 * 1024..=(take - 4096).min(1100 * 1024)),
            },
        };
        let list_size = (class == Class::Liar).then(|| {
            if r.gen_bool(0.5) {
                size * r.gen_range(30..=70) / 100
            } else {
                size * r.gen_range(150..=300) / 100 + 1000
            }
        });
        let body = match class {
            Class::Trap => BodyShape::DotLines,
            // Sizes that must stay what they were drawn as (over the limit, or far from
            // what LIST says): no shape that changes them.
            Class::Oversize | Class::Liar => BodyShape::Plain,
            _ => *pick(
                r,
                &[
                    BodyShape::Plain,
                    BodyShape::Plain,
                    BodyShape::Plain,
                    BodyShape::Plain,
                    BodyShape::BareLf,
                    BodyShape::Nul,
                    BodyShape::EightBit,
                    BodyShape::LongLine,
                    BodyShape::DotLines,
                ],
            ),
        };
        // On a server that does not dot-stuff, dot lines make a message a trap: only traps
        // get them there.
        let body = if body == BodyShape::DotLines && !spec.dot_stuffing && class != Class::Trap {
            BodyShape::Plain
        } else {
            body
        };
        let domain = if class == Class::Poison {
            "refused.example"
        } else {
            "example.net"
        };
        let from = format!("{label}@{domain}");
        let return_path = (class == Class::Malformed).then(|| label.clone());
        let subject = (class == Class::Spam).then(|| format!("{label} cheap viagra"));
        let copies = if class == Class::Good && r.gen_bool(0.04) {
            2
        } else {
            1
        };
        let uid = if class == Class::Good && copies == 1 && r.gen_bool(0.04) {
            // Two different messages listed under one UID: the second one to get here
            // shares the first one's.
            Some(
                shared_uid
                    .get_or_insert_with(|| format!("shared-{label}"))
                    .clone(),
            )
        } else {
            None
        };
        spec.messages.push(Msg {
            label,
            class,
            size,
            list_size,
            body,
            from,
            return_path,
            subject,
            copies,
            uid,
        });
    }
    // A single message with a "shared" UID shares it with nobody: drop it.
    if spec.messages.iter().filter(|m| m.uid.is_some()).count() < 2 {
        for m in &mut spec.messages {
            m.uid = None;
        }
    }
    draw_faults(r, &mut spec);
    // Enough clean passes to drain the mailbox through the per-pass cap, to reach every
    // quarantine, and to meet every message that ends a session early (a lying size is
    // found one per pass), with room to spare.
    let copies: u32 = spec.messages.iter().map(|m| m.copies).sum();
    let liars = spec
        .messages
        .iter()
        .filter(|m| matches!(m.class, Class::Liar | Class::Trap))
        .count() as u32;
    // Each round through the cap may cost a poison message `poison_after` passes.
    let rounds = copies.div_ceil(spec.max_per_session.max(1));
    spec.settle = (rounds * (spec.poison_after + 1) + liars + 6).min(MAX_SETTLE);
    spec
}

/// POP3 replies a fault may send in place of the real one.
const POP3_ERRORS: [&str; 5] = [
    "-ERR [SYS/TEMP] try again later",
    "-ERR [IN-USE] mailbox locked by another session",
    "-ERR [LOGIN-DELAY] wait a while",
    "-ERR [AUTH] credentials rejected",
    "-ERR [SYS/PERM] internal error",
];
/// Temporary refusals an SMTP fault replies.
const SMTP_4XX: &[&str] = &[
    "451 4.3.0 Temporary failure",
    "452 4.3.1 Insufficient system resources",
    "454 4.7.0 Try again later",
];
/// Permanent refusals an SMTP fault replies.
const SMTP_5XX: &[&str] = &[
    "550 5.7.1 Message rejected",
    "554 5.6.0 Invalid message content",
];
/// Garbage lines.
const GARBAGE: [&str; 5] = [
    "* OK IMAP4rev1 ready",
    "+OK garbage",
    "-ERR garbage",
    "HTTP/1.1 400 Bad Request",
    "\u{1}\u{7f}binary junk",
];

/// A hook list and how to draw which of its events fires first.
type Hooks<'a> = (&'a [&'a str], &'a dyn Fn(&mut ChaCha8Rng) -> u32);

/// A fault on `side` with its hook drawn (a per-message one with probability `p_message`,
/// else a per-session one), its first firing and how many times; class and action are
/// left for the caller. The draws keep their order, so a seed gives the same world.
fn unarmed_fault(
    r: &mut ChaCha8Rng,
    side: Side,
    per_message: Hooks<'_>,
    per_session: Hooks<'_>,
    p_message: f64,
) -> FaultSpec {
    let on_message = *pick(r, per_message.0);
    let on_session = *pick(r, per_session.0);
    let (on, nth) = if r.gen_bool(p_message) {
        (on_message, (per_message.1)(r))
    } else {
        (on_session, (per_session.1)(r))
    };
    let times = *pick(r, &[1u32, 1, 1, 2, 3]);
    FaultSpec {
        side,
        class: "",
        on: on.into(),
        action: "",
        reply: None,
        delay: None,
        bytes: None,
        nth,
        times,
    }
}

fn draw_faults(r: &mut ChaCha8Rng, spec: &mut Spec) {
    let n = spec.messages.len() as u32;
    let passes = spec.fault_passes;
    // Per-message hooks fire up to about every message of every fault pass.
    let per_message = &|r: &mut ChaCha8Rng| r.gen_range(1..=(n * passes + 2));
    let per_session = &|r: &mut ChaCha8Rng| r.gen_range(1..=passes + 1);
    let pop3_faults = if r.gen_bool(0.1) {
        0
    } else {
        r.gen_range(0..=6)
    };
    let smtp_faults = if r.gen_bool(0.1) {
        0
    } else {
        r.gen_range(0..=6)
    };
    for _ in 0..pop3_faults {
        let mut f = unarmed_fault(
            r,
            Side::Pop3,
            (&["RETR", "RETR", "DELE", "TOP", "any"], per_message),
            (
                &["greeting", "USER", "PASS", "CAPA", "LIST", "UIDL", "QUIT"],
                per_session,
            ),
            0.6,
        );
        match r.gen_range(0..100) {
            0..=19 => {
                f.class = "pop3-close";
                f.action = "close";
            }
            20..=39 => {
                f.class = "pop3-cut";
                f.action = "close-after";
                f.bytes = Some(r.gen_range(0..=4096));
                if r.gen_bool(0.5) {
                    f.on = pick(r, &["RETR", "UIDL", "LIST", "QUIT"]).to_string();
                }
            }
            40..=59 => {
                f.class = "pop3-err";
                f.action = "reply";
                f.reply = Some(pick(r, &POP3_ERRORS).to_string());
            }
            60..=69 => {
                f.class = "pop3-garbage";
                f.action = "garbage";
                f.reply = Some(pick(r, &GARBAGE).to_string());
            }
            70..=84 => {
                f.class = "pop3-delay";
                f.action = "delay";
                f.delay = Some(match (spec.external, r.gen_bool(0.7)) {
                    (false, true) => r.gen_range(COMMAND_TIMEOUT + 5..=600),
                    (false, false) => r.gen_range(1..COMMAND_TIMEOUT - 5),
                    (true, true) => {
                        r.gen_range(EXTERNAL_COMMAND_TIMEOUT + 2..=EXTERNAL_COMMAND_TIMEOUT * 3)
                    }
                    (true, false) => r.gen_range(1..EXTERNAL_COMMAND_TIMEOUT - 2),
                });
            }
            _ => {
                f.class = "pop3-reply-lost";
                f.action = "lose-reply";
                f.on = pick(r, &["DELE", "QUIT", "RETR"]).to_string();
            }
        }
        spec.faults.push(f);
    }
    for _ in 0..smtp_faults {
        let mut f = unarmed_fault(
            r,
            Side::Smtp,
            (
                &["MAIL", "RCPT", "DATA", "BDAT", "data-end", "data-end"],
                per_message,
            ),
            (&["greeting", "EHLO", "QUIT", "RSET"], per_session),
            0.75,
        );
        match r.gen_range(0..100) {
            roll @ 0..=29 => {
                let (class, replies) = if roll < 20 {
                    ("smtp-4xx", SMTP_4XX)
                } else {
                    ("smtp-5xx", SMTP_5XX)
                };
                f.class = class;
                f.action = "reply";
                f.reply = Some(pick(r, replies).to_string());
            }
            30..=44 => {
                f.class = "smtp-421";
                f.action = "reply-close";
                f.reply =
                    Some("421 4.3.2 Service not available, closing transmission channel".into());
            }
            45..=59 => {
                f.class = "smtp-close";
                f.action = "close";
            }
            60..=79 => {
                f.class = "smtp-reply-lost";
                f.action = "lose-reply";
                f.on = "data-end".into();
            }
            80..=89 => {
                f.class = "smtp-delay";
                f.action = "delay";
                let (command, data) = (spec.command_timeout(), spec.data_timeout());
                let most = if spec.external { 2 } else { 4 };
                f.delay = Some(if f.on == "data-end" {
                    r.gen_range(data / 2..=data * most)
                } else {
                    r.gen_range(command / 2..=command * most)
                });
            }
            _ => {
                f.class = "smtp-garbage";
                f.action = "garbage";
                f.reply = Some(pick(r, &["250-garbage", "xyzzy", "220 hello again"]).to_string());
            }
        }
        spec.faults.push(f);
    }
    if spec.external {
        // SIGKILL at a random moment of some fault passes.
        for pass in 1..=passes {
            if r.gen_bool(0.5) {
                spec.kills.push((pass, r.gen_range(20..=1500)));
            }
        }
    } else {
        for pass in 1..=passes {
            if r.gen_bool(0.45) {
                let step = *pick(r, &Step::ALL);
                let nth = if step == Step::DuringQuit {
                    1
                } else {
                    r.gen_range(1..=n.max(1))
                };
                spec.crashes.push(CrashSpec { pass, step, nth });
            }
        }
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The world as a scenario file; `headline` is its description.
pub fn render(spec: &Spec, headline: &str) -> String {
    let mut t = String::new();
    let w = &mut t;
    let _ = writeln!(
        w,
        "# A poplab chaos world (seed {}, profile {}): `poplab run` on this file replays it.",
        spec.seed,
        spec.profile.name()
    );
    let _ = writeln!(
        w,
        "# Faults are armed for the first {} pass(es); then every fault is off and the\n\
         # connector gets up to {} clean passes, until one changes nothing.",
        spec.fault_passes, spec.settle
    );
    let _ = writeln!(w, "description = {}\n", quoted(headline));
    let _ = writeln!(w, "[pop3]");
    let _ = writeln!(w, "uidl = {}", spec.uidl);
    let _ = writeln!(w, "top = {}", spec.top);
    let _ = writeln!(w, "pipelining = {}", spec.pop3_pipelining);
    let _ = writeln!(w, "dot_stuffing = {}", spec.dot_stuffing);
    let _ = writeln!(w, "seed = {}\n", spec.seed);
    let _ = writeln!(w, "[[pop3.mailbox]]\nuser = {}\n", quoted(USER));
    for m in &spec.messages {
        let _ = writeln!(w, "[[pop3.mailbox.message]]   # {}", m.class.name());
        let _ = writeln!(w, "label = {}", quoted(&m.label));
        let _ = writeln!(w, "from = {}", quoted(&m.from));
        if let Some(rp) = &m.return_path {
            let _ = writeln!(w, "return_path = {}", quoted(rp));
        }
        if let Some(s) = &m.subject {
            let _ = writeln!(w, "subject = {}", quoted(s));
        }
        let _ = writeln!(w, "size = {}", m.size);
        if let Some(l) = m.list_size {
            let _ = writeln!(w, "list_size = {l}");
        }
        if m.body != BodyShape::Plain {
            let shape = toml::Value::try_from(m.body)
                .map(|v| v.to_string())
                .unwrap_or_default();
            let _ = writeln!(w, "body = {shape}");
        }
        if m.copies > 1 {
            let _ = writeln!(w, "count = {}\nidentical = true", m.copies);
        }
        if let Some(u) = &m.uid {
            let _ = writeln!(w, "uid = {}", quoted(u));
        }
        let _ = writeln!(w);
    }
    for f in spec.faults.iter().filter(|f| f.side == Side::Pop3) {
        render_fault(w, "pop3", f);
    }
    let _ = writeln!(w, "[smtp]");
    let _ = writeln!(w, "max_message_size = {}", spec.max_message_size);
    let _ = writeln!(w, "max_protocol_errors = {}", spec.max_protocol_errors);
    if let Some(o) = spec.org_limit {
        let _ = writeln!(w, "organization_receive_limit = {o}");
    }
    let _ = writeln!(w, "chunking = {}", spec.chunking);
    let _ = writeln!(w, "pipelining = {}", spec.smtp_pipelining);
    let _ = writeln!(w, "advertise_size = {}", spec.advertise_size);
    let _ = writeln!(w, "reject_senders = [\"@refused.example\"]");
    let _ = writeln!(w, "seed = {}\n", spec.seed);
    let _ = writeln!(
        w,
        "[[smtp.spam_rule]]\nfield = \"subject\"\ncontains = \"viagra\"\n"
    );
    for f in spec.faults.iter().filter(|f| f.side == Side::Smtp) {
        render_fault(w, "smtp", f);
    }
    let _ = writeln!(w, "[connector]");
    if spec.profile == Profile::Sbs2008 {
        let _ = writeln!(w, "profile = \"sbs2008\"");
    }
    let _ = writeln!(w, "\n[connector.limits]");
    let _ = writeln!(w, "poison_after = {}", spec.poison_after);
    let _ = writeln!(w, "max_messages_per_session = {}", spec.max_per_session);
    let _ = writeln!(w, "quarantine_delete = {}", spec.quarantine_delete);
    let _ = writeln!(w, "memory_threshold = {}", spec.memory_threshold);
    let _ = writeln!(
        w,
        "smtp_max_protocol_errors = {}",
        spec.max_protocol_errors.max(2)
    );
    if let Some(o) = spec.org_limit {
        let _ = writeln!(
            w,
            "\n[connector.exchange]\norganization_receive_limit = {o}"
        );
    }
    let _ = writeln!(w, "\n[connector.timeouts]");
    let _ = writeln!(w, "command = \"{}s\"", spec.command_timeout());
    let _ = writeln!(w, "data = \"{}s\"", spec.data_timeout());
    if spec.leave_on_server {
        let _ = writeln!(
            w,
            "\n[[connector.account]]\nuser = {}\nleave_on_server = true",
            quoted(USER)
        );
    }
    let _ = writeln!(w, "\n[run]");
    let _ = writeln!(w, "passes = {}", spec.fault_passes);
    let _ = writeln!(w, "settle = {}", spec.settle);
    if !spec.external {
        let _ = writeln!(w, "clock = \"paused\"");
    }
    let _ = writeln!(w, "timeout = \"{}s\"", if spec.external { 60 } else { 120 });
    if let Some(s) = spec.sabotage {
        let _ = writeln!(w, "sabotage = {}", quoted(s.name()));
    }
    if !spec.crashes.is_empty() {
        let crashes: Vec<String> = spec
            .crashes
            .iter()
            .map(|c| {
                format!(
                    "{{ pass = {}, step = \"{}\", nth = {} }}",
                    c.pass, c.step, c.nth
                )
            })
            .collect();
        let _ = writeln!(w, "crash = [{}]", crashes.join(", "));
    }
    let _ = writeln!(w, "\n[expect]\nlost = 0\nduplicates = \"explained\"");
    let expectations: Vec<(String, Expected)> = spec
        .messages
        .iter()
        // An oversize message may be left or, when the SMTP server did not advertise its
        // SIZE, downloaded, refused and quarantined: either is right, so no expectation.
        .filter(|m| m.class != Class::Oversize)
        .filter_map(|m| spec.expected(m).map(|e| (m.label.clone(), e)))
        // A good message that SMTP faults could refuse permanently may end quarantined.
        .filter(|(_, e)| {
            *e != Expected::Delivered
                || !spec
                    .faults
                    .iter()
                    .any(|f| f.class == "smtp-5xx" || f.on == "RCPT")
        })
        .collect();
    if !expectations.is_empty() {
        let _ = writeln!(w, "\n[expect.labels]");
        for (label, e) in expectations {
            let outcome = match e {
                Expected::Delivered => "delivered",
                Expected::Quarantined => "quarantined",
                Expected::Left => "left",
            };
            let _ = writeln!(w, "{label} = \"{outcome}\"");
        }
    }
    t
}

fn render_fault(w: &mut String, side: &str, f: &FaultSpec) {
    let _ = writeln!(w, "[[{side}.fault]]   # {}", f.class);
    let _ = writeln!(w, "on = {}", quoted(&f.on));
    let _ = writeln!(w, "action = \"{}\"", f.action);
    if let Some(r) = &f.reply {
        let _ = writeln!(w, "reply = {}", quoted(r));
    }
    if let Some(d) = f.delay {
        let _ = writeln!(w, "delay = \"{d}s\"");
    }
    if let Some(b) = f.bytes {
        let _ = writeln!(w, "bytes = {b}");
    }
    let _ = writeln!(w, "nth = {}\ntimes = {}\n", f.nth, f.times);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_world_and_every_world_is_a_valid_scenario() {
        for seed in 0..300 {
            let a = render(&draw(seed, Profile::Default, false, None), "x");
            let b = render(&draw(seed, Profile::Default, false, None), "x");
            assert_eq!(a, b, "seed {seed}");
            crate::schema::parse(&a, std::path::Path::new("chaos.toml"))
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{a}"));
        }
        let ext = render(&draw(7, Profile::Sbs2008, true, None), "x");
        crate::schema::parse(&ext, std::path::Path::new("chaos.toml")).unwrap();
    }

    #[test]
    fn worlds_cover_every_class_and_fault() {
        let mut classes = std::collections::BTreeSet::new();
        let mut faults = std::collections::BTreeSet::new();
        let mut steps = std::collections::BTreeSet::new();
        for seed in 0..400 {
            let s = draw(seed, Profile::Default, false, None);
            assert!((1..=200).contains(&s.messages.len()));
            classes.extend(s.messages.iter().map(|m| m.class));
            faults.extend(s.faults.iter().map(|f| f.class));
            steps.extend(s.crashes.iter().map(|c| c.step));
        }
        assert_eq!(classes.len(), 7, "{classes:?}");
        assert_eq!(faults.len(), 13, "{faults:?}");
        assert_eq!(steps.len(), Step::ALL.len());
    }
}
