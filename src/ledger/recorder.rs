//! The writer thread: the only owner of the ledger's write connection.
//!
//! Events arrive over a bounded `sync_channel`; the thread adds them into in-memory counters keyed
//! by (hour, edge) and writes the counters in one transaction per flush interval (or sooner when
//! many distinct edges are pending). A failed write (full disk, unwritable file) is logged and
//! counted, and its counters stay pending and are retried at the next interval; while writes keep
//! failing, events for edges not already pending are dropped once [`MAX_PENDING_KEYS`] is reached,
//! so memory stays bounded. The data plane never waits on any of this.
//!
//! A ledger found damaged (at open, or when a write reports it) is moved aside and a fresh one
//! takes the records. At a clean stop whatever still cannot be written is kept in a side ledger
//! ([`Unwritten`] says where, and how much), which the next start adds into the ledger.
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
use super::{EdgeKey, Event, LedgerError, rescue, schema};

/// Pending distinct (hour, edge) counters that trigger a write before the interval is up.
const EARLY_FLUSH_KEYS: usize = 50_000;
/// How long the writer lets events queue up after one wakes it, so that it is woken (a futex call
/// and a context switch, paid on the data plane's core) at most this often under traffic, not once
/// per connection. Far below any flush interval; 16,384 events (the default channel) in this time
/// would be 3 million per second.
const GATHER: Duration = Duration::from_millis(5);
/// The most messages taken at once for a flush or a stop.
const DRAIN_LIMIT: usize = 10_000_000;
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
    /// Damaged ledgers moved aside for a fresh one.
    pub ledgers_set_aside: AtomicU64,
    /// Rows carried from damaged ledgers into the fresh ones that replaced them.
    pub rows_salvaged: AtomicU64,
    /// Why the last batch write failed (`database or disk is full`); `None` once one succeeds.
    pub last_write_error: std::sync::Mutex<Option<String>>,
}

