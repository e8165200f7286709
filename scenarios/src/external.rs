//! External connectors (`poplab run --connector-cmd TEMPLATE`): the template's
//! placeholders, and one run of the command (`sh -c`) with a bound and its output kept.
//!
//! Responsible for: substituting `{pop3_host}` `{pop3_port}` `{smtp_host}` `{smtp_port}`
//! `{user}` `{password}` `{rcpt}` `{scratch}` `{pass}` `{timeout}` with shell-quoted values (one scan,
//! so a value is never substituted again; other braces, such as `${HOME}`, stay as
//! written), running the command in its own process group with standard input closed,
//! killing the whole group past its bound, and capturing standard output and error (the
//! last 64 KiB of each).
//! Must never: contain connector logic, or wait without a bound.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncReadExt;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 10] = [
    "pop3_host",
    "pop3_port",
    "smtp_host",
    "smtp_port",
    "user",
    "password",
    "rcpt",
    "scratch",
    "pass",
    "timeout",
];

/// The most output kept per stream of one run (the rest is cut, and said so).
const OUTPUT_MAX: usize = 64 * 1024;
/// How long to wait for the output pipes after the command ended or was killed.
const DRAIN: Duration = Duration::from_secs(5);

/// The connector a scenario is run against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Connector {
    /// popbridge, in-process.
    #[default]
    Popbridge,
    /// An external command, once per pass and mailbox.
    External {
        /// The `--connector-cmd` template.
        template: String,
    },
}

impl Connector {
    /// How reports name it: `popbridge (in-process)` or the template.
    pub fn name(&self) -> String {
        match self {
            Self::Popbridge => "popbridge (in-process)".into(),
            Self::External { template } => template.clone(),
        }
    }

    /// True for an external command.
    pub fn is_external(&self) -> bool {
        matches!(self, Self::External { .. })
    }
}

/// The values of one run's placeholders.
#[derive(Debug, Clone)]
pub struct Values {
    /// The POP3 mock's host (`127.0.0.1`).
    pub pop3_host: String,
    /// The POP3 mock's port.
    pub pop3_port: u16,
    /// The SMTP mock's host (`127.0.0.1`).
    pub smtp_host: String,
    /// The SMTP mock's port.
    pub smtp_port: u16,
    /// The mailbox's login name.
    pub user: String,
    /// The mailbox's password.
    pub password: String,
    /// The envelope recipient to deliver to.
    pub rcpt: String,
    /// The scratch folder, kept across passes.
    pub scratch: PathBuf,
    /// The pass, from 1.
    pub pass: u32,
    /// The connector's command timeout in whole seconds, as the scenario sets it
    /// (`[connector.timeouts] command`): the time after which the world expects a
    /// connector to give up on a silent server.
    pub timeout: u64,
}

impl Values {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "pop3_host" => self.pop3_host.clone(),
            "pop3_port" => self.pop3_port.to_string(),
            "smtp_host" => self.smtp_host.clone(),
            "smtp_port" => self.smtp_port.to_string(),
            "user" => self.user.clone(),
            "password" => self.password.clone(),
            "rcpt" => self.rcpt.clone(),
            "scratch" => self.scratch.display().to_string(),
            "pass" => self.pass.to_string(),
            "timeout" => self.timeout.to_string(),
            _ => return None,
        })
    }
}

/// `s` quoted for `sh`: single quotes, a single quote written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The template with every known placeholder replaced by its shell-quoted value.
pub fn substitute(template: &str, v: &Values) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after
            .find('}')
            .and_then(|close| v.get(&after[..close]).map(|val| (close, val)));
        match value {
            Some((close, val)) => {
                out.push_str(&shell_quote(&val));
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Checks that a template names at least one placeholder (a command that cannot know the
/// mocks' ports cannot reach them); returns a message when it does not.
pub fn check_template(template: &str) -> Result<(), String> {
    if template.trim().is_empty() {
        return Err("the connector command is empty".into());
    }
    if !PLACEHOLDERS
        .iter()
        .any(|p| template.contains(&format!("{{{p}}}")))
    {
        return Err(format!(
            "the connector command uses no placeholder (it could not find the mocks); known: {}",
            PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
        ));
    }
    Ok(())
}

/// One run of the external command.
#[derive(Debug, Clone, Serialize)]
pub struct ExternalRun {
    /// The pass, from 1.
    pub pass: u32,
    /// The mailbox it was run for.
    pub user: String,
    /// Its exit status; `None` when it was killed (timeout) or died by a signal.
    pub exit: Option<i32>,
    /// True when it was killed past its bound.
    pub timed_out: bool,
    /// True when it was killed on purpose (a chaos run's SIGKILL at a random moment).
    #[serde(default)]
    pub killed: bool,
    /// Run time in milliseconds.
    pub elapsed_ms: u64,
    /// Standard output (its last 64 KiB).
    pub stdout: String,
    /// Standard error (its last 64 KiB).
    pub stderr: String,
}

impl ExternalRun {
    /// `exit 0`, `exit 3`, `killed by a signal`, `killed after 120s (timeout)`.
    pub fn status_text(&self, bound: Duration) -> String {
        match (self.exit, self.timed_out) {
            (_, true) => format!("killed after {bound:?} (timeout)"),
            (_, false) if self.killed => format!("SIGKILLed after {} ms (chaos)", self.elapsed_ms),
            (Some(c), false) => format!("exit {c}"),
            (None, false) => "killed by a signal".into(),
        }
    }
}

async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    // The end of the output says most (the error, the summary): keep the last octets.
    let mut kept = Vec::new();
    let mut cut = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * OUTPUT_MAX {
                    let drop = kept.len() - OUTPUT_MAX;
                    kept.drain(..drop);
                    cut += drop;
                }
            }
        }
    }
    if kept.len() > OUTPUT_MAX {
        let drop = kept.len() - OUTPUT_MAX;
        kept.drain(..drop);
        cut += drop;
    }
    let text = String::from_utf8_lossy(&kept);
    if cut > 0 {
        // Start at a line boundary.
        let text = text.split_once('\n').map_or(&*text, |(_, rest)| rest);
        format!("[... {cut} earlier octets not kept]\n{text}")
    } else {
        text.into_owned()
    }
}

