//! The revocation list of a CA directory, `<CA dir>/revoked.json`: the serials and the hosts whose
//! leaves the fleet refuses. `cordon ca revoke` writes it (atomically, 0644); the signing service
//! reads it at every request whose file changed, refuses its leaves at renewal and enrolment, and
//! hands it to every host with each answer and at `GET /v1/revoked`.
//!
//! ```json
//! {"generated":"2026-12-06T18:00:00Z","serials":["5f1c..."],"hosts":["web-3"],
//!  "reasons":{"web-3":"re-imaged after an intrusion"},"revoked_at":{"web-3":1796000000}}
//! ```
//!
//! Readers ignore fields they do not know. `revoked_at` (unix seconds per host) is what lets a
//! re-imaged host come back: a join token minted after its host's revocation enrols it again, and
//! the leaves signed from then on are not the revoked ones. What the service hands out is the list
//! in force ([`RevocationList::in_force`]): a host that came back that way is listed by the serials
//! of its old leaves instead of by name.
//!
//! This module owns the file's format and its checks; it must not decide anything else.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::leases::rfc3339;
use super::unix;
use crate::pki::PkiError;
use crate::pki::files::write_atomic;
use crate::pki::host::HostName;
pub use crate::pki::revoked::RevocationList;

/// The file name inside a CA directory.
pub const REVOKED_FILE: &str = crate::pki::revoked::FILE_NAME;

/// The longest reason kept, in bytes; a longer one is cut.
const MAX_REASON: usize = 200;

/// What `cordon ca revoke` revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// Every leaf of this host, from now back.
    Host(HostName),
    /// One leaf.
    Serial(String),
}

