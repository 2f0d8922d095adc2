//! One-shot reads of a discovery directory: what counts as a service file and what bad input does.

mod common;

use common::{backend, service_file, write_atomic};
use cordon_discovery::{DiscoveryError, MAX_FILE_BYTES, load_dir};

/// The error and its sources, as a user sees them printed by the CLI.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[test]
fn missing_directory_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("synapse-services");
    let err = load_dir(&missing).unwrap_err();
    assert!(matches!(err, DiscoveryError::ReadDir { .. }), "{err:?}");
    let text = chain(&err);
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(text.contains("No such file"), "{text}");
}

#[test]
fn a_file_instead_of_a_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("services");
    std::fs::write(&file, "[]").unwrap();
    let err = chain(&load_dir(&file).unwrap_err());
    assert!(err.contains(&file.display().to_string()) && err.contains("Not a directory"), "{err}");
}

#[test]
fn only_service_files_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_atomic(dir, "web", &service_file(&[backend("10.0.0.1", 80, Some(14000))]));
    // Synapse mid-write, a stray editor file, notes: none of them is a service.
    std::fs::write(dir.join(".api.json.tmp"), r#"[{"host":"10.0.0.2","po"#).unwrap();
    std::fs::write(dir.join(".hidden.json"), "[]").unwrap();
    std::fs::write(dir.join("web.json~"), "garbage").unwrap();
    std::fs::write(dir.join("notes.txt"), "garbage").unwrap();
    std::fs::create_dir(dir.join("archive")).unwrap();
    let snap = load_dir(dir).unwrap();
    assert_eq!(snap.services().map(|(n, _)| n).collect::<Vec<_>>(), ["web"]);
    assert_eq!(snap.problems(), &[]);
}

#[test]
fn empty_array_is_a_service_with_no_backends() {
    let tmp = tempfile::tempdir().unwrap();
    write_atomic(tmp.path(), "batch-nightly", "[]\n");
    let snap = load_dir(tmp.path()).unwrap();
    assert!(snap.contains("batch-nightly"));
    assert!(snap.backends("batch-nightly").is_empty());
}

#[test]
fn malformed_file_is_a_problem_with_line_and_column_and_others_still_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_atomic(dir, "web", &service_file(&[backend("10.0.0.1", 80, None)]));
    std::fs::write(dir.join("db.json"), "[\n  {\"host\": \"10.0.0.5\", \"port\": 5432,}\n]").unwrap();
    let snap = load_dir(dir).unwrap();
    assert_eq!(snap.backends("web").len(), 1, "a bad neighbour must not take web down");
    assert!(!snap.contains("db"), "no last good backends for db: it is absent");
    let [problem] = snap.problems() else { panic!("one problem expected: {:?}", snap.problems()) };
    assert_eq!(problem.file, dir.join("db.json"));
    assert!(problem.message.contains("line 2 column"), "{problem}");
    assert!(problem.to_string().starts_with(&dir.join("db.json").display().to_string()));
}

#[test]
fn bad_mtls_label_refuses_the_file_instead_of_falling_back_to_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = r#"[
  {"host": "10.0.0.5", "port": 5432, "labels": {"cordon_mtls_port": "14000"}},
  {"host": "10.0.0.6", "port": 5432, "labels": {"cordon_mtls_port": "fourteen thousand"}}
]"#;
    std::fs::write(dir.join("db.json"), file).unwrap();
    let snap = load_dir(dir).unwrap();
    assert!(snap.backends("db").is_empty(), "no backend of db may be served in plaintext");
    let [problem] = snap.problems() else { panic!("one problem expected: {:?}", snap.problems()) };
    assert_eq!(problem.file, dir.join("db.json"));
    for want in ["cordon_mtls_port", "fourteen thousand", "line 3 column"] {
        assert!(problem.message.contains(want), "{want}: {problem}");
    }
}

#[test]
fn oversized_file_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(tmp.path().join("huge.json")).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    let snap = load_dir(tmp.path()).unwrap();
    assert!(!snap.contains("huge"));
    let [problem] = snap.problems() else { panic!("one problem expected: {:?}", snap.problems()) };
    assert!(problem.message.contains("larger than"), "{problem}");
}

#[test]
fn a_directory_named_like_a_service_file_is_a_problem() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("odd.json")).unwrap();
    let snap = load_dir(tmp.path()).unwrap();
    assert!(!snap.contains("odd"));
    assert_eq!(snap.problems().len(), 1);
    assert!(snap.problems()[0].message.contains("not a regular file"));
}
