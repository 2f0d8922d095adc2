//! The rule of readiness over every kind of caller, as one table.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;

const DAY: u64 = 86_400;

const POLICY: &str = r#"
[modes]
"*" = "learn"
vault = "enforce"

[[intention]]
source = "web"
destination = "*"
action = "allow"

[[intention]]
source = "reports"
destination = "db"
action = "allow"

[[intention]]
source = "thief"
destination = "db"
action = "deny"

[[intention]]
source = "ip:10.9.0.0/16"
destination = "db"
action = "deny"
"#;

fn t(day: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 * DAY + day * DAY)
}

/// A caller with traffic from day `from` to day `to`.
fn ev(source: &str, identified: Identified, from: u64, to: u64) -> Evidence {
    Evidence {
        source: source.into(),
        identified,
        discovered_as: None,
        claimed: false,
        connections: 10,
        probe_only: false,
        first_seen: t(from),
        last_seen: t(to),
        undeclared: false,
    }
}

/// Forty days of web over mTLS, then `extra`: the blockers' and notes' kinds and callers.
fn judge(service: &str, extra: Vec<Evidence>, declared: &[DeclaredCaller]) -> Readiness {
    let p = Policy::parse(POLICY, Path::new("policy.toml")).expect("the test policy parses");
    let mut evidence = vec![ev("web", Identified::Mtls, 0, 40)];
    evidence.extend(extra);
    readiness(&Question {
        service,
        mode_now: p.mode(service),
        policy_after: &p,
        evidence: &evidence,
        declared,
        min_history: Duration::from_secs(30 * DAY),
        now: t(40),
    })
}

fn kinds(r: &Readiness) -> (Vec<String>, Vec<String>) {
    let b = r
        .blockers
        .iter()
        .map(|b| format!("{} {}", b.kind(), b.caller().map_or("-", |c| &c.source)))
        .collect();
    let n = r.notes.iter().map(|n| format!("{} {}", n.kind(), n.caller().source)).collect();
    (b, n)
}

/// What, the service, the extra evidence, the declarations, the blockers and the notes expected.
type Case<'a> = (&'a str, &'a str, Vec<Evidence>, &'a [DeclaredCaller], &'a [&'a str], &'a [&'a str]);

