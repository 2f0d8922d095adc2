//! Ledger files from outside the process: what cordon checks before it believes one.
//!
//! A ledger handed to `cordon merge`, `cordon ship` or a review command may come from a host an
//! attacker controls. Owns the rules every reader applies:
//!
//! - **The schema first.** Before any query, `sqlite_master` is read: a view (a recursive one
//!   would run until killed), a trigger other than the shipping triggers cordon installs, or an
//!   index cordon did not create refuses the file. Connections run with `trusted_schema` off and
//!   in defensive mode, so nothing in the file's schema calls a function with side effects, and
//!   no value longer than [`MAX_VALUE_BYTES`] is read into memory.
//! - **Every row.** Each value has the type its column holds (a text where a number belongs is
//!   refused, not read as 0), counters are between 0 and [`MAX_COUNT`], names follow the
//!   service-name rule (`ip:` addresses for sources), hosts are at most 253 bytes of
//!   `[A-Za-z0-9._-]`, enums are ones cordon writes, times are after 1970 and at most
//!   [`FUTURE_SKEW`] ahead of this host's clock. A bad row refuses the whole file, naming the file,
//!   table, row, column and why; callers write nothing from a refused file.
//!
//! Must not write: it only reads what callers already opened.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;

use super::LedgerError;
use super::recorder::unix_ms;
use crate::base::{Identified, Mode, ServiceName, Source, Verdict};

/// The largest counter accepted (2^53: exact in a double, far above any real hour's traffic).
pub const MAX_COUNT: i64 = 1 << 53;
/// The longest host name accepted, in bytes.
pub const MAX_HOST_LEN: usize = 253;
/// The longest imported file name accepted, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 4096;
/// The longest value SQLite reads from a ledger file; a longer one fails the read, naming the file.
pub const MAX_VALUE_BYTES: i32 = 32 << 20;
/// How far ahead of this host's clock a time in a ledger may be (clocks of hosts differ a little).
pub const FUTURE_SKEW: Duration = Duration::from_secs(24 * 3600);

/// Makes `conn` safe to point at a file someone else wrote: nothing in its schema runs a function
/// with side effects, its schema cannot be written through, and values are bounded.
pub(crate) fn harden(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "trusted_schema", false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
    Ok(())
}

