//! Fuzzing: the loaders (workflow, policy, suite, JSONL and CSV cases), the
//! template checks (`check` on generated templates) and the response parsers
//! (SSE framing and each provider's answer parsing) on generated inputs.
//!
//! The inputs are structure-aware: documents are generated from the shipped
//! JSON Schemas with plausible names (steps, inputs, models and providers
//! that refer to each other), Jinja templates and expressions made of real
//! constructs, provider answers in each dialect's shape; then the text is
//! mutated (bytes cut, YAML and Jinja tokens, anchors and aliases inserted,
//! lines duplicated) so the checks see both nearly-right and broken input.
//!
//! Asserted on every input: no panic (a panic fails the case), no hang (each
//! input is bounded in size, and loops in the checked code are bounded per
//! input — a generated stream has a finite number of events and must end),
//! bounded memory (inputs are small, and the loaders' own bounds are tested
//! in `bounds`). Secrets in the client never show in an error.
//!
//! A few hundred cases per test run in the normal suite. For a longer run:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release --test integration fuzz::
//! ```
//!
//! A failure names its seed; the panic message carries the generated input.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use tollgate::analyze;
use tollgate::catalog::Catalog;
use tollgate::diagnostic::{Diagnostic, RenderOptions, SourceFile, render};
use tollgate::inputs;
use tollgate::plan;
use tollgate::policy::{self, Policy, PolicyFile};
use tollgate::schema::Format;
use tollgate::workflow::{self, Workflow};
use tollgate::yaml::Document;

use crate::support::root;

/// Cases per test: `PROPTEST_CASES` when set, else `default` (sized so the
/// whole module stays well under a minute in a debug build on two cores).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let mut config = ProptestConfig {
        cases,
        // The seed is the whole input: nothing to shrink, nothing to persist.
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // The same inputs on every run (no flaky failures in the normal suite);
    // `PROPTEST_RNG_SEED=<n>` explores others.
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x7011_6a7e);
    }
    config
}

/// Runs `f`; a panic is re-raised with the input that caused it.
fn no_panic<T>(input: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let shown: String = input.chars().take(4000).collect();
            panic!("panicked: {why}\n--- input ---\n{shown}\n--- end ---");
        }
    }
}

// ---------------------------------------------------------------------------
// Generators.

const STEPS: [&str; 4] = ["a", "b", "c", "judge"];
const INPUTS: [&str; 4] = ["x", "y", "ticket", "items"];
const MODELS: [&str; 4] = ["m1", "m2", "local", "gpt-4o-mini"];
const PROVIDERS: [&str; 3] = ["p1", "p2", "openai"];
const LEVELS: [&str; 5] = ["public", "internal", "confidential", "secret", "top"];

/// Pieces of Jinja that the template checks must handle: reads of every
/// kind, loops, assignments, macros, filters, tests, functions (some not
/// allowed), and broken syntax.
const TEMPLATE_PARTS: &[&str] = &[
    "Hello. ",
    "{{ inputs.x }}",
    "{{ inputs.y | upper }}",
    "{{ inputs.ticket | length }}",
    "{{ inputs }}",
    "{{ steps.a.output }}",
    "{{ steps.b.output.label }}",
    "{{ steps.c.output['k'] }}",
    "{{ steps }}",
    "{{ item }}",
    "{{ item.name }}",
    "{{ range(3) | list }}",
    "{% for i in range(3) %}{{ i }}{% endfor %}",
    "{% for i in inputs.items %}{{ loop.index }}{{ i }}{% endfor %}",
    "{% for a in steps.a.output %}{% for b in range(2) %}{{ a }}{{ b }}{% endfor %}{% endfor %}",
    "{% if inputs.x %}yes{% else %}no{% endif %}",
    "{% if inputs.x is defined and inputs.x is string %}s{% endif %}",
    "{% set v = inputs.x %}{{ v }}",
    "{% set inputs = inputs %}{{ inputs.x }}",
    "{% set (p, q) = [inputs.x, inputs.y] %}{{ p }}{{ q }}",
    "{% with w = inputs.y %}{{ w }}{% endwith %}",
    "{% macro m(a=inputs.x) %}{{ a }}{% endmacro %}{{ m() }}",
    "{% set ns = namespace(n=0) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}",
    "{{ inputs.x ~ inputs.y }}",
    "{{ inputs.x | tojson }}",
    "{{ inputs.x | default('d') | trim | replace('a', 'b') }}",
    "{{ dict(a=1) | items | list }}",
    "{{ 'a' * 3 }}",
    "{{ [1, 2, 3] | join(',') }}",
    "{{ inputs.x[0:2] }}",
    "{% filter upper %}up{% endfilter %}",
    "{% raw %}{{ not a tag }}{% endraw %}",
    "{# a comment #}",
    "\n",
    "é ✓ 日本 ",
];

/// Pieces that make a template fail its checks (or that the checks must
/// refuse): unknown names, broken tags, functions that are not allowed.
const TEMPLATE_BROKEN: &[&str] = &[
    "{{ 1 / 0 }}",
    "{{ nope | unknown_filter }}",
    "{{ unknown_function() }}",
    "{% include 'other' %}",
    "{% extends 'base' %}",
    "{{",
    "{%",
    "}}",
    "%}",
    "{% endfor %}",
    "{% for %}",
    "{{ inputs.x }",
    "{{ steps.missing.output }}",
    "{{ inputs.undeclared }}",
    "{{ debug() }}",
];

const EXPRESSION_PARTS: &[&str] = &[
    "inputs.x",
    "inputs.items",
    "steps.a.output",
    "steps.a.output.label == 'bug'",
    "inputs.x | length > 2",
    "not inputs.y",
    "range(3)",
    "[1, 2, 3]",
    "steps.b.output.items",
    "inputs.x and steps.a.output",
    "debug()",
    "item",
    "(",
    "inputs.x +",
    "'a' in inputs.x",
    "inputs",
    "",
];

