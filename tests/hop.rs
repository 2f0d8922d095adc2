//! The reusable hop between two cordon agents, end to end on loopback: app connections ride one
//! mTLS connection one after another, each still decided, recorded and counted; a hop the server
//! closed is not used again, and one it closes at the instant it is reused loses no byte; an
//! outbound that knows only `cordon-hop/1` still gets the hop; with reuse off, each app
//! connection makes (and resumes) its own.

mod support;

use std::time::Duration;

use cordon::agent::Agent;
use cordon::pki::{HOP_ALPN_V1, HOP_ALPN_V2};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_speaks_first_is_heard_on_a_new_and_on_a_reused_hop() {
    let db = greeted_twice(&World::new(), "").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_the_inbound_closes_as_the_outbound_reuses_it_loses_no_byte() {
    support::gate::a_hop_closed_as_it_is_reused_loses_no_byte("").await;
}

/// The next frame's kind and payload.
async fn frame(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    tokio::time::timeout(5 * SECOND, tls.read_exact(&mut h))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let mut payload = vec![0u8; u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize];
    tls.read_exact(&mut payload).await?;
    Ok((h[0], payload))
}

/// One app connection on a raw hop: OPEN, DATA, FIN; returns the frames up to the server's FIN.
async fn raw_stream(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, msg: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![1, 0, 0, 0, 2, 0, 0, msg.len() as u8];
    out.extend_from_slice(msg);
    out.extend_from_slice(&[3, 0, 0, 0]);
    tls.write_all(&out).await.unwrap();
    let mut frames = Vec::new();
    loop {
        let f = frame(tls).await.unwrap();
        let fin = f.0 == 3;
        frames.push(f);
        if fin {
            return frames;
        }
    }
}

fn data_of(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    frames.iter().filter(|(k, _)| *k == 2).flat_map(|(_, d)| d.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hop_version_gets_its_own_frames_and_only_v2_hears_goaway() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let addr = db.bound().service("db").unwrap();

    // cordon-hop/1, as an older agent speaks it: DATA and FIN only, and a silent close.
    let mut v1 = raw_hop(&world, addr, HOP_ALPN_V1).await;
    for msg in [&b"one"[..], b"two"] {
        let frames = raw_stream(&mut v1, msg).await;
        assert!(frames.iter().all(|(k, _)| *k == 2 || *k == 3), "v1 frames only: {frames:?}");
        assert_eq!(data_of(&frames), msg);
    }
    // cordon-hop/2: ACK first on every stream.
    let mut v2 = raw_hop(&world, addr, HOP_ALPN_V2).await;
    for msg in [&b"three"[..], b"four"] {
        let frames = raw_stream(&mut v2, msg).await;
        assert_eq!(frames[0], (5, vec![]), "ACK first: {frames:?}");
        assert_eq!(data_of(&frames), msg);
    }

    // The inbound stops with both hops idle: GOAWAY on v2, nothing but the close on v1.
    let stopping = tokio::spawn(db.shutdown());
    assert_eq!(frame(&mut v2).await.unwrap(), (4, vec![]), "GOAWAY");
    assert!(frame(&mut v2).await.is_err(), "then the end of the hop");
    let end = frame(&mut v1).await;
    assert!(
        end.as_ref().is_err_and(|e| e.kind() != std::io::ErrorKind::TimedOut),
        "v1 closes silently: {end:?}"
    );
    drop((v1, v2));
    stopping.await.unwrap();
}
