//! Token counting for cost estimates and context-window checks.
//!
//! OpenAI publishes its tokenizers, so for OpenAI models tollgate counts
//! exactly, with the `o200k_base` or `cl100k_base` encoding: tiktoken-rs's
//! vocabularies, laid out at build time so that counting needs no
//! tokenizer to be built at start-up (see [`bpe`]); the counts are
//! tiktoken's, exactly.
//! Anthropic, Google, Mistral and the open-weight families do not ship a
//! usable offline tokenizer; for them the `o200k_base` count is used as an
//! [`Tokenizer::Estimate`] (modern BPE vocabularies land within roughly ±20%
//! of each other on English text and code) and reported as such, so callers
//! can show "~1,234 tokens" instead of a false exact figure.
//!
//! Counting uses `encode_ordinary`: text from workflows and documents is data,
//! and a literal `<|endoftext|>` in it must be counted as the characters it
//! is, not as a special control token (which would also fail or panic in the
//! special-token-aware encoders).

mod bpe;

use std::sync::OnceLock;

use bpe::Bpe;
use serde::Serialize;

/// Tokens OpenAI's chat format adds around every message
/// (`<|start|>{role}<|message|>...<|end|>`), per OpenAI's cookbook.
const TOKENS_PER_MESSAGE: usize = 3;

/// Tokens that prime the assistant's reply (`<|start|>assistant<|message|>`),
/// added once per request.
const REPLY_PRIMING_TOKENS: usize = 3;

/// Segments are cut at the first safe boundary after this many bytes.
/// See [`count_segmented`].
const SOFT_SEGMENT_BYTES: usize = 4 * 1024;

/// A segment without any safe boundary is cut here regardless.
/// See [`count_segmented`].
const HARD_SEGMENT_BYTES: usize = 16 * 1024;

/// A tokenizer tollgate can count with.
///
/// `Ord` so that plans can keep the set of tokenizers they need in a
/// `BTreeSet` and iterate it in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// GPT-4o, GPT-4.1, GPT-5 and the o-series.
    O200kBase,
    /// GPT-4 and GPT-3.5-turbo.
    Cl100kBase,
    /// Any other model: the `o200k_base` count, as an approximation.
    Estimate,
}

impl Tokenizer {
    /// The name used in configuration and reports: "o200k_base",
    /// "cl100k_base" or "estimate".
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::O200kBase => "o200k_base",
            Tokenizer::Cl100kBase => "cl100k_base",
            Tokenizer::Estimate => "estimate",
        }
    }

    /// The inverse of [`Tokenizer::name`]; `None` for unknown names.
    pub fn from_name(name: &str) -> Option<Tokenizer> {
        match name.trim() {
            "o200k_base" => Some(Tokenizer::O200kBase),
            "cl100k_base" => Some(Tokenizer::Cl100kBase),
            "estimate" => Some(Tokenizer::Estimate),
            _ => None,
        }
    }

    /// Whether [`Tokenizer::count`] is the count the provider will bill.
    /// `false` for [`Tokenizer::Estimate`], whose counts are approximations.
    pub fn is_exact(self) -> bool {
        !matches!(self, Tokenizer::Estimate)
    }

    /// Number of tokens in `text`.
    ///
    /// For [`Tokenizer::Estimate`] this is the `o200k_base` count: the
    /// tokenizers of non-OpenAI families are not public, and a real modern
    /// BPE count is a better estimate than a characters-divided-by-four rule.
    ///
    /// The first call for an encoding compiles its pre-tokenizer (a few
    /// milliseconds); later calls reuse it.
    pub fn count(self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        count_segmented(self.bpe(), text, SOFT_SEGMENT_BYTES, HARD_SEGMENT_BYTES)
    }

    /// The encoding, set up on first use: process-wide, read-only, and
    /// only for the encodings actually used.
    fn bpe(self) -> &'static Bpe {
        static O200K: OnceLock<Bpe> = OnceLock::new();
        static CL100K: OnceLock<Bpe> = OnceLock::new();
        match self {
            Tokenizer::O200kBase | Tokenizer::Estimate => O200K.get_or_init(Bpe::o200k_base),
            Tokenizer::Cl100kBase => CL100K.get_or_init(Bpe::cl100k_base),
        }
    }
}

