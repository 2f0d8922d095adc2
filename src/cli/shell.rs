//! `cordon completions SHELL` and `cordon man`: shell completions and the man page, generated
//! from the same clap tree that parses the command line, so they cannot drift from it.

use std::io::Write;

use clap::CommandFactory;

use super::{Cli, Outcome};

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `args.shell` to stdout (e.g. `cordon completions bash >
/// /etc/bash_completion.d/cordon`).
pub fn completions(args: CompletionsArgs) -> anyhow::Result<Outcome> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "cordon", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(Outcome::Success)
}

/// Writes the man page (roff) to stdout (e.g. `cordon man > /usr/share/man/man1/cordon.1`).
pub fn man() -> anyhow::Result<Outcome> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    std::io::stdout().lock().write_all(&out)?;
    Ok(Outcome::Success)
}
