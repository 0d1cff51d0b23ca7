//! One call of a step: answered from the journal if an earlier session of
//! the run finished it, else each candidate of the fallback chain in turn —
//! the sensitivity gate re-checked for every one, a fallback held to the
//! checks the routed model passed, its local server started if the policy
//! says `launch` — each with its retries ([`super::model_call`]).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;

use super::cascade::{Check, Leg};
use super::error::{CallError, CandidateError};
use super::model_call::call_model;
use super::shared::Shared;
use super::{Attempt, AttemptOutcome, CallReport, CallSource, Escalation, Event, local_server};
use crate::policy::{JudgeCheck, Model, Tier};
use crate::route::{self, Facts};
use crate::step::{Expanded, RenderedCall};
use crate::workflow::Step;

/// What every call of one step shares.
pub(super) struct StepCalls<'a> {
    pub sh: &'a Shared,
    pub step_id: &'a str,
    pub step: &'a Step,
    /// The step has `for_each`: its calls are numbered items.
    pub fan_out: bool,
    /// The routed model, then its fallbacks.
    pub chain: &'a [String],
    pub facts: &'a Facts<'a>,
    /// What the requests carry to the provider boundary (`route::admit`).
    pub label: &'a route::Label,
    /// The step's calls; their token counts (the largest call's, per
    /// tokenizer, counted once) decide every budget and window check.
    pub expanded: &'a Expanded,
    /// The routing rule's cascade, if it has one.
    pub cascade: Option<Check<'a>>,
}

impl StepCalls<'_> {
    /// Tokens of the step's largest call by `tok`.
    pub fn max_tokens(&self, tok: crate::tokens::Tokenizer) -> u64 {
        self.expanded.max_tokens(tok)
    }
}

/// One call: its earlier session's answer, or each candidate in turn.
///
/// Boxed, with `Send` said outright: a judged cascade's judge is a call
/// like any other, made through this function from inside it.
pub(super) fn call_with_fallbacks<'a>(
    ctx: &'a StepCalls<'a>,
    item: Option<usize>,
    call: &'a RenderedCall,
) -> BoxFuture<'a, (CallReport, Result<Value, CallError>)> {
    Box::pin(candidates(ctx, item, call))
}

