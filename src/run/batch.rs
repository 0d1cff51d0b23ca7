//! Steps answered through the providers' batch APIs, at batch prices.
//!
//! A step goes through a batch when it says `latency: batch` (or the run
//! was started with `--batch`) and the model routing chose for it is on a
//! provider with a batch API (OpenAI, Anthropic). Other steps — local,
//! Gemini, OpenAI-compatible servers — run normally.
//!
//! **Split.** The step's calls (one per `for_each` item) go in consecutive
//! batches, each within what the provider takes ([`BatchApi::limits`]:
//! requests and serialised bytes; a larger batch is refused whole). The
//! calls are rendered a batch at a time from `Expanded::calls`, so memory
//! holds the requests and results of the batches in flight
//! ([`MAX_IN_FLIGHT`]), not the step's. Each batch is submitted, polled
//! every `batch_poll_interval` (progress events on each poll), then its
//! results mapped back by custom id (`item-<n>`, `n` the item's place in
//! the step). A request too large for any batch goes the synchronous
//! way, like every call the batch path does not take.
//!
//! **Failures fall back to the synchronous path.** An item that errored,
//! expired, was cancelled, is missing from the results, or whose answer
//! does not match the step's output schema is called again normally — with
//! the usual retries, schema retry, fallback chain and budget — and the
//! batch attempt is listed first among its attempts. So is every item of a
//! batch that could not be submitted, that failed as a whole, or whose
//! polling kept failing. A result is never lost to the batch path, only
//! its discount.
//!
//! **Resume.** Each submitted batch is written to a [`BatchLedger`] under
//! a key that hashes the provider and every request of its stretch of
//! items, before the first poll. The stretches are cut from every call of
//! the step — answered or not — by the sizes of their requests alone, so
//! the same items give the same stretches and keys in the next run. A run
//! that stops while batches are in flight (Ctrl-C, a crash) leaves them at
//! the provider; the next run with the same requests finds each in the
//! ledger and resumes polling instead of submitting (and paying for) it
//! again. An entry is removed once its results are fetched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cache::{
    cached, flagship_cost, prompt_cache, request_hash, request_texts, step_request,
};
use super::error::CallError;
use super::shared::Shared;
use super::validate::{InvalidOutput, parse_structured};
use super::{Attempt, AttemptOutcome, CallReport, CallSource, Event};
use crate::cost::{self, Billing};
use crate::journal::{BatchLedger, BatchRef, CallRecord};
use crate::policy::{CacheTtl, Model};
use crate::provider::batch::{BatchApi, BatchItem, BatchLimits, BatchState, ItemOutcome};
use crate::provider::{ErrorKind, ProviderError, Usage};
use crate::step::RenderedCall;
use crate::tokens;
use crate::workflow::Latency;

/// Batches of one step at the provider at once. A batch spends minutes to
/// hours queued and running there, so a second one submitted while the
/// first runs roughly halves a large step's wall time; more would add
/// little (the provider's enqueued-token quota is per organisation, shared
/// by all of them) while every batch in flight holds its requests and
/// results in memory — up to a whole batch's bytes each.
pub(super) const MAX_IN_FLIGHT: usize = 2;

/// Room kept for what wraps the requests (Anthropic's `{"requests":[…]}`),
/// so a batch of exactly the byte limit's worth of requests still fits.
const ENVELOPE_BYTES: u64 = 64;

/// Identifies a batch by what it asks: the provider and every item's
/// custom id and request. The same step with the same inputs gives the same
/// key in the next run; any change to a prompt, model or setting gives a
/// new one (and a new batch).
pub fn batch_key(provider: &str, items: &[BatchItem]) -> String {
    let mut key = BatchKey::new(provider);
    for item in items {
        key.add(item);
    }
    key.finish()
}

/// [`batch_key`] item by item, so a batch's key is known without holding
/// the requests of the items it leaves out.
struct BatchKey(Sha256);

