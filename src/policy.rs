//! The policy file format, and compiling it into a [`Policy`] that routing
//! can use without further checks.
//!
//! Compiling resolves every name (providers, models, levels, fallbacks),
//! prices every model from the catalog and the policy's overrides, and turns
//! rule conditions into plain sets and ranges. All problems are reported
//! together. The compiled policy is immutable and does no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
pub use crate::cost::{Price, PriceTier};
use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::schema::Format;
use crate::tokens::{self, Tokenizer};
pub use crate::usage::CacheTtl;
use crate::workflow::{Latency, Loaded, Reasoning, from_document, load_document};
use crate::yaml::{Document, pointer};

// ---------------------------------------------------------------------------
// The file as written.

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
    pub model: String,
    pub context: Option<u32>,
    pub threads: Option<u32>,
    pub slots: Option<u32>,
    pub chat_template: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub ready_timeout: Option<serde_json::Value>,
}

/// How to start a provider's local server (llama.cpp's `llama-server`).
/// Paths are kept as written; `${VAR}` expansion happens when it is started,
/// so plans do not depend on the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub binary: String,
    pub model: String,
    pub host: String,
    pub port: u16,
    pub context: u32,
    pub threads: u32,
    pub slots: u32,
    pub chat_template: Option<String>,
    pub args: Vec<String>,
    pub ready_timeout: std::time::Duration,
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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsFile {
    pub run_usd: Option<f64>,
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    #[serde(default)]
    pub tiers: BTreeMap<Tier, TierBudgetFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierBudgetFile {
    pub max_share_of_calls: f64,
}

// ---------------------------------------------------------------------------
// The compiled policy.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    OpenaiCompatible,
    Openai,
    Anthropic,
    Gemini,
    Mistral,
    Openrouter,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenaiCompatible => "openai-compatible",
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Mistral => "mistral",
            ProviderKind::Openrouter => "openrouter",
        }
    }

    /// The public endpoint when the policy names none.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenaiCompatible => None,
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::Mistral => Some("https://api.mistral.ai/v1"),
            ProviderKind::Openrouter => Some("https://openrouter.ai/api/v1"),
        }
    }

    pub fn default_api_key_env(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenaiCompatible => None,
            ProviderKind::Openai => Some("OPENAI_API_KEY"),
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::Gemini => Some("GEMINI_API_KEY"),
            ProviderKind::Mistral => Some("MISTRAL_API_KEY"),
            ProviderKind::Openrouter => Some("OPENROUTER_API_KEY"),
        }
    }
}

/// Where a provider runs. Data above `cloud_max` only ever goes to `Local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Locality {
    Local,
    Cloud,
}

/// Price and capability classes of models, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Local,
    Budget,
    Workhorse,
    Flagship,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Local, Tier::Budget, Tier::Workhorse, Tier::Flagship];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Budget => "budget",
            Tier::Workhorse => "workhorse",
            Tier::Flagship => "flagship",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// The *name* of the environment variable; the key itself is only ever
    /// read by the provider layer at call time.
    pub api_key_env: Option<String>,
    pub locality: Locality,
    /// A local server defaults to one call at a time, so local steps queue
    /// instead of thrashing one CPU-bound server.
    pub limits: Limits,
    /// Set when tollgate manages the server.
    pub launch: Option<Launch>,
    /// A cloud provider reached over plain `http://` on a non-loopback host
    /// without `allow_insecure`: a warning at `check`/`plan`, an error at
    /// `run` (see [`Policy::insecure_transport`]).
    pub insecure: bool,
}

impl From<&crate::catalog::CatalogTier> for PriceTier {
    fn from(t: &crate::catalog::CatalogTier) -> PriceTier {
        PriceTier {
            above_tokens: t.above_tokens,
            input: t.input_per_token,
            output: t.output_per_token,
            cache_read: t.cache_read_per_token,
            cache_write: t.cache_write_per_token,
            cache_write_1h: t.cache_write_1h_per_token,
            batch_input: t.batch_input_per_token,
            batch_output: t.batch_output_per_token,
        }
    }
}

/// Where a model's price came from, shown in `plan` and `models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "source", content = "detail")]
pub enum PriceSource {
    /// A catalog entry, by key.
    Catalog(String),
    /// The catalog entry with some prices overridden by the policy.
    CatalogWithOverrides(String),
    Policy,
    /// A local model without a price: free.
    Local,
}

#[derive(Debug, Clone)]
pub struct Model {
    /// The policy's name for it ("local", "flagship", …).
    pub alias: String,
    pub provider: String,
    pub provider_kind: ProviderKind,
    /// The provider's model name.
    pub model: String,
    pub tier: Tier,
    pub locality: Locality,
    pub context_window: u64,
    pub max_output_tokens: Option<u64>,
    pub tokenizer: Tokenizer,
    pub price: Price,
    pub price_source: PriceSource,
    pub limits: Limits,
    pub endpoint: Endpoint,
    /// Mark the system prompt for Anthropic's prompt cache with this TTL
    /// (when it has at least `prompt_cache_min_tokens`).
    pub prompt_cache: Option<CacheTtl>,
    /// The shortest prefix the provider caches: the policy's `min_tokens`,
    /// else the catalog's, else the family's documented minimum.
    pub prompt_cache_min_tokens: u64,
}

