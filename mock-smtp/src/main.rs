//! `mock-smtp`: runs the mock Exchange receive connector standalone on loopback.
//!
//! Prints its address as one JSON line, serves until standard input closes or Ctrl-C,
//! then prints the counts and every transaction (without bytes) as JSON. Must never
//! listen off loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use mock_core::standalone;
use mock_smtp::{CaptureMode, Extensions, Limits, MailboxSpec, MockSmtp, SizeAdvert};

/// A mock Exchange 2007/2010 receive connector, for trying SMTP clients by hand.
///
/// It answers with Exchange's reply texts, counts protocol errors (501, 500, 503) and ends
/// the session with `421 4.7.0` at --max-protocol-errors, repairs senders without a domain
/// when --default-domain is set, and applies organisation and mailbox limits *after*
/// accepting a message, recording a non-delivery report, as Exchange's categoriser does.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on; must be a loopback address. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Receive connector MaxMessageSize, e.g. 10MB (advertised in EHLO SIZE); 0 for none.
    #[arg(long, default_value = "10MB", value_parser = standalone::parse_size)]
    max_message_size: u64,
    /// MaxProtocolErrors; 0 for no limit.
    #[arg(long, default_value_t = 5)]
    max_protocol_errors: u32,
    /// Exchange DefaultDomain: appended to a MAIL FROM without a domain.
    #[arg(long)]
    default_domain: Option<String>,
    /// A local mailbox, `address` or `address=LIMIT` (per-mailbox receive limit, e.g.
    /// `bob@contoso.local=10MB`). Repeatable. Without any, every recipient is accepted.
    #[arg(long = "mailbox")]
    mailboxes: Vec<String>,
    /// Organisation receive limit applied after acceptance (an NDR, not a 552).
    #[arg(long, value_parser = standalone::parse_size)]
    org_limit: Option<u64>,
    /// Do not advertise CHUNKING (BDAT).
    #[arg(long)]
    no_chunking: bool,
    /// Do not advertise PIPELINING.
    #[arg(long)]
    no_pipelining: bool,
    /// Do not advertise SIZE.
    #[arg(long)]
    no_size: bool,
    /// Offer STARTTLS with a certificate from a fresh in-memory CA.
    #[arg(long)]
    starttls: bool,
    /// Where to write that CA (PEM) for clients to trust.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Keep counters only (benchmarks).
    #[arg(long)]
    count_only: bool,
    /// Write accepted messages as .eml files into this folder.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Stop by itself after this many seconds (0: wait for stdin EOF or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    exit_after: u64,
}

async fn run(args: Args) -> Result<()> {
    let listener = standalone::listen(args.listen).await?;
    let limits = Limits {
        max_message_size: (args.max_message_size > 0).then_some(args.max_message_size),
        max_protocol_errors: (args.max_protocol_errors > 0).then_some(args.max_protocol_errors),
        ..Limits::default()
    };
    let ext = Extensions {
        chunking: !args.no_chunking,
        pipelining: !args.no_pipelining,
        size: if args.no_size {
            SizeAdvert::Absent
        } else {
            SizeAdvert::Value
        },
        ..Extensions::default()
    };
    let mut b = MockSmtp::builder().limits(limits).extensions(ext);
    for m in &args.mailboxes {
        let spec = match m.split_once('=') {
            Some((addr, limit)) => MailboxSpec::new(addr)
                .receive_limit(standalone::parse_size(limit).map_err(anyhow::Error::msg)?),
            None => MailboxSpec::new(m.as_str()),
        };
        b = b.mailbox(spec);
    }
    if let Some(d) = &args.default_domain {
        b = b.default_domain(d);
    }
    if let Some(l) = args.org_limit {
        b = b.organization_receive_limit(l);
    }
    if args.count_only {
        b = b.capture(CaptureMode::CountOnly).record_transcript(false);
    }
    if let Some(d) = &args.spool_dir {
        b = b.spool_dir(d);
    }
    let mut ca = None;
    if args.starttls {
        let (pki, path) = standalone::write_test_ca(args.ca_out.as_deref(), "mock-smtp-ca.pem")?;
        b = b.tls(pki.server_config()?);
        ca = Some(path.display().to_string());
    }
    let server = b.spawn(listener);
    let addr = server.addr().context("no local address")?;
    println!(
        "{}",
        serde_json::json!({ "smtp": addr.to_string(), "ca": ca })
    );
    eprintln!("mock-smtp listening on {addr}; close stdin (Ctrl-D) or press Ctrl-C to stop and print what it received");
    standalone::wait_for_stop(args.exit_after).await;
    println!(
        "{}",
        serde_json::json!({ "counts": server.counts(), "transactions": server.captured() })
    );
    server.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    standalone::run_main("mock-smtp", run(Args::parse()))
}
