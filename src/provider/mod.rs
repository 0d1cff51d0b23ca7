//! The provider layer: one [`Provider`] trait over the HTTP chat APIs of the
//! LLM vendors, so the executor never sees a vendor's wire format.
//!
//! Four wire dialects cover the seven [`ProviderKind`]s:
//!
//! - [`openai`] — Chat Completions, for `openai`, `openai-compatible`,
//!   `mistral` and `openrouter`;
//! - [`anthropic`] — Messages;
//! - [`gemini`] — `generateContent` / `streamGenerateContent`;
//! - [`ollama`] — Ollama's native `/api/chat` (NDJSON streams, [`ndjson`]).
//!
//! Every client returns the same [`ChatResponse`] with [`Usage`] normalised
//! to one meaning (input includes cached tokens, output includes reasoning),
//! and every failure is one [`ProviderError`] with an [`ErrorKind`] the
//! executor can act on (retry, fall back, shrink, give up) without parsing
//! vendor bodies itself.
//!
//! Base URLs are the ones in [`ProviderKind::default_base_url`]: the OpenAI
//! family's includes `/v1` (the client appends `/chat/completions`, or
//! `/completions` for [`Endpoint::Completions`]),
//! Gemini's includes `/v1beta` (the client appends `/models/{model}:…`),
//! Anthropic's is the bare host (the client appends `/v1/messages`).
//!
//! API keys live in a [`SecretString`] and are only ever written into a
//! request header marked sensitive. Two invariants keep them there, both
//! established here and nowhere else:
//!
//! - **No redirect is ever followed** ([`Http`] is the only client type the
//!   providers accept, and it is built with redirects off): a 3xx answer is an
//!   error, so a key header never travels to an address the policy did not
//!   name, whichever header carries it (`authorization`, `x-api-key`,
//!   `x-goog-api-key`). The official SDKs effectively do the same: API hosts
//!   do not redirect.
//! - **Nothing a server sends leaves this module with the key in it**: every
//!   answer ([`ChatResponse`] text, model, ids), every error message and
//!   body, and every batch result passes through the client's scrubber
//!   ([`Common::run`], [`batch`]'s exchanges), which replaces the key values
//!   the client holds. So stdout, `--out`, `run.json`, the journal,
//!   snapshots, cassettes and results files never see a key a server echoed.
//!
//! Answers are read within bounds ([`ResponseLimits`]): a body or stream
//! larger than the call's limit, a stream with too many events or an SSE
//! line that never ends fails the call with [`ErrorKind::ResponseTooLarge`]
//! after reading at most the limit, and error bodies are read up to
//! [`MAX_ERROR_BODY_READ`] and kept up to [`MAX_ERROR_BODY`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

pub use crate::policy::{LimitOverrides, ProviderKind};

pub mod anthropic;
pub mod batch;
mod finish;
pub mod gemini;
pub mod logprobs;
mod ndjson;
pub mod ollama;
pub mod openai;
pub mod pool;
pub mod sse;
mod tls;
pub use tls::client_builder;

// ---------------------------------------------------------------------------
// Requests and responses.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

pub use crate::usage::{CacheTtl, Usage};

mod error;
pub(crate) use error::{ErrorInfo, retry_after};
pub use error::{ErrorKind, MAX_ERROR_BODY, MAX_ERROR_BODY_READ, ProviderError};
use error::{MAX_ERROR_DETAIL, kind_for_status, retry_delay_in_body, should_retry, truncate};

