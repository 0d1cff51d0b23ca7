//! The providers' batch APIs (provider-apis.md §2 and §3): many chat
//! requests submitted at once, answered within 24 hours at half price.
//!
//! - OpenAI Batch API: upload a JSONL file (`POST /files`, purpose
//!   `batch`), create a batch over it (`POST /batches`, endpoint
//!   `/v1/chat/completions`, window `24h`), poll `GET /batches/{id}`
//!   (`validating → in_progress → finalizing → completed`, or `failed`,
//!   `expired`, `cancelling → cancelled`), then download the output and
//!   error files (`GET /files/{id}/content`).
//! - Anthropic Message Batches: `POST /v1/messages/batches` with
//!   `requests[{custom_id, params}]`, poll `GET /v1/messages/batches/{id}`
//!   (`in_progress → ended`), then fetch the results JSONL from
//!   `results_url`.
//!
//! Both answer in any order; items are matched back by `custom_id`. Each
//! item's answer is parsed by the same code as a synchronous answer, so
//! usage is normalised the same way. Keys go only in headers, and every
//! error leaving this module is redacted like the chat clients' are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::anthropic::{self, AnthropicClient};
use super::openai::{self, OpenAiClient};
pub use crate::policy::BatchLimits;

use super::{
    AuthHeader, ChatRequest, ChatResponse, ClientConfig, Common, Endpoint, ErrorInfo, ErrorKind,
    Http, Meta, ProviderError, ProviderKind, ResponseLimits, Secret, str_at, u64_at,
};

/// One request of a batch; `custom_id` matches `^[a-zA-Z0-9_-]{1,64}$`.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub custom_id: String,
    pub request: ChatRequest,
}

/// Where a batch stands.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchState {
    /// Still being processed. `status` is the provider's word
    /// (`validating`, `in_progress`, `finalizing`, `cancelling`, `canceling`).
    Running {
        status: String,
        done: u64,
        total: u64,
    },
    /// Finished (`completed`, `expired`, `cancelled`, `ended`): results can
    /// be fetched; requests that did not finish are reported per item.
    Ended { status: String },
    /// The batch as a whole failed (OpenAI: the input file did not validate).
    Failed { message: String },
}

/// What became of one request.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    Answer(ChatResponse),
    /// The request failed (`errored`, or a non-200 line of the error file).
    Failed(ProviderError),
    /// The batch's window passed before the request ran.
    Expired,
    /// The batch was cancelled before the request ran.
    Canceled,
}

/// A provider's batch API.
pub trait BatchApi: Send + Sync {
    /// The most one batch may hold; a larger one is refused whole.
    fn limits(&self) -> BatchLimits;
    /// The bytes `item` takes in a submitted batch (its JSONL line or its
    /// entry of the request body, with the separator after it), as counted
    /// against [`BatchLimits::max_bytes`].
    fn encoded_len(&self, item: &BatchItem) -> u64;
    /// Submit the items; returns the batch id.
    fn submit<'a>(&'a self, items: &'a [BatchItem])
    -> BoxFuture<'a, Result<String, ProviderError>>;
    fn poll<'a>(&'a self, batch_id: &'a str) -> BoxFuture<'a, Result<BatchState, ProviderError>>;
    /// Every item's outcome, by custom id, once the batch has ended.
    fn results<'a>(
        &'a self,
        batch_id: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ItemOutcome>, ProviderError>>;
}

/// One HTTP exchange of the batch flow (upload, create, poll, download)
/// must not hang a run: this bounds each, independently of how long the
/// batch itself takes.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// The batch client of a provider kind that has a batch API (OpenAI,
/// Anthropic); `None` for the others, whose steps run synchronously.
pub fn batch_client_for(
    kind: ProviderKind,
    config: ClientConfig,
    http: Http,
) -> Option<Arc<dyn BatchApi>> {
    // The policy's limits never go past the provider's (the policy check
    // refuses that); a config built elsewhere is held to them too.
    let documented = BatchLimits::of(kind)?;
    let limits = config.batch_limits.map_or(documented, |l| BatchLimits {
        max_requests: l.max_requests.clamp(1, documented.max_requests),
        max_bytes: l.max_bytes.clamp(1, documented.max_bytes),
    });
    let common = Common::new(kind, config, http);
    match kind {
        ProviderKind::Openai => Some(Arc::new(OpenAiBatch {
            client: OpenAiClient::new(common),
            limits,
        })),
        ProviderKind::Anthropic => Some(Arc::new(AnthropicBatch {
            client: AnthropicClient::new(common),
            limits,
        })),
        _ => None,
    }
}

