//! Compiling the `models:` section: each model's provider, catalog entry,
//! price, context window, tokenizer and prompt caching.

use std::collections::BTreeSet;

use indexmap::IndexMap;

use super::{
    CacheTtl, Endpoint, Locality, Model, ModelFile, PolicyFile, Price, PriceSource, PriceTier,
    Provider, ProviderKind, Tier, default_prompt_cache_min_tokens,
};
use crate::catalog::{Catalog, CatalogEntry};
use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::tokens::{self, Tokenizer};
use crate::yaml::{Document, pointer};

/// The models: provider resolved, catalog entry found, priced, context
/// window and tokenizer known, prompt caching checked. A model with an
/// unknown provider or no known context window is left out (reported).
pub(super) fn models(
    file: &PolicyFile,
    doc: &Document,
    catalog: &Catalog,
    providers: &IndexMap<String, Provider>,
    diags: &mut Vec<Diagnostic>,
) -> IndexMap<String, Model> {
    let at = |segs: &[&str]| doc.span(&pointer(segs));
    let mut models = IndexMap::new();
    // A provider-level `prompt_cache` on the wrong kind is reported once.
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
        let entry = catalog_entry(alias, m, provider, catalog, doc, diags);
        let (price, price_source) = price(alias, m, entry, provider, catalog, doc, diags);
        if let Some(d) = tier_price_mismatch(alias, m, &price, &price_source, doc) {
            diags.push(d);
        }
        if m.endpoint == Endpoint::Completions
            && matches!(
                provider.kind,
                ProviderKind::Anthropic | ProviderKind::Gemini | ProviderKind::Ollama
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
        let prompt_cache =
            prompt_cache(file, alias, m, provider, doc, &mut reported_cache_on, diags);
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
                supports_reasoning: m
                    .supports_reasoning
                    .unwrap_or_else(|| entry.is_some_and(|e| e.supports_reasoning)),
                supports_vision: m
                    .supports_vision
                    .unwrap_or_else(|| entry.is_some_and(|e| e.supports_vision)),
                supports_pdf_input: m
                    .supports_pdf_input
                    .unwrap_or_else(|| entry.is_some_and(|e| e.supports_pdf_input)),
            },
        );
    }
    models
}

/// The price band a model's list price falls in, for the tier-label check:
/// the blended price of a million tokens at three input tokens for one
/// output token (the usual mix of a prompt-heavy call) — under $1 is
/// budget-priced, $5 and over flagship-priced, between them workhorse.
/// The bounds sit at the catalog's quartiles of paid chat models (about
/// $0.70 and $4.40 when the bands were set), rounded to round numbers, so a
/// nano or flash model is budget, a Sonnet-class model at the workhorse /
/// flagship edge and an Opus-class or GPT-5-class model flagship.
fn price_band(price: &Price) -> Tier {
    let blended_per_mtok = (3.0 * price.input + price.output) / 4.0 * 1_000_000.0;
    if blended_per_mtok < BUDGET_BAND_BELOW_USD {
        Tier::Budget
    } else if blended_per_mtok < FLAGSHIP_BAND_FROM_USD {
        Tier::Workhorse
    } else {
        Tier::Flagship
    }
}

/// See [`price_band`]: USD per million blended tokens.
const BUDGET_BAND_BELOW_USD: f64 = 1.0;
const FLAGSHIP_BAND_FROM_USD: f64 = 5.0;

/// A paid model labelled two bands away from its price (a flagship-priced
/// model labelled `budget`, a budget-priced one labelled `flagship`): a
/// warning, since tier shares, fallbacks and plans all read the label. One
/// band off is normal (a cheap flagship, a pricey workhorse); `local` is
/// about where a model runs, not its price, and is not checked.
fn tier_price_mismatch(
    alias: &str,
    m: &ModelFile,
    price: &Price,
    source: &PriceSource,
    doc: &Document,
) -> Option<Diagnostic> {
    if m.tier == Tier::Local || *source == PriceSource::Local {
        return None;
    }
    let band = price_band(price);
    let far = matches!(
        (m.tier, band),
        (Tier::Budget, Tier::Flagship) | (Tier::Flagship, Tier::Budget)
    );
    if !far {
        return None;
    }
    let blended = (3.0 * price.input + price.output) / 4.0 * 1_000_000.0;
    Some(
        Diagnostic::warning(
            "tier-price-mismatch",
            format!(
                "model `{alias}` is labelled `{}` but `{}` is {band}-priced",
                m.tier, m.model
            ),
        )
        .at(doc.span(&pointer(["models", alias, "tier"])))
        .with_label(format!(
            "${blended:.2} per million tokens (3 input : 1 output)"
        ))
        .with_help(format!(
            "tier shares, fallbacks and plans go by the label: set `tier: {band}`, or pick a model priced like a {} model \
             (budget: under ${BUDGET_BAND_BELOW_USD:.0}, flagship: ${FLAGSHIP_BAND_FROM_USD:.0} and over)",
            m.tier
        )),
    )
}

