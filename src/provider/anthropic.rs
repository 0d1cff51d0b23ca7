//! Anthropic Messages (`POST {base}/v1/messages`, provider-apis.md §3).
//!
//! Two things differ from the other dialects and matter to callers:
//! - usage: Anthropic's `input_tokens` *excludes* cache reads and writes;
//!   [`Usage::input_tokens`] is their sum, like everyone else's;
//! - the stream's end is the `message_stop` event; a stream that closes
//!   without it is [`super::ErrorKind::StreamBroken`].
//!
//! There is no text completions route: [`super::Endpoint::Completions`] is
//! refused without a request.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{
    AuthHeader, CacheTtl, Call, ChatRequest, ChatResponse, Common, Meta, Provider, ProviderError,
    ProviderKind, Role, TextSink, Usage, is_event_stream, str_at,
};

/// The only API version in use; the API rejects requests without one.
pub(crate) const API_VERSION: &str = "2023-06-01";

pub struct AnthropicClient {
    pub(super) common: Common,
}

/// Anthropic's own usage fields, before normalisation. In a stream they
/// arrive in pieces (`message_start`, then cumulative `message_delta`s).
#[derive(Debug, Default, Clone, Copy)]
struct RawUsage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    /// `cache_creation.ephemeral_1h_input_tokens`: the part of `cache_write`
    /// with the 1-hour TTL (priced higher).
    cache_write_1h: u64,
    /// `output_tokens_details.thinking_tokens`: the part of `output` spent
    /// thinking (billed as output, reported apart).
    thinking: u64,
}

impl RawUsage {
    /// Overwrite the fields present in `u` (values are cumulative, so the
    /// latest wins; absent ones keep what `message_start` said).
    fn update(&mut self, u: &Value) {
        let get = |name: &str| u.get(name).and_then(Value::as_u64);
        if let Some(n) = get("input_tokens") {
            self.input = n;
        }
        if let Some(n) = get("output_tokens") {
            self.output = n;
        }
        if let Some(n) = get("cache_read_input_tokens") {
            self.cache_read = n;
        }
        if let Some(n) = get("cache_creation_input_tokens") {
            self.cache_write = n;
        }
        if let Some(n) = u
            .pointer("/cache_creation/ephemeral_1h_input_tokens")
            .and_then(Value::as_u64)
        {
            self.cache_write_1h = n;
        }
        if let Some(n) = u
            .pointer("/output_tokens_details/thinking_tokens")
            .and_then(Value::as_u64)
        {
            self.thinking = n;
        }
    }

    /// Total input = input + cache writes + cache reads (provider-apis.md §0).
    /// Thinking tokens are inside `output_tokens`; newer responses also
    /// report them apart (`output_tokens_details.thinking_tokens`), which
    /// becomes the reasoning count. Sums saturate: a server's absurd counts
    /// must not overflow (they are judged later, in `cost::charge`).
    fn normalise(self) -> Usage {
        Usage {
            input_tokens: self
                .input
                .saturating_add(self.cache_write)
                .saturating_add(self.cache_read),
            output_tokens: self.output,
            cached_input_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            // Never more than the writes themselves, whatever a proxy reports.
            cache_write_1h_tokens: self.cache_write_1h.min(self.cache_write),
            reasoning_tokens: self.thinking.min(self.output),
        }
    }
}

impl AnthropicClient {
    pub(crate) fn new(common: Common) -> Self {
        AnthropicClient { common }
    }

    async fn call(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.common.chat_only(req)?;
        let call = Call {
            url: self.common.url("/v1/messages"),
            body: request_body(req),
            auth: Some(AuthHeader::Named("x-api-key")),
            extra_headers: vec![("anthropic-version", API_VERSION)],
            request_id_headers: &["request-id", "x-request-id"],
            limits: self.common.limits(req),
        };
        let answer = self.common.send(call).await?;
        if is_event_stream(&answer) {
            self.read_stream(answer, req.on_text.as_ref()).await
        } else {
            let (value, meta) = self.common.json(answer).await?;
            self.parse(&value, meta)
        }
    }

    pub(super) fn parse(&self, v: &Value, meta: Meta) -> Result<ChatResponse, ProviderError> {
        self.common.error_in_body(v)?;
        let Some(blocks) = v.get("content").and_then(Value::as_array) else {
            return Err(self
                .common
                .malformed("the response has no `content` list", &v.to_string()));
        };
        let text = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect();
        let mut usage = RawUsage::default();
        if let Some(u) = v.get("usage") {
            usage.update(u);
        }
        super::finish::check(
            ProviderKind::Anthropic,
            ChatResponse {
                endpoint: None,
                text,
                usage: usage.normalise(),
                cost_usd: None,
                finish_reason: str_at(v, "/stop_reason").map(str::to_string),
                model: str_at(v, "/model").unwrap_or_default().to_string(),
                request_id: meta
                    .request_id
                    .or_else(|| str_at(v, "/id").map(str::to_string)),
                time_to_first_token: None,
                latency: meta.started.elapsed(),
                logprobs: None,
            },
        )
    }

