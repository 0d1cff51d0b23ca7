//! The dispatcher: one loop (`tokio::select!`, cancellation and the run
//! timeout polled first) that starts every step whose dependencies have
//! finished as its own task, settles the ones a failed or skipped
//! dependency blocks, and gathers the step reports into the [`RunReport`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, Period};
use super::shared::{JournalSpend, Shared};
use super::step_task::run_step;
use super::{
    CacheSummary, Event, Job, Providers, Resources, RunOptions, RunReport, RunStatus, StepReport,
    StepStatus,
};
use crate::analyze::Analysis;
use crate::journal::{EscalatedCall, FinishedCall, JournalError};
use crate::plan::Plan;
use crate::policy::Policy;
use crate::route::TierUsage;

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Running,
    Done(StepStatus),
}

/// [`super::execute`] with resources shared with other runs; the caller
/// stops them.
pub async fn execute_in(
    resources: Arc<Resources>,
    job: Job<'_>,
    providers: Providers,
    options: RunOptions,
    cancel: CancellationToken,
    events: Option<UnboundedSender<Event>>,
) -> RunReport {
    let started = Instant::now();
    let ((finished, escalated), earlier_cost) = match earlier_sessions(&options) {
        Ok(r) => r,
        Err(e) => return not_started(&job, &options, &e.to_string()),
    };
    let Job {
        analysis,
        policy,
        plan,
        inputs,
    } = job;
    let files = crate::inputs::files(&inputs);
    let streams = crate::inputs::streams(&inputs);
    let input_values: Map<String, Value> = match inputs {
        std::borrow::Cow::Owned(inputs) => inputs.into_iter().map(|(k, v)| (k, v.value)).collect(),
        std::borrow::Cow::Borrowed(inputs) => inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect(),
    };
    let shared = Arc::new(Shared {
        finished,
        escalated,
        call_estimates: plan
            .steps
            .iter()
            .map(|s| (s.id.clone(), s.cost.low / s.calls.max(1) as f64))
            .collect(),
        resources,
        budget: budget(&policy, &options, earlier_cost),
        tiers: Mutex::new(TierUsage {
            total_calls: plan.totals.calls,
            ..TierUsage::default()
        }),
        levels: crate::sensitivity::propagate(&analysis, &policy)
            .into_iter()
            .map(|e| e.level)
            .collect(),
        planned_calls: plan.steps.iter().map(|s| (s.id.clone(), s.calls)).collect(),
        withheld: Arc::new(crate::route::Withheld::new(crate::sensitivity::withheld(
            &analysis,
            &policy,
            &input_values,
        ))),
        inputs: input_values,
        files,
        streams,
        read: analysis
            .steps
            .values()
            .flat_map(|s| s.reads_steps.iter().cloned())
            .collect(),
        analysis: Arc::clone(&analysis),
        policy: Arc::clone(&policy),
        providers,
        options: options.clone(),
        events,
    });
    let mut dispatcher = Dispatcher::new(Arc::clone(&shared));
    let stopped = dispatcher.run(cancel, &options).await;
    let steps = dispatcher.into_reports();
    summarise(
        &shared,
        plan,
        steps,
        stopped,
        earlier_cost,
        started.elapsed().as_millis() as u64,
    )
}

/// Calls earlier sessions of a run finished, by (step, item).
type Finished = HashMap<(String, Option<usize>), FinishedCall>;

/// Calls of a run whose first answer failed a cascade's check.
type Escalated = HashMap<(String, Option<usize>), EscalatedCall>;

/// What earlier sessions of this run finished (and which calls they left
/// escalating), and what they spent (a resume); nothing without a journal.
fn earlier_sessions(options: &RunOptions) -> Result<((Finished, Escalated), f64), JournalError> {
    let Some(j) = &options.journal else {
        return Ok(((HashMap::new(), HashMap::new()), 0.0));
    };
    let finished = j.journal.finished_calls(&j.run_id)?;
    let escalated = j.journal.escalated_calls(&j.run_id)?;
    let earlier = j.journal.run_cost(&j.run_id)?;
    Ok(((finished, escalated), earlier))
}

