//! What a finish reason says about an answer with no content.
//!
//! An answer can come back 200 with nothing in it because the provider
//! withheld it: a Gemini candidate stopped for `SAFETY`, `RECITATION`,
//! `PROHIBITED_CONTENT`…, an OpenAI `content_filter`, an Anthropic
//! `refusal`. Passing that on as a successful empty answer would hand an
//! empty string to the next step, and the response cache would serve it
//! again. So every client checks its answer here: no content and a finish
//! reason outside the normal ones is [`ErrorKind::Blocked`] — a failed call,
//! never cached. An empty answer that ended normally (`stop`, `end_turn`,
//! `STOP`, or the output limit) is a real (if odd) answer and stands.

use super::{ChatResponse, ErrorKind, ProviderError, ProviderKind};

/// Finish reasons of answers that ended the ordinary way (the model was
/// done, hit a stop sequence, a tool call or the output limit), compared
/// without case: every provider's spelling of them (provider-apis.md §1,
/// §3, §4; `eos` from llama.cpp-style servers).
const NORMAL: &[&str] = &[
    "stop",
    "end_turn",
    "stop_sequence",
    "eos",
    "length",
    "max_tokens",
    "model_context_window_exceeded",
    "tool_use",
    "tool_calls",
    "function_call",
    "pause_turn",
];

/// Is this a finish reason of an answer that ended the ordinary way? An
/// absent one is (many compatible servers never send it).
pub(crate) fn is_normal(reason: Option<&str>) -> bool {
    reason.is_none_or(|r| NORMAL.iter().any(|n| n.eq_ignore_ascii_case(r)))
}

/// The answer, or [`ErrorKind::Blocked`] when it has no content and did not
/// end normally. Called by every client on every answer it returns (chat,
/// stream, and the batch results, which reuse the clients' parsing).
pub(crate) fn check(kind: ProviderKind, resp: ChatResponse) -> Result<ChatResponse, ProviderError> {
    if !resp.text.is_empty() || is_normal(resp.finish_reason.as_deref()) {
        return Ok(resp);
    }
    Err(ProviderError::new(
        ErrorKind::Blocked,
        format!(
            "{}: the answer is empty and ended with finish reason \"{}\" (withheld by the provider)",
            kind.name(),
            resp.finish_reason.as_deref().unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_answers_fail_unless_they_ended_normally() {
        assert!(is_normal(None));
        for r in [
            "stop",
            "STOP",
            "end_turn",
            "MAX_TOKENS",
            "length",
            "tool_calls",
        ] {
            assert!(is_normal(Some(r)), "{r}");
        }
        for r in [
            "SAFETY",
            "RECITATION",
            "content_filter",
            "refusal",
            "OTHER",
            "PROHIBITED_CONTENT",
            "FINISH_REASON_UNSPECIFIED",
        ] {
            assert!(!is_normal(Some(r)), "{r}");
        }
    }
}
