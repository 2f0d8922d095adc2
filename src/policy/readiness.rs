//! Readiness: may a service enforce without cutting anyone off? The one answer `cordon mode`'s
//! preflight, `cordon diff`, the report and the demo all give.
//!
//! The rule, written once: a service is ready to enforce when, judged by the policy after the
//! flip ([`super::decide_in`] as if it enforced), no caller in the evidence would be refused that
//! somebody relies on, and the evidence spans at least the minimum history. In detail:
//!
//! - a caller with a certificate (or an HAProxy log on its own host) the intentions would deny
//!   blocks ([`Blocker::WouldDeny`]), unless an explicit deny names it (denied on purpose) or it
//!   only ever probed (no byte either way: a TCP connect check still connects under enforce);
//! - a caller still arriving in plaintext blocks ([`Blocker::Plaintext`]), unless a deny names its
//!   address or a range holding it, or it migrated: its plaintext evidence ended before the same
//!   caller's mTLS evidence began (the name discovery gave its address arrives with a certificate
//!   now), which shows as [`Note::Migrated`] with both dates;
//! - an identity that declares this service specifically, was never seen, and would be denied
//!   blocks ([`Blocker::DeclaredNeverSeen`]); a broad declaration (most of the fleet) does not;
//! - the history (the span of every caller's evidence except what only the caller claims) must
//!   be at least the minimum ([`Blocker::HistoryShort`]); claimed callers still block;
//! - a service that already enforces is judged for staying so: what the policy refuses it refuses
//!   now ([`Note::RefusedNow`]), which blocks nothing, and its history is not asked for.
//!
//! Undeclared callers, callers first seen lately and probe-only callers are reported as notes,
//! beside the blockers, so a reader sees every reason at once.
//!
//! Pure: no I/O, no clock (the time comes in).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use super::{ANY, Decision, DecisionContext, Identified, Mode, Policy, Reason, Subject, Verdict, decide_in};

/// A caller first seen within this long before now is new (once the history is older than that).
pub const NEW_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// One caller of the service as the evidence shows it: a source with one identification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// A service name, or `ip:A.B.C.D` for an address discovery did not know when recorded.
    pub source: String,
    pub identified: Identified,
    /// For a plaintext address: the service discovery maps it to now, if any.
    pub discovered_as: Option<String>,
    /// Only the caller's own side says so (its imported logs or its own record): it blocks like
    /// any caller but does not lengthen the history.
    pub claimed: bool,
    pub connections: u64,
    /// No byte either way, none refused: only connect checks.
    pub probe_only: bool,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// The caller declares its upstreams and this service is not among them.
    pub undeclared: bool,
}

/// An identity that declares the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredCaller {
    pub identity: String,
    /// Where it was declared, for people (`haproxy.cfg on host-e`).
    pub provenance: String,
    /// Its declaration names most of the fleet: not intent, does not block.
    pub broad: bool,
}

/// What readiness is asked about.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub service: &'a str,
    /// The service's mode before the flip.
    pub mode_now: Mode,
    /// The policy as it would be with the service enforcing.
    pub policy_after: &'a Policy,
    /// Every caller of the service in the evidence.
    pub evidence: &'a [Evidence],
    /// The identities that declare the service.
    pub declared: &'a [DeclaredCaller],
    pub min_history: Duration,
    pub now: SystemTime,
}

/// A caller as a reason names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub source: String,
    pub identified: Identified,
    pub claimed: bool,
    pub connections: u64,
    /// `None` for a declared caller never seen.
    #[serde(serialize_with = "opt_time")]
    pub first_seen: Option<SystemTime>,
    #[serde(serialize_with = "opt_time")]
    pub last_seen: Option<SystemTime>,
}

impl Caller {
    fn of(e: &Evidence) -> Self {
        Caller {
            source: e.source.clone(),
            identified: e.identified,
            claimed: e.claimed,
            connections: e.connections,
            first_seen: Some(e.first_seen),
            last_seen: Some(e.last_seen),
        }
    }

    fn declared(d: &DeclaredCaller) -> Self {
        Caller {
            source: d.identity.clone(),
            identified: Identified::Mtls,
            claimed: false,
            connections: 0,
            first_seen: None,
            last_seen: None,
        }
    }
}

