//! A throw-away PKI for tests: a CA and a leaf certificate made in memory with rcgen.
//!
//! Must never: be used for anything but loopback tests (the keys are not protected).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why a test PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A CA and a server certificate signed by it.
pub struct TestPki {
    /// The CA certificate, PEM: give it to clients as their trust anchor.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: CertificateDer<'static>,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl TestPki {
    /// A CA named `common_name` and a leaf valid for `names` (DNS names or IP addresses).
    pub fn generate(common_name: &str, names: &[&str]) -> Result<Self, PkiError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, common_name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate()?;
        let mut leaf =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        leaf.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
            chain: vec![leaf_cert.der().clone()],
            key_der: leaf_key.serialize_der(),
        })
    }

    /// The usual loopback PKI: a leaf for `localhost` and `127.0.0.1`.
    pub fn localhost() -> Result<Self, PkiError> {
        Self::generate("Popbridge test CA", &["localhost", "127.0.0.1"])
    }

    /// A rustls server configuration presenting the leaf.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), key)?;
        Ok(Arc::new(config))
    }

    /// A rustls client configuration trusting only this CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }
}
