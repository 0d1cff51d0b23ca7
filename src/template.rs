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

/// Instructions one render (or one expression) may execute: generous for a
/// prompt that loops over a long list, small enough that a hostile template
/// (`range(100000)` nested) stops within a fraction of a second with a
/// located error instead of spinning for ever.
pub const FUEL: u64 = 5_000_000;

/// The longest text one render may produce (bytes). The writer refuses more,
/// so an endless loop of output cannot grow memory past this.
pub const MAX_RENDERED_BYTES: usize = 8 << 20;

/// The most items a `for_each` list may have: minijinja's own bound on
/// `range`. A list built another way (`[1] * 10000000`) is refused at this
/// size rather than planned call by call.
pub const MAX_FOR_EACH_ITEMS: usize = 100_000;

/// The most text all the calls of one step may render together (bytes):
/// each prompt is bounded by [`MAX_RENDERED_BYTES`], but a fan-out renders
/// one per item, so the step as a whole needs its own bound (2,000 items of
/// an 8 MB prompt were 16 GB and an abort when every call was kept; a
/// fan-out's calls are now rendered again on demand rather than kept, and
/// the bound keeps the work of rendering and counting them in reach).
pub const MAX_STEP_RENDERED_BYTES: usize = 32 << 20;

/// The same bound for a `for_each` over a streamed input
/// ([`crate::streamed`]): its calls are never held, so this bounds only
/// the work of rendering them (64 GiB, four times the largest file's bytes).
pub const MAX_STREAMED_STEP_RENDERED_BYTES: usize = 64 << 30;

/// The most text a whole plan may render (bytes): `plan` (and `run`, which
/// plans first) renders every step before it routes them, so a workflow of
/// many steps at the step bound needs this one too.
pub const MAX_PLAN_RENDERED_BYTES: usize = 128 << 20;

/// Built-in functions removed from templates: `debug()` prints the whole
/// render context. (The context only holds what the analysis saw a step read
/// — see [`crate::analyze::StepInfo::context`] — so this is defence in depth,
/// and keeps templates from depending on the context's layout.)
pub const REMOVED_FUNCTIONS: [&str; 1] = ["debug"];

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
    refuse_stray_variable_end(text)?;
    env.compile_expression(text)
}

