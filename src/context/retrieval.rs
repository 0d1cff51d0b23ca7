//! Retrieval: from a step's document sets, the `top_k` chunks most relevant
//! to its query, ranked with BM25 (the `bm25` crate: an English stemmer and
//! stop words, Okapi BM25 with its usual `k1 = 1.2`, `b = 0.75`).
//!
//! Documents come from files named by globs (read once, at analysis, from
//! inside the project only) or from an array input (strings, or objects
//! with `text` and an optional `source`). They are cut into chunks of about
//! `chunk_tokens` tokens at paragraph, then line, then word boundaries, and
//! the index is built per expansion: plan and run rank the same chunks the
//! same way, ties broken by document order, so the plan shows what the run
//! will send. Building it costs milliseconds for a project's docs (see
//! the unit test on 10,000 chunks), so it is not cached on disk.
//!
//! Every chunk carries its document set's level; what a step actually
//! receives decides its level (`step`), not the whole set.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::tokens::Tokenizer;

/// At most this many documents in one step's sets together.
pub const MAX_DOCUMENTS: usize = 10_000;
/// At most this many bytes of documents in one set (each file is also
/// bounded by [`crate::files::MAX_TEXT_BYTES`]).
pub const MAX_SET_BYTES: usize = 64 * 1024 * 1024;
/// At most this many chunks in one step's index.
pub const MAX_CHUNKS: usize = 200_000;
/// At most this many entries visited while walking for one glob.
pub const MAX_WALK_ENTRIES: usize = 100_000;

/// The tokenizer chunks are measured with (the one rule conditions use).
pub const CHUNK_TOKENIZER: Tokenizer = Tokenizer::O200kBase;

/// One document: where it came from, and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub source: String,
    pub text: String,
}

/// Why a document set could not be loaded: the message, and which of its
/// patterns (for the location) when one is to blame.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    pub pattern: Option<usize>,
    pub message: String,
    pub hint: &'static str,
}

/// The files a set's globs name, relative to `dir` (the workflow's folder),
/// in path order, each read once. A pattern that names no file, a path out of
/// the project (lexically or through a link), an unreadable file or a set
/// past the bounds is an error.
pub fn load_files(
    patterns: &[String],
    dir: &Path,
    root: &Path,
) -> Result<Vec<Document>, LoadError> {
    // Lexically first (`../x` is refused whether or not it exists), then
    // every file again after resolving links.
    let root_lexical = normalize(&std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()));
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut docs: Vec<Document> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = 0usize;
    for (i, pattern) in patterns.iter().enumerate() {
        let err = |message: String, hint: &'static str| LoadError {
            pattern: Some(i),
            message,
            hint,
        };
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                err(
                    format!("invalid glob `{pattern}`: {}", e.kind()),
                    "a glob such as `docs/**/*.md`, relative to the workflow file",
                )
            })?
            .compile_matcher();
        // Walk only below the pattern's literal prefix (`docs/` of
        // `docs/**/*.md`), never the whole project.
        let prefix: PathBuf = Path::new(pattern)
            .components()
            .take_while(|c| {
                !c.as_os_str()
                    .to_string_lossy()
                    .contains(['*', '?', '[', '{'])
            })
            .collect();
        let joined = dir.join(&prefix);
        let base = normalize(&std::path::absolute(&joined).unwrap_or(joined));
        if !base.starts_with(&root) && !base.starts_with(&root_lexical) {
            return Err(err(
                format!("`{pattern}` leads out of the project folder"),
                "documents must be inside the project folder (the nearest folder with .git)",
            ));
        }
        let mut found = 0usize;
        let walk = walkdir::WalkDir::new(&base)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        for (visited, entry) in walk.enumerate() {
            if visited >= MAX_WALK_ENTRIES {
                return Err(err(
                    format!("`{pattern}` walks more than {MAX_WALK_ENTRIES} entries"),
                    "name a narrower folder in the glob",
                ));
            }
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_dir() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&base) else {
                continue;
            };
            // A pattern without wildcards walks the file itself: its
            // relative part is empty, and `join("")` would add a slash.
            let shown = if rel.as_os_str().is_empty() {
                prefix.clone()
            } else {
                prefix.join(rel)
            };
            if !glob.is_match(&shown) {
                continue;
            }
            let canonical = std::fs::canonicalize(entry.path()).map_err(|e| {
                err(
                    format!("cannot read `{}`: {e}", shown.display()),
                    "the path is relative to the workflow file",
                )
            })?;
            if !canonical.starts_with(&root) {
                return Err(err(
                    format!(
                        "`{}` resolves (through a link) outside the project folder",
                        shown.display()
                    ),
                    "documents must be inside the project folder (the nearest folder with .git)",
                ));
            }
            found += 1;
            if !seen.insert(canonical.clone()) {
                continue;
            }
            let text = crate::files::read_text(&canonical).map_err(|e| {
                err(
                    format!("cannot read `{}`: {e}", shown.display()),
                    e.hint().unwrap_or("documents are text files"),
                )
            })?;
            bytes += text.len();
            if docs.len() >= MAX_DOCUMENTS || bytes > MAX_SET_BYTES {
                return Err(err(
                    format!(
                        "the set holds more than {MAX_DOCUMENTS} documents or {} MiB",
                        MAX_SET_BYTES >> 20
                    ),
                    "split the documents over narrower globs, or retrieve from fewer",
                ));
            }
            docs.push(Document {
                source: shown.to_string_lossy().into_owned(),
                text,
            });
        }
        if found == 0 {
            return Err(err(
                format!("`{pattern}` matches no file"),
                "the glob is relative to the workflow file",
            ));
        }
    }
    Ok(docs)
}

