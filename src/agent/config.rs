//! `cordon.toml`, the agent's configuration: parsed into a raw serde struct, then validated into
//! [`Config`] with every bad value reported at once, each naming its field.
//!
//! The sections a module owns are parsed and validated by that module (`[tls]` by
//! [`crate::pki::TlsSettings`], `[proxy]` by [`crate::proxy::ProxySettings`], `[fleet]` by
//! [`crate::store::FleetSettings`]); this file composes them with the host's own fields, its
//! listeners, and the checks that span sections (two listeners on one address).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::config_path;
use crate::lockdown::Guarded;
pub use crate::pki::TlsSource;
use crate::pki::issuer::IssuerSettings;
use crate::pki::{RawTls, ServiceName, TlsSettings, TrustDomain};
pub use crate::proxy::ProxySettings;
use crate::proxy::RawProxy;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML, or has unknown or mistyped fields.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// The file parsed, but values are wrong; one line per bad field.
    #[error("{path}: invalid configuration:\n  {}", .problems.join("\n  "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    discovery_dir: PathBuf,
    policy: PathBuf,
    state_dir: PathBuf,
    decision_log: Option<String>,
    decision_log_format: Option<String>,
    admin: Option<String>,
    #[serde(default)]
    admin_allow_remote: bool,
    host: Option<String>,
    #[serde(default)]
    lockdown: bool,
    tls: RawTls,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<RawUpstream>,
    fleet: Option<crate::store::RawFleet>,
    /// Read by the commands that change things (`--config`); checked here.
    audit_log: Option<PathBuf>,
    audit_format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    listen: String,
    app: String,
    lockdown: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    service: String,
    listen: String,
    identity: String,
    #[serde(default)]
    allow_remote: bool,
}

/// A service served on this host: inbound mTLS in front of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: ServiceName,
    pub listen: SocketAddr,
    pub app: SocketAddr,
    pub lockdown: bool,
}

impl ServiceConfig {
    /// What lockdown guards for this service; `None` unless it sets `lockdown`.
    pub fn guarded(&self) -> Option<Guarded> {
        self.lockdown.then(|| Guarded { service: self.name.clone(), listen: self.listen, app: self.app })
    }
}

/// A service dialled from this host through a local port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub service: ServiceName,
    pub listen: SocketAddr,
    pub identity: ServiceName,
}

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub discovery_dir: PathBuf,
    pub policy: PathBuf,
    pub state_dir: PathBuf,
    /// `decision_log` and `decision_log_format`.
    pub decision_log: Option<crate::policy::DecisionLogSettings>,
    pub admin: Option<SocketAddr>,
    /// The name this host's ledger rows carry.
    pub host: String,
    pub tls: TlsSource,
    /// The signing service that issues and renews `tls.dir` (with `TlsSource::Files`).
    pub issuer: Option<IssuerSettings>,
    pub proxy: ProxySettings,
    pub services: Vec<ServiceConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// `[fleet]`: ship the ledger to the fleet store.
    pub fleet: Option<crate::store::FleetSettings>,
}