    async fn read_stream(
        &self,
        answer: super::Answer,
        sink: Option<&TextSink>,
    ) -> Result<ChatResponse, ProviderError> {
        let (mut events, meta) = self.common.events(answer);
        let mut out = self.common.text_out(sink);
        let mut text = String::new();
        let mut ttft = None;
        let mut usage = RawUsage::default();
        let mut stop_reason = None;
        let mut model = String::new();
        let mut id = None;
        let mut done = false;
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| self.common.stream_failure(e))?;
            // `event_json` turns `event: error` (whose data has an `error`
            // object) into the matching error.
            let data = self.common.event_json(&event.data)?;
            let kind = data
                .get("type")
                .and_then(Value::as_str)
                .or(event.event.as_deref())
                .unwrap_or_default();
            match kind {
                "message_start" => {
                    let message = data.get("message").unwrap_or(&Value::Null);
                    model = str_at(message, "/model").unwrap_or_default().to_string();
                    id = str_at(message, "/id").map(str::to_string);
                    if let Some(u) = message.get("usage") {
                        usage.update(u);
                    }
                }
                "content_block_start" => {
                    if let Some(t) = str_at(&data, "/content_block/text") {
                        text.push_str(t);
                        out.push(t);
                    }
                }
                "content_block_delta" => {
                    let delta = data.get("delta").unwrap_or(&Value::Null);
                    let piece = match str_at(delta, "/type") {
                        Some("text_delta") => str_at(delta, "/text"),
                        Some("thinking_delta") => str_at(delta, "/thinking"),
                        _ => None,
                    };
                    if ttft.is_none() && piece.is_some_and(|p| !p.is_empty()) {
                        ttft = Some(meta.started.elapsed());
                    }
                    if str_at(delta, "/type") == Some("text_delta") {
                        text.push_str(piece.unwrap_or_default());
                        out.push(piece.unwrap_or_default());
                    }
                }
                "message_delta" => {
                    if let Some(r) = str_at(&data, "/delta/stop_reason") {
                        stop_reason = Some(r.to_string());
                    }
                    if let Some(u) = data.get("usage") {
                        usage.update(u);
                    }
                }
                "message_stop" => {
                    done = true;
                    break;
                }
                // `ping`, `content_block_stop` and event types added later.
                _ => {}
            }
        }
        if !done {
            return Err(self.common.stream_cut("event: message_stop"));
        }
        out.finish();
        super::finish::check(
            ProviderKind::Anthropic,
            ChatResponse {
                endpoint: None,
                text,
                usage: usage.normalise(),
                cost_usd: None,
                finish_reason: stop_reason,
                model,
                request_id: meta.request_id.or(id),
                time_to_first_token: ttft,
                latency: meta.started.elapsed(),
                logprobs: None,
            },
        )
    }
}

impl Provider for AnthropicClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(self.common.run(self.call(req)))
    }
}

/// A cache breakpoint of `ttl`: 5 minutes is the API's default TTL; only
/// 1 h is spelled out.
fn cache_control(ttl: CacheTtl) -> Value {
    match ttl {
        CacheTtl::FiveMinutes => json!({"type": "ephemeral"}),
        CacheTtl::OneHour => json!({"type": "ephemeral", "ttl": "1h"}),
    }
}

