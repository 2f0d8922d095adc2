//! The recorder when the ledger itself fails: a damaged file is moved aside and recording goes on
//! in a fresh one; a stop that cannot write keeps the counters in a side ledger that the next start
//! adds in, and says how many.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon::ledger::{self, EdgeKey, Event, Recorder};
use cordon::policy::{Identified, Mode, Verdict};

/// 2026-11-20T00:00:00Z.
const T0: u64 = 1_795_132_800;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn edge(source: &str) -> EdgeKey {
    EdgeKey {
        source: source.into(),
        destination: "db".into(),
        identified: Identified::Mtls,
        mode: Mode::Learn,
        verdict: Verdict::Allow,
    }
}

fn connections(db: &Path) -> u64 {
    ledger::edge_totals(db, None).unwrap().iter().map(|e| e.connections).sum()
}

fn beside(db: &Path, infix: &str) -> Vec<PathBuf> {
    let prefix = format!("ledger.db{infix}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
        .collect();
    found.sort();
    found
}

#[test]
fn a_ledger_with_a_damaged_page_is_moved_aside_and_recording_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    // Enough distinct edges for the table to span many pages.
    let (recorder, handle) = Recorder::start(&db, "h", 8192, Duration::from_secs(3600)).unwrap();
    for i in 0..3000 {
        handle.record_wait(Event::Opened { edge: edge(&format!("caller-{i:05}")), at: at(T0) });
    }
    recorder.shutdown();
    assert_eq!(connections(&db), 3000);
    // The last connection closed checkpointed the log into the file; damage a page in the middle
    // of the table, leaving the header and the schema page intact.
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len >= 20 * 4096, "the ledger spans many pages ({len} bytes)");
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.seek(SeekFrom::Start(len / 4096 / 2 * 4096)).unwrap();
    file.write_all(&[0xA5; 4096]).unwrap();
    drop(file);

    let (recorder, handle) = Recorder::start(&db, "h", 1024, Duration::from_secs(3600)).unwrap();
    assert_eq!(handle.stats().ledgers_set_aside.load(Ordering::Relaxed), 1);
    let aside = beside(&db, ".damaged-");
    assert_eq!(aside.len(), 1, "the damaged ledger is kept, renamed: {aside:?}");
    for _ in 0..10 {
        handle.record_wait(Event::Opened { edge: edge("web"), at: at(T0) });
    }
    assert!(handle.flush_wait());
    recorder.shutdown();
    let stats = handle.stats();
    assert_eq!(stats.write_errors.load(Ordering::Relaxed), 0);
    assert_eq!(stats.written.load(Ordering::Relaxed), 10);
    // What the damaged file's readable pages held is carried over: all but the rows of the one
    // damaged page (one connection each).
    let salvaged = stats.rows_salvaged.load(Ordering::Relaxed);
    assert!((2800..3000).contains(&salvaged), "salvaged {salvaged} of 3000 rows");
    assert_eq!(connections(&db), 10 + salvaged, "the fresh ledger holds this run's records and the salvage");
    let callers = ledger::edge_totals(&db, None).unwrap();
    assert!(
        callers.iter().any(|e| e.source == "caller-00000")
            && callers.iter().any(|e| e.source == "caller-02999")
    );
}

#[test]
fn a_stop_that_cannot_write_keeps_the_counters_and_the_next_start_adds_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 4096, Duration::from_secs(3600)).unwrap();
    for _ in 0..5 {
        handle.record_wait(Event::Opened { edge: edge("web"), at: at(T0) });
    }
    assert!(handle.flush_wait());
    // Another writer holds the write lock through the stop: every write fails.
    let mut blocker = rusqlite::Connection::open(&db).unwrap();
    let lock = blocker.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    for i in 0..1000 {
        handle.record_wait(Event::Opened { edge: edge(&format!("caller-{}", i % 40)), at: at(T0) });
    }
    let unwritten = recorder.close(true).unwrap_err();
    assert_eq!((unwritten.connections, unwritten.events, unwritten.rows), (1000, 1000, 40));
    let kept = unwritten.kept.as_ref().unwrap().clone();
    assert_eq!(kept.parent(), db.parent(), "kept beside the ledger");
    let said = unwritten.to_string();
    assert!(said.contains("1000 connections") && said.contains(&kept.display().to_string()), "{said}");
    drop(lock);
    drop(blocker);
    assert_eq!(connections(&db), 5);

    // The next start adds them in and removes the side ledger.
    let (recorder, _handle) = Recorder::start(&db, "h", 16, Duration::from_secs(3600)).unwrap();
    recorder.shutdown();
    assert_eq!(connections(&db), 1005);
    assert!(beside(&db, ".unwritten-").is_empty(), "{:?}", beside(&db, ".unwritten-"));
}

#[test]
fn a_stop_that_writes_everything_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (recorder, handle) = Recorder::start(&db, "h", 64, Duration::from_secs(3600)).unwrap();
    handle.record_wait(Event::Opened { edge: edge("web"), at: at(T0) });
    assert!(recorder.close(true).is_ok());
    assert_eq!(connections(&db), 1);
    assert!(beside(&db, ".unwritten-").is_empty());
}
