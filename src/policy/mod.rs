//! The policy: which model serves which step.
//!
//! - [`file`] — the file as written (serde types of `policies/*.yaml`);
//! - [`compile`] — resolves every name (providers, models, levels,
//!   fallbacks), prices every model from the catalog and the policy's
//!   overrides, turns rule conditions into plain sets and ranges, and finds
//!   rules that can never match. All problems are reported together;
//! - this file — the compiled [`Policy`] that routing uses without further
//!   checks, and [`load`].
//!
//! The compiled policy is immutable and does no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
pub use crate::cost::{Price, PriceTier};
use crate::diagnostic::Diagnostic;
use crate::schema::Format;
use crate::tokens::Tokenizer;
pub use crate::usage::CacheTtl;
use crate::workflow::{Latency, Loaded, Reasoning, from_document, load_document};

mod compile;
mod escalate;
pub mod file;
pub mod lifecycle;
mod models;
mod providers;

pub use compile::compile;
pub use file::*;

/// How to start a provider's local server (llama.cpp's `llama-server`).
/// Paths are kept as written; `${VAR}` expansion happens when it is started,
/// so plans do not depend on the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The stem of its log and pid files under the log folder, and its name
    /// in progress lines: the provider's name, or `PROVIDER-PORT` for each
    /// server of a pool.
    pub id: String,
    /// Which server the binary is.
    pub server: Server,
    pub binary: String,
    /// The GGUF file llama-server loads (empty for Ollama, which serves the
    /// models pulled into it).
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

/// The local server `launch` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// llama.cpp's `llama-server -m MODEL --host … --port …`.
    LlamaServer,
    /// `ollama serve`, on the provider's address through `OLLAMA_HOST`.
    Ollama,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    OpenaiCompatible,
    Openai,
    Anthropic,
    Gemini,
    Mistral,
    Openrouter,
    /// Ollama's native API (`/api/chat`): its own options (`num_ctx`,
    /// `keep_alive`), NDJSON streams; local on loopback.
    Ollama,
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
            ProviderKind::Ollama => "ollama",
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
            // Ollama's own default (`OLLAMA_HOST`); the native API's paths
            // start with `/api`, so the base has no `/v1`.
            ProviderKind::Ollama => Some("http://127.0.0.1:11434"),
        }
    }

    /// A server people run themselves (llama.cpp, vLLM, Ollama): local when
    /// its address is loopback, and it may be declared `locality: local`.
    pub fn is_self_hosted(self) -> bool {
        matches!(self, ProviderKind::OpenaiCompatible | ProviderKind::Ollama)
    }

    pub fn default_api_key_env(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenaiCompatible => None,
            ProviderKind::Openai => Some("OPENAI_API_KEY"),
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::Gemini => Some("GEMINI_API_KEY"),
            ProviderKind::Mistral => Some("MISTRAL_API_KEY"),
            ProviderKind::Openrouter => Some("OPENROUTER_API_KEY"),
            ProviderKind::Ollama => None,
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
    /// The servers tollgate manages for it (`launch`): none, the one at its
    /// `base_url`, or one per endpoint of a pool.
    pub launch: Vec<Launch>,
    /// A cloud provider reached over plain `http://` on a non-loopback host
    /// without `allow_insecure`: a warning at `check`/`plan`, an error at
    /// `run` (see [`Policy::insecure_transport`]).
    pub insecure: bool,
    /// A pool's servers (empty for a provider at one `base_url`, which is
    /// then the first of them).
    pub endpoints: Vec<PoolEndpoint>,
    pub sticky: Option<Sticky>,
    /// OpenRouter's provider preferences, sent with every call.
    pub routing: Option<Routing>,
    /// Ollama only: how long the server keeps the model loaded after a call
    /// (`keep_alive`: a duration string such as `"10m"`, or seconds).
    pub keep_alive: Option<serde_json::Value>,
    /// The most one batch may hold (the policy's `batch:` within the
    /// provider's own limits); `None` for a provider without a batch API.
    pub batch: Option<BatchLimits>,
}

/// The most one provider batch may hold: a larger one is refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_requests: u64,
    /// The serialised requests: OpenAI's JSONL input file, Anthropic's
    /// request body.
    pub max_bytes: u64,
}

/// provider-apis.md §2: "≤50,000 requests and ≤200 MB per input file".
pub const OPENAI_BATCH_LIMITS: BatchLimits = BatchLimits {
    max_requests: 50_000,
    max_bytes: 200 * 1024 * 1024,
};

/// provider-apis.md §3, Message Batches: "100,000 requests or 256 MB".
pub const ANTHROPIC_BATCH_LIMITS: BatchLimits = BatchLimits {
    max_requests: 100_000,
    max_bytes: 256 * 1024 * 1024,
};

impl BatchLimits {
    /// What a provider kind's batch API takes, if it has one.
    pub fn of(kind: ProviderKind) -> Option<BatchLimits> {
        match kind {
            ProviderKind::Openai => Some(OPENAI_BATCH_LIMITS),
            ProviderKind::Anthropic => Some(ANTHROPIC_BATCH_LIMITS),
            _ => None,
        }
    }
}

