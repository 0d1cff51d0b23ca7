//! Why a call of a step got no answer: the run layer's error types.
//!
//! Every message is worded exactly as before these types existed, when the
//! run layer's errors were strings: it becomes a step's `detail`, an
//! attempt's message and a journal row, which reports, snapshots and JSON
//! output carry. Text is made only at those boundaries (`to_string()`).

use std::sync::Arc;
use std::time::Duration;

use super::budget::OverBudget;
use super::local_server::ServerError;
use super::validate::InvalidOutput;
use crate::provider::{ErrorKind, ProviderError};
use crate::route::{PassedOver, Refusal};

/// Why one candidate of a call's fallback chain gave no answer: passed over
/// before it was called, or called and failed. Every message starts with
/// the candidate's alias (a [`Refusal`] names it itself).
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// The sensitivity gate: a cloud model, the step above `cloud_max`.
    #[error("{alias}: cloud model, and the step is {level} (above cloud_max {cloud_max})")]
    Gated {
        alias: String,
        level: String,
        cloud_max: String,
    },
    /// A fallback that fails a check the routed model passed.
    #[error("{alias}: {why}")]
    DoesNotFit { alias: String, why: PassedOver },
    /// Its provider has no client: the key's variable is not set.
    #[error("{alias}: no API key ({var} is not set)")]
    NoKey { alias: String, var: String },
    /// Its local server could not be started (shared by every call that
    /// waited for the same start).
    #[error("{alias}: {source}")]
    Server {
        alias: String,
        source: Arc<ServerError>,
    },
    /// Refused at the provider boundary: nothing was sent.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Its worst case does not fit a budget: not called.
    #[error("{alias}: not called — {over}")]
    OverBudget { alias: String, over: OverBudget },
    /// The answer did not match the output schema, after the schema retry.
    #[error(
        "{alias}: the answer does not match the output schema: {why}; the answer was: {answer}"
    )]
    InvalidOutput {
        alias: String,
        why: InvalidOutput,
        /// The answer's start (`validate::truncate`), to show what it said.
        answer: String,
    },
    /// A cascade's first answer failed its check: the call escalates.
    #[error("{alias}: the answer failed the cascade's check ({reason}); escalating to {to}")]
    Escalate {
        alias: String,
        to: String,
        reason: String,
    },
    /// The provider failed, for good or out of retries.
    #[error("{alias}: {error}")]
    Provider { alias: String, error: ProviderError },
    /// The provider asked to wait longer than `max_retry_wait` allows.
    #[error(
        "{alias}: {error} (asked to wait {}s; trying the next model)",
        wait.as_secs()
    )]
    WaitTooLong {
        alias: String,
        error: ProviderError,
        wait: Duration,
    },
}

impl CandidateError {
    /// The prompt did not fit the model's window: only larger windows are
    /// worth trying next.
    pub fn context_length(&self) -> bool {
        matches!(self, CandidateError::Provider { error, .. } if error.kind == ErrorKind::ContextLength)
    }
}

/// Why a call of a step got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The chain held no model that could be tried at all (each unknown,
    /// or with a window already known to be too small).
    #[error("no candidate model could be tried")]
    NoCandidate,
    /// Each candidate's reason, the real failures first: a local call's
    /// HTTP 500 is the cause, not the gate that kept its fallbacks away.
    /// Never empty.
    #[error("{}", join(.0))]
    Candidates(Vec<CandidateError>),
    /// The call's batch is at the provider (and billed) but its answers
    /// could not be fetched; `why` is the batch layer's reason.
    #[error(
        "{why}; the batch stays at the provider — `tollgate run --resume` collects its answers"
    )]
    BatchStranded { why: String },
}

fn join(errors: &[CandidateError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_worded_as_before() {
        let no_key = CandidateError::NoKey {
            alias: "opus".into(),
            var: "ANTHROPIC_API_KEY".into(),
        };
        let gated = CandidateError::Gated {
            alias: "haiku".into(),
            level: "confidential".into(),
            cloud_max: "internal".into(),
        };
        assert_eq!(
            CallError::Candidates(vec![no_key, gated]).to_string(),
            "opus: no API key (ANTHROPIC_API_KEY is not set); haiku: cloud model, and the step is confidential (above cloud_max internal)"
        );
        assert_eq!(
            CallError::NoCandidate.to_string(),
            "no candidate model could be tried"
        );
        assert_eq!(
            CallError::BatchStranded {
                why: "batch b-1: state unreadable".into()
            }
            .to_string(),
            "batch b-1: state unreadable; the batch stays at the provider — `tollgate run --resume` collects its answers"
        );
    }
}
