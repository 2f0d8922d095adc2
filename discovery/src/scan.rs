//! Reading the whole discovery directory, with a last-good cache per service.
//!
//! Owns which files count (`<service>.json`, not dotfiles such as Synapse's `.<service>.json.tmp`),
//! the size limits, and the rule that a refused file keeps its service's last good backends while
//! a removed file removes the service. It does blocking file reads, so it runs on the watcher's
//! own thread or in one-shot tools, never on the async data plane. It must not log (the caller
//! decides what is news) or know about notify or channels.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::parse_backends;
use crate::{Backend, DiscoveryError, FileProblem};

/// Service files larger than this are refused (Synapse's files are a few KiB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// At most this many service files are read per scan; any beyond it keep their last good state.
pub const MAX_SERVICE_FILES: usize = 20_000;

/// The result of one scan: the services to publish and the files refused.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Every service with a file, each with fresh backends or, when refused, its last good ones.
    pub services: BTreeMap<String, Arc<[Backend]>>,
    /// Files refused this time.
    pub problems: Vec<FileProblem>,
}

/// Scans one directory again and again, remembering each service's last good backends.
#[derive(Debug)]
pub(crate) struct Scanner {
    /// The directory Synapse writes into.
    dir: PathBuf,
    /// The backends from each service's last file that parsed; dropped when the file goes away.
    last_good: BTreeMap<String, Arc<[Backend]>>,
}

impl Scanner {
    pub fn new(dir: &Path) -> Scanner {
        Scanner { dir: dir.to_path_buf(), last_good: BTreeMap::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every service file. Fails only when the directory itself cannot be listed; a bad
    /// file becomes a problem and its service keeps its last good backends (or stays absent).
    pub fn scan(&mut self) -> Result<Scan, DiscoveryError> {
        let read_dir_err = |source| DiscoveryError::ReadDir { dir: self.dir.clone(), source };
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut problems = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(read_dir_err)? {
            let entry = entry.map_err(read_dir_err)?;
            let file_name = entry.file_name();
            match service_name(&file_name) {
                Some(Ok(service)) => files.push((service.to_string(), entry.path())),
                Some(Err(())) => problems.push(FileProblem {
                    file: entry.path(),
                    message: "file name is not valid UTF-8; ignored".to_string(),
                }),
                None => {}
            }
        }
        files.sort();
        if files.len() > MAX_SERVICE_FILES {
            problems.push(FileProblem {
                file: self.dir.clone(),
                message: format!(
                    "{} service files, more than the {MAX_SERVICE_FILES} read per scan; \
                     services after {:?} keep their last good backends",
                    files.len(),
                    files[MAX_SERVICE_FILES - 1].0
                ),
            });
        }

        let present: BTreeSet<&str> = files.iter().map(|(s, _)| s.as_str()).collect();
        self.last_good.retain(|service, _| present.contains(service.as_str()));

        let mut services = BTreeMap::new();
        for (index, (service, path)) in files.iter().enumerate() {
            let parsed = if index < MAX_SERVICE_FILES { Some(read_service(path)) } else { None };
            match parsed {
                Some(Ok(backends)) => {
                    let backends: Arc<[Backend]> = backends.into();
                    self.last_good.insert(service.clone(), backends.clone());
                    services.insert(service.clone(), backends);
                }
                refused => {
                    if let Some(Err(message)) = refused {
                        problems.push(FileProblem { file: path.clone(), message });
                    }
                    if let Some(good) = self.last_good.get(service) {
                        services.insert(service.clone(), good.clone());
                    }
                }
            }
        }
        Ok(Scan { services, problems })
    }
}

/// The service a directory entry describes: `None` for files that are not service files
/// (dotfiles such as `.web.json.tmp`, other extensions), `Some(Err)` for a non-UTF-8 `*.json`.
fn service_name(file_name: &OsStr) -> Option<Result<&str, ()>> {
    let bytes = file_name.as_encoded_bytes();
    if bytes.starts_with(b".") || !bytes.ends_with(b".json") || bytes.len() == ".json".len() {
        return None;
    }
    Some(file_name.to_str().and_then(|name| name.strip_suffix(".json")).ok_or(()))
}

/// Reads and parses one service file, bounded by [`MAX_FILE_BYTES`].
fn read_service(path: &Path) -> Result<Vec<Backend>, String> {
    // Checked before opening: opening a FIFO someone left here would block the scan.
    let meta = fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file; ignored".to_string());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len()));
    }
    let file = fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the stat and the read: read one byte past the limit to notice.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    parse_backends(&bytes).map_err(|e| format!("not a valid Synapse backend list: {e}"))
}

fn too_big(len: u64) -> String {
    format!("file is {len} bytes or more, larger than the {MAX_FILE_BYTES} bytes cordon reads; ignored")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_names_are_service_files() {
        let name = |s: &str| service_name(OsStr::new(s)).map(|r| r.map(str::to_string));
        assert_eq!(name("web.json"), Some(Ok("web".to_string())));
        assert_eq!(name("batch.nightly.json"), Some(Ok("batch.nightly".to_string())));
        for ignored in [".web.json.tmp", ".web.json", "web.json.tmp", "web.yaml", "web", ".json", "README"] {
            assert_eq!(name(ignored), None, "{ignored}");
        }
    }
}
