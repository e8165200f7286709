//! Sizes, durations and file modes as the configuration writes them.
//!
//! Responsible for: parsing `"10MB"`, `"30s"`, `"0640"` into numbers, with a message
//! saying what is wrong.
//! Must never: know which key a value belongs to (the caller names it).

use std::time::Duration;

/// Splits `s`, a `what` ("size", "duration") whose accepted units `units` names, into its
/// whole number and its unit (without the space before it), or says what is wrong.
fn number_and_unit<'a>(s: &'a str, what: &str, units: &str) -> Result<(u64, &'a str), String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid {what} {s:?}: expected a whole number with an optional unit ({units})"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "invalid {what} {s:?}: fractions are not supported, use a smaller unit"
        ));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid {what} {s:?}: number too large"))?;
    Ok((n, unit.trim_start()))
}

/// Parses a size: `"10MB"`, `"512 kb"`, `"1GB"`, `"123B"`, `"123"` (binary units:
/// 1 KB = 1024 octets; also K/KiB, M/MiB, G/GiB, T/TB/TiB), case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: &str = "use B, KB, MB or GB";
    let (n, unit) = number_and_unit(s, "size", UNITS)?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} ({UNITS})"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Parses a duration: `"500ms"`, `"30s"`, `"15m"`, `"2h"`, `"1d"`, or a bare number of
/// seconds (`"30"`), case-insensitive, optional space before the unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "use ms, s, m, h or d";
    let (n, unit) = number_and_unit(s, "duration", UNITS)?;
    let too_large = || format!("invalid duration {s:?}: too large");
    match unit.to_ascii_lowercase().as_str() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        "d" => n
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        _ => Err(format!(
            "invalid duration {s:?}: unknown unit {unit:?} ({UNITS})"
        )),
    }
}

/// A file mode written as three or four octal digits (`"640"`, `"0640"`); only the
/// permission bits, and the owner must be able to read and write.
pub(super) fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim();
    if !(3..=4).contains(&t.len()) || !t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let mode = u32::from_str_radix(t, 8).ok()?;
    (mode <= 0o777 && mode & 0o600 == 0o600).then_some(mode)
}
