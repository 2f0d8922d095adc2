//! One small HTTP/1.1 server for cordon's control-plane endpoints (the signing service, the
//! agent's admin endpoint, the store's ingest service), on [`super::accept_loop`]'s lifecycle: a
//! cap on connections, accept errors backed off, connections tracked so shutdown drains them.
//!
//! What every server gets from it, so a fix for one is a fix for all:
//! - **One request per connection**, and **one deadline per request** ([`HttpLimits::deadline`])
//!   from the accept to the last byte of the body: the TLS handshake, the headers and the body
//!   together. A client that sends slowly is cut at the deadline (answered 408 when the headers
//!   were in) and holds its slot no longer.
//! - **Per-source limits**: at most [`HttpLimits::per_source_connections`] open connections and
//!   [`HttpLimits::per_source_rate`] new ones a second per source address. Past either, the
//!   connection is closed at accept, before any TLS work, and counted.
//! - **Bodies bounded** ([`HttpLimits::max_body`]; past it 413), and **every answer counted** by
//!   status in [`HttpStats`], which renders itself for `/metrics`.
//!
//! The handler receives the whole request (body read) and the connection's [`ConnInfo`]; it
//! does its own work under no deadline of this module, and must bound it itself. Refusals here are
//! logged through a [`LogBudget`], so a flood writes a bounded number of lines.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::Lifecycle;

/// The limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; further ones wait in the kernel backlog.
    pub max_connections: usize,
    /// Open connections one source address may hold.
    pub per_source_connections: usize,
    /// New connections a second one source address may open (a bucket of this many, refilled at
    /// this rate); 0 for no limit.
    pub per_source_rate: u32,
    /// From accept to the last byte of the request body.
    pub deadline: Duration,
    /// Largest request body, in bytes.
    pub max_body: usize,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The client's certificate chain, leaf first (empty without TLS or without a certificate).
    pub certs: Vec<CertificateDer<'static>>,
}

/// What a server answered and refused, for its `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Answers by HTTP status.
    answers: Mutex<BTreeMap<u16, u64>>,
    /// Connections closed without an answer, by cause.
    closed: Mutex<BTreeMap<&'static str, u64>>,
    /// Refusals' log lines.
    budget: LogBudget,
}

/// Why a connection was closed without an answer.
pub const CLOSE_CAUSES: [&str; 3] = ["source_connections", "source_rate", "deadline"];

impl HttpStats {
    fn answered(&self, status: StatusCode) {
        *self.answers.lock().unwrap_or_else(|p| p.into_inner()).entry(status.as_u16()).or_default() += 1;
    }

    fn closed(&self, cause: &'static str, peer: SocketAddr) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()).entry(cause).or_default() += 1;
        if let Some(more) = self.budget.admit(cause) {
            tracing::warn!(%peer, cause, suppressed_before = more, "connection closed without an answer");
        }
    }

    /// Answers so far with this status.
    pub fn answers(&self, status: u16) -> u64 {
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).get(&status).copied().unwrap_or(0)
    }

    /// The samples of `http_responses_total{code}` (answers by HTTP status) and
    /// `http_closed_total{cause}` (connections closed without an answer), for a server's
    /// registry ([`crate::metrics::ScrapeCollector`]).
    pub fn samples(&self) -> (Vec<crate::metrics::Sample>, Vec<crate::metrics::Sample>) {
        let answers = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(code, n)| (vec![("code", code.to_string())], *n as f64))
            .collect();
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let closed = CLOSE_CAUSES
            .iter()
            .map(|cause| (vec![("cause", cause.to_string())], closed.get(cause).copied().unwrap_or(0) as f64))
            .collect();
        (answers, closed)
    }

    /// Registers both families on `registry`, named after its prefix (`PREFIX_http_responses_total`,
    /// `PREFIX_http_closed_total`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use crate::metrics::{Kind, ScrapeCollector};
        let (answers, closed) = self.samples();
        registry.register_collector(Box::new(ScrapeCollector::new(
            "http_responses",
            "Answers, by HTTP status",
            Kind::Counter,
            move || answers.clone(),
        )));
        registry.register_collector(Box::new(ScrapeCollector::new(
            "http_closed",
            "Connections closed without an answer, by cause",
            Kind::Counter,
            move || closed.clone(),
        )));
    }
}

