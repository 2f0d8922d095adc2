//! The preflight of an enforce flip (`cordon mode SVC enforce --db LEDGER`): would enforcing the
//! service cut off a caller the ledger recorded or one that declares it, and is there enough
//! history to tell?
//!
//! Pure: the caller hands in the recorded callers, the callers that declare the service, and the
//! policy as it would be after the flip; every verdict comes from [`super::decide_in`], as if the
//! service enforced. A caller an
//! explicit deny intention names is intended and does not block, nor does a probe-only caller
//! (no byte either way: a TCP connect check, which still connects under enforce because cordon
//! accepts before it decides). Every reason to refuse is reported at once.

use std::time::{Duration, SystemTime};

use super::{ANY, Decision, DecisionContext, Identified, Mode, Policy, Reason, Subject, Verdict, decide_in};
use crate::ledger::ObservedCaller;

/// A caller that an enforce flip would cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutOff {
    pub source: String,
    pub identified: Identified,
    pub connections: u64,
    /// `None` for a declared caller never seen.
    pub last_seen: Option<SystemTime>,
    /// Why: the deciding rule, or that plaintext is refused in enforce mode.
    pub why: String,
}

/// An identity that declares the service, as the preflight needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredCaller {
    pub identity: String,
    /// Where it was declared, for people (`haproxy.cfg on host-e`).
    pub provenance: String,
    /// Its declaration names most of the fleet: not intent, does not block.
    pub broad: bool,
}

/// What the preflight found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// Recorded and specifically declared callers that would be denied, most connections first.
    pub cut: Vec<CutOff>,
    /// Callers an explicit deny intention names: refused on purpose.
    pub intended: Vec<CutOff>,
    /// Probe-only callers that would be denied: their connect check still succeeds.
    pub probes: Vec<CutOff>,
    /// The earliest and latest recorded moment of the service's traffic.
    pub history: Option<(SystemTime, SystemTime)>,
    /// The history asked for.
    pub min_history: Duration,
}

impl Preflight {
    /// How long the evidence spans (zero when nothing was recorded).
    pub fn span(&self) -> Duration {
        self.history.map_or(Duration::ZERO, |(first, last)| last.duration_since(first).unwrap_or_default())
    }

    /// The evidence spans less than asked.
    pub fn too_short(&self) -> bool {
        self.span() < self.min_history
    }

    /// Nothing stands in the way of the flip.
    pub fn passes(&self) -> bool {
        self.cut.is_empty() && !self.too_short()
    }
}

/// Checks an enforce flip of `service`: `policy_after_flip` judges the `callers` recorded and the
/// `declared` callers of the service; the callers' history must span `min_history`.
pub fn preflight(
    policy_after_flip: &Policy,
    service: &str,
    callers: &[ObservedCaller],
    declared: &[DeclaredCaller],
    min_history: Duration,
) -> Preflight {
    let ctx = DecisionContext::review();
    let enforced = |source: &str, identified: Identified| {
        decide_in(policy_after_flip, &Subject::recorded(source, identified), service, Mode::Enforce, &ctx)
    };
    let mut out =
        Preflight { cut: Vec::new(), intended: Vec::new(), probes: Vec::new(), history: None, min_history };
    for c in callers {
        out.history = Some(match out.history {
            None => (c.first_seen, c.last_seen),
            Some((f, l)) => (f.min(c.first_seen), l.max(c.last_seen)),
        });
        let cut = |why: String| CutOff {
            source: c.source.clone(),
            identified: c.identified,
            connections: c.connections,
            last_seen: Some(c.last_seen),
            why,
        };
        // Refused connections carry no byte either: they are no probes.
        let probe_only = c.bytes_to_destination == 0 && c.bytes_to_source == 0 && c.denied == 0;
        let d = enforced(&c.source, c.identified);
        if d.outcome.passes() {
            continue;
        }
        if intended_deny(policy_after_flip, &c.source, service, &d) {
            out.intended.push(cut(d.rule.to_string()));
        } else if probe_only {
            out.probes.push(cut(d.rule.to_string()));
        } else {
            out.cut.push(cut(d.rule.to_string()));
        }
    }
    for d in declared {
        let seen = callers.iter().any(|c| {
            c.source == d.identity && matches!(c.identified, Identified::Mtls | Identified::HaproxyLog)
        });
        if seen || d.broad {
            continue;
        }
        let decision = enforced(&d.identity, Identified::Mtls);
        if decision.outcome.passes() || intended_deny(policy_after_flip, &d.identity, service, &decision) {
            continue;
        }
        out.cut.push(CutOff {
            source: d.identity.clone(),
            identified: Identified::Mtls,
            connections: 0,
            last_seen: None,
            why: format!("declared ({}), never seen; {}", d.provenance, decision.rule),
        });
    }
    let order =
        |a: &CutOff, b: &CutOff| b.connections.cmp(&a.connections).then_with(|| a.source.cmp(&b.source));
    out.cut.sort_by(order);
    out.intended.sort_by(order);
    out.probes.sort_by(order);
    out
}

/// The decision refused `source` by an intention that names it, for `service` or for every
/// service (not `*`): an intended deny, which no readiness check counts as a caller cut off.
pub fn intended_deny(policy: &Policy, source: &str, service: &str, decision: &Decision) -> bool {
    decision.reason == Reason::Intention
        && decision.verdict == Verdict::Deny
        && (policy.has_intention(source, service) || policy.has_intention(source, ANY))
}
