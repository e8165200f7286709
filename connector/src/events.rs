//! Events: what happened to each message and session, as one JSON object per line
//! (`--events FILE`) and as `tracing` lines for humans. Each line starts with `time` (RFC
//! 3339, UTC) and `pass` (the id of the account pass it belongs to, or null), then the
//! event's `kind` and fields. The file can be reopened at its path (SIGHUP, after
//! logrotate renamed it).
//!
//! Must never: carry a secret (events hold addresses, UIDs, sizes, server replies and the
//! escaped, bounded header fields of [`Named`] only).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use crate::message::Named;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum Event {
    /// A pass over an account began.
    #[serde(rename = "pass.started")]
    PassStarted {
        /// Account name.
        account: String,
    },
    /// The account's maildrop was listed: how much work the pass has.
    #[serde(rename = "pass.listed")]
    Listed {
        /// Account name.
        account: String,
        /// Messages on the server.
        messages: u32,
        /// Their total size in octets (as LIST reports it).
        octets: u64,
    },
    /// A message was accepted by the SMTP server and recorded.
    #[serde(rename = "message.delivered")]
    Delivered {
        /// Account name.
        account: String,
        /// UIDL or header digest.
        uid: String,
        /// Octets.
        size: u64,
        /// Envelope sender used (`""` = `<>`).
        sender: String,
        /// The server's reply to the end of data.
        reply: String,
    },
    /// A message already delivered on an earlier pass was only deleted from the server.
    #[serde(rename = "message.already_delivered")]
    AlreadyDelivered {
        /// Account name.
        account: String,
        /// UIDL or header digest.
        uid: String,
    },
    /// A message larger than the effective limit was left on the server, not downloaded.
    #[serde(rename = "message.skipped_oversize")]
    SkippedOversize {
        /// Account name.
        account: String,
        /// UIDL (or `#n` when unknown before download).
        uid: String,
        /// Size from LIST.
        size: u64,
        /// The effective limit.
        limit: u64,
        /// The message's From, Subject, Date and Message-ID, when known (each absent
        /// field is left out of the JSON).
        #[serde(flatten)]
        named: Named,
    },
    /// The SMTP server refused a message permanently; it stays on the server.
    #[serde(rename = "message.rejected")]
    Rejected {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
        /// The refusing reply.
        reply: String,
        /// Permanent failures so far.
        failures: u32,
        /// The message's From, Subject, Date and Message-ID, when known (each absent
        /// field is left out of the JSON).
        #[serde(flatten)]
        named: Named,
    },
    /// A temporary failure: the message stays and is retried on the next pass.
    #[serde(rename = "message.deferred")]
    Deferred {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
        /// Why.
        reason: String,
        /// The message's From, Subject, Date and Message-ID, when known (each absent
        /// field is left out of the JSON).
        #[serde(flatten)]
        named: Named,
    },
    /// What RETR sent did not match the message's LIST size: it was not delivered and is
    /// never deleted; the session did not trust the server's later replies; later passes
    /// retry it last, alone.
    #[serde(rename = "message.size_mismatch")]
    SizeMismatch {
        /// Account name.
        account: String,
        /// UIDL, or `size:<octets>` when the server has no usable UIDL.
        uid: String,
        /// The size LIST gave.
        listed: u64,
        /// Octets received before the end of the reply (or before the bound, when the
        /// reply ran past it).
        received: u64,
        /// True when the reply ran past its bound before its end.
        overran: bool,
        /// Mismatches so far.
        failures: u32,
    },
    /// A message is being submitted again although its final data may already have reached
    /// the SMTP server (a crash or a lost reply after the end of its data, in an earlier
    /// pass or process): the recipient may get it twice.
    #[serde(rename = "message.possible_duplicate")]
    PossibleDuplicate {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
        /// Its Message-ID header, when it has one.
        message_id: Option<String>,
    },
    /// After `poison_after` permanent failures a copy was kept under the state directory.
    #[serde(rename = "message.quarantined")]
    Quarantined {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
        /// The durable copy.
        path: String,
        /// True when also deleted from the server (`quarantine_delete`).
        deleted: bool,
        /// The message's From, Subject, Date and Message-ID, when known (each absent
        /// field is left out of the JSON).
        #[serde(flatten)]
        named: Named,
    },
    /// The envelope sender was repaired or replaced.
    #[serde(rename = "sender.repaired")]
    SenderRepaired {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
        /// The address found in the header.
        original: String,
        /// The address used (`""` = `<>`).
        used: String,
        /// Why.
        reason: String,
    },
    /// The SMTP session was replaced by a new one.
    #[serde(rename = "session.reconnected")]
    Reconnected {
        /// Account name.
        account: String,
        /// Why.
        reason: String,
    },
    /// The POP3 server refused the credentials, or the OAuth2 token endpoint refused the
    /// refresh token.
    #[serde(rename = "auth.failed")]
    AuthFailed {
        /// Account name.
        account: String,
        /// The server's reply (or the token endpoint's error, without any token).
        reply: String,
    },
    /// A new OAuth2 access token was obtained from the account's token endpoint (never
    /// the token itself).
    #[serde(rename = "auth.token_refreshed")]
    TokenRefreshed {
        /// Account name.
        account: String,
        /// Why it was needed: none cached, the cached one expiring, or the POP3 server
        /// refused the cached one.
        reason: String,
        /// The new token's lifetime in seconds, when the provider said.
        expires_in: Option<u64>,
        /// True when the provider also sent a new refresh token (stored under `state_dir`).
        rotated: bool,
    },
    /// The account could not be processed (connection, TLS, configuration).
    #[serde(rename = "account.failed")]
    AccountFailed {
        /// Account name.
        account: String,
        /// Why.
        error: String,
    },
    /// The POP3 session ended before the pass's work was done (the connection broke or
    /// stalled, the server's replies stopped making sense, QUIT failed): what was not done
    /// waits for the next pass; deletions of this session are not confirmed.
    #[serde(rename = "pass.interrupted")]
    PassInterrupted {
        /// Account name.
        account: String,
        /// Why.
        reason: String,
    },
    /// `state_dir` (or something under it) was readable by other users and was made
    /// private at start.
    #[serde(rename = "state.tightened")]
    StateTightened {
        /// The file or directory.
        path: String,
        /// Its mode before, in octal (e.g. `0755`).
        was: String,
    },
    /// `popbridge quarantine release`: the quarantined copy is delivered at the next pass.
    #[serde(rename = "quarantine.released")]
    QuarantineReleased {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
    },
    /// A released quarantined message was delivered from its local copy (and recorded,
    /// so it is never delivered again).
    #[serde(rename = "quarantine.redelivered")]
    QuarantineRedelivered {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
    },
    /// `popbridge quarantine delete`: the local copy was removed.
    #[serde(rename = "quarantine.deleted")]
    QuarantineDeleted {
        /// Account name.
        account: String,
        /// UIDL or digest.
        uid: String,
        /// True when the server's copy, if still there, is deleted at the next pass (the
        /// account does not keep mail on the server and the key is a UID).
        server: bool,
    },
    /// A pass over an account ended.
    #[serde(rename = "pass.finished")]
    PassFinished {
        /// Account name.
        account: String,
        /// Messages delivered this pass.
        delivered: u32,
        /// Messages deleted from the server at QUIT.
        deleted: u32,
        /// Messages left on the server that still need delivery.
        remaining: u32,
        /// Permanently refused this pass.
        rejected: u32,
        /// Temporarily failed this pass.
        deferred: u32,
        /// Oversize, not downloaded.
        skipped: u32,
        /// Quarantined this pass.
        quarantined: u32,
    },
}

