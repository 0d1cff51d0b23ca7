//! One self-contained HTML page of a spending report (`report --html`) or
//! of a test run's results (`test --html`, `merge --html`): inline styles,
//! inline SVG charts, no script, no network.
//!
//! Invariants (tested in a real headless Chromium: tests/integration/html.rs):
//! - **Everything shown is escaped.** Pages are minijinja templates whose
//!   names end in `.html`, so every value is HTML-escaped on output: a
//!   model's answer, a case name or a step name that holds markup is shown
//!   as text, never parsed. The page's Content-Security-Policy forbids
//!   scripts and every fetch besides (`default-src 'none'`), so even a gap
//!   in the escaping could not run code or call out.
//! - **The numbers are the JSON's.** The page renders the same structs
//!   `--format json` serialises, with the same money format
//!   ([`crate::render::usd`]); what a reader sees equals what a script reads.
//! - **Bounded.** A suite of 100,000 cases lists its failed, errored and
//!   flaky cases (up to [`MAX_LISTED`] of each kind) and counts the rest; a
//!   diff or answer is cut at [`MAX_TEXT`] characters.

use minijinja::{Environment, Value, context};
use serde::Serialize;

use crate::eval::compare::{Comparison, Row};
use crate::eval::results::{Outcome, Results};
use crate::journal::report::{Line, Report};
use crate::render::usd;

/// Cases listed per kind (failed, errored, flaky) on a results page.
pub const MAX_LISTED: usize = 200;
/// Characters of one diff, answer or message shown.
pub const MAX_TEXT: usize = 4000;

const STYLE: &str = include_str!("html/page.css");

/// The page of `tollgate report`.
pub fn report_page(r: &Report) -> String {
    let chart = day_chart(&r.by_day);
    let levers = levers(&r.totals);
    render(
        "report.html",
        include_str!("html/report.html"),
        context! {
            style => STYLE,
            since => r.since,
            runs => r.runs,
            totals => line(&r.totals),
            levers => levers,
            chart => chart,
            by_day => r.by_day.iter().map(line).collect::<Vec<_>>(),
            by_workflow => r.by_workflow.iter().map(line).collect::<Vec<_>>(),
            by_step => r.by_step.iter().map(line).collect::<Vec<_>>(),
            by_model => r.by_model.iter().map(line).collect::<Vec<_>>(),
            by_tier => r.by_tier.iter().map(line).collect::<Vec<_>>(),
            by_user => r.by_user.iter().flatten().map(line).collect::<Vec<_>>(),
            by_machine => r.by_machine.iter().flatten().map(line).collect::<Vec<_>>(),
            by_ci => r.by_ci.iter().flatten().map(line).collect::<Vec<_>>(),
            by_endpoint => r.by_endpoint.iter().map(line).collect::<Vec<_>>(),
            cascades => r.cascades.iter().map(|c| context! {
                key => c.key,
                first_answers => c.first_answers,
                escalated => c.escalated,
                rate => format!("{:.0}%", c.escalation_rate * 100.0),
                first_cost => usd(c.first_cost_usd),
                escalated_cost => usd(c.escalated_cost_usd),
                all_on_target => c.all_on_target_usd.map(usd),
            }).collect::<Vec<_>>(),
        },
    )
}

