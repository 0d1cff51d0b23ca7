//! Loading YAML with a position for every node.
//!
//! Why not a serde YAML deserializer: those report where *parsing* failed, but
//! once a value is deserialized its position is gone, and most of our errors
//! are found later (an unknown model, a cycle, a template error inside a block
//! scalar). So we drive yaml-rust2's event parser ourselves and build two
//! things at once: a plain `serde_json::Value` (validated by JSON Schema, then
//! deserialized with serde into typed structs) and a table from JSON pointer to
//! source span. Any later stage can turn a pointer back into `file:line:col`.
//!
//! Scalars are resolved with the YAML 1.2 core schema (`yes`/`no` are strings,
//! as they should be), duplicate keys are errors, anchors and aliases work.
//!
//! # Bounds
//!
//! Loading any text takes time and memory in proportion to the text, whatever
//! it holds (workflow, policy and suite files alike):
//!
//! - a document is at most [`MAX_YAML_BYTES`] of text;
//! - nesting is at most [`MAX_DEPTH`] levels: the event loop here is
//!   iterative (yaml-rust2's own `load` recurses once per level and a deep
//!   `- - - - …` would overflow the stack), and everything downstream that
//!   walks the value recursively (schema validation, serde, dropping it) sees
//!   a bounded depth;
//! - the loaded value is at most [`MAX_LOADED_SIZE`] (an estimate in bytes:
//!   every node, string, key and span pointer, and every copy an alias
//!   makes, counted as it is built). An alias bomb ("billion laughs") stops at
//!   the alias that crosses it, with that alias's location, before the copy
//!   is made;
//! - at most [`MAX_ERRORS`] duplicate-key errors are kept per document;
//! - positions are found with a cursor that only moves forward along a line,
//!   so a document on one huge line is not quadratic.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::{Diagnostic, SourceFile, Span};

/// How a string scalar was written; needed to map a position inside the
/// string (a template error) back to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

/// Where a node is in the file.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpan {
    pub start: usize,
    pub len: usize,
    /// The span of the mapping key that holds this node, if any.
    pub key: Option<(usize, usize)>,
    pub style: Option<ScalarStyle>,
}

/// The largest YAML document loaded: 8 MiB. Hand-written workflows,
/// policies and suites are kilobytes; large text belongs in `prompt_file`s,
/// `@file` inputs and `cases_from` files, which have their own bound
/// ([`crate::files::MAX_TEXT_BYTES`]).
pub const MAX_YAML_BYTES: usize = 8 * 1024 * 1024;

/// The deepest nesting of mappings and sequences: 128 levels (serde_json's
/// own recursion limit). Real files nest a dozen levels; an output schema
/// a few dozen at most.
pub const MAX_DEPTH: usize = 128;

/// The most the loaded value may weigh, alias copies included: 64 MiB by the
/// estimate of [`weight`] (a node counts [`NODE_WEIGHT`] bytes plus its text).
pub const MAX_LOADED_SIZE: usize = 64 * 1024 * 1024;

/// The estimated cost of one node besides its text (the `Value`, its slot in
/// a map or list, its span).
const NODE_WEIGHT: usize = 32;

/// Duplicate-key errors kept per document; past this, the first ones are
/// enough to show what is wrong, and each one more costs rendering time.
pub const MAX_ERRORS: usize = 100;

/// A parsed YAML file: its value and the position of every node.
#[derive(Debug)]
pub struct Document {
    pub file: Arc<SourceFile>,
    pub root: Value,
    spans: HashMap<String, NodeSpan>,
}

/// Does a mapping key name a secret (`api_key`, `token`, …)? `*_env` keys
/// name environment variables and are not secrets.
pub fn looks_like_secret(key: &str) -> bool {
    let k = key.to_lowercase();
    if k.ends_with("_env") {
        return false;
    }
    k.split(['_', '-', '.']).any(|w| {
        matches!(
            w,
            "key" | "apikey" | "token" | "secret" | "password" | "passwd"
        )
    })
}

