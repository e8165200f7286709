//! Envelope addresses: the reverse path of MAIL FROM and the mailbox of RCPT TO.

use std::fmt;

use thiserror::Error;

/// Why an address is unusable in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    /// Nothing between the brackets where a mailbox is required.
    #[error("empty address")]
    Empty,
    /// A local part with no `@domain` (the one case Exchange's DefaultDomain repairs).
    #[error("address {0:?} has no domain")]
    MissingDomain(String),
    /// Anything else wrong with it.
    #[error("invalid address {address:?}: {reason}")]
    Invalid {
        /// The address as given (shortened).
        address: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A mailbox `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part, as written (quoted form kept).
    pub local: String,
    /// The domain or address literal.
    pub domain: String,
}

/// A reverse path: the null sender `<>` or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Path {
    /// `<>`: bounces and other auto-replies.
    Null,
    /// A mailbox.
    Mailbox(Mailbox),
}

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

impl Mailbox {
    /// Parses `local@domain` (no brackets); `MissingDomain` when there is no `@`.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let invalid = |reason| AddressError::Invalid {
            address: s.chars().take(80).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.chars()
            .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
        {
            return Err(invalid("contains a space, bracket or control character"));
        }
        let Some(at) = s.rfind('@') else {
            validate_local(s).map_err(invalid)?;
            return Err(AddressError::MissingDomain(s.to_string()));
        };
        let (local, domain) = (&s[..at], &s[at + 1..]);
        validate_local(local).map_err(invalid)?;
        validate_domain(domain).map_err(invalid)?;
        Ok(Self {
            local: local.to_string(),
            domain: domain.to_string(),
        })
    }

    /// True when the address needs SMTPUTF8 (non-ASCII characters).
    pub fn needs_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

fn validate_local(local: &str) -> Result<(), &'static str> {
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.len() > MAX_LOCAL {
        return Err("local part longer than 64 octets");
    }
    if local.starts_with('"') {
        let ok =
            local.len() >= 2 && local.ends_with('"') && !local[1..local.len() - 1].contains('"');
        return if ok {
            Ok(())
        } else {
            Err("malformed quoted local part")
        };
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("misplaced dot in local part");
    }
    if !local.chars().all(|c| c == '.' || is_atext(c)) {
        return Err("character not allowed in local part");
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("empty domain");
    }
    if domain.len() > MAX_DOMAIN {
        return Err("domain longer than 255 octets");
    }
    if let Some(lit) = domain.strip_prefix('[') {
        return if lit.ends_with(']') && lit.len() > 1 {
            Ok(())
        } else {
            Err("malformed address literal")
        };
    }
    for label in domain.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("empty or over-long domain label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("domain label starts or ends with a hyphen");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        {
            return Err("character not allowed in domain");
        }
    }
    Ok(())
}

impl Path {
    /// Parses the text between MAIL FROM's brackets (`""` is the null path).
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Ok(Self::Null);
        }
        // A source route `@a,@b:user@host` is obsolete; keep only the mailbox (RFC 5321 C).
        let s = match (s.starts_with('@'), s.find(':')) {
            (true, Some(p)) => &s[p + 1..],
            _ => s,
        };
        Mailbox::parse(s).map(Self::Mailbox)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl fmt::Display for Path {
    /// The address without brackets; empty for the null path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => Ok(()),
            Self::Mailbox(m) => m.fmt(f),
        }
    }
}

/// The text between the angle brackets of MAIL FROM or RCPT TO as a client sends it: any
/// text without a CR or LF, so it always stays one path on one command line. Whether it
/// is a valid mailbox is for the server to judge ([`Path`] and [`Mailbox`] parse it); the
/// empty text is the null reverse path `<>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EnvelopeAddress(String);

impl EnvelopeAddress {
    /// `text` as an envelope address; `Invalid` when it holds a CR or LF.
    pub fn new(text: impl Into<String>) -> Result<Self, AddressError> {
        let text = text.into();
        if text.contains(['\r', '\n']) {
            return Err(AddressError::Invalid {
                address: text.chars().take(80).collect(),
                reason: "contains a CR or LF",
            });
        }
        Ok(Self(text))
    }

    /// The null reverse path `<>`.
    pub fn null() -> Self {
        Self::default()
    }

    /// The address text, without brackets.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address text, without brackets.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for EnvelopeAddress {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for EnvelopeAddress {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EnvelopeAddress {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<Mailbox> for EnvelopeAddress {
    fn from(m: Mailbox) -> Self {
        // A parsed mailbox holds no control character.
        Self(m.to_string())
    }
}

impl From<Path> for EnvelopeAddress {
    fn from(p: Path) -> Self {
        Self(p.to_string())
    }
}

impl From<EnvelopeAddress> for String {
    fn from(a: EnvelopeAddress) -> Self {
        a.0
    }
}

impl fmt::Display for EnvelopeAddress {
    /// The address without brackets; empty for the null path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_addresses() {
        let m = Mailbox::parse("john.doe+tag@mail.example.com").unwrap();
        assert_eq!(
            (m.local.as_str(), m.domain.as_str()),
            ("john.doe+tag", "mail.example.com")
        );
        assert!(
            Mailbox::parse("\"odd local\"@example.com").is_err(),
            "space needs quoting rules we refuse"
        );
        assert!(Mailbox::parse("\"odd\"@example.com").is_ok());
        assert!(Mailbox::parse("a@[127.0.0.1]").is_ok());
        assert!(Mailbox::parse("jörg@example.de").unwrap().needs_utf8());
        assert_eq!(Path::parse("").unwrap(), Path::Null);
        assert_eq!(
            Path::parse("@relay.example:a@b.example")
                .unwrap()
                .to_string(),
            "a@b.example"
        );
    }

    #[test]
    fn a_missing_domain_is_told_apart_from_other_faults() {
        assert_eq!(
            Mailbox::parse("user"),
            Err(AddressError::MissingDomain("user".into()))
        );
        for bad in [
            "user@",
            "@example.com",
            "a..b@example.com",
            "a@-x.com",
            "a@x..com",
            "a b@c.d",
            "a@b@",
            ".a@b.c",
        ] {
            assert!(
                matches!(Mailbox::parse(bad), Err(AddressError::Invalid { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Mailbox::parse(&"x".repeat(65)),
            Err(AddressError::Invalid { .. })
        ));
        assert_eq!(Mailbox::parse(""), Err(AddressError::Empty));
    }

    #[test]
    fn an_envelope_address_never_holds_a_line_end() {
        for bad in ["a@b\r\nRCPT TO:<x@y>", "a\r", "\nb@c"] {
            assert!(
                matches!(EnvelopeAddress::new(bad), Err(AddressError::Invalid { .. })),
                "{bad:?}"
            );
        }
        // Anything else goes: the server judges it (the sbs2008 profile sends raw headers).
        for odd in ["accounts", "a..b@example.net", "\"a>b\"@x", ""] {
            assert_eq!(EnvelopeAddress::new(odd).unwrap(), odd);
        }
        assert_eq!(EnvelopeAddress::null(), "");
        let m = Mailbox::parse("a@b.example").unwrap();
        assert_eq!(EnvelopeAddress::from(m), "a@b.example");
        assert_eq!(EnvelopeAddress::from(Path::Null).as_str(), "");
    }
}
