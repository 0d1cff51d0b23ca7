//! Ollama's native chat API (`POST {base}/api/chat`, provider-apis.md §5).
//!
//! Why not its OpenAI-compatible `/v1`: that route cannot set the context
//! size, and Ollama's default (4k on small machines, 2,048 on older
//! versions) silently drops the start of a longer prompt. Here every call
//! sends `options.num_ctx` = the model's `context_window` from the policy —
//! the size tollgate plans with — so what the plan says fits is what the
//! server keeps. The body is
//!
//! `{model, messages, stream, options: {num_ctx, num_predict, temperature?,
//! stop?}, keep_alive?, format?, think?}`
//!
//! - `num_predict` is the output limit (thinking included);
//! - `keep_alive` is the provider's (`keep_alive:` in the policy);
//! - `format` is the output schema (Ollama's structured output);
//! - `think` is the reasoning knob: `false` for `none`, `"low"` / `"high"`
//!   for `light` / `deep` (models the catalog marks as reasoning only).
//!
//! A stream is newline-delimited JSON ([`super::ndjson`], bounded like SSE),
//! each line `{message: {content}, done: false}`, the last `done: true` with
//! `done_reason` and the counts `prompt_eval_count` (input) and `eval_count`
//! (output); both are omitted when zero. A stream that closes before the
//! `done: true` line was cut short. Errors are `{"error": "…"}`, as the body
//! of a non-2xx answer or as a line after HTTP 200; a missing model (404)
//! says to run `ollama pull MODEL`, and a refused connection on loopback
//! says to run `ollama serve` ([`super::Common`]).
//!
//! There is no text completions route here: [`super::Endpoint::Completions`]
//! is refused without a request (Ollama's `/v1/completions` serves it
//! through an `openai-compatible` provider).

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{
    Call, ChatRequest, ChatResponse, Common, ErrorKind, Meta, Provider, ProviderError,
    ProviderKind, Role, Usage, str_at, u64_at,
};
use crate::workflow::Reasoning;

pub struct OllamaClient {
    common: Common,
}

/// What one line (or a whole non-streamed answer) says.
#[derive(Debug, Default)]
struct Piece {
    content: String,
    /// Text or thinking was generated (for the time to first token).
    generated: bool,
    done: bool,
    done_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
}

impl OllamaClient {
    pub(crate) fn new(common: Common) -> Self {
        OllamaClient { common }
    }

    async fn call(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.common.chat_only(req)?;
        let call = Call {
            url: self.common.url("/api/chat"),
            body: request_body(
                req,
                self.common.model_context.get(&req.model).copied(),
                self.common.keep_alive.as_ref(),
            ),
            // Only sent when the policy names a key (a remote Ollama behind
            // a proxy that checks one); a local server needs none.
            auth: Some(super::AuthHeader::Bearer),
            extra_headers: Vec::new(),
            request_id_headers: &["x-request-id"],
            limits: self.common.limits(req),
        };
        let answer = match self.common.send(call).await {
            Ok(answer) => answer,
            Err(e) => return Err(self.with_hint(e, &req.model)),
        };
        let ndjson = answer
            .response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("ndjson"));
        let result = if ndjson {
            self.read_stream(answer, req.on_text.as_ref()).await
        } else {
            let (value, meta) = self.common.json(answer).await?;
            let piece = self.piece(&value)?;
            if !piece.done {
                return Err(self
                    .common
                    .malformed("the answer has no `done: true`", &value.to_string()));
            }
            self.response(piece, meta, None)
        };
        result.map_err(|e| self.with_hint(e, &req.model))
    }

    /// Ollama's "model not found, try pulling it first" names the command.
    fn with_hint(&self, mut e: ProviderError, model: &str) -> ProviderError {
        if e.kind == ErrorKind::NotFound {
            e.message
                .push_str(&format!(" — run `ollama pull {model}` on the server"));
        }
        e
    }

    fn piece(&self, v: &Value) -> Result<Piece, ProviderError> {
        self.common.error_in_body(v)?;
        if !v.is_object() {
            return Err(self
                .common
                .malformed("an answer line is not a JSON object", &v.to_string()));
        }
        let content = str_at(v, "/message/content").unwrap_or_default();
        let thinking = str_at(v, "/message/thinking").unwrap_or_default();
        let done = v.get("done").and_then(Value::as_bool) == Some(true);
        Ok(Piece {
            content: content.to_owned(),
            generated: !content.is_empty() || !thinking.is_empty(),
            done,
            done_reason: str_at(v, "/done_reason").map(str::to_owned),
            // Counts absent when zero (`omitempty`); only the last line's
            // are the answer's.
            usage: done.then(|| Usage {
                input_tokens: u64_at(v, "/prompt_eval_count"),
                output_tokens: u64_at(v, "/eval_count"),
                ..Usage::default()
            }),
            model: str_at(v, "/model").map(str::to_owned),
        })
    }

    fn response(
        &self,
        piece: Piece,
        meta: Meta,
        ttft: Option<std::time::Duration>,
    ) -> Result<ChatResponse, ProviderError> {
        super::finish::check(
            ProviderKind::Ollama,
            ChatResponse {
                endpoint: None,
                text: piece.content,
                usage: piece.usage.unwrap_or_default(),
                cost_usd: None,
                finish_reason: piece.done_reason,
                model: piece.model.unwrap_or_default(),
                request_id: meta.request_id,
                time_to_first_token: ttft,
                latency: meta.started.elapsed(),
                logprobs: None,
            },
        )
    }

    async fn read_stream(
        &self,
        answer: super::Answer,
        sink: Option<&super::TextSink>,
    ) -> Result<ChatResponse, ProviderError> {
        let (mut lines, meta) = self.common.lines(answer);
        let mut out = self.common.text_out(sink);
        let mut whole = Piece::default();
        let mut ttft = None;
        while let Some(line) = lines.next().await {
            let line = line.map_err(|e| self.common.stream_failure(e))?;
            let chunk = self.common.event_json(&line)?;
            let piece = self.piece(&chunk)?;
            if ttft.is_none() && piece.generated {
                ttft = Some(meta.started.elapsed());
            }
            whole.content.push_str(&piece.content);
            out.push(&piece.content);
            whole.model = whole.model.or(piece.model);
            if piece.done {
                whole.done = true;
                whole.done_reason = piece.done_reason;
                whole.usage = piece.usage;
                break;
            }
        }
        if !whole.done {
            return Err(self.common.stream_cut("a line with \"done\": true"));
        }
        out.finish();
        self.response(whole, meta, ttft)
    }
}

