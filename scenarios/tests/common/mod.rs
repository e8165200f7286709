//! Helpers shared by poplab's test binaries that drive real peers.

use std::path::{Path, PathBuf};

use mock_core::test_support::skip;

/// How a skip ends its message here.
const TO_FAIL: &str = "(set POPBRIDGE_REQUIRE_PEERS=1 to fail instead)";

/// An executable `name` on PATH.
pub fn tool(name: &str) -> Option<PathBuf> {
    mock_core::test_support::tool(name, &[])
}

/// True when fetchmail is installed; skips with a printed reason otherwise, or fails when
/// `POPBRIDGE_REQUIRE_PEERS=1` (CI).
#[allow(dead_code)]
pub fn require_fetchmail() -> bool {
    require_tool("fetchmail")
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
    skip(
        &format!("{missing:?} required (POPBRIDGE_REQUIRE_PEERS=1) but not installed"),
        &format!("{missing:?} not installed {TO_FAIL}"),
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
    skip(
        &format!("{name} is required (POPBRIDGE_REQUIRE_PEERS=1) but not installed"),
        &format!("{name} not installed {TO_FAIL}"),
    );
    false
}
