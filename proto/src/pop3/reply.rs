//! POP3 replies: `+OK` / `-ERR` status lines with RFC 2449 response codes, and
//! `+ ` SASL continuations.

use std::fmt;

use thiserror::Error;

use crate::excerpt;
use crate::line::trim_eol;

/// Whether the server accepted the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `+OK`
    Ok,
    /// `-ERR`
    Err,
}

/// An RFC 2449 / 3206 extended response code, the bracketed word after the status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RespCode {
    /// `[IN-USE]`: the mailbox is locked by another session; back off.
    InUse,
    /// `[LOGIN-DELAY]`: logged in too recently; wait the advertised delay.
    LoginDelay,
    /// `[SYS/TEMP]`: a temporary server problem.
    SysTemp,
    /// `[SYS/PERM]`: a permanent server problem.
    SysPerm,
    /// `[AUTH]`: the credentials are wrong; do not retry in a loop.
    Auth,
    /// `[UTF8]` or any other code, kept verbatim (without brackets).
    Other(String),
}

impl RespCode {
    /// Parses the text between the brackets.
    pub fn from_word(word: &str) -> Self {
        match word.to_ascii_uppercase().as_str() {
            "IN-USE" => Self::InUse,
            "LOGIN-DELAY" => Self::LoginDelay,
            "SYS/TEMP" => Self::SysTemp,
            "SYS/PERM" => Self::SysPerm,
            "AUTH" => Self::Auth,
            _ => Self::Other(word.to_string()),
        }
    }

    /// The code as written between brackets.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InUse => "IN-USE",
            Self::LoginDelay => "LOGIN-DELAY",
            Self::SysTemp => "SYS/TEMP",
            Self::SysPerm => "SYS/PERM",
            Self::Auth => "AUTH",
            Self::Other(s) => s,
        }
    }

    /// True for codes that ask the client to come back later rather than give up.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::InUse | Self::LoginDelay | Self::SysTemp)
    }
}

/// A single-line POP3 status reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Reply {
    /// `+OK` or `-ERR`.
    pub status: Status,
    /// The response code, when the text starts with one.
    pub code: Option<RespCode>,
    /// The human-readable text after the status and code (lossy UTF-8).
    pub text: String,
}

/// Any line a POP3 server sends where a reply is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pop3Response {
    /// A status line.
    Status(Pop3Reply),
    /// A SASL continuation `+ base64` (RFC 5034), with its payload.
    Continue(String),
}

/// Why a reply line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// The line starts with neither `+OK`, `-ERR` nor `+ `.
    #[error("not a POP3 reply: {0:?}")]
    Invalid(String),
}

impl Pop3Reply {
    /// A `+OK text` reply.
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            code: None,
            text: text.into(),
        }
    }

    /// A `-ERR text` reply.
    pub fn err(text: impl Into<String>) -> Self {
        Self {
            status: Status::Err,
            code: None,
            text: text.into(),
        }
    }

    /// A `-ERR [CODE] text` reply.
    pub fn err_code(code: RespCode, text: impl Into<String>) -> Self {
        Self {
            status: Status::Err,
            code: Some(code),
            text: text.into(),
        }
    }

    /// True for `+OK`.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    /// Parses a status line (with or without CRLF).
    pub fn parse(line: &[u8]) -> Result<Self, ReplyError> {
        match Pop3Response::parse(line)? {
            Pop3Response::Status(r) => Ok(r),
            Pop3Response::Continue(_) => Err(ReplyError::Invalid(excerpt(line, 80))),
        }
    }
}

impl Pop3Response {
    /// Parses a reply line (with or without CRLF).
    pub fn parse(line: &[u8]) -> Result<Self, ReplyError> {
        let l = trim_eol(line);
        let (status, rest) = if let Some(r) = strip_word(l, b"+OK") {
            (Status::Ok, r)
        } else if let Some(r) = strip_word(l, b"-ERR") {
            (Status::Err, r)
        } else if l == b"+" {
            return Ok(Self::Continue(String::new()));
        } else if let Some(r) = l.strip_prefix(b"+ ") {
            return Ok(Self::Continue(String::from_utf8_lossy(r).into_owned()));
        } else {
            return Err(ReplyError::Invalid(excerpt(line, 80)));
        };
        let text = String::from_utf8_lossy(rest);
        let (code, text) = split_code(&text);
        Ok(Self::Status(Pop3Reply { status, code, text }))
    }
}

