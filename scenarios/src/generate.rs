//! Deterministic messages: the bytes of every message a scenario declares.
//!
//! Responsible for: turning `[[pop3.mailbox.message]]` into exact bytes: generated
//! messages with a fixed Date (`Mon, 02 Jan 2006 15:04:05 +0000`), `Message-ID:
//! <NAME@poplab.invalid>`, the headers the scenario names and a plain body padded to the
//! requested size; or a raw fixture's bytes, read relative to the scenario file.
//!
//! Why the headers are written by hand rather than with the `mail-builder` crate: the
//! malformed-sender scenarios need header values exactly as written in the file (a bare
//! `accounts`, `a..b@example.net`), which an address-aware builder re-quotes or refuses;
//! a single text/plain part needs no MIME boundary; and the size must be hit to the
//! octet. A dozen `Name: value` lines give byte-stable output across crate versions.
//!
//! Must never: contain connector logic, use the clock or a random source, or add a
//! header to a raw fixture.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use serde::Serialize;

use crate::locate::KeyPath;
use crate::schema::{BodyShape, Ctx, Error, MessageSpec, Pop3Mailbox, Scalar, MAX_COUNT, MAX_SIZE};

/// The fixed Date header value of generated messages.
pub const DATE: &str = "Mon, 02 Jan 2006 15:04:05 +0000";
/// The domain of generated Message-IDs.
pub const MESSAGE_ID_DOMAIN: &str = "poplab.invalid";
/// Default size of a generated message.
const DEFAULT_SIZE: u64 = 2 * 1024;
/// Default From header.
const DEFAULT_FROM: &str = "sender@example.net";
/// The most octets all of a scenario's messages may take together (they are generated in
/// memory before the run).
const MAX_TOTAL: u64 = 2 * 1024 * 1024 * 1024;

/// One message copy as the POP3 server will hold it.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// The label it was declared with.
    pub label: String,
    /// Its own name: the label, or `label-n` for copies.
    pub name: String,
    /// The mailbox (login name) holding it.
    pub user: String,
    /// Its UIDL value.
    pub uid: String,
    /// `<name@poplab.invalid>` for generated messages; `None` for raw fixtures.
    pub message_id: Option<String>,
    /// True for raw fixture bytes.
    pub raw: bool,
    /// The size LIST reports instead of the true one.
    pub list_size: Option<u64>,
    /// The exact bytes.
    #[serde(skip)]
    pub data: Bytes,
}

/// Checks a label: letters, digits, `.`, `_` and `-` (it becomes a Message-ID).
fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Every message copy of every mailbox, validated.
pub(crate) fn plan(
    cx: &Ctx<'_>,
    mailboxes: &[Pop3Mailbox],
    base: &Path,
) -> Result<Vec<Planned>, Error> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut total = 0u64;
    for (mi, mb) in mailboxes.iter().enumerate() {
        for (i, spec) in mb.message.iter().enumerate() {
            let at = KeyPath::root()
                .key("pop3")
                .key("mailbox")
                .index(mi)
                .key("message")
                .index(i);
            if !valid_label(&spec.label) {
                return Err(cx.err(
                    &at.key("label"),
                    "must be 1 to 200 of A-Z a-z 0-9 . _ - (it becomes a Message-ID)",
                ));
            }
            if !labels.insert(spec.label.clone()) {
                return Err(cx.err(
                    &at.key("label"),
                    format!("duplicate label {:?}", spec.label),
                ));
            }
            let count = spec.count.unwrap_or(1);
            if !(1..=MAX_COUNT).contains(&count) {
                return Err(cx.err(
                    &at.key("count"),
                    format!("must be between 1 and {MAX_COUNT}"),
                ));
            }
            let list_size = match &spec.list_size {
                Some(v) => Some(size(cx, v, &at.key("list_size"))?),
                None => None,
            };
            let raw = match &spec.raw {
                Some(file) => Some(read_raw(cx, spec, file, base, &at)?),
                None => None,
            };
            let target = match &spec.size {
                Some(v) => {
                    let n = size(cx, v, &at.key("size"))?;
                    if n > MAX_SIZE {
                        return Err(cx.err(&at.key("size"), "at most 256MB"));
                    }
                    n
                }
                None => DEFAULT_SIZE,
            };
            // Every message is generated before the run: bound what a file can ask for.
            let each = raw.as_ref().map_or(target, |r| r.len() as u64);
            total = total.saturating_add(each.saturating_mul(u64::from(count)));
            if total > MAX_TOTAL {
                return Err(cx.err(
                    &at.key(if spec.size.is_some() { "size" } else { "count" }),
                    format!(
                        "the scenario's messages would take {} MB; at most {} MB in all",
                        total / (1024 * 1024),
                        MAX_TOTAL / (1024 * 1024)
                    ),
                ));
            }
            for n in 1..=count {
                let name = if count == 1 {
                    spec.label.clone()
                } else {
                    format!("{}-{n}", spec.label)
                };
                if !names.insert(name.clone()) {
                    return Err(cx.err(
                        &at.key("label"),
                        format!("the message name {name:?} is used twice (labels and their -n copies must all differ)"),
                    ));
                }
                let uid = match (&spec.uid, count) {
                    (Some(u), 1) => u.clone(),
                    (Some(u), _) => format!("{u}-{n}"),
                    (None, _) => name.clone(),
                };
                // Identical copies are all written as the label itself.
                let written = if spec.identical == Some(true) {
                    spec.label.as_str()
                } else {
                    name.as_str()
                };
                let (data, message_id) = match &raw {
                    Some(bytes) => (bytes.clone(), None),
                    None => {
                        let mut m = message(spec, written, &mb.user, target);
                        if let Some(shape) = spec.body {
                            shape_body(&mut m, shape);
                        }
                        (Bytes::from(m), Some(message_id(written)))
                    }
                };
                out.push(Planned {
                    label: spec.label.clone(),
                    name,
                    user: mb.user.clone(),
                    uid,
                    message_id,
                    raw: raw.is_some(),
                    list_size,
                    data,
                });
            }
        }
    }
    Ok(out)
}

