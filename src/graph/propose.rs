//! Proposed intentions: what the recorded traffic says the policy should allow.
//!
//! Only evidence that names its caller is proposed: mTLS-proven edges and edges imported from
//! HAProxy logs (their note says they are not proven by a certificate). Plaintext and unknown
//! callers are never proposed, only listed so the operator sees them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::Observed;
use crate::pki::ServiceName;
use crate::policy::{DecisionContext, Identified, Policy, Subject, Verdict, decide};

/// One proposed `allow` intention and its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedIntention {
    pub source: String,
    pub destination: String,
    /// Connections proven by a client certificate.
    pub mtls_connections: u64,
    /// Connections seen in imported HAProxy logs.
    pub haproxy_connections: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

impl ProposedIntention {
    pub fn connections(&self) -> u64 {
        self.mtls_connections + self.haproxy_connections
    }

    /// The intention's `note`: how many connections, which evidence, which days.
    pub fn note(&self) -> String {
        let evidence = match (self.mtls_connections, self.haproxy_connections) {
            (_, 0) => "mtls".to_owned(),
            (0, _) => "haproxy-log, not proven by a certificate".to_owned(),
            (m, h) => format!("{m} mtls, {h} haproxy-log"),
        };
        let n = self.connections();
        format!(
            "proposed from {n} connection{} ({evidence}), {}..{}",
            if n == 1 { "" } else { "s" },
            super::format::day(self.first_seen),
            super::format::day(self.last_seen)
        )
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

/// The proposal: intentions to add, and what was seen but cannot be proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Sorted by destination, then source.
    pub intentions: Vec<ProposedIntention>,
    /// Sorted by destination, source, identification.
    pub unproven: Vec<Unproven>,
    /// Proven pairs left out for having fewer than `min_connections`.
    pub below_threshold: usize,
}

/// Proposes an `allow` for each proven (source, destination) pair with at least
/// `min_connections`; with `policy`, only pairs it does not already allow or name.
pub fn propose(observed: &Observed, min_connections: u64, policy: Option<&Policy>) -> Proposal {
    let ctx = DecisionContext::review();
    let covered = |s: &str, d: &str, identified: Identified| {
        policy.is_some_and(|p| {
            p.has_intention(s, d)
                || decide(p, &Subject::recorded(s, identified), d, &ctx).verdict == Verdict::Allow
        })
    };
    let mut proven: BTreeMap<(&str, &str), ProposedIntention> = BTreeMap::new();
    let mut unproven = Vec::new();
    for e in &observed.edges {
        if covered(&e.source, &e.destination, e.identified) {
            continue;
        }
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
            unproven.push(Unproven {
                source: e.source.clone(),
                destination: e.destination.clone(),
                identified: e.identified,
                connections: e.connections,
                first_seen: e.first_seen,
                last_seen: e.last_seen,
                reason,
            });
            continue;
        }
        let p = proven.entry((&e.destination, &e.source)).or_insert_with(|| ProposedIntention {
            source: e.source.clone(),
            destination: e.destination.clone(),
            mtls_connections: 0,
            haproxy_connections: 0,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
        });
        match e.identified {
            Identified::Mtls => p.mtls_connections += e.connections,
            _ => p.haproxy_connections += e.connections,
        }
        p.first_seen = p.first_seen.min(e.first_seen);
        p.last_seen = p.last_seen.max(e.last_seen);
    }
    let all = proven.len();
    let intentions: Vec<_> = proven.into_values().filter(|p| p.connections() >= min_connections).collect();
    Proposal { below_threshold: all - intentions.len(), intentions, unproven }
}
