//! Ledger benchmarks (plain `main`, run with `cargo bench --bench ledger`):
//! 1. recorder throughput: connection events per second into SQLite (target >= 100,000/s);
//! 2. `propose` and `diff` over a synthetic ledger of 10,000 services and a million edge-hours
//!    (target: each under 2 s, loading the ledger included).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cordon::graph;
use cordon::ledger::{EdgeKey, Event, Recorder};
use cordon::policy::{Identified, Mode, Policy, Verdict};

const SERVICES: u64 = 10_000;
const CALLERS_PER_SERVICE: u64 = 5;
const HOURS: u64 = 20;
/// 2026-11-01T00:00:00Z.
const T0: u64 = 1_793_491_200;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn identified(i: u64) -> Identified {
    match i % 100 {
        0..=89 => Identified::Mtls,
        90..=94 => Identified::PlaintextIp,
        95..=97 => Identified::HaproxyLog,
        _ => Identified::Unknown,
    }
}

fn edge(i: u64, destination: u64) -> EdgeKey {
    let ident = identified(i);
    let source = match ident {
        Identified::Unknown => format!("ip:10.{}.{}.{}", i % 250, (i / 250) % 250, i % 7),
        _ => format!("svc{:05}", (destination * 7 + (i % CALLERS_PER_SERVICE) * 13 + 1) % SERVICES),
    };
    EdgeKey {
        source,
        destination: format!("svc{destination:05}"),
        identified: ident,
        mode: Mode::Learn,
        verdict: if i.is_multiple_of(10) { Verdict::Deny } else { Verdict::Allow },
    }
}

fn recorder_throughput(dir: &Path) {
    const EVENTS: u64 = 1_000_000;
    // 400 destinations with five callers each: 2,000 distinct edges.
    let edges: Vec<EdgeKey> = (0..2_000).map(|i| edge(i, i / CALLERS_PER_SERVICE)).collect();
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            let edge = edges[(i % 2_000) as usize].clone();
            let when = at(T0 + (i / 20_000) * 60);
            if i % 2 == 0 {
                Event::Opened { edge, at: when }
            } else {
                Event::Closed {
                    edge,
                    at: when,
                    bytes_to_destination: 512,
                    bytes_to_source: 4096,
                    duration: Duration::from_millis(20),
                }
            }
        })
        .collect();
    let db = dir.join("throughput.db");
    // A short interval, so that the run includes several batch writes, not only the last one.
    let (recorder, handle) = Recorder::start(&db, "bench", 65_536, Duration::from_millis(100)).unwrap();
    let started = Instant::now();
    for e in events {
        handle.record_wait(e);
    }
    recorder.shutdown();
    let secs = started.elapsed().as_secs_f64();
    let stats = handle.stats();
    assert_eq!(stats.written.load(Ordering::Relaxed), EVENTS);
    println!(
        "recorder: {EVENTS} events (2,000 edges) into SQLite in {secs:.3} s = {:.0} events/s, {} batches, file {} KiB",
        EVENTS as f64 / secs,
        stats.batches.load(Ordering::Relaxed),
        file_kib(&db)
    );
}

fn file_kib(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    (std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0))
        / 1024
}

/// A real policy that allows nine edges in ten and enforces half the services.
fn bench_policy() -> Policy {
    let mut text = String::from("[modes]\n");
    for dest in (0..SERVICES).step_by(2) {
        text += &format!("svc{dest:05} = \"enforce\"\n");
    }
    let mut pairs = std::collections::BTreeSet::new();
    for dest in 0..SERVICES {
        for k in 0..CALLERS_PER_SERVICE {
            let e = edge(dest * CALLERS_PER_SERVICE + k, dest);
            let mut h = DefaultHasher::new();
            (&e.source, &e.destination).hash(&mut h);
            if !h.finish().is_multiple_of(10) && !e.source.starts_with("ip:") {
                pairs.insert((e.source, e.destination));
            }
        }
    }
    for (source, destination) in pairs {
        text += &format!(
            "[[intention]]\nsource = {source:?}\ndestination = {destination:?}\naction = \"allow\"\n"
        );
    }
    Policy::parse(&text, Path::new("bench-policy.toml")).unwrap()
}

fn synthetic_ledger(dir: &Path) {
    let db = dir.join("fleet.db");
    let (recorder, handle) = Recorder::start(&db, "bench", 65_536, Duration::from_secs(1)).unwrap();
    let started = Instant::now();
    for hour in 0..HOURS {
        for dest in 0..SERVICES {
            for k in 0..CALLERS_PER_SERVICE {
                let i = dest * CALLERS_PER_SERVICE + k;
                handle.record_wait(Event::Opened { edge: edge(i, dest), at: at(T0 + hour * 3600 * 7) });
            }
        }
    }
    recorder.shutdown();
    let rows = SERVICES * CALLERS_PER_SERVICE * HOURS;
    let kib = file_kib(&db);
    println!(
        "synthetic ledger: {SERVICES} services, {rows} edge-hours written in {:.1} s, file {:.1} MiB ({} bytes per edge-hour)",
        started.elapsed().as_secs_f64(),
        kib as f64 / 1024.0,
        kib * 1024 / rows
    );

    let t = Instant::now();
    let observed = graph::load(&db, None).unwrap();
    let load = t.elapsed();
    println!(
        "graph::load: {} edges, {} nodes in {:.3} s",
        observed.edges.len(),
        observed.nodes.len(),
        load.as_secs_f64()
    );

    let t = Instant::now();
    let proposal = graph::propose(&observed, 1, None);
    let text = graph::format::proposal_toml(&proposal, &[]);
    let p = t.elapsed();
    println!(
        "propose: {} intentions, {} unproven, {} KiB of TOML in {:.3} s (with load: {:.3} s)",
        proposal.intentions.len(),
        proposal.unproven.len(),
        text.len() / 1024,
        p.as_secs_f64(),
        (load + p).as_secs_f64()
    );

    let policy = bench_policy();
    let t = Instant::now();
    let proposal = graph::propose(&observed, 1, Some(&policy));
    let p = t.elapsed();
    println!(
        "propose --policy: {} intentions in {:.3} s (with load: {:.3} s)",
        proposal.intentions.len(),
        p.as_secs_f64(),
        (load + p).as_secs_f64()
    );

    let t = Instant::now();
    let services = graph::diff(
        &observed,
        &policy,
        None,
        &graph::Judging::at(std::time::Duration::from_secs(30 * 86_400), std::time::SystemTime::now()),
    );
    let text = graph::format::diff_text(&services);
    let d = t.elapsed();
    let ready = services.iter().filter(|s| s.ready()).count();
    println!(
        "diff: {} services ({ready} ready), {} KiB of text in {:.3} s (with load: {:.3} s)",
        services.len(),
        text.len() / 1024,
        d.as_secs_f64(),
        (load + d).as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (two benches only).
    let dir = tempfile::tempdir().unwrap();
    recorder_throughput(dir.path());
    synthetic_ledger(dir.path());
}
