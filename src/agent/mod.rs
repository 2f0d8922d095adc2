//! The agent: wires config, discovery, policy, TLS, proxies, recorder, decision log and the admin
//! endpoint together, and owns their lifecycle (start, reload, drain, stop).
//!
//! [`Agent::start`] binds every listener before it returns, so callers (tests, the demo) can read
//! the bound addresses back; [`Agent::shutdown`] stops accepting, drains open connections up to
//! the configured deadline and flushes the recorder and the decision log.

mod admin;
pub mod check;
pub mod config;
pub mod limits;
mod revoked;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cordon_discovery::Watcher as DiscoveryWatcher;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use self::config::Config;
use crate::ledger::{DeclarationOrigin, Recorder, RecorderHandle};
use crate::metrics::{Direction, Metrics};
use crate::pki::issuer::Renewer;
use crate::pki::{ServiceName, TlsStore};
use crate::policy::{DecisionLog, PolicyWatcher};
use crate::proxy::{Balancer, HopPool, Inbound, Lifecycle, MuxPool, Outbound};

/// How long discovery waits for a burst of file changes to settle.
const DISCOVERY_DEBOUNCE: Duration = Duration::from_millis(50);
/// How long a first enrolment keeps retrying an unreachable signing service before the start
/// fails (a service manager restarts the agent).
const ENROL_DEADLINE: Duration = Duration::from_secs(30);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Certificates or keys could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::pki::PkiError),
    /// The discovery directory could not be read.
    #[error("discovery: {0}")]
    Discovery(#[from] cordon_discovery::DiscoveryError),
    /// The policy file is missing or invalid.
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The ledger could not be opened.
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The fleet store shipper could not be started.
    #[error("fleet store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A directory the agent writes could not be created.
    #[error("{path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    /// First enrolment with the signing service failed.
    #[error("enrolment: {0}")]
    Enrol(#[from] crate::pki::issuer::client::IssuerError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind { what: String, addr: SocketAddr, source: std::io::Error },
}

/// Why a running agent stopped other than cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The ledger could not take everything recorded before the stop.
    #[error("{0}")]
    Unwritten(crate::ledger::Unwritten),
}

/// Where the agent's listeners ended up (port 0 in the config becomes a real port here).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    /// Inbound listener of each served service.
    pub services: Vec<(ServiceName, SocketAddr)>,
    /// Local port of each upstream.
    pub upstreams: Vec<(ServiceName, SocketAddr)>,
    pub admin: Option<SocketAddr>,
}

impl Bound {
    pub fn service(&self, name: &str) -> Option<SocketAddr> {
        self.services.iter().find(|(n, _)| n.as_str() == name).map(|(_, a)| *a)
    }
    pub fn upstream(&self, name: &str) -> Option<SocketAddr> {
        self.upstreams.iter().find(|(n, _)| n.as_str() == name).map(|(_, a)| *a)
    }
}

/// The parts that `/status` and reloads reach.
pub(crate) struct Parts {
    pub config: Config,
    pub bound: Bound,
    pub tls: Arc<TlsStore>,
    pub discovery: DiscoveryWatcher,
    pub discovery_rx: tokio::sync::watch::Receiver<Arc<cordon_discovery::Snapshot>>,
    pub policy: PolicyWatcher,
    pub policy_rx: tokio::sync::watch::Receiver<Arc<crate::policy::Policy>>,
    pub recorder: RecorderHandle,
    pub metrics: Arc<Metrics>,
    /// Direct-to-app counters of locked-down services, refreshed in the background.
    pub lockdown: Arc<std::sync::Mutex<Vec<crate::lockdown::ServiceCounter>>>,
    /// Enrols and renews the certificates with the signing service (`tls.issuer`).
    pub renewer: Option<Arc<Renewer>>,
    /// The fleet store shipped to and the shipper's counters, with `[fleet]`.
    pub shipper: Option<(crate::store::ShipTo, Arc<crate::store::ShipStats>)>,
}

/// A running agent.
pub struct Agent {
    parts: Arc<Parts>,
    life: Lifecycle,
    recorder: Recorder,
    shipper: Option<crate::store::Shipper>,
    decisions: DecisionLog,
    admin_stop: tokio_util::sync::CancellationToken,
}