impl BatchKey {
    fn new(provider: &str) -> BatchKey {
        let mut key = BatchKey(Sha256::new());
        key.field(provider.as_bytes());
        key
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn add(&mut self, item: &BatchItem) {
        let r = &item.request;
        self.field(item.custom_id.as_bytes());
        self.field(r.model.as_bytes());
        self.field(r.system.as_deref().unwrap_or("\u{0}none").as_bytes());
        for m in &r.messages {
            self.field(format!("{:?}", m.role).as_bytes());
            self.field(m.content.as_bytes());
        }
        self.field(&r.max_output_tokens.to_le_bytes());
        self.field(format!("{:?}", r.temperature).as_bytes());
        self.field(
            r.output_schema
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default()
                .as_bytes(),
        );
        self.field(format!("{:?}", r.stop).as_bytes());
        self.field(format!("{:?}", r.cache_system).as_bytes());
        // Only when set: batches recorded before the field existed keep
        // their identity.
        if let Some(prefix) = r.cache_prefix {
            self.field(format!("{prefix:?}").as_bytes());
        }
        if let Some(thinking) = r.reasoning {
            self.field(format!("{thinking:?}").as_bytes());
        }
    }

    fn finish(self) -> String {
        format!("{:x}", self.0.finalize())
    }
}

/// Where the next request goes: consecutive requests fill a batch until
/// one more would pass its request count or bytes.
#[derive(Debug)]
struct Chunker {
    max_requests: u64,
    max_bytes: u64,
    requests: u64,
    bytes: u64,
}

#[derive(Debug, PartialEq)]
enum Fit {
    /// Taken into the current batch.
    Taken,
    /// The current batch is full: start the next with this request.
    Full,
    /// Larger than a whole batch may be: never batched.
    Alone,
}

impl Chunker {
    fn new(limits: BatchLimits) -> Chunker {
        Chunker {
            max_requests: limits.max_requests.max(1),
            max_bytes: limits.max_bytes.saturating_sub(ENVELOPE_BYTES).max(1),
            requests: 0,
            bytes: 0,
        }
    }

    /// Offers a request of `size` bytes to the current batch.
    fn offer(&mut self, size: u64) -> Fit {
        if size > self.max_bytes {
            return Fit::Alone;
        }
        if self.requests >= self.max_requests || self.bytes + size > self.max_bytes {
            return Fit::Full;
        }
        self.requests += 1;
        self.bytes += size;
        Fit::Taken
    }

    /// Starts the next batch.
    fn next(&mut self) {
        self.requests = 0;
        self.bytes = 0;
    }
}

/// The batches requests of these sizes go in, as ranges of their indices
/// (a request larger than a batch is in none).
#[cfg(test)]
fn split(sizes: &[u64], limits: BatchLimits) -> Vec<std::ops::Range<usize>> {
    let mut chunker = Chunker::new(limits);
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let mut current: Option<std::ops::Range<usize>> = None;
    for (n, &size) in sizes.iter().enumerate() {
        let mut fit = chunker.offer(size);
        if fit == Fit::Full {
            out.extend(current.take());
            chunker.next();
            fit = chunker.offer(size);
        }
        if fit == Fit::Taken {
            let r = current.get_or_insert(n..n);
            r.end = n + 1;
        } else if let Some(r) = current.take() {
            // A request left out ends the range (ranges are contiguous);
            // the batch goes on after it.
            out.push(r);
        }
    }
    out.extend(current);
    out
}

/// What the batch path did with one call of a step.
enum Item {
    /// Answered by the batch.
    Done(CallReport, Value),
    /// Call it synchronously. The report holds what the batch did (its
    /// attempt, and the usage and cost of an answer that was rejected),
    /// to be merged into the synchronous call's report.
    Synchronous(CallReport),
    /// The call failed: its batch is at the provider (and billed) but its
    /// answers could not be fetched. Calling it again now would pay twice;
    /// `--resume` collects the batch later.
    Failed(CallReport, CallError),
}

impl Item {
    fn synchronous(
        model: &Model,
        outcome: AttemptOutcome,
        status: Option<u16>,
        message: String,
    ) -> Item {
        let mut report = CallReport::empty(None);
        report.attempts.push(Attempt {
            model: model.alias.clone(),
            outcome,
            status,
            message: Some(message),
            waited_ms: None,
        });
        Item::Synchronous(report)
    }
}

/// Where a call's final outcome goes as soon as it is known: the step's
/// collected reports and answers.
pub(super) type Settle<'s> = dyn FnMut(usize, (CallReport, Result<Value, CallError>)) + Send + 's;

/// What the batch path left to the synchronous path, by item.
#[derive(Default)]
pub(super) struct Batched {
    /// Items whose outcome was already settled (answered by a batch or
    /// the response cache, or failed with their batch stranded): one byte
    /// an item, where a report and answer each would be kilobytes.
    settled: Vec<bool>,
    /// Items a batch gave back, with what it did (usually few).
    again: HashMap<usize, CallReport>,
}

/// What to do with an item on the synchronous path.
pub(super) enum Taken {
    /// Nothing: the batch path settled it.
    Settled,
    /// Call it, after the batch's attempt.
    Again(Box<CallReport>),
    /// Call it (the batch path did not take it).
    Call,
}

impl Batched {
    pub(super) fn take(&mut self, n: usize) -> Taken {
        if self.settled.get(n).copied().unwrap_or(false) {
            return Taken::Settled;
        }
        match self.again.remove(&n) {
            Some(report) => Taken::Again(Box::new(report)),
            None => Taken::Call,
        }
    }

