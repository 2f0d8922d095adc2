//! The fleet store against a real PostgreSQL started by the test: shipping ledgers (twice, and
//! growing buckets), the fleet view equal to `cordon merge`, faults (bad URL or password, the
//! server down at start and killed mid-ship, a newer schema), migration by many agents at once,
//! pruning and TLS. Skipped with a message where PostgreSQL is not installed, unless
//! `CORDON_REQUIRE_POSTGRES=1`.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon::ledger::{Declaration, DeclarationOrigin, EdgeKey, Recorder};
use cordon::policy::{Identified, Mode, Verdict};
use cordon::store::{self, FleetSettings, ShipTo, StoreUrl};
use support::postgres::Postgres;
use support::{cordon, cordon_ok};

const HOUR: u64 = 3600;

fn now_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / HOUR * HOUR
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn edge(source: &str, destination: &str, identified: Identified, verdict: Verdict) -> EdgeKey {
    EdgeKey { source: source.into(), destination: destination.into(), identified, mode: Mode::Learn, verdict }
}

/// Records `n` connections of each edge at `t` into the ledger `db` as `host`.
fn record(db: &Path, host: &str, t: u64, n: u64, edges: &[EdgeKey]) {
    let (recorder, handle) = Recorder::start(db, host, 4096, Duration::from_secs(3600)).unwrap();
    for e in edges {
        for i in 0..n {
            support::connection(&handle, e, at(t + i), at(t + i + 1), (10, 100));
        }
    }
    recorder.shutdown();
}

/// Records that `identity` on `host` declared `services` at `t` (from a haproxy.cfg).
fn declare(db: &Path, host: &str, identity: &str, t: u64, services: &[&str]) {
    let decl = Declaration {
        host: host.into(),
        identity: identity.into(),
        origin: DeclarationOrigin::HaproxyCfg,
        declared_at: at(t),
        services: services.iter().map(|s| s.to_string()).collect(),
    };
    cordon::ledger::record_declaration(db, &decl).unwrap();
}

fn web_db() -> EdgeKey {
    edge("web", "db", Identified::Mtls, Verdict::Allow)
}

fn batch_db() -> EdgeKey {
    edge("batch", "db", Identified::Mtls, Verdict::Deny)
}

