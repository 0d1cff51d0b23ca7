//! The command line. The only module that knows about the terminal, prints,
//! or picks exit codes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::analyze::{self, Analysis};
use crate::catalog::{self, Catalog};
use crate::diagnostic::{self, Diagnostic, RenderOptions};
use crate::inputs::{self, RawInput};
use crate::policy::{self, Policy, PriceSource};
use crate::schema::Format as FileFormat;
use crate::workflow::{self, Loaded, Workflow};
use crate::yaml::Document;
use crate::{plan, render};

mod journal;
mod suites;
use journal::StateArg;

/// Exit codes, in one place.
pub mod exit {
    pub const OK: u8 = 0;
    /// A run or a test failed.
    pub const FAILED: u8 = 1;
    /// Bad input or configuration.
    pub const BAD_INPUT: u8 = 2;
}

/// The policy `plan` uses when none is given.
pub const DEFAULT_POLICY: &str = "policies/default.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A declarative workflow engine for LLM work: YAML workflows, policy routing, dry runs.",
    long_about = None,
)]
struct Cli {
    /// When to use colors in diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check workflow, policy and suite files; workflows and policies given together are checked against each other.
    Check {
        /// Workflow and policy files (the kind is recognised from the content).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Dry run: show the model, rule, tokens and cost of every step, spending nothing.
    Plan {
        /// The workflow file.
        workflow: PathBuf,
        /// The policy file [default: $TOLLGATE_POLICY, else policies/default.yaml].
        #[arg(long, short = 'p', env = "TOLLGATE_POLICY")]
        policy: Option<PathBuf>,
        /// An input: NAME=VALUE, NAME=@FILE, or NAME=@- for standard input.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<RawInput>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        state: StateArg,
    },
    /// Run a workflow: every step on the model the policy routes it to, in parallel.
    Run(RunArgs),
    /// Run evaluation suites: cases through workflows, assertions, snapshots, recorded responses.
    Test(suites::TestArgs),
    /// Join the results of test shards into one report and one JUnit file.
    Merge(suites::MergeArgs),
    /// List recent runs from the run journal (newest first).
    Runs {
        /// How many runs to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        state: StateArg,
    },
    /// Spending from the run journal: by day, workflow, step, model and tier;
    /// actual vs estimated; savings from routing, caching and batching.
    Report {
        /// Only calls since then: a duration back from now ("7d", "12h") or a UTC date ("2026-11-01").
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        state: StateArg,
    },
    /// Print the JSON Schema of a file format.
    Schema {
        #[arg(value_enum)]
        kind: SchemaKind,
    },
    /// List the model catalog (prices per million tokens, context windows),
    /// or the models of a policy with their resolved prices.
    Models {
        /// Only models whose name contains this text.
        filter: Option<String>,
        /// Show the models of this policy instead of the catalog.
        #[arg(long, short = 'p')]
        policy: Option<PathBuf>,
        /// Build the trimmed catalog from LiteLLM's model_prices_and_context_window.json
        /// and print it (see catalog/NOTICE).
        #[arg(long, value_name = "SOURCE_JSON", conflicts_with_all = ["filter", "policy"])]
        regenerate: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemaKind {
    Workflow,
    Policy,
    Suite,
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                exit::BAD_INPUT
            } else {
                exit::OK
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let options = RenderOptions {
        color,
        ..RenderOptions::default()
    };
    let code = match cli.command {
        Command::Check { files, format } => cmd_check(&files, format, options),
        Command::Plan {
            workflow,
            policy,
            inputs,
            format,
            state,
        } => cmd_plan(&workflow, policy, &inputs, format, &state, options),
        Command::Run(args) => cmd_run(args, options),
        Command::Test(args) => suites::cmd_test(args, options),
        Command::Merge(args) => suites::cmd_merge(args, options),
        Command::Runs {
            limit,
            format,
            state,
        } => match journal::runs(&state, limit) {
            Ok(runs) => {
                match format {
                    OutputFormat::Json => {
                        print_out(&serde_json::to_string_pretty(&runs).unwrap_or_default())
                    }
                    OutputFormat::Text => print_out(&render::runs_text(&runs)),
                }
                exit::OK
            }
            Err(d) => report(vec![d], format, options),
        },
        Command::Report {
            since,
            format,
            state,
        } => match journal::report(&state, since.as_deref()) {
            Ok(r) => {
                match format {
                    OutputFormat::Json => {
                        print_out(&serde_json::to_string_pretty(&r).unwrap_or_default())
                    }
                    OutputFormat::Text => print_out(&render::report_text(&r)),
                }
                exit::OK
            }
            Err(d) => report(vec![d], format, options),
        },
        Command::Schema { kind } => {
            let text = match kind {
                SchemaKind::Workflow => FileFormat::Workflow.schema_text(),
                SchemaKind::Policy => FileFormat::Policy.schema_text(),
                SchemaKind::Suite => FileFormat::Suite.schema_text(),
            };
            print_out(text);
            exit::OK
        }
        Command::Models {
            filter,
            policy,
            regenerate,
            format,
        } => cmd_models(
            filter.as_deref(),
            policy.as_deref(),
            regenerate.as_deref(),
            format,
            options,
        ),
    };
    ExitCode::from(code)
}

/// Writes to stdout; a closed pipe (`tollgate plan … | head`) is not an error.
fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Prints diagnostics (stderr for text, stdout for JSON) and returns the exit code.
/// Diagnostics drawn in text output; the rest are counted.
const MAX_SHOWN_DIAGNOSTICS: usize = 50;

fn report(mut diags: Vec<Diagnostic>, format: OutputFormat, options: RenderOptions) -> u8 {
    diagnostic::sort(&mut diags);
    let errors = diags.iter().filter(|d| d.is_error()).count();
    match format {
        OutputFormat::Json => {
            let v = json!({
                "ok": errors == 0,
                "diagnostics": diags.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
            });
            print_out(&serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        OutputFormat::Text => {
            let mut err = std::io::stderr().lock();
            // Each drawing quotes the file: a file with thousands of problems
            // would take minutes to print and bury the first ones.
            for d in diags.iter().take(MAX_SHOWN_DIAGNOSTICS) {
                let _ = write!(err, "{}", diagnostic::render(d, options));
            }
            let hidden = diags.len().saturating_sub(MAX_SHOWN_DIAGNOSTICS);
            if hidden > 0 {
                let what = if hidden == 1 { "problem" } else { "problems" };
                let _ = writeln!(
                    err,
                    "… and {hidden} more {what} not shown (`--format json` lists them all)"
                );
            }
            if errors > 0 {
                let _ = writeln!(err, "error: {} found", plural(errors, "problem"));
            }
        }
    }
    if errors > 0 {
        exit::BAD_INPUT
    } else {
        exit::OK
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A file `check` was given, once recognised and loaded.
enum Checked {
    Workflow(Box<Analysis>),
    Policy(PathBuf, Box<Policy>),
}

fn detect(doc: &Document) -> Option<FileFormat> {
    let obj = doc.root.as_object()?;
    if obj.contains_key("steps") {
        Some(FileFormat::Workflow)
    } else if obj.contains_key("cases") || obj.contains_key("cases_from") {
        Some(FileFormat::Suite)
    } else if obj.contains_key("rules")
        || obj.contains_key("models")
        || obj.contains_key("providers")
    {
        Some(FileFormat::Policy)
    } else {
        None
    }
}

fn cmd_check(files: &[PathBuf], format: OutputFormat, options: RenderOptions) -> u8 {
    let mut diags = Vec::new();
    let mut checked = Vec::new();
    let mut summary = Vec::new();
    for path in files {
        let doc = match workflow::load_document(path) {
            Ok(doc) => doc,
            Err(d) => {
                diags.extend(d);
                continue;
            }
        };
        match detect(&doc) {
            Some(FileFormat::Workflow) => {
                match workflow::from_document::<Workflow>(doc, FileFormat::Workflow) {
                    Ok(w) => {
                        let root = analyze::project_root(path);
                        match analyze::analyze(w, &root) {
                            Ok(a) => {
                                summary.push(format!(
                                    "ok  {} (workflow {})",
                                    path.display(),
                                    a.workflow.value.name
                                ));
                                checked.push(Checked::Workflow(Box::new(a)));
                            }
                            Err(d) => diags.extend(d),
                        }
                    }
                    Err(d) => diags.extend(d),
                }
            }
            Some(FileFormat::Policy) => {
                match workflow::from_document::<policy::PolicyFile>(doc, FileFormat::Policy) {
                    Ok(loaded) => {
                        let (p, d) =
                            policy::compile(&loaded.value, &loaded.doc, Catalog::builtin());
                        let bad = d.iter().any(Diagnostic::is_error);
                        diags.extend(d);
                        if !bad {
                            summary.push(format!("ok  {} (policy {})", path.display(), p.name));
                            checked.push(Checked::Policy(path.clone(), Box::new(p)));
                        }
                    }
                    Err(d) => diags.extend(d),
                }
            }
            Some(FileFormat::Suite) => match crate::eval::suite::load(path) {
                Ok(s) => summary.push(format!(
                    "ok  {} (suite {}, {})",
                    path.display(),
                    s.name,
                    plural(s.cases.len(), "case")
                )),
                Err(d) => diags.extend(d),
            },
            Some(FileFormat::Case) | None => diags.push(
                Diagnostic::error(
                    "unknown-file-kind",
                    "cannot tell whether this is a workflow, a policy or a suite",
                )
                .at(doc.span(""))
                .in_file(path)
                .with_help("a workflow has `steps:`; a policy has `models:` and `rules:`; a suite has `cases:`"),
            ),
        }
    }
    // Cross-check every workflow against every policy given with it.
    let policies: Vec<(&PathBuf, &Policy)> = checked
        .iter()
        .filter_map(|c| match c {
            Checked::Policy(path, p) => Some((path, p.as_ref())),
            Checked::Workflow(_) => None,
        })
        .collect();
    for c in &checked {
        let Checked::Workflow(a) = c else { continue };
        for (path, p) in &policies {
            let values = inputs::placeholders(&a.workflow.value);
            if let Err(d) = plan::build(a, p, &path.display().to_string(), &values) {
                // Stand-in input values can make a template fail that real
                // ones would render (`inputs.cfg.repo` of an object input):
                // templates were checked on their own above; keep the
                // routing problems.
                diags.extend(d.into_iter().filter(|d| {
                    !matches!(
                        d.code,
                        "undefined-variable" | "template-error" | "template-syntax" | "plan"
                    )
                }));
            }
        }
    }
    let errors = diags.iter().any(Diagnostic::is_error);
    if format == OutputFormat::Text && !errors {
        summary.push(format!(
            "checked {}: no problems",
            plural(files.len(), "file")
        ));
        print_out(&summary.join("\n"));
    }
    report(diags, format, options)
}

fn load_policy(path: &Path) -> Result<Policy, Vec<Diagnostic>> {
    policy::load(path).map(|(_, p)| p)
}

fn load_workflow(path: &Path) -> Result<Analysis, Vec<Diagnostic>> {
    let w: Loaded<Workflow> = workflow::load(path)?;
    analyze::analyze(w, &analyze::project_root(path))
}

/// Loads a workflow and a policy, both before giving up, so the problems of
/// both files show at once.
fn load_both(workflow: &Path, policy: &Path) -> Result<(Analysis, Policy), Vec<Diagnostic>> {
    match (load_workflow(workflow), load_policy(policy)) {
        (Ok(a), Ok(p)) => Ok((a, p)),
        (a, p) => {
            let mut diags = a.err().unwrap_or_default();
            diags.extend(p.err().unwrap_or_default());
            Err(diags)
        }
    }
}

fn cmd_plan(
    workflow_path: &Path,
    policy_path: Option<PathBuf>,
    raw: &[RawInput],
    format: OutputFormat,
    state: &StateArg,
    options: RenderOptions,
) -> u8 {
    let policy_path = policy_path.unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY));
    let (analysis, policy) = match load_both(workflow_path, &policy_path) {
        Ok(both) => both,
        Err(diags) => return report(diags, format, options),
    };
    // Warned about here, refused by `run`.
    {
        let mut err = std::io::stderr().lock();
        for d in &policy.insecure_transport {
            let _ = write!(err, "{}", diagnostic::render(d, options));
        }
    }
    let values = match inputs::resolve(&analysis.workflow.value, raw, true) {
        Ok(v) => v,
        Err(d) => return report(d, format, options),
    };
    match plan::build(
        &analysis,
        &policy,
        &policy_path.display().to_string(),
        &values,
    ) {
        Ok(plan) => {
            // What is left of the daily and monthly budgets, from the journal.
            let left = journal::remaining_budgets(state, &policy);
            match format {
                OutputFormat::Text => {
                    let mut text = render::plan_text(&plan);
                    if let Some(left) = &left {
                        text.push_str(&render::budgets_left_text(left, plan.totals.cost.high));
                    }
                    print_out(&text)
                }
                OutputFormat::Json => {
                    let mut v = serde_json::to_value(&plan).unwrap_or_default();
                    if let (Some(left), Some(obj)) = (left, v.as_object_mut()) {
                        obj.insert("budgets_left".to_owned(), left);
                    }
                    print_out(&serde_json::to_string_pretty(&v).unwrap_or_default())
                }
            }
            exit::OK
        }
        Err(d) => report(d, format, options),
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The workflow file (with --resume: the journaled run's, unless given).
    #[arg(required_unless_present = "resume")]
    workflow: Option<PathBuf>,
    /// The policy file [default: $TOLLGATE_POLICY, else policies/default.yaml].
    #[arg(long, short = 'p', env = "TOLLGATE_POLICY")]
    policy: Option<PathBuf>,
    /// An input: NAME=VALUE, NAME=@FILE, or NAME=@- for standard input.
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

/// Exit code of a run stopped by Ctrl-C (128 + SIGINT), as shells expect.
const INTERRUPTED: u8 = 130;

fn cmd_run(args: RunArgs, options: RenderOptions) -> u8 {
    let format = args.format;
    // A resume reads the journal first: it takes the workflow, policy and
    // inputs from it. A new run opens it once its input is known to be good,
    // so bad input leaves nothing behind.
    let mut opened = None;
    let resumed = match &args.resume {
        None => None,
        Some(id) => {
            let found = journal::open(&args.state)
                .and_then(|j| journal::resume_target(&j, id).map(|run| (j, run)));
            match found {
                Ok((j, run)) => {
                    opened = Some(j);
                    Some(run)
                }
                Err(d) => return report(vec![d], format, options),
            }
        }
    };
    let Some(workflow_path) = args
        .workflow
        .clone()
        .or_else(|| resumed.as_ref().map(|r| PathBuf::from(&r.workflow_path)))
    else {
        return report(
            vec![Diagnostic::error("usage", "no workflow file given")],
            format,
            options,
        );
    };
    // A resume runs under the policy given now, else the one it started
    // with: a changed policy (a raised budget, a new key) applies to what
    // is left to run.
    let policy_path = args
        .policy
        .clone()
        .or_else(|| resumed.as_ref().map(|r| PathBuf::from(&r.policy_path)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY));
    let (analysis, policy) = match load_both(&workflow_path, &policy_path) {
        Ok(both) => both,
        Err(diags) => return report(diags, format, options),
    };
    // A key never crosses the network in clear text unless the policy
    // says so (`allow_insecure`): `check` and `plan` warn, `run` refuses.
    if !policy.insecure_transport.is_empty() {
        let refused = policy
            .insecure_transport
            .iter()
            .map(|d| Diagnostic {
                severity: diagnostic::Severity::Error,
                ..d.clone()
            })
            .collect();
        return report(refused, format, options);
    }
    if let Some(run) = &resumed {
        if let Err(d) = journal::check_unchanged(run, &analysis, &workflow_path) {
            return report(vec![d], format, options);
        }
        if journal::policy_hash(&policy_path) != run.policy_hash {
            let _ = writeln!(
                std::io::stderr().lock(),
                "note: the policy {} is not the one run {} started with; it applies to what is left to run",
                policy_path.display(),
                run.id
            );
        }
    }
    // Everything that can be wrong with the input is found before any call.
    let run_timeout = match args
        .timeout
        .as_deref()
        .map(|t| workflow::parse_duration(&serde_json::Value::String(t.to_owned())))
    {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => {
            let d = Diagnostic::error(
                "bad-timeout",
                format!(
                    "--timeout {}: not a duration",
                    args.timeout.unwrap_or_default()
                ),
            )
            .with_help("use a number with a unit: 500ms, 30s, 10m, 1h");
            return report(vec![d], format, options);
        }
    };
    let Some(batch_poll_interval) =
        workflow::parse_duration(&serde_json::Value::String(args.batch_poll_interval.clone()))
            .filter(|d| !d.is_zero())
    else {
        let d = Diagnostic::error(
            "bad-duration",
            format!(
                "--batch-poll-interval {}: not a duration",
                args.batch_poll_interval
            ),
        )
        .with_help("use a number with a unit: 500ms, 30s, 2m");
        return report(vec![d], format, options);
    };
    let values = match &resumed {
        Some(run) => journal::journaled_inputs(run, &analysis),
        None => match inputs::resolve(&analysis.workflow.value, &args.inputs, false) {
            Ok(v) => v,
            Err(d) => return report(d, format, options),
        },
    };
    let plan = match plan::build(
        &analysis,
        &policy,
        &policy_path.display().to_string(),
        &values,
    ) {
        Ok(p) => p,
        Err(d) => return report(d, format, options),
    };
    let providers = crate::run::Providers::from_env(&policy);
    let missing = providers.check_keys(&plan, &policy);
    if !missing.is_empty() {
        return report(missing, format, options);
    }
    if let Some(dir) = &args.out {
        if let Err(err) = std::fs::create_dir_all(dir) {
            let d = Diagnostic::error("out-dir", format!("cannot create {}: {err}", dir.display()));
            return report(vec![d], format, options);
        }
    }
    let journal = match opened.map_or_else(|| journal::open(&args.state), Ok) {
        Ok(j) => j,
        Err(d) => return report(vec![d], format, options),
    };
    let run_id = match &resumed {
        Some(run) => match journal.reopen_run(run) {
            Ok(()) => run.id.clone(),
            Err(e) => return report(vec![Diagnostic::error("journal", e)], format, options),
        },
        None => match journal::begin(
            &journal,
            &analysis,
            &workflow_path,
            &policy,
            &policy_path,
            &values,
            &plan,
        ) {
            Ok(id) => id,
            Err(d) => return report(vec![d], format, options),
        },
    };
    let run_options = crate::run::RunOptions {
        concurrency: args.concurrency.max(1),
        run_timeout,
        stream: !args.no_stream,
        batch_all: args.batch,
        batch_poll_interval,
        // Submitted batches are remembered in the journal.
        batch_ledger: Some(
            std::sync::Arc::clone(&journal) as std::sync::Arc<dyn crate::run::BatchLedger>
        ),
        journal: Some(crate::run::RunJournal {
            journal: std::sync::Arc::clone(&journal),
            run_id: run_id.clone(),
            cache_ttl: (!args.no_cache && !policy.cache_ttl.is_zero()).then_some(policy.cache_ttl),
        }),
        ..crate::run::RunOptions::default()
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(d) => return report(vec![d], format, options),
    };
    let analysis = std::sync::Arc::new(analysis);
    let policy = std::sync::Arc::new(policy);
    let total = analysis.steps.len() as u64;
    let quiet = args.quiet;
    let result = runtime.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cancel_on_signals(cancel.clone()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter = tokio::spawn(crate::progress::report(rx, total, quiet));
        let job = crate::run::Job {
            analysis: analysis.clone(),
            policy,
            plan: &plan,
            inputs: &values,
        };
        let result = crate::run::execute(job, providers, run_options, cancel, Some(tx)).await;
        let _ = reporter.await;
        (result, analysis)
    });
    let (result, analysis) = result;
    if let Err(e) = journal.finish_run(&run_id, result.status.as_str()) {
        let _ = writeln!(std::io::stderr().lock(), "warning: {e}");
    }
    let mut write_failed = false;
    if let Some(dir) = &args.out {
        if let Err(err) = write_outputs(dir, &result) {
            write_failed = true;
            let mut e = std::io::stderr().lock();
            let _ = writeln!(
                e,
                "error: cannot write the outputs to {}: {err}",
                dir.display()
            );
        }
    }
    match format {
        OutputFormat::Json => print_out(&serde_json::to_string_pretty(&result).unwrap_or_default()),
        OutputFormat::Text => {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "{}", render::run_text(&result));
            drop(e);
            // The answers of the final steps (those nothing depends on) go to
            // stdout, so `tollgate run … > answer.md` does what it says.
            let leaves: Vec<&crate::run::StepReport> = result
                .steps
                .iter()
                .filter(|s| {
                    let i = analysis.steps.get_index_of(&s.id).unwrap_or(0);
                    analysis.dag.dependants(i).is_empty() && s.output.is_some()
                })
                .collect();
            let mut text = String::new();
            for s in &leaves {
                if leaves.len() > 1 {
                    text.push_str(&format!("## {}\n\n", s.id));
                }
                text.push_str(&output_text(s.output.as_ref()));
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                if leaves.len() > 1 {
                    text.push('\n');
                }
            }
            if !text.is_empty() {
                print_out(&text);
            }
        }
    }
    match result.status {
        crate::run::RunStatus::Succeeded if write_failed => exit::FAILED,
        crate::run::RunStatus::Succeeded => exit::OK,
        crate::run::RunStatus::Cancelled => INTERRUPTED,
        crate::run::RunStatus::Failed | crate::run::RunStatus::TimedOut => exit::FAILED,
    }
}

/// Ctrl-C, and the SIGTERM a CI runner or `kill` sends, both stop a run or
/// a test run cleanly: in-flight calls dropped, servers stopped, summary
/// (and recordings) written.
async fn cancel_on_signals(cancel: tokio_util::sync::CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
    cancel.cancel();
}

/// The multi-threaded runtime `run` and `test` drive their calls on.
fn runtime() -> Result<tokio::runtime::Runtime, Diagnostic> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            Diagnostic::error("runtime", format!("cannot start the async runtime: {err}"))
        })
}

fn output_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
        None => String::new(),
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
            Some(serde_json::Value::String(text)) => write(&format!("{}.txt", s.id), text)?,
            Some(v) => write(
                &format!("{}.json", s.id),
                &serde_json::to_string_pretty(v).unwrap_or_default(),
            )?,
            None => {}
        }
    }
    write(
        "run.json",
        &serde_json::to_string_pretty(result).unwrap_or_default(),
    )
}

