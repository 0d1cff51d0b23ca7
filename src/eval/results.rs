//! What a test run found, in one serialisable shape: written with
//! `--results FILE` (or `--format json`), read back by `tollgate merge`, and
//! rendered as the human summary and as JUnit XML.
//!
//! Outcomes: `passed`; `failed` — an assertion did not hold (or the model's
//! answer broke the output schema); `errored` — the case could not be judged
//! (a provider error, a response that was never recorded, a run cut short).
//! An infrastructure problem is never reported as a failed assertion.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::assertion::Failure;
pub use super::spill::{Cases, CasesWriter, Tally};
use crate::provider::Usage;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Live,
    Record,
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    Errored,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub version: u32,
    pub mode: Mode,
    /// The shards these results cover (`[]` for an unsharded run).
    pub shards: Vec<Shard>,
    pub suites: Vec<SuiteResult>,
    /// Policy test files (routes checked without calling a model), in the
    /// order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_tests: Vec<PolicyTestsResult>,
}

/// One policy test file's outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyTestsResult {
    pub path: String,
    pub policy: String,
    pub tests: Vec<super::policy_tests::Outcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteResult {
    pub name: String,
    pub path: String,
    pub workflow: String,
    /// The policy it ran under (a `--policy` given instead of the suite's).
    pub policy: String,
    /// Set when `--policy` or `--model` changed the suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<super::suite::VariantInfo>,
    /// Cases in suite order (a test run's spilled to a temporary file,
    /// see [`super::spill`]).
    pub cases: Cases,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub name: String,
    pub index: usize,
    pub origin: String,
    pub outcome: Outcome,
    /// Runs that passed, of `runs.len()`.
    pub passed_runs: usize,
    pub pass_threshold: f64,
    /// Some runs passed and some did not.
    pub flaky: bool,
    pub runs: Vec<RunResult>,
    pub calls: u64,
    pub usage: Usage,
    /// Model calls' cost (in replay: what the recorded calls cost when made).
    pub cost_usd: f64,
    pub elapsed_ms: u64,
    /// Snapshot files written as pending by this case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_snapshots: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    /// Why the run could not be judged (errored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub calls: u64,
    pub usage: Usage,
    pub cost_usd: f64,
    /// Of which the judge's calls.
    pub judge_cost_usd: f64,
    pub elapsed_ms: u64,
    /// Model time: the sum of the workflow's calls' latencies as the
    /// providers answered them (in replay, as recorded) — the same figure
    /// live and replayed, unlike the wall time. Kept when measuring
    /// (`compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ms: Option<u64>,
    /// The workflow's figures step by step, kept when measuring (`compare`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepFigures>,
}

/// What one step of a case's run used: calls (by the tier and locality of
/// the model that answered), tokens, cost, and the judge's verdicts on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepFigures {
    pub step: String,
    pub task: String,
    pub calls: u64,
    /// Answered calls by tier name.
    pub tiers: BTreeMap<String, u64>,
    /// Answered calls on a local model.
    pub local_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Model time: the latencies its calls' answers carry (as recorded, in
    /// replay), summed.
    #[serde(default)]
    pub model_ms: u64,
    /// `judge:` verdicts on this step, and how many said pass.
    #[serde(default)]
    pub judged: u32,
    #[serde(default)]
    pub judge_passed: u32,
    /// The text a learned router reads of this step (one call only; see
    /// [`crate::router::text`]), for `router train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl RunResult {
    /// A run with nothing in it yet.
    pub fn empty(outcome: Outcome) -> RunResult {
        RunResult {
            outcome,
            failures: Vec::new(),
            error: None,
            calls: 0,
            usage: Usage::default(),
            cost_usd: 0.0,
            judge_cost_usd: 0.0,
            elapsed_ms: 0,
            model_ms: None,
            steps: Vec::new(),
        }
    }

    /// A run that never started: the test run was interrupted first.
    pub fn interrupted() -> RunResult {
        RunResult {
            error: Some("interrupted before it started".to_owned()),
            ..RunResult::empty(Outcome::Errored)
        }
    }
}

/// How much of one text a result keeps (an expected or actual value, a
/// diff, a message): a model's answer may be megabytes, and a suite's
/// results are kept until the end of the run. The summary shows 200
/// characters of these; JUnit and JSON at most this.
pub const MAX_TEXT: usize = 4096;