/// The report of a run that started nothing: without knowing what earlier
/// sessions finished, every call could be one already paid for.
fn not_started(job: &Job<'_>, options: &RunOptions, message: &str) -> RunReport {
    let why = format!("not started: {message}");
    let analysis = &job.analysis;
    RunReport {
        run_id: options.journal.as_ref().map(|j| j.run_id.clone()),
        workflow: analysis.workflow.value.name.clone(),
        policy: job.policy.name.clone(),
        status: RunStatus::Failed,
        steps: analysis
            .order()
            .map(|id| StepReport::new(id, StepStatus::NotStarted, Some(why.clone())))
            .collect(),
        cost_usd: 0.0,
        list_cost_usd: 0.0,
        cached_input_tokens: 0,
        saving_usd: 0.0,
        estimate: job.plan.totals.cost,
        budget_usd: job.policy.run_budget_usd,
        elapsed_ms: 0,
        cache: CacheSummary::default(),
        resumed_calls: 0,
        earlier_cost_usd: 0.0,
    }
}

/// The run's budget: its own limit (less what earlier sessions spent), and
/// the daily and monthly limits over what the journal says others spent.
fn budget(policy: &Policy, options: &RunOptions, earlier_cost: f64) -> Budget {
    let mut budget = Budget::new(policy.run_budget_usd).with_earlier_spend(earlier_cost);
    if let Some(j) = &options.journal {
        let periods: Vec<(Period, f64)> = [
            (Period::Day, policy.daily_budget_usd),
            (Period::Month, policy.monthly_budget_usd),
            (Period::UserDay, policy.per_user_daily_budget_usd),
        ]
        .into_iter()
        .filter_map(|(p, l)| l.map(|l| (p, l)))
        .collect();
        if !periods.is_empty() {
            budget = budget.with_periods(periods, Arc::new(JournalSpend(Arc::clone(&j.journal))));
        }
    }
    budget
}

/// The dispatcher's state: every step's state and report (by step index),
/// the outputs handed to dependants, the step tasks in flight.
///
/// Invariant: a step is `Running` exactly while its task is in `tasks`
/// (`task_of` maps the task back to it), and `Done` once its report is in
/// `reports`.
struct Dispatcher {
    sh: Arc<Shared>,
    state: Vec<State>,
    reports: Vec<Option<StepReport>>,
    /// The outputs of the steps some step reads ([`Shared::read`]): a
    /// copy no step reads — a final fan-out's 100,000 answers — would only
    /// double the report's.
    outputs: HashMap<String, Value>,
    tasks: JoinSet<(usize, StepReport)>,
    task_of: HashMap<tokio::task::Id, usize>,
}

impl Dispatcher {
    fn new(sh: Arc<Shared>) -> Dispatcher {
        let n = sh.analysis.steps.len();
        Dispatcher {
            sh,
            state: vec![State::Pending; n],
            reports: vec![None; n],
            outputs: HashMap::new(),
            tasks: JoinSet::new(),
            task_of: HashMap::new(),
        }
    }

    fn analysis(&self) -> &Analysis {
        &self.sh.analysis
    }

    fn id(&self, i: usize) -> String {
        self.analysis()
            .steps
            .get_index(i)
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }

