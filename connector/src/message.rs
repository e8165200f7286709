//! Reading what the connector needs from a message's header: the envelope sender
//! (ARCHITECTURE.md, "Where it hurt" 3), the recipient headers, the trace `Received:` line it
//! prepends, the de-duplication digest for servers without UIDL, and the sender, subject,
//! date and Message-ID that name a message in events and summaries ([`Named`]).
//!
//! Responsible for: parsing hostile headers tolerantly (bare LF, bare CR, NUL, 8-bit,
//! invalid UTF-8, very long lines, folding, no header/body separator, empty input) and
//! choosing a usable `MAIL FROM` so that malformed return paths cannot stop all mail
//! (ARCHITECTURE.md, "Facts the code relies on").
//! Must never: panic on any input, look past the header or past the caller's byte
//! limit, allocate more than a small multiple of that limit, or let CR, LF or another
//! control character from a message into an address or a header it produces, or into a
//! [`Named`] field unescaped (each is also cut to [`NAME_MAX`] characters).

use std::time::{SystemTime, UNIX_EPOCH};

use popbridge_proto::smtp::{AddressError, Mailbox};
use sha2::{Digest, Sha256};

/// The default cap on the header bytes examined (256 KiB).
pub const DEFAULT_HEADER_MAX: usize = 256 * 1024;

/// Index just past the blank line ending the header (CRLF CRLF or LF LF, whichever first), or None if not found within `max`.
///
/// A line is terminated by LF with an optional CR before it; the header ends at the first
/// empty line, so `\r\n\n` and `\n\r\n` end it too. A bare CR never ends a line. Only
/// `data[..max]` is examined, so the result is at most `max`.
pub fn header_end(data: &[u8], max: usize) -> Option<usize> {
    let region = &data[..data.len().min(max)];
    let mut pos = 0;
    while pos < region.len() {
        let lf = pos + region[pos..].iter().position(|&b| b == b'\n')?;
        let line = &region[pos..lf];
        if line.is_empty() || line == b"\r" {
            return Some(lf + 1);
        }
        pos = lf + 1;
    }
    None
}

/// What the connector reads from a message's header (raw, unfolded, lossy UTF-8 values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The first `Return-Path:` value.
    pub return_path: Option<String>,
    /// The first `Sender:` value.
    pub sender: Option<String>,
    /// The first `From:` value.
    pub from: Option<String>,
    /// Every `Delivered-To:` value, in order (split each with [`addresses`]).
    pub delivered_to: Vec<String>,
    /// Every `X-Original-To:` value, in order (split each with [`addresses`]).
    pub x_original_to: Vec<String>,
    /// Every `To:` value, in order (split each with [`addresses`]).
    pub to: Vec<String>,
    /// Every `Cc:` value, in order (split each with [`addresses`]).
    pub cc: Vec<String>,
    /// The first `Message-ID:` value.
    pub message_id: Option<String>,
    /// The first `Subject:` value (not MIME-decoded).
    pub subject: Option<String>,
    /// The first `Date:` value (not parsed).
    pub date: Option<String>,
    /// True when any byte of the header (as far as it was scanned) is 0x80 or above.
    pub has_8bit: bool,
}

/// One line of `data` starting at `pos`: (start, end without its LF and a CR before it, next).
fn line_at(data: &[u8], pos: usize) -> (usize, usize, usize) {
    let (mut end, next) = match data[pos..].iter().position(|&b| b == b'\n') {
        Some(i) => (pos + i, pos + i + 1),
        None => (data.len(), data.len()),
    };
    if end > pos && data[end - 1] == b'\r' {
        end -= 1;
    }
    (pos, end, next)
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The header fields of a region: `(name, raw value)`, the raw value running from just
/// after the colon to the end of its last continuation line (inner line breaks kept).
/// Stops at the first empty line; lines that are not fields are skipped.
struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8], max: usize) -> Self {
        Self {
            data: &data[..data.len().min(max)],
            pos: 0,
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.data;
        while self.pos < data.len() {
            let (start, end, next) = line_at(data, self.pos);
            if start == end {
                // The blank line: the header ends here.
                self.pos = data.len();
                return None;
            }
            self.pos = next;
            let line = &data[start..end];
            if is_wsp(line[0]) {
                continue; // A continuation line without a field before it.
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue; // Not a field (an mbox "From " line, body text, garbage).
            };
            let mut name = &line[..colon];
            while let Some((&last, rest)) = name.split_last() {
                if !is_wsp(last) {
                    break;
                }
                name = rest;
            }
            if name.is_empty() || !name.iter().all(|b| (0x21..=0x7e).contains(b)) {
                continue;
            }
            let mut value_end = end;
            while self.pos < data.len() {
                let (s, e, n) = line_at(data, self.pos);
                if s == e || !is_wsp(data[s]) {
                    break;
                }
                value_end = e;
                self.pos = n;
            }
            return Some((name, &data[start + colon + 1..value_end]));
        }
        None
    }
}

/// Removes the line breaks of folding (each LF and a CR just before it), keeping the WSP.
fn unfold(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        let is_break = b == b'\n' || (b == b'\r' && raw.get(i + 1) == Some(&b'\n'));
        if !is_break {
            out.push(b);
        }
    }
    out
}

fn value_string(raw: &[u8]) -> String {
    let unfolded = unfold(raw);
    String::from_utf8_lossy(&unfolded)
        .trim_matches(|c| c == ' ' || c == '\t')
        .to_string()
}

/// Where [`parse_headers`] keeps a header field: the first occurrence only, or every one.
enum Field<'a> {
    One(&'a mut Option<String>),
    All(&'a mut Vec<String>),
}

/// The one of `fields` whose header name is `name` (case-insensitive), if any.
fn named<'a, const N: usize>(name: &[u8], fields: [(&str, Field<'a>); N]) -> Option<Field<'a>> {
    fields
        .into_iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
        .map(|(_, field)| field)
}