async fn candidates(
    ctx: &StepCalls<'_>,
    item: Option<usize>,
    call: &RenderedCall,
) -> (CallReport, Result<Value, CallError>) {
    let sh = ctx.sh;
    let started = Instant::now();
    let mut report = CallReport::empty(item);
    match judged_resume(ctx, item) {
        JudgedResume::Taken => {
            if let Some(output) = resumed(ctx, item, call, &mut report) {
                return (report, Ok(output));
            }
        }
        // A judged cascade's first answer from an earlier session: its
        // verdict may not have been reached (the judge's own answer, if it
        // was journaled, comes back from the journal for nothing).
        JudgedResume::Judge(c, judge) => {
            if let Some(output) = resumed(ctx, item, call, &mut report) {
                let from = report.model.clone().unwrap_or_default();
                let reason = judged(ctx, item, c, judge, &output, &mut report).await;
                let verdict = reason
                    .as_deref()
                    .map_or(Verdict::Pass(&output), Verdict::Escalate);
                journal_verdict(ctx, item, call, &from, c, verdict).await;
                return match reason {
                    None => (report, Ok(output)),
                    Some(reason) => {
                        escalate(ctx, call, report, &from, reason, Vec::new(), started).await
                    }
                };
            }
        }
        // Its verdict was to escalate: below.
        JudgedResume::Escalating => {}
    }
    // An earlier session's first answer failed the check: escalate now,
    // without paying for the first call again.
    if let Some((from, reason)) = escalation_left(ctx, item, call, &mut report) {
        return escalate(ctx, call, report, &from, reason, Vec::new(), started).await;
    }
    // Why each candidate failed (it was called) or was passed over.
    let mut failures: Vec<CandidateError> = Vec::new();
    let mut passed: Vec<CandidateError> = Vec::new();
    // Why the candidate before this one gave no answer (a fallback's reason).
    let mut last_error = String::new();
    // After a context-length error only larger windows are worth trying.
    let mut need_window_above: u64 = 0;
    let mut previous: Option<&str> = None;
    // The tier the routing decision charged this call to.
    let routed_tier = ctx
        .chain
        .first()
        .and_then(|m| sh.policy.models.get(m))
        .map(|m| m.tier);
    for (position, alias) in ctx.chain.iter().enumerate() {
        let Some(model) = sh.policy.models.get(alias) else {
            continue;
        };
        if let Err(why) = admissible(ctx, model, position, routed_tier) {
            last_error = why.to_string();
            passed.push(why);
            continue;
        }
        if model.context_window <= need_window_above {
            continue;
        }
        let client = match ready_client(sh, alias, model).await {
            Ok(c) => c,
            Err(Unready::PassedOver(why)) => {
                last_error = why.to_string();
                passed.push(why);
                continue;
            }
            Err(Unready::Failed(why)) => {
                last_error = why.to_string();
                failures.push(why);
                continue;
            }
        };
        if let Some(prev) = previous {
            sh.emit(Event::FallingBack {
                step: ctx.step_id.to_owned(),
                from: prev.to_owned(),
                to: alias.clone(),
                reason: last_error.clone(),
            });
        }
        previous = Some(alias);
        // The escalation target itself, reached as a fallback, is not checked.
        let leg = match ctx.cascade {
            Some(c) if c.cascade.to != *alias => Leg::First(c),
            _ => Leg::Plain,
        };
        match call_model(ctx, model, client.as_ref(), call, &mut report, leg).await {
            Ok(v) => {
                move_tier(sh, routed_tier, model.tier);
                report.model = Some(alias.clone());
                // A judged cascade: the answer is scored now — once it is
                // on disk (a free answer is only queued for the journal
                // otherwise), so a kill during the judge never costs it.
                if let Some((c, judge)) = leg.check().and_then(|c| Some((c, c.cascade.judged()?))) {
                    sh.journal_durable().await;
                    let reason = judged(ctx, item, c, judge, &v, &mut report).await;
                    let verdict = reason
                        .as_deref()
                        .map_or(Verdict::Pass(&v), Verdict::Escalate);
                    journal_verdict(ctx, item, call, alias, c, verdict).await;
                    if let Some(reason) = reason {
                        if let Some(last) =
                            report.attempts.iter_mut().rev().find(|a| a.model == *alias)
                        {
                            last.outcome = AttemptOutcome::Escalated;
                            last.message = Some(reason.clone());
                        }
                        return escalate(ctx, call, report, alias, reason, failures, started).await;
                    }
                }
                report.latency_ms = started.elapsed().as_millis() as u64;
                return (report, Ok(v));
            }
            Err(CandidateError::Escalate { alias, reason, .. }) => {
                report.model = Some(alias.clone());
                return escalate(ctx, call, report, &alias, reason, failures, started).await;
            }
            Err(why) => {
                report.model = Some(alias.clone());
                if why.context_length() {
                    need_window_above = model.context_window;
                }
                last_error = why.to_string();
                failures.push(why);
            }
        }
    }
    report.latency_ms = started.elapsed().as_millis() as u64;
    // Every candidate's reason, the real failures first: a local call's
    // HTTP 500 is the cause, not the gate that kept its fallbacks away.
    let error = if failures.is_empty() && passed.is_empty() {
        CallError::NoCandidate
    } else {
        CallError::Candidates(failures.into_iter().chain(passed).collect())
    };
    (report, Err(error))
}

