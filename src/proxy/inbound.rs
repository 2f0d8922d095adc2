//! The inbound proxy: in front of a local app, it takes mTLS from other hosts' cordon (and, while
//! the service learns, plaintext from hosts not yet migrated), identifies the caller, asks the
//! policy, records the connection, and relays to the app.
//!
//! A denied caller is refused before cordon dials the app, so the app never sees an accept. Open
//! connections are decided again whenever the policy changes.
//!
//! Another cordon may offer the reusable hop (`proxy::hop`): then one mTLS connection carries its
//! app connections one after another, each decided, recorded and counted on its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use cordon_discovery::Snapshot;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::hop::{self, HopStream};
use super::{ConnCount, End, Lifecycle, accept_loop, relay};
use crate::agent::config::ProxySettings;
use crate::ledger::{EdgeKey, Event, RecorderHandle};
use crate::metrics::ListenerMetrics;
use crate::pki::{HOP_ALPN, RejectReason, ServiceName, TlsStore, peer_service_id};
use crate::policy::{Caller, DecisionLog, DecisionRecord, Mode, Outcome, Policy};

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
}

impl Inbound {
    /// Serves `listener` until the lifecycle stops accepting.
    pub async fn run(self: Arc<Self>, listener: TcpListener, life: Lifecycle) {
        let max = self.settings.max_connections;
        let force = life.force_close.clone();
        let stop = life.stop_accepting.clone();
        accept_loop(listener, max, life, move |stream, peer| {
            let this = self.clone();
            let cancel = force.child_token();
            let stop = stop.clone();
            let span = info_span!(
                "inbound",
                destination = %this.service,
                peer = %peer,
                source = tracing::field::Empty,
                mode = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            async move { this.handle(stream, peer, cancel, stop).await }.instrument(span)
        })
        .await;
    }

    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
        stop: CancellationToken,
    ) {
        let counted = ConnCount::new(&self.metrics);
        let started = Instant::now();
        let mode = self.policy.borrow().mode(self.service.as_str());

        // Peek without consuming: TLS clients speak first, at once. While learning, a plaintext
        // client of a server-first protocol (a database greeting, say) may say nothing, so silence
        // past the sniff window means plaintext. Enforcing, only TLS is taken: wait for it.
        let wait = match mode {
            Mode::Learn => self.settings.first_byte_timeout,
            Mode::Enforce => self.settings.handshake_timeout,
        };
        let mut first = [0u8; 1];
        let sniffed = tokio::time::timeout(wait, stream.peek(&mut first)).await;
        let is_tls = matches!(sniffed, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE;
        if let Ok(Ok(0)) | Ok(Err(_)) = sniffed {
            debug!("caller closed before sending anything");
            return;
        }

        if is_tls {
            // Boxed: the handshake's state is freed once it is done, not kept in the task.
            let Some((mut tls, hop)) = Box::pin(self.handshake(stream)).await else { return };
            self.metrics.handshake(tls.get_ref().1.handshake_kind());
            let Some(id) = peer_service_id(tls.get_ref().1) else {
                // The verifier already insists on one SPIFFE ID; this is defence in depth.
                self.metrics.handshake_failure(RejectReason::NoUriSan);
                warn!("peer certificate without a service identity");
                return;
            };
            let caller = Caller::Mtls(id);
            if hop {
                self.serve_hop(tls, peer, caller, counted, cancel, stop).await;
            } else if self.serve(&mut tls, peer, caller, started, cancel).await.is_none() {
                let _ = tls.shutdown().await;
            }
        } else {
            let snapshot = self.discovery.borrow().clone();
            let service = snapshot.service_at(peer.ip()).and_then(|s| ServiceName::new(s).ok());
            let caller = Caller::Plaintext { ip: peer.ip(), service };
            if mode == Mode::Enforce {
                self.metrics.handshake_failure(RejectReason::PlaintextInEnforce);
                self.refuse(&caller, peer, "plaintext refused: the service enforces mTLS".into());
                return;
            }
            let mut stream = stream;
            if self.serve(&mut stream, peer, caller, started, cancel).await.is_none() {
                let _ = stream.shutdown().await;
            }
        }
    }

    /// The TLS handshake, with the server config chosen after reading the client's hello: the
    /// reusable hop is agreed only with a client that offers it (a client offering some other
    /// protocol must not be refused for it). True when the hop was agreed.
    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, bool)> {
        let handshake = async {
            let acceptor = rustls::server::Acceptor::default();
            let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
            let hop = self.settings.reuse_connections
                && start.client_hello().alpn().is_some_and(|mut offered| offered.any(|p| p == HOP_ALPN));
            let Some(config) = self.tls.server_config(&self.service, hop) else {
                return Ok(None);
            };
            start.into_stream(config).await.map(|tls| Some((tls, hop)))
        };
        match tokio::time::timeout(self.settings.handshake_timeout, handshake).await {
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
    /// other than cleanly, it idles past [`hop::SERVER_IDLE`], or the agent stops.
    async fn serve_hop(
        &self,
        mut tls: tokio_rustls::server::TlsStream<TcpStream>,
        peer: SocketAddr,
        caller: Caller,
        first: ConnCount<'_>,
        cancel: CancellationToken,
        stop: CancellationToken,
    ) {
        let born = Instant::now();
        let mut first = Some(first);
        loop {
            let opened = tokio::select! {
                r = tokio::time::timeout(hop::SERVER_IDLE, hop::next_stream(&mut tls)) => r,
                _ = stop.cancelled() => return,
                _ = cancel.cancelled() => return,
            };
            match opened {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) | Err(_) => return,
                Ok(Err(e)) => {
                    warn!(error = %e, "closing a hop that broke cordon's framing");
                    return;
                }
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
            let end = self
                .serve(&mut stream, peer, caller.clone(), Instant::now(), cancel.child_token())
                .instrument(span)
                .await;
            let reusable = end == Some(End::Done) && stream.is_finished();
            if !reusable || born.elapsed() > 2 * hop::MAX_AGE || stop.is_cancelled() {
                return;
            }
        }
    }

    /// Returns when `conn` is cancelled, or cancels it when a new policy refuses `caller`.
    async fn recheck_on_policy_change(
        &self,
        mut policy_rx: watch::Receiver<Arc<Policy>>,
        caller: &Caller,
        source: &str,
        conn: &CancellationToken,
    ) {
        if !self.settings.close_denied_on_enforce {
            return;
        }
        loop {
            tokio::select! {
                changed = policy_rx.changed() => if changed.is_err() { return },
                _ = conn.cancelled() => return,
            }
            let policy = policy_rx.borrow_and_update().clone();
            if policy.mode(self.service.as_str()) != Mode::Enforce {
                continue;
            }
            let verdict = policy.decide(source, self.service.as_str()).verdict;
            if !caller.is_tls() || verdict == crate::policy::Verdict::Deny {
                info!(source = %source, "closing open connection: the new policy refuses it");
                self.metrics.policy_closed.inc();
                conn.cancel();
                return;
            }
        }
    }

    /// Logs, counts and records a plaintext caller refused in enforce mode.
    fn refuse(&self, caller: &Caller, peer: SocketAddr, rule: Arc<str>) {
        let edge = EdgeKey {
            source: caller.name(),
            destination: self.service.to_string(),
            identified: caller.identified(),
            mode: Mode::Enforce,
            verdict: crate::policy::Verdict::Deny,
        };
        self.note_decision(caller, peer, &edge, Outcome::Denied, rule);
        self.recorder.record(Event::Opened { edge, at: SystemTime::now() });
    }

    fn note_decision(
        &self,
        caller: &Caller,
        peer: SocketAddr,
        edge: &EdgeKey,
        outcome: Outcome,
        rule: Arc<str>,
    ) {
        self.metrics.verdict(&edge.source, edge.identified, edge.mode, outcome);
        if outcome == Outcome::Allowed {
            return;
        }
        info!(source = %edge.source, identified = %edge.identified, mode = %edge.mode,
              outcome = outcome.as_str(), rule = %rule, "connection {}", outcome.as_str());
        self.decisions.record(DecisionRecord {
            at: SystemTime::now(),
            source: edge.source.clone(),
            source_addr: peer,
            destination: edge.destination.clone(),
            mode: edge.mode,
            outcome,
            rule,
            tls: caller.is_tls(),
            identified: edge.identified,
        });
    }

    /// Decides, records and relays one identified connection.
    /// Returns how the relay ended, or None when the connection was refused or the app not reached
    /// (the caller then closes: a hop is closed whole, so a refusal never looks like a clean end).
    async fn serve<S>(
        &self,
        client: &mut S,
        peer: SocketAddr,
        caller: Caller,
        started: Instant,
        cancel: CancellationToken,
    ) -> Option<End>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut policy_rx = self.policy.clone();
        let policy = policy_rx.borrow_and_update().clone();
        let source = caller.name();
        let mode = policy.mode(self.service.as_str());
        let decision = policy.decide(&source, self.service.as_str());
        let outcome = Outcome::of(mode, decision.verdict);
        let edge = EdgeKey {
            source,
            destination: self.service.to_string(),
            identified: caller.identified(),
            mode,
            verdict: decision.verdict,
        };
        let span = tracing::Span::current();
        span.record("source", tracing::field::display(&edge.source));
        span.record("mode", mode.as_str());
        span.record("outcome", outcome.as_str());
        self.note_decision(&caller, peer, &edge, outcome, decision.rule);
        self.recorder.record(Event::Opened { edge: edge.clone(), at: SystemTime::now() });
        if !outcome.passes() {
            return None;
        }

        let app =
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.app)).await {
                Ok(Ok(app)) => app,
                Ok(Err(e)) => {
                    warn!(app = %self.app, error = %e, "app refused the connection");
                    return None;
                }
                Err(_) => {
                    warn!(app = %self.app, "app did not accept in time");
                    return None;
                }
            };
        let _ = app.set_nodelay(true);
        let mut app = app;

        debug!("relaying");

        // Decide again whenever the policy changes; close the connection if it is now refused.
        let conn_cancel = cancel.child_token();
        let (carried, ()) = tokio::join!(
            async {
                let carried = relay(client, &mut app, self.settings.idle_timeout, &conn_cancel).await;
                conn_cancel.cancel();
                carried
            },
            self.recheck_on_policy_change(policy_rx, &caller, &edge.source, &conn_cancel),
        );
        self.metrics.bytes_to_destination.inc_by(carried.forward);
        self.metrics.bytes_to_source.inc_by(carried.back);
        debug!(forward = carried.forward, back = carried.back, end = ?carried.end, "closed");
        self.recorder.record(Event::Closed {
            edge,
            at: SystemTime::now(),
            bytes_to_destination: carried.forward,
            bytes_to_source: carried.back,
            duration: started.elapsed(),
        });
        Some(carried.end)
    }
}
