//! Configuration problems: [`ConfigError`] and the wording of TOML parse errors.
//!
//! Responsible for: the error type and its `FILE:LINE: KEY: MESSAGE` display, and turning
//! a TOML parse error into one (the key path and line it is about, serde's wording made
//! readable, a secret's value never shown).
//! Must never: quote the value of a secret key (`password`, `refresh_token`,
//! `client_secret`), or validate values (that is `resolve`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::resolve::Ctx;
#[cfg(test)]
use crate::toml_locate::render;
use crate::toml_locate::{Located, Locator};

/// Keys whose values are secrets: an error about one never quotes its value.
const SECRET_KEYS: [&str; 3] = ["password", "refresh_token", "client_secret"];

/// A configuration problem; Display reads `FILE:LINE: KEY: MESSAGE`.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value is not acceptable.
    #[error("{}", describe(path, *line, key.as_deref(), message))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the offending key or value, when known.
        line: Option<usize>,
        /// Key path such as `account[0].tls`, when known.
        key: Option<String>,
        /// What is wrong (never quotes a password).
        message: String,
    },
    /// A file holding a secret can be read by other users.
    #[error(
        "{} holds {holds} and is readable by other users (mode {mode:04o}): run chmod 600 {}, \
         or keep the secret in a password_file of mode 0600, in password_env or in \
         password_command; where file modes mean nothing (some containers), pass \
         --allow-insecure-config-mode",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file (the configuration, or a `password_file`).
        path: PathBuf,
        /// What it holds, e.g. `the password of account "sales"`.
        holds: String,
        /// Its permission bits.
        mode: u32,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } | Self::Exposed { .. } => None,
            Self::Invalid { line, .. } => *line,
        }
    }

    /// The key path the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Read { .. } | Self::Exposed { .. } => None,
            Self::Invalid { key, .. } => key.as_deref(),
        }
    }
}

fn describe(path: &Path, line: Option<usize>, key: Option<&str>, message: &str) -> String {
    let mut out = path.display().to_string();
    if let Some(line) = line {
        let _ = write!(out, ":{line}");
    }
    if let Some(key) = key {
        let _ = write!(out, ": {key}");
    }
    let _ = write!(out, ": {message}");
    out
}

impl Ctx<'_> {
    /// The configuration error of a TOML parse error of the file.
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let Located {
            span,
            line,
            key,
            mut message,
        } = Locator::new(self.text).locate(e);
        if let Some(table) = message
            .strip_prefix("invalid length ")
            .and_then(|m| m.split_once(", expected "))
            .map(|(_, t)| t.to_string())
            .filter(|t| t.ends_with(" table"))
        {
            // A table written as an array.
            message = format!("invalid type: array, expected {table}");
        } else if message.contains("struct Raw") {
            // serde's wording for a table given as an array names our private types.
            message = "invalid type, expected a table".to_string();
        } else if message == "wanted string or table" {
            message = "invalid type, expected a string".to_string();
        } else if key.as_deref() == Some("account") && message.starts_with("invalid type: map") {
            message = "accounts are written as [[account]] (an array of tables)".to_string();
        }
        let on_password = key.as_deref().is_some_and(|k| {
            SECRET_KEYS
                .iter()
                .any(|s| k == *s || k.ends_with(&format!(".{s}")))
        }) || span
            .as_ref()
            .is_some_and(|s| is_password_line(self.text, s.start));
        let harmless = ["unknown key", "missing required key", "duplicate key"]
            .iter()
            .any(|p| message.starts_with(p));
        if on_password && !harmless {
            message = "invalid secret value (not shown); expected a string".to_string();
        }
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key,
            message: quote_backticks(&message),
        }
    }
}

/// Serde quotes names with backticks; show them in double quotes like the rest of the
/// messages (a quoted part that itself holds a `"` keeps its backticks).
fn quote_backticks(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let inner = &after[..close];
        out.push_str(&rest[..open]);
        if inner.contains('"') {
            out.push('`');
            out.push_str(inner);
            out.push('`');
        } else {
            out.push('"');
            out.push_str(inner);
            out.push('"');
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// True when the line holding `offset` assigns a secret key (`password`, `refresh_token`,
/// `client_secret`; used to keep values of unparsable secret lines out of messages).
fn is_password_line(text: &str, offset: usize) -> bool {
    let offset = offset.min(text.len());
    let start = text.as_bytes()[..offset]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let line = text.get(start..).unwrap_or("");
    let line = line.split('\n').next().unwrap_or("");
    line.split(['=', ',', '{'])
        .any(|part| SECRET_KEYS.contains(&part.trim().trim_matches(['"', '\''])))
}

/// The key path (`account[1].tls`) of the innermost key or value at `offset`, if any.
#[cfg(test)]
pub(super) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    Locator::new(text).path_at(offset).map(|p| render(&p))
}
