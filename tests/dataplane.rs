//! End to end on loopback: app -> outbound -> mTLS -> inbound -> echo app, real sockets, real TLS
//! with certificates from our CA, real discovery files, real policy files, real ledgers.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use cordon::agent::Agent;
use cordon::policy::Identified;
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);

async fn wait_mode(agent: &Agent, service: &str, mode: &str) {
    eventually(&format!("{service} in {mode} mode"), 3 * SECOND, || async {
        agent.status()["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == service && s["mode"] == mode)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_mode_passes_every_caller_and_records_it() {
    let world = World::new();
    let (db, app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;

    let reply = round_trip(web.bound().upstream("db").unwrap(), b"SELECT 1").await.unwrap();
    assert_eq!(reply, b"SELECT 1");
    assert_eq!(app.accepted(), 1);

    let m = db.metrics_text();
    assert_eq!(
        metric(
            &m,
            "cordon_verdicts_total",
            &[("source", "web"), ("mode", "learn"), ("outcome", "would-deny")]
        ),
        1.0,
        "no intention yet: learn passes it and counts what enforce would do\n{m}"
    );
    web.shutdown().await;
    db.shutdown().await;

    let callers = cordon::ledger::callers_into(&world.ledger("db-host"), "db", None).unwrap();
    assert_eq!(callers.len(), 1, "{callers:?}");
    assert_eq!((callers[0].source.as_str(), callers[0].identified), ("web", Identified::Mtls));
    assert_eq!(callers[0].connections, 1);
    let log = world.decision_log("db-host");
    assert!(
        log.iter().any(|r| r["source"] == "web" && r["outcome"] == "would-deny"),
        "a would-deny record for web -> db: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_passes_the_allowed_caller_and_refuses_the_other_before_the_app_sees_it() {
    let world = World::new();
    world.write_policy(
        "[modes]\n\"*\" = \"learn\"\ndb = \"enforce\"\n\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    );
    let (db, app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let batch = caller_host(&world, "batch").await;

    assert_eq!(round_trip(web.bound().upstream("db").unwrap(), b"ok?").await.unwrap(), b"ok?");
    let refused = round_trip(batch.bound().upstream("db").unwrap(), b"let me in").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "batch must get nothing back");
    assert_eq!(app.accepted(), 1, "the app never sees the refused caller");

    let m = db.metrics_text();
    assert_eq!(
        metric(&m, "cordon_verdicts_total", &[("source", "batch"), ("outcome", "denied")]),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "cordon_verdicts_total", &[("source", "web"), ("outcome", "allowed")]), 1.0, "{m}");
    eventually("the denial in the decision log", 3 * SECOND, || async {
        world.decision_log("db-host").iter().any(|r| {
            r["source"] == "batch"
                && r["destination"] == "db"
                && r["outcome"] == "denied"
                && r["mode"] == "enforce"
        })
    })
    .await;
    for a in [web, batch, db] {
        a.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_named_by_address_in_learn_and_refused_in_enforce() {
    let world = World::new();
    let (db, app) = db_host(&world).await;
    let legacy: IpAddr = "127.0.0.2".parse().unwrap();
    let stranger: IpAddr = "127.0.0.3".parse().unwrap();
    // A host that runs two services: a plaintext caller from there could be either.
    let shared: IpAddr = "127.0.0.4".parse().unwrap();
    world.write_discovery("legacy", &[(legacy, 8080, None)]);
    world.write_discovery("batch", &[(shared, 8081, None)]);
    world.write_discovery("reports", &[(shared, 8082, None)]);
    let inbound = db.bound().service("db").unwrap();
    eventually("discovery knows db, legacy, batch and reports", 3 * SECOND, || async {
        db.status()["discovery"]["services"] == 4
    })
    .await;
    round_trip_from(legacy, inbound, b"ping").await.unwrap();
    assert_eq!(round_trip_from(stranger, inbound, b"hi").await.unwrap(), b"hi");
    assert_eq!(round_trip_from(shared, inbound, b"hi").await.unwrap(), b"hi");

    world.write_policy("[modes]\ndb = \"enforce\"\n[[intention]]\nsource = \"*\"\ndestination = \"db\"\naction = \"allow\"\n");
    wait_mode(&db, "db", "enforce").await;
    let before = app.accepted();
    let refused = round_trip_from(legacy, inbound, b"plain").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "plaintext must be refused in enforce");
    assert_eq!(app.accepted(), before, "the app never sees refused plaintext");
    let m = db.metrics_text();
    assert!(
        metric(&m, "cordon_handshake_failures_total", &[("reason", "plaintext_in_enforce")]) >= 1.0,
        "{m}"
    );
    db.shutdown().await;

    let callers = cordon::ledger::callers_into(&world.ledger("db-host"), "db", None).unwrap();
    let find = |name: &str| callers.iter().find(|c| c.source == name).map(|c| c.identified);
    assert_eq!(find("legacy"), Some(Identified::PlaintextIp), "{callers:?}");
    assert_eq!(find("ip:127.0.0.3"), Some(Identified::Unknown), "{callers:?}");
    assert_eq!(find("ip:127.0.0.4"), Some(Identified::Unknown), "two services there: {callers:?}");
    assert_eq!(find("batch").or(find("reports")), None, "never named after one of them: {callers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_fails_over_to_a_live_one() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let live = db.bound().service("db").unwrap().port();
    let dead = dead_port().await;
    world.write_discovery("db", &[(localhost(), dead, Some(dead)), (localhost(), dead, Some(live))]);
    let web = caller_host(&world, "web").await;
    for i in 0..4u8 {
        assert_eq!(round_trip(web.bound().upstream("db").unwrap(), &[i]).await.unwrap(), [i]);
        // The outbound counts a connection closed once its hop is back in the pool.
        eventually("web's connection closed", 3 * SECOND, || async {
            metric(&web.metrics_text(), "cordon_connections_open", &[]) == 0.0
        })
        .await;
    }
    let m = web.metrics_text();
    assert!(metric(&m, "cordon_backend_failovers_total", &[("service", "db")]) >= 1.0, "{m}");
    // Four connections to one service, one after another: the first makes the hop to the live
    // backend, the later ones ride on it.
    assert_eq!(metric(&m, "cordon_hop_reused_total", &[("service", "db")]), 3.0, "{m}");
    assert!(metric(&m, "cordon_backend_connect_failures_total", &[("service", "db")]) >= 1.0, "{m}");

    // With no reachable backend at all, the local connection is refused, with a count.
    world.write_discovery("db", &[(localhost(), dead, Some(dead))]);
    eventually("web refuses when no backend is reachable", 3 * SECOND, || async {
        round_trip(web.bound().upstream("db").unwrap(), b"x").await.map(|r| r.is_empty()).unwrap_or(true)
    })
    .await;
    assert!(metric(&web.metrics_text(), "cordon_no_backend_total", &[("service", "db")]) >= 1.0);
    web.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_intact_with_half_close() {
    const SIZE: usize = 64 << 20;
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let stream = TcpStream::connect(web.bound().upstream("db").unwrap()).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut block = vec![0u8; 1 << 16];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..SIZE / block.len() {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            hash.update(&block);
            w.write_all(&block).await.unwrap();
        }
        w.shutdown().await.unwrap();
        hash.finalize()
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n;
    }
    let sent = writer.await.unwrap();
    assert_eq!(total, SIZE, "the whole echo came back after the client's half-close");
    assert_eq!(hash.finalize(), sent, "bytes arrived intact");
    let m = db.metrics_text();
    assert_eq!(
        metric(&m, "cordon_bytes_total", &[("direction", "inbound"), ("flow", "to_destination")]),
        SIZE as f64
    );
    web.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_an_open_connection() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();
    let mut conn = TcpStream::connect(upstream).await.unwrap();
    conn.write_all(b"a").await.unwrap();
    let mut one = [0u8; 1];
    conn.read_exact(&mut one).await.unwrap();

    let stopping = tokio::spawn(web.shutdown());
    eventually("new connections refused once draining", 3 * SECOND, || async {
        TcpStream::connect(upstream).await.is_err()
    })
    .await;
    conn.write_all(b"b").await.unwrap();
    conn.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"b", "the open connection still works while draining");
    assert!(!stopping.is_finished(), "shutdown waits for the open connection");
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    tokio::time::timeout(5 * SECOND, stopping).await.expect("drained once the connection closed").unwrap();
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_to_enforce_closes_open_connections_of_denied_callers() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let batch = caller_host(&world, "batch").await;
    let open = |agent: &Agent| {
        let addr = agent.bound().upstream("db").unwrap();
        async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.unwrap();
            c
        }
    };
    let mut web_conn = open(&web).await;
    let mut batch_conn = open(&batch).await;

    world.write_policy(
        "# flipped by the operator\n[modes]\ndb = \"enforce\"\n\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(3 * SECOND, batch_conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "batch's open connection is closed by the flip");
    web_conn.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    web_conn.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y", "the allowed caller's connection stays open");
    assert_eq!(metric(&db.metrics_text(), "cordon_policy_closed_total", &[("service", "db")]), 1.0);
    drop(web_conn);
    for a in [web, batch, db] {
        a.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_on_disk_is_picked_up_without_dropping_connections() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let expiry = |a: &Agent| a.status()["identities"][0]["not_after"].as_str().unwrap().to_string();
    let before = expiry(&db);
    let mut open = TcpStream::connect(web.bound().upstream("db").unwrap()).await.unwrap();
    open.write_all(b"1").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();

    world.issue_for_days("db", 2);
    eventually("db serves the re-issued certificate", 5 * SECOND, || async { expiry(&db) != before }).await;
    open.write_all(b"2").await.unwrap();
    open.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"2", "the open connection survived the rotation");
    assert_eq!(round_trip(web.bound().upstream("db").unwrap(), b"new").await.unwrap(), b"new");

    // A corrupt file on disk: refused, the agent keeps serving with the last good certificate.
    let rotated = expiry(&db);
    std::fs::write(world.path("tls/db/cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(SECOND).await;
    assert_eq!(expiry(&db), rotated);
    assert_eq!(round_trip(web.bound().upstream("db").unwrap(), b"still").await.unwrap(), b"still");
    drop(open);
    web.shutdown().await;
    db.shutdown().await;
}
