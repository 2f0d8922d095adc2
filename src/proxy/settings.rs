//! `[proxy]` in cordon.toml: the data plane's limits and timeouts, as written ([`RawProxy`]) and
//! validated ([`ProxySettings`]). The agent's config composes it; nothing here reads files.

use std::time::Duration;

use serde::Deserialize;

use crate::pki::HopOffer;

/// The `[proxy]` section as written; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    connect_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_s: Option<u64>,
    drain_timeout_s: Option<u64>,
    max_connections: Option<usize>,
    close_denied_on_enforce: Option<bool>,
    reuse_connections: Option<bool>,
    hop_protocol: Option<String>,
    threads: Option<usize>,
    recorder_capacity: Option<usize>,
    flush_interval_ms: Option<u64>,
}

/// Data plane limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Deadline for a TCP connect to a backend before failing over to the next one.
    pub connect_timeout: Duration,
    /// While learning, how long the inbound waits for a caller's first byte before taking it for
    /// a plaintext client of a server-first protocol (TLS clients speak at once).
    pub first_byte_timeout: Duration,
    /// Deadline for a TLS handshake (and the first byte on inbound), so a silent peer cannot hold
    /// a connection slot.
    pub handshake_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Connections open at once per listener; past it, accepts wait.
    pub max_connections: usize,
    /// Close open connections of callers that a new policy denies in enforce mode.
    pub close_denied_on_enforce: bool,
    /// Carry app connections one after another over each mTLS connection between two cordon
    /// agents (`proxy::hop`), instead of a TCP and TLS handshake between them for each one.
    pub reuse_connections: bool,
    /// Which reusable hop the outbound offers (an inbound agrees to either).
    pub hop_protocol: HopProtocol,
    /// Threads that run the data plane. One (the default) is a single-threaded runtime: the
    /// lowest latency and CPU per connection, for the usual host whose proxy needs less than a
    /// core. More lets one agent use several cores for bulk traffic.
    pub threads: usize,
    /// Recorder channel capacity; a full channel drops (and counts) events.
    pub recorder_capacity: usize,
    /// How often the recorder writes a batch to the ledger.
    pub flush_interval: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(1000),
            first_byte_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_millis(5000),
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            close_denied_on_enforce: true,
            reuse_connections: true,
            hop_protocol: HopProtocol::Framed,
            threads: 1,
            recorder_capacity: 16_384,
            flush_interval: Duration::from_millis(1000),
        }
    }
}

impl ProxySettings {
    /// Validates `raw` over the defaults. Every problem is pushed onto `problems`, naming its
    /// field; a refused value keeps its default.
    pub fn validate(raw: RawProxy, problems: &mut Vec<String>) -> ProxySettings {
        let mut proxy = ProxySettings::default();
        let mut positive = |field: &str, v: Option<u64>| -> Option<u64> {
            match v {
                Some(0) => {
                    problems.push(format!("proxy.{field}: must be greater than 0"));
                    None
                }
                v => v,
            }
        };
        let count = |v: Option<usize>| v.map(|v| v as u64);
        if let Some(v) = positive("connect_timeout_ms", raw.connect_timeout_ms) {
            proxy.connect_timeout = Duration::from_millis(v);
        }
        if let Some(v) = positive("handshake_timeout_ms", raw.handshake_timeout_ms) {
            proxy.handshake_timeout = Duration::from_millis(v);
        }
        if let Some(v) = positive("first_byte_timeout_ms", raw.first_byte_timeout_ms) {
            proxy.first_byte_timeout = Duration::from_millis(v);
        }
        if let Some(v) = positive("idle_timeout_s", raw.idle_timeout_s) {
            proxy.idle_timeout = Duration::from_secs(v);
        }
        if let Some(v) = positive("max_connections", count(raw.max_connections)) {
            proxy.max_connections = v as usize;
        }
        if let Some(v) = positive("recorder_capacity", count(raw.recorder_capacity)) {
            proxy.recorder_capacity = v as usize;
        }
        if let Some(v) = positive("flush_interval_ms", raw.flush_interval_ms) {
            proxy.flush_interval = Duration::from_millis(v);
        }
        if let Some(v) = positive("threads", count(raw.threads)) {
            proxy.threads = v as usize;
        }
        if let Some(v) = raw.drain_timeout_s {
            proxy.drain_timeout = Duration::from_secs(v);
        }
        if let Some(v) = raw.close_denied_on_enforce {
            proxy.close_denied_on_enforce = v;
        }
        if let Some(v) = raw.reuse_connections {
            proxy.reuse_connections = v;
        }
        match raw.hop_protocol.as_deref() {
            None => {}
            Some("cordon-hop") => proxy.hop_protocol = HopProtocol::Framed,
            Some("h2") => proxy.hop_protocol = HopProtocol::H2,
            Some(other) => problems.push(format!(
                "proxy.hop_protocol: {other:?} is not a hop protocol (\"cordon-hop\" or \"h2\")"
            )),
        }
        proxy
    }

