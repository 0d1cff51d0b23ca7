//! `tollgate run`: every flag checked, then the workflow loaded, checked,
//! planned and journaled — all before the first call — then run with the
//! live view, and the summary and the final answers printed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::journal::{self, StateArg};
use super::{
    OutputFormat, cancel_on_signals, default_policy, exit, load_both, report, runtime, warn,
};
use crate::analyze::Analysis;
use crate::diagnostic::{self, Diagnostic, RenderOptions, Severity};
use crate::inputs::{self, Inputs, RawInput};
use crate::journal::{Journal, RunRow};
use crate::plan::{self, Plan};
use crate::policy::Policy;
use crate::progress::StdoutAnswer;
use crate::render;
use crate::run::{
    AnswerSink, FinalAnswer, Output, Providers, RunJournal, RunOptions, RunReport, RunStatus,
    StepReport,
};
use crate::workflow;

#[derive(Debug, clap::Args)]
pub(super) struct RunArgs {
    /// The workflow file (with --resume: the journaled run's, unless given).
    #[arg(required_unless_present = "resume")]
    workflow: Option<PathBuf>,
    /// The policy file [default: $TOLLGATE_POLICY, else the project's policies/default.yaml, else the built-in local policy].
    #[arg(long, short = 'p', env = "TOLLGATE_POLICY")]
    policy: Option<PathBuf>,
    /// An input: NAME=VALUE, NAME=@FILE, or NAME=@- for standard input (a streamed input, `stream: true`, is NAME=@FILE.jsonl: one item per line, read a line at a time).
    #[arg(
        long = "input",
        short = 'i',
        value_name = "NAME=VALUE",
        conflicts_with = "resume"
    )]
    inputs: Vec<RawInput>,
    /// Resume a journaled run (an id from `tollgate runs`, or `last`): its
    /// finished calls are read back from the journal, only the rest is sent.
    #[arg(long, value_name = "RUN_ID")]
    resume: Option<String>,
    /// Send every call, even one an identical earlier request answered
    /// (answers are still journaled for later runs).
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    state: StateArg,
    /// Write each step's output and run.json into this folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// text: the summary on stderr and the final steps' outputs on stdout; json: the whole run report on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Stop the whole run after this long ("90s", "10m").
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Calls in flight at once across the run.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Ask for whole answers instead of streams.
    #[arg(long)]
    no_stream: bool,
    /// No progress lines.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Send every step routed to OpenAI or Anthropic through their batch
    /// APIs (half price, answers within 24 h), not only `latency: batch` steps.
    #[arg(long)]
    batch: bool,
    /// How often submitted batches are polled ("30s", "2m").
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    batch_poll_interval: String,
}

/// The flags of `run` that clap cannot check on its own, parsed.
struct Flags {
    run_timeout: Option<Duration>,
    batch_poll_interval: Duration,
}

/// Checks every flag before anything is loaded, and reports all of the
/// flags' problems at once: a typo in one flag should not cost a second
/// attempt to find the next.
fn check_flags(args: &RunArgs) -> Result<Flags, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let duration =
        |text: &str| workflow::parse_duration(&serde_json::Value::String(text.to_owned()));
    let run_timeout = match args.timeout.as_deref() {
        None => None,
        Some(t) => {
            let d = duration(t);
            if d.is_none() {
                diags.push(
                    Diagnostic::error("bad-timeout", format!("--timeout {t}: not a duration"))
                        .with_help("use a number with a unit: 500ms, 30s, 10m, 1h"),
                );
            }
            d
        }
    };
    let batch_poll_interval = duration(&args.batch_poll_interval).filter(|d| !d.is_zero());
    if batch_poll_interval.is_none() {
        diags.push(
            Diagnostic::error(
                "bad-duration",
                format!(
                    "--batch-poll-interval {}: not a duration",
                    args.batch_poll_interval
                ),
            )
            .with_help("use a number with a unit: 500ms, 30s, 2m"),
        );
    }
    match batch_poll_interval {
        Some(batch_poll_interval) if diags.is_empty() => Ok(Flags {
            run_timeout,
            batch_poll_interval,
        }),
        _ => Err(diags),
    }
}

