//! The picture of the whole graph, for pages small enough to read one (see
//! [`super::PICTURE_MAX_NODES`]): a layered layout (layers by longest path, order by barycentre)
//! and edge routing, drawn as inline SVG.
//!
//! Every step is linear in nodes and edges, or `n log n`: ranks come from one topological pass,
//! each barycentre pass reads each edge once, and an edge finds its free height by binary search
//! in the layers it crosses. It only lays out and draws what it is given; the edge classes and
//! modes come from the caller.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

use super::{EdgeClass, escape};
use crate::graph::{NodeKind, Observed, format};

const LAYER_GAP: f64 = 230.0;
const ROW_GAP: f64 = 92.0;
const NODE_W: f64 = 150.0;
const NODE_H: f64 = 48.0;
const MARGIN: f64 = 40.0;

/// Where each node sits: its centre and its layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pos {
    pub x: f64,
    pub y: f64,
    pub layer: usize,
}

/// Node positions by name, and each layer's box heights (sorted) for routing.
#[derive(Debug, Clone)]
pub struct Layout {
    pub at: HashMap<String, Pos>,
    layer_ys: Vec<Vec<f64>>,
}

/// Lays the graph out: callers on the left, the services they call to the right.
pub fn layout(observed: &Observed) -> Layout {
    let names: Vec<&str> = observed.nodes.iter().map(|n| n.name.as_str()).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let n = names.len();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    for e in &observed.edges {
        if let (Some(&s), Some(&d)) = (index.get(e.source.as_str()), index.get(e.destination.as_str()))
            && s != d
            && seen.insert((s, d))
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
    // Longest path from the callers gives each node its layer: one pass in topological order.
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (v, ws) in dag.iter().enumerate() {
        for &w in ws {
            preds[w].push(v);
            indegree[w] += 1;
        }
    }
    let mut queue: VecDeque<usize> = (0..n).filter(|&v| indegree[v] == 0).collect();
    let mut rank = vec![0usize; n];
    while let Some(v) = queue.pop_front() {
        for &w in &dag[v] {
            rank[w] = rank[w].max(rank[v] + 1);
            indegree[w] -= 1;
            if indegree[w] == 0 {
                queue.push_back(w);
            }
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
                let p = &preds[v];
                if p.is_empty() { pos[v] } else { p.iter().map(|&u| pos[u]).sum::<f64>() / p.len() as f64 }
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
    let mut layer_ys = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        // Centre shorter layers against the tallest.
        let offset = (tallest - row.len() as f64) * ROW_GAP / 2.0;
        let mut ys = Vec::with_capacity(row.len());
        for (i, &v) in row.iter().enumerate() {
            let x = MARGIN + NODE_W / 2.0 + r as f64 * LAYER_GAP;
            let y = MARGIN + NODE_H / 2.0 + offset + i as f64 * ROW_GAP;
            at.insert(names[v].to_string(), Pos { x, y, layer: r });
            ys.push(y);
        }
        layer_ys.push(ys); // rows are placed top to bottom, so already sorted
    }
    Layout { at, layer_ys }
}

impl Layout {
    /// Whether a level line at `y` through `layers` would touch a box (closer than `pad`), and if
    /// so the height just above (`up`) or below the boxes it touches.
    fn blocked(&self, layers: &[Vec<f64>], y: f64, pad: f64, up: bool) -> Option<f64> {
        let mut next: Option<f64> = None;
        for ys in layers {
            // The boxes strictly within `pad` of `y`: binary search for the first at or above
            // `y - pad`, then walk while still within reach.
            let start = ys.partition_point(|&by| by <= y - pad + 1e-6);
            for &by in ys[start..].iter().take_while(|&&by| by < y + pad - 1e-6) {
                let to = if up { by - pad } else { by + pad };
                next = Some(next.map_or(to, |t| if up { t.min(to) } else { t.max(to) }));
            }
        }
        next
    }

    /// The free height nearest `wanted` for a level line through `layers`.
    fn free_height(&self, layers: &[Vec<f64>], wanted: f64, pad: f64) -> f64 {
        let boxes: usize = layers.iter().map(Vec::len).sum();
        let search = |up: bool| {
            let mut y = wanted;
            // Each step moves past at least one box, so this many steps always suffice.
            for _ in 0..=boxes {
                match self.blocked(layers, y, pad, up) {
                    Some(next) => y = next,
                    None => return y,
                }
            }
            y
        };
        let (up, down) = (search(true), search(false));
        if (up - wanted).abs() <= (down - wanted).abs() { up } else { down }
    }

    /// The SVG path of an edge and where its count goes. Edges between neighbouring layers are
    /// one curve; longer ones run level through the layers between, at a height no box occupies;
    /// edges against the flow loop below the boxes.
    fn edge_path(&self, from: Pos, to: Pos) -> (String, Option<(f64, f64)>) {
        let (x1, y1, x2, y2) = (from.x, from.y, to.x, to.y);
        if to.layer <= from.layer {
            let (sy, ey) = (y1 + NODE_H / 2.0, y2 + NODE_H / 2.0 + 2.0);
            let low = sy.max(ey) + 45.0;
            return (format!("M{x1:.1},{sy:.1} C{x1:.1},{low:.1} {x2:.1},{low:.1} {x2:.1},{ey:.1}"), None);
        }
        let (sx, ex) = (x1 + NODE_W / 2.0, x2 - NODE_W / 2.0 - 2.0);
        let between = &self.layer_ys[from.layer + 1..to.layer];
        if between.iter().all(Vec::is_empty) {
            let bend = (ex - sx) / 2.0;
            let d = format!(
                "M{sx:.1},{y1:.1} C{:.1},{y1:.1} {:.1},{y2:.1} {ex:.1},{y2:.1}",
                sx + bend,
                ex - bend
            );
            return (d, Some(((x1 + x2) / 2.0, (y1 + y2) / 2.0)));
        }
        // The free height nearest the straight line: the line itself, or just above or below a box.
        let wy = self.free_height(between, (y1 + y2) / 2.0, NODE_H / 2.0 + 16.0);
        let layer_x = |r: usize| MARGIN + NODE_W / 2.0 + r as f64 * LAYER_GAP;
        let lx = layer_x(from.layer + 1) - NODE_W / 2.0 - 12.0;
        let rx = layer_x(to.layer - 1) + NODE_W / 2.0 + 12.0;
        let (c1, c2) = ((sx + lx) / 2.0, (rx + ex) / 2.0);
        let d = format!(
            "M{sx:.1},{y1:.1} C{c1:.1},{y1:.1} {c1:.1},{wy:.1} {lx:.1},{wy:.1} L{rx:.1},{wy:.1} C{c2:.1},{wy:.1} {c2:.1},{y2:.1} {ex:.1},{y2:.1}"
        );
        (d, Some(((lx + rx) / 2.0, wy)))
    }
}

/// The whole graph as one SVG. `class` gives each edge's class (by index in `observed.edges`);
/// `mode` a destination's mode (`None`: a caller only).
pub fn svg(observed: &Observed, class: &[EdgeClass], mode: &dyn Fn(&str) -> Option<&'static str>) -> String {
    let layout = layout(observed);
    let at = &layout.at;
    let width = at.values().map(|p| p.x).fold(0.0, f64::max) + NODE_W / 2.0 + MARGIN;
    let height = at.values().map(|p| p.y).fold(0.0, f64::max) + NODE_H / 2.0 + MARGIN + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="service graph">"#,
        w = width.max(300.0),
        h = height.max(120.0)
    );
    s.push_str("<defs>");
    for class in EdgeClass::ALL {
        let _ = write!(
            s,
            r#"<marker id="arrow-{c}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="head {c}"/></marker>"#,
            c = class.as_str()
        );
    }
    s.push_str("</defs>");
    for (e, class) in observed.edges.iter().zip(class) {
        let (Some(&from), Some(&to)) = (at.get(&e.source), at.get(&e.destination)) else {
            continue;
        };
        let width = (1.2 + 1.6 * ((e.connections as f64) + 1.0).log10()).min(8.0);
        let (d, label_at) = layout.edge_path(from, to);
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
            r#"<a href="{href}"><g class="edge {c}" data-source="{src}" data-destination="{dst}" data-identified="{ident}"><title>{title}</title><path d="{d}" stroke-width="{width:.1}" marker-end="url(#arrow-{c})"/></g></a>"#,
            href = super::focus_href(&e.destination),
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
        let Some(&Pos { x, y, .. }) = at.get(&node.name) else { continue };
        let (mode, kind) = match node.kind {
            NodeKind::Address => ("unknown address", "address"),
            NodeKind::Service => (mode(&node.name).unwrap_or("caller"), "service"),
        };
        let _ = write!(
            s,
            r#"<a href="{href}"><g class="node {kind} {mode}" data-name="{name}"><rect x="{:.1}" y="{:.1}" width="{NODE_W}" height="{NODE_H}" rx="9"/><text class="name" x="{x:.1}" y="{:.1}">{name}</text><text class="mode" x="{x:.1}" y="{:.1}">{mode}</text></g></a>"#,
            x - NODE_W / 2.0,
            y - NODE_H / 2.0,
            y - 3.0,
            y + 14.0,
            href = super::focus_href(&node.name),
            name = escape(&node.name),
        );
    }
    s.push_str("</svg>");
    s
}