/// Which OpenAI-compatible route a request goes to.
///
/// Base (pretrained, not chat-tuned) models have no chat template: wrapping
/// their input in role markers makes them continue a conversation transcript
/// instead of the text. They are served on the legacy text completions route,
/// which takes raw `prompt` text. Only the OpenAI-compatible dialect has it
/// (OpenAI, OpenRouter, Ollama, llama.cpp, vLLM); the Anthropic and Gemini
/// clients refuse [`Endpoint::Completions`] with [`ErrorKind::BadRequest`]
/// without making a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endpoint {
    /// The dialect's chat API (`/chat/completions`, `/v1/messages`,
    /// `:generateContent`).
    #[default]
    Chat,
    /// `POST {base}/completions`; see [`openai`] for how the messages become
    /// one prompt.
    Completions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The provider's model name.
    pub model: String,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub max_output_tokens: u32,
    pub temperature: Option<f64>,
    /// Ask for JSON matching this JSON Schema, in the provider's native way:
    /// OpenAI-compatible `response_format: {type: json_schema, json_schema:
    /// {name, schema, strict}}`; Anthropic `output_config.format` (the GA form
    /// in provider-apis.md §3); Gemini `generationConfig.responseMimeType =
    /// application/json` + `responseJsonSchema` (the field that takes real
    /// JSON Schema, unlike `responseSchema`'s OpenAPI subset).
    pub output_schema: Option<Value>,
    pub stream: bool,
    /// Anthropic only: put the system prompt in a block with `cache_control`
    /// of this TTL. Ignored by the other providers, whose caching is automatic.
    pub cache_system: Option<CacheTtl>,
    /// Anthropic only: the first this-many bytes of the last user message
    /// are a prefix every call of the step shares; it is sent as its own
    /// text block with `cache_control` of this TTL, so the calls after the
    /// first read it from the cache. Ignored by the other providers, whose
    /// caching of a shared prefix is automatic.
    pub cache_prefix: Option<(usize, CacheTtl)>,
    /// Chat (the default) or, for base models on OpenAI-compatible servers,
    /// the text completions route.
    pub endpoint: Endpoint,
    /// Stop sequences: generation ends before the first one produced (base
    /// models otherwise run on into the next few-shot example). Sent in each
    /// dialect's native field — OpenAI `stop`, Anthropic `stop_sequences`,
    /// Gemini `generationConfig.stopSequences` — and only when non-empty, so
    /// models that reject the field (OpenAI's reasoning models) are
    /// unaffected unless a workflow asks for it. Vendors cap the count (OpenAI
    /// at 4); the provider's 400 says so rather than this layer guessing.
    pub stop: Vec<String>,
    /// Ask for the answer's token logprobs (a cascade's `low_confidence`
    /// check): `logprobs: true` on chat, `logprobs: 1` on the completions
    /// route. Only OpenAI-dialect clients send it; see
    /// [`ProviderKind::returns_logprobs`].
    pub logprobs: bool,
    /// The step's reasoning level as the provider's knob (see
    /// [`crate::reasoning`] for each dialect's spelling); `None` sends
    /// nothing. Its thinking budget is already inside `max_output_tokens`.
    pub reasoning: Option<crate::reasoning::Thinking>,
    /// Images and PDFs sent with the last user message, before its text,
    /// in each dialect's form: OpenAI `image_url` (a data URL) and `file`
    /// (`file_data`) parts, Anthropic base64 `image` / `document` blocks,
    /// Gemini `inlineData` parts, Ollama's `images` (images only). Routing
    /// sends them only to a model that takes them (`route::takes`).
    pub attachments: Vec<Arc<crate::attachment::Attachment>>,
    /// A streamed answer's text, piece by piece as it arrives (the CLI
    /// prints the final step's answer to the terminal); ignored when the
    /// request is not streamed. Not part of what is asked.
    pub on_text: Option<TextSink>,
}

/// Where a streamed answer's text goes as it arrives. The pieces are
/// scrubbed of the client's key like every other text a server sends
/// (see [`common`]'s `TextOut`), and concatenated they are the answer's
/// text. Not part of a request's meaning: it never reaches the body, the
/// request's identity or its hash, and two requests that differ only here
/// are equal.
#[derive(Clone)]
pub struct TextSink(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for TextSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TextSink")
    }
}

impl PartialEq for TextSink {
    fn eq(&self, _: &TextSink) -> bool {
        true
    }
}

