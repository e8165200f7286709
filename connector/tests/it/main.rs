//! The connector against the mocks: the acceptance behaviours of the connector core.
#![allow(missing_docs)]

mod admin;
mod at_rest;
mod broken_commit;
mod cli;
mod cluster;
mod cluster_faults;
mod cluster_ledger;
mod cluster_pass;
mod daemon;
mod delivery;
mod dovecot_tls;
mod harness;
mod hostile;
mod interop;
mod listing;
mod named;
mod ntlm;
mod oauth2;
mod pass;
mod pop3_tap;
mod round_trips;
mod self_contained;
mod sigkill;
mod tls_pin;
