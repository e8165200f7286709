//! Delivery into an SMTP service's pickup folder, the SBS 2003 path
//! (ARCHITECTURE.md, "The SBS POP3 connector").
//!
//! Responsible for: writing each message as one `.eml` file that the pickup service sees
//! complete or not at all, under a name that is stable for the message's ledger key, so
//! that a retry after a crash never makes a second copy; writing a copy into the
//! failed-mail folder when the pickup folder cannot be written; removing what a crash
//! left half done.
//!
//! How a message is written (see [`Pickup::deliver`]):
//! 1. *Stage*: the file is written under `<pickup>/.popbridge-tmp/<name>.tmp`, then
//!    fsynced. The staging folder is a subfolder, not a dot-file next to the `.eml` files,
//!    because pickup services scan the files at the top of the folder only, and the SBS
//!    2003 one (IIS SMTP) picks up files of any extension there, not only `*.eml`. It is
//!    inside the pickup folder so that the rename below stays on one file system.
//! 2. *Journal*: an empty marker `<state_dir>/pickup-journal/<name>` is written and
//!    fsynced. A marker whose staged file is gone means "renamed": the message reached the
//!    pickup folder even when the pickup service has already consumed the `.eml`.
//! 3. *Publish*: the staged file is renamed to `<pickup>/<name>.eml` (atomic) and both
//!    folders are fsynced.
//!
//! The pass then records the delivery in the ledger and calls [`Pickup::settle`], which
//! removes the marker. Before a staged file is (re)written, any marker for it is removed
//! first, so a marker never outlives a staged file that did not make it. A crash at any
//! point is safe: before the marker, the staged file is stale and [`Pickup::clean_stale`]
//! removes it (the message is still on the POP3 server and is written again); between
//! marker and rename, the staged file still exists, so the message is known not to be
//! published and is written again; after the rename, either `<name>.eml` still exists or
//! the marker without its staged file says it was published:
//! [`PickupOutcome::AlreadyThere`], recorded as delivered without a second copy.
//! (Without the marker, a file the pickup service consumed before the ledger recorded it
//! would be written again: the existence of `<name>.eml` alone cannot tell.)
//!
//! Envelope: the file starts with `X-Sender:` and one `X-Receiver:` line per recipient,
//! before the message's own header. This is how IIS SMTP's pickup folder (SBS 2003,
//! Exchange 2003) takes the SMTP envelope; without them it builds the envelope from the
//! message's `To:`/`Cc:`/`From:`, which for POP3 mail name the external recipients, and
//! would send the message back out to the internet instead of to the local mailbox.
//! (Exchange 2007 and later were not checked: their Pickup folder is meant for messages
//! whose header names the recipients, and their Replay folder has file requirements of
//! its own.) The message itself follows as downloaded (trace header prefix, then the
//! bytes, CRLF kept, no dot-stuffing: this is a file, not SMTP), except that when it would
//! start with an `X-Sender:`/`X-Receiver:` field of its own, one [`ENVELOPE_END`] line is
//! put in between, so that a sender cannot add recipients to the envelope block (a pickup
//! folder bypasses relay restrictions).
//!
//! Must never: create the pickup folder itself (a mistyped path would take mail nobody
//! picks up, then the POP3 copy would be deleted), let a partial file appear as `.eml` in
//! the pickup folder, write a second copy of a message whose earlier copy was published,
//! report a message as written before the file and its folder entry are durable, or let a
//! CR, LF or other control character of an address into the envelope lines.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::body::Body;
use crate::config::Config;

/// The subfolder of the pickup and failed-mail folders where files are staged.
pub const STAGING_DIR: &str = ".popbridge-tmp";
/// The folder under the state directory holding the publish markers.
pub const JOURNAL_DIR: &str = "pickup-journal";
/// Every file name written starts with this (then the account, then `+`).
const NAME_PREFIX: &str = "popbridge+";
/// Extension of staged files.
const TMP_EXT: &str = "tmp";
/// Written after the envelope lines when the message itself starts with such a line.
pub const ENVELOPE_END: &str = "X-Popbridge-Envelope: ends above\r\n";

