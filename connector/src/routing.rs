//! Catch-all ("global") mailboxes, SBS 2003 style: one POP3 account holding mail for many
//! local users, each message routed to the local recipients its header names.
//!
//! Responsible for: choosing a message's envelope recipients from its recipient headers
//! (ARCHITECTURE.md, "The SBS POP3 connector"), in this order of trust:
//! `Delivered-To:` (the envelope recipient the ISP's server saw; the only place a Bcc'd
//! recipient appears), then `X-Original-To:` (Postfix's envelope recipient before
//! aliasing), then `To:` and `Cc:`. The first of these that names at least one local
//! address wins, with every local address it names; when none does, the message goes to
//! the fallback (the account's `deliver_to`, typically the postmaster).
//! Must never: return an empty recipient list, return an address that is not a valid
//! envelope mailbox (so no control character or space reaches RCPT TO or a pickup file),
//! name an external address (a catch-all must not relay mail back out), or list a
//! recipient twice (one message is delivered once, with all its recipients).

use popbridge_proto::smtp::Mailbox;

use crate::config::CatchAll;
use crate::message::{addresses, HeaderInfo};

/// Source name when the recipients came from `Delivered-To:`.
pub const DELIVERED_TO: &str = "Delivered-To";
/// Source name when the recipients came from `X-Original-To:`.
pub const X_ORIGINAL_TO: &str = "X-Original-To";
/// Source name when the recipients came from `To:` and `Cc:`.
pub const TO_CC: &str = "To/Cc";
/// Source name when no local recipient was found and the fallback was used.
pub const FALLBACK: &str = "fallback";

/// The envelope recipients chosen for one message, and which header they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// Envelope recipients: lower-cased, without duplicates, in header order; never empty.
    pub recipients: Vec<String>,
    /// Where they came from: [`DELIVERED_TO`], [`X_ORIGINAL_TO`], [`TO_CC`] or [`FALLBACK`].
    pub source: &'static str,
}

/// The local recipients of a message for a catch-all account, or `fallback` when it names none.
///
/// `fallback` is used verbatim (it is the validated `deliver_to` of the configuration).
pub fn recipients(info: &HeaderInfo, catch_all: &CatchAll, fallback: &str) -> Routing {
    let to_cc: Vec<String> = info.to.iter().chain(info.cc.iter()).cloned().collect();
    let sources: [(&'static str, &[String]); 3] = [
        (DELIVERED_TO, &info.delivered_to),
        (X_ORIGINAL_TO, &info.x_original_to),
        (TO_CC, &to_cc),
    ];
    for (source, values) in sources {
        let found = local_addresses(values, catch_all);
        if !found.is_empty() {
            return Routing {
                recipients: found,
                source,
            };
        }
    }
    Routing {
        recipients: vec![fallback.to_string()],
        source: FALLBACK,
    }
}

/// True when `address` (any case) is local for `catch_all`: its domain is one of the local
/// domains, or it is one of the local addresses.
pub fn is_local(address: &str, catch_all: &CatchAll) -> bool {
    let lower = address.to_ascii_lowercase();
    let Ok(m) = Mailbox::parse(&lower) else {
        return false;
    };
    catch_all
        .local_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&m.domain))
        || catch_all
            .local_addresses
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&lower))
}

