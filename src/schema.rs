//! The JSON Schemas of the file formats, and structural validation with them.
//!
//! The schemas in `schemas/` are the contract (editors use them through the
//! `yaml-language-server` comment; `tollgate schema` prints them). They are
//! compiled into the binary and enforced with the jsonschema crate before any
//! typed loading, so serde only ever sees structurally valid data and every
//! structural error is reported, each at the exact key or value it concerns.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::yaml::Document;

/// Which file format a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Workflow,
    Policy,
    Suite,
    /// One case of a suite, as a line of a JSONL case file: the suite
    /// schema's `case` definition.
    Case,
    /// A policy test file: step facts in, the expected route out.
    PolicyTest,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Workflow => "workflow",
            Format::Policy => "policy",
            Format::Suite => "suite",
            Format::Case => "case",
            Format::PolicyTest => "policy test file",
        }
    }

    /// The schema text, exactly as shipped in `schemas/`.
    pub fn schema_text(self) -> &'static str {
        match self {
            Format::Workflow => include_str!("../schemas/workflow.schema.json"),
            Format::Policy => include_str!("../schemas/policy.schema.json"),
            Format::Suite => include_str!("../schemas/suite.schema.json"),
            Format::PolicyTest => include_str!("../schemas/policy-test.schema.json"),
            Format::Case => {
                // Derived from the suite schema so the two never disagree.
                static TEXT: OnceLock<String> = OnceLock::new();
                TEXT.get_or_init(|| {
                    let suite: Value =
                        serde_json::from_str(Format::Suite.schema_text()).unwrap_or_default();
                    serde_json::json!({
                        "$schema": suite["$schema"],
                        "title": "tollgate evaluation case",
                        "$ref": "#/$defs/case",
                        "$defs": suite["$defs"],
                    })
                    .to_string()
                })
            }
        }
    }

    /// The schema and its compiled validator.
    pub fn validator(self) -> &'static (Value, Validator) {
        static WORKFLOW: OnceLock<(Value, Validator)> = OnceLock::new();
        static POLICY: OnceLock<(Value, Validator)> = OnceLock::new();
        static SUITE: OnceLock<(Value, Validator)> = OnceLock::new();
        static CASE: OnceLock<(Value, Validator)> = OnceLock::new();
        static POLICY_TEST: OnceLock<(Value, Validator)> = OnceLock::new();
        let cell = match self {
            Format::Workflow => &WORKFLOW,
            Format::Policy => &POLICY,
            Format::Suite => &SUITE,
            Format::Case => &CASE,
            Format::PolicyTest => &POLICY_TEST,
        };
        cell.get_or_init(|| {
            // Both are compiled into the binary and covered by tests, so a
            // failure here is a bug in the build, not in user input.
            let value: Value =
                serde_json::from_str(self.schema_text()).expect("embedded schema is valid JSON");
            let validator = jsonschema::draft202012::new(&value).expect("embedded schema compiles");
            (value, validator)
        })
    }
}

/// Validates a document against a format's schema; one diagnostic per problem.
pub fn validate(doc: &Document, format: Format) -> Vec<Diagnostic> {
    let (schema, validator) = format.validator();
    validator
        .iter_errors(&doc.root)
        .flat_map(|err| to_diagnostics(doc, schema, format, &err))
        // An empty file has no node to point at: name the file at least.
        .map(|d| d.in_file(&doc.file.path))
        .collect()
}

/// One diagnostic per problem; an error listing several unknown keys gives
/// one diagnostic per key, each at its key.
fn to_diagnostics(
    doc: &Document,
    schema: &Value,
    format: Format,
    err: &ValidationError<'_>,
) -> Vec<Diagnostic> {
    let ValidationErrorKind::AdditionalProperties { unexpected } = err.kind() else {
        return vec![to_diagnostic(doc, schema, format, err)];
    };
    let ptr = err.instance_path().as_str().to_owned();
    let parent = parent_schema(schema, err.schema_path().as_str());
    let known: Vec<&str> = parent
        .and_then(|p| p.get("properties"))
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    unexpected
        .iter()
        .map(|key| {
            let key_ptr = format!("{ptr}{}", crate::yaml::pointer([key]));
            if crate::yaml::looks_like_secret(key) {
                return secret_in_file(doc, key, &key_ptr);
            }
            if key == "<<" {
                return Diagnostic::error(
                    "merge-key",
                    format!(
                        "YAML merge keys (`<<`) are not supported in {}",
                        where_(&ptr, format)
                    ),
                )
                .at(doc.key_span(&key_ptr))
                .with_help("repeat the keys, or alias a whole mapping (`step: *defaults`)");
            }
            let hint = did_you_mean(key, known.iter().copied())
                .unwrap_or_else(|| format!("known keys here: {}", one_of(known.iter().copied())));
            Diagnostic::error(
                "unknown-key",
                format!("unknown key `{key}` in {}", where_(&ptr, format)),
            )
            .at(doc.key_span(&key_ptr))
            .with_label("not a known key")
            .with_help(hint)
        })
        .collect()
}

