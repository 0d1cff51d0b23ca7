//! A step's call reports ([`Calls`]) in item order, kept in memory for a
//! small step and spilled beyond [`IN_MEMORY`] calls: each report is written
//! as it arrives (in any order) to an unnamed temporary file
//! ([`crate::spill`]) and memory keeps 24 bytes an item (where it starts,
//! its cost and list cost), so a 100,000-item fan-out holds 2.4 MB of
//! reports, not the reports (about 50 MB with their attempts).
//!
//! Whatever the summaries need is counted as the reports arrive
//! ([`CallTally`]), so no report is read back to count; the money is summed
//! in item order (a float sum's last bits depend on the order, and the
//! figures shown must not move from run to run). The JSON report reads the
//! records back one at a time ([`Calls::iter`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use serde::Serialize;

use super::by_item::{ItemFile, ItemWriter, OPEN_FILES, OpenFiles};
use super::{AttemptOutcome, CallReport, CallSource, Escalation};
use crate::provider::Usage;
use crate::spill;

/// Up to this many calls a step keeps its reports in memory: small runs
/// (and tests) never touch a file.
pub const IN_MEMORY: usize = 256;

/// How many of a step's escalations (the first, in item order) are kept
/// whole for the summary, which shows ten at most.
pub const ESCALATIONS_KEPT: usize = 10;

/// What the summaries count over a step's calls, whatever their order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallTally {
    /// Answered from the response cache.
    pub cache_hits: u64,
    /// Answered by an earlier session of the run (`--resume`).
    pub resumed: u64,
    /// Calls answered by the providers this time: prompt-cache reads and
    /// writes.
    pub provider_cached_input_tokens: u64,
    pub provider_cache_write_tokens: u64,
    /// Sent to a provider (with an attempt): how many, and their time
    /// queued and in the provider's calls.
    pub sent: u64,
    pub sent_queued_ms: u64,
    pub sent_call_ms: u64,
    /// Answers stopped at `max_output_tokens`.
    pub truncated: u64,
    /// Calls whose first answer failed a cascade's check.
    pub escalated: u64,
    /// Of those, the calls the escalation target answered.
    pub escalations: u64,
    /// Calls whose last attempt ended with an invalid answer.
    pub invalid_answers: u64,
    /// Answered through a batch API.
    pub batched: u64,
    /// Meant for a batch, answered one by one.
    pub batch_fallbacks: u64,
    /// Calls per model alias that answered.
    pub by_model: BTreeMap<String, u64>,
}

impl CallTally {
    fn add(&mut self, c: &CallReport) {
        match c.source {
            CallSource::Cache => self.cache_hits += 1,
            CallSource::Journal => self.resumed += 1,
            CallSource::Provider => {
                self.provider_cached_input_tokens = self
                    .provider_cached_input_tokens
                    .saturating_add(c.usage.cached_input_tokens);
                self.provider_cache_write_tokens = self
                    .provider_cache_write_tokens
                    .saturating_add(c.usage.cache_write_tokens);
                if !c.attempts.is_empty() {
                    self.sent += 1;
                    self.sent_queued_ms = self.sent_queued_ms.saturating_add(c.queued_ms);
                    self.sent_call_ms = self.sent_call_ms.saturating_add(c.call_ms);
                }
            }
        }
        self.truncated += u64::from(c.truncated);
        self.escalated += u64::from(
            c.attempts
                .iter()
                .any(|a| a.outcome == AttemptOutcome::Escalated),
        );
        self.escalations += u64::from(c.escalation.is_some());
        self.invalid_answers += u64::from(
            c.attempts
                .last()
                .is_some_and(|a| a.outcome == AttemptOutcome::InvalidOutput),
        );
        self.batched += u64::from(c.batch);
        self.batch_fallbacks += u64::from(c.batch_fallback);
        if let Some(m) = &c.model {
            match self.by_model.get_mut(m) {
                Some(n) => *n += 1,
                None => {
                    self.by_model.insert(m.clone(), 1);
                }
            }
        }
    }
}

