//! The command line. The only module that knows about the terminal, prints,
//! or picks exit codes (with [`crate::progress`], its live view of a run).
//!
//! This file holds the argument parser, the dispatch and what every command
//! shares: printing, diagnostics (errors and warnings), loading a workflow
//! and a policy, the async runtime. Each command lives in its own file:
//! `check`, `plan`, `run`, `init`, `models`, `suites` (`test`, `merge`),
//! `compare` and
//! `journal` (`runs`, `report`, and `run --resume`).
//!
//! Every command reports problems the same way: all of them, as located
//! [`Diagnostic`]s, exit code 2 when one is an error. Warnings are
//! diagnostics too, drawn the same way on stderr, once, right after the
//! files are loaded; they never change the exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::analyze::{self, Analysis};
use crate::diagnostic::{self, Diagnostic, RenderOptions};
use crate::inputs::RawInput;
use crate::policy::{self, Policy};
use crate::render;
use crate::schema::Format as FileFormat;
use crate::workflow::{self, Loaded, Workflow};

mod check;
mod compare;
mod init;
mod journal;
mod models;
mod plan;
mod router;
mod run;
mod suites;
use journal::StateArg;

/// Exit codes, in one place.
pub mod exit {
    pub const OK: u8 = 0;
    /// A run or a test failed.
    pub const FAILED: u8 = 1;
    /// Bad input or configuration.
    pub const BAD_INPUT: u8 = 2;
    /// A run or a test stopped by Ctrl-C or SIGTERM (128 + SIGINT, as
    /// shells expect).
    pub const INTERRUPTED: u8 = 130;
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

/// `--by`: who ran the runs (recorded from the environment when each run
/// started: `$USER`, the hostname or `$TOLLGATE_MACHINE`, the CI system).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ByArg {
    User,
    Machine,
    Ci,
}

