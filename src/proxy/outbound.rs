//! The outbound proxy: on the local port an app already dials, it picks a backend of the service
//! from the live discovery snapshot, dials its mTLS port with this host's identity, checks that
//! the server is the service expected, and relays. Backends that have not migrated (no
//! `cordon_mtls_port` in discovery) are dialled in plaintext on their own port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cordon_discovery::{Backend, Snapshot};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{Balancer, ConnCount, Lifecycle, accept_loop, relay};
use crate::agent::config::ProxySettings;
use crate::metrics::ListenerMetrics;
use crate::pki::{RejectReason, ServiceName, TlsStore, server_name};

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
}

/// A connection to a backend: over mTLS, or plaintext to a backend not yet migrated.
enum Upstream {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Outbound {
    /// Serves `listener` until the lifecycle stops accepting.
    pub async fn run(self: Arc<Self>, listener: TcpListener, life: Lifecycle) {
        let max = self.settings.max_connections;
        let force = life.force_close.clone();
        accept_loop(listener, max, life, move |stream, peer| {
            let this = self.clone();
            let cancel = force.child_token();
            let span =
                info_span!("outbound", destination = %this.service, identity = %this.identity, app = %peer);
            async move { this.handle(stream, cancel).await }.instrument(span)
        })
        .await;
    }

    async fn handle(&self, mut client: TcpStream, cancel: CancellationToken) {
        let _counted = ConnCount::new(&self.metrics);
        if let Some(mut upstream) = self.dial().await {
            let carried = match &mut upstream {
                Upstream::Tls(tls) => {
                    relay(&mut client, tls.as_mut(), self.settings.idle_timeout, &cancel).await
                }
                Upstream::Plain(tcp) => relay(&mut client, tcp, self.settings.idle_timeout, &cancel).await,
            };
            self.metrics.bytes_to_destination.inc_by(carried.forward);
            self.metrics.bytes_to_source.inc_by(carried.back);
            debug!(forward = carried.forward, back = carried.back, end = ?carried.end, "closed");
        }
    }

    /// Tries the backends in balancer order until one connects (and, over mTLS, proves to be the
    /// expected service). None when every backend failed; the local connection is then closed.
    async fn dial(&self) -> Option<Upstream> {
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
            match self.dial_one(backend).await {
                Ok(upstream) => {
                    if attempt > 0 {
                        self.metrics.failovers.inc();
                    }
                    return Some(upstream);
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

    async fn dial_one(&self, backend: &Backend) -> Result<Upstream, DialError> {
        let port = backend.mtls_port.unwrap_or(backend.port);
        let addr = resolve(&backend.host, port, self.settings.connect_timeout).await?;
        let tcp = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| DialError::ConnectTimeout(addr))?
            .map_err(|e| DialError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        if backend.mtls_port.is_none() {
            return Ok(Upstream::Plain(tcp));
        }
        let config = self.tls.client_config(&self.identity, &self.service).ok_or(DialError::NoIdentity)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = connector.connect(server_name(&self.service), tcp);
        match tokio::time::timeout(self.settings.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => {
                self.metrics.handshake(tls.get_ref().1.handshake_kind());
                Ok(Upstream::Tls(Box::new(tls)))
            }
            Ok(Err(e)) => {
                let reason = RejectReason::classify(&e);
                self.metrics.handshake_failure(reason);
                Err(DialError::Handshake { addr, reason, error: e })
            }
            Err(_) => {
                self.metrics.handshake_failure(RejectReason::Timeout);
                Err(DialError::HandshakeTimeout(addr))
            }
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