/// Bounds log lines per cause: at most [`LogBudget::LINES`] a minute each; the first line after a
/// quiet spell says how many were left out before it.
#[derive(Debug, Default)]
pub struct LogBudget {
    by_cause: Mutex<HashMap<String, (Instant, u32, u64)>>,
}

impl LogBudget {
    /// Lines per cause per minute.
    pub const LINES: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(60);

    /// Some(lines left out before this one) when a line for `cause` may be written now.
    pub fn admit(&self, cause: &str) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.by_cause.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(cause.to_string()).or_insert((now, 0, 0));
        if now.duration_since(entry.0) >= Self::WINDOW {
            entry.0 = now;
            entry.1 = 0;
        }
        if entry.1 >= Self::LINES {
            entry.2 += 1;
            return None;
        }
        entry.1 += 1;
        Some(std::mem::take(&mut entry.2))
    }
}

/// Open connections and the rate bucket of one source address.
#[derive(Debug)]
struct Source {
    open: usize,
    tokens: f64,
    at: Instant,
}

/// The per-source table; entries with nothing open and a full bucket are dropped as it grows.
#[derive(Debug, Default)]
struct Sources(Mutex<HashMap<IpAddr, Source>>);

impl Sources {
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &HttpLimits) -> Result<SourceGuard, &'static str> {
        let now = Instant::now();
        let rate = f64::from(limits.per_source_rate);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 65_536 {
            map.retain(|_, s| {
                s.open > 0 || (rate > 0.0 && now.duration_since(s.at).as_secs_f64() * rate < rate)
            });
        }
        let s = map.entry(ip).or_insert(Source { open: 0, tokens: rate, at: now });
        if s.open >= limits.per_source_connections {
            return Err("source_connections");
        }
        if rate > 0.0 {
            s.tokens = (s.tokens + now.duration_since(s.at).as_secs_f64() * rate).min(rate);
            s.at = now;
            if s.tokens < 1.0 {
                return Err("source_rate");
            }
            s.tokens -= 1.0;
        }
        s.open += 1;
        Ok(SourceGuard { sources: self.clone(), ip })
    }
}

/// One open connection of a source; released when dropped.
struct SourceGuard {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut map = self.sources.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&self.ip) {
            s.open = s.open.saturating_sub(1);
        }
    }
}

/// A plain-text answer.
pub fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// The server config in force when a connection arrives, for a server whose certificate is
/// renewed while it runs; None while there is none (the connection is closed).
pub type CurrentTls = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

/// Serves `listener` until `life.stop_accepting`, with TLS when `tls` is given. `handler` gets
/// each request with its body read.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    life: Lifecycle,
    handler: F,
) where
    F: Fn(Request<Bytes>, Arc<ConnInfo>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let tls: Option<CurrentTls> = tls.map(|acceptor| {
        let config = acceptor.config().clone();
        Arc::new(move || Some(config.clone())) as CurrentTls
    });
    serve_current(listener, tls, limits, stats, life, handler).await
}

/// [`serve`], each connection's TLS from `tls` as it is at the accept: a renewed certificate is
/// presented from the next connection on, without a restart.
pub async fn serve_current<F, Fut>(
    listener: TcpListener,
    tls: Option<CurrentTls>,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    life: Lifecycle,
    handler: F,
) where
    F: Fn(Request<Bytes>, Arc<ConnInfo>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let sources = Arc::new(Sources::default());
    let force = life.force_close.clone();
    super::accept_loop(listener, limits.max_connections, life, move |tcp: TcpStream, peer| {
        let admitted = sources.admit(peer.ip(), &limits);
        let (tls, stats, handler, force) = (tls.clone(), stats.clone(), handler.clone(), force.clone());
        async move {
            let _guard = match admitted {
                Ok(g) => g,
                Err(cause) => return stats.closed(cause, peer),
            };
            let deadline = tokio::time::Instant::now() + limits.deadline;
            let conn = async {
                match tls {
                    None => {
                        let info = Arc::new(ConnInfo { peer, certs: Vec::new() });
                        one_request(tcp, info, limits, deadline, &stats, handler).await
                    }
                    Some(current) => {
                        let Some(config) = current() else {
                            return tracing::debug!(%peer, "no server certificate yet; connection closed");
                        };
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => return stats.closed("deadline", peer),
                        };
                        let certs = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
                        let info = Arc::new(ConnInfo { peer, certs });
                        one_request(tls, info, limits, deadline, &stats, handler).await
                    }
                }
            };
            tokio::select! {
                _ = conn => {}
                _ = force.cancelled() => {}
            }
        }
    })
    .await;
}

