//! Ledger files from a host an attacker controls, as `cordon merge`, `ship` and the review
//! commands meet them: forged rows are refused naming the row and nothing is written; a recursive
//! view or a trigger is refused before any query runs. The built binary over real SQLite files.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cordon::ledger::{self, Declaration, DeclarationOrigin, EdgeKey, Recorder};
use cordon::policy::{Identified, Mode, Verdict};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A real ledger: web -> db (mTLS, with bytes) two hours ago, and web's declaration.
fn good_ledger(path: &Path) {
    let (rec, h) = Recorder::start(path, "host-a", 1024, Duration::from_secs(3600)).unwrap();
    let edge = EdgeKey {
        source: "web".into(),
        destination: "db".into(),
        identified: Identified::Mtls,
        mode: Mode::Learn,
        verdict: Verdict::Allow,
    };
    let at = SystemTime::now() - Duration::from_secs(7200);
    for _ in 0..5 {
        support::connection(&h, &edge, at, at, (10, 90));
    }
    rec.shutdown();
    let decl = Declaration {
        host: "host-a".into(),
        identity: "web".into(),
        origin: DeclarationOrigin::AgentConfig,
        declared_at: at,
        services: vec!["db".into()],
    };
    ledger::record_declaration(path, &decl).unwrap();
}

/// A copy of a good ledger named `name`, changed by `sql`.
fn forged(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(name);
    good_ledger(&path);
    rusqlite::Connection::open(&path).unwrap().execute_batch(sql).unwrap();
    path
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn connections(db: &Path) -> u64 {
    ledger::edge_totals(db, None).unwrap().iter().map(|e| e.connections).sum()
}

#[test]
fn forged_rows_are_refused_naming_the_row_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    good_ledger(&good);
    let cases: &[(&str, &str, &str, &str)] = &[
        ("negative.db", "UPDATE edge_hour SET connections = -5", "edge_hour", "connections"),
        ("max.db", "UPDATE edge_hour SET connections = 9223372036854775807", "edge_hour", "connections"),
        ("text.db", "UPDATE edge_hour SET bytes_to_source = 'lots'", "edge_hour", "bytes_to_source"),
        // 16 MiB of `x`.
        (
            "long.db",
            "UPDATE edge_hour SET destination = replace(hex(zeroblob(8388608)), '0', 'x')",
            "edge_hour",
            "destination",
        ),
        ("mode.db", "UPDATE edge_hour SET mode = 'bogus'", "edge_hour", "mode"),
        ("future.db", "UPDATE edge_hour SET hour = hour + 24 * 3650", "edge_hour", "hour"),
        ("escape.db", "UPDATE edge_hour SET source = 'web' || char(27) || '[2J'", "edge_hour", "source"),
        (
            "declared.db",
            "UPDATE declarer SET declared_at = declared_at + 10 * 365 * 86400000",
            "declarer",
            "declared_at",
        ),
        (
            "upstream.db",
            "UPDATE declared_upstream SET service = 'db' || char(10) || '[[intention]]'",
            "declared_upstream",
            "service",
        ),
    ];
    assert_eq!(cases.len(), 9);
    // A fleet ledger that already holds the good host's rows.
    let fleet = dir.path().join("fleet.db");
    support::cordon_ok(&["merge", "--out", s(&fleet), s(&good)]);
    let before = std::fs::read(&fleet).unwrap();
    for (name, sql, table, column) in cases {
        let bad = forged(dir.path(), name, sql);
        let names_the_row = |said: &str| {
            said.contains(s(&bad))
                && said.contains(&format!("table {table}"))
                && said.contains("row ")
                && said.contains(&format!("column {column}"))
                && !said.contains('\u{1b}')
                && said.len() < 4096
        };
        // Merging into a new ledger: refused, and no output is left behind.
        let out = dir.path().join(format!("merged-{name}"));
        let run = support::cordon(&["merge", "--out", s(&out), s(&good), s(&bad)]);
        assert!(!run.status.success(), "{name}: merge accepted it");
        assert!(names_the_row(&stderr_of(&run)), "{name}: {}", stderr_of(&run));
        assert!(!out.exists(), "{name}: a refused merge left {}", out.display());
        // Merging into the fleet ledger: refused, and the fleet ledger is as it was.
        let run = support::cordon(&["merge", "--out", s(&fleet), s(&bad)]);
        assert!(!run.status.success(), "{name}: merge into the fleet accepted it");
        assert_eq!(std::fs::read(&fleet).unwrap(), before, "{name}: the fleet ledger changed");
        // Shipping: refused before the store is even dialled (nothing listens on port 1).
        let run = support::cordon(&["ship", "--db", s(&bad), "--to", "postgres://cordon@127.0.0.1:1/fleet"]);
        assert!(!run.status.success());
        // Ship reads a declarer with its services in one row: the column may be `services`.
        let said = stderr_of(&run);
        assert!(
            said.contains(s(&bad)) && said.contains("row ") && said.contains("column "),
            "{name}: ship said {said}"
        );
        // Reviewing it: refused, never a graph with a caller gone.
        let run = support::cordon(&["graph", "--db", s(&bad)]);
        assert!(!run.status.success(), "{name}: graph accepted it");
        assert!(names_the_row(&stderr_of(&run)), "{name}: graph said {}", stderr_of(&run));
    }
    assert_eq!(connections(&fleet), 5, "the good host's connections are all there");
}