impl Agent {
    /// Loads everything, binds every listener and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        check_open_files(&config);
        let renewer = match (&config.issuer, &config.tls) {
            (Some(settings), self::config::TlsSource::Files { ca, dir }) => {
                let renewer = Renewer::new(
                    settings.clone(),
                    config.trust_domain.clone(),
                    ca.clone(),
                    dir.clone(),
                    config.host.clone(),
                    config.identities(),
                );
                renewer.enrol_missing(ENROL_DEADLINE).await?;
                Some(renewer)
            }
            _ => None,
        };
        if let self::config::TlsSource::LocalCa { ca_dir, .. } = &config.tls {
            warn!(
                ca_dir = %ca_dir.display(),
                "tls.ca_dir: THIS HOST HOLDS THE CA KEY and can mint any identity; one compromised host \
                 breaks the segmentation of the whole fleet. Use it for the demo and single-host trials \
                 only; fleets use tls.issuer (cordon ca serve)"
            );
        }
        let tls = TlsStore::load(&config.tls, &config.trust_domain, &config.identities())?;
        let (discovery, discovery_rx) = DiscoveryWatcher::start(&config.discovery_dir, DISCOVERY_DEBOUNCE)?;
        let (policy, policy_rx) = PolicyWatcher::start(&config.policy)?;
        std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
            path: config.state_dir.display().to_string(),
            source,
        })?;
        let (recorder, recorder_handle) = Recorder::start(
            &config.ledger_path(),
            &config.host,
            config.proxy.recorder_capacity,
            config.proxy.flush_interval,
        )?;
        let shipper = match &config.fleet {
            Some(fleet) => Some(crate::store::Shipper::start(
                &config.ledger_path(),
                &config.host,
                fleet,
                Some((tls.clone(), config.identities())),
            )?),
            None => None,
        };
        declare_upstreams(&config, &recorder_handle);
        let origin = crate::policy::Origin {
            trust_domain: config.trust_domain.to_string(),
            host: config.host.clone(),
        };
        let decisions = DecisionLog::start(config.decision_log.as_ref(), origin)?;

        // Bind everything before serving anything, so a taken port fails the start cleanly.
        let bind = |what: String, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| AgentError::Bind { what, addr, source })
        };
        let mut inbound = Vec::new();
        for s in &config.services {
            inbound.push((s.clone(), bind(format!("service {}", s.name), s.listen).await?));
        }
        let mut outbound = Vec::new();
        for u in &config.upstreams {
            outbound.push((u.clone(), bind(format!("upstream {}", u.service), u.listen).await?));
        }
        let admin = match config.admin {
            Some(a) => Some(bind("admin".into(), a).await?),
            None => None,
        };

        let mut bound = Bound::default();
        let mut metrics = Metrics::new();
        let lockdown_counters = Arc::new(std::sync::Mutex::new(Vec::new()));
        admin::register_collectors(&mut metrics, &discovery, &policy, &recorder_handle, &lockdown_counters);
        let served: Vec<String> = config.services.iter().map(|s| s.name.to_string()).collect();
        admin::register_modes(&mut metrics, policy_rx.clone(), served);
        for c in crate::metrics::identity(&tls, renewer.as_ref()) {
            metrics.register_collector(c);
        }
        if let Some(s) = &shipper {
            admin::register_shipper(&mut metrics, s.stats());
        }
        admin::register_decision_log(&mut metrics, &decisions);
        let metrics = Arc::new(metrics);
        let life = Lifecycle::new();

        for (s, listener) in inbound {
            let addr = listener.local_addr().map_err(|source| AgentError::Bind {
                what: format!("service {}", s.name),
                addr: s.listen,
                source,
            })?;
            bound.services.push((s.name.clone(), addr));
            let proxy = Arc::new(Inbound {
                metrics: metrics.listener(Direction::Inbound, s.name.as_str()),
                service: s.name.clone(),
                app: s.app,
                tls: tls.clone(),
                policy: policy_rx.clone(),
                discovery: discovery_rx.clone(),
                recorder: recorder_handle.clone(),
                decisions: decisions.clone(),
                settings: config.proxy.clone(),
                open: Default::default(),
                notices: Default::default(),
            });
            info!(service = %s.name, listen = %addr, app = %s.app, "inbound listening");
            tokio::spawn(proxy.run(listener, life.clone()));
        }
        for (u, listener) in outbound {
            let addr = listener.local_addr().map_err(|source| AgentError::Bind {
                what: format!("upstream {}", u.service),
                addr: u.listen,
                source,
            })?;
            bound.upstreams.push((u.service.clone(), addr));
            let proxy = Arc::new(Outbound {
                metrics: metrics.listener(Direction::Outbound, u.service.as_str()),
                service: u.service.clone(),
                identity: u.identity.clone(),
                tls: tls.clone(),
                discovery: discovery_rx.clone(),
                settings: config.proxy.clone(),
                balancer: Balancer::default(),
                pool: HopPool::default(),
                mux: MuxPool::default(),
            });
            info!(service = %u.service, listen = %addr, identity = %u.identity, "outbound listening");
            tokio::spawn(proxy.run(listener, life.clone()));
        }

        // Stops the background tasks (certificate refresh, admin endpoint) at shutdown.
        let admin_stop = tokio_util::sync::CancellationToken::new();
        tls.spawn_refresh(admin_stop.clone());
        if let Some(r) = &renewer {
            r.spawn(tls.clone(), admin_stop.clone());
            r.spawn_revocation_poll(tls.clone(), admin_stop.clone());
        }
        let locked: Vec<_> = config.services.iter().filter_map(|s| s.guarded()).collect();
        if !locked.is_empty() {
            tokio::spawn(keep_lockdown(
                locked,
                policy_rx.clone(),
                lockdown_counters.clone(),
                admin_stop.clone(),
            ));
        }
        if let Some(listener) = &admin {
            bound.admin = listener.local_addr().ok();
        }
        let parts = Arc::new(Parts {
            config,
            bound,
            tls,
            discovery,
            discovery_rx,
            policy,
            policy_rx,
            recorder: recorder_handle,
            metrics,
            lockdown: lockdown_counters,
            renewer,
            shipper: shipper.as_ref().map(|s| (s.store().clone(), s.stats().clone())),
        });
        if let Some(listener) = admin {
            let listen = parts.bound.admin.map(|a| a.to_string()).unwrap_or_default();
            info!(%listen, "admin endpoint listening (/metrics, /status)");
            tokio::spawn(admin::serve(listener, parts.clone(), admin_stop.clone()));
        }
        Ok(Agent { parts, life, recorder, shipper, decisions, admin_stop })
    }

    /// Where the listeners are.
    pub fn bound(&self) -> &Bound {
        &self.parts.bound
    }

    /// The metrics exposition, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.parts.metrics.encode()
    }

    /// The status document, as `/status` serves it.
    pub fn status(&self) -> serde_json::Value {
        admin::status(&self.parts)
    }

    /// Re-reads certificates, policy and discovery now, and reopens the decision log (SIGHUP).
    /// Bad new material is refused and logged; the old stays in use.
    pub fn reload(&self) {
        self.decisions.reopen();
        reload(&self.parts);
    }

    /// [`Agent::reload`] on a blocking thread: it reads files and parses certificates, which the
    /// data plane's thread must never wait on.
    pub async fn reload_off_thread(&self) {
        self.decisions.reopen();
        let parts = self.parts.clone();
        if tokio::task::spawn_blocking(move || reload(&parts)).await.is_err() {
            error!("reload did not finish");
        }
    }

    /// Stops accepting, drains open connections up to the configured deadline, then flushes the
    /// recorder and the decision log. What the ledger could not take is logged (see [`Agent::stop`]).
    pub async fn shutdown(self) {
        let _ = self.stop().await;
    }

    /// Like [`Agent::shutdown`], returning what the ledger could not take, and where it was kept.
    pub async fn stop(self) -> Result<(), crate::ledger::Unwritten> {
        let forced = self.life.drain(self.parts.config.proxy.drain_timeout).await;
        if forced > 0 {
            warn!(connections = forced, "drain deadline passed; closed the remaining connections");
        }
        self.admin_stop.cancel();
        let recorder = self.recorder;
        let shipper = self.shipper;
        let decisions = self.decisions;
        // Flushing writes files: keep it off the async threads. The shipper goes last, so its
        // final attempt sees the recorder's final batch.
        let result = tokio::task::spawn_blocking(move || {
            let result = recorder.close(true);
            decisions.shutdown();
            if let Some(s) = shipper {
                s.shutdown();
            }
            result
        })
        .await
        .unwrap_or(Ok(()));
        match &result {
            Ok(()) => info!("agent stopped"),
            Err(e) => {
                error!(
                    connections = e.connections,
                    "agent stopped with connection records the ledger did not take"
                )
            }
        }
        result
    }

    /// Reopens the decision log after a rotation (SIGUSR1).
    pub fn reopen_logs(&self) {
        self.decisions.reopen();
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP and reopening the decision log on
    /// SIGUSR1, then shuts down cleanly.
    pub async fn run_until_signalled(self) -> Result<(), RunError> {
        let signals = Signals::install().map_err(RunError::Signals)?;
        self.run_until(signals).await
    }

    /// Serves until `signals` brings SIGTERM or SIGINT, reloading on SIGHUP and reopening the
    /// decision log on SIGUSR1, then shuts down.
    pub async fn run_until(self, mut signals: Signals) -> Result<(), RunError> {
        info!("agent ready: SIGHUP reloads, SIGUSR1 reopens the decision log, SIGTERM drains");
        loop {
            tokio::select! {
                _ = signals.term.recv() => { info!("SIGTERM: draining"); break }
                _ = signals.int.recv() => { info!("SIGINT: draining"); break }
                _ = signals.hup.recv() => {
                    info!("SIGHUP: reloading certificates, policy and discovery");
                    self.reload_off_thread().await;
                }
                _ = signals.usr1.recv() => { info!("SIGUSR1: reopening the decision log"); self.reopen_logs() }
            }
        }
        self.stop().await.map_err(RunError::Unwritten)
    }
}

