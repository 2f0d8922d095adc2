//! The analysis over hand-built edges and a table policy: propose's filtering, diff's readiness
//! and rare-caller rules, windows.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::policy::Identified;

const DAY: u64 = 86_400;

fn edge(
    source: &str,
    destination: &str,
    identified: Identified,
    connections: u64,
    days: (u64, u64),
) -> ObservedEdge {
    ObservedEdge {
        source: source.into(),
        destination: destination.into(),
        identified,
        connections,
        bytes_to_destination: connections * 10,
        bytes_to_source: connections * 100,
        first_seen: UNIX_EPOCH + Duration::from_secs(days.0 * DAY),
        last_seen: UNIX_EPOCH + Duration::from_secs(days.1 * DAY),
        days_seen: u32::try_from(days.1 - days.0 + 1).unwrap(),
        allowed: connections,
        would_deny: 0,
        denied: 0,
        modes: vec![Mode::Learn],
    }
}

#[derive(Default)]
struct Table {
    modes: HashMap<&'static str, Mode>,
    rules: HashMap<(&'static str, &'static str), Verdict>,
}

impl PolicyView for Table {
    fn mode(&self, destination: &str) -> Mode {
        self.modes.get(destination).copied().unwrap_or(Mode::Learn)
    }
    fn verdict(&self, source: &str, destination: &str) -> Verdict {
        self.rules.get(&(source, destination)).copied().unwrap_or(Verdict::Deny)
    }
    fn has_intention(&self, source: &str, destination: &str) -> bool {
        self.rules.contains_key(&(source, destination))
    }
}

fn observed(edges: Vec<ObservedEdge>) -> Observed {
    let mut edges = edges;
    edges.sort_by(|a, b| {
        (&a.destination, &a.source, a.identified).cmp(&(&b.destination, &b.source, b.identified))
    });
    Observed::from_edges(None, edges)
}

#[test]
fn nodes_sum_connections_both_ways() {
    let o = observed(vec![
        edge("web", "db", Identified::Mtls, 5, (1, 1)),
        edge("db", "cache", Identified::Mtls, 2, (1, 1)),
    ]);
    let db = o.nodes.iter().find(|n| n.name == "db").unwrap();
    assert_eq!((db.connections_in, db.connections_out), (5, 2));
    assert_eq!(o.petgraph().edge_count(), 2);
}

#[test]
fn propose_merges_evidence_and_skips_what_the_policy_names() {
    let o = observed(vec![
        edge("web", "db", Identified::Mtls, 5, (1, 3)),
        edge("web", "db", Identified::HaproxyLog, 2, (0, 1)),
        edge("cron", "db", Identified::Mtls, 1, (2, 2)),
        edge("ip:10.1.1.1", "db", Identified::HaproxyLog, 9, (2, 2)),
        edge("old", "db", Identified::Mtls, 9, (2, 2)),
    ]);
    let p = propose(&o, 1, None);
    let web = p.intentions.iter().find(|i| i.source == "web").unwrap();
    assert_eq!(web.note(), "proposed from 7 connections (5 mtls, 2 haproxy-log), 1970-01-01..1970-01-04");
    assert_eq!(p.unproven.len(), 1, "an address is not a service name: {:?}", p.unproven);
    assert_eq!(p.unproven[0].reason, "not a service name");

    // An explicit deny is not overridden by a proposal (the pair would be a duplicate).
    let mut table = Table::default();
    table.rules.insert(("old", "db"), Verdict::Deny);
    table.rules.insert(("web", "db"), Verdict::Allow);
    let p = propose(&o, 2, Some(&table));
    assert!(p.intentions.is_empty(), "{:?}", p.intentions);
    assert_eq!(p.below_threshold, 1, "cron has one connection");
}

#[test]
fn diff_flags_rare_callers_only_in_a_long_window() {
    let short = observed(vec![
        edge("web", "db", Identified::Mtls, 50, (0, 3)),
        edge("cron", "db", Identified::Mtls, 1, (2, 2)),
    ]);
    let mut table = Table::default();
    table.rules.insert(("web", "db"), Verdict::Allow);
    table.rules.insert(("cron", "db"), Verdict::Allow);
    let r = diff(&short, &table, None);
    assert!(r[0].ready() && r[0].callers.iter().all(|c| !c.rare));

    let long = observed(vec![
        edge("web", "db", Identified::Mtls, 50, (0, 20)),
        edge("cron", "db", Identified::Mtls, 1, (2, 2)),
    ]);
    let r = diff(&long, &table, None);
    let cron = r[0].callers.iter().find(|c| c.source == "cron").unwrap();
    assert!(cron.rare && !cron.cut_off());
    assert_eq!(r[0].summary(), "ready to enforce");
}

#[test]
fn diff_counts_each_cut_off_caller_once() {
    let o = observed(vec![
        edge("web", "db", Identified::Mtls, 5, (1, 1)),
        edge("web", "db", Identified::PlaintextIp, 5, (1, 1)),
        edge("batch", "db", Identified::Mtls, 5, (1, 1)),
        edge("web", "api", Identified::Mtls, 5, (1, 1)),
    ]);
    let mut table = Table::default();
    table.rules.insert(("web", "db"), Verdict::Allow);
    table.modes.insert("db", Mode::Enforce);
    let r = diff(&o, &table, None);
    assert_eq!(r.iter().map(|s| s.service.as_str()).collect::<Vec<_>>(), ["api", "db"]);
    assert_eq!(r[1].mode, Mode::Enforce);
    // web still arrives in plaintext too, batch is denied: two callers.
    assert_eq!(r[1].summary(), "not ready: 2 callers would be cut off");
    assert_eq!(r[0].summary(), "not ready: 1 caller would be cut off");

    let only = diff(&o, &table, Some("nothing"));
    assert_eq!((only.len(), only[0].callers.len(), only[0].ready()), (1, 0, true));
}

#[test]
fn windows_parse() {
    assert_eq!(parse_window("30d"), Ok(Duration::from_secs(30 * DAY)));
    assert_eq!(parse_window("12h"), Ok(Duration::from_secs(12 * 3600)));
    assert_eq!(parse_window("90m"), Ok(Duration::from_secs(90 * 60)));
    for bad in ["", "d", "30", "30x", "-1d", "0d", "1.5h", "99999999999999999999d"] {
        assert!(parse_window(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn times_format_in_utc() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_132_800 + 3_725);
    assert_eq!(format::day(t), "2026-11-20");
    assert_eq!(format::minute(t), "2026-11-20T01:02Z");
    assert_eq!(format::rfc3339(t), "2026-11-20T01:02:05Z");
}