/// Why a message could not be written anywhere (it must stay on the POP3 server).
#[derive(Debug, Error)]
pub enum PickupError {
    /// An envelope address would corrupt the file (control character) or none was given.
    #[error("unusable envelope for a pickup file: {0}")]
    Envelope(String),
    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file was renamed into the pickup folder but the folder could not be synced:
    /// it may be delivered, so no failed copy is made; a later pass finds it.
    #[error(
        "{} was published but its folder could not be synced ({source}); \
         the message stays on the server until a later pass confirms it",
        path.display()
    )]
    Unsynced {
        /// The published file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither the pickup folder nor the failed-mail folder could be written.
    #[error("{pickup}; the failed-mail copy failed too: {failed}")]
    Unwritable {
        /// Why the pickup folder failed.
        pickup: Box<PickupError>,
        /// Why the failed-mail folder failed.
        failed: Box<PickupError>,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PickupError + 'a {
    move |source| PickupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickupOutcome {
    /// Written and published as this `.eml` file.
    Delivered(PathBuf),
    /// An earlier attempt already published it (this file, which the pickup service may
    /// already have consumed); nothing was written.
    AlreadyThere(PathBuf),
    /// Not written to the pickup folder; a copy was written to the failed-mail folder.
    Failed {
        /// The copy in the failed-mail folder.
        path: PathBuf,
        /// Why the pickup folder failed.
        error: String,
    },
}

/// A message written to the staging folder and not yet published (see `Pickup::stage`, a test hook).
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    marker: PathBuf,
}

impl Staged {
    /// The staged file.
    pub fn path(&self) -> &Path {
        &self.tmp
    }
}

/// A pickup folder with its failed-mail folder and its journal of published files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pickup {
    dir: PathBuf,
    failed_dir: PathBuf,
    journal: PathBuf,
    /// Permission bits of a published file (the pickup service must read it).
    mode: u32,
}

impl Pickup {
    /// A pickup target writing into `dir`, failed copies into `failed_dir`, and its
    /// publish markers into `journal` (a folder of the connector's state).
    pub fn new(dir: PathBuf, failed_dir: PathBuf, journal: PathBuf) -> Self {
        Self {
            dir,
            failed_dir,
            journal,
            mode: crate::config::DEFAULT_PICKUP_MODE,
        }
    }

    /// Published files get exactly `mode` (staged and failed-mail files stay `0600`).
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// The pickup target of a configuration, when its transport is a pickup folder.
    pub fn from_config(config: &Config) -> Option<Self> {
        let t = config.transport.pickup()?;
        Some(
            Self::new(
                t.dir.clone(),
                t.failed_dir.clone(),
                config.state_dir.join(JOURNAL_DIR),
            )
            .with_mode(t.mode),
        )
    }

    /// The pickup folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The failed-mail folder.
    pub fn failed_dir(&self) -> &Path {
        &self.failed_dir
    }

    /// The stable file name (without extension) of a message: account, readable key and a
    /// digest of both, so that two keys sanitised alike still get different names.
    pub fn file_name(account: &str, key: &str) -> String {
        let mut h = Sha256::new();
        h.update(account.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        let digest = hex::encode(&h.finalize()[..8]);
        format!(
            "{NAME_PREFIX}{}+{}+{digest}",
            sanitise(account, 64),
            sanitise(key, 60)
        )
    }

    /// Where the message with this key is (or was) published.
    pub fn delivered_path(&self, account: &str, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.eml", Self::file_name(account, key)))
    }

    /// Where the failed-mail copy of the message with this key goes.
    pub fn failed_path(&self, account: &str, key: &str) -> PathBuf {
        self.failed_dir
            .join(format!("{}.eml", Self::file_name(account, key)))
    }

    fn staging_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(STAGING_DIR).join(format!("{name}.{TMP_EXT}"))
    }

    fn marker_path(&self, name: &str) -> PathBuf {
        self.journal.join(name)
    }

