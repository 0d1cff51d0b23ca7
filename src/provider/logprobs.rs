//! Token logprobs, read from an answer boundedly into one figure: their
//! mean (the `low_confidence` check of a cascade).
//!
//! Shapes read (asked for with `logprobs` in the request):
//! - OpenAI chat, and llama.cpp's and vLLM's chat routes:
//!   `choices[0].logprobs.content[].logprob` (in a stream, per chunk);
//! - the legacy completions route (OpenAI, vLLM, older llama.cpp):
//!   `choices[0].logprobs.token_logprobs[]`;
//! - llama.cpp's own shape: top-level `completion_probabilities[]`, each
//!   with `logprob`, or (older servers) `probs[]` of `{tok_str, prob}` where
//!   the chosen token is the one equal to `content`.
//!
//! Nothing a server sends can make this fail the call: a value that is not
//! a finite number at most 0, or more entries than any answer has tokens,
//! makes the figure [`Logprobs::Unusable`] with the reason; each value is
//! clamped at [`FLOOR`] so a huge negative one cannot drown the mean in
//! `-inf`. Only a running sum is kept, never the array.

use serde::Serialize;
use serde_json::Value;

/// The most token logprobs one answer may carry; beyond, the figure is
/// unusable (no answer tollgate asks for is that long).
pub const MAX_TOKENS: u64 = 1 << 17;

/// The lowest logprob counted: e^-100 is "impossible" already.
pub const FLOOR: f64 = -100.0;

/// What an answer's logprobs say.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "logprobs")]
pub enum Logprobs {
    /// The mean logprob over `tokens` generated tokens.
    Mean { mean: f64, tokens: u64 },
    /// The server sent logprobs that cannot be believed: why.
    Unusable { why: &'static str },
}

/// A running mean over the entries seen so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accumulator {
    sum: f64,
    n: u64,
    bad: Option<&'static str>,
    seen: bool,
}

impl Accumulator {
    /// Adds whatever logprobs one response body (or one stream chunk) holds.
    pub fn add_from(&mut self, body: &Value) {
        let choice = body.pointer("/choices/0/logprobs");
        if let Some(content) = choice.and_then(|l| l.get("content")) {
            self.each(content, |e| e.get("logprob"));
        } else if let Some(tokens) = choice.and_then(|l| l.get("token_logprobs")) {
            self.each(tokens, Some);
        }
        if let Some(probs) = body.get("completion_probabilities") {
            self.each(probs, |e| e.get("logprob"));
            // Older llama.cpp: the chosen token's probability among `probs`.
            if let Some(list) = probs.as_array() {
                if list.first().is_some_and(|e| e.get("logprob").is_none()) {
                    self.each_prob(list);
                }
            }
        }
    }

    fn each<'v>(&mut self, list: &'v Value, pick: impl Fn(&'v Value) -> Option<&'v Value>) {
        self.seen = true;
        let Some(list) = list.as_array() else {
            if !list.is_null() {
                self.bad.get_or_insert("logprobs that are not a list");
            }
            return;
        };
        for e in list {
            match pick(e) {
                // The legacy route's first entry may be null (with echo).
                Some(Value::Null) => {}
                Some(v) => self.push(v.as_f64()),
                None => {}
            }
            if self.bad.is_some() {
                return;
            }
        }
    }

