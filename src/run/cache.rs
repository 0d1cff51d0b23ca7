//! Request identity and the response cache: the request built for one call
//! of a step, whether its system prompt is marked for prompt caching, the
//! hash that identifies a request, the lookup of an identical request's
//! answer in the journal, and what a usage would have cost on the flagship.

use std::sync::Arc;

use serde_json::json;

use super::Event;
use super::shared::Shared;
use crate::context::history::Role;
use crate::policy::Model;
use crate::provider::{self, ChatRequest, Endpoint, Message, Usage};
use crate::step::RenderedCall;

/// Every text of a request that reaches the provider.
pub(super) fn request_texts(req: &crate::provider::ChatRequest) -> Vec<&str> {
    req.system
        .as_deref()
        .into_iter()
        .chain(req.messages.iter().map(|m| m.content.as_str()))
        .collect()
}

/// Whether to mark the system prompt as a prompt-cache breakpoint: the
/// policy asks for caching on this model and the prompt reaches the model's
/// minimum cacheable length (Anthropic ignores a shorter marked prefix, so
/// marking it would only make the plan and the request disagree). The count
/// is the model's tokenizer estimate (o200k_base for Claude); Claude's own
/// tokenizer usually counts more, so the error is on the side of leaving a
/// borderline prefix unmarked — uncached, but never billed a write premium
/// for nothing.
pub(super) fn prompt_cache(model: &Model, system: Option<&str>) -> Option<crate::policy::CacheTtl> {
    let ttl = model.prompt_cache?;
    let system = system.filter(|s| !s.is_empty())?;
    let tokens = model.tokenizer.count(system) as u64;
    (tokens >= model.prompt_cache_min_tokens).then_some(ttl)
}

/// What a call asks, for the journal (`--resume` answers a call only if it
/// asks the same): its system prompt and prompt, and its history's turns
/// when it has some (a call without history hashes as it always did).
pub(super) fn asked(call: &RenderedCall) -> String {
    let files: Vec<&str> = call
        .attachments
        .iter()
        .filter_map(|a| a.file.as_ref().map(|f| f.sha256.as_str()))
        .collect();
    if !files.is_empty() {
        // The same prompt with other files asks something else.
        crate::journal::sha256_json(&json!([call.system, call.history, call.prompt, files]))
    } else if call.history.is_empty() {
        crate::journal::prompt_hash(call.system.as_deref(), &call.prompt)
    } else {
        crate::journal::sha256_json(&json!([call.system, call.history, call.prompt]))
    }
}

/// Whether to mark the prompt's shared prefix (the part every call of a
/// `for_each` step starts with) as a cache breakpoint: the policy asks for
/// caching on this model and the system prompt plus that prefix reach the
/// model's minimum (what is cached is everything up to the breakpoint).
pub(super) fn prefix_cache(
    model: &Model,
    call: &RenderedCall,
) -> Option<(usize, crate::policy::CacheTtl)> {
    let ttl = model.prompt_cache?;
    if call.shared_prefix == 0 {
        return None;
    }
    let tokens = call.prefix_tokens(model.tokenizer) as u64;
    (tokens >= model.prompt_cache_min_tokens).then_some((call.shared_prefix, ttl))
}

/// The request for one call of a step on a model (not streamed): the
/// history's turns as real messages, then the prompt as the last user turn.
pub(super) fn step_request(
    step: &crate::workflow::Step,
    model: &Model,
    call: &RenderedCall,
) -> ChatRequest {
    let system = &call.system;
    let mut messages: Vec<Message> = call
        .history
        .iter()
        .map(|m| match m.role {
            Role::Assistant => Message::assistant(m.content.clone()),
            // `window` keeps system messages out of the turns.
            Role::User | Role::System => Message::user(m.content.clone()),
        })
        .collect();
    messages.push(Message::user(call.prompt.clone()));
    ChatRequest {
        model: model.model.clone(),
        system: system.clone(),
        messages,
        max_output_tokens: crate::reasoning::output_limit(step, model),
        temperature: step.temperature,
        output_schema: step.output_schema().cloned(),
        stream: false,
        cache_system: prompt_cache(model, system.as_deref()),
        cache_prefix: prefix_cache(model, call),
        endpoint: match model.endpoint {
            crate::policy::Endpoint::Chat => Endpoint::Chat,
            crate::policy::Endpoint::Completions => Endpoint::Completions,
        },
        stop: step.stop.clone(),
        logprobs: false,
        on_text: None,
        reasoning: crate::reasoning::for_step(step, model).thinking(),
        attachments: call
            .attachments
            .iter()
            .filter_map(|a| a.file.clone())
            .collect(),
    }
}

/// The response cache: an identical request (same provider, model,
/// messages, parameters) answered within the TTL, if the run has a journal
/// and a cache.
pub(super) async fn cached(sh: &Shared, hash: &str) -> Option<crate::journal::CachedAnswer> {
    let j = sh.options.journal.as_ref()?;
    let ttl = j.cache_ttl?;
    let not_before = j.journal.now() - ttl.as_millis() as i64;
    let (db, key) = (Arc::clone(&j.journal), hash.to_owned());
    match tokio::task::spawn_blocking(move || db.cached_answer(&key, not_before)).await {
        Ok(Ok(hit)) => hit,
        Ok(Err(e)) => {
            sh.emit(Event::JournalError {
                message: e.to_string(),
            });
            None
        }
        Err(e) => {
            sh.emit(Event::JournalError {
                message: format!("run journal: {e}"),
            });
            None
        }
    }
}

/// What the same usage costs on the policy's flagship (the plan's
/// all-flagship comparison, on real usage).
pub(super) fn flagship_cost(sh: &Shared, usage: &Usage) -> f64 {
    sh.policy.flagship_model().map_or(0.0, |f| {
        f.price.usage_cost(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
            usage.output_tokens,
        )
    })
}

/// The identity of a request for the response cache: what decides the
/// answer — the provider's API and endpoint, the model, the messages and
/// every generation parameter. Not the key (it is not in the request), not
/// streaming (the same answer either way).
pub(super) fn request_hash(sh: &Shared, model: &Model, req: &ChatRequest) -> String {
    let base_url = sh
        .policy
        .providers
        .get(&model.provider)
        .and_then(|p| p.base_url.as_deref())
        .unwrap_or_default();
    let mut identity = provider::request_identity(model.provider_kind, req);
    if let Some(o) = identity.as_object_mut() {
        o.insert("v".to_owned(), json!(1));
        // Two servers of one kind may serve different models under one name.
        o.insert("base_url".to_owned(), json!(base_url.trim_end_matches('/')));
    }
    crate::journal::sha256_json(&identity)
}
