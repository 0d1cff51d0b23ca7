//! A streamed list: an `array` input declared `stream: true` and given as a
//! JSON Lines file (`--input NAME=@FILE.jsonl`), one item per line. It is
//! the list of a `for_each` that may be far larger than memory: the file is
//! read again, one line at a time, on each pass over the items (checking,
//! `plan`'s or `run`'s rendering, the run's calls), and never held whole.
//!
//! Invariants:
//! - **Every item was checked before anything is spent.** [`StreamedList::open`]
//!   reads the whole file once, parses every line and reports the first bad
//!   one with its line and column; a bad file is an input error (exit 2).
//! - **A later pass reads the bytes the first one checked, or stops.** The
//!   first pass records the SHA-256 of each block of about 1 MiB of lines;
//!   a later pass reads a block whole, compares its digest and only then
//!   hands out its items. A file edited, truncated, grown or replaced after
//!   it was opened is an error at the first block that differs — never an
//!   item that routing, the plan or the budget did not see.
//! - **Bounded:** the file ([`MAX_STREAM_BYTES`]), a line ([`MAX_ITEM_BYTES`]),
//!   the items ([`MAX_STREAM_ITEMS`]); a pass holds one block.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::files::{BoundedFile, ReadError};

/// The largest streamed list file: 16 GiB.
pub const MAX_STREAM_BYTES: u64 = 16 << 30;
/// The most items a streamed list holds.
pub const MAX_STREAM_ITEMS: u64 = 100_000_000;
/// The longest line (one item): 8 MiB, a template's own output bound.
pub const MAX_ITEM_BYTES: usize = 8 << 20;
/// A block is whole lines totalling at least this many bytes (the last one
/// fewer): what a later pass holds and checks at once.
const BLOCK_BYTES: usize = 1 << 20;

/// A checked JSON Lines file and what a later pass compares it with.
#[derive(Debug)]
pub struct StreamedList {
    /// Absolute: the journal keeps it, so a resume from another folder
    /// reads the same file.
    path: PathBuf,
    items: u64,
    bytes: u64,
    sha256: String,
    blocks: Vec<Block>,
}

#[derive(Debug)]
struct Block {
    bytes: usize,
    /// The line the block starts on (1-based), for a located error.
    first_line: u64,
    digest: [u8; 32],
}

/// Why a streamed list cannot be read. `Display` says what and where
/// (line, column), for a message that already names the file.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Read(ReadError),
    #[error("line {line}, column {column}: {reason}")]
    Line {
        line: u64,
        column: usize,
        reason: String,
    },
    #[error("line {line} is longer than {} MiB", MAX_ITEM_BYTES >> 20)]
    LineTooLong { line: u64 },
    #[error("more than {MAX_STREAM_ITEMS} items")]
    TooManyItems,
    #[error("the file changed after it was checked (from line {line} on)")]
    Changed { line: u64 },
}

impl StreamError {
    /// The error about the file at `path` as a user reads it: a bad line
    /// located `path:line:column`, as a compiler would.
    pub fn about(&self, path: &str) -> String {
        match self {
            StreamError::Line {
                line,
                column,
                reason,
            } => format!("{path}:{line}:{column}: {reason}"),
            StreamError::LineTooLong { line } => {
                format!(
                    "{path}:{line}: a line longer than {} MiB",
                    MAX_ITEM_BYTES >> 20
                )
            }
            _ => format!("cannot use `{path}`: {self}"),
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            StreamError::Read(e) => e
                .hint()
                .unwrap_or("the path is relative to the current directory"),
            StreamError::Line { .. } => {
                "a streamed input is JSON Lines: one JSON value per line (a JSON array file becomes one with `jq -c '.[]' FILE`)"
            }
            StreamError::LineTooLong { .. } | StreamError::TooManyItems => {
                "split the file, or give fewer or smaller items"
            }
            StreamError::Changed { .. } => {
                "do not edit a streamed input while tollgate reads it: copy it first, or run again"
            }
        }
    }
}

impl From<ReadError> for StreamError {
    fn from(e: ReadError) -> Self {
        StreamError::Read(e)
    }
}

fn io_error(e: std::io::Error) -> StreamError {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        StreamError::Read(ReadError::TooLarge {
            limit: MAX_STREAM_BYTES,
        })
    } else {
        StreamError::Read(ReadError::from(e))
    }
}

