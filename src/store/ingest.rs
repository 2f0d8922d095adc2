//! `cordon store serve`: the ingest service, the only holder of write credentials to the fleet
//! store. Agents ship to it over mTLS with their own leaves; it checks every row
//! ([`super::rules`]), stamps it with the host and identity the leaf names, and writes it with
//! the `cordon_ingest` role (insert and update only).
//!
//! The HTTP handling is one seam: [`Ingest::handle`] takes the verified peer and a request and
//! returns the answer; [`serve`] puts it on cordon's one HTTP server
//! ([`crate::proxy::http_server`], as the signing service and the admin endpoint): TLS, one
//! deadline per request, per-source limits, bodies bounded, every answer counted. Every refused
//! row is counted by cause (`/metrics`) and logged once per (host, identity, cause); names are
//! never logged raw (they are checked before).
//!
//! A request whose leaf is revoked (its serial or the host it names is in the revocation list in
//! force, [`super::identity`]) is refused whole, 403 `revoked`, by the same check the data
//! plane's one decision makes ([`crate::policy::revocation`]).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::identity::Identity;
use super::rules::{self, Refusal, Shipper};
use super::schema::{self, Partitions};
use super::wire::{self, Answer, WireBatch};
use super::{StoreError, StoreUrl, client, write};
use crate::pki::{HostName, ServiceName, TrustDomain, host_of, serial_of, spiffe_id_of};
use crate::proxy::http_server::{self, ConnInfo, CurrentTls, HttpLimits, HttpStats};

/// The HTTP server's limits: 512 connections at once; from one source address 64 open and 100
/// new a second (hosts behind one NAT share them); the TLS handshake, headers and a body of at
/// most [`wire::MAX_BODY`] within [`wire::REQUEST_TIMEOUT`].
pub const LIMITS: HttpLimits = HttpLimits {
    max_connections: 512,
    per_source_connections: 64,
    per_source_rate: 100,
    deadline: wire::REQUEST_TIMEOUT,
    max_body: wire::MAX_BODY,
};
/// Connections to PostgreSQL, each writing one batch at a time.
const POOL: usize = 4;
/// Distinct (host, identity, cause) refusals logged; past it, refusals are only counted.
const MAX_LOGGED: usize = 4096;

/// Where the service finds its store and its TLS material.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The store, with the credentials of a `cordon_ingest` member.
    pub db: StoreUrl,
    /// The CA bundle agents' leaves chain to.
    pub ca: PathBuf,
    /// Holds `cordon-store/cert.pem` and `cordon-store/key.pem`.
    pub tls_dir: PathBuf,
}

/// The verified client of one connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub identity: ServiceName,
    /// The host its leaf names; None for a leaf without one (refused).
    pub host: Option<HostName>,
    /// Its leaf's serial, hex as the revocation list writes it.
    pub serial: String,
}

/// The running service.
pub struct Ingest {
    url: StoreUrl,
    trust_domain: TrustDomain,
    /// The service's own leaf, served to each new connection, and the revocation list in force.
    identity: Arc<Identity>,
    pool: Pool,
    accepted: AtomicU64,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    /// Answers by label (`ok`, `revoked`, `no_host`, `no_identity`, `bad_request`, `timeout`,
    /// `store_error`, `not_found`, `metrics`); a body past the limit is the HTTP server's 413,
    /// counted in `http`.
    answers: Mutex<BTreeMap<&'static str, u64>>,
    logged: Mutex<HashSet<(String, String, &'static str)>>,
    /// What the HTTP server answered and closed (413s, deadlines, per-source limits).
    http: Arc<HttpStats>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("store", &self.url).finish_non_exhaustive()
    }
}

/// A few connections to the store, taken one per batch.
struct Pool {
    url: StoreUrl,
    idle: Mutex<Vec<(tokio_postgres::Client, Partitions)>>,
    permits: Semaphore,
}

impl Pool {
    async fn write(&self, checked: &rules::Checked) -> Result<u64, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Runtime(std::io::ErrorKind::Other.into()))?;
        let held = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut c, mut parts) = match held {
            Some(c) => c,
            None => (client::connect(&self.url).await?, Partitions::default()),
        };
        let name = self.url.to_string();
        let stamps = write::Stamps { shipper: &checked.shipper, evidence: &checked.evidence };
        let n = write::ship_stamped(&mut c, &name, &mut parts, &checked.batch, stamps).await?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push((c, parts));
        Ok(n)
    }
}