impl Model {
    /// Can this model's calls go through its provider's batch API (OpenAI's
    /// Batch API, Anthropic's Message Batches)? Chat models of those two
    /// kinds only: OpenAI-compatible servers, Mistral, OpenRouter and
    /// Gemini are called synchronously.
    pub fn has_batch_api(&self) -> bool {
        matches!(
            self.provider_kind,
            ProviderKind::Openai | ProviderKind::Anthropic
        ) && self.endpoint == Endpoint::Chat
    }
}

/// Anthropic's documented minimum cacheable prefix by family when the
/// catalog does not say: 2048 tokens for Haiku-class models, 1024 for
/// Sonnet/Opus-class (provider-apis.md §3). Newer models that need more
/// (4096) carry `prompt_cache_min_tokens` in the catalog. A prefix below the
/// minimum is simply not cached (no error), so erring low costs nothing.
pub fn default_prompt_cache_min_tokens(model: &str) -> u64 {
    if model.to_ascii_lowercase().contains("haiku") {
        2048
    } else {
        1024
    }
}

/// A rule's conditions as sets; `None` means "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    pub task: Option<BTreeSet<String>>,
    /// Level indices.
    pub sensitivity: Option<BTreeSet<usize>>,
    /// Inclusive bounds.
    pub input_tokens: Option<(u64, u64)>,
    pub reasoning: Option<BTreeSet<Reasoning>>,
    pub latency: Option<BTreeSet<Latency>>,
    /// Matches a step that has any of these tags.
    pub tags: Option<BTreeSet<String>>,
}

fn covers<T: Ord>(outer: &Option<BTreeSet<T>>, inner: &Option<BTreeSet<T>>) -> bool {
    match (outer, inner) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(o), Some(i)) => i.is_subset(o),
    }
}

impl Conditions {
    pub fn is_catch_all(&self) -> bool {
        *self == Conditions::default()
    }

    /// Can no step ever satisfy these conditions?
    pub fn is_empty(&self) -> Option<&'static str> {
        if self.sensitivity.as_ref().is_some_and(BTreeSet::is_empty) {
            return Some("no sensitivity level satisfies its `sensitivity` condition");
        }
        if self.input_tokens.is_some_and(|(lo, hi)| lo > hi) {
            return Some("its `input_tokens` bounds exclude every count");
        }
        None
    }

    /// Does every step that matches `other` also match `self`?
    pub fn covers(&self, other: &Conditions) -> bool {
        let tokens = match (self.input_tokens, other.input_tokens) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((lo, hi)), Some((olo, ohi))) => lo <= olo && ohi <= hi,
        };
        covers(&self.task, &other.task)
            && covers(&self.sensitivity, &other.sensitivity)
            && tokens
            && covers(&self.reasoning, &other.reasoning)
            && covers(&self.latency, &other.latency)
            && covers(&self.tags, &other.tags)
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: String,
    pub conditions: Conditions,
    /// A model alias.
    pub use_model: String,
}

/// A compiled policy: every name resolved, every model priced.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Sensitivity levels, least sensitive first.
    pub levels: Vec<String>,
    /// Index of the most sensitive level allowed to reach a cloud model.
    pub cloud_max: usize,
    pub default_level: usize,
    pub providers: IndexMap<String, Provider>,
    pub models: IndexMap<String, Model>,
    pub rules: Vec<Rule>,
    pub fallbacks: IndexMap<String, Vec<String>>,
    /// The model the plan compares against.
    pub flagship: Option<String>,
    pub run_budget_usd: Option<f64>,
    /// What all runs together may spend in a UTC day / calendar month,
    /// counted from the run journal.
    pub daily_budget_usd: Option<f64>,
    pub monthly_budget_usd: Option<f64>,
    pub tier_shares: BTreeMap<Tier, f64>,
    /// How old a cached answer may be; zero turns the cache off.
    pub cache_ttl: std::time::Duration,
    /// One located warning per provider with [`Provider::insecure`].
    pub insecure_transport: Vec<Diagnostic>,
}

/// The response cache's default: answers up to a week old are reused.
pub const DEFAULT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The default ladder when a policy says nothing about sensitivity.
const DEFAULT_LEVELS: [&str; 4] = ["public", "internal", "confidential", "secret"];
const DEFAULT_CLOUD_MAX: &str = "internal";

impl Policy {
    pub fn level_index(&self, name: &str) -> Option<usize> {
        self.levels.iter().position(|l| l == name)
    }

    pub fn level_name(&self, index: usize) -> &str {
        &self.levels[index]
    }

