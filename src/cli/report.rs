//! `cordon report`: the learned graph, readiness per service and the proposal, as one
//! self-contained HTML file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::Outcome;
use crate::graph::{self, format, report};
use crate::policy::Policy;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ledger (a host's ledger.db, a fleet ledger from `cordon merge`) or the fleet store
    /// (postgres://...).
    #[arg(long, value_name = "LEDGER", value_parser = super::store::DbParser)]
    pub db: crate::store::Db,
    /// The policy to judge the traffic by.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Where to write the HTML file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Only traffic recorded in this window (30d, 12h, 90m); the whole history by default.
    #[arg(long, value_name = "WINDOW", value_parser = graph::parse_window)]
    pub since: Option<std::time::Duration>,
    /// A service's evidence must span at least this long (30d, 12h) to be ready, as `cordon
    /// mode` asks; 0 skips the check.
    #[arg(long, value_name = "WINDOW", value_parser = super::policy::min_history, default_value = "30d")]
    pub min_history: std::time::Duration,
    /// A discovery directory: a bare address that it now gives to a migrated service is that
    /// service's plaintext past (as `cordon mode --discovery` judges it).
    #[arg(long, value_name = "DIR")]
    pub discovery: Option<PathBuf>,
    /// An audit log: each service's flips are listed on its focus view.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let db_path = std::path::PathBuf::from(args.db.to_string());
    for (input, flag) in [(&db_path, "--db"), (&args.policy, "--policy")] {
        anyhow::ensure!(
            !same_file(&args.out, input),
            "--out {} is the {flag} file; the report would overwrite it",
            args.out.display()
        );
    }
    let policy = Policy::load(&args.policy)?;
    let observed = super::review::load(&args.db, super::review::since(args.since))?;
    let services =
        super::review::readiness(&observed, &policy, None, args.discovery.clone(), args.min_history)?;
    let proposal = graph::propose(&observed, 1, Some(&policy));
    let toml = format::proposal_toml(&proposal, &[format!("proposed from {}", args.db)]);
    let html = report::render(&db_path, &observed, &policy, &services, &toml);
    let html = match &args.audit_log {
        Some(log) => {
            crate::audit::report::with_flips(&html, log, &crate::audit::read(log, &Default::default())?.0)
        }
        None => html,
    };
    // Whole or not at all: a browser or a copy job never sees half a page.
    crate::pki::files::write_atomic(&args.out, html.as_bytes(), 0o644)
        .with_context(|| format!("{}: cannot write the report", args.out.display()))?;
    writeln!(
        std::io::stdout().lock(),
        "wrote {} ({} services and callers, {} edges)",
        args.out.display(),
        observed.nodes.len(),
        observed.edges.len()
    )?;
    Ok(Outcome::Success)
}

/// Whether `a` and `b` name one file (through links or `..`); a missing `a` names nothing yet.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
