//! Policy: intentions and per-service modes, the decision for a caller, the switch between
//! learn and enforce, and the decision log.
//!
//! Owns the `policy.toml` format. Evaluation is pure and allocation-free; file writes (mode flips,
//! the decision log) happen off the data plane.

mod decide;
mod edit;
mod log;
mod parse;
mod preflight;
mod watch;

use std::path::PathBuf;

pub use crate::base::{BundleId, Caller, Identified, Mode, Outcome, Peer, Verdict};
pub use decide::{Decision, DecisionContext, LeafId, Proof, Reason, Subject, decide, decide_in};
pub use edit::{set_mode, with_mode};
pub use log::{DENIALS_PER_SOURCE_PER_SECOND, DecisionLog, DecisionRecord};
pub use parse::{ANY, Intention, Match, Policy};
pub use preflight::{CutOff, DeclaredCaller, Preflight, intended_deny, preflight};
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
