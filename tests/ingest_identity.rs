//! The ingest service's own identity from the signing service: `cordon store serve --host
//! --issuer --join-token-file` enrols `spiffe://TD/service/cordon-store` into an empty
//! `--tls-dir`, renews it while it serves (each new connection gets the leaf in force), and
//! polls the revocation list, refusing a revoked host's shipments. A real `cordon ca serve`, a
//! real `cordon store serve`, real `cordon ship` runs and a real PostgreSQL (skipped with a
//! message where PostgreSQL is not installed, unless `CORDON_REQUIRE_POSTGRES=1`).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cordon::ledger::{EdgeKey, Recorder};
use cordon::pki::{HopOffer, ServiceName, TlsStore, host_of, serial_of, spiffe_id_of};
use cordon::policy::{Identified, Mode, Verdict};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use support::postgres::Postgres;
use support::signer::{Signer, token};
use support::{TRUST_DOMAIN, World, cordon, cordon_ok, eventually, metric};

const INGEST_PASSWORD: &str = "ingest-secret";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// PostgreSQL with `cordon store init` and a login in `cordon_ingest`; the URL the ingest
/// service writes with.
fn store(pg: &Postgres) -> String {
    pg.create_db("fleet");
    cordon_ok(&["store", "init", "--db", &pg.url("fleet")]);
    pg.psql(
        "fleet",
        &format!(
            "CREATE ROLE ingest_svc LOGIN PASSWORD '{INGEST_PASSWORD}'; GRANT cordon_ingest TO ingest_svc"
        ),
    );
    let pw = pg.password_file("ingest-password", INGEST_PASSWORD);
    format!("postgres://ingest_svc@127.0.0.1:{}/fleet?password_file={}", pg.port, pw.display())
}

/// `cordon store serve` as a child process; killed when dropped. Its log goes to `store.log`.
struct StoreServe {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl StoreServe {
    /// Enrolling as `store-1` through `signer`, with an empty `--tls-dir` and the CA certificate
    /// as its first bundle.
    fn enrolling(world: &World, signer: &Signer, db: &str) -> StoreServe {
        let token = token(world, "store-1", &["cordon-store"], "1h");
        let dir = world.path("store");
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::copy(world.ca().join("ca.pem"), dir.join("bundle.pem")).unwrap();
        let log = world.path("store.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args(["store", "serve", "--db", db, "--listen", "127.0.0.1:0"])
            .args(["--ca", s(&dir.join("bundle.pem")), "--tls-dir", s(&dir.join("tls"))])
            .args(["--host", "store-1", "--issuer", &signer.url(), "--join-token-file", s(&token)])
            .args(["--revocation-poll-ms", "200"])
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("run cordon store serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no address in {line:?}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        StoreServe { addr: addr.to_string(), child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StoreServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host `web-1`: a hand-issued leaf for `web` naming it, an agent config shipping as it, and
/// a ledger where web called db. Returns (config, ledger).
fn web_host(world: &World) -> (PathBuf, PathBuf) {
    let out = world.path("tls/web");
    cordon_ok(&[
        "cert",
        "issue",
        "--ca",
        s(&world.ca()),
        "--service",
        "web",
        "--host",
        "web-1",
        "--out",
        s(&out),
    ]);
    world.config("web-1", &[], &[("db", "web")]);
    let ledger = world.path("web-1.db");
    let (rec, handle) = Recorder::start(&ledger, "web-1", 1024, Duration::from_millis(50)).unwrap();
    let edge = EdgeKey {
        source: "web".into(),
        destination: "db".into(),
        identified: Identified::Mtls,
        mode: Mode::Learn,
        verdict: Verdict::Allow,
    };
    let now = SystemTime::now();
    support::connection(&handle, &edge, now, now, (10, 100));
    rec.shutdown();
    (world.path("web-1.toml"), ledger)
}

fn ship(config: &Path, ledger: &Path, addr: &str) -> std::process::Output {
    cordon(&["ship", "--db", s(ledger), "--to", &format!("https://{addr}"), "--config", s(config)])
}

/// The serial of the leaf the service presents to a new connection (a full handshake: no
/// resumption, which would carry the leaf of an earlier one), after checking it proves
/// `cordon-store` and is valid now; None when the handshake fails.
async fn presented_serial(world: &World, addr: &str) -> Option<String> {
    let conn = connect_as_web(world, addr).await?;
    let leaf = conn.get_ref().1.peer_certificates()?.first()?.clone();
    serial_of(&leaf)
}

/// The ingest service's `/metrics`, fetched over mTLS with web-1's leaf.
async fn scrape(world: &World, addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = connect_as_web(world, addr).await.expect("a handshake with the ingest service");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: cordon-store\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out).await;
    out
}

/// A full handshake (no resumption) with the ingest service as web-1.
async fn connect_as_web(
    world: &World,
    addr: &str,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = world.config("web-1", &[], &[("db", "web")]);
    let web = ServiceName::new("web").unwrap();
    let tls = TlsStore::load(&config.tls, &config.trust_domain, std::slice::from_ref(&web)).unwrap();
    let store = ServiceName::new("cordon-store").unwrap();
    let client =
        tls.client_config(&web, &store, "0.0.0.0:0".parse().unwrap(), HopOffer::None).expect("web's leaf");
    let mut client = (*client).clone();
    client.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("cordon-store").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.ok()
}

fn leaf_on_disk(world: &World) -> CertificateDer<'static> {
    let pem = std::fs::read(world.path("store/tls/cordon-store/cert.pem")).unwrap();
    CertificateDer::from_pem_slice(&pem).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_service_enrols_its_leaf_and_renews_it_while_serving() {
    let Some(pg) = Postgres::start("the_ingest_service_enrols_its_leaf_and_renews_it_while_serving") else {
        return;
    };
    let db = store(&pg);
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "6s");
    let serve = StoreServe::enrolling(&world, &signer, &db);

    // Enrolled before listening: the leaf is the service's identity, names its host, and its key
    // was made here.
    let leaf = leaf_on_disk(&world);
    let id = spiffe_id_of(&leaf, None).unwrap();
    assert_eq!(id.uri(), format!("spiffe://{TRUST_DOMAIN}/service/cordon-store"));
    assert_eq!(host_of(&leaf).map(|h| h.to_string()).as_deref(), Some("store-1"));
    use std::os::unix::fs::PermissionsExt;
    let key = world.path("store/tls/cordon-store/key.pem");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // A host ships through it.
    let (config, ledger) = web_host(&world);
    let out = ship(&config, &ledger, &serve.addr);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), serve.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("shipped 1 rows"), "{out:?}");
    assert_eq!(
        pg.psql("fleet", "SELECT shipper, evidence FROM edge_hour WHERE source = 'web' AND host = 'web-1'"),
        "web|claimed"
    );

