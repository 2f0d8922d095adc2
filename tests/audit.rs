//! The audit trail through the binary: a refused flip, a forced flip, a token, a rotation step,
//! a refused enrolment at a running signing service and a prune of a real PostgreSQL store each
//! leave one record, and `cordon audit` finds each with the fields a responder needs. The OCSF
//! encoding is checked by ocsf-emitter (PyPI, scripts/ocsf_check_audit.py).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use cordon::ledger::{EdgeKey, Recorder};
use cordon::pki::issuer::client::IssuerError;
use cordon::pki::issuer::{IssuerSettings, Renewer};
use cordon::pki::{ServiceName, TrustDomain};
use cordon::policy::{Identified, Mode, Verdict};
use support::postgres::Postgres;
use support::{TRUST_DOMAIN, World, cordon, cordon_ok};

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A ledger where `web` (allowed) and `batch` (not) called `db`, moments ago.
fn ledger(path: &Path) {
    let (rec, handle) = Recorder::start(path, "db-1", 1024, Duration::from_millis(50)).unwrap();
    for source in ["web", "batch"] {
        let edge = EdgeKey {
            source: source.into(),
            destination: "db".into(),
            identified: Identified::Mtls,
            mode: Mode::Learn,
            verdict: Verdict::Deny,
        };
        let now = SystemTime::now();
        support::connection(&handle, &edge, now, now, (10, 100));
    }
    rec.shutdown();
}

const POLICY: &str = "[modes]\n\"*\" = \"learn\"\n\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n";

/// `cordon audit --format json` over `log`, with extra filters.
fn audited(log: &Path, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "--audit-log", s(log), "--format", "json"];
    args.extend(filters);
    cordon_ok(&args).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A refused and a forced flip, a token and a rotation step into one log in `format`.
fn control_plane_actions(world: &World, log: &Path, format: &str) {
    std::fs::write(world.policy(), POLICY).unwrap();
    let db = world.path("ledger.db");
    ledger(&db);
    let audit = ["--audit-log", s(log), "--audit-format", format];
    let policy = world.policy();
    let flip = |extra: &[&str]| {
        let mut args = vec!["mode", "--policy", s(&policy), "db", "enforce", "--db", s(&db)];
        args.extend(extra);
        args.extend(audit);
        cordon(&args)
    };
    assert_eq!(flip(&[]).status.code(), Some(1), "batch is not allowed: refused");
    assert_eq!(flip(&["--force"]).status.code(), Some(0));
    let token = cordon_ok(
        &[&["ca", "token", "--dir", s(&world.ca()), "--host", "web-1", "--service", "web"][..], &audit[..]]
            .concat(),
    );
    let token = token.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("cordon-join-"));
    assert!(!std::fs::read_to_string(log).unwrap().contains(&token), "the token itself is never audited");
    cordon_ok(&[&["ca", "rotate", "--dir", s(&world.ca())][..], &audit[..]].concat());
    // A revocation's reason is free text: it is where an operator's paste can carry escapes.
    let ca = world.ca();
    let revoke = ["ca", "revoke", "--dir", s(&ca), "--host", "web-9", "--reason", "stolen\x1b[2J"];
    cordon_ok(&[&revoke[..], &audit[..]].concat());
}

