//! The provider clients against the loopback fake of the three APIs.
//!
//! Every test talks HTTP to `fake_llm::FakeServer` on 127.0.0.1; nothing
//! touches the internet. Timeouts are small (hundreds of milliseconds) but
//! no test asserts on elapsed wall time.

use std::sync::Arc;
use std::time::Duration;

use fake_llm::{Api, FakeServer, Recorded, Reply};
use serde_json::json;
use tollgate::provider::{
    CacheTtl, ChatRequest, ChatResponse, ClientConfig, Endpoint, ErrorKind, Http, Message,
    Provider, ProviderError, ProviderKind, Usage, client_for, http_client,
};

const KEY: &str = "sk-test-SECRET-5f3a9c0e7d2b41aa";

/// The three wire dialects, by a representative kind.
const DIALECTS: [ProviderKind; 3] = [
    ProviderKind::Openai,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
];

/// The base URL a kind's client expects, on the fake (see
/// `ProviderKind::default_base_url`: `/v1` and `/v1beta` are part of it).
fn base_url(fake: &FakeServer, kind: ProviderKind) -> String {
    match kind {
        ProviderKind::Anthropic => fake.base_url(),
        ProviderKind::Gemini => format!("{}/v1beta", fake.base_url()),
        _ => format!("{}/v1", fake.base_url()),
    }
}

/// The idle timeout for tests that stall a stream on purpose. Others use a
/// generous one, so that a loaded machine cannot make them flaky.
const SHORT_IDLE: Duration = Duration::from_millis(300);

fn config(fake: &FakeServer, kind: ProviderKind) -> ClientConfig {
    let mut config = ClientConfig::new(base_url(fake, kind)).with_api_key(KEY);
    config.request_timeout = Duration::from_secs(20);
    config.stream_idle_timeout = Duration::from_secs(10);
    config
}

/// Loopback only: never send test traffic through a proxy from the
/// environment.
fn http() -> Http {
    Http::without_proxy(Duration::from_secs(2))
}

fn client(fake: &FakeServer, kind: ProviderKind) -> Arc<dyn Provider> {
    client_for(kind, config(fake, kind), http())
}

fn impatient_client(fake: &FakeServer, kind: ProviderKind) -> Arc<dyn Provider> {
    let mut config = config(fake, kind);
    config.stream_idle_timeout = SHORT_IDLE;
    client_for(kind, config, http())
}

fn request(model: &str, stream: bool) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        system: Some("You are terse.".to_string()),
        messages: vec![
            Message::user("Say hello."),
            Message::assistant("Hello."),
            Message::user("Again, louder."),
        ],
        max_output_tokens: 256,
        temperature: Some(0.2),
        output_schema: None,
        stream,
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

/// The same conversation for a base model on the text completions route.
fn completion_request(model: &str, stream: bool) -> ChatRequest {
    ChatRequest {
        endpoint: Endpoint::Completions,
        ..request(model, stream)
    }
}

/// What [`completion_request`]'s system prompt and messages become.
const COMPLETION_PROMPT: &str = "You are terse.\n\nSay hello.\n\nHello.\n\nAgain, louder.";

fn model_for(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "claude-sonnet-4-5",
        ProviderKind::Gemini => "gemini-2.5-flash",
        _ => "gpt-4o-mini",
    }
}

/// Send one request of `kind` to a fresh fake answering `reply`, with the
/// short idle timeout (these replies are mostly failures, stalls included).
async fn send_one(
    kind: ProviderKind,
    stream: bool,
    reply: Reply,
) -> (Result<ChatResponse, ProviderError>, Recorded) {
    let fake = FakeServer::start().await;
    fake.push(reply);
    let result = impatient_client(&fake, kind)
        .send(&request(model_for(kind), stream))
        .await;
    (result, fake.last_request())
}

async fn error_of(kind: ProviderKind, stream: bool, reply: Reply) -> ProviderError {
    let (result, _) = send_one(kind, stream, reply.clone()).await;
    match result {
        Ok(resp) => {
            panic!("{kind:?} stream={stream}: expected an error for {reply:?}, got {resp:?}")
        }
        Err(e) => {
            assert_key_free(&e);
            e
        }
    }
}