/// Builds a JSON pointer from path segments (escaping `~` and `/`).
pub fn pointer<I, S>(segments: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&s.as_ref().replace('~', "~0").replace('/', "~1"));
    }
    out
}

impl Document {
    /// Parses YAML text. A syntax error is one diagnostic (the parser cannot
    /// go on); duplicate keys are all reported.
    ///
    /// Bounded in time and memory by the text's size (see the module docs):
    /// an input past a bound is one located error, never a crash.
    pub fn parse(file: Arc<SourceFile>) -> Result<Document, Vec<Diagnostic>> {
        if file.text.len() > MAX_YAML_BYTES {
            return Err(vec![
                Diagnostic::error(
                    "yaml-too-large",
                    format!(
                        "the file is {} bytes, over the limit of {} MiB for a YAML file",
                        file.text.len(),
                        MAX_YAML_BYTES / (1024 * 1024)
                    ),
                )
                .in_file(&file.path)
                .with_help("keep long texts in prompt files (`prompt_file:`) or case files (`cases_from:`)"),
            ]);
        }
        let mut builder = Builder {
            file: Arc::clone(&file),
            stack: Vec::new(),
            root: None,
            spans: HashMap::new(),
            weights: Vec::new(),
            anchors: HashMap::new(),
            errors: Vec::new(),
            documents: 0,
            size: 0,
            fatal: None,
            cursor: (0, 0, 0),
        };
        let mut parser = Parser::new_from_str(&file.text);
        // Our own event loop instead of `Parser::load`, which recurses once
        // per nesting level: this one is iterative and stops at the first
        // bound crossed.
        loop {
            let (ev, mark) = match parser.next_token() {
                Ok(next) => next,
                Err(err) => {
                    let m = err.marker();
                    let start = file.offset_of(m.line(), m.col());
                    return Err(vec![
                        Diagnostic::error("yaml-syntax", format!("invalid YAML: {}", err.info()))
                            .at(Some(file.span(start, 1)))
                            .with_help("check indentation and quoting around this position"),
                    ]);
                }
            };
            if ev == Event::StreamEnd {
                break;
            }
            builder.on_event(ev, mark);
            if let Some(fatal) = builder.fatal.take() {
                return Err(vec![fatal]);
            }
            if builder.documents > 1 {
                // The rest is another document: no need to build it.
                break;
            }
        }
        if builder.documents > 1 {
            builder.errors.push(
                Diagnostic::error(
                    "yaml-multiple-documents",
                    "the file holds several YAML documents",
                )
                .in_file(&file.path)
                .with_help("keep one workflow or policy per file"),
            );
        }
        if !builder.errors.is_empty() {
            return Err(builder.errors);
        }
        // A value under a key that looks like a secret is hidden from every
        // snippet a diagnostic may quote: keys never reach output, even from
        // a file where someone pasted one by mistake.
        // One copy of the text for all of them (not one per secret).
        let secrets: Vec<(usize, usize)> = builder
            .spans
            .iter()
            .filter(|(ptr, node)| {
                node.style.is_some() && looks_like_secret(ptr.rsplit('/').next().unwrap_or(""))
            })
            .map(|(_, node)| (node.start, node.len))
            .collect();
        let file = if secrets.is_empty() {
            file
        } else {
            file.masked_ranges(&secrets)
        };
        Ok(Document {
            root: builder.root.unwrap_or(Value::Null),
            spans: builder.spans,
            file,
        })
    }

    /// The span of the node at `ptr`, or of its nearest ancestor that has one.
    pub fn span(&self, ptr: &str) -> Option<Span> {
        let mut p = ptr;
        loop {
            if let Some(n) = self.spans.get(p) {
                return Some(self.file.span(n.start, n.len));
            }
            if p.is_empty() {
                return None;
            }
            p = &p[..p.rfind('/').unwrap_or(0)];
        }
    }

