//! Running suites: select cases (filter, shard), plan each, run them
//! concurrently through the same executor as `tollgate run` — sharing one
//! set of limits and local servers per suite — then check expectations,
//! snapshots and judges, and aggregate repeats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::assertion::{self, Expectations, Failure, SnapshotMode};
use super::cassette::{Cassette, Recorder, Replayer};
use super::results::{
    CaseResult, Cases, CasesWriter, FORMAT_VERSION, Mode, Outcome, Results, RunResult, Shard,
    StepFigures, SuiteResult,
};
use super::snapshot;
use super::suite::{Case, Suite};
use crate::analyze::Analysis;
use crate::diagnostic::Diagnostic;
use crate::inputs::Inputs;
use crate::plan::{self, Plan};
use crate::policy::Policy;
use crate::run::{
    self, Providers, Resources, RunOptions, RunReport, RunStatus, StepReport, StepStatus,
};

mod error;
mod judge;
use error::CheckError;
use judge::{Verdict, judge};

/// How a test run behaves.
#[derive(Clone)]
pub struct TestOptions {
    pub mode: Mode,
    /// Never write snapshot files (CI): a new or changed output just fails.
    pub ci: bool,
    /// Runs per case.
    pub repeat: usize,
    pub shard: Option<Shard>,
    /// Only cases whose name contains this.
    pub filter: Option<String>,
    pub run: RunOptions,
    /// Live and recording runs: each case's run (and each judge's) is
    /// journaled like a `tollgate run` — its spend counts against the
    /// policy's daily and monthly budgets, which are checked before every
    /// call, and `report` shows it. No response cache: a suite measures the
    /// models. Replays spend nothing and are not journaled.
    pub journal: Option<Arc<crate::journal::Journal>>,
    /// Told of every finished run of a case (suite — `suite[variant]` under `--policy`/`--model` —, case, the run): how the
    /// CLI shows progress (`crate::progress::TestProgress`). The runner
    /// itself never touches the terminal.
    pub on_run: Option<OnRun>,
    /// Keep each run's figures step by step and its model time
    /// ([`RunResult::steps`], [`RunResult::model_ms`]): what `compare`
    /// aggregates. Off for `test`, whose results stay small.
    pub measure: bool,
}

/// See [`TestOptions::on_run`].
pub type OnRun = Arc<dyn Fn(&str, &str, &RunResult) + Send + Sync>;

/// Does this case belong to the shard? By a hash of the suite and case
/// names, so the split is the same on every runner and does not move cases
/// around when others are added.
pub fn in_shard(suite: &str, case: &str, shard: &Shard) -> bool {
    let h = Sha256::digest(format!("{suite}\0{case}").as_bytes());
    let n = u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8]));
    n % u64::from(shard.count.max(1)) == u64::from(shard.index.saturating_sub(1))
}

/// Does this run take the case (`--filter`, `--shard`)?
pub fn is_selected(suite: &Suite, case: &Case, opts: &TestOptions) -> bool {
    opts.filter
        .as_ref()
        .is_none_or(|f| case.name.contains(f.as_str()))
        && opts
            .shard
            .as_ref()
            .is_none_or(|s| in_shard(&suite.name, &case.name, s))
}

/// How many cases of a suite this run takes (for progress). Without a
/// filter or a shard, the suite's count; else the cases are compiled once
/// more to see their names (a suite keeps none).
pub fn selected_count(suite: &Suite, opts: &TestOptions) -> usize {
    if opts.filter.is_none() && opts.shard.is_none() {
        return suite.case_count;
    }
    let mut n = 0;
    let _ = suite.for_each_case(|c| n += usize::from(is_selected(suite, &c, opts)));
    n
}

