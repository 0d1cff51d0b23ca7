//! The workflow file format (typed), and loading it.
//!
//! Loading is: read → YAML with spans → JSON Schema → serde. Only the first
//! stage can stop a file early (a syntax error); schema errors are all
//! reported together. [`load_document`] and [`from_document`] are the
//! loaders every file kind goes through (policies and suites too), and
//! [`Loaded`] keeps a value with the document its spans point into.
//! Semantic checks (unknown steps, cycles, templates) live in
//! [`crate::analyze`], because they need the whole picture.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, SourceFile};
use crate::schema::{self, Format};
use crate::yaml::Document;

/// A workflow as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Tags added to every step.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub inputs: IndexMap<String, InputDecl>,
    /// Task names of this workflow beyond [`KNOWN_TASKS`] (and the ones its
    /// policy declares): a step's `task` must be one of them, so a typo is
    /// an error rather than a silent fall to the policy's catch-all rule.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Named document sets a step's `retrieve` ranks chunks from.
    #[serde(default)]
    pub documents: IndexMap<String, DocumentSet>,
    pub steps: IndexMap<String, Step>,
}

/// A named set of documents: files (globs relative to the workflow, inside
/// the project) or an array input; one label for every document in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentSet {
    #[serde(default)]
    pub files: Vec<String>,
    pub input: Option<String>,
    pub sensitivity: Option<String>,
}

/// A step's `retrieve`: the `top_k` chunks of its sets most relevant to
/// `query` (a template), given to its prompt as `retrieved`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retrieve {
    #[serde(deserialize_with = "one_or_many")]
    pub from: Vec<String>,
    pub query: String,
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    #[serde(default = "default_chunk_tokens")]
    pub chunk_tokens: u32,
}

fn default_top_k() -> u32 {
    5
}

fn default_chunk_tokens() -> u32 {
    300
}

/// A step's `history`: a `messages` input sent as real chat turns before
/// the prompt, the last `keep_last` of them as they are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub from: String,
    pub keep_last: Option<u32>,
    /// Replace the turns before the last `keep_last` by one summary,
    /// written by a generated step (see [`crate::context::history`]).
    #[serde(default)]
    pub summarize_older: bool,
    /// A model of the policy the summary step is pinned to (else the
    /// policy routes it: task `summarize`, tag `context-summary`).
    pub summarize_with: Option<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The task vocabulary: the design's task table, what the examples and the
/// plan's output estimates use, and `judge` (the evaluation judge's step).
/// Other names are declared with a top-level `tasks:` in the workflow or
/// the policy.
pub const KNOWN_TASKS: &[&str] = &[
    "analysis",
    "answer",
    "architecture",
    "boilerplate",
    "brainstorm",
    "chat",
    "classify",
    "creative",
    "debug",
    "extract",
    "format",
    "judge",
    "label",
    "plan",
    "refactor",
    "review",
    "route",
    "summarize",
    "test",
    "test-writing",
    "title",
    "translate",
    "triage",
    "write",
];

/// The error for a task name outside the vocabulary: the closest known
/// name, and how to declare a task of one's own in `file` ("the policy").
pub fn unknown_task<'a>(
    task: &str,
    known: impl IntoIterator<Item = &'a str>,
    file: &str,
) -> Diagnostic {
    let declare = format!("a task of your own is declared in {file}: `tasks: [{task}]`");
    Diagnostic::error("unknown-task", format!("unknown task `{task}`"))
        .with_label("not a known task")
        .with_help(match crate::diagnostic::closest(task, known) {
            Some(near) => format!("did you mean `{near}`? ({declare})"),
            None => format!("known tasks: {}; {declare}", KNOWN_TASKS.join(", ")),
        })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    /// Chat messages: a list of `{role, content}` (`system`, `user`,
    /// `assistant`), checked by [`crate::context::history::parse`].
    Messages,
    /// An image (PNG, JPEG, GIF, WebP), given as a file: see
    /// [`crate::attachment`].
    Image,
    /// A document (PDF), given as a file.
    File,
}

impl InputType {
    pub fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Array => "array",
            InputType::Object => "object",
            InputType::Messages => "messages",
            InputType::Image => "image",
            InputType::File => "file",
        }
    }

    /// Does a JSON value have this type?
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            InputType::String => v.is_string(),
            InputType::Integer => v.is_i64() || v.is_u64(),
            InputType::Number => v.is_number(),
            InputType::Boolean => v.is_boolean(),
            InputType::Array => v.is_array(),
            InputType::Object => v.is_object(),
            InputType::Messages => crate::context::history::parse(v).is_ok(),
            // A path (a suite's case), resolved by `inputs::from_values`.
            InputType::Image | InputType::File => v.is_string(),
        }
    }

    /// Is this an attachment type (its value is a file's bytes, not text)?
    pub fn is_attachment(self) -> bool {
        matches!(self, InputType::Image | InputType::File)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDecl {
    #[serde(rename = "type", default)]
    pub kind: InputType,
    #[serde(default)]
    pub description: String,
    pub sensitivity: Option<String>,
    pub default: Option<Value>,
    pub required: Option<bool>,
    /// A sample value for dry runs.
    pub example: Option<Value>,
    /// An `array` given as a JSON Lines file and read a line at a time
    /// ([`crate::streamed`]); read only as a whole `for_each`.
    #[serde(default)]
    pub stream: bool,
}

impl InputDecl {
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(self.default.is_none())
    }
}

