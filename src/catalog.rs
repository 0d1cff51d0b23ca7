//! The model catalog: prices, context windows and capability flags per model.
//!
//! Tollgate needs these numbers for dry runs (what will this workflow cost?),
//! for policy-based routing (is a model cheap enough, is its context big
//! enough?) and for budget checks. Rather than hand-maintaining prices, the
//! catalog is *derived* from LiteLLM's community-maintained
//! `model_prices_and_context_window.json` (MIT, Copyright (c) 2023 Berri AI;
//! see `catalog/NOTICE`).
//!
//! The upstream file describes ~4,800 models across ~150 providers and is
//! ~3.5 MB, most of it image, audio, embedding and cloud-reseller entries
//! tollgate cannot call. [`build_from_litellm`] trims it to the chat and
//! completion models of the providers tollgate talks to and writes the small,
//! stable `catalog/models.json` that is compiled into the binary
//! ([`Catalog::builtin`]). Keeping a generated, checked-in file (instead of
//! parsing the upstream file at run time) makes prices reviewable in diffs and
//! keeps runs reproducible: a price changes only when someone regenerates.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The trimmed catalog shipped with tollgate.
const BUILTIN_JSON: &str = include_str!("../catalog/models.json");

/// Attribution carried inside every generated `models.json`, so the license
/// notice travels with the data even if the file is copied on its own.
const NOTICE: &str = "Derived from LiteLLM's model_prices_and_context_window.json \
(https://github.com/BerriAI/litellm). Copyright (c) 2023 Berri AI. \
Licensed under the MIT License; the full notice, the source file's sha256 and the \
regeneration command are in catalog/NOTICE.";

/// How the file was produced, written into `models.json` so that anyone
/// reading it knows not to edit it by hand.
const REGENERATE: &str = "Generated file, do not edit: \
tollgate models --regenerate SOURCE_JSON > catalog/models.json";

/// Providers whose models tollgate can route to, as LiteLLM spells them.
/// `openrouter` and `ollama` are kept when the source has them.
const KEPT_PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "gemini",
    "mistral",
    "groq",
    "xai",
    "deepseek",
    "openrouter",
    "ollama",
];

/// Top-level keys of the LiteLLM file that are not models: `sample_spec`
/// documents the schema (its values are prose, not prices) and
/// `fallback_generalizations` holds routing rules.
const NON_MODEL_KEYS: &[&str] = &["sample_spec", "fallback_generalizations"];

/// Alias chains longer than this are treated as broken (a cycle, most
/// likely) and the alias is dropped instead of looping forever.
const MAX_ALIAS_DEPTH: usize = 8;

/// At most this many "did you mean" hints; more is noise.
const MAX_SUGGESTIONS: usize = 3;

/// Suggestions less similar than this (normalized Damerau-Levenshtein,
/// 0.0..=1.0) are not worth showing: below it, the "closest" key is usually
/// an unrelated model that merely shares a vendor prefix.
const MIN_SUGGESTION_SIMILARITY: f64 = 0.5;

/// One model's prices and limits. All costs are USD per token, the unit
/// LiteLLM uses, so a cost estimate is a plain multiplication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// LiteLLM key, e.g. "gpt-4o-mini", "gemini/gemini-2.5-flash".
    pub key: String,
    /// LiteLLM provider, e.g. "openai", "anthropic", "gemini".
    pub provider: String,
    /// "chat" or "completion"; absent when the source does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub input_per_token: f64,
    pub output_per_token: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_token: Option<f64>,
    /// `cache_creation_input_token_cost`: writing a cache entry with the
    /// default (5-minute) lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_token: Option<f64>,
    /// `cache_creation_input_token_cost_above_1hr`: writing a cache entry
    /// with the 1-hour lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h_per_token: Option<f64>,
    /// `input_cost_per_token_batches`: the batch API's (usually halved) price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_input_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_output_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub supports_prompt_caching: bool,
    #[serde(default)]
    pub supports_response_schema: bool,
    /// Smallest prompt prefix the provider will cache; shorter prefixes are
    /// billed at the normal input price even when caching is requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_min_tokens: Option<u64>,
    /// "YYYY-MM-DD" as given by the source: the day the provider retires
    /// the model (see [`crate::policy::lifecycle`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_date: Option<String>,
    /// The model the provider names as its replacement, as a LiteLLM key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor_model: Option<String>,
    /// The model can spend reasoning ("thinking") tokens, which the
    /// providers bill as output tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supports_reasoning: bool,
    /// The model takes images as input (the source's `supports_vision`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supports_vision: bool,
    /// The model takes PDF files as input (`supports_pdf_input`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supports_pdf_input: bool,
    /// The long-context price tier (`*_above_Nk_tokens`): a request whose
    /// prompt is above `above_tokens` is billed at these prices, every
    /// token of it (see [`crate::cost`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<CatalogTier>,
}

/// Prices of a long-context tier, USD per token, like [`CatalogEntry`]'s.
/// A cache or batch price the source does not give for the tier is derived
/// when pricing (see [`crate::cost`]), never taken from the base tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogTier {
    /// The tier applies when the prompt has more than this many tokens
    /// (`_above_200k_tokens` = 200,000).
    pub above_tokens: u64,
    pub input_per_token: f64,
    pub output_per_token: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_input_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_output_per_token: Option<f64>,
}

/// Errors from reading or building a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The text is not JSON, or not JSON of the expected shape.
    #[error("catalog JSON could not be parsed: {0}")]
    Parse(#[from] serde_json::Error),
    /// The JSON parsed but its content is unusable (duplicate keys, negative
    /// prices, no models at all, ...).
    #[error("invalid catalog: {0}")]
    Invalid(String),
}