/// A run with every input checked, planned and journaled: what is left is
/// to call the models.
struct Ready {
    analysis: Analysis,
    policy: Policy,
    plan: Plan,
    values: Inputs,
    providers: Providers,
    journal: Arc<Journal>,
    run_id: String,
}

pub(super) fn cmd_run(args: RunArgs, options: RenderOptions) -> u8 {
    let format = args.format;
    let flags = match check_flags(&args) {
        Ok(f) => f,
        Err(d) => return report(d, format, options),
    };
    let ready = match prepare(&args, options) {
        Ok(r) => r,
        Err(d) => return report(d, format, options),
    };
    let Executed {
        result,
        analysis,
        streamed,
    } = match execute(&args, flags, ready, options) {
        Ok(done) => done,
        Err(d) => return report(vec![d], format, options),
    };
    show(&args, &result, &analysis, streamed.as_deref(), options)
}

/// The step whose answer streams to stdout as it arrives: the run's one
/// final step (nothing depends on it), a single call (no `for_each`), when
/// stdout is a terminal showing text. Anything else (a pipe, a file, JSON,
/// several final answers, `--no-stream`) prints the answers whole at the
/// end, exactly as before. Which calls of that step stream is the
/// executor's decision ([`crate::run::FinalAnswer`]).
fn streamed_step(args: &RunArgs, analysis: &Analysis, plan: &Plan) -> Option<String> {
    if args.format != OutputFormat::Text || args.no_stream || !std::io::stdout().is_terminal() {
        return None;
    }
    let mut leaves = (0..analysis.steps.len()).filter(|&i| analysis.dag.dependants(i).is_empty());
    let (Some(leaf), None) = (leaves.next(), leaves.next()) else {
        return None;
    };
    let (id, info) = analysis.steps.get_index(leaf)?;
    let one_call = plan.steps.iter().any(|s| s.id == *id && s.calls == 1);
    (info.for_each.is_none() && one_call).then(|| id.clone())
}

/// The journal and the run `--resume` names, when it does.
///
/// A resume reads the journal first: it takes the workflow, policy and
/// inputs from it. A new run opens it only once its input is known to be
/// good (in [`prepare`]), so bad input leaves nothing behind.
fn resumed(args: &RunArgs) -> Result<Option<(Arc<Journal>, RunRow)>, Diagnostic> {
    let Some(id) = &args.resume else {
        return Ok(None);
    };
    let j = journal::open(&args.state)?;
    let run = journal::resume_target(&j, id)?;
    Ok(Some((j, run)))
}

