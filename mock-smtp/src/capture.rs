//! What the server saw and decided: transactions with their envelope, bytes and outcome.

use bytes::Bytes;
use mock_core::host::SessionEnd;
use popbridge_proto::smtp::Param;
use serde::Serialize;

/// One RCPT TO and the server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RcptRecord {
    /// The address as the client sent it.
    pub address: String,
    /// The reply's first line (`250 2.1.5 Recipient OK`).
    pub reply: String,
    /// True when the recipient was accepted.
    pub accepted: bool,
}

/// What happened to an accepted message for one recipient, after the categoriser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Delivery {
    /// Put in the mailbox.
    Delivered {
        /// The recipient.
        recipient: String,
    },
    /// Bounced after the session said 250: a non-delivery report with this text.
    Ndr {
        /// The recipient.
        recipient: String,
        /// The NDR's status line (`550 5.2.3 RESOLVER.RST.RecipSizeLimit; ...`).
        text: String,
    },
}

/// The fate of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The session answered 2xx to the end of data; see `deliveries` for each recipient.
    Accepted,
    /// Refused in the session (MAIL, all RCPTs, or the end of data) with this reply line.
    Rejected {
        /// The refusing reply's first line.
        reply: String,
    },
    /// Refused by an anti-spam rule and kept in the Badmail folder.
    Badmail {
        /// The refusing reply's first line.
        reply: String,
    },
    /// The session ended before the transaction completed.
    Abandoned,
}

/// One mail transaction the server received (as captured), from MAIL FROM to its end.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// The session it belongs to (from 1).
    pub session: u64,
    /// Its number in the server (from 1).
    pub id: u64,
    /// The name the client gave in HELO/EHLO before this transaction, if any.
    pub helo: Option<String>,
    /// MAIL FROM's path as the client sent it (`""` for `<>`).
    pub mail_from: String,
    /// The sender after DefaultDomain repair, when the path was accepted.
    pub sender: Option<String>,
    /// MAIL FROM's parameters (`SIZE=`, `BODY=`, ...).
    #[serde(serialize_with = "ser_params")]
    pub params: Vec<Param>,
    /// Every RCPT TO with its reply.
    pub recipients: Vec<RcptRecord>,
    /// Octets of message data received (dot-unstuffed, or BDAT chunks joined).
    pub size: u64,
    /// The message bytes (empty in count-only mode or when refused before data).
    #[serde(skip)]
    pub data: Bytes,
    /// True when the data came in BDAT chunks.
    pub bdat: bool,
    /// The outcome.
    pub outcome: Outcome,
    /// Per-recipient result for accepted messages.
    pub deliveries: Vec<Delivery>,
    /// The server took the message but a fault kept its reply from leaving: the client
    /// cannot know it was accepted.
    pub reply_lost: bool,
    /// The client sent another command on the session after the final reply (so it could
    /// have read it). An accepted transaction that is not acknowledged is one whose
    /// acceptance the client may never have seen (it vanished, or its reply was lost).
    pub acknowledged: bool,
}

fn ser_params<S: serde::Serializer>(p: &[Param], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(p.iter().map(|p| p.to_string()))
}

impl Received {
    /// True when the server accepted it but the client may never have learnt so: its reply
    /// was lost, or the client sent nothing more on the session after it.
    pub fn unconfirmed(&self) -> bool {
        self.outcome == Outcome::Accepted && (self.reply_lost || !self.acknowledged)
    }

    /// True when every recipient got the message.
    pub fn delivered(&self) -> bool {
        self.outcome == Outcome::Accepted
            && self
                .deliveries
                .iter()
                .all(|d| matches!(d, Delivery::Delivered { .. }))
    }

    /// The NDR texts, if the categoriser bounced it for any recipient.
    pub fn ndrs(&self) -> Vec<&str> {
        self.deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::Ndr { text, .. } => Some(text.as_str()),
                Delivery::Delivered { .. } => None,
            })
            .collect()
    }
}

/// Per-session counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionStats {
    /// Session number, from 1.
    pub id: u64,
    /// Command lines received.
    pub commands: u64,
    /// Replies counted as protocol errors.
    pub protocol_errors: u32,
    /// Failed AUTH attempts.
    pub logon_failures: u32,
    /// Transactions started (MAIL FROM seen).
    pub transactions: u64,
    /// Messages answered 2xx at the end of data.
    pub accepted: u64,
    /// Replies sent.
    pub replies: u64,
    /// Writes to the socket: fewer than `replies` when pipelined replies were batched.
    pub writes: u64,
    /// True once STARTTLS completed.
    pub tls: bool,
    /// How it ended (`None` while running).
    pub end: Option<SessionEnd>,
    /// `C:`/`S:` lines, secrets redacted, data summarised.
    pub transcript: Vec<String>,
}

mock_core::impl_record!(SessionStats);
