//! The page's data block: every node, destination and edge as one compact JSON document inside
//! `<script type="application/json">`, which the page's script reads to draw the overview, the
//! search results and the focus view of one service.
//!
//! Names are written once, in a table, and edges as rows of small integers into it, so that a
//! ledger of 10,000 services and 50,000 edges is a few megabytes. Text from the ledger is escaped
//! so it can never close the script element or become markup. This module only encodes: edge
//! classes come from [`EdgeClass::of`] and readiness from [`crate::graph::diff()`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::EdgeClass;
use crate::graph::diff::ServiceReadiness;
use crate::graph::{NodeKind, Observed};
use crate::policy::{Identified, Mode};

/// Fields per edge row in `edges`, in order; the page's script reads rows by these offsets.
pub const EDGE_FIELDS: [&str; 10] =
    ["source", "destination", "class", "identified", "connections", "bytes", "first", "last", "days", "rare"];

/// The reasons a service may not enforce, in the order of the bits of a service row's last field
/// (the kinds of [`crate::policy::Blocker`]).
pub const READINESS_REASONS: [&str; 4] = ["would-deny", "plaintext", "declared-never-seen", "history-short"];

/// Writes `s` as a JSON string that is also safe inside an HTML script element.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '<' | '>' | '&' | '\'' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn minutes(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 60).unwrap_or(0)
}

fn mode_index(mode: Mode) -> u8 {
    match mode {
        Mode::Learn => 0,
        Mode::Enforce => 1,
    }
}

/// The JSON document. `class[i]` is the class of `observed.edges[i]`.
pub fn encode(observed: &Observed, class: &[EdgeClass], services: &[ServiceReadiness]) -> String {
    let index: HashMap<&str, usize> =
        observed.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    // Rare is the readiness's call, per recorded caller.
    let rare: HashMap<(&str, &str, Identified), bool> = services
        .iter()
        .flat_map(|s| {
            s.callers.iter().map(move |c| ((s.service.as_str(), c.source.as_str(), c.identified), c.rare))
        })
        .collect();
    let t0 = observed.edges.iter().map(|e| minutes(e.first_seen)).min().unwrap_or(0);
    let mut out = String::with_capacity(64 * observed.edges.len() + 32 * observed.nodes.len() + 1024);
    let _ = write!(out, r#"{{"t0":{t0},"modes":["learn","enforce"],"classes":["#);
    for (i, c) in EdgeClass::ALL.iter().enumerate() {
        let _ = write!(out, "{}\"{}\"", if i > 0 { "," } else { "" }, c.as_str());
    }
    out.push_str(r#"],"idents":["#);
    for (i, id) in Identified::ALL.iter().enumerate() {
        let _ = write!(out, "{}\"{}\"", if i > 0 { "," } else { "" }, id.as_str());
    }
    out.push_str(r#"],"fields":["#);
    for (i, f) in EDGE_FIELDS.iter().enumerate() {
        let _ = write!(out, "{}\"{f}\"", if i > 0 { "," } else { "" });
    }
    out.push_str(r#"],"names":["#);
    for (i, n) in observed.nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, &n.name);
    }
    out.push_str(r#"],"addresses":["#);
    let addresses = observed.nodes.iter().enumerate().filter(|(_, n)| n.kind == NodeKind::Address);
    for (k, (i, _)) in addresses.enumerate() {
        let _ = write!(out, "{}{i}", if k > 0 { "," } else { "" });
    }
    // One row per destination: name, mode, ready, callers cut off, the one-line summary, the
    // history's span in days, and a bit per reason it may not enforce (READINESS_REASONS).
    out.push_str(r#"],"reasons":["#);
    for (i, r) in READINESS_REASONS.iter().enumerate() {
        let _ = write!(out, "{}\"{r}\"", if i > 0 { "," } else { "" });
    }
    let min_history = services.first().map_or(0.0, |s| s.readiness.min_history.as_secs_f64() / 86_400.0);
    let _ = write!(out, r#"],"min_history_days":{min_history:.1},"services":["#);
    let mut first = true;
    for s in services {
        let Some(&i) = index.get(s.service.as_str()) else { continue };
        let _ = write!(
            out,
            "{}[{i},{},{},{},",
            if first { "" } else { "," },
            mode_index(s.mode),
            u8::from(s.ready()),
            s.cut_off()
        );
        json_str(&mut out, &s.summary());
        let reasons = s.readiness.blockers.iter().fold(0u32, |bits, b| {
            bits | READINESS_REASONS.iter().position(|r| *r == b.kind()).map_or(0, |i| 1 << i)
        });
        let _ = write!(out, ",{:.1},{reasons}]", s.history_span().as_secs_f64() / 86_400.0);
        first = false;
    }
    out.push_str(r#"],"edges":["#);
    let mut first = true;
    for (e, c) in observed.edges.iter().zip(class) {
        let (Some(&s), Some(&d)) = (index.get(e.source.as_str()), index.get(e.destination.as_str())) else {
            continue;
        };
        let class = EdgeClass::ALL.iter().position(|x| x == c).unwrap_or(0);
        let ident = Identified::ALL.iter().position(|x| *x == e.identified).unwrap_or(0);
        let is_rare =
            rare.get(&(e.destination.as_str(), e.source.as_str(), e.identified)).copied().unwrap_or(false);
        let _ = write!(
            out,
            "{}{s},{d},{class},{ident},{},{},{},{},{},{}",
            if first { "" } else { "," },
            e.connections,
            e.bytes_to_destination + e.bytes_to_source,
            minutes(e.first_seen).saturating_sub(t0),
            minutes(e.last_seen).saturating_sub(t0),
            e.days_seen,
            u8::from(is_rare)
        );
        first = false;
    }
    out.push_str("]}");
    out
}