/// Loads, checks and plans the run, then begins it in the journal. Every
/// problem with the input is found here, before any call.
fn prepare(args: &RunArgs, options: RenderOptions) -> Result<Ready, Vec<Diagnostic>> {
    let resumed = resumed(args).map_err(|d| vec![d])?;
    let run = resumed.as_ref().map(|(_, run)| run);
    let Some(workflow_path) = args
        .workflow
        .clone()
        .or_else(|| run.map(|r| PathBuf::from(&r.workflow_path)))
    else {
        return Err(vec![Diagnostic::error("usage", "no workflow file given")]);
    };
    // A resume runs under the policy given now, else the one it started
    // with: a changed policy (a raised budget, a new key) applies to what
    // is left to run.
    let policy_path = args
        .policy
        .clone()
        .or_else(|| run.map(|r| PathBuf::from(&r.policy_path)))
        .unwrap_or_else(default_policy);
    let (analysis, policy) = load_both(&workflow_path, &policy_path)?;
    // A key never crosses the network in clear text unless the policy
    // says so (`allow_insecure`): `check` and `plan` warn, `run` refuses —
    // as errors only, so the same problem is not also shown as a warning.
    let refused: Vec<Diagnostic> = policy.insecure_transport().map(as_error).collect();
    if !refused.is_empty() {
        return Err(refused);
    }
    warn(policy.warnings.iter().chain(&analysis.warnings), options);
    if let Some(run) = run {
        journal::check_unchanged(run, &analysis, &workflow_path).map_err(|d| vec![d])?;
        if journal::policy_hash(&policy_path) != run.policy_hash {
            let _ = writeln!(
                std::io::stderr().lock(),
                "note: the policy {} is not the one run {} started with; it applies to what is left to run",
                policy_path.display(),
                run.id
            );
        }
    }
    let values = match run {
        Some(run) => journal::journaled_inputs(run, &analysis)?,
        None => inputs::resolve(&analysis.workflow.value, &args.inputs, false)?,
    };
    // The journal is opened once: the one a cascade's plan reads its
    // escalation history from is the one the run then writes to.
    let existing = plan_journal(&args.state, resumed.as_ref().map(|(j, _)| j), &policy);
    let plan = plan::build_with_history(
        &analysis,
        &policy,
        &policy_path.display().to_string(),
        &values,
        &journal::history_in(existing.as_deref(), &policy),
    )?;
    let providers = Providers::from_env(&policy);
    let missing = providers.check_keys(&plan, &policy);
    if !missing.is_empty() {
        return Err(missing);
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|err| {
            vec![Diagnostic::error(
                "out-dir",
                format!("cannot create {}: {err}", dir.display()),
            )]
        })?;
    }
    let (journal, run_id) = match resumed {
        Some((journal, run)) => {
            journal
                .reopen_run(&run)
                .map_err(|e| vec![Diagnostic::error("journal", e)])?;
            (journal, run.id)
        }
        None => {
            let journal = run_journal(&args.state, existing).map_err(|d| vec![d])?;
            let id = journal::begin(
                &journal,
                &analysis,
                &workflow_path,
                &policy,
                &policy_path,
                &values,
                &plan,
            )
            .map_err(|d| vec![d])?;
            (journal, id)
        }
    };
    Ok(Ready {
        analysis,
        policy,
        plan,
        values,
        providers,
        journal,
        run_id,
    })
}

/// The journal the plan reads before the run begins: a resumed run's, else
/// — when a cascade's escalation history prices the plan — the one already
/// at `state`. A new run's journal is created only once its input is known
/// to be good ([`run_journal`]), so bad input leaves nothing behind.
fn plan_journal(
    state: &StateArg,
    resumed: Option<&Arc<Journal>>,
    policy: &Policy,
) -> Option<Arc<Journal>> {
    match resumed {
        Some(j) => Some(Arc::clone(j)),
        None if journal::has_cascade(policy) => journal::existing(state),
        None => None,
    }
}

/// The journal a new run writes to: the one its plan already opened, else
/// opened (created) now.
fn run_journal(state: &StateArg, opened: Option<Arc<Journal>>) -> Result<Arc<Journal>, Diagnostic> {
    match opened {
        Some(j) => {
            // Opened for the plan without sending what was spilled.
            journal::send_spilled(&j)?;
            Ok(j)
        }
        None => journal::open(state),
    }
}

/// The refusal `run` makes of what `plan` only warns about.
fn as_error(d: &Diagnostic) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        ..d.clone()
    }
}

