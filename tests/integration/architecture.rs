//! The layer rules of ARCHITECTURE.md, checked on the source text of `src/`.
//!
//! Each rule reads every `.rs` file under `src/` as *code*: comments, the
//! contents of string and char literals, and `#[cfg(test)]` items are
//! blanked first (lines kept), so a doc comment that names `reqwest` or a
//! unit test that spawns a task is not a violation. What the rules check:
//!
//! - **no import circles** between the top-level modules (`crate::x` and
//!   `super::x` paths, from every submodule, mapped to their top-level
//!   module);
//! - **HTTP** (`reqwest`) only in `src/provider/`, and in
//!   `src/run/local_server.rs` for its `/health` check;
//! - **SQL** (`rusqlite`, `postgres`) only in `src/journal/`;
//! - **the terminal** (`println!`, `eprintln!`, `print!`, `eprint!`,
//!   `dbg!`, `std::process::exit`) only in `src/cli*`, `src/progress.rs`
//!   and `src/main.rs`;
//! - **tasks** (`tokio::spawn`, `tokio::task::spawn*`, `JoinSet`,
//!   `thread::spawn`, `thread::Builder`) only in the executor (`src/run/`),
//!   the CLI (signal handling, the progress reporter), `eval::runner`
//!   (journal writes off the async threads) and `journal::writer` (its one
//!   writer thread); **processes** (`std::process::Command`,
//!   `tokio::process::Command`) only in `run::local_server` (llama-server,
//!   `kill`), `process` (the `kill -0` liveness fallback) and `git` (a
//!   policy at a revision, for `plan --compare`).
//!
//! A failure names the file and line of every violation (and, for a circle,
//! the modules around it and where each edge of it is made). The matching is
//! textual, not a compiler's: it sees what a reader sees, which is what the
//! rules are for; a path hidden behind a renamed import (`use std::process
//! as p`) would get past it, and review is the guard against that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;

/// A source file under `src/`, as code (see the module comment).
struct Source {
    /// Relative to the repository root, with `/`: `src/run/mod.rs`.
    path: String,
    code: String,
}

impl Source {
    fn new(path: &str, text: &str) -> Source {
        Source {
            path: path.to_owned(),
            code: blank_test_items(&blank_comments_and_literals(text)),
        }
    }

    fn line_of(&self, byte: usize) -> usize {
        self.code[..byte].matches('\n').count() + 1
    }

    /// The module path of the file: `src/run/mod.rs` → `[run]`,
    /// `src/run/batch.rs` → `[run, batch]`, `src/lib.rs` → `[]`.
    fn module_path(&self) -> Vec<String> {
        let rel = self.path.strip_prefix("src/").unwrap_or(&self.path);
        let rel = rel.strip_suffix(".rs").unwrap_or(rel);
        let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        parts
    }

    /// The file's top-level module (`None` for the crate root files).
    fn top(&self) -> Option<String> {
        self.module_path().into_iter().next()
    }

    /// Where `pattern` matches, as `path:line: what`.
    fn violations(&self, pattern: &Regex, what: &str) -> Vec<String> {
        pattern
            .find_iter(&self.code)
            .map(|m| {
                format!(
                    "{}:{}: `{}` {what}",
                    self.path,
                    self.line_of(m.start()),
                    m.as_str()
                )
            })
            .collect()
    }
}

