//! `cordon check` and `cordon mode`: ask the policy, and flip a service between learn and enforce.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;

use super::Outcome;
use crate::base::Source;
use crate::pki::ServiceName;
use crate::policy::{
    DecisionContext, Identified, Mode, Outcome as DecisionOutcome, Policy, Subject, Verdict, decide,
    preflight, set_mode,
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
}

pub fn check(args: CheckArgs) -> anyhow::Result<Outcome> {
    let policy = Policy::load(&args.policy)?;
    // A name is a caller with a certificate; `ip:A.B.C.D` is a plaintext caller.
    let identified = if Source::names_address(&args.source) { Identified::Unknown } else { Identified::Mtls };
    let subject = Subject::recorded(&args.source, identified);
    let decision = decide(&policy, &subject, &args.destination, &DecisionContext::review());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} -> {}: {}", args.source, args.destination, decision.verdict)?;
    writeln!(out, "  rule: {}", decision.rule)?;
    let dest = &args.destination;
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
        let cut = preflight(&after, &args.service, &callers);
        if !cut.is_empty() {
            writeln!(
                out,
                "{} callers of {} recorded in {} would be cut off by enforcing it:",
                cut.len(),
                args.service,
                db
            )?;
            for c in &cut {
                writeln!(
                    out,
                    "  {:<24} {:<13} {:>8} connections, last seen {:<10} {}",
                    c.source,
                    c.identified.as_str(),
                    c.connections,
                    ago(c.last_seen),
                    c.why
                )?;
            }
            if !args.force {
                writeln!(out, "not flipped. Add intentions (cordon propose) or pass --force.")?;
                return Ok(Outcome::No);
            }
            writeln!(out, "--force: flipping anyway.")?;
        } else {
            writeln!(out, "preflight: every caller of {} recorded in {} is allowed.", args.service, db)?;
        }
    }
    set_mode(&args.policy, &args.service, args.mode)?;
    writeln!(out, "{} is now in {} mode ({}).", args.service, args.mode, args.policy.display())?;
    Ok(Outcome::Success)
}
