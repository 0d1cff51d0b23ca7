//! Diagnostics: what went wrong, where (file:line:column), and a hint.
//!
//! Every stage before execution (load, validate, plan) reports problems as
//! [`Diagnostic`]s and collects *all* of them before giving up, so a user fixes
//! a file in one pass instead of one error per run. A diagnostic carries a
//! [`Span`] into a [`SourceFile`], which is enough to render the source line
//! and a caret long after the YAML tree has been turned into typed structs.
//!
//! Rendering is miette's: the CLI is the only place that prints them.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;

/// A file that was read, kept whole so diagnostics can quote it.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user gave it (relative paths stay relative: output must
    /// be the same on every machine).
    pub path: PathBuf,
    pub text: Arc<str>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Arc<SourceFile> {
        let text: Arc<str> = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Arc::new(SourceFile {
            path: path.into(),
            text,
            line_starts,
        })
    }

    /// Reads a file (a regular file of at most [`crate::files::MAX_TEXT_BYTES`],
    /// see [`crate::files`]); the error is a diagnostic naming the file.
    pub fn read(path: &Path) -> Result<Arc<SourceFile>, Diagnostic> {
        SourceFile::read_resolved(path, path)
    }

    /// Reads the file at `real` (a path already resolved and checked, so
    /// what is read is what was checked), named `path` in output.
    pub fn read_resolved(path: &Path, real: &Path) -> Result<Arc<SourceFile>, Diagnostic> {
        match crate::files::read_text(real) {
            Ok(text) => Ok(SourceFile::new(path, text)),
            Err(err) => Err(Diagnostic::error(
                "io",
                format!("cannot read {}: {err}", path.display()),
            )
            .with_help(
                err.hint()
                    .unwrap_or("check the path and that the file is readable UTF-8 text"),
            )),
        }
    }

    pub fn display_path(&self) -> String {
        self.path.display().to_string()
    }

    /// 1-based line and 1-based column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self.text[start..offset].chars().count();
        (line + 1, col + 1)
    }

    /// Byte offset of a 1-based line and a 0-based column counted in characters.
    /// Out-of-range positions are clamped to the end of the line or file.
    pub fn offset_of(&self, line: usize, col_chars: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let line_text = &self.text[start..];
        let line_end = line_text.find('\n').unwrap_or(line_text.len());
        let within = line_text[..line_end]
            .char_indices()
            .nth(col_chars)
            .map_or(line_end, |(i, _)| i);
        start + within
    }

    /// The text of a 1-based line, without its newline.
    pub fn line_text(&self, line: usize) -> &str {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return "";
        };
        let rest = &self.text[start..];
        let end = rest.find('\n').unwrap_or(rest.len());
        rest[..end].trim_end_matches('\r')
    }

    pub fn line_count(&self) -> usize {
        self.line_starts.len()
    }

    /// A copy with a byte range hidden behind `*` (byte offsets unchanged),
    /// so a diagnostic can quote a line that holds a secret without the secret.
    pub fn masked(&self, start: usize, len: usize) -> Arc<SourceFile> {
        self.masked_ranges(&[(start, len)])
    }

    /// A copy with every `(start, len)` byte range hidden behind `*`: one
    /// pass over the text however many ranges there are.
    pub fn masked_ranges(&self, ranges: &[(usize, usize)]) -> Arc<SourceFile> {
        let mut ranges: Vec<(usize, usize)> = ranges
            .iter()
            .map(|&(start, len)| (start, start.saturating_add(len).min(self.text.len())))
            .collect();
        ranges.sort_unstable();
        let mut next = ranges.iter().peekable();
        let mut end = 0;
        let mut text = String::with_capacity(self.text.len());
        for (i, c) in self.text.char_indices() {
            while let Some(&&(s, e)) = next.peek() {
                if s > i {
                    break;
                }
                end = end.max(e);
                next.next();
            }
            if i < end && !c.is_whitespace() {
                text.extend(std::iter::repeat_n('*', c.len_utf8()));
            } else {
                text.push(c);
            }
        }
        SourceFile::new(self.path.clone(), text)
    }

    /// The byte offset of the end of the line that holds `offset` (before
    /// its newline), from the line table.
    pub fn line_end(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        self.line_starts
            .get(line + 1)
            .map_or(self.text.len(), |next| next - 1)
    }

    /// The byte offset `chars` characters after `from`, stopping at the end
    /// of `from`'s line.
    pub fn advance_chars(&self, from: usize, chars: usize) -> usize {
        let from = from.min(self.text.len());
        let end = self.line_end(from);
        self.text[from..end]
            .char_indices()
            .nth(chars)
            .map_or(end, |(i, _)| from + i)
    }

    pub fn span(self: &Arc<Self>, start: usize, len: usize) -> Span {
        let start = start.min(self.text.len());
        let len = len.min(self.text.len() - start);
        Span {
            file: Arc::clone(self),
            start,
            len,
        }
    }
}

