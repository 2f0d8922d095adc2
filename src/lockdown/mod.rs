//! Lockdown: while a service enforces, only cordon may reach its app.
//!
//! On a SmartStack host the app usually listens on all addresses, so a caller could skip cordon's
//! inbound and dial the app's port directly. For each served service with `lockdown = true`,
//! cordon keeps nftables rules in its own table, `inet cordon` (no other table is touched): TCP to
//! the app's address and port that does not arrive on loopback is counted, and, while the service
//! enforces, dropped. An app address of 0.0.0.0 or `::` matches the port on every address.
//! cordon's inbound proxy reaches the app over loopback, so it is never affected, and neither is
//! anything else on the same port at another address (a cordon listener, another app).
//!
//! Every change is one `nft -f -` transaction that refills cordon's chain, so a restarted agent
//! adopts the existing table, and the named counters of services still locked down survive
//! re-application; the counters of services no longer locked down are deleted in the same
//! transaction. When the agent stops the rules stay (fail closed); `cordon lockdown --config FILE
//! --remove` lifts them.
//!
//! This module is the only code that runs nft or reads its JSON. The script is built by a pure
//! function ([`ruleset`]) from the wanted services and the counters nft listed, so it is tested
//! without nft.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::base::{Mode, ServiceName};

/// nftables table (family inet) that holds every cordon rule.
pub const TABLE: &str = "cordon";
/// The base chain in that table.
const CHAIN: &str = "lockdown";
/// The prefix of every counter cordon creates (see [`counter_name`]).
const COUNTER_PREFIX: &str = "direct_";

/// Why lockdown could not be applied. The data plane keeps working either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockdownError {
    /// The `nft` command is not installed.
    #[error("nft not found ({0}); install Debian's nftables package to use lockdown")]
    NoNft(std::io::Error),
    /// nft refused the ruleset or the command (often: not root / no CAP_NET_ADMIN).
    #[error("nft failed: {0}")]
    Nft(String),
    /// nft printed JSON that cordon cannot read.
    #[error("cannot read the JSON printed by `nft {command}`: {error}")]
    Json {
        /// The nft arguments, as typed on a shell.
        command: String,
        /// What was wrong, with the line and column in nft's output.
        error: String,
    },
}

/// An app that lockdown guards (a served service with `lockdown = true`): TCP to `app` that does
/// not arrive on loopback is counted, and dropped while `service` enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    /// The service the app serves; it names the rule's counter.
    pub service: ServiceName,
    /// cordon's inbound listener in front of the app.
    pub listen: SocketAddr,
    /// The app's address and port.
    pub app: SocketAddr,
}

/// One service's direct-to-app traffic, as its nftables counter saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceCounter {
    pub service: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The counter's name for a service: `direct_` and the name with anything but `[A-Za-z0-9_]`
/// replaced by `_`.
pub fn counter_name(service: &str) -> String {
    let clean: String =
        service.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("{COUNTER_PREFIX}{clean}")
}

