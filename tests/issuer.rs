//! The signing service through the binary (`cordon ca serve`, `cordon ca token`, `cordon ca
//! rotate`) with real agents enrolling and renewing against it over loopback.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cordon::agent::Agent;
use cordon::agent::config::Config;
use cordon::pki::issuer::client::IssuerError;
use cordon::pki::issuer::{IssuerSettings, Renewer};
use cordon::pki::{ServiceName, TrustDomain};
use support::signer::*;
use support::*;

/// An agent config enrolling with the signing service.
fn config(
    world: &World,
    host: &str,
    signer: &str,
    token: &std::path::Path,
    services: &[(&str, SocketAddr)],
    upstreams: &[(&str, &str)],
) -> Config {
    let (bundle, dir) = host_dirs(world, host);
    let mut text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\ndiscovery_dir = \"{}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\n\
         admin = \"127.0.0.1:0\"\nhost = \"{host}\"\n\
         [tls]\nca = \"{}\"\ndir = \"{}\"\nissuer = \"{signer}\"\njoin_token_file = \"{}\"\n\
         [proxy]\nflush_interval_ms = 100\ndrain_timeout_s = 5\n",
        world.discovery().display(),
        world.policy().display(),
        world.path(&format!("state-{host}")).display(),
        bundle.display(),
        dir.display(),
        token.display(),
    );
    for (name, app) in services {
        text += &format!("[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n");
    }
    for (service, identity) in upstreams {
        text += &format!(
            "[[upstream]]\nservice = \"{service}\"\nlisten = \"127.0.0.1:0\"\nidentity = \"{identity}\"\n"
        );
    }
    let path = world.path(&format!("{host}.toml"));
    std::fs::write(&path, &text).unwrap();
    Config::parse(&text, &path).unwrap()
}

/// Two enrolled agents, db-host serving db and web-host calling it, with discovery written.
async fn two_hosts(world: &World, signer: &Signer) -> (Agent, Agent, EchoApp) {
    let app = EchoApp::start().await;
    let db_token = token(world, "db-host", &["db"], "1h");
    let web_token = token(world, "web-host", &["web"], "1h");
    let db = Agent::start(config(world, "db-host", &signer.url(), &db_token, &[("db", app.addr)], &[]))
        .await
        .unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(port))]);
    let web = Agent::start(config(world, "web-host", &signer.url(), &web_token, &[], &[("db", "web")]))
        .await
        .unwrap();
    (db, web, app)
}