/// The body a batch line carries: the synchronous request, never streamed
/// (the batch APIs take whole-answer requests only).
fn unstreamed(req: &ChatRequest) -> ChatRequest {
    ChatRequest {
        stream: false,
        ..req.clone()
    }
}

/// The answers of the batch flow (uploads, polls, created batches): small
/// JSON objects, read up to this many bytes.
const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;

const METADATA_LIMITS: ResponseLimits = ResponseLimits {
    max_bytes: MAX_METADATA_BYTES,
    max_events: u64::MAX,
    max_line_bytes: MAX_METADATA_BYTES,
};

/// What the batch flow hands back, with the key scrubbed from every text
/// a server sent (see the provider module's invariants).
trait Scrub {
    fn scrub(self, secret: &Secret) -> Self;
}

impl Scrub for String {
    fn scrub(mut self, secret: &Secret) -> Self {
        secret.scrub(&mut self);
        self
    }
}

impl Scrub for BatchState {
    fn scrub(self, secret: &Secret) -> Self {
        match self {
            BatchState::Running {
                status,
                done,
                total,
            } => BatchState::Running {
                status: status.scrub(secret),
                done,
                total,
            },
            BatchState::Ended { status } => BatchState::Ended {
                status: status.scrub(secret),
            },
            BatchState::Failed { message } => BatchState::Failed {
                message: message.scrub(secret),
            },
        }
    }
}

impl Scrub for HashMap<String, ItemOutcome> {
    fn scrub(self, secret: &Secret) -> Self {
        self.into_iter()
            .map(|(id, outcome)| {
                let outcome = match outcome {
                    ItemOutcome::Answer(r) => ItemOutcome::Answer(secret.scrub_response(r)),
                    ItemOutcome::Failed(e) => ItemOutcome::Failed(e.redacted(secret)),
                    other => other,
                };
                (id.scrub(secret), outcome)
            })
            .collect()
    }
}

impl Common {
    /// Run one exchange of the batch flow under [`EXCHANGE_TIMEOUT`],
    /// scrubbing the key from whatever comes out, answer or error.
    async fn exchange<T: Scrub>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let result = match tokio::time::timeout(EXCHANGE_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::new(
                ErrorKind::Timeout,
                format!(
                    "{}: {what}: no answer within {}s",
                    self.kind.name(),
                    EXCHANGE_TIMEOUT.as_secs()
                ),
            )),
        };
        result
            .map(|v| v.scrub(&self.secret))
            .map_err(|e| e.redacted(&self.secret))
    }

    /// A whole 2xx body as text (JSONL files), within the answer's limits:
    /// the whole file within `max_bytes`, each line within
    /// `max_line_bytes`.
    async fn text(&self, answer: super::Answer) -> Result<String, ProviderError> {
        let max_line = answer.limits.max_line_bytes;
        let (bytes, _) = self.body(answer).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if text.lines().any(|l| l.len() as u64 > max_line) {
            return Err(ProviderError::too_large(
                self.kind,
                format!("a batch result line is longer than {max_line} bytes"),
            ));
        }
        Ok(text)
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url)
    }
}

/// A line that is not the JSON it should be.
fn bad_line(common: &Common, what: &str, line: &str) -> ProviderError {
    common.malformed(&format!("a batch result line {what}"), line)
}

/// The error of a failed item, from its error body.
fn item_error(common: &Common, status: Option<u16>, body: &Value) -> ProviderError {
    let info = ErrorInfo::from_json(body);
    let kind = info
        .as_ref()
        .map_or(ErrorKind::Other, |i| i.classify(status));
    let detail = common.error_detail(info.and_then(|i| i.message));
    let status_text = status.map(|s| format!(" HTTP {s}")).unwrap_or_default();
    let mut e = ProviderError::new(
        kind,
        format!("{} batch item{status_text}: {detail}", common.kind.name()),
    )
    .with_body(common.secret.redact(&body.to_string()));
    e.status = status;
    e
}

