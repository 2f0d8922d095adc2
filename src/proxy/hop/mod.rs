//! cordon's reusable hop: one mTLS connection between two cordon agents carries app connections one
//! after another, so a new app connection costs no TCP or TLS handshake between the agents.
//!
//! Agreed by ALPN ([`crate::pki::HOP_ALPNS`]): `cordon-h2/1` is the hop as HTTP/2 streams, many at
//! once ([`mux`]); `cordon-hop/2` and `cordon-hop/1` are the framed hop described here, one app
//! connection at a time. A peer that offers none (HAProxy, an older cordon, openssl) gets one app
//! connection per mTLS connection, as before. Inside the TLS stream of the framed hop every frame
//! has a 4-byte header, a kind and a 24-bit big-endian length:
//!
//! - `OPEN` (client to server, empty): an app connection begins; the server decides and dials
//!   its app at once, so server-first protocols work.
//! - `DATA`: bytes of the app connection.
//! - `FIN` (empty): no more bytes this way (the app half-closed).
//!
//! `cordon-hop/2` adds two frames, server to client, that close the race between an inbound
//! closing an idle hop and an outbound reusing it at that instant:
//!
//! - `ACK` (empty): the first frame of every stream, written as soon as the server reads `OPEN`:
//!   from here on the server has the app connection (it serves it or closes the hop on error).
//!   Until it arrives, the client leaves the app's first bytes in the app's socket (it only
//!   peeks at them), and sends nothing more.
//! - `GOAWAY` (empty): written between streams instead of closing silently (idle limit, age,
//!   shutdown, a re-check): no `OPEN` after it is processed. The server then ends its TLS stream
//!   and reads and drops what still comes for [`LINGER`], so nothing in flight turns into a reset.
//!   A client that reads `GOAWAY` where it waits for `ACK` knows that the server never saw its
//!   app connection, and opens it again, with the same first bytes, on another hop.
//!
//! A stream ends when both sides have sent `FIN`; the connection may then carry the next. Anything
//! else (an error on either side, a refusal, a policy change) closes the whole mTLS connection,
//! and the peer closes its app connection: the same as without reuse. A close without `GOAWAY`
//! (or on `cordon-hop/1`) is never taken as "not seen": the server may have dialled its app. One
//! stream at a time per connection keeps TCP's own flow control per app connection.
//!
//! The caller's identity is the TLS peer's, proven once per mTLS connection; the policy is still
//! decided per app connection, and a hop is reused for at most [`MAX_AGE`] so that a rotated or
//! expiring certificate stops carrying new connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub mod mux;
mod pool;
pub use mux::{MuxPool, MuxStream};
pub use pool::{Hop, HopPool};

const OPEN: u8 = 1;
const DATA: u8 = 2;
const FIN: u8 = 3;
const GOAWAY: u8 = 4;
const ACK: u8 = 5;
const HEADER: usize = 4;

/// Which hop protocol a connection agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `cordon-hop/1`: `OPEN`, `DATA`, `FIN`.
    V1,
    /// `cordon-hop/2`: also `ACK` and `GOAWAY`.
    V2,
    /// `cordon-h2/1`: HTTP/2 streams ([`mux`]).
    H2,
}

impl Version {
    /// The version an agreed ALPN protocol names, if it is a hop.
    pub fn from_alpn(protocol: Option<&[u8]>) -> Option<Self> {
        match protocol? {
            p if p == crate::pki::HOP_ALPN_H2 => Some(Self::H2),
            p if p == crate::pki::HOP_ALPN_V2 => Some(Self::V2),
            p if p == crate::pki::HOP_ALPN_V1 => Some(Self::V1),
            _ => None,
        }
    }
}

/// How long a server that said `GOAWAY` keeps reading (and dropping) what the client still sends,
/// so that an `OPEN` already in flight does not make the kernel reset the connection before the
/// client has read `GOAWAY`. It ends sooner when the client closes, as it does on reading it.
pub const LINGER: Duration = Duration::from_millis(500);

/// The largest DATA frame written (the relay's buffer); any length up to 2^24-1 is read.
const MAX_FRAME: usize = 64 * 1024;

