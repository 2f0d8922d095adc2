//! The agent's side of the signing service: first enrolment with the join token, then renewal of
//! each identity at two thirds of its lifetime over mTLS with the current certificate.
//!
//! Keys are generated here and written 0600 into `tls.dir/<identity>/key.pem`; only CSRs leave the
//! host. New files are written key first, then the certificate, then the bundle the service sent
//! goes to `tls.ca`, and the [`TlsStore`] reloads. While the service is down the agent keeps
//! serving on its current certificate and retries with backoff; as expiry nears it warns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::tls::{IssuerVerifier, Shows};
use super::{CsrFor, EnrolRequest, Issued, Refusal, RenewRequest, from_unix, issuer_uri};
use crate::pki::files::{read, write_atomic};
use crate::pki::{PkiError, ServiceName, TlsStore, TrustDomain, spiffe_id_of};

/// How long one request may take, connect to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer read from the service: leaves, the bundle and a revocation list of at most
/// [`crate::pki::revoked::MAX_BYTES`].
const MAX_ANSWER: usize = 2 * crate::pki::revoked::MAX_BYTES;
/// Longest wait between two attempts while the service is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `[tls] issuer` and `join_token_file` of the agent config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// `host:port` of the signing service (from `https://host:port`).
    pub addr: String,
    /// The file holding the join token, read at first enrolment.
    pub join_token_file: Option<PathBuf>,
    /// How often the revocation list is polled (`tls.revocation_poll_ms`), at most
    /// [`super::DEFAULT_REVOCATION_POLL`].
    pub revocation_poll: Duration,
}

impl IssuerSettings {
    /// Parses `https://host:port`.
    pub fn parse(url: &str, join_token_file: Option<PathBuf>) -> Result<IssuerSettings, String> {
        let rest = url.strip_prefix("https://").ok_or("must start with https://")?;
        let addr = rest.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
            return Err("expected https://HOST:PORT".into());
        }
        Ok(IssuerSettings {
            addr: addr.to_string(),
            join_token_file,
            revocation_poll: super::DEFAULT_REVOCATION_POLL,
        })
    }
}

/// Why talking to the signing service failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// Connect, TLS or HTTP failed: the service is down or unreachable; retry later.
    #[error("signing service {addr}: {message}")]
    Unreachable { addr: String, message: String },
    /// The service refused, and said why.
    #[error("signing service refused ({reason}): {message}")]
    Refused { reason: String, message: String },
    /// The answer made no sense.
    #[error("signing service {addr}: bad answer: {message}")]
    BadAnswer { addr: String, message: String },
    /// Local files.
    #[error(transparent)]
    Files(#[from] PkiError),
    /// Enrolment needs a token and there is none.
    #[error(
        "identity {identity} has no valid certificate and no join token is configured (tls.join_token_file)"
    )]
    NoToken { identity: String },
}

/// Per identity, what the last renewal did.
#[derive(Debug, Default, Clone)]
struct Progress {
    renewed: u64,
    failed: u64,
    last_error: Option<String>,
    signing_ca: Option<String>,
    issuer_ca: Option<String>,
}

/// Enrols and renews this host's identities.
pub struct Renewer {
    settings: IssuerSettings,
    trust_domain: TrustDomain,
    /// The bundle file (`tls.ca`): authenticates the service, and is replaced by its bundle.
    bundle: PathBuf,
    /// `tls.dir`.
    dir: PathBuf,
    host: String,
    identities: Vec<ServiceName>,
    provider: Arc<CryptoProvider>,
    progress: Mutex<BTreeMap<ServiceName, Progress>>,
    /// The revocation list's poll (`poll.rs`).
    poll: super::poll::PollStats,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer").field("issuer", &self.settings.addr).field("host", &self.host).finish()
    }
}

/// A certificate's not-before and not-after.
type Validity = (SystemTime, SystemTime);

