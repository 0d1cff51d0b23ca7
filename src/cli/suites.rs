//! `tollgate test` and `tollgate merge`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{OutputFormat, exit, print_out, report, runtime};
use crate::diagnostic::{Diagnostic, RenderOptions};
use crate::eval::policy_tests::{self, PolicyTests};
use crate::eval::results::{self, Mode, PolicyTestsResult, Results, Shard};
use crate::eval::runner::{self, TestOptions};
use crate::eval::snapshot;
use crate::eval::suite::{self, Suite, Variant};
use crate::progress::TestProgress;

#[derive(Debug, clap::Args)]
pub(super) struct TestArgs {
    /// Suite files, or folders of them [default: evals/].
    suites: Vec<PathBuf>,
    /// Answer from the recorded responses only: no network, no local server, no cost.
    #[arg(long, conflicts_with = "record")]
    replay: bool,
    /// Call the models and record every answer into the suite's cassette.
    #[arg(long)]
    record: bool,
    /// CI mode: never write snapshot files; a new or changed output fails.
    #[arg(long)]
    ci: bool,
    /// Promote pending snapshots (all, or one case's with --accept=CASE) instead of running.
    #[arg(long, value_name = "CASE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    accept: Option<String>,
    /// Run each case N times; a case passes when its pass_threshold share of runs pass.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,
    /// Run only shard K of N (1-based), split by a hash of the case names.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Only cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a self-contained HTML page of the results here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write the full results as JSON here (what `tollgate merge` reads).
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
    /// text: the summary; json: the results on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Model calls in flight at once (and cases run at once).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Run every suite under this policy instead of the one it names (its recordings are then kept in cassettes/<suite>/<policy name>.json).
    #[arg(long, short = 'p', value_name = "POLICY")]
    policy: Option<PathBuf>,
    /// Pin every step of every suite's workflow to this model of the policy (recordings in cassettes/<suite>/<variant>.json).
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    #[command(flatten)]
    state: super::journal::StateArg,
}

#[derive(Debug, clap::Args)]
pub(super) struct MergeArgs {
    /// Results files written by `tollgate test --results` (one per shard).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Write the merged JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a self-contained HTML page of the merged results here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write the merged results here.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

fn parse_shard(s: &str) -> Result<Shard, Diagnostic> {
    let bad = || {
        Diagnostic::error(
            "bad-shard",
            format!("--shard {s}: expected K/N with 1 ≤ K ≤ N"),
        )
        .with_help("for example --shard 2/4 runs the second of four shards")
    };
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, count) = (
        k.trim().parse::<u32>().map_err(|_| bad())?,
        n.trim().parse::<u32>().map_err(|_| bad())?,
    );
    if index == 0 || count == 0 || index > count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// The journal for a live or recording run, which spends money: journaled
/// like `run`, so the policy's daily and monthly budgets hold and `report`
/// shows the spend. A replay spends nothing and opens none.
pub(super) fn journal_unless_replay(
    mode: Mode,
    state: &super::journal::StateArg,
) -> Result<Option<std::sync::Arc<crate::journal::Journal>>, Diagnostic> {
    if mode == Mode::Replay {
        return Ok(None);
    }
    super::journal::open(state).map(Some)
}

/// Writes a report file whole (temporary name, then rename), piece by piece.
pub(super) fn write_file(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), Diagnostic> {
    snapshot::write_atomic_with(path, write).map_err(|e| {
        Diagnostic::error("io", format!("cannot write {}: {e}", path.display())).in_file(path)
    })
}

/// The results as pretty JSON, serialised straight into `out`: the
/// results of a big suite are never held as one string.
fn write_json(results: &Results, out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, results)?;
    out.write_all(b"\n")
}

