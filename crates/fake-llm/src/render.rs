//! Each API flavour's wire format: success bodies, SSE event sequences,
//! error bodies and headers, as provider-apis.md describes them.

use serde_json::{Value, json};

use crate::Api;
use crate::reply::{ErrorCase, FakeUsage, Success};

/// What the renderer needs to know about the request.
pub(crate) struct Ctx {
    pub(crate) api: Api,
    /// The requested model.
    pub(crate) model: String,
    /// A per-server sequence number, for unique ids.
    pub(crate) seq: u64,
    pub(crate) created: u64,
    /// OpenAI `stream_options.include_usage`.
    pub(crate) include_usage: bool,
    /// The key the client presented, for the masked echo in OpenAI's 401.
    pub(crate) presented_key: Option<String>,
    /// Anthropic: the request's cache breakpoint asked for the 1-hour TTL,
    /// so cache writes are reported in `ephemeral_1h_input_tokens`.
    pub(crate) cache_ttl_1h: bool,
}

/// One SSE event, with `\n` line ends and its blank-line terminator.
pub(crate) type Frame = String;

fn data_frame(v: &Value) -> Frame {
    format!("data: {v}\n\n")
}

fn named_frame(v: &Value) -> Frame {
    let name = v.get("type").and_then(Value::as_str).unwrap_or("message");
    format!("event: {name}\ndata: {v}\n\n")
}

/// The stream's pieces: the scripted ones, or about four characters each.
pub(crate) fn pieces(s: &Success) -> Vec<String> {
    if let Some(chunks) = &s.chunks {
        return chunks.clone();
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.text.chars() {
        cur.push(c);
        if cur.chars().count() == 4 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn reported_model(s: &Success, ctx: &Ctx) -> String {
    s.model.clone().unwrap_or_else(|| ctx.model.clone())
}

// ---------------------------------------------------------------------------
// OpenAI Chat Completions.

fn openai_usage(u: &FakeUsage, cost: Option<f64>) -> Value {
    let mut prompt_details = json!({"cached_tokens": u.cached, "audio_tokens": 0});
    if u.cache_write > 0 {
        prompt_details["cache_write_tokens"] = json!(u.cache_write);
    }
    let mut usage = json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    });
    if let Some(cost) = cost {
        usage["cost"] = json!(cost);
        usage["cost_details"] = json!({"upstream_inference_cost": null});
    }
    usage
}

fn openai_finish(s: &Success) -> &'static str {
    if s.truncated { "length" } else { "stop" }
}

fn openai_id(ctx: &Ctx) -> String {
    format!("chatcmpl-fake{:08}", ctx.seq)
}

fn openai_success(s: &Success, ctx: &Ctx) -> Value {
    let mut message =
        json!({"role": "assistant", "content": s.text, "refusal": null, "annotations": []});
    if let Some(t) = &s.thinking {
        message["reasoning"] = json!(t);
    }
    let mut body = json!({
        "id": openai_id(ctx),
        "object": "chat.completion",
        "created": ctx.created,
        "model": reported_model(s, ctx),
        "system_fingerprint": "fp_fake",
        "service_tier": "default",
        "choices": [{"index": 0, "logprobs": chat_logprobs(s), "finish_reason": openai_finish(s), "message": message}],
        "usage": openai_usage(&s.usage, s.cost),
    });
    add_llama_logprobs(s, &mut body);
    if s.cost.is_some() {
        body["provider"] = json!("FakeUpstream");
    }
    body
}

/// OpenAI's chat logprobs: one entry per token.
fn chat_logprobs(s: &Success) -> Value {
    match &s.logprobs {
        Some((values, crate::LogprobShape::OpenAi)) => json!({"content": values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"token": format!("t{i}"), "logprob": v, "bytes": [], "top_logprobs": []}))
            .collect::<Vec<_>>()}),
        _ => Value::Null,
    }
}

/// The legacy completions route's logprobs.
fn completion_logprobs(s: &Success) -> Value {
    match &s.logprobs {
        Some((values, crate::LogprobShape::OpenAi)) => json!({
            "tokens": (0..values.len()).map(|i| format!("t{i}")).collect::<Vec<_>>(),
            "token_logprobs": values,
            "top_logprobs": null,
            "text_offset": (0..values.len()).collect::<Vec<_>>(),
        }),
        _ => Value::Null,
    }
}