    /// Writes a message into the pickup folder exactly once (see the module header).
    ///
    /// `AlreadyThere` when an earlier attempt published it. When the pickup folder cannot
    /// be written, a copy goes to the failed-mail folder (`Failed`); when that fails too,
    /// or the envelope is unusable, an error: the message must stay on the POP3 server.
    pub async fn deliver(
        &self,
        account: &str,
        key: &str,
        envelope_from: &str,
        recipients: &[String],
        prefix: &[u8],
        body: &Body,
    ) -> Result<PickupOutcome, PickupError> {
        let head = envelope_lines(envelope_from, recipients, first_line(prefix, body))?;
        let (name, published) = self.earlier(account, key).await?;
        if let Some(target) = published {
            // Still there (not yet consumed): make sure its folder entry is durable before
            // the ledger records it.
            if exists(&target).await.unwrap_or(false) {
                sync_dir(&self.dir)
                    .await
                    .map_err(|source| PickupError::Unsynced {
                        path: target.clone(),
                        source,
                    })?;
            }
            self.remove_failed_copy(account, key).await;
            return Ok(PickupOutcome::AlreadyThere(target));
        }
        let result = match self.stage_bytes(&name, &head, prefix, body).await {
            Ok(staged) => self.commit(staged).await,
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(path) => {
                self.remove_failed_copy(account, key).await;
                return Ok(PickupOutcome::Delivered(path));
            }
            Err(e @ PickupError::Unsynced { .. }) => return Err(e),
            Err(e) => e,
        };
        let failed = self.failed_path(account, key);
        match write_atomic(&self.failed_dir, &failed, &name, &head, prefix, body).await {
            Ok(()) => Ok(PickupOutcome::Failed {
                path: failed,
                error: error.to_string(),
            }),
            Err(f) => Err(PickupError::Unwritable {
                pickup: Box::new(error),
                failed: Box::new(f),
            }),
        }
    }

    /// The message's file name, and its path in the pickup folder when an earlier attempt
    /// published it (see [`Pickup::published`]).
    async fn earlier(
        &self,
        account: &str,
        key: &str,
    ) -> Result<(String, Option<PathBuf>), PickupError> {
        let name = Self::file_name(account, key);
        let target = self.delivered_path(account, key);
        let published = self.published(&name, &target).await?;
        Ok((name, published.then_some(target)))
    }

    /// True when an earlier attempt published the message: the `.eml` is there, or its
    /// marker is there without its staged file (the pickup service consumed the `.eml`).
    async fn published(&self, name: &str, target: &Path) -> Result<bool, PickupError> {
        if exists(target).await.map_err(io_err("look for", target))? {
            return Ok(true);
        }
        let marker = self.marker_path(name);
        if !exists(&marker).await.map_err(io_err("look for", &marker))? {
            return Ok(false);
        }
        let tmp = Self::staging_path(&self.dir, name);
        Ok(!exists(&tmp).await.map_err(io_err("look for", &tmp))?)
    }