/// What decides a request's answer, as JSON: the API kind, the model, the
/// endpoint, the prompt and every generation parameter — not how it travels
/// (streaming, prompt-cache markers) and never the key (it is not in the
/// request). The response cache and recorded responses are keyed by hashes
/// of this.
pub fn request_identity(kind: ProviderKind, req: &ChatRequest) -> Value {
    let mut identity = serde_json::json!({
        "provider": kind.name(),
        "model": req.model,
        "endpoint": match req.endpoint { Endpoint::Chat => "chat", Endpoint::Completions => "completions" },
        "system": req.system,
        "messages": req.messages,
        "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "output_schema": req.output_schema,
        "stop": req.stop,
    });
    // Only when asked, so requests without it keep their earlier hashes
    // (recorded cassettes, cached answers).
    if req.logprobs {
        identity["logprobs"] = Value::Bool(true);
    }
    // The bytes by their hash; only when there are some, as above.
    if !req.attachments.is_empty() {
        identity["attachments"] = req
            .attachments
            .iter()
            .map(|a| serde_json::json!({"mime": a.mime.as_str(), "sha256": a.sha256}))
            .collect();
    }
    if let Some(t) = req.reasoning {
        identity["reasoning"] =
            serde_json::json!({"level": t.level.name(), "budget_tokens": t.budget_tokens});
    }
    identity
}

impl ChatRequest {
    /// A non-streaming request with one user message, for tests and tools.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            system: None,
            messages: vec![Message::user(prompt)],
            max_output_tokens: 1024,
            temperature: None,
            output_schema: None,
            stream: false,
            cache_system: None,
            cache_prefix: None,
            endpoint: Endpoint::Chat,
            stop: Vec::new(),
            logprobs: false,
            on_text: None,
            reasoning: None,
            attachments: Vec::new(),
        }
    }

    /// Is message `i` the one the attachments go with (the last, a user's)?
    pub(crate) fn carries_attachments(&self, i: usize) -> bool {
        !self.attachments.is_empty()
            && i + 1 == self.messages.len()
            && self.messages[i].role == Role::User
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatResponse {
    /// The generated text, without any reasoning/thinking content.
    pub text: String,
    pub usage: Usage,
    /// Provider-reported cost (OpenRouter's `usage.cost`); `None` elsewhere.
    pub cost_usd: Option<f64>,
    /// The provider's own word for why generation stopped (`stop`, `length`,
    /// `end_turn`, `max_tokens`, `STOP`, `MAX_TOKENS`, …), unchanged.
    /// See [`ChatResponse::truncated`] for the one question callers ask of it.
    pub finish_reason: Option<String>,
    /// The model as reported by the provider (often a dated snapshot name).
    pub model: String,
    /// The request id header (`x-request-id`, `request-id`,
    /// `x-generation-id`), else the response's own id (`chatcmpl-…`,
    /// `msg_…`, Gemini's `responseId`), for correlating with provider logs.
    pub request_id: Option<String>,
    /// Streaming only: from just before the request was sent to the first
    /// SSE event carrying generated content (text or reasoning).
    pub time_to_first_token: Option<Duration>,
    /// From just before the request was sent to the end of the response.
    pub latency: Duration,
    /// The answer's token logprobs, when asked for and sent
    /// ([`ChatRequest::logprobs`]).
    pub logprobs: Option<logprobs::Logprobs>,
    /// A pool's answer: the endpoint that gave it (its URL without
    /// credentials, query or fragment), set by [`pool`]; `None` elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl ChatResponse {
    /// Did the answer end the ordinary way (not stopped by a safety filter,
    /// recitation check, refusal, …)? Only such answers may be cached.
    pub fn ended_normally(&self) -> bool {
        finish::is_normal(self.finish_reason.as_deref())
    }

    /// Did generation stop because it hit the output token limit? Then the
    /// text (and any JSON in it) is cut short.
    pub fn truncated(&self) -> bool {
        matches!(
            self.finish_reason.as_deref(),
            Some("length" | "max_tokens" | "MAX_TOKENS" | "model_context_window_exceeded")
        )
    }
}

// ---------------------------------------------------------------------------
// Configuration and construction.

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    /// `SecretString` so that `Debug` never prints it.
    pub api_key: Option<SecretString>,
    /// Only takes effect through the [`Http`] client the provider is given:
    /// reqwest sets connect timeouts per client, not per request. Build the
    /// shared client with [`http_client`] to apply it.
    pub connect_timeout: Duration,
    /// The whole call, from sending to the last byte parsed.
    pub request_timeout: Duration,
    /// The longest silence allowed between two chunks of a stream; longer →
    /// [`ErrorKind::Timeout`]. Comment keep-alives count as activity.
    pub stream_idle_timeout: Duration,
    /// The policy's `limits.max_response_bytes` / `max_stream_events` for
    /// the provider; unset ones are sized from each request's
    /// `max_output_tokens` ([`ResponseLimits::for_output`]).
    pub response_limits: LimitOverrides,
    /// Per provider model name (`gpt-4o-mini`), the model's own overrides,
    /// which win over the provider's.
    pub model_response_limits: std::collections::HashMap<String, LimitOverrides>,
    /// The most a batch results download may be, in bytes.
    pub max_batch_download_bytes: u64,
    /// The most one batch may hold (the policy's `batch:`); `None`: what
    /// the provider takes ([`crate::policy::BatchLimits::of`]).
    pub batch_limits: Option<crate::policy::BatchLimits>,
    /// OpenRouter: the request's `provider` object (routing preferences),
    /// added to every chat and completions body.
    pub provider_routing: Option<Value>,
    /// Ollama: `keep_alive` sent with every call.
    pub keep_alive: Option<Value>,
    /// Ollama: per provider model name, the context window the policy plans
    /// with, sent as `options.num_ctx` (Ollama's default is far smaller and
    /// it silently drops what does not fit).
    pub model_context: std::collections::HashMap<String, u64>,
}

