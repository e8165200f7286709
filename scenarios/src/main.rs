//! `poplab`: runs scenario files (against popbridge in-process or an external command) and
//! reports, per label, what became of every message; `chaos` searches seeded fault
//! schedules for lost or duplicated mail; `capture` writes a real mailbox as a scenario
//! (read-only); `serve`, `mock-pop3`, `mock-smtp` start a
//! scenario's mocks standalone; `bench` measures throughput.
//!
//! A thin shell over the library: arguments, the runtime, printing, exit codes
//! (0 every expectation of every scenario held; 1 some did not; 2 a file could not be
//! read or is invalid). Must never: hold harness logic.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// poplab's exit codes (`bench-rusage` passes on its command's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// 0: every expectation of every scenario held (`chaos`: every run kept the promises;
    /// `bench`: every check passed; `capture`, `serve`: done).
    Passed = 0,
    /// 1: some did not.
    Failed = 1,
    /// 2: a file could not be read or is invalid, bad arguments, or an error.
    Invalid = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

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
        /// Also write a JUnit XML report to FILE: one testsuite per path given, one
        /// testcase per scenario file, each broken expectation with its file and line.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Run this command (`sh -c`) once per pass and mailbox instead of popbridge.
        /// Placeholders, replaced by shell-quoted values: {pop3_host} {pop3_port}
        /// {smtp_host} {smtp_port} {user} {password} {rcpt} {scratch} {pass} {timeout}
        /// (the scenario's command timeout in seconds). Example:
        /// 'scenarios/connectors/fetchmail.sh {pop3_host} {pop3_port} {user} {password}
        /// {smtp_host} {smtp_port} {rcpt} {scratch} {timeout}'.
        #[arg(long, value_name = "TEMPLATE")]
        connector_cmd: Option<String>,
    },
    /// Searches for lost or duplicated mail: runs seeded worlds (1-200 messages of mixed
    /// sizes, poison, spam, malformed mail, lying servers) under seeded fault schedules
    /// (every POP3 and SMTP fault the mocks can make, at any point, and connector crashes at
    /// every step of a message), then clean passes, and judges each run by what both
    /// servers saw: nothing lost, no duplicate the protocol did not force, every
    /// deliverable message delivered. Exit 0 when every run kept those promises, 1
    /// otherwise, 2 on bad arguments.
    Chaos {
        /// How many runs.
        #[arg(long, default_value_t = 1000)]
        runs: u64,
        /// The first seed: run i uses SEED+i, and the same seed replays the same run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Runs at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Judge against popbridge's policy (default) or the old SBS 2008 connector's
        /// (its losses and stalls are then expected, and reported as such).
        #[arg(long, default_value = "default", value_parser = ["default", "sbs2008"])]
        profile: String,
        /// Run this external connector instead of popbridge (the `run` placeholders);
        /// smaller worlds, and SIGKILL at random moments in place of crash points.
        #[arg(long, value_name = "TEMPLATE")]
        connector_cmd: Option<String>,
        /// Shrink each failing run and write it here as a scenario file that `poplab run`
        /// reproduces.
        #[arg(long, value_name = "DIR")]
        save_failures: Option<PathBuf>,
        /// Write every run's world here as a scenario file, as drawn (to read or replay any
        /// seed with `poplab run`, failing or not).
        #[arg(long, value_name = "DIR")]
        save_worlds: Option<PathBuf>,
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Run a deliberately broken popbridge, to see the oracle catch it:
        /// dele-before-ledger (loses mail) or skip-ledger-check (duplicates it).
        #[arg(long, value_name = "NAME")]
        sabotage: Option<String>,
    },
    /// Starts a scenario's mocks on loopback and prints their addresses as one JSON line
    /// ({"pop3","smtp","mailboxes":[{"user","password"}],"ca"}); on end of standard input
    /// or Ctrl-C, prints the final state per message as one JSON line. With --check, then
    /// judges the scenario's [expect] against it, prints the report and exits like `run`.
    Serve {
        /// The scenario file.
        file: PathBuf,
        /// On end of input, check the scenario's expectations against what happened:
        /// print the report and `N passed, M failed`, exit 0 when they held, 1 otherwise.
        #[arg(long)]
        check: bool,
    },
    /// Starts only the POP3 mock of a scenario (as `serve` does). For a mock from flags,
    /// use the `mock-pop3` binary.
    #[command(name = "mock-pop3")]
    MockPop3 {
        /// The scenario file whose [pop3] side to serve.
        #[arg(long)]
        scenario: PathBuf,
    },
    /// Starts only the SMTP mock of a scenario (as `serve` does). For a mock from flags,
    /// use the `mock-smtp` binary.
    #[command(name = "mock-smtp")]
    MockSmtp {
        /// The scenario file whose [smtp] side to serve.
        #[arg(long)]
        scenario: PathBuf,
    },
    /// Reads a real POP3 mailbox without changing it (CAPA, LIST, UIDL, RETR; never DELE;
    /// RSET before QUIT) and writes DIR/capture.toml and DIR/fixtures/*.eml (mode 0600), a
    /// scenario that replays it. The password comes from --password-env, --password-file
    /// or, when neither is given, a prompt; never from the command line.
    Capture(CaptureArgs),
    /// Measures throughput: popbridge (a child process by default) and external connectors
    /// each move the same mailbox from POP3 to SMTP, on fresh loopback mocks or on real
    /// loopback servers, several rounds each, beside a pipelined POP3 reader and a
    /// pipelined SMTP writer (the two legs' ceilings). Prints per connector msg/s, MB/s,
    /// per-message latency p50/p99 (ms), CPU seconds, peak RSS (MB), the ratio to the
    /// slower leg, to the serial bound (the reader's login, LIST and QUIT around the slower
    /// leg's streaming: what no connector can beat) and to the first connector: medians with
    /// min–max. Exit 0 when every round moved the whole mailbox, 1 when one did not
    /// (named), 2 on bad arguments.
    Bench(poplab::bench::BenchArgs),
    /// (internal) Runs COMMAND, waits for it and writes its CPU time and peak RSS as JSON to
    /// FILE: how `bench` measures a connector.
    #[command(name = "bench-rusage", hide = true)]
    BenchRusage {
        /// Where to write the usage.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// The `capture` subcommand's arguments.
#[derive(clap::Args, Debug)]
struct CaptureArgs {
    /// The server's host.
    #[arg(long)]
    host: String,
    /// The server's port (default 110, or 995 with --tls implicit).
    #[arg(long)]
    port: Option<u16>,
    /// The login name.
    #[arg(long)]
    user: String,
    /// The environment variable holding the password.
    #[arg(long, conflicts_with = "password_file")]
    password_env: Option<String>,
    /// A file whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// TLS: none | starttls | implicit (as popbridge's `tls`).
    #[arg(long, default_value = "starttls")]
    tls: String,
    /// A CA certificate (or the server's own) to trust besides the system roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Keep headers only; bodies become filler of the same size.
    #[arg(long)]
    headers_only: bool,
    /// Also replace addresses, names and subjects by stable pseudonyms (keyed hash;
    /// implies --headers-only). The key comes from --redact-key-file, else is random.
    #[arg(long)]
    redact: bool,
    /// A file holding the redaction key (the same key gives the same pseudonyms).
    #[arg(long, requires = "redact")]
    redact_key_file: Option<PathBuf>,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The folder to write into.
    #[arg(long)]
    out: PathBuf,
}

/// The connector `--connector-cmd` names (popbridge without one), or `None` once it said
/// why the template is refused.
fn connector(connector_cmd: Option<String>) -> Option<poplab::Connector> {
    let Some(template) = connector_cmd else {
        return Some(poplab::Connector::Popbridge);
    };
    match poplab::external::check_template(&template) {
        Ok(()) => Some(poplab::Connector::External { template }),
        Err(e) => {
            eprintln!("poplab: --connector-cmd: {e}");
            None
        }
    }
}

/// The password: from the named variable, the file's first line, or a prompt on the
/// terminal (echo off through `stty`).
fn read_password(a: &CaptureArgs) -> anyhow::Result<String> {
    if let Some(var) = &a.password_env {
        return std::env::var(var).with_context(|| format!("--password-env: ${var} is not set"));
    }
    if let Some(file) = &a.password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--password-file {}", file.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_string());
    }
    eprint!("password for {}@{}: ", a.user, a.host);
    let _ = std::io::stderr().flush();
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
    };
    let _ = stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    let _ = stty("echo");
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

