//! Salvage: what a damaged ledger's readable pages still hold, carried into the fresh ledger that
//! replaced it.
//!
//! When the recorder sets a damaged ledger aside ([`super::rescue::set_aside`]), the history in
//! it would otherwise be gone: `cordon merge` refuses a damaged file. SQLite reads a table in key
//! order and stops at the first damaged page it meets; so each table is read forwards until an
//! error and then backwards until an error, and every row read on either side is kept. A row
//! whose values break the ledger's rules (`ledger::check`) is dropped and counted; a table that
//! could not be read whole is named. The moved file stays where it is, untouched.
//!
//! Must not be used by the data plane: blocking file I/O.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use super::check;

/// What a salvage carried over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Rows copied into the fresh ledger, over every table.
    pub rows: u64,
    /// Rows read but dropped because a value broke the ledger's rules.
    pub refused: u64,
    /// Tables with pages that could not be read (their rows there are lost).
    pub damaged_tables: Vec<&'static str>,
}

/// The tables salvaged, their columns and key, as of the current schema.
const TABLES: &[(&str, &[&str], &[&str])] = &[
    (
        "edge_hour",
        &[
            "host",
            "hour",
            "source",
            "destination",
            "identified",
            "mode",
            "verdict",
            "connections",
            "bytes_to_destination",
            "bytes_to_source",
            "first_seen",
            "last_seen",
        ],
        &["host", "hour", "source", "destination", "identified", "mode", "verdict"],
    ),
    ("imported_prefix", &["len", "sha256", "lines", "file", "imported_at"], &["len", "sha256"]),
    ("declarer", &["host", "identity", "origin", "declared_at"], &["host", "identity", "origin"]),
    (
        "declared_upstream",
        &["host", "identity", "origin", "service"],
        &["host", "identity", "origin", "service"],
    ),
];

/// Copies what can be read of the damaged ledger at `damaged` into `fresh` (a ledger of the
/// current schema), in one transaction. `host` names the rows of a version-1 ledger.
pub(crate) fn salvage(damaged: &Path, fresh: &mut Connection, host: &str) -> Result<Salvaged, String> {
    // Reading a WAL-mode file makes its `-wal` and `-shm` files: the moved file is left as it was.
    let side = |suffix: &str| std::path::PathBuf::from(format!("{}{suffix}", damaged.display()));
    let made: Vec<_> = ["-wal", "-shm"].into_iter().map(side).filter(|p| !p.exists()).collect();
    let result = copy(damaged, fresh, host);
    for p in made {
        let _ = std::fs::remove_file(p);
    }
    result
}

fn copy(damaged: &Path, fresh: &mut Connection, host: &str) -> Result<Salvaged, String> {
    let from = Connection::open_with_flags(
        damaged,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    check::harden(&from).map_err(|e| e.to_string())?;
    let version: i64 =
        from.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| e.to_string())?;
    let present: Vec<String> = from
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| e.to_string())?;
    let mut out = Salvaged::default();
    let tx = fresh.transaction().map_err(|e| e.to_string())?;
    for &(table, columns, key) in TABLES {
        if !present.iter().any(|t| t == table) {
            continue;
        }
        let select: Vec<String> = columns
            .iter()
            .map(|c| {
                if *c == "host" && table == "edge_hour" && version < 2 {
                    "?1 AS host".to_owned()
                } else {
                    (*c).to_owned()
                }
            })
            .collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let mut insert = tx
            .prepare(&format!(
                "INSERT OR IGNORE INTO {table} ({}) VALUES ({})",
                columns.join(", "),
                placeholders.join(", ")
            ))
            .map_err(|e| e.to_string())?;
        let key_v1: Vec<&str> = key.iter().copied().filter(|k| !(version < 2 && *k == "host")).collect();
        let mut whole = true;
        for direction in ["ASC", "DESC"] {
            let order: Vec<String> = key_v1.iter().map(|k| format!("{k} {direction}")).collect();
            let sql = format!("SELECT {} FROM {table} ORDER BY {}", select.join(", "), order.join(", "));
            let complete = read_rows(&from, &sql, host, damaged, table, columns, &mut out, &mut |values| {
                insert.execute(rusqlite::params_from_iter(values)).map(|n| n as u64)
            })?;
            if complete {
                break;
            }
            whole = false;
        }
        if !whole {
            out.damaged_tables.push(table);
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads rows of `sql` until the end (true) or the first damaged page (false), handing each row
/// that passes the ledger's rules to `keep`.
#[allow(clippy::too_many_arguments)]
fn read_rows(
    from: &Connection,
    sql: &str,
    host: &str,
    path: &Path,
    table: &'static str,
    columns: &[&str],
    out: &mut Salvaged,
    keep: &mut dyn FnMut(Vec<Value>) -> rusqlite::Result<u64>,
) -> Result<bool, String> {
    let Ok(mut stmt) = from.prepare(sql) else { return Ok(false) };
    let params: &[&dyn rusqlite::ToSql] = if sql.contains("?1") { &[&host] } else { &[] };
    let Ok(mut rows) = stmt.query(params) else { return Ok(false) };
    let mut number = 0;
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(true),
            Err(_) => return Ok(false),
        };
        number += 1;
        if check::row(check::At { path, table, row: number }, columns, row, 0).is_err() {
            out.refused += 1;
            continue;
        }
        let values: Vec<Value> = match (0..columns.len()).map(|i| row.get::<_, Value>(i)).collect() {
            Ok(v) => v,
            Err(_) => return Ok(false),
        };
        out.rows += keep(values).map_err(|e| e.to_string())?;
    }
}
