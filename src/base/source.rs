//! A caller's name as policy, ledger and graph use it: a service, or a bare address.

use std::fmt;
use std::net::IpAddr;

use super::ServiceName;

/// Who called, by name: a service (proved by a certificate, or named through discovery), or an
/// address no single service is known at. Written `name` and `ip:A.B.C.D` in the ledger, the
/// policy (`cordon check ip:10.0.0.7 db`) and every output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Service(ServiceName),
    Address(IpAddr),
}

impl Source {
    /// What an address is written after.
    pub const ADDRESS_PREFIX: &'static str = "ip:";

    /// Reads a source as cordon writes it.
    pub fn parse(text: &str) -> Result<Source, String> {
        match text.strip_prefix(Self::ADDRESS_PREFIX) {
            Some(ip) => ip
                .parse()
                .map(Source::Address)
                .map_err(|_| format!("{text:?}: not an address after {:?}", Self::ADDRESS_PREFIX)),
            None => ServiceName::new(text).map(Source::Service).map_err(|e| format!("{text:?}: {e}")),
        }
    }

    /// Whether a name read from a ledger or a policy names an address rather than a service.
    pub fn names_address(text: &str) -> bool {
        text.strip_prefix(Self::ADDRESS_PREFIX).is_some_and(|ip| ip.parse::<IpAddr>().is_ok())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Service(s) => f.write_str(s.as_str()),
            Source::Address(ip) => write!(f, "{}{ip}", Self::ADDRESS_PREFIX),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_back() {
        for text in ["web", "ip:10.0.0.7", "ip:::1"] {
            assert_eq!(Source::parse(text).map(|s| s.to_string()).as_deref(), Ok(text));
        }
        assert!(Source::names_address("ip:10.0.0.7"));
        assert!(!Source::names_address("web"));
        assert!(!Source::names_address("ip:nonsense"));
        assert!(Source::parse("ip:nonsense").is_err());
        assert!(Source::parse("bad name").is_err());
    }
}
