//! `poplab`: runs scenario files and reports, per label, what became of every message.
//!
//! A thin shell over the library: arguments, the runtime, printing, exit codes
//! (0 every expectation of every scenario held; 1 some did not; 2 a file could not be
//! read or is invalid). Must never: hold harness logic.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The Popbridge harness: mock POP3 and Exchange-like SMTP servers, scenario files.
#[derive(Parser, Debug)]
#[command(name = "poplab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs scenario files (or every *.toml in the given folders) against popbridge
    /// in-process and prints one table per scenario, then `N passed, M failed`.
    Run {
        /// Scenario files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print one JSON document instead of tables (the closing line goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("poplab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let Command::Run { paths, json } = Cli::parse().command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let files = match poplab::scenario_files(&paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("poplab: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut out = std::io::stdout().lock();
    let (mut reports, mut invalid) = (Vec::new(), Vec::new());
    for file in files {
        match runtime.block_on(poplab::run_file(&file)) {
            Ok(report) => {
                if !json {
                    writeln!(out, "{}", report.render_table())?;
                    out.flush()?;
                }
                reports.push(report);
            }
            Err(e) => {
                eprintln!("poplab: {e}");
                invalid.push(e.to_string());
            }
        }
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    let failed = reports.len() - passed + invalid.len();
    let line = poplab::summary_line(passed, failed);
    if json {
        let doc = serde_json::json!({
            "scenarios": reports.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            "invalid": invalid,
            "passed": passed,
            "failed": failed,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        eprintln!("{line}");
    } else {
        writeln!(out, "{line}")?;
    }
    Ok(if !invalid.is_empty() {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
