//! Revocation as agents enforce it: a leaf whose serial or host is in the revocation list in
//! force is refused at accept on every path (a fresh handshake, a resumed session, an app
//! connection on a reused hop or an HTTP/2 stream), open connections carrying it are closed when
//! the list changes, and an agent enrolled with the signing service picks the list up by polling.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cordon::agent::Agent;
use cordon::agent::config::Config;
use cordon::pki::{Ca, ServiceId, ServiceName, TrustDomain, serial_of};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use support::signer::Signer;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);

/// The serial of the leaf in `cert.pem`, as the revocation list writes it.
fn serial_in(cert: &Path) -> String {
    let pem = std::fs::read(cert).unwrap();
    serial_of(&CertificateDer::from_pem_slice(&pem).unwrap()).unwrap()
}

/// Writes a revocation list as `cordon ca revoke` does (write aside, rename).
fn revoke(world: &World, path: &Path, serials: &[&str], hosts: &[&str]) {
    let doc = serde_json::json!({
        "generated": "2026-12-06T18:00:00Z",
        "serials": serials,
        "hosts": hosts,
        "reasons": {},
    });
    world.replace(path, &doc.to_string());
}

fn inbound(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("direction", "inbound")];
    all.extend_from_slice(labels);
    metric(&agent.metrics_text(), name, &all)
}

/// A connection held open through `upstream`: one echo, then it waits.
async fn held_open(upstream: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(upstream).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    c
}

/// Whether `c` is closed by the far end within `within` (EOF or an error on read).
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(within, c.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// Whether a connection through `upstream` is refused (nothing echoed).
async fn refused(upstream: SocketAddr) -> bool {
    round_trip(upstream, b"again").await.map(|r| r.is_empty()).unwrap_or(true)
}

/// A db host whose certificates come from the local CA (`tls.ca_dir`): it issues its own leaf
/// and reads the CA directory's `revoked.json`.
async fn local_ca_db_host(world: &World, proxy: &str) -> (Agent, EchoApp) {
    let app = EchoApp::start().await;
    let text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\ndiscovery_dir = \"{}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\n\
         decision_log = \"{}\"\nadmin = \"127.0.0.1:0\"\nhost = \"db-host\"\n\
         [tls]\nca_dir = \"{}\"\n[proxy]\nflush_interval_ms = 100\ndrain_timeout_s = 5\n{proxy}\
         [[service]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\n",
        world.discovery().display(),
        world.policy().display(),
        world.path("state-db-host").display(),
        world.path("decisions-db-host.jsonl").display(),
        world.ca().display(),
        app.addr,
    );
    let path = world.path("db-host.toml");
    std::fs::write(&path, &text).unwrap();
    let db = Agent::start(Config::parse(&text, &path).unwrap()).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(port))]);
    (db, app)
}