    fn put(&mut self, n: usize, item: Item, settle: &mut Settle<'_>) {
        let outcome = match item {
            Item::Synchronous(report) => {
                self.again.insert(n, report);
                return;
            }
            Item::Done(report, value) => (report, Ok(value)),
            Item::Failed(report, why) => (report, Err(why)),
        };
        if self.settled.len() <= n {
            self.settled.resize(n + 1, false);
        }
        self.settled[n] = true;
        settle(n, outcome);
    }
}

/// The step's calls through batches, or `None` when the step does not go
/// through one (not a batch step, or its model's provider has no batch
/// API): then every call runs normally. Each call a batch (or the response
/// cache) settles goes to `settle` as soon as it is known; what is left —
/// calls an earlier session of the run finished (the synchronous path
/// answers them from the journal), calls a batch gave back, calls after
/// one that could not be rendered — is the synchronous path's.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    sh: &Shared,
    step_id: &str,
    step: &crate::workflow::Step,
    fan_out: bool,
    expanded: &crate::step::Expanded,
    model: &Model,
    label: &crate::route::Label,
    settle: &mut Settle<'_>,
) -> Option<Batched> {
    let wanted = step.latency == Latency::Batch || sh.options.batch_all;
    // The gate (routing already chose a model that passes it); checked again
    // on every request right before the batch is submitted.
    if !wanted || !model.has_batch_api() || !crate::route::gate(&sh.policy, model, label.level) {
        return None;
    }
    let api = sh.providers.batchers.get(&model.provider)?;
    let b = BatchStep {
        sh,
        step_id,
        step,
        fan_out,
        model,
        label,
        api: api.as_ref(),
        validator: step
            .output_schema()
            .and_then(|s| jsonschema::validator_for(s).ok()),
    };
    let mut batched = Batched::default();
    let mut chunks = Chunks {
        calls: Box::new(expanded.calls().enumerate()),
        chunker: Chunker::new(b.api.limits()),
        carried: None,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut more = true;
    loop {
        while more && in_flight.len() < MAX_IN_FLIGHT {
            match b.next_chunk(&mut chunks, &mut batched, settle).await {
                Some(Some(chunk)) => in_flight.push(b.send(chunk)),
                // Every call of this stretch was answered already.
                Some(None) => {}
                None => more = false,
            }
        }
        let Some(results) = in_flight.next().await else {
            break;
        };
        for (n, item) in results {
            batched.put(n, item, settle);
        }
    }
    Some(batched)
}

/// A step's calls, numbered, rendered one at a time (`Expanded::calls`).
type Calls<'e> = Box<
    dyn Iterator<
            Item = (
                usize,
                Result<std::borrow::Cow<'e, RenderedCall>, crate::step::StepError>,
            ),
        > + Send
        + 'e,
>;

/// A step's calls as they are cut into batches.
struct Chunks<'e> {
    calls: Calls<'e>,
    chunker: Chunker,
    /// The call that did not fit the previous batch: the next one's first.
    carried: Option<Prepared>,
}

/// One call as a batch request and its size there.
struct Prepared {
    call: Call,
    item: BatchItem,
    size: u64,
}

/// What pricing and the journal need of a rendered call (which is not
/// kept once its request is built).
struct Call {
    n: usize,
    /// What it asks ([`crate::journal::prompt_hash`]).
    asked: String,
    /// Input tokens by the model's tokenizer (each item is counted once: a
    /// batch prices every item by its own size).
    tokens: u64,
    cache: Option<CacheTtl>,
}

/// One batch: its ledger key (over every call of its stretch) and the
/// calls of the stretch still to make, with their requests (`items[i]` is
/// `calls[i]`'s).
struct Chunk {
    key: String,
    items: Vec<BatchItem>,
    calls: Vec<Call>,
}

/// One batch step's calls.
struct BatchStep<'a> {
    sh: &'a Shared,
    step_id: &'a str,
    step: &'a crate::workflow::Step,
    /// The step has `for_each`: its calls are numbered items.
    fan_out: bool,
    model: &'a Model,
    label: &'a crate::route::Label,
    api: &'a dyn BatchApi,
    validator: Option<jsonschema::Validator>,
}

