//! What the receive connector advertises, enforces and answers, Exchange's defaults first.

use std::time::Duration;

use popbridge_proto::smtp::{EnhancedCode, Reply};

/// How EHLO advertises SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeAdvert {
    /// `SIZE <max_message_size>`
    Value,
    /// `SIZE` without a number (the limit is still enforced).
    Bare,
    /// Not advertised (the limit is still enforced after the data).
    Absent,
}

/// EHLO extensions, each switchable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extensions {
    /// SIZE (RFC 1870).
    pub size: SizeAdvert,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// DSN (advertised only).
    pub dsn: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034): when off, replies carry no enhanced code.
    pub enhanced_status_codes: bool,
    /// STARTTLS (needs a TLS configuration).
    pub starttls: bool,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// BINARYMIME (RFC 3030, advertised only).
    pub binarymime: bool,
    /// CHUNKING / BDAT (RFC 3030).
    pub chunking: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// AUTH PLAIN LOGIN (needs credentials).
    pub auth: bool,
}

impl Default for Extensions {
    /// What an Exchange 2010 hub receive connector advertises.
    fn default() -> Self {
        Self {
            size: SizeAdvert::Value,
            pipelining: true,
            dsn: true,
            enhanced_status_codes: true,
            starttls: true,
            eightbitmime: true,
            binarymime: true,
            chunking: true,
            smtputf8: false,
            auth: false,
        }
    }
}

/// Receive-connector limits enforced in the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `MaxMessageSize` (10 MB): SIZE= and the data are refused above it.
    pub max_message_size: Option<u64>,
    /// `MaxHeaderSize` (64 KB).
    pub max_header_size: Option<u64>,
    /// `MaxRecipientsPerMessage` (200).
    pub max_recipients: usize,
    /// `MaxProtocolErrors` (5); `None` for no limit.
    pub max_protocol_errors: Option<u32>,
    /// Reply codes that count as protocol errors (500, 501, 503).
    pub protocol_error_codes: Vec<u16>,
    /// `MaxLogonFailures` (3).
    pub max_logon_failures: Option<u32>,
    /// Delay before `550 5.1.1` to unauthenticated clients (tarpitting; Exchange: 5 s).
    pub tarpit: Duration,
    /// Idle time after which the session ends with `421 4.4.1` (hub: 10 minutes).
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: Some(10 * 1024 * 1024),
            max_header_size: Some(64 * 1024),
            max_recipients: 200,
            max_protocol_errors: Some(5),
            protocol_error_codes: vec![500, 501, 503],
            max_logon_failures: Some(3),
            tarpit: Duration::ZERO,
            connection_timeout: Duration::from_secs(600),
        }
    }
}

/// A local mailbox and the limits the categoriser applies after acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSpec {
    /// Its SMTP address.
    pub address: String,
    /// Per-mailbox receive limit (`MaxReceiveSize`): larger mail is bounced after the 250.
    pub receive_limit: Option<u64>,
    /// Storage quota in octets: mail that would pass it is bounced with `Mailbox full`.
    pub quota: Option<u64>,
}

impl MailboxSpec {
    /// A mailbox without limits.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            receive_limit: None,
            quota: None,
        }
    }

    /// Sets the receive limit.
    pub fn receive_limit(mut self, octets: u64) -> Self {
        self.receive_limit = Some(octets);
        self
    }

    /// Sets the quota.
    pub fn quota(mut self, octets: u64) -> Self {
        self.quota = Some(octets);
        self
    }
}

/// What an anti-spam rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpamField {
    /// The envelope sender.
    Sender,
    /// The Subject header.
    Subject,
    /// Any header, by name (case-insensitive).
    Header(String),
}

/// An anti-spam agent rule: a case-insensitive substring match rejects with `550 5.7.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamRule {
    /// Where to look.
    pub field: SpamField,
    /// What to look for.
    pub contains: String,
}