/// llama.cpp's own shape: top-level `completion_probabilities`.
fn add_llama_logprobs(s: &Success, body: &mut Value) {
    if let Some((values, crate::LogprobShape::LlamaCpp)) = &s.logprobs {
        body["completion_probabilities"] = json!(values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"id": i, "token": format!("t{i}"), "logprob": v, "bytes": [], "top_logprobs": []}))
            .collect::<Vec<_>>());
    }
}

fn openai_chunk(ctx: &Ctx, model: &str, choices: Value, usage: Option<Value>) -> Value {
    let mut chunk = json!({
        "id": openai_id(ctx),
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
        // Newer API: present unless `include_obfuscation: false`; clients
        // must ignore unknown fields.
        "obfuscation": "Xy1",
    });
    if ctx.include_usage {
        chunk["usage"] = usage.unwrap_or(Value::Null);
    }
    chunk
}

fn openai_delta(ctx: &Ctx, model: &str, delta: Value, finish: Option<&str>) -> Frame {
    data_frame(&openai_chunk(
        ctx,
        model,
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
        None,
    ))
}

/// Start + content events, without the finish and usage events.
fn openai_head(s: &Success, ctx: &Ctx, content: &[String]) -> Vec<Frame> {
    let model = reported_model(s, ctx);
    let mut out = vec![openai_delta(
        ctx,
        &model,
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    )];
    if let Some(t) = &s.thinking {
        out.push(openai_delta(ctx, &model, json!({"reasoning": t}), None));
    }
    for p in content {
        out.push(openai_delta(ctx, &model, json!({"content": p}), None));
    }
    out
}

fn openai_events(s: &Success, ctx: &Ctx) -> Vec<Frame> {
    let model = reported_model(s, ctx);
    let mut out = openai_head(s, ctx, &pieces(s));
    // Every token's logprob on the finishing chunk (a real server spreads
    // them over the content chunks; a reader sums them either way).
    let mut last = openai_chunk(
        ctx,
        &model,
        json!([{"index": 0, "delta": {}, "logprobs": chat_logprobs(s), "finish_reason": openai_finish(s)}]),
        None,
    );
    add_llama_logprobs(s, &mut last);
    out.push(data_frame(&last));
    // OpenRouter sends usage (with cost) whatever the request said.
    if ctx.include_usage || s.cost.is_some() {
        let mut last = openai_chunk(ctx, &model, json!([]), None);
        last["usage"] = openai_usage(&s.usage, s.cost);
        out.push(data_frame(&last));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

/// OpenAI's key mask in 401 messages: `sk-abc***xyz`.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "***".to_string();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}***{tail}")
}

fn openai_error(case: &ErrorCase, ctx: &Ctx) -> (u16, Value) {
    let e = |status: u16, message: &str, kind: &str, param: Value, code: Value| {
        (
            status,
            json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
        )
    };
    match case {
        ErrorCase::RateLimited => e(
            429,
            &format!(
                "Rate limit reached for {} in organization org-fake on tokens per min (TPM): Limit 30000, Used 29937, Requested 385. Please try again in 644ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
                ctx.model
            ),
            "tokens",
            Value::Null,
            json!("rate_limit_exceeded"),
        ),
        ErrorCase::InsufficientQuota => e(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            Value::Null,
            json!("insufficient_quota"),
        ),
        ErrorCase::Server => e(
            500,
            "The server had an error processing your request. Sorry about that! You can retry your request, or contact us through our help center at help.openai.com if you keep seeing this error. (Please include the request ID req_fake in your email.)",
            "server_error",
            Value::Null,
            Value::Null,
        ),
        ErrorCase::Unavailable | ErrorCase::Overloaded => e(
            503,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            Value::Null,
            Value::Null,
        ),
        ErrorCase::ContextLength => e(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            json!("messages"),
            json!("context_length_exceeded"),
        ),
        ErrorCase::ContextLengthAlt => e(
            400,
            "Your input exceeds the context window of this model. Please adjust your input and try again.",
            "invalid_request_error",
            json!("input"),
            json!("context_length_exceeded"),
        ),
        ErrorCase::OpenRouterContextLength => (
            400,
            json!({"error": {"code": 400,
                "message": "This endpoint's maximum context length is 32768 tokens. However, you requested about 42832 tokens (42832 of text input). Please reduce the length of either one, or use the \"middle-out\" transform to compress your prompt automatically.",
                "metadata": {"provider_name": "FakeUpstream"}}}),
        ),
        ErrorCase::LlamaCppContextLength => (
            400,
            json!({"error": {"code": 400,
                "message": "request (13392 tokens) exceeds the available context size (8192 tokens), try increasing it",
                "type": "exceed_context_size_error", "n_prompt_tokens": 13392, "n_ctx": 8192}}),
        ),
        ErrorCase::Auth => e(
            401,
            &format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask(ctx.presented_key.as_deref().unwrap_or(""))
            ),
            "invalid_request_error",
            Value::Null,
            json!("invalid_api_key"),
        ),
        ErrorCase::NotFound => e(
            404,
            &format!(
                "The model `{}` does not exist or you do not have access to it.",
                ctx.model
            ),
            "invalid_request_error",
            Value::Null,
            json!("model_not_found"),
        ),
        ErrorCase::Status(status) => {
            let kind = match status {
                401 | 403 => "invalid_request_error",
                429 => "requests",
                500.. => "server_error",
                _ => "invalid_request_error",
            };
            e(*status, "fake error", kind, Value::Null, Value::Null)
        }
    }
}