fn to_diagnostic(
    doc: &Document,
    schema: &Value,
    format: Format,
    err: &ValidationError<'_>,
) -> Diagnostic {
    let ptr = err.instance_path().as_str().to_owned();
    let field = field_name(&ptr);
    let here = doc.span(&ptr);
    let sub = subschema(schema, err.schema_path().as_str());
    // The schema object that holds the failing keyword: where descriptions live.
    let owner = parent_schema(schema, err.schema_path().as_str());
    match err.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let description = sub
                .and_then(|s| s.get("properties"))
                .and_then(|p| p.get(name))
                .and_then(|p| p.get("description"))
                .and_then(Value::as_str);
            Diagnostic::error(
                "missing-key",
                format!("missing required key `{name}` in {}", where_(&ptr, format)),
            )
            .at(doc.key_span(&ptr))
            .with_label(format!("`{name}` is required here"))
            .with_help_opt(description.map(|d| format!("`{name}`: {d}")))
        }
        ValidationErrorKind::Enum { options } => {
            let allowed: Vec<&str> = options
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let given = display_value(err.instance());
            let hint = err
                .instance()
                .as_str()
                .and_then(|s| did_you_mean(s, allowed.iter().copied()));
            Diagnostic::error("invalid-value", format!("{given} is not a valid {field}"))
                .at(here)
                .with_label(format!(
                    "expected one of {}",
                    one_of(allowed.iter().copied())
                ))
                .with_help_opt(hint.or_else(|| description_of(owner)))
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => article(&t.to_string()),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| article(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            Diagnostic::error(
                "wrong-type",
                format!(
                    "{field} must be {expected}, found {}",
                    article(json_type(err.instance()))
                ),
            )
            .at(here)
            .with_help_opt(description_of(owner))
        }
        ValidationErrorKind::PropertyNames { error } => {
            let bad = error.instance().as_str().unwrap_or_default().to_owned();
            let key_ptr = format!("{ptr}{}", crate::yaml::pointer([&bad]));
            let at = doc.key_span(&key_ptr);
            if let ValidationErrorKind::Enum { options } = error.kind() {
                let allowed: Vec<&str> = options
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                return Diagnostic::error(
                    "unknown-key",
                    format!("`{bad}` is not a valid key of `{field}`"),
                )
                .at(at)
                .with_label(format!(
                    "expected one of {}",
                    one_of(allowed.iter().copied())
                ))
                .with_help_opt(did_you_mean(&bad, allowed.iter().copied()));
            }
            let (what, help) = match field.as_str() {
                "steps" | "inputs" => (
                    if field == "steps" {
                        "step id"
                    } else {
                        "input name"
                    },
                    format!(
                        "use letters, digits and underscores, starting with a letter or `_` (templates read it as `{field}.{}`)",
                        bad.replace(['-', ' ', '.'], "_")
                    ),
                ),
                _ => (
                    "name",
                    "use letters, digits, `.`, `_` and `-`, starting with a letter or digit"
                        .to_owned(),
                ),
            };
            Diagnostic::error("invalid-name", format!("`{bad}` is not a valid {what}"))
                .at(at)
                .with_help(help)
        }
        ValidationErrorKind::Pattern { .. } => Diagnostic::error(
            "invalid-value",
            format!("{} is not a valid {field}", display_value(err.instance())),
        )
        .at(here)
        .with_help(description_of(owner).unwrap_or_else(|| {
            "use letters, digits, `.`, `_` and `-`, starting with a letter or digit, no spaces"
                .to_owned()
        })),
        ValidationErrorKind::AnyOf { .. } | ValidationErrorKind::OneOfNotValid { .. } => {
            Diagnostic::error(
                "invalid-value",
                format!("{} is not a valid {field}", display_value(err.instance())),
            )
            .at(here)
            .with_help_opt(description_of(owner).or_else(|| Some(anyof_hint(sub))))
        }
        ValidationErrorKind::Constant { expected_value } => {
            Diagnostic::error("invalid-value", format!("{field} must be {expected_value}"))
                .at(here)
                .with_help(format!(
                    "this tool reads {} files of version {expected_value}",
                    format.name()
                ))
        }
        _ => Diagnostic::error("invalid-value", format!("{field}: {err}"))
            .at(here)
            .with_help_opt(description_of(owner)),
    }
}

