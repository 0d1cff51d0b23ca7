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
    pub fn parse(file: Arc<SourceFile>) -> Result<Document, Vec<Diagnostic>> {
        let mut builder = Builder {
            file: Arc::clone(&file),
            stack: Vec::new(),
            root: None,
            spans: HashMap::new(),
            anchors: HashMap::new(),
            errors: Vec::new(),
            documents: 0,
        };
        let mut parser = Parser::new_from_str(&file.text);
        if let Err(err) = parser.load(&mut builder, true) {
            let m = err.marker();
            let start = file.offset_of(m.line(), m.col());
            return Err(vec![
                Diagnostic::error("yaml-syntax", format!("invalid YAML: {}", err.info()))
                    .at(Some(file.span(start, 1)))
                    .with_help("check indentation and quoting around this position"),
            ]);
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
        let mut file = file;
        for (ptr, node) in &builder.spans {
            let key = ptr.rsplit('/').next().unwrap_or("");
            if looks_like_secret(key) && node.style.is_some() {
                file = file.masked(node.start, node.len);
            }
        }
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
    root: Option<Value>,
    spans: HashMap<String, NodeSpan>,
    anchors: HashMap<usize, Value>,
    errors: Vec<Diagnostic>,
    documents: usize,
}

impl Builder {
    fn offset(&self, mark: Marker) -> usize {
        self.file.offset_of(mark.line(), mark.col())
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

    fn push_value(&mut self, value: Value, span: NodeSpan, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
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
            if map.contains_key(&text) {
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
                self.push_value(value, span, anchor);
            }
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
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
                    self.push_value(value, span, 0);
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
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
                let span = NodeSpan {
                    start,
                    len: 1,
                    key: None,
                    style: None,
                };
                self.push_value(value, span, anchor);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Length of a scalar in the file, for the caret: the rest of its first line
/// for block scalars (the indicator), the quoted text for quoted ones.
fn scalar_len(file: &SourceFile, start: usize, text: &str, style: TScalarStyle) -> usize {
    let rest = &file.text[start..];
    let line_end = rest.find('\n').unwrap_or(rest.len());
    let first_line = &rest[..line_end];
    let len = match style {
        TScalarStyle::Plain => text.lines().next().unwrap_or("").len(),
        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
            let quote = if style == TScalarStyle::SingleQuoted {
                '\''
            } else {
                '"'
            };
            first_line[1..]
                .find(quote)
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
}
