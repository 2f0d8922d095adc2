//! The hop as HTTP/2 (`hop_protocol = "h2"`), end to end on loopback: app connections ride one
//! mTLS connection at the same time, each decided, recorded and counted on its own, a refusal
//! costs only its own stream, a server that speaks first is heard, and a connection the inbound
//! closes at the instant the outbound starts a stream on it loses no byte.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cordon::agent::Agent;
use cordon::pki::HOP_ALPN_H2;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_speaks_first_is_heard_on_a_new_and_on_a_shared_connection() {
    let db = greeted_twice(&World::new(), H2).await;
    assert_eq!(inbound(&db, "cordon_hop_reused_total"), 1.0);
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_hop_the_inbound_closes_as_the_outbound_uses_it_loses_no_byte() {
    support::gate::a_hop_closed_as_it_is_reused_loses_no_byte(H2).await;
}

/// A stream on a raw HTTP/2 hop: the status it is answered with, and (when `200`) what comes
/// back for `msg`.
async fn ask(
    send: &h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    msg: &[u8],
) -> (u16, Vec<u8>) {
    let mut send = send.clone().ready().await.unwrap();
    let (response, mut out) = send.send_request(request, false).unwrap();
    // A stream refused at once may be closed before this goes out; its answer says so.
    let _ = out.send_data(Bytes::copy_from_slice(msg), true);
    let response = tokio::time::timeout(5 * SECOND, response).await.unwrap().unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut back = Vec::new();
    while let Some(chunk) = tokio::time::timeout(5 * SECOND, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        back.extend_from_slice(&chunk);
    }
    (status, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_a_connect_to_this_service_is_refused_and_the_others_go_on() {
    let world = World::new();
    let (db, app) = db_host(&world).await;
    let tls = raw_hop(&world, db.bound().service("db").unwrap(), HOP_ALPN_H2).await;
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let connect = |authority: &str| {
        http::Request::builder().method(http::Method::CONNECT).uri(authority).body(()).unwrap()
    };
    let get = http::Request::builder().uri("https://db/").body(()).unwrap();
    assert_eq!(ask(&send, get, b"").await, (421, vec![]), "not a CONNECT");
    assert_eq!(ask(&send, connect("payments:443"), b"").await, (421, vec![]), "another service");
    assert_eq!(app.accepted(), 0, "the app sees neither");
    assert_eq!(ask(&send, connect("db"), b"hello").await, (200, b"hello".to_vec()), "the same hop goes on");
    assert_eq!(app.accepted(), 1);

    // Refused by the policy: 403, and the app never sees it.
    world.write_policy("[modes]\ndb = \"enforce\"\n");
    eventually("db enforces", 3 * SECOND, || async { db.status()["services"][0]["mode"] == "enforce" }).await;
    let (send, connection) =
        h2::client::handshake(raw_hop(&world, db.bound().service("db").unwrap(), HOP_ALPN_H2).await)
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    assert_eq!(ask(&send, connect("db"), b"let me in").await, (403, vec![]));
    assert_eq!(app.accepted(), 1);
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_held_to_the_listeners_connection_limit() {
    let world = World::new();
    let app = EchoApp::start().await;
    world.issue("db");
    let proxy = "max_connections = 2\nhandshake_timeout_ms = 500\n";
    let db = Agent::start(world.config_with("db-host", &[("db", app.addr)], &[], proxy)).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(port))]);
    let web = h2_caller(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();

    let first = echoed(upstream, b"one").await;
    let second = echoed(upstream, b"two").await;
    assert_eq!(inbound(&db, "cordon_tls_handshakes_total"), 1.0, "both on one connection");
    // A third waits for a place, then is answered 503 and closed; the app never sees it.
    let refused = round_trip(upstream, b"three").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "no place for a third");
    assert_eq!(app.accepted(), 2);
    // One ends: the next has its place.
    drop(first);
    eventually("the first has ended on the db side", 3 * SECOND, || async {
        inbound(&db, "cordon_connections_open") == 1.0
    })
    .await;
    assert_eq!(round_trip(upstream, b"four").await.unwrap(), b"four");
    drop(second);
    web.shutdown().await;
    db.shutdown().await;
}