/// Whether a counter found in cordon's table has a name cordon gives its counters. Only those are
/// ever deleted, and only such names are written into a script.
fn is_cordon_counter(name: &str) -> bool {
    name.len() > COUNTER_PREFIX.len()
        && name.starts_with(COUNTER_PREFIX)
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The nft match for a service's app: its address and port, or the port on every address when
/// the app's address is 0.0.0.0 or `::`.
fn app_match(app: SocketAddr) -> String {
    let port = app.port();
    match app.ip().to_canonical() {
        ip if ip.is_unspecified() => format!("tcp dport {port}"),
        IpAddr::V4(ip) => format!("ip daddr {ip} tcp dport {port}"),
        IpAddr::V6(ip) => format!("ip6 daddr {ip} tcp dport {port}"),
    }
}

/// The nft script that makes cordon's table guard exactly `services`, each with its current mode. `existing` names the counters now in cordon's table (as
/// [`existing_counters`] lists them): those cordon created for services no longer locked down are
/// deleted after the flush that drops the rules using them; the others keep their counts. Pure:
/// `cordon lockdown --print` shows exactly this.
pub fn ruleset(services: &[(Guarded, Mode)], existing: &[String]) -> String {
    let wanted: BTreeSet<String> = services.iter().map(|(s, _)| counter_name(s.service.as_str())).collect();
    let stale: BTreeSet<&str> = existing
        .iter()
        .map(String::as_str)
        .filter(|name| is_cordon_counter(name) && !wanted.contains(*name))
        .collect();
    let mut s = format!(
        "# cordon lockdown: TCP to an app's address and port from anywhere but loopback is counted,\n\
         # and dropped while the service enforces (an app on 0.0.0.0 or :: matches the port on every\n\
         # address). One transaction; the counters of services still locked down\n\
         # survive re-application, those of services no longer locked down are removed.\n\
         add table inet {TABLE}\n\
         add chain inet {TABLE} {CHAIN} {{ type filter hook input priority filter; policy accept; }}\n\
         flush chain inet {TABLE} {CHAIN}\n"
    );
    // After the flush: a counter still named by a rule cannot be deleted.
    for counter in stale {
        s += &format!("delete counter inet {TABLE} {counter}\n");
    }
    for (svc, mode) in services {
        let counter = counter_name(svc.service.as_str());
        let verdict = match mode {
            Mode::Enforce => " drop",
            Mode::Learn => "",
        };
        s += &format!(
            "add counter inet {TABLE} {counter}\n\
             add rule inet {TABLE} {CHAIN} iif != \"lo\" {matched} counter name \"{counter}\"{verdict} comment \"{name} {mode}\"\n",
            matched = app_match(svc.app),
            name = svc.service,
            mode = mode.as_str(),
        );
    }
    s
}

/// Runs nft with a script on stdin.
fn nft(args: &[&str], script: Option<&str>) -> Result<String, LockdownError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if script.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LockdownError::NoNft)?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(script.as_bytes()).map_err(|e| LockdownError::Nft(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| LockdownError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(LockdownError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `nft -j list ...` prints: a list of objects, each keyed by its kind (`metainfo`, `table`,
/// `counter`, ...). Kinds cordon does not read are skipped; a table or counter without the fields
/// below is an error.
#[derive(Debug, Deserialize)]
struct Listing {
    nftables: Vec<Listed>,
}

#[derive(Debug, Deserialize)]
struct Listed {
    table: Option<ListedTable>,
    counter: Option<ListedCounter>,
}

#[derive(Debug, Deserialize)]
struct ListedTable {
    family: String,
    name: String,
}

/// A named counter as nft lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedCounter {
    family: String,
    table: String,
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

impl Listing {
    /// Reads nft's JSON; the error says what is wrong and where (line and column).
    fn parse(text: &str) -> Result<Listing, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    fn has_cordon_table(&self) -> bool {
        self.nftables.iter().filter_map(|o| o.table.as_ref()).any(|t| t.family == "inet" && t.name == TABLE)
    }

    fn cordon_counters(self) -> Vec<ListedCounter> {
        self.nftables
            .into_iter()
            .filter_map(|o| o.counter)
            .filter(|c| c.family == "inet" && c.table == TABLE)
            .collect()
    }
}

/// Runs `nft -j list ...` and reads its JSON.
fn list(args: &[&str]) -> Result<Listing, LockdownError> {
    let out = nft(args, None)?;
    Listing::parse(&out).map_err(|error| LockdownError::Json { command: args.join(" "), error })
}

/// Whether cordon's table `inet cordon` exists.
pub fn table_exists() -> Result<bool, LockdownError> {
    Ok(list(&["-j", "list", "tables", "inet"])?.has_cordon_table())
}

/// The named counters now in cordon's table; none when there is no table.
pub fn existing_counters() -> Result<Vec<ListedCounter>, LockdownError> {
    if !table_exists()? {
        return Ok(Vec::new());
    }
    Ok(list(&["-j", "list", "counters", "table", "inet", TABLE])?.cordon_counters())
}

/// Applies the rules for `services` in one transaction, deleting the counters of services that
/// are no longer locked down.
pub fn apply(services: &[(Guarded, Mode)]) -> Result<(), LockdownError> {
    let existing: Vec<String> = existing_counters()?.into_iter().map(|c| c.name).collect();
    nft(&["-f", "-"], Some(&ruleset(services, &existing))).map(|_| ())
}

/// Deletes cordon's table: `Ok(false)` when there is none. Whether it exists is asked of nft, not
/// read from its error text (which changes between nft versions), so any failure of nft is an error.
pub fn remove() -> Result<bool, LockdownError> {
    if !table_exists()? {
        return Ok(false);
    }
    nft(&["delete", "table", "inet", TABLE], None)?;
    Ok(true)
}

/// Ports with a TCP socket listening on every address (0.0.0.0 or `::`), read from the text of
/// `/proc/net/tcp` or `/proc/net/tcp6`.
fn wildcard_listen_ports(proc_net_tcp: &str) -> BTreeSet<u16> {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let (addr, port) = local.split_once(':')?;
            // 0A is LISTEN; an all-zero address is 0.0.0.0 or ::.
            if state != "0A" || !addr.bytes().all(|b| b == b'0') {
                return None;
            }
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// The guarded services whose app has one address while a socket on this host (in this
/// network namespace) listens on every address at the app's port: their rule covers only the
/// configured address, so the port stays open on the others. Empty when /proc cannot be read.
pub fn uncovered(services: &[Guarded]) -> Vec<Guarded> {
    let mut open = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        open.extend(wildcard_listen_ports(&std::fs::read_to_string(file).unwrap_or_default()));
    }
    services
        .iter()
        .filter(|s| !s.app.ip().to_canonical().is_unspecified() && open.contains(&s.app.port()))
        // cordon's own inbound on every address at that port is not the app.
        .filter(|s| !(s.listen.port() == s.app.port() && s.listen.ip().is_unspecified()))
        .cloned()
        .collect()
}

/// The direct-to-app counters of the services in `services` that have one.
pub fn counters(services: &[Guarded]) -> Result<Vec<ServiceCounter>, LockdownError> {
    let listed = existing_counters()?;
    Ok(services
        .iter()
        .filter_map(|s| {
            let name = counter_name(s.service.as_str());
            listed.iter().find(|c| c.name == name).map(|c| ServiceCounter {
                service: s.service.to_string(),
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent hands lockdown: the services that set `lockdown`, with their modes.
    fn locked(services: &[(Option<Guarded>, Mode)]) -> Vec<(Guarded, Mode)> {
        services.iter().filter_map(|(s, mode)| Some((s.clone()?, *mode))).collect()
    }

    /// A served service on every address; `None` (not guarded) unless `lockdown`.
    fn svc(name: &str, app_port: u16, lockdown: bool) -> Option<Guarded> {
        lockdown.then(|| Guarded {
            service: ServiceName::new(name).unwrap(),
            listen: "0.0.0.0:14000".parse().unwrap(),
            app: format!("0.0.0.0:{app_port}").parse().unwrap(),
        })
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn learn_counts_enforce_drops_and_unlocked_services_are_left_alone() {
        let rules = ruleset(
            &locked(&[
                (svc("db", 5432, true), Mode::Enforce),
                (svc("search-v2", 9200, true), Mode::Learn),
                (svc("cache", 6379, false), Mode::Enforce),
            ]),
            &[],
        );
        assert!(rules.contains("add table inet cordon\n"));
        assert!(rules.contains("flush chain inet cordon lockdown\n"), "re-application replaces the rules");
        assert!(rules.contains(
            "add rule inet cordon lockdown iif != \"lo\" tcp dport 5432 counter name \"direct_db\" drop comment \"db enforce\""
        ));
        assert!(rules.contains(
            "add rule inet cordon lockdown iif != \"lo\" tcp dport 9200 counter name \"direct_search_v2\" comment \"search-v2 learn\""
        ));
        assert!(!rules.contains("6379"), "a service without lockdown gets no rule:\n{rules}");
        assert_eq!(rules.matches(" drop comment").count(), 1, "only db drops");
        assert!(!rules.contains("delete"), "counters survive: the table is never deleted on apply");
    }

    #[test]
    fn the_rule_matches_the_app_address_unless_the_app_is_on_every_address() {
        let at = |app: &str| {
            let mut s = svc("db", 1, true);
            if let Some(s) = s.as_mut() {
                s.app = app.parse().unwrap();
            }
            ruleset(&locked(&[(s, Mode::Enforce)]), &[])
        };
        let cases = [
            ("10.0.0.5:5432", "iif != \"lo\" ip daddr 10.0.0.5 tcp dport 5432 counter"),
            ("127.0.0.1:5432", "iif != \"lo\" ip daddr 127.0.0.1 tcp dport 5432 counter"),
            ("[2001:db8::5]:5432", "iif != \"lo\" ip6 daddr 2001:db8::5 tcp dport 5432 counter"),
            ("[::ffff:10.0.0.5]:5432", "iif != \"lo\" ip daddr 10.0.0.5 tcp dport 5432 counter"),
            ("0.0.0.0:5432", "iif != \"lo\" tcp dport 5432 counter"),
            ("[::]:5432", "iif != \"lo\" tcp dport 5432 counter"),
        ];
        for (app, rule) in cases {
            let rules = at(app);
            assert!(rules.contains(rule), "{app}: {rule:?} missing:\n{rules}");
        }
    }

    #[test]
    fn wildcard_listeners_are_read_from_proc_net_tcp() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17026 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17027 1 0 100 0 0 10 0
   2: 00000000:0016 0100007F:A929 01 00000000:00000000 00:00000000 00000000     0        0 17028 1 0 100 0 0 10 0
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1B59 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
";
        assert_eq!(
            wildcard_listen_ports(tcp).into_iter().collect::<Vec<_>>(),
            [7000],
            "listening, on 0.0.0.0"
        );
        assert_eq!(wildcard_listen_ports(tcp6).into_iter().collect::<Vec<_>>(), [7001]);
        assert!(wildcard_listen_ports("").is_empty());
    }

    #[test]
    fn nothing_locked_still_owns_an_empty_chain() {
        let rules = ruleset(&locked(&[(svc("db", 5432, false), Mode::Enforce)]), &[]);
        assert!(rules.contains("flush chain"));
        assert!(!rules.contains("add rule"));
    }

    #[test]
    fn counters_of_services_no_longer_locked_are_deleted_after_the_flush() {
        // db stays locked; cache is now `lockdown = false`; old_api left the config.
        let rules = ruleset(
            &locked(&[(svc("db", 5432, true), Mode::Enforce), (svc("cache", 6379, false), Mode::Learn)]),
            &names(&["direct_old_api", "direct_db", "direct_cache"]),
        );
        let deletes: Vec<&str> = rules.lines().filter(|l| l.starts_with("delete")).collect();
        assert_eq!(
            deletes,
            ["delete counter inet cordon direct_cache", "delete counter inet cordon direct_old_api"],
            "{rules}"
        );
        let at = |needle: &str| rules.find(needle).unwrap_or_else(|| panic!("{needle:?} missing:\n{rules}"));
        assert!(at("flush chain") < at("delete counter"), "deleted only once no rule names it:\n{rules}");
        assert!(at("delete counter") < at("add rule"), "{rules}");
        assert!(
            rules.contains("add counter inet cordon direct_db\n"),
            "the remaining counter is kept:\n{rules}"
        );
        assert!(!rules.contains("delete table"));
    }

    #[test]
    fn nothing_is_deleted_when_nothing_is_stale() {
        let services =
            locked(&[(svc("db", 5432, true), Mode::Learn), (svc("search-v2", 9200, true), Mode::Enforce)]);
        for existing in [names(&[]), names(&["direct_db"]), names(&["direct_db", "direct_search_v2"])] {
            let rules = ruleset(&services, &existing);
            assert!(!rules.contains("delete"), "{existing:?}:\n{rules}");
            assert_eq!(rules, ruleset(&services, &[]), "the script only differs by deletions");
        }
    }

    #[test]
    fn counters_cordon_did_not_name_are_left_alone() {
        let rules = ruleset(
            &locked(&[(svc("db", 5432, true), Mode::Learn)]),
            &names(&["site_counter", "direct_", "direct_x; flush ruleset", "direct_gone"]),
        );
        let deletes: Vec<&str> = rules.lines().filter(|l| l.starts_with("delete")).collect();
        assert_eq!(deletes, ["delete counter inet cordon direct_gone"], "{rules}");
        assert!(!rules.contains("flush ruleset"), "a name from nft never reaches the script unchecked");
    }

    const METAINFO: &str =
        r#"{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}"#;

    #[test]
    fn the_table_is_found_by_name_and_family_in_nft_json() {
        let listing =
            |items: &str| Listing::parse(&format!(r#"{{"nftables": [{METAINFO}{items}]}}"#)).unwrap();
        assert!(!listing("").has_cordon_table(), "nft lists no table");
        assert!(
            listing(r#", {"table": {"family": "inet", "name": "cordon", "handle": 1}}"#).has_cordon_table()
        );
        assert!(
            !listing(r#", {"table": {"family": "inet", "name": "filter", "handle": 1}}"#).has_cordon_table()
        );
        assert!(
            !listing(r#", {"table": {"family": "ip", "name": "cordon", "handle": 2}}"#).has_cordon_table()
        );
    }

    #[test]
    fn counters_are_read_from_nft_json() {
        let text = format!(
            r#"{{"nftables": [{METAINFO},
                {{"counter": {{"family": "inet", "name": "direct_db", "table": "cordon", "handle": 3, "packets": 7, "bytes": 420}}}},
                {{"counter": {{"family": "inet", "name": "direct_web", "table": "other", "handle": 4, "packets": 1, "bytes": 60}}}}]}}"#
        );
        let counters = Listing::parse(&text).unwrap().cordon_counters();
        assert_eq!(counters.len(), 1, "only cordon's table counts: {counters:?}");
        assert_eq!(
            (counters[0].name.as_str(), counters[0].packets, counters[0].bytes),
            ("direct_db", 7, 420)
        );
    }

    #[test]
    fn json_nft_did_not_mean_is_a_clear_error() {
        let truncated = Listing::parse(r#"{"nftables": [{"metainfo": {}"#).unwrap_err();
        assert!(truncated.contains("line 1"), "{truncated}");
        let no_list = Listing::parse(r#"{"tables": []}"#).unwrap_err();
        assert!(no_list.contains("missing field `nftables`"), "{no_list}");
        let no_packets = Listing::parse(
            r#"{"nftables": [{"counter": {"family": "inet", "name": "direct_db", "table": "cordon", "bytes": 1}}]}"#,
        )
        .unwrap_err();
        assert!(no_packets.contains("missing field `packets`"), "{no_packets}");
        let error = LockdownError::Json { command: "-j list tables inet".into(), error: no_packets };
        assert!(error.to_string().starts_with("cannot read the JSON printed by `nft -j list tables inet`: "));
    }
}
