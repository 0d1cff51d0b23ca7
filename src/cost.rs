//! What a call cost, from the usage the provider reported and the model's
//! prices: prompt-cache reads and writes (5-minute and 1-hour), and batch
//! prices. One function, so the run, its summary and the tests agree.
//!
//! The rules, per provider-apis.md §0 and §3 and the catalog's fields:
//! - input tokens that were neither read from nor written to the cache are
//!   billed at the input price;
//! - cache reads at `cache_read` (Anthropic 0.1×, OpenAI 0.5× or less,
//!   Gemini 0.25×; OpenAI's and Gemini's caching is automatic, so their
//!   `cached_tokens` are billed here too), else at the input price;
//! - cache writes at `cache_write` (Anthropic 1.25×), 1-hour writes at
//!   `cache_write_1h` (2×); OpenAI and Gemini do not charge for writes (no
//!   write price in the catalog → input price);
//! - batch calls at `batch_input`/`batch_output`; the cache prices are
//!   scaled by the same batch discount, since Anthropic's batch discount
//!   stacks with the cache multipliers.
//! - long-context tiers ([`tier_for`]): when the prompt (every input token,
//!   cached ones included) is above the model's threshold, the *whole*
//!   request — input, cache reads and writes, and output — is billed at the
//!   tier's rates. That is how Google prices Gemini Pro above 200k, OpenAI
//!   GPT-5.x above 272k and Anthropic its long-context models: the rate is
//!   chosen by the prompt size, not applied to the tokens past the
//!   threshold only. `plan`, the budget's worst case and the ledger all price
//!   through [`call_cost`], so they agree on the tier.

use serde::Serialize;

use crate::usage::{CacheTtl, Usage};

/// USD per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    /// Writing a prompt-cache entry with the default (5-minute) lifetime.
    pub cache_write: Option<f64>,
    /// Writing one with Anthropic's 1-hour lifetime.
    pub cache_write_1h: Option<f64>,
    pub batch_input: Option<f64>,
    pub batch_output: Option<f64>,
    /// The long-context tier, if the model has one: a request whose prompt
    /// is above its threshold is priced at its rates, every token of it.
    /// This module is the one place that applies it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_context: Option<PriceTier>,
}

/// A long-context price tier (USD per token), from the catalog's
/// `*_above_Nk_tokens` prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PriceTier {
    /// Applies when the prompt has more than this many tokens.
    pub above_tokens: u64,
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
    pub cache_write_1h: Option<f64>,
    pub batch_input: Option<f64>,
    pub batch_output: Option<f64>,
}

impl Price {
    /// Plain (uncached, standard) price of a request, at the tier its
    /// prompt size falls in.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        let p = tier_for(self, input_tokens);
        input_tokens as f64 * p.input + output_tokens as f64 * p.output
    }

    /// The cost of a call from the usage a provider reported. Cached input
    /// tokens are billed at the cache-read price and cache writes at the
    /// cache-write price where the model has them, else at the input price.
    /// (All writes at the 5-minute price; [`call_cost`] also
    /// knows 1-hour writes and batch prices.)
    pub fn usage_cost(&self, input: u64, cached: u64, cache_write: u64, output: u64) -> f64 {
        let usage = Usage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            cache_write_tokens: cache_write,
            ..Default::default()
        };
        call_cost(self, &usage, Billing::Standard)
    }

    pub fn is_free(&self) -> bool {
        self.input == 0.0 && self.output == 0.0
    }
}

/// How a call was made, which decides its price list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// A normal synchronous call.
    Standard,
    /// Through the provider's batch API.
    Batch,
}

/// Both OpenAI's Batch API and Anthropic's Message Batches bill 50 % of the
/// standard price (provider-apis.md §2, §3). Used only when the catalog
/// has no batch price for the model (or the policy priced it without one).
const BATCH_DISCOUNT: f64 = 0.5;

/// Anthropic's 1-hour cache writes cost 2× base input
/// (provider-apis.md §3); used when the catalog has no 1-hour price.
const ONE_HOUR_WRITE_MULTIPLIER: f64 = 2.0;

