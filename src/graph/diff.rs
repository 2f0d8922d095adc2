//! Readiness: for each destination, what enforcing it under the current policy would do to the
//! callers the ledger recorded.
//!
//! A caller is cut off when the one decision ([`crate::policy::decide_in`]) would refuse it were
//! the destination enforced: the intentions deny it, or it still arrives in plaintext. A caller seen on only one or two days is flagged as rare:
//! periodic jobs (a nightly backup, a monthly report) are the classic outage after a flip. Rare
//! is only flagged once the window holds at least [`RARE_AFTER_DAYS`] days, so a young ledger does
//! not flag everything.

use std::time::SystemTime;

use super::Observed;
use crate::policy::{DecisionContext, Identified, Mode, Policy, Proof, Subject, Verdict, decide_in};

/// Days a window must span before callers seen on one or two days count as rare.
pub const RARE_AFTER_DAYS: u64 = 7;
/// At most this many distinct days make a caller rare.
pub const RARE_DAYS: u32 = 2;

/// One recorded caller of a destination, judged by the current policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerReadiness {
    pub source: String,
    pub identified: Identified,
    pub connections: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub days_seen: u32,
    /// What the current policy says of this caller.
    pub verdict: Verdict,
    /// Whether enforcing the destination would refuse it, and why.
    pub cut_off: bool,
    /// The deciding rule were the destination enforced.
    pub rule: std::sync::Arc<str>,
    /// Whether the intentions refuse it even once it arrives over mTLS (for a plaintext caller:
    /// migrating it is not enough, it needs an intention too).
    pub denied_by_intentions: bool,
    /// Seen on few days in a long window: likely a periodic job.
    pub rare: bool,
}

impl CallerReadiness {
    /// Arrives without a certificate.
    pub fn plaintext(&self) -> bool {
        self.identified.is_plaintext()
    }

    /// Would be refused if the destination were enforced now.
    pub fn cut_off(&self) -> bool {
        self.cut_off
    }
}

/// One destination service and what enforcing it would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReadiness {
    pub service: String,
    /// The mode the policy gives it now.
    pub mode: Mode,
    /// Sorted by source, then identification.
    pub callers: Vec<CallerReadiness>,
}

impl ServiceReadiness {
    /// Distinct callers (by name) that enforcing would cut off.
    pub fn cut_off(&self) -> usize {
        let mut names: Vec<&str> =
            self.callers.iter().filter(|c| c.cut_off()).map(|c| c.source.as_str()).collect();
        names.dedup();
        names.len()
    }

    /// No recorded caller would be cut off.
    pub fn ready(&self) -> bool {
        self.cut_off() == 0
    }

    /// The one-line verdict: `ready to enforce` or `not ready: N callers would be cut off`.
    pub fn summary(&self) -> String {
        match self.cut_off() {
            0 => "ready to enforce".to_owned(),
            1 => "not ready: 1 caller would be cut off".to_owned(),
            n => format!("not ready: {n} callers would be cut off"),
        }
    }
}

/// Readiness of every recorded destination (or only `service`, which is reported even when the
/// ledger holds no caller of it), sorted by name.
pub fn diff(observed: &Observed, policy: &Policy, service: Option<&str>) -> Vec<ServiceReadiness> {
    let ctx = DecisionContext::review();
    let long_window = observed.span().is_some_and(|(first, last)| {
        last.duration_since(first).unwrap_or_default().as_secs() >= RARE_AFTER_DAYS * 86_400
    });
    let mut out: Vec<ServiceReadiness> = Vec::new();
    // Edges are sorted by destination, then source: one pass groups them.
    for e in &observed.edges {
        if service.is_some_and(|s| s != e.destination) {
            continue;
        }
        if out.last().is_none_or(|s| s.service != e.destination) {
            out.push(ServiceReadiness {
                service: e.destination.clone(),
                mode: policy.mode(&e.destination),
                callers: Vec::new(),
            });
        }
        let Some(current) = out.last_mut() else { continue };
        let subject = Subject::recorded(&e.source, e.identified);
        let now = decide_in(policy, &subject, &e.destination, current.mode, &ctx);
        let enforced = decide_in(policy, &subject, &e.destination, Mode::Enforce, &ctx);
        let migrated = Subject { source: &e.source, proof: Proof::Recorded };
        let migrated = decide_in(policy, &migrated, &e.destination, Mode::Enforce, &ctx);
        current.callers.push(CallerReadiness {
            source: e.source.clone(),
            identified: e.identified,
            connections: e.connections,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            days_seen: e.days_seen,
            verdict: now.verdict,
            cut_off: !enforced.outcome.passes(),
            denied_by_intentions: !migrated.outcome.passes(),
            rule: enforced.rule,
            rare: long_window && e.days_seen <= RARE_DAYS,
        });
    }
    if let Some(s) = service
        && out.is_empty()
    {
        out.push(ServiceReadiness { service: s.to_owned(), mode: policy.mode(s), callers: Vec::new() });
    }
    out
}
