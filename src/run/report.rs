//! What a run reports: the [`Event`]s the reporter hears while it goes on,
//! and the [`RunReport`] at the end (steps, calls, attempts, costs), with
//! the vocabulary of their outcomes and statuses as enums. Their serialised
//! forms (JSON output, the journal's text columns) are the snake_case words
//! `as_str` gives.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Calls, Output};
pub use crate::outcome::{AttemptOutcome, UnknownOutcome};
use crate::plan::CostRange;
use crate::provider::Usage;

/// What the reporter hears while a run goes on.
#[derive(Debug, Clone)]
pub enum Event {
    StepStarted {
        step: String,
        model: String,
        calls: usize,
    },
    Retrying {
        step: String,
        model: String,
        attempt: u32,
        wait: Duration,
        error: String,
    },
    FallingBack {
        step: String,
        from: String,
        to: String,
        reason: String,
    },
    /// A cascade's first answer failed its check: the call goes to `to`.
    Escalating {
        step: String,
        from: String,
        to: String,
        reason: String,
    },
    StepFinished {
        step: String,
        status: StepStatus,
        cost_usd: f64,
    },
    /// A step's batch was submitted, resumed, or changed state when polled
    /// (`status` is the provider's word, or `submitted` / `resumed`).
    BatchProgress {
        step: String,
        provider: String,
        batch_id: String,
        status: String,
        /// Requests finished so far, of `total` (0 of 0 when unknown).
        done: u64,
        total: u64,
    },
    /// A call waits: the daily or monthly budget has room for it only once
    /// other processes' calls in flight settle.
    WaitingForBudget { step: String, model: String },
    /// The journal could not be written: the run goes on, but what this
    /// write held cannot be resumed or reported.
    JournalError { message: String },
    /// A managed local server was started (or found running); `provider`
    /// is the server's [`crate::policy::Launch::id`] (a pool's names its
    /// port).
    ServerReady {
        provider: String,
        command: Option<String>,
        ready_after: Duration,
    },
    /// One of a pool's launched servers would not start: the pool goes on
    /// with the `up` of its `of` servers that did.
    ServerFailed {
        server: String,
        error: String,
        up: usize,
        of: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
    /// A step it depends on failed.
    DependencyFailed,
    /// Stopped by Ctrl-C or the run timeout.
    Cancelled,
    /// Never started (the run stopped first).
    NotStarted,
}

impl StepStatus {
    /// The journal's and the JSON report's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::DependencyFailed => "dependency_failed",
            StepStatus::Cancelled => "cancelled",
            StepStatus::NotStarted => "not_started",
        }
    }

    /// The summary's word for it.
    pub fn name(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "ok",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::DependencyFailed => "dependency failed",
            StepStatus::Cancelled => "cancelled",
            StepStatus::NotStarted => "not started",
        }
    }
}

/// One try of one call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub model: String,
    pub outcome: AttemptOutcome,
    pub status: Option<u16>,
    pub message: Option<String>,
    /// How long the run waited before the next try.
    pub waited_ms: Option<u64>,
}

/// Where a call's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSource {
    /// Sent to the model (or not answered at all).
    Provider,
    /// An identical request's answer from the journal: free.
    Cache,
    /// Finished by an earlier session of this run (`--resume`): not sent again.
    Journal,
}

/// Deserialised only from a step's own spill ([`super::Calls`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReport {
    /// Index in `for_each`, if any.
    pub item: Option<usize>,
    pub source: CallSource,
    /// For a cache hit: what the answer cost when it was bought.
    pub saved_usd: f64,
    pub model: Option<String>,
    pub attempts: Vec<Attempt>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// The same tokens at list price (standard, uncached): `list_cost_usd -
    /// cost_usd` is what prompt caching and batching saved.
    pub list_cost_usd: f64,
    /// Answered through the provider's batch API.
    pub batch: bool,
    /// Wall time of the call, from its first try to its answer: queueing,
    /// the model's time, backoff between tries.
    pub latency_ms: u64,
    /// Of that, time spent waiting to be sent: for a concurrency slot, the
    /// rate limits (RPM/TPM) and room in the budget — the run's doing, not
    /// the model's.
    pub queued_ms: u64,
    /// Of that, time inside the provider's calls (every try): the model's
    /// own latency. A batch's is its time from submission to results.
    pub call_ms: u64,
    /// The latency the provider's answer carries: measured live, as
    /// recorded in replay (where `call_ms` is the replay's own few
    /// microseconds). What `compare` reports as model time per task; not
    /// in the run's JSON, which has `call_ms` (nor in a spilled report:
    /// the step's sum is taken as the report arrives).
    #[serde(skip)]
    pub model_ms: u64,
    pub ttft_ms: Option<u64>,
    /// The answer stopped at `max_output_tokens` (or the model's limit).
    pub truncated: bool,
    /// The call was meant for a batch but was answered synchronously (the
    /// batch failed, expired or gave no valid answer for it): it paid full
    /// price, `lost_discount_usd` more than at batch prices.
    pub batch_fallback: bool,
    pub lost_discount_usd: f64,
    /// The call escalated: its first answer failed the cascade's check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
}

