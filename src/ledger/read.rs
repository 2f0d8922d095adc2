//! Read queries over a ledger: per-edge totals for the review commands and the callers of one
//! destination for the `cordon mode` preflight. Read-only connections; never blocks the agent.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Row;
use rusqlite::types::ValueRef;

use super::check;
use super::schema::{self, classify};
use super::{LedgerError, recorder::unix_ms};
use crate::base::{Identified, Mode, Outcome, Verdict};

/// A caller of one destination as the ledger recorded it, summed over the window asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedCaller {
    /// Service name, or `ip:A.B.C.D`.
    pub source: String,
    pub identified: Identified,
    pub connections: u64,
    /// Bytes each way (both 0: only probes).
    pub bytes_to_destination: u64,
    pub bytes_to_source: u64,
    /// Connections refused in enforce mode (no byte could cross them).
    pub denied: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Distinct days with traffic (a caller seen on one or two days is a periodic job).
    pub days_seen: u32,
    /// Only the caller says so (the fleet store's *claimed* evidence: no record of the
    /// destination's own, nor an operator's); the figures above are then its claims. A ledger
    /// file's rows are never claimed.
    pub claimed: bool,
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
    /// Only its source says so (the fleet store's *claimed* evidence); the figures above are
    /// then the source's claims. A ledger file's edges are never claimed.
    pub claimed: bool,
}

/// Every edge recorded since `since` (the whole history when `None`), sorted by destination,
/// source and identification.
pub fn edge_totals(db: &Path, since: Option<SystemTime>) -> Result<Vec<EdgeTotals>, LedgerError> {
    // Names are interned so that the million rows of a big fleet ledger cost no allocation each.
    let mut names = Interner::default();
    let mut index: HashMap<(u32, u32, Identified), usize> = HashMap::new();
    let mut edges: Vec<EdgeTotals> = Vec::new();
    let mut days = DaySet::default();
    scan(db, None, since, |r| {
        let key = (names.id(r.source), names.id(r.destination), r.identified);
        let i = *index.entry(key).or_insert_with(|| {
            edges.push(EdgeTotals {
                source: r.source.to_owned(),
                destination: r.destination.to_owned(),
                identified: r.identified,
                connections: 0,
                bytes_to_destination: 0,
                bytes_to_source: 0,
                first_seen: from_ms(r.first_ms),
                last_seen: from_ms(r.last_ms),
                days_seen: 0,
                allowed: 0,
                would_deny: 0,
                denied: 0,
                modes: Vec::new(),
                claimed: false,
            });
            edges.len() - 1
        });
        let edge = &mut edges[i];
        edge.connections = edge.connections.saturating_add(r.connections);
        edge.bytes_to_destination = edge.bytes_to_destination.saturating_add(r.bytes_to_destination);
        edge.bytes_to_source = edge.bytes_to_source.saturating_add(r.bytes_to_source);
        edge.first_seen = edge.first_seen.min(from_ms(r.first_ms));
        edge.last_seen = edge.last_seen.max(from_ms(r.last_ms));
        match Outcome::of(r.mode, r.verdict) {
            Outcome::Allowed => edge.allowed = edge.allowed.saturating_add(r.connections),
            Outcome::WouldDeny => edge.would_deny = edge.would_deny.saturating_add(r.connections),
            Outcome::Denied => edge.denied = edge.denied.saturating_add(r.connections),
        }
        if !edge.modes.contains(&r.mode) {
            edge.modes.push(r.mode);
            edge.modes.sort();
        }
        if days.insert(i, r.hour) {
            edge.days_seen = edge.days_seen.saturating_add(1);
        }
    })?;
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
    let mut index: HashMap<(String, Identified), usize> = HashMap::new();
    let mut callers: Vec<ObservedCaller> = Vec::new();
    let mut days = DaySet::default();
    scan(db, Some(destination), since, |r| {
        let i = *index.entry((r.source.to_owned(), r.identified)).or_insert_with(|| {
            callers.push(ObservedCaller {
                source: r.source.to_owned(),
                identified: r.identified,
                connections: 0,
                bytes_to_destination: 0,
                bytes_to_source: 0,
                denied: 0,
                first_seen: from_ms(r.first_ms),
                last_seen: from_ms(r.last_ms),
                days_seen: 0,
                claimed: false,
            });
            callers.len() - 1
        });
        let caller = &mut callers[i];
        caller.connections = caller.connections.saturating_add(r.connections);
        caller.bytes_to_destination = caller.bytes_to_destination.saturating_add(r.bytes_to_destination);
        caller.bytes_to_source = caller.bytes_to_source.saturating_add(r.bytes_to_source);
        if Outcome::of(r.mode, r.verdict) == Outcome::Denied {
            caller.denied = caller.denied.saturating_add(r.connections);
        }
        caller.first_seen = caller.first_seen.min(from_ms(r.first_ms));
        caller.last_seen = caller.last_seen.max(from_ms(r.last_ms));
        if days.insert(i, r.hour) {
            caller.days_seen = caller.days_seen.saturating_add(1);
        }
    })?;
    callers.sort_by(|a, b| (&a.source, a.identified).cmp(&(&b.source, b.identified)));
    Ok(callers)
}

