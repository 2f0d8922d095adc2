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
    serial: String,
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
    /// Replays a log file (missing: nothing issued yet). Lines that do not parse, or are longer
    /// than any line the service writes, are skipped and counted in the second value.
    pub fn replay(path: &Path) -> Result<(Leases, usize), PkiError> {
        let mut leases = Leases::default();
        let now = SystemTime::now();
        let mut bad = 0;
        each_line(path, |line| match line.and_then(|l| serde_json::from_slice::<Entry>(l).ok()) {
            Some(e) => leases.replay_entry(e, now),
            None => bad += 1,
        })?;
        leases.prune(now);
        Ok((leases, bad))
    }

    /// Replays the log and rewrites it keeping only what the state needs (the unexpired leaves'
    /// lines), atomically. The lines it drops that are well-formed go to `<log>.old` (appended),
    /// for audit; unreadable ones are counted and dropped. So a start never replays more than the
    /// leaves that are out.
    pub fn compact(path: &Path) -> Result<(Leases, Compacted), PkiError> {
        let now = SystemTime::now();
        let mut leases = Leases::default();
        let mut done = Compacted::default();
        let mut keep = Vec::new();
        // Lines for the archive go out a megabyte at a time: junk may be large.
        let archive = archive_path(path);
        let mut old = Vec::new();
        let mut out: Option<File> = None;
        let mut failed: Option<std::io::Error> = None;
        let flush = |old: &mut Vec<u8>, out: &mut Option<File>| -> std::io::Result<()> {
            if out.is_none() {
                *out = Some(OpenOptions::new().create(true).append(true).open(&archive)?);
            }
            if let Some(f) = out.as_mut() {
                f.write_all(old)?;
            }
            old.clear();
            Ok(())
        };
        each_line(path, |line| {
            let Some((raw, e)) = line.and_then(|l| serde_json::from_slice::<Entry>(l).ok().map(|e| (l, e)))
            else {
                done.bad += 1;
                return;
            };
            let needed = e.event == "issued" && e.not_after_unix.is_some_and(|na| from_unix(na) > now);
            let to = if needed { &mut keep } else { &mut old };
            to.extend_from_slice(raw);
            to.push(b'\n');
            if needed {
                done.kept += 1;
                leases.replay_entry(e, now);
            } else {
                done.archived += 1;
                if old.len() >= 1 << 20
                    && failed.is_none()
                    && let Err(e) = flush(&mut old, &mut out)
                {
                    failed = Some(e);
                }
            }
        })?;
        leases.prune(now);
        if done.archived + done.bad > 0 {
            let written = match failed {
                Some(e) => Err(e),
                None => flush(&mut old, &mut out).and_then(|_| out.as_ref().map_or(Ok(()), File::sync_all)),
            };
            // The log is rewritten only once what it loses is safe in the archive.
            written.map_err(|source| PkiError::Write { path: archive_path(path), source })?;
            crate::pki::files::write_atomic(path, &keep, 0o644)?;
        }
        Ok((leases, done))
    }

    fn replay_entry(&mut self, e: Entry, now: SystemTime) {
        if e.event != "issued" {
            return;
        }
        let issued = time::OffsetDateTime::parse(&e.time, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from)
            .unwrap_or(now);
        if let (Some(identity), Some(serial), Some(na), Some(ca)) =
            (e.identity, e.serial, e.not_after_unix, e.ca)
        {
            self.record(e.host, identity, serial, from_unix(na), ca, e.bundle, issued);
        }
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
        let lease = Lease { serial: serial.clone(), host, identity, not_after, ca, bundle, issued };
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

    /// The serial of the newest leaf of (`host`, `identity`): the only one that may renew. Every
    /// earlier one was consumed by the renewal or enrolment that followed it.
    pub fn current_serial(&self, host: &str, identity: &str) -> Option<&str> {
        self.latest.get(&(host.to_string(), identity.to_string())).map(|l| l.serial.as_str())
    }

    /// When `serial` was signed.
    pub fn issued_at(&self, serial: &str) -> Option<SystemTime> {
        self.by_serial.get(serial).map(|l| l.issued)
    }

    /// For a host revoked at `at` (unix seconds) that enrolled again after it: the serials of its
    /// unexpired leaves signed up to `at`. None when it has not come back.
    pub fn came_back(&self, host: &str, at: u64) -> Option<Vec<String>> {
        let mine = || self.by_serial.iter().filter(move |(_, l)| l.host == host);
        mine().any(|(_, l)| unix(l.issued) > at).then(|| {
            let mut old: Vec<String> =
                mine().filter(|(_, l)| unix(l.issued) <= at).map(|(s, _)| s.clone()).collect();
            old.sort();
            old
        })
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

/// What [`Leases::compact`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Lines kept (unexpired leaves).
    pub kept: usize,
    /// Well-formed lines moved to the archive (refusals, expired leaves).
    pub archived: usize,
    /// Lines dropped as unreadable or too long.
    pub bad: usize,
}

/// Where compaction puts the lines it takes out of the log.
pub fn archive_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".old");
    log.with_file_name(name)
}

/// The longest line the service writes is well under this; a longer one is junk.
const MAX_LINE: usize = 16 * 1024;

/// Calls `f` with each line of `path` (without its newline), or None for a line longer than
/// [`MAX_LINE`], which is skipped without being held in memory. A missing file has no lines.
fn each_line(path: &Path, mut f: impl FnMut(Option<&[u8]>)) -> Result<(), PkiError> {
    use std::io::Read;
    let io = |source| PkiError::Read { path: path.to_owned(), source };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io(source)),
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).map_err(io)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if !buf.is_empty() {
                f(Some(&buf));
            }
        } else if n > MAX_LINE {
            // Skip the rest of the line.
            loop {
                buf.clear();
                let m = (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut buf).map_err(io)?;
                if m == 0 || buf.last() == Some(&b'\n') {
                    break;
                }
            }
            f(None);
        } else {
            f(Some(&buf));
        }
    }
}

/// Unix seconds of `t`, for the log.
pub(crate) fn unix_of(t: SystemTime) -> u64 {
    unix(t)
}
