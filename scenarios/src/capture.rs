//! `poplab capture`: a real POP3 mailbox, read without changing it, written as a scenario
//! file that `poplab run` replays.
//!
//! Responsible for: one read-only session (CAPA, login, LIST, UIDL, RETR of each message,
//! RSET, QUIT); turning what it saw into a scenario (the server's capabilities, each
//! message as a raw fixture in server order with its UIDL and LIST size); `--headers-only`
//! (bodies replaced by filler of the same size and line structure) and `--redact`
//! (addresses, display names and subjects replaced by stable, same-length pseudonyms from a
//! keyed hash, keeping every other octet, so a malformed header stays malformed); writing
//! the files private (0600).
//! Must never: send DELE or anything else that changes the mailbox, end the session
//! without RSET before QUIT, print or write the password, or put the real password in the
//! scenario.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use popbridge::config::TlsMode;
use popbridge::conn::PlaintextConsent;
use popbridge::net::{self, TcpDialer};
use popbridge::pop3::{self, Pop3Error, Response, Settings};
use popbridge::secret::Secret;
use popbridge_proto::pop3::AuthMethod;
use sha2::Sha256;

/// What went wrong during a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The TLS configuration could not be built.
    #[error("TLS configuration")]
    Tls(#[from] net::TlsError),
    /// The POP3 session failed.
    #[error("POP3 session")]
    Pop3(#[from] Pop3Error),
    /// The server answered a RETR with -ERR.
    #[error("the server refused RETR {msg}: {reply}")]
    Refused {
        /// The message number.
        msg: u32,
        /// The reply, as text.
        reply: String,
    },
    /// The server's replies did not match the commands.
    #[error("POP3 reply out of step: {0}")]
    OutOfStep(String),
    /// A message body could not be read back.
    #[error("reading message {msg}")]
    Body {
        /// The message number.
        msg: u32,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {path}", path = path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where and how to capture.
pub struct CaptureOptions {
    /// The server's host.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The login name.
    pub user: String,
    /// The password (never shown).
    pub password: Secret,
    /// TLS mode, as popbridge's `tls`.
    pub tls: TlsMode,
    /// Extra CA (or the server's self-signed certificate) to trust.
    pub ca_file: Option<PathBuf>,
    /// Bodies replaced by filler of the same size.
    pub headers_only: bool,
    /// Addresses and subjects replaced by pseudonyms keyed with this key (implies
    /// headers-only).
    pub redact_key: Option<Vec<u8>>,
    /// Connect and per-command timeout.
    pub timeout: Duration,
}

/// One captured message.
#[derive(Debug, Clone)]
pub struct CapturedMessage {
    /// Its number in the session.
    pub number: u32,
    /// Its UIDL, when the server has UIDL.
    pub uid: Option<String>,
    /// Its size as LIST reported it.
    pub list_size: u64,
    /// Its octets as written (after filler and redaction).
    pub bytes: Vec<u8>,
}

/// What a capture saw.
#[derive(Debug, Clone)]
pub struct Capture {
    /// CAPA lines after login, as sent (empty when CAPA failed).
    pub capa: Vec<String>,
    /// UIDL offered.
    pub uidl: bool,
    /// TOP offered.
    pub top: bool,
    /// PIPELINING offered.
    pub pipelining: bool,
    /// RESP-CODES offered.
    pub resp_codes: bool,
    /// The messages in server order.
    pub messages: Vec<CapturedMessage>,
}

/// Largest message kept in memory rather than spooled while reading.
const IN_MEMORY: u64 = 64 * 1024 * 1024;

/// Reads the mailbox read-only: login, LIST, UIDL, RETR of each, RSET, QUIT.
pub async fn capture(o: &CaptureOptions, spool: &Path) -> Result<Capture, CaptureError> {
    let tls_config = match o.tls {
        TlsMode::None => None,
        _ => Some(net::client_config(o.ca_file.as_deref(), false, None)?),
    };
    let settings = Settings {
        account: "capture",
        host: &o.host,
        port: o.port,
        tls: o.tls,
        server_name: &o.host,
        tls_config,
        plaintext: Some(PlaintextConsent::by_operator()),
        connect_timeout: o.timeout,
        command_timeout: o.timeout,
        data_timeout: o.timeout.saturating_mul(10),
    };
    let auth = pop3::connect(&TcpDialer, &settings).await?;
    let mut t = auth
        .authenticate(AuthMethod::User, &o.user, &o.password)
        .await?;
    let caps = t.capabilities.clone();
    let sizes = t.list().await?;
    let uids: Vec<(u32, String)> = match t.uidl().await? {
        Some(listing) => listing.held().map(|(n, u)| (n, u.to_string())).collect(),
        None => Vec::new(),
    };
    let mut messages = Vec::with_capacity(sizes.len());
    for &(n, size) in &sizes {
        // Generous: a server whose LIST understates a message still gets it captured.
        t.send_retr(n, size, size.saturating_mul(2).saturating_add(16 << 20));
        let body = match t.next(spool, IN_MEMORY).await? {
            Response::Retr { body, .. } => body,
            Response::Refused { reply, .. } => {
                return Err(CaptureError::Refused {
                    msg: n,
                    reply: format!("{reply:?}"),
                })
            }
            Response::Deleted { msg } => {
                return Err(CaptureError::OutOfStep(format!("DELE {msg} answered")))
            }
        };
        let mut bytes = Vec::new();
        let mut r = body
            .reader()
            .await
            .map_err(|source| CaptureError::Body { msg: n, source })?;
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut bytes)
            .await
            .map_err(|source| CaptureError::Body { msg: n, source })?;
        let uid = uids.iter().find(|(m, _)| *m == n).map(|(_, u)| u.clone());
        messages.push(CapturedMessage {
            number: n,
            uid,
            list_size: size,
            bytes,
        });
    }
    // Nothing was marked deleted, but RSET makes sure the QUIT commits nothing.
    t.rset().await?;
    t.quit().await?;
    let has = |word: &str| {
        caps.lines.iter().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(word))
        })
    };
    let mut c = Capture {
        capa: caps.lines.clone(),
        uidl: caps.uidl || !uids.is_empty(),
        top: caps.top,
        pipelining: caps.pipelining,
        resp_codes: has("RESP-CODES"),
        messages,
    };
    if o.headers_only || o.redact_key.is_some() {
        for m in &mut c.messages {
            fill_body(&mut m.bytes);
        }
    }
    if let Some(key) = &o.redact_key {
        let r = Redactor::new(key);
        for m in &mut c.messages {
            m.bytes = r.headers(&m.bytes);
        }
        c.messages.iter_mut().for_each(|m| {
            if let Some(u) = &m.uid {
                m.uid = Some(r.word(u));
            }
        });
    }
    Ok(c)
}

