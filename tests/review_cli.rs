//! `cordon graph`, `propose`, `diff` and `merge` as a user runs them: the built binary over
//! ledgers written by the real recorder, outputs parsed back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon::ledger::{EdgeKey, Event, Recorder};
use cordon::policy::{Identified, Mode, Verdict};

const DAY: u64 = 86_400;

/// Midnight UTC twelve days ago: fixtures stay inside a `--since 30d` window whenever the tests run.
fn start() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    (now / DAY - 12) * DAY
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Records `per_day` connections (each 100 bytes out, 1000 back) on each of `days`.
fn traffic(
    handle: &cordon::ledger::RecorderHandle,
    (source, destination): (&str, &str),
    identified: Identified,
    verdict: Verdict,
    days: impl IntoIterator<Item = u64>,
    per_day: u64,
) {
    let edge = EdgeKey {
        source: source.into(),
        destination: destination.into(),
        identified,
        mode: Mode::Learn,
        verdict,
    };
    for d in days {
        for i in 0..per_day {
            let t = at(start() + d * DAY + 3600 + i);
            handle.record_wait(Event::Opened { edge: edge.clone(), at: t });
            handle.record_wait(Event::Closed {
                edge: edge.clone(),
                at: t,
                bytes_to_destination: 100,
                bytes_to_source: 1000,
                duration: Duration::from_millis(3),
            });
        }
    }
}

/// host-a serves db, host-b serves api; web calls both.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let a = dir.join("host-a.db");
    let (rec, h) = Recorder::start(&a, "host-a", 1024, Duration::from_secs(1)).unwrap();
    traffic(&h, ("web", "db"), Identified::Mtls, Verdict::Allow, 0..10, 10);
    traffic(&h, ("backup", "db"), Identified::Mtls, Verdict::Deny, [3], 1);
    traffic(&h, ("ip:10.0.0.7", "db"), Identified::Unknown, Verdict::Deny, [4, 5, 6], 1);
    traffic(&h, ("reports", "db"), Identified::PlaintextIp, Verdict::Deny, 0..10, 2);
    rec.shutdown();
    let b = dir.join("host-b.db");
    let (rec, h) = Recorder::start(&b, "host-b", 1024, Duration::from_secs(1)).unwrap();
    traffic(&h, ("web", "api"), Identified::Mtls, Verdict::Allow, 0..10, 5);
    traffic(&h, ("legacy", "api"), Identified::HaproxyLog, Verdict::Allow, 0..10, 4);
    traffic(&h, ("web", "db"), Identified::Mtls, Verdict::Allow, [9], 4);
    rec.shutdown();
    (a, b)
}

const POLICY: &str = r#"
[modes]
"*" = "learn"
api = "enforce"

[[intention]]
source = "web"
destination = "*"
action = "allow"

[[intention]]
source = "legacy"
destination = "api"
action = "allow"
"#;

fn cordon(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon")).current_dir(dir).env_clear().args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn merged(dir: &Path) -> PathBuf {
    let (a, b) = fixture(dir);
    let fleet = dir.join("fleet.db");
    ok(&cordon(dir, &["merge", "--out", fleet.to_str().unwrap(), a.to_str().unwrap(), b.to_str().unwrap()]));
    fleet
}

#[test]
fn graph_text_lists_every_edge_with_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    let text = ok(&cordon(dir.path(), &["graph", "--db", fleet.to_str().unwrap()]));
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0][..4], ["SOURCE", "DESTINATION", "IDENTIFIED", "CONNECTIONS"]);
    let row = |s: &str, d: &str| {
        rows.iter().find(|r| r[0] == s && r[1] == d).unwrap_or_else(|| panic!("{s}->{d}\n{text}"))
    };
    // web -> db: 100 on host-a plus 4 on host-b, merged.
    assert_eq!(row("web", "db")[2..6], ["mtls", "104", "10400", "104000"]);
    assert_eq!(row("web", "db")[8], "10");
    assert_eq!(row("web", "db")[9], "allowed:104");
    assert_eq!(row("backup", "db")[9], "would-deny:1");
    assert_eq!(row("legacy", "api")[2], "haproxy-log");
    assert_eq!(row("ip:10.0.0.7", "db")[2..4], ["unknown", "3"]);
    assert_eq!(rows.len(), 1 + 6);

    // A window after all the traffic shows nothing; the whole history is the default.
    let recent = ok(&cordon(dir.path(), &["graph", "--db", fleet.to_str().unwrap(), "--since", "90m"]));
    assert_eq!(recent.lines().count(), 1, "{recent}");
    let month = ok(&cordon(dir.path(), &["graph", "--db", fleet.to_str().unwrap(), "--since", "30d"]));
    assert_eq!(month, text);
}

