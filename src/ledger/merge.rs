//! `cordon merge`: many hosts' ledgers into one.
//!
//! Each row is keyed by (host, hour, edge) and its counters only grow while the hour is recorded,
//! so the merge keeps the largest counters per key (and the earliest first / latest last seen).
//! Merging the same ledger twice, or the ledgers in another order, gives the same result; a newer
//! copy of a host's ledger supersedes an older one already merged.
//!
//! The file prefixes `cordon import haproxy-log` recorded in an input are copied too (their lines
//! are in the merged rows), so importing the same log into the merged ledger adds nothing twice.
//! So are the declared upstreams, by their own newest-wins rule ([`super::declared`]).

use std::path::{Path, PathBuf};

use super::LedgerError;
use super::check;
use super::schema::{self, classify};
use super::{declared, imported};

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Input ledgers read.
    pub inputs: usize,
    /// Rows read from the inputs.
    pub rows_read: u64,
    /// Imported file prefixes read from the inputs.
    pub imports_read: u64,
    /// Declarations (host, identity, origin) read from the inputs.
    pub declarations_read: u64,
}

/// Merges `inputs` into `out` (created when missing; an existing ledger is merged into).
/// Inputs are validated first (their schema before any query, then every row as it is read, see
/// `ledger::check`); a version-1 input's rows have host `""`. All in one transaction: a failure
/// or a refused input leaves `out` as it was (an `out` that did not exist is not left behind).
pub fn merge(out: &Path, inputs: &[PathBuf]) -> Result<MergeStats, LedgerError> {
    let existed = out.exists();
    let result = merge_into(out, inputs);
    if result.is_err() && !existed {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
        }
    }
    result
}

fn merge_into(out: &Path, inputs: &[PathBuf]) -> Result<MergeStats, LedgerError> {
    let out_canon = std::fs::canonicalize(out).ok();
    for input in inputs {
        if out_canon.is_some() && std::fs::canonicalize(input).ok() == out_canon {
            return Err(LedgerError::OutputIsInput { path: out.to_owned() });
        }
    }
    let opened: Vec<_> =
        inputs.iter().map(|p| schema::open_read(p).map(|o| (p, o))).collect::<Result<_, _>>()?;
    let mut conn = schema::open_write(out, "", schema::BUSY_TIMEOUT)?;
    let out_err = |what| move |e| classify(out, what, e);
    let tx = conn.transaction().map_err(out_err("begin the merge"))?;
    let mut stats = MergeStats { inputs: inputs.len(), ..MergeStats::default() };
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO edge_hour (host, hour, source, destination, identified, mode, verdict,
                    connections, bytes_to_destination, bytes_to_source, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT DO UPDATE SET
                    connections = max(connections, excluded.connections),
                    bytes_to_destination = max(bytes_to_destination, excluded.bytes_to_destination),
                    bytes_to_source = max(bytes_to_source, excluded.bytes_to_source),
                    first_seen = min(first_seen, excluded.first_seen),
                    last_seen = max(last_seen, excluded.last_seen)",
            )
            .map_err(out_err("prepare the merge"))?;
        for (path, input) in &opened {
            if input.version == 0 {
                continue;
            }
            let host = if input.version == 1 { "'' AS host" } else { "host" };
            let in_err = |e| classify(path, "read the ledger", e);
            let mut select = input
                .conn
                .prepare(&format!(
                    "SELECT {host}, hour, source, destination, identified, mode, verdict, connections,
                        bytes_to_destination, bytes_to_source, first_seen, last_seen FROM edge_hour"
                ))
                .map_err(in_err)?;
            let at = check::At { path, table: "edge_hour", row: 0 };
            stats.rows_read +=
                copy_rows(at, &mut select, &mut insert, in_err, out_err("write the merged ledger"))?;
        }
        let mut insert = tx.prepare(imported::INSERT).map_err(out_err("prepare the merge"))?;
        for (path, input) in &opened {
            if input.version < 3 {
                continue;
            }
            let in_err = |e| classify(path, "read the import bookkeeping", e);
            let mut select = input
                .conn
                .prepare("SELECT len, sha256, lines, file, imported_at FROM imported_prefix")
                .map_err(in_err)?;
            let at = check::At { path, table: "imported_prefix", row: 0 };
            stats.imports_read +=
                copy_rows(at, &mut select, &mut insert, in_err, out_err("write the merged ledger"))?;
        }
        for (path, input) in &opened {
            for decl in declared::read_all(path, &input.conn, input.version)? {
                declared::upsert(&tx, &decl).map_err(out_err("write the merged ledger"))?;
                stats.declarations_read += 1;
            }
        }
    }
    tx.commit().map_err(out_err("commit the merge"))?;
    Ok(stats)
}

/// Runs `select` on an input and `insert` with each of its rows, column for column, after
/// checking each row's values (named as in `at`); returns the rows copied.
fn copy_rows(
    at: check::At<'_>,
    select: &mut rusqlite::Statement<'_>,
    insert: &mut rusqlite::Statement<'_>,
    in_err: impl Fn(rusqlite::Error) -> LedgerError,
    out_err: impl Fn(rusqlite::Error) -> LedgerError,
) -> Result<u64, LedgerError> {
    let columns = select.column_count();
    let names: Vec<String> = select.column_names().into_iter().map(str::to_owned).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut rows = select.query([]).map_err(&in_err)?;
    let mut copied = 0;
    while let Some(row) = rows.next().map_err(&in_err)? {
        check::row(check::At { row: copied + 1, ..at }, &names, row, 0)?;
        let values = (0..columns)
            .map(|i| row.get::<_, rusqlite::types::Value>(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&in_err)?;
        insert.execute(rusqlite::params_from_iter(values)).map_err(&out_err)?;
        copied += 1;
    }
    Ok(copied)
}
