//! `cordon report`: one self-contained HTML page to decide from. The graph is drawn as inline SVG
//! with a layout computed here (layers by longest path, order by barycenter); edges are coloured
//! by what the current policy makes of them and sized by connection count. No scripts, fonts or
//! images are fetched: the file works offline.
//!
//! Only lays out and renders: the analyses are `graph::load`, `propose` and `diff`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use super::diff::ServiceReadiness;
use super::format;
use super::{NodeKind, Observed, PolicyView};
use crate::policy::{Identified, Mode, Verdict};

/// What the page shows an edge as; also its CSS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeClass {
    Allowed,
    WouldDeny,
    Denied,
    Plaintext,
}

impl EdgeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeClass::Allowed => "allowed",
            EdgeClass::WouldDeny => "would-deny",
            EdgeClass::Denied => "denied",
            EdgeClass::Plaintext => "plaintext",
        }
    }

    /// How the current policy treats an edge recorded with this identification.
    pub fn of(policy: &dyn PolicyView, source: &str, destination: &str, identified: Identified) -> Self {
        if matches!(identified, Identified::PlaintextIp | Identified::Unknown) {
            return EdgeClass::Plaintext;
        }
        match (policy.verdict(source, destination), policy.mode(destination)) {
            (Verdict::Allow, _) => EdgeClass::Allowed,
            (Verdict::Deny, Mode::Learn) => EdgeClass::WouldDeny,
            (Verdict::Deny, Mode::Enforce) => EdgeClass::Denied,
        }
    }
}

/// HTML-escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const LAYER_GAP: f64 = 230.0;
const ROW_GAP: f64 = 92.0;
const NODE_W: f64 = 150.0;
const NODE_H: f64 = 48.0;
const MARGIN: f64 = 40.0;