impl StreamedList {
    /// Reads `path` once: every line parsed as JSON (blank lines skipped),
    /// the blocks' digests and the whole file's SHA-256 recorded.
    pub fn open(path: &Path) -> Result<StreamedList, StreamError> {
        let mut reader = BufReader::new(BoundedFile::open(path, MAX_STREAM_BYTES)?);
        let path = std::fs::canonicalize(path).map_err(|e| StreamError::Read(e.into()))?;
        let mut whole = Sha256::new();
        let mut block = Sha256::new();
        let (mut block_bytes, mut block_start) = (0usize, 1u64);
        let mut blocks = Vec::new();
        let (mut items, mut bytes, mut line_no) = (0u64, 0u64, 0u64);
        let mut line = Vec::new();
        while read_line(&mut reader, &mut line, line_no + 1)? {
            line_no += 1;
            whole.update(&line);
            block.update(&line);
            block_bytes += line.len();
            bytes += line.len() as u64;
            if parse(&line, line_no)?.is_some() {
                items += 1;
                if items > MAX_STREAM_ITEMS {
                    return Err(StreamError::TooManyItems);
                }
            }
            if block_bytes >= BLOCK_BYTES {
                blocks.push(Block {
                    bytes: block_bytes,
                    first_line: block_start,
                    digest: block.finalize_reset().into(),
                });
                (block_bytes, block_start) = (0, line_no + 1);
            }
        }
        if block_bytes > 0 {
            blocks.push(Block {
                bytes: block_bytes,
                first_line: block_start,
                digest: block.finalize().into(),
            });
        }
        Ok(StreamedList {
            path,
            items,
            bytes,
            sha256: format!("{:x}", whole.finalize()),
            blocks,
        })
    }

    /// How many items (non-blank lines) the file holds.
    pub fn len(&self) -> u64 {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// What the input's value is everywhere a value is shown or kept (the
    /// plan's inputs, the journal with [`crate::inputs::journal_value`]):
    /// the file, not its items.
    pub fn descriptor(&self) -> Value {
        serde_json::json!({
            "stream": self.path.display().to_string(),
            "items": self.items,
            "bytes": self.bytes,
            "sha256": self.sha256,
        })
    }

    /// The items in file order, read again from the file; each block is
    /// checked against the first pass before any of its items is handed out.
    pub fn items(&self) -> Items<'_> {
        Items {
            list: self,
            reader: None,
            block: 0,
            buf: Vec::new(),
            at: 0,
            line: 0,
            done: false,
        }
    }
}

/// One line (its ending kept, as the digests count it) into `line`; false
/// at the end of the file. Bounded by [`MAX_ITEM_BYTES`].
fn read_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    number: u64,
) -> Result<bool, StreamError> {
    line.clear();
    let n = reader
        .take(MAX_ITEM_BYTES as u64 + 2)
        .read_until(b'\n', line)
        .map_err(io_error)?;
    if n > MAX_ITEM_BYTES + 1 || (n == MAX_ITEM_BYTES + 1 && !line.ends_with(b"\n")) {
        return Err(StreamError::LineTooLong { line: number });
    }
    Ok(n > 0)
}

/// A line's item: `None` for a blank line.
fn parse(line: &[u8], number: u64) -> Result<Option<Value>, StreamError> {
    let text = line.trim_ascii();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(text)
        .map(Some)
        .map_err(|e| StreamError::Line {
            line: number,
            // serde_json counts columns from 1 within the trimmed text.
            column: e.column() + (line.len() - line.trim_ascii_start().len()),
            reason: without_position(&e),
        })
}

/// serde_json's message without its own " at line L column C" (the line is
/// the file's, not serde_json's one-line view).
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// A pass over a streamed list's items ([`StreamedList::items`]).
pub struct Items<'a> {
    list: &'a StreamedList,
    /// Opened on the first item, so making the iterator costs nothing.
    reader: Option<BufReader<BoundedFile>>,
    /// The next block to read.
    block: usize,
    /// The current block's bytes, checked, and where in them the next
    /// line starts.
    buf: Vec<u8>,
    at: usize,
    /// The line number of the last line handed out.
    line: u64,
    done: bool,
}

impl Items<'_> {
    /// Reads and checks the next block into `buf`; false after the last.
    fn next_block(&mut self) -> Result<bool, StreamError> {
        let reader = match &mut self.reader {
            Some(r) => r,
            None => self.reader.insert(BufReader::new(BoundedFile::open(
                &self.list.path,
                MAX_STREAM_BYTES,
            )?)),
        };
        let Some(block) = self.list.blocks.get(self.block) else {
            // Nothing may follow the last block the first pass read.
            let mut one = [0u8; 1];
            let more = reader.read(&mut one).map_err(io_error)?;
            if more > 0 {
                return Err(StreamError::Changed {
                    line: self.line + 1,
                });
            }
            return Ok(false);
        };
        let changed = StreamError::Changed {
            line: block.first_line,
        };
        self.buf.clear();
        let got = reader
            .by_ref()
            .take(block.bytes as u64)
            .read_to_end(&mut self.buf)
            .map_err(io_error)?;
        if got != block.bytes || <[u8; 32]>::from(Sha256::digest(&self.buf)) != block.digest {
            return Err(changed);
        }
        self.block += 1;
        self.at = 0;
        self.line = block.first_line - 1;
        Ok(true)
    }

    fn next_item(&mut self) -> Result<Option<Value>, StreamError> {
        loop {
            if self.at >= self.buf.len() && !self.next_block()? {
                return Ok(None);
            }
            let rest = &self.buf[self.at..];
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let line = &rest[..end];
            self.at += end;
            self.line += 1;
            if let Some(v) = parse(line, self.line)? {
                return Ok(Some(v));
            }
        }
    }
}

