//! The batch APIs (provider-apis.md §2 and §3): OpenAI's Files + Batches
//! and Anthropic's Message Batches, with their state machines.
//!
//! Time is compressed into polls: a batch stays in progress for
//! [`BatchScript::polls_before_done`] polls of `GET …/batches/{id}`, then
//! ends. Each item is answered like a synchronous request to the item's
//! endpoint — through the same script, handler and default reply — when its
//! batch is created, so a test scripts batch answers the way it scripts
//! chat answers. [`BatchScript`] adds what only batches do: items that
//! error, items that expire, a batch that fails validation.
//!
//! OpenAI: `validating` (on create, and the first poll when there are at
//! least 3) → `in_progress` → `finalizing` (the last poll before the end) →
//! `completed`, or `expired` when some items expired (finished ones are
//! still delivered), `failed` when the input file does not validate
//! (duplicate `custom_id`, a line whose `url` is not the batch's endpoint,
//! bad JSON) with `errors.data[{code, line, message}]`, `cancelling →
//! cancelled` after `POST …/cancel`. Output and error files are JSONL in
//! reverse order (the API does not keep input order).
//!
//! Both refuse a batch past the provider's limits (requests, bytes) as a
//! whole, before anything runs: OpenAI with a 400 at the upload (bytes) or
//! at creation (requests), Anthropic with a 413 (bytes) or a 400
//! (requests). [`BatchScript::max_requests`] / [`BatchScript::max_bytes`]
//! lower the limits so a test can show a client splitting its batches.
//!
//! Anthropic: `in_progress` → `ended` (`canceling` after cancel),
//! `results_url` null until ended, results JSONL with
//! `succeeded`/`errored`/`expired`/`canceled`, in reverse order.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::reply::Outcome;
use crate::{Api, Recorded, Shared, next_reply, render};

/// How batches behave; set with [`crate::FakeServer::set_batch_script`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScript {
    /// Polls that still see the batch in progress before it ends.
    pub polls_before_done: u32,
    /// Items (by `custom_id`) answered with a server error, whatever the
    /// reply script says.
    pub failed_ids: Vec<String>,
    /// Items that expire before they run; an OpenAI batch with any ends as
    /// `expired`.
    pub expired_ids: Vec<String>,
    /// OpenAI: the input file fails validation (`failed`).
    pub fail_validation: bool,
    /// The most requests one batch may hold; `None`: the provider's own
    /// (OpenAI 50,000, Anthropic 100,000). A larger batch is refused.
    pub max_requests: Option<usize>,
    /// The most bytes one batch may be (OpenAI: the uploaded JSONL file;
    /// Anthropic: the request body); `None`: the provider's own (OpenAI
    /// 200 MB, Anthropic 256 MB). A larger one is refused.
    pub max_bytes: Option<usize>,
}

/// provider-apis.md §2: "≤50,000 requests and ≤200 MB per input file".
const OPENAI_MAX_REQUESTS: usize = 50_000;
const OPENAI_MAX_BYTES: usize = 200 * 1024 * 1024;
/// provider-apis.md §3, Message Batches: "100,000 requests or 256 MB".
const ANTHROPIC_MAX_REQUESTS: usize = 100_000;
const ANTHROPIC_MAX_BYTES: usize = 256 * 1024 * 1024;

impl Default for BatchScript {
    fn default() -> Self {
        BatchScript {
            polls_before_done: 1,
            failed_ids: Vec::new(),
            expired_ids: Vec::new(),
            fail_validation: false,
            max_requests: None,
            max_bytes: None,
        }
    }
}

#[derive(Debug, Clone)]
enum ItemResult {
    /// The rendered body (chat.completion / Message).
    Answer(Value),
    /// HTTP status and error body.
    Error(u16, Value),
    Expired,
    Canceled,
}

#[derive(Debug)]
struct Batch {
    id: String,
    flavour: Api,
    created_at: u64,
    input_file_id: Option<String>,
    /// (custom id, result) in submission order.
    items: Vec<(String, ItemResult)>,
    polls: u32,
    script: BatchScript,
    /// Validation errors (OpenAI): the batch fails.
    errors: Vec<Value>,
    cancelled: bool,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

impl Batch {
    fn ended(&self) -> bool {
        self.polls > self.script.polls_before_done || self.cancelled && self.polls > 0
    }
}

/// Files and batches the fake holds.
#[derive(Debug, Default)]
pub(crate) struct Store {
    files: HashMap<String, String>,
    batches: HashMap<String, Batch>,
    script: Option<BatchScript>,
    /// While set, downloads of results (OpenAI file content, Anthropic
    /// `results_url`) answer this status: a provider having trouble.
    download_status: Option<u16>,
    seq: u64,
}

impl Store {
    pub(crate) fn set_script(&mut self, script: BatchScript) {
        self.script = Some(script);
    }

