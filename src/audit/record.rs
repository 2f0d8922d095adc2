//! One audit record per control-plane action, in cordon's own encoding (one JSON object per
//! line). The OCSF encoding is derived from it ([`super::ocsf`]) and carries it whole.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Actor;

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// It was done.
    Success,
    /// A check said no and nothing changed (a preflight, a rotation not yet due, a request
    /// refused).
    Refused,
    /// It was attempted and failed (an error); nothing or part of it changed.
    Failure,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Success => "success",
            RecordStatus::Refused => "refused",
            RecordStatus::Failure => "failure",
        }
    }
}

/// What the preflight of an enforce flip said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipCheck {
    /// Whether the preflight found nothing in the way.
    pub ready: bool,
    /// Every reason it is not ready, one line each (empty when ready).
    pub reasons: Vec<String>,
    /// The evidence it judged: a ledger file or the store (never with a password).
    pub evidence: String,
}

/// The action a record tells of, with what a responder needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `cordon mode`: a service flipped (or refused to flip) between learn and enforce.
    ModeFlip {
        service: String,
        /// The service's mode before.
        from: String,
        /// The mode asked for.
        to: String,
        /// The preflight, when one ran (enforce with `--db`).
        preflight: Option<FlipCheck>,
        /// `--force` overrode a preflight that was not ready.
        forced: bool,
        /// The policy file.
        policy: String,
        /// SHA-256 of the policy file before, `sha256:<hex>`.
        policy_before: String,
        /// SHA-256 of the policy file after; `None` when it was not changed.
        policy_after: Option<String>,
    },
    /// `cordon ca token`: a join token minted (never the token itself).
    TokenMinted {
        host: String,
        identities: Vec<String>,
        /// When it stops being usable (RFC 3339).
        expires: String,
        ca_dir: String,
    },
    /// The signing service refused an enrolment.
    EnrolmentRefused {
        /// The host the request claimed (empty when it could not be read).
        host: String,
        identities: Vec<String>,
        /// The address the request came from.
        peer: String,
        /// The refusal's reason code, as in the issuance log and `/metrics`.
        reason: String,
        message: String,
    },
    /// A host or a serial revoked.
    Revocation { host: Option<String>, serial: Option<String>, reason: Option<String>, ca_dir: String },
    /// `cordon ca rotate`: one step of a CA rotation (or why it is not yet due).
    RotationStep {
        /// `prepared`, `activated` or `retired`; `none` when refused before a step was known.
        step: String,
        /// `--force` overrode hosts that had not caught up.
        forced: bool,
        /// Why it did not step.
        why_not: Option<String>,
        ca_dir: String,
    },
    /// `cordon store prune`: history dropped from the fleet store.
    StorePrune {
        /// The store, without credentials.
        store: String,
        /// The history kept, in seconds.
        older_than_secs: u64,
        partitions: u64,
        rows: u64,
        /// The error, when it failed.
        error: Option<String>,
    },
    /// The store's ingest service refused rows from a host.
    IngestRefused { peer: String, host: String, identity: String, reason: String },
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When (RFC 3339, UTC, milliseconds).
    pub time: String,
    #[serde(flatten)]
    pub action: Action,
    pub status: RecordStatus,
    /// Who, from which host.
    pub actor: Actor,
}

impl Record {
    /// A record of `action` done now by this process's user on this host.
    pub fn new(action: Action, status: RecordStatus) -> Record {
        Record { time: rfc3339_ms(SystemTime::now()), action, status, actor: Actor::local() }
    }

    /// A join token minted for `host` and its identities, usable until `expires`.
    pub fn token_minted(ca_dir: &Path, host: &str, identities: &[String], expires: SystemTime) -> Record {
        Record::new(
            Action::TokenMinted {
                host: host.into(),
                identities: identities.to_vec(),
                expires: rfc3339_ms(expires),
                ca_dir: shown_path(ca_dir),
            },
            RecordStatus::Success,
        )
    }

    /// An enrolment the signing service refused.
    pub fn enrolment_refused(
        host: &str,
        identities: &[String],
        peer: &str,
        reason: &str,
        message: &str,
    ) -> Record {
        Record::new(
            Action::EnrolmentRefused {
                host: host.into(),
                identities: identities.to_vec(),
                peer: peer.into(),
                reason: reason.into(),
                message: message.into(),
            },
            RecordStatus::Refused,
        )
    }

    /// A host's leaves or one serial revoked in the CA in `ca_dir`.
    pub fn revocation(
        ca_dir: &Path,
        host: Option<&str>,
        serial: Option<&str>,
        reason: Option<&str>,
    ) -> Record {
        Record::new(
            Action::Revocation {
                host: host.map(str::to_owned),
                serial: serial.map(str::to_owned),
                reason: reason.map(str::to_owned),
                ca_dir: shown_path(ca_dir),
            },
            RecordStatus::Success,
        )
    }

    /// A rotation step taken (`Ok(step)`) or refused (`Err(why)`).
    pub fn rotation_step(ca_dir: &Path, result: Result<&str, &str>, forced: bool) -> Record {
        let (step, why_not, status) = match result {
            Ok(step) => (step.to_owned(), None, RecordStatus::Success),
            Err(why) => ("none".to_owned(), Some(why.to_owned()), RecordStatus::Refused),
        };
        Record::new(Action::RotationStep { step, forced, why_not, ca_dir: shown_path(ca_dir) }, status)
    }

