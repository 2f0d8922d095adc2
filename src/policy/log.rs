//! The decision log: JSON lines for a SIEM, one record per denial and per would-deny.
//!
//! Blocking file writes run on their own thread, fed by a bounded channel; the data plane's
//! [`DecisionLog::record`] never waits. Would-deny records (learn mode) are folded per edge and
//! minute with a `count`, so a service learning under an empty policy does not flood the log.
//! Denials (enforce mode) are written one by one up to [`DENIALS_PER_SOURCE_PER_SECOND`] per
//! source; past that they are folded per edge and minute too, so a scan cannot fill the disk.
//!
//! Rotation: the writer reopens the path on [`DecisionLog::reopen`] (the agent calls it on SIGHUP
//! and SIGUSR1) and by itself when the path no longer names the open file (device and inode,
//! checked at least once a second), so a logrotate-style rename loses no record: each is in
//! either the renamed file or the new one.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{error, info};

use super::{Identified, Mode, Outcome, PolicyError};

/// Denials written individually per source and second before folding starts.
pub const DENIALS_PER_SOURCE_PER_SECOND: u32 = 10;
/// Records waiting for the writer; past it, records are dropped and counted.
const CAPACITY: usize = 16_384;
/// How long the writer lets records queue up after one wakes it (see `Writer::run`).
const GATHER: Duration = Duration::from_millis(5);
/// How often the writer checks that the path still names the file it writes.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// One decision worth logging.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub at: SystemTime,
    pub source: String,
    pub source_addr: SocketAddr,
    pub destination: String,
    pub mode: Mode,
    pub outcome: Outcome,
    pub rule: Arc<str>,
    /// Why, as a label (`no-intention`, `plaintext`, `revoked`, ...).
    pub reason: super::Reason,
    pub tls: bool,
    pub identified: Identified,
}

/// One line of the log (the schema is documented in docs/decision-log.md).
#[derive(Debug, Serialize)]
struct Line<'a> {
    time: String,
    source: &'a str,
    source_addr: String,
    destination: &'a str,
    mode: &'a str,
    verdict: &'a str,
    outcome: &'a str,
    rule: &'a str,
    reason: &'a str,
    transport: &'a str,
    identified: &'a str,
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

enum Msg {
    Record(Box<DecisionRecord>),
    /// Close the file and open the path again (after a rotation).
    Reopen,
    Stop,
}

#[derive(Debug)]
struct Inner {
    tx: Option<SyncSender<Msg>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dropped: AtomicU64,
}

/// The data plane's handle on the decision log. Cheap to clone; disabled when no path is set.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    inner: Arc<Inner>,
}

