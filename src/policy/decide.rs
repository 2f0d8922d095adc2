//! The one authorization decision. Every verdict cordon gives is made here: the inbound proxy at
//! accept and for every app connection on a reused hop, the re-check of open connections when the
//! policy, the trust bundle or the revocation list changes, the preflight of `cordon mode`,
//! `cordon diff`, the report and `cordon check`.
//!
//! The rule, written once: a caller gets in when its certificate is valid now, was verified
//! against the trust bundle in force and is not revoked, it arrived over mTLS, and the most
//! specific intention for the pair allows it. A destination that learns lets in what the rule
//! would refuse, and says so (`would-deny`), except a certificate that is no longer good
//! (expired, not yet valid, verified against a bundle no longer in force, or revoked: its serial
//! or its host is in the revocation list in force): that is refused in every mode, as a fresh
//! handshake with it would be.
//! A plaintext caller is always refused; when a deny intention names its address (`ip:A.B.C.D`
//! or a CIDR range), that intention is the reason.
//!
//! Pure: no I/O, no clock (the time comes in), no allocation on the paths the data plane takes.

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use super::Policy;
use crate::base::{BundleId, Caller, Identified, Mode, Outcome, Peer, Verdict};
use crate::pki::Revocations;

/// Which leaf a certificate is, for the revocation check: its serial (hex, as the revocation
/// list writes it) and the host it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafId<'a> {
    pub serial: &'a str,
    pub host: Option<&'a str>,
}

impl<'a> LeafId<'a> {
    fn of(peer: &'a Peer) -> Self {
        LeafId { serial: &peer.serial, host: peer.host.as_deref() }
    }
}

/// What the decision knows of how a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof<'a> {
    /// A certificate verified by a handshake (full or resumed), for a connection (or an app
    /// connection on a hop) that starts now: it must be valid now, and not revoked.
    Certificate { not_before: SystemTime, not_after: SystemTime, bundle: BundleId, leaf: LeafId<'a> },
    /// The certificate of a connection already open, decided again after a change: checked
    /// against the bundle in force, not against its expiry (TLS does not end a session when the
    /// certificate that opened it expires, and a long-lived database connection must not be cut
    /// by the next policy reload for it). A revoked leaf is refused: revocation is for cutting
    /// off exactly such connections.
    OpenCertificate { bundle: BundleId, leaf: LeafId<'a> },
    /// Evidence recorded earlier of a caller with an identity: an mTLS connection in the ledger,
    /// or an HAProxy log line written on the caller's own host. Judged by the intentions alone.
    Recorded,
    /// No certificate: named by its address, through discovery or not at all.
    Plaintext,
}

/// The caller as the decision sees it: its name in the policy, and its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// A service name, or `ip:A.B.C.D`.
    pub source: &'a str,
    pub proof: Proof<'a>,
}

impl<'a> Subject<'a> {
    /// A connection that is open already, decided again after a change of policy, bundle or
    /// revocation list.
    pub fn open(caller: &'a Caller, source: &'a str) -> Self {
        let proof = match caller {
            Caller::Mtls(peer) => Proof::OpenCertificate { bundle: peer.bundle, leaf: LeafId::of(peer) },
            Caller::Plaintext { .. } => Proof::Plaintext,
        };
        Subject { source, proof }
    }

    /// A live caller; `source` is [`Caller::name`], made once per connection.
    pub fn live(caller: &'a Caller, source: &'a str) -> Self {
        let proof = match caller {
            Caller::Mtls(peer) => Proof::Certificate {
                not_before: peer.not_before,
                not_after: peer.not_after,
                bundle: peer.bundle,
                leaf: LeafId::of(peer),
            },
            Caller::Plaintext { .. } => Proof::Plaintext,
        };
        Subject { source, proof }
    }

