//! Reading text files from paths the user (or a workflow, policy or suite
//! author) controls, with bounds.
//!
//! Every such read goes through [`read_text`]: workflow, policy and suite
//! files, `prompt_file`s, `--input k=@path`, a suite's `cases_from` files,
//! cassettes and results files for `merge`. Two guarantees hold for all of
//! them:
//!
//! - **Only regular files are read.** A FIFO, a socket, a device
//!   (`/dev/zero`, `/dev/stdin`) or a directory is refused instead of read
//!   forever or until memory runs out. The file is opened without blocking
//!   (`O_NONBLOCK` on Unix, so opening a FIFO with no writer does not hang)
//!   and its kind is checked on the open handle, so swapping the path for a
//!   FIFO between a check and the read cannot get past it.
//! - **At most [`MAX_TEXT_BYTES`] are read.** A larger file is an error,
//!   never a silent truncation; the read stops one byte past the limit, so a
//!   file that grows while it is read (or lies about its size, as `/proc`
//!   files do) cannot exhaust memory either.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The largest text file tollgate reads: 32 MiB. Generous on purpose — a
/// prompt file or an `@file` input this large is already millions of tokens,
/// beyond every model's context window — but bounded, so a mistaken path
/// (a disk image, a log) is an error instead of an exhausted machine.
/// YAML documents have a tighter bound of their own ([`crate::yaml::MAX_YAML_BYTES`]).
pub const MAX_TEXT_BYTES: u64 = 32 * 1024 * 1024;

/// Why a file could not be read. `Display` is the reason in a few words, for
/// a message that already names the file.
#[derive(Debug)]
pub enum ReadError {
    NotFound,
    PermissionDenied,
    /// Not a regular file: what it is instead ("a directory", "a FIFO", …).
    NotAFile(&'static str),
    TooLarge {
        limit: u64,
    },
    NotUtf8,
    Other(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotFound => f.write_str("no such file"),
            ReadError::PermissionDenied => f.write_str("permission denied"),
            ReadError::NotAFile(kind) => write!(f, "{kind}, not a regular file"),
            ReadError::TooLarge { limit } => {
                write!(f, "larger than the limit of {} MiB", limit / (1024 * 1024))
            }
            ReadError::NotUtf8 => f.write_str("not valid UTF-8 text"),
            ReadError::Other(err) => write!(f, "{err}"),
        }
    }
}

impl ReadError {
    /// A hint for the diagnostic that reports this error, when there is one
    /// more useful than the caller's.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ReadError::NotAFile(_) => Some(
                "tollgate reads only regular files: give the path of a file (to pass a stream, save it to a file first)",
            ),
            ReadError::TooLarge { .. } => Some(
                "the file is far larger than any prompt can be; check the path, or split the file",
            ),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(err: std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            std::io::ErrorKind::PermissionDenied => ReadError::PermissionDenied,
            std::io::ErrorKind::IsADirectory => ReadError::NotAFile("a directory"),
            std::io::ErrorKind::InvalidData => ReadError::NotUtf8,
            _ => ReadError::Other(err),
        }
    }
}

/// Reads a regular file of at most `limit` bytes as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String, ReadError> {
    // One byte past the limit tells "exactly at the limit" from "over it".
    read_stream_limited(open_regular(path)?, limit)
}

/// Reads a stream (standard input for `--input k=@-`) to its end, at most
/// `limit` bytes, as UTF-8 text. The stream is the user's own choice, so it
/// may be a pipe; only its size is bounded.
pub fn read_stream_limited(stream: impl Read, limit: u64) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    stream
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

/// Reads a regular file of at most `limit` bytes, as bytes (an image or
/// PDF input): larger is an error, never a truncation.
pub fn read_bytes_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// Reads a regular file of at most [`MAX_TEXT_BYTES`] as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    read_text_limited(path, MAX_TEXT_BYTES)
}

/// A regular file of at most `limit` bytes read line by line, as UTF-8
/// text: a JSONL case file of 100,000 cases is never held whole. The same
/// checks as [`read_text_limited`]; the size is checked before the first
/// line and again as lines are read (a file growing past the bound is an
/// error, never a truncation).
pub struct TextLines {
    reader: std::io::BufReader<BoundedFile>,
    limit: u64,
    line: String,
}

impl TextLines {
    pub fn open(path: &Path, limit: u64) -> Result<TextLines, ReadError> {
        Ok(TextLines {
            reader: std::io::BufReader::new(BoundedFile::open(path, limit)?),
            limit,
            line: String::new(),
        })
    }

