//! Exact tiktoken counts from tables built at compile time (see `build.rs`).
//!
//! This is tiktoken's `encode_ordinary` reduced to counting: the text is
//! split into pieces by the encoding's pre-tokenizer regex, a piece that is
//! a token counts 1, any other piece is merged pair by pair, lowest rank
//! first, exactly as tiktoken's `byte_pair_encode` does (its small-piece and
//! large-piece algorithms both, chosen at the same length), and its parts
//! are counted. The ranks come from a hash table embedded in the binary and
//! read in place, so nothing is decoded or allocated before the first count;
//! the only start-up cost is compiling the pre-tokenizer (a few ms), once
//! per encoding and only when it is first used.
//!
//! Invariant: every count equals `tiktoken_rs`'s `encode_ordinary(text).len()`
//! for the same encoding (the tests compare them on varied and random text,
//! and check that every token of the vocabulary is found with its rank).

use std::collections::BinaryHeap;

use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

/// A rank no token has: "no such pair" in the merge loops.
const NONE: u32 = u32::MAX;

/// Pieces shorter than this merge with tiktoken's quadratic loop, longer
/// ones with its heap; the same threshold as tiktoken's `byte_pair_encode`.
const LARGE_PIECE: usize = 100;

/// One encoding: its vocabulary table and its pre-tokenizer.
pub(super) struct Bpe {
    table: Table,
    splitter: Splitter,
}

impl Bpe {
    /// o200k_base: tiktoken-rs's `O200K_BASE_PAT_STR`, with its one
    /// look-ahead (`\s+(?!\S)`) rewritten for a regex engine without
    /// look-around (see [`Splitter`]).
    pub(super) fn o200k_base() -> Bpe {
        let first = [
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"\p{N}{1,3}",
            r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
            r"\s*[\r\n]+",
            // `\s+(?!\S)` where the text ends.
            r"\s+$",
        ]
        .join("|");
        Bpe {
            table: Table::new(include_bytes!(concat!(
                env!("OUT_DIR"),
                "/o200k_base.tokens"
            ))),
            splitter: Splitter::new(&first, r"\s+"),
        }
    }