/// Refuses a ledger whose schema holds a view, a trigger cordon did not install, or an index
/// cordon did not create. Reads only `sqlite_master`, which runs nothing from the file.
pub(crate) fn schema_objects(conn: &Connection, path: &Path) -> Result<(), LedgerError> {
    let objects: Vec<(String, String, Option<String>)> = conn
        .prepare("SELECT type, name, sql FROM sqlite_master")
        .and_then(|mut stmt| stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(|e| super::schema::classify(path, "read the schema", e))?;
    let ours = super::spool::trigger_sql();
    for (kind, name, sql) in objects {
        let refuse = |why: &str| LedgerError::Hostile {
            path: path.to_owned(),
            why: format!("{kind} {}: {why}", crate::base::escape::text(&name)),
        };
        match kind.as_str() {
            "table" => {}
            "view" => return Err(refuse("a ledger has no views (a view may run without end)")),
            "trigger" => {
                let expected = ours.iter().find(|(_, n, _)| *n == name).map(|(_, _, s)| squeeze(s));
                if expected.is_none() || expected != sql.as_deref().map(squeeze) {
                    return Err(refuse("not a trigger cordon installs"));
                }
            }
            "index" if name.starts_with("sqlite_autoindex_") && sql.is_none() => {}
            _ => return Err(refuse("not part of a cordon ledger")),
        }
    }
    Ok(())
}

/// `sql` with runs of whitespace made one space, for comparing statements as SQLite stored them.
fn squeeze(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a column of a ledger table must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// A host: empty (a version-1 ledger's rows) or up to 253 bytes of `[A-Za-z0-9._-]`.
    Host,
    /// An hour (unix seconds / 3600), not in the future.
    Hour,
    /// A caller: a service name or `ip:` and an address.
    Source,
    /// A service name.
    Service,
    /// Newline-separated service names (a declarer's services as shipped).
    ServiceSet,
    Identified,
    Mode,
    Verdict,
    /// A declaration's origin.
    Origin,
    /// A counter: 0 to [`MAX_COUNT`].
    Count,
    /// Unix milliseconds, not in the future.
    TimeMs,
    /// 32 bytes.
    Sha256,
    /// A file name, for people: up to [`MAX_FILE_NAME_LEN`] bytes (escaped wherever shown).
    FileName,
}

/// The rule of `column` in ledger table `table`; `None` for a column cordon does not know.
pub(crate) fn rule(table: &str, column: &str) -> Option<Rule> {
    Some(match (table, column) {
        (_, "host") => Rule::Host,
        ("edge_hour", "hour") => Rule::Hour,
        ("edge_hour", "source") => Rule::Source,
        ("edge_hour", "destination") | (_, "identity") | (_, "service") => Rule::Service,
        (_, "services") => Rule::ServiceSet,
        (_, "identified") => Rule::Identified,
        (_, "mode") => Rule::Mode,
        (_, "verdict") => Rule::Verdict,
        (_, "origin") => Rule::Origin,
        (_, "connections" | "bytes_to_destination" | "bytes_to_source" | "len" | "lines") => Rule::Count,
        (_, "first_seen" | "last_seen" | "imported_at" | "declared_at") => Rule::TimeMs,
        (_, "sha256") => Rule::Sha256,
        (_, "file") => Rule::FileName,
        _ => return None,
    })
}

/// Where a value was read: the file, the table and the row (counted from 1 in the order read).
#[derive(Debug, Clone, Copy)]
pub(crate) struct At<'a> {
    pub path: &'a Path,
    pub table: &'static str,
    pub row: u64,
}

impl At<'_> {
    fn bad(&self, column: &str, why: String) -> LedgerError {
        LedgerError::BadValue {
            path: self.path.to_owned(),
            table: self.table,
            row: self.row,
            column: column.to_owned(),
            why,
        }
    }

    /// Checks `value` of `column` against `rule`.
    pub fn value(&self, column: &str, rule: Rule, value: ValueRef<'_>) -> Result<(), LedgerError> {
        let bad = |why: String| self.bad(column, why);
        match rule {
            Rule::Count | Rule::Hour | Rule::TimeMs => {
                let ValueRef::Integer(n) = value else {
                    return Err(bad(format!("{} where an integer belongs", kind(value))));
                };
                let now_ms = unix_ms(SystemTime::now() + FUTURE_SKEW);
                let max = match rule {
                    Rule::Count => MAX_COUNT,
                    Rule::Hour => now_ms.div_euclid(3_600_000),
                    _ => now_ms,
                };
                if !(0..=max).contains(&n) {
                    let what = if rule == Rule::Count { "counter" } else { "time" };
                    let limit =
                        if rule == Rule::Count { "" } else { " (later than this host's clock allows)" };
                    return Err(bad(format!("{what} {n} is outside 0..={max}{limit}")));
                }
                Ok(())
            }
            Rule::Sha256 => match value {
                ValueRef::Blob(b) if b.len() == 32 => Ok(()),
                ValueRef::Blob(b) => Err(bad(format!("a digest of {} bytes, not 32", b.len()))),
                other => Err(bad(format!("{} where a digest belongs", kind(other)))),
            },
            _ => {
                let ValueRef::Text(bytes) = value else {
                    return Err(bad(format!("{} where a text belongs", kind(value))));
                };
                let text = std::str::from_utf8(bytes).map_err(|_| bad("a text that is not UTF-8".into()))?;
                text_rule(rule, text).map_err(bad)
            }
        }
    }
}

