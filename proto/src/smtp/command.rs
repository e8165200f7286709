//! SMTP commands: `Display` writes the exact wire line; `parse` reads one (server side).

use std::fmt;

use thiserror::Error;

use super::EnvelopeAddress;
use crate::excerpt;
use crate::line::trim_eol;

/// An ESMTP parameter on MAIL or RCPT (`SIZE=1234`, `BODY=8BITMIME`, `SMTPUTF8`); built
/// only through [`Param::new`] and [`Param::flag`], so it always has the RFC 5321 syntax and
/// renders as one token of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    keyword: String,
    value: Option<String>,
}

impl Param {
    /// A parameter with a value: `keyword` an esmtp-keyword (ALPHA / DIGIT, then ALPHA /
    /// DIGIT / `-`), `value` an esmtp-value (one or more of `%d33-60 / %d62-126`: no space,
    /// control, `=` or non-ASCII octet).
    pub fn new(keyword: &str, value: impl Into<String>) -> Result<Self, CommandError> {
        let value = value.into();
        if value.is_empty() || !value.bytes().all(|b| matches!(b, 33..=60 | 62..=126)) {
            return Err(CommandError::Param("not an esmtp-value"));
        }
        Ok(Self {
            keyword: esmtp_keyword(keyword)?,
            value: Some(value),
        })
    }

    /// A parameter without a value; `keyword` as for [`Param::new`].
    pub fn flag(keyword: &str) -> Result<Self, CommandError> {
        Ok(Self {
            keyword: esmtp_keyword(keyword)?,
            value: None,
        })
    }

    /// The keyword, upper case.
    pub fn keyword(&self) -> &str {
        &self.keyword
    }

    /// The value after `=`, if any.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

/// `keyword` upper-cased when it is an esmtp-keyword (RFC 5321 section 4.1.2).
fn esmtp_keyword(keyword: &str) -> Result<String, CommandError> {
    let mut bytes = keyword.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(CommandError::Param("not an esmtp-keyword"));
    }
    Ok(keyword.to_ascii_uppercase())
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}", self.keyword, v),
            None => f.write_str(&self.keyword),
        }
    }
}

/// An SMTP command.
#[derive(Clone, PartialEq, Eq)]
pub enum SmtpCommand {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<path> params`; `from` is the text between the brackets (never a CR or
    /// LF; a valid mailbox or not is the server's call).
    Mail {
        /// Reverse path text (empty for `<>`).
        from: EnvelopeAddress,
        /// ESMTP parameters.
        params: Vec<Param>,
    },
    /// `RCPT TO:<path> params`; `to` is the text between the brackets (never a CR or LF; a
    /// valid mailbox or not is the server's call).
    Rcpt {
        /// Forward path text.
        to: EnvelopeAddress,
        /// ESMTP parameters.
        params: Vec<Param>,
    },
    /// `DATA`
    Data,
    /// `BDAT size [LAST]` (RFC 3030)
    Bdat {
        /// Octets of the chunk that follows the command line.
        size: u64,
        /// True for the last chunk.
        last: bool,
    },
    /// `RSET`
    Rset,
    /// `NOOP`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY text`
    Vrfy(String),
    /// `HELP`
    Help,
    /// `STARTTLS`
    StartTls,
    /// `AUTH mechanism [initial]`
    Auth {
        /// Upper-case SASL mechanism.
        mechanism: String,
        /// Initial response, base64.
        initial: Option<String>,
    },
}

