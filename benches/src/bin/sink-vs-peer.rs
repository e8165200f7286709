//! `sink-vs-peer`: the mock SMTP server as a benchmark sink, measured against Postfix's
//! `smtp-sink` in the same run, both loaded by Postfix's `smtp-source`.
//!
//! Prints a table (messages/s, MB/s, ratio to the peer). Bounded: a fixed number of
//! messages per round and a timeout per round. Loopback only.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mock_smtp::{CaptureMode, MockSmtp};

/// Compares the mock Exchange sink with Postfix smtp-sink under the same smtp-source load.
#[derive(Parser, Debug)]
#[command(about, long_about)]
struct Args {
    /// Messages per round.
    #[arg(long, default_value_t = 2000)]
    messages: u32,
    /// Message size in octets.
    #[arg(long, default_value_t = 10 * 1024)]
    size: u32,
    /// Parallel SMTP sessions.
    #[arg(long, default_value_t = 4)]
    sessions: u32,
    /// Rounds per server (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

fn tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var("PATH").unwrap_or_default();
    dirs.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin".into(), "/usr/lib/postfix/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<SocketAddr> {
    let l = StdListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Runs smtp-source against `addr`, returns the elapsed time.
fn load(source: &PathBuf, addr: SocketAddr, a: &Args) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(source)
        .args([
            "-d",
            "-c",
            "-s",
            &a.sessions.to_string(),
            "-m",
            &a.messages.to_string(),
        ])
        .args([
            "-l",
            &a.size.to_string(),
            "-f",
            "bench@example.net",
            "-t",
            "sink@contoso.local",
        ])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting smtp-source")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("smtp-source failed: {status}");
            }
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("smtp-source did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_smtp_sink(bin: &PathBuf) -> Result<(Sink, SocketAddr)> {
    let addr = free_port()?;
    let mut cmd = Command::new(bin);
    // smtp-sink refuses to run as root without a user to drop to.
    if is_root() {
        cmd.args(["-u", "postfix"]);
    }
    let child = cmd
        .arg(addr.to_string())
        .arg("256")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let sink = Sink(child);
    // It has no readiness signal: poll its port, bounded.
    for _ in 0..500 {
        if StdStream::connect(addr).is_ok() {
            return Ok((sink, addr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("smtp-sink did not start listening on {addr}")
}

/// True when running as uid 0 (read from /proc, no libc call).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(a: Args) -> Result<()> {
    let source =
        tool("smtp-source").context("smtp-source not installed (Debian package postfix)")?;
    let sink_bin = tool("smtp-sink").context("smtp-sink not installed (Debian package postfix)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mock = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok(
            MockSmtp::builder()
                .capture(CaptureMode::CountOnly)
                .record_transcript(false)
                .spawn(l),
        )
    })?;
    let mock_addr = mock.addr().context("mock address")?;
    let (_sink, sink_addr) = start_smtp_sink(&sink_bin)?;
    let mut mock_t = Vec::new();
    let mut peer_t = Vec::new();
    // Interleave rounds so both see the same machine conditions.
    for _ in 0..a.rounds {
        mock_t.push(load(&source, mock_addr, &a)?);
        peer_t.push(load(&source, sink_addr, &a)?);
    }
    let accepted = mock.counts().accepted;
    let expected = u64::from(a.messages) * u64::from(a.rounds);
    if accepted != expected {
        bail!("the mock accepted {accepted} messages, expected {expected}");
    }
    let (m, p) = (median(mock_t), median(peer_t));
    let rate = |d: Duration| f64::from(a.messages) / d.as_secs_f64();
    let mbps = |d: Duration| f64::from(a.messages) * f64::from(a.size) / d.as_secs_f64() / 1e6;
    println!(
        "smtp-source: {} messages x {} B over {} sessions, median of {} rounds",
        a.messages, a.size, a.sessions, a.rounds
    );
    println!("| sink | msg/s | MB/s | vs smtp-sink |");
    println!("|---|---|---|---|");
    println!(
        "| mock-smtp (Exchange-like, count-only) | {:.0} | {:.1} | {:.2} |",
        rate(m),
        mbps(m),
        rate(m) / rate(p)
    );
    println!(
        "| Postfix smtp-sink | {:.0} | {:.1} | 1.00 |",
        rate(p),
        mbps(p)
    );
    rt.block_on(mock.shutdown());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sink-vs-peer: {e:#}");
            ExitCode::from(2)
        }
    }
}
