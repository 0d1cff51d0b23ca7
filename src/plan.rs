//! The dry run: every step's prompt rendered, its tokens counted, its route
//! resolved with the rule that decided it, and its cost estimated — before
//! anything is spent.
//!
//! Building a plan is synchronous and does no network I/O. The same files
//! and inputs always give the same plan (it is serialized in declaration and
//! topological order only), so plans can be snapshot-tested and diffed.
//!
//! Token figures: prompts are rendered with the real inputs; an upstream
//! step's output is not known yet, so it is stood in for by a marker that
//! counts as that step's expected output tokens (or its maximum for the worst
//! case). A count is *exact* only when the tokenizer is the model's real one
//! and no upstream output is involved.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use minijinja::Environment;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::analyze::{Analysis, StepInfo};
use crate::cost::{self, Billing};
use crate::diagnostic::{Diagnostic, one_of};
use crate::inputs::{Inputs, ValueSource};
use crate::policy::{Locality, Model, Policy, Tier};
use crate::route::{self, Decision, Facts, TierUsage};
use crate::sensitivity::{self, Origin};
use crate::template::{self, Source};
use crate::tokens::{self, Tokenizer};
use crate::workflow::{Latency, Reasoning, Step};
use crate::yaml::pointer;

/// The tokenizer rule conditions (`input_tokens`) are evaluated with, so a
/// rule means the same thing whichever model it picks.
pub const RULE_TOKENIZER: Tokenizer = Tokenizer::O200kBase;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub workflow: NamedPath,
    pub policy: NamedPath,
    pub inputs: Vec<InputSummary>,
    pub steps: Vec<StepPlan>,
    pub totals: Totals,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedPath {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputSummary {
    pub name: String,
    pub source: ValueSource,
    pub sensitivity: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub id: String,
    pub task: String,
    pub reasoning: Reasoning,
    pub latency: Latency,
    pub tags: Vec<String>,
    pub depends_on: Vec<String>,
    pub sensitivity: SensitivityPlan,
    pub status: Status,
    /// Model calls the step makes (0 when skipped; one per item with `for_each`).
    pub calls: u64,
    pub fan_out: Option<FanOut>,
    pub route: Decision,
    pub model: Option<ModelRef>,
    pub tokens: TokenPlan,
    pub cost: CostRange,
    /// The same calls priced on the flagship model.
    pub flagship_cost: CostRange,
    /// Hash of the rendered messages (of the first call), for change review.
    pub prompt_sha256: String,
    /// When the policy asks for prompt caching on the step's model: whether
    /// the shared prefix (the system prompt) is long enough to be cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_cache: Option<PromptCachePlan>,
    /// Goes through the provider's batch API (`latency: batch` on OpenAI or
    /// Anthropic), priced at batch prices.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

/// The prompt-cache check of one step.
#[derive(Debug, Clone, Serialize)]
pub struct PromptCachePlan {
    pub ttl: crate::policy::CacheTtl,
    /// Tokens of the system prompt (of the first call), by the model's
    /// tokenizer; 0 without a system prompt.
    pub prefix_tokens: u64,
    /// The model's minimum cacheable prefix.
    pub min_tokens: u64,
    /// `prefix_tokens >= min_tokens`: the run marks it with `cache_control`.
    pub cacheable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SensitivityPlan {
    pub level: String,
    pub origin: Origin,
    /// May a cloud model see this step's data?
    pub cloud_allowed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Status {
    Runs,
    /// Runs only if a condition known at run time holds.
    Conditional(String),
    Skipped(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct FanOut {
    pub items: u64,
    /// False when the list comes from a step's output (unknown until run time).
    pub known: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRef {
    pub alias: String,
    pub provider: String,
    pub model: String,
    pub tier: Tier,
    pub locality: Locality,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenPlan {
    /// Input tokens over all calls, with upstream outputs at their expected size.
    pub input: u64,
    /// Input tokens over all calls, with upstream outputs at their maximum.
    pub input_worst: u64,
    pub input_exact: bool,
    pub tokenizer: Option<Tokenizer>,
    pub output_expected: u64,
    pub output_max: u64,
}

/// Low: expected output lengths. High: every answer at its maximum and every
/// upstream output at its maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CostRange {
    pub low: f64,
    pub high: f64,
}

impl std::ops::AddAssign for CostRange {
    fn add_assign(&mut self, o: CostRange) {
        self.low += o.low;
        self.high += o.high;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub calls: u64,
    pub conditional_calls: u64,
    pub skipped_steps: u64,
    pub cost: CostRange,
    pub by_tier: Vec<TierTotal>,
    pub flagship: Option<FlagshipComparison>,
    pub budget: Option<BudgetCheck>,
    pub exact_token_counts: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierTotal {
    pub tier: Tier,
    pub calls: u64,
    pub share_of_calls: f64,
    pub max_share_of_calls: Option<f64>,
    pub cost: CostRange,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlagshipComparison {
    pub model: String,
    pub provider_model: String,
    pub cost: CostRange,
    /// Percent saved by routing, on expected (low) costs.
    pub saving_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetCheck {
    pub run_usd: f64,
    pub worst_case_usd: f64,
    pub within: bool,
}

/// Typical answer length by task, when a step does not say; always capped by
/// `max_output_tokens`. Used only for the plan's expected (low) cost.
pub fn expected_output_tokens(step: &Step) -> u64 {
    let max = u64::from(step.max_output_tokens());
    if let Some(e) = step.expected_output_tokens {
        return u64::from(e).min(max);
    }
    let small_schema = step.output_schema().is_some_and(|s| {
        s.get("enum").is_some()
            || matches!(
                s.get("type").and_then(Value::as_str),
                Some("boolean" | "number" | "integer")
            )
    });
    let typical = if small_schema {
        5
    } else {
        match step.task.as_str() {
            "classify" | "label" | "route" | "triage" => 10,
            "extract" | "summarize" | "title" => 200,
            "format" | "boilerplate" | "translate" => 300,
            _ => max / 2,
        }
    };
    typical.clamp(1, max.max(1))
}

/// A marker that stands in for one instance of an upstream output while
/// rendering (instance `i` of a `for_each` step's list of outputs).
fn marker(step: &str, instance: u64) -> String {
    format!("\u{27E6}steps.{step}.output#{instance}\u{27E7}")
}

/// A value shaped like a step's output: the marker for text, a sample that
/// fits the schema for structured outputs (so `steps.x.output.field` renders),
/// and a list of those for a `for_each` step.
fn placeholder(step: &str, schema: Option<&Value>, fan_out: Option<u64>) -> Value {
    let one = |i: u64| match schema {
        None => Value::String(marker(step, i)),
        Some(s) => sample(s, &marker(step, i), 0),
    };
    match fan_out {
        None => one(0),
        Some(n) => Value::Array((0..n.max(1)).map(one).collect()),
    }
}

/// Upstream markers in a rendered text: (step, instance) per occurrence.
fn markers_in(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("\u{27E6}steps.") {
        let after = &rest[start + "\u{27E6}steps.".len()..];
        let Some(end) = after.find('\u{27E7}') else {
            break;
        };
        if let Some((step, instance)) = after[..end].split_once(".output#") {
            out.push((step, instance));
        }
        rest = &after[end..];
    }
    out
}

fn sample(schema: &Value, mark: &str, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(e) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return e.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return sample(first, mark, depth + 1);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut m = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    m.insert(k.clone(), sample(v, mark, depth + 1));
                }
            }
            Value::Object(m)
        }
        "array" => Value::Array(vec![sample(
            schema.get("items").unwrap_or(&Value::Null),
            mark,
            depth + 1,
        )]),
        "integer" | "number" => json!(0),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => Value::String(mark.to_owned()),
    }
}

/// One rendered call: its messages, with upstream outputs as markers.
struct RenderedCall {
    messages: Vec<String>,
}

/// A step after rendering, before routing.
struct Prepared {
    status: Status,
    calls: u64,
    fan_out: Option<FanOut>,
    rendered: Vec<RenderedCall>,
    /// Does any upstream output appear in the prompt?
    reads_upstream: bool,
}

/// Counts for one tokenizer.
#[derive(Clone, Copy, Default)]
struct Counts {
    /// Largest single call, expected and worst.
    max_call: u64,
    max_call_worst: u64,
    total: u64,
    total_worst: u64,
}

/// Builds the plan. Errors are bad input: exit code 2.
pub fn build(
    analysis: &Analysis,
    policy: &Policy,
    policy_path: &str,
    inputs: &Inputs,
) -> Result<Plan, Vec<Diagnostic>> {
    let mut diags = sensitivity::check_labels(analysis, policy);
    diags.extend(check_pins(analysis, policy));
    if !diags.is_empty() {
        return Err(diags);
    }
    let w = &analysis.workflow.value;
    let doc = analysis.doc();
    let effective = sensitivity::propagate(analysis, policy);
    let input_ctx: Map<String, Value> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();

    // Pass 1: decide what runs, fan out, render.
    let mut prepared: Vec<Option<Prepared>> = (0..analysis.steps.len()).map(|_| None).collect();
    // Items per `for_each` step, so readers of its list of outputs see as many.
    let mut fan_outs: HashMap<String, u64> = HashMap::new();
    let mut rendered_total = 0usize;
    for &i in analysis.dag.order() {
        let (id, info) = analysis.steps.get_index(i).expect("dag index");
        let deps = analysis.dag.dependencies(i);
        // A skipped dependency skips the step; otherwise a conditional one
        // makes it conditional.
        let dep_status = |want_skipped: bool| {
            deps.iter().find_map(|&d| {
                let dep = prepared[d].as_ref()?;
                let name = analysis.steps.get_index(d)?.0;
                match &dep.status {
                    Status::Skipped(_) if want_skipped => {
                        Some(Status::Skipped(format!("depends on skipped step `{name}`")))
                    }
                    Status::Conditional(_) if !want_skipped => Some(Status::Conditional(format!(
                        "runs only if step `{name}` runs"
                    ))),
                    _ => None,
                }
            })
        };
        let upstream_status = dep_status(true).or_else(|| dep_status(false));
        match prepare(
            &analysis.env,
            info,
            &input_ctx,
            w,
            upstream_status,
            &fan_outs,
        ) {
            Ok(p) => {
                if p.fan_out.is_some() {
                    fan_outs.insert(id.clone(), p.calls);
                }
                rendered_total += p
                    .rendered
                    .iter()
                    .flat_map(|c| c.messages.iter().map(String::len))
                    .sum::<usize>();
                if rendered_total > template::MAX_PLAN_RENDERED_BYTES {
                    diags.push(
                        Diagnostic::error(
                            "plan",
                            format!(
                                "the steps up to `{id}` render more than {} bytes together",
                                template::MAX_PLAN_RENDERED_BYTES
                            ),
                        )
                        .at(info.prompt.span(doc, 0, info.prompt.text.len()))
                        .with_help("a plan's prompts are bounded as a whole: render fewer or smaller prompts"),
                    );
                    break;
                }
                prepared[i] = Some(p);
            }
            Err(PrepareError::Template(source, err, what)) => {
                diags.push(source.error(doc, &err, &format!("{what} of step `{id}`")));
            }
            Err(PrepareError::Other(source, message, help)) => {
                diags.push(
                    Diagnostic::error("plan", message)
                        .at(source.span(doc, 0, source.text.len()))
                        .with_help(help),
                );
            }
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let prepared: Vec<Prepared> = prepared.into_iter().map(|p| p.expect("prepared")).collect();

    // Pass 2: route in execution order, so tier shares are consumed in the
    // order the run would consume them.
    let mut usage = TierUsage {
        total_calls: prepared
            .iter()
            .filter(|p| !matches!(p.status, Status::Skipped(_)))
            .map(|p| p.calls)
            .sum(),
        ..TierUsage::default()
    };
    let flagship = policy.flagship_model();
    // Every tokenizer a candidate or the flagship may need (at most three).
    let mut tokenizers: Vec<Tokenizer> = vec![RULE_TOKENIZER];
    for m in policy.models.values() {
        if !tokenizers.contains(&m.tokenizer) {
            tokenizers.push(m.tokenizer);
        }
    }
    let mut steps_out: Vec<Option<StepPlan>> = vec![None; analysis.steps.len()];
    for &i in analysis.dag.order() {
        let (id, _) = analysis.steps.get_index(i).expect("dag index");
        let step = &w.steps[id];
        let p = &prepared[i];
        let eff = &effective[i];
        let cache: HashMap<Tokenizer, Counts> =
            tokenizers.iter().map(|&t| (t, count(p, t, w))).collect();
        let counts = |tok: Tokenizer| cache.get(&tok).copied().unwrap_or_default();
        let rule_counts = counts(RULE_TOKENIZER);
        let tags: BTreeSet<String> = w.tags.iter().chain(step.tags.iter()).cloned().collect();
        let max_out = u64::from(step.max_output_tokens());
        let facts = Facts {
            task: &step.task,
            sensitivity: eff.level,
            input_tokens: rule_counts.max_call,
            reasoning: step.reasoning,
            latency: step.latency,
            tags: &tags,
            pin: step.model.as_deref(),
            max_output_tokens: max_out,
            calls: p.calls,
        };
        let decision = if matches!(p.status, Status::Skipped(_)) {
            // Route it anyway, so the plan still shows where it would go.
            route::route(
                policy,
                &Facts {
                    calls: 0,
                    ..facts.clone()
                },
                &TierUsage::default(),
                &|t| counts(t).max_call_worst,
            )
        } else {
            route::route(policy, &facts, &usage, &|t| counts(t).max_call_worst)
        };
        let model = decision.model.as_ref().and_then(|m| policy.models.get(m));
        if model.is_none() && !matches!(p.status, Status::Skipped(_)) {
            diags.push(no_route(analysis, policy, id, &decision, eff.level));
            continue;
        }
        let runs = !matches!(p.status, Status::Skipped(_));
        let calls = if runs { p.calls } else { 0 };
        if let (Some(m), true) = (model, runs) {
            *usage.used.entry(m.tier).or_insert(0) += calls;
        }
        let expected_out = expected_output_tokens(step) * calls;
        // `latency: batch` steps on a model with a batch API are priced as
        // the run will make them: through the batch, at batch prices.
        let step_batched = step.latency == Latency::Batch;
        let max_out_total = max_out * calls;
        let (tokens, cost) = match model {
            Some(m) if runs => {
                let c = counts(m.tokenizer);
                (
                    TokenPlan {
                        input: c.total,
                        input_worst: c.total_worst,
                        input_exact: m.tokenizer.is_exact() && !p.reads_upstream,
                        tokenizer: Some(m.tokenizer),
                        output_expected: expected_out,
                        output_max: max_out_total,
                    },
                    price(m, c, calls, expected_out, max_out_total, step_batched),
                )
            }
            _ => (TokenPlan::default(), CostRange::default()),
        };
        let flagship_cost = match flagship {
            Some(f) if runs => price(
                f,
                counts(f.tokenizer),
                calls,
                expected_out,
                max_out_total,
                step_batched,
            ),
            _ => CostRange::default(),
        };
        let prompt_sha256 = {
            let mut h = Sha256::new();
            if let Some(first) = p.rendered.first() {
                for m in &first.messages {
                    h.update(m.as_bytes());
                    h.update([0u8]);
                }
            }
            format!("{:x}", h.finalize())
        };
        let prompt_cache = model.filter(|_| runs).and_then(|m| {
            let ttl = m.prompt_cache?;
            let system = analysis.steps[i]
                .system
                .as_ref()
                .and(p.rendered.first())
                .and_then(|c| c.messages.first());
            let prefix_tokens = system.map_or(0, |s| m.tokenizer.count(s) as u64);
            Some(PromptCachePlan {
                ttl,
                prefix_tokens,
                min_tokens: m.prompt_cache_min_tokens,
                cacheable: prefix_tokens >= m.prompt_cache_min_tokens,
            })
        });
        let depends_on = analysis
            .dag
            .dependencies(i)
            .into_iter()
            .filter_map(|d| analysis.steps.get_index(d).map(|(k, _)| k.clone()))
            .collect();
        steps_out[i] = Some(StepPlan {
            id: id.clone(),
            task: step.task.clone(),
            reasoning: step.reasoning,
            latency: step.latency,
            tags: tags.into_iter().collect(),
            depends_on,
            sensitivity: SensitivityPlan {
                level: policy.level_name(eff.level).to_owned(),
                origin: eff.origin.clone(),
                cloud_allowed: eff.level <= policy.cloud_max,
            },
            status: p.status.clone(),
            calls,
            fan_out: p.fan_out.clone(),
            model: model.map(|m| ModelRef {
                alias: m.alias.clone(),
                provider: m.provider.clone(),
                model: m.model.clone(),
                tier: m.tier,
                locality: m.locality,
            }),
            route: decision,
            tokens,
            cost,
            flagship_cost,
            prompt_sha256,
            prompt_cache,
            batch: runs && step_batched && model.is_some_and(Model::has_batch_api),
        });
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let steps: Vec<StepPlan> = analysis
        .dag
        .order()
        .iter()
        .filter_map(|&i| steps_out[i].take())
        .collect();
    let totals = totals(&steps, policy, &usage);
    Ok(Plan {
        workflow: NamedPath {
            name: w.name.clone(),
            path: analysis.workflow.path().display().to_string(),
        },
        policy: NamedPath {
            name: policy.name.clone(),
            path: policy_path.to_owned(),
        },
        inputs: inputs
            .iter()
            .map(|(name, v)| InputSummary {
                name: name.clone(),
                source: v.source,
                sensitivity: w.inputs[name]
                    .sensitivity
                    .clone()
                    .unwrap_or_else(|| policy.level_name(policy.default_level).to_owned()),
            })
            .collect(),
        steps,
        totals,
    })
}

/// The step's `calls` calls together. A long-context tier is chosen by one
/// call's prompt, never by the step's sum: the expected cost at the average
/// call's tier, the worst case at the largest call's (so it is never low).
fn price(
    m: &Model,
    c: Counts,
    calls: u64,
    expected_out: u64,
    max_out: u64,
    batch: bool,
) -> CostRange {
    let billing = if batch && m.has_batch_api() {
        Billing::Batch
    } else {
        Billing::Standard
    };
    let at = |input, output, one_prompt| {
        let usage = crate::usage::Usage {
            input_tokens: input,
            output_tokens: output,
            ..Default::default()
        };
        cost::call_cost(&cost::tier_for(&m.price, one_prompt), &usage, billing)
    };
    CostRange {
        low: at(c.total, expected_out, c.total / calls.max(1)),
        high: at(c.total_worst, max_out, c.max_call_worst),
    }
}

fn count(p: &Prepared, tok: Tokenizer, w: &crate::workflow::Workflow) -> Counts {
    let mut c = Counts::default();
    let (mut sum, mut sum_worst) = (0u64, 0u64);
    for call in &p.rendered {
        let stripped: Vec<String> = call.messages.iter().map(|m| strip_markers(m)).collect();
        let refs: Vec<&str> = stripped.iter().map(String::as_str).collect();
        let base = tokens::count_chat(tok, &refs) as u64;
        let (extra, extra_worst) = upstream_tokens(&call.messages, w);
        c.max_call = c.max_call.max(base + extra);
        c.max_call_worst = c.max_call_worst.max(base + extra_worst);
        sum += base + extra;
        sum_worst += base + extra_worst;
    }
    // Calls beyond the rendered ones (a fan-out whose size is known only at
    // run time) are priced like the average rendered call.
    let rendered = p.rendered.len() as u64;
    let missing = p.calls.saturating_sub(rendered);
    let avg = |x: u64| x.checked_div(rendered).unwrap_or(0);
    c.total = sum + avg(sum) * missing;
    c.total_worst = sum_worst + avg(sum_worst) * missing;
    c
}

/// Tokens the upstream outputs shown in a call add: expected and worst case.
/// Text outputs count once per occurrence; a structured output counts once
/// per instance however many of its fields are shown.
fn upstream_tokens(messages: &[String], w: &crate::workflow::Workflow) -> (u64, u64) {
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    let (mut expected, mut worst) = (0u64, 0u64);
    for m in messages {
        for (step_id, instance) in markers_in(m) {
            let Some(step) = w.steps.get(step_id) else {
                continue;
            };
            if step.output_schema().is_some() && !seen.insert((step_id, instance)) {
                continue;
            }
            expected += expected_output_tokens(step);
            worst += u64::from(step.max_output_tokens());
        }
    }
    (expected, worst)
}

fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('\u{27E6}') {
        out.push_str(&rest[..start]);
        match rest[start..].find('\u{27E7}') {
            Some(end) => rest = &rest[start + end + '\u{27E7}'.len_utf8()..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

enum PrepareError {
    Template(Source, minijinja::Error, &'static str),
    Other(Source, String, String),
}

fn prepare(
    env: &Environment<'static>,
    info: &StepInfo,
    inputs: &Map<String, Value>,
    w: &crate::workflow::Workflow,
    upstream_status: Option<Status>,
    fan_outs: &HashMap<String, u64>,
) -> Result<Prepared, PrepareError> {
    // The step's context: exactly what the analysis says it reads, upstream
    // outputs as placeholders of the right shape.
    let context = |item: Option<&Value>| {
        info.context(
            inputs,
            |dep| {
                placeholder(
                    dep,
                    w.steps[dep].output_schema(),
                    fan_outs.get(dep).copied(),
                )
            },
            item,
        )
    };
    let base_ctx = context(None);
    let reads_steps = |s: &Source| -> Result<bool, PrepareError> {
        let refs = s
            .references(env)
            .map_err(|e| PrepareError::Template(s.clone(), e, "an expression"))?;
        Ok(refs.iter().any(|r| r.starts_with("steps.")))
    };

    let mut status = upstream_status.unwrap_or(Status::Runs);
    if let (Some(when), false) = (&info.when, matches!(status, Status::Skipped(_))) {
        if reads_steps(when)? {
            status = Status::Conditional(format!("when: {}", when.text.trim()));
        } else {
            let v = template::eval(env, &when.text, &base_ctx)
                .map_err(|e| PrepareError::Template(when.clone(), e, "`when`"))?;
            if !v.is_true() {
                status = Status::Skipped(format!("when is false: {}", when.text.trim()));
            }
        }
    }

    let mut items: Vec<Option<Value>> = vec![None];
    let mut fan_out = None;
    if let Some(fe) = &info.for_each {
        if reads_steps(fe)? {
            // The list comes from upstream outputs: evaluate it over their
            // placeholders, which have the right shape (a sample per schema,
            // one entry per known fan-out item); its size is known only at
            // run time.
            let evaluated = template::eval_list(env, &fe.text, &base_ctx).ok();
            items = match evaluated {
                Some(Value::Array(list)) if !list.is_empty() => {
                    list.into_iter().map(Some).collect()
                }
                _ => {
                    let source = fe
                        .references(env)
                        .ok()
                        .and_then(|r| {
                            r.iter().find_map(|r| {
                                r.strip_prefix("steps.")
                                    .and_then(|x| x.split('.').next())
                                    .map(str::to_owned)
                            })
                        })
                        .unwrap_or_default();
                    vec![Some(Value::String(marker(&source, 0)))]
                }
            };
            fan_out = Some(FanOut {
                items: items.len() as u64,
                known: false,
            });
        } else {
            let list = template::eval_list(env, &fe.text, &base_ctx)
                .map_err(|e| PrepareError::Template(fe.clone(), e, "`for_each`"))?;
            let Value::Array(list) = list else {
                return Err(PrepareError::Other(
                    fe.clone(),
                    format!(
                        "`for_each` of step `{}` must give a list, got {}",
                        info.id,
                        kind_of(&list)
                    ),
                    "for_each takes an expression such as `inputs.files` that evaluates to a list"
                        .to_owned(),
                ));
            };
            fan_out = Some(FanOut {
                items: list.len() as u64,
                known: true,
            });
            if list.is_empty() {
                // Nothing to render: the step makes no call.
                let status = match status {
                    Status::Skipped(why) => Status::Skipped(why),
                    _ => Status::Skipped("for_each list is empty".to_owned()),
                };
                return Ok(Prepared {
                    status,
                    calls: 0,
                    fan_out,
                    rendered: Vec::new(),
                    reads_upstream: false,
                });
            }
            items = list.into_iter().map(Some).collect();
        }
    }

    let mut rendered = Vec::with_capacity(items.len());
    let mut total = 0usize;
    for item in &items {
        let ctx = context(item.as_ref());
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = &info.system {
            messages.push(
                template::render(env, &s.text, &ctx)
                    .map_err(|e| PrepareError::Template(s.clone(), e, "the system prompt"))?,
            );
        }
        messages.push(
            template::render(env, &info.prompt.text, &ctx)
                .map_err(|e| PrepareError::Template(info.prompt.clone(), e, "the prompt"))?,
        );
        total += messages.iter().map(String::len).sum::<usize>();
        if total > template::MAX_STEP_RENDERED_BYTES {
            return Err(PrepareError::Other(
                info.prompt.clone(),
                format!(
                    "the calls of step `{}` render more than {} bytes together",
                    info.id,
                    template::MAX_STEP_RENDERED_BYTES
                ),
                "a step's prompts (one per for_each item) are bounded as a whole: fan out over fewer or smaller items".to_owned(),
            ));
        }
        rendered.push(RenderedCall { messages });
    }

    let reads_upstream = rendered
        .iter()
        .any(|c| c.messages.iter().any(|m| !markers_in(m).is_empty()));
    let calls = match &fan_out {
        Some(f) => f.items,
        None => 1,
    };
    Ok(Prepared {
        status,
        calls,
        fan_out,
        rendered,
        reads_upstream,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn check_pins(analysis: &Analysis, policy: &Policy) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for (id, step) in &analysis.workflow.value.steps {
        if let Some(pin) = &step.model {
            if !policy.models.contains_key(pin) {
                diags.push(
                    Diagnostic::error(
                        "unknown-model",
                        format!("step `{id}` is pinned to unknown model `{pin}`"),
                    )
                    .at(analysis
                        .doc()
                        .span(&pointer(["steps", id.as_str(), "model"])))
                    .with_label(format!("not a model of policy `{}`", policy.name))
                    .with_help(
                        crate::diagnostic::did_you_mean(
                            pin,
                            policy.models.keys().map(String::as_str),
                        )
                        .unwrap_or_else(|| {
                            format!(
                                "models: {}",
                                one_of(policy.models.keys().map(String::as_str))
                            )
                        }),
                    ),
                );
            }
        }
    }
    diags
}

fn no_route(
    analysis: &Analysis,
    policy: &Policy,
    id: &str,
    d: &Decision,
    level: usize,
) -> Diagnostic {
    let at = analysis.doc().key_span(&pointer(["steps", id]));
    let Some(decider) = &d.decider else {
        return Diagnostic::error(
            "no-route",
            format!("no rule of policy `{}` matches step `{id}`", policy.name),
        )
        .at(at)
        .with_help("add a rule without `when` at the end of the policy as a catch-all");
    };
    let reasons: Vec<String> = d
        .passed_over
        .iter()
        .map(|r| format!("{}: {}", r.model, r.why))
        .collect();
    let local_exists = policy
        .models
        .values()
        .any(|m| m.locality == Locality::Local);
    let help = if level > policy.cloud_max && !local_exists {
        format!(
            "the step is {} and policy `{}` has no local model; add one (e.g. an Ollama or llama.cpp server)",
            policy.level_name(level),
            policy.name
        )
    } else {
        "add a fallback that fits to the model's `fallbacks`, or a rule above this one".to_owned()
    };
    Diagnostic::error(
        "no-route",
        format!(
            "no model can serve step `{id}` ({}): {}",
            decider.label(),
            reasons.join("; ")
        ),
    )
    .at(at)
    .with_help(help)
}

fn totals(steps: &[StepPlan], policy: &Policy, usage: &TierUsage) -> Totals {
    let mut cost = CostRange::default();
    let mut flagship_cost = CostRange::default();
    let mut by_tier: BTreeMap<Tier, (u64, CostRange)> = BTreeMap::new();
    let (mut calls, mut conditional_calls, mut skipped) = (0, 0, 0);
    let mut exact = true;
    for s in steps {
        match s.status {
            Status::Skipped(_) => {
                skipped += 1;
                continue;
            }
            Status::Conditional(_) => conditional_calls += s.calls,
            Status::Runs => {}
        }
        calls += s.calls;
        cost += s.cost;
        flagship_cost += s.flagship_cost;
        exact &= s.tokens.input_exact;
        if let Some(m) = &s.model {
            let e = by_tier.entry(m.tier).or_default();
            e.0 += s.calls;
            e.1 += s.cost;
        }
    }
    let total_calls = usage.total_calls.max(1) as f64;
    let flagship = policy.flagship_model().map(|f| FlagshipComparison {
        model: f.alias.clone(),
        provider_model: f.model.clone(),
        cost: flagship_cost,
        saving_percent: if flagship_cost.low > 0.0 {
            (1.0 - cost.low / flagship_cost.low) * 100.0
        } else {
            0.0
        },
    });
    Totals {
        calls,
        conditional_calls,
        skipped_steps: skipped,
        cost,
        by_tier: by_tier
            .into_iter()
            .map(|(tier, (c, cost))| TierTotal {
                tier,
                calls: c,
                share_of_calls: c as f64 / total_calls,
                max_share_of_calls: policy.tier_shares.get(&tier).copied(),
                cost,
            })
            .collect(),
        flagship,
        budget: policy.run_budget_usd.map(|b| BudgetCheck {
            run_usd: b,
            worst_case_usd: cost.high,
            within: cost.high <= b,
        }),
        exact_token_counts: exact,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_stripped() {
        assert_eq!(
            strip_markers("a ⟦steps.x.output#0⟧ b ⟦steps.y.output#1⟧"),
            "a  b "
        );
        assert_eq!(
            markers_in("⟦steps.x.output#0⟧ ⟦steps.y.output#1⟧"),
            vec![("x", "0"), ("y", "1")]
        );
    }

    #[test]
    fn samples_fit_their_schema() {
        let s = json!({"type": "object", "properties": {"label": {"enum": ["bug", "feature"]}, "why": {"type": "string"}}});
        assert_eq!(sample(&s, "M", 0), json!({"label": "bug", "why": "M"}));
        assert_eq!(
            placeholder("x", None, Some(2)),
            json!(["⟦steps.x.output#0⟧", "⟦steps.x.output#1⟧"])
        );
    }
}
