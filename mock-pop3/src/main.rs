//! `mock-pop3`: runs the mock POP3 server standalone on loopback with a generated mailbox.
//!
//! Prints its address as one JSON line, serves until standard input closes or Ctrl-C,
//! then prints every mailbox's final state as JSON. Must never listen off loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use mock_core::standalone;
use mock_pop3::{Capabilities, Maildrop, Message, MockPop3, TlsOffer};

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
    /// Maildrop login name. Every login method is accepted: USER/PASS, APOP, and AUTH
    /// PLAIN, LOGIN, CRAM-MD5, XOAUTH2 and NTLM (as `DOMAIN\USER`, any domain, or a bare USER).
    #[arg(long, default_value = "demo")]
    user: String,
    /// Maildrop password (also accepted as the XOAUTH2 token).
    #[arg(long, default_value = "demo")]
    password: String,
    /// Number of generated messages.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Size of each generated message, e.g. 2048, 10KB, 1MB.
    #[arg(long, default_value = "4KB", value_parser = standalone::parse_size)]
    size: u64,
    /// Also load every `*.eml` file of this folder as a message (sorted by name).
    #[arg(long)]
    eml_dir: Option<PathBuf>,
    /// TLS mode; certificates come from a fresh in-memory CA.
    #[arg(long, value_enum, default_value = "none")]
    tls: TlsOffer,
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

async fn run(args: Args) -> Result<()> {
    let listener = standalone::listen(args.listen).await?;
    let mut mailbox = Maildrop::new(&args.user, &args.password).with_demo_messages(
        args.messages,
        usize::try_from(args.size).context("--size too large")?,
    );
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
        .maildrop(mailbox)
        .seed(args.seed)
        .apop_timestamp(!args.no_apop_timestamp);
    if args.minimal {
        builder = builder
            .capabilities(Capabilities::minimal())
            .capabilities_after_login(Capabilities::minimal());
    }
    let mut ca_path = None;
    if args.tls != TlsOffer::None {
        let (pki, path) = standalone::write_test_ca(args.ca_out.as_deref(), "mock-pop3-ca.pem")?;
        let cfg = pki.server_config()?;
        builder = builder.tls(args.tls.with_config(cfg));
        ca_path = Some(path);
    }
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
    standalone::wait_for_stop(args.exit_after).await;
    let state =
        serde_json::json!({ "mailboxes": server.maildrops(), "sessions": server.sessions().len() });
    println!("{state}");
    server.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    standalone::run_main("mock-pop3", run(Args::parse()))
}
