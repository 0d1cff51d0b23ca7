//! The dry run: every step's prompt rendered, its tokens counted, its route
//! resolved with the rule that decided it, and its cost estimated — before
//! anything is spent.
//!
//! Building a plan is synchronous and does no network I/O. The same files
//! and inputs always give the same plan (it is serialized in declaration and
//! topological order only), so plans can be snapshot-tested and diffed.
//!
//! What a step means — `when`, `for_each`, its rendered calls, tags and
//! routing facts — comes from [`crate::step::expand`], the function `run`
//! calls too; the plan gives it stand-ins for upstream outputs
//! ([`estimate`]). Token figures: prompts are rendered with the real inputs;
//! see [`estimate`] for how upstream outputs are counted.

pub mod compare;
mod estimate;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use estimate::{Counts, Placeholders, Tally, price};
pub use estimate::{estimated_output, expected_output_tokens};

use crate::analyze::Analysis;
use crate::diagnostic::{Diagnostic, one_of};
use crate::inputs::{Inputs, ValueSource};
use crate::policy::{Locality, Model, Policy, Tier};
use crate::route::{self, Decision, Facts, TierUsage};
use crate::sensitivity::{self, Origin};
use crate::step::{self, Expanded, RenderedCall, Upstream};
use crate::template;
use crate::tokens::Tokenizer;
use crate::workflow::{Latency, Reasoning};
use crate::yaml::pointer;

pub use crate::step::{FanOut, RULE_TOKENIZER, When as Status};

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub workflow: NamedPath,
    pub policy: NamedPath,
    pub inputs: Vec<InputSummary>,
    pub steps: Vec<StepPlan>,
    pub totals: Totals,
    /// The local servers `run` starts for the steps' models (`launch`),
    /// unless something already answers on their ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerPlan>,
}

/// A provider's launched servers (one, or one per endpoint of a pool).
#[derive(Debug, Clone, Serialize)]
pub struct ServerPlan {
    pub provider: String,
    /// `llama-server` or `ollama serve`.
    pub server: &'static str,
    /// `host:port` of each server, with the calls it takes at once.
    pub addresses: Vec<ServerAddress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerAddress {
    pub address: String,
    pub slots: u32,
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
    /// A streamed input given as a file: which one, checked to hold what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streamed: Option<StreamedSummary>,
}

/// A streamed list's file as the plan shows it: its name (not its folder,
/// so a plan reads the same on every machine), its items and its SHA-256.
#[derive(Debug, Clone, Serialize)]
pub struct StreamedSummary {
    pub file: String,
    pub items: u64,
    pub sha256: String,
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
    /// Every call's: [`calls_sha256`].
    pub prompt_sha256: String,
    /// When the policy asks for prompt caching on the step's model: whether
    /// the shared prefix (the system prompt) is long enough to be cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_cache: Option<PromptCachePlan>,
    /// What the step's `retrieve` found: the documents' tokens before, the
    /// retrieved chunks' after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<crate::context::retrieval::Stats>,
    /// What the step's `history` did to the conversation's turns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::context::history::Stats>,
    /// Goes through the provider's batch API (`latency: batch` on OpenAI or
    /// Anthropic), priced at batch prices.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
    /// The rule's cascade: the model above answers first, the escalation
    /// target when a check fails. `cost` then counts both: expected at the
    /// escalation rate, worst case with every call escalated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cascade: Option<CascadePlan>,
    /// What context management did to the step's calls, and what it saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextPlan>,
    /// A `reasoning:` other than `standard`: the knob sent to the routed
    /// model, or why none is ([`crate::reasoning`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_knob: Option<ReasoningPlan>,
    /// Each rule with a `router:` condition, in rule order: the router's
    /// score of this step's prompt against the rule's threshold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<RouterPlan>,
}

/// What a step's reasoning level becomes on its model.
#[derive(Debug, Clone, Serialize)]
pub struct ReasoningPlan {
    /// Sent as the provider's knob.
    pub sent: bool,
    /// The knob as the provider receives it, or why nothing is sent.
    pub detail: String,
    /// Thinking tokens added to each call's output limit (priced as output).
    pub budget_tokens: u64,
}

/// One learned router's verdict on a step, for one rule.
#[derive(Debug, Clone, Serialize)]
pub struct RouterPlan {
    pub rule: String,
    pub file: String,
    /// `None` when the step makes no call (nothing to score).
    pub score: Option<f64>,
    pub threshold: Option<f64>,
    /// The condition holds: the score is above the threshold.
    pub holds: bool,
}

/// Context management on one step, priced on its routed model.
#[derive(Debug, Clone, Serialize)]
pub struct ContextPlan {
    #[serde(flatten)]
    pub effect: crate::context::Effect,
    /// Calls the strategy adds (a chunked step: one per chunk beyond the
    /// single call it replaces).
    pub extra_calls: u64,
    /// Expected cost without context management less the step's expected
    /// cost, on the same model (negative when it costs more: chunks on a
    /// paid model repeat the prompt and the overlap).
    pub saved_usd: f64,
}

/// Context management over the plan: a lever of its own, next to routing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ContextTotal {
    pub steps: u64,
    pub tokens_before: u64,
    pub tokens_after: u64,
    pub extra_calls: u64,
    pub saved_usd: f64,
}

