//! Mail and secrets at rest: what the `popbridge` binary leaves on disk is private to its
//! user whatever the umask, a configuration that shows a password to other users is
//! refused, and a failing password command cannot leak the secret it printed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use mock_pop3::MockPop3;
use mock_smtp::MockSmtp;

use crate::harness::*;

/// Runs the binary under `sh` with `umask 022`, as a service started by hand would.
async fn popbridge_umask_022(dir: &Path, args: &[&str]) -> Output {
    let mut sh = tokio::process::Command::new("sh");
    sh.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_popbridge"))
        .args(args)
        .current_dir(dir);
    finish(sh, Duration::from_secs(120)).await
}

/// `popbridge --config CFG EXTRA... --events EVENTS fetch` in `dir` under `umask 022`.
async fn fetch_with_events(dir: &Path, cfg: &Path, extra: &[&str], events: &Path) -> Output {
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(["--events", events.to_str().unwrap(), "fetch"]);
    popbridge_umask_022(dir, &args).await
}

/// A POP3 mock serving one message, a default SMTP mock, and a folder to run in.
async fn one_message() -> (
    mock_pop3::MockPop3Handle,
    mock_smtp::MockSmtpHandle,
    tempfile::TempDir,
) {
    let (pop, smtp) = mocks(mailbox_with([mail(0, "a@example.net", 500)])).await;
    (pop, smtp, tempfile::tempdir().unwrap())
}

/// [`config`] for the mocks on loopback, the account with `account_extra`.
fn mocks_config(
    dir: &Path,
    pop: &mock_pop3::MockPop3Handle,
    smtp: &mock_smtp::MockSmtpHandle,
    account_extra: &str,
) -> PathBuf {
    config(
        dir,
        pop.addr().unwrap().port(),
        &smtp_transport(smtp),
        account_extra,
    )
}