/// `text` cut to at most [`MAX_TEXT`] bytes (at a character boundary), saying
/// how much was left out.
fn bounded(text: &mut String) {
    if text.len() <= MAX_TEXT {
        return;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let left = text.len() - end;
    text.truncate(end);
    let _ = write!(text, "… ({left} more bytes)");
}

impl RunResult {
    /// What a finished run keeps until the end of the test run: every
    /// text bounded by [`MAX_TEXT`]. A passing run is its numbers alone
    /// (about 100 bytes); a failing one holds at most its failures' bounded
    /// texts.
    pub fn reduce(mut self) -> RunResult {
        for f in &mut self.failures {
            for t in [&mut f.message]
                .into_iter()
                .chain(f.expected.as_mut())
                .chain(f.actual.as_mut())
                .chain(f.diff.as_mut())
            {
                bounded(t);
            }
        }
        if let Some(e) = &mut self.error {
            bounded(e);
        }
        self.failures.shrink_to_fit();
        self
    }
}

impl CaseResult {
    /// Aggregates the runs of a case (one, or `--repeat N`).
    pub fn from_runs(
        name: String,
        index: usize,
        origin: String,
        pass_threshold: f64,
        mut runs: Vec<RunResult>,
        pending_snapshots: Vec<String>,
    ) -> CaseResult {
        // Kept until the suite's reports are written: no spare capacity
        // (a vector grown by `push` holds room for four runs).
        runs.shrink_to_fit();
        let passed_runs = runs.iter().filter(|r| r.outcome == Outcome::Passed).count();
        let total = runs.len().max(1);
        // 4 of 5 at 0.8 passes: compare in whole runs, not floats.
        let needed = (pass_threshold * total as f64 - 1e-9).ceil().max(1.0) as usize;
        let outcome = if passed_runs >= needed {
            Outcome::Passed
        } else if runs.iter().any(|r| r.outcome == Outcome::Failed) {
            Outcome::Failed
        } else {
            Outcome::Errored
        };
        let mut usage = Usage::default();
        for r in &runs {
            usage += r.usage;
        }
        CaseResult {
            name,
            index,
            origin,
            outcome,
            passed_runs,
            pass_threshold,
            flaky: passed_runs > 0 && passed_runs < runs.len(),
            calls: runs.iter().map(|r| r.calls).sum(),
            usage,
            cost_usd: runs.iter().map(|r| r.cost_usd).sum(),
            elapsed_ms: runs.iter().map(|r| r.elapsed_ms).max().unwrap_or(0),
            runs,
            pending_snapshots,
        }
    }
}

/// Totals over a set of results.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub cases: usize,
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    pub flaky: usize,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl Results {
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in &self.suites {
            let c = s.cases.tally();
            t.cases += c.cases;
            t.passed += c.passed;
            t.failed += c.failed;
            t.errored += c.errored;
            t.flaky += c.flaky;
            t.calls += c.calls;
            t.input_tokens += c.input_tokens;
            t.output_tokens += c.output_tokens;
            s.cases.add_costs(&mut t.cost_usd);
        }
        for o in self.policy_tests.iter().flat_map(|f| &f.tests) {
            t.cases += 1;
            if o.passed {
                t.passed += 1;
            } else {
                t.failed += 1;
            }
        }
        t
    }

    pub fn ok(&self) -> bool {
        let t = self.totals();
        t.failed == 0 && t.errored == 0
    }
}

/// Why shard results cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("the results mix modes ({0:?} and {1:?}); merge results of one kind of run")]
    Modes(Mode, Mode),
    #[error("shard {index}/{count} is given twice")]
    DuplicateShard { index: u32, count: u32 },
    #[error("the results mix shard counts ({0} and {1})")]
    Counts(u32, u32),
    #[error("shard {index}/{count} is missing")]
    MissingShard { index: u32, count: u32 },
    #[error("case `{case}` of suite `{suite}` is in two results")]
    DuplicateCase { suite: String, case: String },
    #[error("results format version {0}; this tollgate reads {FORMAT_VERSION}")]
    Version(u32),
    #[error("cannot read the results of suite `{suite}` back: {why}")]
    Read { suite: String, why: String },
}

