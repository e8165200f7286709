//! The checks behind the cargo-fuzz targets: one `pub fn <target>(data: &[u8])` per
//! target, each feeding the bytes to a Popbridge parser and asserting the properties
//! that parser promises (split invariance, bounds, round trips, no control characters
//! in chosen addresses, ...), so that a broken promise panics like a crash does.
//!
//! Responsible for: being the single definition of every target's logic. The fuzz
//! binaries (fuzz/fuzz_targets/*.rs) call these functions, and the scenarios crate's
//! integration test (scenarios/tests/fuzz_corpus.rs) includes this file with
//! `#[path]` and replays fuzz/corpus/<target>/ through them under a plain `cargo test`.
//! Must never: do I/O of its own, read a file or run a command (inputs that would make a
//! parser do so are skipped, see [`scenario_toml`]), depend on a crate poplab does not
//! depend on, or hold a crate-level attribute (it is also compiled as a module).

use std::fmt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use popbridge::config::{CatchAll, Config};
use popbridge::message::{
    addresses, envelope_sender, first_address, header_digest, header_end, parse_headers,
    received_header, rfc2822_date, SenderSource, DEFAULT_HEADER_MAX,
};
use popbridge::routing::{self, is_local, recipients};
use popbridge::secret::{Secret, SecretSource};
use popbridge_proto::line::crlf_normalised;
use popbridge_proto::pop3::{Pop3Command, Pop3Reply, Pop3Response, MAX_RESPONSE_LINE};
use popbridge_proto::smtp::{
    Mailbox, Reply, ReplyError, ReplyParser, SmtpCommand, MAX_REPLY_LINE, MAX_REPLY_LINES,
};
use popbridge_proto::{DotDecoder, DotError, DotStuffer, LineDecoder, LineError};

/// A split point in `0..=len` taken from one input byte (0 splits before the first byte,
/// 255 after the last).
fn split_point(selector: u8, len: usize) -> usize {
    len * usize::from(selector) / 255
}

// ---------------------------------------------------------------------------------------
// pop3_reply
// ---------------------------------------------------------------------------------------

/// What a [`LineDecoder`] made of a byte stream fed in parts.
#[derive(Debug, PartialEq, Eq)]
struct Framed {
    /// Every complete line, terminator included.
    lines: Vec<Vec<u8>>,
    /// Octets taken off the buffer (as lines) before the end or the error.
    consumed: usize,
    /// The error that stopped framing, if any.
    /// (What is buffered at the error depends on how much had arrived, so is not kept.)
    error: Option<LineError>,
}

/// Frames `parts` (appended one after the other to one buffer) into lines of at most `max`.
fn frame_lines(max: usize, parts: &[&[u8]]) -> Framed {
    let mut decoder = LineDecoder::new(max);
    let limit = decoder.max();
    assert!(limit >= max.max(2), "the decoder lowered its maximum");
    let mut buf = BytesMut::new();
    let (lines, error, consumed) = feed(&mut buf, parts, |buf| decoder.next_line(buf));
    for line in &lines {
        assert!(line.len() <= limit, "line of {} > max {limit}", line.len());
        assert_eq!(line.last(), Some(&b'\n'), "a line ends with LF");
        assert_eq!(
            line.iter().filter(|&&b| b == b'\n').count(),
            1,
            "one LF per line"
        );
    }
    match &error {
        Some(e) => {
            assert_eq!(*e, LineError::TooLong { max: limit });
            assert!(buf.len() >= limit, "TooLong before max octets arrived");
            assert!(
                !buf[..limit].contains(&b'\n'),
                "TooLong with a LF within the limit"
            );
        }
        None => {
            assert!(buf.len() < limit, "incomplete with max octets buffered");
            assert!(!buf.contains(&b'\n'), "incomplete with a LF buffered");
        }
    }
    Framed {
        lines: lines.iter().map(|line| line.to_vec()).collect(),
        consumed,
        error,
    }
}

/// One POP3 reply line: parses, and re-renders status lines and parses them again.
fn check_pop3_line(line: &[u8]) {
    let single = Pop3Reply::parse(line);
    match Pop3Response::parse(line) {
        Ok(Pop3Response::Status(reply)) => {
            assert_eq!(single.as_ref(), Ok(&reply), "Pop3Reply::parse disagrees");
            let wire = reply.to_string();
            assert!(wire.ends_with("\r\n"), "{wire:?}");
            assert!(wire.starts_with(if reply.is_ok() { "+OK" } else { "-ERR" }));
            assert_eq!(
                Pop3Reply::parse(wire.as_bytes()),
                Ok(reply.clone()),
                "re-parsing the rendered reply {wire:?}"
            );
        }
        Ok(Pop3Response::Continue(_)) => {
            assert!(single.is_err(), "a continuation is not a status line");
        }
        Err(_) => assert!(single.is_err(), "Pop3Reply::parse accepted a bad line"),
    }
}