const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a\n",
    "{",
    "}",
    "[",
    "]",
    "- ",
    ": ",
    ":",
    "'",
    "\"",
    "\t",
    "\n",
    "\n  ",
    "\n    ",
    "!!str ",
    "!!int ",
    "!!binary ",
    "? ",
    "---\n",
    "...\n",
    "|",
    ">",
    "|-\n  ",
    "#",
    "%YAML 1.2\n",
    ",",
    "\\",
    "\u{0}",
    "\u{feff}",
    "\r\n",
    "\r",
    "é",
    "日本",
    "{{",
    "}}",
    "{%",
    "%}",
    "~",
    "null",
    "true",
    "0x1F",
    "1e999",
    "-0",
    ".inf",
    "&b [*a, *a]",
    "*missing",
    "@",
    "`",
];

const WORDS: &[&str] = &[
    "",
    "t",
    "classify",
    "summarize",
    "hello world",
    "sk-ant-api03-abcdefghijklmnopqrstuvwx",
    "é",
    "日本語",
    " leading",
    "trailing ",
    "a\nb",
    "yes",
    "no",
    "1",
    "1.5",
    "null",
    "~",
    "-",
    "*",
    "&x",
    "#x",
    "{x}",
    "[x]",
    "\"q\"",
    "'q'",
    "\\",
    "x:y",
];

