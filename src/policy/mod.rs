//! Policy: intentions and per-service modes, and the decision for a caller.
//!
//! Owns the `policy.toml` format. Pure: no I/O on the per-connection path.

mod types;

pub use types::{Caller, Decision, Identified, Mode, Outcome, Verdict};
mod stub;
pub use stub::{DecisionLog, DecisionRecord, Policy, PolicyError, PolicyWatcher, ReloadStats};