    /// Step 1 only: writes the message to the staging folder and fsyncs it, without
    /// publishing it. [`Pickup::commit`] publishes it; dropping the result instead leaves
    /// what a crash before the rename leaves. The message is `body` alone (no prefix). A
    /// test hook (feature `test-hooks`): passes stage through [`Pickup::deliver`] only.
    #[cfg(any(test, feature = "test-hooks"))]
    pub async fn stage(
        &self,
        account: &str,
        key: &str,
        envelope_from: &str,
        recipients: &[String],
        body: &Body,
    ) -> Result<Staged, PickupError> {
        let head = envelope_lines(envelope_from, recipients, first_line(b"", body))?;
        let (name, published) = self.earlier(account, key).await?;
        if let Some(target) = published {
            return Err(PickupError::Io {
                action: "stage",
                path: target,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "already published"),
            });
        }
        self.stage_bytes(&name, &head, b"", body).await
    }

    async fn stage_bytes(
        &self,
        name: &str,
        head: &[u8],
        prefix: &[u8],
        body: &Body,
    ) -> Result<Staged, PickupError> {
        // The pickup folder must exist already: never create it (see the module header).
        let meta = tokio::fs::metadata(&self.dir)
            .await
            .map_err(io_err("use the pickup folder", &self.dir))?;
        if !meta.is_dir() {
            return Err(PickupError::Io {
                action: "use the pickup folder",
                path: self.dir.clone(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a folder"),
            });
        }
        // A marker left by an attempt that stopped before its rename must go before the
        // staged file is rewritten: if the rewrite failed and removed the staged file, the
        // marker alone would claim the message was published.
        let marker = self.remove_marker(name).await?;
        let tmp = Self::staging_path(&self.dir, name);
        write_staged(&tmp, head, prefix, body, self.mode).await?;
        Ok(Staged {
            tmp,
            target: self.dir.join(format!("{name}.eml")),
            marker,
        })
    }

    /// Removes the marker of the staged file `name` when there is one (syncing the journal
    /// folder then); returns its path either way.
    async fn remove_marker(&self, name: &str) -> Result<PathBuf, PickupError> {
        let marker = self.marker_path(name);
        match tokio::fs::remove_file(&marker).await {
            Ok(()) => sync_dir(&self.journal)
                .await
                .map_err(io_err("sync", &self.journal))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &marker)(e)),
        }
        Ok(marker)
    }

    /// Steps 2 and 3: records the marker, then renames the staged file into the pickup
    /// folder and syncs both folders. Returns the published file.
    pub async fn commit(&self, staged: Staged) -> Result<PathBuf, PickupError> {
        let Staged {
            tmp,
            target,
            marker,
        } = staged;
        if let Err(e) = write_marker(&self.journal, &marker).await {
            unstage(&marker, &tmp).await;
            return Err(e);
        }
        if let Err(source) = tokio::fs::rename(&tmp, &target).await {
            unstage(&marker, &tmp).await;
            return Err(PickupError::Io {
                action: "publish the message as",
                path: target,
                source,
            });
        }
        for dir in [self.dir.clone(), self.dir.join(STAGING_DIR)] {
            if let Err(source) = sync_dir(&dir).await {
                return Err(PickupError::Unsynced {
                    path: target,
                    source,
                });
            }
        }
        Ok(target)
    }

    /// Forgets the marker of a message once the ledger has recorded its delivery.
    pub async fn settle(&self, account: &str, key: &str) {
        let marker = self.marker_path(&Self::file_name(account, key));
        match tokio::fs::remove_file(&marker).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", marker.display()),
        }
    }

    /// Removes the staged files an interrupted earlier pass of `account` left behind (and
    /// their markers, marker first), in the pickup and failed-mail folders. Call it while
    /// holding the account's lock: a pass running at the same time would lose its file.
    pub async fn clean_stale(&self, account: &str) -> Result<usize, PickupError> {
        let prefix = format!("{NAME_PREFIX}{}+", sanitise(account, 64));
        let suffix = format!(".{TMP_EXT}");
        let mut removed = 0;
        for dir in [&self.dir, &self.failed_dir] {
            let staging = dir.join(STAGING_DIR);
            let mut rd = match tokio::fs::read_dir(&staging).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &staging)(e)),
            };
            while let Some(entry) = rd.next_entry().await.map_err(io_err("read", &staging))? {
                let file = entry.file_name();
                let Some(file) = file.to_str() else { continue };
                let Some(name) = file
                    .strip_prefix(prefix.as_str())
                    .and_then(|_| file.strip_suffix(suffix.as_str()))
                else {
                    continue;
                };
                // Markers belong to the pickup folder's staged files only.
                if dir == &self.dir {
                    self.remove_marker(name).await?;
                }
                let path = entry.path();
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(io_err("remove", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn remove_failed_copy(&self, account: &str, key: &str) {
        // The message is now in the pickup folder: a failed-mail copy an administrator
        // might resubmit would be a duplicate.
        let failed = self.failed_path(account, key);
        match tokio::fs::remove_file(&failed).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove the stale copy {}: {e}", failed.display()),
        }
    }
}

/// The first octets that will follow the envelope lines: the prefix's, else the message's.
fn first_line<'a>(prefix: &'a [u8], body: &'a Body) -> &'a [u8] {
    if prefix.is_empty() {
        body.head()
    } else {
        prefix
    }
}

/// True when `data` starts with an `X-Sender:` or `X-Receiver:` field (any case, blanks
/// before the colon allowed as in RFC 5322's obsolete syntax).
fn starts_with_envelope_field(data: &[u8]) -> bool {
    let line = &data[..data.len().min(64)];
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii_end();
    name.eq_ignore_ascii_case(b"x-sender") || name.eq_ignore_ascii_case(b"x-receiver")
}

/// The `X-Sender:`/`X-Receiver:` lines that carry the envelope (see the module header).
///
/// `next` is what follows them in the file. When it starts with an `X-Sender:` or
/// `X-Receiver:` field of its own (a message can carry any header), a separator field is
/// added: pickup services read the envelope from the block of such lines at the top of the
/// file, and an outside sender must not be able to extend that block with recipients of
/// its choice (the pickup folder bypasses relay restrictions).
fn envelope_lines(from: &str, recipients: &[String], next: &[u8]) -> Result<Vec<u8>, PickupError> {
    let bad = |a: &str| a.chars().any(|c| c.is_control());
    if bad(from) {
        return Err(PickupError::Envelope(format!(
            "sender {:?} contains a control character",
            from.escape_debug().to_string()
        )));
    }
    if recipients.is_empty() {
        return Err(PickupError::Envelope("no recipient".into()));
    }
    let sender = if from.is_empty() { "<>" } else { from };
    let mut out = format!("X-Sender: {sender}\r\n");
    for r in recipients {
        if r.is_empty() || bad(r) {
            return Err(PickupError::Envelope(format!(
                "recipient {:?} is empty or contains a control character",
                r.escape_debug().to_string()
            )));
        }
        out.push_str(&format!("X-Receiver: {r}\r\n"));
    }
    if starts_with_envelope_field(next) {
        out.push_str(ENVELOPE_END);
    }
    Ok(out.into_bytes())
}

/// Writes `head`, `prefix` and the body to `tmp` (creating its staging folder, `0700`) and
/// fsyncs the file and the folder; the file is `0600` while written, then gets `mode`.
/// Removes the partial file on failure.
async fn write_staged(
    tmp: &Path,
    head: &[u8],
    prefix: &[u8],
    body: &Body,
    mode: u32,
) -> Result<(), PickupError> {
    let staging = tmp.parent().unwrap_or(Path::new("."));
    crate::private::create_dir_all_async(staging)
        .await
        .map_err(io_err("create", staging))?;
    let result = async {
        let mut f = crate::private::create_async(tmp).await?;
        f.write_all(head).await?;
        f.write_all(prefix).await?;
        let mut r = body.reader().await?;
        tokio::io::copy(&mut r, &mut f).await?;
        f.flush().await?;
        f.sync_all().await?;
        let expected = (head.len() + prefix.len()) as u64 + body.len();
        let written = f.metadata().await?.len();
        if written != expected {
            return Err(io::Error::other(format!(
                "wrote {written} octets, expected {expected}"
            )));
        }
        if mode != crate::private::FILE_MODE {
            crate::private::set_mode(tmp, mode)?;
        }
        Ok(())
    }
    .await;
    if let Err(source) = result {
        let _ = tokio::fs::remove_file(tmp).await;
        return Err(PickupError::Io {
            action: "write",
            path: tmp.to_path_buf(),
            source,
        });
    }
    sync_dir(staging).await.map_err(io_err("sync", staging))
}

/// The same atomic write into a folder the connector owns (created when missing).
async fn write_atomic(
    dir: &Path,
    target: &Path,
    name: &str,
    head: &[u8],
    prefix: &[u8],
    body: &Body,
) -> Result<(), PickupError> {
    crate::private::create_dir_all_async(dir)
        .await
        .map_err(io_err("create", dir))?;
    let tmp = Pickup::staging_path(dir, name);
    write_staged(&tmp, head, prefix, body, crate::private::FILE_MODE).await?;
    if let Err(source) = tokio::fs::rename(&tmp, target).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_err("write", target)(source));
    }
    sync_dir(dir).await.map_err(io_err("sync", dir))
}

