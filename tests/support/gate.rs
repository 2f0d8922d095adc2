//! A TCP forwarder that can hold back one direction, to make races between two agents happen
//! every time.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use cordon::agent::Agent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{EchoApp, World, eventually, localhost, metric, round_trip};

/// A TCP forwarder between an outbound and an inbound that can hold back what the inbound sends:
/// with it, a test makes the outbound reuse a hop the inbound has already closed, every time.
pub struct Gate {
    pub addr: SocketAddr,
    /// Where new connections are forwarded.
    pub target: Arc<Mutex<SocketAddr>>,
    /// True while bytes and ends from the inbound are held.
    pub hold: watch::Sender<bool>,
    /// Bytes from the outbound, all connections.
    pub up: Arc<AtomicU64>,
    /// Connections whose inbound side has ended (held back or passed on).
    pub ended: Arc<AtomicU64>,
}

impl Gate {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Self {
            addr,
            target: Arc::new(Mutex::new(target)),
            hold: watch::channel(false).0,
            up: Arc::default(),
            ended: Arc::default(),
        };
        let (target, hold, up, ended) =
            (gate.target.clone(), gate.hold.clone(), gate.up.clone(), gate.ended.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let to = *target.lock().unwrap();
                let Ok(server) = TcpStream::connect(to).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = up.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        up.fetch_add(n as u64, Ordering::SeqCst);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                // What the inbound sends is read at once and queued; it is written on only
                // while the gate is open, and its end (EOF or reset) passed on as a FIN.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
                let ended = ended.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        let _ = tx.send(buf[..n].to_vec());
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
                let mut hold = hold.subscribe();
                tokio::spawn(async move {
                    while let Some(chunk) = rx.recv().await {
                        if hold.wait_for(|held| !held).await.is_err() || cw.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    if hold.wait_for(|held| !held).await.is_ok() {
                        let _ = cw.shutdown().await;
                    }
                });
            }
        });
        gate
    }
}

/// The stale-hop race, made to happen every time: the inbound closes an idle hop while this gate
/// holds back what it sends, the outbound (with `proxy` lines) starts an app connection on that
/// hop, and only then does the gate let the close through. The app connection must go out again
/// on a fresh hop and lose no byte.
pub async fn a_hop_closed_as_it_is_reused_loses_no_byte(proxy: &str) {
    let world = World::new();
    let app = EchoApp::start().await;
    world.issue("db");
    let old = Agent::start(world.config("db-host", &[("db", app.addr)], &[])).await.unwrap();
    let gate = Gate::start(old.bound().service("db").unwrap()).await;
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(gate.addr.port()))]);
    world.issue("web");
    let web = Agent::start(world.config_with("web-host", &[], &[("db", "web")], proxy)).await.unwrap();
    let upstream = web.bound().upstream("db").unwrap();
    assert_eq!(round_trip(upstream, b"one").await.unwrap(), b"one");
    eventually("the hop is back in web's pool", 3 * Duration::from_secs(1), || async {
        metric(&web.metrics_text(), "cordon_connections_open", &[]) == 0.0
    })
    .await;

    // The inbound closes the idle hop (its agent restarts); web does not hear of it yet.
    gate.hold.send_replace(true);
    let stopping = tokio::spawn(old.shutdown());
    eventually("the inbound has closed the hop", 5 * Duration::from_secs(1), || async {
        gate.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    let new = Agent::start(world.config("db-host-2", &[("db", app.addr)], &[])).await.unwrap();
    *gate.target.lock().unwrap() = new.bound().service("db").unwrap();

    // An app connection now rides the closed hop: its first bytes reach the closed inbound.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let before = gate.up.load(Ordering::SeqCst);
    let sent = payload.clone();
    let echo = tokio::spawn(async move { round_trip(upstream, &sent).await });
    eventually("web has started the connection on the closed hop", 5 * Duration::from_secs(1), || async {
        gate.up.load(Ordering::SeqCst) > before
    })
    .await;
    gate.hold.send_replace(false);

    let reply = echo.await.unwrap().expect("the app connection is not reset");
    assert_eq!(reply.len(), payload.len(), "every byte comes back");
    assert!(reply == payload, "every byte comes back in order");
    let m = web.metrics_text();
    assert_eq!(metric(&m, "cordon_hop_retried_total", &[]), 1.0, "it went out again: {m}");
    assert_eq!(metric(&m, "cordon_hop_reused_total", &[]), 0.0, "on a fresh hop: {m}");
    web.shutdown().await;
    stopping.await.unwrap();
    new.shutdown().await;
}