    /// cl100k_base: tiktoken-rs's pattern
    /// `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`.
    /// Its possessive quantifiers never give back anything a backtracking
    /// match would use (each is followed by a class it excludes, or by
    /// nothing), so the plain forms match the same; the last `\s` is
    /// reached only for a single space before a non-space, where `\s+`
    /// matches the same one character.
    pub(super) fn cl100k_base() -> Bpe {
        let first = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]";
        Bpe {
            table: Table::new(include_bytes!(concat!(
                env!("OUT_DIR"),
                "/cl100k_base.tokens"
            ))),
            splitter: Splitter::new(first, r"\s"),
        }
    }

    /// The number of tokens `encode_ordinary(text)` would return.
    pub(super) fn count(&self, text: &str) -> usize {
        self.splitter
            .pieces(text)
            .map(|piece| self.count_piece(piece.as_bytes()))
            .sum()
    }

    /// The pre-tokenizer's pieces of `text` with their token counts, in
    /// order: a cut between two pieces is a cut between two tokens, and
    /// the counts add up to [`Bpe::count`] (context trimming cuts here).
    pub(super) fn piece_counts<'t>(
        &'t self,
        text: &'t str,
    ) -> impl Iterator<Item = (&'t str, usize)> + 't {
        self.splitter
            .pieces(text)
            .map(|piece| (piece, self.count_piece(piece.as_bytes())))
    }

    /// A token's rank, if `bytes` is one (for the tests' checks of the table).
    #[cfg(test)]
    pub(super) fn rank(&self, bytes: &[u8]) -> Option<u32> {
        self.table.rank(bytes)
    }

    fn count_piece(&self, piece: &[u8]) -> usize {
        // Every single byte is a token (byte-level BPE; a test checks).
        if piece.len() <= 1 || self.table.rank(piece).is_some() {
            return piece.len().min(1);
        }
        if piece.len() < LARGE_PIECE {
            self.merge_small(piece)
        } else {
            self.merge_large(piece)
        }
    }

    /// tiktoken's `_byte_pair_merge`: `parts` holds (start, rank of the pair
    /// starting there); the lowest-ranked pair (leftmost on ties) is merged
    /// until none is left. O(n·m), fastest for short pieces.
    fn merge_small(&self, piece: &[u8]) -> usize {
        let rank = |range: std::ops::Range<usize>| self.table.rank(&piece[range]).unwrap_or(NONE);
        let mut parts: Vec<(usize, u32)> =
            (0..piece.len() - 1).map(|i| (i, rank(i..i + 2))).collect();
        parts.push((piece.len() - 1, NONE));
        parts.push((piece.len(), NONE));
        // The rank of the pair that would start at part `i` once part
        // `i + 1` is merged into it (it ends where part `i + 3` starts).
        let merged_rank = |parts: &[(usize, u32)], i: usize| {
            if i + 3 < parts.len() {
                rank(parts[i].0..parts[i + 3].0)
            } else {
                NONE
            }
        };
        loop {
            let (min, i) = parts[..parts.len() - 1].iter().enumerate().fold(
                (NONE, 0),
                |best, (i, &(_, r))| if r < best.0 { (r, i) } else { best },
            );
            if min == NONE {
                break;
            }
            if i > 0 {
                parts[i - 1].1 = merged_rank(&parts, i - 1);
            }
            parts[i].1 = merged_rank(&parts, i);
            parts.remove(i + 1);
        }
        parts.len() - 1
    }

    /// tiktoken's `_byte_pair_merge_large`: the same merges driven by a heap
    /// of candidate pairs over a linked list of parts, O(n log n).
    fn merge_large(&self, piece: &[u8]) -> usize {
        let rank = |range: std::ops::Range<usize>| self.table.rank(&piece[range]);
        // state[i]: the part starting at byte i (valid while reachable):
        // it ends at `end`; the pair it starts runs to `next_end` and has
        // rank `next_rank` (NONE: no such token, or invalidated).
        let mut state: Vec<Part> = (0..piece.len())
            .map(|i| Part {
                prev: i.wrapping_sub(1),
                end: i + 1,
                next_end: i + 2,
                next_rank: NONE,
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(piece.len());
        for (i, part) in state.iter_mut().enumerate().take(piece.len() - 1) {
            if let Some(r) = rank(i..i + 2) {
                heap.push(Merge { start: i, rank: r });
                part.next_rank = r;
            }
        }
        let propose =
            |state: &mut Vec<Part>, heap: &mut BinaryHeap<Merge>, start: usize, end: usize| {
                state[start].next_end = end;
                state[start].next_rank = NONE;
                if end <= piece.len() {
                    if let Some(r) = rank(start..end) {
                        heap.push(Merge { start, rank: r });
                        state[start].next_rank = r;
                    }
                }
            };
        while let Some(left) = heap.pop() {
            if left.rank != state[left.start].next_rank {
                continue; // superseded by a later merge
            }
            let start = left.start;
            let right = state[start].end;
            let right_end = state[start].next_end;
            let right_next_end = state[right].next_end;
            state[start].end = right_end;
            propose(&mut state, &mut heap, start, right_next_end);
            if right_end < state.len() {
                state[right_end].prev = start;
            }
            if start > 0 {
                let prev = state[start].prev;
                propose(&mut state, &mut heap, prev, right_end);
            }
            state[right].next_rank = NONE;
        }
        let mut count = 0;
        let mut i = 0;
        while i < state.len() {
            count += 1;
            i = state[i].end;
        }
        count
    }
}

struct Part {
    prev: usize,
    end: usize,
    next_end: usize,
    next_rank: u32,
}

/// A candidate merge; the heap pops the lowest rank, then the leftmost.
#[derive(PartialEq, Eq)]
struct Merge {
    start: usize,
    rank: u32,
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.start.cmp(&self.start))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The pre-tokenizer: tiktoken's alternation as three patterns tried in
/// order at each position, leftmost-first (what a backtracking engine does
/// with `first|\s+(?!\S)|last`). The look-ahead `\s+(?!\S)` is matched as
/// `\s+\s` and its last character given back: a run of k ≥ 2 spaces before
/// a non-space yields k − 1 of them either way (a run that ends the text is
/// `first`'s `\s+$`).
struct Splitter {
    regex: Regex,
}

/// The index of the look-ahead pattern in [`Splitter::regex`].
const LOOKAHEAD: usize = 1;

impl Splitter {
    fn new(first: &str, last: &str) -> Splitter {
        let regex = Regex::new_many(&[first, r"\s+\s", last])
            .expect("the pre-tokenizer patterns are valid");
        Splitter { regex }
    }

    fn pieces<'t>(&'t self, text: &'t str) -> impl Iterator<Item = &'t str> + 't {
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= text.len() {
                return None;
            }
            let rest = &text[at..];
            let input = Input::new(rest).anchored(Anchored::Yes);
            let end = match self.regex.find(input) {
                Some(m) if m.pattern().as_usize() == LOOKAHEAD => {
                    let matched = &rest[..m.end()];
                    let last = matched.chars().next_back().map_or(0, char::len_utf8);
                    m.end() - last
                }
                Some(m) if m.end() > 0 => m.end(),
                // Every character is a letter, number, space or other, and
                // each alternative set covers all four, so this does not
                // happen; counting the rest as one piece keeps a surprise
                // an over- rather than an under-count.
                _ => rest.len(),
            };
            at += end;
            Some(&rest[..end])
        })
    }
}

/// The embedded vocabulary (layout in `build.rs`), read in place.
struct Table {
    mask: usize,
    starts: &'static [u8],
    ranks: &'static [u8],
    slots: &'static [u8],
    bytes: &'static [u8],
}