/// A byte range in a source file.
#[derive(Clone)]
pub struct Span {
    pub file: Arc<SourceFile>,
    pub start: usize,
    pub len: usize,
}

impl Span {
    pub fn line_col(&self) -> (usize, usize) {
        self.file.line_col(self.start)
    }

    /// `path:line:column`, the form editors and terminals turn into links.
    pub fn location(&self) -> String {
        let (line, col) = self.line_col();
        format!("{}:{line}:{col}", self.file.display_path())
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.location(), self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in the user's input.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable, greppable identifier such as `unknown-step`.
    pub code: &'static str,
    /// What is wrong, as a lowercase fragment ("unknown step `x`").
    pub message: String,
    pub span: Option<Span>,
    /// A short note drawn under the caret.
    pub label: Option<String>,
    /// What to do about it ("did you mean `summarize`?").
    pub help: Option<String>,
    /// A path for problems that concern a file without a position in it.
    pub file: Option<PathBuf>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            label: None,
            help: None,
            file: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn at(mut self, span: Option<Span>) -> Diagnostic {
        if span.is_some() {
            self.span = span;
        }
        self
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_help_opt(mut self, help: Option<String>) -> Diagnostic {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    pub fn in_file(mut self, path: impl Into<PathBuf>) -> Diagnostic {
        self.file = Some(path.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `path:line:column` when the diagnostic has a position, else the file.
    pub fn location(&self) -> Option<String> {
        match (&self.span, &self.file) {
            (Some(span), _) => Some(span.location()),
            (None, Some(path)) => Some(path.display().to_string()),
            (None, None) => None,
        }
    }

    /// Sort key: file, then position, so output is stable whatever order the
    /// checks ran in.
    fn sort_key(&self) -> (String, usize, Severity, String) {
        let file = self
            .span
            .as_ref()
            .map(|s| s.file.display_path())
            .or_else(|| self.file.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_default();
        let pos = self.span.as_ref().map_or(0, |s| s.start);
        (file, pos, self.severity, self.message.clone())
    }

    /// A machine-readable form for `--format json`.
    pub fn to_json(&self) -> DiagnosticJson {
        let (file, line, column) = match (&self.span, &self.file) {
            (Some(span), _) => {
                let (l, c) = span.line_col();
                (Some(span.file.display_path()), Some(l), Some(c))
            }
            (None, Some(p)) => (Some(p.display().to_string()), None, None),
            (None, None) => (None, None, None),
        };
        DiagnosticJson {
            severity: self.severity,
            code: self.code,
            message: mask_keys(&self.message).into_owned(),
            file,
            line,
            column,
            label: self.label.as_deref().map(|l| mask_keys(l).into_owned()),
            help: self.help.as_deref().map(|h| mask_keys(h).into_owned()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DiagnosticJson {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub label: Option<String>,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Sorts and de-duplicates diagnostics for display.
pub fn sort(diags: &mut Vec<Diagnostic>) {
    diags.sort_by_cached_key(Diagnostic::sort_key);
    diags.dedup_by(|a, b| {
        a.message == b.message
            && a.code == b.code
            && a.span.as_ref().map(|s| (s.file.display_path(), s.start))
                == b.span.as_ref().map(|s| (s.file.display_path(), s.start))
    });
}

/// A list of diagnostics that stops a command. Exit code 2.
#[derive(Debug, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(d: Vec<Diagnostic>) -> Self {
        Diagnostics(d)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            let message = mask_keys(&d.message);
            match d.location() {
                Some(loc) => writeln!(f, "{loc}: {message}")?,
                None => writeln!(f, "{message}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Adapter that lets miette draw a [`Diagnostic`]: the diagnostic with
/// [`mask_keys`] applied to every text it shows.
struct MietteView<'a> {
    diag: &'a Diagnostic,
    message: Cow<'a, str>,
    label: Option<String>,
    help: Option<Cow<'a, str>>,
    source: Option<NamedSource<Arc<str>>>,
}

impl fmt::Debug for MietteView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diag, f)
    }
}

impl fmt::Display for MietteView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.diag.span, &self.diag.file) {
            (None, Some(path)) => write!(f, "{}: {}", path.display(), self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for MietteView<'_> {}

impl miette::Diagnostic for MietteView<'_> {
    // The code is left out of the drawing on purpose: miette prints it on a
    // line of its own above the message, which reads as noise. It stays in
    // the JSON form, where machines want it.

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.diag.span.as_ref()?;
        let label = LabeledSpan::new_with_span(
            self.label.clone(),
            SourceSpan::new(span.start.into(), span.len.max(1)),
        );
        Some(Box::new(std::iter::once(label)))
    }
}

/// How diagnostics are drawn.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    pub color: bool,
    pub unicode: bool,
    pub width: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            color: false,
            unicode: true,
            width: 100,
        }
    }
}

/// Source lines longer than this are not quoted: a diagnostic on a file
/// written on one huge line would otherwise print the whole file, once per
/// diagnostic. The location is still given.
pub const MAX_QUOTED_LINE: usize = 1000;

/// Draws one diagnostic with its source line and caret.
pub fn render(diag: &Diagnostic, options: RenderOptions) -> String {
    if let Some(span) = &diag.span {
        // The line and the one context line either side, as miette quotes.
        let (line, _) = span.file.line_col(span.start);
        let long = (line.saturating_sub(1)..=line + 1)
            .any(|l| span.file.line_text(l).len() > MAX_QUOTED_LINE);
        if long {
            let mut plain = diag.clone();
            plain.message = format!("{}: {}", span.location(), diag.message);
            plain.span = None;
            plain.file = None;
            return render_with_miette(&plain, options);
        }
    }
    render_with_miette(diag, options)
}

fn render_with_miette(diag: &Diagnostic, options: RenderOptions) -> String {
    use miette::{GraphicalReportHandler, GraphicalTheme};
    let theme = match (options.unicode, options.color) {
        (true, true) => GraphicalTheme::unicode(),
        (true, false) => GraphicalTheme::unicode_nocolor(),
        (false, _) => GraphicalTheme::none(),
    };
    let view = MietteView {
        diag,
        message: mask_keys(&diag.message),
        label: diag.label.as_deref().map(|l| mask_keys(l).into_owned()),
        help: diag.help.as_deref().map(mask_keys),
        source: diag.span.as_ref().map(|s| {
            let text = match mask_keys(&s.file.text) {
                Cow::Borrowed(_) => Arc::clone(&s.file.text),
                Cow::Owned(masked) => Arc::from(masked),
            };
            NamedSource::new(s.file.display_path(), text)
        }),
    };
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(options.width)
        .with_links(false)
        .with_context_lines(1);
    if handler.render_report(&mut out, &view).is_err() {
        out = format!("{view}\n");
    }
    out
}

/// Does this token look like an API key? Tokens are runs of
/// `[A-Za-z0-9_-]`. Two signs, either is enough:
/// - a vendor key prefix (`sk-`, `sk_`, `AIza`, `xai-`, `gsk_`, `hf_`,
///   `ghp_`, `github_pat_`, `glpat-`, `r8_`, `pplx-`, `nvapi-`, …) on a
///   token of 20 characters or more;
/// - a random-looking piece: 20 or more letters and digits in a row
///   (between `-`/`_`), at least 2 of each — what keys are made of, and
///   what names (`claude-3-5-sonnet-20241022`, `OPENAI_API_KEY`) are not.
pub fn looks_like_key(token: &str) -> bool {
    const PREFIXES: [&str; 16] = [
        "sk-",
        "sk_",
        "pk-",
        "rk_",
        "AIza",
        "xai-",
        "gsk_",
        "hf_",
        "ghp_",
        "gho_",
        "github_pat_",
        "glpat-",
        "r8_",
        "pplx-",
        "nvapi-",
        "csk-",
    ];
    if token.len() >= 20 && PREFIXES.iter().any(|p| token.starts_with(p)) {
        return true;
    }
    token.split(['-', '_']).any(|piece| {
        piece.len() >= 20
            && piece.bytes().filter(u8::is_ascii_digit).count() >= 2
            && piece.bytes().filter(u8::is_ascii_alphabetic).count() >= 2
    })
}

/// `text` with every token that [`looks_like_key`] replaced by `*`s of the
/// same length (byte offsets unchanged, so spans still point at the right
/// place). Applied to every text a diagnostic shows — message, label,
/// help and the quoted source — when it is rendered ([`render`],
/// [`Diagnostic::to_json`], `Display for Diagnostics`): a key pasted where
/// a variable *name* belongs (`api_key_env: sk-…`) or under a key that does
/// not look secret (`headers: {Authorization: Bearer …}`) never reaches
/// the terminal or a CI log, whichever check quotes it.
pub fn mask_keys(text: &str) -> Cow<'_, str> {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let bytes = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        if !is_token(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_token(bytes[i]) {
            i += 1;
        }
        // Tokens are ASCII: slicing on their bounds is on char boundaries.
        if looks_like_key(&text[start..i]) {
            let buf = out.get_or_insert_with(|| bytes.to_vec());
            buf[start..i].fill(b'*');
        }
    }
    match out {
        // Only ASCII bytes were replaced by ASCII: still UTF-8.
        Some(buf) => Cow::Owned(String::from_utf8(buf).unwrap_or_default()),
        None => Cow::Borrowed(text),
    }
}

/// "did you mean `x`?" for the closest candidate, if one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The closest candidate by Jaro-Winkler similarity, when it is a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&word.to_lowercase(), &c.to_lowercase());
        if score >= 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A comma-separated list of backticked names, for hints.
pub fn one_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "(none defined)".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let f = SourceFile::new("x.yaml", "a: 1\nné: 2\n");
        let off = f.text.find(": 2").unwrap();
        assert_eq!(f.line_col(off), (2, 3));
        assert_eq!(f.offset_of(2, 2), off);
        assert_eq!(f.line_text(2), "né: 2");
    }