/// Target `pop3_reply`: byte 0 = split point, byte 1 = line maximum (0: RFC 2449's 512),
/// the rest = what a POP3 server sends. Framing the stream whole and in two parts must
/// give the same lines; every line, and the whole rest as one line, goes through
/// `Pop3Response::parse` and the status-line round trip.
pub fn pop3_reply(data: &[u8]) {
    let [selector, max_selector, stream @ ..] = data else {
        return;
    };
    let max = match *max_selector {
        0 => MAX_RESPONSE_LINE,
        n => usize::from(n),
    };
    let split = split_point(*selector, stream.len());
    let whole = frame_lines(max, &[stream]);
    let parts = frame_lines(max, &[&stream[..split], &stream[split..]]);
    assert_eq!(whole, parts, "split at {split} changed the framing");
    let joined = whole.lines.concat();
    assert_eq!(joined.len(), whole.consumed);
    assert_eq!(
        joined,
        stream[..whole.consumed],
        "framing lost or invented bytes"
    );
    for line in &whole.lines {
        check_pop3_line(line);
    }
    check_pop3_line(stream);
}

// ---------------------------------------------------------------------------------------
// dot_decoder
// ---------------------------------------------------------------------------------------

/// A decoder with `limit`, ending on `LF . CRLF` too when `lf_end`.
fn dot_decoder_with(limit: u64, lf_end: bool) -> DotDecoder {
    let decoder = DotDecoder::new(limit);
    if lf_end {
        decoder.with_lf_terminator()
    } else {
        decoder
    }
}

/// What decoding produced: (unstuffed data, input consumed, terminator seen).
type Decoded = (Vec<u8>, usize, bool);

/// Decodes `parts` one after the other, checking the per-call promises.
fn decode_parts(
    decoder: &mut DotDecoder,
    parts: &[&[u8]],
    limit: u64,
) -> Result<Decoded, DotError> {
    let mut out = BytesMut::new();
    let mut consumed = 0;
    for part in parts {
        let result = decoder.decode(part, &mut out);
        assert!(
            out.len() as u64 <= limit,
            "output {} > limit {limit}",
            out.len()
        );
        let progress = result?;
        assert!(progress.consumed <= part.len(), "consumed more than given");
        consumed += progress.consumed;
        assert_eq!(progress.done, decoder.is_done());
        if progress.done {
            return Ok((out.to_vec(), consumed, true));
        }
        assert_eq!(
            progress.consumed,
            part.len(),
            "stopped early without the terminator"
        );
    }
    Ok((out.to_vec(), consumed, false))
}

/// Where the data ends: just past the first terminator (`CRLF . CRLF`, with `lf_end` also
/// `LF . CRLF`; `. CRLF` right at the start), or None.
fn expected_end(input: &[u8], lf_end: bool) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    let pattern: &[u8] = if lf_end { b"\n.\r\n" } else { b"\r\n.\r\n" };
    input
        .windows(pattern.len())
        .position(|w| w == pattern)
        .map(|p| p + pattern.len())
}

