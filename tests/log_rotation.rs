//! The decision log under logrotate: the agent binary reopens it on SIGUSR1 (and SIGHUP), so a
//! `postrotate` signal moves writing to the new file at once.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Polls `check` every 20 ms until it holds, failing after 10 s.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigusr1_and_sighup_reopen_the_decision_log_at_its_path() {
    let world = World::new();
    world.issue("db");
    world.config("db-host", &[("db", "127.0.0.1:1".parse().unwrap())], &[]);
    let log = world.path("decisions-db-host.jsonl");
    let agent_log = world.path("agent.log");
    let child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["agent", "--config", world.path("db-host.toml").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let logged = |what: &str| std::fs::read_to_string(&agent_log).unwrap_or_default().contains(what);
    wait_until("the agent to handle signals", || logged("agent ready"));
    assert!(log.exists(), "the decision log is created at start");
    let pid = child.0.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    };

    for (n, sig) in [(1, "-USR1"), (2, "-HUP")] {
        let rotated = world.path(&format!("decisions-db-host.jsonl.{n}"));
        std::fs::rename(&log, &rotated).unwrap();
        signal(sig);
        wait_until(&format!("a new decision log after {sig}"), || log.exists());
        assert!(child.0.try_wait().unwrap().is_none(), "{sig} must not stop the agent");
    }
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(logged("decision log reopened"), "{}", std::fs::read_to_string(&agent_log).unwrap());
}
