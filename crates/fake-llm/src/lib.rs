//! A loopback fake of the LLM chat APIs tollgate talks to, for tests.
//!
//! One server speaks three API flavours, chosen by the request path as the
//! real services do:
//!
//! | path | flavour |
//! |---|---|
//! | `POST …/chat/completions` (e.g. `/v1/chat/completions`) | OpenAI Chat Completions (also OpenRouter, Mistral, compatible servers) |
//! | `POST …/completions` (e.g. `/v1/completions`) | OpenAI legacy Completions, for base models (also OpenRouter, Ollama, llama.cpp, vLLM) |
//! | `POST …/v1/messages` | Anthropic Messages |
//! | `POST …/api/chat` | Ollama's native chat (NDJSON stream unless `"stream": false`) |
//! | `POST …/models/{model}:generateContent`, `…:streamGenerateContent?alt=sse` | Gemini |
//! | `POST …/files`, `GET …/files/{id}/content`, `POST …/batches`, `GET …/batches/{id}`, `POST …/batches/{id}/cancel` | OpenAI Files and Batch API (see `batch.rs`) |
//! | `POST …/v1/messages/batches`, `GET …/v1/messages/batches/{id}[/results]`, `POST …/cancel` | Anthropic Message Batches |
//! | `GET /health`, `GET /v1/health` | llama.cpp's health route ([`FakeServer::set_health`]; not in [`FakeServer::requests`]) |
//!
//! Every answer uses the real response shapes, headers (request ids,
//! rate-limit headers) and SSE event sequences of provider-apis.md, so a
//! client that passes against the fake is exercising its real parsing code.
//! What to answer is scripted per request:
//!
//! ```no_run
//! # async fn demo() {
//! use fake_llm::{FakeServer, Reply};
//! let fake = FakeServer::start().await;
//! fake.push(Reply::rate_limited().retry_after_ms(20.0)); // first request
//! fake.push(Reply::text("hello").usage(12, 3));          // second request
//! fake.set_default(Reply::text("ok"));                   // every later one
//! // point a client at fake.base_url() …
//! assert_eq!(fake.request_count(), 0);
//! # }
//! ```
//!
//! Order of precedence: the FIFO script ([`FakeServer::push`]), then the
//! handler ([`FakeServer::set_handler`]), then the default reply.
//! Streaming follows the request (`"stream": true` or Gemini's
//! `:streamGenerateContent`), so one `Reply` serves both modes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

mod batch;
mod hostile;
mod hostile_server;
mod render;
mod reply;

pub use batch::BatchScript;
pub use hostile::Hostile;
pub use hostile_server::{HostileServer, Misbehaviour, Seen};
pub use reply::{ErrorCase, FakeUsage, Gate, LogprobShape, Reply};

use render::{Ctx, Frame};
use reply::{Outcome, StreamShape};

/// Which API a request spoke, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    /// The legacy text Completions endpoint (`prompt` in, `choices[].text`
    /// out) that OpenAI-compatible servers keep for base models.
    OpenAiCompletions,
    Anthropic,
    Gemini,
    /// OpenAI's Files and Batches (`…/files…`, `…/batches…`).
    OpenAiBatch,
    /// Anthropic's Message Batches (`…/v1/messages/batches…`).
    AnthropicBatch,
    /// Ollama's native chat (`…/api/chat`): NDJSON streams, `{"error": "…"}`.
    Ollama,
    /// A path the fake does not serve; answered 404.
    Unknown,
}

