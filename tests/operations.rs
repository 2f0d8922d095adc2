//! What an operator watches: `/metrics` scraped over HTTP during real traffic and parsed as
//! Prometheus text, dropped recorder events while the ledger is stalled, and `/status` following
//! a policy reload.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cordon::agent::Agent;
use support::*;

const SECOND: Duration = Duration::from_secs(1);

fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let text = admin_get(admin, "/metrics");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_traffic_drops_and_reloads() {
    let world = World::new();
    world.write_policy(
        "[modes]\n\"*\" = \"learn\"\ndb = \"enforce\"\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    );
    let app = EchoApp::start().await;
    world.issue("db");
    world.issue("cache");
    let db = Agent::start(world.config_with(
        "db-host",
        &[("db", app.addr), ("cache", app.addr)],
        &[],
        "recorder_capacity = 2\n",
    ))
    .await
    .unwrap();
    let (db_in, cache_in) = (db.bound().service("db").unwrap(), db.bound().service("cache").unwrap());
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(db_in.port()))]);
    let mut callers = Vec::new();
    for id in ["web", "batch"] {
        world.issue(id);
        callers.push(Agent::start(world.config(&format!("{id}-host"), &[], &[("db", id)])).await.unwrap());
    }
    let (web, batch) = (&callers[0], &callers[1]);
    let admin = db.bound().admin.unwrap();

    assert_eq!(round_trip(web.bound().upstream("db").unwrap(), b"a").await.unwrap(), b"a");
    assert!(
        round_trip(batch.bound().upstream("db").unwrap(), b"b").await.map(|r| r.is_empty()).unwrap_or(true)
    );
    let stranger: IpAddr = "127.0.0.3".parse().unwrap();
    assert!(round_trip_from(stranger, db_in, b"c").await.map(|r| r.is_empty()).unwrap_or(true));
    assert_eq!(round_trip_from(stranger, cache_in, b"d").await.unwrap(), b"d");

    let m = tokio::task::spawn_blocking(move || scrape(admin)).await.unwrap();
    let verdict = |dst, src, outcome| {
        value(&m, "cordon_verdicts_total", &[("destination", dst), ("source", src), ("outcome", outcome)])
    };
    assert_eq!(verdict("db", "web", "allowed"), 1.0);
    assert_eq!(verdict("db", "batch", "denied"), 1.0);
    assert_eq!(
        verdict("cache", "unknown", "would-deny"),
        1.0,
        "an unknown caller is labelled unknown, not by IP"
    );
    assert_eq!(value(&m, "cordon_handshake_failures_total", &[("reason", "plaintext_in_enforce")]), 1.0);
    assert!(
        value(&m, "cordon_connections_opened_total", &[("direction", "inbound"), ("service", "db")]) >= 3.0
    );
    assert!(value(&m, "cordon_certificate_expiry_seconds", &[("identity", "db")]) > 6.0 * 86_400.0);
    assert!(m.samples.iter().all(|s| !s.labels.values().any(|v| v.contains("127.0.0"))), "no per-IP labels");

    // Stall the ledger: another writer holds SQLite's write lock. Connections keep working, and the
    // recorder's full channel drops (and counts) events instead of blocking anyone.
    let ledger = rusqlite::Connection::open(world.ledger("db-host")).unwrap();
    ledger.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let upstream = web.bound().upstream("db").unwrap();
    let mut dropped = 0.0;
    for i in 0..200u32 {
        assert_eq!(round_trip(upstream, &i.to_be_bytes()).await.unwrap(), i.to_be_bytes(), "traffic flows");
        let m = tokio::task::spawn_blocking(move || scrape(admin)).await.unwrap();
        dropped = value(&m, "cordon_recorder_events_total", &[("state", "dropped")]);
        if dropped > 0.0 {
            break;
        }
    }
    assert!(dropped > 0.0, "a stalled recorder drops and counts events");
    ledger.execute_batch("ROLLBACK").unwrap();
    drop(ledger);

    // A policy reload shows in /status, and takes effect.
    let status = |admin| serde_json::from_str::<serde_json::Value>(&admin_get(admin, "/status")).unwrap();
    let before = tokio::task::spawn_blocking(move || status(admin)).await.unwrap();
    world.write_policy(
        "[modes]\n\"*\" = \"learn\"\ndb = \"enforce\"\n[[intention]]\nsource = \"*\"\ndestination = \"db\"\naction = \"allow\"\n",
    );
    eventually("/status shows the new policy", 3 * SECOND, || async {
        let now = tokio::task::spawn_blocking(move || status(admin)).await.unwrap();
        now["policy"]["version"] != before["policy"]["version"]
            && now["policy"]["reloads_ok"].as_u64() > before["policy"]["reloads_ok"].as_u64()
    })
    .await;
    assert_eq!(round_trip(batch.bound().upstream("db").unwrap(), b"now").await.unwrap(), b"now");
    for a in callers {
        a.shutdown().await;
    }
    db.shutdown().await;
}
