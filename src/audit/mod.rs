//! The audit trail of cordon's control plane: who flipped a service, minted a token, was refused
//! enrolment, revoked a host, stepped a CA rotation or pruned the store, when, from which host,
//! and with what result.
//!
//! Owns the record types ([`Record`], one constructor per action), their two encodings (cordon's
//! own JSON lines, or OCSF 1.5.0 API Activity, class 6003: [`ocsf`]), the append-only writer
//! ([`AuditLog`]: one line per record, `O_APPEND`, fsync, 0600, never through a symlink), the
//! reader with its filters ([`read`]), and where a command's records go ([`AuditTarget`]).
//!
//! It must not decide anything: commands decide, then hand it what they did. A command that
//! changes things opens its log before the change, so a log it cannot write stops it first.

mod actor;
mod flip;
pub mod ocsf;
mod reader;
mod record;
pub mod report;
mod settings;
mod writer;

pub use actor::Actor;
pub use flip::flip_record;
pub use reader::{Filter, ReadError, Skipped, read};
pub use record::{Action, FlipCheck, Record, RecordStatus, policy_hash};
pub use settings::{AuditFormat, AuditTarget, RawAudit};
pub use writer::{AuditError, AuditLog};

/// The default log's file name, beside the policy (`mode`) or in the CA directory (`ca ...`).
pub const DEFAULT_FILE: &str = "audit.jsonl";
