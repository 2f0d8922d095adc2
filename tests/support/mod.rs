//! Shared test support: a throwaway world of CA, certificates, discovery files and policy, echo
//! apps on loopback, and an `eventually` helper. Certificates come from the real `cordon` binary.
#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use cordon::agent::Agent;
use cordon::agent::config::Config;
use cordon::ledger::{EdgeKey, Event, RecorderHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const TRUST_DOMAIN: &str = "test.internal";

/// Runs the built `cordon` binary with a scrubbed environment; panics with its stderr on failure.
pub fn cordon(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run cordon")
}

pub fn cordon_ok(args: &[&str]) -> String {
    let out = cordon(args);
    assert!(
        out.status.success(),
        "cordon {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary directory holding everything a few agents need.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let w = Self { dir };
        std::fs::create_dir_all(w.discovery()).unwrap();
        std::fs::create_dir_all(w.path("tls")).unwrap();
        cordon_ok(&["ca", "init", "--dir", w.ca().to_str().unwrap(), "--trust-domain", TRUST_DOMAIN]);
        w.write_policy("[modes]\n\"*\" = \"learn\"\n");
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn ca(&self) -> PathBuf {
        self.path("ca")
    }
    pub fn discovery(&self) -> PathBuf {
        self.path("discovery")
    }
    pub fn policy(&self) -> PathBuf {
        self.path("policy.toml")
    }

    /// Issues `<tls>/<service>/cert.pem` and `key.pem` with the real CLI.
    pub fn issue(&self, service: &str) {
        self.issue_for_days(service, 7);
    }

    pub fn issue_for_days(&self, service: &str, days: u32) {
        let out = self.path("tls").join(service);
        let days = days.to_string();
        cordon_ok(&[
            "cert",
            "issue",
            "--ca",
            self.ca().to_str().unwrap(),
            "--service",
            service,
            "--out",
            out.to_str().unwrap(),
            "--days",
            &days,
        ]);
    }

    /// Replaces a file the way config management and Synapse do: write aside, then rename.
    pub fn replace(&self, path: &Path, text: &str) {
        let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    pub fn write_policy(&self, text: &str) {
        self.replace(&self.policy(), text);
    }

    /// Writes `<service>.json` as Synapse's file_output does. Each backend: (host, port, mTLS port).
    pub fn write_discovery(&self, service: &str, backends: &[(IpAddr, u16, Option<u16>)]) {
        let entries: Vec<serde_json::Value> = backends
            .iter()
            .enumerate()
            .map(|(i, (host, port, mtls))| {
                let labels = match mtls {
                    Some(p) => serde_json::json!({"cordon_mtls_port": p.to_string(), "az": "test-1a"}),
                    None => serde_json::json!({"az": "test-1a"}),
                };
                serde_json::json!({
                    "host": host.to_string(), "port": port, "name": format!("{service}-{i}"),
                    "id": i, "weight": null, "haproxy_server_options": null, "labels": labels,
                })
            })
            .collect();
        let path = self.discovery().join(format!("{service}.json"));
        self.replace(&path, &serde_json::to_string_pretty(&entries).unwrap());
    }

    /// An agent config for one host: served services (name, app address), upstreams (service,
    /// identity), everything on 127.0.0.1:0, its own state dir and decision log.
    pub fn config(&self, host: &str, services: &[(&str, SocketAddr)], upstreams: &[(&str, &str)]) -> Config {
        self.config_with(host, services, upstreams, "")
    }

    /// Like [`World::config`], with extra `[proxy]` lines.
    pub fn config_with(
        &self,
        host: &str,
        services: &[(&str, SocketAddr)],
        upstreams: &[(&str, &str)],
        proxy: &str,
    ) -> Config {
        let mut text = format!(
            "trust_domain = \"{TRUST_DOMAIN}\"\ndiscovery_dir = \"{}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\n\
             decision_log = \"{}\"\nadmin = \"127.0.0.1:0\"\nhost = \"{host}\"\n\
             [tls]\nca = \"{}\"\ndir = \"{}\"\n[proxy]\nflush_interval_ms = 100\ndrain_timeout_s = 5\n{proxy}",
            self.discovery().display(),
            self.policy().display(),
            self.path(&format!("state-{host}")).display(),
            self.path(&format!("decisions-{host}.jsonl")).display(),
            self.ca().join("ca.pem").display(),
            self.path("tls").display(),
        );
        for (name, app) in services {
            text += &format!("[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n");
        }
        for (service, identity) in upstreams {
            text += &format!(
                "[[upstream]]\nservice = \"{service}\"\nlisten = \"127.0.0.1:0\"\nidentity = \"{identity}\"\n"
            );
        }
        // Also on disk, so tests can run the binary with it.
        let path = self.path(&format!("{host}.toml"));
        std::fs::write(&path, &text).unwrap();
        Config::parse(&text, &path).unwrap()
    }

    pub fn decision_log(&self, host: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path(&format!("decisions-{host}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn ledger(&self, host: &str) -> PathBuf {
        self.path(&format!("state-{host}")).join("ledger.db")
    }
}

/// An echo app on 127.0.0.1:0 that counts the connections it accepts. It echoes until the
/// client half-closes, then half-closes its own side.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl EchoApp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Sends `msg`, half-closes, and reads the whole reply.
pub async fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    exchange(TcpStream::connect(addr).await?, msg).await
}

async fn exchange(mut s: TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .map_err(|_| std::io::Error::other("no reply within 10 s"))??;
    Ok(reply)
}

/// Like [`round_trip`] but from a chosen loopback source address (127.0.0.x looks like another host).
pub async fn round_trip_from(source: IpAddr, addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    exchange(socket.connect(addr).await?, msg).await
}

/// Polls `check` until it returns true or `deadline` passes; panics with `what` then.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on (bound, then released).
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

pub fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// GET over a plain TCP socket to an agent's admin endpoint, as a scraper would; asserts a 200
/// and returns the body.
pub fn admin_get(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: cordon\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Reads one counter or gauge from a Prometheus exposition: the sum over the series whose labels
/// include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A db host (inbound for "db" in front of an echo app) listed in discovery.
pub async fn db_host(world: &World) -> (Agent, EchoApp) {
    let app = EchoApp::start().await;
    world.issue("db");
    let db = Agent::start(world.config("db-host", &[("db", app.addr)], &[])).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(port))]);
    (db, app)
}

/// A caller host dialling "db" through its outbound listener with `identity`.
pub async fn caller_host(world: &World, identity: &str) -> Agent {
    world.issue(identity);
    Agent::start(world.config(&format!("{identity}-host"), &[], &[("db", identity)])).await.unwrap()
}
/// A raw hop client with our web identity, offering only `alpn`, as an agent of that version does.
pub async fn raw_hop(
    world: &World,
    to: SocketAddr,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    world.issue("web");
    let source = cordon::pki::TlsSource::Files { ca: world.ca().join("ca.pem"), dir: world.path("tls") };
    let web = cordon::pki::ServiceName::new("web").unwrap();
    let db = cordon::pki::ServiceName::new("db").unwrap();
    let store = cordon::pki::TlsStore::load(
        &source,
        &cordon::pki::TrustDomain::new(TRUST_DOMAIN).unwrap(),
        std::slice::from_ref(&web),
    )
    .unwrap();
    let mut config = (*store.client_config(&web, &db, to, cordon::pki::HopOffer::Framed).unwrap()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(to).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(cordon::pki::server_name(&db), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "the inbound agrees to the version offered");
    tls
}

/// An app that speaks first: a greeting on accept, then an echo.
pub async fn greeting_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 db ready\r\n").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A db host in front of [`greeting_app`] and a web caller (with `proxy` lines) that connects
/// through it twice, getting the greeting unasked each time. Returns the db agent.
pub async fn greeted_twice(world: &World, proxy: &str) -> Agent {
    let app = greeting_app().await;
    world.issue("db");
    let db = Agent::start(world.config("db-host", &[("db", app)], &[])).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.port(), Some(port))]);
    world.issue("web");
    let web = Agent::start(world.config_with("web-host", &[], &[("db", "web")], proxy)).await.unwrap();
    for attempt in 0..2 {
        let mut c = TcpStream::connect(web.bound().upstream("db").unwrap()).await.unwrap();
        let mut greeting = [0u8; 14];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut greeting)).await.unwrap().unwrap();
        assert_eq!(&greeting, b"220 db ready\r\n", "attempt {attempt}: the greeting arrives unasked");
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
    }
    db
}

pub mod gate;
pub mod postgres;
pub mod readiness;
pub mod siem;
pub mod signer;
pub mod tmpfs;

/// Writes a secret (a join token, a password) readable by its owner only, as cordon requires.
pub fn write_secret(path: &std::path::Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// One connection on `edge` as a proxy records it: opened at `opened`, closed at `closed` after
/// carrying `bytes` (to the destination, to the source).
pub fn connection(
    h: &RecorderHandle,
    edge: &EdgeKey,
    opened: SystemTime,
    closed: SystemTime,
    bytes: (u64, u64),
) {
    h.record_wait(Event::Opened { edge: edge.clone(), at: opened });
    h.record_wait(Event::Closed {
        edge: edge.clone(),
        at: closed,
        bytes_to_destination: bytes.0,
        bytes_to_source: bytes.1,
        duration: closed.duration_since(opened).unwrap_or_default(),
    });
}