/// The on-disk layout of `catalog/models.json`. The notice fields come first
/// so that they are the first thing a reader of the file sees.
#[derive(Serialize)]
struct CatalogFileOut<'a> {
    #[serde(rename = "_notice")]
    notice: &'a str,
    #[serde(rename = "_generated")]
    generated: &'a str,
    models: Vec<&'a CatalogEntry>,
}

/// Reading side of the same layout. Unknown top-level fields (including
/// `_notice` and `_generated`) are ignored so the format can grow.
#[derive(Deserialize)]
struct CatalogFileIn {
    models: Vec<CatalogEntry>,
}

/// A set of [`CatalogEntry`] values indexed by key.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// A `BTreeMap` so that [`Catalog::entries`] is sorted by key without
    /// re-sorting on every call, and output built from it is deterministic.
    entries: BTreeMap<String, CatalogEntry>,
}

impl Catalog {
    /// The catalog compiled into the binary, parsed on first use.
    ///
    /// Parsing happens once per process (`OnceLock`) because most commands
    /// never need prices, and those that do may ask many times.
    ///
    /// # Panics
    ///
    /// Panics if the compiled-in `catalog/models.json` is malformed. That
    /// file is generated, checked in and parsed by the unit tests, so this is
    /// a build defect rather than a runtime condition; there is no sensible
    /// way to continue without prices.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Catalog::from_json(BUILTIN_JSON)
                .unwrap_or_else(|e| panic!("compiled-in catalog/models.json is invalid: {e}"))
        })
    }

    /// Parse a trimmed catalog in the `models.json` format
    /// (`{"models": [entry, ...]}`; other top-level fields are ignored).
    ///
    /// Rejects duplicate or empty keys and negative or non-finite prices, so a
    /// hand-edited catalog cannot silently produce nonsense cost estimates.
    pub fn from_json(text: &str) -> Result<Catalog, CatalogError> {
        let file: CatalogFileIn = serde_json::from_str(text)?;
        let mut entries = BTreeMap::new();
        for entry in file.models {
            validate_entry(&entry)?;
            if let Some(previous) = entries.insert(entry.key.clone(), entry) {
                return Err(CatalogError::Invalid(format!(
                    "model key {:?} appears more than once",
                    previous.key
                )));
            }
        }
        Ok(Catalog { entries })
    }

    /// The entry with exactly this LiteLLM key.
    pub fn get(&self, key: &str) -> Option<&CatalogEntry> {
        self.entries.get(key)
    }

    /// Find the entry for a model as a workflow policy names it.
    ///
    /// Policies name models the way the provider's API does, while LiteLLM
    /// keys some providers with a prefix ("gemini/gemini-2.5-flash") and
    /// OpenRouter names models "vendor/model". Candidates are tried in this
    /// order, first match wins:
    ///
    /// 1. the provider's LiteLLM prefix + `model` ("gemini/" + "gemini-2.5-flash");
    /// 2. `model` as given;
    /// 3. when `model` is "vendor/name" (OpenRouter, OpenAI-compatible
    ///    gateways): `name` under the vendor's LiteLLM prefix, then `name`;
    /// 4. each of the above with a trailing date removed
    ///    ("claude-sonnet-4-5-20250929" -> "claude-sonnet-4-5"), because a
    ///    dated snapshot is normally priced like its alias, and new snapshots
    ///    appear before the catalog is regenerated.
    ///
    /// For first-party provider kinds ("openai", "anthropic", "gemini",
    /// "mistral", ...) a candidate only matches if the entry belongs to that
    /// provider: Mistral serving a model named like a DeepSeek model does not
    /// charge DeepSeek's prices, and a wrong price is worse than none.
    ///
    /// Returns `None` when nothing matches; local models ("qwen3:8b") are
    /// usually not in the catalog and callers should treat them as free or
    /// unknown rather than fail.
    pub fn lookup(&self, provider_kind: &str, model: &str) -> Option<&CatalogEntry> {
        let kind = provider_kind.trim().to_ascii_lowercase();
        let model = model.trim();
        if model.is_empty() {
            return None;
        }
        let candidates = lookup_candidates(&kind, model);
        let exact = candidates.iter().map(|(name, req)| (name.clone(), *req));
        let undated = candidates
            .iter()
            .filter_map(|(name, req)| strip_date_suffix(name).map(|n| (n.to_string(), *req)));
        exact.chain(undated).find_map(|(name, required)| {
            self.entries
                .get(&name)
                .filter(|entry| required.is_none_or(|p| entry.provider == p))
        })
    }

    /// All entries, sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.values()
    }

    /// Up to three keys most similar to `name`, best first, for "unknown
    /// model, did you mean ...?" messages.
    ///
    /// Each key is compared both in full and without its provider prefix, so
    /// that "gemini-2.5-flsh" finds "gemini/gemini-2.5-flash". Damerau-
    /// Levenshtein is used because the typical typo is a transposition or a
    /// dropped character ("gtp-4o", "gpt-4o-mni"). Keys below a similarity
    /// threshold are not suggested at all.
    pub fn suggest(&self, name: &str) -> Vec<&str> {
        let wanted = name.trim().to_lowercase();
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut scored: Vec<(f64, &str)> = self
            .entries
            .keys()
            .map(|key| {
                let full = key.to_lowercase();
                let bare = full.rsplit('/').next().unwrap_or(&full);
                let score = strsim::normalized_damerau_levenshtein(&wanted, &full)
                    .max(strsim::normalized_damerau_levenshtein(&wanted, bare));
                (score, key.as_str())
            })
            .filter(|(score, _)| *score >= MIN_SUGGESTION_SIMILARITY)
            .collect();
        // Best score first; ties broken by key so the hint is deterministic.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(MAX_SUGGESTIONS)
            .map(|(_, key)| key)
            .collect()
    }
}

