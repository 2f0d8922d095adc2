//! The ledger as the fleet store's spool: which rows are not yet shipped, and the rows of a whole
//! ledger file for `cordon ship`.
//!
//! Shipping is table-driven: [`SHIPPED`] describes each table that goes to the store (its
//! columns, which of them are the key, and how two copies of a row combine), so shipping another
//! table is one more entry here. The store builds its SQL from the same descriptions.
//!
//! What is unshipped is tracked per table in `ship_pending_<table>` (ledger schema version 5;
//! version 6 adds `ship_pending_declarer`): one row per changed key with a generation, bumped by
//! triggers on every insert and update of the table (and of the tables feeding it, such as
//! `declared_upstream` for `declarer`). A shipped row's marker is removed only if its generation
//! is still the one shipped, so a bucket that changed while it was being shipped is shipped
//! again. The triggers exist only in ledgers of agents with a `[fleet]` store ([`Spool::open`]
//! installs them and marks every row already there); a ledger that never ships pays nothing.
//!
//! Owns SQLite only; it never talks to the store.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use rusqlite::types::{Value, ValueRef};

use super::LedgerError;
use super::check;
use super::schema::{self, classify};

/// A column's SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bytes,
    /// A set of texts: one text of newline-separated, sorted items on the ledger side (and in a
    /// [`Batch`]), `text[]` in the store.
    TextSet,
}

/// How the store combines a shipped value with the one it holds for the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Part of the key.
    Key,
    /// The larger (counters only grow while a bucket is open).
    Max,
    /// The smaller.
    Min,
    /// The value from the copy whose named column is smaller (ties: the smaller value).
    FromMin(&'static str),
    /// The value from the copy whose named column is larger; on a tie, the union of both (a
    /// [`Kind::TextSet`]). A host's newer declaration replaces its older one this way.
    Newest(&'static str),
}

/// One column of a shipped table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub combine: Combine,
    /// How the ledger computes the column when it is not one of the table's own: an SQLite
    /// expression over the table's row as `t` (a declarer's services come from
    /// `declared_upstream`).
    pub ledger: Option<&'static str>,
}

/// A ledger table that ships to the store.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// The column holding the hour (unix seconds / 3600) the store partitions by, if any.
    pub hour_column: Option<&'static str>,
    /// The first ledger schema version with this table.
    pub since_version: i64,
    /// What a ledger older than `host`'s introduction puts in a column (only `edge_hour.host`).
    pub v1_defaults: &'static [(&'static str, &'static str)],
    /// Other ledger tables whose rows carry this table's key and feed its computed columns:
    /// their inserts and deletes mark the row they belong to as unshipped.
    pub fed_by: &'static [&'static str],
    /// The first store schema version with this table.
    pub store_version: i32,
}

impl Table {
    /// The key columns, in order.
    pub fn key(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.combine == Combine::Key)
    }

    fn pending(&self) -> String {
        format!("ship_pending_{}", self.name)
    }

    /// The SQLite select list reading the table's columns from its row `t`.
    fn ledger_columns(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| c.ledger.map(str::to_owned).unwrap_or_else(|| format!("t.{}", c.name)))
            .collect()
    }
}

const fn col(name: &'static str, kind: Kind, combine: Combine) -> Column {
    Column { name, kind, combine, ledger: None }
}

/// `edge_hour`: keyed by host, hour and edge, so each host's buckets are its own.
pub const EDGE_HOUR: Table = Table {
    name: "edge_hour",
    columns: &[
        col("host", Kind::Text, Combine::Key),
        col("hour", Kind::Int, Combine::Key),
        col("source", Kind::Text, Combine::Key),
        col("destination", Kind::Text, Combine::Key),
        col("identified", Kind::Text, Combine::Key),
        col("mode", Kind::Text, Combine::Key),
        col("verdict", Kind::Text, Combine::Key),
        col("connections", Kind::Int, Combine::Max),
        col("bytes_to_destination", Kind::Int, Combine::Max),
        col("bytes_to_source", Kind::Int, Combine::Max),
        col("first_seen", Kind::Int, Combine::Min),
        col("last_seen", Kind::Int, Combine::Max),
    ],
    hour_column: Some("hour"),
    since_version: 1,
    v1_defaults: &[("host", "''")],
    fed_by: &[],
    store_version: 1,
};

/// `imported_prefix`: what `cordon import haproxy-log` has put in, as `cordon merge` keeps it.
pub const IMPORTED_PREFIX: Table = Table {
    name: "imported_prefix",
    columns: &[
        col("len", Kind::Int, Combine::Key),
        col("sha256", Kind::Bytes, Combine::Key),
        col("lines", Kind::Int, Combine::Max),
        col("file", Kind::Text, Combine::FromMin("imported_at")),
        col("imported_at", Kind::Int, Combine::Min),
    ],
    hour_column: None,
    since_version: 3,
    v1_defaults: &[],
    fed_by: &[],
    store_version: 1,
};