/// Target `dot_decoder`: byte 0 = split point, byte 1 = bit 0 `LF . CRLF` also ends the
/// data (POP3 client mode), bits 1-7 the limit (0-126 octets, 127 unlimited); the rest =
/// dot-stuffed data. Checks incomplete/done/TooLarge against an unlimited and a
/// discarding decoder, split invariance, that only the first terminator ends the data,
/// and that the output never exceeds the limit. Then stuffs the rest both ways: chunking
/// does not matter, raw stuffing decodes back to the input, normalised stuffing has no
/// bare CR or LF and decodes to the normalised input.
pub fn dot_decoder(data: &[u8]) {
    let [selector, flags, input @ ..] = data else {
        return;
    };
    let lf_end = flags & 1 != 0;
    let limit = match flags >> 1 {
        127 => u64::MAX,
        n => u64::from(n),
    };
    let split = split_point(*selector, input.len());

    let mut unlimited = dot_decoder_with(u64::MAX, lf_end);
    let full = decode_parts(&mut unlimited, &[input], u64::MAX).expect("unlimited cannot fail");
    let (full_out, full_used, full_done) = &full;
    assert_eq!(unlimited.total(), full_out.len() as u64);
    assert!(full_out.len() <= *full_used, "more output than input");
    let end = expected_end(input, lf_end);
    assert_eq!(
        *full_done,
        end.is_some(),
        "terminator seen/missed (lf_end {lf_end})"
    );
    assert_eq!(
        *full_used,
        end.unwrap_or(input.len()),
        "data ended elsewhere"
    );

    let mut discarding = DotDecoder::discarding();
    if lf_end {
        discarding = discarding.with_lf_terminator();
    }
    let discarded = decode_parts(&mut discarding, &[input], u64::MAX).expect("discarding");
    assert!(discarded.0.is_empty(), "a discarding decoder stored output");
    assert_eq!((discarded.1, discarded.2), (*full_used, *full_done));
    assert_eq!(discarding.total(), full_out.len() as u64);

    let whole = decode_parts(&mut dot_decoder_with(limit, lf_end), &[input], limit);
    match &whole {
        Ok(w) => {
            assert!(full_out.len() as u64 <= limit);
            assert_eq!(w, &full, "a limit that was not reached changed the result");
        }
        Err(e) => {
            assert_eq!(e, &DotError::TooLarge { limit });
            assert!(full_out.len() as u64 > limit, "TooLarge below the limit");
        }
    }
    let halves = [&input[..split], &input[split..]];
    let parts = decode_parts(&mut dot_decoder_with(limit, lf_end), &halves, limit);
    assert_eq!(parts, whole, "split at {split} changed the result");

    for normalize in [false, true] {
        let wire = DotStuffer::stuff_all(input, normalize);
        let mut stuffer = DotStuffer::new(normalize);
        let mut chunked = BytesMut::new();
        stuffer.stuff(&input[..split], &mut chunked);
        stuffer.stuff(&input[split..], &mut chunked);
        stuffer.finish(&mut chunked);
        assert_eq!(chunked, wire, "stuffing in chunks (normalize {normalize})");
        assert!(wire.ends_with(b".\r\n"));
        // Raw stuffing is what a POP3 server sends (its reader accepts `LF . CRLF`);
        // normalised stuffing is SMTP DATA, read by a CRLF-only decoder.
        let mut decoder = dot_decoder_with(u64::MAX, !normalize);
        let (out, used, done) = decode_parts(&mut decoder, &[&wire], u64::MAX).expect("decode");
        assert!(done, "stuffed data never ended (normalize {normalize})");
        assert_eq!(
            used,
            wire.len(),
            "stuffed data ended early (normalize {normalize})"
        );
        if normalize {
            for (i, &b) in wire.iter().enumerate() {
                match b {
                    b'\r' => assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                    b'\n' => assert!(i > 0 && wire[i - 1] == b'\r', "bare LF at {i}"),
                    _ => {}
                }
            }
            assert_eq!(out, crlf_normalised(input), "normalised round trip");
        } else {
            let mut expect = input.to_vec();
            if !expect.is_empty() && !expect.ends_with(b"\n") {
                expect.extend_from_slice(b"\r\n");
            }
            assert_eq!(out, expect, "raw round trip");
        }
    }
}

// ---------------------------------------------------------------------------------------
// smtp_reply
// ---------------------------------------------------------------------------------------

/// Replies parsed from `parts` appended to one buffer, up to and including the first
/// error; with the octets the parser took off the buffer until then.
fn parse_replies(
    max_line: usize,
    max_lines: usize,
    parts: &[&[u8]],
) -> (Vec<Result<Reply, ReplyError>>, usize) {
    let mut parser = ReplyParser::with_limits(max_line, max_lines);
    let (replies, error, consumed) = feed(&mut BytesMut::new(), parts, |buf| parser.parse(buf));
    let mut replies: Vec<_> = replies.into_iter().map(Ok).collect();
    replies.extend(error.map(Err));
    (replies, consumed)
}

/// Appends `parts` one after the other to `buf`, after each taking items off it with
/// `next` until it has none; stops at `next`'s first error. Returns the items, that error
/// and the octets taken off the buffer.
fn feed<T, E>(
    buf: &mut BytesMut,
    parts: &[&[u8]],
    mut next: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> (Vec<T>, Option<E>, usize) {
    let mut items = Vec::new();
    let mut fed = 0;
    for part in parts {
        buf.extend_from_slice(part);
        fed += part.len();
        loop {
            match next(buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e), fed - buf.len()),
            }
        }
    }
    (items, None, fed - buf.len())
}

