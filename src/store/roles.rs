//! The store's guards: the CHECK constraints on every value and the stamp columns (schema
//! version 3, applied by [`super::schema::ensure`]), and `cordon store init`, which creates the
//! three roles and their grants.
//!
//! | role | may |
//! |---|---|
//! | `cordon_ingest` | read, insert and update the shipped tables; add day partitions through `cordon_add_partitions` (no delete, truncate, drop or prune) |
//! | `cordon_operator` | owns the tables and partitions: init, migrate, prune, `cordon ship --to postgres://` |
//! | `cordon_reviewer` | read |
//!
//! Login users are made members of one role (`GRANT cordon_ingest TO ingest_service`).
//! Partitions are created by a `SECURITY DEFINER` function owned by `cordon_operator`, so the
//! ingest role never owns (and so can never drop or truncate) a table.

use tokio_postgres::Client;

use super::StoreError;
use super::rules::{MAX_COUNTER, MAX_FILE, MAX_NAME, MAX_SERVICES, SKEW_MS};

/// The roles `cordon store init` creates.
pub const ROLES: [&str; 3] = ["cordon_ingest", "cordon_operator", "cordon_reviewer"];

/// Unix ms now, as the server sees it, plus the allowed skew: the latest time a row may carry.
fn latest_ms() -> String {
    format!("((extract(epoch FROM now()) * 1000)::bigint + {SKEW_MS})")
}

/// A name by the service-name rule, at most [`MAX_NAME`] bytes.
fn name_check(column: &str) -> String {
    format!(
        "(octet_length({column}) <= {MAX_NAME} AND {column} ~ '^[A-Za-z0-9._-]+$' AND {column} NOT IN ('.', '..'))"
    )
}

/// The version-3 migration: stamp columns, CHECK constraints and the partition function.
/// Idempotent (constraints are dropped and added again, which re-checks every row).
pub fn migration_sql() -> String {
    let latest = latest_ms();
    let counter = |c: &str| format!("{c} BETWEEN 0 AND {MAX_COUNTER}");
    let edge = [
        format!("octet_length(host) <= {MAX_NAME}"),
        format!(
            "({} OR (octet_length(source) <= {MAX_NAME} AND source ~ '^ip:[0-9A-Fa-f.:]+$'))",
            name_check("source")
        ),
        name_check("destination"),
        "identified IN ('mtls', 'plaintext-ip', 'unknown', 'haproxy-log')".into(),
        "mode IN ('learn', 'enforce')".into(),
        "verdict IN ('allow', 'deny')".into(),
        "evidence IN ('seen', 'claimed')".into(),
        name_check("shipper"),
        counter("connections"),
        counter("bytes_to_destination"),
        counter("bytes_to_source"),
        format!("first_seen BETWEEN 0 AND last_seen AND last_seen <= {latest}"),
        format!("hour BETWEEN 0 AND {latest} / 3600000"),
    ]
    .join(" AND ");
    let declarer = [
        name_check("identity"),
        format!("octet_length(host) <= {MAX_NAME}"),
        name_check("shipper"),
        "origin IN ('cordon.toml', 'haproxy.cfg')".into(),
        format!("declared_at BETWEEN 0 AND {latest}"),
        format!("cardinality(services) <= {MAX_SERVICES}"),
        "array_to_string(services, E'\\n') ~ '^[A-Za-z0-9._\\n-]*$'".into(),
    ]
    .join(" AND ");
    let prefix = [
        counter("len"),
        counter("lines"),
        "octet_length(sha256) = 32".into(),
        format!("octet_length(file) <= {MAX_FILE}"),
        format!("imported_at BETWEEN 0 AND {latest}"),
    ]
    .join(" AND ");
    format!(
        "ALTER TABLE edge_hour ADD COLUMN IF NOT EXISTS shipper text NOT NULL DEFAULT 'operator';
         ALTER TABLE edge_hour ADD COLUMN IF NOT EXISTS evidence text NOT NULL DEFAULT 'seen';
         ALTER TABLE declarer ADD COLUMN IF NOT EXISTS shipper text NOT NULL DEFAULT 'operator';
         ALTER TABLE edge_hour DROP CONSTRAINT IF EXISTS cordon_values;
         ALTER TABLE edge_hour ADD CONSTRAINT cordon_values CHECK ({edge});
         ALTER TABLE declarer DROP CONSTRAINT IF EXISTS cordon_values;
         ALTER TABLE declarer ADD CONSTRAINT cordon_values CHECK ({declarer});
         ALTER TABLE imported_prefix DROP CONSTRAINT IF EXISTS cordon_values;
         ALTER TABLE imported_prefix ADD CONSTRAINT cordon_values CHECK ({prefix});
         CREATE OR REPLACE FUNCTION cordon_add_partitions(days bigint[]) RETURNS void
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $f$
         DECLARE d bigint; name text;
         BEGIN
           PERFORM pg_advisory_xact_lock({lock});
           FOREACH d IN ARRAY days LOOP
             IF d < 0 OR d > {latest} / 86400000 + 1 THEN
               RAISE EXCEPTION 'cordon: no partition for day % (before 1970 or in the future)', d;
             END IF;
             name := 'edge_hour_d' || d;
             IF to_regclass(name) IS NULL THEN
               EXECUTE format('CREATE TABLE %I PARTITION OF edge_hour FOR VALUES FROM (%s) TO (%s)',
                              name, d * 24, d * 24 + 24);
             END IF;
           END LOOP;
         END $f$;
         REVOKE ALL ON FUNCTION cordon_add_partitions(bigint[]) FROM PUBLIC;",
        lock = super::schema::PARTITION_LOCK,
    )
}

