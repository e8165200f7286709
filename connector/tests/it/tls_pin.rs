//! Self-signed server certificates, as small ISPs and `openssl req -x509` make them (marked
//! `CA:TRUE`): trusted when the certificate itself is in `ca_file`, or when its SHA-256
//! fingerprint is pinned with `tls_fingerprint`; a wrong pin fails closed before any
//! command (so before any password) reaches the server.

use std::sync::Arc;

use mock_pop3::{MockPop3, MockPop3Handle, ServerTls};
use mock_smtp::MockSmtp;
use popbridge::config::Config;
use popbridge::pin::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::harness::*;

/// The `account.failed` events' texts.
fn failures(events: &[popbridge::events::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            popbridge::events::Event::AccountFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

/// A self-signed `CA:TRUE` certificate for `127.0.0.1` and `localhost`, its PEM and a
/// server configuration presenting it.
fn self_signed_ca_true() -> (CertificateDer<'static>, String, Arc<rustls::ServerConfig>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![der.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    (der, cert.pem(), Arc::new(server))
}

/// Two messages behind implicit TLS with that certificate, one pass with `extra` account
/// keys; returns what was delivered and the POP3 mock.
async fn fetch_with(
    extra: impl FnOnce(&std::path::Path, &CertificateDer<'static>, &str) -> String,
) -> (usize, MockPop3Handle, Vec<popbridge::events::Event>) {
    let (der, pem, server) = self_signed_ca_true();
    let pop = pop3(
        MockPop3::builder()
            .tls(ServerTls::Implicit(server))
            .maildrop(mails(0..2, 800)),
    )
    .await;
    let smtp = smtp(MockSmtp::builder()).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = extra(dir.path(), &der, &pem);
    let text = config_text(dir.path(), &pop, &smtp, &extra, "")
        .replace("tls = \"none\"", "tls = \"implicit\"");
    let config = Config::from_str(&text, &dir.path().join("popbridge.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let s = Setup { dir, config };
    let (_, events) = s.pass(&pop, &smtp).await;
    (delivered_ids(&smtp).len(), pop, events)
}

#[tokio::test]
async fn a_ca_true_self_signed_certificate_in_ca_file_is_trusted_as_itself() {
    let (delivered, _, events) = fetch_with(|dir, _, pem| {
        let file = dir.join("isp.pem");
        std::fs::write(&file, pem).unwrap();
        format!("ca_file = \"{}\"", file.display())
    })
    .await;
    assert_eq!(delivered, 2, "{events:?}");
}

#[tokio::test]
async fn a_pinned_fingerprint_alone_is_enough() {
    let (delivered, _, events) = fetch_with(|_, der, _| {
        // Lower case, no colons: accepted as well as openssl's form.
        let hex: String = Fingerprint::of(der).to_string()[7..]
            .replace(':', "")
            .to_lowercase();
        format!("tls_fingerprint = \"{hex}\"")
    })
    .await;
    assert_eq!(delivered, 2, "{events:?}");
}

#[tokio::test]
async fn a_wrong_pin_fails_closed_before_any_command() {
    let (delivered, pop, events) =
        fetch_with(|_, _, _| format!("tls_fingerprint = \"sha256:{}\"", "00".repeat(32))).await;
    assert_eq!(delivered, 0);
    assert_eq!(count(&events, "account.failed"), 1, "{events:?}");
    // In plain words: whose certificate it is, and what to do.
    let why = failures(&events).join("\n");
    let port = pop.addr().unwrap().port();
    assert!(
        why.contains("not the one pinned by tls_fingerprint")
            && why.contains("sha256:")
            && why.contains(&format!("127.0.0.1:{port}")),
        "{why}"
    );
    // The handshake failed: the server never read a command, let alone a password.
    let transcript = pop.transcript();
    assert!(!transcript.contains("C: "), "{transcript}");
}

#[tokio::test]
async fn without_ca_file_or_pin_the_self_signed_certificate_is_refused() {
    let mut seen = None;
    let (delivered, pop, events) = fetch_with(|_, der, _| {
        seen = Some(Fingerprint::of(der));
        String::new()
    })
    .await;
    assert_eq!(delivered, 0);
    assert_eq!(count(&events, "account.failed"), 1, "{events:?}");
    let why = failures(&events).join("\n");
    let port = pop.addr().unwrap().port();
    // Where, why, and the exact line that would pin this certificate.
    assert!(
        why.contains(&format!("127.0.0.1:{port}"))
            && why.contains("ca_file")
            && why.contains(&format!("tls_fingerprint = \"{}\"", seen.unwrap()))
            && !why.contains("Other("),
        "{why}"
    );
}

#[tokio::test]
async fn implicit_tls_against_a_plain_port_says_to_use_starttls() {
    let (pop, smtp) = mocks(mails(0..2, 800)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &pop, &smtp, "", "")
        .replace("tls = \"none\"", "tls = \"implicit\"");
    let config = Config::from_str(&text, &dir.path().join("popbridge.toml")).unwrap();
    let s = Setup { dir, config };
    let (_, events) = s.pass(&pop, &smtp).await;
    assert_eq!(delivered_ids(&smtp).len(), 0);
    let why = failures(&events).join("\n");
    let port = pop.addr().unwrap().port();
    assert!(
        why.contains(&format!("TLS handshake with 127.0.0.1:{port} failed"))
            && why.contains("did not answer in TLS")
            && why.contains("tls = \"starttls\""),
        "{why}"
    );
    assert_eq!(pop.maildrop("info").unwrap().remaining.len(), 2);
}
