//! Budget and trimming: cutting an input's text to a number of tokens.
//!
//! Cuts are made between tokens (at the pre-tokenizer's piece boundaries,
//! so never inside a word) and leave a visible marker saying how much was
//! cut, so neither the model nor a reader of the request mistakes the rest
//! for the whole.
//!
//! Which tokenizer: the call is trimmed before routing picks a model (the
//! route depends on the trimmed size), so the cut must hold for any model
//! the step may go to. [`count`] is the larger of the two exact OpenAI
//! counts (o200k_base, cl100k_base); models without a public tokenizer are
//! estimated with o200k_base (see [`crate::tokens`]), so for them the
//! budget is an estimate too — leave headroom (±20%) below their window.

use serde::{Deserialize, Serialize};

use crate::tokens::{self, Tokenizer};

/// Where the cut is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trim {
    /// Cut the end: keep the beginning (a document's opening).
    End,
    /// Cut the start: keep the end (a log's latest lines).
    Start,
    /// Cut the middle: keep the beginning and the end, half each.
    Middle,
    /// Like `middle`, but only whole lines are kept.
    Lines,
}

impl Trim {
    pub fn name(self) -> &'static str {
        match self {
            Trim::End => "end",
            Trim::Start => "start",
            Trim::Middle => "middle",
            Trim::Lines => "lines",
        }
    }
}

/// The conservative token count of `text`: the larger of o200k_base and
/// cl100k_base.
pub fn count(text: &str) -> usize {
    Tokenizer::O200kBase
        .count(text)
        .max(Tokenizer::Cl100kBase.count(text))
}

/// The conservative count of a chat request with these messages.
pub fn count_chat(messages: &[&str]) -> usize {
    tokens::count_chat(Tokenizer::O200kBase, messages)
        .max(tokens::count_chat(Tokenizer::Cl100kBase, messages))
}

/// The text put where tokens were cut.
pub fn marker(cut: usize) -> String {
    format!("[… {} tokens cut …]", thousands(cut))
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What [`cut`] made of a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// The kept text, with the marker where text was cut (the text itself
    /// when it fits).
    pub text: String,
    /// o200k_base tokens of the original and of what was kept of it (the
    /// marker not counted).
    pub tokens_before: usize,
    pub tokens_kept: usize,
}

/// How many attempts [`cut`] makes to satisfy both encodings: each shrinks
/// the o200k allowance by the other's excess, which converges in one or
/// two; the last falls back to half of it.
const ATTEMPTS: usize = 6;

/// Cuts `text` so that [`count`] of the result, marker included, is at most
/// `limit`. A text that fits is returned as it is; a limit too small for
/// even the marker gives just the marker (the caller reserves room for it,
/// see [`marker_reserve`]).
pub fn cut(text: &str, limit: usize, trim: Trim) -> Cut {
    let b = tokens::boundaries(Tokenizer::O200kBase, text);
    let total = b.last().map_or(0, |&(_, n)| n);
    if count(text) <= limit {
        return Cut {
            text: text.to_owned(),
            tokens_before: total,
            tokens_kept: total,
        };
    }
    let mut keep = limit.saturating_sub(marker_reserve());
    for attempt in 0..ATTEMPTS {
        let c = cut_o200k(text, &b, total, keep, trim);
        let n = count(&c.text);
        if n <= limit || keep == 0 {
            return c;
        }
        keep = if attempt + 2 == ATTEMPTS {
            keep / 2
        } else {
            keep.saturating_sub(n - limit)
        };
    }
    cut_o200k(text, &b, total, 0, trim)
}

/// Tokens the marker may take, by either encoding, with the largest count
/// it can show, plus its line breaks.
pub fn marker_reserve() -> usize {
    count(&format!("\n{}\n", marker(999_999_999_999)))
}

/// Keeps `keep` o200k tokens of `text` (whose boundaries are `b`).
fn cut_o200k(text: &str, b: &[(usize, usize)], total: usize, keep: usize, trim: Trim) -> Cut {
    // The byte offset after at most `n` tokens from the start, and the
    // offset from which at most `n` tokens remain to the end.
    let head_end = |n: usize| {
        let i = b.partition_point(|&(_, c)| c <= n);
        if i == 0 { 0 } else { b[i - 1].0 }
    };
    let tail_start = |n: usize| {
        let i = b.partition_point(|&(_, c)| c < total.saturating_sub(n));
        if i >= b.len() { text.len() } else { b[i].0 }
    };
    let (head, tail) = match trim {
        Trim::End => (head_end(keep), text.len()),
        Trim::Start => (0, tail_start(keep)),
        Trim::Middle => (head_end(keep / 2), tail_start(keep - keep / 2)),
        Trim::Lines => {
            let (h, t) = (head_end(keep / 2), tail_start(keep - keep / 2));
            // Back to the last line break kept in the head, forward to the
            // first one in the tail.
            let h = text[..h].rfind('\n').map_or(0, |i| i + 1);
            let t = text[t..].find('\n').map_or(text.len(), |i| t + i + 1);
            (h, t.max(h))
        }
    };
    let kept_tokens = |range: &str| Tokenizer::O200kBase.count(range);
    let (a, z) = (&text[..head], &text[tail..]);
    let kept = kept_tokens(a) + kept_tokens(z);
    let m = marker(total.saturating_sub(kept));
    let text = match (a.is_empty(), z.is_empty()) {
        (true, true) => m,
        (false, true) => format!("{}\n{m}", a.trim_end_matches('\n')),
        (true, false) => format!("{m}\n{}", z.trim_start_matches('\n')),
        (false, false) => format!(
            "{}\n{m}\n{}",
            a.trim_end_matches('\n'),
            z.trim_start_matches('\n')
        ),
    };
    Cut {
        text,
        tokens_before: total,
        tokens_kept: kept,
    }
}

