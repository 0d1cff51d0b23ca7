//! Conversation history: an input of chat messages (`type: messages`) that
//! a step sends as real turns before its prompt, keeping the last
//! `keep_last` of them; with `summarize_older`, the older turns are replaced
//! by one message holding a summary written by a generated step
//! (`<step>__history`, task `summarize`, routed by the policy like any
//! step, its output at the history's label).
//!
//! A value is a JSON list of `{role, content}`, or JSON Lines of the same
//! (what chat exports usually are). `system` messages are not turns: they
//! are added to the step's system prompt, in order.

use serde::Serialize;
use serde_json::Value;

/// At most this many messages in one history.
pub const MAX_MESSAGES: usize = 10_000;

/// The suffix of the generated summary step's id (`answer__history`).
pub const SUMMARY_SUFFIX: &str = "__history";

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// A validated history: `Err` says which message is wrong and how.
pub fn parse(value: &Value) -> Result<Vec<ChatMessage>, String> {
    let Value::Array(items) = value else {
        return Err("expected a list of messages {role, content}".to_owned());
    };
    if items.len() > MAX_MESSAGES {
        return Err(format!(
            "{} messages, more than {MAX_MESSAGES}",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let o = m
                .as_object()
                .ok_or_else(|| format!("message {i} is not an object {{role, content}}"))?;
            if let Some(k) = o.keys().find(|k| *k != "role" && *k != "content") {
                return Err(format!("message {i} has an unknown field `{k}`"));
            }
            let role = match o.get("role").and_then(Value::as_str) {
                Some("system") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some(other) => {
                    return Err(format!(
                        "message {i} has role `{other}`: roles are system, user and assistant"
                    ));
                }
                None => return Err(format!("message {i} has no string `role`")),
            };
            let content = o
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("message {i} has no string `content`"))?;
            Ok(ChatMessage {
                role,
                content: content.to_owned(),
            })
        })
        .collect()
}

/// Text typed by a user (a flag, a file) as a history: a JSON list, else
/// JSON Lines (blank lines ignored). `Err` names the line.
pub fn parse_text(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start();
    let value = if trimmed.starts_with('[') {
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?
    } else {
        let mut list = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if list.len() >= MAX_MESSAGES {
                return Err(format!("more than {MAX_MESSAGES} messages"));
            }
            list.push(
                serde_json::from_str(line)
                    .map_err(|e| format!("line {}: not valid JSON: {e}", i + 1))?,
            );
        }
        Value::Array(list)
    };
    parse(&value)?;
    Ok(value)
}

/// A history cut for sending: the system messages, the older turns (to be
/// summarized or dropped) and the last `keep_last` turns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    pub system: Vec<String>,
    pub older: Vec<ChatMessage>,
    pub recent: Vec<ChatMessage>,
}

/// What a step's `history` did to its turns, for the plan: how many were
/// sent as they are, summarized or dropped, and their tokens before and
/// after (the summary's in place of the older turns').
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub turns: usize,
    pub sent: usize,
    pub summarized: usize,
    pub dropped: usize,
    pub tokens_before: u64,
    pub tokens_after: u64,
}

/// Splits a history: system messages apart, the last `keep_last` turns
/// (all of them without a limit) recent, the rest older.
pub fn window(messages: Vec<ChatMessage>, keep_last: Option<usize>) -> Window {
    let (system, mut turns): (Vec<_>, Vec<_>) =
        messages.into_iter().partition(|m| m.role == Role::System);
    let keep = keep_last.unwrap_or(turns.len()).min(turns.len());
    let recent = turns.split_off(turns.len() - keep);
    Window {
        system: system.into_iter().map(|m| m.content).collect(),
        older: turns,
        recent,
    }
}

/// The id of the summary step generated for step `step`.
pub fn summary_step_id(step: &str) -> String {
    format!("{step}{SUMMARY_SUFFIX}")
}