/// A deterministic source of choices for one generated input.
struct Gen {
    rng: fastrand::Rng,
    /// Nodes left: bounds every generated document.
    budget: usize,
    /// A clean document: values of the right type, names that refer to each
    /// other (one provider, two models), no mutation — so that a good share
    /// of inputs reaches the deep checks.
    clean: bool,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut rng = fastrand::Rng::with_seed(seed);
        let clean = rng.u8(..100) < 50;
        Gen {
            rng,
            budget: 150,
            clean,
        }
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        let from = if self.clean {
            // Names that resolve against each other.
            match from.first().copied() {
                Some("m1") => &from[..2],
                Some("p1") => &from[..1],
                Some("a") => &from[..3],
                Some("public") => &from[..4],
                _ => from,
            }
        } else {
            from
        };
        from[self.rng.usize(..from.len())]
    }

    fn chance(&mut self, percent: u8) -> bool {
        self.rng.u8(..100) < percent
    }

    fn template(&mut self) -> String {
        let n = self.rng.usize(0..6);
        let mut t = String::new();
        for _ in 0..n {
            let part = if !self.clean && self.chance(15) {
                self.pick(TEMPLATE_BROKEN)
            } else {
                self.pick(TEMPLATE_PARTS)
            };
            t.push_str(part);
        }
        if !self.clean && self.chance(10) && !t.is_empty() {
            // Cut anywhere (at a character boundary): an unfinished tag.
            let cut = self.rng.usize(..=t.len());
            let cut = (0..=cut)
                .rev()
                .find(|&i| t.is_char_boundary(i))
                .unwrap_or(0);
            t.truncate(cut);
        }
        t
    }

    fn expression(&mut self) -> String {
        let mut e = self.pick(EXPRESSION_PARTS).to_owned();
        if self.chance(20) {
            e.push_str(" or ");
            e.push_str(self.pick(EXPRESSION_PARTS));
        }
        e
    }

    /// A plausible string for a value under `key`.
    fn string_for(&mut self, key: &str) -> String {
        if !self.clean && self.chance(5) {
            return self.pick(WORDS).to_owned();
        }
        match key {
            "prompt" | "system" | "rubric" | "prefix" => self.template(),
            "when" | "for_each" => self.expression(),
            // A catalog model id, so that the model has a price.
            "model" if self.clean => "gpt-4o-mini".to_owned(),
            "use" | "model" | "flagship" | "fallbacks" => self.pick(&MODELS).to_owned(),
            "provider" => self.pick(&PROVIDERS).to_owned(),
            "needs" => self.pick(&STEPS).to_owned(),
            "sensitivity" | "cloud_max" | "above" | "at_most" | "levels" => {
                self.pick(&LEVELS).to_owned()
            }
            "base_url" if self.clean => "http://127.0.0.1:9/v1".to_owned(),
            "base_url" => self
                .pick(&[
                    "http://127.0.0.1:9/v1",
                    "https://api.example.com/v1",
                    "http://[::1]@evil.example/",
                    "http://127.0.0.1:1@evil.example/v1",
                    "not a url",
                    "ftp://x",
                    "",
                ])
                .to_owned(),
            "api_key_env" if self.clean => "OPENAI_API_KEY".to_owned(),
            "api_key_env" => self
                .pick(&[
                    "OPENAI_API_KEY",
                    "sk-proj-abcdefghijklmnop1234567890",
                    "",
                    "A B",
                ])
                .to_owned(),
            "workflow" => "wf.yaml".to_owned(),
            "policy" => "policy.yaml".to_owned(),
            "cases_from" => self
                .pick(&[
                    "cases.jsonl",
                    "cases.csv",
                    "missing.jsonl",
                    ".",
                    "fifo.jsonl",
                    "cases.txt",
                ])
                .to_owned(),
            "prompt_file" if self.clean => "p.md".to_owned(),
            "prompt_file" => self
                .pick(&[
                    "p.md",
                    "../outside.md",
                    ".",
                    "/dev/zero",
                    "fifo.md",
                    "missing.md",
                ])
                .to_owned(),
            "timeout" | "ttl" if self.clean => "30s".to_owned(),
            "timeout" | "ttl" => self
                .pick(&["30s", "1m", "500ms", "soon", "-1s", "99999999999h"])
                .to_owned(),
            "regex" | "matches" | "not_matches" => self
                .pick(&["^bug$", "[", "(a+)+$", "\\p{L}+", "(?i)x", ""])
                .to_owned(),
            "binary" | "model_path" => "${HOME}/x".to_owned(),
            "name" if self.clean => "fuzz".to_owned(),
            _ if self.clean => self
                .pick(&["t", "a", "summarize", "classify", "x"])
                .to_owned(),
            _ => {
                let w = self.pick(WORDS).to_owned();
                if self.chance(30) {
                    self.pick(&STEPS).to_owned()
                } else {
                    w
                }
            }
        }
    }

    /// A name for a new key in a map under `parent`.
    fn key_for(&mut self, parent: &str) -> String {
        match parent {
            "steps" | "expect" => self.pick(&STEPS).to_owned(),
            "inputs" => self.pick(&INPUTS).to_owned(),
            "models" | "fallbacks" => self.pick(&MODELS).to_owned(),
            "providers" => self.pick(&PROVIDERS).to_owned(),
            "headers" => self
                .pick(&["x-api-key", "Authorization", "x-title"])
                .to_owned(),
            _ => self
                .pick(&["k", "label", "name", "extra", "api_key", "ticket"])
                .to_owned(),
        }
    }

    /// Anything at all, typed wrong on purpose.
    fn wild(&mut self, key: &str, depth: usize) -> Value {
        match self.rng.u8(..8) {
            0 => Value::Null,
            1 => json!(self.rng.bool()),
            2 => json!(
                self.pick(&["-1", "0", "1e308", "18446744073709551615"])
                    .parse::<f64>()
                    .unwrap_or(0.0)
            ),
            3 => json!(self.rng.i64(..)),
            4 if depth < 6 => Value::Array(vec![self.wild(key, depth + 1)]),
            5 if depth < 6 => json!({ self.key_for(key): self.wild(key, depth + 1) }),
            _ => json!(self.string_for(key)),
        }
    }

    fn resolve<'a>(&self, schema: &'a Value, root: &'a Value) -> &'a Value {
        let mut s = schema;
        for _ in 0..8 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => match root.pointer(r.trim_start_matches('#')) {
                    Some(t) => s = t,
                    None => break,
                },
                None => break,
            }
        }
        s
    }

    /// A value for `schema` (mostly valid, sometimes not) under `key`.
    fn value_for_schema(&mut self, schema: &Value, root: &Value, key: &str, depth: usize) -> Value {
        self.budget = self.budget.saturating_sub(1);
        if !self.clean && (self.budget == 0 || depth > 10 || self.chance(3)) {
            return self.wild(key, depth);
        }
        let schema = self.resolve(schema, root);
        if let Some(c) = schema.get("const") {
            return c.clone();
        }
        if let Some(list) = schema.get("enum").and_then(Value::as_array) {
            if !list.is_empty() && (self.clean || !self.chance(5)) {
                return list[self.rng.usize(..list.len())].clone();
            }
        }
        for alt in ["anyOf", "oneOf"] {
            if let Some(list) = schema.get(alt).and_then(Value::as_array) {
                // A schema with both properties and anyOf (required-sets)
                // is an object: build it from its properties.
                if !list.is_empty() && schema.get("properties").is_none() {
                    let pick = list[self.rng.usize(..list.len())].clone();
                    return self.value_for_schema(&pick, root, key, depth);
                }
            }
        }
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(ts)) if !ts.is_empty() => ts[self.rng.usize(..ts.len())]
                .as_str()
                .unwrap_or("string")
                .to_owned(),
            _ if schema.get("properties").is_some() => "object".to_owned(),
            _ if schema.get("items").is_some() => "array".to_owned(),
            _ => return self.wild(key, depth),
        };
        match ty.as_str() {
            "object" => {
                let mut map = Map::new();
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for (k, sub) in props {
                        let wanted = match (required.contains(&k.as_str()), self.clean) {
                            (true, true) => 100,
                            (true, false) => 90,
                            (false, true) => 60,
                            (false, false) => 35,
                        };
                        if self.chance(wanted) {
                            let v = self.value_for_schema(sub, root, k, depth + 1);
                            map.insert(k.clone(), v);
                        }
                    }
                }
                let extra = schema.get("additionalProperties");
                let n = match extra {
                    Some(Value::Object(_)) if self.budget == 0 || depth > 10 => 0,
                    Some(Value::Object(_)) if self.clean => self.rng.usize(1..3),
                    Some(Value::Object(_)) => self.rng.usize(0..4),
                    None if schema.get("properties").is_none() => self.rng.usize(0..3),
                    _ if self.clean => 0,
                    _ => usize::from(self.chance(3)),
                };
                for _ in 0..n {
                    let k = self.key_for(key);
                    let v = match extra {
                        Some(sub @ Value::Object(_)) => {
                            self.value_for_schema(sub, root, &k, depth + 1)
                        }
                        _ => self.wild(&k, depth + 1),
                    };
                    map.insert(k, v);
                }
                Value::Object(map)
            }
            "array" if self.clean && key == "levels" => json!(&LEVELS[..4]),
            "array" => {
                let n = if self.clean {
                    self.rng.usize(1..3)
                } else {
                    self.rng.usize(0..4)
                };
                let items = schema.get("items").cloned().unwrap_or(Value::Bool(true));
                Value::Array(
                    (0..n)
                        .map(|_| self.value_for_schema(&items, root, key, depth + 1))
                        .collect(),
                )
            }
            "string" => {
                // A schema's own bounds are kept (mostly): the deep checks
                // are only fed when most values pass the schema, and every
                // new bounded field would otherwise lower the share that do.
                let mut text = self.string_for(key);
                let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
                if text.chars().count() < min as usize && (self.clean || !self.chance(10)) {
                    text.push_str(&"x".repeat(min as usize));
                }
                json!(text)
            }
            "integer" => {
                let min = schema.get("minimum").and_then(Value::as_i64).unwrap_or(0);
                let max = schema
                    .get("maximum")
                    .and_then(Value::as_i64)
                    .unwrap_or(200_000);
                if !self.clean && self.chance(10) {
                    json!(
                        self.pick(&["-1", "0", "9223372036854775807"])
                            .parse::<i64>()
                            .unwrap_or(0)
                    )
                } else {
                    json!(self.rng.i64(min..=max.max(min)))
                }
            }
            "number" => {
                let min = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
                let max = schema
                    .get("maximum")
                    .and_then(Value::as_f64)
                    .unwrap_or(min + 10.0);
                if !self.clean && self.chance(10) {
                    json!(-1.5)
                } else {
                    json!(min + self.rng.f64() * (max - min).max(0.0))
                }
            }
            "boolean" => json!(self.rng.bool()),
            "null" => Value::Null,
            _ => self.wild(key, depth),
        }
    }

    /// YAML text for a value: JSON (flow style) or block style.
    fn yaml(&mut self, v: &Value) -> String {
        if self.chance(25) {
            return serde_json::to_string_pretty(v).unwrap_or_default();
        }
        let mut out = String::new();
        self.block(v, 0, &mut out);
        out
    }

    fn scalar(&mut self, v: &Value, indent: usize) -> String {
        match v {
            Value::String(s) => {
                let plain = !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_alphanumeric() || c == ' ' || c == '_')
                    && !s.starts_with(' ')
                    && !s.ends_with(' ')
                    && s.parse::<f64>().is_err()
                    && !matches!(
                        s.as_str(),
                        "yes" | "no" | "null" | "true" | "false" | "y" | "n"
                    );
                if plain && self.chance(80) {
                    s.clone()
                } else if s.contains('\n') && !s.starts_with([' ', '\n']) && self.chance(60) {
                    let pad = " ".repeat(indent + 2);
                    let mut block = String::from("|-\n");
                    for line in s.split('\n') {
                        block.push_str(&pad);
                        block.push_str(line);
                        block.push('\n');
                    }
                    block.pop();
                    block
                } else {
                    serde_json::to_string(s).unwrap_or_default()
                }
            }
            other => other.to_string(),
        }
    }

    fn block(&mut self, v: &Value, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    out.push_str(&pad);
                    out.push_str(&self.scalar(&json!(k), indent));
                    out.push(':');
                    if matches!(v, Value::Object(m) if !m.is_empty())
                        || matches!(v, Value::Array(a) if !a.is_empty())
                    {
                        out.push('\n');
                        self.block(v, indent + 2, out);
                    } else {
                        out.push(' ');
                        let s = match v {
                            Value::Object(_) => "{}".to_owned(),
                            Value::Array(_) => "[]".to_owned(),
                            other => self.scalar(other, indent),
                        };
                        out.push_str(&s);
                        out.push('\n');
                    }
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for item in items {
                    out.push_str(&pad);
                    out.push('-');
                    if matches!(item, Value::Object(m) if !m.is_empty())
                        || matches!(item, Value::Array(a) if !a.is_empty())
                    {
                        out.push('\n');
                        self.block(item, indent + 2, out);
                    } else {
                        out.push(' ');
                        let s = match item {
                            Value::Object(_) => "{}".to_owned(),
                            Value::Array(_) => "[]".to_owned(),
                            other => self.scalar(other, indent),
                        };
                        out.push_str(&s);
                        out.push('\n');
                    }
                }
            }
            other => {
                out.push_str(&pad);
                let s = self.scalar(other, indent);
                out.push_str(&s);
                out.push('\n');
            }
        }
    }

    /// Up to a few edits of the text: cuts, tokens, repeated lines, an
    /// anchor on one value and aliases to it elsewhere.
    fn mutate(&mut self, text: String) -> String {
        if self.clean || self.chance(35) {
            return text;
        }
        let mut bytes = text.into_bytes();
        for _ in 0..self.rng.usize(1..4) {
            let at = self.rng.usize(..=bytes.len());
            match self.rng.u8(..6) {
                0 => {
                    let end = (at + self.rng.usize(0..20)).min(bytes.len());
                    bytes.drain(at..end);
                }
                1 | 2 => {
                    let t = self.pick(TOKENS).as_bytes().to_vec();
                    bytes.splice(at..at, t);
                }
                3 => {
                    // Repeat a line (a duplicate key, an extra item).
                    let start = bytes[..at]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    let end = bytes[at..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |i| at + i + 1);
                    let line = bytes[start..end].to_vec();
                    bytes.splice(end..end, line);
                }
                4 => {
                    // An anchor after a `: ` and an alias at another one.
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let spots: Vec<usize> = text.match_indices(": ").map(|(i, _)| i + 2).collect();
                    if spots.len() >= 2 {
                        let a = spots[self.rng.usize(..spots.len())];
                        let b = spots[self.rng.usize(..spots.len())];
                        let mut t = text.clone();
                        if a < b {
                            let line_end = t[b..].find('\n').map_or(t.len(), |i| b + i);
                            t.replace_range(b..line_end, "*z");
                            t.insert_str(a, "&z ");
                        }
                        bytes = t.into_bytes();
                    }
                }
                _ => bytes.insert(at.min(bytes.len()), self.rng.u8(..)),
            }
        }
        // Files are read as UTF-8: invalid bytes are a read error, tested
        // elsewhere; keep the loaders busy with text.
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

// ---------------------------------------------------------------------------
// What the checks are run on.

fn schema(format: Format) -> Value {
    serde_json::from_str(format.schema_text()).unwrap()
}

/// A folder the generated files live in: prompt files, a FIFO, case files.
fn workspace() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("p.md"), "Prompt {{ inputs.x }}").unwrap();
        for fifo in ["fifo.md", "fifo.jsonl"] {
            let _ = std::process::Command::new("mkfifo")
                .arg(dir.path().join(fifo))
                .status();
        }
        dir
    })
    .path()
}