/// The name of a value's type, for messages.
fn kind(value: ValueRef<'_>) -> &'static str {
    match value {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "a text",
        ValueRef::Blob(_) => "a blob",
    }
}

/// Whether `host` may name the host of ledger rows: at most 253 bytes of `[A-Za-z0-9._-]` (empty
/// only in a version-1 ledger's rows).
pub fn valid_host(host: &str) -> bool {
    host.len() <= MAX_HOST_LEN
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Checks a text value; the error never quotes a long value whole.
fn text_rule(rule: Rule, text: &str) -> Result<(), String> {
    let shown = || {
        let cut: String = text.chars().take(40).collect();
        let more = if cut.len() < text.len() { format!("... ({} bytes)", text.len()) } else { String::new() };
        format!("\"{}{more}\"", crate::base::escape::text(&cut))
    };
    let ok = match rule {
        Rule::Host => valid_host(text),
        Rule::Source => Source::parse(text).is_ok(),
        Rule::Service => ServiceName::new(text).is_ok(),
        Rule::ServiceSet => text.split('\n').filter(|s| !s.is_empty()).all(|s| ServiceName::new(s).is_ok()),
        Rule::Identified => Identified::parse(text).is_some(),
        Rule::Mode => text.parse::<Mode>().is_ok(),
        Rule::Verdict => text.parse::<Verdict>().is_ok(),
        Rule::Origin => super::DeclarationOrigin::parse(text).is_some(),
        Rule::FileName => text.len() <= MAX_FILE_NAME_LEN,
        Rule::Count | Rule::Hour | Rule::TimeMs | Rule::Sha256 => true,
    };
    if ok {
        return Ok(());
    }
    Err(match rule {
        Rule::Host => format!("{} is not a host name (at most 253 bytes of A-Z a-z 0-9 . - _)", shown()),
        Rule::Source => {
            format!("{} is not a service name (A-Z a-z 0-9 . - _, at most 128 bytes) or ip:ADDRESS", shown())
        }
        Rule::Service | Rule::ServiceSet => {
            format!("{} is not a service name (A-Z a-z 0-9 . - _, at most 128 bytes)", shown())
        }
        Rule::FileName => format!("a file name of {} bytes, more than {MAX_FILE_NAME_LEN}", text.len()),
        _ => format!("{} is not a value cordon writes", shown()),
    })
}

/// Checks the values of one row: `columns[i]` of table `at.table` is `row`'s column `offset + i`.
pub(crate) fn row(
    at: At<'_>,
    columns: &[&str],
    row: &rusqlite::Row<'_>,
    offset: usize,
) -> Result<(), LedgerError> {
    for (i, column) in columns.iter().enumerate() {
        let value =
            row.get_ref(offset + i).map_err(|e| super::schema::classify(at.path, "read the ledger", e))?;
        if let Some(rule) = rule(at.table, column) {
            at.value(column, rule, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_column_has_a_rule() {
        for table in super::super::spool::SHIPPED {
            for column in table.columns {
                assert!(rule(table.name, column.name).is_some(), "{}.{}", table.name, column.name);
            }
        }
    }

    #[test]
    fn values_are_checked_by_type_range_and_name() {
        let at = At { path: Path::new("l.db"), table: "edge_hour", row: 3 };
        assert!(at.value("connections", Rule::Count, ValueRef::Integer(5)).is_ok());
        for bad in [ValueRef::Integer(-1), ValueRef::Integer(i64::MAX), ValueRef::Text(b"5"), ValueRef::Null]
        {
            let e = at.value("connections", Rule::Count, bad).unwrap_err().to_string();
            assert!(e.contains("l.db") && e.contains("row 3") && e.contains("connections"), "{e}");
        }
        assert!(at.value("source", Rule::Source, ValueRef::Text(b"ip:10.0.0.7")).is_ok());
        let e = at.value("source", Rule::Source, ValueRef::Text(b"a\nb\x1b[2J")).unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
        let long = "x".repeat(1 << 20);
        let e =
            at.value("destination", Rule::Service, ValueRef::Text(long.as_bytes())).unwrap_err().to_string();
        assert!(e.len() < 400, "a long name is not quoted whole: {} bytes", e.len());
        assert!(at.value("hour", Rule::Hour, ValueRef::Integer(i64::MAX / 3_600_000)).is_err());
    }
}
