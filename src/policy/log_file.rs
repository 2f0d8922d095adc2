//! The decision log's file: appended to, and reopened when rotated (see [`super::log`]).
//!
//! Runs on the decision log's writer thread only. Reopens the path when asked (SIGHUP, SIGUSR1)
//! and by itself when the path no longer names the open file (device and inode, checked at least
//! once a [`ROTATION_CHECK`]); what is buffered goes to the file open before the switch, so a
//! rotated file keeps its records.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::PolicyError;

/// How often the writer checks that the path still names the file it writes.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// A file's device and inode: what the path must still name for the writer to keep its file.
type FileId = (u64, u64);

/// Opens `path` for appending (created if missing) and reads which file it is.
fn open_append(path: &Path) -> std::io::Result<(std::fs::File, FileId)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

/// A file the writer appends to, reopened when rotated.
pub(super) struct FileSink {
    out: BufWriter<std::fs::File>,
    /// The open file's identity, compared with the path's at most every [`ROTATION_CHECK`].
    id: FileId,
    checked: Instant,
    path: PathBuf,
}

impl FileSink {
    pub(super) fn open(path: &Path) -> Result<FileSink, PolicyError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| PolicyError::Write { path: dir.to_owned(), message: e.to_string() })?;
        }
        let (file, id) = open_append(path)
            .map_err(|e| PolicyError::Write { path: path.to_owned(), message: e.to_string() })?;
        Ok(FileSink { out: BufWriter::new(file), id, checked: Instant::now(), path: path.to_owned() })
    }

    /// Reopens the path when it no longer names the open file (checked once a [`ROTATION_CHECK`]).
    pub(super) fn check_rotation(&mut self) {
        if self.checked.elapsed() >= ROTATION_CHECK {
            self.checked = Instant::now();
            let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino())).ok();
            if current != Some(self.id) {
                self.reopen();
            }
        }
    }

    /// Flushes what is buffered into the file open now (a rotated file keeps its records), then
    /// opens the path again. If that fails the writer keeps its file and tries again later.
    pub(super) fn reopen(&mut self) {
        self.flush();
        match open_append(&self.path) {
            Ok((file, id)) => {
                if id != self.id {
                    info!(path = %self.path.display(), "decision log reopened");
                }
                self.out = BufWriter::new(file);
                self.id = id;
            }
            Err(e) => {
                error!(path = %self.path.display(), error = %e, "cannot reopen the decision log; writing to the old file")
            }
        }
        self.checked = Instant::now();
    }

    pub(super) fn write_line(&mut self, line: &[u8]) {
        let res = self.out.write_all(line).and_then(|_| self.out.write_all(b"\n"));
        if let Err(e) = res {
            error!(path = %self.path.display(), error = %e, "decision log write failed");
        }
    }

    pub(super) fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            error!(path = %self.path.display(), error = %e, "decision log flush failed");
        }
    }
}
