//! Trusting one exact server certificate: a SHA-256 pin (`tls_fingerprint`), or a
//! self-signed certificate given in `ca_file` that chain validation refuses (made with
//! `openssl req -x509`, which marks it `CA:TRUE`, so WebPKI will not take it as a server's).
//!
//! Responsible for: parsing and showing fingerprints, and checking an exactly trusted
//! certificate for what chain validation would still have checked: the server name
//! (subjectAltName, through rustls) and the validity period (read from the certificate's
//! DER here, since WebPKI only checks it while building a chain).
//! Must never: accept a certificate whose fingerprint does not match exactly, skip the name
//! or validity check, or panic on any certificate bytes.

use std::fmt;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// A certificate's SHA-256 fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Parses `sha256:AB:CD:…` (the `sha256:` prefix optional, colons optional, any case).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let hexits = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hexits: String = hexits.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        if hexits.len() != 64 || hex::decode_to_slice(&hexits, &mut out).is_err() {
            return Err(format!(
                "{text:?} is not a SHA-256 fingerprint: 64 hexadecimal digits, colons allowed, \
                 optionally after \"sha256:\" (popbridge diagnose prints the server's)"
            ));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    /// `sha256:` then the octets in upper-case hex separated by colons, as openssl shows them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks an exactly trusted certificate for the name the client asked for and for being
/// valid `now`.
pub fn check_exact(
    der: &CertificateDer<'_>,
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(der)?;
    rustls::client::verify_server_name(&parsed, name)?;
    let (not_before, not_after) = validity(der).ok_or(rustls::Error::InvalidCertificate(
        rustls::CertificateError::BadEncoding,
    ))?;
    let now = now.as_secs() as i64;
    if now < not_before {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidYet,
        ));
    }
    if now > not_after {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ));
    }
    Ok(())
}

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// notBefore and notAfter of a certificate, in seconds since 1970.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // [0] version (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, rest) = element(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
        let (_, _, rest) = element(tbs)?;
        tbs = rest;
    } else {
        tbs = rest;
    }
    let (_, _, rest) = element(tbs)?; // signature
    let (_, _, rest) = element(rest)?; // issuer
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (t1, before, rest) = element(validity)?;
    let (t2, after, _) = element(rest)?;
    Some((time(t1, before)?, time(t2, after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let (month, day) = (digits(&rest[0..2])?, digits(&rest[2..4])?);
    let (h, m, s) = (
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `pop.isp.example`, valid from the start of the first
    /// year to the start of the second.
    fn self_signed(is_ca: bool, years: (i32, i32)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["pop.isp.example".into()]).unwrap();
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// 2026-06-01, a fixed "now".
    fn mid_2026() -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_780_272_000))
    }

    fn name(s: &str) -> ServerName<'static> {
        ServerName::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn fingerprints_parse_with_or_without_prefix_colons_and_case() {
        let fp = Fingerprint::of(b"x");
        let shown = fp.to_string();
        assert!(shown.starts_with("sha256:") && shown.len() == 7 + 32 * 3 - 1);
        for text in [
            shown.clone(),
            shown.to_lowercase(),
            shown.trim_start_matches("sha256:").replace(':', ""),
            format!("SHA256:{}", shown[7..].replace(':', "").to_lowercase()),
        ] {
            assert_eq!(Fingerprint::parse(&text), Ok(fp), "{text}");
        }
        for bad in [
            "",
            "sha256:",
            "sha1:AB",
            &shown[..shown.len() - 3],
            "zz".repeat(32).as_str(),
        ] {
            let e = Fingerprint::parse(bad).unwrap_err();
            assert!(e.contains("64 hexadecimal digits"), "{e}");
        }
    }

    #[test]
    fn a_ca_true_self_signed_certificate_passes_for_its_name_while_valid() {
        let cert = self_signed(true, (2025, 2027));
        let now = mid_2026();
        assert_eq!(check_exact(&cert, &name("pop.isp.example"), now), Ok(()));
        assert!(check_exact(&cert, &name("other.example"), now).is_err());
    }

    #[test]
    fn an_expired_or_not_yet_valid_certificate_fails() {
        let now = mid_2026();
        let expired = self_signed(false, (2020, 2026));
        assert_eq!(
            check_exact(&expired, &name("pop.isp.example"), now),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            ))
        );
        let early = self_signed(false, (2027, 2030));
        assert_eq!(
            check_exact(&early, &name("pop.isp.example"), now),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet
            ))
        );
    }

    #[test]
    fn times_read_as_calendar_seconds() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(0x18, b"20000301000000Z"), Some(951_868_800));
        assert_eq!(time(0x17, b"701301000000Z"), None);
        assert_eq!(time(0x17, b"7001010000000"), None);
        assert_eq!(time(0x18, b"700101000000Z"), None);
    }

    #[test]
    fn garbage_certificates_are_refused_not_panicked_on() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x00",
        ] {
            assert_eq!(validity(bytes), None);
            let der = CertificateDer::from(bytes.to_vec());
            assert!(check_exact(&der, &name("a.example"), mid_2026()).is_err());
        }
    }
}