impl ClientConfig {
    /// Defaults from the official SDKs: connect 5 s, whole call 600 s; idle
    /// 60 s is twice the keep-alive interval of the chattiest servers.
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(60),
            response_limits: LimitOverrides::default(),
            model_response_limits: std::collections::HashMap::new(),
            max_batch_download_bytes: DEFAULT_MAX_BATCH_DOWNLOAD,
            provider_routing: None,
            keep_alive: None,
            batch_limits: None,
            model_context: std::collections::HashMap::new(),
        }
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(SecretString::from(key.into()));
        self
    }
}

/// A batch results file may be this large by default (512 MiB): tens of
/// thousands of answers, and still a bounded amount of memory.
pub const DEFAULT_MAX_BATCH_DOWNLOAD: u64 = 512 * 1024 * 1024;

/// How much of one answer a call reads before giving up with
/// [`ErrorKind::ResponseTooLarge`]. Every byte a server sends is counted
/// against these as it arrives, so memory stays bounded whatever it sends:
/// an endless stream, a 1 GB body, one SSE line that never ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Bytes of the body (JSON or the whole SSE stream).
    pub max_bytes: u64,
    /// SSE events (comments and keep-alives are not events, but their
    /// bytes count against `max_bytes`).
    pub max_events: u64,
    /// Bytes of one SSE line (a `data:` line holds one event's JSON).
    pub max_line_bytes: u64,
}

impl ResponseLimits {
    /// The defaults for a request allowed `max_output_tokens`: generous
    /// headroom over what a real answer of that length takes — 1 MiB plus
    /// 1 KiB per token (a streamed token costs one event of a few hundred
    /// bytes of JSON, reasoning included), 1,024 events plus 16 per token,
    /// and one line no longer than 1 MiB plus 64 bytes per token (a whole
    /// answer sent as one event) nor the whole body.
    pub fn for_output(max_output_tokens: u32) -> ResponseLimits {
        let tokens = u64::from(max_output_tokens);
        let max_bytes = MIB + tokens * 1024;
        ResponseLimits {
            max_bytes,
            max_events: 1024 + tokens * 16,
            max_line_bytes: (MIB + tokens * 64).min(max_bytes),
        }
    }