/// Values of the policy's key variables, scrubbed from cassettes.
fn secrets(policy: &Policy) -> Vec<String> {
    policy
        .providers
        .values()
        .filter_map(|p| p.api_key_env.as_ref())
        .filter_map(|v| std::env::var(v).ok())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The check pass of [`run_suites`] alone: every problem that would stop
/// these suites before their first call (`compare` checks every variant
/// before running any).
pub fn check_suites(suites: &[Suite], opts: &TestOptions) -> Vec<Diagnostic> {
    suites
        .iter()
        .filter_map(|s| prepare(s, opts).err())
        .flatten()
        .collect()
}

/// Runs the suites in order. Problems with the input (a case that cannot be
/// planned, a missing key, a cassette that cannot be read) come back as
/// diagnostics before any call is made.
pub async fn run_suites(
    suites: &[Suite],
    opts: &TestOptions,
    cancel: CancellationToken,
) -> Result<Results, Vec<Diagnostic>> {
    // Plan everything first: all input problems before the first call.
    let mut diags = Vec::new();
    let mut prepared = Vec::new();
    for suite in suites {
        match prepare(suite, opts) {
            Ok(p) => prepared.push(p),
            Err(d) => diags.extend(d),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut out = Vec::new();
    for p in prepared {
        out.push(run_suite(p, opts, cancel.clone()).await);
    }
    Ok(Results {
        version: FORMAT_VERSION,
        mode: opts.mode,
        shards: opts.shard.iter().cloned().collect(),
        suites: out,
        policy_tests: Vec::new(),
    })
}

struct Prepared<'a> {
    suite: &'a Suite,
    policy: Arc<Policy>,
    /// How many cases are selected. Their plans were built and checked,
    /// then dropped, and the cases too: each is compiled again as its run
    /// starts ([`Suite::case_stream`]) and each run plans its case again
    /// (see [`plan_case`]), so a suite holds O(concurrency) cases and
    /// plans, not one per case.
    selected: usize,
    providers: Providers,
    cassette: Option<Arc<Cassette>>,
}

/// A case's plan. Planning is deterministic (the same files and inputs
/// give the same plan, byte for byte), so the plan a run builds again is
/// the plan [`prepare`] checked.
fn plan_case(suite: &Suite, case: &Case) -> Result<Plan, Vec<Diagnostic>> {
    let policy_name = suite.policy_path.display().to_string();
    plan::build(&suite.analysis, &suite.policy, &policy_name, &case.inputs)
}

/// The check pass: every selected case is planned (and in live or recording
/// mode its keys checked) before the first call, keeping nothing of a plan
/// but the problems it shows — the promise that a suite with any input
/// problem runs nothing, in memory flat in the number of cases.
fn prepare<'a>(suite: &'a Suite, opts: &TestOptions) -> Result<Prepared<'a>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut selected = 0;
    // Cases that only plan replay nothing: a suite of them needs no recordings.
    let mut calls_models = false;
    let live = matches!(opts.mode, Mode::Live | Mode::Record);
    // Synchronous calls only: a batch may take up to 24 hours, and the
    // recorder must see every call.
    let live_providers = live.then(|| Providers::from_env(&suite.policy).without_batch());
    let mut key_diags: Vec<Diagnostic> = Vec::new();
    let visited = suite.for_each_case(|case| {
        if !is_selected(suite, &case, opts) {
            return;
        }
        match plan_case(suite, &case) {
            Ok(p) => {
                selected += 1;
                calls_models |= !case.plan_only;
                // A plan_only case calls nothing, so it needs no key.
                if let (Some(providers), false) = (&live_providers, case.plan_only) {
                    for d in providers.check_keys(&p, &suite.policy) {
                        if !key_diags.iter().any(|x| x.message == d.message) {
                            key_diags.push(d);
                        }
                    }
                }
            }
            Err(d) => {
                diags.push(
                    Diagnostic::error(
                        "case-plan",
                        format!(
                            "case `{}` of suite `{}` cannot be planned",
                            case.name, suite.name
                        ),
                    )
                    .with_help(format!(
                        "the case is at {}; the problems follow",
                        case.origin
                    )),
                );
                diags.extend(d);
            }
        }
    });
    if let Err(d) = visited {
        diags.extend(d);
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let open = |check_exists: bool| -> Result<Arc<Cassette>, Vec<Diagnostic>> {
        if check_exists && calls_models && !suite.cassette_path.is_file() {
            let (whose, how) = match &suite.variant {
                Some(v) => (
                    format!(" under variant `{}`", v.name),
                    format!(
                        "tollgate test {} --record --policy {}{}",
                        suite.path.display(),
                        v.policy,
                        v.model
                            .as_ref()
                            .map(|m| format!(" --model {m}"))
                            .unwrap_or_default()
                    ),
                ),
                None => (String::new(), "tollgate test --record".to_owned()),
            };
            return Err(vec![
                Diagnostic::error(
                    "no-recordings",
                    format!(
                        "suite `{}` has no recorded responses{whose} at {}",
                        suite.name,
                        suite.cassette_path.display()
                    ),
                )
                .in_file(&suite.path)
                .with_help(format!("record them once with `{how}` (or `tollgate compare --record`) and commit the file")),
            ]);
        }
        Cassette::open(&suite.cassette_path, secrets(&suite.policy))
            .map(Arc::new)
            .map_err(|e| vec![Diagnostic::error("cassette", e.to_string()).in_file(&e.path)])
    };
    let (policy, providers, cassette) = match (opts.mode, live_providers) {
        (Mode::Live | Mode::Record, Some(providers)) => {
            // As `run`: no key crosses the network in clear text unless
            // the policy allows it.
            diags.extend(suite.policy.insecure_transport().map(|d| Diagnostic {
                severity: crate::diagnostic::Severity::Error,
                ..d.clone()
            }));
            diags.extend(key_diags);
            if !diags.is_empty() {
                return Err(diags);
            }
            if opts.mode == Mode::Record {
                let cassette = open(false)?;
                let c = Arc::clone(&cassette);
                let providers = providers.map_clients(move |_, inner| {
                    Arc::new(Recorder {
                        inner,
                        cassette: Arc::clone(&c),
                    })
                });
                (Arc::clone(&suite.policy), providers, Some(cassette))
            } else {
                (Arc::clone(&suite.policy), providers, None)
            }
        }
        _ => {
            let cassette = open(true)?;
            let clients = suite
                .policy
                .providers
                .iter()
                .map(|(name, p)| {
                    let client: Arc<dyn crate::provider::Provider> = Arc::new(Replayer {
                        kind: p.kind,
                        cassette: Arc::clone(&cassette),
                    });
                    (name.clone(), client)
                })
                .collect();
            // Offline means offline: no local server is started either.
            let mut policy = (*suite.policy).clone();
            for p in policy.providers.values_mut() {
                p.launch.clear();
            }
            (
                Arc::new(policy),
                Providers::with_clients(clients),
                Some(cassette),
            )
        }
    };
    Ok(Prepared {
        suite,
        policy,
        selected,
        providers,
        cassette,
    })
}

/// Judge workflows by (sensitivity level, pinned model), built once.
type Judges = Mutex<HashMap<(String, Option<String>), Arc<Analysis>>>;

/// Shared by the runs of one suite.
struct Ctx<'a> {
    suite: &'a Suite,
    policy: Arc<Policy>,
    providers: Providers,
    resources: Arc<Resources>,
    opts: &'a TestOptions,
    cancel: CancellationToken,
    judges: Judges,
    /// The journal record of the suite's first run: every other run of its
    /// workflow copies the files' paths and identities from it (see
    /// [`journaled`]).
    first_run: OnceLock<crate::journal::NewRun>,
}

