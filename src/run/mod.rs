//! Execution: runs a planned workflow against real providers.
//!
//! A dispatcher loop (one task, `tokio::select!`, cancellation polled first)
//! starts every step whose dependencies have finished, as its own task, and
//! turns what happens into [`Event`]s for the reporter and a [`RunReport`]
//! at the end. Failure policy: a failed step fails its dependants (reported
//! as `dependency_failed`) while independent branches finish; a step with
//! `continue_on_error` hands its dependants a null output instead.
//!
//! Each call goes through, in order: routing with the real prompt (the same
//! pure [`crate::route`] functions as `plan`, so the sensitivity gate holds),
//! the budget (worst case reserved before the call), the limits (slots, RPM,
//! TPM), the provider, then validation of structured output. Retries honour
//! the provider's retry hints; then the policy's fallback chain is tried,
//! never past the gate.

mod batch;
mod budget;
mod limits;
pub mod local_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::journal::{BatchLedger, BatchRef};
pub use batch::batch_key;
pub use budget::{Budget, Hold, OutsideSpend, OverBudget, Period, PeriodCheck};
pub use limits::CallLimits;

use crate::analyze::Analysis;
use crate::cost::{self, Billing};
use crate::diagnostic::Diagnostic;
use crate::inputs::Inputs;
use crate::journal::{CallRecord, FinishedCall, Journal};
use crate::plan::{CostRange, Plan, RULE_TOKENIZER, Status};
use crate::policy::{Model, Policy, ProviderKind};
use crate::provider::{
    self, ChatRequest, ClientConfig, Endpoint, ErrorKind, Message, Provider, ProviderError, Usage,
};
use crate::route::{self, Facts, TierUsage};
use crate::template::Source;
use crate::tokens;

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
        }
    }
}

/// The clients of a policy's providers, built from the environment.
#[derive(Clone)]
pub struct Providers {
    clients: HashMap<String, Arc<dyn Provider>>,
    /// The batch API clients of the providers that have one (OpenAI,
    /// Anthropic), for `latency: batch` steps.
    batchers: HashMap<String, Arc<dyn provider::batch::BatchApi>>,
    /// Provider → the variable that holds its key, for those whose key is unset.
    missing_keys: HashMap<String, String>,
}

impl Providers {
    /// Builds a client per provider; a key is read from the variable the
    /// policy names and never leaves the client.
    pub fn from_env(policy: &Policy) -> Providers {
        let http = provider::http_client(Duration::from_secs(5));
        let mut clients = HashMap::new();
        let mut batchers = HashMap::new();
        let mut missing_keys = HashMap::new();
        for (name, p) in &policy.providers {
            let Some(base_url) = &p.base_url else {
                continue;
            };
            let mut config = ClientConfig::new(base_url.clone());
            // The executor bounds every call with the step's `timeout` (or the
            // run's default); the client's own cap must not cut a long call
            // shorter than the user asked for.
            config.request_timeout = Duration::from_secs(24 * 3600);
            // How much of an answer is read: the policy's `limits`, the
            // model's over the provider's.
            config.response_limits = p.limits.response();
            for m in policy.models.values().filter(|m| m.provider == *name) {
                config
                    .model_response_limits
                    .entry(m.model.clone())
                    .or_insert_with(|| m.limits.response());
            }
            if let Some(var) = &p.api_key_env {
                match std::env::var(var) {
                    Ok(key) if !key.is_empty() => config = config.with_api_key(key),
                    _ if p.kind == ProviderKind::OpenaiCompatible => {}
                    _ => {
                        missing_keys.insert(name.clone(), var.clone());
                        continue;
                    }
                }
            }
            if let Some(b) = provider::batch::batch_client_for(p.kind, config.clone(), http.clone())
            {
                batchers.insert(name.clone(), b);
            }
            clients.insert(
                name.clone(),
                provider::client_for(p.kind, config, http.clone()),
            );
        }
        Providers {
            clients,
            batchers,
            missing_keys,
        }
    }

    /// Explicit clients (tests, embedding).
    pub fn with_clients(clients: HashMap<String, Arc<dyn Provider>>) -> Providers {
        Providers {
            clients,
            batchers: HashMap::new(),
            missing_keys: HashMap::new(),
        }
    }

    /// Adds batch API clients by provider name (tests, embedding).
    pub fn with_batch_clients(
        mut self,
        batchers: HashMap<String, Arc<dyn provider::batch::BatchApi>>,
    ) -> Providers {
        self.batchers.extend(batchers);
        self
    }

    /// Without batch API clients: every call is synchronous, whatever the
    /// steps' `latency` (test suites: a batch may take up to 24 hours, and a
    /// recording must see every call).
    pub fn without_batch(mut self) -> Providers {
        self.batchers.clear();
        self
    }

    /// Wraps every client (recording, replaying, caching), keeping which
    /// keys are missing.
    pub fn map_clients(
        self,
        mut f: impl FnMut(&str, Arc<dyn Provider>) -> Arc<dyn Provider>,
    ) -> Providers {
        Providers {
            clients: self
                .clients
                .into_iter()
                .map(|(name, c)| {
                    let wrapped = f(&name, c);
                    (name, wrapped)
                })
                .collect(),
            batchers: self.batchers,
            missing_keys: self.missing_keys,
        }
    }

