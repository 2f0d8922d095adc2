//! `cordon audit` (list the audit trail) and the `--audit-log` options every command that
//! changes things takes. The records and the log live in [`crate::audit`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use super::Outcome;
use crate::audit::{AuditFormat, AuditLog, AuditTarget, Filter, Record, read};

/// Where this command's audit records go.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The audit log (appended to, created 0600) [default: `audit_log` of --config, else
    /// audit.jsonl beside the policy (mode) or in the CA directory (ca ...)].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The audit log's encoding: cordon (JSON lines) or ocsf (OCSF API Activity) [default:
    /// `audit_format` of --config, else cordon].
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub audit_format: Option<AuditFormat>,
    /// A cordon.toml to take `audit_log` and `audit_format` from.
    #[arg(long = "config", value_name = "FILE")]
    pub audit_config: Option<PathBuf>,
}

impl AuditArgs {
    /// Opens the log before anything changes: a log that cannot be written stops the command.
    pub fn open(&self, default: PathBuf) -> anyhow::Result<AuditLog> {
        let target = AuditTarget::resolve(
            self.audit_log.clone(),
            self.audit_format,
            self.audit_config.as_deref(),
            default,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(AuditLog::open(&target.path, target.format)?)
    }
}

/// `<dir>/audit.jsonl`, where `dir` is a file's directory (`.` for a bare name).
pub fn beside(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(crate::audit::DEFAULT_FILE),
        _ => PathBuf::from(crate::audit::DEFAULT_FILE),
    }
}

/// Writes the record, or fails the command saying what was done but not recorded.
pub fn record(log: &AuditLog, r: &Record) -> anyhow::Result<()> {
    log.append(r).with_context(|| format!("{} was done but is NOT in the audit log", r.operation()))
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The audit log to read (either encoding).
    #[arg(long, value_name = "FILE")]
    pub audit_log: PathBuf,
    /// Only records that concern this service.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Only records since: a window back from now (30d, 12h) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = since)]
    pub since: Option<SystemTime>,
    /// text (a table) or json (one cordon record per line).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

fn since(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.into());
    }
    let window = crate::graph::parse_window(s).map_err(|e| format!("{e}, or an RFC 3339 time"))?;
    Ok(SystemTime::now() - window)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let filter = Filter { service: args.service, since: args.since };
    let (records, skipped) = read(&args.audit_log, &filter)?;
    for s in &skipped {
        tracing::warn!("{}:{}: skipped: {}", args.audit_log.display(), s.line, s.why);
    }
    let mut out = std::io::stdout().lock();
    if args.format == "json" {
        for r in &records {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(Outcome::Success);
    }
    let mut rows = vec![["TIME", "ACTION", "STATUS", "USER@HOST", "WHAT"].map(String::from).to_vec()];
    for r in &records {
        rows.push(vec![
            r.time.clone(),
            r.operation().into(),
            r.status.as_str().into(),
            format!("{}@{}", r.actor.user, r.actor.host),
            r.summary(),
        ]);
    }
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| shown(c)).collect()).collect();
    let width: Vec<usize> =
        (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for cells in &rows {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 < cells.len() {
                line += &format!("{c:<w$}  ", w = width[i]);
            } else {
                line += c;
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    if !skipped.is_empty() {
        writeln!(
            out,
            "({} line(s) of {} were not audit records; see the warnings)",
            skipped.len(),
            args.audit_log.display()
        )?;
    }
    Ok(Outcome::Success)
}

/// A value as the terminal may show it: control characters (escape sequences, newlines) escaped.
fn shown(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars().flat_map(char::escape_debug).collect()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(super::shown("web\x1b[2J\n"), "web\\u{1b}[2J\\n");
        assert_eq!(super::shown("plain é"), "plain é");
    }
}