    /// The span of the key that holds the node at `ptr` (for "unknown key"
    /// errors), falling back to the node itself.
    pub fn key_span(&self, ptr: &str) -> Option<Span> {
        match self.spans.get(ptr).and_then(|n| n.key) {
            Some((start, len)) => Some(self.file.span(start, len)),
            None => self.span(ptr),
        }
    }

    pub fn node(&self, ptr: &str) -> Option<&NodeSpan> {
        self.spans.get(ptr)
    }

    /// Maps a position inside a string scalar (0-based line and character
    /// column of the *decoded* string) to a span in the file.
    ///
    /// Exact for literal blocks (`|`), single-line quoted and plain scalars;
    /// for folded blocks and multi-line flow scalars lines are joined by the
    /// YAML rules, so the position falls back to the line of the scalar start.
    pub fn span_in_string(&self, ptr: &str, line: usize, col: usize, len: usize) -> Option<Span> {
        // A node an alias copied has no span of its own: point at the alias.
        let Some(node) = self.spans.get(ptr) else {
            return self.span(ptr);
        };
        let (start_line, start_col) = self.file.line_col(node.start);
        match node.style {
            Some(ScalarStyle::Literal) => {
                // The parser marks a block scalar at its first content
                // character, so lines map one to one at the same indentation.
                // Leading empty lines are part of the string but come before
                // the marked first content line.
                let leading = self
                    .root
                    .pointer(ptr)
                    .and_then(Value::as_str)
                    .map_or(0, |t| t.chars().take_while(|c| *c == '\n').count());
                let offset = self.file.offset_of(
                    (start_line + line).saturating_sub(leading),
                    start_col - 1 + col,
                );
                Some(self.file.span(offset, len.max(1)))
            }
            Some(ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted)
                if line == 0 =>
            {
                let quote = usize::from(node.style != Some(ScalarStyle::Plain));
                let offset = self.file.offset_of(start_line, start_col - 1 + quote + col);
                Some(self.file.span(offset, len.max(1)))
            }
            _ => Some(self.file.span(node.start, node.len)),
        }
    }
}

enum Frame {
    Map {
        map: Map<String, Value>,
        ptr: String,
        start: usize,
        anchor: usize,
        /// The key read but whose value has not come yet.
        key: Option<(String, usize, usize)>,
    },
    Seq {
        items: Vec<Value>,
        ptr: String,
        start: usize,
        anchor: usize,
    },
}

struct Builder {
    file: Arc<SourceFile>,
    stack: Vec<Frame>,
    /// The weight (see [`MAX_LOADED_SIZE`]) of each open frame's subtree so
    /// far and the greatest height of its children, parallel to `stack`: an
    /// anchor on the frame records them, and an alias to the anchor charges
    /// the weight again and must fit the height under [`MAX_DEPTH`].
    weights: Vec<(usize, usize)>,
    root: Option<Value>,
    spans: HashMap<String, NodeSpan>,
    /// Anchor id → the anchored value, its weight and its height.
    anchors: HashMap<usize, (Value, usize, usize)>,
    errors: Vec<Diagnostic>,
    documents: usize,
    /// The estimated size of everything built so far, alias copies included.
    size: usize,
    /// A bound was crossed: building stops with this error.
    fatal: Option<Diagnostic>,
    /// The last position looked up: (line, column, byte offset).
    cursor: (usize, usize, usize),
}

impl Builder {
    /// The byte offset of a marker. Markers come in file order, so within a
    /// line the search goes on from the previous one: linear in the line's
    /// length overall, where a search from the line start for each node would
    /// be quadratic on a document written on one line.
    fn offset(&mut self, mark: Marker) -> usize {
        let (line, col, byte) = self.cursor;
        let offset = if line == mark.line() && col <= mark.col() && line != 0 {
            self.file.advance_chars(byte, mark.col() - col)
        } else {
            self.file.offset_of(mark.line(), mark.col())
        };
        self.cursor = (mark.line(), mark.col(), offset);
        offset
    }

