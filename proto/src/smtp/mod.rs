//! SMTP (RFC 5321, 1870, 2920, 3030, 3463) commands, replies and addresses.
//!
//! Responsible for: the exact wire form of commands (client side) and replies
//! (server side), parsing both, and mailbox syntax for envelope addresses.
//! Must never: accept an unbounded reply, or decide policy (what is an error is the caller's call).

mod address;
mod command;
mod reply;

pub use address::{AddressError, EnvelopeAddress, Mailbox, Path};
pub use command::{CommandError, Param, SmtpCommand};
pub use reply::{EnhancedCode, Reply, ReplyError, ReplyParser, Severity};

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets, CRLF included.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; we allow more, bounded.
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines accepted in one multi-line reply (EHLO lists are the longest in practice).
pub const MAX_REPLY_LINES: usize = 128;