/// `declarer` with its declared services: one row per (host, identity, origin), the newer
/// declaration replacing the older as `ledger::declared` and `cordon merge` do.
pub const DECLARER: Table = Table {
    name: "declarer",
    columns: &[
        col("host", Kind::Text, Combine::Key),
        col("identity", Kind::Text, Combine::Key),
        col("origin", Kind::Text, Combine::Key),
        col("declared_at", Kind::Int, Combine::Max),
        Column {
            name: "services",
            kind: Kind::TextSet,
            combine: Combine::Newest("declared_at"),
            ledger: Some(
                "coalesce((SELECT group_concat(u.service, char(10)) FROM declared_upstream u
                   WHERE u.host = t.host AND u.identity = t.identity AND u.origin = t.origin), '')",
            ),
        },
    ],
    hour_column: None,
    since_version: 4,
    v1_defaults: &[],
    fed_by: &["declared_upstream"],
    store_version: 2,
};

/// Every table that ships, in the order they are shipped.
pub const SHIPPED: &[&Table] = &[&EDGE_HOUR, &IMPORTED_PREFIX, &DECLARER];

/// The `ship_pending_*` tables of ledger schema version 6 (version 5 had all but
/// `ship_pending_declarer`).
pub(crate) fn create_pending_sql() -> String {
    SHIPPED
        .iter()
        .map(|t| {
            let keys: Vec<String> =
                t.key().map(|c| format!("{} {} NOT NULL", c.name, sql_type(c.kind))).collect();
            let names: Vec<&str> = t.key().map(|c| c.name).collect();
            format!(
                "CREATE TABLE IF NOT EXISTS {} ({}, gen INTEGER NOT NULL, PRIMARY KEY ({})) WITHOUT ROWID;",
                t.pending(),
                keys.join(", "),
                names.join(", ")
            )
        })
        .collect()
}

fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text | Kind::TextSet => "TEXT",
        Kind::Int => "INTEGER",
        Kind::Bytes => "BLOB",
    }
}

/// Column-wise values of some rows of one table, as the store takes them.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Text(Vec<String>),
    Int(Vec<i64>),
    Bytes(Vec<Vec<u8>>),
}

/// Rows of one table, column by column in [`Table::columns`] order.
#[derive(Debug, Clone)]
pub struct Batch {
    pub table: &'static Table,
    pub columns: Vec<Values>,
    /// Each row's pending generation (empty for a batch read from a whole file).
    generations: Vec<i64>,
}

impl Batch {
    fn new(table: &'static Table) -> Self {
        let columns = table
            .columns
            .iter()
            .map(|c| match c.kind {
                Kind::Text | Kind::TextSet => Values::Text(Vec::new()),
                Kind::Int => Values::Int(Vec::new()),
                Kind::Bytes => Values::Bytes(Vec::new()),
            })
            .collect();
        Batch { table, columns, generations: Vec::new() }
    }

