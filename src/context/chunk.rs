//! Chunking: a long text split into token-sized chunks with overlap, and a
//! long list of results grouped into token-sized groups (for a reduce that
//! still does not fit).
//!
//! Exposed to templates as the `chunks` filter —
//! `inputs.doc | chunks(2000, 200)` — which is what `context.chunk`
//! expands to: a chunked step is a `for_each` over the chunks, so every
//! chunk is one call that routing, the gate, the journal, `--resume` and
//! the cache see on its own. Chunks are cut between o200k_base tokens (never
//! inside a word); a chunk's token count by other tokenizers may differ
//! slightly (see [`crate::context::budget`]).

use minijinja::value::Value;
use minijinja::{Error, ErrorKind};

use crate::tokens::{self, Tokenizer};

/// At most this many chunks: the bound on a `for_each` list.
pub const MAX_CHUNKS: usize = 100_000;

/// At most this many bytes in all chunks together (overlap repeats text:
/// chunks of 1,000 tokens overlapping by 999 would copy a document a
/// thousand times over).
pub const MAX_CHUNK_BYTES: usize = 32 << 20;

/// Splits `text` into chunks of at most `size` tokens, each starting with
/// up to `overlap` tokens of the previous one's end. Empty text gives no
/// chunk. A single piece longer than `size` (a giant space-free run) is a
/// chunk of its own. Past [`MAX_CHUNKS`] or [`MAX_CHUNK_BYTES`] it stops
/// with the reason.
pub fn split(text: &str, size: usize, overlap: usize) -> Result<Vec<&str>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let size = size.max(1);
    let overlap = overlap.min(size - 1);
    // (byte offset, tokens before it) at every piece boundary, from 0.
    let mut pts = vec![(0usize, 0usize)];
    pts.extend(tokens::boundaries(Tokenizer::O200kBase, text));
    let last = pts.len() - 1;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut i = 0;
    loop {
        let (start, base) = pts[i];
        let mut j = i + 1;
        while j < last && pts[j + 1].1 - base <= size {
            j += 1;
        }
        out.push(&text[start..pts[j].0]);
        bytes += pts[j].0 - start;
        if out.len() > MAX_CHUNKS || bytes > MAX_CHUNK_BYTES {
            return Err(format!(
                "chunks: more than {MAX_CHUNKS} chunks or {} MB of chunks; use larger chunks or a smaller overlap",
                MAX_CHUNK_BYTES >> 20
            ));
        }
        if j == last {
            return Ok(out);
        }
        // The next chunk starts as far back as the overlap allows, but
        // always after this one's start (progress).
        let mut k = j;
        while k > i + 1 && pts[j].1 - pts[k - 1].1 <= overlap {
            k -= 1;
        }
        i = k;
    }
}

/// Groups `items` (their texts) so each group's texts together take at most
/// `size` tokens; an item over `size` alone is a group of its own. Returns
/// the groups as index ranges, in order.
pub fn group(texts: &[String], size: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0usize, 0usize);
    for (i, t) in texts.iter().enumerate() {
        let n = Tokenizer::O200kBase.count(t);
        if i > start && used + n > size {
            out.push(start..i);
            (start, used) = (i, 0);
        }
        used += n;
    }
    if start < texts.len() {
        out.push(start..texts.len());
    }
    out
}

/// The `chunks(tokens, overlap=0)` template filter: a string becomes the
/// list of its chunks ([`split`]); a list becomes a list of groups of its
/// elements ([`group`], elements that are not strings counted as JSON).
pub fn filter(value: Value, size: i64, overlap: Option<i64>) -> Result<Value, Error> {
    let bad = |m: String| Error::new(ErrorKind::InvalidOperation, m);
    let size = usize::try_from(size)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            bad(format!(
                "chunks: the size must be a positive number of tokens, got {size}"
            ))
        })?;
    let overlap = usize::try_from(overlap.unwrap_or(0))
        .ok()
        .filter(|&o| o < size)
        .ok_or_else(|| {
            bad("chunks: the overlap must be at least 0 and less than the size".to_owned())
        })?;
    if let Some(text) = value.as_str() {
        return Ok(Value::from(
            split(text, size, overlap)
                .map_err(bad)?
                .into_iter()
                .map(Value::from)
                .collect::<Vec<_>>(),
        ));
    }
    if value.kind() == minijinja::value::ValueKind::Seq {
        let items: Vec<Value> = value.try_iter()?.collect();
        let texts: Vec<String> = items
            .iter()
            .map(|v| match v.as_str() {
                Some(s) => s.to_owned(),
                None => serde_json::to_string(v).unwrap_or_default(),
            })
            .collect();
        return Ok(Value::from(
            group(&texts, size)
                .into_iter()
                .map(|r| Value::from(items[r].to_vec()))
                .collect::<Vec<_>>(),
        ));
    }
    Err(bad(format!(
        "chunks: expects a text or a list, got {}",
        value.kind()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> String {
        (0..n)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn chunks_cover_the_text_within_size_and_overlap() {
        let text = words(2000);
        let total = Tokenizer::O200kBase.count(&text);
        for (size, overlap) in [(100, 0), (100, 20), (257, 50), (5000, 10)] {
            let chunks = split(&text, size, overlap).unwrap();
            for c in &chunks {
                assert!(Tokenizer::O200kBase.count(c) <= size, "{size}");
            }
            // In order, overlapping by at most `overlap` tokens, covering all.
            let mut at = 0usize;
            for c in &chunks {
                let start = text[at.saturating_sub(c.len())..].find(c).unwrap()
                    + at.saturating_sub(c.len());
                assert!(start <= at, "no gap");
                assert!(Tokenizer::O200kBase.count(&text[start..at]) <= overlap + 1);
                at = start + c.len();
            }
            assert_eq!(at, text.len());
            if overlap == 0 {
                let sum: usize = chunks.iter().map(|c| Tokenizer::O200kBase.count(c)).sum();
                assert!(
                    sum >= total && sum <= total + chunks.len(),
                    "exact up to joins"
                );
                assert_eq!(chunks.concat(), text);
            }
        }
        assert!(split("", 10, 0).unwrap().is_empty());
        assert_eq!(split("short", 10, 5).unwrap(), vec!["short"]);
    }

    #[test]
    fn a_huge_overlap_is_refused_not_copied() {
        // 1,000-token chunks moving one word at a time: about 100,000
        // chunks of ~3 KB, far past the byte bound; refused early.
        let text = words(100_000);
        let err = split(&text, 1000, 999).unwrap_err();
        assert!(err.contains("smaller overlap"), "{err}");
    }

    #[test]
    fn groups_bound_their_tokens() {
        let texts: Vec<String> = (0..10).map(|_| words(30)).collect();
        let per = Tokenizer::O200kBase.count(&texts[0]);
        let groups = group(&texts, per * 3);
        assert_eq!(groups, vec![0..3, 3..6, 6..9, 9..10]);
        assert_eq!(
            group(&texts, 1).len(),
            10,
            "an oversized item is its own group"
        );
        assert!(group(&[], 10).is_empty());
    }

    #[test]
    fn the_filter_refuses_bad_arguments() {
        assert!(filter(Value::from("x"), 0, None).is_err());
        assert!(filter(Value::from("x"), 10, Some(10)).is_err());
        assert!(filter(Value::from(3), 10, None).is_err());
        let v = filter(Value::from(words(300)), 100, Some(10)).unwrap();
        assert!(v.len().unwrap() >= 3);
    }
}