/// The page of a test run's results. The cases are read one at a time (a
/// test run's from its spill); the page lists a bounded number of them.
pub fn results_page(r: &Results) -> std::io::Result<String> {
    let t = r.totals();
    let suites: Vec<SuiteView> = r
        .suites
        .iter()
        .map(|s| {
            let mut cost = 0.0;
            s.cases.add_costs(&mut cost);
            let mut v = SuiteView {
                name: s.name.clone(),
                path: s.path.clone(),
                policy: s.policy.clone(),
                cases: s.cases.len(),
                passed: 0,
                cost: usd(cost),
                failed: Vec::new(),
                errored: Vec::new(),
                flaky: Vec::new(),
                counts: [0; 3],
                unlisted: 0,
            };
            for c in s.cases.iter() {
                let c = c?;
                let (list, kind) = match c.outcome {
                    Outcome::Passed if c.flaky => (&mut v.flaky, 2),
                    Outcome::Passed => {
                        v.passed += 1;
                        continue;
                    }
                    Outcome::Failed => (&mut v.failed, 0),
                    Outcome::Errored => (&mut v.errored, 1),
                };
                v.counts[kind] += 1;
                if c.outcome == Outcome::Passed {
                    v.passed += 1;
                }
                if list.len() >= MAX_LISTED {
                    v.unlisted += 1;
                    continue;
                }
                list.push(CaseView {
                    name: c.name.clone(),
                    origin: c.origin.clone(),
                    runs: format!("{}/{}", c.passed_runs, c.runs.len()),
                    cost: usd(c.cost_usd),
                    problems: c
                        .runs
                        .iter()
                        .filter(|run| run.outcome != Outcome::Passed)
                        .take(3)
                        .flat_map(|run| {
                            run.error
                                .iter()
                                .map(|e| ProblemView {
                                    step: String::new(),
                                    assertion: "error".to_owned(),
                                    message: cut(e),
                                    diff: Vec::new(),
                                })
                                .chain(run.failures.iter().map(|f| ProblemView {
                                    step: f.step.clone(),
                                    assertion: f.assertion.clone(),
                                    message: cut(&f.message),
                                    diff: diff_lines(f.diff.as_deref().or(f.actual.as_deref())),
                                }))
                        })
                        .collect(),
                });
            }
            Ok(v)
        })
        .collect::<std::io::Result<_>>()?;
    let policy_tests: Vec<_> = r
        .policy_tests
        .iter()
        .map(|p| {
            context! {
                path => p.path,
                policy => p.policy,
                total => p.tests.len(),
                passed => p.tests.iter().filter(|t| t.passed).count(),
                failed => p.tests.iter().filter(|t| !t.passed).take(MAX_LISTED).map(|t| context! {
                    name => t.name,
                    origin => t.origin,
                    failures => t.failures.iter().map(|f| cut(f)).collect::<Vec<_>>(),
                }).collect::<Vec<_>>(),
            }
        })
        .collect();
    Ok(render(
        "results.html",
        include_str!("html/results.html"),
        context! {
            style => STYLE,
            mode => format!("{:?}", r.mode).to_lowercase(),
            shards => r.shards.iter().map(|s| format!("{}/{}", s.index, s.count)).collect::<Vec<_>>(),
            totals => context! {
                cases => t.cases,
                passed => t.passed,
                failed => t.failed,
                errored => t.errored,
                flaky => t.flaky,
                calls => t.calls,
                input_tokens => t.input_tokens,
                output_tokens => t.output_tokens,
                cost => usd(t.cost_usd),
                pass_rate => if t.cases == 0 { 0.0 } else { t.passed as f64 * 100.0 / t.cases as f64 },
            },
            suites => suites,
            policy_tests => policy_tests,
        },
    ))
}

/// The page of `tollgate compare`: per suite, the variants' table and a
/// cost × pass-rate chart with the Pareto front drawn through it; per task,
/// the same table.
pub fn compare_page(c: &Comparison) -> String {
    let suites: Vec<Value> = c
        .suites
        .iter()
        .map(|s| {
            context! {
                name => s.name,
                path => s.path,
                rows => s.rows.iter().map(compare_row).collect::<Vec<_>>(),
                chart => pareto_chart(&s.rows),
                cheapest => s.cheapest_at_min.as_ref().map(|m| context! {
                    min => format!("{:.0}%", m.min_pass_rate * 100.0),
                    variant => m.variant,
                }),
                tasks => s.tasks.iter().map(|t| context! {
                    task => t.task,
                    steps => t.steps.join(", "),
                    rows => t.rows.iter().map(compare_row).collect::<Vec<_>>(),
                }).collect::<Vec<_>>(),
            }
        })
        .collect();
    render(
        "compare.html",
        include_str!("html/compare.html"),
        context! {
            style => STYLE,
            mode => format!("{:?}", c.mode).to_lowercase(),
            variants => c.variants,
            suites => suites,
        },
    )
}

