//! The Prometheus rules in deploy/prometheus name cordon's real metrics: a signing service and
//! two agents run (one enrolled with the service, shipping to a store that does not answer,
//! refusing a caller in enforce mode and recording another as would-deny in learn mode), their
//! /metrics are scraped, and every `cordon_*` series the rules, their unit tests and the Grafana
//! dashboard (deploy/grafana/cordon.json) use must be there with its labels. A renamed metric or
//! label fails here, where promtool alone would happily test rules against series that no
//! longer exist. (The rules' own behaviour is tested by `promtool test rules`,
//! scripts/alerts-test.sh.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use cordon::agent::Agent;
use cordon::agent::config::Config;
use cordon::pki::issuer::{ServeOptions, Service};
use support::*;

/// Metric name -> every label-name set it was scraped with.
type Seen = BTreeMap<String, BTreeSet<BTreeSet<String>>>;

fn scraped(texts: &[String]) -> Seen {
    let mut seen = Seen::new();
    for line in texts.iter().flat_map(|t| t.lines()).filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).expect("a sample line");
        let mut labels = BTreeSet::new();
        if line[end..].starts_with('{') {
            // name="value" pairs; values may hold escaped quotes, commas and braces.
            let mut chars = line[end + 1..].chars();
            loop {
                let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
                let name = name.trim_start_matches(',').trim();
                if name.is_empty() || name.starts_with('}') {
                    break;
                }
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                labels.insert(name.to_owned());
            }
        }
        seen.entry(line[..end].to_owned()).or_default().insert(labels);
    }
    seen
}

/// Every `cordon_*` selector in `text`, with the label names it matches on.
fn selectors(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("cordon_") {
        let prev = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        rest = &tail[end..];
        if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut labels = BTreeSet::new();
        if let Some(body) = rest.strip_prefix('{') {
            let close = body.find('}').expect("a closed selector");
            for matcher in body[..close].split(',') {
                let name: String =
                    matcher.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    labels.insert(name);
                }
            }
        }
        out.push((tail[..end].to_owned(), labels));
    }
    out
}

