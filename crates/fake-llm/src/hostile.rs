//! Answers that lie about money: usage counts and costs no honest server
//! sends (negative, huge, far above the output limit, a negative or huge
//! `usage.cost`), and finish reasons of withheld answers (`SAFETY`,
//! `content_filter`, `refusal`). Applied to the rendered answer of every API
//! shape — chat, completions, stream events, Anthropic, Gemini, and batch
//! results — in that shape's own fields, so each client's real parsing is
//! what meets them.
//!
//! ```no_run
//! use fake_llm::{Hostile, Reply};
//! use serde_json::json;
//! let r = Reply::text("ok").hostile(Hostile::default().output(json!(u64::MAX)).cost(json!(-1.0)));
//! let blocked = Reply::text("").hostile(Hostile::default().finish("SAFETY"));
//! ```

use serde_json::Value;

use crate::Api;

/// Raw JSON values put in place of what the fake would honestly report.
/// Each is any JSON value (`json!(-5)`, `json!(1e300)`, `json!(u64::MAX)`,
/// `json!("NaN")`), written where the flavour keeps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hostile {
    /// The input count: `prompt_tokens`, Anthropic `input_tokens`, Gemini
    /// `promptTokenCount`.
    pub input: Option<Value>,
    /// The output count: `completion_tokens`, Anthropic `output_tokens`,
    /// Gemini `candidatesTokenCount`.
    pub output: Option<Value>,
    /// OpenRouter's `usage.cost` (OpenAI-shaped answers only).
    pub cost: Option<Value>,
    /// The finish reason (`finish_reason`, `stop_reason`, `finishReason`).
    pub finish: Option<String>,
}

impl Hostile {
    pub fn input(mut self, v: Value) -> Self {
        self.input = Some(v);
        self
    }

    pub fn output(mut self, v: Value) -> Self {
        self.output = Some(v);
        self
    }

    pub fn cost(mut self, v: Value) -> Self {
        self.cost = Some(v);
        self
    }

    pub fn finish(mut self, reason: impl Into<String>) -> Self {
        self.finish = Some(reason.into());
        self
    }

    fn is_empty(&self) -> bool {
        *self == Hostile::default()
    }

    /// Rewrites a rendered answer (or one stream event) of `api`.
    pub(crate) fn apply(&self, api: Api, v: &mut Value) {
        if self.is_empty() {
            return;
        }
        if api == Api::Ollama {
            self.apply_ollama(v);
            return;
        }
        let (usage_key, input_key, output_key) = match api {
            Api::Anthropic | Api::AnthropicBatch => ("usage", "input_tokens", "output_tokens"),
            Api::Gemini => ("usageMetadata", "promptTokenCount", "candidatesTokenCount"),
            _ => ("usage", "prompt_tokens", "completion_tokens"),
        };
        let openai = !matches!(api, Api::Anthropic | Api::AnthropicBatch | Api::Gemini);
        self.walk(v, usage_key, input_key, output_key, openai);
    }

    /// Ollama's counts and finish are top-level fields of the `done` line.
    fn apply_ollama(&self, v: &mut Value) {
        let Some(map) = v.as_object_mut() else {
            return;
        };
        if map.get("done") != Some(&Value::Bool(true)) {
            return;
        }
        if let Some(x) = &self.input {
            map.insert("prompt_eval_count".into(), x.clone());
        }
        if let Some(x) = &self.output {
            map.insert("eval_count".into(), x.clone());
        }
        if let Some(f) = &self.finish {
            map.insert("done_reason".into(), Value::String(f.clone()));
        }
    }

    fn walk(
        &self,
        v: &mut Value,
        usage_key: &str,
        input_key: &str,
        output_key: &str,
        openai: bool,
    ) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == usage_key {
                        if let Value::Object(u) = child {
                            // Only counts the event carries: a stream's
                            // partial usage keeps its shape.
                            if let (Some(x), true) = (&self.input, u.contains_key(input_key)) {
                                u.insert(input_key.into(), x.clone());
                            }
                            if let (Some(x), true) = (&self.output, u.contains_key(output_key)) {
                                u.insert(output_key.into(), x.clone());
                            }
                            if let (Some(x), true) = (&self.cost, openai) {
                                u.insert("cost".into(), x.clone());
                            }
                        }
                        continue;
                    }
                    if matches!(k.as_str(), "finish_reason" | "stop_reason" | "finishReason")
                        && !child.is_null()
                    {
                        if let Some(f) = &self.finish {
                            *child = Value::String(f.clone());
                        }
                        continue;
                    }
                    self.walk(child, usage_key, input_key, output_key, openai);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item, usage_key, input_key, output_key, openai);
                }
            }
            _ => {}
        }
    }

    /// [`Hostile::apply`] to one SSE frame (`event: …\ndata: {json}\n\n`).
    pub(crate) fn apply_frame(&self, api: Api, frame: String) -> String {
        if self.is_empty() {
            return frame;
        }
        if api == Api::Ollama {
            // A frame is one JSON line.
            return match serde_json::from_str::<Value>(frame.trim_end()) {
                Ok(mut v) => {
                    self.apply(api, &mut v);
                    format!("{v}\n")
                }
                Err(_) => frame,
            };
        }
        let mut out = String::with_capacity(frame.len());
        for line in frame.split_inclusive('\n') {
            let patched = line
                .strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d.trim_end()).ok())
                .map(|mut v| {
                    self.apply(api, &mut v);
                    format!("data: {v}\n")
                });
            out.push_str(patched.as_deref().unwrap_or(line));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lies_land_in_each_flavours_own_fields() {
        let h = Hostile::default()
            .input(json!(-3))
            .output(json!(u64::MAX))
            .cost(json!(-1.0))
            .finish("SAFETY");
        let mut openai = json!({"choices": [{"finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}});
        h.apply(Api::OpenAi, &mut openai);
        assert_eq!(openai["usage"]["prompt_tokens"], -3);
        assert_eq!(openai["usage"]["completion_tokens"], u64::MAX);
        assert_eq!(openai["usage"]["cost"], -1.0);
        assert_eq!(openai["choices"][0]["finish_reason"], "SAFETY");
        let mut gemini = json!({"candidates": [{"finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2}});
        h.apply(Api::Gemini, &mut gemini);
        assert_eq!(gemini["usageMetadata"]["candidatesTokenCount"], u64::MAX);
        assert!(gemini["usageMetadata"].get("cost").is_none());
        assert_eq!(gemini["candidates"][0]["finishReason"], "SAFETY");
        // A stream event: only the counts it carries, null finishes stay.
        let frame = "event: message_delta\ndata: {\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n";
        let out = h.apply_frame(Api::Anthropic, frame.to_string());
        assert!(out.starts_with("event: message_delta\ndata: "), "{out}");
        assert!(out.ends_with("\n\n"), "{out}");
        assert!(
            out.contains(&format!("\"output_tokens\":{}", u64::MAX)),
            "{out}"
        );
        assert!(!out.contains("input_tokens"), "{out}");
        assert!(out.contains("\"stop_reason\":\"SAFETY\""), "{out}");
    }
}