    /// Runs until every step has finished, or the run is stopped; returns
    /// why it stopped early (`None`: it ran to the end).
    async fn run(&mut self, cancel: CancellationToken, options: &RunOptions) -> Option<RunStatus> {
        let deadline = options.run_timeout.map(|t| tokio::time::Instant::now() + t);
        // Cancelled before it began (Ctrl-C during a test suite): start nothing.
        let mut stopped: Option<RunStatus> = cancel.is_cancelled().then_some(RunStatus::Cancelled);
        // A step finished since the journal was last made durable.
        let mut finished = false;
        loop {
            if stopped.is_none() {
                // Free calls' answers are only queued for the journal (see
                // `Shared::journal_call`): nothing is built on them before
                // they are durable. When no step can start (the last one
                // finished, or others are still running), nothing is built
                // yet, and the wait would only delay the run.
                if finished && self.any_ready() {
                    self.sh.journal_durable().await;
                    finished = false;
                }
                self.start_ready();
            }
            if self.tasks.is_empty() {
                // The run ends with everything it did on disk (a test case
                // leaves it to its suite: `RunJournal::durable_at_end`).
                if options.journal.as_ref().is_some_and(|j| j.durable_at_end) {
                    self.sh.journal_durable().await;
                }
                return stopped;
            }
            let sleep_until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled(), if stopped.is_none() => {
                    stopped = Some(RunStatus::Cancelled);
                    self.tasks.abort_all();
                }
                () = sleep_until, if stopped.is_none() => {
                    stopped = Some(RunStatus::TimedOut);
                    self.tasks.abort_all();
                }
                joined = self.tasks.join_next_with_id() => {
                    finished = true;
                    match joined {
                        Some(Ok((_, (i, report)))) => self.finished(i, report),
                        Some(Err(err)) => self.broken(&err, stopped),
                        None => {}
                    }
                },
            }
        }
    }

    /// Whether a step waits only for [`Dispatcher::start_ready`]: pending,
    /// with every dependency done.
    fn any_ready(&self) -> bool {
        (0..self.state.len()).any(|i| {
            self.state[i] == State::Pending
                && self
                    .analysis()
                    .dag
                    .dependencies(i)
                    .iter()
                    .all(|&d| matches!(self.state[d], State::Done(_)))
        })
    }

    /// Starts (or settles without running) every step whose dependencies
    /// are done, until none is left to start.
    fn start_ready(&mut self) {
        let mut progressed = true;
        while progressed {
            progressed = false;
            let order: Vec<usize> = self.analysis().dag.order().to_vec();
            for i in order {
                if self.state[i] != State::Pending {
                    continue;
                }
                let deps = self.analysis().dag.dependencies(i);
                if deps
                    .iter()
                    .any(|&d| !matches!(self.state[d], State::Done(_)))
                {
                    continue;
                }
                progressed = true;
                if let Some((status, why)) = self.blocked_by(&deps) {
                    let id = self.id(i);
                    self.state[i] = State::Done(status);
                    self.sh.journal_step(&id, status);
                    self.sh.emit(Event::StepFinished {
                        step: id.clone(),
                        status,
                        cost_usd: 0.0,
                    });
                    self.reports[i] = Some(StepReport::new(&id, status, Some(why)));
                    continue;
                }
                // The outputs of the steps it reads; `StepInfo::context`
                // decides what of them a template sees.
                let upstream: Map<String, Value> = self.analysis().steps[i]
                    .reads_steps
                    .iter()
                    .map(|d| {
                        let out = self.outputs.get(d).cloned().unwrap_or(Value::Null);
                        (d.clone(), out)
                    })
                    .collect();
                self.state[i] = State::Running;
                let sh = Arc::clone(&self.sh);
                let handle = self
                    .tasks
                    .spawn(async move { (i, run_step(sh, i, upstream).await) });
                self.task_of.insert(handle.id(), i);
            }
        }
    }

    /// Why a step whose dependencies are done cannot run: a dependency was
    /// skipped (so is it), or did not succeed.
    fn blocked_by(&self, deps: &[usize]) -> Option<(StepStatus, String)> {
        deps.iter().find_map(|&d| {
            let dep = self.reports[d].as_ref()?;
            let name = &dep.id;
            match dep.status {
                StepStatus::Succeeded => None,
                StepStatus::Failed if dep.ignored_failure => None,
                // Nothing to summarize: the history's step still runs.
                StepStatus::Skipped if crate::context::history::is_summary_step(name) => None,
                StepStatus::Skipped => Some((
                    StepStatus::Skipped,
                    format!("depends on skipped step `{name}`"),
                )),
                _ => Some((
                    StepStatus::DependencyFailed,
                    format!("step `{name}` did not succeed"),
                )),
            }
        })
    }

    /// A step task returned its report.
    fn finished(&mut self, i: usize, report: StepReport) {
        if self.sh.read.contains(&report.id)
            && let Some(out) = &report.output
        {
            // A step another reads is always held (`answers::AnswersWriter`).
            debug_assert!(out.held().is_some(), "{} was spilled", report.id);
            if let Some(v) = out.held() {
                self.outputs.insert(report.id.clone(), v.clone());
            }
        }
        self.sh.emit(Event::StepFinished {
            step: report.id.clone(),
            status: report.status,
            cost_usd: report.cost_usd,
        });
        self.sh.journal_step(&report.id, report.status);
        self.state[i] = State::Done(report.status);
        self.reports[i] = Some(report);
    }

    /// A step task was aborted (cancel, timeout) or panicked.
    fn broken(&mut self, err: &JoinError, stopped: Option<RunStatus>) {
        let Some(&i) = self.task_of.get(&err.id()) else {
            return;
        };
        let id = self.id(i);
        let (status, why) = if err.is_cancelled() {
            let why = if stopped == Some(RunStatus::TimedOut) {
                "run timeout reached"
            } else {
                "interrupted"
            };
            (StepStatus::Cancelled, why.to_owned())
        } else {
            (
                StepStatus::Failed,
                "internal error in the step task".to_owned(),
            )
        };
        self.sh.emit(Event::StepFinished {
            step: id.clone(),
            status,
            cost_usd: 0.0,
        });
        self.state[i] = State::Done(status);
        self.reports[i] = Some(StepReport::new(&id, status, Some(why)));
    }

    /// Every step's report in execution order; a step the run never reached
    /// is `not_started`.
    fn into_reports(mut self) -> Vec<StepReport> {
        let order: Vec<usize> = self.analysis().dag.order().to_vec();
        order
            .into_iter()
            .map(|i| {
                self.reports[i].take().unwrap_or_else(|| {
                    StepReport::new(
                        &self.id(i),
                        StepStatus::NotStarted,
                        Some("the run stopped first".to_owned()),
                    )
                })
            })
            .collect()
    }
}

