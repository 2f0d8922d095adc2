//! TLS material for the data plane: rustls configs per identity, swapped on reload without a
//! restart. Open connections keep the config they were made with; new ones get the new one.
//!
//! Session tickets are stateless (the server keeps nothing per session). The ticketer and the
//! client's ticket jars outlive a certificate rotation, so resumption keeps working across one;
//! they do not outlive a change of the trust bundle: a resumed session carries the certificate
//! checked at its first handshake, so after the bundle changes no session from before it resumes
//! (new ticket keys, emptied jars), and every connection reports the bundle it was verified
//! against ([`ServerTls::bundle`]) so the one decision can refuse what the bundle in force would
//! not verify.
//!
//! Cipher suites: AES-128-GCM with SHA-256 first. Every handshake runs its key schedule and
//! transcript through the suite's hash, and SHA-256 has CPU instructions where SHA-384 does not;
//! AES-128 also encrypts bulk traffic faster than AES-256. The other TLS 1.3 suites stay offered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use std::net::SocketAddr;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::ca::Ca;
use super::files::{read, read_private_key};
use super::tickets::{JarKey, TicketJars};
use super::verify::{SpiffeClientVerifier, SpiffeServerVerifier, spiffe_id_of};
use super::{PkiError, ServiceId, ServiceName, TlsSource, TrustDomain};
use crate::base::BundleId;

/// The ALPN name of cordon's reusable hop, first version: an mTLS connection between two cordon
/// agents that carries app connections one after another (see `proxy::hop`).
pub const HOP_ALPN_V1: &[u8] = b"cordon-hop/1";

/// The reusable hop with `ACK` and `GOAWAY`, so an app connection on a hop the server is closing
/// is sent again instead of lost (see `proxy::hop`).
pub const HOP_ALPN_V2: &[u8] = b"cordon-hop/2";

/// The hop as HTTP/2: each app connection is a CONNECT stream, many at once on one mTLS
/// connection, with HTTP/2's flow control per stream (see `proxy::hop::mux`).
pub const HOP_ALPN_H2: &[u8] = b"cordon-h2/1";

/// The hop versions a server agrees to, preferred first; it picks the first the client offers
/// too. Peers that offer none get one app connection per mTLS connection, as any TLS client
/// would.
pub const HOP_ALPNS: [&[u8]; 3] = [HOP_ALPN_H2, HOP_ALPN_V2, HOP_ALPN_V1];

/// Which hops a client offers, by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HopOffer {
    /// None: one app connection per mTLS connection.
    None,
    /// The framed hop: `cordon-hop/2`, else `cordon-hop/1`.
    Framed,
    /// The HTTP/2 hop, else the framed one (with an agent that has no HTTP/2 hop).
    H2,
}

impl HopOffer {
    /// The ALPN protocols offered, preferred first.
    pub fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            HopOffer::None => &[],
            HopOffer::Framed => &HOP_ALPNS[1..],
            HopOffer::H2 => &HOP_ALPNS,
        }
    }
}

fn alpns(protocols: &[&[u8]]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.to_vec()).collect()
}

// The data plane's crypto: ring, or aws-lc-rs with the `aws-lc-rs` feature.
#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as crypto;
#[cfg(not(feature = "aws-lc-rs"))]
use rustls::crypto::ring as crypto;

/// The TLS 1.3 suites in order of preference (see the module doc).
fn provider() -> CryptoProvider {
    use crypto::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ],
        ..crypto::default_provider()
    }
}

/// Client configs kept per material; past this, the cache starts again (they are cheap to build;
/// the tickets live in the jars).
const CLIENT_CONFIGS: usize = 1024;

