//! The watcher against a real directory changed the way Synapse changes it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{backend, eventually, ports, service_file, write_atomic};
use cordon_discovery::{DiscoveryError, WatchOptions, Watcher};

const DEBOUNCE: Duration = Duration::from_millis(50);

#[tokio::test]
async fn added_changed_and_removed_files_are_published() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_atomic(dir, "web", &service_file(&[backend("10.0.0.1", 8080, Some(14000))]));
    let (watcher, mut rx) = Watcher::start(dir, DEBOUNCE).unwrap();
    let first = rx.borrow_and_update().clone();
    assert_eq!(first.generation(), 1);
    assert_eq!(ports(&first, "web"), [8080]);

    write_atomic(dir, "db", &service_file(&[backend("10.0.0.5", 5432, Some(14002))]));
    let snap = eventually(&mut rx, "db added", |s| s.contains("db")).await;
    assert_eq!(snap.backends("db")[0].mtls_port, Some(14002));
    assert_eq!(ports(&snap, "web"), [8080], "web untouched");
    assert!(snap.generation() > first.generation());

    let two = service_file(&[backend("10.0.0.5", 5432, Some(14002)), backend("10.0.0.6", 5432, None)]);
    write_atomic(dir, "db", &two);
    let snap = eventually(&mut rx, "db with two backends", |s| s.backends("db").len() == 2).await;
    assert_eq!(snap.backends("db")[1].mtls_port, None, "the new backend is plaintext");
    assert_eq!(snap.services_at("10.0.0.6".parse().unwrap()), ["db"]);

    std::fs::remove_file(dir.join("db.json")).unwrap();
    let snap = eventually(&mut rx, "db removed", |s| !s.contains("db")).await;
    assert_eq!(ports(&snap, "web"), [8080]);
    assert!(snap.services_at("10.0.0.6".parse().unwrap()).is_empty());
    assert!(watcher.stats().reloads_ok.load(Ordering::Relaxed) >= 4);
    assert_eq!(watcher.current().generation(), snap.generation());
}

#[tokio::test]
async fn a_burst_of_rewrites_is_coalesced_without_losing_the_last_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_atomic(dir, "api", &service_file(&[backend("10.0.2.1", 1, None)]));
    let (_watcher, mut rx) = Watcher::start(dir, DEBOUNCE).unwrap();
    let start = rx.borrow_and_update().generation();

    const WRITES: u16 = 1000;
    for port in 1..=WRITES {
        write_atomic(dir, "api", &service_file(&[backend("10.0.2.1", port, Some(14001))]));
    }
    let snap = eventually(&mut rx, "the last rewrite", |s| ports(s, "api") == [WRITES]).await;
    let publications = snap.generation() - start;
    assert!(publications >= 1);
    assert!(publications < u64::from(WRITES) / 10, "{publications} publications for {WRITES} rewrites");
    assert_eq!(snap.problems(), &[], "atomic renames never expose a partial file");
}

#[tokio::test]
async fn a_continuous_stream_of_writes_still_publishes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    write_atomic(&dir, "api", &service_file(&[backend("10.0.2.1", 1, None)]));
    // A long debounce that the writer below never leaves quiet: only the cap on the delay
    // after a burst's first event can publish while it runs.
    let options = WatchOptions::new(Duration::from_millis(300));
    let (_watcher, mut rx) = Watcher::start_with(&dir, options).unwrap();
    let start = rx.borrow_and_update().generation();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + 2 * common::DEADLINE;
            let mut port = 1u16;
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                port = port % 60000 + 1;
                write_atomic(&dir, "api", &service_file(&[backend("10.0.2.1", port, None)]));
                std::thread::sleep(Duration::from_millis(2));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    eventually(&mut rx, "a publication during the stream", |s| s.generation() > start).await;
    let writer_still_running = !done.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(writer_still_running, "the publication must come while writes are still going on");
}

#[tokio::test]
async fn a_malformed_file_keeps_the_last_good_backends_and_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = service_file(&[backend("10.0.5.10", 5432, Some(14002)), backend("10.0.5.11", 5432, None)]);
    write_atomic(dir, "db", &good);
    let (watcher, mut rx) = Watcher::start(dir, DEBOUNCE).unwrap();
    assert_eq!(rx.borrow_and_update().backends("db").len(), 2);

    // Someone edits the file by hand and leaves a trailing comma.
    std::fs::write(dir.join("db.json"), "[\n  {\"host\": \"10.0.5.10\", \"port\": 5432},\n]\n").unwrap();
    // (The write is not atomic: an empty file may be seen first, a problem of its own.)
    let snap = eventually(&mut rx, "the trailing-comma problem", |s| {
        s.problems().iter().any(|p| p.message.contains("line 3 column"))
    })
    .await;
    assert_eq!(ports(&snap, "db"), [5432, 5432], "last good backends still served");
    assert_eq!(snap.backends("db")[0].mtls_port, Some(14002));
    let [problem] = snap.problems() else { panic!("{:?}", snap.problems()) };
    assert_eq!(problem.file, dir.join("db.json"));
    assert!(problem.message.contains("line 3 column"), "{problem}");
    assert!(watcher.stats().reloads_failed.load(Ordering::Relaxed) >= 1);

    // A bad cordon label is refused the same way: never a silent switch to plaintext.
    let bad_label = r#"[{"host":"10.0.5.10","port":5432,"labels":{"cordon_mtls_port":"14o02"}}]"#;
    write_atomic(dir, "db", bad_label);
    let snap = eventually(&mut rx, "the label problem", |s| {
        s.problems().iter().any(|p| p.message.contains("cordon_mtls_port"))
    })
    .await;
    assert_eq!(snap.backends("db").len(), 2, "last good backends still served");

    // Fixed: the new backends are served and the problem goes away.
    write_atomic(dir, "db", &service_file(&[backend("10.0.5.12", 5433, Some(14002))]));
    let snap = eventually(&mut rx, "db fixed", |s| s.problems().is_empty()).await;
    assert_eq!(ports(&snap, "db"), [5433]);
}

