//! The decision log's syslog sink: each record as one RFC 5424 message, sent as one datagram to
//! a unix socket (the local syslog daemon's `/dev/log`, or a socket of its own).
//!
//! Runs on the decision log's writer thread only; the data plane never waits on it (the writer's
//! bounded queue stands between them). A slow daemon slows the writer, up to [`SEND_WAIT`] per
//! record; a daemon that stops reading, or a socket that is missing, costs records, never time:
//! after one send times out the sink stops waiting until a send goes through again, and every
//! record it cannot send is counted in the decision log's dropped count, never lost silently.
//!
//! The message: `<PRI>1 TIMESTAMP HOSTNAME cordon PROCID MSGID - RECORD`, facility `auth` (4),
//! severity `warning` for a denial and `notice` for a would-deny, MSGID the record format
//! (`cordon` or `ocsf`), no structured data, the record's JSON as the message.

use std::io::ErrorKind;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

/// The longest a send waits for a daemon whose queue is full before records start to be dropped.
pub const SEND_WAIT: Duration = Duration::from_secs(1);
/// The socket's send buffer: room for a burst of records while the daemon catches up.
const SEND_BUFFER: usize = 4 << 20;
/// How often a missing or refusing socket is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// RFC 5424 facility `auth` (security/authorization messages).
const FACILITY: u8 = 4;

/// RFC 5424 severities the records use.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    Warning = 4,
    Notice = 5,
}

/// A connection to a syslog socket; see the module doc.
pub struct Syslog {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    /// When the socket was last (re)connected or tried, so a missing one is tried once a second.
    tried: Option<Instant>,
    /// A send timed out: send without waiting until one goes through.
    stalled: bool,
    /// RFC 5424 HOSTNAME: the agent's host name, printable ASCII only.
    hostname: String,
    msgid: &'static str,
    procid: u32,
    /// The message being sent (kept, so no record allocates).
    buf: Vec<u8>,
    /// The decision log's dropped count.
    dropped: Arc<AtomicU64>,
}

impl Syslog {
    /// A sink for `path` (connected on the first record); `msgid` names the record format.
    pub fn new(path: PathBuf, host: &str, msgid: &'static str, dropped: Arc<AtomicU64>) -> Syslog {
        Syslog {
            path,
            socket: None,
            tried: None,
            stalled: false,
            hostname: hostname(host),
            msgid,
            procid: std::process::id(),
            buf: Vec::with_capacity(4096),
            dropped,
        }
    }

    /// Forgets the socket, so the next record connects again (after the daemon restarted).
    pub fn reconnect(&mut self) {
        self.socket = None;
        self.tried = None;
    }

    fn connect(&mut self) -> bool {
        if self.socket.is_some() {
            return true;
        }
        if self.tried.is_some_and(|t| t.elapsed() < RETRY) {
            return false;
        }
        self.tried = Some(Instant::now());
        let socket = UnixDatagram::unbound().and_then(|s| {
            // A larger buffer only helps; the kernel may cap it, which is not an error worth a record.
            let _ = socket2::SockRef::from(&s).set_send_buffer_size(SEND_BUFFER);
            s.set_write_timeout(Some(SEND_WAIT))?;
            s.connect(&self.path)?;
            Ok(s)
        });
        match socket {
            Ok(s) => {
                self.socket = Some(s);
                self.stalled = false;
                true
            }
            Err(e) => {
                warn!(socket = %self.path.display(), error = %e, "cannot reach syslog; decision records are dropped and counted until it can be reached");
                false
            }
        }
    }

    /// Sends one record (its JSON, without newline); counts it as dropped when it cannot be sent.
    pub fn send(&mut self, severity: Severity, at: SystemTime, record: &[u8]) {
        if !self.connect() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.buf.clear();
        let _ = write!(
            self.buf,
            "<{}>1 {} {} cordon {} {} - ",
            FACILITY * 8 + severity as u8,
            timestamp(at),
            self.hostname,
            self.procid,
            self.msgid
        );
        self.buf.extend_from_slice(record);
        let Some(socket) = &self.socket else { return };
        match socket.send(&self.buf) {
            Ok(_) => {
                if self.stalled {
                    self.stalled = false;
                    let _ = socket.set_nonblocking(false);
                    warn!(socket = %self.path.display(), "syslog takes decision records again");
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.stalled {
                    self.stalled = true;
                    let _ = socket.set_nonblocking(true);
                    warn!(socket = %self.path.display(), "syslog does not read; decision records are dropped and counted until it does");
                }
            }
            Err(e) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(socket = %self.path.display(), error = %e, "syslog refused a decision record; connecting again");
                self.socket = None;
            }
        }
    }
}

/// RFC 5424 TIMESTAMP: UTC with at most six fraction digits.
fn timestamp(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// RFC 5424 HOSTNAME: printable ASCII without spaces, at most 255 characters, `-` when empty.
fn hostname(host: &str) -> String {
    let h: String = host.chars().take(255).map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
    if h.is_empty() { "-".into() } else { h }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(path: PathBuf) -> (Syslog, Arc<AtomicU64>) {
        let dropped = Arc::new(AtomicU64::new(0));
        (Syslog::new(path, "db-1", "ocsf", dropped.clone()), dropped)
    }

    #[test]
    fn messages_are_rfc5424_with_the_record_as_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let (mut s, dropped) = sink(path);
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_123_456);
        s.send(Severity::Warning, at, br#"{"a":1}"#);
        let mut buf = [0u8; 512];
        let n = daemon.recv(&mut buf).unwrap();
        let pid = std::process::id();
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            format!("<36>1 2025-12-06T05:46:40.123456Z db-1 cordon {pid} ocsf - {{\"a\":1}}")
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        assert_eq!(hostname("a b\u{1b}c"), "a_b_c");
    }

    /// A daemon that stops reading: the writer waits at most SEND_WAIT once, then drops without
    /// waiting; every record is either in the daemon's queue or counted.
    #[test]
    fn a_daemon_that_does_not_read_costs_records_not_time_and_each_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let (mut s, dropped) = sink(path.clone());
        let sent = 5_000;
        let started = Instant::now();
        for _ in 0..sent {
            s.send(Severity::Notice, SystemTime::now(), &[b'x'; 1500]);
        }
        let took = started.elapsed();
        let lost = dropped.load(Ordering::Relaxed);
        assert!(lost > 0, "the daemon's queue cannot hold {sent} records");
        assert!(took < Duration::from_secs(5), "{sent} records took {took:?}: the sink waited on each");
        daemon.set_nonblocking(true).unwrap();
        let mut queued = 0;
        let mut buf = vec![0u8; 4096];
        while daemon.recv(&mut buf).is_ok() {
            queued += 1;
        }
        assert_eq!(queued + lost, sent, "each record is delivered or counted");
        // The daemon reads again: records go through again.
        s.send(Severity::Notice, SystemTime::now(), b"back");
        assert!(daemon.recv(&mut buf).is_ok());
        assert_eq!(dropped.load(Ordering::Relaxed), lost);

        // No socket at all: counted, and tried again at most once a second.
        drop(daemon);
        std::fs::remove_file(&path).unwrap();
        s.reconnect();
        let before = dropped.load(Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..100 {
            s.send(Severity::Warning, SystemTime::now(), b"nobody");
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(dropped.load(Ordering::Relaxed), before + 100);
    }
}
