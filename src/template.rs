//! Prompt templates: one minijinja environment, strict about undefined names,
//! and the mapping of template errors back into the YAML or prompt file.
//!
//! Invariant: a model's output is *data*. It only ever reaches a template as a
//! value in the render context, never as template source, so `{{ … }}` inside
//! an answer is passed through literally.

use std::collections::BTreeSet;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::diagnostic::{Diagnostic, SourceFile, Span, did_you_mean};
use crate::yaml::Document;

/// The names a template may read at the top level.
pub const ROOTS: [&str; 3] = ["inputs", "steps", "item"];

/// Compiles a `when` / `for_each` expression: minijinja's
/// `compile_expression`, guarded.
///
/// minijinja 2.24's lexer panics ("empty lexer stack") on an expression with
/// a `}}` outside brackets and strings followed by more text (`}} x`): in
/// expression mode that `}}` ends the only lexer state. Such an expression is
/// a syntax error anyway, so it is refused here as one, before the lexer sees
/// it. Every expression is compiled through this function (found by
/// `tests/integration/fuzz.rs`).
pub fn compile_expression<'env, 'source>(
    env: &'env Environment<'source>,
    text: &'source str,
) -> Result<minijinja::Expression<'env, 'source>, minijinja::Error> {
    if let Some(at) = stray_variable_end(text) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::SyntaxError,
            format!("unexpected `}}}}` at character {} of an expression", at + 1),
        ));
    }
    env.compile_expression(text)
}

/// The byte offset of a `}}` outside strings and brackets, where minijinja's
/// expression lexer would end its only state.
fn stray_variable_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth: isize = 0;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'}' if depth == 0 && bytes.get(i + 1) == Some(&b'}') => return Some(i),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// A template environment with tollgate's settings.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are plain text: HTML escaping would corrupt them.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Keep the text as written; a trailing newline is part of a prompt's shape.
    env.set_keep_trailing_newline(true);
    env
}

/// Where a template's text came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A string in the workflow document, by JSON pointer. `offset` is the
    /// number of characters stripped from the start of the string (for
    /// `for_each: "{{ expr }}"`).
    Yaml { ptr: String, offset: usize },
    /// A prompt file.
    File(Arc<SourceFile>),
}

/// A template (or expression) together with its origin.
#[derive(Debug, Clone)]
pub struct Source {
    pub text: String,
    pub origin: Origin,
    pub is_expression: bool,
}

impl Source {
    pub fn inline(text: &str, ptr: String) -> Source {
        Source {
            text: text.to_owned(),
            origin: Origin::Yaml { ptr, offset: 0 },
            is_expression: false,
        }
    }

    /// An expression such as `when`. `{{ … }}` around it is accepted and
    /// stripped, since people write `for_each: "{{ inputs.items }}"`.
    pub fn expression(text: &str, ptr: String) -> Source {
        let trimmed = text.trim();
        let (inner, offset) = match trimmed
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
        {
            Some(inner) => {
                let lead = text.len() - text.trim_start().len() + 2;
                (inner.to_owned(), text[..lead].chars().count())
            }
            None => (text.to_owned(), 0),
        };
        Source {
            text: inner,
            origin: Origin::Yaml { ptr, offset },
            is_expression: true,
        }
    }

    /// The span of a byte range of the template text.
    pub fn span(&self, doc: &Document, start: usize, len: usize) -> Option<Span> {
        let start = start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count();
        let col = before.rsplit('\n').next().unwrap_or("").chars().count();
        match &self.origin {
            Origin::File(file) => {
                let off = file.offset_of(line + 1, col);
                Some(file.span(off, len))
            }
            Origin::Yaml { ptr, offset } => {
                let col = if line == 0 { col + offset } else { col };
                doc.span_in_string(ptr, line, col, len)
            }
        }
    }

    /// The span of the first mention of a name, for "undefined" errors.
    pub fn span_of_name(&self, doc: &Document, name: &str) -> Option<Span> {
        let last = name.rsplit('.').next().unwrap_or(name);
        let found = find_word(&self.text, name)
            .map(|i| (i, name.len()))
            .or_else(|| find_word(&self.text, last).map(|i| (i, last.len())));
        match found {
            Some((i, len)) => self.span(doc, i, len),
            None => self.span(doc, 0, 1),
        }
    }

    /// Names the template reads: dotted paths such as `inputs.ticket`,
    /// `steps.summarize.output`, `item`.
    pub fn references(&self, env: &Environment<'_>) -> Result<BTreeSet<String>, minijinja::Error> {
        let vars = if self.is_expression {
            compile_expression(env, &self.text)?.undeclared_variables(true)
        } else {
            env.template_from_str(&self.text)?
                .undeclared_variables(true)
        };
        Ok(vars.into_iter().collect())
    }