    fn each_prob(&mut self, list: &[Value]) {
        for e in list {
            let chosen = e.get("content").and_then(Value::as_str);
            let p = e
                .get("probs")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter()
                        .take(64)
                        .find(|p| p.get("tok_str").and_then(Value::as_str) == chosen)
                })
                .and_then(|p| p.get("prob"))
                .and_then(Value::as_f64);
            match p {
                Some(p) if p > 0.0 && p <= 1.0 => self.push(Some(p.ln())),
                Some(_) => self.push(None),
                // The chosen token is not among the candidates shown.
                None => self.push(Some(FLOOR)),
            }
            if self.bad.is_some() {
                return;
            }
        }
    }

    fn push(&mut self, v: Option<f64>) {
        if self.bad.is_some() {
            return;
        }
        if self.n >= MAX_TOKENS {
            self.bad = Some("more token logprobs than an answer has tokens");
            return;
        }
        match v {
            // A logprob is at most 0 (a little rounding above is tolerated).
            Some(v) if v.is_finite() && v <= 1e-6 => {
                self.sum += v.clamp(FLOOR, 0.0);
                self.n += 1;
            }
            Some(_) => self.bad = Some("a logprob that is not a number at most 0"),
            None => self.bad = Some("a logprob that is not a number"),
        }
    }

    /// The figure: `None` when the answer carried no logprobs at all.
    pub fn finish(self) -> Option<Logprobs> {
        if let Some(why) = self.bad {
            return Some(Logprobs::Unusable { why });
        }
        if !self.seen {
            return None;
        }
        if self.n == 0 {
            return Some(Logprobs::Unusable {
                why: "an empty list of logprobs",
            });
        }
        Some(Logprobs::Mean {
            mean: self.sum / self.n as f64,
            tokens: self.n,
        })
    }
}

/// The logprobs of one whole response body.
pub fn of_body(body: &Value) -> Option<Logprobs> {
    let mut acc = Accumulator::default();
    acc.add_from(body);
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mean(v: Value) -> f64 {
        match of_body(&v) {
            Some(Logprobs::Mean { mean, .. }) => mean,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_shape_gives_the_mean() {
        let openai = json!({"choices": [{"logprobs": {"content": [
            {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []},
            {"token": "b", "logprob": -1.5, "bytes": [98], "top_logprobs": []}]}}]});
        assert!((mean(openai) + 1.0).abs() < 1e-9);
        let legacy = json!({"choices": [{"logprobs": {"tokens": ["a", "b"], "token_logprobs": [null, -2.0, -1.0]}}]});
        assert!((mean(legacy) + 1.5).abs() < 1e-9);
        let llama =
            json!({"completion_probabilities": [{"id": 1, "token": "a", "logprob": -0.25}]});
        assert!((mean(llama) + 0.25).abs() < 1e-9);
        let old_llama = json!({"completion_probabilities": [
            {"content": "a", "probs": [{"tok_str": "b", "prob": 0.5}, {"tok_str": "a", "prob": 0.25}]}]});
        assert!((mean(old_llama) - 0.25f64.ln()).abs() < 1e-9);
        assert_eq!(of_body(&json!({"choices": [{"logprobs": null}]})), None);
    }

    #[test]
    fn hostile_logprobs_are_unusable_never_an_error() {
        for (body, why) in [
            (
                json!({"choices": [{"logprobs": {"content": [{"logprob": "NaN"}]}}]}),
                "not a number",
            ),
            (
                json!({"choices": [{"logprobs": {"content": [{"logprob": 3.0}]}}]}),
                "at most 0",
            ),
            (
                json!({"choices": [{"logprobs": {"content": 7}}]}),
                "not a list",
            ),
            (json!({"choices": [{"logprobs": {"content": []}}]}), "empty"),
        ] {
            match of_body(&body) {
                Some(Logprobs::Unusable { why: w }) => assert!(w.contains(why), "{w}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        // Huge arrays: the count is bounded, nothing is kept.
        let huge: Vec<Value> = (0..MAX_TOKENS + 5)
            .map(|_| json!({"logprob": -0.1}))
            .collect();
        assert!(matches!(
            of_body(&json!({"choices": [{"logprobs": {"content": huge}}]})),
            Some(Logprobs::Unusable { .. })
        ));
        // A huge negative value is clamped, never -inf.
        let m = mean(
            json!({"choices": [{"logprobs": {"content": [{"logprob": -1e308}, {"logprob": -1e308}]}}]}),
        );
        assert_eq!(m, FLOOR);
    }
}
