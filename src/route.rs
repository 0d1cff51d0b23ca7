//! Routing: which model serves a step, and why. Pure functions, no I/O.
//!
//! The first rule whose conditions all hold decides (or the step's model pin).
//! Its candidates are the rule's model, then that model's fallback chain. A
//! candidate that does not fit is passed over with the reason; the first
//! that fits is the route. If none fits, the step has no route.
//!
//! Invariant (the sensitivity gate): a step whose effective sensitivity is
//! above `cloud_max` is never routed to a cloud model — no rule, fallback or
//! pin can change that. [`gate`] is the one place that decides it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::attachment::{Attached, Kind};
use crate::policy::{Conditions, Endpoint, Locality, Model, Policy, ProviderKind, Tier};
use crate::tokens::Tokenizer;
use crate::workflow::{Latency, Reasoning};

/// What routing needs to know about a step.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub task: &'a str,
    /// Effective level index.
    pub sensitivity: usize,
    /// Input tokens per call as rule conditions see them (o200k_base count).
    pub input_tokens: u64,
    pub reasoning: Reasoning,
    pub latency: Latency,
    pub tags: &'a BTreeSet<String>,
    pub pin: Option<&'a str>,
    pub max_output_tokens: u64,
    /// Calls this step makes (more than one with `for_each`).
    pub calls: u64,
    /// Each of the policy's routers' score of the step's rendered prompt
    /// (by [`Policy::routers`] slot; the highest of a fan-out's calls),
    /// computed by `step::expand` so routing stays pure. Empty: no call.
    pub router_scores: &'a [f64],
    /// The step's attachments: a candidate must take each one's kind
    /// ([`takes`]), and their tokens count against its context window.
    pub attachments: &'a [Attached],
}

/// How many calls each tier has taken so far in the run, and the run's total.
#[derive(Debug, Clone, Default)]
pub struct TierUsage {
    pub used: BTreeMap<Tier, u64>,
    pub total_calls: u64,
}

impl TierUsage {
    /// The most calls a tier may take: `ceil(share × total)` — a share is
    /// never rounded down to zero calls.
    pub fn limit(&self, policy: &Policy, tier: Tier) -> Option<u64> {
        policy
            .tier_shares
            .get(&tier)
            .map(|share| max_calls(*share, self.total_calls))
    }
}

/// The most calls of `total` a tier with this share may take:
/// `ceil(share × total)` (the tolerance keeps 0.1 × 10 at 1, not 2).
pub fn max_calls(share: f64, total: u64) -> u64 {
    (share * total as f64 - 1e-9).ceil().max(0.0) as u64
}

/// Why a candidate was passed over.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum PassedOver {
    SensitivityGate {
        level: String,
        cloud_max: String,
    },
    ContextWindow {
        needed: u64,
        window: u64,
    },
    MaxOutput {
        requested: u64,
        model_max: u64,
    },
    TierShare {
        tier: Tier,
        used: u64,
        limit: u64,
        calls: u64,
    },
    /// The step attaches an image or a PDF the model cannot take.
    Modality {
        attachment: String,
        kind: Kind,
        why: String,
    },
}

impl fmt::Display for PassedOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassedOver::SensitivityGate { level, cloud_max } => write!(
                f,
                "cloud model, and the step is {level} (above cloud_max {cloud_max})"
            ),
            PassedOver::ContextWindow { needed, window } => write!(
                f,
                "context window too small: needs {needed} tokens (prompt + max output), has {window}"
            ),
            PassedOver::MaxOutput {
                requested,
                model_max,
            } => write!(
                f,
                "max_output_tokens {requested} is above the model's limit of {model_max}"
            ),
            PassedOver::Modality {
                attachment,
                kind,
                why,
            } => write!(
                f,
                "cannot take the step's {} `{attachment}`: {why}",
                kind.name()
            ),
            PassedOver::TierShare {
                tier,
                used,
                limit,
                calls,
            } if *calls > 1 => write!(
                f,
                "{tier} tier share: its {calls} calls do not fit ({used} of at most {limit} already used)"
            ),
            PassedOver::TierShare {
                tier, used, limit, ..
            } => write!(
                f,
                "{tier} tier share exhausted: {used} of at most {limit} calls already used"
            ),
        }
    }
}

