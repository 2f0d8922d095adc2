//! `cordon import haproxy-cfg` and `cordon import haproxy-log`, run as the built binary on the
//! fixtures under `fixtures/haproxy/`: what they read, and that importing again never counts a
//! line twice.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cordon::agent::config::Config;

fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/haproxy").join(name);
    let len = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
    assert!(len > 0, "{} is empty", path.display());
    path
}

fn cordon(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .output()
        .expect("run cordon")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const HEADER: &str = "trust_domain = \"example.internal\"\ndiscovery_dir = \"/d\"\npolicy = \"/p\"\n\
                      state_dir = \"/s\"\n[tls]\nca = \"/ca.pem\"\ndir = \"/tls\"\n";

#[test]
fn haproxy_cfg_prints_upstreams_that_cordon_toml_accepts() {
    let cfg = fixture("haproxy.cfg");
    let dir = tempfile::tempdir().unwrap();
    let out = cordon(&["import", "haproxy-cfg", cfg.to_str().unwrap(), "--identity", "web"], dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    let toml_path = dir.path().join("cordon.toml");
    std::fs::write(&toml_path, format!("{HEADER}{stdout}")).unwrap();
    let config = Config::load(&toml_path).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    let upstreams: Vec<(String, String, String)> = config
        .upstreams
        .iter()
        .map(|u| (u.service.to_string(), u.listen.to_string(), u.identity.to_string()))
        .collect();
    let expected = [
        ("db", "127.0.0.1:3219"),
        ("cache", "127.0.0.1:3220"),
        ("api", "127.0.0.1:3221"),
        ("api", "[::1]:3221"),
        ("search", "127.0.0.1:3222"),
        ("payments", "127.0.0.1:3224"),
        ("payments", "127.0.0.1:3225"),
    ]
    .map(|(s, l)| (s.to_string(), l.to_string(), "web".to_string()));
    assert_eq!(upstreams, expected);

    for skipped in [
        "# skipped haproxy.cfg:26 listen stats:",
        "# skipped haproxy.cfg:73 frontend payments:",
        "# skipped haproxy.cfg:81 frontend auth: 127.0.0.1:3226 takes TLS from the apps (ssl)",
        "# skipped haproxy.cfg:91 frontend gateway: routes with ACLs to several backends (api-v1, api-v2)",
        "# skipped haproxy.cfg:108 frontend reports: no bind line",
    ] {
        assert!(stdout.contains(skipped), "{skipped} missing from\n{stdout}");
    }
    assert!(stdout.contains("HAProxy bound 0.0.0.0:3220 (every address)"), "{stdout}");
}

#[test]
fn haproxy_cfg_refuses_bad_input_naming_it() {
    let cfg = fixture("haproxy.cfg");
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg.to_str().unwrap();

    let no_identity = cordon(&["import", "haproxy-cfg", cfg], dir.path());
    assert_eq!(no_identity.status.code(), Some(2));
    assert!(text(&no_identity.stderr).contains("--identity"), "{}", text(&no_identity.stderr));

    let bad_identity = cordon(&["import", "haproxy-cfg", cfg, "--identity", "web app"], dir.path());
    assert_eq!(bad_identity.status.code(), Some(2));
    assert!(
        text(&bad_identity.stderr).contains("--identity: service name"),
        "{}",
        text(&bad_identity.stderr)
    );

    let broken = dir.path().join("broken.cfg");
    std::fs::write(&broken, "frontend db\n  bind 127.0.0.1:70000\n  default_backend db\nbackend db\n")
        .unwrap();
    let out = cordon(&["import", "haproxy-cfg", "broken.cfg", "--identity", "web"], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("broken.cfg: line 2: bad bind address: 127.0.0.1:70000"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing half-printed on an error");

    let missing = cordon(&["import", "haproxy-cfg", "nowhere.cfg", "--identity", "web"], dir.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("nowhere.cfg"), "{}", text(&missing.stderr));
}

/// The edge table `import haproxy-log` prints after its notes: (source, destination, connections).
fn edges(stdout: &str) -> Vec<(String, String, u64)> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("SOURCE "))
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn haproxy_log_names_callers_and_counts_bad_lines() {
    let (tcp, http) = (fixture("tcplog.log"), fixture("httplog.log"));
    let dir = tempfile::tempdir().unwrap();
    let files = [tcp.to_str().unwrap(), http.to_str().unwrap()];

    let args =
        ["import", "haproxy-log", "--db", "ledger.db", "--dry-run", "--source", "web", files[0], files[1]];
    let out = cordon(&args, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "malformed lines are not fatal: {stderr}");
    let expected = [
        ("ip:10.0.9.5", "api", 1),
        ("ip:10.0.9.5", "db", 1),
        ("web", "api", 4),
        ("web", "auth", 1),
        ("web", "cache", 2),
        ("web", "db", 3),
        ("web", "gateway", 1),
        ("web", "payments", 1),
        ("web", "search", 1),
    ]
    .map(|(s, d, n)| (s.to_string(), d.to_string(), n));
    assert_eq!(edges(&stdout), expected, "{stdout}");
    assert!(stderr.contains("21 lines: 15 connections imported"), "{stderr}");
    assert!(stderr.contains("6 malformed"), "{stderr}");
    assert!(stderr.contains("tcplog.log:5: not an HAProxy traffic line: bad timers"), "{stderr}");
    assert!(stderr.contains("lines/s"), "{stderr}");
    assert!(!dir.path().join("ledger.db").exists(), "a dry run writes nothing");

    // Without --source, a loopback caller is named by the host that wrote the line, when it can be.
    let out = cordon(&["import", "haproxy-log", "--db", "ledger.db", "--dry-run", files[1]], dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let named: Vec<(String, String, u64)> = edges(&stdout);
    assert!(named.contains(&("ip:10.0.1.11".into(), "api".into(), 1)), "{stdout}");
    assert!(named.contains(&("ip:10.0.9.5".into(), "api".into(), 1)), "{stdout}");
    assert!(
        stderr.contains("loopback caller on host web-1, which discovery does not know; pass --source"),
        "{stderr}"
    );
}

#[test]
fn haproxy_log_refuses_a_missing_file_before_importing_anything() {
    let tcp = fixture("tcplog.log");
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["import", "haproxy-log", "--db", "ledger.db", "--source", "web", tcp.to_str().unwrap(), "gone.log"];
    let out = cordon(&args, dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("opening gone.log"), "{stderr}");
    assert!(!dir.path().join("ledger.db").exists(), "nothing imported");

    let bad_source = ["import", "haproxy-log", "--db", "ledger.db", "--source", "*", tcp.to_str().unwrap()];
    let out = cordon(&bad_source, dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--source"), "{}", text(&out.stderr));
}

#[test]
fn haproxy_log_names_callers_through_discovery() {
    let (tcp, http) = (fixture("tcplog.log"), fixture("httplog.log"));
    let dir = tempfile::tempdir().unwrap();
    let disco = dir.path().join("services");
    std::fs::create_dir(&disco).unwrap();
    // Synapse names a backend `host:port`; the syslog host name matches the part before the colon.
    let web = r#"[{"host": "10.0.1.10", "port": 8080, "name": "web-1:8080"}]"#;
    let batch = r#"[{"host": "10.0.9.5", "port": 9000, "name": "batch-1", "weight": null}]"#;
    std::fs::write(disco.join("web.json"), web).unwrap();
    std::fs::write(disco.join("batch.json"), batch).unwrap();

    let files = [tcp.to_str().unwrap(), http.to_str().unwrap()];
    let args =
        ["import", "haproxy-log", "--db", "l.db", "--dry-run", "--discovery", "services", files[0], files[1]];
    let out = cordon(&args, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let found = edges(&stdout);
    for edge in
        [("web", "db", 2), ("web", "api", 3), ("web", "auth", 1), ("batch", "db", 1), ("batch", "api", 1)]
    {
        let edge = (edge.0.to_string(), edge.1.to_string(), edge.2);
        assert!(found.contains(&edge), "{edge:?} not in\n{stdout}");
    }
    assert!(found.contains(&("ip:10.0.1.11".into(), "api".into(), 1)), "{stdout}");
    // Bare lines from loopback have no host to name: counted, with the fix.
    assert!(stderr.contains("loopback caller and no host name; pass --source"), "{stderr}");

    let missing = ["import", "haproxy-log", "--db", "l.db", "--discovery", "nowhere", files[0]];
    let out = cordon(&missing, dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--discovery nowhere"), "{}", text(&out.stderr));
    assert!(!dir.path().join("l.db").exists(), "nothing written when discovery cannot be read");
}

#[test]
fn haproxy_log_imports_into_a_real_ledger() {
    use std::time::{Duration, UNIX_EPOCH};

    use cordon::ledger::edge_totals;
    use cordon::policy::{Identified, Mode};

    let (tcp, http) = (fixture("tcplog.log"), fixture("httplog.log"));
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "import",
        "haproxy-log",
        "--db",
        "ledger.db",
        "--source",
        "web",
        "--host",
        "web-1",
        tcp.to_str().unwrap(),
        http.to_str().unwrap(),
    ];
    let out = cordon(&args, dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("15 connections imported (ledger.db)"), "{stderr}");

    let edges = edge_totals(&dir.path().join("ledger.db"), None).unwrap();
    let summary: Vec<(&str, &str, u64)> =
        edges.iter().map(|e| (e.source.as_str(), e.destination.as_str(), e.connections)).collect();
    let mut summary = summary;
    summary.sort();
    assert_eq!(
        summary,
        [
            ("ip:10.0.9.5", "api", 1),
            ("ip:10.0.9.5", "db", 1),
            ("web", "api", 4),
            ("web", "auth", 1),
            ("web", "cache", 2),
            ("web", "db", 3),
            ("web", "gateway", 1),
            ("web", "payments", 1),
            ("web", "search", 1),
        ]
    );
    let db = edges.iter().find(|e| e.source == "web" && e.destination == "db").unwrap();
    assert_eq!(db.identified, Identified::HaproxyLog);
    assert_eq!(db.modes, [Mode::Learn]);
    assert_eq!(
        (db.would_deny, db.allowed, db.denied),
        (3, 0, 0),
        "imported edges are not allowed by themselves"
    );
    assert_eq!((db.bytes_to_source, db.bytes_to_destination), (2120 + 100 + 88, 0));
    // The first db line was accepted at 22/Nov/2026:14:05:01.123 (read as UTC).
    let first = UNIX_EPOCH + Duration::from_millis(1_795_356_301_123);
    assert!(
        db.first_seen <= first && first - Duration::from_secs(3600) < db.first_seen,
        "{:?}",
        db.first_seen
    );

    // The graph command reads the imported edges like recorded ones.
    let graph = cordon(&["graph", "--db", "ledger.db"], dir.path());
    assert_eq!(graph.status.code(), Some(0), "{}", text(&graph.stderr));
    assert!(text(&graph.stdout).contains("haproxy-log"), "{}", text(&graph.stdout));
}

#[test]
fn haproxy_log_reads_stdin_and_names_an_unusable_ledger() {
    use std::io::Write;
    use std::process::Stdio;

    let tcp = std::fs::read(fixture("tcplog.log")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["import", "haproxy-log", "--db", "l.db", "--dry-run", "--source", "web", "-"])
        .current_dir(dir.path())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tcp).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("12 lines: 8 connections imported"), "{stderr}");
    assert!(stderr.contains("-:5: not an HAProxy traffic line"), "{stderr}");

    let tcp = fixture("tcplog.log");
    let args =
        ["import", "haproxy-log", "--db", "no/such/dir/l.db", "--source", "web", tcp.to_str().unwrap()];
    let out = cordon(&args, dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("opening the ledger no/such/dir/l.db"), "{stderr}");
}

#[test]
fn haproxy_log_records_what_a_given_policy_allows() {
    use cordon::ledger::edge_totals;

    let tcp = fixture("tcplog.log");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[intention]]\nsource = \"web\"\ndestination = \"db\"\naction = \"allow\"\n",
    )
    .unwrap();
    let args = [
        "import",
        "haproxy-log",
        "--db",
        "ledger.db",
        "--source",
        "web",
        "--policy",
        "policy.toml",
        tcp.to_str().unwrap(),
    ];
    let out = cordon(&args, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let edges = edge_totals(&dir.path().join("ledger.db"), None).unwrap();
    let db = edges.iter().find(|e| e.source == "web" && e.destination == "db").expect("web -> db imported");
    assert_eq!((db.allowed, db.would_deny), (db.connections, 0), "the intention allows web -> db");
    let others: Vec<_> = edges.iter().filter(|e| e.destination != "db" && e.source == "web").collect();
    assert!(!others.is_empty());
    assert!(
        others.iter().all(|e| e.allowed == 0 && e.would_deny == e.connections),
        "no intention, would-deny"
    );

    std::fs::write(dir.path().join("policy.toml"), "[modes]\ndb = \"sometimes\"\n").unwrap();
    let bad = cordon(&args, dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("policy.toml"), "{}", text(&bad.stderr));
}

// Importing again: a file is imported once, however often the import runs.

fn cordon_stdin(args: &[&str], dir: &Path, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cordon");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs cordon, asserts it succeeded, and returns (stdout, stderr).
fn ok(args: &[&str], dir: &Path) -> (String, String) {
    let out = cordon(args, dir);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    (stdout, stderr)
}

/// `import haproxy-log --db DB --source web --host web-1 FILES...`
fn import<'a>(db: &'a str, files: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["import", "haproxy-log", "--db", db, "--source", "web", "--host", "web-1"];
    args.extend_from_slice(files);
    args
}

/// The lines of a fixture, newlines kept.
fn fixture_lines(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    assert!(lines.len() > 8, "{name} has lines");
    lines
}

fn totals(db: &Path) -> Vec<cordon::ledger::EdgeTotals> {
    cordon::ledger::edge_totals(db, None).unwrap()
}

fn connections(db: &Path) -> u64 {
    totals(db).iter().map(|e| e.connections).sum()
}

/// Every row of both tables, as text, sorted: to see that nothing was written.
fn dump(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut rows = Vec::new();
    for table in ["edge_hour", "imported_prefix"] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = stmt.column_count();
        let mut query = stmt.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|i| format!("{:?}", row.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect();
            rows.push(format!("{table}: {}", values.join(", ")));
        }
    }
    rows.sort();
    rows
}

/// What one import of `files` into a fresh ledger gives: the reference for imports done in steps.
fn imported_once(dir: &Path, files: &[&str]) -> Vec<cordon::ledger::EdgeTotals> {
    let fresh = dir.join("reference.db");
    let _ = std::fs::remove_file(&fresh);
    ok(&import(fresh.to_str().unwrap(), files), dir);
    totals(&fresh)
}

#[test]
fn haproxy_log_imports_the_same_file_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    std::fs::copy(fixture("tcplog.log"), dir.path().join("access.log")).unwrap();

    let (stdout, stderr) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(stderr.contains("12 lines: 8 connections imported (ledger.db)"), "{stderr}");
    assert!(!stdout.contains("already imported"), "{stdout}");
    let first = totals(&db);
    assert_eq!(connections(&db), 8);

    let (stdout, stderr) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(stdout.starts_with("access.log: already imported (13 lines), skipped\n"), "{stdout}");
    assert!(edges(&stdout).is_empty(), "{stdout}");
    assert!(stderr.contains("0 lines: 0 connections imported"), "{stderr}");
    assert!(stderr.contains("13 lines skipped as already imported"), "{stderr}");
    assert!(!stderr.contains("not an HAProxy traffic line"), "skipped lines are not read: {stderr}");
    assert_eq!(totals(&db), first, "connections and bytes unchanged");

    // The file is known by its content: a copy, and the same name twice in one run, add nothing.
    std::fs::copy(dir.path().join("access.log"), dir.path().join("copy.log")).unwrap();
    let (stdout, _) = ok(&import("ledger.db", &["copy.log", "access.log", "copy.log"]), dir.path());
    assert_eq!(stdout.matches("already imported (13 lines), skipped").count(), 3, "{stdout}");
    assert_eq!(totals(&db), first);

    // Stdin cannot be recognised: it is imported in full, every time.
    let tcp = std::fs::read(fixture("tcplog.log")).unwrap();
    let out = cordon_stdin(&import("ledger.db", &["-"]), dir.path(), &tcp);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("already imported"), "{}", text(&out.stdout));
    assert_eq!(connections(&db), 16);
}