/// The key must not appear in anything the provider layer hands out.
fn assert_key_free(err: &ProviderError) {
    for text in [
        err.to_string(),
        err.message.clone(),
        format!("{err:?}"),
        err.body.clone().unwrap_or_default(),
    ] {
        assert!(!text.contains(KEY), "the API key leaked: {text}");
        assert!(
            !text.contains("SECRET"),
            "part of the API key leaked: {text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Success: text, usage, ids, request shape.

#[tokio::test]
async fn openai_non_streaming_maps_usage_cost_and_ids() {
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("hello world")
            .usage(100, 20)
            .cached(40)
            .cache_write(10)
            .reasoning(5)
            .cost(0.0123)
            .model("openai/gpt-4o-mini-2024-07-18"),
    );
    let provider = client(&fake, ProviderKind::Openrouter);
    assert_eq!(provider.kind(), ProviderKind::Openrouter);
    let resp = provider
        .send(&request("openai/gpt-4o-mini", false))
        .await
        .unwrap();

    assert_eq!(resp.text, "hello world");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 100,
            output_tokens: 20,
            cached_input_tokens: 40,
            cache_write_tokens: 10,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 5,
        }
    );
    assert_eq!(resp.cost_usd, Some(0.0123));
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert!(!resp.truncated());
    assert_eq!(resp.model, "openai/gpt-4o-mini-2024-07-18");
    assert!(resp.request_id.as_deref().unwrap().starts_with("req_fake"));
    assert_eq!(resp.time_to_first_token, None);

    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        seen.body,
        json!({
            "model": "openai/gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again, louder."},
            ],
            "max_tokens": 256,
            "temperature": 0.2,
            "stream": false,
        })
    );
}

#[tokio::test]
async fn openai_streaming_assembles_text_and_usage_through_awkward_framing() {
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("Hello, streaming wörld ✓ — done")
            .usage(9, 12)
            .cached(3)
            .reasoning(2)
            .thinking("let me think")
            // Comments, `\r\n` and 7-byte writes that split UTF-8 characters.
            .keep_alive()
            .crlf()
            .write_size(7),
    );
    let resp = client(&fake, ProviderKind::Openai)
        .send(&request("gpt-4o-mini", true))
        .await
        .unwrap();
    assert_eq!(resp.text, "Hello, streaming wörld ✓ — done");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 9,
            output_tokens: 12,
            cached_input_tokens: 3,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 2,
        }
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert_eq!(resp.cost_usd, None);
    let ttft = resp
        .time_to_first_token
        .expect("a streamed answer has a TTFT");
    assert!(ttft <= resp.latency);

    let body = fake.last_request().body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    // OpenAI's reasoning models reject `max_tokens`.
    assert_eq!(body["max_completion_tokens"], 256);
    assert!(body.get("max_tokens").is_none());
}

#[tokio::test]
async fn openrouter_stream_reports_cost() {
    let (result, seen) = send_one(
        ProviderKind::Openrouter,
        true,
        Reply::text("priced")
            .usage(194, 2)
            .cache_write(100)
            .cost(0.95),
    )
    .await;
    let resp = result.unwrap();
    assert_eq!(resp.cost_usd, Some(0.95));
    assert_eq!(resp.usage.cache_write_tokens, 100);
    assert_eq!(resp.usage.input_tokens, 194);
    assert_eq!(seen.body["max_tokens"], 256);
}

#[tokio::test]
async fn mistral_gets_max_tokens_and_no_stream_options() {
    let (result, seen) = send_one(ProviderKind::Mistral, false, Reply::text("bonjour")).await;
    assert_eq!(result.unwrap().text, "bonjour");
    assert_eq!(seen.body["max_tokens"], 256);
    assert!(seen.body.get("stream_options").is_none());
}

#[tokio::test]
async fn truncated_answers_are_flagged_in_every_dialect() {
    for kind in DIALECTS {
        for stream in [false, true] {
            let (result, _) =
                send_one(kind, stream, Reply::text("{\"title\": \"cut").truncated()).await;
            let resp = result.unwrap();
            assert!(
                resp.truncated(),
                "{kind:?} stream={stream}: {:?}",
                resp.finish_reason
            );
        }
    }
}

#[tokio::test]
async fn anthropic_non_streaming_normalises_cache_usage() {
    let fake = FakeServer::start().await;
    // Total input 2200 = 52 uncached + 2048 written + 100 read.
    fake.push(
        Reply::text("Hi there.")
            .usage(2200, 40)
            .cache_write(2048)
            .cached(100)
            .thinking("private reasoning")
            .model("claude-sonnet-4-5-20250929"),
    );
    let mut req = request("claude-sonnet-4-5", false);
    req.cache_system = Some(CacheTtl::OneHour);
    let resp = client(&fake, ProviderKind::Anthropic)
        .send(&req)
        .await
        .unwrap();

    assert_eq!(resp.text, "Hi there.");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 2200,
            output_tokens: 40,
            cached_input_tokens: 100,
            cache_write_tokens: 2048,
            // The request asked for the 1 h TTL: Anthropic reports the
            // writes under `cache_creation.ephemeral_1h_input_tokens`.
            cache_write_1h_tokens: 2048,
            reasoning_tokens: 0,
        }
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(resp.model, "claude-sonnet-4-5-20250929");
    assert!(resp.request_id.as_deref().unwrap().starts_with("req_fake"));

    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "system": [{"type": "text", "text": "You are terse.",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again, louder."},
            ],
            "temperature": 0.2,
            "stream": false,
        })
    );
}

