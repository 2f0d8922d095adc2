//! `cordon ship` (one ledger file into the fleet store) and `cordon store prune`.
//!
//! Thin: parse arguments, call [`crate::store`], print what happened.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::Outcome;
use crate::store::{self, StoreUrl};

/// Ship one ledger file into the fleet store (idempotent: shipping it again changes nothing).
#[derive(Debug, Args)]
pub struct ShipArgs {
    /// The ledger file (a host's ledger.db, an import, or a merged ledger).
    #[arg(long)]
    pub db: PathBuf,
    /// The store: postgres://USER@HOST:PORT/DB[?password_file=PATH&ca=PATH].
    #[arg(long, value_parser = UrlParser)]
    pub to: StoreUrl,
    /// Rows per batch (one statement on the server).
    #[arg(long, default_value_t = store::DEFAULT_BATCH_ROWS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_rows: u64,
}

/// Maintain the fleet store.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Drop the history older than a window (whole day partitions, then the rest of that day).
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The store: postgres://USER@HOST:PORT/DB[?password_file=PATH&ca=PATH].
    #[arg(long, value_parser = UrlParser)]
    pub db: StoreUrl,
    /// Keep this much history: 90d, 48h.
    #[arg(long, value_parser = crate::graph::parse_window)]
    pub older_than: Duration,
    /// [default: audit.jsonl in the current directory]
    #[command(flatten)]
    pub audit: super::audit::AuditArgs,
}

/// Parses a `--db` (a ledger path or a store URL) without echoing a refused value: it may hold a
/// password.
#[derive(Debug, Clone, Copy)]
pub struct DbParser;

impl clap::builder::TypedValueParser for DbParser {
    type Value = store::Db;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<store::Db, clap::Error> {
        redacted(arg, value, |s| s.parse())
    }
}

/// Parses a store URL without echoing a refused value.
#[derive(Debug, Clone, Copy)]
pub struct UrlParser;

impl clap::builder::TypedValueParser for UrlParser {
    type Value = StoreUrl;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreUrl, clap::Error> {
        redacted(arg, value, StoreUrl::parse)
    }
}

fn redacted<T>(
    arg: Option<&clap::Arg>,
    value: &std::ffi::OsStr,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, clap::Error> {
    let name = arg.map(|a| format!("--{}", a.get_long().unwrap_or(a.get_id().as_str()))).unwrap_or_default();
    let fail =
        |why: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{name}: {why}\n"));
    let text = value.to_str().ok_or_else(|| fail("not UTF-8".into()))?;
    parse(text).map_err(fail)
}

pub fn ship(args: ShipArgs) -> anyhow::Result<Outcome> {
    if !args.db.exists() {
        anyhow::bail!("{}: no such ledger", args.db.display());
    }
    let shipped =
        store::ship_file(&args.db, &args.to, usize::try_from(args.batch_rows).unwrap_or(usize::MAX))
            .with_context(|| format!("shipping {} to {}", args.db.display(), args.to))?;
    println!(
        "shipped {} rows in {} batches from {} to {}",
        shipped.rows,
        shipped.batches,
        args.db.display(),
        args.to
    );
    Ok(Outcome::Success)
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<Outcome> {
    match cmd {
        StoreCommand::Prune(args) => {
            let now_hour = crate::ledger::unix_ms(SystemTime::now()).div_euclid(3_600_000);
            let hours = i64::try_from(args.older_than.as_secs() / 3600).unwrap_or(i64::MAX);
            let audit = args.audit.open(crate::audit::DEFAULT_FILE.into())?;
            let pruned = store::prune(&args.db, now_hour.saturating_sub(hours));
            let result = pruned.as_ref().map(|p| (p.partitions, p.rows)).map_err(|e| e.to_string());
            let record = crate::audit::Record::store_prune(&args.db.to_string(), args.older_than, result);
            super::audit::record(&audit, &record)?;
            let pruned = pruned?;
            println!(
                "pruned {}: dropped {} day partitions, deleted {} rows",
                args.db, pruned.partitions, pruned.rows
            );
            Ok(Outcome::Success)
        }
    }
}