/// Reads one request (headers and body by `deadline`), answers it, closes.
async fn one_request<S, F, Fut>(
    io: S,
    info: Arc<ConnInfo>,
    limits: HttpLimits,
    deadline: tokio::time::Instant,
    stats: &Arc<HttpStats>,
    handler: Arc<F>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Bytes>, Arc<ConnInfo>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
    let peer = info.peer;
    let st = stats.clone();
    // Set when the answer went out before the body was read (413): the close lingers.
    let unread = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused_early = unread.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (info, stats, handler, unread) =
            (info.clone(), st.clone(), handler.clone(), refused_early.clone());
        async move {
            let resp = match read_body(req, limits.max_body, deadline).await {
                Ok(req) => handler(req, info).await,
                Err(status) => {
                    if status == StatusCode::PAYLOAD_TOO_LARGE {
                        unread.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    reply(status, "text/plain", too_bad(status))
                }
            };
            stats.answered(resp.status());
            Ok::<_, Infallible>(resp)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(left)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .without_shutdown()
        .await;
    match served {
        Ok(parts) if unread.load(std::sync::atomic::Ordering::Relaxed) => linger(parts.io.into_inner()).await,
        Ok(parts) => {
            let mut io = parts.io.into_inner();
            let _ = tokio::time::timeout(LINGER, tokio::io::AsyncWriteExt::shutdown(&mut io)).await;
        }
        Err(e) if e.is_timeout() => stats.closed("deadline", peer),
        Err(_) => {}
    }
}

/// How long a connection answered before its body was read goes on being read, and how much of
/// it at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: u64 = 1 << 20;

/// Closes a connection whose request body was left unread: shuts down the sending side (the
/// answer is out, then the end), then reads and drops what the client is still sending, for at
/// most [`LINGER`] and [`LINGER_BYTES`]. Closed at once, the unread bytes would make the kernel
/// reset the connection, and a client still sending would see the reset instead of the 413.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    use tokio::io::AsyncWriteExt;
    let drain = async {
        io.shutdown().await?;
        tokio::io::copy(&mut (&mut io).take(LINGER_BYTES), &mut tokio::io::sink()).await
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn too_bad(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request too large\n",
        StatusCode::REQUEST_TIMEOUT => "request not received in time\n",
        _ => "bad request\n",
    }
}

/// The request with its whole body, or the status to answer instead.
async fn read_body(
    req: Request<hyper::body::Incoming>,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<Request<Bytes>, StatusCode> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout_at(deadline, Limited::new(body, max).collect()).await {
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Ok(Ok(body)) => Ok(Request::from_parts(parts, body.to_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_budget_bounds_lines_per_cause_and_counts_the_rest() {
        let b = LogBudget::default();
        let admitted = (0..1000).filter(|_| b.admit("flood").is_some()).count();
        assert_eq!(admitted, LogBudget::LINES as usize);
        assert_eq!(b.admit("other"), Some(0), "causes have their own budget");
    }

    /// Starts a server with a short deadline whose handler echoes the body's length.
    async fn server(deadline: Duration) -> (SocketAddr, Arc<HttpStats>, Lifecycle) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = HttpLimits {
            max_connections: 8,
            per_source_connections: 8,
            per_source_rate: 0,
            deadline,
            max_body: 1024,
        };
        let stats = Arc::new(HttpStats::default());
        let life = Lifecycle::new();
        tokio::spawn(serve(listener, None, limits, stats.clone(), life.clone(), |req, _| async move {
            reply(StatusCode::OK, "text/plain", req.body().len().to_string())
        }));
        (addr, stats, life)
    }

    /// Sends `parts` one after another, a pause between each, until the server closes; returns
    /// what it answered.
    async fn dribble(addr: SocketAddr, parts: &[&[u8]]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = TcpStream::connect(addr).await.unwrap();
        for p in parts {
            if c.write_all(p).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut out)).await;
        out
    }

    /// The stats as a scrape shows them, under the prefix `t`.
    fn rendered(stats: &HttpStats) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("t");
        stats.register(&mut registry);
        crate::exposition::encode(&registry)
    }

    #[tokio::test]
    async fn one_deadline_covers_headers_and_body_however_slowly_they_come() {
        let (addr, stats, life) = server(Duration::from_millis(400)).await;
        // Whole and on time: answered.
        let ok = dribble(addr, &[b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"]).await;
        assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with('3'), "{ok}");
        // Headers a byte at a time, for longer than the deadline: cut.
        let head: Vec<&[u8]> = std::iter::repeat_n(&b"x"[..], 100).collect();
        let mut slow_head = vec![&b"GET / HTTP/1.1\r\nx-slow: "[..]];
        slow_head.extend(head);
        let started = Instant::now();
        let cut = dribble(addr, &slow_head).await;
        assert!(started.elapsed() < Duration::from_secs(9), "cut before the client gave up");
        assert!(!cut.starts_with("HTTP/1.1 200"), "{cut}");
        // Headers on time, then the body a byte at a time: answered 408 at the deadline.
        let mut slow_body = vec![&b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"[..]];
        slow_body.extend(std::iter::repeat_n(&b"y"[..], 100));
        let cut = dribble(addr, &slow_body).await;
        assert!(cut.starts_with("HTTP/1.1 408"), "{cut}");
        // Too large: 413, counted.
        let big = dribble(addr, &[b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n"]).await;
        assert!(big.starts_with("HTTP/1.1 413"), "{big}");
        assert_eq!((stats.answers(200), stats.answers(408), stats.answers(413)), (1, 1, 1));
        assert!(
            rendered(&stats).contains("t_http_closed_total{cause=\"deadline\"} 1"),
            "{}",
            rendered(&stats)
        );
        life.stop_accepting.cancel();
    }

    /// A client that sends its whole oversized body before reading reads the 413, not a reset.
    #[tokio::test]
    async fn a_client_still_sending_reads_the_413() {
        use tokio::io::AsyncWriteExt;
        let (addr, stats, life) = server(Duration::from_secs(5)).await;
        for round in 0..8 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            // Past the limit (1 KiB here), within what a close lingers for.
            let body = vec![b'x'; 512 * 1024];
            let head = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
            c.write_all(head.as_bytes()).await.unwrap();
            // The answer is on its way while the body is still going out; a client that sends
            // its whole body before it reads (as most do) must not fail writing it.
            let sent = c.write_all(&body).await;
            assert!(sent.is_ok(), "round {round}: {sent:?}");
            let mut out = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
            assert!(matches!(read, Ok(Ok(_))), "round {round}: {read:?}");
            assert!(out.starts_with(b"HTTP/1.1 413"), "round {round}: {}", String::from_utf8_lossy(&out));
        }
        assert_eq!(stats.answers(413), 8);
        life.stop_accepting.cancel();
    }

    #[test]
    fn sources_are_limited_by_open_connections_and_rate() {
        let limits = HttpLimits {
            max_connections: 100,
            per_source_connections: 2,
            per_source_rate: 3,
            deadline: Duration::from_secs(1),
            max_body: 10,
        };
        let s = Arc::new(Sources::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = s.admit(a, &limits).unwrap();
        let _g2 = s.admit(a, &limits).unwrap();
        assert_eq!(s.admit(a, &limits).err(), Some("source_connections"));
        assert!(s.admit(b, &limits).is_ok(), "another source is not held back");
        drop(g1);
        let _g3 = s.admit(a, &limits).unwrap();
        drop(_g3);
        assert_eq!(s.admit(a, &limits).err(), Some("source_rate"), "3 a second, burst 3");
    }
}