/// What decided the candidates.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Decider {
    Rule {
        name: String,
        index: usize,
        matched: Vec<String>,
    },
    Pin {
        model: String,
    },
}

impl Decider {
    pub fn label(&self) -> String {
        match self {
            Decider::Rule { name, .. } => format!("rule {name}"),
            Decider::Pin { model } => format!("pinned to {model} by the step"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub model: String,
    #[serde(flatten)]
    pub why: PassedOver,
}

/// The outcome of routing one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The chosen model alias; `None` when no candidate fits.
    pub model: Option<String>,
    /// `None` only when no rule matched and there is no pin.
    pub decider: Option<Decider>,
    pub passed_over: Vec<Rejection>,
}

/// The sensitivity gate. `true` when the model may see data of this level.
pub fn gate(policy: &Policy, model: &Model, level: usize) -> bool {
    model.locality == Locality::Local || level <= policy.cloud_max
}

/// The modality gate: can `model` take an attachment of this kind? `Err`
/// says why not. Like [`gate`], it holds for rules, fallbacks and pins
/// alike: [`fits`] asks it first.
pub fn takes(model: &Model, kind: Kind) -> Result<(), String> {
    if model.endpoint == Endpoint::Completions {
        return Err("the completions endpoint takes text only".to_owned());
    }
    match kind {
        Kind::Image if !model.supports_vision => Err(
            "the model does not take images (supports_vision is false in the catalog and the policy)"
                .to_owned(),
        ),
        Kind::Pdf if model.provider_kind == ProviderKind::Ollama => {
            Err("Ollama's API takes images only, not PDF documents".to_owned())
        }
        Kind::Pdf if !model.supports_pdf_input => Err(
            "the model does not take PDF documents (supports_pdf_input is false in the catalog and the policy)"
                .to_owned(),
        ),
        _ => Ok(()),
    }
}

/// The shortest confidential value the boundary looks for verbatim: shorter
/// ones (`yes`, `42`) occur in ordinary text and would refuse harmless calls.
pub const MIN_WITHHELD_CHARS: usize = 8;

/// What a request carries to the provider boundary.
#[derive(Debug, Clone, Default)]
pub struct Label {
    /// The level of the render context actually rendered into the request
    /// (see [`crate::sensitivity::of_context`]), at least the step's
    /// effective level.
    pub level: usize,
    /// The verbatim values (at least [`MIN_WITHHELD_CHARS`] long) of every
    /// input above `cloud_max`, whether or not the step reads it.
    pub withheld: std::sync::Arc<Withheld>,
}

/// The values no cloud request may contain, searched for all at once: one
/// pass over a request's text whatever their number (an Aho-Corasick
/// automaton, built once per run). Searching for each value in turn cost
/// values × text per request, so a confidential list of 100,000 held
/// strings made each cloud call of the same run scan the request 100,000
/// times.
#[derive(Debug, Clone, Default)]
pub struct Withheld {
    values: Search,
}

#[derive(Debug, Clone, Default)]
enum Search {
    #[default]
    Nothing,
    All(aho_corasick::AhoCorasick),
    /// The automaton could not be built (only past its size limits, at
    /// gigabytes of values): each value in turn, slow but sound.
    OneByOne(Vec<String>),
}

impl Withheld {
    pub fn new(values: Vec<String>) -> Withheld {
        let values = if values.is_empty() {
            Search::Nothing
        } else {
            match aho_corasick::AhoCorasick::new(&values) {
                Ok(ac) => Search::All(ac),
                Err(_) => Search::OneByOne(values),
            }
        };
        Withheld { values }
    }

    /// Does `text` contain any of the values?
    pub fn found_in(&self, text: &str) -> bool {
        match &self.values {
            Search::Nothing => false,
            Search::All(ac) => ac.is_match(text),
            Search::OneByOne(values) => values.iter().any(|v| text.contains(v.as_str())),
        }
    }
}

/// The gate at the provider boundary: the last check before a request
/// leaves, on the request itself. Every sending path calls it right before
/// sending — synchronous calls and each fallback (`run::call_model`, which
/// also serves judges and cassette recording, both below it), and batch
/// submissions (`run::batch`). Routing already chose a model that passes
/// [`gate`]; this re-checks with the level of what was rendered and, for a
/// cloud model, refuses a request containing the verbatim value of an input
/// above `cloud_max`, so a future hole in rendering (a value reaching a
/// prompt by a path the analysis does not know) is still caught rather than
/// sent. Local models see everything, as [`gate`] says.
pub fn admit(policy: &Policy, model: &Model, label: &Label, texts: &[&str]) -> Result<(), Refusal> {
    if model.locality == Locality::Local {
        return Ok(());
    }
    if !gate(policy, model, label.level) {
        return Err(Refusal::Level {
            alias: model.alias.clone(),
            level: policy.level_name(label.level).to_owned(),
            cloud_max: policy.level_name(policy.cloud_max).to_owned(),
        });
    }
    if texts.iter().any(|t| label.withheld.found_in(t)) {
        return Err(Refusal::WithheldValue {
            alias: model.alias.clone(),
            cloud_max: policy.level_name(policy.cloud_max).to_owned(),
        });
    }
    Ok(())
}

/// Why [`admit`] refused a request: the message names the model (it is the
/// call's error and its journal row as users read them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The request was rendered at a level above `cloud_max`.
    #[error(
        "{alias}: refused at the provider boundary: the request holds {level} data (above cloud_max {cloud_max}) and the model is in the cloud"
    )]
    Level {
        alias: String,
        level: String,
        cloud_max: String,
    },
    /// The request carries the verbatim value of an input above `cloud_max`.
    #[error(
        "{alias}: refused at the provider boundary: the request contains the value of an input above cloud_max {cloud_max} and the model is in the cloud"
    )]
    WithheldValue { alias: String, cloud_max: String },
}