/// Every `.rs` file under `src/`, sorted by path.
fn sources() -> Vec<Source> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<Source>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy();
                let text = std::fs::read_to_string(&path).expect("a source file is UTF-8");
                out.push(Source::new(&rel.replace('\\', "/"), &text));
            }
        }
    }
    let root = crate::support::root();
    let mut out = Vec::new();
    walk(&root.join("src"), &root, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(out.len() > 20, "src/ has its files ({} found)", out.len());
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `text` with comments (line, block — nested — and doc) and the contents of
/// string, raw string, byte string and char literals replaced by spaces.
/// Newlines are kept, so line numbers stay true; the delimiters are kept,
/// so the code still reads as code.
fn blank_comments_and_literals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let prev_ident = i > 0 && is_ident(b[i - 1]);
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = text[i..].find('\n').map_or(b.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < b.len() && depth > 0 {
                    if b[j..].starts_with(b"/*") {
                        depth += 1;
                        j += 2;
                    } else if b[j..].starts_with(b"*/") {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            // `r"…"`, `r#"…"#`, `br"…"`: the `r` starts a token (or follows
            // a `b` that does).
            b'r' if !prev_ident || (b[i - 1] == b'b' && (i < 2 || !is_ident(b[i - 2]))) => {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let open = i + 2 + hashes;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let end = b[open..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |n| open + n);
                blank(&mut out, open, end);
                i = end + close.len();
            }
            // A char literal (`'x'`, `'\n'`, `'\u{1F600}'`, `'"'`), not a
            // lifetime (`'a`, `'static`).
            b'\'' => {
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 3;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    blank(&mut out, i + 1, j);
                    i = j + 1;
                } else {
                    let width = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if b.get(i + 1 + width) == Some(&b'\'') {
                        blank(&mut out, i + 1, i + 1 + width);
                        i += 2 + width;
                    } else {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("whole characters were blanked")
}

/// The index just past the `}` matching the `{` at `open`.
fn matching_brace(code: &str, open: usize) -> usize {
    let mut depth = 0;
    for (k, c) in code[open..].bytes().enumerate() {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return open + k + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// `code` with every `#[cfg(test)]` item blanked: up to its `;`, or its
/// whole `{ … }` body, whichever comes first. Unit tests may use whatever
/// they test with; the rules are about what ships.
fn blank_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(n) = code[from..].find(ATTR) {
        let start = from + n;
        let after = start + ATTR.len();
        let end = match code[after..].find(['{', ';']) {
            Some(k) if code.as_bytes()[after + k] == b'{' => matching_brace(code, after + k),
            Some(k) => after + k + 1,
            None => code.len(),
        };
        for c in &mut out[start..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end;
    }
    String::from_utf8(out).expect("whole characters were blanked")
}

// ---------------------------------------------------------------------------
// The module graph.

/// Edges between top-level modules, each with where it is first made
/// (`path:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The top-level modules, as `lib.rs` declares them.
fn top_level_modules(sources: &[Source]) -> BTreeSet<String> {
    let lib = sources
        .iter()
        .find(|s| s.path == "src/lib.rs")
        .expect("src/lib.rs");
    Regex::new(r"\bmod\s+(\w+)\s*;")
        .unwrap()
        .captures_iter(&lib.code)
        .map(|c| c[1].to_owned())
        .collect()
}

/// The first segment of each path a use tree names, starting at `at`
/// (just past `crate::` or `super::`): `x::y` → `x`, `{x::y, z}` → `x`, `z`.
fn first_segments(code: &str, at: usize) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let ident_at = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        (code[start..i].to_owned(), start)
    };
    let mut i = at;
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    if b.get(i) != Some(&b'{') {
        return vec![ident_at(i)];
    }
    // A group: the first identifier of every item at depth 1.
    let end = matching_brace(code, i);
    let mut out = vec![ident_at(i + 1)];
    let mut depth = 0;
    for (k, &c) in b.iter().enumerate().take(end).skip(i) {
        match c {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 1 => out.push(ident_at(k + 1)),
            _ => {}
        }
    }
    out.retain(|(name, _)| !name.is_empty());
    out
}

/// The inline modules (`mod x { … }`) of a file: name and byte range.
fn inline_modules(code: &str) -> Vec<(String, std::ops::Range<usize>)> {
    Regex::new(r"\bmod\s+(\w+)\s*\{")
        .unwrap()
        .captures_iter(code)
        .map(|c| {
            let whole = c.get(0).unwrap();
            let open = whole.end() - 1;
            (c[1].to_owned(), whole.start()..matching_brace(code, open))
        })
        .collect()
}

/// Which top-level modules each top-level module uses: every `crate::x`
/// path, and every `super::…::x` path resolved from the module it is
/// written in (a file's module path plus the inline modules around it).
fn module_graph(sources: &[Source]) -> Graph {
    let modules = top_level_modules(sources);
    let crate_path = Regex::new(r"\bcrate::").unwrap();
    let super_path = Regex::new(r"\b(?:super\s*::\s*)+").unwrap();
    let mut graph = Graph::new();
    for src in sources {
        let Some(from) = src.top() else { continue };
        let mut add = |to: &str, at: usize| {
            if to != from && modules.contains(to) {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(to.to_owned())
                    .or_insert_with(|| format!("{}:{}", src.path, src.line_of(at)));
            }
        };
        for m in crate_path.find_iter(&src.code) {
            // `$crate::` in a macro is the crate root as seen by its caller.
            if m.start() > 0 && src.code.as_bytes()[m.start() - 1] == b'$' {
                continue;
            }
            for (name, at) in first_segments(&src.code, m.end()) {
                add(&name, at);
            }
        }
        let inline = inline_modules(&src.code);
        for m in super_path.find_iter(&src.code) {
            let ups = m.as_str().matches("super").count();
            let mut here = src.module_path();
            here.extend(
                inline
                    .iter()
                    .filter(|(_, range)| range.contains(&m.start()))
                    .map(|(name, _)| name.clone()),
            );
            let Some(kept) = here.len().checked_sub(ups) else {
                continue;
            };
            for (name, at) in first_segments(&src.code, m.end()) {
                let top = here[..kept].first().cloned().unwrap_or(name);
                add(&top, at);
            }
        }
    }
    graph
}

/// A cycle of `graph`, if it has one: the modules around it, the first
/// repeated at the end (`[a, b, a]`). Depth-first in name order, so the
/// same graph always gives the same cycle.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if !marks.contains_key(node) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut marks, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn the_modules_import_no_circle() {
    let graph = module_graph(&sources());
    if let Some(cycle) = find_cycle(&graph) {
        let edges: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("  {} -> {}: {}", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import circle: {}\n{}\n(a lower layer must not use a higher one: move the shared \
             item below both, or turn the dependency into a trait the lower layer defines)",
            cycle.join(" -> "),
            edges.join("\n")
        );
    }
}

/// The graph the rules run on is the real one, not an empty one that
/// passes every check.
#[test]
fn the_module_graph_sees_the_known_edges() {
    let graph = module_graph(&sources());
    let has = |a: &str, b: &str| graph.get(a).is_some_and(|to| to.contains_key(b));
    // A `use crate::…` line, a `crate::{…}` group member, a `super::` from
    // a submodule's own module (not an edge) and from a crate root file.
    assert!(has("run", "journal"), "{graph:#?}");
    assert!(has("plan", "route"), "{graph:#?}");
    assert!(has("provider", "usage"), "{graph:#?}");
    assert!(!has("journal", "run"), "{graph:#?}");
    assert!(graph.len() > 15, "{graph:#?}");
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (a, b) in edges {
        g.entry((*a).to_owned())
            .or_default()
            .insert((*b).to_owned(), String::new());
    }
    g
}

#[test]
fn the_cycle_finder_names_a_cycle_and_passes_a_dag() {
    let dag = graph_of(&[("a", "b"), ("b", "c"), ("a", "c"), ("d", "a")]);
    assert_eq!(find_cycle(&dag), None);
    let circle = graph_of(&[("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")]);
    assert_eq!(
        find_cycle(&circle),
        Some(vec!["b".into(), "c".into(), "d".into(), "b".into()])
    );
    let two = graph_of(&[("cost", "policy"), ("policy", "cost")]);
    assert_eq!(
        find_cycle(&two),
        Some(vec!["cost".into(), "policy".into(), "cost".into()])
    );
}

#[test]
fn the_graph_reads_paths_groups_and_super() {
    let files = [
        Source::new(
            "src/lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n",
        ),
        Source::new(
            "src/a/mod.rs",
            "use crate::{b::X, c};\n// crate::d in a comment\nfn f() { let _ = \"crate::d\"; }\n",
        ),
        Source::new(
            "src/a/inner.rs",
            "use super::Thing;\nmod deeper { use super::super::Z; use super::super::super::d::Y; }\n",
        ),
        Source::new("src/b.rs", "#[cfg(test)]\nmod tests { use crate::a::T; }\n"),
        Source::new("src/c.rs", "macro_rules! m { () => { $crate::a::f() } }\n"),
    ];
    let graph = module_graph(&files);
    let edges: Vec<(String, String, String)> = graph
        .iter()
        .flat_map(|(a, to)| {
            to.iter()
                .map(move |(b, at)| (a.clone(), b.clone(), at.clone()))
        })
        .collect();
    assert_eq!(
        edges,
        vec![
            ("a".into(), "b".into(), "src/a/mod.rs:1".into()),
            ("a".into(), "c".into(), "src/a/mod.rs:1".into()),
            ("a".into(), "d".into(), "src/a/inner.rs:2".into()),
        ]
    );
}

#[test]
fn comments_literals_and_tests_are_not_code() {
    let code = blank_comments_and_literals(
        "let s = \"println!(\\\"x\\\")\"; // println!\n/* a /* nested */ reqwest */ \
         let r = r#\"rusqlite\"#; let c = '\"'; fn f<'a>(x: &'a str) { reqwest::get(x) }\n",
    );
    assert!(!code.contains("println"), "{code}");
    assert!(!code.contains("rusqlite"), "{code}");
    assert_eq!(code.matches("reqwest").count(), 1, "{code}");
    assert!(code.contains("fn f<'a>(x: &'a str)"), "{code}");
    assert_eq!(code.lines().count(), 2);
    let code =
        blank_test_items("fn a() {}\n#[cfg(test)]\nmod tests {\n fn b() { {} }\n}\nfn c() {}\n");
    assert_eq!(code.lines().count(), 6);
    assert!(code.contains("fn a()") && code.contains("fn c()") && !code.contains("fn b"));
}

// ---------------------------------------------------------------------------
// Where each capability lives.

/// Every match of `pattern` in a file none of `allowed` admits (a path, or a
/// folder ending in `/`, or a prefix ending in `*`).
fn outside(sources: &[Source], pattern: &str, allowed: &[&str], what: &str) -> Vec<String> {
    let pattern = Regex::new(pattern).unwrap();
    let admits = |path: &str| {
        allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None if a.ends_with('/') => path.starts_with(a),
            None => path == *a,
        })
    };
    sources
        .iter()
        .filter(|s| !admits(&s.path))
        .flat_map(|s| s.violations(&pattern, what))
        .collect()
}

fn assert_none(violations: Vec<String>, rule: &str) {
    assert!(
        violations.is_empty(),
        "{rule}; found:\n{}",
        violations.join("\n")
    );
}

#[test]
fn only_the_provider_layer_speaks_http() {
    assert_none(
        outside(
            &sources(),
            r"\breqwest\b",
            // `run::local_server` asks a server it started for `/health`,
            // with its own no-redirect, no-proxy client.
            &["src/provider/", "src/run/local_server.rs"],
            "outside the provider layer",
        ),
        "only `provider` (and `run::local_server`'s health check) may use reqwest",
    );
}

#[test]
fn only_the_journal_knows_sql() {
    assert_none(
        outside(
            &sources(),
            r"\b(?:rusqlite|postgres)\b",
            &["src/journal/"],
            "outside the journal",
        ),
        "only `journal` may use rusqlite or postgres",
    );
}

#[test]
fn only_the_cli_knows_the_terminal() {
    assert_none(
        outside(
            &sources(),
            r"\b(?:e?print(?:ln)?|dbg)!|\bprocess\s*::\s*exit\b",
            &["src/cli*", "src/progress.rs", "src/main.rs"],
            "outside the CLI",
        ),
        "only `cli` (with `progress` and `main`) may print or exit",
    );
}

#[test]
fn tasks_are_spawned_only_where_the_architecture_says() {
    assert_none(
        outside(
            &sources(),
            r"\btokio\s*::\s*spawn\b|\btask\s*::\s*spawn\w*|\bJoinSet\b|\bthread\s*::\s*(?:spawn|Builder)\b",
            // The executor (step tasks, journal writes off the async
            // threads), the CLI (signal handling, the progress reporter),
            // the suite runner (journal writes), the journal's one writer
            // thread (group commit) and, on PostgreSQL, its reader's thread
            // (the client must not run on a tokio worker).
            &[
                "src/run/",
                "src/cli*",
                "src/eval/runner.rs",
                "src/journal/writer.rs",
                "src/journal/pg.rs",
            ],
            "spawns a task outside run, cli, eval::runner and journal::writer",
        ),
        "tasks are spawned only by `run`, `cli`, `eval::runner` and the journal's writer",
    );
}

#[test]
fn processes_are_started_only_where_the_architecture_says() {
    assert_none(
        outside(
            &sources(),
            r"\bprocess\s*::\s*(?:Command\b|\{[^}]*\bCommand\b)",
            // llama-server and `kill` for the servers tollgate launches;
            // `kill -0` where there is no `/proc`; `git cat-file` for
            // `plan --compare REV:PATH`.
            &["src/run/local_server.rs", "src/process.rs", "src/git.rs"],
            "starts a process outside run::local_server, process and git",
        ),
        "processes are started only by `run::local_server`, `process` and `git`",
    );
}