impl Provider for OllamaClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ollama
    }

    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(self.common.run(self.call(req)))
    }
}

/// The `/api/chat` body (see the module docs).
pub(crate) fn request_body(
    req: &ChatRequest,
    num_ctx: Option<u64>,
    keep_alive: Option<&Value>,
) -> Value {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut message = json!({"role": role, "content": m.content});
        // Images only: routing never sends a PDF to Ollama (`route::takes`).
        if req.carries_attachments(i) {
            message["images"] = req
                .attachments
                .iter()
                .filter(|a| a.mime.kind() == crate::attachment::Kind::Image)
                .map(|a| Value::String(a.base64()))
                .collect();
        }
        messages.push(message);
    }
    let mut options = Map::new();
    if let Some(n) = num_ctx {
        options.insert("num_ctx".into(), json!(n));
    }
    options.insert("num_predict".into(), json!(req.max_output_tokens));
    if let Some(t) = req.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if !req.stop.is_empty() {
        options.insert("stop".into(), json!(req.stop));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    // Ollama streams unless told not to.
    body.insert("stream".into(), json!(req.stream));
    body.insert("options".into(), Value::Object(options));
    if let Some(k) = keep_alive {
        body.insert("keep_alive".into(), k.clone());
    }
    if let Some(schema) = &req.output_schema {
        body.insert("format".into(), schema.clone());
    }
    if let Some(t) = req.reasoning {
        let think = match t.level {
            Reasoning::None => json!(false),
            Reasoning::Light => json!("low"),
            Reasoning::Standard => json!("medium"),
            Reasoning::Deep => json!("high"),
        };
        body.insert("think".into(), think);
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_options_keep_alive_and_format() {
        let mut req = ChatRequest::new("qwen3:8b", "hi");
        req.system = Some("terse".into());
        req.temperature = Some(0.2);
        req.max_output_tokens = 64;
        req.stop = vec!["END".into()];
        req.output_schema = Some(json!({"type": "object"}));
        let body = request_body(&req, Some(8192), Some(&json!("10m")));
        assert_eq!(
            body,
            json!({
                "model": "qwen3:8b",
                "messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}],
                "stream": false,
                "options": {"num_ctx": 8192, "num_predict": 64, "temperature": 0.2, "stop": ["END"]},
                "keep_alive": "10m",
                "format": {"type": "object"}
            })
        );
        let bare = request_body(&ChatRequest::new("m", "x"), None, None);
        assert_eq!(bare["options"], json!({"num_predict": 1024}));
        assert!(bare.get("keep_alive").is_none() && bare.get("think").is_none());
    }
}