impl Ingest {
    /// Connects to the store and checks that `cordon store init` made it current; serves as
    /// `identity`.
    pub async fn open(options: &IngestOptions, identity: Arc<Identity>) -> Result<Arc<Ingest>, StoreError> {
        let name = options.db.to_string();
        let c = client::connect(&options.db).await?;
        match schema::version(&c, &name).await? {
            Some(v) if v == schema::CURRENT_VERSION => {}
            found => {
                return Err(StoreError::NotInitialised {
                    url: name,
                    detail: format!(
                        "store schema version {} but the ingest service needs {}: run `cordon store init` as the operator",
                        found.unwrap_or(0),
                        schema::CURRENT_VERSION
                    ),
                });
            }
        }
        Ok(Arc::new(Ingest {
            url: options.db.clone(),
            trust_domain: identity.trust_domain.clone(),
            identity,
            pool: Pool {
                url: options.db.clone(),
                idle: Mutex::new(vec![(c, Partitions::default())]),
                permits: Semaphore::new(POOL),
            },
            accepted: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            answers: Mutex::new(BTreeMap::new()),
            logged: Mutex::new(HashSet::new()),
            http: Arc::new(HttpStats::default()),
        }))
    }

    /// The verified peer of a connection, from the chain its handshake presented (the verifier
    /// already checked the chain and the trust domain).
    pub fn peer_of(&self, certs: &[CertificateDer<'_>], addr: SocketAddr) -> Option<Peer> {
        let leaf = certs.first()?;
        let id = spiffe_id_of(leaf, Some(&self.trust_domain)).ok()?;
        Some(Peer { addr, identity: id.service().clone(), host: host_of(leaf), serial: serial_of(leaf)? })
    }

    /// Why `peer`'s leaf is refused as revoked, when it is: the data plane's check, against the
    /// list in force.
    fn revoked(&self, peer: &Peer) -> Option<Arc<str>> {
        let list = self.identity.tls.revocations();
        let leaf =
            crate::policy::LeafId { serial: &peer.serial, host: peer.host.as_ref().map(|h| h.as_str()) };
        crate::policy::revocation(Some(list.as_ref()), &leaf).cloned()
    }

    fn answered(&self, label: &'static str) {
        *self.answers.lock().unwrap_or_else(|p| p.into_inner()).entry(label).or_default() += 1;
    }

    fn reply(&self, label: &'static str, status: StatusCode, body: String) -> Response<Full<Bytes>> {
        self.answered(label);
        let ty = if status == StatusCode::OK && label == "ok" { "application/json" } else { "text/plain" };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ty) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    }

    /// Logs a refusal the first time it is seen for this host, identity and cause.
    fn log_once(&self, peer: &Peer, cause: &'static str, rows: u64) {
        let host = peer.host.as_ref().map(|h| h.to_string()).unwrap_or_default();
        let key = (host.clone(), peer.identity.to_string(), cause);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() < MAX_LOGGED && logged.insert(key) {
            warn!(host = %host, identity = %peer.identity, peer = %peer.addr, cause, rows,
                "ingest: refused rows (logged once per host, identity and cause; all are counted in /metrics)");
        }
    }