#[tokio::test]
async fn anthropic_streaming_takes_input_from_start_and_output_from_delta() {
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("Streamed ✓ reply")
            .usage(25, 57)
            .cached(5)
            .thinking("hmm")
            .write_size(3),
    );
    let resp = client(&fake, ProviderKind::Anthropic)
        .send(&request("claude-sonnet-4-5", true))
        .await
        .unwrap();
    assert_eq!(resp.text, "Streamed ✓ reply");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 25,
            output_tokens: 57,
            cached_input_tokens: 5,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 0,
        }
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("end_turn"));
    assert!(resp.time_to_first_token.is_some());
    assert!(resp.request_id.is_some());
    assert_eq!(fake.last_request().body["stream"], true);
}

#[tokio::test]
async fn gemini_non_streaming_counts_thoughts_as_output() {
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("{\"title\":\"x\"}")
            .usage(31, 17)
            .cached(8)
            .reasoning(5)
            .thinking("a thought summary"),
    );
    let resp = client(&fake, ProviderKind::Gemini)
        .send(&request("gemini-2.5-flash", false))
        .await
        .unwrap();
    assert_eq!(resp.text, "{\"title\":\"x\"}");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 31,
            output_tokens: 17,
            cached_input_tokens: 8,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 5,
        }
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("STOP"));
    assert_eq!(resp.model, "gemini-2.5-flash");
    // Gemini sends no request-id header; the response id stands in.
    assert!(resp.request_id.as_deref().unwrap().starts_with("fakeResp"));

    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(KEY));
    assert_eq!(seen.query, None, "the key must never be in the URL");
    assert_eq!(
        seen.body,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Say hello."}]},
                {"role": "model", "parts": [{"text": "Hello."}]},
                {"role": "user", "parts": [{"text": "Again, louder."}]},
            ],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2},
        })
    );
}

#[tokio::test]
async fn gemini_streaming_uses_alt_sse_and_final_usage() {
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("chunked gemini answer")
            .usage(12, 9)
            .reasoning(4)
            .thinking("thinking…")
            .crlf(),
    );
    let resp = client(&fake, ProviderKind::Gemini)
        .send(&request("gemini-2.5-flash", true))
        .await
        .unwrap();
    assert_eq!(resp.text, "chunked gemini answer");
    assert_eq!(resp.usage.input_tokens, 12);
    assert_eq!(resp.usage.output_tokens, 9);
    assert_eq!(resp.usage.reasoning_tokens, 4);
    assert!(resp.time_to_first_token.is_some());
    let seen = fake.last_request();
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(seen.query.as_deref(), Some("alt=sse"));
}

