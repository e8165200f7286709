//! What the standalone mock binaries share: size arguments, waiting to be stopped, and a
//! thin `main` that maps errors to an exit code.
//!
//! Must never: be used by library code paths (it prints and reads standard input).

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Parses `2048`, `10KB`, `10MB` (binary units) into octets.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let (num, mul) = if let Some(n) = t.strip_suffix("MB") {
        (n, 1024 * 1024)
    } else if let Some(n) = t.strip_suffix("KB") {
        (n, 1024)
    } else {
        (t.strip_suffix('B').unwrap_or(&t), 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 2048, 10KB or 10MB)"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("size too large: {s}"))
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

/// Runs `fut` on a multi-threaded runtime; an error is printed as `name: error` and exits 2.
pub fn run_main(name: &str, fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(2)
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
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999999999999MB").is_err());
    }
}
