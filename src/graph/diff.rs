//! Readiness: for each destination, what enforcing it under the current policy would do to the
//! callers the ledger recorded.
//!
//! A caller is cut off when the one decision ([`crate::policy::decide_in`]) would refuse it were
//! the destination enforced: the intentions deny it, or it still arrives in plaintext. A caller seen on only one or two days is flagged as rare:
//! periodic jobs (a nightly backup, a monthly report) are the classic outage after a flip. Rare
//! is only flagged once the window holds at least [`RARE_AFTER_DAYS`] days, so a young ledger does
//! not flag everything; so is a caller first seen in the last [`NEW_DAYS`] days of the history.
//!
//! Beside the evidence, the declarations ([`super::declared`]): a caller that declares but not this
//! service is *undeclared*; an identity that declares the service and was never seen is listed
//! (and counts as cut off when the policy would deny it and its declaration is specific). A caller
//! an explicit deny intention names is denied on purpose and not cut off; neither is a probe-only
//! caller (no byte either way: its connect check still connects under enforce).

use std::time::SystemTime;

use std::sync::Arc;

use super::{Declared, Observed};
use crate::policy::{
    DecisionContext, Identified, Mode, Policy, Proof, Subject, Verdict, decide_in, intended_deny,
};

/// Days a window must span before callers seen on one or two days count as rare.
pub const RARE_AFTER_DAYS: u64 = 7;
/// At most this many distinct days make a caller rare.
pub const RARE_DAYS: u32 = 2;
/// A caller first seen within this many days of the latest record is new.
pub const NEW_DAYS: u64 = 7;

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
    /// Whether the decision would refuse it were the destination enforced.
    pub refused_if_enforced: bool,
    /// The deciding rule were the destination enforced.
    pub rule: Arc<str>,
    /// Whether the intentions refuse it even once it arrives over mTLS (for a plaintext caller:
    /// migrating it is not enough, it needs an intention too).
    pub denied_by_intentions: bool,
    /// Seen on few days in a long window: likely a periodic job.
    pub rare: bool,
    /// First seen in the last [`NEW_DAYS`] days of a long window.
    pub new: bool,
    /// What the caller's declarations say of this service.
    pub declared: Declared,
    /// No byte either way: only probes.
    pub probe_only: bool,
    /// An explicit deny intention names the caller: denied on purpose.
    pub intended_deny: bool,
}

impl CallerReadiness {
    /// Arrives without a certificate.
    pub fn plaintext(&self) -> bool {
        self.identified.is_plaintext()
    }

    /// Would be refused if the destination were enforced now, and that would break something: not
    /// a probe, not denied on purpose.
    pub fn cut_off(&self) -> bool {
        !self.probe_only && self.refused_if_enforced && !self.intended_deny
    }
}

/// An identity that declares a service it was never seen calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredCaller {
    pub source: String,
    /// Where it was declared (`haproxy.cfg on host-e`).
    pub provenance: String,
    /// Its declaration names most of the fleet: not intent.
    pub broad: bool,
    /// What the current policy says of it.
    pub verdict: Verdict,
    pub intended_deny: bool,
}

impl DeclaredCaller {
    /// A specific declaration the policy would deny by default.
    pub fn cut_off(&self) -> bool {
        !self.broad && self.verdict == Verdict::Deny && !self.intended_deny
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
    /// Identities that declare the service and were never seen calling it, sorted.
    pub declared_never_seen: Vec<DeclaredCaller>,
    /// The earliest and latest recorded moment of its traffic.
    pub history: Option<(SystemTime, SystemTime)>,
}

impl ServiceReadiness {
    /// Distinct callers (by name) that enforcing would cut off.
    pub fn cut_off(&self) -> usize {
        let mut names: Vec<&str> = self
            .callers
            .iter()
            .filter(|c| c.cut_off())
            .map(|c| c.source.as_str())
            .chain(self.declared_never_seen.iter().filter(|d| d.cut_off()).map(|d| d.source.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    /// How long the recorded traffic spans.
    pub fn history_span(&self) -> std::time::Duration {
        self.history.map_or_else(Default::default, |(f, l)| l.duration_since(f).unwrap_or_default())
    }

    /// Distinct callers whose declarations do not name the service.
    pub fn undeclared(&self) -> Vec<&str> {
        self.names(|c| c.declared == Declared::No)
    }

    /// Distinct callers first seen lately.
    pub fn new_callers(&self) -> Vec<&str> {
        self.names(|c| c.new)
    }

    /// Distinct callers seen only probing.
    pub fn probe_only(&self) -> Vec<&str> {
        self.names(|c| c.probe_only)
    }

    fn names(&self, keep: impl Fn(&CallerReadiness) -> bool) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.callers.iter().filter(|c| keep(c)).map(|c| c.source.as_str()).collect();
        names.dedup();
        names
    }

    /// No recorded or specifically declared caller would be cut off.
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
    let span = observed.span();
    let long_window = span.is_some_and(|(first, last)| {
        last.duration_since(first).unwrap_or_default().as_secs() >= RARE_AFTER_DAYS * 86_400
    });
    let new_after =
        span.and_then(|(_, last)| last.checked_sub(std::time::Duration::from_secs(NEW_DAYS * 86_400)));
    let decl = &observed.declarations;
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
                declared_never_seen: Vec::new(),
                history: None,
            });
        }
        let Some(current) = out.last_mut() else { continue };
        current.history = Some(match current.history {
            None => (e.first_seen, e.last_seen),
            Some((f, l)) => (f.min(e.first_seen), l.max(e.last_seen)),
        });
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
            refused_if_enforced: !enforced.outcome.passes(),
            denied_by_intentions: !migrated.outcome.passes(),
            intended_deny: intended_deny(policy, &e.source, &e.destination, &enforced),
            rule: enforced.rule,
            rare: long_window && e.days_seen <= RARE_DAYS,
            new: long_window && new_after.is_some_and(|t| e.first_seen >= t),
            declared: decl.edge(&e.source, &e.destination),
            probe_only: super::declared::probe_only(e),
        });
    }
    // Services only declared, never recorded, are reported too.
    let mut declared_services: Vec<&str> =
        decl.by_identity.values().flat_map(|d| d.services.iter().map(String::as_str)).collect();
    declared_services.sort_unstable();
    declared_services.dedup();
    for d in declared_services {
        if service.is_some_and(|s| s != d) || out.iter().any(|s| s.service == d) {
            continue;
        }
        out.push(empty(d, policy));
    }
    if let Some(s) = service
        && out.is_empty()
    {
        out.push(empty(s, policy));
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    for (d, svc) in decl.never_seen(observed) {
        if let Some(s) = out.iter_mut().find(|s| s.service == svc) {
            let subject = Subject { source: &d.identity, proof: Proof::Recorded };
            let decision = decide_in(policy, &subject, svc, Mode::Enforce, &ctx);
            s.declared_never_seen.push(DeclaredCaller {
                source: d.identity.clone(),
                provenance: d.provenance(),
                broad: d.broad,
                verdict: decision.verdict,
                intended_deny: intended_deny(policy, &d.identity, svc, &decision),
            });
        }
    }
    out
}

fn empty(service: &str, policy: &Policy) -> ServiceReadiness {
    ServiceReadiness {
        service: service.to_owned(),
        mode: policy.mode(service),
        callers: Vec::new(),
        declared_never_seen: Vec::new(),
        history: None,
    }
}