    /// Every key the plan needs but the environment lacks, as diagnostics —
    /// checked before any call is made.
    pub fn check_keys(&self, plan: &Plan, policy: &Policy) -> Vec<Diagnostic> {
        let mut by_var: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &plan.steps {
            if matches!(s.status, Status::Skipped(_)) {
                continue;
            }
            let Some(m) = &s.model else { continue };
            let Some(model) = policy.models.get(&m.alias) else {
                continue;
            };
            if let Some(var) = self.missing_keys.get(&model.provider) {
                by_var.entry(var).or_default().push(&s.id);
            }
        }
        let mut vars: Vec<_> = by_var.into_iter().collect();
        vars.sort();
        vars.into_iter()
            .map(|(var, steps)| {
                Diagnostic::error("missing-api-key", format!("the environment variable {var} is not set"))
                    .with_help(format!(
                        "steps {} are routed to a provider whose key it holds; export it, or route them elsewhere",
                        steps.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                    ))
            })
            .collect()
    }
}

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
    /// `ok`, or the error kind.
    pub outcome: String,
    pub status: Option<u16>,
    pub message: Option<String>,
    /// How long the run waited before the next try.
    pub waited_ms: Option<u64>,
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
    fn empty(item: Option<usize>) -> CallReport {
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
    fn new(id: &str, status: StepStatus, detail: Option<String>) -> StepReport {
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

/// Everything step tasks share.
struct Shared {
    analysis: Arc<Analysis>,
    policy: Arc<Policy>,
    providers: Providers,
    inputs: Map<String, Value>,
    resources: Arc<Resources>,
    budget: Budget,
    tiers: Mutex<TierUsage>,
    /// Effective sensitivity level of every step (by step index).
    levels: Vec<usize>,
    /// Values of inputs above `cloud_max`: never in a cloud request
    /// (`route::admit`).
    withheld: Arc<Vec<String>>,
    /// Calls the plan counted per step; a fan-out whose size was unknown
    /// then corrects the run's total for tier shares when it is known.
    planned_calls: HashMap<String, u64>,
    options: RunOptions,
    events: Option<UnboundedSender<Event>>,
    /// Calls earlier sessions of this run finished, by (step, item).
    finished: HashMap<(String, Option<usize>), FinishedCall>,
    /// The plan's expected cost of one call of each step.
    call_estimates: HashMap<String, f64>,
}

impl Shared {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Writes a call attempt; committed before this returns.
    async fn journal_call(&self, record: CallRecord) {
        let Some(j) = &self.options.journal else {
            return;
        };
        let journal = Arc::clone(&j.journal);
        let run_id = j.run_id.clone();
        // SQLite blocks (a commit waits for the disk): off the async workers.
        let written =
            tokio::task::spawn_blocking(move || journal.record_call(&run_id, &record)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.emit(Event::JournalError {
                message: e.to_string(),
            }),
            Err(e) => self.emit(Event::JournalError {
                message: format!("run journal: {e}"),
            }),
        }
    }

    fn journal_step(&self, step: &str, status: StepStatus) {
        let Some(j) = &self.options.journal else {
            return;
        };
        let status = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Err(e) = j.journal.finish_step(&j.run_id, step, &status) {
            self.emit(Event::JournalError {
                message: e.to_string(),
            });
        }
    }
}

/// Spending by others in the current UTC day or month and their calls in
/// flight, from the journal.
struct JournalSpend(Arc<Journal>);

impl OutsideSpend for JournalSpend {
    fn try_hold(&self, amount: f64, checks: &[PeriodCheck]) -> Result<Hold, String> {
        let (day, month) = crate::journal::period_starts(self.0.now());
        let checks: Vec<(i64, f64, f64)> = checks
            .iter()
            .map(|c| {
                let since = match c.period {
                    Period::Day => day,
                    Period::Month => month,
                };
                (since, c.limit, c.local)
            })
            .collect();
        Ok(match self.0.try_hold(amount, &checks)? {
            Ok(id) => Hold::Held(id as u64),
            Err((index, spent, in_flight)) => Hold::Over {
                index,
                spent,
                in_flight,
            },
        })
    }

    fn release(&self, hold: u64) {
        // A hold left behind only makes other processes more careful until
        // this one exits.
        let _ = self.0.release_hold(hold as i64);
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Running,
    Done(StepStatus),
}

/// What to run: a checked workflow, its policy, the inputs, and the plan
/// built from exactly these (it gives the estimate and the call count for
/// tier shares).
pub struct Job<'a> {
    pub analysis: Arc<Analysis>,
    pub policy: Arc<Policy>,
    pub plan: &'a Plan,
    pub inputs: &'a Inputs,
}

/// What several runs of one policy share when they go on at once (the cases
/// of a test suite): the call limits — so a local server with one slot gets
/// one call at a time across all of them, and `--concurrency` bounds the
/// whole process — and the managed local servers, started once.
pub struct Resources {
    limits: CallLimits,
    servers: local_server::Servers,
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

/// [`execute`] with resources shared with other runs; the caller stops them.
pub async fn execute_in(
    resources: Arc<Resources>,
    job: Job<'_>,
    providers: Providers,
    options: RunOptions,
    cancel: CancellationToken,
    events: Option<UnboundedSender<Event>>,
) -> RunReport {
    let Job {
        analysis,
        policy,
        plan,
        inputs,
    } = job;
    let started = Instant::now();
    let n = analysis.steps.len();
    // What earlier sessions of this run finished and spent (a resume).
    let (finished, earlier_cost) = match &options.journal {
        Some(j) => {
            let finished = j.journal.finished_calls(&j.run_id);
            let earlier = j.journal.run_cost(&j.run_id);
            match (finished, earlier) {
                (Ok(f), Ok(c)) => (f, c),
                // Without knowing what finished, every call could be one
                // already paid for: nothing is sent.
                (Err(message), _) | (_, Err(message)) => {
                    let why = format!("not started: {message}");
                    return RunReport {
                        run_id: Some(j.run_id.clone()),
                        workflow: analysis.workflow.value.name.clone(),
                        policy: policy.name.clone(),
                        status: RunStatus::Failed,
                        steps: analysis
                            .dag
                            .order()
                            .iter()
                            .filter_map(|&i| analysis.steps.get_index(i))
                            .map(|(id, _)| {
                                StepReport::new(id, StepStatus::NotStarted, Some(why.clone()))
                            })
                            .collect(),
                        cost_usd: 0.0,
                        list_cost_usd: 0.0,
                        cached_input_tokens: 0,
                        saving_usd: 0.0,
                        estimate: plan.totals.cost,
                        budget_usd: policy.run_budget_usd,
                        elapsed_ms: 0,
                        cache: CacheSummary::default(),
                        resumed_calls: 0,
                        earlier_cost_usd: 0.0,
                    };
                }
            }
        }
        None => (HashMap::new(), 0.0),
    };
    let mut budget = Budget::new(policy.run_budget_usd).with_earlier_spend(earlier_cost);
    if let Some(j) = &options.journal {
        let periods: Vec<(Period, f64)> = [
            (Period::Day, policy.daily_budget_usd),
            (Period::Month, policy.monthly_budget_usd),
        ]
        .into_iter()
        .filter_map(|(p, l)| l.map(|l| (p, l)))
        .collect();
        if !periods.is_empty() {
            budget = budget.with_periods(periods, Arc::new(JournalSpend(Arc::clone(&j.journal))));
        }
    }
    let shared = Arc::new(Shared {
        finished,
        call_estimates: plan
            .steps
            .iter()
            .map(|s| (s.id.clone(), s.cost.low / s.calls.max(1) as f64))
            .collect(),
        resources,
        budget,
        tiers: Mutex::new(TierUsage {
            total_calls: plan.totals.calls,
            ..TierUsage::default()
        }),
        levels: crate::sensitivity::propagate(&analysis, &policy)
            .into_iter()
            .map(|e| e.level)
            .collect(),
        planned_calls: plan.steps.iter().map(|s| (s.id.clone(), s.calls)).collect(),
        withheld: {
            let values: Map<String, Value> = inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect();
            Arc::new(crate::sensitivity::withheld(&analysis, &policy, &values))
        },
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect(),
        analysis: Arc::clone(&analysis),
        policy: Arc::clone(&policy),
        providers,
        options: options.clone(),
        events,
    });

    let mut state = vec![State::Pending; n];
    let mut reports: Vec<Option<StepReport>> = vec![None; n];
    let mut outputs: HashMap<String, Value> = HashMap::new();
    let mut tasks: JoinSet<(usize, StepReport)> = JoinSet::new();
    let mut task_of: HashMap<tokio::task::Id, usize> = HashMap::new();
    let deadline = options.run_timeout.map(|t| tokio::time::Instant::now() + t);
    // Cancelled before it began (Ctrl-C during a test suite): start nothing.
    let mut stopped: Option<RunStatus> = cancel.is_cancelled().then_some(RunStatus::Cancelled);

    loop {
        // Start (or settle without running) every step whose dependencies are done.
        let mut progressed = true;
        while progressed && stopped.is_none() {
            progressed = false;
            for &i in analysis.dag.order() {
                if state[i] != State::Pending {
                    continue;
                }
                let deps = analysis.dag.dependencies(i);
                if deps.iter().any(|&d| !matches!(state[d], State::Done(_))) {
                    continue;
                }
                let id = analysis
                    .steps
                    .get_index(i)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default();
                let blocked = deps.iter().find_map(|&d| {
                    let dep_report = reports[d].as_ref()?;
                    let name = &dep_report.id;
                    match dep_report.status {
                        StepStatus::Succeeded => None,
                        StepStatus::Failed if dep_report.ignored_failure => None,
                        StepStatus::Skipped => Some((
                            StepStatus::Skipped,
                            format!("depends on skipped step `{name}`"),
                        )),
                        _ => Some((
                            StepStatus::DependencyFailed,
                            format!("step `{name}` did not succeed"),
                        )),
                    }
                });
                if let Some((status, why)) = blocked {
                    state[i] = State::Done(status);
                    shared.journal_step(&id, status);
                    shared.emit(Event::StepFinished {
                        step: id.clone(),
                        status,
                        cost_usd: 0.0,
                    });
                    reports[i] = Some(StepReport::new(&id, status, Some(why)));
                    progressed = true;
                    continue;
                }
                // The outputs of the steps it reads; `StepInfo::context`
                // decides what of them a template sees.
                let upstream: Map<String, Value> = analysis.steps[i]
                    .reads_steps
                    .iter()
                    .map(|d| (d.clone(), outputs.get(d).cloned().unwrap_or(Value::Null)))
                    .collect();
                state[i] = State::Running;
                let sh = Arc::clone(&shared);
                let handle = tasks.spawn(async move { (i, run_step(sh, i, upstream).await) });
                task_of.insert(handle.id(), i);
                progressed = true;
            }
        }
        if tasks.is_empty() {
            break;
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
                tasks.abort_all();
            }
            () = sleep_until, if stopped.is_none() => {
                stopped = Some(RunStatus::TimedOut);
                tasks.abort_all();
            }
            joined = tasks.join_next_with_id() => {
                match joined {
                    Some(Ok((_, (i, report)))) => {
                        if let Some(out) = &report.output {
                            outputs.insert(report.id.clone(), out.clone());
                        }
                        shared.emit(Event::StepFinished { step: report.id.clone(), status: report.status, cost_usd: report.cost_usd });
                        shared.journal_step(&report.id, report.status);
                        state[i] = State::Done(report.status);
                        reports[i] = Some(report);
                    }
                    Some(Err(err)) => {
                        // Aborted (cancel/timeout) or a panic in a step task.
                        if let Some(&i) = task_of.get(&err.id()) {
                            let id = analysis.steps.get_index(i).map(|(k, _)| k.clone()).unwrap_or_default();
                            let (status, why) = if err.is_cancelled() {
                                let why = if stopped == Some(RunStatus::TimedOut) { "run timeout reached" } else { "interrupted" };
                                (StepStatus::Cancelled, why.to_owned())
                            } else {
                                (StepStatus::Failed, "internal error in the step task".to_owned())
                            };
                            shared.emit(Event::StepFinished { step: id.clone(), status, cost_usd: 0.0 });
                            state[i] = State::Done(status);
                            reports[i] = Some(StepReport::new(&id, status, Some(why)));
                        }
                    }
                    None => {}
                }
            }
        }
    }

    let steps: Vec<StepReport> = analysis
        .dag
        .order()
        .iter()
        .map(|&i| {
            reports[i].take().unwrap_or_else(|| {
                let id = analysis
                    .steps
                    .get_index(i)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default();
                StepReport::new(
                    &id,
                    StepStatus::NotStarted,
                    Some("the run stopped first".to_owned()),
                )
            })
        })
        .collect();
    let failed = steps.iter().any(|s| {
        matches!(
            s.status,
            StepStatus::Failed
                | StepStatus::DependencyFailed
                | StepStatus::Cancelled
                | StepStatus::NotStarted
        ) && !s.ignored_failure
    });
    let calls = || steps.iter().flat_map(|s| s.calls.iter());
    let cache = CacheSummary {
        hits: calls().filter(|c| c.source == CallSource::Cache).count() as u64,
        saved_usd: calls().map(|c| c.saved_usd).sum(),
    };
    let resumed_calls = calls().filter(|c| c.source == CallSource::Journal).count() as u64;
    RunReport {
        run_id: options.journal.as_ref().map(|j| j.run_id.clone()),
        cache,
        resumed_calls,
        earlier_cost_usd: earlier_cost,
        workflow: analysis.workflow.value.name.clone(),
        policy: policy.name.clone(),
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
        cached_input_tokens: steps
            .iter()
            .flat_map(|s| &s.calls)
            .filter(|c| c.source == CallSource::Provider)
            .map(|c| c.usage.cached_input_tokens)
            .sum(),
        saving_usd: steps.iter().map(|s| s.list_cost_usd - s.cost_usd).sum(),
        steps,
        estimate: plan.totals.cost,
        budget_usd: policy.run_budget_usd,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// Runs one step: `when`, `for_each`, rendering, routing, the calls.
async fn run_step(sh: Arc<Shared>, i: usize, upstream: Map<String, Value>) -> StepReport {
    let (id, info) = sh.analysis.steps.get_index(i).expect("step index");
    let step = &sh.analysis.workflow.value.steps[id];
    let env = &sh.analysis.env;
    // Exactly what the analysis says the step reads (see `StepInfo::context`).
    let context = |item: Option<&Value>| {
        info.context(
            &sh.inputs,
            |dep| upstream.get(dep).cloned().unwrap_or(Value::Null),
            item,
        )
    };
    let ctx = context(None);
    let fail = |detail: String| {
        let mut r = StepReport::new(id, StepStatus::Failed, Some(detail));
        r.ignored_failure = step.continue_on_error;
        r
    };
    let eval = |s: &Source| -> Result<minijinja::Value, String> {
        crate::template::eval(env, &s.text, &ctx)
            .map_err(|e| format!("cannot evaluate `{}`: {e}", s.text.trim()))
    };

    if let Some(when) = &info.when {
        match eval(when) {
            Ok(v) if v.is_true() => {}
            Ok(_) => {
                return StepReport::new(
                    id,
                    StepStatus::Skipped,
                    Some(format!("when is false: {}", when.text.trim())),
                );
            }
            Err(e) => return fail(e),
        }
    }
    let items: Vec<Option<Value>> = match &info.for_each {
        None => vec![None],
        Some(fe) => match crate::template::eval_list(env, &fe.text, &ctx)
            .map_err(|e| format!("cannot evaluate `{}`: {e}", fe.text.trim()))
        {
            Ok(Value::Array(list)) if list.is_empty() => {
                return StepReport::new(
                    id,
                    StepStatus::Skipped,
                    Some("for_each list is empty".to_owned()),
                );
            }
            Ok(Value::Array(list)) => list.into_iter().map(Some).collect(),
            Ok(other) => return fail(format!("for_each must give a list, got {other}")),
            Err(e) => return fail(e),
        },
    };

    // Render every call's messages with the real values.
    let mut rendered: Vec<(Option<String>, String)> = Vec::with_capacity(items.len());
    let mut total = 0usize;
    // The label the requests carry to the provider boundary: the level of
    // what was actually rendered into them.
    let mut label = route::Label {
        level: sh.levels[i],
        withheld: Arc::clone(&sh.withheld),
    };
    for item in &items {
        let c = context(item.as_ref());
        label.level = label.level.max(crate::sensitivity::of_context(
            &c,
            sh.levels[i],
            &sh.analysis,
            &sh.policy,
            &sh.levels,
        ));
        let render = |s: &Source| {
            crate::template::render(env, &s.text, &c)
                .map_err(|e| format!("cannot render the prompt: {e}"))
        };
        let system = match info.system.as_ref().map(render).transpose() {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        match render(&info.prompt) {
            Ok(p) => {
                total += p.len() + system.as_ref().map_or(0, String::len);
                if total > crate::template::MAX_STEP_RENDERED_BYTES {
                    return fail(format!(
                        "the calls of the step render more than {} bytes together",
                        crate::template::MAX_STEP_RENDERED_BYTES
                    ));
                }
                rendered.push((system, p));
            }
            Err(e) => return fail(e),
        }
    }

    // Route with the real prompt: the same pure function as `plan`.
    let level = sh.levels[i];
    let counts = |tok: tokens::Tokenizer| -> u64 {
        rendered
            .iter()
            .map(|(s, p)| {
                let mut msgs: Vec<&str> = Vec::new();
                if let Some(s) = s {
                    msgs.push(s);
                }
                msgs.push(p);
                tokens::count_chat(tok, &msgs) as u64
            })
            .max()
            .unwrap_or(0)
    };
    let tags: std::collections::BTreeSet<String> = sh
        .analysis
        .workflow
        .value
        .tags
        .iter()
        .chain(step.tags.iter())
        .cloned()
        .collect();
    let facts = Facts {
        task: &step.task,
        sensitivity: level,
        input_tokens: counts(RULE_TOKENIZER),
        reasoning: step.reasoning,
        latency: step.latency,
        tags: &tags,
        pin: step.model.as_deref(),
        max_output_tokens: u64::from(step.max_output_tokens()),
        calls: items.len() as u64,
    };
    let decision = {
        let mut usage = sh.tiers.lock().unwrap_or_else(|e| e.into_inner());
        let planned = sh.planned_calls.get(id.as_str()).copied().unwrap_or(0);
        usage.total_calls = (usage.total_calls + facts.calls).saturating_sub(planned);
        let d = route::route(&sh.policy, &facts, &usage, &counts);
        if let Some(m) = d.model.as_ref().and_then(|m| sh.policy.models.get(m)) {
            *usage.used.entry(m.tier).or_insert(0) += facts.calls;
        }
        d
    };
    // The rule's name (or "pinned") — the summary's RULE column.
    let rule = decision.decider.as_ref().map(|d| match d {
        route::Decider::Rule { name, .. } => name.clone(),
        route::Decider::Pin { .. } => "pinned".to_owned(),
    });
    let Some(first) = decision.model.clone() else {
        let why: Vec<String> = decision
            .passed_over
            .iter()
            .map(|r| format!("{}: {}", r.model, r.why))
            .collect();
        let mut r = fail(format!(
            "no model can serve this step now: {}",
            why.join("; ")
        ));
        r.rule = rule;
        return r;
    };
    // The rule's candidates from the chosen one on: the fallback chain.
    let chain: Vec<String> = {
        let head = match &decision.decider {
            Some(route::Decider::Rule { name, .. }) => sh
                .policy
                .rules
                .iter()
                .find(|r| &r.name == name)
                .map(|r| r.use_model.clone()),
            Some(route::Decider::Pin { model }) => Some(model.clone()),
            None => None,
        }
        .unwrap_or_else(|| first.clone());
        let all = sh.policy.candidates(&head);
        let start = all.iter().position(|m| *m == first).unwrap_or(0);
        all[start..].iter().map(|s| (*s).to_owned()).collect()
    };
    sh.emit(Event::StepStarted {
        step: id.clone(),
        model: first.clone(),
        calls: rendered.len(),
    });

    let started = Instant::now();
    // Through the provider's batch API, if the step asks for it; what the
    // batch did not answer is called normally below.
    let batched: Vec<Option<batch::Item>> = match sh.policy.models.get(&first) {
        Some(model) => {
            batch::run(
                &sh,
                id,
                step,
                info.for_each.is_some(),
                &rendered,
                model,
                &label,
            )
            .await
        }
        None => None,
    }
    .unwrap_or_else(|| rendered.iter().map(|_| None).collect());
    let facts_ref = &facts;
    let chain_ref = &chain;
    let sh_ref = &sh;
    let counts_ref = &counts;
    let label_ref = &label;
    let calls = futures::future::join_all(rendered.iter().zip(batched).enumerate().map(
        |(n, ((system, prompt), batched))| async move {
            let item = if info.for_each.is_some() {
                Some(n)
            } else {
                None
            };
            let before = match batched {
                Some(batch::Item::Done(report, value)) => return (report, Ok(value)),
                Some(batch::Item::Failed(report, why)) => return (report, Err(why)),
                Some(batch::Item::Synchronous(report)) => Some(report),
                None => None,
            };
            let (mut report, result) = call_with_fallbacks(
                sh_ref,
                id,
                step,
                item,
                system.clone(),
                prompt.clone(),
                chain_ref,
                facts_ref,
                label_ref,
                counts_ref,
            )
            .await;
            if let Some(b) = before {
                // The batch's attempt first, and what it cost on the bill.
                report.attempts.splice(0..0, b.attempts);
                report.usage += b.usage;
                report.cost_usd += b.cost_usd;
                report.list_cost_usd += b.list_cost_usd;
            }
            (report, result)
        },
    ))
    .await;

    let mut report = StepReport::new(id, StepStatus::Succeeded, None);
    report.rule = rule;
    report.latency_ms = started.elapsed().as_millis() as u64;
    let mut outputs = Vec::with_capacity(calls.len());
    let mut first_error = None;
    for (call, result) in calls {
        report.usage += call.usage;
        report.cost_usd += call.cost_usd;
        report.list_cost_usd += call.list_cost_usd;
        if report.ttft_ms.is_none() {
            report.ttft_ms = call.ttft_ms;
        }
        if call.model.is_some() {
            report.model.clone_from(&call.model);
        }
        match result {
            Ok(v) => outputs.push(v),
            Err(e) => {
                first_error.get_or_insert(e);
                outputs.push(Value::Null);
            }
        }
        report.calls.push(call);
    }
    report.provider_model = report
        .model
        .as_ref()
        .and_then(|m| sh.policy.models.get(m))
        .map(|m| m.model.clone());
    if let Some(e) = first_error {
        report.status = StepStatus::Failed;
        report.detail = Some(e);
        report.ignored_failure = step.continue_on_error;
        return report;
    }
    report.output = Some(if info.for_each.is_some() {
        Value::Array(outputs)
    } else {
        outputs.into_iter().next().unwrap_or(Value::Null)
    });
    report
}

/// One call: each candidate in turn (the gate re-checked for every one),
/// each with its retries.
#[expect(
    clippy::too_many_arguments,
    reason = "the call context is spelled out rather than hidden in a struct used once"
)]
async fn call_with_fallbacks(
    sh: &Shared,
    step_id: &str,
    step: &crate::workflow::Step,
    item: Option<usize>,
    system: Option<String>,
    prompt: String,
    chain: &[String],
    facts: &Facts<'_>,
    label: &route::Label,
    counts: &(dyn Fn(tokens::Tokenizer) -> u64 + Sync),
) -> (CallReport, Result<Value, String>) {
    let started = Instant::now();
    let mut report = CallReport::empty(item);
    // Finished by an earlier session of this run: its answer, not a new call
    // — if it was asked the same (an upstream answer that changed since, as
    // a `continue_on_error` step that now succeeds, makes it a new call).
    if let Some(done) = sh.finished.get(&(step_id.to_owned(), item)).filter(|d| {
        d.prompt_hash
            .as_ref()
            .is_none_or(|h| *h == crate::journal::prompt_hash(system.as_deref(), &prompt))
    }) {
        report.source = CallSource::Journal;
        report.model = Some(done.model.clone());
        report.usage = done.usage;
        report.attempts.push(Attempt {
            model: done.model.clone(),
            outcome: "resumed".to_owned(),
            status: None,
            message: None,
            waited_ms: None,
        });
        return (report, Ok(done.output.clone()));
    }
    let mut last_error = String::from("no candidate model could be tried");
    // Why each candidate failed (it was called) or was passed over.
    let mut failures: Vec<String> = Vec::new();
    let mut passed: Vec<String> = Vec::new();
    // After a context-length error only larger windows are worth trying.
    let mut need_window_above: u64 = 0;
    let mut previous: Option<&str> = None;
    // The tier the routing decision charged this call to.
    let routed_tier = chain
        .first()
        .and_then(|m| sh.policy.models.get(m))
        .map(|m| m.tier);
    for (position, alias) in chain.iter().enumerate() {
        let Some(model) = sh.policy.models.get(alias) else {
            continue;
        };
        // The sensitivity gate, for every candidate, whatever happened to the
        // ones before it (a server that would not start, a missing key): it
        // is checked here, right before any call, not only by routing.
        if !route::gate(&sh.policy, model, facts.sensitivity) {
            last_error = format!(
                "{alias}: cloud model, and the step is {} (above cloud_max {})",
                sh.policy.level_name(facts.sensitivity),
                sh.policy.level_name(sh.policy.cloud_max)
            );
            passed.push(last_error.clone());
            continue;
        }
        if position > 0 {
            // A fallback passes every check the routed model passed: the
            // window, the max output and its own tier's share of calls (this
            // call moves from the routed model's tier to the fallback's).
            let mut usage = sh.tiers.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // Take this call out of the routed tier, then ask whether it fits
            // in the fallback's.
            if let Some(n) = routed_tier.and_then(|t| usage.used.get_mut(&t)) {
                *n = n.saturating_sub(1);
            }
            let one_call = Facts {
                calls: 1,
                ..facts.clone()
            };
            if let Err(why) = route::fits(&sh.policy, model, &one_call, &usage, counts) {
                last_error = format!("{alias}: {why}");
                passed.push(last_error.clone());
                continue;
            }
        }
        if model.context_window <= need_window_above {
            continue;
        }
        let Some(client) = sh.providers.clients.get(&model.provider) else {
            let var = sh
                .providers
                .missing_keys
                .get(&model.provider)
                .cloned()
                .unwrap_or_default();
            last_error = format!("{alias}: no API key ({var} is not set)");
            passed.push(last_error.clone());
            continue;
        };
        if let Some(launch) = sh
            .policy
            .providers
            .get(&model.provider)
            .and_then(|p| p.launch.as_ref())
        {
            let started = sh
                .resources
                .servers
                .ensure(&model.provider, launch, |s| {
                    let (command, ready_after) = match s {
                        local_server::Started::AlreadyRunning => (None, Duration::ZERO),
                        local_server::Started::Adopted { pid } => (
                            Some(format!(
                                "the server a killed run left running (pid {pid}); adopted, it stops with this run"
                            )),
                            Duration::ZERO,
                        ),
                        local_server::Started::Launched {
                            command,
                            ready_after,
                        } => (Some(command.clone()), *ready_after),
                    };
                    sh.emit(Event::ServerReady {
                        provider: model.provider.clone(),
                        command,
                        ready_after,
                    });
                })
                .await;
            if let Err(e) = started {
                last_error = format!("{alias}: {e}");
                failures.push(last_error.clone());
                continue;
            }
        }
        if let Some(prev) = previous {
            sh.emit(Event::FallingBack {
                step: step_id.to_owned(),
                from: prev.to_owned(),
                to: alias.clone(),
                reason: last_error.clone(),
            });
        }
        previous = Some(alias);
        match call_model(
            sh,
            step_id,
            step,
            model,
            client.as_ref(),
            &system,
            &prompt,
            label,
            counts,
            &mut report,
        )
        .await
        {
            Ok(v) => {
                if let Some(t) = routed_tier.filter(|t| *t != model.tier) {
                    let mut usage = sh.tiers.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(n) = usage.used.get_mut(&t) {
                        *n = n.saturating_sub(1);
                    }
                    *usage.used.entry(model.tier).or_insert(0) += 1;
                }
                report.model = Some(alias.clone());
                report.latency_ms = started.elapsed().as_millis() as u64;
                return (report, Ok(v));
            }
            Err(CallFailure {
                message,
                context_length,
            }) => {
                report.model = Some(alias.clone());
                last_error = message;
                failures.push(last_error.clone());
                if context_length {
                    need_window_above = model.context_window;
                }
            }
        }
    }
    report.latency_ms = started.elapsed().as_millis() as u64;
    // Every candidate's reason, the real failures first: a local call's
    // HTTP 500 is the cause, not the gate that kept its fallbacks away.
    let message = if failures.is_empty() && passed.is_empty() {
        last_error
    } else {
        failures
            .into_iter()
            .chain(passed)
            .collect::<Vec<_>>()
            .join("; ")
    };
    (report, Err(message))
}

/// Every text of a request that reaches the provider.
pub(crate) fn request_texts(req: &crate::provider::ChatRequest) -> Vec<&str> {
    req.system
        .as_deref()
        .into_iter()
        .chain(req.messages.iter().map(|m| m.content.as_str()))
        .collect()
}

struct CallFailure {
    message: String,
    context_length: bool,
}

/// One model: retries with backoff, the budget before each try, structured
/// output validated (and asked again once with the validation error).
#[expect(
    clippy::too_many_arguments,
    reason = "the call context is spelled out rather than hidden in a struct used once"
)]
async fn call_model(
    sh: &Shared,
    step_id: &str,
    step: &crate::workflow::Step,
    model: &Model,
    client: &dyn Provider,
    system: &Option<String>,
    prompt: &str,
    label: &route::Label,
    counts: &(dyn Fn(tokens::Tokenizer) -> u64 + Sync),
    report: &mut CallReport,
) -> Result<Value, CallFailure> {
    let schema = step.output_schema().cloned();
    let validator = schema
        .as_ref()
        .and_then(|s| jsonschema::validator_for(s).ok());
    let mut req = step_request(step, model, system, prompt);
    req.stream = sh.options.stream;
    let journal = sh.options.journal.as_ref();
    let retries = step.retries.unwrap_or(sh.options.retries);
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(sh.options.backoff_min)
        .with_max_delay(sh.options.backoff_max)
        .with_max_times(retries as usize)
        .with_jitter()
        .build();
    let call_timeout = step.timeout.unwrap_or(sh.options.call_timeout);
    let mut retried = 0u32;
    let mut schema_retry_used = false;
    // The request the cache was last asked about (a retry after a transient
    // error sends the same request again: no need to ask twice).
    let mut looked_up: Option<String> = None;
    loop {
        let hash = journal.map(|_| request_hash(sh, model, &req));
        let record = |attempt: usize| CallRecord {
            step: step_id.to_owned(),
            item: report.item,
            attempt: attempt as u32,
            request_hash: hash.clone(),
            prompt_hash: journal.map(|_| crate::journal::prompt_hash(system.as_deref(), prompt)),
            model: model.alias.clone(),
            provider: model.provider.clone(),
            provider_model: model.model.clone(),
            tier: model.tier.name().to_owned(),
            local: model.locality == crate::policy::Locality::Local,
            started_ms: journal.map_or(0, |j| j.journal.now()),
            estimate_usd: sh.call_estimates.get(step_id).copied().unwrap_or(0.0),
            ..CallRecord::default()
        };
        // The cache: an identical request (same provider, model, messages,
        // parameters) answered within the TTL costs nothing.
        if let Some(h) = hash.as_ref().filter(|h| looked_up.as_ref() != Some(*h)) {
            looked_up = Some(h.clone());
            if let Some(answer) = cached(sh, h).await {
                let output = match &validator {
                    None => Ok(Value::String(answer.text.clone())),
                    Some(v) => parse_structured(&answer.text, v),
                };
                // Only valid answers are cached; one that no longer
                // validates is simply not used.
                if let Ok(v) = output {
                    report.source = CallSource::Cache;
                    report.saved_usd += answer.cost_usd;
                    report.usage += answer.usage;
                    report.attempts.push(Attempt {
                        model: model.alias.clone(),
                        outcome: "cached".to_owned(),
                        status: None,
                        message: Some(format!("answer of run {}", answer.run_id)),
                        waited_ms: None,
                    });
                    let mut r = record(report.attempts.len());
                    r.outcome = "cached".to_owned();
                    r.usage = answer.usage;
                    r.list_cost_usd = answer.cost_usd;
                    r.saved_usd = answer.cost_usd;
                    r.flagship_cost_usd = flagship_cost(sh, &answer.usage);
                    r.from_cache = true;
                    r.output = Some(v.clone());
                    sh.journal_call(r).await;
                    return Ok(v);
                }
            }
        }
        // A call that is not made (refused at the boundary, over budget):
        // one attempt in the report and in the journal, with its reason.
        let mut not_called = |outcome: &str, message: &str| {
            report.attempts.push(Attempt {
                model: model.alias.clone(),
                outcome: outcome.to_owned(),
                status: None,
                message: Some(message.to_owned()),
                waited_ms: None,
            });
            let mut r = record(report.attempts.len());
            r.outcome = outcome.to_owned();
            r.error = Some(message.to_owned());
            r
        };
        // The gate at the provider boundary, on the request as it leaves —
        // before a slot or a reservation is taken: a refused request costs
        // nothing and waits for nothing.
        if let Err(message) = route::admit(&sh.policy, model, label, &request_texts(&req)) {
            let r = not_called("refused", &message);
            sh.journal_call(r).await;
            return Err(CallFailure {
                message,
                context_length: false,
            });
        }
        let input_tokens = counts(model.tokenizer)
            + req.messages.len().saturating_sub(1) as u64 * u64::from(step.max_output_tokens());
        let worst = cost::worst_case(
            &model.price,
            input_tokens,
            u64::from(step.max_output_tokens()),
            req.cache_system,
            Billing::Standard,
        );
        // Slots first, then the budget: a call queued behind others must not
        // hold a reservation that keeps the calls in flight from fitting.
        let permit = sh
            .resources
            .limits
            .acquire(
                &model.provider,
                &model.alias,
                input_tokens + u64::from(step.max_output_tokens()),
            )
            .await;
        let waiting = || {
            sh.emit(Event::WaitingForBudget {
                step: step_id.to_owned(),
                model: model.alias.clone(),
            });
        };
        let reservation = match sh.budget.reserve_or_wait(worst, waiting).await {
            Ok(r) => r,
            Err(over) => {
                let message = format!("{}: not called — {over}", model.alias);
                let r = not_called("over_budget", &message);
                sh.journal_call(r).await;
                return Err(CallFailure {
                    message,
                    context_length: false,
                });
            }
        };
        let mut rec = record(report.attempts.len() + 1);
        let sent = Instant::now();
        let result = match tokio::time::timeout(call_timeout, client.send(&req)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError {
                kind: ErrorKind::Timeout,
                status: None,
                message: format!("no answer within {}s", call_timeout.as_secs_f64()),
                retry_after: None,
                should_retry: None,
                body: None,
            }),
        };
        drop(permit);
        rec.latency_ms = sent.elapsed().as_millis() as u64;
        match result {
            Ok(resp) => {
                let reported = resp.usage.input_tokens > 0 || resp.usage.output_tokens > 0;
                // No usage reported: count it ourselves rather than pretend
                // the call was free.
                let answer_tokens = model.tokenizer.count(&resp.text) as u64;
                let usage = if reported {
                    resp.usage
                } else {
                    Usage {
                        input_tokens,
                        output_tokens: answer_tokens + tokens::chat_overhead(1) as u64,
                        ..Usage::default()
                    }
                };
                // What the server said is judged, then priced, in one place
                // (a provider-reported cost, OpenRouter's, wins when it is
                // believable).
                let charged = cost::charge(
                    &model.price,
                    &cost::Asked {
                        input_tokens,
                        max_output: u64::from(step.max_output_tokens()),
                        cache: req.cache_system,
                        billing: Billing::Standard,
                        answer_tokens,
                    },
                    usage,
                    resp.cost_usd,
                );
                let (usage, cost, list) = (charged.usage, charged.cost, charged.list);
                report.cost_usd += cost;
                report.list_cost_usd += list;
                report.usage += usage;
                if report.ttft_ms.is_none() {
                    report.ttft_ms = resp.time_to_first_token.map(|d| d.as_millis() as u64);
                }
                report.truncated = resp.truncated();
                report.attempts.push(Attempt {
                    model: model.alias.clone(),
                    outcome: "ok".to_owned(),
                    status: Some(200),
                    message: None,
                    waited_ms: None,
                });
                let verdict = validator.as_ref().map(|v| parse_structured(&resp.text, v));
                let output = match &verdict {
                    None => Some(Value::String(resp.text.clone())),
                    Some(Ok(v)) => Some(v.clone()),
                    Some(Err(_)) => None,
                };
                // Only whole, valid answers answer later identical requests
                // (not one a provider's filter stopped part way).
                let cacheable = output.is_some() && !resp.truncated() && resp.ended_normally();
                rec.outcome = match (&verdict, resp.truncated()) {
                    (Some(Err(_)), _) => "invalid_output",
                    (_, true) => "truncated",
                    _ => "ok",
                }
                .to_owned();
                rec.error = verdict.as_ref().and_then(|v| v.clone().err());
                rec.usage = usage;
                rec.cost_usd = cost;
                rec.list_cost_usd = list;
                rec.flagship_cost_usd = flagship_cost(sh, &usage);
                rec.usage_flag = charged.flag;
                rec.cacheable = cacheable;
                rec.response = cacheable.then(|| resp.text.clone());
                rec.output = output;
                // Journaled before the reservation is settled: the budget
                // may count the call twice for a moment, never not at all.
                sh.journal_call(rec).await;
                sh.budget.settle(reservation, cost);
                let Some(verdict) = verdict else {
                    return Ok(Value::String(resp.text));
                };
                match verdict {
                    Ok(v) => return Ok(v),
                    Err(why) if !schema_retry_used => {
                        schema_retry_used = true;
                        if let Some(last) = report.attempts.last_mut() {
                            last.outcome = "invalid_output".to_owned();
                            last.message = Some(why.clone());
                        }
                        req.messages.push(Message::assistant(resp.text.clone()));
                        req.messages.push(Message::user(format!(
                            "Your answer does not match the required JSON Schema: {why}\nAnswer again with only JSON that matches the schema."
                        )));
                    }
                    Err(why) => {
                        if let Some(last) = report.attempts.last_mut() {
                            last.outcome = "invalid_output".to_owned();
                            last.message = Some(why.clone());
                        }
                        return Err(CallFailure {
                            message: format!(
                                "{}: the answer does not match the output schema: {why}; the answer was: {}",
                                model.alias,
                                truncate(&resp.text, 500)
                            ),
                            context_length: false,
                        });
                    }
                }
            }
            Err(err) => {
                // A call that broke after the provider started answering may
                // well have been billed: count its worst case, to stay on the
                // safe side of the budget. Errors before that cost nothing.
                let maybe_billed = matches!(
                    err.kind,
                    ErrorKind::Timeout
                        | ErrorKind::StreamBroken
                        | ErrorKind::Malformed
                        | ErrorKind::ResponseTooLarge
                );
                let charged = if maybe_billed {
                    worst
                } else if err.kind == ErrorKind::Blocked {
                    // A withheld answer: its prompt was billed.
                    cost::floor(
                        &model.price,
                        &cost::Asked {
                            input_tokens,
                            max_output: u64::from(step.max_output_tokens()),
                            cache: req.cache_system,
                            billing: Billing::Standard,
                            answer_tokens: 0,
                        },
                    )
                } else {
                    0.0
                };
                let kind = serde_json::to_value(err.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                rec.outcome = kind.clone();
                rec.error = Some(err.message.clone());
                rec.cost_usd = charged;
                rec.list_cost_usd = charged;
                sh.journal_call(rec).await;
                sh.budget.settle(reservation, charged);
                report.attempts.push(Attempt {
                    model: model.alias.clone(),
                    outcome: kind,
                    status: err.status,
                    message: Some(err.message.clone()),
                    waited_ms: None,
                });
                let message = format!("{}: {}", model.alias, err.message);
                if err.kind == ErrorKind::ContextLength {
                    return Err(CallFailure {
                        message,
                        context_length: true,
                    });
                }
                if !err.is_retryable() || retried >= retries {
                    return Err(CallFailure {
                        message,
                        context_length: false,
                    });
                }
                let wait = match err.retry_after {
                    Some(w) if w > sh.options.max_retry_wait => {
                        return Err(CallFailure {
                            message: format!(
                                "{message} (asked to wait {}s; trying the next model)",
                                w.as_secs()
                            ),
                            context_length: false,
                        });
                    }
                    Some(w) => w,
                    None => backoff.next().unwrap_or(sh.options.backoff_max),
                };
                retried += 1;
                if let Some(last) = report.attempts.last_mut() {
                    last.waited_ms = Some(wait.as_millis() as u64);
                }
                sh.emit(Event::Retrying {
                    step: step_id.to_owned(),
                    model: model.alias.clone(),
                    attempt: retried,
                    wait,
                    error: err.message.clone(),
                });
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Whether to mark the system prompt as a prompt-cache breakpoint: the
/// policy asks for caching on this model and the prompt reaches the model's
/// minimum cacheable length (Anthropic ignores a shorter marked prefix, so
/// marking it would only make the plan and the request disagree). The count
/// is the model's tokenizer estimate (o200k_base for Claude); Claude's own
/// tokenizer usually counts more, so the error is on the side of leaving a
/// borderline prefix unmarked — uncached, but never billed a write premium
/// for nothing.
pub(crate) fn prompt_cache(model: &Model, system: Option<&str>) -> Option<crate::policy::CacheTtl> {
    let ttl = model.prompt_cache?;
    let system = system.filter(|s| !s.is_empty())?;
    let tokens = model.tokenizer.count(system) as u64;
    (tokens >= model.prompt_cache_min_tokens).then_some(ttl)
}

/// The request for one call of a step on a model (not streamed).
pub(crate) fn step_request(
    step: &crate::workflow::Step,
    model: &Model,
    system: &Option<String>,
    prompt: &str,
) -> ChatRequest {
    ChatRequest {
        model: model.model.clone(),
        system: system.clone(),
        messages: vec![Message::user(prompt)],
        max_output_tokens: step.max_output_tokens(),
        temperature: step.temperature,
        output_schema: step.output_schema().cloned(),
        stream: false,
        cache_system: prompt_cache(model, system.as_deref()),
        endpoint: match model.endpoint {
            crate::policy::Endpoint::Chat => Endpoint::Chat,
            crate::policy::Endpoint::Completions => Endpoint::Completions,
        },
        stop: step.stop.clone(),
    }
}

/// The response cache: an identical request (same provider, model,
/// messages, parameters) answered within the TTL, if the run has a journal
/// and a cache.
async fn cached(sh: &Shared, hash: &str) -> Option<crate::journal::CachedAnswer> {
    let j = sh.options.journal.as_ref()?;
    let ttl = j.cache_ttl?;
    let not_before = j.journal.now() - ttl.as_millis() as i64;
    let (db, key) = (Arc::clone(&j.journal), hash.to_owned());
    match tokio::task::spawn_blocking(move || db.cached_answer(&key, not_before)).await {
        Ok(Ok(hit)) => hit,
        Ok(Err(e)) => {
            sh.emit(Event::JournalError {
                message: e.to_string(),
            });
            None
        }
        Err(e) => {
            sh.emit(Event::JournalError {
                message: format!("run journal: {e}"),
            });
            None
        }
    }
}

/// What the same usage costs on the policy's flagship (the plan's
/// all-flagship comparison, on real usage).
fn flagship_cost(sh: &Shared, usage: &Usage) -> f64 {
    sh.policy.flagship_model().map_or(0.0, |f| {
        f.price.usage_cost(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
            usage.output_tokens,
        )
    })
}

/// The identity of a request for the response cache: what decides the
/// answer — the provider's API and endpoint, the model, the messages and
/// every generation parameter. Not the key (it is not in the request), not
/// streaming (the same answer either way).
fn request_hash(sh: &Shared, model: &Model, req: &ChatRequest) -> String {
    let base_url = sh
        .policy
        .providers
        .get(&model.provider)
        .and_then(|p| p.base_url.as_deref())
        .unwrap_or_default();
    let mut identity = provider::request_identity(model.provider_kind, req);
    if let Some(o) = identity.as_object_mut() {
        o.insert("v".to_owned(), json!(1));
        // Two servers of one kind may serve different models under one name.
        o.insert("base_url".to_owned(), json!(base_url.trim_end_matches('/')));
    }
    crate::journal::sha256_json(&identity)
}

/// Parses an answer as JSON (tolerating a Markdown code fence around it) and
/// validates it.
fn parse_structured(text: &str, validator: &jsonschema::Validator) -> Result<Value, String> {
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
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    let errors = schema_errors(validator, &value);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors.join("; "))
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

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .contains("/label")
        );
        assert!(
            parse_structured("bug", &v)
                .unwrap_err()
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
