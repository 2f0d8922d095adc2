//! Watching the discovery directory and publishing a new snapshot when it changes.
//!
//! Owns the rescan thread: file system events (notify) only wake it, bursts are coalesced (a quiet
//! period of `debounce`, but never more than `max_delay` after the first event), every wake-up
//! rescans the whole directory, a periodic rescan covers missed events, and a snapshot is published
//! on a tokio `watch` channel only when its content changed. File reads happen on this dedicated
//! thread, never on the async data plane. It must not parse files itself (that is [`crate::scan`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::watch;

use crate::scan::Scanner;
use crate::{DiscoveryError, FileProblem, Snapshot};

/// A change is published at most this long after the first event of a burst, however long the
/// burst goes on (unless `debounce` itself is longer).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(500);
/// How often the whole directory is rescanned even without events.
pub const DEFAULT_RESCAN_EVERY: Duration = Duration::from_secs(30);
/// While the directory cannot be read, it is looked for this often (it has no watch to wake us).
const MISSING_DIR_RETRY: Duration = Duration::from_secs(1);
/// Wake-ups queued for the rescan thread; when full, a rescan is already due and more are dropped.
const WAKE_QUEUE: usize = 64;

/// How a [`Watcher`] reacts to changes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchOptions {
    /// Quiet time after the last event before rescanning.
    pub debounce: Duration,
    /// Longest wait after the first event of a burst before rescanning.
    pub max_delay: Duration,
    /// Period of the safety-net full rescan.
    pub rescan_every: Duration,
    /// Listen to file system events; `false` relies on the periodic rescan alone (for file
    /// systems without change notification, such as some network mounts).
    pub fs_events: bool,
}

impl WatchOptions {
    /// The defaults around a given debounce.
    pub fn new(debounce: Duration) -> WatchOptions {
        WatchOptions {
            debounce,
            max_delay: DEFAULT_MAX_DELAY.max(debounce),
            rescan_every: DEFAULT_RESCAN_EVERY,
            fs_events: true,
        }
    }
}

/// Counters for the admin endpoint. A reload "fails" when the directory could not be read or
/// any file in it was refused; the last good backends are served either way.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Rescans that read every file.
    pub reloads_ok: AtomicU64,
    /// Rescans with at least one problem.
    pub reloads_failed: AtomicU64,
    /// Unix time (seconds) of the last rescan without problems; 0 if none yet.
    pub last_ok: AtomicU64,
}

/// What wakes the rescan thread.
enum Wake {
    /// Something happened in the directory.
    Fs,
    /// `reload_now` was called (the flag says so; this only wakes the thread).
    Reload,
    /// The [`Watcher`] was dropped (the flag says so; this only wakes the thread).
    Stop,
}

/// Flags shared between the [`Watcher`] handle, the notify callback and the rescan thread.
#[derive(Debug, Default)]
struct Flags {
    /// Rescan at once.
    reload: AtomicBool,
    /// Leave the thread.
    stop: AtomicBool,
    /// The directory itself was removed or moved: watch the path again before the next scan.
    rewatch: AtomicBool,
}

/// Keeps the discovery directory watched; dropping it stops the watching.
#[derive(Debug)]
pub struct Watcher {
    /// Wakes the rescan thread.
    wake: SyncSender<Wake>,
    /// Reload and stop requests.
    flags: Arc<Flags>,
    /// Counters shared with the thread.
    stats: Arc<WatchStats>,
    /// A receiver kept to hand out more (`subscribe`) and to read the current snapshot.
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Watcher {
    /// Reads `dir` once (an unreadable directory is an error naming it), then watches it with
    /// the default options. The snapshot channel starts with that first read (generation 1).
    /// Meant to be called inside a tokio runtime; the rescans run on a dedicated thread.
    pub fn start(
        dir: &Path,
        debounce: Duration,
    ) -> Result<(Watcher, watch::Receiver<Arc<Snapshot>>), DiscoveryError> {
        Watcher::start_with(dir, WatchOptions::new(debounce))
    }

    /// [`Watcher::start`] with every option spelled out.
    pub fn start_with(
        dir: &Path,
        options: WatchOptions,
    ) -> Result<(Watcher, watch::Receiver<Arc<Snapshot>>), DiscoveryError> {
        let flags = Arc::new(Flags::default());
        let (wake_tx, wake_rx) = mpsc::sync_channel(WAKE_QUEUE);
        // Watch before the first scan so that no change falls between the two.
        let fs = if options.fs_events { Some(watch_dir(dir, wake_tx.clone(), flags.clone())?) } else { None };
        let mut scanner = Scanner::new(dir);
        let first = scanner.scan()?;
        let stats = Arc::new(WatchStats::default());
        record(&stats, first.problems.is_empty());
        log_problem_changes(&BTreeMap::new(), &first.problems, &first.services);
        let reported = problem_map(&first.problems);
        let snapshot = Arc::new(Snapshot::new(dir.to_path_buf(), first.services, first.problems, 1));
        tracing::info!(dir = %dir.display(), services = snapshot.service_count(), "discovery loaded");
        let (tx, rx) = watch::channel(snapshot);
        let worker = Worker {
            scanner,
            fs,
            wake: wake_rx,
            flags: flags.clone(),
            stats: stats.clone(),
            tx,
            options,
            dir_failed: false,
            reported,
        };
        std::thread::Builder::new()
            .name("cordon-discovery".to_string())
            .spawn(move || worker.run())
            .map_err(DiscoveryError::Thread)?;
        Ok((Watcher { wake: wake_tx, flags, stats, rx: rx.clone() }, rx))
    }

    /// Rescans at once (for SIGHUP), without waiting for events or the debounce.
    pub fn reload_now(&self) {
        self.flags.reload.store(true, Ordering::SeqCst);
        // A full queue means the thread is about to wake anyway and will see the flag.
        let _ = self.wake.try_send(Wake::Reload);
    }

    /// The reload counters.
    pub fn stats(&self) -> Arc<WatchStats> {
        self.stats.clone()
    }

    /// Another receiver of the snapshot channel.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// The snapshot published last.
    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(Wake::Stop);
    }
}

