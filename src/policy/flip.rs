//! The flip of a service between learn and enforce (`cordon mode`): the name checked, the
//! preflight of an enforce flip ([`super::readiness()`]), the policy file rewritten, and a typed
//! [`FlipOutcome`] an audit record can be written from.
//!
//! The rules: a service must be known (named by the policy, the evidence or discovery), else the
//! flip is refused with the closest known name. A flip to enforce needs evidence to preflight
//! against, and a preflight that finds the service ready, unless forced; the outcome then lists
//! every reason that was overridden. A rollback to learn is never blocked by the preflight.
//!
//! Owns no output: the command line prints the outcome.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::readiness::{DeclaredCaller, Evidence, Question, Readiness, readiness};
use super::{ANY, Mode, Policy, PolicyError, set_mode, with_mode};
use crate::base::{ServiceName, Source};

/// Why a flip (or a question about a service) was refused before anything was judged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlipError {
    /// Not a valid service name.
    #[error("{0}")]
    BadName(String),
    /// No policy, evidence or discovery knows the name: most likely a typo.
    #[error("{}", unknown_text(name, suggestion.as_deref()))]
    UnknownService { name: String, suggestion: Option<String> },
    /// An enforce flip with no evidence to judge it by, not forced.
    #[error("nothing to preflight against: pass --db or --force")]
    NothingToPreflight,
    /// The policy could not be read, parsed or written.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

fn unknown_text(name: &str, suggestion: Option<&str>) -> String {
    let mut text =
        format!("{name:?} is not a service the policy, the evidence or discovery knows: nothing was changed");
    if let Some(s) = suggestion {
        text.push_str(&format!(" (did you mean {s}?)"));
    }
    text
}

/// The evidence an enforce flip is judged by.
#[derive(Debug, Clone, Copy)]
pub struct FlipEvidence<'a> {
    /// Where it came from, for people (`fleet.db`, `postgres://...`).
    pub origin: &'a str,
    pub callers: &'a [Evidence],
    pub declared: &'a [DeclaredCaller],
}

/// What to flip, and what is known to judge it.
#[derive(Debug, Clone, Copy)]
pub struct FlipRequest<'a> {
    pub policy: &'a Path,
    pub service: &'a str,
    pub to: Mode,
    /// Names the evidence and discovery know besides the policy's own.
    pub known: &'a BTreeSet<String>,
    /// `None`: no ledger or store was given.
    pub evidence: Option<FlipEvidence<'a>>,
    pub min_history: Duration,
    /// Flip even if the preflight finds reasons not to, or has nothing to judge by.
    pub force: bool,
    pub now: SystemTime,
}

/// What a flip did: enough for the operator's output and for an audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlipOutcome {
    pub service: String,
    pub from: Mode,
    pub to: Mode,
    /// Whether the policy file now says `to` (false: the preflight refused).
    pub flipped: bool,
    /// The preflight's answer; `None` for a rollback to learn or an enforce flip with no evidence.
    pub readiness: Option<Readiness>,
    /// Where the evidence came from (`FlipEvidence::origin`), if there was any.
    pub evidence_from: Option<String>,
    /// The flip went ahead over reasons it should not have.
    pub forced: bool,
    /// Each reason `--force` overrode, one line each.
    pub overridden: Vec<String>,
    /// The policy's content hash before and after (equal when nothing was written).
    pub policy_before: String,
    pub policy_after: String,
}

/// Checks and performs a flip. `Ok` with `flipped: false` when the preflight refused.
pub fn flip(req: &FlipRequest<'_>) -> Result<FlipOutcome, FlipError> {
    let text = std::fs::read_to_string(req.policy)
        .map_err(|source| PolicyError::Read { path: req.policy.to_owned(), source })?;
    let before = Policy::parse(&text, req.policy)?;
    // Known first: `Db` is more likely a typo of `db` than a name to explain the syntax of.
    check_known(&before, req.known, req.service)?;
    ServiceName::new(req.service)
        .map_err(|e| FlipError::BadName(format!("SERVICE {:?}: {e}", req.service)))?;
    let from = before.mode(req.service);
    let mut outcome = FlipOutcome {
        service: req.service.to_owned(),
        from,
        to: req.to,
        flipped: false,
        readiness: None,
        evidence_from: req.evidence.map(|e| e.origin.to_owned()),
        forced: false,
        overridden: Vec::new(),
        policy_before: content_hash(text.as_bytes()),
        policy_after: content_hash(text.as_bytes()),
    };
    if req.to == Mode::Enforce {
        match req.evidence {
            None if !req.force => return Err(FlipError::NothingToPreflight),
            None => outcome.overridden.push("no preflight: no --db to judge the callers by".to_owned()),
            Some(ev) => {
                let after =
                    Policy::parse(&with_mode(&text, req.policy, req.service, Mode::Enforce)?, req.policy)?;
                let r = readiness(&Question {
                    service: req.service,
                    mode_now: from,
                    policy_after: &after,
                    evidence: ev.callers,
                    declared: ev.declared,
                    min_history: req.min_history,
                    now: req.now,
                });
                if !r.ready {
                    if !req.force {
                        outcome.readiness = Some(r);
                        return Ok(outcome);
                    }
                    outcome.overridden = overridden(&r);
                }
                outcome.readiness = Some(r);
            }
        }
        outcome.forced = !outcome.overridden.is_empty();
    }
    set_mode(req.policy, req.service, req.to)?;
    outcome.flipped = true;
    let written = std::fs::read(req.policy)
        .map_err(|source| PolicyError::Read { path: req.policy.to_owned(), source })?;
    outcome.policy_after = content_hash(&written);
    Ok(outcome)
}

