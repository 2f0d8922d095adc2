//! Read queries over a ledger: per-edge totals for the review commands and the callers of one
//! destination for the `cordon mode` preflight. Read-only connections; never blocks the agent.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Row;

use super::schema::{self, classify};
use super::{LedgerError, recorder::unix_ms};
use crate::policy::{Identified, Mode, Outcome, Verdict};

/// A caller of one destination as the ledger recorded it, summed over the window asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedCaller {
    /// Service name, or `ip:A.B.C.D`.
    pub source: String,
    pub identified: Identified,
    pub connections: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Distinct days with traffic (a caller seen on one or two days is a periodic job).
    pub days_seen: u32,
}

/// One edge (source, destination, how identified) summed over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTotals {
    pub source: String,
    pub destination: String,
    pub identified: Identified,
    /// Connections opened.
    pub connections: u64,
    pub bytes_to_destination: u64,
    pub bytes_to_source: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Distinct UTC days with traffic.
    pub days_seen: u32,
    /// Connections that passed and the policy allowed.
    pub allowed: u64,
    /// Connections that passed in learn mode but the policy would have denied.
    pub would_deny: u64,
    /// Connections refused in enforce mode.
    pub denied: u64,
    /// The destination's modes while this edge was recorded, sorted.
    pub modes: Vec<Mode>,
}

/// Every edge recorded since `since` (the whole history when `None`), sorted by destination,
/// source and identification.
pub fn edge_totals(db: &Path, since: Option<SystemTime>) -> Result<Vec<EdgeTotals>, LedgerError> {
    let mut groups: HashMap<(String, String, Identified), (EdgeTotals, Vec<i64>)> = HashMap::new();
    query_days(db, None, since, |g| {
        let key = (g.source, g.destination, g.identified);
        let (edge, days) = groups.entry(key.clone()).or_insert_with(|| {
            (
                EdgeTotals {
                    source: key.0,
                    destination: key.1,
                    identified: key.2,
                    connections: 0,
                    bytes_to_destination: 0,
                    bytes_to_source: 0,
                    first_seen: from_ms(g.first_ms),
                    last_seen: from_ms(g.last_ms),
                    days_seen: 0,
                    allowed: 0,
                    would_deny: 0,
                    denied: 0,
                    modes: Vec::new(),
                },
                Vec::new(),
            )
        });
        edge.connections += g.connections;
        edge.bytes_to_destination += g.bytes_to_destination;
        edge.bytes_to_source += g.bytes_to_source;
        edge.first_seen = edge.first_seen.min(from_ms(g.first_ms));
        edge.last_seen = edge.last_seen.max(from_ms(g.last_ms));
        match Outcome::of(g.mode, g.verdict) {
            Outcome::Allowed => edge.allowed += g.connections,
            Outcome::WouldDeny => edge.would_deny += g.connections,
            Outcome::Denied => edge.denied += g.connections,
        }
        if !edge.modes.contains(&g.mode) {
            edge.modes.push(g.mode);
            edge.modes.sort();
        }
        if !days.contains(&g.day) {
            days.push(g.day);
        }
    })?;
    let mut edges: Vec<EdgeTotals> = groups
        .into_values()
        .map(|(mut e, days)| {
            e.days_seen = u32::try_from(days.len()).unwrap_or(u32::MAX);
            e
        })
        .collect();
    edges.sort_by(|a, b| {
        (&a.destination, &a.source, a.identified).cmp(&(&b.destination, &b.source, b.identified))
    });
    Ok(edges)
}

