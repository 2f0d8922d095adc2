//! The built-in CA: `cordon ca init` and `cordon cert issue`.
//!
//! A CA directory holds `ca.pem` (the certificate, to distribute), `ca-key.pem` (0600, to guard)
//! and `trust-domain` (one line). Leaves carry exactly one URI SAN, the service's SPIFFE ID, and
//! both client and server auth usages.
//!
//! rcgen cannot express a URI name constraint, so the CA certificate carries none; the trust
//! domain is enforced by cordon's verifiers on every handshake instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::files::{read, read_private_key, write_atomic, write_new};
use super::{HostName, PkiError, ServiceId, ServiceName, TrustDomain};

/// How long a CA certificate lives.
const CA_DAYS: u64 = 3650;
/// Leaves start a little in the past, so hosts with slightly slow clocks accept them at once.
const BACKDATE: Duration = Duration::from_secs(300);

/// A leaf certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Leaf").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// A CA loaded from its directory.
pub struct Ca {
    dir: PathBuf,
    trust_domain: TrustDomain,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("dir", &self.dir).field("trust_domain", &self.trust_domain).finish()
    }
}

fn rcgen_err(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |e| PkiError::Generate { what, message: e.to_string() }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The provider's system random; a failure here is a broken OS, and a time-based serial is
    // still unique.
    if rustls::crypto::ring::default_provider().secure_random.fill(&mut bytes).is_err() {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// Creates a new CA in `dir` (created if missing). Refuses to overwrite an existing one.
    pub fn init(dir: &Path, trust_domain: &TrustDomain) -> Result<Ca, PkiError> {
        // A friendly early refusal; the exclusive creation below is what guarantees it.
        for f in ["ca.pem", "ca-key.pem"] {
            if dir.join(f).exists() {
                return Err(PkiError::CaExists { dir: dir.to_owned() });
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write { path: dir.to_owned(), source })?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("cordon CA for {trust_domain}"));
        dn.push(DnType::OrganizationName, "cordon");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + Duration::from_secs(CA_DAYS * 86_400)).into();
        let cert = params.self_signed(&key).map_err(rcgen_err("CA certificate"))?;
        // Created exclusively, not renamed into place: a CA made meanwhile, or a file or symlink
        // planted at either name, fails the init instead of being overwritten or followed.
        let exists = |e: PkiError| match e {
            PkiError::Write { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                PkiError::CaExists { dir: dir.to_owned() }
            }
            e => e,
        };
        let key_path = dir.join("ca-key.pem");
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(exists)?;
        if let Err(e) = write_new(&dir.join("ca.pem"), cert.pem().as_bytes(), 0o644) {
            // The key is ours (created above) and useless without its certificate.
            let _ = std::fs::remove_file(&key_path);
            return Err(exists(e));
        }
        write_atomic(&dir.join("trust-domain"), format!("{trust_domain}\n").as_bytes(), 0o644)?;
        Ok(Ca { dir: dir.to_owned(), trust_domain: trust_domain.clone(), cert_pem: cert.pem(), key })
    }

    /// Loads a CA directory made by [`Ca::init`]. A key that group or others may read is refused.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let td_path = dir.join("trust-domain");
        let td_text = read(&td_path)?;
        let trust_domain = TrustDomain::new(td_text.trim())
            .map_err(|e| PkiError::BadFile { path: td_path, message: e.to_string() })?;
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key_path = dir.join("ca-key.pem");
        let key = KeyPair::from_pem(&read_private_key(&key_path)?)
            .map_err(|e| PkiError::BadFile { path: key_path, message: e.to_string() })?;
        Ok(Ca { dir: dir.to_owned(), trust_domain, cert_pem, key })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf for `service`, valid for `days` from now.
    pub fn issue(&self, service: &ServiceName, days: u32) -> Result<Leaf, PkiError> {
        self.issue_for(service, None, days)
    }

    /// Issues a leaf for `service` that names `host` (one DNS-name SAN beside the SPIFFE URI), so
    /// whoever receives it knows which host holds it. Without a host the leaf speaks for no host.
    pub fn issue_for(
        &self,
        service: &ServiceName,
        host: Option<&HostName>,
        days: u32,
    ) -> Result<Leaf, PkiError> {
        let id = ServiceId::new(self.trust_domain.clone(), service.clone());
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(u64::from(days.max(1)) * 86_400);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, service.as_str());
        params.distinguished_name = dn;
        let uri = id.uri().try_into().map_err(rcgen_err("SPIFFE URI"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        if let Some(host) = host {
            params
                .subject_alt_names
                .push(SanType::DnsName(host.as_str().try_into().map_err(rcgen_err("host name"))?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        self.sign(params, not_after)
    }

    /// Signs arbitrary leaf parameters with this CA (tests build odd certificates with it).
    pub fn sign(&self, params: CertificateParams, not_after: SystemTime) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("leaf key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(rcgen_err("CA certificate"))?;
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_err("leaf certificate"))?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after })
    }

    /// Writes `cert.pem`, `key.pem` (0600) and `ca.pem` into `out` (created if missing). The key
    /// goes first: an agent that reloads between the two writes sees a mismatch and keeps its old
    /// pair until the certificate follows.
    pub fn write_leaf(&self, leaf: &Leaf, out: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(out).map_err(|source| PkiError::Write { path: out.to_owned(), source })?;
        write_atomic(&out.join("key.pem"), leaf.key_pem.as_bytes(), 0o600)?;
        write_atomic(&out.join("cert.pem"), leaf.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&out.join("ca.pem"), self.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }
}