#[tokio::test]
async fn structured_output_uses_each_providers_native_field() {
    let schema = json!({
        "title": "extraction",
        "type": "object",
        "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["title", "tags"],
        "additionalProperties": false,
    });
    for kind in DIALECTS {
        let fake = FakeServer::start().await;
        let mut req = request(model_for(kind), false);
        req.output_schema = Some(schema.clone());
        client(&fake, kind).send(&req).await.unwrap();
        let body = fake.last_request().body;
        match kind {
            ProviderKind::Anthropic => assert_eq!(
                body["output_config"],
                json!({"format": {"type": "json_schema", "schema": schema}})
            ),
            ProviderKind::Gemini => {
                assert_eq!(
                    body["generationConfig"]["responseMimeType"],
                    "application/json"
                );
                assert_eq!(body["generationConfig"]["responseJsonSchema"], schema);
            }
            _ => assert_eq!(
                body["response_format"],
                json!({"type": "json_schema",
                       "json_schema": {"name": "extraction", "schema": schema, "strict": true}})
            ),
        }
    }

    // A schema strict mode would reject (an optional property) is sent non-strict.
    let fake = FakeServer::start().await;
    let mut req = request("gpt-4o-mini", false);
    req.output_schema = Some(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
    client(&fake, ProviderKind::Openai)
        .send(&req)
        .await
        .unwrap();
    let format = &fake.last_request().body["response_format"]["json_schema"];
    assert_eq!(format["strict"], false);
    assert_eq!(format["name"], "output");
}

#[tokio::test]
async fn the_answer_format_follows_the_content_type_not_the_request() {
    // A server that streams although it was not asked to (some compatible
    // servers do) is still understood.
    for kind in DIALECTS {
        let (result, seen) = send_one(kind, false, Reply::text("surprise stream").streamed()).await;
        let resp = result.unwrap();
        assert_eq!(resp.text, "surprise stream", "{kind:?}");
        assert!(resp.time_to_first_token.is_some());
        assert!(!seen.wants_stream());
    }
}

#[tokio::test]
async fn a_blocked_gemini_prompt_is_a_bad_request() {
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash", "responseId": "r1"});
    let e = error_of(
        ProviderKind::Gemini,
        false,
        Reply::raw(200, "application/json", blocked.to_string()),
    )
    .await;
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("SAFETY"), "{}", e.message);
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn stop_sequences_go_in_each_dialects_native_field() {
    for kind in DIALECTS {
        let fake = FakeServer::start().await;
        let mut req = request(model_for(kind), false);
        req.stop = vec!["\n\nQ:".to_string(), "END".to_string()];
        client(&fake, kind).send(&req).await.unwrap();
        let body = fake.last_request().body;
        let stop = json!(["\n\nQ:", "END"]);
        match kind {
            ProviderKind::Anthropic => assert_eq!(body["stop_sequences"], stop),
            ProviderKind::Gemini => assert_eq!(body["generationConfig"]["stopSequences"], stop),
            _ => assert_eq!(body["stop"], stop),
        }

        // None asked for, none sent: OpenAI's reasoning models reject `stop`.
        client(&fake, kind)
            .send(&request(model_for(kind), false))
            .await
            .unwrap();
        let body = fake.last_request().body.to_string();
        assert!(
            !body.contains("stop\"") && !body.contains("stopSequences"),
            "{kind:?}: {body}"
        );
    }
}

// ---------------------------------------------------------------------------
// The text completions route, for base models.

#[tokio::test]
async fn completions_send_raw_text_and_map_text_usage_and_ids() {
    let schema = json!({"title": "answer", "type": "object",
        "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("{\"n\": 4}")
            .usage(120, 6)
            .cached(96)
            .model("base-7b-q4"),
    );
    let mut req = completion_request("base-7b", false);
    req.stop = vec!["\n\n".to_string()];
    req.output_schema = Some(schema.clone());
    let resp = client(&fake, ProviderKind::OpenaiCompatible)
        .send(&req)
        .await
        .unwrap();

    assert_eq!(resp.text, "{\"n\": 4}");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 120,
            output_tokens: 6,
            cached_input_tokens: 96,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 0,
        }
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert!(!resp.truncated());
    assert_eq!(resp.model, "base-7b-q4");
    assert!(resp.request_id.as_deref().unwrap().starts_with("req_fake"));
    assert_eq!(resp.time_to_first_token, None);

    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1/completions");
    assert_eq!(seen.api, Api::OpenAiCompletions);
    assert_eq!(seen.model(), "base-7b");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        seen.body,
        json!({
            "model": "base-7b",
            "prompt": COMPLETION_PROMPT,
            "max_tokens": 256,
            "temperature": 0.2,
            "stop": ["\n\n"],
            // For servers that read it on this route (vLLM) …
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "answer", "schema": schema}},
            // … and llama.cpp's own field, which its completion routes honour.
            "json_schema": schema,
            "stream": false,
        })
    );

    // `length` means the same on this route: the text is cut short.
    fake.push(Reply::text("cut").truncated());
    let resp = client(&fake, ProviderKind::OpenaiCompatible)
        .send(&completion_request("base-7b", false))
        .await
        .unwrap();
    assert_eq!(resp.finish_reason.as_deref(), Some("length"));
    assert!(resp.truncated());
}

#[tokio::test]
async fn completions_stream_text_deltas_with_usage_in_the_last_chunk() {
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("Once upon a tïme ✓ — the end")
            .usage(31, 9)
            .cached(16)
            .keep_alive()
            .crlf()
            .write_size(7),
    );
    let mut req = completion_request("gpt-3.5-turbo-instruct", true);
    req.stop = vec!["THE END".to_string()];
    let resp = client(&fake, ProviderKind::Openai)
        .send(&req)
        .await
        .unwrap();
    assert_eq!(resp.text, "Once upon a tïme ✓ — the end");
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 31,
            output_tokens: 9,
            cached_input_tokens: 16,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 0,
        }
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    assert_eq!(resp.model, "gpt-3.5-turbo-instruct");
    let ttft = resp
        .time_to_first_token
        .expect("a streamed answer has a TTFT");
    assert!(ttft <= resp.latency);

    let seen = fake.last_request();
    assert_eq!(seen.path, "/v1/completions");
    assert!(seen.wants_stream());
    assert_eq!(
        seen.body,
        json!({
            "model": "gpt-3.5-turbo-instruct",
            "prompt": COMPLETION_PROMPT,
            // Even for OpenAI: the legacy route never took `max_completion_tokens`.
            "max_tokens": 256,
            "temperature": 0.2,
            "stop": ["THE END"],
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
}

#[tokio::test]
async fn completions_failures_are_classified_exactly_like_chat() {
    let cases = [
        (false, Reply::rate_limited().retry_after_ms(644.0)),
        (false, Reply::insufficient_quota()),
        (false, Reply::llamacpp_context_length()),
        (false, Reply::server_error().should_retry(false)),
        (false, Reply::malformed()),
        (true, Reply::malformed()),
        (true, Reply::server_error().in_stream()),
        (true, Reply::text("one two three four five").cut_after(2)),
        (true, Reply::text("one two three four five").abort_after(2)),
    ];
    for (stream, reply) in cases {
        let fake = FakeServer::start().await;
        fake.push(reply.clone());
        fake.push(reply.clone());
        let provider = impatient_client(&fake, ProviderKind::OpenaiCompatible);
        let chat = provider
            .send(&request("m", stream))
            .await
            .expect_err("chat fails");
        let completions = provider
            .send(&completion_request("m", stream))
            .await
            .expect_err("completions fail");
        assert_key_free(&completions);
        let requests = fake.requests();
        assert_eq!(requests[0].api, Api::OpenAi);
        assert_eq!(requests[1].api, Api::OpenAiCompletions);
        let facts = |e: &ProviderError| {
            (
                e.kind,
                e.status,
                e.retry_after,
                e.should_retry,
                e.is_retryable(),
            )
        };
        assert_eq!(
            facts(&completions),
            facts(&chat),
            "stream={stream} {reply:?}: {completions:?}"
        );
    }

    // The headline case, spelled out.
    let fake = FakeServer::start().await;
    fake.push(Reply::rate_limited().retry_after_ms(644.0));
    let e = client(&fake, ProviderKind::OpenaiCompatible)
        .send(&completion_request("m", false))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::RateLimited, Some(429)));
    assert_eq!(e.retry_after, Some(Duration::from_millis(644)));
    assert!(e.is_retryable());
}

