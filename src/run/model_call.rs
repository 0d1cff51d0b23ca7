//! One call on one model: the response cache first, then per try the gate
//! at the provider boundary, the call limits and the budget (worst case
//! reserved before the call, settled after), the provider; retries with
//! backoff and the provider's hints; a structured answer validated, and
//! asked again once with the validation error. Every attempt is journaled
//! before its answer is handed on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use serde_json::Value;

use super::budget::Reservation;
use super::cache::{cached, flagship_cost, request_hash, request_texts, step_request};
use super::call::StepCalls;
use super::cascade::{self, Leg};
use super::error::CandidateError;
use super::validate::{InvalidOutput, parse_structured, truncate};
use super::{AnswerSink, Attempt, AttemptOutcome, CallReport, CallSource, Event};
use crate::cost::{self, Billing};
use crate::journal::CallRecord;
use crate::policy::Model;
use crate::provider::{
    ChatRequest, ChatResponse, ErrorKind, Message, Provider, ProviderError, TextSink, Usage,
};
use crate::route;
use crate::step::RenderedCall;
use crate::tokens;

/// One model's side of a call.
struct ModelCall<'a> {
    ctx: &'a StepCalls<'a>,
    model: &'a Model,
    call: &'a RenderedCall,
    validator: Option<jsonschema::Validator>,
    /// The call's side of a cascade (its first answer is checked).
    leg: Leg<'a>,
    /// The request as it will be sent next (a schema retry adds the answer
    /// and the validation error to it).
    req: ChatRequest,
    /// Told of every attempt when the call's text streams out as the run's
    /// final answer.
    streamed: Option<Arc<dyn AnswerSink>>,
}

/// A try that was sent (it may have timed out on the way).
struct Sent {
    rec: CallRecord,
    reservation: Reservation,
    /// The call's worst-case cost, as reserved.
    worst: f64,
    input_tokens: u64,
}

/// What an answer leads to.
enum Answered {
    Done(Value),
    /// Invalid against the schema, first time: ask again with why.
    AskAgain,
    /// A cascade's first answer failed its check: why.
    Escalate(String),
    Failed(CandidateError),
}

/// A failed try that may be tried again: after how long (`None`: the
/// backoff's next delay), and why it failed.
struct Retry {
    after: Option<Duration>,
    error: String,
}

/// One model: retries with backoff, the budget before each try, structured
/// output validated (and asked again once with the validation error).
pub(super) async fn call_model(
    ctx: &StepCalls<'_>,
    model: &Model,
    client: &dyn Provider,
    call: &RenderedCall,
    report: &mut CallReport,
    leg: Leg<'_>,
) -> Result<Value, CandidateError> {
    let (sh, step) = (ctx.sh, ctx.step);
    let mut req = step_request(step, model, call);
    req.stream = sh.options.stream;
    // Logprobs only from servers that send them: on the others the check
    // finds none and escalates (compile refuses `low_confidence` on a
    // rule's own model that cannot return them).
    req.logprobs = leg
        .check()
        .is_some_and(|c| c.cascade.wants_logprobs() && model.provider_kind.returns_logprobs());
    let streamed = final_answer(ctx, leg, &req);
    if let Some(sink) = &streamed {
        let sink = Arc::clone(sink);
        req.on_text = Some(TextSink(Arc::new(move |piece| sink.text(piece))));
    }
    let mut mc = ModelCall {
        ctx,
        model,
        call,
        leg,
        streamed,
        validator: step
            .output_schema()
            .and_then(|s| jsonschema::validator_for(s).ok()),
        req,
    };
    let retries = step.retries.unwrap_or(sh.options.retries);
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(sh.options.backoff_min)
        .with_max_delay(sh.options.backoff_max)
        .with_max_times(retries as usize)
        .with_jitter()
        .build();
    let mut retried = 0u32;
    let mut schema_retry_used = false;
    // The request the cache was last asked about (a retry after a transient
    // error sends the same request again: no need to ask twice).
    let mut looked_up: Option<String> = None;
    loop {
        let hash = sh
            .options
            .journal
            .as_ref()
            .map(|_| request_hash(sh, model, &mc.req));
        if let Some(h) = hash.as_ref().filter(|h| looked_up.as_ref() != Some(*h)) {
            looked_up = Some(h.clone());
            if let Some(v) = mc.cached_answer(&hash, h, report).await {
                return Ok(v);
            }
        }
        let (sent, result) = mc.send(client, &hash, report).await?;
        let retry = match result {
            Ok(resp) => match mc.answered(sent, resp, report, schema_retry_used).await {
                Answered::Done(v) => return Ok(v),
                Answered::AskAgain => {
                    schema_retry_used = true;
                    continue;
                }
                Answered::Escalate(reason) => {
                    return Err(CandidateError::Escalate {
                        alias: model.alias.clone(),
                        to: mc
                            .leg
                            .check()
                            .map_or_else(String::new, |c| c.cascade.to.clone()),
                        reason,
                    });
                }
                Answered::Failed(f) => return Err(f),
            },
            Err(err) => mc.broke(sent, err, report, retried >= retries).await?,
        };
        let wait = retry
            .after
            .unwrap_or_else(|| backoff.next().unwrap_or(sh.options.backoff_max));
        retried += 1;
        if let Some(last) = report.attempts.last_mut() {
            last.waited_ms = Some(wait.as_millis() as u64);
        }
        sh.emit(Event::Retrying {
            step: ctx.step_id.to_owned(),
            model: model.alias.clone(),
            attempt: retried,
            wait,
            error: retry.error,
        });
        tokio::time::sleep(wait).await;
    }
}

