//! The CAs of a CA directory during a rotation, and the rotation steps (`cordon ca rotate`).
//!
//! | files | phase | signs with | bundle |
//! |---|---|---|---|
//! | `ca.pem`, `ca-key.pem` | steady | `ca` | `ca` |
//! | + `next/ca.pem`, `next/ca-key.pem` | prepared | `ca` (old) | `ca` + `next` |
//! | `ca.pem` (new), `old-ca.pem` | activated | `ca` (new) | `ca` + `old-ca` |
//!
//! Each `cordon ca rotate` moves one row down (and from activated back to steady, retiring the old
//! CA). Agents receive the bundle with every leaf, so between two steps every host renews once:
//! first all trust the new CA, then all hold leaves from it, then the old one can go.
//! `bundle.pem` is written at each step for hosts that take their bundle by file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{random, serial_hex, sha256_hex};
use crate::pki::files::{read, write_atomic};
use crate::pki::{Ca, HostName, PkiError, ServiceId, ServiceName, TrustDomain};

/// Leaves start a little in the past for hosts with slow clocks: 5 minutes, or a tenth of a short
/// lifetime.
const BACKDATE: Duration = Duration::from_secs(300);

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// One CA.
    Steady,
    /// A new CA is in the bundle; the old one still signs.
    Prepared,
    /// The new CA signs; the old one is still in the bundle.
    Activated,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Prepared => "prepared",
            Phase::Activated => "activated",
        }
    }
}

/// What one `cordon ca rotate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateStep {
    /// A new CA was made and added to the bundle.
    Prepared,
    /// The new CA signs from now on.
    Activated,
    /// The old CA left the bundle.
    Retired,
}

/// A CA certificate in the bundle.
#[derive(Debug, Clone)]
pub struct CaCert {
    pub pem: String,
    pub der: CertificateDer<'static>,
    /// SHA-256 of the DER, first 16 hex digits.
    pub fingerprint: String,
}

impl CaCert {
    fn load(path: &Path) -> Result<CaCert, PkiError> {
        let pem = read(path)?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadFile {
            path: path.to_owned(),
            message: format!("no certificate: {e}"),
        })?;
        let fingerprint = sha256_hex(der.as_ref())[..16].to_string();
        Ok(CaCert { pem, der, fingerprint })
    }
}

/// The CAs of one directory: the one that signs, and the one arriving or leaving.
pub struct CaSet {
    pub trust_domain: TrustDomain,
    pub current: CaCert,
    /// Prepared, not signing yet.
    pub next: Option<CaCert>,
    /// Retiring, still trusted.
    pub old: Option<CaCert>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSet")
            .field("trust_domain", &self.trust_domain)
            .field("current", &self.current.fingerprint)
            .field("phase", &self.phase())
            .finish()
    }
}

fn gen_err(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |e| PkiError::Generate { what, message: e.to_string() }
}

fn next_dir(dir: &Path) -> PathBuf {
    dir.join("next")
}

