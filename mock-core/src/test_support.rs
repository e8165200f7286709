//! For the test suites that drive real programs (fetchmail, swaks, Dovecot, ...): finding
//! a program, and skipping a test whose peer is missing, unless
//! `POPBRIDGE_REQUIRE_PEERS=1`, which turns every skip into a failure (CI).
//!
//! Must never: be a normal dependency (test suites take it as a dev-dependency with the
//! `test-support` feature), or skip silently (a skip prints `skipping: ...`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `PATH` searched when the variable is unset.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// True when `POPBRIDGE_REQUIRE_PEERS=1`: a missing peer fails the test.
pub fn required() -> bool {
    std::env::var("POPBRIDGE_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// A missing peer: panics with `required_msg` when peers are required, else prints
/// `skipping: {skip_msg}`.
pub fn skip(required_msg: &str, skip_msg: &str) {
    if required() {
        panic!("{required_msg}");
    }
    eprintln!("skipping: {skip_msg}");
}

/// Skips the test (returns `None`) or, with `POPBRIDGE_REQUIRE_PEERS=1`, fails it.
pub fn unavailable<T>(required_msg: String, skip_msg: String) -> Option<T> {
    skip(&required_msg, &skip_msg);
    None
}

/// True for a regular file with an execute bit.
pub fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the executable `name` on `PATH`, then in `extra_dirs`.
pub fn tool(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// The program's path (see [`tool`]), or `None` (test skipped: `{name} not installed`);
/// fails instead when `POPBRIDGE_REQUIRE_PEERS=1`.
pub fn require(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    match tool(name, extra_dirs) {
        Some(p) => Some(p),
        None => unavailable(
            format!("{name} is required (POPBRIDGE_REQUIRE_PEERS=1) but not installed"),
            format!("{name} not installed"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_program_in_an_extra_dir_only_when_executable() {
        let dir = std::env::temp_dir().join(format!("mock-core-tool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("mock-core-test-prog");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        let extra = [dir.to_str().unwrap()];
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(tool("mock-core-test-prog", &extra), None);
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(tool("mock-core-test-prog", &extra), Some(prog.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
