//! Copying bytes both ways between two connections: half-close aware, idle-limited, cancellable,
//! and counting what went each way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Buffer per direction. 64 KiB keeps a TLS record (16 KiB) and several socket reads in flight.
const BUF: usize = 64 * 1024;

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished (each half closed).
    Done,
    /// One side failed (reset, broken TLS).
    Error,
    /// No byte either way for the idle timeout.
    Idle,
    /// Closed from outside: a policy change or the drain deadline.
    Cancelled,
}

/// What a relay carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// Bytes from the side that connected to us, onwards.
    pub forward: u64,
    /// Bytes back to the side that connected to us.
    pub back: u64,
    pub end: End,
}

/// Shared between the two directions of one relay: byte counts and the last time anything moved.
#[derive(Debug)]
struct Activity {
    forward: AtomicU64,
    back: AtomicU64,
    /// Milliseconds since `start` of the last read that returned bytes.
    last_ms: AtomicU64,
    start: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Wraps one side, counting the bytes read from it.
struct Counted<'a, S> {
    inner: &'a mut S,
    activity: &'a Activity,
    /// True for the side that connected to us: bytes read from it go forward.
    is_client: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let counter = if this.is_client { &this.activity.forward } else { &this.activity.back };
            counter.fetch_add(n, Ordering::Relaxed);
            this.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Copies `client` <-> `server` until both halves close, one side fails, nothing moves for
/// `idle`, or `cancel` fires. A half-close is passed on: when the client shuts down its write
/// side, the server's write side is shut down and the reply still flows back in full.
pub async fn relay<C, S>(
    client: &mut C,
    server: &mut S,
    idle: Duration,
    cancel: &CancellationToken,
) -> Carried
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        forward: AtomicU64::new(0),
        back: AtomicU64::new(0),
        last_ms: AtomicU64::new(0),
        start: Instant::now(),
    });
    let mut c = Counted { inner: client, activity: &activity, is_client: true };
    let mut s = Counted { inner: server, activity: &activity, is_client: false };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut s, BUF, BUF);
    tokio::pin!(copy);
    let end = loop {
        // Wake at the earliest moment the idle limit could be reached.
        let remaining = idle.saturating_sub(activity.idle_for());
        tokio::select! {
            res = &mut copy => break if res.is_ok() { End::Done } else { End::Error },
            _ = cancel.cancelled() => break End::Cancelled,
            _ = tokio::time::sleep(remaining) => {
                if activity.idle_for() >= idle {
                    break End::Idle;
                }
            }
        }
    };
    Carried {
        forward: activity.forward.load(Ordering::Relaxed),
        back: activity.back.load(Ordering::Relaxed),
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn half_close_still_gets_the_whole_reply() {
        let (mut app_side, mut client) = duplex(1024);
        let (mut server, mut backend) = duplex(1024);
        let cancel = CancellationToken::new();
        let relay =
            tokio::spawn(
                async move { relay(&mut app_side, &mut server, Duration::from_secs(5), &cancel).await },
            );
        // A backend that reads the request to EOF, then answers.
        let backend = tokio::spawn(async move {
            let mut req = Vec::new();
            backend.read_to_end(&mut req).await.unwrap();
            backend.write_all(&req.repeat(3)).await.unwrap();
            backend.shutdown().await.unwrap();
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"pingpingping");
        backend.await.unwrap();
        let carried = relay.await.unwrap();
        assert_eq!((carried.forward, carried.back, carried.end), (4, 12, End::Done));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (mut a, _client) = duplex(64);
        let (mut b, _backend) = duplex(64);
        let carried = relay(&mut a, &mut b, Duration::from_secs(30), &CancellationToken::new()).await;
        assert_eq!(carried.end, End::Idle);
    }

    #[tokio::test]
    async fn cancel_closes_at_once() {
        let (mut a, _client) = duplex(64);
        let (mut b, _backend) = duplex(64);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let carried = relay(&mut a, &mut b, Duration::from_secs(30), &cancel).await;
        assert_eq!(carried.end, End::Cancelled);
    }
}
