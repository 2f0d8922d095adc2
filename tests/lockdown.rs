//! Lockdown end to end, as root, in two network namespaces this test creates (two "hosts" joined
//! by a veth pair; addresses exist only inside them). Host A runs an app and the real cordon agent
//! with `lockdown = true`; host B dials the app directly and through cordon.
//! Under CI=true, not being able to create namespaces or run nft is a failure, not a skip. Each
//! test has its own pair of namespaces (named by the test's tag and the process id).

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const A_IP: &str = "10.203.7.1";
const B_IP: &str = "10.203.7.2";
/// A second address of host A, on the same link.
const A2_IP: &str = "10.203.7.3";
const APP_PORT: u16 = 7000;
const CORDON_PORT: u16 = 14000;

fn sh(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces and a veth pair, removed on drop (also when the test panics).
struct Hosts {
    a: String,
    b: String,
    /// Host A's end of the veth pair.
    a_dev: String,
}

impl Hosts {
    fn create(tag: char) -> Result<Hosts, String> {
        let n = std::process::id() % 100_000;
        let (va, vb) = (format!("cv{tag}a{n}"), format!("cv{tag}b{n}"));
        let hosts =
            Hosts { a: format!("cordon-{tag}a-{n}"), b: format!("cordon-{tag}b-{n}"), a_dev: va.clone() };
        let steps: Vec<Vec<String>> = vec![
            vec!["ip".into(), "netns".into(), "add".into(), hosts.a.clone()],
            vec!["ip".into(), "netns".into(), "add".into(), hosts.b.clone()],
            vec![
                "ip".into(),
                "link".into(),
                "add".into(),
                va.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                vb.clone(),
            ],
            vec!["ip".into(), "link".into(), "set".into(), va.clone(), "netns".into(), hosts.a.clone()],
            vec!["ip".into(), "link".into(), "set".into(), vb.clone(), "netns".into(), hosts.b.clone()],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            let out = sh(&args);
            if !out.status.success() {
                return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        for (ns, dev, ip) in [(&hosts.a, &va, A_IP), (&hosts.b, &vb, B_IP)] {
            ok(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev]);
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        Ok(hosts)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        sh(&all)
    }

    fn spawn(&self, ns: &str, args: &[&str], log: &Path) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    s.sendall(sys.argv[3].encode()); s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        b = s.recv(4096)
        if not b: break
        out += b
    sys.stdout.write(out.decode())
except OSError as e:
    sys.stdout.write("FAILED " + str(e))
"#;

const ECHO: &str = r#"
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0", int(sys.argv[1]))); srv.listen(16)
def echo(c):
    while True:
        b = c.recv(4096)
        if not b: break
        c.sendall(b)
    c.close()
while True:
    c, _ = srv.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
"#;

/// The two hosts, or `None` (the test is skipped) where they cannot be made outside CI.
fn hosts_or_skip(tag: char) -> Option<Hosts> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match (sh(&["nft", "--version"]).status.success(), Hosts::create(tag)) {
        (true, Ok(h)) => Some(h),
        (nft, hosts) => {
            let why = format!("nft present: {nft}; namespaces: {:?}", hosts.err());
            assert!(!ci, "lockdown tests cannot run under CI=true: {why}");
            eprintln!("SKIPPED lockdown test (needs root, iproute2 and nftables): {why}");
            None
        }
    }
}

/// A CA in `dir/ca` and a certificate per service in `dir/tls/<service>`.
fn identities(dir: &Path, services: &[&str]) {
    let ca = dir.join("ca");
    support::cordon_ok(&["ca", "init", "--dir", ca.to_str().unwrap(), "--trust-domain", "lock.internal"]);
    for s in services {
        support::cordon_ok(&[
            "cert",
            "issue",
            "--ca",
            ca.to_str().unwrap(),
            "--service",
            s,
            "--out",
            dir.join("tls").join(s).to_str().unwrap(),
        ]);
    }
}

#[test]
fn lockdown_closes_the_app_port_only_while_enforcing() {
    let Some(hosts) = hosts_or_skip('e') else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel);
    let (ca, tls) = (p("ca"), p("tls"));
    identities(dir.path(), &["db", "web"]);
    std::fs::create_dir_all(p("discovery")).unwrap();
    std::fs::write(p("client.py"), CLIENT).unwrap();
    std::fs::write(p("echo.py"), ECHO).unwrap();
    let policy = |mode: &str| {
        std::fs::write(p(".policy.tmp"), format!("[modes]\ndb = \"{mode}\"\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n")).unwrap();
        std::fs::rename(p(".policy.tmp"), p("policy.toml")).unwrap();
    };
    policy("learn");
    let config = p("a.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"lock.internal\"\ndiscovery_dir = \"discovery\"\npolicy = \"policy.toml\"\nstate_dir = \"state\"\n\
             [tls]\nca = \"ca/ca.pem\"\ndir = \"tls\"\n\
             [[service]]\nname = \"db\"\nlisten = \"0.0.0.0:{CORDON_PORT}\"\napp = \"0.0.0.0:{APP_PORT}\"\nlockdown = true\n"
        ),
    )
    .unwrap();
    let cordon = env!("CARGO_BIN_EXE_cordon");
    let _app = Kill(hosts.spawn(
        &hosts.a,
        &["python3", p("echo.py").to_str().unwrap(), &APP_PORT.to_string()],
        &p("app.log"),
    ));
    let agent = Kill(hosts.spawn(
        &hosts.a,
        &[cordon, "agent", "--config", config.to_str().unwrap()],
        &p("agent.log"),
    ));

    let rules = || {
        String::from_utf8_lossy(&hosts.exec(&hosts.a, &["nft", "list", "table", "inet", "cordon"]).stdout)
            .into_owned()
    };
    let direct = || {
        let out = hosts.exec(
            &hosts.b,
            &["python3", p("client.py").to_str().unwrap(), A_IP, &APP_PORT.to_string(), "direct"],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let via_cordon = || {
        let script = format!(
            "(printf via; sleep 1) | timeout 10 openssl s_client -quiet -connect {A_IP}:{CORDON_PORT} -cert {0}/web/cert.pem -key {0}/web/key.pem -CAfile {1}/ca.pem 2>/dev/null",
            tls.display(),
            ca.display()
        );
        String::from_utf8_lossy(&hosts.exec(&hosts.b, &["bash", "-c", &script]).stdout).into_owned()
    };
    let counted = || listed_counters(&hosts).values().sum::<u64>();

    // Learn: the rule counts, nothing is dropped.
    wait_for("the learn-mode rules", || rules().contains("direct_db"));
    assert!(!rules().contains("drop"), "{}", rules());
    wait_for("the app", || direct() == "direct");
    assert!(counted() > 0, "direct traffic is counted in learn mode");
    let ledger = p("state/ledger.db");
    wait_for("the ledger", || ledger.exists());
    let diff = hosts.exec(
        &hosts.a,
        &[
            cordon,
            "diff",
            "--db",
            ledger.to_str().unwrap(),
            "--policy",
            p("policy.toml").to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let diff = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert!(diff.contains("db lockdown:") && diff.contains("directly, bypassing cordon"), "{diff}");
    assert_eq!(via_cordon(), "via");

    // Enforce: the direct door closes, cordon's stays open for an allowed caller.
    let learned = counted();
    policy("enforce");
    wait_for("the drop rule", || rules().contains("drop"));
    assert!(counted() >= learned, "the named counter survives re-application");
    assert!(direct().starts_with("FAILED"), "a direct connection must fail while db enforces");
    assert_eq!(via_cordon(), "via", "the same caller through cordon's inbound gets in");

    // Back to learn: direct reachability returns at once.
    policy("learn");
    wait_for("the drop rule lifted", || !rules().contains("drop"));
    assert_eq!(direct(), "direct");

    // The agent stops: the rules stay (fail closed); a restarted agent adopts its table.
    drop(agent);
    assert!(rules().contains("direct_db"), "rules stay after the agent stops");
    let before_restart = counted();
    let agent = Kill(hosts.spawn(
        &hosts.a,
        &[cordon, "agent", "--config", config.to_str().unwrap()],
        &p("agent2.log"),
    ));
    wait_for("the restarted agent's rules", || p("agent2.log").exists() && rules().contains("direct_db"));
    assert_eq!(
        rules().matches("counter name \"direct_db\"").count(),
        1,
        "adopted, not duplicated:\n{}",
        rules()
    );
    assert!(counted() >= before_restart, "the restarted agent keeps the counter");
    drop(agent);
    // --remove lifts the rules without a trace.
    let removed =
        hosts.exec(&hosts.a, &[cordon, "lockdown", "--config", config.to_str().unwrap(), "--remove"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let ruleset =
        String::from_utf8_lossy(&hosts.exec(&hosts.a, &["nft", "list", "ruleset"]).stdout).into_owned();
    assert!(!ruleset.contains("cordon"), "no trace left:\n{ruleset}");
    let printed =
        hosts.exec(&hosts.a, &[cordon, "lockdown", "--config", config.to_str().unwrap(), "--print"]);
    assert!(String::from_utf8_lossy(&printed.stdout).contains(&format!("tcp dport {APP_PORT}")));
}

/// The named counters in cordon's table, by name, as `nft -j list counters` shows them on host A.
fn listed_counters(hosts: &Hosts) -> std::collections::BTreeMap<String, u64> {
    let out = hosts.exec(&hosts.a, &["nft", "-j", "list", "counters", "table", "inet", "cordon"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["counter"]["name"].as_str()?.to_string(), o["counter"]["packets"].as_u64()?)))
        .collect()
}

#[test]
fn counters_of_services_no_longer_locked_are_deleted_and_remove_is_idempotent() {
    let Some(hosts) = hosts_or_skip('c') else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel);
    identities(dir.path(), &["db", "cache", "search"]);
    std::fs::create_dir_all(p("discovery")).unwrap();
    std::fs::write(p("client.py"), CLIENT).unwrap();
    std::fs::write(p("policy.toml"), "[modes]\n\"*\" = \"learn\"\n").unwrap();
    let config = p("a.toml");
    let write_config = |services: &[(&str, u16, bool)]| {
        let mut text =
            "trust_domain = \"lock.internal\"\ndiscovery_dir = \"discovery\"\npolicy = \"policy.toml\"\n\
                        state_dir = \"state\"\n[tls]\nca = \"ca/ca.pem\"\ndir = \"tls\"\n"
                .to_string();
        for (i, (name, app_port, lockdown)) in services.iter().enumerate() {
            text += &format!(
                "[[service]]\nname = \"{name}\"\nlisten = \"0.0.0.0:{}\"\napp = \"0.0.0.0:{app_port}\"\nlockdown = {lockdown}\n",
                CORDON_PORT + i as u16
            );
        }
        std::fs::write(&config, text).unwrap();
    };
    let cordon = env!("CARGO_BIN_EXE_cordon");
    let agent = |log: &str| {
        Kill(hosts.spawn(&hosts.a, &[cordon, "agent", "--config", config.to_str().unwrap()], &p(log)))
    };
    // Nothing listens on the app ports: each attempt is refused, its SYN counted.
    let knock = |port: u16| {
        hosts.exec(&hosts.b, &["python3", p("client.py").to_str().unwrap(), A_IP, &port.to_string(), "x"]);
    };

    // Three services locked down, each with traffic counted.
    write_config(&[("db", 7000, true), ("cache", 7001, true), ("search", 7002, true)]);
    let first = agent("agent1.log");
    let names = |c: &std::collections::BTreeMap<String, u64>| c.keys().cloned().collect::<Vec<_>>();
    wait_for("three counters", || {
        names(&listed_counters(&hosts)) == ["direct_cache", "direct_db", "direct_search"]
    });
    for port in [7000, 7001, 7002] {
        knock(port);
    }
    wait_for("traffic counted", || {
        let counters = listed_counters(&hosts);
        counters.len() == 3 && counters.values().all(|&packets| packets > 0)
    });
    drop(first);
    let db_before = listed_counters(&hosts)["direct_db"];

    // cache is now `lockdown = false` and search left the config: only db's counter stays, with
    // its count.
    write_config(&[("db", 7000, true), ("cache", 7001, false)]);
    let second = agent("agent2.log");
    wait_for("the counters of services no longer locked down to go", || {
        names(&listed_counters(&hosts)) == ["direct_db"]
    });
    let db_after = listed_counters(&hosts)["direct_db"];
    assert!(db_after >= db_before, "db's counter kept its count: {db_before} before, {db_after} after");
    let rules = ok(&["ip", "netns", "exec", &hosts.a, "nft", "list", "table", "inet", "cordon"]);
    assert_eq!(rules.matches("counter name").count(), 1, "only db's rule:\n{rules}");
    assert!(rules.contains("tcp dport 7000"), "{rules}");
    let log = std::fs::read_to_string(p("agent2.log")).unwrap();
    assert!(!log.contains("lockdown not applied"), "{log}");
    drop(second);

    // --remove lifts the table; a second --remove finds nothing and still succeeds.
    let remove =
        || hosts.exec(&hosts.a, &[cordon, "lockdown", "--config", config.to_str().unwrap(), "--remove"]);
    let first_remove = remove();
    assert!(first_remove.status.success(), "{}", String::from_utf8_lossy(&first_remove.stderr));
    assert_eq!(String::from_utf8_lossy(&first_remove.stdout), "removed nftables table inet cordon\n");
    let again = remove();
    assert!(
        again.status.success(),
        "a second --remove is a no-op: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), "no cordon table to remove\n");
    let ruleset = ok(&["ip", "netns", "exec", &hosts.a, "nft", "list", "ruleset"]);
    assert!(!ruleset.contains("cordon"), "no trace left:\n{ruleset}");

    // A failing nft (here: no CAP_NET_ADMIN) is an error, not "nothing to remove".
    if sh(&["setpriv", "--version"]).status.success() {
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir.path(), perms).unwrap();
        let unprivileged = hosts.exec(
            &hosts.a,
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                cordon,
                "lockdown",
                "--config",
                config.to_str().unwrap(),
                "--remove",
            ],
        );
        let stderr = String::from_utf8_lossy(&unprivileged.stderr);
        assert_eq!(unprivileged.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("nft"), "{stderr}");
        assert!(unprivileged.stdout.is_empty(), "{}", String::from_utf8_lossy(&unprivileged.stdout));
    }
}

#[test]
fn lockdown_matches_the_app_address_so_a_cordon_listener_on_the_same_port_stays_open() {
    let Some(hosts) = hosts_or_skip('a') else { return };
    ok(&["ip", "-n", &hosts.a, "addr", "add", &format!("{A2_IP}/24"), "dev", &hosts.a_dev]);
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel);
    let (ca, tls) = (p("ca"), p("tls"));
    identities(dir.path(), &["db", "web", "cache"]);
    std::fs::create_dir_all(p("discovery")).unwrap();
    std::fs::write(p("client.py"), CLIENT).unwrap();
    std::fs::write(p("echo.py"), ECHO).unwrap();
    std::fs::write(
        p("policy.toml"),
        "[modes]\ndb = \"enforce\"\ncache = \"learn\"\n[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    )
    .unwrap();
    // db's app listens on A's first address only; cordon's inbound for db takes the same port on
    // A's second address. cache's app listens on every address but is configured by loopback.
    let cache_port = APP_PORT + 1;
    let config = p("a.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"lock.internal\"\ndiscovery_dir = \"discovery\"\npolicy = \"policy.toml\"\nstate_dir = \"state\"\n\
             [tls]\nca = \"ca/ca.pem\"\ndir = \"tls\"\n\
             [[service]]\nname = \"db\"\nlisten = \"{A2_IP}:{APP_PORT}\"\napp = \"{A_IP}:{APP_PORT}\"\nlockdown = true\n\
             [[service]]\nname = \"cache\"\nlisten = \"0.0.0.0:{CORDON_PORT}\"\napp = \"127.0.0.1:{cache_port}\"\nlockdown = true\n"
        ),
    )
    .unwrap();
    let echo = |bind: &str, port: u16, log: &str| {
        Kill(hosts.spawn(
            &hosts.a,
            &["python3", p("echo.py").to_str().unwrap(), &port.to_string(), bind],
            &p(log),
        ))
    };
    let _db_app = echo(A_IP, APP_PORT, "db-app.log");
    let _cache_app = echo("0.0.0.0", cache_port, "cache-app.log");
    let direct = |ip: &str, port: u16| {
        let out = hosts
            .exec(&hosts.b, &["python3", p("client.py").to_str().unwrap(), ip, &port.to_string(), "direct"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The apps listen before the agent applies its rules (and looks at who listens where).
    wait_for("db's app", || direct(A_IP, APP_PORT) == "direct");
    wait_for("cache's app", || direct(A_IP, cache_port) == "direct");
    let cordon = env!("CARGO_BIN_EXE_cordon");
    let _agent = Kill(hosts.spawn(
        &hosts.a,
        &[cordon, "agent", "--config", config.to_str().unwrap()],
        &p("agent.log"),
    ));
    let rules = || {
        String::from_utf8_lossy(&hosts.exec(&hosts.a, &["nft", "list", "table", "inet", "cordon"]).stdout)
            .into_owned()
    };
    wait_for("db's drop rule", || rules().contains("drop"));

    assert!(
        direct(A_IP, APP_PORT).starts_with("FAILED"),
        "db's app at its address is closed while db enforces"
    );
    let script = format!(
        "(printf via; sleep 1) | timeout 10 openssl s_client -quiet -connect {A2_IP}:{APP_PORT} -cert {0}/web/cert.pem -key {0}/web/key.pem -CAfile {1}/ca.pem 2>/dev/null",
        tls.display(),
        ca.display()
    );
    let via = String::from_utf8_lossy(&hosts.exec(&hosts.b, &["bash", "-c", &script]).stdout).into_owned();
    assert_eq!(via, "via", "cordon's listener on the app's port at another address is untouched");
    assert!(rules().contains(&format!("ip daddr {A_IP} tcp dport {APP_PORT}")), "{}", rules());

    // cache's rule covers 127.0.0.1 only, while its app answers on every address: said at start.
    assert_eq!(direct(A_IP, cache_port), "direct");
    wait_for("the warning about cache", || {
        std::fs::read_to_string(p("agent.log"))
            .unwrap_or_default()
            .contains("lockdown covers only the app's address")
    });
    let log = std::fs::read_to_string(p("agent.log")).unwrap();
    assert!(log.contains("cache") && log.contains(&format!("0.0.0.0:{cache_port}")), "{log}");
    assert!(!log.contains("lockdown not applied"), "{log}");
}
