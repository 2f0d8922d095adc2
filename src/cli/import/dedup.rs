//! Which part of a log file the ledger already holds, so that `import haproxy-log` can run again
//! over a log that keeps growing (from cron, before logrotate) without counting a line twice.
//!
//! The ledger keeps every prefix of a file it imported (its first `len` bytes, through a
//! newline) by SHA-256 ([`ImportedPrefix`]). A file is hashed against each recorded prefix no
//! longer than it, in one pass; the longest that matches is skipped and the import goes on from
//! there, continuing the same hash. A file with another beginning (rotated and started afresh,
//! truncated, another host's) matches nothing and is read in full. Only regular files are
//! matched: stdin and pipes can be read only once, and are imported in full every time.

use std::fs::File;
use std::io::{self, Read};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::ledger::ImportedPrefix;

/// The longest recorded prefix a file starts with (nothing: length 0).
pub(super) struct Done {
    /// Bytes already imported.
    pub len: u64,
    /// Lines in them.
    pub lines: u64,
    /// SHA-256 state after those bytes, to continue over the rest of the file.
    pub digest: Sha256,
}

/// Reads `file` from its start (it is `size` bytes long) as far as the longest prefix in `known`
/// that fits, and returns the longest that matches. The file is left somewhere past it; seek to
/// `len` before reading on. A file that shrinks meanwhile matches what it still holds.
pub(super) fn already_imported(file: &mut File, size: u64, known: &[ImportedPrefix]) -> io::Result<Done> {
    let mut done = Done { len: 0, lines: 0, digest: Sha256::new() };
    let mut candidates: Vec<&ImportedPrefix> = known.iter().filter(|p| p.len > 0 && p.len <= size).collect();
    candidates.sort_by_key(|p| p.len);
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    for prefix in candidates {
        while at < prefix.len {
            let want = usize::try_from(prefix.len - at).unwrap_or(usize::MAX).min(buf.len());
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => return Ok(done),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        if hasher.clone().finalize().as_slice() == prefix.sha256 {
            done = Done { len: prefix.len, lines: prefix.lines, digest: hasher.clone() };
        }
    }
    Ok(done)
}

/// The prefix to record after reading `bytes` more bytes holding `lines` more lines past `done`,
/// with `digest` continued over them; `None` when nothing new was read.
pub(super) fn new_prefix(
    file: &str,
    done: &Done,
    bytes: u64,
    lines: u64,
    digest: Option<Sha256>,
) -> Option<ImportedPrefix> {
    let digest = digest.filter(|_| bytes > 0)?;
    Some(ImportedPrefix {
        sha256: digest.finalize().into(),
        len: done.len + bytes,
        lines: done.lines + lines,
        file: file.to_owned(),
        imported_at: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::SystemTime;

    use sha2::{Digest, Sha256};

    use super::already_imported;
    use crate::ledger::ImportedPrefix;

    fn prefix(text: &str, lines: u64) -> ImportedPrefix {
        ImportedPrefix {
            sha256: Sha256::digest(text).into(),
            len: text.len() as u64,
            lines,
            file: "f".into(),
            imported_at: SystemTime::now(),
        }
    }

    fn matched(content: &str, known: &[ImportedPrefix]) -> (u64, u64) {
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(content.as_bytes()).unwrap();
        use std::io::Seek;
        tmp.rewind().unwrap();
        let done = already_imported(&mut tmp, content.len() as u64, known).unwrap();
        let expected: [u8; 32] = Sha256::digest(&content.as_bytes()[..done.len as usize]).into();
        assert_eq!(<[u8; 32]>::from(done.digest.finalize()), expected, "the hash state is at len");
        (done.len, done.lines)
    }

    #[test]
    fn the_longest_recorded_prefix_that_matches_wins() {
        let big = "x".repeat(200_000);
        let known = [
            prefix("a\n", 1),
            prefix("a\nb\n", 2),
            prefix("a\nB\nc\n", 3),
            prefix(&format!("a\nb\n{big}\n"), 3),
            prefix("a\nb\nc\nd\ne\nf\n", 6),
        ];
        assert_eq!(matched("a\nb\nc\n", &known), (4, 2), "a\\nB\\nc differs; the longest fits not");
        assert_eq!(matched(&format!("a\nb\n{big}\nmore\n"), &known), (big.len() as u64 + 5, 3));
        assert_eq!(matched("a\nb\n", &known), (4, 2), "the whole file");
        assert_eq!(matched("z\na\nb\n", &known), (0, 0), "another beginning");
        assert_eq!(matched("a\nb\nc\n", &[]), (0, 0));
    }
}
