//! Readiness of every destination, as `cordon diff` and the report show it: the recorded callers
//! turned into evidence ([`evidence`]) and judged by the one readiness
//! ([`crate::policy::readiness()`]), the same function `cordon mode`'s preflight calls, beside the
//! per-caller facts people read (verdict now, rare, days seen, declared).
//!
//! A caller seen on only one or two days is flagged as rare: periodic jobs (a nightly backup, a
//! monthly report) are the classic outage after a flip. Rare is only flagged once the window
//! holds at least [`RARE_AFTER_DAYS`] days, so a young ledger does not flag everything.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Declared, Observed, ObservedEdge};
use crate::policy::{
    DecisionContext, Evidence, Identified, Mode, Policy, Proof, Question, Readiness, Subject, Verdict,
    decide_in, intended_deny, readiness,
};

/// Days a window must span before callers seen on one or two days count as rare.
pub const RARE_AFTER_DAYS: u64 = 7;
/// At most this many distinct days make a caller rare.
pub const RARE_DAYS: u32 = 2;
/// A caller first seen within this many days of now is new (see [`crate::policy::NEW_AFTER`]).
pub const NEW_DAYS: u64 = crate::policy::NEW_AFTER.as_secs() / 86_400;

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
    /// First seen in the last [`NEW_DAYS`] days (readiness says so).
    pub new: bool,
    /// Plaintext evidence superseded by the same caller's later mTLS evidence (readiness says so).
    pub migrated: bool,
    /// Readiness names it among the reasons the destination may not enforce.
    pub blocks: bool,
    /// What the caller's declarations say of this service.
    pub declared: Declared,
    /// No byte either way: only probes.
    pub probe_only: bool,
    /// An explicit deny intention names the caller: denied on purpose.
    pub intended_deny: bool,
    /// Only the caller says so (the fleet store's claimed evidence): it blocks a flip like any
    /// caller, but adds nothing to the destination's history.
    pub claimed: bool,
}

impl CallerReadiness {
    /// Arrives without a certificate.
    pub fn plaintext(&self) -> bool {
        self.identified.is_plaintext()
    }

    /// Would be refused if the destination were enforced now, and that would break something:
    /// readiness names it as a reason not to enforce.
    pub fn cut_off(&self) -> bool {
        self.blocks
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
    /// Readiness names it among the reasons the destination may not enforce.
    pub blocks: bool,
}

impl DeclaredCaller {
    /// A specific declaration the policy would deny: readiness counts it.
    pub fn cut_off(&self) -> bool {
        self.blocks
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
    /// The earliest and latest moment of the evidence that counts for its history.
    pub history: Option<(SystemTime, SystemTime)>,
    /// The one readiness: every reason it may not enforce, and the notes.
    pub readiness: Readiness,
}

impl ServiceReadiness {
    /// Distinct callers (by name) that enforcing would cut off.
    pub fn cut_off(&self) -> usize {
        self.readiness.blocked_by().len()
    }

    /// How long the evidence that counts for its history spans.
    pub fn history_span(&self) -> Duration {
        self.readiness.span()
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

    /// Readiness finds no reason not to enforce.
    pub fn ready(&self) -> bool {
        self.readiness.ready
    }

    /// The one-line verdict, every reason in it: `ready to enforce` or `not ready: 2 callers would
    /// be denied, history 8.7d of 30.0d`.
    pub fn summary(&self) -> String {
        self.readiness.summary()
    }
}

/// What readiness is judged with besides the ledger and the policy.
#[derive(Clone, Copy)]
pub struct Judging<'a> {
    pub min_history: Duration,
    pub now: SystemTime,
    /// The service discovery maps a bare address to now, if any (migration of `ip:` callers).
    pub discovered: &'a dyn Fn(IpAddr) -> Option<String>,
}

impl std::fmt::Debug for Judging<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judging").field("min_history", &self.min_history).field("now", &self.now).finish()
    }
}

impl Judging<'_> {
    /// `min_history` at `now`, without discovery.
    pub fn at(min_history: Duration, now: SystemTime) -> Judging<'static> {
        Judging { min_history, now, discovered: &|_| None }
    }
}

/// One recorded caller as readiness weighs it.
pub fn evidence_of(
    e: &ObservedEdge,
    observed: &Observed,
    discovered: &dyn Fn(IpAddr) -> Option<String>,
) -> Evidence {
    Evidence {
        source: e.source.clone(),
        identified: e.identified,
        discovered_as: crate::policy::address_of(&e.source).and_then(discovered),
        claimed: e.claimed,
        connections: e.connections,
        probe_only: super::declared::probe_only(e),
        first_seen: e.first_seen,
        last_seen: e.last_seen,
        undeclared: observed.declarations.edge(&e.source, &e.destination) == Declared::No,
    }
}