async fn run_suite(p: Prepared<'_>, opts: &TestOptions, cancel: CancellationToken) -> SuiteResult {
    let ctx = Ctx {
        suite: p.suite,
        resources: Resources::new(&p.policy, &opts.run),
        policy: p.policy,
        providers: p.providers,
        opts,
        cancel,
        judges: Mutex::new(HashMap::new()),
        first_run: OnceLock::new(),
    };
    let repeat = opts.repeat.max(1);
    let concurrency = opts.run.concurrency.max(1);
    let ctx_ref = &ctx;
    // Progress names the variant too: a comparison runs each suite again.
    let progress_name = match &p.suite.variant {
        Some(v) => format!("{}[{}]", p.suite.name, v.name),
        None => p.suite.name.clone(),
    };
    let progress_name = &progress_name;
    // Cases are compiled again as they are needed (a suite keeps none), a
    // few ahead of the runs; a case file changed since the check pass stops
    // the suite with its problem.
    let mut incoming = case_stream(p.suite, concurrency);
    let changed: Mutex<Option<Vec<Diagnostic>>> = Mutex::new(None);
    let changed_ref = &changed;
    let cases = futures::stream::poll_fn(move |cx| incoming.poll_recv(cx)).filter_map(
        move |item| async move {
            match item {
                Ok(case) => is_selected(ctx_ref.suite, &case, opts).then(|| Arc::new(case)),
                Err(d) => {
                    *changed_ref.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
                    None
                }
            }
        },
    );
    // Runs are made lazily: as many at once as calls may be in flight (a run
    // waiting on a dependency holds no slot, and the limits bound the calls
    // themselves), so cases, plans, prompts and run reports exist for the
    // runs in flight only.
    let runs = cases
        .flat_map(|case| futures::stream::iter((0..repeat).map(move |r| (Arc::clone(&case), r))));
    let mut stream = Box::pin(
        runs.map(|(case, r)| async move {
            // After Ctrl-C no new case starts (those in flight stop too).
            let (result, pending) = if ctx_ref.cancel.is_cancelled() {
                (RunResult::interrupted(), Vec::new())
            } else {
                match plan_case(ctx_ref.suite, &case) {
                    Ok(plan) if case.plan_only => (check_routes(ctx_ref, &case, &plan), Vec::new()),
                    Ok(plan) => run_case(ctx_ref, &case, &plan).await,
                    // Cannot happen (the check pass planned the same case):
                    // said rather than assumed.
                    Err(d) => (unplannable(&d), Vec::new()),
                }
            };
            if let Some(tell) = &ctx_ref.opts.on_run {
                tell(progress_name, &case.name, &result);
            }
            (case, r, result, pending)
        })
        .buffer_unordered(concurrency),
    );
    // A finished run is folded at once into its case's small record (see
    // `RunResult::reduce`); a case is complete when its last repeat is in.
    // Complete cases go to the spill in the order they finish (memory flat
    // in the number of cases); the reports read them back in suite order.
    // (One more for the suite's own failure.)
    let mut cases = CasesWriter::with_capacity(p.selected + 1);
    let mut partial: HashMap<usize, Partial> = HashMap::new();
    let mut any_errored = false;
    while let Some((case, r, result, pending)) = stream.next().await {
        any_errored |= result.outcome == Outcome::Errored;
        let entry = partial
            .entry(case.index)
            .or_insert_with(|| (Vec::with_capacity(repeat), Vec::new()));
        entry.0.push((r, result.reduce()));
        for f in pending {
            if !entry.1.contains(&f) {
                entry.1.push(f);
            }
        }
        if entry.0.len() == repeat {
            let (mut runs, pending) = partial.remove(&case.index).unwrap_or_default();
            runs.sort_by_key(|(r, _)| *r);
            cases.push(CaseResult::from_runs(
                case.name.clone(),
                case.index,
                case.origin.clone(),
                case.pass_threshold,
                runs.into_iter().map(|(_, r)| r).collect(),
                pending,
            ));
        }
    }
    let changed = changed_ref.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(d) = changed {
        // Not a case, but the suite's own failure: shown where a case's
        // error would be, after every case.
        any_errored = true;
        cases.push(CaseResult::from_runs(
            "(the suite's case files)".to_owned(),
            usize::MAX,
            p.suite.path.display().to_string(),
            1.0,
            vec![suite_changed(&d)],
            Vec::new(),
        ));
    }
    drop(stream);
    ctx.resources.shutdown().await;
    // Suite order: `index` is the case's position in its suite, and the
    // selection keeps that order.
    let mut cases = cases.finish();
    if let Some(c) = &p.cassette {
        if opts.mode == Mode::Record {
            // A complete recording replaces the suite's answers; a partial one
            // (one shard, a filter, Ctrl-C, a case that errored) only adds.
            let complete = opts.filter.is_none()
                && opts.shard.is_none()
                && !ctx.cancel.is_cancelled()
                && !any_errored;
            if complete {
                c.prune_unrecorded();
            }
            if let Err(err) = c.save() {
                // Losing a paid-for recording silently would be worse than
                // failing the run: say so on every case.
                let why = format!(
                    "cannot write the recordings to {}: {err}",
                    c.path().display()
                );
                cases = errored_all(&cases, &why);
            }
        }
    }
    SuiteResult {
        name: p.suite.name.clone(),
        path: p.suite.path.display().to_string(),
        workflow: p.suite.workflow_path.display().to_string(),
        policy: p.suite.policy_path.display().to_string(),
        variant: p.suite.variant.clone(),
        cases,
    }
}

