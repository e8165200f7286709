//! POP3 commands: `Display` writes the exact wire line, `parse` reads one.

use std::fmt;

use thiserror::Error;

use crate::excerpt;
use crate::line::trim_eol;

/// A POP3 command.
#[derive(Clone, PartialEq, Eq)]
pub enum Pop3Command {
    /// `USER name`
    User(String),
    /// `PASS secret` (the rest of the line, spaces included).
    Pass(String),
    /// `APOP name digest`
    Apop {
        /// Mailbox name.
        name: String,
        /// Lower-case hex MD5 of the greeting timestamp and the secret.
        digest: String,
    },
    /// `AUTH mechanism [initial-response]` (RFC 5034); bare `AUTH` lists mechanisms on some servers.
    Auth {
        /// SASL mechanism name, upper case.
        mechanism: String,
        /// Base64 initial response, `=` for an empty one.
        initial: Option<String>,
    },
    /// `STLS` (RFC 2595)
    Stls,
    /// `CAPA` (RFC 2449)
    Capa,
    /// `STAT`
    Stat,
    /// `LIST [msg]`
    List(Option<u32>),
    /// `UIDL [msg]`
    Uidl(Option<u32>),
    /// `RETR msg`
    Retr(u32),
    /// `TOP msg lines`
    Top {
        /// Message number.
        msg: u32,
        /// Body lines to send after the header.
        lines: u32,
    },
    /// `DELE msg`
    Dele(u32),
    /// `RSET`
    Rset,
    /// `NOOP`
    Noop,
    /// `QUIT`
    Quit,
}

/// Why a command line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// An empty line.
    #[error("empty command")]
    Empty,
    /// A keyword this codec does not know.
    #[error("unknown command {0:?}")]
    Unknown(String),
    /// A known keyword with missing, extra or malformed arguments.
    #[error("{keyword}: {reason}")]
    Syntax {
        /// The command's keyword.
        keyword: &'static str,
        /// What is wrong with the arguments.
        reason: &'static str,
    },
}