/// `word` at the start of `line`, followed by a space or the end; returns what follows.
fn strip_word<'a>(line: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    if line.len() < word.len() || !line[..word.len()].eq_ignore_ascii_case(word) {
        return None;
    }
    match &line[word.len()..] {
        [] => Some(&[]),
        [b' ', rest @ ..] => Some(rest),
        _ => None,
    }
}

fn split_code(text: &str) -> (Option<RespCode>, String) {
    if let Some(inner) = text.strip_prefix('[') {
        if let Some(end) = inner.find(']') {
            let word = &inner[..end];
            let valid = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/');
            if valid {
                let rest = inner[end + 1..].trim_start_matches(' ');
                return (Some(RespCode::from_word(word)), rest.to_string());
            }
        }
    }
    (None, text.to_string())
}

impl fmt::Display for Pop3Reply {
    /// The exact wire line, CRLF included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.status {
            Status::Ok => "+OK",
            Status::Err => "-ERR",
        })?;
        if let Some(code) = &self.code {
            write!(f, " [{}]", code.as_str())?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        f.write_str("\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines_with_and_without_codes() {
        let r = Pop3Reply::parse(b"+OK 2 messages (320 octets)\r\n").unwrap();
        assert_eq!(r, Pop3Reply::ok("2 messages (320 octets)"));
        let r = Pop3Reply::parse(b"-ERR [IN-USE] mailbox locked\r\n").unwrap();
        assert_eq!(r, Pop3Reply::err_code(RespCode::InUse, "mailbox locked"));
        let r = Pop3Reply::parse(b"-ERR [SYS/TEMP] try later\r\n").unwrap();
        assert_eq!(r.code, Some(RespCode::SysTemp));
        assert!(r.code.unwrap().is_transient());
        let r = Pop3Reply::parse(b"-ERR [AUTH] bad password").unwrap();
        assert_eq!(r.code, Some(RespCode::Auth));
        let r = Pop3Reply::parse(b"-ERR [LOGIN-DELAY] wait").unwrap();
        assert_eq!(r.code, Some(RespCode::LoginDelay));
        let r = Pop3Reply::parse(b"-ERR [SYS/PERM] gone").unwrap();
        assert_eq!(r.code, Some(RespCode::SysPerm));
        assert!(!r.code.unwrap().is_transient());
        let r = Pop3Reply::parse(b"+OK\r\n").unwrap();
        assert_eq!(r, Pop3Reply::ok(""));
        let r = Pop3Reply::parse(b"-ERR [not a code] x").unwrap();
        assert_eq!(r.code, None);
        assert_eq!(r.text, "[not a code] x");
    }

    #[test]
    fn continuation_and_invalid_lines() {
        assert_eq!(
            Pop3Response::parse(b"+ VXNlcm5hbWU6\r\n").unwrap(),
            Pop3Response::Continue("VXNlcm5hbWU6".into())
        );
        assert_eq!(
            Pop3Response::parse(b"+\r\n").unwrap(),
            Pop3Response::Continue(String::new())
        );
        assert!(Pop3Reply::parse(b"+ abc").is_err());
        assert!(Pop3Reply::parse(b"+OKAY").is_err());
        assert!(Pop3Reply::parse(b"OK").is_err());
        assert!(Pop3Reply::parse(b"").is_err());
        assert!(Pop3Reply::parse(b"\0\xff\xfe").is_err());
        let r = Pop3Reply::parse(b"+OK \xff\xfe text").unwrap();
        assert!(r.text.ends_with("text"));
    }

    #[test]
    fn wire_form_is_exact_and_round_trips() {
        let cases = [
            (
                Pop3Reply::ok("POP3 ready <1.2@host>"),
                "+OK POP3 ready <1.2@host>\r\n",
            ),
            (
                Pop3Reply::err_code(RespCode::InUse, "locked"),
                "-ERR [IN-USE] locked\r\n",
            ),
            (Pop3Reply::ok(""), "+OK\r\n"),
            (
                Pop3Reply::err_code(RespCode::Other("UTF8".into()), "x"),
                "-ERR [UTF8] x\r\n",
            ),
        ];
        for (r, wire) in cases {
            assert_eq!(r.to_string(), wire);
            assert_eq!(Pop3Reply::parse(wire.as_bytes()).unwrap(), r);
        }
    }
}
