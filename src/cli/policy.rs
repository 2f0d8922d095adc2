//! `cordon check` and `cordon mode`: ask the policy, and flip a service between learn and enforce.
//!
//! Thin: gathers what the names are checked against and the evidence, calls
//! [`crate::policy::flip()`], prints its outcome.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use super::Outcome;
use crate::base::{Source, escape};
use crate::policy::{
    Blocker, DecisionContext, FlipEvidence, FlipOutcome, FlipRequest, Identified, Mode, Note,
    Outcome as DecisionOutcome, Policy, Readiness, ReadinessCaller, Subject, Verdict, check_known, days_text,
    decide, flip,
};

/// Where else service names are known besides the policy: discovery, directly or through the
/// agent's config.
#[derive(Debug, Clone, clap::Args)]
pub struct KnownArgs {
    /// A discovery directory (Synapse-style JSON files): its services are known names, and it
    /// names the bare addresses of plaintext callers.
    #[arg(long, value_name = "DIR")]
    pub discovery: Option<PathBuf>,
    /// The agent's cordon.toml: its discovery directory, if it exists, as --discovery.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The caller: a service name, or ip:A.B.C.D for an address discovery does not know.
    pub source: String,
    /// The destination service.
    pub destination: String,
    /// A ledger or the fleet store whose recorded services are known names too.
    #[arg(long, value_name = "LEDGER", value_parser = super::store::DbParser)]
    pub db: Option<crate::store::Db>,
    #[command(flatten)]
    pub known: KnownArgs,
}

#[derive(Debug, clap::Args)]
pub struct ModeArgs {
    /// The policy file (rewritten atomically; comments and order are kept).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The destination service to flip.
    pub service: String,
    /// learn (allow and record) or enforce (only intentions let a caller in).
    pub mode: Mode,
    /// Preflight an enforce flip against the traffic recorded in this ledger.
    /// A ledger file or the fleet store (postgres://...). An enforce flip needs it or --force.
    #[arg(long, value_name = "LEDGER", value_parser = super::store::DbParser)]
    pub db: Option<crate::store::Db>,
    /// Flip even though the preflight finds reasons not to (each is listed), or without --db.
    #[arg(long)]
    pub force: bool,
    /// With --db: the recorded traffic of SERVICE must span at least this long (30d, 12h), so a
    /// weekly or monthly job has had its chance to show up; 0 skips the check.
    #[arg(long, value_name = "WINDOW", value_parser = min_history, default_value = "30d")]
    pub min_history: std::time::Duration,
    #[command(flatten)]
    pub known: KnownArgs,
    /// The audit log (appended to, created 0600) [default: `audit_log` of --config, else
    /// audit.jsonl beside the policy].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The audit log's encoding: cordon (JSON lines) or ocsf (OCSF API Activity) [default:
    /// `audit_format` of --config, else cordon].
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub audit_format: Option<crate::audit::AuditFormat>,
}

/// `--min-history`: a window (`30d`, `12h`, `90m`, `45s`), or `0` for none.
pub(super) fn min_history(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    crate::base::parse_span(s, true).ok_or_else(|| {
        format!("bad window {s:?}: expected 0 or a number followed by d, h, m or s (30d, 12h)")
    })
}

/// Discovery as the names are checked against it: its services, and the service of an address.
pub(super) struct Discovered(Option<cordon_discovery::Snapshot>);

/// The `discovery_dir` of an agent's cordon.toml, relative to the file's directory, and nothing
/// else of it: `mode --config` may be given a config that only names the discovery directory and
/// the audit log, so the rest is not validated here (`cordon agent --check` does that).
fn discovery_dir_of(config: &Path) -> anyhow::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("{}: cannot read the agent config", config.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not a TOML file", config.display()))?;
    let Some(value) = table.get("discovery_dir") else { return Ok(None) };
    let dir =
        value.as_str().with_context(|| format!("{}: discovery_dir must be a path", config.display()))?;
    let base = config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(Some(base.join(dir)))
}