#[test]
fn every_action_is_one_record_that_cordon_audit_finds_with_its_fields() {
    let world = World::new();
    let log = world.path("audit/trail.jsonl");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    control_plane_actions(&world, &log, "cordon");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);

    let all = audited(&log, &[]);
    let actions: Vec<&str> = all.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["mode_flip", "mode_flip", "token_minted", "rotation_step", "revocation"],
        "{all:#?}"
    );
    let me = cordon::audit::Actor::local();
    for r in &all {
        assert_eq!(r["actor"]["host"], me.host.as_str(), "{r}");
        assert_eq!(r["actor"]["user"], me.user.as_str(), "{r}");
        assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    }

    let (refused, forced) = (&all[0], &all[1]);
    assert_eq!(refused["status"], "refused");
    assert_eq!(
        (refused["service"].as_str(), refused["from"].as_str(), refused["to"].as_str()),
        (Some("db"), Some("learn"), Some("enforce"))
    );
    assert_eq!(refused["preflight"]["ready"], false);
    let reasons = refused["preflight"]["reasons"].to_string();
    assert!(
        reasons.contains("batch") && reasons.contains("min-history") && !reasons.contains("web"),
        "{reasons}"
    );
    assert_eq!(refused["forced"], false);
    assert!(refused["policy_after"].is_null(), "{refused}");
    let unchanged = cordon::audit::policy_hash(POLICY.as_bytes());
    assert_eq!(refused["policy_before"], unchanged.as_str());

    assert_eq!(forced["status"], "success");
    assert_eq!(forced["forced"], true);
    assert_eq!(forced["preflight"]["ready"], false);
    assert_eq!(forced["policy_before"], unchanged.as_str());
    let now = cordon::audit::policy_hash(&std::fs::read(world.policy()).unwrap());
    assert_eq!(forced["policy_after"], now.as_str());
    assert_ne!(now, unchanged);

    assert_eq!(all[2]["host"], "web-1");
    assert_eq!((all[4]["action"].as_str(), all[4]["host"].as_str()), (Some("revocation"), Some("web-9")));
    assert_eq!(all[4]["reason"], "stolen\u{1b}[2J");
    assert_eq!(all[2]["identities"], serde_json::json!(["web"]));
    assert!(all[2]["expires"].is_string());
    assert_eq!((all[3]["step"].as_str(), all[3]["status"].as_str()), (Some("prepared"), Some("success")));

    // Filters: by service (the flips and the token for web), and by time.
    assert_eq!(audited(&log, &["--service", "db"]).len(), 2);
    assert_eq!(audited(&log, &["--service", "web"]).len(), 1);
    assert_eq!(audited(&log, &["--since", "1h"]).len(), 5);
    assert!(audited(&log, &["--since", "2999-01-01T00:00:00Z"]).is_empty());

    // The table: every action, and no control character of a name reaches the terminal.
    let table = cordon_ok(&["audit", "--audit-log", s(&log)]);
    assert!(table.starts_with("TIME"), "{table}");
    for a in ["mode_flip", "token_minted", "rotation_step", "revocation", "--force", "NOT ready"] {
        assert!(table.contains(a), "{a} missing:\n{table}");
    }
    assert!(!table.contains('\x1b'), "an escape sequence reached the terminal:\n{table}");
    assert!(table.contains("stolen\\u{1b}[2J"), "{table}");

    // The report lists db's flips for its focus view, with what finds them in the log.
    let page = world.path("report.html");
    let (ledger, policy) = (world.path("ledger.db"), world.policy());
    cordon_ok(&[
        "report",
        "--db",
        s(&ledger),
        "--policy",
        s(&policy),
        "--out",
        s(&page),
        "--audit-log",
        s(&log),
    ]);
    let html = std::fs::read_to_string(&page).unwrap();
    let start = html.find("id=\"cordon-flips\">").expect("the flips block") + "id=\"cordon-flips\">".len();
    let block: serde_json::Value =
        serde_json::from_str(&html[start..start + html[start..].find("</script>").unwrap()]).unwrap();
    let flips = block["flips"]["db"].as_array().expect("db's flips");
    assert_eq!(flips.len(), 2);
    assert_eq!((flips[1]["time"].clone(), flips[1]["forced"].clone()), (forced["time"].clone(), true.into()));
    assert_eq!(flips[1]["policy"], now.as_str());
    assert_eq!(block["log"], s(&log));
}