    /// Answers one request from `peer`, its body already read (and bounded by
    /// [`wire::MAX_BODY`]): `POST /v1/rows` or `GET /metrics`. The caller bounds it with
    /// [`wire::REQUEST_TIMEOUT`].
    pub async fn handle(&self, peer: &Peer, req: Request<Bytes>) -> Response<Full<Bytes>> {
        // A revoked leaf is cut off from every endpoint, as the data plane cuts it off.
        if let Some(why) = self.revoked(peer) {
            self.log_once(peer, "revoked", 0);
            return self.reply("revoked", StatusCode::FORBIDDEN, format!("revoked: {why}\n"));
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                self.answered("metrics");
                let mut r = Response::new(Full::new(Bytes::from(self.metrics())));
                if let Ok(v) = hyper::header::HeaderValue::from_str(crate::exposition::CONTENT_TYPE) {
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                }
                return r;
            }
            (&Method::POST, "/v1/rows") => {}
            _ => return self.reply("not_found", StatusCode::NOT_FOUND, "no such endpoint\n".into()),
        }
        let Some(host) = peer.host.clone() else {
            self.log_once(peer, "no_host", 0);
            return self.reply(
                "no_host",
                StatusCode::FORBIDDEN,
                "this leaf names no host (one DNS-name SAN): issue it with `cordon cert issue --host` \
                 or enrol through the signing service\n"
                    .into(),
            );
        };
        let body = req.into_body();
        let batch = match serde_json::from_slice::<WireBatch>(&body)
            .map_err(|_| "not a batch")
            .and_then(WireBatch::into_batch)
        {
            Ok(b) => b,
            Err(why) => {
                self.log_once(peer, "bad_request", 0);
                return self.reply("bad_request", StatusCode::BAD_REQUEST, format!("{why}\n"));
            }
        };
        let who = Shipper::Host { host: host.to_string(), identity: peer.identity.to_string() };
        let checked = rules::check(&batch, &who, crate::ledger::unix_ms(SystemTime::now()));
        let mut answer = Answer::default();
        if !checked.refused.is_empty() {
            let mut by_cause: BTreeMap<Refusal, u64> = BTreeMap::new();
            for r in &checked.refused {
                *by_cause.entry(*r).or_default() += 1;
            }
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            for (cause, n) in &by_cause {
                *refused.entry(*cause).or_default() += n;
                answer.refused.insert(cause.as_str().to_owned(), *n);
            }
            drop(refused);
            for (cause, n) in by_cause {
                self.log_once(peer, cause.as_str(), n);
            }
        }
        if !checked.batch.is_empty() {
            match self.pool.write(&checked).await {
                Ok(n) => answer.accepted = n,
                Err(e) => {
                    warn!(store = %self.url, error = %e, "ingest: writing to the store failed");
                    return self.reply(
                        "store_error",
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the store failed; retry\n".into(),
                    );
                }
            }
        }
        self.accepted.fetch_add(answer.accepted, Ordering::Relaxed);
        let json = serde_json::to_string(&answer).unwrap_or_default();
        self.reply("ok", StatusCode::OK, json)
    }

    /// Rows accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The exposition `/metrics` serves ([`crate::exposition`]): rows accepted, rows refused by
    /// cause, answers by label, the HTTP server's answers and closes, the build and process.
    pub fn metrics(&self) -> String {
        use crate::metrics::{Kind, Sample, ScrapeCollector};
        let accepted: Vec<Sample> = vec![(vec![], self.accepted() as f64)];
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let refused: Vec<Sample> = Refusal::ALL
            .into_iter()
            .map(|c| (vec![("cause", c.as_str().to_owned())], refused.get(&c).copied().unwrap_or(0) as f64))
            .collect();
        let answers: Vec<Sample> = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(label, n)| (vec![("answer", (*label).to_owned())], *n as f64))
            .collect();
        let mut registry = prometheus_client::registry::Registry::with_prefix("cordon");
        let ingest = registry.sub_registry_with_prefix("ingest");
        let families = [
            ("rows_accepted", "Rows written to the store", accepted),
            ("rows_refused", "Rows refused, by cause", refused),
            ("requests", "Requests answered, by answer", answers),
        ];
        for (name, help, samples) in families {
            ingest.register_collector(Box::new(ScrapeCollector::new(name, help, Kind::Counter, move || {
                samples.clone()
            })));
        }
        self.http.register(ingest);
        // Its own leaf and the revocation list, under the names agents use, so the same alerts
        // (a certificate running out, a stale list) cover the ingest service.
        for c in self.identity.collectors() {
            registry.register_collector(Box::new(c));
        }
        crate::exposition::encode(&registry)
    }
}

/// Serves `listener` until `life.stop_accepting` fires, on cordon's one HTTP server with
/// [`LIMITS`]; a request's rows are written within [`wire::REQUEST_TIMEOUT`] of its arrival.
pub async fn serve(listener: TcpListener, ingest: Arc<Ingest>, life: crate::proxy::Lifecycle) {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, store = %ingest.url, "ingest service listening");
    }
    // Each connection gets the leaf in force when it arrives: a renewal needs no restart.
    let identity = ingest.identity.clone();
    let tls: CurrentTls = Arc::new(move || identity.server_config());
    let stats = ingest.http.clone();
    http_server::serve_current(listener, Some(tls), LIMITS, stats, life, move |req, conn: Arc<ConnInfo>| {
        let ingest = ingest.clone();
        async move {
            // The verifier demands a certificate of the trust domain; a chain that still names no
            // identity here is answered, not dropped in silence.
            let Some(peer) = ingest.peer_of(&conn.certs, conn.peer) else {
                return ingest.reply("no_identity", StatusCode::FORBIDDEN, "no verified identity\n".into());
            };
            match tokio::time::timeout(wire::REQUEST_TIMEOUT, ingest.handle(&peer, req)).await {
                Ok(answer) => answer,
                Err(_) => {
                    ingest.log_once(&peer, "timeout", 0);
                    ingest.reply("timeout", StatusCode::REQUEST_TIMEOUT, "request took too long\n".into())
                }
            }
        }
    })
    .await;
}