impl CaSet {
    /// Loads the CA directory as it stands.
    pub fn load(dir: &Path) -> Result<CaSet, PkiError> {
        let ca = Ca::load(dir)?;
        let current = CaCert::load(&dir.join("ca.pem"))?;
        let key_path = dir.join("ca-key.pem");
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|e| PkiError::BadFile { path: key_path.clone(), message: e.to_string() })?;
        if !key_matches(&current.der, &key) {
            return Err(PkiError::BadFile {
                path: key_path,
                message: "the key does not match ca.pem (a rotation step was interrupted?)".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_pem(&current.pem, key)
            .map_err(|e| PkiError::BadFile { path: dir.join("ca.pem"), message: e.to_string() })?;
        let next_pem = next_dir(dir).join("ca.pem");
        let next = if next_pem.exists() { Some(CaCert::load(&next_pem)?) } else { None };
        let old_pem = dir.join("old-ca.pem");
        let old = if old_pem.exists() { Some(CaCert::load(&old_pem)?) } else { None };
        if next.is_some() && old.is_some() {
            return Err(PkiError::BadFile {
                path: dir.to_owned(),
                message: "both next/ and old-ca.pem exist: two rotations at once".into(),
            });
        }
        Ok(CaSet { trust_domain: ca.trust_domain().clone(), current, next, old, issuer })
    }

    pub fn phase(&self) -> Phase {
        match (&self.next, &self.old) {
            (Some(_), _) => Phase::Prepared,
            (None, Some(_)) => Phase::Activated,
            (None, None) => Phase::Steady,
        }
    }

    /// Every CA hosts must trust, signing one first.
    pub fn bundle(&self) -> String {
        let mut pem = self.current.pem.clone();
        for other in self.next.iter().chain(self.old.iter()) {
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            pem.push_str(&other.pem);
        }
        pem
    }

    /// Fingerprints of the bundle's CAs.
    pub fn bundle_fingerprints(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(self.next.iter())
            .chain(self.old.iter())
            .map(|c| c.fingerprint.clone())
            .collect()
    }

    /// The bundle as rustls roots.
    pub fn roots(&self) -> Result<RootCertStore, PkiError> {
        let mut roots = RootCertStore::empty();
        for c in std::iter::once(&self.current).chain(self.next.iter()).chain(self.old.iter()) {
            roots.add(c.der.clone()).map_err(|e| PkiError::Config(format!("CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// Signs a leaf for `identity` on `host` with the public key of a verified CSR, valid for
    /// `ttl`. The leaf names the host as its one DNS-name SAN beside the SPIFFE URI. Whatever else
    /// the CSR asks for is ignored: cordon decides the names and usages.
    pub fn sign(
        &self,
        identity: &ServiceName,
        host: &HostName,
        csr: &CertificateSigningRequestParams,
        ttl: Duration,
    ) -> Result<(String, String, SystemTime), PkiError> {
        let id = ServiceId::new(self.trust_domain.clone(), identity.clone());
        let uri = id.uri().try_into().map_err(gen_err("SPIFFE URI"))?;
        let dns = host.as_str().try_into().map_err(gen_err("host name"))?;
        let mut params = leaf_params(identity.as_str(), vec![SanType::URI(uri), SanType::DnsName(dns)], ttl)?;
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let serial = params.serial_number.as_ref().map(|s| serial_hex(s.as_ref())).unwrap_or_default();
        let not_after = SystemTime::now() + ttl;
        let signed = CertificateSigningRequestParams { params, public_key: csr.public_key.clone() };
        let cert = signed.signed_by(&self.issuer).map_err(gen_err("leaf certificate"))?;
        Ok((cert.pem(), serial, not_after))
    }

    /// A certificate for the signing service itself: its own URI (see [`super::issuer_uri`]),
    /// server auth only, with a fresh key.
    pub fn service_cert(
        &self,
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let uri = super::issuer_uri(&self.trust_domain).try_into().map_err(gen_err("issuer URI"))?;
        let mut params = leaf_params("cordon issuer", vec![SanType::URI(uri)], ttl)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("issuer key"))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err("issuer certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .map_err(|e| PkiError::Config(format!("issuer key: {e}")))?;
        Ok((vec![cert.der().clone()], key))
    }
}

/// Whether `key` is the key of the certificate `der`.
fn key_matches(der: &CertificateDer<'_>, key: &KeyPair) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    match X509Certificate::from_der(der.as_ref()) {
        Ok((_, x509)) => {
            x509.tbs_certificate.subject_pki.subject_public_key.data.as_ref() == key.public_key_raw()
        }
        Err(_) => false,
    }
}

fn leaf_params(cn: &str, sans: Vec<SanType>, ttl: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut serial = random::<16>()?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE.min(ttl / 10)).into();
    params.not_after = (now + ttl).into();
    Ok(params)
}

/// Moves the rotation in `dir` one step on (see the module doc). `ready` is asked before
/// activating and before retiring, with the step about to happen; it returns why not, if not.
pub fn rotate(
    dir: &Path,
    ready: impl FnOnce(RotateStep, &CaSet) -> Result<(), String>,
) -> Result<Result<RotateStep, String>, PkiError> {
    let set = CaSet::load(dir)?;
    let step = match set.phase() {
        Phase::Steady => {
            Ca::init(&next_dir(dir), &set.trust_domain)?;
            RotateStep::Prepared
        }
        Phase::Prepared => {
            if let Err(why) = ready(RotateStep::Activated, &set) {
                return Ok(Err(why));
            }
            let io = |path: PathBuf| move |source| PkiError::Write { path: path.clone(), source };
            let next = next_dir(dir);
            write_atomic(&dir.join("old-ca.pem"), set.current.pem.as_bytes(), 0o644)?;
            // The key first: a reader between the two renames sees a mismatch and fails to load,
            // rather than signing with the old key under the new name.
            std::fs::rename(next.join("ca-key.pem"), dir.join("ca-key.pem"))
                .map_err(io(dir.join("ca-key.pem")))?;
            std::fs::rename(next.join("ca.pem"), dir.join("ca.pem")).map_err(io(dir.join("ca.pem")))?;
            std::fs::remove_dir_all(&next).map_err(io(next.clone()))?;
            RotateStep::Activated
        }
        Phase::Activated => {
            if let Err(why) = ready(RotateStep::Retired, &set) {
                return Ok(Err(why));
            }
            let old = dir.join("old-ca.pem");
            std::fs::remove_file(&old).map_err(|source| PkiError::Write { path: old.clone(), source })?;
            RotateStep::Retired
        }
    };
    let set = CaSet::load(dir)?;
    write_atomic(&dir.join("bundle.pem"), set.bundle().as_bytes(), 0o644)?;
    Ok(Ok(step))
}
