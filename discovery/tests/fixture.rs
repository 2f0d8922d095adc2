//! The checked-in Synapse directory reads as the services a user would expect.

mod common;

use std::net::IpAddr;

use common::fixture_dir;
use cordon_discovery::{MTLS_PORT_LABEL, load_dir};
use serde_json::Value;

#[test]
fn fixture_directory_snapshot() {
    let dir = fixture_dir();
    let mut json_files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    json_files.sort();
    assert_eq!(
        json_files,
        ["api.json", "batch-nightly.json", "cache.json", "db.json", "search.json", "web.json"],
        "fixture files in {}",
        dir.display()
    );
    assert!(dir.join(".web.json.tmp").exists(), "the half-written temp file is part of the fixture");

    let snap = load_dir(&dir).unwrap();
    assert_eq!(snap.problems(), &[], "fixture should read cleanly");
    assert_eq!(snap.generation(), 1);
    let names: Vec<&str> = snap.services().map(|(name, _)| name).collect();
    assert_eq!(names, ["api", "batch-nightly", "cache", "db", "search", "web"]);

    // web: two backends migrated (label as a string), one still plaintext; the half-written
    // temp file did not add or break anything.
    let web = snap.backends("web");
    assert_eq!(web.len(), 3);
    assert_eq!(web.iter().map(|b| b.mtls_port).collect::<Vec<_>>(), [Some(14000), Some(14000), None]);
    assert_eq!(web[2].dial_port(), 8080);
    assert_eq!(web[0].name.as_deref(), Some("ip-10-20-1-11:8080"));
    assert_eq!(web[0].id, Some(Value::from(1)));
    assert_eq!(web[0].weight, None);
    assert_eq!(web[0].labels.get("az").map(String::as_str), Some("us-east-1a"));

    // api: label as a JSON number, weights, string ids, non-string labels kept as text.
    let api = snap.backends("api");
    assert_eq!(api.iter().map(|b| b.mtls_port).collect::<Vec<_>>(), [Some(14001), Some(14001), None]);
    assert_eq!(api.iter().map(|b| b.weight).collect::<Vec<_>>(), [Some(100), Some(100), Some(50)]);
    assert_eq!(api[0].id, Some(Value::from("0000000017")));
    assert_eq!(api[0].labels.get(MTLS_PORT_LABEL).map(String::as_str), Some("14001"));
    assert_eq!(api[2].labels.get("canary").map(String::as_str), Some("true"));
    assert_eq!(
        api[2].extra.get("haproxy_server_options"),
        Some(&Value::from("check inter 2s rise 2 fall 3 backup"))
    );

    // cache: every optional field null, so plaintext with no labels.
    let cache = snap.backends("cache");
    assert_eq!(cache.len(), 2);
    assert!(cache.iter().all(|b| b.mtls_port.is_none() && b.labels.is_empty() && b.id.is_none()));

    // search: one backend by host name (no IP), a null label dropped.
    let search = snap.backends("search");
    assert_eq!(search[1].host, "search-2.us-east-1.internal");
    assert_eq!(search[1].ip(), None);
    assert!(!search[1].labels.contains_key("team"));

    // batch-nightly: keys Synapse does not define are kept, absent optional keys are None.
    let batch = snap.backends("batch-nightly");
    assert_eq!(batch.len(), 1);
    assert_eq!((batch[0].mtls_port, batch[0].weight, batch[0].id.clone()), (Some(14004), None, None));
    assert_eq!(batch[0].extra.get("registered_at"), Some(&Value::from("2026-11-22T02:00:03Z")));

    assert_eq!(snap.backends("unknown"), &[]);
    assert!(!snap.contains("unknown"));
}

#[test]
fn plaintext_callers_are_named_by_ip() {
    let snap = load_dir(&fixture_dir()).unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(snap.services_at(ip("10.20.1.13")), ["web"]);
    // One host serving two services gives both, sorted.
    assert_eq!(snap.services_at(ip("10.20.3.14")), ["cache", "search"]);
    assert_eq!(snap.service_at(ip("10.20.1.13")), Some("web"), "one service: its name");
    assert_eq!(snap.service_at(ip("10.20.3.14")), None, "two services: ambiguous, no name");
    // A caller seen on a dual-stack socket as an IPv4-mapped address is the same host.
    assert_eq!(snap.services_at(ip("::ffff:10.20.5.10")), ["db"]);
    // Unknown addresses and host-name backends give nothing.
    assert!(snap.services_at(ip("10.99.0.1")).is_empty());
    assert!(snap.services_at(ip("127.0.0.1")).is_empty());
}