// ---------------------------------------------------------------------------
// OpenAI.

struct OpenAiBatch {
    client: OpenAiClient,
    limits: BatchLimits,
}

const OPENAI_IDS: &[&str] = &["x-request-id"];

impl OpenAiBatch {
    fn common(&self) -> &Common {
        &self.client.common
    }

    async fn json(&self, builder: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let c = self.common();
        let answer = c
            .execute(
                builder,
                Some(AuthHeader::Bearer),
                &[],
                OPENAI_IDS,
                METADATA_LIMITS,
            )
            .await?;
        let (value, _) = c.json(answer).await?;
        c.error_in_body(&value)?;
        Ok(value)
    }

    /// One line of the JSONL input file (without its newline).
    fn line(&self, item: &BatchItem) -> String {
        json!({
            "custom_id": item.custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": openai::request_body(self.common().kind, &unstreamed(&item.request)),
        })
        .to_string()
    }

    async fn submit_items(&self, items: &[BatchItem]) -> Result<String, ProviderError> {
        let c = self.common();
        let mut jsonl = String::new();
        for item in items {
            jsonl.push_str(&self.line(item));
            jsonl.push('\n');
        }
        let part = reqwest::multipart::Part::text(jsonl)
            .file_name("tollgate-batch.jsonl")
            .mime_str("application/jsonl")
            .map_err(|e| ProviderError::new(ErrorKind::Other, format!("openai: {e}")))?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let file = self
            .json(c.http.post(c.url("/files")).multipart(form))
            .await?;
        let Some(file_id) = str_at(&file, "/id") else {
            return Err(c.malformed("the uploaded file has no `id`", &file.to_string()));
        };
        let batch = self
            .json(c.http.post(c.url("/batches")).json(&json!({
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"created_by": "tollgate"},
            })))
            .await?;
        str_at(&batch, "/id")
            .map(str::to_owned)
            .ok_or_else(|| c.malformed("the created batch has no `id`", &batch.to_string()))
    }

    async fn poll_batch(&self, id: &str) -> Result<BatchState, ProviderError> {
        let c = self.common();
        let v = self
            .json(c.get(&c.url(&format!("/batches/{}", segment(id)?))))
            .await?;
        let status = str_at(&v, "/status").unwrap_or_default().to_owned();
        Ok(match status.as_str() {
            "completed" | "expired" | "cancelled" => BatchState::Ended { status },
            "failed" => {
                let reasons: Vec<String> = v
                    .pointer("/errors/data")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let line = e
                            .get("line")
                            .and_then(Value::as_u64)
                            .map(|l| format!("line {l}: "))
                            .unwrap_or_default();
                        format!(
                            "{line}{}",
                            str_at(e, "/message")
                                .unwrap_or_else(|| str_at(e, "/code").unwrap_or("unknown error"))
                        )
                    })
                    .collect();
                BatchState::Failed {
                    message: if reasons.is_empty() {
                        "the batch failed".to_owned()
                    } else {
                        format!("the batch failed: {}", reasons.join("; "))
                    },
                }
            }
            _ => BatchState::Running {
                done: u64_at(&v, "/request_counts/completed")
                    + u64_at(&v, "/request_counts/failed"),
                total: u64_at(&v, "/request_counts/total"),
                status,
            },
        })
    }

    async fn fetch_results(&self, id: &str) -> Result<HashMap<String, ItemOutcome>, ProviderError> {
        let c = self.common();
        let v = self
            .json(c.get(&c.url(&format!("/batches/{}", segment(id)?))))
            .await?;
        let mut out = HashMap::new();
        for field in ["/output_file_id", "/error_file_id"] {
            let Some(file) = str_at(&v, field) else {
                continue;
            };
            let url = c.url(&format!("/files/{}/content", segment(file)?));
            let started = Instant::now();
            let answer = c
                .execute(
                    c.get(&url),
                    Some(AuthHeader::Bearer),
                    &[],
                    OPENAI_IDS,
                    c.batch_download_limits(),
                )
                .await?;
            let text = c.text(answer).await?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let (custom_id, outcome) = self.item(line, started)?;
                out.insert(custom_id, outcome);
            }
        }
        Ok(out)
    }

    /// One line of the output or error file.
    fn item(&self, line: &str, started: Instant) -> Result<(String, ItemOutcome), ProviderError> {
        let c = self.common();
        let v: Value = serde_json::from_str(line)
            .map_err(|e| bad_line(c, &format!("is not JSON: {e}"), line))?;
        let Some(custom_id) = str_at(&v, "/custom_id") else {
            return Err(bad_line(c, "has no `custom_id`", line));
        };
        let response = v.get("response").filter(|r| r.is_object());
        let outcome = match response {
            Some(r) if r.get("status_code").and_then(Value::as_u64) == Some(200) => {
                let meta = Meta {
                    request_id: str_at(r, "/request_id").map(str::to_owned),
                    started,
                };
                let body = r.get("body").unwrap_or(&Value::Null);
                match self.client.parse(body, meta, Endpoint::Chat, false) {
                    Ok(resp) => ItemOutcome::Answer(resp),
                    Err(e) => ItemOutcome::Failed(e.redacted(&c.secret)),
                }
            }
            Some(r) => {
                let status = r
                    .get("status_code")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok());
                ItemOutcome::Failed(item_error(c, status, r.get("body").unwrap_or(&Value::Null)))
            }
            None => match str_at(&v, "/error/code") {
                Some("batch_expired") => ItemOutcome::Expired,
                Some("batch_cancelled") => ItemOutcome::Canceled,
                _ => ItemOutcome::Failed(item_error(c, None, &v)),
            },
        };
        Ok((custom_id.to_owned(), outcome))
    }
}