/// Reject entries whose numbers would make cost estimates meaningless.
fn validate_entry(entry: &CatalogEntry) -> Result<(), CatalogError> {
    if entry.key.trim().is_empty() {
        return Err(CatalogError::Invalid("a model has an empty key".into()));
    }
    if entry.provider.trim().is_empty() {
        return Err(CatalogError::Invalid(format!(
            "model {:?} has an empty provider",
            entry.key
        )));
    }
    let costs = [
        ("input_per_token", Some(entry.input_per_token)),
        ("output_per_token", Some(entry.output_per_token)),
        ("cache_read_per_token", entry.cache_read_per_token),
        ("cache_write_per_token", entry.cache_write_per_token),
        ("cache_write_1h_per_token", entry.cache_write_1h_per_token),
        ("batch_input_per_token", entry.batch_input_per_token),
        ("batch_output_per_token", entry.batch_output_per_token),
    ];
    let tier = entry.long_context.as_ref();
    let tier_costs = [
        (
            "long_context.input_per_token",
            tier.map(|t| t.input_per_token),
        ),
        (
            "long_context.output_per_token",
            tier.map(|t| t.output_per_token),
        ),
        (
            "long_context.cache_read_per_token",
            tier.and_then(|t| t.cache_read_per_token),
        ),
        (
            "long_context.cache_write_per_token",
            tier.and_then(|t| t.cache_write_per_token),
        ),
        (
            "long_context.cache_write_1h_per_token",
            tier.and_then(|t| t.cache_write_1h_per_token),
        ),
        (
            "long_context.batch_input_per_token",
            tier.and_then(|t| t.batch_input_per_token),
        ),
        (
            "long_context.batch_output_per_token",
            tier.and_then(|t| t.batch_output_per_token),
        ),
    ];
    for (field, value) in costs.into_iter().chain(tier_costs) {
        match value {
            Some(v) if !(v.is_finite() && v >= 0.0) => {
                return Err(CatalogError::Invalid(format!(
                    "model {:?}: {field} must be a non-negative number, got {v}",
                    entry.key
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// LiteLLM key prefix and provider name for a tollgate provider kind.
/// `None` prefix: the provider's models are keyed bare ("gpt-4o",
/// "claude-sonnet-4-5"). `None` provider: the kind is a gateway that can
/// serve anyone's models, so any provider may match.
fn kind_prefix_and_provider(kind: &str) -> (Option<&'static str>, Option<&'static str>) {
    match kind {
        "openai" => (None, Some("openai")),
        "anthropic" => (None, Some("anthropic")),
        "gemini" | "google" => (Some("gemini/"), Some("gemini")),
        "mistral" | "mistralai" => (Some("mistral/"), Some("mistral")),
        "groq" => (Some("groq/"), Some("groq")),
        "xai" | "x-ai" => (Some("xai/"), Some("xai")),
        "deepseek" => (Some("deepseek/"), Some("deepseek")),
        "ollama" => (Some("ollama/"), Some("ollama")),
        "openrouter" => (Some("openrouter/"), Some("openrouter")),
        _ => (None, None),
    }
}

/// Candidate keys for [`Catalog::lookup`], in priority order, each with the
/// provider the entry must belong to (if any).
fn lookup_candidates(kind: &str, model: &str) -> Vec<(String, Option<&'static str>)> {
    let (prefix, kind_provider) = kind_prefix_and_provider(kind);
    // A gateway (OpenRouter, OpenAI-compatible, anything unknown) may serve
    // any vendor's model; a first-party kind only serves its own.
    let is_gateway = kind == "openrouter" || kind_provider.is_none();
    let mut out: Vec<(String, Option<&'static str>)> = Vec::new();
    if let Some(prefix) = prefix {
        out.push((format!("{prefix}{model}"), kind_provider));
    }
    out.push((
        model.to_string(),
        if is_gateway { None } else { kind_provider },
    ));
    if let Some((vendor, name)) = model.split_once('/').filter(|(_, name)| !name.is_empty()) {
        let (vendor_prefix, vendor_provider) =
            kind_prefix_and_provider(&vendor.to_ascii_lowercase());
        // Through a gateway the vendor part says whose model (and price) it
        // is; an unknown vendor ("meta-llama/...") constrains nothing.
        let required = if is_gateway {
            vendor_provider
        } else {
            kind_provider
        };
        if let Some(vendor_prefix) = vendor_prefix {
            out.push((format!("{vendor_prefix}{name}"), required));
        }
        out.push((name.to_string(), required));
    }
    let mut seen = HashSet::new();
    out.retain(|(name, req)| seen.insert((name.clone(), *req)));
    out
}

/// `name` without a trailing snapshot date, or `None` if it has none.
///
/// Recognised: "-YYYYMMDD" (Anthropic), "-YYYY-MM-DD" (OpenAI) and
/// "@YYYYMMDD" (Vertex). Shorter numeric suffixes such as "-0613" or "-2512"
/// are deliberately not stripped: they are as often version numbers as dates.
fn strip_date_suffix(name: &str) -> Option<&str> {
    fn number(digits: &[u8]) -> Option<u32> {
        digits.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    }
    fn is_date(y: &[u8], m: &[u8], d: &[u8]) -> bool {
        matches!(
            (number(y), number(m), number(d)),
            (Some(y), Some(m), Some(d))
                if (1990..=2099).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d)
        )
    }
    // Split off the last `len` bytes, keeping a non-empty stem. `None` when
    // the cut is not on a char boundary (then it cannot be an ASCII date).
    let split = |len: usize| {
        name.len()
            .checked_sub(len)
            .filter(|&at| at > 0)
            .and_then(|at| name.split_at_checked(at))
    };
    if let Some((stem, tail)) = split(11) {
        let t = tail.as_bytes();
        if t[0] == b'-' && t[5] == b'-' && t[8] == b'-' && is_date(&t[1..5], &t[6..8], &t[9..11]) {
            return Some(stem);
        }
    }
    if let Some((stem, tail)) = split(9) {
        let t = tail.as_bytes();
        if matches!(t[0], b'-' | b'@') && is_date(&t[1..5], &t[5..7], &t[7..9]) {
            return Some(stem);
        }
    }
    None
}

/// The fields of one LiteLLM model after alias resolution: the alias's own
/// fields (if any) shadow those of the entry it points to.
struct Fields<'a> {
    layers: Vec<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    /// Follow `alias_of` links from `value`. `None` for dangling, cyclic or
    /// non-object entries, which are skipped rather than failing the build:
    /// one bad upstream entry should not block regenerating all the others.
    fn resolve(all: &'a Map<String, Value>, value: &'a Value) -> Option<Fields<'a>> {
        let mut layers = Vec::new();
        let mut current = value;
        for _ in 0..=MAX_ALIAS_DEPTH {
            let object = current.as_object()?;
            layers.push(object);
            match object.get("alias_of") {
                None => return Some(Fields { layers }),
                Some(target) => current = all.get(target.as_str()?)?,
            }
        }
        None
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.layers.iter().find_map(|layer| layer.get(field))
    }

    fn str(&self, field: &str) -> Option<&'a str> {
        self.get(field).and_then(Value::as_str)
    }

    /// A price. LiteLLM writes some as JSON integers (`0`), so any JSON
    /// number is read as f64. Negative values are treated as missing.
    fn cost(&self, field: &str) -> Option<f64> {
        self.get(field)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite() && *v >= 0.0)
    }

    /// A token count. A few are written as floats (`4096.0`); those are
    /// accepted when they are whole numbers.
    fn count(&self, field: &str) -> Option<u64> {
        let value = self.get(field)?;
        value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|v| v.is_finite() && *v >= 0.0 && v.fract() == 0.0 && *v < u64::MAX as f64)
                .map(|v| v as u64)
        })
    }

    fn flag(&self, field: &str) -> bool {
        self.get(field).and_then(Value::as_bool).unwrap_or(false)
    }

    /// The long-context tier: the thresholds `N` of every
    /// `input_cost_per_token_above_Nk_tokens` field (N × 1,000 tokens, as
    /// the providers write "200k"). When a model has several, the lowest
    /// is kept: it is reached first, and pricing a prompt above a higher
    /// threshold at the lower tier's (smaller) rates would under-count, so
    /// a model with several tiers is rare enough (none in the source today)
    /// to price conservatively. Without both an input and an output price
    /// for the threshold there is no tier.
    fn long_context(&self) -> Option<CatalogTier> {
        let threshold = self
            .layers
            .iter()
            .flat_map(|layer| layer.keys())
            .filter_map(|k| {
                k.strip_prefix("input_cost_per_token_above_")?
                    .strip_suffix("k_tokens")?
                    .parse::<u64>()
                    .ok()
            })
            .min()?;
        let n = format!("{threshold}k_tokens");
        Some(CatalogTier {
            above_tokens: threshold.checked_mul(1000)?,
            input_per_token: self.cost(&format!("input_cost_per_token_above_{n}"))?,
            output_per_token: self.cost(&format!("output_cost_per_token_above_{n}"))?,
            cache_read_per_token: self.cost(&format!("cache_read_input_token_cost_above_{n}")),
            cache_write_per_token: self.cost(&format!("cache_creation_input_token_cost_above_{n}")),
            cache_write_1h_per_token: self.cost(&format!(
                "cache_creation_input_token_cost_above_1hr_above_{n}"
            )),
            batch_input_per_token: self.cost(&format!("input_cost_per_token_above_{n}_batches")),
            batch_output_per_token: self.cost(&format!("output_cost_per_token_above_{n}_batches")),
        })
    }
}