/// The run's report from its steps' reports.
fn summarise(
    shared: &Shared,
    plan: &Plan,
    steps: Vec<StepReport>,
    stopped: Option<RunStatus>,
    earlier_cost: f64,
    elapsed_ms: u64,
) -> RunReport {
    let failed = steps.iter().any(|s| {
        matches!(
            s.status,
            StepStatus::Failed
                | StepStatus::DependencyFailed
                | StepStatus::Cancelled
                | StepStatus::NotStarted
        ) && !s.ignored_failure
    });
    // Counted as the calls arrived; the money in the order of the calls.
    let tallies = || steps.iter().map(|s| s.calls.tally());
    let cache = CacheSummary {
        hits: tallies().map(|t| t.cache_hits).sum(),
        saved_usd: steps.iter().flat_map(|s| s.calls.saved_usd()).sum(),
    };
    let resumed_calls = tallies().map(|t| t.resumed).sum();
    RunReport {
        run_id: shared.options.journal.as_ref().map(|j| j.run_id.clone()),
        cache,
        resumed_calls,
        earlier_cost_usd: earlier_cost,
        workflow: shared.analysis.workflow.value.name.clone(),
        policy: shared.policy.name.clone(),
        status: stopped.unwrap_or(if failed {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        }),
        // What the budget ledger settled: also counts calls of steps that a
        // cancellation cut short, and broken calls at their worst case.
        cost_usd: shared
            .budget
            .spent()
            .max(steps.iter().map(|s| s.cost_usd).sum()),
        list_cost_usd: steps.iter().map(|s| s.list_cost_usd).sum(),
        // Prompt-cache reads of calls the providers answered this time (a
        // response-cache hit or a resumed call consumed nothing now).
        cached_input_tokens: tallies().map(|t| t.provider_cached_input_tokens).sum(),
        saving_usd: steps.iter().map(|s| s.list_cost_usd - s.cost_usd).sum(),
        steps,
        estimate: plan.totals.cost,
        budget_usd: shared.policy.run_budget_usd,
        elapsed_ms,
    }
}
