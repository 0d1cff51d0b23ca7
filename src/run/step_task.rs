//! One step of a run: expanded by [`crate::step::expand`] with the real
//! upstream outputs (the function `plan` calls with estimates), routed with
//! the real prompt, then its calls — through the provider's batch API when
//! the step asks for it, and one by one for the rest — gathered into the
//! step's report.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Map, Value};

use super::answers::AnswersWriter;
use super::call::{StepCalls, call_with_fallbacks};
use super::calls::CallsWriter;
use super::cascade::Check;
use super::error::CallError;
use super::shared::Shared;
use super::{CallReport, Event, StepReport, StepStatus, batch};
use crate::cost;
use crate::route::{self, Decision, Facts};
use crate::step::{self, Expanded, RULE_TOKENIZER, Upstream, When};
use crate::workflow::Step;

/// Runs one step: its meaning from [`step::expand`], routing, the calls.
pub(super) async fn run_step(
    sh: Arc<Shared>,
    i: usize,
    upstream: Map<String, Value>,
) -> StepReport {
    let (id, info) = sh.analysis.steps.get_index(i).expect("step index");
    let step = &sh.analysis.workflow.value.steps[id];
    let fail = |detail: String| {
        let mut r = StepReport::new(id, StepStatus::Failed, Some(detail));
        r.ignored_failure = step.continue_on_error;
        r
    };
    // Dependencies are settled by the dispatcher: a step task starts only
    // when every one succeeded (or failed with `continue_on_error`).
    let expand = || {
        step::expand(
            &step::Scope {
                analysis: &sh.analysis,
                policy: &sh.policy,
                index: i,
                inputs: &sh.inputs,
                files: &sh.files,
                streams: &sh.streams,
                levels: &sh.levels,
                upstream: Upstream::Real(&upstream),
            },
            When::Runs,
        )
    };
    // Expanding renders every call once: seconds of CPU and file reads for
    // a streamed list of millions of items. Then, on the run's multi-thread
    // runtime, the worker hands its other tasks (other steps' calls) to the
    // rest while it does (`block_in_place` is refused on a one-thread
    // runtime). Only then: it moves the worker to a new thread, and a suite
    // doing that for each of 10,000 small cases grew the process by a
    // malloc arena per new thread (`mem-test` 100k: 51 MB against 36).
    let streamed = info
        .streamed
        .as_ref()
        .is_some_and(|name| sh.streams.contains_key(name));
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let expanded = if streamed && multi_thread {
        tokio::task::block_in_place(expand)
    } else {
        expand()
    };
    let expanded = match expanded {
        Ok(e) => e,
        Err(e) => return fail(e.message(sh.analysis.doc())),
    };
    if let When::Skipped(why) = &expanded.when {
        return StepReport::new(id, StepStatus::Skipped, Some(why.clone()));
    }
    // Route with the real prompt: the same pure function as `plan`.
    let facts = expanded.facts(step, expanded.max_tokens(RULE_TOKENIZER));
    let decision = route_calls(&sh, id, &facts, &expanded);
    // The rule's name (or "pinned") — the summary's RULE column.
    let rule = decision.decider.as_ref().map(|d| match d {
        route::Decider::Rule { name, .. } => name.clone(),
        route::Decider::Pin { .. } => "pinned".to_owned(),
    });
    let Some(chain) = fallback_chain(&sh, &decision) else {
        let why: Vec<String> = decision
            .passed_over
            .iter()
            .map(|r| format!("{}: {}", r.model, r.why))
            .collect();
        let mut r = fail(format!(
            "no model can serve this step now: {}",
            why.join("; ")
        ));
        r.rule = rule;
        return r;
    };
    sh.emit(Event::StepStarted {
        step: id.clone(),
        model: chain[0].clone(),
        calls: expanded.len(),
    });
    // The label the requests carry to the provider boundary: the level of
    // what was actually rendered into them.
    let label = route::Label {
        level: expanded.rendered_level,
        withheld: Arc::clone(&sh.withheld),
    };
    let ctx = StepCalls {
        sh: &sh,
        step_id: id,
        step,
        fan_out: info.for_each.is_some(),
        chain: &chain,
        facts: &facts,
        label: &label,
        expanded: &expanded,
        cascade: cascade_of(&sh, &decision),
    };
    let started = Instant::now();
    let mut collected = Collected::new(&sh, id, info.for_each.is_some(), expanded.len());
    let unread = make_calls(&ctx, &mut collected).await;
    let mut report = gather(&sh, id, step, collected);
    if let Err(e) = unread {
        // The calls made before it keep their reports (and their cost).
        report.status = StepStatus::Failed;
        report.output = None;
        report.detail = Some(e.message(sh.analysis.doc()));
        report.ignored_failure = step.continue_on_error;
    }
    report.rule = rule;
    report.latency_ms = started.elapsed().as_millis() as u64;
    if let (1, Some(call)) = (expanded.len(), expanded.first()) {
        report.router_text = Some(crate::router::text(call.messages()));
    }
    report
}