/// The end of the header section: the index just past the empty line, or the length when
/// there is none.
fn header_end(b: &[u8]) -> usize {
    let mut i = 0;
    while i < b.len() {
        let end = b[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |p| i + p + 1);
        let line = &b[i..end];
        if line == b"\n" || line == b"\r\n" {
            return end;
        }
        i = end;
    }
    b.len()
}

/// Replaces every body octet but CR and LF by `x`: the same size and line structure.
pub fn fill_body(b: &mut [u8]) {
    let start = header_end(b);
    for c in &mut b[start..] {
        if *c != b'\r' && *c != b'\n' {
            *c = b'x';
        }
    }
}

/// Headers whose whole value (names, addresses, words) is replaced.
const WHOLE: [&str; 12] = [
    "from",
    "to",
    "cc",
    "bcc",
    "sender",
    "reply-to",
    "return-path",
    "delivered-to",
    "x-original-to",
    "subject",
    "envelope-to",
    "thread-topic",
];

/// Stable pseudonyms: each word replaced by letters derived from a keyed hash of it, of
/// the same length; punctuation and layout kept.
pub struct Redactor {
    key: Vec<u8>,
}

impl Redactor {
    /// A redactor keyed with `key`.
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// The pseudonym of one word (same length, lower-case letters and digits as the
    /// original had them).
    pub fn word(&self, w: &str) -> String {
        String::from_utf8_lossy(&self.word_bytes(w.as_bytes())).into_owned()
    }

