//! The command line: parse, run, map the outcome to an exit code in one place.
//!
//! Exit codes: 0 success; 1 a negative answer (a denied `check`, a refused `mode` flip);
//! 2 an error (bad input, unreadable file). A closed stdout (`cordon graph | head`) is success.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
mod status;
mod store;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

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

/// Parses the process arguments, runs the command and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    // Held to the end: dropping it flushes the log lines still buffered.
    let _flush = init_logging(cli.log_format, cli.log.as_deref().unwrap_or(default_filter));
    match run(cli.command) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::No) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "cordon: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
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

/// Log lines waiting for the writer thread. Its queue is allocated whole when logging starts (a
/// slot per line), so this is memory every process holds: 8,192 slots are 256 KiB, where the
/// writer's default of 128,000 held 4 MiB of a 19 MiB agent.
const LOG_LINES: usize = 8_192;

/// Lines dropped because stderr did not take them fast enough (`cordon_log_lines_dropped_total`).
static LOG_DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the writer's queue was full.
pub fn log_lines_dropped() -> u64 {
    LOG_DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Sets up tracing on stderr; a bad filter falls back to `info` with a warning. Lines go through
/// a writer thread, so a slow or blocked stderr (a full pipe, a stalled journal) never stalls
/// the data plane: past 8,192 (`LOG_LINES`) waiting, lines are dropped rather than waited for, and
/// counted ([`log_lines_dropped`]). Colours only on a terminal. Returns the guard that flushes
/// the buffered lines when dropped.
pub fn init_logging(format: LogFormat, filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let _ = LOG_DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!(filter, error = %e, "bad --log filter, using info");
    }
    guard
}