/// Every caller recorded for `destination` since `since` (the whole history when `None`).
/// Opens the ledger read-only; the agent writing it at the same time is fine.
pub fn callers_into(
    db: &Path,
    destination: &str,
    since: Option<SystemTime>,
) -> Result<Vec<ObservedCaller>, LedgerError> {
    let mut groups: HashMap<(String, Identified), (ObservedCaller, Vec<i64>)> = HashMap::new();
    query_days(db, Some(destination), since, |g| {
        let (caller, days) = groups.entry((g.source.clone(), g.identified)).or_insert_with(|| {
            let caller = ObservedCaller {
                source: g.source,
                identified: g.identified,
                connections: 0,
                first_seen: from_ms(g.first_ms),
                last_seen: from_ms(g.last_ms),
                days_seen: 0,
            };
            (caller, Vec::new())
        });
        caller.connections += g.connections;
        caller.first_seen = caller.first_seen.min(from_ms(g.first_ms));
        caller.last_seen = caller.last_seen.max(from_ms(g.last_ms));
        if !days.contains(&g.day) {
            days.push(g.day);
        }
    })?;
    let mut callers: Vec<ObservedCaller> = groups
        .into_values()
        .map(|(mut c, days)| {
            c.days_seen = u32::try_from(days.len()).unwrap_or(u32::MAX);
            c
        })
        .collect();
    callers.sort_by(|a, b| (&a.source, a.identified).cmp(&(&b.source, b.identified)));
    Ok(callers)
}

/// One (edge, mode, verdict, day) group as SQLite sums it.
struct DayGroup {
    source: String,
    destination: String,
    identified: Identified,
    mode: Mode,
    verdict: Verdict,
    day: i64,
    connections: u64,
    bytes_to_destination: u64,
    bytes_to_source: u64,
    first_ms: i64,
    last_ms: i64,
}

fn query_days(
    db: &Path,
    destination: Option<&str>,
    since: Option<SystemTime>,
    mut each: impl FnMut(DayGroup),
) -> Result<(), LedgerError> {
    let opened = schema::open_read(db)?;
    if opened.version == 0 {
        return Ok(());
    }
    let since_hour = since.map(|t| unix_ms(t).div_euclid(3_600_000)).unwrap_or(i64::MIN);
    let sql = format!(
        "SELECT source, destination, identified, mode, verdict, hour / 24 AS day,
                SUM(connections), SUM(bytes_to_destination), SUM(bytes_to_source),
                MIN(first_seen), MAX(last_seen)
         FROM edge_hour WHERE hour >= ?1 {}
         GROUP BY source, destination, identified, mode, verdict, day",
        if destination.is_some() { "AND destination = ?2" } else { "AND ?2 IS NULL" }
    );
    let err = |e| classify(db, "read the ledger", e);
    let mut stmt = opened.conn.prepare(&sql).map_err(err)?;
    let mut rows = stmt.query(rusqlite::params![since_hour, destination]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        each(day_group(db, row)?);
    }
    Ok(())
}

fn day_group(db: &Path, row: &Row<'_>) -> Result<DayGroup, LedgerError> {
    let err = |e| classify(db, "read the ledger", e);
    let text = |i: usize| -> Result<String, LedgerError> { row.get::<_, String>(i).map_err(err) };
    let bad =
        |column: &'static str, value: String| LedgerError::BadRow { path: db.to_owned(), column, value };
    let identified = text(2)?;
    let mode = text(3)?;
    let verdict = text(4)?;
    let count = |i: usize| -> Result<u64, LedgerError> {
        Ok(u64::try_from(row.get::<_, i64>(i).map_err(err)?).unwrap_or(0))
    };
    Ok(DayGroup {
        source: text(0)?,
        destination: text(1)?,
        identified: Identified::parse(&identified).ok_or_else(|| bad("identified", identified.clone()))?,
        mode: mode.parse().map_err(|_| bad("mode", mode.clone()))?,
        verdict: verdict.parse().map_err(|_| bad("verdict", verdict.clone()))?,
        day: row.get(5).map_err(err)?,
        connections: count(6)?,
        bytes_to_destination: count(7)?,
        bytes_to_source: count(8)?,
        first_ms: row.get(9).map_err(err)?,
        last_ms: row.get(10).map_err(err)?,
    })
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
