//! Helpers shared by poplab's test binaries that drive real peers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An executable `name` on PATH.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// True when fetchmail is installed; skips with a printed reason otherwise, or fails when
/// `POPBRIDGE_REQUIRE_PEERS=1` (CI).
#[allow(dead_code)]
pub fn require_fetchmail() -> bool {
    if tool("fetchmail").is_some() {
        return true;
    }
    assert!(
        !std::env::var("POPBRIDGE_REQUIRE_PEERS").is_ok_and(|v| v == "1"),
        "fetchmail is required (POPBRIDGE_REQUIRE_PEERS=1) but not installed"
    );
    eprintln!("skipping: fetchmail not installed (set POPBRIDGE_REQUIRE_PEERS=1 to fail instead)");
    false
}

/// True when every one of `names` is installed; skips with a printed reason otherwise, or
/// fails when `POPBRIDGE_REQUIRE_PEERS=1` (CI).
#[allow(dead_code)]
pub fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| tool(n).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !std::env::var("POPBRIDGE_REQUIRE_PEERS").is_ok_and(|v| v == "1"),
        "{missing:?} required (POPBRIDGE_REQUIRE_PEERS=1) but not installed"
    );
    eprintln!(
        "skipping: {missing:?} not installed (set POPBRIDGE_REQUIRE_PEERS=1 to fail instead)"
    );
    false
}

/// The scenarios crate's folder.
#[allow(dead_code)]
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// True when `name` is installed; skips with a printed reason otherwise, or fails when
/// `POPBRIDGE_REQUIRE_PEERS=1` (CI).
#[allow(dead_code)]
pub fn require_tool(name: &str) -> bool {
    if tool(name).is_some() {
        return true;
    }
    assert!(
        !std::env::var("POPBRIDGE_REQUIRE_PEERS").is_ok_and(|v| v == "1"),
        "{name} is required (POPBRIDGE_REQUIRE_PEERS=1) but not installed"
    );
    eprintln!("skipping: {name} not installed (set POPBRIDGE_REQUIRE_PEERS=1 to fail instead)");
    false
}
