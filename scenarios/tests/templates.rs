//! `poplab run --connector-cmd` with the mpop (through msmtp) and getmail6 (through msmtp)
//! templates (scenarios/connectors/mpop.sh, getmail.sh) on the basic-delivery and
//! drop-before-QUIT cases: both pass (exit 0), every message is delivered, and the
//! duplicates each makes after a drop before QUIT are reported as a difference from
//! popbridge, with pass 1 failing (the lost QUIT) and pass 2 succeeding.
//!
//! A missing program skips the test (with the reason printed), unless
//! `POPBRIDGE_REQUIRE_PEERS=1` (CI), in which case it fails.
#![allow(missing_docs)]

mod common;
use common::{require_tools, root, with_drop_before_quit};

const TEMPLATE: &str =
    "{script} {pop3_host} {pop3_port} {user} {password} {smtp_host} {smtp_port} {rcpt} {scratch} {timeout}";

/// Runs both cases through `script`; checks the report.
fn basic_and_drop_before_quit(script: &str) {
    let script = root().join("connectors").join(script);
    let (stdout, basic, drop) = with_drop_before_quit(TEMPLATE, &script, "basic-delivery.toml");
    for part in [&basic, &drop] {
        assert!(
            part.contains("connector: ") && part.contains(&script.display().to_string()),
            "{stdout}"
        );
    }
    for label in ["hello", "with-cc", "on-behalf"] {
        assert!(
            basic
                .lines()
                .any(|l| l.trim_start().starts_with(label) && l.contains("delivered  delivered")),
            "{label}: {stdout}"
        );
    }
    assert!(basic.contains("pass 1, mailbox info: exit 0"), "{stdout}");
    assert!(
        basic.contains("lost 0 (expected 0), duplicates 0 (expected 0)"),
        "{stdout}"
    );
    // Neither remembers across a lost QUIT: all three delivered again, and said so.
    assert!(drop.contains("msg    3  delivered  delivered"), "{stdout}");
    assert!(
        drop.contains("differs from popbridge: duplicates: popbridge 0, this connector 3"),
        "{stdout}"
    );
    assert!(!drop.contains("pass 1, mailbox info: exit 0"), "{stdout}");
    assert!(drop.contains("pass 2, mailbox info: exit 0"), "{stdout}");
}

#[test]
fn mpop_with_msmtp_passes_basic_delivery_and_drop_before_quit() {
    if !require_tools(&["mpop", "msmtp"]) {
        return;
    }
    basic_and_drop_before_quit("mpop.sh");
}

#[test]
fn getmail6_with_msmtp_passes_basic_delivery_and_drop_before_quit() {
    if !require_tools(&["getmail", "msmtp"]) {
        return;
    }
    basic_and_drop_before_quit("getmail.sh");
}