impl BatchStep<'_> {
    fn item_of(&self, n: usize) -> Option<usize> {
        self.fan_out.then_some(n)
    }

    /// Call `n` as a batch item (custom id `item-<n>`).
    fn prepare(&self, n: usize, c: &RenderedCall) -> Prepared {
        let item = BatchItem {
            custom_id: format!("item-{n}"),
            request: step_request(self.step, self.model, c),
        };
        Prepared {
            call: Call {
                n,
                asked: super::cache::asked(c),
                tokens: count(self.model, c),
                cache: prompt_cache(self.model, c.system.as_deref()),
            },
            size: self.api.encoded_len(&item),
            item,
        }
    }

    /// The next stretch of calls that fits one batch, and those of them
    /// still to make (`None` inside when there are none); `None` when the
    /// calls are exhausted — or one could not be rendered: batching stops
    /// there, and the synchronous path stops at the same error.
    async fn next_chunk(
        &self,
        chunks: &mut Chunks<'_>,
        batched: &mut Batched,
        settle: &mut Settle<'_>,
    ) -> Option<Option<Chunk>> {
        let mut key = BatchKey::new(&self.model.provider);
        let mut chunk = Chunk {
            key: String::new(),
            items: Vec::new(),
            calls: Vec::new(),
        };
        let mut any = false;
        chunks.chunker.next();
        loop {
            let next = match chunks.carried.take() {
                Some(next) => next,
                None => match chunks.calls.next() {
                    Some((n, Ok(c))) => self.prepare(n, &c),
                    // The end of the calls ends the last batch.
                    None if any => break,
                    None => return None,
                    // An unreadable call: the stretch so far is not sent
                    // (its calls go the synchronous way, up to the error).
                    Some((_, Err(_))) => return None,
                },
            };
            match chunks.chunker.offer(next.size) {
                Fit::Taken => {}
                Fit::Full => {
                    chunks.carried = Some(next);
                    break;
                }
                // Larger than any batch may be: called synchronously.
                Fit::Alone => continue,
            }
            any = true;
            // Every call of the stretch is in its key, answered or not, so
            // a resumed run finds the batch its first session submitted
            // whatever has finished since.
            key.add(&next.item);
            if self.finished(&next.call) {
                continue;
            }
            // The response cache first: an identical request answered
            // within its TTL (synchronously or by an earlier batch) costs
            // nothing and needs no place in a batch.
            if let Some(done) = self.cached_answer(&next.call, &next.item).await {
                batched.put(next.call.n, done, settle);
                continue;
            }
            chunk.items.push(next.item);
            chunk.calls.push(next.call);
        }
        chunk.key = key.finish();
        Some((!chunk.calls.is_empty()).then_some(chunk))
    }

    /// Finished in an earlier session, asked the same: answered from the
    /// journal on the synchronous path.
    fn finished(&self, call: &Call) -> bool {
        self.sh
            .finished
            .get(&(self.step_id.to_owned(), self.item_of(call.n)))
            .is_some_and(|d| d.prompt_hash.as_ref().is_none_or(|h| *h == call.asked))
    }

    fn output_of(&self, text: &str) -> Result<Value, InvalidOutput> {
        match &self.validator {
            None => Ok(Value::String(text.to_owned())),
            Some(v) => parse_structured(text, v),
        }
    }

    /// The journal record of `call` on this step's model (one attempt).
    fn record(&self, call: &Call, request_hash: Option<String>) -> CallRecord {
        let (sh, model) = (self.sh, self.model);
        CallRecord {
            step: self.step_id.to_owned(),
            item: self.item_of(call.n),
            attempt: 1,
            request_hash,
            prompt_hash: Some(call.asked.clone()),
            model: model.alias.clone(),
            provider: model.provider.clone(),
            provider_model: model.model.clone(),
            tier: model.tier.name().to_owned(),
            started_ms: sh.options.journal.as_ref().map_or(0, |j| j.journal.now()),
            estimate_usd: sh.call_estimates.get(self.step_id).copied().unwrap_or(0.0),
            ..CallRecord::default()
        }
    }

    /// `call` answered by the response cache, if an identical request's
    /// valid answer is there.
    async fn cached_answer(&self, call: &Call, item: &BatchItem) -> Option<Item> {
        let (sh, model) = (self.sh, self.model);
        let hash = sh
            .options
            .journal
            .as_ref()
            .map(|_| request_hash(sh, model, &item.request))?;
        let answer = cached(sh, &hash).await?;
        let v = self.output_of(&answer.text).ok()?;
        let mut report = CallReport::empty(self.item_of(call.n));
        report.source = CallSource::Cache;
        report.model = Some(model.alias.clone());
        report.saved_usd = answer.cost_usd;
        report.usage = answer.usage;
        report.attempts.push(Attempt {
            model: model.alias.clone(),
            outcome: AttemptOutcome::Cached,
            status: None,
            message: Some(format!("answer of run {}", answer.run_id)),
            waited_ms: None,
        });
        sh.journal_call(CallRecord {
            outcome: AttemptOutcome::Cached,
            usage: answer.usage,
            list_cost_usd: answer.cost_usd,
            saved_usd: answer.cost_usd,
            flagship_cost_usd: flagship_cost(sh, &answer.usage),
            from_cache: true,
            output: Some(v.clone()),
            ..self.record(call, Some(hash))
        })
        .await;
        Some(Item::Done(report, v))
    }

    /// A chunk's calls through one batch: the gate, the worst case
    /// reserved at batch prices, submitted (or resumed) and waited for,
    /// each answer mapped back; whatever the batch did not answer goes the
    /// synchronous way. What became of each call, by item.
    async fn send(&self, chunk: Chunk) -> Vec<(usize, Item)> {
        let (sh, model, label) = (self.sh, self.model, self.label);
        let Chunk { key, items, calls } = chunk;
        // Every call still to make to the synchronous path, with why.
        let sync_all = |outcome: AttemptOutcome, message: String| {
            calls
                .iter()
                .map(|c| {
                    let item = Item::synchronous(model, outcome, None, message.clone());
                    (c.n, item)
                })
                .collect()
        };
        // The gate at the provider boundary, on every request of the batch:
        // a refused batch is never submitted; its calls go the synchronous
        // way, where the same check refuses them one by one.
        if let Some(why) = items.iter().find_map(|it| {
            crate::route::admit(&sh.policy, model, label, &request_texts(&it.request)).err()
        }) {
            return sync_all(AttemptOutcome::Refused, why.to_string());
        }
        // The worst case of the whole batch, at batch prices, before submitting.
        // The answer plus any thinking budget (both billed as output).
        let max_out = u64::from(crate::reasoning::output_limit(self.step, model));
        let worst: f64 = calls
            .iter()
            .map(|c| cost::worst_case(&model.price, c.tokens, max_out, c.cache, Billing::Batch))
            .sum();
        let reservation = match sh.budget.reserve(worst).await {
            Ok(r) => r,
            // Each call then reserves (and may fit) on its own.
            Err(over) => {
                let why = format!(
                    "{}: the batch does not fit: {over}; calling one by one",
                    model.alias
                );
                return sync_all(AttemptOutcome::OverBudget, why);
            }
        };
        let started = Instant::now();
        let ledger = sh.options.batch_ledger.as_deref();
        let outcome =
            submit_and_wait(sh, self.step_id, model, self.api, &items, &key, ledger).await;
        let (batch_id, mut results) = match outcome {
            Ok(r) => r,
            // Nothing was billed: each call goes the synchronous way.
            Err(BatchError::NotRun(why)) => {
                sh.budget.settle(reservation, 0.0);
                return sync_all(AttemptOutcome::BatchFailed, why);
            }
            // Billed, or it may be, and the answers are out of reach for
            // now: the worst case stays on the budget and the calls fail, so
            // nothing is bought twice; the ledger keeps the batch for a
            // resume.
            Err(BatchError::Stranded(why)) => {
                sh.budget.settle(reservation, worst);
                return self.stranded(&calls, &why);
            }
        };
        let mut spent = 0.0;
        let mut out = Vec::with_capacity(calls.len());
        for (call, item) in calls.iter().zip(&items) {
            let (done, cost) = self
                .result(
                    call,
                    item,
                    results.remove(&item.custom_id),
                    &batch_id,
                    started,
                )
                .await;
            spent += cost;
            out.push((call.n, done));
        }
        sh.budget.settle(reservation, spent);
        // Only now, with every answer journaled: a run stopped while they
        // were being written resumes this batch instead of buying a new one.
        if let Some(l) = ledger {
            // Best effort: a stale entry only costs a poll of an ended batch.
            let _ = l.finished(&key);
        }
        out
    }

    /// Every call of a batch whose answers are out of reach fails (calling
    /// it again now would pay twice; `--resume` collects the batch later).
    fn stranded(&self, calls: &[Call], why: &str) -> Vec<(usize, Item)> {
        calls
            .iter()
            .map(|c| {
                let error = CallError::BatchStranded {
                    why: why.to_owned(),
                };
                let mut report = CallReport::empty(self.item_of(c.n));
                report.model = Some(self.model.alias.clone());
                report.batch = true;
                report.attempts.push(Attempt {
                    model: self.model.alias.clone(),
                    outcome: AttemptOutcome::BatchStranded,
                    status: None,
                    message: Some(error.to_string()),
                    waited_ms: None,
                });
                (c.n, Item::Failed(report, error))
            })
            .collect()
    }

    /// What the batch did with `call`, and what its answer cost.
    async fn result(
        &self,
        call: &Call,
        item: &BatchItem,
        outcome: Option<ItemOutcome>,
        batch_id: &str,
        started: Instant,
    ) -> (Item, f64) {
        let failed = |outcome: AttemptOutcome, status: Option<u16>, message: String| {
            let message = format!("batch {batch_id}: {message}");
            (Item::synchronous(self.model, outcome, status, message), 0.0)
        };
        let answer = match outcome {
            Some(ItemOutcome::Answer(resp)) => resp,
            Some(ItemOutcome::Failed(e)) => {
                return failed(AttemptOutcome::Error(e.kind), e.status, e.message);
            }
            Some(ItemOutcome::Expired) => {
                return failed(
                    AttemptOutcome::BatchExpired,
                    None,
                    "expired before it ran".into(),
                );
            }
            Some(ItemOutcome::Canceled) => {
                return failed(
                    AttemptOutcome::BatchCancelled,
                    None,
                    "cancelled before it ran".into(),
                );
            }
            None => {
                return failed(
                    AttemptOutcome::BatchMissing,
                    None,
                    format!("no result for {}", item.custom_id),
                );
            }
        };
        self.answered(call, item, answer, batch_id, started).await
    }

    /// An answer of the batch: charged at batch prices, journaled,
    /// validated; an invalid one is asked again synchronously.
    async fn answered(
        &self,
        call: &Call,
        item: &BatchItem,
        answer: crate::provider::ChatResponse,
        batch_id: &str,
        started: Instant,
    ) -> (Item, f64) {
        let (sh, model) = (self.sh, self.model);
        let reported = answer.usage.input_tokens > 0 || answer.usage.output_tokens > 0;
        let counted = call.tokens;
        let answer_tokens = model.tokenizer.count(&answer.text) as u64;
        let usage = if reported {
            answer.usage
        } else {
            // No usage reported: count it ourselves rather than pretend the
            // call was free.
            Usage {
                input_tokens: counted,
                output_tokens: answer_tokens + tokens::chat_overhead(1) as u64,
                ..Usage::default()
            }
        };
        // Judged and priced in the one place, at batch prices.
        let charged = cost::charge(
            &model.price,
            &cost::Asked {
                input_tokens: counted,
                max_output: u64::from(item.request.max_output_tokens),
                cache: call.cache,
                billing: Billing::Batch,
                answer_tokens,
            },
            usage,
            answer.cost_usd,
        );
        let (usage, cost) = (charged.usage, charged.cost);
        let value = self.output_of(&answer.text);
        let mut report = CallReport {
            item: self.item_of(call.n),
            source: CallSource::Provider,
            saved_usd: 0.0,
            model: Some(model.alias.clone()),
            attempts: vec![Attempt {
                model: model.alias.clone(),
                outcome: AttemptOutcome::Ok,
                status: Some(200),
                message: Some(format!("batch {batch_id}")),
                waited_ms: None,
            }],
            usage,
            cost_usd: cost,
            list_cost_usd: cost::list_cost(&model.price, &usage),
            batch: true,
            latency_ms: started.elapsed().as_millis() as u64,
            queued_ms: 0,
            call_ms: started.elapsed().as_millis() as u64,
            model_ms: started.elapsed().as_millis() as u64,
            ttft_ms: None,
            truncated: answer.truncated(),
            batch_fallback: false,
            lost_discount_usd: 0.0,
            escalation: None,
        };
        // Journaled before dependants can start, like every call: a resume
        // never pays for this answer again, and a valid one serves later
        // identical requests from the cache.
        let cacheable = value.is_ok() && !answer.truncated() && answer.ended_normally();
        let request_hash = sh
            .options
            .journal
            .as_ref()
            .map(|_| request_hash(sh, model, &item.request));
        sh.journal_call(CallRecord {
            latency_ms: report.latency_ms,
            outcome: if value.is_ok() {
                AttemptOutcome::Ok
            } else {
                AttemptOutcome::InvalidOutput
            },
            // The journal keeps the reason as the user reads it.
            error: value.as_ref().err().map(ToString::to_string),
            usage,
            cost_usd: cost,
            list_cost_usd: report.list_cost_usd,
            flagship_cost_usd: flagship_cost(sh, &usage),
            batch: true,
            cacheable,
            response: cacheable.then(|| answer.text.clone()),
            output: value.as_ref().ok().cloned(),
            usage_flag: charged.flag.clone(),
            ..self.record(call, request_hash)
        })
        .await;
        let item = match value {
            Ok(v) => Item::Done(report, v),
            Err(why) => {
                // Asked again synchronously (with its own schema retry);
                // what the batch answer cost stays on the bill.
                if let Some(a) = report.attempts.last_mut() {
                    a.outcome = AttemptOutcome::InvalidOutput;
                    a.message = Some(format!("batch {batch_id}: {why}"));
                }
                report.truncated = false;
                Item::Synchronous(report)
            }
        };
        (item, cost)
    }
}

