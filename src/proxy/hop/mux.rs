//! The hop as HTTP/2 (ALPN [`crate::pki::HOP_ALPN_H2`]): one mTLS connection between two cordon
//! agents carries many app connections at once, each an HTTP/2 stream opened with `CONNECT`, as
//! proxies do between themselves in a service mesh.
//!
//! - The outbound sends `CONNECT` with the destination service as the authority, then the app's
//!   bytes as DATA; its end (the app half-closed) is `END_STREAM`.
//! - The inbound decides and records each stream as the framed hop does each `OPEN`: `200` once
//!   it has dialled its app, `403` when the decision refuses the caller, `502` when the app cannot
//!   be reached. Each is per stream: one refused or broken app connection leaves the others on
//!   the connection alone.
//! - Flow control is HTTP/2's, per stream ([`STREAM_WINDOW`]) and per connection
//!   ([`CONNECTION_WINDOW`]), so one slow app does not stall the others.
//! - An inbound closing a connection (idle, age, shutdown) sends `GOAWAY` with the last stream it
//!   took, after a ping round trip, so a stream already in flight is still served. A stream the
//!   inbound did not take (above that id, or refused with `REFUSED_STREAM`) was never seen: the
//!   outbound sends it again on another connection, with the same first bytes, which it only
//!   takes from the app's socket once the inbound answered `200`.
//! - A policy or trust change that refuses the caller closes the whole connection, as it closes
//!   a framed hop: the caller is the TLS peer's identity, one per connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{CLIENT_IDLE, MAX_AGE};

/// Bytes a stream may have in flight each way before its reader takes them.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// Bytes all streams of a connection may have in flight each way.
pub const CONNECTION_WINDOW: u32 = 8 << 20;

/// Streams an inbound serves at once on one connection; past it, the outbound waits.
pub const MAX_STREAMS: u32 = 256;

/// Streams an outbound puts on one connection before it opens another to the same backend: the
/// TLS work of one connection is one task's, so a busy backend gets a few.
pub const STREAMS_PER_CONNECTION: usize = 64;

/// The largest DATA frame either side sends (HTTP/2's default, one TLS record of payload).
const FRAME: u32 = 16 * 1024;

/// The largest header list either side takes: a `CONNECT` and its answer are a few bytes.
const MAX_HEADERS: u32 = 8 * 1024;

/// The largest chunk handed to HTTP/2 per write.
const MAX_WRITE: usize = 64 * 1024;

/// The HTTP/2 settings of an inbound.
pub fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADERS)
        .max_frame_size(FRAME);
    b
}

/// The HTTP/2 settings of an outbound.
pub fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADERS)
        .max_frame_size(FRAME)
        .enable_push(false);
    b
}

/// The `CONNECT` request that opens an app connection to `service`.
pub fn connect_request(service: &str) -> Result<http::Request<()>, http::Error> {
    let authority = http::uri::Authority::try_from(service)?;
    let uri = http::Uri::builder().authority(authority).build()?;
    http::Request::builder().method(http::Method::CONNECT).uri(uri).body(())
}

/// True when the inbound cannot have taken this stream: it is above the last one a `GOAWAY`
/// named, or it was refused with `REFUSED_STREAM`. Then it may go out again elsewhere.
pub fn never_seen(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || (e.is_reset() && e.reason() == Some(Reason::REFUSED_STREAM)))
}

/// An HTTP/2 error as an I/O error; a reset by the peer is a reset.
pub fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    let kind = if e.is_reset() { io::ErrorKind::ConnectionReset } else { io::ErrorKind::Other };
    io::Error::new(kind, e)
}

/// One app connection's bytes on an HTTP/2 stream, as a byte stream: reads end at the peer's
/// `END_STREAM`, `shutdown` sends ours. Dropped before both ends, the stream is reset.
pub struct MuxStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not read yet.
    pending: Bytes,
    eof: bool,
    finished: bool,
    /// Held while the stream is open, so the outbound's pool knows how busy its connection is.
    _busy: Option<Arc<()>>,
}

impl MuxStream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, busy: Option<Arc<()>>) -> Self {
        Self { send, recv, pending: Bytes::new(), eof: false, finished: false, _busy: busy }
    }

    /// The peer's reason when it reset the stream, as an I/O error.
    fn reset_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => io::ErrorKind::BrokenPipe.into(),
            Ok(reason) => io::Error::new(io::ErrorKind::ConnectionReset, h2::Error::from(reason)),
            Err(e) => io_error(e),
        })
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        while this.pending.is_empty() && !this.eof {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => this.eof = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        if n > 0 {
            buf.put_slice(&this.pending[..n]);
            this.pending.advance(n);
            // Taken by the reader: the peer may send as much again.
            let _ = this.recv.flow_control().release_capacity(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.finished {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want = buf.len().min(MAX_WRITE);
        loop {
            this.send.reserve_capacity(want);
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(want);
                    if this.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).is_ok() {
                        return Poll::Ready(Ok(n));
                    }
                }
                Some(Err(_)) | None => {}
            }
            return this.reset_error(cx).map(Err);
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes frames out as they are queued.
        Poll::Ready(Ok(()))
    }

    /// Sends `END_STREAM` (the connection stays open for the other streams).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Ok(()));
        }
        if this.send.send_data(Bytes::new(), true).is_ok() {
            this.finished = true;
            return Poll::Ready(Ok(()));
        }
        this.reset_error(cx).map(Err)
    }
}

