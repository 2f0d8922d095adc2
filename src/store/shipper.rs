//! The agent's shipper: a thread of its own that sends what the local ledger has not shipped
//! to the fleet store, in batches, and keeps count for `/metrics` and `/status`.
//!
//! It never touches the data plane: the proxies only talk to the recorder, which writes the
//! ledger as before; the shipper reads the same ledger through its own SQLite connection (WAL
//! lets both run at once) and talks to PostgreSQL on a single-threaded runtime of its own. When
//! the store is down, slow or refusing, rows simply stay in the ledger, counted as waiting, and
//! the shipper retries with a growing pause (at most [`MAX_BACKOFF`]); a row is marked shipped
//! only after the server committed it, and shipping a row twice changes nothing, so a crash or a
//! lost reply at any point loses nothing and duplicates nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::outbound::Outbound;
use super::schema::Partitions;
use super::settings::ShipTo;
use super::{FleetSettings, StoreError, client, schema, write};
use crate::ledger::spool::Spool;
use crate::pki::{ServiceName, TlsStore};

/// The longest pause between attempts while the store fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Deadline for one statement (a batch) on the server.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for the last attempt on shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the shipper has done, read by `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Rows in the ledger not yet shipped (as of the last pass).
    pub waiting: AtomicU64,
    /// Rows shipped since the agent started (a row changed and shipped again counts again).
    pub shipped: AtomicU64,
    /// Batches committed by the store.
    pub batches: AtomicU64,
    /// Failed passes (connecting, migrating, writing or reading the spool).
    pub errors: AtomicU64,
    /// Unix ms of the last batch the store committed; 0 = none yet.
    pub last_success_ms: AtomicI64,
    /// Unix ms when the shipper last found nothing waiting; 0 = not yet.
    pub caught_up_ms: AtomicI64,
    /// CPU time the shipper thread has used, in milliseconds (Linux; 0 elsewhere).
    pub cpu_ms: AtomicU64,
    /// Rows the ingest service refused (or no identity of this host could speak for).
    pub refused: AtomicU64,
    /// The last error, for `/status` (never holds the password).
    pub last_error: Mutex<Option<String>>,
}

impl ShipStats {
    /// How far the store is behind: the time since the shipper last had nothing waiting, or
    /// zero when nothing is waiting.
    pub fn lag(&self, now: SystemTime) -> Duration {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return Duration::ZERO;
        }
        let since = self.caught_up_ms.load(Ordering::Relaxed);
        let now = crate::ledger::unix_ms(now);
        Duration::from_millis(u64::try_from(now.saturating_sub(since)).unwrap_or(0))
    }

    /// The last error, if the last pass failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running shipper thread.
pub struct Shipper {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ShipStats>,
    store: ShipTo,
}

impl Shipper {
    /// Starts shipping the ledger at `ledger` (recorded as `host`) to the store. Fails only if
    /// the thread cannot be spawned: an unreachable or refusing store is retried in the
    /// background and shows in the stats.
    ///
    /// Shipping to the ingest service needs `leaves`: the agent's certificates and the
    /// identities they prove.
    pub fn start(
        ledger: &Path,
        host: &str,
        settings: &FleetSettings,
        leaves: Option<(Arc<TlsStore>, Vec<ServiceName>)>,
    ) -> Result<Shipper, StoreError> {
        let outbound = match (&settings.to, leaves) {
            (ShipTo::Ingest(addr), Some((tls, identities))) => {
                Some(Outbound { tls, identities, addr: addr.clone() })
            }
            (ShipTo::Ingest(addr), None) => {
                return Err(StoreError::Ingest {
                    url: format!("https://{addr}"),
                    detail: "shipping to the ingest service needs the agent's certificates".into(),
                    transient: false,
                });
            }
            (ShipTo::Store(_), _) => None,
        };
        let (stop, stop_rx) = mpsc::channel();
        let stats = Arc::new(ShipStats::default());
        let mut worker = Worker {
            ledger: ledger.to_owned(),
            host: host.to_owned(),
            settings: settings.clone(),
            stats: stats.clone(),
            spool: None,
            conn: None,
            outbound,
        };
        let thread = std::thread::Builder::new()
            .name("cordon-shipper".into())
            .spawn(move || worker.run(stop_rx))
            .map_err(StoreError::Runtime)?;
        Ok(Shipper { stop, thread: Some(thread), stats, store: settings.to.clone() })
    }

    pub fn stats(&self) -> &Arc<ShipStats> {
        &self.stats
    }

    /// Where the rows go (without secrets).
    pub fn store(&self) -> &ShipTo {
        &self.store
    }

    /// Makes one last attempt (bounded by a few seconds) and stops the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Worker {
    ledger: PathBuf,
    host: String,
    settings: FleetSettings,
    stats: Arc<ShipStats>,
    spool: Option<Spool>,
    conn: Option<(tokio_postgres::Client, Partitions)>,
    /// The ingest service and this host's leaves, when shipping through it.
    outbound: Option<Outbound>,
}