/// Parses the header fields (unfolded; first occurrence for single fields, all for lists; raw values, lossy UTF-8). `head` may include the body: stop at the header end or `max`.
pub fn parse_headers(head: &[u8], max: usize) -> HeaderInfo {
    let region = &head[..head.len().min(max)];
    let scanned = header_end(region, max).unwrap_or(region.len());
    let mut info = HeaderInfo {
        has_8bit: region[..scanned].iter().any(|&b| b >= 0x80),
        ..HeaderInfo::default()
    };
    for (name, raw) in Fields::new(region, max) {
        let field = named(
            name,
            [
                ("return-path", Field::One(&mut info.return_path)),
                ("sender", Field::One(&mut info.sender)),
                ("from", Field::One(&mut info.from)),
                ("message-id", Field::One(&mut info.message_id)),
                ("subject", Field::One(&mut info.subject)),
                ("date", Field::One(&mut info.date)),
                ("delivered-to", Field::All(&mut info.delivered_to)),
                ("x-original-to", Field::All(&mut info.x_original_to)),
                ("to", Field::All(&mut info.to)),
                ("cc", Field::All(&mut info.cc)),
            ],
        );
        match field {
            Some(Field::One(slot)) if slot.is_none() => *slot = Some(value_string(raw)),
            Some(Field::All(list)) => list.push(value_string(raw)),
            _ => {}
        }
    }
    info
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

enum Tok {
    Word(String),
    Angle(String),
    Comma,
    Colon,
    Semi,
}

/// Index just past the comment opening at `i` (nested, with quoted pairs), or the end.
fn skip_comment(cs: &[char], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < cs.len() {
        match cs[i] {
            '\\' => i += 1,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    cs.len()
}

/// Appends the quoted string (or domain literal) opening at `i`, verbatim, to `out`;
/// returns the index just past its closing `close`, or the end when unterminated.
fn read_delimited(cs: &[char], mut i: usize, close: char, out: &mut String) -> usize {
    out.push(cs[i]);
    i += 1;
    while i < cs.len() {
        let c = cs[i];
        out.push(c);
        if c == '\\' {
            if let Some(&n) = cs.get(i + 1) {
                out.push(n);
            }
            i += 2;
            continue;
        }
        i += 1;
        if c == close {
            return i;
        }
    }
    cs.len()
}

/// The content of the angle address opening at `i`, trimmed, comments and any obsolete
/// source route removed; and the index just past its `>` (or the end).
fn read_angle(cs: &[char], mut i: usize) -> (String, usize) {
    let mut content = String::new();
    i += 1;
    let mut end = cs.len();
    while i < cs.len() {
        match cs[i] {
            '>' => {
                end = i + 1;
                break;
            }
            '"' => i = read_delimited(cs, i, '"', &mut content),
            '[' => i = read_delimited(cs, i, ']', &mut content),
            '(' => i = skip_comment(cs, i),
            '<' => i += 1,
            c => {
                content.push(c);
                i += 1;
            }
        }
    }
    let trimmed = content.trim_matches(' ');
    // `<@relay.example,@b.example:user@host>`: keep only the mailbox (RFC 5322 obs-route).
    let mut addr = trimmed;
    if trimmed.starts_with('@') {
        let mut in_literal = false;
        for (k, c) in trimmed.char_indices() {
            match c {
                '[' => in_literal = true,
                ']' => in_literal = false,
                ':' if !in_literal => {
                    addr = trimmed[k + 1..].trim_matches(' ');
                    break;
                }
                _ => {}
            }
        }
    }
    (addr.to_string(), end)
}

fn lex(value: &str) -> Vec<Tok> {
    // Control characters (CR, LF, NUL, TAB, DEL, C1) are separators and never reach
    // an address.
    let cs: Vec<char> = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut toks = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, toks: &mut Vec<Tok>| {
        if !word.is_empty() {
            toks.push(Tok::Word(std::mem::take(word)));
        }
    };
    let mut i = 0;
    while i < cs.len() {
        match cs[i] {
            '"' => i = read_delimited(&cs, i, '"', &mut word),
            '[' => i = read_delimited(&cs, i, ']', &mut word),
            '(' => {
                flush(&mut word, &mut toks);
                i = skip_comment(&cs, i);
            }
            '<' => {
                flush(&mut word, &mut toks);
                let (content, next) = read_angle(&cs, i);
                toks.push(Tok::Angle(content));
                i = next;
            }
            c @ (',' | ':' | ';') => {
                flush(&mut word, &mut toks);
                toks.push(match c {
                    ',' => Tok::Comma,
                    ':' => Tok::Colon,
                    _ => Tok::Semi,
                });
                i += 1;
            }
            ' ' | '>' | ')' | ']' => {
                flush(&mut word, &mut toks);
                i += 1;
            }
            c => {
                word.push(c);
                i += 1;
            }
        }
    }
    flush(&mut word, &mut toks);
    toks
}

/// The best address among the words of an element that has no angle address.
fn pick(words: &mut Vec<String>) -> Option<String> {
    // No attempt to join obsolete `john . doe @ example . com` or words split by a control
    // character: guessing could turn garbage into a plausible wrong address.
    match words.len() {
        0 => None,
        1 => words.pop(),
        _ => match words.iter().position(|w| w.contains('@')) {
            Some(k) => Some(words.swap_remove(k)),
            // `John Smith`: no address at all; keep it whole so the caller rejects it
            // rather than repairing a display-name word into a plausible wrong sender.
            None => Some(words.join(" ")),
        },
    }
}

/// Every address of a list value, `""` for `<>`, in order.
fn parse_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut angle: Option<String> = None;
    let finish =
        |words: &mut Vec<String>, angle: &mut Option<String>, out: &mut Vec<String>| match angle
            .take()
        {
            Some(a) => {
                words.clear();
                out.push(a);
            }
            None => out.extend(pick(words)),
        };
    for tok in lex(value) {
        match tok {
            Tok::Word(w) if angle.is_none() => words.push(w),
            Tok::Word(_) => {}
            Tok::Angle(a) => {
                if angle.is_none() {
                    angle = Some(a);
                }
            }
            Tok::Comma | Tok::Semi => finish(&mut words, &mut angle, &mut out),
            // `Group name: a@b, c@d;`: the words before the colon are a display name.
            // Not when an address came first: `a@b junk: x` keeps `a@b`.
            Tok::Colon => {
                if angle.is_none() && !words.iter().any(|w| w.contains('@')) {
                    words.clear();
                }
            }
        }
    }
    finish(&mut words, &mut angle, &mut out);
    out
}

/// The first address of a header value: handles `Name <a@b>`, `"Doe, John" <a@b>`, `a@b (comment)`, bare `a@b`, `<a@b>`, `<>` (→ Some("") meaning null), groups `undisclosed-recipients:;` (→ None), leading/trailing spaces, and garbage (→ the best raw token, e.g. `user` or `bad..x@y`, so the caller can decide to repair or reject).
///
/// The result never contains a control character (they separate tokens); it is not
/// validated.
pub fn first_address(value: &str) -> Option<String> {
    parse_list(value).into_iter().next()
}

/// All addresses of a To/Cc/Delivered-To style value (comma-separated, quotes and angle brackets respected).
///
/// Group names are dropped, group members kept; a null `<>` is left out. Addresses are
/// not validated.
pub fn addresses(value: &str) -> Vec<String> {
    parse_list(value)
        .into_iter()
        .filter(|a| !a.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------
// Envelope sender
// ---------------------------------------------------------------------------

/// Where the envelope sender came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderSource {
    /// The first address of `Return-Path:`.
    ReturnPath,
    /// The first address of `Sender:`.
    Sender,
    /// The first address of `From:`.
    From,
    /// The configured `fallback_sender`.
    Fallback,
}

impl SenderSource {
    fn header(&self) -> &'static str {
        match self {
            Self::ReturnPath => "Return-Path",
            Self::Sender => "Sender",
            Self::From => "From",
            Self::Fallback => "fallback_sender",
        }
    }
}

/// A change made to the envelope sender found in the header, for the event that reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The address as found in the header (`""` when no header had one).
    pub original: String,
    /// Why and how it was changed, e.g. "no domain: appended default_domain".
    pub reason: String,
}

/// The `MAIL FROM` address chosen for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSender {
    /// The address without brackets; `""` is the null sender `<>`.
    pub address: String,
    /// Where it came from (`Fallback` when the configured fallback replaced it).
    pub source: SenderSource,
    /// Set when the address differs from the one found in the header.
    pub repair: Option<Repair>,
}

fn fallback_sender(fallback: &str, original: &str, reason: String) -> EnvelopeSender {
    EnvelopeSender {
        address: fallback.to_string(),
        source: SenderSource::Fallback,
        repair: Some(Repair {
            original: original.to_string(),
            reason,
        }),
    }
}

/// Design.md's rule: first address of Return-Path, else Sender, else From. `<>` in Return-Path is the null sender (a bounce) and is kept. A bare local part gets `@default_domain` when configured (repair). An address that is still unusable (invalid per Mailbox::parse, or missing domain without default_domain, or needs UTF-8 when `smtputf8` is false) falls back to `fallback` (a full address, or "" for the null sender) with a Repair saying why. With `repair = false` (the "sbs2008" profile, which reproduced the old connector's bug) the first found address is returned as is, unvalidated, no repair, and only a missing header uses the fallback.
///
/// A header whose value holds no address (empty, a comment, an empty group) counts as
/// missing. `<>` in Sender or From is not a null sender: it is an empty, unusable address.
/// `fallback` is used as given (configuration validates it).
pub fn envelope_sender(
    info: &HeaderInfo,
    default_domain: Option<&str>,
    fallback: &str,
    smtputf8: bool,
    repair: bool,
) -> EnvelopeSender {
    let found = [
        (&info.return_path, SenderSource::ReturnPath),
        (&info.sender, SenderSource::Sender),
        (&info.from, SenderSource::From),
    ]
    .into_iter()
    .find_map(|(value, source)| {
        value
            .as_deref()
            .and_then(first_address)
            .map(|addr| (addr, source))
    });
    let Some((addr, source)) = found else {
        return fallback_sender(
            fallback,
            "",
            "no sender header: used fallback_sender".to_string(),
        );
    };
    if !repair || (addr.is_empty() && source == SenderSource::ReturnPath) {
        return EnvelopeSender {
            address: addr,
            source,
            repair: None,
        };
    }
    let header = source.header();
    let utf8_refused = |m: &Mailbox| m.needs_utf8() && !smtputf8;
    let utf8_reason = || {
        format!("non-ASCII address in {header} needs SMTPUTF8, not offered: used fallback_sender")
    };
    match Mailbox::parse(&addr) {
        Ok(m) if utf8_refused(&m) => fallback_sender(fallback, &addr, utf8_reason()),
        Ok(_) => EnvelopeSender {
            address: addr,
            source,
            repair: None,
        },
        Err(AddressError::MissingDomain(_)) => {
            let domain = default_domain.map(str::trim).filter(|d| !d.is_empty());
            let Some(domain) = domain else {
                return fallback_sender(
                    fallback,
                    &addr,
                    format!("no domain in {header} and no default_domain: used fallback_sender"),
                );
            };
            let fixed = format!("{addr}@{domain}");
            match Mailbox::parse(&fixed) {
                Ok(m) if utf8_refused(&m) => fallback_sender(fallback, &addr, utf8_reason()),
                Ok(_) => EnvelopeSender {
                    address: fixed,
                    source,
                    repair: Some(Repair {
                        original: addr,
                        reason: "no domain: appended default_domain".to_string(),
                    }),
                },
                Err(e) => fallback_sender(
                    fallback,
                    &addr,
                    format!(
                        "no domain in {header}, and appending default_domain gave an invalid address ({e}): used fallback_sender"
                    ),
                ),
            }
        }
        Err(AddressError::Empty) => fallback_sender(
            fallback,
            &addr,
            format!("empty address in {header}: used fallback_sender"),
        ),
        Err(AddressError::Invalid { reason, .. }) => fallback_sender(
            fallback,
            &addr,
            format!("invalid address in {header} ({reason}): used fallback_sender"),
        ),
    }
}

