//! Identity and PKI: SPIFFE service identities, the built-in CA, certificate verification and
//! the rustls configs of the data plane.
//!
//! Owns every certificate and key format cordon reads or writes. Must not log key material.

mod ca;
pub(crate) mod files;
mod host;
pub mod issuer;
pub(crate) mod revoked;
mod settings;
mod tickets;
mod tls;
mod verify;

use std::path::PathBuf;

pub use crate::base::{IdError, ServiceId, ServiceName, TrustDomain};
pub use ca::{Ca, Leaf};
pub use host::{HostName, HostNameError, MAX_HOST_LEN, host_of};
pub use revoked::{RevocationWatch, Revocations, RevokedError, serial_of};
pub use settings::{RawTls, TlsSettings, TlsSource};
pub use tls::{HOP_ALPN_H2, HOP_ALPN_V1, HOP_ALPN_V2, HOP_ALPNS, HopOffer, ServerTls, TlsStore, read_certs};
pub use verify::{
    RejectReason, SpiffeClientVerifier, SpiffeError, SpiffeServerVerifier, peer_of, peer_service_id,
    server_name, spiffe_id_of,
};

/// Default lifetime of a leaf certificate, in days.
pub const DEFAULT_LEAF_DAYS: u32 = 7;

/// Why certificates or keys could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// A file's content is wrong (not PEM, wrong identity, mismatched key, ...).
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    /// A private key that group or others may read; refused, as ssh refuses one.
    #[error(
        "{}: permissions {mode:04o} are too open: a private key must be readable by its owner only (chmod 600 {})",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// A secret file (join token, password) that group or others may read; refused like a key.
    #[error(
        "{}: permissions {mode:04o} are too open: a {what} must be readable by its owner only (chmod 600 {})",
        path.display(),
        path.display()
    )]
    SecretPermissions { path: PathBuf, mode: u32, what: &'static str },
    /// `ca init` would overwrite an existing CA.
    #[error("{} already holds a CA (ca.pem or ca-key.pem); refusing to overwrite it", dir.display())]
    CaExists { dir: PathBuf },
    /// Generating a key or certificate failed.
    #[error("generating the {what}: {message}")]
    Generate { what: &'static str, message: String },
    /// rustls refused to build a config.
    #[error("TLS configuration: {0}")]
    Config(String),
}
