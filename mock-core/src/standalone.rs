//! What the standalone mock binaries share: size arguments, a loopback-only listener, a
//! test CA written for clients, waiting to be stopped, and a thin `main` that maps errors
//! to an exit code.
//!
//! Must never: be used by library code paths (it prints and reads standard input).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::pki::TestPki;

/// Parses a size as the connector's configuration writes it: a whole number with an
/// optional unit (`B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`, `T`/`TB`/`TiB`; binary,
/// case-insensitive, an optional space before the unit) into octets: `2048`, `10KB`, `1GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, u32); 14] = [
        ("", 0),
        ("B", 0),
        ("K", 10),
        ("KB", 10),
        ("KIB", 10),
        ("M", 20),
        ("MB", 20),
        ("MIB", 20),
        ("G", 30),
        ("GB", 30),
        ("GIB", 30),
        ("T", 40),
        ("TB", 40),
        ("TIB", 40),
    ];
    let bad = || format!("not a size: {s:?} (try 2048, 10KB, 10MB or 1GB)");
    let t = s.trim().to_ascii_uppercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit = unit.trim_start();
    let shift = match UNITS.iter().find(|(u, _)| *u == unit) {
        Some((_, shift)) => *shift,
        None => return Err(bad()),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size too large: {s}"))
}

/// Binds a loopback listener for a standalone mock; any other address is refused.
pub async fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("refusing to listen on {addr}: only loopback addresses are allowed");
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// A fresh loopback PKI whose CA is written to `path` (or `default_name` in the temporary
/// directory) for clients to trust; returns the PKI and where its CA went.
pub fn write_test_ca(
    path: Option<&Path>,
    default_name: &str,
) -> anyhow::Result<(TestPki, PathBuf)> {
    let pki = TestPki::localhost().context("making test certificates")?;
    let path = path.map_or_else(
        || std::env::temp_dir().join(default_name),
        Path::to_path_buf,
    );
    std::fs::write(&path, &pki.ca_pem).with_context(|| format!("writing {}", path.display()))?;
    Ok((pki, path))
}

/// Returns when standard input reaches end of file, on Ctrl-C, or after `exit_after`
/// seconds (0: no deadline).
pub async fn wait_for_stop(exit_after: u64) {
    let stdin_eof = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let deadline = async {
        if exit_after == 0 {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(Duration::from_secs(exit_after)).await
        }
    };
    tokio::select! {
        _ = stdin_eof => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = deadline => {}
    }
}

/// The exit codes of the standalone mock servers (`mock-pop3`, `mock-smtp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// 0: served until told to stop, and printed the final state.
    Served = 0,
    /// 2: could not start (bad arguments, files, no runtime) or failed while serving.
    Failed = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Runs `fut` on a multi-threaded runtime; an error is printed as `name: error` and exits
/// [`Exit::Failed`].
pub fn run_main(name: &str, fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return Exit::Failed.into();
        }
    };
    match rt.block_on(fut) {
        Ok(()) => Exit::Served.into(),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            Exit::Failed.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("10kb"), Ok(10 * 1024));
        assert_eq!(parse_size(" 10MB "), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("1 gib"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("512 K"), Ok(512 * 1024));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1.5MB").is_err());
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999MB").is_err());
    }
}
