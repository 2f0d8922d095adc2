//! Reads an audit log back, in either encoding, with filters. A line that is not a record is
//! skipped and reported by its line number (an audit log someone edited by hand is worth
//! hearing about), never fatal: the records around it are still shown.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Record, ocsf};

/// Which records to keep.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only records that concern this service.
    pub service: Option<String>,
    /// Only records from this moment on.
    pub since: Option<SystemTime>,
}

impl Filter {
    fn keeps(&self, r: &Record) -> bool {
        self.service.as_ref().is_none_or(|s| r.services().contains(&s.as_str()))
            && self.since.is_none_or(|since| r.when().is_some_and(|t| t >= since))
    }
}

/// A line that was not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based.
    pub line: usize,
    pub why: String,
}

/// Why the log could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot read the audit log: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The records of the log at `path` that `filter` keeps, oldest first, and the lines skipped.
pub fn read(path: &Path, filter: &Filter) -> Result<(Vec<Record>, Vec<Skipped>), ReadError> {
    let err = |source| ReadError { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    let (mut records, mut skipped) = (Vec::new(), Vec::new());
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(err)?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse(&line) {
            Ok(r) if filter.keeps(&r) => records.push(r),
            Ok(_) => {}
            Err(why) => skipped.push(Skipped { line: i + 1, why }),
        }
    }
    Ok((records, skipped))
}

/// One line in either encoding.
fn parse(line: &[u8]) -> Result<Record, String> {
    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let inner = match ocsf::record_of(&v) {
        Some(inner) => inner.clone(),
        None => v,
    };
    let r: Record = serde_json::from_value(inner).map_err(|e| format!("not an audit record: {e}"))?;
    r.when().ok_or_else(|| "its time is not RFC 3339".to_owned())?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditFormat, AuditLog};

    #[test]
    fn reads_both_encodings_filters_and_reports_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let token = Record::token_minted(dir.path(), "web-1", &["web".into()], SystemTime::now());
        let rotate = Record::rotation_step(dir.path(), Ok("prepared"), false);
        AuditLog::open(&path, AuditFormat::Cordon).expect("opens").append(&token).expect("writes");
        AuditLog::open(&path, AuditFormat::Ocsf).expect("opens").append(&rotate).expect("writes");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"hello\": 1}\n"))
            .expect("appends");
        let (all, skipped) = read(&path, &Filter::default()).expect("reads");
        assert_eq!(all, vec![token.clone(), rotate]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].line, 3);
        let web = Filter { service: Some("web".into()), since: None };
        assert_eq!(read(&path, &web).expect("reads").0, vec![token]);
        let later =
            Filter { service: None, since: Some(SystemTime::now() + std::time::Duration::from_secs(60)) };
        assert!(read(&path, &later).expect("reads").0.is_empty());
    }
}
