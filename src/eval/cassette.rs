//! Recorded responses ("cassettes"): `tollgate test --record` keeps every
//! answer a provider gave, keyed by the hash of the normalised request;
//! `--replay` serves them back with no network at all, so a suite runs
//! offline, free and the same every time.
//!
//! Both work as [`Provider`] wrappers, below the executor: routing, retries,
//! budgets, validation and assertions all run exactly as live.
//!
//! The key covers what decides the answer — provider kind, model, system
//! prompt, messages, output limit, temperature, output schema, endpoint and
//! stop sequences — and not how it is transported (streaming, base URL,
//! prompt-cache markers), so a recording made against one server replays
//! against a policy that points elsewhere. Only answers are recorded:
//! provider errors are infrastructure, and replaying them would only replay
//! the waiting.
//!
//! The file is JSON, one entry per key sorted by key, pretty-printed so a
//! re-recording shows up as a readable diff in review. Requests carry no keys
//! (those travel in headers); as a second line of defence every value of the
//! policy's key variables is scrubbed from the text before it is written.

use crate::provider::logprobs::Logprobs;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::provider::{
    ChatRequest, ChatResponse, ErrorKind, Provider, ProviderError, ProviderKind, Usage,
};

const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct File {
    version: u32,
    interactions: Vec<Interaction>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Interaction {
    key: String,
    /// The normalised request, for reviewers (the key is its hash).
    request: Value,
    /// Every answer recorded for this request, served in turn (a suite
    /// recorded with `--repeat 5` keeps five answers).
    responses: Vec<Recorded>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    text: String,
    usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    finish_reason: Option<String>,
    model: String,
    latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    ttft_ms: Option<u64>,
    /// The answer's mean token logprob and token count, when it was asked
    /// for and usable (a cascade's `low_confidence` check replays on it;
    /// unusable logprobs replay as none, which the check treats alike).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    logprobs: Option<(f64, u64)>,
}

/// The normalised request: what the key hashes.
fn normalized(kind: ProviderKind, req: &ChatRequest) -> Value {
    crate::provider::request_identity(kind, req)
}

/// `sha256:<hex>` of the normalised request.
pub fn request_key(kind: ProviderKind, req: &ChatRequest) -> String {
    let canonical = normalized(kind, req).to_string();
    format!("sha256:{:x}", Sha256::digest(canonical.as_bytes()))
}

/// One suite's cassette, shared by every wrapped client of a test run.
pub struct Cassette {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Interaction>>,
    /// Replay: how many answers of each key were served.
    served: Mutex<HashMap<String, usize>>,
    /// Record: keys recorded by this run (their old answers are replaced).
    recorded: Mutex<HashSet<String>>,
    /// Values that must never be written (API keys from the environment).
    secrets: Vec<String>,
}

/// A cassette that cannot be read: the path and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the recorded responses {path}: {why}")]
pub struct LoadError {
    pub path: PathBuf,
    pub why: String,
}

impl Cassette {
    /// Opens a cassette; a missing file is an empty cassette.
    pub fn open(path: &Path, secrets: Vec<String>) -> Result<Cassette, LoadError> {
        // Bounded and regular files only (see `files`); a cassette holds a
        // whole suite's answers, so its bound is larger than a prompt's.
        let entries = match crate::files::read_text_limited(path, 8 * crate::files::MAX_TEXT_BYTES)
        {
            Ok(text) => {
                let file: File = serde_json::from_str(&text).map_err(|e| LoadError {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })?;
                if file.version != VERSION {
                    return Err(LoadError {
                        path: path.to_path_buf(),
                        why: format!(
                            "format version {} (this tollgate reads {VERSION}); record it again",
                            file.version
                        ),
                    });
                }
                file.interactions
                    .into_iter()
                    .map(|i| (i.key.clone(), i))
                    .collect()
            }
            Err(crate::files::ReadError::NotFound) => BTreeMap::new(),
            Err(e) => {
                return Err(LoadError {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                });
            }
        };
        Ok(Cassette {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
            served: Mutex::new(HashMap::new()),
            recorded: Mutex::new(HashSet::new()),
            secrets: secrets.into_iter().filter(|s| s.len() >= 8).collect(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Interaction>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a complete re-recording: drops the answers to requests this run
    /// did not make (prompts that no longer exist). Only called when every
    /// case of the suite ran to the end, so an interrupted or partly failed
    /// recording never loses answers it did not replace.
    pub fn prune_unrecorded(&self) {
        let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        self.lock_entries().retain(|k, _| recorded.contains(k));
    }

    fn record(&self, kind: ProviderKind, req: &ChatRequest, resp: &ChatResponse) {
        let key = request_key(kind, req);
        let fresh = self
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        let rec = Recorded {
            text: resp.text.clone(),
            usage: resp.usage,
            cost_usd: resp.cost_usd,
            finish_reason: resp.finish_reason.clone(),
            model: resp.model.clone(),
            latency_ms: resp.latency.as_millis() as u64,
            ttft_ms: resp.time_to_first_token.map(|d| d.as_millis() as u64),
            logprobs: match resp.logprobs {
                Some(Logprobs::Mean { mean, tokens }) => Some((mean, tokens)),
                _ => None,
            },
        };
        let mut entries = self.lock_entries();
        let entry = entries.entry(key.clone()).or_insert_with(|| Interaction {
            key,
            request: normalized(kind, req),
            responses: Vec::new(),
        });
        if fresh {
            entry.responses.clear();
            entry.request = normalized(kind, req);
        }
        entry.responses.push(rec);
    }

    fn replay(&self, kind: ProviderKind, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let key = request_key(kind, req);
        let entries = self.lock_entries();
        let Some(entry) = entries.get(&key).filter(|e| !e.responses.is_empty()) else {
            return Err(ProviderError::new(
                ErrorKind::NotRecorded,
                format!(
                    "no recorded response for this request to `{}` ({key}) in {}: the prompt, the inputs, the model or a parameter changed since it was recorded — record again with `tollgate test --record`",
                    req.model,
                    self.path.display()
                ),
            ));
        };
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        let n = served.entry(key).or_insert(0);
        let rec = &entry.responses[*n % entry.responses.len()];
        *n += 1;
        Ok(ChatResponse {
            endpoint: None,
            text: rec.text.clone(),
            usage: rec.usage,
            cost_usd: rec.cost_usd,
            finish_reason: rec.finish_reason.clone(),
            model: rec.model.clone(),
            request_id: None,
            time_to_first_token: rec.ttft_ms.map(Duration::from_millis),
            latency: Duration::from_millis(rec.latency_ms),
            logprobs: rec
                .logprobs
                .map(|(mean, tokens)| Logprobs::Mean { mean, tokens }),
        })
    }

    /// Writes the cassette (whole, via a temporary file), secrets scrubbed.
    pub fn save(&self) -> std::io::Result<()> {
        let file = File {
            version: VERSION,
            interactions: self.lock_entries().values().cloned().collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
        for s in &self.secrets {
            text = text.replace(s.as_str(), "[redacted]");
        }
        text.push('\n');
        super::snapshot::write_atomic(&self.path, &text)
    }
}

/// A client that forwards to the real provider and records each answer.
pub struct Recorder {
    pub inner: Arc<dyn Provider>,
    pub cassette: Arc<Cassette>,
}

impl Provider for Recorder {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            let resp = self.inner.send(req).await?;
            self.cassette.record(self.inner.kind(), req, &resp);
            Ok(resp)
        })
    }
}

/// A client that only ever answers from the cassette.
pub struct Replayer {
    pub kind: ProviderKind,
    pub cassette: Arc<Cassette>,
}

impl Provider for Replayer {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn send<'a>(
        &'a self,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        let result = self.cassette.replay(self.kind, req);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(text: &str) -> ChatResponse {
        ChatResponse {
            endpoint: None,
            text: text.to_owned(),
            usage: Usage {
                input_tokens: 12,
                output_tokens: 3,
                ..Usage::default()
            },
            cost_usd: None,
            finish_reason: Some("stop".to_owned()),
            model: "m-2026".to_owned(),
            request_id: Some("req_1".to_owned()),
            time_to_first_token: None,
            latency: Duration::from_millis(40),
            logprobs: None,
        }
    }

    #[test]
    fn the_key_ignores_transport_and_covers_content() {
        let a = ChatRequest::new("m", "hello");
        let mut streamed = a.clone();
        streamed.stream = true;
        assert_eq!(
            request_key(ProviderKind::Openai, &a),
            request_key(ProviderKind::Openai, &streamed)
        );
        let mut other = a.clone();
        other.temperature = Some(0.0);
        assert_ne!(
            request_key(ProviderKind::Openai, &a),
            request_key(ProviderKind::Openai, &other)
        );
        assert_ne!(
            request_key(ProviderKind::Openai, &a),
            request_key(ProviderKind::Anthropic, &a)
        );
    }

    #[test]
    fn recorded_answers_replay_in_turn_and_survive_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let c = Cassette::open(&path, vec!["sk-secret-123456".to_owned()]).unwrap();
        let req = ChatRequest::new("m", "hello");
        c.record(ProviderKind::Openai, &req, &response("one"));
        c.record(
            ProviderKind::Openai,
            &req,
            &response("two sk-secret-123456"),
        );
        c.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("sk-secret-123456"), "{text}");

        let c = Cassette::open(&path, Vec::new()).unwrap();
        let r1 = c.replay(ProviderKind::Openai, &req).unwrap();
        let r2 = c.replay(ProviderKind::Openai, &req).unwrap();
        assert_eq!((r1.text.as_str(), r1.usage.output_tokens), ("one", 3));
        assert_eq!(r2.text, "two [redacted]");
        let miss = c
            .replay(ProviderKind::Openai, &ChatRequest::new("m", "other"))
            .unwrap_err();
        assert_eq!(miss.kind, ErrorKind::NotRecorded);
        assert!(!miss.is_retryable());
        assert!(miss.message.contains("--record"), "{}", miss.message);
    }

    #[test]
    fn re_recording_a_key_replaces_its_old_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let req = ChatRequest::new("m", "hello");
        let c = Cassette::open(&path, Vec::new()).unwrap();
        c.record(ProviderKind::Openai, &req, &response("old"));
        c.save().unwrap();
        let c = Cassette::open(&path, Vec::new()).unwrap();
        c.record(ProviderKind::Openai, &req, &response("new"));
        assert_eq!(c.replay(ProviderKind::Openai, &req).unwrap().text, "new");
        assert_eq!(c.replay(ProviderKind::Openai, &req).unwrap().text, "new");
    }
}