impl Iterator for Items<'_> {
    type Item = Result<Value, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_item();
        if !matches!(next, Ok(Some(_))) {
            // An error ends the pass: what follows is not checked.
            self.done = true;
        }
        next.transpose()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, usize::try_from(self.list.items).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("items.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn all(list: &StreamedList) -> Result<Vec<Value>, StreamError> {
        list.items().collect()
    }

    #[test]
    fn items_are_the_lines_in_order_blank_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "{\"a\": 1}\n\n  \"two\"\r\n[3]\n4");
        let list = StreamedList::open(&p).unwrap();
        assert_eq!(list.len(), 4);
        let want = vec![
            serde_json::json!({"a": 1}),
            "two".into(),
            serde_json::json!([3]),
            4.into(),
        ];
        assert_eq!(all(&list).unwrap(), want);
        // A second pass reads the same items again.
        assert_eq!(all(&list).unwrap(), want);
        assert_eq!(
            list.sha256(),
            format!("{:x}", Sha256::digest(std::fs::read(&p).unwrap()))
        );
    }

    #[test]
    fn a_bad_line_is_located_by_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "1\n2\n  {\"a\": }\n4\n");
        let e = StreamedList::open(&p).unwrap_err();
        assert_eq!(e.to_string(), "line 3, column 9: expected value");
        // A pretty-printed JSON array fails on its first line, with a hint.
        let p = file(&dir, "[\n  1,\n  2\n]\n");
        let e = StreamedList::open(&p).unwrap_err();
        assert!(e.to_string().starts_with("line 1, column"), "{e}");
        assert!(e.hint().contains("jq -c"), "{}", e.hint());
    }

    #[test]
    fn a_line_longer_than_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("1\n\"{}\"\n", "x".repeat(MAX_ITEM_BYTES));
        let e = StreamedList::open(&file(&dir, &long)).unwrap_err();
        assert!(matches!(e, StreamError::LineTooLong { line: 2 }), "{e}");
        // At the bound exactly (with its newline) is fine.
        let fits = format!("\"{}\"\n", "x".repeat(MAX_ITEM_BYTES - 2));
        assert_eq!(StreamedList::open(&file(&dir, &fits)).unwrap().len(), 1);
    }

    /// The guarantee: once checked, a pass hands out only checked bytes.
    /// Every way of changing the file after `open` stops the pass at the
    /// block that differs, before any of that block's items.
    #[test]
    fn a_pass_over_a_changed_file_stops_before_the_changed_items() {
        let dir = tempfile::tempdir().unwrap();
        // Three blocks of about 1 MiB: 30,000 lines of ~100 bytes.
        let line = |i: usize| format!("{{\"n\": {i}, \"pad\": \"{}\"}}\n", "p".repeat(80));
        let text: String = (0..30_000).map(line).collect();
        let p = file(&dir, &text);
        let list = StreamedList::open(&p).unwrap();
        assert!(list.blocks.len() >= 3, "{} blocks", list.blocks.len());
        assert_eq!(all(&list).unwrap().len(), 30_000);
        let second_block = list.blocks[1].first_line;

        // One byte changed in the middle of the second block, same size.
        let mut edited = text.clone().into_bytes();
        let at = text.len() / 2;
        edited[at] = if edited[at] == b'p' { b'q' } else { b'p' };
        let edits: Vec<(&str, Vec<u8>)> = vec![
            ("edited", edited),
            ("truncated", text.as_bytes()[..text.len() / 2].to_vec()),
            ("grown", format!("{text}{}", line(30_000)).into_bytes()),
            ("emptied", Vec::new()),
        ];
        for (what, bytes) in edits {
            std::fs::write(&p, &bytes).unwrap();
            let mut seen = 0u64;
            let mut error = None;
            for item in list.items() {
                match item {
                    Ok(_) => seen += 1,
                    Err(e) => error = Some(e),
                }
            }
            let Some(StreamError::Changed { line }) = error else {
                panic!("{what}: no change reported (saw {seen} items)");
            };
            // Items of the blocks before the change only.
            assert!(
                seen < line,
                "{what}: {seen} items handed out, change at line {line}"
            );
            if what == "grown" {
                assert_eq!((seen, line), (30_000, 30_001), "{what}");
            } else if what != "emptied" {
                assert!(line >= second_block, "{what}: at line {line}");
            }
        }
        // Replaced by another file under the same name.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "1\n").unwrap();
        assert!(matches!(all(&list), Err(StreamError::Changed { line: 1 })));
        // Gone.
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            all(&list),
            Err(StreamError::Read(ReadError::NotFound))
        ));
    }

    #[test]
    fn not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = StreamedList::open(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "a directory, not a regular file");
    }
}
