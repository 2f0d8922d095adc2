//! `[tls]` in cordon.toml: where a host's certificates come from, as written ([`RawTls`]) and
//! validated ([`TlsSettings`]). The agent's config composes it; nothing here reads files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::issuer::IssuerSettings;
use crate::base::config_path;

/// The `[tls]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    ca: Option<PathBuf>,
    dir: Option<PathBuf>,
    ca_dir: Option<PathBuf>,
    /// Lifetime of leaves issued locally from `ca_dir`, in days.
    days: Option<u32>,
    /// `https://HOST:PORT` of `cordon ca serve`: enrol and renew `dir`'s leaves there.
    issuer: Option<String>,
    join_token_file: Option<PathBuf>,
    /// How often to poll the signing service's revocation list, in milliseconds (at most 30 s,
    /// the default).
    revocation_poll_ms: Option<u64>,
}

/// Where this host's certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// `<dir>/<identity>/cert.pem` and `key.pem`, issued elsewhere (`cordon cert issue`), verified
    /// against the CA bundle `ca`.
    Files { ca: PathBuf, dir: PathBuf },
    /// A local CA directory (`cordon ca init`): the agent issues and renews its own leaves.
    LocalCa { ca_dir: PathBuf, days: u32 },
}

/// The validated `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub source: TlsSource,
    /// The signing service that issues and renews `dir` (with [`TlsSource::Files`]).
    pub issuer: Option<IssuerSettings>,
}

impl TlsSettings {
    /// Validates `raw`; paths are resolved against `base` (the config file's directory). Every
    /// problem is pushed onto `problems`, naming its field; `None` when the source is unusable.
    pub fn validate(raw: RawTls, base: &Path, problems: &mut Vec<String>) -> Option<TlsSettings> {
        let source = match (raw.ca, raw.dir, raw.ca_dir) {
            (Some(ca), Some(dir), None) => Some(TlsSource::Files {
                ca: config_path("tls.ca", ca, base, problems),
                dir: config_path("tls.dir", dir, base, problems),
            }),
            (None, None, Some(ca_dir)) => {
                let days = raw.days.unwrap_or(super::DEFAULT_LEAF_DAYS);
                if days == 0 {
                    problems.push("tls.days: must be at least 1".into());
                }
                Some(TlsSource::LocalCa { ca_dir: config_path("tls.ca_dir", ca_dir, base, problems), days })
            }
            _ => {
                problems.push("tls: set either `ca` and `dir`, or `ca_dir` alone".into());
                None
            }
        };

        let join_token_file =
            raw.join_token_file.map(|f| config_path("tls.join_token_file", f, base, problems));
        let poll = raw.revocation_poll_ms.map(Duration::from_millis);
        if let Some(p) = poll
            && !(super::issuer::MIN_REVOCATION_POLL..=super::issuer::DEFAULT_REVOCATION_POLL).contains(&p)
        {
            problems.push(
                "tls.revocation_poll_ms: must be 100 to 30000 (a revoked leaf is refused fleet-wide within 60 s)"
                    .into(),
            );
        }
        if poll.is_some() && raw.issuer.is_none() {
            problems.push("tls.revocation_poll_ms: only used with tls.issuer".into());
        }
        if let Some(problem) =
            join_token_file.as_deref().and_then(|f| super::files::secret_problem("tls.join_token_file", f))
        {
            problems.push(problem);
        }
        let issuer = match (raw.issuer, &source) {
            (Some(url), Some(TlsSource::Files { .. })) => IssuerSettings::parse(&url, join_token_file)
                .map(|mut s| {
                    s.revocation_poll = poll.unwrap_or(s.revocation_poll);
                    s
                })
                .map_err(|e| problems.push(format!("tls.issuer: {e}")))
                .ok(),
            (Some(_), _) => {
                problems.push(
                    "tls.issuer: needs `ca` (the bundle) and `dir` (where leaves are kept), not `ca_dir`"
                        .into(),
                );
                None
            }
            (None, _) if join_token_file.is_some() => {
                problems.push("tls.join_token_file: only used with tls.issuer".into());
                None
            }
            (None, _) => None,
        };
        Some(TlsSettings { source: source?, issuer })
    }
}
