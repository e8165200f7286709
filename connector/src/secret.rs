//! Secrets: the opaque [`Secret`] value and the places a password can come from.
//!
//! Responsible for: holding passwords and tokens so that they cannot be printed by
//! accident (Debug and Display show `***`), and resolving a configured
//! [`SecretSource`] (a literal, an environment variable, a file or a command) into a
//! [`Secret`] within a time limit.
//! Must never: put a secret, a secret file's content or a command's standard output
//! into a Debug/Display string, an error, a log line or an event.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most bytes kept from a password command's standard output.
const MAX_COMMAND_OUTPUT: usize = 64 * 1024;
/// Most bytes kept from a password command's standard error (only its first line is used).
const MAX_COMMAND_STDERR: usize = 8 * 1024;
/// Most characters of the command's first stderr line quoted in an error.
const MAX_STDERR_LINE: usize = 200;

/// A password or token: Debug and Display print `***`; the value is wiped on drop.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the one place that must send it (AUTH, APOP digest, ...).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    /// Compares without stopping at the first difference (the length is not hidden).
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0).into_bytes());
    }
}

/// Overwrites a buffer's whole allocation with zeros before freeing it (best effort,
/// without `unsafe`: copies made earlier by reallocation are out of reach).
fn wipe(mut bytes: Vec<u8>) {
    let capacity = bytes.capacity();
    bytes.clear();
    bytes.resize(capacity, 0);
    std::hint::black_box(&bytes);
}

/// A byte buffer that is wiped when dropped (command output, file content).
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0));
    }
}

/// Where an account's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the configuration file.
    Value(Secret),
    /// The value of an environment variable (the variable's name).
    Env(String),
    /// The content of a file, one trailing newline removed.
    File(PathBuf),
    /// The standard output of a `sh -c` command, one trailing newline removed.
    Command(String),
}

