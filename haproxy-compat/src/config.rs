//! A Synapse-generated `haproxy.cfg` into the local listeners cordon takes over.
//!
//! Synapse writes, per service, a `frontend NAME` bound to the local port apps dial and a backend
//! holding the servers (or one `listen NAME` doing both). The backend is named after the service
//! too, unless the service sets Synapse's `backend_name`: `frontend payments` with
//! `default_backend payments_v2`. So the service is the frontend's name (the `listen` section's),
//! and a frontend is mapped only when it sends everything to one defined backend (through
//! `default_backend`, and `use_backend` when every rule names the same one). Keywords cordon does not need are ignored, never an
//! error; sections cordon cannot map are reported as [`Skipped`] with their line. Only what HAProxy
//! itself would refuse (a bind with a bad port, an open quote, a section without its name) is a
//! [`ConfigError`], and every one is reported at once.
//!
//! This module must not know `cordon.toml`: turning listeners into upstreams is the caller's job.

mod bind;
mod lex;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;

use bind::BindAddr;

/// One local address HAProxy listened on for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The service: the frontend's name (`frontend db`, `listen db`), as Synapse names it.
    pub service: String,
    /// The backend the frontend sends to: the service's name, or Synapse's `backend_name`.
    pub backend: String,
    /// Where HAProxy listened; `0.0.0.0` or `::` for a wildcard bind (`*:3219`, `:3219`).
    pub bind: SocketAddr,
    /// The 1-based line of the `bind` (or `listen NAME ADDR`) line.
    pub line: usize,
    /// The section the bind is in, e.g. `frontend db`.
    pub section: String,
}

/// A section, or one address of a bind line, that cordon cannot map to a local listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The 1-based line of the section header (or of the bind line, for one address).
    pub line: usize,
    /// The section, e.g. `frontend api`.
    pub section: String,
    /// Why, in words an operator can act on.
    pub reason: String,
}

/// What [`parse_config`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigParse {
    /// Every mapped bind address, in file order.
    pub services: Vec<Listener>,
    /// Everything that was not mapped, in file order.
    pub skipped: Vec<Skipped>,
}

/// Something HAProxy itself would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A quote opened and not closed on the line.
    #[error("line {line}: unterminated quote")]
    UnterminatedQuote { line: usize },
    /// A keyword that needs an argument was given none (`frontend` without a name, a bare `bind`).
    #[error("line {line}: {keyword} needs {what}")]
    MissingArgument { line: usize, keyword: String, what: &'static str },
    /// A bind address HAProxy could not listen on (no port, a port outside 1..65535, a broken `[`).
    #[error("line {line}: bad bind address: {reason}")]
    BadBind { line: usize, reason: String },
}

impl ConfigError {
    /// The 1-based line the error is on.
    pub fn line(&self) -> usize {
        match self {
            ConfigError::UnterminatedQuote { line }
            | ConfigError::MissingArgument { line, .. }
            | ConfigError::BadBind { line, .. } => *line,
        }
    }
}

/// Every [`ConfigError`] in a file, in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

/// Keywords that open a section; every other line belongs to the section above it.
const SECTIONS: [&str; 18] = [
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "fcgi-app",
    "log-forward",
    "crt-store",
    "traces",
    "acme",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Frontend,
    Backend,
    Listen,
    Defaults,
    Other,
}

#[derive(Debug)]
struct Section {
    kind: Kind,
    /// `frontend db`, for reports.
    title: String,
    name: String,
    line: usize,
    /// Named defaults section this one inherits from (`from NAME`).
    from: Option<String>,
    /// Every bind address, header address included.
    binds: Vec<Bind>,
    default_backend: Option<String>,
    use_backends: Vec<String>,
    stats: bool,
}

impl Section {
    fn new(kind: Kind, keyword: &str, words: &[String], line: usize) -> Self {
        let name = words.get(1).filter(|w| *w != "from").cloned().unwrap_or_default();
        let from = words.iter().position(|w| w == "from").and_then(|i| words.get(i + 1)).cloned();
        let title = if name.is_empty() { keyword.to_string() } else { format!("{keyword} {name}") };
        Section {
            kind,
            title,
            name,
            line,
            from,
            binds: Vec::new(),
            default_backend: None,
            use_backends: Vec::new(),
            stats: false,
        }
    }
}

/// Parses a `haproxy.cfg` into listeners and skipped sections; see the module doc.
pub fn parse_config(text: &str) -> Result<ConfigParse, ConfigErrors> {
    let mut errors = Vec::new();
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let Ok(words) = lex::words(raw) else {
            errors.push(ConfigError::UnterminatedQuote { line });
            continue;
        };
        let Some(keyword) = words.first().map(String::as_str) else { continue };
        if SECTIONS.contains(&keyword) {
            let kind = match keyword {
                "frontend" => Kind::Frontend,
                "backend" => Kind::Backend,
                "listen" => Kind::Listen,
                "defaults" => Kind::Defaults,
                _ => Kind::Other,
            };
            let section = Section::new(kind, keyword, &words, line);
            let named = matches!(kind, Kind::Frontend | Kind::Backend | Kind::Listen);
            if named && section.name.is_empty() {
                errors.push(missing(line, keyword, "a name"));
            }
            sections.push(section);
            if kind == Kind::Listen {
                push_binds(sections.last_mut(), words.get(2), &[], line);
            }
            continue;
        }
        let Some(section) = sections.last_mut() else { continue };
        if !matches!(section.kind, Kind::Frontend | Kind::Backend | Kind::Listen | Kind::Defaults) {
            continue;
        }
        match keyword {
            "bind" if section.kind != Kind::Defaults => match words.get(1) {
                Some(addrs) => push_binds(Some(section), Some(addrs), &words[2..], line),
                None => errors.push(missing(line, keyword, "an address")),
            },
            "default_backend" => match words.get(1) {
                Some(b) => section.default_backend = Some(b.clone()),
                None => errors.push(missing(line, keyword, "a backend name")),
            },
            "use_backend" => match words.get(1) {
                Some(b) => section.use_backends.push(b.clone()),
                None => errors.push(missing(line, keyword, "a backend name")),
            },
            "stats" => section.stats = true,
            _ => {}
        }
    }
    let parse = map_sections(&sections, &mut errors);
    if errors.is_empty() {
        Ok(parse)
    } else {
        errors.sort_by_key(ConfigError::line);
        Err(ConfigErrors(errors))
    }
}