    /// A batch of `columns` (in [`Table::columns`] order) that came from elsewhere than a
    /// ledger (a shipper's request to the ingest service); it carries no pending generations.
    pub fn from_columns(table: &'static Table, columns: Vec<Values>) -> Self {
        Batch { table, columns, generations: Vec::new() }
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        match self.columns.first() {
            Some(Values::Text(v)) => v.len(),
            Some(Values::Int(v)) => v.len(),
            Some(Values::Bytes(v)) => v.len(),
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one SQLite row whose columns `offset..` are the table's columns, the `number`th
    /// read, after checking every value (`ledger::check`).
    fn push(
        &mut self,
        db: &Path,
        row: &rusqlite::Row<'_>,
        offset: usize,
        number: u64,
    ) -> Result<(), LedgerError> {
        let table = self.table;
        let names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        check::row(check::At { path: db, table: table.name, row: number }, &names, row, offset)?;
        for (i, (column, values)) in table.columns.iter().zip(&mut self.columns).enumerate() {
            let value = row.get_ref(offset + i).map_err(|e| classify(db, "read the ledger", e))?;
            let bad = || LedgerError::BadRow {
                path: db.to_owned(),
                table: table.name,
                column: column.name,
                value: format!("{:?}", value.data_type()),
            };
            match (values, value) {
                (Values::Text(v), ValueRef::Text(t)) => {
                    let text = std::str::from_utf8(t).map_err(|_| bad())?;
                    v.push(if column.kind == Kind::TextSet { sorted_set(text) } else { text.to_owned() });
                }
                (Values::Int(v), ValueRef::Integer(n)) => v.push(n),
                (Values::Bytes(v), ValueRef::Blob(b)) => v.push(b.to_vec()),
                _ => return Err(bad()),
            }
        }
        Ok(())
    }

    /// The key of row `i`, as SQLite parameters.
    fn key_params(&self, i: usize) -> Vec<Value> {
        self.table
            .columns
            .iter()
            .zip(&self.columns)
            .filter(|(c, _)| c.combine == Combine::Key)
            .map(|(_, values)| match values {
                Values::Text(v) => Value::Text(v[i].clone()),
                Values::Int(v) => Value::Integer(v[i]),
                Values::Bytes(v) => Value::Blob(v[i].clone()),
            })
            .collect()
    }
}

/// The newline-separated items of `text`, sorted and without duplicates, so that a set ships
/// the same however SQLite happened to list it.
fn sorted_set(text: &str) -> String {
    let mut items: Vec<&str> = text.split('\n').filter(|s| !s.is_empty()).collect();
    items.sort_unstable();
    items.dedup();
    items.join("\n")
}

/// Opens the ledger `db` read-only and validates it whole: a missing, foreign, too new or hostile
/// file, or any row that breaks `ledger::check`'s rules, is an error naming it. `cordon ship`
/// calls this before it connects, so a refused file ships nothing.
pub fn check(db: &Path) -> Result<(), LedgerError> {
    let opened = schema::open_read(db)?;
    read_tables(db, &opened, usize::MAX, &mut |_| Ok::<_, LedgerError>(()))
}

/// Reads every shipped table of the ledger `db` in batches of at most `batch_rows`, calling
/// `each` with each batch (`cordon ship`). A version-1 ledger's rows have host `""`. Every row
/// is checked as it is read; [`check`] first when nothing may be handed on from a bad file.
pub fn read_all<E: From<LedgerError>>(
    db: &Path,
    batch_rows: usize,
    mut each: impl FnMut(Batch) -> Result<(), E>,
) -> Result<(), E> {
    let opened = schema::open_read(db)?;
    read_tables(db, &opened, batch_rows, &mut each)
}

/// One pass of [`read_all`] over the opened ledger.
fn read_tables<E: From<LedgerError>>(
    db: &Path,
    opened: &schema::Opened,
    batch_rows: usize,
    each: &mut impl FnMut(Batch) -> Result<(), E>,
) -> Result<(), E> {
    for &table in SHIPPED {
        if opened.version < table.since_version {
            continue;
        }
        let columns: Vec<String> = table
            .columns
            .iter()
            .zip(table.ledger_columns())
            .map(|(c, select)| match table.v1_defaults.iter().find(|(n, _)| *n == c.name) {
                Some((_, default)) if opened.version == 1 => (*default).to_owned(),
                _ => select,
            })
            .collect();
        let err = |e| classify(db, "read the ledger", e);
        let mut stmt = opened
            .conn
            .prepare(&format!("SELECT {} FROM {} t", columns.join(", "), table.name))
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        let mut batch = Batch::new(table);
        let mut number = 0;
        while let Some(row) = rows.next().map_err(err)? {
            number += 1;
            batch.push(db, row, 0, number)?;
            if batch.len() >= batch_rows {
                each(std::mem::replace(&mut batch, Batch::new(table)))?;
            } else if batch_rows == usize::MAX {
                // The checking pass keeps nothing.
                batch = Batch::new(table);
            }
        }
        if !batch.is_empty() {
            each(batch)?;
        }
    }
    Ok(())
}

/// The change-tracking triggers [`Spool::open`] installs: (table, trigger name, its SQL). The
/// only triggers a ledger may hold (`ledger::check` refuses any other).
pub(crate) fn trigger_sql() -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for table in SHIPPED {
        let keys: Vec<&str> = table.key().map(|c| c.name).collect();
        let pending = table.pending();
        let bump_of = |row: &str| {
            let values: Vec<String> = keys.iter().map(|k| format!("{row}.{k}")).collect();
            format!(
                "INSERT INTO {pending} ({keys}, gen) VALUES ({values}, 1) ON CONFLICT DO UPDATE SET gen = gen + 1;",
                keys = keys.join(", "),
                values = values.join(", ")
            )
        };
        let t = table.name;
        let bump = bump_of("NEW");
        for event in ["INSERT", "UPDATE"] {
            let name = format!("ship_track_{t}_{}", event.to_lowercase());
            let sql = format!("CREATE TRIGGER {name} AFTER {event} ON {t} BEGIN {bump} END");
            out.push((t, name, sql));
        }
        for feeder in table.fed_by {
            for (event, row) in [("INSERT", "NEW"), ("DELETE", "OLD")] {
                let name = format!("ship_track_{t}_from_{feeder}_{}", event.to_lowercase());
                let sql =
                    format!("CREATE TRIGGER {name} AFTER {event} ON {feeder} BEGIN {} END", bump_of(row));
                out.push((t, name, sql));
            }
        }
    }
    out
}

/// An agent's ledger opened for shipping: its own connection, beside the recorder's.
pub struct Spool {
    conn: Connection,
    path: PathBuf,
}

impl Spool {
    /// Opens the ledger at `path` (creating or migrating it as the recorder would), installs the
    /// change-tracking triggers if they are not there yet and then marks every row already in
    /// it as unshipped.
    pub fn open(path: &Path, host: &str) -> Result<Spool, LedgerError> {
        let conn = schema::open_write(path, host, schema::BUSY_TIMEOUT)?;
        let sql = |what| move |e| classify(path, what, e);
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql("start tracking what is shipped"))?;
        let result = (|| {
            for table in SHIPPED {
                let trigger = format!("ship_track_{}_insert", table.name);
                let exists: i64 = conn.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                    [&trigger],
                    |r| r.get(0),
                )?;
                if exists > 0 {
                    continue;
                }
                let pending = table.pending();
                let keys: Vec<&str> = table.key().map(|c| c.name).collect();
                for (_, _, sql) in trigger_sql().iter().filter(|(t, ..)| *t == table.name) {
                    conn.execute_batch(sql)?;
                }
                conn.execute_batch(&format!(
                    "INSERT INTO {pending} ({keys}, gen) SELECT {keys}, 1 FROM {t} WHERE true ON CONFLICT DO NOTHING;",
                    t = table.name,
                    keys = keys.join(", "),
                ))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => conn.execute_batch("COMMIT").map_err(sql("start tracking what is shipped"))?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(classify(path, "start tracking what is shipped", e));
            }
        }
        Ok(Spool { conn, path: path.to_owned() })
    }