/// A step's cascade as planned.
#[derive(Debug, Clone, Serialize)]
pub struct CascadePlan {
    pub rule: String,
    /// The model escalated calls go to (the target, or its first fallback
    /// that passes the gate and fits).
    pub to: ModelRef,
    /// The checks that escalate.
    pub when: Vec<crate::policy::EscalateWhen>,
    /// The share of calls expected to escalate.
    pub rate: f64,
    /// Where `rate` comes from.
    pub rate_source: RateSource,
    /// The first calls alone.
    pub first_cost: CostRange,
    /// Every call on the escalation target.
    pub escalated_cost: CostRange,
    /// The judge that scores every first answer (`when: [judge]`): where
    /// it is routed and what judging every first answer costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgePlan>,
}

/// A cascade's judge as planned: a call of task `judge` per first answer,
/// routed by the policy (the step's sensitivity carried over).
#[derive(Debug, Clone, Serialize)]
pub struct JudgePlan {
    pub model: ModelRef,
    pub rule: Option<String>,
    pub cost: CostRange,
}

/// Where a cascade's expected escalation rate comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum RateSource {
    /// The journal: this rule's first answers under this policy, and how
    /// many escalated.
    History { escalated: u64, answers: u64 },
    /// No history: [`DEFAULT_ESCALATION_RATE`].
    Default,
}

/// The escalation rate a plan assumes for a cascade the journal has no
/// history of: 30%, a deliberately pessimistic share (a cheap model that
/// fails its check more often than that is not worth a cascade).
pub const DEFAULT_ESCALATION_RATE: f64 = 0.3;

