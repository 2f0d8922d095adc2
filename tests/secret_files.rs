//! Secrets that are not keys: a join token file or the store's password file that group or others
//! may read is refused as a 0644 key is, when the config is checked and again when it is read,
//! saying the chmod.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cordon::agent::config::Config;
use cordon::base::{ServiceName, TrustDomain};
use cordon::pki::issuer::{IssuerSettings, Renewer};

fn secret(dir: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, "s3cret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// An agent config using `token` to enrol and `password` to reach the store.
fn config_text(dir: &Path, token: &Path, password: &Path) -> String {
    format!(
        "trust_domain = \"test.internal\"\ndiscovery_dir = \"{d}\"\npolicy = \"{d}/policy.toml\"\n\
         state_dir = \"{d}/state\"\nhost = \"host-a\"\n\
         [tls]\nca = \"{d}/bundle.pem\"\ndir = \"{d}/tls\"\nissuer = \"https://127.0.0.1:1\"\njoin_token_file = \"{t}\"\n\
         [fleet]\nstore = \"postgres://cordon@127.0.0.1:1/fleet\"\npassword_file = \"{p}\"\n",
        d = dir.display(),
        t = token.display(),
        p = password.display(),
    )
}

fn problems(text: &str, dir: &Path) -> String {
    match Config::parse(text, &dir.join("cordon.toml")) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn readable_secrets_are_refused_when_the_config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret(dir.path(), "join-token", 0o644);
    let password = secret(dir.path(), "password", 0o640);
    let said = problems(&config_text(dir.path(), &token, &password), dir.path());
    let line = said
        .lines()
        .find(|l| l.contains("tls.join_token_file"))
        .unwrap_or_else(|| panic!("no tls.join_token_file in {said}"));
    assert!(line.contains("0644") && line.contains(&format!("chmod 600 {}", token.display())), "{line}");
    // An agent holds no store password at all: it ships through the ingest service with its own
    // leaves, so the field is refused whatever its file's mode (the operator's store URL is
    // checked for its mode below, in `a_readable_password_file_is_refused_before_the_store_is_dialled`).
    assert!(said.lines().any(|l| l.contains("fleet.password_file") && l.contains("remove")), "{said}");
    // Private, the token passes (whatever else the config lacks).
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let said = problems(&config_text(dir.path(), &token, &password), dir.path());
    assert!(!said.contains("join_token_file"), "{said}");
}

#[tokio::test]
async fn a_readable_join_token_is_refused_when_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret(dir.path(), "join-token", 0o644);
    let renewer = Renewer::new(
        IssuerSettings::parse("https://127.0.0.1:1", Some(token.clone())).unwrap(),
        TrustDomain::new("test.internal").unwrap(),
        dir.path().join("bundle.pem"),
        dir.path().join("tls"),
        "host-a".into(),
        vec![ServiceName::new("web").unwrap()],
    );
    let e = renewer.enrol_missing(Duration::from_secs(5)).await.unwrap_err().to_string();
    assert!(e.contains("0644") && e.contains(&format!("chmod 600 {}", token.display())), "{e}");
}

#[test]
fn a_readable_password_file_is_refused_before_the_store_is_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let password = secret(dir.path(), "password", 0o644);
    let url = format!("postgres://cordon@127.0.0.1:1/fleet?password_file={}", password.display());
    let out = support::cordon(&["graph", "--db", &url]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("0644") && said.contains(&format!("chmod 600 {}", password.display())), "{said}");
    assert!(!said.contains("s3cret"), "{said}");
}