#[tokio::test]
async fn anthropic_and_gemini_refuse_the_completions_route_without_a_request() {
    for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
        let fake = FakeServer::start().await;
        for stream in [false, true] {
            let e = client(&fake, kind)
                .send(&completion_request(model_for(kind), stream))
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{kind:?}");
            assert_eq!(e.status, None);
            assert!(
                e.message.contains(
                    "the completions endpoint is only available on OpenAI-compatible servers"
                ),
                "{}",
                e.message
            );
            assert!(!e.is_retryable());
        }
        assert_eq!(fake.request_count(), 0, "{kind:?} made a request");
    }
}

// ---------------------------------------------------------------------------
// HTTP errors.

#[tokio::test]
async fn rate_limits_carry_every_retry_after_form() {
    for kind in DIALECTS {
        let e = error_of(kind, false, Reply::rate_limited().retry_after_ms(1500.0)).await;
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::RateLimited, Some(429)),
            "{kind:?}"
        );
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)), "{kind:?}");
        assert!(e.is_retryable());

        let e = error_of(kind, false, Reply::rate_limited().retry_after_secs(2.0)).await;
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)), "{kind:?}");

        // `retry-after-ms` wins over `retry-after`.
        let e = error_of(
            kind,
            false,
            Reply::rate_limited()
                .retry_after_secs(9.0)
                .retry_after_ms(250.0),
        )
        .await;
        assert_eq!(e.retry_after, Some(Duration::from_millis(250)), "{kind:?}");

        let e = error_of(
            kind,
            false,
            Reply::rate_limited().retry_after_date(Duration::from_secs(30)),
        )
        .await;
        let wait = e.retry_after.expect("an HTTP-date retry-after is parsed");
        // HTTP dates have one-second resolution.
        assert!(
            (Duration::from_secs(28)..=Duration::from_secs(31)).contains(&wait),
            "{kind:?}: {wait:?}"
        );
        assert!(
            e.body.as_deref().unwrap().contains("rate"),
            "{kind:?}: {:?}",
            e.body
        );
    }
}

#[tokio::test]
async fn rate_limit_without_header_has_no_wait_except_geminis_retry_info() {
    let e = error_of(ProviderKind::Openai, false, Reply::rate_limited()).await;
    assert_eq!(e.retry_after, None);
    let e = error_of(ProviderKind::Anthropic, false, Reply::rate_limited()).await;
    assert_eq!(e.retry_after, None);
    // Gemini's hint is `RetryInfo.retryDelay: "37s"` in the body.
    let e = error_of(ProviderKind::Gemini, false, Reply::rate_limited()).await;
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(37)));
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let e = error_of(ProviderKind::Openai, false, Reply::insufficient_quota()).await;
    assert_eq!((e.kind, e.status), (ErrorKind::Other, Some(429)));
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn x_should_retry_overrides_the_status() {
    for kind in DIALECTS {
        let e = error_of(kind, false, Reply::server_error().should_retry(false)).await;
        assert_eq!(e.kind, ErrorKind::Server, "{kind:?}");
        assert_eq!(e.should_retry, Some(false));
        assert!(!e.is_retryable(), "{kind:?}");

        let e = error_of(kind, false, Reply::status(400).should_retry(true)).await;
        assert_eq!(e.kind, ErrorKind::BadRequest, "{kind:?}");
        assert_eq!(e.should_retry, Some(true));
        assert!(e.is_retryable(), "{kind:?}");
    }
}

#[tokio::test]
async fn server_side_failures_are_retryable() {
    for kind in DIALECTS {
        let e = error_of(kind, false, Reply::server_error()).await;
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::Server, Some(500)),
            "{kind:?}"
        );
        assert!(e.is_retryable());

        let e = error_of(kind, false, Reply::unavailable()).await;
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::Overloaded, Some(503)),
            "{kind:?}"
        );
        assert!(e.is_retryable());

        let e = error_of(kind, false, Reply::overloaded()).await;
        assert_eq!(e.kind, ErrorKind::Overloaded, "{kind:?}");
        assert!(e.is_retryable());

        for status in [408, 409] {
            let e = error_of(kind, false, Reply::status(status)).await;
            assert!(e.is_retryable(), "{kind:?} {status}");
        }
        for status in [400, 404, 422] {
            let e = error_of(kind, false, Reply::status(status)).await;
            assert!(!e.is_retryable(), "{kind:?} {status}");
        }
    }
}

