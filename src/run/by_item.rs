//! A step's records by item in a [`crate::spill`] file: each written as it
//! arrives, in any order ([`ItemWriter`]), and read back by item
//! ([`ItemFile::read`]), 8 bytes an item kept in memory; and the
//! process-wide ceiling on such files open at once ([`OpenFiles`]). A large
//! fan-out's call reports (`calls`) and its answers (`answers`) both go
//! through here: one format, one bound, one count of open files.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::spill;

/// Spill files open at once in the process. Each spilled step keeps its
/// files open until its report is dropped: a workflow of thousands of large
/// fan-outs must not take every file descriptor the connections need, so
/// past this a step keeps its records in memory, as without a spill.
const MAX_OPEN_FILES: usize = 64;

pub(super) static OPEN_FILES: OpenFiles = OpenFiles::new(MAX_OPEN_FILES);

/// A count of open spill files with a ceiling.
pub(super) struct OpenFiles {
    open: AtomicUsize,
    max: usize,
}

impl OpenFiles {
    pub(super) const fn new(max: usize) -> OpenFiles {
        OpenFiles {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// One more open file, if under the ceiling.
    fn take(&'static self) -> Option<FileSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| FileSlot(self))
    }
}

/// An open spill file's place in the count, given back when dropped.
struct FileSlot(&'static OpenFiles);

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An offset no record has: the item's record has not arrived.
const MISSING: u64 = u64::MAX;

/// Writes a step's records by item to a new temporary file, in any order;
/// each item once.
pub(super) struct ItemWriter {
    /// What the records are, plural ("call reports"), for the errors.
    what: &'static str,
    out: spill::Writer,
    slot: FileSlot,
    /// Where each item's record starts.
    offsets: Vec<u64>,
    /// Why some records could not be written (the rest are not tried).
    lost: Option<String>,
}

impl ItemWriter {
    /// A writer for `len` items, or `None` when `files` is at its ceiling or
    /// no temporary file can be made: the caller keeps its records in
    /// memory (slower to fail than to lose a run's records).
    pub(super) fn new(len: usize, what: &'static str, files: &'static OpenFiles) -> Option<Self> {
        let slot = files.take()?;
        let out = spill::Writer::new().ok()?;
        Some(ItemWriter {
            what,
            out,
            slot,
            offsets: vec![MISSING; len],
            lost: None,
        })
    }

    /// Item `n`'s record (`n` below the writer's length).
    pub(super) fn push<T: Serialize>(&mut self, n: usize, record: &T) {
        if self.lost.is_some() {
            return;
        }
        match self.out.push(record) {
            Ok(at) => self.offsets[n] = at,
            Err(e) => self.lost = Some(e.to_string()),
        }
    }

    /// The records, to be read back by item.
    pub(super) fn finish(self) -> ItemFile {
        let mut lost = self.lost;
        if self.offsets.contains(&MISSING) {
            lost.get_or_insert_with(|| format!("one of the {} never arrived", self.what));
        }
        let file = match self.out.finish() {
            Ok(f) => Some(f),
            Err(e) => {
                lost.get_or_insert_with(|| e.to_string());
                None
            }
        };
        ItemFile {
            what: self.what,
            file,
            _slot: self.slot,
            offsets: self.offsets,
            lost,
        }
    }
}

/// A step's records on disk, by item.
pub(super) struct ItemFile {
    what: &'static str,
    /// `None` when the file could not be finished (then `lost` says why).
    file: Option<File>,
    /// Held as long as the file.
    _slot: FileSlot,
    offsets: Vec<u64>,
    /// Why some records could not be written: every read says so rather
    /// than showing a step with records missing.
    lost: Option<String>,
}

impl ItemFile {
    /// How many items.
    pub(super) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Item `n`'s record, through `reader`'s window (read in item order,
    /// most records are in the window the previous read brought in).
    pub(super) fn read<T: DeserializeOwned>(
        &self,
        reader: &mut spill::Reader,
        n: usize,
    ) -> io::Result<T> {
        match (&self.lost, &self.file, self.offsets.get(n)) {
            (Some(why), _, _) => Err(io::Error::other(format!(
                "{} were lost on the way to a temporary file: {why}",
                self.what
            ))),
            (None, Some(file), Some(&offset)) => reader.read(file, offset),
            _ => Err(io::Error::other(format!(
                "one of the {} is missing",
                self.what
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_by_item_whatever_their_order() {
        static FILES: OpenFiles = OpenFiles::new(4);
        let mut w = ItemWriter::new(5, "texts", &FILES).unwrap();
        for n in [3, 0, 4, 1, 2] {
            w.push(n, &format!("item {n}\n"));
        }
        let f = w.finish();
        assert_eq!(f.len(), 5);
        let mut r = spill::Reader::default();
        for n in 0..5 {
            assert_eq!(f.read::<String>(&mut r, n).unwrap(), format!("item {n}\n"));
        }
        assert!(f.read::<String>(&mut r, 5).is_err());
    }

    #[test]
    fn a_record_that_never_arrived_or_could_not_be_written_is_an_error_when_read() {
        static FILES: OpenFiles = OpenFiles::new(4);
        let mut w = ItemWriter::new(3, "texts", &FILES).unwrap();
        w.push(0, &"a");
        w.push(2, &"c");
        let e = w.finish().read::<String>(&mut spill::Reader::default(), 0);
        let e = e.unwrap_err().to_string();
        assert!(e.contains("one of the texts never arrived"), "{e}");

        let mut w = ItemWriter::new(2, "texts", &FILES).unwrap();
        w.push(0, &"z".repeat(spill::MAX_RECORD));
        w.push(1, &"b");
        let e = w.finish().read::<String>(&mut spill::Reader::default(), 1);
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("texts were lost on the way to a temporary file"),
            "{e}"
        );
    }

    #[test]
    fn past_the_ceiling_there_is_no_writer_until_a_file_closes() {
        static ONE: OpenFiles = OpenFiles::new(1);
        let a = ItemWriter::new(1, "texts", &ONE).unwrap();
        assert!(ItemWriter::new(1, "texts", &ONE).is_none());
        let file = a.finish();
        assert!(ItemWriter::new(1, "texts", &ONE).is_none());
        drop(file);
        assert!(ItemWriter::new(1, "texts", &ONE).is_some());
    }
}
