//! A real PostgreSQL server for the cluster tests, private to one test.
//!
//! `initdb` and `pg_ctl` from Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`,
//! the newest version found) create and run a cluster in a temporary directory, listening
//! only on a unix socket in that directory (no TCP), with trust authentication for the
//! `postgres` user. As root they run as the `postgres` system user (`runuser`), which owns
//! the directory; otherwise as the test's own user. `pg_ctl -w` is the readiness signal.
//! The server is stopped (immediate mode) when the fixture is dropped, also on a panic.
//! A missing server skips the test, unless `POPBRIDGE_REQUIRE_PEERS=1`.
//!
//! `fsync` is off: the tests never crash the machine, and a clean stop or restart still
//! writes everything. Commit timestamps are kept (`track_commit_timestamp`), so a test
//! can tell when a row's transaction committed.
//!
//! Must never: listen on TCP, touch a cluster it did not create, wait for the server
//! other than through `pg_ctl -w` (bounded by its `-t`), or skip silently.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mock_core::test_support::{self, is_executable, unavailable};

/// Where Debian installs each PostgreSQL version's server programs.
const PG_LIB: &str = "/usr/lib/postgresql";
/// Seconds `pg_ctl` waits for a start or stop.
const PG_CTL_WAIT: &str = "60";

/// A PostgreSQL server of one test.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `runuser` when running as root: the server refuses to run as root.
    runuser: Option<PathBuf>,
}

impl Postgres {
    /// A new, running server, or `None` when the test is skipped.
    pub fn start() -> Option<Self> {
        let Some(bin) = server_bin() else {
            return unavailable(
                format!("PostgreSQL is required (POPBRIDGE_REQUIRE_PEERS=1) but no {PG_LIB}/*/bin/initdb and pg_ctl are installed (package postgresql)"),
                format!("PostgreSQL not installed: no {PG_LIB}/*/bin/initdb and pg_ctl (package postgresql)"),
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("popbridge-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        // A new directory belongs to the effective uid.
        let runuser = if fs::metadata(dir.path()).unwrap().uid() == 0 {
            let runuser = test_support::require("runuser", &["/usr/sbin", "/sbin"])?;
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .output()
                .unwrap();
            if !chown.status.success() {
                return unavailable(
                    "a system user postgres is required (POPBRIDGE_REQUIRE_PEERS=1): PostgreSQL refuses to run as root".into(),
                    "no system user postgres to run PostgreSQL as (it refuses to run as root)".into(),
                );
            }
            Some(runuser)
        } else {
            None
        };
        let pg = Self { dir, bin, runuser };
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(pg.data()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        pg.run(initdb);
        pg.start_server();
        Some(pg)
    }

    /// The connection URL: the `postgres` database as `postgres`, over the unix socket.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@/postgres?host={}",
            self.dir.path().display()
        )
    }

    /// The server's unix socket (for a proxy in front of it).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join(".s.PGSQL.5432")
    }

    /// The harness's link proxy (`mock_core::proxy`, as poplab uses it) from a loopback
    /// port to [`Postgres::socket`], unshaped: a test cuts it and restores it
    /// ([`mock_core::proxy::ProxyHandle::cut`]). Connect through it with
    /// [`Postgres::url_via`].
    pub async fn link(&self) -> mock_core::proxy::ProxyHandle {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        mock_core::proxy::spawn_to_unix(listener, self.socket(), Default::default()).unwrap()
    }

    /// The connection URL through a loopback TCP address that forwards to
    /// [`Postgres::socket`].
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        format!("postgresql://postgres@{addr}/postgres")
    }

    /// Stops the server (fast mode: sessions are ended, nothing is lost).
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// Starts the server again after [`Postgres::stop`].
    pub fn start_server(&self) {
        let options = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c track_commit_timestamp=on",
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let log = log.to_str().unwrap();
        self.pg_ctl(&["start", "-l", log, "-o", &options]);
    }

    /// Stops and starts the server: every session is ended, the data stays.
    pub fn restart(&self) {
        self.stop();
        self.start_server();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `pg_ctl -D DATA -w` with `args`; panics when it fails.
    fn pg_ctl(&self, args: &[&str]) {
        self.run(self.pg_ctl_command(args));
    }

    fn pg_ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", PG_CTL_WAIT])
            .args(args);
        cmd
    }

    /// Runs one of the server's programs to its end; panics with its output (and the
    /// server's log) when it fails.
    fn run(&self, mut cmd: Command) {
        let out = cmd.output().unwrap();
        if !out.status.success() {
            panic!("{cmd:?} failed: {}", self.describe(&out));
        }
    }

    /// One of the server's programs, as the user that owns the directory.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match &self.runuser {
            Some(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The postgres user may not enter the test's working directory.
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C");
        cmd
    }

    fn describe(&self, out: &Output) -> String {
        let log = fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        format!(
            "{}\nstdout: {}\nstderr: {}\nserver log:\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Not running (a test stopped it) is fine.
        let _ = self.pg_ctl_command(&["stop", "-m", "immediate"]).output();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `pg_ctl`.
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir(PG_LIB)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            let complete = ["initdb", "pg_ctl"]
                .iter()
                .all(|p| is_executable(&Path::new(&bin).join(p)));
            complete.then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}