#[test]
fn ocsf_records_are_valid_api_activity_and_read_back() {
    let world = World::new();
    let log = world.path("audit.ocsf.jsonl");
    control_plane_actions(&world, &log, "ocsf");
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 5);
    for e in &events {
        assert_eq!(e["class_uid"], 6003, "{e}");
        assert_eq!(e["metadata"]["version"], "1.5.0");
        assert_eq!(e["actor"]["user"]["name"], cordon::audit::Actor::local().user.as_str());
    }
    assert_eq!((events[0]["status_id"].as_i64(), events[0]["activity_id"].as_i64()), (Some(2), Some(3)));
    assert!(events[0]["status_detail"].as_str().unwrap().contains("batch"), "{}", events[0]);
    assert_eq!(events[2]["activity_id"], 1, "a token is created");
    assert_eq!(events[1]["api"]["operation"], "mode_flip");
    assert_eq!(events[1]["resources"][0]["name"], "db");
    // cordon audit reads the OCSF log as well as its own.
    let back = audited(&log, &["--service", "db"]);
    assert_eq!(back.len(), 2);
    assert_eq!(back[1]["forced"], true);

    // Checked by a validator cordon did not write.
    let python = std::env::var("CORDON_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_validator =
        Command::new(&python).args(["-c", "import ocsf_emitter"]).status().is_ok_and(|s| s.success());
    if !has_validator {
        assert!(
            std::env::var("CORDON_REQUIRE_OCSF").as_deref() != Ok("1"),
            "ocsf-emitter is required (pip install ocsf-emitter)"
        );
        eprintln!("skipping the OCSF schema check: ocsf-emitter is not installed");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ocsf_check_audit.py");
    let out = Command::new(&python).arg(&script).arg(&log).args(["--class", "6003"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("5 valid OCSF 1.5.0 events, 0 invalid"), "{said}");
}

#[test]
fn the_log_is_opened_before_the_change_and_defaults_beside_the_policy_and_ca() {
    let world = World::new();
    std::fs::write(world.policy(), POLICY).unwrap();
    let policy = s(&world.policy()).to_owned();

    // A symlink where the log should be: refused, and the policy is left alone.
    let target = world.path("elsewhere.jsonl");
    std::fs::write(&target, "").unwrap();
    let link = world.path("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = cordon(&["mode", "--policy", &policy, "db", "enforce", "--force", "--audit-log", s(&link)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link") && err.contains("link.jsonl"), "{err}");
    assert_eq!(std::fs::read_to_string(world.policy()).unwrap(), POLICY, "not flipped");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "");

    // A log in a directory that does not exist: the same.
    let out = cordon(&[
        "mode",
        "--policy",
        &policy,
        "db",
        "enforce",
        "--force",
        "--audit-log",
        s(&world.path("no/such/a.jsonl")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(world.policy()).unwrap(), POLICY, "not flipped");

    // Defaults: beside the policy for mode, in the CA directory for ca commands.
    cordon_ok(&["mode", "--policy", &policy, "db", "enforce", "--force"]);
    let beside = audited(&world.path("audit.jsonl"), &[]);
    assert_eq!(beside.len(), 1);
    assert!(beside[0]["preflight"].is_null(), "no --db, no preflight: {}", beside[0]);
    assert_eq!(beside[0]["forced"], true, "--force overrode the missing preflight: {}", beside[0]);
    cordon_ok(&["ca", "token", "--dir", s(&world.ca()), "--host", "h", "--service", "web"]);
    assert_eq!(audited(&world.ca().join("audit.jsonl"), &[])[0]["action"], "token_minted");

    // cordon.toml's audit_log and audit_format, through --config.
    let config = world.path("cordon.toml");
    std::fs::write(&config, "audit_log = \"from-config.jsonl\"\naudit_format = \"ocsf\"\n").unwrap();
    cordon_ok(&["mode", "--policy", &policy, "db", "learn", "--config", s(&config)]);
    let line = std::fs::read_to_string(world.path("from-config.jsonl")).unwrap();
    assert!(line.contains("\"class_uid\":6003"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_enrolment_is_audited_by_the_signing_service() {
    let world = World::new();
    let log = world.path("signer-audit.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["ca", "serve", "--dir", s(&world.ca()), "--listen", "127.0.0.1:0", "--audit-log", s(&log)])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();

    let token = world.path("forged.token");
    support::write_secret(&token, "cordon-join-forged\n");
    let host = world.path("hosts/intruder");
    std::fs::create_dir_all(host.join("tls")).unwrap();
    std::fs::copy(world.ca().join("ca.pem"), host.join("bundle.pem")).unwrap();
    let renewer = Renewer::new(
        IssuerSettings::parse(&format!("https://{addr}"), Some(token)).unwrap(),
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        host.join("bundle.pem"),
        host.join("tls"),
        "intruder".into(),
        vec![ServiceName::new("db").unwrap()],
    );
    let refused = renewer.enrol_missing(Duration::from_secs(10)).await;
    let _ = child.kill();
    let _ = child.wait();
    let reason = match refused {
        Err(IssuerError::Refused { reason, .. }) => reason,
        other => panic!("not refused: {other:?}"),
    };
    let records = audited(&log, &["--service", "db"]);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!((r["action"].as_str(), r["status"].as_str()), (Some("enrolment_refused"), Some("refused")));
    assert_eq!(r["host"], "intruder");
    assert_eq!(r["reason"], reason.as_str());
    assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
}

#[test]
fn a_prune_of_the_store_is_audited() {
    let Some(pg) = Postgres::start("a_prune_of_the_store_is_audited") else { return };
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    ledger(&db);
    cordon_ok(&["ship", "--db", s(&db), "--to", &url]);
    let log: PathBuf = dir.path().join("audit.jsonl");
    cordon_ok(&["store", "prune", "--db", &url, "--older-than", "15d", "--audit-log", s(&log)]);
    let records = audited(&log, &[]);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r["action"].as_str(), r["status"].as_str()), (Some("store_prune"), Some("success")));
    assert_eq!(r["older_than_secs"], 15 * 86_400);
    assert!(r["store"].as_str().unwrap().starts_with("postgres://"), "{r}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains(support::postgres::PASSWORD));

    // A prune that fails is audited as a failure, then reported.
    let bad = url.replace(&pg.port.to_string(), &dead_port().to_string());
    let out = cordon(&["store", "prune", "--db", &bad, "--older-than", "15d", "--audit-log", s(&log)]);
    assert_eq!(out.status.code(), Some(2));
    let records = audited(&log, &[]);
    assert_eq!(records[1]["status"], "failure");
    assert!(records[1]["error"].is_string());
}
