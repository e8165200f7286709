//! `popbridge quarantine list|show|release|delete`: the administrator's view of, and
//! decisions on, the messages kept under `state_dir/quarantine/<account>/`.
//!
//! `release` and `delete` only record a decision in the ledger (and `delete` removes the
//! local copy); the next pass of the account carries it out: a released message is
//! delivered from its local copy exactly once (the delivery record ends the release, so
//! the server's copy is afterwards only deleted or kept, like any delivered message); a
//! deleted one has its server copy deleted where the account does not keep mail on the
//! server. Every action is an event.
//!
//! Must never: deliver or delete anything itself, touch a message the ledger does not
//! have as quarantined (a delivered one above all), forget the ledger row of a message
//! still on the server (it would be delivered again), or print a header field unescaped.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Account;
use crate::events::{Event, EventSink};
use crate::ledger::{Ledger, LedgerError, QuarantineAction, QuarantineRow, Status};
use crate::report::{clean_bytes, rfc3339};

/// The longest header field value printed, in characters.
const FIELD_MAX: usize = 120;

/// Errors of the quarantine commands.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The ledger has no quarantined message of that account and key.
    #[error("account {account:?} has no quarantined message with key {key:?}")]
    NotQuarantined {
        /// Account name.
        account: String,
        /// Ledger key.
        key: String,
    },
    /// The message's local copy cannot be read (or was deleted).
    #[error("the quarantined copy {} cannot be read: {source}", path.display())]
    Copy {
        /// The copy's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The local copy could not be removed.
    #[error("cannot remove {}: {source}", path.display())]
    Remove {
        /// The copy's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One quarantined message, for `quarantine list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Account name.
    pub account: String,
    /// Ledger key (escaped).
    pub key: String,
    /// `From:` of the copy (escaped, bounded).
    pub from: Option<String>,
    /// `Subject:` of the copy (escaped, bounded).
    pub subject: Option<String>,
    /// `Date:` of the copy (escaped, bounded).
    pub date: Option<String>,
    /// `Message-ID:` of the copy (escaped, bounded).
    pub message_id: Option<String>,
    /// The refusal that led to it (escaped, bounded).
    pub reason: Option<String>,
    /// When it was quarantined (or last changed), RFC 3339.
    pub since: String,
    /// `release` when a redelivery is pending, else absent.
    pub action: Option<QuarantineAction>,
    /// The copy's size in octets; absent when it cannot be read.
    pub size: Option<u64>,
    /// The local copy.
    pub path: String,
}

/// The quarantined messages of `account` (or all), with what their copies' headers say.
pub fn list(ledger: &Ledger, account: Option<&str>) -> Result<Vec<Entry>, QuarantineError> {
    let rows = ledger.quarantined(account)?;
    Ok(rows.iter().map(entry).collect())
}

fn entry(row: &QuarantineRow) -> Entry {
    let head = read_head(&row.path);
    let info = head
        .as_ref()
        .map(|h| crate::message::parse_headers(h, crate::body::HEAD_MAX));
    let field = |f: Option<&String>| f.map(|v| clean_bytes(v.trim().as_bytes(), FIELD_MAX));
    let size = std::fs::metadata(&row.path).ok().map(|m| m.len());
    Entry {
        account: clean_bytes(row.account.as_bytes(), FIELD_MAX),
        key: clean_bytes(row.key.as_bytes(), FIELD_MAX),
        from: info.as_ref().and_then(|i| field(i.from.as_ref())),
        subject: info.as_ref().and_then(|i| field(i.subject.as_ref())),
        date: info.as_ref().and_then(|i| field(i.date.as_ref())),
        message_id: info.as_ref().and_then(|i| field(i.message_id.as_ref())),
        reason: row
            .reason
            .as_ref()
            .map(|r| clean_bytes(r.as_bytes(), FIELD_MAX)),
        since: rfc3339(row.since),
        action: row.action,
        size,
        path: clean_bytes(row.path.to_string_lossy().as_bytes(), 4 * FIELD_MAX),
    }
}

/// The first octets of a copy (as much as the header parser looks at).
fn read_head(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut head = Vec::new();
    file.take(crate::body::HEAD_MAX as u64)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// `quarantine list` as a table (one message a line after a header line).
pub fn render(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no quarantined messages\n".into();
    }
    let mut out = String::from("ACCOUNT\tKEY\tSINCE\tFROM\tSUBJECT\tDATE\tREASON\tSTATUS\n");
    for e in entries {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let status = match (e.action, e.size) {
            (_, None) => "copy unreadable",
            (Some(QuarantineAction::Release), _) => "release pending",
            _ => "quarantined",
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{status}\n",
            e.account,
            e.key,
            e.since,
            dash(&e.from),
            dash(&e.subject),
            dash(&e.date),
            dash(&e.reason),
        ));
    }
    out
}

/// The path of a quarantined message's copy (for `quarantine show`).
pub fn copy_path(ledger: &Ledger, account: &str, key: &str) -> Result<PathBuf, QuarantineError> {
    quarantined(ledger, account, key)
}

/// The copy of a quarantined message not discarded, or why not.
fn quarantined(ledger: &Ledger, account: &str, key: &str) -> Result<PathBuf, QuarantineError> {
    let not = || QuarantineError::NotQuarantined {
        account: account.to_string(),
        key: key.to_string(),
    };
    match ledger.status(account, key)? {
        Status::Quarantined { path } => {
            let discarded =
                ledger.quarantine_actions(account)?.get(key) == Some(&QuarantineAction::Discard);
            if discarded {
                Err(not())
            } else {
                Ok(path)
            }
        }
        _ => Err(not()),
    }
}

/// Marks a quarantined message for delivery from its local copy at the next pass; the
/// copy must be readable now. Emits `quarantine.released`.
pub fn release(
    ledger: &mut Ledger,
    events: &EventSink,
    account: &str,
    key: &str,
) -> Result<(), QuarantineError> {
    let path = quarantined(ledger, account, key)?;
    std::fs::File::open(&path).map_err(|source| QuarantineError::Copy {
        path: path.clone(),
        source,
    })?;
    if !ledger.set_quarantine_action(account, key, Some(QuarantineAction::Release))? {
        return Err(QuarantineError::NotQuarantined {
            account: account.to_string(),
            key: key.to_string(),
        });
    }
    events.emit(Event::QuarantineReleased {
        account: account.to_string(),
        uid: key.to_string(),
    });
    Ok(())
}

/// Discards a quarantined message: records the decision (so the row, which keeps later
/// passes from delivering the server's copy, stays), then removes the local copy. The
/// server's copy is deleted at the next pass when the account does not keep mail on the
/// server and the key is a UID (a message known only by header digest stays). Returns
/// whether the server's copy will be deleted. Emits `quarantine.deleted`.
pub fn delete(
    ledger: &mut Ledger,
    events: &EventSink,
    account: &Account,
    key: &str,
) -> Result<bool, QuarantineError> {
    let path = quarantined(ledger, &account.name, key)?;
    if !ledger.set_quarantine_action(&account.name, key, Some(QuarantineAction::Discard))? {
        return Err(QuarantineError::NotQuarantined {
            account: account.name.clone(),
            key: key.to_string(),
        });
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(QuarantineError::Remove { path, source }),
    }
    let server = !account.leave_on_server
        && !key.starts_with(crate::keys::DIGEST_PREFIX)
        && !key.starts_with(crate::keys::SIZE_PREFIX);
    events.emit(Event::QuarantineDeleted {
        account: account.name.clone(),
        uid: key.to_string(),
        server,
    });
    Ok(server)
}
