//! The data plane: outbound proxies (local plaintext port -> a backend's mTLS port) and inbound
//! proxies (mTLS or, while learning, plaintext -> the local app).
//!
//! Owns sockets, TLS handshakes and byte copying. It asks the policy for a decision, hands events
//! to the recorder's channel and decision records to the decision log; it never touches SQLite or
//! files itself, and never waits on either.

mod balance;
pub mod hop;
pub mod http_server;
mod inbound;
mod outbound;
mod relay;
mod settings;

pub use balance::Balancer;
pub use hop::{HopPool, MuxPool};
pub use inbound::Inbound;
pub use outbound::Outbound;
pub use relay::{Carried, End, Progress, relay, relay_reporting};
pub use settings::{HopProtocol, ProxySettings, RawProxy};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every listener shares with the agent for its lifetime.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Fired to stop accepting (shutdown begins).
    pub stop_accepting: CancellationToken,
    /// Fired when the drain deadline passes: every open connection is closed.
    pub force_close: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self {
            stop_accepting: CancellationToken::new(),
            force_close: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Stops accepting, waits up to `deadline` for open connections to finish, then closes the rest.
    /// Returns how many connections had to be closed by force.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.stop_accepting.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok() {
            return 0;
        }
        let left = self.tracker.len();
        self.force_close.cancel();
        // Forced connections end at their next poll; give them a moment to record their close.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        left
    }
}

/// Accepts connections until `stop_accepting` fires, at most `max` handled at once (further
/// connections wait in the kernel backlog). Accept errors (out of file descriptors, say) back off
/// instead of spinning.
pub async fn accept_loop<F, Fut>(listener: TcpListener, max: usize, life: Lifecycle, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max));
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = life.stop_accepting.cancelled() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = life.stop_accepting.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let conn = handle(stream, peer);
                life.tracker.spawn(async move {
                    conn.await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = life.stop_accepting.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Counts a connection as opened now and as closed when dropped, however it ends.
pub(crate) struct ConnCount<'a>(&'a crate::metrics::ListenerMetrics);

impl<'a> ConnCount<'a> {
    pub(crate) fn new(m: &'a crate::metrics::ListenerMetrics) -> Self {
        m.opened.inc();
        m.open.inc();
        Self(m)
    }
}

impl Drop for ConnCount<'_> {
    fn drop(&mut self) {
        self.0.open.dec();
        self.0.closed.inc();
    }
}