/// The syntax error for a stray `}}` (see [`compile_expression`]).
fn refuse_stray_variable_end(text: &str) -> Result<(), minijinja::Error> {
    match stray_variable_end(text) {
        Some(at) => Err(minijinja::Error::new(
            minijinja::ErrorKind::SyntaxError,
            format!("unexpected `}}}}` at character {} of an expression", at + 1),
        )),
        None => Ok(()),
    }
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
///
/// Invariants: no loader (a template can reach no other template or file),
/// no function that exposes the context or the process environment (the
/// remaining builtins — `range`, `dict`, `namespace` and the filters and
/// tests — only transform the values they are given), and every render and
/// expression runs on [`FUEL`].
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    for f in REMOVED_FUNCTIONS {
        env.remove_global(f);
    }
    env.set_fuel(Some(FUEL));
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are plain text: HTML escaping would corrupt them.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Keep the text as written; a trailing newline is part of a prompt's shape.
    env.set_keep_trailing_newline(true);
    // `inputs.doc | chunks(2000, 200)`: what `context.chunk` fans out over.
    env.add_filter("chunks", crate::context::chunk::filter);
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
    ///
    /// The reads of [`ROOTS`] come from this crate's own walk of the syntax
    /// tree ([`Source::scan`]): minijinja's `undeclared_variables` misses
    /// some (it does not look inside a slice's object, `inputs.x[:10]`, and
    /// counts `{% set inputs = inputs %}` as an assignment before the read),
    /// and what the analysis misses here the render context will not hold.
    /// Since no binding may shadow a root (a `check` error), every use of
    /// one of these names is a read of the step's data. minijinja's list adds
    /// the other names, for the "undefined variable" errors.
    pub fn references(&self, env: &Environment<'_>) -> Result<BTreeSet<String>, minijinja::Error> {
        let vars = if self.is_expression {
            compile_expression(env, &self.text)?.undeclared_variables(true)
        } else {
            env.template_from_str(&self.text)?
                .undeclared_variables(true)
        };
        let mut refs: BTreeSet<String> = vars.into_iter().collect();
        refs.extend(self.scan(env)?.roots);
        Ok(refs)
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
            minijinja::ErrorKind::OutOfFuel => (
                "template-too-long",
                format!("{what} runs too long: it used up its {FUEL} template steps"),
                "a template must finish quickly; loop over less data",
            ),
            _ if detail.contains("rendered text is longer than") => (
                "template-too-long",
                format!("{what}: {detail}"),
                "a prompt must stay within this size; render less text",
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

/// A template compiled once, rendered many times (once per `for_each`
/// item): compiling per item made a fan-out pay for the parse n times.
/// Every render of it runs on fresh [`FUEL`] and under
/// [`MAX_RENDERED_BYTES`], exactly as [`render`].
pub struct Compiled<'env, 'source> {
    template: minijinja::Template<'env, 'source>,
}

/// Compiles a template for [`Compiled::render`].
pub fn compile<'env, 'source>(
    env: &'env Environment<'source>,
    text: &'source str,
) -> Result<Compiled<'env, 'source>, minijinja::Error> {
    #[cfg(test)]
    COMPILED.with(|n| n.set(n.get() + 1));
    Ok(Compiled {
        template: env.template_from_str(text)?,
    })
}

#[cfg(test)]
thread_local! {
    /// How many templates [`compile`] compiled on this thread (`step`'s
    /// tests check a fan-out compiles once, not once per item).
    pub(crate) static COMPILED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Compiled<'_, '_> {
    /// Renders with the size limit: the one way tollgate renders a prompt.
    /// `ctx` must come from [`crate::analyze::StepInfo::context`]. Each
    /// render gets its own fuel (minijinja gives every render a fresh
    /// tracker from the environment's setting).
    pub fn render(&self, ctx: &minijinja::Value) -> Result<String, minijinja::Error> {
        let mut out = Capped::default();
        let result = self.template.render_captured_to(ctx, &mut out);
        if out.over {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("the rendered text is longer than {MAX_RENDERED_BYTES} bytes"),
            ));
        }
        result?;
        String::from_utf8(out.buf).map_err(|_| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                "the rendered text is not UTF-8",
            )
        })
    }
}

/// Compiles and renders a template once ([`Compiled::render`]).
pub fn render(
    env: &Environment<'_>,
    text: &str,
    ctx: &minijinja::Value,
) -> Result<String, minijinja::Error> {
    compile(env, text)?.render(ctx)
}

/// Evaluates an expression (`when`, `for_each`): the one way tollgate does.
pub fn eval(
    env: &Environment<'_>,
    text: &str,
    ctx: &minijinja::Value,
) -> Result<minijinja::Value, minijinja::Error> {
    compile_expression(env, text)?.eval(ctx)
}

