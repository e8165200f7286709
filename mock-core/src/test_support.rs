//! For the test suites that drive real programs (fetchmail, swaks, Dovecot, ...): finding
//! a program, skipping a test whose peer is missing, unless `POPBRIDGE_REQUIRE_PEERS=1`,
//! which turns every skip into a failure (CI), and running a client program to its end
//! under a time limit.
//!
//! Must never: be a normal dependency (test suites take it as a dev-dependency with the
//! `test-support` feature), skip silently (a skip prints `skipping: ...`), or wait for a
//! client without a limit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;

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

/// How a client program's run ended.
#[derive(Debug)]
pub struct ClientRun {
    /// The command line, for diagnostics.
    pub cmdline: String,
    /// `None` when the client was killed at the time limit.
    pub status: Option<ExitStatus>,
    /// What it wrote to standard output.
    pub stdout: String,
    /// What it wrote to standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
    limit: Duration,
}

impl ClientRun {
    /// True when it exited with status 0.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The `command:` and `status:` lines of a failure's diagnostics.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(st) => st.to_string(),
            None => format!("killed after {:?} (timeout)", self.limit),
        };
        format!(
            "command: {}\nstatus: {status} after {:?}\n",
            self.cmdline, self.elapsed
        )
    }
}

/// `program` with a minimal, predictable environment: only `PATH` (as given), `HOME`
/// (`home`) and `LC_ALL=C`.
pub fn clean_command(program: &Path, home: &Path, path: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("LC_ALL", "C");
    cmd
}

/// Runs `cmd` in `dir` to completion, killed after `limit`, with standard input closed and
/// its output going to `{label}.stdout` and `{label}.stderr` there.
pub async fn run_client(mut cmd: Command, dir: &Path, label: &str, limit: Duration) -> ClientRun {
    let out_path = dir.join(format!("{label}.stdout"));
    let err_path = dir.join(format!("{label}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .current_dir(dir)
        .kill_on_drop(true);
    let cmdline = format!("{:?}", cmd.as_std());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => Some(status.unwrap()),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    ClientRun {
        cmdline,
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: started.elapsed(),
        limit,
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