    #[test]
    fn render_shows_location_caret_and_help() {
        let f = SourceFile::new("wf.yaml", "steps:\n  a:\n    needs: [bee]\n");
        let start = f.text.find("bee").unwrap();
        let d = Diagnostic::error("unknown-step", "unknown step `bee`")
            .at(Some(f.span(start, 3)))
            .with_label("no step with this id")
            .with_help("did you mean `be`?");
        let out = render(&d, RenderOptions::default());
        assert!(out.contains("wf.yaml:3:13"), "{out}");
        assert!(out.contains("needs: [bee]"), "{out}");
        assert!(out.contains("did you mean"), "{out}");
    }

    #[test]
    fn keys_look_like_keys_and_names_do_not() {
        for key in [
            "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
            "sk-ant-api03-zzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
            "gsk_abcdefghijklmnopqrstuv",
            "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6",
            "sk-test-SECRET-5f3a9c0e7d2b41aa",
        ] {
            assert!(looks_like_key(key), "{key}");
        }
        for name in [
            "OPENAI_API_KEY",
            "claude-3-5-sonnet-20241022",
            "gpt-4o-mini-2024-07-18",
            "gemini-2.5-flash",
            "ANTHROPIC_API_KEY_FOR_THE_BATCH_PIPELINE",
            "summarize_the_incoming_tickets",
            "sk-short",
        ] {
            assert!(!looks_like_key(name), "{name}");
        }
    }