#[tokio::test]
async fn anthropic_529_is_overloaded() {
    let e = error_of(ProviderKind::Anthropic, false, Reply::overloaded()).await;
    assert_eq!((e.kind, e.status), (ErrorKind::Overloaded, Some(529)));
    assert!(e.message.contains("Overloaded"), "{}", e.message);
    assert!(e.body.as_deref().unwrap().contains("overloaded_error"));
    assert!(e.is_retryable());
}

#[tokio::test]
async fn proxy_style_bodies_are_classified_by_status() {
    let html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    let e = error_of(
        ProviderKind::Anthropic,
        false,
        Reply::raw(502, "text/html", html),
    )
    .await;
    assert_eq!((e.kind, e.status), (ErrorKind::Server, Some(502)));
    assert_eq!(e.body.as_deref(), Some(html));
    assert!(e.is_retryable());

    let e = error_of(
        ProviderKind::Openai,
        false,
        Reply::raw(500, "text/plain", ""),
    )
    .await;
    assert_eq!((e.kind, e.status), (ErrorKind::Server, Some(500)));

    // Error bodies are cut to 2 KB.
    let huge = "x".repeat(10_000);
    let e = error_of(
        ProviderKind::Gemini,
        false,
        Reply::raw(500, "text/plain", huge),
    )
    .await;
    assert!(e.body.unwrap().len() <= 2048 + '…'.len_utf8());
}

#[tokio::test]
async fn auth_errors_in_each_providers_shape() {
    for kind in DIALECTS {
        let e = error_of(kind, false, Reply::auth_error()).await;
        assert_eq!(e.kind, ErrorKind::Auth, "{kind:?}: {e:?}");
        // Gemini answers a bad key with 400 INVALID_ARGUMENT / API_KEY_INVALID.
        let status = if kind == ProviderKind::Gemini {
            400
        } else {
            401
        };
        assert_eq!(e.status, Some(status), "{kind:?}");
        assert!(!e.is_retryable());
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_by_the_fake_and_reported_as_auth() {
    for kind in DIALECTS {
        let fake = FakeServer::start().await;
        fake.require_api_key("sk-the-right-key-000000");
        let e = client(&fake, kind)
            .send(&request(model_for(kind), false))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{kind:?}");
        assert_key_free(&e);
        assert_eq!(fake.last_request().presented_key().as_deref(), Some(KEY));
    }
}

#[tokio::test]
async fn context_length_errors_in_every_real_wording() {
    let cases = [
        (ProviderKind::Openai, Reply::context_length()),
        (ProviderKind::Openai, Reply::context_length_alt()),
        (ProviderKind::Openrouter, Reply::openrouter_context_length()),
        (
            ProviderKind::OpenaiCompatible,
            Reply::llamacpp_context_length(),
        ),
        (ProviderKind::Anthropic, Reply::context_length()),
        (ProviderKind::Anthropic, Reply::context_length_alt()),
        (ProviderKind::Gemini, Reply::context_length()),
    ];
    for (kind, reply) in cases {
        let e = error_of(kind, false, reply.clone()).await;
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::ContextLength, Some(400)),
            "{kind:?} {reply:?}"
        );
        assert!(!e.is_retryable());
    }
}

#[tokio::test]
async fn unknown_models_are_not_found() {
    for kind in DIALECTS {
        let e = error_of(kind, false, Reply::not_found()).await;
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::NotFound, Some(404)),
            "{kind:?}"
        );
        assert!(!e.is_retryable());
    }
}

// ---------------------------------------------------------------------------
// Broken streams and bodies.

#[tokio::test]
async fn a_stalled_stream_times_out() {
    for kind in DIALECTS {
        let e = error_of(
            kind,
            true,
            Reply::text("a long answer that stalls").stall_after(2),
        )
        .await;
        assert_eq!(e.kind, ErrorKind::Timeout, "{kind:?}: {e:?}");
        assert_eq!(e.status, None);
        // The idle timeout fired, not the 20 s request timeout.
        let idle = format!("{SHORT_IDLE:?}");
        assert!(e.message.contains(&idle), "{}", e.message);
        assert!(e.is_retryable());
    }
}

#[tokio::test]
async fn a_stream_cut_before_its_terminator_is_broken() {
    for kind in DIALECTS {
        let e = error_of(
            kind,
            true,
            Reply::text("one two three four five").cut_after(2),
        )
        .await;
        assert_eq!(e.kind, ErrorKind::StreamBroken, "{kind:?}: {e:?}");
        assert!(e.is_retryable());

        let e = error_of(
            kind,
            true,
            Reply::text("one two three four five").abort_after(2),
        )
        .await;
        assert_eq!(e.kind, ErrorKind::StreamBroken, "{kind:?}: {e:?}");
    }
}