/// The tokenizer to count a model's tokens with.
///
/// OpenAI models get their real encoding: for provider kind "openai", and for
/// "openrouter" / "openai-compatible" when the model is named
/// "openai/<model>" (the only way to know a gateway is serving an OpenAI
/// model). tiktoken-rs's own model table is consulted first, so its
/// knowledge of snapshots and fine-tunes ("ft:gpt-4o-mini:...") is reused;
/// names it does not know fall back to family prefixes (gpt-4o*, gpt-4.1*,
/// gpt-4.5*, gpt-5*, o1*, o3*, o4* -> o200k_base; gpt-4*, gpt-3.5-turbo* ->
/// cl100k_base). Unknown OpenAI families (a future encoding) and every other
/// provider get [`Tokenizer::Estimate`].
pub fn tokenizer_for(provider_kind: &str, model: &str) -> Tokenizer {
    let kind = provider_kind.trim().to_ascii_lowercase();
    let model = model.trim().to_ascii_lowercase();
    let openai_model = match kind.as_str() {
        "openai" => Some(model.strip_prefix("openai/").unwrap_or(&model)),
        "openrouter" | "openai-compatible" => model.strip_prefix("openai/"),
        _ => None,
    };
    match openai_model {
        Some(name) if !name.is_empty() => openai_tokenizer(name),
        _ => Tokenizer::Estimate,
    }
}

/// The encoding of an OpenAI model name (already lowercased).
fn openai_tokenizer(name: &str) -> Tokenizer {
    use tiktoken_rs::tokenizer::{Tokenizer as Tk, get_tokenizer};
    match get_tokenizer(name) {
        // o200k_harmony (gpt-oss) is o200k_base plus chat special tokens;
        // ordinary text encodes identically.
        Some(Tk::O200kBase | Tk::O200kHarmony) => Tokenizer::O200kBase,
        Some(Tk::Cl100kBase) => Tokenizer::Cl100kBase,
        // GPT-3-era encodings (p50k, r50k, gpt2): not shipped, estimate.
        Some(_) => Tokenizer::Estimate,
        None => {
            let base = name.strip_prefix("ft:").unwrap_or(name);
            let base = base.split(':').next().unwrap_or(base);
            let is_family = |family: &str| {
                base == family
                    || base
                        .strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with('-'))
            };
            if base.starts_with("gpt-5")
                || [
                    "gpt-4o",
                    "gpt-4.1",
                    "gpt-4.5",
                    "chatgpt-4o",
                    "o1",
                    "o3",
                    "o4",
                ]
                .into_iter()
                .any(is_family)
            {
                Tokenizer::O200kBase
            } else if ["gpt-4", "gpt-3.5-turbo", "gpt-35-turbo"]
                .into_iter()
                .any(is_family)
            {
                Tokenizer::Cl100kBase
            } else {
                Tokenizer::Estimate
            }
        }
    }
}

/// Tokens a chat request costs for messages with these contents.
///
/// OpenAI's documented accounting: 3 tokens of framing per message plus 3
/// tokens priming the reply, plus the content tokens. Only contents are
/// passed in, so the role name (1 token for "system", "user" or
/// "assistant" in OpenAI's cookbook accounting) is not included; other
/// providers frame messages differently, so for them the total is as much an
/// estimate as the content counts.
pub fn count_chat(tok: Tokenizer, messages: &[&str]) -> usize {
    messages
        .iter()
        .map(|content| tok.count(content))
        .sum::<usize>()
        + chat_overhead(messages.len())
}

/// The tokens the chat format adds to `messages` messages (the frame of
/// each, and the reply priming): [`count_chat`] less the contents, for a
/// caller that has counted the contents already.
pub fn chat_overhead(messages: usize) -> usize {
    messages * TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS
}

/// Count `text` in segments of about `soft` bytes.
///
/// Why: merging one huge piece (a megabyte of "aaaa…") costs more than
/// linear time and memory in its length, and tiktoken's own backtracking
/// pre-tokenizer, whose counts these are, gave up on such runs with a
/// panic. User-supplied documents must not be able to stall a dry run, so
/// long texts are counted in segments.
///
/// Segments are cut only where the regex itself always splits and never
/// looks across, so the total is *exactly* the unsegmented count (the unit
/// tests check this against tiktoken directly):
///
/// * before an ASCII space that follows a non-whitespace character (no
///   piece continues from a non-space into a space; a space can only start
///   a piece);
/// * between an ASCII letter or digit and ASCII punctuation other than `'`
///   (`'` may continue a word as in "it's");
/// * after a line break when the next character is neither whitespace nor
///   `/` (o200k's punctuation pieces may swallow trailing "\n/");
/// * between a CJK letter (ideograph, kana, hangul) and common CJK
///   punctuation, so long space-less CJK text is covered too.
///
/// Only a run of `hard` bytes with none of these boundaries (megabyte-long
/// runs of one character, giant space-free blobs) is cut arbitrarily; the
/// count there can differ from tiktoken's by a token or so per cut, which is
/// irrelevant next to such an input's size.
fn count_segmented(bpe: &Bpe, text: &str, soft: usize, hard: usize) -> usize {
    segments(text, soft, hard).map(|s| bpe.count(s)).sum()
}

