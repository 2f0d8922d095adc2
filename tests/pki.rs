//! Identity end to end: real TLS 1.3 handshakes on loopback between certificates made by our CA,
//! every rejection reason produced by a certificate built for it, resumption, and rotation.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cordon::pki::{
    Ca, RejectReason, ServiceId, ServiceName, SpiffeServerVerifier, TlsStore, TrustDomain, peer_service_id,
    server_name,
};
use cordon::pki::{HopOffer, TlsSource};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "test.internal";

fn name(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca"), &TrustDomain::new(TD).unwrap()).unwrap();
        Self { dir, ca }
    }
    fn tls_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("tls")
    }
    fn issue(&self, service: &str) {
        let leaf = self.ca.issue(&name(service), 7).unwrap();
        self.ca.write_leaf(&leaf, &self.tls_dir().join(service)).unwrap();
    }
    fn store(&self, identities: &[&str]) -> Arc<TlsStore> {
        let source = TlsSource::Files { ca: self.dir.path().join("ca/ca.pem"), dir: self.tls_dir() };
        let ids: Vec<ServiceName> = identities.iter().map(|s| name(s)).collect();
        TlsStore::load(&source, &TrustDomain::new(TD).unwrap(), &ids).unwrap()
    }
}

/// A leaf for odd cases: the given URIs, validity and CA.
fn odd_leaf(ca: &Ca, uris: &[&str], not_before: SystemTime, not_after: SystemTime) -> cordon::pki::Leaf {
    let mut p = CertificateParams::default();
    p.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
    if uris.is_empty() {
        p.subject_alt_names = vec![SanType::DnsName("web.example".try_into().unwrap())];
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = not_before.into();
    p.not_after = not_after.into();
    ca.sign(p, not_after).unwrap()
}

/// A raw client config presenting `leaf` and expecting the server to be `expect`.
fn client_with(pki: &Pki, leaf: &cordon::pki::Leaf, expect: &str) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).unwrap()).unwrap();
    let expected = ServiceId::new(TrustDomain::new(TD).unwrap(), name(expect));
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
                Arc::new(roots),
                expected,
                provider,
            )))
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// What the server side saw of one handshake.
type Seen = Result<ServiceId, RejectReason>;

