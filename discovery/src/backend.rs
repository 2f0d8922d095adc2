//! One backend as Synapse's `file_output` writes it, and the Nerve label cordon adds to it.
//!
//! Owns the per-backend JSON format: which keys mean what, which may be null, and how the
//! `cordon_mtls_port` label is read. It parses through serde so every error carries the line and
//! column serde_json reports. It must not touch files or decide what a refused file does to a
//! snapshot: that is [`crate::scan`]'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Unexpected, Visitor};
use serde_json::{Map, Value};

/// The Nerve label a backend carries when it runs cordon: the port of its mTLS inbound listener.
pub const MTLS_PORT_LABEL: &str = "cordon_mtls_port";

/// One backend of a service, as listed in `<service>.json`.
///
/// Built only by parsing (see the [`Deserialize`] impl): `host` is non-empty, `port` and
/// `mtls_port` are never 0, and `mtls_port` is set exactly when the `cordon_mtls_port` label is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    /// IP address or host name, as Synapse wrote it.
    pub host: String,
    /// The application's own port, dialled in plaintext when the backend has no `mtls_port`.
    pub port: u16,
    /// Synapse's server name for the backend (often `host:port` or an instance name).
    pub name: Option<String>,
    /// Synapse's backend id (a number or string from the registry), kept as written.
    pub id: Option<Value>,
    /// HAProxy weight, when the registration carried one.
    pub weight: Option<u32>,
    /// Nerve labels; non-string scalar values are kept in their JSON text form, null values dropped.
    pub labels: BTreeMap<String, String>,
    /// The backend's cordon mTLS port, from the `cordon_mtls_port` label; `None` means plaintext.
    pub mtls_port: Option<u16>,
    /// Every other key of the entry (`haproxy_server_options` among them), kept as written.
    pub extra: Map<String, Value>,
}

impl Backend {
    /// The host as an IP address, if it is one (no DNS lookup).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// True when the backend runs cordon and must be dialled over mTLS.
    pub fn is_mtls(&self) -> bool {
        self.mtls_port.is_some()
    }

    /// The port to dial: the mTLS port when the backend has one, the application port otherwise.
    pub fn dial_port(&self) -> u16 {
        self.mtls_port.unwrap_or(self.port)
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BackendVisitor)
    }
}

/// Stores `value` in `slot`, refusing a key that appears twice in one object.
fn once<T, E: de::Error>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

struct BackendVisitor;

impl<'de> Visitor<'de> for BackendVisitor {
    type Value = Backend;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a backend object with \"host\" and \"port\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Backend, A::Error> {
        // Optional keys may be absent or null: the outer Option records "seen", the inner the value.
        let mut host: Option<String> = None;
        let mut port: Option<u16> = None;
        let mut name: Option<Option<String>> = None;
        let mut id: Option<Option<Value>> = None;
        let mut weight: Option<Option<u32>> = None;
        let mut labels: Option<Option<Labels>> = None;
        let mut extra = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "host" => {
                    let value: String = map.next_value()?;
                    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(de::Error::invalid_value(
                            Unexpected::Str(&value),
                            &"a host name or IP address",
                        ));
                    }
                    once(&mut host, "host", value)?;
                }
                "port" => {
                    let value: u16 = map.next_value()?;
                    if value == 0 {
                        return Err(de::Error::invalid_value(Unexpected::Unsigned(0), &"a port 1-65535"));
                    }
                    once(&mut port, "port", value)?;
                }
                "name" => once(&mut name, "name", map.next_value()?)?,
                "id" => once(&mut id, "id", map.next_value()?)?,
                "weight" => once(&mut weight, "weight", map.next_value()?)?,
                "labels" => once(&mut labels, "labels", map.next_value()?)?,
                _ => {
                    let value: Value = map.next_value()?;
                    extra.insert(key, value);
                }
            }
        }
        let host = host.ok_or_else(|| de::Error::missing_field("host"))?;
        let port = port.ok_or_else(|| de::Error::missing_field("port"))?;
        let Labels { labels, mtls_port } = labels.flatten().unwrap_or_default();
        Ok(Backend {
            host,
            port,
            name: name.flatten(),
            id: id.flatten(),
            weight: weight.flatten(),
            labels,
            mtls_port,
            extra,
        })
    }
}

/// The `labels` object, with the cordon label checked while it is parsed (so its errors carry
/// a line and column like any other).
#[derive(Default)]
struct Labels {
    labels: BTreeMap<String, String>,
    mtls_port: Option<u16>,
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(LabelsVisitor)
    }
}

struct LabelsVisitor;

impl<'de> Visitor<'de> for LabelsVisitor {
    type Value = Labels;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a labels object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
        let mut out = Labels::default();
        while let Some(key) = map.next_key::<String>()? {
            if key == MTLS_PORT_LABEL {
                let MtlsPort(port) = map.next_value()?;
                once(&mut out.mtls_port, MTLS_PORT_LABEL, port)?;
                out.labels.insert(key, port.to_string());
                continue;
            }
            let text = match map.next_value::<Value>()? {
                Value::Null => continue,
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.labels.insert(key, text);
        }
        Ok(out)
    }
}

/// A `cordon_mtls_port` value: a decimal string ("14000") or a JSON integer, 1-65535.
struct MtlsPort(u16);