impl DecisionLog {
    /// Opens (appending) the log at `path`, or a log that writes nothing when `path` is `None`.
    pub fn open(path: Option<&Path>) -> Result<DecisionLog, PolicyError> {
        let Some(path) = path else {
            return Ok(DecisionLog {
                inner: Arc::new(Inner { tx: None, thread: Mutex::new(None), dropped: AtomicU64::new(0) }),
            });
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| PolicyError::Write { path: dir.to_owned(), message: e.to_string() })?;
        }
        let (file, id) = open_append(path)
            .map_err(|e| PolicyError::Write { path: path.to_owned(), message: e.to_string() })?;
        let (tx, rx) = sync_channel(CAPACITY);
        let mut writer = Writer {
            out: BufWriter::new(file),
            id,
            checked: Instant::now(),
            path: path.to_owned(),
            folds: HashMap::new(),
            rates: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("cordon-decisions".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| PolicyError::Write {
                path: path.to_owned(),
                message: format!("starting the writer: {e}"),
            })?;
        Ok(DecisionLog {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Mutex::new(Some(thread)),
                dropped: AtomicU64::new(0),
            }),
        })
    }

    /// Hands a record to the writer; never blocks. Allowed outcomes are not logged.
    pub fn record(&self, record: DecisionRecord) {
        if record.outcome == Outcome::Allowed {
            return;
        }
        if let Some(tx) = &self.inner.tx
            && tx.try_send(Msg::Record(Box::new(record))).is_err()
        {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the writer to reopen the path (after a rotation); never blocks. Without it the writer
    /// still notices a renamed or removed file within a second.
    pub fn reopen(&self) {
        if let Some(tx) = &self.inner.tx {
            let _ = tx.try_send(Msg::Reopen);
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Writes everything pending (folded records included) and stops the writer.
    pub fn shutdown(&self) {
        if let Some(tx) = &self.inner.tx {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(t) = self.inner.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Folded records of one (source, destination, outcome) in one minute.
struct Fold {
    first: DecisionRecord,
    last: SystemTime,
    count: u64,
}

/// A file's device and inode: what the path must still name for the writer to keep its file.
type FileId = (u64, u64);

/// Opens `path` for appending (created if missing) and reads which file it is.
fn open_append(path: &Path) -> std::io::Result<(std::fs::File, FileId)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

struct Writer {
    out: BufWriter<std::fs::File>,
    /// The open file's identity, compared with the path's at most every [`ROTATION_CHECK`].
    id: FileId,
    checked: Instant,
    path: PathBuf,
    folds: HashMap<(String, String, Outcome, u64), Fold>,
    /// Denials written this second, per source: (second, count).
    rates: HashMap<String, (u64, u32)>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let stop = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Msg::Record(r)) => {
                    self.take(*r);
                    // A flood of refusals is written a batch at a time: the records that came
                    // meanwhile go out with one write, and the data plane wakes this thread at
                    // most once per GATHER instead of once per refusal.
                    std::thread::sleep(GATHER);
                    self.drain(&rx)
                }
                Ok(Msg::Reopen) => {
                    self.reopen();
                    false
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            if stop {
                self.drain(&rx);
                self.emit_folds(None);
                self.flush();
                return;
            }
            // Folds of minutes that have ended are complete: write them.
            self.emit_folds(Some(secs(SystemTime::now()) / 60));
            self.flush();
            if self.checked.elapsed() >= ROTATION_CHECK {
                self.checked = Instant::now();
                let current = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino())).ok();
                if current != Some(self.id) {
                    self.reopen();
                }
            }
        }
    }

    /// Takes the records already queued; true when asked to stop (or every sender is gone).
    /// Bounded, so a flood that never pauses cannot keep it here.
    fn drain(&mut self, rx: &Receiver<Msg>) -> bool {
        for _ in 0..CAPACITY {
            match rx.try_recv() {
                Ok(Msg::Record(r)) => self.take(*r),
                Ok(Msg::Reopen) => self.reopen(),
                Ok(Msg::Stop) | Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => return false,
            }
        }
        false
    }

    /// Flushes what is buffered into the file open now (a rotated file keeps its records), then
    /// opens the path again. If that fails the writer keeps its file and tries again later.
    fn reopen(&mut self) {
        self.flush();
        match open_append(&self.path) {
            Ok((file, id)) => {
                if id != self.id {
                    info!(path = %self.path.display(), "decision log reopened");
                }
                self.out = BufWriter::new(file);
                self.id = id;
            }
            Err(e) => {
                error!(path = %self.path.display(), error = %e, "cannot reopen the decision log; writing to the old file")
            }
        }
        self.checked = Instant::now();
    }

    fn take(&mut self, r: DecisionRecord) {
        let second = secs(r.at);
        if r.outcome == Outcome::Denied {
            let rate = self.rates.entry(r.source.clone()).or_insert((second, 0));
            if rate.0 != second {
                *rate = (second, 0);
            }
            if rate.1 < DENIALS_PER_SOURCE_PER_SECOND {
                rate.1 += 1;
                self.write(&r, 1, None);
                return;
            }
        }
        if self.rates.len() > 100_000 {
            self.rates.clear();
        }
        let key = (r.source.clone(), r.destination.clone(), r.outcome, second / 60);
        let at = r.at;
        self.folds
            .entry(key)
            .and_modify(|f| {
                f.count += 1;
                f.last = at;
            })
            .or_insert(Fold { first: r, last: at, count: 1 });
    }

    /// Writes the folds of minutes before `current_minute` (all of them when `None`).
    fn emit_folds(&mut self, current_minute: Option<u64>) {
        let done: Vec<_> =
            self.folds.keys().filter(|k| current_minute.is_none_or(|m| k.3 < m)).cloned().collect();
        for key in done {
            if let Some(f) = self.folds.remove(&key) {
                self.write(&f.first, f.count, Some(f.last));
            }
        }
    }

    fn write(&mut self, r: &DecisionRecord, count: u64, until: Option<SystemTime>) {
        let line = Line {
            time: rfc3339(r.at),
            source: &r.source,
            source_addr: r.source_addr.to_string(),
            destination: &r.destination,
            mode: r.mode.as_str(),
            verdict: "deny",
            outcome: r.outcome.as_str(),
            rule: &r.rule,
            reason: r.reason.as_str(),
            transport: if r.tls { "tls" } else { "plaintext" },
            identified: r.identified.as_str(),
            count,
            until: until.filter(|_| count > 1).map(rfc3339),
        };
        let res = serde_json::to_writer(&mut self.out, &line)
            .map_err(std::io::Error::from)
            .and_then(|_| self.out.write_all(b"\n"));
        if let Err(e) = res {
            error!(path = %self.path.display(), error = %e, "decision log write failed");
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            error!(path = %self.path.display(), error = %e, "decision log flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(i: usize) -> DecisionRecord {
        DecisionRecord {
            at: SystemTime::now(),
            // One source per record: each is written on its own, none folded.
            source: format!("caller-{i}"),
            source_addr: SocketAddr::from(([10, 0, 0, 7], 40000)),
            destination: "db".into(),
            mode: Mode::Enforce,
            outcome: Outcome::Denied,
            rule: Arc::from("no matching intention (default deny)"),
            reason: super::super::Reason::NoIntention,
            tls: true,
            identified: Identified::Mtls,
        }
    }

    /// The record numbers in a log file, in file order.
    fn numbers(path: &Path) -> Vec<usize> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["source"].as_str().unwrap().trim_start_matches("caller-").parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn a_renamed_log_is_noticed_and_no_record_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let rotated = dir.path().join("decisions.jsonl.1");
        let log = DecisionLog::open(Some(&path)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sent = 0;
        let mut renamed = false;
        // Records keep coming while the file is renamed, as logrotate does it (no signal).
        loop {
            log.record(denial(sent));
            sent += 1;
            if sent == 200 {
                std::fs::rename(&path, &rotated).unwrap();
                renamed = true;
            }
            if renamed && sent % 20 == 0 && !numbers(&path).is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the writer never reopened {}", path.display());
            // Pace the caller so the channel never fills.
            std::thread::sleep(Duration::from_millis(2));
        }
        for _ in 0..50 {
            log.record(denial(sent));
            sent += 1;
        }
        log.shutdown();
        assert_eq!(log.dropped(), 0);
        let (old, new) = (numbers(&rotated), numbers(&path));
        assert!(
            !old.is_empty() && !new.is_empty(),
            "{} in the renamed file, {} in the new",
            old.len(),
            new.len()
        );
        let mut all: Vec<usize> = old.iter().chain(&new).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..sent).collect::<Vec<_>>(), "every record once, in one file or the other");
        assert!(old.last() < new.first(), "the new file continues where the old one stopped");
    }

    #[test]
    fn reopen_moves_to_the_file_now_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let rotated = dir.path().join("decisions.jsonl.1");
        let log = DecisionLog::open(Some(&path)).unwrap();
        log.record(denial(0));
        std::fs::rename(&path, &rotated).unwrap();
        // What a logrotate postrotate script triggers with SIGUSR1.
        log.reopen();
        log.record(denial(1));
        log.shutdown();
        assert_eq!(numbers(&rotated), [0]);
        assert_eq!(numbers(&path), [1]);
    }
}
