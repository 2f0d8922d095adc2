//! `cordon import haproxy-log`: HAProxy traffic logs into ledger edges.
//!
//! Streams every file line by line in bounded memory; a line that does not parse, or that names
//! no caller cordon can attribute, is counted (the first few shown with file and line) and never
//! stops the import. Events go through the ledger's own recorder, as the agent's would.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use cordon_haproxy::parse_log_line;

use super::discovery::DiscoveryNames;
use super::events::{self, Naming};
use super::lines::BoundedLines;
use crate::cli::Outcome;
use crate::ledger::{Recorder, RecorderHandle};
use crate::pki::ServiceName;
use crate::policy::{Policy, Verdict};

/// Longest line kept; HAProxy's own default limit is 1024 bytes, `len` allows up to 64 KiB.
const MAX_LINE: usize = 64 * 1024;
/// Problem lines shown on stderr; the rest are only counted.
const SHOWN: usize = 5;

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The ledger to add the edges to (created if missing).
    #[arg(long)]
    pub db: PathBuf,
    /// The service of the host that wrote the logs: the caller of every loopback connection.
    #[arg(long)]
    pub source: Option<String>,
    /// Synapse's file_output directory: names callers by address and the logging host by name.
    #[arg(long, value_name = "DIR")]
    pub discovery: Option<PathBuf>,
    /// A policy.toml: an edge its intentions allow is recorded as allowed [default: every
    /// imported edge is recorded as one the policy would deny].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The host name the imported ledger rows carry [default: this machine's host name].
    #[arg(long)]
    pub host: Option<String>,
    /// The logging host's offset from UTC, as HAProxy logs local time without a zone, e.g. +01:00.
    #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
    pub utc_offset: String,
    /// Parse and name the edges, print them, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// HAProxy log files (tcplog or httplog, with or without syslog prefixes); `-` is stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// What the import saw, for the report at the end.
#[derive(Debug, Default)]
struct Tally {
    lines: u64,
    imported: u64,
    malformed: u64,
    unattributed: u64,
    shown: usize,
    /// (source, destination) -> (connections, bytes back to the caller).
    edges: BTreeMap<(String, String), (u64, u64)>,
}

impl Tally {
    fn problem(&mut self, file: &str, line: usize, what: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
        if self.shown < SHOWN {
            self.shown += 1;
            writeln!(std::io::stderr().lock(), "cordon: {file}:{line}: {what}")?;
        }
        Ok(())
    }
}

pub fn run(args: LogArgs) -> anyhow::Result<Outcome> {
    let source = match &args.source {
        Some(s) => Some(ServiceName::new(s).map_err(|e| anyhow::anyhow!("--source: {e}"))?),
        None => None,
    };
    let utc_offset_s = parse_utc_offset(&args.utc_offset)
        .with_context(|| format!("--utc-offset {:?}: expected +HH:MM or -HH:MM", args.utc_offset))?;
    // Open every file first: a typo in the last name must not leave half an import behind.
    let mut inputs = Vec::new();
    for path in &args.files {
        let name = path.display().to_string();
        let reader: Box<dyn BufRead> = if name == "-" {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            Box::new(BufReader::new(File::open(path).with_context(|| format!("opening {name}"))?))
        };
        inputs.push((name, reader));
    }
    let names = DiscoveryNames::load(args.discovery.as_deref())?;
    let policy = match &args.policy {
        Some(p) => Some(Policy::load(p).with_context(|| format!("--policy {}", p.display()))?),
        None => None,
    };
    let host = args.host.clone().unwrap_or_else(crate::agent::config::local_hostname);
    let recorder = if args.dry_run { None } else { Some(start_recorder(&args.db, &host)?) };
    let service_at = |ip| names.service_at(ip);
    let services_of_host = |host: &str| names.services_of_host(host);
    let naming =
        Naming { source: source.as_ref(), service_at: &service_at, services_of_host: &services_of_host };

    let started = Instant::now();
    let mut import = Import {
        naming,
        policy: policy.as_ref(),
        handle: recorder.as_ref().map(|(_, h)| h),
        utc_offset_s,
        tally: Tally::default(),
    };
    for (name, reader) in inputs {
        let mut lines = BoundedLines::new(reader, MAX_LINE);
        while let Some((number, bytes, cut)) = lines.next_line().with_context(|| format!("reading {name}"))? {
            import.line(&name, number, bytes, cut)?;
        }
    }
    let tally = import.tally;
    if let Some((recorder, handle)) = recorder {
        let stats = handle.stats().clone();
        drop(handle);
        recorder.shutdown();
        let failed = stats.write_errors.load(Ordering::Relaxed);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        anyhow::ensure!(
            failed == 0 && dropped == 0,
            "{}: {failed} batch writes failed and {dropped} events were lost; see the log above",
            args.db.display()
        );
    }
    report(&tally, started.elapsed(), &args)?;
    Ok(Outcome::Success)
}