impl<'de> Deserialize<'de> for MtlsPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MtlsPortVisitor)
    }
}

struct MtlsPortVisitor;

impl MtlsPortVisitor {
    fn port<E: de::Error>(self, value: u64, unexpected: Unexpected) -> Result<MtlsPort, E> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(MtlsPort(port)),
            _ => Err(E::invalid_value(unexpected, &self)),
        }
    }
}

impl<'de> Visitor<'de> for MtlsPortVisitor {
    type Value = MtlsPort;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "the label {MTLS_PORT_LABEL} to be a port 1-65535 (like \"14000\")")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MtlsPort, E> {
        self.port(v, Unexpected::Unsigned(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MtlsPort, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MtlsPort, E> {
        // Digits only: no sign, no spaces, at most five of them (so the u64 parse cannot overflow).
        if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::invalid_value(Unexpected::Str(v), &self));
        }
        let value: u64 = v.parse().map_err(|_| E::invalid_value(Unexpected::Str(v), &self))?;
        self.port(value, Unexpected::Str(v))
    }
}

/// Parses the contents of one `<service>.json`: a JSON array of backends.
pub fn parse_backends(bytes: &[u8]) -> Result<Vec<Backend>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<Backend>, String> {
        parse_backends(json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn synapse_entry_with_nulls_and_extra_keys() {
        let b = parse(
            r#"[{"host":"10.0.0.5","port":8080,"name":"i-1:8080","id":null,"weight":null,
                "haproxy_server_options":null,"labels":null,"az":"us-east-1a"}]"#,
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        let b = &b[0];
        assert_eq!((b.host.as_str(), b.port, b.name.as_deref()), ("10.0.0.5", 8080, Some("i-1:8080")));
        assert_eq!((b.id.clone(), b.weight, b.mtls_port), (None, None, None));
        assert!(b.labels.is_empty());
        assert_eq!(b.extra.get("az"), Some(&Value::from("us-east-1a")));
        assert_eq!(b.extra.get("haproxy_server_options"), Some(&Value::Null));
        assert_eq!(b.ip(), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(b.dial_port(), 8080);
    }

    #[test]
    fn mtls_label_as_string_or_number() {
        let b = parse(
            r#"[{"host":"db-1.internal","port":5432,"labels":{"cordon_mtls_port":"14000","az":2,"x":null}},
                {"host":"10.0.0.6","port":5432,"weight":10,"id":7,"labels":{"cordon_mtls_port":14001}}]"#,
        )
        .unwrap();
        assert_eq!(b[0].mtls_port, Some(14000));
        assert_eq!(b[0].dial_port(), 14000);
        assert_eq!(b[0].ip(), None);
        assert_eq!(b[0].labels.get("az").map(String::as_str), Some("2"));
        assert!(!b[0].labels.contains_key("x"));
        assert_eq!(b[1].mtls_port, Some(14001));
        assert_eq!(b[1].labels.get(MTLS_PORT_LABEL).map(String::as_str), Some("14001"));
        assert_eq!((b[1].weight, b[1].id.clone()), (Some(10), Some(Value::from(7))));
    }

    #[test]
    fn bad_mtls_labels_are_errors_with_a_position() {
        for bad in [
            r#""abc""#,
            r#""0""#,
            r#""70000""#,
            r#"" 14000""#,
            r#""+1""#,
            "0",
            "70000",
            "-1",
            "14000.5",
            "null",
            "true",
            "{}",
        ] {
            let json = format!(
                "[\n{{\"host\":\"10.0.0.5\",\"port\":80,\"labels\":{{\"cordon_mtls_port\":{bad}}}}}]"
            );
            let err = parse(&json).expect_err(bad);
            assert!(err.contains(MTLS_PORT_LABEL), "{bad}: {err}");
            assert!(err.contains("line 2 column"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_entries_are_errors() {
        let cases = [
            (r#"{"host":"a","port":1}"#, "expected a sequence"),
            (r#"[{"port":1}]"#, "missing field `host`"),
            (r#"[{"host":"a"}]"#, "missing field `port`"),
            (r#"[{"host":"a","port":"80"}]"#, "invalid type"),
            (r#"[{"host":"a","port":70000}]"#, "u16"),
            (r#"[{"host":"a","port":0}]"#, "a port 1-65535"),
            (r#"[{"host":"","port":1}]"#, "host name"),
            (r#"[{"host":null,"port":1}]"#, "invalid type: null"),
            (r#"[{"host":"a","port":1,"port":2}]"#, "duplicate field `port`"),
            (r#"[{"host":"a","port":1,"weight":-1}]"#, "invalid value"),
            (r#"[{"host":"a","port":1,"labels":[]}]"#, "labels object"),
            (r#"[{"host":"a","port":1}"#, "EOF"),
            ("", "EOF"),
        ];
        for (json, want) in cases {
            let err = parse(json).expect_err(json);
            assert!(err.contains(want), "{json}: {err}");
            assert!(err.contains("line 1 column"), "{json}: {err}");
        }
    }

    #[test]
    fn empty_list_is_a_service_without_backends() {
        assert_eq!(parse("[]").unwrap(), Vec::new());
    }
}