/// Sets up notify on `dir`; every relevant event queues a wake-up.
fn watch_dir(
    dir: &Path,
    wake: SyncSender<Wake>,
    flags: Arc<Flags>,
) -> Result<RecommendedWatcher, DiscoveryError> {
    // notify reports paths under the watched path made absolute against the current directory.
    let own_dir = match std::env::current_dir() {
        Ok(cwd) if dir.is_relative() => cwd.join(dir),
        _ => dir.to_path_buf(),
    };
    let handler = move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) => {
                if !relevant(&event, &own_dir) {
                    return;
                }
                if event.paths.iter().any(|p| p == &own_dir) {
                    flags.rewatch.store(true, Ordering::SeqCst);
                }
            }
            Err(e) => tracing::warn!(error = %e, "discovery watch error; rescanning"),
        }
        // Full: a rescan is already due and will see this change too. Disconnected: stopping.
        let _ = wake.try_send(Wake::Fs);
    };
    let err = |source| DiscoveryError::Watch { dir: dir.to_path_buf(), source };
    let mut watcher = notify::recommended_watcher(handler).map_err(err)?;
    watcher.watch(dir, RecursiveMode::NonRecursive).map_err(err)?;
    Ok(watcher)
}

/// Whether an event can change what a scan sees. Opening and reading files (our own scans do
/// that) cannot; neither can anything that touches only dotfiles such as Synapse's temp files.
fn relevant(event: &notify::Event, dir: &Path) -> bool {
    use notify::event::{AccessKind, AccessMode};
    if let EventKind::Access(kind) = event.kind
        && kind != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    event.paths.is_empty()
        || event
            .paths
            .iter()
            .any(|p| p == dir || p.file_name().is_some_and(|n| !n.as_encoded_bytes().starts_with(b".")))
}

/// The rescan thread's state.
struct Worker {
    /// Reads the directory and keeps the last good backends.
    scanner: Scanner,
    /// The notify watch; `None` when only periodic rescans are used.
    fs: Option<RecommendedWatcher>,
    /// Wake-ups from notify and the handle.
    wake: Receiver<Wake>,
    /// Reload, stop and rewatch requests.
    flags: Arc<Flags>,
    /// Reload counters.
    stats: Arc<WatchStats>,
    /// Where snapshots are published.
    tx: watch::Sender<Arc<Snapshot>>,
    /// Timing.
    options: WatchOptions,
    /// The last scan could not read the directory (so its watch may need setting up again).
    dir_failed: bool,
    /// Problems already logged, so a file that stays bad is not logged on every periodic rescan.
    reported: BTreeMap<PathBuf, String>,
}

