//! `cordon lockdown --config FILE --print|--remove`: the nftables rules behind `lockdown = true`,
//! for review and for sites that manage the firewall themselves; and lifting them.

use std::io::Write;
use std::path::PathBuf;

use super::Outcome;
use crate::agent::config::Config;
use crate::lockdown;
use crate::policy::Policy;

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("action").required(true))]
pub struct Args {
    /// The agent configuration (cordon.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print the nft script the agent would apply with the current policy's modes (including the
    /// deletion of counters of services no longer locked down, when nft can list them).
    #[arg(long, group = "action")]
    pub print: bool,
    /// Delete cordon's nftables table (the rules stay when the agent stops: fail closed); succeeds
    /// with a note when there is none.
    #[arg(long, group = "action")]
    pub remove: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    let mut out = std::io::stdout().lock();
    if args.remove {
        let existed = lockdown::remove()?;
        let what = if existed { "removed nftables table inet cordon" } else { "no cordon table to remove" };
        writeln!(out, "{what}")?;
        return Ok(Outcome::Success);
    }
    let policy = Policy::load(&config.policy)?;
    let states: Vec<_> =
        config.services.iter().filter_map(|s| Some((s.guarded()?, policy.mode(s.name.as_str())))).collect();
    // The agent also deletes the counters of services no longer locked down; reading them needs
    // nft and CAP_NET_ADMIN, which a review of the script may not have.
    let existing = match lockdown::existing_counters() {
        Ok(counters) => counters.into_iter().map(|c| c.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list cordon's nftables counters; the script deletes no stale counter");
            Vec::new()
        }
    };
    write!(out, "{}", lockdown::ruleset(&states, &existing))?;
    Ok(Outcome::Success)
}
