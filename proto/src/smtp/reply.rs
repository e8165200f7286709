//! SMTP replies: `Reply { code, enhanced, lines }`, `Severity`, and a resumable parser.

use std::fmt;

use bytes::BytesMut;
use thiserror::Error;

use super::{MAX_REPLY_LINE, MAX_REPLY_LINES};
use crate::excerpt;
use crate::line::{trim_eol, LineDecoder, LineError};

/// The class of a reply, from its first digit (RFC 5321 4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// 2xx
    PositiveCompletion,
    /// 3xx
    PositiveIntermediate,
    /// 4xx: try again later.
    TransientNegative,
    /// 5xx: do not retry as is.
    PermanentNegative,
}

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// Subject (0-999).
    pub subject: u16,
    /// Detail (0-999).
    pub detail: u16,
}

impl EnhancedCode {
    /// A code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    fn parse(word: &str) -> Option<Self> {
        let mut it = word.split('.');
        let (c, s, d) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some()
            || c.len() != 1
            || s.is_empty()
            || s.len() > 3
            || d.is_empty()
            || d.len() > 3
        {
            return None;
        }
        let all_digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if !(all_digits(c) && all_digits(s) && all_digits(d)) {
            return None;
        }
        let class: u8 = c.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Self {
            class,
            subject: s.parse().ok()?,
            detail: d.parse().ok()?,
        })
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code, when the first line carries one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, without code, enhanced code or CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply from a code, an optional enhanced code and text (`\n` separates lines).
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Self {
        Self {
            code,
            enhanced,
            lines: text.split('\n').map(str::to_string).collect(),
        }
    }

    /// The reply's class.
    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 => Severity::PositiveCompletion,
            3 => Severity::PositiveIntermediate,
            4 => Severity::TransientNegative,
            _ => Severity::PermanentNegative,
        }
    }

    /// True for 2xx.
    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::PositiveCompletion
    }

    /// True for 4xx: keep the message and try later.
    pub fn is_transient(&self) -> bool {
        self.severity() == Severity::TransientNegative
    }

    /// True for 5xx (and any code outside 2xx-4xx).
    pub fn is_permanent(&self) -> bool {
        self.severity() == Severity::PermanentNegative
    }

    /// All lines joined with a space: the text for reports.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The first line as the server wrote it, without CRLF (`550 5.1.1 User unknown`).
    pub fn first_line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = self.enhanced {
            s.push(' ');
            s.push_str(&e.to_string());
        }
        if let Some(t) = self.lines.first().filter(|t| !t.is_empty()) {
            s.push(' ');
            s.push_str(t);
        }
        s
    }
}

impl fmt::Display for Reply {
    /// The exact wire form, every line CRLF-terminated, `-` on all but the last.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let sep = if i + 1 == n { ' ' } else { '-' };
            write!(f, "{}", self.code)?;
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            match (self.enhanced, text.is_empty()) {
                (Some(e), true) => write!(f, "{sep}{e}")?,
                (Some(e), false) => write!(f, "{sep}{e} {text}")?,
                (None, true) if sep == '-' => f.write_str("-")?,
                (None, true) => {}
                (None, false) => write!(f, "{sep}{text}")?,
            }
            f.write_str("\r\n")?;
        }
        Ok(())
    }
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// A line over the maximum length.
    #[error(transparent)]
    Line(#[from] LineError),
    /// A line that is not `ddd`, `ddd-text` or `ddd text`.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// A continuation line whose code differs from the first line's.
    #[error("reply lines disagree on the code ({first} then {then})")]
    CodeMismatch {
        /// The first line's code.
        first: u16,
        /// The disagreeing code.
        then: u16,
    },
    /// More lines than the parser accepts in one reply.
    #[error("reply longer than {0} lines")]
    TooManyLines(usize),
}

/// A resumable parser of SMTP replies from a byte buffer.
#[derive(Debug, Clone)]
pub struct ReplyParser {
    lines: LineDecoder,
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    texts: Vec<String>,
    max_lines: usize,
}