/// One server of a pool and how many calls it takes at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEndpoint {
    pub url: String,
    pub slots: u32,
    /// Its place in the policy's `endpoints` list (a duplicate left out of
    /// the pool shifts the rest): where a diagnostic about it points.
    pub declared: usize,
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
    /// The catalog says the model can spend reasoning tokens: a step's
    /// `reasoning:` level is sent to it as its provider's knob
    /// ([`crate::reasoning`]).
    pub supports_reasoning: bool,
    /// The model takes images (the catalog's `supports_vision`, or the
    /// policy's word): routing's modality gate asks it.
    pub supports_vision: bool,
    /// The model takes PDF documents (`supports_pdf_input`).
    pub supports_pdf_input: bool,
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
    /// A learned router's verdict on the step's prompt.
    pub router: Option<RouterCondition>,
}

/// A rule's `router:` condition: which of the policy's routers
/// ([`Policy::routers`]) and which threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterCondition {
    /// Index into [`Policy::routers`].
    pub slot: usize,
    pub threshold: RouterThreshold,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterThreshold {
    /// The file's calibrated threshold.
    Calibrated,
    Fixed(f64),
    /// The threshold that sends this share of the calibration split.
    TargetShare(f64),
}

/// A router file a policy's rules name, loaded with the policy
/// ([`load`]): compiling stays free of I/O.
#[derive(Debug, Clone)]
pub struct PolicyRouter {
    /// As written in the policy.
    pub file: String,
    /// Relative to the policy file.
    pub path: std::path::PathBuf,
    /// Where the first rule names it.
    pub at: Option<crate::diagnostic::Span>,
    /// Set by [`load`] (`None` only between compiling and loading).
    pub router: Option<std::sync::Arc<crate::router::Router>>,
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
            && match (&self.router, &other.router) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a == b,
            }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: String,
    pub conditions: Conditions,
    /// A model alias.
    pub use_model: String,
    /// Try `use_model` first, then escalate when a check fails.
    pub escalate: Option<Cascade>,
}

/// A rule's cascade, compiled: the escalation target and the checks the
/// first answer must pass (see `run::cascade` for how they are applied).
#[derive(Debug, Clone)]
pub struct Cascade {
    /// A model alias (then its fallbacks).
    pub to: String,
    /// The checks whose failure escalates.
    pub when: BTreeSet<EscalateWhen>,
    /// `low_confidence`: the lowest acceptable mean token logprob.
    pub min_mean_logprob: Option<f64>,
    /// `no_match`: the answer must match this, and contain `contains`.
    pub matches: Option<regex::Regex>,
    pub contains: Option<String>,
    /// `judge`: the rubric and the lowest accepted score.
    pub judge: Option<JudgeCheck>,
}

/// A cascade's judge: a call of task `judge` (routed by the policy, the
/// step's sensitivity carried over) scores the first answer from 0 to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeCheck {
    pub rubric: String,
    pub min_score: f64,
}

impl Cascade {
    /// The judge, when the cascade escalates on its score.
    pub fn judged(&self) -> Option<&JudgeCheck> {
        self.judge
            .as_ref()
            .filter(|_| self.when.contains(&EscalateWhen::Judge))
    }

    /// Does the first call need token logprobs from the server?
    pub fn wants_logprobs(&self) -> bool {
        self.when.contains(&EscalateWhen::LowConfidence)
    }
}

impl ProviderKind {
    /// Can tollgate ask this kind of provider for token logprobs (the
    /// `low_confidence` check)? OpenAI's chat and completions APIs and
    /// OpenAI-compatible servers (llama.cpp, vLLM) return them when asked
    /// with `logprobs`; OpenRouter passes the field to its upstreams. The
    /// Anthropic Messages API has no logprobs; Gemini's `responseLogprobs`
    /// is not offered by every model and tollgate does not ask for it;
    /// Mistral's chat API does not document them.
    pub fn returns_logprobs(self) -> bool {
        matches!(
            self,
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Openrouter
        )
    }
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
    /// What one user's runs may spend in a UTC day, on every machine that
    /// shares the journal.
    pub per_user_daily_budget_usd: Option<f64>,
    pub tier_shares: BTreeMap<Tier, f64>,
    /// The task names it adds to the known vocabulary: its `tasks:` and
    /// every task its rules name. A workflow's steps may use them.
    pub tasks: BTreeSet<String>,
    /// How old a cached answer may be; zero turns the cache off.
    pub cache_ttl: std::time::Duration,
    /// Every warning the compile found, in file order (the errors stop
    /// [`load`]; these do not). Shown by the CLI after loading; plain http to
    /// a cloud provider is among them (see [`Policy::insecure_transport`]).
    pub warnings: Vec<Diagnostic>,
    /// The router files its rules name, each once, in file order.
    pub routers: Vec<PolicyRouter>,
}

