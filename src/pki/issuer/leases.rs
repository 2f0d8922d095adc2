//! The issuance log (one JSON line per leaf signed or request refused, for audit) and what the
//! signing service knows from it: which leaves are out, from which CA, and which bundle each host
//! last received. The state is rebuilt from the log at start, so the log is the only record.
//!
//! Writes go through a std `Mutex` from the service's blocking threads: a line is small, and the
//! order of lines is the order of decisions.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{from_unix, unix};
use crate::pki::PkiError;

/// One line of the issuance log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339.
    pub time: String,
    /// `issued` or `refused`.
    pub event: String,
    /// `enrol` or `renew`.
    pub kind: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_unix: Option<u64>,
    /// Fingerprint of the CA that signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Fingerprints of the bundle sent with the leaf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundle: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The requester's address.
    pub peer: String,
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The append-only log file.
#[derive(Debug)]
pub struct IssuanceLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl IssuanceLog {
    pub fn open(path: &Path) -> Result<IssuanceLog, PkiError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| PkiError::Write { path: path.to_owned(), source })?;
        Ok(IssuanceLog { path: path.to_owned(), file: Mutex::new(file) })
    }

    /// Appends one line. A failed write is logged: the signing goes on (the leaf is already out).
    pub fn append(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_vec(entry) else { return };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(file = %self.path.display(), error = %e, "cannot write the issuance log");
        }
    }
}

/// A leaf that is out.
#[derive(Debug, Clone)]
struct Lease {
    host: String,
    identity: String,
    not_after: SystemTime,
    ca: String,
    bundle: Vec<String>,
    issued: SystemTime,
}

/// Who holds which leaf, as the issuance log tells.
#[derive(Debug, Default)]
pub struct Leases {
    /// Every unexpired serial, to authenticate renewals.
    by_serial: HashMap<String, Lease>,
    /// The newest leaf per (host, identity).
    latest: HashMap<(String, String), Lease>,
}

impl Leases {
    /// Replays a log file (missing: nothing issued yet). Lines that do not parse are skipped and
    /// counted in the second value.
    pub fn replay(path: &Path) -> Result<(Leases, usize), PkiError> {
        let mut leases = Leases::default();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((leases, 0)),
            Err(source) => return Err(PkiError::Read { path: path.to_owned(), source }),
        };
        let now = SystemTime::now();
        let mut bad = 0;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|source| PkiError::Read { path: path.to_owned(), source })?;
            match serde_json::from_str::<Entry>(&line) {
                Ok(e) if e.event == "issued" => {
                    let issued =
                        time::OffsetDateTime::parse(&e.time, &time::format_description::well_known::Rfc3339)
                            .map(SystemTime::from)
                            .unwrap_or(now);
                    if let (Some(identity), Some(serial), Some(na), Some(ca)) =
                        (e.identity, e.serial, e.not_after_unix, e.ca)
                    {
                        leases.record(e.host, identity, serial, from_unix(na), ca, e.bundle, issued);
                    }
                }
                Ok(_) => {}
                Err(_) => bad += 1,
            }
        }
        leases.prune(now);
        Ok((leases, bad))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        host: String,
        identity: String,
        serial: String,
        not_after: SystemTime,
        ca: String,
        bundle: Vec<String>,
        issued: SystemTime,
    ) {
        let lease = Lease { host, identity, not_after, ca, bundle, issued };
        self.latest.insert((lease.host.clone(), lease.identity.clone()), lease.clone());
        self.by_serial.insert(serial, lease);
    }

    /// Forgets expired leaves.
    pub fn prune(&mut self, now: SystemTime) {
        self.by_serial.retain(|_, l| l.not_after > now);
        self.latest.retain(|_, l| l.not_after > now);
    }

    /// The host and identity a serial was issued to, if it is still valid.
    pub fn holder(&self, serial: &str, now: SystemTime) -> Option<(&str, &str)> {
        self.by_serial
            .get(serial)
            .filter(|l| l.not_after > now)
            .map(|l| (l.host.as_str(), l.identity.as_str()))
    }

    /// Unexpired newest leaves per CA fingerprint.
    pub fn leaves_by_ca(&self, now: SystemTime) -> HashMap<String, usize> {
        let mut by = HashMap::new();
        for l in self.latest.values().filter(|l| l.not_after > now) {
            *by.entry(l.ca.clone()).or_default() += 1;
        }
        by
    }

    /// Hosts with an unexpired leaf whose newest issuance came with a bundle lacking `ca`.
    pub fn hosts_without(&self, ca: &str, now: SystemTime) -> Vec<String> {
        let mut newest: HashMap<&str, &Lease> = HashMap::new();
        for l in self.latest.values().filter(|l| l.not_after > now) {
            let e = newest.entry(l.host.as_str()).or_insert(l);
            if l.issued > e.issued {
                *e = l;
            }
        }
        let mut hosts: Vec<String> = newest
            .into_iter()
            .filter(|(_, l)| !l.bundle.iter().any(|f| f == ca))
            .map(|(h, _)| h.to_string())
            .collect();
        hosts.sort();
        hosts
    }

    /// Distinct hosts holding an unexpired leaf.
    pub fn hosts(&self, now: SystemTime) -> usize {
        self.latest
            .values()
            .filter(|l| l.not_after > now)
            .map(|l| l.host.as_str())
            .collect::<HashSet<_>>()
            .len()
    }

    /// Unexpired newest leaves of other CAs than `ca`, as (host, identity).
    pub fn leaves_not_from(&self, ca: &str, now: SystemTime) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .latest
            .values()
            .filter(|l| l.not_after > now && l.ca != ca)
            .map(|l| (l.host.clone(), l.identity.clone()))
            .collect();
        v.sort();
        v
    }
}

/// Unix seconds of `t`, for the log.
pub(crate) fn unix_of(t: SystemTime) -> u64 {
    unix(t)
}
