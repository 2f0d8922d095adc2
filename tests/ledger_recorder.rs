//! The recorder against real SQLite files: what is written, what survives a clean shutdown and a
//! `kill -9`, failed writes retried, schema migration, and files that are not ledgers.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cordon::ledger::{self, EdgeKey, Event, LedgerError, Recorder};
use cordon::policy::{Identified, Mode, Verdict};

const HOUR: u64 = 3600;
/// 2026-10-01T00:00:00Z: every fixture time (up to T0 + 30 days) is in the past, as readers
/// refuse a ledger that records the future.
const T0: u64 = 1_790_812_800;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn edge(source: &str, destination: &str, identified: Identified, verdict: Verdict) -> EdgeKey {
    EdgeKey { source: source.into(), destination: destination.into(), identified, mode: Mode::Learn, verdict }
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connections(db: &Path) -> u64 {
    ledger::edge_totals(db, None).unwrap().iter().map(|e| e.connections).sum()
}

#[test]
fn clean_shutdown_writes_every_event_aggregated_per_edge_and_hour() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    // A long interval: only the shutdown can have written these.
    let (recorder, handle) = Recorder::start(&db, "host-a", 1024, Duration::from_secs(3600)).unwrap();
    let web_db = edge("web", "db", Identified::Mtls, Verdict::Allow);
    for i in 0..500 {
        handle.record_wait(Event::Opened { edge: web_db.clone(), at: at(T0 + (i % 3) * HOUR) });
        handle.record_wait(Event::Closed {
            edge: web_db.clone(),
            at: at(T0 + (i % 3) * HOUR + 1),
            bytes_to_destination: 10,
            bytes_to_source: 100,
            duration: Duration::from_millis(5),
        });
    }
    let batch = edge("10.0.0.7", "db", Identified::PlaintextIp, Verdict::Deny);
    handle.record_wait(Event::Opened { edge: batch.clone(), at: at(T0 + 30 * 24 * HOUR) });
    recorder.shutdown();
    assert_eq!(handle.stats().written.load(Ordering::Relaxed), 1001);
    assert_eq!(handle.stats().dropped.load(Ordering::Relaxed), 0);
    // After shutdown, record neither blocks nor panics: it counts a drop.
    handle.record(Event::Opened { edge: batch, at: at(T0) });
    assert_eq!(handle.stats().dropped.load(Ordering::Relaxed), 1);

    let edges = ledger::edge_totals(&db, None).unwrap();
    assert_eq!(edges.len(), 2);
    let web = edges.iter().find(|e| e.source == "web").unwrap();
    assert_eq!((web.connections, web.bytes_to_destination, web.bytes_to_source), (500, 5000, 50_000));
    assert_eq!((web.allowed, web.would_deny, web.denied), (500, 0, 0));
    assert_eq!(web.first_seen, at(T0));
    assert_eq!(web.last_seen, at(T0 + 2 * HOUR + 1));
    assert_eq!(web.days_seen, 1);
    let plain = edges.iter().find(|e| e.source == "10.0.0.7").unwrap();
    assert_eq!((plain.identified, plain.would_deny), (Identified::PlaintextIp, 1));

    // Three hourly rows for web -> db, one for the plaintext caller, all on host-a.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: i64 =
        conn.query_row("SELECT count(*) FROM edge_hour WHERE host = 'host-a'", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 4);

    // A window that starts after the web traffic sees only the later caller.
    let later = ledger::edge_totals(&db, Some(at(T0 + 10 * 24 * HOUR))).unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].source, "10.0.0.7");

    let callers = ledger::callers_into(&db, "db", None).unwrap();
    assert_eq!(callers.iter().map(|c| c.source.as_str()).collect::<Vec<_>>(), ["10.0.0.7", "web"]);
    assert!(ledger::callers_into(&db, "nobody", None).unwrap().is_empty());
}

