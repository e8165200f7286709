//! Helpers shared by poplab's test binaries: the real peers they need (skipping without
//! them), the `poplab` binary run to its end, the crate's folders and the runtime. They
//! never assert what a test checks, except [`connector_run`]'s documented pass.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs `poplab ARGS... FILES...` to its end: its exit code, standard output and error.
#[allow(dead_code)]
pub fn poplab_files(args: &[&str], files: &[PathBuf]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_poplab"))
        .args(args)
        .args(files)
        .output()
        .expect("run poplab");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `poplab ARGS...` to its end: its exit code, standard output and error.
#[allow(dead_code)]
pub fn poplab(args: &[&str]) -> (Option<i32>, String, String) {
    poplab_files(args, &[])
}

/// The scenario file `name` under `cases/`.
#[allow(dead_code)]
pub fn case(name: &str) -> PathBuf {
    root().join("cases").join(name)
}

/// `poplab run --connector-cmd TEMPLATE` ({script} replaced by `script`) on the named
/// cases: it must exit 0 with every case passed. Its standard output.
#[allow(dead_code)]
pub fn connector_run(template: &str, script: &Path, cases: &[&str]) -> String {
    let template = template.replace("{script}", &script.display().to_string());
    let files: Vec<PathBuf> = cases.iter().map(|c| case(c)).collect();
    let (code, stdout, stderr) = poplab_files(&["run", "--connector-cmd", &template], &files);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let passed = format!("{} passed, 0 failed", cases.len());
    assert!(stdout.trim_end().ends_with(&passed), "{stdout}");
    stdout
}

/// [`connector_run`] on the case `first` and drop-before-quit.toml: the whole standard
/// output, then its two reports.
#[allow(dead_code)]
pub fn with_drop_before_quit(
    template: &str,
    script: &Path,
    first: &str,
) -> (String, String, String) {
    let stdout = connector_run(template, script, &[first, "drop-before-quit.toml"]);
    let (first, drop) = stdout
        .split_once("== drop-before-quit")
        .expect("both reports");
    let (first, drop) = (first.to_string(), drop.to_string());
    (stdout, first, drop)
}

/// A copy of basic-delivery.toml in `dir` with `hello` expected to stay on the server (it
/// is delivered): one expectation made wrong, on its line 37.
#[allow(dead_code)]
pub fn wrong_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(case("basic-delivery.toml")).unwrap();
    let wrong = text.replace("hello = \"delivered\"", "hello = \"left\"");
    assert_ne!(text, wrong, "basic-delivery.toml changed: update this test");
    let path = dir.join("basic-delivery-wrong.toml");
    std::fs::write(&path, wrong).unwrap();
    path
}

/// A multi-threaded tokio runtime of two workers.
#[allow(dead_code)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A finished process's standard output then standard error, as text.
#[allow(dead_code)]
pub fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
