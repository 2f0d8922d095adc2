//! Logs a fleet can afford: a learning agent writes one `info` line per caller a minute, not one
//! per connection; with `--log-format json` every line on stderr, fatal errors included, is one
//! JSON object.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use support::{EchoApp, World, caller_host, cordon, localhost, round_trip};

/// `cordon agent` as a child process with JSON logs at `info`, and its stderr lines as they come.
fn agent(world: &World, config: &std::path::Path) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["--log-format", "json", "agent", "--config", config.to_str().unwrap()])
        .current_dir(world.dir.path())
        .env_clear()
        .env("CORDON_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Lines from `rx` until one contains `what`; all of them. Panics past the deadline.
fn until(rx: &Receiver<String>, what: &str, lines: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.iter().any(|l| l.contains(what)) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("no line with {what:?} within 30 s; got:\n{}", lines.join("\n")),
        }
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learning_agent_says_what_it_learned_once_a_minute_per_caller_in_json() {
    let world = World::new();
    let app = EchoApp::start().await;
    world.issue("db");
    world.config("db-host", &[("db", app.addr)], &[]);
    let (mut db, rx) = agent(&world, &world.path("db-host.toml"));
    let mut lines = Vec::new();
    until(&rx, "inbound listening", &mut lines);
    let listen = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["message"] == "inbound listening")
        .and_then(|v| v["listen"].as_str().map(str::to_string))
        .unwrap();
    let port: u16 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    world.write_discovery("db", &[(localhost(), app.addr.port(), Some(port))]);

    // web calls db 40 times; the policy declares nothing, so each one is a would-deny.
    let web = caller_host(&world, "web").await;
    for _ in 0..40 {
        assert_eq!(round_trip(web.bound().upstream("db").unwrap(), b"ping").await.unwrap(), b"ping");
    }
    web.shutdown().await;
    // SIGTERM: the agent drains, flushes its log lines and exits.
    assert!(Command::new("kill").args(["-TERM", &db.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || db.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
    lines.extend(rx.iter());

    let parsed: Vec<serde_json::Value> = lines.iter().map(|l| json(l)).collect();
    let learned: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|v| v["level"] == "INFO" && v["outcome"] == "would-deny" && v["source"] == "web")
        .collect();
    assert_eq!(learned.len(), 1, "one line for web -> db this minute, not 40:\n{}", lines.join("\n"));
    assert_eq!(learned[0]["message"], "web -> db: would-deny");
    assert!(lines.len() < 20, "{} lines for 40 connections:\n{}", lines.len(), lines.join("\n"));
}

#[test]
fn fatal_and_parse_errors_are_json_objects_when_json_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cordon"));
        c.args(args).env_clear();
        if let Some(v) = env {
            c.env("CORDON_LOG_FORMAT", v);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    for (args, env) in [
        (vec!["--log-format", "json", "agent", "--config", missing.to_str().unwrap()], None),
        (vec!["agent", "--config", missing.to_str().unwrap()], Some("json")),
        (vec!["--log-format=json", "agent", "--no-such-flag"], None),
        (vec!["graph"], Some("json")),
    ] {
        let stderr = run(&args, env);
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(!lines.is_empty(), "{args:?}: nothing on stderr");
        for line in &lines {
            let v = json(line);
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{line}");
        }
        assert_eq!(json(lines[lines.len() - 1])["level"], "ERROR", "{stderr}");
    }
    // A person still reads plain text.
    let out = cordon(&["agent", "--config", missing.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("cordon: error: "), "{out:?}");
}

#[test]
fn lines_a_command_writes_itself_follow_the_log_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db.json"), "this is not JSON").unwrap();
    let discovery = dir.path().to_str().unwrap();
    let json_run = cordon(&["--log-format", "json", "discovery", "--dir", discovery]);
    let stderr = String::from_utf8_lossy(&json_run.stderr);
    assert!(json_run.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "the refused file is reported");
    for line in &lines {
        let v = json(line);
        assert_eq!(v["level"], "WARN", "{line}");
        assert!(v["message"].as_str().unwrap().contains("db.json"), "{line}");
    }
    // For a person, the same line as before.
    let human = cordon(&["discovery", "--dir", discovery]);
    assert!(String::from_utf8_lossy(&human.stderr).starts_with("cordon: discovery: refused"), "{human:?}");
}