/// The response cache's default: answers up to a week old are reused.
pub const DEFAULT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

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

    /// The threshold a router condition compares with (`None`: the
    /// router file is not loaded).
    pub fn router_threshold(&self, c: &RouterCondition) -> Option<f64> {
        let r = self.routers.get(c.slot)?.router.as_ref()?;
        Some(match c.threshold {
            RouterThreshold::Calibrated => r.threshold,
            RouterThreshold::Fixed(t) => t,
            RouterThreshold::TargetShare(s) => r.threshold_for(s),
        })
    }

    /// Each router's score of a step's calls (the highest of a fan-out's:
    /// a route serves every item), by [`Policy::routers`] slot; empty when
    /// the step makes no call.
    pub fn router_scores(&self, calls: impl Iterator<Item = String> + Clone) -> Vec<f64> {
        if calls.clone().next().is_none() {
            return Vec::new();
        }
        self.routers
            .iter()
            .map(|r| {
                r.router.as_ref().map_or(0.0, |m| {
                    calls.clone().map(|t| m.score(&t)).fold(0.0, f64::max)
                })
            })
            .collect()
    }

    /// The flagship model used for the "all on flagship" comparison.
    pub fn flagship_model(&self) -> Option<&Model> {
        self.flagship.as_ref().and_then(|f| self.models.get(f))
    }

    /// The warnings about a cloud provider reached over plain http (one per
    /// provider with [`Provider::insecure`]): `check` and `plan` warn,
    /// `run` and a live `test` refuse them as errors.
    pub fn insecure_transport(&self) -> impl Iterator<Item = &Diagnostic> {
        self.warnings.iter().filter(|d| d.code == INSECURE_BASE_URL)
    }
}

/// The code of the warning [`Policy::insecure_transport`] gives.
pub const INSECURE_BASE_URL: &str = "insecure-base-url";

// ---------------------------------------------------------------------------
// Loading and compiling.

pub fn load_file(path: &Path) -> Result<Loaded<PolicyFile>, Vec<Diagnostic>> {
    from_document(load_document(path)?, Format::Policy)
}

/// Loads and compiles a policy file. Its errors are the `Err`; its
/// warnings travel in [`Policy::warnings`], for the caller to show.
pub fn load(path: &Path) -> Result<(Loaded<PolicyFile>, Policy), Vec<Diagnostic>> {
    compile_loaded(load_file(path)?)
}

/// Loads and compiles a policy held in memory (the built-in one, or a file
/// at a git revision), named `name` in its diagnostics.
pub fn load_text(name: &str, text: &str) -> Result<(Loaded<PolicyFile>, Policy), Vec<Diagnostic>> {
    let doc = crate::yaml::Document::parse(crate::diagnostic::SourceFile::new(name, text))?;
    compile_loaded(from_document(doc, Format::Policy)?)
}

fn compile_loaded(
    file: Loaded<PolicyFile>,
) -> Result<(Loaded<PolicyFile>, Policy), Vec<Diagnostic>> {
    let (mut policy, mut diags) = compile(&file.value, &file.doc, Catalog::builtin());
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    diags.extend(load_routers(&mut policy));
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    Ok((file, policy))
}

/// Reads the router files a compiled policy's rules name (compiling does
/// no I/O): each problem a diagnostic, in the router file or, when it
/// cannot be read, at the policy line that names it.
pub fn load_routers(policy: &mut Policy) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for r in &mut policy.routers {
        match crate::router::Router::load(&r.path) {
            Ok(m) => r.router = Some(std::sync::Arc::new(m)),
            Err(d) if d.span.is_some() => diags.push(d),
            Err(d) => diags.push(d.at(r.at.clone())),
        }
    }
    diags
}

/// The name the built-in policy goes by: in diagnostics, plans and the
/// journal (a resumed run started under it loads it again by this name).
pub const BUILTIN_NAME: &str = "<built-in policy>";

/// The policy used when there is no policy file: everything on the local
/// llama.cpp server with the Gemma model `scripts/setup-local.sh` installs.
/// It is `policies/local.yaml`, compiled in, so the two cannot drift.
pub const BUILTIN_TEXT: &str = include_str!("../../policies/local.yaml");

/// Loads and compiles the built-in policy, exactly as [`load`] does a file.
pub fn load_builtin() -> Result<(Loaded<PolicyFile>, Policy), Vec<Diagnostic>> {
    load_text(BUILTIN_NAME, BUILTIN_TEXT)
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

#[cfg(test)]
mod tests {
    /// The built-in policy compiles clean, under its name, and is the
    /// local one (nothing in it can need a key).
    #[test]
    fn the_built_in_policy_compiles_without_warnings() {
        let (file, p) = super::load_builtin().expect("the built-in policy compiles");
        assert_eq!(file.path(), std::path::Path::new(super::BUILTIN_NAME));
        assert_eq!(p.name, "local");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(
            p.models
                .values()
                .all(|m| m.locality == super::Locality::Local)
        );
    }
}
