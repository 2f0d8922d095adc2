//! The one metrics exposition every cordon `/metrics` endpoint serves (the agent's admin endpoint
//! and the signing service): OpenMetrics text 1.0.0 under its own content type, with the build
//! and process metrics every Prometheus exporter has.
//!
//! This module owns the format and the metrics common to every process; what each endpoint
//! counts is registered by its owner ([`crate::metrics`], `pki::issuer`). The process metrics are
//! read from `/proc/self` at scrape time; off Linux they are absent, not zero.

use std::fmt;
use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output. Prometheus reads it as OpenMetrics; sending this body
/// as `text/plain; version=0.0.4` makes parsers of that older format misread every counter.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry`'s metrics, then `cordon_build_info` and the `process_*` metrics, then `# EOF`.
pub fn encode(registry: &Registry) -> String {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode_registry(&mut out, registry);
    let _ = encode_registry(&mut out, common());
    let _ = encode_eof(&mut out);
    out
}

/// The metrics every cordon process shows, registered once.
fn common() -> &'static Registry {
    static COMMON: OnceLock<Registry> = OnceLock::new();
    COMMON.get_or_init(|| {
        let mut r = Registry::default();
        r.register(
            "cordon_build",
            "The cordon build this process runs",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register_collector(Box::new(ProcessCollector));
        r
    })
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second in `/proc/<pid>/stat`: Linux fixes USER_HZ at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// What one scrape reads from `/proc`.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    virtual_memory_bytes: Option<f64>,
    resident_memory_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Self {
        let file = |p: &str| std::fs::read_to_string(p).ok();
        let stat = file("/proc/self/stat");
        let mut s =
            Self::parse(stat.as_deref(), file("/proc/stat").as_deref(), file("/proc/self/status").as_deref());
        s.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
        s.max_fds = file("/proc/self/limits").and_then(|l| max_open_files(&l));
        s
    }

    /// From `/proc/self/stat`, `/proc/stat` (boot time) and `/proc/self/status` (resident set).
    fn parse(stat: Option<&str>, system: Option<&str>, status: Option<&str>) -> Self {
        let mut s = Self::default();
        // The fields after the command name, which may itself hold spaces and parentheses.
        let fields: Vec<&str> = stat
            .and_then(|t| t.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Field 3 of proc(5), the state, is index 0 here.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            s.cpu_seconds = Some((utime + stime) / TICKS_PER_SECOND);
        }
        s.virtual_memory_bytes = field(23);
        let boot = system.and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            s.start_time_seconds = Some(boot + start / TICKS_PER_SECOND);
        }
        s.resident_memory_bytes = status.and_then(|t| {
            let kib = t.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?;
            kib.trim().parse::<f64>().ok().map(|k| k * 1024.0)
        });
        s
    }
}

/// The soft limit on open files from `/proc/self/limits`; `None` when unlimited.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = ProcessStats::read();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
            ("process_resident_memory_bytes", "Resident memory size in bytes", s.resident_memory_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", s.virtual_memory_bytes),
            ("process_open_fds", "Number of open file descriptors", s.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", s.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_field_by_field() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let stat = "4242 (cor don) R) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    1000 123456789 300 18446744073709551615";
        let s = ProcessStats::parse(
            Some(stat),
            Some("cpu 1 2 3\nbtime 1700000000\n"),
            Some("VmRSS:\t  2048 kB\n"),
        );
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(s.virtual_memory_bytes, Some(123_456_789.0));
        assert_eq!(s.resident_memory_bytes, Some(2_097_152.0));
        assert_eq!(ProcessStats::parse(None, None, Some("garbage")), ProcessStats::default());
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn the_exposition_ends_with_eof_and_carries_build_and_process_metrics() {
        let text = encode(&Registry::default());
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains(&format!("cordon_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION")))
        );
        for name in ["process_cpu_seconds_total ", "process_resident_memory_bytes ", "process_open_fds "] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }
}
