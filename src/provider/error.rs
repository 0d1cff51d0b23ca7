//! What went wrong with a call, in terms the executor can act on: the
//! [`ErrorKind`]s, the [`ProviderError`] every client returns, and the
//! reading of the providers' error bodies and retry hints that decides
//! them.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use super::{ProviderKind, Secret};

/// What went wrong, in terms of what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 429 (except OpenAI's `insufficient_quota`, which is [`ErrorKind::Other`]).
    RateLimited,
    /// Anthropic 529 / `overloaded_error`, any 503 (OpenAI "engine
    /// overloaded", Gemini `UNAVAILABLE`).
    Overloaded,
    /// Other 5xx.
    Server,
    /// The whole call exceeded `request_timeout`, a stream was silent for
    /// `stream_idle_timeout`, or the server answered 408.
    Timeout,
    /// The connection could not be made (refused, DNS, TLS, connect timeout).
    Connect,
    /// The input does not fit the model's context window: shrink the prompt
    /// or route to a model with a larger window; retrying is pointless.
    ContextLength,
    /// Missing, wrong or unauthorised key (401, 403, Gemini `API_KEY_INVALID`).
    Auth,
    BadRequest,
    NotFound,
    /// The stream ended before the provider's terminator, or the connection
    /// broke mid-body.
    StreamBroken,
    /// A 2xx answer whose body could not be understood.
    Malformed,
    /// A 2xx answer with no content that the provider withheld (a safety
    /// filter, recitation, a refusal: see `finish`). Not retryable; its
    /// prompt was billed.
    Blocked,
    /// The answer went past the call's [`ResponseLimits`] (body size, stream
    /// events, one SSE line): reading stopped there. The provider may well
    /// have billed the call; retrying would get the same.
    ResponseTooLarge,
    /// The server answered with a redirect (3xx). Redirects are never
    /// followed: the request carries a key.
    Redirect,
    /// Replaying recorded responses (`tollgate test --replay`), and this
    /// request was never recorded. Nothing was sent anywhere.
    NotRecorded,
    Other,
}

impl ErrorKind {
    /// Every kind, for parsing a kind's word back. Kept complete by hand:
    /// a new kind breaks the exhaustive match in [`ErrorKind::as_str`]
    /// first, which points here.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::Server,
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::ContextLength,
        ErrorKind::Auth,
        ErrorKind::BadRequest,
        ErrorKind::NotFound,
        ErrorKind::StreamBroken,
        ErrorKind::Malformed,
        ErrorKind::Blocked,
        ErrorKind::ResponseTooLarge,
        ErrorKind::Redirect,
        ErrorKind::NotRecorded,
        ErrorKind::Other,
    ];

    /// The kind's name as serialized (`rate_limited`): what the journal's
    /// `outcome` column, reports and `run.json` say.
    /// (Add a new kind to [`ErrorKind::ALL`] too.)
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::ContextLength => "context_length",
            ErrorKind::Auth => "auth",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::StreamBroken => "stream_broken",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Blocked => "blocked",
            ErrorKind::ResponseTooLarge => "response_too_large",
            ErrorKind::Redirect => "redirect",
            ErrorKind::NotRecorded => "not_recorded",
            ErrorKind::Other => "other",
        }
    }
}

/// Bodies are cut to this many bytes: enough to diagnose, small enough to log.
pub const MAX_ERROR_BODY: usize = 2048;

/// At most this much of a non-2xx body is read (enough for any real error
/// JSON to be classified); the rest is never downloaded.
pub const MAX_ERROR_BODY_READ: usize = 64 * 1024;

