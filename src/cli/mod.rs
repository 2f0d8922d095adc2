//! The command line: parse, run, map the outcome to an exit code in one place.
//!
//! Exit codes: 0 success; 1 a negative answer (a denied `check`, a refused `mode` flip);
//! 2 an error (bad input, unreadable file). A closed stdout (`cordon graph | head`) is success.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent;
mod audit;
mod demo;
mod discovery;
mod import;
mod issuer;
mod lockdown;
mod pki;
mod policy;
mod report;
mod review;
mod shell;
mod status;
mod store;

pub use crate::logging::{LogFormat, init_logging, log_lines_dropped};

#[derive(Debug, Parser)]
#[command(
    name = "cordon",
    version,
    about = "Mutual-TLS segmentation for SmartStack-style fleets: learn who talks to whom, review, enforce one service at a time",
    propagate_version = true
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human", env = "CORDON_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `cordon=debug`. Default: `info`
    /// (`warn` for the demo, whose own narrative is the output).
    #[arg(long, global = true, env = "CORDON_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: local proxies, recorder, decision log and admin endpoint.
    Agent(agent::Args),
    /// Show (--print) or lift (--remove) the nftables rules behind `lockdown = true`.
    Lockdown(lockdown::Args),
    /// Write the review as one self-contained HTML page: graph, readiness, proposal.
    Report(report::Args),
    /// What the policy says of SOURCE -> DESTINATION: exit 0 allowed, 1 denied, 2 error.
    Check(policy::CheckArgs),
    /// Flip a service between learn and enforce, preflighted against recorded traffic.
    Mode(policy::ModeArgs),
    /// The built-in CA.
    #[command(subcommand)]
    Ca(pki::CaCommand),
    /// Certificates from the built-in CA.
    #[command(subcommand)]
    Cert(pki::CertCommand),
    /// A whole rollout on loopback, nothing to configure: learn, review, enforce, roll back.
    Demo(demo::Args),
    /// Show what a running agent serves: identities, modes, backends, reloads, recorder health.
    Status(status::Args),
    /// Show the services and backends cordon reads from a Synapse discovery directory.
    Discovery(discovery::Args),
    /// Show who talks to whom, as recorded in a ledger.
    Graph(review::GraphArgs),
    /// Propose intentions from the recorded graph (policy TOML on stdout).
    Propose(review::ProposeArgs),
    /// Per service: would enforcing it now cut off recorded callers?
    Diff(review::DiffArgs),
    /// Combine host ledgers into one.
    Merge(review::MergeArgs),
    /// Bring a Synapse host's HAProxy config and logs into cordon.
    Import(import::Args),
    /// Ship one ledger file into the fleet store (PostgreSQL).
    Ship(store::ShipArgs),
    /// Maintain the fleet store.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Print the man page (roff), e.g. into /usr/share/man/man1/cordon.1.
    Man,
    /// List the audit trail: flips, tokens, refused enrolments, revocations, rotations, prunes.
    Audit(audit::Args),
}

/// What a command reports back besides errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: the command answered "no" (denied, refused).
    No,
}

/// Parses the process arguments, runs the command and maps the result to an exit code. Errors,
/// parse errors included, come out in the `--log-format` asked for: with `json`, every line on
/// stderr is one JSON object.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_failed(e),
    };
    let format = cli.log_format;
    let default_filter = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    let flush = init_logging(format, cli.log.as_deref().unwrap_or(default_filter));
    let result = run(cli.command);
    // The lines still buffered go out before the error, so it is the last line.
    drop(flush);
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::No) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{}", crate::logging::fatal_line(format, &error_chain(&e)));
            ExitCode::from(2)
        }
    }
}

/// A command line that did not parse: clap's own message and exit code, as one JSON object when
/// JSON logs were asked for (help and version stay as they are: they were asked for).
fn parse_failed(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let asked = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if asked || !json_asked(std::env::args_os(), std::env::var_os("CORDON_LOG_FORMAT")) {
        e.exit();
    }
    let message = e.to_string();
    let _ =
        writeln!(std::io::stderr(), "{}", crate::logging::fatal_line(LogFormat::Json, message.trim_end()));
    ExitCode::from(2)
}

/// Whether the arguments (or `CORDON_LOG_FORMAT`) ask for JSON logs, read without clap: for a
/// command line clap refused.
fn json_asked(args: impl Iterator<Item = std::ffi::OsString>, env: Option<std::ffi::OsString>) -> bool {
    let args: Vec<_> = args.collect();
    let flag = args.iter().position(|a| a == "--log-format");
    let given = flag.and_then(|i| args.get(i + 1)).map(|v| v == "json").or_else(|| {
        args.iter().rev().find_map(|a| a.to_str()?.strip_prefix("--log-format=").map(|v| v == "json"))
    });
    given.unwrap_or_else(|| env.is_some_and(|v| v == "json"))
}

/// Runs one parsed command.
pub fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Agent(args) => agent::run(args),
        Command::Lockdown(args) => lockdown::run(args),
        Command::Report(args) => report::run(args),
        Command::Check(args) => policy::check(args),
        Command::Mode(args) => policy::mode(args),
        Command::Ca(cmd) => pki::ca(cmd),
        Command::Cert(cmd) => pki::cert(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Status(args) => status::run(args),
        Command::Discovery(args) => discovery::run(args),
        Command::Graph(args) => review::graph(args),
        Command::Propose(args) => review::propose(args),
        Command::Diff(args) => review::diff(args),
        Command::Merge(args) => review::merge(args),
        Command::Import(args) => import::run(args),
        Command::Ship(args) => store::ship(args),
        Command::Store(cmd) => store::run(cmd),
        Command::Completions(args) => shell::completions(args),
        Command::Man => shell::man(),
        Command::Audit(args) => audit::run(args),
    }
}

/// The error and its causes, each said once: a cause whose text its effect already quotes (most
/// of ours name their cause in their own message) is not repeated.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
