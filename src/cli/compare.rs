//! `tollgate compare`: the same suites under several policies or model
//! pins — every case under every variant, then one table per suite and per
//! task (`eval::compare`).
//!
//! Exit codes: 0 when the comparison ran, whatever the pass rates (a
//! cheaper policy is allowed to pass less: that is what is being
//! measured); 1 when a case run errored (the comparison is incomplete: a
//! missing recording, a provider error) or a variant's pass rate in a suite
//! is below `--min-pass-rate`; 2 for bad input (every variant's suites are
//! loaded and checked, recordings included, before the first call); 130
//! when interrupted.

use std::io::Write;
use std::path::PathBuf;

use super::suites::{
    journal_unless_replay, load_suites, suite_files, variant, variant_name, warnings, write_file,
};
use super::{OutputFormat, exit, print_out, report, runtime};
use crate::diagnostic::{Diagnostic, RenderOptions};
use crate::eval::compare::{self, Comparison, VariantResults};
use crate::eval::results::{Mode, Results};
use crate::eval::runner::{self, TestOptions};
use crate::eval::suite::{Suite, Variant};
use crate::progress::TestProgress;

#[derive(Debug, clap::Args)]
pub(super) struct CompareArgs {
    /// Suite files, or folders of them [default: evals/].
    suites: Vec<PathBuf>,
    /// A policy to run every suite under (repeatable; the first is the baseline of `vs first`).
    #[arg(long, short = 'p', value_name = "POLICY")]
    policy: Vec<PathBuf>,
    /// A model of the policy to pin every step to (repeatable): with --policy, every policy × model.
    #[arg(long, value_name = "MODEL")]
    model: Vec<String>,
    /// Answer from each variant's recorded responses only: no network, no local server, no cost.
    #[arg(long, conflicts_with = "record")]
    replay: bool,
    /// Call the models and record each variant's answers (cassettes/<suite>/<variant>.json).
    #[arg(long)]
    record: bool,
    /// Exit 1 when a variant's pass rate in a suite is below this (0.8 or 80%); the tables name the cheapest variant that reaches it.
    #[arg(long, value_name = "RATE")]
    min_pass_rate: Option<String>,
    /// Run each case N times under each variant.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,
    /// Only cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Write the comparison as JSON here too.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write a self-contained HTML page of the comparison here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// text: the tables; json: the comparison on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Model calls in flight at once (and cases run at once).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    state: super::journal::StateArg,
}

/// `0.8`, `80%` → 0.8.
fn parse_rate(s: &str) -> Option<f64> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
        None => t.parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&v).then_some(v)
}

/// The flags clap cannot check, all at once, before any file is read.
fn check_flags(args: &CompareArgs) -> Result<Option<f64>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    if args.policy.is_empty() && args.model.is_empty() {
        diags.push(
            Diagnostic::error("no-variants", "compare needs --policy or --model")
                .with_help("for example: tollgate compare evals/ --policy policies/local.yaml --policy policies/default.yaml"),
        );
    }
    if args.repeat == 0 {
        diags.push(Diagnostic::error(
            "bad-repeat",
            "--repeat must be at least 1",
        ));
    }
    let rate = match args.min_pass_rate.as_deref() {
        None => None,
        Some(s) => match parse_rate(s) {
            Some(r) => Some(r),
            None => {
                diags.push(
                    Diagnostic::error(
                        "bad-rate",
                        format!(
                            "--min-pass-rate {s}: expected a rate from 0 to 1, or a percentage"
                        ),
                    )
                    .with_help("for example --min-pass-rate 0.8 or --min-pass-rate 80%"),
                );
                None
            }
        },
    };
    // Names name the recordings: two variants with one name would share them.
    let mut seen = std::collections::HashMap::new();
    for (p, m) in combinations(args) {
        let name = variant_name(p.as_deref(), m.as_deref());
        let what = describe(p.as_ref(), m.as_deref());
        if let Some(other) = seen.insert(name.clone(), what.clone()) {
            diags.push(
                Diagnostic::error(
                    "duplicate-variant",
                    format!("{other} and {what} are both named `{name}`"),
                )
                .with_help("a variant is named after its policy file: give the files different names (or compare one of them)"),
            );
        }
    }
    if diags.is_empty() {
        Ok(rate)
    } else {
        Err(diags)
    }
}