/// Target `smtp_reply`: byte 0 = split point, byte 1 = limits (0: the defaults 2048
/// octets / 128 lines; else 4 + 8 * (bits 0-4) octets and 1 + (bits 5-7) lines); the rest
/// = what an SMTP server sends. Whole and split parsing agree; every reply has a 2xx-5xx
/// code, at most the line limit, an enhanced code of its own class, and renders to wire
/// text that parses back to the same reply.
pub fn smtp_reply(data: &[u8]) {
    let [selector, limits, stream @ ..] = data else {
        return;
    };
    let (max_line, max_lines) = match *limits {
        0 => (MAX_REPLY_LINE, MAX_REPLY_LINES),
        n => (4 + 8 * usize::from(n & 0x1f), 1 + usize::from(n >> 5)),
    };
    let split = split_point(*selector, stream.len());
    let whole = parse_replies(max_line, max_lines, &[stream]);
    let parts = parse_replies(max_line, max_lines, &[&stream[..split], &stream[split..]]);
    assert_eq!(whole, parts, "split at {split} changed the replies");
    for reply in whole.0.iter().filter_map(|r| r.as_ref().ok()) {
        assert!((200..=599).contains(&reply.code), "code {}", reply.code);
        assert!(!reply.lines.is_empty() && reply.lines.len() <= max_lines.max(1));
        if let Some(e) = reply.enhanced {
            assert_eq!(u16::from(e.class), reply.code / 100, "enhanced class");
        }
        assert!(reply.lines.iter().all(|l| !l.contains('\n')));
        let wire = reply.to_string();
        // Re-rendering may lengthen lines (enhanced codes repeated, U+FFFD for bad bytes).
        let (again, used) = parse_replies(1 << 20, max_lines.max(1), &[wire.as_bytes()]);
        assert_eq!(again, [Ok(reply.clone())], "re-parsing {wire:?}");
        assert_eq!(used, wire.len(), "rendering left bytes over: {wire:?}");
    }
}

// ---------------------------------------------------------------------------------------
// pop3_command / smtp_command
// ---------------------------------------------------------------------------------------

/// A parsed command's wire line is one CRLF-terminated line starting with its `verb` that
/// parses back to the same command (`redacted` names it in a failure).
fn check_wire_line<C, E>(cmd: &C, verb: &str, redacted: &str, parse: fn(&[u8]) -> Result<C, E>)
where
    C: Clone + PartialEq + fmt::Debug + fmt::Display,
    E: PartialEq + fmt::Debug,
{
    let wire = cmd.to_string();
    assert!(wire.ends_with("\r\n") && wire.starts_with(verb), "{wire:?}");
    assert_eq!(
        parse(wire.as_bytes()),
        Ok(cmd.clone()),
        "re-parsing {redacted:?}"
    );
}

/// Target `pop3_command`: the input is one client line as mock-pop3 reads it. A parsed
/// command renders to one CRLF-terminated line that parses back to the same command, and
/// its redacted and Debug forms carry no secret.
pub fn pop3_command(data: &[u8]) {
    let Ok(cmd) = Pop3Command::parse(data) else {
        return;
    };
    let redacted = cmd.redacted();
    check_wire_line(&cmd, cmd.keyword(), &redacted, Pop3Command::parse);
    match &cmd {
        Pop3Command::Pass(_) => assert_eq!(redacted, "PASS ***"),
        Pop3Command::Apop { name, .. } => assert_eq!(redacted, format!("APOP {name} ***")),
        Pop3Command::Auth {
            mechanism,
            initial: Some(_),
        } => assert_eq!(redacted, format!("AUTH {mechanism} ***")),
        _ => {}
    }
    assert_eq!(format!("{cmd:?}"), format!("Pop3Command({redacted})"));
}

/// Target `smtp_command`: the input is one client line as mock-smtp reads it. A parsed
/// command renders to one CRLF-terminated line that parses back to the same command, and
/// an AUTH initial response never reaches its redacted or Debug form.
pub fn smtp_command(data: &[u8]) {
    let Ok(cmd) = SmtpCommand::parse(data) else {
        return;
    };
    let redacted = cmd.redacted();
    check_wire_line(&cmd, cmd.verb(), &redacted, SmtpCommand::parse);
    if let SmtpCommand::Auth {
        mechanism,
        initial: Some(_),
    } = &cmd
    {
        assert_eq!(redacted, format!("AUTH {mechanism} ***"));
    }
    assert_eq!(format!("{cmd:?}"), format!("SmtpCommand({redacted})"));
}

// ---------------------------------------------------------------------------------------
// headers
// ---------------------------------------------------------------------------------------

/// Every header value parse_headers returned.
fn header_values(info: &popbridge::message::HeaderInfo) -> Vec<&String> {
    let singles = [
        &info.return_path,
        &info.sender,
        &info.from,
        &info.message_id,
        &info.subject,
        &info.date,
    ];
    let lists = [&info.delivered_to, &info.x_original_to, &info.to, &info.cc];
    singles
        .into_iter()
        .flatten()
        .chain(lists.into_iter().flatten())
        .collect()
}

