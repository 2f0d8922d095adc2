//! Output formats for the analysis: the graph as an aligned text table, JSON and Graphviz DOT; a
//! proposal as policy TOML; readiness as text. Pure string building, no analysis and no I/O.
//!
//! The JSON form (`"format": "cordon-graph/1"`) is documented in `docs/ledger.md`; fields are
//! only ever added to it.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::json;

use super::{Declared, NodeKind, Observed, Proposal, ServiceReadiness};
use crate::base::escape;
use crate::policy::Identified;

/// `2026-11-22` (UTC).
pub fn day(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `2026-11-22T10:05Z` (UTC): one token, for tables.
pub fn minute(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!("{}T{:02}:{:02}Z", day(t.into()), t.hour(), t.minute())
}

/// `2026-11-22T10:05:09Z` (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!("{}T{:02}:{:02}:{:02}Z", day(t.into()), t.hour(), t.minute(), t.second())
}

/// Lays out rows in columns, two spaces apart; numbers (all-digit cells) align right.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (c, cell) in row.iter().enumerate() {
            let numeric = !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit());
            if numeric {
                let _ = write!(line, "{cell:>w$}  ", w = width[c]);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = width[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn outcomes(e: &super::ObservedEdge) -> String {
    let parts: Vec<String> = [("allowed", e.allowed), ("would-deny", e.would_deny), ("denied", e.denied)]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name}:{n}"))
        .collect();
    if parts.is_empty() { "-".to_owned() } else { parts.join(",") }
}

/// What `policy` (the policy now, `cordon graph --policy`) does to a recorded edge in its
/// destination's mode now: `allowed`, `would-deny` or `denied`, by the one decision.
pub fn policy_outcome(policy: &crate::policy::Policy, e: &super::ObservedEdge) -> &'static str {
    use crate::policy::{DecisionContext, Subject, decide};
    let subject = Subject::recorded(&e.source, e.identified);
    decide(policy, &subject, &e.destination, &DecisionContext::review()).outcome.as_str()
}

/// The graph as an aligned table, one edge a line, with a header line. Every cell is one
/// whitespace-free token, so the table splits back on whitespace.
pub fn graph_text(observed: &Observed) -> String {
    graph_text_by(observed, None)
}

/// [`graph_text`], with a `POLICY` column: what `policy` does to each edge now.
pub fn graph_text_by(observed: &Observed, policy: Option<&crate::policy::Policy>) -> String {
    let mut rows = vec![
        [
            "SOURCE",
            "DESTINATION",
            "IDENTIFIED",
            "CONNECTIONS",
            "BYTES_TO_DEST",
            "BYTES_TO_SOURCE",
            "FIRST_SEEN",
            "LAST_SEEN",
            "DAYS",
            "OUTCOMES",
            "DECLARED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    if policy.is_some() {
        rows[0].push("POLICY".to_owned());
    }
    for e in &observed.edges {
        rows.push(vec![
            escape::cell(&e.source).into_owned(),
            escape::cell(&e.destination).into_owned(),
            if e.claimed { format!("{},claimed", e.identified) } else { e.identified.to_string() },
            e.connections.to_string(),
            e.bytes_to_destination.to_string(),
            e.bytes_to_source.to_string(),
            minute(e.first_seen),
            minute(e.last_seen),
            e.days_seen.to_string(),
            outcomes(e),
            declared_cell(observed, &e.source, &e.destination).to_owned(),
        ]);
        if let (Some(p), Some(row)) = (policy, rows.last_mut()) {
            row.push(policy_outcome(p, e).to_owned());
        }
    }
    for (d, service) in observed.declarations.never_seen(observed) {
        let mut row = vec![
            escape::cell(&d.identity).into_owned(),
            escape::cell(service).into_owned(),
            "declared".to_owned(),
        ];
        row.extend(["0", "0", "0", "-", "-", "0", "never-seen"].map(String::from));
        row.push(declared_cell(observed, &d.identity, service).to_owned());
        if policy.is_some() {
            row.push("-".to_owned());
        }
        rows.push(row);
    }
    table(&rows, "")
}

/// What the caller's declarations say of an edge: `yes`, `broad` (declared by a broad
/// declaration), `no` (the caller declares, not this), `-` (the caller declares nothing).
fn declared_cell(observed: &Observed, source: &str, destination: &str) -> &'static str {
    let decl = &observed.declarations;
    match decl.edge(source, destination) {
        Declared::Yes if decl.get(source).is_some_and(|d| d.broad) => "broad",
        other => other.as_str(),
    }
}

/// The graph as JSON (`cordon-graph/1`), pretty-printed.
pub fn graph_json(observed: &Observed) -> String {
    graph_json_by(observed, None)
}