/// A call a cascade escalated: from the model whose answer failed the
/// check, to the model that was called next, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub rule: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

impl CallReport {
    pub(super) fn empty(item: Option<usize>) -> CallReport {
        CallReport {
            item,
            source: CallSource::Provider,
            saved_usd: 0.0,
            model: None,
            attempts: Vec::new(),
            usage: Usage::default(),
            cost_usd: 0.0,
            list_cost_usd: 0.0,
            batch: false,
            latency_ms: 0,
            queued_ms: 0,
            call_ms: 0,
            model_ms: 0,
            ttft_ms: None,
            truncated: false,
            batch_fallback: false,
            lost_discount_usd: 0.0,
            escalation: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub id: String,
    pub status: StepStatus,
    /// The error, or why the step was skipped.
    pub detail: Option<String>,
    /// A failure that `continue_on_error` let through.
    pub ignored_failure: bool,
    /// The model alias that answered (the last one of a fan-out).
    pub model: Option<String>,
    pub provider_model: Option<String>,
    pub rule: Option<String>,
    /// In item order; spilled to a temporary file for a large fan-out.
    pub calls: Calls,
    pub usage: Usage,
    pub cost_usd: f64,
    /// See [`CallReport::list_cost_usd`].
    pub list_cost_usd: f64,
    /// Wall time of the step.
    pub latency_ms: u64,
    /// Its calls' [`CallReport::queued_ms`] and [`CallReport::call_ms`],
    /// summed (calls of a fan-out overlap, so these can exceed the wall
    /// time).
    pub queued_ms: u64,
    pub call_ms: u64,
    /// Its calls' [`CallReport::model_ms`], summed.
    #[serde(skip)]
    pub model_ms: u64,
    pub ttft_ms: Option<u64>,
    /// What the step answered (a list in item order for a fan-out); a large
    /// fan-out's that no step reads is spilled to a temporary file.
    pub output: Option<Output>,
    /// What a learned router reads of the step ([`crate::router::text`]),
    /// when the step made exactly one call: `compare` keeps it per case so
    /// `router train` can learn from it. Not part of the run's JSON.
    #[serde(skip)]
    pub router_text: Option<String>,
}

impl StepReport {
    pub(crate) fn new(id: &str, status: StepStatus, detail: Option<String>) -> StepReport {
        StepReport {
            id: id.to_owned(),
            status,
            detail,
            ignored_failure: false,
            model: None,
            provider_model: None,
            rule: None,
            calls: Calls::default(),
            usage: Usage::default(),
            cost_usd: 0.0,
            list_cost_usd: 0.0,
            latency_ms: 0,
            queued_ms: 0,
            call_ms: 0,
            model_ms: 0,
            ttft_ms: None,
            output: None,
            router_text: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunStatus {
    /// The journal's and the JSON report's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The journal's id for the run (`--resume` takes it).
    pub run_id: Option<String>,
    pub workflow: String,
    pub policy: String,
    pub status: RunStatus,
    pub steps: Vec<StepReport>,
    pub cost_usd: f64,
    /// The run's tokens at list price (standard, uncached).
    pub list_cost_usd: f64,
    /// Input tokens read from prompt caches, over the run.
    pub cached_input_tokens: u64,
    /// `list_cost_usd` minus what the answered calls cost: the saving of
    /// prompt caching and batch prices (negative if cache writes were never
    /// read back).
    pub saving_usd: f64,
    pub estimate: CostRange,
    pub budget_usd: Option<f64>,
    pub elapsed_ms: u64,
    pub cache: CacheSummary,
    /// Calls finished by earlier sessions of this run, not sent again.
    pub resumed_calls: u64,
    /// What earlier sessions of this run spent (not in `cost_usd`).
    pub earlier_cost_usd: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CacheSummary {
    pub hits: u64,
    pub saved_usd: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialise_as_their_words() {
        for s in [
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped,
            StepStatus::DependencyFailed,
            StepStatus::Cancelled,
            StepStatus::NotStarted,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::TimedOut,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