// ---------------------------------------------------------------------------
// OpenAI legacy Completions (`/v1/completions`): the same envelope, usage
// and errors as chat, but `prompt` in and `choices[].text` out, with
// `object: text_completion` on the body and on every stream chunk alike.
// There is no reasoning channel, so a reply's `thinking` is not rendered.

fn completion_id(ctx: &Ctx) -> String {
    format!("cmpl-fake{:08}", ctx.seq)
}

fn completion_success(s: &Success, ctx: &Ctx) -> Value {
    let mut body = json!({
        "id": completion_id(ctx),
        "object": "text_completion",
        "created": ctx.created,
        "model": reported_model(s, ctx),
        "system_fingerprint": "fp_fake",
        "choices": [{"text": s.text, "index": 0, "logprobs": completion_logprobs(s), "finish_reason": openai_finish(s)}],
        "usage": openai_usage(&s.usage, s.cost),
    });
    add_llama_logprobs(s, &mut body);
    body
}

fn completion_chunk(ctx: &Ctx, model: &str, choices: Value) -> Value {
    let mut chunk = json!({
        "id": completion_id(ctx),
        "object": "text_completion",
        "created": ctx.created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
    });
    if ctx.include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

fn completion_text(ctx: &Ctx, model: &str, text: &str, finish: Option<&str>) -> Frame {
    data_frame(&completion_chunk(
        ctx,
        model,
        json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]),
    ))
}

/// Content events, without the finish and usage events.
fn completion_head(s: &Success, ctx: &Ctx, content: &[String]) -> Vec<Frame> {
    let model = reported_model(s, ctx);
    content
        .iter()
        .map(|p| completion_text(ctx, &model, p, None))
        .collect()
}