fn per_mtok(x: f64) -> String {
    let v = x * 1_000_000.0;
    if v == 0.0 {
        "0".to_owned()
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

fn cmd_models(
    filter: Option<&str>,
    policy_path: Option<&Path>,
    regenerate: Option<&Path>,
    format: OutputFormat,
    options: RenderOptions,
) -> u8 {
    if let Some(source) = regenerate {
        let text = match crate::files::read_text(source) {
            Ok(t) => t,
            Err(err) => {
                return report(
                    vec![Diagnostic::error(
                        "io",
                        format!("cannot read {}: {err}", source.display()),
                    )],
                    format,
                    options,
                );
            }
        };
        return match catalog::build_from_litellm(&text) {
            Ok(out) => {
                print_out(&out);
                exit::OK
            }
            Err(err) => report(
                vec![
                    Diagnostic::error("catalog", format!("cannot build the catalog: {err}"))
                        .in_file(source),
                ],
                format,
                options,
            ),
        };
    }
    let keep = |name: &str| filter.is_none_or(|f| name.to_lowercase().contains(&f.to_lowercase()));
    if let Some(path) = policy_path {
        let policy = match load_policy(path) {
            Ok(p) => p,
            Err(d) => return report(d, format, options),
        };
        let models: Vec<_> = policy
            .models
            .values()
            .filter(|m| keep(&m.alias) || keep(&m.model))
            .collect();
        if format == OutputFormat::Json {
            let v: Vec<_> = models
                .iter()
                .map(|m| {
                    json!({
                        "alias": m.alias, "provider": m.provider, "kind": m.provider_kind.name(),
                        "model": m.model, "tier": m.tier, "locality": m.locality,
                        "context_window": m.context_window, "max_output_tokens": m.max_output_tokens,
                        "tokenizer": m.tokenizer.name(), "price_per_token": m.price, "price_source": m.price_source,
                    })
                })
                .collect();
            print_out(&serde_json::to_string_pretty(&v).unwrap_or_default());
            return exit::OK;
        }
        let mut out = format!(
            "{:<12} {:<10} {:<28} {:<10} {:<6} {:>9} {:>8} {:>8}  {}\n",
            "MODEL",
            "PROVIDER",
            "NAME",
            "TIER",
            "WHERE",
            "CONTEXT",
            "IN/MTOK",
            "OUT/MTOK",
            "PRICE FROM"
        );
        for m in models {
            let source = match &m.price_source {
                PriceSource::Catalog(k) => format!("catalog {k}"),
                PriceSource::CatalogWithOverrides(k) => format!("catalog {k} + policy"),
                PriceSource::Policy => "policy".to_owned(),
                PriceSource::Local => "local (free)".to_owned(),
            };
            out.push_str(&format!(
                "{:<12} {:<10} {:<28} {:<10} {:<6} {:>9} {:>8} {:>8}  {}\n",
                m.alias,
                m.provider,
                m.model,
                m.tier.name(),
                if m.locality == policy::Locality::Local {
                    "local"
                } else {
                    "cloud"
                },
                m.context_window,
                per_mtok(m.price.input),
                per_mtok(m.price.output),
                source
            ));
        }
        print_out(&out);
        return exit::OK;
    }
    let entries: Vec<_> = Catalog::builtin()
        .entries()
        .filter(|e| keep(&e.key))
        .collect();
    if format == OutputFormat::Json {
        print_out(&serde_json::to_string_pretty(&entries).unwrap_or_default());
        return exit::OK;
    }
    let mut out = format!(
        "{:<52} {:<10} {:>9} {:>8} {:>8} {:>9}\n",
        "MODEL", "PROVIDER", "CONTEXT", "IN/MTOK", "OUT/MTOK", "MAX OUT"
    );
    for e in entries {
        out.push_str(&format!(
            "{:<52} {:<10} {:>9} {:>8} {:>8} {:>9}\n",
            e.key,
            e.provider,
            e.max_input_tokens.map_or("-".to_owned(), |v| v.to_string()),
            per_mtok(e.input_per_token),
            per_mtok(e.output_per_token),
            e.max_output_tokens
                .map_or("-".to_owned(), |v| v.to_string()),
        ));
    }
    print_out(&out);
    exit::OK
}