fn renewed(agent: &Agent) -> u64 {
    agent.status()["issuer"]["identities"][0]["renewed"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_enrol_with_a_token_and_renew_over_mtls() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "6s");
    let (db, web, _app) = two_hosts(&world, &signer).await;

    // Keys were made on the host, 0600; the CA key is nowhere near it.
    let key = world.path("hosts/db-host/tls/db/key.pem");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let first = serial_of(&world.path("hosts/db-host/tls/db/cert.pem"));
    let upstream = web.bound().upstream("db").unwrap();
    assert_eq!(round_trip(upstream, b"hello").await.unwrap(), b"hello");

    eventually("both hosts renew", Duration::from_secs(30), || async {
        renewed(&db) >= 1 && renewed(&web) >= 1
    })
    .await;
    assert_ne!(serial_of(&world.path("hosts/db-host/tls/db/cert.pem")), first, "a renewal brings a new leaf");
    assert_eq!(round_trip(upstream, b"after").await.unwrap(), b"after");

    let log = log_lines(&world);
    let issued: Vec<_> = log.iter().filter(|e| e["event"] == "issued").collect();
    assert!(issued.iter().any(|e| e["kind"] == "enrol" && e["host"] == "db-host" && e["identity"] == "db"));
    assert!(issued.iter().any(|e| e["kind"] == "renew" && e["host"] == "web-host" && e["identity"] == "web"));
    assert!(issued.iter().all(|e| e["serial"].is_string() && e["not_after"].is_string()), "{issued:?}");
    assert!(db.metrics_text().contains("cordon_certificate_renewals_total"));
    let admin = db.bound().admin.unwrap().to_string();
    let shown = cordon_ok(&["status", "--admin", &admin]);
    assert!(shown.contains(&format!("signing service {}", signer.addr)), "{shown}");
    web.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_logged_with_its_reason_and_counted() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "3s");
    let refused = |e: Result<(), IssuerError>| match e {
        Err(IssuerError::Refused { reason, .. }) => reason,
        other => format!("not a refusal: {other:?}"),
    };

    // A token used twice.
    let t = token(&world, "a-host", &["web"], "1h");
    renewer(&world, &signer, "a-host", &["web"], Some(t.clone()))
        .enrol_missing(Duration::from_secs(10))
        .await
        .unwrap();
    let again = renewer(&world, &signer, "a2-host", &["web"], Some(t.clone()));
    assert_eq!(refused(again.enrol_missing(Duration::from_secs(10)).await), "token_used");

    // A token for one identity exchanged for another, and on another host.
    let t = token(&world, "b-host", &["web"], "1h");
    let db = renewer(&world, &signer, "b-host", &["db"], Some(t.clone()));
    assert_eq!(refused(db.enrol_missing(Duration::from_secs(10)).await), "identity_not_allowed");
    let elsewhere = renewer(&world, &signer, "c-host", &["web"], Some(t.clone()));
    assert_eq!(refused(elsewhere.enrol_missing(Duration::from_secs(10)).await), "token_wrong_host");
    // Refusals leave the token usable by its own host.
    renewer(&world, &signer, "b-host", &["web"], Some(t))
        .enrol_missing(Duration::from_secs(10))
        .await
        .unwrap();

    // A renewal from another host with b-host's (valid) certificate.
    std::fs::create_dir_all(world.path("hosts/e-host/tls")).unwrap();
    copy_dir(&world.path("hosts/b-host/tls/web"), &world.path("hosts/e-host/tls/web"));
    let web = ServiceName::new("web").unwrap();
    let e = renewer(&world, &signer, "e-host", &["web"], None);
    assert_eq!(refused(e.renew(&web).await), "host_mismatch");

    // An expired token.
    let t = token(&world, "d-host", &["web"], "1s");
    let expired_token = renewer(&world, &signer, "d-host", &["web"], Some(t));
    let until = std::time::SystemTime::now() + Duration::from_millis(1100);
    eventually("the token expires", Duration::from_secs(5), || async {
        std::time::SystemTime::now() > until
    })
    .await;
    assert_eq!(refused(expired_token.enrol_missing(Duration::from_secs(10)).await), "token_expired");

    // A renewal with an expired certificate (a-host's 3 s leaf, left alone).
    let a = renewer(&world, &signer, "a-host", &["web"], None);
    let (_, not_after) = cert_validity(&world.path("hosts/a-host/tls/web/cert.pem"));
    // Validity is in whole seconds, and so is the service's clock when it checks.
    let not_after = not_after + Duration::from_secs(1);
    eventually("the leaf expires", Duration::from_secs(10), || async {
        std::time::SystemTime::now() > not_after
    })
    .await;
    assert_eq!(refused(a.renew(&web).await), "cert_expired");

    // A certificate the service never issued (`cordon cert issue` from the same CA).
    std::fs::create_dir_all(world.path("hosts/f-host/tls")).unwrap();
    cordon_ok(&[
        "cert",
        "issue",
        "--ca",
        world.ca().to_str().unwrap(),
        "--service",
        "web",
        "--out",
        world.path("hosts/f-host/tls/web").to_str().unwrap(),
    ]);
    let f = renewer(&world, &signer, "f-host", &["web"], None);
    assert_eq!(refused(f.renew(&web).await), "serial_unknown");

    // A certificate from another CA.
    let other = world.path("other-ca");
    cordon_ok(&["ca", "init", "--dir", other.to_str().unwrap(), "--trust-domain", TRUST_DOMAIN]);
    let g = world.path("hosts/g-host/tls/web");
    cordon_ok(&[
        "cert",
        "issue",
        "--ca",
        other.to_str().unwrap(),
        "--service",
        "web",
        "--out",
        g.to_str().unwrap(),
    ]);
    let g = renewer(&world, &signer, "g-host", &["web"], None);
    assert_eq!(refused(g.renew(&web).await), "cert_unknown_ca");

    let log = log_lines(&world);
    for reason in [
        "token_used",
        "identity_not_allowed",
        "token_wrong_host",
        "token_expired",
        "cert_expired",
        "host_mismatch",
        "serial_unknown",
        "cert_unknown_ca",
    ] {
        assert!(
            log.iter().any(|e| e["event"] == "refused" && e["reason"] == reason && e["message"].is_string()),
            "no {reason} line in the issuance log"
        );
    }
    let status = a.service_status().await.unwrap();
    for reason in [
        "token_used",
        "identity_not_allowed",
        "token_wrong_host",
        "token_expired",
        "cert_expired",
        "host_mismatch",
        "serial_unknown",
        "cert_unknown_ca",
    ] {
        assert_eq!(status["refused"][reason], 1, "{reason} counted once: {status}");
    }
}