/// The evidence and the declarations of `service`, as `cordon mode`'s preflight judges them.
pub fn evidence(
    observed: &Observed,
    service: &str,
    discovered: &dyn Fn(IpAddr) -> Option<String>,
) -> (Vec<Evidence>, Vec<crate::policy::DeclaredCaller>) {
    let callers = observed
        .edges
        .iter()
        .filter(|e| e.destination == service)
        .map(|e| evidence_of(e, observed, discovered))
        .collect();
    (callers, declared_of(observed, service))
}

fn declared_of(observed: &Observed, service: &str) -> Vec<crate::policy::DeclaredCaller> {
    let mut out: Vec<crate::policy::DeclaredCaller> = observed
        .declarations
        .callers_of(service)
        .map(|d| crate::policy::DeclaredCaller {
            identity: d.identity.clone(),
            provenance: d.provenance(),
            broad: d.broad,
        })
        .collect();
    out.sort_by(|a, b| a.identity.cmp(&b.identity));
    out
}

/// Readiness of every recorded destination (or only `service`, which is reported even when the
/// ledger holds no caller of it), sorted by name.
pub fn diff(
    observed: &Observed,
    policy: &Policy,
    service: Option<&str>,
    judging: &Judging<'_>,
) -> Vec<ServiceReadiness> {
    let ctx = DecisionContext { now: judging.now, bundle: None, revoked: None };
    let span = observed.span();
    let long_window = span.is_some_and(|(first, last)| {
        last.duration_since(first).unwrap_or_default().as_secs() >= RARE_AFTER_DAYS * 86_400
    });
    let decl = &observed.declarations;
    let mut out: Vec<ServiceReadiness> = Vec::new();
    let mut evidence: HashMap<String, Vec<Evidence>> = HashMap::new();
    // Edges are sorted by destination, then source: one pass groups them.
    for e in &observed.edges {
        if service.is_some_and(|s| s != e.destination) {
            continue;
        }
        if out.last().is_none_or(|s| s.service != e.destination) {
            out.push(empty(&e.destination, policy));
        }
        let Some(current) = out.last_mut() else { continue };
        evidence.entry(e.destination.clone()).or_default().push(evidence_of(e, observed, judging.discovered));
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
            new: false,
            migrated: false,
            blocks: false,
            declared: decl.edge(&e.source, &e.destination),
            probe_only: super::declared::probe_only(e),
            claimed: e.claimed,
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
                blocks: false,
            });
        }
    }
    // Each identity's declarations, gathered per service once (a fleet has thousands of both).
    let mut declared_by_service: HashMap<&str, Vec<crate::policy::DeclaredCaller>> = HashMap::new();
    for d in decl.by_identity.values() {
        for svc in &d.services {
            declared_by_service.entry(svc.as_str()).or_default().push(crate::policy::DeclaredCaller {
                identity: d.identity.clone(),
                provenance: d.provenance(),
                broad: d.broad,
            });
        }
    }
    let nothing = (Vec::new(), Vec::new());
    for s in &mut out {
        let callers = evidence.get(&s.service).unwrap_or(&nothing.0);
        let declared = declared_by_service.get_mut(s.service.as_str()).map_or(&nothing.1, |d| {
            d.sort_by(|a, b| a.identity.cmp(&b.identity));
            &*d
        });
        // Deciding as if enforced ignores the policy's modes: the policy now judges as the policy
        // after the flip would.
        s.readiness = readiness(&Question {
            service: &s.service,
            mode_now: s.mode,
            policy_after: policy,
            evidence: callers,
            declared,
            min_history: judging.min_history,
            now: judging.now,
        });
        s.history = s.readiness.history;
        mark(s);
    }
    out
}

/// Copies readiness's per-caller findings onto the rows people read.
fn mark(s: &mut ServiceReadiness) {
    use crate::policy::{Blocker, Note};
    let r = &s.readiness;
    let is = |c: &crate::policy::ReadinessCaller, row: &CallerReadiness| {
        c.source == row.source && c.identified == row.identified
    };
    for row in &mut s.callers {
        row.blocks = r.blockers.iter().filter_map(Blocker::caller).any(|c| is(c, row));
        row.new = r.notes.iter().any(|n| matches!(n, Note::New { caller } if is(caller, row)));
        row.migrated = r.notes.iter().any(|n| matches!(n, Note::Migrated { caller, .. } if is(caller, row)));
    }
    for d in &mut s.declared_never_seen {
        d.blocks = r
            .blockers
            .iter()
            .any(|b| matches!(b, Blocker::DeclaredNeverSeen { caller, .. } if caller.source == d.source));
    }
}

fn empty(service: &str, policy: &Policy) -> ServiceReadiness {
    let mode = policy.mode(service);
    ServiceReadiness {
        service: service.to_owned(),
        mode,
        callers: Vec::new(),
        declared_never_seen: Vec::new(),
        history: None,
        // Replaced by the judged readiness before `diff` returns.
        readiness: Readiness {
            service: service.to_owned(),
            mode_now: mode,
            ready: false,
            blockers: Vec::new(),
            notes: Vec::new(),
            history: None,
            min_history: Duration::ZERO,
        },
    }
}
