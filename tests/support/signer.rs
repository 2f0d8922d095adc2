//! The signing service as a child process (`cordon ca serve`), join tokens from the binary, and
//! a raw HTTPS client that can speak from any loopback address.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use cordon::pki::issuer::{IssuerSettings, Renewer};
use cordon::pki::{ServiceName, TrustDomain};

use super::*;

/// `cordon ca serve` as a child process; killed when dropped.
pub struct Signer {
    child: Child,
    pub addr: SocketAddr,
}

impl Signer {
    pub fn start(world: &World, listen: &str, leaf_ttl: &str) -> Signer {
        Signer::start_with(world, listen, leaf_ttl, &[])
    }

    /// With more arguments for `cordon ca serve`. Its log goes to `signer.log` in the world (and
    /// to `$CORDON_TEST_SIGNER_LOG` when set).
    pub fn start_with(world: &World, listen: &str, leaf_ttl: &str, extra: &[&str]) -> Signer {
        let log =
            std::env::var_os("CORDON_TEST_SIGNER_LOG").map(PathBuf::from).unwrap_or(world.path("signer.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args([
                "ca",
                "serve",
                "--dir",
                world.ca().to_str().unwrap(),
                "--listen",
                listen,
                "--leaf-ttl",
                leaf_ttl,
            ])
            .args(extra)
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap()))
            .spawn()
            .expect("run cordon ca serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address in {line:?}"));
        Signer { addr: addr.parse().unwrap(), child }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// CPU time (user and system) the service has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

/// User and system CPU seconds from a `/proc/PID/stat` file (Linux: 100 clock ticks a second).
pub fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // The fields after the command name, which may hold spaces; utime and stime are fields 14 and
    // 15 of proc(5), 11 and 12 here.
    let fields: Vec<&str> =
        text.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

impl Drop for Signer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mints a join token with the binary; returns the token file.
pub fn token(world: &World, host: &str, services: &[&str], ttl: &str) -> PathBuf {
    let ca = world.ca();
    let mut args = vec!["ca", "token", "--dir", ca.to_str().unwrap(), "--host", host, "--ttl", ttl];
    for s in services {
        args.extend(["--service", s]);
    }
    let out = cordon_ok(&args);
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("cordon-join-"), "{out}");
    let path = world.path(&format!("{host}-{}.token", services.join("-")));
    // A secret: readable by its owner only, or the agent refuses it.
    super::write_secret(&path, format!("{token}\n"));
    path
}

/// A host's own directory: its bundle (starting as the CA certificate) and its leaves.
pub fn host_dirs(world: &World, host: &str) -> (PathBuf, PathBuf) {
    let base = world.path(&format!("hosts/{host}"));
    std::fs::create_dir_all(base.join("tls")).unwrap();
    let bundle = base.join("bundle.pem");
    if !bundle.exists() {
        std::fs::copy(world.ca().join("ca.pem"), &bundle).unwrap();
    }
    (bundle, base.join("tls"))
}

/// A renewer outside any agent, to drive single requests.
pub fn renewer(
    world: &World,
    signer: &Signer,
    host: &str,
    identities: &[&str],
    token: Option<PathBuf>,
) -> Arc<Renewer> {
    let (bundle, dir) = host_dirs(world, host);
    Renewer::new(
        IssuerSettings::parse(&signer.url(), token).unwrap(),
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        bundle,
        dir,
        host.to_string(),
        identities.iter().map(|i| ServiceName::new(i).unwrap()).collect(),
    )
}

pub fn log_lines(world: &World) -> Vec<serde_json::Value> {
    std::fs::read_to_string(world.ca().join("issuance.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn serial_of(path: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    let der: rustls_pki_types::CertificateDer<'static> = der;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x) = X509Certificate::from_der(der.as_ref()).unwrap();
    x.raw_serial_as_string()
}

/// Accepts any server certificate: the tests that use it look at the service's answers, not at
/// its identity (the agents' client checks that).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One HTTPS request to the signing service from the loopback address `from`, without a client
/// certificate. Returns the status and the body.
pub async fn https(
    addr: SocketAddr,
    from: IpAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> std::io::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("cordon-issuer.invalid").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An enrolment request body for `host` with a fresh CSR for each identity.
pub fn enrol_body(host: &str, token: &str, identities: &[&str]) -> Vec<u8> {
    let csrs: Vec<_> = identities
        .iter()
        .map(|i| {
            let key = rcgen::KeyPair::generate().unwrap();
            let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
            serde_json::json!({"identity": i, "csr": csr})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"host": host, "token": token, "csrs": csrs})).unwrap()
}

/// The token text in a token file.
pub fn token_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}
