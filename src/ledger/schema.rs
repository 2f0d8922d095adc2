//! The `ledger.db` schema, its version in `PRAGMA user_version`, and the migrations.
//!
//! The schema (version 6, current) keeps one row per host, hour and edge:
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
//! and one row per file prefix `cordon import haproxy-log` has imported (see [`super::ImportedPrefix`]):
//!
//! ```sql
//! CREATE TABLE imported_prefix (
//!     len INTEGER NOT NULL,                               -- bytes, through a newline
//!     sha256 BLOB NOT NULL,                               -- SHA-256 of those bytes
//!     lines INTEGER NOT NULL,                             -- lines in them
//!     file TEXT NOT NULL,                                 -- the name imported, for people
//!     imported_at INTEGER NOT NULL,                       -- unix milliseconds
//!     PRIMARY KEY (len, sha256)
//! ) WITHOUT ROWID;
//! ```
//!
//! and the declared upstreams of each caller (tables `declarer` and `declared_upstream`, see
//! [`super::Declaration`]).
//!
//! Version 5 adds what the fleet store shipper has not shipped yet, one table per shipped table
//! (`ship_pending_edge_hour`, `ship_pending_imported_prefix`: the table's key and a generation;
//! see [`super::spool`]).
//!
//! Version 6 adds `ship_pending_declarer`: the declarations ship to the store too.
//!
//! Version 5 is version 6 without `ship_pending_declarer`; version 4 is version 5 without the
//! shipping tables; version 3 is version 4 without the
//! declarations; version 2 is version 3 without `imported_prefix`; version 1 also had no `host` in
//! `edge_hour`. Opening an older ledger for writing migrates it in one transaction, naming a
//! version-1 ledger's rows after the recording host. Readers accept versions 1 and 2 as they are
//! (version-1 rows have host `""`; neither has imported anything that is recorded). Anything
//! else (tables cordon did not create, a version from the future, a file that is not SQLite) is
//! refused with an error naming the file; nothing in it is touched.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::LedgerError;

/// The schema version this cordon writes.
pub const CURRENT_VERSION: i64 = 6;
/// The table of every version.
const TABLE: &str = "edge_hour";
/// The import bookkeeping, since version 3.
pub(crate) const IMPORTED_TABLE: &str = "imported_prefix";
/// Who declared their upstreams, since version 4.
pub(crate) const DECLARER_TABLE: &str = "declarer";
/// The upstreams declared, since version 4.
pub(crate) const DECLARED_TABLE: &str = "declared_upstream";
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

const CREATE_IMPORTED: &str = "CREATE TABLE imported_prefix (
    len INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    lines INTEGER NOT NULL,
    file TEXT NOT NULL,
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (len, sha256)
) WITHOUT ROWID";

const CREATE_DECLARED: &str = "CREATE TABLE IF NOT EXISTS declarer (
    host TEXT NOT NULL,
    identity TEXT NOT NULL,
    origin TEXT NOT NULL,
    declared_at INTEGER NOT NULL,
    PRIMARY KEY (host, identity, origin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS declared_upstream (
    host TEXT NOT NULL,
    identity TEXT NOT NULL,
    origin TEXT NOT NULL,
    service TEXT NOT NULL,
    PRIMARY KEY (host, identity, origin, service)
) WITHOUT ROWID;";

/// The tables a ledger of `version` has (a version from the future may have more).
fn tables_of(version: i64) -> &'static [&'static str] {
    // Each version adds tables at the end of this list: a version has a prefix of it.
    const ALL: &[&str] = &[
        TABLE,
        IMPORTED_TABLE,
        DECLARER_TABLE,
        DECLARED_TABLE,
        "ship_pending_edge_hour",
        "ship_pending_imported_prefix",
        "ship_pending_declarer",
    ];
    let count = match version {
        0 => 0,
        1 | 2 => 1,
        3 => 2,
        4 => 4,
        5 => 6,
        _ => ALL.len(),
    };
    &ALL[..count]
}

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
    super::check::harden(&conn).map_err(sql("restrict what the file may run"))?;
    super::check::schema_objects(&conn, path)?;
    let version = check(&conn, path)?;
    quick_check(&conn, path)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        .map_err(sql("switch to WAL"))?;
    // NORMAL in WAL mode survives a crash of the process (kill -9) without losing a committed
    // batch; only an OS crash or power loss can drop the last batches.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql("set synchronous"))?;
    if version < CURRENT_VERSION {
        migrate(&conn, host).map_err(sql("create or migrate the schema"))?;
    }
    Ok(conn)
}