/// The flat price list a request with `prompt_tokens` input tokens is
/// billed at: the model's base prices, or — above its long-context
/// threshold (strictly more tokens than `above_tokens`) — the tier's.
/// A cache price the tier does not list is the base cache price scaled
/// like the input price (the providers keep the cache multipliers across
/// tiers); a batch price it does not list falls back to the batch
/// discount of the tier's standard price, in [`call_cost`].
pub fn tier_for(price: &Price, prompt_tokens: u64) -> Price {
    let Some(t) = price
        .long_context
        .filter(|t| prompt_tokens > t.above_tokens)
    else {
        return Price {
            long_context: None,
            ..*price
        };
    };
    let ratio = if price.input > 0.0 {
        t.input / price.input
    } else {
        1.0
    };
    let scaled = |tier: Option<f64>, base: Option<f64>| tier.or(base.map(|b| b * ratio));
    Price {
        input: t.input,
        output: t.output,
        cache_read: scaled(t.cache_read, price.cache_read),
        cache_write: scaled(t.cache_write, price.cache_write),
        cache_write_1h: scaled(t.cache_write_1h, price.cache_write_1h),
        batch_input: t.batch_input,
        batch_output: t.batch_output,
        long_context: None,
    }
}

/// The cost of one call in USD, at the tier its prompt size falls in.
pub fn call_cost(price: &Price, u: &Usage, billing: Billing) -> f64 {
    let price = &tier_for(price, u.input_tokens);
    let cached = u.cached_input_tokens.min(u.input_tokens);
    let writes = u.cache_write_tokens.min(u.input_tokens - cached);
    let writes_1h = u.cache_write_1h_tokens.min(writes);
    let writes_5m = writes - writes_1h;
    let plain = u.input_tokens - cached - writes;

    let (input, output, scale) = match billing {
        Billing::Standard => (price.input, price.output, 1.0),
        Billing::Batch => {
            let input = price.batch_input.unwrap_or(price.input * BATCH_DISCOUNT);
            let output = price.batch_output.unwrap_or(price.output * BATCH_DISCOUNT);
            // The batch discount on input, applied to the cache prices too.
            let scale = if price.input > 0.0 {
                input / price.input
            } else {
                BATCH_DISCOUNT
            };
            (input, output, scale)
        }
    };
    let read = price.cache_read.map_or(input, |p| p * scale);
    let write_5m = price.cache_write.map_or(input, |p| p * scale);
    let write_1h = match (price.cache_write_1h, price.cache_write) {
        (Some(p), _) => p * scale,
        // A provider that prices writes but whose 1-hour price is unknown.
        (None, Some(_)) => price.input * ONE_HOUR_WRITE_MULTIPLIER * scale,
        (None, None) => input,
    };
    plain as f64 * input
        + cached as f64 * read
        + writes_5m as f64 * write_5m
        + writes_1h as f64 * write_1h
        + u.output_tokens as f64 * output
}

/// What the same tokens cost at list price: standard (not batch), every
/// input token at the plain input price. The difference to [`call_cost`]
/// is what caching and batching saved (negative when a cache write was
/// never read back).
pub fn list_cost(price: &Price, u: &Usage) -> f64 {
    price.cost(u.input_tokens, u.output_tokens)
}

/// The most a call can cost before it is made: `input` tokens and
/// `max_output` tokens out — and, when its prompt is marked for caching,
/// every input token possibly billed as a cache write (Anthropic's write
/// premium, 1.25× or 2×, is above the plain input price).
pub fn worst_case(
    price: &Price,
    input: u64,
    max_output: u64,
    cache: Option<CacheTtl>,
    billing: Billing,
) -> f64 {
    let plain = Usage {
        input_tokens: input,
        output_tokens: max_output,
        ..Usage::default()
    };
    let cost = call_cost(price, &plain, billing);
    match cache {
        None => cost,
        Some(ttl) => {
            let written = Usage {
                cache_write_tokens: input,
                cache_write_1h_tokens: if ttl == CacheTtl::OneHour { input } else { 0 },
                ..plain
            };
            cost.max(call_cost(price, &written, billing))
        }
    }
}