impl BatchApi for OpenAiBatch {
    fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn encoded_len(&self, item: &BatchItem) -> u64 {
        self.line(item).len() as u64 + 1
    }

    fn submit<'a>(
        &'a self,
        items: &'a [BatchItem],
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(
            self.common()
                .exchange("submitting a batch", self.submit_items(items)),
        )
    }

    fn poll<'a>(&'a self, batch_id: &'a str) -> BoxFuture<'a, Result<BatchState, ProviderError>> {
        Box::pin(
            self.common()
                .exchange("polling a batch", self.poll_batch(batch_id)),
        )
    }

    fn results<'a>(
        &'a self,
        batch_id: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ItemOutcome>, ProviderError>> {
        Box::pin(
            self.common()
                .exchange("fetching batch results", self.fetch_results(batch_id)),
        )
    }
}

// ---------------------------------------------------------------------------
// Anthropic.

struct AnthropicBatch {
    client: AnthropicClient,
    limits: BatchLimits,
}

const ANTHROPIC_IDS: &[&str] = &["request-id", "x-request-id"];
const ANTHROPIC_HEADERS: &[(&str, &str)] = &[("anthropic-version", anthropic::API_VERSION)];

/// One request of a Message Batch's body.
fn entry(item: &BatchItem) -> Value {
    json!({
        "custom_id": item.custom_id,
        "params": anthropic::request_body(&unstreamed(&item.request)),
    })
}

impl AnthropicBatch {
    fn common(&self) -> &Common {
        &self.client.common
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        limits: ResponseLimits,
    ) -> Result<super::Answer, ProviderError> {
        self.common()
            .execute(
                builder,
                Some(AuthHeader::Named("x-api-key")),
                ANTHROPIC_HEADERS,
                ANTHROPIC_IDS,
                limits,
            )
            .await
    }

    async fn json(&self, builder: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let c = self.common();
        let (value, _) = c.json(self.send(builder, METADATA_LIMITS).await?).await?;
        c.error_in_body(&value)?;
        Ok(value)
    }

    fn batch_url(&self, id: &str) -> Result<String, ProviderError> {
        Ok(self
            .common()
            .url(&format!("/v1/messages/batches/{}", segment(id)?)))
    }

    async fn submit_items(&self, items: &[BatchItem]) -> Result<String, ProviderError> {
        let c = self.common();
        let requests: Vec<Value> = items.iter().map(entry).collect();
        let batch = self
            .json(
                c.http
                    .post(c.url("/v1/messages/batches"))
                    .json(&json!({ "requests": requests })),
            )
            .await?;
        str_at(&batch, "/id")
            .map(str::to_owned)
            .ok_or_else(|| c.malformed("the created batch has no `id`", &batch.to_string()))
    }