/// The `i`th little-endian u32 of `words`.
fn word(words: &[u8], i: usize) -> usize {
    let b: [u8; 4] = words[4 * i..4 * i + 4].try_into().expect("4 bytes");
    u32::from_le_bytes(b) as usize
}

impl Table {
    fn new(blob: &'static [u8]) -> Table {
        assert_eq!(&blob[..4], b"TGB1", "a token table from build.rs");
        let (n, slots) = (word(blob, 1), word(blob, 2));
        assert!(slots.is_power_of_two() && slots > n);
        let (starts, rest) = blob[12..].split_at(4 * (n + 1));
        let (ranks, rest) = rest.split_at(4 * n);
        let (table, bytes) = rest.split_at(4 * slots);
        Table {
            mask: slots - 1,
            starts,
            ranks,
            slots: table,
            bytes,
        }
    }

    fn rank(&self, key: &[u8]) -> Option<u32> {
        let mut slot = hash(key) as usize & self.mask;
        loop {
            let entry = word(self.slots, slot);
            if entry == 0 {
                return None;
            }
            let token = entry - 1;
            if &self.bytes[word(self.starts, token)..word(self.starts, token + 1)] == key {
                return Some(word(self.ranks, token) as u32);
            }
            slot = (slot + 1) & self.mask;
        }
    }

    #[cfg(test)]
    fn tokens(&self) -> impl Iterator<Item = (&'static [u8], u32)> + '_ {
        let n = self.ranks.len() / 4;
        (0..n).map(|t| {
            (
                &self.bytes[word(self.starts, t)..word(self.starts, t + 1)],
                word(self.ranks, t) as u32,
            )
        })
    }
}

/// FNV-1a, 64 bits: the hash `build.rs` placed the tokens with.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> [(Bpe, &'static tiktoken_rs::CoreBPE); 2] {
        [
            (Bpe::o200k_base(), tiktoken_rs::o200k_base_singleton()),
            (Bpe::cl100k_base(), tiktoken_rs::cl100k_base_singleton()),
        ]
    }

    #[test]
    fn every_token_is_found_with_its_rank() {
        for (bpe, tik) in pairs() {
            let mut n = 0;
            for (bytes, rank) in bpe.table.tokens() {
                assert_eq!(bpe.rank(bytes), Some(rank));
                assert_eq!(tik.decode_bytes(&[rank]).expect("a token"), bytes);
                n += 1;
            }
            assert!(n > 100_000, "{n}");
            for b in 0..=255u8 {
                assert!(bpe.rank(&[b]).is_some(), "byte {b}");
            }
            assert_eq!(bpe.rank(b"<|endoftext|>"), None);
            assert_eq!(bpe.rank(b"\xff\xfe\xfd not a token at all"), None);
        }
    }

    #[test]
    fn pieces_split_like_tiktoken() {
        let o200k = Bpe::o200k_base();
        let pieces: Vec<&str> = o200k.splitter.pieces("Hello  world\n\n  x  ").collect();
        assert_eq!(pieces, ["Hello", " ", " world", "\n\n", " ", " x", "  "]);
    }

    #[test]
    fn both_merge_algorithms_agree() {
        for (bpe, tik) in pairs() {
            for piece in [
                "x".repeat(150),
                "ab".repeat(120),
                "qzjx".repeat(40),
                "!?#".repeat(50),
            ] {
                let bytes = piece.as_bytes();
                let want = tik.encode_ordinary(&piece).len();
                // One piece each (no spaces, one character class).
                assert_eq!(bpe.splitter.pieces(&piece).count(), 1, "{piece}");
                assert_eq!(bpe.merge_large(bytes), want, "{piece}");
                if bytes.len() < 2 * LARGE_PIECE {
                    assert_eq!(bpe.merge_small(bytes), want, "{piece}");
                }
            }
        }
    }

    /// Text shaped to hurt a BPE counter or its pre-tokenizer: one piece
    /// far past the small-piece loop, long whitespace runs before a word
    /// (the rewritten look-ahead), endless digits, combining marks, bytes
    /// that form no token together, and alternating line breaks. Each is
    /// counted exactly (tiktoken agrees) — and in bounded work, since the
    /// large-piece path is a heap and `Tokenizer::count` cuts segments.
    #[test]
    fn hostile_shapes_count_exactly() {
        let shapes = [
            "z".repeat(8_000),
            format!("{}word", " ".repeat(8_000)),
            format!("{}\n", "\t ".repeat(4_000)),
            "7".repeat(8_000),
            format!("a{}", "\u{301}".repeat(3_000)),
            "\u{10FFFF}\u{E000}".repeat(1_500),
            "\r\n \n\r ".repeat(1_500),
            "'s'll've".repeat(1_000),
        ];
        for (bpe, tik) in pairs() {
            for text in &shapes {
                assert_eq!(
                    bpe.count(text),
                    tik.encode_ordinary(text).len(),
                    "{:?}…",
                    &text.chars().take(12).collect::<String>()
                );
            }
        }
    }
}
