//! A TCP forwarder that can hold back one direction, to make races between two agents happen
//! every time.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
