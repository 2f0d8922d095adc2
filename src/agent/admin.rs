//! The admin endpoint: `GET /metrics` (OpenMetrics text) and `GET /status` (JSON).
//!
//! Plain HTTP/1.1 on the configured `admin` address (loopback by convention), served by
//! [`crate::proxy::http_server`]: a few dozen connections at once, a few per source, one
//! deadline for each request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Parts;
use crate::ledger::RecorderHandle;
use crate::metrics::{Kind, Metrics, ScrapeCollector};
use crate::policy::PolicyWatcher;
use crate::proxy::Lifecycle;
use crate::proxy::http_server::{self, HttpLimits, HttpStats, reply};

/// The admin endpoint's limits: a few dozen connections (8 per source), 5 s to send a request.
const ADMIN_LIMITS: HttpLimits = HttpLimits {
    max_connections: 32,
    per_source_connections: 8,
    per_source_rate: 0,
    deadline: Duration::from_secs(5),
    max_body: 1024,
};

/// Serves `/metrics` and `/status` until `stop`.
pub(crate) async fn serve(listener: TcpListener, parts: Arc<Parts>, stop: CancellationToken) {
    let life = Lifecycle { stop_accepting: stop, ..Lifecycle::new() };
    let stats = Arc::new(HttpStats::default());
    http_server::serve(listener, None, ADMIN_LIMITS, stats, life, move |req, _| {
        let answer = route(&parts, &req);
        async move { answer }
    })
    .await;
}

fn route(parts: &Parts, req: &Request<Bytes>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, crate::exposition::CONTENT_TYPE, parts.metrics.encode())
        }
        (&Method::GET, "/status") => {
            let body = serde_json::to_string_pretty(&status(parts)).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::GET, _) => reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics or /status\n"),
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n"),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn rfc3339_unix(secs: u64) -> Option<String> {
    (secs > 0).then(|| rfc3339(UNIX_EPOCH + Duration::from_secs(secs)))
}

/// The `/status` document.
pub(crate) fn status(parts: &Parts) -> serde_json::Value {
    let now = SystemTime::now();
    let policy = parts.policy_rx.borrow().clone();
    let snapshot = parts.discovery_rx.borrow().clone();
    let identities: Vec<_> = parts
        .tls
        .expiries()
        .into_iter()
        .map(|(id, not_after)| {
            let left = not_after
                .duration_since(now)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_else(|e| -(e.duration().as_secs() as i64));
            json!({"identity": id.as_str(), "not_after": rfc3339(not_after), "expires_in_seconds": left})
        })
        .collect();
    let services: Vec<_> = parts
        .config
        .services
        .iter()
        .map(|s| {
            json!({
                "name": s.name.as_str(),
                "listen": parts.bound.service(s.name.as_str()).map(|a| a.to_string()),
                "app": s.app.to_string(),
                "mode": policy.mode(s.name.as_str()).as_str(),
                "lockdown": s.lockdown,
            })
        })
        .collect();
    let upstreams: Vec<_> = parts
        .config
        .upstreams
        .iter()
        .map(|u| {
            let backends: Vec<_> = snapshot
                .backends(u.service.as_str())
                .iter()
                .map(
                    |b| json!({"host": b.host, "port": b.port, "mtls_port": b.mtls_port, "weight": b.weight}),
                )
                .collect();
            json!({
                "service": u.service.as_str(),
                "listen": parts.bound.upstream(u.service.as_str()).map(|a| a.to_string()),
                "identity": u.identity.as_str(),
                "backends": backends,
            })
        })
        .collect();
    let ps = parts.policy.stats();
    let ds = parts.discovery.stats();
    let rs = parts.recorder.stats();
    json!({
        "host": parts.config.host,
        "trust_domain": parts.config.trust_domain.as_str(),
        "trust_bundle": format!("{:016x}", parts.tls.bundle().0),
        "identities": identities,
        "services": services,
        "upstreams": upstreams,
        "policy": {
            "path": parts.config.policy.display().to_string(),
            "version": policy.version(),
            "reloads_ok": ps.ok.load(Ordering::Relaxed),
            "reloads_failed": ps.failed.load(Ordering::Relaxed),
            "last_reload": rfc3339_unix(ps.last_ok.load(Ordering::Relaxed)),
        },
        "discovery": {
            "dir": parts.config.discovery_dir.display().to_string(),
            "generation": snapshot.generation(),
            "services": snapshot.service_count(),
            "reloads_ok": ds.reloads_ok.load(Ordering::Relaxed),
            "reloads_failed": ds.reloads_failed.load(Ordering::Relaxed),
            "last_reload": rfc3339_unix(ds.last_ok.load(Ordering::Relaxed)),
        },
        "lockdown": *parts.lockdown.lock().unwrap_or_else(|p| p.into_inner()),
        "issuer": parts.renewer.as_ref().map(|r| r.status()),
        "revocations": super::revoked::status(&parts.tls, parts.renewer.as_ref()),
        "ledger": {
            "path": parts.config.ledger_path().display().to_string(),
            "events_received": rs.received.load(Ordering::Relaxed),
            "events_written": rs.written.load(Ordering::Relaxed),
            "events_dropped": rs.dropped.load(Ordering::Relaxed),
            "write_errors": rs.write_errors.load(Ordering::Relaxed),
            "ledgers_set_aside": rs.ledgers_set_aside.load(Ordering::Relaxed),
            "last_write_error": rs.last_write_error(),
        },
        "fleet_store": parts.shipper.as_ref().map(|(store, st)| json!({
            "store": store.to_string(),
            "rows_waiting": st.waiting.load(Ordering::Relaxed),
            "rows_shipped": st.shipped.load(Ordering::Relaxed),
            "rows_refused": st.refused.load(Ordering::Relaxed),
            "batches_shipped": st.batches.load(Ordering::Relaxed),
            "last_ship": rfc3339_ms(st.last_success_ms.load(Ordering::Relaxed)),
            "lag_seconds": st.lag(std::time::SystemTime::now()).as_secs(),
            "errors": st.errors.load(Ordering::Relaxed),
            "last_error": st.last_error(),
        })),
    })
}