impl Pop3Command {
    /// The command's keyword, upper case (`RETR`, `AUTH`, ...).
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::User(_) => "USER",
            Self::Pass(_) => "PASS",
            Self::Apop { .. } => "APOP",
            Self::Auth { .. } => "AUTH",
            Self::Stls => "STLS",
            Self::Capa => "CAPA",
            Self::Stat => "STAT",
            Self::List(_) => "LIST",
            Self::Uidl(_) => "UIDL",
            Self::Retr(_) => "RETR",
            Self::Top { .. } => "TOP",
            Self::Dele(_) => "DELE",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
        }
    }

    /// True when the server's answer is multi-line on success.
    pub fn expects_multiline(&self) -> bool {
        matches!(
            self,
            Self::Capa | Self::List(None) | Self::Uidl(None) | Self::Retr(_) | Self::Top { .. }
        )
    }

    /// The command line with secrets replaced by `***`, for transcripts and logs.
    pub fn redacted(&self) -> String {
        match self {
            Self::Pass(_) => "PASS ***".into(),
            Self::Auth {
                mechanism,
                initial: Some(_),
            } => format!("AUTH {mechanism} ***"),
            Self::Apop { name, .. } => format!("APOP {name} ***"),
            other => other.to_string().trim_end().to_string(),
        }
    }

    /// Parses one command line (with or without its CRLF). Keywords are case-insensitive.
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        let line = trim_eol(line);
        if line.is_empty() {
            return Err(CommandError::Empty);
        }
        let (kw, rest) = match line.iter().position(|&b| b == b' ') {
            Some(p) => (&line[..p], &line[p + 1..]),
            None => (line, &b""[..]),
        };
        let kw_upper = kw.to_ascii_uppercase();
        let args = || {
            rest.split(|&b| b == b' ')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
        };
        // The arguments when there are `n` of them, else a syntax error saying `reason`.
        let exactly = |n: usize, keyword, reason| {
            let a = args();
            if a.len() == n {
                Ok(a)
            } else {
                Err(CommandError::Syntax { keyword, reason })
            }
        };
        let text = |b: &[u8], keyword| {
            String::from_utf8(b.to_vec()).map_err(|_| CommandError::Syntax {
                keyword,
                reason: "argument is not UTF-8",
            })
        };
        let cmd = match &kw_upper[..] {
            b"USER" => {
                let a = exactly(1, "USER", "expects one name")?;
                Self::User(text(a[0], "USER")?)
            }
            b"PASS" => {
                if rest.is_empty() {
                    return Err(CommandError::Syntax {
                        keyword: "PASS",
                        reason: "expects a secret",
                    });
                }
                Self::Pass(text(rest, "PASS")?)
            }
            b"APOP" => {
                let a = exactly(2, "APOP", "expects name and digest")?;
                Self::Apop {
                    name: text(a[0], "APOP")?,
                    digest: text(a[1], "APOP")?,
                }
            }
            b"AUTH" => {
                let a = args();
                match a.len() {
                    0 => Self::Auth {
                        mechanism: String::new(),
                        initial: None,
                    },
                    1 | 2 => Self::Auth {
                        mechanism: text(a[0], "AUTH")?.to_ascii_uppercase(),
                        initial: a.get(1).map(|i| text(i, "AUTH")).transpose()?,
                    },
                    _ => {
                        return Err(CommandError::Syntax {
                            keyword: "AUTH",
                            reason: "too many arguments",
                        })
                    }
                }
            }
            b"STLS" => no_args(rest, Self::Stls)?,
            b"CAPA" => no_args(rest, Self::Capa)?,
            b"STAT" => no_args(rest, Self::Stat)?,
            b"RSET" => no_args(rest, Self::Rset)?,
            b"NOOP" => no_args(rest, Self::Noop)?,
            b"QUIT" => no_args(rest, Self::Quit)?,
            b"LIST" => Self::List(optional_number(&args(), "LIST")?),
            b"UIDL" => Self::Uidl(optional_number(&args(), "UIDL")?),
            b"RETR" => Self::Retr(one_number(&args(), "RETR")?),
            b"DELE" => Self::Dele(one_number(&args(), "DELE")?),
            b"TOP" => {
                let a = exactly(2, "TOP", "expects message and line count")?;
                Self::Top {
                    msg: number(a[0], "TOP")?,
                    lines: number(a[1], "TOP")?,
                }
            }
            _ => return Err(CommandError::Unknown(excerpt(kw, 16))),
        };
        Ok(cmd)
    }
}

fn no_args(rest: &[u8], cmd: Pop3Command) -> Result<Pop3Command, CommandError> {
    if rest.iter().all(|&b| b == b' ') {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax {
            keyword: cmd.keyword(),
            reason: "takes no argument",
        })
    }
}

fn number(arg: &[u8], keyword: &'static str) -> Result<u32, CommandError> {
    if arg.is_empty() || arg.len() > 10 || !arg.iter().all(u8::is_ascii_digit) {
        return Err(CommandError::Syntax {
            keyword,
            reason: "expects a number",
        });
    }
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(CommandError::Syntax {
            keyword,
            reason: "number out of range",
        })
}

fn one_number(args: &[&[u8]], keyword: &'static str) -> Result<u32, CommandError> {
    match args {
        [a] => number(a, keyword),
        _ => Err(CommandError::Syntax {
            keyword,
            reason: "expects one message number",
        }),
    }
}

fn optional_number(args: &[&[u8]], keyword: &'static str) -> Result<Option<u32>, CommandError> {
    match args {
        [] => Ok(None),
        [a] => number(a, keyword).map(Some),
        _ => Err(CommandError::Syntax {
            keyword,
            reason: "expects at most one message number",
        }),
    }
}

