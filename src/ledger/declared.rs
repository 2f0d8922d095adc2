//! Declared dependencies: the upstreams an identity is configured to dial, as the ledger keeps them.
//!
//! A SmartStack caller already says what it may dial: the `[[upstream]]` entries of its
//! `cordon.toml` (recorded by the agent at start and on reload, through the recorder thread), or
//! the frontends of its Synapse `haproxy.cfg` before it migrates (`cordon import haproxy-cfg
//! --db`). Traffic is the evidence; this is the intent. Since schema version 4:
//!
//! ```sql
//! CREATE TABLE declarer (                 -- one row per (host, identity, origin) that declared,
//!     host TEXT NOT NULL,                 -- even with no upstreams at all
//!     identity TEXT NOT NULL,
//!     origin TEXT NOT NULL,               -- cordon.toml | haproxy.cfg
//!     declared_at INTEGER NOT NULL,       -- unix milliseconds
//!     PRIMARY KEY (host, identity, origin)
//! ) WITHOUT ROWID;
//! CREATE TABLE declared_upstream (        -- one row per service declared
//!     host TEXT NOT NULL, identity TEXT NOT NULL, origin TEXT NOT NULL, service TEXT NOT NULL,
//!     PRIMARY KEY (host, identity, origin, service)
//! ) WITHOUT ROWID;
//! ```
//!
//! A declaration replaces the one of the same (host, identity, origin) it is newer than, so an
//! upstream removed from `cordon.toml` stops being declared at the next start; two declarations
//! with the same time are united. That rule is idempotent and order-free, so `cordon merge`
//! applies it too. What a declaration means (allow, deny, broad) is `crate::graph`'s business.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use rusqlite::Connection;

use super::LedgerError;
use super::check;
use super::read::from_ms;
use super::recorder::unix_ms;
use super::schema::{self, classify};

/// Where a declaration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeclarationOrigin {
    /// The agent's `cordon.toml` `[[upstream]]` entries.
    AgentConfig,
    /// The frontends of a Synapse `haproxy.cfg` (`cordon import haproxy-cfg --db`).
    HaproxyCfg,
}

impl DeclarationOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            DeclarationOrigin::AgentConfig => "cordon.toml",
            DeclarationOrigin::HaproxyCfg => "haproxy.cfg",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cordon.toml" => Some(DeclarationOrigin::AgentConfig),
            "haproxy.cfg" => Some(DeclarationOrigin::HaproxyCfg),
            _ => None,
        }
    }
}

impl fmt::Display for DeclarationOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one identity on one host declared from one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// The host whose config it is.
    pub host: String,
    /// The caller: the identity its upstreams dial with.
    pub identity: String,
    pub origin: DeclarationOrigin,
    /// When it was recorded.
    pub declared_at: SystemTime,
    /// The services it may dial, sorted and without duplicates; empty for one that dials nothing.
    pub services: Vec<String>,
}

/// Writes `decl` into an open transaction, by the rule in the module doc.
pub(crate) fn upsert(conn: &Connection, decl: &Declaration) -> rusqlite::Result<()> {
    let key = rusqlite::params![decl.host, decl.identity, decl.origin.as_str()];
    let at = unix_ms(decl.declared_at);
    let existing: Option<i64> = conn
        .query_row(
            "SELECT declared_at FROM declarer WHERE host = ?1 AND identity = ?2 AND origin = ?3",
            key,
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    match existing {
        Some(old) if old > at => return Ok(()),
        Some(old) if old < at => {
            conn.execute(
                "DELETE FROM declared_upstream WHERE host = ?1 AND identity = ?2 AND origin = ?3",
                key,
            )?;
        }
        _ => {}
    }
    conn.execute(
        "INSERT INTO declarer (host, identity, origin, declared_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO UPDATE SET declared_at = max(declared_at, excluded.declared_at)",
        rusqlite::params![decl.host, decl.identity, decl.origin.as_str(), at],
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO declared_upstream (host, identity, origin, service) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for service in &decl.services {
        insert.execute(rusqlite::params![decl.host, decl.identity, decl.origin.as_str(), service])?;
    }
    Ok(())
}

/// Records `decl` into the ledger at `db` (created or migrated when needed), in one transaction.
/// For `cordon import haproxy-cfg --db`; the agent declares through its recorder instead.
pub fn record_declaration(db: &Path, decl: &Declaration) -> Result<(), LedgerError> {
    let mut conn = schema::open_write(db, &decl.host, schema::BUSY_TIMEOUT)?;
    let err = |e| classify(db, "record the declared upstreams", e);
    let tx = conn.transaction().map_err(err)?;
    upsert(&tx, decl).map_err(err)?;
    tx.commit().map_err(err)
}

/// Every declaration in `db`, sorted by identity, host and origin. A ledger before version 4
/// has none.
pub fn declarations(db: &Path) -> Result<Vec<Declaration>, LedgerError> {
    let opened = schema::open_read(db)?;
    read_all(db, &opened.conn, opened.version)
}

/// The declarations of an opened ledger of `version`.
pub(crate) fn read_all(db: &Path, conn: &Connection, version: i64) -> Result<Vec<Declaration>, LedgerError> {
    if version < 4 {
        return Ok(Vec::new());
    }
    let err = |e| classify(db, "read the declared upstreams", e);
    let bad = |column: &'static str, value: String| LedgerError::BadRow {
        path: db.to_owned(),
        table: schema::DECLARER_TABLE,
        column,
        value,
    };
    let mut out: Vec<Declaration> = Vec::new();
    let mut stmt = conn
        .prepare(
            "SELECT d.host, d.identity, d.origin, d.declared_at, u.service
             FROM declarer d LEFT JOIN declared_upstream u
               ON u.host = d.host AND u.identity = d.identity AND u.origin = d.origin
             ORDER BY d.identity, d.host, d.origin, u.service",
        )
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut number = 0;
    while let Some(row) = rows.next().map_err(err)? {
        number += 1;
        let at = |table| check::At { path: db, table, row: number };
        check::row(at(schema::DECLARER_TABLE), &["host", "identity", "origin", "declared_at"], row, 0)?;
        if row.get_ref(4).map_err(err)? != rusqlite::types::ValueRef::Null {
            check::row(at(schema::DECLARED_TABLE), &["service"], row, 4)?;
        }
        let host: String = row.get(0).map_err(err)?;
        let identity: String = row.get(1).map_err(err)?;
        let origin_text: String = row.get(2).map_err(err)?;
        let origin = DeclarationOrigin::parse(&origin_text).ok_or_else(|| bad("origin", origin_text))?;
        let at: i64 = row.get(3).map_err(err)?;
        let service: Option<String> = row.get(4).map_err(err)?;
        let same = out.last().is_some_and(|d| d.host == host && d.identity == identity && d.origin == origin);
        if !same {
            out.push(Declaration { host, identity, origin, declared_at: from_ms(at), services: Vec::new() });
        }
        if let (Some(service), Some(d)) = (service, out.last_mut()) {
            d.services.push(service);
        }
    }
    Ok(out)
}