/// Every case of `cases` again, each run errored for `why`.
fn errored_all(cases: &Cases, why: &str) -> Cases {
    let mut out = CasesWriter::new();
    for case in cases.iter() {
        let case = match case {
            Ok(c) => c.into_owned(),
            // The records cannot be read back: the suite's own failure,
            // shown in place of its cases.
            Err(e) => CaseResult::from_runs(
                "(the suite's results)".to_owned(),
                usize::MAX,
                String::new(),
                1.0,
                vec![RunResult {
                    error: Some(format!(
                        "{why}; and the case results cannot be read back: {e}"
                    )),
                    ..RunResult::empty(Outcome::Errored)
                }],
                Vec::new(),
            ),
        };
        let mut runs = case.runs;
        for r in &mut runs {
            r.outcome = Outcome::Errored;
            r.error = Some(why.to_owned());
        }
        out.push(CaseResult::from_runs(
            case.name,
            case.index,
            case.origin,
            case.pass_threshold,
            runs,
            case.pending_snapshots,
        ));
    }
    out.finish()
}

/// A `plan_only` case: its `route` expectations checked on the plan; no
/// call, nothing spent.
fn check_routes(ctx: &Ctx<'_>, case: &Case, plan: &Plan) -> RunResult {
    let mut result = RunResult::empty(Outcome::Passed);
    if ctx.opts.measure {
        result.model_ms = Some(0);
    }
    for (step_id, expect) in &case.expect {
        let (Some(route), Some(step)) =
            (&expect.route, plan.steps.iter().find(|s| &s.id == step_id))
        else {
            continue;
        };
        let alias = step.model.as_ref().map(|m| m.alias.as_str());
        result
            .failures
            .extend(route_failures(&ctx.policy, step_id, route, alias));
    }
    if !result.failures.is_empty() {
        result.outcome = Outcome::Failed;
    }
    result
}