    /// The candidate models for a rule's choice: the model, then its fallback
    /// chain, breadth-first, each model once.
    pub fn candidates<'a>(&'a self, first: &'a str) -> Vec<&'a str> {
        let mut out: Vec<&str> = vec![first];
        let mut i = 0;
        while i < out.len() {
            if let Some(next) = self.fallbacks.get(out[i]) {
                for n in next {
                    if !out.contains(&n.as_str()) {
                        out.push(n);
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// The flagship model used for the "all on flagship" comparison.
    pub fn flagship_model(&self) -> Option<&Model> {
        self.flagship.as_ref().and_then(|f| self.models.get(f))
    }
}

// ---------------------------------------------------------------------------
// Loading and compiling.

pub fn load_file(path: &Path) -> Result<Loaded<PolicyFile>, Vec<Diagnostic>> {
    from_document(load_document(path)?, Format::Policy)
}

/// Loads and compiles a policy file.
pub fn load(path: &Path) -> Result<(Loaded<PolicyFile>, Policy), Vec<Diagnostic>> {
    let file = load_file(path)?;
    let (policy, diags) = compile(&file.value, &file.doc, Catalog::builtin());
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    Ok((file, policy))
}

/// Is the host a request to `url` connects to a loopback address?
///
/// The URL is parsed by the `url` crate, as reqwest parses it, so the answer
/// is about the host reqwest really connects to: userinfo is not the host
/// (`http://127.0.0.1:1@example.com/` and `http://[::1]@example.com/` go to
/// example.com), and IPv4 in any of the WHATWG forms (`0x7f.1`,
/// `2130706433`, `127.1`) is normalised first. Names other than exactly
/// `localhost` (`localhost.`, `foo.localhost`, anything resolved by DNS)
/// are not loopback; neither is `0.0.0.0`. An unparseable URL is not
/// loopback. This is what decides that a provider is local by default, so
/// it errs on the side of "cloud".
pub fn is_loopback(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// Does `url` use plain `http://`?
fn is_plain_http(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "http")
}

/// The host and explicit port of an `http://host:port/...` URL, as reqwest
/// would connect to them.
fn host_port(url: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(url).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port()?))
}

fn compile_launch(
    l: &LaunchFile,
    base_url: Option<&str>,
    kind: ProviderKind,
    doc: &Document,
    name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Launch> {
    let at = doc.key_span(&pointer(["providers", name, "launch"]));
    let loopback = base_url.filter(|u| is_loopback(u));
    let Some((host, port)) = loopback
        .and_then(host_port)
        .filter(|_| kind == ProviderKind::OpenaiCompatible)
    else {
        diags.push(
            Diagnostic::error("launch-not-local", format!("provider `{name}` has `launch` but is not a local server"))
                .at(at)
                .with_help("`launch` starts llama.cpp's llama-server: use kind openai-compatible and a base_url such as http://127.0.0.1:8080/v1 (with an explicit port)"),
        );
        return None;
    };
    let ready_timeout = match &l.ready_timeout {
        None => std::time::Duration::from_secs(60),
        Some(v) => crate::workflow::parse_duration(v).unwrap_or(std::time::Duration::from_secs(60)),
    };
    Some(Launch {
        binary: l
            .binary
            .clone()
            .unwrap_or_else(|| "llama-server".to_owned()),
        model: l.model.clone(),
        host,
        port,
        context: l.context.unwrap_or(4096),
        threads: l.threads.unwrap_or(2),
        slots: l.slots.unwrap_or(1),
        chat_template: l.chat_template.clone(),
        args: l.args.clone(),
        ready_timeout,
    })
}

/// Compiles a policy; returns the policy (possibly partial) and every problem.
pub fn compile(file: &PolicyFile, doc: &Document, catalog: &Catalog) -> (Policy, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let at = |segs: &[&str]| doc.span(&pointer(segs));

    // Sensitivity ladder.
    let (levels, cloud_max, default_level) = match &file.sensitivity {
        None => (
            DEFAULT_LEVELS
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
            DEFAULT_LEVELS
                .iter()
                .position(|l| *l == DEFAULT_CLOUD_MAX)
                .unwrap_or(0),
            0,
        ),
        Some(s) => {
            let find = |name: &str, key: &str, diags: &mut Vec<Diagnostic>| -> usize {
                s.levels.iter().position(|l| l == name).unwrap_or_else(|| {
                    diags.push(
                        Diagnostic::error(
                            "unknown-level",
                            format!("unknown sensitivity level `{name}`"),
                        )
                        .at(at(&["sensitivity", key]))
                        .with_label("not in `sensitivity.levels`")
                        .with_help(
                            did_you_mean(name, s.levels.iter().map(String::as_str)).unwrap_or_else(
                                || {
                                    format!(
                                        "levels are {}",
                                        one_of(s.levels.iter().map(String::as_str))
                                    )
                                },
                            ),
                        ),
                    );
                    0
                })
            };
            let cloud_max = find(&s.cloud_max, "cloud_max", &mut diags);
            let default = s
                .default
                .as_deref()
                .map_or(0, |d| find(d, "default", &mut diags));
            (s.levels.clone(), cloud_max, default)
        }
    };
    let level_help = |name: &str| {
        did_you_mean(name, levels.iter().map(String::as_str))
            .unwrap_or_else(|| format!("levels are {}", one_of(levels.iter().map(String::as_str))))
    };

    // Providers.
    let mut providers = IndexMap::new();
    let mut insecure_transport = Vec::new();
    for (name, p) in &file.providers {
        let base_url = p
            .base_url
            .clone()
            .or_else(|| p.kind.default_base_url().map(str::to_owned));
        if base_url.is_none() {
            diags.push(
                Diagnostic::error("missing-base-url", format!("provider `{name}` needs a `base_url`"))
                    .at(doc.key_span(&pointer(["providers", name.as_str()])))
                    .with_help("openai-compatible servers have no default address, e.g. base_url: \"http://127.0.0.1:11434/v1\" for Ollama"),
            );
        }
        let loopback = base_url.as_deref().is_some_and(is_loopback);
        let locality = match (p.locality, p.kind) {
            (Some(Locality::Local), kind) if kind != ProviderKind::OpenaiCompatible => {
                diags.push(
                    Diagnostic::error(
                        "cloud-provider-marked-local",
                        format!("provider `{name}` of kind {} cannot be local", p.kind.name()),
                    )
                    .at(at(&["providers", name, "locality"]))
                    .with_label("this API is a cloud service")
                    .with_help("only `openai-compatible` providers (Ollama, llama.cpp, vLLM, LM Studio) run locally"),
                );
                Locality::Cloud
            }
            (Some(l), _) => l,
            (None, ProviderKind::OpenaiCompatible) if loopback => Locality::Local,
            (None, _) => Locality::Cloud,
        };
        let launch = p
            .launch
            .as_ref()
            .and_then(|l| compile_launch(l, base_url.as_deref(), p.kind, doc, name, &mut diags));
        // A key pasted where the variable's name belongs: say so (the
        // value itself is masked wherever a diagnostic shows it).
        if p.api_key_env
            .as_deref()
            .is_some_and(crate::diagnostic::looks_like_key)
        {
            diags.push(
                Diagnostic::error(
                    "key-in-api-key-env",
                    format!("`api_key_env` of provider `{name}` looks like an API key, not the name of a variable"),
                )
                .at(at(&["providers", name, "api_key_env"]))
                .with_label("the value is hidden here")
                .with_help("put the key in an environment variable and write its name here, e.g. api_key_env: OPENAI_API_KEY; then revoke the key, it was written in a file"),
            );
        }
        // The key and the prompts would cross the network in clear text.
        let insecure = locality == Locality::Cloud
            && !p.allow_insecure
            && base_url
                .as_deref()
                .is_some_and(|u| is_plain_http(u) && !loopback);
        if insecure {
            insecure_transport.push(
                Diagnostic::warning(
                    "insecure-base-url",
                    format!(
                        "cloud provider `{name}` is reached over plain http:// on a non-loopback host"
                    ),
                )
                .at(at(&["providers", name, "base_url"]))
                .with_label("its key and every prompt would travel unencrypted")
                .with_help("use https://, or set `allow_insecure: true` on the provider if this network is trusted; `run` refuses it otherwise"),
            );
        }
        let default_slots = launch.as_ref().map_or(1, |l| l.slots);
        providers.insert(
            name.clone(),
            Provider {
                name: name.clone(),
                kind: p.kind,
                base_url,
                api_key_env: p
                    .api_key_env
                    .clone()
                    .or_else(|| p.kind.default_api_key_env().map(str::to_owned)),
                locality,
                limits: Limits {
                    concurrency: p.limits.concurrency.or(if locality == Locality::Local {
                        Some(default_slots)
                    } else {
                        None
                    }),
                    ..p.limits
                },
                launch,
                insecure,
            },
        );
    }
    diags.extend(insecure_transport.iter().cloned());

    // Two managed servers on one port would answer for each other.
    let mut ports: BTreeMap<(String, u16), &str> = BTreeMap::new();
    for (name, p) in &providers {
        if let Some(l) = &p.launch {
            if let Some(first) = ports.insert((l.host.clone(), l.port), name) {
                diags.push(
                    Diagnostic::error(
                        "launch-port-conflict",
                        format!(
                            "providers `{first}` and `{name}` launch servers on the same port {}",
                            l.port
                        ),
                    )
                    .at(doc.key_span(&pointer(["providers", name.as_str(), "launch"])))
                    .with_help("give each managed server its own port in `base_url`"),
                );
            }
        }
    }

    // Models.
    let mut models = IndexMap::new();
    let mut reported_cache_on: BTreeSet<String> = BTreeSet::new();
    for (alias, m) in &file.models {
        let Some(provider) = providers.get(&m.provider) else {
            diags.push(
                Diagnostic::error(
                    "unknown-provider",
                    format!("unknown provider `{}`", m.provider),
                )
                .at(at(&["models", alias, "provider"]))
                .with_label("not defined under `providers`")
                .with_help(
                    did_you_mean(&m.provider, providers.keys().map(String::as_str)).unwrap_or_else(
                        || {
                            format!(
                                "defined providers: {}",
                                one_of(providers.keys().map(String::as_str))
                            )
                        },
                    ),
                ),
            );
            continue;
        };
        let entry = match &m.catalog {
            Some(key) => {
                let e = catalog.get(key);
                if e.is_none() {
                    let sugg = catalog.suggest(key);
                    diags.push(
                        Diagnostic::error(
                            "unknown-catalog-entry",
                            format!("no catalog entry `{key}`"),
                        )
                        .at(at(&["models", alias, "catalog"]))
                        .with_help(match sugg.first() {
                            Some(s) => {
                                format!("did you mean `{s}`? (`tollgate models` lists the catalog)")
                            }
                            None => "`tollgate models` lists the catalog".to_owned(),
                        }),
                    );
                }
                e
            }
            None => catalog.lookup(provider.kind.name(), &m.model),
        };
        let overrides = m.pricing.clone().unwrap_or_default();
        let has_overrides =
            overrides.input_per_mtok.is_some() || overrides.output_per_mtok.is_some();
        let per_tok = |v: Option<f64>| v.map(|x| x / 1_000_000.0);
        let (price, price_source) = match (entry, provider.locality) {
            (Some(e), _) => (
                Price {
                    input: per_tok(overrides.input_per_mtok).unwrap_or(e.input_per_token),
                    output: per_tok(overrides.output_per_mtok).unwrap_or(e.output_per_token),
                    cache_read: per_tok(overrides.cache_read_per_mtok).or(e.cache_read_per_token),
                    cache_write: per_tok(overrides.cache_write_per_mtok)
                        .or(e.cache_write_per_token),
                    cache_write_1h: per_tok(overrides.cache_write_1h_per_mtok)
                        .or(e.cache_write_1h_per_token),
                    batch_input: per_tok(overrides.batch_input_per_mtok)
                        .or(e.batch_input_per_token),
                    batch_output: per_tok(overrides.batch_output_per_mtok)
                        .or(e.batch_output_per_token),
                    // The catalog's tier is relative to the catalog's base
                    // prices: a policy that sets its own base price owns
                    // the whole price (no tier it did not write).
                    long_context: e
                        .long_context
                        .as_ref()
                        .filter(|_| !has_overrides)
                        .map(PriceTier::from),
                },
                if has_overrides {
                    PriceSource::CatalogWithOverrides(e.key.clone())
                } else {
                    PriceSource::Catalog(e.key.clone())
                },
            ),
            (None, locality) => {
                let missing =
                    overrides.input_per_mtok.is_none() || overrides.output_per_mtok.is_none();
                if missing && locality == Locality::Cloud {
                    let sugg = catalog.suggest(&m.model);
                    diags.push(
                        Diagnostic::error("unknown-price", format!("no price known for cloud model `{}`", m.model))
                            .at(at(&["models", alias, "model"]))
                            .with_label("not found in the catalog")
                            .with_help(match sugg.first() {
                                Some(s) => format!("did you mean `{s}`? Otherwise set `pricing.input_per_mtok` and `pricing.output_per_mtok`, or `catalog:` to an entry of `tollgate models`"),
                                None => "set `pricing.input_per_mtok` and `pricing.output_per_mtok`, or `catalog:` to an entry of `tollgate models`".to_owned(),
                            }),
                    );
                }
                let price = Price {
                    input: per_tok(overrides.input_per_mtok).unwrap_or(0.0),
                    output: per_tok(overrides.output_per_mtok).unwrap_or(0.0),
                    cache_read: per_tok(overrides.cache_read_per_mtok),
                    cache_write: per_tok(overrides.cache_write_per_mtok),
                    cache_write_1h: per_tok(overrides.cache_write_1h_per_mtok),
                    batch_input: per_tok(overrides.batch_input_per_mtok),
                    batch_output: per_tok(overrides.batch_output_per_mtok),
                    long_context: None,
                };
                let source = if has_overrides {
                    PriceSource::Policy
                } else {
                    PriceSource::Local
                };
                (price, source)
            }
        };
        if m.endpoint == Endpoint::Completions
            && matches!(
                provider.kind,
                ProviderKind::Anthropic | ProviderKind::Gemini
            )
        {
            diags.push(
                Diagnostic::error(
                    "completions-unsupported",
                    format!("{} has no completions endpoint", provider.kind.name()),
                )
                .at(at(&["models", alias, "endpoint"]))
                .with_help("the completions endpoint is for OpenAI-compatible servers (llama.cpp, vLLM, Ollama); use `endpoint: chat`"),
            );
        }
        let context_window = m.context_window.or(entry.and_then(|e| e.max_input_tokens));
        let Some(context_window) = context_window else {
            diags.push(
                Diagnostic::error(
                    "unknown-context-window",
                    format!("no context window known for model `{alias}`"),
                )
                .at(doc.key_span(&pointer(["models", alias.as_str()])))
                .with_help(
                    "set `context_window` (in tokens) for models that are not in the catalog",
                ),
            );
            continue;
        };
        let tokenizer = match m.tokenizer.as_deref() {
            Some(name) => Tokenizer::from_name(name).unwrap_or(Tokenizer::Estimate),
            None => tokens::tokenizer_for(provider.kind.name(), &m.model),
        };
        let prompt_cache_file = m
            .prompt_cache
            .as_ref()
            .map(|c| (c, "models", alias.as_str()))
            .or_else(|| {
                file.providers[&m.provider]
                    .prompt_cache
                    .as_ref()
                    .map(|c| (c, "providers", m.provider.as_str()))
            });
        let prompt_cache = match prompt_cache_file {
            Some((c, _, _)) if provider.kind == ProviderKind::Anthropic => {
                Some((c.ttl, c.min_tokens))
            }
            Some((_, section, name)) => {
                // Reported once, where it is written (a provider-level one
                // would otherwise repeat for each of its models).
                if section == "models" || !reported_cache_on.contains(name) {
                    reported_cache_on.insert(name.to_owned());
                    diags.push(
                        Diagnostic::error(
                            "prompt-cache-unsupported",
                            format!(
                                "`prompt_cache` only applies to anthropic providers, not {}",
                                provider.kind.name()
                            ),
                        )
                        .at(doc.key_span(&pointer([section, name, "prompt_cache"])))
                        .with_help("OpenAI and Gemini cache repeated prompt prefixes automatically (cached tokens are billed at the cache-read price); remove `prompt_cache`"),
                    );
                }
                None
            }
            None => None,
        };
        models.insert(
            alias.clone(),
            Model {
                alias: alias.clone(),
                provider: m.provider.clone(),
                provider_kind: provider.kind,
                model: m.model.clone(),
                tier: m.tier,
                locality: provider.locality,
                context_window,
                max_output_tokens: m
                    .max_output_tokens
                    .or(entry.and_then(|e| e.max_output_tokens)),
                tokenizer,
                price,
                price_source,
                limits: m.limits,
                endpoint: m.endpoint,
                prompt_cache: prompt_cache.map(|(ttl, _)| ttl),
                prompt_cache_min_tokens: prompt_cache
                    .and_then(|(_, min)| min)
                    .or(entry.and_then(|e| e.prompt_cache_min_tokens))
                    .unwrap_or_else(|| default_prompt_cache_min_tokens(&m.model)),
            },
        );
    }
    let model_help = |name: &str| {
        did_you_mean(name, file.models.keys().map(String::as_str)).unwrap_or_else(|| {
            format!(
                "defined models: {}",
                one_of(file.models.keys().map(String::as_str))
            )
        })
    };
    let check_model = |name: &str, segs: &[&str], diags: &mut Vec<Diagnostic>| {
        if !file.models.contains_key(name) {
            diags.push(
                Diagnostic::error("unknown-model", format!("unknown model `{name}`"))
                    .at(doc.span(&pointer(segs)))
                    .with_label("not defined under `models`")
                    .with_help(model_help(name)),
            );
        }
    };

    // Rules.
    let mut rules: Vec<Rule> = Vec::new();
    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in file.rules.iter().enumerate() {
        let idx = i.to_string();
        let rp = |rest: &[&str]| {
            let mut segs = vec!["rules", idx.as_str()];
            segs.extend_from_slice(rest);
            pointer(segs)
        };
        if let Some(first) = seen_names.insert(&r.name, i) {
            diags.push(
                Diagnostic::error("duplicate-rule", format!("two rules are named `{}`", r.name))
                    .at(doc.span(&rp(&["name"])))
                    .with_help(format!("rule #{} has the same name; plans name the rule that decided, so names must be unique", first + 1)),
            );
        }
        check_model(&r.use_model, &["rules", &idx, "use"], &mut diags);
        let c = &r.when;
        let level = |name: &str, key: &str, diags: &mut Vec<Diagnostic>| -> Option<usize> {
            let found = levels.iter().position(|l| l == name);
            if found.is_none() {
                diags.push(
                    Diagnostic::error(
                        "unknown-level",
                        format!("unknown sensitivity level `{name}`"),
                    )
                    .at(doc.span(&rp(&["when", "sensitivity", key])))
                    .with_help(level_help(name)),
                );
            }
            found
        };
        let sensitivity = match &c.sensitivity {
            None => None,
            Some(SensitivityCondition::Levels(names)) => Some(
                names
                    .to_vec()
                    .iter()
                    .filter_map(|n| level(n, "", &mut diags))
                    .collect::<BTreeSet<_>>(),
            ),
            Some(SensitivityCondition::Bounds(b)) => {
                let mut set: BTreeSet<usize> = (0..levels.len()).collect();
                if let Some(l) = b
                    .above
                    .as_deref()
                    .and_then(|n| level(n, "above", &mut diags))
                {
                    set.retain(|&x| x > l);
                }
                if let Some(l) = b
                    .at_least
                    .as_deref()
                    .and_then(|n| level(n, "at_least", &mut diags))
                {
                    set.retain(|&x| x >= l);
                }
                if let Some(l) = b
                    .below
                    .as_deref()
                    .and_then(|n| level(n, "below", &mut diags))
                {
                    set.retain(|&x| x < l);
                }
                if let Some(l) = b
                    .at_most
                    .as_deref()
                    .and_then(|n| level(n, "at_most", &mut diags))
                {
                    set.retain(|&x| x <= l);
                }
                Some(set)
            }
        };
        let input_tokens = c.input_tokens.as_ref().map(|t| {
            let lo =
                t.gt.map_or(0, |v| v.saturating_add(1))
                    .max(t.gte.unwrap_or(0));
            let hi =
                t.lt.map_or(u64::MAX, |v| v.saturating_sub(1))
                    .min(t.lte.unwrap_or(u64::MAX));
            // `lt: 0` admits nothing: mark the range empty.
            if t.lt == Some(0) { (1, 0) } else { (lo, hi) }
        });
        let conditions = Conditions {
            task: c.task.as_ref().map(|t| t.to_vec().into_iter().collect()),
            sensitivity,
            input_tokens,
            reasoning: c
                .reasoning
                .as_ref()
                .map(|t| t.to_vec().into_iter().collect()),
            latency: c.latency.as_ref().map(|t| t.to_vec().into_iter().collect()),
            tags: c.tags.as_ref().map(|t| t.to_vec().into_iter().collect()),
        };
        if let Some(why) = conditions.is_empty() {
            diags.push(
                Diagnostic::error(
                    "rule-never-matches",
                    format!("rule `{}` can never match: {why}", r.name),
                )
                .at(doc.span(&rp(&["when"])))
                .with_help("fix or remove the condition"),
            );
        } else if let Some(earlier) = rules.iter().find(|e| e.conditions.covers(&conditions)) {
            diags.push(
                Diagnostic::error(
                    "rule-never-matches",
                    format!("rule `{}` can never match", r.name),
                )
                .at(doc.span(&rp(&["name"])))
                .with_label(format!(
                    "every step it matches is taken first by rule `{}`",
                    earlier.name
                ))
                .with_help(if earlier.conditions.is_catch_all() {
                    format!(
                        "rule `{}` has no conditions and matches everything: move it to the end",
                        earlier.name
                    )
                } else {
                    format!(
                        "move it above rule `{}`, or narrow `{}`",
                        earlier.name, earlier.name
                    )
                }),
            );
        }
        rules.push(Rule {
            name: r.name.clone(),
            description: r.description.clone(),
            conditions,
            use_model: r.use_model.clone(),
        });
    }

    // Fallbacks.
    for (from, chain) in &file.fallbacks {
        if !file.models.contains_key(from) {
            diags.push(
                Diagnostic::error(
                    "unknown-model",
                    format!("fallbacks for unknown model `{from}`"),
                )
                .at(doc.key_span(&pointer(["fallbacks", from.as_str()])))
                .with_help(model_help(from)),
            );
        }
        for (j, to) in chain.iter().enumerate() {
            let j = j.to_string();
            if to == from {
                diags.push(
                    Diagnostic::error(
                        "fallback-to-self",
                        format!("model `{from}` falls back to itself"),
                    )
                    .at(at(&["fallbacks", from, &j]))
                    .with_help("remove it from its own fallback list"),
                );
            } else {
                check_model(to, &["fallbacks", from, &j], &mut diags);
            }
        }
    }

    // The flagship to compare against.
    let flagship = match &file.flagship {
        Some(f) => {
            check_model(f, &["flagship"], &mut diags);
            Some(f.clone())
        }
        None => file
            .models
            .iter()
            .find(|(_, m)| m.tier == Tier::Flagship)
            .map(|(k, _)| k.clone()),
    };

    // Budgets over time: the schema rejects negative numbers; what is left
    // are combinations that cannot all hold.
    let b = &file.budgets;
    if let (Some(d), Some(m)) = (b.daily_usd, b.monthly_usd) {
        if d > m {
            diags.push(
                Diagnostic::error(
                    "budget-order",
                    format!("the daily budget (${d}) is larger than the monthly budget (${m})"),
                )
                .at(at(&["budgets", "daily_usd"]))
                .with_help("a day's spend counts against the month too: lower daily_usd or raise monthly_usd"),
            );
        }
    }
    for (key, limit) in [("daily_usd", b.daily_usd), ("monthly_usd", b.monthly_usd)] {
        if let (Some(run), Some(limit)) = (b.run_usd, limit) {
            if run > limit {
                diags.push(
                    Diagnostic::error(
                        "budget-order",
                        format!("the run budget (${run}) is larger than `{key}` (${limit})"),
                    )
                    .at(at(&["budgets", "run_usd"]))
                    .with_help(format!(
                        "one run can never spend more than `{key}` allows: lower run_usd"
                    )),
                );
            }
        }
    }
    let cache_ttl = match &file.cache.ttl {
        None => DEFAULT_CACHE_TTL,
        Some(v) => match crate::workflow::parse_duration(v) {
            Some(d) => d,
            None => {
                diags.push(
                    Diagnostic::error("bad-duration", format!("cache ttl {v} is not a duration"))
                        .at(at(&["cache", "ttl"]))
                        .with_help("use a number with a unit: 30m, 12h, 7d; 0 turns the cache off"),
                );
                DEFAULT_CACHE_TTL
            }
        },
    };

    let tier_shares = file
        .budgets
        .tiers
        .iter()
        .map(|(t, b)| (*t, b.max_share_of_calls))
        .collect();

    let policy = Policy {
        name: file.name.clone().unwrap_or_else(|| {
            doc.file
                .path
                .file_stem()
                .map_or_else(|| "policy".to_owned(), |s| s.to_string_lossy().into_owned())
        }),
        levels,
        cloud_max,
        default_level,
        providers,
        models,
        rules,
        fallbacks: file.fallbacks.clone(),
        flagship,
        run_budget_usd: file.budgets.run_usd,
        daily_budget_usd: file.budgets.daily_usd,
        monthly_budget_usd: file.budgets.monthly_usd,
        tier_shares,
        cache_ttl,
        insecure_transport,
    };
    (policy, diags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;

    fn compile_text(text: &str) -> (Policy, Vec<Diagnostic>) {
        let doc = Document::parse(SourceFile::new("p.yaml", text)).unwrap();
        let loaded: Loaded<PolicyFile> = from_document(doc, Format::Policy).unwrap();
        compile(&loaded.value, &loaded.doc, Catalog::builtin())
    }

    const BASE: &str = "version: 1\nproviders:\n  ollama: {kind: openai-compatible, base_url: \"http://127.0.0.1:11434/v1\"}\n  openai: {kind: openai}\nmodels:\n  local: {provider: ollama, model: \"qwen3:8b\", tier: local, context_window: 32768}\n  budget: {provider: openai, model: gpt-4o-mini, tier: budget}\n";

    #[test]
    fn loopback_openai_compatible_is_local() {
        let (p, d) = compile_text(&format!("{BASE}rules:\n  - {{name: all, use: local}}\n"));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(p.models["local"].locality, Locality::Local);
        assert!(p.models["local"].price.is_free());
        assert_eq!(p.models["budget"].locality, Locality::Cloud);
        assert!(p.models["budget"].price.input > 0.0);
        assert!(is_loopback("http://[::1]:8080/v1"));
        assert!(!is_loopback("https://api.example.com/v1"));
    }

    #[test]
    fn loopback_is_the_host_connected_to_not_what_the_url_seems_to_say() {
        for local in [
            "http://127.0.0.1:8080/v1",
            "http://127.9.9.9/v1",
            "http://[::1]:8080/v1",
            "http://localhost:11434/v1",
            "http://LOCALHOST:11434/v1",
            // WHATWG IPv4 forms reqwest normalises to 127.0.0.1.
            "http://0x7f.1:8080/v1",
            "http://2130706433:8080/v1",
            "http://127.1:8080/v1",
            "http://0177.0.0.1/v1",
            "http://[::ffff:127.0.0.1]:8080/v1",
            // Userinfo that names a remote host does not make it remote.
            "http://example.com@127.0.0.1:8080/v1",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            // Userinfo is not the host.
            "http://[::1]@example.com/v1",
            "http://127.0.0.1:1@example.com/v1",
            "http://127.0.0.1:8080@example.com:8080/v1",
            "http://localhost@example.com/v1",
            // Names that resolve through DNS.
            "http://localhost./v1",
            "http://localhost.example.com/v1",
            "http://foo.localhost/v1",
            "http://127.0.0.1.nip.io/v1",
            "http://0.0.0.0:8080/v1",
            "https://api.example.com/v1",
            "not a url",
            "http://127.0.0.1 .example.com/v1",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
        // A userinfo trick does not make an openai-compatible server local,
        // nor let `launch` start a server for it.
        let (p, d) = compile_text(
            "version: 1\nproviders:\n  tricked: {kind: openai-compatible, base_url: \"http://127.0.0.1:1@example.com:8080/v1\"}\nmodels:\n  m: {provider: tricked, model: x, tier: local, pricing: {input_per_mtok: 0, output_per_mtok: 0}}\nrules:\n  - {name: all, use: m}\n",
        );
        assert_eq!(p.providers["tricked"].locality, Locality::Cloud, "{d:?}");
        assert!(p.providers["tricked"].insecure);
        assert_eq!(
            host_port("http://[::1]:8080/v1"),
            Some(("::1".to_owned(), 8080))
        );
        assert_eq!(
            host_port("http://x@127.0.0.1:8080/v1"),
            Some(("127.0.0.1".to_owned(), 8080))
        );
    }

    #[test]
    fn prompt_cache_minimums_come_from_the_policy_the_catalog_or_the_family() {
        let (p, d) = compile_text(
            "version: 1\nproviders:\n  anthropic: {kind: anthropic, prompt_cache: {ttl: 1h}}\nmodels:\n  \
             sonnet: {provider: anthropic, model: claude-sonnet-4-6, tier: workhorse}\n  \
             haiku: {provider: anthropic, model: claude-haiku-4-5, tier: budget, prompt_cache: {min_tokens: 3000}}\n  \
             custom-haiku: {provider: anthropic, model: my-haiku-x, tier: budget, context_window: 100000, \
             pricing: {input_per_mtok: 1, output_per_mtok: 5}}\n  \
             custom: {provider: anthropic, model: my-model, tier: budget, context_window: 100000, \
             pricing: {input_per_mtok: 1, output_per_mtok: 5, cache_write_1h_per_mtok: 2}}\n\
             rules:\n  - {name: all, use: sonnet}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        let m = |a: &str| {
            (
                p.models[a].prompt_cache,
                p.models[a].prompt_cache_min_tokens,
            )
        };
        // The catalog's minimum, the provider's TTL.
        assert_eq!(m("sonnet"), (Some(CacheTtl::OneHour), 1024));
        // The model's own block replaces the provider's: its TTL defaults to 5m.
        assert_eq!(m("haiku"), (Some(CacheTtl::FiveMinutes), 3000));
        // Not in the catalog: the family's documented minimum.
        assert_eq!(m("custom-haiku"), (Some(CacheTtl::OneHour), 2048));
        assert_eq!(m("custom"), (Some(CacheTtl::OneHour), 1024));
        assert_eq!(p.models["custom"].price.cache_write_1h, Some(2e-6));
    }

    #[test]
    fn shadowed_rule_is_reported() {
        let (_, d) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: all, use: local}}\n  - {{name: late, when: {{task: x}}, use: budget}}\n"
        ));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].message, "rule `late` can never match");
    }

    #[test]
    fn empty_conditions_are_reported() {
        let (_, d) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: r, when: {{sensitivity: {{above: secret}}}}, use: local}}\n  - {{name: z, when: {{input_tokens: {{gt: 10, lt: 5}}}}, use: local}}\n"
        ));
        assert_eq!(d.len(), 2, "{d:?}");
    }

    #[test]
    fn unknown_names_have_hints() {
        let (_, d) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: all, use: locl}}\nfallbacks:\n  local: [budgt]\n"
        ));
        let msgs: Vec<_> = d
            .iter()
            .map(|d| (d.message.as_str(), d.help.as_deref()))
            .collect();
        assert!(
            msgs.contains(&("unknown model `locl`", Some("did you mean `local`?"))),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&("unknown model `budgt`", Some("did you mean `budget`?"))),
            "{msgs:?}"
        );
    }

    #[test]
    fn candidates_follow_fallback_chains_once() {
        let (p, _) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: all, use: local}}\nfallbacks:\n  local: [budget]\n  budget: [local]\n"
        ));
        assert_eq!(p.candidates("local"), vec!["local", "budget"]);
    }
}