/// The escalation: the cascade's target, then its fallbacks (never the
/// model that already answered), each through the gate, the window and
/// tier-share checks, then a normal call (cache, boundary, budget,
/// journal). The first call stays on the bill and in the report.
async fn escalate(
    ctx: &StepCalls<'_>,
    call: &RenderedCall,
    mut report: CallReport,
    from: &str,
    reason: String,
    mut failures: Vec<CandidateError>,
    started: Instant,
) -> (CallReport, Result<Value, CallError>) {
    let sh = ctx.sh;
    let Some(check) = ctx.cascade else {
        report.latency_ms = started.elapsed().as_millis() as u64;
        return (report, Err(CallError::NoCandidate));
    };
    let to = check.cascade.to.as_str();
    failures.push(CandidateError::Escalate {
        alias: from.to_owned(),
        to: to.to_owned(),
        reason: reason.clone(),
    });
    let mut passed: Vec<CandidateError> = Vec::new();
    let mut previous = from.to_owned();
    let mut last_error = reason.clone();
    for alias in sh.policy.candidates(to) {
        let Some(model) = sh.policy.models.get(alias).filter(|_| alias != from) else {
            continue;
        };
        if let Err(why) = escalation_admissible(ctx, model) {
            last_error = why.to_string();
            passed.push(why);
            continue;
        }
        let client = match ready_client(sh, alias, model).await {
            Ok(c) => c,
            Err(Unready::PassedOver(why)) => {
                last_error = why.to_string();
                passed.push(why);
                continue;
            }
            Err(Unready::Failed(why)) => {
                last_error = why.to_string();
                failures.push(why);
                continue;
            }
        };
        if alias == to {
            sh.emit(Event::Escalating {
                step: ctx.step_id.to_owned(),
                from: from.to_owned(),
                to: alias.to_owned(),
                reason: reason.clone(),
            });
        } else {
            sh.emit(Event::FallingBack {
                step: ctx.step_id.to_owned(),
                from: previous.clone(),
                to: alias.to_owned(),
                reason: last_error.clone(),
            });
        }
        previous = alias.to_owned();
        let leg = Leg::Escalation {
            rule: check.rule,
            from,
        };
        match call_model(ctx, model, client.as_ref(), call, &mut report, leg).await {
            Ok(v) => {
                // The escalated call is one more call on its tier.
                let mut usage = sh.tiers.lock().unwrap_or_else(|e| e.into_inner());
                *usage.used.entry(model.tier).or_insert(0) += 1;
                drop(usage);
                report.model = Some(alias.to_owned());
                report.escalation = Some(Escalation {
                    rule: check.rule.to_owned(),
                    from: from.to_owned(),
                    to: alias.to_owned(),
                    reason,
                });
                report.latency_ms = started.elapsed().as_millis() as u64;
                return (report, Ok(v));
            }
            Err(why) => {
                report.model = Some(alias.to_owned());
                last_error = why.to_string();
                failures.push(why);
            }
        }
    }
    report.latency_ms = started.elapsed().as_millis() as u64;
    (
        report,
        Err(CallError::Candidates(
            failures.into_iter().chain(passed).collect(),
        )),
    )
}

/// What an earlier session's answer to this call is worth. A judged
/// cascade journals its first answer as finished before the judge scores
/// it (a kill during the judge must not cost the answer), then the
/// verdict; every other answer is taken as it is.
enum JudgedResume<'a> {
    /// Taken (if there is one): not a judged cascade, or the escalated
    /// call's answer.
    Taken,
    /// The first answer: judged before it is taken.
    Judge(Check<'a>, &'a JudgeCheck),
    /// The first answer, whose verdict was to escalate.
    Escalating,
}

fn judged_resume<'a>(ctx: &StepCalls<'a>, item: Option<usize>) -> JudgedResume<'a> {
    let Some((c, judge)) = ctx.cascade.and_then(|c| Some((c, c.cascade.judged()?))) else {
        return JudgedResume::Taken;
    };
    let key = (ctx.step_id.to_owned(), item);
    let Some(done) = ctx.sh.finished.get(&key) else {
        return JudgedResume::Taken;
    };
    match ctx.sh.escalated.get(&key) {
        // The escalation has not answered yet.
        Some(left) if done.model == left.model => JudgedResume::Escalating,
        Some(_) => JudgedResume::Taken,
        None if done.model == c.cascade.to => JudgedResume::Taken,
        None => JudgedResume::Judge(c, judge),
    }
}

