//! The host a leaf was issued to. The signing service (and `cert issue --host`) writes it into
//! every leaf as one DNS-name SAN beside the SPIFFE URI, so whoever receives the leaf over mTLS
//! (the ingest service, an inbound, the signing service at renewal) knows which host holds it
//! without trusting anything the host says about itself.
//!
//! A host name comes from outside (a join request, a command line, a certificate): it is checked
//! here, once, before it is stored, logged or compared.

use std::fmt;
use std::sync::Arc;

/// The longest host name accepted, in bytes (DNS's limit for a name in text form).
pub const MAX_HOST_LEN: usize = 253;

/// A host name in DNS syntax: labels of ASCII letters, digits and `-` (not at either end), 1 to 63
/// bytes each, separated by dots, at most 253 bytes in all. Kept as given, compared as given
/// (cordon never lower-cases a host name behind the operator's back).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(Arc<str>);

/// Why a host name was refused. Its `Display` never quotes the name whole: a refused name may be
/// 60 kB of anything, and ends up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    /// Nothing at all.
    #[error("the host name is empty")]
    Empty,
    /// Longer than [`MAX_HOST_LEN`].
    #[error("the host name is {0} bytes long; at most 253 are allowed")]
    TooLong(usize),
    /// A label (the text between two dots) that is empty or longer than 63 bytes.
    #[error("the host name has a label that is empty or longer than 63 bytes")]
    BadLabel,
    /// A byte outside letters, digits, `-` and `.`, or a label that starts or ends with `-`.
    #[error("the host name may hold only letters, digits, '-' (not at a label's ends) and '.'")]
    BadCharacter,
}

impl HostName {
    /// Checks `name` against the DNS syntax above.
    pub fn new(name: &str) -> Result<Self, HostNameError> {
        validate(name)?;
        Ok(HostName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate(name: &str) -> Result<(), HostNameError> {
    if name.is_empty() {
        return Err(HostNameError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostNameError::TooLong(name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HostNameError::BadLabel);
        }
        let bytes = label.as_bytes();
        if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            || bytes.first() == Some(&b'-')
            || bytes.last() == Some(&b'-')
        {
            return Err(HostNameError::BadCharacter);
        }
    }
    Ok(())
}

/// The host a DER leaf names: its one DNS-name SAN, checked as a [`HostName`]. None for a leaf
/// with no DNS SAN (issued before leaves named their host), with more than one, or with one that
/// is not a valid host name: such a leaf speaks for no host.
pub fn host_of(cert: &rustls_pki_types::CertificateDer<'_>) -> Option<HostName> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    let mut dns = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    let one = dns.next()?;
    if dns.next().is_some() {
        return None;
    }
    HostName::new(one).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_dns_syntax() {
        for good in ["a", "web-1", "db-3.dc1.example.internal", "10-0-0-7", &"a".repeat(63)] {
            assert!(HostName::new(good).is_ok(), "{good} should be accepted");
        }
        let long = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62));
        assert_eq!(long.len(), 254);
        assert_eq!(HostName::new(&long), Err(HostNameError::TooLong(254)));
        assert_eq!(HostName::new(&"a".repeat(60_000)), Err(HostNameError::TooLong(60_000)));
        assert_eq!(HostName::new(""), Err(HostNameError::Empty));
        assert_eq!(HostName::new(&"a".repeat(64)), Err(HostNameError::BadLabel));
        assert_eq!(HostName::new("a..b"), Err(HostNameError::BadLabel));
        assert_eq!(HostName::new("trailing."), Err(HostNameError::BadLabel));
        for bad in ["-a", "a-", "a b", "a\nb", "a\u{1b}[31mb", "h\u{e9}te", "a_b", "a/b"] {
            assert_eq!(HostName::new(bad), Err(HostNameError::BadCharacter), "{bad:?}");
        }
        // The refusal never carries the name itself.
        assert!(!HostNameError::TooLong(60_000).to_string().contains("aaaa"));
    }
}
