//! A suite's case records ([`Cases`]), in suite order, either in memory
//! (results read back from a file by `merge`, or built by hand) or spilled:
//! a test run writes each finished case's record to an unnamed temporary
//! file as one JSON line ([`CasesWriter`]) and keeps only its index, where
//! it starts and what it cost, so a suite of 100,000 cases holds 24 bytes
//! per case until its reports are written (2.4 MB), not 100,000 records
//! (about 60 MB). The reports (summary, JUnit, JSON, HTML) read the
//! records back one at a time ([`Cases::iter`]).

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::results::{CaseResult, Outcome};
use crate::spill;

/// What the totals need of a suite's cases, counted as they finish so that
/// no report reads the records just to count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub cases: usize,
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    pub flaky: usize,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub pending_snapshots: usize,
}

impl Tally {
    fn add(&mut self, c: &CaseResult) {
        self.cases += 1;
        match c.outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Errored => self.errored += 1,
        }
        self.flaky += usize::from(c.flaky);
        self.calls += c.calls;
        self.input_tokens += c.usage.input_tokens;
        self.output_tokens += c.usage.output_tokens;
        self.pending_snapshots += c.pending_snapshots.len();
    }
}

/// A suite's case records in suite order. Serialises as the list of
/// records (read back from the spill one at a time); deserialises into
/// memory.
#[derive(Clone)]
pub struct Cases(Repr);

#[derive(Clone)]
enum Repr {
    Memory(Vec<CaseResult>),
    Spilled(Arc<Spilled>),
}

struct Spilled {
    /// `None` when the file could not be finished (then `lost` says why).
    file: Option<File>,
    /// Each record's place in the file, in suite order.
    records: Vec<Entry>,
    tally: Tally,
    /// Why some records could not be written: every read says so rather
    /// than showing a suite with cases missing.
    lost: Option<String>,
}

impl Cases {
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Memory(v) => v.len(),
            Repr::Spilled(s) => s.tally.cases,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counts over every case.
    pub fn tally(&self) -> Tally {
        match &self.0 {
            Repr::Memory(v) => {
                let mut t = Tally::default();
                v.iter().for_each(|c| t.add(c));
                t
            }
            Repr::Spilled(s) => s.tally,
        }
    }

    /// Adds each case's cost to `sum`, in suite order (the order decides
    /// the last bits of a float sum, and the figures shown must not move).
    pub fn add_costs(&self, sum: &mut f64) {
        match &self.0 {
            Repr::Memory(v) => v.iter().for_each(|c| *sum += c.cost_usd),
            Repr::Spilled(s) => s.records.iter().for_each(|r| *sum += r.cost_usd),
        }
    }

    /// The records in suite order, read back one at a time from a spill.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            cases: self,
            next: 0,
            reader: spill::Reader::default(),
            failed: false,
        }
    }

    /// Every record in memory (`merge` joins shards' records this way).
    pub fn into_vec(self) -> io::Result<Vec<CaseResult>> {
        match self.0 {
            Repr::Memory(v) => Ok(v),
            Repr::Spilled(_) => self.iter().map(|c| c.map(Cow::into_owned)).collect(),
        }
    }
}

impl From<Vec<CaseResult>> for Cases {
    fn from(v: Vec<CaseResult>) -> Cases {
        Cases(Repr::Memory(v))
    }
}

impl Default for Cases {
    fn default() -> Cases {
        Cases::from(Vec::new())
    }
}

impl std::fmt::Debug for Cases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Memory(v) => f.debug_list().entries(v).finish(),
            Repr::Spilled(s) => write!(f, "Cases(spilled: {} records)", s.tally.cases),
        }
    }
}

impl PartialEq for Cases {
    /// Record by record; a record that cannot be read equals nothing.
    fn eq(&self, other: &Cases) -> bool {
        self.len() == other.len()
            && self.iter().zip(other.iter()).all(|(a, b)| match (a, b) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            })
    }
}