/// Why a batch gave no results.
enum BatchError {
    /// Nothing was billed (the submit failed, or the provider rejected the
    /// batch as a whole): the calls can be made synchronously.
    NotRun(String),
    /// The batch was accepted, so it is (or will be) billed, but its state or
    /// results could not be fetched.
    Stranded(String),
}

/// Submits the batch (or resumes the one the ledger remembers for `key`)
/// and polls it to its end; returns the batch id and its results, or why
/// the batch path gave up.
async fn submit_and_wait(
    sh: &Shared,
    step_id: &str,
    model: &Model,
    api: &dyn BatchApi,
    items: &[BatchItem],
    key: &str,
    ledger: Option<&dyn BatchLedger>,
) -> Result<(String, HashMap<String, ItemOutcome>), BatchError> {
    let emit = |status: String, batch_id: &str, done: u64, total: u64| {
        sh.emit(Event::BatchProgress {
            step: step_id.to_owned(),
            provider: model.provider.clone(),
            batch_id: batch_id.to_owned(),
            status,
            done,
            total,
        });
    };
    let total = items.len() as u64;
    let mut resumed = ledger
        .and_then(|l| l.submitted(key))
        .filter(|b| b.provider == model.provider)
        .map(|b| b.id);
    loop {
        let was_resumed = resumed.is_some();
        let batch_id = match resumed.take() {
            Some(id) => {
                emit("resumed".to_owned(), &id, 0, total);
                id
            }
            None => {
                let id = api.submit(items).await.map_err(|e| {
                    BatchError::NotRun(format!(
                        "{}: submitting the batch: {}",
                        model.alias, e.message
                    ))
                })?;
                let note = match ledger.map(|l| {
                    l.record(
                        key,
                        &BatchRef {
                            provider: model.provider.clone(),
                            id: id.clone(),
                        },
                    )
                }) {
                    Some(Err(e)) => format!("submitted (not recorded for resume: {e})"),
                    _ => "submitted".to_owned(),
                };
                emit(note, &id, 0, total);
                id
            }
        };
        let stranded = |e: ProviderError| {
            BatchError::Stranded(format!("{}: batch {batch_id}: {}", model.alias, e.message))
        };
        match wait(sh, api, &batch_id, &emit).await {
            Ok(()) => {}
            // A remembered batch the provider no longer knows (deleted,
            // results expired): submit afresh.
            Err(Waited::Poll(e)) if e.kind == ErrorKind::NotFound && was_resumed => {
                if let Some(l) = ledger {
                    let _ = l.finished(key);
                }
                continue;
            }
            // Rejected as a whole (validation): nothing ran, nothing billed.
            Err(Waited::Rejected(message)) => {
                if let Some(l) = ledger {
                    let _ = l.finished(key);
                }
                return Err(BatchError::NotRun(format!(
                    "{}: batch {batch_id}: {message}",
                    model.alias
                )));
            }
            Err(Waited::Poll(e)) => return Err(stranded(e)),
        }
        // A download that breaks is tried again: the answers are paid for.
        let mut tries = 0;
        let results = loop {
            match api.results(&batch_id).await {
                Ok(r) => break r,
                Err(e) if e.is_retryable() && tries < MAX_FETCH_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(sh.options.batch_poll_interval).await;
                }
                Err(e) => return Err(stranded(e)),
            }
        };
        return Ok((batch_id, results));
    }
}