fn completion_events(s: &Success, ctx: &Ctx) -> Vec<Frame> {
    let model = reported_model(s, ctx);
    let mut out = completion_head(s, ctx, &pieces(s));
    out.push(completion_text(ctx, &model, "", Some(openai_finish(s))));
    if ctx.include_usage || s.cost.is_some() {
        let mut last = completion_chunk(ctx, &model, json!([]));
        last["usage"] = openai_usage(&s.usage, s.cost);
        out.push(data_frame(&last));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

// ---------------------------------------------------------------------------
// Anthropic Messages.

fn anthropic_id(ctx: &Ctx) -> String {
    format!("msg_fake{:016}", ctx.seq)
}

/// Anthropic's `input_tokens` excludes cache reads and writes.
fn anthropic_usage(u: &FakeUsage, ttl_1h: bool) -> Value {
    let (five, hour) = if ttl_1h {
        (0, u.cache_write)
    } else {
        (u.cache_write, 0)
    };
    json!({
        "input_tokens": u.input.saturating_sub(u.cached + u.cache_write),
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached,
        "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
        "service_tier": "standard",
    })
}

fn anthropic_stop(s: &Success) -> &'static str {
    if s.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn anthropic_success(s: &Success, ctx: &Ctx) -> Value {
    let mut content = Vec::new();
    if let Some(t) = &s.thinking {
        content.push(json!({"type": "thinking", "thinking": t, "signature": "sig-fake"}));
    }
    content.push(json!({"type": "text", "text": s.text}));
    json!({
        "id": anthropic_id(ctx),
        "type": "message",
        "role": "assistant",
        "model": reported_model(s, ctx),
        "content": content,
        "stop_reason": anthropic_stop(s),
        "stop_sequence": null,
        "usage": anthropic_usage(&s.usage, ctx.cache_ttl_1h),
    })
}

fn anthropic_head(s: &Success, ctx: &Ctx, content: &[String]) -> (Vec<Frame>, usize) {
    let mut start_usage = anthropic_usage(&s.usage, ctx.cache_ttl_1h);
    start_usage["output_tokens"] = json!(1);
    let mut out = vec![named_frame(&json!({"type": "message_start", "message": {
        "id": anthropic_id(ctx), "type": "message", "role": "assistant", "content": [],
        "model": reported_model(s, ctx), "stop_reason": null, "stop_sequence": null,
        "usage": start_usage}}))];
    let mut index = 0;
    if let Some(t) = &s.thinking {
        out.push(named_frame(
            &json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ));
        out.push(named_frame(
            &json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "thinking_delta", "thinking": t}}),
        ));
        out.push(named_frame(
            &json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "signature_delta", "signature": "sig-fake"}}),
        ));
        out.push(named_frame(
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    out.push(named_frame(
        &json!({"type": "content_block_start", "index": index,
        "content_block": {"type": "text", "text": ""}}),
    ));
    out.push(named_frame(&json!({"type": "ping"})));
    for p in content {
        out.push(named_frame(
            &json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    (out, index)
}

fn anthropic_events(s: &Success, ctx: &Ctx) -> Vec<Frame> {
    let (mut out, index) = anthropic_head(s, ctx, &pieces(s));
    out.push(named_frame(
        &json!({"type": "content_block_stop", "index": index}),
    ));
    out.push(named_frame(&json!({"type": "message_delta",
        "delta": {"stop_reason": anthropic_stop(s), "stop_sequence": null},
        "usage": {"output_tokens": s.usage.output}})));
    out.push(named_frame(&json!({"type": "message_stop"})));
    out
}

fn anthropic_error(case: &ErrorCase, ctx: &Ctx) -> (u16, Value) {
    let (status, kind, message): (u16, &str, String) = match case {
        ErrorCase::RateLimited => (
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization (00000000-fake) of 20,000 input tokens per minute. For details, refer to: https://docs.anthropic.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.".into(),
        ),
        ErrorCase::InsufficientQuota => (402, "billing_error", "Your credit balance is too low to access the Anthropic API.".into()),
        ErrorCase::Server => (500, "api_error", "Internal server error".into()),
        ErrorCase::Unavailable => (503, "api_error", "Service unavailable".into()),
        ErrorCase::Overloaded => (529, "overloaded_error", "Overloaded".into()),
        ErrorCase::ContextLength
        | ErrorCase::OpenRouterContextLength
        | ErrorCase::LlamaCppContextLength => (
            400,
            "invalid_request_error",
            "prompt is too long: 208656 tokens > 200000 maximum".into(),
        ),
        ErrorCase::ContextLengthAlt => (
            400,
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 189136 + 20000 > 204648, decrease input length or `max_tokens` and try again".into(),
        ),
        ErrorCase::Auth => (401, "authentication_error", "invalid x-api-key".into()),
        ErrorCase::NotFound => (404, "not_found_error", format!("model: {}", ctx.model)),
        ErrorCase::Status(status) => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            (*status, kind, "fake error".into())
        }
    };
    (status, anthropic_error_body(kind, &message, ctx))
}

fn anthropic_error_body(kind: &str, message: &str, ctx: &Ctx) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message},
           "request_id": format!("req_fake{:016}", ctx.seq)})
}

