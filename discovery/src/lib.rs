//! Interface stand-in until the discovery crate lands (replaced at merge).
#![allow(missing_docs, dead_code, clippy::all)]
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Backend {
    pub host: String,
    pub port: u16,
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub mtls_port: Option<u16>,
}
impl Backend {
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}
#[derive(Debug)]
pub struct DiscoveryError;
impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("discovery")
    }
}
impl std::error::Error for DiscoveryError {}
#[derive(Debug, Default)]
pub struct Snapshot;
impl Snapshot {
    pub fn backends(&self, _s: &str) -> &[Backend] {
        todo!()
    }
    pub fn services_at(&self, _ip: IpAddr) -> &[String] {
        todo!()
    }
    pub fn generation(&self) -> u64 {
        0
    }
}
#[derive(Debug, Default)]
pub struct WatchStats {
    pub reloads_ok: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
    pub last_ok: std::sync::atomic::AtomicU64,
}
pub struct Watcher;
impl Watcher {
    pub fn start(
        _d: &Path,
        _debounce: Duration,
    ) -> Result<(Watcher, tokio::sync::watch::Receiver<Arc<Snapshot>>), DiscoveryError> {
        todo!()
    }
    pub fn reload_now(&self) {}
    pub fn stats(&self) -> Arc<WatchStats> {
        todo!()
    }
}