/// The inbound's connection under HTTP/2. When HTTP/2 is done with it (after its `GOAWAY`, or
/// the connection failed), it is closed as a framed hop is after `GOAWAY`: see
/// [`super::linger`], run on its own task so the connection's task ends at once.
pub struct Lingering<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(Option<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<S> {
    pub fn new(io: S) -> Self {
        Self(Some(io))
    }

    fn io(&mut self) -> io::Result<&mut S> {
        self.0.as_mut().ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        if let Some(mut io) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { super::linger(&mut io).await });
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()?).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()?).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()?).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|io| io.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()?).poll_flush(cx)
    }
    /// Left to the drop: HTTP/2 shuts its side when it closes, and the linger does that first.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An outbound's HTTP/2 connection to one backend, shared by the app connections on it.
struct Conn {
    send: h2::client::SendRequest<Bytes>,
    born: Instant,
    /// The TLS store's client generation it was made in (see [`super::Hop`]).
    generation: u64,
    /// Set when the connection's task has ended.
    closed: Arc<AtomicBool>,
    /// One clone per open stream.
    busy: Arc<()>,
    last_used: Instant,
}

impl Conn {
    fn streams(&self) -> usize {
        Arc::strong_count(&self.busy) - 1
    }

    /// Its task still runs and it may still take new streams.
    fn live(&self) -> bool {
        !self.closed.load(Ordering::Relaxed) && self.born.elapsed() < MAX_AGE
    }

    fn usable(&self, generation: u64) -> bool {
        self.live() && self.generation == generation
    }
}

/// A connection taken for one stream: its handle, and the token that counts the stream.
pub struct Taken {
    pub send: h2::client::SendRequest<Bytes>,
    pub busy: Arc<()>,
}

/// An outbound's HTTP/2 connections, per backend address.
#[derive(Default)]
pub struct MuxPool {
    conns: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
}