/// Which conditions of a rule hold, as readable fragments; `None` if one fails.
pub fn matches(policy: &Policy, c: &Conditions, f: &Facts<'_>) -> Option<Vec<String>> {
    let mut why = Vec::new();
    if let Some(tasks) = &c.task {
        if !tasks.contains(f.task) {
            return None;
        }
        why.push(format!("task = {}", f.task));
    }
    if let Some(levels) = &c.sensitivity {
        if !levels.contains(&f.sensitivity) {
            return None;
        }
        let names: Vec<&str> = levels.iter().map(|&l| policy.level_name(l)).collect();
        why.push(format!(
            "sensitivity {} ∈ {{{}}}",
            policy.level_name(f.sensitivity),
            names.join(", ")
        ));
    }
    if let Some((lo, hi)) = c.input_tokens {
        if f.input_tokens < lo || f.input_tokens > hi {
            return None;
        }
        let range = match (lo, hi) {
            (0, hi) => format!("≤ {hi}"),
            (lo, u64::MAX) => format!("≥ {lo}"),
            (lo, hi) => format!("in {lo}..={hi}"),
        };
        why.push(format!("input_tokens {} {range}", f.input_tokens));
    }
    if let Some(r) = &c.reasoning {
        if !r.contains(&f.reasoning) {
            return None;
        }
        why.push(format!("reasoning = {}", f.reasoning.name()));
    }
    if let Some(l) = &c.latency {
        if !l.contains(&f.latency) {
            return None;
        }
        why.push(format!("latency = {}", f.latency.name()));
    }
    if let Some(tags) = &c.tags {
        let hit: Vec<&str> = tags
            .iter()
            .filter(|t| f.tags.contains(*t))
            .map(String::as_str)
            .collect();
        if hit.is_empty() {
            return None;
        }
        why.push(format!("tags has {}", hit.join(", ")));
    }
    if let Some(rc) = &c.router {
        let score = f.router_scores.get(rc.slot)?;
        let threshold = policy.router_threshold(rc)?;
        if *score <= threshold {
            return None;
        }
        why.push(format!(
            "router {} score {score:.3} > {threshold:.3}",
            policy.routers[rc.slot].file
        ));
    }
    if why.is_empty() {
        why.push("catch-all".to_owned());
    }
    Some(why)
}

