//! Decision records to syslog: `decision_log = "syslog:PATH"` sends each record as an RFC 5424
//! message to Debian's rsyslog (started by the test in a temporary directory, writing into a
//! file). A burst of 10,000 denials arrives whole; a missing or silent syslog never holds up a
//! refusal, and every record it does not take is counted.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cordon::agent::Agent;
use cordon::agent::config::Config;
use cordon::policy::{
    DecisionFormat, DecisionLog, DecisionLogSettings, DecisionRecord, DecisionSink, Identified, Mode, Origin,
    Outcome, Reason,
};
use support::siem::{Rsyslog, ocsf_check};
use support::*;

const SECOND: Duration = Duration::from_secs(1);

/// A refusal of a plaintext caller at 10.x.y.z, one source per record (none is folded).
fn denial(i: u32) -> DecisionRecord {
    let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    DecisionRecord {
        at: SystemTime::now(),
        source: format!("ip:{ip}"),
        source_addr: SocketAddr::new(ip, 40000),
        local_addr: SocketAddr::from(([10, 9, 9, 9], 14000)),
        destination: "db".into(),
        mode: Mode::Enforce,
        outcome: Outcome::Denied,
        rule: Arc::from("plaintext: enforce accepts mTLS only"),
        reason: Reason::Plaintext,
        tls: None,
        identified: Identified::Unknown,
    }
}

fn syslog(socket: &std::path::Path, format: DecisionFormat) -> DecisionLogSettings {
    DecisionLogSettings { sink: DecisionSink::Syslog(socket.to_owned()), format }
}

fn origin() -> Origin {
    Origin { trust_domain: TRUST_DOMAIN.into(), host: "db-1".into() }
}

#[test]
fn a_burst_of_ten_thousand_denials_reaches_rsyslog_whole() {
    let test = "a_burst_of_ten_thousand_denials_reaches_rsyslog_whole";
    let Some(rsyslog) = Rsyslog::start(test) else { return };
    let log = DecisionLog::start(Some(&syslog(&rsyslog.socket(), DecisionFormat::Ocsf)), origin()).unwrap();
    let started = Instant::now();
    for i in 0..10_000 {
        log.record(denial(i));
    }
    let handed = started.elapsed();
    log.shutdown();
    assert_eq!(log.dropped(), 0, "no record dropped");
    let got = rsyslog.wait_for(10_000, 120 * SECOND);
    assert_eq!(got.len(), 10_000, "each record once");
    let mut sources: Vec<&str> = got.iter().filter_map(|r| r["unmapped"]["source"].as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    assert_eq!(sources.len(), 10_000, "10,000 different records");
    eprintln!("10,000 denials handed over in {handed:?}, all in rsyslog's file");
    if let Some(report) = ocsf_check(test, &rsyslog.records()) {
        assert!(report.starts_with("10000 records valid"), "{report}");
    }
    // The messages themselves: RFC 5424, facility auth, severity warning, app cordon, MSGID ocsf.
    let full = std::fs::read_to_string(rsyslog.full()).unwrap();
    let first = full.lines().next().unwrap();
    assert!(
        first.starts_with("<36>1 ") && first.contains(" db-1 cordon ") && first.contains(" ocsf - {"),
        "{first}"
    );
}

/// The db host of [`db_host`], enforcing, with its decision records going to `log`.
async fn enforcing_db(world: &World, log: &str) -> (Agent, SocketAddr) {
    world.write_policy("[modes]\ndb = \"enforce\"\n");
    let app = EchoApp::start().await;
    world.issue("db");
    world.config("db-host", &[("db", app.addr)], &[]);
    let path = world.path("db-host.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!("decision_log = \"{}\"", world.path("decisions-db-host.jsonl").display()), log);
    assert!(text.contains(log), "the decision_log line was replaced");
    let db = Agent::start(Config::parse(&text, &path).unwrap()).await.unwrap();
    let inbound = db.bound().service("db").unwrap();
    (db, inbound)
}

/// `n` plaintext callers from as many addresses (127.0.1.x, 127.0.2.x, ...), each refused;
/// panics if one is not refused within the round trip's deadline.
async fn refuse_plaintext(inbound: SocketAddr, n: u32) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::from(0x7f00_0100 + i));
        let reply = round_trip_from(ip, inbound, b"let me in").await;
        assert!(reply.map(|r| r.is_empty()).unwrap_or(true), "caller {i} must get nothing back");
    }
    started.elapsed()
}

