//! The policy file as written: what serde reads after the schema check,
//! before any name is resolved (see [`super::compile`]).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{CacheTtl, Locality, ProviderKind, Tier};
use crate::workflow::{Latency, Reasoning};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub version: u32,
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    pub sensitivity: Option<SensitivityFile>,
    #[serde(default)]
    pub providers: IndexMap<String, ProviderFile>,
    pub models: IndexMap<String, ModelFile>,
    pub flagship: Option<String>,
    /// Task names beyond the known vocabulary that its rules (and the
    /// workflows planned with it) may use.
    #[serde(default)]
    pub tasks: Vec<String>,
    pub rules: Vec<RuleFile>,
    #[serde(default)]
    pub fallbacks: IndexMap<String, Vec<String>>,
    #[serde(default)]
    pub budgets: BudgetsFile,
    #[serde(default)]
    pub cache: CacheFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub ttl: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitivityFile {
    pub levels: Vec<String>,
    pub cloud_max: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// A pool of servers of one model, instead of `base_url`.
    pub endpoints: Option<Vec<EndpointFile>>,
    /// Pools only: prefer one endpoint per prompt prefix.
    pub sticky: Option<Sticky>,
    pub api_key_env: Option<String>,
    pub locality: Option<Locality>,
    #[serde(default)]
    pub limits: Limits,
    pub launch: Option<LaunchFile>,
    /// Default prompt caching for this provider's models (Anthropic only).
    pub prompt_cache: Option<PromptCacheFile>,
    /// Allow a cloud provider on plain `http://` to a non-loopback host
    /// (the key and prompts travel unencrypted).
    #[serde(default)]
    pub allow_insecure: bool,
    /// OpenRouter only: which upstream providers may serve its calls.
    pub routing: Option<Routing>,
    /// Ollama only: `keep_alive` sent with every call.
    pub keep_alive: Option<serde_json::Value>,
    /// OpenAI and Anthropic only: smaller batches than the provider takes.
    pub batch: Option<BatchFile>,
}

/// A provider's `batch:` section: the most one batch may hold, at most
/// what the provider takes ([`crate::policy::BatchLimits::of`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    pub max_requests: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// OpenRouter's provider preferences (its request's `provider` object,
/// provider-apis.md §7), as the policy writes them and as they are sent.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Upstream providers to try, in this order ("anthropic", "openai").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// `false`: only the providers in `order`, never another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_fallbacks: Option<bool>,
    /// `deny`: only providers that do not store or train on prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_collection: Option<DataCollection>,
    /// Only providers with a zero-data-retention agreement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zdr: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataCollection {
    Allow,
    Deny,
}

/// One endpoint of a pool: a URL (one slot), or `{ url, slots }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EndpointFile {
    Url(String),
    Full(EndpointFull),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFull {
    pub url: String,
    pub slots: Option<u32>,
}

impl EndpointFile {
    pub fn url(&self) -> &str {
        match self {
            EndpointFile::Url(u) | EndpointFile::Full(EndpointFull { url: u, .. }) => u,
        }
    }

    pub fn slots(&self) -> u32 {
        match self {
            EndpointFile::Url(_) => 1,
            EndpointFile::Full(f) => f.slots.unwrap_or(1).max(1),
        }
    }
}

/// How a pool picks among its endpoints beyond "least busy".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// Calls with the same prompt prefix prefer the same endpoint.
    Prefix,
}

/// `prompt_cache: { ttl: 5m | 1h, min_tokens: N }` on an Anthropic provider
/// or model: mark the system prompt as a cache breakpoint when it is long
/// enough to be cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptCacheFile {
    #[serde(default)]
    pub ttl: CacheTtl,
    /// Overrides the model's minimum cacheable prefix (catalog, else the
    /// model family's documented minimum).
    pub min_tokens: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchFile {
    pub binary: Option<String>,
    /// llama-server's GGUF file (required there; Ollama has none).
    pub model: Option<String>,
    pub context: Option<u32>,
    pub threads: Option<u32>,
    pub slots: Option<u32>,
    pub chat_template: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub ready_timeout: Option<serde_json::Value>,
}

/// Limits on calls to a provider or a model; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub concurrency: Option<u32>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// The most bytes one answer (a JSON body or a whole stream) may be;
    /// default sized from the call's `max_output_tokens`
    /// ([`crate::provider::ResponseLimits::for_output`]).
    pub max_response_bytes: Option<u64>,
    /// The most SSE events one streamed answer may have; default sized from
    /// the call's `max_output_tokens`.
    pub max_stream_events: Option<u64>,
}

impl Limits {
    /// The response limits a policy sets here.
    pub fn response(&self) -> LimitOverrides {
        LimitOverrides {
            max_response_bytes: self.max_response_bytes,
            max_stream_events: self.max_stream_events,
        }
    }
}

