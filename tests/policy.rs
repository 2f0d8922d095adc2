//! Policy: precedence, bad input, `check` and `mode` through the binary, hot reload, and the
//! decision log's folding and rate limiting.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cordon::ledger::{EdgeKey, Recorder};
use cordon::policy::{
    DecisionLog, DecisionRecord, Identified, Mode, Outcome, Policy, PolicyWatcher, Verdict,
};
use support::{cordon, eventually};

fn policy(text: &str) -> Policy {
    Policy::parse(text, Path::new("policy.toml")).unwrap()
}

fn intention(s: &str, d: &str, a: &str) -> String {
    format!("[[intention]]\nsource = \"{s}\"\ndestination = \"{d}\"\naction = \"{a}\"\n")
}

#[test]
fn the_most_specific_intention_decides_as_consul_orders_them() {
    // Every level present: web -> db deny beats * -> db allow beats web -> * deny beats * -> * allow.
    let all = [
        intention("*", "*", "allow"),
        intention("web", "*", "deny"),
        intention("*", "db", "allow"),
        intention("web", "db", "deny"),
    ]
    .concat();
    let p = policy(&all);
    let table: &[(&str, &str, Verdict, &str)] = &[
        ("web", "db", Verdict::Deny, "web -> db deny"),
        ("api", "db", Verdict::Allow, "* -> db allow"),
        ("web", "cache", Verdict::Deny, "web -> * deny"),
        ("api", "cache", Verdict::Allow, "* -> * allow"),
        ("ip:10.0.0.7", "db", Verdict::Allow, "* -> db allow"),
    ];
    for (s, d, verdict, rule) in table {
        let got = p.intention_for(s, d);
        assert_eq!(got.verdict, *verdict, "{s} -> {d}");
        assert!(got.rule.starts_with(rule), "{s} -> {d}: {}", got.rule);
    }
    // Remove levels one by one from the top: the next one down decides.
    let p = policy(
        &[intention("*", "*", "allow"), intention("web", "*", "deny"), intention("*", "db", "allow")]
            .concat(),
    );
    assert_eq!(p.intention_for("web", "db").verdict, Verdict::Allow, "* -> db beats web -> *");
    let p = policy(&[intention("*", "*", "allow"), intention("web", "*", "deny")].concat());
    assert_eq!(p.intention_for("web", "db").verdict, Verdict::Deny, "web -> * beats * -> *");
    let p = policy(&intention("web", "db", "allow"));
    let none = p.intention_for("api", "db");
    assert_eq!(none.verdict, Verdict::Deny, "no match is deny");
    assert!(none.rule.contains("no matching intention"));
    assert!(p.intention_for("web", "db").rule.contains("policy.toml:1"), "the rule names file and line");
}

#[test]
fn modes_default_to_star_then_learn() {
    assert_eq!(Policy::empty().mode("db"), Mode::Learn);
    let p = policy("[modes]\n\"*\" = \"enforce\"\ncache = \"learn\"\n");
    assert_eq!((p.mode("db"), p.mode("cache")), (Mode::Enforce, Mode::Learn));
}