/// Routes the step's calls, taking them from the run's tier usage. A
/// fan-out whose size the plan did not know corrects the run's total.
fn route_calls(sh: &Shared, id: &str, facts: &Facts<'_>, expanded: &Expanded) -> Decision {
    let mut usage = sh.tiers.lock().unwrap_or_else(|e| e.into_inner());
    let planned = sh.planned_calls.get(id).copied().unwrap_or(0);
    usage.total_calls = (usage.total_calls + facts.calls).saturating_sub(planned);
    let d = route::route(&sh.policy, facts, &usage, &|t| expanded.max_tokens(t));
    if let Some(m) = d.model.as_ref().and_then(|m| sh.policy.models.get(m)) {
        *usage.used.entry(m.tier).or_insert(0) += facts.calls;
    }
    d
}

/// The cascade of the rule that routed the step, if it has one (a pin
/// has none).
fn cascade_of<'a>(sh: &'a Shared, decision: &Decision) -> Option<Check<'a>> {
    let Some(route::Decider::Rule { name, .. }) = &decision.decider else {
        return None;
    };
    let rule = sh.policy.rules.iter().find(|r| &r.name == name)?;
    Some(Check {
        rule: &rule.name,
        cascade: rule.escalate.as_ref()?,
    })
}

/// The rule's candidates from the chosen model on: the fallback chain;
/// `None` when no model was chosen.
pub(super) fn fallback_chain(sh: &Shared, decision: &Decision) -> Option<Vec<String>> {
    let first = decision.model.clone()?;
    let head = match &decision.decider {
        Some(route::Decider::Rule { name, .. }) => sh
            .policy
            .rules
            .iter()
            .find(|r| &r.name == name)
            .map(|r| r.use_model.clone()),
        Some(route::Decider::Pin { model }) => Some(model.clone()),
        None => None,
    }
    .unwrap_or_else(|| first.clone());
    let all = sh.policy.candidates(&head);
    let start = all.iter().position(|m| *m == first).unwrap_or(0);
    Some(all[start..].iter().map(|s| (*s).to_owned()).collect())
}

/// What a step's calls gave, as they arrive in any order: each report
/// and each answer goes to its writer at once (spilled for a large fan-out;
/// the answers only when no step reads them), so nothing holds a whole
/// result per item.
struct Collected {
    reports: CallsWriter,
    answers: AnswersWriter,
    /// The first failure in item order, and its item.
    first_error: Option<(usize, CallError)>,
}

impl Collected {
    /// For step `id`'s `len` calls.
    fn new(sh: &Shared, id: &str, fan_out: bool, len: usize) -> Collected {
        Collected {
            reports: CallsWriter::new(len),
            answers: AnswersWriter::new(len, fan_out, sh.read.contains(id)),
            first_error: None,
        }
    }

    fn add(&mut self, n: usize, (report, result): (CallReport, Result<Value, CallError>)) {
        self.reports.push(n, report);
        match result {
            Ok(v) => self.answers.push(n, v),
            Err(e) => {
                if self.first_error.as_ref().is_none_or(|(at, _)| n < *at) {
                    self.first_error = Some((n, e));
                }
            }
        }
    }
}

