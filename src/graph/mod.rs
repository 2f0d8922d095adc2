//! Graph analysis over the ledger: the who-talks-to-whom graph, proposed intentions, and the
//! readiness of each service to be enforced.
//!
//! Owns the analysis ([`load`], [`propose()`], [`diff()`]) and, kept apart from it, the output
//! formats ([`format`](mod@format): text, JSON, DOT, TOML). It reads the ledger only through
//! [`crate::ledger`] (never SQL of its own), and judges every recorded caller with the one
//! decision, [`crate::policy::decide()`]: it never derives a verdict of its own. It must not
//! write files.

pub mod declared;
pub mod diff;
pub mod format;
pub mod propose;
pub mod report;

pub use declared::{Declarations, Declared, Declarer};
pub use diff::{CallerReadiness, Judging, ServiceReadiness, diff, evidence};
pub use propose::{Basis, DeclaredOnly, Proposal, ProposedIntention, Unproven, propose};

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use petgraph::graph::{DiGraph, NodeIndex};

use crate::base::Source;
pub use crate::ledger::EdgeTotals as ObservedEdge;
use crate::ledger::LedgerError;

/// Whether a graph node is a service or a bare address (`ip:A.B.C.D`, a caller discovery does
/// not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Service,
    Address,
}

impl NodeKind {
    pub fn of(name: &str) -> Self {
        if Source::names_address(name) { NodeKind::Address } else { NodeKind::Service }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Service => "service",
            NodeKind::Address => "address",
        }
    }
}

/// A service or address with its traffic in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// Connections it opened.
    pub connections_out: u64,
    /// Connections it received.
    pub connections_in: u64,
}

/// The recorded graph over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Start of the window; `None` is the whole history.
    pub since: Option<SystemTime>,
    /// Sorted by name.
    pub nodes: Vec<Node>,
    /// One per (source, destination, how identified), sorted by destination, source,
    /// identification.
    pub edges: Vec<ObservedEdge>,
    /// The upstreams callers declared (whatever the window: intent has no age).
    pub declarations: Declarations,
}

/// Loads the graph recorded in `db` since `since` (the whole history when `None`), with the
/// declared upstreams.
pub fn load(db: &Path, since: Option<SystemTime>) -> Result<Observed, LedgerError> {
    let observed = Observed::from_edges(since, crate::ledger::edge_totals(db, since)?);
    Ok(observed.with_declarations(&crate::ledger::declarations(db)?))
}

impl Observed {
    /// Builds the nodes from the edges.
    pub fn from_edges(since: Option<SystemTime>, edges: Vec<ObservedEdge>) -> Self {
        let graph = petgraph_of(&edges);
        let mut nodes: Vec<Node> = graph
            .node_indices()
            .map(|n| {
                let sum = |dir| graph.edges_directed(n, dir).map(|e| edges[*e.weight()].connections).sum();
                Node {
                    name: graph[n].to_owned(),
                    kind: NodeKind::of(graph[n]),
                    connections_out: sum(petgraph::Direction::Outgoing),
                    connections_in: sum(petgraph::Direction::Incoming),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let declarations = Declarations::of(&[], &edges);
        Observed { since, nodes, edges, declarations }
    }

    /// The same graph, with `declarations` as the callers' declared upstreams.
    pub fn with_declarations(mut self, declarations: &[crate::ledger::Declaration]) -> Self {
        self.declarations = Declarations::of(declarations, &self.edges);
        self
    }

    /// The graph as petgraph sees it: nodes are names, edge weights index [`Observed::edges`].
    pub fn petgraph(&self) -> DiGraph<&str, usize> {
        petgraph_of(&self.edges)
    }

    /// The earliest and latest moment recorded, if anything was.
    pub fn span(&self) -> Option<(SystemTime, SystemTime)> {
        let first = self.edges.iter().map(|e| e.first_seen).min()?;
        let last = self.edges.iter().map(|e| e.last_seen).max()?;
        Some((first, last))
    }
}

fn petgraph_of(edges: &[ObservedEdge]) -> DiGraph<&str, usize> {
    let mut graph = DiGraph::new();
    let mut index: HashMap<&str, NodeIndex> = HashMap::new();
    for (i, e) in edges.iter().enumerate() {
        let mut ends = [NodeIndex::end(); 2];
        for (slot, name) in ends.iter_mut().zip([e.source.as_str(), e.destination.as_str()]) {
            *slot = *index.entry(name).or_insert_with(|| graph.add_node(name));
        }
        graph.add_edge(ends[0], ends[1], i);
    }
    graph
}

/// Parses a `--since` window: a whole number followed by `d`, `h` or `m` (`30d`, `12h`, `90m`).
pub fn parse_window(s: &str) -> Result<Duration, String> {
    crate::base::parse_span(s, false)
        .ok_or_else(|| format!("bad window {s:?}: expected a number followed by d, h or m (30d, 12h, 90m)"))
}

#[cfg(test)]
mod tests;