/// Removes a staged file that was not published, marker first: a marker whose staged
/// file is gone would mean "published". When the marker cannot be removed, the staged file
/// stays too (the pair still says "not published"; `clean_stale` retries).
async fn unstage(marker: &Path, tmp: &Path) {
    match tokio::fs::remove_file(marker).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!("cannot remove {}: {e}", marker.display());
            return;
        }
    }
    let _ = tokio::fs::remove_file(tmp).await;
}

/// Creates the marker file durably (file and folder fsynced).
async fn write_marker(journal: &Path, marker: &Path) -> Result<(), PickupError> {
    crate::private::create_dir_all_async(journal)
        .await
        .map_err(io_err("create", journal))?;
    let f = crate::private::create_async(marker)
        .await
        .map_err(io_err("create", marker))?;
    f.sync_all().await.map_err(io_err("sync", marker))?;
    sync_dir(journal).await.map_err(io_err("sync", journal))
}

/// Makes a folder's entries durable. File systems that cannot sync a folder (and
/// platforms where a folder cannot be opened) are accepted as they are.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = match tokio::fs::File::open(dir).await {
        Ok(d) => d,
        Err(e) if cfg!(unix) => return Err(e),
        Err(_) => return Ok(()),
    };
    match d.sync_all().await {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn exists(path: &Path) -> io::Result<bool> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        // A path through a regular file cannot exist.
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(false),
        Err(e) => Err(e),
    }
}

