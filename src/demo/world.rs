//! The demo's temporary world: a CA, certificates, a Synapse-style discovery directory, a policy
//! file, toy apps and one cordon agent per "host", each host on its own loopback address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::agent::config::Config;

pub const TRUST_DOMAIN: &str = "demo.internal";

/// A toy service: its name, the loopback address of its host, and who it calls.
pub struct Host {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    /// Whether the host serves an app (behind a cordon inbound).
    pub serves: bool,
    /// Services this host calls through its cordon outbound.
    pub calls: &'static [&'static str],
}

/// The fleet: web and api call db and cache; a nightly batch job calls db; cache serves and calls
/// nothing, and its agent says so (an attacker holding its certificate dials db by hand).
pub const HOSTS: &[Host] = &[
    Host { name: "web", ip: Ipv4Addr::new(127, 0, 0, 2), serves: true, calls: &["api", "db", "cache"] },
    Host { name: "api", ip: Ipv4Addr::new(127, 0, 0, 3), serves: true, calls: &["db", "cache"] },
    Host { name: "db", ip: Ipv4Addr::new(127, 0, 0, 4), serves: true, calls: &[] },
    Host { name: "cache", ip: Ipv4Addr::new(127, 0, 0, 5), serves: true, calls: &[] },
    Host { name: "batch", ip: Ipv4Addr::new(127, 0, 0, 6), serves: false, calls: &["db"] },
];

/// A host that has not migrated to cordon yet: it calls api in plaintext.
pub const LEGACY: (&str, Ipv4Addr) = ("reports", Ipv4Addr::new(127, 0, 0, 7));
/// An address discovery knows nothing about.
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

pub struct World {
    pub dir: PathBuf,
    /// Keeps the directory alive (and removes it on drop) unless `--keep` was given.
    temp: Option<tempfile::TempDir>,
    pub agents: Vec<(&'static str, Agent)>,
}

impl World {
    /// Creates the directory layout, CA and certificates (with the real `cordon` commands).
    pub fn create(keep: Option<&Path>) -> anyhow::Result<World> {
        let (dir, temp) = match keep {
            Some(dir) => {
                if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                    bail!("{} is not empty; --keep needs a new or empty directory", dir.display());
                }
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                (dir.canonicalize()?, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("cordon-demo-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        for sub in ["discovery", "tls", "state"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(World { dir, temp, agents: Vec::new() })
    }

    /// Whether the world outlives the demo (`--keep`).
    pub fn kept(&self) -> bool {
        self.temp.is_none()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn policy(&self) -> PathBuf {
        self.path("policy.toml")
    }

    pub fn decision_log(&self) -> PathBuf {
        self.path("decisions.jsonl")
    }

    /// Writes a file the way Synapse and config management do: aside, then rename.
    pub fn replace(&self, path: &Path, text: &str) -> anyhow::Result<()> {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Writes `<service>.json` as Synapse's file_output would: (host, app port, cordon mTLS port).
    pub fn write_discovery(
        &self,
        service: &str,
        backends: &[(IpAddr, u16, Option<u16>)],
    ) -> anyhow::Result<()> {
        let entries: Vec<serde_json::Value> = backends
            .iter()
            .enumerate()
            .map(|(i, (host, port, mtls))| {
                let mut labels = serde_json::json!({"az": "demo-1a"});
                if let Some(p) = mtls {
                    labels["cordon_mtls_port"] = serde_json::Value::String(p.to_string());
                }
                serde_json::json!({
                    "host": host.to_string(), "port": port, "name": format!("{service}-{i}"),
                    "weight": null, "haproxy_server_options": null, "labels": labels,
                })
            })
            .collect();
        self.replace(
            &self.path(&format!("discovery/{service}.json")),
            &serde_json::to_string_pretty(&entries)?,
        )
    }

    /// The cordon.toml of one host.
    pub fn agent_config(&self, host: &Host, app: Option<SocketAddr>) -> anyhow::Result<Config> {
        let mut text = format!(
            "# cordon agent on the demo host {name} ({ip})\n\
             trust_domain = \"{TRUST_DOMAIN}\"\ndiscovery_dir = \"discovery\"\npolicy = \"policy.toml\"\n\
             state_dir = \"state/{name}\"\ndecision_log = \"decisions.jsonl\"\nhost = \"{name}\"\n\
             admin = \"{ip}:0\"\n\n[tls]\nca = \"ca/ca.pem\"\ndir = \"tls\"\n\n\
             [proxy]\nflush_interval_ms = 100\ndrain_timeout_s = 2\nfirst_byte_timeout_ms = 200\n",
            name = host.name,
            ip = host.ip,
        );
        if let Some(app) = app {
            text += &format!(
                "\n[[service]]\nname = \"{}\"\nlisten = \"{}:0\"\napp = \"{app}\"\n",
                host.name, host.ip
            );
        }
        for callee in host.calls {
            text += &format!(
                "\n[[upstream]]\nservice = \"{callee}\"\nlisten = \"{}:0\"\nidentity = \"{}\"\n",
                host.ip, host.name
            );
        }
        let path = self.path(&format!("{}.toml", host.name));
        std::fs::write(&path, &text)?;
        Ok(Config::load(&path)?)
    }

    pub fn agent(&self, name: &str) -> &Agent {
        &self.agents.iter().find(|(n, _)| *n == name).expect("demo host").1
    }

    pub async fn shutdown(&mut self) {
        for (_, agent) in self.agents.drain(..) {
            agent.shutdown().await;
        }
    }
}

/// A toy app: reads a request to its end, answers `<service> handled <request>`.
pub async fn start_app(service: &'static str, ip: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0)).await.with_context(|| format!("binding {ip} for {service}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Bounded: a toy request is a line.
                while req.len() < 64 * 1024 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!("{service} handled {}", String::from_utf8_lossy(&req).trim());
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Runs `cordon ARGS` (this very binary) in `dir` and returns (success, stdout, stderr).
pub fn cordon(dir: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let exe = std::env::current_exe().context("finding the cordon binary")?;
    let out = Command::new(exe)
        .args(args)
        .current_dir(dir)
        .env("CORDON_LOG", "warn")
        .output()
        .context("running cordon")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
