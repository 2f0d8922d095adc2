//! One address of a `bind` line (or of an old-style `listen NAME ADDR` header) into a socket
//! address cordon can listen on, or the reason it cannot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What one bind address turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BindAddr {
    /// A TCP address cordon can listen on; wildcards are `0.0.0.0` or `::`.
    Tcp(SocketAddr),
    /// Valid HAProxy, but nothing cordon can take over (a UNIX socket, a port range, a name).
    Unmappable(String),
    /// Malformed: HAProxy itself would refuse it.
    Bad(String),
}

/// Families HAProxy allows as an `xxx@` prefix that are still plain TCP over IP.
const TCP_PREFIXES: [&str; 5] = ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"];

pub(super) fn parse(addr: &str) -> BindAddr {
    let mut rest = addr;
    for p in TCP_PREFIXES {
        if let Some(r) = rest.strip_prefix(p) {
            rest = r;
            break;
        }
    }
    if rest.starts_with('/') || rest.starts_with("unix@") {
        return BindAddr::Unmappable(format!("{addr} is a UNIX socket"));
    }
    if let Some((family, _)) = rest.split_once('@') {
        return BindAddr::Unmappable(format!("{addr} is a {family}@ socket, not TCP"));
    }
    if rest.contains("${") {
        return BindAddr::Unmappable(format!("{addr} uses an environment variable"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once("]:") {
            Some((h, p)) => (h, p),
            None if v6.contains(']') => return BindAddr::Bad(format!("{addr} has no port")),
            None => return BindAddr::Bad(format!("{addr} has an unclosed [")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some(hp) => hp,
            None => return BindAddr::Bad(format!("{addr} has no port")),
        }
    };
    if port.contains('-') {
        return BindAddr::Unmappable(format!("{addr} is a port range"));
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return BindAddr::Bad(format!("{addr} has port {port:?}, not 1..65535")),
        Ok(p) => p,
    };
    let ip = match host {
        "" | "*" | "0.0.0.0" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => match h.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if h.contains(':') => return BindAddr::Bad(format!("{addr}: {h:?} is not an IP address")),
            Err(_) => {
                return BindAddr::Unmappable(format!("{addr} names a host; cordon needs an IP address"));
            }
        },
    };
    BindAddr::Tcp(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::{BindAddr, parse};

    fn tcp(s: &str) -> BindAddr {
        BindAddr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn the_address_forms_synapse_and_operators_write() {
        assert_eq!(parse("127.0.0.1:3219"), tcp("127.0.0.1:3219"));
        assert_eq!(parse(":3219"), tcp("0.0.0.0:3219"));
        assert_eq!(parse("*:3219"), tcp("0.0.0.0:3219"));
        assert_eq!(parse("localhost:3219"), tcp("127.0.0.1:3219"));
        assert_eq!(parse("[::1]:3219"), tcp("[::1]:3219"));
        assert_eq!(parse(":::3219"), tcp("[::]:3219"));
        assert_eq!(parse("::1:3219"), tcp("[::1]:3219"));
        assert_eq!(parse("ipv4@10.1.2.3:80"), tcp("10.1.2.3:80"));
    }

    #[test]
    fn sockets_cordon_cannot_take_over() {
        for a in [
            "/run/haproxy.sock",
            "unix@/run/h.sock",
            "abns@x",
            "fd@3",
            ":8000-8010",
            "db.internal:80",
            "${IP}:80",
        ] {
            assert!(matches!(parse(a), BindAddr::Unmappable(_)), "{a}");
        }
    }

    #[test]
    fn malformed_addresses() {
        for a in ["127.0.0.1", ":99999", ":0", ":http", "[::1", "[::1]", "1.2.3:80:x:y:80"] {
            assert!(matches!(parse(a), BindAddr::Bad(_)), "{a}");
        }
    }
}