/// A file-name-safe rendering of `s`: ASCII letters, digits, `-`, `_` and `.` kept,
/// everything else `_`, at most `max` characters (names start with [`NAME_PREFIX`], so
/// never with a dot).
fn sanitise(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const MSG: &[u8] =
        b"From: a@example.net\r\nTo: b@example.net\r\nSubject: x\r\n\r\nline\r\n.\r\n";

    fn fixture() -> (tempfile::TempDir, Pickup) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("pickup")).unwrap();
        let p = Pickup::new(
            t.path().join("pickup"),
            t.path().join("state/failed"),
            t.path().join("state").join(JOURNAL_DIR),
        );
        (t, p)
    }

    fn body() -> Body {
        Body::from_bytes(Bytes::from_static(MSG))
    }

    fn rcpts() -> Vec<String> {
        vec!["alice@contoso.local".into(), "bob@contoso.local".into()]
    }

    fn eml_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn writes_envelope_lines_then_prefix_then_the_exact_bytes() {
        let (_t, p) = fixture();
        let out = p
            .deliver(
                "info",
                "u1",
                "a@example.net",
                &rcpts(),
                b"Received: x\r\n",
                &body(),
            )
            .await
            .unwrap();
        let PickupOutcome::Delivered(path) = out else {
            panic!("{out:?}")
        };
        assert_eq!(path, p.delivered_path("info", "u1"));
        assert!(path.extension().is_some_and(|e| e == "eml"));
        let mut expected = b"X-Sender: a@example.net\r\nX-Receiver: alice@contoso.local\r\n\
                             X-Receiver: bob@contoso.local\r\nReceived: x\r\n"
            .to_vec();
        expected.extend_from_slice(MSG);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(eml_files(p.dir()), [path]);
        assert_eq!(
            std::fs::read_dir(p.dir().join(STAGING_DIR))
                .unwrap()
                .count(),
            0,
            "nothing left staged"
        );
        p.settle("info", "u1").await;
        assert_eq!(std::fs::read_dir(&p.journal).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn the_null_sender_is_written_as_angle_brackets() {
        let (_t, p) = fixture();
        p.deliver("info", "u1", "", &rcpts()[..1], b"", &body())
            .await
            .unwrap();
        let text = std::fs::read(p.delivered_path("info", "u1")).unwrap();
        assert!(text.starts_with(b"X-Sender: <>\r\nX-Receiver: alice@contoso.local\r\nFrom:"));
    }

    #[tokio::test]
    async fn a_second_attempt_finds_the_published_file_and_writes_nothing() {
        let (_t, p) = fixture();
        let first = p
            .deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap();
        let again = p
            .deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap();
        assert_eq!(
            again,
            PickupOutcome::AlreadyThere(p.delivered_path("info", "u1"))
        );
        assert!(matches!(first, PickupOutcome::Delivered(_)));
        assert_eq!(eml_files(p.dir()).len(), 1);
    }

    #[tokio::test]
    async fn a_consumed_file_with_its_marker_still_counts_as_published() {
        let (_t, p) = fixture();
        p.deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap();
        // The pickup service took the file; the connector crashed before the ledger.
        std::fs::remove_file(p.delivered_path("info", "u1")).unwrap();
        let again = p
            .deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap();
        assert!(matches!(again, PickupOutcome::AlreadyThere(_)), "{again:?}");
        assert!(eml_files(p.dir()).is_empty(), "no second copy");
        // Once settled (ledger recorded), the key is forgotten here.
        p.settle("info", "u1").await;
        assert!(!p
            .published(
                &Pickup::file_name("info", "u1"),
                &p.delivered_path("info", "u1")
            )
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_crash_between_marker_and_rename_rewrites_the_message_once() {
        let (_t, p) = fixture();
        let staged = p
            .stage("info", "u1", "a@example.net", &rcpts(), &body())
            .await
            .unwrap();
        write_marker(&p.journal, &staged.marker).await.unwrap();
        drop(staged); // crash: marker written, rename not done
        let out = p
            .deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap();
        assert!(matches!(out, PickupOutcome::Delivered(_)), "{out:?}");
        assert_eq!(eml_files(p.dir()).len(), 1);
        // The same crash followed by the clean-up at the start of a pass.
        let staged = p
            .stage("info", "u2", "a@example.net", &rcpts(), &body())
            .await
            .unwrap();
        write_marker(&p.journal, &staged.marker).await.unwrap();
        assert_eq!(p.clean_stale("info").await.unwrap(), 1);
        assert!(!staged.marker.exists() && !staged.tmp.exists());
    }

    #[tokio::test]
    async fn clean_stale_removes_only_this_accounts_staged_files() {
        let (_t, p) = fixture();
        for (account, key) in [
            ("info", "u1"),
            ("info", "u/2"),
            ("info2", "u1"),
            ("sales", "u1"),
        ] {
            p.stage(account, key, "a@example.net", &rcpts(), &body())
                .await
                .unwrap();
        }
        std::fs::write(p.dir().join(STAGING_DIR).join("unrelated.tmp"), b"x").unwrap();
        assert_eq!(p.clean_stale("info").await.unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(p.dir().join(STAGING_DIR))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left.iter().any(|n| n.starts_with("popbridge+info2+")));
        assert!(left.iter().any(|n| n.starts_with("popbridge+sales+")));
        assert!(eml_files(p.dir()).is_empty());
        // Nothing staged, no folder: nothing to do.
        let (_t2, q) = fixture();
        assert_eq!(q.clean_stale("info").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_missing_pickup_folder_is_never_created_and_the_copy_goes_to_failed() {
        let (t, _) = fixture();
        let p = Pickup::new(
            t.path().join("no-such-pickup"),
            t.path().join("failed"),
            t.path().join("journal"),
        );
        let out = p
            .deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap();
        let PickupOutcome::Failed { path, error } = out else {
            panic!("{out:?}")
        };
        assert!(!t.path().join("no-such-pickup").exists());
        assert!(error.contains("no-such-pickup"), "{error}");
        assert_eq!(path, p.failed_path("info", "u1"));
        assert!(std::fs::read(&path).unwrap().ends_with(MSG));
        // Once the pickup folder exists, delivery works and the failed copy goes away.
        std::fs::create_dir(t.path().join("no-such-pickup")).unwrap();
        let out = p
            .deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap();
        assert!(matches!(out, PickupOutcome::Delivered(_)));
        assert!(!path.exists(), "stale failed copy removed");
    }

    #[tokio::test]
    async fn nowhere_to_write_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let p = Pickup::new(file.join("pickup"), file.join("failed"), t.path().join("j"));
        let e = p
            .deliver("info", "u1", "a@example.net", &rcpts(), b"", &body())
            .await
            .unwrap_err();
        assert!(matches!(e, PickupError::Unwritable { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("pickup") && text.contains("failed-mail copy failed"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn addresses_that_would_break_the_file_are_refused() {
        let (_t, p) = fixture();
        for (from, to) in [
            (
                "a@example.net\r\nX-Receiver: evil@example.net",
                "b@contoso.local",
            ),
            ("a@example.net", "b@contoso.local\nX: y"),
            ("a@example.net", ""),
        ] {
            let e = p
                .deliver("info", "u1", from, &[to.to_string()], b"", &body())
                .await
                .unwrap_err();
            assert!(matches!(e, PickupError::Envelope(_)), "{e}");
        }
        let e = p
            .deliver("info", "u1", "a@example.net", &[], b"", &body())
            .await
            .unwrap_err();
        assert!(matches!(e, PickupError::Envelope(_)));
        assert!(eml_files(p.dir()).is_empty());
    }

    #[tokio::test]
    async fn a_message_starting_with_its_own_envelope_lines_cannot_extend_ours() {
        let (_t, p) = fixture();
        let evil = b"x-receiver : victim@example.org\r\nX-Sender: spoof@example.org\r\n\
                     Subject: relay me\r\n\r\nhi\r\n";
        let body = Body::from_bytes(Bytes::from_static(evil));
        p.deliver("info", "u1", "a@example.net", &rcpts()[..1], b"", &body)
            .await
            .unwrap();
        let mut expected =
            b"X-Sender: a@example.net\r\nX-Receiver: alice@contoso.local\r\n".to_vec();
        expected.extend_from_slice(ENVELOPE_END.as_bytes());
        expected.extend_from_slice(evil);
        assert_eq!(
            std::fs::read(p.delivered_path("info", "u1")).unwrap(),
            expected
        );
        // Behind a trace header the message's fields are not at the top: nothing added.
        p.deliver(
            "info",
            "u2",
            "a@example.net",
            &rcpts()[..1],
            b"Received: x\r\n",
            &body,
        )
        .await
        .unwrap();
        let text = std::fs::read(p.delivered_path("info", "u2")).unwrap();
        assert!(text.starts_with(
            b"X-Sender: a@example.net\r\nX-Receiver: alice@contoso.local\r\nReceived: x\r\n"
        ));
        assert!(starts_with_envelope_field(b"X-SENDER:x"));
        assert!(!starts_with_envelope_field(b"X-Senders: x\r\n"));
        assert!(!starts_with_envelope_field(b"From: x-sender: y\r\n"));
        assert!(!starts_with_envelope_field(b""));
    }

    #[test]
    fn names_are_stable_safe_and_distinct_for_keys_sanitised_alike() {
        let a = Pickup::file_name("info", "a/b");
        assert_eq!(a, Pickup::file_name("info", "a/b"));
        assert_ne!(a, Pickup::file_name("info", "a_b"));
        assert_ne!(a, Pickup::file_name("info2", "a/b"));
        assert!(a.starts_with("popbridge+info+a_b+"), "{a}");
        let long = Pickup::file_name("info", &"x".repeat(500));
        assert!(long.len() < 120, "{}", long.len());
        let odd = Pickup::file_name("info", "../..\0\r\n%");
        assert!(odd
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-_.".contains(c)));
        assert!(odd.starts_with("popbridge+info+.._..____+"), "{odd}");
    }
}