fn describe(p: Option<&PathBuf>, m: Option<&str>) -> String {
    match (p, m) {
        (Some(p), Some(m)) => format!("--policy {} --model {m}", p.display()),
        (Some(p), None) => format!("--policy {}", p.display()),
        (None, Some(m)) => format!("--model {m}"),
        (None, None) => "the suites as written".to_owned(),
    }
}

/// Every variant: each policy (or the suites' own) × each model (or none).
fn combinations(args: &CompareArgs) -> Vec<(Option<PathBuf>, Option<String>)> {
    let policies: Vec<Option<PathBuf>> = if args.policy.is_empty() {
        vec![None]
    } else {
        args.policy.iter().cloned().map(Some).collect()
    };
    let models: Vec<Option<String>> = if args.model.is_empty() {
        vec![None]
    } else {
        args.model.iter().cloned().map(Some).collect()
    };
    policies
        .iter()
        .flat_map(|p| models.iter().map(move |m| (p.clone(), m.clone())))
        .collect()
}

/// Every variant with its suites, loaded; every problem of every variant
/// at once.
fn load(args: &CompareArgs) -> Result<Vec<(Variant, Vec<Suite>)>, Vec<Diagnostic>> {
    let files = suite_files(&args.suites)?;
    let mut diags: Vec<Diagnostic> = Vec::new();
    let mut out = Vec::new();
    // Each policy file is loaded once, whatever the number of models.
    let mut policies: std::collections::HashMap<PathBuf, Variant> = Default::default();
    for (p, m) in combinations(args) {
        let base = match &p {
            Some(path) => match policies.get(path) {
                Some(v) => Ok(v.clone()),
                None => variant(Some(path), None).inspect(|v| {
                    policies.insert(path.clone(), v.clone());
                }),
            },
            None => Ok(Variant::default()),
        };
        let v = match base {
            Ok(base) => Variant {
                name: variant_name(p.as_deref(), m.as_deref()),
                policy: base.policy,
                model: m,
            },
            Err(d) => {
                // Said once, however many models it pairs with.
                for d in d {
                    if !diags
                        .iter()
                        .any(|x| x.message == d.message && x.location() == d.location())
                    {
                        diags.push(d);
                    }
                }
                continue;
            }
        };
        match load_suites(&files, &v) {
            Ok(loaded) => out.push((v, loaded.suites)),
            Err(d) => {
                for d in d {
                    if !diags
                        .iter()
                        .any(|x| x.message == d.message && x.location() == d.location())
                    {
                        diags.push(d);
                    }
                }
            }
        }
    }
    if out.first().is_some_and(|(_, s)| s.is_empty()) && diags.is_empty() {
        diags.push(
            Diagnostic::error("no-suites", "no suite to compare (only policy test files)")
                .with_help("give suite files: they name a `workflow:`, a `policy:` and `cases:`"),
        );
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

pub(super) fn cmd_compare(args: CompareArgs, options: RenderOptions) -> u8 {
    let format = args.format;
    let min_rate = match check_flags(&args) {
        Ok(r) => r,
        Err(d) => return report(d, format, options),
    };
    let variants = match load(&args) {
        Ok(v) => v,
        Err(d) => return report(d, format, options),
    };
    let mode = if args.replay {
        Mode::Replay
    } else if args.record {
        Mode::Record
    } else {
        Mode::Live
    };
    let shown = {
        let mut w = Vec::new();
        for (_, suites) in &variants {
            for d in warnings(suites, mode) {
                if !w.iter().any(|x: &Diagnostic| {
                    x.code == d.code && x.location() == d.location() && x.message == d.message
                }) {
                    w.push(d);
                }
            }
        }
        w
    };
    super::warn(&shown, options);
    let journal = match journal_unless_replay(mode, &args.state) {
        Ok(j) => j,
        Err(d) => return report(vec![d], format, options),
    };
    let mut opts = TestOptions {
        mode,
        // A comparison measures: it never writes snapshot files (the
        // suite's accepted snapshots are the reference every variant is
        // checked against).
        ci: true,
        repeat: args.repeat,
        shard: None,
        filter: args.filter.clone(),
        run: crate::run::RunOptions {
            concurrency: args.concurrency.max(1),
            ..crate::run::RunOptions::default()
        },
        journal,
        on_run: None,
        measure: true,
    };
    // Every variant checked (plans, keys, recordings) before any runs.
    let diags: Vec<Diagnostic> = variants
        .iter()
        .flat_map(|(_, suites)| runner::check_suites(suites, &opts))
        .collect();
    if !diags.is_empty() {
        return report(diags, format, options);
    }
    let total: u64 = variants
        .iter()
        .flat_map(|(_, suites)| suites)
        .map(|s| runner::selected_count(s, &opts) as u64 * args.repeat as u64)
        .sum();
    let progress = TestProgress::new(total, args.quiet || format != OutputFormat::Text);
    opts.on_run = progress.on_run();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(d) => return report(vec![d], format, options),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let outcome: Result<Vec<Results>, Vec<Diagnostic>> = runtime.block_on(async {
        tokio::spawn(super::cancel_on_signals(cancel.clone()));
        let mut all = Vec::new();
        for (_, suites) in &variants {
            all.push(runner::run_suites(suites, &opts, cancel.clone()).await?);
        }
        Ok(all)
    });
    progress.finish();
    let results = match outcome {
        Ok(r) => r,
        Err(d) => return report(d, format, options),
    };
    let named: Vec<VariantResults<'_>> = variants
        .iter()
        .zip(&results)
        .map(|((v, _), r)| VariantResults {
            name: &v.name,
            results: r,
        })
        .collect();
    let comparison = match compare::compare(&variants[0].1, &named, mode, min_rate) {
        Ok(c) => c,
        Err(e) => {
            let d = Diagnostic::error(
                "io",
                format!("cannot read the case results back from their temporary file: {e}"),
            );
            return report(vec![d], format, options);
        }
    };
    if let Err(d) = emit(&comparison, args.out.as_ref(), args.html.as_ref(), format) {
        return report(vec![d], format, options);
    }
    verdict(&comparison, &results, min_rate, cancel.is_cancelled())
}

fn emit(
    c: &Comparison,
    out: Option<&PathBuf>,
    html: Option<&PathBuf>,
    format: OutputFormat,
) -> Result<(), Diagnostic> {
    let json = || serde_json::to_string_pretty(c).unwrap_or_default();
    if let Some(p) = html {
        write_file(p, |w| w.write_all(crate::html::compare_page(c).as_bytes()))?;
    }
    if let Some(p) = out {
        write_file(p, |w| {
            w.write_all(json().as_bytes())?;
            w.write_all(b"\n")
        })?;
    }
    match format {
        OutputFormat::Json => print_out(&json()),
        OutputFormat::Text => print_out(&compare::render_text(c)),
    }
    Ok(())
}

/// The exit code, with why on stderr when it is not 0.
fn verdict(c: &Comparison, results: &[Results], min: Option<f64>, cancelled: bool) -> u8 {
    if cancelled {
        return exit::INTERRUPTED;
    }
    let mut err = std::io::stderr().lock();
    let errored: usize = results.iter().map(|r| r.totals().errored).sum();
    let below = min.map(|m| compare::below(c, m)).unwrap_or_default();
    for (suite, variant, rate) in &below {
        let _ = writeln!(
            err,
            "error: suite `{suite}` passes {:.0}% under `{variant}`, below --min-pass-rate {:.0}%",
            rate * 100.0,
            min.unwrap_or(0.0) * 100.0
        );
    }
    if errored > 0 {
        let _ = writeln!(
            err,
            "error: {errored} case run(s) errored: the comparison is incomplete"
        );
    }
    if errored > 0 || !below.is_empty() {
        exit::FAILED
    } else {
        exit::OK
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_are_fractions_or_percentages() {
        assert_eq!(parse_rate("0.8"), Some(0.8));
        assert_eq!(parse_rate("80%"), Some(0.8));
        assert_eq!(parse_rate(" 100 % "), Some(1.0));
        assert_eq!(parse_rate("1.5"), None);
        assert_eq!(parse_rate("-1"), None);
        assert_eq!(parse_rate("high"), None);
    }
}
