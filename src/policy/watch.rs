//! The agent's view of the policy file: reloaded on change (and on demand), published over a
//! `watch` channel; a bad new file is refused and the last good policy stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{error, info};

use super::{Policy, PolicyError};

/// How long to let a burst of file events settle.
const SETTLE: Duration = Duration::from_millis(50);
/// Safety net against missed events: look at the file this often anyway.
const POLL: Duration = Duration::from_secs(2);

/// Reload counters, for metrics and `/status`.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Unix seconds of the last good load.
    pub last_ok: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// Watches one policy file. Dropping it stops the watching thread.
pub struct PolicyWatcher {
    kick: mpsc::Sender<()>,
    stats: Arc<ReloadStats>,
    _watcher: Option<notify::RecommendedWatcher>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl PolicyWatcher {
    /// Loads the policy (an error if it is missing or invalid) and starts watching it.
    pub fn start(path: &Path) -> Result<(PolicyWatcher, watch::Receiver<Arc<Policy>>), PolicyError> {
        let first = Policy::load(path)?;
        let stats = Arc::new(ReloadStats::default());
        stats.ok.store(1, Ordering::Relaxed);
        stats.last_ok.store(now_secs(), Ordering::Relaxed);
        info!(path = %path.display(), version = first.version(), "policy loaded");
        let (tx, rx) = watch::channel(Arc::new(first));
        let (kick, kicked) = mpsc::channel::<()>();

        // Config management replaces the file by rename: watch the directory, filter by name.
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let name = path.file_name().map(|n| n.to_owned());
        let watcher = {
            use notify::Watcher as _;
            let kick = kick.clone();
            let w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Ok(ev) = ev
                    && !matches!(ev.kind, notify::EventKind::Access(_))
                    && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
                {
                    let _ = kick.send(());
                }
            });
            match w {
                Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(e) => {
                        error!(dir = %dir.display(), error = %e, "cannot watch the policy directory; polling instead");
                        None
                    }
                },
                Err(e) => {
                    error!(error = %e, "cannot watch the policy file; polling instead");
                    None
                }
            }
        };
        let path: PathBuf = path.to_owned();
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("cordon-policy".into())
            .spawn(move || reload_loop(&path, &tx, &kicked, &thread_stats))
            .map_err(|e| PolicyError::Write { path: dir, message: format!("starting the watcher: {e}") })?;
        Ok((PolicyWatcher { kick, stats, _watcher: watcher }, rx))
    }

    /// Re-reads the file now (SIGHUP).
    pub fn reload_now(&self) {
        let _ = self.kick.send(());
    }

    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }
}

fn reload_loop(
    path: &Path,
    tx: &watch::Sender<Arc<Policy>>,
    kicked: &mpsc::Receiver<()>,
    stats: &ReloadStats,
) {
    let mut last_text = std::fs::read_to_string(path).ok();
    loop {
        let forced = match kicked.recv_timeout(POLL) {
            Ok(()) => {
                std::thread::sleep(SETTLE);
                while kicked.try_recv().is_ok() {}
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            // The watcher was dropped: the agent is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if tx.is_closed() {
            return;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                if forced || last_text.is_some() {
                    error!(path = %path.display(), error = %e, "policy file unreadable; keeping the last good policy");
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    last_text = None;
                }
                continue;
            }
        };
        if !forced && last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        let changed = last_text.as_deref() != Some(text.as_str());
        last_text = Some(text.clone());
        match Policy::parse(&text, path) {
            Ok(policy) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.last_ok.store(now_secs(), Ordering::Relaxed);
                *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if changed || forced {
                    info!(path = %path.display(), version = policy.version(), "policy reloaded");
                    tx.send_replace(Arc::new(policy));
                }
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                error!(error = %e, "new policy refused; keeping the last good one");
            }
        }
    }
}
