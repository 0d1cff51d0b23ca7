//! `tollgate router train | eval`: a learned router from comparison results
//! (`tollgate compare … --out FILE` / `--format json`), and its figures on
//! the held-out test split (`crate::router`).
//!
//! Exit codes: 0 done; 2 bad input (an unreadable or malformed comparison
//! or router file, an unknown variant, too few examples to split).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::suites::write_file;
use super::{OutputFormat, exit, print_out, report};
use crate::diagnostic::{Diagnostic, RenderOptions, SourceFile};
use crate::eval::compare::{ExamplesError, OutcomesFile, router_examples, variant_outcomes};
use crate::render::usd;
use crate::router::{self, Evaluation, Router, Scored, Split};

#[derive(Debug, clap::Subcommand)]
pub(super) enum RouterCommand {
    /// Fit a router from comparison results: per prompt, did the weak variant pass where the strong one was needed.
    Train(TrainArgs),
    /// The router's quality/cost curve on the held-out test split: APGR, random routing, calibration error.
    Eval(EvalArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct TrainArgs {
    /// A comparison's JSON (`tollgate compare … --out FILE`).
    comparison: PathBuf,
    /// The cheap variant [default: the first of two].
    #[arg(long, value_name = "VARIANT")]
    weak: Option<String>,
    /// The strong variant [default: the second of two].
    #[arg(long, value_name = "VARIANT")]
    strong: Option<String>,
    /// The share of prompts the default threshold sends to the strong model (0.2 or 20%).
    #[arg(long, value_name = "SHARE", default_value = "0.2")]
    target_strong_share: String,
    /// Hash buckets of the lexical features.
    #[arg(long, default_value_t = router::DEFAULT_BUCKETS)]
    buckets: u32,
    /// Where to write the router file.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub(super) struct EvalArgs {
    /// The router file.
    router: PathBuf,
    /// A comparison's JSON with the router's weak and strong variants.
    comparison: PathBuf,
    /// Another variant of the comparison to set beside the router at its own strong share (a cascade: the share it escalated) (repeatable).
    #[arg(long, value_name = "VARIANT")]
    versus: Vec<String>,
    /// Also print training and scoring times (a benchmark's figures: they vary run to run).
    #[arg(long)]
    timing: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

pub(super) fn cmd_router(cmd: RouterCommand, options: RenderOptions) -> u8 {
    match cmd {
        RouterCommand::Train(a) => train(a, options),
        RouterCommand::Eval(a) => eval(a, options),
    }
}

/// Reads a comparison file: bounded (`files`), JSON errors located.
fn read_comparison(path: &Path) -> Result<OutcomesFile, Diagnostic> {
    let src = SourceFile::read(path)?;
    parse_json(&src, "a comparison's JSON: `tollgate compare … --out FILE`")
}

fn parse_json<T: serde::de::DeserializeOwned>(
    src: &Arc<SourceFile>,
    hint: &str,
) -> Result<T, Diagnostic> {
    serde_json::from_str(&src.text).map_err(|e| {
        let offset = src.offset_of(e.line().max(1), e.column().saturating_sub(1));
        Diagnostic::error(
            "comparison-file",
            format!("{} is not {hint}: {e}", src.path.display()),
        )
        .at(Some(src.span(offset, 0)))
        .with_help(format!("give {hint}"))
    })
}

fn examples(
    path: &Path,
    file: &OutcomesFile,
    weak: &str,
    strong: &str,
) -> Result<Vec<router::Example>, Diagnostic> {
    router_examples(file, weak, strong).map_err(|e| match e {
        ExamplesError::UnknownVariant(v, there) => Diagnostic::error(
            "unknown-variant",
            format!("{}: no variant named {v:?}", path.display()),
        )
        .in_file(path)
        .with_help(format!(
            "the comparison's variants are {}",
            crate::diagnostic::one_of(there.iter().map(String::as_str))
        )),
    })
}

fn parse_share(s: &str) -> Option<f64> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
        None => t.parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&v).then_some(v)
}

fn train(a: TrainArgs, options: RenderOptions) -> u8 {
    let mut problems = Vec::new();
    let share = parse_share(&a.target_strong_share);
    if share.is_none() {
        problems.push(
            Diagnostic::error(
                "bad-flag",
                format!(
                    "--target-strong-share {:?} is not a share",
                    a.target_strong_share
                ),
            )
            .with_help("a number in 0..=1, or a percentage: 0.2, 20%"),
        );
    }
    if a.buckets == 0 || a.buckets > router::MAX_BUCKETS {
        problems.push(
            Diagnostic::error(
                "bad-flag",
                format!("--buckets {} is out of range", a.buckets),
            )
            .with_help(format!("1..={}", router::MAX_BUCKETS)),
        );
    }
    let file = match read_comparison(&a.comparison) {
        Ok(f) => Some(f),
        Err(d) => {
            problems.push(d);
            None
        }
    };
    let (Some(share), Some(file)) = (share, file) else {
        return report(problems, a.format, options);
    };
    if !problems.is_empty() {
        return report(problems, a.format, options);
    }
    let pick = |given: &Option<String>, i: usize, flag: &str| -> Result<String, Diagnostic> {
        match given {
            Some(v) => Ok(v.clone()),
            None if file.variants.len() == 2 => Ok(file.variants[i].clone()),
            None => Err(Diagnostic::error(
                "bad-flag",
                format!(
                    "the comparison has {} variants: say which is {flag}",
                    file.variants.len()
                ),
            )
            .with_help(format!(
                "--weak VARIANT --strong VARIANT, of {}",
                crate::diagnostic::one_of(file.variants.iter().map(String::as_str))
            ))),
        }
    };
    let (weak, strong) = match (pick(&a.weak, 0, "weak"), pick(&a.strong, 1, "strong")) {
        (Ok(w), Ok(s)) => (w, s),
        (w, s) => {
            return report(
                w.err().into_iter().chain(s.err()).collect(),
                a.format,
                options,
            );
        }
    };
    let data = match examples(&a.comparison, &file, &weak, &strong) {
        Ok(d) => d,
        Err(d) => return report(vec![d], a.format, options),
    };
    let r = match router::train(&data, &weak, &strong, a.buckets, share) {
        Ok(r) => r,
        Err(why) => {
            return report(
                vec![
                    Diagnostic::error(
                        "too-few-examples",
                        format!("{}: {why}", a.comparison.display()),
                    )
                    .in_file(&a.comparison)
                    .with_help(
                        "an example is a step of one call that both variants ran and judged: run compare with `--out` on more cases",
                    ),
                ],
                a.format,
                options,
            );
        }
    };
    let json = r.to_json();
    if let Err(d) = write_file(&a.out, |w| w.write_all(json.as_bytes())) {
        return report(vec![d], a.format, options);
    }
    let t = &r.training;
    match a.format {
        OutputFormat::Json => print_out(
            &serde_json::to_string_pretty(&serde_json::json!({
                "router": a.out.display().to_string(),
                "weak": weak,
                "strong": strong,
                "training": t,
                "threshold": r.threshold,
                "target_strong_share": r.target_strong_share,
                "weights": r.weights.len(),
            }))
            .unwrap_or_default(),
        ),
        OutputFormat::Text => {
            print_out(&format!(
                "router {out}: {method}, {w} weights, weak {weak} / strong {strong}\n\
                 examples {n}: {tr} train ({f} where {weak} failed), {c} calibration, {te} test\n\
                 threshold {th:.4}: sends {share:.0}% of the calibration split to {strong}",
                out = a.out.display(),
                method = r.method,
                w = r.weights.len(),
                n = t.examples,
                tr = t.train,
                f = t.weak_failed,
                c = t.calibration,
                te = t.test,
                th = r.threshold,
                share = share * 100.0,
            ));
        }
    }
    exit::OK
}

fn eval(a: EvalArgs, options: RenderOptions) -> u8 {
    let r = Router::load(&a.router);
    let file = read_comparison(&a.comparison);
    let (r, file) = match (r, file) {
        (Ok(r), Ok(f)) => (r, f),
        (r, f) => {
            return report(
                r.err().into_iter().chain(f.err()).collect(),
                a.format,
                options,
            );
        }
    };
    let data = match examples(&a.comparison, &file, &r.weak, &r.strong) {
        Ok(d) => d,
        Err(d) => return report(vec![d], a.format, options),
    };
    let test: Vec<&router::Example> = data
        .iter()
        .filter(|e| router::split(&e.key) == Split::Test)
        .collect();
    let started = Instant::now();
    let items: Vec<Scored> = test
        .iter()
        .map(|e| Scored {
            score: r.score(&e.text),
            weak_ok: e.weak_ok,
            strong_ok: e.strong_ok,
            weak_cost_usd: e.weak_cost_usd,
            strong_cost_usd: e.strong_cost_usd,
        })
        .collect();
    let scoring = started.elapsed();
    let Some(ev) = router::evaluate(&items, &r.calibration_scores) else {
        return report(
            vec![
                Diagnostic::error(
                    "too-few-examples",
                    format!(
                        "{}: no example of {} / {} falls in the test split",
                        a.comparison.display(),
                        r.weak,
                        r.strong
                    ),
                )
                .in_file(&a.comparison)
                .with_help(
                    "a fifth of the examples (by a hash of suite/case/step) test: give more cases",
                ),
            ],
            a.format,
            options,
        );
    };
    let mut versus = Vec::new();
    for name in &a.versus {
        let outcomes = match variant_outcomes(&file, name) {
            Ok(o) => o,
            Err(e) => {
                let ExamplesError::UnknownVariant(v, there) = e;
                return report(
                    vec![
                        Diagnostic::error(
                            "unknown-variant",
                            format!("{}: no variant named {v:?}", a.comparison.display()),
                        )
                        .in_file(&a.comparison)
                        .with_help(format!(
                            "the comparison's variants are {}",
                            crate::diagnostic::one_of(there.iter().map(String::as_str))
                        )),
                    ],
                    a.format,
                    options,
                );
            }
        };
        // The router's test examples this variant judged too.
        let both: Vec<(&Scored, &(bool, f64, bool))> = test
            .iter()
            .zip(&items)
            .filter_map(|(e, s)| outcomes.get(&e.key).map(|o| (s, o)))
            .collect();
        if both.is_empty() {
            continue;
        }
        let n = both.len() as f64;
        let share = both.iter().filter(|(_, o)| o.2).count() as f64 / n;
        let same: Vec<Scored> = both.iter().map(|(s, _)| (*s).clone()).collect();
        let Some((router_at, random_at)) = router::at_share(&same, share) else {
            continue;
        };
        versus.push(Versus {
            variant: name.clone(),
            examples: both.len(),
            quality: both.iter().filter(|(_, o)| o.0).count() as f64 / n,
            cost_usd: both.iter().map(|(_, o)| o.1).sum(),
            strong_share: share,
            router: router_at,
            random: random_at,
        });
    }
    let timing = a.timing.then(|| {
        // Training time: the same fit again, on the same examples.
        let started = Instant::now();
        let _ = router::train(
            &data,
            &r.weak,
            &r.strong,
            r.features.buckets,
            r.target_strong_share,
        );
        let train_ms = started.elapsed().as_secs_f64() * 1000.0;
        let per_prompt_us = scoring.as_secs_f64() * 1e6 / items.len().max(1) as f64;
        (train_ms, per_prompt_us)
    });
    match a.format {
        OutputFormat::Json => {
            let mut v = serde_json::to_value(&ev).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                if !versus.is_empty() {
                    o.insert(
                        "versus".into(),
                        serde_json::to_value(&versus).unwrap_or_default(),
                    );
                }
                if let Some((train_ms, us)) = timing {
                    o.insert("train_ms".into(), train_ms.into());
                    o.insert("score_us_per_prompt".into(), us.into());
                }
            }
            print_out(&serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        OutputFormat::Text => print_out(&eval_text(&r, &ev, &versus, timing)),
    }
    exit::OK
}

/// Another variant beside the router at its strong share.
#[derive(Debug, serde::Serialize)]
struct Versus {
    variant: String,
    /// Test examples it judged.
    examples: usize,
    quality: f64,
    cost_usd: f64,
    /// Share of those examples it answered on a model that is not local.
    strong_share: f64,
    /// The router and random routing at that share, on the same examples.
    router: router::Point,
    random: router::Point,
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn eval_text(r: &Router, e: &Evaluation, versus: &[Versus], timing: Option<(f64, f64)>) -> String {
    let mut s = format!(
        "router: weak {} / strong {}, {} test examples\n\
         always weak:   quality {}  cost {}\n\
         always strong: quality {}  cost {}\n\n\
         strong share  router quality  router cost  random quality  random cost\n",
        r.weak,
        r.strong,
        e.examples,
        pct(e.weak_quality),
        usd(e.weak_cost_usd),
        pct(e.strong_quality),
        usd(e.strong_cost_usd),
    );
    for (p, q) in e.router.iter().zip(&e.random) {
        s.push_str(&format!(
            "{:>12}  {:>14}  {:>11}  {:>14}  {:>11}\n",
            pct(p.strong_share),
            pct(p.quality),
            usd(p.cost_usd),
            pct(q.quality),
            usd(q.cost_usd),
        ));
    }
    let apgr = |v: Option<f64>| v.map_or("n/a (no quality gap)".to_owned(), |v| format!("{v:.3}"));
    s.push_str(&format!(
        "\nAPGR {} (random {})\ncalibration error: mean {} max {} (target vs achieved strong share, thresholds from the calibration split)\n",
        apgr(e.apgr),
        apgr(e.random_apgr),
        pct(e.calibration_error_mean),
        pct(e.calibration_error_max),
    ));
    for v in versus {
        s.push_str(&format!(
            "\n{} on {} test examples: quality {} cost {} at strong share {}\n  router at that share: quality {} cost {}; random: quality {} cost {}\n",
            v.variant,
            v.examples,
            pct(v.quality),
            usd(v.cost_usd),
            pct(v.strong_share),
            pct(v.router.quality),
            usd(v.router.cost_usd),
            pct(v.random.quality),
            usd(v.random.cost_usd),
        ));
    }
    if let Some((train_ms, us)) = timing {
        s.push_str(&format!(
            "training {train_ms:.1} ms; scoring {us:.1} µs per prompt\n"
        ));
    }
    s
}