/// The judge's verdict on a cascade's first answer: `None` when it passes,
/// else why the call escalates. The judge is a call of its own (task
/// `judge`, routed by the policy with the step's sensitivity: the gate
/// keeps a confidential step's judge local), priced, budgeted and
/// journaled as the step `<step>__judge`, so a resume answers it from the
/// journal. Its cost joins the call's. A judge that cannot be asked, or
/// answers without a score, escalates: an answer of unknown quality is
/// not trusted.
async fn judged(
    ctx: &StepCalls<'_>,
    item: Option<usize>,
    check: Check<'_>,
    judge: &JudgeCheck,
    answer: &Value,
    report: &mut CallReport,
) -> Option<String> {
    let sh = ctx.sh;
    let text = match answer {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let call = crate::judge::call(&judge.rubric, &text);
    let step = crate::judge::step();
    let step_id = crate::judge::step_id(ctx.step_id);
    let expanded = Expanded::single(call.clone(), ctx.expanded.rendered_level);
    let no_tags = std::collections::BTreeSet::new();
    let facts = crate::judge::facts(
        ctx.facts,
        &no_tags,
        expanded.max_tokens(crate::step::RULE_TOKENIZER),
    );
    let decision = {
        let mut usage = sh.tiers.lock().unwrap_or_else(|e| e.into_inner());
        usage.total_calls += 1;
        let d = route::route(&sh.policy, &facts, &usage, &|t| expanded.max_tokens(t));
        if let Some(m) = d.model.as_ref().and_then(|m| sh.policy.models.get(m)) {
            *usage.used.entry(m.tier).or_insert(0) += 1;
        }
        d
    };
    let Some(chain) = super::step_task::fallback_chain(sh, &decision) else {
        let why: Vec<String> = decision
            .passed_over
            .iter()
            .map(|r| format!("{}: {}", r.model, r.why))
            .collect();
        return Some(format!(
            "judge: no model can judge rule `{}`'s answer: {}",
            check.rule,
            why.join("; ")
        ));
    };
    let jctx = StepCalls {
        sh,
        step_id: &step_id,
        step: &step,
        fan_out: false,
        chain: &chain,
        facts: &facts,
        label: ctx.label,
        expanded: &expanded,
        cascade: None,
    };
    let (jreport, result) = call_with_fallbacks(&jctx, item, &call).await;
    report.cost_usd += jreport.cost_usd;
    report.list_cost_usd += jreport.list_cost_usd;
    report.usage += jreport.usage;
    report.call_ms += jreport.call_ms;
    report.queued_ms += jreport.queued_ms;
    report.saved_usd += jreport.saved_usd;
    report
        .attempts
        .extend(jreport.attempts.into_iter().map(|mut a| {
            a.message = Some(match a.message {
                Some(m) => format!("judge: {m}"),
                None => "judge".to_owned(),
            });
            a
        }));
    match result {
        Ok(v) => match crate::judge::Verdict::of(&v) {
            Some(verdict) => verdict.failure(judge.min_score),
            None => Some("judge: the verdict has no score from 0 to 1".to_owned()),
        },
        Err(e) => Some(format!("judge: could not be asked: {e}")),
    }
}

/// What the judge decided of a first answer.
#[derive(Clone, Copy)]
enum Verdict<'a> {
    /// The answer stands.
    Pass(&'a Value),
    /// The call escalates, for this reason.
    Escalate(&'a str),
}

/// The verdict on a judged first answer, journaled as a call record of
/// the step (free, no tokens): `escalated` with the reason (what a resume
/// escalates from), or the answer itself, finished. It — not the first
/// answer's own record — is what counts the cascade's first answers and
/// escalations.
async fn journal_verdict(
    ctx: &StepCalls<'_>,
    item: Option<usize>,
    call: &RenderedCall,
    from: &str,
    check: Check<'_>,
    verdict: Verdict<'_>,
) {
    let sh = ctx.sh;
    let (Some(j), Some(model)) = (sh.options.journal.as_ref(), sh.policy.models.get(from)) else {
        return;
    };
    let mut rec = crate::journal::CallRecord {
        step: ctx.step_id.to_owned(),
        item,
        attempt: 0,
        prompt_hash: Some(super::cache::asked(call)),
        model: model.alias.clone(),
        provider: model.provider.clone(),
        provider_model: model.model.clone(),
        tier: model.tier.name().to_owned(),
        local: model.locality == crate::policy::Locality::Local,
        started_ms: j.journal.now(),
        cascade_rule: Some(check.rule.to_owned()),
        outcome: AttemptOutcome::Ok,
        ..crate::journal::CallRecord::default()
    };
    match verdict {
        Verdict::Pass(answer) => rec.output = Some(answer.clone()),
        Verdict::Escalate(reason) => {
            rec.outcome = AttemptOutcome::Escalated;
            rec.error = Some(reason.to_owned());
            rec.escalate_to = Some(check.cascade.to.clone());
            // On disk before the escalation (a paid call) is sent: a resume
            // after a kill then escalates from this verdict as it was
            // reached, rather than asking the journal's judge answer again.
            if let Err(e) = j.journal.commit_call(&j.run_id, rec).await {
                sh.journal_failed(j, &e);
            }
            return;
        }
    }
    sh.journal_call(rec).await;
}

/// May the escalation call `model`: the sensitivity gate first (the step
/// may be above `cloud_max`: a cloud target is refused, whatever the
/// plan said), then the window, the max output and its tier's share with
/// this call added (the first call stays counted where it was made).
fn escalation_admissible(ctx: &StepCalls<'_>, model: &Model) -> Result<(), CandidateError> {
    let policy = &ctx.sh.policy;
    if !route::gate(policy, model, ctx.facts.sensitivity) {
        return Err(CandidateError::Gated {
            alias: model.alias.clone(),
            level: policy.level_name(ctx.facts.sensitivity).to_owned(),
            cloud_max: policy.level_name(policy.cloud_max).to_owned(),
        });
    }
    let usage = ctx
        .sh
        .tiers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let one_call = Facts {
        calls: 1,
        ..ctx.facts.clone()
    };
    route::fits(policy, model, &one_call, &usage, &|t| ctx.max_tokens(t)).map_err(|why| {
        CandidateError::DoesNotFit {
            alias: model.alias.clone(),
            why,
        }
    })
}

/// A call an earlier session left escalating (its first answer, already
/// paid for, failed the check) — if it was asked the same and the policy
/// still escalates to the same model: the model that answered and why.
fn escalation_left(
    ctx: &StepCalls<'_>,
    item: Option<usize>,
    call: &RenderedCall,
    report: &mut CallReport,
) -> Option<(String, String)> {
    let check = ctx.cascade?;
    let left = ctx
        .sh
        .escalated
        .get(&(ctx.step_id.to_owned(), item))
        .filter(|e| e.to == check.cascade.to)
        .filter(|e| {
            e.prompt_hash.as_ref().is_none_or(|h| {
                *h == crate::journal::prompt_hash(call.system.as_deref(), &call.prompt)
            })
        })?;
    report.attempts.push(Attempt {
        model: left.model.clone(),
        outcome: AttemptOutcome::Escalated,
        status: None,
        message: Some(format!("in an earlier session: {}", left.reason)),
        waited_ms: None,
    });
    Some((left.model.clone(), left.reason.clone()))
}

/// Finished by an earlier session of this run: its answer, not a new call
/// — if it was asked the same (an upstream answer that changed since, as a
/// `continue_on_error` step that now succeeds, makes it a new call).
fn resumed(
    ctx: &StepCalls<'_>,
    item: Option<usize>,
    call: &RenderedCall,
    report: &mut CallReport,
) -> Option<Value> {
    let done = ctx
        .sh
        .finished
        .get(&(ctx.step_id.to_owned(), item))
        .filter(|d| {
            d.prompt_hash
                .as_ref()
                .is_none_or(|h| *h == super::cache::asked(call))
        })?;
    report.source = CallSource::Journal;
    report.model = Some(done.model.clone());
    report.usage = done.usage;
    report.attempts.push(Attempt {
        model: done.model.clone(),
        outcome: AttemptOutcome::Resumed,
        status: None,
        message: None,
        waited_ms: None,
    });
    Some(done.output.clone())
}

/// Whether a candidate may be tried: the sensitivity gate, for every
/// candidate whatever happened to the ones before it (a server that would
/// not start, a missing key) — checked here, right before any call, not
/// only by routing; and a fallback passes every check the routed model
/// passed: the window, the max output and its own tier's share of calls
/// (this call moves from the routed model's tier to the fallback's).
fn admissible(
    ctx: &StepCalls<'_>,
    model: &Model,
    position: usize,
    routed_tier: Option<Tier>,
) -> Result<(), CandidateError> {
    let policy = &ctx.sh.policy;
    if !route::gate(policy, model, ctx.facts.sensitivity) {
        return Err(CandidateError::Gated {
            alias: model.alias.clone(),
            level: policy.level_name(ctx.facts.sensitivity).to_owned(),
            cloud_max: policy.level_name(policy.cloud_max).to_owned(),
        });
    }
    if position == 0 {
        return Ok(());
    }
    let mut usage = ctx
        .sh
        .tiers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // Take this call out of the routed tier, then ask whether it fits in
    // the fallback's.
    if let Some(n) = routed_tier.and_then(|t| usage.used.get_mut(&t)) {
        *n = n.saturating_sub(1);
    }
    let one_call = Facts {
        calls: 1,
        ..ctx.facts.clone()
    };
    route::fits(policy, model, &one_call, &usage, &|t| ctx.max_tokens(t)).map_err(|why| {
        CandidateError::DoesNotFit {
            alias: model.alias.clone(),
            why,
        }
    })
}

/// A call a fallback answered counts on the fallback's tier, not the
/// routed model's.
fn move_tier(sh: &Shared, routed: Option<Tier>, answered: Tier) {
    let Some(t) = routed.filter(|t| *t != answered) else {
        return;
    };
    let mut usage = sh.tiers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = usage.used.get_mut(&t) {
        *n = n.saturating_sub(1);
    }
    *usage.used.entry(answered).or_insert(0) += 1;
}

/// Starts the model's local server if the policy says `launch` (or finds
/// it running), telling the reporter.
/// Why a candidate cannot be called now.
enum Unready {
    /// Its key is missing: passed over, as routing would have.
    PassedOver(CandidateError),
    /// Its local server would not start: a failed attempt.
    Failed(CandidateError),
}

/// The client of a candidate that can be called now: its key is present
/// and its local server (when the policy launches one) is up.
async fn ready_client<'s>(
    sh: &'s Shared,
    alias: &str,
    model: &Model,
) -> Result<&'s std::sync::Arc<dyn crate::provider::Provider>, Unready> {
    let Some(client) = sh.providers.clients.get(&model.provider) else {
        let var = sh
            .providers
            .missing_keys
            .get(&model.provider)
            .cloned()
            .unwrap_or_default();
        return Err(Unready::PassedOver(CandidateError::NoKey {
            alias: alias.to_owned(),
            var,
        }));
    };
    ensure_server(sh, model).await.map_err(|source| {
        Unready::Failed(CandidateError::Server {
            alias: alias.to_owned(),
            source,
        })
    })?;
    Ok(client)
}

async fn ensure_server(
    sh: &Shared,
    model: &Model,
) -> Result<(), std::sync::Arc<local_server::ServerError>> {
    let Some(launches) = sh
        .policy
        .providers
        .get(&model.provider)
        .map(|p| p.launch.as_slice())
        .filter(|l| !l.is_empty())
    else {
        return Ok(());
    };
    sh.resources
        .servers
        .ensure(&model.provider, launches, |launch, s| {
            let server = launch.id.clone();
            let (command, ready_after) = match s {
                local_server::Started::AlreadyRunning => (None, Duration::ZERO),
                local_server::Started::Adopted { pid } => (
                    Some(format!(
                        "the server a killed run left running (pid {pid}); adopted, it stops with this run"
                    )),
                    Duration::ZERO,
                ),
                local_server::Started::Launched {
                    command,
                    ready_after,
                } => (Some(command.clone()), *ready_after),
                local_server::Started::Failed { error, up, of } => {
                    sh.emit(Event::ServerFailed {
                        server,
                        error: error.to_string(),
                        up: *up,
                        of: *of,
                    });
                    return;
                }
            };
            sh.emit(Event::ServerReady {
                provider: server,
                command,
                ready_after,
            });
        })
        .await
}
