//! The writer thread: the only owner of the ledger's write connection.
//!
//! Events arrive over a bounded `sync_channel`; the thread adds them into in-memory counters keyed
//! by (hour, edge) and writes the counters in one transaction per flush interval (or sooner when
//! many distinct edges are pending). A failed write (full disk, unwritable file) is logged and
//! counted, and its counters stay pending and are retried at the next interval; while writes keep
//! failing, events for edges not already pending are dropped once [`MAX_PENDING_KEYS`] is reached,
//! so memory stays bounded. The data plane never waits on any of this.
//!
//! An importer also hands over the file prefixes it has read ([`RecorderHandle::mark_imported`]):
//! they wait with the pending counters and are written in the same transaction, so a prefix is
//! never in the ledger without the events read before it.
//!
//! The agent hands over the upstreams each of its identities is configured with
//! ([`RecorderHandle::declare`]) at start and on reload; they are written with the next batch,
//! under this recorder's host name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::declared::{self, Declaration, DeclarationOrigin};
use super::imported::{self, ImportedPrefix};
use super::{EdgeKey, Event, LedgerError, schema};

/// Pending distinct (hour, edge) counters that trigger a write before the interval is up.
const EARLY_FLUSH_KEYS: usize = 50_000;
/// The longest wait between retries of a failing write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Pending distinct counters kept while writes fail; beyond this, new edges are dropped.
pub const MAX_PENDING_KEYS: usize = 200_000;

/// Counters the recorder keeps about itself; read by metrics and `/status`.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Events taken off the channel and aggregated.
    pub received: AtomicU64,
    /// Events written to SQLite.
    pub written: AtomicU64,
    /// Events dropped: the channel was full, the recorder had stopped, or failed writes had
    /// filled the pending counters.
    pub dropped: AtomicU64,
    /// Failed batch writes (full disk, unwritable file).
    pub write_errors: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
}

/// What travels over the channel.
#[derive(Debug)]
enum Msg {
    Event(Event),
    /// Every event before this one came from this file prefix (importers).
    Imported(ImportedPrefix),
    /// An identity's configured upstreams (the agent, at start and on reload).
    Declared(Declaration),
    /// Write everything pending now and report back (tests, importers).
    Flush(SyncSender<()>),
    /// Drain the channel, write, and stop.
    Shutdown,
}

/// The data plane's end of the recorder channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecorderHandle {
    tx: SyncSender<Msg>,
    stats: Arc<RecorderStats>,
}