/// The documents of an array input: each element a string (its source is
/// `name[i]`) or an object `{text, source?}`. `Err` names the bad element.
pub fn from_input(name: &str, value: &Value) -> Result<Vec<Document>, String> {
    let Value::Array(items) = value else {
        return Err(format!("input `{name}` must be a list of documents"));
    };
    if items.len() > MAX_DOCUMENTS {
        return Err(format!(
            "input `{name}` holds {} documents, more than {MAX_DOCUMENTS}",
            items.len()
        ));
    }
    let mut bytes = 0usize;
    let mut docs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (text, source) = match item {
            Value::String(s) => (s.clone(), format!("{name}[{i}]")),
            Value::Object(o) => match (o.get("text"), o.get("source")) {
                (Some(Value::String(t)), None) => (t.clone(), format!("{name}[{i}]")),
                (Some(Value::String(t)), Some(Value::String(s))) => (t.clone(), s.clone()),
                _ => {
                    return Err(format!(
                        "document {i} of input `{name}` must have a string `text` (and an optional string `source`)"
                    ));
                }
            },
            _ => {
                return Err(format!(
                    "document {i} of input `{name}` must be a string or an object {{text, source}}"
                ));
            }
        };
        bytes += text.len();
        if bytes > MAX_SET_BYTES {
            return Err(format!(
                "input `{name}` holds more than {} MiB of documents",
                MAX_SET_BYTES >> 20
            ));
        }
        docs.push(Document { source, text });
    }
    Ok(docs)
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Index of its document in the list given to [`chunk_all`].
    pub doc: usize,
    pub text: String,
    pub tokens: usize,
}

/// Cuts `text` into pieces of at most `max` tokens (each piece counted on
/// its own; a chunk's count is the sum of its pieces'), packing whole
/// paragraphs, else lines, else words, greedily; a word longer than `max`
/// is cut by characters. Empty or blank text gives no chunk.
pub fn chunk_text(text: &str, max: usize) -> Vec<(String, usize)> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_tokens = 0usize;
    let flush = |cur: &mut String, cur_tokens: &mut usize, out: &mut Vec<(String, usize)>| {
        if !cur.trim().is_empty() {
            out.push((std::mem::take(cur), *cur_tokens));
        }
        cur.clear();
        *cur_tokens = 0;
    };
    let mut pieces: Vec<(&str, usize)> = Vec::new();
    for para in text.split_inclusive("\n\n") {
        split_piece(para, max, 0, &mut pieces);
    }
    for (piece, n) in pieces {
        if cur_tokens + n > max {
            flush(&mut cur, &mut cur_tokens, &mut out);
        }
        cur.push_str(piece);
        cur_tokens += n;
    }
    flush(&mut cur, &mut cur_tokens, &mut out);
    out
}