#[tokio::test]
async fn only_the_terminator_makes_a_stream_complete() {
    // Everything but the last event: OpenAI's `[DONE]`, Anthropic's
    // `message_stop`, Gemini's chunk with `finishReason`.
    for kind in DIALECTS {
        let text = "just one event short";
        let fake = FakeServer::start().await;
        fake.set_default(Reply::text(text));
        let full = client(&fake, kind)
            .send(&request(model_for(kind), true))
            .await
            .unwrap();
        assert_eq!(full.text, text);
        let events_in_full_stream = match kind {
            // role, 5 content, finish, usage, [DONE]
            ProviderKind::Openai => 9,
            // start, block start, ping, 5 deltas, block stop, message_delta, stop
            ProviderKind::Anthropic => 11,
            // 5 content chunks, the last with finishReason
            _ => 5,
        };
        fake.push(Reply::text(text).cut_after(events_in_full_stream - 1));
        let e = client(&fake, kind)
            .send(&request(model_for(kind), true))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::StreamBroken, "{kind:?}");
        fake.push(Reply::text(text).cut_after(events_in_full_stream));
        let resp = client(&fake, kind)
            .send(&request(model_for(kind), true))
            .await
            .unwrap();
        assert_eq!(resp.text, text, "{kind:?}");
    }
}

#[tokio::test]
async fn malformed_json_is_malformed() {
    for kind in DIALECTS {
        for stream in [false, true] {
            let e = error_of(kind, stream, Reply::malformed()).await;
            assert_eq!(
                e.kind,
                ErrorKind::Malformed,
                "{kind:?} stream={stream}: {e:?}"
            );
            assert!(e.body.is_some());
            assert!(!e.is_retryable());
        }
    }
}

#[tokio::test]
async fn errors_inside_a_200_stream_are_classified() {
    let cases = [
        (
            ProviderKind::Anthropic,
            Reply::overloaded(),
            ErrorKind::Overloaded,
        ),
        (
            ProviderKind::Anthropic,
            Reply::rate_limited(),
            ErrorKind::RateLimited,
        ),
        (
            ProviderKind::Openai,
            Reply::server_error(),
            ErrorKind::Server,
        ),
        (
            ProviderKind::Openai,
            Reply::context_length(),
            ErrorKind::ContextLength,
        ),
        (
            ProviderKind::Openrouter,
            Reply::status(502),
            ErrorKind::Server,
        ),
        (
            ProviderKind::Gemini,
            Reply::overloaded(),
            ErrorKind::Overloaded,
        ),
        (
            ProviderKind::Gemini,
            Reply::rate_limited(),
            ErrorKind::RateLimited,
        ),
    ];
    for (kind, reply, expected) in cases {
        let e = error_of(kind, true, reply.in_stream()).await;
        assert_eq!(e.kind, expected, "{kind:?}: {e:?}");
        assert_eq!(e.status, None, "the HTTP status was 200");
        assert!(e.message.contains("inside the stream"), "{}", e.message);
    }
}

#[tokio::test]
async fn the_whole_call_is_bounded_by_the_request_timeout() {
    let fake = FakeServer::start().await;
    fake.push(Reply::text("late").delay(Duration::from_secs(5)));
    let mut config = config(&fake, ProviderKind::Anthropic);
    config.request_timeout = Duration::from_millis(200);
    let provider = client_for(ProviderKind::Anthropic, config, http());
    let e = provider.send(&request("claude", false)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(e.is_retryable());
}

#[tokio::test]
async fn a_refused_loopback_connection_is_a_connect_error_not_retried() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = ClientConfig::new(format!("http://127.0.0.1:{port}/v1")).with_api_key(KEY);
    // The shared client as production builds it.
    let provider = client_for(
        ProviderKind::Openai,
        config,
        http_client(Duration::from_secs(2)),
    );
    let e = provider
        .send(&request("gpt-4o-mini", false))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Connect, "{e:?}");
    // Nothing listening on a loopback port is a server that is not running,
    // not a transient fault: not retried, and the error says where.
    assert!(!e.is_retryable());
    assert!(
        e.message
            .contains(&format!("nothing is listening at http://127.0.0.1:{port}")),
        "{e:?}"
    );
    assert_key_free(&e);
}

// ---------------------------------------------------------------------------
// Secrets.

