//! Key files on disk: a private key readable by group or others is refused (at start, and on
//! reload with the old material kept), and `ca init` never writes through a planted file or
//! symlink.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cordon::pki::TlsSource;
use cordon::pki::{ServiceName, TlsStore, TrustDomain};
use support::*;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn name(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

#[test]
fn the_agent_refuses_to_start_with_a_key_readable_by_others() {
    let world = World::new();
    world.issue("db");
    world.config("db-host", &[("db", "127.0.0.1:1".parse().unwrap())], &[]);
    let key = world.path("tls/db/key.pem");
    chmod(&key, 0o644);
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["agent", "--config", world.path("db-host.toml").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(world.path("agent.log")).unwrap())
        .spawn()
        .unwrap();
    // An agent that starts anyway would serve until killed: give it a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = agent.kill();
            break agent.wait().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(world.path("agent.log")).unwrap();
    assert_eq!(status.code(), Some(2), "the agent started with a key others may read: {stderr}");
    assert!(stderr.contains(&key.display().to_string()) && stderr.contains("0644"), "{stderr}");
}

#[test]
fn a_reload_refuses_a_key_readable_by_group_and_keeps_the_old_one() {
    let world = World::new();
    world.issue("db");
    let source = TlsSource::Files { ca: world.ca().join("ca.pem"), dir: world.path("tls") };
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let store = TlsStore::load(&source, &td, &[name("db")]).unwrap();
    let before = store.expiries();

    // A new pair arrives with a key the whole group may read.
    world.issue_for_days("db", 3);
    let key = world.path("tls/db/key.pem");
    chmod(&key, 0o640);
    let err = store.reload().unwrap_err().to_string();
    assert!(err.contains(&key.display().to_string()) && err.contains("0640"), "{err}");
    assert_eq!(store.expiries(), before, "db keeps the certificate it had");
    assert!(store.server_config(&name("db"), false).is_some());

    chmod(&key, 0o600);
    store.reload().unwrap();
    assert_ne!(store.expiries(), before, "the fixed key is taken");
}

#[test]
fn a_ca_key_readable_by_others_is_refused_when_issuing() {
    let world = World::new();
    let ca_key = world.ca().join("ca-key.pem");
    chmod(&ca_key, 0o604);
    let out = cordon(&[
        "cert",
        "issue",
        "--ca",
        world.ca().to_str().unwrap(),
        "--service",
        "web",
        "--out",
        world.path("web").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ca-key.pem") && stderr.contains("0604"), "{stderr}");
    assert!(!world.path("web/key.pem").exists());
}

#[test]
fn ca_init_fails_on_a_symlink_planted_at_the_key_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    std::fs::create_dir_all(&ca).unwrap();
    // A dangling symlink: `exists()` says no, so only an exclusive create stops the init.
    let stolen = dir.path().join("stolen-key.pem");
    std::os::unix::fs::symlink(&stolen, ca.join("ca-key.pem")).unwrap();
    let out = cordon(&["ca", "init", "--dir", ca.to_str().unwrap(), "--trust-domain", TRUST_DOMAIN]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert!(!stolen.exists(), "the key was written through the symlink");
    assert!(std::fs::symlink_metadata(ca.join("ca-key.pem")).unwrap().file_type().is_symlink());
    assert!(!ca.join("ca.pem").exists(), "no half-made CA");

    // The same with the certificate's name: no key is left behind.
    let ca2 = dir.path().join("ca2");
    std::fs::create_dir_all(&ca2).unwrap();
    std::os::unix::fs::symlink(dir.path().join("stolen-cert.pem"), ca2.join("ca.pem")).unwrap();
    let out = cordon(&["ca", "init", "--dir", ca2.to_str().unwrap(), "--trust-domain", TRUST_DOMAIN]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("stolen-cert.pem").exists());
    assert!(!ca2.join("ca-key.pem").exists(), "the key of a failed init is removed");
}