// ---------------------------------------------------------------------------
// Trace header and dates
// ---------------------------------------------------------------------------

/// Visible characters only (no whitespace, no control characters), minus `forbidden`, at most `max`.
fn clean(s: &str, forbidden: &str, max: usize) -> String {
    s.chars()
        .filter(|&c| !c.is_control() && !c.is_whitespace() && !forbidden.contains(c))
        .take(max)
        .collect()
}

/// A `Received:` trace header line (with CRLF, folded below 78 chars where possible): `Received: from <pop3_host> (<pop3_host>) by <helo> (Popbridge) with POP3 id <uid>\r\n\tfor <rcpt>; <rfc2822 date>\r\n`. Values are sanitised (no CR/LF/control chars; uid limited to 70 chars of 0x21-0x7E).
///
/// Whitespace and the specials `()<>;"\` are removed from every value too (they would
/// break the header's structure); host and helo are capped at 255 characters, rcpt at
/// 320. An empty host or helo becomes `unknown`, an empty uid drops the `id` clause, an
/// empty rcpt the `for` clause. The `for` clause always starts a new line.
pub fn received_header(
    pop3_host: &str,
    helo: &str,
    uid: &str,
    rcpt: &str,
    now: SystemTime,
) -> String {
    let or_unknown = |s: String| if s.is_empty() { "unknown".into() } else { s };
    const SPECIALS: &str = "()<>;\"\\";
    let host = or_unknown(clean(pop3_host, SPECIALS, 255));
    let helo = or_unknown(clean(helo, SPECIALS, 255));
    let uid: String = uid
        .chars()
        .filter(|&c| ('\x21'..='\x7e').contains(&c) && !SPECIALS.contains(c))
        .take(70)
        .collect();
    let rcpt = clean(rcpt, SPECIALS, 320);

    // (unit, fold before it)
    let mut units: Vec<(String, bool)> = vec![
        (format!("from {host}"), false),
        (format!("({host})"), false),
        (format!("by {helo}"), false),
        ("(Popbridge)".into(), false),
        ("with POP3".into(), false),
    ];
    if !uid.is_empty() {
        units.push((format!("id {uid}"), false));
    }
    if rcpt.is_empty() {
        if let Some(last) = units.last_mut() {
            last.0.push(';');
        }
    } else {
        units.push((format!("for <{rcpt}>;"), true));
    }
    units.push((rfc2822_date(now), false));

    let mut out = String::from("Received:");
    let mut line_len = out.len();
    for (k, (unit, fold)) in units.iter().enumerate() {
        if k > 0 && (*fold || line_len + 1 + unit.len() > 78) {
            out.push_str("\r\n\t");
            line_len = 1;
        } else {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(unit);
        line_len += unit.len();
    }
    out.push_str("\r\n");
    out
}

/// RFC 5322 date in UTC: `Sun, 22 Nov 2026 02:25:00 +0000` (civil-from-days algorithm; no chrono).
pub fn rfc2822_date(t: SystemTime) -> String {
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            // Floor towards the past: 0.5 s before the epoch is 23:59:59.
            (-s).saturating_sub(i64::from(d.subsec_nanos() > 0))
        }
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[(days + 4).rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1).clamp(0, 11) as usize];
    format!(
        "{weekday}, {day:02} {month_name} {year:04} {:02}:{:02}:{:02} +0000",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------
// Naming a message for people
// ---------------------------------------------------------------------------

/// The most characters [`Named`] keeps of each field; a longer one is cut and ends with `…`.
pub const NAME_MAX: usize = 200;

/// Raw octets of a header value looked at when naming a message (enough for
/// [`NAME_MAX`] characters even when every one is Q-encoded in four octets).
const NAME_RAW_MAX: usize = 8 * 1024;

/// Who sent a message and what it is, for events and summaries: its `From`, `Subject`,
/// `Date` and `Message-ID` as a person reads them. Simple RFC 2047 encoded-words
/// (UTF-8, US-ASCII, ISO-8859-1; `B` or `Q`) are decoded, control characters and the
/// characters that reorder text (bidirectional overrides, zero-width marks) are escaped as
/// `\u{..}` (a backslash as `\\`), and each field is cut to [`NAME_MAX`] characters. A
/// field the header does not have (or a header never seen) is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Named {
    /// The `From:` value (display name and address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The `Subject:` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The `Date:` value, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// The `Message-ID:` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

impl Named {
    /// The fields of a parsed header.
    pub fn from_info(info: &HeaderInfo) -> Self {
        let field = |v: &Option<String>| v.as_deref().and_then(for_people);
        Self {
            from: field(&info.from),
            subject: field(&info.subject),
            date: field(&info.date),
            message_id: field(&info.message_id),
        }
    }

    /// The fields of a raw header (it may be followed by the body; only the header is read).
    pub fn from_head(head: &[u8]) -> Self {
        Self::from_info(&parse_headers(head, DEFAULT_HEADER_MAX))
    }

    /// True when no field is known.
    pub fn is_empty(&self) -> bool {
        self.from.is_none()
            && self.subject.is_none()
            && self.date.is_none()
            && self.message_id.is_none()
    }

    /// One phrase for people: `from Alice <alice@example.net> "Scans" (2026-12-01)`, the
    /// Message-ID only when neither sender nor subject is known; empty when nothing is.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = &self.from {
            parts.push(format!("from {f}"));
        }
        if let Some(s) = &self.subject {
            parts.push(format!("\"{s}\""));
        }
        if parts.is_empty() {
            if let Some(id) = &self.message_id {
                parts.push(format!("Message-ID {id}"));
            }
        }
        if let Some(d) = &self.date {
            parts.push(format!("({})", short_date(d).unwrap_or_else(|| d.clone())));
        }
        parts.join(" ")
    }
}

/// A header value as [`Named`] keeps it: decoded, escaped, cut; `None` when empty.
pub fn for_people(value: &str) -> Option<String> {
    let mut end = value.len().min(NAME_RAW_MAX);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let decoded = decode_words(&value[..end]);
    let mut out = String::new();
    let mut count = 0;
    let mut chars = decoded.trim().chars().peekable();
    while let Some(c) = chars.next() {
        let unit = escape_char(c);
        let len = unit.chars().count();
        // Room is kept for the ellipsis unless this is the last character.
        let room = if chars.peek().is_none() {
            NAME_MAX
        } else {
            NAME_MAX - 1
        };
        if count + len > room {
            out.push('…');
            break;
        }
        out.push_str(&unit);
        count += len;
    }
    (!out.is_empty()).then_some(out)
}