/// Node positions (centres), by name: callers on the left, the services they call to the right.
pub fn layout(observed: &Observed) -> HashMap<String, (f64, f64)> {
    let names: Vec<&str> = observed.nodes.iter().map(|n| n.name.as_str()).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let n = names.len();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in &observed.edges {
        if let (Some(&s), Some(&d)) = (index.get(e.source.as_str()), index.get(e.destination.as_str()))
            && s != d
            && !out_edges[s].contains(&d)
        {
            out_edges[s].push(d);
        }
    }
    // Drop back edges (depth-first, in name order) so the rest is acyclic.
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut dag: Vec<Vec<usize>> = vec![Vec::new(); n];
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some((v, i)) = stack.pop() {
            if let Some(&w) = out_edges[v].get(i) {
                stack.push((v, i + 1));
                match state[w] {
                    0 => {
                        dag[v].push(w);
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    2 => dag[v].push(w),
                    _ => {} // a back edge: drawn, but not used for ranking
                }
            } else {
                state[v] = 2;
            }
        }
    }
    // Longest path from the callers gives each node its layer.
    let mut rank = vec![0usize; n];
    for _ in 0..n {
        let mut changed = false;
        for v in 0..n {
            for &w in &dag[v] {
                if rank[w] < rank[v] + 1 {
                    rank[w] = rank[v] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let layers = rank.iter().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for v in 0..n {
        rows[rank[v]].push(v);
    }
    // Order each layer by the mean row of its callers, twice, to untangle crossings.
    let mut pos = vec![0f64; n];
    for row in &rows {
        for (i, &v) in row.iter().enumerate() {
            pos[v] = i as f64;
        }
    }
    for _ in 0..2 {
        for layer in rows.iter_mut().skip(1) {
            let bary = |v: usize| {
                let preds: Vec<f64> = (0..n).filter(|&u| dag[u].contains(&v)).map(|u| pos[u]).collect();
                if preds.is_empty() { pos[v] } else { preds.iter().sum::<f64>() / preds.len() as f64 }
            };
            let mut keyed: Vec<(f64, usize)> = layer.iter().map(|&v| (bary(v), v)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            *layer = keyed.into_iter().map(|(_, v)| v).collect();
            for (i, &v) in layer.iter().enumerate() {
                pos[v] = i as f64;
            }
        }
    }
    let tallest = rows.iter().map(Vec::len).max().unwrap_or(1) as f64;
    let mut at = HashMap::new();
    for (r, row) in rows.iter().enumerate() {
        // Centre shorter layers against the tallest.
        let offset = (tallest - row.len() as f64) * ROW_GAP / 2.0;
        for (i, &v) in row.iter().enumerate() {
            let x = MARGIN + NODE_W / 2.0 + r as f64 * LAYER_GAP;
            let y = MARGIN + NODE_H / 2.0 + offset + i as f64 * ROW_GAP;
            at.insert(names[v].to_string(), (x, y));
        }
    }
    at
}

/// The SVG path of an edge and where its count goes. Edges between neighbouring layers are one
/// curve; longer ones run level through the layers between, at a height no box occupies; edges
/// against the flow loop below the boxes.
fn edge_path(
    at: &HashMap<String, (f64, f64)>,
    (x1, y1): (f64, f64),
    (x2, y2): (f64, f64),
) -> (String, Option<(f64, f64)>) {
    if x2 <= x1 {
        let (sy, ey) = (y1 + NODE_H / 2.0, y2 + NODE_H / 2.0 + 2.0);
        let low = sy.max(ey) + 45.0;
        return (format!("M{x1:.1},{sy:.1} C{x1:.1},{low:.1} {x2:.1},{low:.1} {x2:.1},{ey:.1}"), None);
    }
    let (sx, ex) = (x1 + NODE_W / 2.0, x2 - NODE_W / 2.0 - 2.0);
    let between: Vec<(f64, f64)> =
        at.values().copied().filter(|(x, _)| *x > x1 + 1.0 && *x < x2 - 1.0).collect();
    if between.is_empty() {
        let bend = (ex - sx) / 2.0;
        let d =
            format!("M{sx:.1},{y1:.1} C{:.1},{y1:.1} {:.1},{y2:.1} {ex:.1},{y2:.1}", sx + bend, ex - bend);
        return (d, Some(((x1 + x2) / 2.0, (y1 + y2) / 2.0)));
    }
    // The free height nearest the straight line: the line itself, or just above or below a box.
    let pad = NODE_H / 2.0 + 16.0;
    let wanted = (y1 + y2) / 2.0;
    let free = |y: f64| between.iter().all(|(_, by)| (y - by).abs() >= pad);
    let mut candidates = vec![wanted];
    for (_, by) in &between {
        candidates.push(by - pad);
        candidates.push(by + pad);
    }
    let wy = candidates
        .into_iter()
        .filter(|y| free(*y))
        .min_by(|a, b| (a - wanted).abs().total_cmp(&(b - wanted).abs()))
        .unwrap_or(wanted);
    let lx = between.iter().map(|p| p.0).fold(f64::MAX, f64::min) - NODE_W / 2.0 - 12.0;
    let rx = between.iter().map(|p| p.0).fold(f64::MIN, f64::max) + NODE_W / 2.0 + 12.0;
    let (c1, c2) = ((sx + lx) / 2.0, (rx + ex) / 2.0);
    let d = format!(
        "M{sx:.1},{y1:.1} C{c1:.1},{y1:.1} {c1:.1},{wy:.1} {lx:.1},{wy:.1} L{rx:.1},{wy:.1} C{c2:.1},{wy:.1} {c2:.1},{y2:.1} {ex:.1},{y2:.1}"
    );
    (d, Some(((lx + rx) / 2.0, wy)))
}

/// Bytes in the unit a person reads best.
fn human_bytes(b: u64) -> String {
    match b {
        b if b < 1 << 10 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

fn svg(observed: &Observed, policy: &dyn PolicyView) -> String {
    let at = layout(observed);
    let width = at.values().map(|p| p.0).fold(0.0, f64::max) + NODE_W / 2.0 + MARGIN;
    let height = at.values().map(|p| p.1).fold(0.0, f64::max) + NODE_H / 2.0 + MARGIN + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="service graph">"#,
        w = width.max(300.0),
        h = height.max(120.0)
    );
    s.push_str("<defs>");
    for class in [EdgeClass::Allowed, EdgeClass::WouldDeny, EdgeClass::Denied, EdgeClass::Plaintext] {
        let _ = write!(
            s,
            r#"<marker id="arrow-{c}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="head {c}"/></marker>"#,
            c = class.as_str()
        );
    }
    s.push_str("</defs>");
    for e in &observed.edges {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (at.get(&e.source), at.get(&e.destination)) else {
            continue;
        };
        let class = EdgeClass::of(policy, &e.source, &e.destination, e.identified);
        let width = (1.2 + 1.6 * ((e.connections as f64) + 1.0).log10()).min(8.0);
        let (d, label_at) = edge_path(&at, (x1, y1), (x2, y2));
        let title = format!(
            "{} -> {}: {} connections ({}), {}; first {}, last {}",
            e.source,
            e.destination,
            e.connections,
            e.identified,
            class.as_str(),
            format::minute(e.first_seen),
            format::minute(e.last_seen)
        );
        let _ = write!(
            s,
            r#"<g class="edge {c}" data-source="{src}" data-destination="{dst}" data-identified="{ident}"><title>{title}</title><path d="{d}" stroke-width="{width:.1}" marker-end="url(#arrow-{c})"/></g>"#,
            c = class.as_str(),
            src = escape(&e.source),
            dst = escape(&e.destination),
            ident = e.identified.as_str(),
            title = escape(&title),
        );
        if let Some((mx, my)) = label_at {
            let _ =
                write!(s, r#"<text class="count" x="{mx:.1}" y="{:.1}">{}</text>"#, my - 6.0, e.connections);
        }
    }
    for node in &observed.nodes {
        let Some(&(x, y)) = at.get(&node.name) else { continue };
        let (mode, kind) = match node.kind {
            NodeKind::Address => ("unknown address", "address"),
            NodeKind::Service if node.connections_in == 0 => ("caller", "service"),
            NodeKind::Service => (policy.mode(&node.name).as_str(), "service"),
        };
        let _ = write!(
            s,
            r#"<g class="node {kind} {mode}" data-name="{name}"><rect x="{:.1}" y="{:.1}" width="{NODE_W}" height="{NODE_H}" rx="9"/><text class="name" x="{x:.1}" y="{:.1}">{name}</text><text class="mode" x="{x:.1}" y="{:.1}">{mode}</text></g>"#,
            x - NODE_W / 2.0,
            y - NODE_H / 2.0,
            y - 3.0,
            y + 14.0,
            name = escape(&node.name),
        );
    }
    s.push_str("</svg>");
    s
}

fn readiness_table(services: &[ServiceReadiness]) -> String {
    let mut s = String::from(
        "<table><thead><tr><th>service</th><th>mode</th><th>readiness</th><th>would be denied</th><th>rare callers</th><th>plaintext callers</th><th>last seen</th></tr></thead><tbody>",
    );
    for svc in services {
        let names = |f: &dyn Fn(&super::diff::CallerReadiness) -> bool| {
            let v: Vec<String> = svc
                .callers
                .iter()
                .filter(|c| f(c))
                .map(|c| format!("{} <span class=\"n\">({})</span>", escape(&c.source), c.connections))
                .collect();
            if v.is_empty() { "<span class=\"none\">none</span>".to_string() } else { v.join(", ") }
        };
        let last = svc.callers.iter().map(|c| c.last_seen).max().map(format::minute).unwrap_or_default();
        let ready = svc.ready();
        let _ = write!(
            s,
            r#"<tr class="{cls}" data-service="{name}"><td class="svc">{name}</td><td><span class="pill {mode}">{mode}</span></td><td class="verdict">{summary}<br><small>{facts}</small></td><td>{deny}</td><td>{rare}</td><td>{plain}</td><td>{last}</td></tr>"#,
            cls = if ready { "ready" } else { "not-ready" },
            name = escape(&svc.service),
            mode = svc.mode.as_str(),
            summary = escape(&svc.summary()),
            facts = escape(&format::readiness_facts(svc).join("; ")),
            deny = names(&|c| c.verdict == Verdict::Deny && !c.plaintext()),
            rare = names(&|c| c.rare),
            plain = names(&|c| c.plaintext()),
        );
    }
    s.push_str("</tbody></table>");
    s
}

const STYLE: &str = r#"
:root { --ok:#2e8b57; --warn:#d98c00; --bad:#c62828; --plain:#8a8f98; --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #f5f7fa; }
header { background: #1f2933; color: #f5f7fa; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 650; letter-spacing: .2px; }
header .meta { color: #cbd2d9; font-size: 13px; }
main { max-width: 1360px; margin: 0 auto; padding: 20px 32px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px 20px; margin-bottom: 20px; }
h2 { font-size: 16px; margin: 0 0 12px; }
.totals { display: flex; gap: 28px; flex-wrap: wrap; font-size: 13px; color: var(--muted); }
.totals b { display: block; font-size: 22px; color: var(--ink); }
.legend { display: flex; gap: 18px; font-size: 13px; color: var(--muted); margin-bottom: 8px; flex-wrap: wrap; }
.legend i { display: inline-block; width: 26px; height: 0; border-top: 4px solid; vertical-align: middle; margin-right: 6px; }
.legend .allowed { border-color: var(--ok); } .legend .would-deny { border-color: var(--warn); }
.legend .denied { border-color: var(--bad); } .legend .plaintext { border-color: var(--plain); border-top-style: dashed; }
.graph { overflow-x: auto; }
svg .edge path { fill: none; stroke-linecap: round; opacity: .85; }
svg .edge.allowed path { stroke: var(--ok); } svg .edge.would-deny path { stroke: var(--warn); }
svg .edge.denied path { stroke: var(--bad); } svg .edge.plaintext path { stroke: var(--plain); stroke-dasharray: 7 5; }
svg .head.allowed { fill: var(--ok); } svg .head.would-deny { fill: var(--warn); } svg .head.denied { fill: var(--bad); } svg .head.plaintext { fill: var(--plain); }
svg .node rect { fill: #fff; stroke: #9aa5b1; stroke-width: 1.5; }
svg .node.enforce rect { stroke: var(--bad); stroke-width: 2.5; fill: #fff5f5; }
svg .node.learn rect { stroke: #3e7cb1; fill: #f0f6fc; }
svg .node.address rect { stroke-dasharray: 5 4; fill: #fafafa; }
svg .node text { text-anchor: middle; }
svg .node .name { font-weight: 650; font-size: 14px; }
svg .node .mode { font-size: 11px; fill: var(--muted); }
svg .count { font-size: 11px; fill: var(--muted); text-anchor: middle; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th { text-align: left; font-weight: 600; color: var(--muted); border-bottom: 2px solid var(--line); padding: 6px 10px; }
td { border-bottom: 1px solid var(--line); padding: 7px 10px; vertical-align: top; }
td.svc { font-weight: 650; }
tr.ready td.verdict { color: var(--ok); font-weight: 600; } tr.not-ready td.verdict { color: var(--bad); font-weight: 600; }
.pill { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px; background: #e4eef7; color: #245a8a; }
.pill.enforce { background: #fde2e2; color: #a61b1b; }
.none { color: #9aa5b1; } .n { color: var(--muted); font-size: 12px; }
pre { background: #1f2933; color: #e4e7eb; padding: 14px 16px; border-radius: 8px; overflow-x: auto; font-size: 12.5px; line-height: 1.5; }
"#;

/// Renders the whole page.
pub fn render(
    db: &Path,
    observed: &Observed,
    policy: &dyn PolicyView,
    services: &[ServiceReadiness],
    proposal_toml: &str,
) -> String {
    let span = observed
        .span()
        .map(|(a, b)| format!("{} to {}", format::minute(a), format::minute(b)))
        .unwrap_or_else(|| "nothing recorded yet".into());
    let connections: u64 = observed.edges.iter().map(|e| e.connections).sum();
    let bytes: u64 = observed.edges.iter().map(|e| e.bytes_to_destination + e.bytes_to_source).sum();
    let not_ready = services.iter().filter(|s| !s.ready()).count();
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>cordon review: {db}</title><style>{STYLE}</style></head><body>
<header><h1>cordon review</h1><div class="meta">ledger {db} &middot; traffic {span} &middot; generated {now}</div></header><main>
<section><div class="totals"><div><b>{svc}</b>services and callers</div><div><b>{edges}</b>edges</div><div><b>{connections}</b>connections</div><div><b>{bytes}</b>relayed</div><div><b>{not_ready}</b>services not ready to enforce</div></div></section>
<section><h2>Who talks to whom</h2><div class="legend"><span><i class="allowed"></i>allowed by an intention</span><span><i class="would-deny"></i>would be denied (learning)</span><span><i class="denied"></i>denied (enforcing)</span><span><i class="plaintext"></i>plaintext, no certificate</span><span>line width: connections</span></div><div class="graph">{svg}</div></section>
<section><h2>Readiness to enforce, per service</h2>{table}</section>
<section><h2>Proposed intentions</h2><p>What <code>cordon propose</code> suggests adding to the policy (plaintext callers appear only as comments).</p><pre>{proposal}</pre></section>
</main></body></html>
"#,
        db = escape(&db.display().to_string()),
        span = escape(&span),
        now = format::minute(SystemTime::now()),
        svc = observed.nodes.len(),
        edges = observed.edges.len(),
        bytes = human_bytes(bytes),
        svg = svg(observed, policy),
        table = readiness_table(services),
        proposal = escape(proposal_toml),
    );
    h
}
