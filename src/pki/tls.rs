//! TLS material for the data plane: rustls configs per identity, reloaded without a restart.
//! (Interface; the identity issue fills it in.)

use std::sync::Arc;
use std::time::SystemTime;

use crate::agent::config::TlsSource;
use crate::pki::{ServiceId, ServiceName, TrustDomain};

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
        }
    }

    /// Classifies a failed handshake's error.
    pub fn classify(_err: &std::io::Error) -> RejectReason {
        todo!("pki: classify")
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("{0}")]
    Todo(String),
}

/// Every identity's certificate, key and CA bundle, as rustls configs that can be swapped.
pub struct TlsStore {}

impl TlsStore {
    pub fn load(
        _source: &TlsSource,
        _trust_domain: &TrustDomain,
        _identities: &[ServiceName],
    ) -> Result<Arc<Self>, PkiError> {
        todo!()
    }
    pub fn server_config(&self, _identity: &ServiceName) -> Option<Arc<rustls::ServerConfig>> {
        todo!()
    }
    pub fn client_config(
        &self,
        _identity: &ServiceName,
        _expected_server: &ServiceName,
    ) -> Option<Arc<rustls::ClientConfig>> {
        todo!()
    }
    pub fn reload(&self) -> Result<(), PkiError> {
        todo!()
    }
    pub fn expiries(&self) -> Vec<(ServiceName, SystemTime)> {
        todo!()
    }
}

/// The verified SPIFFE ID of the peer of a finished handshake.
pub fn peer_service_id(_conn: &rustls::CommonState) -> Option<ServiceId> {
    todo!()
}

/// The TLS server name to dial a service with.
pub fn server_name(_service: &ServiceName) -> rustls_pki_types::ServerName<'static> {
    todo!()
}