#[test]
fn haproxy_log_imports_only_the_lines_appended_since() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let log = dir.path().join("access.log");
    let (tcp, http) = (fixture_lines("tcplog.log"), fixture_lines("httplog.log"));
    let append = |text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };

    append(&tcp[..6].concat());
    let (_, stderr) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(stderr.contains("6 lines: 5 connections imported"), "{stderr}");
    assert_eq!(connections(&db), 5);

    append(&tcp[6..].concat());
    let (stdout, stderr) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(
        stdout.starts_with("access.log: 6 lines already imported, skipped; 7 new lines imported\n"),
        "{stdout}"
    );
    assert!(stderr.contains("6 lines: 3 connections imported"), "{stderr}");
    assert!(stderr.contains("access.log:13: not an HAProxy traffic line"), "real line numbers: {stderr}");
    assert_eq!(connections(&db), 8);

    // The writer is halfway through a line: it is left for the next run, then read whole.
    let (half, rest) = http[0].split_at(60);
    append(half);
    let (stdout, stderr) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(stdout.starts_with("access.log: already imported (13 lines), skipped\n"), "{stdout}");
    assert!(
        stderr.contains(
            "access.log:14: no newline at the end (still being written?); left for the next import"
        ),
        "{stderr}"
    );
    assert_eq!(connections(&db), 8);
    append(rest);
    let (stdout, _) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(
        stdout.contains("access.log: 13 lines already imported, skipped; 1 new lines imported"),
        "{stdout}"
    );

    // Four imports of a growing log equal one import of all of it.
    let whole = dir.path().join("whole.log");
    std::fs::write(&whole, format!("{}{}", tcp.concat(), http[0])).unwrap();
    assert_eq!(totals(&db), imported_once(dir.path(), &["whole.log"]));
    assert_eq!(connections(&db), 9);
}

