//! `mock-pop3`: runs the mock POP3 server standalone on loopback with a generated mailbox.
//!
//! Prints its address as one JSON line, serves until standard input closes or Ctrl-C,
//! then prints every mailbox's final state as JSON. Must never listen off loopback.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use mock_pop3::pki::TestPki;
use mock_pop3::{Capabilities, Mailbox, Message, MockPop3, TlsMode};
use tokio::io::AsyncReadExt;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Tls {
    /// Plain text, no STLS.
    None,
    /// Plain text with STLS.
    Stls,
    /// TLS from the first byte.
    Implicit,
}

/// A mock POP3 server with a generated mailbox, for trying clients by hand.
///
/// Deletions happen only at QUIT, as RFC 1939 says; the final state printed on exit shows
/// what each client retrieved and deleted.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on; must be a loopback address. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Mailbox login name.
    #[arg(long, default_value = "demo")]
    user: String,
    /// Mailbox password (also accepted as the XOAUTH2 token).
    #[arg(long, default_value = "demo")]
    password: String,
    /// Number of generated messages.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Size of each generated message, e.g. 2048, 10KB, 1MB.
    #[arg(long, default_value = "4KB", value_parser = parse_size)]
    size: usize,
    /// Also load every `*.eml` file of this folder as a message (sorted by name).
    #[arg(long)]
    eml_dir: Option<PathBuf>,
    /// TLS mode; certificates come from a fresh in-memory CA.
    #[arg(long, value_enum, default_value = "none")]
    tls: Tls,
    /// Where to write the CA certificate (PEM) that clients must trust, when TLS is on.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Greet without an APOP timestamp (APOP then impossible).
    #[arg(long)]
    no_apop_timestamp: bool,
    /// Behave as an RFC 1939-only server: no CAPA, UIDL, TOP or SASL.
    #[arg(long)]
    minimal: bool,
    /// Seed for timestamps, challenges and probabilistic faults.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop by itself after this many seconds (0: wait for stdin EOF or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    exit_after: u64,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_uppercase();
    let (num, mul) = if let Some(n) = t.strip_suffix("MB") {
        (n, 1024 * 1024)
    } else if let Some(n) = t.strip_suffix("KB") {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix('B') {
        (n, 1)
    } else {
        (t.as_str(), 1)
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 2048, 10KB or 1MB)"))?;
    n.checked_mul(mul)
        .filter(|&v| v <= 512 * 1024 * 1024)
        .ok_or_else(|| format!("size too large: {s}"))
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

async fn run(args: Args) -> Result<()> {
    if !is_loopback(args.listen.ip()) {
        bail!(
            "refusing to listen on {}: only loopback addresses are allowed",
            args.listen
        );
    }
    let mut mailbox =
        Mailbox::new(&args.user, &args.password).with_demo_messages(args.messages, args.size);
    if let Some(dir) = &args.eml_dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            mailbox = mailbox.with_message(Message::new(data));
        }
    }
    let mut builder = MockPop3::builder()
        .mailbox(mailbox)
        .seed(args.seed)
        .apop_timestamp(!args.no_apop_timestamp);
    if args.minimal {
        builder = builder
            .capabilities(Capabilities::minimal())
            .capabilities_after_login(Capabilities::minimal());
    }
    let mut ca_path = None;
    if !matches!(args.tls, Tls::None) {
        let pki = TestPki::localhost().context("making test certificates")?;
        let cfg = pki.server_config()?;
        builder = builder.tls(match args.tls {
            Tls::Stls => TlsMode::Stls(cfg),
            _ => TlsMode::Implicit(cfg),
        });
        let path = args
            .ca_out
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("mock-pop3-ca.pem"));
        std::fs::write(&path, &pki.ca_pem)
            .with_context(|| format!("writing {}", path.display()))?;
        ca_path = Some(path);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let server = builder.spawn(listener);
    let addr = server.addr().context("no local address")?;
    println!(
        "{}",
        serde_json::json!({
            "pop3": addr.to_string(),
            "user": args.user,
            "messages": args.messages,
            "tls": format!("{:?}", args.tls).to_lowercase(),
            "ca": ca_path.map(|p| p.display().to_string()),
        })
    );
    eprintln!("mock-pop3 listening on {addr}; close stdin (Ctrl-D) or press Ctrl-C to stop and print the final state");
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
        if args.exit_after == 0 {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(Duration::from_secs(args.exit_after)).await
        }
    };
    tokio::select! {
        _ = stdin_eof => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = deadline => {}
    }
    let state =
        serde_json::json!({ "mailboxes": server.mailboxes(), "sessions": server.sessions().len() });
    println!("{state}");
    server.shutdown().await;
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
            eprintln!("mock-pop3: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-pop3: {e:#}");
            ExitCode::from(2)
        }
    }
}
