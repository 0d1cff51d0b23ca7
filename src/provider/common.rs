//! The machinery the three dialects share: the key and its redaction, one
//! call's request and answer, bounded reads of bodies and streams, error
//! classification of a failed answer, and the JSON accessors the parsers use.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::*;

// ---------------------------------------------------------------------------
// Shared machinery for the three dialects.

/// The key, kept secret, with what redaction needs.
pub(crate) struct Secret(pub(super) Option<SecretString>);

impl Secret {
    pub(super) fn redact(&self, text: &str) -> String {
        match &self.0 {
            Some(key) if !key.expose_secret().is_empty() => {
                text.replace(key.expose_secret(), "[redacted]")
            }
            _ => text.to_string(),
        }
    }

    /// Redact in place, allocating only when the key is there.
    pub(super) fn scrub(&self, text: &mut String) {
        if let Some(key) = &self.0 {
            let key = key.expose_secret();
            if !key.is_empty() && text.contains(key) {
                *text = text.replace(key, "[redacted]");
            }
        }
    }

    /// Bytes a streamed text must hold back so that a key split across
    /// two pieces is still whole when it is scrubbed.
    fn hold_back(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |k| k.expose_secret().len().saturating_sub(1))
    }

    /// Every text of an answer that came from the server.
    pub(super) fn scrub_response(&self, mut r: ChatResponse) -> ChatResponse {
        self.scrub(&mut r.text);
        self.scrub(&mut r.model);
        if let Some(f) = &mut r.finish_reason {
            self.scrub(f);
        }
        if let Some(id) = &mut r.request_id {
            self.scrub(id);
        }
        r
    }
}

/// A streamed answer's text on its way to the request's [`TextSink`], as
/// it arrives: scrubbed of the key before it leaves, holding back the last
/// bytes that could be the start of a key the next piece completes. What
/// it hands on, concatenated, is the scrubbed text the answer returns.
pub(crate) struct TextOut<'a> {
    sink: Option<&'a TextSink>,
    secret: &'a Secret,
    pending: String,
}

impl TextOut<'_> {
    /// A piece of the answer's text.
    pub(crate) fn push(&mut self, piece: &str) {
        let Some(sink) = self.sink else { return };
        self.pending.push_str(piece);
        self.secret.scrub(&mut self.pending);
        let hold = self.secret.hold_back();
        let Some(mut cut) = self.pending.len().checked_sub(hold) else {
            return;
        };
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut > 0 {
            let out: String = self.pending.drain(..cut).collect();
            (sink.0)(&out);
        }
    }

    /// The stream ended whole: what was held back goes out too. (A stream
    /// that broke keeps it: the call failed.)
    pub(crate) fn finish(mut self) {
        if let Some(sink) = self.sink {
            self.secret.scrub(&mut self.pending);
            if !self.pending.is_empty() {
                (sink.0)(&self.pending);
            }
        }
    }
}

/// What every dialect's client holds.
pub(crate) struct Common {
    pub(super) kind: ProviderKind,
    pub(super) base_url: String,
    pub(super) secret: Secret,
    pub(super) request_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) http: reqwest::Client,
    pub(super) limits: LimitOverrides,
    pub(super) model_limits: std::collections::HashMap<String, LimitOverrides>,
    pub(super) max_batch_download: u64,
    pub(super) provider_routing: Option<serde_json::Value>,
    pub(super) keep_alive: Option<serde_json::Value>,
    pub(super) model_context: std::collections::HashMap<String, u64>,
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("has_key", &self.secret.0.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) fn header_string(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
        .map(str::to_string)
}

/// A prepared HTTP call: URL, auth header, JSON body.
pub(crate) struct Call {
    pub(crate) url: String,
    pub(crate) body: Value,
    /// Where the key goes (`authorization` as a bearer token, `x-api-key`,
    /// `x-goog-api-key`), or `None` for no auth header.
    pub(crate) auth: Option<AuthHeader>,
    pub(crate) extra_headers: Vec<(&'static str, &'static str)>,
    pub(crate) request_id_headers: &'static [&'static str],
    /// How much of the answer may be read ([`Common::limits`]).
    pub(crate) limits: ResponseLimits,
}

