//! Errors that stop discovery from starting at all.
//!
//! A bad service file is not one of these: it becomes a [`crate::FileProblem`] in the snapshot,
//! because one broken file must never take the other services down. Messages name the directory;
//! the operating system's reason is the error's `source()` (anyhow's `{:#}` prints both).

use std::path::PathBuf;

/// Why discovery could not read or watch its directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The discovery directory could not be listed (missing, not a directory, no permission).
    #[error("cannot read discovery directory {}", dir.display())]
    ReadDir {
        /// The directory that was asked for.
        dir: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file system watch on the discovery directory could not be set up.
    #[error("cannot watch discovery directory {}", dir.display())]
    Watch {
        /// The directory that was asked for.
        dir: PathBuf,
        /// What the watcher backend said.
        #[source]
        source: notify::Error,
    },
    /// The background thread that rescans the directory could not be started.
    #[error("cannot start the discovery watcher thread")]
    Thread(#[source] std::io::Error),
}