/// An agent config enrolling with the signing service at `signer`, shipping to `store`.
fn enrolled_config(
    world: &World,
    host: &str,
    signer: &str,
    token: &Path,
    app: std::net::SocketAddr,
    store: &str,
) -> Config {
    let dir = world.path(&format!("hosts/{host}"));
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::copy(world.ca().join("ca.pem"), dir.join("bundle.pem")).unwrap();
    let mut text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\ndiscovery_dir = \"{}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\n\
         admin = \"127.0.0.1:0\"\nhost = \"{host}\"\n\
         [tls]\nca = \"{}\"\ndir = \"{}\"\nissuer = \"{signer}\"\njoin_token_file = \"{}\"\n\
         [fleet]\nstore = \"{store}\"\nship_interval_ms = 100\n",
        world.discovery().display(),
        world.policy().display(),
        dir.join("state").display(),
        dir.join("bundle.pem").display(),
        dir.join("tls").display(),
        token.display(),
    );
    for name in ["db", "cache"] {
        text += &format!("[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n");
    }
    let path = world.path(&format!("{host}.toml"));
    std::fs::write(&path, &text).unwrap();
    Config::parse(&text, &path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_their_tests_use_is_in_a_live_scrape() {
    let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let rules = std::fs::read_to_string(rules_dir.join("cordon-rules.yml")).unwrap();
    let unit = std::fs::read_to_string(rules_dir.join("tests/cordon-rules.test.yml")).unwrap();
    let dashboard = std::fs::read_to_string(rules_dir.join("../grafana/cordon.json")).unwrap();

    let world = World::new();
    world.write_policy("[modes]\n\"*\" = \"learn\"\ndb = \"enforce\"\n");
    let options = ServeOptions {
        dir: world.ca(),
        log: world.path("issuance.jsonl"),
        leaf_ttl: Duration::from_secs(3600),
        audit: None,
        limits: cordon::pki::issuer::server::DEFAULT_LIMITS,
    };
    let signer = Service::open(options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let signer_url = format!("https://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(signer.clone().run(listener, stop.clone()));
    let token = support::signer::token(&world, "db-host", &["db", "cache"], "1h");
    let app = EchoApp::start().await;
    // An ingest service that is not there: the shipper keeps failing, and says so in /metrics.
    let store = format!("https://127.0.0.1:{}", dead_port().await);
    let db = Agent::start(enrolled_config(&world, "db-host", &signer_url, &token, app.addr, &store))
        .await
        .unwrap();
    for name in ["db", "cache"] {
        let port = db.bound().service(name).unwrap().port();
        world.write_discovery(name, &[(localhost(), app.addr.port(), Some(port))]);
    }
    world.issue("web");
    let web = Agent::start(world.config("web-host", &[], &[("db", "web"), ("cache", "web")])).await.unwrap();
    // Refused by db (enforce, no intention), let in by cache (learn) as would-deny.
    let _ = round_trip(web.bound().upstream("db").unwrap(), b"let me in").await;
    assert_eq!(round_trip(web.bound().upstream("cache").unwrap(), b"hi").await.unwrap(), b"hi");
    // Plaintext straight to db's inbound port: refused before any handshake, and counted.
    let _ = round_trip(db.bound().service("db").unwrap(), b"GET / HTTP/1.0\r\n\r\n").await;
    eventually("the verdicts and the refused plaintext are counted", Duration::from_secs(20), || async {
        let text = db.metrics_text();
        text.contains("outcome=\"denied\"")
            && text.contains("outcome=\"would-deny\"")
            && text.contains("cordon_handshake_failures_total{")
    })
    .await;

    let seen = scraped(&[db.metrics_text(), web.metrics_text(), signer.metrics_text()]);
    stop.cancel();
    web.shutdown().await;
    db.shutdown().await;

    let used = [selectors(&rules), selectors(&unit), selectors(&dashboard)];
    assert!(used.iter().all(|u| u.len() >= 10), "found the selectors: {used:?}");
    let mut missing = Vec::new();
    for (name, labels) in used.iter().flatten() {
        // Prometheus adds these two to every series it scrapes.
        let labels: BTreeSet<String> =
            labels.iter().filter(|l| *l != "instance" && *l != "job").cloned().collect();
        match seen.get(name) {
            None => missing.push(format!("{name}: not in any scrape")),
            Some(sets) if !sets.iter().any(|s| labels.is_subset(s)) => {
                missing.push(format!("{name}: labels {labels:?}, scraped with {sets:?}"))
            }
            Some(_) => {}
        }
    }
    // A unit test's series must be shaped exactly as scraped: the same label names, no fewer.
    for line in unit.lines().filter(|l| l.trim_start().starts_with("- series:")) {
        for (name, labels) in selectors(line) {
            let labels: BTreeSet<String> =
                labels.into_iter().filter(|l| l != "instance" && l != "job").collect();
            if seen.get(&name).is_some_and(|sets| !sets.contains(&labels)) {
                missing.push(format!(
                    "{name}: unit-test series labelled {labels:?}, scraped with {:?}",
                    seen[&name]
                ));
            }
        }
    }
    assert!(missing.is_empty(), "the rules use what cordon does not export:\n  {}", missing.join("\n  "));
}

#[test]
fn scrapes_are_read_with_and_without_labels() {
    let seen =
        scraped(&["# TYPE a counter\na_total{} 1\nc 4\n".to_owned(), r#"b{x="1,\"}",y="2"} 3"#.to_owned()]);
    let names =
        |l: &[&str]| -> BTreeSet<BTreeSet<String>> { [l.iter().map(|s| s.to_string()).collect()].into() };
    assert_eq!(seen["a_total"], names(&[]));
    assert_eq!(seen["b"], names(&["x", "y"]));
    assert_eq!(seen["c"], names(&[]));
}

#[test]
fn selectors_are_found_with_their_labels_and_recorded_names_are_not() {
    let found = selectors(
        "sum by (d) (rate(cordon_verdicts_total{outcome=\"denied\", mode=~\"e.*\"}[5m])) / cordon:x:rate5m + my_cordon_y",
    );
    let labels: BTreeSet<String> = ["mode", "outcome"].map(String::from).into();
    assert_eq!(found, vec![("cordon_verdicts_total".to_owned(), labels)]);
}
