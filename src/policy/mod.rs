//! Policy: intentions and per-service modes, the decision for a caller, readiness to enforce, the
//! switch between learn and enforce, and the decision log (cordon JSON lines or OCSF, to a file or
//! syslog).
//!
//! Owns the `policy.toml` format. Evaluation is pure and allocation-free; file writes (mode flips,
//! the decision log) happen off the data plane.

mod address;
mod decide;
mod edit;
mod flip;
mod log;
mod log_file;
mod log_settings;
mod ocsf;
mod parse;
mod readiness;
mod syslog;
mod watch;

use std::path::PathBuf;

pub use crate::base::{BundleId, Caller, Identified, Mode, Outcome, Peer, Verdict};
pub use address::{AddressRange, address_of};
pub use decide::{Decision, DecisionContext, LeafId, Proof, Reason, Subject, decide, decide_in, revocation};
pub use edit::{set_mode, with_mode};
pub use flip::{
    FlipError, FlipEvidence, FlipOutcome, FlipRequest, check_known, closest, content_hash, flip, overridden,
    policy_names,
};
pub use log::{DENIALS_PER_SOURCE_PER_SECOND, DecisionLog, DecisionRecord, TlsSeen};
pub use log_settings::{DEFAULT_SYSLOG_SOCKET, DecisionFormat, DecisionLogSettings, DecisionSink};
pub use ocsf::{OCSF_VERSION, Origin};
pub use parse::{ANY, Intention, Match, Policy};
pub use readiness::{
    Blocker, Caller as ReadinessCaller, DeclaredCaller, Evidence, NEW_AFTER, Note, Question, Readiness,
    days_text, intended_deny, readiness,
};
pub use watch::{PolicyWatcher, ReloadStats};

/// Why a policy was refused or could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Not TOML, or an unknown or mistyped field (the message has the line).
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// Valid TOML, wrong values: one problem per line, each with its line number.
    #[error("{}: invalid policy:\n  {}", path.display(), problems.join("\n  "))]
    Invalid { path: PathBuf, problems: Vec<String> },
    /// A file could not be written.
    #[error("{}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}