/// Validity of a certificate file, if it parses.
fn validity(path: &Path) -> Option<(SystemTime, SystemTime)> {
    let pem = std::fs::read(path).ok()?;
    let der = CertificateDer::from_pem_slice(&pem).ok()?;
    validity_of(&der)
}

fn validity_of(der: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) = X509Certificate::from_der(der.as_ref()).ok()?;
    let at = |t: x509_parser::time::ASN1Time| from_unix(t.timestamp().max(0) as u64);
    Some((at(x509.validity().not_before), at(x509.validity().not_after)))
}

fn issuer_fingerprint(pem: &str, bundle: &str) -> Option<String> {
    // The bundle CA whose subject is the leaf's issuer.
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, leaf) = X509Certificate::from_der(der.as_ref()).ok()?;
    for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()).flatten() {
        if let Ok((_, c)) = X509Certificate::from_der(ca.as_ref())
            && c.subject().as_raw() == leaf.issuer().as_raw()
            && leaf.verify_signature(Some(c.public_key())).is_ok()
        {
            return Some(super::sha256_hex(ca.as_ref())[..16].to_string());
        }
    }
    None
}

impl Renewer {
    pub fn new(
        settings: IssuerSettings,
        trust_domain: TrustDomain,
        bundle: PathBuf,
        dir: PathBuf,
        host: String,
        identities: Vec<ServiceName>,
    ) -> Arc<Renewer> {
        Arc::new(Renewer {
            settings,
            trust_domain,
            bundle,
            dir,
            host,
            identities,
            provider: super::provider(),
            progress: Mutex::new(BTreeMap::new()),
            poll: Default::default(),
        })
    }

    /// `tls.dir`, where the leaves and the revocation list are kept.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The signing service's `host:port`.
    pub fn addr(&self) -> &str {
        &self.settings.addr
    }

    /// How often the revocation list is polled.
    pub fn revocation_poll(&self) -> Duration {
        self.settings.revocation_poll
    }

    /// The revocation list poll's counts.
    pub fn poll_stats(&self) -> &super::poll::PollStats {
        &self.poll
    }

    fn cert_path(&self, id: &ServiceName) -> PathBuf {
        self.dir.join(id.as_str()).join("cert.pem")
    }

    /// Identities without a certificate that is valid now.
    fn unenrolled(&self, now: SystemTime) -> Vec<ServiceName> {
        self.identities
            .iter()
            .filter(|id| validity(&self.cert_path(id)).is_none_or(|(_, na)| na <= now))
            .cloned()
            .collect()
    }

    /// Enrols every identity that has no valid certificate yet, with the join token. Retries while
    /// the service is unreachable, up to `deadline`; a refusal is final.
    pub async fn enrol_missing(&self, deadline: Duration) -> Result<(), IssuerError> {
        let missing = self.unenrolled(SystemTime::now());
        if missing.is_empty() {
            return Ok(());
        }
        while_unreachable(deadline, "enrolment", || self.enrol(&missing)).await
    }

    async fn enrol(&self, identities: &[ServiceName]) -> Result<(), IssuerError> {
        let Some(token_file) = &self.settings.join_token_file else {
            return Err(IssuerError::NoToken { identity: identities[0].to_string() });
        };
        let token = crate::pki::files::read_secret(token_file, "join token file")?.trim().to_string();
        let mut keys = Vec::new();
        let mut csrs = Vec::new();
        for id in identities {
            let (key, csr) = csr_for(id)?;
            keys.push(key);
            csrs.push(CsrFor { identity: id.to_string(), csr });
        }
        let body = serde_json::to_vec(&EnrolRequest { host: self.host.clone(), token, csrs })
            .map_err(|e| self.bad(e.to_string()))?;
        let issued = self.post("/v1/enrol", body, None).await?;
        self.install(identities.iter().cloned().zip(keys).collect(), &issued).await?;
        info!(identities = ?identities.iter().map(|i| i.as_str()).collect::<Vec<_>>(), "enrolled with the signing service");
        Ok(())
    }