fn fixed_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        policy::load(&root().join("policies/default.yaml"))
            .expect("the default policy loads")
            .1
    })
}

fn fixed_analysis() -> &'static analyze::Analysis {
    static A: OnceLock<analyze::Analysis> = OnceLock::new();
    A.get_or_init(|| {
        let path = root().join("workflows/review-diff.yaml");
        let w = workflow::load(&path).expect("the workflow loads");
        analyze::analyze(w, &root()).expect("the workflow checks")
    })
}

/// Every diagnostic renders (miette, JSON) without a panic.
fn render_all(diags: &[Diagnostic]) {
    for d in diags.iter().take(20) {
        let _ = render(d, RenderOptions::default());
        let _ = serde_json::to_string(&d.to_json()).unwrap();
    }
}

/// How far an input got through the checks: the fuzz tests count these, so
/// a generator that stops producing input the later stages accept fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Parsed = 0,
    Typed = 1,
    Checked = 2,
    Planned = 3,
}

/// `check` on a workflow text, and `plan` of it against a fixed policy.
fn check_workflow(text: &str) -> Option<Stage> {
    let path = workspace().join("wf.yaml");
    let doc = match Document::parse(SourceFile::new(path, text)) {
        Ok(doc) => doc,
        Err(d) => return fail(&d, None),
    };
    let w = match workflow::from_document::<Workflow>(doc, Format::Workflow) {
        Ok(w) => w,
        Err(d) => return fail(&d, Some(Stage::Parsed)),
    };
    let a = match analyze::analyze(w, workspace()) {
        Ok(a) => a,
        Err(d) => return fail(&d, Some(Stage::Typed)),
    };
    let values = inputs::placeholders(&a.workflow.value);
    match plan::build(&a, fixed_policy(), "policy.yaml", &values) {
        Ok(_) => Some(Stage::Planned),
        Err(d) => fail(&d, Some(Stage::Checked)),
    }
}