/// A reason the service may not enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Blocker {
    /// A caller with a certificate (or an HAProxy log from its host) the intentions would deny.
    WouldDeny {
        caller: Caller,
        #[serde(serialize_with = "text")]
        rule: Arc<str>,
    },
    /// A caller still arriving in plaintext: enforce admits mTLS only.
    Plaintext {
        caller: Caller,
        #[serde(serialize_with = "text")]
        rule: Arc<str>,
    },
    /// An identity declares this service, was never seen calling it, and would be denied.
    DeclaredNeverSeen {
        caller: Caller,
        provenance: String,
        #[serde(serialize_with = "text")]
        rule: Arc<str>,
    },
    /// The evidence spans less than the minimum history: a weekly or monthly job may not have run.
    HistoryShort {
        #[serde(rename = "span_days", serialize_with = "days")]
        span: Duration,
        #[serde(rename = "min_days", serialize_with = "days")]
        min: Duration,
    },
}

impl Blocker {
    /// The reason's name, one token: `would-deny`, `plaintext`, `declared-never-seen`,
    /// `history-short`.
    pub fn kind(&self) -> &'static str {
        match self {
            Blocker::WouldDeny { .. } => "would-deny",
            Blocker::Plaintext { .. } => "plaintext",
            Blocker::DeclaredNeverSeen { .. } => "declared-never-seen",
            Blocker::HistoryShort { .. } => "history-short",
        }
    }

    /// The caller it is about, if any.
    pub fn caller(&self) -> Option<&Caller> {
        match self {
            Blocker::WouldDeny { caller, .. }
            | Blocker::Plaintext { caller, .. }
            | Blocker::DeclaredNeverSeen { caller, .. } => Some(caller),
            Blocker::HistoryShort { .. } => None,
        }
    }
}

/// Something a reader should know that does not block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "note", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Note {
    /// An explicit deny names the caller (or its address): refused on purpose.
    DeniedOnPurpose {
        caller: Caller,
        #[serde(serialize_with = "text")]
        rule: Arc<str>,
    },
    /// Only connect checks, which still connect under enforce; a check that speaks would fail.
    ProbeOnly {
        caller: Caller,
        #[serde(serialize_with = "text")]
        rule: Arc<str>,
    },
    /// The service enforces already and refuses this caller now.
    RefusedNow {
        caller: Caller,
        #[serde(serialize_with = "text")]
        rule: Arc<str>,
    },
    /// Plaintext evidence that ended before the same caller's mTLS evidence began.
    Migrated {
        caller: Caller,
        /// The name it arrives with over mTLS.
        identity: String,
        #[serde(serialize_with = "time")]
        mtls_since: SystemTime,
    },
    /// The caller declares its upstreams, and not this service.
    Undeclared { caller: Caller },
    /// First seen lately: the history may not show all of what it does yet.
    New { caller: Caller },
}

impl Note {
    pub fn kind(&self) -> &'static str {
        match self {
            Note::DeniedOnPurpose { .. } => "denied-on-purpose",
            Note::ProbeOnly { .. } => "probe-only",
            Note::RefusedNow { .. } => "refused-now",
            Note::Migrated { .. } => "migrated",
            Note::Undeclared { .. } => "undeclared",
            Note::New { .. } => "new",
        }
    }

    pub fn caller(&self) -> &Caller {
        match self {
            Note::DeniedOnPurpose { caller, .. }
            | Note::ProbeOnly { caller, .. }
            | Note::RefusedNow { caller, .. }
            | Note::Migrated { caller, .. }
            | Note::Undeclared { caller }
            | Note::New { caller } => caller,
        }
    }
}

/// The answer: ready when nothing blocks; every reason and note either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub service: String,
    pub mode_now: Mode,
    pub ready: bool,
    /// Most connections first within each kind, in the order of [`Blocker`]'s variants.
    pub blockers: Vec<Blocker>,
    pub notes: Vec<Note>,
    /// The earliest and latest moment of the evidence that counts for the history.
    #[serde(serialize_with = "opt_span")]
    pub history: Option<(SystemTime, SystemTime)>,
    #[serde(rename = "min_history_days", serialize_with = "days")]
    pub min_history: Duration,
}

