//! The inbound proxy: in front of a local app, it takes mTLS from other hosts' cordon (and, while
//! the service learns, plaintext from hosts not yet migrated), identifies the caller, asks the
//! policy, records the connection, and relays to the app.
//!
//! A denied caller is refused before cordon dials the app, so the app never sees an accept. Open
//! connections are decided again whenever the policy, the trust bundle or the revocation list
//! changes.
//!
//! Another cordon may offer the reusable hop (`proxy::hop`): then one mTLS connection carries its
//! app connections one after another (or, over HTTP/2, many at once), each decided, recorded and
//! counted on its own. On `cordon-hop/2` and HTTP/2 an idle hop is never closed silently:
//! `GOAWAY` tells the outbound that a connection it has just started there was not seen, so it
//! starts it again elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cordon_discovery::Snapshot;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::hop::{self, HopStream, MuxStream, Version};
use super::{ConnCount, End, Lifecycle, Progress, ProxySettings, accept_loop, relay_reporting};
use crate::base::{BundleId, Caller};
use crate::ledger::{EdgeKey, Event, RecorderHandle};
use crate::metrics::ListenerMetrics;
use crate::pki::{HOP_ALPNS, RejectReason, ServiceName, TlsStore, peer_of};
use crate::policy::{
    Decision, DecisionContext, DecisionLog, DecisionRecord, Outcome, Policy, Reason, Subject, TlsSeen, decide,
};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// One inbound listener's shared state.
pub struct Inbound {
    /// The service this listener fronts; the destination of every connection it takes.
    pub service: ServiceName,
    /// Where the app listens (usually loopback).
    pub app: SocketAddr,
    pub tls: Arc<TlsStore>,
    pub policy: watch::Receiver<Arc<Policy>>,
    pub discovery: watch::Receiver<Arc<Snapshot>>,
    pub recorder: RecorderHandle,
    pub decisions: DecisionLog,
    pub metrics: ListenerMetrics,
    pub settings: ProxySettings,
    /// The connections open now, so one task per listener can decide them again.
    pub open: OpenConns,
    /// Keeps the `info` line about a refused or would-deny caller to one a minute per caller.
    pub notices: crate::logging::Throttle,
}

/// One open connection (a plain TCP connection, an mTLS connection, or a hop carrying many app
/// connections), as the re-check sees it.
pub struct OpenConn {
    /// The caller; its bundle is brought up to date when its chain still verifies under a new one.
    caller: Mutex<Caller>,
    /// [`Caller::name`], made once.
    source: String,
    /// The client's certificate chain, to verify again when the trust bundle changes.
    chain: Option<Vec<CertificateDer<'static>>>,
    /// Cancelled to close the connection (and every app connection on it).
    cancel: CancellationToken,
    /// This host's end of the connection, for the decision log.
    local: SocketAddr,
    /// What the handshake showed (mTLS only), for the decision log.
    tls_seen: Option<Arc<TlsSeen>>,
}

impl OpenConn {
    /// The caller as of `bundle`: a certificate verified under an older bundle is verified again
    /// (it keeps its old bundle, and so is refused, when the new one does not verify it).
    fn caller(&self, tls: &TlsStore, bundle: BundleId, verified: &mut Verified) -> Caller {
        let mut caller = self.caller.lock().unwrap_or_else(|p| p.into_inner());
        if let Caller::Mtls(peer) = &mut *caller
            && peer.bundle != bundle
            && let Some(chain) = &self.chain
            && let Some(now) = verified.check(tls, chain)
        {
            peer.bundle = now;
        }
        caller.clone()
    }
}

/// Chains verified again in one pass, by leaf: many connections share a caller's certificate.
#[derive(Default)]
struct Verified(HashMap<Vec<u8>, Option<BundleId>>);

