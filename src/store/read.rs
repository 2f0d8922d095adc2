//! The review reads over the store, aggregated by the server: per-edge totals (`graph`,
//! `propose`, `diff`, the report), the callers of one destination (the `cordon mode`
//! preflight) and the declared upstreams. The answers are the ledger's types, equal to what [`crate::ledger`] computes from
//! a merged ledger of the same rows.

use std::time::SystemTime;

use tokio_postgres::{Client, Row};

use super::StoreError;
use crate::ledger::{Declaration, DeclarationOrigin, EdgeTotals, ObservedCaller};
use crate::policy::{Identified, Mode};

/// Sums as bigint, saturating as the ledger's reader does.
const SUM: &str = "LEAST(coalesce(sum({c}), 0), 9223372036854775807)::bigint";

fn sum(column: &str) -> String {
    SUM.replace("{c}", column)
}

fn since_hour(since: Option<SystemTime>) -> i64 {
    since.map(|t| crate::ledger::unix_ms(t).div_euclid(3_600_000)).unwrap_or(i64::MIN)
}

/// Memory for the sorts and hashes of one review read: the default (4 MB) sends a fleet's
/// aggregation to temporary files on disk.
const REVIEW_WORK_MEM: &str = "SET work_mem = '64MB'";

/// A number for the UTC day of `hour`, distinct per day: integer division, a quarter faster
/// than `div()` (numeric). The offset makes it floor division for the hours before 1970 a
/// store could hold (cordon records those as 1970), back to 270,000 years before it.
const DAY: &str = "((hour + 2400000000) / 24)";

/// Every edge recorded since `since`, as [`crate::ledger::edge_totals`] returns it.
///
/// Aggregated in two steps, per edge and day, then per edge, so that no aggregate needs
/// `DISTINCT` (which forces a sort of every row): the days seen are the rows of the first step,
/// the modes two flags. Each step sums to a saturated bigint, so the second sums bigints (a
/// running int128) rather than numerics; a day that saturates saturates the total, as the
/// ledger's reader does.
pub async fn edge_totals(
    client: &Client,
    url: &str,
    since: Option<SystemTime>,
) -> Result<Vec<EdgeTotals>, StoreError> {
    // Per edge: its seen rows when it has any, else its claimed ones (the edge is then claimed).
    let pick = |agg: &str| {
        format!(
            "CASE WHEN bool_or(seen) THEN {} ELSE {} END",
            agg.replace("{f}", " FILTER (WHERE seen)"),
            agg.replace("{f}", "")
        )
    };
    let total = |c: &str| pick(&format!("LEAST(coalesce(sum({c}){{f}}, 0), 9223372036854775807)::bigint"));
    let sql = format!(
        "SELECT source, destination, identified, {conns}, {btd}, {bts}, {fs}, {ls}, {days},
                {allowed}, {would_deny}, {denied}, {learn}, {enforce}, {other}, NOT bool_or(seen)
         FROM (SELECT source, destination, identified, evidence <> 'claimed' AS seen, {day_conns} AS c,
                      {day_btd} AS btd, {day_bts} AS bts,
                      min(first_seen) AS fs, max(last_seen) AS ls,
                      {day_allowed} AS allowed, {day_would_deny} AS would_deny, {day_denied} AS denied,
                      bool_or(mode = 'learn') AS learn, bool_or(mode = 'enforce') AS enforce,
                      bool_or(mode NOT IN ('learn', 'enforce')) AS other
               FROM edge_hour WHERE hour >= $1
               GROUP BY source, destination, identified, {day}, evidence <> 'claimed') AS per_day
         GROUP BY source, destination, identified",
        conns = total("c"),
        btd = total("btd"),
        bts = total("bts"),
        fs = pick("min(fs){f}"),
        ls = pick("max(ls){f}"),
        days = pick("count(*){f}::bigint"),
        allowed = total("allowed"),
        would_deny = total("would_deny"),
        denied = total("denied"),
        learn = pick("bool_or(learn){f}"),
        enforce = pick("bool_or(enforce){f}"),
        other = pick("bool_or(other){f}"),
        day = DAY,
        day_conns = sum("connections"),
        day_btd = sum("bytes_to_destination"),
        day_bts = sum("bytes_to_source"),
        day_allowed = sum("connections) FILTER (WHERE verdict = 'allow'"),
        day_would_deny = sum("connections) FILTER (WHERE verdict = 'deny' AND mode = 'learn'"),
        day_denied = sum("connections) FILTER (WHERE verdict = 'deny' AND mode = 'enforce'"),
    );
    let fail = |source| StoreError::Sql { url: url.to_owned(), what: "read the fleet graph", source };
    client.batch_execute(REVIEW_WORK_MEM).await.map_err(fail)?;
    let rows = client.query(sql.as_str(), &[&since_hour(since)]).await.map_err(fail)?;
    let mut edges = rows.iter().map(|r| edge(url, r)).collect::<Result<Vec<_>, _>>()?;
    edges.sort_by(|a, b| {
        (&a.destination, &a.source, a.identified).cmp(&(&b.destination, &b.source, b.identified))
    });
    Ok(edges)
}