/// A unix-ms instant as RFC 3339; 0 (never) as null.
fn rfc3339_ms(ms: i64) -> Option<String> {
    (ms > 0).then(|| rfc3339(crate::ledger::from_ms(ms)))
}

/// The decision log's dropped records on `/metrics`.
pub(crate) fn register_decision_log(metrics: &mut Metrics, log: &crate::policy::DecisionLog) {
    let log = log.clone();
    metrics.register_collector(ScrapeCollector::new(
        "decision_log_dropped",
        "Decision records dropped: the writer fell behind, or syslog did not take them",
        Kind::Counter,
        move || vec![(vec![], log.dropped() as f64)],
    ));
}

/// The shipper's counters on `/metrics`.
pub(crate) fn register_shipper(metrics: &mut Metrics, stats: &Arc<crate::store::ShipStats>) {
    let st = stats.clone();
    metrics.register_collector(ScrapeCollector::new(
        "store_rows_waiting",
        "Ledger rows not yet shipped to the fleet store",
        Kind::Gauge,
        move || vec![(vec![], st.waiting.load(Ordering::Relaxed) as f64)],
    ));
    let st = stats.clone();
    metrics.register_collector(ScrapeCollector::new(
        "store_rows_shipped",
        "Ledger rows shipped to the fleet store",
        Kind::Counter,
        move || vec![(vec![], st.shipped.load(Ordering::Relaxed) as f64)],
    ));
    let st = stats.clone();
    metrics.register_collector(ScrapeCollector::new(
        "store_ship_errors",
        "Failed attempts to ship to the fleet store",
        Kind::Counter,
        move || vec![(vec![], st.errors.load(Ordering::Relaxed) as f64)],
    ));
    let st = stats.clone();
    metrics.register_collector(ScrapeCollector::new(
        "store_last_ship_timestamp_seconds",
        "When the fleet store last committed a batch (unix seconds; 0: never)",
        Kind::Gauge,
        move || vec![(vec![], st.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0)],
    ));
    let st = stats.clone();
    metrics.register_collector(ScrapeCollector::new(
        "store_lag_seconds",
        "How long rows have been waiting to be shipped (0: caught up)",
        Kind::Gauge,
        move || vec![(vec![], st.lag(std::time::SystemTime::now()).as_secs_f64())],
    ));
    let st = stats.clone();
    metrics.register_collector(ScrapeCollector::new(
        "store_shipper_cpu_seconds",
        "CPU time the shipper thread has used",
        Kind::Counter,
        move || vec![(vec![], st.cpu_ms.load(Ordering::Relaxed) as f64 / 1000.0)],
    ));
}

