//! Steps answered through the providers' batch APIs, at batch prices.
//!
//! A step goes through a batch when it says `latency: batch` (or the run
//! was started with `--batch`) and the model routing chose for it is on a
//! provider with a batch API (OpenAI, Anthropic). Other steps — local,
//! Gemini, OpenAI-compatible servers — run normally.
//!
//! All calls of the step (one per `for_each` item) go into one batch:
//! submitted, polled every `batch_poll_interval` (progress events on each
//! poll), then its results mapped back by custom id (`item-<n>`).
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
//! a key that hashes the provider and every request in it, before the
//! first poll. A run that stops while a batch is in flight (Ctrl-C, a
//! crash) leaves the batch at the provider; the next run with the same
//! requests finds it in the ledger and resumes polling instead of
//! submitting (and paying for) it again. The entry is removed once the
//! results are fetched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
use crate::policy::Model;
use crate::provider::batch::{BatchApi, BatchItem, BatchState, ItemOutcome};
use crate::provider::{ErrorKind, ProviderError, Usage};
use crate::step::RenderedCall;
use crate::tokens;
use crate::workflow::Latency;

/// Identifies a batch by what it asks: the provider and every item's
/// custom id and request. The same step with the same inputs gives the same
/// key in the next run; any change to a prompt, model or setting gives a
/// new one (and a new batch).
pub fn batch_key(provider: &str, items: &[BatchItem]) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(provider.as_bytes());
    for item in items {
        let r = &item.request;
        field(item.custom_id.as_bytes());
        field(r.model.as_bytes());
        field(r.system.as_deref().unwrap_or("\u{0}none").as_bytes());
        for m in &r.messages {
            field(format!("{:?}", m.role).as_bytes());
            field(m.content.as_bytes());
        }
        field(&r.max_output_tokens.to_le_bytes());
        field(format!("{:?}", r.temperature).as_bytes());
        field(
            r.output_schema
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default()
                .as_bytes(),
        );
        field(format!("{:?}", r.stop).as_bytes());
        field(format!("{:?}", r.cache_system).as_bytes());
        // Only when set: batches recorded before the field existed keep
        // their identity.
        if let Some(prefix) = r.cache_prefix {
            field(format!("{prefix:?}").as_bytes());
        }
        if let Some(thinking) = r.reasoning {
            field(format!("{thinking:?}").as_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// What the batch path did with one call of a step.
pub(super) enum Item {
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

/// The step's calls through a batch, or `None` when the step does not go
/// through one (not a batch step, or its model's provider has no batch
/// API): then every call runs normally. Calls an earlier session of the run
/// finished are left out of the batch (`None` in their place): the
/// synchronous path answers them from the journal.
pub(super) async fn run(
    sh: &Shared,
    step_id: &str,
    step: &crate::workflow::Step,
    fan_out: bool,
    expanded: &crate::step::Expanded,
    model: &Model,
    label: &crate::route::Label,
) -> Option<Vec<Option<Item>>> {
    let wanted = step.latency == Latency::Batch || sh.options.batch_all;
    // The gate (routing already chose a model that passes it); checked again
    // on every request right before the batch is submitted.
    if !wanted || !model.has_batch_api() || !crate::route::gate(&sh.policy, model, label.level) {
        return None;
    }
    let api = sh.providers.batchers.get(&model.provider)?;
    // A batch holds every request at once (it is sent as one file), so its
    // calls are rendered all together here.
    // A streamed list that cannot be read again goes the synchronous way,
    // which stops at the same error before any call.
    let rendered: Vec<RenderedCall> = expanded
        .calls()
        .map(|c| c.map(std::borrow::Cow::into_owned))
        .collect::<Result<_, _>>()
        .ok()?;
    let rendered = rendered.as_slice();
    let b = BatchStep {
        sh,
        step_id,
        step,
        fan_out,
        rendered,
        model,
        validator: step
            .output_schema()
            .and_then(|s| jsonschema::validator_for(s).ok()),
    };
    // Indices of the calls still to make; a resumed run batches only those.
    let pending: Vec<usize> = (0..rendered.len())
        .filter(|&n| {
            // Finished in an earlier session, asked the same: answered from
            // the journal on the synchronous path.
            sh.finished
                .get(&(step_id.to_owned(), b.item_of(n)))
                .is_none_or(|d| d.prompt_hash.as_ref().is_some_and(|h| *h != b.asked(n)))
        })
        .collect();
    if pending.is_empty() {
        return None;
    }
    // The ledger key covers every call of the step, so a resumed run finds
    // the batch its first session submitted whatever has finished since.
    let key = batch_key(
        &model.provider,
        &(0..rendered.len()).map(|n| b.item(n)).collect::<Vec<_>>(),
    );
    let mut out: Vec<Option<Item>> = (0..rendered.len()).map(|_| None).collect();
    // The response cache first: an identical request answered within its
    // TTL (synchronously or by an earlier batch) costs nothing and needs no
    // place in a batch.
    let mut to_send = Vec::with_capacity(pending.len());
    for n in pending {
        match b.cached_answer(n).await {
            Some(done) => out[n] = Some(done),
            None => to_send.push(n),
        }
    }
    if !to_send.is_empty() {
        b.send(api.as_ref(), &key, &to_send, label, &mut out).await;
    }
    Some(out)
}

/// One batch step's calls.
struct BatchStep<'a> {
    sh: &'a Shared,
    step_id: &'a str,
    step: &'a crate::workflow::Step,
    /// The step has `for_each`: its calls are numbered items.
    fan_out: bool,
    rendered: &'a [RenderedCall],
    model: &'a Model,
    validator: Option<jsonschema::Validator>,
}

impl BatchStep<'_> {
    fn item_of(&self, n: usize) -> Option<usize> {
        self.fan_out.then_some(n)
    }

    /// What call `n` asks (see [`crate::journal::prompt_hash`]).
    fn asked(&self, n: usize) -> String {
        let c = &self.rendered[n];
        super::cache::asked(c)
    }

    /// Call `n` as a batch item (custom id `item-<n>`).
    fn item(&self, n: usize) -> BatchItem {
        let c = &self.rendered[n];
        BatchItem {
            custom_id: format!("item-{n}"),
            request: step_request(self.step, self.model, c),
        }
    }

    fn output_of(&self, text: &str) -> Result<Value, InvalidOutput> {
        match &self.validator {
            None => Ok(Value::String(text.to_owned())),
            Some(v) => parse_structured(text, v),
        }
    }

    /// The journal record of call `n` on this step's model (one attempt).
    fn record(&self, n: usize, request_hash: Option<String>) -> CallRecord {
        let (sh, model) = (self.sh, self.model);
        CallRecord {
            step: self.step_id.to_owned(),
            item: self.item_of(n),
            attempt: 1,
            request_hash,
            prompt_hash: Some(self.asked(n)),
            model: model.alias.clone(),
            provider: model.provider.clone(),
            provider_model: model.model.clone(),
            tier: model.tier.name().to_owned(),
            started_ms: sh.options.journal.as_ref().map_or(0, |j| j.journal.now()),
            estimate_usd: sh.call_estimates.get(self.step_id).copied().unwrap_or(0.0),
            ..CallRecord::default()
        }
    }

    /// Call `n` answered by the response cache, if an identical request's
    /// valid answer is there.
    async fn cached_answer(&self, n: usize) -> Option<Item> {
        let (sh, model) = (self.sh, self.model);
        let hash = sh
            .options
            .journal
            .as_ref()
            .map(|_| request_hash(sh, model, &self.item(n).request))?;
        let answer = cached(sh, &hash).await?;
        let v = self.output_of(&answer.text).ok()?;
        let mut report = CallReport::empty(self.item_of(n));
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
            ..self.record(n, Some(hash))
        })
        .await;
        Some(Item::Done(report, v))
    }

    /// Calls `pending` through one batch: the gate, the worst case reserved
    /// at batch prices, submitted (or resumed) and waited for, each answer
    /// mapped back; whatever the batch did not answer goes the synchronous
    /// way.
    async fn send(
        &self,
        api: &dyn BatchApi,
        key: &str,
        pending: &[usize],
        label: &crate::route::Label,
        out: &mut [Option<Item>],
    ) {
        let (sh, model) = (self.sh, self.model);
        let items: Vec<BatchItem> = pending.iter().map(|&n| self.item(n)).collect();
        // Every call still to make to the synchronous path, with why.
        let sync_all = |out: &mut [Option<Item>], outcome: AttemptOutcome, message: String| {
            for &n in pending {
                out[n] = Some(Item::synchronous(model, outcome, None, message.clone()));
            }
        };
        // The gate at the provider boundary, on every request of the batch:
        // a refused batch is never submitted; its calls go the synchronous
        // way, where the same check refuses them one by one.
        if let Some(why) = items.iter().find_map(|it| {
            crate::route::admit(&sh.policy, model, label, &request_texts(&it.request)).err()
        }) {
            return sync_all(out, AttemptOutcome::Refused, why.to_string());
        }
        // The worst case of the whole batch, at batch prices, before submitting.
        // The answer plus any thinking budget (both billed as output).
        let max_out = u64::from(crate::reasoning::output_limit(self.step, model));
        let worst: f64 = pending
            .iter()
            .map(|&n| &self.rendered[n])
            .map(|c| {
                cost::worst_case(
                    &model.price,
                    count(model, c),
                    max_out,
                    prompt_cache(model, c.system.as_deref()),
                    Billing::Batch,
                )
            })
            .sum();
        let reservation = match sh.budget.reserve(worst).await {
            Ok(r) => r,
            // Each call then reserves (and may fit) on its own.
            Err(over) => {
                let why = format!(
                    "{}: the batch does not fit: {over}; calling one by one",
                    model.alias
                );
                return sync_all(out, AttemptOutcome::OverBudget, why);
            }
        };
        let started = Instant::now();
        let ledger = sh.options.batch_ledger.as_deref();
        let outcome = submit_and_wait(sh, self.step_id, model, api, &items, key, ledger).await;
        let (batch_id, mut results) = match outcome {
            Ok(r) => r,
            // Nothing was billed: each call goes the synchronous way.
            Err(BatchError::NotRun(why)) => {
                sh.budget.settle(reservation, 0.0);
                return sync_all(out, AttemptOutcome::BatchFailed, why);
            }
            // Billed, or it may be, and the answers are out of reach for
            // now: the worst case stays on the budget and the calls fail, so
            // nothing is bought twice; the ledger keeps the batch for a
            // resume.
            Err(BatchError::Stranded(why)) => {
                sh.budget.settle(reservation, worst);
                return self.stranded(pending, &why, out);
            }
        };
        let mut spent = 0.0;
        for (&n, item) in pending.iter().zip(&items) {
            let (done, cost) = self
                .result(n, item, results.remove(&item.custom_id), &batch_id, started)
                .await;
            spent += cost;
            out[n] = Some(done);
        }
        sh.budget.settle(reservation, spent);
        // Only now, with every answer journaled: a run stopped while they
        // were being written resumes this batch instead of buying a new one.
        if let Some(l) = ledger {
            // Best effort: a stale entry only costs a poll of an ended batch.
            let _ = l.finished(key);
        }
    }

    /// Every call of a batch whose answers are out of reach fails (calling
    /// it again now would pay twice; `--resume` collects the batch later).
    fn stranded(&self, pending: &[usize], why: &str, out: &mut [Option<Item>]) {
        for &n in pending {
            let error = CallError::BatchStranded {
                why: why.to_owned(),
            };
            let mut report = CallReport::empty(self.item_of(n));
            report.model = Some(self.model.alias.clone());
            report.batch = true;
            report.attempts.push(Attempt {
                model: self.model.alias.clone(),
                outcome: AttemptOutcome::BatchStranded,
                status: None,
                message: Some(error.to_string()),
                waited_ms: None,
            });
            out[n] = Some(Item::Failed(report, error));
        }
    }

    /// What the batch did with call `n`, and what its answer cost.
    async fn result(
        &self,
        n: usize,
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
        self.answered(n, item, answer, batch_id, started).await
    }

    /// An answer of the batch: charged at batch prices, journaled,
    /// validated; an invalid one is asked again synchronously.
    async fn answered(
        &self,
        n: usize,
        item: &BatchItem,
        answer: crate::provider::ChatResponse,
        batch_id: &str,
        started: Instant,
    ) -> (Item, f64) {
        let (sh, model) = (self.sh, self.model);
        let c = &self.rendered[n];
        let reported = answer.usage.input_tokens > 0 || answer.usage.output_tokens > 0;
        let counted = count(model, c);
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
                cache: prompt_cache(model, c.system.as_deref()),
                billing: Billing::Batch,
                answer_tokens,
            },
            usage,
            answer.cost_usd,
        );
        let (usage, cost) = (charged.usage, charged.cost);
        let value = self.output_of(&answer.text);
        let mut report = CallReport {
            item: self.item_of(n),
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
            ..self.record(n, request_hash)
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