/// Joins the results of shards into the results of the whole run: suites by
/// name, cases back in suite order. Every shard of the split must be there
/// once, so a lost CI job cannot pass for a green run. The shards' records
/// are joined in memory (they were read whole from their files).
pub fn merge(parts: Vec<Results>) -> Result<Results, MergeError> {
    let mut mode = None;
    let mut shards: Vec<Shard> = Vec::new();
    let mut suites: BTreeMap<String, (SuiteResult, Vec<CaseResult>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut policy_tests: Vec<PolicyTestsResult> = Vec::new();
    for part in parts {
        if part.version != FORMAT_VERSION {
            return Err(MergeError::Version(part.version));
        }
        match mode {
            None => mode = Some(part.mode),
            Some(m) if m != part.mode => return Err(MergeError::Modes(m, part.mode)),
            Some(_) => {}
        }
        for s in part.shards {
            if let Some(first) = shards.first() {
                if first.count != s.count {
                    return Err(MergeError::Counts(first.count, s.count));
                }
            }
            if shards.contains(&s) {
                return Err(MergeError::DuplicateShard {
                    index: s.index,
                    count: s.count,
                });
            }
            shards.push(s);
        }
        // Each shard runs its share of every policy test file.
        for f in part.policy_tests {
            match policy_tests.iter_mut().find(|e| e.path == f.path) {
                None => policy_tests.push(f),
                Some(existing) => {
                    for t in f.tests {
                        if existing.tests.iter().any(|e| e.name == t.name) {
                            return Err(MergeError::DuplicateCase {
                                suite: f.path.clone(),
                                case: t.name,
                            });
                        }
                        existing.tests.push(t);
                    }
                }
            }
        }
        for mut suite in part.suites {
            let cases =
                std::mem::take(&mut suite.cases)
                    .into_vec()
                    .map_err(|e| MergeError::Read {
                        suite: suite.name.clone(),
                        why: e.to_string(),
                    })?;
            match suites.get_mut(&suite.name) {
                None => {
                    order.push(suite.name.clone());
                    suites.insert(suite.name.clone(), (suite, cases));
                }
                Some((_, existing)) => existing.extend(cases),
            }
        }
    }
    // Cases in suite order, each once (found with a set: a suite may have
    // 100,000 cases, and a search per case would be quadratic).
    for (name, (_, cases)) in &mut suites {
        cases.sort_by_key(|c| c.index);
        let mut seen = std::collections::HashSet::with_capacity(cases.len());
        if let Some(c) = cases.iter().find(|c| !seen.insert(c.name.as_str())) {
            return Err(MergeError::DuplicateCase {
                suite: name.clone(),
                case: c.name.clone(),
            });
        }
    }
    if let Some(count) = shards.first().map(|s| s.count) {
        for index in 1..=count {
            if !shards.iter().any(|s| s.index == index) {
                return Err(MergeError::MissingShard { index, count });
            }
        }
    }
    // Suites in name order (each shard lists them in the order given on its
    // command line, which is the same for all), cases in suite order.
    order.sort();
    let suites = order
        .into_iter()
        .filter_map(|n| suites.remove(&n))
        .map(|(mut s, cases)| {
            s.cases = Cases::from(cases);
            s
        })
        .collect();
    Ok(Results {
        version: FORMAT_VERSION,
        mode: mode.unwrap_or(Mode::Live),
        shards: Vec::new(),
        suites,
        policy_tests,
    })
}

/// Money as everywhere else: under a cent with two significant digits.
fn money(x: f64) -> String {
    crate::render::usd(x)
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The human summary: one line per case, details of what went wrong, totals.
/// Written case by case: a big suite's summary is never one string.
pub fn write_text(results: &Results, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut out = String::new();
    // A shard or a filter may leave a suite without cases: not worth a line.
    for s in results.suites.iter().filter(|s| !s.cases.is_empty()) {
        let _ = writeln!(
            out,
            "suite {} ({} × {}{}, {} cases)",
            s.name,
            s.workflow,
            s.policy,
            s.variant
                .as_ref()
                .and_then(|v| v.model.as_ref())
                .map(|m| format!(", every step pinned to {m}"))
                .unwrap_or_default(),
            s.cases.len()
        );
        for c in s.cases.iter() {
            let c = c?;
            w.write_all(out.as_bytes())?;
            out.clear();
            let mark = match c.outcome {
                Outcome::Passed => "ok    ",
                Outcome::Failed => "FAILED",
                Outcome::Errored => "ERROR ",
            };
            let runs = if c.runs.len() > 1 {
                format!(
                    "  {}/{} runs passed{}",
                    c.passed_runs,
                    c.runs.len(),
                    if c.flaky { " (flaky)" } else { "" }
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {mark} {:<32} {:>3} calls {:>7} tok  {:>10}  {:>6} ms{runs}",
                c.name,
                c.calls,
                c.usage.input_tokens + c.usage.output_tokens,
                money(c.cost_usd),
                c.elapsed_ms
            );
            if c.outcome == Outcome::Passed && !c.flaky {
                continue;
            }
            // Details of the first run that did not pass (others are alike
            // or in the JSON results).
            let Some(r) = c.runs.iter().find(|r| r.outcome != Outcome::Passed) else {
                continue;
            };
            if let Some(e) = &r.error {
                let _ = writeln!(out, "{}", indent(e, "         error: "));
            }
            for f in &r.failures {
                let _ = writeln!(
                    out,
                    "         step {}: {} — {}",
                    f.step, f.assertion, f.message
                );
                match (&f.diff, &f.expected, &f.actual) {
                    (Some(d), _, _) => {
                        let _ = writeln!(out, "{}", indent(d.trim_end(), "           "));
                    }
                    (None, Some(e), Some(a)) => {
                        let _ = writeln!(out, "           expected: {}", clip(e, 200));
                        let _ = writeln!(
                            out,
                            "           got:      {}",
                            clip(&a.replace('\n', "⏎"), 200)
                        );
                    }
                    _ => {}
                }
            }
            for p in &c.pending_snapshots {
                let _ = writeln!(out, "         pending snapshot: {p}");
            }
        }
    }
    for f in results.policy_tests.iter().filter(|f| !f.tests.is_empty()) {
        let _ = writeln!(
            out,
            "policy tests {} ({}, {} tests)",
            f.path,
            f.policy,
            f.tests.len()
        );
        for o in &f.tests {
            let mark = if o.passed { "ok    " } else { "FAILED" };
            let _ = writeln!(
                out,
                "  {mark} {:<32} {}",
                o.name,
                super::policy_tests::describe(&o.got)
            );
            for why in &o.failures {
                let _ = writeln!(out, "         {why}  ({})", o.origin);
            }
        }
    }
    let t = results.totals();
    let verdict = if t.failed == 0 && t.errored == 0 {
        "ok"
    } else {
        "FAILED"
    };
    let spent = match results.mode {
        Mode::Replay => format!(
            "{} (replayed: nothing spent; {} when recorded)",
            money(0.0),
            money(t.cost_usd)
        ),
        _ => money(t.cost_usd),
    };
    let _ = writeln!(
        out,
        "\ntest result: {verdict}. {} passed, {} failed, {} errored{} of {} cases; {} calls, {} tokens in, {} out; cost {spent}",
        t.passed,
        t.failed,
        t.errored,
        if t.flaky > 0 {
            format!(", {} flaky", t.flaky)
        } else {
            String::new()
        },
        t.cases,
        t.calls,
        t.input_tokens,
        t.output_tokens,
    );
    let pending: usize = results
        .suites
        .iter()
        .map(|s| s.cases.tally().pending_snapshots)
        .sum();
    if pending > 0 {
        let _ = writeln!(
            out,
            "{pending} pending snapshot(s): review them, then `tollgate test --accept`"
        );
    }
    w.write_all(out.as_bytes())
}

/// [`write_text`] into a string (small results: tests, benchmarks).
pub fn render_text(results: &Results) -> std::io::Result<String> {
    let mut out = Vec::new();
    write_text(results, &mut out)?;
    String::from_utf8(out).map_err(std::io::Error::other)
}

/// JUnit XML: a test suite per suite, a test case per case (classname = the
/// suite), `<failure>` for failed assertions and `<error>` for errored cases.
/// Written case by case with quick-xml, event for event what quick-junit
/// writes for the same report (the counts a suite's tag carries come from
/// the tallies), so a big suite's report is never held whole; every text is
/// cleaned as quick-junit's `XmlString` cleans it (ANSI escapes and control
/// characters removed).
pub fn write_junit(results: &Results, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use quick_xml::events::{BytesDecl, BytesStart, Event};
    let mut w = quick_xml::Writer::new_with_indent(out, b' ', 4);
    let (mut tests, mut failures, mut errors) = (0, 0, 0);
    for s in &results.suites {
        let t = s.cases.tally();
        tests += t.cases;
        failures += t.failed;
        errors += t.errored;
    }
    for f in &results.policy_tests {
        tests += f.tests.len();
        failures += f.tests.iter().filter(|o| !o.passed).count();
    }
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let mut root = BytesStart::new("testsuites");
    root.push_attribute(("name", "tollgate"));
    root.extend_attributes([
        ("tests", tests.to_string().as_str()),
        ("skipped", "0"),
        ("failures", failures.to_string().as_str()),
        ("errors", errors.to_string().as_str()),
    ]);
    w.write_event(Event::Start(root))?;
    for s in &results.suites {
        let t = s.cases.tally();
        let mut properties = vec![
            ("workflow", s.workflow.as_str()),
            ("policy", s.policy.as_str()),
        ];
        if let Some(v) = &s.variant {
            properties.push(("variant", v.name.as_str()));
            if let Some(m) = &v.model {
                properties.push(("model", m.as_str()));
            }
        }
        junit::suite_start(&mut w, &s.name, [t.cases, t.errored, t.failed], &properties)?;
        for c in s.cases.iter() {
            junit_case(&mut w, &s.name, c?.as_ref())?;
        }
        junit::end(&mut w, "testsuite")?;
    }
    for f in &results.policy_tests {
        let failed = f.tests.iter().filter(|o| !o.passed).count();
        junit::suite_start(
            &mut w,
            &format!("policy tests {}", f.path),
            [f.tests.len(), 0, failed],
            &[("policy", f.policy.as_str())],
        )?;
        for o in &f.tests {
            let status = (!o.passed).then(|| junit::Problem {
                tag: "failure",
                message: clip(&o.failures.join("; "), 500),
                description: format!(
                    "{}\ngot: {}",
                    o.origin,
                    super::policy_tests::describe(&o.got)
                ),
            });
            junit::case(&mut w, &o.name, &f.path, None, &[], status, None)?;
        }
        junit::end(&mut w, "testsuite")?;
    }
    junit::end(&mut w, "testsuites")?;
    w.write_event(Event::Eof)?;
    w.write_indent()
}

/// What a JUnit report says of a case that did not pass: the message (the
/// first unpassed run's error, or its failures on one line) and the
/// description (runs passed against the threshold, each failure with its
/// diff or expected and actual values).
fn problem_text(c: &CaseResult) -> (String, String) {
    let run = c.runs.iter().find(|r| r.outcome != Outcome::Passed);
    let message = run.map_or_else(String::new, |r| {
        r.error.clone().unwrap_or_else(|| {
            r.failures
                .iter()
                .map(|f| format!("step {}: {}", f.step, f.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
    });
    let mut description = String::new();
    if c.runs.len() > 1 {
        let _ = writeln!(
            description,
            "{}/{} runs passed (threshold {})",
            c.passed_runs,
            c.runs.len(),
            c.pass_threshold
        );
    }
    if let Some(r) = run {
        for f in &r.failures {
            let _ = writeln!(
                description,
                "step {}: {} — {}",
                f.step, f.assertion, f.message
            );
            if let Some(d) = &f.diff {
                let _ = writeln!(description, "{d}");
            } else if let (Some(e), Some(a)) = (&f.expected, &f.actual) {
                let _ = writeln!(description, "expected: {e}\ngot: {a}");
            }
        }
    }
    (message, description)
}

/// One case's `<testcase>`.
fn junit_case<W: std::io::Write>(
    w: &mut quick_xml::Writer<W>,
    suite: &str,
    c: &CaseResult,
) -> std::io::Result<()> {
    let problem = (c.outcome != Outcome::Passed).then(|| {
        let (message, description) = problem_text(c);
        junit::Problem {
            tag: if c.outcome == Outcome::Failed {
                "failure"
            } else {
                "error"
            },
            message: clip(&message, 500),
            description,
        }
    });
    let properties = [
        ("cost_usd", format!("{:.6}", c.cost_usd)),
        (
            "tokens",
            (c.usage.input_tokens + c.usage.output_tokens).to_string(),
        ),
    ];
    let properties: Vec<(&str, &str)> = properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let system_out = c
        .flaky
        .then(|| format!("flaky: {}/{} runs passed", c.passed_runs, c.runs.len()));
    junit::case(
        w,
        &c.name,
        suite,
        Some(std::time::Duration::from_millis(c.elapsed_ms)),
        &properties,
        problem,
        system_out.as_deref(),
    )
}

/// The pieces of JUnit XML, as quick-junit's serializer writes them.
mod junit {
    use quick_junit::XmlString;
    use quick_xml::Writer;
    use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
    use std::io::{Result, Write};

    /// A `<failure>` or `<error>`.
    pub(super) struct Problem {
        pub tag: &'static str,
        pub message: String,
        pub description: String,
    }

    /// `<testsuite>` and its properties; `counts` = tests, errors, failures.
    pub(super) fn suite_start<W: Write>(
        w: &mut Writer<W>,
        name: &str,
        [tests, errors, failures]: [usize; 3],
        properties: &[(&str, &str)],
    ) -> Result<()> {
        let name = XmlString::new(name);
        let mut tag = BytesStart::new("testsuite");
        tag.extend_attributes([
            ("name", name.as_str()),
            ("tests", tests.to_string().as_str()),
            ("skipped", "0"),
            ("errors", errors.to_string().as_str()),
            ("failures", failures.to_string().as_str()),
        ]);
        // Every suite has properties, so never a childless tag.
        w.write_event(Event::Start(tag))?;
        write_properties(w, properties)
    }

    pub(super) fn case<W: Write>(
        w: &mut Writer<W>,
        name: &str,
        classname: &str,
        time: Option<std::time::Duration>,
        properties: &[(&str, &str)],
        problem: Option<Problem>,
        system_out: Option<&str>,
    ) -> Result<()> {
        let (name, classname) = (XmlString::new(name), XmlString::new(classname));
        let mut tag = BytesStart::new("testcase");
        tag.push_attribute(("name", name.as_str()));
        tag.push_attribute(("classname", classname.as_str()));
        if let Some(time) = time {
            tag.push_attribute(("time", format!("{:.3}", time.as_secs_f64()).as_str()));
        }
        if properties.is_empty() && problem.is_none() && system_out.is_none() {
            return w.write_event(Event::Empty(tag));
        }
        w.write_event(Event::Start(tag))?;
        write_properties(w, properties)?;
        if let Some(p) = problem {
            let message = XmlString::new(p.message);
            let mut tag = BytesStart::new(p.tag);
            tag.push_attribute(("message", message.as_str()));
            w.write_event(Event::Start(tag))?;
            let description = XmlString::new(p.description);
            w.write_event(Event::Text(BytesText::new(description.as_str())))?;
            end(w, p.tag)?;
        }
        if let Some(out) = system_out {
            let out = XmlString::new(out);
            w.write_event(Event::Start(BytesStart::new("system-out")))?;
            w.write_event(Event::Text(BytesText::new(out.as_str())))?;
            end(w, "system-out")?;
        }
        end(w, "testcase")
    }

    fn write_properties<W: Write>(w: &mut Writer<W>, properties: &[(&str, &str)]) -> Result<()> {
        if properties.is_empty() {
            return Ok(());
        }
        w.write_event(Event::Start(BytesStart::new("properties")))?;
        for (k, v) in properties {
            let (k, v) = (XmlString::new(k), XmlString::new(v));
            let mut tag = BytesStart::new("property");
            tag.extend_attributes([("name", k.as_str()), ("value", v.as_str())]);
            w.write_event(Event::Empty(tag))?;
        }
        end(w, "properties")
    }

    pub(super) fn end<W: Write>(w: &mut Writer<W>, tag: &str) -> Result<()> {
        w.write_event(Event::End(BytesEnd::new(tag)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `write_junit` replaced: the report built whole with quick-junit,
    /// kept to prove the streamed XML is the same, byte for byte.
    /// JUnit XML: a test suite per suite, a test case per case (classname = the
    /// suite), `<failure>` for failed assertions and `<error>` for errored cases.
    fn junit_reference(results: &Results) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        let mut report = Report::new("tollgate");
        for s in &results.suites {
            let mut suite = TestSuite::new(s.name.as_str());
            suite.add_property(quick_junit::Property::new("workflow", s.workflow.as_str()));
            suite.add_property(quick_junit::Property::new("policy", s.policy.as_str()));
            if let Some(v) = &s.variant {
                suite.add_property(quick_junit::Property::new("variant", v.name.as_str()));
                if let Some(m) = &v.model {
                    suite.add_property(quick_junit::Property::new("model", m.as_str()));
                }
            }
            for c in s.cases.iter().map(Result::unwrap) {
                let status = match c.outcome {
                    Outcome::Passed => TestCaseStatus::success(),
                    outcome => {
                        let kind = if outcome == Outcome::Failed {
                            NonSuccessKind::Failure
                        } else {
                            NonSuccessKind::Error
                        };
                        let mut st = TestCaseStatus::non_success(kind);
                        let (message, description) = problem_text(&c);
                        st.set_message(clip(&message, 500));
                        st.set_description(description);
                        st
                    }
                };
                let mut tc = TestCase::new(c.name.as_str(), status);
                tc.set_classname(s.name.as_str());
                tc.set_time(std::time::Duration::from_millis(c.elapsed_ms));
                tc.add_property(quick_junit::Property::new(
                    "cost_usd",
                    format!("{:.6}", c.cost_usd),
                ));
                tc.add_property(quick_junit::Property::new(
                    "tokens",
                    (c.usage.input_tokens + c.usage.output_tokens).to_string(),
                ));
                if c.flaky {
                    tc.set_system_out(format!(
                        "flaky: {}/{} runs passed",
                        c.passed_runs,
                        c.runs.len()
                    ));
                }
                suite.add_test_case(tc);
            }
            report.add_test_suite(suite);
        }
        for f in &results.policy_tests {
            let mut suite = TestSuite::new(format!("policy tests {}", f.path));
            suite.add_property(quick_junit::Property::new("policy", f.policy.as_str()));
            for o in &f.tests {
                let status = if o.passed {
                    TestCaseStatus::success()
                } else {
                    let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    st.set_message(clip(&o.failures.join("; "), 500));
                    st.set_description(format!(
                        "{}\ngot: {}",
                        o.origin,
                        crate::eval::policy_tests::describe(&o.got)
                    ));
                    st
                };
                let mut tc = TestCase::new(o.name.as_str(), status);
                tc.set_classname(f.path.as_str());
                suite.add_test_case(tc);
            }
            report.add_test_suite(suite);
        }
        report.to_string().unwrap_or_default()
    }

    fn run(outcome: Outcome) -> RunResult {
        RunResult {
            calls: 1,
            cost_usd: 0.001,
            elapsed_ms: 5,
            ..RunResult::empty(outcome)
        }
    }

    #[test]
    fn a_threshold_counts_whole_runs_and_flakes_are_named() {
        let p = Outcome::Passed;
        let f = Outcome::Failed;
        let case = |t: f64, runs: &[Outcome]| {
            CaseResult::from_runs(
                "c".into(),
                0,
                "x".into(),
                t,
                runs.iter().map(|o| run(*o)).collect(),
                Vec::new(),
            )
        };
        let c = case(0.8, &[p, p, p, p, f]);
        assert_eq!(
            (c.outcome, c.flaky, c.passed_runs),
            (Outcome::Passed, true, 4)
        );
        assert_eq!(case(0.8, &[p, p, p, f, f]).outcome, Outcome::Failed);
        assert_eq!(case(1.0, &[p, p]).outcome, Outcome::Passed);
        assert_eq!(case(1.0, &[Outcome::Errored]).outcome, Outcome::Errored);
        assert!(!case(1.0, &[p]).flaky);
    }

    fn results(shard: Option<(u32, u32)>, cases: &[(&str, usize)]) -> Results {
        Results {
            version: FORMAT_VERSION,
            mode: Mode::Replay,
            shards: shard
                .map(|(index, count)| vec![Shard { index, count }])
                .unwrap_or_default(),
            suites: vec![SuiteResult {
                name: "s".into(),
                path: "s.yaml".into(),
                workflow: "w".into(),
                policy: "p".into(),
                variant: None,
                cases: cases
                    .iter()
                    .map(|(n, i)| {
                        CaseResult::from_runs(
                            (*n).into(),
                            *i,
                            "x".into(),
                            1.0,
                            vec![run(Outcome::Passed)],
                            Vec::new(),
                        )
                    })
                    .collect::<Vec<_>>()
                    .into(),
            }],
            policy_tests: Vec::new(),
        }
    }

    #[test]
    fn merge_restores_suite_order_and_refuses_gaps_and_overlaps() {
        let merged = merge(vec![
            results(Some((2, 2)), &[("b", 1)]),
            results(Some((1, 2)), &[("a", 0), ("c", 2)]),
        ])
        .unwrap();
        let names: Vec<String> = merged.suites[0]
            .cases
            .iter()
            .map(|c| c.unwrap().name.clone())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(matches!(
            merge(vec![
                results(Some((1, 3)), &[("a", 0)]),
                results(Some((3, 3)), &[("b", 1)])
            ]),
            Err(MergeError::MissingShard { index: 2, count: 3 })
        ));
        assert!(matches!(
            merge(vec![
                results(Some((1, 2)), &[("a", 0)]),
                results(Some((1, 2)), &[("b", 1)])
            ]),
            Err(MergeError::DuplicateShard { .. })
        ));
        assert!(matches!(
            merge(vec![
                results(Some((1, 2)), &[("a", 0)]),
                results(Some((2, 2)), &[("a", 0)])
            ]),
            Err(MergeError::DuplicateCase { .. })
        ));
    }

    #[test]
    fn a_reduced_run_keeps_bounded_texts() {
        let mut r = run(Outcome::Failed);
        let long = "é".repeat(MAX_TEXT); // 2 bytes each: cut at a boundary
        r.failures.push(Failure {
            step: "s".into(),
            assertion: "snapshot".into(),
            message: "short".into(),
            expected: Some(long.clone()),
            actual: Some("x".repeat(MAX_TEXT + 10)),
            diff: Some(long.clone()),
        });
        r.error = Some(long);
        let r = r.reduce();
        let f = &r.failures[0];
        assert_eq!(f.message, "short");
        for t in [
            f.expected.as_deref(),
            f.actual.as_deref(),
            f.diff.as_deref(),
            r.error.as_deref(),
        ] {
            let t = t.unwrap();
            assert!(t.len() < MAX_TEXT + 40, "{}", t.len());
            assert!(t.ends_with(" more bytes)"), "{}", &t[t.len() - 30..]);
        }
        assert!(f.actual.as_deref().unwrap().ends_with("… (10 more bytes)"));
    }

    #[test]
    fn junit_names_failures_and_errors_apart() {
        let mut r = results(None, &[("a", 0), ("b", 1), ("c", 2)]);
        let mut failed = run(Outcome::Failed);
        failed.failures.push(Failure {
            step: "classify".into(),
            assertion: "equals".into(),
            message: "the output is not equal to the expected value".into(),
            expected: Some("bug".into()),
            actual: Some("feature".into()),
            diff: None,
        });
        let mut cases = std::mem::take(&mut r.suites[0].cases).into_vec().unwrap();
        cases[1] = CaseResult::from_runs("b".into(), 1, "x".into(), 1.0, vec![failed], Vec::new());
        let mut errored = run(Outcome::Errored);
        errored.error = Some("no recorded response".into());
        cases[2] = CaseResult::from_runs("c".into(), 2, "x".into(), 1.0, vec![errored], Vec::new());
        r.suites[0].cases = cases.into();
        let xml = junit(&r);
        assert!(
            xml.contains("tests=\"3\"")
                && xml.contains("failures=\"1\"")
                && xml.contains("errors=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<failure message=\"step classify: the output is not equal to the expected value\""
            ),
            "{xml}"
        );
        assert!(
            xml.contains("<error message=\"no recorded response\""),
            "{xml}"
        );
    }

    fn junit(r: &Results) -> String {
        let mut out = Vec::new();
        write_junit(r, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Cases of every shape the reports treat apart, with hostile text.
    fn varied_case(i: usize) -> CaseResult {
        let hostile = "<b>&\"'</b> \u{1b}[31mred\u{1b}[0m \u{7}bell\nline ⏎ é";
        let failure = |step: &str| Failure {
            step: step.into(),
            assertion: "equals".into(),
            message: format!("not equal {hostile}"),
            expected: Some(format!("want {hostile}")),
            actual: Some("got\nthis".into()),
            diff: (i % 2 == 0).then(|| "--- expected\n+++ actual\n-a\n+b".into()),
        };
        let mut runs = match i % 5 {
            0 => vec![run(Outcome::Passed)],
            1 => {
                let mut r = run(Outcome::Failed);
                r.failures = vec![failure("classify"), failure("reply")];
                vec![r]
            }
            2 => {
                let mut r = run(Outcome::Errored);
                r.error = Some(format!("provider said {hostile}"));
                vec![r]
            }
            // Flaky: 2 of 3 pass at 0.6.
            3 => {
                let mut f = run(Outcome::Failed);
                f.failures = vec![failure("classify")];
                vec![run(Outcome::Passed), f, run(Outcome::Passed)]
            }
            _ => vec![run(Outcome::Failed), run(Outcome::Failed)],
        };
        for (k, r) in runs.iter_mut().enumerate() {
            r.cost_usd = 0.000_123 * (i + k + 1) as f64 / 7.0;
            r.usage.input_tokens = 10 + i as u64;
            r.usage.output_tokens = 3;
            r.elapsed_ms = (i * 37 % 2000) as u64;
        }
        // A few records are bigger than the reading window.
        if i % 401 == 0 {
            runs[0].steps = vec![StepFigures {
                step: "s".into(),
                prompt: Some("p".repeat(100_000)),
                ..StepFigures::default()
            }];
        }
        let pending = if i % 11 == 0 {
            vec![format!("snapshots/case-{i}.snap.new")]
        } else {
            Vec::new()
        };
        CaseResult::from_runs(
            format!("case {i} {hostile}"),
            i,
            format!("cases.jsonl:{}", i + 1),
            if i % 5 == 3 { 0.6 } else { 1.0 },
            runs,
            pending,
        )
    }

    /// Two suites (one a pinned variant) and a policy test file, the cases
    /// pushed in a shuffled order (as runs finish) into `writer()`.
    fn varied_results(n: usize, writer: fn() -> CasesWriter) -> Results {
        let suite = |name: &str, variant: Option<crate::eval::suite::VariantInfo>| {
            let mut w = writer();
            // A fixed shuffle: every 7th index first, then the rest backwards.
            let order = (0..n).step_by(7).chain((0..n).filter(|i| i % 7 != 0).rev());
            for i in order {
                w.push(varied_case(i));
            }
            // The suite's own failure sorts after every case.
            w.push(CaseResult::from_runs(
                "(the suite's case files)".into(),
                usize::MAX,
                "s.yaml".into(),
                1.0,
                vec![RunResult {
                    error: Some("cases.jsonl changed".into()),
                    ..RunResult::empty(Outcome::Errored)
                }],
                Vec::new(),
            ));
            SuiteResult {
                name: name.into(),
                path: format!("{name}.yaml"),
                workflow: "w <&> .yaml".into(),
                policy: "p.yaml".into(),
                variant,
                cases: w.finish(),
            }
        };
        let got = crate::eval::policy_tests::Got {
            model: Some("m".into()),
            tier: None,
            locality: None,
            provider: None,
            decided_by: "rule all".into(),
            passed_over: Vec::new(),
            escalates_to: None,
        };
        Results {
            version: FORMAT_VERSION,
            mode: Mode::Replay,
            shards: Vec::new(),
            suites: vec![
                suite("alpha", None),
                suite(
                    "beta",
                    Some(crate::eval::suite::VariantInfo {
                        name: "cheap".into(),
                        policy: "p.yaml".into(),
                        model: Some("small <m>".into()),
                    }),
                ),
            ],
            policy_tests: vec![PolicyTestsResult {
                path: "routes.yaml".into(),
                policy: "p.yaml".into(),
                tests: [true, false]
                    .into_iter()
                    .map(|passed| crate::eval::policy_tests::Outcome {
                        name: format!("route {passed} <x>"),
                        origin: "routes.yaml:3:5".into(),
                        passed,
                        failures: if passed {
                            Vec::new()
                        } else {
                            vec!["expected tier `top`".into()]
                        },
                        got: got.clone(),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn streamed_junit_is_what_quick_junit_wrote() {
        for writer in [
            CasesWriter::new as fn() -> CasesWriter,
            CasesWriter::in_memory,
        ] {
            let r = varied_results(300, writer);
            assert_eq!(junit(&r), junit_reference(&r));
        }
    }

    #[test]
    fn spilled_cases_are_read_back_complete_and_in_suite_order() {
        let spilled = varied_results(1200, CasesWriter::new);
        let memory = varied_results(1200, CasesWriter::in_memory);
        assert!(format!("{:?}", spilled.suites[0].cases).contains("spilled: 1201 records"));
        for s in &spilled.suites {
            let indexes: Vec<usize> = s.cases.iter().map(|c| c.unwrap().index).collect();
            let want: Vec<usize> = (0..1200).chain([usize::MAX]).collect();
            assert_eq!(indexes, want);
        }
        assert_eq!(spilled, memory);
        assert_eq!(spilled.totals(), memory.totals());
        assert_eq!(spilled.totals().cases, 2 * 1201 + 2);
        // Every report is the same whichever way the cases were kept, and
        // the JSON reads back into what was written.
        assert_eq!(
            render_text(&spilled).unwrap(),
            render_text(&memory).unwrap()
        );
        let json = serde_json::to_string_pretty(&spilled).unwrap();
        assert_eq!(json, serde_json::to_string_pretty(&memory).unwrap());
        let back: Results = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spilled);
        // Two readers at once share the file, not a cursor.
        let cases = &spilled.suites[1].cases;
        let (mut a, mut b) = (cases.iter(), cases.iter());
        b.next();
        for _ in 0..100 {
            let (x, y) = (a.next().unwrap().unwrap(), b.next().unwrap().unwrap());
            assert_eq!(x.index + 1, y.index);
        }
    }
}