/// Turn one LiteLLM model into a catalog entry, or `None` if tollgate has no
/// use for it (wrong provider or mode, or no token prices).
fn convert(key: &str, fields: &Fields<'_>) -> Option<CatalogEntry> {
    let provider = fields.str("litellm_provider")?;
    if !KEPT_PROVIDERS.contains(&provider) {
        return None;
    }
    let mode = fields.str("mode");
    if mode.is_some_and(|m| m != "chat" && m != "completion") {
        return None;
    }
    // Without both prices there is nothing to estimate with; an entry that
    // claims cost 0 by omission would make budgets lie.
    let input_per_token = fields.cost("input_cost_per_token")?;
    let output_per_token = fields.cost("output_cost_per_token")?;
    Some(CatalogEntry {
        key: key.to_string(),
        provider: provider.to_string(),
        mode: mode.map(str::to_string),
        input_per_token,
        output_per_token,
        cache_read_per_token: fields.cost("cache_read_input_token_cost"),
        cache_write_per_token: fields.cost("cache_creation_input_token_cost"),
        cache_write_1h_per_token: fields.cost("cache_creation_input_token_cost_above_1hr"),
        batch_input_per_token: fields.cost("input_cost_per_token_batches"),
        batch_output_per_token: fields.cost("output_cost_per_token_batches"),
        max_input_tokens: fields.count("max_input_tokens"),
        max_output_tokens: fields.count("max_output_tokens"),
        supports_prompt_caching: fields.flag("supports_prompt_caching"),
        supports_response_schema: fields.flag("supports_response_schema"),
        prompt_cache_min_tokens: fields.count("prompt_cache_min_tokens"),
        deprecation_date: fields.str("deprecation_date").map(str::to_string),
        successor_model: fields.str("successor_model").map(str::to_string),
        supports_reasoning: fields.flag("supports_reasoning"),
        supports_vision: fields.flag("supports_vision"),
        supports_pdf_input: fields.flag("supports_pdf_input"),
        long_context: fields.long_context(),
    })
}