/// Escalation history by rule name: (escalated, first answers), from the
/// journal (`Journal::escalation_history`); empty without one.
pub type EscalationHistory = std::collections::BTreeMap<String, (u64, u64)>;

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
    /// Tokens up to the end of the prefix every call's prompt shares
    /// (system prompt included), when it reaches `min_tokens`: the run
    /// marks it too (Anthropic: `cache_control` on that user block).
    #[serde(skip_serializing_if = "is_zero")]
    pub shared_prefix_tokens: u64,
    /// Input tokens the step's calls are expected to read from the cache:
    /// the shared prefix, once per call after the first.
    #[serde(skip_serializing_if = "is_zero")]
    pub expected_read_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct SensitivityPlan {
    pub level: String,
    pub origin: Origin,
    /// May a cloud model see this step's data?
    pub cloud_allowed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRef {
    pub alias: String,
    pub provider: String,
    pub model: String,
    pub tier: Tier,
    pub locality: Locality,
    /// How many servers the provider's pool has (absent for a provider at
    /// one address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenPlan {
    /// Input tokens over all calls, with upstream outputs at their expected size.
    pub input: u64,
    /// Input tokens over all calls, with upstream outputs at their maximum.
    pub input_worst: u64,
    pub input_exact: bool,
    /// Of `input`, the estimate for the step's images and PDFs (the
    /// model's provider's rule, `attachment`); they make `input` an
    /// estimate.
    #[serde(skip_serializing_if = "is_zero")]
    pub attachments: u64,
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
    /// Present when a step manages its context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextTotal>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierTotal {
    pub tier: Tier,
    pub calls: u64,
    pub share_of_calls: f64,
    pub max_share_of_calls: Option<f64>,
    /// The share as routing applies it: at most this many of the run's
    /// calls (`route::max_calls`).
    pub max_calls: Option<u64>,
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

/// A step after expansion, before routing: its calls hold upstream outputs
/// as markers.
struct Prepared {
    expanded: Expanded,
}

impl Prepared {
    fn status(&self) -> &Status {
        &self.expanded.when
    }

    fn calls(&self) -> u64 {
        if self.expanded.is_empty() {
            0
        } else {
            self.expanded.call_count()
        }
    }
}

/// Pass 1 of the plan: every step expanded by [`step::expand`] in execution
/// order, upstream outputs as placeholders, with what its dependencies
/// decided (a skipped dependency skips it; otherwise a conditional one makes
/// it conditional). Every step's errors are reported, not only the first.
fn prepare_all(
    analysis: &Analysis,
    policy: &Policy,
    inputs: &Inputs,
    levels: &[usize],
) -> Result<Vec<Prepared>, Vec<Diagnostic>> {
    let doc = analysis.doc();
    let input_ctx: Map<String, Value> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    let files = crate::inputs::files(inputs);
    let streams = crate::inputs::streams(inputs);
    let mut diags = Vec::new();
    let mut prepared: Vec<Option<Prepared>> = (0..analysis.steps.len()).map(|_| None).collect();
    // Items per `for_each` step, so readers of its list of outputs see as many.
    let mut fan_outs: HashMap<String, u64> = HashMap::new();
    let mut rendered_total = 0usize;
    for &i in analysis.dag.order() {
        let (id, info) = analysis.steps.get_index(i).expect("dag index");
        let deps = analysis.dag.dependencies(i);
        let dep_status = |want_skipped: bool| {
            deps.iter().find_map(|&d| {
                let dep = prepared[d].as_ref()?;
                let name = analysis.steps.get_index(d)?.0;
                match dep.status() {
                    // A history's summary is skipped when there is nothing
                    // to summarize; the step it serves still runs.
                    Status::Skipped(_) if crate::context::history::is_summary_step(name) => None,
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
        let inherited = dep_status(true)
            .or_else(|| dep_status(false))
            .unwrap_or(Status::Runs);
        let placeholders = Placeholders {
            workflow: &analysis.workflow.value,
            fan_outs: &fan_outs,
        };
        let scope = step::Scope {
            analysis,
            policy,
            index: i,
            inputs: &input_ctx,
            files: &files,
            streams: &streams,
            levels,
            upstream: Upstream::Estimated(&placeholders),
        };
        let expanded = match step::expand(&scope, inherited) {
            Ok(e) => e,
            Err(e) => {
                diags.push(e.diagnostic(doc));
                continue;
            }
        };
        if expanded.fan_out.is_some() {
            fan_outs.insert(id.clone(), expanded.call_count());
        }
        // A step that reads a fan-out's output holds every answer (and a
        // plan, a stand-in for each): bounded as a held list is. Only a
        // streamed list can fan out wider.
        if expanded.call_count() > template::MAX_FOR_EACH_ITEMS as u64 {
            let mut readers = analysis
                .steps
                .values()
                .filter(|r| r.reads_steps.contains(id))
                .peekable();
            // Its readers are not expanded: their stand-ins alone would
            // be one per item.
            let stop = readers.peek().is_some();
            for reader in readers {
                diags.push(
                    Diagnostic::error(
                        "plan",
                        format!(
                            "step `{}` reads the output of step `{id}`, which fans out over {} items: a step can read at most {} answers",
                            reader.id,
                            expanded.call_count(),
                            template::MAX_FOR_EACH_ITEMS
                        ),
                    )
                    .at(reader.prompt.span(doc, 0, reader.prompt.text.len()))
                    .with_help(
                        "a streamed fan-out's answers go to --out and stdout; read a smaller list, or split the input into files of at most that many items",
                    ),
                );
            }
            if stop {
                break;
            }
        }
        // A streamed step's calls are never held (bounded on their own).
        if !expanded.is_streamed() {
            rendered_total += expanded.rendered_bytes();
        }
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
                .with_help(
                    "a plan's prompts are bounded as a whole: render fewer or smaller prompts",
                ),
            );
            break;
        }
        prepared[i] = Some(Prepared { expanded });
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(prepared.into_iter().map(|p| p.expect("prepared")).collect())
}

/// Builds the plan. Errors are bad input: exit code 2. Cascades are
/// estimated at [`DEFAULT_ESCALATION_RATE`]; see [`build_with_history`].
pub fn build(
    analysis: &Analysis,
    policy: &Policy,
    policy_path: &str,
    inputs: &Inputs,
) -> Result<Plan, Vec<Diagnostic>> {
    build_with_history(
        analysis,
        policy,
        policy_path,
        inputs,
        &EscalationHistory::new(),
    )
}

/// [`build`], with cascades estimated at the escalation rates the journal
/// saw for their rules (`history`), where it saw any.
pub fn build_with_history(
    analysis: &Analysis,
    policy: &Policy,
    policy_path: &str,
    inputs: &Inputs,
    history: &EscalationHistory,
) -> Result<Plan, Vec<Diagnostic>> {
    let mut diags = sensitivity::check_labels(analysis, policy);
    diags.extend(check_pins(analysis, policy));
    if !diags.is_empty() {
        return Err(diags);
    }
    let w = &analysis.workflow.value;
    let effective = sensitivity::propagate(analysis, policy);
    let levels: Vec<usize> = effective.iter().map(|e| e.level).collect();
    let prepared = prepare_all(analysis, policy, inputs, &levels)?;

    // Pass 2: route in execution order, so tier shares are consumed in the
    // order the run would consume them.
    let mut usage = TierUsage {
        total_calls: prepared
            .iter()
            .filter(|p| !p.status().is_skipped())
            .map(Prepared::calls)
            .sum(),
        ..TierUsage::default()
    };
    // Every tokenizer a candidate or the flagship may need (at most three).
    let mut tokenizers: Vec<Tokenizer> = vec![RULE_TOKENIZER];
    for m in policy.models.values() {
        if !tokenizers.contains(&m.tokenizer) {
            tokenizers.push(m.tokenizer);
        }
    }
    let router = Router {
        analysis,
        policy,
        effective: &effective,
        tokenizers: &tokenizers,
        history,
    };
    let mut steps_out: Vec<Option<StepPlan>> = vec![None; analysis.steps.len()];
    for &i in analysis.dag.order() {
        match router.plan_step(i, &prepared[i], &mut usage) {
            Ok(s) => steps_out[i] = Some(s),
            Err(d) => diags.push(d),
        }
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
    let servers = servers(&steps, policy);
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
                streamed: v.stream.as_ref().map(|l| StreamedSummary {
                    file: l
                        .path()
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    items: l.len(),
                    sha256: l.sha256().to_owned(),
                }),
            })
            .collect(),
        steps,
        totals,
        servers,
    })
}

/// The servers the steps' models need launched, per provider in the
/// policy's order.
fn servers(steps: &[StepPlan], policy: &Policy) -> Vec<ServerPlan> {
    let used: std::collections::BTreeSet<&str> = steps
        .iter()
        .filter_map(|s| s.model.as_ref())
        .map(|m| m.provider.as_str())
        .collect();
    policy
        .providers
        .iter()
        .filter(|(name, p)| used.contains(name.as_str()) && !p.launch.is_empty())
        .map(|(name, p)| ServerPlan {
            provider: name.clone(),
            server: match p.launch[0].server {
                crate::policy::Server::LlamaServer => "llama-server",
                crate::policy::Server::Ollama => "ollama serve",
            },
            addresses: p
                .launch
                .iter()
                .map(|l| ServerAddress {
                    address: if l.host.contains(':') {
                        format!("[{}]:{}", l.host, l.port)
                    } else {
                        format!("{}:{}", l.host, l.port)
                    },
                    slots: l.slots,
                })
                .collect(),
        })
        .collect()
}

/// What pass 2 of the plan (routing and pricing) reads for every step.
struct Router<'a> {
    analysis: &'a Analysis,
    policy: &'a Policy,
    effective: &'a [sensitivity::Effective],
    tokenizers: &'a [Tokenizer],
    history: &'a EscalationHistory,
}

impl Router<'_> {
    /// The judge of a cascade that escalates on a judge's score: routed
    /// like a step of task `judge` reading the step's answer (its
    /// sensitivity, so the gate keeps a confidential step's judge local),
    /// one judge call per first answer, priced with the answer at its
    /// expected and at its largest size. A judge no model can serve is an
    /// error, as for a step.
    fn judge(
        &self,
        id: &str,
        rule: &crate::policy::Rule,
        step: &crate::workflow::Step,
        facts: &Facts<'_>,
        calls: u64,
        usage: &mut TierUsage,
    ) -> Result<Option<JudgePlan>, Diagnostic> {
        let Some(check) = rule.escalate.as_ref().and_then(|c| c.judged()) else {
            return Ok(None);
        };
        let policy = self.policy;
        let judge_step = crate::judge::step();
        let asked = crate::judge::call(&check.rubric, "");
        let answer = estimate::expected_output_tokens(step);
        let answer_max = u64::from(step.max_output_tokens());
        let counts = |t: Tokenizer, answer: u64| {
            crate::tokens::count_chat(t, &asked.messages().collect::<Vec<_>>()) as u64 + answer
        };
        let no_tags = std::collections::BTreeSet::new();
        let judge_facts = crate::judge::facts(facts, &no_tags, counts(RULE_TOKENIZER, answer));
        let judge_facts = Facts {
            calls,
            ..judge_facts
        };
        let decision = route::route(policy, &judge_facts, usage, &|t| counts(t, answer_max));
        let Some(m) = decision.model.as_ref().and_then(|m| policy.models.get(m)) else {
            let why: Vec<String> = decision
                .passed_over
                .iter()
                .map(|r| format!("{}: {}", r.model, r.why))
                .collect();
            return Err(Diagnostic::error(
                "judge-unroutable",
                format!(
                    "no model of policy `{}` can judge step `{id}` for rule `{}`{}",
                    policy.name,
                    rule.name,
                    if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
                ),
            )
            .at(self.analysis.doc().key_span(&pointer(["steps", id])))
            .with_help("the judge is routed as task `judge` at the step's sensitivity: add a rule (or a local model) that serves it"));
        };
        *usage.used.entry(m.tier).or_insert(0) += calls;
        let one = |answer: u64| {
            let n = counts(m.tokenizer, answer);
            Counts {
                max_call: n,
                max_call_worst: n,
                total: n * calls,
                total_worst: n * calls,
            }
        };
        let out = estimate::expected_output_tokens(&judge_step) * calls;
        let out_max = u64::from(judge_step.max_output_tokens()) * calls;
        let low = price(m, one(answer), calls, out, out_max, false);
        let high = price(m, one(answer_max), calls, out, out_max, false);
        Ok(Some(JudgePlan {
            model: model_ref(policy, m),
            rule: match &decision.decider {
                Some(route::Decider::Rule { name, .. }) => Some(name.clone()),
                _ => None,
            },
            cost: CostRange {
                low: low.low,
                high: high.high,
            },
        }))
    }

    /// Routes and prices one prepared step, taking its calls from `usage`
    /// (tier shares, in execution order).
    fn plan_step(
        &self,
        i: usize,
        p: &Prepared,
        usage: &mut TierUsage,
    ) -> Result<StepPlan, Diagnostic> {
        let (analysis, policy) = (self.analysis, self.policy);
        let w = &analysis.workflow.value;
        let (id, _) = analysis.steps.get_index(i).expect("dag index");
        let step = &w.steps[id];
        // What the step receives decides its level: retrieved chunks may
        // raise it above what its templates read.
        let received;
        let eff = if p.expanded.level > self.effective[i].level {
            let set =
                step.retrieve.iter().flat_map(|r| &r.from).find(|s| {
                    sensitivity::documents_level(analysis, policy, s) == p.expanded.level
                });
            received = sensitivity::Effective {
                level: p.expanded.level,
                origin: sensitivity::Origin::Documents(set.cloned().unwrap_or_default()),
            };
            &received
        } else {
            &self.effective[i]
        };
        // Every call counted by every tokenizer in one pass (a fan-out's
        // calls are rendered again for it: see `Expanded::calls`), once the
        // whole plan is within its bounds on rendered text.
        let mut tally = Tally::new(self.tokenizers);
        for c in p.expanded.calls() {
            let c = c.map_err(|e| e.diagnostic(analysis.doc()))?;
            tally.add(&c, w);
        }
        let cache: HashMap<Tokenizer, Counts> = self
            .tokenizers
            .iter()
            .map(|&t| (t, tally.counts(t, p.calls())))
            .collect();
        let counts = |tok: Tokenizer| cache.get(&tok).copied().unwrap_or_default();
        // A model's counts: the text by its tokenizer, plus what its
        // provider bills for the step's attachments in every call.
        let attachments = p.expanded.attachments.as_slice();
        let model_counts = |m: &Model| {
            let mut c = counts(m.tokenizer);
            let a = crate::attachment::tokens(attachments, m.provider_kind);
            let n = p.calls().max(1);
            c.max_call += a;
            c.max_call_worst += a;
            c.total += a * n;
            c.total_worst += a * n;
            c
        };
        let facts = p.expanded.facts(step, counts(RULE_TOKENIZER).max_call);
        let runs = !p.status().is_skipped();
        let decision = if runs {
            route::route(policy, &facts, usage, &|t| counts(t).max_call_worst)
        } else {
            // Route it anyway, so the plan still shows where it would go.
            route::route(
                policy,
                &Facts { calls: 0, ..facts },
                &TierUsage::default(),
                &|t| counts(t).max_call_worst,
            )
        };
        let model = decision.model.as_ref().and_then(|m| policy.models.get(m));
        if model.is_none() && runs {
            return Err(no_route(analysis, policy, id, &decision, eff.level));
        }
        let calls = if runs { p.calls() } else { 0 };
        if let (Some(m), true) = (model, runs) {
            *usage.used.entry(m.tier).or_insert(0) += calls;
        }
        // Per model, the answer's tokens plus the thinking budget its
        // reasoning knob adds (billed as output; counted as spent).
        let outputs = |m: &Model| {
            let extra = u64::from(crate::reasoning::for_step(step, m).extra_output());
            (
                (expected_output_tokens(step) + extra) * calls,
                (u64::from(step.max_output_tokens()) + extra) * calls,
            )
        };
        let (expected_out, max_out_total) = model.map_or(
            (
                expected_output_tokens(step) * calls,
                u64::from(step.max_output_tokens()) * calls,
            ),
            outputs,
        );
        let cascade = match (model, runs) {
            (Some(m), true) => {
                self.cascade(id, &decision, m, &facts, &|t| counts(t).max_call_worst)?
            }
            _ => None,
        };
        let judge = match &cascade {
            Some((_, rule, _, _)) => self.judge(id, rule, step, &facts, calls, usage)?,
            None => None,
        };
        // `latency: batch` steps on a model with a batch API are priced as
        // the run will make them: through the batch, at batch prices (a
        // cascade's calls are made one by one).
        let step_batched = step.latency == Latency::Batch && cascade.is_none();
        let (tokens, cost) = match model {
            Some(m) if runs => {
                let c = model_counts(m);
                (
                    TokenPlan {
                        attachments: crate::attachment::tokens(attachments, m.provider_kind)
                            * calls,
                        input: c.total,
                        input_worst: c.total_worst,
                        input_exact: m.tokenizer.is_exact()
                            && !tally.reads_upstream
                            && attachments.is_empty(),
                        tokenizer: Some(m.tokenizer),
                        output_expected: expected_out,
                        output_max: max_out_total,
                    },
                    price(m, c, calls, expected_out, max_out_total, step_batched),
                )
            }
            _ => (TokenPlan::default(), CostRange::default()),
        };
        // A cascade: the first calls, plus the escalated share of the same
        // calls on the target (all of them in the worst case).
        let cascade = cascade.map(|(to, rule, rate, rate_source)| {
            let (to_expected, to_max) = outputs(to);
            let escalated_cost = price(to, model_counts(to), calls, to_expected, to_max, false);
            CascadePlan {
                rule: rule.name.clone(),
                to: model_ref(policy, to),
                when: rule
                    .escalate
                    .as_ref()
                    .map(|c| c.when.iter().copied().collect())
                    .unwrap_or_default(),
                rate,
                rate_source,
                first_cost: cost,
                escalated_cost,
                judge: judge.clone(),
            }
        });
        let cost = match &cascade {
            Some(c) => {
                // Every first answer is judged.
                let judged = c.judge.as_ref().map(|j| j.cost).unwrap_or_default();
                CostRange {
                    low: cost.low + c.rate * c.escalated_cost.low + judged.low,
                    high: cost.high + c.escalated_cost.high + judged.high,
                }
            }
            None => cost,
        };
        let flagship_cost = match policy.flagship_model() {
            Some(f) if runs => {
                let (f_expected, f_max) = outputs(f);
                price(f, model_counts(f), calls, f_expected, f_max, step_batched)
            }
            _ => CostRange::default(),
        };
        let context = match (&p.expanded.context, model) {
            (Some(effect), Some(m)) if runs => {
                let c = counts(m.tokenizer);
                // The same step without context management, on the same
                // model: the o200k difference added to the model's counts.
                let (before, before_calls) = if effect.chunks.is_some() {
                    let one = effect.tokens_before;
                    let worst = one + c.max_call_worst.saturating_sub(c.max_call);
                    (
                        Counts {
                            max_call: one,
                            max_call_worst: worst,
                            total: one,
                            total_worst: worst,
                        },
                        1,
                    )
                } else {
                    let delta = effect.tokens_before.saturating_sub(effect.tokens_after);
                    let per_call = delta / calls.max(1);
                    (
                        Counts {
                            max_call: c.max_call + per_call,
                            max_call_worst: c.max_call_worst + per_call,
                            total: c.total + delta,
                            total_worst: c.total_worst + delta,
                        },
                        calls,
                    )
                };
                let extra = u64::from(crate::reasoning::for_step(step, m).extra_output());
                let out = (expected_output_tokens(step) + extra) * before_calls;
                let max_out = (u64::from(step.max_output_tokens()) + extra) * before_calls;
                let without = price(m, before, before_calls, out, max_out, step_batched);
                Some(ContextPlan {
                    effect: effect.clone(),
                    extra_calls: calls.saturating_sub(before_calls),
                    saved_usd: without.low - cost.low,
                })
            }
            _ => None,
        };
        let prompt_cache = model
            .filter(|_| runs)
            .and_then(|m| prompt_cache_plan(m, p.expanded.first(), p.expanded.len()));
        let depends_on = analysis
            .dag
            .dependencies(i)
            .into_iter()
            .filter_map(|d| analysis.steps.get_index(d).map(|(k, _)| k.clone()))
            .collect();
        Ok(StepPlan {
            id: id.clone(),
            task: step.task.clone(),
            reasoning: step.reasoning,
            latency: step.latency,
            tags: p.expanded.tags.iter().cloned().collect(),
            depends_on,
            sensitivity: SensitivityPlan {
                level: policy.level_name(eff.level).to_owned(),
                origin: eff.origin.clone(),
                cloud_allowed: eff.level <= policy.cloud_max,
            },
            status: p.status().clone(),
            calls,
            fan_out: p.expanded.fan_out.clone(),
            model: model.map(|m| model_ref(policy, m)),
            route: decision,
            tokens,
            cost,
            flagship_cost,
            prompt_sha256: p.expanded.first().map_or_else(
                || messages_sha256(std::iter::empty()),
                |c| messages_sha256(c.messages()),
            ),
            prompt_cache,
            retrieval: p.expanded.retrieval.clone(),
            history: p.expanded.history.clone(),
            batch: runs && step_batched && model.is_some_and(Model::has_batch_api),
            cascade,
            context,
            reasoning_knob: model
                .filter(|_| step.reasoning != Reasoning::Standard)
                .map(|m| {
                    let knob = crate::reasoning::for_step(step, m);
                    let mut detail = knob.describe(m.provider_kind);
                    // Anthropic refuses a temperature while thinking.
                    if m.provider_kind == crate::policy::ProviderKind::Anthropic
                        && step.temperature.is_some()
                        && knob.thinking().is_some_and(|t| t.level != Reasoning::None)
                    {
                        detail.push_str("; the step's temperature is not sent while thinking");
                    }
                    ReasoningPlan {
                        sent: knob.thinking().is_some(),
                        detail,
                        budget_tokens: u64::from(knob.extra_output()),
                    }
                }),
            routers: policy
                .rules
                .iter()
                .filter_map(|r| {
                    let rc = r.conditions.router.as_ref()?;
                    let score = p.expanded.router_scores.get(rc.slot).copied();
                    let threshold = policy.router_threshold(rc);
                    Some(RouterPlan {
                        rule: r.name.clone(),
                        file: policy.routers[rc.slot].file.clone(),
                        score,
                        threshold,
                        holds: matches!((score, threshold), (Some(s), Some(t)) if s > t),
                    })
                })
                .collect(),
        })
    }

    /// The cascade of the rule that routed a step, if it has one and the
    /// routed model is not already its target ([`route::escalation`]): the
    /// model escalations go to, the rule, and the expected rate. No such
    /// model is an error: a confidential step is never escalated to the
    /// cloud, so its cascade is refused here.
    #[allow(clippy::type_complexity)]
    fn cascade(
        &self,
        id: &str,
        decision: &Decision,
        routed: &Model,
        facts: &Facts<'_>,
        worst_input: &dyn Fn(Tokenizer) -> u64,
    ) -> Result<Option<(&Model, &crate::policy::Rule, f64, RateSource)>, Diagnostic> {
        let policy = self.policy;
        let Some(e) = route::escalation(policy, decision, facts, worst_input) else {
            return Ok(None);
        };
        let Some(rule) = policy.rules.iter().find(|r| r.name == e.rule) else {
            return Ok(None);
        };
        let target = rule.escalate.as_ref().map_or("", |c| c.to.as_str());
        let Some(to) = e.to.as_deref().and_then(|m| policy.models.get(m)) else {
            let refused: Vec<String> = e
                .passed_over
                .iter()
                .map(|r| format!("{}: {}", r.model, r.why))
                .collect();
            let at = self.analysis.doc().key_span(&pointer(["steps", id]));
            return Err(Diagnostic::error(
                "escalate-refused",
                format!(
                    "step `{id}` cannot escalate from {} to {target} (rule {}): {}",
                    routed.alias,
                    rule.name,
                    refused.join("; ")
                ),
            )
            .at(at)
            .with_help(if facts.sensitivity > policy.cloud_max {
                format!(
                    "the step is {} (above cloud_max {}): escalate it to a local model, or route it with a rule that does not escalate",
                    policy.level_name(facts.sensitivity),
                    policy.level_name(policy.cloud_max)
                )
            } else {
                "give the escalation target a fallback that fits".to_owned()
            }));
        };
        let (rate, source) = match self.history.get(&rule.name) {
            Some(&(escalated, answers)) if answers > 0 => (
                escalated.min(answers) as f64 / answers as f64,
                RateSource::History { escalated, answers },
            ),
            _ => (DEFAULT_ESCALATION_RATE, RateSource::Default),
        };
        Ok(Some((to, rule, rate, source)))
    }
}

