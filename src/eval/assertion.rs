//! Expectations on one step's output: compiled once when the suite loads
//! (a bad regex or schema is a located error, not a failing case), checked
//! against each run's [`StepReport`].
//!
//! `snapshot` and `judge` need files and model calls; this module only
//! parses them — the runner carries them out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Span};
use crate::policy::{Locality, Policy, Tier};
use crate::run::StepReport;

/// How a snapshot is compared with the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Text exactly; structured outputs as JSON (`snapshot: true`).
    Default,
    Exact,
    /// Runs of whitespace count as one space; leading and trailing ignored.
    Normalized,
    Json,
    /// A changed output passes when a judge model finds it means the same.
    Judge,
}

#[derive(Debug, Clone)]
pub struct Judge {
    pub rubric: String,
    pub model: Option<String>,
}

/// Everything a case expects of one step.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub equals: Option<Value>,
    pub contains: Vec<String>,
    pub not_contains: Vec<String>,
    pub ignore_case: bool,
    pub regex: Vec<regex::Regex>,
    pub json_schema: Option<(Value, std::sync::Arc<jsonschema::Validator>)>,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub max_latency_ms: Option<u64>,
    pub snapshot: Option<SnapshotMode>,
    pub judge: Option<Judge>,
    /// Where the policy must route the step.
    pub route: Option<RouteExpect>,
}

/// `route: { model, tier, locality }`: where the step must go. Checked on
/// the plan in a `plan_only` case, on the model that answered otherwise.
#[derive(Debug, Clone, Default)]
pub struct RouteExpect {
    /// Model aliases of the policy (any one of them).
    pub model: Vec<String>,
    pub tier: Vec<Tier>,
    pub locality: Option<Locality>,
}

impl RouteExpect {
    /// What did not hold for a step routed to `alias` (`None`: no route),
    /// one message each.
    pub fn check(&self, policy: &Policy, alias: Option<&str>) -> Vec<String> {
        let Some(alias) = alias else {
            return vec!["expected a route, the policy gives none".to_owned()];
        };
        let mut out = Vec::new();
        if !self.model.is_empty() && !self.model.iter().any(|m| m == alias) {
            out.push(format!(
                "expected model {}, got `{alias}`",
                quoted(&self.model)
            ));
        }
        let model = policy.models.get(alias);
        if let Some(m) = model {
            if !self.tier.is_empty() && !self.tier.contains(&m.tier) {
                let want: Vec<String> = self.tier.iter().map(|t| t.name().to_owned()).collect();
                out.push(format!(
                    "expected tier {}, got {} (model `{alias}`)",
                    quoted(&want),
                    m.tier
                ));
            }
            if let Some(l) = self.locality {
                if l != m.locality {
                    out.push(format!(
                        "expected locality {}, got {} (model `{alias}`)",
                        locality_name(l),
                        locality_name(m.locality)
                    ));
                }
            }
        }
        out
    }
}

/// `local` or `cloud`, as policies write it.
pub(super) fn locality_name(l: Locality) -> &'static str {
    match l {
        Locality::Local => "local",
        Locality::Cloud => "cloud",
    }
}

/// Names in backticks: `` `a` `` or ``one of `a`, `b` ``.
pub(super) fn quoted(names: &[String]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match q.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", q.join(", ")),
    }
}

