//! Reading a log line by line in bounded memory: a line longer than the limit is cut there (and
//! said to be), so a huge or binary file never grows the buffer past the limit.
//!
//! For a file that is deduplicated, the reader also hashes every byte it reads through the last
//! newline, cut parts included, so the importer can record exactly which prefix it has read.

use std::io::{self, BufRead};

use sha2::{Digest, Sha256};

/// One line as read.
pub(super) struct Line<'a> {
    /// 1-based, counted from the start of the file.
    pub number: usize,
    /// Without the newline (and a `\r` before it).
    pub bytes: &'a [u8],
    /// The line was longer than the limit and cut there.
    pub cut: bool,
    /// The line ended with a newline; only the last line of a file can lack one (then it may
    /// still be being written).
    pub newline: bool,
}

/// Lines of a reader, their numbers, and what has been read through the last newline.
pub(super) struct BoundedLines<R> {
    reader: R,
    buf: Vec<u8>,
    max: usize,
    number: usize,
    /// Bytes read through the last newline.
    complete_bytes: u64,
    /// Lines that ended with a newline.
    complete_lines: u64,
    /// SHA-256 of everything before the reader's start and every byte read through the last
    /// newline, when the caller keeps one.
    digest: Option<Sha256>,
}

impl<R: BufRead> BoundedLines<R> {
    pub(super) fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            buf: Vec::with_capacity(max.min(64 * 1024)),
            max,
            number: 0,
            complete_bytes: 0,
            complete_lines: 0,
            digest: None,
        }
    }

    /// Reads a file from line `after + 1` on, continuing `digest` (the hash of the lines before).
    pub(super) fn hashed(reader: R, max: usize, after: usize, digest: Sha256) -> Self {
        Self { number: after, digest: Some(digest), ..Self::new(reader, max) }
    }

    /// Bytes and lines read through the last newline, and their hash continued from the one
    /// given to [`Self::hashed`].
    pub(super) fn complete(self) -> (u64, u64, Option<Sha256>) {
        (self.complete_bytes, self.complete_lines, self.digest)
    }

    /// The next line, or `None` at the end.
    pub(super) fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        // The hash of this line is only kept once it has its newline.
        let mut digest = self.digest.clone();
        let mut consumed = 0u64;
        let mut cut = false;
        let mut newline = false;
        let mut read_any = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            read_any = true;
            let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], i + 1, true),
                None => (available, available.len(), false),
            };
            let room = self.max - self.buf.len();
            cut |= chunk.len() > room;
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if let Some(d) = digest.as_mut() {
                d.update(&available[..used]);
            }
            consumed += used as u64;
            self.reader.consume(used);
            if done {
                newline = true;
                break;
            }
        }
        if !read_any {
            return Ok(None);
        }
        self.number += 1;
        if newline {
            self.complete_bytes += consumed;
            self.complete_lines += 1;
            self.digest = digest;
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some(Line { number: self.number, bytes: &self.buf, cut, newline }))
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::BoundedLines;

    #[test]
    fn long_lines_are_cut_and_numbering_goes_on() {
        let text = format!("short\r\n{}\nlast", "x".repeat(100));
        let mut lines = BoundedLines::new(std::io::BufReader::with_capacity(7, text.as_bytes()), 10);
        let mut seen = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            seen.push((l.number, String::from_utf8(l.bytes.to_vec()).unwrap(), l.cut, l.newline));
        }
        assert_eq!(
            seen,
            [
                (1, "short".into(), false, true),
                (2, "x".repeat(10), true, true),
                (3, "last".into(), false, false)
            ]
        );
        assert!(lines.buf.capacity() < 64, "the buffer stays bounded");
        let (bytes, count, digest) = lines.complete();
        assert_eq!((bytes, count, digest.is_none()), (7 + 101, 2, true));
    }

    #[test]
    fn the_hash_covers_every_byte_through_the_last_newline() {
        let head = "one\n";
        let text = format!("{}\ntwo\r\nhalf a li", "y".repeat(50));
        let mut lines = BoundedLines::hashed(
            std::io::BufReader::with_capacity(5, text.as_bytes()),
            8,
            1,
            Sha256::new_with_prefix(head),
        );
        let mut numbers = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            numbers.push(l.number);
        }
        assert_eq!(numbers, [2, 3, 4]);
        let (bytes, count, digest) = lines.complete();
        let through_newline = &text[..text.rfind('\n').unwrap() + 1];
        assert_eq!((bytes, count), (through_newline.len() as u64, 2));
        let expected = Sha256::digest(format!("{head}{through_newline}"));
        assert_eq!(digest.unwrap().finalize(), expected, "cut bytes hashed, the unfinished line not");
    }
}
