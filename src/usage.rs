//! What a call used, in tokens, and the prompt-cache lifetimes it can
//! write with: the vocabulary shared by the provider layer (which reports
//! usage), `cost` (which prices it), `policy` (which chooses a cache
//! lifetime) and the journal (which stores it).
//!
//! This module is at the bottom of the crate and depends on nothing in it,
//! so none of those layers has to reach into another to name a token count:
//! `policy`, `cost` and `plan` stay free of the HTTP layer.

use serde::{Deserialize, Serialize};

/// Token counts normalised across providers, so budgets and prices can be
/// computed the same way for all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// All input tokens, including cache reads and writes. Anthropic reports
    /// these three separately; they are added up here.
    pub input_tokens: u64,
    /// All output tokens, including reasoning. Gemini reports thoughts
    /// separately; they are added here.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache (a subset of `input_tokens`).
    pub cached_input_tokens: u64,
    /// Input tokens written to the prompt cache (a subset of `input_tokens`).
    pub cache_write_tokens: u64,
    /// Of `cache_write_tokens`, those written with Anthropic's 1-hour TTL,
    /// billed at 2× input instead of 1.25× (Anthropic's
    /// `cache_creation.ephemeral_1h_input_tokens`; 0 elsewhere).
    pub cache_write_1h_tokens: u64,
    /// Reasoning tokens (a subset of `output_tokens`); 0 where the provider
    /// does not report them separately.
    pub reasoning_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        // Saturating: the counts are a server's word until `cost::charge`
        // has judged them, and a sum must not overflow on the way.
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(o.cached_input_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(o.cache_write_tokens);
        self.cache_write_1h_tokens = self
            .cache_write_1h_tokens
            .saturating_add(o.cache_write_1h_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(o.reasoning_tokens);
    }
}

/// How long Anthropic keeps a cached prompt prefix. The 1 h entry costs 2×
/// base input to write (5 min: 1.25×), so it only pays off for prefixes
/// reused across a long run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum CacheTtl {
    #[default]
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "1h")]
    OneHour,
}

impl CacheTtl {
    pub fn name(self) -> &'static str {
        match self {
            CacheTtl::FiveMinutes => "5m",
            CacheTtl::OneHour => "1h",
        }
    }
}
