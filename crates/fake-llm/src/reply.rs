//! What the fake answers: a [`Reply`], built per request, rendered in the
//! API flavour of the request's path (see `render.rs`).

use std::time::Duration;

/// Token counts with tollgate's normalised meaning: `input` includes cached
/// and cache-write tokens, `output` includes reasoning. The renderer splits
/// them back into each provider's own fields (Anthropic's `input_tokens`
/// excludes cache tokens; Gemini's `candidatesTokenCount` excludes thoughts),
/// so a client that maps usage wrongly gets different numbers back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeUsage {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

/// Which error the reply is. Each is rendered with the status and body the
/// real provider uses for it (provider-apis.md §1, §3, §4, §7, §6).
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorCase {
    /// 429: OpenAI `rate_limit_exceeded`, Anthropic `rate_limit_error`,
    /// Gemini `RESOURCE_EXHAUSTED` with a `RetryInfo.retryDelay` of 37 s.
    RateLimited,
    /// OpenAI 429 `insufficient_quota` (not retryable); Anthropic 402
    /// `billing_error`; Gemini 429 `RESOURCE_EXHAUSTED`.
    InsufficientQuota,
    /// 500: `server_error` / `api_error` / `INTERNAL`.
    Server,
    /// 503: OpenAI "engine overloaded", Anthropic `api_error`, Gemini `UNAVAILABLE`.
    Unavailable,
    /// Anthropic 529 `overloaded_error`; OpenAI 503; Gemini 503 `UNAVAILABLE`.
    Overloaded,
    /// 400 with the provider's main context-overflow wording.
    ContextLength,
    /// 400 with the provider's other wording (OpenAI Responses-style
    /// "exceeds the context window"; Anthropic "input length and `max_tokens`
    /// exceed context limit"; Gemini has one wording).
    ContextLengthAlt,
    /// OpenAI path: OpenRouter's relayed 400 `{error:{code:400,…,metadata}}`.
    OpenRouterContextLength,
    /// OpenAI path: llama.cpp's 400 `exceed_context_size_error`.
    LlamaCppContextLength,
    /// OpenAI 401 `invalid_api_key`; Anthropic 401 `authentication_error`;
    /// Gemini 400 `API_KEY_INVALID`.
    Auth,
    /// 404 unknown model.
    NotFound,
    /// Any status, with a provider-shaped body whose type follows the status.
    Status(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Success {
    pub(crate) text: String,
    pub(crate) chunks: Option<Vec<String>>,
    pub(crate) thinking: Option<String>,
    pub(crate) usage: FakeUsage,
    pub(crate) cost: Option<f64>,
    pub(crate) model: Option<String>,
    pub(crate) truncated: bool,
    pub(crate) hostile: Box<crate::hostile::Hostile>,
    /// Token logprobs to send (OpenAI-compatible paths only), and where.
    pub(crate) logprobs: Option<(Vec<f64>, LogprobShape)>,
}

/// Where an answer's token logprobs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogprobShape {
    /// OpenAI's: `choices[0].logprobs.content[].logprob` on chat,
    /// `choices[0].logprobs.token_logprobs[]` on the completions route.
    OpenAi,
    /// llama.cpp's own: top-level `completion_probabilities[].logprob`.
    LlamaCpp,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Success(Success),
    Error(ErrorCase),
    /// A 200 whose body (or one stream event) is not valid JSON.
    Malformed,
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
}

/// How a stream is delivered and where it goes wrong.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StreamShape {
    /// Answer as SSE even if the request did not ask for a stream.
    pub(crate) force: bool,
    pub(crate) crlf: bool,
    pub(crate) keep_alive: bool,
    /// Re-cut the byte stream into writes of this many bytes.
    pub(crate) write_size: Option<usize>,
    pub(crate) chunk_delay: Duration,
    /// Send this many events, then end the body cleanly (no terminator).
    pub(crate) cut_after: Option<usize>,
    /// Send this many events, then reset the connection.
    pub(crate) abort_after: Option<usize>,
    /// Send this many events, then go silent for `stall_for`.
    pub(crate) stall_after: Option<usize>,
    pub(crate) stall_for: Duration,
    /// Send this many events, then wait until the gate is opened.
    pub(crate) hold_after: Option<(usize, Gate)>,
}

/// A door a test opens to let a held stream go on ([`Reply::hold_after`]):
/// what the client does with the events before it, it does while the rest
/// is provably not sent yet — no timing involved.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<tokio::sync::Notify>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Lets the held stream go on (also if it is not waiting yet).
    pub fn open(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn passed(&self) {
        self.0.notified().await;
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RetryHints {
    pub(crate) after_ms: Option<f64>,
    pub(crate) after_secs: Option<f64>,
    pub(crate) after_date_in: Option<Duration>,
    pub(crate) should_retry: Option<bool>,
}

/// One scripted answer. Build with a constructor, refine with the chained
/// methods; streaming follows the request (`stream: true` or Gemini's
/// `:streamGenerateContent`) unless [`Reply::streamed`] forces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub(crate) outcome: Outcome,
    pub(crate) delay: Duration,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) retry: RetryHints,
    pub(crate) stream: StreamShape,
    /// For errors: deliver inside a 200 stream, after some content.
    pub(crate) in_stream: bool,
}

