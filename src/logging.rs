//! Logging for every cordon process: the subscriber on stderr (human or JSON lines, behind a
//! writer thread that never stalls the data plane), the count of lines it had to drop, fatal
//! errors in the chosen format, and [`Throttle`], which keeps a per-connection event to one line
//! per key and interval at `info`.
//!
//! It sits below both the CLI and the agent: the CLI sets logging up, the agent's `/metrics`
//! reads the dropped-line count. It must not know about either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Log lines waiting for the writer thread. Its queue is allocated whole when logging starts (a
/// slot per line), so this is memory every process holds: 8,192 slots are 256 KiB, where the
/// writer's default of 128,000 held 4 MiB of a 19 MiB agent.
const LOG_LINES: usize = 8_192;

/// Lines dropped because stderr did not take them fast enough (`cordon_log_lines_dropped_total`).
static LOG_DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the writer's queue was full.
pub fn log_lines_dropped() -> u64 {
    LOG_DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Sets up tracing on stderr; a bad filter falls back to `info` with a warning. Lines go through
/// a writer thread, so a slow or blocked stderr (a full pipe, a stalled journal) never stalls
/// the data plane: past 8,192 (`LOG_LINES`) waiting, lines are dropped rather than waited for, and
/// counted ([`log_lines_dropped`]). Colours only on a terminal. Returns the guard that flushes
/// the buffered lines when dropped.
pub fn init_logging(format: LogFormat, filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let _ = LOG_DROPPED.set(writer.error_counter());
    let _ = FORMAT.set(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!(filter, error = %e, "bad --log filter, using info");
    }
    guard
}

/// A fatal error as one line in `format`: `cordon: error: ...` for a person, or one JSON object
/// with the fields tracing's JSON lines carry (`timestamp`, `level`, `message`, `target`).
pub fn fatal_line(format: LogFormat, message: &str) -> String {
    match format {
        LogFormat::Human => format!("cordon: error: {message}"),
        LogFormat::Json => json_line("ERROR", message),
    }
}

/// A line a command writes to stderr itself (a summary, a refused input line): `cordon: TEXT`
/// for a person, or, with JSON logs, one JSON object at `level` (`INFO`, `WARN`).
pub fn command_line(level: &str, text: &str) -> String {
    match FORMAT.get() {
        Some(LogFormat::Json) => json_line(level, text),
        _ => format!("cordon: {text}"),
    }
}

/// The format [`init_logging`] set up, for the lines commands write themselves.
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn json_line(level: &str, message: &str) -> String {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({"timestamp": timestamp, "level": level, "message": message, "target": "cordon"})
        .to_string()
}

/// Keys with a line written in the last interval, past which the map is cleared (a scan from
/// many sources costs memory no more than this).
const THROTTLE_KEYS: usize = 100_000;

/// At most one log line per key and interval: the first event of a key writes a line, the next
/// ones within the interval are counted, and the next line says how many there were.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// Per key: when its last line was written, and the events since that were not.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Default for Throttle {
    /// One line per key and minute, as the decision log folds its records.
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self { interval, seen: Mutex::new(HashMap::new()) }
    }

    /// Whether an event of `key` at `now` gets a line: `Some(n)` with the `n` events of that key
    /// that got none since its last line, or `None` (counted).
    pub fn due(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, skipped)) = seen.get_mut(key) {
            if now.saturating_duration_since(*at) < self.interval {
                *skipped += 1;
                return None;
            }
            let n = *skipped;
            *at = now;
            *skipped = 0;
            return Some(n);
        }
        if seen.len() >= THROTTLE_KEYS {
            seen.clear();
        }
        seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_then_the_count_of_those_skipped() {
        let t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.due("web", start), Some(0));
        for s in 1..=5 {
            assert_eq!(t.due("web", start + Duration::from_secs(s)), None);
        }
        assert_eq!(t.due("api", start + Duration::from_secs(5)), Some(0), "keys apart");
        assert_eq!(t.due("web", start + Duration::from_secs(60)), Some(5));
        assert_eq!(t.due("web", start + Duration::from_secs(61)), None);
    }

    #[test]
    fn fatal_lines_are_one_json_object_or_one_plain_line() {
        let line = fatal_line(LogFormat::Json, "cannot read \"x\"\nsecond line");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["message"], "cannot read \"x\"\nsecond line");
        assert_eq!(fatal_line(LogFormat::Human, "boom"), "cordon: error: boom");
    }
}