    /// The next line without its ending (`\n` or `\r\n`, as
    /// [`str::lines`] splits), `None` at the end of the file.
    pub fn next_line(&mut self) -> Result<Option<&str>, ReadError> {
        use std::io::BufRead as _;
        self.line.clear();
        let n = self.reader.read_line(&mut self.line).map_err(|e| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                ReadError::TooLarge { limit: self.limit }
            } else {
                ReadError::from(e)
            }
        })?;
        if n == 0 {
            return Ok(None);
        }
        if self.line.ends_with('\n') {
            self.line.pop();
            if self.line.ends_with('\r') {
                self.line.pop();
            }
        }
        Ok(Some(&self.line))
    }
}

/// A regular file of at most `limit` bytes as a byte stream (a CSV case
/// file parsed record by record: a record may span lines, so [`TextLines`]
/// does not fit). The same checks as [`read_text_limited`] but UTF-8, which
/// the parser checks per record: the size before the first byte and again
/// as bytes are read. Past the bound a read fails with
/// [`std::io::ErrorKind::FileTooLarge`], its message [`ReadError::TooLarge`]'s:
/// an error, never a truncation.
pub struct BoundedFile {
    file: std::io::Take<File>,
    read: u64,
    limit: u64,
}

impl BoundedFile {
    pub fn open(path: &Path, limit: u64) -> Result<BoundedFile, ReadError> {
        let file = open_regular(path)?;
        if file.metadata()?.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        Ok(BoundedFile {
            // One byte past the limit tells "at the limit" from "over it".
            file: file.take(limit.saturating_add(1)),
            read: 0,
            limit,
        })
    }
}

impl Read for BoundedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                ReadError::TooLarge { limit: self.limit }.to_string(),
            ));
        }
        Ok(n)
    }
}

/// Opens `path` for reading only if it is a regular file (after following
/// symlinks), without blocking on a FIFO.
fn open_regular(path: &Path) -> Result<File, ReadError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading blocks until a writer comes; with
        // O_NONBLOCK it returns at once and the kind check below refuses it.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(ReadError::NotAFile(describe(&kind)))
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    "not a regular file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_file_stops_at_its_bound_even_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cases.csv");
        std::fs::write(&p, "a".repeat(100)).unwrap();
        assert!(matches!(
            BoundedFile::open(&p, 99),
            Err(ReadError::TooLarge { limit: 99 })
        ));
        let mut exact = String::new();
        BoundedFile::open(&p, 100)
            .unwrap()
            .read_to_string(&mut exact)
            .unwrap();
        assert_eq!(exact.len(), 100);
        // Within the bound when opened, past it by the time it is read.
        let mut f = BoundedFile::open(&p, 150).unwrap();
        std::fs::write(&p, "a".repeat(10_000)).unwrap();
        let err = f.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("larger than the limit"), "{err}");
        assert!(matches!(
            BoundedFile::open(dir.path(), 100),
            Err(ReadError::NotAFile("a directory"))
        ));
        // Line by line, the same bound: the lines read, then the error.
        std::fs::write(&p, "one\r\ntwo\n").unwrap();
        let mut lines = TextLines::open(&p, 9).unwrap();
        assert_eq!(lines.next_line().unwrap(), Some("one"));
        assert_eq!(lines.next_line().unwrap(), Some("two"));
        assert_eq!(lines.next_line().unwrap(), None);
        let mut lines = TextLines::open(&p, 20).unwrap();
        std::fs::write(&p, "x\n".repeat(5_000)).unwrap();
        let mut seen = 0;
        let err = loop {
            match lines.next_line() {
                Ok(Some(_)) => seen += 1,
                Ok(None) => panic!("a file past its bound read to the end"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, ReadError::TooLarge { limit: 20 }), "{err}");
        assert!(seen <= 10, "{seen} lines read past a 20-byte bound");
    }

    #[test]
    fn reads_regular_files_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "héllo").unwrap();
        assert_eq!(read_text_limited(&p, 6).unwrap(), "héllo");
        assert!(matches!(
            read_text_limited(&p, 5),
            Err(ReadError::TooLarge { limit: 5 })
        ));
    }

    #[test]
    fn refuses_directories_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_text(dir.path()),
            Err(ReadError::NotAFile("a directory"))
        ));
        #[cfg(unix)]
        assert!(matches!(
            read_text(Path::new("/dev/zero")),
            Err(ReadError::NotAFile("a device"))
        ));
        assert!(matches!(
            read_text(&dir.path().join("nope")),
            Err(ReadError::NotFound)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success());
        // No writer ever opens it: a blocking open would hang this test.
        assert!(matches!(
            read_text(&p),
            Err(ReadError::NotAFile("a FIFO (named pipe)"))
        ));
    }

    #[test]
    fn refuses_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.bin");
        std::fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(read_text(&p), Err(ReadError::NotUtf8)));
    }
}
