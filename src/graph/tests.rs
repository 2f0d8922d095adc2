//! The analysis over hand-built edges and a table policy: propose's filtering, diff's readiness
//! and rare-caller rules, declarations and probes, windows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::policy::{Identified, Mode, Policy, Verdict};

const DAY: u64 = 86_400;

/// Readiness on day 20, with no minimum history (the windows here are short on purpose).
fn judge(o: &Observed, p: &Policy, service: Option<&str>) -> Vec<ServiceReadiness> {
    diff(o, p, service, &Judging::at(Duration::ZERO, UNIX_EPOCH + Duration::from_secs(20 * DAY)))
}

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
        claimed: false,
    }
}

/// A real policy with these modes and intentions (source, destination, action).
fn policy(modes: &[(&str, &str)], rules: &[(&str, &str, &str)]) -> Policy {
    let mut text = String::from("[modes]\n");
    for (service, mode) in modes {
        text += &format!("{service:?} = {mode:?}\n");
    }
    for (source, destination, action) in rules {
        text += &format!(
            "[[intention]]\nsource = {source:?}\ndestination = {destination:?}\naction = {action:?}\n"
        );
    }
    Policy::parse(&text, std::path::Path::new("policy.toml")).expect("the test policy parses")
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
    let table = policy(&[], &[("old", "db", "deny"), ("web", "db", "allow")]);
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
    let table = policy(&[], &[("web", "db", "allow"), ("cron", "db", "allow")]);
    let r = judge(&short, &table, None);
    assert!(r[0].ready() && r[0].callers.iter().all(|c| !c.rare));

    let long = observed(vec![
        edge("web", "db", Identified::Mtls, 50, (0, 20)),
        edge("cron", "db", Identified::Mtls, 1, (2, 2)),
    ]);
    let r = judge(&long, &table, None);
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
    let table = policy(&[("db", "enforce")], &[("web", "db", "allow")]);
    let r = judge(&o, &table, None);
    assert_eq!(r.iter().map(|s| s.service.as_str()).collect::<Vec<_>>(), ["api", "db"]);
    assert_eq!(r[1].mode, Mode::Enforce);
    // db enforces already: web still arriving in plaintext and batch are refused now, which does
    // not keep it from staying so.
    assert_eq!(r[1].summary(), "enforcing: 2 callers refused now");
    assert!(r[1].ready() && r[1].cut_off() == 0);
    assert_eq!(r[0].summary(), "not ready: 1 caller would be denied");

    let only = judge(&o, &table, Some("nothing"));
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

fn declaration(host: &str, identity: &str, services: &[&str]) -> crate::ledger::Declaration {
    crate::ledger::Declaration {
        host: host.into(),
        identity: identity.into(),
        origin: crate::ledger::DeclarationOrigin::HaproxyCfg,
        declared_at: UNIX_EPOCH,
        services: services.iter().map(|s| s.to_string()).collect(),
    }
}

fn probe(source: &str, destination: &str, connections: u64) -> ObservedEdge {
    let mut e = edge(source, destination, Identified::Mtls, connections, (1, 1));
    e.bytes_to_destination = 0;
    e.bytes_to_source = 0;
    e
}

fn intention<'a>(p: &'a Proposal, s: &str, d: &str) -> Option<&'a ProposedIntention> {
    p.intentions.iter().find(|i| i.source == s && i.destination == d)
}

#[test]
fn propose_weighs_declarations_against_the_evidence() {
    let o = observed(vec![
        edge("web", "db", Identified::Mtls, 5, (1, 3)),
        // web declares db and api only: a stolen certificate dialled payments by hand.
        edge("web", "payments", Identified::Mtls, 2, (2, 2)),
        // cron declares nothing on record: judged by the evidence, with --min-connections.
        edge("cron", "db", Identified::Mtls, 1, (2, 2)),
        // a wait-for-port loop, no byte either way.
        probe("monitor", "db", 40),
    ])
    .with_declarations(&[
        declaration("web-1", "web", &["db"]),
        declaration("web-2", "web", &["api"]),
        // An identity that only serves says so: it dials nothing.
        declaration("db-1", "db", &[]),
        declaration("q-1", "quarterly", &["db"]),
    ]);
    let p = propose(&o, 2, None);
    let allow = |s, d| intention(&p, s, d).map(|i| i.action);
    assert_eq!(allow("web", "db"), Some(Verdict::Allow));
    assert!(
        intention(&p, "web", "db")
            .unwrap()
            .note()
            .starts_with("declared (haproxy.cfg on web-1, web-2) and seen: 5")
    );
    // Declared on another host: the union counts, never seen, allowed with a note saying so.
    assert_eq!(allow("web", "api"), Some(Verdict::Allow));
    assert!(intention(&p, "web", "api").unwrap().note().contains("never seen"), "{p:?}");
    assert_eq!(allow("quarterly", "db"), Some(Verdict::Allow), "a quarterly job declared, never seen");
    let deny = intention(&p, "web", "payments").unwrap();
    assert_eq!(deny.action, Verdict::Deny);
    assert!(deny.note().contains("2 connections (mtls)") && deny.note().contains("not declared by web"));
    assert_eq!(allow("cron", "db"), None, "below --min-connections 2");
    assert_eq!(p.below_threshold, 1);
    assert_eq!(allow("monitor", "db"), None, "probes prove nothing");
    assert!(p.unproven.iter().any(|u| u.source == "monitor" && u.reason.contains("only probes")), "{p:?}");
    assert_eq!(p.intentions.len(), 4, "{:?}", p.intentions);

    // With a policy naming the deny already, it is not proposed twice; an allow already in force
    // does not hide an undeclared edge.
    let table = policy(&[], &[("web", "api", "allow"), ("quarterly", "db", "deny")]);
    let p = propose(&o, 2, Some(&table));
    assert!(intention(&p, "web", "api").is_none() && intention(&p, "quarterly", "db").is_none());
    assert_eq!(intention(&p, "web", "payments").map(|i| i.action), Some(Verdict::Deny));
}

