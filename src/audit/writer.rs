//! The append-only writer: the log is opened once, before the command changes anything, with
//! `O_APPEND` (every line lands at the end, whoever else appends), `O_NOFOLLOW` (a symlink
//! planted where the log should be is refused, not followed), created 0600 when missing. Each
//! record is one `write` of one line, then `fsync`, before the command reports success.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{AuditFormat, Record, ocsf};

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The path is a symbolic link: refused, since it could point anywhere.
    #[error("{0}: the audit log is a symbolic link; refusing to follow it")]
    Symlink(PathBuf),
    /// The path is not a regular file (a directory, a FIFO, a device).
    #[error("{0}: the audit log is not a regular file")]
    NotAFile(PathBuf),
    /// It could not be opened (missing directory, permissions).
    #[error("{path}: cannot open the audit log: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    /// A record could not be written or synced.
    #[error("{path}: cannot write the audit record: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    format: AuditFormat,
    /// One writer at a time, so a line is written whole before the next.
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (or creates, 0600) the log at `path` for appending.
    pub fn open(path: &Path, format: AuditFormat) -> Result<AuditLog, AuditError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ELOOP) => AuditError::Symlink(path.to_owned()),
                _ => AuditError::Open { path: path.to_owned(), source },
            })?;
        let kind =
            file.metadata().map_err(|source| AuditError::Open { path: path.to_owned(), source })?.file_type();
        // O_NONBLOCK above keeps a FIFO from hanging the open; a FIFO or device is refused here.
        if !kind.is_file() || kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
            return Err(AuditError::NotAFile(path.to_owned()));
        }
        Ok(AuditLog { path: path.to_owned(), format, file: Mutex::new(file) })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The encoding it writes.
    pub fn format(&self) -> AuditFormat {
        self.format
    }

    /// Appends one record as one line and syncs it to disk.
    pub fn append(&self, record: &Record) -> Result<(), AuditError> {
        let encoded = match self.format {
            AuditFormat::Cordon => serde_json::to_vec(record),
            AuditFormat::Ocsf => serde_json::to_vec(&ocsf::event(record)),
        };
        let mut line =
            encoded.map_err(|e| AuditError::Write { path: self.path.clone(), source: e.into() })?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let write = |f: &mut File| -> std::io::Result<()> {
            f.write_all(&line)?;
            f.sync_data()
        };
        write(&mut file).map_err(|source| AuditError::Write { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_0600_appends_lines_and_refuses_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, AuditFormat::Cordon).expect("opens");
        let r = Record::revocation(dir.path(), Some("web-3"), None, None);
        log.append(&r).expect("appends");
        log.append(&r).expect("appends");
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("reads").lines().count(), 2);

        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let err = AuditLog::open(&link, AuditFormat::Cordon).expect_err("a symlink is refused");
        assert!(matches!(err, AuditError::Symlink(_)), "{err}");
        assert!(matches!(
            AuditLog::open(dir.path(), AuditFormat::Cordon),
            Err(AuditError::Open { .. } | AuditError::NotAFile(_))
        ));
    }
}