/// A JSON value that is one string or a list of them, as a list.
fn one_or_many(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// One assertion that did not hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub step: String,
    /// `equals`, `contains`, `snapshot`, …
    pub assertion: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actual: Option<String>,
    /// A unified diff of expected → actual text, when both are text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub diff: Option<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

impl Expectations {
    /// Compiles the assertions of one step (already schema-checked); `at`
    /// locates a sub-pointer (`/regex/1`) for errors.
    pub fn compile(
        spec: &Value,
        policy: &Policy,
        at: &dyn Fn(&str) -> Option<Span>,
    ) -> Result<Expectations, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        let get = |k: &str| spec.get(k);
        let mut e = Expectations {
            equals: get("equals").cloned(),
            contains: strings(get("contains")),
            not_contains: strings(get("not_contains")),
            ignore_case: get("ignore_case").and_then(Value::as_bool).unwrap_or(false),
            max_tokens: get("max_tokens").and_then(Value::as_u64),
            max_cost_usd: get("max_cost_usd").and_then(Value::as_f64),
            max_latency_ms: get("max_latency_ms").and_then(Value::as_u64),
            ..Expectations::default()
        };
        let patterns = strings(get("regex"));
        let single = matches!(get("regex"), Some(Value::String(_)));
        for (i, p) in patterns.iter().enumerate() {
            match regex::Regex::new(p) {
                Ok(r) => e.regex.push(r),
                Err(err) => diags.push(
                    Diagnostic::error("bad-regex", "this regular expression does not compile")
                        .at(at(&if single {
                            "/regex".to_owned()
                        } else {
                            format!("/regex/{i}")
                        }))
                        .with_help(
                            err.to_string()
                                .lines()
                                .last()
                                .unwrap_or_default()
                                .to_owned(),
                        ),
                ),
            }
        }
        if let Some(schema) = get("json_schema") {
            match jsonschema::validator_for(schema) {
                Ok(v) => e.json_schema = Some((schema.clone(), std::sync::Arc::new(v))),
                Err(err) => diags.push(
                    Diagnostic::error("bad-schema", format!("this JSON Schema is invalid: {err}"))
                        .at(at("/json_schema")),
                ),
            }
        }
        e.snapshot = match get("snapshot") {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(SnapshotMode::Default),
            Some(Value::String(s)) => Some(match s.as_str() {
                "exact" => SnapshotMode::Exact,
                "normalized" => SnapshotMode::Normalized,
                "json" => SnapshotMode::Json,
                _ => SnapshotMode::Judge,
            }),
            Some(_) => None,
        };
        e.judge = match get("judge") {
            Some(Value::String(r)) => Some(Judge {
                rubric: r.clone(),
                model: None,
            }),
            Some(Value::Object(o)) => Some(Judge {
                rubric: o
                    .get("rubric")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                model: o.get("model").and_then(Value::as_str).map(str::to_owned),
            }),
            _ => None,
        };
        if let Some(m) = e.judge.as_ref().and_then(|j| j.model.as_ref()) {
            if !policy.models.contains_key(m) {
                diags.push(
                    Diagnostic::error(
                        "unknown-model",
                        format!("the policy `{}` has no model `{m}`", policy.name),
                    )
                    .at(at("/judge/model"))
                    .with_help_opt(crate::diagnostic::did_you_mean(
                        m,
                        policy.models.keys().map(String::as_str),
                    )),
                );
            }
        }
        if let Some(r) = get("route") {
            let model = one_or_many(r.get("model"));
            let many = matches!(r.get("model"), Some(Value::Array(_)));
            for (i, m) in model.iter().enumerate() {
                if !policy.models.contains_key(m) {
                    let ptr = if many {
                        format!("/route/model/{i}")
                    } else {
                        "/route/model".to_owned()
                    };
                    diags.push(
                        Diagnostic::error(
                            "unknown-model",
                            format!("the policy `{}` has no model `{m}`", policy.name),
                        )
                        .at(at(&ptr))
                        .with_help_opt(crate::diagnostic::did_you_mean(
                            m,
                            policy.models.keys().map(String::as_str),
                        )),
                    );
                }
            }
            e.route = Some(RouteExpect {
                model,
                // The schema allows only tier and locality names.
                tier: one_or_many(r.get("tier"))
                    .iter()
                    .filter_map(|t| Tier::ALL.into_iter().find(|x| x.name() == t))
                    .collect(),
                locality: match r.get("locality").and_then(Value::as_str) {
                    Some("local") => Some(Locality::Local),
                    Some("cloud") => Some(Locality::Cloud),
                    _ => None,
                },
            });
        }
        if diags.is_empty() { Ok(e) } else { Err(diags) }
    }

    /// Checks everything but `snapshot` and `judge` against a step that ran
    /// and its output (read back whole if it was spilled: `run::Output::value`).
    pub fn check(&self, step: &StepReport, output: &Value) -> Vec<Failure> {
        let mut out = Vec::new();
        let fail = |assertion: &str, message: String| Failure {
            step: step.id.clone(),
            assertion: assertion.to_owned(),
            message,
            expected: None,
            actual: None,
            diff: None,
        };
        let text = output_text(output);
        let fold = |s: &str| {
            if self.ignore_case {
                s.to_lowercase()
            } else {
                s.to_owned()
            }
        };
        if let Some(expected) = &self.equals {
            let equal = match (expected, output) {
                (Value::String(e), Value::String(a)) => fold(e.trim()) == fold(a.trim()),
                // A fan-out of text answers: each compared like a text answer.
                (Value::Array(e), Value::Array(a))
                    if e.len() == a.len() && e.iter().chain(a).all(Value::is_string) =>
                {
                    e.iter().zip(a).all(|(x, y)| {
                        fold(x.as_str().unwrap_or_default().trim())
                            == fold(y.as_str().unwrap_or_default().trim())
                    })
                }
                // `equals: 3` against an answer "3": compare as JSON when the
                // text parses, so a plain-text step can expect a number.
                (e, Value::String(a)) => {
                    serde_json::from_str::<Value>(a.trim()).ok().as_ref() == Some(e)
                }
                (Value::String(e), a) if self.ignore_case => {
                    a.as_str().is_some_and(|a| fold(a) == fold(e))
                }
                (e, a) => e == a,
            };
            if !equal {
                let expected_text = output_text(expected);
                let mut f = fail(
                    "equals",
                    "the output is not equal to the expected value".to_owned(),
                );
                f.diff = Some(diff(&expected_text, &text));
                f.expected = Some(expected_text);
                f.actual = Some(text.clone());
                out.push(f);
            }
        }
        let hay = fold(&text);
        for needle in &self.contains {
            if !hay.contains(&fold(needle)) {
                let mut f = fail(
                    "contains",
                    format!("the output does not contain {needle:?}"),
                );
                f.expected = Some(needle.clone());
                f.actual = Some(text.clone());
                out.push(f);
            }
        }
        for needle in &self.not_contains {
            if hay.contains(&fold(needle)) {
                let mut f = fail("not_contains", format!("the output contains {needle:?}"));
                f.expected = Some(format!("no {needle:?}"));
                f.actual = Some(text.clone());
                out.push(f);
            }
        }
        for r in &self.regex {
            if !r.is_match(&text) {
                let mut f = fail(
                    "regex",
                    format!("the output does not match /{}/", r.as_str()),
                );
                f.expected = Some(r.as_str().to_owned());
                f.actual = Some(text.clone());
                out.push(f);
            }
        }
        if let Some((_, validator)) = &self.json_schema {
            // Text that holds JSON is checked as that JSON; other text (a
            // label a string schema allows) as the string it is.
            let value = match output {
                Value::String(s) => {
                    serde_json::from_str::<Value>(s.trim()).unwrap_or_else(|_| output.clone())
                }
                other => other.clone(),
            };
            let errs = crate::run::schema_errors(validator, &value);
            let problem = (!errs.is_empty())
                .then(|| format!("the output does not match the schema: {}", errs.join("; ")));
            if let Some(message) = problem {
                let mut f = fail("json_schema", message);
                f.actual = Some(text.clone());
                out.push(f);
            }
        }
        if let Some(max) = self.max_tokens {
            if step.usage.output_tokens > max {
                let mut f = fail(
                    "max_tokens",
                    format!(
                        "{} output tokens, more than {max}",
                        step.usage.output_tokens
                    ),
                );
                f.expected = Some(format!("≤ {max}"));
                f.actual = Some(step.usage.output_tokens.to_string());
                out.push(f);
            }
        }
        if let Some(max) = self.max_cost_usd {
            if step.cost_usd > max {
                let mut f = fail(
                    "max_cost_usd",
                    format!(
                        "cost {}, more than {}",
                        crate::render::usd(step.cost_usd),
                        crate::render::usd(max)
                    ),
                );
                f.expected = Some(format!("≤ ${max}"));
                f.actual = Some(crate::render::usd(step.cost_usd));
                out.push(f);
            }
        }
        if let Some(max) = self.max_latency_ms {
            if step.latency_ms > max {
                let mut f = fail(
                    "max_latency_ms",
                    format!("took {} ms, more than {max} ms", step.latency_ms),
                );
                f.expected = Some(format!("≤ {max} ms"));
                f.actual = Some(format!("{} ms", step.latency_ms));
                out.push(f);
            }
        }
        out
    }
}

