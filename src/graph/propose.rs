//! Proposed intentions: what the recorded traffic and the declared upstreams say the policy
//! should allow, and deny.
//!
//! Evidence that names its caller (mTLS-proven edges, and edges imported from loopback HAProxy
//! logs, whose note says they are not proven by a certificate) is weighed against what the caller
//! declared ([`super::declared`]): declared and seen is allowed; seen over mTLS from a caller that
//! declares and does not declare it is denied explicitly (it did not come through a configured
//! upstream; seen only in HAProxy logs it did, through a frontend, and is judged on the evidence);
//! declared and never seen is allowed when the declaration is specific, a comment when it is
//! broad. A caller with no declaration on record is judged by the evidence alone, at least
//! `--min-connections`. Probe-only edges, plaintext and unknown callers are never proposed, only
//! listed so the operator sees them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::Observed;
use super::declared::{self, Declared};
use crate::pki::ServiceName;
use crate::policy::{DecisionContext, Identified, Policy, Proof, Subject, Verdict, decide};

/// Why an intention is proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// Seen; the caller has no declaration on record.
    Evidence,
    /// Seen, and declared by the caller (`provenance`: where it was declared).
    DeclaredAndSeen { provenance: String },
    /// Declared (specifically) by the caller, never seen in the traffic.
    DeclaredNeverSeen { provenance: String },
    /// Seen over mTLS from a caller whose declarations do not name this destination: a deny.
    Undeclared { provenance: String },
    /// Seen only in HAProxy logs (so through a frontend of that host's HAProxy) from a caller
    /// whose declarations do not name it: allowed on the evidence, the gap named in the note.
    LoggedUndeclared { provenance: String },
}

/// One proposed intention and its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedIntention {
    pub source: String,
    pub destination: String,
    /// `allow`, or `deny` for an undeclared edge.
    pub action: Verdict,
    pub basis: Basis,
    /// Connections proven by a client certificate.
    pub mtls_connections: u64,
    /// Connections seen in imported HAProxy logs.
    pub haproxy_connections: u64,
    /// Bytes both ways (0: only probes).
    pub bytes: u64,
    /// `None` for a declared edge never seen.
    pub first_seen: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    /// Only the caller says so (the fleet store's claimed evidence): no record of the
    /// destination's own or an operator's.
    pub claimed: bool,
}

impl ProposedIntention {
    pub fn connections(&self) -> u64 {
        self.mtls_connections + self.haproxy_connections
    }

    /// `1543 connections (mtls), 2026-11-01..2026-11-22`.
    fn evidence(&self) -> String {
        let evidence = match (self.mtls_connections, self.haproxy_connections) {
            (_, 0) => "mtls".to_owned(),
            (0, _) => "haproxy-log, not proven by a certificate".to_owned(),
            (m, h) => format!("{m} mtls, {h} haproxy-log"),
        };
        let n = self.connections();
        let days = match (self.first_seen, self.last_seen) {
            (Some(f), Some(l)) => format!(", {}..{}", super::format::day(f), super::format::day(l)),
            _ => String::new(),
        };
        let claimed = if self.claimed { ", claimed by the caller only" } else { "" };
        format!("{n} connection{} ({evidence}{claimed}){days}", if n == 1 { "" } else { "s" })
    }

    /// The intention's `note`: which rule proposed it, and its evidence.
    pub fn note(&self) -> String {
        match &self.basis {
            Basis::Evidence => format!("proposed from {}", self.evidence()),
            Basis::DeclaredAndSeen { provenance } => {
                format!("declared ({provenance}) and seen: {}", self.evidence())
            }
            Basis::DeclaredNeverSeen { provenance } => format!(
                "declared ({provenance}), never seen in the traffic{}",
                if self.connections() > 0 { " carrying data (only probes)" } else { "" }
            ),
            Basis::LoggedUndeclared { provenance } => format!(
                "proposed from {}; {} declares ({provenance}) but not this: import that host's \
                 haproxy.cfg with --db",
                self.evidence(),
                self.source
            ),
            Basis::Undeclared { provenance } => format!(
                "seen but not declared by {} ({provenance}): not through a configured cordon \
                 upstream (a stolen certificate?): {}",
                self.source,
                self.evidence()
            ),
        }
    }
}