impl Verified {
    fn check(&mut self, tls: &TlsStore, chain: &[CertificateDer<'static>]) -> Option<BundleId> {
        let leaf = chain.first()?.as_ref();
        if let Some(known) = self.0.get(leaf) {
            return *known;
        }
        let result = tls.verify_client_now(chain);
        self.0.insert(leaf.to_vec(), result);
        result
    }
}

/// The open connections of one listener.
#[derive(Default)]
pub struct OpenConns {
    next: AtomicU64,
    by_id: Mutex<HashMap<u64, Arc<OpenConn>>>,
}

impl OpenConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<OpenConn>>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, conn: OpenConn) -> Registered<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(conn);
        self.lock().insert(id, conn.clone());
        Registered { conns: self, id, conn }
    }

    fn snapshot(&self) -> Vec<Arc<OpenConn>> {
        self.lock().values().cloned().collect()
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered connection; dropping it forgets the connection, however it ends.
struct Registered<'a> {
    conns: &'a OpenConns,
    id: u64,
    conn: Arc<OpenConn>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

/// Says `GOAWAY` on an HTTP/2 hop: at once when no stream is open (nothing to cut short, and the
/// last stream id it names is final), else gracefully.
fn go_away<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    h2: &mut h2::server::Connection<T, Bytes>,
    idle: bool,
) {
    if idle {
        h2.abrupt_shutdown(h2::Reason::NO_ERROR);
    } else {
        h2.graceful_shutdown();
    }
}

/// Closes a hop between streams: with `GOAWAY` on `cordon-hop/2`, so a connection the client
/// has just started on it is started again elsewhere; silently on `cordon-hop/1`.
async fn close_idle(tls: &mut tokio_rustls::server::TlsStream<TcpStream>, version: Version) {
    if version == Version::V2 {
        hop::go_away(tls).await;
    }
}

