//! `cordon import haproxy-log`: HAProxy traffic logs into ledger edges.
//!
//! Streams every file line by line in bounded memory; a line that does not parse, or that names
//! no caller cordon can attribute, is counted (the first few shown with file and line) and never
//! stops the import. Events go through the ledger's own recorder, as the agent's would.
//!
//! Running it again is safe: what of a file the ledger already holds is skipped ([`super::dedup`]),
//! and a file is recorded as imported in the same transaction as its last events. The last line of
//! a file without its newline may still be being written: it is left for the next run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use cordon_haproxy::parse_log_line;

use super::dedup::{self, Done};
use super::discovery::DiscoveryNames;
use super::events::{self, Naming};
use super::lines::BoundedLines;
use crate::cli::Outcome;
use crate::ledger::{ImportedPrefix, Recorder, RecorderHandle, RecorderStats};
use crate::pki::ServiceName;
use crate::policy::{Identified, Policy, Subject, Verdict, decide};

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
    /// Parse and name the edges, print them, but write nothing; what a real run would skip as
    /// already imported is skipped and said so.
    #[arg(long)]
    pub dry_run: bool,
    /// HAProxy log files (tcplog or httplog, with or without syslog prefixes); `-` is stdin.
    /// Files are deduplicated: what of a file the ledger already holds is skipped, so a log that
    /// grew imports only its new lines. Stdin and pipes cannot be recognised and are imported in
    /// full every time.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// What the import saw, for the report at the end.
#[derive(Debug, Default)]
struct Tally {
    lines: u64,
    /// Lines skipped because the ledger already holds them.
    already: u64,
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
            let text = format!("{file}:{line}: {what}");
            writeln!(std::io::stderr().lock(), "{}", crate::logging::command_line("WARN", &text))?;
        }
        Ok(())
    }
}

pub fn run(args: LogArgs) -> anyhow::Result<Outcome> {
    // Not a file to create: the store takes imports through a ledger file and `cordon ship`.
    anyhow::ensure!(
        !args.db.to_str().is_some_and(crate::store::StoreUrl::is_url),
        "--db: import haproxy-log writes a ledger file; import into one, then `cordon ship --db FILE --to URL`"
    );
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
        let input = if name == "-" {
            Input::Stream(Box::new(BufReader::new(std::io::stdin())))
        } else {
            let file = File::open(path).with_context(|| format!("opening {name}"))?;
            let meta = file.metadata().with_context(|| format!("reading {name}"))?;
            if meta.is_file() {
                Input::File(file, meta.len())
            } else {
                Input::Stream(Box::new(BufReader::new(file)))
            }
        };
        inputs.push((name, input));
    }
    let names = DiscoveryNames::load(args.discovery.as_deref())?;
    let policy = match &args.policy {
        Some(p) => Some(Policy::load(p).with_context(|| format!("--policy {}", p.display()))?),
        None => None,
    };
    let host = args.host.clone().unwrap_or_else(crate::agent::config::local_hostname);
    let recorder = if args.dry_run { None } else { Some(start_recorder(&args.db, &host)?) };
    // What the ledger already holds; a dry run into a ledger that does not exist yet holds nothing.
    let longest = inputs.iter().filter_map(|(_, i)| i.size()).max().unwrap_or(0);
    let mut known = if args.dry_run && !args.db.exists() {
        Vec::new()
    } else {
        crate::ledger::imported_prefixes(&args.db, longest)
            .with_context(|| format!("reading what was imported into {}", args.db.display()))?
    };
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
        dry_run: args.dry_run,
        tally: Tally::default(),
    };
    // The file whose events could not all be written: the import stops there.
    let mut failed_at = None;
    for (name, input) in inputs {
        match input {
            Input::Stream(reader) => import.stream(&name, reader)?,
            Input::File(file, size) => {
                if let Some(prefix) = import.file(&name, file, size, &known)? {
                    known.push(prefix);
                }
            }
        }
        // Each file is written (and recorded as imported) before the next is read.
        if let Some(handle) = import.handle
            && !(handle.flush_wait() && all_written(handle.stats()))
        {
            failed_at = Some(name);
            break;
        }
    }
    let tally = import.tally;
    if let Some((recorder, handle)) = recorder {
        let stats = handle.stats().clone();
        drop(handle);
        // What could not be written is reported below; the import is run again, not kept aside.
        let _ = recorder.close(false);
        let failed = stats.write_errors.load(Ordering::Relaxed);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        let db = args.db.display();
        match failed_at {
            Some(file) if all_written(&stats) => anyhow::bail!(
                "{db}: a write failed while importing {file} and succeeded when retried; the files \
                 after it were not read: run the same import again (what is imported is skipped)"
            ),
            Some(file) => anyhow::bail!(
                "{db}: {failed} batch writes failed and {dropped} events were lost while importing \
                 {file}; it is not recorded as imported and the files after it were not read; see \
                 the log above"
            ),
            None => anyhow::ensure!(
                all_written(&stats),
                "{db}: {failed} batch writes failed and {dropped} events were lost; see the log above"
            ),
        }
    }
    report(&tally, started.elapsed(), &args)?;
    Ok(Outcome::Success)
}

