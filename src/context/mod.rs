//! Context management: what a step's `context:` says, checked.
//!
//! A step brings its large inputs under a token budget declaratively:
//! [`budget`] trims named inputs so every call fits `max_input_tokens`
//! (cut by tokens, with a visible marker where text was cut); [`chunk`]
//! splits one input into token-sized, overlapping chunks that the step fans
//! out over (a `for_each` under the hood, so routing, the sensitivity gate,
//! the journal, `--resume` and the cache apply per chunk) — the map half of
//! a map-reduce whose reduce is any step reading the chunked step's output.
//!
//! This module owns the syntax and its checks; `step` applies it (the one
//! place a step's calls are rendered), `plan` and `journal::report` show
//! what it saved. Beside it: [`retrieval`] (the top-k chunks of named
//! document sets most relevant to a query, ranked with BM25, each carrying
//! its document's label) and [`history`] (chat-message inputs sent as real
//! messages, the last turns kept and the older ones summarized by a
//! generated step).

pub mod budget;
pub mod chunk;
pub mod history;
pub mod retrieval;

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize};

use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::yaml::{Document, pointer};

pub use budget::Trim;

/// A step's `context:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    /// Every call of the step must fit in this many input tokens (system
    /// prompt, prompt and the chat format's framing).
    pub max_input_tokens: Option<u64>,
    /// Where the cut is made when a call is over budget.
    pub trim: Option<Trim>,
    /// The inputs that may be cut; every other part of the prompt (the
    /// question, the instructions) is kept intact.
    #[serde(default, deserialize_with = "one_or_many")]
    pub input: Vec<String>,
    /// Split an input into chunks the step fans out over.
    pub chunk: Option<ChunkSpec>,
}

/// `context.chunk`: the map half of a map-reduce.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkSpec {
    /// The input to split (a string).
    pub input: String,
    /// Tokens per chunk (at most).
    pub tokens: u64,
    /// Tokens each chunk repeats from the end of the one before (at most).
    #[serde(default)]
    pub overlap: u64,
}

impl ContextSpec {
    /// The trim in force: the one written, else [`Trim::End`] when inputs
    /// may be cut.
    pub fn trim(&self) -> Option<Trim> {
        self.trim
            .or_else(|| (!self.input.is_empty()).then_some(Trim::End))
    }
}

impl ChunkSpec {
    /// The `for_each` expression the chunked step fans out over: the same
    /// `chunks` filter a workflow may write itself.
    pub fn for_each(&self) -> String {
        format!(
            "inputs.{} | chunks({}, {})",
            self.input, self.tokens, self.overlap
        )
    }
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

/// What context management did to one step: shown by `plan`, journaled by
/// `run` and summed by `report`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effect {
    /// `trim: middle`, `chunk`, or `budget` (within budget, nothing cut).
    pub strategy: String,
    /// Input tokens of all the step's calls without context management
    /// (for a chunked step: one call holding the whole input), counted with
    /// o200k_base as routing rules are.
    pub tokens_before: u64,
    /// Input tokens of all the calls as sent.
    pub tokens_after: u64,
    /// What trimming cut, per input.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<InputCut>,
    /// Chunks a chunked step fans out over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
}

/// One trimmed input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputCut {
    pub input: String,
    /// Its tokens before and after the cut (o200k_base).
    pub tokens_before: u64,
    pub tokens_kept: u64,
}

/// The smallest chunk worth a call: below this the prompt's own framing
/// dominates and a typo (`tokens: 2`) would fan out into thousands of calls.
pub const MIN_CHUNK_TOKENS: u64 = 32;

/// A declared input as the checks need it: its name, and whether it is text
/// (context management cuts text). Below `workflow`, which uses this
/// module's syntax types.
pub struct DeclaredInput<'a> {
    pub name: &'a str,
    pub is_string: bool,
    /// Its declared type, for the error.
    pub kind: &'static str,
}

