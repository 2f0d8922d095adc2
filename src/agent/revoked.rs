//! The revocation list on the admin endpoint: its size, version and age on `/status` and
//! `/metrics`, and the signing service poll's counts. Refusals of revoked leaves are counted by
//! the inbound listeners (`cordon_handshake_failures_total{reason="revoked"}`) and written to the
//! decision log with reason `revoked`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::metrics::{Kind, Metrics, ScrapeCollector};
use crate::pki::TlsStore;
use crate::pki::issuer::Renewer;

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Seconds since the list in force was written by its source (or, when it does not say, since
/// this agent put it in force).
fn age_seconds(tls: &TlsStore) -> f64 {
    let list = tls.revocations();
    let since = list.generated().unwrap_or_else(|| tls.revocation_watch().since());
    SystemTime::now().duration_since(since).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The `revocations` part of `/status`.
pub(crate) fn status(tls: &TlsStore, renewer: Option<&Arc<Renewer>>) -> serde_json::Value {
    let list = tls.revocations();
    let watch = tls.revocation_watch();
    let poll = renewer.map(|r| {
        let s = r.poll_stats();
        let last_ok = s.last_ok.load(Ordering::Relaxed);
        json!({
            "every_ms": r.revocation_poll().as_millis() as u64,
            "ok": s.ok.load(Ordering::Relaxed),
            "failed": s.failed.load(Ordering::Relaxed),
            "last_ok": (last_ok > 0).then(|| rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(last_ok))),
            "last_error": s.last_error(),
        })
    });
    json!({
        "path": tls.revocation_path().display().to_string(),
        "serials": list.serial_count(),
        "hosts": list.host_count(),
        "version": format!("{:016x}", list.version()),
        "generated": list.generated().map(rfc3339),
        "in_force_since": rfc3339(watch.since()),
        "age_seconds": age_seconds(tls) as u64,
        "last_error": watch.last_error(),
        "poll": poll,
    })
}

/// The list's size and age, and the poll's counts, on `/metrics`.
pub(crate) fn register(metrics: &mut Metrics, tls: &Arc<TlsStore>, renewer: Option<&Arc<Renewer>>) {
    let t = tls.clone();
    metrics.register_collector(ScrapeCollector::new(
        "revocations",
        "Entries in the revocation list in force, by kind (serial, host)",
        Kind::Gauge,
        move || {
            let list = t.revocations();
            vec![
                (vec![("kind", "serial".into())], list.serial_count() as f64),
                (vec![("kind", "host".into())], list.host_count() as f64),
            ]
        },
    ));
    let t = tls.clone();
    metrics.register_collector(ScrapeCollector::new(
        "revocations_age_seconds",
        "Seconds since the revocation list in force was written by its source",
        Kind::Gauge,
        move || vec![(vec![], age_seconds(&t))],
    ));
    if let Some(r) = renewer {
        let r = r.clone();
        metrics.register_collector(ScrapeCollector::new(
            "revocation_polls",
            "Polls of the signing service's revocation list, by result",
            Kind::Counter,
            move || {
                let s = r.poll_stats();
                vec![
                    (vec![("result", "ok".into())], s.ok.load(Ordering::Relaxed) as f64),
                    (vec![("result", "failed".into())], s.failed.load(Ordering::Relaxed) as f64),
                ]
            },
        ));
    }
}
