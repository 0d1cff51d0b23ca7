//! Google Gemini Developer API (provider-apis.md §4):
//! `POST {base}/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`.
//!
//! The key goes in the `x-goog-api-key` header. The API also accepts
//! `?key=` in the URL, which is never used here: URLs end up in logs, proxy
//! records and reqwest's error messages.
//!
//! A Gemini stream has no terminator event: the connection closes after the
//! chunk that carries `finishReason`. A stream that closes before any chunk
//! carried one was cut short.
//!
//! There is no text completions route: [`super::Endpoint::Completions`] is
//! refused without a request.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{
    AuthHeader, Call, ChatRequest, ChatResponse, Common, ErrorKind, Meta, Provider, ProviderError,
    ProviderKind, Role, TextSink, Usage, is_event_stream, str_at, u64_at,
};

pub struct GeminiClient {
    common: Common,
}

/// What one `GenerateContentResponse` (a whole answer or a stream chunk) says.
#[derive(Debug, Default)]
struct Piece {
    text: String,
    /// Did this piece carry any generated content (text or thoughts)?
    generated: bool,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    id: Option<String>,
}

impl GeminiClient {
    pub(crate) fn new(common: Common) -> Self {
        GeminiClient { common }
    }

    async fn call(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.common.chat_only(req)?;
        let model = encode_segment(req.model.strip_prefix("models/").unwrap_or(&req.model));
        let path = if req.stream {
            format!("/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("/models/{model}:generateContent")
        };
        let call = Call {
            url: self.common.url(&path),
            body: request_body(req),
            auth: Some(AuthHeader::Named("x-goog-api-key")),
            extra_headers: Vec::new(),
            request_id_headers: &["x-request-id"],
            limits: self.common.limits(req),
        };
        let answer = self.common.send(call).await?;
        if is_event_stream(&answer) {
            self.read_stream(answer, req.on_text.as_ref()).await
        } else {
            let (value, meta) = self.common.json(answer).await?;
            let piece = self.piece(&value)?;
            if piece.finish_reason.is_none() && value.get("candidates").is_none() {
                return Err(self
                    .common
                    .malformed("the response has no `candidates`", &value.to_string()));
            }
            super::finish::check(
                ProviderKind::Gemini,
                ChatResponse {
                    endpoint: None,
                    text: piece.text,
                    usage: piece.usage.unwrap_or_default(),
                    cost_usd: None,
                    finish_reason: piece.finish_reason,
                    model: piece.model.unwrap_or_default(),
                    request_id: meta.request_id.or(piece.id),
                    time_to_first_token: None,
                    latency: meta.started.elapsed(),
                    logprobs: None,
                },
            )
        }
    }

    fn piece(&self, v: &Value) -> Result<Piece, ProviderError> {
        self.common.error_in_body(v)?;
        if v.get("candidates").is_none() {
            if let Some(reason) = str_at(v, "/promptFeedback/blockReason") {
                // Retrying the same prompt gets the same verdict.
                return Err(self.common.failure(
                    ErrorKind::BadRequest,
                    &format!("the prompt was blocked ({reason})"),
                    &v.to_string(),
                ));
            }
        }
        let mut piece = Piece {
            model: str_at(v, "/modelVersion").map(str::to_string),
            id: str_at(v, "/responseId").map(str::to_string),
            finish_reason: str_at(v, "/candidates/0/finishReason").map(str::to_string),
            ..Piece::default()
        };
        if let Some(parts) = v
            .pointer("/candidates/0/content/parts")
            .and_then(Value::as_array)
        {
            for part in parts {
                let Some(t) = part.get("text").and_then(Value::as_str) else {
                    continue;
                };
                piece.generated |= !t.is_empty();
                // Thought summaries (`thought: true`) are reasoning, not text.
                if part.get("thought").and_then(Value::as_bool) != Some(true) {
                    piece.text.push_str(t);
                }
            }
        }
        piece.usage = v.get("usageMetadata").filter(|u| u.is_object()).map(usage);
        Ok(piece)
    }

    async fn read_stream(
        &self,
        answer: super::Answer,
        sink: Option<&TextSink>,
    ) -> Result<ChatResponse, ProviderError> {
        let (mut events, meta): (_, Meta) = self.common.events(answer);
        let mut out = self.common.text_out(sink);
        let mut text = String::new();
        let mut ttft = None;
        let mut finish_reason = None;
        let mut usage = None;
        let mut model = None;
        let mut id = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                // The chunk with `finishReason` also carries the final
                // usage: whatever goes wrong after it loses nothing.
                Err(_) if finish_reason.is_some() => break,
                Err(e) => return Err(self.common.stream_failure(e)),
            };
            let chunk = self.common.event_json(&event.data)?;
            let piece = self.piece(&chunk)?;
            if ttft.is_none() && piece.generated {
                ttft = Some(meta.started.elapsed());
            }
            text.push_str(&piece.text);
            out.push(&piece.text);
            // Later chunks carry the more complete usage; the last one wins.
            usage = piece.usage.or(usage);
            finish_reason = piece.finish_reason.or(finish_reason);
            model = model.or(piece.model);
            id = id.or(piece.id);
        }
        if finish_reason.is_none() {
            return Err(self.common.stream_cut("a chunk with finishReason"));
        }
        out.finish();
        super::finish::check(
            ProviderKind::Gemini,
            ChatResponse {
                endpoint: None,
                text,
                usage: usage.unwrap_or_default(),
                cost_usd: None,
                finish_reason,
                model: model.unwrap_or_default(),
                request_id: meta.request_id.or(id),
                time_to_first_token: ttft,
                latency: meta.started.elapsed(),
                logprobs: None,
            },
        )
    }
}