/// Checks a step's `context:` against the workflow's inputs: names (with
/// did-you-mean), their types, that the step reads them, and the numbers
/// that cannot work together. `reads_inputs` is what the step's templates
/// read; `own_for_each` whether the step has its own `for_each`.
pub fn check(
    inputs: &[DeclaredInput<'_>],
    doc: &Document,
    id: &str,
    spec: &ContextSpec,
    reads_inputs: &BTreeSet<String>,
    own_for_each: bool,
    diags: &mut Vec<Diagnostic>,
) {
    let at = |keys: &[&str]| {
        let mut p = vec!["steps", id, "context"];
        p.extend_from_slice(keys);
        doc.span(&pointer(p))
    };
    let names: Vec<&str> = inputs.iter().map(|i| i.name).collect();
    let find = |name: &str| inputs.iter().find(|i| i.name == name);
    // An input named in `context` must be a declared string input.
    let check_input = |name: &str, keys: &[&str], diags: &mut Vec<Diagnostic>| match find(name) {
        None => diags.push(
            Diagnostic::error(
                "context-unknown-input",
                format!("the context of step `{id}` names unknown input `{name}`"),
            )
            .at(at(keys))
            .with_label("no input with this name")
            .with_help(
                did_you_mean(name, names.iter().copied()).unwrap_or_else(|| {
                    if names.is_empty() {
                        "the workflow declares no inputs".to_owned()
                    } else {
                        format!("inputs are {}", one_of(names.iter().copied()))
                    }
                }),
            ),
        ),
        Some(decl) if !decl.is_string => diags.push(
            Diagnostic::error(
                "context-input-type",
                format!(
                    "input `{name}` is of type {}; context management cuts text",
                    decl.kind
                ),
            )
            .at(at(keys))
            .with_help("name a string input (declared `type: string`, the default)"),
        ),
        Some(_) => {}
    };
    for (i, name) in spec.input.iter().enumerate() {
        let idx = i.to_string();
        let keys: Vec<&str> = if spec.input.len() == 1 && doc_is_scalar(doc, id) {
            vec!["input"]
        } else {
            vec!["input", idx.as_str()]
        };
        check_input(name, &keys, diags);
        if find(name).is_some() && !reads_inputs.contains(name) {
            diags.push(
                Diagnostic::error(
                    "context-input-unread",
                    format!("step `{id}` may cut input `{name}`, but its templates do not read it"),
                )
                .at(at(&keys))
                .with_help(format!(
                    "read it in the prompt as `{{{{ inputs.{name} }}}}`, or name an input the step reads"
                )),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for name in &spec.input {
        if !seen.insert(name) {
            diags.push(
                Diagnostic::error(
                    "context-duplicate-input",
                    format!("the context of step `{id}` names input `{name}` twice"),
                )
                .at(at(&["input"]))
                .with_help("name each input once"),
            );
        }
    }
    if spec.max_input_tokens.is_none() && (spec.trim.is_some() || !spec.input.is_empty()) {
        diags.push(
            Diagnostic::error(
                "context-no-budget",
                format!("step `{id}` says what to trim but not to what size"),
            )
            .at(at(&[]))
            .with_help("add `max_input_tokens: N` to its `context`"),
        );
    }
    if spec.trim.is_some() && spec.input.is_empty() {
        let strings: Vec<&str> = reads_inputs
            .iter()
            .map(String::as_str)
            .filter(|n| find(n).is_some_and(|d| d.is_string))
            .collect();
        diags.push(
            Diagnostic::error(
                "context-no-input",
                format!("step `{id}` trims, but names no input that may be cut"),
            )
            .at(at(&["trim"]))
            .with_help(if strings.is_empty() {
                "add `input: NAME` (a string input the prompt reads); the rest of the prompt is kept intact".to_owned()
            } else {
                format!(
                    "add `input: NAME`, one of {} (the rest of the prompt is kept intact)",
                    one_of(strings.iter().copied())
                )
            }),
        );
    }
    let Some(chunk) = &spec.chunk else { return };
    check_input(&chunk.input, &["chunk", "input"], diags);
    if own_for_each {
        diags.push(
            Diagnostic::error(
                "context-chunk-for-each",
                format!("step `{id}` has both `for_each` and `context.chunk`"),
            )
            .at(at(&["chunk"]))
            .with_help("a chunked step fans out over its chunks (`item` is the chunk); remove `for_each`, or chunk in it with `inputs.X | chunks(tokens, overlap)`"),
        );
    }
    if chunk.tokens < MIN_CHUNK_TOKENS {
        diags.push(
            Diagnostic::error(
                "context-chunk-size",
                format!("chunks of {} tokens are too small", chunk.tokens),
            )
            .at(at(&["chunk", "tokens"]))
            .with_help(format!("use at least {MIN_CHUNK_TOKENS} tokens per chunk")),
        );
    }
    if chunk.overlap >= chunk.tokens {
        diags.push(
            Diagnostic::error(
                "context-chunk-overlap",
                format!(
                    "an overlap of {} tokens leaves nothing new in chunks of {}",
                    chunk.overlap, chunk.tokens
                ),
            )
            .at(at(&["chunk", "overlap"]))
            .with_help("keep the overlap well below `tokens` (a tenth is typical)"),
        );
    }
    if spec.input.contains(&chunk.input) {
        diags.push(
            Diagnostic::error(
                "context-chunk-and-trim",
                format!("step `{id}` both chunks and trims input `{}`", chunk.input),
            )
            .at(at(&["input"]))
            .with_help("a chunk is already sized by `chunk.tokens`; trim other inputs only"),
        );
    }
    if let Some(max) = spec.max_input_tokens {
        if chunk.tokens >= max {
            diags.push(
                Diagnostic::error(
                    "context-chunk-over-budget",
                    format!(
                        "chunks of {} tokens cannot fit `max_input_tokens: {max}`",
                        chunk.tokens
                    ),
                )
                .at(at(&["chunk", "tokens"]))
                .with_help("chunks must leave room for the rest of the prompt: make them smaller"),
            );
        }
    }
}

/// Is `steps.ID.context.input` written as one name (not a list)?
fn doc_is_scalar(doc: &Document, id: &str) -> bool {
    doc.root
        .pointer(&pointer(["steps", id, "context", "input"]))
        .is_some_and(serde_json::Value::is_string)
}
