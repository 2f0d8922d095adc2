//! The OCSF encoding of an audit record: an API Activity event (class 6003, category 6
//! "Application Activity", OCSF 1.5.0), with cordon's own record whole under
//! `unmapped.cordon` so nothing is lost and `cordon audit` reads either encoding.
//!
//! Activities: a token minted or an enrolment asked for is Create (1); a flip, a revocation and a
//! rotation step are Update (3); a prune is Delete (4); a refused ingest is Create. Status is
//! Success (1) or Failure (2, with the refusal in `status_detail`).

use serde_json::{Value, json};

use super::record::{Action, Record, RecordStatus};

/// OCSF's class for API activity.
pub const CLASS_UID: u32 = 6003;
/// The OCSF schema version the records follow.
pub const VERSION: &str = "1.5.0";

/// The record as an OCSF API Activity event.
pub fn event(r: &Record) -> Value {
    let (activity_id, activity) = match r.action {
        Action::TokenMinted { .. } | Action::EnrolmentRefused { .. } | Action::IngestRefused { .. } => {
            (1, "Create")
        }
        Action::ModeFlip { .. } | Action::Revocation { .. } | Action::RotationStep { .. } => (3, "Update"),
        Action::StorePrune { .. } => (4, "Delete"),
    };
    let (status_id, status) = match r.status {
        RecordStatus::Success => (1, "Success"),
        RecordStatus::Refused | RecordStatus::Failure => (2, "Failure"),
    };
    // A forced flip, a refused enrolment or ingest: worth a look. Everything else: informational.
    let notable = matches!(r.action, Action::ModeFlip { forced: true, .. })
        || matches!(
            r.action,
            Action::EnrolmentRefused { .. } | Action::IngestRefused { .. } | Action::Revocation { .. }
        );
    let (severity_id, severity) = if notable { (3, "Medium") } else { (1, "Informational") };
    let time = r.when().map_or(0, |t| crate::ledger::unix_ms(t).max(0));
    let mut event = json!({
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("API Activity: {activity}"),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": time,
        "message": format!("{}: {}", r.operation(), r.summary()),
        "metadata": {
            "version": VERSION,
            "log_name": "audit",
            "product": { "name": "cordon", "vendor_name": "cordon", "version": env!("CARGO_PKG_VERSION") },
        },
        "actor": {
            "user": { "name": r.actor.user, "uid": r.actor.uid.to_string() },
            "app_name": "cordon",
        },
        "api": { "operation": r.operation(), "service": { "name": "cordon" } },
        "src_endpoint": src_endpoint(r),
        "resources": resources(r),
        "unmapped": { "cordon": r },
    });
    if r.status != RecordStatus::Success {
        event["status_detail"] = Value::String(detail(r));
    }
    event
}

/// Where the action came from: the peer for a request the service refused, else this host.
fn src_endpoint(r: &Record) -> Value {
    match &r.action {
        Action::EnrolmentRefused { peer, .. } | Action::IngestRefused { peer, .. } => {
            match peer.parse::<std::net::SocketAddr>() {
                Ok(a) => json!({ "ip": a.ip().to_string(), "port": a.port() }),
                Err(_) => json!({ "name": peer }),
            }
        }
        _ => json!({ "hostname": r.actor.host }),
    }
}

/// What was acted on.
fn resources(r: &Record) -> Value {
    let list = match &r.action {
        Action::ModeFlip { service, policy, policy_after, policy_before, .. } => vec![
            json!({ "type": "service", "name": service }),
            json!({ "type": "policy", "name": policy, "version": policy_after.as_ref().unwrap_or(policy_before) }),
        ],
        Action::TokenMinted { host, identities, .. } | Action::EnrolmentRefused { host, identities, .. } => {
            let mut v = vec![json!({ "type": "host", "name": host })];
            v.extend(identities.iter().map(|i| json!({ "type": "service", "name": i })));
            v
        }
        Action::Revocation { host, serial, .. } => {
            let mut v = Vec::new();
            if let Some(h) = host {
                v.push(json!({ "type": "host", "name": h }));
            }
            if let Some(s) = serial {
                v.push(json!({ "type": "certificate", "uid": s }));
            }
            v
        }
        Action::RotationStep { ca_dir, step, .. } => {
            vec![json!({ "type": "ca", "name": ca_dir, "version": step })]
        }
        Action::StorePrune { store, .. } => vec![json!({ "type": "store", "name": store })],
        Action::IngestRefused { host, identity, .. } => {
            vec![json!({ "type": "host", "name": host }), json!({ "type": "service", "name": identity })]
        }
    };
    Value::Array(list)
}

/// Why it did not succeed.
fn detail(r: &Record) -> String {
    match &r.action {
        Action::ModeFlip { preflight: Some(p), .. } => p.reasons.join("; "),
        Action::EnrolmentRefused { reason, message, .. } => format!("{reason}: {message}"),
        Action::RotationStep { why_not: Some(w), .. } => w.clone(),
        Action::StorePrune { error: Some(e), .. } => e.clone(),
        Action::IngestRefused { reason, .. } => reason.clone(),
        _ => r.status.as_str().to_owned(),
    }
}

/// The cordon record inside an OCSF event written by [`event`]; `None` for anything else.
pub fn record_of(v: &Value) -> Option<&Value> {
    (v.get("class_uid")?.as_u64()? == u64::from(CLASS_UID)).then(|| v.get("unmapped")?.get("cordon"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_carries_the_class_its_type_and_the_record_whole() {
        let r = Record::rotation_step(std::path::Path::new("/ca"), Err("2 hosts behind"), false);
        let e = event(&r);
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["type_uid"], 600303);
        assert_eq!(e["status_id"], 2);
        assert_eq!(e["status_detail"], "2 hosts behind");
        let back: Record = serde_json::from_value(record_of(&e).expect("inside").clone()).expect("decodes");
        assert_eq!(back, r);
    }
}