impl Readiness {
    /// How long the history spans (zero when nothing counts).
    pub fn span(&self) -> Duration {
        self.history.map_or(Duration::ZERO, |(f, l)| l.duration_since(f).unwrap_or_default())
    }

    /// Distinct callers (by name) some blocker names.
    pub fn blocked_by(&self) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.blockers.iter().filter_map(Blocker::caller).map(|c| c.source.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Distinct caller names per blocker kind, in [`Blocker`] order, the kinds present only.
    pub fn blocker_counts(&self) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, Vec<&str>)> = Vec::new();
        for b in &self.blockers {
            let name = b.caller().map_or("", |c| c.source.as_str());
            match out.iter_mut().find(|(k, _)| *k == b.kind()) {
                Some((_, names)) => names.push(name),
                None => out.push((b.kind(), vec![name])),
            }
        }
        out.into_iter()
            .map(|(k, mut names)| {
                names.sort_unstable();
                names.dedup();
                (k, names.len())
            })
            .collect()
    }

    /// One line: `ready to enforce`, `not ready: 2 callers would be denied, 1 caller still in
    /// plaintext, history 3.0d of 30.0d`, or for a service enforcing already `enforcing: 1 caller
    /// refused now`.
    pub fn summary(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {many}") };
        if self.ready {
            if self.mode_now == Mode::Learn {
                return "ready to enforce".to_owned();
            }
            let mut refused: Vec<&str> = self
                .notes
                .iter()
                .filter(|n| n.kind() == "refused-now")
                .map(|n| n.caller().source.as_str())
                .collect();
            refused.sort_unstable();
            refused.dedup();
            return match refused.len() {
                0 => "enforcing".to_owned(),
                n => format!("enforcing: {} refused now", plural(n, "caller", "callers")),
            };
        }
        let parts: Vec<String> = self
            .blocker_counts()
            .into_iter()
            .map(|(kind, n)| match kind {
                "would-deny" => format!("{} would be denied", plural(n, "caller", "callers")),
                "plaintext" => format!("{} still in plaintext", plural(n, "caller", "callers")),
                "declared-never-seen" => {
                    format!(
                        "{} never seen and would be denied",
                        plural(n, "declared caller", "declared callers")
                    )
                }
                _ => format!("history {} of {}", days_text(self.span()), days_text(self.min_history)),
            })
            .collect();
        format!("not ready: {}", parts.join(", "))
    }
}

/// `8.7d`; under a day `5.2h`, under an hour `12m`, under a minute `42s`.
pub fn days_text(d: Duration) -> String {
    match d.as_secs() {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{:.1}h", d.as_secs_f64() / 3_600.0),
        _ => format!("{:.1}d", d.as_secs_f64() / 86_400.0),
    }
}

