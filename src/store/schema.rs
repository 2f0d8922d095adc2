//! The store's schema, its version, its migration and its time partitions.
//!
//! Version 1:
//!
//! ```sql
//! CREATE TABLE cordon_schema (one boolean PRIMARY KEY DEFAULT true CHECK (one), version integer NOT NULL);
//! CREATE TABLE edge_hour (           -- the columns of the ledger's edge_hour, with bigint integers
//!     host text, hour bigint, source text, destination text, identified text, mode text, verdict text,
//!     connections bigint, bytes_to_destination bigint, bytes_to_source bigint,
//!     first_seen bigint, last_seen bigint,
//!     PRIMARY KEY (host, hour, source, destination, identified, mode, verdict)
//! ) PARTITION BY RANGE (hour);       -- one partition a UTC day: edge_hour_d<day number>
//! CREATE TABLE imported_prefix (len bigint, sha256 bytea, lines bigint, file text,
//!     imported_at bigint, PRIMARY KEY (len, sha256));
//! ```
//!
//! Version 2 adds the declared upstreams, one row per (host, identity, origin) with its services
//! (the ledger's `declarer` and `declared_upstream` in one):
//!
//! ```sql
//! CREATE TABLE declarer (host text, identity text, origin text, declared_at bigint,
//!     services text[], PRIMARY KEY (host, identity, origin));
//! ```
//!
//! Version 3 stamps each row with the identity that shipped it (`shipper`: a service, or
//! `operator`) and each edge with its `evidence` (`seen` or `claimed`), adds CHECK constraints on
//! every value, and creates day partitions only through `cordon_add_partitions`
//! ([`super::roles`] has the SQL and the roles).
//!
//! The tables are made from their descriptions in [`crate::ledger::spool::SHIPPED`]; a table
//! appears in the version its `store_version` names.
//! Every cordon that connects checks the version; the first one to find an older (or no)
//! schema migrates it while holding a transaction-scoped advisory lock, so hundreds of agents
//! starting at once migrate it once and the others wait, then find it current. A version newer
//! than this cordon knows is refused with [`StoreError::TooNew`] and nothing is written.
//! Partitions are created on demand under another advisory lock; `cordon store prune` drops the
//! partitions wholly older than its cut-off and deletes the older rows of the one it cuts.

use std::collections::HashSet;

use tokio_postgres::Client;

use super::StoreError;
use crate::ledger::spool::{Column, Kind, SHIPPED, Table};

/// The store schema version this cordon writes.
pub const CURRENT_VERSION: i32 = 3;
/// Advisory lock key held while migrating ("cordon-m").
const MIGRATE_LOCK: i64 = 0x636f_7264_6f6e_2d6d;
/// Advisory lock key held while creating partitions ("cordon-p").
pub(super) const PARTITION_LOCK: i64 = 0x636f_7264_6f6e_2d70;
/// Hours in a partition.
const PARTITION_HOURS: i64 = 24;

/// Checks the store's schema version and migrates an older one; refuses a newer one.
pub async fn ensure(client: &mut Client, url: &str) -> Result<(), StoreError> {
    let sql = |what| move |source| StoreError::Sql { url: url.to_owned(), what, source };
    // The common case, without waiting for a lock: the schema is already current.
    if let Some(version) = version(client, url).await? {
        check_version(version, url)?;
        if version == CURRENT_VERSION {
            return Ok(());
        }
    }
    let tx = client.transaction().await.map_err(sql("begin the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(sql("take the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS cordon_schema (
            one boolean PRIMARY KEY DEFAULT true CHECK (one), version integer NOT NULL)",
    )
    .await
    .map_err(sql("create the version table"))?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM cordon_schema", &[])
        .await
        .map_err(sql("read the schema version"))?
        .map(|r| r.get(0));
    let found = found.unwrap_or(0);
    check_version(found, url)?;
    for table in SHIPPED.iter().filter(|t| found < t.store_version) {
        tx.batch_execute(&create_sql(table)).await.map_err(sql("create the tables"))?;
    }
    if found < 3 {
        tx.batch_execute(&super::roles::migration_sql()).await.map_err(sql("add the value checks"))?;
    }
    tx.execute(
        "INSERT INTO cordon_schema (version) VALUES ($1) ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
        &[&CURRENT_VERSION],
    )
    .await
    .map_err(sql("record the schema version"))?;
    tx.commit().await.map_err(sql("commit the migration"))
}

/// The schema version, or `None` when the store has no cordon schema yet.
pub async fn version(client: &Client, url: &str) -> Result<Option<i32>, StoreError> {
    let sql = |what| move |source| StoreError::Sql { url: url.to_owned(), what, source };
    let exists: bool = client
        .query_one("SELECT to_regclass('cordon_schema') IS NOT NULL", &[])
        .await
        .map_err(sql("look for the schema"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT version FROM cordon_schema", &[])
        .await
        .map_err(sql("read the schema version"))?;
    Ok(row.map(|r| r.get(0)))
}

fn check_version(found: i32, url: &str) -> Result<(), StoreError> {
    if found > CURRENT_VERSION {
        return Err(StoreError::TooNew { url: url.to_owned(), found, supported: CURRENT_VERSION });
    }
    Ok(())
}

fn pg_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Int => "bigint",
        Kind::Bytes => "bytea",
        Kind::TextSet => "text[]",
    }
}

/// `CREATE TABLE` for a shipped table, built from its description.
fn create_sql(table: &Table) -> String {
    let columns: Vec<String> =
        table.columns.iter().map(|c: &Column| format!("{} {} NOT NULL", c.name, pg_type(c.kind))).collect();
    let key: Vec<&str> = table.key().map(|c| c.name).collect();
    let partition = table.hour_column.map(|h| format!(" PARTITION BY RANGE ({h})")).unwrap_or_default();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({})){partition}",
        table.name,
        columns.join(", "),
        key.join(", ")
    )
}

