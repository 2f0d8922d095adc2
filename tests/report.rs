//! `cordon report`: the HTML holds every service and edge with the verdict class the policy gives
//! it, the readiness table and the proposal; it fetches nothing; hostile names are escaped.

mod support;

use std::time::{Duration, SystemTime};

use cordon::ledger::{EdgeKey, Event, Recorder};
use cordon::policy::{Identified, Mode, Verdict};

/// `cordon report --db DB --policy POLICY --out OUT`, run as the built binary.
fn report(db: &std::path::Path, policy: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    support::cordon(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
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
        // Ledgers merged from elsewhere are not trusted to hold clean names.
        ("<img src=x onerror=alert(1)>", "api", Identified::Unknown, Mode::Learn, Verdict::Deny),
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
        ("&lt;img src=x onerror=alert(1)&gt;", "api", "plaintext"),
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
    // Readiness: db would cut off batch (and the unknown address); cache would cut off api.
    assert!(html.contains(r#"<tr class="not-ready" data-service="db">"#));
    assert!(html.contains(r#"<tr class="not-ready" data-service="cache">"#));
    // The proposal proposes what the policy lacks, and lists plaintext only as a comment.
    assert!(html.contains("source = &quot;batch&quot;"), "batch -> db proposed");
    assert!(html.contains("# ") && html.contains("reports"));
    // Self-contained: nothing is fetched.
    for fetch in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(fetch), "the report must not fetch {fetch}");
    }
    assert!(!html.contains("<img"), "names from the ledger are escaped, never markup");
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