async fn capture(a: CaptureArgs) -> anyhow::Result<ExitCode> {
    use popbridge::config::TlsMode;
    let tls = match a.tls.as_str() {
        "none" => TlsMode::None,
        "starttls" => TlsMode::StartTls,
        "implicit" => TlsMode::Implicit,
        other => anyhow::bail!("--tls: expected none, starttls or implicit, not {other:?}"),
    };
    let port = a
        .port
        .unwrap_or(if tls == TlsMode::Implicit { 995 } else { 110 });
    let password = popbridge::secret::Secret::new(read_password(&a)?);
    let redact_key = if a.redact {
        Some(match &a.redact_key_file {
            Some(f) => {
                std::fs::read(f).with_context(|| format!("--redact-key-file {}", f.display()))?
            }
            None => {
                use rand::RngCore as _;
                let mut k = vec![0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                k
            }
        })
    } else {
        None
    };
    let opts = poplab::capture::CaptureOptions {
        host: a.host.clone(),
        port,
        user: a.user.clone(),
        password,
        tls,
        ca_file: a.ca_file.clone(),
        headers_only: a.headers_only,
        redact_key,
        timeout: std::time::Duration::from_secs(a.timeout.max(1)),
    };
    let spool = tempfile::tempdir().context("a spool folder")?;
    let captured = poplab::capture::capture(&opts, spool.path())
        .await
        .with_context(|| format!("capturing {}:{port}", a.host))?;
    let mut source = format!("{}:{port} (tls {})", a.host, a.tls);
    if a.redact {
        source.push_str(", redacted");
    } else if a.headers_only {
        source.push_str(", headers only");
    } else {
        source = format!("user {} at {source}", a.user);
    }
    popbridge::private::create_dir_all(&a.out)
        .with_context(|| format!("creating {}", a.out.display()))?;
    if popbridge::private::readable_by_others(&a.out) {
        eprintln!(
            "poplab: warning: {} can be listed or read by other users; the captured mail is in it",
            a.out.display()
        );
    }
    let path = poplab::capture::write(&captured, &a.out, &source)?;
    println!(
        "captured {} messages into {}",
        captured.messages.len(),
        path.display()
    );
    Ok(Exit::Passed.into())
}

/// Which mocks `serve` starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sides {
    Both,
    Pop3,
    Smtp,
}

