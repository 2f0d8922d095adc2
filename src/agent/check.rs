//! `cordon agent --check`: everything the agent would load at start, loaded and checked, with
//! every problem found, each naming its file and field; nothing bound, started, issued or written.
//!
//! An operator runs it before a restart or a cut-over (the ports may still be HAProxy's), as
//! `nginx -t` or `haproxy -c`. What it must not do: bind a listener, contact the signing service
//! or the fleet store, create the state directory, or issue a certificate from a local CA.

use std::path::{Path, PathBuf};

use super::config::{Config, ConfigError, TlsSource};
use crate::pki::{PkiError, TlsStore};

/// What a good configuration holds, for the one line that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub services: usize,
    pub upstreams: usize,
    pub identities: usize,
    pub discovered: usize,
}

/// Checks the configuration at `path` and everything it names. `Err` holds every problem, one
/// line each, each starting with the file it is about.
pub fn check(path: &Path) -> Result<Checked, Vec<String>> {
    let config = match Config::load(path) {
        Ok(c) => c,
        // Without a valid config nothing else can be found: its own problems are the list.
        Err(ConfigError::Invalid { path, problems }) => {
            return Err(problems.into_iter().map(|p| format!("{}: {p}", path.display())).collect());
        }
        Err(e) => return Err(vec![e.to_string()]),
    };
    let mut problems = Vec::new();
    if let Err(e) = crate::policy::Policy::load(&config.policy) {
        problems.push(format!("policy: {e}"));
    }
    let discovered = match cordon_discovery::load_dir(&config.discovery_dir) {
        Ok(snapshot) => snapshot.services().count(),
        Err(e) => {
            problems.push(format!("discovery_dir: {e}"));
            0
        }
    };
    let identities = config.identities();
    let mut to_enrol = false;
    for e in TlsStore::check(&config.tls, &config.trust_domain, &identities) {
        // With a signing service, a leaf not there yet is enrolled at start, not a problem...
        if config.issuer.is_some() && is_missing_leaf(&e, &config.tls) {
            to_enrol = true;
            continue;
        }
        problems.push(format!("tls: {e}"));
    }
    // ...if the join token it enrols with is there.
    if let Some(issuer) = config.issuer.as_ref().filter(|_| to_enrol) {
        match &issuer.join_token_file {
            None => problems.push(
                "tls.join_token_file: a certificate is missing and no join token is configured to enrol it"
                    .into(),
            ),
            Some(f) => {
                if let Err(e) = std::fs::read_to_string(f) {
                    problems.push(format!("tls.join_token_file: {}: {e}", f.display()));
                }
            }
        }
    }
    check_dir_writable("state_dir", &config.state_dir, &mut problems);
    // A syslog socket may come and go (the records are counted while it is away): only a file's
    // directory must be writable now.
    if let Some(crate::policy::DecisionLogSettings { sink: crate::policy::DecisionSink::File(log), .. }) =
        &config.decision_log
    {
        let parent = log.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        check_dir_writable("decision_log", parent, &mut problems);
    }
    // An agent ships through the ingest service with the leaves checked above; a store URL with
    // credentials is refused when the config is validated, so there is no password to read here.
    if let Some(crate::store::FleetSettings { to: crate::store::ShipTo::Store(store), .. }) = &config.fleet {
        if let Some(pw) = &store.password_file
            && let Err(e) = crate::store::read_password(pw)
        {
            problems.push(format!("fleet.password_file: {e}"));
        }
        if let Some(ca) = &store.ca
            && let Err(e) = crate::pki::read_certs(ca)
        {
            problems.push(format!("fleet.ca: {e}"));
        }
    }
    if !problems.is_empty() {
        let file = path.display();
        return Err(problems.into_iter().map(|p| format!("{file}: {p}")).collect());
    }
    Ok(Checked {
        services: config.services.len(),
        upstreams: config.upstreams.len(),
        identities: identities.len(),
        discovered,
    })
}

/// A certificate or key under `tls.dir` that does not exist yet.
fn is_missing_leaf(e: &PkiError, tls: &TlsSource) -> bool {
    let TlsSource::Files { dir, .. } = tls else { return false };
    matches!(e, PkiError::Read { path, source }
        if source.kind() == std::io::ErrorKind::NotFound && path.starts_with(dir))
}

/// A directory the agent writes in: there and writable, or creatable (its nearest existing
/// ancestor is a writable directory). Writability is tried with a file removed at once.
fn check_dir_writable(field: &str, dir: &Path, problems: &mut Vec<String>) {
    let mut at: PathBuf = dir.to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p.to_path_buf(),
            _ => {
                at = PathBuf::from(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        problems.push(format!("{field}: {} is not a directory", at.display()));
        return;
    }
    if let Err(e) = tempfile::tempfile_in(&at) {
        problems.push(format!("{field}: {} cannot be written: {e}", at.display()));
    }
}
