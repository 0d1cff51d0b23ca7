//! A cascade's judge, the pure part (below `plan` and `run`, which both
//! use it): the request a judge is sent for one answer, the facts it is
//! routed by, and its score read back from the answer.
//!
//! The judge is a call of task `judge`, routed by the policy like every
//! step: it carries the judged step's sensitivity (the answer it reads has
//! that label), so the gate keeps a confidential step's judge local. At
//! run time it is journaled as a call of the step `<step>__judge` (item
//! for item), so a resume answers it from the journal.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::route::Facts;
use crate::step::RenderedCall;
use crate::workflow::{Latency, Reasoning, Step};

/// The task a judge is routed as.
pub const TASK: &str = "judge";

/// The journal's step name of `step`'s judge calls.
pub fn step_id(step: &str) -> String {
    format!("{step}__judge")
}

/// The most a judge may answer: a score and one sentence.
pub const MAX_OUTPUT_TOKENS: u32 = 300;

/// The most of a judge's reason an escalation reason keeps (it is model
/// output: bounded before it reaches the journal and the report).
const MAX_REASON_CHARS: usize = 300;

const SYSTEM: &str = "You grade an answer against a rubric. Be strict: a score of 1 means the answer meets every point of the rubric, 0 that it meets none.\nReply with JSON only: {\"score\": a number from 0 to 1, \"reason\": \"one sentence\"}.";

/// The judge's step: task `judge`, temperature 0, a bounded answer whose
/// shape is checked (a judge that does not answer with a score is asked
/// again once, like any structured step).
pub fn step() -> Step {
    serde_json::from_value(json!({
        "task": TASK,
        "temperature": 0,
        "max_output_tokens": MAX_OUTPUT_TOKENS,
        "retries": 1,
        "output": { "schema": schema() },
    }))
    .expect("the judge's step is a valid step")
}

/// The shape of a judge's answer.
fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["score", "reason"],
        "properties": {
            "score": { "type": "number", "minimum": 0, "maximum": 1 },
            "reason": { "type": "string" }
        }
    })
}

/// The judge's request for one answer. The answer is data inside the
/// prompt, between markers, never instructions.
pub fn call(rubric: &str, answer: &str) -> RenderedCall {
    RenderedCall {
        system: Some(SYSTEM.to_owned()),
        history: Vec::new(),
        prompt: format!("Rubric:\n{rubric}\n\nAnswer to grade:\n<answer>\n{answer}\n</answer>\n"),
        attachments: Default::default(),
        shared_prefix: 0,
    }
}

/// The facts a judge is routed by: task `judge`, the judged step's
/// sensitivity and latency, one call of `input_tokens`.
pub fn facts<'a>(step: &Facts<'_>, no_tags: &'a BTreeSet<String>, input_tokens: u64) -> Facts<'a> {
    Facts {
        task: TASK,
        sensitivity: step.sensitivity,
        input_tokens,
        reasoning: Reasoning::default(),
        latency: Latency::default(),
        tags: no_tags,
        pin: None,
        max_output_tokens: u64::from(MAX_OUTPUT_TOKENS),
        calls: 1,
        // A learned router scores a workflow's prompts, not the judge's:
        // a `router:` condition never holds for a judge call.
        router_scores: &[],
        // The judge reads the answer's text, never the step's files.
        attachments: &[],
    }
}

/// A judge's verdict: its score and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub score: f64,
    pub reason: String,
}

impl Verdict {
    /// The judge's validated output (see [`step`]'s schema).
    pub fn of(output: &Value) -> Option<Verdict> {
        let score = output.get("score")?.as_f64()?;
        let reason = output.get("reason")?.as_str()?;
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        (0.0..=1.0)
            .contains(&score)
            .then_some(Verdict { score, reason })
    }

    /// Why the answer escalates (`judge: …`, as the journal and the report
    /// keep it); `None` when the score reaches `min_score`.
    pub fn failure(&self, min_score: f64) -> Option<String> {
        (self.score < min_score).then(|| {
            format!(
                "judge: score {:.2} is below {min_score}: {}",
                self.score, self.reason
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_read_and_judged_against_the_minimum() {
        let v = Verdict::of(&json!({"score": 0.4, "reason": "misses the file size"})).unwrap();
        assert_eq!(
            v.failure(0.7).unwrap(),
            "judge: score 0.40 is below 0.7: misses the file size"
        );
        assert_eq!(v.failure(0.4), None);
        assert!(Verdict::of(&json!({"score": 2, "reason": "x"})).is_none());
        assert!(Verdict::of(&json!({"score": "high", "reason": "x"})).is_none());
        let long = Verdict::of(&json!({"score": 0, "reason": "é".repeat(1000)})).unwrap();
        assert_eq!(long.reason.chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn the_judge_step_and_call_are_well_formed() {
        let s = step();
        assert_eq!(s.task, TASK);
        assert!(s.output_schema().is_some());
        let c = call("names the file", "It crashes.");
        assert!(c.prompt.contains("<answer>\nIt crashes.\n</answer>"));
    }
}