#[test]
fn a_broad_declaration_is_not_intent() {
    let services = ["a", "b", "c", "d", "e", "f"];
    // Every host got the same config: web declares all six services, calls one.
    let o = observed(vec![edge("web", "a", Identified::Mtls, 5, (1, 3))])
        .with_declarations(&[declaration("web-1", "web", &services), declaration("ops-1", "ops", &["b"])]);
    assert!(o.declarations.get("web").unwrap().broad && !o.declarations.get("ops").unwrap().broad);
    let p = propose(&o, 1, None);
    let pairs: Vec<(&str, &str)> =
        p.intentions.iter().map(|i| (i.source.as_str(), i.destination.as_str())).collect();
    assert_eq!(pairs, [("web", "a"), ("ops", "b")]);
    assert_eq!(p.declared_only.len(), 5, "{:?}", p.declared_only);
    assert!(
        p.declared_only[0].reason.contains("broad (6 of the fleet's 6 services)"),
        "{:?}",
        p.declared_only
    );
    assert!(p.rules.iter().any(|r| r.contains("Broad declarations here: web.")), "{:?}", p.rules);
    let text = format::proposal_toml(&p, &[]);
    assert!(text.contains("# Declared but not proposed") && text.contains("#   \"web\" -> \"b\""), "{text}");
}

#[test]
fn diff_shows_declared_undeclared_new_and_probe_only_callers() {
    let o = observed(vec![
        edge("web", "db", Identified::Mtls, 50, (0, 20)),
        edge("intruder", "db", Identified::Mtls, 2, (18, 18)),
        probe("monitor", "db", 40),
        edge("stolen", "db", Identified::Mtls, 1, (19, 19)),
    ])
    .with_declarations(&[
        declaration("web-1", "web", &["db"]),
        declaration("intruder-1", "intruder", &[]),
        declaration("stolen-1", "stolen", &[]),
        declaration("q-1", "quarterly", &["db"]),
    ]);
    let table = policy(&[], &[("web", "db", "allow"), ("stolen", "db", "deny")]);
    let r = judge(&o, &table, Some("db"));
    let db = &r[0];
    assert_eq!(db.undeclared(), ["intruder", "stolen"]);
    assert_eq!(db.new_callers(), ["intruder", "stolen"]);
    assert_eq!(db.probe_only(), ["monitor"]);
    assert_eq!(db.declared_never_seen.len(), 1);
    assert!(db.declared_never_seen[0].cut_off(), "quarterly is declared, denied by default");
    // intruder (default deny) and quarterly; not the probe, not stolen (denied on purpose).
    assert_eq!(
        db.summary(),
        "not ready: 1 caller would be denied, 1 declared caller never seen and would be denied"
    );
    assert_eq!(db.cut_off(), 2);
    assert_eq!(db.history_span(), Duration::from_secs(20 * DAY));
    let text = format::diff_text(&r);
    assert!(text.contains("declared, never seen: quarterly (haproxy.cfg on q-1, would-deny)"), "{text}");
    assert!(text.contains("history: 20.0 days"), "{text}");
    assert!(text.contains("denied-on-purpose,rare,new,undeclared  stolen"), "{text}");

    let dot = format::graph_dot(&o);
    let line = |from: &str| dot.lines().find(|l| l.contains(&format!("\"{from}\" -> \"db\""))).unwrap();
    assert!(
        line("web").ends_with(
            "label=\"50 conn, mtls, allowed\", color=forestgreen, fontcolor=forestgreen, style=solid];"
        ),
        "{dot}"
    );
    assert!(line("intruder").contains("allowed, undeclared\""), "{dot}");
    assert!(line("monitor").contains(", allowed\""), "no declarations on record: nothing to say:\n{dot}");
    assert!(
        line("quarterly").contains("label=\"declared, never seen\"")
            && line("quarterly").contains("arrowhead=empty"),
        "{dot}"
    );
}

#[test]
fn refused_connections_are_no_probes() {
    // Refused under enforce, so no byte could cross: a caller, not a wait-for-port loop.
    let mut refused = probe("batch", "db", 3);
    (refused.allowed, refused.denied) = (0, 3);
    let o = observed(vec![refused, probe("monitor", "db", 9)]);
    let r = judge(&o, &policy(&[], &[]), None);
    assert_eq!(r[0].probe_only(), ["monitor"]);
    assert_eq!(r[0].summary(), "not ready: 1 caller would be denied");
    let p = propose(&o, 1, None);
    assert_eq!(p.intentions.iter().map(|i| i.source.as_str()).collect::<Vec<_>>(), ["batch"]);
}

#[test]
fn an_undeclared_edge_seen_only_in_haproxy_logs_came_through_a_frontend() {
    // web's agent serves web and dials nothing yet; its apps still dial db through HAProxy.
    let o = observed(vec![
        edge("web", "db", Identified::HaproxyLog, 9, (1, 3)),
        edge("web", "payments", Identified::Mtls, 1, (2, 2)),
    ])
    .with_declarations(&[declaration("web-1", "web", &[])]);
    let p = propose(&o, 1, None);
    let db = intention(&p, "web", "db").unwrap();
    assert_eq!(db.action, Verdict::Allow);
    assert!(db.note().contains("import that host's haproxy.cfg"), "{}", db.note());
    assert_eq!(intention(&p, "web", "payments").unwrap().action, Verdict::Deny);
}
