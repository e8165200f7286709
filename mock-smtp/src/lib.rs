//! A mock Exchange 2007/2010 receive connector, faithful enough to reproduce in a test
//! what a customer saw with a real Exchange.
//!
//! Responsible for: Exchange's EHLO, limits and exact reply texts (all configurable),
//! `MaxProtocolErrors` ending a session with `421 4.7.0`, `DefaultDomain` repairing a
//! sender without a domain, the categoriser's limits applied *after* the 250 (the NDRs
//! through which SBS customers lost mail), anti-spam rejections kept as badmail, scripted
//! and seedable faults, and a capture of every transaction.
//! It is the sink in throughput benchmarks: pipelined replies go out in one write and a
//! count-only mode keeps no bytes.
//!
//! What both mocks share (the fault engine, the test PKI, the connection with its TLS
//! upgrade and speed limit, the accept loop, session records with their
//! [`SessionEnd`], shutdown and the handle) lives in mock-core; this crate holds SMTP
//! only and does not depend on mock-pop3.
//!
//! Must never: accept a message silently that Exchange would refuse, share state between
//! instances, or write an AUTH secret into a transcript.

mod capture;
mod config;
mod server;
mod session;

pub use capture::{Delivery, Outcome, RcptRecord, Received, SessionStats};
pub use config::{Extensions, Limits, MailboxSpec, Replies, SizeAdvert, SpamField, SpamRule};
/// The fault engine (shared with mock-pop3 through mock-core).
pub use mock_core::fault::{FaultAction, FaultRule, Hook};
/// How a session ended (shared with mock-pop3 through mock-core).
pub use mock_core::host::SessionEnd;
/// The throw-away test PKI (shared with mock-pop3 through mock-core).
pub use mock_core::pki;
pub use server::{Builder, CaptureMode, Counts, MockSmtp, MockSmtpHandle};