#[test]
fn haproxy_log_after_a_rotation_imports_the_rest_of_the_old_file_and_all_of_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (tcp, http) = (fixture_lines("tcplog.log"), fixture_lines("httplog.log"));

    // cron imported access.log while it held six lines.
    std::fs::write(dir.path().join("access.log"), tcp[..6].concat()).unwrap();
    ok(&import("ledger.db", &["access.log"]), dir.path());
    // The log grew, logrotate moved it to access.log.1, and a new access.log began.
    std::fs::write(dir.path().join("access.log"), tcp.concat()).unwrap();
    std::fs::rename(dir.path().join("access.log"), dir.path().join("access.log.1")).unwrap();
    std::fs::write(dir.path().join("access.log"), http.concat()).unwrap();

    let (stdout, stderr) = ok(&import("ledger.db", &["access.log.1", "access.log"]), dir.path());
    assert!(
        stdout.contains("access.log.1: 6 lines already imported, skipped; 7 new lines imported"),
        "{stdout}"
    );
    assert!(!stdout.contains("access.log: "), "the new file is imported in full: {stdout}");
    assert!(stderr.contains("15 lines: 10 connections imported"), "{stderr}");

    std::fs::write(dir.path().join("tcp.log"), tcp.concat()).unwrap();
    std::fs::write(dir.path().join("http.log"), http.concat()).unwrap();
    assert_eq!(totals(&db), imported_once(dir.path(), &["tcp.log", "http.log"]));

    // Truncated and written afresh (logrotate's copytruncate): another beginning, a full import.
    std::fs::write(dir.path().join("access.log"), tcp[9..].concat()).unwrap();
    let before = connections(&db);
    let (stdout, _) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(!stdout.contains("already imported"), "{stdout}");
    assert_eq!(connections(&db), before + 2);
}

