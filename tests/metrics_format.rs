//! `/metrics` as Prometheus reads it: every endpoint (a real agent's admin endpoint, a real
//! signing service) sends OpenMetrics text under the OpenMetrics content type, and Prometheus'
//! own Python parser (`prometheus_client`, installed by .ci/run) reads every family of it.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{World, caller_host, db_host, round_trip};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A Python 3 that has `prometheus_client` (the shim on PATH may not see Debian's package).
fn python() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import prometheus_client.openmetrics.parser"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("python3 with prometheus_client (Debian: python3-prometheus-client; .ci/run installs it)")
}

/// Parses `body` with the parser `content_type` calls for; returns "name type" per family, or
/// the parser's error.
fn parse_like_prometheus(content_type: &str, body: &str) -> Result<Vec<String>, String> {
    let module = if content_type.starts_with("application/openmetrics-text") {
        "prometheus_client.openmetrics.parser"
    } else {
        "prometheus_client.parser"
    };
    let script = format!(
        "import sys\nfrom {module} import text_string_to_metric_families as parse\n\
         for f in parse(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n"
    );
    let mut child = Command::new(python())
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

/// The content type and body of a plain-HTTP GET, as a scraper sees them.
fn scrape_http(addr: std::net::SocketAddr) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: cordon\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (content_type(head), body.to_string())
}

fn content_type(head: &str) -> String {
    head.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

fn assert_families(what: &str, families: &[String], expected: &[&str]) {
    for e in expected {
        assert!(families.iter().any(|f| f.starts_with(e)), "{what}: no family {e:?} in {families:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_openmetrics_that_prometheus_parses() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    round_trip(web.bound().upstream("db").unwrap(), b"ping").await.unwrap();
    let admin = db.bound().admin.unwrap();
    let (ctype, body) = tokio::task::spawn_blocking(move || scrape_http(admin)).await.unwrap();
    assert_eq!(ctype, OPENMETRICS);
    let families = parse_like_prometheus(&ctype, &body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_families(
        "agent",
        &families,
        &[
            "cordon_connections_opened counter",
            "cordon_verdicts counter",
            "cordon_build info",
            "process_cpu_seconds counter",
            "process_resident_memory_bytes gauge",
            "process_open_fds gauge",
            "process_start_time_seconds gauge",
        ],
    );
    // The counters keep their sample names (dashboards read them).
    assert!(body.contains("cordon_connections_opened_total{"), "{body}");
    assert!(body.contains(&format!("cordon_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    db.shutdown().await;
    web.shutdown().await;
}

#[test]
fn the_signing_service_serves_the_same_format() {
    let world = World::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["ca", "serve", "--dir", world.ca().to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-D", "-", &format!("https://{addr}/metrics")])
        .output()
        .expect("curl");
    let _ = child.kill();
    let _ = child.wait();
    let resp = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = resp.split_once("\n\n").unwrap_or_else(|| panic!("{resp}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ctype = content_type(head);
    assert_eq!(ctype, OPENMETRICS);
    let families = parse_like_prometheus(&ctype, body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_families(
        "signing service",
        &families,
        &[
            "cordon_issuer_issued counter",
            "cordon_issuer_refused counter",
            "cordon_issuer_old_ca_leaves gauge",
            "cordon_build info",
            "process_cpu_seconds counter",
            "process_open_fds gauge",
        ],
    );
    assert!(body.contains("cordon_issuer_refused_total{reason="), "{body}");
}
