//! Join tokens: minted by `cordon ca token`, exchanged once by a host for its first leaves.
//!
//! A token is only ever stored hashed: `<CA>/tokens/<sha256>.json` holds the host, the identities
//! and the expiry. Exchanging it renames the file into `tokens/used/`, which is atomic: of two
//! requests racing with one token, exactly one gets the rename. Must not log or store tokens in
//! the clear.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Refused, Refusing, from_unix, hex, random, sha256_hex, unix};
use crate::pki::PkiError;
use crate::pki::files::write_atomic;

/// What a token allows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    host: String,
    services: Vec<String>,
    created: u64,
    expires: u64,
}

/// The token store of one CA directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    pub fn new(ca_dir: &Path) -> Self {
        TokenStore { dir: ca_dir.join("tokens") }
    }

    /// Mints a token for `host` and `services`, valid for `ttl`. Returns the token text: the only
    /// copy there will be.
    pub fn mint(&self, host: &str, services: &[String], ttl: Duration) -> Result<String, PkiError> {
        let used = self.dir.join("used");
        std::fs::create_dir_all(&used).map_err(|source| PkiError::Write { path: used.clone(), source })?;
        let token = format!("cordon-join-{}", hex(&random::<32>()?));
        let now = SystemTime::now();
        let record = Record {
            host: host.to_string(),
            services: services.to_vec(),
            created: unix(now),
            expires: unix(now + ttl),
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| PkiError::Generate { what: "token record", message: e.to_string() })?;
        write_atomic(&self.path(&token), &json, 0o600)?;
        Ok(token)
    }

    fn path(&self, token: &str) -> PathBuf {
        self.dir.join(format!("{}.json", sha256_hex(token.as_bytes())))
    }

    fn used_path(&self, token: &str) -> PathBuf {
        self.dir.join("used").join(format!("{}.json", sha256_hex(token.as_bytes())))
    }

    /// Exchanges `token` for `identities` on `host`: checks it (and, with `also`, when it was
    /// minted), then consumes it. A refused exchange leaves an unused token as it was.
    pub fn redeem(
        &self,
        token: &str,
        host: &str,
        identities: &[&str],
        now: SystemTime,
        also: impl FnOnce(SystemTime) -> Result<(), Refusing>,
    ) -> Result<(), Refusing> {
        let path = self.path(token);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(_) if self.used_path(token).exists() => {
                return Err(Refusing::new(Refused::TokenUsed, "this join token was already used"));
            }
            Err(_) => return Err(Refusing::new(Refused::TokenUnknown, "no such join token")),
        };
        let record: Record = serde_json::from_slice(&text).map_err(|e| {
            tracing::error!(file = %path.display(), error = %e, "unreadable token record");
            Refusing::new(Refused::TokenUnknown, "no such join token")
        })?;
        if now >= from_unix(record.expires) {
            return Err(Refusing::new(Refused::TokenExpired, "this join token has expired; mint a new one"));
        }
        if record.host != host {
            return Err(Refusing::new(
                Refused::TokenWrongHost,
                format!("this join token is for host {}, not {host}", record.host),
            ));
        }
        if let Some(other) = identities.iter().find(|i| !record.services.iter().any(|s| s == *i)) {
            return Err(Refusing::new(
                Refused::IdentityNotAllowed,
                format!("this join token allows {}, not {other}", record.services.join(", ")),
            ));
        }
        also(from_unix(record.created))?;
        match std::fs::rename(&path, self.used_path(token)) {
            Ok(()) => Ok(()),
            // Another request with the same token won the rename.
            Err(_) => Err(Refusing::new(Refused::TokenUsed, "this join token was already used")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        (dir, store)
    }

    #[test]
    fn a_token_is_stored_hashed_and_exchanged_once() {
        let (dir, store) = store();
        let token = store.mint("db-1", &["db".into()], Duration::from_secs(60)).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("tokens")).unwrap().flatten().collect();
        assert!(files.iter().all(|f| !f.file_name().to_string_lossy().contains(&token[12..])));
        for f in files.iter().filter(|f| f.path().is_file()) {
            assert!(
                !std::fs::read_to_string(f.path()).unwrap().contains(&token[12..]),
                "the token is in the clear"
            );
        }
        let now = SystemTime::now();
        assert!(store.redeem(&token, "db-1", &["db"], now, |_| Ok(())).is_ok());
        assert_eq!(
            store.redeem(&token, "db-1", &["db"], now, |_| Ok(())).unwrap_err().reason,
            Refused::TokenUsed
        );
        assert_eq!(
            store.redeem("cordon-join-00", "db-1", &["db"], now, |_| Ok(())).unwrap_err().reason,
            Refused::TokenUnknown
        );
    }

    #[test]
    fn a_refused_exchange_leaves_the_token_to_its_host() {
        let (_dir, store) = store();
        let token = store.mint("db-1", &["db".into()], Duration::from_secs(60)).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            store.redeem(&token, "db-1", &["web"], now, |_| Ok(())).unwrap_err().reason,
            Refused::IdentityNotAllowed
        );
        assert_eq!(
            store.redeem(&token, "db-2", &["db"], now, |_| Ok(())).unwrap_err().reason,
            Refused::TokenWrongHost
        );
        let later = now + Duration::from_secs(61);
        assert_eq!(
            store.redeem(&token, "db-1", &["db"], later, |_| Ok(())).unwrap_err().reason,
            Refused::TokenExpired
        );
        assert!(store.redeem(&token, "db-1", &["db"], now, |_| Ok(())).is_ok());
    }
}