    async fn poll_batch(&self, id: &str) -> Result<BatchState, ProviderError> {
        let c = self.common();
        let v = self.json(c.get(&self.batch_url(id)?)).await?;
        let status = str_at(&v, "/processing_status")
            .unwrap_or_default()
            .to_owned();
        if status == "ended" {
            return Ok(BatchState::Ended { status });
        }
        let done = ["succeeded", "errored", "canceled", "expired"]
            .iter()
            .map(|k| u64_at(&v, &format!("/request_counts/{k}")))
            .sum::<u64>();
        Ok(BatchState::Running {
            total: done + u64_at(&v, "/request_counts/processing"),
            done,
            status,
        })
    }

    async fn fetch_results(&self, id: &str) -> Result<HashMap<String, ItemOutcome>, ProviderError> {
        let c = self.common();
        let v = self.json(c.get(&self.batch_url(id)?)).await?;
        // The key goes with the request, so the results are only fetched
        // from the provider's own address, whatever URL the answer names.
        let own = format!("{}/results", self.batch_url(id)?);
        let url = match str_at(&v, "/results_url") {
            Some(u) if u.starts_with(&format!("{}/", c.base_url)) => u.to_owned(),
            _ => own,
        };
        let started = Instant::now();
        let text = c
            .text(self.send(c.get(&url), c.batch_download_limits()).await?)
            .await?;
        let mut out = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| bad_line(c, &format!("is not JSON: {e}"), line))?;
            let Some(custom_id) = str_at(&v, "/custom_id") else {
                return Err(bad_line(c, "has no `custom_id`", line));
            };
            let result = v.get("result").unwrap_or(&Value::Null);
            let outcome = match str_at(result, "/type") {
                Some("succeeded") => {
                    let message = result.get("message").unwrap_or(&Value::Null);
                    let meta = Meta {
                        request_id: None,
                        started,
                    };
                    match self.client.parse(message, meta) {
                        Ok(resp) => ItemOutcome::Answer(resp),
                        Err(e) => ItemOutcome::Failed(e.redacted(&c.secret)),
                    }
                }
                Some("errored") => {
                    // `error` is a whole error response: {type: error, error: {…}}.
                    let body = result.get("error").unwrap_or(&Value::Null);
                    ItemOutcome::Failed(item_error(c, None, body))
                }
                Some("expired") => ItemOutcome::Expired,
                Some("canceled") => ItemOutcome::Canceled,
                _ => return Err(bad_line(c, "has an unknown result type", line)),
            };
            out.insert(custom_id.to_owned(), outcome);
        }
        Ok(out)
    }
}

impl BatchApi for AnthropicBatch {
    fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn encoded_len(&self, item: &BatchItem) -> u64 {
        entry(item).to_string().len() as u64 + 1
    }

    fn submit<'a>(
        &'a self,
        items: &'a [BatchItem],
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(
            self.common()
                .exchange("submitting a batch", self.submit_items(items)),
        )
    }

    fn poll<'a>(&'a self, batch_id: &'a str) -> BoxFuture<'a, Result<BatchState, ProviderError>> {
        Box::pin(
            self.common()
                .exchange("polling a batch", self.poll_batch(batch_id)),
        )
    }

    fn results<'a>(
        &'a self,
        batch_id: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ItemOutcome>, ProviderError>> {
        Box::pin(
            self.common()
                .exchange("fetching batch results", self.fetch_results(batch_id)),
        )
    }
}

/// An id from an answer, used as one URL path segment: only ids made of
/// `[A-Za-z0-9_-]` (what both providers issue) are accepted, so an id can
/// never change which endpoint is called (`..`, `/`, `?`).
fn segment(id: &str) -> Result<&str, ProviderError> {
    if !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        Ok(id)
    } else {
        Err(ProviderError::new(
            ErrorKind::Malformed,
            format!("a batch or file id is not a plain identifier: {id:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        assert_eq!(segment("batch_abc-123").unwrap(), "batch_abc-123");
        for bad in ["..", "../files", "a?b", "", "x/y"] {
            assert!(segment(bad).is_err(), "{bad}");
        }
    }
}