fn percent(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |p| format!("{:.0}%", p * 100.0))
}

fn compare_row(r: &Row) -> Value {
    context! {
        variant => r.variant,
        policy => r.policy,
        model => r.model,
        passed => format!("{}/{}", r.passed, r.cases),
        rate => percent(r.pass_rate),
        judge => percent(r.judge_score),
        cost => usd(r.cost_usd),
        vs_first => match r.cost_vs_first {
            Some(x) if (x - 1.0).abs() < 1e-9 => "=".to_owned(),
            Some(x) => format!("×{x:.2}"),
            None if r.cost_delta_usd == 0.0 => "=".to_owned(),
            None => format!("+{}", usd(r.cost_delta_usd)),
        },
        tokens => format!("{}/{}", r.input_tokens, r.output_tokens),
        model_time => r.model_ms.map(|l| format!("{} / {}", ms(l.p50), ms(l.p95))),
        local => percent(r.local_share),
        tiers => r.tier_shares.iter().map(|(t, x)| format!("{t} {:.0}%", x * 100.0)).collect::<Vec<_>>().join(", "),
        pareto => r.pareto,
    }
}

fn ms(v: u64) -> String {
    if v >= 1000 {
        format!("{:.1}s", v as f64 / 1000.0)
    } else {
        format!("{v}ms")
    }
}

/// Each variant as a point (cost → x, pass rate → y) and the Pareto front
/// as a line through its points, cheapest first.
fn pareto_chart(rows: &[Row]) -> Value {
    const W: f64 = 900.0;
    const H: f64 = 220.0;
    const PAD: f64 = 40.0;
    let max_cost = rows.iter().map(|r| r.cost_usd).fold(0.0_f64, f64::max);
    let at = |r: &Row| {
        let x = if max_cost > 0.0 {
            r.cost_usd / max_cost
        } else {
            0.0
        };
        let y = r.pass_rate.unwrap_or(0.0).clamp(0.0, 1.0);
        (PAD + x * (W - 2.0 * PAD), H - PAD - y * (H - 2.0 * PAD))
    };
    let points: Vec<Value> = rows
        .iter()
        .map(|r| {
            let (x, y) = at(r);
            context! {
                x => format!("{x:.1}"),
                y => format!("{y:.1}"),
                label => r.variant,
                title => format!("{}: {} at {}", r.variant, percent(r.pass_rate), usd(r.cost_usd)),
                pareto => r.pareto,
            }
        })
        .collect();
    let mut front: Vec<&Row> = rows.iter().filter(|r| r.pareto).collect();
    front.sort_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd));
    let line = front
        .iter()
        .map(|r| {
            let (x, y) = at(r);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    context! {
        width => W,
        height => H,
        pad => PAD,
        points => points,
        front => line,
        max_cost => usd(max_cost),
    }
}

#[derive(Serialize)]
struct SuiteView {
    name: String,
    path: String,
    policy: String,
    cases: usize,
    passed: usize,
    cost: String,
    failed: Vec<CaseView>,
    errored: Vec<CaseView>,
    flaky: Vec<CaseView>,
    /// Failed, errored and flaky cases, listed or not.
    counts: [usize; 3],
    /// Cases beyond [`MAX_LISTED`] of their kind.
    unlisted: usize,
}

#[derive(Serialize)]
struct CaseView {
    name: String,
    origin: String,
    /// Runs passed of runs made: `2/3`.
    runs: String,
    cost: String,
    problems: Vec<ProblemView>,
}

#[derive(Serialize)]
struct ProblemView {
    step: String,
    assertion: String,
    message: String,
    /// The diff (or the answer) line by line, each with its kind for colour.
    diff: Vec<DiffLine>,
}

#[derive(Serialize)]
struct DiffLine {
    kind: &'static str,
    text: String,
}

fn diff_lines(text: Option<&str>) -> Vec<DiffLine> {
    let Some(text) = text else {
        return Vec::new();
    };
    cut(text)
        .lines()
        .map(|l| DiffLine {
            kind: if l.starts_with("+++") || l.starts_with("---") {
                "head"
            } else if l.starts_with('+') {
                "add"
            } else if l.starts_with('-') {
                "del"
            } else if l.starts_with("@@") {
                "hunk"
            } else {
                "same"
            },
            text: l.to_owned(),
        })
        .collect()
}

/// `text` cut at [`MAX_TEXT`] characters, saying so.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        None => text.to_owned(),
        Some((at, _)) => format!(
            "{}\n[… {} more characters]",
            &text[..at],
            text[at..].chars().count()
        ),
    }
}

