//! Where the fleet store is and how to reach it: the `postgres://` URL every `--db` may take,
//! and the agent's `[fleet]` section of cordon.toml.
//!
//! Owns parsing and validating both; it must not connect or read the password file (that is
//! [`super::client`]'s business, so that a config check never touches the network).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The fleet store's address: `postgres://USER@HOST[:PORT]/DB`, optionally with
/// `?password_file=PATH&ca=PATH` on the command line. A password in the URL itself is refused:
/// it would end up in shell history, logs and `/status`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// A file holding the password (first line), read at connect time.
    pub password_file: Option<PathBuf>,
    /// A CA bundle (PEM): connect with TLS and verify the server against it and its host name.
    pub ca: Option<PathBuf>,
}

impl fmt::Display for StoreUrl {
    /// The URL without its query: safe for logs, `/status` and command output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "postgres://{}@{host}:{}/{}", self.user, self.port, self.dbname)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl StoreUrl {
    /// Whether `s` is meant as a store URL rather than a ledger path.
    pub fn is_url(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    /// Parses a URL; every problem is named. Relative paths in the query are taken as given
    /// (relative to the working directory).
    pub fn parse(s: &str) -> Result<StoreUrl, String> {
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or_else(|| "a store URL starts with postgres://".to_owned())?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, dbname) = rest.split_once('/').ok_or("no database: postgres://USER@HOST:PORT/DB")?;
        let (user, hostport) = authority.rsplit_once('@').ok_or("no user: postgres://USER@HOST:PORT/DB")?;
        if user.contains(':') {
            return Err("a password in the URL is refused (it would show in logs and process lists): \
                 put it in a file and give password_file"
                .to_owned());
        }
        if user.is_empty() {
            return Err("no user: postgres://USER@HOST:PORT/DB".to_owned());
        }
        let (host, port) = split_host_port(hostport)?;
        if dbname.is_empty() || dbname.contains('/') {
            return Err(format!("bad database name {dbname:?}"));
        }
        let mut url = StoreUrl {
            user: user.to_owned(),
            host,
            port,
            dbname: dbname.to_owned(),
            password_file: None,
            ca: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("password_file", v)) if !v.is_empty() => url.password_file = Some(v.into()),
                Some(("ca", v)) if !v.is_empty() => url.ca = Some(v.into()),
                _ => {
                    return Err(format!(
                        "unknown URL parameter {pair:?} (known: password_file=PATH, ca=PATH)"
                    ));
                }
            }
        }
        Ok(url)
    }
}

fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("bad host {s:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host: postgres://USER@HOST:PORT/DB".to_owned());
    }
    let port = match port {
        None => 5432,
        Some(p) => p.parse().ok().filter(|p| *p > 0).ok_or_else(|| format!("bad port {p:?}"))?,
    };
    Ok((host.to_owned(), port))
}

/// The `[fleet]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    store: String,
    password_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    ship_interval_ms: Option<u64>,
    batch_rows: Option<usize>,
}

/// Where a shipper sends its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipTo {
    /// The ingest service at `HOST:PORT` (`https://HOST:PORT` in cordon.toml), over mTLS with the
    /// agent's own leaves: the only target an agent's `[fleet]` may name.
    Ingest(String),
    /// The store itself, with its credentials. Refused in an agent's cordon.toml (a host would
    /// hold credentials that write every host's evidence); kept for the library's callers that
    /// run as the operator.
    Store(StoreUrl),
}

impl fmt::Display for ShipTo {
    /// The target without secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShipTo::Ingest(addr) => write!(f, "https://{addr}"),
            ShipTo::Store(url) => write!(f, "{url}"),
        }
    }
}

impl ShipTo {
    /// Parses `https://HOST:PORT` (the ingest service): a port is required, nothing after it.
    pub fn parse_ingest(s: &str) -> Result<ShipTo, String> {
        let rest = s.strip_prefix("https://").ok_or("the ingest service's address starts with https://")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '@', '#']) || rest.chars().any(|c| c.is_control() || c == ' ') {
            return Err("give the ingest service as https://HOST:PORT, nothing more".into());
        }
        let (host, port) = rest.rsplit_once(':').ok_or("the ingest service's address needs a port")?;
        if host.is_empty() || host.len() > 253 {
            return Err("the ingest service's address needs a host".into());
        }
        port.parse::<u16>().ok().filter(|p| *p > 0).ok_or("bad port in the ingest service's address")?;
        Ok(ShipTo::Ingest(rest.to_owned()))
    }
}

/// The validated `[fleet]` section: this agent ships its ledger to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// The ingest service (or, for the library's operator callers, the store itself).
    pub to: ShipTo,
    /// How often the shipper looks for unshipped rows.
    pub ship_interval: Duration,
    /// Rows per batch (one transaction on the server).
    pub batch_rows: usize,
}

