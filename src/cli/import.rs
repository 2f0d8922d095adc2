//! `cordon import`: bring what a Synapse host already has into cordon.
//!
//! - `import haproxy-cfg FILE --identity NAME`: the `[[upstream]]` part of `cordon.toml` from the
//!   `haproxy.cfg` Synapse generated, one upstream per local port HAProxy listened on.
//! - `import haproxy-log --db ledger.db FILE...`: seed the ledger's graph with the connections
//!   HAProxy logged (`tcplog`/`httplog`), before any traffic ran through cordon; files already
//!   imported are recognised by their content and only their new lines are imported.
//!
//! HAProxy syntax is read by `cordon-haproxy` only; this module decides what it means for cordon
//! (names, upstreams, ledger events) and must not parse HAProxy text itself.

mod cfg;
mod dedup;
mod discovery;
mod events;
mod lines;
mod log;

use clap::Subcommand;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ImportCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Print `[[upstream]]` entries for cordon.toml from a Synapse-generated haproxy.cfg.
    HaproxyCfg(cfg::CfgArgs),
    /// Seed the ledger with the connections in HAProxy tcplog/httplog files.
    ///
    /// Safe to run again over the same files (from cron, before logrotate): what of a file the
    /// ledger already holds is skipped, so only lines appended since are imported. Only files are
    /// recognised; stdin (`-`) is imported in full every time.
    HaproxyLog(log::LogArgs),
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    match args.command {
        ImportCommand::HaproxyCfg(a) => cfg::run(a),
        ImportCommand::HaproxyLog(a) => log::run(a),
    }
}
