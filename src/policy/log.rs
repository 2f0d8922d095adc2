//! The decision log: JSON lines for a SIEM, one record per denial and per would-deny.
//!
//! Blocking file writes run on their own thread, fed by a bounded channel; the data plane's
//! [`DecisionLog::record`] never waits. Would-deny records (learn mode) are folded per edge and
//! minute with a `count`, so a service learning under an empty policy does not flood the log.
//! Denials (enforce mode) are written one by one up to [`DENIALS_PER_SOURCE_PER_SECOND`] per
//! source; past that they are folded per edge and minute too, so a scan cannot fill the disk.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::error;

use super::{Identified, Mode, Outcome, PolicyError};

/// Denials written individually per source and second before folding starts.
pub const DENIALS_PER_SOURCE_PER_SECOND: u32 = 10;
/// Records waiting for the writer; past it, records are dropped and counted.
const CAPACITY: usize = 16_384;

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
    transport: &'a str,
    identified: &'a str,
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

enum Msg {
    Record(Box<DecisionRecord>),
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| PolicyError::Write { path: path.to_owned(), message: e.to_string() })?;
        let (tx, rx) = sync_channel(CAPACITY);
        let mut writer = Writer {
            out: BufWriter::new(file),
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

struct Writer {
    out: BufWriter<std::fs::File>,
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
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Msg::Record(r)) => self.take(*r),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    while let Ok(Msg::Record(r)) = rx.try_recv() {
                        self.take(*r);
                    }
                    self.emit_folds(None);
                    self.flush();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Folds of minutes that have ended are complete: write them.
            self.emit_folds(Some(secs(SystemTime::now()) / 60));
            self.flush();
        }
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