/// Default `ship_interval_ms`.
pub const DEFAULT_SHIP_INTERVAL: Duration = Duration::from_millis(5000);
/// Default rows per batch.
pub const DEFAULT_BATCH_ROWS: usize = 5000;

impl FleetSettings {
    /// Validates `raw`; paths are resolved against `base` (the config file's directory). Every
    /// problem is pushed onto `problems`, naming its field.
    pub fn validate(raw: RawFleet, _base: &Path, problems: &mut Vec<String>) -> Option<FleetSettings> {
        let to = if StoreUrl::is_url(&raw.store) {
            problems.push(
                "fleet.store: an agent ships through the ingest service (store = \"https://HOST:PORT\", \
                 `cordon store serve`), not straight to PostgreSQL: a host holding the store's password \
                 could rewrite or delete every host's evidence"
                    .into(),
            );
            None
        } else {
            match ShipTo::parse_ingest(&raw.store) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(format!("fleet.store: {e}"));
                    None
                }
            }
        };
        for (field, given) in [("password_file", raw.password_file.is_some()), ("ca", raw.ca.is_some())] {
            if given {
                problems.push(format!(
                    "fleet.{field}: the ingest service is reached with the agent's own leaves and trust bundle; \
                     remove {field}"
                ));
            }
        }
        let ship_interval = match raw.ship_interval_ms {
            Some(0) => {
                problems.push("fleet.ship_interval_ms: must be greater than 0".into());
                DEFAULT_SHIP_INTERVAL
            }
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_SHIP_INTERVAL,
        };
        let batch_rows = match raw.batch_rows {
            Some(0) => {
                problems.push("fleet.batch_rows: must be greater than 0".into());
                DEFAULT_BATCH_ROWS
            }
            Some(n) => n,
            None => DEFAULT_BATCH_ROWS,
        };
        Some(FleetSettings { to: to?, ship_interval, batch_rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_url_and_prints_it_without_secrets() {
        let u = StoreUrl::parse("postgres://cordon@127.0.0.1:5433/fleet?password_file=/run/pw&ca=ca.pem")
            .unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port, u.dbname.as_str()),
            ("cordon", "127.0.0.1", 5433, "fleet")
        );
        assert_eq!(u.password_file.as_deref(), Some(Path::new("/run/pw")));
        assert_eq!(u.to_string(), "postgres://cordon@127.0.0.1:5433/fleet");
        assert_eq!(
            StoreUrl::parse("postgresql://u@[::1]/d").unwrap().to_string(),
            "postgres://u@[::1]:5432/d"
        );
    }

    #[test]
    fn refuses_bad_urls_naming_the_problem() {
        for (url, says) in [
            ("postgres://u:secret@h/d", "password in the URL"),
            ("postgres://h/d", "no user"),
            ("postgres://u@h:0/d", "bad port"),
            ("postgres://u@h:x/d", "bad port"),
            ("postgres://u@h", "no database"),
            ("postgres://u@h/d?sslmode=off", "unknown URL parameter"),
            ("mysql://u@h/d", "starts with postgres://"),
        ] {
            let e = StoreUrl::parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn an_agent_may_not_hold_the_stores_credentials() {
        let raw: RawFleet =
            toml::from_str("store = \"postgres://u@h/d\"\npassword_file = \"pw\"\nca = \"ca.pem\"\n")
                .unwrap();
        let mut problems = Vec::new();
        assert!(FleetSettings::validate(raw, Path::new("/etc/cordon"), &mut problems).is_none());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("through the ingest service"), "{problems:?}");
        for bad in ["https://h", "https://h:0", "https://u@h:1", "https://h:1/x", "http://h:1"] {
            assert!(ShipTo::parse_ingest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fleet_section_reports_every_bad_field() {
        let raw: RawFleet =
            toml::from_str("store = \"postgres://u:pw@h/d\"\nship_interval_ms = 0\nbatch_rows = 0\n")
                .unwrap();
        let mut problems = Vec::new();
        assert!(FleetSettings::validate(raw, Path::new("/etc/cordon"), &mut problems).is_none());
        assert_eq!(problems.len(), 3, "{problems:?}");
        let raw: RawFleet = toml::from_str("store = \"https://ingest.internal:7443\"\n").unwrap();
        let ok = FleetSettings::validate(raw, Path::new("/etc/cordon"), &mut problems).unwrap();
        assert_eq!(ok.to, ShipTo::Ingest("ingest.internal:7443".into()));
        assert_eq!(ok.ship_interval, DEFAULT_SHIP_INTERVAL);
    }
}
