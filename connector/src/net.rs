//! Connections: a dialer abstraction (real TCP, or anything else a harness plugs in) and
//! TLS client configuration (system roots, an extra CA file whose self-signed server
//! certificates are trusted exactly, a fingerprint pin, an explicit opt-out).
//!
//! Must never: connect anywhere a caller did not name, or skip certificate checks unless
//! `tls_accept_invalid_certs` was set explicitly.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::pin::Fingerprint;
use tokio::net::TcpStream;

/// A byte stream the clients can talk over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed stream: plain TCP, TLS over it, or an in-memory pipe.
pub type BoxIo = Box<dyn Io>;

/// The future a dialer returns.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send + 'a>>;

/// Opens connections by host and port.
pub trait Dialer: Send + Sync {
    /// Connects to `host:port`.
    fn dial<'a>(&'a self, host: &'a str, port: u16) -> DialFuture<'a>;
}

/// The real dialer: TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial<'a>(&'a self, host: &'a str, port: u16) -> DialFuture<'a> {
        Box::pin(async move {
            let s = TcpStream::connect((host, port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxIo)
        })
    }
}

/// Dials with a timeout, mapping the failure to a message that names the peer.
pub async fn dial(
    dialer: &dyn Dialer,
    host: &str,
    port: u16,
    limit: Duration,
) -> io::Result<BoxIo> {
    match tokio::time::timeout(limit, dialer.dial(host, port)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {host}:{port} timed out"),
        )),
    }
}

/// Why a TLS configuration could not be built or a handshake failed.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No trust anchor at all (no system roots, no CA file).
    #[error("no trusted certificate authorities: install ca-certificates or set ca_file")]
    NoRoots,
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The handshake failed (certificate refused, protocol error, timeout).
    #[error("TLS handshake with {server} failed: {reason}")]
    Handshake {
        /// The name verified.
        server: String,
        /// rustls's or the I/O layer's explanation.
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the system roots plus `ca_file` (a self-signed server
/// certificate in it is trusted as exactly that certificate), only the certificate with
/// fingerprint `pin` when one is given, or nothing checked at all when `accept_invalid`
/// (an explicit, logged opt-in).
pub fn client_config(
    ca_file: Option<&Path>,
    accept_invalid: bool,
    pin: Option<Fingerprint>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    if let Some(pin) = pin {
        // The pin replaces chain validation; the name, the validity and the handshake's
        // signature are still checked.
        let cfg = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Exact {
                fingerprints: vec![pin],
                chain: None,
                pinned: true,
            }))
            .with_no_client_auth();
        return Ok(Arc::new(cfg));
    }
    if accept_invalid {
        tracing::warn!("TLS certificate verification is OFF (tls_accept_invalid_certs = true)");
        let cfg = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_no_client_auth();
        return Ok(Arc::new(cfg));
    }
    let mut roots = RootCertStore::empty();
    let mut exact = Vec::new();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| TlsError::CaFile {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| TlsError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            exact.push(Fingerprint::of(&cert));
            // A certificate WebPKI cannot use as an anchor is still trusted exactly.
            let _ = roots.add(cert);
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::CaFile {
                path: shown,
                reason: "no PEM certificate found".into(),
            });
        }
    }
    if roots.is_empty() && exact.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let chain = if roots.is_empty() {
        None
    } else {
        Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?,
        )
    };
    let verifier = Exact {
        fingerprints: exact,
        chain,
        pinned: false,
    };
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    ))
}

/// Chain validation (when there are roots), and certificates trusted exactly: those of
/// `ca_file` that chain validation refuses as a server's (self-signed, often `CA:TRUE`), or
/// a pin (then without chain validation). An exact certificate must still carry the name
/// and be within its validity; the handshake's signature is always checked.
#[derive(Debug)]
struct Exact {
    fingerprints: Vec<Fingerprint>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// `tls_fingerprint`: a certificate that does not match is refused as a pin mismatch.
    pinned: bool,
}