    #[test]
    fn every_rendered_text_of_a_diagnostic_is_masked() {
        let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
        let f = SourceFile::new(
            "p.yaml",
            format!(
                "providers:\n  oa:\n    api_key_env: {key}\n    headers: {{Authorization: \"Bearer {key}\"}}\n"
            ),
        );
        let start = f.text.find(key).unwrap();
        let d = Diagnostic::error("bad", format!("`{key}` is not a valid name"))
            .at(Some(f.span(start, key.len())))
            .with_label(format!("label {key}"))
            .with_help(format!("help {key}"));
        let out = render(&d, RenderOptions::default());
        assert!(!out.contains("abcdefghijklmnop"), "{out}");
        assert!(out.contains("p.yaml:3:18"), "{out}");
        assert!(out.contains("api_key_env: ****"), "{out}");
        let json = serde_json::to_string(&d.to_json()).unwrap();
        assert!(!json.contains("abcdefghijklmnop"), "{json}");
        let text = Diagnostics(vec![d]).to_string();
        assert!(!text.contains("abcdefghijklmnop"), "{text}");
        // Non-ASCII text around a masked token stays intact.
        assert_eq!(
            mask_keys("é a1B2c3D4e5F6g7H8i9J0k1 ✓"),
            "é ********************** ✓"
        );
    }

    #[test]
    fn closest_needs_a_plausible_typo() {
        assert_eq!(
            closest("sumarize", ["summarize", "classify"]),
            Some("summarize")
        );
        assert_eq!(closest("zzz", ["summarize", "classify"]), None);
    }
}