// ---------------------------------------------------------------------------
// Gemini.

fn gemini_usage(u: &FakeUsage) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("promptTokenCount".into(), json!(u.input));
    m.insert(
        "candidatesTokenCount".into(),
        json!(u.output.saturating_sub(u.reasoning)),
    );
    m.insert("totalTokenCount".into(), json!(u.input + u.output));
    // Proto JSON omits zero counts.
    if u.cached > 0 {
        m.insert("cachedContentTokenCount".into(), json!(u.cached));
    }
    if u.reasoning > 0 {
        m.insert("thoughtsTokenCount".into(), json!(u.reasoning));
    }
    m.insert(
        "promptTokensDetails".into(),
        json!([{"modality": "TEXT", "tokenCount": u.input}]),
    );
    Value::Object(m)
}

fn gemini_finish(s: &Success) -> &'static str {
    if s.truncated { "MAX_TOKENS" } else { "STOP" }
}

fn gemini_id(ctx: &Ctx) -> String {
    format!("fakeResp{:08}", ctx.seq)
}

fn gemini_success(s: &Success, ctx: &Ctx) -> Value {
    let mut parts = Vec::new();
    if let Some(t) = &s.thinking {
        parts.push(json!({"text": t, "thought": true}));
    }
    parts.push(json!({"text": s.text}));
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts},
            "finishReason": gemini_finish(s), "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]}],
        "usageMetadata": gemini_usage(&s.usage),
        "modelVersion": reported_model(s, ctx),
        "responseId": gemini_id(ctx),
    })
}

fn gemini_chunk(s: &Success, ctx: &Ctx, part: Value, finish: bool) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": [part]}, "index": 0});
    let usage = if finish {
        candidate["finishReason"] = json!(gemini_finish(s));
        gemini_usage(&s.usage)
    } else {
        json!({"promptTokenCount": s.usage.input, "totalTokenCount": s.usage.input})
    };
    json!({"candidates": [candidate], "usageMetadata": usage,
           "modelVersion": reported_model(s, ctx), "responseId": gemini_id(ctx)})
}

fn gemini_head(s: &Success, ctx: &Ctx, content: &[String]) -> Vec<Frame> {
    let mut out = Vec::new();
    if let Some(t) = &s.thinking {
        out.push(data_frame(&gemini_chunk(
            s,
            ctx,
            json!({"text": t, "thought": true}),
            false,
        )));
    }
    for p in content {
        out.push(data_frame(&gemini_chunk(s, ctx, json!({"text": p}), false)));
    }
    out
}

/// No terminator: the last chunk carries `finishReason` and final usage.
fn gemini_events(s: &Success, ctx: &Ctx) -> Vec<Frame> {
    let mut all = pieces(s);
    let last = all.pop().unwrap_or_default();
    let mut out = gemini_head(s, ctx, &all);
    out.push(data_frame(&gemini_chunk(
        s,
        ctx,
        json!({"text": last}),
        true,
    )));
    out
}

fn gemini_error(case: &ErrorCase, ctx: &Ctx) -> (u16, Value) {
    let body = |code: u16, status: &str, message: &str, details: Value| {
        (
            code,
            json!({"error": {"code": code, "message": message, "status": status, "details": details}}),
        )
    };
    match case {
        ErrorCase::RateLimited | ErrorCase::InsufficientQuota => body(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                     "quotaDimensions": {"location": "global", "model": ctx.model}, "quotaValue": "10"}]},
                {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                    {"description": "Learn more about Gemini API quotas",
                     "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
            ]),
        ),
        ErrorCase::Server => body(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            json!([]),
        ),
        ErrorCase::Unavailable | ErrorCase::Overloaded => body(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            json!([]),
        ),
        ErrorCase::ContextLength
        | ErrorCase::ContextLengthAlt
        | ErrorCase::OpenRouterContextLength
        | ErrorCase::LlamaCppContextLength => body(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).",
            json!([]),
        ),
        ErrorCase::Auth => body(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"}}]),
        ),
        ErrorCase::NotFound => body(
            404,
            "NOT_FOUND",
            &format!(
                "models/{} is not found for API version v1beta, or is not supported for generateContent.",
                ctx.model
            ),
            json!([]),
        ),
        ErrorCase::Status(code) => {
            let status = match code {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                500.. => "INTERNAL",
                _ => "FAILED_PRECONDITION",
            };
            body(*code, status, "fake error", json!([]))
        }
    }
}