impl Api {
    fn of_path(path: &str) -> Api {
        if let Some(api) = batch::is_batch_path(path) {
            api
        } else if path.ends_with("/api/chat") {
            Api::Ollama
        } else if path.ends_with("/chat/completions") {
            Api::OpenAi
        } else if path.ends_with("/completions") {
            Api::OpenAiCompletions
        } else if path.ends_with("/v1/messages") {
            Api::Anthropic
        } else if path.contains("/models/")
            && (path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent"))
        {
            Api::Gemini
        } else {
            Api::Unknown
        }
    }
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names are lower case.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Value::Null` if it was not JSON.
    pub body: Value,
    pub raw_body: String,
    pub api: Api,
}

impl Recorded {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Did the request ask for a stream?
    pub fn wants_stream(&self) -> bool {
        match self.api {
            Api::Gemini => self.path.ends_with(":streamGenerateContent"),
            // Ollama streams unless told not to.
            Api::Ollama => self.body.get("stream").and_then(Value::as_bool) != Some(false),
            _ => self.body.get("stream").and_then(Value::as_bool) == Some(true),
        }
    }

    /// The requested model (body `model`, or Gemini's path segment).
    pub fn model(&self) -> String {
        match self.api {
            Api::Gemini => self
                .path
                .rsplit_once("/models/")
                .and_then(|(_, rest)| rest.split_once(':'))
                .map(|(m, _)| m.to_string())
                .unwrap_or_default(),
            _ => self
                .body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// The API key the request presented, in its flavour's header.
    pub fn presented_key(&self) -> Option<String> {
        match self.api {
            Api::Anthropic | Api::AnthropicBatch => self.header("x-api-key").map(str::to_string),
            Api::Gemini => self.header("x-goog-api-key").map(str::to_string),
            Api::OpenAi
            | Api::OpenAiCompletions
            | Api::OpenAiBatch
            | Api::Ollama
            | Api::Unknown => self
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string),
        }
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    handler: Mutex<Option<Handler>>,
    requests: Mutex<Vec<Recorded>>,
    required_key: Mutex<Option<String>>,
    seq: AtomicU64,
    /// Requests being handled now (until the reply's delay has passed), and
    /// the most there ever were: lets tests check concurrency limits
    /// without timing anything.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Files and batches of the batch APIs.
    batches: Mutex<batch::Store>,
    /// The server's own address, for Anthropic's `results_url`.
    base_url: Mutex<String>,
    /// What `GET /health` says (llama.cpp's route).
    health: Mutex<Health>,
    /// `GET /health` requests answered (they are not in `requests`).
    health_checks: AtomicU64,
}

/// The state llama.cpp's `GET /health` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// 200 `{"status":"ok"}`.
    Ok,
    /// 503 `{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}`,
    /// and every chat request answered the same way, as llama-server does
    /// while it loads its model.
    Loading,
}

/// Stops a [`FakeServer`] from anywhere (a handler, another task): see
/// [`FakeServer::shutdown`].
#[derive(Clone)]
pub struct Shutdown(Arc<tokio::sync::Notify>);

impl Shutdown {
    pub fn shutdown(&self) {
        // `notify_one` keeps the signal if the server is not waiting yet.
        self.0.notify_one();
    }
}

/// Counts a request as in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    stop: Shutdown,
}

impl FakeServer {
    /// Start on 127.0.0.1 with a random port, inside the current Tokio runtime.
    pub async fn start() -> FakeServer {
        FakeServer::start_on(0).await
    }

    /// Start on 127.0.0.1 at `port` (0: any free port): a benchmark's
    /// stand-in server must be where its committed policy says.
    pub async fn start_on(port: u16) -> FakeServer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::text("ok")),
            handler: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            required_key: Mutex::new(None),
            seq: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            batches: Mutex::new(batch::Store::default()),
            base_url: Mutex::new(format!("http://{addr}")),
            health: Mutex::new(Health::Ok),
            health_checks: AtomicU64::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let stop = Shutdown(Arc::new(tokio::sync::Notify::new()));
        let signal = stop.0.clone();
        let task = tokio::spawn(async move {
            // Only fails if the listener breaks; the tests then fail on
            // their requests, which says more than a panic here would.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.notified().await })
                .await;
        });
        FakeServer {
            addr,
            shared,
            task,
            stop,
        }
    }

    /// Stops the server the way a stopped llama-server goes: the port
    /// refuses connections from now on, idle connections are closed, and
    /// the requests it already received are still answered.
    pub fn shutdown(&self) {
        self.stop.shutdown();
    }

    /// A handle that stops this server (to do it from a handler, after the
    /// n-th request).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// What `GET /health` reports from now on.
    pub fn set_health(&self, health: Health) {
        *self.shared.health.lock().unwrap() = health;
    }

    /// How many `GET /health` requests were answered.
    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash. Clients append
    /// their own path prefix (`/v1` for OpenAI-style base URLs, `/v1beta`
    /// for Gemini's, nothing for Anthropic's).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue a reply for the next request that is not yet answered.
    pub fn push(&self, reply: Reply) {
        self.shared.script.lock().unwrap().push_back(reply);
    }

    /// The reply when the script is empty and no handler is set.
    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = reply;
    }

    /// Compute replies from the request (when the script is empty).
    pub fn set_handler<F>(&self, f: F)
    where
        F: Fn(&Recorded) -> Reply + Send + Sync + 'static,
    {
        *self.shared.handler.lock().unwrap() = Some(Arc::new(f));
    }

    /// Answer every request that does not present this key with the
    /// flavour's real auth error, without consuming the script.
    pub fn require_api_key(&self, key: impl Into<String>) {
        *self.shared.required_key.lock().unwrap() = Some(key.into());
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// The most requests that were ever being handled at once (a request
    /// counts from its arrival until its reply's `delay` has passed).
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// How batches behave from now on (polls before they end, items that
    /// fail or expire); batch items are otherwise answered like chat
    /// requests, through [`FakeServer::push`], the handler or the default.
    pub fn set_batch_script(&self, script: BatchScript) {
        self.shared.batches.lock().unwrap().set_script(script);
    }

    /// While `Some(status)`, every download of batch results answers that
    /// status; `None` serves them again.
    pub fn set_batch_download_status(&self, status: Option<u16>) {
        self.shared
            .batches
            .lock()
            .unwrap()
            .set_download_status(status);
    }

    /// Every batch still in progress ends at its next poll (for a test
    /// that interrupts a run mid-batch and resumes it).
    pub fn complete_batches(&self) {
        self.shared.batches.lock().unwrap().complete_all();
    }

    /// Batches created so far (OpenAI `POST /v1/batches` and Anthropic
    /// `POST /v1/messages/batches` that were accepted or not).
    pub fn batches_created(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.method == "POST"
                    && (r.path.ends_with("/batches") || r.path.ends_with("/messages/batches"))
            })
            .count()
    }

    /// The most recent request. Panics if there was none.
    pub fn last_request(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the fake has received a request")
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if req.method() == axum::http::Method::GET
        && matches!(req.uri().path(), "/health" | "/v1/health")
    {
        shared.health_checks.fetch_add(1, Ordering::SeqCst);
        return match *shared.health.lock().unwrap() {
            Health::Ok => json_response(200, &serde_json::json!({"status": "ok"}), &[]),
            Health::Loading => json_response(503, &loading_body(), &[]),
        };
    }
    let _in_flight = InFlight::enter(&shared);
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let raw_body = String::from_utf8_lossy(&bytes).into_owned();
    let path = parts.uri.path().to_string();
    let recorded = Recorded {
        method: parts.method.to_string(),
        api: Api::of_path(&path),
        path,
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        raw_body,
    };
    shared.requests.lock().unwrap().push(recorded.clone());
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let ctx = Ctx {
        api: recorded.api,
        model: recorded.model(),
        seq,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        include_usage: recorded.body.pointer("/stream_options/include_usage")
            == Some(&Value::Bool(true)),
        presented_key: recorded.presented_key(),
        cache_ttl_1h: recorded.api == Api::Anthropic && asks_for_1h_cache(&recorded.body),
    };

    if matches!(recorded.api, Api::OpenAiBatch | Api::AnthropicBatch) {
        let required = shared.required_key.lock().unwrap().clone();
        if required.is_some() && required != ctx.presented_key {
            let flavour = Ctx {
                api: recorded.api,
                ..ctx
            };
            let (status, body) = render::error(&ErrorCase::Auth, &flavour);
            return json_response(status, &body, &[]);
        }
        if recorded.api == Api::AnthropicBatch && recorded.header("anthropic-version").is_none() {
            let (status, body) = render::anthropic_missing_version(&ctx);
            return json_response(status, &body, &[]);
        }
        let (status, content_type, body) = batch::handle(&shared, &recorded, ctx.created);
        let id_header = match recorded.api {
            Api::AnthropicBatch => "request-id",
            _ => "x-request-id",
        };
        return raw_response(
            status,
            content_type,
            body,
            &[(id_header.to_string(), format!("req_fake{seq:08}"))],
        );
    }
    if recorded.api == Api::Unknown || recorded.method != "POST" {
        return json_response(404, &serde_json::json!({"error": "not found"}), &[]);
    }
    if recorded.api == Api::Anthropic && recorded.header("anthropic-version").is_none() {
        let (status, body) = render::anthropic_missing_version(&ctx);
        return json_response(status, &body, &render::standard_headers(&ctx, status));
    }
    if *shared.health.lock().unwrap() == Health::Loading {
        return json_response(503, &loading_body(), &[]);
    }
    let required = shared.required_key.lock().unwrap().clone();
    let reply = if required.is_some() && required != ctx.presented_key {
        Reply::auth_error()
    } else {
        next_reply(&shared, &recorded)
    };
    if !reply.delay.is_zero() {
        wait_precisely(reply.delay).await;
    }
    respond(&reply, &recorded, &ctx)
}

/// Waits `d` to within about a tenth of a millisecond. tokio's timer
/// ticks in whole milliseconds and rounds a deadline up, so `sleep(50 ms)`
/// lasts 51–52 ms: over a 1,000-call fan-out at 16 a time that is 100 ms
/// the fake adds to the ideal ⌈1000/16⌉ × 50 ms, which no client could win
/// back and which the scale bench would charge to tollgate. The coarse part
/// is slept on the runtime's timer; the last 2 ms on a blocking thread
/// (`nanosleep`, microsecond slack), which only a delayed reply pays.
async fn wait_precisely(d: Duration) {
    const FINE: Duration = Duration::from_millis(2);
    let deadline = std::time::Instant::now() + d;
    if d > FINE {
        tokio::time::sleep(d - FINE).await;
    }
    let rest = deadline.saturating_duration_since(std::time::Instant::now());
    if !rest.is_zero() {
        // A blocking thread outlives a dropped request by at most `FINE`.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// llama-server's answer to every request while it loads its model
/// (provider-apis.md §6).
fn loading_body() -> Value {
    serde_json::json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
}

/// Does an Anthropic request put a 1-hour `cache_control` on any block of
/// its system prompt or messages?
fn asks_for_1h_cache(body: &Value) -> bool {
    let blocks = ["system", "messages"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_array))
        .flatten()
        .flat_map(|b| {
            // A message's blocks are in its `content` list.
            let inner = b.get("content").and_then(Value::as_array).cloned();
            inner.unwrap_or_else(|| vec![b.clone()])
        });
    blocks
        .into_iter()
        .any(|b| b.pointer("/cache_control/ttl").and_then(Value::as_str) == Some("1h"))
}

fn next_reply(shared: &Shared, recorded: &Recorded) -> Reply {
    if let Some(r) = shared.script.lock().unwrap().pop_front() {
        return r;
    }
    let handler = shared.handler.lock().unwrap().clone();
    match handler {
        Some(h) => h(recorded),
        None => shared.default.lock().unwrap().clone(),
    }
}

fn respond(reply: &Reply, recorded: &Recorded, ctx: &Ctx) -> Response {
    let stream = recorded.wants_stream() || reply.stream.force;
    let (status, body) = match &reply.outcome {
        Outcome::Success(s) if stream => (200, Payload::Sse(render::success_events(s, ctx))),
        Outcome::Success(s) => (200, Payload::Json(render::success_json(s, ctx).to_string())),
        Outcome::Error(case) if reply.in_stream && stream => {
            (200, Payload::Sse(render::error_in_stream(case, ctx)))
        }
        Outcome::Error(case) => {
            let (status, body) = render::error(case, ctx);
            (status, Payload::Json(body.to_string()))
        }
        Outcome::Malformed if stream => (200, Payload::Sse(render::malformed_events(ctx))),
        Outcome::Malformed => (200, Payload::Json(render::malformed_body(ctx))),
        Outcome::Raw {
            status,
            content_type,
            body,
        } => (*status, Payload::Raw(content_type.clone(), body.clone())),
    };
    let mut headers = render::standard_headers(ctx, status);
    let retry = &reply.retry;
    if let Some(ms) = retry.after_ms {
        headers.push(("retry-after-ms".into(), ms.to_string()));
    }
    if let Some(secs) = retry.after_secs {
        headers.push(("retry-after".into(), secs.to_string()));
    }
    if let Some(d) = retry.after_date_in {
        headers.push((
            "retry-after".into(),
            httpdate::fmt_http_date(SystemTime::now() + d),
        ));
    }
    if let Some(b) = retry.should_retry {
        headers.push(("x-should-retry".into(), b.to_string()));
    }
    headers.extend(reply.headers.iter().cloned());
    match body {
        Payload::Json(text) => raw_response(status, "application/json", text, &headers),
        Payload::Raw(content_type, text) => raw_response(status, &content_type, text, &headers),
        Payload::Sse(frames) => {
            let content_type = if ctx.api == Api::Ollama {
                "application/x-ndjson"
            } else {
                "text/event-stream"
            };
            sse_response(frames, &reply.stream, &headers, content_type)
        }
    }
}

enum Payload {
    Json(String),
    Raw(String, String),
    Sse(Vec<Frame>),
}

fn json_response(status: u16, body: &Value, headers: &[(String, String)]) -> Response {
    raw_response(status, "application/json", body.to_string(), headers)
}

fn raw_response(
    status: u16,
    content_type: &str,
    body: String,
    headers: &[(String, String)],
) -> Response {
    let mut response = Response::new(Body::from(body));
    finish(&mut response, status, content_type, headers);
    response
}

fn finish(response: &mut Response, status: u16, content_type: &str, headers: &[(String, String)]) {
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        map.insert(axum::http::header::CONTENT_TYPE, v);
    }
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            map.append(k, v);
        }
    }
}

/// The byte stream of an SSE answer, shaped by the reply: framing
/// (`\r\n`, keep-alive comments, write sizes, pauses) and failure (cut,
/// reset, stall).
fn sse_response(
    frames: Vec<Frame>,
    shape: &StreamShape,
    headers: &[(String, String)],
    content_type: &str,
) -> Response {
    let limit = [shape.cut_after, shape.abort_after, shape.stall_after]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(usize::MAX);
    let mut text = String::new();
    let mut writes: Vec<String> = Vec::new();
    if shape.keep_alive {
        writes.push(": OPENROUTER PROCESSING\n\n".into());
    }
    for (i, frame) in frames.into_iter().take(limit).enumerate() {
        if shape.keep_alive && i > 0 {
            writes.push(": ping\n".into());
        }
        writes.push(frame);
    }
    if shape.crlf {
        for w in &mut writes {
            *w = w.replace('\n', "\r\n");
        }
    }
    let writes: Vec<Bytes> = match shape.write_size {
        None => writes.into_iter().map(Bytes::from).collect(),
        Some(n) => {
            for w in writes {
                text.push_str(&w);
            }
            // Byte-wise on purpose: pieces may end inside a UTF-8 character.
            text.as_bytes()
                .chunks(n)
                .map(Bytes::copy_from_slice)
                .collect()
        }
    };
    enum End {
        Clean,
        Abort,
        Stall(Duration),
    }
    let end = if shape.stall_after == Some(limit) {
        End::Stall(shape.stall_for)
    } else if shape.abort_after == Some(limit) {
        End::Abort
    } else {
        End::Clean
    };
    let delay = shape.chunk_delay;
    let hold = shape.hold_after.clone();
    let state = (writes.into_iter().enumerate(), Some(end), true);
    let stream = futures::stream::unfold(state, move |(mut writes, end, first)| {
        let hold = hold.clone();
        async move {
            if let Some((n, w)) = writes.next() {
                if !first && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // Counted in events (one write each unless re-cut), keep-alive
                // comments included.
                if let Some((_, gate)) = hold.filter(|(after, _)| *after == n) {
                    gate.passed().await;
                }
                return Some((Ok::<Bytes, std::io::Error>(w), (writes, end, false)));
            }
            match end? {
                End::Clean => None,
                End::Abort => {
                    // Returning `Pending` once makes hyper flush what was
                    // written, so the client sees the head and events first.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "fake: connection reset mid-stream",
                        )),
                        (writes, None, false),
                    ))
                }
                End::Stall(d) => {
                    tokio::time::sleep(d).await;
                    None
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    finish(&mut response, 200, content_type, headers);
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}
