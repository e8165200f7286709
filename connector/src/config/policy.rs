//! The behaviour profile turned into what the engine does: a [`Policy`].
//!
//! Responsible for: every difference between profile `default` and profile `sbs2008`
//! (the old SBS 2008 connector's known behaviour, reproduced for side-by-side comparison),
//! decided here once so that no other module compares profiles.
//! Must never: hold state, or be consulted for anything the profile does not change.

use super::{Config, Profile};

/// The old SBS connector's size limit when its receive connector advertises no SIZE
/// (10 MB).
pub const SBS_DEFAULT_LIMIT: u64 = 10 * 1024 * 1024;
/// The old SBS connector's cap on messages per session.
const SBS_MAX_PER_SESSION: usize = 500;

/// How the largest message a pass downloads is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// The smallest known limit on the way: `max_message_size`, the receive connector's
    /// SIZE, and Exchange's organisation and mailbox receive limits.
    SmallestKnown,
    /// The receive connector's SIZE alone, or `unadvertised` without one: the old
    /// connector ignored every other limit.
    ReceiveConnector {
        /// The limit when the server advertises no SIZE (or there is no server to ask).
        unadvertised: u64,
    },
}

/// What a pass does where the profiles differ, derived from a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Repair an unusable sender with `default_domain` and `fallback_sender` (else it
    /// goes out as the message has it).
    pub repair_senders: bool,
    /// Pipeline MAIL and RCPT when the SMTP server allows it.
    pub pipelining: bool,
    /// Replace the SMTP session before it reaches the server's protocol-error limit.
    pub reconnect_before_error_limit: bool,
    /// Reconnects allowed per pass after a 421 or a dropped connection.
    pub smtp_reconnects: u32,
    /// Most messages submitted per pass.
    pub max_per_session: usize,
    /// How the download limit is found.
    pub size_rule: SizeRule,
    /// Stop the mailbox's pass at the first message over the limit (in maildrop order).
    pub stop_at_oversize: bool,
    /// Permanent failures after which a message is quarantined; `None`: never.
    pub quarantine_after: Option<u32>,
}

impl Config {
    /// What a pass does under this configuration's profile and limits.
    pub fn policy(&self) -> Policy {
        let limits = &self.limits;
        match self.profile {
            Profile::Default => Policy {
                repair_senders: true,
                pipelining: true,
                reconnect_before_error_limit: true,
                smtp_reconnects: limits.smtp_reconnects,
                max_per_session: limits.max_messages_per_session,
                size_rule: SizeRule::SmallestKnown,
                stop_at_oversize: false,
                quarantine_after: Some(limits.poison_after),
            },
            // The old connector: senders as they came, one command at a time, no
            // reconnect, a fixed cap, the receive connector's SIZE alone, the first
            // oversize message stopping the mailbox, and no giving up on a message.
            Profile::Sbs2008 => Policy {
                repair_senders: false,
                pipelining: false,
                reconnect_before_error_limit: false,
                smtp_reconnects: 0,
                max_per_session: SBS_MAX_PER_SESSION,
                size_rule: SizeRule::ReceiveConnector {
                    unadvertised: SBS_DEFAULT_LIMIT,
                },
                stop_at_oversize: true,
                quarantine_after: None,
            },
        }
    }
}