/// How long an outbound keeps an idle hop for the next app connection.
pub const CLIENT_IDLE: Duration = Duration::from_secs(15);

/// How long an inbound waits for the next app connection on an idle hop; longer than
/// [`CLIENT_IDLE`], so the client side, which knows when it reuses, closes first.
pub const SERVER_IDLE: Duration = Duration::from_secs(60);

/// A hop carries new app connections for this long after its handshake, then is closed when idle.
pub const MAX_AGE: Duration = Duration::from_secs(300);

fn header(kind: u8, len: usize) -> [u8; HEADER] {
    let len = len as u32;
    [kind, (len >> 16) as u8, (len >> 8) as u8, len as u8]
}

/// Starts a stream on `io` (client side), carrying `first` (the app's first bytes, when they were
/// already there) in the same TLS record.
pub async fn open<S: AsyncWrite + Unpin>(io: &mut S, first: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(2 * HEADER + first.len());
    frame.extend_from_slice(&header(OPEN, 0));
    if !first.is_empty() {
        frame.extend_from_slice(&header(DATA, first.len()));
        frame.extend_from_slice(first);
    }
    io.write_all(&frame).await?;
    io.flush().await
}

/// How many of the app's first bytes are already in `client`'s socket (copied into `buf`, left
/// in the socket); 0 when none are, without waiting.
pub fn peek_now(client: &TcpStream, buf: &mut [u8]) -> usize {
    let mut rb = ReadBuf::new(buf);
    let mut cx = Context::from_waker(Waker::noop());
    match client.poll_peek(&mut cx, &mut rb) {
        Poll::Ready(Ok(n)) => n,
        _ => 0,
    }
}

/// The server's answer to an `OPEN` on `cordon-hop/2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `ACK`: the server has the app connection.
    Accepted,
    /// `GOAWAY`: the server never processed this `OPEN`; it may be sent again elsewhere.
    GoneAway,
}

/// Reads the server's answer to the `OPEN` just sent (client side, `cordon-hop/2`). A close or
/// anything else is an error: the server may have processed the `OPEN`.
pub async fn answer<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<Answer> {
    let mut h = [0u8; HEADER];
    io.read_exact(&mut h).await?;
    match h {
        [ACK, 0, 0, 0] => Ok(Answer::Accepted),
        [GOAWAY, 0, 0, 0] => Ok(Answer::GoneAway),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected a hop ACK or GOAWAY frame, got {h:?}"),
        )),
    }
}

/// Tells the client that its `OPEN` was read (server side, `cordon-hop/2`).
pub async fn ack<S: AsyncWrite + Unpin>(io: &mut S) -> io::Result<()> {
    io.write_all(&header(ACK, 0)).await?;
    io.flush().await
}

/// Closes a hop between streams (server side, `cordon-hop/2`): `GOAWAY`, then [`linger`].
pub async fn go_away<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    if tokio::time::timeout(LINGER, io.write_all(&header(GOAWAY, 0))).await.is_err() {
        return;
    }
    linger(io).await;
}

