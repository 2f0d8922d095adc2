//! Helpers shared by the discovery tests: Synapse-style atomic writes and waiting on the
//! snapshot channel with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cordon_discovery::Snapshot;
use tokio::sync::watch;

/// How long a change may take to show up before a test fails. The watcher aims for well under a
/// second; the margin is for a loaded CI machine, and nothing asserts on the time taken.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The fixture directory checked into the repository.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/discovery")
}

/// Writes `<dir>/<service>.json` the way Synapse does: a dot temp file, then a rename.
pub fn write_atomic(dir: &Path, service: &str, contents: &str) {
    let tmp = dir.join(format!(".{service}.json.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{service}.json"))).unwrap();
}

/// One backend entry as Synapse writes it; `mtls` adds the cordon label.
pub fn backend(host: &str, port: u16, mtls: Option<u16>) -> String {
    let labels = match mtls {
        Some(p) => format!(r#"{{"cordon_mtls_port":"{p}"}}"#),
        None => "null".to_string(),
    };
    format!(
        r#"{{"name":"{host}:{port}","host":"{host}","port":{port},"id":null,"weight":null,"haproxy_server_options":null,"labels":{labels}}}"#
    )
}

/// A whole service file with the given backends.
pub fn service_file(backends: &[String]) -> String {
    format!("[{}]", backends.join(","))
}

/// Waits until the published snapshot satisfies `pred`, failing after [`DEADLINE`] with what
/// was being waited for and the last snapshot seen.
pub async fn eventually(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let snapshot = rx.borrow_and_update().clone();
        if pred(&snapshot) {
            return snapshot;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("watcher stopped while waiting for {what}"),
            Err(_) => panic!("no snapshot with {what} within {DEADLINE:?}; last: {snapshot:#?}"),
        }
    }
}

/// The ports of a service's backends, in file order.
pub fn ports(snapshot: &Snapshot, service: &str) -> Vec<u16> {
    snapshot.backends(service).iter().map(|b| b.port).collect()
}
