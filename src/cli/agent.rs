//! `cordon agent --config cordon.toml`: run the proxies, recorder and admin endpoint until
//! SIGTERM/SIGINT (drain, flush, exit 0; exit 2 when the ledger could not take every record, saying
//! how many and where they were kept); SIGHUP reloads certificates, policy and discovery.

use std::path::PathBuf;

use anyhow::Context;

use super::Outcome;
use crate::agent::config::Config;
use crate::agent::{Agent, Signals};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent configuration (cordon.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Check the configuration and everything it names (policy, discovery, certificates and key
    /// modes, CA, state and store settings), bind nothing, start nothing: exit 0, or 2 with every
    /// problem listed.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.check {
        return check(&args.config);
    }
    let config = Config::load(&args.config)?;
    let mut builder = match config.proxy.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = builder.enable_all().thread_name("cordon").build().context("starting the async runtime")?;
    runtime.block_on(async {
        let signals = Signals::install().context("installing signal handlers")?;
        let agent = Agent::start(config)
            .await
            .with_context(|| format!("starting the agent from {}", args.config.display()))?;
        agent.run_until(signals).await?;
        Ok(Outcome::Success)
    })
}

fn check(path: &std::path::Path) -> anyhow::Result<Outcome> {
    use std::io::Write;
    match crate::agent::check::check(path) {
        Ok(c) => {
            writeln!(
                std::io::stdout().lock(),
                "{}: ok ({} services, {} upstreams, {} identities, {} services in discovery)",
                path.display(),
                c.services,
                c.upstreams,
                c.identities,
                c.discovered
            )?;
            Ok(Outcome::Success)
        }
        Err(problems) => {
            let n = problems.len();
            let s = if n == 1 { "" } else { "s" };
            // A problem of several lines (a policy's own list) stays indented under its first.
            let list: Vec<String> = problems.iter().map(|p| p.replace('\n', "\n    ")).collect();
            anyhow::bail!("{n} problem{s} found:\n  {}", list.join("\n  "))
        }
    }
}