// ---------------------------------------------------------------------------
// Ollama (provider-apis.md §5): one JSON object per line; counts are
// top-level and omitted when zero; errors are `{"error": "…"}`.

const OLLAMA_CREATED_AT: &str = "2026-01-01T00:00:00.000000Z";

fn ollama_line(s: &Success, ctx: &Ctx, content: &str, thinking: Option<&str>) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(t) = thinking {
        message["thinking"] = json!(t);
    }
    json!({"model": reported_model(s, ctx), "created_at": OLLAMA_CREATED_AT,
           "message": message, "done": false})
}

fn ollama_done(s: &Success, ctx: &Ctx, content: &str) -> Value {
    let mut v = ollama_line(s, ctx, content, None);
    v["done"] = json!(true);
    v["done_reason"] = json!(if s.truncated { "length" } else { "stop" });
    v["total_duration"] = json!(5_191_566_416u64);
    v["load_duration"] = json!(2_154_458u64);
    if s.usage.input > 0 {
        v["prompt_eval_count"] = json!(s.usage.input);
        v["prompt_eval_duration"] = json!(383_809_000u64);
    }
    if s.usage.output > 0 {
        v["eval_count"] = json!(s.usage.output);
        v["eval_duration"] = json!(4_799_921_000u64);
    }
    v
}

fn ollama_success(s: &Success, ctx: &Ctx) -> Value {
    let mut v = ollama_done(s, ctx, &s.text);
    if let Some(t) = &s.thinking {
        v["message"]["thinking"] = json!(t);
    }
    v
}

fn line_frame(v: &Value) -> Frame {
    format!("{v}\n")
}

fn ollama_head(s: &Success, ctx: &Ctx, content: &[String]) -> Vec<Frame> {
    let mut out = Vec::new();
    if let Some(t) = &s.thinking {
        out.push(line_frame(&ollama_line(s, ctx, "", Some(t))));
    }
    for p in content {
        out.push(line_frame(&ollama_line(s, ctx, p, None)));
    }
    out
}

/// Content lines, then the `done: true` line with empty content and the
/// counts.
fn ollama_events(s: &Success, ctx: &Ctx) -> Vec<Frame> {
    let mut out = ollama_head(s, ctx, &pieces(s));
    out.push(line_frame(&ollama_done(s, ctx, "")));
    out
}

fn ollama_error(case: &ErrorCase, ctx: &Ctx) -> (u16, Value) {
    let (status, message) = match case {
        ErrorCase::NotFound => (
            404,
            format!("model \"{}\" not found, try pulling it first", ctx.model),
        ),
        ErrorCase::RateLimited | ErrorCase::InsufficientQuota => (
            429,
            "server busy, please try again.  maximum pending requests exceeded".into(),
        ),
        ErrorCase::Server => (
            500,
            "an error was encountered while running the model".into(),
        ),
        ErrorCase::Unavailable | ErrorCase::Overloaded => (503, "server overloaded".into()),
        ErrorCase::ContextLength
        | ErrorCase::ContextLengthAlt
        | ErrorCase::OpenRouterContextLength
        | ErrorCase::LlamaCppContextLength => {
            (400, "the input length exceeds the context length".into())
        }
        ErrorCase::Auth => (401, "unauthorized".into()),
        ErrorCase::Status(code) => (*code, "fake error".into()),
    };
    (status, json!({ "error": message }))
}

// ---------------------------------------------------------------------------
// Dispatch by flavour.

pub(crate) fn success_json(s: &Success, ctx: &Ctx) -> Value {
    let mut v = match ctx.api {
        Api::Anthropic | Api::AnthropicBatch => anthropic_success(s, ctx),
        Api::Gemini => gemini_success(s, ctx),
        Api::Ollama => ollama_success(s, ctx),
        Api::OpenAiCompletions => completion_success(s, ctx),
        Api::OpenAi | Api::OpenAiBatch | Api::Unknown => openai_success(s, ctx),
    };
    s.hostile.apply(ctx.api, &mut v);
    v
}