/// Retries of a broken results download before the batch is left for a
/// resume.
const MAX_FETCH_RETRIES: u32 = 5;

/// Why waiting for a batch ended without it ending.
enum Waited {
    /// The provider rejected the batch as a whole.
    Rejected(String),
    /// Its state could not be fetched.
    Poll(ProviderError),
}

/// Polls until the batch ends. Transient errors are retried on the poll
/// interval for as long as the run lasts (a batch is paid for: giving up
/// early would only strand it); a batch that failed as a whole is rejected.
async fn wait(
    sh: &Shared,
    api: &dyn BatchApi,
    batch_id: &str,
    emit: &(dyn Fn(String, &str, u64, u64) + Sync),
) -> Result<(), Waited> {
    let mut last: Option<(String, u64)> = None;
    loop {
        match api.poll(batch_id).await {
            Ok(BatchState::Ended { status }) => {
                emit(status, batch_id, 0, 0);
                return Ok(());
            }
            Ok(BatchState::Failed { message }) => return Err(Waited::Rejected(message)),
            Ok(BatchState::Running {
                status,
                done,
                total,
            }) => {
                // One event per change, not per poll.
                if last.as_ref() != Some(&(status.clone(), done)) {
                    emit(status.clone(), batch_id, done, total);
                    last = Some((status, done));
                }
            }
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(Waited::Poll(e)),
        }
        tokio::time::sleep(sh.options.batch_poll_interval).await;
    }
}

