//! `cordon report`: one self-contained HTML page to decide from, readable from five services to
//! ten thousand. It holds an overview that groups the services (by readiness, by number of
//! callers), a search box, and a focus view per service (its callers and callees, each edge with
//! its evidence), all drawn by one inline script from a compact data block ([`data`]). Small
//! graphs (up to [`PICTURE_MAX_NODES`] nodes) also get the picture of the whole graph
//! ([`picture`]) and the readiness table. No scripts, fonts or images are fetched: the file works
//! offline.
//!
//! Only lays out and renders: the analyses are `graph::load`, `propose` and `diff`. The policy is
//! seen only through [`EdgeClass::of`] and the readiness `diff` computed.

pub mod data;
pub mod picture;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use super::Observed;
use super::diff::ServiceReadiness;
use super::format;
use crate::policy::{DecisionContext, Identified, Outcome, Policy, Subject, decide};

/// Graphs with at most this many nodes are also drawn whole; past it a picture of everything is
/// one column of boxes nobody can read, and the focus view replaces it.
pub const PICTURE_MAX_NODES: usize = 40;
/// The proposal is shown whole up to this size, then cut at an intention with a pointer to
/// `cordon propose` (a fleet's proposal alone would be most of the page).
pub const PROPOSAL_MAX_BYTES: usize = 256 * 1024;

/// What the page shows an edge as; also its CSS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeClass {
    Allowed,
    WouldDeny,
    Denied,
    Plaintext,
}

impl EdgeClass {
    pub const ALL: [EdgeClass; 4] =
        [EdgeClass::Allowed, EdgeClass::WouldDeny, EdgeClass::Denied, EdgeClass::Plaintext];

    pub fn as_str(self) -> &'static str {
        match self {
            EdgeClass::Allowed => "allowed",
            EdgeClass::WouldDeny => "would-deny",
            EdgeClass::Denied => "denied",
            EdgeClass::Plaintext => "plaintext",
        }
    }

    /// How the current policy treats an edge recorded with this identification.
    pub fn of(policy: &Policy, source: &str, destination: &str, identified: Identified) -> Self {
        if identified.is_plaintext() {
            return EdgeClass::Plaintext;
        }
        let subject = Subject::recorded(source, identified);
        match decide(policy, &subject, destination, &DecisionContext::review()).outcome {
            Outcome::Allowed => EdgeClass::Allowed,
            Outcome::WouldDeny => EdgeClass::WouldDeny,
            Outcome::Denied => EdgeClass::Denied,
        }
    }
}

/// HTML-escapes text for element content and attribute values ([`crate::base::escape::html`]).
pub fn escape(s: &str) -> String {
    crate::base::escape::html(s).into_owned()
}

/// The link to a service's focus view: `#service=` and the name, percent-encoded.
pub fn focus_href(name: &str) -> String {
    let mut out = String::from("#service=");
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
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

/// The largest char boundary of `s` at or below `at`.
fn char_floor(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The proposal, cut at an intention boundary past [`PROPOSAL_MAX_BYTES`].
fn proposal_shown(toml: &str, db: &Path) -> String {
    if toml.len() <= PROPOSAL_MAX_BYTES {
        return toml.to_owned();
    }
    let cut = toml[..char_floor(toml, PROPOSAL_MAX_BYTES)].rfind("\n\n[[intention]]").unwrap_or(0);
    let rest = toml[cut..].matches("[[intention]]").count();
    format!(
        "{}\n\n# ... and {rest} more intention(s) and the unproven edges: this page shows the first {} KiB.\n# `cordon propose --db {} --policy POLICY` prints the whole proposal.\n",
        &toml[..cut],
        PROPOSAL_MAX_BYTES / 1024,
        db.display()
    )
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
            deny = names(&|c| c.cut_off() && !c.plaintext()),
            rare = names(&|c| c.rare),
            plain = names(&|c| c.plaintext()),
        );
    }
    s.push_str("</tbody></table>");
    s
}

