//! `cordon ca serve`: the signing service. HTTPS (TLS 1.3) with an optional client certificate:
//! enrolment comes without one and shows a token, renewal shows the host's current certificate.
//!
//! The TLS layer only checks that a client holds the key of the certificate it shows; the chain,
//! the validity and the identity are checked per request, so that a renewal with an expired
//! certificate gets a reason (logged and counted) rather than a failed handshake. Signing, token
//! files and the log run on the blocking pool; connections are capped and every phase has a
//! deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, ServerConfig};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::cas::{CaSet, Phase};
use super::leases::{Entry, IssuanceLog, Leases, rfc3339, unix_of};
use super::revoked::{RevocationList, Watched, clip};
use super::tls::{OwnCert, ProvesKey};
use super::tokens::TokenStore;
use super::{EnrolRequest, Issued, IssuedLeaf, Refusal, Refused, Refusing, RenewRequest, unix};
use crate::pki::revoked::serial_of;
use crate::pki::{HostName, PkiError, ServiceName, spiffe_id_of};
use crate::proxy::Lifecycle;
use crate::proxy::http_server::{self, ConnInfo, HttpLimits, HttpStats, LogBudget, reply};

/// The limits a signing service runs with unless told otherwise: 1,024 connections, 64 open and
/// 100 new a second per source address, 10 s from accept to the end of a request's body, bodies
/// of a few CSRs.
pub const DEFAULT_LIMITS: HttpLimits = HttpLimits {
    max_connections: 1024,
    per_source_connections: 64,
    per_source_rate: 100,
    deadline: Duration::from_secs(10),
    max_body: 64 * 1024,
};
/// How often the CA directory is checked for a rotation step.
const CA_POLL: Duration = Duration::from_millis(500);
/// The service's own certificate is re-issued daily and at every rotation step.
const SERVICE_CERT_REISSUE: Duration = Duration::from_secs(86_400);
/// How often expired leaves are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a stop waits for requests under way.
const DRAIN: Duration = Duration::from_secs(5);
/// The longest refusal message kept in the issuance log and the service's log.
const MAX_MESSAGE: usize = 200;

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The CA directory.
    pub dir: PathBuf,
    /// The issuance log (JSON lines).
    pub log: PathBuf,
    /// Lifetime of the leaves it signs.
    pub leaf_ttl: Duration,
    /// Where refused enrolments are audited.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// Connections, per-source limits, the request deadline and the body size.
    pub limits: HttpLimits,
}

/// The CAs in force and what is derived from them.
struct Cas {
    set: CaSet,
    /// Checks renewal certificates against the bundle.
    verifier: Arc<dyn ClientCertVerifier>,
}

/// A leaf signed for one identity: its PEM, serial (hex) and end of validity.
type Signed = (String, String, SystemTime);

/// The running service's state.
pub struct Service {
    options: ServeOptions,
    provider: Arc<CryptoProvider>,
    cas: RwLock<Arc<Cas>>,
    leases: Mutex<Leases>,
    log: IssuanceLog,
    tokens: TokenStore,
    /// The certificate this service presents, swapped at rotation.
    own: Arc<OwnCert>,
    issued_enrol: AtomicU64,
    issued_renew: AtomicU64,
    refused: Mutex<BTreeMap<Refused, u64>>,
    /// `revoked.json` as last read.
    revoked: Watched,
    /// The list in force, derived from the file and the leases; None when it must be derived
    /// again (the file changed, or a revoked host enrolled again).
    in_force: Mutex<Option<(Arc<RevocationList>, Arc<RevocationList>)>>,
    /// Answers by status, connections closed by cause.
    http: Arc<HttpStats>,
    /// Bounds the refusal lines, per reason.
    budget: LogBudget,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("options", &self.options).finish_non_exhaustive()
    }
}

fn load_cas(dir: &Path, provider: &Arc<CryptoProvider>) -> Result<Cas, PkiError> {
    let set = CaSet::load(dir)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(set.roots()?), provider.clone())
        .build()
        .map_err(|e| PkiError::Config(e.to_string()))?;
    Ok(Cas { set, verifier })
}