impl Reply {
    fn new(outcome: Outcome) -> Self {
        Reply {
            outcome,
            delay: Duration::ZERO,
            headers: Vec::new(),
            retry: RetryHints::default(),
            stream: StreamShape {
                stall_for: Duration::from_secs(3600),
                ..StreamShape::default()
            },
            in_stream: false,
        }
    }

    /// A successful answer. Usage defaults to 10 input tokens and one output
    /// token per word; streamed in pieces of about four characters.
    pub fn text(text: impl Into<String>) -> Self {
        let text = text.into();
        let output = text.split_whitespace().count().max(1) as u64;
        Reply::new(Outcome::Success(Success {
            text,
            chunks: None,
            thinking: None,
            usage: FakeUsage {
                input: 10,
                output,
                ..FakeUsage::default()
            },
            cost: None,
            model: None,
            truncated: false,
            hostile: Box::default(),
            logprobs: None,
        }))
    }

    /// Sends these token logprobs with the answer (OpenAI-compatible paths),
    /// in OpenAI's shape or llama.cpp's.
    pub fn logprobs(mut self, values: Vec<f64>, shape: LogprobShape) -> Self {
        if let Outcome::Success(s) = &mut self.outcome {
            s.logprobs = Some((values, shape));
        }
        self
    }

    /// A rate-limit error (429); add a hint with the `retry_after_*` methods.
    pub fn rate_limited() -> Self {
        Reply::error(ErrorCase::RateLimited)
    }

    /// OpenAI's non-retryable 429 `insufficient_quota` (and the nearest
    /// equivalent elsewhere).
    pub fn insufficient_quota() -> Self {
        Reply::error(ErrorCase::InsufficientQuota)
    }

    pub fn server_error() -> Self {
        Reply::error(ErrorCase::Server)
    }

    pub fn unavailable() -> Self {
        Reply::error(ErrorCase::Unavailable)
    }

    /// Anthropic's 529 `overloaded_error`; 503 overloaded on the others.
    pub fn overloaded() -> Self {
        Reply::error(ErrorCase::Overloaded)
    }

    pub fn context_length() -> Self {
        Reply::error(ErrorCase::ContextLength)
    }

    pub fn context_length_alt() -> Self {
        Reply::error(ErrorCase::ContextLengthAlt)
    }

    pub fn openrouter_context_length() -> Self {
        Reply::error(ErrorCase::OpenRouterContextLength)
    }

    pub fn llamacpp_context_length() -> Self {
        Reply::error(ErrorCase::LlamaCppContextLength)
    }

    pub fn auth_error() -> Self {
        Reply::error(ErrorCase::Auth)
    }

    pub fn not_found() -> Self {
        Reply::error(ErrorCase::NotFound)
    }

    /// Any status with a provider-shaped error body.
    pub fn status(status: u16) -> Self {
        Reply::error(ErrorCase::Status(status))
    }

    pub fn error(case: ErrorCase) -> Self {
        Reply::new(Outcome::Error(case))
    }

    /// HTTP 200 with a body cut mid-JSON; streamed, one event's data is
    /// broken JSON (the stream still ends with its terminator).
    pub fn malformed() -> Self {
        Reply::new(Outcome::Malformed)
    }

    /// Exactly this status, content type and body (e.g. a proxy's HTML 502,
    /// an empty 500).
    pub fn raw(status: u16, content_type: impl Into<String>, body: impl Into<String>) -> Self {
        Reply::new(Outcome::Raw {
            status,
            content_type: content_type.into(),
            body: body.into(),
        })
    }

    fn success_mut(&mut self) -> Option<&mut Success> {
        match &mut self.outcome {
            Outcome::Success(s) => Some(s),
            _ => None,
        }
    }

    /// Total input (including cached) and total output (including reasoning).
    pub fn usage(mut self, input: u64, output: u64) -> Self {
        if let Some(s) = self.success_mut() {
            s.usage.input = input;
            s.usage.output = output;
        }
        self
    }

    /// Cache-read tokens (part of the input total).
    pub fn cached(mut self, tokens: u64) -> Self {
        if let Some(s) = self.success_mut() {
            s.usage.cached = tokens;
        }
        self
    }

    /// Cache-write tokens (part of the input total).
    pub fn cache_write(mut self, tokens: u64) -> Self {
        if let Some(s) = self.success_mut() {
            s.usage.cache_write = tokens;
        }
        self
    }

    /// Reasoning tokens (part of the output total).
    pub fn reasoning(mut self, tokens: u64) -> Self {
        if let Some(s) = self.success_mut() {
            s.usage.reasoning = tokens;
        }
        self
    }

