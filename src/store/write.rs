//! Writing shipped rows: one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE` per batch,
//! built from the table's description, combining each column as `cordon merge` does (counters
//! keep the larger value, first seen the earlier, a declaration the newer). Shipping the same rows again, or an older copy
//! of them, changes nothing; a bucket shipped while open and again once closed ends at its final
//! totals.

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::StoreError;
use super::schema::Partitions;
use crate::ledger::spool::{Batch, Combine, Kind, Table, Values};

/// The upsert statement for `table`; its parameters are one array per column (a
/// [`Kind::TextSet`] as newline-separated texts, split into the `text[]` it is stored as).
pub fn upsert_sql(table: &Table) -> String {
    let mut names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    let mut arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = match c.kind {
                Kind::Text | Kind::TextSet => "text",
                Kind::Int => "bigint",
                Kind::Bytes => "bytea",
            };
            format!("${}::{ty}[]", i + 1)
        })
        .collect();
    let mut select: Vec<String> = table
        .columns
        .iter()
        .map(|c| match c.kind {
            Kind::TextSet => format!("string_to_array(u.{}, E'\\n')", c.name),
            _ => format!("u.{}", c.name),
        })
        .collect();
    let key: Vec<&str> = table.key().map(|c| c.name).collect();
    let mut targets = Vec::new();
    let mut values = Vec::new();
    for c in table.columns {
        let n = c.name;
        let value = match c.combine {
            Combine::Key => continue,
            Combine::Max => format!("GREATEST(t.{n}, EXCLUDED.{n})"),
            Combine::Min => format!("LEAST(t.{n}, EXCLUDED.{n})"),
            Combine::FromMin(by) => format!(
                "CASE WHEN EXCLUDED.{by} < t.{by} OR (EXCLUDED.{by} = t.{by} AND EXCLUDED.{n} < t.{n}) \
                 THEN EXCLUDED.{n} ELSE t.{n} END"
            ),
            Combine::Newest(by) => {
                let tie = match c.kind {
                    Kind::TextSet => format!(
                        "ARRAY(SELECT s FROM unnest(t.{n} || EXCLUDED.{n}) AS s GROUP BY s ORDER BY s COLLATE \"C\")"
                    ),
                    _ => format!("GREATEST(t.{n}, EXCLUDED.{n})"),
                };
                format!(
                    "CASE WHEN EXCLUDED.{by} > t.{by} THEN EXCLUDED.{n} WHEN EXCLUDED.{by} < t.{by} THEN t.{n} \
                     ELSE {tie} END"
                )
            }
        };
        targets.push(format!("t.{n}"));
        values.push(value);
    }
    for (i, (n, combine)) in stamp_columns(table).iter().enumerate() {
        names.push(n);
        arrays.push(format!("${}::text[]", table.columns.len() + i + 1));
        select.push(format!("u.{n}"));
        targets.push(format!("t.{n}"));
        values.push((*combine).to_owned());
    }
    let set: Vec<String> = table
        .columns
        .iter()
        .filter(|c| c.combine != Combine::Key)
        .zip(&values)
        .map(|(c, v)| format!("{} = {v}", c.name))
        .chain(stamp_columns(table).iter().map(|(n, v)| format!("{n} = {v}")))
        .collect();
    format!(
        "INSERT INTO {t} AS t ({names}) SELECT {select} FROM unnest({arrays}) AS u({names})
         ON CONFLICT ({key}) DO UPDATE SET {set}
         WHERE ROW({targets}) IS DISTINCT FROM ROW({values})",
        t = table.name,
        names = names.join(", "),
        select = select.join(", "),
        arrays = arrays.join(", "),
        key = key.join(", "),
        set = set.join(", "),
        targets = targets.join(", "),
        values = values.join(", "),
    )
}

