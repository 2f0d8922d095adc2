//! The vocabulary of a decision: who called, in which mode, what the intentions said.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{ServiceId, ServiceName, Source};

/// How a destination service treats its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every caller passes; the verdict the policy would have given is recorded.
    Learn,
    /// Only callers that an intention allows pass; plaintext is refused.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Learn => "learn",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "learn" => Ok(Mode::Learn),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!("unknown mode {other:?} (expected learn or enforce)")),
        }
    }
}

/// What the intentions say of a (source, destination) pair. Also an intention's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            other => Err(format!("unknown action {other:?} (expected allow or deny)")),
        }
    }
}

/// What happened to a connection: the verdict seen through the destination's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Passed, and the policy allows it.
    Allowed,
    /// Refused (enforce mode).
    Denied,
    /// Passed because the destination is learning, but the policy would deny it.
    WouldDeny,
}

impl Outcome {
    pub fn of(mode: Mode, verdict: Verdict) -> Self {
        match (mode, verdict) {
            (_, Verdict::Allow) => Outcome::Allowed,
            (Mode::Enforce, Verdict::Deny) => Outcome::Denied,
            (Mode::Learn, Verdict::Deny) => Outcome::WouldDeny,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::WouldDeny => "would-deny",
        }
    }

    /// Whether the connection goes through.
    pub fn passes(self) -> bool {
        !matches!(self, Outcome::Denied)
    }
}

/// How the caller of a connection was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Identified {
    /// A verified SPIFFE ID from the client certificate.
    Mtls,
    /// Plaintext; the source IP is a known backend of a service in discovery.
    PlaintextIp,
    /// Plaintext from an address discovery does not know.
    Unknown,
    /// Imported from an HAProxy log line, not proven by a certificate.
    HaproxyLog,
}

impl Identified {
    pub const ALL: [Identified; 4] =
        [Identified::Mtls, Identified::PlaintextIp, Identified::Unknown, Identified::HaproxyLog];

    pub fn as_str(self) -> &'static str {
        match self {
            Identified::Mtls => "mtls",
            Identified::PlaintextIp => "plaintext-ip",
            Identified::Unknown => "unknown",
            Identified::HaproxyLog => "haproxy-log",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// The caller had no certificate: named by its address (through discovery, or not at all).
    pub fn is_plaintext(self) -> bool {
        matches!(self, Identified::PlaintextIp | Identified::Unknown)
    }
}

impl fmt::Display for Identified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which trust bundle (set of CA certificates) verified a certificate: a fingerprint of the
/// bundle's certificates, so the same bundle read again is the same id and any change is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BundleId(pub u64);

/// A client certificate as the handshake proved it: who, how long it is valid, the bundle it
/// was verified against, and which leaf it is. A resumed TLS session carries the certificate of
/// its first handshake, so the validity and revocation are checked again at every decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: ServiceId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub bundle: BundleId,
    /// The leaf's serial number, lowercase hex without leading zero bytes (as the revocation list
    /// writes it).
    pub serial: Arc<str>,
    /// The host the leaf names (its one DNS-name SAN, checked as a host name by pki), None for a
    /// leaf that names none.
    pub host: Option<Arc<str>>,
}

/// The caller of an inbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Proved by its client certificate.
    Mtls(Peer),
    /// Plaintext, named by its source address through discovery when exactly one service has a
    /// backend there.
    Plaintext { ip: IpAddr, service: Option<ServiceName> },
}

impl Caller {
    /// The caller as policy and ledger name it.
    pub fn source(&self) -> Source {
        match self {
            Caller::Mtls(peer) => Source::Service(peer.id.service().clone()),
            Caller::Plaintext { service: Some(s), .. } => Source::Service(s.clone()),
            Caller::Plaintext { ip, service: None } => Source::Address(*ip),
        }
    }

    /// [`Caller::source`] as text: the service name, or `ip:A.B.C.D` for an unknown caller.
    pub fn name(&self) -> String {
        self.source().to_string()
    }

    pub fn identified(&self) -> Identified {
        match self {
            Caller::Mtls(_) => Identified::Mtls,
            Caller::Plaintext { service: Some(_), .. } => Identified::PlaintextIp,
            Caller::Plaintext { service: None, .. } => Identified::Unknown,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Caller::Mtls(_))
    }
}
