//! The outbound proxy: on the local port an app already dials, it picks a backend of the service
//! from the live discovery snapshot, dials its mTLS port with this host's identity, checks that
//! the server is the service expected, and relays. Backends that have not migrated (no
//! `cordon_mtls_port` in discovery) are dialled in plaintext on their own port.
//!
//! When the backend's cordon agrees to the reusable hop (`proxy::hop`), the mTLS connection goes
//! back to a pool after the app connection and carries the next one to that backend. On
//! `cordon-hop/2`, an app connection whose hop the inbound closed before reading it (`GOAWAY`
//! where `ACK` was awaited) goes out again on another hop with the same first bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cordon_discovery::{Backend, Snapshot};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::hop::mux::{self, MuxPool, MuxStream, Taken};
use super::hop::{self, Answer, Hop, HopPool, HopStream, Version};
use super::{Balancer, ConnCount, End, Lifecycle, ProxySettings, accept_loop, relay};
use crate::metrics::ListenerMetrics;
use crate::pki::{HopOffer, RejectReason, ServiceName, TlsStore, server_name};

/// One outbound listener's shared state.
pub struct Outbound {
    /// The service dialled through this listener.
    pub service: ServiceName,
    /// The identity this host presents to that service.
    pub identity: ServiceName,
    pub tls: Arc<TlsStore>,
    pub discovery: watch::Receiver<Arc<Snapshot>>,
    pub metrics: ListenerMetrics,
    pub settings: ProxySettings,
    pub balancer: Balancer,
    /// Idle framed hops to backends that agreed to reuse.
    pub pool: HopPool,
    /// HTTP/2 hops to backends that agreed to them, shared by the app connections on them.
    pub mux: MuxPool,
}

