//! What the writer does when the ledger itself fails: a damaged ledger is moved aside so a fresh
//! one can take the records, and counters that could not be written at a clean stop are kept in a
//! side ledger, which the next start adds into the ledger beside it.
//!
//! Owns the names of those side files (`ledger.db.damaged-<time>`, `ledger.db.unwritten-<time>`).
//! Must not be used by the data plane: every function here does blocking file I/O.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::LedgerError;
use super::schema;

/// Marks the file names of counters kept at a stop that could not write them.
const UNWRITTEN: &str = ".unwritten-";

/// `ledger.db` -> `ledger.db<infix><UTC time>`, unique within the directory.
fn side_name(path: &Path, infix: &str) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    let name =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ledger.db".into());
    let base = path.with_file_name(format!("{name}{infix}{stamp}"));
    let mut candidate = base.clone();
    for n in 1..1000 {
        if !candidate.exists() {
            break;
        }
        candidate = PathBuf::from(format!("{}.{n}", base.display()));
    }
    candidate
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Moves a damaged ledger (and its write-ahead log) aside as `ledger.db.damaged-<time>`, so a
/// fresh ledger can be created in its place. Returns the new name.
pub(super) fn set_aside(path: &Path) -> Result<PathBuf, LedgerError> {
    let aside = side_name(path, ".damaged-");
    let err = |source| LedgerError::SetAside { path: path.to_owned(), source };
    std::fs::rename(path, &aside).map_err(err)?;
    let wal = with_suffix(path, "-wal");
    if wal.exists() {
        std::fs::rename(&wal, with_suffix(&aside, "-wal")).map_err(err)?;
    }
    // The shared-memory index is rebuilt from the log; a stale one must not meet the fresh file.
    let _ = std::fs::remove_file(with_suffix(path, "-shm"));
    Ok(aside)
}

/// Where counters that could not be written to `ledger` are kept: beside it first, else in the
/// temporary directory (the ledger's disk may be the full one).
pub(super) fn unwritten_candidates(ledger: &Path, host: &str) -> Vec<PathBuf> {
    let beside = with_suffix(&side_name(ledger, UNWRITTEN), ".db");
    let file = beside.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let host = host.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "_");
    vec![beside.clone(), std::env::temp_dir().join(format!("cordon-{host}-{file}"))]
}

/// Creates a side ledger at `path` and writes into it with `write`.
pub(super) fn keep(
    path: &Path,
    host: &str,
    write: impl FnOnce(&mut Connection) -> rusqlite::Result<()>,
) -> Result<(), String> {
    let result = (|| {
        let mut conn =
            schema::open_write(path, host, Duration::from_millis(100)).map_err(|e| e.to_string())?;
        write(&mut conn).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        // Half a side ledger would be adopted as if it were whole: leave nothing.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(path, suffix));
        }
    }
    result
}

/// Side ledgers of counters a previous stop could not write, beside `ledger`, oldest first.
pub(super) fn unwritten_beside(ledger: &Path) -> Vec<PathBuf> {
    let Some(name) = ledger.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Vec::new() };
    let prefix = format!("{name}{UNWRITTEN}");
    let dir = match ledger.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".db"))
        })
        .collect();
    found.sort();
    found
}

/// Removes a side ledger once its counters are in the ledger.
pub(super) fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(path, suffix));
    }
}