/// The agent's signal handlers. Installed before the agent starts, so a SIGHUP that arrives while
/// it binds its listeners is a reload, not the default action (the end of the process).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

fn reload(parts: &Parts) {
    if let Err(e) = parts.tls.reload() {
        error!(error = %e, "certificate reload refused; keeping the current certificates");
    }
    parts.policy.reload_now();
    parts.discovery.reload_now();
    declare_upstreams(&parts.config, &parts.recorder);
}

/// Warns, once per service, when lockdown covers only the app's address while something listens
/// on every address at its port (checked each time the rules are applied).
async fn warn_uncovered(
    services: &[crate::lockdown::Guarded],
    warned: &mut std::collections::BTreeSet<ServiceName>,
) {
    let svcs = services.to_vec();
    let Ok(uncovered) = tokio::task::spawn_blocking(move || crate::lockdown::uncovered(&svcs)).await else {
        return;
    };
    for s in uncovered {
        if warned.insert(s.service.clone()) {
            warn!(
                service = %s.service,
                app = %s.app,
                "lockdown covers only the app's address, but a socket listens on every address at port {}: \
                 the other addresses stay open; set app = \"0.0.0.0:{}\" to lock the port on every address",
                s.app.port(),
                s.app.port(),
            );
        }
    }
}