/// An output as text: strings as they are, structured outputs as pretty JSON
/// (what `run` prints and snapshots store).
pub fn output_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// A unified line diff, expected → actual.
pub fn diff(expected: &str, actual: &str) -> String {
    let e = ensure_newline(expected);
    let a = ensure_newline(actual);
    similar::TextDiff::from_lines(&e, &a)
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string()
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Usage;
    use crate::run::StepStatus;
    use serde_json::json;

    fn policy() -> Policy {
        let doc = crate::yaml::Document::parse(crate::diagnostic::SourceFile::new(
            "p.yaml",
            "version: 1\nproviders: {o: {kind: openai-compatible, base_url: 'http://127.0.0.1:1/v1'}}\nmodels: {m: {provider: o, model: x, tier: local, context_window: 1000}}\nrules: [{name: all, use: m}]\n",
        ))
        .unwrap();
        let f: crate::workflow::Loaded<crate::policy::PolicyFile> =
            crate::workflow::from_document(doc, crate::schema::Format::Policy).unwrap();
        crate::policy::compile(&f.value, &f.doc, crate::catalog::Catalog::builtin()).0
    }

    fn step(output: Value) -> StepReport {
        let mut r = StepReport {
            id: "s".to_owned(),
            status: StepStatus::Succeeded,
            detail: None,
            ignored_failure: false,
            model: Some("m".to_owned()),
            provider_model: Some("x".to_owned()),
            rule: Some("all".to_owned()),
            calls: crate::run::Calls::default(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 7,
                ..Usage::default()
            },
            cost_usd: 0.02,
            list_cost_usd: 0.02,
            latency_ms: 300,
            queued_ms: 0,
            call_ms: 300,
            model_ms: 0,
            ttft_ms: None,
            output: None,
            router_text: None,
        };
        r.output = Some(output.into());
        r
    }

    fn check(spec: Value, output: Value) -> Vec<String> {
        let e = Expectations::compile(&spec, &policy(), &|_| None).unwrap();
        e.check(&step(output.clone()), &output)
            .into_iter()
            .map(|f| f.assertion)
            .collect()
    }

    #[test]
    fn each_assertion_passes_and_fails() {
        let none: Vec<String> = Vec::new();
        assert_eq!(check(json!({"equals": "bug"}), json!(" bug\n")), none);
        assert_eq!(check(json!({"equals": "bug"}), json!("Bug")), ["equals"]);
        assert_eq!(
            check(json!({"equals": "bug", "ignore_case": true}), json!("Bug")),
            none
        );
        assert_eq!(check(json!({"equals": {"a": 1}}), json!({"a": 1})), none);
        assert_eq!(
            check(json!({"equals": {"a": 1}}), json!({"a": 2})),
            ["equals"]
        );
        assert_eq!(check(json!({"equals": 3}), json!("3")), none);
        assert_eq!(
            check(
                json!({"contains": ["crash", "save"]}),
                json!("It crashes on save")
            ),
            none
        );
        assert_eq!(
            check(json!({"contains": "Crash"}), json!("a crash")),
            ["contains"]
        );
        assert_eq!(
            check(
                json!({"contains": "Crash", "ignore_case": true}),
                json!("a crash")
            ),
            none
        );
        assert_eq!(check(json!({"not_contains": "sorry"}), json!("fine")), none);
        assert_eq!(
            check(
                json!({"not_contains": ["x", "Sorry"], "ignore_case": true}),
                json!("sorry")
            ),
            ["not_contains"]
        );
        assert_eq!(check(json!({"regex": "^P[0-3]$"}), json!("P1")), none);
        assert_eq!(
            check(json!({"regex": ["^P[0-3]$"]}), json!("P7")),
            ["regex"]
        );
        let schema = json!({"json_schema": {"type": "object", "required": ["label"]}});
        assert_eq!(check(schema.clone(), json!("{\"label\": 1}")), none);
        assert_eq!(check(schema.clone(), json!({"x": 1})), ["json_schema"]);
        assert_eq!(check(schema, json!("not json")), ["json_schema"]);
        let label = json!({"json_schema": {"enum": ["bug", "feature"]}});
        assert_eq!(check(label.clone(), json!("bug")), none);
        assert_eq!(check(label, json!("bugs")), ["json_schema"]);
        assert_eq!(
            check(
                json!({"equals": ["bug", "feature"]}),
                json!([" bug", "feature\n"])
            ),
            none
        );
        assert_eq!(
            check(json!({"equals": ["bug", "feature"]}), json!(["bug", "bug"])),
            ["equals"]
        );
        assert_eq!(check(json!({"max_tokens": 7}), json!("a")), none);
        assert_eq!(check(json!({"max_tokens": 6}), json!("a")), ["max_tokens"]);
        assert_eq!(check(json!({"max_cost_usd": 0.02}), json!("a")), none);
        assert_eq!(
            check(json!({"max_cost_usd": 0.01}), json!("a")),
            ["max_cost_usd"]
        );
        assert_eq!(check(json!({"max_latency_ms": 300}), json!("a")), none);
        assert_eq!(
            check(json!({"max_latency_ms": 299}), json!("a")),
            ["max_latency_ms"]
        );
    }

    #[test]
    fn a_text_failure_carries_a_diff() {
        let e =
            Expectations::compile(&json!({"equals": "one\ntwo\n"}), &policy(), &|_| None).unwrap();
        let f = &e.check(&step(json!("one\nthree\n")), &json!("one\nthree\n"))[0];
        let d = f.diff.as_deref().unwrap();
        assert!(d.contains("-two") && d.contains("+three"), "{d}");
    }

    #[test]
    fn bad_regexes_schemas_and_judge_models_are_input_errors() {
        let errs = Expectations::compile(
            &json!({"regex": ["ok", "(unclosed"], "json_schema": {"type": 5}, "judge": {"rubric": "r", "model": "nope"}}),
            &policy(),
            &|_| None,
        )
        .unwrap_err();
        let codes: Vec<&str> = errs.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["bad-regex", "bad-schema", "unknown-model"]);
    }
}
