//! A server certificate described for people: subject, issuer, the names it is valid for,
//! its validity period and its SHA-256 fingerprint, as `popbridge diagnose` shows them.
//!
//! Responsible for: reading those fields out of a DER certificate a server presented, and
//! the configuration line that would pin it.
//! Must never: decide whether a certificate is trusted (that is `net` and `pin`), fail or
//! panic on odd certificate bytes (an unreadable field is shown as such), or let control
//! characters from a hostile certificate reach the terminal.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pin::Fingerprint;

/// What a server certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's distinguished name, e.g. `CN=mail.example.com`.
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// True when subject and issuer are the same name (a self-signed certificate).
    pub self_signed: bool,
    /// True when the certificate says it is a CA (`basicConstraints CA:TRUE`).
    pub ca: bool,
    /// The subjectAltName entries, e.g. `DNS:mail.example.com`, `IP:192.0.2.1`.
    pub names: Vec<String>,
    /// The start of the validity period, `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_before: String,
    /// The end of the validity period, `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_after: String,
    /// The SHA-256 fingerprint of the whole certificate.
    pub fingerprint: Fingerprint,
}

/// Shown for a field the certificate does not let us read.
const UNREADABLE: &str = "(unreadable)";

impl CertificateInfo {
    /// Reads a DER certificate; fields that cannot be parsed read "(unreadable)".
    pub fn from_der(der: &[u8]) -> Self {
        let fingerprint = Fingerprint::of(der);
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return Self {
                subject: UNREADABLE.into(),
                issuer: UNREADABLE.into(),
                self_signed: false,
                ca: false,
                names: Vec::new(),
                not_before: UNREADABLE.into(),
                not_after: UNREADABLE.into(),
                fingerprint,
            };
        };
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san.value.general_names.iter().map(general_name).collect(),
            Ok(None) => Vec::new(),
            Err(_) => vec![UNREADABLE.into()],
        };
        let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        Self {
            subject: printable(&cert.subject().to_string()),
            issuer: printable(&cert.issuer().to_string()),
            self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
            ca,
            names,
            not_before: utc(cert.validity().not_before.timestamp()),
            not_after: utc(cert.validity().not_after.timestamp()),
            fingerprint,
        }
    }

    /// The configuration line that pins exactly this certificate.
    pub fn pin_line(&self) -> String {
        format!("tls_fingerprint = \"{}\"", self.fingerprint)
    }
}

impl fmt::Display for CertificateInfo {
    /// Several indented lines: subject, issuer, names, validity, fingerprint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "    subject: {}", self.subject)?;
        let mut notes = Vec::new();
        if self.self_signed {
            notes.push("self-signed");
        }
        if self.ca {
            notes.push("marked CA:TRUE");
        }
        if notes.is_empty() {
            writeln!(f, "    issuer: {}", self.issuer)?;
        } else {
            writeln!(f, "    issuer: {} ({})", self.issuer, notes.join(", "))?;
        }
        if self.names.is_empty() {
            writeln!(f, "    names: none (no subjectAltName)")?;
        } else {
            writeln!(f, "    names: {}", self.names.join(", "))?;
        }
        writeln!(f, "    valid: {} to {}", self.not_before, self.not_after)?;
        writeln!(f, "    fingerprint: {}", self.fingerprint)
    }
}

/// One subjectAltName entry as `KIND:value`.
fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(s) => format!("DNS:{}", printable(s)),
        GeneralName::IPAddress(b) => match b.len() {
            4 => {
                let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
                format!("IP:{}", std::net::Ipv4Addr::from(a))
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                format!("IP:{}", std::net::Ipv6Addr::from(a))
            }
            _ => format!("IP:{UNREADABLE}"),
        },
        GeneralName::RFC822Name(s) => format!("email:{}", printable(s)),
        GeneralName::URI(s) => format!("URI:{}", printable(s)),
        other => printable(&format!("{other:?}")),
    }
}

/// `s` with control characters shown as `\u{..}` escapes.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Seconds since 1970 as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: i64) -> String {
    crate::report::rfc3339(secs)
        .replacen('T', " ", 1)
        .replace('Z', " UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed_ca(names: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mail.example.test");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2036, 12, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_self_signed_ca_certificate_is_described_field_by_field() {
        let der = self_signed_ca(&["mail.example.test", "127.0.0.1"]);
        let info = CertificateInfo::from_der(&der);
        assert_eq!(info.subject, "CN=mail.example.test");
        assert_eq!(info.issuer, "CN=mail.example.test");
        assert!(info.self_signed);
        assert!(info.ca);
        assert_eq!(info.names, ["DNS:mail.example.test", "IP:127.0.0.1"]);
        assert_eq!(info.not_before, "2026-01-02 00:00:00 UTC");
        assert_eq!(info.not_after, "2036-12-31 00:00:00 UTC");
        assert_eq!(info.fingerprint, Fingerprint::of(&der));
        let shown = info.to_string();
        assert!(shown.contains("issuer: CN=mail.example.test (self-signed, marked CA:TRUE)"));
        assert_eq!(
            info.pin_line(),
            format!("tls_fingerprint = \"{}\"", Fingerprint::of(&der))
        );
        // The line parses back to the same pin.
        let value = info.pin_line();
        let quoted = value.split('"').nth(1).unwrap();
        assert_eq!(Fingerprint::parse(quoted).unwrap(), info.fingerprint);
    }

    #[test]
    fn garbage_is_described_as_unreadable_not_panicked_on() {
        for der in [&b""[..], b"\x30\x03\x02\x01", &[0xff; 64]] {
            let info = CertificateInfo::from_der(der);
            assert_eq!(info.subject, UNREADABLE);
            assert_eq!(info.fingerprint, Fingerprint::of(der));
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\x1b[2Jb\r\n"), "a\\u{1b}[2Jb\\u{d}\\u{a}");
    }

    #[test]
    fn calendar_dates_round_the_epoch_and_leap_days() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