impl Discovered {
    pub(super) fn load(args: &KnownArgs) -> anyhow::Result<Self> {
        let dir = match (&args.discovery, &args.config) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(config)) => discovery_dir_of(config)?.filter(|d| d.is_dir()),
            (None, None) => None,
        };
        let snapshot = dir
            .map(|d| {
                cordon_discovery::load_dir(&d)
                    .with_context(|| format!("{}: cannot read discovery", d.display()))
            })
            .transpose()?;
        Ok(Discovered(snapshot))
    }

    pub(super) fn names(&self, into: &mut BTreeSet<String>) {
        if let Some(s) = &self.0 {
            into.extend(s.services().map(|(name, _)| name.to_owned()));
        }
    }

    /// The one service discovery gives a backend on `ip`; none when it gives several.
    pub(super) fn service_at(&self, ip: std::net::IpAddr) -> Option<String> {
        match self.0.as_ref()?.services_at(ip) {
            [one] => Some(one.clone()),
            _ => None,
        }
    }
}

fn observed_names(observed: &crate::graph::Observed, into: &mut BTreeSet<String>) {
    into.extend(
        observed.nodes.iter().filter(|n| n.kind == crate::graph::NodeKind::Service).map(|n| n.name.clone()),
    );
}

pub fn check(args: CheckArgs) -> anyhow::Result<Outcome> {
    let policy = Policy::load(&args.policy)?;
    let mut known = BTreeSet::new();
    Discovered::load(&args.known)?.names(&mut known);
    if let Some(db) = &args.db {
        observed_names(&super::review::load(db, None)?, &mut known);
    }
    // The destination must exist; any caller may be asked about (most are denied by default).
    check_known(&policy, &known, &args.destination)?;
    // A name is a caller with a certificate; `ip:A.B.C.D` is a plaintext caller.
    let identified = if Source::names_address(&args.source) { Identified::Unknown } else { Identified::Mtls };
    let subject = Subject::recorded(&args.source, identified);
    let decision = decide(&policy, &subject, &args.destination, &DecisionContext::review());
    let mut out = std::io::stdout().lock();
    let (source, dest) = (escape::text(&args.source), escape::text(&args.destination));
    writeln!(out, "{source} -> {dest}: {}", decision.verdict)?;
    writeln!(out, "  rule: {}", decision.rule)?;
    match decision.outcome {
        DecisionOutcome::Allowed if decision.mode == Mode::Enforce => {
            writeln!(out, "  {dest} enforces: the connection is let in")?
        }
        DecisionOutcome::Allowed => writeln!(out, "  {dest} learns: let in and recorded")?,
        DecisionOutcome::Denied => writeln!(out, "  {dest} enforces: the connection is refused")?,
        DecisionOutcome::WouldDeny => writeln!(
            out,
            "  {dest} learns: let in anyway and recorded as would-deny; enforcing would refuse it"
        )?,
    }
    Ok(if decision.verdict == Verdict::Allow { Outcome::Success } else { Outcome::No })
}

pub fn mode(args: ModeArgs) -> anyhow::Result<Outcome> {
    // Opened first: a flip that could not be recorded is not made.
    let audit = super::audit::AuditArgs {
        audit_log: args.audit_log.clone(),
        audit_format: args.audit_format,
        audit_config: args.known.config.clone(),
    }
    .open(super::audit::beside(&args.policy))?;
    let discovered = Discovered::load(&args.known)?;
    let mut known = BTreeSet::new();
    discovered.names(&mut known);
    let observed = args.db.as_ref().map(|db| super::review::load(db, None)).transpose()?;
    if let Some(o) = &observed {
        observed_names(o, &mut known);
    }
    let evidence =
        observed.as_ref().map(|o| crate::graph::evidence(o, &args.service, &|ip| discovered.service_at(ip)));
    let origin = args.db.as_ref().map(ToString::to_string).unwrap_or_default();
    let outcome = flip(&FlipRequest {
        policy: &args.policy,
        service: &args.service,
        to: args.mode,
        known: &known,
        evidence: evidence.as_ref().map(|(callers, declared)| FlipEvidence {
            origin: &origin,
            callers,
            declared,
        }),
        min_history: args.min_history,
        force: args.force,
        now: SystemTime::now(),
    })?;
    let mut out = std::io::stdout().lock();
    print_outcome(&mut out, &outcome, &origin, &args.policy)?;
    super::audit::record(&audit, &crate::audit::flip_record(&outcome, &args.policy))?;
    Ok(if outcome.flipped { Outcome::Success } else { Outcome::No })
}

