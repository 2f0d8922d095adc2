//! `cordon report`: the HTML holds every service and edge with the verdict class the policy gives
//! it, the readiness table and the proposal; it fetches nothing; hostile names are escaped. A
//! fleet ledger gives a page of overview, search and focus views under 8 MiB, without the picture
//! of everything.

mod support;

use std::time::{Duration, SystemTime};

use cordon::ledger::{EdgeKey, Event, Recorder};
use cordon::policy::{Identified, Mode, Verdict};

/// `cordon report --db DB --policy POLICY --out OUT`, run as the built binary; the ledgers here
/// are seconds old, so no minimum history is asked for.
fn report(db: &std::path::Path, policy: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    support::cordon(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--min-history",
        "0",
    ])
}

#[test]
fn the_report_shows_every_edge_with_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (rec, h) = Recorder::start(&db, "host-1", 1024, Duration::from_millis(50)).unwrap();
    let edges: &[(&str, &str, Identified, Mode, Verdict)] = &[
        ("web", "api", Identified::Mtls, Mode::Learn, Verdict::Allow),
        ("web", "db", Identified::Mtls, Mode::Enforce, Verdict::Allow),
        ("batch", "db", Identified::Mtls, Mode::Enforce, Verdict::Deny),
        ("api", "cache", Identified::Mtls, Mode::Learn, Verdict::Deny),
        ("reports", "api", Identified::PlaintextIp, Mode::Learn, Verdict::Deny),
        ("ip:10.0.0.9", "db", Identified::Unknown, Mode::Enforce, Verdict::Deny),
    ];
    for (s, d, identified, mode, verdict) in edges {
        for _ in 0..3 {
            let edge = EdgeKey {
                source: s.to_string(),
                destination: d.to_string(),
                identified: *identified,
                mode: *mode,
                verdict: *verdict,
            };
            h.record_wait(Event::Opened { edge: edge.clone(), at: SystemTime::now() });
            // Connections that passed carried bytes (none at all would be a port probe).
            if *mode == Mode::Learn || *verdict == Verdict::Allow {
                let at = SystemTime::now();
                let (bytes_to_destination, bytes_to_source, duration) = (10, 100, Duration::from_millis(1));
                h.record_wait(Event::Closed { edge, at, bytes_to_destination, bytes_to_source, duration });
            }
        }
    }
    rec.shutdown();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[modes]\ndb = \"enforce\"\n[[intention]]\nsource = \"web\"\ndestination = \"*\"\naction = \"allow\"\n",
    )
    .unwrap();
    let out = dir.path().join("report.html");
    let run = report(&db, &policy, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let html = std::fs::read_to_string(&out).unwrap();
    let expected = [
        ("web", "api", "allowed"),
        ("web", "db", "allowed"),
        ("batch", "db", "denied"),
        ("api", "cache", "would-deny"),
        ("reports", "api", "plaintext"),
        ("ip:10.0.0.9", "db", "plaintext"),
    ];
    for (s, d, class) in expected {
        let tag = format!(r#"<g class="edge {class}" data-source="{s}" data-destination="{d}""#);
        assert!(html.contains(&tag), "missing {tag}");
    }
    assert_eq!(html.matches(r#"<g class="edge "#).count(), expected.len());
    for node in ["web", "api", "db", "cache", "batch", "reports", "ip:10.0.0.9"] {
        assert!(html.contains(&format!(r#"data-name="{node}""#)), "node {node} missing");
    }
    assert!(html.contains(r#"class="node service enforce" data-name="db""#), "db drawn as enforcing");
    assert!(html.contains(r#"<section id="picture">"#), "a small graph is drawn whole");
    let data = data_block(&html);
    assert_eq!(data["names"].as_array().unwrap().len(), 7, "every node in the data block");
    assert_eq!(data["edges"].as_array().unwrap().len(), 10 * expected.len(), "every edge, ten fields each");
    // Readiness: db enforces already and refuses batch and the unknown address now, which does
    // not keep it from staying so; cache would cut off api.
    assert!(html.contains(r#"<tr class="ready" data-service="db">"#));
    assert!(html.contains("enforcing: 2 callers refused now"));
    assert!(html.contains(r#"<tr class="not-ready" data-service="cache">"#));
    // The proposal proposes what the policy lacks, and lists plaintext only as a comment.
    assert!(html.contains("source = &quot;batch&quot;"), "batch -> db proposed");
    assert!(html.contains("# ") && html.contains("reports"));
    // Self-contained: nothing is fetched.
    for fetch in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(fetch), "the report must not fetch {fetch}");
    }
    // Hostile names are refused in ledger files; tests/hostile_files.rs shows the page escapes
    // them whatever their source.
}

/// The page's data block, parsed.
fn data_block(html: &str) -> serde_json::Value {
    let start = r#"<script type="application/json" id="cordon-data">"#;
    let from = html.find(start).expect("a data block") + start.len();
    let to = from + html[from..].find("</script>").expect("the data block ends");
    serde_json::from_str(&html[from..to]).expect("the data block is JSON")
}

#[test]
fn a_fleet_ledger_gives_a_page_under_8_mib_with_every_service_and_edge() {
    const SERVICES: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let (rec, h) = Recorder::start(&db, "fleet", 65_536, Duration::from_secs(1)).unwrap();
    let name = |i: usize| format!("svc{:05}", i % SERVICES);
    let mut edges = 0;
    for d in 0..SERVICES {
        for k in 1..=(1 + d % 7) {
            let source = name(d + k * 13);
            let edge = EdgeKey {
                source,
                destination: name(d),
                identified: if k == 3 { Identified::PlaintextIp } else { Identified::Mtls },
                mode: Mode::Learn,
                verdict: Verdict::Allow,
            };
            // Each with a byte each way: connections that carried data, not port probes.
            let at = SystemTime::now();
            h.record_wait(Event::Opened { edge: edge.clone(), at });
            let duration = Duration::from_millis(5);
            h.record_wait(Event::Closed { edge, at, bytes_to_destination: 1, bytes_to_source: 1, duration });
            edges += 1;
        }
    }
    rec.shutdown();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[modes]\n\"svc00007\" = \"enforce\"\n[[intention]]\nsource = \"*\"\ndestination = \"svc00001\"\naction = \"allow\"\n",
    )
    .unwrap();
    let out = dir.path().join("fleet.html");
    let run = report(&db, &policy, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.len() < 8 << 20, "the page is {} bytes", html.len());
    // No picture of everything: the overview and the focus views read the data block instead.
    assert!(!html.contains(r#"<section id="picture">"#) && !html.contains(r#"<g class="edge "#));
    for part in
        [r#"id="search""#, r#"id="by-readiness""#, r#"id="by-callers""#, r#"<section id="focus" hidden>"#]
    {
        assert!(html.contains(part), "missing {part}");
    }
    let data = data_block(&html);
    assert_eq!(data["names"].as_array().unwrap().len(), SERVICES, "every service");
    assert_eq!(data["services"].as_array().unwrap().len(), SERVICES, "every destination's readiness");
    assert_eq!(data["edges"].as_array().unwrap().len(), 10 * edges, "every edge");
    // Without intentions no destination is ready, but svc00001 allows `*` and its two callers
    // arrive over mTLS, and svc00007 enforces already (what it refuses, it refuses now).
    let services = data["services"].as_array().unwrap();
    let ready: Vec<&serde_json::Value> = services.iter().filter(|s| s[2] == 1).collect();
    assert_eq!(ready.len(), 2, "{ready:?}");
    let ready: Vec<&str> =
        ready.iter().map(|s| data["names"][s[0].as_u64().unwrap() as usize].as_str().unwrap()).collect();
    assert_eq!(ready, ["svc00001", "svc00007"]);
    // Every service row says why it is not ready (a bit per reason) and how long its history is.
    assert_eq!(
        data["reasons"],
        serde_json::json!(["would-deny", "plaintext", "declared-never-seen", "history-short"])
    );
    assert!(html.contains(r#"id="by-reason""#));
    let reasons = |name: &str| {
        let row = services.iter().find(|s| data["names"][s[0].as_u64().unwrap() as usize] == name).unwrap();
        (row[6].as_u64().unwrap(), row[5].as_f64().unwrap())
    };
    // svc00003 is called over mTLS by nobody the policy allows, and in plaintext by svc00042.
    assert_eq!(reasons("svc00003"), (0b11, 0.0));
    assert_eq!(reasons("svc00001"), (0, 0.0));
    assert!(
        services.iter().any(|s| s[1] == 1 && data["names"][s[0].as_u64().unwrap() as usize] == "svc00007")
    );
    assert!(!html.contains("<img"), "names from the ledger are escaped, never markup");
    assert_eq!(html.matches("</script>").count(), 2, "only the page's own script elements end");
    // The fleet's proposal is cut, with the command that prints it whole.
    assert!(html.contains("prints the whole proposal"));
}

#[test]
fn bad_inputs_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[modes]\n").unwrap();
    let missing = dir.path().join("missing.db");
    let out = report(&missing, &policy, &dir.path().join("r.html"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.db"));
    std::fs::write(&policy, "[modes]\ndb = \"maybe\"\n").unwrap();
    let out = report(&missing, &policy, &dir.path().join("r.html"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn out_may_not_be_the_ledger_or_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (rec, h) = Recorder::start(&db, "host-1", 1024, Duration::from_millis(50)).unwrap();
    let edge = EdgeKey {
        source: "web".into(),
        destination: "db".into(),
        identified: Identified::Mtls,
        mode: Mode::Learn,
        verdict: Verdict::Allow,
    };
    h.record_wait(Event::Opened { edge, at: SystemTime::now() });
    rec.shutdown();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[modes]\n").unwrap();
    let (ledger_before, policy_before) = (std::fs::read(&db).unwrap(), std::fs::read(&policy).unwrap());
    // Spelled differently from --db/--policy, so only the file's identity can tell.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    for (target, flag) in [(sub.join("../ledger.db"), "--db"), (sub.join("../policy.toml"), "--policy")] {
        let out = report(&db, &policy, &target);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("is the {flag} file")), "{stderr}");
    }
    assert_eq!(std::fs::read(&db).unwrap(), ledger_before, "the ledger is untouched");
    assert_eq!(std::fs::read(&policy).unwrap(), policy_before, "the policy is untouched");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