/// Ends our side of a hop the server has said `GOAWAY` on, then reads and drops whatever the
/// client still sends until it closes or [`LINGER`] passes: a stream the client sent before it
/// read `GOAWAY` must not make the kernel reset the connection, and so lose the `GOAWAY`.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    if tokio::time::timeout(LINGER, io.shutdown()).await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        while let Ok(1..) = io.read(&mut sink).await {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Waits for the next stream on `io` (server side): true when it opens, false when the client
/// closed the hop between streams. Any other frame is a protocol error.
pub async fn next_stream<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<bool> {
    let mut h = [0u8; HEADER];
    match io.read(&mut h[..1]).await {
        Ok(0) => return Ok(false),
        Ok(_) => {}
        // A client that drops the connection without close_notify, between streams, is fine.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    io.read_exact(&mut h[1..]).await?;
    match h {
        [OPEN, 0, 0, 0] => Ok(true),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected a hop OPEN frame, got {h:?}"))),
    }
}

enum Reading {
    Header { buf: [u8; HEADER], have: usize },
    Data { left: usize },
    Fin,
}

/// One app connection's bytes on a hop, as a byte stream: reads end at the peer's `FIN`,
/// `shutdown` sends ours. Borrowing the connection, it leaves it ready for the next stream.
pub struct HopStream<'a, S> {
    io: &'a mut S,
    reading: Reading,
    /// The header being written and how much of it is out.
    out_header: [u8; HEADER],
    out_sent: usize,
    /// Payload bytes the last DATA header announced that are not written yet.
    frame_left: usize,
    fin: Fin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fin {
    No,
    Sending,
    Sent,
}

impl<'a, S> HopStream<'a, S> {
    pub fn new(io: &'a mut S) -> Self {
        Self {
            io,
            reading: Reading::Header { buf: [0; HEADER], have: 0 },
            out_header: [0; HEADER],
            out_sent: HEADER,
            frame_left: 0,
            fin: Fin::No,
        }
    }

    /// Both sides sent `FIN` and nothing is half written: the connection can carry another stream.
    pub fn is_finished(&self) -> bool {
        matches!(self.reading, Reading::Fin) && self.fin == Fin::Sent && self.out_sent == HEADER
    }
}

fn eof_mid_stream() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the hop in the middle of a connection")
}

