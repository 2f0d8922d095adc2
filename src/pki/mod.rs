//! Identity and PKI: SPIFFE service identities, the built-in CA, certificates and TLS configs.

mod id;
mod tls;

pub use id::{IdError, ServiceId, ServiceName, TrustDomain};
pub use tls::{PkiError, RejectReason, TlsStore, peer_service_id, server_name};

/// Default lifetime of a leaf certificate, in days.
pub const DEFAULT_LEAF_DAYS: u32 = 7;