/// Shares `available` tokens among texts of these sizes: each gets at most
/// its size, and what a small one leaves goes to the larger ones (water
/// filling), so a short input is never cut to make room for a long one.
pub fn share(available: usize, sizes: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| sizes[i]);
    let mut out = vec![0; sizes.len()];
    let mut left = available;
    for (k, &i) in order.iter().enumerate() {
        let fair = left / (sizes.len() - k);
        out[i] = sizes[i].min(fair);
        left -= out[i];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> String {
        (1..=200)
            .map(|i| format!("Line {i}: the quick brown fox jumps over the lazy dog."))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_text_that_fits_is_untouched() {
        let c = cut("hello world", 10, Trim::Middle);
        assert_eq!(c.text, "hello world");
        assert_eq!((c.tokens_before, c.tokens_kept), (2, 2));
    }

    #[test]
    fn every_trim_fits_its_limit_and_marks_the_cut() {
        let text = doc();
        for trim in [Trim::End, Trim::Start, Trim::Middle, Trim::Lines] {
            for limit in [40, 100, 333] {
                let c = cut(&text, limit, trim);
                assert!(
                    count(&c.text) <= limit,
                    "{trim:?} {limit}: {}",
                    count(&c.text)
                );
                assert!(c.tokens_kept < c.tokens_before);
                let cut_n = c.tokens_before - c.tokens_kept;
                assert!(c.text.contains(&marker(cut_n)), "{trim:?}: {}", c.text);
            }
        }
    }

    #[test]
    fn each_trim_keeps_its_part() {
        let text = doc();
        let end = cut(&text, 100, Trim::End).text;
        assert!(end.starts_with("Line 1:") && !end.contains("Line 200"));
        let start = cut(&text, 100, Trim::Start).text;
        assert!(
            start.ends_with("lazy dog.")
                && start.contains("Line 200")
                && !start.contains("Line 1:")
        );
        let middle = cut(&text, 100, Trim::Middle).text;
        assert!(
            middle.starts_with("Line 1:")
                && middle.contains("Line 200")
                && !middle.contains("Line 100:")
        );
        let lines = cut(&text, 100, Trim::Lines).text;
        // Whole lines only: every line is a full line of the text or the marker.
        for line in lines.lines() {
            assert!(
                line.starts_with("[…") || (line.starts_with("Line ") && line.ends_with("dog.")),
                "{line:?}"
            );
        }
    }

    #[test]
    fn cuts_never_split_a_word_or_a_character() {
        let text = "naïve café 東京タワー ".repeat(300);
        for trim in [Trim::End, Trim::Start, Trim::Middle] {
            let c = cut(&text, 50, trim);
            assert!(count(&c.text) <= 50);
            // Valid UTF-8 by construction; the kept words are whole.
            for w in c
                .text
                .split_whitespace()
                .filter(|w| !w.contains('…') && !w.contains('[') && !w.contains(']'))
            {
                assert!(
                    ["naïve", "café", "東京タワー", "tokens", "cut"].contains(&w)
                        || w.chars().all(|c| c.is_ascii_digit() || c == ','),
                    "{w:?}"
                );
            }
        }
    }

    #[test]
    fn a_tiny_limit_gives_only_the_marker() {
        let c = cut(&doc(), 3, Trim::End);
        assert_eq!(c.tokens_kept, 0);
        assert!(c.text.starts_with("[… "), "{}", c.text);
    }

    #[test]
    fn numbers_have_thousands_separators() {
        assert_eq!(marker(1234), "[… 1,234 tokens cut …]");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn shares_fill_small_inputs_first() {
        assert_eq!(share(100, &[10, 500, 500]), vec![10, 45, 45]);
        assert_eq!(share(100, &[10, 20]), vec![10, 20]);
        assert_eq!(share(0, &[10, 20]), vec![0, 0]);
        assert_eq!(share(7, &[]), Vec::<usize>::new());
    }
}
