//! Files at rest. What popbridge keeps under `state_dir` holds mail (quarantine copies,
//! spooled messages, failed-mail copies) and delivery state (the ledger, the pickup
//! journal, locks, the trigger socket), so it is private to popbridge's own user.
//!
//! Responsible for: creating directories `0700` and files `0600`, set explicitly rather than
//! left to the umask; finding and tightening an existing `state_dir` that others can read.
//! Must never: widen a mode, follow a symbolic link while tightening, or touch anything
//! outside the directory it was given.

use std::io;
use std::path::{Path, PathBuf};

/// The mode of every directory popbridge creates for itself.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file popbridge writes for itself.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parent, each new directory `0700`.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, DIR_MODE);
    b.create(path)
}

/// [`create_dir_all`] for async code.
pub async fn create_dir_all_async(path: &Path) -> io::Result<()> {
    let mut b = tokio::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(DIR_MODE);
    b.create(path).await
}

/// Open options that create a file `0600` (the caller adds read/write/create flags).
pub fn open_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o
}

/// [`open_options`] for async code.
pub fn open_options_async() -> tokio::fs::OpenOptions {
    let mut o = tokio::fs::OpenOptions::new();
    #[cfg(unix)]
    o.mode(FILE_MODE);
    o
}

/// Creates `path` (emptying it if it exists) for writing, `0600` when new.
pub async fn create_async(path: &Path) -> io::Result<tokio::fs::File> {
    open_options_async()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .await
}

/// Sets `path`'s permission bits to exactly `mode` (no-op off Unix).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Writes `bytes` to `path` (created or truncated) as a private file: `0600` from its
/// creation, folders made for it `0700`.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir_all(dir)?;
    }
    let mut f = open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)?;
    // An existing file keeps its mode through `open`: make it private too.
    set_mode(path, FILE_MODE)
}

/// True when users other than the owner can list or read `dir` (mail written into it
/// deserves a warning).
pub fn readable_by_others(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        false
    }
}

/// A path whose mode was tightened, and the mode it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// The file or directory.
    pub path: PathBuf,
    /// Its permission bits before, e.g. `0o755`.
    pub was: u32,
}

/// Why `state_dir` could not be made private.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} is readable by other users (mode {was:04o}) and popbridge cannot make it private ({source}): \
     as its owner, run chmod -R go-rwx {}",
    path.display(),
    root.display()
)]
pub struct TightenError {
    /// The state directory.
    pub root: PathBuf,
    /// The entry that could not be changed.
    pub path: PathBuf,
    /// Its mode.
    pub was: u32,
    /// Why.
    pub source: io::Error,
}

/// Creates `state_dir` (`0700`) when missing; otherwise removes group and other access
/// from it and from everything under it (directories `0700`, files `0600`), skipping
/// `except` (a pickup folder inside it keeps the mode its service needs) and symbolic links.
/// Returns what was changed, for a warning.
pub fn secure_state_dir(
    state_dir: &Path,
    except: &[&Path],
) -> Result<Vec<Tightened>, TightenError> {
    let fail = |path: &Path, was: u32, source: io::Error| TightenError {
        root: state_dir.to_path_buf(),
        path: path.to_path_buf(),
        was,
        source,
    };
    if std::fs::symlink_metadata(state_dir).is_err() {
        create_dir_all(state_dir).map_err(|e| fail(state_dir, 0, e))?;
        return Ok(Vec::new());
    }
    let mut changed = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Depth-first with an explicit stack; a directory is tightened before it is read.
        let mut stack = vec![state_dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            if except.contains(&path.as_path()) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ty = meta.file_type();
            if ty.is_symlink() {
                continue;
            }
            let was = meta.permissions().mode() & 0o7777;
            if was & 0o077 != 0 {
                let want = was & 0o700 & !0o077;
                let want = if ty.is_dir() { want | DIR_MODE } else { want };
                set_mode(&path, want).map_err(|e| fail(&path, was, e))?;
                changed.push(Tightened {
                    path: path.clone(),
                    was,
                });
            }
            if ty.is_dir() {
                let entries = std::fs::read_dir(&path).map_err(|e| fail(&path, was, e))?;
                for e in entries.flatten() {
                    stack.push(e.path());
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = except;
    Ok(changed)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_directories_and_files_are_private_whatever_the_umask_allows() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&t.path().join(d)), 0o700, "{d}");
        }
        let f = deep.join("f");
        open_options().write(true).create(true).open(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn a_loose_state_dir_is_tightened_except_the_pickup_folder_and_links() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("state");
        std::fs::create_dir_all(s.join("quarantine/acct")).unwrap();
        std::fs::create_dir_all(s.join("pickup")).unwrap();
        std::fs::write(s.join("quarantine/acct/m.eml"), b"mail").unwrap();
        std::fs::write(s.join("pickup/x.eml"), b"mail").unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, s.join("link")).unwrap();
        for p in [
            &s,
            &s.join("quarantine"),
            &s.join("quarantine/acct"),
            &s.join("pickup"),
        ] {
            set_mode(p, 0o755).unwrap();
        }
        for p in [
            &s.join("quarantine/acct/m.eml"),
            &s.join("pickup/x.eml"),
            &outside,
        ] {
            set_mode(p, 0o644).unwrap();
        }
        let pickup = s.join("pickup");
        let changed = secure_state_dir(&s, &[&pickup]).unwrap();
        assert_eq!(changed.len(), 4, "{changed:?}");
        assert!(changed.iter().all(|c| c.was == 0o755 || c.was == 0o644));
        assert_eq!(mode(&s), 0o700);
        assert_eq!(mode(&s.join("quarantine/acct")), 0o700);
        assert_eq!(mode(&s.join("quarantine/acct/m.eml")), 0o600);
        assert_eq!(mode(&pickup), 0o755, "the pickup folder keeps its mode");
        assert_eq!(mode(&pickup.join("x.eml")), 0o644);
        assert_eq!(mode(&outside), 0o644, "a link is not followed");
        // A second run has nothing to do.
        assert!(secure_state_dir(&s, &[&pickup]).unwrap().is_empty());
    }

    #[test]
    fn a_missing_state_dir_is_created_private() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("new/state");
        assert!(secure_state_dir(&s, &[]).unwrap().is_empty());
        assert_eq!(mode(&s), 0o700);
    }
}
