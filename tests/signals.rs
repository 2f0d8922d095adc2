//! The agent as a service manager runs it: SIGHUP reloads, SIGTERM drains and exits 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_sigterm_drains_and_exits_zero() {
    signals_with("").await;
}

/// The same with the data plane on a multi-threaded runtime (`[proxy] threads`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_two_data_plane_threads() {
    signals_with("threads = 2\n").await;
}

async fn signals_with(proxy: &str) {
    let world = World::new();
    let app = EchoApp::start().await;
    world.issue("db");
    world.config_with("db-host", &[("db", app.addr)], &[], proxy);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["agent", "--config", world.path("db-host.toml").to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(_) => panic!("no log line with {what:?} within 10 s"),
            }
        }
    };
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    };
    // Signals are handled from this line on (before it, SIGHUP would kill the agent).
    wait_for("agent ready");
    signal("-HUP");
    wait_for("SIGHUP");
    wait_for("policy reloaded");
    signal("-TERM");
    wait_for("agent stopped");
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}
