//! The decision log's OCSF shape: each denial and would-deny as an OCSF 1.5.0 Network Activity
//! event (class_uid 4001, category_uid 4) with the Security Control profile's disposition, action,
//! firewall rule and policy, and cordon's own fields (the `cordon` format's) in `unmapped`.
//!
//! Runs on the decision log's writer thread, never on the data plane. Each record is written
//! straight into the line buffer, every string escaped by serde_json, with no JSON tree built.
//! Must not decide anything: it only renders a [`DecisionRecord`]. docs/operations.md shows a
//! record; the mapping of each field is documented beside [`write`].

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::log::DecisionRecord;
use super::{Identified, Mode, Outcome};

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.5.0";

/// What every record of one agent shares: its trust domain (for the SPIFFE IDs) and host name.
#[derive(Debug, Clone)]
pub struct Origin {
    pub trust_domain: String,
    pub host: String,
}

/// Milliseconds since the epoch, OCSF's `timestamp_t`.
fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// A JSON object being written into a buffer; keys are ours (never escaped), values always are.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    more: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Obj<'a> {
        out.push(b'{');
        Obj { out, more: false }
    }

    fn key(&mut self, key: &str) {
        if self.more {
            self.out.push(b',');
        }
        self.more = true;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
    }

    fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        self.key(key);
        let _ = write!(self.out, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn obj(&mut self, key: &str, fill: impl FnOnce(&mut Obj<'_>)) {
        self.key(key);
        let mut inner = Obj::open(self.out);
        fill(&mut inner);
        inner.out.push(b'}');
    }

    /// An array of objects.
    fn objs<T>(&mut self, key: &str, items: &[T], fill: impl Fn(&mut Obj<'_>, &T)) {
        self.key(key);
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            let mut inner = Obj::open(self.out);
            fill(&mut inner, item);
            inner.out.push(b'}');
        }
        self.out.push(b']');
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Appends one record (without its newline) to `out`.
///
/// The mapping: a denial is activity 5 `Refuse`, disposition 2 `Blocked`, action 2 `Denied`,
/// status `Failure`, severity `Medium`; a would-deny (learn mode lets it through) is activity 1
/// `Open`, disposition 1 `Allowed`, action 1 `Allowed`, status `Success`, severity
/// `Informational`, with the would-be verdict kept in `unmapped.verdict` (`deny`) and
/// `unmapped.outcome` (`would-deny`), and `policy.is_applied` false. The SPIFFE IDs are the
/// endpoints' `uid`s; the deciding rule is `firewall_rule.name`, the reason its `type` and the
/// event's `status_code`. Folded records (`count` > 1) carry `start_time` and `end_time`.
pub fn write(out: &mut Vec<u8>, r: &DecisionRecord, count: u64, until: Option<SystemTime>, origin: &Origin) {
    let denied = r.outcome == Outcome::Denied;
    let (activity_id, activity) = if denied { (5, "Refuse") } else { (1, "Open") };
    let spiffe = |service: &str| format!("spiffe://{}/service/{service}", origin.trust_domain);
    let source_id = (r.identified == Identified::Mtls).then(|| spiffe(&r.source));
    let source_service = (!r.source.starts_with("ip:")).then_some(r.source.as_str());

    let mut o = Obj::open(out);
    o.num("class_uid", 4001);
    o.str("class_name", "Network Activity");
    o.num("category_uid", 4);
    o.str("category_name", "Network Activity");
    o.num("activity_id", activity_id);
    o.str("activity_name", activity);
    o.num("type_uid", 4001 * 100 + activity_id);
    o.str("type_name", if denied { "Network Activity: Refuse" } else { "Network Activity: Open" });
    o.num("time", millis(r.at));
    if let Some(until) = until.filter(|_| count > 1) {
        o.num("start_time", millis(r.at));
        o.num("end_time", millis(until));
    }
    o.num("count", count);
    let (severity_id, severity) = if denied { (3, "Medium") } else { (1, "Informational") };
    o.num("severity_id", severity_id);
    o.str("severity", severity);
    let (status_id, status) = if denied { (2, "Failure") } else { (1, "Success") };
    o.num("status_id", status_id);
    o.str("status", status);
    o.str("status_code", r.reason.as_str());
    o.str("status_detail", &r.rule);
    let verb = if denied { "refused" } else { "let through in learn mode; enforce would refuse it" };
    o.str("message", &format!("{} -> {} {verb}: {}", r.source, r.destination, r.rule));
    let (disposition_id, disposition) = if denied { (2, "Blocked") } else { (1, "Allowed") };
    o.num("disposition_id", disposition_id);
    o.str("disposition", disposition);
    o.num("action_id", if denied { 2 } else { 1 });
    o.str("action", if denied { "Denied" } else { "Allowed" });
    o.obj("metadata", |m| {
        m.str("version", OCSF_VERSION);
        m.obj("product", |p| {
            p.str("name", "cordon");
            p.str("vendor_name", "cordon");
            p.str("version", env!("CARGO_PKG_VERSION"));
        });
        m.str("log_name", "decisions");
        m.str("log_provider", "cordon");
        m.key("profiles");
        m.out.extend_from_slice(b"[\"security_control\"]");
        m.str("event_code", r.outcome.as_str());
    });
    o.obj("src_endpoint", |e| {
        e.str("ip", &r.source_addr.ip().to_canonical().to_string());
        e.num("port", r.source_addr.port());
        if let Some(s) = source_service {
            e.str("svc_name", s);
        }
        if let Some(id) = &source_id {
            e.str("uid", id);
        }
    });
    o.obj("dst_endpoint", |e| {
        e.str("ip", &r.local_addr.ip().to_canonical().to_string());
        e.num("port", r.local_addr.port());
        e.str("svc_name", &r.destination);
        e.str("hostname", &origin.host);
        e.str("uid", &spiffe(&r.destination));
    });
    o.obj("connection_info", |c| {
        c.str("protocol_name", "tcp");
        c.num("protocol_num", 6);
        let v4 = r.source_addr.ip().to_canonical().is_ipv4();
        c.num("protocol_ver_id", if v4 { 4 } else { 6 });
        c.str(
            "protocol_ver",
            if v4 { "Internet Protocol version 4 (IPv4)" } else { "Internet Protocol version 6 (IPv6)" },
        );
        c.num("direction_id", 1);
        c.str("direction", "Inbound");
    });
    if let Some(tls) = &r.tls {
        o.obj("tls", |t| {
            t.str("version", tls.version);
            t.str("cipher", tls.cipher);
            if let Some(id) = &source_id {
                t.objs("sans", &[id.as_str()], |s, id| {
                    s.str("name", id);
                    s.str("type", "URI");
                });
            }
            certificate(t, &tls.leaf);
        });
    }
    o.obj("firewall_rule", |f| {
        f.str("name", &r.rule);
        f.str("type", r.reason.as_str());
    });
    o.obj("policy", |p| {
        p.str("name", &format!("{} {}", r.destination, r.mode.as_str()));
        p.str("desc", &format!("cordon policy for {} in {} mode", r.destination, r.mode.as_str()));
        p.bool("is_applied", r.mode == Mode::Enforce);
    });
    o.obj("unmapped", |u| {
        u.str("source", &r.source);
        u.str("destination", &r.destination);
        u.str("mode", r.mode.as_str());
        u.str("verdict", "deny");
        u.str("outcome", r.outcome.as_str());
        u.str("rule", &r.rule);
        u.str("reason", r.reason.as_str());
        u.str("transport", if r.tls.is_some() { "tls" } else { "plaintext" });
        u.str("identified", r.identified.as_str());
        u.str("host", &origin.host);
    });
    o.close();
}

/// The caller's leaf certificate as OCSF's `certificate`, left out when it does not parse (it
/// was verified at the handshake, so it does).
fn certificate(t: &mut Obj<'_>, leaf: &[u8]) {
    let Ok((_, x509)) = X509Certificate::from_der(leaf) else {
        return;
    };
    let secs = |a: x509_parser::time::ASN1Time| a.timestamp().max(0) as u128 * 1000;
    t.obj("certificate", |c| {
        c.str("subject", &x509.subject().to_string());
        c.str("issuer", &x509.issuer().to_string());
        c.str("serial_number", &crate::pki::issuer::serial_hex(x509.raw_serial()));
        c.num("created_time", secs(x509.validity().not_before));
        c.num("expiration_time", secs(x509.validity().not_after));
        c.str("version", &(x509.version().0 + 1).to_string());
        c.objs("fingerprints", &[crate::pki::issuer::sha256_hex(leaf)], |f, hash| {
            f.num("algorithm_id", 3);
            f.str("algorithm", "SHA-256");
            f.str("value", hash);
        });
    });
}