#[test]
fn graph_json_is_parseable_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    let out = ok(&cordon(dir.path(), &["graph", "--db", fleet.to_str().unwrap(), "--format", "json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["format"], "cordon-graph/1");
    assert!(doc["since"].is_null());
    let edges = doc["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 6);
    let web_api = edges.iter().find(|e| e["source"] == "web" && e["destination"] == "api").unwrap();
    assert_eq!(web_api["connections"], 50);
    assert_eq!(web_api["bytes_to_source"], 50_000);
    assert_eq!(web_api["outcomes"]["allowed"], 50);
    assert_eq!(web_api["modes"], serde_json::json!(["learn"]));
    assert!(web_api["first_seen"].as_str().unwrap().ends_with('Z'));
    let nodes = doc["nodes"].as_array().unwrap();
    let web = nodes.iter().find(|n| n["name"] == "web").unwrap();
    assert_eq!(web["connections_out"], 154);
    let ip = nodes.iter().find(|n| n["name"] == "ip:10.0.0.7").unwrap();
    assert_eq!(ip["kind"], "address");
}

#[test]
fn graph_dot_has_every_edge_styled_by_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    let dot = ok(&cordon(dir.path(), &["graph", "--db", fleet.to_str().unwrap(), "--format", "dot"]));
    assert!(dot.starts_with("digraph cordon {") && dot.trim_end().ends_with('}'));
    for (s, d) in [
        ("web", "db"),
        ("backup", "db"),
        ("ip:10.0.0.7", "db"),
        ("reports", "db"),
        ("web", "api"),
        ("legacy", "api"),
    ] {
        assert!(dot.contains(&format!("\"{s}\" -> \"{d}\"")), "{s} -> {d} missing:\n{dot}");
    }
    let line = |s: &str| dot.lines().find(|l| l.contains(&format!("\"{s}\" -> "))).unwrap();
    assert!(line("backup").contains("color=darkorange"));
    assert!(line("legacy").contains("color=forestgreen") && line("legacy").contains("style=dashed"));
    assert!(line("ip:10.0.0.7").contains("style=dotted"));

    // Graphviz renders it, where Graphviz is installed.
    let Ok(mut render) = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("graphviz not installed: rendering not checked");
        return;
    };
    use std::io::Write as _;
    render.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
    let svg = render.wait_with_output().unwrap();
    assert!(svg.status.success(), "{}", String::from_utf8_lossy(&svg.stderr));
    assert!(String::from_utf8_lossy(&svg.stdout).contains("<svg"));
}

#[test]
fn graph_with_a_policy_judges_every_edge_by_the_policy_now() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    // backup was recorded as would-deny; the policy now allows it, and enforces db.
    let policy = dir.path().join("now.toml");
    std::fs::write(
        &policy,
        "[modes]\ndb = \"enforce\"\n\n[[intention]]\nsource = \"backup\"\ndestination = \"db\"\naction = \"allow\"\n",
    )
    .unwrap();
    let (f, p) = (fleet.to_str().unwrap(), policy.to_str().unwrap());
    let dot = ok(&cordon(dir.path(), &["graph", "--db", f, "--format", "dot", "--policy", p]));
    let line = |s: &str, d: &str| {
        dot.lines().find(|l| l.contains(&format!("\"{s}\" -> \"{d}\""))).unwrap_or_else(|| panic!("{dot}"))
    };
    assert!(line("backup", "db").contains("allowed\", color=forestgreen"), "{dot}");
    assert!(line("web", "db").contains("denied\", color=red"), "no intention for web now:\n{dot}");
    assert!(line("legacy", "api").contains("would-deny\", color=darkorange"), "{dot}");

    let text = ok(&cordon(dir.path(), &["graph", "--db", f, "--policy", p]));
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header.last(), Some(&"POLICY"));
    let row = text.lines().find(|l| l.starts_with("backup ")).unwrap();
    assert_eq!(row.split_whitespace().last(), Some("allowed"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&ok(&cordon(
        dir.path(),
        &["graph", "--db", f, "--format", "json", "--policy", p],
    )))
    .unwrap();
    let edge = |s: &str| json["edges"].as_array().unwrap().iter().find(|e| e["source"] == s).unwrap().clone();
    assert_eq!(edge("backup")["policy"], "allowed");
    assert_eq!(edge("ip:10.0.0.7")["policy"], "denied");
}

#[test]
fn propose_writes_a_policy_with_proven_edges_only() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    let out = ok(&cordon(dir.path(), &["propose", "--db", fleet.to_str().unwrap()]));
    let doc: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let intentions = doc["intention"].as_array().unwrap();
    let pairs: Vec<(&str, &str)> = intentions
        .iter()
        .map(|i| (i["source"].as_str().unwrap(), i["destination"].as_str().unwrap()))
        .collect();
    // Sorted by destination, then source; plaintext and unknown callers are not among them.
    assert_eq!(pairs, [("legacy", "api"), ("web", "api"), ("backup", "db"), ("web", "db")]);
    assert!(intentions.iter().all(|i| i["action"].as_str() == Some("allow")));
    let note = |n: usize| intentions[n]["note"].as_str().unwrap();
    assert!(
        note(0).starts_with("proposed from 40 connections (haproxy-log, not proven by a certificate), "),
        "{}",
        note(0)
    );
    assert!(note(3).starts_with("proposed from 104 connections (mtls), "), "{}", note(3));
    // Plaintext and unknown callers appear, but only as comments.
    let comments: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        comments.iter().any(|l| l.contains("\"reports\" -> \"db\"") && l.contains("plaintext-ip")),
        "{out}"
    );
    assert!(
        comments.iter().any(|l| l.contains("\"ip:10.0.0.7\" -> \"db\"") && l.contains("unknown")),
        "{out}"
    );
    // Deterministic.
    assert_eq!(ok(&cordon(dir.path(), &["propose", "--db", fleet.to_str().unwrap()])), out);

    let few =
        ok(&cordon(dir.path(), &["propose", "--db", fleet.to_str().unwrap(), "--min-connections", "2"]));
    let doc: toml::Table = toml::from_str(&few).unwrap();
    assert_eq!(doc["intention"].as_array().unwrap().len(), 3, "backup (1 connection) is left out");
}