/// The partition of `table` holding `hour` (as `cordon_add_partitions` names it).
#[cfg(test)]
fn partition_name(table: &Table, day: i64) -> String {
    if day < 0 { format!("{}_dm{}", table.name, -day) } else { format!("{}_d{day}", table.name) }
}

/// The partitions known to exist, so that a batch only asks the server about new days.
#[derive(Debug, Default)]
pub struct Partitions {
    known: HashSet<(&'static str, i64)>,
}

impl Partitions {
    /// Creates the partitions of `table` for the `hours` given (the day partitions they fall in)
    /// that do not exist yet.
    pub async fn ensure(
        &mut self,
        client: &mut Client,
        url: &str,
        table: &'static Table,
        hours: &[i64],
    ) -> Result<(), StoreError> {
        if table.hour_column.is_none() {
            return Ok(());
        }
        let mut days: Vec<i64> = hours.iter().map(|h| h.div_euclid(PARTITION_HOURS)).collect();
        days.sort_unstable();
        days.dedup();
        days.retain(|d| !self.known.contains(&(table.name, *d)));
        if days.is_empty() {
            return Ok(());
        }
        let sql = |what| move |source| StoreError::Sql { url: url.to_owned(), what, source };
        // Through the operator's function: whoever ships (the ingest role included) never owns a
        // partition, so cannot drop or truncate one.
        client
            .execute("SELECT cordon_add_partitions($1)", &[&days])
            .await
            .map_err(sql("create a partition"))?;
        self.known.extend(days.into_iter().map(|d| (table.name, d)));
        Ok(())
    }
}

/// What `cordon store prune` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Day partitions dropped whole.
    pub partitions: u64,
    /// Rows deleted from the partition the cut-off falls in.
    pub rows: u64,
}

/// Drops the history before `cutoff_hour` (unix seconds / 3600): whole day partitions, then the
/// older rows of the day the cut-off falls in.
pub async fn prune(client: &mut Client, url: &str, cutoff_hour: i64) -> Result<Pruned, StoreError> {
    ensure(client, url).await?;
    let sql = |what| move |source| StoreError::Sql { url: url.to_owned(), what, source };
    let mut pruned = Pruned::default();
    for &table in SHIPPED {
        let Some(hour) = table.hour_column else { continue };
        let tx = client.transaction().await.map_err(sql("begin pruning"))?;
        let rows = tx
            .query(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = $1::text::regclass",
                &[&table.name],
            )
            .await
            .map_err(sql("list partitions"))?;
        for row in rows {
            let name: String = row.get(0);
            let Some(day) = day_of(table, &name) else { continue };
            if (day + 1) * PARTITION_HOURS <= cutoff_hour {
                tx.batch_execute(&format!("DROP TABLE {name}")).await.map_err(sql("drop a partition"))?;
                pruned.partitions += 1;
            }
        }
        let deleted = tx
            .execute(&format!("DELETE FROM {} WHERE {hour} < $1", table.name), &[&cutoff_hour])
            .await
            .map_err(sql("delete old rows"))?;
        pruned.rows += deleted;
        tx.commit().await.map_err(sql("commit the prune"))?;
    }
    Ok(pruned)
}

fn day_of(table: &Table, partition: &str) -> Option<i64> {
    let rest = partition.strip_prefix(table.name)?.strip_prefix("_d")?;
    match rest.strip_prefix('m') {
        Some(neg) => neg.parse::<i64>().ok().map(|d| -d),
        None => rest.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::spool::EDGE_HOUR;

    #[test]
    fn partition_names_round_trip() {
        for day in [0, 1, 20_423, -3] {
            assert_eq!(day_of(&EDGE_HOUR, &partition_name(&EDGE_HOUR, day)), Some(day));
        }
        assert_eq!(day_of(&EDGE_HOUR, "edge_hour_default"), None);
    }

    #[test]
    fn tables_are_created_from_their_description() {
        let sql = create_sql(&EDGE_HOUR);
        assert!(sql.contains("host text NOT NULL") && sql.contains("connections bigint NOT NULL"), "{sql}");
        assert!(sql.ends_with("PARTITION BY RANGE (hour)"), "{sql}");
    }
}
