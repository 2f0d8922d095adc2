//! The `ledger.db` schema, its version in `PRAGMA user_version`, and the migrations.
//!
//! Version 2 (current) keeps one row per host, hour and edge:
//!
//! ```sql
//! CREATE TABLE edge_hour (
//!     host TEXT NOT NULL, hour INTEGER NOT NULL,          -- hour = unix seconds / 3600
//!     source TEXT NOT NULL, destination TEXT NOT NULL,
//!     identified TEXT NOT NULL,                           -- mtls | plaintext-ip | unknown | haproxy-log
//!     mode TEXT NOT NULL, verdict TEXT NOT NULL,          -- learn | enforce, allow | deny
//!     connections INTEGER NOT NULL, bytes_to_destination INTEGER NOT NULL,
//!     bytes_to_source INTEGER NOT NULL,
//!     first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,   -- unix milliseconds
//!     PRIMARY KEY (host, hour, source, destination, identified, mode, verdict)
//! ) WITHOUT ROWID;
//! ```
//!
//! Version 1 had the same table without `host`; opening it for writing migrates it, naming its
//! rows after the recording host. Readers accept version 1 as is (its rows have host `""`).
//! Anything else (tables cordon did not create, a version from the future, a file that is not
//! SQLite) is refused with an error naming the file; nothing in it is touched.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::LedgerError;

/// The schema version this cordon writes.
pub const CURRENT_VERSION: i64 = 2;
/// The one table of every version.
const TABLE: &str = "edge_hour";
/// How long any ledger connection waits for a lock before giving up. Readers in WAL mode never
/// block the writer; this only covers checkpoints and a concurrent `cordon merge`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const CREATE_V1: &str = "CREATE TABLE edge_hour (
    hour INTEGER NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    identified TEXT NOT NULL,
    mode TEXT NOT NULL,
    verdict TEXT NOT NULL,
    connections INTEGER NOT NULL,
    bytes_to_destination INTEGER NOT NULL,
    bytes_to_source INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (hour, source, destination, identified, mode, verdict)
) WITHOUT ROWID";

const CREATE_V2: &str = "CREATE TABLE edge_hour (
    host TEXT NOT NULL,
    hour INTEGER NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    identified TEXT NOT NULL,
    mode TEXT NOT NULL,
    verdict TEXT NOT NULL,
    connections INTEGER NOT NULL,
    bytes_to_destination INTEGER NOT NULL,
    bytes_to_source INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (host, hour, source, destination, identified, mode, verdict)
) WITHOUT ROWID";

/// Creates a version-1 ledger: only for tests of the migration path.
#[doc(hidden)]
pub fn create_v1_for_tests(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CREATE_V1)?;
    conn.pragma_update(None, "user_version", 1)
}

/// An opened ledger and the schema version it has.
pub(crate) struct Opened {
    pub conn: Connection,
    pub version: i64,
}

/// Opens `path` for writing: creates it when missing or empty, migrates an older version and
/// refuses a foreign or corrupt file. `host` names the rows a version-1 ledger already holds.
/// `busy` is how long a write waits for another writer's lock (a `cordon merge` into the same
/// file) before it fails and is retried later.
pub(crate) fn open_write(path: &Path, host: &str, busy: Duration) -> Result<Connection, LedgerError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| LedgerError::Open { path: path.to_owned(), source })?;
    let sql = |what: &'static str| move |source| classify(path, what, source);
    conn.busy_timeout(busy).map_err(sql("set busy timeout"))?;
    let version = check(&conn, path)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        .map_err(sql("switch to WAL"))?;
    // NORMAL in WAL mode survives a crash of the process (kill -9) without losing a committed
    // batch; only an OS crash or power loss can drop the last batches.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql("set synchronous"))?;
    match version {
        0 => conn.execute_batch(&format!("BEGIN; {CREATE_V2}; PRAGMA user_version = 2; COMMIT;")),
        1 => migrate_v1(&conn, host),
        _ => Ok(()),
    }
    .map_err(sql("create or migrate the schema"))?;
    Ok(conn)
}

/// Opens `path` read-only, validating it; the agent may be writing it at the same time.
pub(crate) fn open_read(path: &Path) -> Result<Opened, LedgerError> {
    if !path.exists() {
        return Err(LedgerError::Missing { path: path.to_owned() });
    }
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|source| LedgerError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| classify(path, "set busy timeout", e))?;
    // Version 0 is an empty file: nothing recorded yet, and every query returns nothing.
    let version = check(&conn, path)?;
    Ok(Opened { conn, version })
}

/// Reads the version and refuses what cordon did not write. Returns 0 for an empty file.
fn check(conn: &Connection, path: &Path) -> Result<i64, LedgerError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| classify(path, "read the schema version", e))?;
    let tables = user_tables(conn).map_err(|e| classify(path, "list tables", e))?;
    let foreign: Vec<String> = tables.iter().filter(|t| *t != TABLE).cloned().collect();
    if !foreign.is_empty() || (version == 0 && !tables.is_empty()) {
        return Err(LedgerError::Foreign { path: path.to_owned(), tables });
    }
    if !(0..=CURRENT_VERSION).contains(&version) {
        return Err(LedgerError::TooNew {
            path: path.to_owned(),
            found: version,
            supported: CURRENT_VERSION,
        });
    }
    if version > 0 && tables.is_empty() {
        return Err(LedgerError::Foreign {
            path: path.to_owned(),
            tables: vec![format!("user_version {version} without tables")],
        });
    }
    Ok(version)
}

fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    stmt.query_map([], |row| row.get(0))?.collect()
}

/// Version 1 -> 2: adds `host` to every row and to the key.
fn migrate_v1(conn: &Connection, host: &str) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        conn.execute_batch(&format!("ALTER TABLE {TABLE} RENAME TO edge_hour_v1; {CREATE_V2};"))?;
        conn.execute(
            "INSERT INTO edge_hour SELECT ?1, hour, source, destination, identified, mode, verdict,
                connections, bytes_to_destination, bytes_to_source, first_seen, last_seen FROM edge_hour_v1",
            [host],
        )?;
        conn.execute_batch("DROP TABLE edge_hour_v1; PRAGMA user_version = 2;")
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Maps "this is not a database" to [`LedgerError::Corrupt`], everything else to `Sqlite`.
pub(crate) fn classify(path: &Path, what: &'static str, source: rusqlite::Error) -> LedgerError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            LedgerError::Corrupt { path: path.to_owned(), detail: source.to_string() }
        }
        _ => LedgerError::Sqlite { path: path.to_owned(), what, source },
    }
}