    /// Renews `id` now with its current certificate (the loop in [`Renewer::spawn`] calls this when
    /// due).
    pub async fn renew(&self, id: &ServiceName) -> Result<(), IssuerError> {
        let dir = self.dir.join(id.as_str());
        let certified = self.current_key(&dir)?;
        let (key, csr) = csr_for(id)?;
        let body = serde_json::to_vec(&RenewRequest { host: self.host.clone(), csr })
            .map_err(|e| self.bad(e.to_string()))?;
        let issued = self.post("/v1/renew", body, Some(certified)).await?;
        self.install(vec![(id.clone(), key)], &issued).await
    }

    fn current_key(&self, dir: &Path) -> Result<Arc<CertifiedKey>, PkiError> {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        let chain: Vec<_> = CertificateDer::pem_slice_iter(read(&cert_path)?.as_bytes()).flatten().collect();
        if chain.is_empty() {
            return Err(PkiError::BadFile { path: cert_path, message: "no certificate in it".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(read(&key_path)?.as_bytes()).map_err(|e| {
            PkiError::BadFile { path: key_path.clone(), message: format!("no private key: {e}") }
        })?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| PkiError::BadFile { path: key_path, message: e.to_string() })?;
        Ok(Arc::new(CertifiedKey::new(chain, signing)))
    }

    /// Writes the new keys, certificates and bundle, after checking every certificate is ours
    /// (nothing is written unless all are). The writes (each synced, then renamed into place) run
    /// on the blocking pool, so a slow disk does not hold up the agent's other tasks.
    async fn install(&self, new: Vec<(ServiceName, KeyPair)>, issued: &Issued) -> Result<(), IssuerError> {
        let mut files = Vec::with_capacity(new.len());
        let mut installed = Vec::with_capacity(new.len());
        for (id, key) in new {
            let leaf = issued
                .leaves
                .iter()
                .find(|l| l.identity == id.as_str())
                .ok_or_else(|| self.bad(format!("no certificate for {id} in the answer")))?;
            let der =
                CertificateDer::from_pem_slice(leaf.cert.as_bytes()).map_err(|e| self.bad(e.to_string()))?;
            match spiffe_id_of(&der, Some(&self.trust_domain)) {
                Ok(got) if got.service() == &id => {}
                Ok(got) => return Err(self.bad(format!("asked for {id}, got {got}"))),
                Err(e) => return Err(self.bad(e.to_string())),
            }
            files.push((self.dir.join(id.as_str()), key.serialize_pem(), leaf.cert.clone()));
            installed.push((id, issuer_fingerprint(&leaf.cert, &issued.bundle)));
        }
        let (bundle_path, bundle) = (self.bundle.clone(), issued.bundle.clone());
        let write = move || -> Result<bool, PkiError> {
            for (dir, key, cert) in &files {
                std::fs::create_dir_all(dir)
                    .map_err(|source| PkiError::Write { path: dir.clone(), source })?;
                write_atomic(&dir.join("key.pem"), key.as_bytes(), 0o600)?;
                write_atomic(&dir.join("cert.pem"), cert.as_bytes(), 0o644)?;
            }
            let changed = std::fs::read_to_string(&bundle_path).ok().as_deref() != Some(bundle.as_str());
            if changed {
                write_atomic(&bundle_path, bundle.as_bytes(), 0o644)?;
            }
            Ok(changed)
        };
        let bundle_changed = tokio::task::spawn_blocking(write).await.map_err(|e| PkiError::Write {
            path: self.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
        if bundle_changed {
            info!(file = %self.bundle.display(), "trust bundle updated from the signing service");
        }
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        for (id, issuer_ca) in installed {
            let p = progress.entry(id).or_default();
            p.signing_ca = Some(issued.signing_ca.clone());
            p.issuer_ca = issuer_ca;
        }
        Ok(())
    }

    fn bad(&self, message: String) -> IssuerError {
        IssuerError::BadAnswer { addr: self.settings.addr.clone(), message }
    }

    fn unreachable(&self, message: impl std::fmt::Display) -> IssuerError {
        IssuerError::Unreachable { addr: self.settings.addr.clone(), message: message.to_string() }
    }

    fn client_config(&self, cert: Option<Arc<CertifiedKey>>) -> Result<Arc<ClientConfig>, IssuerError> {
        let verifier = IssuerVerifier {
            roots: Arc::new(load_roots(&self.bundle)?),
            uri: Some(issuer_uri(&self.trust_domain)),
            provider: self.provider.clone(),
            learned: Default::default(),
        };
        Ok(issuer_config(Arc::new(verifier), cert)?)
    }

    /// The service's `/v1/status` document.
    pub async fn service_status(&self) -> Result<serde_json::Value, IssuerError> {
        let (status, bytes) = self.request(hyper::Method::GET, "/v1/status", Vec::new(), None).await?;
        match status.as_u16() {
            200 => serde_json::from_slice(&bytes).map_err(|e| self.bad(e.to_string())),
            s => Err(self.unreachable(format!("HTTP {s}"))),
        }
    }

    /// One POST: an [`Issued`], or the service's refusal.
    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        cert: Option<Arc<CertifiedKey>>,
    ) -> Result<Issued, IssuerError> {
        let (status, bytes) = self.request(hyper::Method::POST, path, body, cert).await?;
        match status.as_u16() {
            200 => {
                let issued = serde_json::from_slice(&bytes).map_err(|e| self.bad(e.to_string()))?;
                self.take_revocations(&bytes);
                Ok(issued)
            }
            403 => {
                let r: Refusal = serde_json::from_slice(&bytes).map_err(|e| self.bad(e.to_string()))?;
                Err(IssuerError::Refused { reason: r.reason, message: r.message })
            }
            s => Err(self.unreachable(format!("HTTP {s}: {}", String::from_utf8_lossy(&bytes).trim()))),
        }
    }

    /// One request: connect, TLS, send, read the answer.
    pub(super) async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
        cert: Option<Arc<CertifiedKey>>,
    ) -> Result<(hyper::StatusCode, Bytes), IssuerError> {
        let config = self.client_config(cert)?;
        let name = server_name_of(&self.settings.addr);
        let exchange = async {
            let tcp =
                tokio::net::TcpStream::connect(&self.settings.addr).await.map_err(|e| self.unreachable(e))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| self.unreachable(e))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| self.unreachable(e))?;
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.settings.addr.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| self.bad(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| self.unreachable(e))?
                .to_bytes();
            Ok::<_, IssuerError>((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    /// When each identity is due: two thirds into its certificate's life (now when unreadable).
    fn due(&self) -> Vec<(ServiceName, SystemTime, Option<Validity>)> {
        let now = SystemTime::now();
        self.identities
            .iter()
            .map(|id| {
                let v = validity(&self.cert_path(id));
                let due =
                    v.map(|(nb, na)| nb + na.duration_since(nb).unwrap_or_default() * 2 / 3).unwrap_or(now);
                (id.clone(), due, v)
            })
            .collect()
    }

    /// Renews every identity when due until `stop`, reloading `tls` after each new certificate.
    pub fn spawn(
        self: &Arc<Self>,
        tls: Arc<TlsStore>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            // Per identity: the earliest next attempt after a failure, and the current backoff.
            let mut retry: BTreeMap<ServiceName, (SystemTime, Duration)> = BTreeMap::new();
            loop {
                let now = SystemTime::now();
                let plan = me.due();
                let next = plan
                    .iter()
                    .map(|(id, due, _)| retry.get(id).map(|(at, _)| *at).unwrap_or(*due))
                    .min()
                    .unwrap_or(now + MAX_BACKOFF);
                let wait = next.duration_since(now).unwrap_or_default().min(MAX_BACKOFF);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let now = SystemTime::now();
                let mut changed = false;
                for (id, due, validity) in plan {
                    let at = retry.get(&id).map(|(at, _)| *at).unwrap_or(due);
                    if at > now {
                        continue;
                    }
                    let life = validity
                        .map(|(nb, na)| na.duration_since(nb).unwrap_or_default())
                        .unwrap_or(MAX_BACKOFF);
                    let expired = validity.is_none_or(|(_, na)| na <= now);
                    let result =
                        if expired { me.enrol(std::slice::from_ref(&id)).await } else { me.renew(&id).await };
                    let result = match result {
                        // A certificate the service no longer renews (unknown, superseded by a
                        // newer one, revoked): try the join token, in case the operator put a new
                        // one in place (a re-imaged host comes back without a restart).
                        Err(IssuerError::Refused { reason, message })
                            if !expired
                                && me.settings.join_token_file.is_some()
                                && matches!(
                                    reason.as_str(),
                                    "cert_expired"
                                        | "serial_unknown"
                                        | "host_mismatch"
                                        | "superseded"
                                        | "revoked"
                                ) =>
                        {
                            warn!(identity = %id, reason, "renewal refused: {message}; trying the join token");
                            me.enrol(std::slice::from_ref(&id)).await
                        }
                        r => r,
                    };
                    let mut progress = me.progress.lock().unwrap_or_else(|p| p.into_inner());
                    let p = progress.entry(id.clone()).or_default();
                    match result {
                        Ok(()) => {
                            p.renewed += 1;
                            p.last_error = None;
                            retry.remove(&id);
                            changed = true;
                            info!(identity = %id, "certificate renewed by the signing service");
                        }
                        Err(e) => {
                            p.failed += 1;
                            p.last_error = Some(e.to_string());
                            let floor = Duration::from_millis(100);
                            let cap = (life / 6).clamp(floor, MAX_BACKOFF);
                            let backoff = retry
                                .get(&id)
                                .map(|(_, b)| *b * 2)
                                .unwrap_or((life / 50).clamp(floor, Duration::from_secs(1)));
                            let backoff = backoff.min(cap);
                            // Jitter, so a fleet that lost the service together does not return together.
                            let jitter = backoff
                                .mul_f64(f64::from(super::random::<1>().map(|b| b[0]).unwrap_or(0)) / 512.0);
                            retry.insert(id.clone(), (now + backoff + jitter, backoff));
                            let left =
                                validity.and_then(|(_, na)| na.duration_since(now).ok()).unwrap_or_default();
                            if left < life / 6 {
                                error!(identity = %id, expires_in_s = left.as_secs(), error = %e,
                                    "certificate expires soon and cannot be renewed; serving on it meanwhile");
                            } else {
                                warn!(identity = %id, expires_in_s = left.as_secs(), error = %e, "renewal failed; retrying");
                            }
                        }
                    }
                }
                if changed {
                    let tls = tls.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || tls.reload()).await {
                        error!(error = %e, "certificate reload after renewal refused");
                    }
                }
            }
        })
    }

    /// Per identity: renewals, failures, the last error and which CA signed the leaf, for
    /// `/status`.
    pub fn status(&self) -> serde_json::Value {
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let identities: Vec<_> = self
            .identities
            .iter()
            .map(|id| {
                let p = progress.get(id).cloned().unwrap_or_default();
                json!({
                    "identity": id.as_str(),
                    "renewed": p.renewed,
                    "failed": p.failed,
                    "last_error": p.last_error,
                    "issuer_ca": p.issuer_ca,
                    "signing_ca": p.signing_ca,
                    "from_old_ca": match (&p.issuer_ca, &p.signing_ca) { (Some(i), Some(s)) => Some(i != s), _ => None },
                })
            })
            .collect();
        let old = identities.iter().filter(|v| v["from_old_ca"] == json!(true)).count();
        json!({"service": self.settings.addr, "identities": identities, "old_ca_leaves": old})
    }

    /// Renewals and failures per identity, for metrics.
    pub fn counts(&self) -> Vec<(ServiceName, u64, u64)> {
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        self.identities
            .iter()
            .map(|id| {
                let p = progress.get(id).cloned().unwrap_or_default();
                (id.clone(), p.renewed, p.failed)
            })
            .collect()
    }
}

/// TLS 1.3 to the signing service, checked by `verifier`, showing `cert` when there is one.
fn issuer_config(
    verifier: Arc<IssuerVerifier>,
    cert: Option<Arc<CertifiedKey>>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let builder = ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match cert {
        Some(c) => builder.with_client_cert_resolver(Arc::new(Shows(c))),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Runs `attempt` again while the signing service is unreachable (backing off from 200 ms to
/// 5 s), until `deadline` has passed; any other outcome is returned at once.
async fn while_unreachable<T, Fut>(
    deadline: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, IssuerError>
where
    Fut: std::future::Future<Output = Result<T, IssuerError>>,
{
    let until = tokio::time::Instant::now() + deadline;
    let mut backoff = Duration::from_millis(200);
    loop {
        match attempt().await {
            Err(IssuerError::Unreachable { addr, message })
                if tokio::time::Instant::now() + backoff < until =>
            {
                warn!(issuer = %addr, error = %message, "signing service unreachable; retrying {what}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// The CA certificates of the bundle file.
fn load_roots(bundle: &Path) -> Result<RootCertStore, PkiError> {
    let pem = read(bundle)?;
    let bad = |e: String| PkiError::BadFile { path: bundle.to_owned(), message: e };
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

/// The name sent in the handshake to `addr` (`host:port`); the service's certificate is checked
/// by its URI, not by this name.
fn server_name_of(addr: &str) -> ServerName<'static> {
    let host = addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or("");
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("cordon-issuer.invalid").expect("a valid DNS name"))
}

/// The trust domain of the signing service at `settings.addr`, from its own certificate
/// (`spiffe://TD/cordon/issuer`) once that certificate chains to `bundle`: for a service that
/// has no trust domain configured and no leaf yet to read it from (`cordon store serve
/// --issuer`). Only the CA signs such a certificate, and every request after this one checks the
/// service by that exact URI. Retries while the service is unreachable, up to `deadline`.
pub async fn trust_domain_of(
    settings: &IssuerSettings,
    bundle: &Path,
    deadline: Duration,
) -> Result<TrustDomain, IssuerError> {
    let verifier = Arc::new(IssuerVerifier {
        roots: Arc::new(load_roots(bundle)?),
        uri: None,
        provider: super::provider(),
        learned: Default::default(),
    });
    let config = issuer_config(verifier.clone(), None)?;
    let addr = settings.addr.as_str();
    let unreachable = |message: String| IssuerError::Unreachable { addr: addr.to_owned(), message };
    let handshake = || async {
        let shake = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
            tokio_rustls::TlsConnector::from(config.clone())
                .connect(server_name_of(addr), tcp)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok::<_, IssuerError>(())
        };
        tokio::time::timeout(REQUEST_TIMEOUT, shake)
            .await
            .unwrap_or_else(|_| Err(unreachable(format!("no handshake within {REQUEST_TIMEOUT:?}"))))
    };
    while_unreachable(deadline, "the first handshake", handshake).await?;
    verifier
        .learned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| IssuerError::BadAnswer { addr: addr.to_owned(), message: "no trust domain".into() })
}

/// A fresh P-256 key and a CSR for `id`.
fn csr_for(id: &ServiceName) -> Result<(KeyPair, String), PkiError> {
    let err = |e: rcgen::Error| PkiError::Generate { what: "CSR", message: e.to_string() };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(err)?.pem().map_err(err)?;
    Ok((key, csr))
}