/// The model's catalog entry: the one `catalog:` names (an error when there
/// is none), else the one found by provider and model name, if any.
fn catalog_entry<'c>(
    alias: &str,
    m: &ModelFile,
    provider: &Provider,
    catalog: &'c Catalog,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'c CatalogEntry> {
    let Some(key) = &m.catalog else {
        return catalog.lookup(provider.kind.name(), &m.model);
    };
    let e = catalog.get(key);
    if e.is_none() {
        let sugg = catalog.suggest(key);
        diags.push(
            Diagnostic::error("unknown-catalog-entry", format!("no catalog entry `{key}`"))
                .at(doc.span(&pointer(["models", alias, "catalog"])))
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

/// The model's price per token and where it comes from: the catalog entry
/// with the policy's overrides, else the policy's own prices (free when a
/// local model sets none; an error when a cloud model has none).
fn price(
    alias: &str,
    m: &ModelFile,
    entry: Option<&CatalogEntry>,
    provider: &Provider,
    catalog: &Catalog,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> (Price, PriceSource) {
    let overrides = m.pricing.clone().unwrap_or_default();
    let has_overrides = overrides.input_per_mtok.is_some() || overrides.output_per_mtok.is_some();
    let per_tok = |v: Option<f64>| v.map(|x| x / 1_000_000.0);
    if let Some(e) = entry {
        let price = Price {
            input: per_tok(overrides.input_per_mtok).unwrap_or(e.input_per_token),
            output: per_tok(overrides.output_per_mtok).unwrap_or(e.output_per_token),
            cache_read: per_tok(overrides.cache_read_per_mtok).or(e.cache_read_per_token),
            cache_write: per_tok(overrides.cache_write_per_mtok).or(e.cache_write_per_token),
            cache_write_1h: per_tok(overrides.cache_write_1h_per_mtok)
                .or(e.cache_write_1h_per_token),
            batch_input: per_tok(overrides.batch_input_per_mtok).or(e.batch_input_per_token),
            batch_output: per_tok(overrides.batch_output_per_mtok).or(e.batch_output_per_token),
            // The catalog's tier is relative to the catalog's base
            // prices: a policy that sets its own base price owns
            // the whole price (no tier it did not write).
            long_context: e
                .long_context
                .as_ref()
                .filter(|_| !has_overrides)
                .map(PriceTier::from),
        };
        let source = if has_overrides {
            PriceSource::CatalogWithOverrides(e.key.clone())
        } else {
            PriceSource::Catalog(e.key.clone())
        };
        return (price, source);
    }
    let missing = overrides.input_per_mtok.is_none() || overrides.output_per_mtok.is_none();
    if missing && provider.locality == Locality::Cloud {
        let sugg = catalog.suggest(&m.model);
        diags.push(
            Diagnostic::error("unknown-price", format!("no price known for cloud model `{}`", m.model))
                .at(doc.span(&pointer(["models", alias, "model"])))
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

/// The model's prompt caching (its own `prompt_cache`, else its
/// provider's): its TTL and minimum tokens, on anthropic providers only —
/// elsewhere an error, reported once where it is written.
fn prompt_cache(
    file: &PolicyFile,
    alias: &str,
    m: &ModelFile,
    provider: &Provider,
    doc: &Document,
    reported: &mut BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(CacheTtl, Option<u64>)> {
    let written = m
        .prompt_cache
        .as_ref()
        .map(|c| (c, "models", alias))
        .or_else(|| {
            file.providers[&m.provider]
                .prompt_cache
                .as_ref()
                .map(|c| (c, "providers", m.provider.as_str()))
        });
    match written {
        Some((c, _, _)) if provider.kind == ProviderKind::Anthropic => Some((c.ttl, c.min_tokens)),
        Some((_, section, name)) => {
            // Reported once, where it is written (a provider-level one
            // would otherwise repeat for each of its models).
            if section == "models" || !reported.contains(name) {
                reported.insert(name.to_owned());
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
    }
}