/// Runs the plan on a new runtime, with the live view, until it ends or is
/// interrupted; then closes the run in the journal.
fn execute(
    args: &RunArgs,
    flags: Flags,
    ready: Ready,
    options: RenderOptions,
) -> Result<Executed, Diagnostic> {
    let Ready {
        analysis,
        policy,
        plan,
        values,
        providers,
        journal,
        run_id,
    } = ready;
    let bar = crate::progress::run_bar(analysis.steps.len() as u64, args.quiet);
    let streamed = streamed_step(args, &analysis, &plan)
        .map(|step| (step, Arc::new(StdoutAnswer::new(bar.clone()))));
    let run_options = RunOptions {
        final_answer: streamed.as_ref().map(|(step, sink)| FinalAnswer {
            step: step.clone(),
            sink: Arc::clone(sink) as Arc<dyn AnswerSink>,
        }),
        concurrency: args.concurrency.max(1),
        run_timeout: flags.run_timeout,
        stream: !args.no_stream,
        batch_all: args.batch,
        batch_poll_interval: flags.batch_poll_interval,
        // Submitted batches are remembered in the journal.
        batch_ledger: Some(Arc::clone(&journal) as Arc<dyn crate::run::BatchLedger>),
        journal: Some(RunJournal {
            journal: Arc::clone(&journal),
            run_id: run_id.clone(),
            cache_ttl: (!args.no_cache && !policy.cache_ttl.is_zero()).then_some(policy.cache_ttl),
            durable_at_end: true,
            failed: Arc::default(),
        }),
        ..RunOptions::default()
    };
    let runtime = runtime()?;
    let analysis = Arc::new(analysis);
    let quiet = args.quiet;
    let answer = streamed.map(|(_, sink)| sink);
    let view = answer.clone();
    let job = crate::run::Job {
        analysis: Arc::clone(&analysis),
        policy: Arc::new(policy),
        plan: &plan,
        inputs: std::borrow::Cow::Owned(values),
    };
    let result = runtime.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cancel_on_signals(cancel.clone()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter = tokio::spawn(crate::progress::report(rx, bar, quiet, options, view));
        let result = crate::run::execute(job, providers, run_options, cancel, Some(tx)).await;
        let _ = reporter.await;
        result
    });
    if let Err(e) = journal.finish_run(&run_id, result.status.as_str()) {
        // The run itself is over and its calls are journaled: a run left
        // `running` is marked interrupted once this process is gone.
        let d = Diagnostic::warning("journal", format!("cannot close run {run_id}: {e}"));
        warn([&d], options);
    }
    // Closed (its writer done, or given up on the ledger): what could not
    // reach the team ledger is in the spill file, said once.
    let spill = journal.spill_path().map(Path::to_path_buf);
    let ledger = journal.path().display().to_string();
    drop(journal);
    if let Some(d) = spill.and_then(|path| journal::unsent_warning(&ledger, &path)) {
        warn([&d], options);
    }
    Ok(Executed {
        result,
        analysis,
        streamed: answer,
    })
}

/// A run that ended, for [`show`].
struct Executed {
    result: RunReport,
    analysis: Arc<Analysis>,
    /// The final answer went to the terminal as it arrived.
    streamed: Option<Arc<StdoutAnswer>>,
}

/// Writes `--out`, prints the summary and the answers, and picks the exit
/// code.
/// `streamed`: the final answer went to the terminal as it arrived.
fn show(
    args: &RunArgs,
    result: &RunReport,
    analysis: &Analysis,
    streamed: Option<&StdoutAnswer>,
    options: RenderOptions,
) -> u8 {
    let mut write_failed = false;
    let mut failed = |message: String, what: &'static str| {
        write_failed = true;
        let d = Diagnostic::error(what, message);
        let _ = write!(
            std::io::stderr().lock(),
            "{}",
            diagnostic::render(&d, options)
        );
    };
    if let Some(dir) = &args.out
        && let Err(err) = write_outputs(dir, result)
    {
        failed(
            format!("cannot write the outputs to {}: {err}", dir.display()),
            "out-dir",
        );
    }
    match args.format {
        OutputFormat::Json => {
            // Written as it is serialised: a large fan-out's call reports
            // and answers are read back from their spills one at a time,
            // never held as one string.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let written = serde_json::to_writer_pretty(&mut out, result)
                .and_then(|()| out.write_all(b"\n").map_err(serde_json::Error::io))
                .and_then(|()| out.flush().map_err(serde_json::Error::io));
            // A closed stdout is the reader's choice, as for every output;
            // a report that cannot be read back is a failure.
            if let Err(e) = &written
                && !e.is_io()
            {
                failed(format!("cannot write the run report: {e}"), "report");
            }
        }
        OutputFormat::Text => {
            // Already on the screen: the answer, then the summary below it.
            let shown = streamed.is_some_and(|s| s.finish(streamed_output(result)));
            let _ = write!(std::io::stderr().lock(), "{}", render::run_text(result));
            if !shown {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let written = write_final_answers(&mut out, result, analysis)
                    .and_then(|()| out.flush().map_err(serde_json::Error::io));
                // As for the JSON: answers that cannot be read back fail.
                if let Err(e) = &written
                    && !e.is_io()
                {
                    failed(format!("cannot write the answers: {e}"), "answers");
                }
            }
        }
    }
    match result.status {
        RunStatus::Succeeded if write_failed => exit::FAILED,
        RunStatus::Succeeded => exit::OK,
        RunStatus::Cancelled => exit::INTERRUPTED,
        RunStatus::Failed | RunStatus::TimedOut => exit::FAILED,
    }
}