    /// Reasoning content that a client must keep out of the text:
    /// OpenRouter-style `reasoning`, an Anthropic `thinking` block, a Gemini
    /// part with `thought: true`. Not rendered on the legacy completions
    /// endpoint, which has no reasoning channel.
    pub fn thinking(mut self, text: impl Into<String>) -> Self {
        if let Some(s) = self.success_mut() {
            s.thinking = Some(text.into());
        }
        self
    }

    /// OpenRouter-style `usage.cost` (OpenAI path only).
    pub fn cost(mut self, usd: f64) -> Self {
        if let Some(s) = self.success_mut() {
            s.cost = Some(usd);
        }
        self
    }

    /// Lie about usage, cost or the finish reason (see [`crate::Hostile`]).
    pub fn hostile(mut self, h: crate::Hostile) -> Self {
        if let Some(s) = self.success_mut() {
            *s.hostile = h;
        }
        self
    }

    /// The model name reported back (default: the requested one).
    pub fn model(mut self, name: impl Into<String>) -> Self {
        if let Some(s) = self.success_mut() {
            s.model = Some(name.into());
        }
        self
    }

    /// Stop because of the output limit: `length` / `max_tokens` / `MAX_TOKENS`.
    pub fn truncated(mut self) -> Self {
        if let Some(s) = self.success_mut() {
            s.truncated = true;
        }
        self
    }

    /// Stream the text in exactly these pieces.
    pub fn chunks<I, S>(mut self, pieces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if let Some(s) = self.success_mut() {
            let pieces: Vec<String> = pieces.into_iter().map(Into::into).collect();
            s.text = pieces.concat();
            s.chunks = Some(pieces);
        }
        self
    }

    /// Wait this long before sending the status line (time to first byte).
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// An extra response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `retry-after-ms: <ms>`.
    pub fn retry_after_ms(mut self, ms: f64) -> Self {
        self.retry.after_ms = Some(ms);
        self
    }

    /// `retry-after: <seconds>`.
    pub fn retry_after_secs(mut self, secs: f64) -> Self {
        self.retry.after_secs = Some(secs);
        self
    }

    /// `retry-after: <HTTP date>`, the given time after the reply is sent.
    pub fn retry_after_date(mut self, from_now: Duration) -> Self {
        self.retry.after_date_in = Some(from_now);
        self
    }

    /// `x-should-retry: true|false`.
    pub fn should_retry(mut self, retry: bool) -> Self {
        self.retry.should_retry = Some(retry);
        self
    }

    /// Answer with an SSE stream even if the request did not ask for one.
    /// (A request with `stream: true` is streamed without this.)
    pub fn streamed(mut self) -> Self {
        self.stream.force = true;
        self
    }

    /// For an error reply to a streaming request: answer 200, stream some
    /// content, then send the error as an event (OpenAI/Gemini `data:
    /// {"error":…}`, Anthropic `event: error`) and close.
    pub fn in_stream(mut self) -> Self {
        self.in_stream = true;
        self
    }

    /// Use `\r\n` line endings in the stream.
    pub fn crlf(mut self) -> Self {
        self.stream.crlf = true;
        self
    }

    /// SSE comment keep-alives (`: OPENROUTER PROCESSING`, `: ping`) before
    /// and between events.
    pub fn keep_alive(mut self) -> Self {
        self.stream.keep_alive = true;
        self
    }

    /// Re-cut the stream into writes of `bytes` bytes: small sizes split
    /// UTF-8 characters and JSON objects across writes, large ones put
    /// several events in one write.
    pub fn write_size(mut self, bytes: usize) -> Self {
        self.stream.write_size = Some(bytes.max(1));
        self
    }

    /// Pause between writes (a slow drip of tokens).
    pub fn chunk_delay(mut self, d: Duration) -> Self {
        self.stream.chunk_delay = d;
        self
    }

    /// Send `events` events, then close the stream cleanly without the
    /// provider's terminator.
    pub fn cut_after(mut self, events: usize) -> Self {
        self.stream.cut_after = Some(events);
        self.stream.force = true;
        self
    }

    /// Send `events` events, then reset the connection mid-body.
    pub fn abort_after(mut self, events: usize) -> Self {
        self.stream.abort_after = Some(events);
        self.stream.force = true;
        self
    }

    /// Send `events` events, then go silent (for an hour, or
    /// [`Reply::stall_for`]).
    pub fn stall_after(mut self, events: usize) -> Self {
        self.stream.stall_after = Some(events);
        self.stream.force = true;
        self
    }

    /// Send `events` events, then wait for `gate` to open before the rest.
    pub fn hold_after(mut self, events: usize, gate: Gate) -> Self {
        self.stream.hold_after = Some((events, gate));
        self.stream.force = true;
        self
    }

    /// How long a stall lasts before the stream closes (unterminated).
    pub fn stall_for(mut self, d: Duration) -> Self {
        self.stream.stall_for = d;
        self
    }
}
