//! Compiling a rule's `escalate:` block into a [`Cascade`]: the target
//! resolved, the checks decided (`when`, or what the other keys configure),
//! the regex compiled with a size bound, and the combinations refused that
//! could only ever escalate every call or never escalate at all.

use std::collections::BTreeSet;

use indexmap::IndexMap;

use super::{Cascade, EscalateFile, EscalateWhen, Locality, Model, PolicyFile, Rule};
use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::yaml::{Document, pointer};

/// The largest compiled `matches` regex (bytes of automaton): a pattern
/// that needs more is refused rather than compiled.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// Compiles every rule's `escalate`, in rule order, onto `rules`.
pub(super) fn escalations(
    file: &PolicyFile,
    doc: &Document,
    models: &IndexMap<String, Model>,
    cloud_max: usize,
    rules: &mut [Rule],
    diags: &mut Vec<Diagnostic>,
) {
    for (i, (r, rule)) in file.rules.iter().zip(rules.iter_mut()).enumerate() {
        let Some(e) = &r.escalate else {
            continue;
        };
        let idx = i.to_string();
        let at = |rest: &[&str]| {
            let mut segs = vec!["rules", idx.as_str(), "escalate"];
            segs.extend_from_slice(rest);
            doc.span(&pointer(segs))
        };
        rule.escalate = cascade(e, rule, file, models, cloud_max, &at, diags);
    }
}

fn cascade(
    e: &EscalateFile,
    rule: &Rule,
    file: &PolicyFile,
    models: &IndexMap<String, Model>,
    cloud_max: usize,
    at: &dyn Fn(&[&str]) -> Option<crate::diagnostic::Span>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Cascade> {
    let before = diags.iter().filter(|d| d.is_error()).count();
    if !file.models.contains_key(&e.to) {
        let names = || file.models.keys().map(String::as_str);
        diags.push(
            Diagnostic::error("unknown-model", format!("unknown model `{}`", e.to))
                .at(at(&["to"]))
                .with_label("not defined under `models`")
                .with_help(
                    did_you_mean(&e.to, names())
                        .unwrap_or_else(|| format!("defined models: {}", one_of(names()))),
                ),
        );
    } else if e.to == rule.use_model {
        diags.push(
            Diagnostic::error(
                "escalate-to-self",
                format!("rule `{}` escalates to its own model `{}`", rule.name, e.to),
            )
            .at(at(&["to"]))
            .with_help("escalate to a stronger model than the one the rule uses"),
        );
    }
    let configured = |w: EscalateWhen| match w {
        EscalateWhen::InvalidOutput => true,
        EscalateWhen::LowConfidence => e.confidence.is_some(),
        EscalateWhen::NoMatch => e.matches.is_some() || e.contains.is_some(),
        EscalateWhen::Judge => e.judge.is_some(),
    };
    let when: BTreeSet<EscalateWhen> = match &e.when {
        Some(list) => list.iter().copied().collect(),
        None => [
            EscalateWhen::InvalidOutput,
            EscalateWhen::LowConfidence,
            EscalateWhen::NoMatch,
            EscalateWhen::Judge,
        ]
        .into_iter()
        .filter(|w| configured(*w))
        .collect(),
    };
    // A check listed without its setting could never be decided; a setting
    // without its check is never used.
    if let Some(list) = &e.when {
        for (j, w) in list.iter().enumerate() {
            if !configured(*w) {
                let (key, help) = match w {
                    EscalateWhen::LowConfidence => (
                        "confidence",
                        "add `confidence: { min_mean_logprob: -0.8 }` (the lowest mean token logprob to accept)",
                    ),
                    EscalateWhen::Judge => (
                        "judge",
                        "add `judge: { rubric: \"what a good answer does\", min_score: 0.7 }`",
                    ),
                    _ => (
                        "matches",
                        "add `matches: REGEX` or `contains: TEXT`: what a good answer has",
                    ),
                };
                diags.push(
                    Diagnostic::error(
                        "escalate-check-unset",
                        format!("`{}` is listed but `{key}` is not set", w.name()),
                    )
                    .at(at(&["when", &j.to_string()]))
                    .with_help(help),
                );
            }
        }
        for (w, key) in [
            (EscalateWhen::LowConfidence, "confidence"),
            (EscalateWhen::NoMatch, "matches"),
            (EscalateWhen::NoMatch, "contains"),
            (EscalateWhen::Judge, "judge"),
        ] {
            let set = match key {
                "confidence" => e.confidence.is_some(),
                "matches" => e.matches.is_some(),
                "judge" => e.judge.is_some(),
                _ => e.contains.is_some(),
            };
            if set && !when.contains(&w) {
                diags.push(
                    Diagnostic::warning(
                        "escalate-check-unused",
                        format!("`{key}` is set but `{}` is not in `when`", w.name()),
                    )
                    .at(at(&[key]))
                    .with_help(format!("add `{}` to `when`, or remove `{key}`", w.name())),
                );
            }
        }
    }
    // `low_confidence` on a model whose server returns no logprobs would
    // escalate every call: refused, with the provider named.
    if when.contains(&EscalateWhen::LowConfidence) {
        if let Some(m) = models.get(&rule.use_model) {
            if !m.provider_kind.returns_logprobs() {
                diags.push(
                    Diagnostic::error(
                        "no-logprobs",
                        format!(
                            "`low_confidence` needs token logprobs, and `{}` ({}) returns none",
                            m.alias,
                            m.provider_kind.name()
                        ),
                    )
                    .at(at(&["confidence", "min_mean_logprob"]).or_else(|| at(&["when"])))
                    .with_help(
                        "logprobs come from openai, openai-compatible (llama.cpp, vLLM) and openrouter models; \
                         use `invalid_output` or `matches` on this model instead",
                    ),
                );
            }
        }
    }
    // A rule whose every level is above cloud_max can never escalate to a
    // model in the cloud: the gate keeps those steps local.
    if let (Some(levels), Some(target)) = (&rule.conditions.sensitivity, models.get(&e.to)) {
        if !levels.is_empty()
            && levels.iter().all(|&l| l > cloud_max)
            && target.locality == Locality::Cloud
        {
            diags.push(
                Diagnostic::error(
                    "escalate-gated",
                    format!(
                        "rule `{}` matches only steps above cloud_max, and escalates to `{}`, a cloud model",
                        rule.name, e.to
                    ),
                )
                .at(at(&["to"]))
                .with_help("the sensitivity gate never lets these steps reach the cloud: escalate to a local model"),
            );
        }
    }
    let matches = e.matches.as_deref().and_then(|p| {
        regex::RegexBuilder::new(p)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|err| {
                diags.push(
                    Diagnostic::error("bad-regex", "`matches` is not a valid regular expression")
                        .at(at(&["matches"]))
                        .with_help(err.to_string()),
                );
            })
            .ok()
    });
    if diags.iter().filter(|d| d.is_error()).count() > before {
        return None;
    }
    Some(Cascade {
        to: e.to.clone(),
        when,
        min_mean_logprob: e.confidence.as_ref().map(|c| c.min_mean_logprob),
        matches,
        contains: e.contains.clone(),
        judge: e.judge.as_ref().map(|j| super::JudgeCheck {
            rubric: j.rubric.clone(),
            min_score: j.min_score,
        }),
    })
}