/// The policy's overrides of a call's response limits
/// ([`crate::provider::ResponseLimits`]); unset ones are sized per call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub max_response_bytes: Option<u64>,
    pub max_stream_events: Option<u64>,
}

impl LimitOverrides {
    /// `self`'s values, else `other`'s.
    pub fn or(self, other: LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            max_response_bytes: self.max_response_bytes.or(other.max_response_bytes),
            max_stream_events: self.max_stream_events.or(other.max_stream_events),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub provider: String,
    pub model: String,
    pub tier: Tier,
    pub catalog: Option<String>,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub tokenizer: Option<String>,
    #[serde(default)]
    pub endpoint: Endpoint,
    pub pricing: Option<PricingFile>,
    #[serde(default)]
    pub limits: Limits,
    /// Overrides the provider's `prompt_cache` for this model.
    pub prompt_cache: Option<PromptCacheFile>,
    /// Overrides the catalog's `supports_reasoning` (local models are
    /// seldom in it).
    pub supports_reasoning: Option<bool>,
    /// Overrides the catalog's `supports_vision` (image inputs).
    pub supports_vision: Option<bool>,
    /// Overrides the catalog's `supports_pdf_input` (PDF inputs).
    pub supports_pdf_input: Option<bool>,
}

/// Which API a model is called through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// Chat messages (every provider).
    #[default]
    Chat,
    /// One raw prompt, for base models and few-shot prompts
    /// (OpenAI-compatible servers: llama.cpp, vLLM, Ollama's `/v1`).
    Completions,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingFile {
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
    pub cache_read_per_mtok: Option<f64>,
    pub cache_write_per_mtok: Option<f64>,
    pub cache_write_1h_per_mtok: Option<f64>,
    pub batch_input_per_mtok: Option<f64>,
    pub batch_output_per_mtok: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub when: ConditionsFile,
    #[serde(rename = "use")]
    pub use_model: String,
    /// A cascade: the rule's model first, `to` when a check fails.
    pub escalate: Option<EscalateFile>,
}

/// `escalate: { to, when?, confidence?, matches?, contains? }` on a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateFile {
    pub to: String,
    /// The checks that escalate; default: `invalid_output` and every check
    /// the other keys configure.
    pub when: Option<Vec<EscalateWhen>>,
    pub confidence: Option<ConfidenceFile>,
    pub matches: Option<String>,
    pub contains: Option<String>,
    pub judge: Option<JudgeFile>,
}

/// `escalate.judge`: the rubric a judge scores the first answer against,
/// and the lowest score accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeFile {
    pub rubric: String,
    pub min_score: f64,
}

/// A check whose failure escalates a cascade's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalateWhen {
    /// The answer does not match the step's output schema (or is cut short).
    InvalidOutput,
    /// The answer's mean token logprob is below `confidence.min_mean_logprob`,
    /// or the server sent no usable logprobs.
    LowConfidence,
    /// The answer does not match `matches` / does not contain `contains`.
    NoMatch,
    /// A judge scores the answer below `judge.min_score`.
    Judge,
}

impl EscalateWhen {
    pub fn name(self) -> &'static str {
        match self {
            EscalateWhen::InvalidOutput => "invalid_output",
            EscalateWhen::LowConfidence => "low_confidence",
            EscalateWhen::NoMatch => "no_match",
            EscalateWhen::Judge => "judge",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidenceFile {
    pub min_mean_logprob: f64,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SensitivityCondition {
    Levels(OneOrMany<String>),
    Bounds(LevelBounds),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelBounds {
    pub above: Option<String>,
    pub at_least: Option<String>,
    pub below: Option<String>,
    pub at_most: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBounds {
    pub gt: Option<u64>,
    pub gte: Option<u64>,
    pub lt: Option<u64>,
    pub lte: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionsFile {
    pub task: Option<OneOrMany<String>>,
    pub sensitivity: Option<SensitivityCondition>,
    pub input_tokens: Option<TokenBounds>,
    pub reasoning: Option<OneOrMany<Reasoning>>,
    pub latency: Option<OneOrMany<Latency>>,
    pub tags: Option<OneOrMany<String>>,
    /// A learned router's verdict: the rule holds when the router's score
    /// of the step's prompt is above the threshold (the strong side).
    pub router: Option<RouterConditionFile>,
}

/// `router: { file, threshold? | target_strong_share? }` in a rule's `when`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConditionFile {
    /// A router file (`tollgate router train`), relative to the policy file.
    pub file: String,
    pub threshold: Option<f64>,
    pub target_strong_share: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsFile {
    pub run_usd: Option<f64>,
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub per_user_daily_usd: Option<f64>,
    #[serde(default)]
    pub tiers: BTreeMap<Tier, TierBudgetFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierBudgetFile {
    pub max_share_of_calls: f64,
}