/// What a call was asked, as counted before it was sent: what its charge
/// is judged against.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// The counted prompt (tollgate's tokenizer for the model).
    pub input_tokens: u64,
    /// The request's output limit.
    pub max_output: u64,
    pub cache: Option<CacheTtl>,
    pub billing: Billing,
    /// The answer's text as tollgate's tokenizer counts it (0 before an
    /// answer): that text was generated, so an output count far below it
    /// is not believed.
    pub answer_tokens: u64,
}

/// What a call is charged: the usage and cost recorded for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub usage: Usage,
    /// Finite, non-negative, at least [`floor`].
    pub cost: f64,
    /// The same usage at list price (see [`list_cost`]).
    pub list: f64,
    /// Why the answer's usage or cost was not taken as-is (starts with
    /// [`UNTRUSTED`]), or why the charge is above the worst case reserved
    /// (starts with [`ABOVE_RESERVE`]); `None` for a clean call. Journaled
    /// with the call and counted by `tollgate report`.
    pub flag: Option<String>,
}

/// The prefix of a [`Charge::flag`] whose usage or cost was replaced.
pub const UNTRUSTED: &str = "untrusted:";
/// The prefix of a [`Charge::flag`] charged above its reservation.
pub const ABOVE_RESERVE: &str = "above reserve:";

/// A reported input count above `INPUT_MARGIN × counted + INPUT_SLACK` is
/// not believed. Providers other than OpenAI count with their own
/// tokenizers (Claude's give noticeably more tokens than o200k for the same
/// text; chat framing adds a few), so a count above ours is normal; four
/// times ours is not a tokenizer.
const INPUT_MARGIN: u64 = 4;
const INPUT_SLACK: u64 = 1024;
/// A reported output count above `OUTPUT_MARGIN × max_output + OUTPUT_SLACK`
/// is not believed: every provider stops at the limit the request set
/// (reasoning included), give or take a closing token.
const OUTPUT_MARGIN: u64 = 2;
const OUTPUT_SLACK: u64 = 16;
/// A reported output count below `answer_tokens / ANSWER_MARGIN` is not
/// believed: the text came back, so it was generated. The margin leaves
/// room for other families' tokenizers, which count some text in fewer
/// tokens than ours.
const ANSWER_MARGIN: u64 = 2;

/// The one place a call's answer becomes money: validates what the server
/// reported and prices it. Used by the synchronous path and by batches.
///
/// Invariants of the result, whatever the server said:
/// - every token count is at most what is believable (above the margins
///   it is replaced by what was asked: the counted prompt, the output
///   limit), and the cache and reasoning counts are parts of their totals;
/// - `cost` is finite and `>= floor(price, asked)`: a negative, NaN-like or
///   absent cost never frees budget, and a call is never cheaper than its
///   prompt read entirely from cache;
/// - `cost` is the provider's own figure (OpenRouter's `usage.cost`) when
///   it is finite, non-negative and at most the price of the largest
///   believable usage; else the catalog price of the (validated) usage;
/// - `cost` above the worst case reserved happens only with believable
///   counts above ours (a foreign tokenizer) or a provider's own price
///   above the catalog's: it is kept — that is what was billed — and
///   flagged. It is at most the worst case of the believable maxima, so
///   one answer cannot poison the daily and monthly totals.
pub fn charge(price: &Price, asked: &Asked, reported: Usage, reported_cost: Option<f64>) -> Charge {
    let mut flags: Vec<String> = Vec::new();
    let mut u = reported;
    let max_in = asked
        .input_tokens
        .saturating_mul(INPUT_MARGIN)
        .saturating_add(INPUT_SLACK);
    let max_out = asked
        .max_output
        .saturating_mul(OUTPUT_MARGIN)
        .saturating_add(OUTPUT_SLACK);
    if u.input_tokens > max_in {
        flags.push(format!(
            "{} input tokens reported for a prompt counted at {}; charged as {}",
            u.input_tokens, asked.input_tokens, asked.input_tokens
        ));
        u.input_tokens = asked.input_tokens;
    }
    if u.output_tokens > max_out {
        flags.push(format!(
            "{} output tokens reported for a limit of {}; charged as {}",
            u.output_tokens, asked.max_output, asked.max_output
        ));
        u.output_tokens = asked.max_output;
    }
    // The answer's own text is a lower bound a server cannot talk down (a
    // full answer reported as one token would release its reservation and
    // let a budget pay for many more); at most the limit, like any count.
    let seen = asked
        .answer_tokens
        .min(asked.max_output.max(u.output_tokens));
    if u.output_tokens.saturating_mul(ANSWER_MARGIN) < seen {
        flags.push(format!(
            "{} output tokens reported for an answer of about {} tokens; charged as {}",
            u.output_tokens, asked.answer_tokens, seen
        ));
        u.output_tokens = seen;
    }
    u.cached_input_tokens = u.cached_input_tokens.min(u.input_tokens);
    u.cache_write_tokens = u
        .cache_write_tokens
        .min(u.input_tokens - u.cached_input_tokens);
    u.cache_write_1h_tokens = u.cache_write_1h_tokens.min(u.cache_write_tokens);
    u.reasoning_tokens = u.reasoning_tokens.min(u.output_tokens);

    let computed = call_cost(price, &u, asked.billing);
    let believable_max = worst_case(price, max_in, max_out, asked.cache, asked.billing);
    let corrected = !flags.is_empty();
    let mut cost = match reported_cost {
        None => computed,
        // The provider's own figure prices the usage it reported, which was
        // not believed: the catalog price of the corrected usage stands.
        Some(c) if corrected && c.is_finite() && c < computed => computed,
        Some(c) if !c.is_finite() || c < 0.0 || c > believable_max => {
            flags.push(format!(
                "reported cost {c} not believed; charged the catalog price of the usage"
            ));
            computed
        }
        Some(c) => c,
    };
    let floor = floor(price, asked);
    if cost < floor {
        cost = floor;
    }
    let worst = worst_case(
        price,
        asked.input_tokens,
        asked.max_output,
        asked.cache,
        asked.billing,
    );
    let flag = if !flags.is_empty() {
        Some(format!("{UNTRUSTED} {}", flags.join("; ")))
    } else if cost > worst + 1e-12 {
        Some(format!(
            "{ABOVE_RESERVE} charged ${cost:.6}, above the ${worst:.6} reserved (the provider counted or priced higher)"
        ))
    } else {
        None
    };
    Charge {
        list: list_cost(price, &u),
        usage: u,
        cost,
        flag,
    }
}