/// A TLS echo server for `identity` on 127.0.0.1:0; reports each handshake's outcome.
async fn server(
    store: Arc<TlsStore>,
    identity: &str,
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let identity = name(identity);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = store.server_config(&identity, false).unwrap().config;
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                    Ok(mut tls) => {
                        let _ = tx.send(peer_service_id(tls.get_ref().1).ok_or(RejectReason::NoUriSan));
                        let mut buf = [0u8; 64];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(RejectReason::classify(&e)));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn dial(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    expect: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(server_name(&name(expect)), tcp).await?;
    // TLS 1.3: the server checks the client certificate after the client's handshake is done;
    // a round trip shows whether it was accepted.
    tls.write_all(b"x").await?;
    let mut one = [0u8; 1];
    tls.read_exact(&mut one).await?;
    Ok(tls)
}

#[tokio::test]
async fn a_good_pair_connects_and_each_side_sees_the_other() {
    let pki = Pki::new();
    pki.issue("db");
    pki.issue("web");
    let (addr, mut seen) = server(pki.store(&["db"]), "db").await;
    let client = pki.store(&["web"]).client_config(&name("web"), &name("db"), addr, HopOffer::None).unwrap();
    let tls = dial(addr, client, "db").await.unwrap();
    assert_eq!(peer_service_id(tls.get_ref().1).unwrap().to_string(), format!("spiffe://{TD}/service/db"));
    assert_eq!(seen.recv().await.unwrap().unwrap().to_string(), format!("spiffe://{TD}/service/web"));
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn each_rejection_reason_is_produced_by_a_certificate_built_for_it() {
    let pki = Pki::new();
    pki.issue("db");
    let (addr, mut seen) = server(pki.store(&["db"]), "db").await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let web = format!("spiffe://{TD}/service/web");
    let other_ca = Ca::init(&pki.dir.path().join("other-ca"), &TrustDomain::new(TD).unwrap()).unwrap();
    let cases: Vec<(&str, cordon::pki::Leaf, RejectReason)> = vec![
        ("another CA", other_ca.issue(&name("web"), 7).unwrap(), RejectReason::UnknownCa),
        ("expired", odd_leaf(&pki.ca, &[&web], now - 3 * day, now - day), RejectReason::Expired),
        ("not yet valid", odd_leaf(&pki.ca, &[&web], now + day, now + 3 * day), RejectReason::NotYetValid),
        ("no URI SAN", odd_leaf(&pki.ca, &[], now - day, now + day), RejectReason::NoUriSan),
        (
            "two URI SANs",
            odd_leaf(&pki.ca, &[&web, &format!("spiffe://{TD}/service/api")], now - day, now + day),
            RejectReason::ManyUriSans,
        ),
        (
            "foreign trust domain",
            odd_leaf(&pki.ca, &["spiffe://elsewhere.internal/service/web"], now - day, now + day),
            RejectReason::ForeignTrustDomain,
        ),
    ];
    for (what, leaf, want) in cases {
        let result = dial(addr, client_with(&pki, &leaf, "db"), "db").await;
        assert!(result.is_err(), "{what}: the server must refuse it");
        let got = seen.recv().await.unwrap();
        assert_eq!(got, Err(want), "{what}");
    }

    // The outbound side: dialling db, reaching a server that is api.
    pki.issue("api");
    pki.issue("web");
    let (api_addr, _) = server(pki.store(&["api"]), "api").await;
    let client =
        pki.store(&["web"]).client_config(&name("web"), &name("db"), api_addr, HopOffer::None).unwrap();
    let err = dial(api_addr, client, "db").await.unwrap_err();
    assert_eq!(RejectReason::classify(&err), RejectReason::UnexpectedService, "{err}");
}

#[tokio::test]
async fn reconnects_resume_the_session_and_keep_the_identity() {
    let pki = Pki::new();
    pki.issue("db");
    pki.issue("web");
    let (addr, mut seen) = server(pki.store(&["db"]), "db").await;
    let client = pki.store(&["web"]).client_config(&name("web"), &name("db"), addr, HopOffer::None).unwrap();
    let first = dial(addr, client.clone(), "db").await.unwrap();
    assert_eq!(first.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Full));
    drop(first);
    let second = dial(addr, client, "db").await.unwrap();
    assert_eq!(second.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    seen.recv().await.unwrap().unwrap();
    let resumed = seen.recv().await.unwrap().unwrap();
    assert_eq!(resumed.service().as_str(), "web", "a resumed session still names the caller");
}

#[tokio::test]
async fn each_backend_resumes_with_its_own_tickets() {
    // Two backends of db, each its own agent (its own ticket keys), dialled in turn as a load
    // balancer would: a ticket from one is no good at the other, so each keeps its own.
    let pki = Pki::new();
    pki.issue("db");
    pki.issue("web");
    let (a, _seen_a) = server(pki.store(&["db"]), "db").await;
    let (b, _seen_b) = server(pki.store(&["db"]), "db").await;
    let web = pki.store(&["web"]);
    let mut kinds = Vec::new();
    for round in 0..3 {
        for addr in [a, b] {
            let client = web.client_config(&name("web"), &name("db"), addr, HopOffer::None).unwrap();
            let tls = dial(addr, client, "db").await.unwrap();
            kinds.push((round, tls.get_ref().1.handshake_kind()));
        }
    }
    let full = kinds.iter().filter(|(_, k)| *k == Some(rustls::HandshakeKind::Full)).count();
    assert_eq!(full, 2, "one full handshake per backend, then resumption: {kinds:?}");
}

fn leaf_serial(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_a_corrupt_file_keeps_the_old_certificate() {
    let pki = Pki::new();
    pki.issue("db");
    pki.issue("web");
    let db = pki.store(&["db"]);
    let (addr, _seen) = server(db.clone(), "db").await;
    let web = pki.store(&["web"]);
    let client = || web.client_config(&name("web"), &name("db"), addr, HopOffer::None).unwrap();
    let mut open = dial(addr, client(), "db").await.unwrap();
    let before = leaf_serial(&open);

    // Rotate db's certificate on disk, reload: the open connection lives on, new ones see the new one.
    pki.issue("db");
    db.reload().unwrap();
    open.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y", "the open connection survived the rotation");
    // A fresh client (no session to resume) sees the new certificate.
    let fresh = pki.store(&["web"]).client_config(&name("web"), &name("db"), addr, HopOffer::None).unwrap();
    let after = dial(addr, fresh, "db").await.unwrap();
    assert_ne!(leaf_serial(&after), before, "new connections use the new certificate");

    // A corrupt certificate file is refused with its name, and db keeps serving the last good one.
    std::fs::write(pki.tls_dir().join("db/cert.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let err = db.reload().unwrap_err().to_string();
    assert!(err.contains("db/cert.pem"), "{err}");
    let fresh = pki.store(&["web"]).client_config(&name("web"), &name("db"), addr, HopOffer::None).unwrap();
    let still = dial(addr, fresh, "db").await.unwrap();
    assert_eq!(leaf_serial(&still), leaf_serial(&after), "still the last good certificate");
    assert_eq!(db.expiries().len(), 1);
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_is_refused_at_load() {
    let pki = Pki::new();
    pki.issue("db");
    let other = pki.ca.issue(&name("db"), 7).unwrap();
    std::fs::write(pki.tls_dir().join("db/key.pem"), other.key_pem).unwrap();
    let source = TlsSource::Files { ca: pki.dir.path().join("ca/ca.pem"), dir: pki.tls_dir() };
    let err = TlsStore::load(&source, &TrustDomain::new(TD).unwrap(), &[name("db")]).unwrap_err().to_string();
    assert!(err.contains("key.pem") && err.contains("does not match"), "{err}");
}

#[test]
fn ca_init_writes_a_0600_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    support::cordon_ok(&["ca", "init", "--dir", ca.to_str().unwrap(), "--trust-domain", TD]);
    let mode = std::fs::metadata(ca.join("ca-key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = support::cordon(&["ca", "init", "--dir", ca.to_str().unwrap(), "--trust-domain", TD]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    let bad = support::cordon(&[
        "ca",
        "init",
        "--dir",
        dir.path().join("x").to_str().unwrap(),
        "--trust-domain",
        "Bad TD",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn cert_issue_writes_one_spiffe_uri_a_0600_key_and_the_ca() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = dir.path().join("web");
    support::cordon_ok(&["ca", "init", "--dir", ca.to_str().unwrap(), "--trust-domain", TD]);
    support::cordon_ok(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--service",
        "web",
        "--out",
        out.to_str().unwrap(),
        "--days",
        "2",
    ]);
    let mode = std::fs::metadata(out.join("key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(Path::new(&out.join("ca.pem")).exists());
    let cert = CertificateDer::from_pem_file(out.join("cert.pem")).unwrap();
    let id = cordon::pki::spiffe_id_of(&cert, None).unwrap();
    assert_eq!(id.to_string(), format!("spiffe://{TD}/service/web"));
    for bad in ["we b", "*", "a/b"] {
        let r = support::cordon(&[
            "cert",
            "issue",
            "--ca",
            ca.to_str().unwrap(),
            "--service",
            bad,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(r.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&r.stderr).contains("service name"), "{bad}");
    }
}
