//! cordon's view of SmartStack service discovery: the files Synapse's `file_output` writes.
//!
//! The only code in cordon that knows the Synapse/Nerve file formats. It reads a directory of
//! `<service>.json` files (each a JSON array of backends), reads the Nerve label
//! `cordon_mtls_port` that marks a backend running cordon, keeps each service's last good backends
//! when its file is malformed, and publishes immutable [`Snapshot`]s (backends by service, services
//! by IP) to the data plane. It never writes the discovery directory and never resolves names.
//!
//! - [`load_dir`]: one read, for tools and tests.
//! - [`Watcher::start`]: watch the directory and publish each change on a tokio `watch` channel.
#![forbid(unsafe_code)]

mod backend;
mod error;
pub(crate) mod scan;
mod snapshot;
mod watch;

use std::path::Path;

pub use backend::{Backend, MTLS_PORT_LABEL, parse_backends};
pub use error::DiscoveryError;
pub use scan::{MAX_FILE_BYTES, MAX_SERVICE_FILES};
pub use snapshot::{FileProblem, Snapshot};
pub use watch::{DEFAULT_MAX_DELAY, DEFAULT_RESCAN_EVERY, WatchOptions, WatchStats, Watcher};

/// Reads the discovery directory once. A directory that cannot be listed is an error naming it;
/// a bad file becomes one of the snapshot's [`Snapshot::problems`] and its service is left out.
/// Blocking: call it from a tool or a blocking thread, not from async code.
pub fn load_dir(dir: &Path) -> Result<Snapshot, DiscoveryError> {
    let scan = scan::Scanner::new(dir).scan()?;
    Ok(Snapshot::new(dir.to_path_buf(), scan.services, scan.problems, 1))
}
