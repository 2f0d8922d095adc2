//! [`Db`]: where a `--db` points, a ledger file or the fleet store, and the two reads the review
//! commands need from either. The same data gives the same answer from both.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::SystemTime;

use super::{StoreError, StoreUrl, block_on, client, read, schema};
use crate::ledger::{self, EdgeTotals, ObservedCaller};

/// A `--db` argument: a SQLite ledger (a host's ledger.db or a merged one) or the fleet store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Db {
    Ledger(PathBuf),
    Store(StoreUrl),
}

impl FromStr for Db {
    type Err = String;

    fn from_str(s: &str) -> Result<Db, String> {
        if StoreUrl::is_url(s) {
            return StoreUrl::parse(s).map(Db::Store);
        }
        if s.contains("://") {
            return Err(format!("{s:?}: a --db is a ledger file or a postgres:// URL"));
        }
        Ok(Db::Ledger(PathBuf::from(s)))
    }
}

impl fmt::Display for Db {
    /// The path, or the URL without secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Db::Ledger(p) => write!(f, "{}", p.display()),
            Db::Store(u) => write!(f, "{u}"),
        }
    }
}

impl Db {
    /// Every edge recorded since `since` (the whole history when `None`), summed per
    /// (source, destination, identification) and sorted as [`ledger::edge_totals`] sorts.
    pub fn edge_totals(&self, since: Option<SystemTime>) -> Result<Vec<EdgeTotals>, StoreError> {
        match self {
            Db::Ledger(path) => Ok(ledger::edge_totals(path, since)?),
            Db::Store(url) => block_on(async {
                let name = url.to_string();
                let mut c = client::connect(url).await?;
                schema::ensure(&mut c, &name).await?;
                read::edge_totals(&c, &name, since).await
            })?,
        }
    }

    /// The callers' declared upstreams, sorted as [`ledger::declarations`] sorts them.
    pub fn declarations(&self) -> Result<Vec<ledger::Declaration>, StoreError> {
        match self {
            Db::Ledger(path) => Ok(ledger::declarations(path)?),
            Db::Store(url) => block_on(async {
                let name = url.to_string();
                let mut c = client::connect(url).await?;
                schema::ensure(&mut c, &name).await?;
                read::declarations(&c, &name).await
            })?,
        }
    }

    /// Every caller of `destination` recorded since `since`.
    pub fn callers_into(
        &self,
        destination: &str,
        since: Option<SystemTime>,
    ) -> Result<Vec<ObservedCaller>, StoreError> {
        match self {
            Db::Ledger(path) => Ok(ledger::callers_into(path, destination, since)?),
            Db::Store(url) => block_on(async {
                let name = url.to_string();
                let mut c = client::connect(url).await?;
                schema::ensure(&mut c, &name).await?;
                read::callers_into(&c, &name, destination, since).await
            })?,
        }
    }
}
