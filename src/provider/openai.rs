//! OpenAI Chat Completions (`POST {base}/chat/completions`) and the legacy
//! text Completions (`POST {base}/completions`), the dialect of `openai`,
//! `openai-compatible` (Ollama, llama.cpp, vLLM, …), `mistral` and
//! `openrouter` (provider-apis.md §1, §5, §6 and §7).
//!
//! The kinds differ in three details, each handled here:
//! - the output limit is `max_completion_tokens` for OpenAI chat (its
//!   reasoning models reject `max_tokens`) but `max_tokens` elsewhere
//!   (Ollama's and other compatible servers' only spelling, and the legacy
//!   completions route's only spelling, OpenAI's included);
//! - `stream_options.include_usage` is sent except to Mistral, which always
//!   reports streamed usage and is strict about unknown fields;
//! - OpenRouter reports a price, `usage.cost`, which becomes `cost_usd`.
//!
//! # The completions route ([`Endpoint::Completions`])
//!
//! Base models have no chat template, so they get raw text: `prompt` is the
//! system prompt (if any) followed by every message's content, in order,
//! joined by a blank line (`"\n\n"`). Roles are dropped — there is no neutral
//! way to spell them that a base model would understand — so a few-shot
//! prompt is written as one user message laid out exactly as the model
//! should see it, ending where the model is to continue, usually with
//! [`ChatRequest::stop`] set to the separator of the next example.
//!
//! The body is `{model, prompt, max_tokens, temperature?, stop?, stream,
//! stream_options?, response_format?, json_schema?}`. A schema goes in two
//! places: `response_format: {type: json_schema, json_schema: {name,
//! schema}}` for servers that read it there on this route (vLLM), and
//! top-level `json_schema`, which llama.cpp compiles to a grammar on every
//! completion route (provider-apis.md §6) — its `/v1/completions` passes body
//! fields through to the sampler but translates `response_format` only on
//! the chat route. No `strict`: that is OpenAI's chat structured-output
//! contract; the engine validates the answer either way.
//!
//! The answer is `choices[0].text` (stream: `choices[0].text` deltas, then
//! `data: [DONE]`), with the same `finish_reason`, usage mapping, error
//! classification, retry hints and TTFT as chat: only the request body and
//! where the text sits differ, and everything else is one code path.

use serde_json::{Map, Value, json};

use super::{
    AuthHeader, Call, ChatRequest, ChatResponse, Common, Endpoint, ErrorKind, Meta, Provider,
    ProviderError, ProviderKind, Role, TextSink, Usage, is_event_stream, str_at, u64_at,
};
use futures::future::BoxFuture;

pub struct OpenAiClient {
    pub(super) common: Common,
}

impl OpenAiClient {
    pub(crate) fn new(common: Common) -> Self {
        OpenAiClient { common }
    }

    async fn call(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let path = match req.endpoint {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
        };
        let mut body = request_body(self.common.kind(), req);
        if let (Some(routing), Some(obj)) = (&self.common.provider_routing, body.as_object_mut()) {
            obj.insert("provider".into(), routing.clone());
        }
        let call = Call {
            url: self.common.url(path),
            body,
            auth: Some(AuthHeader::Bearer),
            extra_headers: Vec::new(),
            request_id_headers: &["x-request-id", "x-generation-id"],
            limits: self.common.limits(req),
        };
        let answer = self.common.send(call).await?;
        if is_event_stream(&answer) {
            self.read_stream(answer, req.endpoint, req.logprobs, req.on_text.as_ref())
                .await
        } else {
            let (value, meta) = self.common.json(answer).await?;
            self.parse(&value, meta, req.endpoint, req.logprobs)
        }
    }