/// A report line with its money already formatted as the text report does.
fn line(l: &Line) -> Value {
    context! {
        key => l.key,
        calls => l.calls,
        cache_hits => l.cache_hits,
        input_tokens => l.input_tokens,
        output_tokens => l.output_tokens,
        cost => usd(l.cost_usd),
        estimate => l.estimate_usd.map(usd),
        flagship => usd(l.flagship_usd),
        saved => usd(saved(l)),
    }
}

fn saved(l: &Line) -> f64 {
    let s = &l.savings;
    s.routing_usd + s.cache_usd + s.prompt_cache_usd + s.batch_usd + s.context_usd
}

/// The savings by lever, each with its share of the largest (bar widths).
fn levers(t: &Line) -> Vec<Value> {
    let s = &t.savings;
    let all = [
        ("routing", "routing", s.routing_usd),
        ("cache", "the response cache", s.cache_usd),
        ("prompt-cache", "prompt caching", s.prompt_cache_usd),
        ("batch", "batching", s.batch_usd),
        ("context", "context management", s.context_usd),
    ];
    let max = all.iter().map(|l| l.2).fold(0.0_f64, f64::max);
    all.iter()
        .map(|(id, name, x)| {
            context! {
                id => id,
                name => name,
                usd => usd(*x),
                percent => if max > 0.0 { (x / max * 100.0).clamp(0.0, 100.0) } else { 0.0 },
            }
        })
        .collect()
}

/// Spend per day as SVG bars (the chart's geometry is computed here: the
/// page has no script).
fn day_chart(days: &[Line]) -> Value {
    const WIDTH: f64 = 960.0;
    const HEIGHT: f64 = 160.0;
    let max = days.iter().map(|d| d.cost_usd).fold(0.0_f64, f64::max);
    let n = days.len().max(1) as f64;
    let slot = WIDTH / n;
    let bars: Vec<Value> = days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let h = if max > 0.0 {
                (d.cost_usd / max * HEIGHT).max(1.0)
            } else {
                1.0
            };
            context! {
                x => format!("{:.1}", i as f64 * slot + slot * 0.1),
                y => format!("{:.1}", HEIGHT - h),
                width => format!("{:.1}", (slot * 0.8).max(1.0)),
                center => format!("{:.1}", i as f64 * slot + slot * 0.5),
                height => format!("{h:.1}"),
                day => d.key,
                cost => usd(d.cost_usd),
                calls => d.calls,
            }
        })
        .collect();
    context! {
        width => WIDTH,
        height => HEIGHT,
        max => usd(max),
        bars => bars,
        first => days.first().map(|d| d.key.clone()),
        last => days.last().map(|d| d.key.clone()),
    }
}