/// A route expectation's failures for a step routed to `alias`.
fn route_failures(
    policy: &Policy,
    step: &str,
    route: &assertion::RouteExpect,
    alias: Option<&str>,
) -> Vec<Failure> {
    route
        .check(policy, alias)
        .into_iter()
        .map(|message| Failure {
            step: step.to_owned(),
            assertion: "route".to_owned(),
            message,
            expected: None,
            actual: None,
            diff: None,
        })
        .collect()
}

/// A case whose repeats are not all in: (repeat, run) pairs, pending snapshots.
type Partial = (Vec<(usize, RunResult)>, Vec<String>);

/// The errored run of a case whose plan failed at run time.
fn unplannable(d: &[Diagnostic]) -> RunResult {
    let mut r = RunResult::interrupted();
    r.error = Some(format!(
        "the case cannot be planned: {}",
        d.first().map_or("", |d| d.message.as_str())
    ));
    r
}

/// A suite's cases for async code: a thread compiles them
/// ([`Suite::case_compiler`]) and hands them over through a channel of
/// `ahead` places, so at most that many compiled cases wait at once.
/// Dropping the receiver stops the thread at its next case. A problem
/// arrives as the last item.
fn case_stream(
    suite: &Suite,
    ahead: usize,
) -> tokio::sync::mpsc::Receiver<Result<Case, Vec<Diagnostic>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
    let compiler = suite.case_compiler();
    std::thread::spawn(move || {
        if let Err(d) = compiler.run(|c| tx.blocking_send(Ok(c)).is_ok()) {
            let _ = tx.blocking_send(Err(d));
        }
    });
    rx
}

/// The errored run standing for a suite whose case files changed while
/// it ran.
fn suite_changed(d: &[Diagnostic]) -> RunResult {
    let mut r = RunResult::interrupted();
    r.error = Some(
        d.iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    );
    r
}

/// The run options of one workflow run of the suite: journaled in live and
/// recording runs (see [`TestOptions::journal`]).
async fn journaled(
    ctx: &Ctx<'_>,
    analysis: &Analysis,
    workflow_path: &std::path::Path,
    inputs: &Inputs,
    plan: &Plan,
) -> Result<(RunOptions, Option<String>), CheckError> {
    let mut options = ctx.opts.run.clone();
    let Some(journal) = &ctx.opts.journal else {
        return Ok((options, None));
    };
    let new_run = || {
        crate::journal::new_run(
            analysis,
            workflow_path,
            &ctx.suite.policy,
            &ctx.suite.policy_path,
            inputs,
            plan,
        )
    };
    // The suite's workflow and policy files are the same for every case:
    // resolved, read and hashed once, not per case (judges, rarer, each
    // have their own workflow and build their record whole).
    let suite_workflow =
        std::ptr::eq(analysis, &*ctx.suite.analysis) && workflow_path == ctx.suite.workflow_path;
    let record = if suite_workflow {
        ctx.first_run.get_or_init(new_run).with_case(inputs, plan)
    } else {
        new_run()
    };
    let db = Arc::clone(journal);
    // Not waiting for the disk, neither here nor at the case's end (see
    // `RunJournal::durable_at_end`): a case waited for three commits, which
    // on a busy disk cost more than its call.
    let run_id = tokio::task::spawn_blocking(move || db.begin_run_queued(&record)).await??;
    options.journal = Some(run::RunJournal {
        journal: Arc::clone(journal),
        run_id: run_id.clone(),
        cache_ttl: None,
        durable_at_end: false,
        failed: Arc::default(),
    });
    Ok((options, Some(run_id)))
}

fn finish_journaled(ctx: &Ctx<'_>, run_id: Option<String>, status: RunStatus) {
    let (Some(journal), Some(id)) = (&ctx.opts.journal, run_id) else {
        return;
    };
    // Queued (nothing waits on it). A failure leaves the run `running`
    // until its process is gone (then `interrupted`): nothing is lost, so
    // it is not worth failing for.
    let _ = journal.queue_finish_run(&id, status.as_str());
}

/// Why a step that failed did: a wrong answer is the model's (a failed
/// assertion); anything else is the infrastructure's.
fn invalid_answer(step: &StepReport) -> bool {
    step.calls.tally().invalid_answers > 0
}

