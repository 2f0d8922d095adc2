//! Where the decision log goes and in which shape: `decision_log` and `decision_log_format` in
//! cordon.toml, checked here and nowhere else.
//!
//! `decision_log` is a file path, `"syslog:"` (the local syslog socket, `/dev/log`) or
//! `"syslog:/path/to/socket"`; `decision_log_format` is `"cordon"` (the default: cordon's own
//! JSON lines, docs/policy.md) or `"ocsf"` (OCSF 1.5.0 Network Activity events).

use std::path::{Path, PathBuf};

use crate::base::config_path;

/// The local syslog socket `"syslog:"` names.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";
/// The longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How each record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecisionFormat {
    /// cordon's own JSON lines (docs/policy.md).
    #[default]
    Cordon,
    /// OCSF 1.5.0 Network Activity events (class 4001), one JSON object per record.
    Ocsf,
}

impl DecisionFormat {
    /// Reads `decision_log_format`; the error names the accepted values, not the value given.
    pub fn parse(value: &str) -> Result<DecisionFormat, String> {
        match value {
            "cordon" => Ok(DecisionFormat::Cordon),
            "ocsf" => Ok(DecisionFormat::Ocsf),
            _ => Err("must be \"cordon\" or \"ocsf\"".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionFormat::Cordon => "cordon",
            DecisionFormat::Ocsf => "ocsf",
        }
    }
}

/// Where the records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionSink {
    /// Appended to a file, reopened after rotation.
    File(PathBuf),
    /// Sent as RFC 5424 messages to a unix datagram socket (a local syslog daemon).
    Syslog(PathBuf),
}

/// The decision log's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionLogSettings {
    pub sink: DecisionSink,
    pub format: DecisionFormat,
}

impl DecisionLogSettings {
    /// A file in cordon's own format (what `decision_log = "PATH"` alone means).
    pub fn file(path: &Path) -> DecisionLogSettings {
        DecisionLogSettings { sink: DecisionSink::File(path.to_owned()), format: DecisionFormat::Cordon }
    }

    /// Validates the two fields of cordon.toml, pushing one problem per bad value onto
    /// `problems`; relative paths are taken from `base`, the config file's directory.
    pub fn validate(
        log: Option<String>,
        format: Option<String>,
        base: &Path,
        problems: &mut Vec<String>,
    ) -> Option<DecisionLogSettings> {
        let format = match format.as_deref().map(DecisionFormat::parse) {
            None => DecisionFormat::Cordon,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                problems.push(format!("decision_log_format: {e}"));
                DecisionFormat::Cordon
            }
        };
        let Some(log) = log else {
            if format != DecisionFormat::Cordon {
                problems.push("decision_log_format: set, but there is no decision_log to write".into());
            }
            return None;
        };
        let sink = match log.strip_prefix("syslog:") {
            Some("") => DecisionSink::Syslog(PathBuf::from(DEFAULT_SYSLOG_SOCKET)),
            Some(socket) => {
                let path = config_path("decision_log", socket.into(), base, problems);
                let len = path.as_os_str().len();
                if len > MAX_SOCKET_PATH {
                    problems.push(format!(
                        "decision_log: the syslog socket's path is {len} bytes; a unix socket's takes at most {MAX_SOCKET_PATH}"
                    ));
                }
                DecisionSink::Syslog(path)
            }
            None => DecisionSink::File(config_path("decision_log", log.into(), base, problems)),
        };
        Some(DecisionLogSettings { sink, format })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(log: &str, format: Option<&str>) -> (Option<DecisionLogSettings>, Vec<String>) {
        let mut problems = Vec::new();
        let s = DecisionLogSettings::validate(
            Some(log.into()),
            format.map(String::from),
            Path::new("/etc/cordon"),
            &mut problems,
        );
        (s, problems)
    }

    #[test]
    fn files_syslog_sockets_and_formats() {
        let (s, p) = check("decisions.jsonl", None);
        assert!(p.is_empty());
        assert_eq!(s, Some(DecisionLogSettings::file(Path::new("/etc/cordon/decisions.jsonl"))));
        let (s, _) = check("syslog:", Some("ocsf"));
        let s = s.unwrap();
        assert_eq!(s.sink, DecisionSink::Syslog(DEFAULT_SYSLOG_SOCKET.into()));
        assert_eq!(s.format, DecisionFormat::Ocsf);
        let (s, _) = check("syslog:/run/rsyslog.sock", Some("cordon"));
        assert_eq!(s.unwrap().sink, DecisionSink::Syslog("/run/rsyslog.sock".into()));
        let (_, p) = check("x.jsonl", Some("cef\u{1b}"));
        assert_eq!(p, ["decision_log_format: must be \"cordon\" or \"ocsf\""]);
        let (_, p) = check("", None);
        assert_eq!(p, ["decision_log: must not be empty"]);
        let (_, p) = check(&format!("syslog:/{}", "s".repeat(120)), None);
        assert_eq!(
            p,
            ["decision_log: the syslog socket's path is 121 bytes; a unix socket's takes at most 107"]
        );
        let mut p = Vec::new();
        assert_eq!(DecisionLogSettings::validate(None, Some("ocsf".into()), Path::new("/"), &mut p), None);
        assert_eq!(p, ["decision_log_format: set, but there is no decision_log to write"]);
    }
}