/// Build the trimmed `models.json` text from the text of LiteLLM's
/// `model_prices_and_context_window.json`.
///
/// Keeps chat and completion models (and mode-less entries that have both
/// token prices) of the providers in `KEPT_PROVIDERS`; resolves
/// `{"alias_of": ...}` entries to the model they name (the entry keeps the
/// alias's key); skips `sample_spec` and `fallback_generalizations`; ignores
/// fields it does not know. Dangling or cyclic aliases and models without
/// input and output prices are dropped.
///
/// The output is deterministic (models sorted by key, fields in a fixed
/// order, floats in Rust's shortest round-trip decimal form), so regenerating
/// from the same source gives the same bytes and a regeneration diff shows
/// only real price changes.
pub fn build_from_litellm(source_json: &str) -> Result<String, CatalogError> {
    let source: Value = serde_json::from_str(source_json)?;
    let all = source.as_object().ok_or_else(|| {
        CatalogError::Invalid("LiteLLM source must be a JSON object keyed by model".into())
    })?;
    let mut entries = BTreeMap::new();
    for (key, value) in all {
        if NON_MODEL_KEYS.contains(&key.as_str()) {
            continue;
        }
        let Some(fields) = Fields::resolve(all, value) else {
            continue;
        };
        if let Some(entry) = convert(key, &fields) {
            entries.insert(key.clone(), entry);
        }
    }
    if entries.is_empty() {
        return Err(CatalogError::Invalid(
            "no chat or completion models of a supported provider found; \
             is this LiteLLM's model_prices_and_context_window.json?"
                .into(),
        ));
    }
    let file = CatalogFileOut {
        notice: NOTICE,
        generated: REGENERATE,
        models: entries.values().collect(),
    };
    render(&file)
}

/// Pretty-print the catalog file with [`StableFloats`], ending in a newline.
fn render(file: &CatalogFileOut<'_>) -> Result<String, CatalogError> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(
        &mut out,
        StableFloats(serde_json::ser::PrettyFormatter::new()),
    );
    file.serialize(&mut serializer)?;
    out.push(b'\n');
    String::from_utf8(out)
        .map_err(|e| CatalogError::Invalid(format!("rendered catalog is not UTF-8: {e}")))
}

/// serde_json's pretty printer with floats written by Rust's `Display`.
///
/// serde_json's own float layout is an implementation detail that has
/// changed between releases ("3e-5" vs "0.00003"), which would make a
/// dependency bump rewrite every price line in `models.json`. `Display` is the
/// shortest string that round-trips, always in plain decimal notation (easy
/// to compare by eye in a diff) and stable across Rust releases. Whole numbers
/// get a ".0" so prices always read as decimals.
struct StableFloats<'a>(serde_json::ser::PrettyFormatter<'a>);