const LEGEND: &str = r#"<div class="legend"><span><i class="allowed"></i>allowed by an intention</span><span><i class="would-deny"></i>would be denied (learning)</span><span><i class="denied"></i>denied (enforcing)</span><span><i class="plaintext"></i>plaintext, no certificate</span><span>line width: connections</span></div>"#;

/// Renders the whole page.
pub fn render(
    db: &Path,
    observed: &Observed,
    policy: &Policy,
    services: &[ServiceReadiness],
    proposal_toml: &str,
) -> String {
    let span = observed
        .span()
        .map(|(a, b)| format!("{} to {}", format::minute(a), format::minute(b)))
        .unwrap_or_else(|| "nothing recorded yet".into());
    // Saturating: a counter from a ledger file never wraps a total (or panics a debug build).
    let connections: u64 = observed.edges.iter().fold(0, |n, e| n.saturating_add(e.connections));
    let bytes: u64 = observed
        .edges
        .iter()
        .fold(0, |n, e| n.saturating_add(e.bytes_to_destination).saturating_add(e.bytes_to_source));
    let not_ready = services.iter().filter(|s| !s.ready()).count();
    // The policy's say on each edge, asked once and shared by the picture and the data block.
    let class: Vec<EdgeClass> = observed
        .edges
        .iter()
        .map(|e| EdgeClass::of(policy, &e.source, &e.destination, e.identified))
        .collect();
    let small = observed.nodes.len() <= PICTURE_MAX_NODES;
    let picture = if small {
        let modes: HashMap<&str, &'static str> =
            services.iter().map(|s| (s.service.as_str(), s.mode.as_str())).collect();
        let svg = picture::svg(observed, &class, &|name| modes.get(name).copied());
        format!(
            r#"<section id="picture"><h2>Who talks to whom</h2>{LEGEND}<div class="graph">{svg}</div></section>"#
        )
    } else {
        String::new()
    };
    let table = if small {
        format!("<section><h2>Readiness to enforce, per service</h2>{}</section>", readiness_table(services))
    } else {
        String::new()
    };
    let mut h = String::with_capacity(80 * observed.edges.len() + 64 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>cordon review: {db}</title><style>{style}</style></head><body>
<header><h1>cordon review</h1><div class="meta">ledger {db} &middot; traffic {span} &middot; generated {now}</div></header><main>
<section><div class="totals"><div><b>{svc}</b>services and callers</div><div><b>{edges}</b>edges</div><div><b>{connections}</b>connections</div><div><b>{bytes}</b>relayed</div><div><b>{not_ready}</b>services not ready to enforce</div></div>
<div class="find"><input id="search" type="search" placeholder="Find a service or address, then Enter" autocomplete="off" spellcheck="false" aria-label="find a service"><ul id="search-results"></ul></div>
<noscript><p>The overview, search and focus views need JavaScript (inline; nothing is fetched).</p></noscript></section>
<section id="focus" hidden><div id="focus-head"></div>{LEGEND}<div id="focus-body"></div></section>
{picture}
<section id="overview"><h2>Overview</h2><p class="hint">Click a group to list its services, a service to focus on its callers and callees.</p><div class="groups"><div><h3>By readiness</h3><div id="by-readiness"></div></div><div><h3>Not ready, by reason</h3><div id="by-reason"></div></div><div><h3>By number of callers</h3><div id="by-callers"></div></div></div><div id="group-list"></div></section>
{table}
<section><h2>Proposed intentions</h2><p>What <code>cordon propose</code> suggests adding to the policy (plaintext callers appear only as comments).</p><pre>{proposal}</pre></section>
</main>
<script type="application/json" id="cordon-data">{data}</script>
<script>{script}</script>
</body></html>
"#,
        style = include_str!("style.css"),
        db = escape(&db.display().to_string()),
        span = escape(&span),
        now = format::minute(SystemTime::now()),
        svc = observed.nodes.len(),
        edges = observed.edges.len(),
        bytes = human_bytes(bytes),
        proposal = escape(&proposal_shown(proposal_toml, db)),
        data = data::encode(observed, &class, services),
        script = include_str!("page.js"),
    );
    h
}