/// Every call of the step, into `collected`: through the provider's batch
/// API if the step asks for it, then what the batch did not answer one by
/// one. An item that cannot be read (a streamed list's file changed)
/// stops the step: no call is made for it or after it; the calls in flight
/// finish.
async fn make_calls(ctx: &StepCalls<'_>, collected: &mut Collected) -> Result<(), step::StepError> {
    // Each call is rendered when the window reaches it (a fan-out's calls
    // are not held: `step::Expanded::calls`).
    let expanded = ctx.expanded;
    // A cascade checks each first answer as it comes: its calls are made
    // one by one, never through a batch.
    let model = ctx
        .sh
        .policy
        .models
        .get(&ctx.chain[0])
        .filter(|_| ctx.cascade.is_none());
    // What a batch settles goes straight into `collected`, a batch at a
    // time; the rest is called below.
    let mut batched = match model {
        Some(model) => {
            batch::run(
                ctx.sh,
                ctx.step_id,
                ctx.step,
                ctx.fan_out,
                expanded,
                model,
                ctx.label,
                &mut |n, answered| collected.add(n, answered),
            )
            .await
        }
        None => None,
    };
    // A window of calls exists at once, not one future per item: a future
    // holds its call's whole state (kilobytes) from the moment it is made,
    // so a 100,000-item fan-out joined at once held hundreds of megabytes
    // before the first answer. The run's `--concurrency` bounds what is in
    // flight anyway, so a window that wide never leaves a slot idle.
    let window = ctx.sh.options.concurrency.max(1);
    let mut waiting = expanded.calls().enumerate();
    let mut in_flight = FuturesUnordered::new();
    let mut unread = Ok(());
    loop {
        while in_flight.len() < window && unread.is_ok() {
            let Some((n, call)) = waiting.next() else {
                break;
            };
            let call = match call {
                Ok(call) => call,
                Err(e) => {
                    unread = Err(e);
                    break;
                }
            };
            let before = match batched.as_mut().map(|b| b.take(n)) {
                Some(batch::Taken::Settled) => continue,
                Some(batch::Taken::Again(report)) => Some(*report),
                Some(batch::Taken::Call) | None => None,
            };
            in_flight.push(one_call(ctx, n, call, before));
        }
        let Some((n, answered)) = in_flight.next().await else {
            break;
        };
        collected.add(n, answered);
    }
    unread
}

/// One item's call (after the batch's attempt, if a batch gave the item
/// back: `before`).
async fn one_call(
    ctx: &StepCalls<'_>,
    n: usize,
    call: std::borrow::Cow<'_, step::RenderedCall>,
    before: Option<CallReport>,
) -> (usize, (CallReport, Result<Value, CallError>)) {
    let item = ctx.fan_out.then_some(n);
    let (mut report, result) = call_with_fallbacks(ctx, item, &call).await;
    if let Some(b) = before {
        // What the batch's discount would have saved on the synchronous
        // answer (before the batch's own cost joins it). A fallback model
        // without a batch API lost no discount.
        report.batch_fallback = true;
        let model = report
            .model
            .as_ref()
            .and_then(|m| ctx.sh.policy.models.get(m));
        if let Some(m) = model.filter(|m| m.has_batch_api()) {
            let at_batch = cost::call_cost(&m.price, &report.usage, cost::Billing::Batch);
            report.lost_discount_usd = (report.cost_usd - at_batch).max(0.0);
        }
        // The batch's attempt first, and what it cost on the bill.
        report.attempts.splice(0..0, b.attempts);
        report.call_ms += b.call_ms;
        report.model_ms = report.model_ms.saturating_add(b.model_ms);
        report.usage += b.usage;
        report.cost_usd += b.cost_usd;
        report.list_cost_usd += b.list_cost_usd;
    }
    (n, (report, result))
}

/// The step's report from its calls: totals, the first error, the output
/// (a list of outputs for a fan-out).
///
/// The journal keeps each call's answer, never a step's output (a resume
/// answers the calls again from it and gathers the output anew), so a
/// spilled output has nothing to be written to there.
fn gather(sh: &Shared, id: &str, step: &Step, collected: Collected) -> StepReport {
    let Collected {
        reports,
        answers,
        first_error,
    } = collected;
    let mut report = StepReport::new(id, StepStatus::Succeeded, None);
    let (calls, totals) = reports.finish();
    report.calls = calls;
    report.usage = totals.usage;
    report.cost_usd = totals.cost_usd;
    report.list_cost_usd = totals.list_cost_usd;
    report.queued_ms = totals.queued_ms;
    report.call_ms = totals.call_ms;
    report.model_ms = totals.model_ms;
    report.ttft_ms = totals.ttft_ms;
    report.model = totals.model;
    report.provider_model = report
        .model
        .as_ref()
        .and_then(|m| sh.policy.models.get(m))
        .map(|m| m.model.clone());
    if let Some((_, e)) = first_error {
        report.status = StepStatus::Failed;
        // The report keeps the reason as the user reads it.
        report.detail = Some(e.to_string());
        report.ignored_failure = step.continue_on_error;
        return report;
    }
    report.output = Some(answers.finish());
    report
}