fn print_outcome(out: &mut impl Write, o: &FlipOutcome, origin: &str, policy: &Path) -> anyhow::Result<()> {
    if let Some(r) = &o.readiness {
        print_readiness(out, r, origin)?;
    }
    if !o.flipped {
        writeln!(
            out,
            "not flipped. Add intentions (cordon propose), wait for more history, or pass --force."
        )?;
        return Ok(());
    }
    if o.forced {
        writeln!(out, "--force: flipping anyway, overriding:")?;
        for reason in &o.overridden {
            writeln!(out, "  {reason}")?;
        }
    }
    if o.from == o.to {
        writeln!(out, "{} was already in {} mode ({}).", o.service, o.to, policy.display())?;
    } else {
        writeln!(out, "{} is now in {} mode, was {} ({}).", o.service, o.to, o.from, policy.display())?;
    }
    Ok(())
}

fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// Every finding of the preflight, blockers first.
fn print_readiness(out: &mut impl Write, r: &Readiness, origin: &str) -> anyhow::Result<()> {
    let svc = &r.service;
    match r.history {
        None => writeln!(out, "history: no traffic of {svc} recorded in {origin}")?,
        Some((first, last)) => writeln!(
            out,
            "history: the evidence for {svc} spans {} ({}..{})",
            days_text(r.span()),
            crate::graph::format::minute(first),
            crate::graph::format::minute(last)
        )?,
    }
    let row = |out: &mut dyn Write, c: &ReadinessCaller, why: &str| -> std::io::Result<()> {
        let last = c.last_seen.map_or_else(|| "never".to_owned(), ago);
        let how = match (c.last_seen, c.claimed) {
            (None, _) => "declared".to_owned(),
            (Some(_), true) => format!("{} (claimed)", c.identified),
            (Some(_), false) => c.identified.as_str().to_owned(),
        };
        writeln!(
            out,
            "  {:<24} {:<13} {:>8} connections, last seen {:<10} {why}",
            c.source, how, c.connections, last
        )
    };
    let callers: Vec<&Blocker> = r.blockers.iter().filter(|b| b.caller().is_some()).collect();
    for b in &r.blockers {
        if let Blocker::HistoryShort { min, .. } = b {
            writeln!(
                out,
                "refused: that is less than --min-history {}: a weekly or monthly job may not have run yet",
                days_text(*min)
            )?;
        }
    }
    if callers.is_empty() {
        writeln!(out, "preflight: every caller of {svc} recorded or declared in {origin} is allowed.")?;
    } else {
        let n = r.blocked_by().len();
        writeln!(
            out,
            "refused: {} of {svc} recorded or declared in {origin} would be cut off by enforcing it:",
            if n == 1 { "1 caller".to_owned() } else { format!("{n} callers") }
        )?;
        for b in callers {
            let why = match b {
                Blocker::WouldDeny { rule, .. } => rule.to_string(),
                Blocker::Plaintext { rule, .. } => rule.to_string(),
                Blocker::DeclaredNeverSeen { provenance, rule, .. } => {
                    format!("declared ({provenance}), never seen; {rule}")
                }
                _ => String::new(),
            };
            if let Some(c) = b.caller() {
                row(out, c, &why)?;
            }
        }
    }
    let notes = |kind: &'static str| r.notes.iter().filter(move |n| n.kind() == kind);
    let headed = [
        ("denied-on-purpose", "denied on purpose (an explicit deny intention names them; not blocking):"),
        (
            "probe-only",
            "only probes (no byte either way; not blocking): a TCP connect check still connects under \
             enforce, as cordon accepts before it decides; a check that speaks to the app would fail:",
        ),
        ("refused-now", "refused now (the service enforces already; not blocking):"),
        (
            "migrated",
            "migrated (plaintext that ended before the same caller arrived over mTLS; not blocking):",
        ),
    ];
    for (kind, head) in headed {
        if notes(kind).next().is_none() {
            continue;
        }
        writeln!(out, "{head}")?;
        for n in notes(kind) {
            let why = match n {
                Note::DeniedOnPurpose { rule, .. }
                | Note::ProbeOnly { rule, .. }
                | Note::RefusedNow { rule, .. } => rule.to_string(),
                Note::Migrated { caller, identity, mtls_since } => format!(
                    "plaintext until {}, {identity} over mTLS since {}",
                    caller.last_seen.map(crate::graph::format::minute).unwrap_or_default(),
                    crate::graph::format::minute(*mtls_since)
                ),
                _ => String::new(),
            };
            row(out, n.caller(), &why)?;
        }
    }
    Ok(())
}