/// Renders one of this module's templates. They are part of the binary
/// and tested, so a failure here is a bug: it is shown in the page rather
/// than panicking a command that has already done its work.
fn render(name: &str, source: &str, ctx: Value) -> String {
    let mut env = Environment::new();
    // Names ending in `.html` are auto-escaped (minijinja's default); every
    // page extends `page.html` (the head, the CSP, the style).
    if let Err(e) = env
        .add_template("page.html", include_str!("html/page.html"))
        .and_then(|()| env.add_template(name, source))
    {
        return format!("<!doctype html><p>tollgate: page template error: {e}</p>");
    }
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| {
            let text = e.to_string().replace('&', "&amp;").replace('<', "&lt;");
            format!("<!doctype html><p>tollgate: page template error: {text}</p>")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_and_says_how_much() {
        let long = "é".repeat(MAX_TEXT + 10);
        let c = cut(&long);
        assert!(
            c.ends_with("[… 10 more characters]"),
            "{}",
            &c[c.len() - 40..]
        );
        assert_eq!(cut("short"), "short");
    }

    #[test]
    fn diff_lines_have_kinds() {
        let d = diff_lines(Some(
            "--- expected\n+++ actual\n@@ -1 +1 @@\n-bug\n+feature\n same",
        ));
        let kinds: Vec<_> = d.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["head", "head", "hunk", "del", "add", "same"]);
    }

    #[test]
    fn a_big_suite_counts_every_failure_and_lists_a_bounded_number() {
        let case = |i: usize, outcome: &str| {
            serde_json::json!({
                "name": format!("case-{i}"), "index": i, "origin": "s.yaml:1:1",
                "outcome": outcome, "passed_runs": 0, "pass_threshold": 1.0, "flaky": false,
                "runs": [{ "outcome": outcome, "calls": 1, "usage": {}, "cost_usd": 0.0,
                           "judge_cost_usd": 0.0, "elapsed_ms": 1,
                           "failures": [{ "step": "a", "assertion": "equals", "message": "no" }] }],
                "calls": 1, "usage": {}, "cost_usd": 0.0, "elapsed_ms": 1,
            })
        };
        let cases: Vec<_> = (0..MAX_LISTED + 50)
            .map(|i| case(i, "failed"))
            .chain([case(9999, "passed")])
            .collect();
        let results: Results = serde_json::from_value(serde_json::json!({
            "version": 1, "mode": "replay", "shards": [],
            "suites": [{ "name": "big", "path": "s.yaml", "workflow": "w.yaml",
                         "policy": "p.yaml", "cases": cases }],
        }))
        .unwrap();
        let page = results_page(&results).unwrap();
        let row = format!(
            "<td>{}</td><td>1</td><td>{}</td>",
            MAX_LISTED + 51,
            MAX_LISTED + 50
        );
        assert!(page.contains(&row), "the suite row counts every case");
        assert_eq!(
            page.matches("<details class=\"case failed\"").count(),
            MAX_LISTED
        );
        assert!(page.contains("… and 50 more not listed here"));
    }

    #[test]
    fn markup_in_values_is_escaped() {
        let mut r = Report {
            since: None,
            runs: 1,
            totals: Line::default(),
            by_day: vec![],
            by_workflow: vec![],
            by_step: vec![],
            by_model: vec![],
            by_tier: vec![],
            by_user: Some(vec![Line {
                key: "<b>ana</b>".to_owned(),
                ..Line::default()
            }]),
            by_machine: None,
            by_ci: None,
            cascades: vec![],
            by_endpoint: vec![Line {
                key: "gpus http://10.0.0.1/<i>v1</i>".to_owned(),
                calls: 3,
                ..Line::default()
            }],
        };
        r.by_step.push(Line {
            key: "<script>alert(1)</script>".to_owned(),
            ..Line::default()
        });
        let page = report_page(&r);
        assert!(!page.contains("<script>alert"), "escaped");
        assert!(
            page.contains("&lt;b&gt;ana&lt;&#x2f;b&gt;"),
            "a user is text"
        );
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "shown as text"
        );
        // A pool's endpoints get their table, their URLs text.
        assert!(page.contains("<h2>By endpoint</h2>"), "{page}");
        assert!(
            page.contains("&lt;i&gt;v1&lt;&#x2f;i&gt;"),
            "an endpoint is text"
        );
    }
}