fn size(cx: &Ctx<'_>, v: &Scalar, at: &KeyPath) -> Result<u64, Error> {
    match v {
        Scalar::Int(n) => u64::try_from(*n).map_err(|_| cx.err(at, "must not be negative")),
        Scalar::Text(s) => popbridge::config::parse_size(s).map_err(|m| cx.err(at, m)),
    }
}

fn read_raw(
    cx: &Ctx<'_>,
    spec: &MessageSpec,
    file: &str,
    base: &Path,
    at: &KeyPath,
) -> Result<Bytes, Error> {
    let generated_keys = [
        ("from", spec.from.is_some()),
        ("return_path", spec.return_path.is_some()),
        ("sender", spec.sender.is_some()),
        ("to", spec.to.is_some()),
        ("cc", spec.cc.is_some()),
        ("delivered_to", spec.delivered_to.is_some()),
        ("x_original_to", spec.x_original_to.is_some()),
        ("subject", spec.subject.is_some()),
        ("size", spec.size.is_some()),
        ("body", spec.body.is_some()),
        ("identical", spec.identical.is_some()),
    ];
    if let Some((k, _)) = generated_keys.iter().find(|(_, set)| *set) {
        return Err(cx.err(
            &at.key(k),
            "not used with raw (a raw message is sent exactly as the fixture holds it)",
        ));
    }
    let path = base.join(file);
    let fail = |what: String| cx.err(&at.key("raw"), format!("{}: {what}", path.display()));
    // A regular file, read no further than the largest message: never a device, a pipe or
    // a file that grows without end.
    let meta = std::fs::metadata(&path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut data = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| {
            use std::io::Read;
            f.take(MAX_SIZE + 1).read_to_end(&mut data)
        })
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if data.len() as u64 > MAX_SIZE {
        return Err(fail("larger than 256MB".into()));
    }
    Ok(Bytes::from(data))
}

/// Gives a generated message's body `shape` (right after the header's blank line).
fn shape_body(m: &mut Vec<u8>, shape: BodyShape) {
    let body_at = m
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(m.len(), |p| p + 4);
    let insert: Vec<u8> = match shape {
        BodyShape::Plain => return,
        BodyShape::BareLf => {
            let body = m.split_off(body_at);
            let mut out = Vec::with_capacity(body.len());
            let mut i = 0;
            while i < body.len() {
                if body[i] == b'\r' && body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                    continue;
                }
                out.push(body[i]);
                i += 1;
            }
            m.extend_from_slice(&out);
            return;
        }
        BodyShape::Nul => b"nul\0octets\0in this line\r\n".to_vec(),
        BodyShape::EightBit => b"8-bit octets: caf\xe9 \xe8\xff\x80 na\xefve\r\n".to_vec(),
        BodyShape::LongLine => {
            let mut l = vec![b'L'; 2000];
            l.extend_from_slice(b"\r\n");
            l
        }
        BodyShape::DotLines => b".leading dot\r\n..two dots\r\n.\r\n+OK POP3 server ready\r\n+OK 2 messages (320 octets)\r\n".to_vec(),
    };
    m.splice(body_at..body_at, insert);
}

/// The Message-ID header value of a generated message.
pub fn message_id(name: &str) -> String {
    format!("<{name}@{MESSAGE_ID_DOMAIN}>")
}

/// The bare address of a header value: the part in angle brackets, or the value itself.
fn address_of(value: &str) -> &str {
    match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.trim(),
    }
}