/// One import run: how callers are named and judged, where events go, what was seen.
struct Import<'a> {
    naming: Naming<'a>,
    policy: Option<&'a Policy>,
    /// `None` on a dry run.
    handle: Option<&'a RecorderHandle>,
    utc_offset_s: i32,
    tally: Tally,
}

impl Import<'_> {
    /// Parses, names and records one line; a line that cannot be imported is counted, not fatal.
    fn line(&mut self, file: &str, number: usize, bytes: &[u8], cut: bool) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(bytes);
        if text.trim().is_empty() {
            return Ok(());
        }
        self.tally.lines += 1;
        let record = match parse_log_line(&text) {
            Ok(r) => r,
            Err(e) => {
                self.tally.malformed += 1;
                let note = if cut { " (line longer than 64 KiB, cut)" } else { "" };
                return self.tally.problem(
                    file,
                    number,
                    format_args!("not an HAProxy traffic line: {e}{note}"),
                );
            }
        };
        let named =
            events::source(&record, &self.naming).and_then(|s| Ok((s, events::destination(&record)?)));
        let (src, dst) = match named {
            Ok(pair) => pair,
            Err(why) => {
                self.tally.unattributed += 1;
                return self.tally.problem(file, number, format_args!("{why}"));
            }
        };
        let verdict = verdict_for(self.policy, &src, &dst);
        let edge = self.tally.edges.entry((src.clone(), dst.to_string())).or_default();
        edge.0 += 1;
        edge.1 += record.bytes_read;
        self.tally.imported += 1;
        if let Some(handle) = self.handle {
            for event in events::events(&record, src, &dst, verdict, self.utc_offset_s) {
                handle.record_wait(event);
            }
        }
        Ok(())
    }
}

fn start_recorder(db: &Path, host: &str) -> anyhow::Result<(Recorder, RecorderHandle)> {
    let (recorder, handle) = Recorder::start(db, host, 65_536, Duration::from_millis(500))
        .with_context(|| format!("opening the ledger {}", db.display()))?;
    Ok((recorder, handle))
}

/// The verdict the policy gives an imported edge; without a policy, deny, so that nothing
/// learned from logs looks allowed by itself.
fn verdict_for(policy: Option<&Policy>, source: &str, destination: &ServiceName) -> Verdict {
    policy.map_or(Verdict::Deny, |p| p.decide(source, destination.as_str()).verdict)
}

fn report(tally: &Tally, elapsed: Duration, args: &LogArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<24} {:<24} {:>12} {:>16}", "SOURCE", "DESTINATION", "CONNECTIONS", "BYTES TO SOURCE")?;
    for ((src, dst), (connections, bytes)) in &tally.edges {
        writeln!(out, "{src:<24} {dst:<24} {connections:>12} {bytes:>16}")?;
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let target =
        if args.dry_run { "dry run, nothing written".to_string() } else { args.db.display().to_string() };
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "cordon: {} lines: {} connections imported ({}), {} malformed, {} without a known caller; \
         {:.0} lines/s",
        tally.lines,
        tally.imported,
        target,
        tally.malformed,
        tally.unattributed,
        tally.lines as f64 / secs
    )?;
    Ok(())
}

/// `+HH:MM` / `-HH:MM` (or `Z`) into seconds east of UTC.
fn parse_utc_offset(s: &str) -> Option<i32> {
    if s == "Z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = s[1..].split_once(':')?;
    let ok = |p: &str| p.len() == 2 && p.bytes().all(|c| c.is_ascii_digit());
    if !ok(h) || !ok(m) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 18 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::parse_utc_offset;

    #[test]
    fn utc_offsets() {
        assert_eq!(parse_utc_offset("+00:00"), Some(0));
        assert_eq!(parse_utc_offset("Z"), Some(0));
        assert_eq!(parse_utc_offset("+05:30"), Some(19_800));
        assert_eq!(parse_utc_offset("-08:00"), Some(-28_800));
        for bad in ["", "0", "+5:30", "+05:3", "+25:00", "05:00", "+05:60"] {
            assert_eq!(parse_utc_offset(bad), None, "{bad}");
        }
    }
}
