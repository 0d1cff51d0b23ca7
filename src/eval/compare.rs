//! `tollgate compare`: the same suites run under several variants (a
//! `--policy`, a `--model` pin, or both), reduced to what a team decides
//! with: per suite and per task, the pass rate (and the judge's score where
//! a judge grades), cost, tokens, model time, where the calls went (tier,
//! locality), the cost relative to the first variant, and the Pareto front —
//! the variants no other beats on both cost and pass rate.
//!
//! This module only aggregates and renders: the runs are the runner's
//! (`TestOptions::measure` keeps each run's step figures and model time),
//! one [`Results`] per variant, every variant over the same suites.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::results::{CaseResult, Mode, Outcome, Results, RunResult, StepFigures, SuiteResult};
use super::suite::Suite;

pub const FORMAT_VERSION: u32 = 1;

/// The comparison, as `--format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub version: u32,
    pub mode: Mode,
    /// Variant names in the order given; every table's rows follow it.
    pub variants: Vec<String>,
    pub suites: Vec<SuiteComparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteComparison {
    pub name: String,
    pub path: String,
    pub workflow: String,
    pub rows: Vec<Row>,
    /// With `--min-pass-rate`: the cheapest variant that reaches it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cheapest_at_min: Option<Cheapest>,
    /// One table per task of the workflow, in the order its steps name them.
    pub tasks: Vec<TaskComparison>,
    /// Case by case, each variant's outcome step by step (its first run):
    /// what `tollgate router train` learns from.
    pub cases: Vec<CaseOutcomes>,
}

/// One case under every variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseOutcomes {
    pub case: String,
    pub variants: Vec<VariantCase>,
}

/// One case's first run under one variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantCase {
    pub variant: String,
    pub outcome: Outcome,
    pub cost_usd: f64,
    pub steps: Vec<StepOutcome>,
}

/// One step of a case's run: did its expectations hold (`None`: the run
/// errored, nothing could be judged), what it cost, and the text a router
/// reads of it (a step of one call).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepOutcome {
    pub step: String,
    pub task: String,
    pub passed: Option<bool>,
    pub cost_usd: f64,
    /// Its calls answered by a model that is not local (a cascade's
    /// escalations): what counts as "sent to the strong model".
    #[serde(default)]
    pub cloud_calls: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// The part of a comparison's JSON that `router train` reads.