/// The roles and their grants (`cordon store init`, after the schema is current). Idempotent.
const GRANTS: &str = "
    DO $r$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cordon_ingest') THEN CREATE ROLE cordon_ingest NOLOGIN; END IF;
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cordon_operator') THEN CREATE ROLE cordon_operator NOLOGIN; END IF;
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cordon_reviewer') THEN CREATE ROLE cordon_reviewer NOLOGIN; END IF;
    END $r$;
    GRANT USAGE ON SCHEMA public TO cordon_ingest, cordon_operator, cordon_reviewer;
    GRANT CREATE ON SCHEMA public TO cordon_operator;
    REVOKE ALL ON cordon_schema, edge_hour, declarer, imported_prefix FROM PUBLIC, cordon_ingest, cordon_reviewer;
    GRANT SELECT ON cordon_schema TO cordon_ingest, cordon_reviewer;
    GRANT SELECT, INSERT, UPDATE ON edge_hour, declarer, imported_prefix TO cordon_ingest;
    GRANT SELECT ON edge_hour, declarer, imported_prefix TO cordon_reviewer;
    GRANT EXECUTE ON FUNCTION cordon_add_partitions(bigint[]) TO cordon_ingest, cordon_operator;
    ALTER FUNCTION cordon_add_partitions(bigint[]) OWNER TO cordon_operator;
    ALTER TABLE cordon_schema OWNER TO cordon_operator;
    ALTER TABLE edge_hour OWNER TO cordon_operator;
    ALTER TABLE declarer OWNER TO cordon_operator;
    ALTER TABLE imported_prefix OWNER TO cordon_operator;
    DO $p$ DECLARE p regclass; BEGIN
      FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'edge_hour'::regclass LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO cordon_operator', p);
      END LOOP;
    END $p$;";

/// What `cordon store init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initialised {
    /// The schema version now.
    pub version: i32,
    /// Day partitions that exist ahead of need (today and tomorrow).
    pub partitions_ready: bool,
}

/// `cordon store init`: migrates the schema, creates the roles and grants, and the partitions of
/// today and tomorrow. Run with a user that may create roles and owns the database.
pub async fn init(client: &mut Client, url: &str) -> Result<Initialised, StoreError> {
    super::schema::ensure(client, url).await?;
    let sql = |what| move |source| StoreError::Sql { url: url.to_owned(), what, source };
    let tx = client.transaction().await.map_err(sql("begin the grants"))?;
    tx.batch_execute(GRANTS).await.map_err(sql("create the roles and grants"))?;
    tx.execute(
        "SELECT cordon_add_partitions(ARRAY[floor(extract(epoch FROM now()) / 86400)::bigint,
                                            floor(extract(epoch FROM now()) / 86400)::bigint + 1])",
        &[],
    )
    .await
    .map_err(sql("create today's partition"))?;
    tx.commit().await.map_err(sql("commit the grants"))?;
    Ok(Initialised { version: super::schema::CURRENT_VERSION, partitions_ready: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_name_every_limit() {
        let sql = migration_sql();
        assert!(sql.contains("connections BETWEEN 0 AND 1125899906842624"), "{sql}");
        assert!(sql.contains("mode IN ('learn', 'enforce')"), "{sql}");
        assert!(sql.contains("octet_length(destination) <= 253"), "{sql}");
        assert!(GRANTS.contains("GRANT SELECT, INSERT, UPDATE ON edge_hour"));
        assert!(!GRANTS.contains("DELETE") && !GRANTS.contains("TRUNCATE"));
    }
}
