//! SPIFFE identities: the names every other module passes around instead of raw strings.
//!
//! A cordon identity is `spiffe://<trust-domain>/service/<name>`, carried as the one URI SAN of a
//! certificate. Parsing follows the SPIFFE ID spec: lowercase trust domain of `[a-z0-9._-]`, path
//! segments of `[A-Za-z0-9._-]` that are neither `.` nor `..`, no query, fragment, port or
//! userinfo, at most 2048 bytes in all.

use std::fmt;
use std::sync::Arc;

/// The longest SPIFFE ID the spec allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain the spec allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// The longest service name cordon accepts (it is also a file name and a metrics label).
pub const MAX_SERVICE_NAME_LEN: usize = 128;

/// Why a name or SPIFFE ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The name is empty.
    #[error("empty {0}")]
    Empty(&'static str),
    /// The name is longer than allowed.
    #[error("{what} is {len} bytes, longer than the {max} allowed")]
    TooLong { what: &'static str, len: usize, max: usize },
    /// A character outside the allowed set.
    #[error("{what} {value:?} has {ch:?}, allowed are {allowed}")]
    BadChar { what: &'static str, value: String, ch: char, allowed: &'static str },
    /// `.` and `..` are not names.
    #[error("{0:?} is not a valid name (dot segments are not allowed)")]
    DotSegment(String),
    /// The URI does not start with `spiffe://`.
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    NotSpiffe(String),
    /// The URI has a port, userinfo, query or fragment.
    #[error("SPIFFE ID {0:?} must not carry a port, userinfo, query or fragment")]
    Decorated(String),
    /// The path is not `/service/<name>`.
    #[error("SPIFFE ID {0:?} is not a cordon service identity (expected spiffe://TD/service/NAME)")]
    NotService(String),
}

fn check_chars(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty(what));
    }
    if value.len() > max {
        return Err(IdError::TooLong { what, len: value.len(), max });
    }
    if let Some(ch) = value.chars().find(|c| !ok(*c)) {
        return Err(IdError::BadChar { what, value: value.to_string(), ch, allowed });
    }
    if value == "." || value == ".." {
        return Err(IdError::DotSegment(value.to_string()));
    }
    Ok(())
}

/// A SPIFFE trust domain, e.g. `example.internal`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Validates a trust domain name.
    pub fn new(name: &str) -> Result<Self, IdError> {
        check_chars("trust domain", name, MAX_TRUST_DOMAIN_LEN, "a-z 0-9 . - _", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
        })?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service name as discovery, policy and certificates know it, e.g. `db`.
///
/// Cheap to clone; valid as a SPIFFE path segment, a file name and a metrics label value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Arc<str>);

impl ServiceName {
    /// Validates a service name: `[A-Za-z0-9._-]`, 1 to 128 bytes, not `.` or `..`.
    pub fn new(name: &str) -> Result<Self, IdError> {
        check_chars("service name", name, MAX_SERVICE_NAME_LEN, "A-Z a-z 0-9 . - _", |c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
        })?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ServiceName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A service identity: `spiffe://<trust domain>/service/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    trust_domain: TrustDomain,
    service: ServiceName,
}

impl ServiceId {
    pub fn new(trust_domain: TrustDomain, service: ServiceName) -> Self {
        Self { trust_domain, service }
    }

    /// Parses `spiffe://TD/service/NAME`.
    pub fn parse(uri: &str) -> Result<Self, IdError> {
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong { what: "SPIFFE ID", len: uri.len(), max: MAX_SPIFFE_ID_LEN });
        }
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| IdError::NotSpiffe(uri.to_string()))?;
        if rest.contains(['?', '#', '@']) {
            return Err(IdError::Decorated(uri.to_string()));
        }
        let (td, path) = rest.split_once('/').ok_or_else(|| IdError::NotService(uri.to_string()))?;
        if td.contains(':') {
            return Err(IdError::Decorated(uri.to_string()));
        }
        let trust_domain = TrustDomain::new(td)?;
        let name = path
            .strip_prefix("service/")
            .filter(|n| !n.contains('/'))
            .ok_or_else(|| IdError::NotService(uri.to_string()))?;
        Ok(Self { trust_domain, service: ServiceName::new(name)? })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The URI form, as it goes into a certificate's SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/service/{}", self.trust_domain, self.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_service_identity() {
        let id = ServiceId::parse("spiffe://example.internal/service/db").unwrap();
        assert_eq!(id.trust_domain().as_str(), "example.internal");
        assert_eq!(id.service().as_str(), "db");
        assert_eq!(id.to_string(), "spiffe://example.internal/service/db");
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "http://example.internal/service/db",
            "spiffe://example.internal:8443/service/db",
            "spiffe://user@example.internal/service/db",
            "spiffe://example.internal/service/db?x=1",
            "spiffe://example.internal/service/db#frag",
            "spiffe://Example.internal/service/db",
            "spiffe://example.internal/service/",
            "spiffe://example.internal/service/..",
            "spiffe://example.internal/workload/db",
            "spiffe://example.internal/service/db/extra",
            "spiffe://example.internal",
            "spiffe:///service/db",
        ] {
            assert!(ServiceId::parse(bad).is_err(), "{bad} should be refused");
        }
        let long = format!("spiffe://td/service/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(matches!(ServiceId::parse(&long), Err(IdError::TooLong { .. })));
    }

    #[test]
    fn service_names_are_safe_everywhere_they_go() {
        for good in ["db", "web-frontend", "batch_nightly", "api.v2", "A1"] {
            ServiceName::new(good).unwrap();
        }
        for bad in ["", "*", "ip:10.0.0.1", "a/b", "a b", "..", "é", &"x".repeat(129)] {
            assert!(ServiceName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