#[derive(Debug, Clone, Deserialize)]
pub struct OutcomesFile {
    pub version: u32,
    pub variants: Vec<String>,
    pub suites: Vec<SuiteOutcomes>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SuiteOutcomes {
    pub name: String,
    #[serde(default)]
    pub cases: Vec<CaseOutcomes>,
}

/// Why a comparison gives no examples for `router train`.
#[derive(Debug, Clone, PartialEq)]
pub enum ExamplesError {
    /// A variant name not in the comparison: the name and the ones there are.
    UnknownVariant(String, Vec<String>),
}

/// The examples a router learns from: every step of every case that both
/// variants ran and judged (an errored run says nothing about the model),
/// with the weak variant's prompt — the one a router would see, as the
/// weak variant's upstream answers fed it. Sorted by key (suite/case/step).
pub fn router_examples(
    file: &OutcomesFile,
    weak: &str,
    strong: &str,
) -> Result<Vec<crate::router::Example>, ExamplesError> {
    for v in [weak, strong] {
        if !file.variants.iter().any(|x| x == v) {
            return Err(ExamplesError::UnknownVariant(
                v.to_owned(),
                file.variants.clone(),
            ));
        }
    }
    let mut out = Vec::new();
    for suite in &file.suites {
        for case in &suite.cases {
            let of = |name: &str| case.variants.iter().find(|v| v.variant == name);
            let (Some(w), Some(s)) = (of(weak), of(strong)) else {
                continue;
            };
            for ws in &w.steps {
                let Some(ss) = s.steps.iter().find(|x| x.step == ws.step) else {
                    continue;
                };
                let (Some(text), Some(weak_ok), Some(strong_ok)) =
                    (&ws.prompt, ws.passed, ss.passed)
                else {
                    continue;
                };
                out.push(crate::router::Example {
                    key: format!("{}/{}/{}", suite.name, case.case, ws.step),
                    text: text.clone(),
                    weak_ok,
                    strong_ok,
                    weak_cost_usd: ws.cost_usd,
                    strong_cost_usd: ss.cost_usd,
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    Ok(out)
}

/// Another variant on the same examples (a cascade, a rule-based policy):
/// by example key, did it pass, what did it cost, and did it send the
/// prompt to a model that is not local.
pub fn variant_outcomes(
    file: &OutcomesFile,
    variant: &str,
) -> Result<BTreeMap<String, (bool, f64, bool)>, ExamplesError> {
    if !file.variants.iter().any(|x| x == variant) {
        return Err(ExamplesError::UnknownVariant(
            variant.to_owned(),
            file.variants.clone(),
        ));
    }
    let mut out = BTreeMap::new();
    for suite in &file.suites {
        for case in &suite.cases {
            let Some(v) = case.variants.iter().find(|v| v.variant == variant) else {
                continue;
            };
            for s in &v.steps {
                if let Some(ok) = s.passed {
                    out.insert(
                        format!("{}/{}/{}", suite.name, case.case, s.step),
                        (ok, s.cost_usd, s.cloud_calls > 0),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Each case's outcomes under every variant (first run of each).
fn case_outcomes(results: &[(&str, Option<Loaded<'_>>)]) -> Vec<CaseOutcomes> {
    // Indexed by name: a suite may have 100,000 cases, and a search per
    // case and variant would be quadratic.
    let mut names: indexmap::IndexSet<&str> = indexmap::IndexSet::new();
    let by_name: Vec<std::collections::HashMap<&str, &super::results::CaseResult>> = results
        .iter()
        .map(|(_, r)| {
            r.iter()
                .flat_map(|r| &r.cases)
                .map(|c| {
                    names.insert(&c.name);
                    (c.name.as_str(), c)
                })
                .collect()
        })
        .collect();
    names
        .into_iter()
        .map(|name| CaseOutcomes {
            case: name.to_owned(),
            variants: results
                .iter()
                .zip(&by_name)
                .filter_map(|((variant, _), cases)| {
                    let c = *cases.get(name)?;
                    let run = c.runs.first()?;
                    Some(VariantCase {
                        variant: (*variant).to_owned(),
                        outcome: run.outcome,
                        cost_usd: run.cost_usd,
                        steps: run
                            .steps
                            .iter()
                            .map(|f| StepOutcome {
                                step: f.step.clone(),
                                task: f.task.clone(),
                                passed: passed_on(run, &BTreeSet::from([f.step.clone()])),
                                cost_usd: f.cost_usd,
                                cloud_calls: f
                                    .tiers
                                    .values()
                                    .sum::<u64>()
                                    .saturating_sub(f.local_calls),
                                prompt: f.prompt.clone(),
                            })
                            .collect(),
                    })
                })
                .collect(),
        })
        .filter(|c| !c.variants.is_empty())
        .collect()
}

/// The cheapest variant at or above a pass rate (`None`: none reaches it).
#[derive(Debug, Clone, Serialize)]
pub struct Cheapest {
    pub min_pass_rate: f64,
    pub variant: Option<String>,
}

/// The cheapest row whose pass rate is at least `min` (ties: the first).
fn cheapest(rows: &[Row], min: f64) -> Cheapest {
    let variant = rows
        .iter()
        .filter(|r| r.pass_rate.is_some_and(|p| p + 1e-9 >= min))
        .min_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd))
        .map(|r| r.variant.clone());
    Cheapest {
        min_pass_rate: min,
        variant,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskComparison {
    pub task: String,
    /// The workflow's steps of this task.
    pub steps: Vec<String>,
    pub rows: Vec<Row>,
}

/// One variant in one table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub variant: String,
    /// The policy it ran under (per suite: without `--policy`, the suite's own).
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Suite tables: cases. Task tables: runs of the cases that check a step
    /// of the task (each `--repeat` run counts).
    pub cases: usize,
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    /// `passed / cases`; `None` when nothing was checked.
    pub pass_rate: Option<f64>,
    /// `judge:` verdicts and how many said pass.
    pub judged: u64,
    pub judge_passed: u64,
    /// `judge_passed / judged`; `None` where no judge graded.
    pub judge_score: Option<f64>,
    /// What the workflow's calls cost (in replay: when recorded). The
    /// judge's calls are apart: they grade, they are not the policy under
    /// test.
    pub cost_usd: f64,
    pub judge_cost_usd: f64,
    /// `cost_usd` over the first variant's; `None` when the first was free.
    pub cost_vs_first: Option<f64>,
    /// `cost_usd` minus the first variant's.
    pub cost_delta_usd: f64,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Model time per case run (the sum of its calls' latencies, recorded
    /// ones in replay): suite tables only — a call's time is not kept per
    /// step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_ms: Option<Latency>,
    /// Share of the answered calls on a local model.
    pub local_share: Option<f64>,
    /// Share of the answered calls by tier.
    pub tier_shares: BTreeMap<String, f64>,
    /// On the Pareto front: no other variant is at most as costly with a
    /// pass rate at least as high, and better on one of the two.
    pub pareto: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p95: u64,
    pub mean: u64,
}

/// One variant's results over the suites (the same suites, in the same
/// order, for every variant).
pub struct VariantResults<'a> {
    pub name: &'a str,
    pub results: &'a Results,
}

/// A variant's results of one suite with its cases read into memory: a
/// comparison looks each case up under every variant (one suite at a time).
struct Loaded<'a> {
    suite: &'a SuiteResult,
    cases: Vec<CaseResult>,
}

/// Builds the comparison. `suites` gives each suite's workflow and cases
/// (any variant's load: a variant changes the policy and pins, not the
/// steps, their tasks or the cases). Fails only when a run's case records
/// cannot be read back from their spill.
pub fn compare(
    suites: &[Suite],
    variants: &[VariantResults<'_>],
    mode: Mode,
    min_pass_rate: Option<f64>,
) -> std::io::Result<Comparison> {
    let out = suites
        .iter()
        .map(|suite| {
            let results: Vec<(&str, Option<Loaded<'_>>)> = variants
                .iter()
                .map(|v| {
                    let r = v.results.suites.iter().find(|s| s.name == suite.name);
                    let loaded = r
                        .map(|r| {
                            let cases = r
                                .cases
                                .iter()
                                .map(|c| c.map(std::borrow::Cow::into_owned))
                                .collect::<std::io::Result<_>>()?;
                            Ok::<_, std::io::Error>(Loaded { suite: r, cases })
                        })
                        .transpose()?;
                    Ok((v.name, loaded))
                })
                .collect::<std::io::Result<_>>()?;
            let mut rows: Vec<Row> = results
                .iter()
                .map(|(name, r)| suite_row(name, r.as_ref()))
                .collect();
            finish(&mut rows);
            let tasks = tasks_of(suite);
            let checks = checking_cases(suite, &tasks);
            let tasks = tasks
                .into_iter()
                .zip(checks)
                .map(|((task, steps), checks)| {
                    let mut rows: Vec<Row> = results
                        .iter()
                        .map(|(name, r)| task_row(name, r.as_ref(), &checks, &steps))
                        .collect();
                    finish(&mut rows);
                    TaskComparison {
                        task,
                        steps: steps.into_iter().collect(),
                        rows,
                    }
                })
                .collect();
            Ok(SuiteComparison {
                name: suite.name.clone(),
                path: suite.path.display().to_string(),
                workflow: suite.workflow_path.display().to_string(),
                cheapest_at_min: min_pass_rate.map(|m| cheapest(&rows, m)),
                rows,
                tasks,
                cases: case_outcomes(&results),
            })
        })
        .collect::<std::io::Result<_>>()?;
    Ok(Comparison {
        version: FORMAT_VERSION,
        mode,
        variants: variants.iter().map(|v| v.name.to_owned()).collect(),
        suites: out,
    })
}

/// The workflow's tasks, each with its steps, in step order.
fn tasks_of(suite: &Suite) -> Vec<(String, BTreeSet<String>)> {
    let mut tasks: Vec<(String, BTreeSet<String>)> = Vec::new();
    for (id, step) in &suite.analysis.workflow.value.steps {
        match tasks.iter_mut().find(|(t, _)| *t == step.task) {
            Some((_, steps)) => {
                steps.insert(id.clone());
            }
            None => tasks.push((step.task.clone(), BTreeSet::from([id.clone()]))),
        }
    }
    tasks
}

fn empty_row(variant: &str, r: Option<&SuiteResult>) -> Row {
    Row {
        variant: variant.to_owned(),
        policy: r.map(|r| r.policy.clone()).unwrap_or_default(),
        model: r.and_then(|r| r.variant.as_ref()?.model.clone()),
        cases: 0,
        passed: 0,
        failed: 0,
        errored: 0,
        pass_rate: None,
        judged: 0,
        judge_passed: 0,
        judge_score: None,
        cost_usd: 0.0,
        judge_cost_usd: 0.0,
        cost_vs_first: None,
        cost_delta_usd: 0.0,
        calls: 0,
        input_tokens: 0,
        output_tokens: 0,
        model_ms: None,
        local_share: None,
        tier_shares: BTreeMap::new(),
        pareto: false,
    }
}

/// Calls, tokens, cost, tiers and judge verdicts of some steps of a run.
#[derive(Default)]
struct Usage {
    calls: u64,
    answered: u64,
    local: u64,
    tiers: BTreeMap<String, u64>,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    judged: u64,
    judge_passed: u64,
}

impl Usage {
    fn add(&mut self, f: &StepFigures) {
        self.calls += f.calls;
        self.local += f.local_calls;
        for (t, n) in &f.tiers {
            self.answered += n;
            *self.tiers.entry(t.clone()).or_default() += n;
        }
        self.input_tokens += f.input_tokens;
        self.output_tokens += f.output_tokens;
        self.cost_usd += f.cost_usd;
        self.judged += u64::from(f.judged);
        self.judge_passed += u64::from(f.judge_passed);
    }

    fn fill(self, row: &mut Row) {
        row.calls = self.calls;
        row.input_tokens = self.input_tokens;
        row.output_tokens = self.output_tokens;
        row.cost_usd = self.cost_usd;
        row.judged = self.judged;
        row.judge_passed = self.judge_passed;
        row.judge_score = ratio(self.judge_passed, self.judged);
        row.local_share = ratio(self.local, self.answered);
        row.tier_shares = self
            .tiers
            .into_iter()
            .map(|(t, n)| (t, n as f64 / self.answered.max(1) as f64))
            .collect();
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn suite_row(variant: &str, r: Option<&Loaded<'_>>) -> Row {
    let mut row = empty_row(variant, r.map(|r| r.suite));
    let Some(r) = r else {
        return row;
    };
    let mut usage = Usage::default();
    let mut times = Vec::new();
    for c in &r.cases {
        row.cases += 1;
        match c.outcome {
            Outcome::Passed => row.passed += 1,
            Outcome::Failed => row.failed += 1,
            Outcome::Errored => row.errored += 1,
        }
        for run in &c.runs {
            run.steps.iter().for_each(|f| usage.add(f));
            row.judge_cost_usd += run.judge_cost_usd;
            times.extend(run.model_ms);
        }
    }
    usage.fill(&mut row);
    row.pass_rate = ratio(row.passed as u64, row.cases as u64);
    row.model_ms = latency(times);
    row
}

/// Nearest-rank percentiles and the mean of the runs' model times.
fn latency(mut times: Vec<u64>) -> Option<Latency> {
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    let rank = |p: f64| times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Some(Latency {
        p50: rank(0.5),
        p95: rank(0.95),
        mean: times.iter().sum::<u64>() / times.len() as u64,
    })
}

/// Did this run pass on these steps? Not when it errored (nothing could be
/// judged), nor when a failure names one of them.
fn passed_on(run: &RunResult, steps: &BTreeSet<String>) -> Option<bool> {
    match run.outcome {
        Outcome::Errored => None,
        _ => Some(!run.failures.iter().any(|f| steps.contains(&f.step))),
    }
}

/// For each task, which cases check one of its steps, by the case's
/// position in its suite. A suite keeps no cases: they are compiled once
/// more, in one pass for every task.
fn checking_cases(suite: &Suite, tasks: &[(String, BTreeSet<String>)]) -> Vec<Vec<bool>> {
    let mut checks = vec![vec![false; suite.case_count]; tasks.len()];
    let _ = suite.for_each_case(|c| {
        for ((_, steps), checks) in tasks.iter().zip(&mut checks) {
            if let Some(slot) = checks.get_mut(c.index) {
                *slot = c.expect.keys().any(|k| steps.contains(k));
            }
        }
    });
    checks
}

fn task_row(
    variant: &str,
    r: Option<&Loaded<'_>>,
    checks: &[bool],
    steps: &BTreeSet<String>,
) -> Row {
    let mut row = empty_row(variant, r.map(|r| r.suite));
    let Some(r) = r else {
        return row;
    };
    let mut usage = Usage::default();
    let mut times = Vec::new();
    for c in &r.cases {
        // Only the cases that check one of the task's steps say anything
        // about its pass rate; every run's calls count in its cost.
        // A result keeps its case's position in the suite: found in O(1).
        let checks = checks.get(c.index).copied().unwrap_or(false);
        for run in &c.runs {
            let mut model_ms = None;
            for f in run.steps.iter().filter(|f| steps.contains(&f.step)) {
                usage.add(f);
                // A run that called a model for the task has a model time
                // for it; one that called nothing (a skipped step) has none.
                if f.calls > 0 {
                    model_ms = Some(model_ms.unwrap_or(0u64).saturating_add(f.model_ms));
                }
            }
            times.extend(model_ms);
            if !checks {
                continue;
            }
            row.cases += 1;
            match passed_on(run, steps) {
                Some(true) => row.passed += 1,
                Some(false) => row.failed += 1,
                None => row.errored += 1,
            }
        }
    }
    usage.fill(&mut row);
    row.pass_rate = ratio(row.passed as u64, row.cases as u64);
    row.model_ms = latency(times);
    row
}

/// Cost relative to the first row, and the Pareto front.
fn finish(rows: &mut [Row]) {
    let first = rows.first().map_or(0.0, |r| r.cost_usd);
    for r in rows.iter_mut() {
        r.cost_vs_first = (first > 0.0).then(|| r.cost_usd / first);
        r.cost_delta_usd = r.cost_usd - first;
    }
    let points: Vec<Option<(f64, f64)>> = rows
        .iter()
        .map(|r| r.pass_rate.map(|p| (r.cost_usd, p)))
        .collect();
    for (i, r) in rows.iter_mut().enumerate() {
        let Some((cost, pass)) = points[i] else {
            continue;
        };
        r.pareto = !points.iter().enumerate().any(|(j, other)| {
            other.is_some_and(|(c, p)| j != i && c <= cost && p >= pass && (c < cost || p > pass))
        });
    }
}

/// Any variant below `min` pass rate in a suite table: (suite, variant, rate).
pub fn below(c: &Comparison, min: f64) -> Vec<(String, String, f64)> {
    c.suites
        .iter()
        .flat_map(|s| {
            s.rows.iter().filter_map(move |r| {
                let rate = r.pass_rate?;
                (rate + 1e-9 < min).then(|| (s.name.clone(), r.variant.clone(), rate))
            })
        })
        .collect()
}

fn percent(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_owned(), |x| format!("{:.0}%", x * 100.0))
}

fn ms(x: u64) -> String {
    if x >= 10_000 {
        format!("{:.0}s", x as f64 / 1000.0)
    } else if x >= 1000 {
        format!("{:.1}s", x as f64 / 1000.0)
    } else {
        format!("{x}ms")
    }
}

fn tiers(r: &Row) -> String {
    if r.tier_shares.is_empty() {
        return "–".to_owned();
    }
    crate::policy::Tier::ALL
        .iter()
        .filter_map(|t| {
            r.tier_shares
                .get(t.name())
                .map(|s| format!("{} {:.0}%", t.name(), s * 100.0))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cells(r: &Row, with_time: bool, any_judge: bool) -> Vec<String> {
    let mut v = vec![
        format!("{}{}", if r.pareto { "* " } else { "  " }, r.variant),
        format!("{}/{}", r.passed, r.cases),
        percent(r.pass_rate),
    ];
    if any_judge {
        v.push(percent(r.judge_score));
    }
    v.push(crate::render::usd(r.cost_usd));
    // A ratio to a free baseline means nothing: the difference says it.
    v.push(match r.cost_vs_first {
        Some(x) => format!("×{x:.2}"),
        None if r.cost_delta_usd > 0.0 => format!("+{}", crate::render::usd(r.cost_delta_usd)),
        None => "=".to_owned(),
    });
    v.push(format!("{}/{}", r.input_tokens, r.output_tokens));
    if with_time {
        v.push(r.model_ms.map_or_else(
            || "–".to_owned(),
            |l| format!("{} / {}", ms(l.p50), ms(l.p95)),
        ));
    }
    v.push(percent(r.local_share));
    v.push(tiers(r));
    v
}

fn table(out: &mut String, rows: &[Row], with_time: bool, indent: &str) {
    let any_judge = rows.iter().any(|r| r.judged > 0);
    let mut header = vec!["  variant", "passed", "rate"];
    if any_judge {
        header.push("judge");
    }
    header.extend(["cost", "vs first", "tokens in/out"]);
    if with_time {
        header.push("model time p50 / p95");
    }
    header.extend(["local", "tiers"]);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cells(r, with_time, any_judge))
        .collect();
    for line in crate::render::table(&header, &body, 1).lines() {
        let _ = writeln!(out, "{indent}{line}");
    }
}

/// The Pareto front, cheapest first: "which variant is cheapest at a
/// given pass rate".
fn front(rows: &[Row]) -> String {
    let mut on: Vec<&Row> = rows.iter().filter(|r| r.pareto).collect();
    on.sort_by(|a, b| {
        a.cost_usd.total_cmp(&b.cost_usd).then(
            a.pass_rate
                .unwrap_or(0.0)
                .total_cmp(&b.pass_rate.unwrap_or(0.0)),
        )
    });
    on.iter()
        .map(|r| {
            format!(
                "{} at {} for {}",
                r.variant,
                percent(r.pass_rate),
                crate::render::usd(r.cost_usd)
            )
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The human comparison: per suite, its table, the Pareto front, then a
/// table per task.
pub fn render_text(c: &Comparison) -> String {
    let mut out = String::new();
    for s in &c.suites {
        let cases = s.rows.first().map_or(0, |r| r.cases);
        let _ = writeln!(
            out,
            "suite {} ({}, {cases} case{})",
            s.name,
            s.workflow,
            if cases == 1 { "" } else { "s" }
        );
        for r in &s.rows {
            let _ = writeln!(
                out,
                "  {} = {}{}",
                r.variant,
                r.policy,
                r.model
                    .as_ref()
                    .map(|m| format!(", every step pinned to {m}"))
                    .unwrap_or_default()
            );
        }
        table(&mut out, &s.rows, true, "");
        let _ = writeln!(out, "  cheapest for its pass rate: {}", front(&s.rows));
        if let Some(c) = &s.cheapest_at_min {
            let at = percent(Some(c.min_pass_rate));
            let what = c
                .variant
                .as_ref()
                .and_then(|v| s.rows.iter().find(|r| &r.variant == v));
            let _ = match what {
                Some(r) => writeln!(
                    out,
                    "  cheapest passing at least {at}: {} ({})",
                    r.variant,
                    crate::render::usd(r.cost_usd)
                ),
                None => writeln!(out, "  no variant passes at least {at}"),
            };
        }
        for t in &s.tasks {
            let _ = writeln!(
                out,
                "\n  task {} (step{} {})",
                t.task,
                if t.steps.len() == 1 { "" } else { "s" },
                t.steps.join(", ")
            );
            table(&mut out, &t.rows, true, "  ");
        }
        out.push('\n');
    }
    let errored: usize = c
        .suites
        .iter()
        .flat_map(|s| &s.rows)
        .map(|r| r.errored)
        .sum();
    let _ = writeln!(
        out,
        "* on the Pareto front: no other variant costs as little with a pass rate as high.{}",
        match c.mode {
            Mode::Replay => " Replayed: costs and model times as recorded; nothing spent.",
            _ => "",
        }
    );
    if errored > 0 {
        let _ = writeln!(
            out,
            "{errored} case run(s) errored and could not be judged: `tollgate test --policy P` shows why"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, cost: f64, pass: Option<f64>) -> Row {
        Row {
            cost_usd: cost,
            pass_rate: pass,
            ..empty_row(name, None)
        }
    }

    #[test]
    fn the_front_keeps_the_variants_nothing_beats_on_cost_and_pass_rate() {
        let mut rows = vec![
            row("a", 1.0, Some(0.9)),
            row("b", 0.0, Some(0.5)),
            row("c", 2.0, Some(0.9)), // as good as a, dearer
            row("d", 0.5, Some(0.5)), // as good as b, dearer
            row("e", 3.0, Some(1.0)),
            row("f", 0.0, None),      // nothing checked: never on the front
            row("g", 1.0, Some(0.9)), // a's twin: both stay
        ];
        finish(&mut rows);
        let on: Vec<&str> = rows
            .iter()
            .filter(|r| r.pareto)
            .map(|r| r.variant.as_str())
            .collect();
        assert_eq!(on, ["a", "b", "e", "g"]);
        assert_eq!(rows[2].cost_vs_first, Some(2.0));
        assert_eq!(
            front(&rows),
            "b at 50% for $0 → a at 90% for $1.00 → g at 90% for $1.00 → e at 100% for $3.00"
        );
    }

    #[test]
    fn a_free_first_variant_has_no_ratio_and_percentiles_are_nearest_rank() {
        let mut rows = vec![row("free", 0.0, Some(1.0)), row("paid", 1.0, Some(1.0))];
        finish(&mut rows);
        assert_eq!(rows[1].cost_vs_first, None);
        assert!(rows[0].pareto && !rows[1].pareto);
        let l = latency((1..=20).collect()).unwrap();
        assert_eq!((l.p50, l.p95, l.mean), (10, 19, 10));
        assert_eq!(latency(vec![7]).map(|l| (l.p50, l.p95)), Some((7, 7)));
        assert!(latency(Vec::new()).is_none());
    }

    #[test]
    fn below_names_the_suites_and_variants_under_the_bar() {
        let c = Comparison {
            version: FORMAT_VERSION,
            mode: Mode::Replay,
            variants: vec!["a".into(), "b".into()],
            suites: vec![SuiteComparison {
                name: "s".into(),
                path: "s.yaml".into(),
                workflow: "w.yaml".into(),
                rows: vec![row("a", 0.0, Some(0.5)), row("b", 1.0, Some(0.8))],
                cheapest_at_min: None,
                tasks: Vec::new(),
                cases: Vec::new(),
            }],
        };
        assert_eq!(below(&c, 0.8), vec![("s".into(), "a".into(), 0.5)]);
        assert!(below(&c, 0.5).is_empty());
        let rows = &c.suites[0].rows;
        assert_eq!(cheapest(rows, 0.8).variant.as_deref(), Some("b"));
        assert_eq!(cheapest(rows, 0.5).variant.as_deref(), Some("a"));
        assert_eq!(cheapest(rows, 0.9).variant, None);
    }
}