    /// Turns a minijinja error into a diagnostic pointing into the file.
    pub fn error(&self, doc: &Document, err: &minijinja::Error, what: &str) -> Diagnostic {
        let span = match err.range() {
            Some(r) => self.span(doc, r.start, r.end.saturating_sub(r.start)),
            None => match err.line() {
                Some(line) => {
                    let start = self
                        .text
                        .split_inclusive('\n')
                        .take(line.saturating_sub(1))
                        .map(str::len)
                        .sum();
                    self.span(doc, start, 1)
                }
                None => self.span(doc, 0, 1),
            },
        };
        let detail = err
            .detail()
            .map(str::to_owned)
            .unwrap_or_else(|| err.kind().to_string());
        let (code, message, help) = match err.kind() {
            minijinja::ErrorKind::SyntaxError => (
                "template-syntax",
                format!("template syntax error in {what}: {detail}"),
                "check the `{{ }}` and `{% %}` pairs around this position",
            ),
            minijinja::ErrorKind::UndefinedError => (
                "undefined-variable",
                format!("undefined value in {what}: {detail}"),
                "templates read `inputs.<name>`, `steps.<id>.output` and, inside `for_each`, `item`",
            ),
            _ => (
                "template-error",
                format!("template error in {what}: {detail}"),
                "see the template's expression at this position",
            ),
        };
        Diagnostic::error(code, message).at(span).with_help(help)
    }
}

/// A reference split into its parts: `steps.summarize.output` →
/// `["steps", "summarize", "output"]`.
pub fn split(reference: &str) -> Vec<&str> {
    reference.split('.').collect()
}

/// A hint for a top-level name that is not one of [`ROOTS`]: the workflow's
/// inputs are the usual intent (`{{ ticket }}` for `{{ inputs.ticket }}`).
pub fn hint_for_unknown_root<'a>(
    name: &str,
    inputs: impl IntoIterator<Item = &'a str>,
    steps: impl IntoIterator<Item = &'a str>,
) -> String {
    let root = name.split('.').next().unwrap_or(name);
    let inputs: Vec<&str> = inputs.into_iter().collect();
    let steps: Vec<&str> = steps.into_iter().collect();
    if inputs.contains(&root) {
        return format!("inputs are read as `inputs.{root}`");
    }
    if steps.contains(&root) {
        return format!("step outputs are read as `steps.{root}.output`");
    }
    did_you_mean(root, ROOTS)
        .or_else(|| {
            did_you_mean(root, inputs.iter().copied()).map(|_| {
                let c = crate::diagnostic::closest(root, inputs.iter().copied()).unwrap_or(root);
                format!("did you mean `inputs.{c}`?")
            })
        })
        .unwrap_or_else(|| {
            "templates read `inputs.<name>`, `steps.<id>.output` and, inside `for_each`, `item`"
                .to_owned()
        })
}

/// Finds `word` in `text` where it is not part of a longer identifier.
fn find_word(text: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let start = from + i;
        let end = start + word.len();
        let before_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_ident(c) && c != '.');
        let after_ok = text[end..].chars().next().is_none_or(|c| !is_ident(c));
        if before_ok && after_ok {
            return Some(start);
        }
        from = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_dotted_paths() {
        let env = environment();
        let s = Source::inline(
            "{{ inputs.ticket }} {% for x in inputs.items %}{{ x }}{% endfor %} {{ steps.a.output | upper }}",
            "/p".into(),
        );
        let refs = s.references(&env).unwrap();
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            vec!["inputs.items", "inputs.ticket", "steps.a.output"]
        );
    }

    #[test]
    fn expressions_may_be_wrapped_in_braces() {
        let env = environment();
        let s = Source::expression("{{ inputs.channels }}", "/f".into());
        assert_eq!(s.text.trim(), "inputs.channels");
        let refs = s.references(&env).unwrap();
        assert!(refs.contains("inputs.channels"));
    }

    #[test]
    fn outputs_are_data_not_templates() {
        let env = environment();
        let t = env.template_from_str("Got: {{ steps.a.output }}").unwrap();
        let out = t
            .render(json!({"steps": {"a": {"output": "{{ secrets }}"}}}))
            .unwrap();
        assert_eq!(out, "Got: {{ secrets }}");
    }

    #[test]
    fn strict_undefined_fails() {
        let env = environment();
        let t = env.template_from_str("{{ inputs.nope }}").unwrap();
        assert!(t.render(json!({"inputs": {}})).is_err());
    }

    #[test]
    fn find_word_respects_boundaries() {
        assert_eq!(find_word("xinputs.a inputs.a", "inputs.a"), Some(10));
        assert_eq!(find_word("inputs.ab", "inputs.a"), None);
    }

    #[test]
    fn a_stray_variable_end_in_an_expression_is_an_error_not_a_panic() {
        let env = environment();
        // minijinja's lexer panics ("empty lexer stack") on these.
        for text in [
            "}} x",
            "}}{{ dict(a=1) | items | list }}",
            "a }} b",
            "-}} x",
        ] {
            match compile_expression(&env, text) {
                Err(err) => assert_eq!(err.kind(), minijinja::ErrorKind::SyntaxError, "{text}"),
                Ok(_) => panic!("{text} compiled"),
            }
        }
        // Braces that close a literal, and `}}` inside strings, are fine.
        for text in [
            "{'a': {'b': 1}}",
            "x == '}}'",
            "[{'a': 1}] | length",
            "\"\\\"}}\" ~ x",
        ] {
            assert!(compile_expression(&env, text).is_ok(), "{text}");
        }
    }
}