impl RecorderHandle {
    /// Hands an event to the writer thread; never blocks. A full channel counts a drop.
    pub fn record(&self, event: Event) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Event(event))
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands an event over, waiting for room: for importers, never for the data plane.
    pub fn record_wait(&self, event: Event) {
        if self.tx.send(Msg::Event(event)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records that `prefix` of a file has been imported, waiting for room: for importers. The
    /// prefix is written in the same transaction as the events handed over before it, and never
    /// if any event was dropped before it; check [`RecorderStats`] after [`Self::flush_wait`].
    pub fn mark_imported(&self, prefix: ImportedPrefix) {
        // A stopped recorder writes nothing more; there is nothing to count.
        let _ = self.tx.send(Msg::Imported(prefix));
    }

    /// Records that `identity` is configured to dial `services` (from `origin`, now), written
    /// with the next batch under the recorder's host. Never blocks: for the agent's start and
    /// reload. False when the channel was full or the recorder has stopped (nothing recorded).
    pub fn declare(&self, identity: &str, origin: DeclarationOrigin, services: &[String]) -> bool {
        let mut services = services.to_vec();
        services.sort();
        services.dedup();
        let decl = Declaration {
            // The writer puts its own host here.
            host: String::new(),
            identity: identity.to_owned(),
            origin,
            declared_at: SystemTime::now(),
            services,
        };
        self.tx.try_send(Msg::Declared(decl)).is_ok()
    }

    /// Writes everything received so far and waits for the write (or its failure). Blocking:
    /// for importers and tests, never for the data plane. False when the recorder has stopped.
    pub fn flush_wait(&self) -> bool {
        let (done_tx, done_rx) = sync_channel(1);
        self.tx.send(Msg::Flush(done_tx)).is_ok() && done_rx.recv().is_ok()
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }
}

/// The writer thread. Dropping it without [`Recorder::shutdown`] still flushes.
pub struct Recorder {
    /// Our own sender, to ask for shutdown while the data plane still holds handles.
    tx: SyncSender<Msg>,
    /// The writer thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Opens (creating or migrating) the ledger at `path` and starts the writer thread.
    /// `host` is written into every row so that ledgers of many hosts merge; `capacity` bounds the
    /// channel; `flush_interval` is the most a `kill -9` can lose.
    pub fn start(
        path: &Path,
        host: &str,
        capacity: usize,
        flush_interval: Duration,
    ) -> Result<(Recorder, RecorderHandle), LedgerError> {
        // The writer waits at most about one interval for a lock, so a long `cordon merge` into
        // the live file costs a retried batch, not a stalled recorder.
        let busy = flush_interval.clamp(Duration::from_millis(100), schema::BUSY_TIMEOUT);
        let conn = schema::open_write(path, host, busy)?;
        let (tx, rx) = sync_channel(capacity.max(1));
        let stats = Arc::new(RecorderStats::default());
        let writer = Writer {
            conn,
            path: path.to_owned(),
            host: host.to_owned(),
            stats: Arc::clone(&stats),
            pending: HashMap::new(),
            pending_events: 0,
            pending_imports: Vec::new(),
            pending_declarations: Vec::new(),
            interval: flush_interval.max(Duration::from_millis(1)),
            failing: false,
            delay: flush_interval.max(Duration::from_millis(1)),
        };
        let thread = std::thread::Builder::new()
            .name("cordon-ledger".into())
            .spawn(move || writer.run(rx))
            .map_err(LedgerError::Thread)?;
        Ok((Recorder { tx: tx.clone(), thread: Some(thread) }, RecorderHandle { tx, stats }))
    }

    /// Flushes everything received and joins the writer thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Blocks only while the channel is full, which the writer is draining.
            let _ = self.tx.send(Msg::Shutdown);
            if thread.join().is_err() {
                tracing::error!("ledger writer thread panicked");
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counters of one (hour, edge) since the last successful write.
#[derive(Debug, Clone, Copy)]
struct Counts {
    connections: u64,
    bytes_to_destination: u64,
    bytes_to_source: u64,
    first_seen: i64,
    last_seen: i64,
}

struct Writer {
    conn: Connection,
    /// For error messages.
    path: PathBuf,
    host: String,
    stats: Arc<RecorderStats>,
    /// Aggregated counters waiting to be written, keyed by (hour, edge).
    pending: HashMap<(i64, EdgeKey), Counts>,
    /// How many events `pending` holds (for the `written` counter).
    pending_events: u64,
    /// Imported file prefixes to write with the pending counters.
    pending_imports: Vec<ImportedPrefix>,
    /// Declarations to write with the pending counters.
    pending_declarations: Vec<Declaration>,
    interval: Duration,
    /// The last write failed: no early writes until one succeeds again.
    failing: bool,
    /// Time to the next write: the interval, doubled after each failed write up to
    /// [`MAX_RETRY_DELAY`], so a locked or full ledger is not hammered.
    delay: Duration,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut next_flush = Instant::now() + self.delay;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Imported(prefix)) => self.imported(prefix),
                Ok(Msg::Declared(decl)) => self.declared(decl),
                Ok(Msg::Event(event)) => {
                    self.add(event);
                    // Under steady traffic the receive never times out: the interval is checked
                    // here too. While writes fail, retry only once per interval, not per event.
                    let early = !self.failing && self.pending.len() >= EARLY_FLUSH_KEYS;
                    if early || Instant::now() >= next_flush {
                        self.flush();
                        next_flush = Instant::now() + self.delay;
                    }
                }
                Ok(Msg::Flush(done)) => {
                    let mut waiting = vec![done];
                    let stop = self.drain(&rx, &mut waiting);
                    self.flush();
                    answer(waiting);
                    if stop {
                        return;
                    }
                }
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    let mut waiting = Vec::new();
                    self.drain(&rx, &mut waiting);
                    self.flush();
                    answer(waiting);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.flush();
                    next_flush = Instant::now() + self.delay;
                }
            }
        }
    }

    /// Takes what is already queued, collecting flush requests to answer after the write.
    /// Bounded, so producers that never stop cannot keep it here. True when asked to stop.
    fn drain(&mut self, rx: &Receiver<Msg>, waiting: &mut Vec<SyncSender<()>>) -> bool {
        for _ in 0..10_000_000usize {
            match rx.try_recv() {
                Ok(Msg::Event(event)) => self.add(event),
                Ok(Msg::Imported(prefix)) => self.imported(prefix),
                Ok(Msg::Declared(decl)) => self.declared(decl),
                Ok(Msg::Flush(done)) => waiting.push(done),
                Ok(Msg::Shutdown) => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// Keeps `prefix` to write with the pending counters, unless an event before it was lost.
    fn imported(&mut self, prefix: ImportedPrefix) {
        if self.stats.dropped.load(Ordering::Relaxed) > 0 {
            tracing::error!(
                ledger = %self.path.display(),
                file = %prefix.file,
                "events were dropped; not recording the file as imported"
            );
            return;
        }
        self.pending_imports.push(prefix);
    }

    fn declared(&mut self, mut decl: Declaration) {
        decl.host.clone_from(&self.host);
        self.pending_declarations.push(decl);
    }

    fn add(&mut self, event: Event) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let (edge, at, connections, to_dst, to_src) = match event {
            Event::Opened { edge, at } => (edge, at, 1, 0, 0),
            Event::Closed { edge, at, bytes_to_destination, bytes_to_source, .. } => {
                (edge, at, 0, bytes_to_destination, bytes_to_source)
            }
        };
        let ms = unix_ms(at);
        let key = (ms.div_euclid(3_600_000), edge);
        let full = self.pending.len() >= MAX_PENDING_KEYS;
        let counts = match self.pending.get_mut(&key) {
            Some(c) => c,
            None if full => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            None => self.pending.entry(key).or_insert(Counts {
                connections: 0,
                bytes_to_destination: 0,
                bytes_to_source: 0,
                first_seen: ms,
                last_seen: ms,
            }),
        };
        counts.connections += connections;
        counts.bytes_to_destination = counts.bytes_to_destination.saturating_add(to_dst);
        counts.bytes_to_source = counts.bytes_to_source.saturating_add(to_src);
        counts.first_seen = counts.first_seen.min(ms);
        counts.last_seen = counts.last_seen.max(ms);
        self.pending_events += 1;
    }

    /// Writes the pending counters in one transaction. On failure they stay pending.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() && self.pending_imports.is_empty() && self.pending_declarations.is_empty()
        {
            return true;
        }
        match self.write() {
            Ok(()) => {
                self.stats.written.fetch_add(self.pending_events, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.pending.clear();
                self.pending_events = 0;
                self.pending_imports.clear();
                self.pending_declarations.clear();
                self.failing = false;
                self.delay = self.interval;
                true
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                self.failing = true;
                self.delay = (self.delay * 2).min(MAX_RETRY_DELAY.max(self.interval));
                tracing::error!(
                    ledger = %self.path.display(),
                    error = %e,
                    pending = self.pending.len(),
                    "ledger write failed; keeping the batch to retry"
                );
                false
            }
        }
    }

    fn write(&mut self) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO edge_hour (host, hour, source, destination, identified, mode, verdict,
                    connections, bytes_to_destination, bytes_to_source, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT DO UPDATE SET
                    connections = connections + excluded.connections,
                    bytes_to_destination = bytes_to_destination + excluded.bytes_to_destination,
                    bytes_to_source = bytes_to_source + excluded.bytes_to_source,
                    first_seen = min(first_seen, excluded.first_seen),
                    last_seen = max(last_seen, excluded.last_seen)",
            )?;
            for ((hour, edge), c) in &self.pending {
                stmt.execute(rusqlite::params![
                    self.host,
                    hour,
                    edge.source,
                    edge.destination,
                    edge.identified.as_str(),
                    edge.mode.as_str(),
                    edge.verdict.as_str(),
                    clamp(c.connections),
                    clamp(c.bytes_to_destination),
                    clamp(c.bytes_to_source),
                    c.first_seen,
                    c.last_seen,
                ])?;
            }
            if !self.pending_imports.is_empty() {
                let mut stmt = tx.prepare_cached(imported::INSERT)?;
                for prefix in &self.pending_imports {
                    stmt.execute(imported::insert_params(prefix))?;
                }
            }
            for decl in &self.pending_declarations {
                declared::upsert(&tx, decl)?;
            }
        }
        tx.commit()
    }
}

/// Tells the flush requesters that their events are written (or failed and are pending).
fn answer(waiting: Vec<SyncSender<()>>) {
    for done in waiting {
        let _ = done.send(());
    }
}

/// SQLite integers are signed 64-bit.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch; times before it count as the epoch.
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}