/// Judges whether `q.service` may enforce. See the module doc for the rule.
pub fn readiness(q: &Question<'_>) -> Readiness {
    let ctx = DecisionContext { now: q.now, bundle: None, revoked: None };
    let enforcing = q.mode_now == Mode::Enforce;
    let policy = q.policy_after;
    let judge = |source: &str, identified: Identified| {
        decide_in(policy, &Subject::recorded(source, identified), q.service, Mode::Enforce, &ctx)
    };
    let history = q.evidence.iter().filter(|e| !e.claimed).fold(None, |h, e| {
        Some(match h {
            None => (e.first_seen, e.last_seen),
            Some((f, l)) => (e.first_seen.min(f), e.last_seen.max(l)),
        })
    });
    let new_since = q.now.checked_sub(NEW_AFTER);
    let mut blockers = Vec::new();
    let mut notes = Vec::new();
    for e in q.evidence {
        let caller = || Caller::of(e);
        if e.undeclared {
            notes.push(Note::Undeclared { caller: caller() });
        }
        if let Some(since) = new_since
            && e.first_seen >= since
            && history.is_some_and(|(first, _)| first < since)
        {
            notes.push(Note::New { caller: caller() });
        }
        let d = judge(&e.source, e.identified);
        if d.outcome.passes() {
            continue;
        }
        let rule = d.rule.clone();
        if intended_deny(policy, &e.source, q.service, &d) {
            notes.push(Note::DeniedOnPurpose { caller: caller(), rule });
        } else if e.probe_only {
            notes.push(Note::ProbeOnly { caller: caller(), rule });
        } else if enforcing {
            notes.push(Note::RefusedNow { caller: caller(), rule });
        } else if let Some((identity, mtls_since)) = migrated(e, q.evidence) {
            notes.push(Note::Migrated { caller: caller(), identity, mtls_since });
        } else if e.identified.is_plaintext() {
            blockers.push(Blocker::Plaintext { caller: caller(), rule });
        } else {
            blockers.push(Blocker::WouldDeny { caller: caller(), rule });
        }
    }
    for d in q.declared {
        let seen = q.evidence.iter().any(|e| e.source == d.identity && !e.identified.is_plaintext());
        if seen || d.broad {
            continue;
        }
        let decision = judge(&d.identity, Identified::Mtls);
        if decision.outcome.passes() || intended_deny(policy, &d.identity, q.service, &decision) {
            continue;
        }
        let caller = Caller::declared(d);
        let rule = decision.rule;
        if enforcing {
            notes.push(Note::RefusedNow { caller, rule });
        } else {
            blockers.push(Blocker::DeclaredNeverSeen { caller, provenance: d.provenance.clone(), rule });
        }
    }
    let span = history.map_or(Duration::ZERO, |(f, l)| l.duration_since(f).unwrap_or_default());
    if !enforcing && span < q.min_history {
        blockers.push(Blocker::HistoryShort { span, min: q.min_history });
    }
    let rank = |c: Option<&Caller>| c.map(|c| (std::cmp::Reverse(c.connections), c.source.clone()));
    blockers.sort_by_key(|b| (kind_rank(b), rank(b.caller())));
    notes.sort_by_key(|n| (n.kind(), rank(Some(n.caller()))));
    Readiness {
        service: q.service.to_owned(),
        mode_now: q.mode_now,
        ready: blockers.is_empty(),
        blockers,
        notes,
        history,
        min_history: q.min_history,
    }
}

fn kind_rank(b: &Blocker) -> u8 {
    match b {
        Blocker::WouldDeny { .. } => 0,
        Blocker::Plaintext { .. } => 1,
        Blocker::DeclaredNeverSeen { .. } => 2,
        Blocker::HistoryShort { .. } => 3,
    }
}

/// Plaintext evidence superseded by the same caller's mTLS evidence: the name it goes by (the
/// recorded service for a known backend, discovery's name for a bare address) arrives with a
/// certificate, first after the plaintext evidence ended.
fn migrated(e: &Evidence, all: &[Evidence]) -> Option<(String, SystemTime)> {
    let name = match e.identified {
        Identified::PlaintextIp => Some(e.source.as_str()),
        Identified::Unknown => e.discovered_as.as_deref(),
        Identified::Mtls | Identified::HaproxyLog => None,
    }?;
    all.iter()
        .filter(|m| m.identified == Identified::Mtls && m.source == name && m.first_seen > e.last_seen)
        .map(|m| m.first_seen)
        .min()
        .map(|since| (name.to_owned(), since))
}

/// The decision refused `source` by an intention that names it (or its address), for `service`
/// or for every service (not `*`): an intended deny, which readiness never counts as a caller cut
/// off.
pub fn intended_deny(policy: &Policy, source: &str, service: &str, decision: &Decision) -> bool {
    decision.reason == Reason::Intention
        && decision.verdict == Verdict::Deny
        && (policy.has_intention(source, service)
            || policy.has_intention(source, ANY)
            || policy.address_deny(source, service).is_some())
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn text<S: Serializer>(t: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t)
}

fn time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

fn opt_span<S: Serializer>(h: &Option<(SystemTime, SystemTime)>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Span {
        first: String,
        last: String,
        days: f64,
    }
    match h {
        Some((f, l)) => s.serialize_some(&Span {
            first: rfc3339(*f),
            last: rfc3339(*l),
            days: round_days(l.duration_since(*f).unwrap_or_default()),
        }),
        None => s.serialize_none(),
    }
}

fn round_days(d: Duration) -> f64 {
    (d.as_secs_f64() / 8_640.0).round() / 10.0
}

fn days<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_days(*d))
}

#[cfg(test)]
mod tests;