#[derive(Clone, Copy)]
pub(crate) enum AuthHeader {
    Bearer,
    Named(&'static str),
}

/// An HTTP 2xx answer, ready to be read as JSON or as an SSE stream.
pub(crate) struct Answer {
    pub(crate) response: reqwest::Response,
    pub(crate) meta: Meta,
    pub(crate) limits: ResponseLimits,
}

/// Where in a call a transport error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Sending,
    Reading,
}

/// What is known about a call besides its body.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) request_id: Option<String>,
    pub(crate) started: Instant,
}

impl Common {
    pub(super) fn new(kind: ProviderKind, config: ClientConfig, http: Http) -> Self {
        Common {
            kind,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            secret: Secret(config.api_key),
            request_timeout: config.request_timeout,
            idle_timeout: config.stream_idle_timeout,
            http: http.for_base(&config.base_url),
            limits: config.response_limits,
            model_limits: config.model_response_limits,
            max_batch_download: config.max_batch_download_bytes,
            provider_routing: config.provider_routing,
            keep_alive: config.keep_alive,
            model_context: config.model_context,
        }
    }

    /// How much of the answer to `req` may be read: the defaults for its
    /// `max_output_tokens`, with the model's then the provider's overrides.
    pub(crate) fn limits(&self, req: &ChatRequest) -> ResponseLimits {
        let model = self
            .model_limits
            .get(&req.model)
            .copied()
            .unwrap_or_default();
        ResponseLimits::for_output(req.max_output_tokens).with(model.or(self.limits))
    }

    /// The limits of a batch results download: the whole file may be as
    /// large as the configured maximum, one line as large as one answer of
    /// the most generous default.
    pub(crate) fn batch_download_limits(&self) -> ResponseLimits {
        let per_item = ResponseLimits::for_output(u32::MAX / 4096).with(self.limits);
        ResponseLimits {
            max_bytes: self.max_batch_download,
            max_events: u64::MAX,
            max_line_bytes: per_item.max_bytes.min(self.max_batch_download),
        }
    }

    pub(crate) fn kind(&self) -> ProviderKind {
        self.kind
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Run `work` (a dialect's send-and-read) under the whole call's
    /// timeout, and scrub the key from whatever error comes out: the last
    /// line of defence, whatever path the error took.
    pub(crate) async fn run<'a, F>(&'a self, work: F) -> Result<ChatResponse, ProviderError>
    where
        F: Future<Output = Result<ChatResponse, ProviderError>> + Send + 'a,
    {
        let result = match tokio::time::timeout(self.request_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::new(
                ErrorKind::Timeout,
                format!(
                    "{}: no complete answer within the request timeout of {:?}",
                    self.kind.name(),
                    self.request_timeout
                ),
            )),
        };
        // The provider boundary: nothing a server sent leaves with the key.
        result
            .map(|r| self.secret.scrub_response(r))
            .map_err(|e| e.redacted(&self.secret))
    }

    /// Where a streamed answer's text goes as it arrives (nowhere without
    /// a sink).
    pub(crate) fn text_out<'a>(&'a self, sink: Option<&'a TextSink>) -> TextOut<'a> {
        TextOut {
            sink,
            secret: &self.secret,
            pending: String::new(),
        }
    }

    /// Send the request; a non-2xx answer becomes a classified error.
    pub(crate) async fn send(&self, call: Call) -> Result<Answer, ProviderError> {
        let builder = self.http.post(&call.url).json(&call.body);
        self.execute(
            builder,
            call.auth,
            &call.extra_headers,
            call.request_id_headers,
            call.limits,
        )
        .await
    }