/// The segments [`count_segmented`] counts, in order (together, `text`).
fn segments(text: &str, soft: usize, hard: usize) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices();
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        for (at, c) in chars.by_ref() {
            let len = at - start;
            let cut = len >= hard || (len >= soft && prev.is_some_and(|p| is_safe_boundary(p, c)));
            prev = Some(c);
            if cut {
                let seg = &text[start..at];
                start = at;
                return Some(seg);
            }
        }
        done = true;
        Some(&text[start..])
    })
}

/// Token boundaries of `text` by `tok`: for every pre-tokenizer piece, the
/// byte offset where it ends and the tokens from the start of the text up
/// to there (the last entry is `(text.len(), tok.count(text))`). Cutting at
/// one of these offsets cuts between tokens, so context trimming can keep an
/// exact number of tokens in one pass. One entry per piece (about one per
/// word): bounded by the text, which every loader already bounds.
pub fn boundaries(tok: Tokenizer, text: &str) -> Vec<(usize, usize)> {
    let bpe = tok.bpe();
    let mut out = Vec::new();
    let (mut at, mut total) = (0usize, 0usize);
    for seg in segments(text, SOFT_SEGMENT_BYTES, HARD_SEGMENT_BYTES) {
        for (piece, n) in bpe.piece_counts(seg) {
            at += piece.len();
            total += n;
            out.push((at, total));
        }
    }
    out
}

/// Whether the o200k_base and cl100k_base pre-tokenizers always split
/// between `prev` and `next` without looking across (see [`count_segmented`]).
fn is_safe_boundary(prev: char, next: char) -> bool {
    (next == ' ' && !prev.is_whitespace())
        || (prev.is_ascii_alphanumeric() && next.is_ascii_punctuation() && next != '\'')
        || (matches!(prev, '\n' | '\r') && !next.is_whitespace() && next != '/')
        || (is_cjk_letter(prev) && is_cjk_punctuation(next))
}

/// Ideographs, kana and hangul syllables: all Unicode letters (`\p{Lo}`),
/// never marks, which matters because marks may join a following
/// punctuation piece.
fn is_cjk_letter(c: char) -> bool {
    matches!(c,
        '\u{3041}'..='\u{3096}'   // hiragana (letters only, no voicing marks)
        | '\u{30A1}'..='\u{30FA}' // katakana
        | '\u{3400}'..='\u{4DBF}' // CJK extension A
        | '\u{4E00}'..='\u{9FFF}' // CJK unified ideographs
        | '\u{AC00}'..='\u{D7A3}' // hangul syllables
    )
}

