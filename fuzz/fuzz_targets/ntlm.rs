//! cargo-fuzz target `ntlm`: hands libFuzzer's input to [`popbridge_fuzz::ntlm`].
//!
//! Responsible for: nothing but that call; the check itself lives in fuzz/src/lib.rs so
//! that `cargo test` (scenarios/tests/fuzz_corpus.rs) replays the corpus through it.
//! Must never: hold logic of its own, or differ from what the replay test runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| popbridge_fuzz::ntlm(data));
