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

/// Typical answer length, when a step does not say: from its output schema
/// when it has one ([`schema_output_tokens`]), else by task; always capped
/// by `max_output_tokens`. Used only for the plan's expected (low) cost.
pub fn expected_output_tokens(step: &Step) -> u64 {
    let max = u64::from(step.max_output_tokens());
    if let Some(e) = step.expected_output_tokens {
        return u64::from(e).min(max);
    }
    let typical = match step.output_schema() {
        // The schema says the answer's shape, which tells its length
        // better than the task: a `summarize` step answering an enum
        // answers a few tokens.
        Some(schema) => schema_output_tokens(schema),
        None => match step.task.as_str() {
            "classify" | "label" | "route" | "triage" => 10,
            "extract" | "summarize" | "title" => 200,
            "format" | "boilerplate" | "translate" => 300,
            _ => max / 2,
        },
    };
    typical.clamp(1, max.max(1))
}

/// A free-text string field in a structured answer: about a sentence.
const STRING_TOKENS: u64 = 30;
/// A string with a `format` (a date, an e-mail address, a URI, a UUID).
const FORMATTED_STRING_TOKENS: u64 = 12;
/// A number: digits, a sign, a decimal point.
const NUMBER_TOKENS: u64 = 3;
/// Items of an array whose schema does not bound them (within `minItems`
/// and `maxItems` when it does).
const ARRAY_ITEMS: u64 = 5;
/// Nesting followed before a sub-schema counts as one string: answers are
/// not that deep, and a self-similar schema must not cost more than this.
const MAX_SCHEMA_DEPTH: usize = 8;

/// Expected tokens of a JSON answer that fits `schema` (a JSON Schema as
/// output schemas write it). A rough model of what a tokenizer does with
/// JSON — about four characters a token, one for each bit of punctuation —
/// applied to a typical value:
/// - `const` / `enum`: its longest value (`"feature"`: 3 tokens);
/// - boolean and null 1, a number [`NUMBER_TOKENS`];
/// - a string [`STRING_TOKENS`], [`FORMATTED_STRING_TOKENS`] with a
///   `format`, within what `minLength` / `maxLength` allow;
/// - an object: braces, then per property its quoted key and its value
///   (N string fields ≈ N × 34);
/// - an array: [`ARRAY_ITEMS`] items, at least `minItems`, at most
///   `maxItems`, each an item plus a comma;
/// - `anyOf` / `oneOf`: the largest alternative; `allOf`: the largest part.
///
/// Every sum saturates; the caller caps the result by the step's
/// `max_output_tokens`.
pub fn schema_output_tokens(schema: &Value) -> u64 {
    schema_tokens(schema, 0).max(1)
}

fn schema_tokens(schema: &Value, depth: usize) -> u64 {
    if depth > MAX_SCHEMA_DEPTH {
        return STRING_TOKENS;
    }
    if let Some(c) = schema.get("const") {
        return json_tokens(c);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.iter().map(json_tokens).max().unwrap_or(1);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            return alts
                .iter()
                .map(|a| schema_tokens(a, depth + 1))
                .max()
                .unwrap_or(1);
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
        _ if schema.get("items").is_some() => "array",
        _ => "string",
    };
    let count = |key: &str| schema.get(key).and_then(Value::as_u64);
    match ty {
        "object" => {
            let fields = schema
                .get("properties")
                .and_then(Value::as_object)
                .map_or(0, |props| {
                    props.iter().fold(0u64, |sum, (k, v)| {
                        // `"key": ` is the key's text, two quotes and a
                        // colon; a comma separates fields.
                        let key = text_tokens(k.len() as u64) + 2;
                        sum.saturating_add(key)
                            .saturating_add(schema_tokens(v, depth + 1))
                            .saturating_add(1)
                    })
                });
            fields.saturating_add(2)
        }
        "array" => {
            let items = ARRAY_ITEMS
                .max(count("minItems").unwrap_or(0))
                .min(count("maxItems").unwrap_or(u64::MAX));
            let item = schema
                .get("items")
                .map_or(STRING_TOKENS, |i| schema_tokens(i, depth + 1));
            items
                .saturating_mul(item.saturating_add(1))
                .saturating_add(2)
        }
        "boolean" | "null" => 1,
        "integer" | "number" => NUMBER_TOKENS,
        _ => {
            let typical = if schema.get("format").is_some() {
                FORMATTED_STRING_TOKENS
            } else {
                STRING_TOKENS
            };
            let at_least = count("minLength").map_or(0, text_tokens);
            let at_most = count("maxLength").map_or(u64::MAX, text_tokens);
            // Two quotes around the text.
            typical.max(at_least).min(at_most).saturating_add(2)
        }
    }
}