#[test]
fn dropping_the_recorder_flushes_and_a_restart_adds_to_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let e = edge("web", "db", Identified::Mtls, Verdict::Allow);
    for round in 1..=2 {
        let (recorder, handle) = Recorder::start(&db, "host-a", 16, Duration::from_secs(3600)).unwrap();
        for _ in 0..100 {
            handle.record_wait(Event::Opened { edge: e.clone(), at: at(T0) });
        }
        drop(recorder);
        assert_eq!(connections(&db), 100 * round);
    }
}

#[test]
fn the_review_reads_while_the_recorder_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 1024, Duration::from_millis(20)).unwrap();
    // A fresh ledger reads as empty.
    assert!(ledger::edge_totals(&db, None).unwrap().is_empty());
    let e = edge("web", "db", Identified::Mtls, Verdict::Allow);
    for round in 1..=3u64 {
        for _ in 0..10 {
            handle.record(Event::Opened { edge: e.clone(), at: at(T0) });
        }
        // Each interval's batch shows up for a reader without stopping the recorder.
        eventually("the batch to be readable", || connections(&db) == 10 * round);
    }
    recorder.shutdown();
}

#[test]
fn a_full_channel_counts_drops_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 1, Duration::from_secs(3600)).unwrap();
    let e = edge("web", "db", Identified::Mtls, Verdict::Allow);
    for _ in 0..100_000 {
        handle.record(Event::Opened { edge: e.clone(), at: at(T0) });
    }
    recorder.shutdown();
    let stats = handle.stats();
    let (written, dropped) = (stats.written.load(Ordering::Relaxed), stats.dropped.load(Ordering::Relaxed));
    assert_eq!(written + dropped, 100_000);
    assert_eq!(connections(&db), written);
}

#[test]
fn a_failed_write_is_counted_and_retried_without_losing_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 1024, Duration::from_millis(20)).unwrap();
    // Another writer (as a long `cordon merge` would) holds the write lock: batches fail.
    let mut blocker = rusqlite::Connection::open(&db).unwrap();
    let lock = blocker.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let e = edge("web", "db", Identified::Mtls, Verdict::Allow);
    for _ in 0..50 {
        handle.record(Event::Opened { edge: e.clone(), at: at(T0) });
    }
    eventually("a failed write", || handle.stats().write_errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(handle.stats().written.load(Ordering::Relaxed), 0);
    // The data plane keeps going while writes fail.
    for _ in 0..50 {
        handle.record(Event::Opened { edge: e.clone(), at: at(T0) });
    }
    drop(lock);
    eventually("the retried batch", || handle.stats().written.load(Ordering::Relaxed) == 100);
    recorder.shutdown();
    assert_eq!(connections(&db), 100);
    assert_eq!(handle.stats().dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn while_writes_fail_pending_counters_are_bounded_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 4096, Duration::from_millis(20)).unwrap();
    let mut blocker = rusqlite::Connection::open(&db).unwrap();
    let lock = blocker.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let e = edge("web", "db", Identified::Mtls, Verdict::Allow);
    let total = ledger::MAX_PENDING_KEYS as u64 + 100;
    // One distinct hour per event, back from T0 (a ledger may not record the future): every
    // event is a new counter.
    for hour in 0..total {
        handle.record_wait(Event::Opened { edge: e.clone(), at: at(T0 - hour * HOUR) });
    }
    eventually("all events taken", || handle.stats().received.load(Ordering::Relaxed) == total);
    assert!(handle.stats().write_errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        handle.stats().dropped.load(Ordering::Relaxed),
        100,
        "only events beyond the bound are dropped"
    );
    drop(lock);
    eventually("the kept counters written", || {
        handle.stats().written.load(Ordering::Relaxed) == ledger::MAX_PENDING_KEYS as u64
    });
    recorder.shutdown();
    assert_eq!(connections(&db), ledger::MAX_PENDING_KEYS as u64);
}

