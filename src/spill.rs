//! Records kept on disk instead of in memory: each one a line of compact
//! JSON in an unnamed temporary file (deleted by the system when closed,
//! even after a crash), found again by the offset [`Writer::push`] returned.
//! What a run or a suite produces per item (a call's report, a case's
//! record) goes here, so memory holds a few bytes per item, not the items.
//! Below `run` and `eval`, which each keep their own index.

use std::fs::File;
use std::io::{self, BufWriter, Write as _};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How much of the file one read takes, and the writer's buffer. Records
/// are read in item order and written nearly in that order (items finish a
/// few places apart), so most records are found in the window the previous
/// read brought in.
const WINDOW: usize = 64 * 1024;

/// The largest record written or read back. The file is our own, but a
/// record past this (or a file changed under us) is an error, never an
/// allocation without end.
/// (Small under test, so that a test can pass it.)
pub const MAX_RECORD: usize = if cfg!(test) {
    1024 * 1024
} else {
    64 * 1024 * 1024
};

/// Appends records to a new temporary file.
pub struct Writer {
    out: BufWriter<File>,
    /// Bytes written so far: where the next record starts.
    end: u64,
    line: Vec<u8>,
}

impl Writer {
    /// A writer on a new unnamed temporary file.
    pub fn new() -> io::Result<Writer> {
        Ok(Writer {
            out: BufWriter::with_capacity(WINDOW, tempfile::tempfile()?),
            end: 0,
            line: Vec::new(),
        })
    }

    /// Writes one record; returns where it starts.
    pub fn push<T: Serialize>(&mut self, record: &T) -> io::Result<u64> {
        self.line.clear();
        // Compact JSON escapes every newline inside strings: one record,
        // one line.
        let written = serde_json::to_writer(&mut self.line, record)
            .map_err(io::Error::from)
            .and_then(|()| {
                if self.line.len() >= MAX_RECORD {
                    return Err(too_big());
                }
                self.line.push(b'\n');
                self.out.write_all(&self.line)
            });
        let at = self.end;
        if written.is_ok() {
            self.end += self.line.len() as u64;
        }
        // A very long record's buffer is not kept for the next.
        if self.line.capacity() > WINDOW {
            self.line = Vec::new();
        }
        written.map(|()| at)
    }

    /// The file, every record flushed to it.
    pub fn finish(self) -> io::Result<File> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "a record of the temporary file is over {} MiB",
            MAX_RECORD / (1024 * 1024)
        ),
    )
}

/// Reads records back from a [`Writer`]'s file through a window, with
/// positioned reads: readers share the file but not a cursor.
#[derive(Default)]
pub struct Reader {
    start: u64,
    buf: Vec<u8>,
}

impl Reader {
    /// The record starting at `offset`.
    pub fn read<T: DeserializeOwned>(&mut self, file: &File, offset: u64) -> io::Result<T> {
        let line = self.record(file, offset)?;
        serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The record (without its newline) starting at `offset`.
    fn record(&mut self, file: &File, offset: u64) -> io::Result<&[u8]> {
        if let Some(range) = self.find(offset) {
            return Ok(&self.buf[range]);
        }
        // A record bigger than the window grew it: let that go.
        if self.buf.capacity() > 4 * WINDOW {
            self.buf = Vec::new();
        }
        self.start = offset;
        self.buf.clear();
        loop {
            let have = self.buf.len();
            if have > MAX_RECORD {
                return Err(too_big());
            }
            self.buf.resize(have + WINDOW, 0);
            let n = read_at(file, &mut self.buf[have..], offset + have as u64)?;
            self.buf.truncate(have + n);
            if n == 0 {
                // Every record was written whole with its newline: the
                // file is not what was written.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a record in a temporary file is cut short",
                ));
            }
            if let Some(end) = self.buf[have..].iter().position(|&b| b == b'\n') {
                return Ok(&self.buf[..have + end]);
            }
        }
    }

    /// The record at `offset`, when the window holds all of it.
    fn find(&self, offset: u64) -> Option<std::ops::Range<usize>> {
        let from = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        let end = from + self.buf.get(from..)?.iter().position(|&b| b == b'\n')?;
        Some(from..end)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn records_read_back_in_any_order_across_windows() {
        let mut w = Writer::new().unwrap();
        let texts: Vec<String> = (0..200)
            .map(|i| format!("{i}:{}\nline", "x".repeat(i * 997 % 3000)))
            .collect();
        let at: Vec<u64> = texts.iter().map(|t| w.push(t).unwrap()).collect();
        let file = w.finish().unwrap();
        let mut r = Reader::default();
        for i in (0..200).rev().chain(0..200) {
            assert_eq!(r.read::<String>(&file, at[i]).unwrap(), texts[i]);
        }
    }

    #[test]
    fn a_record_bigger_than_the_window_reads_whole() {
        let mut w = Writer::new().unwrap();
        let big = "y".repeat(5 * WINDOW);
        let a = w.push(&big).unwrap();
        let b = w.push(&"after").unwrap();
        let file = w.finish().unwrap();
        let mut r = Reader::default();
        assert_eq!(r.read::<String>(&file, a).unwrap(), big);
        assert_eq!(r.read::<String>(&file, b).unwrap(), "after");
    }

    #[test]
    fn a_record_over_the_bound_is_an_error_written_or_read() {
        let mut w = Writer::new().unwrap();
        let e = w.push(&"z".repeat(MAX_RECORD)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Nothing of it was written: the next record is the file's first.
        assert_eq!(w.push(&"ok").unwrap(), 0);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![b'a'; MAX_RECORD + 2 * WINDOW]).unwrap();
        let e = Reader::default().read::<String>(&f, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_cut_or_foreign_file_is_an_error_not_a_panic() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"\"no newline at the end").unwrap();
        let mut r = Reader::default();
        let e = r.read::<String>(&f, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"{not json}\n").unwrap();
        let e = Reader::default().read::<String>(&f, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
