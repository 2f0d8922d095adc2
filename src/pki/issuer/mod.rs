//! The signing service (`cordon ca serve`) and the agent's side of it: hosts enrol with a one-time
//! join token and renew short-lived leaves over mTLS, so the CA key stays on one machine.
//!
//! Owns the wire protocol (a small JSON API over HTTPS), the token store, the issuance log, the
//! CA rotation state in the CA directory and the agent's renewal loop. Must not log key material
//! or tokens, and never sees a host's private key: hosts send CSRs.
//!
//! | request | authenticated by | body |
//! |---|---|---|
//! | `POST /v1/enrol` | the join token | [`EnrolRequest`] |
//! | `POST /v1/renew` | the host's current certificate (mTLS) | [`RenewRequest`] |
//! | `GET /v1/revoked` | nothing (the revocation list in force, [`RevocationList`]) | |
//! | `GET /v1/status` | nothing (counts only) | |
//! | `GET /metrics` | nothing (counts only) | |
//!
//! A success is an [`Issued`] (with the revocation list in force), a refusal a 403 with a
//! [`Refusal`]. Every leaf names its host (one DNS-name SAN beside the SPIFFE URI); only the newest
//! leaf of a (host, identity) renews.

mod cas;
pub mod client;
mod leases;
mod poll;
mod revoked;
pub mod server;
mod tls;
mod tokens;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use cas::{CaSet, Phase, RotateStep, rotate};
pub use client::{IssuerSettings, Renewer};
pub use leases::{IssuanceLog, Leases};
pub use poll::{DEFAULT_REVOCATION_POLL, MIN_REVOCATION_POLL, PollStats};
pub use revoked::{REVOKED_FILE, RevocationList, Revoke};
pub use server::{ServeOptions, Service};
pub use tokens::TokenStore;

/// Default lifetime of a leaf from the signing service.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The URI SAN of the signing service's own certificate. Not a service identity
/// (`spiffe://TD/service/NAME`), so no agent accepts it as a peer.
pub fn issuer_uri(trust_domain: &super::TrustDomain) -> String {
    format!("spiffe://{trust_domain}/cordon/issuer")
}

/// First enrolment: one CSR per identity, authorised by a join token.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub host: String,
    pub token: String,
    pub csrs: Vec<CsrFor>,
}

/// A CSR (PEM) for one identity.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrFor {
    pub identity: String,
    pub csr: String,
}

/// Renewal of the identity the client certificate names.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub host: String,
    pub csr: String,
}

/// What the service signed, and the trust bundle hosts should use from now on.
#[derive(Debug, Serialize, Deserialize)]
pub struct Issued {
    pub leaves: Vec<IssuedLeaf>,
    /// Every CA certificate hosts must trust (PEM): the current one, and during a rotation the
    /// other.
    pub bundle: String,
    /// Fingerprint of the CA that signs now.
    pub signing_ca: String,
    /// The revocation list in force (as `GET /v1/revoked` serves it).
    #[serde(default)]
    pub revoked: RevocationList,
}

/// One signed leaf.
#[derive(Debug, Serialize, Deserialize)]
pub struct IssuedLeaf {
    pub identity: String,
    /// The certificate (PEM).
    pub cert: String,
    /// Serial number, hex.
    pub serial: String,
    /// Unix seconds.
    pub not_after: u64,
}

/// Why a request was refused (HTTP 403), as the wire carries it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}

/// Why the service refused to sign. The label goes into the issuance log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Refused {
    /// The body is not a request of this protocol.
    BadRequest,
    /// No such token was ever minted.
    TokenUnknown,
    /// The token was already exchanged.
    TokenUsed,
    /// The token's lifetime is over.
    TokenExpired,
    /// The token was minted for another host.
    TokenWrongHost,
    /// The token (or, on renewal, the certificate) does not cover an identity asked for.
    IdentityNotAllowed,
    /// A renewal without a client certificate.
    NoCertificate,
    /// A renewal with an expired certificate: the host needs a new token.
    CertExpired,
    /// A renewal with a certificate that is not valid yet (check clocks).
    CertNotYetValid,
    /// A renewal with a certificate from no CA in the bundle.
    CertUnknownCa,
    /// A renewal with a certificate that names no identity of this trust domain.
    CertInvalid,
    /// A renewal with a certificate this service never issued (e.g. `cordon cert issue`).
    SerialUnknown,
    /// A renewal from another host than the certificate was issued to.
    HostMismatch,
    /// The CSR does not parse or its signature is wrong.
    BadCsr,
    /// A renewal with a leaf that a later renewal or enrolment of its (host, identity) replaced:
    /// whoever presents it holds a copy.
    Superseded,
    /// The host or the serial is revoked (`cordon ca revoke`).
    Revoked,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::BadRequest => "bad_request",
            Refused::TokenUnknown => "token_unknown",
            Refused::TokenUsed => "token_used",
            Refused::TokenExpired => "token_expired",
            Refused::TokenWrongHost => "token_wrong_host",
            Refused::IdentityNotAllowed => "identity_not_allowed",
            Refused::NoCertificate => "no_certificate",
            Refused::CertExpired => "cert_expired",
            Refused::CertNotYetValid => "cert_not_yet_valid",
            Refused::CertUnknownCa => "cert_unknown_ca",
            Refused::CertInvalid => "cert_invalid",
            Refused::SerialUnknown => "serial_unknown",
            Refused::HostMismatch => "host_mismatch",
            Refused::BadCsr => "bad_csr",
            Refused::Superseded => "superseded",
            Refused::Revoked => "revoked",
        }
    }

    /// Every reason, for metrics that show zeros.
    pub const ALL: [Refused; 16] = [
        Refused::BadRequest,
        Refused::TokenUnknown,
        Refused::TokenUsed,
        Refused::TokenExpired,
        Refused::TokenWrongHost,
        Refused::IdentityNotAllowed,
        Refused::NoCertificate,
        Refused::CertExpired,
        Refused::CertNotYetValid,
        Refused::CertUnknownCa,
        Refused::CertInvalid,
        Refused::SerialUnknown,
        Refused::HostMismatch,
        Refused::BadCsr,
        Refused::Superseded,
        Refused::Revoked,
    ];
}

/// A refusal with what the requester may be told.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", reason.as_str())]
pub struct Refusing {
    pub reason: Refused,
    pub message: String,
}

impl Refusing {
    pub fn new(reason: Refused, message: impl Into<String>) -> Self {
        Refusing { reason, message: message.into() }
    }
}

/// Unix seconds.
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Random bytes from the crypto provider.
/// The TLS provider of the signing service and its clients: ring, with AES-128-GCM-SHA256 first
/// among the TLS 1.3 suites. A renewal is one short request on a new connection, so the handshake
/// is the cost, and SHA-256 (in hardware on most CPUs) keys it for less than SHA-384 does.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    std::sync::Arc::new(provider)
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N], super::PkiError> {
    let mut bytes = [0u8; N];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut bytes).map_err(|_| {
        super::PkiError::Generate { what: "random bytes", message: "no system random".into() }
    })?;
    Ok(bytes)
}

/// A serial number as hex, without leading zero bytes (DER may add or drop one).
pub(crate) fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    hex(&bytes[start..])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256, hex.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

/// A duration such as `24h`, `30m`, `90s` or `7d`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    crate::base::parse_span(s, true)
        .ok_or_else(|| format!("bad duration {s:?}: expected a number followed by d, h, m or s (24h, 90s)"))
}