/// `piece` as pieces of at most `max` tokens each, with their counts: whole
/// if it fits, else by lines (level 0), words (1), then characters (2).
fn split_piece<'a>(piece: &'a str, max: usize, level: u8, out: &mut Vec<(&'a str, usize)>) {
    let n = CHUNK_TOKENIZER.count(piece);
    if n <= max || piece.chars().nth(1).is_none() {
        out.push((piece, n));
        return;
    }
    match level {
        0 => piece
            .split_inclusive('\n')
            .for_each(|p| split_piece(p, max, 1, out)),
        1 => piece
            .split_inclusive(' ')
            .for_each(|p| split_piece(p, max, 2, out)),
        _ => {
            // A "word" of more than `max` tokens (a blob, a long URL): cut
            // in half at a character boundary until the halves fit.
            let mid = piece
                .char_indices()
                .map(|(i, _)| i)
                .find(|&i| i >= piece.len() / 2)
                .unwrap_or(0);
            let (a, b) = piece.split_at(mid);
            split_piece(a, max, 2, out);
            split_piece(b, max, 2, out);
        }
    }
}

/// Every document cut into chunks, in document order. `Err` past
/// [`MAX_CHUNKS`].
pub fn chunk_all<D: std::borrow::Borrow<Document>>(
    docs: &[D],
    max_tokens: usize,
) -> Result<Vec<Chunk>, String> {
    let mut chunks = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        for (text, tokens) in chunk_text(&d.borrow().text, max_tokens) {
            if chunks.len() >= MAX_CHUNKS {
                return Err(format!(
                    "the documents make more than {MAX_CHUNKS} chunks of {max_tokens} tokens"
                ));
            }
            chunks.push(Chunk {
                doc: i,
                text,
                tokens,
            });
        }
    }
    Ok(chunks)
}

/// A ranked chunk: its index in the chunk list, and its BM25 score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub chunk: usize,
    pub score: f32,
}

/// The `top_k` chunks most relevant to `query` by BM25, best first; equal
/// scores in chunk order, so the result is the same on every run. Chunks
/// that share no term with the query are never returned.
pub fn rank(chunks: &[Chunk], query: &str, top_k: usize) -> Vec<Hit> {
    if chunks.is_empty() || top_k == 0 {
        return Vec::new();
    }
    let docs = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| bm25::Document::new(i, c.text.as_str()));
    let engine =
        bm25::SearchEngineBuilder::<usize>::with_documents(bm25::Language::English, docs).build();
    // All matches, then our own order: the crate's ties follow a hash map.
    let mut hits: Vec<Hit> = engine
        .search(query, None)
        .into_iter()
        .map(|r| Hit {
            chunk: r.document.id,
            score: r.score,
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.chunk.cmp(&b.chunk)));
    hits.truncate(top_k);
    hits
}

/// What a template sees of one retrieved chunk (`retrieved[i]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retrieved {
    pub text: String,
    pub source: String,
    pub score: f64,
}

