//! The ingest service against a real PostgreSQL: a fleet's agents ship through it while one
//! compromised host tries every forgery it can (rows about other services, other hosts' rows,
//! declarations for others or dated ahead, negative counters, unknown modes, huge names, pruning
//! with the ingest role), and the fleet's review is unchanged but for its own claims, flagged as
//! claimed. Skipped with a message where PostgreSQL is not installed, unless
//! `CORDON_REQUIRE_POSTGRES=1`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon::ledger::spool::{Batch, DECLARER, EDGE_HOUR, Values};
use cordon::pki::{Ca, HopOffer, ServiceName, TlsStore};
use cordon::store::identity::Identity;
use cordon::store::ingest::{Ingest, IngestOptions};
use cordon::store::wire::{self, Answer};
use cordon::store::{FleetSettings, ShipTo, StoreUrl};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use support::postgres::Postgres;
use support::{TRUST_DOMAIN, World, cordon, cordon_ok};

const INGEST_PASSWORD: &str = "ingest-secret";

/// Writes a leaf for `service` that names `host` (its one DNS SAN) into `out`.
fn issue_on_host(world: &World, service: &str, host: &str, out: &Path) {
    let ca = Ca::load(&world.ca()).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(format!("spiffe://{TRUST_DOMAIN}/service/{service}").try_into().unwrap()),
        SanType::DnsName(host.try_into().unwrap()),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = SystemTime::now();
    let not_after = now + Duration::from_secs(7 * 86_400);
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = not_after.into();
    let leaf = ca.sign(params, not_after).unwrap();
    ca.write_leaf(&leaf, out).unwrap();
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// An edge row: `(host, hour, source, destination, mode, connections)`.
type Row<'a> = (&'a str, i64, &'a str, &'a str, &'a str, i64);

/// Edge rows, each a few ms into its hour.
fn edges(rows: &[Row<'_>]) -> Batch {
    let t = |f: fn(&Row<'_>) -> String| Values::Text(rows.iter().map(f).collect());
    let n = |f: fn(&Row<'_>) -> i64| Values::Int(rows.iter().map(f).collect());
    Batch::from_columns(
        &EDGE_HOUR,
        vec![
            t(|r| r.0.into()),
            n(|r| r.1),
            t(|r| r.2.into()),
            t(|r| r.3.into()),
            t(|_| "mtls".into()),
            t(|r| r.4.into()),
            t(|_| "allow".into()),
            n(|r| r.5),
            n(|_| 100),
            n(|_| 100),
            n(|r| r.1 * 3_600_000 + 5),
            n(|r| r.1 * 3_600_000 + 9),
        ],
    )
}

fn declaration(host: &str, identity: &str, at_ms: i64, services: &str) -> Batch {
    Batch::from_columns(
        &DECLARER,
        vec![
            Values::Text(vec![host.into()]),
            Values::Text(vec![identity.into()]),
            Values::Text(vec!["cordon.toml".into()]),
            Values::Int(vec![at_ms]),
            Values::Text(vec![services.into()]),
        ],
    )
}

/// The fleet graph as JSON, read with the operator's credentials.
fn graph(url: &str) -> serde_json::Value {
    serde_json::from_str(&cordon_ok(&["graph", "--db", url, "--format", "json"])).unwrap()
}

/// The graph's edges and declarations without the claimed edges (which it must flag).
fn seen_part(g: &serde_json::Value) -> (Vec<serde_json::Value>, serde_json::Value) {
    let edges =
        g["edges"].as_array().unwrap().iter().filter(|e| e["evidence"] != "claimed").cloned().collect();
    (edges, g["declarations"].clone())
}

struct Fleet {
    pg: Postgres,
    world: World,
    operator: String,
    ingest_url: String,
    addr: String,
    ingest: Arc<Ingest>,
    _stop: cordon::proxy::Lifecycle,
}

/// PostgreSQL with `cordon store init`, a login in `cordon_ingest`, the service's leaf and the
/// ingest service running on 127.0.0.1:0.
async fn fleet(test: &str) -> Option<Fleet> {
    let pg = Postgres::start(test)?;
    pg.create_db("fleet");
    let operator = pg.url("fleet");
    let out = cordon_ok(&["store", "init", "--db", &operator]);
    assert!(out.contains("cordon_ingest"), "{out}");
    // Idempotent: a second init changes nothing and succeeds.
    cordon_ok(&["store", "init", "--db", &operator]);
    pg.psql(
        "fleet",
        &format!(
            "CREATE ROLE ingest_svc LOGIN PASSWORD '{INGEST_PASSWORD}'; GRANT cordon_ingest TO ingest_svc"
        ),
    );
    let pw = pg.password_file("ingest-password", INGEST_PASSWORD);
    let ingest_url =
        format!("postgres://ingest_svc@127.0.0.1:{}/fleet?password_file={}", pg.port, pw.display());
    let world = World::new();
    let tls_dir = world.path("store-tls");
    issue_on_host(&world, "cordon-store", "store-host", &tls_dir.join("cordon-store"));
    let options =
        IngestOptions { db: StoreUrl::parse(&ingest_url).unwrap(), ca: world.ca().join("ca.pem"), tls_dir };
    let identity = Arc::new(Identity::start(&options, None).await.unwrap());
    let ingest = Ingest::open(&options, identity).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let life = cordon::proxy::Lifecycle::new();
    tokio::spawn(cordon::store::ingest::serve(listener, ingest.clone(), life.clone()));
    Some(Fleet { pg, world, operator, ingest_url, addr, ingest, _stop: life })
}

impl Fleet {
    fn fleet_settings(&self) -> FleetSettings {
        FleetSettings {
            to: ShipTo::Ingest(self.addr.clone()),
            ship_interval: Duration::from_millis(50),
            batch_rows: 100,
        }
    }

    /// Sends `batch` with `identity`'s leaf (as issued on its host), as a compromised host can.
    async fn post_as(&self, identity: &str, batch: &Batch) -> Result<Answer, String> {
        let config = self.world.config(&format!("{identity}-host"), &[], &[("db", identity)]);
        let name = ServiceName::new(identity).unwrap();
        let tls = TlsStore::load(&config.tls, &config.trust_domain, std::slice::from_ref(&name)).unwrap();
        let client = tls
            .client_config(
                &name,
                &ServiceName::new(wire::SERVICE).unwrap(),
                "0.0.0.0:0".parse().unwrap(),
                HopOffer::None,
            )
            .unwrap();
        wire::post(client, &self.addr, batch).await.map_err(|e| e.to_string())
    }
}

fn refused(answer: &Answer, cause: &str) -> u64 {
    answer.refused.get(cause).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_compromised_host_cannot_change_the_fleets_evidence() {
    let Some(f) = fleet("one_compromised_host_cannot_change_the_fleets_evidence").await else { return };
    let tls = f.world.path("tls");
    issue_on_host(&f.world, "db", "db-host", &tls.join("db"));
    issue_on_host(&f.world, "web", "web-host", &tls.join("web"));
    issue_on_host(&f.world, "attacker", "attacker-host", &tls.join("attacker"));

    // The fleet: db's agent and web's agent ship through the service; web calls db.
    let app = support::EchoApp::start().await;
    let mut db_config = f.world.config("db-host", &[("db", app.addr)], &[]);
    db_config.fleet = Some(f.fleet_settings());
    let db = cordon::agent::Agent::start(db_config).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    f.world.write_discovery("db", &[(support::localhost(), app.addr.port(), Some(port))]);
    let mut web_config = f.world.config("web-host", &[], &[("db", "web")]);
    web_config.fleet = Some(f.fleet_settings());
    let web = cordon::agent::Agent::start(web_config).await.unwrap();
    let out = web.bound().upstream("db").unwrap();
    for _ in 0..3 {
        assert_eq!(support::round_trip(out, b"ping").await.unwrap(), b"ping");
    }
    support::eventually("db's inbound record reaches the store as seen", Duration::from_secs(60), || async {
        f.pg.psql(
            "fleet",
            "SELECT count(*) FROM edge_hour WHERE source = 'web' AND destination = 'db' AND host = 'db-host' \
             AND shipper = 'db' AND evidence = 'seen'",
        ) != "0"
            && f.pg
                .psql("fleet", "SELECT count(*) FROM declarer WHERE identity = 'web' AND host = 'web-host'")
                != "0"
    })
    .await;
    for agent in [&db, &web] {
        support::eventually("the agents caught up", Duration::from_secs(30), || async {
            agent.status()["fleet_store"]["rows_waiting"].as_u64() == Some(0)
        })
        .await;
    }
    let before = graph(&f.operator);
    let web_db_before = f.pg.psql(
        "fleet",
        "SELECT host, connections, first_seen, last_seen FROM edge_hour WHERE source = 'web' AND destination = 'db' ORDER BY host",
    );

    // The attacker's host: every forgery.
    let hour = now_ms() / 3_600_000;
    let long = "a".repeat(70_000);
    let mut claims = Vec::new();
    for day in 0..60 {
        claims.push(("db-host", hour - 24 * day, "attacker", "db", "enforce", 50));
    }
    let a = f.post_as("attacker", &edges(&claims)).await.unwrap();
    assert_eq!((a.accepted, a.refused.len()), (60, 0), "its own claims are taken, as claims: {a:?}");
    let a = f
        .post_as(
            "attacker",
            &edges(&[
                ("db-host", hour, "web", "db", "learn", 1_000_000), // another host's edge, overwritten
                ("web-host", hour, "web", "db", "learn", 0),        // lowered
                ("attacker-host", hour, "batch", "db", "learn", 9), // a caller it is not
                ("attacker-host", hour, "attacker", "db", "learn", -5),
                ("attacker-host", hour, "attacker", "db", "bogus", 5),
                ("attacker-host", hour, &long, "db", "learn", 5),
                ("attacker-host", hour + 24 * 3650, "attacker", "db", "learn", 5),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(a.accepted, 0, "{a:?}");
    assert_eq!(refused(&a, "not_yours"), 3, "{a:?}");
    assert_eq!(refused(&a, "bad_counter"), 1, "{a:?}");
    assert_eq!(refused(&a, "unknown_value"), 1, "{a:?}");
    assert_eq!(refused(&a, "bad_name"), 1, "{a:?}");
    assert_eq!(refused(&a, "bad_time"), 1, "{a:?}");
    let a = f.post_as("attacker", &declaration("web-host", "web", now_ms() + 1000, "")).await.unwrap();
    assert_eq!(refused(&a, "other_identity"), 1, "a declaration for web replacing web's: {a:?}");
    let ten_years = now_ms() + 3650 * 86_400_000;
    let a = f.post_as("attacker", &declaration("attacker-host", "attacker", ten_years, "db")).await.unwrap();
    assert_eq!(refused(&a, "bad_time"), 1, "{a:?}");
    // A body it cannot parse or one too large is refused whole, with nothing written.
    let err = f.post_as("attacker", &edges(&vec![("h", hour, "attacker", "db", "learn", 1); 10_001])).await;
    assert!(err.unwrap_err().contains("400"), "more rows than a request may hold");

    // The ingest role itself cannot delete, truncate, drop or prune.
    let ingest_db = StoreUrl::parse(&f.ingest_url).unwrap();
    let c = cordon::store::connect(&ingest_db).await.unwrap();
    for sql in [
        "DELETE FROM edge_hour".to_owned(),
        "TRUNCATE edge_hour".to_owned(),
        "TRUNCATE declarer".to_owned(),
        format!("DROP TABLE edge_hour_d{}", hour / 24),
        "ALTER TABLE edge_hour DROP CONSTRAINT cordon_values".to_owned(),
        "UPDATE edge_hour SET connections = -1".to_owned(),
    ] {
        let e = c.batch_execute(&sql).await.expect_err(&sql);
        let text = format!("{e:?}");
        assert!(
            text.contains("permission denied")
                || text.contains("must be owner")
                || text.contains("cordon_values"),
            "{sql}: {text}"
        );
    }
    let audit = f.world.path("audit.jsonl");
    let prune = cordon(&[
        "store",
        "prune",
        "--db",
        &f.ingest_url,
        "--older-than",
        "1h",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    assert!(!prune.status.success(), "prune as the ingest role must fail");
    let why = String::from_utf8_lossy(&prune.stderr);
    assert!(why.contains("must be owner") || why.contains("permission denied"), "{why}");
    // Nothing cordon did not write gets in through the store either (CHECK constraints).
    let direct = c
        .batch_execute(&format!(
            "INSERT INTO edge_hour VALUES ('x', {hour}, 'web', 'db', 'mtls', 'bogus', 'allow', 1, 1, 1, 1, 2, 'web', 'seen')"
        ))
        .await;
    assert!(format!("{direct:?}").contains("cordon_values"), "{direct:?}");

    // The review: web -> db untouched, the attacker's claims flagged as claimed.
    assert_eq!(
        f.pg.psql(
            "fleet",
            "SELECT host, connections, first_seen, last_seen FROM edge_hour WHERE source = 'web' AND destination = 'db' ORDER BY host",
        ),
        web_db_before
    );
    let after = graph(&f.operator);
    assert_eq!(seen_part(&after), seen_part(&before), "only claimed edges may be added");
    let claimed: Vec<_> =
        after["edges"].as_array().unwrap().iter().filter(|e| e["evidence"] == "claimed").collect();
    assert_eq!(claimed.len(), 1, "{after:#}");
    assert_eq!(
        (claimed[0]["source"].as_str(), claimed[0]["destination"].as_str()),
        (Some("attacker"), Some("db"))
    );
    assert!(before["edges"].as_array().unwrap().iter().all(|e| e["evidence"] == "seen"), "{before:#}");
    let text = cordon_ok(&["graph", "--db", &f.operator]);
    assert!(text.lines().any(|l| l.starts_with("attacker ") && l.contains(" mtls,claimed ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("web ") && l.contains(" mtls ")), "{text}");
    let proposal = cordon_ok(&["propose", "--db", &f.operator]);
    assert!(proposal.contains("claimed by the caller only"), "{proposal}");
    assert_eq!(proposal.matches("claimed by the caller only").count(), 1, "{proposal}");
    assert_eq!(
        f.pg.psql("fleet", "SELECT DISTINCT host FROM edge_hour WHERE source = 'attacker'"),
        "attacker-host",
        "its rows carry its own host, whatever they said"
    );

    // Every refusal is counted by cause.
    let m = f.ingest.metrics();
    for (cause, n) in [("not_yours", 3.0), ("bad_counter", 1.0), ("bad_time", 2.0), ("other_identity", 1.0)] {
        assert_eq!(support::metric(&m, "cordon_ingest_rows_refused_total", &[("cause", cause)]), n, "{m}");
    }
    // In the one exposition every cordon endpoint serves, with the HTTP server's own counts.
    assert!(m.ends_with("# EOF\n") && m.contains("cordon_build_info"), "{m}");
    assert!(support::metric(&m, "cordon_ingest_http_responses_total", &[("code", "200")]) >= 1.0, "{m}");
    web.shutdown().await;
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_without_a_host_is_refused_and_says_why() {
    let Some(f) = fleet("a_leaf_without_a_host_is_refused_and_says_why").await else { return };
    f.world.issue("old"); // `cert issue` without a host: the leaf names none
    let e =
        f.post_as("old", &edges(&[("h", now_ms() / 3_600_000, "old", "db", "learn", 1)])).await.unwrap_err();
    assert!(e.contains("403") && e.contains("names no host"), "{e}");
    assert_eq!(f.pg.psql("fleet", "SELECT count(*) FROM edge_hour"), "0");
}

#[test]
fn an_agent_config_with_the_stores_password_is_refused() {
    let world = World::new();
    world.issue("db");
    world.config("db-host", &[], &[("queue", "db")]);
    let path: PathBuf = world.path("db-host.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += "[fleet]\nstore = \"postgres://cordon@127.0.0.1:5432/fleet\"\npassword_file = \"pw\"\n";
    std::fs::write(&path, text).unwrap();
    let out = cordon(&["agent", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("fleet.store") && err.contains("through the ingest service"), "{err}");
}

/// The ingest rate: rows/s of `edge_hour` through the service (one host, its own destination's
/// rows, batches of 5,000 as the shipper sends them) against the same rows written straight to
/// PostgreSQL with operator credentials. `cargo test --release --test ingest -- --ignored`;
/// `INGEST_BENCH_ROWS` rows (default 200,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_ingest_rate() {
    let Some(f) = fleet("bench_ingest_rate").await else { return };
    issue_on_host(&f.world, "db", "db-host", &f.world.path("tls").join("db"));
    let total: i64 = std::env::var("INGEST_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let hour = now_ms() / 3_600_000 - 24;
    let names: Vec<String> = (0..5000).map(|i| format!("svc-{i}")).collect();
    let batches = |host: &'static str, shift: i64| {
        (0..total / 5000).map(move |b| {
            let rows: Vec<Row<'_>> = (0..5000)
                .map(|i| (host, hour - (b + shift) % 24, "x", "db", "learn", 1 + i as i64))
                .collect();
            (b, rows)
        })
    };
    let named = |rows: Vec<Row<'_>>, b: i64| {
        let mut batch = edges(&rows);
        if let Values::Text(src) = &mut batch.columns[2] {
            for (i, s) in src.iter_mut().enumerate() {
                *s = names[(i + b as usize * 7) % names.len()].clone();
            }
        }
        batch
    };
    let started = std::time::Instant::now();
    for (b, rows) in batches("db-host", 0) {
        let a = f.post_as("db", &named(rows, b)).await.unwrap();
        assert_eq!(a.accepted, 5000, "{a:?}");
    }
    let through = started.elapsed();
    let url = StoreUrl::parse(&f.operator).unwrap();
    let mut c = cordon::store::connect(&url).await.unwrap();
    let mut parts = cordon::store::schema::Partitions::default();
    let started = std::time::Instant::now();
    for (b, rows) in batches("other-host", 0) {
        cordon::store::write::ship(&mut c, "bench", &mut parts, &named(rows, b)).await.unwrap();
    }
    let direct = started.elapsed();
    let rate = |d: Duration| (total / 5000 * 5000) as f64 / d.as_secs_f64();
    println!(
        "ingest rate: {:.0} rows/s through the service ({through:?}), {:.0} rows/s straight to PostgreSQL ({direct:?})",
        rate(through),
        rate(direct)
    );
}