/// Every local address named by the header values, lower-cased, first occurrence kept.
fn local_addresses(values: &[String], catch_all: &CatchAll) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        for a in addresses(value) {
            let a = a.to_ascii_lowercase();
            if is_local(&a, catch_all) && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_headers;

    fn contoso() -> CatchAll {
        CatchAll {
            local_domains: vec!["contoso.local".into(), "contoso.com".into()],
            local_addresses: vec!["boss@other.example".into()],
        }
    }

    fn route(header: &str) -> Routing {
        let info = parse_headers(header.as_bytes(), 64 * 1024);
        recipients(&info, &contoso(), "postmaster@contoso.local")
    }

    #[test]
    fn delivered_to_wins_with_every_local_address_it_names() {
        let r = route(
            "Delivered-To: Alice@Contoso.com\r\nDelivered-To: bob@contoso.local\r\n\
             To: carol@contoso.com, ext@example.net\r\n\r\nbody\r\n",
        );
        assert_eq!(r.source, DELIVERED_TO);
        assert_eq!(r.recipients, ["alice@contoso.com", "bob@contoso.local"]);
    }

    #[test]
    fn bcc_recipient_only_in_delivered_to_is_used_not_the_visible_to() {
        let r = route(
            "Delivered-To: hidden@contoso.com\r\nTo: visible@contoso.com\r\n\
             Subject: bcc\r\n\r\n",
        );
        assert_eq!(
            (r.source, r.recipients),
            (DELIVERED_TO, vec!["hidden@contoso.com".into()])
        );
    }

    #[test]
    fn a_delivered_to_naming_only_the_isp_mailbox_falls_through_to_x_original_to() {
        let r = route(
            "Delivered-To: contoso-catchall@isp.example\r\n\
             X-Original-To: Dave@CONTOSO.com\r\nTo: list@lists.example\r\n\r\n",
        );
        assert_eq!(r.source, X_ORIGINAL_TO);
        assert_eq!(r.recipients, ["dave@contoso.com"]);
    }

    #[test]
    fn to_and_cc_mixed_keep_only_local_ones_in_order_without_duplicates() {
        let r = route(
            "To: \"Doe, John\" <john@contoso.com>, ext@example.net\r\n\
             Cc: Boss <BOSS@other.example>, john@CONTOSO.com,\r\n other@other.example\r\n\
             Cc: ann@contoso.local\r\n\r\n",
        );
        assert_eq!(r.source, TO_CC);
        assert_eq!(
            r.recipients,
            [
                "john@contoso.com",
                "boss@other.example",
                "ann@contoso.local"
            ]
        );
    }

    #[test]
    fn nothing_local_goes_to_the_fallback() {
        let r = route("To: someone@example.net\r\nCc: undisclosed-recipients:;\r\n\r\n");
        assert_eq!(r.source, FALLBACK);
        assert_eq!(r.recipients, ["postmaster@contoso.local"]);
        let r = route("Subject: no recipients at all\r\n\r\n");
        assert_eq!(r.recipients, ["postmaster@contoso.local"]);
        let r = recipients(
            &HeaderInfo::default(),
            &contoso(),
            "Postmaster@Contoso.local",
        );
        assert_eq!(
            r.recipients,
            ["Postmaster@Contoso.local"],
            "fallback verbatim"
        );
    }

    #[test]
    fn subdomains_and_lookalikes_are_not_local() {
        let r = route(
            "To: a@mail.contoso.com, b@contoso.com.evil.example, c@xcontoso.com, \
             boss@other.example.net\r\n\r\n",
        );
        assert_eq!(r.source, FALLBACK);
    }

    #[test]
    fn invalid_or_hostile_addresses_are_never_routed() {
        let r = route(
            "To: \"a b\"@contoso.com, x..y@contoso.com, <>, bare-local-part, \
             ok@contoso.com\r\n\r\n",
        );
        assert_eq!(r.recipients, ["ok@contoso.com"]);
        for a in [
            "a\r\nRCPT TO:<x@y>@contoso.com",
            "a b@contoso.com",
            "@contoso.com",
            "",
        ] {
            assert!(!is_local(a, &contoso()), "{a:?}");
        }
    }

    #[test]
    fn local_addresses_match_exactly_and_case_insensitively() {
        assert!(is_local("Boss@Other.Example", &contoso()));
        assert!(!is_local("boss2@other.example", &contoso()));
        assert!(is_local("anyone@CONTOSO.LOCAL", &contoso()));
    }

    #[test]
    fn group_syntax_and_folded_values_are_split() {
        let r = route("To: Team: a@contoso.com,\r\n\tb@contoso.com;, ext@example.net\r\n\r\n");
        assert_eq!(r.recipients, ["a@contoso.com", "b@contoso.com"]);
    }
}