impl RecorderStats {
    /// Why writes are failing, while they are.
    pub fn last_write_error(&self) -> Option<String> {
        self.last_write_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_last_write_error(&self, e: Option<String>) {
        *self.last_write_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// Counters a clean stop could not write to the ledger, and where they were kept instead.
#[derive(Debug)]
pub struct Unwritten {
    /// The ledger that refused them.
    pub ledger: PathBuf,
    /// Connections they count.
    pub connections: u64,
    /// Connection events in them (an open and a close per connection).
    pub events: u64,
    /// Ledger rows (hour, edge) they make.
    pub rows: usize,
    /// The last write error.
    pub cause: String,
    /// The side ledger that holds them, or why none could be written.
    pub kept: Result<PathBuf, String>,
}

impl std::error::Error for Unwritten {}

impl std::fmt::Display for Unwritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} connections ({} events, {} rows) could not be written ({}); ",
            self.ledger.display(),
            self.connections,
            self.events,
            self.rows,
            self.cause
        )?;
        match &self.kept {
            Ok(side) if side.parent() == self.ledger.parent() => {
                write!(f, "kept in {}, which the next start adds into the ledger", side.display())
            }
            Ok(side) => write!(
                f,
                "kept in {}: move it beside the ledger and the next start adds it in",
                side.display()
            ),
            Err(e) => write!(f, "they could not be kept anywhere either ({e}) and are lost"),
        }
    }
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
    /// Drain the channel, write, and stop; keep what cannot be written in a side ledger when asked.
    Shutdown {
        keep: bool,
    },
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
    thread: Option<JoinHandle<Option<Unwritten>>>,
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
        let stats = Arc::new(RecorderStats::default());
        let mut conn = match schema::open_write(path, host, busy) {
            Err(LedgerError::Damaged { detail, .. }) => {
                let aside = rescue::set_aside(path)?;
                stats.ledgers_set_aside.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    ledger = %path.display(),
                    damaged = %detail,
                    moved_to = %aside.display(),
                    "THE LEDGER IS DAMAGED: moved it aside and started a fresh one; what it held is in the moved file"
                );
                let mut conn = schema::open_write(path, host, busy)?;
                salvage_into(&mut conn, path, &aside, host, &stats);
                conn
            }
            other => other?,
        };
        adopt_unwritten(&mut conn, path);
        let (tx, rx) = sync_channel(capacity.max(1));
        let writer = Writer {
            conn,
            busy,
            last_error: None,
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
            capacity: capacity.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("cordon-ledger".into())
            .spawn(move || writer.run(rx))
            .map_err(LedgerError::Thread)?;
        Ok((Recorder { tx: tx.clone(), thread: Some(thread) }, RecorderHandle { tx, stats }))
    }

    /// Flushes everything received and joins the writer thread. What could not be written is kept
    /// in a side ledger that the next start adds in, and logged; [`Recorder::close`] returns it.
    pub fn shutdown(mut self) {
        let _ = self.stop(true);
    }

    /// Like [`Recorder::shutdown`], returning what could not be written; with `keep` it is also
    /// kept in a side ledger that the next start adds in.
    pub fn close(mut self, keep: bool) -> Result<(), Unwritten> {
        match self.stop(keep) {
            Some(unwritten) => Err(unwritten),
            None => Ok(()),
        }
    }

    fn stop(&mut self, keep: bool) -> Option<Unwritten> {
        let thread = self.thread.take()?;
        // Blocks only while the channel is full, which the writer is draining.
        let _ = self.tx.send(Msg::Shutdown { keep });
        match thread.join() {
            Ok(unwritten) => unwritten,
            Err(_) => {
                tracing::error!("ledger writer thread panicked");
                None
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(unwritten) = self.stop(true) {
            tracing::error!("{unwritten}");
        }
    }
}

/// Adds the side ledgers a previous stop left beside `path` into the ledger, then removes them.
/// One that cannot be read or added stays, and is logged.
/// Carries what the damaged ledger moved to `aside` still holds into the fresh `conn`, and says
/// what was carried and what is lost.
fn salvage_into(conn: &mut Connection, ledger: &Path, aside: &Path, host: &str, stats: &RecorderStats) {
    match super::salvage::salvage(aside, conn, host) {
        Ok(s) => {
            stats.rows_salvaged.fetch_add(s.rows, Ordering::Relaxed);
            tracing::warn!(
                ledger = %ledger.display(),
                from = %aside.display(),
                rows = s.rows,
                refused_rows = s.refused,
                damaged_tables = ?s.damaged_tables,
                "salvaged the damaged ledger's readable rows into the fresh one; rows on its damaged pages are lost"
            );
        }
        Err(e) => tracing::error!(
            ledger = %ledger.display(),
            from = %aside.display(),
            error = %e,
            "nothing could be salvaged from the damaged ledger; its history is only in the moved file"
        ),
    }
}

fn adopt_unwritten(conn: &mut Connection, path: &Path) {
    for side in rescue::unwritten_beside(path) {
        let added = (|| -> Result<usize, String> {
            let opened = schema::open_read(&side).map_err(|e| e.to_string())?;
            let mut stmt = opened
                .conn
                .prepare(
                    "SELECT host, hour, source, destination, identified, mode, verdict, connections,
                        bytes_to_destination, bytes_to_source, first_seen, last_seen FROM edge_hour",
                )
                .map_err(|e| e.to_string())?;
            let rows: Vec<[rusqlite::types::Value; 12]> = stmt
                .query_map([], |r| {
                    Ok([
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ])
                })
                .and_then(|rows| rows.collect())
                .map_err(|e| e.to_string())?;
            let tx = conn.transaction().map_err(|e| e.to_string())?;
            {
                let mut insert = tx.prepare_cached(UPSERT).map_err(|e| e.to_string())?;
                for row in &rows {
                    insert.execute(rusqlite::params_from_iter(row.iter())).map_err(|e| e.to_string())?;
                }
            }
            tx.commit().map_err(|e| e.to_string())?;
            Ok(rows.len())
        })();
        match added {
            Ok(rows) => {
                rescue::remove(&side);
                tracing::info!(ledger = %path.display(), from = %side.display(), rows,
                    "added the counters a previous stop could not write");
            }
            Err(e) => tracing::error!(ledger = %path.display(), side = %side.display(), error = %e,
                "cannot add counters a previous stop could not write; the file stays"),
        }
    }
}

/// Adds one (host, hour, edge) row of counters into the ledger.
const UPSERT: &str = "INSERT INTO edge_hour (host, hour, source, destination, identified, mode, verdict,
        connections, bytes_to_destination, bytes_to_source, first_seen, last_seen)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
     ON CONFLICT DO UPDATE SET
        connections = connections + excluded.connections,
        bytes_to_destination = bytes_to_destination + excluded.bytes_to_destination,
        bytes_to_source = bytes_to_source + excluded.bytes_to_source,
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen)";

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
    /// The busy timeout the connection was opened with, to reopen a fresh ledger with.
    busy: Duration,
    /// Why the last write failed, for the report at a stop.
    last_error: Option<String>,
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
    /// The channel's capacity: what one gather takes at most, so that a flood that never pauses
    /// still sees the interval and the early write checked.
    capacity: usize,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) -> Option<Unwritten> {
        let mut next_flush = Instant::now() + self.delay;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Imported(prefix)) => self.imported(prefix),
                Ok(Msg::Declared(decl)) => self.declared(decl),
                Ok(Msg::Event(event)) => {
                    self.add(event);
                    // Let the next events queue up rather than be woken for each: waking this
                    // thread costs the data plane a futex call and a context switch per event.
                    std::thread::sleep(GATHER.min(next_flush.saturating_duration_since(Instant::now())));
                    let mut waiting = Vec::new();
                    let stop = self.drain(&rx, &mut waiting, self.capacity);
                    // Under steady traffic the receive never times out: the interval is checked
                    // here too. While writes fail, retry only once per interval, not per event.
                    let early = !self.failing && self.pending.len() >= EARLY_FLUSH_KEYS;
                    if let Some(keep) = stop {
                        let unwritten = self.finish(keep);
                        answer(waiting);
                        return unwritten;
                    }
                    if early || !waiting.is_empty() || Instant::now() >= next_flush {
                        self.flush();
                        next_flush = Instant::now() + self.delay;
                    }
                    answer(waiting);
                }
                Ok(Msg::Flush(done)) => {
                    let mut waiting = vec![done];
                    let stop = self.drain(&rx, &mut waiting, DRAIN_LIMIT);
                    self.flush();
                    answer(waiting);
                    if let Some(keep) = stop {
                        return self.finish(keep);
                    }
                }
                Ok(Msg::Shutdown { keep }) => {
                    let mut waiting = Vec::new();
                    self.drain(&rx, &mut waiting, DRAIN_LIMIT);
                    let unwritten = self.finish(keep);
                    answer(waiting);
                    return unwritten;
                }
                Err(RecvTimeoutError::Disconnected) => return self.finish(true),
                Err(RecvTimeoutError::Timeout) => {
                    self.flush();
                    next_flush = Instant::now() + self.delay;
                }
            }
        }
    }

    /// Takes what is already queued (at most `limit` messages), collecting flush requests to
    /// answer after the write. Bounded, so producers that never stop cannot keep it here.
    /// `Some(keep)` when asked to stop.
    fn drain(&mut self, rx: &Receiver<Msg>, waiting: &mut Vec<SyncSender<()>>, limit: usize) -> Option<bool> {
        for _ in 0..limit {
            match rx.try_recv() {
                Ok(Msg::Event(event)) => self.add(event),
                Ok(Msg::Imported(prefix)) => self.imported(prefix),
                Ok(Msg::Declared(decl)) => self.declared(decl),
                Ok(Msg::Flush(done)) => waiting.push(done),
                Ok(Msg::Shutdown { keep }) => return Some(keep),
                Err(_) => return None,
            }
        }
        None
    }

    /// The last writes at a stop: the batch, one retry, then (with `keep`) a side ledger.
    fn finish(mut self, keep: bool) -> Option<Unwritten> {
        if self.flush() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
        if self.flush() {
            return None;
        }
        let cause = self.last_error.take().unwrap_or_default();
        let kept = if keep { self.keep_unwritten() } else { Err("not asked to keep them".into()) };
        let unwritten = Unwritten {
            ledger: self.path.clone(),
            connections: self.pending.values().map(|c| c.connections).sum(),
            events: self.pending_events,
            rows: self.pending.len(),
            cause,
            kept,
        };
        tracing::error!("{unwritten}");
        Some(unwritten)
    }

    /// Writes the pending counters into a side ledger; its path, or why none could be written.
    fn keep_unwritten(&self) -> Result<PathBuf, String> {
        let mut errors = Vec::new();
        for side in rescue::unwritten_candidates(&self.path, &self.host) {
            match rescue::keep(&side, &self.host, |conn| {
                write_rows(conn, &self.host, &self.pending, &[], &[])
            }) {
                Ok(()) => return Ok(side),
                Err(e) => errors.push(format!("{}: {e}", side.display())),
            }
        }
        Err(errors.join("; "))
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
            Event::Progress { edge, at, bytes_to_destination, bytes_to_source } => {
                (edge, at, 0, bytes_to_destination, bytes_to_source)
            }
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
        let mut result = self.write();
        if let Err(e) = &result
            && matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseCorrupt))
            && self.replace_damaged(&e.to_string())
        {
            result = self.write();
        }
        match result {
            Ok(()) => self.written(),
            Err(e) => {
                self.last_error = Some(e.to_string());
                self.stats.set_last_write_error(Some(e.to_string()));
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

    /// The pending batch is in the ledger: count it and start the next.
    fn written(&mut self) -> bool {
        self.stats.written.fetch_add(self.pending_events, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.pending.clear();
        self.pending_events = 0;
        self.pending_imports.clear();
        self.pending_declarations.clear();
        if self.failing {
            tracing::info!(ledger = %self.path.display(), "ledger writes succeed again");
            self.stats.set_last_write_error(None);
        }
        self.failing = false;
        self.delay = self.interval;
        true
    }

    /// A write found the ledger damaged: moves it aside and opens a fresh one. False when that
    /// failed too (the old connection is kept and the batch retried later).
    fn replace_damaged(&mut self, detail: &str) -> bool {
        let fresh = (|| {
            // Close ours first: the file is renamed under no open connection of this process.
            let placeholder = Connection::open_in_memory()
                .map_err(|source| LedgerError::Open { path: self.path.clone(), source })?;
            drop(std::mem::replace(&mut self.conn, placeholder));
            let aside = rescue::set_aside(&self.path)?;
            let conn = schema::open_write(&self.path, &self.host, self.busy)?;
            Ok::<_, LedgerError>((conn, aside))
        })();
        match fresh {
            Ok((conn, aside)) => {
                self.conn = conn;
                self.stats.ledgers_set_aside.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    ledger = %self.path.display(),
                    damaged = %detail,
                    moved_to = %aside.display(),
                    "THE LEDGER IS DAMAGED: moved it aside and started a fresh one; what it held is in the moved file"
                );
                salvage_into(&mut self.conn, &self.path, &aside, &self.host, &self.stats);
                true
            }
            Err(e) => {
                tracing::error!(ledger = %self.path.display(), error = %e, "the ledger is damaged and cannot be replaced");
                if let Ok(conn) = schema::open_write(&self.path, &self.host, self.busy) {
                    self.conn = conn;
                }
                false
            }
        }
    }

    fn write(&mut self) -> rusqlite::Result<()> {
        write_rows(
            &mut self.conn,
            &self.host,
            &self.pending,
            &self.pending_imports,
            &self.pending_declarations,
        )
    }
}

/// Writes `pending` counters (and imported prefixes) in one transaction.
fn write_rows(
    conn: &mut Connection,
    host: &str,
    pending: &HashMap<(i64, EdgeKey), Counts>,
    imports: &[ImportedPrefix],
    declarations: &[Declaration],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(UPSERT)?;
        for ((hour, edge), c) in pending {
            stmt.execute(rusqlite::params![
                host,
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
        if !imports.is_empty() {
            let mut stmt = tx.prepare_cached(imported::INSERT)?;
            for prefix in imports {
                stmt.execute(imported::insert_params(prefix))?;
            }
        }
        for decl in declarations {
            declared::upsert(&tx, decl)?;
        }
    }
    tx.commit()
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