impl fmt::Display for Pop3Command {
    /// The exact wire line, CRLF included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(n) => write!(f, "USER {n}\r\n"),
            Self::Pass(p) => write!(f, "PASS {p}\r\n"),
            Self::Apop { name, digest } => write!(f, "APOP {name} {digest}\r\n"),
            Self::Auth {
                mechanism,
                initial: None,
            } if mechanism.is_empty() => f.write_str("AUTH\r\n"),
            Self::Auth {
                mechanism,
                initial: None,
            } => write!(f, "AUTH {mechanism}\r\n"),
            Self::Auth {
                mechanism,
                initial: Some(i),
            } => write!(f, "AUTH {mechanism} {i}\r\n"),
            Self::List(None) => f.write_str("LIST\r\n"),
            Self::List(Some(n)) => write!(f, "LIST {n}\r\n"),
            Self::Uidl(None) => f.write_str("UIDL\r\n"),
            Self::Uidl(Some(n)) => write!(f, "UIDL {n}\r\n"),
            Self::Retr(n) => write!(f, "RETR {n}\r\n"),
            Self::Top { msg, lines } => write!(f, "TOP {msg} {lines}\r\n"),
            Self::Dele(n) => write!(f, "DELE {n}\r\n"),
            other => write!(f, "{}\r\n", other.keyword()),
        }
    }
}

impl fmt::Debug for Pop3Command {
    /// Like the redacted wire line: secrets never reach debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pop3Command({})", self.redacted())
    }
}

/// A client's line in a SASL exchange (RFC 5034 section 4), sent after the server's `+`
/// continuation: a base64 response, or `*` to cancel. Built from the octets it carries,
/// so the line is always base64 (never a line end); its redacted form never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslResponse {
    /// The base64 text; `None` for `*`.
    base64: Option<String>,
    /// What transcripts show in its place.
    shown: &'static str,
}

impl SaslResponse {
    /// `data` as a response; transcripts show `***` (it carries or proves a credential).
    pub fn secret(data: &[u8]) -> Self {
        Self::described(data, "***")
    }

    /// `data` as a response; transcripts show `shown`, a description (e.g. `(NTLM
    /// negotiate)` for a message that carries nothing secret but is still not quoted).
    pub fn described(data: &[u8], shown: &'static str) -> Self {
        use base64::Engine;
        Self {
            base64: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            shown,
        }
    }

    /// The empty response (the answer to a server's error challenge).
    pub fn empty() -> Self {
        Self {
            base64: Some(String::new()),
            shown: "(empty)",
        }
    }

    /// `*`: cancels the exchange.
    pub fn cancel() -> Self {
        Self {
            base64: None,
            shown: "*",
        }
    }

    /// True for `*`.
    pub fn is_cancel(&self) -> bool {
        self.base64.is_none()
    }

    /// The base64 text of a response (`None` for `*`).
    pub fn base64(&self) -> Option<&str> {
        self.base64.as_deref()
    }

    /// The line as transcripts show it (never the response itself).
    pub fn redacted(&self) -> String {
        self.shown.to_string()
    }

    /// Parses one client line (server side): `*` cancels; anything else must be base64
    /// (it is shown as `***`).
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        let line = trim_eol(line);
        if line == b"*" {
            return Ok(Self::cancel());
        }
        let base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
        if !line.iter().all(base64) {
            return Err(CommandError::Syntax {
                keyword: "AUTH",
                reason: "response is not base64",
            });
        }
        Ok(Self {
            base64: Some(String::from_utf8_lossy(line).into_owned()),
            shown: "***",
        })
    }
}

impl fmt::Display for SaslResponse {
    /// The exact wire line, CRLF included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.base64 {
            Some(b) => write!(f, "{b}\r\n"),
            None => f.write_str("*\r\n"),
        }
    }
}

