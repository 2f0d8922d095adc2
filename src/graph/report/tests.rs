//! The report's pieces: the layout is layered and stays linear on wide graphs, the data block
//! cannot close its script element, focus links survive any name.

use std::time::{Duration, UNIX_EPOCH};

use super::picture::layout;
use super::{data, focus_href, proposal_shown};
use crate::graph::{Observed, ObservedEdge};
use crate::policy::Identified;

fn edge(source: &str, destination: &str) -> ObservedEdge {
    ObservedEdge {
        source: source.into(),
        destination: destination.into(),
        identified: Identified::Mtls,
        connections: 3,
        bytes_to_destination: 10,
        bytes_to_source: 20,
        first_seen: UNIX_EPOCH + Duration::from_secs(1_793_491_200),
        last_seen: UNIX_EPOCH + Duration::from_secs(1_793_494_800),
        days_seen: 1,
        allowed: 3,
        would_deny: 0,
        denied: 0,
        modes: vec![],
        claimed: false,
    }
}

#[test]
fn callers_sit_left_of_what_they_call_and_cycles_still_lay_out() {
    let edges = vec![edge("web", "api"), edge("api", "db"), edge("web", "db"), edge("batch", "db")];
    let at = layout(&Observed::from_edges(None, edges.clone())).at;
    assert!(at["web"].x < at["api"].x && at["api"].x < at["db"].x, "{at:?}");
    assert!(at["batch"].x < at["db"].x);
    // A cycle loses one edge for ranking, and every node still gets a place of its own.
    let mut cyclic = edges;
    cyclic.push(edge("db", "web"));
    let at = layout(&Observed::from_edges(None, cyclic)).at;
    assert_eq!(at.len(), 4);
    let mut places: Vec<(i64, i64)> = at.values().map(|p| (p.x as i64, p.y as i64)).collect();
    places.sort();
    places.dedup();
    assert_eq!(places.len(), 4, "{at:?}");
}

#[test]
fn a_wide_graph_gets_one_position_per_node() {
    // 3,000 callers of one hub and a chain behind it: the old barycentre pass was quadratic here.
    let mut edges: Vec<ObservedEdge> = (0..3_000).map(|i| edge(&format!("c{i:04}"), "hub")).collect();
    edges.extend((0..50).map(|i| edge(&format!("h{i:02}"), &format!("h{:02}", i + 1))));
    edges.push(edge("hub", "h00"));
    let at = layout(&Observed::from_edges(None, edges)).at;
    assert_eq!(at.len(), 3_000 + 1 + 51);
    assert!(at["c0000"].x < at["hub"].x && at["hub"].x < at["h00"].x && at["h00"].x < at["h50"].x);
}

#[test]
fn the_data_block_cannot_end_its_script_element() {
    let hostile = "</script><img src=x onerror=alert(1)>";
    let observed = Observed::from_edges(None, vec![edge(hostile, "api")]);
    let json = data::encode(&observed, &[super::EdgeClass::Allowed], &[]);
    assert!(!json.contains('<') && !json.contains('>'), "{json}");
    assert!(json.contains(r#""\u003c/script\u003e\u003cimg src=x onerror=alert(1)\u003e""#), "{json}");
    // Rows: source, destination, class, identified, connections, bytes, first, last, days, rare.
    assert!(json.contains(r#""edges":[0,1,0,0,3,30,0,60,1,0]"#), "{json}");
}

#[test]
fn focus_links_encode_every_name() {
    assert_eq!(focus_href("db"), "#service=db");
    assert_eq!(focus_href("ip:10.0.0.9"), "#service=ip:10.0.0.9");
    assert_eq!(focus_href("a b\"<é"), "#service=a%20b%22%3C%C3%A9");
}

#[test]
fn a_big_proposal_is_cut_at_an_intention() {
    let one = "\n[[intention]]\nsource = \"a\"\ndestination = \"b\"\naction = \"allow\"\nnote = \"x\"\n";
    let toml = format!("# header\n{}", one.repeat(super::PROPOSAL_MAX_BYTES / one.len() + 100));
    let shown = proposal_shown(&toml, std::path::Path::new("fleet.db"));
    assert!(shown.len() < super::PROPOSAL_MAX_BYTES + 512);
    assert!(shown.contains("cordon propose --db fleet.db"));
    let kept = shown.matches("[[intention]]").count();
    let cut = toml.matches("[[intention]]").count() - kept;
    assert!(shown.contains(&format!("and {cut} more intention(s)")), "{}", &shown[shown.len() - 300..]);
    assert!(shown.split("\n\n# ... and").next().unwrap().ends_with("note = \"x\""));
}
