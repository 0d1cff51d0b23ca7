//! Workflow input values: `--input name=value`, `name=@file`, `name=@-`.
//!
//! Values are coerced to the declared type (a string stays as typed; numbers
//! and booleans are parsed; arrays and objects are JSON). Missing required
//! inputs, unknown names and bad values are all reported together.

use std::path::Path;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;

use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::streamed::StreamedList;
use crate::workflow::{InputType, Workflow};

/// One `--input` argument as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInput {
    pub name: String,
    pub value: RawValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    Text(String),
    File(String),
    Stdin,
}

/// Why an `--input` argument is not `NAME=VALUE` (clap shows the message
/// after the argument, worded as before this type existed).
#[derive(Debug, thiserror::Error)]
pub enum RawInputError {
    #[error("expected NAME=VALUE or NAME=@FILE, got `{0}`")]
    NoEquals(String),
    #[error("missing input name in `{0}`")]
    NoName(String),
}

impl std::str::FromStr for RawInput {
    type Err = RawInputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| RawInputError::NoEquals(s.to_owned()))?;
        if name.is_empty() {
            return Err(RawInputError::NoName(s.to_owned()));
        }
        let value = match value.strip_prefix('@') {
            Some("-") => RawValue::Stdin,
            Some(path) if !path.is_empty() => RawValue::File(path.to_owned()),
            _ => RawValue::Text(value.to_owned()),
        };
        Ok(RawInput {
            name: name.to_owned(),
            value,
        })
    }
}

/// Where an input's value came from, shown in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueSource {
    Given,
    Default,
    /// The input's `example:` — only `plan` uses these.
    Example,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputValue {
    /// For an `image` / `file` input, the attachment's descriptor
    /// (`{name, mime, bytes}`): what a template reading it sees.
    pub value: Value,
    pub source: ValueSource,
    /// An `image` / `file` input's bytes (sent only through a step's
    /// `attachments:`); `None` for other types and for a plan's stand-in.
    #[serde(skip)]
    pub attachment: Option<std::sync::Arc<crate::attachment::Attachment>>,
    /// A streamed input given as a JSON Lines file: its items, read from
    /// the file on each pass (`value` is then [`StreamedList::descriptor`]).
    #[serde(skip)]
    pub stream: Option<std::sync::Arc<StreamedList>>,
}

/// The attachment kind an input type carries.
fn attachment_kind(kind: InputType) -> Option<crate::attachment::Kind> {
    match kind {
        InputType::Image => Some(crate::attachment::Kind::Image),
        InputType::File => Some(crate::attachment::Kind::Pdf),
        _ => None,
    }
}

/// Resolved input values, in declaration order.
pub type Inputs = IndexMap<String, InputValue>;

/// What the journal keeps of an input: its value, and for an attachment
/// also the file's SHA-256 and absolute path, so a resume can read the same
/// bytes again ([`journaled`]) — the journal keeps no file contents.
pub fn journal_value(v: &InputValue) -> Value {
    if let Some(list) = &v.stream {
        // The descriptor already names the file and its SHA-256.
        return list.descriptor();
    }
    match (&v.attachment, &v.value) {
        (Some(a), Value::Object(descriptor)) => {
            let mut o = descriptor.clone();
            o.insert("sha256".into(), Value::String(a.sha256.clone()));
            if let Some(p) = &a.path {
                o.insert("path".into(), Value::String(p.display().to_string()));
            }
            Value::Object(o)
        }
        _ => v.value.clone(),
    }
}

/// Every input as the journal keeps it ([`journal_value`]), as JSON text:
/// the same bytes as serialising a map of `journal_value`s, without copying
/// the values into one first.
pub fn journal_json(inputs: &Inputs) -> String {
    struct Kept<'a>(&'a InputValue);
    impl Serialize for Kept<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0.stream.is_some() || self.0.attachment.is_some() {
                journal_value(self.0).serialize(s)
            } else {
                self.0.value.serialize(s)
            }
        }
    }
    let kept: IndexMap<&str, Kept<'_>> =
        inputs.iter().map(|(k, v)| (k.as_str(), Kept(v))).collect();
    serde_json::to_string(&kept).expect("JSON values serialise (their keys are strings)")
}

