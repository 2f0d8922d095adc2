//! The fleet store: every host's ledger in one PostgreSQL database, and the review commands
//! reading the whole fleet from it.
//!
//! Owns every statement sent to PostgreSQL: the versioned, time-partitioned schema and its
//! migration ([`schema`]), the idempotent upserts of shipped rows ([`write`](mod@write)), the aggregated
//! reads behind `graph`, `propose`, `diff`, the report and the preflight ([`read`]), the agent's
//! shipper thread ([`Shipper`]) and [`Db`], the place a `--db` points at (a ledger file or the
//! store). The local SQLite ledger stays the durable spool ([`crate::ledger::spool`]); nothing
//! here runs on the data plane or blocks it, and nothing here may read every row into memory to
//! answer a review question: aggregation happens in SQL on the server.

mod client;
mod db;
pub mod identity;
pub mod ingest;
mod outbound;
pub mod read;
pub mod roles;
pub mod rules;
pub mod schema;
mod settings;
mod shipper;
pub mod wire;
pub mod write;

pub use client::{CONNECT_TIMEOUT, connect, read_password};
pub use db::Db;
pub use outbound::{Outbound, ship_file as ship_through};
pub use settings::{DEFAULT_BATCH_ROWS, DEFAULT_SHIP_INTERVAL, FleetSettings, RawFleet, ShipTo, StoreUrl};
pub use shipper::{ShipStats, Shipper};

use std::path::PathBuf;

/// Why the fleet store could not be used. Every variant names the store (its URL without
/// secrets) or the file involved; none carries the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The password file could not be read or is empty.
    #[error("{}: cannot read the store's password file: {source}", path.display())]
    PasswordFile { path: PathBuf, source: std::io::Error },
    /// The CA bundle for TLS to the store is unusable.
    #[error("{}: unusable CA bundle for the store: {detail}", path.display())]
    Ca { path: PathBuf, detail: String },
    /// Nothing listens at the store's address (or the network refuses).
    #[error("{url}: cannot reach the store: {source}")]
    Unreachable { url: String, source: std::io::Error },
    /// The server did not answer in time.
    #[error("{url}: the store did not answer in time ({what})")]
    Timeout { url: String, what: &'static str },
    /// The server refused the login or the TLS handshake failed.
    #[error("{url}: cannot log in to the store: {}", chain(source))]
    Connect { url: String, source: tokio_postgres::Error },
    /// The store's schema was written by a newer cordon.
    #[error(
        "{url}: store schema version {found} is newer than this cordon understands (up to {supported}); upgrade cordon"
    )]
    TooNew { url: String, found: i32, supported: i32 },
    /// A statement failed.
    #[error("{url}: {what}: {}", chain(source))]
    Sql { url: String, what: &'static str, source: tokio_postgres::Error },
    /// A row holds a value cordon never writes.
    #[error("{url}: unexpected {column} {value:?} in table {table}")]
    BadRow { url: String, table: &'static str, column: &'static str, value: String },
    /// The ledger side (the spool or a file to ship) failed.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The ingest service refused a batch or could not be reached.
    #[error("{url}: the ingest service: {detail}")]
    Ingest { url: String, detail: String, transient: bool },
    /// The store is not ready for the ingest service (no schema, or an older one).
    #[error("{url}: {detail}")]
    NotInitialised { url: String, detail: String },
    /// A runtime or thread for talking to the store could not be started.
    #[error("cannot start the store client: {0}")]
    Runtime(std::io::Error),
}

impl StoreError {
    /// Whether retrying later can help (the server is down, slow or restarting), as opposed to a
    /// problem a person must fix (bad password, newer schema).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } | StoreError::Timeout { .. } => true,
            StoreError::Ingest { transient, .. } => *transient,
            StoreError::Sql { source, .. } | StoreError::Connect { source, .. } => {
                source.as_db_error().is_none() || source.is_closed()
            }
            _ => false,
        }
    }
}

/// An error and its causes on one line (tokio-postgres keeps the server's message in the cause).
fn chain(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// Runs `f` to completion on a fresh single-threaded runtime: the review commands are
/// synchronous and never run inside one.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, StoreError> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StoreError::Runtime)?;
    Ok(rt.block_on(f))
}

/// What [`ship_file`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipped {
    pub rows: u64,
    pub batches: u64,
}

/// Ships every row of the ledger file `db` to the store (`cordon ship`): batches of
/// `batch_rows`, each committed on its own; a failure part-way leaves the store with some
/// batches, and shipping the file again completes it without counting anything twice.
pub fn ship_file(db: &std::path::Path, url: &StoreUrl, batch_rows: usize) -> Result<Shipped, StoreError> {
    // Check the file before connecting: a bad file is reported without touching the store.
    crate::ledger::spool::check(db)?;
    block_on(async {
        let name = url.to_string();
        let mut client = connect(url).await?;
        schema::ensure(&mut client, &name).await?;
        let mut partitions = schema::Partitions::default();
        let mut shipped = Shipped::default();
        each_batch(db, batch_rows, async |batch| {
            let n = write::ship(&mut client, &name, &mut partitions, &batch).await?;
            shipped.rows += n;
            shipped.batches += 1;
            Ok(())
        })
        .await?;
        Ok(shipped)
    })?
}

/// Reads `db`'s rows in batches of `batch_rows` on a thread of its own, at most two batches
/// ahead (a file is never all in memory), and hands each to `send` in order. The first error,
/// from `send` or from reading, ends it; a reader stopped because `send` failed is not a second
/// error.
pub(crate) async fn each_batch(
    db: &std::path::Path,
    batch_rows: usize,
    mut send: impl AsyncFnMut(crate::ledger::spool::Batch) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = {
        let db = db.to_owned();
        std::thread::spawn(move || {
            crate::ledger::spool::read_all::<StoreError>(&db, batch_rows, |b| {
                tx.blocking_send(b).map_err(|_| StoreError::Runtime(std::io::ErrorKind::BrokenPipe.into()))
            })
        })
    };
    let mut result = Ok(());
    while let Some(batch) = rx.recv().await {
        if let Err(e) = send(batch).await {
            result = Err(e);
            break;
        }
    }
    drop(rx);
    let read = reader.join().unwrap_or_else(|_| Err(StoreError::Runtime(std::io::ErrorKind::Other.into())));
    result?;
    match read {
        Err(StoreError::Runtime(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `cordon store init`: schema, checks, today's partitions, roles and grants.
pub fn init(url: &StoreUrl) -> Result<roles::Initialised, StoreError> {
    block_on(async {
        let name = url.to_string();
        let mut client = connect(url).await?;
        roles::init(&mut client, &name).await
    })?
}

/// Drops the store's history before `cutoff_hour` (`cordon store prune`).
pub fn prune(url: &StoreUrl, cutoff_hour: i64) -> Result<schema::Pruned, StoreError> {
    block_on(async {
        let name = url.to_string();
        let mut client = connect(url).await?;
        schema::prune(&mut client, &name, cutoff_hour).await
    })?
}
