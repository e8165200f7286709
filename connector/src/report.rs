//! Text helpers for the administrator's commands (`status`, `quarantine`): times as RFC
//! 3339 UTC, ages for people, and untrusted text (header fields, server replies, keys)
//! made safe to print: control characters escaped, length bounded.
//!
//! Must never: print a control character taken from a message or a server, or panic on
//! any input.

/// Seconds since 1970 of `t` (0 before it, `i64::MAX` past it).
pub fn unix_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since 1970, now.
pub fn unix_now() -> i64 {
    unix_secs(std::time::SystemTime::now())
}

/// Seconds since 1970 as RFC 3339 UTC (`2026-12-07T04:59:12Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::message::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A duration in seconds for people: `45s`, `12m`, `3h20m`, `4d2h` (negative as `0s`).
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `text` with control characters (and DEL, and Unicode bidi controls) written as
/// `\u{..}` escapes (tabs and line ends included: one value, one line), cut to at most
/// `max` characters with `…` marking the cut.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for c in text.chars() {
        let piece =
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            };
        let len = piece.chars().count();
        if count + len > max {
            out.push('…');
            return out;
        }
        count += len;
        out.push_str(&piece);
    }
    out
}

/// Bytes from a message header, decoded leniently (invalid UTF-8 replaced) and cleaned.
pub fn clean_bytes(bytes: &[u8], max: usize) -> String {
    clean(&String::from_utf8_lossy(bytes), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_619_552), "2026-12-07T04:59:12Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn ages_read_like_people_write_them() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(61), "1m");
        assert_eq!(age(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(age(4 * 86_400 + 2 * 3600 + 7), "4d2h");
    }

    #[test]
    fn control_characters_are_escaped_and_length_bounded() {
        assert_eq!(clean("a\x1b[31mb\r\nc", 100), "a\\u{1b}[31mb\\u{d}\\u{a}c");
        assert_eq!(clean("\u{202e}evil", 100), "\\u{202e}evil");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("\x00\x00", 7), "\\u{0}…");
        assert_eq!(clean_bytes(b"caf\xc3\xa9 \xff", 10), "café \u{fffd}");
        assert_eq!(clean("", 0), "");
    }
}