/// What a `for_each` expression gave: its items, or what it gave instead.
pub enum ForEachList {
    List(Vec<minijinja::Value>),
    /// Not a list: "a string", "a mapping", … for the error.
    NotAList(&'static str),
}

/// Evaluates a `for_each` expression, within bounds: at most
/// [`MAX_FOR_EACH_ITEMS`] items and [`MAX_RENDERED_BYTES`] as JSON. A lazy
/// value (`["x" * 50000000] * 1000`) is small until it is copied out item
/// by item; it is measured by serialising it to a writer that counts and
/// stops at the bound, so measuring it cannot exhaust memory either, and a
/// value that is not data (a function, a macro) is refused.
///
/// The items are the evaluated values themselves, not a copy: an item of
/// `inputs.xs` shares its data with the step's context (a list of 100,000
/// items went to JSON text and back, one more copy of it, before).
pub fn eval_list(
    env: &Environment<'_>,
    text: &str,
    ctx: &minijinja::Value,
) -> Result<ForEachList, minijinja::Error> {
    let v = eval(env, text, ctx)?;
    let too_many = || {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("the list has more than {MAX_FOR_EACH_ITEMS} items"),
        )
    };
    if v.len().is_some_and(|n| n > MAX_FOR_EACH_ITEMS) {
        return Err(too_many());
    }
    let mut size = Capped::measuring();
    if serde_json::to_writer(&mut size, &v).is_err() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            if size.over {
                format!("the list is larger than {MAX_RENDERED_BYTES} bytes")
            } else {
                "the value cannot be read as data".to_owned()
            },
        ));
    }
    if !is_data(&v, 0) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "the value cannot be read as data",
        ));
    }
    use minijinja::value::ValueKind;
    let kind = match v.kind() {
        // An iterable (`range(3)`) serialises as a list, and was one.
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<minijinja::Value> = v.try_iter()?.take(MAX_FOR_EACH_ITEMS + 1).collect();
            if items.len() > MAX_FOR_EACH_ITEMS {
                return Err(too_many());
            }
            return Ok(ForEachList::List(items));
        }
        ValueKind::Undefined | ValueKind::None => "nothing",
        ValueKind::Bool => "a boolean",
        ValueKind::Number => "a number",
        ValueKind::String | ValueKind::Bytes => "a string",
        ValueKind::Map => "a mapping",
        _ => "a value that is not a list",
    };
    Ok(ForEachList::NotAList(kind))
}

/// Is `v` plain data (what JSON can say) all the way down? The items are
/// the evaluated values themselves, so a function or an object (`[range]`)
/// must be refused here: through JSON it became a string. Visits at most
/// what serialising it visited (bounded by [`MAX_RENDERED_BYTES`]), and no
/// deeper than serde_json reads.
fn is_data(v: &minijinja::Value, depth: usize) -> bool {
    use minijinja::value::ValueKind;
    if depth > 128 {
        return false;
    }
    match v.kind() {
        ValueKind::Undefined
        | ValueKind::None
        | ValueKind::Bool
        | ValueKind::Number
        | ValueKind::String
        | ValueKind::Bytes => true,
        ValueKind::Seq | ValueKind::Iterable => v
            .try_iter()
            .is_ok_and(|mut items| items.all(|x| is_data(&x, depth + 1))),
        ValueKind::Map => v.try_iter().is_ok_and(|mut keys| {
            keys.all(|k| {
                is_data(&k, depth + 1) && v.get_item(&k).is_ok_and(|x| is_data(&x, depth + 1))
            })
        }),
        _ => false,
    }
}

/// A writer that refuses to grow past [`MAX_RENDERED_BYTES`]; a measuring
/// one only counts.
#[derive(Default)]
struct Capped {
    buf: Vec<u8>,
    len: usize,
    measuring: bool,
    over: bool,
}

