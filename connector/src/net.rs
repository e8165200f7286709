//! Connections: a dialer abstraction (real TCP, or anything else a harness plugs in) and
//! TLS client configuration (system roots, an extra CA file whose self-signed server
//! certificates are trusted exactly, a fingerprint pin, an explicit opt-out).
//!
//! Must never: connect anywhere a caller did not name, or skip certificate checks unless
//! `tls_accept_invalid_certs` was set explicitly.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
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
        /// `host:port` of the server.
        server: String,
        /// What went wrong and what to do, in plain words.
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
///
/// Built once per distinct trust (the pin, the opt-out, or the CA file's contents as read
/// now) and shared afterwards: connecting again, or another account with the same
/// settings, does not load the system roots again; a CA file whose contents changed (a
/// configuration reload) gets a new one.
pub fn client_config(
    ca_file: Option<&Path>,
    accept_invalid: bool,
    pin: Option<Fingerprint>,
) -> Result<Arc<ClientConfig>, TlsError> {
    /// More distinct trusts than any configuration has: the cache starts over past it.
    const MAX_CACHED: usize = 64;
    static BUILT: OnceLock<Mutex<HashMap<TrustKey, Arc<ClientConfig>>>> = OnceLock::new();
    let trust = Trust::read(ca_file, accept_invalid, pin)?;
    let key = trust.key();
    let built = BUILT.get_or_init(Default::default);
    if let Some(config) = built.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(config.clone());
    }
    let config = with_verifier(Verifier {
        check: trust.check()?,
        watch: None,
    })?;
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if built.len() >= MAX_CACHED {
        built.clear();
    }
    built.insert(key, config.clone());
    Ok(config)
}

/// What a client configuration trusts, as read from its settings now.
enum Trust {
    /// Only the certificate with this fingerprint (`tls_fingerprint`).
    Pin(Fingerprint),
    /// Anything (`tls_accept_invalid_certs`).
    Anything,
    /// The system roots, plus the certificates of a CA file (its path and contents).
    Roots(Option<(PathBuf, Vec<u8>)>),
}

/// [`Trust`] as a cache key: a CA file by the SHA-256 of its contents.
#[derive(Clone, PartialEq, Eq, Hash)]
enum TrustKey {
    Pin(Fingerprint),
    Anything,
    Roots(Option<[u8; 32]>),
}

impl Trust {
    /// The trust the settings give: a pin wins, then the opt-out (logged), then the roots
    /// with the CA file read now.
    fn read(
        ca_file: Option<&Path>,
        accept_invalid: bool,
        pin: Option<Fingerprint>,
    ) -> Result<Self, TlsError> {
        if let Some(pin) = pin {
            return Ok(Self::Pin(pin));
        }
        if accept_invalid {
            tracing::warn!("TLS certificate verification is OFF (tls_accept_invalid_certs = true)");
            return Ok(Self::Anything);
        }
        let ca = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| TlsError::CaFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Some((path.to_path_buf(), pem))
            }
            None => None,
        };
        Ok(Self::Roots(ca))
    }

    fn key(&self) -> TrustKey {
        use sha2::{Digest, Sha256};
        match self {
            Self::Pin(pin) => TrustKey::Pin(*pin),
            Self::Anything => TrustKey::Anything,
            Self::Roots(ca) => {
                TrustKey::Roots(ca.as_ref().map(|(_, pem)| Sha256::digest(pem).into()))
            }
        }
    }

    /// The certificate check behind [`client_config`].
    fn check(&self) -> Result<Check, TlsError> {
        match self {
            // The pin replaces chain validation; the name, the validity and the
            // handshake's signature are still checked.
            Self::Pin(pin) => Ok(Check::Exact(Exact {
                fingerprints: vec![*pin],
                chain: None,
                pinned: true,
            })),
            Self::Anything => Ok(Check::Anything),
            Self::Roots(ca) => roots_verifier(ca.as_ref().map(|(p, pem)| (p.as_path(), &pem[..])))
                .map(Check::Exact),
        }
    }
}

/// The same configuration as [`client_config`], plus a watch that records the certificate
/// the server presented and whether it verified (even when the handshake then fails), for
/// `diagnose`.
pub fn watched_client_config(
    ca_file: Option<&Path>,
    accept_invalid: bool,
    pin: Option<Fingerprint>,
) -> Result<(Arc<ClientConfig>, CertificateWatch), TlsError> {
    let watch = CertificateWatch::default();
    let check = match Trust::read(ca_file, accept_invalid, pin).and_then(|t| t.check()) {
        // Still show the server's certificate: nothing can verify it, and it says so.
        Err(TlsError::NoRoots) => Check::Exact(Exact {
            fingerprints: Vec::new(),
            chain: None,
            pinned: false,
        }),
        other => other?,
    };
    let verifier = Verifier {
        check,
        watch: Some(Watched {
            checked: !accept_invalid,
            watch: watch.clone(),
        }),
    };
    Ok((with_verifier(verifier)?, watch))
}

