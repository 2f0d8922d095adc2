//! The TLS pieces of the signing service's protocol: what the service presents and accepts, and
//! how an agent authenticates the service. Must not decide who may have a leaf: that is the
//! request handler's job, which can name its reasons.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::cas::CaSet;
use crate::pki::{PkiError, TrustDomain};

/// Lifetime of the service's own certificate; it is re-issued daily and at every rotation step.
const SERVICE_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// The service's own certificate, swapped at rotation.
#[derive(Debug, Default)]
pub(super) struct OwnCert(RwLock<Option<Arc<CertifiedKey>>>);

impl OwnCert {
    pub(super) fn set(&self, set: &CaSet, provider: &Arc<CryptoProvider>) -> Result<(), PkiError> {
        let (chain, key) = set.service_cert(SERVICE_CERT_TTL)?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| PkiError::Config(format!("issuer key: {e}")))?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, signing)));
        Ok(())
    }
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Accepts any client certificate whose key signed the handshake, or none; the request handler
/// checks the rest and says why it refuses.
#[derive(Debug)]
pub(super) struct ProvesKey(pub(super) Arc<CryptoProvider>);

impl ClientCertVerifier for ProvesKey {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents the current certificate to the service.
#[derive(Debug)]
pub(super) struct Shows(pub(super) Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Shows {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The service must chain to the bundle and carry the issuer URI of our trust domain. With no
/// trust domain known yet (`uri` None), any issuer URI (`spiffe://TD/cordon/issuer`) of a
/// certificate that chains to the bundle is accepted, and its trust domain kept in `learned`.
#[derive(Debug)]
pub(super) struct IssuerVerifier {
    pub(super) roots: Arc<RootCertStore>,
    pub(super) uri: Option<String>,
    pub(super) provider: Arc<CryptoProvider>,
    pub(super) learned: std::sync::Mutex<Option<TrustDomain>>,
}

impl ServerCertVerifier for IssuerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let wanted = self.uri.as_deref().unwrap_or("spiffe://TD/cordon/issuer");
        let bad = || rustls::Error::General(format!("the server is not the signing service ({wanted})"));
        let (_, x509) = X509Certificate::from_der(end_entity.as_ref()).map_err(|_| bad())?;
        let san = x509.subject_alternative_name().ok().flatten().ok_or_else(bad)?;
        let uris = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let found = match &self.uri {
            Some(uri) => uris.into_iter().any(|u| u == uri),
            None => {
                let td = uris.into_iter().find_map(|u| {
                    let td = u.strip_prefix("spiffe://")?.strip_suffix("/cordon/issuer")?;
                    TrustDomain::new(td).ok()
                });
                let found = td.is_some();
                *self.learned.lock().unwrap_or_else(|p| p.into_inner()) = td;
                found
            }
        };
        if found { Ok(ServerCertVerified::assertion()) } else { Err(bad()) }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