impl RevocationList {
    /// Reads `dir/revoked.json` with the one reader agents use too ([`RevocationList::parse`]), so
    /// the service never hands out a list its hosts would refuse; a missing file is an empty
    /// list. A damaged file is an error naming it: revocations are never silently dropped.
    pub fn load(dir: &Path) -> Result<RevocationList, PkiError> {
        let path = dir.join(REVOKED_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => RevocationList::parse(&bytes, &path.display().to_string())
                .map_err(|e| PkiError::BadFile { path: path.clone(), message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationList::default()),
            Err(source) => Err(PkiError::Read { path, source }),
        }
    }

    /// Adds a revocation and writes the file atomically. Returns false when it was already there.
    pub fn revoke(
        dir: &Path,
        what: &Revoke,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<bool, PkiError> {
        let mut list = RevocationList::load(dir)?;
        let key = match what {
            Revoke::Host(h) => h.as_str().to_string(),
            Revoke::Serial(s) => s.clone(),
        };
        let fresh = match what {
            Revoke::Host(_) if !list.hosts.contains(&key) => {
                list.hosts.push(key.clone());
                true
            }
            Revoke::Serial(_) if !list.serials.contains(&key) => {
                list.serials.push(key.clone());
                true
            }
            _ => false,
        };
        if let Revoke::Host(_) = what {
            // Revoking a host again (after it came back) moves its date on.
            list.revoked_at.insert(key.clone(), unix(now));
        }
        if let Some(r) = reason {
            list.reasons.insert(key, clip(r, MAX_REASON));
        }
        list.generated = rfc3339(now);
        let mut json = serde_json::to_vec_pretty(&list)
            .map_err(|e| PkiError::Generate { what: "revocation list", message: e.to_string() })?;
        json.push(b'\n');
        write_atomic(&dir.join(REVOKED_FILE), &json, 0o644)?;
        Ok(fresh)
    }

    /// Whether `host` is revoked for leaves signed, or tokens minted, at `at` (unix seconds): those
    /// before or in the second of its revocation are.
    pub fn host_revoked_at(&self, host: &str, at: u64) -> bool {
        self.hosts.iter().any(|h| h == host) && self.revoked_at.get(host).is_none_or(|t| at <= *t)
    }

    /// Whether `serial` is revoked.
    pub fn serial_revoked(&self, serial: &str) -> bool {
        self.serials.iter().any(|s| s == serial)
    }

    /// The list the fleet must enforce: a host that enrolled again after its revocation
    /// (`came_back` gives its leaves signed before then, as serials) is listed by those serials,
    /// so that its new leaves are accepted and its old ones stay refused.
    pub fn in_force(&self, came_back: impl Fn(&str, u64) -> Option<Vec<String>>) -> RevocationList {
        let mut out = self.clone();
        out.hosts.retain(|h| {
            let Some(at) = self.revoked_at.get(h) else { return true };
            match came_back(h, *at) {
                Some(old) => {
                    for s in old {
                        if !out.serials.contains(&s) {
                            out.serials.push(s);
                        }
                    }
                    false
                }
                None => true,
            }
        });
        out
    }
}

/// What changed in a file, cheaply: inode, length and modification time.
type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// The revocation list as the service holds it: reloaded when the file changes.
#[derive(Debug)]
pub(crate) struct Watched {
    path: PathBuf,
    /// The file's stamp when last read, and what was read.
    state: std::sync::Mutex<(Stamp, std::sync::Arc<RevocationList>)>,
}

impl Watched {
    pub(crate) fn open(dir: &Path) -> Result<Watched, PkiError> {
        let path = dir.join(REVOKED_FILE);
        let list = RevocationList::load(dir)?;
        Ok(Watched { state: std::sync::Mutex::new((stamp(&path), std::sync::Arc::new(list))), path })
    }

    /// The list now, re-read if the file changed since. A file that cannot be read keeps the list
    /// read before (and says so): a half-written edit never lifts a revocation.
    pub(crate) fn current(&self) -> std::sync::Arc<RevocationList> {
        let now = stamp(&self.path);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now != state.0 {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            match RevocationList::load(dir) {
                Ok(list) => {
                    tracing::info!(
                        file = %self.path.display(),
                        hosts = list.hosts.len(),
                        serials = list.serials.len(),
                        "revocation list reloaded"
                    );
                    *state = (now, std::sync::Arc::new(list));
                }
                Err(e) => {
                    tracing::error!(error = %e, "revocation list not reloaded; enforcing the one read before");
                    state.0 = now;
                }
            }
        }
        state.1.clone()
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), control characters replaced.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end].chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if end < text.len() {
        out.push_str(&format!("... ({} bytes)", text.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_its_hosts_would_refuse_is_refused_by_the_service_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REVOKED_FILE);
        // Hand-edited: an empty serial and a host name that is not one.
        std::fs::write(&file, br#"{"serials":[""],"hosts":["web 3"]}"#).unwrap();
        let e = RevocationList::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("revoked.json") && e.contains("serials[0]"), "{e}");
        // Served as it is read: what the agents parse is what the service holds.
        std::fs::write(&file, br#"{"serials":["00:0A:BC"],"hosts":["web-3"]}"#).unwrap();
        let list = RevocationList::load(dir.path()).unwrap();
        assert_eq!(list.serials, ["0abc"]);
        let agents =
            crate::pki::revoked::Revocations::parse(&serde_json::to_vec(&list).unwrap(), "t").unwrap();
        assert!(agents.covers("0abc", None) && agents.covers("1", Some("web-3")));
        // A watched file that turns bad keeps the list read before.
        let watched = Watched::open(dir.path()).unwrap();
        std::fs::write(&file, b"{").unwrap();
        assert_eq!(watched.current().serials, ["0abc"]);
    }

    #[test]
    fn a_host_that_came_back_is_listed_by_its_old_serials() {
        let dir = tempfile::tempdir().unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let host = Revoke::Host(HostName::new("web-3").unwrap());
        assert!(RevocationList::revoke(dir.path(), &host, Some("bad\nday"), t).unwrap());
        let list = RevocationList::load(dir.path()).unwrap();
        assert!(list.host_revoked_at("web-3", 1000) && !list.host_revoked_at("web-3", 1001));
        assert_eq!(list.reasons["web-3"], "bad?day");
        let kept = list.in_force(|_, _| None);
        assert_eq!(kept.hosts, ["web-3"]);
        let back = list.in_force(|h, at| (h == "web-3" && at == 1000).then(|| vec!["0a".to_string()]));
        assert!(back.hosts.is_empty());
        assert_eq!(back.serials, ["0a"]);
        assert_eq!(clip(&"x".repeat(500), 10), "xxxxxxxxxx... (500 bytes)");
    }
}
