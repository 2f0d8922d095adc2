//! Decision records for a SIEM: `decision_log_format = "ocsf"` writes each denial and
//! would-deny of a real agent as an OCSF 1.5.0 Network Activity event, checked by a validator
//! someone else wrote (ocsf-emitter, through scripts/ocsf_check.py).

mod support;

use std::net::IpAddr;
use std::path::Path;

use cordon::agent::Agent;
use cordon::agent::config::Config;
use support::siem::ocsf_check;
use support::*;

/// A host's config from [`World::config`], with `log` in place of its `decision_log` line.
pub fn config_with_log(
    world: &World,
    host: &str,
    services: &[(&str, std::net::SocketAddr)],
    upstreams: &[(&str, &str)],
    log: &str,
) -> Config {
    world.config(host, services, upstreams);
    let path = world.path(&format!("{host}.toml"));
    let text: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| if l.starts_with("decision_log = ") { log.to_string() } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, &text).unwrap();
    Config::parse(&text, &path).unwrap()
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_and_a_would_deny_are_ocsf_network_activity_events() {
    let test = "a_refusal_and_a_would_deny_are_ocsf_network_activity_events";
    let world = World::new();
    // db enforces (only web may call it); cache still learns.
    world.write_policy(
        "[modes]\n\"*\" = \"learn\"\ndb = \"enforce\"\n\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    );
    let (db_app, cache_app) = (EchoApp::start().await, EchoApp::start().await);
    world.issue("db");
    world.issue("cache");
    let log = world.path("decisions-db-host.ocsf.jsonl");
    let db = Agent::start(config_with_log(
        &world,
        "db-host",
        &[("db", db_app.addr), ("cache", cache_app.addr)],
        &[],
        &format!("decision_log = \"{}\"\ndecision_log_format = \"ocsf\"", log.display()),
    ))
    .await
    .unwrap();
    let (db_in, cache_in) = (db.bound().service("db").unwrap(), db.bound().service("cache").unwrap());
    world.write_discovery("db", &[(localhost(), db_app.addr.port(), Some(db_in.port()))]);
    world.write_discovery("cache", &[(localhost(), cache_app.addr.port(), Some(cache_in.port()))]);
    world.issue("batch");
    let batch =
        Agent::start(world.config("batch-host", &[], &[("db", "batch"), ("cache", "batch")])).await.unwrap();

    // The lateral move: batch tries db and is refused; it reaches cache, which only learns.
    let refused = round_trip(batch.bound().upstream("db").unwrap(), b"let me in").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "batch gets nothing from db");
    assert_eq!(round_trip(batch.bound().upstream("cache").unwrap(), b"hi").await.unwrap(), b"hi");
    // And a plaintext caller from another address.
    let stranger: IpAddr = "127.0.0.9".parse().unwrap();
    let plain = round_trip_from(stranger, db_in, b"plain").await;
    assert!(plain.map(|r| r.is_empty()).unwrap_or(true));
    assert_eq!(db_app.accepted(), 0, "db's app never sees a refused caller");
    batch.shutdown().await;
    db.shutdown().await;

    let all = records(&log);
    let find = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        all.iter().find(|r| f(r)).cloned().unwrap_or_else(|| panic!("no {what} record in {all:#?}"))
    };
    let spiffe = |s: &str| format!("spiffe://{TRUST_DOMAIN}/service/{s}");
    let denial =
        find("mTLS denial", &|r| r["unmapped"]["outcome"] == "denied" && r["unmapped"]["source"] == "batch");
    assert_eq!((denial["class_uid"].as_u64(), denial["category_uid"].as_u64()), (Some(4001), Some(4)));
    assert_eq!((denial["activity_id"].as_u64(), denial["type_uid"].as_u64()), (Some(5), Some(400105)));
    assert_eq!(
        (denial["disposition"].as_str(), denial["disposition_id"].as_u64()),
        (Some("Blocked"), Some(2))
    );
    assert_eq!((denial["action"].as_str(), denial["action_id"].as_u64()), (Some("Denied"), Some(2)));
    assert_eq!(denial["src_endpoint"]["uid"], spiffe("batch"));
    assert_eq!(denial["src_endpoint"]["ip"], "127.0.0.1");
    assert_eq!(denial["dst_endpoint"]["uid"], spiffe("db"));
    assert_eq!(denial["dst_endpoint"]["port"].as_u64(), Some(u64::from(db_in.port())));
    assert_eq!(denial["dst_endpoint"]["hostname"], "db-host");
    assert_eq!(denial["firewall_rule"]["name"], "no matching intention (default deny)");
    assert_eq!(denial["status_code"], "no-intention");
    assert_eq!(denial["tls"]["version"], "1.3");
    assert_eq!(denial["tls"]["sans"][0]["name"], spiffe("batch"));
    let cert = &denial["tls"]["certificate"];
    assert!(cert["serial_number"].as_str().is_some_and(|s| !s.is_empty()), "{cert}");
    assert!(cert["expiration_time"].as_u64() > cert["created_time"].as_u64(), "{cert}");
    assert_eq!(denial["connection_info"]["protocol_name"], "tcp");
    assert_eq!(denial["metadata"]["product"]["name"], "cordon");
    assert_eq!(denial["policy"]["is_applied"], true);

    let would = find("would-deny", &|r| r["unmapped"]["outcome"] == "would-deny");
    assert_eq!((would["disposition"].as_str(), would["action"].as_str()), (Some("Allowed"), Some("Allowed")));
    assert_eq!(would["unmapped"]["verdict"], "deny", "the would-be verdict is kept");
    assert_eq!(would["policy"]["is_applied"], false);
    assert_eq!(would["dst_endpoint"]["uid"], spiffe("cache"));
    assert_eq!(would["dst_endpoint"]["port"].as_u64(), Some(u64::from(cache_in.port())));

    let plain = find("plaintext denial", &|r| r["src_endpoint"]["ip"] == "127.0.0.9");
    assert_eq!(plain["disposition"], "Blocked");
    assert_eq!(plain["status_code"], "plaintext");
    assert!(plain.get("tls").is_none() && plain["src_endpoint"].get("uid").is_none(), "{plain}");

    if let Some(report) = ocsf_check(test, &log) {
        eprintln!("{report}");
        assert!(report.starts_with(&format!("{} records valid", all.len())), "{report}");
    }
}