/// Why a secret could not be obtained; never contains the secret itself.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The environment variable does not exist.
    #[error("environment variable {var} is not set")]
    EnvMissing {
        /// The variable's name.
        var: String,
    },
    /// The environment variable exists but is empty.
    #[error("environment variable {var} is empty")]
    EnvEmpty {
        /// The variable's name.
        var: String,
    },
    /// The environment variable's value is not valid Unicode.
    #[error("environment variable {var} is not valid Unicode")]
    EnvNotUnicode {
        /// The variable's name.
        var: String,
    },
    /// The password file could not be read.
    #[error("cannot read password file {}: {source}", path.display())]
    FileRead {
        /// The file.
        path: PathBuf,
        /// The I/O error (it never quotes the content).
        source: std::io::Error,
    },
    /// The password file is empty (or holds only a newline).
    #[error("password file {} is empty", path.display())]
    FileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The password file is not UTF-8 text.
    #[error("password file {} is not valid UTF-8", path.display())]
    FileNotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// Reading the password file took longer than allowed.
    #[error("reading password file {} timed out after {timeout:?}", path.display())]
    FileTimeout {
        /// The file.
        path: PathBuf,
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// `sh` could not be started.
    #[error("cannot start password command: {source}")]
    CommandSpawn {
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading the command's output or waiting for it failed.
    #[error("password command I/O error: {source}")]
    CommandIo {
        /// The I/O error.
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("password command failed ({status}){}", stderr.as_deref().map(|l| format!(": {l}")).unwrap_or_default())]
    CommandFailed {
        /// How it ended, e.g. `exit status: 1` or `signal: 9 (SIGKILL)`.
        status: String,
        /// The first non-empty line of its standard error, shortened, with every word
        /// that could be a secret replaced by `***`.
        stderr: Option<String>,
    },
    /// The command did not finish in time; it was killed.
    #[error("password command timed out after {timeout:?} and was killed")]
    CommandTimeout {
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// The command succeeded but printed nothing (or only a newline).
    #[error("password command printed nothing on standard output")]
    CommandEmpty,
    /// The command printed more than a password could plausibly be.
    #[error("password command printed more than {limit} bytes on standard output")]
    CommandOutputTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The command's standard output is not UTF-8 text.
    #[error("password command output is not valid UTF-8")]
    CommandNotUtf8,
}

impl SecretSource {
    /// Obtains the secret; file reads and commands are bounded by `timeout`.
    pub async fn resolve(&self, timeout: Duration) -> Result<Secret, SecretError> {
        match self {
            Self::Value(secret) => Ok(secret.clone()),
            Self::Env(var) => from_env(var),
            Self::File(path) => from_file(path, timeout).await,
            Self::Command(command) => from_command(command, timeout).await,
        }
    }
}

fn from_env(var: &str) -> Result<Secret, SecretError> {
    match std::env::var(var) {
        Ok(value) if value.is_empty() => Err(SecretError::EnvEmpty { var: var.into() }),
        Ok(value) => Ok(Secret::new(value)),
        Err(std::env::VarError::NotPresent) => Err(SecretError::EnvMissing { var: var.into() }),
        Err(std::env::VarError::NotUnicode(raw)) => {
            wipe(raw.into_encoded_bytes());
            Err(SecretError::EnvNotUnicode { var: var.into() })
        }
    }
}

/// Removes one trailing `\n` or `\r\n`, nothing else.
fn trim_one_newline(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

/// Turns wiped bytes into a secret without copying; `None` when not UTF-8 (bytes wiped).
fn into_secret(mut bytes: Wiped) -> Option<Secret> {
    match String::from_utf8(std::mem::take(&mut bytes.0)) {
        Ok(text) => Some(Secret::new(text)),
        Err(e) => {
            wipe(e.into_bytes());
            None
        }
    }
}

async fn from_file(path: &std::path::Path, timeout: Duration) -> Result<Secret, SecretError> {
    let read = match tokio::time::timeout(timeout, tokio::fs::read(path)).await {
        Ok(read) => read,
        Err(_) => {
            return Err(SecretError::FileTimeout {
                path: path.into(),
                timeout,
            })
        }
    };
    let mut bytes = Wiped(read.map_err(|source| SecretError::FileRead {
        path: path.into(),
        source,
    })?);
    trim_one_newline(&mut bytes.0);
    if bytes.0.is_empty() {
        return Err(SecretError::FileEmpty { path: path.into() });
    }
    into_secret(bytes).ok_or_else(|| SecretError::FileNotUtf8 { path: path.into() })
}

/// Reads everything, keeping at most `cap` bytes; the flag tells whether more came.
async fn read_capped<R: AsyncRead + Unpin>(
    reader: Option<R>,
    cap: usize,
) -> std::io::Result<(Wiped, bool)> {
    let mut kept = Wiped(Vec::new());
    let mut overflow = false;
    let Some(mut reader) = reader else {
        return Ok((kept, overflow));
    };
    let mut chunk = Wiped(vec![0u8; 4096]);
    loop {
        let n = reader.read(&mut chunk.0).await?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = cap.saturating_sub(kept.0.len());
        if n > room {
            overflow = true;
        }
        kept.0.extend_from_slice(&chunk.0[..n.min(room)]);
    }
}

/// The first non-empty line of a failed command's standard error, shortened, with every
/// word that could be a secret replaced by `***`: a word printed on its standard output
/// (where the secret goes), and any word that is not plainly a word: digits mixed with
/// letters, symbols inside it, or longer than [`MAX_PLAIN_WORD`] (a token, a passphrase).
/// "gpg: decryption failed: No secret key" stays readable; "bad password Sw0rdfish!"
/// does not show the password.
fn first_stderr_line(stderr: &[u8], stdout: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let out = String::from_utf8_lossy(stdout);
    let printed: Vec<&str> = out.split_whitespace().collect();
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| sanitised_word(w, &printed))
        .collect();
    let line = words.join(" ");
    let mut short: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_STDERR_LINE)
        .collect();
    if line.chars().count() > MAX_STDERR_LINE {
        short.push('…');
    }
    Some(short)
}

/// The longest word of a password command's error message shown as it is.
const MAX_PLAIN_WORD: usize = 20;

/// `word` when it is plainly a word (letters, an inner `-` or `'`, surrounding
/// punctuation) or a short number, and not something the command printed; else `***`.
fn sanitised_word(word: &str, printed: &[&str]) -> String {
    const PUNCT: &[char] = &[
        '"', '\'', '(', ')', '[', ']', '{', '}', '<', '>', ',', '.', ';', ':', '!', '?',
    ];
    let core = word.trim_matches(PUNCT);
    if core.is_empty() {
        return word.to_string();
    }
    let plain = core.len() <= MAX_PLAIN_WORD
        && core.starts_with(|c: char| c.is_ascii_alphabetic())
        && core.ends_with(|c: char| c.is_ascii_alphabetic())
        && core
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '-' || c == '\'');
    let number = core.len() <= 4 && core.chars().all(|c| c.is_ascii_digit());
    let was_printed = printed
        .iter()
        .any(|p| p.trim_matches(PUNCT) == core || p.contains(core) && core.len() >= 4);
    if (plain || number) && !was_printed {
        word.to_string()
    } else {
        "***".to_string()
    }
}

