//! The connector against the mocks: the acceptance behaviours of the connector core.
#![allow(missing_docs)]

mod cli;
mod daemon;
mod delivery;
mod harness;
mod hostile;
mod interop;
mod listing;
mod ntlm;
mod pass;
mod sigkill;
mod tls_pin;