    pub(super) fn parse(
        &self,
        v: &Value,
        meta: Meta,
        endpoint: Endpoint,
        wanted: bool,
    ) -> Result<ChatResponse, ProviderError> {
        self.common.error_in_body(v)?;
        let Some(choice) = v.pointer("/choices/0") else {
            return Err(self
                .common
                .malformed("the response has no `choices[0]`", &v.to_string()));
        };
        let text = match endpoint {
            Endpoint::Chat => content_text(choice.pointer("/message/content")),
            Endpoint::Completions => str_at(choice, "/text").unwrap_or_default().to_string(),
        };
        let (usage, cost_usd) = v.get("usage").map(usage).unwrap_or_default();
        let refused = str_at(choice, "/message/refusal").is_some_and(|r| !r.is_empty());
        super::finish::check(
            self.common.kind(),
            ChatResponse {
                endpoint: None,
                finish_reason: refusal_or(refused, &text, str_at(choice, "/finish_reason")),
                text,
                usage,
                cost_usd,
                model: str_at(v, "/model").unwrap_or_default().to_string(),
                request_id: meta
                    .request_id
                    .or_else(|| str_at(v, "/id").map(str::to_string)),
                time_to_first_token: None,
                latency: meta.started.elapsed(),
                logprobs: wanted.then(|| super::logprobs::of_body(v)).flatten(),
            },
        )
    }

    async fn read_stream(
        &self,
        answer: super::Answer,
        endpoint: Endpoint,
        wanted: bool,
        sink: Option<&TextSink>,
    ) -> Result<ChatResponse, ProviderError> {
        let (mut events, meta) = self.common.events(answer);
        let mut out = self.common.text_out(sink);
        let mut text = String::new();
        let mut ttft = None;
        let mut finish_reason = None;
        let mut model = None;
        let mut id = None;
        let mut usage_seen = None;
        let mut done = false;
        let mut refused = false;
        let mut logprobs = super::logprobs::Accumulator::default();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| self.common.stream_failure(e))?;
            if event.data.trim() == "[DONE]" {
                done = true;
                break;
            }
            let chunk = self.common.event_json(&event.data)?;
            if wanted {
                logprobs.add_from(&chunk);
            }
            if model.is_none() {
                model = str_at(&chunk, "/model").map(str::to_string);
                id = str_at(&chunk, "/id").map(str::to_string);
            }
            if let Some(choice) = chunk.pointer("/choices/0") {
                let (content, reasoning) = streamed_pieces(endpoint, choice);
                if ttft.is_none()
                    && (content.is_some_and(|c| !c.is_empty())
                        || reasoning.is_some_and(|r| !r.is_empty()))
                {
                    ttft = Some(meta.started.elapsed());
                }
                if let Some(c) = content {
                    text.push_str(c);
                    out.push(c);
                }
                refused |= choice
                    .pointer("/delta/refusal")
                    .and_then(Value::as_str)
                    .is_some_and(|r| !r.is_empty());
                if let Some(f) = str_at(choice, "/finish_reason") {
                    finish_reason = Some(f.to_string());
                }
            }
            if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
                usage_seen = Some(usage(u));
            }
        }
        if !done {
            return Err(self.common.stream_cut("data: [DONE]"));
        }
        out.finish();
        if finish_reason.as_deref() == Some("error") {
            // OpenRouter's way to end a stream that failed upstream.
            return Err(ProviderError::new(
                ErrorKind::Server,
                format!(
                    "{}: the stream ended with finish_reason \"error\"",
                    self.common.kind().name()
                ),
            ));
        }
        let (usage, cost_usd) = usage_seen.unwrap_or_default();
        super::finish::check(
            self.common.kind(),
            ChatResponse {
                endpoint: None,
                finish_reason: refusal_or(refused, &text, finish_reason.as_deref()),
                text,
                usage,
                cost_usd,
                model: model.unwrap_or_default(),
                request_id: meta.request_id.or(id),
                time_to_first_token: ttft,
                latency: meta.started.elapsed(),
                logprobs: wanted.then(|| logprobs.finish()).flatten(),
            },
        )
    }
}

impl Provider for OpenAiClient {
    fn kind(&self) -> ProviderKind {
        self.common.kind()
    }

    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(self.common.run(self.call(req)))
    }
}