/// One run of one case: the workflow, then every expectation.
async fn run_case(ctx: &Ctx<'_>, case: &Case, plan: &Plan) -> (RunResult, Vec<String>) {
    let started = Instant::now();
    // Measuring: this run's own clients, each adding its answers' latency
    // to the run's model time (judges use the suite's clients: not counted).
    let model_ms = ctx.opts.measure.then(|| Arc::new(AtomicU64::new(0)));
    let providers = match &model_ms {
        Some(total) => ctx.providers.clone().map_clients(|_, inner| {
            Arc::new(Timed {
                inner,
                total_ms: Arc::clone(total),
            })
        }),
        None => ctx.providers.clone(),
    };
    let job = run::Job {
        analysis: Arc::clone(&ctx.suite.analysis),
        policy: Arc::clone(&ctx.policy),
        plan,
        inputs: std::borrow::Cow::Borrowed(&case.inputs),
    };
    let (options, run_id) = match journaled(
        ctx,
        &ctx.suite.analysis,
        &ctx.suite.workflow_path,
        &case.inputs,
        plan,
    )
    .await
    {
        Ok(o) => o,
        Err(e) => {
            let mut r = RunResult::interrupted();
            r.error = Some(e.to_string());
            return (r, Vec::new());
        }
    };
    // No event receiver here: a failed journal write is read from here.
    let journal_failed = options.journal.as_ref().map(|j| Arc::clone(&j.failed));
    let report = run::execute_in(
        Arc::clone(&ctx.resources),
        job,
        providers,
        options,
        ctx.cancel.clone(),
        None,
    )
    .await;
    finish_journaled(ctx, run_id, report.status);
    let mut result = RunResult {
        calls: report.steps.iter().map(|s| s.calls.len() as u64).sum(),
        usage: report.steps.iter().fold(Default::default(), |mut u, s| {
            u += s.usage;
            u
        }),
        cost_usd: report.cost_usd,
        model_ms: model_ms.map(|t| t.load(Ordering::Relaxed)),
        steps: if ctx.opts.measure {
            step_figures(ctx, &report)
        } else {
            Vec::new()
        },
        ..RunResult::empty(Outcome::Passed)
    };
    match report.status {
        RunStatus::Cancelled => result.error = Some("interrupted".to_owned()),
        RunStatus::TimedOut => result.error = Some("the run timed out".to_owned()),
        _ => {}
    }
    if result.error.is_none() {
        failed_steps(&report, &mut result);
    }
    let mut pending = Vec::new();
    if result.error.is_none() {
        for (step_id, expect) in &case.expect {
            let Some(step) = report.steps.iter().find(|s| &s.id == step_id) else {
                continue;
            };
            pending.extend(check_step(ctx, case, plan, step, expect, &mut result).await);
        }
    }
    if let Some(why) = journal_failed.as_ref().and_then(|f| f.get()) {
        // An infrastructure failure, not the model's: the answer was
        // judged, but a record of it (paid spend among them) is missing
        // from the journal, so the suite must not pass unseen.
        result.error.get_or_insert_with(|| {
            format!("the run journal could not record this run's calls: {why}")
        });
    }
    result.outcome = if result.error.is_some() {
        Outcome::Errored
    } else if !result.failures.is_empty() {
        Outcome::Failed
    } else {
        Outcome::Passed
    };
    result.elapsed_ms = started.elapsed().as_millis() as u64;
    (result, pending)
}

/// Each step's calls, by the tier and locality of the model that answered
/// (from the policy the suite ran under), its tokens and its cost.
fn step_figures(ctx: &Ctx<'_>, report: &RunReport) -> Vec<StepFigures> {
    report
        .steps
        .iter()
        .map(|s| {
            let mut f = StepFigures {
                step: s.id.clone(),
                task: ctx
                    .suite
                    .analysis
                    .workflow
                    .value
                    .steps
                    .get(&s.id)
                    .map(|w| w.task.clone())
                    .unwrap_or_default(),
                calls: s.calls.len() as u64,
                input_tokens: s.usage.input_tokens,
                output_tokens: s.usage.output_tokens,
                cost_usd: s.cost_usd,
                model_ms: s.model_ms,
                prompt: s.router_text.clone(),
                ..StepFigures::default()
            };
            for (m, n) in s
                .calls
                .tally()
                .by_model
                .iter()
                .filter_map(|(a, n)| Some((ctx.policy.models.get(a)?, *n)))
            {
                *f.tiers.entry(m.tier.name().to_owned()).or_default() += n;
                if m.locality == crate::policy::Locality::Local {
                    f.local_calls += n;
                }
            }
            f
        })
        .collect()
}

/// A client that adds the latency of every answer it hands on to a run's
/// model time: the provider's measured latency live, the recorded one in
/// replay.
struct Timed {
    inner: Arc<dyn crate::provider::Provider>,
    total_ms: Arc<AtomicU64>,
}

