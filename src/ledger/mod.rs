//! The ledger: who talked to whom, durable in SQLite (`ledger.db`).
//!
//! Owns the `ledger.db` format and every SQL statement that touches it: the schema and its
//! migrations ([`schema`]), the writer thread ([`Recorder`]), the read queries the review commands
//! and the `cordon mode` preflight use, `cordon merge`, and the record of what
//! `cordon import haproxy-log` has imported ([`imported_prefixes`]), and the upstreams each
//! caller declared ([`declarations`]).
//!
//! The data plane only ever calls [`RecorderHandle::record`], which never blocks; one writer
//! thread owns the SQLite connection, aggregates events in memory into hourly per-edge counters
//! and writes one transaction per flush interval. It must not be called from async code for
//! anything else: every other function here does blocking file I/O.

mod check;
mod declared;
mod event;
mod imported;
mod merge;
mod read;
mod recorder;
mod rescue;
mod salvage;
pub mod schema;
pub mod spool;

pub use check::{FUTURE_SKEW, MAX_COUNT, valid_host};
pub use declared::{Declaration, DeclarationOrigin, declarations, record_declaration};
pub use event::{EdgeKey, Event};
pub use imported::{ImportedPrefix, imported_prefixes};
pub use merge::{MergeStats, merge};
pub(crate) use read::from_ms;
pub use read::{EdgeTotals, ObservedCaller, callers_into, edge_totals};
pub(crate) use recorder::unix_ms;
pub use recorder::{MAX_PENDING_KEYS, Recorder, RecorderHandle, RecorderStats, Unwritten};

use std::path::PathBuf;

/// Why the ledger could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The file (or its directory) could not be opened or created.
    #[error("{}: cannot open the ledger: {source}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    /// A ledger to read does not exist.
    #[error("{}: no such ledger", path.display())]
    Missing { path: PathBuf },
    /// The file is not an SQLite database, or SQLite found it damaged.
    #[error("{}: not a cordon ledger: the file is not an SQLite database or is corrupt ({detail})", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// The file is an SQLite database that cordon did not create.
    #[error("{}: not a cordon ledger: it is an SQLite database with other tables ({})", path.display(), tables.join(", "))]
    Foreign { path: PathBuf, tables: Vec<String> },
    /// SQLite opened the file, but its integrity check (`PRAGMA quick_check`) found damaged pages:
    /// every write to it would fail. The recorder moves such a ledger aside and starts afresh.
    #[error("{}: the ledger is damaged ({detail})", path.display())]
    Damaged { path: PathBuf, detail: String },
    /// A damaged ledger could not be moved aside to start a fresh one.
    #[error("{}: the ledger is damaged and could not be moved aside: {source}", path.display())]
    SetAside { path: PathBuf, source: std::io::Error },
    /// The file was written by a newer cordon with a schema this one does not know.
    #[error("{}: ledger schema version {found} is newer than this cordon understands (up to {supported}); upgrade cordon", path.display())]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    /// SQLite refused an operation on an opened ledger.
    #[error("{}: {what}: {source}", path.display())]
    Sqlite { path: PathBuf, what: &'static str, source: rusqlite::Error },
    /// A row holds a value cordon never writes (the file was edited by hand).
    #[error("{}: unexpected {column} {value:?} in table {table}", path.display())]
    BadRow { path: PathBuf, table: &'static str, column: &'static str, value: String },
    /// The file's schema holds what a cordon ledger never does (a view, a trigger cordon did not
    /// install, a foreign index): refused before any query runs.
    #[error("{}: refused: {why}; nothing was read from it", path.display())]
    Hostile { path: PathBuf, why: String },
    /// A value in a row breaks the ledger's rules (type, range, name): the file is refused.
    #[error("{}: table {table}, row {row}, column {column}: {why}; the file is refused and nothing from it was written", path.display())]
    BadValue { path: PathBuf, table: &'static str, row: u64, column: String, why: String },
    /// The writer thread could not be spawned.
    #[error("cannot start the ledger writer thread: {0}")]
    Thread(std::io::Error),
    /// `cordon merge` was asked to write into one of its inputs.
    #[error("{}: the output of a merge cannot also be one of its inputs", path.display())]
    OutputIsInput { path: PathBuf },
}