/// The store-only columns of `table` (schema version 3) and how a new copy combines with the
/// held one: the latest shipper, and an edge stays `seen` once anyone entitled to say so has.
fn stamp_columns(table: &Table) -> &'static [(&'static str, &'static str)] {
    match table.name {
        "edge_hour" => &[
            ("shipper", "EXCLUDED.shipper"),
            (
                "evidence",
                "CASE WHEN t.evidence = 'seen' OR EXCLUDED.evidence = 'seen' THEN 'seen' ELSE 'claimed' END",
            ),
        ],
        "declarer" => &[("shipper", "EXCLUDED.shipper")],
        _ => &[],
    }
}

/// Who shipped each row of a batch, as stored: the shipping identity (or
/// [`super::rules::OPERATOR`]) and, for an edge, its evidence.
#[derive(Debug, Clone, Copy)]
pub struct Stamps<'a> {
    pub shipper: &'a [String],
    pub evidence: &'a [String],
}

/// Writes one batch shipped with operator credentials: every row stamped `operator`, every edge
/// `seen`.
pub async fn ship(
    client: &mut Client,
    url: &str,
    partitions: &mut Partitions,
    batch: &Batch,
) -> Result<u64, StoreError> {
    let shipper = vec![super::rules::OPERATOR.to_owned(); batch.len()];
    let evidence = vec!["seen".to_owned(); batch.len()];
    ship_stamped(client, url, partitions, batch, Stamps { shipper: &shipper, evidence: &evidence }).await
}

/// Writes one batch (creating the day partitions it needs first). The statement is atomic: on
/// any error nothing of the batch is in the store, and shipping it again is safe.
pub async fn ship_stamped(
    client: &mut Client,
    url: &str,
    partitions: &mut Partitions,
    batch: &Batch,
    stamps: Stamps<'_>,
) -> Result<u64, StoreError> {
    let table = batch.table;
    if let Some(hour) = table.hour_column
        && let Some(Values::Int(hours)) =
            table.columns.iter().position(|c| c.name == hour).and_then(|i| batch.columns.get(i))
    {
        partitions.ensure(client, url, table, hours).await?;
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = batch
        .columns
        .iter()
        .map(|v| match v {
            Values::Text(v) => v as &(dyn ToSql + Sync),
            Values::Int(v) => v as &(dyn ToSql + Sync),
            Values::Bytes(v) => v as &(dyn ToSql + Sync),
        })
        .collect();
    for (name, _) in stamp_columns(table) {
        params.push(if *name == "evidence" { &stamps.evidence } else { &stamps.shipper });
    }
    client.execute(upsert_sql(table).as_str(), &params).await.map_err(|source| StoreError::Sql {
        url: url.to_owned(),
        what: "write shipped rows",
        source,
    })?;
    Ok(batch.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::spool::{DECLARER, EDGE_HOUR, IMPORTED_PREFIX};

    #[test]
    fn the_upsert_combines_columns_as_merge_does() {
        let sql = upsert_sql(&EDGE_HOUR);
        assert!(sql.contains("connections = GREATEST(t.connections, EXCLUDED.connections)"), "{sql}");
        assert!(sql.contains("first_seen = LEAST(t.first_seen, EXCLUDED.first_seen)"), "{sql}");
        assert!(
            sql.contains("ON CONFLICT (host, hour, source, destination, identified, mode, verdict)"),
            "{sql}"
        );
        assert!(sql.contains("$12::bigint[]"), "{sql}");
        let sql = upsert_sql(&IMPORTED_PREFIX);
        assert!(sql.contains("$2::bytea[]") && sql.contains("EXCLUDED.imported_at < t.imported_at"), "{sql}");
        let sql = upsert_sql(&DECLARER);
        assert!(sql.contains("ON CONFLICT (host, identity, origin)"), "{sql}");
        assert!(sql.contains("string_to_array(u.services, E'\\n')"), "{sql}");
        assert!(
            sql.contains("services = CASE WHEN EXCLUDED.declared_at > t.declared_at THEN EXCLUDED.services"),
            "{sql}"
        );
    }
}