impl Worker {
    fn run(mut self) {
        // (first event, last event) of the burst waiting to be scanned.
        let mut burst: Option<(Instant, Instant)> = None;
        let mut next_periodic = Instant::now() + self.options.rescan_every;
        while !self.flags.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let deadline = match burst {
                Some((first, last)) => (last + self.options.debounce).min(first + self.options.max_delay),
                None => next_periodic,
            };
            if self.flags.reload.swap(false, Ordering::SeqCst) || deadline <= now {
                self.rescan();
                burst = None;
                let period = if self.dir_failed {
                    MISSING_DIR_RETRY.min(self.options.rescan_every)
                } else {
                    self.options.rescan_every
                };
                next_periodic = Instant::now() + period;
                continue;
            }
            match self.wake.recv_timeout(deadline - now) {
                Ok(Wake::Fs) => {
                    let at = Instant::now();
                    burst = Some(burst.map_or((at, at), |(first, _)| (first, at)));
                }
                Ok(Wake::Reload) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        tracing::debug!(dir = %self.scanner.dir().display(), "discovery watcher stopped");
    }

    /// Rescans the directory and publishes the result if anything changed.
    fn rescan(&mut self) {
        if self.flags.rewatch.swap(false, Ordering::SeqCst) || self.dir_failed {
            self.rewatch();
        }
        let current = self.tx.borrow().clone();
        let (services, problems) = match self.scanner.scan() {
            Ok(scan) => {
                self.dir_failed = false;
                (scan.services, scan.problems)
            }
            Err(e) => {
                // Keep serving everything we had; say why nothing is fresh.
                self.dir_failed = true;
                let dir = self.scanner.dir().to_path_buf();
                let mut problems: Vec<FileProblem> =
                    current.problems().iter().filter(|p| p.file != dir).cloned().collect();
                let message = match &e {
                    DiscoveryError::ReadDir { source, .. } => {
                        format!("cannot read the directory ({source}); serving the last snapshot")
                    }
                    other => error_chain(other),
                };
                problems.push(FileProblem { file: dir, message });
                (current.service_map().clone(), problems)
            }
        };
        record(&self.stats, problems.is_empty());
        log_problem_changes(&self.reported, &problems, &services);
        self.reported = problem_map(&problems);
        if current.same_as(&services, &problems) {
            return;
        }
        let generation = current.generation() + 1;
        let next = Snapshot::new(self.scanner.dir().to_path_buf(), services, problems, generation);
        tracing::info!(
            dir = %self.scanner.dir().display(),
            generation,
            services = next.service_count(),
            problems = next.problems().len(),
            "discovery changed"
        );
        self.tx.send_replace(Arc::new(next));
    }

    /// Points the notify watch at the directory path again (after it was removed or replaced).
    fn rewatch(&mut self) {
        let dir = self.scanner.dir().to_path_buf();
        if let Some(fs) = self.fs.as_mut() {
            let _ = fs.unwatch(&dir);
            if let Err(e) = fs.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::debug!(dir = %dir.display(), error = %e, "discovery directory not watchable yet");
            }
        }
    }
}

fn record(stats: &WatchStats, ok: bool) {
    if ok {
        stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        stats.last_ok.store(now, Ordering::Relaxed);
    } else {
        stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
    }
}

fn problem_map(problems: &[FileProblem]) -> BTreeMap<PathBuf, String> {
    problems.iter().map(|p| (p.file.clone(), p.message.clone())).collect()
}

/// Warns about new or changed problems and notes the files that are accepted again.
fn log_problem_changes(
    before: &BTreeMap<PathBuf, String>,
    now: &[FileProblem],
    services: &BTreeMap<String, Arc<[crate::Backend]>>,
) {
    for p in now {
        if before.get(&p.file) == Some(&p.message) {
            continue;
        }
        let service = p.file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json"));
        let kept_last_good = service.is_some_and(|s| services.contains_key(s));
        tracing::warn!(file = %p.file.display(), problem = %p.message, kept_last_good, "discovery file refused");
    }
    for file in before.keys() {
        if !now.iter().any(|p| &p.file == file) {
            tracing::info!(file = %file.display(), "discovery file no longer refused");
        }
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    #[test]
    fn only_events_that_can_change_a_scan_wake_the_thread() {
        let dir = Path::new("/run/synapse");
        let wakes = |kind, paths: &[&str]| relevant(&event(kind, paths), dir);
        // Our own scans open and read files: those must not cause another scan.
        assert!(!wakes(EventKind::Access(AccessKind::Open(AccessMode::Any)), &["/run/synapse/web.json"]));
        assert!(!wakes(EventKind::Access(AccessKind::Close(AccessMode::Read)), &["/run/synapse/web.json"]));
        // Synapse writing its temp file is not news until the rename.
        assert!(!wakes(EventKind::Create(CreateKind::File), &["/run/synapse/.web.json.tmp"]));
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(wakes(rename, &["/run/synapse/.web.json.tmp", "/run/synapse/web.json"]));
        assert!(wakes(EventKind::Access(AccessKind::Close(AccessMode::Write)), &["/run/synapse/web.json"]));
        // The directory itself going away, and overflow notices without paths, always wake.
        assert!(wakes(EventKind::Remove(notify::event::RemoveKind::Folder), &["/run/synapse"]));
        assert!(wakes(EventKind::Other, &[]));
    }
}