/// The answers of the final steps (those nothing depends on), for stdout,
/// so `tollgate run … > answer.md` does what it says: [`write_answers`].
fn write_final_answers(
    out: &mut impl Write,
    result: &RunReport,
    analysis: &Analysis,
) -> serde_json::Result<()> {
    let leaves: Vec<&StepReport> = result
        .steps
        .iter()
        .filter(|s| {
            let i = analysis.steps.get_index_of(&s.id).unwrap_or(0);
            analysis.dag.dependants(i).is_empty() && s.output.is_some()
        })
        .collect();
    write_answers(out, &leaves)
}

/// The outputs of `leaves`, each under a heading when there are several.
/// Written as they are formatted (a fan-out's answers can be many
/// megabytes, read back from their spill one at a time), each ending with a
/// newline. An error that is not `is_io` is an answer that could not be
/// read back.
fn write_answers(out: &mut impl Write, leaves: &[&StepReport]) -> serde_json::Result<()> {
    use serde_json::Error as E;
    // Whether what was written so far ends with a newline.
    let mut at_line_start = false;
    for s in leaves {
        if leaves.len() > 1 {
            write!(out, "## {}\n\n", s.id).map_err(E::io)?;
            at_line_start = true;
        }
        match &s.output {
            Some(Output::Held(serde_json::Value::String(text))) if !text.is_empty() => {
                out.write_all(text.as_bytes()).map_err(E::io)?;
                at_line_start = text.ends_with('\n');
            }
            Some(Output::Held(serde_json::Value::String(_))) | None => {}
            Some(other) => {
                // Pretty JSON never ends with a newline.
                serde_json::to_writer_pretty(&mut *out, other)?;
                at_line_start = false;
            }
        }
        if !at_line_start {
            out.write_all(b"\n").map_err(E::io)?;
        }
        if leaves.len() > 1 {
            out.write_all(b"\n").map_err(E::io)?;
        }
        at_line_start = true;
    }
    Ok(())
}

/// The text of the one final step's answer, when it is text (the only
/// answer that streams).
fn streamed_output(result: &RunReport) -> Option<&str> {
    match result.steps.last()?.output.as_ref()?.held()? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// Each step's output as `<step>.txt` (text) or `<step>.json`, and
/// `run.json`; each written to a temporary name and renamed, so a reader
/// never sees half a file.
fn write_outputs(dir: &Path, result: &crate::run::RunReport) -> std::io::Result<()> {
    let write = |name: &str, contents: &str| -> std::io::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents)?;
        std::fs::rename(&tmp, dir.join(name))
    };
    for s in &result.steps {
        // A step without output this time must not leave last run's file
        // behind, where it would pass for this run's answer.
        for ext in ["txt", "json"] {
            let stale = dir.join(format!("{}.{ext}", s.id));
            if stale.exists() {
                std::fs::remove_file(&stale)?;
            }
        }
        match &s.output {
            Some(Output::Held(serde_json::Value::String(text))) => {
                write(&format!("{}.txt", s.id), text)?;
            }
            Some(output) => write_json(dir, &format!("{}.json", s.id), output)?,
            None => {}
        }
    }
    write_json(dir, "run.json", result)
}