/// "step `x`", "input `y`", "the policy", for messages.
fn where_(ptr: &str, format: Format) -> String {
    let segs: Vec<&str> = ptr.split('/').skip(1).collect();
    match segs.as_slice() {
        [] => format!("the {}", format.name()),
        ["steps", id] => format!("step `{id}`"),
        ["steps", id, rest @ ..] => format!("`{}` of step `{id}`", rest.join(".")),
        ["inputs", id] => format!("input `{id}`"),
        ["models", id] => format!("model `{id}`"),
        ["providers", id] => format!("provider `{id}`"),
        ["rules", i, rest @ ..] => {
            let n = i.parse::<usize>().map_or(0, |n| n + 1);
            if rest.is_empty() {
                format!("rule #{n}")
            } else {
                format!("`{}` of rule #{n}", rest.join("."))
            }
        }
        ["cases", i, rest @ ..] => {
            let n = i.parse::<usize>().map_or(0, |n| n + 1);
            if rest.is_empty() {
                format!("case #{n}")
            } else {
                format!("`{}` of case #{n}", rest.join("."))
            }
        }
        _ => format!("`{}`", segs.join(".")),
    }
}

/// The last meaningful key of a pointer, for messages ("latency").
fn field_name(ptr: &str) -> String {
    let last = ptr
        .rsplit('/')
        .find(|s| !s.is_empty() && s.parse::<usize>().is_err())
        .unwrap_or("value");
    last.replace("~1", "/").replace("~0", "~")
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn article(t: &str) -> String {
    match t {
        "null" => "null".to_owned(),
        "object" => "a mapping".to_owned(),
        "array" => "a list".to_owned(),
        "integer" => "an integer".to_owned(),
        other => format!("a {other}"),
    }
}

fn description_of(sub: Option<&Value>) -> Option<String> {
    sub?.get("description")?.as_str().map(str::to_owned)
}

fn anyof_hint(sub: Option<&Value>) -> String {
    let kinds: Vec<String> = sub
        .and_then(|s| s.as_array())
        .map(|alts| {
            alts.iter()
                .map(|a| match (a.get("type"), a.get("enum")) {
                    (_, Some(Value::Array(e))) => {
                        let names: Vec<&str> = e.iter().filter_map(Value::as_str).collect();
                        format!("one of {}", one_of(names))
                    }
                    (Some(Value::String(t)), _) => article(t),
                    _ => "a value".to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    if kinds.is_empty() {
        "see `tollgate schema` for the expected shape".to_owned()
    } else {
        format!("expected {}", kinds.join(", or "))
    }
}

/// Follows a schema location (which may pass through `$ref`) to the keyword's
/// value.
fn subschema<'a>(root: &'a Value, location: &str) -> Option<&'a Value> {
    let mut node = root;
    for seg in location.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg == "$ref" {
            let target = node.get("$ref")?.as_str()?;
            node = resolve_ref(root, target)?;
            continue;
        }
        node = match node {
            Value::Object(m) => m.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn resolve_ref<'a>(root: &'a Value, target: &str) -> Option<&'a Value> {
    root.pointer(target.strip_prefix('#')?)
}

/// A secret written in a file: say so without quoting it ([`Document::parse`]
/// masks such values, so no snippet leaks it to CI logs).
fn secret_in_file(doc: &Document, key: &str, key_ptr: &str) -> Diagnostic {
    Diagnostic::error("secret-in-file", format!("`{key}` looks like a secret written in a file"))
        .at(doc.key_span(key_ptr))
        .with_label("secrets are never read from files (the value is hidden here)")
        .with_help("remove it, put the key in an environment variable and name that variable with `api_key_env`")
}

/// The schema object that holds the keyword at `location` (its last segment
/// is the keyword).
fn parent_schema<'a>(root: &'a Value, location: &str) -> Option<&'a Value> {
    let parent = &location[..location.rfind('/')?];
    subschema(root, parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;

    fn check(format: Format, text: &str) -> Vec<Diagnostic> {
        let doc = Document::parse(SourceFile::new("t.yaml", text)).unwrap();
        validate(&doc, format)
    }

    #[test]
    fn embedded_schemas_compile() {
        assert!(
            check(
                Format::Workflow,
                "version: 1\nname: x\nsteps: {a: {task: t, prompt: p}}\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn unknown_key_points_at_the_key_with_a_suggestion() {
        let d = check(
            Format::Workflow,
            "version: 1\nname: x\nsteps:\n  a:\n    task: t\n    promt: hi\n",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].message, "unknown key `promt` in step `a`");
        assert_eq!(d[0].span.as_ref().unwrap().location(), "t.yaml:6:5");
        assert_eq!(d[0].help.as_deref(), Some("did you mean `prompt`?"));
    }

    #[test]
    fn every_problem_is_reported() {
        let d = check(
            Format::Workflow,
            "version: 2\nname: x\nsteps:\n  a:\n    task: t\n    latency: fast\n    retries: many\n",
        );
        assert_eq!(d.len(), 3, "{d:?}");
    }
}