/// Opens `path` read-only, validating its schema (`ledger::check`); the agent may be writing it
/// at the same time.
pub(crate) fn open_read(path: &Path) -> Result<Opened, LedgerError> {
    if !path.exists() {
        return Err(LedgerError::Missing { path: path.to_owned() });
    }
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|source| LedgerError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| classify(path, "set busy timeout", e))?;
    // The file may come from another host: nothing in it runs, and no query runs before its
    // schema is known to be a ledger's.
    super::check::harden(&conn).map_err(|e| classify(path, "restrict what the file may run", e))?;
    super::check::schema_objects(&conn, path)?;
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
    let too_new =
        || LedgerError::TooNew { path: path.to_owned(), found: version, supported: CURRENT_VERSION };
    // A newer cordon may have added tables of its own: that is a version to upgrade for, not a
    // foreign database.
    if version > CURRENT_VERSION && tables.iter().any(|t| t == TABLE) {
        return Err(too_new());
    }
    let expected = tables_of(version);
    if tables.iter().any(|t| !expected.contains(&t.as_str())) {
        return Err(LedgerError::Foreign { path: path.to_owned(), tables });
    }
    if !(0..=CURRENT_VERSION).contains(&version) {
        return Err(too_new());
    }
    if let Some(missing) = expected.iter().find(|t| !tables.iter().any(|have| have == *t)) {
        let what = if tables.is_empty() { "tables".to_owned() } else { format!("table {missing}") };
        return Err(LedgerError::Foreign {
            path: path.to_owned(),
            tables: vec![format!("user_version {version} without {what}")],
        });
    }
    Ok(version)
}

/// Refuses a file whose pages are damaged although its header and schema read fine: SQLite would
/// open it and then fail every write ("database disk image is malformed").
fn quick_check(conn: &Connection, path: &Path) -> Result<(), LedgerError> {
    let damaged = |detail: String| LedgerError::Damaged { path: path.to_owned(), detail };
    let found: Vec<String> = match conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
    {
        Ok(found) => found,
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
            ) =>
        {
            return Err(damaged(e.to_string()));
        }
        Err(e) => return Err(classify(path, "check the ledger's integrity", e)),
    };
    match found.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(damaged(found.join("; "))),
    }
}

fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    stmt.query_map([], |row| row.get(0))?.collect()
}

/// Brings the ledger from the version it has to [`CURRENT_VERSION`] in one transaction: a new
/// file gets every table; version 1 -> 2 adds `host` to every row and to the key (naming the rows
/// after `host`); version 2 -> 3 adds `imported_prefix`; version 3 -> 4 adds the declarations; 4 -> 5 the
/// shipping tables, 5 -> 6 the declarations' one. The version is read again under the
/// write lock, so two cordons opening one old ledger at once migrate it once.
fn migrate(conn: &Connection, host: &str) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == 0 {
            conn.execute_batch(CREATE_V2)?;
        }
        if version == 1 {
            conn.execute_batch(&format!("ALTER TABLE {TABLE} RENAME TO edge_hour_v1; {CREATE_V2};"))?;
            conn.execute(
                "INSERT INTO edge_hour SELECT ?1, hour, source, destination, identified, mode, verdict,
                    connections, bytes_to_destination, bytes_to_source, first_seen, last_seen FROM edge_hour_v1",
                [host],
            )?;
            conn.execute_batch("DROP TABLE edge_hour_v1")?;
        }
        if version < 3 {
            conn.execute_batch(CREATE_IMPORTED)?;
        }
        if version < 4 {
            conn.execute_batch(CREATE_DECLARED)?;
        }
        if version < 6 {
            // Version 5 has all but `ship_pending_declarer`; the statements skip what exists.
            conn.execute_batch(&super::spool::create_pending_sql())?;
        }
        conn.pragma_update(None, "user_version", CURRENT_VERSION)
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