impl<S: AsyncRead + Unpin> AsyncRead for HopStream<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.reading {
                Reading::Fin => return Poll::Ready(Ok(())),
                Reading::Data { left } => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = (*left).min(buf.remaining());
                    let n = {
                        let mut inner = ReadBuf::new(buf.initialize_unfilled_to(want));
                        ready!(Pin::new(&mut *this.io).poll_read(cx, &mut inner))?;
                        inner.filled().len()
                    };
                    if n == 0 {
                        return Poll::Ready(Err(eof_mid_stream()));
                    }
                    buf.advance(n);
                    *left -= n;
                    if *left == 0 {
                        this.reading = Reading::Header { buf: [0; HEADER], have: 0 };
                    }
                    return Poll::Ready(Ok(()));
                }
                Reading::Header { buf: h, have } => {
                    let n = {
                        let mut inner = ReadBuf::new(&mut h[*have..]);
                        ready!(Pin::new(&mut *this.io).poll_read(cx, &mut inner))?;
                        inner.filled().len()
                    };
                    if n == 0 {
                        return Poll::Ready(Err(eof_mid_stream()));
                    }
                    *have += n;
                    if *have < HEADER {
                        continue;
                    }
                    let len = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
                    this.reading = match (h[0], len) {
                        (DATA, 0) => Reading::Header { buf: [0; HEADER], have: 0 },
                        (DATA, len) => Reading::Data { left: len },
                        (FIN, 0) => Reading::Fin,
                        (kind, len) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("unexpected hop frame (kind {kind}, {len} bytes) in a connection"),
                            )));
                        }
                    };
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> HopStream<'_, S> {
    /// Writes what is left of the pending header, with up to `data.len()` payload bytes behind it
    /// in the same write. Returns how many payload bytes went out.
    fn poll_write_header(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        while self.out_sent < HEADER {
            let rest = &self.out_header[self.out_sent..];
            let bufs = [io::IoSlice::new(rest), io::IoSlice::new(data)];
            let n = ready!(Pin::new(&mut *self.io).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n > rest.len() {
                let carried = n - rest.len();
                self.out_sent = HEADER;
                return Poll::Ready(Ok(carried));
            }
            self.out_sent += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HopStream<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.fin != Fin::No {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.out_sent == HEADER && this.frame_left == 0 {
            let len = buf.len().min(MAX_FRAME);
            this.out_header = header(DATA, len);
            this.out_sent = 0;
            this.frame_left = len;
        }
        let data = &buf[..buf.len().min(this.frame_left)];
        let mut n = ready!(this.poll_write_header(cx, data))?;
        if n == 0 {
            n = ready!(Pin::new(&mut *this.io).poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        this.frame_left -= n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    /// Sends `FIN` (the connection itself stays open for the next stream).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fin == Fin::No {
            if this.frame_left > 0 || this.out_sent < HEADER {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "hop stream shut down in the middle of a frame",
                )));
            }
            this.out_header = header(FIN, 0);
            this.out_sent = 0;
            this.fin = Fin::Sending;
        }
        if this.fin == Fin::Sending {
            ready!(this.poll_write_header(cx, &[]))?;
            this.fin = Fin::Sent;
        }
        Pin::new(&mut *this.io).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn streams_follow_one_another_on_one_connection() {
        let (mut client, mut server) = duplex(64);
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            while next_stream(&mut server).await.unwrap() {
                let mut s = HopStream::new(&mut server);
                let mut req = Vec::new();
                s.read_to_end(&mut req).await.unwrap();
                s.write_all(&req.repeat(2)).await.unwrap();
                s.shutdown().await.unwrap();
                assert!(s.is_finished());
                got.push(req);
            }
            got
        });
        for i in 0..3u8 {
            // A payload larger than the pipe and than a frame, so writes come back partial.
            let payload = vec![i; MAX_FRAME + 1000];
            open(&mut client, &payload[..10]).await.unwrap();
            let mut s = HopStream::new(&mut client);
            s.write_all(&payload[10..]).await.unwrap();
            s.shutdown().await.unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await.unwrap();
            assert!(s.is_finished());
            assert_eq!(reply, payload.repeat(2));
        }
        drop(client);
        let got = server.await.unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().enumerate().all(|(i, r)| r.len() == MAX_FRAME + 1000 && r[0] == i as u8));
    }

    #[tokio::test]
    async fn a_connection_closed_mid_stream_is_an_error_not_an_end() {
        let (mut client, mut server) = duplex(1024);
        open(&mut client, b"half a request").await.unwrap();
        drop(client);
        assert!(next_stream(&mut server).await.unwrap());
        let mut s = HopStream::new(&mut server);
        let mut got = Vec::new();
        let err = s.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"half a request");
        assert!(!s.is_finished());
    }

    #[tokio::test]
    async fn bad_frames_are_refused() {
        let (mut client, mut server) = duplex(1024);
        client.write_all(&header(DATA, 3)).await.unwrap();
        client.write_all(b"abc").await.unwrap();
        let err = next_stream(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let (mut client, mut server) = duplex(1024);
        client.write_all(&header(OPEN, 0)).await.unwrap();
        client.write_all(&header(9, 2)).await.unwrap();
        assert!(next_stream(&mut server).await.unwrap());
        let err = HopStream::new(&mut server).read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_stream_not_finished_both_ways_is_not_reusable() {
        let (mut client, mut server) = duplex(1024);
        open(&mut client, b"").await.unwrap();
        let mut s = HopStream::new(&mut client);
        s.shutdown().await.unwrap();
        assert!(!s.is_finished(), "the server has not sent FIN yet");
        assert!(next_stream(&mut server).await.unwrap());
        let mut srv = HopStream::new(&mut server);
        assert_eq!(srv.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert!(!srv.is_finished(), "FIN received but not sent");
        // Writing after our own FIN is refused.
        srv.shutdown().await.unwrap();
        assert!(srv.write(b"late").await.is_err());
    }

    #[tokio::test]
    async fn goaway_answers_an_open_the_server_never_read_and_ack_one_it_did() {
        let (mut client, mut server) = duplex(1024);
        let closing = tokio::spawn(async move { go_away(&mut server).await });
        open(&mut client, b"first bytes").await.unwrap();
        assert_eq!(answer(&mut client).await.unwrap(), Answer::GoneAway);
        drop(client);
        // The server drops what came after GOAWAY, and stops lingering when the client closes.
        tokio::time::timeout(LINGER / 2, closing).await.unwrap().unwrap();

        let (mut client, mut server) = duplex(1024);
        open(&mut client, b"").await.unwrap();
        assert!(next_stream(&mut server).await.unwrap());
        ack(&mut server).await.unwrap();
        assert_eq!(answer(&mut client).await.unwrap(), Answer::Accepted);
        // A close without GOAWAY is an error: the server may have taken the connection.
        open(&mut client, b"").await.unwrap();
        drop(server);
        assert!(answer(&mut client).await.is_err());
    }
}