    /// Adds a child of `weight` and `height` to the open frame's subtree.
    fn add_weight(&mut self, weight: usize, height: usize) {
        if let Some((w, h)) = self.weights.last_mut() {
            *w = w.saturating_add(weight);
            *h = (*h).max(height);
        }
    }

    fn too_deep(&mut self, start: usize, label: &str) {
        self.fatal = Some(
            Diagnostic::error(
                "yaml-too-deep",
                format!("mappings and sequences nest more than {MAX_DEPTH} levels deep"),
            )
            .at(Some(self.file.span(start, 1)))
            .with_label(label.to_owned())
            .with_help("flatten the structure; no tollgate file needs this depth"),
        );
    }

    /// Adds `weight` to the size of what is built. Past [`MAX_LOADED_SIZE`]
    /// building stops with an error at `start` (the alias, if one made the
    /// copy); returns whether the bound still holds.
    fn charge(&mut self, weight: usize, start: usize, alias: bool) -> bool {
        self.size = self.size.saturating_add(weight);
        if self.size <= MAX_LOADED_SIZE || self.fatal.is_some() {
            return self.fatal.is_none();
        }
        let limit = MAX_LOADED_SIZE / (1024 * 1024);
        self.fatal = Some(if alias {
            Diagnostic::error(
                "yaml-alias-limit",
                format!("this alias expands the document past the limit of {limit} MiB"),
            )
            .at(Some(self.file.span(start, 1)))
            .with_label("each use of an alias is a full copy of what its anchor names")
            .with_help("use fewer aliases, or aliases of smaller values; a document whose aliases nest copies of copies grows exponentially")
        } else {
            Diagnostic::error(
                "yaml-too-large",
                format!("the document holds more than the limit of {limit} MiB once loaded"),
            )
            .at(Some(self.file.span(start, 1)))
            .with_help("split the file, or keep long texts in prompt files and case files")
        });
        false
    }

