//! The security checks made wherever a decision is: a change of the trust bundle reaches resumed
//! sessions and reused hops, a resumed session whose certificate has expired is refused, a flip
//! to enforce reaches a plaintext client still inside its first-byte window, and one deadline
//! runs from accept to the end of the handshake.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use cordon::agent::Agent;
use cordon::agent::config::Config;
use cordon::pki::{Ca, ServiceId, ServiceName, TrustDomain};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);

/// A db host whose inbound trusts the CA certificates in `bundle` (its own file, so a test can
/// change what this host trusts alone), with extra `[proxy]` lines.
async fn db_host_trusting(world: &World, bundle: &Path, proxy: &str) -> (Agent, EchoApp) {
    let app = EchoApp::start().await;
    world.issue("db");
    world.config_with("db-host", &[("db", app.addr)], &[], proxy);
    let path = world.path("db-host.toml");
    let ca = world.ca().join("ca.pem");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!("ca = \"{}\"", ca.display()), &format!("ca = \"{}\"", bundle.display()));
    assert!(text.contains(&bundle.display().to_string()), "the db host reads its own bundle");
    std::fs::write(&path, &text).unwrap();
    let db = Agent::start(Config::parse(&text, &path).unwrap()).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(port))]);
    (db, app)
}

fn inbound(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("direction", "inbound")];
    all.extend_from_slice(labels);
    metric(&agent.metrics_text(), name, &all)
}

/// A second CA of the same trust domain, as a rotation or a compromise response brings.
fn other_ca(world: &World) -> String {
    let dir = world.path("other-ca");
    cordon_ok(&["ca", "init", "--dir", dir.to_str().unwrap(), "--trust-domain", TRUST_DOMAIN]);
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

/// A connection held open through `upstream`: one echo, then it waits. Returns the stream.
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

/// The caller is cut off within 2 s of a bundle change that drops its CA, on every path: an open
/// connection, an idle reusable hop, a resumed session, a fresh handshake.
/// `proxy` is web's and db's `[proxy]`: reuse off, the framed hop, or the HTTP/2 hop.
async fn bundle_change_cuts_off(proxy: &str) {
    let world = World::new();
    let bundle = world.path("db-bundle.pem");
    std::fs::copy(world.ca().join("ca.pem"), &bundle).unwrap();
    let reuse = !proxy.contains("reuse_connections = false");
    let (db, app) = db_host_trusting(&world, &bundle, proxy).await;
    world.issue("web");
    let web = Agent::start(world.config_with("web-host", &[], &[("db", "web")], proxy)).await.unwrap();
    let upstream = web.bound().upstream("db").unwrap();

    // Three connections: with reuse they share one hop, without it the later ones resume.
    for _ in 0..3 {
        assert_eq!(round_trip(upstream, b"before").await.unwrap(), b"before");
    }
    if reuse {
        assert_eq!(inbound(&db, "cordon_hop_reused_total", &[]), 2.0, "they share one hop");
    } else {
        assert!(
            inbound(&db, "cordon_tls_handshakes_total", &[("kind", "resumed")]) >= 1.0,
            "sessions resume before the change"
        );
    }
    let mut open = held_open(upstream).await;
    let accepted = app.accepted();

    // db now trusts another CA only: web's certificate no longer verifies there.
    world.replace(&bundle, &other_ca(&world));
    let changed = Instant::now();
    assert!(closed_within(&mut open, 2 * SECOND).await, "the open connection is closed within 2 s");
    eventually("db's open connections closed", 2 * SECOND, || async {
        inbound(&db, "cordon_connections_open", &[]) == 0.0
    })
    .await;
    // Every new attempt, whatever path it takes (a pooled hop, a resumed session), is refused.
    for _ in 0..3 {
        let refused = round_trip(upstream, b"after").await;
        assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "web is refused after the change");
    }
    assert!(changed.elapsed() < 10 * SECOND);
    assert_eq!(app.accepted(), accepted, "the app sees no connection after the change");
    assert!(
        inbound(&db, "cordon_handshake_failures_total", &[("reason", "unknown_ca")]) >= 1.0,
        "the new handshakes are refused for their CA:\n{}",
        db.metrics_text()
    );
    web.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_bundle_change_reaches_reused_hops() {
    bundle_change_cuts_off("").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_bundle_change_reaches_http2_hops() {
    bundle_change_cuts_off("hop_protocol = \"h2\"\n").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_bundle_change_reaches_resumed_sessions() {
    bundle_change_cuts_off("reuse_connections = false\n").await;
}

/// A bundle that keeps the caller's CA (a rotation adds the new one beside it) cuts nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_bundle_that_still_trusts_the_caller_cuts_nothing() {
    let world = World::new();
    let bundle = world.path("db-bundle.pem");
    let ours = std::fs::read_to_string(world.ca().join("ca.pem")).unwrap();
    std::fs::write(&bundle, &ours).unwrap();
    let (db, _app) = db_host_trusting(&world, &bundle, "").await;
    let web = caller_host(&world, "web").await;
    let upstream = web.bound().upstream("db").unwrap();
    let mut open = held_open(upstream).await;
    let before = db.status()["trust_bundle"].clone();

    world.replace(&bundle, &format!("{ours}{}", other_ca(&world)));
    eventually("db reloads its bundle", 3 * SECOND, || async { db.status()["trust_bundle"] != before }).await;
    assert!(!closed_within(&mut open, 2 * SECOND).await, "a caller the new bundle verifies stays");
    open.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
    assert_eq!(round_trip(upstream, b"new").await.unwrap(), b"new");
    web.shutdown().await;
    db.shutdown().await;
}

/// A resumed TLS session carries the certificate of its first handshake: once that certificate
/// has expired, the session is refused, as a fresh handshake with it would be.
#[tokio::test(flavor = "current_thread")]
async fn a_resumed_session_with_an_expired_certificate_is_refused() {
    let world = World::new();
    let (db, app) = db_host(&world).await;
    // web's certificate expires a few seconds from now.
    let ca = Ca::load(&world.ca()).unwrap();
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let id = ServiceId::new(td, ServiceName::new("web").unwrap());
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.uri().try_into().unwrap())];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let not_after = SystemTime::now() + 3 * SECOND;
    params.not_before = (SystemTime::now() - 60 * SECOND).into();
    params.not_after = not_after.into();
    let leaf = ca.sign(params, not_after).unwrap();
    ca.write_leaf(&leaf, &world.path("tls").join("web")).unwrap();
    let web =
        Agent::start(world.config_with("web-host", &[], &[("db", "web")], "reuse_connections = false\n"))
            .await
            .unwrap();
    let upstream = web.bound().upstream("db").unwrap();
    assert_eq!(round_trip(upstream, b"fresh").await.unwrap(), b"fresh");
    assert_eq!(round_trip(upstream, b"resumed").await.unwrap(), b"resumed");
    assert!(inbound(&db, "cordon_tls_handshakes_total", &[("kind", "resumed")]) >= 1.0);
    let accepted = app.accepted();

    while SystemTime::now() <= not_after + SECOND {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = round_trip(upstream, b"expired").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "the expired certificate gets nowhere");
    assert_eq!(app.accepted(), accepted, "the app never sees it");
    eventually("the refusal is in the decision log", 3 * SECOND, || async {
        world
            .decision_log("db-host")
            .iter()
            .any(|r| r["rule"].as_str().is_some_and(|s| s.contains("expired")))
    })
    .await;
    web.shutdown().await;
    db.shutdown().await;
}

