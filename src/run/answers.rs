//! A step's output ([`Output`]): what its call answered, or a fan-out's
//! list of answers in item order — held in memory, or, for a large fan-out
//! whose output no other step reads, spilled: past [`super::IN_MEMORY`]
//! items each answer goes to a temporary file as it arrives, in any order
//! (`by_item`, the call reports' format and bounds), memory keeps 8 bytes an
//! item, and whatever prints or writes the output reads the answers back in
//! item order, one at a time, as it serialises them. At 100,000 items that
//! is 0.8 MB instead of the answers themselves (7.2 MB of short texts).
//!
//! A step another step reads is always held: the dispatcher hands its value
//! to the readers' templates, which need it whole anyway.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::IN_MEMORY;
use super::by_item::{ItemFile, ItemWriter, OPEN_FILES, OpenFiles};
use crate::spill;

/// A step's output. Serialises as the value it stands for: a spilled list
/// exactly as the held list of the same answers would (read back one answer
/// at a time; an answer that cannot be read back is a serialisation error).
#[derive(Clone, Debug)]
pub enum Output {
    Held(Value),
    Spilled(Answers),
}

impl Output {
    /// The value, when it is held.
    pub fn held(&self) -> Option<&Value> {
        match self {
            Output::Held(v) => Some(v),
            Output::Spilled(_) => None,
        }
    }

    /// The whole output as one value: a spilled list is read back whole,
    /// which takes the memory the spill saved — for what needs every answer
    /// at once (a test suite's checks), never for printing or writing it.
    pub fn value(&self) -> io::Result<Cow<'_, Value>> {
        match self {
            Output::Held(v) => Ok(Cow::Borrowed(v)),
            Output::Spilled(a) => Ok(Cow::Owned(Value::Array(
                a.iter().collect::<io::Result<_>>()?,
            ))),
        }
    }
}

impl From<Value> for Output {
    fn from(v: Value) -> Output {
        Output::Held(v)
    }
}

impl Serialize for Output {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Output::Held(v) => v.serialize(serializer),
            Output::Spilled(a) => a.serialize(serializer),
        }
    }
}

/// A fan-out's answers on disk, in item order. A clone shares the file.
#[derive(Clone)]
pub struct Answers(Arc<ItemFile>);

impl Answers {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answers in item order, read back one at a time; after an error
    /// the iteration ends.
    pub fn iter(&self) -> impl Iterator<Item = io::Result<Value>> + '_ {
        let mut reader = spill::Reader::default();
        let mut failed = false;
        (0..self.len()).map_while(move |n| {
            if failed {
                return None;
            }
            let answer = self.0.read::<Value>(&mut reader, n);
            failed = answer.is_err();
            Some(answer)
        })
    }
}

#[cfg(test)]
impl Answers {
    /// `len` answers of which none arrived: every read is an error.
    pub(crate) fn never_arrived(len: usize) -> Answers {
        let out = ItemWriter::new(len, "answers", &OPEN_FILES).expect("a spill file");
        Answers(Arc::new(out.finish()))
    }
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Answers(spilled: {})", self.len())
    }
}