    /// The pointer of the node that comes next, given the current frame.
    fn child_ptr(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { ptr, key, .. }) => key
                .as_ref()
                .map(|(k, _, _)| format!("{ptr}{}", pointer([k]))),
            Some(Frame::Seq { ptr, items, .. }) => Some(format!("{ptr}/{}", items.len())),
        }
    }

    /// Is the next scalar a mapping key?
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    /// Adds a finished node to its parent. `weight` is the node's own (a
    /// frame's whole subtree): the anchor's copy is charged for it too.
    fn push_value(
        &mut self,
        value: Value,
        span: NodeSpan,
        anchor: usize,
        weight: usize,
        height: usize,
    ) {
        if anchor != 0 && self.charge(weight, span.start, false) {
            self.anchors.insert(anchor, (value.clone(), weight, height));
        }
        let ptr = self.child_ptr();
        match self.stack.last_mut() {
            None => {
                self.spans.insert(String::new(), span);
                self.root = Some(value);
            }
            Some(Frame::Map { map, key, .. }) => {
                if let Some((k, ks, kl)) = key.take() {
                    let mut span = span;
                    span.key = Some((ks, kl));
                    if let Some(ptr) = ptr {
                        self.spans.insert(ptr, span);
                    }
                    map.insert(k, value);
                }
            }
            Some(Frame::Seq { items, .. }) => {
                if let Some(ptr) = ptr {
                    self.spans.insert(ptr, span);
                }
                items.push(value);
            }
        }
    }

    fn push_key(&mut self, text: String, start: usize, len: usize) {
        if let Some(Frame::Map {
            map,
            key,
            start: map_start,
            ..
        }) = self.stack.last_mut()
        {
            // The parser marks a block mapping oddly; its first key is where
            // a reader's eye goes.
            if map.is_empty() {
                *map_start = start;
            }
            if map.contains_key(&text) && self.errors.len() < MAX_ERRORS {
                self.errors.push(
                    Diagnostic::error("yaml-duplicate-key", format!("duplicate key `{text}`"))
                        .at(Some(self.file.span(start, len)))
                        .with_label("this key was already set above in the same mapping")
                        .with_help("remove one of the two entries; YAML keeps only one"),
                );
            }
            *key = Some((text, start, len));
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let start = self.offset(mark);
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(text, style, anchor, tag) => {
                let len = scalar_len(&self.file, start, &text, style);
                // The text, the node and the pointer of its span.
                let ptr_len = self.stack.last().map_or(0, |f| match f {
                    Frame::Map { ptr, .. } | Frame::Seq { ptr, .. } => ptr.len(),
                });
                let weight = NODE_WEIGHT + text.len() + ptr_len;
                if !self.charge(weight, start, false) {
                    return;
                }
                self.add_weight(weight, 0);
                if self.expecting_key() {
                    self.push_key(text, start, len);
                    return;
                }
                let forced_string = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style == TScalarStyle::Plain && !forced_string {
                    resolve_plain(&text)
                } else {
                    Value::String(text)
                };
                let style = match style {
                    TScalarStyle::Plain => ScalarStyle::Plain,
                    TScalarStyle::SingleQuoted => ScalarStyle::SingleQuoted,
                    TScalarStyle::DoubleQuoted => ScalarStyle::DoubleQuoted,
                    TScalarStyle::Literal => ScalarStyle::Literal,
                    TScalarStyle::Folded => ScalarStyle::Folded,
                };
                let span = NodeSpan {
                    start,
                    len,
                    key: None,
                    style: Some(style),
                };
                self.push_value(value, span, anchor, weight, 0);
            }
            Event::Alias(id) => {
                // Charged before the copy is made: an alias bomb stops here.
                let (weight, height) = self
                    .anchors
                    .get(&id)
                    .map_or((NODE_WEIGHT, 0), |(_, w, h)| (*w, *h));
                if !self.charge(weight, start, true) {
                    return;
                }
                // Aliases inside anchored values nest copies: the depth of
                // the result is checked here too, not only while parsing.
                if self.stack.len() + height > MAX_DEPTH {
                    self.too_deep(
                        start,
                        "this alias copies a value nested too deep to fit here",
                    );
                    return;
                }
                self.add_weight(weight, height);
                let value = self
                    .anchors
                    .get(&id)
                    .map_or(Value::Null, |(v, _, _)| v.clone());
                let span = NodeSpan {
                    start,
                    len: 1,
                    key: None,
                    style: None,
                };
                if self.expecting_key() {
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    self.push_key(text, start, 1);
                } else {
                    self.push_value(value, span, 0, weight, height);
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    self.too_deep(start, "this level is one too many");
                    return;
                }
                if self.expecting_key() {
                    self.errors.push(
                        Diagnostic::error(
                            "yaml-complex-key",
                            "a mapping key must be a plain value",
                        )
                        .at(Some(self.file.span(start, 1))),
                    );
                    // Keep the structure balanced: treat it as a value of a dummy key.
                    self.push_key(String::from("?"), start, 1);
                }
                let ptr = self.child_ptr().unwrap_or_default();
                if !self.charge(NODE_WEIGHT + ptr.len(), start, false) {
                    return;
                }
                // The frame's subtree weight, added to its parent's when it
                // closes.
                self.weights.push((NODE_WEIGHT + ptr.len(), 0));
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        map: Map::new(),
                        ptr,
                        start,
                        anchor,
                        key: None,
                    }
                } else {
                    Frame::Seq {
                        items: Vec::new(),
                        ptr,
                        start,
                        anchor,
                    }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, start, anchor) = match self.stack.pop() {
                    Some(Frame::Map {
                        map, start, anchor, ..
                    }) => (Value::Object(map), start, anchor),
                    Some(Frame::Seq {
                        items,
                        start,
                        anchor,
                        ..
                    }) => (Value::Array(items), start, anchor),
                    None => return,
                };
                let (weight, children) = self.weights.pop().unwrap_or((0, 0));
                let height = children + 1;
                self.add_weight(weight, height);
                let span = NodeSpan {
                    start,
                    len: 1,
                    key: None,
                    style: None,
                };
                self.push_value(value, span, anchor, weight, height);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Length of a scalar in the file, for the caret: the rest of its first line
/// for block scalars (the indicator), the quoted text for quoted ones.
fn scalar_len(file: &SourceFile, start: usize, text: &str, style: TScalarStyle) -> usize {
    // The line end from the line table: searching for it would make a
    // document on one long line quadratic.
    let first_line = &file.text[start..file.line_end(start)];
    let len = match style {
        TScalarStyle::Plain => text.lines().next().unwrap_or("").len(),
        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
            let quote = if style == TScalarStyle::SingleQuoted {
                '\''
            } else {
                '"'
            };
            first_line
                .get(1..)
                .and_then(|rest| rest.find(quote))
                .map_or(first_line.len(), |i| i + 2)
        }
        TScalarStyle::Literal | TScalarStyle::Folded => first_line.trim_end().len(),
    };
    len.clamp(1, first_line.len().max(1))
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    let negative = text.starts_with('-');
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(n) = i64::from_str_radix(hex, 16) {
            return Value::Number(n.into());
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(n) = i64::from_str_radix(oct, 8) {
            return Value::Number(n.into());
        }
    }
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::Number(n.into());
        }
        if !negative {
            if let Ok(n) = digits.parse::<u64>() {
                return Value::Number(n.into());
            }
        }
    }
    let looks_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && (digits.starts_with(|c: char| c.is_ascii_digit()) || digits.starts_with('.'));
    if looks_float {
        if let Ok(f) = text.parse::<f64>() {
            if let Some(n) = Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Document {
        Document::parse(SourceFile::new("t.yaml", text)).expect("valid yaml")
    }

    #[test]
    fn builds_values_with_core_schema() {
        let d = parse("a: 1\nb: yes\nc: ~\nd: 2.5\ne: '3'\nf: [true, null]\ng: 0x1f\n");
        assert_eq!(
            d.root,
            json!({"a": 1, "b": "yes", "c": null, "d": 2.5, "e": "3", "f": [true, null], "g": 31})
        );
    }

    #[test]
    fn spans_point_at_values_and_keys() {
        let d = parse("steps:\n  one:\n    needs: [two, three]\n");
        let s = d.span("/steps/one/needs/1").unwrap();
        assert_eq!(s.location(), "t.yaml:3:18");
        let k = d.key_span("/steps/one").unwrap();
        assert_eq!(k.location(), "t.yaml:2:3");
        // Unknown pointers fall back to the nearest ancestor.
        assert_eq!(d.span("/steps/one/nope").unwrap().location(), "t.yaml:3:5");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let errs = Document::parse(SourceFile::new("t.yaml", "a: 1\nb: 2\na: 3\n")).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].span.as_ref().unwrap().location(), "t.yaml:3:1");
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let errs = Document::parse(SourceFile::new("t.yaml", "a: [1, 2\nb: 3\n")).unwrap_err();
        assert!(errs[0].message.starts_with("invalid YAML"));
        assert!(errs[0].span.is_some());
    }

    #[test]
    fn literal_block_positions_map_into_the_file() {
        let d = parse("p: |\n  line one\n  x {{ y }}\n");
        let s = d.span_in_string("/p", 1, 2, 5).unwrap();
        assert_eq!(s.location(), "t.yaml:3:5");
        let d = parse("p: \"ab {{ c }}\"\n");
        assert_eq!(
            d.span_in_string("/p", 0, 3, 2).unwrap().location(),
            "t.yaml:1:8"
        );
    }

    #[test]
    fn aliases_copy_the_anchored_value() {
        let d = parse("a: &x {k: 1}\nb: *x\n");
        assert_eq!(d.root, json!({"a": {"k": 1}, "b": {"k": 1}}));
    }

    /// A "billion laughs" document: nine levels of nine aliases each, 9^9
    /// copies of a string once expanded, from a few hundred bytes.
    pub(crate) fn alias_bomb() -> String {
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")));
        }
        text
    }

    #[test]
    fn an_alias_bomb_is_one_located_error() {
        let errs = Document::parse(SourceFile::new("t.yaml", alias_bomb())).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].code, "yaml-alias-limit");
        // At an alias, on the line where the copies cross the bound.
        let span = errs[0].span.as_ref().unwrap();
        assert_eq!(&span.file.text[span.start..span.start + 2], "*a");
        assert!(errs[0].help.is_some());
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        for text in [
            "- ".repeat(100_000) + "x",
            "[".repeat(100_000),
            "a: ".to_owned() + &"{b: ".repeat(200) + "1" + &"}".repeat(200),
        ] {
            let errs = Document::parse(SourceFile::new("t.yaml", text)).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                matches!(errs[0].code, "yaml-too-deep" | "yaml-syntax"),
                "{errs:?}"
            );
        }
        // Exactly at the bound is fine.
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(Document::parse(SourceFile::new("t.yaml", ok)).is_ok());
    }

    #[test]
    fn aliases_cannot_nest_copies_past_the_depth_bound() {
        // Each anchor is a value 100 deep holding the previous one: the
        // text nests 100 levels, the value far more.
        let mut text = String::new();
        for i in 0..5 {
            let inner = if i == 0 {
                "x".to_owned()
            } else {
                format!("*a{}", i - 1)
            };
            text.push_str(&format!(
                "a{i}: &a{i} {}{inner}{}\n",
                "[".repeat(100),
                "]".repeat(100)
            ));
        }
        let errs = Document::parse(SourceFile::new("t.yaml", text)).unwrap_err();
        assert_eq!(errs[0].code, "yaml-too-deep", "{errs:?}");
        let span = errs[0].span.as_ref().unwrap();
        assert_eq!(&span.file.text[span.start..span.start + 3], "*a0");
    }

    #[test]
    fn documents_are_bounded_in_size() {
        let big = "x".repeat(MAX_YAML_BYTES + 1);
        let errs = Document::parse(SourceFile::new("t.yaml", big)).unwrap_err();
        assert_eq!(errs[0].code, "yaml-too-large");
        // Many small anchors used many times: linear growth, still bounded.
        let mut text = format!(
            "a: &a [{}]\nb: [",
            vec!["0123456789abcdef"; 1000].join(", ")
        );
        text.push_str(&vec!["*a"; 4000].join(","));
        text.push_str("]\n");
        let errs = Document::parse(SourceFile::new("t.yaml", text)).unwrap_err();
        assert_eq!(errs[0].code, "yaml-alias-limit");
    }

    #[test]
    fn positions_on_one_long_line_are_exact() {
        let text = format!("[{}, \"é\", last]", vec!["ab"; 1000].join(", "));
        let d = parse(&text);
        let s = d.span("/1001").unwrap();
        assert_eq!(&s.file.text[s.start..s.start + 4], "last");
        let s = d.span("/1000").unwrap();
        assert_eq!(&s.file.text[s.start..s.start + 4], "\"é\"");
    }

    #[test]
    fn every_secret_is_masked_in_one_pass() {
        let text = "a: {api_key: sk-one}\nb: {token: sk-two}\nc: plain\n";
        let d = parse(text);
        assert!(!d.file.text.contains("sk-one"));
        assert!(!d.file.text.contains("sk-two"));
        assert!(d.file.text.contains("plain"));
        // Offsets unchanged.
        assert_eq!(d.file.text.len(), text.len());
    }
}