/// `sha256:<hex>` of a policy file's bytes: how a flip's outcome (and its audit record) names
/// the policy before and after.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One line per blocker, as `--force` reports what it overrode and the audit trail records.
pub fn overridden(r: &Readiness) -> Vec<String> {
    use super::readiness::Blocker;
    r.blockers
        .iter()
        .map(|b| match b {
            Blocker::WouldDeny { caller, rule } => format!("{} would be denied ({rule})", caller.source),
            Blocker::Plaintext { caller, .. } => format!("{} still calls in plaintext", caller.source),
            Blocker::DeclaredNeverSeen { caller, provenance, .. } => {
                format!(
                    "{} declares {} ({provenance}), never seen, would be denied",
                    caller.source, r.service
                )
            }
            Blocker::HistoryShort { span, min } => format!(
                "history {} is shorter than --min-history {}",
                super::readiness::days_text(*span),
                super::readiness::days_text(*min)
            ),
        })
        .collect()
}

/// Every service name the policy mentions (modes, sources, destinations; not `*` or addresses).
pub fn policy_names(policy: &Policy) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = policy.modes().map(|(s, _)| s.to_owned()).collect();
    for i in policy.intentions() {
        for n in [&i.source, &i.destination] {
            if n != ANY && !n.starts_with(Source::ADDRESS_PREFIX) && !n.contains('/') {
                names.insert(n.clone());
            }
        }
    }
    names
}

/// Refuses `name` when neither the policy nor `known` names it, with the closest known name.
pub fn check_known(policy: &Policy, known: &BTreeSet<String>, name: &str) -> Result<(), FlipError> {
    let in_policy = policy_names(policy);
    if in_policy.contains(name) || known.contains(name) {
        return Ok(());
    }
    let suggestion = closest(name, in_policy.iter().chain(known.iter()).map(String::as_str));
    Err(FlipError::UnknownService { name: name.to_owned(), suggestion })
}

/// The known name nearest to `name` (case ignored, then edit distance), if it is near enough to
/// be a typo: at most a third of the name's length (rounded up) in edits.
pub fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count().div_ceil(3)).max(1);
    // Only well-formed names are offered: a merged ledger's names are not trusted to be.
    known
        .filter(|k| ServiceName::new(k).is_ok())
        .map(|k| (distance(&lower, &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k.to_owned())
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_says_what_changed_for_an_audit_record() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n")
            .expect("the policy is written");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(40 * 86_400);
        let web = Evidence {
            source: "web".into(),
            identified: crate::base::Identified::Mtls,
            discovered_as: None,
            claimed: false,
            connections: 9,
            probe_only: false,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: now,
            undeclared: false,
        };
        let known = BTreeSet::new();
        let req = FlipRequest {
            policy: &path,
            service: "db",
            to: Mode::Enforce,
            known: &known,
            evidence: Some(FlipEvidence {
                origin: "ledger.db",
                callers: std::slice::from_ref(&web),
                declared: &[],
            }),
            min_history: Duration::from_secs(30 * 86_400),
            force: false,
            now,
        };
        let o = flip(&req).expect("db is known and ready");
        assert!(o.flipped && !o.forced && o.overridden.is_empty());
        assert_ne!(o.policy_before, o.policy_after);
        let json = serde_json::to_value(&o).expect("the outcome serialises");
        assert_eq!((json["from"].as_str(), json["to"].as_str()), (Some("learn"), Some("enforce")));
        assert_eq!(json["evidence_from"], "ledger.db");
        assert_eq!(json["readiness"]["ready"], true);
        // Back to learn: no preflight, the hash moves back.
        let back = flip(&FlipRequest { to: Mode::Learn, evidence: None, ..req }).expect("rollback");
        assert!(back.flipped && back.readiness.is_none());
        assert_eq!(back.policy_before, o.policy_after);
    }

    #[test]
    fn typos_get_the_closest_name() {
        let known = ["db", "cache", "web", "api"];
        let near = |n: &str| closest(n, known.iter().copied());
        assert_eq!(near("Db").as_deref(), Some("db"));
        assert_eq!(near("dbb").as_deref(), Some("db"));
        assert_eq!(near("cahce").as_deref(), Some("cache"));
        assert_eq!(near("billing"), None);
        assert_eq!(closest("db", ["d\u{1b}[2J"].into_iter()), None, "a hostile name is never echoed");
    }
}
