//! Prometheus metrics: the counters the data plane moves, and the gauges read from other parts'
//! own atomics at scrape time.
//!
//! Label cardinality stays bounded: services and identities are labels, caller addresses never are
//! (an unknown plaintext caller is the source `unknown`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::base::{Identified, Mode, Outcome};
use crate::pki::RejectReason;

/// Which proxy a metric is about.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// In front of a local app, taking mTLS from other hosts.
    Inbound,
    /// On a local port, dialling other hosts.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    direction: &'static str,
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: &'static str,
    service: String,
    /// `to_destination` (caller to app) or `to_source` (app to caller).
    flow: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    destination: String,
    source: String,
    mode: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    direction: &'static str,
    service: String,
    reason: &'static str,
}

/// The agent's metrics. Built once at start; the families inside are cheap to clone.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ServiceLabels, Counter>,
    closed: Family<ServiceLabels, Counter>,
    open: Family<ServiceLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    handshake_failures: Family<RejectLabels, Counter>,
    connect_failures: Family<ServiceLabels, Counter>,
    failovers: Family<ServiceLabels, Counter>,
    no_backend: Family<ServiceLabels, Counter>,
    policy_closed: Family<ServiceLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    hop_reused: Family<ServiceLabels, Counter>,
    hop_retried: Family<ServiceLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    direction: &'static str,
    service: String,
    /// `full` or `resumed`.
    kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cordon");
        let m = Self {
            opened: Family::default(),
            closed: Family::default(),
            open: Family::default(),
            bytes: Family::default(),
            verdicts: Family::default(),
            handshake_failures: Family::default(),
            connect_failures: Family::default(),
            failovers: Family::default(),
            no_backend: Family::default(),
            policy_closed: Family::default(),
            handshakes: Family::default(),
            hop_reused: Family::default(),
            hop_retried: Family::default(),
            registry: Registry::default(),
        };
        registry.register("connections_opened", "Connections accepted", m.opened.clone());
        registry.register("connections_closed", "Connections finished", m.closed.clone());
        registry.register("connections_open", "Connections open now", m.open.clone());
        registry.register("bytes", "Bytes relayed", m.bytes.clone());
        registry.register(
            "verdicts",
            "Inbound decisions: allowed, denied (enforce) and would-deny (learn)",
            m.verdicts.clone(),
        );
        registry.register(
            "handshake_failures",
            "Refused handshakes and plaintext, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "backend_connect_failures",
            "Failed dials to a backend (each one tried)",
            m.connect_failures.clone(),
        );
        registry.register(
            "backend_failovers",
            "Connections that succeeded on a later backend after a failure",
            m.failovers.clone(),
        );
        registry.register(
            "no_backend",
            "Local connections refused because no backend was reachable",
            m.no_backend.clone(),
        );
        registry.register(
            "policy_closed",
            "Open connections closed because a new policy denies them in enforce mode",
            m.policy_closed.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes: full, or resumed (no certificates or signatures)",
            m.handshakes.clone(),
        );
        registry.register(
            "hop_reused",
            "Connections carried on an mTLS connection between two agents that had already carried one",
            m.hop_reused.clone(),
        );
        registry.register(
            "hop_retried",
            "Connections sent again on another mTLS connection because the backend's agent closed the first before reading them",
            m.hop_retried.clone(),
        );
        Self { registry, ..m }
    }

    /// Adds a source of values read at scrape time (recorder, reloads, certificates).
    pub fn register_collector(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// The exposition `/metrics` serves ([`crate::exposition::CONTENT_TYPE`]): these metrics,
    /// the build and the process metrics.
    pub fn encode(&self) -> String {
        crate::exposition::encode(&self.registry)
    }

    /// The per-listener handles, resolved once so the per-connection path does no label lookups.
    pub fn listener(self: &Arc<Self>, direction: Direction, service: &str) -> ListenerMetrics {
        let labels = ServiceLabels { direction: direction.as_str(), service: service.to_string() };
        let bytes = |flow| BytesLabels { direction: direction.as_str(), service: service.to_string(), flow };
        // One statement per handle: `get_or_create` returns a read guard, and a second call on
        // the same family inside one expression would wait on it forever.
        let opened = self.opened.get_or_create(&labels).clone();
        let closed = self.closed.get_or_create(&labels).clone();
        let open = self.open.get_or_create(&labels).clone();
        let bytes_to_destination = self.bytes.get_or_create(&bytes("to_destination")).clone();
        let bytes_to_source = self.bytes.get_or_create(&bytes("to_source")).clone();
        let connect_failures = self.connect_failures.get_or_create(&labels).clone();
        let failovers = self.failovers.get_or_create(&labels).clone();
        let no_backend = self.no_backend.get_or_create(&labels).clone();
        let policy_closed = self.policy_closed.get_or_create(&labels).clone();
        let handshake =
            |kind| HandshakeLabels { direction: direction.as_str(), service: service.to_string(), kind };
        let full_handshakes = self.handshakes.get_or_create(&handshake("full")).clone();
        let resumed_handshakes = self.handshakes.get_or_create(&handshake("resumed")).clone();
        let hop_reused = self.hop_reused.get_or_create(&labels).clone();
        let hop_retried = self.hop_retried.get_or_create(&labels).clone();
        ListenerMetrics {
            opened,
            closed,
            open,
            bytes_to_destination,
            bytes_to_source,
            connect_failures,
            failovers,
            no_backend,
            policy_closed,
            full_handshakes,
            resumed_handshakes,
            hop_reused,
            hop_retried,
            metrics: self.clone(),
            direction,
            service: service.to_string(),
        }
    }
}