    /// A caller recorded in a ledger with this identification.
    pub fn recorded(source: &'a str, identified: Identified) -> Self {
        let proof = if identified.is_plaintext() { Proof::Plaintext } else { Proof::Recorded };
        Subject { source, proof }
    }
}

/// What the decision is made against besides the policy: the time, the trust bundle that live
/// certificates must have been verified against, and the revocation list in force (None for
/// both where no live certificate is judged: the review commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionContext<'a> {
    pub now: SystemTime,
    pub bundle: Option<BundleId>,
    pub revoked: Option<&'a Revocations>,
}

impl DecisionContext<'static> {
    /// For recorded evidence: now, no bundle to compare with, no revocation list.
    pub fn review() -> Self {
        DecisionContext { now: SystemTime::now(), bundle: None, revoked: None }
    }
}

/// Why the decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// An intention for the pair decided (allow or deny).
    Intention,
    /// No intention matches: deny by default.
    NoIntention,
    /// No certificate: enforcing accepts mTLS only.
    Plaintext,
    /// The caller's certificate has expired (a resumed session outlived it).
    CertificateExpired,
    /// The caller's certificate is not valid yet.
    CertificateNotYetValid,
    /// The certificate was verified against a trust bundle no longer in force.
    TrustBundleChanged,
    /// The certificate's serial, or the host it names, is in the revocation list in force.
    Revoked,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Intention => "intention",
            Reason::NoIntention => "no-intention",
            Reason::Plaintext => "plaintext",
            Reason::CertificateExpired => "certificate-expired",
            Reason::CertificateNotYetValid => "certificate-not-yet-valid",
            Reason::TrustBundleChanged => "trust-bundle-changed",
            Reason::Revoked => "revoked",
        }
    }

    /// A refusal of the certificate itself, which no mode lets through.
    pub fn is_authentication(self) -> bool {
        matches!(
            self,
            Reason::CertificateExpired
                | Reason::CertificateNotYetValid
                | Reason::TrustBundleChanged
                | Reason::Revoked
        )
    }
}

/// The answer for one connection (or one recorded caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the rule says: allow only when every check passes.
    pub verdict: Verdict,
    /// The verdict through the destination's mode: whether the connection goes through.
    pub outcome: Outcome,
    /// The mode the decision was made in.
    pub mode: Mode,
    /// The deciding rule, for people and the decision log: `web -> db allow (policy.toml:12)`,
    /// `no matching intention (default deny)`, or why the caller's proof was not enough. Shared,
    /// so a decision from an intention allocates nothing.
    pub rule: Arc<str>,
    pub reason: Reason,
}

static PLAINTEXT: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("plaintext: enforce accepts mTLS only (migrate the caller to cordon first)"));
static EXPIRED: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("the caller's certificate has expired (resumed session refused)"));
static NOT_YET_VALID: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("the caller's certificate is not valid yet"));
static BUNDLE_CHANGED: LazyLock<Arc<str>> = LazyLock::new(|| {
    Arc::from("the caller's certificate was verified against a trust bundle no longer in force")
});
static REVOKED_SERIAL: LazyLock<Arc<str>> =
    LazyLock::new(|| Arc::from("the caller's certificate is revoked (its serial is in the revocation list)"));
static REVOKED_HOST: LazyLock<Arc<str>> = LazyLock::new(|| {
    Arc::from("the caller's certificate is revoked (the host it names is in the revocation list)")
});

