//! `cordon import haproxy-cfg`: listeners from `haproxy.cfg` into `[[upstream]]` TOML and, with
//! `--db`, into the ledger as the identity's declared upstreams.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use cordon_haproxy::{ConfigParse, parse_config};

use crate::cli::Outcome;
use crate::ledger::{Declaration, DeclarationOrigin};
use crate::pki::ServiceName;

#[derive(Debug, clap::Args)]
pub struct CfgArgs {
    /// The haproxy.cfg Synapse generated on this host.
    pub file: PathBuf,
    /// The identity this host's apps call with (its own service name), e.g. `web`.
    #[arg(long)]
    pub identity: String,
    /// Also record the frontends as the upstreams `--identity` declares, into this ledger
    /// (created if missing); `propose` and the preflight weigh them against the traffic.
    #[arg(long, value_name = "LEDGER")]
    pub db: Option<PathBuf>,
    /// The host name the declaration carries [default: this machine's host name].
    #[arg(long)]
    pub host: Option<String>,
}

pub fn run(args: CfgArgs) -> anyhow::Result<Outcome> {
    let identity = ServiceName::new(&args.identity).map_err(|e| anyhow::anyhow!("--identity: {e}"))?;
    let path = args.file.display().to_string();
    let text = read_bounded(&args.file).with_context(|| format!("reading {path}"))?;
    let parse = parse_config(&text).map_err(|errors| {
        let lines: Vec<String> = errors.0.iter().map(|e| format!("{path}: {e}")).collect();
        anyhow::anyhow!("{} is not a valid haproxy.cfg:\n  {}", path, lines.join("\n  "))
    })?;
    let name = args.file.file_name().map_or(path.clone(), |n| n.to_string_lossy().into_owned());
    let toml = render(&parse, &identity, &path, &name);
    if let Some(db) = &args.db {
        let decl = Declaration {
            host: args.host.clone().unwrap_or_else(crate::agent::config::local_hostname),
            identity: identity.to_string(),
            origin: DeclarationOrigin::HaproxyCfg,
            declared_at: std::time::SystemTime::now(),
            services: declared(&parse),
        };
        crate::ledger::record_declaration(db, &decl)
            .with_context(|| format!("recording the upstreams {identity} declares"))?;
        let text = format!(
            "recorded {identity} on {} as declaring {} upstream(s) ({}) into {}",
            decl.host,
            decl.services.len(),
            decl.services.join(", "),
            db.display()
        );
        writeln!(std::io::stderr().lock(), "{}", crate::logging::command_line("INFO", &text))?;
    }
    std::io::stdout().lock().write_all(toml.as_bytes())?;
    Ok(Outcome::Success)
}

/// The services a host's apps dial through this config: every mapped frontend with a cordon
/// service name, sorted, once each.
fn declared(parse: &ConfigParse) -> Vec<String> {
    let mut services: Vec<String> = parse
        .services
        .iter()
        .filter(|l| ServiceName::new(&l.service).is_ok())
        .map(|l| l.service.clone())
        .collect();
    services.sort();
    services.dedup();
    services
}

/// Larger than any haproxy.cfg Synapse writes: reading stops there rather than filling memory.
const MAX_CFG_BYTES: u64 = 16 * 1024 * 1024;

fn read_bounded(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_CFG_BYTES + 1).read_to_string(&mut text)?;
    anyhow::ensure!(text.len() as u64 <= MAX_CFG_BYTES, "larger than {MAX_CFG_BYTES} bytes");
    Ok(text)
}

