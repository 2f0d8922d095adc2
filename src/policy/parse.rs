//! `policy.toml`: parsed with spans so every problem names its file and line, validated into a
//! [`Policy`] indexed for evaluation.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::address::{AddressRange, address_of};
use super::{Mode, PolicyError, Verdict};
use crate::base::ServiceName;

/// The wildcard that matches any service (and, as a source, any caller).
pub const ANY: &str = "*";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    modes: BTreeMap<String, Spanned<String>>,
    #[serde(default, rename = "intention")]
    intentions: Vec<Spanned<RawIntention>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntention {
    source: Spanned<String>,
    destination: Spanned<String>,
    action: Spanned<String>,
    note: Option<String>,
}

/// One `[[intention]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intention {
    pub source: String,
    pub destination: String,
    pub action: Verdict,
    pub note: Option<String>,
    /// Line of the `[[intention]]` header in the policy file.
    pub line: usize,
}

/// The rules for one destination (or for `*`): by exact source, and the `*` source.
#[derive(Debug, Default)]
struct Rules {
    by_source: HashMap<String, usize>,
    any_source: Option<usize>,
}

impl Rules {
    fn find(&self, source: &str) -> (Option<usize>, Option<usize>) {
        (self.by_source.get(source).copied(), self.any_source)
    }
}

/// The intention that decides a pair of names, or the default deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub verdict: Verdict,
    /// Human-readable name of the rule, e.g. `web -> db allow (policy.toml:12)` or `no matching
    /// intention (default deny)`. Shared, so a lookup costs no allocation.
    pub rule: Arc<str>,
    /// An intention matched (false: the default deny).
    pub explicit: bool,
}

/// A validated policy: modes per destination and intentions, ready to decide.
#[derive(Debug)]
pub struct Policy {
    origin: PathBuf,
    version: String,
    default_mode: Mode,
    modes: HashMap<String, Mode>,
    intentions: Vec<Intention>,
    /// Human-readable rule of each intention, made once so a decision allocates nothing.
    rule_names: Vec<Arc<str>>,
    by_destination: HashMap<String, Rules>,
    any_destination: Rules,
    /// Deny intentions that name a plaintext address or range, most specific first: (range,
    /// destination, index into `intentions`).
    address_rules: Vec<(AddressRange, String, usize)>,
    no_match: Arc<str>,
}

