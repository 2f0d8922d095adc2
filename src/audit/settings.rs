//! Where a command's audit records go, and in which encoding: `--audit-log` and
//! `--audit-format`, else `audit_log` and `audit_format` in cordon.toml, else the command's
//! default (`audit.jsonl` beside the policy for `mode`, in the CA directory for `ca ...`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The encoding of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    /// cordon's own JSON lines.
    #[default]
    Cordon,
    /// OCSF 1.5.0 API Activity events (class 6003), one per line.
    Ocsf,
}

impl std::str::FromStr for AuditFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cordon" => Ok(AuditFormat::Cordon),
            "ocsf" => Ok(AuditFormat::Ocsf),
            other => {
                Err(format!("{:?} is not an audit format (cordon or ocsf)", other.escape_debug().to_string()))
            }
        }
    }
}

/// The audit keys of cordon.toml, as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawAudit {
    pub audit_log: Option<PathBuf>,
    pub audit_format: Option<String>,
}

/// A validated destination for audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditTarget {
    pub path: PathBuf,
    pub format: AuditFormat,
}

impl RawAudit {
    /// Reads only the audit keys of a cordon.toml (the agent validates the rest of it).
    pub fn from_config(path: &Path) -> Result<(RawAudit, PathBuf), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let field = |key: &str| -> Result<Option<String>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{}: {key}: must be a string", path.display())),
            }
        };
        let raw = RawAudit {
            audit_log: field("audit_log")?.map(PathBuf::from),
            audit_format: field("audit_format")?,
        };
        Ok((raw, path.parent().unwrap_or(Path::new(".")).to_owned()))
    }

    /// Validates the keys: a bad format or an empty path is a problem naming its field. Relative
    /// paths are taken from `base`, the config file's directory.
    pub fn validate(self, base: &Path, problems: &mut Vec<String>) -> (Option<PathBuf>, Option<AuditFormat>) {
        let path = self.audit_log.map(|p| crate::base::config_path("audit_log", p, base, problems));
        let format = self
            .audit_format
            .and_then(|f| f.parse().map_err(|e: String| problems.push(format!("audit_format: {e}"))).ok());
        (path, format)
    }
}

impl AuditTarget {
    /// Picks the log: the flags, then the config's keys, then `default`.
    pub fn resolve(
        flag_log: Option<PathBuf>,
        flag_format: Option<AuditFormat>,
        config: Option<&Path>,
        default: PathBuf,
    ) -> Result<AuditTarget, String> {
        let (mut path, mut format) = (None, None);
        if let Some(config) = config {
            let (raw, base) = RawAudit::from_config(config)?;
            let mut problems = Vec::new();
            (path, format) = raw.validate(&base, &mut problems);
            if !problems.is_empty() {
                return Err(format!("{}: {}", config.display(), problems.join("; ")));
            }
        }
        Ok(AuditTarget {
            path: flag_log.or(path).unwrap_or(default),
            format: flag_format.or(format).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_config_which_wins_over_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("cordon.toml");
        std::fs::write(&config, "audit_log = \"a.jsonl\"\naudit_format = \"ocsf\"\npolicy = \"p.toml\"\n")
            .expect("write");
        let t = AuditTarget::resolve(None, None, Some(&config), "/d".into()).expect("ok");
        assert_eq!(t, AuditTarget { path: dir.path().join("a.jsonl"), format: AuditFormat::Ocsf });
        let t =
            AuditTarget::resolve(Some("/f".into()), Some(AuditFormat::Cordon), Some(&config), "/d".into())
                .expect("ok");
        assert_eq!(t, AuditTarget { path: "/f".into(), format: AuditFormat::Cordon });
        let t = AuditTarget::resolve(None, None, None, "/d".into()).expect("ok");
        assert_eq!(t, AuditTarget { path: "/d".into(), format: AuditFormat::Cordon });

        std::fs::write(&config, "audit_format = \"xml\"\n").expect("write");
        let e = AuditTarget::resolve(None, None, Some(&config), "/d".into()).expect_err("refused");
        assert!(e.contains("audit_format") && e.contains("cordon.toml"), "{e}");
    }
}