fn with_verifier(verifier: Verifier) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Chain validation against the system roots plus the certificates of `ca` (its path and
/// contents), which are also trusted exactly.
fn roots_verifier(ca: Option<(&Path, &[u8])>) -> Result<Exact, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut exact = Vec::new();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some((path, mut pem)) = ca {
        let shown = path.display().to_string();
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem) {
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
    Ok(Exact {
        fingerprints: exact,
        chain,
        pinned: false,
    })
}

/// What a handshake saw of the server's certificate.
#[derive(Debug, Clone)]
pub struct SeenCertificate {
    /// The server's own (end-entity) certificate, DER.
    pub der: Vec<u8>,
    /// `Ok` when it verified; otherwise why not, in plain words.
    pub verdict: Result<(), String>,
}

/// Where a watched configuration records the last certificate it was shown.
#[derive(Debug, Clone, Default)]
pub struct CertificateWatch(Arc<std::sync::Mutex<Option<SeenCertificate>>>);

impl CertificateWatch {
    /// The certificate seen since the last call, if a handshake got that far.
    pub fn take(&self) -> Option<SeenCertificate> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn record(&self, seen: SeenCertificate) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
    }
}

/// The certificate check of a client configuration and, for `diagnose`, the watch that
/// records what the server showed.
#[derive(Debug)]
struct Verifier {
    check: Check,
    /// `None` outside `diagnose`.
    watch: Option<Watched>,
}

/// What a [`Verifier`] checks.
#[derive(Debug)]
enum Check {
    /// Chain validation and certificates trusted exactly (see [`Exact`]).
    Exact(Exact),
    /// Nothing (`tls_accept_invalid_certs`): any certificate, any handshake signature.
    Anything,
}

/// Where a [`Verifier`] records the certificate it was shown and its verdict.
#[derive(Debug)]
struct Watched {
    /// False under `tls_accept_invalid_certs`: the check accepts anything.
    checked: bool,
    watch: CertificateWatch,
}

impl Verifier {
    /// A handshake's signature, checked by `verify` with the provider's algorithms; not
    /// checked at all under [`Check::Anything`].
    fn signature(
        &self,
        verify: impl FnOnce(
            &rustls::crypto::WebPkiSupportedAlgorithms,
        ) -> Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.check {
            Check::Exact(_) => verify(&provider().signature_verification_algorithms),
            Check::Anything => Ok(HandshakeSignatureValid::assertion()),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = match &self.check {
            Check::Exact(exact) => exact.verify(end_entity, server_name, now, |chain| {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }),
            Check::Anything => Ok(ServerCertVerified::assertion()),
        };
        if let Some(w) = &self.watch {
            let verdict = match &result {
                Ok(_) if w.checked => Ok(()),
                Ok(_) => Err("not checked (tls_accept_invalid_certs = true)".to_string()),
                Err(e) => Err(advice(e, &server_name.to_str()).unwrap_or_else(|| e.to_string())),
            };
            w.watch.record(SeenCertificate {
                der: end_entity.to_vec(),
                verdict,
            });
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(|algs| rustls::crypto::verify_tls12_signature(message, cert, dss, algs))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(|algs| rustls::crypto::verify_tls13_signature(message, cert, dss, algs))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
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

/// A server certificate chain validation refused, with its fingerprint.
#[derive(Debug)]
struct Untrusted {
    fingerprint: Fingerprint,
    cause: rustls::CertificateError,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate {}: {}", self.fingerprint, self.cause)
    }
}

impl std::error::Error for Untrusted {}

impl Exact {
    /// The server's certificate: the pin, then chain validation (`validate` with the
    /// chain verifier, given the rest of the certificates), then exact trust.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
        validate: impl FnOnce(
            &rustls::client::WebPkiServerVerifier,
        ) -> Result<ServerCertVerified, rustls::Error>,
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
            Some(chain) => validate(chain),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        };
        match chained {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(cause)) if !exact => {
                // Carries the fingerprint, so the error can say how to pin this certificate.
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(Untrusted {
                        fingerprint,
                        cause,
                    }))),
                ))
            }
            Err(e) if !exact => Err(e),
            Err(_) => {
                crate::pin::check_exact(end_entity, server_name, now)?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }
}