/// Metrics read at scrape time from the other parts' own counters.
pub(crate) fn register_collectors(
    metrics: &mut Metrics,
    discovery: &cordon_discovery::Watcher,
    policy: &PolicyWatcher,
    recorder: &RecorderHandle,
    lockdown: &Arc<std::sync::Mutex<Vec<crate::lockdown::ServiceCounter>>>,
) {
    let counters = lockdown.clone();
    metrics.register_collector(ScrapeCollector::new(
        "lockdown_direct_packets",
        "Packets that reached a locked-down app's port directly, not through cordon (dropped while enforcing)",
        Kind::Counter,
        move || {
            counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|c| (vec![("service", c.service.clone())], c.packets as f64))
                .collect()
        },
    ));
    let rs = recorder.stats().clone();
    metrics.register_collector(ScrapeCollector::new(
        "recorder_events",
        "Connection events by what the recorder did with them",
        Kind::Counter,
        move || {
            vec![
                (vec![("state", "received".into())], rs.received.load(Ordering::Relaxed) as f64),
                (vec![("state", "written".into())], rs.written.load(Ordering::Relaxed) as f64),
                (vec![("state", "dropped".into())], rs.dropped.load(Ordering::Relaxed) as f64),
            ]
        },
    ));
    metrics.register_collector(ScrapeCollector::new(
        "log_lines_dropped",
        "Log lines dropped because stderr did not take them as fast as they came",
        Kind::Counter,
        || vec![(vec![], crate::logging::log_lines_dropped() as f64)],
    ));
    let rs = recorder.stats().clone();
    metrics.register_collector(ScrapeCollector::new(
        "ledger_write_errors",
        "Failed batch writes to the ledger",
        Kind::Counter,
        move || vec![(vec![], rs.write_errors.load(Ordering::Relaxed) as f64)],
    ));
    let rs = recorder.stats().clone();
    metrics.register_collector(ScrapeCollector::new(
        "ledgers_set_aside",
        "Damaged ledgers moved aside for a fresh one (ledger.db.damaged-<time>)",
        Kind::Counter,
        move || vec![(vec![], rs.ledgers_set_aside.load(Ordering::Relaxed) as f64)],
    ));
    let ds = discovery.stats();
    let ps = policy.stats();
    let (ds2, ps2) = (ds.clone(), ps.clone());
    metrics.register_collector(ScrapeCollector::new(
        "reloads",
        "Reloads by what and result",
        Kind::Counter,
        move || {
            vec![
                (
                    vec![("what", "discovery".into()), ("result", "ok".into())],
                    ds.reloads_ok.load(Ordering::Relaxed) as f64,
                ),
                (
                    vec![("what", "discovery".into()), ("result", "failed".into())],
                    ds.reloads_failed.load(Ordering::Relaxed) as f64,
                ),
                (
                    vec![("what", "policy".into()), ("result", "ok".into())],
                    ps.ok.load(Ordering::Relaxed) as f64,
                ),
                (
                    vec![("what", "policy".into()), ("result", "failed".into())],
                    ps.failed.load(Ordering::Relaxed) as f64,
                ),
            ]
        },
    ));
    metrics.register_collector(ScrapeCollector::new(
        "last_reload_timestamp_seconds",
        "Unix time of the last good reload",
        Kind::Gauge,
        move || {
            vec![
                (vec![("what", "discovery".into())], ds2.last_ok.load(Ordering::Relaxed) as f64),
                (vec![("what", "policy".into())], ps2.last_ok.load(Ordering::Relaxed) as f64),
            ]
        },
    ));
}

/// Each served service's mode by the policy in force: 1 while it enforces, 0 while it learns. A
/// flip shows as a change, which is what the alert on denials after a flip keys on.
pub(crate) fn register_modes(
    metrics: &mut Metrics,
    policy: tokio::sync::watch::Receiver<Arc<crate::policy::Policy>>,
    services: Vec<String>,
) {
    metrics.register_collector(ScrapeCollector::new(
        "service_enforcing",
        "1 while the policy puts the service in enforce mode, 0 while it learns",
        Kind::Gauge,
        move || {
            let policy = policy.borrow().clone();
            services
                .iter()
                .map(|s| {
                    let enforcing = policy.mode(s) == crate::policy::Mode::Enforce;
                    (vec![("service", s.clone())], if enforcing { 1.0 } else { 0.0 })
                })
                .collect()
        },
    ));
}