/// The child half of the crash test: records, reports what is flushed, keeps recording until
/// it is killed.
#[test]
fn crash_child() {
    let Some(db) = std::env::var_os("CORDON_TEST_CRASH_LEDGER") else { return };
    let (_recorder, handle) = Recorder::start(Path::new(&db), "h", 4096, Duration::from_millis(50)).unwrap();
    let e = edge("web", "db", Identified::Mtls, Verdict::Allow);
    for _ in 0..1000 {
        handle.record_wait(Event::Opened { edge: e.clone(), at: at(T0) });
    }
    assert!(handle.flush_wait());
    let mut out = std::io::stdout().lock();
    writeln!(out, "FLUSHED {}", handle.stats().written.load(Ordering::Relaxed)).unwrap();
    out.flush().unwrap();
    drop(out);
    // Steady traffic with no pause: batches must still be written every interval. Bounded by
    // the parent's kill (and, should the parent die, by the count).
    let others: Vec<EdgeKey> =
        (0..500).map(|i| edge(&format!("svc{i}"), "db", Identified::Mtls, Verdict::Allow)).collect();
    for i in 0..100_000_000u64 {
        handle.record_wait(Event::Opened {
            edge: others[(i % 500) as usize].clone(),
            at: at(T0 + (i % 48) * HOUR),
        });
    }
}

#[test]
fn kill_9_loses_at_most_the_last_interval_and_leaves_a_sound_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("CORDON_TEST_CRASH_LEDGER", &db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let flushed = loop {
        let line = lines.next().expect("child exited before flushing").unwrap();
        // The test harness prints `test crash_child ... ` on the same line.
        if let Some((_, n)) = line.split_once("FLUSHED ") {
            break n.trim().parse::<u64>().unwrap();
        }
    };
    assert_eq!(flushed, 1000);
    // Kill it while it is busy writing further batches.
    eventually("more batches", || connections(&db) > 2000);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let callers = ledger::callers_into(&db, "db", None).unwrap();
    let web = callers.iter().find(|c| c.source == "web").unwrap();
    assert_eq!(web.connections, 1000, "everything flushed before the kill is there");
    // And the ledger is still usable by the next agent.
    let (recorder, handle) = Recorder::start(&db, "h", 16, Duration::from_secs(1)).unwrap();
    handle
        .record_wait(Event::Opened { edge: edge("web", "db", Identified::Mtls, Verdict::Allow), at: at(T0) });
    recorder.shutdown();
    let web = ledger::callers_into(&db, "db", None).unwrap().into_iter().find(|c| c.source == "web").unwrap();
    assert_eq!(web.connections, 1001);
}

#[test]
fn a_version_1_ledger_is_migrated_to_the_current_version_keeping_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        ledger::schema::create_v1_for_tests(&conn).unwrap();
        conn.execute(
            "INSERT INTO edge_hour VALUES (?1, 'web', 'db', 'mtls', 'learn', 'allow', 7, 70, 700, ?2, ?2)",
            rusqlite::params![(T0 / HOUR) as i64, (T0 * 1000) as i64],
        )
        .unwrap();
    }
    // Readers accept version 1 as it is.
    assert_eq!(connections(&db), 7);
    let (recorder, handle) = Recorder::start(&db, "host-a", 16, Duration::from_secs(1)).unwrap();
    handle
        .record_wait(Event::Opened { edge: edge("web", "db", Identified::Mtls, Verdict::Allow), at: at(T0) });
    recorder.shutdown();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 6);
    let declared: i64 = conn.query_row("SELECT count(*) FROM declarer", [], |r| r.get(0)).unwrap();
    assert_eq!(declared, 0, "the declarations tables are there, empty");
    let imported: i64 = conn.query_row("SELECT count(*) FROM imported_prefix", [], |r| r.get(0)).unwrap();
    assert_eq!(imported, 0, "the import bookkeeping is there, empty");
    let (host, conns, bytes): (String, i64, i64) = conn
        .query_row("SELECT host, connections, bytes_to_source FROM edge_hour", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((host.as_str(), conns, bytes), ("host-a", 8, 700));
}

