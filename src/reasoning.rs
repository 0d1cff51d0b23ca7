//! A step's `reasoning:` level as the provider's own knob, and what that
//! knob costs: one decision that `plan` prices, `run` sends and the budget
//! holds, so the three cannot disagree.
//!
//! `standard` (the default) sends nothing: the model thinks as much as its
//! provider's default says, and requests written before the knob existed
//! (recorded cassettes, cached answers) keep their hashes. The other levels
//! are sent only to a model the catalog marks `supports_reasoning`:
//!
//! | level | OpenAI-dialect `reasoning_effort` | Anthropic `thinking` | Gemini `thinkingBudget` | thinking tokens added to the output limit |
//! |---|---|---|---|---|
//! | `none` | `minimal` | not sent (off by default) | `0` | 0 |
//! | `light` | `low` | `budget_tokens: 1024` | `1024` | [`LIGHT_BUDGET`] |
//! | `deep` | `high` | `budget_tokens: 16384` | `16384` | [`DEEP_BUDGET`] |
//!
//! OpenRouter takes the same effort as `reasoning: {effort}`, Ollama as
//! `think` (`false`, `low`, `high`). Mistral's API
//! has no such knob: nothing is sent and the plan says so.
//!
//! Reasoning tokens are billed as output and, on every provider, spent
//! inside the request's output limit (`max_completion_tokens`, Anthropic's
//! `max_tokens`, Gemini's `maxOutputTokens`). So the budget is *added* to the
//! step's `max_output_tokens` — the answer keeps the room the workflow gave
//! it — and the sum is what the plan's worst case and the run's budget hold
//! count; the plan's expected output counts the budget as spent. The sum is
//! capped at the model's own output limit when the catalog knows it.
//!
//! `minimal` is the least effort the GPT-5 family accepts; the older o-series
//! accept only `low`, `medium` and `high`, and answer `reasoning: none` with
//! a 400 that names the value. Gemini 2.5 Pro cannot turn thinking off and
//! answers a budget of 0 the same way. Anthropic needs a budget of at least
//! 1,024 tokens below `max_tokens`, and no `temperature` other than the
//! default while thinking: the step's temperature is not sent then.

use serde::Serialize;

use crate::policy::{Model, ProviderKind};
use crate::workflow::{Reasoning, Step};

/// Thinking tokens a `light` step may spend on top of its answer: Anthropic's
/// minimum budget, and a short deliberation elsewhere.
pub const LIGHT_BUDGET: u32 = 1024;
/// Thinking tokens a `deep` step may spend on top of its answer: room for a
/// long deliberation, still inside every reasoning model's output limit
/// (Gemini 2.5 Flash caps its budget at 24,576).
pub const DEEP_BUDGET: u32 = 16_384;
/// Anthropic refuses a smaller thinking budget.
const ANTHROPIC_MIN_BUDGET: u32 = 1024;

/// The knob one request carries: the level and the thinking tokens added to
/// its output limit. Each provider client spells it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Thinking {
    /// `none`, `light` or `deep` (never `standard`: it sends nothing).
    pub level: Reasoning,
    /// Tokens the model may spend thinking, inside the request's output
    /// limit (which has been raised by as much).
    pub budget_tokens: u32,
}

impl Thinking {
    /// OpenAI's `reasoning_effort` (and OpenRouter's `reasoning.effort`).
    pub fn effort(self) -> &'static str {
        match self.level {
            Reasoning::None => "minimal",
            Reasoning::Light => "low",
            Reasoning::Standard => "medium",
            Reasoning::Deep => "high",
        }
    }
}

/// What a step's level becomes on one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Knob {
    /// `standard`: nothing is sent, the provider's default applies.
    Default,
    /// Sent as the provider's knob.
    Sent(Thinking),
    /// Not sent, and why (the model cannot reason, the API has no knob, no
    /// room under the model's output limit).
    NotSent(String),
}

impl Knob {
    /// What the knob adds to the request's output limit.
    pub fn extra_output(&self) -> u32 {
        match self {
            Knob::Sent(t) => t.budget_tokens,
            Knob::Default | Knob::NotSent(_) => 0,
        }
    }

    pub fn thinking(&self) -> Option<Thinking> {
        match self {
            Knob::Sent(t) => Some(*t),
            Knob::Default | Knob::NotSent(_) => None,
        }
    }

    /// The knob as the provider receives it, for the plan.
    pub fn describe(&self, kind: ProviderKind) -> String {
        let Knob::Sent(t) = self else {
            return match self {
                Knob::NotSent(why) => format!("{why}; nothing sent"),
                _ => "provider default".to_owned(),
            };
        };
        let sent = match kind {
            ProviderKind::Anthropic if t.level == Reasoning::None => {
                "nothing (thinking is off unless enabled)".to_owned()
            }
            ProviderKind::Anthropic => format!(
                "thinking: {{type: enabled, budget_tokens: {}}}",
                t.budget_tokens
            ),
            ProviderKind::Gemini => format!("thinkingConfig.thinkingBudget: {}", t.budget_tokens),
            ProviderKind::Openrouter => format!("reasoning: {{effort: {}}}", t.effort()),
            ProviderKind::Ollama => match t.level {
                Reasoning::None => "think: false".to_owned(),
                _ => format!("think: {}", t.effort()),
            },
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Mistral => {
                format!("reasoning_effort: {}", t.effort())
            }
        };
        if t.budget_tokens > 0 {
            format!("{sent} (+{} output tokens a call)", t.budget_tokens)
        } else {
            sent
        }
    }
}

