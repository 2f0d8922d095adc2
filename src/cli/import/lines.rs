//! Reading a log line by line in bounded memory: a line longer than the limit is cut there (and
//! said to be), so a huge or binary file never grows the buffer past the limit.

use std::io::{self, BufRead};

/// One line, its number, and whether it was cut at the limit.
pub(super) struct BoundedLines<R> {
    reader: R,
    buf: Vec<u8>,
    max: usize,
    number: usize,
}

impl<R: BufRead> BoundedLines<R> {
    pub(super) fn new(reader: R, max: usize) -> Self {
        Self { reader, buf: Vec::with_capacity(max.min(64 * 1024)), max, number: 0 }
    }

    /// The next line without its newline: (1-based number, bytes, cut at the limit).
    pub(super) fn next_line(&mut self) -> io::Result<Option<(usize, &[u8], bool)>> {
        self.buf.clear();
        let mut cut = false;
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
            self.reader.consume(used);
            if done {
                break;
            }
        }
        if !read_any {
            return Ok(None);
        }
        self.number += 1;
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some((self.number, &self.buf, cut)))
    }
}

#[cfg(test)]
mod tests {
    use super::BoundedLines;

    #[test]
    fn long_lines_are_cut_and_numbering_goes_on() {
        let text = format!("short\r\n{}\nlast", "x".repeat(100));
        let mut lines = BoundedLines::new(std::io::BufReader::with_capacity(7, text.as_bytes()), 10);
        let mut seen = Vec::new();
        while let Some((n, line, cut)) = lines.next_line().unwrap() {
            seen.push((n, String::from_utf8(line.to_vec()).unwrap(), cut));
        }
        assert_eq!(seen, [(1, "short".into(), false), (2, "x".repeat(10), true), (3, "last".into(), false)]);
        assert!(lines.buf.capacity() < 64, "the buffer stays bounded");
    }
}