/// The sink this call's text streams to, if it is the run's final answer
/// (see [`super::FinalAnswer`] for which calls are).
fn final_answer(
    ctx: &StepCalls<'_>,
    leg: Leg<'_>,
    req: &ChatRequest,
) -> Option<Arc<dyn AnswerSink>> {
    let f = ctx.sh.options.final_answer.as_ref()?;
    let whole = f.step == ctx.step_id
        && req.stream
        && !ctx.fan_out
        && ctx.expanded.len() == 1
        && ctx.step.output_schema().is_none()
        && !matches!(leg, Leg::First(_));
    whole.then(|| Arc::clone(&f.sink))
}

impl ModelCall<'_> {
    /// The journal record of this call's `attempt`-th try.
    fn record(&self, hash: &Option<String>, item: Option<usize>, attempt: usize) -> CallRecord {
        let (sh, model) = (self.ctx.sh, self.model);
        let journal = sh.options.journal.as_ref();
        CallRecord {
            step: self.ctx.step_id.to_owned(),
            item,
            attempt: attempt as u32,
            request_hash: hash.clone(),
            prompt_hash: journal.map(|_| super::cache::asked(self.call)),
            model: model.alias.clone(),
            provider: model.provider.clone(),
            provider_model: model.model.clone(),
            tier: model.tier.name().to_owned(),
            local: model.locality == crate::policy::Locality::Local,
            started_ms: journal.map_or(0, |j| j.journal.now()),
            estimate_usd: sh
                .call_estimates
                .get(self.ctx.step_id)
                .copied()
                .unwrap_or(0.0),
            cascade_rule: match self.leg {
                // A judged answer counts once, by its verdict's record
                // (`call::journal_verdict`).
                Leg::First(c) if c.cascade.judged().is_some() => None,
                Leg::First(c) => Some(c.rule.to_owned()),
                Leg::Escalation { rule, .. } => Some(rule.to_owned()),
                Leg::Plain => None,
            },
            escalated_from: match self.leg {
                Leg::Escalation { from, .. } => Some(from.to_owned()),
                _ => None,
            },
            ..CallRecord::default()
        }
    }

    /// The response cache: an identical request (same provider, model,
    /// messages, parameters) answered within the TTL costs nothing. Only
    /// valid answers are cached; one that no longer validates is not used.
    async fn cached_answer(
        &self,
        hash: &Option<String>,
        key: &str,
        report: &mut CallReport,
    ) -> Option<Value> {
        let sh = self.ctx.sh;
        let answer = cached(sh, key).await?;
        let v = self.output_of(&answer.text).ok()?;
        // A cascade's first call takes a cached answer only if it passes the
        // check (the cache keeps no logprobs: with `low_confidence` it never
        // does, and the call is made).
        if let Some(c) = self.leg.check() {
            let seen = cascade::Answer {
                text: &answer.text,
                invalid: None,
                truncated: false,
                logprobs: None,
            };
            if cascade::failure(c.cascade, &seen).is_some() {
                return None;
            }
        }
        report.source = CallSource::Cache;
        report.saved_usd += answer.cost_usd;
        report.usage += answer.usage;
        report.attempts.push(Attempt {
            model: self.model.alias.clone(),
            outcome: AttemptOutcome::Cached,
            status: None,
            message: Some(format!("answer of run {}", answer.run_id)),
            waited_ms: None,
        });
        let mut r = self.record(hash, report.item, report.attempts.len());
        r.outcome = AttemptOutcome::Cached;
        r.usage = answer.usage;
        r.list_cost_usd = answer.cost_usd;
        r.saved_usd = answer.cost_usd;
        r.flagship_cost_usd = flagship_cost(sh, &answer.usage);
        r.from_cache = true;
        r.output = Some(v.clone());
        sh.journal_call(r).await;
        Some(v)
    }

    /// An answer's text as the step's output: validated against the output
    /// schema, if any.
    fn output_of(&self, text: &str) -> Result<Value, InvalidOutput> {
        match &self.validator {
            None => Ok(Value::String(text.to_owned())),
            Some(v) => parse_structured(text, v),
        }
    }

    /// A call that is not made (refused at the boundary, over budget): one
    /// attempt in the report and in the journal, with its reason.
    async fn not_called(
        &self,
        hash: &Option<String>,
        report: &mut CallReport,
        outcome: AttemptOutcome,
        why: CandidateError,
    ) -> CandidateError {
        let message = why.to_string();
        report.attempts.push(Attempt {
            model: self.model.alias.clone(),
            outcome,
            status: None,
            message: Some(message.clone()),
            waited_ms: None,
        });
        let mut r = self.record(hash, report.item, report.attempts.len());
        r.outcome = outcome;
        r.error = Some(message);
        self.ctx.sh.journal_call(r).await;
        why
    }

    /// One try: the gate at the provider boundary, a slot, the budget, the
    /// provider (within the call's timeout).
    async fn send(
        &self,
        client: &dyn Provider,
        hash: &Option<String>,
        report: &mut CallReport,
    ) -> Result<(Sent, Result<ChatResponse, ProviderError>), CandidateError> {
        let (sh, step, model) = (self.ctx.sh, self.ctx.step, self.model);
        // The gate at the provider boundary, on the request as it leaves —
        // before a slot or a reservation is taken: a refused request costs
        // nothing and waits for nothing.
        if let Err(refusal) =
            route::admit(&sh.policy, model, self.ctx.label, &request_texts(&self.req))
        {
            return Err(self
                .not_called(hash, report, AttemptOutcome::Refused, refusal.into())
                .await);
        }
        // The request's limit: the answer plus any thinking budget, both
        // billed as output.
        let max_out = u64::from(self.req.max_output_tokens);
        // A schema retry sends the earlier answer back (its text, not its
        // thinking): count it at its most.
        let input_tokens = self.ctx.max_tokens(model.tokenizer)
            + self.req.messages.len().saturating_sub(1) as u64
                * u64::from(step.max_output_tokens());
        let worst = cost::worst_case(
            &model.price,
            input_tokens,
            max_out,
            self.req.cache_system,
            Billing::Standard,
        );
        // Slots first, then the budget: a call queued behind others must not
        // hold a reservation that keeps the calls in flight from fitting.
        let queued = Instant::now();
        let permit = sh
            .resources
            .limits
            .acquire(&model.provider, &model.alias, input_tokens + max_out)
            .await;
        let waiting = || {
            sh.emit(Event::WaitingForBudget {
                step: self.ctx.step_id.to_owned(),
                model: model.alias.clone(),
            });
        };
        let reservation = sh.budget.reserve_or_wait(worst, waiting).await;
        report.queued_ms += queued.elapsed().as_millis() as u64;
        let reservation = match reservation {
            Ok(r) => r,
            Err(over) => {
                let why = CandidateError::OverBudget {
                    alias: model.alias.clone(),
                    over,
                };
                return Err(self
                    .not_called(hash, report, AttemptOutcome::OverBudget, why)
                    .await);
            }
        };
        let mut rec = self.record(hash, report.item, report.attempts.len() + 1);
        let call_timeout = step.timeout.unwrap_or(sh.options.call_timeout);
        if let Some(sink) = &self.streamed {
            sink.attempt(&model.alias);
        }
        let sent = Instant::now();
        let result = match tokio::time::timeout(call_timeout, client.send(&self.req)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError {
                kind: ErrorKind::Timeout,
                status: None,
                message: format!("no answer within {}s", call_timeout.as_secs_f64()),
                retry_after: None,
                should_retry: None,
                body: None,
            }),
        };
        drop(permit);
        rec.latency_ms = sent.elapsed().as_millis() as u64;
        report.call_ms += rec.latency_ms;
        if let Ok(answer) = &result {
            report.model_ms += u64::try_from(answer.latency.as_millis()).unwrap_or(u64::MAX);
        }
        let sent = Sent {
            rec,
            reservation,
            worst,
            input_tokens,
        };
        Ok((sent, result))
    }

    /// An answer: charged (what the server said judged, then priced, in one
    /// place), journaled, then validated.
    async fn answered(
        &mut self,
        sent: Sent,
        resp: ChatResponse,
        report: &mut CallReport,
        schema_retry_used: bool,
    ) -> Answered {
        let (sh, model) = (self.ctx.sh, self.model);
        let Sent {
            mut rec,
            reservation,
            input_tokens,
            ..
        } = sent;
        let reported = resp.usage.input_tokens > 0 || resp.usage.output_tokens > 0;
        // No usage reported: count it ourselves rather than pretend the call
        // was free.
        let answer_tokens = model.tokenizer.count(&resp.text) as u64;
        let usage = if reported {
            resp.usage
        } else {
            Usage {
                input_tokens,
                output_tokens: answer_tokens + tokens::chat_overhead(1) as u64,
                ..Usage::default()
            }
        };
        // A provider-reported cost (OpenRouter's) wins when it is believable.
        let charged = cost::charge(
            &model.price,
            &cost::Asked {
                input_tokens,
                max_output: u64::from(self.req.max_output_tokens),
                cache: self.req.cache_system,
                billing: Billing::Standard,
                answer_tokens,
            },
            usage,
            resp.cost_usd,
        );
        let (usage, cost, list) = (charged.usage, charged.cost, charged.list);
        report.cost_usd += cost;
        report.list_cost_usd += list;
        report.usage += usage;
        if report.ttft_ms.is_none() {
            report.ttft_ms = resp.time_to_first_token.map(|d| d.as_millis() as u64);
        }
        report.truncated = resp.truncated();
        report.attempts.push(Attempt {
            model: model.alias.clone(),
            outcome: AttemptOutcome::Ok,
            status: Some(200),
            message: None,
            waited_ms: None,
        });
        let verdict = self.validator.is_some().then(|| self.output_of(&resp.text));
        let output = match &verdict {
            None => Some(Value::String(resp.text.clone())),
            Some(Ok(v)) => Some(v.clone()),
            Some(Err(_)) => None,
        };
        // A cascade's first answer: the check, before anything is journaled,
        // so a kill can never leave a failed answer looking finished.
        let escalate = self.leg.check().and_then(|c| {
            cascade::failure(
                c.cascade,
                &cascade::Answer {
                    text: &resp.text,
                    invalid: verdict.as_ref().and_then(|v| v.as_ref().err()),
                    truncated: resp.truncated(),
                    logprobs: resp.logprobs,
                },
            )
        });
        // Only whole, valid answers answer later identical requests (not one
        // a provider's filter stopped part way, nor one the cascade refused,
        // nor one asked with logprobs: the cache cannot give them back).
        let cacheable = output.is_some()
            && !resp.truncated()
            && resp.ended_normally()
            && escalate.is_none()
            && !self.req.logprobs;
        let outcome = match (&verdict, resp.truncated()) {
            (Some(Err(_)), _) => AttemptOutcome::InvalidOutput,
            (_, true) => AttemptOutcome::Truncated,
            _ => AttemptOutcome::Ok,
        };
        rec.outcome = outcome;
        // The journal keeps the reason as the user reads it.
        rec.error = verdict
            .as_ref()
            .and_then(|v| v.as_ref().err().map(ToString::to_string));
        rec.usage = usage;
        rec.cost_usd = cost;
        rec.list_cost_usd = list;
        rec.flagship_cost_usd = flagship_cost(sh, &usage);
        rec.usage_flag = charged.flag;
        rec.cacheable = cacheable;
        rec.response = cacheable.then(|| resp.text.clone());
        rec.endpoint = resp.endpoint.clone();
        rec.output = output;
        if let Some(reason) = &escalate {
            // Not the call's output: a resume escalates it, never uses it.
            rec.outcome = AttemptOutcome::Escalated;
            rec.error = Some(reason.clone());
            rec.output = None;
            rec.escalate_to = self.leg.check().map(|c| c.cascade.to.clone());
        }
        // Journaled before the reservation is settled: the budget may count
        // the call twice for a moment, never not at all.
        sh.journal_call(rec).await;
        sh.budget.settle(reservation, cost);
        if let Some(reason) = escalate {
            if let Some(last) = report.attempts.last_mut() {
                last.outcome = AttemptOutcome::Escalated;
                last.message = Some(reason.clone());
            }
            return Answered::Escalate(reason);
        }
        let why = match verdict {
            None => return Answered::Done(Value::String(resp.text)),
            Some(Ok(v)) => return Answered::Done(v),
            Some(Err(why)) => why,
        };
        if let Some(last) = report.attempts.last_mut() {
            last.outcome = AttemptOutcome::InvalidOutput;
            last.message = Some(why.to_string());
        }
        if schema_retry_used {
            return Answered::Failed(CandidateError::InvalidOutput {
                alias: model.alias.clone(),
                why,
                answer: truncate(&resp.text, 500),
            });
        }
        self.req
            .messages
            .push(Message::assistant(resp.text.clone()));
        self.req.messages.push(Message::user(format!(
            "Your answer does not match the required JSON Schema: {why}\nAnswer again with only JSON that matches the schema."
        )));
        Answered::AskAgain
    }

    /// A try that failed: charged what it may have cost, journaled; then
    /// either given up (`Err`) or to be tried again.
    async fn broke(
        &self,
        sent: Sent,
        err: ProviderError,
        report: &mut CallReport,
        out_of_retries: bool,
    ) -> Result<Retry, CandidateError> {
        let (sh, model) = (self.ctx.sh, self.model);
        let Sent {
            mut rec,
            reservation,
            worst,
            input_tokens,
        } = sent;
        // A call that broke after the provider started answering may well
        // have been billed: count its worst case, to stay on the safe side of
        // the budget. Errors before that cost nothing.
        let maybe_billed = matches!(
            err.kind,
            ErrorKind::Timeout
                | ErrorKind::StreamBroken
                | ErrorKind::Malformed
                | ErrorKind::ResponseTooLarge
        );
        let charged = if maybe_billed {
            worst
        } else if err.kind == ErrorKind::Blocked {
            // A withheld answer: its prompt was billed.
            cost::floor(
                &model.price,
                &cost::Asked {
                    input_tokens,
                    max_output: u64::from(self.req.max_output_tokens),
                    cache: self.req.cache_system,
                    billing: Billing::Standard,
                    answer_tokens: 0,
                },
            )
        } else {
            0.0
        };
        let outcome = AttemptOutcome::Error(err.kind);
        rec.outcome = outcome;
        rec.error = Some(err.message.clone());
        rec.cost_usd = charged;
        rec.list_cost_usd = charged;
        sh.journal_call(rec).await;
        sh.budget.settle(reservation, charged);
        report.attempts.push(Attempt {
            model: model.alias.clone(),
            outcome,
            status: err.status,
            message: Some(err.message.clone()),
            waited_ms: None,
        });
        // A context-length error is never retried: only a larger window
        // helps (`CandidateError::context_length`).
        if err.kind == ErrorKind::ContextLength || !err.is_retryable() || out_of_retries {
            return Err(CandidateError::Provider {
                alias: model.alias.clone(),
                error: err,
            });
        }
        match err.retry_after {
            Some(w) if w > sh.options.max_retry_wait => Err(CandidateError::WaitTooLong {
                alias: model.alias.clone(),
                error: err,
                wait: w,
            }),
            after => Ok(Retry {
                after,
                error: err.message,
            }),
        }
    }
}
