//! How a run behaves ([`RunOptions`]) and its place in the journal
//! ([`RunJournal`]).

use std::sync::Arc;
use std::time::Duration;

use super::batch;
use crate::journal::BatchLedger;
use crate::journal::Journal;

/// How a run behaves; the defaults suit interactive use.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Calls in flight at once across the whole run.
    pub concurrency: usize,
    /// The whole run; when it passes, in-flight calls are cancelled.
    pub run_timeout: Option<Duration>,
    /// One call, when the step sets no `timeout`.
    pub call_timeout: Duration,
    /// Retries per model when the step sets no `retries`.
    pub retries: u32,
    /// First backoff delay and its cap (exponential, with jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A provider asking to wait longer than this is treated as down for this
    /// call: the next candidate is tried instead of sleeping.
    pub max_retry_wait: Duration,
    /// Stream answers (gives time to first token).
    pub stream: bool,
    /// Where managed local servers write their logs.
    pub log_dir: std::path::PathBuf,
    /// Send every step whose model has a batch API through it, not only
    /// `latency: batch` steps (`run --batch`).
    pub batch_all: bool,
    /// How often a submitted batch is polled.
    pub batch_poll_interval: Duration,
    /// Where submitted batches are remembered, so an interrupted run
    /// resumes polling them; `None`: not remembered.
    pub batch_ledger: Option<Arc<dyn BatchLedger>>,
    /// The run journal: resume, the response cache, budgets over time.
    /// `None` runs without any of them (library use, `tollgate test`).
    pub journal: Option<RunJournal>,
    /// The run's final answer, streamed as it arrives (`run` on a
    /// terminal); `None`: answers are only returned.
    pub final_answer: Option<FinalAnswer>,
}

/// Where the text of one step's call goes as the provider streams it.
///
/// Only a call whose text is the answer as it will be returned is
/// streamed: the step's one call (not a fan-out, no output schema — a
/// structured answer may be asked again), never a cascade's first leg (it
/// may escalate); the escalation leg is. Each attempt (a retry, a fallback,
/// the escalation) is announced before its text, so the sink can mark
/// where a broken answer was given up.
#[derive(Clone)]
pub struct FinalAnswer {
    /// The step whose call is streamed.
    pub step: String,
    pub sink: Arc<dyn AnswerSink>,
}

impl std::fmt::Debug for FinalAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalAnswer")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// The receiving end of [`FinalAnswer`]. Called from the call's task as
/// the stream is read: keep it quick.
pub trait AnswerSink: Send + Sync {
    /// An attempt on `model` is about to be sent; its text follows.
    fn attempt(&self, model: &str);
    /// A piece of the attempt's text (scrubbed of keys by the provider).
    fn text(&self, piece: &str);
}

/// A run's place in the journal.
#[derive(Debug, Clone)]
pub struct RunJournal {
    pub journal: Arc<Journal>,
    /// From [`Journal::begin_run`]; calls this run (or an earlier session of
    /// it) finished are answered from the journal, not sent again.
    pub run_id: String,
    /// Serve identical requests answered within this long from the journal;
    /// `None` sends every call (`--no-cache`, `cache: {ttl: 0}`).
    pub cache_ttl: Option<Duration>,
    /// Whether the run ends only once every record it queued is committed
    /// (`run`: a resume reads them). `false` for a test case: nothing
    /// resumes it, and the suite's journal commits what is left as it
    /// closes, so a case does not wait for the disk; its paid answers are
    /// still committed before their calls return.
    pub durable_at_end: bool,
    /// The first journal write of this run that failed. The run's events
    /// say so too ([`super::Event::JournalError`]); this is for a caller
    /// that listens to none — a test case, which reports it as errored
    /// rather than let a lost record (paid spend among them) pass unseen.
    pub failed: Arc<std::sync::OnceLock<String>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 16,
            run_timeout: None,
            call_timeout: Duration::from_secs(600),
            retries: 2,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            max_retry_wait: Duration::from_secs(60),
            stream: true,
            log_dir: std::path::PathBuf::from(".tollgate/logs"),
            batch_all: false,
            batch_poll_interval: batch::DEFAULT_POLL_INTERVAL,
            batch_ledger: None,
            journal: None,
            final_answer: None,
        }
    }
}