/// Why a command line could not be parsed; servers map these to 500 / 501.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// Unknown verb (500 5.3.3).
    #[error("unrecognized command {0:?}")]
    Unknown(String),
    /// Known verb, bad arguments (501 5.5.4).
    #[error("{verb}: {reason}")]
    Syntax {
        /// The command's verb.
        verb: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// An ESMTP parameter whose keyword or value RFC 5321 does not allow (a parsed one is
    /// reported as [`CommandError::Syntax`] of its MAIL or RCPT).
    #[error("ESMTP parameter: {0}")]
    Param(&'static str),
}

impl SmtpCommand {
    /// The command's verb, upper case.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::Mail { .. } => "MAIL",
            Self::Rcpt { .. } => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::Vrfy(_) => "VRFY",
            Self::Help => "HELP",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
        }
    }

    /// The command line with secrets replaced by `***`, for transcripts.
    pub fn redacted(&self) -> String {
        match self {
            Self::Auth {
                mechanism,
                initial: Some(_),
            } => format!("AUTH {mechanism} ***"),
            other => other.to_string().trim_end().to_string(),
        }
    }

    /// Parses one command line (CRLF optional). Verbs are case-insensitive.
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        let line = trim_eol(line);
        let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax {
            verb: "?",
            reason: "command is not UTF-8",
        })?;
        // Trimmed with the ASCII whitespace the arguments are split on (not `trim()`:
        // a trailing VT or NBSP would be a token here but gone once re-rendered).
        let (verb, rest) = match line.find(' ') {
            Some(p) => (&line[..p], line[p + 1..].trim_ascii()),
            None => (line, ""),
        };
        let upper = verb.to_ascii_uppercase();
        let none = |cmd: Self| {
            if rest.is_empty() {
                Ok(cmd)
            } else {
                Err(CommandError::Syntax {
                    verb: cmd.verb(),
                    reason: "takes no argument",
                })
            }
        };
        match upper.as_str() {
            "EHLO" | "HELO" => {
                if rest.is_empty() || rest.contains(' ') {
                    let verb = if upper == "EHLO" { "EHLO" } else { "HELO" };
                    return Err(CommandError::Syntax {
                        verb,
                        reason: "expects one domain",
                    });
                }
                Ok(if upper == "EHLO" {
                    Self::Ehlo(rest.into())
                } else {
                    Self::Helo(rest.into())
                })
            }
            "MAIL" => {
                let (from, params) = path_and_params(rest, "FROM:", "MAIL")?;
                Ok(Self::Mail { from, params })
            }
            "RCPT" => {
                let (to, params) = path_and_params(rest, "TO:", "RCPT")?;
                if to.is_empty() {
                    return Err(CommandError::Syntax {
                        verb: "RCPT",
                        reason: "empty recipient",
                    });
                }
                Ok(Self::Rcpt { to, params })
            }
            "DATA" => none(Self::Data),
            "RSET" => none(Self::Rset),
            "NOOP" => Ok(Self::Noop),
            "QUIT" => none(Self::Quit),
            "HELP" => Ok(Self::Help),
            "STARTTLS" => none(Self::StartTls),
            "VRFY" => Ok(Self::Vrfy(rest.into())),
            "BDAT" => {
                let mut it = rest.split_ascii_whitespace();
                let bad = CommandError::Syntax {
                    verb: "BDAT",
                    reason: "expects a size and optional LAST",
                };
                let size = it
                    .next()
                    .filter(|s| s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()));
                let size: u64 = size.and_then(|s| s.parse().ok()).ok_or(bad.clone())?;
                let last = match it.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(bad),
                };
                if it.next().is_some() {
                    return Err(bad);
                }
                Ok(Self::Bdat { size, last })
            }
            "AUTH" => {
                let mut it = rest.split_ascii_whitespace();
                let mechanism = it
                    .next()
                    .ok_or(CommandError::Syntax {
                        verb: "AUTH",
                        reason: "expects a mechanism",
                    })?
                    .to_ascii_uppercase();
                let initial = it.next().map(str::to_string);
                Ok(Self::Auth { mechanism, initial })
            }
            _ => Err(CommandError::Unknown(excerpt(verb.as_bytes(), 16))),
        }
    }
}