/// The `[transport]` body for the SMTP mock on loopback.
fn smtp_transport(smtp: &mock_smtp::MockSmtpHandle) -> String {
    format!(
        "host = \"127.0.0.1\"\nport = {}",
        smtp.addr().unwrap().port()
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every path under `root` (itself included) with its mode.
fn modes_under(root: &Path) -> BTreeMap<PathBuf, u32> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        out.insert(p.clone(), mode(&p));
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// Paths under `state` that are not `0700` directories or `0600` files.
fn loose(state: &Path) -> Vec<String> {
    modes_under(state)
        .iter()
        .filter(|(p, m)| **m != if p.is_dir() { 0o700 } else { 0o600 })
        .map(|(p, m)| format!("{} {m:04o}", p.display()))
        .collect()
}

/// A configuration with one account; `transport` is the `[transport]` body.
fn config(dir: &Path, pop3_port: u16, transport: &str, account_extra: &str) -> PathBuf {
    let path = dir.join("popbridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "state"
[transport]
{transport}
[timeouts]
connect = "5s"
command = "10s"
[limits]
poison_after = 1
memory_threshold = "64KB"
{account}username = "info"
deliver_to = "info@contoso.local"
{account_extra}
"#,
            account = plain_account("info", "127.0.0.1", pop3_port),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_spool_ledger_journal_and_failed_copies_are_private_under_umask_022() {
    // Two ordinary messages, one large enough to be spooled, one whose sender Exchange
    // refuses (quarantined at once: poison_after = 1).
    let mut all: Vec<_> = (0..2).map(|i| mail(i, "ok@example.net", 800)).collect();
    all.push(mail(2, "big@example.net", 300_000));
    all.push(mail(3, "bad@refused.example", 900));
    let pop = pop3(MockPop3::builder().maildrop(mailbox_with(all))).await;
    let smtp = smtp(MockSmtp::builder().reject_sender("@refused.example")).await;
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    write_private(&dir.path().join("pass"), format!("{PASSWORD}\n"));
    let smtp_transport = smtp_transport(&smtp);
    let pop3_port = pop.addr().unwrap().port();
    let cfg = config(
        dir.path(),
        pop3_port,
        &smtp_transport,
        "password_file = \"pass\"",
    );
    let cfg_arg = cfg.to_str().unwrap();
    let events = dir.path().join("events.jsonl");
    let out = fetch_with_events(dir.path(), &cfg, &[], &events).await;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "the quarantined one stays: {said}"
    );
    assert_eq!(delivered_ids(&smtp).len(), 3, "{said}");
    let state = dir.path().join("state");
    let quarantined: Vec<PathBuf> = modes_under(&state.join("quarantine"))
        .into_keys()
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(quarantined.len(), 1, "one quarantined copy: {said}");
    assert!(state.join("ledger.sqlite3").is_file());
    // Checked after each run: the next start would tighten what this one left loose.
    assert_eq!(loose(&state), Vec::<String>::new(), "first run");

    // Then into a pickup folder that is missing (failed-mail copies), then one that
    // exists (journal markers, published files with the pickup mode).
    for i in 4..6 {
        assert!(pop.add_message("info", mail(i, "ok@example.net", 700)));
    }
    let pickup = dir.path().join("Pickup");
    let pickup_transport = format!("kind = \"pickup\"\npickup_dir = \"{}\"", pickup.display());
    // The same file, now with the pickup transport.
    config(
        dir.path(),
        pop3_port,
        &pickup_transport,
        "password_file = \"pass\"",
    );
    let out = popbridge_umask_022(dir.path(), &["--config", cfg_arg, "fetch"]).await;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "the pickup folder is missing: {said}"
    );
    assert!(
        modes_under(&state.join("failed"))
            .keys()
            .any(|p| p.is_file()),
        "failed-mail copies: {said}"
    );
    assert_eq!(loose(&state), Vec::<String>::new(), "second run");
    assert!(!said.contains("made private"), "{said}");
    std::fs::create_dir(&pickup).unwrap();
    set_mode(&pickup, 0o755);
    let out = popbridge_umask_022(dir.path(), &["--config", cfg_arg, "fetch"]).await;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(state.join("pickup-journal").is_dir(), "{said}");
    assert!(!said.contains("made private"), "{said}");

    // Every directory popbridge created is 0700 and every file 0600.
    let all = modes_under(&state);
    for expected in ["quarantine", "failed", "pickup-journal", "locks", "spool"] {
        assert!(
            all.keys().any(|p| p.starts_with(state.join(expected))),
            "{expected} was not created: {all:#?}"
        );
    }
    assert_eq!(loose(&state), Vec::<String>::new(), "third run");
    // The pickup folder's files are for another service: the documented default mode.
    let published: Vec<u32> = std::fs::read_dir(&pickup)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| mode(&e.path()))
        .collect();
    assert_eq!(published, [0o644, 0o644], "pickup_mode default");
    // The events file is not part of state_dir; nothing else widened the test folder.
    assert_eq!(mode(dir.path()), 0o755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_world_readable_state_dir_is_tightened_with_a_warning_event() {
    let (pop, smtp, dir) = one_message().await;
    write_private(&dir.path().join("pass"), format!("{PASSWORD}\n"));
    // As an older popbridge left it: 0755 folders, a 0644 quarantined message.
    let q = dir.path().join("state/quarantine/info");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(q.join("old.eml"), b"Subject: private\r\n\r\nmail\r\n").unwrap();
    for d in ["state", "state/quarantine", "state/quarantine/info"] {
        set_mode(&dir.path().join(d), 0o755);
    }
    set_mode(&q.join("old.eml"), 0o644);
    let cfg = mocks_config(dir.path(), &pop, &smtp, "password_file = \"pass\"");
    let events = dir.path().join("events.jsonl");
    let out = fetch_with_events(dir.path(), &cfg, &[], &events).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&q), 0o700);
    assert_eq!(mode(&q.join("old.eml")), 0o600);
    assert!(
        stderr.contains("was readable by other users (mode 0644); made private"),
        "{stderr}"
    );
    let events = std::fs::read_to_string(&events).unwrap();
    let tightened: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "state.tightened")
        .collect();
    assert_eq!(tightened.len(), 4, "{events}");
    assert!(tightened
        .iter()
        .any(|e| e["was"] == "0644" && e["path"].as_str().unwrap().ends_with("old.eml")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readable_config_with_an_inline_password_is_refused_until_chmod_600() {
    let (pop, smtp, dir) = one_message().await;
    let cfg = mocks_config(
        dir.path(),
        &pop,
        &smtp,
        &format!("password = \"{PASSWORD}\""),
    );
    set_mode(&cfg, 0o644);
    let cfg_arg = cfg.to_str().unwrap();
    let out = popbridge_umask_022(dir.path(), &["--config", cfg_arg, "fetch"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        format!("{} holds the password of account \"info\"", cfg.display()),
        "readable by other users (mode 0644)".to_string(),
        format!("chmod 600 {}", cfg.display()),
        "--allow-insecure-config-mode".to_string(),
    ] {
        assert!(stderr.contains(&needle), "{needle:?} missing: {stderr}");
    }
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(
        !dir.path().join("state").exists(),
        "nothing done before refusing"
    );
    // The explicit escape hatch, for containers.
    let out = popbridge_umask_022(
        dir.path(),
        &["--config", cfg_arg, "--allow-insecure-config-mode", "fetch"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Private: accepted.
    assert!(pop.add_message("info", mail(1, "a@example.net", 500)));
    set_mode(&cfg, 0o600);
    let out = popbridge_umask_022(dir.path(), &["--config", cfg_arg, "fetch"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(delivered_ids(&smtp).len(), 2);

    // A password_file others can read is refused the same way.
    std::fs::write(dir.path().join("pass"), format!("{PASSWORD}\n")).unwrap();
    set_mode(&dir.path().join("pass"), 0o640);
    let cfg = mocks_config(dir.path(), &pop, &smtp, "password_file = \"pass\"");
    let out = popbridge_umask_022(dir.path(), &["--config", cfg.to_str().unwrap(), "fetch"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pass holds the password of account \"info\" and is readable by other users (mode 0640)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_command_that_prints_the_secret_on_failure_leaks_it_nowhere() {
    let (pop, smtp, dir) = one_message().await;
    // The secret is in a file the command reads, so the configuration does not show it.
    write_private(&dir.path().join("vault"), PASSWORD);
    let cfg = mocks_config(
        dir.path(),
        &pop,
        &smtp,
        "password_command = \"echo \\\"cannot unlock: $(cat vault) was refused\\\" >&2; exit 1\"",
    );
    set_mode(&cfg, 0o600);
    let events = dir.path().join("events.jsonl");
    let out = fetch_with_events(dir.path(), &cfg, &["--verbose"], &events).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let events = std::fs::read_to_string(&events).unwrap_or_default();
    assert_ne!(out.status.code(), Some(0), "{stdout}{stderr}");
    // The failure is reported, with the command's exit status and its sanitised words.
    assert!(
        stderr.contains("password command failed (exit status: 1): cannot unlock: *** was refused")
            || stdout.contains(
                "password command failed (exit status: 1): cannot unlock: *** was refused"
            ),
        "{stdout}\n{stderr}"
    );
    for (name, output) in [
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("events", &events),
    ] {
        assert!(
            !output.contains(PASSWORD),
            "{name} shows the secret: {output}"
        );
    }
}