    /// The hops the outbound offers a backend's agent.
    pub fn hop_offer(&self) -> HopOffer {
        match (self.reuse_connections, self.hop_protocol) {
            (false, _) => HopOffer::None,
            (true, HopProtocol::Framed) => HopOffer::Framed,
            (true, HopProtocol::H2) => HopOffer::H2,
        }
    }
}

/// `[proxy] hop_protocol`: how app connections ride a reusable mTLS connection between agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopProtocol {
    /// `"cordon-hop"`: one app connection at a time per mTLS connection (`proxy::hop`).
    Framed,
    /// `"h2"`: many at once, as HTTP/2 CONNECT streams (`proxy::hop::mux`).
    H2,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ProxySettings, Vec<String>) {
        let raw: RawProxy = toml::from_str(text).expect("valid TOML");
        let mut problems = Vec::new();
        (ProxySettings::validate(raw, &mut problems), problems)
    }

    #[test]
    fn an_empty_section_is_the_defaults() {
        assert_eq!(parse(""), (ProxySettings::default(), vec![]));
    }

    #[test]
    fn values_are_taken_and_zeros_are_refused_naming_each_field() {
        let (p, problems) =
            parse("connect_timeout_ms = 250\nthreads = 2\nreuse_connections = false\ndrain_timeout_s = 0");
        assert_eq!(p.connect_timeout, Duration::from_millis(250));
        assert_eq!(p.threads, 2);
        assert!(!p.reuse_connections);
        assert_eq!(p.drain_timeout, Duration::ZERO, "no drain is a valid choice");
        assert!(problems.is_empty(), "{problems:?}");

        let (p, problems) = parse("max_connections = 0\nhandshake_timeout_ms = 0\nflush_interval_ms = 0");
        assert_eq!(
            problems,
            [
                "proxy.handshake_timeout_ms: must be greater than 0",
                "proxy.max_connections: must be greater than 0",
                "proxy.flush_interval_ms: must be greater than 0",
            ]
        );
        assert_eq!(p, ProxySettings::default(), "a refused value keeps its default");
    }

    #[test]
    fn the_hop_protocol_is_one_of_two_and_reuse_off_offers_none() {
        let (p, problems) = parse("hop_protocol = \"h2\"");
        assert_eq!((p.hop_offer(), problems.len()), (HopOffer::H2, 0));
        assert_eq!(ProxySettings::default().hop_offer(), HopOffer::Framed);
        let (p, _) = parse("hop_protocol = \"h2\"\nreuse_connections = false");
        assert_eq!(p.hop_offer(), HopOffer::None);
        let (p, problems) = parse("hop_protocol = \"quic\"");
        assert_eq!(
            problems,
            ["proxy.hop_protocol: \"quic\" is not a hop protocol (\"cordon-hop\" or \"h2\")"]
        );
        assert_eq!(p.hop_protocol, HopProtocol::Framed, "a refused value keeps its default");
    }
}