impl Provider for GeminiClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }

    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(self.common.run(self.call(req)))
    }
}

/// The cheat-sheet row "Gemini": `promptTokenCount` includes cached
/// content; thoughts are counted apart from `candidatesTokenCount` but
/// billed as output, so they are added to output here.
fn usage(u: &Value) -> Usage {
    let thoughts = u64_at(u, "/thoughtsTokenCount");
    Usage {
        input_tokens: u64_at(u, "/promptTokenCount"),
        output_tokens: u64_at(u, "/candidatesTokenCount").saturating_add(thoughts),
        cached_input_tokens: u64_at(u, "/cachedContentTokenCount"),
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        reasoning_tokens: thoughts,
    }
}

/// Percent-encode a model name for use as one path segment, so that a
/// stray `/`, `?` or `#` cannot change which endpoint is called.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn request_body(req: &ChatRequest) -> Value {
    let contents: Vec<Value> = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "model",
            };
            let mut parts: Vec<Value> = Vec::new();
            if req.carries_attachments(i) {
                parts.extend(req.attachments.iter().map(
                    |a| json!({"inlineData": {"mimeType": a.mime.as_str(), "data": a.base64()}}),
                ));
            }
            parts.push(json!({"text": m.content}));
            json!({"role": role, "parts": parts})
        })
        .collect();
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = &req.system {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    let mut config = Map::new();
    config.insert("maxOutputTokens".into(), json!(req.max_output_tokens));
    if let Some(t) = req.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if !req.stop.is_empty() {
        config.insert("stopSequences".into(), json!(req.stop));
    }
    if let Some(schema) = &req.output_schema {
        config.insert("responseMimeType".into(), json!("application/json"));
        // Real JSON Schema, unlike `responseSchema`'s OpenAPI subset with
        // upper-case type names.
        config.insert("responseJsonSchema".into(), schema.clone());
    }
    if let Some(t) = req.reasoning {
        // 0 turns thinking off (`none`); the budget is inside
        // `maxOutputTokens` already.
        config.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": t.budget_tokens}),
        );
    }
    body.insert("generationConfig".into(), Value::Object(config));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_count_as_output_and_reasoning() {
        let u = usage(&json!({"promptTokenCount": 31, "candidatesTokenCount": 12,
            "cachedContentTokenCount": 8, "thoughtsTokenCount": 5, "totalTokenCount": 48}));
        assert_eq!(
            u,
            Usage {
                input_tokens: 31,
                output_tokens: 17,
                cached_input_tokens: 8,
                cache_write_tokens: 0,
                cache_write_1h_tokens: 0,
                reasoning_tokens: 5
            }
        );
        // Zero counts are omitted in proto JSON.
        assert_eq!(usage(&json!({"promptTokenCount": 3})).output_tokens, 0);
    }

    #[test]
    fn model_names_cannot_escape_their_path_segment() {
        assert_eq!(encode_segment("gemini-2.5-flash"), "gemini-2.5-flash");
        assert_eq!(encode_segment("a/b?key=x"), "a%2Fb%3Fkey%3Dx");
    }
}