    /// A prune of the fleet store keeping `older_than`: how much it dropped, or its error.
    pub fn store_prune(
        store: &str,
        older_than: std::time::Duration,
        result: Result<(u64, u64), String>,
    ) -> Record {
        let (partitions, rows, error, status) = match result {
            Ok((p, r)) => (p, r, None, RecordStatus::Success),
            Err(e) => (0, 0, Some(e), RecordStatus::Failure),
        };
        Record::new(
            Action::StorePrune {
                store: store.into(),
                older_than_secs: older_than.as_secs(),
                partitions,
                rows,
                error,
            },
            status,
        )
    }

    /// Rows the ingest service refused from `peer` (the host and identity its certificate names).
    pub fn ingest_refused(peer: &str, host: &str, identity: &str, reason: &str) -> Record {
        Record::new(
            Action::IngestRefused {
                peer: peer.into(),
                host: host.into(),
                identity: identity.into(),
                reason: reason.into(),
            },
            RecordStatus::Refused,
        )
    }

    /// The action's name, as `cordon audit` shows it and OCSF's `api.operation` carries it.
    pub fn operation(&self) -> &'static str {
        match self.action {
            Action::ModeFlip { .. } => "mode_flip",
            Action::TokenMinted { .. } => "token_minted",
            Action::EnrolmentRefused { .. } => "enrolment_refused",
            Action::Revocation { .. } => "revocation",
            Action::RotationStep { .. } => "rotation_step",
            Action::StorePrune { .. } => "store_prune",
            Action::IngestRefused { .. } => "ingest_refused",
        }
    }

    /// The services the record concerns (`cordon audit --service`).
    pub fn services(&self) -> Vec<&str> {
        match &self.action {
            Action::ModeFlip { service, .. } => vec![service.as_str()],
            Action::TokenMinted { identities, .. } | Action::EnrolmentRefused { identities, .. } => {
                identities.iter().map(String::as_str).collect()
            }
            Action::IngestRefused { identity, .. } => vec![identity.as_str()],
            _ => Vec::new(),
        }
    }

    /// When it happened; `None` for a time that does not parse.
    pub fn when(&self) -> Option<SystemTime> {
        time::OffsetDateTime::parse(&self.time, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(SystemTime::from)
    }

    /// One line for people: what was done to what.
    pub fn summary(&self) -> String {
        match &self.action {
            Action::ModeFlip { service, from, to, preflight, forced, .. } => {
                let mut s = format!("{service}: {from} -> {to}");
                if let Some(p) = preflight {
                    s += if p.ready { "; preflight ready" } else { "; preflight NOT ready" };
                    if !p.reasons.is_empty() {
                        s += &format!(" ({})", p.reasons.join("; "));
                    }
                }
                if *forced {
                    s += "; --force";
                }
                s
            }
            Action::TokenMinted { host, identities, expires, .. } => {
                format!("host {host}, identities {}, expires {expires}", identities.join(","))
            }
            Action::EnrolmentRefused { host, identities, peer, reason, .. } => {
                format!("host {host:?} from {peer}, identities {}: {reason}", identities.join(","))
            }
            Action::Revocation { host, serial, reason, .. } => format!(
                "{}{}{}",
                host.as_ref().map(|h| format!("host {h}")).unwrap_or_default(),
                serial.as_ref().map(|s| format!(" serial {s}")).unwrap_or_default(),
                reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
            ),
            Action::RotationStep { step, forced, why_not, .. } => format!(
                "{step}{}{}",
                if *forced { " (--force)" } else { "" },
                why_not.as_ref().map(|w| format!(": not yet: {w}")).unwrap_or_default()
            ),
            Action::StorePrune { store, older_than_secs, partitions, rows, error } => format!(
                "{store}: older than {}h: {partitions} partitions, {rows} rows{}",
                older_than_secs / 3600,
                error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            Action::IngestRefused { peer, host, identity, reason } => {
                format!("{identity} on {host} from {peer}: {reason}")
            }
        }
    }
}

/// A path as records name it: absolute where it can be resolved, so a record read elsewhere
/// still says which file.
pub fn shown_path(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()).display().to_string()
}

/// `sha256:<hex>` of a file's bytes, as a flip's record names the policy before and after.
pub fn policy_hash(bytes: &[u8]) -> String {
    crate::policy::content_hash(bytes)
}

/// `2026-12-06T18:40:01.123Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_object_that_reads_back_whole() {
        let r = Record::revocation(Path::new("/ca"), Some("web-3"), None, Some("stolen\nkey"));
        let line = serde_json::to_string(&r).expect("encodes");
        assert!(!line.contains('\n'), "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["action"], "revocation");
        assert_eq!(v["status"], "success");
        assert_eq!(v["host"], "web-3");
        let back: Record = serde_json::from_str(&line).expect("decodes");
        assert_eq!(back, r);
        assert!(back.when().is_some());
    }

    #[test]
    fn hashes_name_their_algorithm() {
        let h = policy_hash(b"");
        assert_eq!(h, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