#[test]
fn haproxy_log_dry_run_says_what_it_would_skip_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let tcp = fixture_lines("tcplog.log");
    std::fs::write(dir.path().join("access.log"), tcp[..6].concat()).unwrap();
    ok(&import("ledger.db", &["access.log"]), dir.path());
    std::fs::write(dir.path().join("access.log"), tcp.concat()).unwrap();
    let before = dump(&db);
    assert!(before.iter().any(|r| r.starts_with("imported_prefix: ")), "{before:?}");

    let mut dry = import("ledger.db", &["access.log"]);
    dry.push("--dry-run");
    let (stdout, stderr) = ok(&dry, dir.path());
    assert!(
        stdout.starts_with(
            "access.log: 6 lines already imported, would be skipped; 7 new lines would be imported\n"
        ),
        "{stdout}"
    );
    // Lines 7 to 13 hold web -> db (::1, line 9; line 12) and web -> cache (line 10).
    let expected = [("web", "cache", 1), ("web", "db", 2)].map(|(s, d, n)| (s.to_string(), d.to_string(), n));
    assert_eq!(edges(&stdout), expected, "{stdout}");
    assert!(stderr.contains("dry run, nothing written"), "{stderr}");
    assert_eq!(dump(&db), before, "a dry run writes neither connections nor bookkeeping");

    // So the real run after it still imports the new lines.
    let (stdout, _) = ok(&import("ledger.db", &["access.log"]), dir.path());
    assert!(stdout.contains("7 new lines imported"), "{stdout}");
    assert_eq!(connections(&db), 8);
    let (stdout, _) = ok(&dry, dir.path());
    assert!(stdout.starts_with("access.log: already imported (13 lines), would be skipped\n"), "{stdout}");
    assert!(edges(&stdout).is_empty(), "{stdout}");
}