    pub(crate) fn set_download_status(&mut self, status: Option<u16>) {
        self.download_status = status;
    }

    pub(crate) fn complete_all(&mut self) {
        for b in self.batches.values_mut() {
            if !b.ended() {
                b.script.polls_before_done = b.polls;
            }
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{:06}fake", self.seq)
    }
}

pub(crate) fn is_batch_path(path: &str) -> Option<Api> {
    if path.contains("/messages/batches") {
        Some(Api::AnthropicBatch)
    } else if path.ends_with("/files")
        || path.contains("/files/")
        || path.ends_with("/batches")
        || path.contains("/batches/")
    {
        Some(Api::OpenAiBatch)
    } else {
        None
    }
}

/// A response: status, content type, body.
pub(crate) type Answer = (u16, &'static str, String);

fn json_answer(status: u16, v: &Value) -> Answer {
    (status, "application/json", v.to_string())
}

fn not_found(flavour: Api, what: &str) -> Answer {
    match flavour {
        Api::AnthropicBatch => json_answer(
            404,
            &json!({"type": "error", "error": {"type": "not_found_error", "message": format!("{what} not found")}}),
        ),
        _ => json_answer(
            404,
            &json!({"error": {"message": format!("No such {what}"), "type": "invalid_request_error", "param": null, "code": null}}),
        ),
    }
}

fn bad_request(message: &str) -> Answer {
    json_answer(
        400,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// Routes a request of one of the batch flavours.
pub(crate) fn handle(shared: &Shared, req: &Recorded, now: u64) -> Answer {
    let path = req.path.as_str();
    let method = req.method.as_str();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match req.api {
        Api::AnthropicBatch => {
            // /v1/messages/batches[/{id}[/results|/cancel]]
            let rest: Vec<&str> = segs
                .iter()
                .skip_while(|s| **s != "batches")
                .skip(1)
                .copied()
                .collect();
            match (method, rest.as_slice()) {
                ("POST", []) => anthropic_create(shared, req, now),
                ("GET", [id]) => with_batch(shared, id, Api::AnthropicBatch, |b, base| {
                    b.polls += 1;
                    json_answer(200, &anthropic_object(b, base))
                }),
                ("GET", [_, "results"]) if download_failure(shared).is_some() => {
                    download_failure(shared).unwrap_or_else(|| json_answer(500, &json!({})))
                }
                ("GET", [id, "results"]) => with_batch(shared, id, Api::AnthropicBatch, |b, _| {
                    if !b.ended() {
                        return json_answer(
                            400,
                            &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "batch is still processing"}}),
                        );
                    }
                    (200, "application/binary", anthropic_results(b))
                }),
                ("POST", [id, "cancel"]) => {
                    with_batch(shared, id, Api::AnthropicBatch, |b, base| {
                        b.cancelled = true;
                        b.polls = 0;
                        json_answer(200, &anthropic_object(b, base))
                    })
                }
                _ => not_found(Api::AnthropicBatch, "route"),
            }
        }
        _ => {
            let from = segs
                .iter()
                .position(|s| *s == "files" || *s == "batches")
                .unwrap_or(segs.len());
            match (method, &segs[from..]) {
                ("POST", ["files"]) => upload(shared, req, now),
                ("GET", ["files", _, "content"]) if download_failure(shared).is_some() => {
                    download_failure(shared).unwrap_or_else(|| json_answer(500, &json!({})))
                }
                ("GET", ["files", id, "content"]) => {
                    let store = shared.batches.lock().unwrap();
                    match store.files.get(*id) {
                        Some(text) => (200, "application/octet-stream", text.clone()),
                        None => not_found(Api::OpenAiBatch, "file"),
                    }
                }
                ("POST", ["batches"]) => openai_create(shared, req, now),
                ("GET", ["batches", id]) => with_batch(shared, id, Api::OpenAiBatch, |b, _| {
                    b.polls += 1;
                    json_answer(200, &openai_object(b))
                }),
                ("POST", ["batches", id, "cancel"]) => {
                    with_batch(shared, id, Api::OpenAiBatch, |b, _| {
                        b.cancelled = true;
                        b.polls = 0;
                        json_answer(200, &openai_object(b))
                    })
                }
                _ => not_found(Api::OpenAiBatch, "route"),
            }
        }
    }
}

/// The scripted answer to a results download, while downloads fail.
fn download_failure(shared: &Shared) -> Option<Answer> {
    let status = shared.batches.lock().unwrap().download_status?;
    Some(json_answer(
        status,
        &json!({"type": "error", "error": {"type": "api_error", "message": "fake: results temporarily unavailable"}}),
    ))
}

/// Runs `f` on the batch (and its files, once ended) under the store lock.
fn with_batch(
    shared: &Shared,
    id: &str,
    flavour: Api,
    f: impl FnOnce(&mut Batch, &str) -> Answer,
) -> Answer {
    let mut store = shared.batches.lock().unwrap();
    let base = shared.base_url.lock().unwrap().clone();
    let Some(batch) = store.batches.get_mut(id).filter(|b| b.flavour == flavour) else {
        return not_found(flavour, "batch");
    };
    let answer = f(batch, &base);
    // OpenAI writes the output and error files when the batch ends.
    let files = if batch.flavour == Api::OpenAiBatch
        && batch.ended()
        && batch.errors.is_empty()
        && batch.output_file_id.is_none()
    {
        Some(openai_files(batch))
    } else {
        None
    };
    if let Some((output, errors)) = files {
        let out_id = store.next_id("file-out");
        let err_id = store.next_id("file-err");
        let batch = store.batches.get_mut(id).expect("the batch is there");
        if let Some(text) = output {
            batch.output_file_id = Some(out_id.clone());
            store.files.insert(out_id, text);
        }
        if let Some(text) = errors {
            let batch = store.batches.get_mut(id).expect("the batch is there");
            batch.error_file_id = Some(err_id.clone());
            store.files.insert(err_id, text);
        }
        // Answer with the file ids filled in.
        let batch = store.batches.get(id).expect("the batch is there");
        return json_answer(200, &openai_object(batch));
    }
    answer
}

// ---------------------------------------------------------------------------
// OpenAI.

/// `multipart/form-data` with fields `purpose` and `file`.
fn upload(shared: &Shared, req: &Recorded, now: u64) -> Answer {
    let Some(boundary) = req
        .header("content-type")
        .and_then(|ct| ct.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
    else {
        return bad_request("expected multipart/form-data");
    };
    let parts = multipart_fields(&req.raw_body, &boundary);
    if parts.get("purpose").map(String::as_str) != Some("batch") {
        return bad_request(
            "purpose must be one of: assistants, batch, fine-tune, vision, user_data, evals",
        );
    }
    let Some(content) = parts.get("file") else {
        return bad_request("the file field is required");
    };
    let mut store = shared.batches.lock().unwrap();
    // The doc gives the limit, not how it is refused: the documented 400
    // `invalid_request_error` shape, at the upload.
    let max_bytes = store
        .script
        .as_ref()
        .and_then(|s| s.max_bytes)
        .unwrap_or(OPENAI_MAX_BYTES);
    if content.len() > max_bytes {
        return bad_request(&format!(
            "File is too large: {} bytes; a batch input file may be at most {max_bytes} bytes.",
            content.len()
        ));
    }
    let id = store.next_id("file-");
    store.files.insert(id.clone(), content.clone());
    json_answer(
        200,
        &json!({"id": id, "object": "file", "bytes": content.len(), "created_at": now,
                "filename": "requests.jsonl", "purpose": "batch", "status": "processed",
                "expires_at": now + 30 * 86400}),
    )
}

/// The fields of a multipart body, by name (enough of RFC 7578 for one
/// text field and one file).
fn multipart_fields(body: &str, boundary: &str) -> HashMap<String, String> {
    let delimiter = format!("--{boundary}");
    let mut out = HashMap::new();
    for part in body.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((head, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let Some(name) = head
            .split("name=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        out.insert(name.to_string(), content.to_string());
    }
    out
}

fn openai_create(shared: &Shared, req: &Recorded, now: u64) -> Answer {
    let b = &req.body;
    let Some(input_file_id) = b.get("input_file_id").and_then(Value::as_str) else {
        return bad_request("input_file_id is required");
    };
    let endpoint = b
        .get("endpoint")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if b.get("completion_window").and_then(Value::as_str) != Some("24h") {
        return bad_request("completion_window must be 24h");
    }
    let (file, script, id) = {
        let mut store = shared.batches.lock().unwrap();
        let Some(file) = store.files.get(input_file_id).cloned() else {
            return not_found(Api::OpenAiBatch, "file");
        };
        let script = store.script.clone().unwrap_or_default();
        (file, script, store.next_id("batch_"))
    };
    // Too many requests: refused at creation with the documented 400
    // `invalid_request_error` shape (the doc gives the limit, not how it is
    // refused), before anything runs or is billed.
    let max_requests = script.max_requests.unwrap_or(OPENAI_MAX_REQUESTS);
    let requests = file.lines().filter(|l| !l.trim().is_empty()).count();
    if requests > max_requests {
        return bad_request(&format!(
            "The batch input file has {requests} requests; a batch may hold at most {max_requests}."
        ));
    }
    // Validate every line, as the API does before running any.
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for (n, line) in file.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let line_no = n + 1;
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            errors.push(json!({"code": "invalid_json_line", "line": line_no, "message": "This line is not parseable as valid JSON.", "param": null}));
            continue;
        };
        let custom_id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !seen.insert(custom_id.clone()) {
            errors.push(json!({"code": "duplicate_custom_id", "line": line_no, "message": "The custom_id for this request is a duplicate of another request. The custom_id parameter must be unique for each request in a batch.", "param": "custom_id"}));
        }
        if v.get("url").and_then(Value::as_str) != Some(endpoint) {
            errors.push(json!({"code": "mismatched_url", "line": line_no, "message": format!("The URL provided for this request does not match the batch endpoint {endpoint}."), "param": "url"}));
        }
        lines.push((custom_id, v.get("body").cloned().unwrap_or(Value::Null)));
    }
    if script.fail_validation && errors.is_empty() {
        errors.push(json!({"code": "invalid_request", "line": 1, "message": "The request body is invalid (scripted).", "param": "body"}));
    }
    let items = if errors.is_empty() {
        lines
            .into_iter()
            .map(|(cid, body)| {
                let result = answer_item(shared, &script, &cid, Api::OpenAi, endpoint, body, req);
                (cid, result)
            })
            .collect()
    } else {
        Vec::new()
    };
    let batch = Batch {
        id: id.clone(),
        flavour: Api::OpenAiBatch,
        created_at: now,
        input_file_id: Some(input_file_id.to_string()),
        items,
        polls: 0,
        script,
        errors,
        cancelled: false,
        output_file_id: None,
        error_file_id: None,
    };
    let object = openai_object(&batch);
    shared.batches.lock().unwrap().batches.insert(id, batch);
    json_answer(200, &object)
}

fn openai_status(b: &Batch) -> &'static str {
    let p = b.script.polls_before_done;
    if b.cancelled {
        return if b.ended() { "cancelled" } else { "cancelling" };
    }
    if b.polls == 0 {
        return "validating";
    }
    if !b.errors.is_empty() {
        return "failed";
    }
    if b.ended() {
        let expired = b
            .items
            .iter()
            .any(|(_, r)| matches!(r, ItemResult::Expired));
        return if expired { "expired" } else { "completed" };
    }
    // With enough polls to show them all: validating, in_progress…,
    // finalizing.
    if b.polls == 1 && p >= 3 {
        "validating"
    } else if b.polls == p && p >= 2 {
        "finalizing"
    } else {
        "in_progress"
    }
}

/// What an item ends as, given how the batch ended.
fn final_result(b: &Batch, r: &ItemResult) -> ItemResult {
    if b.cancelled {
        ItemResult::Canceled
    } else {
        r.clone()
    }
}

fn openai_object(b: &Batch) -> Value {
    let status = openai_status(b);
    let total = b.items.len() as u64;
    let (mut completed, mut failed) = (0, 0);
    if b.ended() {
        for (_, r) in &b.items {
            match final_result(b, r) {
                ItemResult::Answer(_) => completed += 1,
                _ => failed += 1,
            }
        }
    } else if b.polls > 0 {
        // Progress grows with the polls.
        completed = total * u64::from(b.polls) / (u64::from(b.script.polls_before_done) + 1);
    }
    let at = |cond: bool| {
        if cond {
            json!(b.created_at + 1)
        } else {
            Value::Null
        }
    };
    json!({
        "id": b.id, "object": "batch", "endpoint": "/v1/chat/completions",
        "errors": if b.errors.is_empty() { Value::Null } else { json!({"object": "list", "data": b.errors}) },
        "input_file_id": b.input_file_id, "completion_window": "24h", "status": status,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": b.created_at, "in_progress_at": at(b.polls > 0 && b.errors.is_empty()),
        "expires_at": b.created_at + 86400,
        "finalizing_at": at(status == "finalizing" || status == "completed"),
        "completed_at": at(status == "completed"), "failed_at": at(status == "failed"),
        "expired_at": at(status == "expired"), "cancelling_at": at(b.cancelled),
        "cancelled_at": at(status == "cancelled"),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": {}
    })
}

/// The output file (successes) and the error file (the rest), each `None`
/// when empty, in reverse submission order.
fn openai_files(b: &Batch) -> (Option<String>, Option<String>) {
    let mut out = String::new();
    let mut err = String::new();
    for (n, (cid, r)) in b.items.iter().enumerate().rev() {
        let id = format!("batch_req_{n:04}{}", b.id);
        let request_id = format!("req_fake_batch{n:04}");
        let line = match final_result(b, r) {
            ItemResult::Answer(body) => {
                out.push_str(&json!({"id": id, "custom_id": cid, "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": null}).to_string());
                out.push('\n');
                continue;
            }
            ItemResult::Error(status, body) => {
                json!({"id": id, "custom_id": cid, "response": {"status_code": status, "request_id": request_id, "body": body}, "error": null})
            }
            ItemResult::Expired => {
                json!({"id": id, "custom_id": cid, "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
            }
            ItemResult::Canceled => {
                json!({"id": id, "custom_id": cid, "response": null, "error": {"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."}})
            }
        };
        err.push_str(&line.to_string());
        err.push('\n');
    }
    let some = |s: String| if s.is_empty() { None } else { Some(s) };
    (some(out), some(err))
}

// ---------------------------------------------------------------------------
// Anthropic.

fn anthropic_create(shared: &Shared, req: &Recorded, now: u64) -> Answer {
    let Some(requests) = req.body.get("requests").and_then(Value::as_array) else {
        return json_answer(
            400,
            &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "requests: Field required"}}),
        );
    };
    let (max_requests, max_bytes) = {
        let store = shared.batches.lock().unwrap();
        let script = store.script.as_ref();
        (
            script
                .and_then(|s| s.max_requests)
                .unwrap_or(ANTHROPIC_MAX_REQUESTS),
            script
                .and_then(|s| s.max_bytes)
                .unwrap_or(ANTHROPIC_MAX_BYTES),
        )
    };
    // provider-apis.md: a body past the batch limit is a 413
    // `request_too_large` (Cloudflare, before the API); too many requests
    // is the documented 400 `invalid_request_error` shape (the doc gives
    // the limit, not how it is refused).
    if req.raw_body.len() > max_bytes {
        return json_answer(
            413,
            &json!({"type": "error", "error": {"type": "request_too_large", "message": format!("Request exceeds the maximum allowed number of bytes ({max_bytes}).")}}),
        );
    }
    if requests.len() > max_requests {
        return json_answer(
            400,
            &json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("requests: a batch may hold at most {max_requests} requests, not {}", requests.len())}}),
        );
    }
    let mut seen = HashSet::new();
    for r in requests {
        let cid = r
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let valid = !cid.is_empty()
            && cid.len() <= 64
            && cid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid || !seen.insert(cid.to_string()) {
            return json_answer(
                400,
                &json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("requests: custom_id {cid:?} is invalid or not unique")}}),
            );
        }
        if r.pointer("/params/stream").and_then(Value::as_bool) == Some(true) {
            return json_answer(
                400,
                &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "requests: streaming is not supported in batches"}}),
            );
        }
    }
    let (script, id) = {
        let mut store = shared.batches.lock().unwrap();
        (
            store.script.clone().unwrap_or_default(),
            store.next_id("msgbatch_"),
        )
    };
    let items = requests
        .iter()
        .map(|r| {
            let cid = r
                .get("custom_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let body = r.get("params").cloned().unwrap_or(Value::Null);
            let result = answer_item(
                shared,
                &script,
                &cid,
                Api::Anthropic,
                "/v1/messages",
                body,
                req,
            );
            (cid, result)
        })
        .collect();
    let batch = Batch {
        id: id.clone(),
        flavour: Api::AnthropicBatch,
        created_at: now,
        input_file_id: None,
        items,
        polls: 0,
        script,
        errors: Vec::new(),
        cancelled: false,
        output_file_id: None,
        error_file_id: None,
    };
    let base = shared.base_url.lock().unwrap().clone();
    let object = anthropic_object(&batch, &base);
    shared.batches.lock().unwrap().batches.insert(id, batch);
    json_answer(200, &object)
}