/// An error message quotes at most this much of what a server said.
pub(super) const MAX_ERROR_DETAIL: usize = 512;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The HTTP status, when the error came from a non-2xx answer. `None`
    /// for transport errors and for errors that arrived inside a 200 stream.
    pub status: Option<u16>,
    /// Human readable; never contains an API key.
    pub message: String,
    /// From `retry-after-ms`, then `retry-after` (seconds or HTTP date), then
    /// Gemini's `RetryInfo.retryDelay` in the body. Reported as given, not
    /// capped: the retry policy decides what is too long to wait.
    pub retry_after: Option<Duration>,
    /// The `x-should-retry` header, which overrides the status-based decision.
    pub should_retry: Option<bool>,
    /// The raw error body (or offending payload), truncated to 2 KB, key-free.
    pub body: Option<String>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            should_retry: None,
            body: None,
        }
    }

    pub(crate) fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(truncate(body.into(), MAX_ERROR_BODY));
        self
    }

    /// Retry 408/409/429/5xx/529, connection errors, timeouts and broken
    /// streams; `x-should-retry` overrides. This is the official OpenAI and
    /// Anthropic SDKs' rule, except that OpenAI's `insufficient_quota` 429 is
    /// not retried (it is a billing state, not a rate).
    pub fn is_retryable(&self) -> bool {
        if let Some(decision) = self.should_retry {
            return decision;
        }
        match self.kind {
            ErrorKind::RateLimited
            | ErrorKind::Overloaded
            | ErrorKind::Server
            | ErrorKind::Timeout
            | ErrorKind::Connect
            | ErrorKind::StreamBroken => true,
            _ => matches!(self.status, Some(408 | 409)),
        }
    }

    /// Replace every occurrence of the key in the message and body.
    pub(super) fn redacted(mut self, secret: &Secret) -> Self {
        self.message = secret.redact(&self.message);
        self.body = self.body.map(|b| secret.redact(&b));
        self
    }

    /// A limit of [`ResponseLimits`] was reached.
    pub(crate) fn too_large(kind: ProviderKind, what: impl fmt::Display) -> Self {
        ProviderError::new(
            ErrorKind::ResponseTooLarge,
            format!(
                "{}: the answer is too large: {what}; reading stopped there (raise `limits.max_response_bytes` / `limits.max_stream_events` in the policy if this answer is legitimate)",
                kind.name()
            ),
        )
    }
}

pub(super) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// How a dialect reads an error body: (error kind hint, message).
pub(crate) struct ErrorInfo {
    /// The provider's own error type/status/code, e.g. `overloaded_error`,
    /// `RESOURCE_EXHAUSTED`, `context_length_exceeded`.
    pub(crate) codes: Vec<String>,
    /// A numeric code inside the body (OpenRouter, Gemini, llama.cpp).
    pub(crate) status: Option<u16>,
    pub(crate) message: Option<String>,
    /// OpenRouter's moderation refusals carry `metadata.reasons` /
    /// `flagged_input`: a 403 that is about content, not credentials.
    pub(crate) moderation: bool,
}

impl ErrorInfo {
    /// Reads the three error body shapes in provider-apis.md: OpenAI
    /// `{error:{message,type,code,param}}`, Anthropic `{type:error,
    /// error:{type,message}}`, Google `{error:{code,message,status,details}}`
    /// — plus OpenRouter's numeric `code` and llama.cpp's extra fields.
    pub(crate) fn from_json(v: &Value) -> Option<ErrorInfo> {
        let e = v.get("error")?;
        let mut info = ErrorInfo {
            codes: Vec::new(),
            status: None,
            message: None,
            moderation: false,
        };
        match e {
            Value::String(s) => info.message = Some(s.clone()),
            Value::Object(_) => {
                for field in ["type", "code", "status"] {
                    match e.get(field) {
                        Some(Value::String(s)) => info.codes.push(s.clone()),
                        Some(Value::Number(n)) => {
                            info.status = n.as_u64().and_then(|n| u16::try_from(n).ok())
                        }
                        _ => {}
                    }
                }
                if let Some(details) = e.get("details").and_then(Value::as_array) {
                    for d in details {
                        if let Some(reason) = d.get("reason").and_then(Value::as_str) {
                            info.codes.push(reason.to_string());
                        }
                    }
                }
                info.message = e.get("message").and_then(Value::as_str).map(str::to_string);
                info.moderation = e.pointer("/metadata/reasons").is_some()
                    || e.pointer("/metadata/flagged_input").is_some();
            }
            _ => return None,
        }
        Some(info)
    }