fn fail(diags: &[Diagnostic], reached: Option<Stage>) -> Option<Stage> {
    render_all(diags);
    // `FUZZ_DEBUG=1`: what stopped each input, to tune the generators.
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        if let Some(d) = diags.first() {
            eprintln!("stopped after {reached:?}: {} {}", d.code, d.message);
        }
    }
    reached
}

/// `check` on a policy text, and `plan` of a fixed workflow with it.
fn check_policy(text: &str) -> Option<Stage> {
    let doc = match Document::parse(SourceFile::new("policy.yaml", text)) {
        Ok(doc) => doc,
        Err(d) => return fail(&d, None),
    };
    let loaded = match workflow::from_document::<PolicyFile>(doc, Format::Policy) {
        Ok(p) => p,
        Err(d) => return fail(&d, Some(Stage::Parsed)),
    };
    let (p, d) = policy::compile(&loaded.value, &loaded.doc, Catalog::builtin());
    if d.iter().any(Diagnostic::is_error) {
        return fail(&d, Some(Stage::Typed));
    }
    render_all(&d);
    let a = fixed_analysis();
    let values = inputs::placeholders(&a.workflow.value);
    match plan::build(a, &p, "policy.yaml", &values) {
        Ok(_) => Some(Stage::Planned),
        Err(d) => fail(&d, Some(Stage::Checked)),
    }
}

/// Counts of the stages the inputs of one test reached.
#[derive(Default)]
struct Reach(std::sync::Mutex<[usize; 5]>);

impl Reach {
    fn add(&self, s: Option<Stage>) {
        let i = s.map_or(0, |s| s as usize + 1);
        self.0.lock().unwrap()[i] += 1;
    }

    /// Fails when fewer than `percent` % of inputs got to `stage` or further:
    /// the generator must keep feeding the deep checks, not only the parser.
    fn assert_at_least(&self, stage: Stage, percent: usize) {
        let counts = *self.0.lock().unwrap();
        let total: usize = counts.iter().sum();
        let deep: usize = counts[stage as usize + 1..].iter().sum();
        eprintln!("reach (none, parsed, typed, checked, planned): {counts:?}");
        assert!(
            total < 20 || deep * 100 >= total * percent,
            "only {deep} of {total} inputs reached {stage:?}: {counts:?}"
        );
    }
}