    /// The ledger's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `batch_rows` unshipped rows of each table, with their latest values.
    pub fn pending(&self, batch_rows: usize) -> Result<Vec<Batch>, LedgerError> {
        let err = |e| classify(&self.path, "read the unshipped rows", e);
        let mut batches = Vec::new();
        for &table in SHIPPED {
            let columns = table.ledger_columns();
            let on: Vec<String> = table.key().map(|c| format!("t.{0} = p.{0}", c.name)).collect();
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT p.gen, {} FROM {} p JOIN {} t ON {} LIMIT ?1",
                    columns.join(", "),
                    table.pending(),
                    table.name,
                    on.join(" AND ")
                ))
                .map_err(err)?;
            let limit = i64::try_from(batch_rows).unwrap_or(i64::MAX);
            let mut rows = stmt.query([limit]).map_err(err)?;
            let mut batch = Batch::new(table);
            let mut number = 0;
            while let Some(row) = rows.next().map_err(err)? {
                number += 1;
                batch.generations.push(row.get(0).map_err(err)?);
                batch.push(&self.path, row, 1, number)?;
            }
            if !batch.is_empty() {
                batches.push(batch);
            }
        }
        Ok(batches)
    }

    /// Forgets the markers of `batch`'s rows that have not changed since it was read.
    pub fn mark_shipped(&mut self, batch: &Batch) -> Result<(), LedgerError> {
        let err = |e| classify(&self.path, "record what was shipped", e);
        let table = batch.table;
        let keys: Vec<String> =
            table.key().enumerate().map(|(i, c)| format!("{} = ?{}", c.name, i + 1)).collect();
        let gen_param = keys.len() + 1;
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut delete = tx
                .prepare_cached(&format!(
                    "DELETE FROM {} WHERE {} AND gen = ?{gen_param}",
                    table.pending(),
                    keys.join(" AND ")
                ))
                .map_err(err)?;
            for (i, generation) in batch.generations.iter().enumerate() {
                let mut params = batch.key_params(i);
                params.push(Value::Integer(*generation));
                delete.execute(rusqlite::params_from_iter(params)).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Rows waiting to be shipped, over every table.
    pub fn waiting(&self) -> Result<u64, LedgerError> {
        let mut total = 0u64;
        for table in SHIPPED {
            let n: i64 = self
                .conn
                .query_row(&format!("SELECT count(*) FROM {}", table.pending()), [], |r| r.get(0))
                .map_err(|e| classify(&self.path, "count the unshipped rows", e))?;
            total += u64::try_from(n).unwrap_or(0);
        }
        Ok(total)
    }
}
