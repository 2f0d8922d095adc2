//! `cordon mode`, `check`, `diff` and `report` as an operator runs them against ledgers written by
//! the real recorder: a migrated caller stops blocking, a stray address is denied on purpose,
//! typos and a missing --db are refused, --force says what it overrode, and the three commands
//! give one readiness (here on a generated 1,000-service ledger; tests/demo.rs does the demo's).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon::ledger::{EdgeKey, Recorder, RecorderHandle};
use cordon::policy::{Identified, Mode, Verdict};

const DAY: u64 = 86_400;

/// Midnight UTC twelve days ago.
fn start() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    (now / DAY - 12) * DAY
}

/// `per_day` connections (100 bytes out, 1000 back) of `source -> destination` on each of `days`.
fn traffic(
    h: &RecorderHandle,
    (source, destination): (&str, &str),
    identified: Identified,
    days: &[u64],
    per_day: u64,
) {
    let edge = EdgeKey {
        source: source.into(),
        destination: destination.into(),
        identified,
        mode: Mode::Learn,
        verdict: Verdict::Deny,
    };
    for d in days {
        for i in 0..per_day {
            let at = UNIX_EPOCH + Duration::from_secs(start() + d * DAY + 3600 + i);
            support::connection(h, &edge, at, at, (100, 1000));
        }
    }
}

fn ledger(path: &Path, fill: impl FnOnce(&RecorderHandle)) {
    let (rec, h) = Recorder::start(path, "host-a", 65_536, Duration::from_secs(1)).unwrap();
    fill(&h);
    rec.shutdown();
}

fn cordon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon")).env_clear().args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

const ALLOW: &str = r#"
[modes]
"*" = "learn"

[[intention]]
source = "web"
destination = "db"
action = "allow"

[[intention]]
source = "legacy"
destination = "db"
action = "allow"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    policy: PathBuf,
    db: PathBuf,
}

impl Fixture {
    fn new(policy: &str, fill: impl FnOnce(&RecorderHandle)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (p, db) = (dir.path().join("policy.toml"), dir.path().join("ledger.db"));
        std::fs::write(&p, policy).unwrap();
        ledger(&db, fill);
        Fixture { _dir: dir, policy: p, db }
    }

    fn mode(&self, rest: &[&str]) -> Output {
        let mut args = vec!["mode", "--policy", self.policy.to_str().unwrap()];
        args.extend(rest);
        cordon(&args)
    }

    fn db(&self) -> &str {
        self.db.to_str().unwrap()
    }

    fn policy_text(&self) -> String {
        std::fs::read_to_string(&self.policy).unwrap()
    }
}