/// A generated message of about `size` octets (exactly, unless its header alone is larger).
pub fn message(spec: &MessageSpec, name: &str, user: &str, size: u64) -> Vec<u8> {
    let from = spec.from.as_deref().unwrap_or(DEFAULT_FROM);
    let mut h = String::new();
    let mut header = |name: &str, value: &str| {
        h.push_str(name);
        h.push_str(": ");
        h.push_str(value);
        h.push_str("\r\n");
    };
    let return_path = match &spec.return_path {
        Some(rp) if rp.is_empty() => None,
        Some(rp) if rp.contains('<') => Some(rp.clone()),
        Some(rp) => Some(format!("<{rp}>")),
        None => Some(format!("<{}>", address_of(from))),
    };
    if let Some(rp) = &return_path {
        header("Return-Path", rp);
    }
    if let Some(d) = &spec.delivered_to {
        for v in d.to_vec() {
            header("Delivered-To", &v);
        }
    }
    if let Some(v) = &spec.x_original_to {
        header("X-Original-To", v);
    }
    header("From", from);
    if let Some(v) = &spec.sender {
        header("Sender", v);
    }
    let default_to = format!("{user}@isp.example");
    header("To", spec.to.as_deref().unwrap_or(&default_to));
    if let Some(v) = &spec.cc {
        header("Cc", v);
    }
    header("Subject", spec.subject.as_deref().unwrap_or(name));
    header("Date", DATE);
    header("Message-ID", &message_id(name));
    header("MIME-Version", "1.0");
    header("Content-Type", "text/plain; charset=us-ascii");
    header("Content-Transfer-Encoding", "7bit");
    h.push_str("\r\n");

    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let mut m = h.into_bytes();
    m.reserve(size.saturating_sub(m.len()));
    let mut n = 0u64;
    let mut last_line = 0;
    // Every line is the same but for its 7-digit number: written once, numbered in place.
    let mut line =
        format!("{name} line 0000000: the quick brown fox jumps over the lazy dog 0123456789\r\n")
            .into_bytes();
    let digits = name.len() + " line ".len();
    loop {
        let mut k = n;
        for d in line[digits..digits + 7].iter_mut().rev() {
            *d = b'0' + (k % 10) as u8;
            k /= 10;
        }
        // Always one line; then whole lines while they fit.
        if n > 0 && m.len() + line.len() > size {
            break;
        }
        m.extend_from_slice(&line);
        last_line = line.len();
        n += 1;
    }
    let mut rest = size.saturating_sub(m.len());
    if (1..3).contains(&rest) && n > 1 {
        // Too little room for a padding line: replace the last line by a longer one.
        m.truncate(m.len() - last_line);
        rest += last_line;
    }
    if rest >= 3 {
        m.extend(std::iter::repeat_n(b'x', rest - 2));
        m.extend_from_slice(b"\r\n");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MessageSpec {
        MessageSpec {
            label: "m".into(),
            ..MessageSpec::default()
        }
    }

    #[test]
    fn generated_messages_are_byte_stable_and_sized() {
        let a = message(&spec(), "m", "info", 10_000);
        assert_eq!(a, message(&spec(), "m", "info", 10_000));
        assert_eq!(a.len(), 10_000);
        assert!(a.ends_with(b"\r\n"));
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with(
            "Return-Path: <sender@example.net>\r\nFrom: sender@example.net\r\nTo: info@isp.example\r\nSubject: m\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\nMessage-ID: <m@poplab.invalid>\r\n"
        ), "{text}");
        for size in [0, 100, 500, 4096, 15 * 1024 * 1024, 20 * 1024 * 1024] {
            let m = message(&spec(), "m", "info", size);
            if size >= 500 {
                assert_eq!(m.len() as u64, size);
            }
            assert!(!m.windows(3).any(|w| w == b"\n.\r"), "no dot lines");
        }
    }

    #[test]
    fn header_values_are_written_as_given() {
        let s = MessageSpec {
            from: Some("Accounts <accounts>".into()),
            return_path: Some("a..b@example.net".into()),
            sender: Some("s@x".into()),
            cc: Some("c@x".into()),
            delivered_to: Some(crate::schema::OneOrMany::Many(vec![
                "a@contoso.local".into(),
                "b@contoso.local".into(),
            ])),
            ..spec()
        };
        let text = String::from_utf8(message(&s, "m-2", "info", 0)).unwrap();
        assert!(text.contains("Return-Path: <a..b@example.net>\r\nDelivered-To: a@contoso.local\r\nDelivered-To: b@contoso.local\r\nFrom: Accounts <accounts>\r\nSender: s@x\r\n"), "{text}");
        assert!(text.contains("Cc: c@x\r\nSubject: m-2\r\n"), "{text}");
        let none = MessageSpec {
            return_path: Some(String::new()),
            ..spec()
        };
        assert!(!String::from_utf8(message(&none, "m", "info", 0))
            .unwrap()
            .contains("Return-Path"));
    }
}