impl Worker {
    fn run(&mut self, stop: mpsc::Receiver<()>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                self.failed(&StoreError::Runtime(e));
                return;
            }
        };
        let mut failures = 0u32;
        loop {
            let pause = match self.pass(&rt, STATEMENT_TIMEOUT) {
                Ok(true) => Duration::ZERO,
                Ok(false) => {
                    if failures > 0 {
                        info!(store = %self.settings.to, "shipping to the fleet store again");
                    }
                    failures = 0;
                    self.settings.ship_interval
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        warn!(store = %self.settings.to, error = %e, failures, "shipping to the fleet store failed; rows stay in the ledger and are retried");
                    }
                    self.failed(&e);
                    // A ledger error (its disk full) says nothing about the store's connection.
                    if !matches!(e, StoreError::Ledger(_)) {
                        self.conn = None;
                    }
                    backoff(self.settings.ship_interval, failures)
                }
            };
            match stop.recv_timeout(pause) {
                Err(RecvTimeoutError::Timeout) => continue,
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.pass(&rt, SHUTDOWN_TIMEOUT) {
                        self.failed(&e);
                    }
                    return;
                }
            }
        }
    }

    fn failed(&self, e: &StoreError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// Ships one batch of each table; true when a batch was full (more is waiting).
    fn pass(&mut self, rt: &tokio::runtime::Runtime, deadline: Duration) -> Result<bool, StoreError> {
        if self.spool.is_none() {
            self.spool = Some(Spool::open(&self.ledger, &self.host)?);
        }
        let spool = self.spool.as_mut().ok_or(StoreError::Runtime(std::io::ErrorKind::Other.into()))?;
        let batches = spool.pending(self.settings.batch_rows)?;
        if batches.is_empty() {
            self.stats.waiting.store(0, Ordering::Relaxed);
            self.stats.caught_up_ms.store(crate::ledger::unix_ms(SystemTime::now()), Ordering::Relaxed);
            *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.stats.cpu_ms.store(thread_cpu_ms(), Ordering::Relaxed);
            return Ok(false);
        }
        self.stats.waiting.store(spool.waiting()?, Ordering::Relaxed);
        let url = self.settings.to.to_string();
        let timed = |what| StoreError::Timeout { url: url.clone(), what };
        if let Some(out) = &self.outbound {
            let mut full = false;
            for batch in &batches {
                let answer = rt.block_on(out.send(batch))?;
                spool.mark_shipped(batch)?;
                let refused: u64 = answer.refused.values().sum();
                if refused > 0 {
                    self.stats.refused.fetch_add(refused, Ordering::Relaxed);
                    warn!(store = %url, refused = ?answer.refused, "the ingest service refused rows of this host's ledger");
                }
                self.stats.shipped.fetch_add(answer.accepted, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .last_success_ms
                    .store(crate::ledger::unix_ms(SystemTime::now()), Ordering::Relaxed);
                full |= batch.len() >= self.settings.batch_rows;
            }
            self.stats.waiting.store(spool.waiting()?, Ordering::Relaxed);
            *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.stats.cpu_ms.store(thread_cpu_ms(), Ordering::Relaxed);
            return Ok(full);
        }
        let ShipTo::Store(store) = &self.settings.to else {
            return Err(StoreError::Runtime(std::io::ErrorKind::Other.into()));
        };
        if self.conn.is_none() {
            let client = rt.block_on(async {
                let mut c = client::connect(store).await?;
                tokio::time::timeout(deadline, schema::ensure(&mut c, &url))
                    .await
                    .map_err(|_| timed("migrate"))??;
                Ok::<_, StoreError>(c)
            })?;
            self.conn = Some((client, Partitions::default()));
        }
        let (client, partitions) =
            self.conn.as_mut().ok_or(StoreError::Runtime(std::io::ErrorKind::Other.into()))?;
        let mut full = false;
        for batch in &batches {
            let rows = rt
                .block_on(async {
                    tokio::time::timeout(deadline, write::ship(client, &url, partitions, batch)).await
                })
                .map_err(|_| timed("write a batch"))??;
            spool.mark_shipped(batch)?;
            self.stats.shipped.fetch_add(rows, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.last_success_ms.store(crate::ledger::unix_ms(SystemTime::now()), Ordering::Relaxed);
            full |= batch.len() >= self.settings.batch_rows;
        }
        self.stats.waiting.store(spool.waiting()?, Ordering::Relaxed);
        *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.stats.cpu_ms.store(thread_cpu_ms(), Ordering::Relaxed);
        Ok(full)
    }
}

/// The pause after `failures` failed passes in a row: doubling from the ship interval, at most
/// [`MAX_BACKOFF`].
fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(10);
    interval.saturating_mul(factor).min(MAX_BACKOFF.max(interval))
}

/// CPU time (user + system) of the calling thread in milliseconds, from /proc (Linux's clock
/// ticks are 10 ms); 0 where it cannot be read.
fn thread_cpu_ms() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else { return 0 };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) * 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let i = Duration::from_secs(5);
        assert_eq!(backoff(i, 1), i);
        assert_eq!(backoff(i, 2), Duration::from_secs(10));
        assert_eq!(backoff(i, 30), MAX_BACKOFF);
    }
}