impl Serialize for Answers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq as _};
        // The same calls `Value::Array` makes, so every format (compact,
        // pretty) writes the same bytes as for the held list.
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for answer in self.iter() {
            seq.serialize_element(&answer.map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

/// Collects a step's answers as its calls finish, in any order; each item
/// exactly once.
pub(super) struct AnswersWriter {
    fan_out: bool,
    store: Store,
}

enum Store {
    /// An answer per item (null until it arrives).
    Memory(Vec<Value>),
    Spill(ItemWriter),
}

impl AnswersWriter {
    /// A writer for `len` answers: spilled when the step is a fan-out of
    /// more than [`IN_MEMORY`] items whose output no step reads (`read`),
    /// else in memory (also when no spill file can be had:
    /// [`ItemWriter::new`]).
    pub(super) fn new(len: usize, fan_out: bool, read: bool) -> AnswersWriter {
        AnswersWriter::new_in(len, fan_out, read, &OPEN_FILES)
    }

    fn new_in(len: usize, fan_out: bool, read: bool, files: &'static OpenFiles) -> AnswersWriter {
        let spilled = (fan_out && !read && len > IN_MEMORY)
            .then(|| ItemWriter::new(len, "answers", files))
            .flatten();
        AnswersWriter {
            fan_out,
            store: match spilled {
                Some(out) => Store::Spill(out),
                None => Store::Memory(vec![Value::Null; len]),
            },
        }
    }

    /// Item `n`'s answer (`n` below the writer's length).
    pub(super) fn push(&mut self, n: usize, answer: Value) {
        match &mut self.store {
            Store::Memory(v) => v[n] = answer,
            Store::Spill(out) => out.push(n, &answer),
        }
    }

    /// The step's output: the list of answers for a fan-out, else its one
    /// call's answer.
    pub(super) fn finish(self) -> Output {
        match self.store {
            Store::Memory(v) if self.fan_out => Output::Held(Value::Array(v)),
            Store::Memory(v) => Output::Held(v.into_iter().next().unwrap_or(Value::Null)),
            Store::Spill(out) => Output::Spilled(Answers(Arc::new(out.finish()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Answers of every shape: key order, floats, escapes, nesting.
    fn answer(n: usize) -> Value {
        match n % 4 {
            0 => json!(format!("label {n}\n\"quoted\" é ✓ \u{1}")),
            1 => json!({"z": n, "a": [1.5, -0.0, 1e300], "m": {"y": null, "b": true}}),
            2 => json!(n as f64 / 7.0),
            _ => json!([]),
        }
    }

    fn written(len: usize, fan_out: bool, read: bool, files: &'static OpenFiles) -> Output {
        let mut w = AnswersWriter::new_in(len, fan_out, read, files);
        // Out of item order, as calls finish.
        for n in (0..len).rev() {
            w.push(n, answer(n));
        }
        w.finish()
    }

    #[test]
    fn spilled_answers_serialise_byte_for_byte_as_the_held_list() {
        static FILES: OpenFiles = OpenFiles::new(8);
        for len in [0, 1, IN_MEMORY, IN_MEMORY + 1, 1000] {
            let held = Value::Array((0..len).map(answer).collect());
            let out = written(len, true, false, &FILES);
            assert_eq!(matches!(out, Output::Spilled(_)), len > IN_MEMORY, "{len}");
            assert_eq!(
                serde_json::to_string(&out).unwrap(),
                serde_json::to_string(&held).unwrap()
            );
            assert_eq!(
                serde_json::to_string_pretty(&out).unwrap(),
                serde_json::to_string_pretty(&held).unwrap()
            );
            assert_eq!(out.value().unwrap().as_ref(), &held);
        }
    }

    #[test]
    fn a_read_or_single_call_step_is_held() {
        static FILES: OpenFiles = OpenFiles::new(8);
        let len = IN_MEMORY + 1;
        let read = written(len, true, true, &FILES);
        assert_eq!(
            read.held(),
            Some(&Value::Array((0..len).map(answer).collect()))
        );
        let single = written(1, false, false, &FILES);
        assert_eq!(single.held(), Some(&answer(0)));
    }

    #[test]
    fn past_the_open_files_ceiling_answers_stay_in_memory() {
        static ONE: OpenFiles = OpenFiles::new(1);
        let len = IN_MEMORY + 3;
        let a = written(len, true, false, &ONE);
        let b = written(len, true, false, &ONE);
        assert!(matches!(a, Output::Spilled(_)));
        assert!(b.held().is_some());
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    #[test]
    fn an_answer_that_never_arrived_is_an_error_when_read() {
        static FILES: OpenFiles = OpenFiles::new(8);
        let mut w = AnswersWriter::new_in(IN_MEMORY + 2, true, false, &FILES);
        for n in 1..IN_MEMORY + 2 {
            w.push(n, answer(n));
        }
        let out = w.finish();
        let e = serde_json::to_string(&out).unwrap_err();
        assert!(e.to_string().contains("never arrived"), "{e}");
        assert!(!e.is_io());
        assert!(out.value().is_err());
        let Output::Spilled(a) = &out else {
            panic!("spilled")
        };
        // One error, then the iteration ends.
        assert_eq!(a.iter().count(), 1);
    }
}
