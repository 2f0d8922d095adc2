//! `cordon agent --check --config FILE`: validates what the agent would load, binds nothing.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{World, cordon};

/// A host config on disk whose inbound listens on `listen`.
fn config_file(world: &World, listen: &str) -> std::path::PathBuf {
    world.config("db-1", &[("db", "127.0.0.1:5432".parse().unwrap())], &[("cache", "db")]);
    let path = world.path("db-1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The service's listener, not the upstream's (the service's block comes first).
    let text = text.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{listen}\""), 1);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_good_config_checks_out_while_its_ports_are_held_and_nothing_is_created() {
    let world = World::new();
    world.issue("db");
    world.write_discovery("cache", &[(support::localhost(), 6379, Some(16379))]);
    // Another program (HAProxy during a cut-over) still holds the service's port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = config_file(&world, &held.local_addr().unwrap().to_string());
    let out = cordon(&["agent", "--check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("ok (1 services, 1 upstreams, 1 identities, 1 services in discovery)"),
        "{stdout}"
    );
    assert!(!world.path("state-db-1").exists(), "--check created the state directory");
}

#[test]
fn a_bad_setup_lists_every_problem_with_its_file_and_exits_2() {
    let world = World::new();
    world.issue("db");
    let key = world.path("tls/db/key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    world.write_policy("[modes]\ndb = \"enforcing\"\n");
    std::fs::remove_dir_all(world.discovery()).unwrap();
    std::fs::write(world.path("state-db-1"), "a file where the state directory goes").unwrap();
    let path = config_file(&world, "127.0.0.1:0");
    let out = cordon(&["agent", "--check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "4 problems found",
        "policy: ",
        &format!("{}", world.policy().display()),
        "discovery_dir: ",
        &format!("{}", key.display()),
        "state_dir: ",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    assert!(stderr.lines().filter(|l| l.contains(path.to_str().unwrap())).count() >= 4, "{stderr}");
}

#[test]
fn config_errors_are_all_listed_too() {
    let world = World::new();
    let path = world.path("bad.toml");
    std::fs::write(
        &path,
        format!(
            "trust_domain = \"NOT A DOMAIN\"\ndiscovery_dir = \"d\"\npolicy = \"p\"\nstate_dir = \"s\"\n\
             admin = \"not an address\"\n[tls]\nca = \"{}\"\ndir = \"t\"\n",
            world.ca().join("ca.pem").display()
        ),
    )
    .unwrap();
    let out = cordon(&["agent", "--check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("trust_domain") && stderr.contains("admin"), "{stderr}");
}

#[test]
fn with_a_signing_service_a_missing_leaf_is_to_enrol_and_needs_its_join_token() {
    let world = World::new();
    world.config("db-1", &[("db", "127.0.0.1:5432".parse().unwrap())], &[]);
    let path = world.path("db-1.toml");
    let token = world.path("join-token");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[tls]\n",
        &format!("[tls]\nissuer = \"https://127.0.0.1:1\"\njoin_token_file = \"{}\"\n", token.display()),
    );
    std::fs::write(&path, text).unwrap();
    // No leaf yet and no token: the one problem is the token the enrolment needs.
    let out = cordon(&["agent", "--check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("1 problem found") && stderr.contains("tls.join_token_file"), "{stderr}");
    // With the token, the missing leaf is enrolled at start: nothing to report, nothing contacted.
    support::write_secret(&token, "cordon-join-x\n");
    let out = cordon(&["agent", "--check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