/// One character as shown: itself, a space for a tab, or an escape for a control
/// character, a character that reorders or hides text, and the backslash.
fn escape_char(c: char) -> std::borrow::Cow<'static, str> {
    let reorders = matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
    match c {
        '\t' => " ".into(),
        '\\' => "\\\\".into(),
        c if c.is_control() || reorders => format!("\\u{{{:x}}}", c as u32).into(),
        c => c.to_string().into(),
    }
}

/// Decodes the RFC 2047 encoded-words of `value` whose charset is UTF-8, US-ASCII or
/// ISO-8859-1 (others, and malformed ones, stay as written); the white space between two
/// adjacent encoded-words goes.
fn decode_words(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    // The white space seen since the last encoded-word (dropped if another follows).
    let mut after_word: Option<String> = None;
    while !rest.is_empty() {
        if let Some((text, used)) = rest.strip_prefix("=?").and_then(encoded_word) {
            after_word = Some(String::new());
            out.push_str(&text);
            rest = &rest[2 + used..];
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        rest = &rest[c.len_utf8()..];
        match &mut after_word {
            Some(ws) if c == ' ' || c == '\t' => ws.push(c),
            Some(ws) => {
                out.push_str(ws);
                out.push(c);
                after_word = None;
            }
            None => out.push(c),
        }
    }
    if let Some(ws) = after_word {
        out.push_str(&ws);
    }
    out
}

/// An encoded-word after its `=?`: `charset?B|Q?text?=`. Its text and the octets it
/// took (after the `=?`), or `None` when malformed or of another charset.
fn encoded_word(s: &str) -> Option<(String, usize)> {
    use base64::Engine;
    let mut parts = s.splitn(3, '?');
    let charset = parts.next()?;
    let encoding = parts.next()?;
    let tail = parts.next()?;
    let text_len = tail.find("?=")?;
    let text = &tail[..text_len];
    if text.contains(|c: char| c == ' ' || c.is_control()) || charset.len() > 40 {
        return None;
    }
    let used = charset.len() + 1 + encoding.len() + 1 + text_len + 2;
    // RFC 2231 adds a language after `*`.
    let charset = charset.split('*').next().unwrap_or_default();
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()?,
        "Q" | "q" => {
            let raw = text.as_bytes();
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let hex = raw.get(i + 1..i + 3)?;
                        let hex = std::str::from_utf8(hex).ok()?;
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 2;
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    let text = if charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii")
    {
        String::from_utf8_lossy(&bytes).into_owned()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") || charset.eq_ignore_ascii_case("latin1") {
        bytes.iter().map(|&b| char::from(b)).collect()
    } else {
        return None;
    };
    Some((text, used))
}

/// `2026-12-01` from an RFC 5322 date (`Tue, 1 Dec 2026 10:00:00 +0000`), when it is one.
pub fn short_date(date: &str) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let rest = match date.split_once(',') {
        Some((_, r)) => r,
        None => date,
    };
    let mut words = rest.split_whitespace();
    let day: u32 = words.next()?.parse().ok()?;
    let month = words.next()?.to_ascii_lowercase();
    let month = MONTHS.iter().position(|m| month.starts_with(m))? + 1;
    let year = words.next()?;
    if !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: u32 = match (year.len(), year.parse::<u32>().ok()?) {
        (4, y) => y,
        (2, y) if y < 50 => 2000 + y,
        (2 | 3, y) => 1900 + y,
        _ => return None,
    };
    if !(1..=31).contains(&day) {
        return None;
    }
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

// ---------------------------------------------------------------------------
// De-duplication digest
// ---------------------------------------------------------------------------

/// Unfolded, runs of SP/HT collapsed to one SP, trimmed.
fn normalise(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for b in unfold(raw) {
        if is_wsp(b) {
            if out.last().is_some_and(|&l| l != b' ') {
                out.push(b' ');
            }
        } else {
            out.push(b);
        }
    }
    if out.last() == Some(&b' ') {
        out.pop();
    }
    out
}

/// The de-duplication key for a server without UIDL: `sha256:` + hex of SHA-256 over the size and the header fields Message-ID, Date, From, To, Subject and the first Received (normalised: unfolded, trimmed, lower-cased names), so the same message gives the same key every pass, and different messages (even with the same Message-ID but different size) differ.
///
/// Each field is its first occurrence, with runs of spaces and tabs collapsed, hashed as
/// raw bytes with a length prefix; an absent field differs from an empty one. The input
/// is versioned: changing it would change every stored key and redeliver mail.
pub fn header_digest(head: &[u8], size: u64, max: usize) -> String {
    const NAMES: [&str; 6] = ["message-id", "date", "from", "to", "subject", "received"];
    let mut found: [Option<&[u8]>; 6] = [None; 6];
    for (name, raw) in Fields::new(head, max) {
        for (slot, wanted) in found.iter_mut().zip(NAMES) {
            if slot.is_none() && name.eq_ignore_ascii_case(wanted.as_bytes()) {
                *slot = Some(raw);
            }
        }
    }
    let mut h = Sha256::new();
    h.update(b"popbridge header digest v1\0");
    h.update(size.to_be_bytes());
    for (slot, name) in found.iter().zip(NAMES) {
        h.update(name.as_bytes());
        match slot {
            None => h.update([0u8]),
            Some(raw) => {
                let v = normalise(raw);
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
            }
        }
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MAX: usize = DEFAULT_HEADER_MAX;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// The address and source of `e`, to compare at once.
    fn chosen(e: &EnvelopeSender) -> (&str, SenderSource) {
        (e.address.as_str(), e.source.clone())
    }

    fn info(rp: Option<&str>, sender: Option<&str>, from: Option<&str>) -> HeaderInfo {
        HeaderInfo {
            return_path: rp.map(Into::into),
            sender: sender.map(Into::into),
            from: from.map(Into::into),
            ..HeaderInfo::default()
        }
    }

    fn sender(i: &HeaderInfo, dd: Option<&str>, utf8: bool) -> EnvelopeSender {
        envelope_sender(i, dd, "fallback@local.example", utf8, true)
    }

    // ----- envelope_sender -------------------------------------------------

    #[test]
    fn return_path_is_preferred_over_sender_over_from() {
        let all = info(
            Some("<rp@a.example>"),
            Some("s@b.example"),
            Some("f@c.example"),
        );
        let e = sender(&all, None, false);
        assert_eq!(
            e,
            EnvelopeSender {
                address: "rp@a.example".into(),
                source: SenderSource::ReturnPath,
                repair: None
            }
        );
        let e = sender(
            &info(None, Some("S <s@b.example>"), Some("f@c.example")),
            None,
            false,
        );
        assert_eq!(chosen(&e), ("s@b.example", SenderSource::Sender));
        let e = sender(&info(None, None, Some("\"F\" <f@c.example>")), None, false);
        assert_eq!(chosen(&e), ("f@c.example", SenderSource::From));
        assert_eq!(e.repair, None);
    }

    #[test]
    fn a_header_without_an_address_counts_as_missing() {
        let e = sender(
            &info(Some(""), Some("(nobody)"), Some("f@c.example")),
            None,
            false,
        );
        assert_eq!(chosen(&e), ("f@c.example", SenderSource::From));
    }

    #[test]
    fn null_return_path_is_kept() {
        let e = sender(
            &info(Some("<>"), None, Some("f@c.example")),
            Some("d.example"),
            false,
        );
        assert_eq!(
            e,
            EnvelopeSender {
                address: String::new(),
                source: SenderSource::ReturnPath,
                repair: None
            }
        );
        let e = sender(&info(Some("  < >  "), None, None), None, false);
        assert_eq!((e.address.as_str(), e.repair), ("", None));
    }

    /// `e` is the fallback sender, repaired from `original`: the repair's reason.
    fn fell_back(e: EnvelopeSender, original: &str) -> String {
        assert_eq!(e.address, "fallback@local.example");
        assert_eq!(e.source, SenderSource::Fallback);
        let r = e.repair.unwrap();
        assert_eq!(r.original, original);
        r.reason
    }

    #[test]
    fn null_in_from_is_not_a_null_sender() {
        let e = sender(&info(None, None, Some("<>")), None, false);
        let reason = fell_back(e, "");
        assert!(reason.starts_with("empty address in From"), "{reason}");
    }

    #[test]
    fn bare_local_part_is_repaired_with_default_domain() {
        let e = sender(
            &info(Some("<user>"), None, None),
            Some("corp.example"),
            false,
        );
        assert_eq!(
            e,
            EnvelopeSender {
                address: "user@corp.example".into(),
                source: SenderSource::ReturnPath,
                repair: Some(Repair {
                    original: "user".into(),
                    reason: "no domain: appended default_domain".into()
                })
            }
        );
        let e = sender(
            &info(None, None, Some("MAILER-DAEMON")),
            Some(" corp.example "),
            false,
        );
        assert_eq!(e.address, "MAILER-DAEMON@corp.example");
        assert_eq!(e.source, SenderSource::From);
    }

    #[test]
    fn missing_domain_without_default_domain_falls_back() {
        for dd in [None, Some(""), Some("  ")] {
            let e = sender(&info(Some("user"), None, None), dd, false);
            assert_eq!(
                fell_back(e, "user"),
                "no domain in Return-Path and no default_domain: used fallback_sender"
            );
        }
    }

    #[test]
    fn a_bad_default_domain_falls_back() {
        let e = sender(&info(Some("user"), None, None), Some("bad..domain"), false);
        assert_eq!(e.source, SenderSource::Fallback);
        let r = e.repair.unwrap();
        assert!(
            r.reason.contains("appending default_domain"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn invalid_address_falls_back_with_reason() {
        let e = sender(
            &info(Some("<bad..x@y>"), None, None),
            Some("d.example"),
            false,
        );
        assert_eq!(
            fell_back(e, "bad..x@y"),
            "invalid address in Return-Path (misplaced dot in local part): used fallback_sender"
        );
        // The null sender as the fallback.
        let e = envelope_sender(&info(None, None, Some("<a b@c>")), None, "", false, true);
        assert_eq!(chosen(&e), ("", SenderSource::Fallback));
        assert!(e
            .repair
            .unwrap()
            .reason
            .starts_with("invalid address in From"));
    }

    #[test]
    fn utf8_address_needs_smtputf8() {
        let i = info(None, None, Some("Jörg <jörg@example.de>"));
        let reason = fell_back(sender(&i, None, false), "jörg@example.de");
        assert!(reason.contains("SMTPUTF8"), "{reason}");

        let e = sender(&i, None, true);
        assert_eq!(
            e,
            EnvelopeSender {
                address: "jörg@example.de".into(),
                source: SenderSource::From,
                repair: None
            }
        );
        // After a default_domain repair too.
        let e = sender(&info(Some("jörg"), None, None), Some("d.example"), false);
        assert_eq!(e.source, SenderSource::Fallback);
        let e = sender(&info(Some("jörg"), None, None), Some("d.example"), true);
        assert_eq!(e.address, "jörg@d.example");
    }

    #[test]
    fn no_headers_at_all_uses_the_fallback() {
        let expect = EnvelopeSender {
            address: "fallback@local.example".into(),
            source: SenderSource::Fallback,
            repair: Some(Repair {
                original: String::new(),
                reason: "no sender header: used fallback_sender".into(),
            }),
        };
        assert_eq!(
            sender(&HeaderInfo::default(), Some("d.example"), true),
            expect
        );
        let none = envelope_sender(
            &HeaderInfo::default(),
            None,
            "fallback@local.example",
            true,
            false,
        );
        assert_eq!(
            none, expect,
            "a missing header uses the fallback even without repair"
        );
        let parsed = parse_headers(b"", MAX);
        assert_eq!(sender(&parsed, None, false), expect);
    }

    #[test]
    fn without_repair_the_raw_first_address_is_returned() {
        for (rp, want) in [
            ("user", "user"),
            ("<bad..x@y>", "bad..x@y"),
            ("jörg@x.de", "jörg@x.de"),
        ] {
            let e = envelope_sender(
                &info(Some(rp), None, Some("f@c.example")),
                Some("d.example"),
                "fb@x.example",
                false,
                false,
            );
            assert_eq!(
                e,
                EnvelopeSender {
                    address: want.into(),
                    source: SenderSource::ReturnPath,
                    repair: None
                },
                "{rp}"
            );
        }
        let e = envelope_sender(
            &info(None, None, Some("John Smith")),
            None,
            "fb@x.example",
            false,
            false,
        );
        assert_eq!(chosen(&e), ("John Smith", SenderSource::From));
    }

    #[test]
    fn sender_from_parsed_headers() {
        let msg = b"Received: by x\r\nFrom: Someone <someone@example.com>\r\nreturn-path:\r\n <bounce@lists.example>\r\n\r\nbody";
        let e = sender(&parse_headers(msg, MAX), None, false);
        assert_eq!(e.address, "bounce@lists.example");
        assert_eq!(e.source, SenderSource::ReturnPath);
    }

    // ----- first_address / addresses ---------------------------------------

    #[test]
    fn first_address_forms() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Name <a@b.example>", Some("a@b.example")),
            ("\"Doe, John\" <a@b.example>", Some("a@b.example")),
            ("\"Doe <x@y>, John\" <a@b.example>", Some("a@b.example")),
            ("\"Doe \\\" <x@y>\" <a@b.example>", Some("a@b.example")),
            ("a@b.example (comment)", Some("a@b.example")),
            ("(comment <x@y>) a@b.example", Some("a@b.example")),
            ("a@b.example (nested (comment) <x@y>)", Some("a@b.example")),
            ("a@b.example", Some("a@b.example")),
            ("<a@b.example>", Some("a@b.example")),
            ("   <a@b.example>   ", Some("a@b.example")),
            ("  a@b.example\t", Some("a@b.example")),
            ("< a@b.example >", Some("a@b.example")),
            ("<>", Some("")),
            ("< >", Some("")),
            ("undisclosed-recipients:;", None),
            ("undisclosed-recipients: ;", None),
            ("Team: x@a.example, y@b.example;", Some("x@a.example")),
            ("", None),
            ("   ", None),
            ("(only a comment)", None),
            ("user", Some("user")),
            ("bad..x@y", Some("bad..x@y")),
            ("<bad..x@y>", Some("bad..x@y")),
            ("John Smith", Some("John Smith")),
            ("John x@y.example", Some("x@y.example")),
            ("john . doe @ example . com", Some("@")),
            ("a@b.example junk: x", Some("a@b.example")),
            (
                "<@relay.example,@r2.example:a@b.example>",
                Some("a@b.example"),
            ),
            ("a@[IPv6:::1]", Some("a@[IPv6:::1]")),
            ("Name <a@b.example", Some("a@b.example")),
            ("\"unterminated <a@b>", Some("\"unterminated <a@b>")),
            ("=?utf-8?q?J=C3=B6rg?= <j@x.example>", Some("j@x.example")),
            ("a@b.example, c@d.example", Some("a@b.example")),
            ("\"odd\"@example.com", Some("\"odd\"@example.com")),
            ("mailto:a@b.example", Some("a@b.example")),
            ("a\r\n@b\0.example", Some("@b")),
        ];
        for (input, want) in cases {
            assert_eq!(first_address(input).as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn first_address_never_returns_control_characters() {
        let got = first_address("<a\rb\n@c\0d>").unwrap();
        assert!(!got.chars().any(char::is_control), "{got:?}");
        let got = first_address("\"a\r\nb\"@c").unwrap();
        assert!(!got.chars().any(char::is_control), "{got:?}");
    }

    #[test]
    fn addresses_split_respecting_quotes_and_brackets() {
        assert_eq!(
            addresses(
                "\"Doe, John\" <j@x.example>, Jane <jane@y.example>,k@z.example (K, the third)"
            ),
            ["j@x.example", "jane@y.example", "k@z.example"]
        );
        assert_eq!(
            addresses("\"a,b\" <\"q,r\"@x.example>, <s@y.example>"),
            ["\"q,r\"@x.example", "s@y.example"]
        );
        assert_eq!(
            addresses("Team: a@x.example, \"B, b\" <b@x.example>; c@y.example"),
            ["a@x.example", "b@x.example", "c@y.example"]
        );
        assert_eq!(addresses("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(addresses("<>, a@x.example,, ,"), ["a@x.example"]);
        assert_eq!(addresses(""), Vec::<String>::new());
        assert_eq!(addresses("a@[1.2.3.4], b@x"), ["a@[1.2.3.4]", "b@x"]);
    }

    // ----- parse_headers / header_end ---------------------------------------

    #[test]
    fn parses_fields_case_insensitively_and_unfolded() {
        let msg = b"Return-Path: <rp@x.example>\r\n\
FROM: A <a@x.example>\r\n\
sender: s@x.example\r\n\
To: one@x.example,\r\n\t two@x.example\r\n\
to: three@x.example\r\n\
CC: c@x.example\r\n\
Delivered-To: d1@x.example\r\n\
delivered-to: d2@x.example\r\n\
X-Original-To: o@x.example\r\n\
Subject: a long\r\n  folded\r\n\tsubject  \r\n\
Message-ID: <id@x.example>\r\n\
Date: Tue, 29 Feb 2000 00:00:00 +0000\r\n\
Subject: second subject ignored\r\n\
From: second@from.example\r\n\
\r\n\
To: body@not.header\r\n";
        let h = parse_headers(msg, MAX);
        assert_eq!(
            h,
            HeaderInfo {
                return_path: Some("<rp@x.example>".into()),
                sender: Some("s@x.example".into()),
                from: Some("A <a@x.example>".into()),
                delivered_to: vec!["d1@x.example".into(), "d2@x.example".into()],
                x_original_to: vec!["o@x.example".into()],
                to: vec![
                    "one@x.example,\t two@x.example".into(),
                    "three@x.example".into()
                ],
                cc: vec!["c@x.example".into()],
                message_id: Some("<id@x.example>".into()),
                subject: Some("a long  folded\tsubject".into()),
                date: Some("Tue, 29 Feb 2000 00:00:00 +0000".into()),
                has_8bit: false,
            }
        );
        let tos: Vec<String> = h.to.iter().flat_map(|v| addresses(v)).collect();
        assert_eq!(tos, ["one@x.example", "two@x.example", "three@x.example"]);
    }

    #[test]
    fn tolerates_bare_lf_bare_cr_nul_and_odd_names() {
        let msg = b"From user@x Mon Jan  1 00:00:00 2000\n\
 orphan continuation\n\
Subject : spaced name\n\
From:\ta@x.example\n\
Bad Name: ignored\n\
no colon here\n\
To: t@x\0.example\rCc: not-a-new-line\n\
X-Null: \0\0\0\n\
\n\
Cc: body@x\n";
        let h = parse_headers(msg, MAX);
        assert_eq!(h.subject.as_deref(), Some("spaced name"));
        assert_eq!(h.from.as_deref(), Some("a@x.example"));
        assert_eq!(h.to, ["t@x\0.example\rCc: not-a-new-line"]);
        assert!(h.cc.is_empty());
        assert!(!h.has_8bit);
        assert_eq!(first_address(&h.to[0]).as_deref(), Some("t@x"));
    }

    #[test]
    fn invalid_utf8_and_8bit() {
        let msg = b"Subject: caf\xc3\xa9 \xff\xfe end\r\nFrom: a@x.example\r\n\r\n";
        let h = parse_headers(msg, MAX);
        assert_eq!(h.subject.as_deref(), Some("café \u{fffd}\u{fffd} end"));
        assert!(h.has_8bit);
        // 8-bit only in the body does not count.
        let h = parse_headers(b"Subject: plain\r\n\r\nbody \xff\r\n", MAX);
        assert!(!h.has_8bit);
        // 8-bit in a skipped, non-field line does.
        let h = parse_headers(b"\xff garbage\nSubject: x\n\n", MAX);
        assert!(h.has_8bit);
        assert_eq!(h.subject.as_deref(), Some("x"));
    }

    #[test]
    fn long_lines_no_separator_empty_and_limit() {
        let long = "x".repeat(5000);
        let msg = format!("Subject: {long}\r\nFrom: a@x.example\r\n\r\nbody");
        let h = parse_headers(msg.as_bytes(), MAX);
        assert_eq!(h.subject.as_deref(), Some(long.as_str()));
        assert_eq!(h.from.as_deref(), Some("a@x.example"));

        // No blank line: everything up to the limit is header.
        let h = parse_headers(b"From: a@x.example\r\nTo: b@x.example", MAX);
        assert_eq!(h.from.as_deref(), Some("a@x.example"));
        assert_eq!(h.to, ["b@x.example"]);

        assert_eq!(parse_headers(b"", MAX), HeaderInfo::default());
        assert_eq!(parse_headers(b"\r\n\r\n", MAX), HeaderInfo::default());
        assert_eq!(
            parse_headers(b"\r\nFrom: body@x\r\n", MAX),
            HeaderInfo::default()
        );

        // The limit cuts the scan, even in the middle of a field.
        let msg = b"From: a@x.example\r\nSubject: abcdef\r\nTo: t@x\r\n\r\n";
        let h = parse_headers(msg, 31);
        assert_eq!(h.from.as_deref(), Some("a@x.example"));
        assert_eq!(h.subject.as_deref(), Some("abc"));
        assert!(h.to.is_empty());
        assert_eq!(parse_headers(msg, 0), HeaderInfo::default());
        let h = parse_headers(b"Subject: x\r\n\r\n\xff", 10_000);
        assert!(!h.has_8bit);
        let h = parse_headers(b"Subject: x\xff", 10);
        assert!(!h.has_8bit, "the 8-bit byte is past the limit");
    }

    #[test]
    fn header_end_cases() {
        assert_eq!(header_end(b"A: b\r\nC: d\r\n\r\nbody", MAX), Some(14));
        assert_eq!(header_end(b"A: b\nC: d\n\nbody", MAX), Some(11));
        assert_eq!(header_end(b"A: b\r\n\nbody", MAX), Some(7));
        assert_eq!(header_end(b"A: b\n\r\nbody", MAX), Some(7));
        assert_eq!(
            header_end(b"A: b\n\n\r\n\r\n", MAX),
            Some(6),
            "the first one wins"
        );
        assert_eq!(header_end(b"\r\nbody", MAX), Some(2));
        assert_eq!(header_end(b"\nbody", MAX), Some(1));
        assert_eq!(header_end(b"A: b\r\nC: d\r\n", MAX), None);
        assert_eq!(
            header_end(b"A: b\r\rC: d\r\r", MAX),
            None,
            "bare CR ends no line"
        );
        assert_eq!(
            header_end(b"A: b\r\n \r\nC: d", MAX),
            None,
            "whitespace is not blank"
        );
        assert_eq!(header_end(b"", MAX), None);
        let msg = b"A: b\r\nC: d\r\n\r\nbody";
        assert_eq!(header_end(msg, 14), Some(14));
        assert_eq!(header_end(msg, 13), None);
        assert_eq!(header_end(msg, 0), None);
    }

    #[test]
    fn worst_case_inputs_at_the_limit() {
        // Each is a full 256 KiB scan; a quadratic path would make this test crawl.
        for unit in [
            &b"<"[..],
            b"(",
            b"\"",
            b"a,",
            b"To: x\n",
            b" \r\n",
            b"x:\n",
            b"\r",
        ] {
            let mut msg = b"To: ".to_vec();
            while msg.len() < MAX + 1000 {
                msg.extend_from_slice(unit);
            }
            let h = parse_headers(&msg, MAX);
            for v in &h.to {
                assert!(v.len() <= MAX);
                let _ = addresses(v);
                let _ = first_address(v);
            }
            let _ = envelope_sender(&h, Some("d.example"), "", false, true);
            let _ = header_digest(&msg, msg.len() as u64, MAX);
        }
    }

    // ----- dates and Received ------------------------------------------------

    #[test]
    fn rfc2822_dates() {
        for (t, expected) in [
            (at(0), "Thu, 01 Jan 1970 00:00:00 +0000"),
            (at(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000"),
            (at(1_795_314_300), "Sun, 22 Nov 2026 02:25:00 +0000"),
            (at(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000"),
            (at(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 +0000"),
            (at(253_402_300_799), "Fri, 31 Dec 9999 23:59:59 +0000"),
            (
                UNIX_EPOCH - Duration::from_secs(1),
                "Wed, 31 Dec 1969 23:59:59 +0000",
            ),
            (
                UNIX_EPOCH - Duration::from_millis(500),
                "Wed, 31 Dec 1969 23:59:59 +0000",
            ),
            (
                at(1_795_314_300) + Duration::from_millis(999),
                "Sun, 22 Nov 2026 02:25:00 +0000",
            ),
        ] {
            assert_eq!(rfc2822_date(t), expected, "{t:?}");
        }
    }

    #[test]
    fn received_header_exact_bytes() {
        let t = at(1_795_314_300);
        assert_eq!(
            received_header(
                "pop.isp.example",
                "mx.corp.example",
                "UID42",
                "user@corp.example",
                t
            ),
            "Received: from pop.isp.example (pop.isp.example) by mx.corp.example\r\n\
             \t(Popbridge) with POP3 id UID42\r\n\
             \tfor <user@corp.example>; Sun, 22 Nov 2026 02:25:00 +0000\r\n"
        );
        assert_eq!(
            received_header("pop.isp", "mx", "1", "u@c", t),
            "Received: from pop.isp (pop.isp) by mx (Popbridge) with POP3 id 1\r\n\
             \tfor <u@c>; Sun, 22 Nov 2026 02:25:00 +0000\r\n"
        );
        let long_rcpt = format!("{}@corp.example", "r".repeat(50));
        assert_eq!(
            received_header("pop.isp", "mx", "1", &long_rcpt, t),
            format!(
                "Received: from pop.isp (pop.isp) by mx (Popbridge) with POP3 id 1\r\n\
                 \tfor <{long_rcpt}>;\r\n\
                 \tSun, 22 Nov 2026 02:25:00 +0000\r\n"
            )
        );
        assert_eq!(
            received_header("", "", "", "", t),
            "Received: from unknown (unknown) by unknown (Popbridge) with POP3;\r\n\
             \tSun, 22 Nov 2026 02:25:00 +0000\r\n"
        );
    }

    fn assert_well_formed(h: &str) {
        assert!(h.starts_with("Received: from "), "{h:?}");
        assert!(h.ends_with(" +0000\r\n"), "{h:?}");
        let body = &h[..h.len() - 2];
        for (k, line) in body.split("\r\n").enumerate() {
            assert!(!line.contains(['\r', '\n', '\0']), "{h:?}");
            assert!(!line.chars().any(|c| c.is_control() && c != '\t'), "{h:?}");
            if k > 0 {
                assert!(line.starts_with('\t') && line.len() > 1, "{h:?}");
            }
        }
        assert_eq!(h.matches(';').count(), 1, "{h:?}");
    }

    #[test]
    fn received_header_sanitises_values() {
        let t = at(0);
        let h = received_header(
            "pop.isp\r\nBcc: evil@x",
            "mx\0(x)",
            "id\r\n with space\u{e9}\x7f",
            "u@c>\r\n\r\nDATA; x",
            t,
        );
        assert_eq!(
            h,
            "Received: from pop.ispBcc:evil@x (pop.ispBcc:evil@x) by mxx (Popbridge)\r\n\
             \twith POP3 id idwithspace\r\n\
             \tfor <u@cDATAx>; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        assert_well_formed(&h);
        let h = received_header("h", "m", &"u".repeat(200), "r@x", t);
        assert!(h.contains(&format!("id {}\r\n", "u".repeat(70))), "{h:?}");
        assert_well_formed(&h);
        let h = received_header(
            &"h".repeat(1000),
            &"m".repeat(1000),
            "1",
            &"r".repeat(1000),
            t,
        );
        assert!(
            h.contains(&"h".repeat(255)) && !h.contains(&"h".repeat(256)),
            "{h:?}"
        );
        assert!(
            !h.contains(&"m".repeat(256)) && !h.contains(&"r".repeat(321)),
            "{h:?}"
        );
        assert_well_formed(&h);
    }

    // ----- header_digest -------------------------------------------------------

    #[test]
    fn header_digest_is_stable_and_size_sensitive() {
        let msg = b"Received: from a by b; Tue, 29 Feb 2000 00:00:00 +0000\r\n\
Received: from c by d\r\n\
Message-ID: <id@x.example>\r\nDate: Tue, 29 Feb 2000 00:00:00 +0000\r\n\
From: a@x.example\r\nTo: b@x.example\r\nSubject: hello\r\n\r\nbody";
        let d = header_digest(msg, 1234, MAX);
        assert!(d.starts_with("sha256:") && d.len() == 7 + 64, "{d}");
        assert!(d[7..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(d, header_digest(msg, 1234, MAX), "stable");
        assert_ne!(d, header_digest(msg, 1235, MAX), "size-sensitive");

        // Same fields, differently folded, other line endings, other field order, a
        // changed body, a second Received and unrelated fields (Status:) added: same key.
        let refolded = b"subject:   hello \n\
X-UIDL: abc\nStatus: RO\n\
Received: from a by b;\n\t Tue, 29 Feb 2000 00:00:00 +0000\nreceived: from e\n\
message-id: <id@x.example>\nDATE: Tue, 29 Feb 2000\n  00:00:00 +0000\n\
From:a@x.example\nTo: b@x.example\n\nother body";
        assert_eq!(d, header_digest(refolded, 1234, MAX));

        // A different Message-ID, Subject, first Received: different keys.
        let other = String::from_utf8_lossy(msg).replace("<id@", "<id2@");
        assert_ne!(d, header_digest(other.as_bytes(), 1234, MAX));
        let other = String::from_utf8_lossy(msg).replace("hello", "hullo");
        assert_ne!(d, header_digest(other.as_bytes(), 1234, MAX));
        let other = String::from_utf8_lossy(msg).replace("from a by b", "from a by c");
        assert_ne!(d, header_digest(other.as_bytes(), 1234, MAX));
        // Absent differs from empty.
        assert_ne!(
            header_digest(b"Subject:\r\n\r\n", 10, MAX),
            header_digest(b"\r\n", 10, MAX)
        );
        // Invalid UTF-8 is hashed raw, not lossily.
        assert_ne!(
            header_digest(b"Subject: \xff\r\n\r\n", 10, MAX),
            header_digest(b"Subject: \xfe\r\n\r\n", 10, MAX)
        );
        // Only the header counts.
        assert_eq!(
            header_digest(b"Subject: x\r\n\r\nSubject: y", 10, MAX),
            header_digest(b"Subject: x\r\n\r\nSubject: z", 10, MAX)
        );
        assert_eq!(header_digest(b"", 0, MAX), header_digest(b"", 0, MAX));
    }

    // ----- no-panic sweep ------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Bytes the parsers find hard, weighted by repetition.
    const NOISE: &[&[u8]] = &[
        b":",
        b":",
        b"<",
        b"<",
        b">",
        b">",
        b"\"",
        b"\"",
        b",",
        b",",
        b"@",
        b"@",
        b"@",
        b" ",
        b" ",
        b" ",
        b"\r",
        b"\r",
        b"\n",
        b"\n",
        b"\r\n",
        b"\t",
        b"\0",
        b"\xff",
        b"\xc3\xa9",
        b"(",
        b")",
        b";",
        b"[",
        b"]",
        b"\\",
        b".",
        b"..",
        b"a",
        b"b",
        b"x",
        b"e",
        b"e",
        b"e",
        b"user",
        b"example.com",
        b"From: ",
        b"Return-Path: ",
        b"Sender: ",
        b"To: ",
        b"Cc: ",
        b"Subject: ",
        b"Message-ID: ",
        b"Received: ",
        b"\r\n\r\n",
        b"\n\n",
        b"\r\n ",
        b"<>",
    ];
    const NAMES: &[&[u8]] = &[
        b"Return-Path:",
        b"return-path :",
        b"Sender:",
        b"From:",
        b"FROM:",
        b"To:",
        b"Cc:",
        b"Delivered-To:",
        b"X-Original-To:",
        b"Subject:",
        b"Message-ID:",
        b"Date:",
        b"Received:",
        b"X-Other:",
        b" ",
        b"Bad Name:",
        b"no colon",
    ];
    const VALUES: &[&[u8]] = &[
        b"user",
        b"user",
        b"jo",
        b"@",
        b"@",
        b"example.com",
        b"example.com",
        b"x.example",
        b"<",
        b">",
        b"<>",
        b"\"",
        b",",
        b" ",
        b" ",
        b"(",
        b")",
        b":",
        b";",
        b".",
        b"-",
        b"\xc3\xa9",
        b"\xff",
        b"\0",
        b"\r",
        b"\t",
        b"[1.2.3.4]",
        b"user@example.com",
        b"user@example.com",
        b"<user@x.example>",
        b"<user@x.example>",
        b"j\xc3\xb6rg@x.example",
        b"bad..x@y",
        b"Doe, John",
    ];
    const ENDS: &[&[u8]] = &[b"\r\n", b"\r\n", b"\n", b"\r\n ", b"\n\t", b"\r\n\r\n", b""];

    /// Random bytes (even rounds) or random header-shaped lines (odd rounds), about `len` long.
    fn generate(rng: &mut XorShift, round: usize, len: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(len + 64);
        let mut pick = |set: &[&[u8]], data: &mut Vec<u8>| {
            data.extend_from_slice(set[rng.below(set.len())]);
        };
        while data.len() < len {
            if round.is_multiple_of(2) {
                pick(NOISE, &mut data);
                continue;
            }
            pick(NAMES, &mut data);
            for _ in 0..1 + (round / 2) % 7 {
                pick(VALUES, &mut data);
            }
            pick(ENDS, &mut data);
        }
        data.truncate(len);
        data
    }

    #[test]
    fn no_panic_sweep() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        // [found and kept, repaired, fell back, null, list values]: the sweep reaches them all.
        let mut seen = [0usize; 5];
        for round in 0..10_000 {
            let len = rng.below(600);
            let data = generate(&mut rng, round, len);
            let max = if round % 3 == 0 {
                rng.below(len + 2)
            } else {
                MAX
            };

            if let Some(end) = header_end(&data, max) {
                assert!(end <= max.min(data.len()));
            }
            let info = parse_headers(&data, max);
            let text = String::from_utf8_lossy(&data);
            for addr in first_address(&text).into_iter().chain(addresses(&text)) {
                assert!(
                    !addr.chars().any(char::is_control),
                    "{addr:?} from {text:?}"
                );
            }
            assert!(addresses(&text).iter().all(|a| !a.is_empty()));
            for value in [&info.return_path, &info.sender, &info.from]
                .into_iter()
                .flatten()
            {
                let _ = first_address(value);
            }
            for value in info.to.iter().chain(&info.cc).chain(&info.delivered_to) {
                seen[4] += addresses(value).len();
            }
            for (dd, utf8) in [(Some("corp.example"), false), (None, true)] {
                let e = envelope_sender(&info, dd, "fb@corp.example", utf8, true);
                let kind = match (&e.source, &e.repair) {
                    (SenderSource::Fallback, _) => 2,
                    (_, Some(_)) => 1,
                    _ if e.address.is_empty() => 3,
                    _ => 0,
                };
                seen[kind] += 1;
                match e.source {
                    SenderSource::Fallback => assert_eq!(e.address, "fb@corp.example"),
                    SenderSource::ReturnPath if e.address.is_empty() => {}
                    _ => {
                        let m = Mailbox::parse(&e.address).unwrap_or_else(|err| {
                            panic!("{:?} unusable ({err}) from {text:?}", e.address)
                        });
                        assert!(utf8 || !m.needs_utf8());
                    }
                }
                let raw = envelope_sender(&info, dd, "", utf8, false);
                assert!(!raw.address.chars().any(char::is_control));
            }
            let d = header_digest(&data, len as u64, max);
            assert_eq!(d, header_digest(&data, len as u64, max));
            let h = received_header(&text, &text, &text, &text, at(rng.next() % 300_000_000_000));
            assert_well_formed(&h);
        }
        assert!(seen.iter().all(|&n| n > 20), "{seen:?}");
    }

    #[test]
    fn named_reads_from_subject_date_and_message_id() {
        let head = b"Received: x\r\nFrom: Alice <alice@example.net>\r\nSubject: Scans\r\n\
            Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <a1@example.net>\r\n\r\nbody";
        let n = Named::from_head(head);
        assert_eq!(n.from.as_deref(), Some("Alice <alice@example.net>"));
        assert_eq!(n.subject.as_deref(), Some("Scans"));
        assert_eq!(n.message_id.as_deref(), Some("<a1@example.net>"));
        assert_eq!(
            n.describe(),
            "from Alice <alice@example.net> \"Scans\" (2026-12-01)"
        );
        assert!(Named::from_head(b"").is_empty());
        assert_eq!(Named::from_head(b"").describe(), "");
        let only_id = Named::from_head(b"Message-ID: <x@y>\r\n\r\n");
        assert_eq!(only_id.describe(), "Message-ID <x@y>");
    }

    #[test]
    fn named_escapes_control_and_reordering_characters() {
        let head =
            b"Subject: a\x1b[31mred\x07 \xe2\x80\xae evil \\ tab\there\r\nFrom: x\x00y\r\n\r\n";
        let n = Named::from_head(head);
        let subject = n.subject.unwrap();
        assert_eq!(
            subject,
            "a\\u{1b}[31mred\\u{7} \\u{202e} evil \\\\ tab here"
        );
        assert!(!subject.chars().any(char::is_control), "{subject:?}");
        assert_eq!(n.from.as_deref(), Some("x\\u{0}y"));
        // An encoded-word cannot smuggle them in either.
        let n = Named::from_head(b"Subject: =?UTF-8?Q?bell=07=0D=0Aend?=\r\n\r\n");
        assert_eq!(n.subject.as_deref(), Some("bell\\u{7}\\u{d}\\u{a}end"));
    }

    #[test]
    fn named_cuts_long_fields_on_a_character() {
        let long = "é".repeat(NAME_MAX * 3);
        let head = format!("Subject: {long}\r\n\r\n");
        let subject = Named::from_head(head.as_bytes()).subject.unwrap();
        assert_eq!(subject.chars().count(), NAME_MAX);
        assert!(subject.ends_with('…'));
        // Exactly NAME_MAX characters are kept whole; an escape is never split.
        let exact = "x".repeat(NAME_MAX);
        assert_eq!(for_people(&exact).as_deref(), Some(exact.as_str()));
        let escapes = "\u{7}".repeat(NAME_MAX);
        let cut = for_people(&escapes).unwrap();
        assert!(cut.chars().count() <= NAME_MAX, "{cut}");
        assert!(cut.ends_with("\\u{7}…"), "{cut}");
        // A huge folded header stays bounded.
        let mut big = b"Subject: ".to_vec();
        for _ in 0..100_000 {
            big.extend_from_slice(b"word\r\n ");
        }
        big.extend_from_slice(b"\r\n\r\n");
        let s = Named::from_head(&big).subject.unwrap();
        assert!(s.chars().count() <= NAME_MAX);
    }

    #[test]
    fn named_decodes_simple_encoded_words() {
        let n = Named::from_head(
            b"Subject: =?utf-8?B?w4RwZmVs?= =?UTF-8?Q?_und_Birnen?= (=?ISO-8859-1?Q?caf=E9?=)\r\n\
              From: =?koi8-r?B?9MXT1A==?= <t@example.ru>\r\n\r\n",
        );
        assert_eq!(
            n.subject.as_deref(),
            Some("\u{c4}pfel und Birnen (caf\u{e9})")
        );
        // Other charsets stay as written.
        assert_eq!(
            n.from.as_deref(),
            Some("=?koi8-r?B?9MXT1A==?= <t@example.ru>")
        );
        for bad in [
            "=?",
            "=?utf-8?",
            "=?utf-8?Q?=4?=",
            "=?utf-8?X?abc?=",
            "=?utf-8?B?***?=",
        ] {
            assert_eq!(for_people(bad).as_deref(), Some(bad), "{bad}");
        }
    }

    #[test]
    fn short_dates() {
        assert_eq!(
            short_date("Tue, 1 Dec 2026 10:00:00 +0000").as_deref(),
            Some("2026-12-01")
        );
        assert_eq!(
            short_date("7 Jan 99 1:00 GMT").as_deref(),
            Some("1999-01-07")
        );
        assert_eq!(short_date("yesterday"), None);
        assert_eq!(short_date("Mon, 99 Foo 2026"), None);
        assert_eq!(short_date(""), None);
    }
}