/// A recorded edge that is not proposed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unproven {
    pub source: String,
    pub destination: String,
    pub identified: Identified,
    pub connections: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub reason: &'static str,
}

/// The proposal: intentions to add, and what was seen or declared but cannot be proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Sorted by destination, then source.
    pub intentions: Vec<ProposedIntention>,
    /// Sorted by destination, source, identification.
    pub unproven: Vec<Unproven>,
    /// Proven pairs left out for having fewer than `min_connections`.
    pub below_threshold: usize,
    /// Declared edges not proposed (broad declarations), sorted by destination, then source.
    pub declared_only: Vec<DeclaredOnly>,
    /// The rules applied, one line each, for the header.
    pub rules: Vec<String>,
}

/// A declared edge that is not proposed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredOnly {
    pub source: String,
    pub destination: String,
    pub reason: String,
}

/// Proposes intentions by the rules in the module doc; with `policy`, only for pairs it does not
/// already allow or name (a deny only for pairs it does not name).
pub fn propose(observed: &Observed, min_connections: u64, policy: Option<&Policy>) -> Proposal {
    let decl = &observed.declarations;
    let named = |s: &str, d: &str| policy.is_some_and(|p| p.has_intention(s, d));
    let ctx = DecisionContext::review();
    // A pair the policy allows already, as the one decision judges a caller with an identity.
    let covered = |s: &str, d: &str| {
        named(s, d)
            || policy.is_some_and(|p| {
                decide(p, &Subject { source: s, proof: Proof::Recorded }, d, &ctx).verdict == Verdict::Allow
            })
    };
    let mut proven: BTreeMap<(&str, &str), ProposedIntention> = BTreeMap::new();
    // Pairs with refused connections: no byte could cross those, so they are no probes.
    let mut refused: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut unproven = Vec::new();
    for e in &observed.edges {
        let reason = match e.identified {
            Identified::PlaintextIp => Some("plaintext, named only by its source address"),
            Identified::Unknown => Some("plaintext from an address discovery does not know"),
            Identified::Mtls | Identified::HaproxyLog => {
                if ServiceName::new(&e.source).is_err() || ServiceName::new(&e.destination).is_err() {
                    Some("not a service name")
                } else {
                    None
                }
            }
        };
        if let Some(reason) = reason {
            if !covered(&e.source, &e.destination) {
                unproven.push(unproven_of(e, reason));
            }
            continue;
        }
        let p = proven.entry((&e.destination, &e.source)).or_insert_with(|| ProposedIntention {
            source: e.source.clone(),
            destination: e.destination.clone(),
            action: Verdict::Allow,
            basis: Basis::Evidence,
            mtls_connections: 0,
            haproxy_connections: 0,
            bytes: 0,
            first_seen: Some(e.first_seen),
            last_seen: Some(e.last_seen),
            claimed: true,
        });
        // Claimed until one of its edges is seen.
        p.claimed &= e.claimed;
        match e.identified {
            Identified::Mtls => p.mtls_connections += e.connections,
            _ => p.haproxy_connections += e.connections,
        }
        p.bytes = p.bytes.saturating_add(e.bytes_to_destination).saturating_add(e.bytes_to_source);
        if e.denied > 0 {
            refused.insert((&e.destination, &e.source));
        }
        p.first_seen = p.first_seen.min(Some(e.first_seen));
        p.last_seen = p.last_seen.max(Some(e.last_seen));
    }
    let mut intentions = Vec::new();
    let mut declared_only = Vec::new();
    let mut below_threshold = 0;
    for (key, mut p) in proven {
        let probes = p.bytes == 0 && !refused.contains(&key);
        let provenance = || decl.get(&p.source).map(|d| d.provenance()).unwrap_or_default();
        let declared = decl.edge(&p.source, &p.destination);
        if probes && declared != Declared::Yes {
            if !covered(&p.source, &p.destination) {
                let reason = "only probes (no byte either way): a health check or a wait-for-port loop";
                unproven.extend(
                    observed
                        .edges
                        .iter()
                        .filter(|e| e.source == p.source && e.destination == p.destination)
                        .map(|e| unproven_of(e, reason)),
                );
            }
            continue;
        }
        match declared {
            Declared::Yes if covered(&p.source, &p.destination) => continue,
            Declared::Yes if probes => {
                p.basis = Basis::DeclaredNeverSeen { provenance: provenance() };
                if let Some(d) = decl.get(&p.source).filter(|d| d.broad) {
                    declared_only.push(DeclaredOnly {
                        source: p.source.clone(),
                        destination: p.destination.clone(),
                        reason: broad_reason(d, decl.fleet_services, "only probed"),
                    });
                    continue;
                }
            }
            Declared::Yes => p.basis = Basis::DeclaredAndSeen { provenance: provenance() },
            Declared::No if named(&p.source, &p.destination) => continue,
            // Logged by the caller's own HAProxy: it came through a configured frontend, only
            // that config was not imported. Judged on the evidence, as an undeclared caller.
            Declared::No if p.mtls_connections == 0 => {
                if covered(&p.source, &p.destination) {
                    continue;
                }
                if p.connections() < min_connections {
                    below_threshold += 1;
                    continue;
                }
                p.basis = Basis::LoggedUndeclared { provenance: provenance() };
            }
            Declared::No => {
                p.action = Verdict::Deny;
                p.basis = Basis::Undeclared { provenance: provenance() };
            }
            Declared::Unknown if covered(&p.source, &p.destination) => continue,
            Declared::Unknown if p.connections() < min_connections => {
                below_threshold += 1;
                continue;
            }
            Declared::Unknown => {}
        }
        intentions.push(p);
    }
    for (d, service) in decl.never_seen(observed) {
        if covered(&d.identity, service)
            || ServiceName::new(&d.identity).is_err()
            || ServiceName::new(service).is_err()
        {
            continue;
        }
        if d.broad {
            declared_only.push(DeclaredOnly {
                source: d.identity.clone(),
                destination: service.to_owned(),
                reason: broad_reason(d, decl.fleet_services, "never seen"),
            });
            continue;
        }
        intentions.push(ProposedIntention {
            source: d.identity.clone(),
            destination: service.to_owned(),
            action: Verdict::Allow,
            basis: Basis::DeclaredNeverSeen { provenance: d.provenance() },
            mtls_connections: 0,
            haproxy_connections: 0,
            bytes: 0,
            first_seen: None,
            last_seen: None,
            claimed: false,
        });
    }
    intentions.sort_by(|a, b| (&a.destination, &a.source).cmp(&(&b.destination, &b.source)));
    unproven.sort_by(|a, b| {
        (&a.destination, &a.source, a.identified).cmp(&(&b.destination, &b.source, b.identified))
    });
    Proposal { intentions, unproven, below_threshold, declared_only, rules: declared::rules(decl) }
}

fn broad_reason(d: &super::Declarer, fleet: usize, seen: &str) -> String {
    format!(
        "declared ({}) but {seen}, and the declaration is broad ({} of the fleet's {fleet} services)",
        d.provenance(),
        d.services.len()
    )
}

fn unproven_of(e: &super::ObservedEdge, reason: &'static str) -> Unproven {
    Unproven {
        source: e.source.clone(),
        destination: e.destination.clone(),
        identified: e.identified,
        connections: e.connections,
        first_seen: e.first_seen,
        last_seen: e.last_seen,
        reason,
    }
}
