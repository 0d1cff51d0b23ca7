//! What a run reports: the [`Event`]s the reporter hears while it goes on,
//! and the [`RunReport`] at the end (steps, calls, attempts, costs), with
//! the vocabulary of their outcomes and statuses as enums. Their serialised
//! forms (JSON output, the journal's text columns) are the snake_case words
//! `as_str` gives.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::plan::CostRange;
use crate::provider::{ErrorKind, Usage};

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
    /// A managed local server was started (or found running).
    ServerReady {
        provider: String,
        command: Option<String>,
        ready_after: Duration,
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
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub model: String,
    pub outcome: AttemptOutcome,
    pub status: Option<u16>,
    pub message: Option<String>,
    /// How long the run waited before the next try.
    pub waited_ms: Option<u64>,
}

/// How one try of one call ended. Serialised (JSON reports, the journal's
/// `outcome` column) as its snake_case word, [`AttemptOutcome::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Answered (a valid answer, or a text one).
    Ok,
    /// Answered, but the answer stopped at its length limit (journal only:
    /// the report's attempt says `ok` and the call `truncated`).
    Truncated,
    /// Answered, but the answer does not match the output schema.
    InvalidOutput,
    /// Finished by an earlier session of the run (`--resume`).
    Resumed,
    /// An identical request's answer from the response cache.
    Cached,
    /// Not sent: the provider boundary refused the request (`route::admit`).
    Refused,
    /// Not sent: its worst case does not fit the budget.
    OverBudget,
    /// The batch could not be submitted or failed as a whole.
    BatchFailed,
    /// The batch is at the provider but its answers are out of reach.
    BatchStranded,
    BatchExpired,
    BatchCancelled,
    /// The batch ended without a result for this call.
    BatchMissing,
    /// The provider (or the transport) failed, as classified.
    Error(ErrorKind),
}

/// Every error kind, for parsing. Kept complete by hand: a new kind breaks
/// the exhaustive match in [`kind_str`] first, which points here.
const ERROR_KINDS: [ErrorKind; 16] = [
    ErrorKind::RateLimited,
    ErrorKind::Overloaded,
    ErrorKind::Server,
    ErrorKind::Timeout,
    ErrorKind::Connect,
    ErrorKind::ContextLength,
    ErrorKind::Auth,
    ErrorKind::BadRequest,
    ErrorKind::NotFound,
    ErrorKind::StreamBroken,
    ErrorKind::Malformed,
    ErrorKind::Blocked,
    ErrorKind::ResponseTooLarge,
    ErrorKind::Redirect,
    ErrorKind::NotRecorded,
    ErrorKind::Other,
];

/// An error kind's word: the same as its serde form (a test checks).
fn kind_str(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Overloaded => "overloaded",
        ErrorKind::Server => "server",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Connect => "connect",
        ErrorKind::ContextLength => "context_length",
        ErrorKind::Auth => "auth",
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::NotFound => "not_found",
        ErrorKind::StreamBroken => "stream_broken",
        ErrorKind::Malformed => "malformed",
        ErrorKind::Blocked => "blocked",
        ErrorKind::ResponseTooLarge => "response_too_large",
        ErrorKind::Redirect => "redirect",
        ErrorKind::NotRecorded => "not_recorded",
        ErrorKind::Other => "other",
    }
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Truncated => "truncated",
            AttemptOutcome::InvalidOutput => "invalid_output",
            AttemptOutcome::Resumed => "resumed",
            AttemptOutcome::Cached => "cached",
            AttemptOutcome::Refused => "refused",
            AttemptOutcome::OverBudget => "over_budget",
            AttemptOutcome::BatchFailed => "batch_failed",
            AttemptOutcome::BatchStranded => "batch_stranded",
            AttemptOutcome::BatchExpired => "batch_expired",
            AttemptOutcome::BatchCancelled => "batch_cancelled",
            AttemptOutcome::BatchMissing => "batch_missing",
            AttemptOutcome::Error(kind) => kind_str(kind),
        }
    }
}

/// A word that names no outcome (the journal's column holds something else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutcome(pub String);

impl fmt::Display for UnknownOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown call outcome `{}`", self.0)
    }
}

impl std::error::Error for UnknownOutcome {}

impl FromStr for AttemptOutcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const NAMED: [AttemptOutcome; 12] = [
            AttemptOutcome::Ok,
            AttemptOutcome::Truncated,
            AttemptOutcome::InvalidOutput,
            AttemptOutcome::Resumed,
            AttemptOutcome::Cached,
            AttemptOutcome::Refused,
            AttemptOutcome::OverBudget,
            AttemptOutcome::BatchFailed,
            AttemptOutcome::BatchStranded,
            AttemptOutcome::BatchExpired,
            AttemptOutcome::BatchCancelled,
            AttemptOutcome::BatchMissing,
        ];
        NAMED
            .into_iter()
            .chain(ERROR_KINDS.into_iter().map(AttemptOutcome::Error))
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOutcome(s.to_owned()))
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AttemptOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where a call's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSource {
    /// Sent to the model (or not answered at all).
    Provider,
    /// An identical request's answer from the journal: free.
    Cache,
    /// Finished by an earlier session of this run (`--resume`): not sent again.
    Journal,
}

#[derive(Debug, Clone, Serialize)]
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
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// The answer stopped at `max_output_tokens` (or the model's limit).
    pub truncated: bool,
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
            ttft_ms: None,
            truncated: false,
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
    pub calls: Vec<CallReport>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// See [`CallReport::list_cost_usd`].
    pub list_cost_usd: f64,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub output: Option<Value>,
}

impl StepReport {
    pub(super) fn new(id: &str, status: StepStatus, detail: Option<String>) -> StepReport {
        StepReport {
            id: id.to_owned(),
            status,
            detail,
            ignored_failure: false,
            model: None,
            provider_model: None,
            rule: None,
            calls: Vec::new(),
            usage: Usage::default(),
            cost_usd: 0.0,
            list_cost_usd: 0.0,
            latency_ms: 0,
            ttft_ms: None,
            output: None,
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
    fn words_are_the_serde_forms_and_parse_back() {
        for kind in ERROR_KINDS {
            let o = AttemptOutcome::Error(kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), kind_str(kind));
            assert_eq!(o.as_str().parse::<AttemptOutcome>(), Ok(o));
        }
        for word in [
            "ok",
            "over_budget",
            "refused",
            "invalid_output",
            "batch_missing",
        ] {
            let o: AttemptOutcome = word.parse().unwrap();
            assert_eq!(serde_json::to_value(o).unwrap(), word);
        }
        assert!("server_error".parse::<AttemptOutcome>().is_err());
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