/// A callback that sees every event (a progress bar, the harness).
pub type Observer = Box<dyn Fn(&Event) + Send + Sync>;

/// Names one pass over one account: every event of that pass carries it as `"pass"`, so
/// the events of a pass can be told apart from those of other accounts and passes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PassId(String);

impl PassId {
    /// A new id: 16 random hexadecimal digits.
    pub fn new() -> PassId {
        PassId(format!("{:016x}", rand::random::<u64>()))
    }

    /// The id as written in events.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PassId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for PassId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event as recorded: when, in which pass, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When it was emitted.
    pub time: SystemTime,
    /// The pass it belongs to (`None` for events outside any pass, like `state.tightened`).
    pub pass: Option<PassId>,
    /// What happened.
    pub event: Event,
}

/// One line of the events file: the event's own fields flattened after `time` and `pass`.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    pass: Option<&'a PassId>,
    #[serde(flatten)]
    event: &'a Event,
}

/// `t` in RFC 3339, UTC, with milliseconds: `2026-12-07T04:45:45.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let millis = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.subsec_millis(),
        // Before 1970 (a badly set clock): written as the epoch rather than made up.
        Err(_) => 0,
    };
    let seconds = crate::report::rfc3339(crate::report::unix_secs(t));
    format!("{}.{millis:03}Z", seconds.trim_end_matches('Z'))
}

/// The events file: its configured path and the file open there now.
struct EventsFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Where events go.
#[derive(Default)]
pub struct EventSink {
    file: Option<EventsFile>,
    memory: Option<Mutex<Vec<Record>>>,
    observers: Vec<Observer>,
}

/// The events of one pass: an [`EventSink`] handle that stamps each event with the pass's id.
#[derive(Clone, Copy)]
pub struct PassEvents<'a> {
    sink: &'a EventSink,
    id: &'a PassId,
}

impl PassEvents<'_> {
    /// Records an event of this pass.
    pub fn emit(&self, e: Event) {
        self.sink.record(Some(self.id), e);
    }

    /// The pass's id.
    pub fn id(&self) -> &PassId {
        self.id
    }
}

impl EventSink {
    /// Events only to `tracing`.
    pub fn none() -> Self {
        Self::default()
    }