/// A step's totals over its calls, as summing the reports in item order
/// gives them.
#[derive(Debug, Clone, Default)]
pub(super) struct Totals {
    pub usage: Usage,
    pub cost_usd: f64,
    pub list_cost_usd: f64,
    pub queued_ms: u64,
    pub call_ms: u64,
    pub model_ms: u64,
    /// The first call's (in item order) that has one.
    pub ttft_ms: Option<u64>,
    /// The last call's (in item order) that has one.
    pub model: Option<String>,
}

/// A step's call reports in item order. Serialises as the list of reports
/// (read back from a spill one at a time).
#[derive(Clone, Default)]
pub struct Calls {
    len: usize,
    tally: CallTally,
    repr: Repr,
    /// Each call's `saved_usd` that is not +0.0, by item: the run's sum
    /// adds every call's in order, and adding +0.0 is not always a no-op
    /// (-0.0 + 0.0), so the zeros are put back when read.
    saved: Vec<(usize, f64)>,
    /// Each batch fallback's `lost_discount_usd`, by item.
    lost_discount: Vec<(usize, f64)>,
    /// The first [`ESCALATIONS_KEPT`] escalations: the item and what.
    escalations: Vec<(Option<usize>, Escalation)>,
}

#[derive(Clone)]
enum Repr {
    Memory(Vec<CallReport>),
    Spilled(Arc<ItemFile>),
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Memory(Vec::new())
    }
}

impl Calls {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The counts over every call.
    pub fn tally(&self) -> &CallTally {
        &self.tally
    }

    /// Every call's `saved_usd`, in item order.
    pub fn saved_usd(&self) -> impl Iterator<Item = f64> + '_ {
        let mut kept = self.saved.iter().peekable();
        (0..self.len).map(move |i| match kept.next_if(|(at, _)| *at == i) {
            Some((_, v)) => *v,
            None => 0.0,
        })
    }

    /// The `lost_discount_usd` of each call a batch gave back, in item
    /// order.
    pub fn lost_discount_usd(&self) -> impl Iterator<Item = f64> + '_ {
        self.lost_discount.iter().map(|(_, v)| *v)
    }

    /// The first escalations in item order (at most [`ESCALATIONS_KEPT`];
    /// [`CallTally::escalations`] counts them all): the item and what.
    pub fn escalations(&self) -> &[(Option<usize>, Escalation)] {
        &self.escalations
    }

    /// The reports in item order, read back one at a time from a spill.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            calls: self,
            next: 0,
            reader: spill::Reader::default(),
            failed: false,
        }
    }
}

impl From<Vec<CallReport>> for Calls {
    /// Reports already in item order.
    fn from(reports: Vec<CallReport>) -> Calls {
        let mut w = CallsWriter::in_memory(reports.len());
        for (n, c) in reports.into_iter().enumerate() {
            w.push(n, c);
        }
        w.finish().0
    }
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.repr {
            Repr::Memory(v) => f.debug_list().entries(v).finish(),
            Repr::Spilled(_) => write!(f, "Calls(spilled: {} reports)", self.len),
        }
    }
}

impl Serialize for Calls {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq as _};
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for c in self.iter() {
            seq.serialize_element(c.map_err(S::Error::custom)?.as_ref())?;
        }
        seq.end()
    }
}

/// The reports of [`Calls::iter`]: borrowed from memory, or read back.
pub struct Iter<'a> {
    calls: &'a Calls,
    next: usize,
    reader: spill::Reader,
    /// After an error the iteration ends.
    failed: bool,
}

impl<'a> Iterator for Iter<'a> {
    type Item = io::Result<Cow<'a, CallReport>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.calls.len {
            return None;
        }
        let at = self.next;
        self.next += 1;
        let record = match &self.calls.repr {
            Repr::Memory(v) => return v.get(at).map(|c| Ok(Cow::Borrowed(c))),
            Repr::Spilled(file) => file.read::<CallReport>(&mut self.reader, at),
        };
        self.failed = record.is_err();
        Some(record.map(Cow::Owned))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.calls.len.saturating_sub(self.next)))
    }
}

