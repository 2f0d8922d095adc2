//! Names from outside (a fleet store, any source a future reader adds) through every output: the
//! terminal table, DOT, the proposal's TOML comments and the report's HTML. A name never drives
//! the terminal, ends a comment, closes a string or becomes markup; and a proposal whose comments
//! name an attacker's injected intention gives `cordon check` nothing to honour. Ledger files
//! refuse such names outright (tests/hostile_files.rs); these outputs hold even so.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use cordon::graph::{self, Observed, ObservedEdge, format};
use cordon::ledger::{Declaration, DeclarationOrigin};
use cordon::policy::{Identified, Mode, Policy};

/// Ends the comment it is printed in and writes an intention allowing `attacker` into db.
const INJECT: &str = "\"\n[[intention]]\nsource = \"attacker\"\ndestination = \"db\"\naction = \"allow\"\n# ";
/// Clears the screen and moves the cursor, then writes a tag.
const TERMINAL: &str = "ops\u{1b}[2J\u{1b}[H</script><img src=x onerror=alert(1)>\r";

fn edge(source: &str, destination: &str, identified: Identified) -> ObservedEdge {
    let at = SystemTime::now() - Duration::from_secs(3600);
    ObservedEdge {
        source: source.into(),
        destination: destination.into(),
        identified,
        connections: 4,
        bytes_to_destination: 10,
        bytes_to_source: 10,
        first_seen: at,
        last_seen: at,
        days_seen: 1,
        allowed: 4,
        would_deny: 0,
        denied: 0,
        modes: vec![Mode::Learn],
        claimed: false,
    }
}

fn observed() -> Observed {
    let edges = vec![
        edge("web", "db", Identified::Mtls),
        // A plaintext caller is listed in the proposal's comments, never proposed.
        edge(&format!("ip:10.0.0.9{INJECT}"), "db", Identified::PlaintextIp),
        edge(TERMINAL, "db", Identified::Mtls),
        edge("web", &format!("api{INJECT}"), Identified::HaproxyLog),
    ];
    let declaration = Declaration {
        host: format!("host-a{INJECT}"),
        identity: "web".into(),
        origin: DeclarationOrigin::AgentConfig,
        declared_at: SystemTime::now(),
        services: vec!["db".into(), format!("never{INJECT}")],
    };
    Observed::from_edges(None, edges).with_declarations(&[declaration])
}

/// No character that drives a terminal or breaks a line, other than the line ends themselves.
fn assert_inert(what: &str, out: &str) {
    for c in out.chars() {
        assert!(
            c == '\n' || !(c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
            "{what}: {c:?} in\n{out}"
        );
    }
}

#[test]
fn graph_text_and_dot_escape_every_name() {
    let observed = observed();
    let text = format::graph_text(&observed);
    assert_inert("graph text", &text);
    // One line per edge and per declared-never-seen pair, plus the header; each splits back
    // into its eleven columns.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + observed.edges.len() + 1, "{text}");
    for line in &lines {
        assert_eq!(line.split_whitespace().count(), 11, "{line}");
    }
    assert!(text.contains("ops\\u{1b}[2J"), "the escape is shown, not sent: {text}");

    let dot = format::graph_dot(&observed);
    assert_inert("dot", &dot);
    // Every statement is one line, and every quote inside a string is escaped.
    for line in dot.lines().filter(|l| l.contains("->")) {
        assert!(line.ends_with("];"), "a statement that a name broke: {line}");
        let unescaped = line.match_indices('"').filter(|(i, _)| !line[..*i].ends_with('\\')).count();
        assert_eq!(unescaped, 6, "three strings per edge: {line}");
    }
}

#[test]
fn a_name_in_the_proposal_never_becomes_live_toml() {
    let observed = observed();
    let proposal = graph::propose(&observed, 1, None);
    let toml = format::proposal_toml(&proposal, &[format!("proposed from ledger{INJECT}")]);
    assert_inert("proposal", &toml);
    // Every line is a comment, blank, or part of an intention cordon proposed for web.
    let parsed: toml::Table = toml::from_str(&toml).expect("the proposal is TOML");
    let intentions = parsed.get("intention").and_then(|i| i.as_array()).cloned().unwrap_or_default();
    assert!(!intentions.is_empty(), "web's edges are proposed:\n{toml}");
    for i in &intentions {
        assert_ne!(i["source"].as_str(), Some("attacker"), "an injected intention:\n{toml}");
    }
    // `cordon check` on the proposal as written to disk does not honour the injected line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proposal.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = support::cordon(&["check", "--policy", file.to_str().unwrap(), "attacker", "db"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("attacker -> db: deny"), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
}

#[test]
fn the_report_escapes_every_name() {
    let observed = observed();
    let policy = Policy::parse("[modes]\ndb = \"enforce\"\n", Path::new("policy.toml")).unwrap();
    let services = graph::diff(
        &observed,
        &policy,
        None,
        &graph::Judging::at(std::time::Duration::ZERO, std::time::SystemTime::now()),
    );
    let proposal = graph::propose(&observed, 1, Some(&policy));
    let toml = format::proposal_toml(&proposal, &["proposed".to_owned()]);
    let html = graph::report::render(Path::new("ledger.db"), &observed, &policy, &services, &toml);
    assert_inert("report", &html.replace(['\r', '\t'], ""));
    assert!(!html.contains("<img"), "names are escaped, never markup");
    assert_eq!(html.matches("</script>").count(), 2, "only the page's own script elements end");
}

#[test]
fn diff_text_escapes_every_name() {
    let observed = observed();
    let policy = Policy::parse("[modes]\ndb = \"enforce\"\n", Path::new("policy.toml")).unwrap();
    let text = format::diff_text(&graph::diff(
        &observed,
        &policy,
        None,
        &graph::Judging::at(std::time::Duration::ZERO, std::time::SystemTime::now()),
    ));
    assert_inert("diff", &text);
    assert!(text.contains("\\u{1b}"), "{text}");
}

#[test]
fn discovery_text_escapes_names_from_synapse_files() {
    let dir = tempfile::tempdir().unwrap();
    let entries = serde_json::json!([{
        "host": "10.0.0.5", "port": 8080, "name": format!("db-0{TERMINAL}\nfake-row"),
        "id": 0, "weight": null, "haproxy_server_options": null, "labels": {"cordon_mtls_port": "14000"},
    }]);
    std::fs::write(dir.path().join("db.json"), entries.to_string()).unwrap();
    let out = support::cordon(&["discovery", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.0.0.5:8080"), "the backend is listed: {text}");
    assert_inert("discovery", &text);
    assert!(!text.lines().any(|l| l.starts_with("fake-row")), "{text}");
}
