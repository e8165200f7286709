//! A mock Exchange 2007/2010 receive connector, faithful enough to reproduce in a test
//! what a customer saw with a real Exchange.
//!
//! Responsible for: Exchange's EHLO, limits and exact reply texts (all configurable),
//! `MaxProtocolErrors` ending a session with `421 4.7.0`, `DefaultDomain` repairing a
//! sender without a domain, the categoriser's limits applied *after* the 250 (the NDRs
//! through which SBS customers lost mail), anti-spam rejections kept as badmail, scripted
//! and seedable faults (shared with mock-pop3), and a capture of every transaction.
//! It is the sink in throughput benchmarks: pipelined replies go out in one write and a
//! count-only mode keeps no bytes.
//!
//! Must never: accept a message silently that Exchange would refuse, share state between
//! instances, or write an AUTH secret into a transcript.

mod capture;
mod config;
mod server;
mod session;

pub use capture::{Delivery, Outcome, RcptRecord, SessionStats, Transaction};
pub use config::{Extensions, Limits, MailboxSpec, Replies, SizeAdvert, SpamField, SpamRule};
pub use mock_pop3::fault::{FaultAction, FaultRule, Hook};
pub use server::{Builder, CaptureMode, Counts, MockSmtp, MockSmtpHandle};