pub(crate) fn request_body(req: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("max_tokens".into(), json!(req.max_output_tokens));
    if let Some(system) = &req.system {
        let value = match req.cache_system {
            None => json!(system),
            Some(ttl) => {
                json!([{"type": "text", "text": system, "cache_control": cache_control(ttl)}])
            }
        };
        body.insert("system".into(), value);
    }
    let last = req.messages.len().saturating_sub(1);
    let messages: Vec<Value> = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            match req.cache_prefix {
                // The shared prefix of the prompt as its own block, marked:
                // the prefix cached is everything up to and including it.
                Some((n, ttl))
                    if i == last
                        && m.role == Role::User
                        && n > 0
                        && n <= m.content.len()
                        && m.content.is_char_boundary(n) =>
                {
                    let (shared, rest) = m.content.split_at(n);
                    let mut blocks = vec![json!({
                        "type": "text",
                        "text": shared,
                        "cache_control": cache_control(ttl),
                    })];
                    if !rest.is_empty() {
                        blocks.push(json!({"type": "text", "text": rest}));
                    }
                    json!({"role": role, "content": blocks})
                }
                _ => json!({"role": role, "content": m.content}),
            }
        })
        .enumerate()
        .map(|(i, mut m)| {
            // Files before the text, as Anthropic advises.
            if req.carries_attachments(i) {
                let text = match m["content"].take() {
                    Value::Array(blocks) => blocks,
                    Value::String(t) => vec![json!({"type": "text", "text": t})],
                    other => vec![other],
                };
                let blocks: Vec<Value> = req
                    .attachments
                    .iter()
                    .map(|a| {
                        let kind = match a.mime.kind() {
                            crate::attachment::Kind::Image => "image",
                            crate::attachment::Kind::Pdf => "document",
                        };
                        json!({"type": kind, "source": {
                            "type": "base64", "media_type": a.mime.as_str(), "data": a.base64(),
                        }})
                    })
                    .chain(text)
                    .collect();
                m["content"] = Value::Array(blocks);
            }
            m
        })
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    // Thinking is off unless enabled, so `none` sends nothing; while it is
    // on the API refuses any temperature but the default.
    let thinking = req
        .reasoning
        .filter(|t| t.level != crate::workflow::Reasoning::None && t.budget_tokens > 0);
    if let Some(t) = thinking {
        body.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": t.budget_tokens}),
        );
    } else if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    if let Some(schema) = &req.output_schema {
        body.insert(
            "output_config".into(),
            json!({"format": {"type": "json_schema", "schema": schema}}),
        );
    }
    body.insert("stream".into(), json!(req.stream));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinking_tokens_are_reasoning() {
        let mut raw = RawUsage::default();
        raw.update(&json!({"input_tokens": 12, "output_tokens": 400,
            "output_tokens_details": {"thinking_tokens": 350}}));
        let u = raw.normalise();
        assert_eq!((u.output_tokens, u.reasoning_tokens), (400, 350));
        // Never more than the output they are part of.
        raw.update(&json!({"output_tokens_details": {"thinking_tokens": 9000}}));
        assert_eq!(raw.normalise().reasoning_tokens, 400);
    }

    #[test]
    fn absurd_counts_saturate_instead_of_overflowing() {
        let mut raw = RawUsage::default();
        raw.update(
            &json!({"input_tokens": u64::MAX, "cache_read_input_tokens": u64::MAX,
            "cache_creation_input_tokens": 5, "output_tokens": 1}),
        );
        assert_eq!(raw.normalise().input_tokens, u64::MAX);
    }

    #[test]
    fn usage_adds_cache_reads_and_writes_to_input() {
        let mut raw = RawUsage::default();
        raw.update(&json!({"input_tokens": 12, "output_tokens": 40,
            "cache_creation_input_tokens": 2048, "cache_read_input_tokens": 100}));
        let u = raw.normalise();
        assert_eq!(u.input_tokens, 12 + 2048 + 100);
        assert_eq!(u.cached_input_tokens, 100);
        assert_eq!(u.cache_write_tokens, 2048);
        assert_eq!(u.output_tokens, 40);
    }

    #[test]
    fn one_hour_cache_writes_are_told_apart() {
        let mut raw = RawUsage::default();
        raw.update(&json!({"input_tokens": 12, "output_tokens": 40,
            "cache_creation_input_tokens": 2048, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 48, "ephemeral_1h_input_tokens": 2000}}));
        let u = raw.normalise();
        assert_eq!(u.cache_write_tokens, 2048);
        assert_eq!(u.cache_write_1h_tokens, 2000);
    }

    #[test]
    fn cumulative_deltas_keep_fields_they_do_not_carry() {
        let mut raw = RawUsage::default();
        raw.update(&json!({"input_tokens": 25, "cache_read_input_tokens": 7, "output_tokens": 1}));
        raw.update(&json!({"output_tokens": 57}));
        let u = raw.normalise();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_input_tokens),
            (32, 57, 7)
        );
    }

    #[test]
    fn system_is_a_cached_block_only_when_asked() {
        let mut req = ChatRequest::new("claude", "hi");
        req.system = Some("policy".into());
        assert_eq!(request_body(&req)["system"], json!("policy"));
        req.cache_system = Some(CacheTtl::OneHour);
        assert_eq!(
            request_body(&req)["system"],
            json!([{"type": "text", "text": "policy",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
        );
        req.cache_system = Some(CacheTtl::FiveMinutes);
        assert_eq!(
            request_body(&req)["system"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
    }
}