fn plain_cache() -> EdgeKey {
    edge("ip:10.0.0.7", "cache", Identified::PlaintextIp, Verdict::Deny)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn graph_json(db: &str) -> String {
    cordon_ok(&["graph", "--format", "json", "--db", db])
}

fn merged_graph(dir: &Path, ledgers: &[&Path]) -> String {
    let out = dir.join(format!("merged-{}.db", ledgers.len()));
    let _ = std::fs::remove_file(&out);
    let mut args = vec!["merge", "--out", s(&out)];
    args.extend(ledgers.iter().map(|p| s(p)));
    cordon_ok(&args);
    graph_json(s(&out))
}

fn stderr_of(args: &[&str]) -> String {
    let out = cordon(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} must fail with exit 2: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_fleet_store_equals_merge_and_shipping_again_changes_nothing() {
    let Some(pg) = Postgres::start("the_fleet_store_equals_merge_and_shipping_again_changes_nothing") else {
        return;
    };
    pg.create_db("fleet");
    let url = pg.url("fleet");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let t = now_hour() - 50 * HOUR;
    record(&a, "host-a", t, 3, &[web_db(), batch_db()]);
    record(&a, "host-a", t + 30 * HOUR, 2, &[web_db()]);
    record(&b, "host-b", t + HOUR, 4, &[web_db(), plain_cache()]);
    // One edge seen in both modes: batch is refused at db once db enforces.
    record(&b, "host-b", t + 2 * HOUR, 4, &[EdgeKey { mode: Mode::Enforce, ..batch_db() }]);
    // What the callers declare (their haproxy.cfg): batch declares db and a queue it never dials.
    declare(&a, "host-a", "web", t, &["db"]);
    declare(&a, "host-a", "batch", t, &["db", "queue"]);
    declare(&b, "host-b", "web", t, &["cache", "db"]);

    let shipped = cordon_ok(&["ship", "--db", s(&a), "--to", &url]);
    assert!(shipped.contains("shipped 5 rows"), "3 buckets and 2 declarations: {shipped}");
    assert!(!shipped.contains("password_file"), "the URL is printed without its query: {shipped}");
    cordon_ok(&["ship", "--db", s(&b), "--to", &url, "--batch-rows", "1"]);
    let rows = pg.psql("fleet", "SELECT count(*), sum(connections) FROM edge_hour");
    assert_eq!(rows, "6|20");
    // Shipped again (a retry, a restart, the same file twice): nothing changes.
    cordon_ok(&["ship", "--db", s(&a), "--to", &url]);
    cordon_ok(&["ship", "--db", s(&b), "--to", &url]);
    assert_eq!(pg.psql("fleet", "SELECT count(*), sum(connections) FROM edge_hour"), rows);

    let fleet = graph_json(&url);
    assert!(fleet.contains("\"batch\"") && fleet.contains("ip:10.0.0.7"), "{fleet}");
    assert!(fleet.contains("\"queue\""), "the declarations are in the store: {fleet}");
    assert_eq!(
        fleet,
        merged_graph(dir.path(), &[&a, &b]),
        "the store must read as `cordon merge` of the ledgers"
    );

    // A bucket that grows after it was shipped is shipped at its new totals, not added to; a
    // newer declaration replaces the host's older one.
    record(&a, "host-a", t + 30 * HOUR + 100, 5, &[web_db()]);
    declare(&a, "host-a", "batch", t + 60, &["db"]);
    cordon_ok(&["ship", "--db", s(&a), "--to", &url]);
    assert_eq!(pg.psql("fleet", "SELECT count(*), sum(connections) FROM edge_hour"), "6|25");
    let fleet = graph_json(&url);
    assert!(!fleet.contains("\"queue\""), "batch no longer declares the queue: {fleet}");
    assert_eq!(fleet, merged_graph(dir.path(), &[&a, &b]));
    assert_eq!(pg.psql("fleet", "SELECT count(*) FROM declarer"), "3", "one row per host and identity");

    // The other review commands read the store the same way.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[modes]\n\"*\" = \"learn\"\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n").unwrap();
    let merged = dir.path().join("merged-2.db");
    assert_eq!(
        cordon_ok(&["diff", "--db", &url, "--policy", s(&policy)]),
        cordon_ok(&["diff", "--db", s(&merged), "--policy", s(&policy)])
    );
    let propose =
        |db: &str| cordon_ok(&["propose", "--db", db]).lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(propose(&url), propose(s(&merged)));
    let out = cordon(&["mode", "--policy", s(&policy), "db", "enforce", "--db", &url]);
    assert_eq!(out.status.code(), Some(1), "the preflight reads the fleet: batch would be cut off");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("batch"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_wrong_url_or_password_is_a_clear_error_without_the_password() {
    let Some(pg) = Postgres::start("a_wrong_url_or_password_is_a_clear_error_without_the_password") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    record(&a, "host-a", now_hour(), 1, &[web_db()]);
    let wrong = pg.password_file("wrong", "not-the-password");
    let url = format!("postgres://cordon@127.0.0.1:{}/postgres?password_file={}", pg.port, wrong.display());
    let err = stderr_of(&["ship", "--db", s(&a), "--to", &url]);
    assert!(err.contains("password authentication failed") && err.contains("127.0.0.1"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    let err = stderr_of(&["graph", "--db", &pg.url("nosuchdb")]);
    assert!(err.contains("\"nosuchdb\" does not exist"), "{err}");
    let err = stderr_of(&[
        "graph",
        "--db",
        &format!("postgres://cordon:{}@127.0.0.1:{}/postgres", "hunter2", pg.port),
    ]);
    assert!(err.contains("password in the URL is refused") && !err.contains("hunter2"), "{err}");
    let err = stderr_of(&["import", "haproxy-log", "--db", &pg.url("postgres"), s(&a)]);
    assert!(err.contains("cordon ship"), "{err}");
    assert!(!Path::new("postgres:").exists(), "no file is made of the URL");
    let missing = dir.path().join("no-such-password-file");
    let err = stderr_of(&[
        "graph",
        "--db",
        &format!("postgres://cordon@127.0.0.1:{}/postgres?password_file={}", pg.port, missing.display()),
    ]);
    assert!(err.contains("no-such-password-file") && err.contains("password file"), "{err}");
    pg.kill();
    let err = stderr_of(&["ship", "--db", s(&a), "--to", &pg.url("postgres")]);
    assert!(err.contains("cannot reach the store"), "{err}");
}

#[test]
fn a_store_from_a_newer_cordon_is_refused_and_left_alone() {
    let Some(pg) = Postgres::start("a_store_from_a_newer_cordon_is_refused_and_left_alone") else { return };
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    record(&a, "host-a", now_hour(), 1, &[web_db()]);
    cordon_ok(&["ship", "--db", s(&a), "--to", &url]);
    pg.psql("postgres", "UPDATE cordon_schema SET version = 99");
    record(&a, "host-a", now_hour() - 5 * HOUR, 1, &[batch_db()]);
    for args in [vec!["ship", "--db", s(&a), "--to", &url], vec!["graph", "--db", &url]] {
        let err = stderr_of(&args);
        assert!(err.contains("store schema version 99 is newer than this cordon understands"), "{err}");
    }
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM edge_hour"), "1", "nothing was written");
}

#[test]
fn a_store_of_version_1_gains_the_declarations_when_a_newer_cordon_ships() {
    let Some(pg) = Postgres::start("a_store_of_version_1_gains_the_declarations_when_a_newer_cordon_ships")
    else {
        return;
    };
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    record(&a, "host-a", now_hour(), 1, &[web_db()]);
    cordon_ok(&["ship", "--db", s(&a), "--to", &url]);
    // The store as the previous cordon left it: traffic only, schema version 1.
    pg.psql("postgres", "DROP TABLE declarer; UPDATE cordon_schema SET version = 1");
    declare(&a, "host-a", "web", now_hour(), &["db"]);
    cordon_ok(&["ship", "--db", s(&a), "--to", &url]);
    assert_eq!(
        pg.psql("postgres", "SELECT version FROM cordon_schema"),
        store::schema::CURRENT_VERSION.to_string()
    );
    assert_eq!(pg.psql("postgres", "SELECT identity, services FROM declarer"), "web|{db}");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM edge_hour"), "1", "the traffic is kept");
}

#[test]
fn many_agents_starting_at_once_migrate_the_schema_once() {
    let Some(pg) = Postgres::start("many_agents_starting_at_once_migrate_the_schema_once") else { return };
    let url = StoreUrl::parse(&pg.url("postgres")).unwrap();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let mut c = store::connect(&url).await?;
                    store::schema::ensure(&mut c, &url.to_string()).await
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("every agent finds or makes the schema");
    }
    assert_eq!(
        pg.psql("postgres", "SELECT version FROM cordon_schema"),
        store::schema::CURRENT_VERSION.to_string()
    );
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM cordon_schema"), "1");
}

#[test]
fn prune_drops_whole_old_days_and_keeps_the_rest() {
    let Some(pg) = Postgres::start("prune_drops_whole_old_days_and_keeps_the_rest") else { return };
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    let now = now_hour();
    record(&a, "host-a", now - 20 * 24 * HOUR, 1, &[batch_db()]);
    record(&a, "host-a", now - 10 * 24 * HOUR, 1, &[plain_cache()]);
    record(&a, "host-a", now, 1, &[web_db()]);
    cordon_ok(&["ship", "--db", s(&a), "--to", &url]);
    let partitions = |pg: &Postgres| {
        pg.psql("postgres", "SELECT count(*) FROM pg_inherits WHERE inhparent = 'edge_hour'::regclass")
    };
    assert_eq!(partitions(&pg), "3", "one partition a day");
    let audit = dir.path().join("audit.jsonl");
    let out = cordon_ok(&["store", "prune", "--db", &url, "--older-than", "15d", "--audit-log", s(&audit)]);
    assert!(out.contains("dropped 1 day partitions"), "{out}");
    assert_eq!(partitions(&pg), "2");
    let graph = graph_json(&url);
    assert!(
        !graph.contains("\"batch\"") && graph.contains("ip:10.0.0.7") && graph.contains("\"web\""),
        "{graph}"
    );
}

/// A CA and a server certificate for 127.0.0.1 (rcgen), written into the data directory.
fn tls_files(data: &Path, ca_out: &Path) -> Vec<String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(ca_out, ca_cert.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = leaf.signed_by(&key, &Issuer::new(ca, ca_key)).unwrap();
    std::fs::write(data.join("server.pem"), cert.pem()).unwrap();
    let key_path = data.join("server.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    vec!["ssl=on".into(), "ssl_cert_file=server.pem".into(), "ssl_key_file=server.key".into()]
}

#[test]
fn tls_to_the_store_verifies_the_server_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
    tls_files(dir.path(), &other_ca);
    let Some(pg) = Postgres::start_with("tls_to_the_store_verifies_the_server_against_the_ca", |data| {
        tls_files(data, &ca)
    }) else {
        return;
    };
    let a = dir.path().join("a.db");
    record(&a, "host-a", now_hour(), 1, &[web_db()]);
    cordon_ok(&["ship", "--db", s(&a), "--to", &format!("{}&ca={}", pg.url("postgres"), ca.display())]);
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM edge_hour"), "1");
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM pg_stat_ssl WHERE ssl AND pid <> pg_backend_pid()"),
        "0",
        "no one else connected"
    );
    let err = stderr_of(&["graph", "--db", &format!("{}&ca={}", pg.url("postgres"), other_ca.display())]);
    assert!(
        err.contains("cannot log in to the store") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

fn fleet(url: &str, interval_ms: u64) -> FleetSettings {
    FleetSettings {
        to: ShipTo::Store(StoreUrl::parse(url).unwrap()),
        ship_interval: Duration::from_millis(interval_ms),
        batch_rows: 2,
    }
}

async fn status(agent: &cordon::agent::Agent) -> serde_json::Value {
    agent.status()["fleet_store"].clone()
}

async fn store_graph(url: String) -> String {
    tokio::task::spawn_blocking(move || graph_json(&url)).await.unwrap()
}

async fn ledger_graph(db: PathBuf) -> String {
    tokio::task::spawn_blocking(move || graph_json(s(&db))).await.unwrap()
}

#[tokio::test]
async fn the_agent_ships_when_the_store_comes_back_and_after_a_crash_mid_ship() {
    let Some(pg) = Postgres::start("the_agent_ships_when_the_store_comes_back_and_after_a_crash_mid_ship")
    else {
        return;
    };
    let url = pg.url("postgres");
    pg.kill();
    let world = support::World::new();
    let app = support::EchoApp::start().await;
    world.issue("db");
    let mut config = world.config("db-host", &[("db", app.addr)], &[]);
    config.fleet = Some(fleet(&url, 50));
    // The store is down when the agent starts: it starts and serves all the same.
    let db = cordon::agent::Agent::start(config).await.unwrap();
    let port = db.bound().service("db").unwrap().port();
    world.write_discovery("db", &[(support::localhost(), app.addr.port(), Some(port))]);
    let web = support::caller_host(&world, "web").await;
    let out = web.bound().upstream("db").unwrap();
    for _ in 0..3 {
        assert_eq!(support::round_trip(out, b"ping").await.unwrap(), b"ping");
    }
    support::eventually(
        "rows wait and errors show while the store is down",
        Duration::from_secs(20),
        || async {
            let st = status(&db).await;
            st["rows_waiting"].as_u64() > Some(0) && st["errors"].as_u64() > Some(0)
        },
    )
    .await;
    let st = status(&db).await;
    assert!(st["last_error"].as_str().unwrap().contains("cannot reach the store"), "{st}");
    assert!(!st.to_string().contains(support::postgres::PASSWORD), "{st}");
    let metrics = db.metrics_text();
    assert!(support::metric(&metrics, "cordon_store_rows_waiting", &[]) > 0.0, "{metrics}");

    pg.start_server();
    support::eventually("the agent catches up once the store is back", Duration::from_secs(60), || async {
        let st = status(&db).await;
        st["rows_waiting"].as_u64() == Some(0) && st["last_ship"].is_string()
    })
    .await;
    let ledger = world.ledger("db-host");
    assert_eq!(store_graph(url.clone()).await, ledger_graph(ledger.clone()).await);

    // More traffic, and the server is killed while the agent ships it (batches of 2 rows).
    let more = support::caller_host(&world, "batch").await;
    let more_out = more.bound().upstream("db").unwrap();
    for _ in 0..3 {
        assert_eq!(support::round_trip(more_out, b"x").await.unwrap(), b"x");
        assert_eq!(support::round_trip(out, b"y").await.unwrap(), b"y");
    }
    support::eventually("the new rows are seen", Duration::from_secs(20), || async {
        status(&db).await["rows_waiting"].as_u64() > Some(0)
            || ledger_graph(ledger.clone()).await.contains("\"batch\"")
    })
    .await;
    pg.kill();
    assert_eq!(support::round_trip(out, b"still").await.unwrap(), b"still", "the data plane is untouched");
    pg.start_server();
    let caught_up = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if status(&db).await["rows_waiting"].as_u64() == Some(0)
                && store_graph(url.clone()).await == ledger_graph(ledger.clone()).await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "not shipped in full after the restart: {}\nstore: {}\nledger: {}",
        status(&db).await,
        store_graph(url.clone()).await,
        ledger_graph(ledger.clone()).await
    );
    more.shutdown().await;
    web.shutdown().await;
    db.shutdown().await;
}