/// Is `id` a generated summary step? (Workflows may not end a step id with
/// [`SUMMARY_SUFFIX`], so only generated ones do.)
pub fn is_summary_step(id: &str) -> bool {
    id.ends_with(SUMMARY_SUFFIX)
}

/// The generated summary step of a history over input `input` keeping
/// `keep_last` turns, as a workflow would write it: task `summarize`, tag
/// `context-summary` (for a policy's rules), light reasoning, temperature 0,
/// pinned to `model` if given. Temperature 0 because the summary stands in
/// for the turns themselves: the same history should give the same summary
/// (and so the same request downstream, which the cache, recordings and
/// resume identify by hash), whatever the step that reads it samples at. It runs only when there are older turns (a skipped
/// summary step does not skip the step that reads it); it reads the input,
/// so its output carries the history's label.
pub fn summary_step(input: &str, keep_last: usize, model: Option<&str>) -> Value {
    let turns = format!("(inputs.{input} | rejectattr('role', 'eq', 'system') | list)");
    let prompt = format!(
        "Summarize this conversation in a few sentences. Keep names, numbers, decisions and open questions; write only the summary.\n\n\
{{% set turns = {turns} %}}{{% for m in turns[:(turns | length) - {keep_last}] %}}{{{{ m.role }}}}: {{{{ m.content }}}}\n{{% endfor %}}"
    );
    let mut step = serde_json::json!({
        "task": "summarize",
        "description": "summary of the history's older turns (generated)",
        "prompt": prompt,
        "when": format!("({turns} | length) > {keep_last}"),
        "reasoning": "light",
        "temperature": 0,
        "tags": ["context-summary"],
        "max_output_tokens": 400,
        "expected_output_tokens": 150,
    });
    if let Some(m) = model {
        step["model"] = Value::String(m.to_owned());
    }
    step
}

/// The message that stands for the older turns in the step's request.
pub fn summary_message(summary: &str) -> String {
    format!("Summary of the earlier conversation:\n{summary}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_every_message() {
        let ok =
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
        assert_eq!(parse(&ok).unwrap().len(), 2);
        let cases = [
            (json!({"role": "user"}), "expected a list"),
            (
                json!([{"role": "user", "content": "a"}, "b"]),
                "message 1 is not an object",
            ),
            (json!([{"role": "bot", "content": "a"}]), "role `bot`"),
            (json!([{"content": "a"}]), "no string `role`"),
            (
                json!([{"role": "user", "content": 3}]),
                "no string `content`",
            ),
            (
                json!([{"role": "user", "content": "a", "name": "x"}]),
                "unknown field `name`",
            ),
        ];
        for (v, want) in cases {
            let e = parse(&v).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn json_or_json_lines() {
        let lines =
            "{\"role\":\"user\",\"content\":\"a\"}\n\n{\"role\":\"assistant\",\"content\":\"b\"}\n";
        assert_eq!(parse(&parse_text(lines).unwrap()).unwrap().len(), 2);
        let e = parse_text("{\"role\":\"user\",\"content\":\"a\"}\nnope\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(parse_text("[{\"role\":\"user\",\"content\":\"a\"}]").is_ok());
    }

    #[test]
    fn keeps_the_last_turns_and_sets_system_apart() {
        let m = |role, c: &str| ChatMessage {
            role,
            content: c.into(),
        };
        let h = vec![
            m(Role::System, "s"),
            m(Role::User, "1"),
            m(Role::Assistant, "2"),
            m(Role::User, "3"),
        ];
        let w = window(h.clone(), Some(2));
        assert_eq!(w.system, ["s"]);
        assert_eq!(w.older, [m(Role::User, "1")]);
        assert_eq!(w.recent, [m(Role::Assistant, "2"), m(Role::User, "3")]);
        let w = window(h.clone(), None);
        assert!(w.older.is_empty() && w.recent.len() == 3);
        let w = window(h, Some(10));
        assert!(w.older.is_empty() && w.recent.len() == 3);
    }
}