#[test]
fn a_migrated_plaintext_caller_no_longer_blocks_the_flip() {
    // legacy called db in plaintext for five days, was enrolled, and calls over mTLS since.
    let f = Fixture::new(ALLOW, |h| {
        traffic(h, ("web", "db"), Identified::Mtls, &(0..12).collect::<Vec<_>>(), 3);
        traffic(h, ("legacy", "db"), Identified::PlaintextIp, &[0, 1, 2, 3, 4], 2);
        traffic(h, ("legacy", "db"), Identified::Mtls, &[6, 7, 8, 9, 10, 11], 2);
    });
    let out = f.mode(&["db", "enforce", "--db", f.db(), "--min-history", "10d"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("migrated") && said.contains("legacy over mTLS since"), "{said}");
    assert!(!said.contains("--force"), "{said}");
    assert!(f.policy_text().contains("db = \"enforce\""));

    // The same plaintext, still going on after its mTLS began, blocks.
    let g = Fixture::new(ALLOW, |h| {
        traffic(h, ("web", "db"), Identified::Mtls, &(0..12).collect::<Vec<_>>(), 3);
        traffic(h, ("legacy", "db"), Identified::PlaintextIp, &[0, 1, 2, 3, 4, 9], 2);
        traffic(h, ("legacy", "db"), Identified::Mtls, &[6, 7, 8, 9, 10, 11], 2);
    });
    let out = g.mode(&["db", "enforce", "--db", g.db(), "--min-history", "10d"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("legacy") && text(&out).contains("plaintext"), "{}", text(&out));
}

#[test]
fn an_address_discovery_names_migrated_when_that_service_arrives_over_mtls() {
    // 10.0.0.7 was unknown to discovery when it called; it is legacy's backend now, and legacy
    // calls over mTLS since day 6.
    let f = Fixture::new(ALLOW, |h| {
        traffic(h, ("web", "db"), Identified::Mtls, &(0..12).collect::<Vec<_>>(), 3);
        traffic(h, ("ip:10.0.0.7", "db"), Identified::Unknown, &[0, 1, 2, 3, 4], 2);
        traffic(h, ("legacy", "db"), Identified::Mtls, &[6, 7, 8, 9, 10, 11], 2);
    });
    let without = f.mode(&["db", "enforce", "--db", f.db(), "--min-history", "10d"]);
    assert_eq!(without.status.code(), Some(1), "{}", text(&without));
    let discovery = f._dir.path().join("services");
    std::fs::create_dir(&discovery).unwrap();
    std::fs::write(
        discovery.join("legacy.json"),
        r#"[{"host": "10.0.0.7", "port": 8080, "name": "legacy-0"}]"#,
    )
    .unwrap();
    // `diff` gives the same readiness as `mode`, with the same discovery and without it.
    let ready_in_diff = |extra: &[&str]| {
        let policy = f.policy.to_str().unwrap();
        let mut args =
            vec!["diff", "--db", f.db(), "--policy", policy, "--service", "db", "--min-history", "10d"];
        args.extend(["--format", "json"]);
        args.extend(extra);
        let out = cordon(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["services"][0]["ready"].as_bool().unwrap()
    };
    assert!(!ready_in_diff(&[]), "without discovery the bare address still blocks");
    assert!(ready_in_diff(&["--discovery", discovery.to_str().unwrap()]), "as mode --discovery says");
    let out = f.mode(&[
        "db",
        "enforce",
        "--db",
        f.db(),
        "--min-history",
        "10d",
        "--discovery",
        discovery.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("ip:10.0.0.7") && text(&out).contains("legacy over mTLS since"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_stray_address_blocks_until_a_deny_names_it() {
    let f = Fixture::new(ALLOW, |h| {
        traffic(h, ("web", "db"), Identified::Mtls, &(0..12).collect::<Vec<_>>(), 3);
        traffic(h, ("ip:10.0.0.7", "db"), Identified::Unknown, &[4, 5], 1);
    });
    let out = f.mode(&["db", "enforce", "--db", f.db(), "--min-history", "10d"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("ip:10.0.0.7"), "{}", text(&out));

    // An allow may not name an address: a policy error with file and line, nothing flipped.
    let allowing = format!(
        "{ALLOW}\n[[intention]]\nsource = \"ip:10.0.0.7\"\ndestination = \"db\"\naction = \"allow\"\n"
    );
    std::fs::write(&f.policy, &allowing).unwrap();
    let out = f.mode(&["db", "enforce", "--db", f.db(), "--min-history", "10d"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("policy.toml") && text(&out).contains("line 15"), "{}", text(&out));
    assert!(text(&out).contains("may only be denied"), "{}", text(&out));

    // A deny naming its range acknowledges it on purpose: the flip goes through without --force.
    let denying = format!(
        "{ALLOW}\n[[intention]]\nsource = \"ip:10.0.0.0/24\"\ndestination = \"db\"\naction = \"deny\"\n"
    );
    std::fs::write(&f.policy, &denying).unwrap();
    let check = cordon(&["check", "--policy", f.policy.to_str().unwrap(), "ip:10.0.0.7", "db"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("ip:10.0.0.0/24 -> db deny (policy.toml:15)"), "{}", text(&check));
    let out = f.mode(&["db", "enforce", "--db", f.db(), "--min-history", "10d"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("denied on purpose"), "{}", text(&out));
}

#[test]
fn typos_are_refused_with_the_closest_name_and_change_nothing() {
    let enforcing = ALLOW.replace("\"*\" = \"learn\"", "\"*\" = \"learn\"\ndb = \"enforce\"");
    let f = Fixture::new(&enforcing, |h| traffic(h, ("web", "db"), Identified::Mtls, &[0], 1));
    for (args, typo) in [
        (vec!["Db", "learn"], "Db"),
        (vec!["dbb", "enforce", "--force"], "dbb"),
        (vec!["dbb", "learn"], "dbb"),
    ] {
        let out = f.mode(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(&format!("\"{typo}\" is not a service")), "{}", text(&out));
        assert!(text(&out).contains("did you mean db?"), "{args:?}: {}", text(&out));
        assert_eq!(f.policy_text(), enforcing, "{args:?} changed the policy");
    }
    let check = cordon(&["check", "--policy", f.policy.to_str().unwrap(), "web", "dbb"]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(text(&check).contains("did you mean db?"), "{}", text(&check));
    // A name only the ledger knows is known.
    let check = cordon(&["check", "--policy", f.policy.to_str().unwrap(), "--db", f.db(), "web", "db"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    // The rollback itself goes through, and says what it was.
    let out = f.mode(&["db", "learn"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("db is now in learn mode, was enforce"), "{}", text(&out));
}

#[test]
fn enforce_without_a_ledger_is_refused_and_force_says_what_it_overrode() {
    let f = Fixture::new(ALLOW, |h| {
        traffic(h, ("web", "db"), Identified::Mtls, &[10, 11], 3);
        traffic(h, ("batch", "db"), Identified::Mtls, &[11], 1);
    });
    let out = f.mode(&["db", "enforce"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nothing to preflight against: pass --db or --force"), "{}", text(&out));
    assert_eq!(f.policy_text(), ALLOW);

    let out = f.mode(&["db", "enforce", "--db", f.db(), "--force"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("--force: flipping anyway, overriding:"), "{said}");
    assert!(said.contains("batch would be denied (no matching intention (default deny))"), "{said}");
    assert!(said.contains("is shorter than --min-history 30.0d"), "{said}");

    std::fs::write(&f.policy, ALLOW).unwrap();
    let out = f.mode(&["db", "enforce", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("no preflight: no --db"), "{}", text(&out));
}

#[test]
fn mode_diff_and_the_report_give_one_readiness_on_a_1000_service_ledger() {
    const SERVICES: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let name = |i: usize| format!("svc{:04}", i % SERVICES);
    ledger(&db, |h| {
        for d in 0..SERVICES {
            // Young services (one day of traffic) fail a 5d history; one in five has a plaintext
            // caller, one in seven of those migrated; every third is called by an unnamed address.
            let days: &[u64] = if d % 4 == 0 { &[11] } else { &[2, 11] };
            traffic(h, (&name(d + 1), &name(d)), Identified::Mtls, days, 1);
            if d % 5 == 0 {
                let plain: &[u64] = if d % 7 == 0 { &[2] } else { days };
                traffic(h, (&name(d + 2), &name(d)), Identified::PlaintextIp, plain, 1);
                traffic(h, (&name(d + 2), &name(d)), Identified::Mtls, &[11], 1);
            }
            if d % 3 == 0 {
                traffic(h, ("ip:10.9.0.1", &name(d)), Identified::Unknown, &[5], 1);
            }
        }
    });
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[modes]\n\"svc0010\" = \"enforce\"\n\n[[intention]]\nsource = \"*\"\ndestination = \"*\"\naction = \"allow\"\n\n\
         [[intention]]\nsource = \"ip:10.9.0.0/16\"\ndestination = \"svc0003\"\naction = \"deny\"\n",
    )
    .unwrap();
    support::readiness::one_readiness(
        &db,
        &policy,
        "5d",
        &["svc0000", "svc0001", "svc0003", "svc0005", "svc0010", "svc0014", "svc0035", "svc0070", "svc0999"],
    );
}