/// A server certificate that does not match `tls_fingerprint`: its own fingerprint.
#[derive(Debug)]
struct PinMismatch(Fingerprint);

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate {} does not match tls_fingerprint", self.0)
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for Exact {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        let exact = self.fingerprints.contains(&fingerprint);
        if self.pinned && !exact {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch(
                    fingerprint,
                )))),
            ));
        }
        let chained = match &self.chain {
            Some(chain) => {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        };
        match chained {
            Ok(v) => Ok(v),
            Err(e) if !exact => Err(e),
            Err(_) => {
                crate::pin::check_exact(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Runs a TLS handshake over `io`, verifying `server_name`, bounded by `limit`.
pub async fn handshake(
    config: Arc<ClientConfig>,
    server_name: &str,
    io: BoxIo,
    limit: Duration,
) -> Result<BoxIo, TlsError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TlsError::ServerName(server_name.into()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let fail = |reason: String| TlsError::Handshake {
        server: server_name.to_string(),
        reason,
    };
    match tokio::time::timeout(limit, connector.connect(name, io)).await {
        Ok(Ok(tls)) => Ok(Box::new(tls)),
        Ok(Err(e)) => {
            let advice = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(|r| advice(r, server_name));
            Err(fail(advice.unwrap_or_else(|| e.to_string())))
        }
        Err(_) => Err(fail("timed out".into())),
    }
}

/// A refused server certificate in plain words, with what to do about it.
fn advice(e: &rustls::Error, server: &str) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(c) = e else {
        return None;
    };
    let trust = "put that certificate (or the CA that signed it) in ca_file, or pin it with \
                 tls_fingerprint = \"sha256:...\" (popbridge diagnose shows it)";
    Some(match c {
        C::UnknownIssuer => format!(
            "the server's certificate is not signed by an authority this machine trusts \
             (self-signed, or a private CA): {trust}"
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "the server's certificate is not valid for the name {server}: connect by a name it \
             carries, or set tls_server_name to one"
        ),
        C::Expired | C::ExpiredContext { .. } => {
            "the server's certificate has expired: its administrator must renew it".into()
        }
        C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is not valid \
             yet: check this machine's clock, or wait for the certificate's start date"
            .into(),
        C::Other(other) => {
            if let Some(p) = other.0.downcast_ref::<PinMismatch>() {
                format!(
                    "the server's certificate is {}, not the one pinned by tls_fingerprint: if \
                     the server's certificate was replaced on purpose, pin the new one; \
                     otherwise the connection may be intercepted",
                    p.0
                )
            } else if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) {
                format!(
                    "the server presents a CA certificate as its own (typical of a self-signed \
                     certificate made with openssl req -x509): {trust}"
                )
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

/// The verifier behind `tls_accept_invalid_certs`: accepts any certificate.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens a stream for one route of a [`MemoryDialer`].
pub type Connect = Arc<dyn Fn() -> BoxIo + Send + Sync>;

/// A dialer over in-memory routes (host, port) → stream factory, for deterministic tests
/// under a paused clock: real sockets would let tokio's auto-advance run ahead.
#[derive(Default)]
pub struct MemoryDialer {
    routes: std::sync::Mutex<std::collections::HashMap<(String, u16), Connect>>,
}

impl MemoryDialer {
    /// No routes yet: every dial is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections to `host:port` get a stream from `connect`.
    pub fn route(&self, host: &str, port: u16, connect: Connect) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((host.to_string(), port), connect);
    }
}

impl Dialer for MemoryDialer {
    fn dial<'a>(&'a self, host: &'a str, port: u16) -> DialFuture<'a> {
        let route = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(host.to_string(), port))
            .cloned();
        Box::pin(async move {
            match route {
                Some(connect) => Ok(connect()),
                None => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("no route to {host}:{port}"),
                )),
            }
        })
    }
}