/// One batch call's input tokens by the model's tokenizer (each item is
/// counted once: a batch prices every item by its own size).
fn count(model: &Model, c: &RenderedCall) -> u64 {
    tokens::count_chat(model.tokenizer, &c.messages().collect::<Vec<_>>()) as u64
}

/// How long to wait between polls by default: batches take minutes to
/// hours, and polling faster only spends rate limit.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn items(prompt: &str) -> Vec<BatchItem> {
        vec![BatchItem {
            custom_id: "item-0".into(),
            request: crate::provider::ChatRequest::new("gpt-4o-mini", prompt),
        }]
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_requests: 50,
        max_bytes: 1000 + ENVELOPE_BYTES,
    };

    #[test]
    fn batches_are_cut_at_the_request_count() {
        assert_eq!(split(&[10; 120], LIMITS), [0..50, 50..100, 100..120]);
        assert_eq!(split(&[10; 100], LIMITS), [0..50, 50..100]);
        let one = std::ops::Range { start: 0, end: 3 };
        assert_eq!(split(&[10; 3], LIMITS), [one]);
        assert!(split(&[], LIMITS).is_empty());
    }

    #[test]
    fn batches_are_cut_at_the_byte_limit_and_a_request_too_large_is_left_out() {
        // 400 + 400 fit 1000 bytes; a third does not.
        assert_eq!(split(&[400; 5], LIMITS), [0..2, 2..4, 4..5]);
        // Exactly the limit fits.
        assert_eq!(split(&[600, 400, 1], LIMITS), [0..2, 2..3]);
        // A request larger than a whole batch is in none; the others go on.
        assert_eq!(split(&[10, 1001, 10, 10], LIMITS), [0..1, 2..4]);
        assert!(split(&[1001], LIMITS).is_empty());
    }

    #[test]
    fn every_request_is_in_one_batch_within_the_limits() {
        let sizes: Vec<u64> = (0..2000u64).map(|n| (n * 7919) % 1100 + 1).collect();
        let ranges = split(&sizes, LIMITS);
        let mut next = 0;
        for r in &ranges {
            // Consecutive, skipping only what no batch could hold.
            assert!(sizes[next..r.start].iter().all(|&s| s > 1000), "{r:?}");
            assert!(r.len() <= 50 && !r.is_empty());
            assert!(sizes[r.clone()].iter().sum::<u64>() <= 1000, "{r:?}");
            next = r.end;
        }
        assert!(sizes[next..].iter().all(|&s| s > 1000));
    }

    #[test]
    fn batch_keys_follow_the_requests() {
        let a = batch_key("openai", &items("Label: crash"));
        assert_eq!(a, batch_key("openai", &items("Label: crash")));
        assert_ne!(a, batch_key("openai", &items("Label: crash!")));
        assert_ne!(a, batch_key("other", &items("Label: crash")));
        let mut changed = items("Label: crash");
        changed[0].request.max_output_tokens = 5;
        assert_ne!(a, batch_key("openai", &changed));
    }
}
