//! The immutable view of the discovery directory that the data plane reads.
//!
//! Owns the lookups (backends by service, services by IP) and the list of refused files. It is
//! built once per change and shared as `Arc<Snapshot>`; it must not change after it is built, read
//! files or know the JSON format.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::Backend;

/// A file cordon refused on the last scan, and why. Its service keeps its last good backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileProblem {
    /// The refused file (or the directory itself, when it could not be read on a rescan).
    pub file: PathBuf,
    /// What is wrong, with serde_json's line and column for malformed JSON.
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// Every service in the discovery directory with its backends, at one point in time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The directory this was read from, for messages.
    dir: PathBuf,
    /// Backends per service, sorted by service name; lists are shared with the last-good cache.
    services: BTreeMap<String, Arc<[Backend]>>,
    /// Services with a backend on each IP (canonical form), each list sorted and deduplicated.
    by_ip: HashMap<IpAddr, Vec<String>>,
    /// Files refused on the last scan, sorted by path.
    problems: Vec<FileProblem>,
    /// Counts publications, so readers can tell snapshots apart cheaply.
    generation: u64,
}

impl Snapshot {
    /// Builds a snapshot and its IP index.
    pub(crate) fn new(
        dir: PathBuf,
        services: BTreeMap<String, Arc<[Backend]>>,
        mut problems: Vec<FileProblem>,
        generation: u64,
    ) -> Snapshot {
        let mut by_ip: HashMap<IpAddr, Vec<String>> = HashMap::new();
        // BTreeMap order makes each list sorted; a service is pushed at most once per IP.
        for (service, backends) in &services {
            for ip in backends.iter().filter_map(Backend::ip) {
                let list = by_ip.entry(ip.to_canonical()).or_default();
                if list.last() != Some(service) {
                    list.push(service.clone());
                }
            }
        }
        problems.sort_by(|a, b| a.file.cmp(&b.file));
        Snapshot { dir, services, by_ip, problems, generation }
    }

    /// A snapshot built in memory (generation 1, no problems), for code that takes snapshots
    /// and wants to be tested without a directory.
    pub fn from_services(services: impl IntoIterator<Item = (String, Vec<Backend>)>) -> Snapshot {
        let services = services.into_iter().map(|(name, backends)| (name, backends.into())).collect();
        Snapshot::new(PathBuf::new(), services, Vec::new(), 1)
    }

    /// The backends of `service`; an empty slice when the service is unknown.
    pub fn backends(&self, service: &str) -> &[Backend] {
        self.services.get(service).map_or(&[], |b| b)
    }

    /// True when the directory has a file for `service` (possibly with no backends in it).
    pub fn contains(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// Every service with its backends, sorted by name.
    pub fn services(&self) -> impl Iterator<Item = (&str, &[Backend])> {
        self.services.iter().map(|(name, backends)| (name.as_str(), &**backends))
    }

    /// How many services the snapshot holds.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The services with a backend on `ip` (IPv4-mapped IPv6 addresses match their IPv4 form),
    /// sorted; used to name plaintext callers. Host names are not resolved.
    pub fn services_at(&self, ip: IpAddr) -> &[String] {
        self.by_ip.get(&ip.to_canonical()).map_or(&[], Vec::as_slice)
    }

    /// The one service with a backend on `ip`: the name a plaintext caller from there is given.
    /// `None` when no service, or several, have a backend there: a host that runs several
    /// services cannot tell which of them called, and naming it after one would record (and
    /// later propose) an edge that may be another's.
    pub fn service_at(&self, ip: IpAddr) -> Option<&str> {
        match self.services_at(ip) {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Increases by one on every published change; 1 for the first snapshot.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The files refused on the last scan (path and message), sorted by path.
    pub fn problems(&self) -> &[FileProblem] {
        &self.problems
    }

    /// The directory the snapshot was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The services as a map, for building the next snapshot.
    pub(crate) fn service_map(&self) -> &BTreeMap<String, Arc<[Backend]>> {
        &self.services
    }

    /// True when `services` and `problems` say the same as this snapshot (generation aside).
    pub(crate) fn same_as(
        &self,
        services: &BTreeMap<String, Arc<[Backend]>>,
        problems: &[FileProblem],
    ) -> bool {
        let mut sorted = problems.to_vec();
        sorted.sort_by(|a, b| a.file.cmp(&b.file));
        self.problems == sorted
            && self.services.len() == services.len()
            && self
                .services
                .iter()
                .zip(services)
                .all(|((an, ab), (bn, bb))| an == bn && (Arc::ptr_eq(ab, bb) || ab == bb))
    }
}
