//! The plan's estimates: stand-ins for upstream outputs while rendering
//! (markers, samples of output schemas), token counts with those stand-ins
//! at their expected and largest size, typical answer lengths, and prices.
//!
//! An upstream step's output is not known when planning, so it is stood in
//! for by a marker that counts as that step's expected output tokens (or its
//! maximum for the worst case). A count is *exact* only when the tokenizer
//! is the model's real one and no upstream output is involved.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use super::CostRange;
use crate::cost::{self, Billing};
use crate::policy::Model;
use crate::step::{Estimates, RenderedCall};
use crate::tokens::{self, Tokenizer};
use crate::workflow::Step;

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

/// The stand-in for instance `instance` of step `step`'s output (one call's
/// answer): the marker for text, a sample that fits the schema for
/// structured outputs (so `steps.x.output.field` renders). Public so a test
/// can answer a run with exactly what the plan rendered with.
pub fn estimated_output(step: &str, schema: Option<&Value>, instance: u64) -> Value {
    match schema {
        None => Value::String(marker(step, instance)),
        Some(s) => sample(s, &marker(step, instance), 0),
    }
}

/// A value shaped like a step's output: [`estimated_output`], and a list of
/// those for a `for_each` step.
fn placeholder(step: &str, schema: Option<&Value>, fan_out: Option<u64>) -> Value {
    let one = |i: u64| estimated_output(step, schema, i);
    match fan_out {
        None => one(0),
        Some(n) => Value::Array((0..n.max(1)).map(one).collect()),
    }
}

/// Upstream markers in a rendered text: (step, instance) per occurrence.
pub(super) fn markers_in(text: &str) -> Vec<(&str, &str)> {
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

/// The plan's stand-ins for upstream outputs: placeholders of the right
/// shape, as many per fan-out as its planned items.
pub(super) struct Placeholders<'a> {
    pub(super) workflow: &'a crate::workflow::Workflow,
    pub(super) fan_outs: &'a HashMap<String, u64>,
}

impl Estimates for Placeholders<'_> {
    fn output(&self, dep: &str) -> Value {
        placeholder(
            dep,
            self.workflow.steps[dep].output_schema(),
            self.fan_outs.get(dep).copied(),
        )
    }

    fn unknown_item(&self, dep: &str) -> Value {
        Value::String(marker(dep, 0))
    }
}

/// Counts for one tokenizer.
#[derive(Clone, Copy, Default)]
pub(super) struct Counts {
    /// Largest single call, expected and worst.
    pub(super) max_call: u64,
    pub(super) max_call_worst: u64,
    pub(super) total: u64,
    pub(super) total_worst: u64,
}

/// The step's `calls` calls together. A long-context tier is chosen by one
/// call's prompt, never by the step's sum: the expected cost at the average
/// call's tier, the worst case at the largest call's (so it is never low).
pub(super) fn price(
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

/// A step's counts by `tok`: its rendered calls with upstream outputs at
/// their expected and their largest size, and `calls` in all.
pub(super) fn count(
    rendered: &[RenderedCall],
    calls: u64,
    tok: Tokenizer,
    w: &crate::workflow::Workflow,
) -> Counts {
    let mut c = Counts::default();
    let (mut sum, mut sum_worst) = (0u64, 0u64);
    for call in rendered {
        let stripped: Vec<String> = call.messages().map(strip_markers).collect();
        let refs: Vec<&str> = stripped.iter().map(String::as_str).collect();
        let base = tokens::count_chat(tok, &refs) as u64;
        let (extra, extra_worst) = upstream_tokens(call, w);
        c.max_call = c.max_call.max(base + extra);
        c.max_call_worst = c.max_call_worst.max(base + extra_worst);
        sum += base + extra;
        sum_worst += base + extra_worst;
    }
    // Calls beyond the rendered ones (a fan-out whose size is known only at
    // run time) are priced like the average rendered call.
    let rendered = rendered.len() as u64;
    let missing = calls.saturating_sub(rendered);
    let avg = |x: u64| x.checked_div(rendered).unwrap_or(0);
    c.total = sum + avg(sum) * missing;
    c.total_worst = sum_worst + avg(sum_worst) * missing;
    c
}

/// Tokens the upstream outputs shown in a call add: expected and worst case.
/// Text outputs count once per occurrence; a structured output counts once
/// per instance however many of its fields are shown.
fn upstream_tokens<'a>(call: &'a RenderedCall, w: &crate::workflow::Workflow) -> (u64, u64) {
    let mut seen: BTreeSet<(&'a str, &'a str)> = BTreeSet::new();
    let (mut expected, mut worst) = (0u64, 0u64);
    for m in call.messages() {
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