/// Routes one step. `worst_input` gives the worst-case input tokens per call
/// as a model's tokenizer counts them (for the context-window check).
pub fn route(
    policy: &Policy,
    f: &Facts<'_>,
    usage: &TierUsage,
    worst_input: &dyn Fn(Tokenizer) -> u64,
) -> Decision {
    let (first, decider) = match f.pin {
        Some(pin) => (
            pin.to_owned(),
            Decider::Pin {
                model: pin.to_owned(),
            },
        ),
        None => {
            let found = policy
                .rules
                .iter()
                .enumerate()
                .find_map(|(i, r)| matches(policy, &r.conditions, f).map(|m| (i, r, m)));
            match found {
                Some((index, rule, matched)) => (
                    rule.use_model.clone(),
                    Decider::Rule {
                        name: rule.name.clone(),
                        index,
                        matched,
                    },
                ),
                None => {
                    return Decision {
                        model: None,
                        decider: None,
                        passed_over: Vec::new(),
                    };
                }
            }
        }
    };
    let mut passed_over = Vec::new();
    for alias in policy.candidates(&first) {
        let Some(model) = policy.models.get(alias) else {
            continue;
        };
        match fits(policy, model, f, usage, worst_input) {
            Ok(()) => {
                return Decision {
                    model: Some(alias.to_owned()),
                    decider: Some(decider),
                    passed_over,
                };
            }
            Err(why) => passed_over.push(Rejection {
                model: alias.to_owned(),
                why,
            }),
        }
    }
    Decision {
        model: None,
        decider: Some(decider),
        passed_over,
    }
}

/// Where a cascade escalates a routed step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EscalationRoute {
    /// The rule whose cascade it is.
    pub rule: String,
    /// The model escalated calls go to: the target, else its first fallback
    /// that fits; `None` when none does (the gate refused a cloud target
    /// for a step above `cloud_max`, say).
    pub to: Option<String>,
    pub passed_over: Vec<Rejection>,
}

/// The escalation of a routed step: `None` when the deciding rule has no
/// cascade (or a pin decided, or the routed model is already the target).
/// The target and its fallbacks pass [`fits`] — the sensitivity gate first
/// — for one call, tier shares aside (an escalation is an extra call the
/// run checks against the shares as it makes it).
pub fn escalation(
    policy: &Policy,
    decision: &Decision,
    f: &Facts<'_>,
    worst_input: &dyn Fn(Tokenizer) -> u64,
) -> Option<EscalationRoute> {
    let Some(Decider::Rule { name, .. }) = &decision.decider else {
        return None;
    };
    let routed = decision.model.as_deref()?;
    let rule = policy.rules.iter().find(|r| &r.name == name)?;
    let cascade = rule.escalate.as_ref()?;
    if cascade.to == routed {
        return None;
    }
    let one = Facts {
        calls: 1,
        ..f.clone()
    };
    let mut passed_over = Vec::new();
    for alias in policy.candidates(&cascade.to) {
        let Some(m) = policy.models.get(alias).filter(|_| alias != routed) else {
            continue;
        };
        match fits(policy, m, &one, &TierUsage::default(), worst_input) {
            Ok(()) => {
                return Some(EscalationRoute {
                    rule: rule.name.clone(),
                    to: Some(alias.to_owned()),
                    passed_over,
                });
            }
            Err(why) => passed_over.push(Rejection {
                model: alias.to_owned(),
                why,
            }),
        }
    }
    Some(EscalationRoute {
        rule: rule.name.clone(),
        to: None,
        passed_over,
    })
}