impl Default for ReplyParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyParser {
    /// A parser with the default bounds ([`MAX_REPLY_LINE`], [`MAX_REPLY_LINES`]).
    pub fn new() -> Self {
        Self::with_limits(MAX_REPLY_LINE, MAX_REPLY_LINES)
    }

    /// A parser with explicit bounds on line length and line count.
    pub fn with_limits(max_line: usize, max_lines: usize) -> Self {
        Self {
            lines: LineDecoder::new(max_line),
            code: None,
            enhanced: None,
            texts: Vec::new(),
            max_lines,
        }
    }

    /// Takes complete lines from `buf`; returns a reply once its last line arrived.
    ///
    /// `Ok(None)` means incomplete: append more bytes to `buf` and call again. Bytes after
    /// the reply stay in `buf` (pipelined replies).
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        while let Some(line) = self.lines.next_line(buf)? {
            let l = trim_eol(&line);
            let bad = || ReplyError::Malformed(excerpt(&line, 80));
            if l.len() < 3
                || !l[..3].iter().all(u8::is_ascii_digit)
                || !(b'2'..=b'5').contains(&l[0])
            {
                self.clear();
                return Err(bad());
            }
            let code =
                u16::from(l[0] - b'0') * 100 + u16::from(l[1] - b'0') * 10 + u16::from(l[2] - b'0');
            let (last, text) = match l.get(3) {
                None => (true, &b""[..]),
                Some(b' ') => (true, &l[4..]),
                Some(b'-') => (false, &l[4..]),
                Some(_) => {
                    self.clear();
                    return Err(bad());
                }
            };
            let text = String::from_utf8_lossy(text);
            match self.code {
                None => {
                    self.code = Some(code);
                    let (enh, rest) = split_enhanced(code, &text);
                    self.enhanced = enh;
                    self.texts.push(rest);
                }
                Some(first) if first != code => {
                    self.clear();
                    return Err(ReplyError::CodeMismatch { first, then: code });
                }
                Some(_) => {
                    let rest = match self.enhanced {
                        Some(e) => {
                            let (enh, rest) = split_enhanced(code, &text);
                            if enh == Some(e) {
                                rest
                            } else {
                                text.into_owned()
                            }
                        }
                        None => text.into_owned(),
                    };
                    if self.texts.len() >= self.max_lines {
                        let max = self.max_lines;
                        self.clear();
                        return Err(ReplyError::TooManyLines(max));
                    }
                    self.texts.push(rest);
                }
            }
            if last {
                let reply = Reply {
                    code,
                    enhanced: self.enhanced.take(),
                    lines: std::mem::take(&mut self.texts),
                };
                self.code = None;
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    fn clear(&mut self) {
        self.code = None;
        self.enhanced = None;
        self.texts.clear();
    }
}

fn split_enhanced(code: u16, text: &str) -> (Option<EnhancedCode>, String) {
    let (word, rest) = match text.find(' ') {
        Some(p) => (&text[..p], &text[p + 1..]),
        None => (text, ""),
    };
    match EnhancedCode::parse(word) {
        Some(e) if u16::from(e.class) == code / 100 => (Some(e), rest.to_string()),
        _ => (None, text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<Reply> {
        let mut p = ReplyParser::new();
        let mut buf = BytesMut::from(input);
        let mut v = Vec::new();
        while let Some(r) = p.parse(&mut buf).unwrap() {
            v.push(r);
        }
        assert!(buf.is_empty());
        v
    }

    const EHLO: &[u8] = b"250-mx.example.com Hello [127.0.0.1]\r\n250-SIZE 10485760\r\n250-PIPELINING\r\n250 CHUNKING\r\n";

    #[test]
    fn multi_line_ehlo_and_enhanced_codes() {
        let v = parse_all(EHLO);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].code, 250);
        assert_eq!(v[0].enhanced, None);
        assert_eq!(
            v[0].lines,
            [
                "mx.example.com Hello [127.0.0.1]",
                "SIZE 10485760",
                "PIPELINING",
                "CHUNKING"
            ]
        );
        let v = parse_all(b"501 5.1.7 Invalid address\r\n421 4.7.0 Too many errors on this connection, closing transmission channel\r\n");
        assert_eq!(v[0].enhanced, Some(EnhancedCode::new(5, 1, 7)));
        assert_eq!(v[0].text(), "Invalid address");
        assert!(v[0].is_permanent());
        assert_eq!(v[1].severity(), Severity::TransientNegative);
        assert!(v[1].is_transient());
        assert_eq!(
            v[1].first_line(),
            "421 4.7.0 Too many errors on this connection, closing transmission channel"
        );
    }

    #[test]
    fn enhanced_code_must_match_the_class() {
        let v = parse_all(b"250 5.1.1 odd\r\n354 Start mail input\r\n220\r\n");
        assert_eq!(v[0].enhanced, None);
        assert_eq!(v[0].text(), "5.1.1 odd");
        assert_eq!(v[1].severity(), Severity::PositiveIntermediate);
        assert_eq!(v[2].lines, [""]);
    }

    #[test]
    fn wire_form_round_trips() {
        let cases = [
            (
                Reply::new(250, Some(EnhancedCode::new(2, 1, 0)), "Sender OK"),
                "250 2.1.0 Sender OK\r\n",
            ),
            (
                Reply::new(250, None, "a\nSIZE 100\nCHUNKING"),
                "250-a\r\n250-SIZE 100\r\n250 CHUNKING\r\n",
            ),
            (
                Reply::new(
                    552,
                    Some(EnhancedCode::new(5, 3, 4)),
                    "Message size exceeds fixed maximum message size",
                ),
                "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
            ),
            (Reply::new(221, None, ""), "221\r\n"),
        ];
        for (r, wire) in cases {
            assert_eq!(r.to_string(), wire);
            assert_eq!(parse_all(wire.as_bytes()), vec![r]);
        }
    }

    #[test]
    fn split_at_every_byte_gives_the_same_replies() {
        let mut input = EHLO.to_vec();
        input.extend_from_slice(b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 go\r\n");
        let whole = parse_all(&input);
        assert_eq!(whole.len(), 4);
        for split in 0..=input.len() {
            let mut p = ReplyParser::new();
            let mut buf = BytesMut::new();
            let mut v = Vec::new();
            for part in [&input[..split], &input[split..]] {
                buf.extend_from_slice(part);
                while let Some(r) = p.parse(&mut buf).unwrap() {
                    v.push(r);
                }
            }
            assert_eq!(v, whole, "split {split}");
        }
    }

    #[test]
    fn hostile_replies_are_errors() {
        // Malformed lines: see `nul_and_invalid_utf8_replies_are_errors` in tests/wire.rs.
        let mut p = ReplyParser::new();
        assert_eq!(
            p.parse(&mut BytesMut::from(&b"250-a\r\n550 b\r\n"[..])),
            Err(ReplyError::CodeMismatch {
                first: 250,
                then: 550
            })
        );
        let mut p = ReplyParser::with_limits(512, 4);
        let mut buf = BytesMut::from(&b"250-a\r\n".repeat(10)[..]);
        assert_eq!(p.parse(&mut buf), Err(ReplyError::TooManyLines(4)));
        let mut p = ReplyParser::new();
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        let err = loop {
            buf.extend_from_slice(&[b'2'; 1000]);
            fed += 1000;
            match p.parse(&mut buf) {
                Ok(None) => assert!(fed < 10 * 1024 * 1024),
                other => break other,
            }
        };
        assert!(matches!(
            err,
            Err(ReplyError::Line(LineError::TooLong { .. }))
        ));
        assert!(fed <= MAX_REPLY_LINE + 1000);
    }
}