    /// Events appended to `path` as JSON lines (and to `tracing`).
    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = open_append(path)?;
        Ok(Self {
            file: Some(EventsFile {
                path: path.to_path_buf(),
                file: Mutex::new(f),
            }),
            ..Self::default()
        })
    }

    /// Events kept in memory (tests and the harness).
    pub fn memory() -> Self {
        Self {
            memory: Some(Mutex::new(Vec::new())),
            ..Self::default()
        }
    }

    /// Also calls `f` with every event.
    pub fn with_observer(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.observers.push(Box::new(f));
        self
    }

    /// The handle a pass emits its events through: each carries `id`.
    pub fn pass<'a>(&'a self, id: &'a PassId) -> PassEvents<'a> {
        PassEvents { sink: self, id }
    }

    /// Records an event that belongs to no pass (`"pass": null`).
    pub fn emit(&self, e: Event) {
        self.record(None, e);
    }

    fn record(&self, pass: Option<&PassId>, e: Event) {
        for o in &self.observers {
            o(&e);
        }
        let time = SystemTime::now();
        let line = Line {
            time: rfc3339(time),
            pass,
            event: &e,
        };
        let json = serde_json::to_string(&line).unwrap_or_else(|_| "{}".into());
        tracing::info!(target: "popbridge::events", "{json}");
        if let Some(out) = &self.file {
            let mut f = out.file.lock().unwrap_or_else(|p| p.into_inner());
            // One write for the line and its end: a process killed between two writes
            // would glue the next run's first event onto an unfinished line.
            let mut bytes = json.into_bytes();
            bytes.push(b'\n');
            if let Err(err) = f.write_all(&bytes) {
                tracing::error!("cannot write the events file: {err}");
            }
        }
        if let Some(m) = &self.memory {
            m.lock().unwrap_or_else(|p| p.into_inner()).push(Record {
                time,
                pass: pass.cloned(),
                event: e,
            });
        }
    }

    /// Opens the events file again at its configured path (after logrotate renamed it):
    /// later events go to the file now there, created if needed. On failure the file open
    /// so far stays in use. Without an events file this does nothing.
    pub fn reopen(&self) -> std::io::Result<()> {
        let Some(out) = &self.file else {
            return Ok(());
        };
        let fresh = open_append(&out.path)?;
        let mut f = out.file.lock().unwrap_or_else(|p| p.into_inner());
        *f = fresh;
        Ok(())
    }

    /// The events file's configured path, when events go to a file.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Events kept in memory so far.
    pub fn collected(&self) -> Vec<Event> {
        self.records().into_iter().map(|r| r.event).collect()
    }

    /// Events kept in memory so far, with their time and pass.
    pub fn records(&self) -> Vec<Record> {
        self.memory
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_per_line_with_a_dotted_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let sink = EventSink::file(&path).unwrap();
        sink.emit(Event::PassStarted {
            account: "info".into(),
        });
        sink.emit(Event::Deferred {
            account: "info".into(),
            uid: "u1".into(),
            reason: "451 4.3.0 later".into(),
            named: Named::default(),
        });
        sink.emit(Event::Rejected {
            account: "info".into(),
            uid: "u2".into(),
            reply: "550 5.7.1 no".into(),
            failures: 1,
            named: Named::from_head(b"From: a@b.example\r\nSubject: Hi\x07\r\n\r\n"),
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["kind"], "pass.started");
        assert_eq!(lines[1]["kind"], "message.deferred");
        assert_eq!(lines[1]["reason"], "451 4.3.0 later");
        // Unknown names are left out; known ones sit beside the other fields, escaped.
        assert!(lines[1].get("from").is_none() && lines[1].get("subject").is_none());
        assert_eq!(lines[2]["from"], "a@b.example");
        assert_eq!(lines[2]["subject"], "Hi\\u{7}");
        assert_eq!(lines[2]["failures"], 1);
        assert!(lines[2].get("date").is_none());
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        use std::time::Duration;
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_618_745_123);
        assert_eq!(rfc3339(t), "2026-12-07T04:45:45.123Z");
        // 2024-02-29 (a leap day), 23:59:59.999.
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_999);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.999Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn a_pass_handle_stamps_its_id_and_reopen_follows_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let sink = EventSink::file(&path).unwrap();
        let id = PassId::new();
        sink.pass(&id).emit(Event::PassStarted {
            account: "info".into(),
        });
        sink.emit(Event::StateTightened {
            path: "/x".into(),
            was: "0755".into(),
        });
        let rotated = dir.path().join("events.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.reopen().unwrap();
        sink.pass(&id).emit(Event::PassStarted {
            account: "after".into(),
        });
        let old: Vec<serde_json::Value> = std::fs::read_to_string(&rotated)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(old.len(), 2);
        assert_eq!(old[0]["pass"], id.as_str());
        assert_eq!(old[0]["account"], "info");
        assert!(old[1]["pass"].is_null());
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("\"account\":\"after\""), "{new}");
        assert!(new.starts_with("{\"time\":\""), "{new}");
        assert_ne!(PassId::new(), PassId::new());
    }
}