/// Collects a step's call reports as they finish, in any order; each item
/// exactly once.
pub(super) struct CallsWriter {
    store: Store,
    tally: CallTally,
    /// Each item's cost and list cost, summed in item order at the end.
    costs: Vec<(f64, f64)>,
    saved: Vec<(usize, f64)>,
    lost_discount: Vec<(usize, f64)>,
    /// The first escalations by item, [`ESCALATIONS_KEPT`] at most.
    escalations: BTreeMap<usize, (Option<usize>, Escalation)>,
    usage: Usage,
    queued_ms: u64,
    call_ms: u64,
    model_ms: u64,
    ttft: Option<(usize, u64)>,
    model: Option<(usize, String)>,
}

enum Store {
    /// A report per item, filled as they arrive.
    Memory(Vec<Option<CallReport>>),
    Spill(ItemWriter),
}

impl CallsWriter {
    /// A writer for `len` calls: in memory up to [`IN_MEMORY`], else to a
    /// temporary file (in memory after all if no file can be made, or too
    /// many are open: [`ItemWriter::new`]).
    pub(super) fn new(len: usize) -> CallsWriter {
        CallsWriter::new_in(len, &OPEN_FILES)
    }

    fn new_in(len: usize, files: &'static OpenFiles) -> CallsWriter {
        if len <= IN_MEMORY {
            return CallsWriter::in_memory(len);
        }
        match ItemWriter::new(len, "call reports", files) {
            Some(out) => CallsWriter::with(len, Store::Spill(out)),
            None => CallsWriter::in_memory(len),
        }
    }

    fn in_memory(len: usize) -> CallsWriter {
        CallsWriter::with(
            len,
            Store::Memory(std::iter::repeat_with(|| None).take(len).collect()),
        )
    }

    fn with(len: usize, store: Store) -> CallsWriter {
        CallsWriter {
            store,
            tally: CallTally::default(),
            costs: vec![(0.0, 0.0); len],
            saved: Vec::new(),
            lost_discount: Vec::new(),
            escalations: BTreeMap::new(),
            usage: Usage::default(),
            queued_ms: 0,
            call_ms: 0,
            model_ms: 0,
            ttft: None,
            model: None,
        }
    }

    /// Item `n`'s report (`n` below the writer's length).
    pub(super) fn push(&mut self, n: usize, c: CallReport) {
        self.tally.add(&c);
        self.costs[n] = (c.cost_usd, c.list_cost_usd);
        if c.saved_usd.to_bits() != 0 {
            self.saved.push((n, c.saved_usd));
        }
        if c.batch_fallback {
            self.lost_discount.push((n, c.lost_discount_usd));
        }
        if let Some(e) = &c.escalation {
            self.escalations.insert(n, (c.item, e.clone()));
            if self.escalations.len() > ESCALATIONS_KEPT {
                self.escalations.pop_last();
            }
        }
        self.usage += c.usage;
        self.queued_ms = self.queued_ms.saturating_add(c.queued_ms);
        self.call_ms = self.call_ms.saturating_add(c.call_ms);
        self.model_ms = self.model_ms.saturating_add(c.model_ms);
        if let Some(t) = c.ttft_ms
            && self.ttft.is_none_or(|(at, _)| n < at)
        {
            self.ttft = Some((n, t));
        }
        if let Some(m) = &c.model
            && self.model.as_ref().is_none_or(|(at, _)| n > *at)
        {
            self.model = Some((n, m.clone()));
        }
        match &mut self.store {
            Store::Memory(v) => v[n] = Some(c),
            Store::Spill(out) => out.push(n, &c),
        }
    }