impl ByArg {
    fn all(by: &[ByArg]) -> Vec<crate::journal::report::By> {
        use crate::journal::report::By;
        let mut out: Vec<By> = Vec::new();
        for b in by {
            let b = match b {
                ByArg::User => By::User,
                ByArg::Machine => By::Machine,
                ByArg::Ci => By::Ci,
            };
            if !out.contains(&b) {
                out.push(b);
            }
        }
        out
    }
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
        /// The policy file [default: $TOLLGATE_POLICY, else the project's policies/default.yaml, else the built-in local policy].
        #[arg(long, short = 'p', env = "TOLLGATE_POLICY")]
        policy: Option<PathBuf>,
        /// An input: NAME=VALUE, NAME=@FILE, or NAME=@- for standard input (a streamed input, `stream: true`, is NAME=@FILE.jsonl: one item per line, read a line at a time).(a streamed input, `stream: true`, is NAME=@FILE.jsonl: one item per line, read a line at a time).
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<RawInput>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        state: StateArg,
        /// What-if: plan under this baseline policy too and show, per step, both routes and the cost change. A file, or REV:PATH for a file at a git revision (main:policies/default.yaml).
        #[arg(long, value_name = "POLICY | REV:PATH")]
        compare: Option<String>,
        /// With --compare: exit 1 when the policy under test costs more than the baseline, or sends more to the cloud (repeatable).
        #[arg(long, value_enum, requires = "compare")]
        fail_on: Vec<plan::FailOnArg>,
    },
    /// Run a workflow: every step on the model the policy routes it to, in parallel.
    Run(run::RunArgs),
    /// Run evaluation suites: cases through workflows, assertions, snapshots, recorded responses.
    Test(suites::TestArgs),
    /// Run suites under several policies or model pins and compare pass rate, cost, tokens, model time and where the calls went, per suite and per task.
    Compare(compare::CompareArgs),
    /// A learned router: train one from comparison results, evaluate it on held-out cases.
    #[command(subcommand)]
    Router(router::RouterCommand),
    /// Join the results of test shards into one report and one JUnit file.
    Merge(suites::MergeArgs),
    /// List recent runs from the run journal (newest first).
    Runs {
        /// How many runs to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Also group the listed runs by who ran them (repeatable).
        #[arg(long, value_enum)]
        by: Vec<ByArg>,
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
        /// Also split spend, calls and savings by who ran the runs (repeatable).
        #[arg(long, value_enum)]
        by: Vec<ByArg>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Also write a self-contained HTML page of the report here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[command(flatten)]
        state: StateArg,
    },
    /// The team ledger (TOLLGATE_STATE_URL): send the call records this machine kept during an outage.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Start a project: a workflow, a policy, a suite with one case, the JSON
    /// Schemas, and `.tollgate/` in .gitignore. Never overwrites a file.
    Init {
        /// The policy to start from.
        #[arg(long, value_enum, default_value_t = init::Template::Local)]
        template: init::Template,
        /// The project folder (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
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

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Send the call records spilled in the state folder while the team ledger was unreachable (each once: records already there are not written again), then remove them from the spill file.
    Sync {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        state: StateArg,
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
    // Before the command's own output: the ledger it may use is reachable
    // by an attacker on the network (said once, whatever the command opens).
    if matches!(
        cli.command,
        Command::Plan { .. }
            | Command::Run(_)
            | Command::Test(_)
            | Command::Compare(_)
            | Command::Runs { .. }
            | Command::Report { .. }
            | Command::Ledger(_)
    ) {
        journal::warn_state_url(options);
    }
    let code = match cli.command {
        Command::Check { files, format } => check::cmd_check(&files, format, options),
        Command::Plan {
            workflow,
            policy,
            inputs,
            format,
            state,
            compare,
            fail_on,
        } => match compare {
            Some(baseline) => plan::cmd_compare(
                &workflow, policy, &baseline, &fail_on, &inputs, format, options,
            ),
            None => plan::cmd_plan(&workflow, policy, &inputs, format, &state, options),
        },
        Command::Run(args) => run::cmd_run(args, options),
        Command::Test(args) => suites::cmd_test(args, options),
        Command::Merge(args) => suites::cmd_merge(args, options),
        Command::Compare(args) => compare::cmd_compare(args, options),
        Command::Router(cmd) => router::cmd_router(cmd, options),
        Command::Ledger(LedgerCommand::Sync { format, state }) => {
            match journal::ledger_sync(&state) {
                Ok(v) => {
                    match format {
                        OutputFormat::Json => {
                            print_out(&serde_json::to_string_pretty(&v).unwrap_or_default())
                        }
                        OutputFormat::Text => print_out(&format!(
                            "sent {} call records to the team ledger {} ({} already there); {} left in {}",
                            v["sent"],
                            v["ledger"].as_str().unwrap_or_default(),
                            v["already_there"],
                            v["left"],
                            v["spill"].as_str().unwrap_or("-")
                        )),
                    }
                    exit::OK
                }
                Err(d) => report(vec![d], format, options),
            }
        }
        Command::Runs {
            limit,
            by,
            format,
            state,
        } => match with_warnings(options, |w| journal::runs(&state, limit, w)) {
            Ok(runs) => {
                let by = ByArg::all(&by);
                match format {
                    // Without --by, the list as it always was; with it, the
                    // list and its groups.
                    OutputFormat::Json if by.is_empty() => {
                        print_out(&serde_json::to_string_pretty(&runs).unwrap_or_default())
                    }
                    OutputFormat::Json => {
                        let mut out = serde_json::Map::new();
                        out.insert("runs".to_owned(), json!(runs));
                        for b in &by {
                            out.insert(
                                format!("by_{}", b.name()),
                                json!(crate::journal::report::runs_by(&runs, *b)),
                            );
                        }
                        print_out(&serde_json::to_string_pretty(&out).unwrap_or_default())
                    }
                    OutputFormat::Text => print_out(&render::runs_text(&runs, &by)),
                }
                exit::OK
            }
            Err(d) => report(vec![d], format, options),
        },
        Command::Report {
            since,
            by,
            format,
            html,
            state,
        } => match with_warnings(options, |w| {
            journal::report(&state, since.as_deref(), &ByArg::all(&by), w)
        }) {
            Ok(r) => match html.as_deref().map(|path| {
                suites::write_file(path, |w| {
                    w.write_all(crate::html::report_page(&r).as_bytes())
                })
            }) {
                Some(Err(d)) => report(vec![d], format, options),
                _ => {
                    match format {
                        OutputFormat::Json => {
                            print_out(&serde_json::to_string_pretty(&r).unwrap_or_default())
                        }
                        OutputFormat::Text => print_out(&render::report_text(&r)),
                    }
                    exit::OK
                }
            },
            Err(d) => report(vec![d], format, options),
        },
        Command::Init { template, dir } => init::cmd_init(template, &dir, options),
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
        } => models::cmd_models(
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

/// Runs `f`, then draws the warnings it gathered (on stderr, whatever the
/// format: JSON on stdout stays the command's own).
fn with_warnings<T>(options: RenderOptions, f: impl FnOnce(&mut Vec<Diagnostic>) -> T) -> T {
    let mut warnings = Vec::new();
    let out = f(&mut warnings);
    if !warnings.is_empty() {
        warn(&warnings, options);
    }
    out
}

/// Diagnostics drawn in text output; the rest are counted.
const MAX_SHOWN_DIAGNOSTICS: usize = 50;

/// Prints diagnostics (stderr for text, stdout for JSON) and returns the exit code.
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

/// Draws warnings on stderr, the way [`report`] draws errors, whatever the
/// output format: stdout stays for the command's result (a plan, a run's
/// answers, JSON). Called once per command, right after loading, so each
/// warning shows once.
fn warn<'a>(warnings: impl IntoIterator<Item = &'a Diagnostic>, options: RenderOptions) {
    let mut warnings: Vec<Diagnostic> = warnings.into_iter().cloned().collect();
    diagnostic::sort(&mut warnings);
    let mut err = std::io::stderr().lock();
    for d in &warnings {
        let _ = write!(err, "{}", diagnostic::render(d, options));
    }
}

/// The policy a command uses when none is named (`--policy`,
/// `$TOLLGATE_POLICY`): the project's `policies/default.yaml`, else the
/// built-in one — said once on stderr, with how to write a policy, so a
/// plan made without one never looks like a plan made with the team's.
fn default_policy() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if let Some(path) = find_default_policy(&cwd) {
        return path;
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "note: no policy file (no --policy, no $TOLLGATE_POLICY, no {DEFAULT_POLICY} in this project): \
         using the built-in policy — every step on the local Gemma 3 270M model through llama-server, \
         both installed into ~/.cache/tollgate by tollgate's scripts/setup-local.sh.\n\
         help: `tollgate init` writes a policy (and a starter workflow) to change that"
    );
    PathBuf::from(policy::BUILTIN_NAME)
}

/// `policies/default.yaml` in the current folder, else at the project root
/// (the nearest ancestor with `.git`, where the journal lives too), so a
/// command run from a subfolder finds the project's policy. The path is
/// relative to `cwd`, as a user would type it: plans name it.
fn find_default_policy(cwd: &Path) -> Option<PathBuf> {
    if cwd.join(DEFAULT_POLICY).exists() {
        return Some(PathBuf::from(DEFAULT_POLICY));
    }
    let root = analyze::git_root(cwd)?;
    if !root.join(DEFAULT_POLICY).exists() {
        return None;
    }
    let depth = cwd.strip_prefix(root).ok()?.components().count();
    let mut path: PathBuf = std::iter::repeat_n("..", depth).collect();
    path.push(DEFAULT_POLICY);
    Some(path)
}

/// Loads a policy file, or the built-in policy by its name, and checks its
/// models' retirement dates ([`with_lifecycle`]).
pub(crate) fn load_policy(path: &Path) -> Result<Policy, Vec<Diagnostic>> {
    let (file, policy) = if path == Path::new(policy::BUILTIN_NAME) {
        policy::load_builtin()?
    } else {
        policy::load(path)?
    };
    with_lifecycle(&file.doc, policy)
}

/// The policy's models against their providers' retirement dates, as of
/// [`today`]: a retired model is an error, one retiring soon joins the
/// policy's warnings. Here rather than in the policy compile because it is
/// the one check that depends on the day, and the CLI owns the clock.
fn with_lifecycle(
    doc: &crate::yaml::Document,
    mut policy: Policy,
) -> Result<Policy, Vec<Diagnostic>> {
    let today = today().map_err(|d| vec![d])?;
    let (errors, warnings): (Vec<Diagnostic>, Vec<Diagnostic>) =
        policy::lifecycle::check(&policy, doc, crate::catalog::Catalog::builtin(), today)
            .into_iter()
            .partition(Diagnostic::is_error);
    if !errors.is_empty() {
        return Err(errors);
    }
    policy.warnings.extend(warnings);
    diagnostic::sort(&mut policy.warnings);
    Ok(policy)
}

/// Today's date in UTC, or the one `TOLLGATE_TEST_TODAY` (`YYYY-MM-DD`)
/// fixes: tests pin it so that what they show does not change with the day
/// they run on (the integration tests' default is 2026-01-01).
fn today() -> Result<jiff::civil::Date, Diagnostic> {
    match std::env::var("TOLLGATE_TEST_TODAY") {
        Ok(v) => v.parse().map_err(|e| {
            Diagnostic::error(
                "bad-test-today",
                format!("TOLLGATE_TEST_TODAY={v:?} is not a date: {e}"),
            )
            .with_help("write it as YYYY-MM-DD, or unset it to use today's date")
        }),
        Err(_) => Ok(jiff::tz::TimeZone::UTC
            .to_datetime(jiff::Timestamp::now())
            .date()),
    }
}

fn load_workflow(path: &Path) -> Result<Analysis, Vec<Diagnostic>> {
    let w: Loaded<Workflow> = workflow::load(path)?;
    analyze::analyze(w, &analyze::project_root(path))
}

/// Loads a workflow and a policy, both before giving up, so the problems of
/// both files show at once.
fn load_both(workflow: &Path, policy: &Path) -> Result<(Analysis, Policy), Vec<Diagnostic>> {
    match (load_workflow(workflow), load_policy(policy)) {
        (Ok(a), Ok(p)) => {
            let unknown = analyze::check_tasks(&a, &p.tasks);
            if unknown.is_empty() {
                Ok((a, p))
            } else {
                Err(unknown)
            }
        }
        (a, p) => {
            let mut diags = a.err().unwrap_or_default();
            diags.extend(p.err().unwrap_or_default());
            Err(diags)
        }
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