    fn has(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }

    /// Every provider's real context-overflow wording (provider-apis.md §1,
    /// §3, §4, §6, §7 and §9), plus Mistral's, which says "context length".
    fn is_context_length(&self) -> bool {
        if self.has("context_length_exceeded") || self.has("exceed_context_size_error") {
            return true;
        }
        let Some(msg) = &self.message else {
            return false;
        };
        let msg = msg.to_ascii_lowercase();
        [
            "maximum context length",
            "context length",
            "context window",
            "context limit",
            "context size",
            "prompt is too long",
            "exceeds the maximum number of tokens",
        ]
        .iter()
        .any(|needle| msg.contains(needle))
    }

    /// The kind, from the HTTP status (if any) and the body.
    pub(crate) fn classify(&self, http_status: Option<u16>) -> ErrorKind {
        if self.is_context_length() {
            return ErrorKind::ContextLength;
        }
        if self.moderation {
            return ErrorKind::BadRequest;
        }
        if self.has("API_KEY_INVALID")
            || self.has("authentication_error")
            || self.has("invalid_api_key")
            || self.has("permission_error")
            || self.has("PERMISSION_DENIED")
            || self.has("UNAUTHENTICATED")
        {
            return ErrorKind::Auth;
        }
        if self.has("insufficient_quota") || self.has("billing_error") {
            return ErrorKind::Other;
        }
        if self.has("overloaded_error") || self.has("UNAVAILABLE") {
            return ErrorKind::Overloaded;
        }
        if self.has("rate_limit_error")
            || self.has("rate_limit_exceeded")
            || self.has("RESOURCE_EXHAUSTED")
        {
            return ErrorKind::RateLimited;
        }
        if let Some(status) = http_status.or(self.status) {
            return kind_for_status(status);
        }
        // An error event inside a 200 stream with no recognisable code.
        match () {
            _ if self.has("api_error") || self.has("server_error") || self.has("INTERNAL") => {
                ErrorKind::Server
            }
            _ if self.has("timeout_error") || self.has("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
            _ if self.has("not_found_error") || self.has("NOT_FOUND") => ErrorKind::NotFound,
            _ if self.has("invalid_request_error") || self.has("INVALID_ARGUMENT") => {
                ErrorKind::BadRequest
            }
            // Unknown mid-stream failures are most often upstream hiccups.
            _ => ErrorKind::Server,
        }
    }
}

/// The kind implied by a status alone.
pub(super) fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        503 | 529 => ErrorKind::Overloaded,
        500..=599 => ErrorKind::Server,
        400 | 413 | 422 => ErrorKind::BadRequest,
        _ => ErrorKind::Other,
    }
}

/// A Go-style or protobuf duration string such as `37s`, `1.5s`, `644ms`.
pub(super) fn parse_short_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    secs_to_duration(num.parse::<f64>().ok()? * scale)
}

fn secs_to_duration(secs: f64) -> Option<Duration> {
    // `try_`: a hostile or broken header such as `retry-after: 1e20` must not
    // panic; an absurd wait is simply no usable hint.
    if secs.is_finite() && secs >= 0.0 {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

/// `retry-after-ms` (float ms) first, then `retry-after` as seconds (float
/// allowed) or an HTTP date, as the official SDKs read them.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(d) = secs_to_duration(ms / 1000.0) {
            return Some(d);
        }
    }
    let value = get("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return secs_to_duration(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now".
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

pub(super) fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let v = headers.get("x-should-retry")?.to_str().ok()?.trim();
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Gemini puts its retry hint in the body: `details[].retryDelay` of a
/// `google.rpc.RetryInfo`.
pub(super) fn retry_delay_in_body(v: &Value) -> Option<Duration> {
    v.pointer("/error/details")?
        .as_array()?
        .iter()
        .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .find_map(parse_short_duration)
}