/// Raises the open-files limit to the hard limit and warns when the configured connections do not
/// fit in it: past it, accepts fail (and back off) while `max_connections` says they should not.
fn check_open_files(config: &Config) {
    let listeners = config.services.len() + config.upstreams.len();
    let needed = limits::needed(listeners, config.proxy.max_connections);
    match limits::raise_nofile() {
        Ok(l) => {
            if l.soft > l.before {
                info!(from = l.before, to = l.soft, "raised the open-files limit to the hard limit");
            }
            if needed > l.soft {
                warn!(
                    limit = l.soft,
                    needed,
                    listeners,
                    max_connections = config.proxy.max_connections,
                    "the open-files limit is below 2 x max_connections per listener; raise LimitNOFILE \
                     (or the hard limit) or lower [proxy] max_connections"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// Keeps the nftables lockdown rules in step with the policy's modes, and the counters fresh.
/// Failures (no nft, no privilege) are logged; the data plane keeps working without lockdown.
async fn keep_lockdown(
    services: Vec<crate::lockdown::Guarded>,
    mut policy_rx: tokio::sync::watch::Receiver<Arc<crate::policy::Policy>>,
    counters: Arc<std::sync::Mutex<Vec<crate::lockdown::ServiceCounter>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    // The services are fixed for the agent's life, so their modes say which rules are in place.
    // Counters of services no longer locked down can only predate this agent: the first
    // application deletes them.
    let mut applied: Option<Vec<crate::policy::Mode>> = None;
    let mut warned = std::collections::BTreeSet::new();
    loop {
        let policy = policy_rx.borrow_and_update().clone();
        let states: Vec<_> = services.iter().map(|s| (s.clone(), policy.mode(s.service.as_str()))).collect();
        let modes: Vec<_> = states.iter().map(|(_, mode)| *mode).collect();
        if applied.as_ref() != Some(&modes) {
            match tokio::task::spawn_blocking(move || crate::lockdown::apply(&states)).await {
                Ok(Ok(())) => {
                    info!("lockdown rules applied (nftables table inet cordon)");
                    applied = Some(modes);
                    warn_uncovered(&services, &mut warned).await;
                }
                Ok(Err(e)) => error!(error = %e, "lockdown not applied; the proxies keep working without it"),
                Err(_) => {}
            }
        }
        let svcs = services.clone();
        if let Ok(Ok(c)) = tokio::task::spawn_blocking(move || crate::lockdown::counters(&svcs)).await {
            *counters.lock().unwrap_or_else(|p| p.into_inner()) = c;
        }
        tokio::select! {
            changed = policy_rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Records, for each identity this host runs, the upstreams it is configured to dial (none for
/// one that only serves): the intent `cordon propose` and the preflight weigh against traffic.
fn declare_upstreams(config: &Config, recorder: &RecorderHandle) {
    for identity in config.identities() {
        let services: Vec<String> = config
            .upstreams
            .iter()
            .filter(|u| u.identity == identity)
            .map(|u| u.service.to_string())
            .collect();
        if !recorder.declare(identity.as_str(), DeclarationOrigin::AgentConfig, &services) {
            warn!(%identity, "the ledger writer is busy; the declared upstreams are recorded at the next reload");
        }
    }
}