/// One identity's certificate and the server config presenting it.
#[derive(Clone)]
struct Identity {
    key: Arc<CertifiedKey>,
    server: Arc<ServerConfig>,
    /// The same, also agreeing to cordon's reusable hop (ALPN [`HOP_ALPNS`]).
    server_hop: Arc<ServerConfig>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// Everything loaded at one reload.
struct Material {
    roots: Arc<RootCertStore>,
    /// Which bundle `roots` is, and the ticket keys of the sessions verified against it.
    bundle: BundleId,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    /// Verifies a client chain against `roots`, for connections made under an older bundle.
    verifier: Option<Arc<SpiffeClientVerifier>>,
    identities: HashMap<ServiceName, Identity>,
    /// Client configs by (our identity, the service we expect, the backend) and whether they
    /// the hops they offer, built on first use.
    clients: Mutex<HashMap<(JarKey, HopOffer), Arc<ClientConfig>>>,
}

/// Every identity's certificate, key and CA bundle, as rustls configs that can be swapped.
pub struct TlsStore {
    source: TlsSource,
    trust_domain: TrustDomain,
    names: Vec<ServiceName>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Material>>,
    /// Client-side tickets per backend; emptied when the trust bundle changes.
    tickets: TicketJars,
    /// The bundle in force, for the listeners that re-check open connections when it changes.
    bundle_tx: tokio::sync::watch::Sender<BundleId>,
    /// Bumped when the bundle or any of our certificates changes: client sessions (tickets,
    /// reusable hops) from before carry a server verified under the old bundle or our old
    /// certificate, which expires on its own schedule, and are not used again.
    client_generation: std::sync::atomic::AtomicU64,
    /// The revocation list in force, read from `revoked.json` beside the leaves (`tls.dir`) or in
    /// the local CA's directory, with every reload.
    revoked: super::RevocationWatch,
}

/// A server config and the trust bundle its client verifier holds: a connection accepted with
/// it, fully or by resumption, was verified against that bundle.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub bundle: BundleId,
}

/// A fingerprint of a bundle's certificates, independent of their order.
fn bundle_id(certs: &[CertificateDer<'_>]) -> BundleId {
    use sha2::{Digest, Sha256};
    let mut digests: Vec<[u8; 32]> = certs.iter().map(|c| Sha256::digest(c.as_ref()).into()).collect();
    digests.sort_unstable();
    digests.dedup();
    let mut all = Sha256::new();
    for d in &digests {
        all.update(d);
    }
    let sum = all.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&sum[..8]);
    BundleId(u64::from_be_bytes(first))
}

fn new_ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, PkiError> {
    crypto::Ticketer::new().map_err(|e| PkiError::Config(e.to_string()))
}

impl std::fmt::Debug for TlsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStore").field("source", &self.source).field("identities", &self.names).finish()
    }
}

fn not_after_of(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok((at(x509.validity().not_before), at(x509.validity().not_after)))
}

/// The certificates of a PEM file, naming the file when it cannot be read or holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    parse_certs(path, &read(path)?)
}

fn parse_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(PkiError::BadFile { path: path.to_owned(), message: "no certificate in it".into() }),
        Err(e) => Err(PkiError::BadFile { path: path.to_owned(), message: e.to_string() }),
    }
}

impl TlsStore {
    /// Loads every identity's material; any missing or bad file is an error naming it.
    pub fn load(
        source: &TlsSource,
        trust_domain: &TrustDomain,
        identities: &[ServiceName],
    ) -> Result<Arc<Self>, PkiError> {
        let store = Self::empty(source, trust_domain, identities)?;
        // A list that cannot be read stops the start: serving without it would let in what the
        // fleet has cut off.
        store.revoked.install(super::Revocations::load(&store.revocation_path())?);
        let (material, problems) = store.build(None);
        if let Some(first) = problems.into_iter().next() {
            return Err(first);
        }
        store.install(material);
        Ok(Arc::new(store))
    }

    /// Every problem [`TlsStore::load`] would meet, without writing anything (`agent --check`):
    /// certificate files are read and verified; a local CA is loaded, not asked to issue.
    pub fn check(
        source: &TlsSource,
        trust_domain: &TrustDomain,
        identities: &[ServiceName],
    ) -> Vec<PkiError> {
        if let TlsSource::LocalCa { ca_dir, .. } = source {
            return match Ca::load(ca_dir) {
                Ok(ca) if ca.trust_domain() == trust_domain => Vec::new(),
                Ok(ca) => vec![PkiError::BadFile {
                    path: ca_dir.join("trust-domain"),
                    message: format!("the CA is for {}, the agent for {trust_domain}", ca.trust_domain()),
                }],
                Err(e) => vec![e],
            };
        }
        match Self::empty(source, trust_domain, identities) {
            Ok(store) => {
                let mut problems = store.build(None).1;
                if let Err(e) = super::Revocations::load(&store.revocation_path()) {
                    problems.push(e);
                }
                problems
            }
            Err(e) => vec![e],
        }
    }

