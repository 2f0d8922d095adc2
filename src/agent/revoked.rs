//! The revocation list on the admin endpoint: its size, version and age on `/status`, and the
//! signing service poll's counts (on `/metrics`: [`crate::metrics::identity`]). Refusals of revoked leaves are counted by
//! the inbound listeners (`cordon_handshake_failures_total{reason="revoked"}`) and written to the
//! decision log with reason `revoked`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::pki::TlsStore;
use crate::pki::issuer::Renewer;

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
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
        "age_seconds": crate::metrics::revocations_age_seconds(tls) as u64,
        "last_error": watch.last_error(),
        "poll": poll,
    })
}