impl MuxPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The least busy connection to `backend` made in `generation` with room for one more
    /// stream; connections closed, too old or from another generation are forgotten.
    pub fn take(&self, backend: SocketAddr, generation: u64) -> Option<Taken> {
        let mut conns = self.lock();
        let list = conns.get_mut(&backend)?;
        list.retain(|c| c.usable(generation));
        let conn =
            list.iter_mut().filter(|c| c.streams() < STREAMS_PER_CONNECTION).min_by_key(|c| c.streams())?;
        conn.last_used = Instant::now();
        Some(Taken { send: conn.send.clone(), busy: conn.busy.clone() })
    }

    /// Adds a new connection to `backend` (made in `generation`; its task sets `closed` when it
    /// ends), and takes it for the stream that made it.
    pub fn add(
        &self,
        backend: SocketAddr,
        send: h2::client::SendRequest<Bytes>,
        generation: u64,
        closed: Arc<AtomicBool>,
    ) -> Taken {
        let busy = Arc::new(());
        let now = Instant::now();
        let taken = Taken { send: send.clone(), busy: busy.clone() };
        let conn = Conn { send, born: now, generation, closed, busy, last_used: now };
        self.lock().entry(backend).or_default().push(conn);
        taken
    }

    /// Forgets a connection that refused a stream it should have taken, so the next one dials.
    pub fn forget(&self, backend: SocketAddr, busy: &Arc<()>) {
        if let Some(list) = self.lock().get_mut(&backend) {
            list.retain(|c| !Arc::ptr_eq(&c.busy, busy));
        }
    }

    /// Forgets connections that ended, are too old, or have carried nothing for [`CLIENT_IDLE`]
    /// (an idle one then closes: no handle is left). Streams still open on a forgotten
    /// connection go on to their end.
    pub fn sweep(&self) {
        let mut conns = self.lock();
        for list in conns.values_mut() {
            list.retain(|c| c.live() && (c.streams() > 0 || c.last_used.elapsed() < CLIENT_IDLE));
        }
        conns.retain(|_, list| !list.is_empty());
    }

    /// How many connections carry no stream now (for `/status` and tests).
    pub fn idle(&self) -> usize {
        self.lock().values().flatten().filter(|c| c.streams() == 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// An HTTP/2 pair over an in-memory pipe: the client's handle and the server connection.
    async fn pair() -> (h2::client::SendRequest<Bytes>, h2::server::Connection<tokio::io::DuplexStream, Bytes>)
    {
        let (c, s) = duplex(256 * 1024);
        let server = tokio::spawn(async move { server_builder().handshake(s).await.unwrap() });
        let (send, conn) = client_builder().handshake(c).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (send, server.await.unwrap())
    }

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_at_once_beyond_the_windows() {
        let (send, mut server) = pair().await;
        let served = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Some(Ok((req, mut respond))) = server.accept().await {
                assert_eq!(req.method(), http::Method::CONNECT);
                assert_eq!(req.uri().authority().map(|a| a.as_str()), Some("db"));
                let out = respond.send_response(http::Response::new(()), false).unwrap();
                streams.push(tokio::spawn(async move {
                    let mut s = MuxStream::new(out, req.into_body(), None);
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    s.write_all(&got).await.unwrap();
                    s.shutdown().await.unwrap();
                    got.len()
                }));
                if streams.len() == 3 {
                    break;
                }
            }
            // The connection is driven by its accept; the streams need it to go on.
            tokio::spawn(async move { while server.accept().await.is_some() {} });
            let mut lens = Vec::new();
            for s in streams {
                lens.push(s.await.unwrap());
            }
            lens
        });
        // Three at once, each larger than the stream window and together than the connection's.
        let size = 3 * STREAM_WINDOW as usize;
        let mut clients = Vec::new();
        for i in 0..3u8 {
            let mut send = send.clone().ready().await.unwrap();
            let (resp, out) = send.send_request(connect_request("db").unwrap(), false).unwrap();
            clients.push(tokio::spawn(async move {
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200);
                let s = MuxStream::new(out, resp.into_body(), None);
                let (mut r, mut w) = tokio::io::split(s);
                let payload = vec![i; size];
                let writer = tokio::spawn(async move {
                    w.write_all(&payload).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert!(
                    back.len() == size && back.iter().all(|&b| b == i),
                    "stream {i} echoes its own bytes"
                );
            }));
        }
        let within = std::time::Duration::from_secs(20);
        for c in clients {
            tokio::time::timeout(within, c).await.expect("the stream ends").unwrap();
        }
        assert_eq!(tokio::time::timeout(within, served).await.unwrap().unwrap(), vec![size; 3]);
    }

    #[tokio::test]
    async fn a_stream_the_server_never_took_is_never_seen_and_a_reset_is_a_reset() {
        let (send, mut server) = pair().await;
        let mut send = send.ready().await.unwrap();
        let (resp, _out) = send.send_request(connect_request("db").unwrap(), false).unwrap();
        let (req, mut respond) = server.accept().await.unwrap().unwrap();
        respond.send_reset(Reason::REFUSED_STREAM);
        drop(req);
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        let err = resp.await.unwrap_err();
        assert!(never_seen(&err), "REFUSED_STREAM: {err:?}");

        let (send, mut server) = pair().await;
        let mut send = send.ready().await.unwrap();
        let (resp, _out) = send.send_request(connect_request("db").unwrap(), false).unwrap();
        let (_req, mut respond) = server.accept().await.unwrap().unwrap();
        respond.send_reset(Reason::INTERNAL_ERROR);
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        let err = resp.await.unwrap_err();
        assert!(!never_seen(&err), "a stream the server took and reset may have reached its app");
        assert_eq!(io_error(err).kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn a_goaway_names_the_last_stream_taken_and_later_ones_are_never_seen() {
        let (send, mut server) = pair().await;
        let mut send = send.ready().await.unwrap();
        let (first, mut o1) = send.send_request(connect_request("db").unwrap(), false).unwrap();
        let (req, mut respond) = server.accept().await.unwrap().unwrap();
        // Sent before the client can have read the GOAWAY: above the last stream it names.
        let (second, _o2) = send.send_request(connect_request("db").unwrap(), false).unwrap();
        server.abrupt_shutdown(Reason::NO_ERROR);
        let served = tokio::spawn(async move {
            let mut taken = 0;
            while let Some(Ok(_)) = server.accept().await {
                taken += 1;
            }
            assert_eq!(taken, 0, "a stream sent after the GOAWAY is not taken");
        });
        let err = second.await.unwrap_err();
        assert!(never_seen(&err), "{err:?}");
        drop((req, respond.send_reset(Reason::CANCEL), o1.send_reset(Reason::CANCEL)));
        assert!(first.await.is_err());
        let within = std::time::Duration::from_secs(5);
        tokio::time::timeout(within, served).await.expect("the connection closes").unwrap();
    }
}