impl serde_json::ser::Formatter for StableFloats<'_> {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        if !value.is_finite() {
            // JSON has no NaN or infinity; match serde_json, which writes null.
            return w.write_all(b"null");
        }
        let text = value.to_string();
        w.write_all(text.as_bytes())?;
        if !text.contains('.') {
            w.write_all(b".0")?;
        }
        Ok(())
    }

    fn write_f32<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        value: f32,
    ) -> std::io::Result<()> {
        self.write_f64(w, f64::from(value))
    }

    // The rest delegates to the pretty printer (layout only).
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miniature LiteLLM file exercising every rule of the trimmer.
    const SOURCE: &str = r#"{
        "sample_spec": {
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
            "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
            "mode": "one of: chat, embedding, completion"
        },
        "fallback_generalizations": {"rules": [{"name": "x", "pattern": "^a"}]},
        "gpt-4o-mini": {
            "input_cost_per_token": 1.5e-07,
            "output_cost_per_token": 6e-07,
            "cache_read_input_token_cost": 7.5e-08,
            "input_cost_per_token_batches": 7.5e-08,
            "output_cost_per_token_batches": 3e-07,
            "litellm_provider": "openai",
            "max_input_tokens": 128000,
            "max_output_tokens": 16384,
            "mode": "chat",
            "supports_prompt_caching": true,
            "supports_response_schema": true,
            "some_future_field": {"nested": [1, 2, 3]}
        },
        "gpt-4o-mini-2024-07-18": {
            "input_cost_per_token": 1.5e-07,
            "output_cost_per_token": 6e-07,
            "litellm_provider": "openai",
            "mode": "chat"
        },
        "claude-sonnet-4-5": {
            "input_cost_per_token": 3e-06,
            "output_cost_per_token": 1.5e-05,
            "cache_read_input_token_cost": 3e-07,
            "cache_creation_input_token_cost": 3.75e-06,
            "cache_creation_input_token_cost_above_1hr": 6e-06,
            "litellm_provider": "anthropic",
            "max_input_tokens": 200000,
            "max_output_tokens": 64000,
            "mode": "chat",
            "prompt_cache_min_tokens": 1024,
            "deprecation_date": "2026-09-29",
            "successor_model": "claude-sonnet-5",
            "supports_reasoning": true,
            "supports_vision": true,
            "supports_pdf_input": true,
            "supports_prompt_caching": true
        },
        "claude-sonnet-latest": {"alias_of": "claude-sonnet-4-5"},
        "claude-broken-latest": {"alias_of": "claude-does-not-exist"},
        "loop-a": {"alias_of": "loop-b"},
        "loop-b": {"alias_of": "loop-a"},
        "gemini/gemini-2.5-flash": {
            "input_cost_per_token": 3e-07,
            "output_cost_per_token": 2.5e-06,
            "litellm_provider": "gemini",
            "mode": "chat",
            "prompt_cache_min_tokens": 4096.0
        },
        "gemini/gemma-3-27b-it": {
            "input_cost_per_token": 0,
            "output_cost_per_token": 0,
            "litellm_provider": "gemini",
            "mode": "chat"
        },
        "mistral/mistral-large-latest": {
            "input_cost_per_token": 5e-07,
            "output_cost_per_token": 1.5e-06,
            "litellm_provider": "mistral",
            "mode": "chat"
        },
        "deepseek-chat": {
            "input_cost_per_token": 2.8e-07,
            "output_cost_per_token": 4.2e-07,
            "litellm_provider": "deepseek",
            "mode": "chat"
        },
        "ollama/llama3": {
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
            "litellm_provider": "ollama",
            "mode": "chat"
        },
        "groq/no-mode": {
            "input_cost_per_token": 1e-07,
            "output_cost_per_token": 2e-07,
            "litellm_provider": "groq"
        },
        "openai/container": {"litellm_provider": "openai", "mode": "chat"},
        "text-embedding-3-small": {
            "input_cost_per_token": 2e-08,
            "output_cost_per_token": 0.0,
            "litellm_provider": "openai",
            "mode": "embedding"
        },
        "azure/gpt-4o": {
            "input_cost_per_token": 2.5e-06,
            "output_cost_per_token": 1e-05,
            "litellm_provider": "azure",
            "mode": "chat"
        },
        "xai/negative": {
            "input_cost_per_token": -1,
            "output_cost_per_token": 1e-06,
            "litellm_provider": "xai",
            "mode": "chat"
        }
    }"#;

    fn catalog() -> Catalog {
        let built = build_from_litellm(SOURCE).expect("fixture builds");
        Catalog::from_json(&built).expect("built catalog parses")
    }

    #[test]
    fn trims_to_supported_chat_models() {
        let cat = catalog();
        let keys: Vec<&str> = cat.entries.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "claude-sonnet-4-5",
                "claude-sonnet-latest",
                "deepseek-chat",
                "gemini/gemini-2.5-flash",
                "gemini/gemma-3-27b-it",
                "gpt-4o-mini",
                "gpt-4o-mini-2024-07-18",
                "groq/no-mode",
                "mistral/mistral-large-latest",
                "ollama/llama3",
            ]
        );
    }

    #[test]
    fn entries_are_sorted_and_complete() {
        let cat = catalog();
        let keys: Vec<&str> = cat.entries().map(|e| e.key.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        let mini = cat.get("gpt-4o-mini").expect("present");
        assert_eq!(mini.provider, "openai");
        assert_eq!(mini.mode.as_deref(), Some("chat"));
        assert_eq!(mini.input_per_token, 1.5e-07);
        assert_eq!(mini.output_per_token, 6e-07);
        assert_eq!(mini.cache_read_per_token, Some(7.5e-08));
        assert_eq!(mini.batch_input_per_token, Some(7.5e-08));
        assert_eq!(mini.batch_output_per_token, Some(3e-07));
        assert_eq!(mini.max_input_tokens, Some(128_000));
        assert_eq!(mini.max_output_tokens, Some(16_384));
        assert!(mini.supports_prompt_caching);
        assert!(mini.supports_response_schema);
        let sonnet = cat.get("claude-sonnet-4-5").expect("present");
        assert_eq!(sonnet.cache_write_per_token, Some(3.75e-06));
        assert_eq!(sonnet.cache_write_1h_per_token, Some(6e-06));
        assert_eq!(sonnet.prompt_cache_min_tokens, Some(1024));
        assert_eq!(sonnet.deprecation_date.as_deref(), Some("2026-09-29"));
        assert_eq!(sonnet.successor_model.as_deref(), Some("claude-sonnet-5"));
        assert!(sonnet.supports_reasoning);
        assert!(!mini.supports_reasoning);
        assert!(sonnet.supports_vision && sonnet.supports_pdf_input);
        assert!(!mini.supports_vision && !mini.supports_pdf_input);
        assert!(!sonnet.supports_response_schema);
        let no_mode = cat.get("groq/no-mode").expect("kept: both prices present");
        assert_eq!(no_mode.mode, None);
    }

    #[test]
    fn aliases_resolve_to_their_target() {
        let cat = catalog();
        let alias = cat.get("claude-sonnet-latest").expect("alias kept");
        let target = cat.get("claude-sonnet-4-5").expect("target kept");
        assert_eq!(alias.key, "claude-sonnet-latest");
        assert_eq!(
            CatalogEntry {
                key: target.key.clone(),
                ..alias.clone()
            },
            *target
        );
        assert!(cat.get("claude-broken-latest").is_none());
        assert!(cat.get("loop-a").is_none());
    }

    #[test]
    fn long_context_tiers_are_kept() {
        let source = r#"{
            "pro": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                    "input_cost_per_token_above_200k_tokens": 2.5e-06,
                    "output_cost_per_token_above_200k_tokens": 1.5e-05,
                    "cache_read_input_token_cost_above_200k_tokens": 2.5e-07,
                    "input_cost_per_token_above_200k_tokens_priority": 9e-06,
                    "input_cost_per_token_above_200k_tokens_batches": 1.25e-06,
                    "litellm_provider": "gemini", "mode": "chat"},
            "half": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                     "input_cost_per_token_above_128k_tokens": 2e-06,
                     "litellm_provider": "openai", "mode": "chat"}
        }"#;
        let cat = Catalog::from_json(&build_from_litellm(source).expect("builds")).expect("parses");
        let tier = cat
            .get("pro")
            .unwrap()
            .long_context
            .clone()
            .expect("a tier");
        assert_eq!(
            tier,
            CatalogTier {
                above_tokens: 200_000,
                input_per_token: 2.5e-06,
                output_per_token: 1.5e-05,
                cache_read_per_token: Some(2.5e-07),
                cache_write_per_token: None,
                cache_write_1h_per_token: None,
                batch_input_per_token: Some(1.25e-06),
                batch_output_per_token: None,
            }
        );
        // Without an output price for the threshold there is no tier.
        assert_eq!(cat.get("half").unwrap().long_context, None);
        // The builtin catalog keeps them (about 70 models).
        let tiers = Catalog::builtin()
            .entries()
            .filter(|e| e.long_context.is_some())
            .count();
        assert!(tiers >= 60, "{tiers}");
    }

    #[test]
    fn alias_own_fields_shadow_the_target() {
        let source = r#"{
            "base": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                     "litellm_provider": "openai", "mode": "chat"},
            "cheap-alias": {"alias_of": "base", "input_cost_per_token": 5e-07}
        }"#;
        let cat = Catalog::from_json(&build_from_litellm(source).expect("builds")).expect("parses");
        assert_eq!(
            cat.get("cheap-alias").map(|e| e.input_per_token),
            Some(5e-07)
        );
        assert_eq!(
            cat.get("cheap-alias").map(|e| e.output_per_token),
            Some(2e-06)
        );
    }

    #[test]
    fn integer_and_float_numbers_are_accepted() {
        let cat = catalog();
        let gemma = cat
            .get("gemini/gemma-3-27b-it")
            .expect("integer costs kept");
        assert_eq!(gemma.input_per_token, 0.0);
        assert_eq!(gemma.output_per_token, 0.0);
        let flash = cat.get("gemini/gemini-2.5-flash").expect("present");
        assert_eq!(flash.prompt_cache_min_tokens, Some(4096));
    }

    #[test]
    fn build_is_deterministic_and_round_trips() {
        let first = build_from_litellm(SOURCE).expect("builds");
        let second = build_from_litellm(SOURCE).expect("builds");
        assert_eq!(first, second);
        assert!(first.starts_with("{\n  \"_notice\": \"Derived from LiteLLM"));
        assert!(first.contains("Copyright (c) 2023 Berri AI"));
        // Rendering the parsed catalog again gives the same bytes.
        let cat = Catalog::from_json(&first).expect("parses");
        let again = render(&CatalogFileOut {
            notice: NOTICE,
            generated: REGENERATE,
            models: cat.entries().collect(),
        })
        .expect("renders");
        assert_eq!(first, again);
    }

    #[test]
    fn build_rejects_non_catalogs() {
        assert!(matches!(
            build_from_litellm("not json"),
            Err(CatalogError::Parse(_))
        ));
        assert!(matches!(
            build_from_litellm("[1, 2]"),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            build_from_litellm(r#"{"sample_spec": {}}"#),
            Err(CatalogError::Invalid(_))
        ));
    }

    #[test]
    fn from_json_validates() {
        let entry = |key: &str, input: f64| {
            format!(
                r#"{{"key": "{key}", "provider": "openai", "input_per_token": {input}, "output_per_token": 0.0}}"#
            )
        };
        let file = |entries: &[String]| format!(r#"{{"models": [{}]}}"#, entries.join(","));
        let ok = Catalog::from_json(&file(&[entry("a", 1e-6), entry("b", 0.0)])).expect("valid");
        assert_eq!(ok.entries().count(), 2);
        assert!(!ok.get("a").expect("present").supports_prompt_caching);
        assert!(matches!(
            Catalog::from_json(&file(&[entry("a", 1e-6), entry("a", 2e-6)])),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            Catalog::from_json(&file(&[entry("a", -1.0)])),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            Catalog::from_json(&file(&[entry("", 1.0)])),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            Catalog::from_json(r#"{"models": [{"key": "a"}]}"#),
            Err(CatalogError::Parse(_))
        ));
        assert!(matches!(
            Catalog::from_json("{}"),
            Err(CatalogError::Parse(_))
        ));
    }

    #[test]
    fn lookup_by_provider_kind() {
        let cat = catalog();
        let key = |kind: &str, model: &str| cat.lookup(kind, model).map(|e| e.key.as_str());
        assert_eq!(key("openai", "gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(
            key("anthropic", "claude-sonnet-4-5"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            key("gemini", "gemini-2.5-flash"),
            Some("gemini/gemini-2.5-flash")
        );
        assert_eq!(
            key("gemini", "gemini/gemini-2.5-flash"),
            Some("gemini/gemini-2.5-flash")
        );
        assert_eq!(
            key("mistral", "mistral-large-latest"),
            Some("mistral/mistral-large-latest")
        );
        assert_eq!(
            key("openrouter", "anthropic/claude-sonnet-4-5"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            key("openrouter", "google/gemini-2.5-flash"),
            Some("gemini/gemini-2.5-flash")
        );
        assert_eq!(key("openai-compatible", "gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(
            key("openai-compatible", "openai/gpt-4o-mini"),
            Some("gpt-4o-mini")
        );
        assert_eq!(key(" OpenAI ", " gpt-4o-mini "), Some("gpt-4o-mini"));
    }

    #[test]
    fn lookup_misses() {
        let cat = catalog();
        assert!(cat.lookup("openai-compatible", "qwen3:8b").is_none());
        assert!(cat.lookup("openai", "").is_none());
        assert!(cat.lookup("openai", "gpt-99").is_none());
        // A first-party kind only matches its own provider's entries.
        assert!(cat.lookup("anthropic", "gpt-4o-mini").is_none());
        assert!(cat.lookup("mistral", "deepseek-chat").is_none());
        // The vendor named by an OpenRouter id must match too.
        assert!(cat.lookup("openrouter", "anthropic/gpt-4o-mini").is_none());
        assert!(
            cat.lookup("openai", "anthropic/claude-sonnet-4-5")
                .is_none()
        );
    }

    #[test]
    fn lookup_strips_date_suffixes() {
        let cat = catalog();
        let key = |kind: &str, model: &str| cat.lookup(kind, model).map(|e| e.key.as_str());
        assert_eq!(
            key("anthropic", "claude-sonnet-4-5-20250929"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            key("openrouter", "anthropic/claude-sonnet-4-5-20250929"),
            Some("claude-sonnet-4-5")
        );
        // An exact dated key wins over stripping.
        assert_eq!(
            key("openai", "gpt-4o-mini-2024-07-18"),
            Some("gpt-4o-mini-2024-07-18")
        );
        assert_eq!(key("openai", "gpt-4o-mini-2025-01-31"), Some("gpt-4o-mini"));
        assert_eq!(
            key("gemini", "gemini-2.5-flash@20250101"),
            Some("gemini/gemini-2.5-flash")
        );
    }

    #[test]
    fn date_suffix_parsing() {
        assert_eq!(
            strip_date_suffix("claude-sonnet-4-5-20250929"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(strip_date_suffix("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(strip_date_suffix("model@20241022"), Some("model"));
        assert_eq!(strip_date_suffix("gpt-4-0613"), None);
        assert_eq!(strip_date_suffix("mistral-large-2512"), None);
        assert_eq!(strip_date_suffix("x-20251399"), None);
        assert_eq!(strip_date_suffix("20250929"), None);
        assert_eq!(strip_date_suffix("é-2024-08-06"), Some("é"));
        assert_eq!(strip_date_suffix("ééééééééééé"), None);
        assert_eq!(strip_date_suffix(""), None);
    }

    #[test]
    fn suggestions() {
        let cat = catalog();
        assert_eq!(cat.suggest("gpt-4o-mni").first(), Some(&"gpt-4o-mini"));
        assert_eq!(cat.suggest("gtp-4o-mini").first(), Some(&"gpt-4o-mini"));
        assert_eq!(
            cat.suggest("gemini-2.5-flsh").first(),
            Some(&"gemini/gemini-2.5-flash")
        );
        assert_eq!(
            cat.suggest("Claude-Sonet-4-5").first(),
            Some(&"claude-sonnet-4-5")
        );
        assert!(cat.suggest("gpt").len() <= MAX_SUGGESTIONS);
        assert!(cat.suggest("zzzzzzzzzzzzzzzzzzz").is_empty());
        assert!(cat.suggest("").is_empty());
    }

    #[test]
    fn builtin_catalog_is_usable() {
        let cat = Catalog::builtin();
        assert!(std::ptr::eq(cat, Catalog::builtin()), "parsed once");
        let count = cat.entries().count();
        assert!((200..=1000).contains(&count), "{count} entries");
        for (kind, model) in [
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-sonnet-4-5"),
            ("anthropic", "claude-sonnet-4-5-20250929"),
            ("gemini", "gemini-2.5-flash"),
            ("mistral", "mistral-large-latest"),
            ("openrouter", "anthropic/claude-sonnet-4-5"),
            ("openai-compatible", "gpt-4o-mini"),
        ] {
            let entry = cat.lookup(kind, model);
            assert!(entry.is_some(), "{kind}/{model} not found");
        }
        assert!(cat.lookup("openai-compatible", "qwen3:8b").is_none());
        for entry in cat.entries() {
            assert!(
                KEPT_PROVIDERS.contains(&entry.provider.as_str()),
                "{}",
                entry.key
            );
            assert!(
                matches!(entry.mode.as_deref(), None | Some("chat" | "completion")),
                "{}",
                entry.key
            );
        }
        assert!(BUILTIN_JSON.len() < 1_000_000);
        assert!(BUILTIN_JSON.contains("Copyright (c) 2023 Berri AI"));
    }
}