/// One listener's metrics.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub opened: Counter,
    pub closed: Counter,
    pub open: Gauge,
    pub bytes_to_destination: Counter,
    pub bytes_to_source: Counter,
    pub connect_failures: Counter,
    pub failovers: Counter,
    pub no_backend: Counter,
    pub policy_closed: Counter,
    pub full_handshakes: Counter,
    pub resumed_handshakes: Counter,
    pub hop_reused: Counter,
    pub hop_retried: Counter,
    metrics: Arc<Metrics>,
    direction: Direction,
    service: String,
}

impl ListenerMetrics {
    /// Counts an inbound decision. Unknown plaintext callers are labelled `unknown`, never by IP.
    pub fn verdict(&self, source: &str, identified: Identified, mode: Mode, outcome: Outcome) {
        let source = if identified == Identified::Unknown { "unknown" } else { source }.to_string();
        self.metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                destination: self.service.clone(),
                source,
                mode: mode.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts a completed handshake by kind.
    pub fn handshake(&self, kind: Option<rustls::HandshakeKind>) {
        match kind {
            Some(rustls::HandshakeKind::Resumed) => self.resumed_handshakes.inc(),
            _ => self.full_handshakes.inc(),
        };
    }

    /// Counts a refused handshake (or refused plaintext) by reason.
    pub fn handshake_failure(&self, reason: RejectReason) {
        self.metrics
            .handshake_failures
            .get_or_create(&RejectLabels {
                direction: self.direction.as_str(),
                service: self.service.clone(),
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// One scraped sample: its labels and its value.
pub type Sample = (Vec<(&'static str, String)>, f64);

/// A collector of values computed at scrape time by a closure: `(name, help, kind, samples)`.
pub struct ScrapeCollector {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    read: Box<dyn Fn() -> Vec<Sample> + Send + Sync>,
}

/// Whether a scraped value only grows.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

impl ScrapeCollector {
    pub fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        read: impl Fn() -> Vec<Sample> + Send + Sync + 'static,
    ) -> Self {
        Self { name, help, kind, read: Box::new(read) }
    }
}

impl fmt::Debug for ScrapeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeCollector").field("name", &self.name).finish()
    }
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let samples = (self.read)();
        let metric_type = match self.kind {
            Kind::Counter => ConstCounter::new(0u64).metric_type(),
            Kind::Gauge => ConstGauge::new(0i64).metric_type(),
        };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, metric_type)?;
        for (labels, value) in samples {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let metric = family.encode_family(&labels)?;
            match self.kind {
                // Whole counts print as integers; seconds of CPU and the like keep their
                // fraction (a counter of 1.4 s is not 1).
                Kind::Counter if value.fract() == 0.0 || !value.is_finite() => {
                    ConstCounter::new(value.max(0.0) as u64).encode(metric)?
                }
                Kind::Counter => ConstCounter::new(value.max(0.0)).encode(metric)?,
                Kind::Gauge => ConstGauge::new(value).encode(metric)?,
            }
        }
        Ok(())
    }
}

/// Seconds since the revocation list in force was written by its source (or, when it does not
/// say, since this process put it in force).
pub(crate) fn revocations_age_seconds(tls: &crate::pki::TlsStore) -> f64 {
    let list = tls.revocations();
    let since = list.generated().unwrap_or_else(|| tls.revocation_watch().since());
    std::time::SystemTime::now().duration_since(since).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// What a process holding leaves shows about them, agent or ingest service alike (so that the
/// same alerts cover both): each identity's time to expiry, renewals with the signing service
/// by result, the revocation list's size and age, and its polls by result.
pub fn identity(
    tls: &Arc<crate::pki::TlsStore>,
    renewer: Option<&Arc<crate::pki::issuer::Renewer>>,
) -> Vec<ScrapeCollector> {
    use std::sync::atomic::Ordering;
    let mut out = Vec::new();
    let t = tls.clone();
    out.push(ScrapeCollector::new(
        "certificate_expiry_seconds",
        "Seconds until each identity's certificate expires (negative once expired)",
        Kind::Gauge,
        move || {
            let now = std::time::SystemTime::now();
            t.expiries()
                .into_iter()
                .map(|(id, at)| {
                    let left = match at.duration_since(now) {
                        Ok(d) => d.as_secs_f64(),
                        Err(e) => -e.duration().as_secs_f64(),
                    };
                    (vec![("identity", id.to_string())], left)
                })
                .collect()
        },
    ));
    let t = tls.clone();
    out.push(ScrapeCollector::new(
        "revocations",
        "Entries in the revocation list in force, by kind (serial, host)",
        Kind::Gauge,
        move || {
            let list = t.revocations();
            vec![
                (vec![("kind", "serial".into())], list.serial_count() as f64),
                (vec![("kind", "host".into())], list.host_count() as f64),
            ]
        },
    ));
    let t = tls.clone();
    out.push(ScrapeCollector::new(
        "revocations_age_seconds",
        "Seconds since the revocation list in force was written by its source",
        Kind::Gauge,
        move || vec![(vec![], revocations_age_seconds(&t))],
    ));
    if let Some(r) = renewer {
        let renewer = r.clone();
        out.push(ScrapeCollector::new(
            "certificate_renewals",
            "Renewals with the signing service, by identity and result",
            Kind::Counter,
            move || {
                renewer
                    .counts()
                    .into_iter()
                    .flat_map(|(id, ok, failed)| {
                        [
                            (vec![("identity", id.to_string()), ("result", "ok".into())], ok as f64),
                            (vec![("identity", id.to_string()), ("result", "failed".into())], failed as f64),
                        ]
                    })
                    .collect()
            },
        ));
        let r = r.clone();
        out.push(ScrapeCollector::new(
            "revocation_polls",
            "Polls of the signing service's revocation list, by result",
            Kind::Counter,
            move || {
                let s = r.poll_stats();
                vec![
                    (vec![("result", "ok".into())], s.ok.load(Ordering::Relaxed) as f64),
                    (vec![("result", "failed".into())], s.failed.load(Ordering::Relaxed) as f64),
                ]
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scraped_counters_keep_their_fraction_and_counts_stay_whole() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ScrapeCollector::new(
            "t_cpu_seconds",
            "CPU.",
            Kind::Counter,
            || vec![(vec![("thread", "a".to_string())], 1.4), (vec![("thread", "b".to_string())], 3.0)],
        )));
        let text = crate::exposition::encode(&registry);
        assert!(text.contains("t_cpu_seconds_total{thread=\"a\"} 1.4"), "{text}");
        assert!(text.contains("t_cpu_seconds_total{thread=\"b\"} 3\n"), "{text}");
    }
}