/// Tokens of a JSON value written out (an enum's or a const's value).
fn json_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => text_tokens(s.len() as u64) + 2,
        Value::Bool(_) | Value::Null => 1,
        Value::Number(n) => text_tokens(n.to_string().len() as u64),
        // A composite constant: its text, punctuation and all.
        other => text_tokens(other.to_string().len() as u64).max(1),
    }
}

/// About four characters a token, at least one.
fn text_tokens(chars: u64) -> u64 {
    chars.div_ceil(4).max(1)
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

/// A step's token counts by every tokenizer the plan needs, tallied call
/// by call as [`crate::step::expand_visiting`] renders them (a fan-out's
/// calls are not held): each call with upstream outputs at their expected
/// and their largest size.
pub(super) struct Tally {
    by: Vec<(Tokenizer, Sums)>,
    rendered: u64,
    /// Does any upstream output appear in a call?
    pub(super) reads_upstream: bool,
}

#[derive(Clone, Copy, Default)]
struct Sums {
    max_call: u64,
    max_call_worst: u64,
    sum: u64,
    sum_worst: u64,
}

impl Tally {
    pub(super) fn new(tokenizers: &[Tokenizer]) -> Tally {
        Tally {
            by: tokenizers.iter().map(|&t| (t, Sums::default())).collect(),
            rendered: 0,
            reads_upstream: false,
        }
    }

    pub(super) fn add(&mut self, call: &RenderedCall, w: &crate::workflow::Workflow) {
        self.rendered += 1;
        self.reads_upstream |= call.messages().any(|m| !markers_in(m).is_empty());
        let stripped: Vec<String> = call.messages().map(strip_markers).collect();
        let refs: Vec<&str> = stripped.iter().map(String::as_str).collect();
        let (extra, extra_worst) = upstream_tokens(call, w);
        for (tok, c) in &mut self.by {
            let base = tokens::count_chat(*tok, &refs) as u64;
            c.max_call = c.max_call.max(base + extra);
            c.max_call_worst = c.max_call_worst.max(base + extra_worst);
            c.sum += base + extra;
            c.sum_worst += base + extra_worst;
        }
    }

    /// The counts by `tok` (none for a tokenizer not tallied), for `calls`
    /// calls in all.
    pub(super) fn counts(&self, tok: Tokenizer, calls: u64) -> Counts {
        let Some((_, s)) = self.by.iter().find(|(t, _)| *t == tok) else {
            return Counts::default();
        };
        // Calls beyond the rendered ones (a fan-out whose size is known only
        // at run time) are priced like the average rendered call.
        let missing = calls.saturating_sub(self.rendered);
        let avg = |x: u64| x.checked_div(self.rendered).unwrap_or(0);
        Counts {
            max_call: s.max_call,
            max_call_worst: s.max_call_worst,
            total: s.sum + avg(s.sum) * missing,
            total_worst: s.sum_worst + avg(s.sum_worst) * missing,
        }
    }
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

    fn tokens(schema: Value) -> u64 {
        schema_output_tokens(&schema)
    }

    #[test]
    fn an_enum_or_a_scalar_is_a_few_tokens() {
        assert_eq!(
            tokens(json!({"type": "string", "enum": ["bug", "feature", "question"]})),
            4
        );
        assert_eq!(tokens(json!({"enum": [1, 22, 333]})), 1);
        assert_eq!(tokens(json!({"const": "yes"})), 3);
        assert_eq!(tokens(json!({"type": "boolean"})), 1);
        assert_eq!(tokens(json!({"type": ["integer", "null"]})), NUMBER_TOKENS);
    }

    #[test]
    fn strings_within_their_lengths() {
        assert_eq!(tokens(json!({"type": "string"})), STRING_TOKENS + 2);
        assert_eq!(tokens(json!({"type": "string", "format": "date"})), 14);
        // 20 characters at most: 5 tokens and the quotes.
        assert_eq!(tokens(json!({"type": "string", "maxLength": 20})), 7);
        // 2,000 characters at least: 500 tokens.
        assert_eq!(tokens(json!({"type": "string", "minLength": 2000})), 502);
        assert_eq!(tokens(json!({})), STRING_TOKENS + 2);
    }

    #[test]
    fn an_object_is_its_keys_and_values() {
        // N string fields ≈ N × (key + string + comma).
        let three = json!({"type": "object", "properties": {
            "title": {"type": "string"}, "body": {"type": "string"}, "owner": {"type": "string"}}});
        // "title" and "owner" are 2 tokens, "body" 1; each with quotes and
        // colon, a quoted string and a comma.
        let string = STRING_TOKENS + 2;
        assert_eq!(
            tokens(three),
            2 + (4 + string + 1) + (3 + string + 1) + (4 + string + 1)
        );
        let label = json!({"type": "object", "properties": {
            "label": {"enum": ["bug", "feature"]}, "confident": {"type": "boolean"}}});
        assert_eq!(tokens(label), 2 + (2 + 2 + 4 + 1) + (3 + 2 + 1 + 1));
    }

    #[test]
    fn arrays_are_bounded_by_their_item_counts() {
        let item = json!({"type": "integer"});
        let arr = |extra: Value| {
            let mut s = json!({"type": "array", "items": item});
            s.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            tokens(s)
        };
        let per_item = NUMBER_TOKENS + 1;
        assert_eq!(arr(json!({})), 2 + ARRAY_ITEMS * per_item);
        assert_eq!(arr(json!({"maxItems": 2})), 2 + 2 * per_item);
        assert_eq!(arr(json!({"minItems": 40})), 2 + 40 * per_item);
        assert_eq!(arr(json!({"minItems": 1, "maxItems": 3})), 2 + 3 * per_item);
    }

    #[test]
    fn hostile_schemas_stay_bounded() {
        // Deep nesting stops counting; huge counts saturate.
        let mut deep = json!({"type": "string"});
        for _ in 0..200 {
            deep = json!({"type": "array", "items": deep, "minItems": u64::MAX});
        }
        assert_eq!(tokens(deep), u64::MAX);
        assert_eq!(tokens(json!({"anyOf": []})), 1);
        assert_eq!(
            tokens(json!({"oneOf": [{"type": "boolean"}, {"type": "string"}]})),
            STRING_TOKENS + 2
        );
    }

    #[test]
    fn the_schema_wins_over_the_task_and_max_output_tokens_caps_it() {
        let step = |yaml: &str| -> Step { serde_yaml_step(yaml) };
        let enum_summary = step("task: summarize\nprompt: p\noutput: {schema: {enum: [a, b]}}\n");
        assert_eq!(expected_output_tokens(&enum_summary), 3);
        let plain = step("task: summarize\nprompt: p\n");
        assert_eq!(expected_output_tokens(&plain), 200);
        let capped = step(
            "task: extract\nprompt: p\nmax_output_tokens: 50\noutput: {schema: {type: array, items: {type: string}, minItems: 100}}\n",
        );
        assert_eq!(expected_output_tokens(&capped), 50);
    }

    fn serde_yaml_step(yaml: &str) -> Step {
        let doc = crate::yaml::Document::parse(crate::diagnostic::SourceFile::new("s.yaml", yaml))
            .expect("parses");
        serde_json::from_value(doc.root.clone()).expect("a step")
    }
}