pub(crate) fn success_events(s: &Success, ctx: &Ctx) -> Vec<Frame> {
    let frames = match ctx.api {
        Api::Anthropic | Api::AnthropicBatch => anthropic_events(s, ctx),
        Api::Gemini => gemini_events(s, ctx),
        Api::Ollama => ollama_events(s, ctx),
        Api::OpenAiCompletions => completion_events(s, ctx),
        Api::OpenAi | Api::OpenAiBatch | Api::Unknown => openai_events(s, ctx),
    };
    frames
        .into_iter()
        .map(|f| s.hostile.apply_frame(ctx.api, f))
        .collect()
}

pub(crate) fn error(case: &ErrorCase, ctx: &Ctx) -> (u16, Value) {
    match ctx.api {
        Api::Anthropic | Api::AnthropicBatch => anthropic_error(case, ctx),
        Api::Gemini => gemini_error(case, ctx),
        Api::Ollama => ollama_error(case, ctx),
        // The completions route shares chat's error handling on every server.
        Api::OpenAi | Api::OpenAiCompletions | Api::OpenAiBatch | Api::Unknown => {
            openai_error(case, ctx)
        }
    }
}

/// The Anthropic API's answer to a request without `anthropic-version`.
pub(crate) fn anthropic_missing_version(ctx: &Ctx) -> (u16, Value) {
    (
        400,
        anthropic_error_body(
            "invalid_request_error",
            "anthropic-version: header is required",
            ctx,
        ),
    )
}

/// Some content, then the error as an event, then nothing (no terminator).
pub(crate) fn error_in_stream(case: &ErrorCase, ctx: &Ctx) -> Vec<Frame> {
    let partial = Success {
        text: "partial".into(),
        chunks: None,
        thinking: None,
        usage: FakeUsage::default(),
        cost: None,
        model: None,
        truncated: false,
        hostile: Box::default(),
        logprobs: None,
    };
    let content = ["partial".to_string()];
    let (_, body) = error(case, ctx);
    match ctx.api {
        Api::Anthropic | Api::AnthropicBatch => {
            let (mut out, _) = anthropic_head(&partial, ctx, &content);
            // The stream form has no request_id.
            out.push(named_frame(
                &json!({"type": "error", "error": body["error"]}),
            ));
            out
        }
        Api::Gemini => {
            let mut out = gemini_head(&partial, ctx, &content);
            out.push(data_frame(&body));
            out
        }
        // Status stays 200; the last line is the error.
        Api::Ollama => {
            let mut out = ollama_head(&partial, ctx, &content);
            out.push(line_frame(
                &json!({"error": "an error was encountered while running the model"}),
            ));
            out
        }
        Api::OpenAiCompletions => {
            let mut out = completion_head(&partial, ctx, &content);
            out.push(data_frame(&body));
            out
        }
        Api::OpenAi | Api::OpenAiBatch | Api::Unknown => {
            let mut out = openai_head(&partial, ctx, &content);
            out.push(data_frame(&body));
            out
        }
    }
}

/// A 200 body cut in the middle of its JSON.
pub(crate) fn malformed_body(ctx: &Ctx) -> String {
    let whole = success_json(&sample(), ctx).to_string();
    whole[..whole.len() / 2].to_string()
}

/// A well-framed stream in which one event's data is not JSON.
pub(crate) fn malformed_events(ctx: &Ctx) -> Vec<Frame> {
    let mut events = success_events(&sample(), ctx);
    let at = 1.min(events.len());
    let broken = match ctx.api {
        Api::Anthropic | Api::AnthropicBatch => {
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_de\n\n"
        }
        Api::OpenAiCompletions => "data: {\"choices\":[{\"index\":0,\"text\":\"bro\n\n",
        Api::Ollama => "{\"message\":{\"role\":\"assistant\",\"content\":\"bro\n",
        _ => "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"bro\n\n",
    };
    events.insert(at, broken.to_string());
    events
}