impl crate::provider::Provider for Timed {
    fn kind(&self) -> crate::provider::ProviderKind {
        self.inner.kind()
    }

    fn send<'a>(
        &'a self,
        req: &'a crate::provider::ChatRequest,
    ) -> futures::future::BoxFuture<
        'a,
        Result<crate::provider::ChatResponse, crate::provider::ProviderError>,
    > {
        Box::pin(async move {
            let resp = self.inner.send(req).await?;
            let ms = u64::try_from(resp.latency.as_millis()).unwrap_or(u64::MAX);
            self.total_ms.fetch_add(ms, Ordering::Relaxed);
            Ok(resp)
        })
    }
}

/// A step that broke for a reason other than its answer makes the case
/// unjudgeable (an error); one whose answer broke its output schema fails
/// the case, expected or not — the workflow did not produce what it
/// promises.
fn failed_steps(report: &RunReport, result: &mut RunResult) {
    for s in &report.steps {
        if s.status != StepStatus::Failed || s.ignored_failure {
            continue;
        }
        if !invalid_answer(s) {
            result.error = Some(format!(
                "step `{}`: {}",
                s.id,
                s.detail.clone().unwrap_or_default()
            ));
            return;
        }
        result.failures.push(Failure {
            step: s.id.clone(),
            assertion: "output_schema".to_owned(),
            message: s.detail.clone().unwrap_or_default(),
            expected: None,
            actual: None,
            diff: None,
        });
    }
}

/// One step's expectations checked against its report: assertions, the
/// judge, the snapshot. Returns the snapshot files left pending.
async fn check_step(
    ctx: &Ctx<'_>,
    case: &Case,
    plan: &Plan,
    step: &StepReport,
    expect: &Expectations,
    result: &mut RunResult,
) -> Option<String> {
    let step_id = &step.id;
    if step.status != StepStatus::Succeeded {
        // Already reported by `failed_steps` when its own answer was at fault.
        if !(step.status == StepStatus::Failed && invalid_answer(step)) {
            result.failures.push(Failure {
                step: step_id.clone(),
                assertion: "ran".to_owned(),
                message: format!(
                    "the step did not run to the end ({}): {}",
                    step.status.name(),
                    step.detail.clone().unwrap_or_default()
                ),
                expected: None,
                actual: None,
                diff: None,
            });
        }
        return None;
    }
    // One value for every check (a large fan-out's answers no step read
    // were spilled: read back whole, once); unreadable, the case cannot be
    // judged.
    let output = match step.output.as_ref().map(crate::run::Output::value) {
        None => Value::Null,
        Some(Ok(v)) => v.into_owned(),
        Some(Err(e)) => {
            result.error = Some(format!("the output of step `{step_id}`: {e}"));
            return None;
        }
    };
    result.failures.extend(expect.check(step, &output));
    // In a run the route is the model that answered (a fallback included).
    if let Some(route) = &expect.route {
        result.failures.extend(route_failures(
            &ctx.policy,
            step_id,
            route,
            step.model.as_deref(),
        ));
    }
    let level = plan
        .steps
        .iter()
        .find(|p| &p.id == step_id)
        .map(|p| p.sensitivity.level.clone())
        .unwrap_or_default();
    if let Some(j) = &expect.judge {
        let text = assertion::output_text(&output);
        match judge(ctx, &level, j.model.as_deref(), &j.rubric, &text).await {
            Ok(v) => {
                add_judge_cost(result, &v);
                if let Some(f) = result.steps.iter_mut().find(|f| &f.step == step_id) {
                    f.judged += 1;
                    f.judge_passed += u32::from(v.pass);
                }
                if !v.pass {
                    result.failures.push(Failure {
                        step: step_id.clone(),
                        assertion: "judge".to_owned(),
                        message: format!("the judge ({}) says fail: {}", v.model, v.reason),
                        expected: Some(j.rubric.clone()),
                        actual: Some(text),
                        diff: None,
                    });
                }
            }
            Err(e) => {
                result.error = Some(format!("judge of step `{step_id}`: {e}"));
            }
        }
    }
    let mode = expect.snapshot?;
    match check_snapshot(ctx, case, plan, step, &output, mode, &level).await {
        Ok(SnapshotCheck {
            failure,
            pending,
            judge,
        }) => {
            if let Some(v) = judge {
                add_judge_cost(result, &v);
            }
            result.failures.extend(failure);
            pending
        }
        Err(e) => {
            result.error = Some(format!("snapshot of step `{step_id}`: {e}"));
            None
        }
    }
}

/// A judge's call counts in the case's calls, usage and cost.
fn add_judge_cost(result: &mut RunResult, v: &Verdict) {
    result.cost_usd += v.cost_usd;
    result.judge_cost_usd += v.cost_usd;
    result.usage += v.usage;
    result.calls += 1;
}

