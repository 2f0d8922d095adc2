//! Copying bytes both ways between two connections: half-close aware, idle-limited, cancellable,
//! and counting what went each way.
//!
//! An open connection that is not moving bytes holds no buffer: each read lands in a buffer on
//! the stack of the poll that made it and is written out from there at once. Only bytes the
//! writer could not take yet are copied to the heap, and that copy is released as soon as the
//! direction waits for its reader again. Ten thousand idle relays cost their sockets and TLS
//! state, not 16 KiB or more of buffers each.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// A read at first: enough for the requests and replies of most protocols.
const READ_START: usize = 16 * 1024;

/// A direction whose reads fill [`READ_START`] (bulk data) reads this much at a time: several TLS
/// records (16 KiB each) per socket read and write.
const READ_BULK: usize = 64 * 1024;

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

/// One direction of a relay: read (into a stack buffer), write it all out, pass the end of stream
/// on as a shutdown. Between reads it holds at most the bytes the writer has not taken yet.
struct Pipe {
    /// Read bytes the writer has not taken yet, from `pos`; empty (no allocation) when idle.
    left: Vec<u8>,
    pos: usize,
    /// How much one read asks for: grows to [`READ_BULK`] once a read fills [`READ_START`].
    read_size: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl Pipe {
    fn new() -> Self {
        Self {
            left: Vec::new(),
            pos: 0,
            read_size: READ_START,
            read_done: false,
            need_flush: false,
            done: false,
        }
    }

    /// Writes `left[pos..]` out; Ready once it is all gone (the allocation is kept for the next
    /// partial write until the reader has to wait).
    fn poll_write_left<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.pos < self.left.len() {
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.left[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
            self.need_flush = true;
        }
        self.left.clear();
        self.pos = 0;
        Poll::Ready(Ok(()))
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
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_BULK];
        loop {
            ready!(self.poll_write_left(cx, writer))?;
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                self.left = Vec::new();
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::uninit(&mut stack[..self.read_size]);
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle until the reader wakes us: hold no buffer meanwhile, and push out what
                    // was written before waiting.
                    self.left = Vec::new();
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            let read = rb.filled();
            if read.is_empty() {
                self.read_done = true;
                continue;
            }
            if read.len() == self.read_size {
                self.read_size = READ_BULK;
            }
            let mut off = 0;
            while off < read.len() {
                match Pin::new(&mut *writer).poll_write(cx, &read[off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The writer is full: keep the rest until it wakes us.
                        self.left.extend_from_slice(&read[off..]);
                        return Poll::Pending;
                    }
                }
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
    relay_reporting(client, server, idle, cancel, None).await
}

/// How a long relay tells what it carried while it is still open: `report(forward, back)` with
/// the bytes since the last report, [`Progress::FIRST`] after the start and every
/// [`Progress::EVERY`] after that, whenever any moved.
pub struct Progress<'a> {
    report: &'a mut (dyn FnMut(u64, u64) + Send),
}

impl<'a> Progress<'a> {
    /// Soon enough that a connection that stays open (a pool's) is seen carrying data within a
    /// ledger flush or two, late enough that a short connection never reports.
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const EVERY: Duration = Duration::from_secs(60);

    pub fn new(report: &'a mut (dyn FnMut(u64, u64) + Send)) -> Self {
        Self { report }
    }
}

/// [`relay`], reporting its bytes as it goes when `progress` is given; the [`Carried`] it returns
/// is the whole connection's.
pub async fn relay_reporting<C, S>(
    client: &mut C,
    server: &mut S,
    idle: Duration,
    cancel: &CancellationToken,
    mut progress: Option<Progress<'_>>,
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
    let mut next_report = activity.start + Progress::FIRST;
    let mut reported = (0, 0);
    let end = loop {
        // Wake at the earliest moment the idle limit could be reached, or a report is due: one
        // timer for both.
        let idle_at = Instant::now() + idle.saturating_sub(activity.idle_for());
        let wake = if progress.is_some() { idle_at.min(next_report) } else { idle_at };
        tokio::select! {
            res = &mut copy => break if res.is_ok() { End::Done } else { End::Error },
            _ = cancel.cancelled() => break End::Cancelled,
            _ = tokio::time::sleep_until(wake) => {
                if activity.idle_for() >= idle {
                    break End::Idle;
                }
                if let Some(p) = progress.as_mut()
                    && Instant::now() >= next_report
                {
                    next_report += Progress::EVERY;
                    let now = (activity.forward.load(Ordering::Relaxed), activity.back.load(Ordering::Relaxed));
                    if now != reported {
                        (p.report)(now.0 - reported.0, now.1 - reported.1);
                        reported = now;
                    }
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

    #[tokio::test]
    async fn bulk_through_a_narrow_writer_arrives_whole_and_in_order() {
        // Narrow pipes: every write is partial, so the kept remainder is used all the time.
        let (mut app_side, client) = duplex(1000);
        let (mut server, mut backend) = duplex(700);
        let cancel = CancellationToken::new();
        let relay =
            tokio::spawn(
                async move { relay(&mut app_side, &mut server, Duration::from_secs(5), &cancel).await },
            );
        let payload: Vec<u8> = (0..3 * READ_BULK + 12_345).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let backend = tokio::spawn(async move {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            backend.write_all(&got).await.unwrap();
            backend.shutdown().await.unwrap();
            got
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        rd.read_to_end(&mut echoed).await.unwrap();
        writer.await.unwrap();
        assert_eq!(backend.await.unwrap(), payload);
        assert_eq!(echoed, payload);
        let carried = relay.await.unwrap();
        assert_eq!(
            (carried.forward, carried.back, carried.end),
            (payload.len() as u64, payload.len() as u64, End::Done)
        );
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

    #[tokio::test(start_paused = true)]
    async fn a_long_relay_reports_its_bytes_while_open_and_a_short_one_never() {
        let (mut app_side, mut client) = duplex(1024);
        let (mut server, mut backend) = duplex(1024);
        let cancel = CancellationToken::new();
        let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = reports.clone();
        let stop = cancel.clone();
        let relay = tokio::spawn(async move {
            let mut report = |f, b| seen.lock().unwrap().push((f, b));
            let progress = Some(Progress::new(&mut report));
            relay_reporting(&mut app_side, &mut server, Duration::from_secs(3600), &stop, progress).await
        });
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        backend.read_exact(&mut got).await.unwrap();
        backend.write_all(b"hi").await.unwrap();
        client.read_exact(&mut got[..2]).await.unwrap();
        tokio::time::sleep(Progress::FIRST + Duration::from_millis(10)).await;
        assert_eq!(*reports.lock().unwrap(), [(5, 2)], "reported once the first second passed");
        tokio::time::sleep(Progress::EVERY).await;
        assert_eq!(reports.lock().unwrap().len(), 1, "nothing moved: nothing reported");
        client.write_all(b"more").await.unwrap();
        backend.read_exact(&mut got[..4]).await.unwrap();
        tokio::time::sleep(Progress::EVERY).await;
        assert_eq!(*reports.lock().unwrap(), [(5, 2), (4, 0)], "only what moved since");
        cancel.cancel();
        let carried = relay.await.unwrap();
        assert_eq!((carried.forward, carried.back), (9, 2), "the whole connection's bytes");

        let (mut app_side, mut client) = duplex(1024);
        let (mut server, mut backend) = duplex(1024);
        let cancel = CancellationToken::new();
        let mut count = 0;
        let mut report = |_, _| count += 1;
        let short = async {
            relay_reporting(
                &mut app_side,
                &mut server,
                Duration::from_secs(5),
                &cancel,
                Some(Progress::new(&mut report)),
            )
            .await
        };
        let other_ends = async {
            client.write_all(b"ping").await.unwrap();
            client.shutdown().await.unwrap();
            backend.shutdown().await.unwrap();
            let mut sink = Vec::new();
            backend.read_to_end(&mut sink).await.unwrap();
        };
        let (carried, ()) = tokio::join!(short, other_ends);
        assert_eq!(carried.forward, 4);
        assert_eq!(count, 0, "a connection shorter than a second never reports");
    }
}