async fn from_command(command: &str, timeout: Duration) -> Result<Secret, SecretError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SecretError::CommandSpawn { source })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let (out, err, status) = tokio::join!(
            read_capped(stdout, MAX_COMMAND_OUTPUT),
            read_capped(stderr, MAX_COMMAND_STDERR),
            child.wait()
        );
        (out, err, status)
    };
    let finished = tokio::time::timeout(timeout, run).await;
    let Ok((out, err, status)) = finished else {
        // kill() sends SIGKILL to `sh` (or to the command it exec'd) and reaps it.
        let _ = child.kill().await;
        return Err(SecretError::CommandTimeout { timeout });
    };
    let status = status.map_err(|source| SecretError::CommandIo { source })?;
    let (mut out, overflow) = out.map_err(|source| SecretError::CommandIo { source })?;
    if !status.success() {
        let stderr = err.ok().and_then(|(e, _)| first_stderr_line(&e.0, &out.0));
        return Err(SecretError::CommandFailed {
            status: status.to_string(),
            stderr,
        });
    }
    if overflow {
        return Err(SecretError::CommandOutputTooLarge {
            limit: MAX_COMMAND_OUTPUT,
        });
    }
    trim_one_newline(&mut out.0);
    if out.0.is_empty() {
        return Err(SecretError::CommandEmpty);
    }
    into_secret(out).ok_or(SecretError::CommandNotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(10);

    /// The error `source` is refused with (under the test deadline).
    async fn refused(source: SecretSource) -> SecretError {
        source.resolve(T).await.unwrap_err()
    }

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        let src = SecretSource::Value(s.clone());
        assert_eq!(format!("{src:?}"), "Value(***)");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s, Secret::new("hunter2".into()));
        assert_ne!(s, Secret::new("hunter3".into()));
        assert_ne!(s, Secret::new("hunter".into()));
    }

    #[test]
    fn trims_exactly_one_newline() {
        let trimmed = |input: &[u8]| {
            let mut v = input.to_vec();
            trim_one_newline(&mut v);
            v
        };
        assert_eq!(trimmed(b"abc\n"), b"abc");
        assert_eq!(trimmed(b"abc\r\n"), b"abc");
        assert_eq!(trimmed(b"abc\n\n"), b"abc\n");
        assert_eq!(trimmed(b"abc "), b"abc ");
        assert_eq!(trimmed(b"abc\r"), b"abc\r");
        assert_eq!(trimmed(b"\n"), b"");
        assert_eq!(trimmed(b""), b"");
    }

    #[tokio::test]
    async fn value_resolves_to_itself() {
        let src = SecretSource::Value(Secret::new("pw".into()));
        assert_eq!(src.resolve(T).await.unwrap().expose(), "pw");
    }

    #[tokio::test]
    async fn env_variable() {
        let var = format!("POPBRIDGE_SECRET_TEST_{}", std::process::id());
        std::env::set_var(&var, "from-env");
        let got = SecretSource::Env(var.clone()).resolve(T).await.unwrap();
        assert_eq!(got.expose(), "from-env");

        let empty = format!("{var}_EMPTY");
        std::env::set_var(&empty, "");
        let err = refused(SecretSource::Env(empty.clone())).await;
        assert_eq!(
            err.to_string(),
            format!("environment variable {empty} is empty")
        );

        let missing = format!("{var}_MISSING");
        let err = refused(SecretSource::Env(missing.clone())).await;
        assert!(matches!(err, SecretError::EnvMissing { .. }));
        assert_eq!(
            err.to_string(),
            format!("environment variable {missing} is not set")
        );
    }

    #[tokio::test]
    async fn file_trims_one_newline_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret \n\n").unwrap();
        let got = SecretSource::File(path.clone()).resolve(T).await.unwrap();
        assert_eq!(got.expose(), "s3cret \n");

        std::fs::write(&path, "s3cret\r\n").unwrap();
        let got = SecretSource::File(path.clone()).resolve(T).await.unwrap();
        assert_eq!(got.expose(), "s3cret");

        std::fs::write(&path, "\n").unwrap();
        let err = refused(SecretSource::File(path.clone())).await;
        assert_eq!(
            err.to_string(),
            format!("password file {} is empty", path.display())
        );

        std::fs::write(&path, b"\xff\xfehunter2").unwrap();
        let err = refused(SecretSource::File(path.clone())).await;
        assert!(matches!(err, SecretError::FileNotUtf8 { .. }));
        assert!(!err.to_string().contains("hunter2"));

        let missing = dir.path().join("missing");
        let err = refused(SecretSource::File(missing.clone())).await;
        assert!(matches!(err, SecretError::FileRead { .. }));
        assert!(
            err.to_string().starts_with(&format!(
                "cannot read password file {}: ",
                missing.display()
            )),
            "{err}"
        );
    }

    /// What `SecretSource::Command(cmd)` resolves to within the test's timeout.
    async fn run_command(cmd: &str) -> Result<Secret, SecretError> {
        SecretSource::Command(cmd.into()).resolve(T).await
    }

    #[tokio::test]
    async fn command_output_is_the_secret() {
        let got = run_command("printf 'abc\\n'").await.unwrap();
        assert_eq!(got.expose(), "abc");
        let got = run_command("printf 'a b\\r\\n'").await.unwrap();
        assert_eq!(got.expose(), "a b");
    }

    #[tokio::test]
    async fn command_stdin_is_null() {
        let got = run_command("cat; printf x").await.unwrap();
        assert_eq!(got.expose(), "x");
    }

    #[tokio::test]
    async fn failing_command_reports_status_and_stderr_never_stdout() {
        let cmd = "echo topsecret-out; echo 'no such entry' >&2; echo second >&2; exit 3";
        let err = run_command(cmd).await.unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            "password command failed (exit status: 3): no such entry"
        );
        assert!(!format!("{err:?}").contains("topsecret"));

        let err = run_command("exit 1").await.unwrap_err();
        assert_eq!(err.to_string(), "password command failed (exit status: 1)");

        // A command that shows the secret (or a token) in its complaint: never repeated.
        for (cmd, want) in [
            (
                "echo 'wrong password Sw0rdfish-s3cret! for sales' >&2; exit 1",
                "wrong password *** for sales",
            ),
            (
                "echo 'token ya29.a0AfH6SMBx3kq9ZrVhO8wY expired' >&2; exit 1",
                "token *** expired",
            ),
            (
                "echo correcthorsebatterystaple; echo 'gpg: correcthorsebatterystaple rejected' >&2; exit 2",
                "gpg: *** rejected",
            ),
            (
                "echo hunter; echo 'hunter is not accepted' >&2; exit 2",
                "*** is not accepted",
            ),
            (
                "echo 'gpg: decryption failed: No secret key' >&2; exit 2",
                "gpg: decryption failed: No secret key",
            ),
        ] {
            let err = run_command(cmd).await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.ends_with(&format!("): {want}")), "{cmd}: {text}");
        }

        let err = run_command("true").await.unwrap_err();
        assert!(matches!(err, SecretError::CommandEmpty));
    }

    #[tokio::test]
    async fn huge_output_is_refused() {
        let err = run_command("head -c 100000 /dev/zero | tr '\\0' a")
            .await
            .unwrap_err();
        assert!(matches!(err, SecretError::CommandOutputTooLarge { .. }));
    }

    #[tokio::test]
    async fn slow_command_times_out_and_is_killed() {
        let start = Instant::now();
        let err = SecretSource::Command("sleep 5".into())
            .resolve(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, SecretError::CommandTimeout { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "password command timed out after 200ms and was killed"
        );
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