fn dropped(db: &Agent) -> f64 {
    metric(&db.metrics_text(), "cordon_decision_log_dropped_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sends_its_refusals_to_rsyslog_as_rfc5424_ocsf_messages() {
    let test = "an_agent_sends_its_refusals_to_rsyslog_as_rfc5424_ocsf_messages";
    let Some(rsyslog) = Rsyslog::start(test) else { return };
    let world = World::new();
    let log =
        format!("decision_log = \"syslog:{}\"\ndecision_log_format = \"ocsf\"", rsyslog.socket().display());
    let (db, inbound) = enforcing_db(&world, &log).await;
    // The lateral move: a host holding batch's certificate tries db.
    world.write_discovery("db", &[(localhost(), 1, Some(inbound.port()))]);
    world.issue("batch");
    let batch = Agent::start(world.config("batch-host", &[], &[("db", "batch")])).await.unwrap();
    let refused = round_trip(batch.bound().upstream("db").unwrap(), b"let me in").await;
    assert!(refused.map(|r| r.is_empty()).unwrap_or(true), "batch gets nothing from db");
    // And 50 plaintext callers.
    refuse_plaintext(inbound, 50).await;
    let got = tokio::task::spawn_blocking(move || {
        let got = rsyslog.wait_for(51, 30 * SECOND);
        (got, rsyslog)
    })
    .await
    .unwrap();
    let (got, rsyslog) = got;
    assert_eq!(got.len(), 51);
    assert!(got.iter().all(|r| r["disposition"] == "Blocked" && r["dst_endpoint"]["port"] == inbound.port()));
    let spiffe = format!("spiffe://{TRUST_DOMAIN}/service/batch");
    assert!(
        got.iter().any(|r| r["src_endpoint"]["uid"] == spiffe.as_str()),
        "batch's refusal, by its SPIFFE ID"
    );
    assert_eq!(dropped(&db), 0.0);
    batch.shutdown().await;
    db.shutdown().await;
    ocsf_check(test, &rsyslog.records());
    // As it arrives: one RFC 5424 message per record (shown in docs/operations.md).
    let full = std::fs::read_to_string(rsyslog.full()).unwrap();
    let line = full.lines().find(|l| l.contains(&spiffe)).unwrap();
    assert!(
        line.starts_with("<36>1 ") && line.contains(" db-host cordon ") && line.contains(" ocsf - {"),
        "{line}"
    );
    eprintln!("as rsyslog wrote it:\n{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_syslog_never_holds_up_a_refusal_and_each_lost_record_is_counted() {
    let world = World::new();
    let missing = world.path("no-such-dir/log.sock");
    let (db, inbound) =
        enforcing_db(&world, &format!("decision_log = \"syslog:{}\"", missing.display())).await;
    let took = refuse_plaintext(inbound, 200).await;
    eprintln!("200 refusals with syslog missing: {took:?}");
    eventually("200 dropped records counted", 10 * SECOND, || async { dropped(&db) == 200.0 }).await;
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_that_does_not_read_never_holds_up_a_refusal_and_each_record_is_delivered_or_counted() {
    let world = World::new();
    let socket = world.path("silent.sock");
    // Bound, not read during the burst: its queue fills, and the agent must not wait on it.
    let silent = UnixDatagram::bind(&socket).unwrap();
    silent.set_nonblocking(true).unwrap();
    let (db, inbound) =
        enforcing_db(&world, &format!("decision_log = \"syslog:{}\"", socket.display())).await;
    // More callers than the socket's queue holds.
    let queue: u32 = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(512);
    let n = queue + 100;
    let took = refuse_plaintext(inbound, n).await;
    eprintln!("{n} refusals with a silent syslog (queue of {queue}): {took:?}");
    eventually("records counted as dropped", 20 * SECOND, || async { dropped(&db) > 0.0 }).await;
    // Syslog reads again: every record is in its queue or counted, none lost without a trace.
    let mut delivered = 0u32;
    let mut buf = vec![0u8; 65536];
    eventually(&format!("{n} records delivered or counted"), 20 * SECOND, || {
        while silent.recv(&mut buf).is_ok() {
            delivered += 1;
        }
        let counted = f64::from(delivered) + dropped(&db);
        async move { counted == f64::from(n) }
    })
    .await;
    db.shutdown().await;
}