/// How a plan names a model.
fn model_ref(policy: &Policy, m: &Model) -> ModelRef {
    ModelRef {
        alias: m.alias.clone(),
        provider: m.provider.clone(),
        model: m.model.clone(),
        tier: m.tier,
        locality: m.locality,
        endpoints: policy
            .providers
            .get(&m.provider)
            .map(|p| p.endpoints.len())
            .filter(|&n| n > 0),
    }
}

/// The hash of a call's messages, each ended by a NUL byte: the plan's
/// `prompt_sha256`.
pub fn messages_sha256<'a>(messages: impl Iterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for m in messages {
        h.update(m.as_bytes());
        h.update([0u8]);
    }
    format!("{:x}", h.finalize())
}

/// Every call's hash ([`messages_sha256`]) by step id, in item order, the
/// calls rendered as the plan renders them (upstream outputs as
/// placeholders): what a test compares with the requests a run sends. Not
/// part of a [`Plan`]: a fan-out's would drown it, and its calls are not
/// held ([`Expanded::calls`] renders them again).
pub fn calls_sha256(
    analysis: &Analysis,
    policy: &Policy,
    inputs: &Inputs,
) -> Result<BTreeMap<String, Vec<String>>, Vec<Diagnostic>> {
    let levels: Vec<usize> = sensitivity::propagate(analysis, policy)
        .iter()
        .map(|e| e.level)
        .collect();
    let prepared = prepare_all(analysis, policy, inputs, &levels)?;
    analysis
        .steps
        .keys()
        .zip(&prepared)
        .map(|(id, p)| {
            let hashes = p
                .expanded
                .calls()
                .map(|c| c.map(|c| messages_sha256(c.messages())))
                .collect::<Result<_, _>>()
                .map_err(|e| vec![e.diagnostic(analysis.doc())])?;
            Ok((id.clone(), hashes))
        })
        .collect()
}