impl Serialize for Cases {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq as _};
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for c in self.iter() {
            seq.serialize_element(c.map_err(S::Error::custom)?.as_ref())?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Cases {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cases, D::Error> {
        Vec::<CaseResult>::deserialize(deserializer).map(Cases::from)
    }
}

/// The records of [`Cases::iter`]: borrowed from memory, or read back.
pub struct Iter<'a> {
    cases: &'a Cases,
    next: usize,
    reader: spill::Reader,
    /// After an error the iteration ends.
    failed: bool,
}

impl<'a> Iterator for Iter<'a> {
    type Item = io::Result<Cow<'a, CaseResult>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let at = self.next;
        self.next += 1;
        match &self.cases.0 {
            Repr::Memory(v) => v.get(at).map(|c| Ok(Cow::Borrowed(c))),
            Repr::Spilled(s) => {
                if let Some(why) = &s.lost {
                    self.failed = true;
                    return Some(Err(io::Error::other(format!(
                        "case results were lost on the way to a temporary file: {why}"
                    ))));
                }
                let offset = s.records.get(at)?.offset;
                let file = s.file.as_ref()?;
                let record = self.reader.read::<CaseResult>(file, offset);
                self.failed = record.is_err();
                Some(record.map(Cow::Owned))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.cases.len().saturating_sub(self.next);
        (0, Some(left))
    }
}

/// Where a record is, and the one figure the totals need that cannot be
/// counted in any order: its cost (totals add money case by case in suite
/// order, so the sums are the same to the last bit as summing the records
/// themselves). 24 bytes a case.
struct Entry {
    index: usize,
    offset: u64,
    cost_usd: f64,
}

/// Collects a suite's records as its cases finish, in any order.
pub struct CasesWriter {
    sink: Sink,
    tally: Tally,
}

enum Sink {
    /// No temporary file could be made: the records stay in memory, as
    /// before spilling (slower to fail than to lose a run's results).
    Memory(Vec<CaseResult>),
    Spill {
        out: spill::Writer,
        /// Per record, in the order written.
        entries: Vec<Entry>,
        lost: Option<String>,
    },
}

impl Default for CasesWriter {
    fn default() -> CasesWriter {
        CasesWriter::new()
    }
}

impl CasesWriter {
    /// A writer spilling to a new unnamed temporary file (deleted by the
    /// system when closed, even after a crash).
    pub fn new() -> CasesWriter {
        CasesWriter::with_capacity(0)
    }

    /// [`CasesWriter::new`] for about `cases` records.
    pub fn with_capacity(cases: usize) -> CasesWriter {
        let sink = match spill::Writer::new() {
            Ok(out) => Sink::Spill {
                out,
                entries: Vec::with_capacity(cases),
                lost: None,
            },
            Err(_) => Sink::Memory(Vec::new()),
        };
        CasesWriter {
            sink,
            tally: Tally::default(),
        }
    }

    /// A writer that keeps the records in memory (tests).
    pub fn in_memory() -> CasesWriter {
        CasesWriter {
            sink: Sink::Memory(Vec::new()),
            tally: Tally::default(),
        }
    }

    pub fn push(&mut self, case: CaseResult) {
        self.tally.add(&case);
        match &mut self.sink {
            Sink::Memory(v) => v.push(case),
            Sink::Spill { out, entries, lost } => {
                if lost.is_some() {
                    return;
                }
                match out.push(&case) {
                    Ok(offset) => entries.push(Entry {
                        index: case.index,
                        offset,
                        cost_usd: case.cost_usd,
                    }),
                    Err(e) => *lost = Some(e.to_string()),
                }
            }
        }
    }

    /// The records in suite order (by case index).
    pub fn finish(self) -> Cases {
        match self.sink {
            Sink::Memory(mut v) => {
                v.sort_by_key(|c| c.index);
                Cases::from(v)
            }
            Sink::Spill {
                out,
                mut entries,
                mut lost,
                ..
            } => {
                let file = match out.finish() {
                    Ok(f) => Some(f),
                    Err(e) => {
                        lost.get_or_insert_with(|| e.to_string());
                        None
                    }
                };
                entries.sort_unstable_by_key(|e| e.index);
                Cases(Repr::Spilled(Arc::new(Spilled {
                    file,
                    records: entries,
                    tally: self.tally,
                    lost,
                })))
            }
        }
    }
}
