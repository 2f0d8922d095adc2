//! How long a full discovery rebuild takes for a large fleet: 5,000 service files of three
//! backends each (a mix of mTLS and plaintext), read, parsed and indexed by `load_dir`, which is
//! what the watcher does on every change. Prints one line:
//! `discovery_rebuild_5000_services: X ms` (the median of several runs).

use std::io::Write;
use std::time::Instant;

const SERVICES: usize = 5000;
const RUNS: usize = 7;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    for i in 0..SERVICES {
        let (a, b) = (i / 250, i % 250);
        let backends: Vec<String> = (1..=3)
            .map(|n| {
                let labels = if n < 3 {
                    format!(r#"{{"az":"us-east-1{n}","cordon_mtls_port":"14000"}}"#)
                } else {
                    "null".to_string()
                };
                format!(
                    r#"{{"name":"svc-{i}-{n}","host":"10.{a}.{b}.{n}","port":8080,"id":{n},"weight":null,"haproxy_server_options":null,"labels":{labels}}}"#
                )
            })
            .collect();
        std::fs::write(tmp.path().join(format!("svc-{i}.json")), format!("[{}]", backends.join(",")))?;
    }

    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let snapshot = cordon_discovery::load_dir(tmp.path())?;
        times.push(started.elapsed());
        if snapshot.service_count() != SERVICES || !snapshot.problems().is_empty() {
            return Err(format!(
                "rebuild read {} services, {:?}",
                snapshot.service_count(),
                snapshot.problems()
            )
            .into());
        }
    }
    times.sort();
    let median = times[RUNS / 2];
    writeln!(
        std::io::stdout().lock(),
        "discovery_rebuild_5000_services: {:.1} ms",
        median.as_secs_f64() * 1e3
    )?;
    Ok(())
}