    // The leaf is renewed (6 s leaves, renewed at two thirds) and served without a restart.
    let first = presented_serial(&world, &serve.addr).await;
    assert_eq!(first, serial_of(&leaf), "the enrolled leaf is the one served");
    // A leaf that was not renewed in time fails the handshake (expired): that is no renewal.
    eventually("the service presents a renewed leaf", Duration::from_secs(30), || async {
        presented_serial(&world, &serve.addr).await.is_some_and(|now| Some(now) != first)
    })
    .await;
    let out = ship(&config, &ledger, &serve.addr);
    assert!(out.status.success(), "still serving: {}\n{}", String::from_utf8_lossy(&out.stderr), serve.log());
    // Its leaf shows on /metrics under the agents' names, so their alerts cover it too.
    let m = scrape(&world, &serve.addr).await;
    let left = metric(&m, "cordon_certificate_expiry_seconds", &[("identity", "cordon-store")]);
    assert!(left > 0.0 && left <= 6.0, "{m}");
    let renewed =
        metric(&m, "cordon_certificate_renewals_total", &[("identity", "cordon-store"), ("result", "ok")]);
    assert!(renewed >= 1.0, "{m}");
    assert!(metric(&m, "cordon_ingest_rows_accepted_total", &[]) >= 2.0, "{m}");
    assert!(m.contains("cordon_revocation_polls_total{result=\"ok\"}"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_host_cannot_ship_through_the_ingest_service() {
    let Some(pg) = Postgres::start("a_revoked_host_cannot_ship_through_the_ingest_service") else {
        return;
    };
    let db = store(&pg);
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let serve = StoreServe::enrolling(&world, &signer, &db);
    let (config, ledger) = web_host(&world);
    let out = ship(&config, &ledger, &serve.addr);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), serve.log());

    cordon_ok(&["ca", "revoke", "--dir", s(&world.ca()), "--host", "web-1"]);
    // The service learns of it by its own poll of the signing service.
    eventually("web-1's shipments are refused as revoked", Duration::from_secs(30), || async {
        let out = ship(&config, &ledger, &serve.addr);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("revoked")
    })
    .await;
    let out = ship(&config, &ledger, &serve.addr);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("403") && err.contains("host it names"), "{err}");
    assert!(world.path("store/tls/revoked.json").exists(), "the service keeps its copy of the list");
    // Logged once for the host, identity and cause, however often it is refused.
    let log = serve.log();
    let lines = log.lines().filter(|l| l.contains("refused") && l.contains("revoked")).count();
    assert_eq!(lines, 1, "{log}");
    // The list it enforces shows on its /metrics (scraped as another host, not revoked).
    cordon_ok(&[
        "cert",
        "issue",
        "--ca",
        s(&world.ca()),
        "--service",
        "web",
        "--host",
        "web-2",
        "--out",
        s(&world.path("tls/web")),
    ]);
    let m = scrape(&world, &serve.addr).await;
    assert_eq!(metric(&m, "cordon_revocations", &[("kind", "host")]), 1.0, "{m}");
}

#[test]
fn enrolment_flags_come_together_and_the_token_must_be_private() {
    let world = World::new();
    let dir = world.path("store");
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let ca = world.ca().join("ca.pem");
    let db = "postgres://ingest_svc@127.0.0.1:1/fleet";
    let base = ["store", "serve", "--db", db, "--listen", "127.0.0.1:0", "--ca", s(&ca), "--tls-dir"];
    let tls = dir.join("tls");

    let mut alone = base.to_vec();
    alone.extend([s(&tls), "--host", "store-1"]);
    let out = cordon(&alone);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--issuer") && err.contains("--join-token-file"), "{err}");

    let token = world.path("open.token");
    std::fs::write(&token, "cordon-join-00\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut open = base.to_vec();
    open.extend([
        s(&tls),
        "--host",
        "store-1",
        "--issuer",
        "https://127.0.0.1:1",
        "--join-token-file",
        s(&token),
    ]);
    let out = cordon(&open);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(s(&token)) && err.contains("0644") && err.contains("--join-token-file"), "{err}");

    // Without enrolment and without a leaf, the error says how to get one.
    let mut bare = base.to_vec();
    bare.push(s(&tls));
    let out = cordon(&bare);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cordon-store/cert.pem") && err.contains("--issuer"),
        "{err}"
    );
}
