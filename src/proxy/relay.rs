//! Copying bytes both ways between two connections: half-close aware, idle-limited, cancellable,
//! and counting what went each way.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Buffer per direction at first: enough for the requests and replies of most protocols, and
/// cheap for the many short connections a proxy carries.
const BUF_START: usize = 8 * 1024;

/// A direction whose reads fill the buffer (bulk data) grows it to this: several TLS records
/// (16 KiB each) per socket read and write.
const BUF_BULK: usize = 64 * 1024;

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

/// One direction of a relay: read into the buffer, write it all out, pass the end of stream on as
/// a shutdown. The buffer starts small and grows once a read fills it.
struct Pipe {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl Pipe {
    fn new() -> Self {
        Self { buf: Vec::new(), pos: 0, end: 0, read_done: false, need_flush: false, done: false }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.end && !self.read_done {
                if self.buf.is_empty() {
                    self.buf = vec![0; BUF_START];
                } else if self.end == self.buf.len() && self.buf.len() < BUF_BULK {
                    self.buf.resize(BUF_BULK, 0);
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        (self.pos, self.end) = (0, n);
                        self.read_done = n == 0;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read for now: push out what was written before waiting.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.end {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                self.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
        }
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
    let activity = Activity {
        forward: AtomicU64::new(0),
        back: AtomicU64::new(0),
        last_ms: AtomicU64::new(0),
        start: Instant::now(),
    };
    let mut c = Counted { inner: client, activity: &activity, is_client: true };
    let mut s = Counted { inner: server, activity: &activity, is_client: false };
    let (mut forward, mut back) = (Pipe::new(), Pipe::new());
    let copy = std::future::poll_fn(|cx| {
        let forward_done = forward.poll_copy(cx, &mut c, &mut s)?.is_ready();
        let back_done = back.poll_copy(cx, &mut s, &mut c)?.is_ready();
        if forward_done && back_done { Poll::Ready(Ok::<_, io::Error>(())) } else { Poll::Pending }
    });
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
