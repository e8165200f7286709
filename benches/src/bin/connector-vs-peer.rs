//! `connector-vs-peer`: popbridge against fetchmail in the same run, both moving the same
//! mailbox from the mock POP3 server to the mock SMTP sink (count-only) over loopback.
//!
//! Prints a table (messages/s, MB/s, ratio to fetchmail). Bounded: fixed message counts,
//! a timeout per round. Loopback only.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mock_pop3::{Mailbox, MockPop3, MockPop3Handle};
use mock_smtp::{CaptureMode, MockSmtp};
use popbridge::config::Config;
use popbridge::events::EventSink;
use popbridge::ledger::Ledger;
use popbridge::net::TcpDialer;

/// Compares popbridge with fetchmail moving the same mailbox between the mocks.
#[derive(Parser, Debug)]
#[command(about, long_about)]
struct Args {
    /// Messages per round.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Message size in octets.
    #[arg(long, default_value_t = 10 * 1024)]
    size: usize,
    /// Rounds per connector (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

const PASSWORD: &str = "bench-password";

async fn source(a: &Args) -> Result<MockPop3Handle> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(MockPop3::builder()
        .mailbox(Mailbox::new("bench", PASSWORD).with_demo_messages(a.messages, a.size))
        .record_transcript(false)
        .spawn(l))
}

async fn popbridge_round(a: &Args, smtp_port: u16, dir: &std::path::Path) -> Result<Duration> {
    let pop = source(a).await?;
    let state = tempfile::tempdir_in(dir)?;
    let text = format!(
        "state_dir = {state:?}\n[transport]\nhost = \"127.0.0.1\"\nport = {smtp_port}\n[limits]\nmax_messages_per_session = 100000\n\
         [[account]]\nname = \"bench\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_plaintext = true\n\
         username = \"bench\"\npassword = \"{PASSWORD}\"\ndeliver_to = \"sink@contoso.local\"\n",
        pop.addr().context("pop3 address")?.port(),
        state = state.path().display().to_string(),
    );
    let config = Config::from_str(&text, &dir.join("bench.toml"))?;
    let ledger = Arc::new(Mutex::new(Ledger::open(&config.state_dir)?));
    let accounts = config.accounts.clone();
    let start = Instant::now();
    let s = popbridge::pass::run_accounts(
        Arc::new(config),
        Arc::new(TcpDialer),
        Arc::new(EventSink::none()),
        ledger,
        accounts,
    )
    .await;
    let t = start.elapsed();
    if s[0].delivered as usize != a.messages
        || !pop
            .mailbox("bench")
            .context("mailbox")?
            .remaining
            .is_empty()
    {
        bail!("popbridge did not move the whole mailbox: {:?}", s[0]);
    }
    pop.shutdown().await;
    Ok(t)
}

async fn fetchmail_round(
    a: &Args,
    bin: &PathBuf,
    smtp_port: u16,
    dir: &std::path::Path,
) -> Result<Duration> {
    let pop = source(a).await?;
    let home = tempfile::tempdir_in(dir)?;
    let rc = home.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\npoll 127.0.0.1 service {} protocol pop3 auth password timeout 60\n  user \"bench\" there with password \"{PASSWORD}\" is \"sink@contoso.local\" here\n  sslproto '' fetchall nokeep smtphost 127.0.0.1/{smtp_port}\n",
            pop.addr().context("pop3 address")?.port()
        ),
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600))?;
    }
    let start = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(["-f", rc.to_str().unwrap_or_default(), "-N", "--nosyslog"])
        .arg("--pidfile")
        .arg(home.path().join("pid"))
        .arg("--idfile")
        .arg(home.path().join("ids"))
        .env("HOME", home.path())
        .env("FETCHMAILHOME", home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let status = tokio::time::timeout(Duration::from_secs(600), child.wait())
        .await
        .context("fetchmail timed out")??;
    let t = start.elapsed();
    if !status.success() {
        bail!("fetchmail failed: {status}");
    }
    if !pop
        .mailbox("bench")
        .context("mailbox")?
        .remaining
        .is_empty()
    {
        bail!("fetchmail did not move the whole mailbox");
    }
    pop.shutdown().await;
    Ok(t)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run(a: Args) -> Result<()> {
    let fetchmail = ["/usr/bin/fetchmail", "/usr/local/bin/fetchmail"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let dir = tempfile::tempdir()?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink = MockSmtp::builder()
        .capture(CaptureMode::CountOnly)
        .record_transcript(false)
        .spawn(l);
    let port = sink.addr().context("smtp address")?.port();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        ours.push(popbridge_round(&a, port, dir.path()).await?);
        if let Some(bin) = &fetchmail {
            theirs.push(fetchmail_round(&a, bin, port, dir.path()).await?);
        }
    }
    let rate = |d: Duration| a.messages as f64 / d.as_secs_f64();
    let mbps = |d: Duration| (a.messages * a.size) as f64 / d.as_secs_f64() / 1e6;
    println!(
        "mock-pop3 -> connector -> mock-smtp: {} messages x {} B, median of {} rounds",
        a.messages, a.size, a.rounds
    );
    println!("| connector | msg/s | MB/s | vs fetchmail |");
    println!("|---|---|---|---|");
    let ours = median(ours);
    match theirs.is_empty() {
        true => println!(
            "| popbridge | {:.0} | {:.1} | (fetchmail not installed) |",
            rate(ours),
            mbps(ours)
        ),
        false => {
            let theirs = median(theirs);
            println!(
                "| popbridge | {:.0} | {:.1} | {:.1} |",
                rate(ours),
                mbps(ours),
                rate(ours) / rate(theirs)
            );
            println!(
                "| fetchmail | {:.0} | {:.1} | 1.0 |",
                rate(theirs),
                mbps(theirs)
            );
        }
    }
    sink.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connector-vs-peer: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connector-vs-peer: {e:#}");
            ExitCode::from(2)
        }
    }
}
