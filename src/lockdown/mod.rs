//! Lockdown: while a service enforces, only cordon may reach its app.
//!
//! On a SmartStack host the app usually listens on all addresses, so a caller could skip cordon's
//! inbound and dial the app's port directly. For each served service with `lockdown = true`,
//! cordon keeps nftables rules in its own table, `inet cordon` (no other table is touched): TCP to
//! the app's port that does not arrive on loopback is counted, and, while the service enforces,
//! dropped. cordon's inbound proxy reaches the app over loopback, so it is never affected.
//!
//! Every change is one `nft -f -` transaction that refills cordon's chain, so a restarted agent
//! adopts the existing table, and the named counters survive re-application. When the agent stops
//! the rules stay (fail closed); `cordon lockdown --config FILE --remove` lifts them.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::agent::config::ServiceConfig;
use crate::policy::Mode;

/// nftables table (family inet) that holds every cordon rule.
pub const TABLE: &str = "cordon";
/// The base chain in that table.
const CHAIN: &str = "lockdown";

/// Why lockdown could not be applied. The data plane keeps working either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockdownError {
    /// The `nft` command is not installed.
    #[error("nft not found ({0}); install Debian's nftables package to use lockdown")]
    NoNft(std::io::Error),
    /// nft refused the ruleset (often: not root / no CAP_NET_ADMIN).
    #[error("nft refused the ruleset: {0}")]
    Nft(String),
    /// nft's output could not be read.
    #[error("cannot read nft's counters: {0}")]
    Counters(String),
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
    format!("direct_{clean}")
}

/// The nft script that makes cordon's table match `services` (those with `lockdown` set), each
/// with its current mode. Pure: `cordon lockdown --print` shows exactly this.
pub fn ruleset(services: &[(ServiceConfig, Mode)]) -> String {
    let mut s = format!(
        "# cordon lockdown: TCP to an app's port from anywhere but loopback is counted, and dropped\n\
         # while the service enforces. One transaction; the counters survive re-application.\n\
         add table inet {TABLE}\n\
         add chain inet {TABLE} {CHAIN} {{ type filter hook input priority filter; policy accept; }}\n\
         flush chain inet {TABLE} {CHAIN}\n"
    );
    for (svc, mode) in services.iter().filter(|(s, _)| s.lockdown) {
        let counter = counter_name(svc.name.as_str());
        let verdict = match mode {
            Mode::Enforce => " drop",
            Mode::Learn => "",
        };
        s += &format!(
            "add counter inet {TABLE} {counter}\n\
             add rule inet {TABLE} {CHAIN} iif != \"lo\" tcp dport {port} counter name \"{counter}\"{verdict} comment \"{name} {mode}\"\n",
            port = svc.app.port(),
            name = svc.name,
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

/// Applies the rules for `services` in one transaction.
pub fn apply(services: &[(ServiceConfig, Mode)]) -> Result<(), LockdownError> {
    nft(&["-f", "-"], Some(&ruleset(services))).map(|_| ())
}

/// Deletes cordon's table; nothing to do when it is not there.
pub fn remove() -> Result<bool, LockdownError> {
    match nft(&["delete", "table", "inet", TABLE], None) {
        Ok(_) => Ok(true),
        Err(LockdownError::Nft(e)) if e.contains("No such file") => Ok(false),
        Err(e) => Err(e),
    }
}

/// The direct-to-app counters of the services in `services`.
pub fn counters(services: &[ServiceConfig]) -> Result<Vec<ServiceCounter>, LockdownError> {
    let out = nft(&["-j", "list", "counters", "table", "inet", TABLE], None)?;
    let doc: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| LockdownError::Counters(e.to_string()))?;
    let listed = doc["nftables"].as_array().cloned().unwrap_or_default();
    Ok(services
        .iter()
        .filter(|s| s.lockdown)
        .filter_map(|s| {
            let name = counter_name(s.name.as_str());
            listed.iter().find(|o| o["counter"]["name"] == name.as_str()).map(|o| ServiceCounter {
                service: s.name.to_string(),
                packets: o["counter"]["packets"].as_u64().unwrap_or(0),
                bytes: o["counter"]["bytes"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, app_port: u16, lockdown: bool) -> ServiceConfig {
        ServiceConfig {
            name: crate::pki::ServiceName::new(name).unwrap(),
            listen: "0.0.0.0:14000".parse().unwrap(),
            app: format!("127.0.0.1:{app_port}").parse().unwrap(),
            lockdown,
        }
    }

    #[test]
    fn learn_counts_enforce_drops_and_unlocked_services_are_left_alone() {
        let rules = ruleset(&[
            (svc("db", 5432, true), Mode::Enforce),
            (svc("search-v2", 9200, true), Mode::Learn),
            (svc("cache", 6379, false), Mode::Enforce),
        ]);
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
    fn nothing_locked_still_owns_an_empty_chain() {
        let rules = ruleset(&[(svc("db", 5432, false), Mode::Enforce)]);
        assert!(rules.contains("flush chain"));
        assert!(!rules.contains("add rule"));
    }
}
