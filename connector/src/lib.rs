//! The Popbridge connector: POP3 mailboxes in, SMTP out, nothing lost, nothing twice.
//!
//! Responsible for: configuration, the POP3 and SMTP clients, the ledger that makes
//! delivery idempotent, and the pass engine that applies the invariants of ARCHITECTURE.md.
//! Must never: know about mocks or scenarios, delete a message before the SMTP server
//! accepted it and the ledger recorded it, or write a secret anywhere.

pub mod body;
pub mod certinfo;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod diagnose;
pub mod events;
pub mod exit;
pub mod faults;
pub mod http;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod listing;
pub mod message;
pub mod metrics;
pub mod net;
pub mod oauth2;
pub mod pass;
pub mod pickup;
pub mod pin;
pub mod pop3;
pub mod private;
pub mod quarantine;
pub mod report;
pub mod routing;
pub mod secret;
pub mod smtp;
pub mod status;
pub mod store;
pub mod toml_locate;

pub use popbridge_proto as proto;
