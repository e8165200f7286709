//! Connections: a dialer abstraction (real TCP, or anything else a harness plugs in) and
//! TLS client configuration (system roots, an extra CA file, an explicit opt-out).
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

/// A client configuration trusting the system roots plus `ca_file`, or nothing checked at
/// all when `accept_invalid` (an explicit, logged opt-in).
pub fn client_config(
    ca_file: Option<&Path>,
    accept_invalid: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    if accept_invalid {
        tracing::warn!("TLS certificate verification is OFF (tls_accept_invalid_certs = true)");
        let cfg = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_no_client_auth();
        return Ok(Arc::new(cfg));
    }
    let mut roots = RootCertStore::empty();
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
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::CaFile {
                path: shown,
                reason: "no PEM certificate found".into(),
            });
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
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
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail("timed out".into())),
    }
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
