//! The agent's copy of the fleet's revocation list, from the signing service: taken from every
//! enrol and renew answer (field `revoked`, absent from older services) and polled from
//! `GET /v1/revoked` at least every [`DEFAULT_REVOCATION_POLL`], off the data plane. The copy is
//! kept as `tls.dir/revoked.json` (written atomically, so a restart starts with it) and put in
//! force at once through [`TlsStore::reload_revocations`].
//!
//! With the default, a revoked leaf is refused fleet-wide within 60 s of `cordon ca revoke`: at
//! most 30 s until every agent's next poll, and the list is in force (open connections re-checked)
//! as soon as the answer is written. A failed poll keeps the list in force; failures are counted
//! and logged once per change of state (failing, recovered), not once per poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::{IssuerError, Renewer};
use crate::pki::files::write_atomic;
use crate::pki::revoked::FILE_NAME;
use crate::pki::{PkiError, Revocations, TlsStore};

/// How often agents ask the signing service for its revocation list, at most.
pub const DEFAULT_REVOCATION_POLL: Duration = Duration::from_secs(30);
/// The shortest poll interval accepted (tests use it; fleets keep the default).
pub const MIN_REVOCATION_POLL: Duration = Duration::from_millis(100);

/// The poll's counts, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct PollStats {
    /// Polls answered with a list that was accepted.
    pub ok: AtomicU64,
    /// Polls that failed: the service unreachable, a refusal, or a list refused here.
    pub failed: AtomicU64,
    /// Unix seconds of the last accepted answer (poll or enrol/renew), 0 for never.
    pub last_ok: AtomicU64,
    /// Why the last poll failed, until one succeeds.
    last_error: std::sync::Mutex<Option<String>>,
}

impl PollStats {
    /// Why the last poll failed, if the last one did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a poll's result; the error when it failed. Whether the state (failing or not)
    /// changed with it, so the caller logs once per change.
    fn record(&self, error: Option<String>) -> bool {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let was_failing = last.is_some();
        let failing = error.is_some();
        if failing {
            self.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.mark_ok();
        }
        *last = error;
        was_failing != failing
    }

    fn mark_ok(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.last_ok.store(now, Ordering::Relaxed);
    }
}

impl Renewer {
    /// Keeps `list` as this host's copy (`tls.dir/revoked.json`) when it differs from the copy
    /// on disk. Whether it wrote.
    pub(super) fn keep_revocations(&self, list: &Revocations) -> Result<bool, PkiError> {
        let path = self.dir().join(FILE_NAME);
        self.poll_stats().mark_ok();
        if Revocations::load(&path).is_ok_and(|on_disk| on_disk == *list) {
            return Ok(false);
        }
        std::fs::create_dir_all(self.dir())
            .map_err(|source| PkiError::Write { path: self.dir().to_owned(), source })?;
        write_atomic(&path, &list.to_json(), 0o644)?;
        info!(
            file = %path.display(),
            serials = list.serial_count(),
            hosts = list.host_count(),
            "revocation list updated from the signing service"
        );
        Ok(true)
    }

    /// Takes the `revoked` field of an enrol or renew answer, when there is one. A list refused
    /// here does not fail the renewal: the list in force stays, and the next poll tries again.
    pub(super) fn take_revocations(&self, answer: &[u8]) {
        #[derive(serde::Deserialize)]
        struct WithList {
            #[serde(default)]
            revoked: Option<serde_json::Value>,
        }
        let Ok(WithList { revoked: Some(value) }) = serde_json::from_slice::<WithList>(answer) else {
            return;
        };
        let origin = format!("signing service {} (revoked)", self.addr());
        match Revocations::parse(&serde_json::to_vec(&value).unwrap_or_default(), &origin) {
            Ok(list) => {
                if let Err(e) = self.keep_revocations(&list) {
                    warn!(error = %e, "cannot keep the revocation list from the signing service");
                }
            }
            Err(e) => warn!(error = %e, "revocation list in the signing service's answer refused"),
        }
    }