fn cert_validity(path: &std::path::Path) -> (std::time::SystemTime, std::time::SystemTime) {
    let pem = std::fs::read_to_string(path).unwrap();
    let der: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x) = X509Certificate::from_der(der.as_ref()).unwrap();
    let at =
        |t: x509_parser::time::ASN1Time| std::time::UNIX_EPOCH + Duration::from_secs(t.timestamp() as u64);
    (at(x.validity().not_before), at(x.validity().not_after))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// Round trips through `upstream` until `stop`, counting successes and failures.
fn steady_traffic(
    upstream: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (o, f) = (ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        // Bounded: at most 20,000 connections, whatever the test does.
        for i in 0..20_000u32 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let msg = format!("ping {i}");
            match round_trip(upstream, msg.as_bytes()).await {
                Ok(r) if r == msg.as_bytes() => o.fetch_add(1, Ordering::SeqCst),
                _ => f.fetch_add(1, Ordering::SeqCst),
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (ok, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_keep_serving_while_the_service_is_down_for_longer_than_a_renewal_period() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "30s");
    let addr = signer.addr;
    let (db, web, _app) = two_hosts(&world, &signer).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, traffic) = steady_traffic(web.bound().upstream("db").unwrap(), stop.clone());
    let cert = world.path("hosts/db-host/tls/db/cert.pem");
    let (not_before, not_after) = cert_validity(&cert);
    let due = not_before + (not_after.duration_since(not_before).unwrap()) * 2 / 3;
    let first = serial_of(&cert);

    drop(signer);
    let failures = |a: &Agent| a.status()["issuer"]["identities"][0]["failed"].as_u64().unwrap_or(0);
    eventually("renewals fail and the renewal time passes", Duration::from_secs(60), || async {
        failures(&db) >= 2 && failures(&web) >= 2 && std::time::SystemTime::now() > due
    })
    .await;
    assert_eq!(serial_of(&cert), first, "still on the first leaf");
    assert!(metric(&db.metrics_text(), "cordon_certificate_renewals_total", &[("result", "failed")]) >= 2.0);

    let _signer = Signer::start(&world, &addr.to_string(), "30s");
    eventually("both renew once the service is back", Duration::from_secs(60), || async {
        renewed(&db) >= 1 && renewed(&web) >= 1
    })
    .await;
    assert!(cert_validity(&cert).1 > not_after, "the new leaf lives longer");
    let before = ok.load(Ordering::SeqCst);
    eventually("traffic on the new leaves", Duration::from_secs(10), || async {
        ok.load(Ordering::SeqCst) > before + 5
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no connection failed while the service was down");
    web.shutdown().await;
    db.shutdown().await;
}

/// Runs `cordon ca rotate` until it takes the step (exit 0); exit 1 means hosts are catching up.
async fn rotate_when_ready(world: &World, what: &str) -> String {
    let mut out = String::new();
    eventually(what, Duration::from_secs(60), || {
        let o = cordon(&["ca", "rotate", "--dir", world.ca().to_str().unwrap()]);
        assert!(o.status.code() != Some(2), "rotate failed: {}", String::from_utf8_lossy(&o.stderr));
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        let done = o.status.success();
        async move { done }
    })
    .await;
    out
}

fn certs_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().matches("BEGIN CERTIFICATE").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_under_steady_traffic_fails_no_connection() {
    let world = World::new();
    // Leaves of 8 s: renewed every few seconds, so the rotation runs through several renewals,
    // with room for a loaded test machine to renew before a leaf expires (an app connection
    // on a hop or a resumed session whose certificate has expired is refused).
    let signer = Signer::start(&world, "127.0.0.1:0", "8s");
    let (db, web, _app) = two_hosts(&world, &signer).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, traffic) = steady_traffic(web.bound().upstream("db").unwrap(), stop.clone());
    let old_ca = std::fs::read_to_string(world.ca().join("ca.pem")).unwrap();
    let bundles = [world.path("hosts/db-host/bundle.pem"), world.path("hosts/web-host/bundle.pem")];

    let out = rotate_when_ready(&world, "prepare").await;
    assert!(out.contains("prepared"), "{out}");
    rotate_when_ready(&world, "activate once every host has the new CA in its bundle").await;
    assert!(bundles.iter().all(|b| certs_in(b) == 2), "both hosts carry old and new");
    let new_ca = std::fs::read_to_string(world.ca().join("ca.pem")).unwrap();
    assert_ne!(new_ca, old_ca);

    // Leaves of the old CA are counted down to zero, by the service and on each host.
    let (probe_bundle, _) = host_dirs(&world, "probe");
    std::fs::copy(&bundles[0], &probe_bundle).unwrap();
    let r = renewer(&world, &signer, "probe", &[], None);
    eventually("every leaf re-issued from the new CA", Duration::from_secs(60), || async {
        let s = r.service_status().await.unwrap();
        s["old_ca_leaves"] == 0
            && db.status()["issuer"]["old_ca_leaves"] == 0
            && web.status()["issuer"]["old_ca_leaves"] == 0
    })
    .await;
    let out = rotate_when_ready(&world, "retire the old CA").await;
    assert!(out.contains("retired"), "{out}");
    eventually("hosts drop the old CA from their bundle", Duration::from_secs(60), || async {
        bundles.iter().all(|b| certs_in(b) == 1)
    })
    .await;
    let at_retire = (renewed(&db), renewed(&web));
    eventually("two more renewals each after the retirement", Duration::from_secs(60), || async {
        renewed(&db) >= at_retire.0 + 2 && renewed(&web) >= at_retire.1 + 2
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert!(ok.load(Ordering::SeqCst) > 20, "traffic flowed throughout");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no connection failed during the rotation");
    web.shutdown().await;
    db.shutdown().await;
}

/// The thundering herd after an outage: N hosts (10,000 unless `CORDON_HERD` says otherwise)
/// renew at once against a restarted service, at most 512 requests in flight. Prints the rate,
/// the service's CPU per leaf and the clients'.
/// `cargo test --release -p cordon --test issuer -- --ignored thundering_herd --nocapture`
///
/// Each simulated host writes its key, certificate and token where a real one writes to its own
/// disk: here all 10,000 share one file system, so their directories go to a tmpfs (`/dev/shm`,
/// or `CORDON_HERD_HOSTS=DIR`), and what is measured is the service (its CA directory and
/// issuance log stay on the test's disk). `CORDON_HERD_HOSTS=disk` keeps them there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose"]
async fn thundering_herd_of_renewals_after_an_outage() {
    let n: usize = std::env::var("CORDON_HERD").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let world = World::new();
    // The whole herd comes from one address here: lift the per-source limits.
    let unlimited = ["--per-source-connections", "100000", "--per-source-rate", "0"];
    let signer = Signer::start_with(&world, "127.0.0.1:0", "24h", &unlimited);
    let addr = signer.addr;
    let tokens = cordon::pki::issuer::TokenStore::new(&world.ca());
    let hosts_dir = match std::env::var("CORDON_HERD_HOSTS").ok().as_deref() {
        Some("disk") => None,
        Some(dir) => Some(tempfile::tempdir_in(dir).unwrap()),
        None => tempfile::tempdir_in("/dev/shm").ok(),
    };
    let host_path = |rel: &str| match &hosts_dir {
        Some(d) => d.path().join(rel),
        None => world.path(rel),
    };
    println!("the hosts' files in {}", host_path("").display());
    let bundle = host_path("bundle.pem");
    std::fs::copy(world.ca().join("ca.pem"), &bundle).unwrap();
    let web = ServiceName::new("web").unwrap();
    let hosts: Vec<Arc<Renewer>> = (0..n)
        .map(|i| {
            let host = format!("host-{i}");
            let token = tokens.mint(&host, &["web".to_string()], Duration::from_secs(3600)).unwrap();
            let file = host_path(&format!("tokens/{host}"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, token).unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            Renewer::new(
                IssuerSettings::parse(&format!("https://{addr}"), Some(file)).unwrap(),
                TrustDomain::new(TRUST_DOMAIN).unwrap(),
                bundle.clone(),
                host_path(&format!("hosts/{host}")),
                host,
                vec![web.clone()],
            )
        })
        .collect();
    let limit = Arc::new(tokio::sync::Semaphore::new(512));
    let herd = |renew: bool| {
        let hosts = hosts.clone();
        let limit = limit.clone();
        let web = web.clone();
        async move {
            let start = std::time::Instant::now();
            let cpu = support::signer::cpu_seconds("/proc/self/stat");
            let mut tasks = tokio::task::JoinSet::new();
            for h in hosts {
                let permit = limit.clone().acquire_owned().await.unwrap();
                let web = web.clone();
                tasks.spawn(async move {
                    let r = if renew {
                        h.renew(&web).await
                    } else {
                        h.enrol_missing(Duration::from_secs(60)).await
                    };
                    drop(permit);
                    r.is_ok()
                });
            }
            let mut ok = 0;
            while let Some(r) = tasks.join_next().await {
                ok += usize::from(r.unwrap_or(false));
            }
            (ok, start.elapsed(), support::signer::cpu_seconds("/proc/self/stat") - cpu)
        }
    };
    // What the service alone spends per leaf, and so how many a second it could sign with both
    // cores to itself (here the clients use them too).
    let service = |leaves: usize, cpu: f64| {
        let per = cpu / leaves.max(1) as f64;
        format!("service CPU {:.0} us per leaf, {:.0}/s on two cores of its own", per * 1e6, 2.0 / per)
    };
    let before = signer.cpu_seconds();
    let (enrolled, took, clients) =
        tokio::time::timeout(Duration::from_secs(600), herd(false)).await.expect("enrolment within 10 min");
    println!(
        "enrolled {enrolled}/{n} hosts in {took:.1?}: {:.0} signatures/s; {}; clients' CPU {:.0} us per leaf",
        enrolled as f64 / took.as_secs_f64(),
        service(enrolled, signer.cpu_seconds() - before),
        clients / enrolled.max(1) as f64 * 1e6,
    );
    assert_eq!(enrolled, n);

    // The outage: the service goes away and comes back (replaying its log); everyone renews.
    drop(signer);
    let signer = Signer::start_with(&world, &addr.to_string(), "24h", &unlimited);
    let before = signer.cpu_seconds();
    let (renewed, took, clients) =
        tokio::time::timeout(Duration::from_secs(600), herd(true)).await.expect("renewals within 10 min");
    println!(
        "renewed {renewed}/{n} leaves in {took:.1?}: {:.0} signatures/s; {}; clients' CPU {:.0} us per leaf",
        renewed as f64 / took.as_secs_f64(),
        service(renewed, signer.cpu_seconds() - before),
        clients / renewed.max(1) as f64 * 1e6,
    );
    assert_eq!(renewed, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_waits_for_hosts_that_have_not_caught_up() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let t = token(&world, "db-host", &["db"], "1h");
    let host = renewer(&world, &signer, "db-host", &["db"], Some(t));
    host.enrol_missing(Duration::from_secs(10)).await.unwrap();
    let ca = world.ca();
    let rotate = |force: bool| {
        let mut args = vec!["ca", "rotate", "--dir", ca.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        cordon(&args)
    };
    assert!(rotate(false).status.success(), "prepare");
    let o = rotate(false);
    assert_eq!(o.status.code(), Some(1), "db-host has not renewed since: not yet");
    assert!(String::from_utf8_lossy(&o.stdout).contains("db-host"), "names the host");
    assert!(std::fs::metadata(ca.join("next/ca-key.pem")).unwrap().permissions().mode() & 0o077 == 0);

    // It renews and receives the new bundle; then activation goes ahead.
    let db = ServiceName::new("db").unwrap();
    let bundle = world.path("hosts/db-host/bundle.pem");
    eventually("db-host gets the new CA with a renewal", Duration::from_secs(20), || async {
        host.renew(&db).await.unwrap();
        certs_in(&bundle) == 2
    })
    .await;
    assert!(rotate(false).status.success(), "activate");
    let o = rotate(false);
    assert_eq!(o.status.code(), Some(1), "db-host's leaf is from the old CA: not yet");
    assert!(String::from_utf8_lossy(&o.stdout).contains("db-host/db"), "names the leaf");
    eventually("db-host's leaf comes from the new CA", Duration::from_secs(20), || async {
        host.renew(&db).await.unwrap();
        host.service_status().await.unwrap()["old_ca_leaves"] == 0 && host.status()["old_ca_leaves"] == 0
    })
    .await;
    assert!(rotate(false).status.success(), "retire");
    assert!(!ca.join("old-ca.pem").exists() && !ca.join("next").exists());
    assert_eq!(certs_in(&ca.join("bundle.pem")), 1);
}
