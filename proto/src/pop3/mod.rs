//! POP3 (RFC 1939, 2449, 3206, 5034) commands and replies.
//!
//! Responsible for: the exact wire form of every command (client side), parsing
//! command lines (server side), and typed status replies with response codes.
//! Must never: put a secret into `Debug` output or an error message.

mod auth;
mod command;
mod reply;

pub use auth::AuthMethod;
pub use command::{CommandError, Pop3Command, SaslResponse};
pub use reply::{Pop3Reply, Pop3Response, ReplyError, RespCode, Status};

/// RFC 2449: a command line is at most 255 octets, CRLF included.
pub const MAX_COMMAND_LINE: usize = 255;
/// RFC 2449: a single-line response is at most 512 octets, CRLF included.
pub const MAX_RESPONSE_LINE: usize = 512;
/// A generous bound for SASL continuation lines (XOAUTH2 tokens run to a few KB).
pub const MAX_SASL_LINE: usize = 16 * 1024;