/// The refusal for a revoked leaf, if `leaf` is one in `revoked`: the check every decision on a
/// live certificate makes first, and the one the ingest service makes on each request.
pub fn revocation(revoked: Option<&Revocations>, leaf: &LeafId<'_>) -> Option<&'static Arc<str>> {
    let revoked = revoked?;
    if !revoked.covers(leaf.serial, leaf.host) {
        return None;
    }
    Some(if revoked.has_serial(leaf.serial) { &REVOKED_SERIAL } else { &REVOKED_HOST })
}

/// Decides `subject -> destination` in the destination's current mode.
pub fn decide(
    policy: &Policy,
    subject: &Subject<'_>,
    destination: &str,
    ctx: &DecisionContext<'_>,
) -> Decision {
    decide_in(policy, subject, destination, policy.mode(destination), ctx)
}

/// Decides `subject -> destination` as if the destination were in `mode`: the preflight and the
/// readiness ask "what if it enforced?".
pub fn decide_in(
    policy: &Policy,
    subject: &Subject<'_>,
    destination: &str,
    mode: Mode,
    ctx: &DecisionContext<'_>,
) -> Decision {
    let refuse = |reason: Reason, rule: &Arc<str>, outcome: Outcome| Decision {
        verdict: Verdict::Deny,
        outcome,
        mode,
        rule: rule.clone(),
        reason,
    };
    match subject.proof {
        Proof::Certificate { not_before, not_after, bundle, leaf } => {
            if let Some(rule) = revocation(ctx.revoked, &leaf) {
                return refuse(Reason::Revoked, rule, Outcome::Denied);
            }
            if ctx.now > not_after {
                return refuse(Reason::CertificateExpired, &EXPIRED, Outcome::Denied);
            }
            if ctx.now < not_before {
                return refuse(Reason::CertificateNotYetValid, &NOT_YET_VALID, Outcome::Denied);
            }
            if ctx.bundle.is_some_and(|in_force| in_force != bundle) {
                return refuse(Reason::TrustBundleChanged, &BUNDLE_CHANGED, Outcome::Denied);
            }
        }
        Proof::OpenCertificate { bundle, leaf } => {
            if let Some(rule) = revocation(ctx.revoked, &leaf) {
                return refuse(Reason::Revoked, rule, Outcome::Denied);
            }
            if ctx.bundle.is_some_and(|in_force| in_force != bundle) {
                return refuse(Reason::TrustBundleChanged, &BUNDLE_CHANGED, Outcome::Denied);
            }
        }
        Proof::Recorded => {}
        Proof::Plaintext => {
            // A deny that names the address acknowledges the caller: refused on purpose.
            if let Some(found) = policy.address_deny(subject.source, destination) {
                return refuse(Reason::Intention, &found.rule, Outcome::of(mode, Verdict::Deny));
            }
            return refuse(Reason::Plaintext, &PLAINTEXT, Outcome::of(mode, Verdict::Deny));
        }
    }
    let found = policy.intention_for(subject.source, destination);
    Decision {
        verdict: found.verdict,
        outcome: Outcome::of(mode, found.verdict),
        mode,
        rule: found.rule,
        reason: if found.explicit { Reason::Intention } else { Reason::NoIntention },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const POLICY: &str = r#"
[modes]
"*" = "learn"
db = "enforce"

[[intention]]
source = "web"
destination = "db"
action = "allow"

[[intention]]
source = "batch"
destination = "db"
action = "deny"

[[intention]]
source = "*"
destination = "cache"
action = "allow"

[[intention]]
source = "ip:10.9.0.0/16"
destination = "db"
action = "deny"
"#;

    fn policy() -> Policy {
        Policy::parse(POLICY, Path::new("policy.toml")).expect("the test policy parses")
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    const B1: BundleId = BundleId(1);
    const B2: BundleId = BundleId(2);

    /// web's leaf, held by host web-1.
    const WEB: LeafId<'static> = LeafId { serial: "0abc", host: Some("web-1") };
    /// A leaf of a host that is revoked whole.
    const STOLEN: LeafId<'static> = LeafId { serial: "77", host: Some("web-9") };
    /// A leaf that names no host.
    const OLD: LeafId<'static> = LeafId { serial: "1234", host: None };

    fn cert(bundle: BundleId) -> Proof<'static> {
        Proof::Certificate { not_before: t(0), not_after: t(100), bundle, leaf: WEB }
    }

    fn cert_of(leaf: LeafId<'static>) -> Proof<'static> {
        Proof::Certificate { not_before: t(0), not_after: t(100), bundle: B1, leaf }
    }

    fn open(leaf: LeafId<'static>) -> Proof<'static> {
        Proof::OpenCertificate { bundle: B1, leaf }
    }

    /// The decision for every kind of caller, destination mode and certificate state.
    #[test]
    fn table() {
        let p = policy();
        let live = DecisionContext { now: t(50), bundle: Some(B1), revoked: None };
        let later = DecisionContext { now: t(101), bundle: Some(B1), revoked: None };
        let early = DecisionContext { now: SystemTime::UNIX_EPOCH, bundle: Some(B1), revoked: None };
        let rotated = DecisionContext { now: t(50), bundle: Some(B2), revoked: None };
        let review = DecisionContext { now: t(50), bundle: None, revoked: None };
        let list = Revocations::parse(br#"{"serials":["0abc","1234"],"hosts":["web-9"]}"#, "t").unwrap();
        let revoked = DecisionContext { now: t(50), bundle: Some(B1), revoked: Some(&list) };
        let revoked_later = DecisionContext { now: t(101), bundle: Some(B1), revoked: Some(&list) };
        let other = Revocations::parse(br#"{"serials":["ffff"],"hosts":["db-1"]}"#, "t").unwrap();
        let unrelated = DecisionContext { now: t(50), bundle: Some(B1), revoked: Some(&other) };
        use Outcome::*;
        use Reason::*;
        #[rustfmt::skip]
        let cases: &[(&str, Proof, &str, &DecisionContext<'_>, Verdict, Outcome, Reason)] = &[
            // enforce: the intention decides an mTLS caller; no match is deny
            ("web",   cert(B1),         "db",    &live,    Verdict::Allow, Allowed,   Intention),
            ("batch", cert(B1),         "db",    &live,    Verdict::Deny,  Denied,    Intention),
            ("api",   cert(B1),         "db",    &live,    Verdict::Deny,  Denied,    NoIntention),
            // enforce: plaintext is refused even where an intention allows the name
            ("web",   Proof::Plaintext, "db",    &live,    Verdict::Deny,  Denied,    Plaintext),
            ("ip:10.0.0.7", Proof::Plaintext, "db", &live, Verdict::Deny,  Denied,    Plaintext),
            // a deny naming the caller's address acknowledges it: the intention is the reason
            ("ip:10.9.3.4", Proof::Plaintext, "db", &live, Verdict::Deny,  Denied,    Intention),
            ("ip:10.9.3.4", Proof::Plaintext, "search", &live, Verdict::Deny, WouldDeny, Plaintext),
            // learn: everything passes, the refusals are would-deny
            ("api",   cert(B1),         "search", &live,   Verdict::Deny,  WouldDeny, NoIntention),
            ("web",   Proof::Plaintext, "search", &live,   Verdict::Deny,  WouldDeny, Plaintext),
            ("web",   cert(B1),         "cache", &live,    Verdict::Allow, Allowed,   Intention),
            // a certificate no longer good is refused in every mode, whatever the intentions say
            ("web",   cert(B1),         "db",    &later,   Verdict::Deny,  Denied,    CertificateExpired),
            ("web",   cert(B1),         "cache", &later,   Verdict::Deny,  Denied,    CertificateExpired),
            ("web",   cert(B1),         "db",    &early,   Verdict::Deny,  Denied,    CertificateNotYetValid),
            ("web",   cert(B1),         "db",    &rotated, Verdict::Deny,  Denied,    TrustBundleChanged),
            ("web",   cert(B1),         "cache", &rotated, Verdict::Deny,  Denied,    TrustBundleChanged),
            // an open connection: the bundle counts, its certificate's expiry does not
            ("web",   open(WEB),        "db",    &later,   Verdict::Allow, Allowed,   Intention),
            ("web",   Proof::OpenCertificate { bundle: B1, leaf: WEB }, "db", &rotated, Verdict::Deny, Denied, TrustBundleChanged),
            ("api",   open(WEB),        "db",    &live,    Verdict::Deny,  Denied,    NoIntention),
            // a revoked leaf (its serial, or the host it names, listed) is refused in every mode,
            // live or open, whatever the intentions say
            ("web",   cert(B1),         "db",    &revoked, Verdict::Deny,  Denied,    Revoked),
            ("web",   cert(B1),         "cache", &revoked, Verdict::Deny,  Denied,    Revoked),
            ("web",   cert_of(STOLEN),  "cache", &revoked, Verdict::Deny,  Denied,    Revoked),
            ("web",   cert_of(OLD),     "cache", &revoked, Verdict::Deny,  Denied,    Revoked),
            ("web",   cert(B1),         "cache", &revoked_later, Verdict::Deny, Denied, Revoked),
            ("web",   open(WEB),        "db",    &revoked, Verdict::Deny,  Denied,    Revoked),
            ("web",   open(STOLEN),     "cache", &revoked, Verdict::Deny,  Denied,    Revoked),
            // a list that names neither the serial nor the host changes nothing
            ("web",   cert(B1),         "db",    &unrelated, Verdict::Allow, Allowed, Intention),
            ("web",   open(WEB),        "cache", &unrelated, Verdict::Allow, Allowed, Intention),
            // recorded evidence: judged by intentions, with no bundle to compare
            ("web",   Proof::Recorded,  "db",    &review,  Verdict::Allow, Allowed,   Intention),
            ("batch", Proof::Recorded,  "db",    &review,  Verdict::Deny,  Denied,    Intention),
            ("web",   cert(B1),         "db",    &review,  Verdict::Allow, Allowed,   Intention),
        ];
        assert!(!cases.is_empty());
        for (source, proof, dest, ctx, verdict, outcome, reason) in cases {
            let d = decide(&p, &Subject { source, proof: *proof }, dest, ctx);
            assert_eq!(
                (d.verdict, d.outcome, d.reason),
                (*verdict, *outcome, *reason),
                "{source} -> {dest} with {proof:?} at {ctx:?}: rule {}",
                d.rule
            );
            assert_eq!(d.mode, p.mode(dest));
        }
    }

    #[test]
    fn as_if_enforced() {
        let p = policy();
        let ctx = DecisionContext::review();
        // search learns: the preflight asks what enforcing it would do
        let d = decide_in(&p, &Subject::recorded("api", Identified::Mtls), "search", Mode::Enforce, &ctx);
        assert_eq!((d.outcome, d.mode), (Outcome::Denied, Mode::Enforce));
        let d =
            decide_in(&p, &Subject::recorded("web", Identified::PlaintextIp), "cache", Mode::Enforce, &ctx);
        assert_eq!((d.outcome, d.reason), (Outcome::Denied, Reason::Plaintext));
        let d =
            decide_in(&p, &Subject::recorded("web", Identified::HaproxyLog), "cache", Mode::Enforce, &ctx);
        assert_eq!(d.outcome, Outcome::Allowed, "an HAProxy log on the caller's host is judged by its name");
        let d = decide(&p, &Subject::recorded("web", Identified::Unknown), "cache", &ctx);
        assert_eq!(d.outcome, Outcome::WouldDeny);
    }

    #[test]
    fn rules_name_file_and_line() {
        let p = policy();
        let d = decide(&p, &Subject::recorded("web", Identified::Mtls), "db", &DecisionContext::review());
        assert!(d.rule.contains("policy.toml:6"), "{}", d.rule);
        let d = decide(&p, &Subject::recorded("api", Identified::Mtls), "db", &DecisionContext::review());
        assert!(d.rule.contains("default deny"), "{}", d.rule);
    }
}