    /// Send any prepared request (a GET, a multipart upload) with the key in
    /// its header; a non-2xx answer becomes a classified error.
    pub(crate) async fn execute(
        &self,
        mut builder: reqwest::RequestBuilder,
        auth: Option<AuthHeader>,
        extra_headers: &[(&'static str, &'static str)],
        request_id_headers: &'static [&'static str],
        limits: ResponseLimits,
    ) -> Result<Answer, ProviderError> {
        if let (Some(auth), Some(key)) = (auth, &self.secret.0) {
            let (name, value) = match auth {
                AuthHeader::Bearer => (
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())),
                ),
                AuthHeader::Named(name) => (name, HeaderValue::from_str(key.expose_secret())),
            };
            let mut value = value.map_err(|_| {
                ProviderError::new(
                    ErrorKind::Auth,
                    "the API key contains characters not allowed in an HTTP header",
                )
            })?;
            // Keeps the value out of reqwest's and hyper's Debug output.
            value.set_sensitive(true);
            builder = builder.header(name, value);
        }
        for (name, value) in extra_headers {
            builder = builder.header(*name, *value);
        }
        let started = Instant::now();
        let response = builder
            .send()
            .await
            .map_err(|e| self.transport_error(e, Phase::Sending))?;
        let headers = response.headers().clone();
        let request_id = header_string(&headers, request_id_headers);
        let status = response.status();
        if status.is_success() {
            return Ok(Answer {
                response,
                meta: Meta {
                    request_id,
                    started,
                },
                limits,
            });
        }
        if status.is_redirection() {
            // Never followed (see [`Http`]): the request carried a key, and
            // an API host has no reason to send it anywhere else.
            let mut err = ProviderError::new(
                ErrorKind::Redirect,
                format!(
                    "{} HTTP {}: the server answered with a redirect, which is never followed (requests carry the API key); set `base_url` to the address that answers",
                    self.kind.name(),
                    status.as_u16()
                ),
            );
            err.status = Some(status.as_u16());
            return Err(err);
        }
        // Only the head of an error body is read: enough to classify it,
        // bounded whatever the server sends.
        let mut response = response;
        let text = match read_capped(&mut response, MAX_ERROR_BODY_READ as u64).await {
            Ok((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<error body unreadable: {}>", describe(e)),
        };
        let text = self.secret.redact(&text);
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let info = json.as_ref().and_then(ErrorInfo::from_json);
        let code = status.as_u16();
        let kind = match &info {
            Some(info) => info.classify(Some(code)),
            None => kind_for_status(code),
        };
        let detail = info
            .as_ref()
            .and_then(|i| i.message.clone())
            .map(|m| truncate(m, MAX_ERROR_DETAIL))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        let mut message = format!("{} HTTP {code}: {detail}", self.kind.name());
        if let Some(id) = &request_id {
            message.push_str(&format!(" (request id {id})"));
        }
        let mut err = ProviderError::new(kind, message).with_body(text);
        err.status = Some(code);
        err.retry_after = retry_after(&headers, SystemTime::now())
            .or_else(|| json.as_ref().and_then(retry_delay_in_body));
        err.should_retry = should_retry(&headers);
        Err(err)
    }

    /// Read a whole 2xx body, at most `answer.limits.max_bytes` of it.
    pub(crate) async fn body(&self, answer: Answer) -> Result<(Vec<u8>, Meta), ProviderError> {
        let Answer {
            mut response,
            meta,
            limits,
        } = answer;
        let max = limits.max_bytes;
        if response.content_length().is_some_and(|n| n > max) {
            return Err(ProviderError::too_large(
                self.kind,
                format!("the body announces more than {max} bytes"),
            ));
        }
        match read_capped(&mut response, max).await {
            Ok((bytes, false)) => Ok((bytes, meta)),
            Ok((_, true)) => Err(ProviderError::too_large(
                self.kind,
                format!("the body is longer than {max} bytes"),
            )),
            Err(e) => Err(self.transport_error(e, Phase::Reading)),
        }
    }

    /// Read a whole 2xx body as JSON.
    pub(crate) async fn json(&self, answer: Answer) -> Result<(Value, Meta), ProviderError> {
        let (bytes, meta) = self.body(answer).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::new(
                ErrorKind::Malformed,
                format!("{}: the response is not valid JSON: {e}", self.kind.name()),
            )
            .with_body(self.secret.redact(&String::from_utf8_lossy(
                &bytes[..bytes.len().min(MAX_ERROR_BODY_READ)],
            )))
        })?;
        Ok((value, meta))
    }

    /// A reqwest error, classified, without its URL (which could in
    /// principle carry credentials a user put in a base URL).
    pub(crate) fn transport_error(&self, e: reqwest::Error, phase: Phase) -> ProviderError {
        if let Some(err) = self.nothing_listening(&e) {
            return err;
        }
        let kind = if e.is_builder() {
            // An unusable base URL: configuration, not a transient fault.
            ErrorKind::Other
        } else if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_connect() || phase == Phase::Sending {
            // Before any answer, a dropped connection is a connection
            // failure (the official SDKs retry these), not a broken body.
            ErrorKind::Connect
        } else {
            ErrorKind::StreamBroken
        };
        let doing = match phase {
            Phase::Sending => "sending the request",
            Phase::Reading => "reading the response body",
        };
        ProviderError::new(
            kind,
            format!("{} {doing}: {}", self.kind.name(), describe(e)),
        )
    }

    /// A local server that is not running: the connection to a loopback
    /// address was refused. Not a transient fault, so not retried
    /// (`should_retry: false`), and the error says where and what to do.
    /// Only loopback URLs are named: they carry no credentials worth the
    /// name, and only their scheme, host and port are shown.
    fn nothing_listening(&self, e: &reqwest::Error) -> Option<ProviderError> {
        if !e.is_connect() || !crate::policy::is_loopback(&self.base_url) || !refused(e) {
            return None;
        }
        let url = url::Url::parse(&self.base_url).ok()?;
        let at = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str()?,
            url.port_or_known_default()?
        );
        if self.kind == ProviderKind::Ollama {
            let mut err = ProviderError::new(
                ErrorKind::Connect,
                format!(
                    "ollama: nothing is listening at {at} (connection refused): start Ollama with \
                     `ollama serve` (and `ollama pull MODEL` once), set `launch:` on the provider \
                     to have tollgate start it, or fix the provider's `base_url`"
                ),
            );
            err.should_retry = Some(false);
            return Some(err);
        }
        let mut err = ProviderError::new(
            ErrorKind::Connect,
            format!(
                "{}: nothing is listening at {at} (connection refused): start the local server — \
                 for Ollama `ollama serve` (and `ollama pull MODEL` once), for llama.cpp \
                 `llama-server` (tollgate's scripts/setup-local.sh installs it with a model; \
                 `launch:` in the policy starts it for each run) — or fix the provider's `base_url`",
                self.kind.name()
            ),
        );
        err.should_retry = Some(false);
        Some(err)
    }

    /// The SSE events of a 2xx answer.
    pub(crate) fn events(&self, answer: Answer) -> (sse::EventStream, Meta) {
        use futures::TryStreamExt;
        let limits = sse::Limits {
            max_bytes: answer.limits.max_bytes,
            max_events: answer.limits.max_events,
            max_line_bytes: answer.limits.max_line_bytes,
        };
        let bytes = answer.response.bytes_stream().map_err(describe);
        (
            sse::events_bounded(bytes, self.idle_timeout, limits),
            answer.meta,
        )
    }

    /// The NDJSON lines of a 2xx answer (Ollama), within the same limits
    /// as an event stream.
    pub(crate) fn lines(&self, answer: Answer) -> (super::ndjson::Lines, Meta) {
        use futures::TryStreamExt;
        let limits = sse::Limits {
            max_bytes: answer.limits.max_bytes,
            max_events: answer.limits.max_events,
            max_line_bytes: answer.limits.max_line_bytes,
        };
        let bytes = answer.response.bytes_stream().map_err(describe);
        (
            super::ndjson::lines(bytes, self.idle_timeout, limits),
            answer.meta,
        )
    }

    /// A failure of the event stream itself.
    pub(crate) fn stream_failure(&self, e: sse::SseError) -> ProviderError {
        let kind = match e {
            sse::SseError::Idle(_) => ErrorKind::Timeout,
            sse::SseError::Transport(_) => ErrorKind::StreamBroken,
            sse::SseError::Decode(_) => ErrorKind::Malformed,
            sse::SseError::TooLarge(what) => return ProviderError::too_large(self.kind, what),
        };
        ProviderError::new(kind, format!("{}: {e}", self.kind.name()))
    }

    /// The stream closed without the provider's terminator: the answer is
    /// incomplete (and usage is usually missing), so it must not pass as one.
    pub(crate) fn stream_cut(&self, terminator: &str) -> ProviderError {
        ProviderError::new(
            ErrorKind::StreamBroken,
            format!(
                "{}: the stream ended before its terminator ({terminator})",
                self.kind.name()
            ),
        )
    }

    /// For the dialects with no text completions route: refuse
    /// [`Endpoint::Completions`] before sending anything, since a chat call in
    /// its place would hand a base model a chat template it was not trained
    /// on. Not retryable: the same request gets the same answer.
    pub(crate) fn chat_only(&self, req: &ChatRequest) -> Result<(), ProviderError> {
        match req.endpoint {
            Endpoint::Chat => Ok(()),
            Endpoint::Completions => Err(ProviderError::new(
                ErrorKind::BadRequest,
                format!(
                    "{}: the completions endpoint is only available on OpenAI-compatible servers",
                    self.kind.name()
                ),
            )),
        }
    }

    /// What a server said went wrong, as quoted in an error message: the
    /// key scrubbed *before* it is cut to [`MAX_ERROR_DETAIL`] bytes (a key
    /// cut in half could not be recognised afterwards).
    pub(crate) fn error_detail(&self, message: Option<String>) -> String {
        message.map_or_else(
            || "no message".to_owned(),
            |m| truncate(self.secret.redact(&m), MAX_ERROR_DETAIL),
        )
    }

    /// A payload that is not the JSON it should be.
    pub(crate) fn malformed(&self, what: &str, payload: &str) -> ProviderError {
        self.failure(ErrorKind::Malformed, what, payload)
    }

    /// An error about a payload, which is kept (key-free) as the body.
    pub(crate) fn failure(&self, kind: ErrorKind, what: &str, payload: &str) -> ProviderError {
        ProviderError::new(kind, format!("{}: {what}", self.kind.name()))
            .with_body(self.secret.redact(payload))
    }

    /// Parse one SSE `data:` payload as JSON; an `error` object inside it
    /// (sent after HTTP 200 by every provider) becomes the matching error.
    pub(crate) fn event_json(&self, data: &str) -> Result<Value, ProviderError> {
        let value: Value = serde_json::from_str(data)
            .map_err(|e| self.malformed(&format!("a stream event is not valid JSON: {e}"), data))?;
        if let Some(info) = ErrorInfo::from_json(&value) {
            let kind = info.classify(None);
            let msg = self.error_detail(info.message);
            return Err(ProviderError::new(
                kind,
                format!("{}: error inside the stream: {msg}", self.kind.name()),
            )
            .with_body(self.secret.redact(data)));
        }
        Ok(value)
    }

    /// A 2xx JSON body that is really an error (some gateways do this).
    pub(crate) fn error_in_body(&self, value: &Value) -> Result<(), ProviderError> {
        match ErrorInfo::from_json(value) {
            None => Ok(()),
            Some(info) => {
                let kind = info.classify(None);
                let msg = self.error_detail(info.message);
                Err(ProviderError::new(
                    kind,
                    format!("{}: error in a 2xx answer: {msg}", self.kind.name()),
                )
                .with_body(self.secret.redact(&value.to_string())))
            }
        }
    }
}

/// Did the server answer with an event stream (whatever was asked for)?
pub(crate) fn is_event_stream(answer: &Answer) -> bool {
    answer
        .response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Read a body until its end or until more than `max` bytes came; the flag
/// says the body went past `max` (then only `max` bytes are kept and the
/// rest is never read). Memory is bounded by `max` plus one chunk.
pub(crate) async fn read_capped(
    response: &mut reqwest::Response,
    max: u64,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if out.len() + chunk.len() > max {
            let room = max - out.len();
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

/// Was the connection refused (nothing listening on the port)?
fn refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// A reqwest error and its causes, without the URL.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain
}

/// Small accessors for JSON trees, which are read leniently: `null`,
/// missing and wrongly typed fields all read as absent, as provider-apis.md
/// §9 asks ("missing optional fields", "`null` where objects are expected").
pub(crate) fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}