/// A connection to a backend: a reusable hop, one mTLS connection for this app connection only,
/// or plaintext to a backend not yet migrated.
enum Upstream {
    Hop { hop: Hop, backend: SocketAddr },
    Mux(MuxStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Outbound {
    /// Serves `listener` until the lifecycle stops accepting.
    pub async fn run(self: Arc<Self>, listener: TcpListener, life: Lifecycle) {
        let max = self.settings.max_connections;
        let force = life.force_close.clone();
        let sweeper = tokio::spawn({
            let this = self.clone();
            let stop = life.stop_accepting.clone();
            async move {
                let mut tick = tokio::time::interval(hop::CLIENT_IDLE / 3);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            this.pool.sweep();
                            this.mux.sweep();
                        }
                        _ = stop.cancelled() => return,
                    }
                }
            }
        });
        let this = self.clone();
        accept_loop(listener, max, life, move |stream, peer| {
            let this = this.clone();
            let cancel = force.child_token();
            let span =
                info_span!("outbound", destination = %this.service, identity = %this.identity, app = %peer);
            async move { this.handle(stream, cancel).await }.instrument(span)
        })
        .await;
        sweeper.abort();
    }

    async fn handle(&self, mut client: TcpStream, cancel: CancellationToken) {
        let _counted = ConnCount::new(&self.metrics);
        // Boxed: the dial's state (a TLS handshake in progress) lives only as long as the dial,
        // not in every open connection's task for as long as it relays.
        let Some(upstream) = Box::pin(self.dial(&mut client)).await else { return };
        let idle = self.settings.idle_timeout;
        let carried = match upstream {
            Upstream::Hop { mut hop, backend } => {
                let mut stream = HopStream::new(&mut *hop.conn);
                let carried = relay(&mut client, &mut stream, idle, &cancel).await;
                if carried.end == End::Done && stream.is_finished() {
                    self.pool.put(backend, hop);
                }
                carried
            }
            Upstream::Mux(mut stream) => relay(&mut client, &mut stream, idle, &cancel).await,
            Upstream::Tls(mut tls) => relay(&mut client, tls.as_mut(), idle, &cancel).await,
            Upstream::Plain(mut tcp) => relay(&mut client, &mut tcp, idle, &cancel).await,
        };
        self.metrics.bytes_to_destination.inc_by(carried.forward);
        self.metrics.bytes_to_source.inc_by(carried.back);
        debug!(forward = carried.forward, back = carried.back, end = ?carried.end, "closed");
    }

    /// Tries the backends in balancer order until one connects (and, over mTLS, proves to be the
    /// expected service). None when every backend failed; the local connection is then closed.
    async fn dial(&self, client: &mut TcpStream) -> Option<Upstream> {
        let snapshot = self.discovery.borrow().clone();
        let backends = snapshot.backends(self.service.as_str());
        let order = self.balancer.order(backends);
        if order.is_empty() {
            self.metrics.no_backend.inc();
            warn!("no backend for this service in discovery; refusing the local connection");
            return None;
        }
        for (attempt, &i) in order.iter().enumerate() {
            let backend = &backends[i];
            match self.dial_one(backend, client).await {
                Ok(upstream) => {
                    if attempt > 0 {
                        self.metrics.failovers.inc();
                    }
                    return Some(upstream);
                }
                Err(e @ (DialError::Lost(..) | DialError::Refused(..))) => {
                    // The backend may have the app connection: sending it elsewhere could run it twice.
                    warn!(backend = %backend.host, error = %e, "closing the local connection");
                    return None;
                }
                Err(e) => {
                    self.metrics.connect_failures.inc();
                    warn!(backend = %backend.host, port = backend.mtls_port.unwrap_or(backend.port), error = %e, "backend failed, trying the next");
                }
            }
        }
        self.metrics.no_backend.inc();
        warn!(tried = order.len(), "no backend reachable; refusing the local connection");
        None
    }

    async fn dial_one(&self, backend: &Backend, client: &mut TcpStream) -> Result<Upstream, DialError> {
        let port = backend.mtls_port.unwrap_or(backend.port);
        let addr = resolve(&backend.host, port, self.settings.connect_timeout).await?;
        let generation = self.tls.client_generation();
        let offer = self.settings.hop_offer();
        if backend.mtls_port.is_some() && offer == HopOffer::H2 {
            while let Some(taken) = self.mux.take(addr, generation) {
                let busy = taken.busy.clone();
                match self.open_mux(taken, client).await {
                    Ok(stream) => {
                        self.metrics.hop_reused.inc();
                        return Ok(Upstream::Mux(stream));
                    }
                    Err(e) => {
                        let e = e.unseen(addr)?;
                        // Going away (GOAWAY) or refusing streams: the next one, or a new one.
                        self.mux.forget(addr, &busy);
                        self.metrics.hop_retried.inc();
                        debug!(error = %e, "the HTTP/2 hop did not take this connection; opening it elsewhere");
                    }
                }
            }
        }
        if backend.mtls_port.is_some() && offer != HopOffer::None {
            while let Some(mut hop) = self.pool.take(addr) {
                if hop.generation != generation {
                    // Made under another bundle or with our old certificate: close it, dial afresh.
                    continue;
                }
                // The server may have closed it this very moment: then open on another one.
                match self.open(&mut hop, client).await {
                    Ok(()) => {
                        self.metrics.hop_reused.inc();
                        return Ok(Upstream::Hop { hop, backend: addr });
                    }
                    Err(e) => {
                        let e = e.unseen(addr)?;
                        self.metrics.hop_retried.inc();
                        debug!(error = %e, "the hop closed before carrying this connection; opening it elsewhere");
                    }
                }
            }
        }
        let tcp = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| DialError::ConnectTimeout(addr))?
            .map_err(|e| DialError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        if backend.mtls_port.is_none() {
            return Ok(Upstream::Plain(tcp));
        }
        let config = self
            .tls
            .client_config(&self.identity, &self.service, addr, offer)
            .ok_or(DialError::NoIdentity)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = connector.connect(server_name(&self.service), tcp);
        let tls = match tokio::time::timeout(self.settings.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = RejectReason::classify(&e);
                self.metrics.handshake_failure(reason);
                return Err(DialError::Handshake { addr, reason, error: e });
            }
            Err(_) => {
                self.metrics.handshake_failure(RejectReason::Timeout);
                return Err(DialError::HandshakeTimeout(addr));
            }
        };
        self.metrics.handshake(tls.get_ref().1.handshake_kind());
        let Some(version) = Version::from_alpn(tls.get_ref().1.alpn_protocol()) else {
            return Ok(Upstream::Tls(Box::new(tls)));
        };
        let opened = if version == Version::H2 {
            let taken = self.start_mux(tls, addr, generation).await?;
            self.open_mux(taken, client).await.map(Upstream::Mux)
        } else {
            let mut hop = Hop { conn: Box::new(tls), version, born: std::time::Instant::now(), generation };
            self.open(&mut hop, client).await.map(|()| Upstream::Hop { hop, backend: addr })
        };
        opened.or_else(|e| {
            let e = e.unseen(addr)?;
            // A server that went away at once (it is stopping): the next backend gets it.
            self.metrics.hop_retried.inc();
            Err(DialError::Open(addr, e))
        })
    }

    /// Starts HTTP/2 on a new mTLS connection to `addr`: its task runs on its own (until no
    /// stream and no pool entry is left), and it joins the pool, taken for the connection that
    /// made it.
    async fn start_mux(
        &self,
        tls: tokio_rustls::client::TlsStream<TcpStream>,
        addr: SocketAddr,
        generation: u64,
    ) -> Result<Taken, DialError> {
        let handshake = mux::client_builder().handshake::<_, bytes::Bytes>(tls);
        let (send, connection) = tokio::time::timeout(self.settings.handshake_timeout, handshake)
            .await
            .map_err(|_| DialError::HandshakeTimeout(addr))?
            .map_err(|e| DialError::Open(addr, mux::io_error(e)))?;
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = closed.clone();
        let span = info_span!("hop", destination = %self.service, backend = %addr);
        tokio::spawn(
            async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "the HTTP/2 hop ended with an error");
                }
                ended.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            .instrument(span),
        );
        Ok(self.mux.add(addr, send, generation, closed))
    }

    /// Starts an app connection as a stream of an HTTP/2 hop, the app's first bytes (when they
    /// are already here) right behind its `CONNECT`. As on the framed hop, they are only taken
    /// from the app's socket once the server answered `200`.
    async fn open_mux(&self, taken: Taken, client: &mut TcpStream) -> Result<MuxStream, OpenError> {
        let limit = self.settings.handshake_timeout;
        let Taken { send, busy } = taken;
        let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
        let mut send = match tokio::time::timeout(limit, send.ready()).await {
            Ok(Ok(send)) => send,
            Ok(Err(e)) => return Err(OpenError::Unseen(mux::io_error(e))),
            Err(_) => return Err(OpenError::Unseen(timed_out())),
        };
        let request = mux::connect_request(self.service.as_str())
            .map_err(|e| OpenError::Unseen(std::io::Error::other(e)))?;
        let (response, mut out) =
            send.send_request(request, false).map_err(|e| OpenError::Unseen(mux::io_error(e)))?;
        let mut first = vec![0u8; 4096];
        let n = hop::peek_now(client, &mut first);
        if n > 0 {
            // A failure here shows in the answer.
            let _ = out.send_data(bytes::Bytes::copy_from_slice(&first[..n]), false);
        }
        let response = match tokio::time::timeout(limit, response).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if mux::never_seen(&e) => return Err(OpenError::Unseen(mux::io_error(e))),
            Ok(Err(e)) => return Err(OpenError::Lost(mux::io_error(e))),
            Err(_) => return Err(OpenError::Lost(timed_out())),
        };
        if response.status() != http::StatusCode::OK {
            return Err(OpenError::Refused(response.status()));
        }
        client.read_exact(&mut first[..n]).await.map_err(OpenError::Lost)?;
        Ok(MuxStream::new(out, response.into_body(), Some(busy)))
    }

    /// Starts an app connection on `hop`, with the app's first bytes in the same TLS record when
    /// they are already here. They are only taken from the app's socket once the server has them
    /// (on `cordon-hop/2`, once it says `ACK`), so a hop closed under them loses nothing: they
    /// are still there for the next hop.
    async fn open(&self, hop: &mut Hop, client: &mut TcpStream) -> Result<(), OpenError> {
        // On the heap for the moment it is needed, not in the connection's task for its life.
        let mut first = vec![0u8; 4096];
        let n = hop::peek_now(client, &mut first);
        hop::open(&mut *hop.conn, &first[..n]).await.map_err(OpenError::Unseen)?;
        if hop.version == Version::V2 {
            // The server answers as soon as it reads OPEN, before it dials its app.
            let answer = tokio::time::timeout(self.settings.handshake_timeout, hop::answer(&mut *hop.conn))
                .await
                .map_err(|_| OpenError::Lost(std::io::ErrorKind::TimedOut.into()))?
                .map_err(OpenError::Lost)?;
            if answer == Answer::GoneAway {
                return Err(OpenError::Unseen(std::io::Error::other(
                    "the backend's agent closed the hop before reading this connection (GOAWAY)",
                )));
            }
        }
        client.read_exact(&mut first[..n]).await.map_err(OpenError::Lost)?;
        Ok(())
    }
}