impl Service {
    /// Loads the CA directory and replays the issuance log.
    pub fn open(options: ServeOptions) -> Result<Arc<Service>, PkiError> {
        let provider = super::provider();
        let cas = load_cas(&options.dir, &provider)?;
        let (leases, done) = Leases::compact(&options.log)?;
        if done.archived + done.bad > 0 {
            info!(
                file = %options.log.display(),
                kept = done.kept,
                archived = done.archived,
                unreadable = done.bad,
                "issuance log compacted: refusals and expired leaves moved to {}",
                super::leases::archive_path(&options.log).display()
            );
        }
        let revoked = Watched::open(&options.dir)?;
        let own = Arc::new(OwnCert::default());
        own.set(&cas.set, &provider)?;
        Ok(Arc::new(Service {
            log: IssuanceLog::open(&options.log)?,
            tokens: TokenStore::new(&options.dir),
            options,
            provider,
            cas: RwLock::new(Arc::new(cas)),
            leases: Mutex::new(leases),
            own,
            issued_enrol: AtomicU64::new(0),
            issued_renew: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            revoked,
            in_force: Mutex::new(None),
            http: Arc::new(HttpStats::default()),
            budget: LogBudget::default(),
        }))
    }

    fn cas(&self) -> Arc<Cas> {
        self.cas.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn tls_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PkiError::Config(e.to_string()))?
            .with_client_cert_verifier(Arc::new(ProvesKey(self.provider.clone())))
            .with_cert_resolver(self.own.clone());
        Ok(Arc::new(config))
    }

    /// Serves on `listener` until `stop`, then lets requests under way finish (a few seconds).
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> Result<(), PkiError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls_config()?);
        tokio::spawn(self.clone().watch_ca_dir(stop.clone()));
        let life = Lifecycle { stop_accepting: stop, ..Lifecycle::new() };
        let service = self.clone();
        http_server::serve(
            listener,
            Some(acceptor),
            self.options.limits,
            self.http.clone(),
            life.clone(),
            move |req, conn| service.clone().route(req, conn),
        )
        .await;
        life.drain(DRAIN).await;
        Ok(())
    }

    async fn route(self: Arc<Self>, req: Request<Bytes>, conn: Arc<ConnInfo>) -> Response<Full<Bytes>> {
        let json = |body: String| reply(StatusCode::OK, "application/json", body);
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/v1/status") => {
                json(serde_json::to_string_pretty(&self.status()).unwrap_or_default())
            }
            (&Method::GET, "/v1/revoked") => {
                json(serde_json::to_string(&*self.revocations()).unwrap_or_default())
            }
            (&Method::GET, "/metrics") => {
                reply(StatusCode::OK, crate::exposition::CONTENT_TYPE, self.metrics_text())
            }
            (&Method::POST, path @ ("/v1/enrol" | "/v1/renew")) => {
                let renew = path == "/v1/renew";
                let service = self.clone();
                let body = req.into_body();
                let result = tokio::task::spawn_blocking(move || {
                    if renew {
                        service.renew(&body, conn.peer, &conn.certs)
                    } else {
                        service.enrol(&body, conn.peer)
                    }
                })
                .await;
                match result {
                    Ok(Ok(issued)) => json(serde_json::to_string(&issued).unwrap_or_default()),
                    Ok(Err(Failure::Refused(r))) => reply(
                        StatusCode::FORBIDDEN,
                        "application/json",
                        serde_json::to_string(&Refusal {
                            reason: r.reason.as_str().into(),
                            message: r.message,
                        })
                        .unwrap_or_default(),
                    ),
                    Ok(Err(Failure::Internal(e))) => {
                        error!(error = %e, "signing failed");
                        reply(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "text/plain",
                            "internal error; see the service's log\n",
                        )
                    }
                    Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "internal error\n"),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "POST /v1/enrol, POST /v1/renew, GET /v1/revoked, GET /v1/status, GET /metrics\n",
            ),
        }
    }

    /// The revocation list in force: the file's, with hosts that enrolled again after their
    /// revocation listed by their old serials (see [`RevocationList::in_force`]).
    pub fn revocations(&self) -> Arc<RevocationList> {
        let file = self.revoked.current();
        let mut cache = self.in_force.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((from, derived)) = cache.as_ref()
            && Arc::ptr_eq(from, &file)
        {
            return derived.clone();
        }
        let derived = {
            let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            Arc::new(file.in_force(|h, at| leases.came_back(h, at)))
        };
        *cache = Some((file, derived.clone()));
        derived
    }

    /// Counts a refusal, and logs it (service log and issuance log) within the reason's budget.
    /// `host` is only ever a checked name; `message` is cut to a few hundred bytes.
    fn refuse(
        &self,
        kind: &str,
        host: Option<&HostName>,
        identity: Option<&str>,
        peer: SocketAddr,
        r: Refusing,
    ) -> Failure {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()).entry(r.reason).or_default() += 1;
        let r = Refusing { reason: r.reason, message: clip(&r.message, MAX_MESSAGE) };
        let Some(suppressed) = self.budget.admit(r.reason.as_str()) else { return Failure::Refused(r) };
        let host_text = host.map(HostName::as_str).unwrap_or("");
        if r.reason == Refused::Superseded {
            warn!(%peer, host = host_text, identity, suppressed_before = suppressed,
                "renewal with a superseded leaf: a possible copy of it is in use: {}", r.message);
        } else {
            warn!(%peer, host = host_text, identity, reason = r.reason.as_str(), suppressed_before = suppressed,
                "{kind} refused: {}", r.message);
        }
        let message = match suppressed {
            0 => r.message.clone(),
            n => {
                format!("{} ({n} more {} refusals not logged before this one)", r.message, r.reason.as_str())
            }
        };
        self.log.append(&Entry {
            time: rfc3339(SystemTime::now()),
            event: "refused".into(),
            kind: kind.into(),
            host: host_text.into(),
            identity: identity.map(str::to_string),
            serial: None,
            not_after: None,
            not_after_unix: None,
            ca: None,
            bundle: Vec::new(),
            reason: Some(r.reason.as_str().into()),
            message: Some(message),
            peer: peer.to_string(),
        });
        if kind == "enrol"
            && let Some(audit) = &self.options.audit
        {
            let ids: Vec<String> =
                identity.map(|i| i.split(',').map(str::to_owned).collect()).unwrap_or_default();
            let record = crate::audit::Record::enrolment_refused(
                host_text,
                &ids,
                &peer.to_string(),
                r.reason.as_str(),
                &r.message,
            );
            if let Err(e) = audit.append(&record) {
                tracing::error!(error = %e, "a refused enrolment is not in the audit log");
            }
        }
        Failure::Refused(r)
    }

    /// The host a request names, checked before anything logs it.
    fn host_of_request(&self, kind: &str, host: &str, peer: SocketAddr) -> Result<HostName, Failure> {
        HostName::new(host).map_err(|e| {
            self.refuse(kind, None, None, peer, Refusing::new(Refused::BadRequest, e.to_string()))
        })
    }

    fn enrol(&self, body: &[u8], peer: SocketAddr) -> Result<Issued, Failure> {
        let req: EnrolRequest = serde_json::from_slice(body).map_err(|e| {
            self.refuse("enrol", None, None, peer, Refusing::new(Refused::BadRequest, e.to_string()))
        })?;
        let host = self.host_of_request("enrol", &req.host, peer)?;
        let bad = |r: Refusing| self.refuse("enrol", Some(&host), None, peer, r);
        if req.csrs.is_empty() {
            return Err(bad(Refusing::new(Refused::BadRequest, "at least one CSR is needed")));
        }
        let mut wanted = Vec::new();
        for c in &req.csrs {
            let name = ServiceName::new(&c.identity)
                .map_err(|e| bad(Refusing::new(Refused::BadRequest, format!("identity: {e}"))))?;
            let csr = rcgen::CertificateSigningRequestParams::from_pem(&c.csr)
                .map_err(|e| bad(Refusing::new(Refused::BadCsr, format!("CSR for {name}: {e}"))))?;
            wanted.push((name, csr));
        }
        let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
        let revoked = self.revoked.current();
        let was_revoked = revoked.hosts.iter().any(|h| h == host.as_str());
        let not_revoked = |created: SystemTime| {
            if revoked.host_revoked_at(host.as_str(), unix(created)) {
                return Err(Refusing::new(
                    Refused::Revoked,
                    format!(
                        "host {host} is revoked; a join token minted after its revocation enrols it again"
                    ),
                ));
            }
            Ok(())
        };
        self.tokens.redeem(&req.token, host.as_str(), &names, SystemTime::now(), not_revoked).map_err(
            |r| {
                let identities = names.join(",");
                self.refuse("enrol", Some(&host), Some(&identities), peer, r)
            },
        )?;
        let cas = self.cas();
        let signed = self.sign(&cas, &host, &wanted)?;
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let issued = self.record(&mut leases, &cas, "enrol", &host, signed, peer);
        drop(leases);
        self.announce("enrol", &host, &issued, peer);
        if was_revoked {
            // It came back: the list in force now names its old serials instead.
            *self.in_force.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(Issued { revoked: (*self.revocations()).clone(), ..issued })
    }

    fn renew(
        &self,
        body: &[u8],
        peer: SocketAddr,
        certs: &[CertificateDer<'static>],
    ) -> Result<Issued, Failure> {
        let req: RenewRequest = serde_json::from_slice(body).map_err(|e| {
            self.refuse("renew", None, None, peer, Refusing::new(Refused::BadRequest, e.to_string()))
        })?;
        let host = self.host_of_request("renew", &req.host, peer)?;
        let Some((leaf, chain)) = certs.split_first() else {
            return Err(self.refuse(
                "renew",
                Some(&host),
                None,
                peer,
                Refusing::new(Refused::NoCertificate, "renewal needs the current certificate (mTLS)"),
            ));
        };
        let cas = self.cas();
        let now = SystemTime::now();
        let id = spiffe_id_of(leaf, Some(&cas.set.trust_domain));
        let identity = id.as_ref().ok().map(|i| i.service().as_str().to_string());
        let bad = |r: Refusing| self.refuse("renew", Some(&host), identity.as_deref(), peer, r);
        if let Err(e) = cas.verifier.verify_client_cert(leaf, chain, UnixTime::now()) {
            let reason = match &e {
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => Refused::CertExpired,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                ) => Refused::CertNotYetValid,
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => Refused::CertUnknownCa,
                _ => Refused::CertInvalid,
            };
            let message = match reason {
                Refused::CertExpired => {
                    "the certificate has expired; the host needs a new join token".to_string()
                }
                _ => format!("certificate refused: {e}"),
            };
            return Err(bad(Refusing::new(reason, message)));
        }
        let id = id.map_err(|e| bad(Refusing::new(Refused::CertInvalid, e.to_string())))?;
        let serial =
            serial_of(leaf).ok_or_else(|| bad(Refusing::new(Refused::CertInvalid, "unparsable serial")))?;
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&req.csr)
            .map_err(|e| bad(Refusing::new(Refused::BadCsr, e.to_string())))?;
        let revoked = self.revoked.current();
        // Whether this leaf may renew now: it is ours, its host's and identity's, not revoked, and
        // the newest of its (host, identity).
        let may_renew = |leases: &Leases| match leases.holder(&serial, now) {
            None => Some(Refusing::new(
                Refused::SerialUnknown,
                format!("serial {serial} was not issued by this service; enrol with a join token"),
            )),
            Some((h, _)) if h != host.as_str() => Some(Refusing::new(
                Refused::HostMismatch,
                format!("serial {serial} was issued to another host than {host}"),
            )),
            Some((_, i)) if i != id.service().as_str() => Some(Refusing::new(
                Refused::IdentityNotAllowed,
                format!("serial {serial} was issued for {i}"),
            )),
            Some(_) if revoked.serial_revoked(&serial) => {
                Some(Refusing::new(Refused::Revoked, format!("serial {serial} is revoked")))
            }
            Some(_)
                if leases
                    .issued_at(&serial)
                    .is_some_and(|at| revoked.host_revoked_at(host.as_str(), unix(at))) =>
            {
                Some(Refusing::new(
                    Refused::Revoked,
                    format!(
                        "host {host} is revoked; a join token minted after its revocation enrols it again"
                    ),
                ))
            }
            Some(_)
                if leases.current_serial(host.as_str(), id.service().as_str()) != Some(serial.as_str()) =>
            {
                Some(Refusing::new(
                    Refused::Superseded,
                    format!(
                        "serial {serial} was already renewed: only the newest leaf of {host}/{} renews; \
                         a host that lost its newest leaf needs a new join token",
                        id.service()
                    ),
                ))
            }
            Some(_) => None,
        };
        // Refused early without signing anything...
        let early = may_renew(&self.leases.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(r) = early {
            return Err(bad(r));
        }
        // ...signed without the lock, so that renewals of different hosts sign in parallel...
        let signed = self.sign(&cas, &host, &[(id.service().clone(), csr)])?;
        // ...then checked again and recorded under one lock: of two presenters of the same leaf,
        // one renews. The loser's leaf was never sent and is never recorded.
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = may_renew(&leases) {
            drop(leases);
            return Err(bad(r));
        }
        let issued = self.record(&mut leases, &cas, "renew", &host, signed, peer);
        drop(leases);
        self.announce("renew", &host, &issued, peer);
        Ok(Issued { revoked: (*self.revocations()).clone(), ..issued })
    }

    /// Signs a leaf per wanted identity. Nothing is out yet: a leaf counts as issued once
    /// [`Service::record`] has recorded it (a signed leaf that is never recorded is never sent).
    fn sign(
        &self,
        cas: &Cas,
        host: &HostName,
        wanted: &[(ServiceName, rcgen::CertificateSigningRequestParams)],
    ) -> Result<Vec<(ServiceName, Signed)>, Failure> {
        wanted
            .iter()
            .map(|(name, csr)| {
                let signed =
                    cas.set.sign(name, host, csr, self.options.leaf_ttl).map_err(Failure::Internal)?;
                Ok((name.clone(), signed))
            })
            .collect()
    }

    /// Records signed leaves as the newest of their (host, identity) and appends them to the
    /// issuance log, under the lock the caller holds (so that the log's order is the leases'
    /// order, and what the caller checked still holds). The answer's `revoked` is left for the
    /// caller to fill once the lock is released.
    fn record(
        &self,
        leases: &mut Leases,
        cas: &Cas,
        kind: &str,
        host: &HostName,
        signed: Vec<(ServiceName, Signed)>,
        peer: SocketAddr,
    ) -> Issued {
        let bundle_fps = cas.set.bundle_fingerprints();
        let ca = &cas.set.current.fingerprint;
        let issued = SystemTime::now();
        let mut leaves = Vec::with_capacity(signed.len());
        for (name, (cert, serial, not_after)) in signed {
            leases.record(
                host.to_string(),
                name.to_string(),
                serial.clone(),
                not_after,
                ca.clone(),
                bundle_fps.clone(),
                issued,
            );
            self.log.append(&Entry {
                time: rfc3339(issued),
                event: "issued".into(),
                kind: kind.into(),
                host: host.to_string(),
                identity: Some(name.to_string()),
                serial: Some(serial.clone()),
                not_after: Some(rfc3339(not_after)),
                not_after_unix: Some(unix_of(not_after)),
                ca: Some(ca.clone()),
                bundle: bundle_fps.clone(),
                reason: None,
                message: None,
                peer: peer.to_string(),
            });
            leaves.push(IssuedLeaf {
                identity: name.to_string(),
                cert,
                serial,
                not_after: unix_of(not_after),
            });
        }
        let counter = if kind == "enrol" { &self.issued_enrol } else { &self.issued_renew };
        counter.fetch_add(leaves.len() as u64, Ordering::Relaxed);
        Issued {
            leaves,
            bundle: cas.set.bundle(),
            signing_ca: ca.clone(),
            revoked: RevocationList::default(),
        }
    }

    /// One log line per leaf issued, written once the lock is released.
    fn announce(&self, kind: &str, host: &HostName, issued: &Issued, peer: SocketAddr) {
        for l in &issued.leaves {
            info!(%peer, host = %host, identity = %l.identity, serial = %l.serial, kind, "issued");
        }
    }

    /// The CA that hosts should end up with: the prepared one during a rotation, else the current.
    fn newest(set: &CaSet) -> &str {
        set.next.as_ref().map(|n| n.fingerprint.as_str()).unwrap_or(set.current.fingerprint.as_str())
    }

    /// The `/v1/status` document.
    pub fn status(&self) -> serde_json::Value {
        let cas = self.cas();
        let now = SystemTime::now();
        let revoked = self.revocations();
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let newest = Self::newest(&cas.set);
        let refused: BTreeMap<&str, u64> = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, n)| (r.as_str(), *n))
            .collect();
        json!({
            "trust_domain": cas.set.trust_domain.to_string(),
            "phase": cas.set.phase().as_str(),
            "signing_ca": cas.set.current.fingerprint,
            "newest_ca": newest,
            "bundle": cas.set.bundle_fingerprints(),
            "hosts": leases.hosts(now),
            "leaves_by_ca": leases.leaves_by_ca(now),
            "old_ca_leaves": leases.leaves_not_from(newest, now).len(),
            "hosts_without_newest_ca": leases.hosts_without(newest, now).len(),
            "issued": {"enrol": self.issued_enrol.load(Ordering::Relaxed), "renew": self.issued_renew.load(Ordering::Relaxed)},
            "refused": refused,
            "revoked": {"hosts": revoked.hosts.len(), "serials": revoked.serials.len()},
            "http": {"answers_413": self.http.answers(413)},
        })
    }

    /// The exposition `/metrics` serves ([`crate::exposition`]): issued and refused counts, the
    /// rotation gauges, the build and process metrics.
    pub fn metrics_text(&self) -> String {
        use crate::metrics::{Kind, Sample, ScrapeCollector};
        let status = self.status();
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        let issued: Vec<Sample> = ["enrol", "renew"]
            .into_iter()
            .map(|kind| (vec![("kind", kind.to_string())], number(&status["issued"][kind])))
            .collect();
        let refused: Vec<Sample> = Refused::ALL
            .into_iter()
            .map(|r| (vec![("reason", r.as_str().to_string())], refused.get(&r).copied().unwrap_or(0) as f64))
            .collect();
        let old_ca_leaves = vec![(vec![], number(&status["old_ca_leaves"]))];
        let without_newest = vec![(vec![], number(&status["hosts_without_newest_ca"]))];
        let revoked: Vec<Sample> = ["hosts", "serials"]
            .into_iter()
            .map(|kind| (vec![("kind", kind.to_string())], number(&status["revoked"][kind])))
            .collect();
        let mut registry = prometheus_client::registry::Registry::with_prefix("cordon");
        let families = [
            ("issuer_issued", "Leaves signed", Kind::Counter, issued),
            ("issuer_refused", "Requests refused, by reason", Kind::Counter, refused),
            ("issuer_old_ca_leaves", "Unexpired leaves not from the newest CA", Kind::Gauge, old_ca_leaves),
            (
                "issuer_hosts_without_newest_ca",
                "Hosts whose last bundle lacks the newest CA",
                Kind::Gauge,
                without_newest,
            ),
            ("issuer_revoked", "Entries of the revocation list in force, by kind", Kind::Gauge, revoked),
        ];
        for (name, help, kind, samples) in families {
            registry.register_collector(Box::new(ScrapeCollector::new(name, help, kind, move || {
                samples.clone()
            })));
        }
        self.http.register(registry.sub_registry_with_prefix("issuer"));
        crate::exposition::encode(&registry)
    }

    /// Picks up rotation steps (`cordon ca rotate` run beside the service), re-issues the
    /// service's own certificate daily and forgets expired leaves.
    async fn watch_ca_dir(self: Arc<Self>, stop: CancellationToken) {
        let mut stamp = ca_stamp(&self.options.dir);
        let mut own_at = Instant::now();
        let mut pruned_at = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(CA_POLL) => {}
            }
            if pruned_at.elapsed() >= PRUNE_EVERY {
                self.leases.lock().unwrap_or_else(|p| p.into_inner()).prune(SystemTime::now());
                pruned_at = Instant::now();
            }
            let now = ca_stamp(&self.options.dir);
            if now == stamp && own_at.elapsed() < SERVICE_CERT_REISSUE {
                continue;
            }
            let service = self.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let cas = load_cas(&service.options.dir, &service.provider)?;
                service.own.set(&cas.set, &service.provider)?;
                let phase = cas.set.phase();
                *service.cas.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cas);
                Ok::<Phase, PkiError>(phase)
            })
            .await;
            match loaded {
                Ok(Ok(phase)) => {
                    if now != stamp {
                        info!(phase = phase.as_str(), "CA directory reloaded");
                    }
                    stamp = now;
                    own_at = Instant::now();
                }
                // Half a rotation step (between two renames): try again at the next poll.
                Ok(Err(e)) => {
                    warn!(error = %e, "CA directory not reloaded; signing with the CAs loaded before")
                }
                Err(_) => {}
            }
        }
    }
}

/// What changed in a CA directory, cheaply: each file's length and modification time.
fn ca_stamp(dir: &Path) -> Vec<Option<(u64, SystemTime)>> {
    ["ca.pem", "ca-key.pem", "next/ca.pem", "old-ca.pem"]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        })
        .collect()
}

enum Failure {
    Refused(Refusing),
    Internal(PkiError),
}
