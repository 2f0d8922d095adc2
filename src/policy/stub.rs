//! Interface stand-in until the policy module lands (replaced at merge).
#![allow(missing_docs, dead_code, clippy::all)]
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Decision, Identified, Mode, Outcome};

#[derive(Debug)]
pub struct PolicyError;
impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("policy")
    }
}
impl std::error::Error for PolicyError {}

#[derive(Debug)]
pub struct Policy;
impl Policy {
    pub fn load(_p: &Path) -> Result<Policy, PolicyError> {
        todo!()
    }
    pub fn empty() -> Policy {
        Policy
    }
    pub fn mode(&self, _d: &str) -> Mode {
        todo!()
    }
    pub fn decide(&self, _s: &str, _d: &str) -> Decision {
        todo!()
    }
    pub fn version(&self) -> &str {
        todo!()
    }
}
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub last_ok: std::sync::atomic::AtomicU64,
}
pub struct PolicyWatcher;
impl PolicyWatcher {
    pub fn start(
        _p: &Path,
    ) -> Result<(PolicyWatcher, tokio::sync::watch::Receiver<Arc<Policy>>), PolicyError> {
        todo!()
    }
    pub fn reload_now(&self) {}
    pub fn stats(&self) -> Arc<ReloadStats> {
        todo!()
    }
}
#[derive(Debug, Clone)]
pub struct DecisionLog;
impl DecisionLog {
    pub fn open(_p: Option<&Path>) -> Result<DecisionLog, PolicyError> {
        todo!()
    }
    pub fn record(&self, _r: DecisionRecord) {}
    pub fn shutdown(&self) {}
}
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub at: SystemTime,
    pub source: String,
    pub source_addr: SocketAddr,
    pub destination: String,
    pub mode: Mode,
    pub outcome: Outcome,
    pub rule: Arc<str>,
    pub tls: bool,
    pub identified: Identified,
}
