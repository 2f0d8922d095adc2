//! Certificate verification for both sides of a cordon hop, and why a handshake failed.
//!
//! Both sides check the chain to our CA and the validity period (webpki does), then that the
//! certificate carries exactly one URI SAN, a SPIFFE ID in our trust domain; the client side also
//! checks it is the service it dialled. Our own refusals travel inside rustls errors as
//! [`SpiffeError`], so [`RejectReason::classify`] can name them for logs and metrics.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ServiceId, ServiceName, TrustDomain};

/// A certificate that chains to our CA but does not name an acceptable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// No URI SAN at all.
    #[error("the certificate has no URI SAN (no SPIFFE ID)")]
    NoUriSan,
    /// More than one URI SAN: the identity would be ambiguous.
    #[error("the certificate has {0} URI SANs; exactly one SPIFFE ID is allowed")]
    ManyUriSans(usize),
    /// The URI is not a cordon service identity.
    #[error("the certificate's URI SAN is not a cordon identity: {0}")]
    NotSpiffe(String),
    /// A SPIFFE ID of another trust domain.
    #[error("the certificate is for trust domain {found}, not {expected}")]
    ForeignTrustDomain { found: String, expected: String },
    /// The server is another service than the one dialled.
    #[error("dialled {expected} but the server is {found}")]
    UnexpectedService { found: String, expected: String },
    /// The certificate could not be parsed.
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
}

/// Why a peer's certificate (or a handshake) was refused. The label goes into logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    UnknownCa,
    Expired,
    NotYetValid,
    NoUriSan,
    ManyUriSans,
    ForeignTrustDomain,
    UnexpectedService,
    NoCertificate,
    BadCertificate,
    Protocol,
    Timeout,
    PlaintextInEnforce,
    /// The leaf's serial or host is in the revocation list in force (refused by the decision).
    Revoked,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownCa => "unknown_ca",
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::NoUriSan => "no_uri_san",
            RejectReason::ManyUriSans => "many_uri_sans",
            RejectReason::ForeignTrustDomain => "foreign_trust_domain",
            RejectReason::UnexpectedService => "unexpected_service",
            RejectReason::NoCertificate => "no_certificate",
            RejectReason::BadCertificate => "bad_certificate",
            RejectReason::Protocol => "protocol",
            RejectReason::Timeout => "timeout",
            RejectReason::PlaintextInEnforce => "plaintext_in_enforce",
            RejectReason::Revoked => "revoked",
        }
    }

    /// Classifies a failed tokio-rustls handshake: our own verifier's refusal on this side, or the
    /// alert the peer sent when its verifier refused us.
    pub fn classify(err: &std::io::Error) -> RejectReason {
        if err.kind() == std::io::ErrorKind::TimedOut {
            return RejectReason::Timeout;
        }
        match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            Some(e) => Self::of_rustls(e),
            None => RejectReason::Protocol,
        }
    }

    /// Classifies a rustls error.
    pub fn of_rustls(err: &Error) -> RejectReason {
        match err {
            Error::NoCertificatesPresented => RejectReason::NoCertificate,
            Error::InvalidCertificate(c) => match c {
                // A bad signature means a CA of the same name that is not ours: unknown all the same.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => RejectReason::UnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => RejectReason::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    RejectReason::NotYetValid
                }
                CertificateError::Other(OtherError(inner)) => match inner.downcast_ref::<SpiffeError>() {
                    Some(SpiffeError::NoUriSan | SpiffeError::NotSpiffe(_)) => RejectReason::NoUriSan,
                    Some(SpiffeError::ManyUriSans(_)) => RejectReason::ManyUriSans,
                    Some(SpiffeError::ForeignTrustDomain { .. }) => RejectReason::ForeignTrustDomain,
                    Some(SpiffeError::UnexpectedService { .. }) => RejectReason::UnexpectedService,
                    _ => RejectReason::BadCertificate,
                },
                _ => RejectReason::BadCertificate,
            },
            Error::AlertReceived(alert) => match alert {
                AlertDescription::UnknownCA => RejectReason::UnknownCa,
                AlertDescription::CertificateExpired => RejectReason::Expired,
                AlertDescription::CertificateRequired => RejectReason::NoCertificate,
                AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate => RejectReason::BadCertificate,
                _ => RejectReason::Protocol,
            },
            _ => RejectReason::Protocol,
        }
    }
}