#[test]
fn table() {
    use Identified::*;
    let claimed = |mut e: Evidence| {
        e.claimed = true;
        e
    };
    let probe = |mut e: Evidence| {
        e.probe_only = true;
        e
    };
    let undeclared = |mut e: Evidence| {
        e.undeclared = true;
        e
    };
    let discovered = |mut e: Evidence, name: &str| {
        e.discovered_as = Some(name.into());
        e
    };
    let specific =
        [DeclaredCaller { identity: "nightly".into(), provenance: "haproxy.cfg on h".into(), broad: false }];
    let broad =
        [DeclaredCaller { identity: "nightly".into(), provenance: "haproxy.cfg on h".into(), broad: true }];
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("only allowed callers, 40 days", "db", vec![], &[], &[], &[]),
        ("an mTLS caller no intention allows", "db",
            vec![ev("api", Mtls, 0, 40)], &[], &["would-deny api"], &[]),
        ("an HAProxy log is judged by its name", "db",
            vec![ev("api", HaproxyLog, 0, 40)], &[], &["would-deny api"], &[]),
        ("a plaintext caller still active", "db",
            vec![ev("reports", PlaintextIp, 0, 40)], &[], &["plaintext reports"], &[]),
        ("a plaintext caller that migrated: mTLS began after plaintext ended", "db",
            vec![ev("reports", PlaintextIp, 0, 20), ev("reports", Mtls, 21, 40)], &[], &[], &["migrated reports"]),
        ("plaintext that overlaps the mTLS evidence has not migrated", "db",
            vec![ev("reports", PlaintextIp, 0, 30), ev("reports", Mtls, 21, 40)], &[], &["plaintext reports"], &[]),
        ("a bare address discovery now names, which arrives over mTLS", "db",
            vec![discovered(ev("ip:10.0.0.7", Unknown, 0, 20), "reports"), ev("reports", Mtls, 21, 40)],
            &[], &[], &["migrated ip:10.0.0.7"]),
        ("a bare address discovery names, still without a certificate", "db",
            vec![discovered(ev("ip:10.0.0.7", Unknown, 0, 20), "reports")], &[], &["plaintext ip:10.0.0.7"], &[]),
        ("a bare address nobody names", "db",
            vec![ev("ip:10.0.0.7", Unknown, 10, 11)], &[], &["plaintext ip:10.0.0.7"], &[]),
        ("an address a deny intention names", "db",
            vec![ev("ip:10.9.1.1", Unknown, 10, 11)], &[], &[], &["denied-on-purpose ip:10.9.1.1"]),
        ("a caller denied on purpose by name", "db",
            vec![ev("thief", Mtls, 39, 40)], &[], &[], &["denied-on-purpose thief", "new thief"]),
        ("a probe-only caller", "db",
            vec![probe(ev("lb", Unknown, 0, 40))], &[], &[], &["probe-only lb"]),
        ("a specific declaration never seen", "db", vec![], &specific, &["declared-never-seen nightly"], &[]),
        ("a broad declaration never seen", "db", vec![], &broad, &[], &[]),
        ("an undeclared caller the policy allows", "db",
            vec![undeclared(ev("web", Mtls, 0, 40))], &[], &[], &["undeclared web"]),
        ("a caller first seen lately", "db",
            vec![ev("web", Mtls, 38, 40)], &[], &[], &["new web"]),
        ("a claimed caller still blocks", "db",
            vec![claimed(ev("api", HaproxyLog, 0, 40))], &[], &["would-deny api"], &[]),
        // enforcing already: what it refuses it refuses now, and it is ready to stay
        ("an enforcing service's refused callers", "vault",
            vec![ev("api", Mtls, 0, 2), ev("ip:10.0.0.7", Unknown, 0, 1)], &specific, &[],
            &["refused-now api", "refused-now ip:10.0.0.7", "refused-now nightly"]),
    ];
    assert!(!cases.is_empty());
    for (what, service, extra, declared, blockers, notes) in cases {
        let r = judge(service, extra, declared);
        let (b, n) = kinds(&r);
        assert_eq!(
            (b, n),
            (
                blockers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                notes.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            ),
            "{what}"
        );
        assert_eq!(r.ready, blockers.is_empty(), "{what}");
    }
}

#[test]
fn history_counts_only_what_the_callers_do_not_claim() {
    let p = Policy::parse(POLICY, Path::new("policy.toml")).expect("the test policy parses");
    let mut old_claim = ev("web", Identified::HaproxyLog, 0, 40);
    old_claim.claimed = true;
    let evidence = [ev("web", Identified::Mtls, 35, 40), old_claim];
    let q = Question {
        service: "db",
        mode_now: Mode::Learn,
        policy_after: &p,
        evidence: &evidence,
        declared: &[],
        min_history: Duration::from_secs(30 * DAY),
        now: t(40),
    };
    let r = readiness(&q);
    assert_eq!(r.span(), Duration::from_secs(5 * DAY));
    assert_eq!(r.blockers, vec![Blocker::HistoryShort { span: r.span(), min: q.min_history }]);
    assert_eq!(r.summary(), "not ready: history 5.0d of 30.0d");
    let r = readiness(&Question { min_history: Duration::from_secs(5 * DAY), ..q });
    assert!(r.ready, "{:?}", r.blockers);
    // A service that enforces already is not asked for history to stay so.
    let r = readiness(&Question { service: "vault", mode_now: Mode::Enforce, ..q });
    assert!(r.ready);
}

#[test]
fn every_reason_is_in_the_summary_and_the_json() {
    let r = judge(
        "db",
        vec![ev("api", Identified::Mtls, 35, 40), ev("reports", Identified::PlaintextIp, 35, 40)],
        &[DeclaredCaller { identity: "nightly".into(), provenance: "p".into(), broad: false }],
    );
    assert_eq!(
        r.summary(),
        "not ready: 1 caller would be denied, 1 caller still in plaintext, 1 declared caller never seen and would be denied"
    );
    let json = serde_json::to_value(&r).expect("readiness serialises");
    assert_eq!(json["ready"], false);
    assert_eq!(json["blockers"][0]["reason"], "would-deny");
    assert_eq!(json["blockers"][0]["caller"]["source"], "api");
    assert_eq!(json["blockers"][2]["caller"]["last_seen"], serde_json::Value::Null);
    assert_eq!(json["history"]["days"], 40.0);
    assert_eq!(json["notes"][0]["note"], "new");
}
