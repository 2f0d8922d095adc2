//! `cordon graph`, `propose`, `diff` and `merge`: the review commands over recorded ledgers.
//!
//! Thin: parse arguments, call [`crate::graph`] / [`crate::ledger`], print with
//! [`crate::graph::format`]. No analysis here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Args, ValueEnum};

use super::Outcome;
use crate::graph::{self, format};
use crate::policy::Policy;
use crate::store::Db;

/// How `cordon graph` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// An aligned table, one edge a line.
    Text,
    /// JSON (`cordon-graph/1`, see docs/ledger.md).
    Json,
    /// Graphviz DOT (`dot -Tsvg`), edges coloured by verdict.
    Dot,
}

/// Show who talks to whom, as recorded in a ledger.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The ledger (ledger.db, a merged fleet ledger) or the fleet store (postgres://...).
    #[arg(long, value_parser = super::store::DbParser)]
    pub db: Db,
    /// Only the last window: 30d, 12h, 90m (default: the whole history).
    #[arg(long, value_parser = graph::parse_window)]
    pub since: Option<std::time::Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: GraphFormat,
    /// Judge every edge by this policy now (DOT colours, a POLICY column, a "policy" field)
    /// instead of only the verdicts recorded at the time.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// Propose intentions from the recorded graph, as policy TOML on stdout.
#[derive(Debug, Args)]
pub struct ProposeArgs {
    /// The ledger (ledger.db, a merged fleet ledger) or the fleet store (postgres://...).
    #[arg(long, value_parser = super::store::DbParser)]
    pub db: Db,
    /// Only the last window: 30d, 12h, 90m (default: the whole history).
    #[arg(long, value_parser = graph::parse_window)]
    pub since: Option<std::time::Duration>,
    /// Leave out pairs with fewer connections than this.
    #[arg(long, default_value_t = 1)]
    pub min_connections: u64,
    /// Propose only what this policy does not already allow or name.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

/// Per destination service: would enforcing it now cut off recorded callers?
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The ledger (ledger.db, a merged fleet ledger) or the fleet store (postgres://...).
    #[arg(long, value_parser = super::store::DbParser)]
    pub db: Db,
    /// The policy to judge the recorded callers by (policy.toml).
    #[arg(long)]
    pub policy: PathBuf,
    /// Only the last window: 30d, 12h, 90m (default: the whole history).
    #[arg(long, value_parser = graph::parse_window)]
    pub since: Option<std::time::Duration>,
    /// Only this destination service.
    #[arg(long)]
    pub service: Option<String>,
    /// This host's cordon.toml: also show, per locked-down service, the traffic that still
    /// reaches the app directly, bypassing cordon (nftables counters; needs root).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A service's evidence must span at least this long (30d, 12h) to be ready, as `cordon
    /// mode` asks; 0 skips the check.
    #[arg(long, value_name = "WINDOW", value_parser = super::policy::min_history, default_value = "30d")]
    pub min_history: std::time::Duration,
    /// A discovery directory: a bare address that it now gives to a migrated service is that
    /// service's plaintext past (as `cordon mode --discovery` judges it).
    #[arg(long, value_name = "DIR")]
    pub discovery: Option<PathBuf>,
    /// Output format: text, or json (`cordon-diff/1`, the readiness of each service with every
    /// reason; see docs/readiness.md).
    #[arg(long, value_enum, default_value = "text")]
    pub format: DiffFormat,
}

/// How `cordon diff` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    /// Per service its verdict and a table of its callers.
    Text,
    /// JSON: `{"format": "cordon-diff/1", "services": [readiness...]}`.
    Json,
}

/// Combine host ledgers into one (idempotent, order-free).
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The merged ledger; created when missing, merged into when it exists.
    #[arg(long)]
    pub out: PathBuf,
    /// Host ledgers to merge.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Every recorded service's readiness (or only `service`'s), as `diff` and the report judge it:
/// by `policy`, with `min_history`, a plaintext caller named by the service the discovery files
/// in `discovery` place at its address.
pub(super) fn readiness(
    observed: &graph::Observed,
    policy: &Policy,
    service: Option<&str>,
    discovery: Option<PathBuf>,
    min_history: std::time::Duration,
) -> anyhow::Result<Vec<graph::ServiceReadiness>> {
    let discovered = super::policy::Discovered::load(&super::policy::KnownArgs { discovery, config: None })?;
    let judging =
        graph::Judging { min_history, now: SystemTime::now(), discovered: &|ip| discovered.service_at(ip) };
    Ok(graph::diff(observed, policy, service, &judging))
}

pub(super) fn since(window: Option<std::time::Duration>) -> Option<SystemTime> {
    window.map(|w| SystemTime::now().checked_sub(w).unwrap_or(SystemTime::UNIX_EPOCH))
}