/// [`graph_json`], each edge with `"policy"`: what `policy` does to it now.
pub fn graph_json_by(observed: &Observed, policy: Option<&crate::policy::Policy>) -> String {
    let nodes: Vec<_> = observed
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name, "kind": n.kind.as_str(),
                "connections_out": n.connections_out, "connections_in": n.connections_in,
            })
        })
        .collect();
    let edges: Vec<_> = observed
        .edges
        .iter()
        .map(|e| {
            let mut edge = json!({
                "source": e.source, "destination": e.destination, "identified": e.identified.as_str(),
                "connections": e.connections,
                "bytes_to_destination": e.bytes_to_destination, "bytes_to_source": e.bytes_to_source,
                "first_seen": rfc3339(e.first_seen), "last_seen": rfc3339(e.last_seen),
                "days_seen": e.days_seen,
                "outcomes": { "allowed": e.allowed, "would_deny": e.would_deny, "denied": e.denied },
                "modes": e.modes.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                // Seen: the destination recorded it (or an operator shipped it); claimed: only
                // its source says so.
                "evidence": if e.claimed { "claimed" } else { "seen" },
                "declared": match declared_cell(observed, &e.source, &e.destination) {
                    "-" => serde_json::Value::Null,
                    d => d.into(),
                },
            });
            if let (Some(p), Some(o)) = (policy, edge.as_object_mut()) {
                o.insert("policy".into(), policy_outcome(p, e).into());
            }
            edge
        })
        .collect();
    let declarations: Vec<_> = observed
        .declarations
        .by_identity
        .values()
        .map(|d| {
            json!({
                "identity": d.identity, "services": d.services, "hosts": d.hosts,
                "origins": d.origins.iter().map(|o| o.as_str()).collect::<Vec<_>>(), "broad": d.broad,
            })
        })
        .collect();
    let never_seen: Vec<_> = observed
        .declarations
        .never_seen(observed)
        .into_iter()
        .map(|(d, service)| json!({ "source": d.identity, "destination": service, "broad": d.broad }))
        .collect();
    let doc = json!({
        "format": "cordon-graph/1",
        "since": observed.since.map(rfc3339),
        "nodes": nodes,
        "edges": edges,
        "declarations": declarations,
        "declared_never_seen": never_seen,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// A DOT string literal.
fn quoted(s: &str) -> String {
    escape::dot_quoted(s)
}

/// The graph for Graphviz (`dot -Tsvg`). Edge colour is the verdict (green allowed, orange
/// would-deny, red denied); line style is the evidence (solid mTLS, dashed HAProxy log, dotted
/// plaintext or unknown). Addresses are dashed ellipses. A seen edge its caller's declarations do
/// not name says `undeclared` (`broad` when a broad declaration names it); a declared edge never
/// seen is grey and dashed with a hollow arrowhead.
pub fn graph_dot(observed: &Observed) -> String {
    graph_dot_by(observed, None)
}

/// [`graph_dot`], with each edge's colour and verdict from what `policy` does to it now rather
/// than from what was recorded at the time.
pub fn graph_dot_by(observed: &Observed, policy: Option<&crate::policy::Policy>) -> String {
    let mut out = String::from(
        "digraph cordon {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];\n",
    );
    for n in observed.nodes.iter().filter(|n| n.kind == NodeKind::Address) {
        let _ = writeln!(out, "  {} [shape=ellipse, style=dashed];", quoted(&n.name));
    }
    for e in &observed.edges {
        let verdict = match policy {
            Some(p) => policy_outcome(p, e),
            None if e.denied > 0 => "denied",
            None if e.would_deny > 0 => "would-deny",
            None => "allowed",
        };
        let color = match verdict {
            "denied" => "red",
            "would-deny" => "darkorange",
            _ => "forestgreen",
        };
        let style = match e.identified {
            Identified::Mtls => "solid",
            Identified::HaproxyLog => "dashed",
            Identified::PlaintextIp | Identified::Unknown => "dotted",
        };
        let declared = match declared_cell(observed, &e.source, &e.destination) {
            "no" => ", undeclared",
            "broad" => ", broad",
            _ => "",
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}, color={color}, fontcolor={color}, style={style}];",
            quoted(&e.source),
            quoted(&e.destination),
            quoted(&format!("{} conn, {}, {verdict}{declared}", e.connections, e.identified)),
        );
    }
    for (d, service) in observed.declarations.never_seen(observed) {
        let _ = writeln!(
            out,
            "  {} -> {} [label=\"declared, never seen\", color=gray50, fontcolor=gray50, style=dashed, arrowhead=empty];",
            quoted(&d.identity),
            quoted(service),
        );
    }
    out.push_str("}\n");
    out
}

/// `1 connection`, `2 connections`.
fn connections(n: u64) -> String {
    if n == 1 { "1 connection".to_owned() } else { format!("{n} connections") }
}

/// A TOML string literal, for values.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// One `# ` comment line whatever `line` holds: a name in it can never end the comment and
/// write live TOML after it.
fn comment(out: &mut String, line: &str) {
    let _ = writeln!(out, "# {}", escape::toml_comment(line));
}

