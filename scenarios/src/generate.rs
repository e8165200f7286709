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
//! Messages with `attachments` or `html` take the same hand-written headers, and their
//! MIME body from mail-builder (fixed boundaries named after the message, attachment
//! content from a ChaCha generator seeded with the message's name and part number).
//!
//! Must never: contain connector logic, use the clock or an unseeded random source (such
//! as mail-builder's own boundaries, Message-ID or Date), or add a header to a raw
//! fixture.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use serde::Serialize;

use crate::schema::{BodyShape, Ctx, Error, MessageSpec, Pop3Mailbox, Scalar, MAX_COUNT, MAX_SIZE};
use popbridge::toml_locate::KeyPath;

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
    /// The declared (decoded) size of its attachments in all; 0 without any.
    #[serde(skip)]
    pub attachment_octets: u64,
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
            let mime = !spec.attachments.is_empty() || spec.html == Some(true);
            if mime && (spec.size.is_some() || spec.body.is_some()) {
                let k = if spec.size.is_some() { "size" } else { "body" };
                return Err(cx.err(
                    &at.key(k),
                    "not used with attachments or html (the message is as large as its parts)",
                ));
            }
            let mut parts = Vec::with_capacity(spec.attachments.len());
            for (j, a) in spec.attachments.iter().enumerate() {
                let aat = at.key("attachments").index(j);
                let n = size(cx, &a.size, &aat.key("size"))?;
                if n > MAX_SIZE {
                    return Err(cx.err(&aat.key("size"), "at most 256MB"));
                }
                let t = &a.content_type;
                let ok = t.split_once('/').is_some_and(|(x, y)| {
                    !x.is_empty() && !y.is_empty() && t.chars().all(|c| c.is_ascii_graphic())
                });
                if !ok {
                    return Err(cx.err(
                        &aat.key("type"),
                        "must be a MIME type such as \"application/pdf\"",
                    ));
                }
                if a.name.is_empty() || a.name.chars().any(char::is_control) {
                    return Err(cx.err(&aat.key("name"), "must be a non-empty file name"));
                }
                parts.push(n);
            }
            let attachment_octets: u64 = parts.iter().sum();
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
            let each = raw.as_ref().map_or(target, |r| r.len() as u64)
                + attachment_octets.saturating_mul(4) / 3;
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
                    None if mime => {
                        let m = mime_message(spec, written, &mb.user, &parts);
                        (Bytes::from(m), Some(message_id(written)))
                    }
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
                    attachment_octets,
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
        ("attachments", !spec.attachments.is_empty()),
        ("html", spec.html.is_some()),
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

/// The header lines every generated message starts with (Return-Path to Message-ID),
/// written as given; a non-ASCII subject is encoded as RFC 2047 requires.
fn common_headers(spec: &MessageSpec, name: &str, user: &str) -> String {
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
    let subject = spec.subject.as_deref().unwrap_or(name);
    if subject.is_ascii() {
        header("Subject", subject);
    } else {
        use mail_builder::headers::{text::Text, Header};
        let mut v = Vec::new();
        Text::new(subject).write_header(&mut v, "Subject: ".len());
        h.push_str("Subject: ");
        h.push_str(&String::from_utf8_lossy(&v));
    }
    let mut header = |name: &str, value: &str| {
        h.push_str(name);
        h.push_str(": ");
        h.push_str(value);
        h.push_str("\r\n");
    };
    header("Date", DATE);
    header("Message-ID", &message_id(name));
    header("MIME-Version", "1.0");
    h
}

/// Seeded attachment content: the same bytes for the same message, part and size.
fn attachment_bytes(name: &str, index: usize, size: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut seed = [0u8; 32];
    for (i, b) in name.bytes().chain((index as u64).to_le_bytes()).enumerate() {
        seed[i % 32] ^= b.rotate_left((i / 32) as u32);
    }
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(seed);
    let mut out = vec![0u8; usize::try_from(size).unwrap_or(0)];
    rng.fill_bytes(&mut out);
    out
}