/// Every reply text the server uses, Exchange's by default; change any field to match a
/// particular server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Replies {
    pub sender_ok: Reply,
    pub recipient_ok: Reply,
    pub start_data: Reply,
    pub queued: Reply,
    pub quit: Reply,
    pub ok: Reply,
    pub reset: Reply,
    pub invalid_sender: Reply,
    pub invalid_recipient: Reply,
    pub unknown_user: Reply,
    pub relay_denied: Reply,
    pub bad_arguments: Reply,
    pub unrecognized: Reply,
    pub need_hello: Reply,
    pub need_mail: Reply,
    pub need_rcpt: Reply,
    pub sender_already: Reply,
    pub too_big: Reply,
    pub header_too_big: Reply,
    pub too_many_recipients: Reply,
    pub auth_failed: Reply,
    pub auth_ok: Reply,
    pub too_many_errors: Reply,
    pub timeout: Reply,
    pub spam: Reply,
    pub start_tls: Reply,
    pub tls_unavailable: Reply,
    pub bdat_ok: Reply,
    pub ndr_recipient_size: Reply,
    pub ndr_org_size: Reply,
    pub ndr_mailbox_full: Reply,
}

fn r(code: u16, class: u8, subject: u16, detail: u16, text: &str) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(class, subject, detail)), text)
}

impl Default for Replies {
    fn default() -> Self {
        Self {
            sender_ok: r(250, 2, 1, 0, "Sender OK"),
            recipient_ok: r(250, 2, 1, 5, "Recipient OK"),
            start_data: Reply::new(354, None, "Start mail input; end with <CRLF>.<CRLF>"),
            queued: r(250, 2, 6, 0, "{id} Queued mail for delivery"),
            quit: r(221, 2, 0, 0, "Service closing transmission channel"),
            ok: r(250, 2, 0, 0, "OK"),
            reset: r(250, 2, 0, 0, "Resetting"),
            invalid_sender: r(501, 5, 1, 7, "Invalid address"),
            invalid_recipient: r(501, 5, 1, 3, "Invalid address"),
            unknown_user: r(550, 5, 1, 1, "User unknown"),
            relay_denied: r(550, 5, 7, 1, "Unable to relay"),
            bad_arguments: r(501, 5, 5, 4, "Invalid arguments"),
            unrecognized: r(500, 5, 3, 3, "Unrecognized command"),
            need_hello: r(503, 5, 5, 2, "Send hello first"),
            need_mail: r(503, 5, 5, 2, "Need mail command"),
            need_rcpt: r(503, 5, 5, 2, "Need rcpt command"),
            sender_already: r(503, 5, 5, 2, "Sender already specified"),
            too_big: r(
                552,
                5,
                3,
                4,
                "Message size exceeds fixed maximum message size",
            ),
            header_too_big: r(552, 5, 3, 4, "Header size exceeds fixed maximum size"),
            too_many_recipients: r(452, 4, 5, 3, "Too many recipients"),
            auth_failed: r(535, 5, 7, 3, "Authentication unsuccessful"),
            auth_ok: r(235, 2, 7, 0, "Authentication successful"),
            too_many_errors: r(
                421,
                4,
                7,
                0,
                "Too many errors on this connection, closing transmission channel",
            ),
            timeout: r(421, 4, 4, 1, "Connection timed out"),
            spam: r(
                550,
                5,
                7,
                1,
                "Message rejected as spam by Content Filtering.",
            ),
            start_tls: r(220, 2, 0, 0, "SMTP server ready"),
            tls_unavailable: r(454, 4, 7, 0, "TLS not available due to temporary reason"),
            bdat_ok: r(250, 2, 0, 0, "{n} octets received"),
            ndr_recipient_size: r(
                550,
                5,
                2,
                3,
                "RESOLVER.RST.RecipSizeLimit; message too large for this recipient",
            ),
            ndr_org_size: r(
                550,
                5,
                2,
                3,
                "RESOLVER.RST.SendSizeLimit.Org; message too large for this organization",
            ),
            ndr_mailbox_full: r(550, 5, 2, 2, "Mailbox full"),
        }
    }
}
