//! Declared dependencies beside the evidence: which identities declared their upstreams, what,
//! and whether a declaration says anything.
//!
//! An identity *declares* once any agent or imported `haproxy.cfg` has recorded its upstreams,
//! even an empty list; across hosts and origins its declarations are the union. A declaration is
//! *broad* when it names at least [`BROAD_MIN_SERVICES`] services and more than half of the
//! fleet's services (every destination recorded or declared): many fleets hand every host the same
//! Synapse config, and a caller that declares most of the fleet says nothing about what it needs.
//! Broad declarations still count for "this edge was declared"; only their never-seen edges are
//! not proposed. An edge is *probe-only* when no byte crossed it either way: a health check or a
//! wait-for-port loop on an upstream port, which proves nothing about the caller.
//!
//! Pure over [`Observed`]; the rules that use this live in `propose`, `diff` and the preflight.

use std::collections::{BTreeMap, BTreeSet};

use super::{NodeKind, Observed, ObservedEdge};
use crate::ledger::{Declaration, DeclarationOrigin};

/// A declaration naming at least this many services can be broad.
pub const BROAD_MIN_SERVICES: usize = 5;

/// One identity's declarations, united over hosts and origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declarer {
    pub identity: String,
    /// Every service any of its declarations names.
    pub services: BTreeSet<String>,
    /// The hosts that declared for it.
    pub hosts: BTreeSet<String>,
    pub origins: BTreeSet<DeclarationOrigin>,
    /// Names most of the fleet: its never-seen edges are not intent (see the module doc).
    pub broad: bool,
}

impl Declarer {
    /// `haproxy.cfg on host-a, host-b` or `cordon.toml, haproxy.cfg on 3 hosts`.
    pub fn provenance(&self) -> String {
        let origins: Vec<&str> = self.origins.iter().map(|o| o.as_str()).collect();
        let hosts = if self.hosts.len() <= 3 {
            self.hosts.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
        } else {
            format!("{} hosts", self.hosts.len())
        };
        format!("{} on {hosts}", origins.join(", "))
    }
}

/// What an identity's declarations say of one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// The caller has no declaration on record: judge by the evidence alone.
    Unknown,
    /// The caller declares this destination.
    Yes,
    /// The caller declares, but not this destination.
    No,
}

impl Declared {
    pub fn as_str(self) -> &'static str {
        match self {
            Declared::Unknown => "-",
            Declared::Yes => "yes",
            Declared::No => "no",
        }
    }
}

/// Every declarer of a ledger, and the fleet's size they are judged against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declarations {
    /// By identity.
    pub by_identity: BTreeMap<String, Declarer>,
    /// Distinct services the fleet knows: recorded destinations and declared services.
    pub fleet_services: usize,
}

impl Declarations {
    /// Unites `declarations` per identity and judges each for breadth against the services in
    /// `edges` and the declarations.
    pub fn of(declarations: &[Declaration], edges: &[ObservedEdge]) -> Self {
        let mut by_identity: BTreeMap<String, Declarer> = BTreeMap::new();
        let mut fleet: BTreeSet<&str> = edges
            .iter()
            .map(|e| e.destination.as_str())
            .filter(|d| NodeKind::of(d) == NodeKind::Service)
            .collect();
        for d in declarations {
            fleet.extend(d.services.iter().map(String::as_str));
            let entry = by_identity.entry(d.identity.clone()).or_insert_with(|| Declarer {
                identity: d.identity.clone(),
                services: BTreeSet::new(),
                hosts: BTreeSet::new(),
                origins: BTreeSet::new(),
                broad: false,
            });
            entry.services.extend(d.services.iter().cloned());
            entry.hosts.insert(d.host.clone());
            entry.origins.insert(d.origin);
        }
        let fleet_services = fleet.len();
        for d in by_identity.values_mut() {
            d.broad = d.services.len() >= BROAD_MIN_SERVICES && d.services.len() * 2 > fleet_services;
        }
        Declarations { by_identity, fleet_services }
    }

    pub fn get(&self, identity: &str) -> Option<&Declarer> {
        self.by_identity.get(identity)
    }

    /// What `source`'s declarations say of `source -> destination`.
    pub fn edge(&self, source: &str, destination: &str) -> Declared {
        match self.by_identity.get(source) {
            None => Declared::Unknown,
            Some(d) if d.services.contains(destination) => Declared::Yes,
            Some(_) => Declared::No,
        }
    }

    /// The identities that declare `destination`, sorted.
    pub fn callers_of<'a>(&'a self, destination: &'a str) -> impl Iterator<Item = &'a Declarer> + 'a {
        self.by_identity.values().filter(move |d| d.services.contains(destination))
    }

    /// Declared edges no recorded edge (of any evidence, probes included) matches, sorted by
    /// destination, then source.
    pub fn never_seen<'a>(&'a self, observed: &'a Observed) -> Vec<(&'a Declarer, &'a str)> {
        let seen: BTreeSet<(&str, &str)> =
            observed.edges.iter().map(|e| (e.source.as_str(), e.destination.as_str())).collect();
        let mut out: Vec<(&Declarer, &str)> = self
            .by_identity
            .values()
            .flat_map(|d| d.services.iter().map(move |s| (d, s.as_str())))
            .filter(|(d, s)| !seen.contains(&(d.identity.as_str(), *s)))
            .collect();
        out.sort_by(|a, b| (a.1, &a.0.identity).cmp(&(b.1, &b.0.identity)));
        out
    }
}

/// No byte crossed the edge either way, and none of it was refused: only probes. (An open
/// connection reports its bytes a second after it opened, then every minute, and at its close.)
pub fn probe_only(e: &ObservedEdge) -> bool {
    e.connections > 0 && e.bytes_to_destination == 0 && e.bytes_to_source == 0 && e.denied == 0
}

/// The rules `propose` applies, one line each, for the proposal's header.
pub fn rules(decl: &Declarations) -> Vec<String> {
    let mut out = vec![
        "Rules: an edge proven by a certificate or a loopback HAProxy log is allowed (at least \
         --min-connections for a caller that declares nothing); so is an edge its caller declares \
         (cordon.toml upstreams, or haproxy.cfg frontends imported with --db), seen or not."
            .to_owned(),
        "A caller that declares its upstreams and was seen over mTLS calling a service it does not \
         declare did not come through a configured cordon upstream: that edge gets action = \"deny\" \
         (seen only in HAProxy logs it came through a frontend: judged on the evidence)."
            .to_owned(),
        "Edges with no byte either way (health checks, wait-for-port loops) prove nothing: comments."
            .to_owned(),
        format!(
            "A declaration naming at least {BROAD_MIN_SERVICES} services and more than half of the \
             fleet's {} services is broad (every host got the same config): its never-seen edges are \
             comments.",
            decl.fleet_services
        ),
    ];
    let broad: Vec<&str> =
        decl.by_identity.values().filter(|d| d.broad).map(|d| d.identity.as_str()).collect();
    if !broad.is_empty() {
        out.push(format!("Broad declarations here: {}.", broad.join(", ")));
    }
    out
}