/// How long the mocks may take to see their sessions end, and to shut down, once stopped.
const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

async fn serve(file: PathBuf, sides: Sides, check: bool) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let scenario = match poplab::schema::load(&file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("poplab: {e}");
            return Ok(Exit::Invalid.into());
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("poplab-serve-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let (pop3, ca) = if sides != Sides::Smtp {
        let (h, ca) = poplab::world::start_pop3(&scenario, dir.path())
            .await
            .map_err(anyhow::Error::msg)?;
        (Some(h), ca)
    } else {
        (None, None)
    };
    let smtp = if sides != Sides::Pop3 {
        Some(
            poplab::world::start_smtp(&scenario)
                .await
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let line = poplab::serve::address_line(
        &scenario,
        pop3.as_ref().and_then(|h| h.addr()),
        smtp.as_ref().and_then(|h| h.addr()),
        ca.as_deref(),
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    eprintln!("poplab: serving {}; close stdin (Ctrl-D) or press Ctrl-C to stop and print the final state", file.display());
    mock_core::standalone::wait_for_stop(0).await;
    let idle = async {
        if let Some(h) = &pop3 {
            h.wait_idle().await;
        }
        if let Some(h) = &smtp {
            h.wait_idle().await;
        }
    };
    if tokio::time::timeout(STOP_BOUND, idle).await.is_err() {
        eprintln!("poplab: a session was still open; its state is reported as it stands");
    }
    let mailboxes = pop3.as_ref().map(|h| h.maildrops()).unwrap_or_default();
    let captured = smtp.as_ref().map(|h| h.captured()).unwrap_or_default();
    let state = poplab::serve::final_state(&scenario, mailboxes.clone(), captured.clone());
    let mut code = Exit::Passed.into();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{state}")?;
        if check {
            let report = poplab::serve::check(&scenario, mailboxes, captured, started.elapsed());
            let passed = report.passed();
            writeln!(out, "{}", report.render_table())?;
            writeln!(
                out,
                "{}",
                poplab::summary_line(usize::from(passed), usize::from(!passed))
            )?;
            if !passed {
                code = Exit::Failed.into();
            }
        }
        out.flush()?;
    }
    if let Some(h) = pop3 {
        let _ = tokio::time::timeout(STOP_BOUND, h.shutdown()).await;
    }
    if let Some(h) = smtp {
        let _ = tokio::time::timeout(STOP_BOUND, h.shutdown()).await;
    }
    drop(dir);
    Ok(code)
}

async fn chaos(opts: poplab::chaos::Options, json: bool) -> anyhow::Result<ExitCode> {
    poplab::world::set_scratch_root(poplab::chaos::scratch_root());
    let started = std::time::Instant::now();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = poplab::chaos::run(&opts, |r, done, total| {
        if r.verdict.failed() {
            eprintln!("poplab: seed {} FAILED", r.seed);
        }
        if interactive && (done % 50 == 0 || done == total) {
            eprint!("\rpoplab chaos: {done}/{total} runs");
            if done == total {
                eprintln!();
            }
        }
    })
    .await;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report.to_json())?)?;
    } else {
        write!(out, "{}", report.render_table())?;
    }
    eprintln!(
        "poplab chaos: {} runs in {:.1} s ({} jobs)",
        report.runs,
        started.elapsed().as_secs_f64(),
        opts.jobs
    );
    Ok(if report.passed() {
        Exit::Passed.into()
    } else {
        Exit::Failed.into()
    })
}