/// What retrieval did for one step: the plan's before/after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub documents: usize,
    pub chunks: usize,
    /// Tokens of every document (the sum of their chunks').
    pub document_tokens: u64,
    pub retrieved: usize,
    pub retrieved_tokens: u64,
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(source: &str, text: &str) -> Document {
        Document {
            source: source.into(),
            text: text.into(),
        }
    }

    #[test]
    fn chunks_fit_and_keep_every_word() {
        let text = "Alpha beta gamma.\n\nDelta epsilon.\nZeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau.\n\n".repeat(20)
            + &"x".repeat(300);
        for max in [1usize, 5, 12, 40, 400] {
            let chunks = chunk_text(&text, max);
            for (c, n) in &chunks {
                assert!(*n <= max, "{max}: {c:?}");
            }
            // Only whitespace-only pieces may be dropped.
            let visible = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            let joined: String = chunks.iter().map(|(c, _)| visible(c)).collect();
            assert_eq!(joined, visible(&text), "nothing lost or reordered at {max}");
        }
        assert!(chunk_text("  \n\n ", 10).is_empty());
    }

    #[test]
    fn ranks_the_relevant_chunk_first_and_breaks_ties_by_order() {
        let docs = [
            doc("a", "The cat sat on the mat."),
            doc("b", "Rust ownership and borrowing rules explained."),
            doc("c", "Ownership of cats is a big responsibility."),
            doc("d", "The cat sat on the mat."),
        ];
        let chunks = chunk_all(&docs, 100).unwrap();
        let hits = rank(&chunks, "borrowing rules in Rust", 2);
        assert_eq!(hits[0].chunk, 1);
        assert!(hits.len() <= 2);
        // Two identical documents score the same: the earlier one first.
        let hits = rank(&chunks, "mat", 5);
        assert_eq!(hits.iter().map(|h| h.chunk).collect::<Vec<_>>(), [0, 3]);
        assert!(
            rank(&chunks, "zebra", 5).is_empty(),
            "no shared term, no hit"
        );
        assert!(rank(&chunks, "cat", 0).is_empty());
    }

    #[test]
    fn input_documents_are_strings_or_text_objects() {
        let docs = from_input(
            "kb",
            &json!(["one", {"text": "two", "source": "faq.md"}, {"text": "three"}]),
        )
        .unwrap();
        let sources: Vec<_> = docs.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(sources, ["kb[0]", "faq.md", "kb[2]"]);
        let err = from_input("kb", &json!(["ok", {"source": "x"}])).unwrap_err();
        assert!(err.contains("document 1 of input `kb`"), "{err}");
        assert!(from_input("kb", &json!("text")).is_err());
    }

    #[test]
    fn globs_read_inside_the_project_only() {
        let root = std::env::temp_dir().join(format!("tollgate-retrieval-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("docs/sub")).unwrap();
        std::fs::write(root.join("docs/a.md"), "alpha").unwrap();
        std::fs::write(root.join("docs/sub/b.md"), "beta").unwrap();
        std::fs::write(root.join("docs/c.txt"), "gamma").unwrap();
        let docs = load_files(&["docs/**/*.md".into()], &root, &root).unwrap();
        let sources: Vec<_> = docs.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(sources, ["docs/a.md", "docs/sub/b.md"]);
        // A file named without a wildcard is that file.
        let docs = load_files(&["docs/c.txt".into()], &root, &root).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(
            (docs[0].source.as_str(), docs[0].text.as_str()),
            ("docs/c.txt", "gamma")
        );
        let e = load_files(&["docs/*.md".into(), "nope/*.md".into()], &root, &root).unwrap_err();
        assert_eq!(e.pattern, Some(1));
        assert!(e.message.contains("matches no file"), "{}", e.message);
        let e = load_files(&["../*.md".into()], &root, &root).unwrap_err();
        assert!(e.message.contains("out of the project"), "{}", e.message);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc/hostname", root.join("docs/link.md")).unwrap();
            let e = load_files(&["docs/*.md".into()], &root, &root).unwrap_err();
            assert!(e.message.contains("through a link"), "{}", e.message);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Issue 14's measure: building the index for 10,000 chunks and ranking
    /// them (counted, not timed: the test asserts the result, the time is
    /// printed with `--nocapture`).
    #[test]
    fn ten_thousand_chunks_index_and_rank() {
        let docs: Vec<Document> = (0..10_000)
            .map(|i| {
                doc(
                    &format!("d{i}"),
                    &format!("document {i} about topic{} and word{}", i % 97, i % 13),
                )
            })
            .collect();
        let chunks = chunk_all(&docs, 300).unwrap();
        assert_eq!(chunks.len(), 10_000);
        let t = std::time::Instant::now();
        let hits = rank(&chunks, "topic42 word3", 5);
        eprintln!("10,000 chunks indexed and ranked in {:?}", t.elapsed());
        // Both terms: i ≡ 42 (mod 97) and i ≡ 3 (mod 13); the first such i is 42.
        assert_eq!(hits[0].chunk, 42);
        assert_eq!(hits.len(), 5);
    }
}