/// Revoking web's serial in the local CA's list closes web's open connection and refuses every
/// later one, whichever path it takes. `proxy` is both hosts' `[proxy]`: reuse off (sessions
/// resume), the framed hop, or the HTTP/2 hop.
async fn revoking_a_serial_cuts_off(proxy: &str) {
    let world = World::new();
    let reuse = !proxy.contains("reuse_connections = false");
    let (db, app) = local_ca_db_host(&world, proxy).await;
    world.issue("web");
    let web = Agent::start(world.config_with("web-host", &[], &[("db", "web")], proxy)).await.unwrap();
    let upstream = web.bound().upstream("db").unwrap();
    for _ in 0..3 {
        assert_eq!(round_trip(upstream, b"before").await.unwrap(), b"before");
    }
    if reuse {
        assert_eq!(inbound(&db, "cordon_hop_reused_total", &[]), 2.0, "they share one hop");
    } else {
        assert!(
            inbound(&db, "cordon_tls_handshakes_total", &[("kind", "resumed")]) >= 1.0,
            "sessions resume before the revocation"
        );
    }
    let mut open = held_open(upstream).await;
    let accepted = app.accepted();
    let resumed = inbound(&db, "cordon_tls_handshakes_total", &[("kind", "resumed")]);

    let serial = serial_in(&world.path("tls/web/cert.pem"));
    revoke(&world, &world.ca().join("revoked.json"), &[&serial], &[]);
    assert!(closed_within(&mut open, 5 * SECOND).await, "the open connection is closed");
    eventually("db's open connections closed", 3 * SECOND, || async {
        inbound(&db, "cordon_connections_open", &[]) == 0.0
    })
    .await;
    for _ in 0..3 {
        assert!(refused(upstream).await, "web is refused once its serial is revoked");
    }
    assert_eq!(app.accepted(), accepted, "the app sees no connection after the revocation");
    assert!(
        inbound(&db, "cordon_handshake_failures_total", &[("reason", "revoked")]) >= 1.0,
        "the refusals are counted as revoked:\n{}",
        db.metrics_text()
    );
    if !reuse {
        assert!(
            inbound(&db, "cordon_tls_handshakes_total", &[("kind", "resumed")]) > resumed,
            "a refused attempt came as a resumed session"
        );
    }
    eventually("the refusal is in the decision log", 3 * SECOND, || async {
        world.decision_log("db-host").iter().any(|r| r["reason"] == "revoked" && r["outcome"] == "denied")
    })
    .await;
    let status = db.status();
    assert_eq!(status["revocations"]["serials"], 1, "{status}");
    assert!(status["revocations"]["path"].as_str().unwrap().ends_with("ca/revoked.json"));
    let text = db.metrics_text();
    assert_eq!(metric(&text, "cordon_revocations", &[("kind", "serial")]), 1.0, "{text}");
    assert!(metric(&text, "cordon_revocations_age_seconds", &[]) > 0.0, "{text}");
    let admin = db.bound().admin.unwrap().to_string();
    // Off this thread: the agent under test runs on it.
    let shown = tokio::task::spawn_blocking(move || cordon_ok(&["status", "--admin", &admin])).await.unwrap();
    assert!(shown.contains("revocation list: 1 serials, 0 hosts"), "{shown}");
    web.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_revoked_serial_is_cut_off_on_a_reused_hop() {
    revoking_a_serial_cuts_off("").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_revoked_serial_is_cut_off_on_an_http2_hop() {
    revoking_a_serial_cuts_off("hop_protocol = \"h2\"\n").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_revoked_serial_is_cut_off_on_resumed_sessions() {
    revoking_a_serial_cuts_off("reuse_connections = false\n").await;
}

/// A leaf for `service` naming `host` (its one DNS-name SAN), written to `tls/<service>`.
fn issue_naming_host(world: &World, service: &str, host: &str) {
    let ca = Ca::load(&world.ca()).unwrap();
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let id = ServiceId::new(td, ServiceName::new(service).unwrap());
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::URI(id.uri().try_into().unwrap()),
        rcgen::SanType::DnsName(host.try_into().unwrap()),
    ];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let not_after = SystemTime::now() + 3600 * SECOND;
    params.not_before = (SystemTime::now() - 60 * SECOND).into();
    params.not_after = not_after.into();
    let leaf = ca.sign(params, not_after).unwrap();
    ca.write_leaf(&leaf, &world.path("tls").join(service)).unwrap();
}

/// A revoked host covers every leaf naming it, whatever its serial; the list in `tls.dir` is
/// read at start, so an agent restarted with it refuses at once. A host not listed passes.
#[tokio::test(flavor = "current_thread")]
async fn a_revoked_host_is_refused_from_the_start() {
    let world = World::new();
    issue_naming_host(&world, "web", "web-7");
    issue_naming_host(&world, "api", "api-1");
    revoke(&world, &world.path("tls/revoked.json"), &[], &["web-7"]);
    let (db, app) = db_host(&world).await;
    assert_eq!(db.status()["revocations"]["hosts"], 1, "the list is read at start");
    let web = caller_host_with_leaf(&world, "web").await;
    let api = caller_host_with_leaf(&world, "api").await;

    let api_up = api.bound().upstream("db").unwrap();
    assert_eq!(round_trip(api_up, b"api").await.unwrap(), b"api", "a host not listed passes");
    let accepted = app.accepted();
    assert!(refused(web.bound().upstream("db").unwrap()).await, "web-7's leaf is refused");
    assert_eq!(app.accepted(), accepted, "the app never sees it");
    eventually("the refusal names the host", 3 * SECOND, || async {
        world.decision_log("db-host").iter().any(|r| {
            r["source"] == "web"
                && r["rule"].as_str().is_some_and(|s| s.contains("host it names is in the revocation list"))
        })
    })
    .await;
    // The learning destination lets in what the policy would deny, never a revoked leaf.
    assert_eq!(db.status()["services"][0]["mode"], "learn");
    api.shutdown().await;
    web.shutdown().await;
    db.shutdown().await;
}

/// A caller host dialling "db" with the leaf already in `tls/<identity>`.
async fn caller_host_with_leaf(world: &World, identity: &str) -> Agent {
    Agent::start(world.config(&format!("{identity}-host"), &[], &[("db", identity)])).await.unwrap()
}

/// A list that cannot be read is refused whole, naming the file; the list in force stays.
#[tokio::test(flavor = "current_thread")]
async fn a_bad_list_keeps_the_one_in_force() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();
    let serial = serial_in(&world.path("tls/web/cert.pem"));
    revoke(&world, &world.path("tls/revoked.json"), &[&serial], &[]);
    eventually("db puts the list in force", 3 * SECOND, || async {
        db.status()["revocations"]["serials"] == 1
    })
    .await;
    world.replace(&world.path("tls/revoked.json"), r#"{"serials":["not hex"]}"#);
    eventually("db refuses the bad list", 3 * SECOND, || async {
        db.status()["revocations"]["last_error"].as_str().is_some_and(|e| e.contains("revoked.json"))
    })
    .await;
    assert_eq!(db.status()["revocations"]["serials"], 1, "the list in force stays");
    assert!(refused(upstream).await, "web stays refused");
    web.shutdown().await;
    db.shutdown().await;
    // Started with a list it cannot read, an agent does not serve: it would let in what the
    // fleet has cut off.
    let again = world.config("web-host", &[], &[("db", "web")]);
    let err = Agent::start(again).await.err().expect("the start is refused");
    assert!(err.to_string().contains("revoked.json"), "{err}");
}

/// An agent enrolled with the signing service, polling its revocation list every `poll_ms`.
async fn enrolled(
    world: &World,
    signer: &Signer,
    host: &str,
    service: (&str, Option<SocketAddr>),
    upstream: Option<&str>,
    poll_ms: u64,
) -> Agent {
    let token_file = support::signer::token(world, host, &[service.0], "1h");
    let base = world.path(&format!("hosts/{host}"));
    std::fs::create_dir_all(base.join("tls")).unwrap();
    std::fs::copy(world.ca().join("ca.pem"), base.join("bundle.pem")).unwrap();
    let mut text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\ndiscovery_dir = \"{}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\n\
         admin = \"127.0.0.1:0\"\nhost = \"{host}\"\n\
         [tls]\nca = \"{}\"\ndir = \"{}\"\nissuer = \"https://{}\"\njoin_token_file = \"{}\"\n\
         revocation_poll_ms = {poll_ms}\n[proxy]\nflush_interval_ms = 100\ndrain_timeout_s = 5\n",
        world.discovery().display(),
        world.policy().display(),
        world.path(&format!("state-{host}")).display(),
        base.join("bundle.pem").display(),
        base.join("tls").display(),
        signer.addr,
        token_file.display(),
    );
    match (service.1, upstream) {
        (Some(app), _) => {
            text +=
                &format!("[[service]]\nname = \"{}\"\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n", service.0)
        }
        (None, Some(up)) => {
            text += &format!(
                "[[upstream]]\nservice = \"{up}\"\nlisten = \"127.0.0.1:0\"\nidentity = \"{}\"\n",
                service.0
            )
        }
        (None, None) => {}
    }
    let path = world.path(&format!("{host}.toml"));
    std::fs::write(&path, &text).unwrap();
    Agent::start(Config::parse(&text, &path).unwrap()).await.unwrap()
}

/// An agent enrolled with the signing service learns of a revocation by polling `GET
/// /v1/revoked` within its interval, keeps the list in its tls dir, and closes the revoked
/// caller's open connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_picks_up_a_revocation_by_polling() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "24h");
    let app = EchoApp::start().await;
    let poll = Duration::from_millis(400);
    let db = enrolled(&world, &signer, "db-host", ("db", Some(app.addr)), None, 400).await;
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(port))]);
    let web = enrolled(&world, &signer, "web-host", ("web", None), Some("db"), 400).await;
    let upstream = web.bound().upstream("db").unwrap();
    let mut open = held_open(upstream).await;
    eventually("db has polled", 5 * SECOND, || async {
        db.status()["revocations"]["poll"]["ok"].as_u64().unwrap_or(0) >= 1
    })
    .await;

    let serial = serial_in(&world.path("hosts/web-host/tls/web/cert.pem"));
    revoke(&world, &world.ca().join("revoked.json"), &[&serial], &[]);
    let revoked_at = std::time::Instant::now();
    assert!(closed_within(&mut open, 10 * SECOND).await, "the open connection is closed");
    // One interval to the next poll, and the time a loaded machine takes to act on it.
    let took = revoked_at.elapsed();
    assert!(took < poll + 5 * SECOND, "closed {took:?} after the revocation");
    assert!(refused(upstream).await, "web is refused");
    let kept = PathBuf::from(db.status()["revocations"]["path"].as_str().unwrap());
    assert_eq!(kept, world.path("hosts/db-host/tls/revoked.json"));
    let copy: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(copy["serials"][0], serial.as_str(), "the list is kept for a restart");
    let text = db.metrics_text();
    assert!(metric(&text, "cordon_revocation_polls_total", &[("result", "ok")]) >= 2.0, "{text}");
    web.shutdown().await;
    db.shutdown().await;
}