/// Runs a TLS handshake over `io` with the server at `host:port`, verifying
/// `server_name`, bounded by `limit`. A failure names the server and says what to do.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ClientConfig>,
    server_name: &str,
    host: &str,
    port: u16,
    io: S,
    limit: Duration,
) -> Result<tokio_rustls::client::TlsStream<S>, TlsError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TlsError::ServerName(server_name.into()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let fail = |reason: String| TlsError::Handshake {
        server: host_port(host, port),
        reason,
    };
    match tokio::time::timeout(limit, connector.connect(name, io)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => {
            let refused = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            let reason = match refused {
                Some(r) => advice(r, server_name).unwrap_or_else(|| protocol_advice(r)),
                None => io_advice(&e),
            };
            Err(fail(reason))
        }
        Err(_) => Err(fail(format!(
            "the server did not complete the handshake within {} s: check that this port \
             speaks TLS at this point (tls = \"implicit\" is usually port 995 for POP3, \
             tls = \"starttls\" port 110; SMTP STARTTLS is port 25 or 587)",
            limit.as_secs()
        ))),
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A handshake that failed for a reason other than the certificate, in plain words.
fn protocol_advice(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    match e {
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => format!(
            "the server did not answer in TLS ({e}): this port may expect plain text first \
             (use tls = \"starttls\") or no TLS at all"
        ),
        E::PeerIncompatible(_)
        | E::AlertReceived(A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity) => {
            format!(
                "the server and popbridge share no TLS version or cipher suite ({e}): popbridge \
                 needs TLS 1.2 or later with a modern cipher; ask the server's administrator \
                 to enable it"
            )
        }
        E::AlertReceived(_) => format!(
            "the server ended the handshake ({e}): its log says why; check tls_server_name \
             and that this port is the TLS one"
        ),
        _ => format!("{e}: check the server's TLS set-up and this account's TLS settings"),
    }
}

/// A handshake cut short by the connection itself, in plain words.
fn io_advice(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => format!(
            "the server closed the connection during the handshake ({e}): check that this \
             port speaks TLS at this point, and the server's log"
        ),
        _ => format!("{e}: check the network path to the server"),
    }
}

/// A refused server certificate in plain words, with what to do about it.
fn advice(e: &rustls::Error, server: &str) -> Option<String> {
    let rustls::Error::InvalidCertificate(c) = e else {
        return None;
    };
    certificate_advice(c, server, None)
}

/// [`advice`] for a refused certificate, whose fingerprint is known when `Exact` refused it.
fn certificate_advice(
    c: &rustls::CertificateError,
    server: &str,
    fingerprint: Option<Fingerprint>,
) -> Option<String> {
    use rustls::CertificateError as C;
    let trust = match fingerprint {
        Some(f) => format!(
            "put that certificate (or the CA that signed it) in ca_file, or, once the server's \
             administrator confirms this fingerprint, pin it with tls_fingerprint = \"{f}\""
        ),
        None => "put that certificate (or the CA that signed it) in ca_file, or pin it with \
                 tls_fingerprint = \"sha256:...\" (popbridge diagnose shows it)"
            .to_string(),
    };
    Some(match c {
        C::UnknownIssuer => format!(
            "the server's certificate is not signed by an authority this machine trusts \
             (self-signed, or a private CA): {trust}"
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "the server's certificate is not valid for the name {server}: connect by a name it \
             carries, or set tls_server_name to one (popbridge diagnose lists its names; a \
             certificate with a CN but no subjectAltName names no host for modern TLS clients \
             and must be re-issued with -addext subjectAltName=DNS:{server})"
        ),
        C::Expired | C::ExpiredContext { .. } => {
            "the server's certificate has expired: its administrator must renew it".into()
        }
        C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is not valid \
             yet: check this machine's clock, or wait for the certificate's start date"
            .into(),
        C::Other(other) => {
            if let Some(u) = other.0.downcast_ref::<Untrusted>() {
                return certificate_advice(&u.cause, server, Some(u.fingerprint))
                    .or_else(|| Some(format!("{}: {trust}", u.cause)));
            } else if let Some(p) = other.0.downcast_ref::<PinMismatch>() {
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

#[cfg(test)]
mod tests {
    //! The client-configuration cache: built once per distinct trust, rebuilt when a CA
    //! file's contents change.

    use super::*;
    use mock_core::pki::TestPki;

    #[test]
    fn a_trust_is_built_once_and_a_changed_ca_file_gets_a_new_one() {
        let pin = Fingerprint::of(&CertificateDer::from(vec![1u8, 2, 3]));
        let a = client_config(None, false, Some(pin)).unwrap();
        let b = client_config(None, false, Some(pin)).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same pin shares one configuration");
        let anything = client_config(None, true, None).unwrap();
        assert!(!Arc::ptr_eq(&a, &anything));

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TestPki::localhost().unwrap().ca_pem).unwrap();
        let first = client_config(Some(&ca), false, None).unwrap();
        let again = client_config(Some(&ca), false, None).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "connecting again reuses it");
        std::fs::write(&ca, TestPki::localhost().unwrap().ca_pem).unwrap();
        let reloaded = client_config(Some(&ca), false, None).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &reloaded),
            "another CA in the same file is trusted, not the cached one"
        );
        std::fs::remove_file(&ca).unwrap();
        assert!(matches!(
            client_config(Some(&ca), false, None),
            Err(TlsError::CaFile { .. })
        ));
    }
}