/// Runs `case` on `default` seeds (or `PROPTEST_CASES`) and returns how
/// far they got.
fn fuzz(default: u32, case: impl Fn(u64) -> Option<Stage>) -> Reach {
    let reach = Reach::default();
    let mut runner = proptest::test_runner::TestRunner::new(config(default));
    let result = runner.run(&any::<u64>(), |seed| {
        reach.add(case(seed));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    reach
}

// ---------------------------------------------------------------------------
// Loaders and template checks.

#[test]
fn workflow_loading_and_checks_never_panic() {
    let reach = fuzz(400, |seed| {
        let mut g = Gen::new(seed);
        let v = g.value_for_schema(&schema(Format::Workflow), &schema(Format::Workflow), "", 0);
        let text = g.yaml(&v);
        let text = g.mutate(text);
        no_panic(&text, || check_workflow(&text))
    });
    reach.assert_at_least(Stage::Typed, 10);
}

#[test]
fn policy_loading_and_routing_never_panic() {
    let reach = fuzz(400, |seed| {
        let mut g = Gen::new(seed);
        let v = g.value_for_schema(&schema(Format::Policy), &schema(Format::Policy), "", 0);
        let text = g.yaml(&v);
        let text = g.mutate(text);
        no_panic(&text, || check_policy(&text))
    });
    reach.assert_at_least(Stage::Typed, 5);
}

/// Valid workflows whose templates, `when` and `for_each` are generated:
/// the template checks (and the plan's rendering) see every construct.
#[test]
fn template_checks_never_panic() {
    let reach = fuzz(500, |seed| {
        let mut g = Gen::new(seed);
        let mut steps = Map::new();
        for (i, id) in STEPS.iter().take(g.rng.usize(1..4)).enumerate() {
            // Reads of earlier steps only (a cycle is another test's
            // subject); the first step reads an input instead.
            let upstream = if i == 0 {
                "inputs.x".to_owned()
            } else {
                format!("steps.{}.output", STEPS[i - 1])
            };
            let wire = |t: String| {
                ["steps.a.output", "steps.b.output", "steps.c.output"]
                    .iter()
                    .fold(t, |t, s| t.replace(s, &upstream))
            };
            let mut step = json!({ "task": "t", "prompt": wire(g.template()) });
            if g.chance(30) {
                step["system"] = json!(wire(g.template()));
            }
            if g.chance(25) {
                step["when"] = json!(wire(g.expression()));
            }
            if g.chance(25) {
                step["for_each"] = json!(wire(g.expression()));
            }
            if i > 0 && g.chance(50) {
                step["needs"] = json!([STEPS[i - 1]]);
            }
            steps.insert((*id).to_owned(), step);
        }
        let v = json!({
            "version": 1, "name": "fuzz",
            "inputs": {
                "x": { "type": "string", "sensitivity": "confidential" },
                "y": { "type": "string", "default": "why" },
                "ticket": { "type": "string", "example": "t" },
                "items": { "type": "array", "default": [1, 2] }
            },
            "steps": steps,
        });
        let text = g.yaml(&v);
        no_panic(&text, || check_workflow(&text))
    });
    reach.assert_at_least(Stage::Checked, 20);
}

/// The case files of a suite, generated: JSONL lines and CSV rows.
fn case_files(g: &mut Gen) -> (String, String) {
    let mut jsonl = String::new();
    for i in 0..g.rng.usize(0..5) {
        let mut case = json!({ "name": format!("c{i}"), "inputs": { "ticket": g.string_for("") } });
        if g.chance(50) {
            case["expect"] = json!({ g.pick(&["kind", "urgency", "nope"]): { g.pick(&["contains", "regex", "max_tokens", "equals", "json_schema"]): g.wild("regex", 0) } });
        }
        if g.chance(10) {
            case = g.wild("", 0);
        }
        jsonl.push_str(&serde_json::to_string(&case).unwrap());
        jsonl.push('\n');
    }
    let mut csv = String::from(g.pick(&[
        "name,ticket\n",
        "name,ticket,expect.kind.contains\n",
        "ticket\n",
        "name,name\n",
        "name,\"tic\"\"ket\",expect.kind\n",
        "",
    ]));
    for i in 0..g.rng.usize(0..5) {
        let cell = serde_json::to_string(&g.string_for("")).unwrap();
        let row = match g.rng.u8(..4) {
            0 => format!("c{i},{cell}\n"),
            1 => format!("c{i},{cell},bug\n"),
            2 => format!("c{i}\n"),
            _ => format!("\"c{i},{cell}\n"),
        };
        csv.push_str(&row);
    }
    (g.mutate(jsonl), g.mutate(csv))
}

proptest! {
    // Each case writes its files: fewer cases than the in-memory loaders.
    #![proptest_config(config(100))]

    #[test]
    fn suite_and_case_file_loading_never_panics(seed in any::<u64>()) {
        let mut g = Gen::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let r = root();
        std::fs::copy(r.join("workflows/local-triage.yaml"), dir.path().join("wf.yaml")).unwrap();
        std::fs::copy(r.join("policies/local.yaml"), dir.path().join("policy.yaml")).unwrap();
        let v = g.value_for_schema(&schema(Format::Suite), &schema(Format::Suite), "", 0);
        let suite = g.yaml(&v);
        let suite = g.mutate(suite);
        let (jsonl, csv) = case_files(&mut g);
        std::fs::write(dir.path().join("suite.yaml"), &suite).unwrap();
        std::fs::write(dir.path().join("cases.jsonl"), &jsonl).unwrap();
        std::fs::write(dir.path().join("cases.csv"), &csv).unwrap();
        let all = format!("{suite}\n--- cases.jsonl\n{jsonl}\n--- cases.csv\n{csv}");
        no_panic(&all, || {
            if let Err(d) = tollgate::eval::suite::load(&dir.path().join("suite.yaml")) {
                render_all(&d);
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Response parsers.

/// SSE lines a provider (or something pretending to be one) may send.
fn sse_bytes(g: &mut Gen) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..g.rng.usize(0..12) {
        let line: Vec<u8> = match g.rng.u8(..12) {
            0 => b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}".to_vec(),
            1 => b"data: [DONE]".to_vec(),
            2 => b"event: message_stop".to_vec(),
            3 => b": keep-alive".to_vec(),
            4 => b"id: 7".to_vec(),
            5 => b"retry: 10".to_vec(),
            6 => Vec::new(),
            7 => [b"data: ".as_slice(), &[0xff, 0xfe, 0xc3]].concat(),
            8 => {
                let mut l = b"data: ".to_vec();
                l.extend(std::iter::repeat_n(b'x', g.rng.usize(0..20_000)));
                l
            }
            9 => b"data".to_vec(),
            10 => b"data:no-space".to_vec(),
            _ => (0..g.rng.usize(0..16)).map(|_| g.rng.u8(..)).collect(),
        };
        out.extend(line);
        out.extend_from_slice(
            g.pick(&["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", ""])
                .as_bytes(),
        );
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(config(500))]

    /// Any bytes in any chunking: events come out, or an error; the stream
    /// ends, with at most one event per line end.
    #[test]
    fn sse_parsing_never_panics_and_ends(seed in any::<u64>()) {
        let mut g = Gen::new(seed);
        let bytes = sse_bytes(&mut g);
        let mut chunks = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let n = g.rng.usize(1..=rest.len().min(64));
            chunks.push(Ok(bytes::Bytes::copy_from_slice(&rest[..n])));
            rest = &rest[n..];
        }
        let line_ends = bytes.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
        let shown = String::from_utf8_lossy(&bytes).into_owned();
        let events = no_panic(&shown, || {
            runtime().block_on(async move {
                let mut stream = tollgate::provider::sse::events(
                    futures::stream::iter(chunks),
                    Duration::from_secs(30),
                );
                let mut n = 0usize;
                // Bounded: one more event than line ends is already a bug.
                while n <= line_ends + 1 {
                    match stream.next().await {
                        Some(Ok(_)) => n += 1,
                        Some(Err(_)) | None => break,
                    }
                }
                n
            })
        });
        prop_assert!(events <= line_ends + 1, "{events} events from {line_ends} line ends");
    }
}

const KEY: &str = "sk-fuzz-SECRET-0123456789abcdef";

/// A well-shaped answer body of a dialect, to be mutated.
fn answer(kind: tollgate::provider::ProviderKind, g: &mut Gen) -> Value {
    use tollgate::provider::ProviderKind;
    let text = g.string_for("");
    match kind {
        ProviderKind::Anthropic => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{ "type": "text", "text": text }, { "type": "thinking", "thinking": "hm" }],
            "stop_reason": "end_turn",
            "usage": { "input_tokens": 2, "output_tokens": 5, "cache_read_input_tokens": 0,
                       "cache_creation": { "ephemeral_5m_input_tokens": 0 } }
        }),
        ProviderKind::Gemini => json!({
            "candidates": [{ "content": { "parts": [{ "text": text }], "role": "model" },
                             "finishReason": "STOP" }],
            "usageMetadata": { "promptTokenCount": 3, "candidatesTokenCount": 4,
                               "thoughtsTokenCount": 0, "cachedContentTokenCount": 0 },
            "responseId": "r1"
        }),
        _ => json!({
            "id": "c1", "object": "chat.completion", "model": "gpt",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text },
                          "finish_reason": "stop", "text": text }],
            "usage": { "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 0.001,
                       "prompt_tokens_details": { "cached_tokens": 0 },
                       "completion_tokens_details": { "reasoning_tokens": 0 } }
        }),
    }
}