/// A plaintext client of a server-first protocol says nothing; if the service is flipped to
/// enforce while it waits, it is refused: the decision is made with the mode in force when it is
/// made, even for a caller whose address names an allowed service.
#[tokio::test(flavor = "current_thread")]
async fn a_flip_during_the_first_byte_window_refuses_plaintext() {
    let world = World::new();
    let app = EchoApp::start().await;
    world.issue("db");
    world.write_policy(
        "[modes]\n\"*\" = \"learn\"\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    );
    let web_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    world.write_discovery("web", &[(web_ip, 8080, None)]);
    let db = Agent::start(world.config_with(
        "db-host",
        &[("db", app.addr)],
        &[],
        "first_byte_timeout_ms = 3000\n",
    ))
    .await
    .unwrap();
    let listen = db.bound().service("db").unwrap();
    eventually("discovery names 127.0.0.3 web", 3 * SECOND, || async {
        db.status().to_string().contains("\"services\"")
    })
    .await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(web_ip, 0)).unwrap();
    let mut silent = socket.connect(listen).await.unwrap();
    world.write_policy(
        "[modes]\n\"*\" = \"learn\"\ndb = \"enforce\"\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    );
    eventually("db enforces", 3 * SECOND, || async { db.status()["services"][0]["mode"] == "enforce" }).await;
    assert!(closed_within(&mut silent, 10 * SECOND).await, "refused once its window ends");
    assert_eq!(app.accepted(), 0, "the app never sees a plaintext caller of an enforcing service");
    eventually("counted as plaintext refused", 3 * SECOND, || async {
        inbound(&db, "cordon_handshake_failures_total", &[("reason", "plaintext_in_enforce")]) == 1.0
    })
    .await;
    db.shutdown().await;
}

/// Enforcing, a silent client holds its slot only the first-byte time (TLS clients speak first),
/// and a client that starts its handshake late does not get a fresh handshake deadline.
#[tokio::test(flavor = "current_thread")]
async fn one_deadline_from_accept_to_the_end_of_the_handshake() {
    let world = World::new();
    let app = EchoApp::start().await;
    world.issue("db");
    world.write_policy("[modes]\ndb = \"enforce\"\n");
    let db = Agent::start(world.config_with(
        "db-host",
        &[("db", app.addr)],
        &[],
        "first_byte_timeout_ms = 300\nhandshake_timeout_ms = 30000\n",
    ))
    .await
    .unwrap();
    let listen = db.bound().service("db").unwrap();
    let started = Instant::now();
    let mut silent = TcpStream::connect(listen).await.unwrap();
    assert!(closed_within(&mut silent, 15 * SECOND).await, "a silent client is let go");
    assert!(started.elapsed() < 15 * SECOND, "well before the 30 s handshake deadline");
    db.shutdown().await;

    // First byte after 3.5 s of a 4 s window, then nothing: refused 5 s after accept (the one
    // deadline), not 5 s after the first byte.
    let db = Agent::start(world.config_with(
        "db-host-2",
        &[("db", app.addr)],
        &[],
        "first_byte_timeout_ms = 4000\nhandshake_timeout_ms = 5000\n",
    ))
    .await
    .unwrap();
    let listen = db.bound().service("db").unwrap();
    let started = Instant::now();
    let mut late = TcpStream::connect(listen).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    late.write_all(&[0x16]).await.unwrap();
    assert!(closed_within(&mut late, 20 * SECOND).await);
    let held = started.elapsed();
    assert!(held < Duration::from_millis(7500), "held {held:?}: one deadline from accept, not two");
    assert_eq!(
        inbound(&db, "cordon_handshake_failures_total", &[("reason", "timeout")]),
        1.0,
        "{}",
        db.metrics_text()
    );
    db.shutdown().await;
    assert_eq!(app.accepted(), 0);
}