impl Inbound {
    /// Serves `listener` until the lifecycle stops accepting, and decides the open connections
    /// again whenever the policy or the trust bundle changes, until the last one has ended.
    pub async fn run(self: Arc<Self>, listener: TcpListener, life: Lifecycle) {
        life.tracker.spawn(self.clone().recheck(life.clone()));
        let max = self.settings.max_connections;
        let force = life.force_close.clone();
        let stop = life.stop_accepting.clone();
        // App connections carried as HTTP/2 streams, many per accepted connection, are held to
        // the same limit.
        let streams = Arc::new(Semaphore::new(max));
        accept_loop(listener, max, life, move |stream, peer| {
            let this = self.clone();
            let cancel = force.child_token();
            let stop = stop.clone();
            let streams = streams.clone();
            let span = info_span!(
                "inbound",
                destination = %this.service,
                peer = %peer,
                source = tracing::field::Empty,
                mode = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            async move { this.handle(stream, peer, cancel, stop, &streams).await }.instrument(span)
        })
        .await;
    }

    /// The one re-check task of this listener: on every new policy, trust bundle or revocation
    /// list, each open connection is decided again and closed when the decision now refuses it.
    /// A certificate the bundle in force no longer verifies, or that is revoked, is always
    /// closed; a caller the new policy refuses is closed when `close_denied_on_enforce` says so.
    async fn recheck(self: Arc<Self>, life: Lifecycle) {
        let mut policy_rx = self.policy.clone();
        let mut bundle_rx = self.tls.watch_bundle();
        let mut revoked_rx = self.tls.revocation_watch().subscribe();
        policy_rx.mark_unchanged();
        bundle_rx.mark_unchanged();
        revoked_rx.mark_unchanged();
        let mut stopping = false;
        loop {
            tokio::select! {
                changed = policy_rx.changed() => if changed.is_err() { return },
                changed = bundle_rx.changed() => if changed.is_err() { return },
                changed = revoked_rx.changed() => if changed.is_err() { return },
                _ = life.force_close.cancelled() => return,
                _ = life.stop_accepting.cancelled(), if !stopping => { stopping = true; continue }
                _ = tokio::time::sleep(Duration::from_millis(100)), if stopping => {
                    if self.open.is_empty() { return }
                    continue
                }
            }
            let policy = policy_rx.borrow_and_update().clone();
            let bundle = *bundle_rx.borrow_and_update();
            let revoked = revoked_rx.borrow_and_update().clone();
            let ctx =
                DecisionContext { now: SystemTime::now(), bundle: Some(bundle), revoked: Some(&revoked) };
            let mut verified = Verified::default();
            for conn in self.open.snapshot() {
                let caller = conn.caller(&self.tls, bundle, &mut verified);
                let d = decide(&policy, &Subject::open(&caller, &conn.source), self.service.as_str(), &ctx);
                if d.outcome.passes()
                    || !(d.reason.is_authentication() || self.settings.close_denied_on_enforce)
                {
                    continue;
                }
                info!(source = %conn.source, reason = d.reason.as_str(), rule = %d.rule,
                      "closing open connection: it is refused now");
                self.metrics.policy_closed.inc();
                conn.cancel.cancel();
            }
        }
    }

    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
        stop: CancellationToken,
        streams: &Semaphore,
    ) {
        let counted = ConnCount::new(&self.metrics);
        let started = Instant::now();
        let Ok(local) = stream.local_addr() else {
            debug!("the accepted connection is gone already");
            return;
        };
        // One deadline from accept to the end of the handshake, however the time is spent.
        let deadline = tokio::time::Instant::now() + self.settings.handshake_timeout;

        // Peek without consuming: TLS clients speak first, at once, so in either mode the first
        // byte is awaited only the first-byte time. Silence past it is a plaintext client of a
        // server-first protocol (a database greeting, say): let in while the service learns,
        // refused by the decision when it enforces (whichever mode is in force when it decides,
        // not when the connection came).
        let wait = self.settings.first_byte_timeout.min(self.settings.handshake_timeout);
        let mut first = [0u8; 1];
        let sniffed = tokio::time::timeout(wait, stream.peek(&mut first)).await;
        let is_tls = matches!(sniffed, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE;
        if let Ok(Ok(0)) | Ok(Err(_)) = sniffed {
            debug!("caller closed before sending anything");
            return;
        }

        if is_tls {
            // Boxed: the handshake's state is freed once it is done, not kept in the task.
            let Some((mut tls, hop, bundle)) = Box::pin(self.handshake(stream, deadline)).await else {
                return;
            };
            self.metrics.handshake(tls.get_ref().1.handshake_kind());
            let Some((peer_cert, chain)) = peer_of(tls.get_ref().1, bundle) else {
                // The verifier already insists on one SPIFFE ID; this is defence in depth.
                self.metrics.handshake_failure(RejectReason::NoUriSan);
                warn!("peer certificate without a service identity");
                return;
            };
            let caller = Caller::Mtls(peer_cert);
            let conn = self.open.register(OpenConn {
                source: caller.name(),
                caller: Mutex::new(caller),
                chain: Some(chain),
                cancel,
                local,
                // Kept only for a decision log that may show it.
                tls_seen: self
                    .decisions
                    .is_on()
                    .then(|| TlsSeen::of(tls.get_ref().1).map(Arc::new))
                    .flatten(),
            });
            if hop == Some(Version::H2) {
                self.serve_mux(tls, peer, &conn.conn, counted, stop, streams).await;
            } else if let Some(version) = hop {
                self.serve_hop(tls, version, peer, &conn.conn, counted, stop).await;
            } else if self.serve(&mut tls, peer, &conn.conn, started).await.is_none() {
                let _ = tls.shutdown().await;
            }
        } else {
            let snapshot = self.discovery.borrow().clone();
            let service = snapshot.service_at(peer.ip()).and_then(|s| ServiceName::new(s).ok());
            let caller = Caller::Plaintext { ip: peer.ip(), service };
            let conn = self.open.register(OpenConn {
                source: caller.name(),
                caller: Mutex::new(caller),
                chain: None,
                cancel,
                local,
                tls_seen: None,
            });
            let mut stream = stream;
            if self.serve(&mut stream, peer, &conn.conn, started).await.is_none() {
                let _ = stream.shutdown().await;
            }
        }
    }

    /// The TLS handshake, with the server config chosen after reading the client's hello: the
    /// reusable hop is agreed only with a client that offers it (a client offering some other
    /// protocol must not be refused for it). With the hop version when one was agreed.
    async fn handshake(
        &self,
        stream: TcpStream,
        deadline: tokio::time::Instant,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<Version>, BundleId)> {
        let handshake = async {
            let acceptor = rustls::server::Acceptor::default();
            let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
            let hop = self.settings.reuse_connections
                && start
                    .client_hello()
                    .alpn()
                    .is_some_and(|mut offered| offered.any(|p| HOP_ALPNS.contains(&p)));
            let Some(server) = self.tls.server_config(&self.service, hop) else {
                return Ok(None);
            };
            let tls = start.into_stream(server.config).await?;
            let version = if hop { Version::from_alpn(tls.get_ref().1.alpn_protocol()) } else { None };
            Ok(Some((tls, version, server.bundle)))
        };
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(Some(done))) => Some(done),
            Ok(Ok(None)) => {
                warn!("no certificate for this service's identity; refusing TLS");
                None
            }
            Ok(Err(e)) => {
                let reason = RejectReason::classify(&e);
                self.metrics.handshake_failure(reason);
                warn!(reason = reason.as_str(), error = %e, "TLS handshake refused");
                None
            }
            Err(_) => {
                self.metrics.handshake_failure(RejectReason::Timeout);
                warn!(reason = "timeout", "TLS handshake timed out");
                None
            }
        }
    }

    /// Serves app connections one after another on a hop, until the client closes it, one ends
    /// other than cleanly, it idles past [`hop::SERVER_IDLE`], the re-check closes it, or the
    /// agent stops. Every app connection on it is decided on its own. On `cordon-hop/2` every
    /// `OPEN` is answered with `ACK` before anything else, and a hop closed between streams says
    /// `GOAWAY` first.
    async fn serve_hop(
        &self,
        mut tls: tokio_rustls::server::TlsStream<TcpStream>,
        version: Version,
        peer: SocketAddr,
        conn: &OpenConn,
        first: ConnCount<'_>,
        stop: CancellationToken,
    ) {
        let born = Instant::now();
        let mut first = Some(first);
        loop {
            // None: the idle limit, a re-check or the agent stopping closes the hop between streams.
            let opened = tokio::select! {
                r = tokio::time::timeout(hop::SERVER_IDLE, hop::next_stream(&mut tls)) => r.ok(),
                _ = stop.cancelled() => None,
                _ = conn.cancel.cancelled() => None,
            };
            match opened {
                Some(Ok(true)) => {}
                Some(Ok(false)) => return,
                None => return close_idle(&mut tls, version).await,
                Some(Err(e)) => {
                    warn!(error = %e, "closing a hop that broke cordon's framing");
                    return;
                }
            }
            if version == Version::V2
                && let Err(e) = hop::ack(&mut tls).await
            {
                debug!(error = %e, "the hop closed as it opened a connection");
                return;
            }
            // The connection's own count covers its first app connection; each later one counts.
            let _counted = match first.take() {
                Some(c) => c,
                None => {
                    self.metrics.hop_reused.inc();
                    ConnCount::new(&self.metrics)
                }
            };
            let mut stream = HopStream::new(&mut tls);
            let span = info_span!(
                "stream",
                source = tracing::field::Empty,
                mode = tracing::field::Empty,
                outcome = tracing::field::Empty
            );
            let end = self.serve(&mut stream, peer, conn, Instant::now()).instrument(span).await;
            let reusable = end == Some(End::Done) && stream.is_finished();
            if !reusable {
                return;
            }
            if born.elapsed() > 2 * hop::MAX_AGE || stop.is_cancelled() {
                return close_idle(&mut tls, version).await;
            }
        }
    }

    /// Decides one app connection of `conn` now, with the policy, trust bundle and revocation
    /// list in force.
    fn decide_now(&self, policy: &Policy, conn: &OpenConn) -> (Caller, Decision) {
        let bundle = self.tls.bundle();
        let caller = conn.caller(&self.tls, bundle, &mut Verified::default());
        let revoked = self.tls.revocations();
        let ctx = DecisionContext { now: SystemTime::now(), bundle: Some(bundle), revoked: Some(&revoked) };
        let decision = decide(policy, &Subject::live(&caller, &conn.source), self.service.as_str(), &ctx);
        (caller, decision)
    }

    /// Counts and logs a decision (denials and would-denies go to the decision log).
    fn note_decision(&self, conn: &OpenConn, peer: SocketAddr, edge: &EdgeKey, decision: &Decision) {
        let outcome = decision.outcome;
        self.metrics.verdict(&edge.source, edge.identified, edge.mode, outcome);
        if outcome == Outcome::Denied {
            let refused = match decision.reason {
                Reason::Plaintext => Some(RejectReason::PlaintextInEnforce),
                Reason::CertificateExpired => Some(RejectReason::Expired),
                Reason::CertificateNotYetValid => Some(RejectReason::NotYetValid),
                Reason::TrustBundleChanged => Some(RejectReason::UnknownCa),
                Reason::Revoked => Some(RejectReason::Revoked),
                _ => None,
            };
            if let Some(r) = refused {
                self.metrics.handshake_failure(r);
            }
        }
        if outcome == Outcome::Allowed {
            return;
        }
        // Every connection at debug; at info one line per source and outcome a minute, saying how
        // many more there were: a learning service under an empty policy must not flood the journal.
        debug!(source = %edge.source, identified = %edge.identified, mode = %edge.mode,
               outcome = outcome.as_str(), reason = decision.reason.as_str(), rule = %decision.rule,
               "connection {}", outcome.as_str());
        if tracing::enabled!(tracing::Level::INFO) {
            let key = format!("{}\n{}", edge.source, outcome.as_str());
            if let Some(more) = self.notices.due(&key, std::time::Instant::now()) {
                info!(source = %edge.source, identified = %edge.identified, mode = %edge.mode,
                      outcome = outcome.as_str(), reason = decision.reason.as_str(), rule = %decision.rule,
                      unlogged = more, "{} -> {}: {}", 
                      edge.source, edge.destination, outcome.as_str());
            }
        }
        self.decisions.record(DecisionRecord {
            at: SystemTime::now(),
            source: edge.source.clone(),
            source_addr: peer,
            local_addr: conn.local,
            destination: edge.destination.clone(),
            mode: edge.mode,
            outcome,
            rule: decision.rule.clone(),
            reason: decision.reason,
            tls: conn.tls_seen.clone(),
            identified: edge.identified,
        });
    }

    /// Decides, records and relays one app connection of `conn`.
    /// Returns how the relay ended, or None when the connection was refused or the app not reached
    /// (the caller then closes: a hop is closed whole, so a refusal never looks like a clean end).
    async fn serve<S>(
        &self,
        client: &mut S,
        peer: SocketAddr,
        conn: &OpenConn,
        started: Instant,
    ) -> Option<End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let edge = self.admit(peer, conn)?;
        let app = self.dial_app().await?;
        Some(self.relay_app(client, app, conn, edge, started).await)
    }

    /// Decides one app connection of `conn` with the policy in force, counts, logs and records
    /// it. The edge when it may pass, None when it is refused.
    fn admit(&self, peer: SocketAddr, conn: &OpenConn) -> Option<EdgeKey> {
        let policy = self.policy.borrow().clone();
        let (caller, decision) = self.decide_now(&policy, conn);
        let edge = EdgeKey {
            source: conn.source.clone(),
            destination: self.service.to_string(),
            identified: caller.identified(),
            mode: decision.mode,
            verdict: decision.verdict,
        };
        let span = tracing::Span::current();
        span.record("source", tracing::field::display(&edge.source));
        span.record("mode", decision.mode.as_str());
        span.record("outcome", decision.outcome.as_str());
        self.note_decision(conn, peer, &edge, &decision);
        self.recorder.record(Event::Opened { edge: edge.clone(), at: SystemTime::now() });
        decision.outcome.passes().then_some(edge)
    }

    /// Dials the app, bounded by the connect timeout.
    async fn dial_app(&self) -> Option<TcpStream> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.app)).await {
            Ok(Ok(app)) => {
                let _ = app.set_nodelay(true);
                Some(app)
            }
            Ok(Err(e)) => {
                warn!(app = %self.app, error = %e, "app refused the connection");
                None
            }
            Err(_) => {
                warn!(app = %self.app, "app did not accept in time");
                None
            }
        }
    }

    /// Relays an admitted app connection to the app until either ends, then records its close.
    async fn relay_app<S>(
        &self,
        client: &mut S,
        mut app: TcpStream,
        conn: &OpenConn,
        edge: EdgeKey,
        started: Instant,
    ) -> End
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        debug!("relaying");
        // A connection that stays open reports what it carries as it goes (the ledger would
        // otherwise count its bytes only at its close, and take it for a probe until then).
        let mut reported = (0, 0);
        let mut report = |forward, back| {
            reported = (reported.0 + forward, reported.1 + back);
            self.recorder.record(Event::Progress {
                edge: edge.clone(),
                at: SystemTime::now(),
                bytes_to_destination: forward,
                bytes_to_source: back,
            });
        };
        // The listener's re-check task cancels `conn` when a new policy or bundle refuses it.
        let idle = self.settings.idle_timeout;
        let progress = Some(Progress::new(&mut report));
        let carried = relay_reporting(client, &mut app, idle, &conn.cancel, progress).await;
        self.metrics.bytes_to_destination.inc_by(carried.forward);
        self.metrics.bytes_to_source.inc_by(carried.back);
        debug!(forward = carried.forward, back = carried.back, end = ?carried.end, "closed");
        self.recorder.record(Event::Closed {
            edge,
            at: SystemTime::now(),
            bytes_to_destination: carried.forward - reported.0,
            bytes_to_source: carried.back - reported.1,
            duration: started.elapsed(),
        });
        carried.end
    }

    /// Serves the HTTP/2 hop (`hop::mux`): each stream is an app connection, decided, recorded
    /// and relayed on its own, many at once. It ends when the client closes the connection, it
    /// errs, or the re-check refuses the caller (every stream then closes, and `GOAWAY` names the
    /// last stream taken). Idle past
    /// [`hop::SERVER_IDLE`], older than twice [`hop::MAX_AGE`], or when the agent stops, it says
    /// `GOAWAY`: with no stream open, at once, naming the last stream taken (so any stream the
    /// client sends after it is known unseen, and sent again elsewhere); with streams open,
    /// gracefully (after a ping round trip), and serves every stream taken to its end.
    async fn serve_mux(
        &self,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        peer: SocketAddr,
        conn: &OpenConn,
        first: ConnCount<'_>,
        stop: CancellationToken,
        limit: &Semaphore,
    ) {
        let handshake = hop::mux::server_builder().handshake::<_, Bytes>(hop::mux::Lingering::new(tls));
        let mut h2 = match tokio::time::timeout(self.settings.handshake_timeout, handshake).await {
            Ok(Ok(h2)) => h2,
            Ok(Err(e)) => {
                warn!(error = %e, "closing an HTTP/2 hop that did not start");
                return;
            }
            Err(_) => {
                warn!("closing an HTTP/2 hop whose client sent no preface in time");
                return;
            }
        };
        let old = tokio::time::Instant::now() + 2 * hop::MAX_AGE;
        let mut idle_since = tokio::time::Instant::now();
        let mut first = Some(first);
        let mut streams = FuturesUnordered::new();
        let mut closing = false;
        let mut refused = false;
        loop {
            tokio::select! {
                next = h2.accept() => match next {
                    Some(Ok((req, respond))) => {
                        // The connection's own count covers its first app connection.
                        let counted = match first.take() {
                            Some(c) => c,
                            None => {
                                self.metrics.hop_reused.inc();
                                ConnCount::new(&self.metrics)
                            }
                        };
                        let span = info_span!(
                            "stream",
                            source = tracing::field::Empty,
                            mode = tracing::field::Empty,
                            outcome = tracing::field::Empty
                        );
                        streams.push(self.serve_stream(req, respond, peer, conn, counted, limit).instrument(span));
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "the HTTP/2 hop ended with an error");
                        break;
                    }
                    None => break,
                },
                Some(()) = streams.next(), if !streams.is_empty() => {
                    if streams.is_empty() {
                        idle_since = tokio::time::Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(idle_since + hop::SERVER_IDLE), if streams.is_empty() && !closing => {
                    closing = true;
                    go_away(&mut h2, true);
                }
                _ = tokio::time::sleep_until(old), if !closing => {
                    closing = true;
                    go_away(&mut h2, streams.is_empty());
                }
                _ = stop.cancelled(), if !closing => {
                    closing = true;
                    go_away(&mut h2, streams.is_empty());
                }
                // Refused now: every stream's relay sees the same token and ends. The GOAWAY
                // names the last stream taken, so one the client sends meanwhile goes out again
                // (and is decided) on a new connection instead of being lost here.
                _ = conn.cancel.cancelled(), if !refused => {
                    refused = true;
                    closing = true;
                    h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                }
                _ = tokio::time::sleep(hop::LINGER), if refused => break,
            }
        }
        while streams.next().await.is_some() {}
    }

    /// One stream of an HTTP/2 hop: `CONNECT` to this service, decided, then `200` and relayed
    /// once the app is dialled; `403` when refused, `502` when the app cannot be reached, `503`
    /// when the listener stayed at `max_connections` app connections for the handshake timeout.
    async fn serve_stream(
        &self,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer: SocketAddr,
        conn: &OpenConn,
        _counted: ConnCount<'_>,
        limit: &Semaphore,
    ) {
        let answer = |respond: &mut h2::server::SendResponse<Bytes>, status: http::StatusCode| {
            let mut response = http::Response::new(());
            *response.status_mut() = status;
            respond.send_response(response, true).map(drop)
        };
        let authority = req.uri().authority().map(|a| a.as_str());
        if req.method() != http::Method::CONNECT || authority != Some(self.service.as_str()) {
            warn!(method = %req.method(), authority = ?authority, "refusing an HTTP/2 hop stream that is not a CONNECT to this service");
            let _ = answer(&mut respond, http::StatusCode::MISDIRECTED_REQUEST);
            return;
        }
        // At the listener's limit a stream waits, as an accept does, up to the handshake timeout.
        let wait = tokio::time::timeout(self.settings.handshake_timeout, limit.acquire());
        let Ok(Ok(_permit)) = wait.await else {
            warn!(
                max = self.settings.max_connections,
                "refusing an HTTP/2 hop stream: the listener is at its limit"
            );
            let _ = answer(&mut respond, http::StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let started = Instant::now();
        let Some(edge) = self.admit(peer, conn) else {
            let _ = answer(&mut respond, http::StatusCode::FORBIDDEN);
            return;
        };
        let Some(app) = self.dial_app().await else {
            let _ = answer(&mut respond, http::StatusCode::BAD_GATEWAY);
            return;
        };
        let Ok(out) = respond.send_response(http::Response::new(()), false) else {
            debug!("the stream was reset before it was answered");
            return;
        };
        let mut stream = MuxStream::new(out, req.into_body(), None);
        self.relay_app(&mut stream, app, conn, edge, started).await;
    }
}