/// Replaces a random node of `v` with something wild, or removes it.
fn mutate_json(v: &mut Value, g: &mut Gen, depth: usize) {
    let replace = depth > 0 && g.chance(25);
    if replace {
        *v = g.wild("", 4);
        return;
    }
    match v {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[g.rng.usize(..keys.len())];
            if g.chance(15) {
                map.remove(k);
            } else if let Some(child) = map.get_mut(k) {
                mutate_json(child, g, depth + 1);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = g.rng.usize(..items.len());
            if g.chance(15) {
                items.remove(i);
            } else {
                mutate_json(&mut items[i], g, depth + 1);
            }
        }
        _ => *v = g.wild("", 4),
    }
}

/// A body as the fake sends it: JSON, or the same answer as SSE chunks.
fn body(kind: tollgate::provider::ProviderKind, g: &mut Gen) -> (u16, &'static str, String) {
    let mut v = answer(kind, g);
    for _ in 0..g.rng.usize(0..4) {
        mutate_json(&mut v, g, 0);
    }
    let status = *[200u16, 200, 200, 200, 400, 401, 404, 429, 500, 529]
        .get(g.rng.usize(..10))
        .unwrap();
    if status != 200 {
        let mut err = json!({ "error": { "message": "bad", "type": "x", "code": 1 } });
        mutate_json(&mut err, g, 0);
        return (status, "application/json", err.to_string());
    }
    if g.chance(50) {
        let mut text = String::new();
        for _ in 0..g.rng.usize(1..5) {
            let mut chunk = answer(kind, g);
            mutate_json(&mut chunk, g, 0);
            if g.chance(30) {
                text.push_str(&format!(
                    "event: {}\n",
                    g.pick(&[
                        "message_start",
                        "content_block_delta",
                        "message_delta",
                        "message_stop",
                        "error",
                        "ping"
                    ])
                ));
            }
            text.push_str(&format!("data: {chunk}\n\n"));
        }
        if g.chance(60) {
            text.push_str("data: [DONE]\n\n");
        }
        let text = g.mutate(text);
        return (200, "text/event-stream", text);
    }
    let text = v.to_string();
    let text = if g.chance(20) { g.mutate(text) } else { text };
    (200, "application/json", text)
}