/// What one stream chunk's choice generated: (text, reasoning). Chat puts
/// text in `delta.content`, and reasoning — generated output too, but not
/// text — in `delta.reasoning` (OpenRouter) or `delta.reasoning_content`
/// (llama.cpp, DeepSeek-style servers). The completions route has only
/// `text`, no delta and no reasoning channel.
fn streamed_pieces(endpoint: Endpoint, choice: &Value) -> (Option<&str>, Option<&str>) {
    match endpoint {
        Endpoint::Chat => {
            let delta = choice.get("delta");
            let content = delta.and_then(|d| d.get("content")).and_then(Value::as_str);
            let reasoning = delta
                .and_then(|d| d.get("reasoning").or_else(|| d.get("reasoning_content")))
                .and_then(Value::as_str);
            (content, reasoning)
        }
        Endpoint::Completions => (str_at(choice, "/text"), None),
    }
}

/// The finish reason to judge an answer by: an OpenAI refusal comes back
/// as `content: null, refusal: "…"` with finish reason `stop`, which would
/// pass for a normal empty answer; with no content it is a `refusal`, so
/// [`super::finish::check`] fails it like every other withheld answer.
fn refusal_or(refused: bool, text: &str, finish_reason: Option<&str>) -> Option<String> {
    if refused && text.is_empty() {
        Some("refusal".to_string())
    } else {
        finish_reason.map(str::to_string)
    }
}

/// `message.content` is a string, `null` (refusals, tool calls) or — from
/// some compatible servers — a list of `{type: text, text}` parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The cheat-sheet row "OpenAI chat": prompt_tokens already include cached
/// tokens and completion_tokens include reasoning, so they map directly.
fn usage(u: &Value) -> (Usage, Option<f64>) {
    let usage = Usage {
        input_tokens: u64_at(u, "/prompt_tokens"),
        output_tokens: u64_at(u, "/completion_tokens"),
        // Mistral reports cache hits as a top-level `num_cached_tokens`.
        cached_input_tokens: u64_at(u, "/prompt_tokens_details/cached_tokens")
            .max(u64_at(u, "/num_cached_tokens")),
        cache_write_tokens: u64_at(u, "/prompt_tokens_details/cache_write_tokens"),
        cache_write_1h_tokens: 0,
        reasoning_tokens: u64_at(u, "/completion_tokens_details/reasoning_tokens"),
    };
    (usage, u.get("cost").and_then(Value::as_f64))
}

pub(crate) fn request_body(kind: ProviderKind, req: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    match req.endpoint {
        Endpoint::Chat => {
            body.insert("messages".into(), chat_messages(req));
        }
        Endpoint::Completions => {
            body.insert("prompt".into(), json!(completion_prompt(req)));
        }
    }
    let limit_field = if kind == ProviderKind::Openai && req.endpoint == Endpoint::Chat {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body.insert(limit_field.into(), json!(req.max_output_tokens));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    if let Some(schema) = &req.output_schema {
        match req.endpoint {
            Endpoint::Chat => {
                body.insert(
                    "response_format".into(),
                    json!({
                        "type": "json_schema",
                        "json_schema": {
                            "name": schema_name(schema),
                            "schema": schema,
                            "strict": strict_compatible(schema),
                        }
                    }),
                );
            }
            Endpoint::Completions => {
                body.insert(
                    "response_format".into(),
                    json!({
                        "type": "json_schema",
                        "json_schema": {"name": schema_name(schema), "schema": schema}
                    }),
                );
                body.insert("json_schema".into(), schema.clone());
            }
        }
    }
    if req.logprobs {
        // Chat takes a flag; the legacy route the number of alternatives
        // (the chosen token's logprob always comes back).
        match req.endpoint {
            Endpoint::Chat => {
                body.insert("logprobs".into(), json!(true));
                // One alternative per token keeps the answer small: llama.cpp
                // sends twenty unless told (and none at all for 0).
                body.insert("top_logprobs".into(), json!(1));
            }
            Endpoint::Completions => {
                body.insert("logprobs".into(), json!(1));
            }
        }
    }
    if let (Some(t), Endpoint::Chat) = (req.reasoning, req.endpoint) {
        // The completions route has no reasoning channel to steer.
        if kind == ProviderKind::Openrouter {
            body.insert("reasoning".into(), json!({"effort": t.effort()}));
        } else {
            body.insert("reasoning_effort".into(), json!(t.effort()));
        }
    }
    body.insert("stream".into(), json!(req.stream));
    if req.stream && kind != ProviderKind::Mistral {
        // Without it OpenAI sends no usage at all in a stream.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn chat_messages(req: &ChatRequest) -> Value {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        // `system`, not the newer `developer`: every compatible server and
        // every OpenAI model (o-series map it) accepts `system`.
        messages.push(json!({"role": "system", "content": system}));
    }
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        if req.carries_attachments(i) {
            let mut parts: Vec<Value> =
                req.attachments.iter().map(|a| attachment_part(a)).collect();
            parts.push(json!({"type": "text", "text": m.content}));
            messages.push(json!({"role": role, "content": parts}));
        } else {
            messages.push(json!({"role": role, "content": m.content}));
        }
    }
    Value::Array(messages)
}