fn window_words(since: Option<SystemTime>) -> String {
    since.map_or_else(|| "the whole recorded history".to_owned(), |s| format!("since {}", format::minute(s)))
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub fn graph(args: GraphArgs) -> anyhow::Result<Outcome> {
    let observed = load(&args.db, since(args.since))?;
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    let policy = policy.as_ref();
    print(&match args.format {
        GraphFormat::Text => format::graph_text_by(&observed, policy),
        GraphFormat::Json => format::graph_json_by(&observed, policy),
        GraphFormat::Dot => format::graph_dot_by(&observed, policy),
    })?;
    Ok(Outcome::Success)
}

pub fn propose(args: ProposeArgs) -> anyhow::Result<Outcome> {
    let since = since(args.since);
    let observed = load(&args.db, since)?;
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    let proposal = graph::propose(&observed, args.min_connections, policy.as_ref());
    let mut header = vec![format!(
        "cordon propose: {} intention{} from {}, {}",
        proposal.intentions.len(),
        if proposal.intentions.len() == 1 { "" } else { "s" },
        args.db,
        window_words(since)
    )];
    if let Some((first, last)) = observed.span() {
        header.push(format!("traffic recorded {}..{}", format::day(first), format::day(last)));
    }
    if let Some(p) = &args.policy {
        header.push(format!("only what {} does not already allow or name", p.display()));
    }
    header.push("Review each intention before adding it to the policy.".to_owned());
    print(&format::proposal_toml(&proposal, &header))?;
    Ok(Outcome::Success)
}

pub fn diff(args: DiffArgs) -> anyhow::Result<Outcome> {
    let policy = load_policy(&args.policy)?;
    let observed = load(&args.db, since(args.since))?;
    let services =
        readiness(&observed, &policy, args.service.as_deref(), args.discovery.clone(), args.min_history)?;
    if args.format == DiffFormat::Json {
        let mut readiness = Vec::with_capacity(services.len());
        for s in &services {
            let mut v = serde_json::to_value(&s.readiness)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("summary".into(), s.summary().into());
            }
            readiness.push(v);
        }
        let doc = serde_json::json!({ "format": "cordon-diff/1", "services": readiness });
        print(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
        return Ok(Outcome::Success);
    }
    print(&format::diff_text(&services))?;
    if let Some(path) = &args.config {
        print(&lockdown_lines(path, args.service.as_deref())?)?;
    }
    Ok(Outcome::Success)
}

pub fn merge(args: MergeArgs) -> anyhow::Result<Outcome> {
    let stats = crate::ledger::merge(&args.out, &args.inputs)?;
    let imports = match stats.imports_read {
        0 => String::new(),
        1 => ", 1 import record".to_owned(),
        n => format!(", {n} import records"),
    };
    let declarations = match stats.declarations_read {
        0 => String::new(),
        1 => ", 1 declaration".to_owned(),
        n => format!(", {n} declarations"),
    };
    print(&format!(
        "merged {} ledgers ({} rows{imports}{declarations}) into {}\n",
        stats.inputs,
        stats.rows_read,
        args.out.display()
    ))?;
    Ok(Outcome::Success)
}

/// The recorded graph of a ledger or of the store.
pub(super) fn load(db: &Db, since: Option<SystemTime>) -> anyhow::Result<graph::Observed> {
    Ok(graph::Observed::from_edges(since, db.edge_totals(since)?).with_declarations(&db.declarations()?))
}

fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    Ok(Policy::load(path)?)
}

/// The direct-to-app counters of this host's locked-down services, as diff lines.
fn lockdown_lines(config: &Path, only: Option<&str>) -> anyhow::Result<String> {
    let config = crate::agent::config::Config::load(config)?;
    let services: Vec<_> = config
        .services
        .iter()
        .filter_map(|s| s.guarded())
        .filter(|s| only.is_none_or(|o| s.service.as_str() == o))
        .collect();
    if services.is_empty() {
        return Ok("lockdown: no served service has lockdown = true\n".into());
    }
    Ok(match crate::lockdown::counters(&services) {
        Ok(counters) => services
            .iter()
            .map(|s| {
                let c = counters.iter().find(|c| c.service == s.service.as_str());
                match c {
                    Some(c) => format!(
                        "{} lockdown: {} packets ({} bytes) reached the app's port {} directly, bypassing cordon\n",
                        s.service,
                        c.packets,
                        c.bytes,
                        s.app.port()
                    ),
                    None => format!("{} lockdown: no counter yet (is the agent running with lockdown?)\n", s.service),
                }
            })
            .collect(),
        Err(e) => format!("lockdown: counters unavailable: {e}\n"),
    })
}
