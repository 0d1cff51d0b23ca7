//! Structured output: an answer parsed as JSON (a Markdown fence around it
//! tolerated) and validated against the step's output schema.

use serde_json::Value;

/// Why an answer is not the step's output. The message is the call's
/// error as users read it (worded as before this type existed).
#[derive(Debug, thiserror::Error)]
pub enum InvalidOutput {
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    /// Each way the value breaks the schema (never empty), as
    /// [`schema_errors`] words them.
    #[error("{}", .0.join("; "))]
    Schema(Vec<String>),
}

/// Parses an answer as JSON (tolerating a Markdown code fence around it) and
/// validates it.
pub(super) fn parse_structured(
    text: &str,
    validator: &jsonschema::Validator,
) -> Result<Value, InvalidOutput> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|x| x.strip_suffix("```"))
        .map_or(t, str::trim);
    let value: Value = match serde_json::from_str(t) {
        Ok(v) => v,
        // A bare word for a string schema (`bug`) is what small models say.
        Err(_) if validator.is_valid(&Value::String(t.to_owned())) => {
            return Ok(Value::String(t.to_owned()));
        }
        Err(e) => return Err(InvalidOutput::NotJson(e)),
    };
    let errors = schema_errors(validator, &value);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(InvalidOutput::Schema(errors))
    }
}

/// Each way a value breaks a schema, prefixed with where (`/label: …`).
pub(crate) fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| {
            let at = e.instance_path().as_str().to_owned();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect()
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_answers_are_parsed_and_validated() {
        let v = jsonschema::validator_for(&json!({"type": "object", "required": ["label"], "properties": {"label": {"enum": ["bug", "feature"]}}})).unwrap();
        assert_eq!(
            parse_structured("```json\n{\"label\": \"bug\"}\n```", &v).unwrap(),
            json!({"label": "bug"})
        );
        assert!(
            parse_structured("{\"label\": \"nope\"}", &v)
                .unwrap_err()
                .to_string()
                .contains("/label")
        );
        assert!(
            parse_structured("bug", &v)
                .unwrap_err()
                .to_string()
                .starts_with("not JSON")
        );
        let s = jsonschema::validator_for(&json!({"type": "string", "enum": ["bug", "feature"]}))
            .unwrap();
        assert_eq!(parse_structured(" bug\n", &s).unwrap(), json!("bug"));
        assert_eq!(
            parse_structured("\"feature\"", &s).unwrap(),
            json!("feature")
        );
    }
}