async fn bench(args: poplab::bench::BenchArgs) -> anyhow::Result<ExitCode> {
    let report = match poplab::bench::run(&args).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poplab bench: {e}");
            return Ok(Exit::Invalid.into());
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report.to_json())?)?;
    } else {
        write!(out, "{}", report.render_table())?;
    }
    Ok(if report.passed() {
        Exit::Passed.into()
    } else {
        Exit::Failed.into()
    })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("poplab: {e:#}");
            Exit::Invalid.into()
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (paths, json, junit, connector_cmd) = match Cli::parse().command {
        Command::Run {
            paths,
            json,
            junit,
            connector_cmd,
        } => (paths, json, junit, connector_cmd),
        Command::Chaos {
            runs,
            seed,
            jobs,
            profile,
            connector_cmd,
            save_failures,
            save_worlds,
            json,
            sabotage,
        } => {
            let Some(connector) = connector(connector_cmd) else {
                return Ok(Exit::Invalid.into());
            };
            let sabotage = match sabotage.map(|s| s.parse()) {
                None => None,
                Some(Ok(s)) if !connector.is_external() => Some(s),
                Some(Ok(_)) => {
                    eprintln!(
                        "poplab: --sabotage breaks popbridge; it cannot apply to --connector-cmd"
                    );
                    return Ok(Exit::Invalid.into());
                }
                Some(Err(e)) => {
                    eprintln!("poplab: --sabotage: {e}");
                    return Ok(Exit::Invalid.into());
                }
            };
            for dir in save_failures.iter().chain(save_worlds.iter()) {
                if popbridge::private::readable_by_others(dir) {
                    eprintln!(
                        "poplab: warning: {} can be read by other users; the scenario files \
                         written there (0600 each) describe mail",
                        dir.display()
                    );
                }
            }
            let opts = poplab::chaos::Options {
                runs,
                seed,
                jobs: jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
                profile: if profile == "sbs2008" {
                    poplab::chaos::Profile::Sbs2008
                } else {
                    poplab::chaos::Profile::Default
                },
                connector,
                save_failures,
                save_worlds,
                sabotage,
            };
            return runtime.block_on(chaos(opts, json));
        }
        Command::Bench(args) => return runtime.block_on(bench(args)),
        Command::BenchRusage { out, command } => {
            let code = poplab::bench::measure::rusage_main(&out, &command);
            return Ok(u8::try_from(code).map_or(Exit::Failed.into(), ExitCode::from));
        }
        Command::Serve { file, check } => return runtime.block_on(serve(file, Sides::Both, check)),
        Command::MockPop3 { scenario } => {
            return runtime.block_on(serve(scenario, Sides::Pop3, false))
        }
        Command::MockSmtp { scenario } => {
            return runtime.block_on(serve(scenario, Sides::Smtp, false))
        }
        Command::Capture(args) => return runtime.block_on(capture(args)),
    };
    let Some(connector) = connector(connector_cmd) else {
        return Ok(Exit::Invalid.into());
    };
    let groups = match poplab::scenario_groups(&paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("poplab: {e}");
            return Ok(Exit::Invalid.into());
        }
    };
    let mut out = std::io::stdout().lock();
    let (mut reports, mut invalid) = (Vec::new(), Vec::new());
    // Per group: its name and, per file in run order, where its result is.
    let mut layout: Vec<(String, Vec<Result<usize, usize>>)> = Vec::new();
    for (group, files) in groups {
        let mut slots = Vec::new();
        for file in files {
            match runtime.block_on(poplab::run_file_with(&file, &connector)) {
                Ok(report) => {
                    if !json {
                        writeln!(out, "{}", report.render_table())?;
                        out.flush()?;
                    }
                    slots.push(Ok(reports.len()));
                    reports.push(report);
                }
                Err(e) => {
                    eprintln!("poplab: {e}");
                    slots.push(Err(invalid.len()));
                    invalid.push(poplab::report::InvalidFile::new(&file, &e));
                }
            }
        }
        layout.push((group.display().to_string(), slots));
    }
    if let Some(junit) = &junit {
        let suites: Vec<poplab::junit::Suite<'_>> = layout
            .iter()
            .map(|(name, slots)| poplab::junit::Suite {
                name: name.clone(),
                entries: slots
                    .iter()
                    .map(|slot| match *slot {
                        Ok(i) => poplab::junit::Entry::Ran(&reports[i]),
                        Err(i) => poplab::junit::Entry::Invalid(&invalid[i]),
                    })
                    .collect(),
            })
            .collect();
        let xml = poplab::junit::render(&suites, &connector.name())?;
        std::fs::write(junit, xml).with_context(|| format!("cannot write {}", junit.display()))?;
    }
    let skipped = reports.iter().filter(|r| r.is_skipped()).count();
    let passed = reports
        .iter()
        .filter(|r| r.passed() && !r.is_skipped())
        .count();
    let failed = reports.len() - passed - skipped + invalid.len();
    let line = poplab::summary_line_skipped(passed, failed, skipped);
    if json {
        let doc = serde_json::json!({
            "connector": connector.name(),
            "scenarios": reports.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            "invalid": invalid,
            "passed": passed,
            "failed": failed,
            "skipped": skipped,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        eprintln!("{line}");
    } else {
        writeln!(out, "{line}")?;
    }
    Ok(if !invalid.is_empty() {
        Exit::Invalid.into()
    } else if failed > 0 {
        Exit::Failed.into()
    } else {
        Exit::Passed.into()
    })
}