/// The outputs every results-producing command shares: files, then stdout.
/// Each is written as the cases are read back (a test run's from its spill):
/// a failure to read them is an error, never a short report.
fn emit(
    results: &Results,
    junit: Option<&Path>,
    html: Option<&Path>,
    out: Option<&Path>,
    format: OutputFormat,
) -> Result<(), Diagnostic> {
    if let Some(p) = junit {
        write_file(p, |w| results::write_junit(results, w))?;
    }
    if let Some(p) = html {
        let page = crate::html::results_page(results).map_err(unreadable)?;
        write_file(p, |w| w.write_all(page.as_bytes()))?;
    }
    if let Some(p) = out {
        write_file(p, |w| write_json(results, w))?;
    }
    // A closed stdout is not worth an error (as with every other output);
    // what can fail is reading the cases back.
    let mut stdout = Lenient(std::io::BufWriter::new(std::io::stdout().lock()));
    match format {
        OutputFormat::Json => write_json(results, &mut stdout),
        OutputFormat::Text => results::write_text(results, &mut stdout),
    }
    .and_then(|()| stdout.flush())
    .map_err(unreadable)
}

fn unreadable(e: std::io::Error) -> Diagnostic {
    Diagnostic::error(
        "io",
        format!("cannot read the case results back from their temporary file: {e}"),
    )
    .with_help("the system's temporary folder (TMPDIR) must have room for the results")
}

/// A writer whose write errors are dropped (stdout closed early).
struct Lenient<W>(W);

impl<W: Write> Write for Lenient<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Checks the flags of `test` that clap cannot, all at once, before any
/// suite is read: the shard to run.
fn check_flags(args: &TestArgs) -> Result<Option<Shard>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let shard = match args.shard.as_deref().map(parse_shard).transpose() {
        Ok(s) => s,
        Err(d) => {
            diags.push(d);
            None
        }
    };
    if args.repeat == 0 {
        diags.push(Diagnostic::error(
            "bad-repeat",
            "--repeat must be at least 1",
        ));
    }
    if diags.is_empty() {
        Ok(shard)
    } else {
        Err(diags)
    }
}

/// Finds and loads every suite; all their problems at once.
/// The files `test` was given: suites, and policy test files (recognised
/// by their content, so both can share a folder).
pub(super) struct Loaded {
    pub(super) suites: Vec<Suite>,
    pub(super) policy_tests: Vec<PolicyTests>,
}

/// The suite files among `paths` (default `evals/`), read once each.
pub(super) fn suite_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    if paths.is_empty() {
        suite::discover(&[PathBuf::from("evals")])
    } else {
        suite::discover(paths)
    }
}

/// The name of a variant: the policy file's stem, the model, or both
/// (`default`, `budget`, `default+budget`), made safe as a file name (it
/// names the variant's recordings).
pub(super) fn variant_name(policy: Option<&Path>, model: Option<&str>) -> String {
    let stem = policy.map(|p| {
        if p == Path::new(crate::policy::BUILTIN_NAME) {
            "built-in".to_owned()
        } else {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        }
    });
    let name = match (stem, model) {
        (Some(p), Some(m)) => format!("{p}+{m}"),
        (Some(p), None) => p,
        (None, Some(m)) => m.to_owned(),
        (None, None) => String::new(),
    };
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A variant's policy, loaded once for every suite: `--policy`'s problems
/// are located in that file, once.
pub(super) fn variant(
    policy: Option<&Path>,
    model: Option<&str>,
) -> Result<Variant, Vec<Diagnostic>> {
    let loaded = match policy {
        Some(p) => {
            let compiled = super::load_policy(p)?;
            Some((p.to_path_buf(), std::sync::Arc::new(compiled)))
        }
        None => None,
    };
    Ok(Variant {
        name: variant_name(policy, model),
        policy: loaded,
        model: model.map(str::to_owned),
    })
}

pub(super) fn load_suites(files: &[PathBuf], variant: &Variant) -> Result<Loaded, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut suites = Vec::new();
    let mut policy_tests = Vec::new();
    for f in files {
        // Each file is read once: what it is decides how it is loaded.
        let doc = match crate::workflow::load_document(f) {
            Ok(doc) => doc,
            Err(d) => {
                diags.extend(d);
                continue;
            }
        };
        if policy_tests::is_policy_test(&doc) {
            match policy_tests::from_document(f, doc) {
                Ok(t) => policy_tests.push(t),
                Err(d) => diags.extend(d),
            }
            continue;
        }
        match suite::from_document_as(f, doc, variant) {
            Ok(s) => suites.push(s),
            Err(d) => diags.extend(d),
        }
    }
    let mut names = std::collections::HashMap::new();
    for s in &suites {
        if let Some(other) = names.insert(s.name.clone(), s.path.clone()) {
            diags.push(
                Diagnostic::error(
                    "duplicate-suite",
                    format!("two suites are named `{}`", s.name),
                )
                .in_file(&s.path)
                .with_help(format!(
                    "{} has the same name; set `name:` in one of them",
                    other.display()
                )),
            );
        }
    }
    // A retired model fails a suite as it fails `plan` (the one check that
    // depends on the day, which the CLI owns): each policy once.
    let mut checked = std::collections::HashSet::new();
    for s in &suites {
        if checked.insert(s.policy_path.clone())
            && let Err(d) = super::load_policy(&s.policy_path)
        {
            diags.extend(d);
        }
    }
    if diags.is_empty() {
        Ok(Loaded {
            suites,
            policy_tests,
        })
    } else {
        Err(diags)
    }
}