    /// The reports in item order, and the step's totals over them.
    pub(super) fn finish(self) -> (Calls, Totals) {
        let mut totals = Totals {
            usage: self.usage,
            queued_ms: self.queued_ms,
            call_ms: self.call_ms,
            model_ms: self.model_ms,
            ttft_ms: self.ttft.map(|(_, t)| t),
            model: self.model.map(|(_, m)| m),
            ..Totals::default()
        };
        for (cost, list) in &self.costs {
            totals.cost_usd += cost;
            totals.list_cost_usd += list;
        }
        let len = self.costs.len();
        let repr = match self.store {
            Store::Memory(v) => Repr::Memory(v.into_iter().flatten().collect()),
            Store::Spill(out) => Repr::Spilled(Arc::new(out.finish())),
        };
        let mut saved = self.saved;
        saved.sort_unstable_by_key(|(n, _)| *n);
        let mut lost_discount = self.lost_discount;
        lost_discount.sort_unstable_by_key(|(n, _)| *n);
        let calls = Calls {
            len,
            tally: self.tally,
            repr,
            saved,
            lost_discount,
            escalations: self.escalations.into_values().collect(),
        };
        (calls, totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Attempt;

    fn report(n: usize) -> CallReport {
        let mut c = CallReport::empty(Some(n));
        c.model = Some(if n % 3 == 0 { "a" } else { "b" }.to_owned());
        c.cost_usd = 0.1 * (n % 7) as f64 + 1e-9 * n as f64;
        c.list_cost_usd = c.cost_usd * 1.5;
        c.usage.input_tokens = n as u64;
        c.queued_ms = 1;
        c.ttft_ms = (n % 5 == 4).then_some(n as u64);
        c.attempts.push(Attempt {
            model: "a".to_owned(),
            outcome: if n % 11 == 0 {
                AttemptOutcome::Escalated
            } else {
                AttemptOutcome::Ok
            },
            status: Some(200),
            message: Some(format!("line\nof {n}")),
            waited_ms: None,
        });
        if n % 11 == 0 {
            c.escalation = Some(Escalation {
                rule: "r".to_owned(),
                from: "a".to_owned(),
                to: "b".to_owned(),
                reason: format!("item {n}"),
            });
        }
        if n % 13 == 0 {
            c.source = CallSource::Cache;
            c.saved_usd = 0.3 + n as f64 * 1e-7;
        }
        if n % 17 == 0 {
            c.batch = true;
            c.batch_fallback = true;
            c.lost_discount_usd = 0.01 + n as f64 * 3e-9;
        }
        c.truncated = n % 19 == 0;
        c.latency_ms = n as u64;
        c.usage.cache_write_1h_tokens = (n % 3) as u64;
        c
    }

    /// Out of order in, item order out: the same reports, counts and
    /// totals whether they stayed in memory or went to a file.
    #[test]
    fn spilled_reports_read_back_in_item_order_with_the_same_totals() {
        for len in [3, IN_MEMORY, IN_MEMORY + 1, 2000] {
            let order: Vec<usize> = (0..len).map(|i| (i * 7919) % len).collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let order = if sorted.len() == len {
                order
            } else {
                (0..len).rev().collect()
            };
            let mut w = CallsWriter::new(len);
            for &n in &order {
                w.push(n, report(n));
            }
            let (calls, totals) = w.finish();
            assert_eq!(calls.len(), len);
            let back: Vec<CallReport> = calls.iter().map(|c| c.unwrap().into_owned()).collect();
            let items: Vec<Option<usize>> = back.iter().map(|c| c.item).collect();
            assert_eq!(items, (0..len).map(Some).collect::<Vec<_>>());
            // What summing the reports in item order gives, exactly.
            let expected: Vec<CallReport> = (0..len).map(report).collect();
            let (mut cost, mut list) = (0.0, 0.0);
            for c in &expected {
                cost += c.cost_usd;
                list += c.list_cost_usd;
            }
            assert_eq!(totals.cost_usd.to_bits(), cost.to_bits());
            assert_eq!(totals.list_cost_usd.to_bits(), list.to_bits());
            assert_eq!(totals.usage.input_tokens, (0..len as u64).sum::<u64>());
            assert_eq!(totals.ttft_ms, expected.iter().find_map(|c| c.ttft_ms));
            assert_eq!(totals.model, expected.last().and_then(|c| c.model.clone()));
            let saved: f64 = calls.saved_usd().sum();
            let want: f64 = expected.iter().map(|c| c.saved_usd).sum();
            assert_eq!(saved.to_bits(), want.to_bits());
            assert_eq!(calls.saved_usd().count(), len);
            let lost: f64 = calls.lost_discount_usd().sum();
            let want: f64 = expected
                .iter()
                .filter(|c| c.batch_fallback)
                .map(|c| c.lost_discount_usd)
                .sum();
            assert_eq!(lost.to_bits(), want.to_bits());
            let t = calls.tally();
            assert_eq!(
                t.cache_hits,
                expected
                    .iter()
                    .filter(|c| c.source == CallSource::Cache)
                    .count() as u64
            );
            assert_eq!(t.escalations, len.div_ceil(11) as u64);
            assert_eq!(t.escalated, t.escalations);
            assert_eq!(t.by_model.values().sum::<u64>(), len as u64);
            assert_eq!(t.truncated, len.div_ceil(19) as u64);
            assert_eq!(t.batch_fallbacks, len.div_ceil(17) as u64);
            let shown: Vec<Option<usize>> = calls.escalations().iter().map(|(i, _)| *i).collect();
            let want: Vec<Option<usize>> = (0..len)
                .filter(|n| n % 11 == 0)
                .take(ESCALATIONS_KEPT)
                .map(Some)
                .collect();
            assert_eq!(shown, want);
            // The JSON is the list of the reports, as a Vec serialises it.
            assert_eq!(
                serde_json::to_string(&calls).unwrap(),
                serde_json::to_string(&expected).unwrap()
            );
            assert_eq!(
                matches!(calls.repr, Repr::Spilled(_)),
                len > IN_MEMORY,
                "{len} calls"
            );
        }
    }

    /// Past the ceiling of open files a step keeps its reports in memory,
    /// and a file closed makes room again.
    #[test]
    fn past_the_open_files_ceiling_reports_stay_in_memory() {
        static TWO: OpenFiles = OpenFiles::new(2);
        let spilled = |c: &Calls| matches!(c.repr, Repr::Spilled(_));
        let len = IN_MEMORY + 5;
        let finish = |mut w: CallsWriter| {
            for n in 0..len {
                w.push(n, report(n));
            }
            w.finish().0
        };
        let a = finish(CallsWriter::new_in(len, &TWO));
        let b = finish(CallsWriter::new_in(len, &TWO));
        let c = finish(CallsWriter::new_in(len, &TWO));
        assert_eq!((spilled(&a), spilled(&b), spilled(&c)), (true, true, false));
        // The same reports either way.
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            serde_json::to_string(&c).unwrap()
        );
        // A clone shares the file: the slot is given back with the last.
        let a2 = a.clone();
        drop(a);
        assert!(!spilled(&finish(CallsWriter::new_in(len, &TWO))));
        drop(a2);
        assert!(spilled(&finish(CallsWriter::new_in(len, &TWO))));
    }

    #[test]
    fn a_report_that_never_arrived_is_an_error_when_read() {
        let mut w = CallsWriter::new(IN_MEMORY + 2);
        for n in 0..=IN_MEMORY {
            w.push(n, report(n));
        }
        let (calls, _) = w.finish();
        let e = calls.iter().find_map(Result::err).expect("an error");
        assert!(e.to_string().contains("never arrived"), "{e}");
        assert!(serde_json::to_string(&calls).is_err());
    }

    #[test]
    fn no_calls_serialise_as_an_empty_list() {
        assert_eq!(serde_json::to_string(&Calls::default()).unwrap(), "[]");
        let one = Calls::from(vec![report(4)]);
        assert_eq!(one.tally().by_model.get("b"), Some(&1));
        assert_eq!(one.saved_usd().collect::<Vec<_>>(), [0.0]);
    }
}