/// Every caller recorded for `destination` since `since`, as [`crate::ledger::callers_into`].
pub async fn callers_into(
    client: &Client,
    url: &str,
    destination: &str,
    since: Option<SystemTime>,
) -> Result<Vec<ObservedCaller>, StoreError> {
    // As for the graph: a caller's seen rows when it has any, else its claims (then claimed).
    let pick = |agg: &str| {
        format!(
            "CASE WHEN bool_or(evidence <> 'claimed') THEN {} ELSE {} END",
            agg.replace("{f}", " AND evidence <> 'claimed'"),
            agg.replace("{f}", "")
        )
    };
    let total = |c: &str, when: &str| {
        pick(&format!("LEAST(coalesce(sum({c}) FILTER (WHERE {when}{{f}}), 0), 9223372036854775807)::bigint"))
    };
    let sql = format!(
        "SELECT source, identified, {conns}, {fs}, {ls}, {days}, {to_dst}, {to_src}, {denied},
                NOT bool_or(evidence <> 'claimed')
         FROM edge_hour WHERE hour >= $1 AND destination = $2 GROUP BY source, identified",
        conns = total("connections", "true"),
        fs = pick("min(first_seen) FILTER (WHERE true{f})"),
        ls = pick("max(last_seen) FILTER (WHERE true{f})"),
        days = pick("count(DISTINCT div(hour, 24)) FILTER (WHERE true{f})::bigint"),
        to_dst = total("bytes_to_destination", "true"),
        to_src = total("bytes_to_source", "true"),
        denied = total("connections", "verdict = 'deny' AND mode = 'enforce'"),
    );
    let rows = client
        .query(sql.as_str(), &[&since_hour(since), &destination])
        .await
        .map_err(|source| StoreError::Sql { url: url.to_owned(), what: "read the callers", source })?;
    let mut callers = Vec::with_capacity(rows.len());
    for r in &rows {
        callers.push(ObservedCaller {
            source: r.get(0),
            identified: identified(url, r.get(1))?,
            connections: count(r.get(2)),
            first_seen: crate::ledger::from_ms(r.get(3)),
            last_seen: crate::ledger::from_ms(r.get(4)),
            days_seen: u32::try_from(r.get::<_, i64>(5)).unwrap_or(u32::MAX),
            bytes_to_destination: count(r.get(6)),
            bytes_to_source: count(r.get(7)),
            denied: count(r.get(8)),
            claimed: r.get::<_, Option<bool>>(9) == Some(true),
        });
    }
    callers.sort_by(|a, b| (&a.source, a.identified).cmp(&(&b.source, b.identified)));
    Ok(callers)
}

/// Every declaration in the store, as [`crate::ledger::declarations`] returns them from a merged
/// ledger: sorted by identity, host and origin, each with its services sorted.
pub async fn declarations(client: &Client, url: &str) -> Result<Vec<Declaration>, StoreError> {
    let rows = client
        .query("SELECT host, identity, origin, declared_at, services FROM declarer", &[])
        .await
        .map_err(|source| StoreError::Sql { url: url.to_owned(), what: "read the declarations", source })?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let origin: String = r.get(2);
        let origin = DeclarationOrigin::parse(&origin).ok_or_else(|| StoreError::BadRow {
            url: url.to_owned(),
            table: "declarer",
            column: "origin",
            value: origin.clone(),
        })?;
        let mut services: Vec<String> = r.get(4);
        services.sort_unstable();
        services.dedup();
        out.push(Declaration {
            host: r.get(0),
            identity: r.get(1),
            origin,
            declared_at: crate::ledger::from_ms(r.get(3)),
            services,
        });
    }
    // Sorted here, not by the server: its collation need not order text as the ledger does.
    out.sort_by(|a, b| (&a.identity, &a.host, a.origin).cmp(&(&b.identity, &b.host, b.origin)));
    Ok(out)
}

fn edge(url: &str, r: &Row) -> Result<EdgeTotals, StoreError> {
    if r.get::<_, Option<bool>>(14) == Some(true) {
        return Err(StoreError::BadRow {
            url: url.to_owned(),
            table: "edge_hour",
            column: "mode",
            value: format!(
                "not learn or enforce, for {} -> {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1)
            ),
        });
    }
    let mut modes = Vec::new();
    if r.get::<_, Option<bool>>(12) == Some(true) {
        modes.push(Mode::Learn);
    }
    if r.get::<_, Option<bool>>(13) == Some(true) {
        modes.push(Mode::Enforce);
    }
    modes.sort();
    Ok(EdgeTotals {
        source: r.get(0),
        destination: r.get(1),
        identified: identified(url, r.get(2))?,
        connections: count(r.get(3)),
        bytes_to_destination: count(r.get(4)),
        bytes_to_source: count(r.get(5)),
        first_seen: crate::ledger::from_ms(r.get(6)),
        last_seen: crate::ledger::from_ms(r.get(7)),
        days_seen: u32::try_from(r.get::<_, i64>(8)).unwrap_or(u32::MAX),
        allowed: count(r.get(9)),
        would_deny: count(r.get(10)),
        denied: count(r.get(11)),
        modes,
        claimed: r.get::<_, Option<bool>>(15) == Some(true),
    })
}

fn identified(url: &str, value: String) -> Result<Identified, StoreError> {
    Identified::parse(&value).ok_or_else(|| StoreError::BadRow {
        url: url.to_owned(),
        table: "edge_hour",
        column: "identified",
        value,
    })
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