    fn word_bytes(&self, w: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(w.len());
        let mut counter = 0u32;
        let mut stream = Vec::new();
        while stream.len() < w.len() {
            // A key of any length is accepted by HMAC: this cannot fail.
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
                break;
            };
            mac.update(&counter.to_be_bytes());
            mac.update(w);
            stream.extend_from_slice(&mac.finalize().into_bytes());
            counter += 1;
        }
        for (i, &c) in w.iter().enumerate() {
            let r = stream.get(i).copied().unwrap_or(0);
            out.push(if c.is_ascii_digit() {
                b'0' + r % 10
            } else {
                b'a' + r % 26
            });
        }
        out
    }

    /// Every run of letters, digits and 8-bit octets in `v` replaced by its pseudonym.
    fn all_words(&self, v: &[u8]) -> Vec<u8> {
        let is_word = |c: u8| c.is_ascii_alphanumeric() || c >= 0x80;
        let mut out = Vec::with_capacity(v.len());
        let mut i = 0;
        while i < v.len() {
            if is_word(v[i]) {
                let end = v[i..]
                    .iter()
                    .position(|&c| !is_word(c))
                    .map_or(v.len(), |p| i + p);
                out.extend(self.word_bytes(&v[i..end]));
                i = end;
            } else {
                out.push(v[i]);
                i += 1;
            }
        }
        out
    }

    /// Every address-like token (around an `@`) in `v` replaced word by word.
    fn addresses(&self, v: &[u8]) -> Vec<u8> {
        let in_addr = |c: u8| c.is_ascii_alphanumeric() || b".-_+=%'".contains(&c) || c >= 0x80;
        let mut out = v.to_vec();
        for (at, _) in v.iter().enumerate().filter(|(_, &c)| c == b'@') {
            let mut s = at;
            while s > 0 && in_addr(v[s - 1]) {
                s -= 1;
            }
            let mut e = at + 1;
            while e < v.len() && in_addr(v[e]) {
                e += 1;
            }
            let r = self.all_words(&v[s..e]);
            out[s..e].copy_from_slice(&r);
        }
        out
    }

    /// The message with its header section redacted: address and subject headers
    /// entirely (every word), addresses anywhere else; the body untouched.
    pub fn headers(&self, b: &[u8]) -> Vec<u8> {
        let end = header_end(b);
        let mut out = Vec::with_capacity(b.len());
        let mut whole = false;
        let mut i = 0;
        while i < end {
            let e = b[i..end]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(end, |p| i + p + 1);
            let line = &b[i..e];
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            let (name, value) = if continuation {
                (&line[..0], line)
            } else if let Some(colon) = line.iter().position(|&c| c == b':') {
                let name = String::from_utf8_lossy(&line[..colon])
                    .trim()
                    .to_ascii_lowercase();
                whole = WHOLE.contains(&name.as_str());
                (&line[..=colon], &line[colon + 1..])
            } else {
                // Not a header line (malformed): treat as a value, addresses redacted.
                whole = false;
                (&line[..0], line)
            };
            out.extend_from_slice(name);
            if whole {
                out.extend(self.all_words(value));
            } else {
                out.extend(self.addresses(value));
            }
            i = e;
        }
        out.extend_from_slice(&b[end..]);
        out
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The scenario text for `c`, its fixtures under `fixtures/` next to it. `source` says
/// where it came from (server and options, never the password).
pub fn scenario_text(c: &Capture, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Captured by `poplab capture` from {source}.");
    s.push_str("# Each message is a raw fixture, in server order, with its UIDL and LIST size.\n");
    s.push_str("# The server's CAPA after login:\n");
    for l in &c.capa {
        let _ = writeln!(s, "#   {}", l.replace(['\r', '\n'], ""));
    }
    let _ = writeln!(
        s,
        "description = {}",
        toml_str(&format!("captured mailbox: {} messages", c.messages.len()))
    );
    let _ = writeln!(
        s,
        "\n[pop3]\nuidl = {}\ntop = {}\npipelining = {}\nresp_codes = {}",
        c.uidl, c.top, c.pipelining, c.resp_codes
    );
    s.push_str("\n[[pop3.mailbox]]\nuser = \"info\"\npassword = \"secret\"\n");
    for m in &c.messages {
        let _ = writeln!(s, "\n[[pop3.mailbox.message]]");
        let _ = writeln!(s, "label = \"m{:04}\"", m.number);
        let _ = writeln!(s, "raw = \"fixtures/{:04}.eml\"", m.number);
        if let Some(u) = &m.uid {
            let _ = writeln!(s, "uid = {}", toml_str(u));
        }
        let _ = writeln!(s, "list_size = {}", m.list_size);
    }
    s.push_str("\n[run]\npasses = 1\n\n[expect]\nlost = 0\n");
    s
}

/// Writes `DIR/capture.toml` and `DIR/fixtures/NNNN.eml`, all mode 0600; returns the
/// scenario's path.
pub fn write(c: &Capture, dir: &Path, source: &str) -> Result<PathBuf, CaptureError> {
    let put = |path: PathBuf, bytes: &[u8]| {
        popbridge::private::write_file(&path, bytes)
            .map_err(|source| CaptureError::Write { path, source })
    };
    for m in &c.messages {
        put(dir.join(format!("fixtures/{:04}.eml", m.number)), &m.bytes)?;
    }
    let path = dir.join("capture.toml");
    put(path.clone(), scenario_text(c, source).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_keeps_size_and_lines_and_headers() {
        let mut m = b"Subject: hi\r\n\r\nbody line\r\n.\r\nend\n".to_vec();
        let len = m.len();
        fill_body(&mut m);
        assert_eq!(m.len(), len);
        assert_eq!(&m[..], b"Subject: hi\r\n\r\nxxxxxxxxx\r\nx\r\nxxx\n");
    }

    #[test]
    fn redaction_is_stable_same_length_and_keeps_malformations() {
        let r = Redactor::new(b"k");
        let m = b"From: Alice <alice@example.net>\r\nReturn-Path: <bad@@host>\r\nSubject: Secret plan\r\n\tmore\r\nReceived: by x for <alice@example.net>\r\n\r\nbody alice@example.net\r\n";
        let out = r.headers(m);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(out.len(), m.len());
        // The body is not this function's (filler replaces it first).
        assert!(
            text.ends_with("\r\n\r\nbody alice@example.net\r\n"),
            "{text}"
        );
        let head = &text[..text.find("\r\n\r\n").unwrap()];
        for gone in ["alice", "example", "Secret", "plan", "more"] {
            assert!(!head.contains(gone), "{gone} in {head}");
        }
        assert!(head.contains("@@"), "{head}");
        assert!(head.starts_with("From: "), "{head}");
        assert_eq!(r.headers(m), out, "stable");
        assert_ne!(Redactor::new(b"other").headers(m), out, "keyed");
    }
}