/// The least a call can cost: its counted prompt, every token at the
/// cheapest input price the model has (a cache read), no output.
pub fn floor(price: &Price, asked: &Asked) -> f64 {
    let prompt = Usage {
        input_tokens: asked.input_tokens,
        cached_input_tokens: asked.input_tokens,
        ..Usage::default()
    };
    call_cost(price, &prompt, asked.billing).min(call_cost(
        price,
        &Usage {
            input_tokens: asked.input_tokens,
            ..Usage::default()
        },
        asked.billing,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn the_worst_case_counts_the_cache_write_premium() {
        let p = price_of("claude-sonnet-4-6");
        let plain = worst_case(&p, 10_000, 200, None, Billing::Standard);
        assert!((plain - (10_000.0 * 3.0 + 200.0 * 15.0) / 1e6).abs() < 1e-12);
        let one_hour = worst_case(&p, 10_000, 200, Some(CacheTtl::OneHour), Billing::Standard);
        assert!(
            (one_hour - (10_000.0 * 6.0 + 200.0 * 15.0) / 1e6).abs() < 1e-12,
            "{one_hour}"
        );
        let five = worst_case(
            &p,
            10_000,
            200,
            Some(CacheTtl::FiveMinutes),
            Billing::Standard,
        );
        assert!(
            (five - (10_000.0 * 3.75 + 200.0 * 15.0) / 1e6).abs() < 1e-12,
            "{five}"
        );
    }

    /// A model's catalog prices, as the policy compiles them.
    fn price_of(key: &str) -> Price {
        let e = Catalog::builtin()
            .get(key)
            .unwrap_or_else(|| panic!("{key} is in catalog/models.json"));
        Price {
            input: e.input_per_token,
            output: e.output_per_token,
            cache_read: e.cache_read_per_token,
            cache_write: e.cache_write_per_token,
            cache_write_1h: e.cache_write_1h_per_token,
            batch_input: e.batch_input_per_token,
            batch_output: e.batch_output_per_token,
            long_context: e.long_context.as_ref().map(PriceTier::from),
        }
    }

    fn usage(input: u64, cached: u64, write: u64, write_1h: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            cache_write_tokens: write,
            cache_write_1h_tokens: write_1h,
            reasoning_tokens: 0,
        }
    }

    /// Hand-computed from catalog/models.json (USD per million tokens):
    /// - claude-sonnet-4-6: in 3, out 15, read 0.30, write 3.75, write 1h 6,
    ///   batch in 1.5, batch out 7.5
    /// - claude-haiku-4-5: in 1, out 5, read 0.10, write 1.25, write 1h 2,
    ///   batch in 0.5, batch out 2.5
    /// - gpt-4o-mini: in 0.15, out 0.60, read 0.075, batch in 0.075, out 0.30
    /// - gpt-4o: in 2.5, out 10, read 1.25, batch in 1.25, out 5
    /// - gemini/gemini-2.5-flash: in 0.30, out 2.50, read 0.03,
    ///   batch in 0.15, batch out 1.25
    #[test]
    fn costs_match_hand_computed_figures() {
        use Billing::{Batch, Standard};
        #[rustfmt::skip]
        let cases: &[(&str, &str, Usage, Billing, f64)] = &[
            // Anthropic: a 2,000-token prefix written with the 5 min TTL,
            // 100 plain input tokens, 50 output tokens:
            // 100×3 + 2000×3.75 + 50×15 = 300 + 7500 + 750 = 8550 µ$.
            ("anthropic 5m write", "claude-sonnet-4-6", usage(2100, 0, 2000, 0, 50), Standard, 0.008_55),
            // Same with the 1 h TTL: 100×3 + 2000×6 + 50×15 = 13050 µ$.
            ("anthropic 1h write", "claude-sonnet-4-6", usage(2100, 0, 2000, 2000, 50), Standard, 0.013_05),
            // Mixed writes: 1000 at 5 min, 1000 at 1 h:
            // 100×3 + 1000×3.75 + 1000×6 + 50×15 = 300+3750+6000+750 = 10800 µ$.
            ("anthropic mixed writes", "claude-sonnet-4-6", usage(2100, 0, 2000, 1000, 50), Standard, 0.010_8),
            // The second call reads the prefix: 100×3 + 2000×0.30 + 50×15 = 1650 µ$.
            ("anthropic read", "claude-sonnet-4-6", usage(2100, 2000, 0, 0, 50), Standard, 0.001_65),
            // Haiku read + write in one call (a longer prefix extends the
            // cache): 500×1 + 3000×0.1 + 1000×1.25 + 200×5 = 500+300+1250+1000 = 3050 µ$.
            ("anthropic haiku read+write", "claude-haiku-4-5", usage(4500, 3000, 1000, 0, 200), Standard, 0.003_05),
            // Batch: 1000 in × 1.5 + 400 out × 7.5 = 1500 + 3000 = 4500 µ$.
            ("anthropic batch", "claude-sonnet-4-6", usage(1000, 0, 0, 0, 400), Batch, 0.004_5),
            // Batch with a cache read: the batch half of the read price:
            // 100×1.5 + 2000×0.15 + 50×7.5 = 150 + 300 + 375 = 825 µ$.
            ("anthropic batch read", "claude-sonnet-4-6", usage(2100, 2000, 0, 0, 50), Batch, 0.000_825),
            // Batch with a 1 h write: 100×1.5 + 2000×3 + 50×7.5 = 150+6000+375 = 6525 µ$.
            ("anthropic batch 1h write", "claude-sonnet-4-6", usage(2100, 0, 2000, 2000, 50), Batch, 0.006_525),
            // OpenAI automatic caching: 1024 of 1500 input cached:
            // 476×0.15 + 1024×0.075 + 300×0.6 = 71.4 + 76.8 + 180 = 328.2 µ$.
            ("openai cached", "gpt-4o-mini", usage(1500, 1024, 0, 0, 300), Standard, 0.000_328_2),
            // OpenAI reports writes on newer models but does not charge extra.
            ("openai write at input price", "gpt-4o", usage(2000, 0, 1500, 0, 100), Standard, 0.006),
            // OpenAI batch: 1500×0.075 + 300×0.3 = 112.5 + 90 = 202.5 µ$.
            ("openai batch", "gpt-4o-mini", usage(1500, 0, 0, 0, 300), Batch, 0.000_202_5),
            // OpenAI batch with cached tokens: read 1.25 × (1.25/2.5) = 0.625:
            // 1000×1.25 + 1000×0.625 + 100×5 = 1250 + 625 + 500 = 2375 µ$.
            ("openai batch cached", "gpt-4o", usage(2000, 1000, 0, 0, 100), Batch, 0.002_375),
            // Gemini implicit caching: 1000×0.3 + 3000×0.03 + 500×2.5 = 300+90+1250 = 1640 µ$.
            ("gemini cached", "gemini/gemini-2.5-flash", usage(4000, 3000, 0, 0, 500), Standard, 0.001_64),
            // Gemini batch prices: 4000×0.15 + 500×1.25 = 600 + 625 = 1225 µ$.
            ("gemini batch", "gemini/gemini-2.5-flash", usage(4000, 0, 0, 0, 500), Batch, 0.001_225),
        ];
        for (name, key, u, billing, want) in cases {
            let got = call_cost(&price_of(key), u, *billing);
            assert!(
                (got - want).abs() < 1e-12,
                "{name}: {key} cost {got}, expected {want}"
            );
        }
    }

    /// Long-context tiers, hand-computed from the source data
    /// (USD per million tokens):
    /// - gemini/gemini-2.5-pro: in 1.25, out 10, read 0.125; above 200k:
    ///   in 2.5, out 15, read 0.25, batch in 1.25, batch out 7.5
    /// - gpt-5.4: in 2.5, out 15; above 272k: in 5, out 22.5
    /// - claude-haiku-5-5: in 0.1, out 0.5; above 100k: in 0.5, out 2.5,
    ///   write 0.625, write 1h 1.0, read 0.05
    ///
    /// The tier is chosen by the whole prompt (cached tokens included) and
    /// then prices every token of the request, output included.
    #[test]
    fn long_context_tiers_price_the_whole_request() {
        use Billing::{Batch, Standard};
        #[rustfmt::skip]
        let cases: &[(&str, &str, Usage, Billing, f64)] = &[
            // At the threshold: still the base rates.
            // 200000×1.25 + 1000×10 = 250000 + 10000 = 260000 µ$.
            ("gemini at 200k", "gemini/gemini-2.5-pro", usage(200_000, 0, 0, 0, 1000), Standard, 0.26),
            // One token above: every token at the tier's rates.
            // 200001×2.5 + 1000×15 = 500002.5 + 15000 = 515002.5 µ$.
            ("gemini above 200k", "gemini/gemini-2.5-pro", usage(200_001, 0, 0, 0, 1000), Standard, 0.515_002_5),
            // Cached tokens count towards the threshold and are read at the
            // tier's read price: 150000×2.5 + 100000×0.25 + 2000×15
            // = 375000 + 25000 + 30000 = 430000 µ$.
            ("gemini cached above", "gemini/gemini-2.5-pro", usage(250_000, 100_000, 0, 0, 2000), Standard, 0.43),
            // The tier's batch prices: 250000×1.25 + 2000×7.5 = 312500 + 15000 µ$.
            ("gemini batch above", "gemini/gemini-2.5-pro", usage(250_000, 0, 0, 0, 2000), Batch, 0.3275),
            // 272000×2.5 + 1000×15 = 680000 + 15000 = 695000 µ$.
            ("gpt-5.4 at 272k", "gpt-5.4", usage(272_000, 0, 0, 0, 1000), Standard, 0.695),
            // 300000×5 + 1000×22.5 = 1500000 + 22500 = 1522500 µ$.
            ("gpt-5.4 above 272k", "gpt-5.4", usage(300_000, 0, 0, 0, 1000), Standard, 1.5225),
            // 50000×0.5 + 100000×1.0 (1 h writes) + 1000×2.5
            // = 25000 + 100000 + 2500 = 127500 µ$.
            ("haiku 5.5 1h write above 100k", "claude-haiku-5-5", usage(150_000, 0, 100_000, 100_000, 1000), Standard, 0.1275),
            // 20000×0.1 + 80000×0.01 + 1000×0.5 = 2000 + 800 + 500 = 3300 µ$.
            ("haiku 5.5 below", "claude-haiku-5-5", usage(100_000, 80_000, 0, 0, 1000), Standard, 0.0033),
        ];
        for (name, key, u, billing, want) in cases {
            let got = call_cost(&price_of(key), u, *billing);
            assert!(
                (got - want).abs() < 1e-9,
                "{name}: {key} cost {got}, expected {want}"
            );
        }
        // The worst case and the list price use the same tier.
        let haiku = price_of("claude-haiku-5-5");
        let worst = worst_case(&haiku, 150_000, 1000, Some(CacheTtl::OneHour), Standard);
        // 150000×1.0 + 1000×2.5 = 152500 µ$.
        assert!((worst - 0.1525).abs() < 1e-9, "{worst}");
        let gpt = price_of("gpt-5.4");
        assert!((list_cost(&gpt, &usage(300_000, 100_000, 0, 0, 1000)) - 1.5225).abs() < 1e-9);
    }

    #[test]
    fn a_tier_without_cache_prices_scales_the_base_ones() {
        let p = Price {
            input: 1e-6,
            output: 2e-6,
            cache_read: Some(1e-7),
            long_context: Some(PriceTier {
                above_tokens: 1000,
                input: 2e-6,
                output: 3e-6,
                ..Default::default()
            }),
            ..Price::default()
        };
        // 1000 of 2000 read at 0.1 × 2 = 0.2 per Mtok: 1000×2 + 1000×0.2 + 10×3.
        let got = call_cost(&p, &usage(2000, 1000, 0, 0, 10), Billing::Standard);
        assert!((got - (2000.0 + 200.0 + 30.0) / 1e6).abs() < 1e-15, "{got}");
    }

    /// Hostile usage and costs, against gpt-4o-mini ($0.15 / $0.60 per
    /// Mtok, read $0.075): a 1,000-token prompt with a 100-token limit.
    /// Worst case 1000×0.15 + 100×0.6 = 210 µ$; floor 1000×0.075 = 75 µ$.
    #[test]
    fn hostile_usage_and_costs_are_never_trusted_as_is() {
        let p = price_of("gpt-4o-mini");
        let asked = Asked {
            input_tokens: 1000,
            max_output: 100,
            cache: None,
            billing: Billing::Standard,
            answer_tokens: 0,
        };
        let plain = usage(1000, 0, 0, 0, 50);
        #[rustfmt::skip]
        let cases: &[(&str, Usage, Option<f64>, f64, bool)] = &[
            // An honest answer: its price, no flag. 150 + 30 = 180 µ$.
            ("honest", plain, None, 180e-6, false),
            // OpenRouter's own figure inside the believable range stands.
            ("reported cost", plain, Some(150e-6), 150e-6, false),
            // A negative cost never frees budget: the usage's price.
            ("negative cost", plain, Some(-1.0), 180e-6, true),
            ("NaN cost", plain, Some(f64::NAN), 180e-6, true),
            ("infinite cost", plain, Some(f64::INFINITY), 180e-6, true),
            // A huge cost is not believed (it would poison the day's total).
            ("huge cost", plain, Some(1e12), 180e-6, true),
            // Zero from the provider: at least the floor.
            ("zero cost", plain, Some(0.0), 75e-6, false),
            // Output far above the limit: charged as the limit.
            // 1000×0.15 + 100×0.6 = 210 µ$.
            ("output above max", usage(1000, 0, 0, 0, 10_000_000), None, 210e-6, true),
            ("u64::MAX output", usage(1000, 0, 0, 0, u64::MAX), None, 210e-6, true),
            // Input wildly above the counted prompt: charged as counted
            // (the cached part capped to it): 1000×0.075 + 50×0.6 = 105 µ$.
            ("input absurd", usage(u64::MAX, u64::MAX, 0, 0, 50), None, 105e-6, true),
            // Nothing reported as used at all: the floor.
            ("zero usage", usage(0, 0, 0, 0, 0), None, 75e-6, false),
            // A believable tokenizer difference (1,300 counted as 1,000)
            // is charged as reported, and flagged above the reservation:
            // 1300×0.15 + 100×0.6 = 255 µ$.
            ("foreign tokenizer", usage(1300, 0, 0, 0, 100), None, 255e-6, true),
        ];
        for (name, u, c, want, flagged) in cases {
            let got = charge(&p, &asked, *u, *c);
            assert!(
                (got.cost - want).abs() < 1e-12,
                "{name}: charged {} expected {want} ({:?})",
                got.cost,
                got.flag
            );
            assert_eq!(got.flag.is_some(), *flagged, "{name}: {:?}", got.flag);
            if *name != "foreign tokenizer" && *flagged {
                assert!(got.flag.as_ref().unwrap().starts_with(UNTRUSTED), "{name}");
            }
            assert!(
                got.usage.cached_input_tokens <= got.usage.input_tokens,
                "{name}"
            );
            assert!(got.usage.output_tokens <= 2 * 100 + 16, "{name}");
        }
        // Batch calls are judged at batch prices: floor 1000×0.0375.
        let batch = Asked {
            billing: Billing::Batch,
            ..asked
        };
        let got = charge(&p, &batch, usage(0, 0, 0, 0, 0), Some(-5.0));
        assert!((got.cost - 37.5e-6).abs() < 1e-12, "{}", got.cost);
        let honest_but_high = charge(&p, &asked, usage(1300, 0, 0, 0, 100), None);
        assert!(honest_but_high.flag.unwrap().starts_with(ABOVE_RESERVE));
        // A full answer (90 tokens of text) reported as 1 output token, with
        // a tiny cost of its own: charged for its text, 150 + 90×0.6 µ$.
        let answered = Asked {
            answer_tokens: 90,
            ..asked
        };
        let under = charge(&p, &answered, usage(1000, 0, 0, 0, 1), Some(1e-9));
        assert!((under.cost - 204e-6).abs() < 1e-12, "{}", under.cost);
        assert!(under.flag.unwrap().starts_with(UNTRUSTED));
        // Another tokenizer's count a little below ours is believed.
        let close = charge(&p, &answered, usage(1000, 0, 0, 0, 70), None);
        assert!(close.flag.is_none(), "{:?}", close.flag);
    }

    #[test]
    fn missing_prices_fall_back_to_documented_multipliers() {
        // A policy-priced Anthropic-like model without 1 h or batch prices.
        let p = Price {
            input: 1e-6,
            output: 2e-6,
            cache_read: Some(1e-7),
            cache_write: Some(1.25e-6),
            cache_write_1h: None,
            batch_input: None,
            batch_output: None,
            long_context: None,
        };
        // 1 h write at 2× input, output at the standard price.
        let u = usage(1000, 0, 1000, 1000, 10);
        assert!(
            (call_cost(&p, &u, Billing::Standard) - (1000.0 * 2e-6 + 10.0 * 2e-6)).abs() < 1e-15
        );
        // Batch: 50 % of everything.
        let u = usage(1000, 0, 0, 0, 1000);
        assert!((call_cost(&p, &u, Billing::Batch) - (0.5e-3 + 1e-3)).abs() < 1e-15);
        // No cache prices at all: every input token at the input price.
        let plain = Price {
            input: 1e-6,
            output: 2e-6,
            ..Price::default()
        };
        let u = usage(1000, 400, 300, 100, 0);
        assert!((call_cost(&plain, &u, Billing::Standard) - 1e-3).abs() < 1e-15);
        // Free local models stay free in batch mode.
        assert_eq!(call_cost(&Price::default(), &u, Billing::Batch), 0.0);
    }

    #[test]
    fn inconsistent_usage_never_bills_tokens_twice() {
        let p = price_of("claude-sonnet-4-6");
        // More cache tokens reported than input: capped at the input.
        let u = usage(100, 80, 80, 500, 0);
        let got = call_cost(&p, &u, Billing::Standard);
        // 80 read + 20 written (1 h, capped at the writes).
        assert!((got - (80.0 * 0.3e-6 + 20.0 * 6e-6)).abs() < 1e-15);
    }

    #[test]
    fn list_cost_ignores_cache_and_batch() {
        let p = price_of("claude-sonnet-4-6");
        let u = usage(2100, 2000, 0, 0, 50);
        assert!((list_cost(&p, &u) - (2100.0 * 3e-6 + 50.0 * 15e-6)).abs() < 1e-15);
    }
}
