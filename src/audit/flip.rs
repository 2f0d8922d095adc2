//! The record of a `mode` flip, gathered as the flip goes: the policy's hash and the service's
//! mode before, the preflight's verdict and reasons, `--force`, the hash after.

use std::path::{Path, PathBuf};

use super::{Action, FlipCheck, Record, RecordStatus, policy_hash};
use crate::policy::{Mode, Policy, PolicyError, Preflight};

/// A flip under way.
#[derive(Debug, Clone)]
pub struct FlipAudit {
    service: String,
    from: Mode,
    to: Mode,
    policy: PathBuf,
    before: String,
    preflight: Option<FlipCheck>,
    forced: bool,
}

impl FlipAudit {
    /// Reads the policy as it is before the flip.
    pub fn begin(policy: &Path, service: &str, to: Mode) -> Result<FlipAudit, PolicyError> {
        let bytes =
            std::fs::read(policy).map_err(|source| PolicyError::Read { path: policy.to_owned(), source })?;
        let text = String::from_utf8_lossy(&bytes);
        let from = Policy::parse(&text, policy)?.mode(service);
        Ok(FlipAudit {
            service: service.to_owned(),
            from,
            to,
            policy: policy.to_owned(),
            before: policy_hash(&bytes),
            preflight: None,
            forced: false,
        })
    }

    /// What the preflight found, judged against `evidence` (a ledger or the store, shown).
    pub fn checked(&mut self, check: &Preflight, evidence: &str) {
        let days = |d: std::time::Duration| format!("{:.1}d", d.as_secs_f64() / 86_400.0);
        let mut reasons = Vec::new();
        if check.too_short() {
            reasons.push(format!(
                "history spans {}, less than --min-history {}",
                days(check.span()),
                days(check.min_history)
            ));
        }
        for c in &check.cut {
            reasons.push(format!(
                "would cut off {} ({}, {} connections): {}",
                c.source,
                c.last_seen.map_or("declared", |_| c.identified.as_str()),
                c.connections,
                c.why
            ));
        }
        self.preflight = Some(FlipCheck { ready: check.passes(), reasons, evidence: evidence.to_owned() });
    }

    /// `--force` overrode a preflight that was not ready.
    pub fn forced(&mut self) {
        self.forced = true;
    }

    /// The record: `Success` reads the policy again for its hash after.
    pub fn record(self, status: RecordStatus) -> Record {
        let after = (status == RecordStatus::Success)
            .then(|| std::fs::read(&self.policy).map(|b| policy_hash(&b)).ok())
            .flatten();
        Record::new(
            Action::ModeFlip {
                service: self.service,
                from: self.from.to_string(),
                to: self.to.to_string(),
                preflight: self.preflight,
                forced: self.forced,
                policy: super::record::shown_path(&self.policy),
                policy_before: self.before,
                policy_after: after,
            },
            status,
        )
    }
}
