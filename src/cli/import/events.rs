//! From a parsed HAProxy log line to the ledger events cordon records for it: who called (the
//! source), which service (the destination), and an `Opened`/`Closed` pair at the logged time.
//!
//! Pure: discovery and policy come in as lookups, so every naming rule is tested without files.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon_haproxy::LogRecord;

use crate::base::Source;
use crate::ledger::{EdgeKey, Event};
use crate::pki::ServiceName;
use crate::policy::{Identified, Mode, Verdict};

/// How callers are named: the operator's `--source`, and what discovery knows.
pub(super) struct Naming<'a> {
    /// The service of the host that wrote the log, for loopback clients (`--source`).
    pub source: Option<&'a ServiceName>,
    /// The service at an address (discovery's ip index).
    pub service_at: &'a dyn Fn(IpAddr) -> Option<String>,
    /// The services a syslog host name is a backend of (discovery backends' names and hosts).
    pub services_of_host: &'a dyn Fn(&str) -> Vec<String>,
}

/// Why a line could not become an edge, though it parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unmapped {
    /// A loopback client on a host cordon cannot name (no `--source`, host unknown to discovery).
    UnknownHost(Option<String>),
    /// A loopback client on a host that is a backend of several services: which one called?
    AmbiguousHost(String, Vec<String>),
    /// The frontend's name is not a cordon service name.
    BadDestination(String),
}

impl fmt::Display for Unmapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmapped::UnknownHost(Some(h)) => {
                write!(f, "loopback caller on host {h}, which discovery does not know; pass --source")
            }
            Unmapped::UnknownHost(None) => f.write_str("loopback caller and no host name; pass --source"),
            Unmapped::AmbiguousHost(h, services) => {
                write!(f, "loopback caller on host {h}, a backend of {}; pass --source", services.join(", "))
            }
            Unmapped::BadDestination(b) => write!(f, "frontend {b:?} is not a service name"),
        }
    }
}

/// The caller of a logged connection.
///
/// On a SmartStack host the logging HAProxy is the caller's own, reached on loopback: the caller
/// is the host that wrote the log, and the evidence is `haproxy-log`. Any other client address
/// is named through discovery, and is evidence from an address, as a plaintext caller of the
/// inbound proxy is (`plaintext-ip`, or `unknown` when no one service is there): the same
/// evidence is judged the same wherever it comes from.
pub(super) fn source(record: &LogRecord<'_>, naming: &Naming<'_>) -> Result<(String, Identified), Unmapped> {
    let ip = record.client.ip();
    if !is_loopback(ip) {
        return Ok(match (naming.service_at)(ip) {
            Some(service) => (service, Identified::PlaintextIp),
            None => (Source::Address(ip).to_string(), Identified::Unknown),
        });
    }
    if let Some(s) = naming.source {
        return Ok((s.to_string(), Identified::HaproxyLog));
    }
    let host = record.syslog.and_then(|h| h.hostname);
    let Some(host) = host else { return Err(Unmapped::UnknownHost(None)) };
    let mut services = (naming.services_of_host)(host);
    match services.len() {
        1 => Ok((services.swap_remove(0), Identified::HaproxyLog)),
        0 => host
            .parse::<IpAddr>()
            .map(|ip| (Source::Address(ip).to_string(), Identified::Unknown))
            .map_err(|_| Unmapped::UnknownHost(Some(host.to_string()))),
        _ => Err(Unmapped::AmbiguousHost(host.to_string(), services)),
    }
}

/// The called service: the frontend (or listen section) the caller dialled. Synapse names it after
/// the service and lets the backend carry another name (`backend_name`), so the backend HAProxy
/// chose is not the service.
pub(super) fn destination(record: &LogRecord<'_>) -> Result<ServiceName, Unmapped> {
    let name = record.frontend;
    ServiceName::new(name).map_err(|_| Unmapped::BadDestination(name.to_string()))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The `Opened` and `Closed` events of one logged connection. HAProxy's date is the logging
/// host's local time, `utc_offset_s` east of UTC. The default formats log only the bytes sent
/// back to the client, so `bytes_to_destination` is 0.
pub(super) fn events(
    record: &LogRecord<'_>,
    (source, identified): (String, Identified),
    destination: &ServiceName,
    verdict: Verdict,
    utc_offset_s: i32,
) -> [Event; 2] {
    let edge =
        EdgeKey { source, destination: destination.to_string(), identified, mode: Mode::Learn, verdict };
    let opened = time_of(record.accept_date.unix_ms(utc_offset_s));
    let duration = Duration::from_millis(record.timers.total_ms().unwrap_or(0));
    [
        Event::Opened { edge: edge.clone(), at: opened },
        Event::Closed {
            edge,
            at: opened + duration,
            bytes_to_destination: 0,
            bytes_to_source: record.bytes_read,
            duration,
        },
    ]
}

fn time_of(unix_ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(unix_ms.unsigned_abs());
    if unix_ms >= 0 { UNIX_EPOCH + magnitude } else { UNIX_EPOCH - magnitude }
}

#[cfg(test)]
mod tests;
