//! Reading text lines with a byte cap, so one huge line (a 50 MB row in a JSONL file) is
//! skipped over in fixed-size reads instead of being held in memory, and invalid UTF-8 is
//! reported with its line number.

use std::io::{self, BufRead};

/// One line read by [`BoundedLines`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line's text (without the line ending).
    Text(String),
    /// The line had more than the cap's bytes; its `len` bytes were skipped unread.
    TooLong { len: u64 },
    /// The line is not UTF-8; `at` is the byte offset of the first invalid byte in the line.
    InvalidUtf8 { at: usize },
}

/// Lines of a reader, each at most `max_bytes` long (line ending excluded); numbered from 1.
#[derive(Debug)]
pub struct BoundedLines<R> {
    reader: R,
    max_bytes: usize,
    line_no: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> BoundedLines<R> {
    /// Read `reader` with lines of at most `max_bytes`.
    pub fn new(reader: R, max_bytes: usize) -> Self {
        Self {
            reader,
            max_bytes,
            line_no: 0,
            buf: Vec::new(),
        }
    }

    /// The next line with its 1-based number, or `None` at the end.
    ///
    /// # Errors
    /// I/O errors of the reader.
    pub fn next_line(&mut self) -> io::Result<Option<(usize, Line)>> {
        self.buf.clear();
        let mut len = 0u64;
        let mut any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            len += part.len() as u64;
            // Keep bytes only while under the cap; past it, only count them.
            if self.buf.len() <= self.max_bytes {
                let room = self.max_bytes + 1 - self.buf.len();
                self.buf.extend_from_slice(&part[..part.len().min(room)]);
            }
            let used = done.unwrap_or(chunk.len());
            self.reader.consume(used);
            if done.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.line_no += 1;
        if self.buf.last() == Some(&b'\r') && len <= self.max_bytes as u64 + 1 {
            self.buf.pop();
            len -= 1;
        }
        let line = if len > self.max_bytes as u64 {
            Line::TooLong { len }
        } else {
            match String::from_utf8(std::mem::take(&mut self.buf)) {
                Ok(text) => Line::Text(text),
                Err(e) => Line::InvalidUtf8 {
                    at: e.utf8_error().valid_up_to(),
                },
            }
        };
        Ok(Some((self.line_no, line)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all(input: &[u8], cap: usize) -> Vec<(usize, Line)> {
        // A tiny buffer so lines span many reads.
        let mut lines = BoundedLines::new(io::BufReader::with_capacity(3, input), cap);
        std::iter::from_fn(|| lines.next_line().unwrap()).collect()
    }

    #[test]
    fn splits_caps_and_reports_invalid_utf8() {
        let got = all(b"ab\r\n\nabcdefgh\nx\xffy\nlast", 4);
        assert_eq!(
            got,
            vec![
                (1, Line::Text("ab".into())),
                (2, Line::Text(String::new())),
                (3, Line::TooLong { len: 8 }),
                (4, Line::InvalidUtf8 { at: 1 }),
                (5, Line::Text("last".into())),
            ]
        );
        assert_eq!(all(b"abcd\n", 4), vec![(1, Line::Text("abcd".into()))]);
        assert_eq!(all(b"abcd\r\n", 4), vec![(1, Line::Text("abcd".into()))]);
        assert!(all(b"", 4).is_empty());
    }

    /// A line far over the cap is counted, not held: the buffer stays at the cap.
    #[test]
    fn huge_line_is_skipped_in_bounded_memory() {
        let big = vec![b'a'; 10 << 20];
        let mut input = big.clone();
        input.extend_from_slice(b"\nok\n");
        let mut lines = BoundedLines::new(io::BufReader::new(&input[..]), 1024);
        assert_eq!(
            lines.next_line().unwrap(),
            Some((1, Line::TooLong { len: 10 << 20 }))
        );
        assert!(lines.buf.capacity() < 64 * 1024, "{}", lines.buf.capacity());
        assert_eq!(
            lines.next_line().unwrap(),
            Some((2, Line::Text("ok".into())))
        );
    }
}
