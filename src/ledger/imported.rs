//! The import bookkeeping: which file prefixes `cordon import haproxy-log` has already put into
//! this ledger, so that importing a file again adds only the lines appended since.
//!
//! A prefix is a file's first `len` bytes, ending with a newline, known by their SHA-256 and the
//! number of lines in them. The recorder writes a prefix in the same transaction as the last
//! events read from it, never before them ([`super::RecorderHandle::mark_imported`]);
//! `cordon merge` copies the prefixes of its inputs into its output. Reading and hashing files is
//! the importer's business, not this module's.

use std::path::Path;
use std::time::SystemTime;

use rusqlite::types::ValueRef;

use super::LedgerError;
use super::check;
use super::read::from_ms;
use super::recorder::unix_ms;
use super::schema::{self, IMPORTED_TABLE, classify};

/// A file prefix that is in the ledger: every line of it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedPrefix {
    /// SHA-256 of the file's first `len` bytes.
    pub sha256: [u8; 32],
    /// Bytes from the start of the file through the newline of the last line imported.
    pub len: u64,
    /// Lines in those bytes.
    pub lines: u64,
    /// The name the file was imported under, for people reading the table.
    pub file: String,
    /// When it was imported.
    pub imported_at: SystemTime,
}

/// Adds a prefix; a prefix already there keeps the earliest import (and its file name), so the
/// result does not depend on the order prefixes arrive in (`cordon merge` relies on it).
pub(crate) const INSERT: &str = "INSERT INTO imported_prefix (len, sha256, lines, file, imported_at)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT DO UPDATE SET
        file = CASE WHEN excluded.imported_at < imported_at
                      OR (excluded.imported_at = imported_at AND excluded.file < file)
                    THEN excluded.file ELSE file END,
        imported_at = min(imported_at, excluded.imported_at)";

/// The parameters of [`INSERT`] for `prefix`.
pub(crate) fn insert_params(prefix: &ImportedPrefix) -> [rusqlite::types::Value; 5] {
    use rusqlite::types::Value;
    [
        Value::Integer(clamp(prefix.len)),
        Value::Blob(prefix.sha256.to_vec()),
        Value::Integer(clamp(prefix.lines)),
        Value::Text(prefix.file.clone()),
        Value::Integer(unix_ms(prefix.imported_at)),
    ]
}

/// Every prefix recorded in `db` that is at most `max_len` bytes long, shortest first. A ledger
/// from before version 3 has none.
pub fn imported_prefixes(db: &Path, max_len: u64) -> Result<Vec<ImportedPrefix>, LedgerError> {
    let opened = schema::open_read(db)?;
    if opened.version < 3 {
        return Ok(Vec::new());
    }
    let err = |e| classify(db, "read the import bookkeeping", e);
    let mut stmt = opened
        .conn
        .prepare(
            "SELECT len, sha256, lines, file, imported_at FROM imported_prefix
             WHERE len <= ?1 ORDER BY len, sha256",
        )
        .map_err(err)?;
    let mut rows = stmt.query([clamp(max_len)]).map_err(err)?;
    let bad = |column: &'static str, value: String| LedgerError::BadRow {
        path: db.to_owned(),
        table: IMPORTED_TABLE,
        column,
        value,
    };
    let mut prefixes = Vec::new();
    let mut number = 0;
    while let Some(row) = rows.next().map_err(err)? {
        number += 1;
        let at = check::At { path: db, table: IMPORTED_TABLE, row: number };
        check::row(at, &["len", "sha256", "lines", "file", "imported_at"], row, 0)?;
        let sha256 = match row.get_ref(1).map_err(err)? {
            ValueRef::Blob(b) => {
                <[u8; 32]>::try_from(b).map_err(|_| bad("sha256", format!("{} bytes", b.len())))?
            }
            other => return Err(bad("sha256", format!("{:?}", other.data_type()))),
        };
        let count = |i: usize, column: &'static str| -> Result<u64, LedgerError> {
            let v: i64 = row.get(i).map_err(err)?;
            u64::try_from(v).map_err(|_| bad(column, v.to_string()))
        };
        prefixes.push(ImportedPrefix {
            sha256,
            len: count(0, "len")?,
            lines: count(2, "lines")?,
            file: row.get(3).map_err(err)?,
            imported_at: from_ms(row.get(4).map_err(err)?),
        });
    }
    Ok(prefixes)
}

/// SQLite integers are signed 64-bit.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