/// Runs the policy test files' share of tests (`--filter`, `--shard`):
/// routing only, nothing called.
fn run_policy_tests(
    files: &[PolicyTests],
    args: &TestArgs,
    shard: Option<&Shard>,
) -> Vec<PolicyTestsResult> {
    files
        .iter()
        .map(|f| {
            let path = f.path.display().to_string();
            let tests = f
                .run()
                .into_iter()
                .filter(|o| {
                    args.filter
                        .as_ref()
                        .is_none_or(|x| o.name.contains(x.as_str()))
                })
                .filter(|o| shard.is_none_or(|s| runner::in_shard(&path, &o.name, s)))
                .collect();
            PolicyTestsResult {
                path,
                policy: f.policy_path.display().to_string(),
                tests,
            }
        })
        .collect()
}

/// The warnings of the suites' workflows and policies, each once (suites
/// often share a policy). A live or recording run refuses plain http to a
/// cloud provider (an error when the suite is prepared), so that warning is
/// left to the error there.
pub(super) fn warnings(suites: &[Suite], mode: Mode) -> Vec<Diagnostic> {
    let mut seen = std::collections::HashSet::new();
    suites
        .iter()
        .flat_map(|s| s.policy.warnings.iter().chain(&s.analysis.warnings))
        .filter(|d| mode == Mode::Replay || d.code != crate::policy::INSECURE_BASE_URL)
        .filter(|d| seen.insert((d.code, d.location(), d.message.clone())))
        .cloned()
        .collect()
}