fn sample() -> Success {
    Success {
        text: "this answer is cut short".into(),
        chunks: None,
        thinking: None,
        usage: FakeUsage {
            input: 10,
            output: 5,
            ..FakeUsage::default()
        },
        cost: None,
        model: None,
        truncated: false,
        hostile: Box::default(),
        logprobs: None,
    }
}

/// Headers every answer of this flavour carries: request ids and
/// rate-limit state (Gemini has neither).
pub(crate) fn standard_headers(ctx: &Ctx, status: u16) -> Vec<(String, String)> {
    let limited = status == 429;
    let h = |k: &str, v: String| (k.to_string(), v);
    match ctx.api {
        Api::OpenAi | Api::OpenAiCompletions | Api::OpenAiBatch | Api::Unknown => vec![
            h("x-request-id", format!("req_fake{:08}", ctx.seq)),
            h("openai-processing-ms", "12".into()),
            h("openai-version", "2020-10-01".into()),
            h("x-ratelimit-limit-requests", "60".into()),
            h("x-ratelimit-limit-tokens", "150000".into()),
            h(
                "x-ratelimit-remaining-requests",
                if limited { "0" } else { "59" }.into(),
            ),
            h(
                "x-ratelimit-remaining-tokens",
                if limited { "0" } else { "149984" }.into(),
            ),
            h("x-ratelimit-reset-requests", "1s".into()),
            h("x-ratelimit-reset-tokens", "6m0s".into()),
        ],
        Api::Anthropic | Api::AnthropicBatch => {
            let reset = httpdate_rfc3339_soon();
            let mut v = vec![
                h("request-id", format!("req_fake{:016}", ctx.seq)),
                h("anthropic-organization-id", "00000000-fake".into()),
            ];
            for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
                let (limit, remaining) = match kind {
                    "requests" => ("50", if limited { "0" } else { "49" }),
                    _ => ("20000", if limited { "0" } else { "19000" }),
                };
                v.push(h(
                    &format!("anthropic-ratelimit-{kind}-limit"),
                    limit.into(),
                ));
                v.push(h(
                    &format!("anthropic-ratelimit-{kind}-remaining"),
                    remaining.into(),
                ));
                v.push(h(
                    &format!("anthropic-ratelimit-{kind}-reset"),
                    reset.clone(),
                ));
            }
            v
        }
        Api::Gemini | Api::Ollama => Vec::new(),
    }
}

/// An RFC 3339 timestamp a minute from now, as Anthropic's `*-reset` headers.
fn httpdate_rfc3339_soon() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 60)
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_358), (2023, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    fn completions_ctx(include_usage: bool) -> Ctx {
        Ctx {
            api: Api::OpenAiCompletions,
            model: "base-7b".into(),
            seq: 7,
            created: 1_700_000_000,
            include_usage,
            presented_key: None,
            cache_ttl_1h: false,
        }
    }

    #[test]
    fn completions_answer_in_the_legacy_text_completion_shape() {
        let mut s = sample();
        s.thinking = Some("never rendered".into());
        let body = success_json(&s, &completions_ctx(false));
        assert_eq!(body["id"], "cmpl-fake00000007");
        assert_eq!(body["object"], "text_completion");
        assert_eq!(
            body["choices"],
            json!([{"text": "this answer is cut short", "index": 0,
                    "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(body["usage"]["prompt_tokens"], 10);
        assert!(!body.to_string().contains("never rendered"));
    }

    #[test]
    fn completions_stream_text_chunks_then_usage_then_done() {
        let frames = success_events(&sample(), &completions_ctx(true));
        let payloads: Vec<&str> = frames
            .iter()
            .map(|f| f.strip_prefix("data: ").unwrap().trim_end())
            .collect();
        assert_eq!(payloads.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|p| serde_json::from_str(p).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, "this answer is cut short");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 5);
        // Without `include_usage`, no usage chunk and no `usage` key at all.
        let frames = success_events(&sample(), &completions_ctx(false));
        assert!(frames.iter().all(|f| !f.contains("usage")));
    }

    #[test]
    fn key_mask_hides_the_middle() {
        assert_eq!(mask("sk-abcdefghijklmnxyz"), "sk-abc***xyz");
        assert_eq!(mask("short"), "***");
    }
}
