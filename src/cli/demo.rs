//! `cordon demo`: the whole rollout on loopback, nothing to set up.

use std::path::PathBuf;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the demo's world (CA, configs, ledgers, policy, report) in this new directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    crate::demo::run(crate::demo::Options { keep: args.keep })?;
    Ok(Outcome::Success)
}
