//! Events: what happened to each message and session, as one JSON object per line
//! (`--events FILE`) and as `tracing` lines for humans.
//!
//! Must never: carry a secret (events hold addresses, UIDs, sizes and server replies only).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

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

/// Where events go.
#[derive(Default)]
pub struct EventSink {
    file: Option<Mutex<std::fs::File>>,
    memory: Option<Mutex<Vec<Event>>>,
    observers: Vec<Observer>,
}

impl EventSink {
    /// Events only to `tracing`.
    pub fn none() -> Self {
        Self::default()
    }

    /// Events appended to `path` as JSON lines (and to `tracing`).
    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Some(Mutex::new(f)),
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

    /// Records an event.
    pub fn emit(&self, e: Event) {
        for o in &self.observers {
            o(&e);
        }
        let json = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
        tracing::info!(target: "popbridge::events", "{json}");
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            // One write for the line and its end: a process killed between two writes
            // would glue the next run's first event onto an unfinished line.
            let mut line = json.clone().into_bytes();
            line.push(b'\n');
            if let Err(err) = f.write_all(&line) {
                tracing::error!("cannot write the events file: {err}");
            }
        }
        if let Some(m) = &self.memory {
            m.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        }
    }

    /// Events kept in memory so far.
    pub fn collected(&self) -> Vec<Event> {
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
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["kind"], "pass.started");
        assert_eq!(lines[1]["kind"], "message.deferred");
        assert_eq!(lines[1]["reason"], "451 4.3.0 later");
    }
}