fn refuse(e: SpiffeError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The one SPIFFE ID of a DER certificate, checked against `trust_domain`.
pub fn spiffe_id_of(
    cert: &CertificateDer<'_>,
    trust_domain: Option<&TrustDomain>,
) -> Result<ServiceId, SpiffeError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| SpiffeError::Unparsable(e.to_string()))?;
    spiffe_id_in(&x509, trust_domain)
}

fn spiffe_id_in(
    x509: &x509_parser::certificate::X509Certificate<'_>,
    trust_domain: Option<&TrustDomain>,
) -> Result<ServiceId, SpiffeError> {
    use x509_parser::prelude::GeneralName;
    let uris: Vec<&str> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(SpiffeError::Unparsable(e.to_string())),
    };
    let uri = match uris.as_slice() {
        [] => return Err(SpiffeError::NoUriSan),
        [one] => *one,
        many => return Err(SpiffeError::ManyUriSans(many.len())),
    };
    let id = ServiceId::parse(uri).map_err(|e| SpiffeError::NotSpiffe(e.to_string()))?;
    if let Some(td) = trust_domain
        && id.trust_domain() != td
    {
        return Err(SpiffeError::ForeignTrustDomain {
            found: id.trust_domain().to_string(),
            expected: td.to_string(),
        });
    }
    Ok(id)
}

/// The peer of a finished server-side handshake (full or resumed) as the decision needs it: its
/// SPIFFE ID, its certificate's validity, serial and host (read once here, for the revocation
/// check of every later decision), and `bundle`, the trust bundle the server config that
/// accepted it verifies against. Also its chain, to verify again if the bundle changes while the
/// connection is open. None when the peer presented no usable certificate.
pub fn peer_of(
    conn: &rustls::CommonState,
    bundle: crate::base::BundleId,
) -> Option<(crate::base::Peer, Vec<CertificateDer<'static>>)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let chain = conn.peer_certificates()?;
    let (_, x509) = X509Certificate::from_der(chain.first()?.as_ref()).ok()?;
    let id = spiffe_id_in(&x509, None).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let peer = crate::base::Peer {
        id,
        not_before: at(x509.validity().not_before),
        not_after: at(x509.validity().not_after),
        bundle,
        serial: super::issuer::serial_hex(x509.raw_serial()).into(),
        host: super::host_of(chain.first()?).map(|h| h.as_str().into()),
    };
    Some((peer, chain.to_vec()))
}

/// Server side: requires a client certificate from our CA naming a service of our trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
}

impl SpiffeClientVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: TrustDomain,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self { inner, trust_domain })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id_of(end_entity, Some(&self.trust_domain)).map_err(refuse)?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: requires the server to chain to our CA and to be exactly the service dialled.
/// The TLS server name is ignored: our certificates carry a SPIFFE ID, not a DNS name.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: ServiceId,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, expected: ServiceId, provider: Arc<CryptoProvider>) -> Self {
        Self { roots, expected, provider }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = spiffe_id_of(end_entity, Some(self.expected.trust_domain())).map_err(refuse)?;
        if id.service() != self.expected.service() {
            return Err(refuse(SpiffeError::UnexpectedService {
                found: id.to_string(),
                expected: self.expected.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS server name to dial a service with: `<service>.cordon.invalid`. Only the session cache
/// uses it (verification checks the SPIFFE ID), so it must be distinct per service.
pub fn server_name(service: &ServiceName) -> ServerName<'static> {
    let name = format!("{}.cordon.invalid", service.as_str());
    ServerName::try_from(name).unwrap_or_else(|_| {
        // A name DNS cannot carry (a leading dash, say): hex-encode it into 60-byte labels.
        let hex: String = service.as_str().bytes().map(|b| format!("{b:02x}")).collect();
        let labels: Vec<&str> =
            hex.as_bytes().chunks(60).filter_map(|c| std::str::from_utf8(c).ok()).collect();
        ServerName::try_from(format!("x{}.cordon.invalid", labels.join(".x")))
            .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
    })
}

/// The verified SPIFFE ID of the peer of a finished handshake.
pub fn peer_service_id(conn: &rustls::CommonState) -> Option<ServiceId> {
    conn.peer_certificates()?.first().and_then(|c| spiffe_id_of(c, None).ok())
}