fn assert_refused(db: &Path, expect: &str) {
    let before = std::fs::read(db).unwrap();
    let err = Recorder::start(db, "h", 16, Duration::from_secs(1)).err().expect("must be refused");
    let msg = err.to_string();
    assert!(msg.contains(&db.display().to_string()), "{msg}");
    assert!(msg.contains(expect), "{msg}");
    let err = ledger::edge_totals(db, None).unwrap_err().to_string();
    assert!(err.contains(&db.display().to_string()) && err.contains(expect), "{err}");
    assert_eq!(std::fs::read(db).unwrap(), before, "a refused file is left untouched");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    std::fs::write(&db, b"this is a text file, not a database, with enough bytes to look like a header....")
        .unwrap();
    assert_refused(&db, "not a cordon ledger");
    let err = ledger::edge_totals(&db, None).unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
}

#[test]
fn a_foreign_sqlite_database_is_refused_naming_its_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    rusqlite::Connection::open(&db).unwrap().execute_batch("CREATE TABLE users (name TEXT)").unwrap();
    assert_refused(&db, "users");
}

#[test]
fn a_ledger_from_a_future_cordon_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE edge_hour (x); PRAGMA user_version = 9;").unwrap();
    drop(conn);
    assert_refused(&db, "version 9");
}

#[test]
fn a_ledger_from_a_future_cordon_with_tables_of_its_own_is_refused_as_too_new() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE edge_hour (x); CREATE TABLE later (y); PRAGMA user_version = 99;")
        .unwrap();
    drop(conn);
    assert_refused(&db, "ledger schema version 99 is newer than this cordon understands");
}

#[test]
fn a_current_ledger_missing_a_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    Recorder::start(&db, "h", 16, Duration::from_secs(1)).unwrap().0.shutdown();
    rusqlite::Connection::open(&db).unwrap().execute_batch("DROP TABLE imported_prefix").unwrap();
    assert_refused(&db, "user_version 6 without table imported_prefix");
}

fn imported(len: u64) -> ledger::ImportedPrefix {
    ledger::ImportedPrefix {
        sha256: [7; 32],
        len,
        lines: len / 10,
        file: "access.log".into(),
        imported_at: at(T0),
    }
}

#[test]
fn an_imported_prefix_is_written_with_the_events_before_it_never_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 1024, Duration::from_millis(100)).unwrap();
    let mut blocker = rusqlite::Connection::open(&db).unwrap();
    let lock = blocker.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let e = edge("web", "db", Identified::HaproxyLog, Verdict::Deny);
    for _ in 0..3 {
        handle.record_wait(Event::Opened { edge: e.clone(), at: at(T0) });
    }
    handle.mark_imported(imported(100));
    assert!(handle.flush_wait());
    assert!(handle.stats().write_errors.load(Ordering::Relaxed) >= 1, "the write failed");
    assert_eq!(ledger::imported_prefixes(&db, u64::MAX).unwrap(), [], "nothing recorded as imported");
    assert_eq!(connections(&db), 0);
    drop(lock);
    assert!(handle.flush_wait());
    assert_eq!(ledger::imported_prefixes(&db, u64::MAX).unwrap(), [imported(100)]);
    assert_eq!(connections(&db), 3, "written in the same transaction");
    assert_eq!(ledger::imported_prefixes(&db, 99).unwrap(), [], "only prefixes that fit");
    recorder.shutdown();
}

#[test]
fn after_a_dropped_event_nothing_is_recorded_as_imported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 1, Duration::from_millis(20)).unwrap();
    let mut blocker = rusqlite::Connection::open(&db).unwrap();
    let lock = blocker.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let e = edge("web", "db", Identified::HaproxyLog, Verdict::Deny);
    // The writer waits on the lock; a channel of one fills and `record` drops.
    eventually("a dropped event", || {
        handle.record(Event::Opened { edge: e.clone(), at: at(T0) });
        handle.stats().dropped.load(Ordering::Relaxed) >= 1
    });
    handle.mark_imported(imported(100));
    drop(lock);
    assert!(handle.flush_wait());
    recorder.shutdown();
    assert!(connections(&db) >= 1, "the events kept are written");
    assert_eq!(ledger::imported_prefixes(&db, u64::MAX).unwrap(), [], "but the file is not marked");
}