#[tokio::test]
async fn the_key_is_sent_but_never_shown() {
    for kind in DIALECTS {
        let fake = FakeServer::start().await;
        // A hostile or buggy server that echoes the key back, in an error
        // body and inside a stream.
        fake.set_handler(|req: &Recorded| {
            let key = req.presented_key().unwrap_or_default();
            Reply::raw(
                401,
                "application/json",
                json!({"error": {"message": format!("bad key {key}"), "type": "authentication_error"}})
                    .to_string(),
            )
        });
        let provider = client(&fake, kind);
        let e = provider
            .send(&request(model_for(kind), false))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.message.contains("[redacted]"), "{}", e.message);
        assert_key_free(&e);
        assert_eq!(fake.last_request().presented_key().as_deref(), Some(KEY));

        fake.set_handler(|_| Reply::text("fine").usage(1, 1));
        let resp = provider
            .send(&request(model_for(kind), true))
            .await
            .unwrap();
        assert!(!format!("{resp:?}").contains(KEY));
        assert!(!serde_json::to_string(&resp).unwrap().contains(KEY));
    }

    // Configuration and the clients themselves do not print it either.
    let config = ClientConfig::new("http://127.0.0.1:9").with_api_key(KEY);
    assert!(!format!("{config:?}").contains(KEY));

    // A battery of failures, none of which may carry the key.
    let failures = [
        Reply::rate_limited().retry_after_secs(1.0),
        Reply::server_error(),
        Reply::overloaded().in_stream(),
        Reply::context_length(),
        Reply::malformed(),
        Reply::text("x y z").cut_after(1),
        Reply::text("x y z").stall_after(1),
        Reply::auth_error(),
    ];
    for kind in DIALECTS {
        for reply in &failures {
            for stream in [false, true] {
                let (result, seen) = send_one(kind, stream, reply.clone()).await;
                if let Err(e) = result {
                    assert_key_free(&e);
                }
                assert_eq!(seen.presented_key().as_deref(), Some(KEY));
            }
        }
    }
}

#[tokio::test]
async fn no_key_means_no_auth_header() {
    let fake = FakeServer::start().await;
    let config = ClientConfig::new(base_url(&fake, ProviderKind::OpenaiCompatible));
    let provider = client_for(ProviderKind::OpenaiCompatible, config, http());
    provider.send(&request("llama3.2", false)).await.unwrap();
    assert_eq!(fake.last_request().header("authorization"), None);
}

// ---------------------------------------------------------------------------
// The fake's scripting, as the executor's tests will use it.

#[tokio::test]
async fn script_then_handler_then_default() {
    let fake = FakeServer::start().await;
    let provider = client(&fake, ProviderKind::Openai);
    let req = request("gpt-4o-mini", false);

    fake.set_default(Reply::text("default"));
    fake.push(Reply::text("scripted"));
    assert_eq!(provider.send(&req).await.unwrap().text, "scripted");
    assert_eq!(provider.send(&req).await.unwrap().text, "default");

    // Every fifth request fails: a computed, deterministic failure rate.
    fake.set_handler(|req: &Recorded| {
        let n = req.body["messages"].as_array().map_or(0, Vec::len);
        if n > 10 {
            Reply::server_error()
        } else {
            Reply::text("computed")
        }
    });
    let mut failures = 0;
    for i in 0..10 {
        let mut r = req.clone();
        if i % 5 == 4 {
            r.messages = vec![Message::user("x"); 11];
        }
        match provider.send(&r).await {
            Ok(resp) => assert_eq!(resp.text, "computed"),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Server);
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 2);
    assert_eq!(fake.request_count(), 12);
}

/// Every dialect hands a streamed answer's text to the request's sink as
/// it reads it: in order, piece by piece, the key scrubbed (echoed by the
/// server, cut across two pieces), and together the answer's text; the
/// completions route too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_streams_its_text_to_the_sink_scrubbed() {
    let fake = FakeServer::start().await;
    for (kind, endpoint) in [
        (ProviderKind::Openai, Endpoint::Chat),
        (ProviderKind::Openai, Endpoint::Completions),
        (ProviderKind::Anthropic, Endpoint::Chat),
        (ProviderKind::Gemini, Endpoint::Chat),
        (ProviderKind::Ollama, Endpoint::Chat),
    ] {
        let pieces = [
            "A first piece that is longer than the key, ",
            &KEY[..10],
            &KEY[10..],
            " and a last piece that is longer than the key too.",
        ];
        fake.push(Reply::text("").chunks(pieces).usage(5, 9));
        let got = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = {
            let got = Arc::clone(&got);
            tollgate::provider::TextSink(Arc::new(move |p: &str| {
                got.lock().unwrap().push(p.to_owned());
            }))
        };
        let req = ChatRequest {
            endpoint,
            on_text: Some(sink),
            ..request(model_for(kind), true)
        };
        let resp = client(&fake, kind).send(&req).await.expect("an answer");
        let got = got.lock().unwrap().clone();
        let expected = format!("{}[redacted]{}", pieces[0], pieces[3]);
        assert_eq!(resp.text, expected, "{kind:?} {endpoint:?}");
        assert_eq!(got.concat(), expected, "{kind:?} {endpoint:?}");
        assert!(got.len() > 1, "{kind:?} {endpoint:?}: {got:?}");
        assert!(got.iter().all(|p| !p.contains("SECRET")), "{got:?}");
    }
}
