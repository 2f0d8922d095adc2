//! The signing service against one compromised host: a copied leaf that its host already
//! renewed, revoked hosts and serials, slow clients, hostile host names, oversized bodies and an
//! issuance log full of junk. Real service (`cordon ca serve`), real TLS, over loopback.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cordon::pki::issuer::client::IssuerError;
use cordon::pki::issuer::{IssuerSettings, Renewer};
use cordon::pki::{ServiceName, TrustDomain, host_of};
use support::signer::*;
use support::*;

fn refused(e: Result<(), IssuerError>) -> String {
    match e {
        Err(IssuerError::Refused { reason, .. }) => reason,
        other => format!("not a refusal: {other:?}"),
    }
}

/// A serial in one form whether it came as `0a:1b` or `a1b`.
fn hex(serial: &str) -> String {
    serial.replace(':', "").to_ascii_lowercase().trim_start_matches('0').to_string()
}

fn leaf_der(path: &Path) -> rustls_pki_types::CertificateDer<'static> {
    let pem = std::fs::read_to_string(path).unwrap();
    rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A renewer for `host` working from its own directory `dir` (a thief's copy, say).
fn renewer_in(world: &World, signer: &Signer, host: &str, dir: &str) -> Arc<Renewer> {
    let base = world.path(dir);
    std::fs::create_dir_all(&base).unwrap();
    let bundle = base.join("bundle.pem");
    if !bundle.exists() {
        std::fs::copy(world.ca().join("ca.pem"), &bundle).unwrap();
    }
    Renewer::new(
        IssuerSettings::parse(&signer.url(), None).unwrap(),
        TrustDomain::new(TRUST_DOMAIN).unwrap(),
        bundle,
        base.join("tls"),
        host.to_string(),
        vec![ServiceName::new("web").unwrap()],
    )
}

fn steal(world: &World, host: &str, thief: &str) {
    let to = world.path(&format!("{thief}/tls/web"));
    std::fs::create_dir_all(&to).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(world.path(&format!("hosts/{host}/tls/web/{f}")), to.join(f)).unwrap();
    }
    std::fs::copy(
        world.path(&format!("hosts/{host}/bundle.pem")),
        world.path(&format!("{thief}/bundle.pem")),
    )
    .unwrap();
}