/// The distinct UTC days each group was seen on.
#[derive(Default)]
struct DaySet {
    seen: HashSet<(usize, i64)>,
}

impl DaySet {
    /// Records that group `i` had traffic in `hour`; true when that day is new for it.
    fn insert(&mut self, i: usize, hour: i64) -> bool {
        self.seen.insert((i, hour.div_euclid(24)))
    }
}

/// Small integer ids for names, looked up without allocating.
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(name.to_owned(), id);
        id
    }
}

/// One stored row, borrowed from SQLite.
struct RawRow<'a> {
    source: &'a str,
    destination: &'a str,
    identified: Identified,
    mode: Mode,
    verdict: Verdict,
    hour: i64,
    connections: u64,
    bytes_to_destination: u64,
    bytes_to_source: u64,
    first_ms: i64,
    last_ms: i64,
}

/// Calls `each` for every row since `since` (of one destination, if given). A plain scan:
/// grouping in SQLite would sort a million rows; grouping in memory is several times faster.
fn scan(
    db: &Path,
    destination: Option<&str>,
    since: Option<SystemTime>,
    mut each: impl FnMut(&RawRow<'_>),
) -> Result<(), LedgerError> {
    let opened = schema::open_read(db)?;
    if opened.version == 0 {
        return Ok(());
    }
    let since_hour = since.map(|t| unix_ms(t).div_euclid(3_600_000)).unwrap_or(i64::MIN);
    let sql = "SELECT source, destination, identified, mode, verdict, hour, connections,
                      bytes_to_destination, bytes_to_source, first_seen, last_seen
               FROM edge_hour WHERE hour >= ?1 AND (?2 IS NULL OR destination = ?2)";
    let err = |e| classify(db, "read the ledger", e);
    let mut stmt = opened.conn.prepare(sql).map_err(err)?;
    let mut rows = stmt.query(rusqlite::params![since_hour, destination]).map_err(err)?;
    let mut number = 0;
    while let Some(row) = rows.next().map_err(err)? {
        number += 1;
        each(&raw_row(db, row, number)?);
    }
    Ok(())
}

/// The columns [`scan`] selects, in order.
const SCANNED: [&str; 11] = [
    "source",
    "destination",
    "identified",
    "mode",
    "verdict",
    "hour",
    "connections",
    "bytes_to_destination",
    "bytes_to_source",
    "first_seen",
    "last_seen",
];

/// The `number`th row read, after checking every value (`ledger::check`).
fn raw_row<'a>(db: &Path, row: &'a Row<'_>, number: u64) -> Result<RawRow<'a>, LedgerError> {
    check::row(check::At { path: db, table: "edge_hour", row: number }, &SCANNED, row, 0)?;
    let err = |e| classify(db, "read the ledger", e);
    let bad = |column: &'static str, value: &str| LedgerError::BadRow {
        path: db.to_owned(),
        table: "edge_hour",
        column,
        value: value.to_owned(),
    };
    let text = |i: usize, column: &'static str| -> Result<&'a str, LedgerError> {
        match row.get_ref(i).map_err(err)? {
            ValueRef::Text(t) => std::str::from_utf8(t).map_err(|_| bad(column, "(not UTF-8)")),
            other => Err(bad(column, &format!("{:?}", other.data_type()))),
        }
    };
    let int = |i: usize| -> Result<i64, LedgerError> { row.get::<_, i64>(i).map_err(err) };
    // Checked above: 0..=MAX_COUNT.
    let count = |i: usize| -> Result<u64, LedgerError> { Ok(u64::try_from(int(i)?).unwrap_or(0)) };
    let identified = text(2, "identified")?;
    let mode = text(3, "mode")?;
    let verdict = text(4, "verdict")?;
    Ok(RawRow {
        source: text(0, "source")?,
        destination: text(1, "destination")?,
        identified: Identified::parse(identified).ok_or_else(|| bad("identified", identified))?,
        mode: mode.parse().map_err(|_| bad("mode", mode))?,
        verdict: verdict.parse().map_err(|_| bad("verdict", verdict))?,
        hour: int(5)?,
        connections: count(6)?,
        bytes_to_destination: count(7)?,
        bytes_to_source: count(8)?,
        first_ms: int(9)?,
        last_ms: int(10)?,
    })
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