impl fmt::Debug for SaslResponse {
    /// The redacted line: a response never reaches debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaslResponse({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_lines_are_exact() {
        let cases: Vec<(Pop3Command, &str)> = vec![
            (Pop3Command::User("bob".into()), "USER bob\r\n"),
            (Pop3Command::Pass("s3 cret".into()), "PASS s3 cret\r\n"),
            (
                Pop3Command::Apop {
                    name: "bob".into(),
                    digest: "c4c9".into(),
                },
                "APOP bob c4c9\r\n",
            ),
            (
                Pop3Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: Some("AGJvYgBz".into()),
                },
                "AUTH PLAIN AGJvYgBz\r\n",
            ),
            (
                Pop3Command::Auth {
                    mechanism: "LOGIN".into(),
                    initial: None,
                },
                "AUTH LOGIN\r\n",
            ),
            (Pop3Command::Stls, "STLS\r\n"),
            (Pop3Command::Capa, "CAPA\r\n"),
            (Pop3Command::Stat, "STAT\r\n"),
            (Pop3Command::List(None), "LIST\r\n"),
            (Pop3Command::List(Some(3)), "LIST 3\r\n"),
            (Pop3Command::Uidl(None), "UIDL\r\n"),
            (Pop3Command::Uidl(Some(7)), "UIDL 7\r\n"),
            (Pop3Command::Retr(1), "RETR 1\r\n"),
            (Pop3Command::Top { msg: 2, lines: 0 }, "TOP 2 0\r\n"),
            (Pop3Command::Dele(9), "DELE 9\r\n"),
            (Pop3Command::Rset, "RSET\r\n"),
            (Pop3Command::Noop, "NOOP\r\n"),
            (Pop3Command::Quit, "QUIT\r\n"),
        ];
        crate::test_support::assert_wire_round_trips(cases, Pop3Command::parse);
    }

    #[test]
    fn keywords_are_case_insensitive_and_bare_lf_is_accepted() {
        assert_eq!(
            Pop3Command::parse(b"retr 12\n").unwrap(),
            Pop3Command::Retr(12)
        );
        assert_eq!(Pop3Command::parse(b"Quit").unwrap(), Pop3Command::Quit);
        assert_eq!(
            Pop3Command::parse(b"auth plain\r\n").unwrap(),
            Pop3Command::Auth {
                mechanism: "PLAIN".into(),
                initial: None
            }
        );
    }

    #[test]
    fn bad_arguments_are_syntax_errors_and_unknown_words_unknown() {
        assert!(matches!(
            Pop3Command::parse(b"RETR\r\n"),
            Err(CommandError::Syntax {
                keyword: "RETR",
                ..
            })
        ));
        let bad = [
            "RETR x",
            "RETR 99999999999",
            "RETR 4294967296",
            "TOP 1",
            "QUIT now",
            "USER",
        ];
        for line in bad.map(|l| format!("{l}\r\n")) {
            let parsed = Pop3Command::parse(line.as_bytes());
            assert!(
                matches!(parsed, Err(CommandError::Syntax { .. })),
                "{line:?}"
            );
        }
        assert_eq!(Pop3Command::parse(b"\r\n"), Err(CommandError::Empty));
        assert_eq!(
            Pop3Command::parse(b"XYZZY 1\r\n"),
            Err(CommandError::Unknown("XYZZY".into()))
        );
        assert!(Pop3Command::parse(b"USER \xff\xfe\r\n").is_err());
        assert!(Pop3Command::parse(b"\0\0\0").is_err());
    }

    #[test]
    fn secrets_never_reach_debug_or_redacted_forms() {
        let cmds = [
            Pop3Command::Pass("hunter2".into()),
            Pop3Command::Apop {
                name: "bob".into(),
                digest: "hunter2".into(),
            },
            Pop3Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("hunter2".into()),
            },
        ];
        for c in cmds {
            assert!(!format!("{c:?}").contains("hunter2"));
            assert!(!c.redacted().contains("hunter2"));
        }
    }

    #[test]
    fn sasl_responses_are_base64_lines_and_never_shown() {
        let r = SaslResponse::secret(b"\0bob\0hunter2");
        assert_eq!(r.to_string(), "AGJvYgBodW50ZXIy\r\n");
        assert_eq!(r.redacted(), "***");
        assert!(!format!("{r:?}").contains("AGJvYgBodW50ZXIy"));
        assert_eq!(SaslResponse::parse(r.to_string().as_bytes()), Ok(r));
        let n = SaslResponse::described(b"NTLMSSP", "(NTLM negotiate)");
        assert_eq!(n.redacted(), "(NTLM negotiate)");
        assert_eq!(n.base64(), Some("TlRMTVNTUA=="));
        assert_eq!(SaslResponse::empty().to_string(), "\r\n");
        assert_eq!(SaslResponse::empty().redacted(), "(empty)");
        assert_eq!(SaslResponse::cancel().to_string(), "*\r\n");
        assert_eq!(SaslResponse::parse(b"*\r\n"), Ok(SaslResponse::cancel()));
        assert!(SaslResponse::parse(b"not base64!\r\n").is_err());
    }
}