#[test]
fn an_unwritable_location_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let db = not_a_dir.join("ledger.db");
    let err = Recorder::start(&db, "h", 16, Duration::from_secs(1)).err().expect("must fail");
    assert!(err.to_string().contains(&db.display().to_string()), "{err}");
    let missing = dir.path().join("missing.db");
    let err = ledger::edge_totals(&missing, None).unwrap_err();
    assert!(matches!(err, LedgerError::Missing { .. }), "{err:?}");
}

#[test]
fn the_spool_tracks_every_change_until_it_is_shipped() {
    use cordon::ledger::spool::Spool;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "host-a", 16, Duration::from_millis(20)).unwrap();
    let web_db = edge("web", "db", Identified::Mtls, Verdict::Allow);
    handle.record_wait(Event::Opened { edge: web_db.clone(), at: at(T0) });
    assert!(handle.flush_wait());
    // Rows already there when shipping starts are unshipped.
    let mut spool = Spool::open(&db, "host-a").unwrap();
    let batches = spool.pending(100).unwrap();
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 1);
    // A change while the batch is out: the marker stays, so it is shipped again.
    handle.record_wait(Event::Opened { edge: web_db.clone(), at: at(T0 + 1) });
    assert!(handle.flush_wait());
    for b in &batches {
        spool.mark_shipped(b).unwrap();
    }
    assert_eq!(spool.waiting().unwrap(), 1, "changed after it was read");
    for b in &spool.pending(100).unwrap() {
        spool.mark_shipped(b).unwrap();
    }
    assert_eq!(spool.waiting().unwrap(), 0);
    // New rows and updates of shipped ones are tracked from the recorder's connection.
    handle.record_wait(Event::Opened { edge: web_db.clone(), at: at(T0 + 2) });
    handle.record_wait(Event::Opened { edge: web_db, at: at(T0 + 5 * HOUR) });
    assert!(handle.flush_wait());
    assert_eq!(spool.waiting().unwrap(), 2);
    recorder.shutdown();
}

#[test]
fn the_spool_ships_a_declaration_with_its_services_and_every_change_to_them() {
    use cordon::ledger::spool::{Spool, Values};
    use cordon::ledger::{Declaration, DeclarationOrigin};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let declare = |at_s: u64, services: &[&str]| {
        let decl = Declaration {
            host: "host-a".into(),
            identity: "web".into(),
            origin: DeclarationOrigin::HaproxyCfg,
            declared_at: at(at_s),
            services: services.iter().map(|s| s.to_string()).collect(),
        };
        ledger::record_declaration(&db, &decl).unwrap();
    };
    declare(T0, &["db", "cache"]);
    let mut spool = Spool::open(&db, "host-a").unwrap();
    let services = |spool: &Spool| -> Vec<String> {
        let batches = spool.pending(100).unwrap();
        let declarer: Vec<_> = batches.iter().filter(|b| b.table.name == "declarer").collect();
        assert_eq!(declarer.len(), 1, "one declarer batch: {batches:?}");
        match declarer[0].columns.last() {
            Some(Values::Text(v)) => v.clone(),
            other => panic!("services: {other:?}"),
        }
    };
    assert_eq!(services(&spool), ["cache\ndb"], "a declaration already there ships, its services sorted");
    let ship_all = |spool: &mut Spool| {
        for b in &spool.pending(100).unwrap() {
            spool.mark_shipped(b).unwrap();
        }
        assert_eq!(spool.waiting().unwrap(), 0);
    };
    ship_all(&mut spool);
    // The same declaration again ships the same; one of the same time adds to it; a newer one
    // replaces it, down to no services at all.
    declare(T0, &["db", "cache"]);
    assert_eq!(services(&spool), ["cache\ndb"]);
    declare(T0, &["queue"]);
    assert_eq!(services(&spool), ["cache\ndb\nqueue"]);
    ship_all(&mut spool);
    declare(T0 + 60, &[]);
    assert_eq!(services(&spool), [""]);
    ship_all(&mut spool);
    declare(T0 + 30, &["old"]);
    assert_eq!(spool.waiting().unwrap(), 0, "an older declaration is ignored");
}