/// The service's `/metrics`, read from an address of its own (127.0.0.9), so that what a test
/// does from 127.0.0.1 does not count against it.
fn metrics(signer: &Signer) -> String {
    let rt = tokio::runtime::Handle::current();
    let addr = signer.addr;
    let from: IpAddr = "127.0.0.9".parse().unwrap();
    tokio::task::block_in_place(|| {
        rt.block_on(async move { https(addr, from, "GET", "/metrics", Vec::new()).await.unwrap().1 })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_leaf_is_refused_once_its_host_renewed_across_a_restart_and_a_rotation() {
    let world = World::new();
    let mut signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let t = token(&world, "web-1", &["web"], "1h");
    let host = renewer(&world, &signer, "web-1", &["web"], Some(t));
    host.enrol_missing(Duration::from_secs(10)).await.unwrap();
    let cert = world.path("hosts/web-1/tls/web/cert.pem");
    assert_eq!(
        host_of(&leaf_der(&cert)).map(|h| h.to_string()).as_deref(),
        Some("web-1"),
        "the leaf names its host"
    );

    // The attacker copies the leaf; the host renews, which consumes it.
    steal(&world, "web-1", "thief");
    let web = ServiceName::new("web").unwrap();
    host.renew(&web).await.unwrap();
    let thief = renewer_in(&world, &signer, "web-1", "thief");
    assert_eq!(refused(thief.renew(&web).await), "superseded");
    assert!(
        metrics(&signer).contains("cordon_issuer_refused_total{reason=\"superseded\"} 1"),
        "counted as a possible copy"
    );
    let log = log_lines(&world);
    assert!(log.iter().any(|e| e["reason"] == "superseded" && e["host"] == "web-1"), "logged: {log:?}");

    // A restart rebuilds who holds what from the issuance log.
    drop(signer);
    signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let thief = renewer_in(&world, &signer, "web-1", "thief");
    assert_eq!(refused(thief.renew(&web).await), "superseded", "after a restart");

    // A CA rotation (new CA signing, the old one still trusted) changes nothing for the copy.
    let ca = world.ca();
    let host = renewer(&world, &signer, "web-1", &["web"], None);
    let bundle = world.path("hosts/web-1/bundle.pem");
    cordon_ok(&["ca", "rotate", "--dir", ca.to_str().unwrap()]);
    eventually("the host receives the new CA", Duration::from_secs(20), || async {
        host.renew(&web).await.unwrap();
        std::fs::read_to_string(&bundle).unwrap().matches("BEGIN CERTIFICATE").count() == 2
    })
    .await;
    cordon_ok(&["ca", "rotate", "--dir", ca.to_str().unwrap(), "--force"]);
    eventually("the service signs with the new CA", Duration::from_secs(20), || async {
        host.service_status().await.unwrap()["phase"] == "activated"
    })
    .await;
    // The bundle is public: the thief has it too.
    std::fs::copy(&bundle, world.path("thief/bundle.pem")).unwrap();
    assert_eq!(refused(thief.renew(&web).await), "superseded", "after a rotation");
    // The host itself goes on renewing.
    host.renew(&web).await.unwrap();
}

/// The service signs without its lock and records under it: two presenters of one leaf at the
/// same moment both get past the first check and both sign, and still only one leaf is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_presenters_of_one_leaf_at_the_same_moment_one_renews() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let web = ServiceName::new("web").unwrap();
    let rounds = 16;
    for i in 0..rounds {
        let name = format!("web-{i}");
        let t = token(&world, &name, &["web"], "1h");
        let host = renewer(&world, &signer, &name, &["web"], Some(t));
        host.enrol_missing(Duration::from_secs(10)).await.unwrap();
        let thief_dir = format!("thief-{i}");
        steal(&world, &name, &thief_dir);
        let thief = renewer_in(&world, &signer, &name, &thief_dir);
        let (a, b) = tokio::join!(host.renew(&web), thief.renew(&web));
        let outcomes = [a, b].map(refused);
        let won = outcomes.iter().filter(|o| o.starts_with("not a refusal: Ok")).count();
        assert_eq!(won, 1, "round {i}: exactly one renews: {outcomes:?}");
        assert!(outcomes.iter().any(|o| o == "superseded"), "round {i}: the other is a copy: {outcomes:?}");
    }
    // One leaf issued per round beyond the enrolment, as the log says.
    let issued = log_lines(&world).iter().filter(|e| e["event"] == "issued" && e["kind"] == "renew").count();
    assert_eq!(issued, rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_hosts_and_serials_are_refused_and_a_new_token_brings_a_host_back() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let web = ServiceName::new("web").unwrap();
    let mut hosts = Vec::new();
    for h in ["a-host", "b-host"] {
        let t = token(&world, h, &["web"], "1h");
        let r = renewer(&world, &signer, h, &["web"], Some(t));
        r.enrol_missing(Duration::from_secs(10)).await.unwrap();
        hosts.push(r);
    }
    let ca = world.ca();
    let ca = ca.to_str().unwrap();

    // One serial: that leaf is refused at renewal.
    let a_serial = serial_of(&world.path("hosts/a-host/tls/web/cert.pem"));
    let out = cordon_ok(&[
        "ca",
        "revoke",
        "--dir",
        ca,
        "--serial",
        &a_serial,
        "--reason",
        "key seen on a paste site",
    ]);
    assert!(out.contains("revoked serial"), "{out}");
    assert_eq!(refused(hosts[0].renew(&web).await), "revoked");
    // A typo is refused, not written: a zero serial would be an entry every agent refuses, and
    // with it the whole list.
    let before = std::fs::read(world.ca().join("revoked.json")).unwrap();
    for typo in ["0", "00:00", "xyz"] {
        let out = cordon(&["ca", "revoke", "--dir", ca, "--serial", typo]);
        assert!(!out.status.success(), "--serial {typo} must be refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--serial"), "{out:?}");
    }
    assert_eq!(std::fs::read(world.ca().join("revoked.json")).unwrap(), before);

    // A host: its leaves, and a token minted before the revocation, are refused.
    let early = token(&world, "b-host", &["web"], "1h");
    let b_serial = serial_of(&world.path("hosts/b-host/tls/web/cert.pem"));
    cordon_ok(&["ca", "revoke", "--dir", ca, "--host", "b-host"]);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(world.ca().join("revoked.json")).unwrap()).unwrap();
    assert_eq!(file["hosts"], serde_json::json!(["b-host"]), "{file}");
    assert_eq!(file["serials"][0].as_str().map(hex), Some(hex(&a_serial)), "{file}");
    assert_eq!(file["reasons"][file["serials"][0].as_str().unwrap()], "key seen on a paste site", "{file}");
    assert_eq!(refused(hosts[1].renew(&web).await), "revoked");
    let (status, body) = https(
        signer.addr,
        localhost(),
        "POST",
        "/v1/enrol",
        enrol_body("b-host", &token_text(&early), &["web"]),
    )
    .await
    .unwrap();
    assert_eq!((status, body.contains("\"revoked\"")), (403, true), "{body}");

    // The list in force is served to anyone, and counted.
    let (status, body) = https(signer.addr, localhost(), "GET", "/v1/revoked", Vec::new()).await.unwrap();
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["hosts"], serde_json::json!(["b-host"]), "{list}");
    let s = hosts[0].service_status().await.unwrap();
    assert_eq!((s["revoked"]["hosts"].as_u64(), s["revoked"]["serials"].as_u64()), (Some(1), Some(1)), "{s}");
    assert!(metrics(&signer).contains("cordon_issuer_revoked{kind=\"hosts\"} 1"));

    // The host is re-imaged; a token minted after the revocation enrols it again.
    let revoked_at = SystemTime::now();
    eventually("a second passes", Duration::from_secs(5), || async {
        SystemTime::now().duration_since(revoked_at).unwrap_or_default() > Duration::from_millis(1100)
    })
    .await;
    let fresh = token(&world, "b-host", &["web"], "1h");
    std::fs::remove_dir_all(world.path("hosts/b-host/tls/web")).unwrap();
    let back = renewer(&world, &signer, "b-host", &["web"], Some(fresh));
    back.enrol_missing(Duration::from_secs(10)).await.unwrap();
    back.renew(&web).await.unwrap();
    // From now on the fleet refuses its old leaf by serial, not the host by name.
    let (_, body) = https(signer.addr, localhost(), "GET", "/v1/revoked", Vec::new()).await.unwrap();
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["hosts"], serde_json::json!([]), "{list}");
    let serials: Vec<&str> = list["serials"].as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
    assert!(serials.iter().any(|s| hex(s) == hex(&b_serial)), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_completes_while_one_client_holds_1024_slow_connections() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    // One client opens 1,024 connections and sends nothing on them.
    let mut slow = Vec::new();
    for _ in 0..1024 {
        match tokio::net::TcpStream::connect(signer.addr).await {
            Ok(c) => slow.push(c),
            Err(e) => panic!("connection {} refused by the kernel: {e}", slow.len()),
        }
    }
    let t = token(&world, "web-2", &["web"], "1h");
    let from: IpAddr = "127.0.0.2".parse().unwrap();
    let start = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        https(signer.addr, from, "POST", "/v1/enrol", enrol_body("web-2", &token_text(&t), &["web"])),
    )
    .await
    .expect("the enrolment was not stalled")
    .unwrap();
    let took = start.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(2), "enrolment took {took:?}");
    let m = metrics(&signer);
    let closed = metric(&m, "cordon_issuer_http_closed_total", &[("cause", "source_connections")]);
    assert!(closed >= 1024.0 - 64.0, "the client's connections past its share were closed: {closed}");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_names_and_bodies_are_refused_bounded_and_counted() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let huge = "a".repeat(60_000);
    for _ in 0..40 {
        let (status, body) = https(
            signer.addr,
            localhost(),
            "POST",
            "/v1/enrol",
            enrol_body(&huge, "cordon-join-00", &["web"]),
        )
        .await
        .unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("bad_request") && body.len() < 1000, "{}", &body[..body.len().min(300)]);
    }
    // 40 requests of 60 kB: the issuance log holds a bounded number of short lines, no name.
    let log = std::fs::read_to_string(world.ca().join("issuance.jsonl")).unwrap_or_default();
    assert!(!log.contains(&"a".repeat(254)), "a 60 kB name reached the issuance log");
    let lines = log.lines().count();
    assert!((1..=20).contains(&lines), "{lines} lines for 40 refusals");
    assert!(log.len() < 20 * 1024, "{} bytes", log.len());
    let service_log = std::fs::read_to_string(world.path("signer.log")).unwrap_or_default();
    assert!(!service_log.contains(&"a".repeat(254)), "a 60 kB name reached the service's log");
    // Every refusal is counted even when not logged.
    let m = metrics(&signer);
    assert_eq!(metric(&m, "cordon_issuer_refused_total", &[("reason", "bad_request")]), 40.0);

    // A body past the limit: 413, counted. The service answers before it reads the body it
    // refuses, then reads and drops the rest before it closes, so a client still sending reads
    // the answer rather than a reset.
    let answer = https(signer.addr, localhost(), "POST", "/v1/enrol", vec![b' '; 70 * 1024]).await;
    assert!(matches!(answer, Ok((413, _))), "{answer:?}");
    let m = metrics(&signer);
    assert_eq!(metric(&m, "cordon_issuer_http_responses_total", &[("code", "413")]), 1.0);
    assert_eq!(metric(&m, "cordon_issuer_http_responses_total", &[("code", "403")]), 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_log_is_compacted_at_start() {
    let world = World::new();
    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let t = token(&world, "web-3", &["web"], "1h");
    let host = renewer(&world, &signer, "web-3", &["web"], Some(t));
    host.enrol_missing(Duration::from_secs(10)).await.unwrap();
    drop(signer);
    // Junk as a flood of refusals and a damaged file leave it: long lines, refusals, garbage.
    let log = world.ca().join("issuance.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    for i in 0..2000 {
        text += &format!(
            "{{\"time\":\"2026-12-06T00:00:00Z\",\"event\":\"refused\",\"kind\":\"enrol\",\"host\":\"\",\"reason\":\"bad_request\",\"message\":\"{i}\",\"peer\":\"127.0.0.1:1\"}}\n"
        );
    }
    text += &format!("{}\nnot json\n", "x".repeat(2 << 20));
    std::fs::write(&log, text).unwrap();
    let before = std::fs::metadata(&log).unwrap().len();

    let signer = Signer::start(&world, "127.0.0.1:0", "1h");
    let after = std::fs::read_to_string(&log).unwrap();
    assert_eq!(after.lines().count(), 1, "only the leaf that is out is kept: {} bytes before", before);
    assert!(after.contains("\"issued\"") && after.contains("web-3"));
    let archive = std::fs::read_to_string(world.ca().join("issuance.jsonl.old")).unwrap();
    assert_eq!(archive.lines().count(), 2000, "the refusals are kept for audit, the junk is not");
    // What the state needs survived: the host renews with the leaf it holds.
    let host = renewer(&world, &signer, "web-3", &["web"], None);
    host.renew(&ServiceName::new("web").unwrap()).await.unwrap();
}

#[test]
fn hand_issued_leaves_name_their_host_or_say_they_do_not() {
    let world = World::new();
    let ca = world.ca();
    let out = world.path("tls/web-h");
    let said = cordon_ok(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--service",
        "web",
        "--host",
        "web-7",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(said.contains("names host web-7"), "{said}");
    assert_eq!(host_of(&leaf_der(&out.join("cert.pem"))).map(|h| h.to_string()).as_deref(), Some("web-7"));
    let plain = world.path("tls/web-p");
    let said = cordon_ok(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--service",
        "web",
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert!(said.contains("names no host"), "{said}");
    assert_eq!(host_of(&leaf_der(&plain.join("cert.pem"))), None);
    let bad = cordon(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--service",
        "web",
        "--host",
        "a b",
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}