/// Pretty JSON serialised into `dir/name` (through a temporary name, gone
/// again if the value cannot be written): a large fan-out's call reports and
/// answers are read back from their spills one at a time, never held as one
/// string.
fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut file = std::io::BufWriter::new(f);
        serde_json::to_writer_pretty(&mut file, value)?;
        file.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    });
    match written {
        Ok(()) => std::fs::rename(&tmp, dir.join(name)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Answers, StepStatus};

    fn step(id: &str, output: Output) -> StepReport {
        let mut s = StepReport::new(id, StepStatus::Succeeded, None);
        s.output = Some(output);
        s
    }

    /// Answers that cannot be read back are an error of their own (not a
    /// closed stdout, which `show` lets pass), and no `--out` file is left
    /// behind, whole or half written.
    #[test]
    fn answers_that_cannot_be_read_back_are_an_error_not_a_file() {
        let lost = step("many", Output::Spilled(Answers::never_arrived(300)));
        let text = step("one", Output::Held(serde_json::json!("fine")));
        let mut out = Vec::new();
        let e = write_answers(&mut out, &[&text, &lost]).unwrap_err();
        assert!(!e.is_io(), "{e}");
        assert!(e.to_string().contains("never arrived"), "{e}");
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("## one\n\nfine\n\n## many\n\n")
        );

        let dir = tempfile::tempdir().unwrap();
        let result = RunReport {
            run_id: None,
            workflow: "w".to_owned(),
            policy: "p".to_owned(),
            status: RunStatus::Succeeded,
            steps: vec![text, lost],
            cost_usd: 0.0,
            list_cost_usd: 0.0,
            cached_input_tokens: 0,
            saving_usd: 0.0,
            estimate: crate::plan::CostRange::default(),
            budget_usd: None,
            elapsed_ms: 0,
            cache: crate::run::CacheSummary::default(),
            resumed_calls: 0,
            earlier_cost_usd: 0.0,
        };
        let e = write_outputs(dir.path(), &result).unwrap_err();
        assert!(e.to_string().contains("never arrived"), "{e}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["one.txt"]);
    }

    /// A cascade on two local models: a plan under it reads the escalation
    /// history.
    const CASCADE: &str = r#"version: 1
name: cascade
providers:
  local: { kind: openai-compatible, base_url: "http://127.0.0.1:9/v1" }
models:
  small: { provider: local, model: small, tier: local, context_window: 8192 }
  big:   { provider: local, model: big, tier: local, context_window: 8192 }
rules:
  - name: summaries
    use: small
    escalate: { to: big, when: [invalid_output] }
"#;

    /// `run` opens its journal once: the journal a cascade's plan read its
    /// history from is the one the run writes to; with no journal yet,
    /// planning creates none.
    #[test]
    fn the_plan_and_the_run_share_one_journal() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateArg {
            state: Some(dir.path().to_path_buf()),
        };
        let (_, policy) = crate::policy::load_text("cascade.yaml", CASCADE).unwrap();
        assert!(plan_journal(&state, None, &policy).is_none());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        drop(run_journal(&state, None).unwrap());
        let opened = plan_journal(&state, None, &policy).expect("the journal is there now");
        let run = run_journal(&state, Some(Arc::clone(&opened))).unwrap();
        assert!(Arc::ptr_eq(&opened, &run));
        // A resume's journal, already open, serves the plan as it is.
        let resumed = plan_journal(&state, Some(&run), &policy).unwrap();
        assert!(Arc::ptr_eq(&resumed, &run));
    }
}
