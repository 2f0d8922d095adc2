//! `cordon check` and `cordon mode`: ask the policy, and flip a service between learn and enforce.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;

use super::Outcome;
use crate::base::{Source, escape};
use crate::pki::ServiceName;
use crate::policy::{
    CutOff, DecisionContext, DeclaredCaller, Identified, Mode, Outcome as DecisionOutcome, Policy, Preflight,
    Subject, Verdict, decide, preflight, set_mode,
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The caller: a service name, or ip:A.B.C.D for an address discovery does not know.
    pub source: String,
    /// The destination service.
    pub destination: String,
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
    /// A ledger file or the fleet store (postgres://...).
    #[arg(long, value_name = "LEDGER", value_parser = super::store::DbParser)]
    pub db: Option<crate::store::Db>,
    /// Flip even though the preflight finds callers that would be cut off.
    #[arg(long)]
    pub force: bool,
    /// With --db: the recorded traffic of SERVICE must span at least this long (30d, 12h), so a
    /// weekly or monthly job has had its chance to show up; 0 skips the check.
    #[arg(long, value_name = "WINDOW", value_parser = min_history, default_value = "30d")]
    pub min_history: std::time::Duration,
}

/// `--min-history`: a window, or `0` for none.
fn min_history(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" { Ok(std::time::Duration::ZERO) } else { crate::graph::parse_window(s) }
}

pub fn check(args: CheckArgs) -> anyhow::Result<Outcome> {
    let policy = Policy::load(&args.policy)?;
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

fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

pub fn mode(args: ModeArgs) -> anyhow::Result<Outcome> {
    ServiceName::new(&args.service).context("SERVICE")?;
    let mut out = std::io::stdout().lock();
    if args.mode == Mode::Enforce
        && let Some(db) = &args.db
    {
        let text = std::fs::read_to_string(&args.policy)
            .with_context(|| format!("{}: cannot read the policy", args.policy.display()))?;
        let after = crate::policy::with_mode(&text, &args.policy, &args.service, Mode::Enforce)?;
        let after = Policy::parse(&after, &args.policy)?;
        let callers = db.callers_into(&args.service, None)?;
        let observed = super::review::load(db, None)?;
        let declared: Vec<DeclaredCaller> = observed
            .declarations
            .callers_of(&args.service)
            .map(|d| DeclaredCaller {
                identity: d.identity.clone(),
                provenance: d.provenance(),
                broad: d.broad,
            })
            .collect();
        let check = preflight(&after, &args.service, &callers, &declared, args.min_history);
        print_preflight(&mut out, &args, db, &check)?;
        if !check.passes() {
            if !args.force {
                writeln!(
                    out,
                    "not flipped. Add intentions (cordon propose), wait for more history, or pass --force."
                )?;
                return Ok(Outcome::No);
            }
            writeln!(out, "--force: flipping anyway.")?;
        }
    }
    set_mode(&args.policy, &args.service, args.mode)?;
    writeln!(out, "{} is now in {} mode ({}).", args.service, args.mode, args.policy.display())?;
    Ok(Outcome::Success)
}

/// Every finding of the preflight, refusals first.
fn print_preflight(
    out: &mut impl Write,
    args: &ModeArgs,
    db: &crate::store::Db,
    check: &Preflight,
) -> anyhow::Result<()> {
    let svc = &args.service;
    let days = |d: std::time::Duration| format!("{:.1}d", d.as_secs_f64() / 86_400.0);
    match check.history {
        None => writeln!(out, "history: no traffic of {svc} recorded in {}", db)?,
        Some((first, last)) => writeln!(
            out,
            "history: the evidence for {svc} spans {} ({}..{})",
            days(check.span()),
            crate::graph::format::minute(first),
            crate::graph::format::minute(last)
        )?,
    }
    if check.too_short() {
        writeln!(
            out,
            "refused: that is less than --min-history {}: a weekly or monthly job may not have run yet",
            days(check.min_history)
        )?;
    }
    let row = |out: &mut dyn Write, c: &CutOff| -> std::io::Result<()> {
        let last = c.last_seen.map_or_else(|| "never".to_owned(), ago);
        writeln!(
            out,
            "  {:<24} {:<13} {:>8} connections, last seen {:<10} {}",
            c.source,
            // A declared caller never seen has no evidence of its own.
            c.last_seen.map_or("declared", |_| c.identified.as_str()),
            c.connections,
            last,
            c.why
        )
    };
    if check.cut.is_empty() {
        writeln!(out, "preflight: every caller of {svc} recorded or declared in {} is allowed.", db)?;
    } else {
        writeln!(
            out,
            "refused: {} of {svc} recorded or declared in {} would be cut off by enforcing it:",
            match check.cut.len() {
                1 => "1 caller".to_owned(),
                n => format!("{n} callers"),
            },
            db
        )?;
        for c in &check.cut {
            row(out, c)?;
        }
    }
    if !check.intended.is_empty() {
        writeln!(out, "denied on purpose (an explicit deny intention names them; not blocking):")?;
        for c in &check.intended {
            row(out, c)?;
        }
    }
    if !check.probes.is_empty() {
        writeln!(
            out,
            "only probes (no byte either way; not blocking): a TCP connect check still connects under \
             enforce, as cordon accepts before it decides; a check that speaks to the app would fail:"
        )?;
        for c in &check.probes {
            row(out, c)?;
        }
    }
    Ok(())
}