fn missing(line: usize, keyword: &str, what: &'static str) -> ConfigError {
    ConfigError::MissingArgument { line, keyword: keyword.to_string(), what }
}

/// One address of a bind line.
#[derive(Debug)]
struct Bind {
    line: usize,
    addr: String,
    /// The bind has the `ssl` option: apps speak TLS to HAProxy there.
    ssl: bool,
}

fn push_binds(section: Option<&mut Section>, addrs: Option<&String>, options: &[String], line: usize) {
    let ssl = options.iter().any(|o| o == "ssl");
    if let (Some(section), Some(addrs)) = (section, addrs) {
        let binds = addrs.split(',').filter(|a| !a.is_empty());
        section.binds.extend(binds.map(|a| Bind { line, addr: a.to_string(), ssl }));
    }
}

/// Decides, section by section, which service each bind address belongs to.
fn map_sections(sections: &[Section], errors: &mut Vec<ConfigError>) -> ConfigParse {
    let backends: BTreeSet<&str> = sections
        .iter()
        .filter(|s| matches!(s.kind, Kind::Backend | Kind::Listen))
        .map(|s| s.name.as_str())
        .collect();
    // `default_backend` may come from a defaults section: the last one above, or the named one.
    let mut named_defaults: HashMap<&str, Option<&str>> = HashMap::new();
    let mut last_defaults: Option<&str> = None;
    let mut out = ConfigParse::default();
    for s in sections {
        let inherited = match &s.from {
            Some(name) => named_defaults.get(name.as_str()).copied().flatten(),
            None => last_defaults,
        };
        match s.kind {
            Kind::Defaults => {
                let own = s.default_backend.as_deref().or(inherited);
                named_defaults.insert(&s.name, own);
                last_defaults = own;
            }
            Kind::Frontend => {
                let default = s.default_backend.as_deref().or(inherited);
                match frontend_service(s, default, &backends) {
                    Ok(backend) => map_binds(s, backend, &mut out, errors),
                    Err(reason) => out.skipped.push(skip(s, reason)),
                }
            }
            Kind::Listen if s.stats => {
                out.skipped.push(skip(s, "an HAProxy statistics page, not a service".into()))
            }
            Kind::Listen if s.binds.is_empty() => out.skipped.push(skip(s, "no bind line".into())),
            Kind::Listen => map_binds(s, &s.name, &mut out, errors),
            Kind::Backend | Kind::Other => {}
        }
    }
    out
}

fn skip(s: &Section, reason: String) -> Skipped {
    Skipped { line: s.line, section: s.title.clone(), reason }
}

/// The one backend a frontend sends everything to, or why there is not one.
fn frontend_service<'a>(
    s: &'a Section,
    default: Option<&'a str>,
    backends: &BTreeSet<&str>,
) -> Result<&'a str, String> {
    if s.stats {
        return Err("an HAProxy statistics page, not a service".into());
    }
    if s.binds.is_empty() {
        return Err("no bind line".into());
    }
    let targets: BTreeSet<&str> = s.use_backends.iter().map(String::as_str).chain(default).collect();
    let mut iter = targets.iter();
    match (iter.next(), iter.next()) {
        (None, _) => Err("no default_backend or use_backend".into()),
        (Some(_), Some(_)) => {
            let names: Vec<&str> = targets.iter().copied().collect();
            Err(format!("routes with ACLs to several backends ({})", names.join(", ")))
        }
        (Some(b), None) if b.contains("%[") => Err(format!("chooses its backend at run time ({b})")),
        (Some(b), None) if !backends.contains(b) => {
            Err(format!("sends to backend {b}, which is not defined"))
        }
        (Some(b), None) => Ok(b),
    }
}

/// Maps the binds of `s`, a frontend sending to `backend` (or a listen section, its own backend).
fn map_binds(s: &Section, backend: &str, out: &mut ConfigParse, errors: &mut Vec<ConfigError>) {
    for b in &s.binds {
        let skip = |reason| Skipped { line: b.line, section: s.title.clone(), reason };
        match bind::parse(&b.addr) {
            BindAddr::Tcp(_) if b.ssl => out.skipped.push(skip(format!(
                "{} takes TLS from the apps (ssl); cordon's local port takes plaintext",
                b.addr
            ))),
            BindAddr::Tcp(bind) => out.services.push(Listener {
                service: s.name.clone(),
                backend: backend.to_string(),
                bind,
                line: b.line,
                section: s.title.clone(),
            }),
            BindAddr::Unmappable(reason) => out.skipped.push(skip(reason)),
            BindAddr::Bad(reason) => errors.push(ConfigError::BadBind { line: b.line, reason }),
        }
    }
}

#[cfg(test)]
mod tests;