/// How much reasoning a step needs. Ordered from least to most.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Reasoning {
    None,
    Light,
    #[default]
    Standard,
    Deep,
}

impl Reasoning {
    pub const ALL: [Reasoning; 4] = [
        Reasoning::None,
        Reasoning::Light,
        Reasoning::Standard,
        Reasoning::Deep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reasoning::None => "none",
            Reasoning::Light => "light",
            Reasoning::Standard => "standard",
            Reasoning::Deep => "deep",
        }
    }
}

/// How soon a step's answer is needed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Latency {
    Realtime,
    #[default]
    Interactive,
    Batch,
}

impl Latency {
    pub const ALL: [Latency; 3] = [Latency::Realtime, Latency::Interactive, Latency::Batch];

    pub fn name(self) -> &'static str {
        match self {
            Latency::Realtime => "realtime",
            Latency::Interactive => "interactive",
            Latency::Batch => "batch",
        }
    }
}

/// One step as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub task: String,
    #[serde(default)]
    pub description: String,
    pub prompt: Option<String>,
    pub prompt_file: Option<String>,
    pub system: Option<String>,
    #[serde(default)]
    pub needs: Vec<String>,
    pub when: Option<String>,
    pub for_each: Option<String>,
    #[serde(default)]
    pub reasoning: Reasoning,
    #[serde(default)]
    pub latency: Latency,
    pub sensitivity: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A model of the policy this step is pinned to.
    pub model: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub expected_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Inputs of type `image` / `file` sent with the prompt.
    #[serde(default)]
    pub attachments: Vec<String>,
    pub output: Option<OutputSpec>,
    #[serde(default, deserialize_with = "duration_opt")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub continue_on_error: bool,
    /// Context management: a token budget, trimming, chunking.
    pub context: Option<crate::context::ContextSpec>,
    pub retrieve: Option<Retrieve>,
    pub history: Option<History>,
}

/// The default bound on a step's answer when the workflow sets none.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 1024;

impl Step {
    pub fn max_output_tokens(&self) -> u32 {
        self.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
    }

    pub fn output_schema(&self) -> Option<&Value> {
        self.output.as_ref().and_then(|o| o.schema.as_ref())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub schema: Option<Value>,
}

fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Null => Ok(None),
        other => parse_duration(&other)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("invalid duration")),
    }
}

/// "500ms", "30s", "1.5m", "1h", or a number of seconds.
pub fn parse_duration(v: &Value) -> Option<Duration> {
    match v {
        Value::Number(n) => n.as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok()),
        Value::String(s) => {
            let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = s.strip_suffix('s') {
                (n, 1.0)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 60.0)
            } else if let Some(n) = s.strip_suffix('h') {
                (n, 3600.0)
            } else if let Some(n) = s.strip_suffix('d') {
                (n, 86400.0)
            } else {
                return None;
            };
            let n: f64 = num.parse().ok()?;
            Duration::try_from_secs_f64(n * unit).ok()
        }
        _ => None,
    }
}

/// A loaded file: its typed content and the document that locates it.
#[derive(Debug)]
pub struct Loaded<T> {
    pub doc: Document,
    pub value: T,
}

impl<T> Loaded<T> {
    pub fn path(&self) -> &Path {
        &self.doc.file.path
    }

    /// The folder relative paths in the file are resolved against.
    pub fn dir(&self) -> PathBuf {
        self.path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Reads and parses a YAML file of a given format.
pub fn load_document(path: &Path) -> Result<Document, Vec<Diagnostic>> {
    let file = SourceFile::read(path).map_err(|d| vec![d])?;
    Document::parse(file)
}

/// Validates a parsed document against the schema and deserializes it.
pub fn from_document<T: for<'de> Deserialize<'de>>(
    doc: Document,
    format: Format,
) -> Result<Loaded<T>, Vec<Diagnostic>> {
    let errors = schema::validate(&doc, format);
    if !errors.is_empty() {
        return Err(errors);
    }
    match T::deserialize(&doc.root) {
        Ok(value) => Ok(Loaded { doc, value }),
        // The schema accepted it, so this is a gap between schema and types;
        // still report it as bad input rather than panic.
        Err(err) => Err(vec![
            Diagnostic::error("invalid-file", format!("invalid {}: {err}", format.name()))
                .at(doc.span("")),
        ]),
    }
}

pub fn load(path: &Path) -> Result<Loaded<Workflow>, Vec<Diagnostic>> {
    from_document(load_document(path)?, Format::Workflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration(&json!("500ms")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration(&json!("2m")), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_duration(&json!(1.5)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration(&json!("soon")), None);
    }

    #[test]
    fn defaults() {
        let doc = Document::parse(SourceFile::new(
            "w.yaml",
            "version: 1\nname: w\nsteps:\n  a: {task: t, prompt: hi, timeout: 30s}\n",
        ))
        .unwrap();
        let w: Loaded<Workflow> = from_document(doc, Format::Workflow).unwrap();
        let a = &w.value.steps["a"];
        assert_eq!(a.reasoning, Reasoning::Standard);
        assert_eq!(a.latency, Latency::Interactive);
        assert_eq!(a.max_output_tokens(), DEFAULT_MAX_OUTPUT_TOKENS);
        assert_eq!(a.timeout, Some(Duration::from_secs(30)));
    }
}
