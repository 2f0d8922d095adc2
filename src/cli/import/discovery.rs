//! Caller names for imported log lines, from a discovery snapshot (Synapse's `file_output`
//! directory): the service at an address, and the services whose backends a host name is.
//! Reading the directory is `cordon_discovery`'s job; this only indexes what it returns.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use cordon_discovery::{Snapshot, load_dir};

/// Discovery as the importer asks it; empty without `--discovery`.
#[derive(Default)]
pub(super) struct DiscoveryNames {
    snapshot: Option<Snapshot>,
    /// A backend's `host`, `name` and the host part of a `host:port` name -> the services it is a backend of, sorted.
    by_host: HashMap<String, Vec<String>>,
}

impl DiscoveryNames {
    /// Reads `dir` once; refused files are shown on stderr and their services left out.
    pub(super) fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let Some(dir) = dir else { return Ok(Self::default()) };
        let snapshot = load_dir(dir).with_context(|| format!("--discovery {}", dir.display()))?;
        let mut stderr = std::io::stderr().lock();
        for problem in snapshot.problems() {
            writeln!(
                stderr,
                "{}",
                crate::logging::command_line("WARN", &format!("warning: discovery: {problem}"))
            )?;
        }
        let mut by_host: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (service, backends) in snapshot.services() {
            for b in backends {
                // Synapse often names a backend `host:port`: the host part names it too.
                let name = b.name.as_deref();
                let short = name.and_then(|n| n.split_once(':')).map(|(h, _)| h);
                for key in [Some(b.host.as_str()), name, short].into_iter().flatten() {
                    by_host.entry(key.to_string()).or_default().insert(service.to_string());
                }
            }
        }
        let by_host = by_host.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect();
        Ok(Self { snapshot: Some(snapshot), by_host })
    }

    /// The one service with a backend at `ip`; none when several share the address (as the
    /// inbound proxy names plaintext callers).
    pub(super) fn service_at(&self, ip: IpAddr) -> Option<String> {
        self.snapshot.as_ref()?.service_at(ip).map(str::to_owned)
    }

    /// The services a host (a syslog host name or address) is a backend of.
    pub(super) fn services_of_host(&self, host: &str) -> Vec<String> {
        self.by_host.get(host).cloned().unwrap_or_default()
    }
}