/// Target `headers`: byte 0 = flags (bit 0 a default_domain, bits 3-7 the header limit:
/// 0 the default 256 KiB, else 64 octets per step), the rest = a message. Checks that
/// nothing past the limit or the header end is read, that addresses never carry a
/// control character, the envelope-sender rules for every repair / SMTPUTF8 / fallback
/// combination, the digest's shape and limits, and the Received: line built from
/// hostile values.
pub fn headers(data: &[u8]) {
    let [flags, head @ ..] = data else {
        return;
    };
    let default_domain = (flags & 1 != 0).then_some("contoso.local");
    let max = match flags >> 3 {
        0 => DEFAULT_HEADER_MAX,
        n => usize::from(n) * 64,
    };
    let bounded = &head[..head.len().min(max)];
    let info = parse_headers(head, max);
    assert_eq!(parse_headers(bounded, max), info, "read past the limit");
    let size = head.len() as u64;
    let digest = header_digest(head, size, max);
    assert!(
        digest.len() == 71 && digest.starts_with("sha256:"),
        "{digest}"
    );
    assert!(digest[7..]
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(
        header_digest(bounded, size, max),
        digest,
        "digest read past the limit"
    );
    assert_ne!(
        header_digest(head, size + 1, max),
        digest,
        "digest ignores the size"
    );
    if let Some(end) = header_end(head, max) {
        assert!(end <= bounded.len(), "header end past the limit");
        assert_eq!(head[end - 1], b'\n');
        let before = &head[..end - 1];
        assert!(
            before.is_empty()
                || before == b"\r"
                || before.ends_with(b"\n")
                || before.ends_with(b"\n\r"),
            "header end not after an empty line"
        );
        assert_eq!(
            parse_headers(&head[..end], max),
            info,
            "read past the header"
        );
        assert_eq!(
            header_digest(&head[..end], size, max),
            digest,
            "digest past header"
        );
    }

    for value in header_values(&info) {
        assert!(
            !value.contains('\n'),
            "unfolded value holds a LF: {value:?}"
        );
        if let Some(a) = first_address(value) {
            assert!(!a.chars().any(char::is_control), "{a:?}");
        }
        for a in addresses(value) {
            assert!(!a.is_empty() && !a.chars().any(char::is_control), "{a:?}");
        }
    }

    for repair in [false, true] {
        for smtputf8 in [false, true] {
            for fallback in ["", "postmaster@contoso.local"] {
                let es = envelope_sender(&info, default_domain, fallback, smtputf8, repair);
                let what = format!("repair {repair} smtputf8 {smtputf8} fallback {fallback:?}");
                if es.source == SenderSource::Fallback {
                    assert_eq!(es.address, fallback, "{what}");
                    assert!(es.repair.is_some(), "fallback without a reason, {what}");
                    continue;
                }
                let a = &es.address;
                assert!(!a.contains(['\r', '\n']), "CR/LF in {a:?}, {what}");
                assert!(!a.chars().any(char::is_control), "control in {a:?}, {what}");
                let header = match es.source {
                    SenderSource::ReturnPath => &info.return_path,
                    SenderSource::Sender => &info.sender,
                    _ => &info.from,
                };
                assert!(
                    header.is_some(),
                    "{:?} without that header, {what}",
                    es.source
                );
                let original = match &es.repair {
                    None => a.clone(),
                    Some(r) => {
                        assert!(repair, "repaired with repair off, {what}");
                        let domain = default_domain.expect("repaired without default_domain");
                        assert_eq!(*a, format!("{}@{domain}", r.original), "{what}");
                        r.original.clone()
                    }
                };
                assert!(
                    original.chars().count() <= head.len(),
                    "address longer than the input, {what}"
                );
                if repair {
                    if a.is_empty() {
                        assert_eq!(es.source, SenderSource::ReturnPath, "{what}");
                    } else {
                        assert!(Mailbox::parse(a).is_ok(), "invalid {a:?} chosen, {what}");
                        assert!(smtputf8 || a.is_ascii(), "non-ASCII {a:?}, {what}");
                    }
                }
            }
        }
    }

    // The Received: line, from values a POP3 server (UIDL) or a message could supply.
    let text = String::from_utf8_lossy(head);
    let mut fields = text.splitn(4, '|');
    let mut next = || fields.next().unwrap_or("");
    let (host, helo, uid, rcpt) = (next(), next(), next(), next());
    let secs = head
        .iter()
        .take(8)
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let moments = [
        UNIX_EPOCH.checked_add(Duration::from_secs(secs)),
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs)),
        UNIX_EPOCH.checked_add(Duration::from_secs(secs >> 24)),
    ];
    for now in moments.into_iter().flatten() {
        let date = rfc2822_date(now);
        assert!(date.ends_with(" +0000") && date.is_ascii(), "{date}");
        let line = received_header(host, helo, uid, rcpt, now);
        assert!(
            line.starts_with("Received: from ") && line.ends_with("\r\n"),
            "{line:?}"
        );
        for (i, piece) in line[..line.len() - 2].split("\r\n").enumerate() {
            let piece = if i == 0 {
                piece
            } else {
                piece
                    .strip_prefix('\t')
                    .unwrap_or_else(|| panic!("unfolded line in {line:?}"))
            };
            assert!(!piece.chars().any(char::is_control), "control in {line:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// catch_all
// ---------------------------------------------------------------------------------------

/// Target `catch_all`: the input is a message; its header is routed for a fixed catch-all
/// account (domains contoso.com and contoso.local, plus boss@other.example). Recipients
/// are never empty, never repeated, lower-case valid local mailboxes, taken from the
/// first source that names a local address (all of its local addresses) or else exactly
/// the fallback.
pub fn catch_all(data: &[u8]) {
    let config = CatchAll {
        local_domains: vec!["contoso.com".into(), "contoso.local".into()],
        local_addresses: vec!["boss@other.example".into()],
    };
    let fallback = "postmaster@contoso.local";
    let info = parse_headers(data, DEFAULT_HEADER_MAX);
    let routed = recipients(&info, &config, fallback);
    assert!(!routed.recipients.is_empty(), "no recipient");
    let local_of = |values: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for value in values {
            for a in addresses(value) {
                let a = a.to_ascii_lowercase();
                if is_local(&a, &config) && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    };
    let to_cc: Vec<String> = info.to.iter().chain(&info.cc).cloned().collect();
    let sources = [
        (routing::DELIVERED_TO, local_of(&info.delivered_to)),
        (routing::X_ORIGINAL_TO, local_of(&info.x_original_to)),
        (routing::TO_CC, local_of(&to_cc)),
    ];
    match sources.iter().find(|(_, found)| !found.is_empty()) {
        Some((source, found)) => {
            assert_eq!(routed.source, *source);
            assert_eq!(
                &routed.recipients, found,
                "not every local address of {source}"
            );
        }
        None => {
            assert_eq!(routed.source, routing::FALLBACK);
            assert_eq!(routed.recipients, [fallback]);
        }
    }
    if routed.source != routing::FALLBACK {
        for (i, a) in routed.recipients.iter().enumerate() {
            assert!(is_local(a, &config), "external {a:?}");
            assert!(Mailbox::parse(a).is_ok(), "invalid {a:?}");
            assert!(
                !a.chars().any(|c| c.is_control() || c.is_whitespace()),
                "{a:?}"
            );
            assert_eq!(*a, a.to_ascii_lowercase());
            assert!(!routed.recipients[..i].contains(a), "{a:?} twice");
        }
    }
    let text = String::from_utf8_lossy(data);
    if is_local(&text, &config) {
        let lower = text.to_ascii_lowercase();
        let m = Mailbox::parse(&lower).expect("is_local accepted an invalid address");
        assert!(
            config.local_domains.contains(&m.domain) || config.local_addresses.contains(&lower),
            "{lower:?} is not local"
        );
    }
}

// ---------------------------------------------------------------------------------------
// config_toml
// ---------------------------------------------------------------------------------------

/// Target `config_toml`: the input (lossy UTF-8) is a popbridge.toml. Parsing and
/// validation (which never resolves a password source, so never runs a
/// `password_command`) either fail with a message naming the file and an existing line,
/// or give a configuration that keeps its documented invariants and whose Debug form
/// does not show a literal password.
pub fn config_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/nonexistent/fuzz.toml");
    let config = match Config::from_str(&text, path) {
        Ok(c) => c,
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("/nonexistent/fuzz.toml"), "{message}");
            if let Some(line) = e.line() {
                assert!(line >= 1 && line <= text.split('\n').count(), "line {line}");
            }
            return;
        }
    };
    assert!(!config.accounts.is_empty());
    assert!((1..=64).contains(&config.parallel_accounts));
    assert!(config.state_dir.is_absolute(), "{:?}", config.state_dir);
    let (min, max) = (Duration::from_secs(300), Duration::from_secs(86_400));
    assert!(config.interval >= min && config.interval <= max);
    assert!(config.jitter <= config.interval / 2);
    let fallback = &config.limits.fallback_sender;
    assert!(fallback.is_empty() || Mailbox::parse(fallback).is_ok());
    let mut names: Vec<String> = Vec::new();
    for a in &config.accounts {
        let name = a.name.to_ascii_lowercase();
        assert!(!names.contains(&name), "duplicate account {name:?}");
        names.push(name);
        assert!(a.port >= 1 && !a.username.trim().is_empty());
        assert!(!a.host.is_empty() && !a.host.chars().any(|c| c.is_whitespace() || c.is_control()));
        assert!(Mailbox::parse(&a.deliver_to).is_ok(), "{:?}", a.deliver_to);
        if let Some(c) = &a.catch_all {
            assert!(!c.local_domains.is_empty() || !c.local_addresses.is_empty());
        }
        if let SecretSource::File(p) = &a.secret {
            assert!(p.is_absolute(), "{p:?}");
        }
    }
    let mut blanked = config.clone();
    for a in &mut blanked.accounts {
        if let SecretSource::Value(_) = a.secret {
            a.secret = SecretSource::Value(Secret::new(String::new()));
        }
    }
    assert_eq!(
        format!("{config:?}"),
        format!("{blanked:?}"),
        "a password in Debug"
    );
}

// ---------------------------------------------------------------------------------------
// scenario_toml
// ---------------------------------------------------------------------------------------

/// Octets of generated messages above which a scenario is not parsed (generation is eager).
const MAX_GENERATED: u128 = 16 << 20;

/// Adds to `generated` an upper estimate of what the tables with `count` / `size` /
/// `label` make schema::parse generate (it refuses more than 2 GiB, which is still far too
/// much for a fuzzer's time).
fn scan_scenario(value: &toml::Value, generated: &mut u128) {
    match value {
        toml::Value::Table(t) => {
            if ["count", "size", "label"]
                .iter()
                .any(|k| t.contains_key(*k))
            {
                let count = match t.get("count") {
                    Some(toml::Value::Integer(n)) => u128::try_from(*n).unwrap_or(0),
                    _ => 1,
                };
                let size = match t.get("size") {
                    Some(toml::Value::Integer(n)) => u128::try_from(*n).unwrap_or(0),
                    Some(toml::Value::String(s)) => {
                        popbridge::config::parse_size(s).map_or(0, u128::from)
                    }
                    _ => 0,
                };
                *generated = generated.saturating_add(count.saturating_mul(size.max(4096)));
            }
            t.values().for_each(|v| scan_scenario(v, generated));
        }
        toml::Value::Array(items) => items.iter().for_each(|v| scan_scenario(v, generated)),
        _ => {}
    }
}

/// Target `scenario_toml`: the input (lossy UTF-8) is a poplab scenario file, validated
/// by `poplab::schema::parse` (which also runs popbridge's configuration parser on the
/// connector keys). It must fail with a message naming the file and an existing line, or
/// succeed. `raw` fixtures are read for real (a regular file, at most 256 MB: a device or
/// a pipe is refused). Skipped for the fuzzer's time only: scenarios generating more than
/// 16 MiB of messages (`count` x `size` are generated before the run).
pub fn scenario_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(table) = text.parse::<toml::Table>() {
        let mut generated = 0;
        scan_scenario(&toml::Value::Table(table), &mut generated);
        if generated > MAX_GENERATED {
            return;
        }
    }
    let path = Path::new("/nonexistent/dir/fuzz.toml");
    match poplab::schema::parse(&text, path) {
        Ok(scenario) => assert_eq!(scenario.path, path),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("/nonexistent/dir/fuzz.toml"),
                "{message}"
            );
            if let Some(line) = e.line() {
                assert!(line >= 1 && line <= text.split('\n').count(), "line {line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// listing
// ---------------------------------------------------------------------------------------

/// What one framing of a listing gave: the lines, each parsed as LIST or UIDL, and how it
/// ended (`Ok(consumed)` once the terminator was read, `Err` with the error's text, or
/// `None` when the input ran out first).
type ListingFramed = (
    Vec<Vec<u8>>,
    Vec<Result<(), String>>,
    Option<Result<usize, String>>,
);

/// Feeds `parts` one after the other, carrying over what a call did not consume (as the
/// POP3 client's buffer does), into a LIST (`uidl` false) or UIDL listing parser.
fn frame_listing(parts: &[&[u8]], max_line: usize, uidl: bool) -> ListingFramed {
    use popbridge::listing::{Budget, LineReader, Sizes, UidScan, Want};
    let mut reader = LineReader::new(64 * 1024, max_line);
    let mut lines = Vec::new();
    let mut parsed = Vec::new();
    let mut sizes = Sizes::new();
    let mut scan = UidScan::new(Budget { messages: 3 }, |n: u32, _: &str| {
        if n.is_multiple_of(2) {
            Want::First
        } else {
            Want::Later
        }
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut total = 0usize;
    for part in parts {
        pending.extend_from_slice(part);
        let mut on_line = |line: &[u8]| {
            assert!(line.len() <= max_line.max(2), "a line past its bound");
            assert!(!line.contains(&b'\n'), "a line end inside a line");
            lines.push(line.to_vec());
            let r = if uidl {
                scan.line(line)
            } else {
                sizes.line(line)
            };
            parsed.push(r.clone());
            r
        };
        match reader.feed(&pending, &mut on_line) {
            Ok(p) => {
                assert!(p.consumed <= pending.len());
                total += p.consumed;
                pending.drain(..p.consumed);
                if p.done {
                    assert!(reader.is_done());
                    // Holding what was selected: a message listed twice is refused only
                    // here, so this may fail, but never panic.
                    if uidl {
                        let _ = scan.finish().map(|l| l.len());
                    }
                    return (lines, parsed, Some(Ok(total)));
                }
            }
            Err(e) => return (lines, parsed, Some(Err(e.to_string()))),
        }
    }
    (lines, parsed, None)
}

/// Target `listing`: byte 0 = split point, byte 1 = line bound (0 = 8 KiB) and LIST or
/// UIDL (its low bit); the rest = a LIST or UIDL reply body as a server sends it. The
/// streaming listing reader (connector/src/listing.rs) must give the same lines, parse
/// results and end (consumed octets, error) whether the input comes whole or in two parts,
/// never hand over a line longer than its bound, and never panic (holding a UIDL listing
/// read to its end may fail, when a message is listed twice, but not panic).
pub fn listing(data: &[u8]) {
    let [selector, config, stream @ ..] = data else {
        return;
    };
    let uidl = config & 1 == 1;
    let max_line = match config >> 1 {
        0 => popbridge::listing::MAX_LINE,
        n => usize::from(n),
    };
    let split = split_point(*selector, stream.len());
    let whole = frame_listing(&[stream], max_line, uidl);
    let parts = frame_listing(&[&stream[..split], &stream[split..]], max_line, uidl);
    assert_eq!(whole, parts, "split at {split} of {}", stream.len());
}

// ---------------------------------------------------------------------------------------
// ntlm
// ---------------------------------------------------------------------------------------

/// Target `ntlm`: the whole input is one NTLM message as a peer sends it (base64-decoded),
/// read by every parser of proto/src/ntlm.rs. None may panic. A CHALLENGE that parses is
/// written back and must parse to itself; the client's AUTHENTICATE for it, for each
/// form of login, must parse, carry the user and domain the login says (the challenge's
/// target name for a bare user), a 24-octet LM response (zeros when the server sent a
/// timestamp), and verify with the password and challenge it was made for and no other;
/// it may only be refused for text the OEM character set cannot carry or a field too
/// long. An AUTHENTICATE that parses verifies or not, without a panic, and its `Debug`
/// form hides the responses.
pub fn ntlm(data: &[u8]) {
    use popbridge_proto::ntlm::{self, Authenticate, Challenge, Negotiate, NtlmError, TargetInfo};
    const PASSWORD: &str = "pässword";
    let _ = Negotiate::parse(data);
    let _ = TargetInfo::parse(data);
    if let Ok(a) = Authenticate::parse(data) {
        let _ = a.verify(&[0; 8], PASSWORD);
        assert!(format!("{a:?}").contains("responses: \"***\""), "{a:?}");
    }
    let Ok(challenge) = Challenge::parse(data) else {
        return;
    };
    if let Ok(bytes) = challenge.to_bytes() {
        assert_eq!(Challenge::parse(&bytes).as_ref(), Ok(&challenge));
    }
    let target = challenge.target_name.as_str();
    for (login, domain, user) in [
        ("Domain\\User", "Domain", "User"),
        ("user@domain.example", "", "user@domain.example"),
        ("user", target, "user"),
    ] {
        let message = match ntlm::authenticate(&challenge, login, PASSWORD, [0x5a; 8], 1) {
            Ok(m) => m,
            Err(NtlmError::NotOem(_) | NtlmError::TooLong(_)) => continue,
            Err(e) => panic!("{login}: {e}"),
        };
        assert_eq!(format!("{message:?}"), "AuthenticateMessage(***)");
        let a = Authenticate::parse(message.as_bytes()).expect("its own AUTHENTICATE parses");
        assert_eq!(
            (a.domain.as_str(), a.user.as_str()),
            (domain, user),
            "{login}"
        );
        match challenge.target_info.timestamp() {
            Some(_) => assert_eq!(a.lm_response, [0u8; 24]),
            None => assert_eq!(a.lm_response.len(), 24),
        }
        assert!(a.verify(&challenge.server_challenge, PASSWORD), "{login}");
        assert!(
            !a.verify(&challenge.server_challenge, "password"),
            "{login}"
        );
        let mut other = challenge.server_challenge;
        other[7] ^= 1;
        assert!(!a.verify(&other, PASSWORD), "{login}");
    }
}
