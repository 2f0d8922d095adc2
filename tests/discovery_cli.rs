//! `cordon discovery` run as a user runs it: the built binary, real directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/discovery")
}

/// Runs `cordon discovery ARGS` with a scrubbed environment.
fn cordon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon")).env_clear().arg("discovery").args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The fixture's service files, checked before any test relies on them.
fn fixture_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "fixture service files: {names:?}");
    names
}

#[test]
fn text_lists_every_backend_with_its_transport() {
    let files = fixture_files();
    let out = cordon(&["--dir", fixture_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stderr), "");
    let stdout = text(&out.stdout);
    for file in &files {
        let service = file.trim_end_matches(".json");
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{service} "))),
            "{service} missing:\n{stdout}"
        );
    }
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle}:\n{stdout}"))
            .to_string()
    };
    let words = |l: String| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        words(line("10.20.1.11:8080")),
        ["web", "10.20.1.11:8080", "mtls:14000", "-", "ip-10-20-1-11:8080"]
    );
    assert_eq!(
        words(line("10.20.2.23:9000")),
        ["api", "10.20.2.23:9000", "plaintext", "50", "ip-10-20-2-23:9000"]
    );
    assert!(stdout.contains("6 services, 13 backends (8 mtls, 5 plaintext), 0 refused files"), "{stdout}");
}

#[test]
fn json_has_every_field() {
    fixture_files();
    let out = cordon(&["--dir", fixture_dir().to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = doc["services"].as_array().unwrap();
    let names: Vec<&str> = services.iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "batch-nightly", "cache", "db", "search", "web"]);
    let db = &services[3]["backends"][0];
    assert_eq!(db["host"], "10.20.5.10");
    assert_eq!(db["mtls_port"], 14002);
    assert_eq!(db["transport"], "mtls");
    assert_eq!(db["labels"]["role"], "primary");
    let cache = &services[2]["backends"][0];
    assert_eq!((cache["transport"].as_str(), cache["mtls_port"].is_null()), (Some("plaintext"), true));
    assert_eq!(doc["problems"], serde_json::json!([]));
}

#[test]
fn refused_files_go_to_stderr_and_the_rest_is_still_shown() {
    fixture_files();
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(tmp.path().join("db.json"), "[\n  {\"host\": \"10.20.5.10\", \"port\": 5432,\n").unwrap();
    let bad_label = r#"[{"host":"10.20.3.14","port":9200,"labels":{"cordon_mtls_port":"yes"}}]"#;
    std::fs::write(tmp.path().join("search.json"), bad_label).unwrap();

    let out = cordon(&["--dir", tmp.path().to_str().unwrap()]);
    assert!(out.status.success(), "refused files are not an error: {out:?}");
    let stderr = text(&out.stderr);
    let db_line = stderr.lines().find(|l| l.contains("db.json")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(db_line.contains("line 3 column"), "{db_line}");
    let search_line =
        stderr.lines().find(|l| l.contains("search.json")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(search_line.contains("cordon_mtls_port"), "{search_line}");
    let stdout = text(&out.stdout);
    assert!(!stdout.lines().any(|l| l.starts_with("db ") || l.starts_with("search ")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("web ")), "{stdout}");
    assert!(stdout.contains("4 services") && stdout.contains("2 refused files"), "{stdout}");

    let out = cordon(&["--dir", tmp.path().to_str().unwrap(), "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = doc["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2);
    assert!(problems[0]["file"].as_str().unwrap().ends_with("db.json"));
}

#[test]
fn unreadable_directory_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("synapse");
    let out = cordon(&["--dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(missing.to_str().unwrap()) && stderr.contains("No such file"), "{stderr}");
    assert_eq!(text(&out.stdout), "");
}