/// `test --accept[=CASE]`: promotes the pending snapshots of the given
/// suites' cases and steps (one case's with `=CASE`) instead of running;
/// pending files in their folders that no given case owns are named, not
/// promoted, and with nothing to accept the folders looked in are named.
fn accept(suites: &[Suite], case: &str, format: OutputFormat, options: RenderOptions) -> u8 {
    let only = (!case.is_empty()).then_some(case);
    let mut accepted = Vec::new();
    let mut left = std::collections::BTreeSet::new();
    let mut dirs = std::collections::BTreeSet::new();
    for s in suites {
        // A suite keeps no cases: their names, compiled once more.
        let mut names = std::collections::HashSet::new();
        let _ = s.for_each_case(|c| {
            names.insert(c.name);
        });
        let wanted = |case: &str, step: &str| {
            only.is_none_or(|c| c == case)
                && names.contains(case)
                && s.analysis.workflow.value.steps.contains_key(step)
        };
        dirs.insert(s.snapshot_dir.clone());
        match snapshot::accept(&s.snapshot_dir, &wanted) {
            Ok(a) => {
                accepted.extend(a.accepted);
                left.extend(a.left);
            }
            Err(e) => {
                let d = Diagnostic::error(
                    "io",
                    format!(
                        "cannot accept snapshots in {}: {e}",
                        s.snapshot_dir.display()
                    ),
                );
                return report(vec![d], format, options);
            }
        }
    }
    // A file one suite left may be another's (a shared folder); with
    // `=CASE` the other cases' pending files are not news.
    for a in &accepted {
        left.remove(&snapshot::pending_path(a));
    }
    if only.is_some() {
        left.clear();
    }
    let mut lines: Vec<String> = accepted
        .iter()
        .map(|p| format!("accepted {}", p.display()))
        .collect();
    if accepted.is_empty() {
        lines.push(format!(
            "no pending snapshots{} in {}",
            only.map(|c| format!(" of case `{c}`")).unwrap_or_default(),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    lines.extend(left.iter().map(|p| {
        format!(
            "left {} (no case and step of the given suites has that name)",
            p.display()
        )
    }));
    print_out(&lines.join("\n"));
    exit::OK
}

pub(super) fn cmd_test(args: TestArgs, options: RenderOptions) -> u8 {
    let format = args.format;
    let shard = match check_flags(&args) {
        Ok(s) => s,
        Err(d) => return report(d, format, options),
    };
    let loaded = variant(args.policy.as_deref(), args.model.as_deref()).and_then(|v| {
        let files = suite_files(&args.suites)?;
        load_suites(&files, &v)
    });
    let Loaded {
        suites,
        policy_tests,
    } = match loaded {
        Ok(s) => s,
        Err(d) => return report(d, format, options),
    };
    let mode = if args.replay {
        Mode::Replay
    } else if args.record {
        Mode::Record
    } else {
        Mode::Live
    };
    super::warn(&warnings(&suites, mode), options);
    if let Some(case) = &args.accept {
        return accept(&suites, case, format, options);
    }
    let journal = match journal_unless_replay(mode, &args.state) {
        Ok(j) => j,
        Err(d) => return report(vec![d], format, options),
    };
    let mut opts = TestOptions {
        mode,
        ci: args.ci,
        repeat: args.repeat,
        shard,
        filter: args.filter.clone(),
        run: crate::run::RunOptions {
            concurrency: args.concurrency.max(1),
            ..crate::run::RunOptions::default()
        },
        journal,
        on_run: None,
        measure: false,
    };
    let total: u64 = suites
        .iter()
        .map(|s| runner::selected_count(s, &opts) as u64 * args.repeat as u64)
        .sum();
    let progress = TestProgress::new(total, args.quiet || format != OutputFormat::Text);
    opts.on_run = progress.on_run();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(d) => return report(vec![d], format, options),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let outcome = runtime.block_on(async {
        tokio::spawn(super::cancel_on_signals(cancel.clone()));
        runner::run_suites(&suites, &opts, cancel.clone()).await
    });
    progress.finish();
    let mut results = match outcome {
        Ok(r) => r,
        Err(d) => return report(d, format, options),
    };
    results.policy_tests = run_policy_tests(&policy_tests, &args, opts.shard.as_ref());
    if results.totals().cases == 0 {
        let _ = writeln!(
            std::io::stderr(),
            "note: no case matched{}{}",
            args.filter
                .as_ref()
                .map(|f| format!(" --filter {f}"))
                .unwrap_or_default(),
            args.shard
                .as_ref()
                .map(|s| format!(" in shard {s}"))
                .unwrap_or_default()
        );
    }
    if let Err(d) = emit(
        &results,
        args.junit.as_deref(),
        args.html.as_deref(),
        args.results.as_deref(),
        format,
    ) {
        return report(vec![d], format, options);
    }
    if cancel.is_cancelled() {
        exit::INTERRUPTED
    } else if results.ok() {
        exit::OK
    } else {
        exit::FAILED
    }
}

pub(super) fn cmd_merge(args: MergeArgs, options: RenderOptions) -> u8 {
    let format = args.format;
    let mut parts = Vec::new();
    let mut diags = Vec::new();
    for f in &args.files {
        match crate::files::read_text(f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Results>(&t).map_err(|e| e.to_string()))
        {
            Ok(r) => parts.push(r),
            Err(why) => diags.push(
                Diagnostic::error(
                    "results-file",
                    format!("cannot read results from {}: {why}", f.display()),
                )
                .in_file(f)
                .with_help("give the files written by `tollgate test --results FILE`"),
            ),
        }
    }
    if !diags.is_empty() {
        return report(diags, format, options);
    }
    let merged = match results::merge(parts) {
        Ok(m) => m,
        Err(e) => {
            let d = Diagnostic::error("merge", e.to_string())
                .with_help("give every shard's results once (`--shard K/N` for K = 1…N)");
            return report(vec![d], format, options);
        }
    };
    if let Err(d) = emit(
        &merged,
        args.junit.as_deref(),
        args.html.as_deref(),
        args.results.as_deref(),
        format,
    ) {
        return report(vec![d], format, options);
    }
    if merged.ok() { exit::OK } else { exit::FAILED }
}