    /// One `GET /v1/revoked`: the list, checked.
    pub async fn fetch_revocations(&self) -> Result<Revocations, IssuerError> {
        let (status, bytes) = self.request(hyper::Method::GET, "/v1/revoked", Vec::new(), None).await?;
        if status != hyper::StatusCode::OK {
            return Err(IssuerError::Unreachable {
                addr: self.addr().to_string(),
                message: format!("GET /v1/revoked: HTTP {}", status.as_u16()),
            });
        }
        Revocations::parse(&bytes, &format!("signing service {}", self.addr()))
            .map_err(|e| IssuerError::BadAnswer { addr: self.addr().to_string(), message: e.to_string() })
    }

    /// Polls the revocation list every `tls.revocation_poll_ms` (less a random quarter, so a fleet
    /// started together does not ask together) until `stop`, putting each change in force in `tls`
    /// at once. The first poll is at start.
    pub fn spawn_revocation_poll(
        self: &Arc<Self>,
        tls: Arc<TlsStore>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = me.revocation_poll();
            loop {
                let result = match me.fetch_revocations().await {
                    Ok(list) => me.keep_revocations(&list).map_err(IssuerError::from),
                    Err(e) => Err(e),
                };
                let error = result.as_ref().err().map(ToString::to_string);
                let changed_state = me.poll_stats().record(error.clone());
                match (result, changed_state) {
                    (Ok(wrote), recovered) => {
                        if recovered {
                            info!(issuer = %me.addr(), "revocation list polled again after failures");
                        }
                        if wrote {
                            let tls = tls.clone();
                            let reloaded =
                                tokio::task::spawn_blocking(move || tls.reload_revocations()).await;
                            if let Ok(Err(e)) = reloaded {
                                warn!(error = %e, "revocation list refused; keeping the one in force");
                            }
                        }
                    }
                    (Err(e), true) => warn!(issuer = %me.addr(), error = %e,
                        "cannot poll the revocation list; keeping the one in force, retrying every poll"),
                    (Err(_), false) => {}
                }
                let jitter =
                    every.mul_f64(f64::from(super::random::<1>().map(|b| b[0]).unwrap_or(0)) / 1024.0);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every - jitter) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewer(dir: &std::path::Path) -> Arc<Renewer> {
        let settings = super::super::IssuerSettings::parse("https://127.0.0.1:1", None).unwrap();
        Renewer::new(
            settings,
            crate::pki::TrustDomain::new("example.internal").unwrap(),
            dir.join("ca.pem"),
            dir.to_owned(),
            "web-1".into(),
            vec![],
        )
    }

    /// The list in an enrol or renew answer is kept as the host's copy; an answer without one,
    /// or with one refused here, leaves the copy alone.
    #[test]
    fn the_list_in_an_answer_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = renewer(dir.path());
        let path = dir.path().join(FILE_NAME);
        r.take_revocations(br#"{"leaves":[],"bundle":"","signing_ca":"x"}"#);
        assert!(!path.exists(), "an older service's answer says nothing of revocations");
        r.take_revocations(
            br#"{"leaves":[],"bundle":"","signing_ca":"x","revoked":{"serials":["0AB"],"hosts":["web-9"]}}"#,
        );
        let kept = Revocations::load(&path).unwrap();
        assert!(kept.covers("ab", None) && kept.covers("1", Some("web-9")), "0AB is the serial ab");
        r.take_revocations(br#"{"leaves":[],"bundle":"","signing_ca":"x","revoked":{"hosts":["bad host"]}}"#);
        assert_eq!(Revocations::load(&path).unwrap(), kept, "a refused list changes nothing");
        assert!(r.poll_stats().last_ok.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn failures_are_logged_once_per_change_of_state() {
        let s = PollStats::default();
        assert!(!s.record(None), "a first success changes nothing");
        assert!(s.record(Some("down".into())), "the first failure is a change");
        assert!(!s.record(Some("down".into())), "the second is not");
        assert!(s.record(None), "recovering is a change");
        assert_eq!((s.ok.load(Ordering::Relaxed), s.failed.load(Ordering::Relaxed)), (2, 2));
        assert!(s.last_error().is_none());
    }
}
