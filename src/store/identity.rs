//! The ingest service's own identity, `spiffe://TD/service/cordon-store`, and the fleet's
//! revocation list it judges hosts by.
//!
//! The leaf is either issued by hand into `--tls-dir` (`cordon cert issue --service cordon-store
//! --host H`), or enrolled and renewed through the signing service as any host's (`--host`,
//! `--issuer`, `--join-token-file`: [`Renewer::enrol_missing`] before listening, then
//! [`Renewer::spawn`]), with the revocation list polled from that service as agents poll it
//! ([`Renewer::spawn_revocation_poll`]). Either way the material is held in a [`TlsStore`], as an
//! agent's is: a renewed or replaced leaf is served from the next connection on, without a
//! restart, and the list in force is the one `tls_dir/revoked.json` holds (written by the poll;
//! without `--issuer` nothing writes it, so nothing is revoked unless an operator puts a copy
//! there).
//!
//! Must not hold the CA key: the service generates its key here and sends only a CSR.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;

use super::ingest::IngestOptions;
use super::wire;
use crate::pki::issuer::client::{IssuerError, trust_domain_of};
use crate::pki::issuer::{IssuerSettings, Renewer};
use crate::pki::{PkiError, ServiceName, TlsSource, TlsStore, TrustDomain, spiffe_id_of};

/// How long the first enrolment (and, before it, learning the trust domain) keeps retrying an
/// unreachable signing service before the start fails (a service manager restarts it), as an
/// agent's does.
const ENROL_DEADLINE: Duration = Duration::from_secs(30);

/// Enrolling and renewing through the signing service: the host the leaf names, and the service
/// with the join token (and the revocation list's poll interval).
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub host: String,
    pub issuer: IssuerSettings,
}

/// Why the service's identity could not be loaded or enrolled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No leaf in `--tls-dir`, and no signing service to enrol with.
    #[error(
        "{}: no leaf for the ingest service: issue one (cordon cert issue --service cordon-store --host H) \
         or enrol it (--host, --issuer and --join-token-file)",
        path.display()
    )]
    NoLeaf { path: PathBuf },
    /// The join token file may be read by group or others.
    #[error("{0}")]
    Token(String),
    /// A certificate, key or bundle file is missing or wrong.
    #[error(transparent)]
    Files(#[from] PkiError),
    /// The first enrolment failed (the signing service refused, or stayed unreachable).
    #[error("enrolment: {0}")]
    Enrol(#[from] IssuerError),
}

/// The service's leaf, the bundle its clients chain to and the revocation list in force.
pub struct Identity {
    pub tls: Arc<TlsStore>,
    pub trust_domain: TrustDomain,
    renewer: Option<Arc<Renewer>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("trust_domain", &self.trust_domain)
            .field("renewer", &self.renewer)
            .finish_non_exhaustive()
    }
}

fn service_name() -> ServiceName {
    ServiceName::new(wire::SERVICE).expect("cordon-store is a service name")
}

/// The trust domain the leaf in `dir` names, if there is a leaf (valid now or not).
fn leaf_trust_domain(options: &IngestOptions) -> Result<Option<TrustDomain>, PkiError> {
    let path = options.tls_dir.join(wire::SERVICE).join("cert.pem");
    if !path.exists() {
        return Ok(None);
    }
    let pem = crate::pki::files::read(&path)?;
    let bad = |message: String| PkiError::BadFile { path: path.clone(), message };
    let leaf: CertificateDer<'static> =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let id = spiffe_id_of(&leaf, None).map_err(|e| bad(e.to_string()))?;
    if id.service().as_str() != wire::SERVICE {
        return Err(bad(format!("the leaf is {id}, not the service {}", wire::SERVICE)));
    }
    Ok(Some(id.trust_domain().clone()))
}

impl Identity {
    /// Loads the leaf from `options.tls_dir`; with `enrol`, first enrols it when there is no
    /// valid one (learning the trust domain from the signing service when there is no leaf at
    /// all). Nothing runs in the background until [`Identity::spawn`].
    pub async fn start(options: &IngestOptions, enrol: Option<Enrolment>) -> Result<Identity, IdentityError> {
        if let Some(file) = enrol.as_ref().and_then(|e| e.issuer.join_token_file.as_deref())
            && let Some(problem) = crate::pki::files::secret_problem("--join-token-file", file)
        {
            return Err(IdentityError::Token(problem));
        }
        let trust_domain = match (leaf_trust_domain(options)?, &enrol) {
            (Some(td), _) => td,
            (None, Some(e)) => trust_domain_of(&e.issuer, &options.ca, ENROL_DEADLINE).await?,
            (None, None) => {
                return Err(IdentityError::NoLeaf {
                    path: options.tls_dir.join(wire::SERVICE).join("cert.pem"),
                });
            }
        };
        let renewer = match enrol {
            Some(e) => {
                let renewer = Renewer::new(
                    e.issuer,
                    trust_domain.clone(),
                    options.ca.clone(),
                    options.tls_dir.clone(),
                    e.host,
                    vec![service_name()],
                );
                renewer.enrol_missing(ENROL_DEADLINE).await?;
                Some(renewer)
            }
            None => None,
        };
        let source = TlsSource::Files { ca: options.ca.clone(), dir: options.tls_dir.clone() };
        let tls = TlsStore::load(&source, &trust_domain, &[service_name()])?;
        Ok(Identity { tls, trust_domain, renewer })
    }

    /// Keeps the material fresh until `stop`: reloads when the files change; with enrolment,
    /// renews the leaf when due and polls the revocation list.
    pub fn spawn(&self, stop: &CancellationToken) {
        self.tls.spawn_refresh(stop.clone());
        if let Some(r) = &self.renewer {
            r.spawn(self.tls.clone(), stop.clone());
            r.spawn_revocation_poll(self.tls.clone(), stop.clone());
        }
    }

    /// Its leaf's expiry, renewals and the revocation list, for `/metrics` (as an agent shows
    /// them).
    pub fn collectors(&self) -> Vec<crate::metrics::ScrapeCollector> {
        crate::metrics::identity(&self.tls, self.renewer.as_ref())
    }

    /// The server config presenting the current leaf (None only before there is one).
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.server_config(&service_name(), false).map(|s| s.config)
    }
}