impl Config {
    /// Reads and validates a config file. Relative paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        validate(raw, base).map_err(|problems| ConfigError::Invalid { path: path.to_owned(), problems })
    }

    /// Every identity this host needs a certificate for: its services and its upstreams' callers.
    pub fn identities(&self) -> Vec<ServiceName> {
        let mut ids: Vec<ServiceName> = self
            .services
            .iter()
            .map(|s| s.name.clone())
            .chain(self.upstreams.iter().map(|u| u.identity.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Where the ledger lives.
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.db")
    }
}

fn validate(raw: RawConfig, base: &Path) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();
    let path = |field: &str, p: PathBuf, problems: &mut Vec<String>| config_path(field, p, base, problems);

    let trust_domain =
        TrustDomain::new(&raw.trust_domain).map_err(|e| problems.push(format!("trust_domain: {e}"))).ok();
    let discovery_dir = path("discovery_dir", raw.discovery_dir, &mut problems);
    let policy = path("policy", raw.policy, &mut problems);
    let state_dir = path("state_dir", raw.state_dir, &mut problems);
    let decision_log = crate::policy::DecisionLogSettings::validate(
        raw.decision_log,
        raw.decision_log_format,
        base,
        &mut problems,
    );

    // Listener addresses, by who claims them, to refuse two listeners on one address.
    let mut listeners: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut claim = |field: String, addr: SocketAddr, problems: &mut Vec<String>| {
        // Port 0 asks the kernel for a free port: never a clash.
        if addr.port() == 0 {
            return;
        }
        if let Some(other) = listeners.get(&addr) {
            problems.push(format!("{field}: {addr} is already the listen address of {other}"));
        } else {
            listeners.insert(addr, field);
        }
    };
    let parse_addr = |field: &str, value: &str, problems: &mut Vec<String>| -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!("{field}: {value:?} is not an IP:port address"));
                None
            }
        }
    };

    let admin = raw.admin.as_deref().and_then(|a| parse_addr("admin", a, &mut problems));
    if let Some(a) = admin {
        claim("admin".into(), a, &mut problems);
        if !raw.admin_allow_remote && !is_loopback(a) {
            problems.push(format!(
                "admin: {a} is not a loopback address, so /status and /metrics would be open to the \
                 network; listen on 127.0.0.1 or [::1], or set admin_allow_remote = true"
            ));
        }
    }

    let host = match raw.host {
        Some(h) if h.trim().is_empty() => {
            problems.push("host: must not be empty".into());
            String::new()
        }
        Some(h) if !crate::ledger::valid_host(&h) => {
            problems.push(format!(
                "host: \"{}\" is not a host name (at most 253 bytes of A-Z a-z 0-9 . - _): it names every ledger row",
                crate::base::escape::text(&h.chars().take(64).collect::<String>())
            ));
            String::new()
        }
        Some(h) => h,
        None => local_hostname(),
    };

    let tls = TlsSettings::validate(raw.tls, base, &mut problems);
    let proxy = ProxySettings::validate(raw.proxy, &mut problems);
    crate::audit::RawAudit { audit_log: raw.audit_log, audit_format: raw.audit_format }
        .validate(base, &mut problems);
    let fleet = raw.fleet.and_then(|f| crate::store::FleetSettings::validate(f, base, &mut problems));

    let mut services = Vec::new();
    let mut served_names = BTreeMap::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        let field = |f: &str| format!("service[{i}].{f}");
        let name =
            ServiceName::new(&s.name).map_err(|e| problems.push(format!("{}: {e}", field("name")))).ok();
        if let Some(n) = &name
            && let Some(prev) = served_names.insert(n.clone(), i)
        {
            problems.push(format!("{}: service '{n}' is already served by service[{prev}]", field("name")));
        }
        let listen = parse_addr(&field("listen"), &s.listen, &mut problems);
        let app = parse_addr(&field("app"), &s.app, &mut problems);
        if let Some(l) = listen {
            claim(field("listen"), l, &mut problems);
        }
        if let (Some(l), Some(a)) = (listen, app)
            && l == a
        {
            problems.push(format!("{}: the app cannot be cordon's own listener {l}", field("app")));
        }
        if let (Some(name), Some(listen), Some(app)) = (name, listen, app) {
            services.push(ServiceConfig { name, listen, app, lockdown: s.lockdown.unwrap_or(raw.lockdown) });
        }
    }

    let mut upstreams = Vec::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let field = |f: &str| format!("upstream[{i}].{f}");
        let service = ServiceName::new(&u.service)
            .map_err(|e| problems.push(format!("{}: {e}", field("service"))))
            .ok();
        let identity = ServiceName::new(&u.identity)
            .map_err(|e| problems.push(format!("{}: {e}", field("identity"))))
            .ok();
        let listen = parse_addr(&field("listen"), &u.listen, &mut problems);
        if let Some(l) = listen {
            claim(field("listen"), l, &mut problems);
            // Whoever reaches an upstream's port calls the service with this host's identity.
            if !u.allow_remote && !is_loopback(l) {
                problems.push(format!(
                    "{}: {l} is not a loopback address, so any host that reaches it would call {} as \
                     {}; listen on 127.0.0.1 or [::1], or set allow_remote = true on this upstream",
                    field("listen"),
                    u.service,
                    u.identity,
                ));
            }
        }
        if let (Some(service), Some(listen), Some(identity)) = (service, listen, identity) {
            upstreams.push(UpstreamConfig { service, listen, identity });
        }
    }

    if services.is_empty() && upstreams.is_empty() && problems.is_empty() {
        problems.push("no [[service]] and no [[upstream]]: the agent would have nothing to do".into());
    }

    match (problems.is_empty(), trust_domain, tls) {
        (true, Some(trust_domain), Some(TlsSettings { source: tls, issuer })) => Ok(Config {
            trust_domain,
            discovery_dir,
            policy,
            state_dir,
            decision_log,
            admin,
            host,
            tls,
            issuer,
            proxy,
            services,
            upstreams,
            fleet,
        }),
        _ => Err(problems),
    }
}