/// `fixtures/ledger/v2-tcplog.db`: a ledger cordon 0.1.0 (schema version 2) wrote importing
/// `tcplog.log` as `--source web --host web-1`.
fn version_2_ledger(dir: &Path, name: &str) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ledger/v2-tcplog.db");
    let db = dir.join(name);
    std::fs::copy(&fixture, &db).unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
    db
}

fn schema_of(db: &Path) -> (i64, Vec<String>) {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
    let tables = stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    (version, tables)
}

#[test]
fn haproxy_log_migrates_a_ledger_of_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = version_2_ledger(dir.path(), "ledger.db");
    assert_eq!(schema_of(&db), (2, vec!["edge_hour".to_string()]));
    assert_eq!(connections(&db), 8, "the fixture holds tcplog.log");
    std::fs::copy(fixture("httplog.log"), dir.path().join("http.log")).unwrap();

    let (_, stderr) = ok(&import("ledger.db", &["http.log"]), dir.path());
    assert!(stderr.contains("7 connections imported"), "{stderr}");
    let tables = [
        "declared_upstream",
        "declarer",
        "edge_hour",
        "imported_prefix",
        "ship_pending_declarer",
        "ship_pending_edge_hour",
        "ship_pending_imported_prefix",
    ]
    .map(String::from);
    assert_eq!(schema_of(&db), (6, tables.to_vec()));
    std::fs::copy(fixture("tcplog.log"), dir.path().join("tcp.log")).unwrap();
    // The old rows are kept as cordon 0.1.0 wrote them: it recorded a remote client of the log
    // (ip:10.0.9.5 in tcplog.log) as haproxy-log evidence, where cordon now records it as evidence
    // from an address.
    let mut expected = imported_once(dir.path(), &["tcp.log", "http.log"]);
    for e in &mut expected {
        if e.source == "ip:10.0.9.5" && e.destination == "db" {
            assert_eq!(e.identified, cordon::policy::Identified::Unknown);
            e.identified = cordon::policy::Identified::HaproxyLog;
        }
    }
    expected.sort_by(|a, b| {
        (&a.destination, &a.source, a.identified).cmp(&(&b.destination, &b.source, b.identified))
    });
    assert_eq!(totals(&db), expected, "the old rows are kept");

    let (stdout, _) = ok(&import("ledger.db", &["http.log"]), dir.path());
    assert!(stdout.starts_with("http.log: already imported (9 lines), skipped\n"), "{stdout}");
    assert_eq!(connections(&db), 15);
    let (graph, _) = ok(&["graph", "--db", "ledger.db", "--format", "json"], dir.path());
    let graph: serde_json::Value = serde_json::from_str(&graph).unwrap();
    assert!(graph.to_string().contains("haproxy-log"), "{graph}");
}

#[test]
fn merge_carries_what_was_imported_and_reads_older_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("httplog.log"), dir.path().join("access.log")).unwrap();
    ok(&import("host.db", &["access.log"]), dir.path());
    version_2_ledger(dir.path(), "old.db");

    let (stdout, _) = ok(&["merge", "--out", "fleet.db", "host.db", "old.db"], dir.path());
    assert!(stdout.contains(" rows, 1 import record) into fleet.db"), "{stdout}");
    let fleet = dir.path().join("fleet.db");
    assert_eq!(connections(&fleet), 15);
    assert_eq!(schema_of(&dir.path().join("old.db")).0, 2, "an input is only read");

    // The fleet ledger knows access.log is in it: importing it there adds nothing.
    let (stdout, _) = ok(&import("fleet.db", &["access.log"]), dir.path());
    assert!(stdout.starts_with("access.log: already imported (9 lines), skipped\n"), "{stdout}");
    assert_eq!(connections(&fleet), 15);
    // Merging again changes nothing.
    let before = dump(&fleet);
    ok(&["merge", "--out", "fleet.db", "old.db", "host.db"], dir.path());
    assert_eq!(dump(&fleet), before);
}
