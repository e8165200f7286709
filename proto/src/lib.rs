//! Wire codecs for POP3 and SMTP, shared by the Popbridge connector and its mocks.
//!
//! Responsible for: turning bytes into typed commands and replies and back, with
//! bounded line lengths, resumable parsers that keep *incomplete* apart from
//! *invalid*, dot-stuffing in both directions, and the NTLM (SPA) login messages.
//!
//! Must never: do I/O, panic on any input, or grow memory without a caller-given bound.

pub mod dot;
pub mod line;
pub mod ntlm;
pub mod pop3;
pub mod smtp;
#[cfg(test)]
mod test_support;

pub use dot::{DotDecoder, DotError, DotStuffer, Progress};
pub use line::{LineDecoder, LineError};

/// Shortens bytes for an error message: lossy UTF-8, at most `max` characters.
pub(crate) fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.escape_debug().to_string()
}
