//! Execution: runs a planned workflow against real providers.
//!
//! The executor by job:
//!
//! - `dispatch` — [`execute`] / [`execute_in`]: the dispatcher loop (one
//!   task, `tokio::select!`, cancellation polled first) starts every step
//!   whose dependencies have finished as its own task, and turns what
//!   happens into [`Event`]s and a [`RunReport`]. A failed step fails its
//!   dependants (`dependency_failed`) while independent branches finish; a
//!   step with `continue_on_error` hands its dependants a null output.
//! - `step_task` — one step: [`crate::step::expand`] with the real upstream
//!   outputs (the same function `plan` calls with estimates), routing with
//!   the real prompt (the same pure [`crate::route`] functions as `plan`,
//!   so the sensitivity gate holds), then its calls — through a batch
//!   (`batch`) or one by one.
//! - `call` — one call: resumed from the journal, or the fallback chain
//!   (the gate re-checked for every candidate, local servers started).
//! - `model_call` — one call on one model: the response cache, the gate at
//!   the provider boundary, the limits (slots, RPM, TPM), the budget (worst
//!   case reserved before), the provider with retries that honour its
//!   hints, a structured answer validated (`validate`) and asked again once.
//! - `cache` — a request's identity and hash, the response cache, the
//!   request built for a step, prompt-cache marking.
//! - `shared` — what step tasks share, and the adapters to the journal.
//! - `report` — events, step and call reports, typed outcomes and statuses.
//! - `calls` — a step's call reports in item order ([`Calls`]), spilled to
//!   a temporary file past [`IN_MEMORY`] calls, and what the summaries
//!   count over them ([`CallTally`]).
//! - `answers` — a step's [`Output`]: held, or a large fan-out's answers
//!   spilled past [`IN_MEMORY`] items when no step reads them ([`Answers`]).
//! - `by_item` — what `calls` and `answers` spill through: records by item
//!   in a [`crate::spill`] file, and the ceiling on such files open at once.
//! - `options`, `providers` — [`RunOptions`], [`Providers`].
//! - `limits`, `budget`, [`local_server`], `batch` — call limits, budget
//!   reservations, managed local servers, a `latency: batch` step's calls as
//!   one provider batch.

mod answers;
mod batch;
mod budget;
mod by_item;
mod cache;
mod call;
mod calls;
mod cascade;
mod dispatch;
mod error;
mod limits;
pub mod local_server;
mod model_call;
mod options;
mod providers;
mod report;
mod shared;
mod step_task;
mod validate;

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

pub use crate::journal::{BatchLedger, BatchRef};
pub use answers::{Answers, Output};
pub use batch::batch_key;
pub use budget::{Budget, Hold, OutsideSpend, OverBudget, Period, PeriodCheck};
pub use calls::{CallTally, Calls, ESCALATIONS_KEPT, IN_MEMORY, Iter as CallsIter};
pub use dispatch::execute_in;
pub use limits::CallLimits;
pub use options::{AnswerSink, FinalAnswer, RunJournal, RunOptions};
pub use providers::Providers;
pub use report::{
    Attempt, AttemptOutcome, CacheSummary, CallReport, CallSource, Escalation, Event, RunReport,
    RunStatus, StepReport, StepStatus, UnknownOutcome,
};
pub(crate) use validate::schema_errors;

use crate::analyze::Analysis;
use crate::inputs::Inputs;
use crate::plan::Plan;
use crate::policy::Policy;

/// What to run: a checked workflow, its policy, the inputs, and the plan
/// built from exactly these (it gives the estimate and the call count for
/// tier shares).
pub struct Job<'a> {
    pub analysis: Arc<Analysis>,
    pub policy: Arc<Policy>,
    pub plan: &'a Plan,
    /// Owned when the caller is done with them (`tollgate run`): their
    /// values move into the run rather than being copied (a `for_each`
    /// list of 100,000 items is megabytes).
    pub inputs: std::borrow::Cow<'a, Inputs>,
}

/// What several runs of one policy share when they go on at once (the cases
/// of a test suite): the call limits — so a local server with one slot gets
/// one call at a time across all of them, and `--concurrency` bounds the
/// whole process — and the managed local servers, started once.
pub struct Resources {
    pub(crate) limits: CallLimits,
    pub(crate) servers: local_server::Servers,
}

impl Resources {
    pub fn new(policy: &Policy, options: &RunOptions) -> Arc<Resources> {
        Arc::new(Resources {
            limits: CallLimits::new(policy, options.concurrency),
            servers: local_server::Servers::new(policy, options.log_dir.clone()),
        })
    }

    /// Stops the local servers these resources started.
    pub async fn shutdown(&self) {
        self.servers.shutdown().await;
    }
}

/// Runs a workflow. Returns when every step has finished, or on `cancel`
/// (in-flight calls are dropped, which closes their connections). Local
/// servers the run started are stopped before it returns.
pub async fn execute(
    job: Job<'_>,
    providers: Providers,
    options: RunOptions,
    cancel: CancellationToken,
    events: Option<UnboundedSender<Event>>,
) -> RunReport {
    let resources = Resources::new(&job.policy, &options);
    let report = execute_in(
        Arc::clone(&resources),
        job,
        providers,
        options,
        cancel,
        events,
    )
    .await;
    // Servers this run started stop with it, whatever the outcome.
    resources.shutdown().await;
    report
}