    /// A store holding no material yet.
    fn empty(
        source: &TlsSource,
        trust_domain: &TrustDomain,
        identities: &[ServiceName],
    ) -> Result<Self, PkiError> {
        Ok(TlsStore {
            source: source.clone(),
            trust_domain: trust_domain.clone(),
            names: identities.to_vec(),
            provider: Arc::new(provider()),
            current: RwLock::new(Arc::new(Material {
                roots: Arc::new(RootCertStore::empty()),
                bundle: BundleId(0),
                ticketer: new_ticketer()?,
                verifier: None,
                identities: HashMap::new(),
                clients: Mutex::new(HashMap::new()),
            })),
            tickets: TicketJars::default(),
            bundle_tx: tokio::sync::watch::Sender::new(BundleId(0)),
            client_generation: std::sync::atomic::AtomicU64::new(0),
            revoked: super::RevocationWatch::new(super::Revocations::empty()),
        })
    }

    /// Makes `material` current and tells the listeners when the bundle changed.
    fn install(&self, material: Material) {
        let bundle = material.bundle;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        self.bundle_tx.send_if_modified(|b| {
            let changed = *b != bundle;
            *b = bundle;
            changed
        });
    }

    /// The trust bundle in force.
    pub fn bundle(&self) -> BundleId {
        self.material().bundle
    }

