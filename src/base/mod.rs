//! The vocabulary every other module speaks: service names and SPIFFE IDs, modes, verdicts and
//! outcomes, how a caller was identified, and a caller's typed name ([`Source`]).
//!
//! Policy, ledger, graph, proxy and pki all use these types and nothing here uses them: this
//! module imports no other module of cordon. It holds types and pure checks only, no I/O and no decisions (the
//! one decision is [`crate::policy::decide`]).

pub mod escape;
mod field;
mod id;
mod source;
mod span;
mod types;

pub use field::config_path;
pub use id::{IdError, ServiceId, ServiceName, TrustDomain};
pub use source::Source;
pub use span::parse_span;
pub use types::{BundleId, Caller, Identified, Mode, Outcome, Peer, Verdict};