#[tokio::test]
async fn a_half_written_temp_file_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_atomic(dir, "web", &service_file(&[backend("10.0.1.11", 8080, None)]));
    let (_watcher, mut rx) = Watcher::start(dir, DEBOUNCE).unwrap();
    let before = rx.borrow_and_update().generation();

    // Synapse is writing web's new list and has not renamed it yet.
    std::fs::write(dir.join(".web.json.tmp"), r#"[{"host":"10.0.1.12","po"#).unwrap();
    // A real change after it proves the watcher has looked at the directory since.
    write_atomic(dir, "cache", &service_file(&[backend("10.0.3.14", 6379, None)]));
    let snap = eventually(&mut rx, "cache added", |s| s.contains("cache")).await;
    assert_eq!(ports(&snap, "web"), [8080], "the temp file changed nothing");
    assert_eq!(snap.problems(), &[], "the temp file is not a problem");
    assert_eq!(snap.generation(), before + 1, "one publication, for cache only");
}

#[tokio::test]
async fn reload_now_and_periodic_rescans_work_without_file_events() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No notify: only the periodic rescan and reload_now can see changes.
    let mut options = WatchOptions::new(DEBOUNCE);
    options.fs_events = false;
    options.rescan_every = Duration::from_secs(3600);
    let (watcher, mut rx) = Watcher::start_with(dir, options.clone()).unwrap();
    assert_eq!(rx.borrow_and_update().service_count(), 0);

    write_atomic(dir, "search", &service_file(&[backend("10.0.3.14", 9200, Some(14003))]));
    watcher.reload_now();
    eventually(&mut rx, "search after reload_now", |s| s.contains("search")).await;

    options.rescan_every = Duration::from_millis(100);
    let (_polling, mut rx) = Watcher::start_with(dir, options).unwrap();
    write_atomic(dir, "batch-nightly", &service_file(&[backend("10.0.9.40", 8500, None)]));
    eventually(&mut rx, "batch-nightly from a periodic rescan", |s| s.contains("batch-nightly")).await;
}

#[tokio::test]
async fn nothing_changed_means_nothing_published() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let contents = service_file(&[backend("10.0.1.11", 8080, None)]);
    write_atomic(dir, "web", &contents);
    let (watcher, mut rx) = Watcher::start(dir, DEBOUNCE).unwrap();
    rx.borrow_and_update();
    // Synapse rewrites files with the same content on every ZooKeeper event.
    write_atomic(dir, "web", &contents);
    watcher.reload_now();
    write_atomic(dir, "api", &service_file(&[backend("10.0.2.21", 9000, None)]));
    let snap = eventually(&mut rx, "api added", |s| s.contains("api")).await;
    assert_eq!(snap.generation(), 2, "the identical rewrite published nothing");
}

#[tokio::test]
async fn a_vanished_directory_keeps_the_last_snapshot_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("services");
    std::fs::create_dir(&dir).unwrap();
    write_atomic(&dir, "web", &service_file(&[backend("10.0.1.11", 8080, None)]));
    let (watcher, mut rx) = Watcher::start(&dir, DEBOUNCE).unwrap();

    std::fs::remove_dir_all(&dir).unwrap();
    watcher.reload_now();
    let snap =
        eventually(&mut rx, "a problem for the directory", |s| s.problems().iter().any(|p| p.file == dir))
            .await;
    assert_eq!(ports(&snap, "web"), [8080], "the last snapshot is kept");

    // Configuration management puts it back; the watch follows the new directory.
    std::fs::create_dir(&dir).unwrap();
    watcher.reload_now();
    let snap = eventually(&mut rx, "the directory back, web gone", |s| s.problems().is_empty()).await;
    assert!(!snap.contains("web"));
    write_atomic(&dir, "api", &service_file(&[backend("10.0.2.21", 9000, None)]));
    eventually(&mut rx, "api in the new directory", |s| s.contains("api")).await;
}

#[tokio::test]
async fn a_directory_replaced_by_rename_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("services");
    std::fs::create_dir(&dir).unwrap();
    write_atomic(&dir, "web", &service_file(&[backend("10.0.1.11", 8080, None)]));
    let (_watcher, mut rx) = Watcher::start(&dir, DEBOUNCE).unwrap();

    // Configuration management swaps in a freshly rendered directory.
    let fresh = tmp.path().join("services.new");
    std::fs::create_dir(&fresh).unwrap();
    write_atomic(&fresh, "api", &service_file(&[backend("10.0.2.21", 9000, None)]));
    std::fs::rename(&dir, tmp.path().join("services.old")).unwrap();
    std::fs::rename(&fresh, &dir).unwrap();
    let snap = eventually(&mut rx, "the new directory's contents", |s| {
        s.contains("api") && !s.contains("web") && s.problems().is_empty()
    })
    .await;
    assert_eq!(ports(&snap, "api"), [9000]);

    // Changes in the new directory are seen too, not only at the next periodic rescan.
    write_atomic(&dir, "cache", &service_file(&[backend("10.0.3.14", 6379, None)]));
    eventually(&mut rx, "cache in the new directory", |s| s.contains("cache")).await;
}

#[tokio::test]
async fn starting_on_a_missing_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = Watcher::start(&missing, DEBOUNCE).unwrap_err();
    assert!(matches!(err, DiscoveryError::Watch { .. } | DiscoveryError::ReadDir { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
}