struct SnapshotCheck {
    failure: Option<Failure>,
    pending: Option<String>,
    /// The judge's verdict when `snapshot: judge` had to ask it.
    judge: Option<Verdict>,
}

async fn check_snapshot(
    ctx: &Ctx<'_>,
    case: &Case,
    plan: &Plan,
    step: &StepReport,
    output: &Value,
    mode: SnapshotMode,
    level: &str,
) -> Result<SnapshotCheck, CheckError> {
    let rendered = assertion::output_text(output);
    let path = snapshot::path(&ctx.suite.snapshot_dir, &case.name, &step.id);
    let pending_path = snapshot::pending_path(&path);
    let model = match (&step.model, &step.provider_model) {
        (Some(a), Some(m)) => format!("{a} ({m})"),
        (Some(a), None) => a.clone(),
        _ => "-".to_owned(),
    };
    let prompt = plan
        .steps
        .iter()
        .find(|p| p.id == step.id)
        .map(|p| p.prompt_sha256.clone())
        .unwrap_or_default();
    let meta = snapshot::Meta {
        workflow: &ctx.suite.analysis.workflow.value.name,
        case: &case.name,
        step: &step.id,
        model: &model,
        prompt_sha256: &prompt,
        sensitivity: level,
    };
    let stored = match crate::files::read_text(&path) {
        Ok(t) => Some(t),
        Err(crate::files::ReadError::NotFound) => None,
        Err(reason) => return Err(CheckError::ReadSnapshot { path, reason }),
    };
    let mut judged = None;
    let matched = match &stored {
        None => false,
        Some(text) => {
            let body = snapshot::body(text);
            if snapshot::matches(mode, output, body, &rendered) {
                true
            } else if mode == SnapshotMode::Judge {
                let rubric = format!(
                    "The answer must say the same as this reference answer; wording, order and formatting may differ, facts, labels and conclusions may not.\n\nReference answer:\n{body}"
                );
                // The rubric quotes the stored answer: the judge carries the
                // higher of the step's level now and the level the stored
                // answer was written at, so a step that was confidential
                // when its snapshot was taken (and is public now) never
                // sends that answer to a cloud judge.
                let policy = &ctx.policy;
                let judged_level = policy.level_index(level).map_or(level, |now| {
                    policy.level_name(now.max(snapshot::stored_level(text, policy)))
                });
                let v = judge(ctx, judged_level, None, &rubric, &rendered).await?;
                let pass = v.pass;
                judged = Some(v);
                pass
            } else {
                false
            }
        }
    };
    if matched {
        // A pending file left from an earlier mismatch is now stale.
        if !ctx.opts.ci && pending_path.exists() {
            let _ = std::fs::remove_file(&pending_path);
        }
        return Ok(SnapshotCheck {
            failure: None,
            pending: None,
            judge: judged,
        });
    }
    let mut written = None;
    if !ctx.opts.ci {
        snapshot::write_atomic(&pending_path, &snapshot::render(&meta, &rendered)).map_err(
            |source| CheckError::WriteSnapshot {
                path: pending_path.clone(),
                source,
            },
        )?;
        written = Some(pending_path.display().to_string());
    }
    let failure = match &stored {
        None => Failure {
            step: step.id.clone(),
            assertion: "snapshot".to_owned(),
            message: format!(
                "no snapshot yet ({}){}",
                path.display(),
                if ctx.opts.ci {
                    "; record and accept it outside --ci"
                } else {
                    "; review the pending one and accept it"
                }
            ),
            expected: None,
            actual: Some(rendered),
            diff: None,
        },
        Some(text) => {
            let body = snapshot::body(text);
            let mut changed = Vec::new();
            if snapshot::header_field(text, "model") != Some(model.as_str()) {
                changed.push(format!(
                    "model was {}",
                    snapshot::header_field(text, "model").unwrap_or("-")
                ));
            }
            if snapshot::header_field(text, "prompt").and_then(|p| p.strip_prefix("sha256:"))
                != Some(prompt.as_str())
            {
                changed.push("the prompt changed".to_owned());
            }
            Failure {
                step: step.id.clone(),
                assertion: "snapshot".to_owned(),
                message: format!(
                    "the output differs from the snapshot {}{}",
                    path.display(),
                    if changed.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", changed.join(", "))
                    }
                ),
                expected: Some(body.to_owned()),
                actual: Some(rendered.clone()),
                diff: Some(assertion::diff(body, &rendered)),
            }
        }
    };
    Ok(SnapshotCheck {
        failure: Some(failure),
        pending: written,
        judge: judged,
    })
}
