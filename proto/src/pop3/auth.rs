//! The POP3 login methods (RFC 1939 USER/PASS and APOP, RFC 5034 SASL mechanisms), one
//! name for the connector's configuration and the mock's maildrops.
//!
//! Responsible for: the methods, their configuration spelling (`user`, `cram-md5`, `spa`
//! for NTLM) and their SASL mechanism names. Must never: hold or compute credentials.

use std::fmt;

/// A way to log in to a POP3 server (the connector's `auth`, a mock maildrop's accepted
/// methods). Spelt in kebab case in configuration and scenario files; `spa` is NTLM.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// USER / PASS.
    User,
    /// APOP (MD5 digest of the greeting's timestamp; needs a timestamp in the greeting).
    Apop,
    /// SASL PLAIN.
    Plain,
    /// SASL LOGIN.
    Login,
    /// SASL CRAM-MD5.
    CramMd5,
    /// SASL XOAUTH2 (the secret is an OAuth access token).
    Xoauth2,
    /// AUTH NTLM, NTLMv2 only: Outlook's "Secure Password Authentication" (SPA), which
    /// Exchange's POP3 service speaks. The user name is `DOMAIN\user`, a UPN, or a bare
    /// user name.
    #[serde(alias = "spa")]
    Ntlm,
}

impl AuthMethod {
    /// Every method, in the order servers usually list them.
    pub const ALL: [AuthMethod; 7] = [
        AuthMethod::User,
        AuthMethod::Apop,
        AuthMethod::Plain,
        AuthMethod::Login,
        AuthMethod::CramMd5,
        AuthMethod::Xoauth2,
        AuthMethod::Ntlm,
    ];

    /// The SASL mechanism name, for the methods that are SASL.
    pub fn sasl_name(self) -> Option<&'static str> {
        match self {
            Self::Plain => Some("PLAIN"),
            Self::Login => Some("LOGIN"),
            Self::CramMd5 => Some("CRAM-MD5"),
            Self::Xoauth2 => Some("XOAUTH2"),
            Self::Ntlm => Some("NTLM"),
            Self::User | Self::Apop => None,
        }
    }

    /// The method for a SASL mechanism name (any case).
    pub fn from_sasl(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.sasl_name().is_some_and(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The name configuration and scenario files use (`cram-md5`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Apop => "apop",
            Self::Plain => "plain",
            Self::Login => "login",
            Self::CramMd5 => "cram-md5",
            Self::Xoauth2 => "xoauth2",
            Self::Ntlm => "ntlm",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sasl_names_are_found_in_any_case() {
        for m in AuthMethod::ALL {
            assert_eq!(m.to_string(), m.as_str());
            if let Some(n) = m.sasl_name() {
                assert_eq!(AuthMethod::from_sasl(&n.to_ascii_lowercase()), Some(m));
            }
        }
        assert_eq!(AuthMethod::from_sasl("USER"), None);
    }
}