/// A log to read.
enum Input {
    /// A regular file and its size: deduplicated.
    File(File, u64),
    /// Stdin or a pipe: read once, imported in full.
    Stream(Box<dyn BufRead>),
}

impl Input {
    fn size(&self) -> Option<u64> {
        match self {
            Input::File(_, size) => Some(*size),
            Input::Stream(_) => None,
        }
    }
}

/// Every event handed over is in the ledger (the recorder only serves this import).
fn all_written(stats: &RecorderStats) -> bool {
    stats.dropped.load(Ordering::Relaxed) == 0
        && stats.written.load(Ordering::Relaxed) == stats.received.load(Ordering::Relaxed)
}

/// One import run: how callers are named and judged, where events go, what was seen.
struct Import<'a> {
    naming: Naming<'a>,
    policy: Option<&'a Policy>,
    /// `None` on a dry run.
    handle: Option<&'a RecorderHandle>,
    utc_offset_s: i32,
    dry_run: bool,
    tally: Tally,
}

impl Import<'_> {
    /// Imports every line of a stream.
    fn stream(&mut self, name: &str, reader: Box<dyn BufRead>) -> anyhow::Result<()> {
        let mut lines = BoundedLines::new(reader, MAX_LINE);
        while let Some(line) = lines.next_line().with_context(|| format!("reading {name}"))? {
            self.line(name, line.number, line.bytes, line.cut)?;
        }
        Ok(())
    }

    /// Imports the lines of a file the ledger does not hold yet, and returns the prefix read
    /// through its last newline (`None` when nothing new was read); with a recorder, the prefix
    /// is handed to it after the events.
    fn file(
        &mut self,
        name: &str,
        mut file: File,
        size: u64,
        known: &[ImportedPrefix],
    ) -> anyhow::Result<Option<ImportedPrefix>> {
        let reading = || format!("reading {name}");
        let done = dedup::already_imported(&mut file, size, known).with_context(reading)?;
        file.seek(SeekFrom::Start(done.len)).with_context(reading)?;
        let after = usize::try_from(done.lines).unwrap_or(usize::MAX);
        let mut lines = BoundedLines::hashed(BufReader::new(file), MAX_LINE, after, done.digest.clone());
        while let Some(line) = lines.next_line().with_context(reading)? {
            if !line.newline {
                if !String::from_utf8_lossy(line.bytes).trim().is_empty() {
                    let text = format!(
                        "{name}:{}: no newline at the end (still being written?); left for the next import",
                        line.number
                    );
                    writeln!(std::io::stderr().lock(), "{}", crate::logging::command_line("WARN", &text))?;
                }
                break;
            }
            self.line(name, line.number, line.bytes, line.cut)?;
        }
        let (bytes, count, digest) = lines.complete();
        self.tally.already += done.lines;
        self.note(name, &done, count)?;
        let prefix = dedup::new_prefix(name, &done, bytes, count, digest);
        if let (Some(handle), Some(prefix)) = (self.handle, &prefix) {
            handle.mark_imported(prefix.clone());
        }
        Ok(prefix)
    }

    /// Says on stdout what of a file was skipped as already imported.
    fn note(&self, name: &str, done: &Done, new_lines: u64) -> anyhow::Result<()> {
        if done.len == 0 {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        let (skip, import) =
            if self.dry_run { ("would be skipped", "would be imported") } else { ("skipped", "imported") };
        if new_lines == 0 {
            writeln!(out, "{name}: already imported ({} lines), {skip}", done.lines)?;
        } else {
            writeln!(
                out,
                "{name}: {} lines already imported, {skip}; {new_lines} new lines {import}",
                done.lines
            )?;
        }
        Ok(())
    }

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
        let edge = self.tally.edges.entry((src.0.clone(), dst.to_string())).or_default();
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
fn verdict_for(
    policy: Option<&Policy>,
    (source, identified): &(String, Identified),
    destination: &ServiceName,
) -> Verdict {
    let subject = Subject::recorded(source, *identified);
    policy.map_or(Verdict::Deny, |p| {
        decide(p, &subject, destination.as_str(), &crate::policy::DecisionContext::review()).verdict
    })
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
    let already = match tally.already {
        0 => String::new(),
        n => format!(", {n} lines skipped as already imported"),
    };
    let summary = format!(
        "{} lines: {} connections imported ({}), {} malformed, {} without a known caller{}; \
         {:.0} lines/s",
        tally.lines,
        tally.imported,
        target,
        tally.malformed,
        tally.unattributed,
        already,
        tally.lines as f64 / secs
    );
    writeln!(err, "{}", crate::logging::command_line("INFO", &summary))?;
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