/// Whether only this host can reach `addr` (127.0.0.0/8, ::1, or ::ffff:127.x.y.z).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// This machine's host name, for ledger rows; `localhost` when it cannot be read.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && crate::ledger::valid_host(s))
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
trust_domain  = "example.internal"
discovery_dir = "/var/run/synapse/services"
policy        = "policy.toml"
state_dir     = "/var/lib/cordon"
decision_log  = "/var/log/cordon/decisions.jsonl"
admin         = "127.0.0.1:9901"
host          = "db-1"

[tls]
ca  = "/etc/cordon/tls/ca.pem"
dir = "/etc/cordon/tls"

[[service]]
name     = "db"
listen   = "0.0.0.0:14000"
app      = "127.0.0.1:5432"
lockdown = true

[[upstream]]
service  = "db"
listen   = "127.0.0.1:3219"
identity = "web"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/cordon/cordon.toml"))
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn audit_keys_are_accepted_and_a_bad_format_named() {
        assert!(parse(&format!("audit_log = \"audit.jsonl\"\naudit_format = \"ocsf\"\n{GOOD}")).is_ok());
        let bad = problems(&format!("audit_format = \"xml\"\n{GOOD}"));
        assert!(bad.iter().any(|p| p.starts_with("audit_format:")), "{bad:?}");
    }

    #[test]
    fn parses_the_design_example() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.internal");
        assert_eq!(c.policy, PathBuf::from("/etc/cordon/policy.toml"), "relative to the config file");
        assert_eq!(c.services[0].listen, "0.0.0.0:14000".parse().unwrap());
        assert!(c.services[0].lockdown);
        assert_eq!(c.upstreams[0].identity.as_str(), "web");
        assert_eq!(c.identities().len(), 2);
        assert_eq!(c.ledger_path(), PathBuf::from("/var/lib/cordon/ledger.db"));
        assert_eq!(c.proxy, ProxySettings::default());
        assert_eq!(c.host, "db-1");
    }

    /// The revocation poll keeps its 30 s bound (a revoked leaf refused fleet-wide within 60 s):
    /// shorter is accepted, longer is refused naming the field.
    #[test]
    fn the_revocation_poll_is_at_most_30_seconds() {
        let issuer = GOOD
            .replace("dir = \"/etc/cordon/tls\"", "dir = \"/etc/cordon/tls\"\nissuer = \"https://ca:8443\"");
        let c = parse(&issuer).unwrap();
        let poll = |c: &Config| c.issuer.as_ref().map(|i| i.revocation_poll);
        assert_eq!(poll(&c), Some(std::time::Duration::from_secs(30)));
        let fast = issuer.replace("issuer =", "revocation_poll_ms = 500\nissuer =");
        assert_eq!(poll(&parse(&fast).unwrap()), Some(std::time::Duration::from_millis(500)));
        for bad in ["30001", "60000", "0"] {
            let slow = issuer.replace("issuer =", &format!("revocation_poll_ms = {bad}\nissuer ="));
            let p = problems(&slow);
            assert!(p.iter().any(|p| p.starts_with("tls.revocation_poll_ms: must be 100 to 30000")), "{p:?}");
        }
        let without =
            GOOD.replace("dir = \"/etc/cordon/tls\"", "dir = \"/etc/cordon/tls\"\nrevocation_poll_ms = 500");
        assert!(problems(&without).iter().any(|p| p.contains("only used with tls.issuer")));
    }

    #[test]
    fn the_data_plane_is_single_threaded_unless_told() {
        assert_eq!(parse(GOOD).unwrap().proxy.threads, 1);
        let text = GOOD.replace("[tls]", "[proxy]\nthreads = 4\n[tls]");
        assert_eq!(parse(&text).unwrap().proxy.threads, 4);
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = GOOD.replace("lockdown = true", "lockdwn = true");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("/etc/cordon/cordon.toml"), "{err}");
        assert!(err.contains("lockdwn"), "{err}");
        assert!(err.contains("line 18"), "{err}");
    }

    #[test]
    fn each_bad_field_is_named_and_all_are_reported_at_once() {
        let cases: &[(&str, &str, &str)] = &[
            ("trust_domain  = \"example.internal\"", "trust_domain = \"Bad Domain\"", "trust_domain:"),
            ("admin         = \"127.0.0.1:9901\"", "admin = \"localhost\"", "admin:"),
            ("listen   = \"0.0.0.0:14000\"", "listen = \"0.0.0.0:99999\"", "service[0].listen:"),
            ("app      = \"127.0.0.1:5432\"", "app = \"db:5432\"", "service[0].app:"),
            ("name     = \"db\"", "name = \"d b\"", "service[0].name:"),
            ("identity = \"web\"", "identity = \"*\"", "upstream[0].identity:"),
            ("listen   = \"127.0.0.1:3219\"", "listen = \"0.0.0.0:14000\"", "upstream[0].listen:"),
            ("dir = \"/etc/cordon/tls\"", "ca_dir = \"/etc/cordon/ca\"", "tls:"),
            ("host          = \"db-1\"", "host = \" \"", "host:"),
            ("[tls]", "[proxy]\nmax_connections = 0\n[tls]", "proxy.max_connections:"),
            ("[tls]", "[proxy]\nthreads = 0\n[tls]", "proxy.threads:"),
        ];
        for (from, to, field) in cases {
            assert!(GOOD.contains(from), "fixture lost {from}");
            let found = problems(&GOOD.replace(from, to));
            assert!(found.iter().any(|p| p.starts_with(field)), "{field} not named in {found:?}");
        }
        let mut all = GOOD.to_string();
        for (from, to, _) in &cases[..4] {
            all = all.replace(from, to);
        }
        assert_eq!(problems(&all).len(), 4, "every problem reported in one go");
    }

    #[test]
    fn duplicate_listeners_and_services_are_refused() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"db\"\nlisten = \"127.0.0.1:3219\"\napp = \"127.0.0.1:1\"\n"
        );
        let found = problems(&text);
        assert!(found.iter().any(|p| p.contains("already served by service[0]")), "{found:?}");
        assert!(
            found.iter().any(|p| p.starts_with(
                "upstream[0].listen: 127.0.0.1:3219 is already the listen address of service[1]"
            )),
            "{found:?}"
        );
    }

    #[test]
    fn an_upstream_or_admin_open_to_the_network_must_be_allowed_explicitly() {
        let upstream = "listen   = \"127.0.0.1:3219\"";
        let admin = "admin         = \"127.0.0.1:9901\"";
        assert!(GOOD.contains(upstream) && GOOD.contains(admin), "fixture lost its addresses");
        for (addr, named) in [
            ("0.0.0.0:3219", true),
            ("10.1.2.3:3219", true),
            ("[::]:3219", true),
            ("127.0.0.2:3219", false),
            ("[::1]:3219", false),
            ("[::ffff:127.0.0.1]:3219", false),
        ] {
            let text = GOOD.replace(upstream, &format!("listen = \"{addr}\""));
            match parse(&text) {
                Ok(_) => assert!(!named, "{addr} accepted"),
                Err(ConfigError::Invalid { problems, .. }) => {
                    assert!(named, "{addr} refused: {problems:?}");
                    assert!(
                        problems.iter().any(|p| p.starts_with("upstream[0].listen:")
                            && p.contains("as web")
                            && p.contains("allow_remote")),
                        "{problems:?}"
                    );
                }
                Err(e) => panic!("{e}"),
            }
            let allowed = GOOD.replace(upstream, &format!("listen = \"{addr}\"\nallow_remote = true"));
            assert!(parse(&allowed).is_ok(), "{addr} with allow_remote");
        }

        let open_admin = GOOD.replace(admin, "admin = \"0.0.0.0:9901\"");
        let found = problems(&open_admin);
        assert!(
            found.iter().any(|p| p.starts_with("admin:") && p.contains("admin_allow_remote")),
            "{found:?}"
        );
        let allowed = open_admin.replace("host ", "admin_allow_remote = true\nhost ");
        assert_eq!(parse(&allowed).unwrap().admin, Some("0.0.0.0:9901".parse().unwrap()));
    }

    #[test]
    fn an_issuer_needs_the_bundle_and_dir_and_an_https_address() {
        let with = |tls: &str| GOOD.replace("dir = \"/etc/cordon/tls\"", tls);
        let c = parse(&with(
            "dir = \"/etc/cordon/tls\"\nissuer = \"https://127.0.0.1:8443\"\njoin_token_file = \"/etc/cordon/join\"",
        ))
        .unwrap();
        let issuer = c.issuer.unwrap();
        assert_eq!(issuer.addr, "127.0.0.1:8443");
        assert_eq!(issuer.join_token_file.as_deref(), Some(Path::new("/etc/cordon/join")));
        assert!(parse(GOOD).unwrap().issuer.is_none());
        let found = problems(&with("dir = \"/etc/cordon/tls\"\nissuer = \"http://127.0.0.1:8443\""));
        assert!(found.iter().any(|p| p.starts_with("tls.issuer: must start with https://")), "{found:?}");
        let found = problems(&with("dir = \"/etc/cordon/tls\"\njoin_token_file = \"/etc/cordon/join\""));
        assert!(found.iter().any(|p| p.starts_with("tls.join_token_file:")), "{found:?}");
    }

    #[test]
    fn a_config_with_nothing_to_do_is_refused() {
        let text = GOOD.split("[[service]]").next().unwrap();
        assert!(problems(text)[0].contains("nothing to do"));
    }
}