/// The proposal as policy TOML: `header` lines as comments, one `[[intention]]` per proposal,
/// and what cannot be proposed as comments only.
pub fn proposal_toml(proposal: &Proposal, header: &[String]) -> String {
    let mut out = String::new();
    for line in header.iter().chain(&proposal.rules) {
        comment(&mut out, line);
    }
    if proposal.intentions.is_empty() {
        out.push_str("# Nothing to propose.\n");
    }
    for p in &proposal.intentions {
        let _ = write!(
            out,
            "\n[[intention]]\nsource = {}\ndestination = {}\naction = \"{}\"\nnote = {}\n",
            toml_str(&p.source),
            toml_str(&p.destination),
            p.action,
            toml_str(&p.note())
        );
    }
    if proposal.below_threshold > 0 {
        let _ = write!(
            out,
            "\n# {} more pair(s) had fewer connections than --min-connections.\n",
            proposal.below_threshold
        );
    }
    if !proposal.declared_only.is_empty() {
        out.push_str("\n# Declared but not proposed; review by hand:\n");
        for d in &proposal.declared_only {
            comment(&mut out, &format!("  \"{}\" -> \"{}\"  ({})", d.source, d.destination, d.reason));
        }
    }
    if !proposal.unproven.is_empty() {
        out.push_str("\n# Seen but not proposed (not proven, or only probes); review by hand:\n");
        for u in &proposal.unproven {
            comment(
                &mut out,
                &format!(
                    "  \"{}\" -> \"{}\"  {}: {}, {}..{} ({})",
                    u.source,
                    u.destination,
                    u.identified,
                    connections(u.connections),
                    day(u.first_seen),
                    day(u.last_seen),
                    u.reason
                ),
            );
        }
    }
    out
}

/// Readiness as text: per service a line `NAME (MODE): ready to enforce` or `...: not ready: N
/// callers would be cut off`, then its callers in an aligned table with their status.
pub fn diff_text(services: &[ServiceReadiness]) -> String {
    let mut out = String::new();
    for s in services {
        let _ = writeln!(out, "{}", escape::text(&format!("{} ({}): {}", s.service, s.mode, s.summary())));
        for line in readiness_facts(s) {
            let _ = writeln!(out, "  {}", escape::text(&line));
        }
        if s.callers.is_empty() {
            out.push_str("  no callers recorded\n");
            continue;
        }
        let mut rows = vec![
            ["STATUS", "CALLER", "IDENTIFIED", "POLICY", "CONNECTIONS", "DAYS", "LAST_SEEN", "DECLARED"]
                .map(String::from)
                .to_vec(),
        ];
        for c in &s.callers {
            let mut status = Vec::new();
            if c.denied_by_intentions {
                status.push(if c.intended_deny { "denied-on-purpose" } else { "would-deny" });
            }
            if c.plaintext() {
                status.push("plaintext");
            }
            if c.rare {
                status.push("rare");
            }
            if c.new {
                status.push("new");
            }
            if c.probe_only {
                status.push("probe-only");
            }
            if c.declared == Declared::No {
                status.push("undeclared");
            }
            if c.claimed {
                status.push("claimed");
            }
            rows.push(vec![
                if status.is_empty() { "ok".to_owned() } else { status.join(",") },
                escape::cell(&c.source).into_owned(),
                c.identified.to_string(),
                c.verdict.to_string(),
                c.connections.to_string(),
                c.days_seen.to_string(),
                minute(c.last_seen),
                c.declared.as_str().to_owned(),
            ]);
        }
        out.push_str(&table(&rows, "  "));
    }
    out
}

/// The per-service readiness facts beside the caller table: the history span, declared callers
/// never seen, undeclared, new and probe-only callers.
pub fn readiness_facts(s: &ServiceReadiness) -> Vec<String> {
    let mut out = vec![match s.history {
        Some((first, last)) => format!(
            "history: {:.1} days ({}..{})",
            s.history_span().as_secs_f64() / 86_400.0,
            minute(first),
            minute(last)
        ),
        None => "history: none recorded".to_owned(),
    }];
    if !s.declared_never_seen.is_empty() {
        let names: Vec<String> = s
            .declared_never_seen
            .iter()
            .map(|d| {
                let tag = if d.broad {
                    ", broad: not intent"
                } else if d.cut_off() {
                    ", would-deny"
                } else {
                    ""
                };
                format!("{} ({}{tag})", d.source, d.provenance)
            })
            .collect();
        out.push(format!("declared, never seen: {}", names.join("; ")));
    }
    for (what, names) in [
        ("undeclared callers (their declarations do not name it)", s.undeclared()),
        (&*format!("new callers (first seen in the last {} days)", super::diff::NEW_DAYS), s.new_callers()),
        ("probe-only callers (no byte either way)", s.probe_only()),
    ] {
        if !names.is_empty() {
            out.push(format!("{what}: {}", names.join(", ")));
        }
    }
    out
}
