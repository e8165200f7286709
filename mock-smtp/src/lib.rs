//! The mock Exchange-like SMTP receive connector (built by the mock-smtp issue).
//!
//! Must never: accept a message silently that Exchange would refuse.

pub use popbridge_proto as proto;