fn path_and_params(
    rest: &str,
    prefix: &str,
    verb: &'static str,
) -> Result<(EnvelopeAddress, Vec<Param>), CommandError> {
    let syntax = |reason| CommandError::Syntax { verb, reason };
    // `get` rather than indexing: the prefix may end inside a multi-byte character.
    if !rest
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    {
        return Err(syntax("expects FROM:/TO: and an address"));
    }
    let rest = rest[prefix.len()..].trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>').ok_or(syntax("unbalanced angle brackets"))?;
        (&inner[..end], &inner[end + 1..])
    } else {
        // Without brackets (sloppy clients): the address runs to the first space.
        let (path, params) = match rest.find(' ') {
            Some(p) => (&rest[..p], &rest[p..]),
            None => (rest, ""),
        };
        if path.contains(['<', '>']) {
            return Err(syntax("unbalanced angle brackets"));
        }
        (path, params)
    };
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(syntax("text after the address"));
    }
    let params = params
        .split_ascii_whitespace()
        .map(|p| {
            match p.split_once('=') {
                Some((k, v)) => Param::new(k, v),
                None => Param::flag(p),
            }
            .map_err(|_| syntax("malformed parameter"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let path = EnvelopeAddress::new(path).map_err(|_| syntax("CR or LF in the address"))?;
    Ok((path, params))
}

impl fmt::Display for SmtpCommand {
    /// The exact wire line, CRLF included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ehlo(d) => write!(f, "EHLO {d}")?,
            Self::Helo(d) => write!(f, "HELO {d}")?,
            Self::Mail { from, params } => {
                write!(f, "MAIL FROM:<{from}>")?;
                for p in params {
                    write!(f, " {p}")?;
                }
            }
            Self::Rcpt { to, params } => {
                write!(f, "RCPT TO:<{to}>")?;
                for p in params {
                    write!(f, " {p}")?;
                }
            }
            Self::Bdat { size, last: true } => write!(f, "BDAT {size} LAST")?,
            Self::Bdat { size, last: false } => write!(f, "BDAT {size}")?,
            Self::Vrfy(s) => write!(f, "VRFY {s}")?,
            Self::Auth {
                mechanism,
                initial: Some(i),
            } => write!(f, "AUTH {mechanism} {i}")?,
            Self::Auth {
                mechanism,
                initial: None,
            } => write!(f, "AUTH {mechanism}")?,
            other => f.write_str(other.verb())?,
        }
        f.write_str("\r\n")
    }
}

impl fmt::Debug for SmtpCommand {
    /// The redacted wire line: AUTH secrets never reach debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpCommand({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> EnvelopeAddress {
        EnvelopeAddress::new(text).unwrap()
    }

    fn param(keyword: &str, value: &str) -> Param {
        Param::new(keyword, value).unwrap()
    }

    #[test]
    fn wire_lines_are_exact_and_parse_back() {
        let cases = vec![
            (
                SmtpCommand::Ehlo("client.example".into()),
                "EHLO client.example\r\n",
            ),
            (SmtpCommand::Helo("client".into()), "HELO client\r\n"),
            (
                SmtpCommand::Mail {
                    from: addr("a@b.example"),
                    params: vec![param("SIZE", "1234"), param("BODY", "8BITMIME")],
                },
                "MAIL FROM:<a@b.example> SIZE=1234 BODY=8BITMIME\r\n",
            ),
            (
                SmtpCommand::Mail {
                    from: EnvelopeAddress::null(),
                    params: vec![],
                },
                "MAIL FROM:<>\r\n",
            ),
            (
                SmtpCommand::Rcpt {
                    to: addr("c@d.example"),
                    params: vec![],
                },
                "RCPT TO:<c@d.example>\r\n",
            ),
            (SmtpCommand::Data, "DATA\r\n"),
            (
                SmtpCommand::Bdat {
                    size: 4096,
                    last: false,
                },
                "BDAT 4096\r\n",
            ),
            (
                SmtpCommand::Bdat {
                    size: 0,
                    last: true,
                },
                "BDAT 0 LAST\r\n",
            ),
            (SmtpCommand::Rset, "RSET\r\n"),
            (SmtpCommand::Noop, "NOOP\r\n"),
            (SmtpCommand::Quit, "QUIT\r\n"),
            (SmtpCommand::StartTls, "STARTTLS\r\n"),
            (
                SmtpCommand::Auth {
                    mechanism: "PLAIN".into(),
                    initial: Some("AGEAYg==".into()),
                },
                "AUTH PLAIN AGEAYg==\r\n",
            ),
        ];
        crate::test_support::assert_wire_round_trips(cases, SmtpCommand::parse);
    }

    #[test]
    fn lenient_forms_are_read() {
        assert_eq!(
            SmtpCommand::parse(b"mail from: <user> SMTPUTF8\r\n").unwrap(),
            SmtpCommand::Mail {
                from: addr("user"),
                params: vec![Param::flag("SMTPUTF8").unwrap()]
            }
        );
        assert_eq!(
            SmtpCommand::parse(b"MAIL FROM:a@b\r\n").unwrap(),
            SmtpCommand::Mail {
                from: addr("a@b"),
                params: vec![]
            }
        );
        assert_eq!(
            SmtpCommand::parse(b"bdat 10 last").unwrap(),
            SmtpCommand::Bdat {
                size: 10,
                last: true
            }
        );
    }

    #[test]
    fn errors_tell_unknown_from_syntax() {
        assert_eq!(
            SmtpCommand::parse(b"XYZZY\r\n"),
            Err(CommandError::Unknown("XYZZY".into()))
        );
        // Syntax errors: see `nul_and_invalid_utf8_commands_are_errors` in tests/wire.rs.
    }

    #[test]
    fn params_are_built_only_with_rfc_5321_syntax() {
        let p = param("size", "1234");
        assert_eq!((p.keyword(), p.value()), ("SIZE", Some("1234")));
        assert_eq!(p.to_string(), "SIZE=1234");
        assert_eq!(Param::flag("x-Ext1").unwrap().to_string(), "X-EXT1");
        assert_eq!(param("ENVID", "a+2Bb!~").value(), Some("a+2Bb!~"));
        for value in [
            "",
            "a\r\nRCPT TO:<x@y>",
            "a\rb",
            "a\nb",
            "a b",
            " a",
            "a=b",
            "=",
            "\u{e9}",
            "a\tb",
            "\0",
        ] {
            assert_eq!(
                Param::new("ENVID", value),
                Err(CommandError::Param("not an esmtp-value")),
                "{value:?}"
            );
        }
        for keyword in ["", "-SIZE", "SI ZE", "SIZE\r\n", "SI=ZE", "S_ZE", "\u{e9}"] {
            assert_eq!(
                Param::flag(keyword),
                Err(CommandError::Param("not an esmtp-keyword")),
                "{keyword:?}"
            );
            assert!(Param::new(keyword, "1").is_err(), "{keyword:?}");
        }
    }

    #[test]
    fn auth_secrets_are_redacted() {
        let c = SmtpCommand::Auth {
            mechanism: "PLAIN".into(),
            initial: Some("c2VjcmV0".into()),
        };
        assert!(!format!("{c:?}").contains("c2VjcmV0"));
    }
}