/// A generated MIME message (built with mail-builder): the common headers, then a text
/// part (with an HTML alternative when `html = true`) and the attachments of `sizes`
/// (decoded octets, in the order declared) in base64. Boundaries are fixed from the
/// message's name, so the bytes are the same on every run.
pub fn mime_message(spec: &MessageSpec, name: &str, user: &str, sizes: &[u64]) -> Vec<u8> {
    use mail_builder::headers::content_type::ContentType;
    use mail_builder::mime::MimePart;
    let text = format!("{name}: generated by poplab.\r\n");
    let text_part = MimePart::new(
        ContentType::new("text/plain").attribute("charset", "utf-8"),
        text.clone(),
    );
    let body = if spec.html == Some(true) {
        let html = format!("<html><body><p>{name}: generated by poplab.</p></body></html>\r\n");
        let html_part = MimePart::new(
            ContentType::new("text/html").attribute("charset", "utf-8"),
            html,
        );
        MimePart::new(
            ContentType::new("multipart/alternative")
                .attribute("boundary", format!("poplab-alt-{name}")),
            vec![text_part, html_part],
        )
    } else {
        text_part
    };
    let mut all = vec![body];
    for (i, (a, &size)) in spec.attachments.iter().zip(sizes).enumerate() {
        let part = MimePart::new(
            ContentType::new(a.content_type.clone()),
            attachment_bytes(name, i, size),
        );
        all.push(if a.inline {
            part.inline().cid(format!("part{i}.{name}@poplab.invalid"))
        } else {
            part.attachment(a.name.clone())
        });
    }
    let root = if all.len() == 1 {
        all.remove(0)
    } else {
        MimePart::new(
            ContentType::new("multipart/mixed")
                .attribute("boundary", format!("poplab-mixed-{name}")),
            all,
        )
    };
    let mut m = common_headers(spec, name, user).into_bytes();
    root.write_part(&mut m);
    m
}

/// A generated message of about `size` octets (exactly, unless its header alone is larger).
pub fn message(spec: &MessageSpec, name: &str, user: &str, size: u64) -> Vec<u8> {
    let mut h = common_headers(spec, name, user);
    let mut header = |name: &str, value: &str| {
        h.push_str(name);
        h.push_str(": ");
        h.push_str(value);
        h.push_str("\r\n");
    };
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
    use crate::schema::AttachmentSpec;
    use mail_parser::MimeHeaders;

    fn with_attachment(size: u64, name: &str) -> MessageSpec {
        MessageSpec {
            label: "scan".into(),
            subject: Some("Übersicht – Scan".into()),
            html: Some(true),
            attachments: vec![AttachmentSpec {
                size: Scalar::Int(size as i64),
                content_type: "application/pdf".into(),
                name: name.into(),
                inline: false,
            }],
            ..MessageSpec::default()
        }
    }

    #[test]
    fn a_10mb_attachment_is_base64_on_the_wire_within_one_percent() {
        let size = 10 * 1024 * 1024;
        let m = mime_message(&with_attachment(size, "scan.pdf"), "scan", "info", &[size]);
        // base64: 4 octets per 3, plus CRLF after every 76 characters.
        let b64 = size.div_ceil(3) * 4;
        let expected = b64 + b64.div_ceil(76) * 2;
        let wire = m.len() as u64;
        let off = wire.abs_diff(expected) as f64 / expected as f64;
        assert!(
            off < 0.01,
            "wire {wire}, expected about {expected} ({off:.4})"
        );
        assert!(wire > size, "the wire size exceeds the attachment's");
    }

    #[test]
    fn generated_mime_parses_with_the_declared_attachment_and_subject() {
        let size = 10 * 1024 * 1024;
        let spec = with_attachment(size, "Angebot für Müller.pdf");
        let m = mime_message(&spec, "scan", "info", &[size]);
        assert_eq!(
            m,
            mime_message(&spec, "scan", "info", &[size]),
            "deterministic"
        );
        assert!(m.is_ascii(), "headers and body are 7-bit on the wire");
        let parsed = mail_parser::MessageParser::default()
            .parse(&m)
            .expect("valid MIME");
        assert_eq!(parsed.subject(), Some("Übersicht – Scan"));
        let atts: Vec<_> = parsed.attachments().collect();
        assert_eq!(atts.len(), 1);
        assert_eq!(atts[0].attachment_name(), Some("Angebot für Müller.pdf"));
        let bytes = atts[0].contents();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(bytes, &attachment_bytes("scan", 0, size)[..]);
        let text = String::from_utf8_lossy(&m);
        assert!(
            text.contains("multipart/alternative"),
            "html gives an alternative"
        );
        assert!(
            text.contains("boundary=\"poplab-mixed-scan\""),
            "fixed boundary"
        );
        assert!(text.contains("Message-ID: <scan@poplab.invalid>"));
    }

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