impl Capped {
    fn measuring() -> Capped {
        Capped {
            measuring: true,
            ..Capped::default()
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.len + b.len() > MAX_RENDERED_BYTES {
            self.over = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.len += b.len();
        if !self.measuring {
            self.buf.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the static scan of a template found that is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// `inputs`, `steps` or `item` bound by `set`, `with`, a `for` target, a
    /// macro or call-block parameter or an import.
    Shadows {
        root: &'static str,
        by: &'static str,
    },
    UnknownFilter(String),
    UnknownTest(String),
    /// A function this environment removed (`debug`).
    Removed(String),
    /// `include`, `import`, `extends`: templates cannot load templates.
    Loads(&'static str),
}

/// A finding and its byte range in the template text.
#[derive(Debug, Clone)]
pub struct Found {
    pub finding: Finding,
    pub start: usize,
    pub len: usize,
}

impl Source {
    /// Scans the template's syntax tree, without running it, for what must
    /// not be there: bindings that shadow [`ROOTS`], unknown filters and
    /// tests, removed functions, template loads.
    ///
    /// Why the syntax tree (minijinja's `unstable_machinery`): static checks
    /// must never execute a template (a nested `range(100000)` would spin
    /// for ever), and a token scan cannot tell `{% set inputs = … %}` from
    /// `{% set x = inputs %}` without re-implementing the parser. The tree is
    /// exactly what the engine compiles, so nothing it binds is missed; the
    /// feature's API is pinned by Cargo.lock and a change breaks the build,
    /// never the check. This scan is not what keeps data from leaking — the
    /// render context does ([`crate::analyze::StepInfo::context`]); it turns
    /// constructs that would confuse the reference analysis into located
    /// errors at `check`.
    pub fn lint(&self, env: &Environment<'_>) -> Result<Vec<Found>, minijinja::Error> {
        Ok(self.scan(env)?.found)
    }

    /// The syntax-tree walk behind [`Source::lint`] and [`Source::references`].
    fn scan(&self, env: &Environment<'_>) -> Result<Scan, minijinja::Error> {
        use minijinja::machinery::{self, WhitespaceConfig};
        let mut v = Lint {
            env,
            text: &self.text,
            found: Vec::new(),
            roots: BTreeSet::new(),
        };
        if self.is_expression {
            // The same guard as `compile_expression`: the parser shares the
            // lexer that panics on a stray `}}`.
            refuse_stray_variable_end(&self.text)?;
            let e = machinery::parse_expr(&self.text)?;
            v.expr(&e);
        } else {
            let t = machinery::parse(
                &self.text,
                "<template>",
                Default::default(),
                WhitespaceConfig::default(),
            )?;
            v.stmt(&t);
        }
        Ok(Scan {
            found: v.found,
            roots: v.roots,
        })
    }

    /// A diagnostic at a byte range of the template.
    pub fn error_at(&self, doc: &Document, f: &Found, what: &str) -> Diagnostic {
        let span = self.span(doc, f.start, f.len.max(1));
        match &f.finding {
            Finding::Shadows { root, by } => Diagnostic::error(
                "template-shadows-root",
                format!("{what} binds `{root}` ({by})"),
            )
            .at(span)
            .with_label(format!("hides `{root}`"))
            .with_help("`inputs`, `steps` and `item` name the step's data and cannot be assigned; choose another name"),
            Finding::UnknownFilter(name) => Diagnostic::error(
                "template-error",
                format!("template error in {what}: filter {name} is unknown"),
            )
            .at(span)
            .with_help("see the template's expression at this position"),
            Finding::UnknownTest(name) => Diagnostic::error(
                "template-error",
                format!("template error in {what}: test {name} is unknown"),
            )
            .at(span)
            .with_help("see the template's expression at this position"),
            Finding::Removed(name) => Diagnostic::error(
                "template-function-removed",
                format!("`{name}()` in {what} is not available in tollgate templates"),
            )
            .at(span)
            .with_help("it prints the whole render context; print the values you need instead"),
            Finding::Loads(kind) => Diagnostic::error(
                "template-load",
                format!("`{kind}` in {what}: templates cannot load other templates"),
            )
            .at(span)
            .with_help("put the text in the prompt, or use `prompt_file:`"),
        }
    }
}

/// Whether a filter or test exists: minijinja looks them up only when the
/// template runs and has no public listing, so evaluate the name alone on
/// `none` (a parsed identifier, a constant-time expression on fuel).
fn known(env: &Environment<'_>, probe: &str) -> bool {
    match env.compile_expression(probe).and_then(|e| e.eval(())) {
        Err(e) => !matches!(
            e.kind(),
            minijinja::ErrorKind::UnknownFilter | minijinja::ErrorKind::UnknownTest
        ),
        Ok(_) => true,
    }
}

/// What one walk of a syntax tree found.
struct Scan {
    found: Vec<Found>,
    /// Every read of a root, as a dotted path (`inputs.ticket`, or `inputs`
    /// when read as a whole or by a computed key).
    roots: BTreeSet<String>,
}

/// The syntax-tree walk behind [`Source::scan`].
struct Lint<'e, 't> {
    env: &'e Environment<'e>,
    text: &'t str,
    found: Vec<Found>,
    roots: BTreeSet<String>,
}

impl Lint<'_, '_> {
    fn push(&mut self, finding: Finding, span: minijinja::machinery::Span) {
        let start = span.start_offset as usize;
        let len = (span.end_offset as usize).saturating_sub(start);
        self.found.push(Found {
            finding,
            start,
            len,
        });
    }

    /// The byte range of `name` inside a node's span, after `after` (`|`
    /// for a filter, `is` for a test), for a precise location.
    fn name_in(&self, span: minijinja::machinery::Span, name: &str) -> minijinja::machinery::Span {
        let (s, e) = (span.start_offset as usize, span.end_offset as usize);
        let Some(slice) = self.text.get(s..e) else {
            return span;
        };
        match slice.rfind(name) {
            Some(i) => minijinja::machinery::Span {
                start_offset: (s + i) as u32,
                end_offset: (s + i + name.len()) as u32,
                ..span
            },
            None => span,
        }
    }

    /// A binding target: a name or a tuple of names.
    fn target(&mut self, e: &minijinja::machinery::ast::Expr<'_>, by: &'static str) {
        use minijinja::machinery::ast::Expr;
        match e {
            Expr::Var(v) => {
                if let Some(root) = ROOTS.iter().find(|r| **r == v.id) {
                    self.push(Finding::Shadows { root, by }, v.span());
                }
            }
            Expr::List(l) => {
                for item in &l.items {
                    self.target(item, by);
                }
            }
            // `ns.attr` assigns into a namespace; the object is read.
            other => self.expr(other),
        }
    }

    fn body(&mut self, body: &[minijinja::machinery::ast::Stmt<'_>]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &minijinja::machinery::ast::Stmt<'_>) {
        use minijinja::machinery::ast::Stmt;
        match s {
            Stmt::Template(t) => self.body(&t.children),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
            Stmt::ForLoop(f) => {
                self.target(&f.target, "a `for` loop variable");
                self.expr(&f.iter);
                if let Some(e) = &f.filter_expr {
                    self.expr(e);
                }
                self.body(&f.body);
                self.body(&f.else_body);
            }
            Stmt::IfCond(c) => {
                self.expr(&c.expr);
                self.body(&c.true_body);
                self.body(&c.false_body);
            }
            Stmt::WithBlock(w) => {
                for (t, e) in &w.assignments {
                    self.expr(e);
                    self.target(t, "`with`");
                }
                self.body(&w.body);
            }
            Stmt::Set(set) => {
                self.expr(&set.expr);
                self.target(&set.target, "`set`");
            }
            Stmt::SetBlock(set) => {
                self.target(&set.target, "`set`");
                if let Some(f) = &set.filter {
                    self.expr(f);
                }
                self.body(&set.body);
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled);
                self.body(&a.body);
            }
            Stmt::FilterBlock(f) => {
                self.expr(&f.filter);
                self.body(&f.body);
            }
            Stmt::Block(b) => self.body(&b.body),
            Stmt::Import(i) => self.push(Finding::Loads("import"), i.span()),
            Stmt::FromImport(i) => self.push(Finding::Loads("from … import"), i.span()),
            Stmt::Extends(e) => self.push(Finding::Loads("extends"), e.span()),
            Stmt::Include(i) => self.push(Finding::Loads("include"), i.span()),
            Stmt::Macro(m) => self.macro_decl(m, "a macro parameter"),
            Stmt::CallBlock(c) => {
                self.call(&c.call);
                self.macro_decl(&c.macro_decl, "a `call` block parameter");
            }
            Stmt::Do(d) => self.call(&d.call),
        }
    }

    fn macro_decl(
        &mut self,
        m: &minijinja::machinery::ast::Spanned<minijinja::machinery::ast::Macro<'_>>,
        by: &'static str,
    ) {
        // The macro's own name binds too (`{% macro inputs() %}`).
        if let Some(root) = ROOTS.iter().find(|r| **r == m.name) {
            let at = self.name_in(m.span(), m.name);
            self.push(
                Finding::Shadows {
                    root,
                    by: "a macro name",
                },
                at,
            );
        }
        for a in &m.args {
            self.target(a, by);
        }
        for d in &m.defaults {
            self.expr(d);
        }
        self.body(&m.body);
    }

    fn call(&mut self, c: &minijinja::machinery::ast::Call<'_>) {
        use minijinja::machinery::ast::{CallType, Expr};
        if let CallType::Function(name) = c.identify_call() {
            if REMOVED_FUNCTIONS.contains(&name) {
                if let Expr::Var(v) = &c.expr {
                    self.push(Finding::Removed(name.to_owned()), v.span());
                }
            }
        }
        self.expr(&c.expr);
        self.args(&c.args);
    }

    fn args(&mut self, args: &[minijinja::machinery::ast::CallArg<'_>]) {
        use minijinja::machinery::ast::CallArg;
        for a in args {
            match a {
                CallArg::Pos(e)
                | CallArg::Kwarg(_, e)
                | CallArg::PosSplat(e)
                | CallArg::KwargSplat(e) => self.expr(e),
            }
        }
    }

    fn expr(&mut self, e: &minijinja::machinery::ast::Expr<'_>) {
        use minijinja::machinery::ast::Expr;
        match e {
            Expr::Var(v) => {
                if ROOTS.contains(&v.id) {
                    self.roots.insert(v.id.to_owned());
                }
            }
            Expr::Const(_) => {}
            Expr::Slice(s) => {
                self.expr(&s.expr);
                for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(x);
                }
            }
            Expr::UnaryOp(u) => self.expr(&u.expr),
            Expr::BinOp(b) => {
                self.expr(&b.left);
                self.expr(&b.right);
            }
            Expr::Compare(c) => {
                self.expr(&c.expr);
                for op in &c.ops {
                    self.expr(&op.expr);
                }
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                if let Some(f) = &i.false_expr {
                    self.expr(f);
                }
            }
            Expr::Filter(f) => {
                if !known(self.env, &format!("none | {}", f.name)) {
                    let at = self.name_in(f.span(), f.name);
                    self.push(Finding::UnknownFilter(f.name.to_owned()), at);
                }
                if let Some(x) = &f.expr {
                    self.expr(x);
                }
                self.args(&f.args);
            }
            Expr::Test(t) => {
                if !known(self.env, &format!("none is {}", t.name)) {
                    let at = self.name_in(t.span(), t.name);
                    self.push(Finding::UnknownTest(t.name.to_owned()), at);
                }
                self.expr(&t.expr);
                self.args(&t.args);
            }
            Expr::GetAttr(g) => {
                // `inputs.a.b`: the whole dotted path of a root, as
                // minijinja's nested tracking spells it.
                let mut names = vec![g.name];
                let mut at = &g.expr;
                while let Expr::GetAttr(inner) = at {
                    names.push(inner.name);
                    at = &inner.expr;
                }
                match at {
                    Expr::Var(v) if ROOTS.contains(&v.id) => {
                        let mut path = v.id.to_owned();
                        for n in names.iter().rev() {
                            path.push('.');
                            path.push_str(n);
                        }
                        self.roots.insert(path);
                    }
                    _ => self.expr(&g.expr),
                }
            }
            Expr::GetItem(g) => {
                self.expr(&g.expr);
                self.expr(&g.subscript_expr);
            }
            Expr::Call(c) => self.call(c),
            Expr::List(l) => {
                for x in &l.items {
                    self.expr(x);
                }
            }
            Expr::Map(m) => {
                for x in m.keys.iter().chain(&m.values) {
                    self.expr(x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Hostile `for_each` values: a list that is small until copied out
    /// (one 5 MB string shared ten times) is measured, never copied, and
    /// refused past the byte bound; a value that is not data, or not a
    /// list, is refused; an iterable is a list, as it was through JSON.
    #[test]
    fn a_for_each_list_is_measured_without_being_copied_and_bounded() {
        let env = environment();
        let ctx = minijinja::Value::from(());
        let err = |text: &str| match eval_list(&env, text, &ctx) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{text}: accepted"),
        };
        assert!(
            err(r#"["x" * 5000000] * 10"#)
                .contains(&format!("larger than {MAX_RENDERED_BYTES} bytes")),
            "{}",
            err(r#"["x" * 5000000] * 10"#)
        );
        assert!(err("[1] * 100001").contains("more than 100000 items"));
        assert!(
            err("[range]").contains("cannot be read as data"),
            "{}",
            err("[range]")
        );
        let kind = |text: &str| match eval_list(&env, text, &ctx).unwrap() {
            ForEachList::NotAList(k) => k,
            ForEachList::List(l) => panic!("{text}: a list of {}", l.len()),
        };
        assert_eq!(kind("'abc'"), "a string");
        assert_eq!(kind("{'a': 1}"), "a mapping");
        assert_eq!(kind("none"), "nothing");
        let ForEachList::List(items) = eval_list(&env, "range(3)", &ctx).unwrap() else {
            panic!("range(3) is a list");
        };
        assert_eq!(items, [0, 1, 2].map(minijinja::Value::from));
    }

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
    fn reads_hidden_from_minijinja_are_references() {
        let env = environment();
        for (text, expected) in [
            ("{{ inputs.secret[:200] }}", "inputs.secret"),
            ("{% set x = inputs %}{{ x.secret }}", "inputs"),
            (
                "{% macro m(x=inputs.secret) %}{{ x }}{% endmacro %}{{ m() }}",
                "inputs.secret",
            ),
            ("{% for x in [1] if inputs.a %}{% endfor %}", "inputs.a"),
        ] {
            let refs = Source::inline(text, "/p".into()).references(&env).unwrap();
            assert!(refs.contains(expected), "{text}: {refs:?}");
        }
        let e = Source::expression("[inputs.secret[0:10]]", "/f".into());
        assert!(e.references(&env).unwrap().contains("inputs.secret"));
    }

    #[test]
    fn shadowing_removed_functions_and_loads_are_found_without_running() {
        let env = environment();
        let lint = |t: &str| {
            Source::inline(t, "/p".into())
                .lint(&env)
                .unwrap()
                .into_iter()
                .map(|f| f.finding)
                .collect::<Vec<_>>()
        };
        let shadows = |root| Finding::Shadows { root, by: "`set`" };
        assert_eq!(lint("{% set inputs = inputs %}"), vec![shadows("inputs")]);
        assert_eq!(
            lint("{% set (a, steps) = (1, 2) %}"),
            vec![shadows("steps")]
        );
        assert_eq!(lint("{% set item %}x{% endset %}"), vec![shadows("item")]);
        assert_eq!(
            lint("{{ debug() }}"),
            vec![Finding::Removed("debug".into())]
        );
        assert_eq!(lint("{% include 'x' %}"), vec![Finding::Loads("include")]);
        assert_eq!(
            lint("{{ 1 | nope }}"),
            vec![Finding::UnknownFilter("nope".into())]
        );
        assert_eq!(
            lint("{{ 1 is nope }}"),
            vec![Finding::UnknownTest("nope".into())]
        );
        // Never executed: this would not finish.
        assert!(
            lint(
                "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
            )
            .is_empty()
        );
        assert!(
            lint("{% set ns = namespace(n=0) %}{% set ns.n = 1 %}{{ ns.n | upper }}").is_empty()
        );
    }

    #[test]
    fn renders_run_on_fuel_and_a_size_limit() {
        let env = environment();
        let ctx = minijinja::Value::from_serialize(json!({}));
        let e = render(
            &env,
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            &ctx,
        )
        .unwrap_err();
        assert_eq!(e.kind(), minijinja::ErrorKind::OutOfFuel);
        let e = render(
            &env,
            "{% for a in range(100) %}{{ 'x' * 1000000 }}{% endfor %}",
            &ctx,
        )
        .unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        assert!(env.globals().all(|(name, _)| name != "debug"));
    }

    #[test]
    fn a_compiled_template_gets_fresh_fuel_for_every_render() {
        // A small budget stands in for FUEL: the template spends more than
        // half of it (three steps a loop turn), so a shared tracker would fail
        // the second render.
        let mut env = environment();
        env.set_fuel(Some(1_000));
        let ctx = minijinja::Value::from_serialize(json!({}));
        let once = "{% for a in range(250) %}{% endfor %}";
        let t = compile(&env, once).unwrap();
        for _ in 0..3 {
            t.render(&ctx).unwrap();
        }
        let text = once.repeat(2);
        let twice = compile(&env, &text).unwrap();
        let e = twice.render(&ctx).unwrap_err();
        assert_eq!(e.kind(), minijinja::ErrorKind::OutOfFuel);
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