#[test]
fn each_bad_policy_is_refused_naming_the_file_and_line() {
    let cases: &[(&str, &str)] = &[
        ("[modes]\ndb = \"enforcing\"\n", "line 2"),
        ("[modes]\n\"d b\" = \"learn\"\n", "line 2"),
        ("[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"permit\"\n", "line 4"),
        ("[[intention]]\nsource = \"web/1\"\ndestination = \"db\"\naction = \"allow\"\n", "line 2"),
        (
            "[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\nreason = \"x\"\n",
            "reason",
        ),
        ("[[intention]]\nsource = \"web\"\naction = \"allow\"\n", "destination"),
        ("[modez]\n", "modez"),
        ("[modes\n", "line 1"),
        (&[intention("web", "db", "allow"), intention("web", "db", "deny")].concat(), "line 5"),
    ];
    for (text, want) in cases {
        let err = Policy::parse(text, Path::new("/etc/cordon/policy.toml")).unwrap_err().to_string();
        assert!(err.contains("/etc/cordon/policy.toml"), "{text:?}: {err}");
        assert!(err.contains(want), "{text:?} should mention {want:?}: {err}");
    }
    let dup = Policy::parse(
        &[intention("web", "db", "allow"), intention("web", "db", "allow")].concat(),
        Path::new("p.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(dup.contains("first is at line 1"), "{dup}");
}

#[test]
fn check_answers_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    // cache is named so that `check` knows it (a name nothing knows is refused as a typo).
    std::fs::write(
        &file,
        format!("[modes]\ndb = \"enforce\"\ncache = \"learn\"\n{}", intention("web", "db", "allow")),
    )
    .unwrap();
    let p = file.to_str().unwrap();
    let ok = cordon(&["check", "--policy", p, "web", "db"]);
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("web -> db allow"));
    let no = cordon(&["check", "--policy", p, "batch", "db"]);
    assert_eq!(no.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no.stdout).contains("refused"));
    let learning = cordon(&["check", "--policy", p, "batch", "cache"]);
    assert_eq!(learning.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&learning.stdout).contains("let in anyway"), "learn mode says so");
    std::fs::write(&file, "[modes]\ndb = \"sometimes\"\n").unwrap();
    let bad = cordon(&["check", "--policy", p, "web", "db"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2"));
}

const COMMENTED: &str = "# the fleet's policy, owned by the platform team\n\
[modes]\n\"*\" = \"learn\"   # everything learns first\n\
cache = \"learn\"\n\n\
# web talks to db since 2019\n\
[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\nnote = \"proposed from 1543 connections\"\n";

fn ledger_with_callers(path: &Path, callers: &[(&str, Identified, usize)]) {
    let (rec, handle) = Recorder::start(path, "db-1", 1024, Duration::from_millis(50)).unwrap();
    for (source, identified, n) in callers {
        let edge = EdgeKey {
            source: source.to_string(),
            destination: "db".into(),
            identified: *identified,
            mode: Mode::Learn,
            verdict: Verdict::Deny,
        };
        for _ in 0..*n {
            let now = SystemTime::now();
            support::connection(&handle, &edge, now, now, (10, 100));
        }
    }
    rec.shutdown();
}

#[test]
fn mode_keeps_comments_preflights_against_the_ledger_and_force_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, COMMENTED).unwrap();
    let db = dir.path().join("ledger.db");
    ledger_with_callers(
        &db,
        &[
            ("web", Identified::Mtls, 5),
            ("batch", Identified::Mtls, 2),
            ("legacy", Identified::PlaintextIp, 1),
        ],
    );
    let (p, d) = (file.to_str().unwrap(), db.to_str().unwrap());

    let refused = cordon(&["mode", "--policy", p, "db", "enforce", "--db", d]);
    let out = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains("batch") && out.contains("legacy") && !out.contains("  web "), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), COMMENTED, "a refused flip leaves the file alone");

    let forced = cordon(&["mode", "--policy", p, "db", "enforce", "--db", d, "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", String::from_utf8_lossy(&forced.stderr));
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(Policy::load(&file).unwrap().mode("db"), Mode::Enforce);
    for kept in [
        "# the fleet's policy",
        "# everything learns first",
        "# web talks to db since 2019",
        "note = \"proposed",
    ] {
        assert!(after.contains(kept), "{kept:?} lost:\n{after}");
    }
    assert!(
        after.find("cache = ").unwrap() < after.find("db = ").unwrap(),
        "order kept, new key appended:\n{after}"
    );

    // Back to learn: never preflighted.
    let back = cordon(&["mode", "--policy", p, "db", "learn", "--db", d]);
    assert_eq!(back.status.code(), Some(0));
    assert_eq!(Policy::load(&file).unwrap().mode("db"), Mode::Learn);

    // A policy that no longer parses is refused and left as it is.
    std::fs::write(&file, "[modes]\ndb = \"maybe\"\n").unwrap();
    let bad = cordon(&["mode", "--policy", p, "db", "learn"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "[modes]\ndb = \"maybe\"\n");
    // No leftovers from the atomic write.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp")), "{names:?}");
}

#[test]
fn the_preflight_with_allowing_intentions_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, [intention("web", "db", "allow"), intention("batch", "db", "allow")].concat())
        .unwrap();
    let db = dir.path().join("ledger.db");
    ledger_with_callers(&db, &[("web", Identified::Mtls, 3), ("batch", Identified::Mtls, 1)]);
    let (p, d) = (file.to_str().unwrap(), db.to_str().unwrap());
    // The ledger is seconds old: the default --min-history (30d) refuses, saying so.
    let young = cordon(&["mode", "--policy", p, "db", "enforce", "--db", d]);
    let out = String::from_utf8_lossy(&young.stdout);
    assert_eq!(young.status.code(), Some(1), "{out}");
    assert!(out.contains("less than --min-history 30.0d"), "{out}");
    let ok = cordon(&["mode", "--policy", p, "db", "enforce", "--db", d, "--min-history", "0"]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("preflight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_applies_a_renamed_policy_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "[modes]\n\"*\" = \"learn\"\n").unwrap();
    let (watcher, rx) = PolicyWatcher::start(&file).unwrap();
    let replace = |text: &str| {
        let tmp = dir.path().join(".policy.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    replace("[modes]\ndb = \"enforce\"\n");
    eventually("the flip to enforce", Duration::from_secs(1), || async {
        rx.borrow().mode("db") == Mode::Enforce
    })
    .await;
    let good_version = rx.borrow().version().to_string();

    replace("[modes]\ndb = \"enforce\"\n[[intention]]\nsource = \"web\"\n");
    let stats = watcher.stats();
    eventually("the bad policy refused", Duration::from_secs(3), || async {
        stats.failed.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(rx.borrow().version(), good_version, "the last good policy stays");
    assert_eq!(rx.borrow().mode("db"), Mode::Enforce);
    let last_error = stats.last_error.lock().unwrap().clone().unwrap();
    assert!(last_error.contains("policy.toml"), "{last_error}");
}

fn record(source: &str, outcome: Outcome, at: SystemTime) -> DecisionRecord {
    DecisionRecord {
        at,
        source: source.into(),
        source_addr: "10.0.0.7:40000".parse::<SocketAddr>().unwrap(),
        local_addr: "10.0.0.8:14000".parse::<SocketAddr>().unwrap(),
        destination: "db".into(),
        mode: if outcome == Outcome::Denied { Mode::Enforce } else { Mode::Learn },
        outcome,
        rule: Arc::from("no matching intention (default deny)"),
        reason: cordon::policy::Reason::NoIntention,
        // What an mTLS caller's handshake showed (the cordon format reads only that there was one).
        tls: Some(Arc::new(cordon::policy::TlsSeen {
            version: "1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            leaf: rustls_pki_types::CertificateDer::from(Vec::new()),
        })),
        identified: Identified::Mtls,
    }
}

#[test]
fn the_decision_log_folds_would_deny_and_rate_limits_denials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let log = DecisionLog::open(Some(&path)).unwrap();
    let now = SystemTime::now();
    for _ in 0..500 {
        log.record(record("web", Outcome::WouldDeny, now));
    }
    for _ in 0..40 {
        log.record(record("scanner", Outcome::Denied, now));
    }
    log.record(record("ok", Outcome::Allowed, now));
    log.shutdown();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let would: Vec<_> = lines.iter().filter(|l| l["outcome"] == "would-deny").collect();
    assert_eq!(would.len(), 1, "500 would-deny of one edge in one minute fold into one record");
    assert_eq!(would[0]["count"], 500);
    assert_eq!(would[0]["mode"], "learn");
    let denied: Vec<_> = lines.iter().filter(|l| l["outcome"] == "denied").collect();
    let singles = denied.iter().filter(|l| l["count"] == 1).count();
    let folded: u64 = denied.iter().filter(|l| l["count"] != 1).map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(singles, cordon::policy::DENIALS_PER_SOURCE_PER_SECOND as usize, "one by one up to the rate");
    assert_eq!(folded, 40 - singles as u64, "the rest folded with a count");
    let first = denied[0];
    for field in
        ["time", "source", "source_addr", "destination", "mode", "verdict", "rule", "transport", "identified"]
    {
        assert!(!first[field].is_null(), "{field} missing: {first}");
    }
    assert_eq!((first["transport"].as_str(), first["verdict"].as_str()), (Some("tls"), Some("deny")));
    assert!(lines.iter().all(|l| l["source"] != "ok"), "allowed connections are not logged");
}
