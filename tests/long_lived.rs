//! A connection that stays open (a pool's, opened before learning began and never closed) is
//! recorded carrying data while it is open, so the review and the enforce preflight do not take
//! it for a probe and let a flip cut it off.

mod support;

use std::time::Duration;

use cordon::policy::{Mode, Policy, Question, readiness};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);

fn web_into_db(world: &World) -> (u64, u64, u64) {
    let callers = cordon::ledger::callers_into(&world.ledger("db-host"), "db", None).unwrap();
    let web = callers.iter().filter(|c| c.source == "web");
    web.fold((0, 0, 0), |(n, f, b), c| (n + c.connections, f + c.bytes_to_destination, b + c.bytes_to_source))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_is_recorded_carrying_data_and_blocks_a_flip_that_would_cut_it() {
    let world = World::new();
    let (db, _app) = db_host(&world).await;
    let web = caller_host(&world, "web").await;
    let mut pool = TcpStream::connect(web.bound().upstream("db").unwrap()).await.unwrap();
    pool.write_all(b"SELECT 1").await.unwrap();
    let mut back = [0u8; 8];
    tokio::time::timeout(5 * SECOND, pool.read_exact(&mut back)).await.unwrap().unwrap();

    // Still open: its bytes reach the ledger anyway, within a second and a flush.
    eventually("the open connection's bytes are in the ledger", 5 * SECOND, || async {
        web_into_db(&world) == (1, 8, 8)
    })
    .await;
    let observed = cordon::graph::load(&world.ledger("db-host"), None).unwrap();
    let (evidence, declared) = cordon::graph::evidence(&observed, "db", &|_| None);
    let no_intention =
        Policy::parse("[modes]\ndb = \"enforce\"\n", std::path::Path::new("flip.toml")).unwrap();
    let check = readiness(&Question {
        service: "db",
        mode_now: Mode::Learn,
        policy_after: &no_intention,
        evidence: &evidence,
        declared: &declared,
        min_history: Duration::ZERO,
        now: std::time::SystemTime::now(),
    });
    assert_eq!(check.blocked_by(), ["web"], "web would be cut off, not waved through as a probe: {check:?}");
    assert!(check.notes.iter().all(|n| n.kind() != "probe-only"), "{check:?}");

    // More bytes, then the close: every byte counted once.
    pool.write_all(b"SELECT 22").await.unwrap();
    let mut back = [0u8; 9];
    pool.read_exact(&mut back).await.unwrap();
    pool.shutdown().await.unwrap();
    let mut rest = Vec::new();
    pool.read_to_end(&mut rest).await.unwrap();
    eventually("the close is in the ledger", 5 * SECOND, || async { web_into_db(&world) == (1, 17, 17) })
        .await;
    web.shutdown().await;
    db.shutdown().await;
    assert_eq!(web_into_db(&world), (1, 17, 17), "nothing counted twice");
}