/// The knob a step's level becomes on `model` for an answer of
/// `max_output_tokens`.
pub fn knob(level: Reasoning, max_output_tokens: u32, model: &Model) -> Knob {
    let budget = match level {
        Reasoning::Standard => return Knob::Default,
        Reasoning::None => 0,
        Reasoning::Light => LIGHT_BUDGET,
        Reasoning::Deep => DEEP_BUDGET,
    };
    if !model.supports_reasoning {
        return Knob::NotSent(format!(
            "reasoning not supported by `{}` ({})",
            model.alias, model.model
        ));
    }
    if model.provider_kind == ProviderKind::Mistral {
        return Knob::NotSent("mistral's API has no reasoning knob".to_owned());
    }
    // Within the model's own output limit, the answer's room first.
    let room = model
        .max_output_tokens
        .map_or(u64::from(budget), |max| {
            max.saturating_sub(u64::from(max_output_tokens))
        })
        .min(u64::from(budget));
    let budget_tokens = u32::try_from(room).unwrap_or(budget);
    // Where the knob *is* the budget, a budget squeezed to nothing would
    // say the opposite of the level (Gemini's 0 turns thinking off).
    let least = match model.provider_kind {
        ProviderKind::Anthropic => ANTHROPIC_MIN_BUDGET,
        ProviderKind::Gemini => 1,
        _ => 0,
    };
    if level != Reasoning::None && budget_tokens < least {
        return Knob::NotSent(format!(
            "`{}` allows {} output tokens: no room for a {least}-token thinking budget beside max_output_tokens {max_output_tokens}",
            model.alias,
            model.max_output_tokens.unwrap_or_default()
        ));
    }
    Knob::Sent(Thinking {
        level,
        budget_tokens,
    })
}

/// The knob of `step` on `model`.
pub fn for_step(step: &Step, model: &Model) -> Knob {
    knob(step.reasoning, step.max_output_tokens(), model)
}

/// The output limit a call of `step` on `model` is sent with: the answer's
/// `max_output_tokens` plus the thinking budget. What the plan's worst case
/// and the run's budget hold count.
pub fn output_limit(step: &Step, model: &Model) -> u32 {
    step.max_output_tokens()
        .saturating_add(for_step(step, model).extra_output())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(kind: ProviderKind, supports: bool, max_out: Option<u64>) -> Model {
        let (_, policy) = crate::policy::load_builtin().expect("the built-in policy compiles");
        let mut m = policy.models.values().next().expect("a model").clone();
        m.provider_kind = kind;
        m.supports_reasoning = supports;
        m.max_output_tokens = max_out;
        m
    }

    #[test]
    fn standard_sends_nothing_and_unsupported_models_get_nothing() {
        let m = model(ProviderKind::Openai, true, None);
        assert_eq!(knob(Reasoning::Standard, 100, &m), Knob::Default);
        let m = model(ProviderKind::Openai, false, None);
        assert!(
            matches!(knob(Reasoning::Deep, 100, &m), Knob::NotSent(w) if w.contains("not supported"))
        );
        let m = model(ProviderKind::Mistral, true, None);
        assert!(matches!(knob(Reasoning::Deep, 100, &m), Knob::NotSent(_)));
    }

    #[test]
    fn budgets_by_level_within_the_model_limit() {
        let m = model(ProviderKind::Gemini, true, None);
        let b = |level| knob(level, 100, &m).extra_output();
        assert_eq!(
            (b(Reasoning::None), b(Reasoning::Light), b(Reasoning::Deep)),
            (0, LIGHT_BUDGET, DEEP_BUDGET)
        );
        // 8,192 allowed, 1,000 for the answer: 7,192 left to think.
        let m = model(ProviderKind::Gemini, true, Some(8192));
        assert_eq!(knob(Reasoning::Deep, 1000, &m).extra_output(), 7192);
        // No room at all: `deep` must not become Gemini's "thinking off".
        assert!(
            matches!(knob(Reasoning::Deep, 8192, &m), Knob::NotSent(w) if w.contains("no room"))
        );
        assert_eq!(knob(Reasoning::None, 8192, &m).extra_output(), 0);
        // Anthropic's minimum budget does not fit: nothing sent, said why.
        let m = model(ProviderKind::Anthropic, true, Some(1500));
        assert!(
            matches!(knob(Reasoning::Light, 1000, &m), Knob::NotSent(w) if w.contains("no room"))
        );
        assert_eq!(
            knob(Reasoning::None, 1000, &m),
            Knob::Sent(Thinking {
                level: Reasoning::None,
                budget_tokens: 0
            })
        );
    }
}
