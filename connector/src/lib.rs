//! The Popbridge connector library: configuration, POP3 and SMTP clients, delivery
//! targets, the ledger and the pass engine (built by the connector-core issue).
//!
//! Must never: know about mocks or scenarios, lose a message, or log a secret.

pub use popbridge_proto as proto;
