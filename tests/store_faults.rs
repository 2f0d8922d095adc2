//! The fleet store's spool when its disk is full: a real tmpfs filled to the last byte under a
//! running agent that ships to a real PostgreSQL. The data plane carries on, the failed writes
//! are counted and named, and once space returns everything recorded reaches the store. Needs
//! root for the tmpfs and PostgreSQL; skipped with a message otherwise.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use cordon::store::{Db, FleetSettings, ShipTo, StoreUrl};
use support::postgres::Postgres;
use support::tmpfs::Tmpfs;
use support::{eventually, localhost, metric, round_trip_from};

/// One plaintext round trip to `addr` from each of `count` loopback addresses `127.0.<net>.N`
/// (so as many ledger rows); how many came back.
async fn from_many(addr: SocketAddr, net: u8, count: u8) -> u64 {
    let mut ok = 0;
    for i in 1..=count {
        let source = IpAddr::from([127, 0, net, i]);
        if round_trip_from(source, addr, b"x").await.is_ok_and(|r| r == b"x") {
            ok += 1;
        }
    }
    ok
}

/// Connections in the store (0 while it cannot be read).
async fn in_store(url: String) -> u64 {
    tokio::task::spawn_blocking(move || {
        let db = Db::from_str(&url).unwrap();
        db.edge_totals(None).map(|edges| edges.iter().map(|e| e.connections).sum()).unwrap_or(0)
    })
    .await
    .unwrap()
}

async fn graph(db: String) -> String {
    tokio::task::spawn_blocking(move || support::cordon_ok(&["graph", "--format", "json", "--db", &db]))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_spool_disk_keeps_traffic_flowing_is_counted_and_loses_nothing_once_freed() {
    let name = "a_full_spool_disk_keeps_traffic_flowing_is_counted_and_loses_nothing_once_freed";
    let Some(pg) = Postgres::start(name) else { return };
    let Some(disk) = Tmpfs::mount(name, "1m") else { return };
    let url = pg.url("postgres");
    let world = support::World::new();
    let app = support::EchoApp::start().await;
    world.issue("db");
    let mut config = world.config("db-host", &[("db", app.addr)], &[]);
    config.state_dir = disk.path().join("state");
    config.fleet = Some(FleetSettings {
        to: ShipTo::Store(StoreUrl::parse(&url).unwrap()),
        ship_interval: Duration::from_millis(50),
        batch_rows: 50,
    });
    let db = cordon::agent::Agent::start(config).await.unwrap();
    let inbound = SocketAddr::new(localhost(), db.bound().service("db").unwrap().port());
    let ledger: PathBuf = disk.path().join("state/ledger.db");
    let status = || db.status();

    assert_eq!(from_many(inbound, 1, 100).await, 100);
    eventually("the first connections are shipped", Duration::from_secs(30), || {
        let url = url.clone();
        async move { in_store(url).await == 100 }
    })
    .await;

    // The store goes away; more connections wait in the ledger; then the ledger's disk fills.
    pg.kill();
    assert_eq!(from_many(inbound, 2, 100).await, 100);
    eventually("the next connections wait in the ledger", Duration::from_secs(30), || async {
        status()["fleet_store"]["rows_waiting"].as_u64() >= Some(100)
    })
    .await;
    let filler = disk.fill();
    pg.start_server();

    // With the disk full, every connection still goes through, and the failure is counted and
    // named on /metrics and /status.
    assert_eq!(from_many(inbound, 3, 100).await, 100, "the data plane is untouched");
    assert_eq!(from_many(inbound, 4, 100).await, 100, "the data plane is untouched");
    eventually("the failed ledger writes show", Duration::from_secs(30), || async {
        metric(&db.metrics_text(), "cordon_ledger_write_errors_total", &[]) > 0.0
    })
    .await;
    let st = status();
    let why = st["ledger"]["last_write_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("database or disk is full"), "the cause is named: {st}");
    // The shipper sends what waited in the ledger but cannot record that it did: it says why, and
    // sends those rows again later, which changes nothing in the store.
    eventually("the shipper names the full disk", Duration::from_secs(30), || async {
        status()["fleet_store"]["last_error"].as_str().is_some_and(|e| e.contains("database or disk is full"))
    })
    .await;

    // Space returns: recording resumes and every connection made reaches the store, once.
    std::fs::remove_file(&filler).unwrap();
    eventually("everything is recorded and shipped", Duration::from_secs(90), || {
        let url = url.clone();
        async move {
            let st = status();
            st["ledger"]["last_write_error"].is_null()
                && st["fleet_store"]["rows_waiting"].as_u64() == Some(0)
                && in_store(url).await == 400
        }
    })
    .await;
    let st = status();
    assert_eq!(st["ledger"]["events_dropped"].as_u64(), Some(0), "{st}");
    assert_eq!(graph(url.clone()).await, graph(ledger.display().to_string()).await);
    assert_eq!(from_many(inbound, 5, 10).await, 10);
    eventually("recording goes on", Duration::from_secs(30), || {
        let url = url.clone();
        async move { in_store(url).await == 410 }
    })
    .await;
    db.shutdown().await;
}
