//! The outbound's side of the reusable hop between uses: the mTLS connections kept idle per
//! backend, checked before reuse, and retired after [`CLIENT_IDLE`] idle or [`MAX_AGE`] in all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::ReadBuf;
use tokio::net::TcpStream;

use super::{CLIENT_IDLE, MAX_AGE, Version};

/// Idle hops kept per backend; a burst beyond it closes the surplus when the burst ends.
const MAX_IDLE_PER_BACKEND: usize = 64;

/// A hop a client holds: the mTLS connection, when it was made, and the TLS store's client
/// generation it was made in (a hop from before a bundle change or a renewal of our certificate
/// is not used again: the server would refuse its next app connection once that certificate
/// expires).
pub struct Hop {
    pub conn: Box<tokio_rustls::client::TlsStream<TcpStream>>,
    pub version: Version,
    pub born: Instant,
    pub generation: u64,
}

impl Hop {
    /// False when the server has closed it or said anything while idle (it never should): a hop
    /// taken from the pool is checked before it carries a connection.
    fn looks_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.conn.get_ref().0.poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

struct Idle {
    hop: Hop,
    since: Instant,
}

/// An outbound's idle hops, per backend address.
#[derive(Default)]
pub struct HopPool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

impl HopPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live hop to `backend`, if any.
    pub fn take(&self, backend: SocketAddr) -> Option<Hop> {
        loop {
            let idle = self.lock().get_mut(&backend)?.pop()?;
            if idle.since.elapsed() < CLIENT_IDLE
                && idle.hop.born.elapsed() < MAX_AGE
                && idle.hop.looks_alive()
            {
                return Some(idle.hop);
            }
        }
    }

    /// Keeps `hop` for the next connection to `backend`, unless it is too old or enough are kept.
    pub fn put(&self, backend: SocketAddr, hop: Hop) {
        if hop.born.elapsed() >= MAX_AGE {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry(backend).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle { hop, since: Instant::now() });
        }
    }

    /// Closes the hops idle for too long (and forgets backends with none left).
    pub fn sweep(&self) {
        let mut idle = self.lock();
        for list in idle.values_mut() {
            list.retain(|i| i.since.elapsed() < CLIENT_IDLE && i.hop.born.elapsed() < MAX_AGE);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// How many hops are idle (for `/status` and tests).
    pub fn idle(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}
