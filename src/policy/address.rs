//! Plaintext sources a deny intention may name: one address (`ip:10.0.0.7`) or a range in CIDR
//! notation (`ip:10.1.0.0/16`). Owns their syntax and the match; nothing here allocates, so the
//! data plane can ask.

use std::net::IpAddr;

use crate::base::Source;

/// An address or a CIDR range, as a deny intention's `source` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    base: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Reads `ip:A.B.C.D`, `ip:A.B.C.D/N` or `A.B.C.D/N` (IPv6 alike). `None` when `text` does
    /// not try to name an address at all (a service name); `Some(Err)` when it tries and fails.
    pub fn parse(text: &str) -> Option<Result<AddressRange, String>> {
        let body = match text.strip_prefix(Source::ADDRESS_PREFIX) {
            Some(body) => body,
            None if text.contains('/') => text,
            None => return None,
        };
        let (ip, prefix) = match body.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (body, None),
        };
        let Ok(base) = ip.parse::<IpAddr>() else {
            return Some(Err(format!(
                "{text:?}: not an address or CIDR range (ip:10.0.0.7, ip:10.1.0.0/16)"
            )));
        };
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.map(str::parse::<u8>) {
            None => max,
            Some(Ok(p)) if p <= max => p,
            Some(_) => return Some(Err(format!("{text:?}: the prefix length must be 0 to {max}"))),
        };
        let range = AddressRange { base, prefix };
        if range.masked(base) != base {
            return Some(Err(format!(
                "{text:?}: host bits are set after /{prefix} (write the network address)"
            )));
        }
        Some(Ok(range))
    }

    /// How many leading bits must match: the more, the more specific.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => self.masked(ip) == self.base,
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().is_some_and(|v4| self.contains(v4.into())),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

/// The address a recorded or live source names (`ip:A.B.C.D`), if it names one.
pub fn address_of(source: &str) -> Option<IpAddr> {
    source.strip_prefix(Source::ADDRESS_PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let one = AddressRange::parse("ip:10.0.0.7").unwrap().unwrap();
        assert!(one.contains(ip("10.0.0.7")) && !one.contains(ip("10.0.0.8")));
        let net = AddressRange::parse("ip:10.1.0.0/16").unwrap().unwrap();
        assert!(net.contains(ip("10.1.200.3")) && !net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let bare = AddressRange::parse("192.168.0.0/24").unwrap().unwrap();
        assert_eq!(bare.prefix(), 24);
        let all = AddressRange::parse("ip:0.0.0.0/0").unwrap().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6 = AddressRange::parse("ip:fd00::/8").unwrap().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("10.0.0.1")));
        assert!(AddressRange::parse("web").is_none());
        for bad in ["ip:10.0.0", "ip:10.0.0.0/33", "ip:10.0.0.1/8", "ip:x/8", "10.0.0.0/x"] {
            assert!(matches!(AddressRange::parse(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn a_policy_may_deny_an_address_but_never_allow_one() {
        let path = std::path::Path::new("policy.toml");
        let text = "[[intention]]\nsource = \"ip:10.0.0.7\"\ndestination = \"db\"\naction = \"deny\"\n\n\
                    [[intention]]\nsource = \"ip:10.1.0.0/16\"\ndestination = \"*\"\naction = \"deny\"\n";
        let p = crate::policy::Policy::parse(text, path).expect("address denies parse");
        let rule = |src: &str, dst: &str| p.address_deny(src, dst).map(|m| m.rule.to_string());
        assert_eq!(rule("ip:10.0.0.7", "db").as_deref(), Some("ip:10.0.0.7 -> db deny (policy.toml:1)"));
        assert_eq!(rule("ip:10.1.2.3", "db").as_deref(), Some("ip:10.1.0.0/16 -> * deny (policy.toml:6)"));
        assert_eq!(rule("ip:10.0.0.8", "db"), None);
        assert_eq!(rule("web", "db"), None);
        let allow = "[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n\n\
                     [[intention]]\nsource = \"ip:10.0.0.7\"\ndestination = \"db\"\naction = \"allow\"\n\n\
                     [[intention]]\nsource = \"ip:10.0.0.300\"\ndestination = \"db\"\naction = \"deny\"\n";
        let e =
            crate::policy::Policy::parse(allow, path).expect_err("an address allow is refused").to_string();
        assert!(
            e.contains("policy.toml")
                && e.contains("line 6: source ip:10.0.0.7: an address may only be denied"),
            "{e}"
        );
        assert!(e.contains("line 12: source: \"ip:10.0.0.300\""), "{e}");
    }
}