/// Kills the process group `pgid` (the shell and everything it started).
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `sh -c COMMAND` (standard input closed, its own process group), bounded by
/// `bound`; past it, the whole group is killed.
pub async fn run_command(command: &str, bound: Duration, pass: u32, user: &str) -> ExternalRun {
    run_command_killed(command, bound, None, pass, user).await
}

/// [`run_command`], whose whole process group is SIGKILLed `kill_after` into the run when
/// it is still running then (a crash at a random moment).
pub async fn run_command_killed(
    command: &str,
    bound: Duration,
    kill_after: Option<Duration>,
    pass: u32,
    user: &str,
) -> ExternalRun {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut run = ExternalRun {
        pass,
        user: user.to_string(),
        exit: None,
        timed_out: false,
        killed: false,
        elapsed_ms: 0,
        stdout: String::new(),
        stderr: String::new(),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            run.stderr = format!("poplab: cannot start /bin/sh: {e}");
            return run;
        }
    };
    let pgid = child.id();
    let out = tokio::spawn(read_capped(child.stdout.take()));
    let err = tokio::spawn(read_capped(child.stderr.take()));
    let limit = kill_after.map_or(bound, |k| k.min(bound));
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => run.exit = status.code(),
        Ok(Err(e)) => run.stderr = format!("poplab: waiting for the command: {e}\n"),
        Err(_) => {
            if kill_after.is_some_and(|k| k < bound) {
                run.killed = true;
            } else {
                run.timed_out = true;
            }
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            let _ = child.kill().await;
        }
    }
    // Whatever the command left running in its group must not outlive the run.
    if let Some(pgid) = pgid {
        kill_group(pgid);
    }
    let drain = |h: tokio::task::JoinHandle<String>| async move {
        tokio::time::timeout(DRAIN, h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let (o, e) = (drain(out).await, drain(err).await);
    run.stdout = o;
    run.stderr.push_str(&e);
    run.elapsed_ms = started.elapsed().as_millis() as u64;
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            pop3_host: "127.0.0.1".into(),
            pop3_port: 1100,
            smtp_host: "127.0.0.1".into(),
            smtp_port: 2500,
            user: "info".into(),
            password: "it's {user}".into(),
            rcpt: "info@contoso.local".into(),
            scratch: PathBuf::from("/tmp/x y"),
            pass: 2,
            timeout: 30,
        }
    }

    #[test]
    fn placeholders_are_quoted_once_and_other_braces_stay() {
        let s = substitute(
            "c {pop3_host}:{pop3_port} {password} {scratch} ${HOME} {nope} {pass}{",
            &values(),
        );
        assert_eq!(
            s,
            r"c '127.0.0.1':'1100' 'it'\''s {user}' '/tmp/x y' ${HOME} {nope} '2'{"
        );
    }

    #[test]
    fn a_template_needs_a_placeholder() {
        assert!(check_template("fetchmail").is_err());
        assert!(check_template("  ").is_err());
        assert!(check_template("x {pop3_port}").is_ok());
    }

    #[tokio::test]
    async fn output_is_captured_and_a_slow_command_is_killed() {
        let r = run_command(
            "echo out; echo err >&2; exit 3",
            Duration::from_secs(10),
            1,
            "u",
        )
        .await;
        assert_eq!((r.exit, r.timed_out), (Some(3), false));
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));
        let started = Instant::now();
        let r = run_command("sleep 30 & sleep 30", Duration::from_millis(300), 1, "u").await;
        assert!(r.timed_out, "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
