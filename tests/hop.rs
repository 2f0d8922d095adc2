//! The reusable hop between two cordon agents, end to end on loopback: app connections ride one
//! mTLS connection one after another, each still decided, recorded and counted; a hop the server
//! closed is not used again; with reuse off, each app connection makes (and resumes) its own.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cordon::agent::Agent;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECOND: Duration = Duration::from_secs(1);

fn inbound(agent: &Agent, name: &str) -> f64 {
    metric(&agent.metrics_text(), name, &[("direction", "inbound")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_connections_ride_one_mtls_connection_and_each_is_decided_and_recorded() {
    let world = World::new();
    let (db, app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();

    for i in 0..20u8 {
        let msg = vec![i; 1 + i as usize * 1000];
        assert_eq!(round_trip(upstream, &msg).await.unwrap(), msg, "connection {i}");
        // The outbound counts a connection closed once its hop is back in the pool.
        eventually("web's connection closed", 3 * SECOND, || async {
            metric(&web.metrics_text(), "cordon_connections_open", &[]) == 0.0
        })
        .await;
    }
    assert_eq!(app.accepted(), 20, "the app sees every connection");
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 1.0, "one handshake for all twenty");
    assert_eq!(inbound(&db, "cordon_hop_reused_total"), 19.0);
    assert_eq!(inbound(&db, "cordon_connections_opened_total"), 20.0);
    eventually("every connection closed on the db side", 3 * SECOND, || async {
        inbound(&db, "cordon_connections_open") == 0.0
    })
    .await;

    // A refusal is decided per app connection, on the hop too; it closes the hop, and the next
    // allowed connection makes a new one. The flip itself closes the idle hop of a caller the new
    // policy refuses, so the refused connection comes on a second hop and `back` on a third.
    world.write_policy("[modes]\ndb = \"enforce\"\n");
    eventually("db enforces", 3 * SECOND, || async { db.status()["services"][0]["mode"] == "enforce" }).await;
    let refused = round_trip(upstream, b"let me in").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "web is refused once db enforces");
    assert_eq!(app.accepted(), 20, "the app never sees the refused connection");
    world.write_policy("[modes]\ndb = \"learn\"\n");
    eventually("db learns again", 3 * SECOND, || async { db.status()["services"][0]["mode"] == "learn" })
        .await;
    assert_eq!(round_trip(upstream, b"back").await.unwrap(), b"back");
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 3.0, "a new hop after the refusal");

    web.shutdown().await;
    db.shutdown().await;
    let callers = cordon::ledger::callers_into(&world.ledger("db-host"), "db", None).unwrap();
    let web_calls: u64 = callers.iter().filter(|c| c.source == "web").map(|c| c.connections).sum();
    assert_eq!(web_calls, 22, "twenty, the refused one and the last: {callers:?}");
}

/// An app that speaks first: a greeting on accept, then an echo.
async fn greeting_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 db ready\r\n").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_speaks_first_is_heard_on_a_new_and_on_a_reused_hop() {
    let world = World::new();
    let app = greeting_app().await;
    world.issue("db");
    let db = Agent::start(world.config("db-host", &[("db", app)], &[])).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.port(), Some(port))]);
    let web = caller_host(&world, "web").await;
    for attempt in 0..2 {
        let mut c = TcpStream::connect(web.bound().upstream("db").unwrap()).await.unwrap();
        let mut greeting = [0u8; 14];
        tokio::time::timeout(5 * SECOND, c.read_exact(&mut greeting)).await.unwrap().unwrap();
        assert_eq!(&greeting, b"220 db ready\r\n", "attempt {attempt}: the greeting arrives unasked");
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
    }
    assert_eq!(inbound(&db, "cordon_hop_reused_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_the_server_closed_is_left_and_the_next_connection_loses_nothing() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();
    assert_eq!(round_trip(upstream, b"one").await.unwrap(), b"one");

    // The db agent restarts on the same port: its idle hops are closed while web keeps one.
    let listen = db.bound().service("db").unwrap();
    db.shutdown().await;
    let mut config = world.config("db-host", &[("db", _app.addr)], &[]);
    config.services[0].listen = listen;
    let db = Agent::start(config).await.unwrap();

    assert_eq!(round_trip(upstream, b"two").await.unwrap(), b"two", "the dead hop is not used");
    let m = web.metrics_text();
    assert_eq!(metric(&m, "cordon_hop_reused_total", &[]), 0.0, "{m}");
    assert_eq!(metric(&m, "cordon_backend_connect_failures_total", &[]), 0.0, "{m}");
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_each_app_connection_has_its_own_mtls_connection_and_resumes() {
    let world = World::new();
    let (db, app) = db_host(&world).await;
    world.issue("web");
    let web =
        Agent::start(world.config_with("web-host", &[], &[("db", "web")], "reuse_connections = false\n"))
            .await
            .unwrap();
    for i in 0..4u8 {
        assert_eq!(round_trip(web.bound().upstream("db").unwrap(), &[i]).await.unwrap(), [i]);
    }
    assert_eq!(app.accepted(), 4);
    let m = web.metrics_text();
    assert_eq!(metric(&m, "cordon_hop_reused_total", &[]), 0.0, "{m}");
    assert_eq!(metric(&m, "cordon_tls_handshakes_total", &[]), 4.0, "{m}");
    assert_eq!(metric(&m, "cordon_tls_handshakes_total", &[("kind", "resumed")]), 3.0, "{m}");
    assert_eq!(inbound(&db, "cordon_connections_opened_total"), 4.0);
}