/// The inputs a run was started with, read back from the journal for
/// `--resume`: values as they were, and each attachment read again from its
/// file, which must hold the same bytes (by SHA-256) — a resume with other
/// bytes would mix answers about two different files.
pub fn journaled(workflow: &Workflow, stored: &Value) -> Result<Inputs, Vec<Diagnostic>> {
    let mut out = Inputs::new();
    let mut diags = Vec::new();
    let stored = stored.as_object();
    for (name, decl) in &workflow.inputs {
        let Some(v) = stored.and_then(|o| o.get(name)) else {
            continue;
        };
        if decl.stream && v.is_object() {
            match restream(v) {
                Ok(list) => {
                    out.insert(name.clone(), streamed_value(list));
                }
                Err(why) => diags.push(resume_error(name, &why)),
            }
            continue;
        }
        let Some(kind) = attachment_kind(decl.kind) else {
            out.insert(
                name.clone(),
                InputValue {
                    value: v.clone(),
                    source: ValueSource::Given,
                    attachment: None,
                    stream: None,
                },
            );
            continue;
        };
        match reattach(v, kind) {
            Ok(a) => {
                out.insert(
                    name.clone(),
                    InputValue {
                        value: a.descriptor(),
                        source: ValueSource::Given,
                        attachment: Some(std::sync::Arc::new(a)),
                        stream: None,
                    },
                );
            }
            Err(why) => diags.push(resume_error(name, &why)),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

fn resume_error(name: &str, why: &str) -> Diagnostic {
    Diagnostic::error(
        "resume-input-file",
        format!("cannot resume with input `{name}`: {why}"),
    )
    .with_help(
        "put the same file back where it was, or run again without --resume: calls whose requests did not change are answered from the cache at no cost",
    )
}

fn unreadable(path: &str, e: &dyn std::fmt::Display) -> String {
    format!("the file {path} it was read from cannot be read again: {e}")
}

/// A file read again for a resume holds the bytes the journal hashed.
fn same_bytes(path: &str, now: &str, journaled: &str) -> Result<(), String> {
    if now == journaled {
        return Ok(());
    }
    Err(format!(
        "the file {path} changed since the run started (SHA-256 {}…, was {}…)",
        now.get(..12).unwrap_or(now),
        journaled.get(..12).unwrap_or(journaled)
    ))
}

/// A streamed input's file, read and checked again from the path the
/// journal kept, and compared with the SHA-256 it kept.
fn restream(stored: &Value) -> Result<std::sync::Arc<StreamedList>, String> {
    let (Some(path), Some(sha256)) = (
        stored.get("stream").and_then(Value::as_str),
        stored.get("sha256").and_then(Value::as_str),
    ) else {
        return Err("the journal does not say which file it was".into());
    };
    let list = StreamedList::open(Path::new(path)).map_err(|e| unreadable(path, &e))?;
    same_bytes(path, list.sha256(), sha256)?;
    Ok(std::sync::Arc::new(list))
}

/// A streamed input's value: the file's descriptor, and the list.
fn streamed_value(list: std::sync::Arc<StreamedList>) -> InputValue {
    InputValue {
        value: list.descriptor(),
        source: ValueSource::Given,
        attachment: None,
        stream: Some(list),
    }
}

/// The streamed lists among resolved inputs, by name.
pub type Streams = std::collections::BTreeMap<String, std::sync::Arc<StreamedList>>;

/// The inputs given as streamed lists.
pub fn streams(inputs: &Inputs) -> Streams {
    inputs
        .iter()
        .filter_map(|(k, v)| v.stream.clone().map(|l| (k.clone(), l)))
        .collect()
}

/// An attachment input's file, read again from the path the journal kept
/// and checked against the SHA-256 it kept.
fn reattach(
    stored: &Value,
    kind: crate::attachment::Kind,
) -> Result<crate::attachment::Attachment, String> {
    let (Some(path), Some(sha256)) = (
        stored.get("path").and_then(Value::as_str),
        stored.get("sha256").and_then(Value::as_str),
    ) else {
        return Err("the journal does not say which file it was (a run journaled before tollgate kept attachments' paths)".into());
    };
    let a = crate::attachment::Attachment::load(Path::new(path), kind)
        .map_err(|e| unreadable(path, &e))?;
    same_bytes(path, &a.sha256, sha256)?;
    Ok(a)
}

/// The bytes of every `image` / `file` input that has them, by name.
pub type Files = std::collections::BTreeMap<String, std::sync::Arc<crate::attachment::Attachment>>;

/// The attachments among resolved inputs.
pub fn files(inputs: &Inputs) -> Files {
    inputs
        .iter()
        .filter_map(|(k, v)| v.attachment.clone().map(|a| (k.clone(), a)))
        .collect()
}

/// Resolves the inputs of a workflow. With `use_examples`, a missing input
/// with an `example:` takes it (dry runs); otherwise it is an error.
pub fn resolve(
    workflow: &Workflow,
    raw: &[RawInput],
    use_examples: bool,
) -> Result<Inputs, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut given: IndexMap<&str, Value> = IndexMap::new();
    let names: Vec<&str> = workflow.inputs.keys().map(String::as_str).collect();
    let mut stdin_used = false;
    let mut attached: IndexMap<&str, std::sync::Arc<crate::attachment::Attachment>> =
        IndexMap::new();
    let mut streamed: IndexMap<&str, std::sync::Arc<StreamedList>> = IndexMap::new();
    // Inputs that were given, even if their value was bad: already reported,
    // so not "missing" as well.
    let mut mentioned: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for r in raw {
        mentioned.insert(r.name.as_str());
        let Some(decl) = workflow.inputs.get(&r.name) else {
            diags.push(
                Diagnostic::error(
                    "unknown-input",
                    format!("--input {}: the workflow has no input `{}`", r.name, r.name),
                )
                .with_help(
                    did_you_mean(&r.name, names.iter().copied()).unwrap_or_else(|| {
                        format!(
                            "inputs of `{}`: {}",
                            workflow.name,
                            one_of(names.iter().copied())
                        )
                    }),
                ),
            );
            continue;
        };
        if let Some(kind) = attachment_kind(decl.kind) {
            let RawValue::File(path) = &r.value else {
                diags.push(
                    Diagnostic::error(
                        "input-type",
                        format!(
                            "--input {}: an input of type {} is given as a file",
                            r.name,
                            decl.kind.name()
                        ),
                    )
                    .with_help(format!("give it with --input {}=@PATH", r.name)),
                );
                continue;
            };
            match crate::attachment::Attachment::load(Path::new(path), kind) {
                Ok(a) => {
                    let a = std::sync::Arc::new(a);
                    if attached.insert(r.name.as_str(), a).is_some() {
                        diags.push(given_twice(&r.name));
                    }
                }
                Err(err) => diags.push(
                    Diagnostic::error(
                        "input-file",
                        format!("--input {}: cannot use `{path}`: {err}", r.name),
                    )
                    .with_help(err.hint()),
                ),
            }
            continue;
        }
        if decl.stream {
            match &r.value {
                RawValue::File(path) => {
                    match StreamedList::open(Path::new(path)) {
                        Ok(list) => {
                            let list = std::sync::Arc::new(list);
                            if streamed.insert(r.name.as_str(), list).is_some() {
                                diags.push(given_twice(&r.name));
                            }
                        }
                        Err(err) => diags.push(
                            Diagnostic::error(
                                "input-file",
                                format!("--input {}: {}", r.name, err.about(path)),
                            )
                            .with_help(err.hint()),
                        ),
                    }
                    continue;
                }
                RawValue::Stdin => {
                    diags.push(
                        Diagnostic::error(
                            "input-stdin",
                            format!(
                                "--input {}=@-: a streamed input is read once per pass, from a file",
                                r.name
                            ),
                        )
                        .with_help(format!(
                            "save it to a file first and give --input {}=@FILE.jsonl",
                            r.name
                        )),
                    );
                    continue;
                }
                // A JSON array typed in is an array input like any other.
                RawValue::Text(_) => {}
            }
        }
        let text = match &r.value {
            RawValue::Text(t) => t.clone(),
            RawValue::File(path) => match crate::files::read_text(Path::new(path)) {
                Ok(t) => t,
                Err(err) => {
                    diags.push(
                        Diagnostic::error(
                            "input-file",
                            format!("--input {}: cannot read `{path}`: {err}", r.name),
                        )
                        .with_help(
                            err.hint()
                                .unwrap_or("the path is relative to the current directory"),
                        ),
                    );
                    continue;
                }
            },
            RawValue::Stdin => {
                if stdin_used {
                    diags.push(Diagnostic::error(
                        "input-stdin",
                        format!(
                            "--input {}=@-: standard input was already used by another input",
                            r.name
                        ),
                    ));
                    continue;
                }
                stdin_used = true;
                match crate::files::read_stream_limited(
                    std::io::stdin().lock(),
                    crate::files::MAX_TEXT_BYTES,
                ) {
                    Ok(t) => t,
                    Err(err) => {
                        diags.push(Diagnostic::error(
                            "input-stdin",
                            format!("--input {}: cannot read standard input: {err}", r.name),
                        ));
                        continue;
                    }
                }
            }
        };
        match coerce(decl.kind, &text) {
            Ok(v) => {
                if given.insert(&r.name, v).is_some() {
                    diags.push(given_twice(&r.name));
                }
            }
            Err(why) => diags.push(
                Diagnostic::error("input-type", format!("--input {}: {why}", r.name)).with_help(
                    format!("input `{}` is of type {}", r.name, decl.kind.name()),
                ),
            ),
        }
    }
    let mut out = Inputs::new();
    for (name, decl) in &workflow.inputs {
        let resolved = if let Some(list) = streamed.shift_remove(name.as_str()) {
            Some(streamed_value(list))
        } else if let Some(a) = attached.shift_remove(name.as_str()) {
            Some(InputValue {
                value: a.descriptor(),
                source: ValueSource::Given,
                attachment: Some(a),
                stream: None,
            })
        } else if let Some(v) = given.shift_remove(name.as_str()) {
            Some(InputValue {
                value: v,
                source: ValueSource::Given,
                attachment: None,
                stream: None,
            })
        } else if let Some(v) = &decl.default {
            Some(InputValue {
                value: v.clone(),
                source: ValueSource::Default,
                attachment: None,
                stream: None,
            })
        } else if let (true, Some(v)) = (use_examples, &decl.example) {
            Some(InputValue {
                value: v.clone(),
                source: ValueSource::Example,
                attachment: None,
                stream: None,
            })
        } else if decl.is_required() && !mentioned.contains(name.as_str()) {
            diags.push(
                Diagnostic::error("missing-input", format!("missing required input `{name}`"))
                    .with_help(format!(
                        "give it with --input {name}=VALUE or --input {name}=@FILE"
                    )),
            );
            None
        } else {
            Some(InputValue {
                value: Value::Null,
                source: ValueSource::Default,
                attachment: None,
                stream: None,
            })
        };
        if let Some(v) = resolved {
            out.insert(name.clone(), v);
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

fn given_twice(name: &str) -> Diagnostic {
    Diagnostic::error("duplicate-input", format!("--input {name} is given twice"))
}

/// Resolves inputs given as typed values (a test case's `inputs:`):
/// declared types are checked, not coerced — YAML and JSON already say
/// what a value is. `locate` gives the position of an input's value (or of
/// the whole map for `None`), so each problem points at its line.
pub fn from_values(
    workflow: &Workflow,
    given: &serde_json::Map<String, Value>,
    base: &Path,
    locate: impl Fn(Option<&str>) -> Option<crate::diagnostic::Span>,
) -> Result<Inputs, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let names: Vec<&str> = workflow.inputs.keys().map(String::as_str).collect();
    for (name, value) in given {
        match workflow.inputs.get(name) {
            None => diags.push(
                Diagnostic::error(
                    "unknown-input",
                    format!("the workflow `{}` has no input `{name}`", workflow.name),
                )
                .at(locate(Some(name)))
                .with_help(
                    did_you_mean(name, names.iter().copied()).unwrap_or_else(|| {
                        format!("its inputs: {}", one_of(names.iter().copied()))
                    }),
                ),
            ),
            // An integer is a fine number; null means "not given".
            Some(decl) if !value.is_null() && !decl.kind.accepts(value) => diags.push(
                Diagnostic::error(
                    "input-type",
                    format!("input `{name}` must be of type {}", decl.kind.name()),
                )
                .at(locate(Some(name)))
                .with_help(format!("got {value}")),
            ),
            Some(_) => {}
        }
    }
    let mut out = Inputs::new();
    for (name, decl) in &workflow.inputs {
        let value = match (given.get(name).filter(|v| !v.is_null()), &decl.default) {
            (Some(Value::String(path)), _) if attachment_kind(decl.kind).is_some() => {
                let kind = attachment_kind(decl.kind).expect("checked");
                match crate::attachment::Attachment::load(&base.join(path), kind) {
                    Ok(a) => InputValue {
                        value: a.descriptor(),
                        source: ValueSource::Given,
                        attachment: Some(std::sync::Arc::new(a)),
                        stream: None,
                    },
                    Err(err) => {
                        diags.push(
                            Diagnostic::error(
                                "input-file",
                                format!("input `{name}`: cannot use `{path}`: {err}"),
                            )
                            .at(locate(Some(name)))
                            .with_help(err.hint()),
                        );
                        continue;
                    }
                }
            }
            (Some(v), _) => InputValue {
                value: v.clone(),
                source: ValueSource::Given,
                attachment: None,
                stream: None,
            },
            (None, Some(v)) => InputValue {
                value: v.clone(),
                source: ValueSource::Default,
                attachment: None,
                stream: None,
            },
            (None, None) if decl.is_required() => {
                diags.push(
                    Diagnostic::error("missing-input", format!("missing required input `{name}`"))
                        .at(locate(None))
                        .with_help(format!("add `{name}:` to the case's inputs")),
                );
                continue;
            }
            (None, None) => InputValue {
                value: Value::Null,
                source: ValueSource::Default,
                attachment: None,
                stream: None,
            },
        };
        out.insert(name.clone(), value);
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// Values for checking a workflow against a policy without real inputs:
/// defaults, then examples, then a stand-in of the declared type.
pub fn placeholders(workflow: &Workflow) -> Inputs {
    workflow
        .inputs
        .iter()
        .map(|(name, decl)| {
            let (value, source) = match (&decl.default, &decl.example) {
                (Some(v), _) => (v.clone(), ValueSource::Default),
                (None, Some(v)) => (v.clone(), ValueSource::Example),
                (None, None) => {
                    let text = Value::String(format!("\u{27E6}inputs.{name}\u{27E7}"));
                    let v = match decl.kind {
                        InputType::String => text,
                        InputType::Integer | InputType::Number => Value::from(1),
                        InputType::Boolean => Value::Bool(true),
                        InputType::Array => Value::Array(vec![text]),
                        InputType::Object => Value::Object(serde_json::Map::new()),
                        InputType::Messages => {
                            serde_json::json!([{"role": "user", "content": text}])
                        }
                        // No bytes: routing needs only the declared kind,
                        // and the estimates take a stand-in's size.
                        InputType::Image | InputType::File => serde_json::json!({
                            "name": format!("\u{27E6}inputs.{name}\u{27E7}"),
                            "mime": if decl.kind == InputType::Image { "image/png" } else { "application/pdf" },
                            "bytes": 0,
                        }),
                    };
                    (v, ValueSource::Example)
                }
            };
            (
                name.clone(),
                InputValue {
                    value,
                    source,
                    attachment: None,
                    stream: None,
                },
            )
        })
        .collect()
}

/// Why text typed by a user is not a value of the input's type. The
/// message follows `--input NAME:` or a case file's column (worded as
/// before this type existed: diagnostics and snapshots carry it).
#[derive(Debug, thiserror::Error)]
pub enum CoerceError {
    #[error("`{0}` is not an integer")]
    NotInteger(String),
    #[error("`{0}` is not a number")]
    NotNumber(String),
    #[error("`{0}` is not a boolean (true or false)")]
    NotBoolean(String),
    #[error("not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// Valid JSON of the wrong shape: `array` or `object` was declared.
    #[error("expected a JSON {0}")]
    WrongShape(&'static str),
    /// Not a list of chat messages `{role, content}` (JSON or JSON Lines).
    #[error("{0}")]
    NotMessages(String),
    /// An `image` / `file` input given as text.
    #[error("an input of type {0} is given as a file path, not as text")]
    NotAFile(&'static str),
}

/// Parses text typed by a user (a flag, a CSV cell) as a value of the type.
pub fn coerce(kind: InputType, text: &str) -> Result<Value, CoerceError> {
    match kind {
        InputType::String => Ok(Value::String(text.to_owned())),
        InputType::Integer => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| CoerceError::NotInteger(text.trim().to_owned())),
        InputType::Number => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| CoerceError::NotNumber(text.trim().to_owned())),
        InputType::Boolean => match text.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            other => Err(CoerceError::NotBoolean(other.to_owned())),
        },
        InputType::Messages => {
            crate::context::history::parse_text(text).map_err(CoerceError::NotMessages)
        }
        // Only a file holds one (`inputs::resolve` reads it before this).
        InputType::Image | InputType::File => Err(CoerceError::NotAFile(kind.name())),
        InputType::Array | InputType::Object => {
            let v: Value = serde_json::from_str(text).map_err(CoerceError::NotJson)?;
            if kind.accepts(&v) {
                Ok(v)
            } else {
                Err(CoerceError::WrongShape(if kind == InputType::Array {
                    "array"
                } else {
                    "object"
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal's text is what serialising a map of `journal_value`s
    /// gave (so its hash, and a resume of an older journal, are unchanged),
    /// and a streamed list is its descriptor, never its items.
    #[test]
    fn the_journal_text_is_the_journal_values_serialised() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("xs.jsonl");
        std::fs::write(&file, "\"first item\"\n\"second item\"\n").unwrap();
        let list = std::sync::Arc::new(StreamedList::open(&file).unwrap());
        let mut inputs = Inputs::new();
        let held = |value: Value| InputValue {
            value,
            source: ValueSource::Given,
            attachment: None,
            stream: None,
        };
        inputs.insert("text".into(), held("a \"quoted\" ticket ✓".into()));
        inputs.insert(
            "list".into(),
            held(serde_json::json!([1, {"b": [null, 2.5]}])),
        );
        inputs.insert("xs".into(), streamed_value(std::sync::Arc::clone(&list)));
        let text = journal_json(&inputs);
        let values = Value::Object(
            inputs
                .iter()
                .map(|(k, v)| (k.clone(), journal_value(v)))
                .collect(),
        );
        assert_eq!(text, values.to_string());
        assert_eq!(
            crate::journal::sha256_text(&text),
            crate::journal::sha256_json(&values)
        );
        assert!(!text.contains("first item"), "{text}");
        assert!(text.contains(list.sha256()), "{text}");
    }

    #[test]
    fn parses_input_forms() {
        assert_eq!(
            "a=b=c".parse::<RawInput>().unwrap().value,
            RawValue::Text("b=c".into())
        );
        assert_eq!(
            "a=@f.txt".parse::<RawInput>().unwrap().value,
            RawValue::File("f.txt".into())
        );
        assert_eq!("a=@-".parse::<RawInput>().unwrap().value, RawValue::Stdin);
        assert_eq!(
            "nope".parse::<RawInput>().unwrap_err().to_string(),
            "expected NAME=VALUE or NAME=@FILE, got `nope`"
        );
        assert_eq!(
            "=x".parse::<RawInput>().unwrap_err().to_string(),
            "missing input name in `=x`"
        );
    }

    #[test]
    fn coerces_by_type() {
        assert_eq!(
            coerce(InputType::Integer, " 42\n").unwrap(),
            Value::from(42)
        );
        assert_eq!(
            coerce(InputType::Array, "[1,2]").unwrap(),
            serde_json::json!([1, 2])
        );
        assert_eq!(
            coerce(InputType::Array, "{}").unwrap_err().to_string(),
            "expected a JSON array"
        );
        assert_eq!(
            coerce(InputType::Boolean, " yes").unwrap_err().to_string(),
            "`yes` is not a boolean (true or false)"
        );
    }
}
