//! poplab: scenario files, their runner and report (built by the scenarios issue).
//!
//! Must never: contain connector logic.

pub use mock_pop3;