/// Byte offsets where each line starts, to turn spans into line numbers in O(log n).
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Self {
        Lines(std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }

    /// The 1-based line of a byte offset.
    fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// A short, stable hash of the policy text (FNV-1a), shown in `/status` and logs.
fn version_of(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")[..12].to_string()
}

fn check_name(what: &str, value: &str, line: usize, problems: &mut Vec<String>) {
    if value != ANY
        && let Err(e) = ServiceName::new(value)
    {
        problems.push(format!("line {line}: {what}: {e}"));
    }
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Validates policy text; `origin` names it in errors and rules.
    pub fn parse(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let lines = Lines::of(text);
        let line_of = |_: &str, offset: usize| lines.at(offset);
        let mut problems = Vec::new();
        let mut default_mode = Mode::Learn;
        let mut modes = HashMap::new();
        for (service, mode) in &raw.modes {
            let line = line_of(text, mode.span().start);
            check_name("[modes] key", service, line, &mut problems);
            match mode.get_ref().parse::<Mode>() {
                Ok(m) if service == ANY => default_mode = m,
                Ok(m) => {
                    modes.insert(service.clone(), m);
                }
                Err(e) => problems.push(format!("line {line}: [modes] {service}: {e}")),
            }
        }
        let file = origin.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let mut intentions: Vec<Intention> = Vec::new();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for raw in &raw.intentions {
            let line = line_of(text, raw.span().start);
            let r = raw.get_ref();
            let source_line = line_of(text, r.source.span().start);
            let address = match AddressRange::parse(r.source.get_ref()) {
                None => {
                    check_name("source", r.source.get_ref(), source_line, &mut problems);
                    None
                }
                Some(Ok(range)) => Some(range),
                Some(Err(e)) => {
                    problems.push(format!("line {source_line}: source: {e}"));
                    None
                }
            };
            check_name(
                "destination",
                r.destination.get_ref(),
                line_of(text, r.destination.span().start),
                &mut problems,
            );
            let action = match r.action.get_ref().parse::<Verdict>() {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("line {}: action: {e}", line_of(text, r.action.span().start)));
                    continue;
                }
            };
            if address.is_some() && action == Verdict::Allow {
                problems.push(format!(
                    "line {line}: source {}: an address may only be denied (enforce admits no plaintext \
                     caller; migrate it to cordon and allow its service instead)",
                    r.source.get_ref()
                ));
                continue;
            }
            let pair = (r.source.get_ref().clone(), r.destination.get_ref().clone());
            if let Some(prev) = seen.insert(pair.clone(), line) {
                problems.push(format!(
                    "line {line}: a second intention for {} -> {} (the first is at line {prev}); keep one",
                    pair.0, pair.1
                ));
                continue;
            }
            intentions.push(Intention {
                source: pair.0,
                destination: pair.1,
                action,
                note: r.note.clone(),
                line,
            });
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid { path: origin.to_owned(), problems });
        }
        let rule_names = intentions
            .iter()
            .map(|i| Arc::from(format!("{} -> {} {} ({file}:{})", i.source, i.destination, i.action, i.line)))
            .collect();
        let mut by_destination: HashMap<String, Rules> = HashMap::new();
        let mut any_destination = Rules::default();
        let mut address_rules = Vec::new();
        for (idx, i) in intentions.iter().enumerate() {
            if let Some(Ok(range)) = AddressRange::parse(&i.source) {
                address_rules.push((range, i.destination.clone(), idx));
                continue;
            }
            let rules = if i.destination == ANY {
                &mut any_destination
            } else {
                by_destination.entry(i.destination.clone()).or_default()
            };
            if i.source == ANY {
                rules.any_source = Some(idx);
            } else {
                rules.by_source.insert(i.source.clone(), idx);
            }
        }
        // Most specific first: a named destination before `*`, then the longest prefix.
        address_rules.sort_by_key(|(range, dest, _): &(AddressRange, String, usize)| {
            (dest == ANY, std::cmp::Reverse(range.prefix()))
        });
        Ok(Policy {
            origin: origin.to_owned(),
            version: version_of(text),
            default_mode,
            modes,
            intentions,
            rule_names,
            by_destination,
            any_destination,
            address_rules,
            no_match: Arc::from("no matching intention (default deny)"),
        })
    }

    /// Everything learns, nothing is allowed by an intention.
    pub fn empty() -> Policy {
        Self::parse("", Path::new("(empty policy)"))
            .unwrap_or_else(|_| unreachable!("the empty policy is valid"))
    }

    /// The destination's mode: its `[modes]` entry, else `"*"`, else learn.
    pub fn mode(&self, destination: &str) -> Mode {
        self.modes.get(destination).copied().unwrap_or(self.default_mode)
    }

    /// The intention that decides `source -> destination`, most specific first, as Consul orders
    /// them: `web -> db`, `* -> db`, `web -> *`, `* -> *`; no match is deny. Only the names: the
    /// decision for a connection (certificate, transport, mode) is [`super::decide()`].
    pub fn intention_for(&self, source: &str, destination: &str) -> Match {
        let (exact, any_src) =
            self.by_destination.get(destination).map(|r| r.find(source)).unwrap_or((None, None));
        let (src_any_dst, any_any) = self.any_destination.find(source);
        match exact.or(any_src).or(src_any_dst).or(any_any) {
            Some(i) => {
                Match { verdict: self.intentions[i].action, rule: self.rule_names[i].clone(), explicit: true }
            }
            None => Match { verdict: Verdict::Deny, rule: self.no_match.clone(), explicit: false },
        }
    }

    /// The deny intention that names the plaintext caller `source` (`ip:A.B.C.D`) by its address
    /// or a range holding it, for `destination` or for `*`, most specific first. Allocates
    /// nothing.
    pub fn address_deny(&self, source: &str, destination: &str) -> Option<Match> {
        if self.address_rules.is_empty() {
            return None;
        }
        let ip = address_of(source)?;
        self.address_rules
            .iter()
            .find(|(range, dest, _)| (dest == destination || dest == ANY) && range.contains(ip))
            .map(|(_, _, i)| Match {
                verdict: self.intentions[*i].action,
                rule: self.rule_names[*i].clone(),
                explicit: true,
            })
    }

    pub fn intentions(&self) -> &[Intention] {
        &self.intentions
    }

    /// Whether an intention names exactly this pair.
    pub fn has_intention(&self, source: &str, destination: &str) -> bool {
        let rules = if destination == ANY {
            Some(&self.any_destination)
        } else {
            self.by_destination.get(destination)
        };
        rules.is_some_and(|r| {
            if source == ANY { r.any_source.is_some() } else { r.by_source.contains_key(source) }
        })
    }

    /// Services named in `[modes]` (not `*`), with their mode.
    pub fn modes(&self) -> impl Iterator<Item = (&str, Mode)> {
        self.modes.iter().map(|(s, m)| (s.as_str(), *m))
    }

    pub fn default_mode(&self) -> Mode {
        self.default_mode
    }

    /// A short hash of the file's text.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }
}