proptest! {
    #![proptest_config(config(150))]

    /// Every dialect's client, on generated answers over real HTTP from the
    /// loopback fake: an answer or an error, never a panic, and the key
    /// never in the error.
    #[test]
    fn provider_answer_parsing_never_panics(seed in any::<u64>()) {
        use tollgate::provider::{ChatRequest, ClientConfig, Endpoint, Message, ProviderKind, client_for};
        let mut g = Gen::new(seed);
        let kinds = [ProviderKind::Openai, ProviderKind::Anthropic, ProviderKind::Gemini, ProviderKind::Openrouter, ProviderKind::Mistral];
        let kind = kinds[g.rng.usize(..kinds.len())];
        let (status, content_type, text) = body(kind, &mut g);
        let stream = g.rng.bool();
        let completions = kind == ProviderKind::Openai && g.chance(20);
        let shown = format!("{kind:?} stream={stream} status={status} {content_type}\n{text}");
        no_panic(&shown, || {
            let rt = runtime();
            rt.block_on(async move {
                let fake = fake_llm::FakeServer::start().await;
                fake.push(fake_llm::Reply::raw(status, content_type, text));
                let base = match kind {
                    ProviderKind::Anthropic => fake.base_url(),
                    ProviderKind::Gemini => format!("{}/v1beta", fake.base_url()),
                    _ => format!("{}/v1", fake.base_url()),
                };
                let mut config = ClientConfig::new(base).with_api_key(KEY);
                config.request_timeout = Duration::from_secs(20);
                config.stream_idle_timeout = Duration::from_secs(10);
                let http = tollgate::provider::Http::without_proxy(Duration::from_secs(2));
                let client = client_for(kind, config, http);
                let req = ChatRequest {
                    model: "m".to_owned(),
                    system: Some("s".to_owned()),
                    messages: vec![Message::user("u")],
                    max_output_tokens: 64,
                    temperature: None,
                    output_schema: None,
                    stream,
                    cache_system: None,
                    cache_prefix: None,
                    endpoint: if completions { Endpoint::Completions } else { Endpoint::Chat },
                    stop: Vec::new(),
                    logprobs: false,
                    on_text: None,
                    reasoning: None,
                    attachments: Vec::new(),
                };
                if let Err(e) = client.send(&req).await {
                    let all = format!("{e} {e:?} {}", e.body.clone().unwrap_or_default());
                    assert!(!all.contains(KEY), "the key leaked: {all}");
                }
            });
        });
    }
}

/// Reproduces one generated workflow from its seed (for a failure report).
#[allow(dead_code)]
fn workflow_of_seed(seed: u64) -> String {
    let mut g = Gen::new(seed);
    let v = g.value_for_schema(&schema(Format::Workflow), &schema(Format::Workflow), "", 0);
    let text = g.yaml(&v);
    g.mutate(text)
}

// ---------------------------------------------------------------------------
// What the fuzzing found, one regression test each.

/// `when: "}} x"` panicked inside minijinja's expression lexer ("empty lexer
/// stack"), so `check` crashed instead of reporting a located error.
#[test]
fn a_stray_variable_end_in_when_or_for_each_is_a_located_error() {
    for key in ["when", "for_each"] {
        let text =
            format!("version: 1\nname: w\nsteps:\n  a: {{task: t, prompt: hi, {key}: '}}}} x'}}\n");
        let path = workspace().join("wf.yaml");
        let doc = Document::parse(SourceFile::new(path, text.as_str())).unwrap();
        let w = workflow::from_document::<Workflow>(doc, Format::Workflow).unwrap();
        let diags = no_panic(&text, || analyze::analyze(w, workspace()).err())
            .expect("an error, not a pass");
        assert_eq!(
            diags[0].code, "template-syntax",
            "{key}: {:?}",
            diags[0].message
        );
        let loc = diags[0].location().unwrap();
        assert!(loc.contains("wf.yaml:4:"), "{key}: {loc}");
    }
}

// ---------------------------------------------------------------------------
// The YAML bounds, on generated documents.

proptest! {
    #![proptest_config(config(100))]

    /// Anchors that nest aliases of each other (the shape of an alias bomb,
    /// at random widths and depths): the load fails with a located error or
    /// builds a value no larger than the bound — never an exhausted machine.
    #[test]
    fn aliases_never_expand_past_the_bound(
        levels in 1usize..12,
        width in 1usize..12,
        leaf in 0usize..200,
        nested in any::<bool>(),
    ) {
        let mut text = format!("a0: &a0 {:?}\n", "x".repeat(leaf));
        for i in 1..levels {
            let items = vec![format!("*a{}", i - 1); width].join(", ");
            let value = if nested { format!("{{k: [{items}]}}") } else { format!("[{items}]") };
            text.push_str(&format!("a{i}: &a{i} {value}\n"));
        }
        match Document::parse(SourceFile::new("t.yaml", text.as_str())) {
            Ok(doc) => {
                let size = serde_json::to_string(&doc.root).unwrap().len();
                prop_assert!(size <= tollgate::yaml::MAX_LOADED_SIZE, "{size} bytes from {text}");
            }
            Err(d) => {
                prop_assert_eq!(d.len(), 1);
                prop_assert!(matches!(d[0].code, "yaml-alias-limit" | "yaml-too-large" | "yaml-too-deep"));
                prop_assert!(d[0].span.is_some(), "located");
            }
        }
    }
}

/// The deepest document the loader accepts goes through every check and
/// the plan on a test thread's stack (smaller than the main thread's):
/// nothing downstream recurses past what [`tollgate::yaml::MAX_DEPTH`] allows.
#[test]
fn the_deepest_accepted_document_checks_and_plans() {
    let d = tollgate::yaml::MAX_DEPTH - 4;
    let schema_levels = (tollgate::yaml::MAX_DEPTH - 8) / 2;
    let text = format!(
        "version: 1\nname: w\ninputs:\n  x: {{type: array, default: {}{}}}\n  o: {{type: object, default: {}1{}}}\nsteps:\n  a:\n    task: t\n    prompt: \"{{{{ inputs.x }}}} {{{{ inputs.o | tojson }}}} {{{{ inputs.x | length }}}}\"\n    for_each: inputs.x\n    output:\n      schema: {}{{}}{}\n",
        "[".repeat(d),
        "]".repeat(d),
        "{k: ".repeat(d - 1),
        "}".repeat(d - 1),
        "{type: array, items: ".repeat(schema_levels),
        "}".repeat(schema_levels),
    );
    let reached = no_panic(&text, || check_workflow(&text));
    assert!(reached >= Some(Stage::Checked), "{reached:?}");
    // Two levels more (one past the bound) is a located error.
    let deeper = text
        .replacen("default: [", "default: [[[", 1)
        .replacen("]}", "]]]}", 1);
    let errs = Document::parse(SourceFile::new("w.yaml", deeper.as_str())).unwrap_err();
    assert_eq!(errs[0].code, "yaml-too-deep");
}
