//! The decision log: one record per denial and per would-deny, for a SIEM.
//!
//! Each record is written in cordon's own JSON lines (docs/policy.md) or as an OCSF event
//! ([`super::ocsf`]), to a file or to syslog ([`super::syslog`]), as `decision_log` and
//! `decision_log_format` say ([`DecisionLogSettings`]).
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
//! either the renamed file or the new one. With syslog, the same signals make the writer connect
//! to the socket again (after the daemon restarted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::log_file::FileSink;
use super::log_settings::{DecisionFormat, DecisionLogSettings, DecisionSink};
use super::ocsf::Origin;
use super::syslog::{Severity, Syslog};
use super::{Identified, Mode, Outcome, PolicyError, Reason};

/// Denials written individually per source and second before folding starts.
pub const DENIALS_PER_SOURCE_PER_SECOND: u32 = 10;
/// Records waiting for the writer; past it, records are dropped and counted.
const CAPACITY: usize = 16_384;
/// How long the writer lets records queue up after one wakes it (see `Writer::run`).
const GATHER: Duration = Duration::from_millis(5);

/// One decision worth logging.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub at: SystemTime,
    pub source: String,
    pub source_addr: SocketAddr,
    /// The address the caller reached: this host's end of the connection.
    pub local_addr: SocketAddr,
    pub destination: String,
    pub mode: Mode,
    pub outcome: Outcome,
    pub rule: Arc<str>,
    /// Why, as a label (`no-intention`, `plaintext`, `revoked`, ...).
    pub reason: Reason,
    /// What the TLS handshake showed; `None` for a plaintext caller.
    pub tls: Option<Arc<TlsSeen>>,
    pub identified: Identified,
}

/// What an mTLS connection's handshake showed, kept once per connection for its records.
#[derive(Debug)]
pub struct TlsSeen {
    /// The protocol version, as OCSF writes it (`1.3`).
    pub version: &'static str,
    /// The cipher suite's IANA name.
    pub cipher: &'static str,
    /// The caller's leaf certificate (DER), read by the writer thread only when a record shows it.
    pub leaf: rustls_pki_types::CertificateDer<'static>,
}

impl TlsSeen {
    /// What `conn` negotiated, with the caller's leaf certificate.
    pub fn of(conn: &rustls::CommonState) -> Option<TlsSeen> {
        let version = match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "1.3",
            rustls::ProtocolVersion::TLSv1_2 => "1.2",
            _ => "unknown",
        };
        let cipher = conn.negotiated_cipher_suite().and_then(|c| c.suite().as_str()).unwrap_or("unknown");
        let leaf = conn.peer_certificates()?.first()?.clone().into_owned();
        Some(TlsSeen { version, cipher, leaf })
    }
}

/// One line of the log (the schema is documented in docs/policy.md).
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
    /// Records the queue had no room for, and (with syslog) records the socket did not take.
    dropped: Arc<AtomicU64>,
}

/// The data plane's handle on the decision log. Cheap to clone; disabled when no path is set.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    inner: Arc<Inner>,
}

impl DecisionLog {
    /// Opens (appending) the log at `path` in cordon's format, or a log that writes nothing
    /// when `path` is `None`.
    pub fn open(path: Option<&Path>) -> Result<DecisionLog, PolicyError> {
        let origin = Origin { trust_domain: String::new(), host: String::new() };
        DecisionLog::start(path.map(DecisionLogSettings::file).as_ref(), origin)
    }

    /// Starts the log `settings` describe (nothing is written when `None`); `origin` names this
    /// agent in OCSF records and syslog messages.
    pub fn start(settings: Option<&DecisionLogSettings>, origin: Origin) -> Result<DecisionLog, PolicyError> {
        let dropped = Arc::new(AtomicU64::new(0));
        let Some(settings) = settings else {
            return Ok(DecisionLog {
                inner: Arc::new(Inner { tx: None, thread: Mutex::new(None), dropped }),
            });
        };
        let (sink, name) = match &settings.sink {
            DecisionSink::File(path) => (Sink::File(FileSink::open(path)?), path.clone()),
            DecisionSink::Syslog(socket) => {
                let msgid = settings.format.as_str();
                (
                    Sink::Syslog(Syslog::new(socket.clone(), &origin.host, msgid, dropped.clone())),
                    socket.clone(),
                )
            }
        };
        let (tx, rx) = sync_channel(CAPACITY);
        let mut writer = Writer {
            sink,
            format: settings.format,
            origin,
            line: Vec::with_capacity(4096),
            folds: HashMap::new(),
            rates: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("cordon-decisions".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| PolicyError::Write { path: name, message: format!("starting the writer: {e}") })?;
        Ok(DecisionLog { inner: Arc::new(Inner { tx: Some(tx), thread: Mutex::new(Some(thread)), dropped }) })
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

    /// Whether records are written at all (a `decision_log` is set).
    pub fn is_on(&self) -> bool {
        self.inner.tx.is_some()
    }

    /// Records dropped because the writer fell behind or syslog did not take them.
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

/// Where the writer puts each record.
enum Sink {
    File(FileSink),
    Syslog(Syslog),
}

struct Writer {
    sink: Sink,
    format: DecisionFormat,
    origin: Origin,
    /// The record being written (kept, so records do not allocate one each).
    line: Vec<u8>,
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
            if let Sink::File(f) = &mut self.sink {
                f.check_rotation();
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

    fn reopen(&mut self) {
        match &mut self.sink {
            Sink::File(f) => f.reopen(),
            Sink::Syslog(s) => s.reconnect(),
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
        self.line.clear();
        match self.format {
            DecisionFormat::Cordon => self.write_cordon(r, count, until),
            DecisionFormat::Ocsf => super::ocsf::write(&mut self.line, r, count, until, &self.origin),
        }
        match &mut self.sink {
            Sink::File(f) => f.write_line(&self.line),
            Sink::Syslog(s) => {
                let severity =
                    if r.outcome == Outcome::Denied { Severity::Warning } else { Severity::Notice };
                s.send(severity, r.at, &self.line)
            }
        }
    }

    /// cordon's own line (docs/policy.md).
    fn write_cordon(&mut self, r: &DecisionRecord, count: u64, until: Option<SystemTime>) {
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
            transport: if r.tls.is_some() { "tls" } else { "plaintext" },
            identified: r.identified.as_str(),
            count,
            until: until.filter(|_| count > 1).map(rfc3339),
        };
        // Serialising this struct into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.line, &line);
    }

    fn flush(&mut self) {
        if let Sink::File(f) = &mut self.sink {
            f.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn denial(i: usize) -> DecisionRecord {
        DecisionRecord {
            at: SystemTime::now(),
            // One source per record: each is written on its own, none folded.
            source: format!("caller-{i}"),
            source_addr: SocketAddr::from(([10, 0, 0, 7], 40000)),
            destination: "db".into(),
            mode: Mode::Enforce,
            outcome: Outcome::Denied,
            local_addr: SocketAddr::from(([10, 0, 0, 8], 14000)),
            rule: Arc::from("no matching intention (default deny)"),
            reason: Reason::NoIntention,
            tls: None,
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