fn rfc3339(secs: u64) -> String {
    // Days since the epoch → civil date (Howard Hinnant's algorithm).
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn anthropic_object(b: &Batch, base: &str) -> Value {
    let ended = b.ended();
    let status = if ended {
        "ended"
    } else if b.cancelled {
        "canceling"
    } else {
        "in_progress"
    };
    let mut counts =
        json!({"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0});
    for (_, r) in &b.items {
        let key = if !ended {
            "processing"
        } else {
            match final_result(b, r) {
                ItemResult::Answer(_) => "succeeded",
                ItemResult::Error(..) => "errored",
                ItemResult::Expired => "expired",
                ItemResult::Canceled => "canceled",
            }
        };
        counts[key] = json!(counts[key].as_u64().unwrap_or(0) + 1);
    }
    json!({
        "id": b.id, "type": "message_batch", "processing_status": status,
        "request_counts": counts,
        "created_at": rfc3339(b.created_at), "expires_at": rfc3339(b.created_at + 86400),
        "ended_at": if ended { json!(rfc3339(b.created_at + 60)) } else { Value::Null },
        "cancel_initiated_at": if b.cancelled { json!(rfc3339(b.created_at + 30)) } else { Value::Null },
        "archived_at": null,
        "results_url": if ended { json!(format!("{base}/v1/messages/batches/{}/results", b.id)) } else { Value::Null },
    })
}

fn anthropic_results(b: &Batch) -> String {
    let mut out = String::new();
    for (cid, r) in b.items.iter().rev() {
        let result = match final_result(b, r) {
            ItemResult::Answer(message) => json!({"type": "succeeded", "message": message}),
            ItemResult::Error(_, body) => json!({"type": "errored", "error": body}),
            ItemResult::Expired => json!({"type": "expired"}),
            ItemResult::Canceled => json!({"type": "canceled"}),
        };
        out.push_str(&json!({"custom_id": cid, "result": result}).to_string());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// Items.

/// Answers one item as if it had been sent to `path` on its own: through
/// the reply script / handler / default, rendered in the flavour's shape.
fn answer_item(
    shared: &Shared,
    script: &BatchScript,
    custom_id: &str,
    api: Api,
    path: &str,
    body: Value,
    batch_request: &Recorded,
) -> ItemResult {
    if script.expired_ids.iter().any(|c| c == custom_id) {
        return ItemResult::Expired;
    }
    let item = Recorded {
        method: "POST".into(),
        path: path.to_string(),
        query: None,
        headers: batch_request.headers.clone(),
        raw_body: body.to_string(),
        body,
        api,
    };
    let reply = if script.failed_ids.iter().any(|c| c == custom_id) {
        crate::Reply::server_error()
    } else {
        next_reply(shared, &item)
    };
    let ctx = render::Ctx {
        api,
        model: item.model(),
        seq: shared
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        created: 0,
        include_usage: false,
        presented_key: None,
        cache_ttl_1h: api == Api::Anthropic && crate::asks_for_1h_cache(&item.body),
    };
    match &reply.outcome {
        Outcome::Success(s) => ItemResult::Answer(render::success_json(s, &ctx)),
        Outcome::Error(case) => {
            let (status, body) = render::error(case, &ctx);
            ItemResult::Error(status, body)
        }
        Outcome::Malformed | Outcome::Raw { .. } => ItemResult::Error(
            500,
            json!({"error": {"message": "The server had an error processing your request.", "type": "server_error"}}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_724_178_644), "2024-08-20T18:30:44.000000Z");
    }

    #[test]
    fn multipart_fields_are_read() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{\"a\":1}\n{\"b\":2}\n\r\n--XyZ--\r\n";
        let f = multipart_fields(body, "XyZ");
        assert_eq!(f["purpose"], "batch");
        assert_eq!(f["file"], "{\"a\":1}\n{\"b\":2}\n");
    }
}
