//! The hop as HTTP/2 (`hop_protocol = "h2"`), end to end on loopback: app connections ride one
//! mTLS connection at the same time, each decided, recorded and counted on its own, a refusal
//! costs only its own stream, a server that speaks first is heard, and a connection the inbound
//! closes at the instant the outbound starts a stream on it loses no byte.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cordon::agent::Agent;
use support::gate::Gate;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECOND: Duration = Duration::from_secs(1);
const H2: &str = "hop_protocol = \"h2\"\n";

fn inbound(agent: &Agent, name: &str) -> f64 {
    metric(&agent.metrics_text(), name, &[("direction", "inbound")])
}

async fn h2_caller(world: &World, identity: &str) -> Agent {
    world.issue(identity);
    Agent::start(world.config_with(&format!("{identity}-host"), &[], &[("db", identity)], H2)).await.unwrap()
}

/// An app connection that has sent `msg` and read its echo, still open.
async fn echoed(upstream: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(upstream).await.unwrap();
    c.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(5 * SECOND, c.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, msg);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_connections_ride_one_http2_connection_at_once_and_each_is_decided_and_recorded() {
    let world = World::new();
    let (db, app) = db_host(&world).await;
    let web = h2_caller(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();

    // Twenty app connections open at the same time, each with its own bytes.
    let mut open = Vec::new();
    for i in 0..20u8 {
        open.push(echoed(upstream, &vec![i; 1 + i as usize * 1000]).await);
    }
    assert_eq!(app.accepted(), 20, "the app sees every connection");
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 1.0, "one handshake for all twenty");
    assert_eq!(inbound(&db, "cordon_hop_reused_total"), 19.0);
    assert_eq!(inbound(&db, "cordon_connections_open"), 20.0, "all twenty open at once");
    // Each ends on its own; the others go on.
    for (i, mut c) in open.into_iter().enumerate() {
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "connection {i} ends cleanly");
    }
    eventually("every connection closed on the db side", 3 * SECOND, || async {
        inbound(&db, "cordon_connections_open") == 0.0
    })
    .await;
    assert_eq!(round_trip(upstream, b"after").await.unwrap(), b"after");
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 1.0, "the connection outlives its streams");

    // The flip closes the connection of a caller the new policy refuses; the refused app
    // connection comes on a second one and is answered 403, which costs only its stream: the
    // next allowed connection rides that same second connection.
    world.write_policy("[modes]\ndb = \"enforce\"\n");
    eventually("db enforces", 3 * SECOND, || async { db.status()["services"][0]["mode"] == "enforce" }).await;
    let refused = round_trip(upstream, b"let me in").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "web is refused once db enforces");
    assert_eq!(app.accepted(), 21, "the app never sees the refused connection");
    world.write_policy("[modes]\ndb = \"learn\"\n");
    eventually("db learns again", 3 * SECOND, || async { db.status()["services"][0]["mode"] == "learn" })
        .await;
    assert_eq!(round_trip(upstream, b"back").await.unwrap(), b"back");
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 2.0, "a refusal does not close the connection");
    let m = db.metrics_text();
    assert_eq!(metric(&m, "cordon_verdicts_total", &[("source", "web"), ("outcome", "denied")]), 1.0, "{m}");

    web.shutdown().await;
    db.shutdown().await;
    let callers = cordon::ledger::callers_into(&world.ledger("db-host"), "db", None).unwrap();
    let web_calls: u64 = callers.iter().filter(|c| c.source == "web").map(|c| c.connections).sum();
    assert_eq!(web_calls, 23, "twenty, `after`, the refused one and `back`: {callers:?}");
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
async fn a_server_that_speaks_first_is_heard_on_a_new_and_on_a_shared_connection() {
    let world = World::new();
    let app = greeting_app().await;
    world.issue("db");
    let db = Agent::start(world.config("db-host", &[("db", app)], &[])).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.port(), Some(port))]);
    let web = h2_caller(&world, "web").await;
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
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_hop_the_inbound_closes_as_the_outbound_uses_it_loses_no_byte() {
    let world = World::new();
    let app = EchoApp::start().await;
    world.issue("db");
    let old = Agent::start(world.config("db-host", &[("db", app.addr)], &[])).await.unwrap();
    let gate = Gate::start(old.bound().service("db").unwrap()).await;
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(gate.addr.port()))]);
    let web = h2_caller(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();
    assert_eq!(round_trip(upstream, b"one").await.unwrap(), b"one");
    eventually("the stream has ended", 3 * SECOND, || async {
        metric(&web.metrics_text(), "cordon_connections_open", &[]) == 0.0
    })
    .await;

    // The inbound closes the idle connection (its agent restarts); web does not hear of it yet.
    gate.hold.send_replace(true);
    let stopping = tokio::spawn(old.shutdown());
    eventually("the inbound has closed the connection", 5 * SECOND, || async {
        gate.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    let new = Agent::start(world.config("db-host-2", &[("db", app.addr)], &[])).await.unwrap();
    *gate.target.lock().unwrap() = new.bound().service("db").unwrap();

    // An app connection now starts on the closed connection: its CONNECT and first bytes reach
    // the closed inbound.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let before = gate.up.load(Ordering::SeqCst);
    let sent = payload.clone();
    let echo = tokio::spawn(async move { round_trip(upstream, &sent).await });
    eventually("web has started the stream on the closed connection", 5 * SECOND, || async {
        gate.up.load(Ordering::SeqCst) > before
    })
    .await;
    gate.hold.send_replace(false);

    let reply = echo.await.unwrap().expect("the app connection is not reset");
    assert_eq!(reply.len(), payload.len(), "every byte comes back");
    assert!(reply == payload, "every byte comes back in order");
    let m = web.metrics_text();
    assert_eq!(metric(&m, "cordon_hop_retried_total", &[]), 1.0, "it went out again: {m}");
    assert_eq!(metric(&m, "cordon_hop_reused_total", &[]), 0.0, "on a fresh connection: {m}");
    web.shutdown().await;
    stopping.await.unwrap();
    new.shutdown().await;
}