/// A re-imaged host whose leaves were revoked comes back without a restart: its next renewal is
/// refused as `revoked`, and the agent enrols with the new token the operator put in its
/// `join_token_file`, before its old leaf runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_host_enrols_again_with_a_new_token_before_its_leaf_runs_out() {
    let world = World::new();
    // 30 s leaves: renewal is due after 20 s, the old leaf runs out after 30.
    let signer = Signer::start(&world, "127.0.0.1:0", "30s");
    let app = EchoApp::start().await;
    let db = enrolled(&world, &signer, "db-host", ("db", Some(app.addr)), None, 30_000).await;
    let cert = world.path("hosts/db-host/tls/db/cert.pem");
    let first = serial_in(&cert);
    let pem = std::fs::read(&cert).unwrap();
    let runs_out =
        x509_parser::pem::parse_x509_pem(&pem).unwrap().1.parse_x509().unwrap().validity().not_after;
    let runs_out = SystemTime::UNIX_EPOCH + Duration::from_secs(runs_out.timestamp() as u64);
    let ca = world.ca();
    cordon_ok(&["ca", "revoke", "--dir", ca.to_str().unwrap(), "--host", "db-host"]);
    // A token minted in a later second than the revocation re-enrols the host.
    let revoked_at = SystemTime::now();
    eventually("a second passes", 5 * SECOND, || async {
        SystemTime::now().duration_since(revoked_at).unwrap_or_default() > Duration::from_millis(1100)
    })
    .await;
    // Into the agent's join_token_file, where the operator puts it.
    support::signer::token(&world, "db-host", &["db"], "1h");
    eventually("db-host enrols again with the new token", 40 * SECOND, || async {
        serial_in(&cert) != first
    })
    .await;
    assert!(
        SystemTime::now() < runs_out,
        "enrolled again when the renewal was refused, not only once the old leaf ran out"
    );
    db.shutdown().await;
}