/// An image as an `image_url` part with a data URL, a PDF as a `file` part
/// with `file_data` (also a data URL, as OpenAI's API takes it).
fn attachment_part(a: &crate::attachment::Attachment) -> Value {
    match a.mime.kind() {
        crate::attachment::Kind::Image => {
            json!({"type": "image_url", "image_url": {"url": a.data_url()}})
        }
        crate::attachment::Kind::Pdf => json!({
            "type": "file",
            "file": {"filename": a.name, "file_data": a.data_url()},
        }),
    }
}

/// The raw text a base model continues: the system prompt (if any), then
/// each message's content, joined by a blank line, roles dropped (see the
/// module docs for why and how to write few-shot prompts). An empty system
/// prompt counts as none: a leading blank line would change what the model
/// continues.
pub(crate) fn completion_prompt(req: &ChatRequest) -> String {
    req.system
        .iter()
        .filter(|s| !s.is_empty())
        .chain(req.messages.iter().map(|m| &m.content))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `json_schema.name` must match `[a-zA-Z0-9_-]{1,64}`: the schema's title
/// if it does, else a neutral name.
fn schema_name(schema: &Value) -> String {
    schema
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .unwrap_or("output")
        .to_string()
}

/// Can this schema be sent with `strict: true`? Strict mode guarantees the
/// shape but rejects (400) any schema where an object allows extra
/// properties or leaves a property out of `required`; a workflow's schema is
/// not written with that in mind, so strictness is only claimed when it
/// holds, and the engine validates the output either way.
pub(crate) fn strict_compatible(schema: &Value) -> bool {
    let Some(obj) = schema.as_object() else {
        // `true`/`false` schemas and garbage: let the API judge, non-strictly.
        return false;
    };
    let is_object = obj.get("type").is_some_and(|t| {
        t == "object"
            || t.as_array()
                .is_some_and(|a| a.iter().any(|x| x == "object"))
    }) || obj.contains_key("properties");
    if is_object {
        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
            return false;
        }
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            if !props.keys().all(|k| required.contains(&k.as_str())) {
                return false;
            }
            if !props.values().all(strict_compatible) {
                return false;
            }
        }
    }
    let nested = |key: &str| match obj.get(key) {
        None => true,
        Some(Value::Array(list)) => list.iter().all(strict_compatible),
        Some(Value::Object(map)) if key == "$defs" || key == "definitions" => {
            map.values().all(strict_compatible)
        }
        Some(one) => strict_compatible(one),
    };
    ["items", "anyOf", "allOf", "oneOf", "$defs", "definitions"]
        .into_iter()
        .all(nested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_cached_tokens_are_cached_input() {
        let (u, _) = usage(&json!({"prompt_tokens": 2000, "completion_tokens": 5,
            "total_tokens": 2005, "num_cached_tokens": 1536}));
        assert_eq!((u.input_tokens, u.cached_input_tokens), (2000, 1536));
        // OpenAI's own field still counts.
        let (u, _) = usage(&json!({"prompt_tokens": 2000, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 1024}}));
        assert_eq!(u.cached_input_tokens, 1024);
    }

    #[test]
    fn strictness_is_claimed_only_when_the_api_would_accept_it() {
        let strict = json!({"type": "object", "additionalProperties": false,
            "required": ["a", "b"],
            "properties": {"a": {"type": "string"},
                           "b": {"type": "array", "items": {"type": "object",
                                 "additionalProperties": false, "required": ["c"],
                                 "properties": {"c": {"type": ["integer", "null"]}}}}}});
        assert!(strict_compatible(&strict));

        let mut optional = strict.clone();
        optional["required"] = json!(["a"]);
        assert!(!strict_compatible(&optional));

        let mut open_nested = strict.clone();
        open_nested["properties"]["b"]["items"]
            .as_object_mut()
            .unwrap()
            .remove("additionalProperties");
        assert!(!strict_compatible(&open_nested));

        assert!(!strict_compatible(&json!({"type": "object"})));
        assert!(strict_compatible(&json!({"type": "string"})));
    }

    #[test]
    fn schema_names_follow_the_api_pattern() {
        assert_eq!(
            schema_name(&json!({"title": "Extraction_v2"})),
            "Extraction_v2"
        );
        assert_eq!(schema_name(&json!({"title": "has spaces"})), "output");
        assert_eq!(schema_name(&json!({})), "output");
    }

    #[test]
    fn output_limit_field_depends_on_kind() {
        let req = ChatRequest::new("m", "hi");
        let openai = request_body(ProviderKind::Openai, &req);
        assert_eq!(openai["max_completion_tokens"], 1024);
        assert!(openai.get("max_tokens").is_none());
        for kind in [
            ProviderKind::Mistral,
            ProviderKind::Openrouter,
            ProviderKind::OpenaiCompatible,
        ] {
            let body = request_body(kind, &req);
            assert_eq!(body["max_tokens"], 1024, "{kind:?}");
            assert!(body.get("max_completion_tokens").is_none());
        }
    }

    #[test]
    fn a_completion_prompt_is_the_system_prompt_and_the_messages_as_raw_text() {
        let mut req = ChatRequest::new("base", "Q: 2+2\nA: 4");
        req.messages
            .push(crate::provider::Message::assistant("Q: 3+3\nA:"));
        assert_eq!(completion_prompt(&req), "Q: 2+2\nA: 4\n\nQ: 3+3\nA:");
        req.system = Some("Arithmetic.".into());
        assert_eq!(
            completion_prompt(&req),
            "Arithmetic.\n\nQ: 2+2\nA: 4\n\nQ: 3+3\nA:"
        );
        req.system = Some(String::new());
        assert_eq!(completion_prompt(&req), "Q: 2+2\nA: 4\n\nQ: 3+3\nA:");
    }

    #[test]
    fn the_completions_body_has_a_prompt_and_always_max_tokens() {
        let mut req = ChatRequest::new("davinci-002", "Once upon a time");
        req.endpoint = Endpoint::Completions;
        req.stop = vec!["\n\n".into()];
        for kind in [ProviderKind::Openai, ProviderKind::OpenaiCompatible] {
            let body = request_body(kind, &req);
            assert_eq!(
                body,
                json!({"model": "davinci-002", "prompt": "Once upon a time",
                       "max_tokens": 1024, "stop": ["\n\n"], "stream": false}),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn stop_is_only_sent_when_there_is_one() {
        let mut req = ChatRequest::new("m", "hi");
        assert!(
            request_body(ProviderKind::Openai, &req)
                .get("stop")
                .is_none()
        );
        req.stop = vec!["END".into(), "###".into()];
        assert_eq!(
            request_body(ProviderKind::Openai, &req)["stop"],
            json!(["END", "###"])
        );
    }

    #[test]
    fn stream_options_are_not_sent_to_mistral() {
        let mut req = ChatRequest::new("m", "hi");
        req.stream = true;
        assert_eq!(
            request_body(ProviderKind::Openai, &req)["stream_options"],
            json!({"include_usage": true})
        );
        assert!(
            request_body(ProviderKind::Mistral, &req)
                .get("stream_options")
                .is_none()
        );
    }
}