/// Waits for `child` at most `deadline`, killing it past that; its output, or `None` if killed.
fn wait_bounded(mut child: std::process::Child, deadline: Duration) -> Option<std::process::Output> {
    let until = Instant::now() + deadline;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_recursive_view_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = forged(
        dir.path(),
        "view.db",
        "DROP TABLE edge_hour;
         CREATE VIEW edge_hour AS
           WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)
           SELECT 'host-a' AS host, 0 AS hour, 'web' AS source, 'db' AS destination,
                  'mtls' AS identified, 'learn' AS mode, 'allow' AS verdict, 1 AS connections,
                  0 AS bytes_to_destination, 0 AS bytes_to_source, 0 AS first_seen, 0 AS last_seen
           FROM n;",
    );
    let out = dir.path().join("merged.db");
    let child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["merge", "--out", s(&out), s(&bad)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Generous for a loaded machine; a merge that reads the view never ends.
    let run = wait_bounded(child, Duration::from_secs(60)).expect("merge ran on until it was killed");
    assert!(!run.status.success());
    let said = stderr_of(&run);
    assert!(said.contains(s(&bad)) && said.contains("view edge_hour"), "{said}");
    assert!(!out.exists());
}

#[test]
fn a_trigger_is_refused_in_an_input_and_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let trap = "CREATE TRIGGER wipe AFTER INSERT ON edge_hour BEGIN DELETE FROM declarer; END;";
    let bad = forged(dir.path(), "trigger.db", trap);
    let out = dir.path().join("merged.db");
    let run = support::cordon(&["merge", "--out", s(&out), s(&bad)]);
    assert!(!run.status.success());
    assert!(stderr_of(&run).contains("trigger wipe"), "{}", stderr_of(&run));
    // As the output: merging into it would fire the trigger.
    let good = dir.path().join("good.db");
    good_ledger(&good);
    let before = std::fs::read(&bad).unwrap();
    let run = support::cordon(&["merge", "--out", s(&bad), s(&good)]);
    assert!(!run.status.success());
    assert!(stderr_of(&run).contains("trigger wipe"), "{}", stderr_of(&run));
    assert_eq!(std::fs::read(&bad).unwrap(), before);
    // The triggers of a shipping agent's own ledger are cordon's: that ledger merges.
    let shipping = dir.path().join("shipping.db");
    good_ledger(&shipping);
    drop(ledger::spool::Spool::open(&shipping, "host-a").unwrap());
    support::cordon_ok(&["merge", "--out", s(&out), s(&shipping)]);
    assert_eq!(connections(&out), 5);
}