/// Why an app connection could not start on a hop.
enum OpenError {
    /// The server cannot have seen it (our write failed, or it said `GOAWAY` first): the app's
    /// bytes are still in its socket, for another hop.
    Unseen(std::io::Error),
    /// The server may have it (the hop broke after `OPEN`, with no `GOAWAY`).
    Lost(std::io::Error),
    /// The server answered it with a refusal (an HTTP/2 hop: the policy refused it, `403`, or
    /// the app could not be reached, `502`).
    Refused(http::StatusCode),
}

impl OpenError {
    /// Why the server never saw the connection (it may go out again elsewhere), or, when it may
    /// have seen it or refused it, the error that ends the dial to `addr`.
    fn unseen(self, addr: SocketAddr) -> Result<std::io::Error, DialError> {
        match self {
            OpenError::Unseen(e) => Ok(e),
            OpenError::Lost(e) => Err(DialError::Lost(addr, e)),
            OpenError::Refused(status) => Err(DialError::Refused(addr, status)),
        }
    }
}

/// Why one backend could not be used.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("no certificate for this host's identity")]
    NoIdentity,
    #[error("TLS handshake with {addr} refused ({}): {error}", reason.as_str())]
    Handshake { addr: SocketAddr, reason: RejectReason, error: std::io::Error },
    #[error("TLS handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    #[error("starting a connection on the hop to {0}: {1}")]
    Open(SocketAddr, std::io::Error),
    #[error("the hop to {0} broke after the connection started on it: {1}")]
    Lost(SocketAddr, std::io::Error),
    #[error("the agent at {0} refused the connection ({1})")]
    Refused(SocketAddr, http::StatusCode),
}

/// An IP literal at once; a host name through the system resolver, bounded by `timeout`.
async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, DialError> {
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| DialError::Resolve(host.to_string(), std::io::ErrorKind::TimedOut.into()))?
        .map_err(|e| DialError::Resolve(host.to_string(), e))?;
    lookup.into_iter().next().ok_or_else(|| DialError::NoAddress(host.to_string()))
}
