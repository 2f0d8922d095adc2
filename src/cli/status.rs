//! `cordon status --admin ADDR`: what a running agent serves, with what certificates, modes and
//! backends, for a person at a terminal (`--json` for the raw `/status` document).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's admin address (`admin` in cordon.toml).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Print the raw JSON document.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let body = fetch(args.admin, "/status")?;
    let status: Value = serde_json::from_str(&body).context("the agent's /status is not JSON")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        write!(out, "{}", render(&status))?;
    }
    Ok(Outcome::Success)
}

/// GETs `path` from the admin endpoint, with a deadline.
pub fn fetch(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let get = async {
            let stream = tokio::net::TcpStream::connect(admin)
                .await
                .with_context(|| format!("cannot reach the agent's admin endpoint at {admin}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::get(path)
                .header("host", admin.to_string())
                .body(Empty::<bytes::Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!("{admin}{path} answered {status}");
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(5), get)
            .await
            .with_context(|| format!("{admin} did not answer within 5 s"))?
    })
}

/// A value of the agent's answer as text; what the agent reports (names, errors) is escaped.
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => crate::base::escape::text(s).into_owned(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn human_seconds(secs: i64) -> String {
    if secs < 0 {
        return format!("EXPIRED {}h ago", -secs / 3600);
    }
    let (d, h, m) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60);
    if d > 0 { format!("in {d}d {h}h") } else { format!("in {h}h {m}m") }
}

/// The status document as aligned text.
pub fn render(status: &Value) -> String {
    let mut o = String::new();
    let arr = |k: &str| status[k].as_array().cloned().unwrap_or_default();
    o += &format!("host {}  (trust domain {})\n", s(&status["host"]), s(&status["trust_domain"]));
    o += "\nidentities\n";
    for i in arr("identities") {
        let left = i["expires_in_seconds"].as_i64().unwrap_or(0);
        o += &format!(
            "  {:<20} expires {} ({})\n",
            s(&i["identity"]),
            s(&i["not_after"]),
            human_seconds(left)
        );
    }
    if let Some(issuer) = status["issuer"].as_object() {
        o += &format!("  signing service {}\n", s(&issuer["service"]));
        for i in issuer["identities"].as_array().cloned().unwrap_or_default() {
            let from_old = if i["from_old_ca"] == Value::Bool(true) { ", leaf from the old CA" } else { "" };
            o += &format!(
                "  {:<20} renewed {}, failed {}{from_old}{}\n",
                s(&i["identity"]),
                i["renewed"],
                i["failed"],
                i["last_error"]
                    .as_str()
                    .map(|e| format!(", last error: {}", crate::base::escape::text(e)))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(r) = status["revocations"].as_object() {
        o += &format!(
            "  revocation list: {} serials, {} hosts (version {}, generated {}){}\n",
            r["serials"],
            r["hosts"],
            s(&r["version"]),
            s(&r["generated"]),
            r["last_error"].as_str().map(|e| format!(", last error: {e}")).unwrap_or_default()
        );
    }
    o += "\nserved services (inbound)\n";
    for svc in arr("services") {
        let lockdown = if svc["lockdown"].as_bool() == Some(true) { "lockdown on" } else { "lockdown off" };
        o += &format!(
            "  {:<20} {:<8} listen {:<22} -> app {:<22} {lockdown}\n",
            s(&svc["name"]),
            s(&svc["mode"]),
            s(&svc["listen"]),
            s(&svc["app"])
        );
    }
    o += "\nupstreams (outbound)\n";
    for up in arr("upstreams") {
        let backends: Vec<String> = up["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| match b["mtls_port"].as_u64() {
                Some(p) => format!("{}:{p} mtls", s(&b["host"])),
                None => format!("{}:{} plaintext", s(&b["host"]), s(&b["port"])),
            })
            .collect();
        let backends =
            if backends.is_empty() { "no backends in discovery".to_string() } else { backends.join(", ") };
        o += &format!(
            "  {:<20} listen {:<22} as {:<12} {backends}\n",
            s(&up["service"]),
            s(&up["listen"]),
            s(&up["identity"])
        );
    }
    let p = &status["policy"];
    o += &format!(
        "\npolicy     {} version {}, reloads {} ok / {} failed, last good {}\n",
        s(&p["path"]),
        s(&p["version"]),
        s(&p["reloads_ok"]),
        s(&p["reloads_failed"]),
        s(&p["last_reload"])
    );
    let d = &status["discovery"];
    o += &format!(
        "discovery  {} generation {}, reloads {} ok / {} failed, last good {}\n",
        s(&d["dir"]),
        s(&d["generation"]),
        s(&d["reloads_ok"]),
        s(&d["reloads_failed"]),
        s(&d["last_reload"])
    );
    let l = &status["ledger"];
    o += &format!(
        "ledger     {} events {} received, {} written, {} dropped; {} write errors\n",
        s(&l["path"]),
        s(&l["events_received"]),
        s(&l["events_written"]),
        s(&l["events_dropped"]),
        s(&l["write_errors"])
    );
    o += &fleet_store(&status["fleet_store"]);
    o
}

/// The shipper to the fleet store (`[fleet]`), or that there is none.
fn fleet_store(f: &Value) -> String {
    if f.is_null() {
        return "fleet store none (no [fleet] section: the ledger stays on this host)\n".into();
    }
    let last_error = f["last_error"].as_str().map(|e| format!(", last error: {e}")).unwrap_or_default();
    format!(
        "fleet store {} rows {} waiting, {} shipped in {} batches, last ship {} (lag {}s); {} errors{last_error}\n",
        s(&f["store"]),
        s(&f["rows_waiting"]),
        s(&f["rows_shipped"]),
        s(&f["batches_shipped"]),
        s(&f["last_ship"]),
        s(&f["lag_seconds"]),
        s(&f["errors"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section_and_flags_expired_certificates() {
        let status = serde_json::json!({
            "host": "db-1", "trust_domain": "example.internal",
            "identities": [{"identity": "db", "not_after": "2026-11-29T00:00:00Z", "expires_in_seconds": -7200}],
            "services": [{"name": "db", "mode": "enforce", "listen": "0.0.0.0:14000", "app": "127.0.0.1:5432", "lockdown": true}],
            "upstreams": [{"service": "cache", "listen": "127.0.0.1:3400", "identity": "db",
                           "backends": [{"host": "10.0.0.9", "port": 6379, "mtls_port": null}]}],
            "policy": {"path": "/etc/cordon/policy.toml", "version": "ab12", "reloads_ok": 2, "reloads_failed": 1, "last_reload": null},
            "discovery": {"dir": "/var/run/synapse/services", "generation": 4, "reloads_ok": 4, "reloads_failed": 0},
            "ledger": {"path": "/var/lib/cordon/ledger.db", "events_received": 10, "events_written": 10, "events_dropped": 0, "write_errors": 0},
        });
        let text = render(&status);
        for want in [
            "db-1",
            "EXPIRED 2h ago",
            "enforce",
            "lockdown on",
            "10.0.0.9:6379 plaintext",
            "version ab12",
            "1 failed",
            "10 written",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(text.contains("fleet store none"), "{text}");
    }

    #[test]
    fn shows_the_fleet_store_and_its_shipper() {
        let status = serde_json::json!({
            "fleet_store": {"store": "postgres://cordon@db.internal:5432/fleet", "rows_waiting": 12,
                            "rows_shipped": 3400, "batches_shipped": 7, "last_ship": "2026-12-06T10:00:00Z",
                            "lag_seconds": 4, "errors": 1, "last_error": "connection refused"},
        });
        let text = render(&status);
        for want in [
            "fleet store postgres://cordon@db.internal:5432/fleet",
            "12 waiting",
            "3400 shipped in 7 batches",
            "last ship 2026-12-06T10:00:00Z (lag 4s)",
            "1 errors, last error: connection refused",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }
}