#[test]
fn propose_with_a_policy_proposes_only_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let out =
        ok(&cordon(dir.path(), &["propose", "--db", fleet.to_str().unwrap(), "--policy", "policy.toml"]));
    let doc: toml::Table = toml::from_str(&out).unwrap();
    let intentions = doc["intention"].as_array().unwrap();
    assert_eq!(intentions.len(), 1, "{out}");
    assert_eq!(
        (intentions[0]["source"].as_str(), intentions[0]["destination"].as_str()),
        (Some("backup"), Some("db"))
    );
}

#[test]
fn diff_says_which_services_are_ready_and_who_would_be_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let out = ok(&cordon(dir.path(), &["diff", "--db", fleet.to_str().unwrap(), "--policy", "policy.toml"]));
    let lines: Vec<&str> = out.lines().collect();
    // api enforces already and refuses nobody; db has every reason it may not enforce.
    assert!(lines.contains(&"api (enforce): enforcing"), "{out}");
    assert!(
        lines.contains(&"db (learn): not ready: 1 caller would be denied, 2 callers still in plaintext, history 9.0d of 30.0d"),
        "{out}"
    );
    let status = |caller: &str| {
        lines
            .iter()
            .skip_while(|l| !l.starts_with("db "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.get(1) == Some(&caller))
            .unwrap_or_else(|| panic!("{caller}:\n{out}"))[0]
            .to_owned()
    };
    // backup first showed up nine days ago: not within the last 7 days, so not new.
    assert_eq!(status("backup"), "would-deny,rare");
    assert_eq!(status("reports"), "would-deny,plaintext");
    assert_eq!(status("ip:10.0.0.7"), "would-deny,plaintext");
    assert_eq!(status("web"), "ok");

    let one = ok(&cordon(
        dir.path(),
        &["diff", "--db", fleet.to_str().unwrap(), "--policy", "policy.toml", "--service", "api"],
    ));
    assert!(one.starts_with("api (enforce): enforcing\n") && !one.contains("db ("), "{one}");
}

/// host, hour, source, destination, connections, bytes back, first and last seen.
type Row = (String, i64, String, String, i64, i64, i64, i64);

fn dump(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT host, hour, source, destination, connections, bytes_to_source, first_seen, last_seen
             FROM edge_hour ORDER BY host, hour, source, destination, identified",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn merge_is_idempotent_and_order_free() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = fixture(dir.path());
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    ok(&cordon(dir.path(), &["merge", "--out", "ab.db", a, b]));
    ok(&cordon(dir.path(), &["merge", "--out", "ba.db", b, a, b]));
    ok(&cordon(dir.path(), &["merge", "--out", "twice.db", a]));
    ok(&cordon(dir.path(), &["merge", "--out", "twice.db", b, a]));
    let ab = dump(&dir.path().join("ab.db"));
    assert!(ab.iter().any(|r| r.0 == "host-a") && ab.iter().any(|r| r.0 == "host-b"));
    assert_eq!(dump(&dir.path().join("ba.db")), ab);
    assert_eq!(dump(&dir.path().join("twice.db")), ab);
    let rows_a = dump(Path::new(a)).len() + dump(Path::new(b)).len();
    assert_eq!(ab.len(), rows_a);
}

#[test]
fn bad_inputs_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = merged(dir.path());
    std::fs::write(dir.path().join("junk.db"), "not a ledger at all, just some text that is long enough")
        .unwrap();
    let before = dump(&fleet);

    let out = cordon(dir.path(), &["graph", "--db", "junk.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.db: not a cordon ledger"));

    let out = cordon(dir.path(), &["merge", "--out", fleet.to_str().unwrap(), "junk.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.db"));
    assert_eq!(dump(&fleet), before, "a refused merge leaves the output as it was");

    let out = cordon(dir.path(), &["merge", "--out", fleet.to_str().unwrap(), fleet.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    std::fs::write(dir.path().join("bad.toml"), "[modes]\ndb = \"enforcing\"\n").unwrap();
    let out = cordon(dir.path(), &["diff", "--db", fleet.to_str().unwrap(), "--policy", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));

    let out = cordon(dir.path(), &["graph", "--db", fleet.to_str().unwrap(), "--since", "30x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("30x"));

    let out = cordon(dir.path(), &["graph", "--db", "missing.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.db: no such ledger"));
}