/// Common CJK punctuation (all `\p{P}`: not letters, digits, marks or space).
fn is_cjk_punctuation(c: char) -> bool {
    matches!(
        c,
        '、' | '。' | '「' | '」' | '『' | '』' | '（' | '）' | '，' | '！' | '？' | '：' | '；'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for tok in [
            Tokenizer::O200kBase,
            Tokenizer::Cl100kBase,
            Tokenizer::Estimate,
        ] {
            assert_eq!(Tokenizer::from_name(tok.name()), Some(tok));
            assert_eq!(
                serde_json::to_value(tok).expect("serializes"),
                serde_json::Value::from(tok.name())
            );
        }
        assert_eq!(Tokenizer::from_name("p50k_base"), None);
        assert!(Tokenizer::O200kBase.is_exact());
        assert!(Tokenizer::Cl100kBase.is_exact());
        assert!(!Tokenizer::Estimate.is_exact());
    }

    #[test]
    fn known_counts() {
        assert_eq!(Tokenizer::O200kBase.count("hello world"), 2);
        assert_eq!(Tokenizer::Cl100kBase.count("hello world"), 2);
        assert_eq!(Tokenizer::Estimate.count("hello world"), 2);
        assert_eq!(Tokenizer::O200kBase.count(""), 0);
        // The right encoding is behind each variant (ids from OpenAI's tiktoken).
        let o200k = Tokenizer::O200kBase.bpe();
        assert_eq!(
            (o200k.rank(b"hello"), o200k.rank(b" world")),
            (Some(24912), Some(2375))
        );
        let cl100k = Tokenizer::Cl100kBase.bpe();
        assert_eq!(
            (cl100k.rank(b"hello"), cl100k.rank(b" world")),
            (Some(15339), Some(1917))
        );
        assert!(std::ptr::eq(
            Tokenizer::Estimate.bpe(),
            Tokenizer::O200kBase.bpe()
        ));
    }

    #[test]
    fn special_tokens_are_plain_text() {
        // encode_with_special_tokens would make this a single token.
        assert!(Tokenizer::O200kBase.count("<|endoftext|>") > 1);
        assert!(Tokenizer::Cl100kBase.count("<|endoftext|>") > 1);
    }

    #[test]
    fn chat_overhead() {
        let tok = Tokenizer::O200kBase;
        assert_eq!(count_chat(tok, &[]), 3);
        assert_eq!(count_chat(tok, &["hello world"]), 3 + 3 + 2);
        assert_eq!(count_chat(tok, &["hello world", ""]), 3 + (3 + 2) + 3);
    }

    #[test]
    fn tokenizer_mapping() {
        use Tokenizer::*;
        let cases = [
            ("openai", "gpt-4o", O200kBase),
            ("openai", "gpt-4o-mini", O200kBase),
            ("openai", "gpt-4o-mini-2024-07-18", O200kBase),
            ("openai", "chatgpt-4o-latest", O200kBase),
            ("openai", "gpt-4.1", O200kBase),
            ("openai", "gpt-4.1-nano", O200kBase),
            ("openai", "gpt-5", O200kBase),
            ("openai", "gpt-5.2-mini", O200kBase),
            ("openai", "o1", O200kBase),
            ("openai", "o1-mini", O200kBase),
            ("openai", "o3", O200kBase),
            ("openai", "o3-pro", O200kBase),
            ("openai", "o4", O200kBase),
            ("openai", "o4-mini", O200kBase),
            (
                "openai",
                "ft:gpt-4o-mini-2024-07-18:acme::abc123",
                O200kBase,
            ),
            ("openai", "GPT-4o", O200kBase),
            ("openai", "gpt-4", Cl100kBase),
            ("openai", "gpt-4-turbo", Cl100kBase),
            ("openai", "gpt-3.5-turbo", Cl100kBase),
            ("openai", "gpt-3.5-turbo-0125", Cl100kBase),
            ("openai", "text-davinci-003", Estimate),
            ("openai", "some-future-model", Estimate),
            ("openai", "o100", Estimate),
            ("openrouter", "openai/gpt-4o-mini", O200kBase),
            ("openrouter", "openai/gpt-4", Cl100kBase),
            ("openrouter", "gpt-4o-mini", Estimate),
            ("openrouter", "anthropic/claude-sonnet-4-5", Estimate),
            ("openai-compatible", "openai/gpt-4.1", O200kBase),
            ("openai-compatible", "openai/gpt-oss-20b", O200kBase),
            ("openai-compatible", "qwen3:8b", Estimate),
            ("openai-compatible", "openai/", Estimate),
            ("anthropic", "claude-sonnet-4-5", Estimate),
            ("anthropic", "gpt-4o", Estimate),
            ("gemini", "gemini-2.5-flash", Estimate),
            ("mistral", "mistral-large-latest", Estimate),
        ];
        for (kind, model, want) in cases {
            assert_eq!(tokenizer_for(kind, model), want, "{kind} {model}");
        }
    }

    /// A mixed corpus: prose, code, JSON without spaces, CRLF, CJK, marks.
    fn corpus() -> String {
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&format!(
                "Line {i}: It's a test, isn't it? \"Quoted\" words... and a URL https://x.io/a/{i}?q=1\r\n\
                 fn main() {{ let x_{i} = vec![1, 2, 3]; println!(\"{{x_{i}:?}}\"); }}\n\
                 {{\"key{i}\":[{i},2.5,null,true],\"nested\":{{\"a\":\"b\"}}}}\n\
                 \t  indented\n\n/slash after newline\n\
                 日本語のテキスト、句読点。中文文本，没有空格！한국어 텍스트입니다。\n\
                 café naïve e\u{301}\u{301}! ΑΒΓ αβγ — ‘curly’ quotes… 12345678 \n"
            ));
        }
        text
    }

    /// Each encoding with tiktoken-rs's, whose counts it must reproduce.
    fn with_tiktoken() -> [(&'static Bpe, &'static tiktoken_rs::CoreBPE); 2] {
        [
            (
                Tokenizer::O200kBase.bpe(),
                tiktoken_rs::o200k_base_singleton(),
            ),
            (
                Tokenizer::Cl100kBase.bpe(),
                tiktoken_rs::cl100k_base_singleton(),
            ),
        ]
    }

    #[test]
    fn segmenting_does_not_change_counts() {
        let text = corpus();
        for (bpe, tik) in with_tiktoken() {
            let whole = tik.encode_ordinary(&text).len();
            // Tiny segments force a cut at nearly every safe boundary.
            for soft in [1, 2, 7, 64] {
                assert_eq!(
                    count_segmented(bpe, &text, soft, usize::MAX),
                    whole,
                    "soft={soft}"
                );
            }
            assert_eq!(
                count_segmented(bpe, &text, SOFT_SEGMENT_BYTES, HARD_SEGMENT_BYTES),
                whole
            );
        }
    }

    #[test]
    fn safe_boundaries_are_exact_for_each_rule() {
        let samples = [
            "word next",
            "a, b",
            "it's fine",
            "x!!\ny",
            "a\n/b",
            "a\r\nB",
            "1.5",
            "e\u{301}!",
            "中文。中文",
            "한국어，텍스트",
            "\"k\":1,\"j\":2",
            "a  \n\n  b",
            "end.\n\n1",
        ];
        for (bpe, tik) in with_tiktoken() {
            for s in samples {
                assert_eq!(
                    count_segmented(bpe, s, 1, usize::MAX),
                    tik.encode_ordinary(s).len(),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn pathological_input_does_not_panic() {
        for text in [
            "a".repeat(300_000),
            " ".repeat(300_000),
            "-".repeat(300_000),
        ] {
            let n = Tokenizer::O200kBase.count(&text);
            assert!(n > 0 && n < text.len(), "{n}");
        }
    }

    #[test]
    fn typical_text_is_exact_through_public_api() {
        let text = corpus();
        assert!(text.len() > 4 * HARD_SEGMENT_BYTES);
        for (tok, tik) in [
            (Tokenizer::O200kBase, tiktoken_rs::o200k_base_singleton()),
            (Tokenizer::Cl100kBase, tiktoken_rs::cl100k_base_singleton()),
        ] {
            assert_eq!(tok.count(&text), tik.encode_ordinary(&text).len());
        }
    }

    /// Real text of every kind the repository holds: prompts, workflows,
    /// policies, suites, docs, Rust, JSON, the hostile test inputs.
    #[test]
    fn repository_files_count_like_tiktoken() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.to_path_buf()];
        let mut files = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("readable").flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') || name == "target" {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                if text.len() > 64 * 1024 {
                    continue;
                }
                for (bpe, tik) in with_tiktoken() {
                    assert_eq!(
                        bpe.count(&text),
                        tik.encode_ordinary(&text).len(),
                        "{}",
                        path.display()
                    );
                }
                files += 1;
            }
        }
        assert!(files > 100, "{files}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Random text over the characters the pre-tokenizers treat apart:
        /// every kind of space and line break, cased and uncased letters of
        /// several scripts, combining marks, digits of several systems,
        /// contractions (and the letters case folding adds to them),
        /// punctuation, symbols and emoji sequences.
        #[test]
        fn random_text_counts_like_tiktoken(
            text in r#"[ \t\r\n\x{a0}\x{2028}\x{3000}a-zA-Z'’sStTdDlLmMvVrReEſK\x{212a}0-9٣²½.,;:!?/\\\-_()\[\]{}<>|@#$%^&*=+~`"éÉçñüßĲ\x{301}\x{308}\x{94d}日本語のテキスト、。中文，한국어ΑΒΓαβγДдЖжअनु🦀👍🏽\x{200d}\x{fe0f}]{0,64}"#
        ) {
            for (bpe, tik) in with_tiktoken() {
                proptest::prop_assert_eq!(bpe.count(&text), tik.encode_ordinary(&text).len());
            }
        }
    }
}