/// Does `model` fit this step now: the sensitivity gate, max output, the
/// context window and the tier share? The executor uses it for fallbacks, so
/// the gate holds there too.
pub fn fits(
    policy: &Policy,
    model: &Model,
    f: &Facts<'_>,
    usage: &TierUsage,
    worst_input: &dyn Fn(Tokenizer) -> u64,
) -> Result<(), PassedOver> {
    if !gate(policy, model, f.sensitivity) {
        return Err(PassedOver::SensitivityGate {
            level: policy.level_name(f.sensitivity).to_owned(),
            cloud_max: policy.level_name(policy.cloud_max).to_owned(),
        });
    }
    for a in f.attachments {
        takes(model, a.kind).map_err(|why| PassedOver::Modality {
            attachment: a.input.clone(),
            kind: a.kind,
            why,
        })?;
    }
    if let Some(model_max) = model.max_output_tokens {
        if f.max_output_tokens > model_max {
            return Err(PassedOver::MaxOutput {
                requested: f.max_output_tokens,
                model_max,
            });
        }
    }
    let needed = worst_input(model.tokenizer)
        + crate::attachment::tokens(f.attachments, model.provider_kind)
        + f.max_output_tokens;
    if needed > model.context_window {
        return Err(PassedOver::ContextWindow {
            needed,
            window: model.context_window,
        });
    }
    if let Some(limit) = usage.limit(policy, model.tier) {
        let used = usage.used.get(&model.tier).copied().unwrap_or(0);
        if used + f.calls > limit {
            return Err(PassedOver::TierShare {
                tier: model.tier,
                used,
                limit,
                calls: f.calls,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(kind: ProviderKind, vision: bool, pdf: bool) -> Model {
        let (_, policy) = crate::policy::load_builtin().expect("the built-in policy compiles");
        let mut m = policy.models.values().next().expect("a model").clone();
        m.provider_kind = kind;
        m.endpoint = Endpoint::Chat;
        m.supports_vision = vision;
        m.supports_pdf_input = pdf;
        m
    }

    #[test]
    fn every_withheld_value_is_found_wherever_it_is_in_one_pass() {
        let values: Vec<String> = (0..10_000)
            .map(|i| format!("secret-{i:05}-value"))
            .collect();
        let w = Withheld::new(values.clone());
        for v in [&values[0], &values[4_321], &values[9_999]] {
            assert!(w.found_in(&format!("before {v} after")), "{v}");
            assert!(w.found_in(v), "{v}");
        }
        // Overlapping and cut values: only whole ones count.
        assert!(!w.found_in("secret-00001-valu secret-0000"));
        assert!(w.found_in("xsecret-secret-00001-value"));
        assert!(!w.found_in(""));
        assert!(!Withheld::new(Vec::new()).found_in("secret-00001-value"));
        assert!(!Withheld::default().found_in("anything"));
    }

    #[test]
    fn the_modality_gate_follows_the_flags_the_endpoint_and_the_dialect() {
        assert!(takes(&model(ProviderKind::Openai, true, true), Kind::Pdf).is_ok());
        assert!(takes(&model(ProviderKind::Openai, false, true), Kind::Image).is_err());
        assert!(takes(&model(ProviderKind::Anthropic, true, false), Kind::Pdf).is_err());
        // Ollama's API has no document part, whatever the model.
        let why = takes(&model(ProviderKind::Ollama, true, true), Kind::Pdf).unwrap_err();
        assert!(why.contains("images only"), "{why}");
        assert!(takes(&model(ProviderKind::Ollama, true, true), Kind::Image).is_ok());
        // The text completions route has no place for a file.
        let mut base = model(ProviderKind::OpenaiCompatible, true, true);
        base.endpoint = Endpoint::Completions;
        let why = takes(&base, Kind::Image).unwrap_err();
        assert!(why.contains("completions endpoint"), "{why}");
    }
}