    /// The defaults with the policy's overrides applied.
    pub fn with(self, o: LimitOverrides) -> ResponseLimits {
        let max_bytes = o.max_response_bytes.unwrap_or(self.max_bytes).max(1);
        ResponseLimits {
            max_bytes,
            max_events: o.max_stream_events.unwrap_or(self.max_events).max(1),
            max_line_bytes: self.max_line_bytes.min(max_bytes),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// The HTTP client the providers use: `reqwest::Client`s that never
/// follow redirects. It is the only client type [`client_for`] and
/// [`batch::batch_client_for`] accept, so no provider can be built on a
/// client that would forward a key header to wherever a 3xx points.
///
/// It holds two: one that honours proxies from the environment, for remote
/// hosts, and one that never uses a proxy, for loopback base URLs
/// ([`crate::policy::is_loopback`]): a local provider's prompts (data above
/// `cloud_max` among them) go to the loopback server itself, never to an
/// `HTTP_PROXY` on another machine.
#[derive(Debug, Clone)]
pub struct Http {
    proxied: reqwest::Client,
    direct: reqwest::Client,
}

impl Http {
    /// Proxies from the environment (`HTTPS_PROXY`, `NO_PROXY`) are
    /// honoured for remote hosts, as the vendors' SDKs do.
    pub fn new(connect_timeout: Duration) -> Http {
        Http {
            proxied: Http::build(client_builder().connect_timeout(connect_timeout)),
            direct: Http::build(client_builder().no_proxy().connect_timeout(connect_timeout)),
        }
    }

    /// Ignoring proxies from the environment everywhere (tests on loopback
    /// fakes).
    pub fn without_proxy(connect_timeout: Duration) -> Http {
        let direct = Http::build(client_builder().no_proxy().connect_timeout(connect_timeout));
        Http {
            proxied: direct.clone(),
            direct,
        }
    }

    /// The client for requests to `base_url`.
    fn for_base(&self, base_url: &str) -> reqwest::Client {
        if crate::policy::is_loopback(base_url) {
            self.direct.clone()
        } else {
            self.proxied.clone()
        }
    }

    fn build(builder: reqwest::ClientBuilder) -> reqwest::Client {
        builder
            .redirect(reqwest::redirect::Policy::none())
            .build()
            // Building only fails if the TLS backend cannot initialise,
            // which is a broken installation rather than a runtime
            // condition.
            .expect("the TLS backend initialises")
    }
}

/// An [`Http`] client for sharing across providers, with the connect
/// timeout applied (see [`ClientConfig::connect_timeout`]). Proxies from the
/// environment (`HTTPS_PROXY`, `NO_PROXY`) are honoured, as the vendors'
/// SDKs do. Redirects are never followed.
pub fn http_client(connect_timeout: Duration) -> Http {
    Http::new(connect_timeout)
}

pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;
}

/// One shared reqwest::Client may be passed in (connection pooling across providers).
pub fn client_for(kind: ProviderKind, config: ClientConfig, http: Http) -> Arc<dyn Provider> {
    let common = Common::new(kind, config, http);
    match kind {
        ProviderKind::Anthropic => Arc::new(anthropic::AnthropicClient::new(common)),
        ProviderKind::Gemini => Arc::new(gemini::GeminiClient::new(common)),
        ProviderKind::Ollama => Arc::new(ollama::OllamaClient::new(common)),
        ProviderKind::OpenaiCompatible
        | ProviderKind::Openai
        | ProviderKind::Mistral
        | ProviderKind::Openrouter => Arc::new(openai::OpenAiClient::new(common)),
    }
}

mod common;
pub(crate) use common::*;

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use error::parse_short_duration;

    /// `as_str` says what serde says, so the journal's text and `run.json`
    /// agree.
    #[test]
    fn error_kind_names_are_their_serialized_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::json!(kind), serde_json::json!(kind.as_str()));
        }
    }
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms_and_precedence() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |pairs: &[(&'static str, &str)]| retry_after(&headers(pairs), now);
        assert_eq!(
            at(&[("retry-after-ms", "644")]),
            Some(Duration::from_millis(644))
        );
        assert_eq!(
            at(&[("retry-after-ms", "12.5")]),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(at(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(
            at(&[("retry-after", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            at(&[("retry-after", "9"), ("retry-after-ms", "100")]),
            Some(Duration::from_millis(100))
        );
        let in_30s = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            at(&[("retry-after", &in_30s)]),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(at(&[("retry-after", &past)]), Some(Duration::ZERO));
        // A bad `retry-after-ms` falls back to `retry-after`.
        assert_eq!(
            at(&[("retry-after-ms", "-5"), ("retry-after", "3")]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(at(&[("retry-after", "soon")]), None);
        assert_eq!(at(&[("retry-after", "-1")]), None);
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn should_retry_header() {
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "False")])),
            Some(false)
        );
        assert_eq!(should_retry(&headers(&[("x-should-retry", "maybe")])), None);
        assert_eq!(should_retry(&headers(&[])), None);
    }

    #[test]
    fn gemini_retry_delay_from_the_body() {
        let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.Help"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}});
        assert_eq!(
            retry_delay_in_body(&body),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_short_duration("644ms"),
            Some(Duration::from_millis(644))
        );
        assert_eq!(parse_short_duration("6m0s"), None);
    }

    fn kind_of(status: Option<u16>, body: Value) -> ErrorKind {
        ErrorInfo::from_json(&body).unwrap().classify(status)
    }

    #[test]
    fn classification_of_real_bodies() {
        // OpenAI's retryable rate limit vs its billing 429.
        let rate = json!({"error": {"message": "Rate limit reached", "type": "tokens",
            "param": null, "code": "rate_limit_exceeded"}});
        assert_eq!(kind_of(Some(429), rate), ErrorKind::RateLimited);
        let quota = json!({"error": {"message": "You exceeded your current quota",
            "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}});
        assert_eq!(kind_of(Some(429), quota), ErrorKind::Other);
        // Mistral's wording (not in provider-apis.md, seen in the wild).
        let mistral = json!({"object": "error", "error": {"message": "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length", "type": "invalid_request_error"}});
        assert_eq!(kind_of(Some(400), mistral), ErrorKind::ContextLength);
        // OpenRouter moderation is about content, not credentials.
        let moderation = json!({"error": {"code": 403, "message": "Input flagged",
            "metadata": {"reasons": ["violence"], "flagged_input": "…"}}});
        assert_eq!(kind_of(Some(403), moderation), ErrorKind::BadRequest);
        // Mid-stream errors have no HTTP status to go by.
        let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert_eq!(kind_of(None, overloaded), ErrorKind::Overloaded);
        let api = json!({"type": "error", "error": {"type": "api_error", "message": "boom"}});
        assert_eq!(kind_of(None, api), ErrorKind::Server);
        let openrouter = json!({"error": {"code": 502, "message": "upstream down"}});
        assert_eq!(kind_of(None, openrouter), ErrorKind::Server);
        let bad = json!({"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}});
        assert_eq!(kind_of(None, bad), ErrorKind::BadRequest);
        // Ollama's string form.
        assert_eq!(
            kind_of(
                Some(404),
                json!({"error": "model \"x\" not found, try pulling it first"})
            ),
            ErrorKind::NotFound
        );
        assert!(ErrorInfo::from_json(&json!({"error": null})).is_none());
    }

    #[test]
    fn retryability() {
        let with = |kind, status, should| ProviderError {
            status,
            should_retry: should,
            ..ProviderError::new(kind, "x")
        };
        assert!(with(ErrorKind::RateLimited, Some(429), None).is_retryable());
        assert!(with(ErrorKind::Other, Some(409), None).is_retryable());
        assert!(!with(ErrorKind::Other, Some(429), None).is_retryable());
        assert!(!with(ErrorKind::ContextLength, Some(400), None).is_retryable());
        assert!(!with(ErrorKind::Server, Some(500), Some(false)).is_retryable());
        assert!(with(ErrorKind::BadRequest, Some(400), Some(true)).is_retryable());
        assert!(with(ErrorKind::StreamBroken, None, None).is_retryable());
        assert!(!with(ErrorKind::Malformed, None, None).is_retryable());
    }

    #[test]
    fn redaction_and_truncation() {
        let secret = Secret(Some(SecretString::from("sk-live-123")));
        let e = ProviderError::new(ErrorKind::Auth, "bad key sk-live-123")
            .with_body("{\"key\":\"sk-live-123\"}")
            .redacted(&secret);
        assert_eq!(e.message, "bad key [redacted]");
        assert_eq!(e.body.as_deref(), Some("{\"key\":\"[redacted]\"}"));
        // Cut on a character boundary, with a mark.
        let t = truncate("é".repeat(2000), MAX_ERROR_BODY);
        assert!(t.len() <= MAX_ERROR_BODY + '…'.len_utf8());
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short".into(), 10), "short");
    }

    /// A streamed answer's pieces leave scrubbed however the key is cut
    /// between them, and together they are the scrubbed answer.
    #[test]
    fn streamed_text_never_carries_the_key_whatever_the_cut() {
        let key = "sk-live-0123456789abcdef";
        let common = Common::new(
            ProviderKind::Openai,
            ClientConfig::new("https://api.example.com/v1").with_api_key(key),
            Http::without_proxy(Duration::from_secs(1)),
        );
        let text = format!("héllo {key} and {key}{key} ✓ end");
        let whole = text.replace(key, "[redacted]");
        for a in 0..=text.len() {
            for b in [a, a + 3, a + 17].into_iter().filter(|&b| b <= text.len()) {
                if !text.is_char_boundary(a) || !text.is_char_boundary(b) {
                    continue;
                }
                let got = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
                let sink = {
                    let got = Arc::clone(&got);
                    TextSink(Arc::new(move |p: &str| {
                        got.lock().unwrap().push(p.to_owned())
                    }))
                };
                let mut out = common.text_out(Some(&sink));
                out.push(&text[..a]);
                out.push(&text[a..b]);
                out.push(&text[b..]);
                out.finish();
                let pieces = got.lock().unwrap().clone();
                assert!(
                    pieces.iter().all(|p| !p.contains("0123456789")),
                    "{a},{b}: {pieces:?}"
                );
                assert_eq!(pieces.concat(), whole, "{a},{b}");
            }
        }
    }

    #[test]
    fn a_key_across_the_cut_of_a_long_message_is_still_scrubbed() {
        let key = "sk-live-0123456789abcdef";
        let common = Common::new(
            ProviderKind::Openai,
            ClientConfig::new("https://api.example.com/v1").with_api_key(key),
            Http::without_proxy(Duration::from_secs(1)),
        );
        for at in MAX_ERROR_DETAIL - 20..MAX_ERROR_DETAIL + 2 {
            let message = format!("{}{key} trailing", "x".repeat(at));
            let detail = common.error_detail(Some(message));
            assert!(!detail.contains("sk-live-0123"), "{at}: {detail}");
            assert!(detail.len() <= MAX_ERROR_DETAIL + '…'.len_utf8());
        }
        // In-stream and in-body errors go through it.
        let event = json!({"error": {"message": format!("{}{key}", "y".repeat(500))}});
        let e = common.event_json(&event.to_string()).unwrap_err();
        assert!(!e.message.contains("sk-live"), "{}", e.message);
        let e = common.error_in_body(&event).unwrap_err();
        assert!(!e.message.contains("sk-live"), "{}", e.message);
    }
}