    /// Which client sessions are current: a hop or ticket from an older generation was made
    /// under another bundle or with a certificate of ours since replaced.
    pub fn client_generation(&self) -> u64 {
        self.client_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Follows the bundle in force: changes when a reload brings other CA certificates.
    pub fn watch_bundle(&self) -> tokio::sync::watch::Receiver<BundleId> {
        self.bundle_tx.subscribe()
    }

    /// Verifies a client's chain (leaf first) against the bundle in force: the bundle when it
    /// still verifies now, None when it does not. For connections made under an older bundle.
    pub fn verify_client_now(&self, chain: &[CertificateDer<'static>]) -> Option<BundleId> {
        use rustls::server::danger::ClientCertVerifier as _;
        let material = self.material();
        let (leaf, intermediates) = chain.split_first()?;
        let verifier = material.verifier.as_ref()?;
        verifier.verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now()).ok()?;
        Some(material.bundle)
    }

    /// The current server config for `identity`: presents its certificate, requires a client
    /// certificate of our trust domain. With `hop`, it also agrees to cordon's reusable hop when
    /// the client offers it.
    pub fn server_config(&self, identity: &ServiceName, hop: bool) -> Option<ServerTls> {
        let material = self.material();
        let i = material.identities.get(identity)?;
        let config = if hop { i.server_hop.clone() } else { i.server.clone() };
        Some(ServerTls { config, bundle: material.bundle })
    }

    /// The current client config presenting `identity` to `backend`, which must prove to be
    /// `expected_server`, offering the hops `hop` names. Each backend resumes with its own
    /// tickets.
    pub fn client_config(
        &self,
        identity: &ServiceName,
        expected_server: &ServiceName,
        backend: SocketAddr,
        hop: HopOffer,
    ) -> Option<Arc<ClientConfig>> {
        let material = self.material();
        let key = ((identity.clone(), expected_server.clone(), backend), hop);
        let mut clients = material.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Some(c.clone());
        }
        let id = material.identities.get(identity)?;
        let expected = ServiceId::new(self.trust_domain.clone(), expected_server.clone());
        let verifier = SpiffeServerVerifier::new(material.roots.clone(), expected, self.provider.clone());
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(Presents(id.key.clone())));
        config.resumption = Resumption::store(self.tickets.get(&key.0));
        config.alpn_protocols = alpns(hop.protocols());
        let config = Arc::new(config);
        if clients.len() >= CLIENT_CONFIGS {
            clients.clear();
        }
        clients.insert(key, config.clone());
        Some(config)
    }

    /// Where the revocation list is read: `revoked.json` in the local CA's directory, or in
    /// `tls.dir` (where the agent keeps what the signing service sends).
    pub fn revocation_path(&self) -> PathBuf {
        match &self.source {
            TlsSource::Files { dir, .. } => dir.join(super::revoked::FILE_NAME),
            TlsSource::LocalCa { ca_dir, .. } => ca_dir.join(super::revoked::FILE_NAME),
        }
    }

    /// The revocation list in force.
    pub fn revocations(&self) -> Arc<super::Revocations> {
        self.revoked.current()
    }

    /// The revocation list in force, its changes and when it was installed.
    pub fn revocation_watch(&self) -> &super::RevocationWatch {
        &self.revoked
    }

    /// Re-reads the revocation list; a list that cannot be read is refused with an error naming
    /// the file, and the list in force stays. Whether the list changed.
    pub fn reload_revocations(&self) -> Result<bool, PkiError> {
        let loaded = super::Revocations::load(&self.revocation_path());
        self.revoked.note(loaded.as_ref().err().map(ToString::to_string));
        let new = loaded?;
        let (serials, hosts) = (new.serial_count(), new.host_count());
        let changed = self.revoked.install(new);
        if changed {
            warn!(serials, hosts, "revocation list changed: open connections are checked again");
        }
        Ok(changed)
    }

    /// Re-reads (or, from a local CA, re-issues) everything. A bad file is refused with an error
    /// naming it, and the identity it belongs to keeps its old material (and a bad revocation
    /// list, the list in force).
    pub fn reload(&self) -> Result<(), PkiError> {
        let revoked = self.reload_revocations();
        let old = self.material();
        let (material, problems) = self.build(Some(&old));
        let renewed = material.identities.iter().any(|(name, i)| {
            old.identities
                .get(name)
                .is_none_or(|o| o.not_after != i.not_after || o.not_before != i.not_before)
        });
        if material.bundle != old.bundle {
            warn!(
                "trust bundle changed: sessions from before it no longer resume, open connections are checked again"
            );
        }
        if material.bundle != old.bundle || renewed {
            // Tickets and hops from before carry the old bundle's verdict on the server, or our
            // old certificate, which the server refuses once it expires: start afresh.
            self.tickets.clear();
            self.client_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        self.install(material);
        match (problems.into_iter().next(), revoked) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(_)) => Ok(()),
        }
    }

    /// Each identity's certificate expiry.
    pub fn expiries(&self) -> Vec<(ServiceName, SystemTime)> {
        let m = self.material();
        let mut v: Vec<_> = m.identities.iter().map(|(n, i)| (n.clone(), i.not_after)).collect();
        v.sort();
        v
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builds fresh material; identities that fail keep `old`'s (when there is one).
    fn build(&self, old: Option<&Material>) -> (Material, Vec<PkiError>) {
        let mut problems = Vec::new();
        let local_ca = match &self.source {
            TlsSource::LocalCa { ca_dir, .. } => match Ca::load(ca_dir) {
                Ok(ca) if ca.trust_domain() == &self.trust_domain => Some(ca),
                Ok(ca) => {
                    problems.push(PkiError::BadFile {
                        path: ca_dir.join("trust-domain"),
                        message: format!(
                            "the CA is for {}, the agent for {}",
                            ca.trust_domain(),
                            self.trust_domain
                        ),
                    });
                    None
                }
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
            TlsSource::Files { .. } => None,
        };
        let (roots, bundle) = match self.load_roots(local_ca.as_ref()) {
            Ok((r, bundle)) => (Arc::new(r), bundle),
            Err(e) => {
                problems.push(e);
                // Without a good CA bundle nothing can be rebuilt: keep everything as it was.
                return (self.keep(old), problems);
            }
        };
        // Same bundle: keep the ticket keys, so sessions resume across a certificate rotation.
        // Another bundle: new keys, so no session verified under the old one resumes.
        let ticketer = match old.filter(|o| o.bundle == bundle) {
            Some(o) => o.ticketer.clone(),
            None => match new_ticketer() {
                Ok(t) => t,
                Err(e) => {
                    problems.push(e);
                    return (self.keep(old), problems);
                }
            },
        };
        let verifier = match SpiffeClientVerifier::new(
            roots.clone(),
            self.trust_domain.clone(),
            self.provider.clone(),
        ) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                problems.push(PkiError::Config(e.to_string()));
                return (self.keep(old), problems);
            }
        };
        let mut identities = HashMap::new();
        for name in &self.names {
            let loaded = match (&self.source, &local_ca) {
                (TlsSource::Files { dir, .. }, _) => self.load_identity_files(&dir.join(name.as_str()), name),
                (TlsSource::LocalCa { days, ca_dir }, Some(ca)) => {
                    // Re-issue only when due: a reload for another reason keeps a fresh leaf.
                    match old
                        .and_then(|o| o.identities.get(name))
                        .filter(|i| !renewal_due(i, SystemTime::now()))
                    {
                        Some(i) => Ok((i.key.clone(), i.not_before, i.not_after)),
                        None => self.issue_local(ca, ca_dir, name, *days),
                    }
                }
                (TlsSource::LocalCa { .. }, None) => continue,
            };
            let built = loaded.and_then(|(key, not_before, not_after)| {
                let (server, server_hop) = self.server_configs_for(&roots, &ticketer, key.clone())?;
                Ok(Identity { key, server, server_hop, not_before, not_after })
            });
            match built {
                Ok(identity) => {
                    identities.insert(name.clone(), identity);
                }
                Err(e) => {
                    problems.push(e);
                    if let Some(prev) = old.and_then(|o| o.identities.get(name)) {
                        // Keep serving the old certificate, under the new bundle's verifier and
                        // ticket keys (its old configs would still trust the old bundle).
                        match self.server_configs_for(&roots, &ticketer, prev.key.clone()) {
                            Ok((server, server_hop)) => {
                                identities
                                    .insert(name.clone(), Identity { server, server_hop, ..prev.clone() });
                            }
                            Err(e) => problems.push(e),
                        }
                    }
                }
            }
        }
        (
            Material { roots, bundle, ticketer, verifier, identities, clients: Mutex::new(HashMap::new()) },
            problems,
        )
    }

    /// `old` as it was (or nothing), when nothing new can be built.
    fn keep(&self, old: Option<&Material>) -> Material {
        match old {
            Some(o) => Material {
                roots: o.roots.clone(),
                bundle: o.bundle,
                ticketer: o.ticketer.clone(),
                verifier: o.verifier.clone(),
                identities: o.identities.clone(),
                clients: Mutex::new(HashMap::new()),
            },
            None => Material {
                roots: Arc::new(RootCertStore::empty()),
                bundle: BundleId(0),
                ticketer: Arc::new(NoTickets),
                verifier: None,
                identities: HashMap::new(),
                clients: Mutex::new(HashMap::new()),
            },
        }
    }

    fn load_roots(&self, local_ca: Option<&Ca>) -> Result<(RootCertStore, BundleId), PkiError> {
        let (path, pem) = match (&self.source, local_ca) {
            (TlsSource::Files { ca, .. }, _) => (ca.clone(), read(ca)?),
            (TlsSource::LocalCa { ca_dir, .. }, Some(ca)) => {
                (ca_dir.join("ca.pem"), ca.cert_pem().to_string())
            }
            (TlsSource::LocalCa { ca_dir, .. }, None) => {
                return Err(PkiError::BadFile { path: ca_dir.clone(), message: "CA not loaded".into() });
            }
        };
        let certs = parse_certs(&path, &pem)?;
        let bundle = bundle_id(&certs);
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| PkiError::BadFile {
                path: path.clone(),
                message: format!("not a usable CA: {e}"),
            })?;
        }
        Ok((roots, bundle))
    }

    fn load_identity_files(
        &self,
        dir: &Path,
        name: &ServiceName,
    ) -> Result<(Arc<CertifiedKey>, SystemTime, SystemTime), PkiError> {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        let chain = parse_certs(&cert_path, &read(&cert_path)?)?;
        // A key that group or others may read is refused (the identity keeps its old material).
        let key = PrivateKeyDer::from_pem_slice(read_private_key(&key_path)?.as_bytes()).map_err(|e| {
            PkiError::BadFile { path: key_path.clone(), message: format!("no private key: {e}") }
        })?;
        self.certified(chain, key, name, &cert_path, &key_path)
    }

    fn issue_local(
        &self,
        ca: &Ca,
        ca_dir: &Path,
        name: &ServiceName,
        days: u32,
    ) -> Result<(Arc<CertifiedKey>, SystemTime, SystemTime), PkiError> {
        let leaf = ca.issue(name, days)?;
        let path = ca_dir.join(format!("(issued for {name})"));
        let chain = parse_certs(&path, &leaf.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
            .map_err(|e| PkiError::BadFile { path: path.clone(), message: e.to_string() })?;
        info!(identity = %name, "issued a certificate from the local CA");
        self.certified(chain, key, name, &path, &path)
    }

    /// Checks a chain and key belong together and name `name` in our trust domain.
    fn certified(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        name: &ServiceName,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(Arc<CertifiedKey>, SystemTime, SystemTime), PkiError> {
        let bad = |path: &Path, message: String| PkiError::BadFile { path: path.to_owned(), message };
        let id =
            spiffe_id_of(&chain[0], Some(&self.trust_domain)).map_err(|e| bad(cert_path, e.to_string()))?;
        if id.service() != name {
            return Err(bad(cert_path, format!("the certificate is for {id}, not for identity {name}")));
        }
        let (not_before, not_after) = not_after_of(&chain[0]).map_err(|e| bad(cert_path, e))?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(key_path, format!("unusable private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|_| bad(key_path, format!("the key does not match {}", cert_path.display())))?;
        Ok((Arc::new(certified), not_before, not_after))
    }

    /// The server configs presenting `key`: plain, and agreeing to the reusable hop.
    fn server_configs_for(
        &self,
        roots: &Arc<RootCertStore>,
        ticketer: &Arc<dyn rustls::server::ProducesTickets>,
        key: Arc<CertifiedKey>,
    ) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), PkiError> {
        let verifier =
            SpiffeClientVerifier::new(roots.clone(), self.trust_domain.clone(), self.provider.clone())
                .map_err(|e| PkiError::Config(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PkiError::Config(e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(Presents(key)));
        config.ticketer = ticketer.clone();
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        // One new ticket per handshake: a resumption spends one, so the client's jar stays as
        // full as the connections it opens at once. A second costs each handshake another
        // ticket sealed, sent, opened and stored.
        config.send_tls13_tickets = 1;
        let mut hop = config.clone();
        hop.alpn_protocols = alpns(&HOP_ALPNS);
        Ok((Arc::new(config), Arc::new(hop)))
    }

    /// The files a reload reads (for the watcher).
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = match &self.source {
            TlsSource::Files { ca, dir } => {
                let mut d: Vec<PathBuf> = self.names.iter().map(|n| dir.join(n.as_str())).collect();
                // revoked.json
                d.push(dir.clone());
                d.push(ca.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from(".")));
                d
            }
            TlsSource::LocalCa { ca_dir, .. } => vec![ca_dir.clone()],
        };
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Keeps the material fresh until `stop`: reloads when the files change (coalesced), and
    /// from a local CA re-issues each leaf at two thirds of its lifetime.
    pub fn spawn_refresh(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
            let watcher = {
                use notify::Watcher as _;
                let tx = tx.clone();
                let w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                    if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                        let _ = tx.try_send(());
                    }
                });
                match w {
                    Ok(mut w) => {
                        for dir in store.watched_dirs() {
                            if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                                warn!(dir = %dir.display(), error = %e, "cannot watch certificate directory; SIGHUP still reloads");
                            }
                        }
                        Some(w)
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot watch certificate files; SIGHUP still reloads");
                        None
                    }
                }
            };
            // The revocation list may have changed between the start's read and the watch: read
            // it again now that a change cannot be missed.
            let s = store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.reload_revocations()).await {
                error!(error = %e, "revocation list refused; keeping the one in force");
            }
            loop {
                let wait =
                    store.next_renewal().map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
                let timer = tokio::time::sleep(
                    wait.unwrap_or(Duration::from_secs(3600)).min(Duration::from_secs(3600)),
                );
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = rx.recv() => {
                        // Coalesce: writers replace key and cert one after the other.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = timer => {}
                }
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(Ok(())) => info!("certificates reloaded"),
                    Ok(Err(e)) => {
                        error!(error = %e, "certificate reload refused; keeping the current certificates")
                    }
                    Err(_) => {}
                }
            }
            drop(watcher);
        })
    }

    /// When the next locally issued leaf is due for renewal (None for file-based material).
    fn next_renewal(&self) -> Option<SystemTime> {
        if !matches!(self.source, TlsSource::LocalCa { .. }) {
            return None;
        }
        self.material().identities.values().map(renewal_time).min()
    }
}

/// Ticket keys for material that could not be built at all: issues no tickets.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Always presents one identity's certificate chain, on either side of a handshake.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn renewal_time(i: &Identity) -> SystemTime {
    let life = i.not_after.duration_since(i.not_before).unwrap_or_default();
    i.not_before + life * 2 / 3
}

fn renewal_due(i: &Identity, now: SystemTime) -> bool {
    now >= renewal_time(i)
}