/// The TOML text: one `[[upstream]]` per listener, a comment per skipped section or address.
/// `path` names the file in the header, `name` (its file name) in the per-entry comments.
pub(super) fn render(parse: &ConfigParse, identity: &ServiceName, path: &str, name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# [[upstream]] entries for cordon.toml, from {path} (cordon import haproxy-cfg).");
    let _ =
        writeln!(out, "# Each takes over a local port HAProxy listened on: stop HAProxy (or drop that bind)");
    let _ = writeln!(out, "# before the cordon agent starts, as only one of them can hold the port.");
    // What each local address was claimed by, so two binds that collapse to one address after
    // mapping wildcards (`*:3219` and `[::]:3219`) give one upstream, not a config error.
    let mut claimed: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let mut skipped: Vec<String> = parse
        .skipped
        .iter()
        .map(|s| format!("# skipped {name}:{} {}: {}", s.line, s.section, s.reason))
        .collect();
    for l in &parse.services {
        let at = format!("{name}:{} {}", l.line, l.section);
        let service = match ServiceName::new(&l.service) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(format!("# skipped {at}: not a cordon service name: {e}"));
                continue;
            }
        };
        let (listen, wildcard) = if l.bind.ip().is_unspecified() {
            (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), l.bind.port()), true)
        } else {
            (l.bind, false)
        };
        if let Some(first) = claimed.get(&listen) {
            skipped.push(format!("# skipped {at}: {listen} is already the upstream from {name}:{first}"));
            continue;
        }
        claimed.insert(listen, l.line);
        let _ = writeln!(out, "\n# {at}");
        if wildcard {
            let _ = writeln!(
                out,
                "# HAProxy bound {} (every address); cordon listens on {listen}, where apps on this\n\
                 # host dial it. Callers on other hosts that used this port need their own upstream.",
                l.bind
            );
        }
        let _ = writeln!(out, "[[upstream]]");
        let _ = writeln!(out, "service  = \"{service}\"");
        let _ = writeln!(out, "listen   = \"{listen}\"");
        let _ = writeln!(out, "identity = \"{identity}\"");
    }
    if !skipped.is_empty() {
        let _ = writeln!(out, "\n# Not mapped (cordon needs one local TCP port per service):");
        for s in skipped {
            let _ = writeln!(out, "{s}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::agent::config::Config;

    const HEADER: &str = "trust_domain = \"example.internal\"\ndiscovery_dir = \"/d\"\npolicy = \"/p\"\n\
                          state_dir = \"/s\"\n[tls]\nca = \"/ca.pem\"\ndir = \"/tls\"\n";

    fn render_text(cfg: &str) -> String {
        let parse = parse_config(cfg).unwrap();
        render(&parse, &ServiceName::new("web").unwrap(), "/etc/haproxy/haproxy.cfg", "haproxy.cfg")
    }

    fn upstreams(toml: &str) -> Vec<(String, String, String)> {
        let config = Config::parse(&format!("{HEADER}{toml}"), Path::new("/etc/cordon/cordon.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        config
            .upstreams
            .iter()
            .map(|u| (u.service.to_string(), u.listen.to_string(), u.identity.to_string()))
            .collect()
    }

    #[test]
    fn output_is_cordon_toml_with_wildcards_on_loopback() {
        let toml =
            render_text("frontend db\n bind *:3219\n default_backend db\nbackend db\nlisten c 127.0.0.2:9\n");
        assert_eq!(
            upstreams(&toml),
            [
                ("db".into(), "127.0.0.1:3219".into(), "web".into()),
                ("c".into(), "127.0.0.2:9".into(), "web".into())
            ]
        );
        assert!(toml.contains("# haproxy.cfg:2 frontend db\n# HAProxy bound 0.0.0.0:3219"), "{toml}");
    }

    #[test]
    fn addresses_that_collapse_and_bad_names_become_comments() {
        let toml = render_text(
            "frontend db\n bind :3219\n bind :::3219\n default_backend db\nbackend db\nlisten a:b\n bind :1\n",
        );
        assert_eq!(upstreams(&toml), [("db".into(), "127.0.0.1:3219".into(), "web".into())]);
        assert!(toml.contains("# skipped haproxy.cfg:3 frontend db: 127.0.0.1:3219 is already the upstream from haproxy.cfg:2"), "{toml}");
        assert!(toml.contains("# skipped haproxy.cfg:7 listen a:b: not a cordon service name"), "{toml}");
    }
}