/// The prompt-cache check of a step on a model that asks for caching: the
/// system prompt (of the first call) against the model's minimum.
///
/// With several calls sharing the start of their prompts
/// ([`RenderedCall::shared_prefix`]) long enough to cache, the run marks
/// that prefix too, and every call after the first is expected to read it.
fn prompt_cache_plan(
    m: &Model,
    first: Option<&RenderedCall>,
    calls: usize,
) -> Option<PromptCachePlan> {
    let ttl = m.prompt_cache?;
    let system = first.and_then(|c| c.system.as_deref());
    let prefix_tokens = system.map_or(0, |s| m.tokenizer.count(s) as u64);
    let shared_prefix_tokens = first
        .filter(|c| c.shared_prefix > 0)
        .map(|c| c.prefix_tokens(m.tokenizer) as u64)
        .filter(|&t| t >= m.prompt_cache_min_tokens)
        .unwrap_or(0);
    Some(PromptCachePlan {
        ttl,
        prefix_tokens,
        min_tokens: m.prompt_cache_min_tokens,
        cacheable: prefix_tokens >= m.prompt_cache_min_tokens,
        shared_prefix_tokens,
        expected_read_tokens: shared_prefix_tokens * (calls as u64).saturating_sub(1),
    })
}

/// Where a step's pin is written: its `model`, or for a history's
/// generated summary step, the `summarize_with` of the step it serves.
fn pin_pointer(id: &str) -> String {
    match id.strip_suffix(crate::context::history::SUMMARY_SUFFIX) {
        Some(owner) => pointer(["steps", owner, "history", "summarize_with"]),
        None => pointer(["steps", id, "model"]),
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
                    .at(analysis.doc().span(&pin_pointer(id)))
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
    let mut context: Option<ContextTotal> = None;
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
        if let Some(c) = &s.context {
            let t = context.get_or_insert_with(ContextTotal::default);
            t.steps += 1;
            t.tokens_before += c.effect.tokens_before;
            t.tokens_after += c.effect.tokens_after;
            t.extra_calls += c.extra_calls;
            t.saved_usd += c.saved_usd;
        }
        flagship_cost += s.flagship_cost;
        exact &= s.tokens.input_exact;
        if let Some(m) = &s.model {
            let e = by_tier.entry(m.tier).or_default();
            e.0 += s.calls;
            match &s.cascade {
                // The escalated share is money spent on the target's tier,
                // the judging on the judge's.
                Some(c) => {
                    e.1 += c.first_cost;
                    let judged = c.judge.as_ref().map(|j| j.cost).unwrap_or_default();
                    if let Some(j) = &c.judge {
                        by_tier.entry(j.model.tier).or_default().1 += j.cost;
                    }
                    by_tier.entry(c.to.tier).or_default().1 += CostRange {
                        low: s.cost.low - c.first_cost.low - judged.low,
                        high: s.cost.high - c.first_cost.high - judged.high,
                    };
                }
                None => e.1 += s.cost,
            }
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
                max_calls: policy
                    .tier_shares
                    .get(&tier)
                    .map(|s| route::max_calls(*s, usage.total_calls)),
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
        context,
    }
}
