//! mock-pop3 integration tests: one binary, shared helpers in `client`.
#![allow(missing_docs)]

mod behaviour;
mod client;
mod interop;
mod ntlm;
