//! The ledger: who talked to whom, durable in SQLite (`ledger.db`).
//!
//! The data plane only ever calls [`RecorderHandle::record`], which never blocks; one writer
//! thread owns the SQLite connection, aggregates events in memory and writes a batch per flush
//! interval.

mod event;

pub use event::{EdgeKey, Event};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Why the ledger could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// SQLite refused an operation.
    #[error("{path}: {message}")]
    Sqlite { path: String, message: String },
}

/// Counters the recorder keeps about itself; read by metrics and `/status`.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Events taken off the channel and aggregated.
    pub received: AtomicU64,
    /// Events written to SQLite.
    pub written: AtomicU64,
    /// Events dropped because the channel was full.
    pub dropped: AtomicU64,
    /// Failed batch writes (full disk, unwritable file).
    pub write_errors: AtomicU64,
}

/// The data plane's end of the recorder channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecorderHandle {
    tx: std::sync::mpsc::SyncSender<Event>,
    stats: Arc<RecorderStats>,
}

impl RecorderHandle {
    /// Hands an event to the writer thread; never blocks. A full channel counts a drop.
    pub fn record(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Hands an event over, waiting for room: for importers, never for the data plane.
    pub fn record_wait(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }
}

/// The writer thread. Dropping it without [`Recorder::shutdown`] still flushes.
pub struct Recorder {
    _todo: (),
}

impl Recorder {
    /// Opens (creating or migrating) the ledger at `path` and starts the writer thread.
    pub fn start(
        _path: &Path,
        _host: &str,
        _capacity: usize,
        _flush_interval: Duration,
    ) -> Result<(Recorder, RecorderHandle), LedgerError> {
        todo!("ledger: recorder")
    }

    /// Flushes everything received and joins the writer thread.
    pub fn shutdown(self) {}
}

/// A caller of one destination as the ledger recorded it, summed over the window asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedCaller {
    /// Service name, or `ip:A.B.C.D`.
    pub source: String,
    pub identified: crate::policy::Identified,
    pub connections: u64,
    pub first_seen: std::time::SystemTime,
    pub last_seen: std::time::SystemTime,
    /// Distinct days with traffic (a caller seen on one or two days is a periodic job).
    pub days_seen: u32,
}

/// Every caller recorded for `destination` since `since` (the whole history when `None`).
/// Opens the ledger read-only; the agent writing it at the same time is fine.
pub fn callers_into(
    _db: &Path,
    _destination: &str,
    _since: Option<std::time::SystemTime>,
) -> Result<Vec<ObservedCaller>, LedgerError> {
    todo!("ledger: callers_into")
}
