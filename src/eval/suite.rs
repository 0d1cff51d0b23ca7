//! Loading a suite: the suite file, its workflow and policy, its cases (inline
//! and from JSONL/CSV files), every expectation compiled — with every problem
//! located and reported at once, before anything runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::analyze::{self, Analysis};
use crate::diagnostic::{Diagnostic, SourceFile, Span, did_you_mean, one_of};
use crate::inputs::{self, Inputs};
use crate::policy::{self, Policy};
use crate::schema::{self, Format};
use crate::workflow::{self, Workflow};
use crate::yaml::{Document, pointer};

use super::assertion::Expectations;

/// A loaded, checked suite.
pub struct Suite {
    pub name: String,
    pub path: PathBuf,
    pub workflow_path: PathBuf,
    pub policy_path: PathBuf,
    pub analysis: Arc<Analysis>,
    pub policy: Arc<Policy>,
    pub snapshot_dir: PathBuf,
    pub cassette_path: PathBuf,
    /// How many cases the suite has. The cases themselves are not kept:
    /// [`Suite::for_each_case`] and [`Suite::case_stream`] compile them
    /// again from the files, one at a time, so a suite of 100,000 cases
    /// holds none of them (they were all checked when it was loaded).
    pub case_count: usize,
    cases: CaseSource,
    /// The variant it runs as (`--policy`, `--model`); `None` for the
    /// suite as written.
    pub variant: Option<VariantInfo>,
}

/// What `--policy P` and `--model M` change in a suite (`test`, `compare`):
/// the policy it runs under, and a model every step of its workflow is
/// pinned to. The policy is loaded once by the caller and shared by every
/// suite.
#[derive(Clone, Default)]
pub struct Variant {
    /// Names the variant's recordings (`cassettes/<suite>/<name>.json`)
    /// and its row in a comparison.
    pub name: String,
    pub policy: Option<(PathBuf, Arc<Policy>)>,
    pub model: Option<String>,
}

/// A variant as results report it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantInfo {
    pub name: String,
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

pub struct Case {
    pub name: String,
    /// Position in the suite (inline cases first, then each case file's):
    /// results are reported in this order whatever order cases finish in.
    pub index: usize,
    pub inputs: Inputs,
    /// Step id → what its output must satisfy, in the order written.
    pub expect: IndexMap<String, Expectations>,
    /// Share of `--repeat` runs that must pass.
    pub pass_threshold: f64,
    /// Planned only: its `route` expectations are checked on the plan and
    /// no model is called.
    pub plan_only: bool,
    /// Where the case is written (`evals/x.yaml:12:5`, `cases.jsonl:3`).
    pub origin: String,
}

/// Finds the suite files among paths: files as given, folders searched
/// (not recursively) for `*.yaml` / `*.yml`, in name order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = match std::fs::read_dir(p) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|f| {
                        f.is_file()
                            && matches!(
                                f.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml")
                            )
                    })
                    .collect(),
                Err(err) => {
                    diags.push(
                        Diagnostic::error("io", format!("cannot read {}: {err}", p.display()))
                            .in_file(p),
                    );
                    continue;
                }
            };
            found.sort();
            if found.is_empty() {
                diags.push(
                    Diagnostic::error(
                        "no-suites",
                        format!("no suite files (*.yaml) in {}", p.display()),
                    )
                    .in_file(p)
                    .with_help("a suite names a `workflow:`, a `policy:` and `cases:`; see README"),
                );
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// What a suite's cases are compiled from: the suite file as loaded (its
/// inline cases and `cases_from`) and what compiling a case reads. Shared,
/// so a thread can compile cases while the runner runs them.
#[derive(Clone)]
struct CaseSource {
    file: Arc<workflow::Loaded<SuiteFile>>,
    analysis: Arc<Analysis>,
    policy: Arc<Policy>,
}

impl CaseSource {
    /// Every case compiled, in suite order, handed to `visit` (which says
    /// whether to go on); the problems found on the way.
    fn compile(&self, mut visit: impl FnMut(Case) -> bool) -> Vec<Diagnostic> {
        let (doc, file) = (&self.file.doc, &self.file.value);
        let w = &self.analysis.workflow.value;
        let mut diags = Vec::new();
        let mut index = 0;
        let mut going = true;
        gather_cases(file, doc, &self.file.dir(), w, &mut diags, |rc, diags| {
            if going {
                let case = compile_case(file, doc, w, &self.policy, &rc, index, diags);
                index += 1;
                going = visit(case);
            }
        });
        diags
    }
}

impl Suite {
    /// Every case, compiled again from the suite and its case files, in
    /// suite order, one at a time. The files were checked when the suite
    /// was loaded; a problem now means one changed since, and stops the
    /// visit with that problem.
    pub fn for_each_case(&self, mut visit: impl FnMut(Case)) -> Result<(), Vec<Diagnostic>> {
        self.case_compiler().run(|c| {
            visit(c);
            true
        })
    }

    /// How to compile the cases again, owned: what a thread needs to
    /// compile them while the runner runs them ([`CaseCompiler::run`]).
    pub fn case_compiler(&self) -> CaseCompiler {
        CaseCompiler {
            source: self.cases.clone(),
            name: self.name.clone(),
            path: self.path.clone(),
        }
    }
}

/// [`Suite::for_each_case`], owned and `Send`.
pub struct CaseCompiler {
    source: CaseSource,
    name: String,
    path: PathBuf,
}

impl CaseCompiler {
    /// Every case compiled, in suite order, handed to `visit` until it
    /// returns false; a problem (a file changed since the suite was
    /// loaded) comes back after the cases read before it.
    pub fn run(self, visit: impl FnMut(Case) -> bool) -> Result<(), Vec<Diagnostic>> {
        let diags = self.source.compile(visit);
        if diags.is_empty() {
            Ok(())
        } else {
            Err(changed(&self.name, &self.path, diags))
        }
    }
}

/// A case file that was fine at load and is not now: said first, then
/// what is wrong with it now.
fn changed(name: &str, path: &Path, diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out = vec![
        Diagnostic::error(
            "suite-changed",
            format!("the cases of suite `{name}` changed while it ran"),
        )
        .in_file(path)
        .with_help("the suite's files were checked when it was loaded; run it again"),
    ];
    out.extend(diags);
    out
}

/// The suite file as written.
#[derive(Debug, serde::Deserialize)]
struct SuiteFile {
    name: Option<String>,
    workflow: String,
    policy: String,
    snapshots: Option<String>,
    cassette: Option<String>,
    pass_threshold: Option<f64>,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    cases: Vec<Value>,
    cases_from: Option<Value>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Defaults {
    #[serde(default)]
    inputs: Map<String, Value>,
    #[serde(default)]
    expect: Map<String, Value>,
}

/// Loads and checks one suite file: its workflow and policy through the
/// normal loaders, then every case.
pub fn load(path: &Path) -> Result<Suite, Vec<Diagnostic>> {
    from_document(path, workflow::load_document(path)?)
}

/// [`load`] of a file already read and parsed (`test` reads each file
/// once to tell suites from policy test files).
pub fn from_document(path: &Path, doc: Document) -> Result<Suite, Vec<Diagnostic>> {
    from_document_as(path, doc, &Variant::default())
}

/// [`from_document`] under a variant: its policy instead of the suite's,
/// every step pinned to its model. The cases are compiled against that
/// policy (a `route:` expectation naming a model it lacks is an error), and
/// the variant's recordings are its own (see [`variant_cassette`]).
pub fn from_document_as(
    path: &Path,
    doc: Document,
    variant: &Variant,
) -> Result<Suite, Vec<Diagnostic>> {
    let loaded = Arc::new(workflow::from_document::<SuiteFile>(doc, Format::Suite)?);
    let doc = &loaded.doc;
    let file = &loaded.value;
    let dir = loaded.dir();
    let name = file.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "suite".to_owned())
    });
    let workflow_path = clean(&dir.join(&file.workflow));
    let own_policy = clean(&dir.join(&file.policy));
    let policy_path = variant
        .policy
        .as_ref()
        .map_or_else(|| own_policy.clone(), |(p, _)| p.clone());
    let (analysis, policy) = load_referenced(doc, &workflow_path, &policy_path, variant)?;
    let analysis = Arc::new(analysis);
    let w = &analysis.workflow.value;

    let mut diags = Vec::new();
    let mut names = HashSet::new();
    let mut case_count = 0;
    // Each case is compiled as soon as it is read, checked, and dropped:
    // the suite keeps how to compile them again (`CaseSource`), not them.
    gather_cases(file, doc, &dir, w, &mut diags, |rc, diags| {
        let case = compile_case(file, doc, w, &policy, &rc, case_count, diags);
        case_count += 1;
        if !names.insert(case.name) {
            diags.push(
                Diagnostic::error(
                    "duplicate-case",
                    format!(
                        "two cases are named `{}`",
                        rc.value
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                    ),
                )
                .at(rc.locate.span("/name"))
                .with_help("case names must be unique in a suite: they name snapshots"),
            );
        }
    });
    drop(names);
    if case_count == 0 && diags.is_empty() {
        diags.push(
            Diagnostic::error("no-cases", format!("suite `{name}` has no cases"))
                .at(doc.span(""))
                .with_help("add `cases:` or `cases_from:`"),
        );
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let own_cassette = clean(&file.cassette.as_ref().map_or_else(
        || dir.join("cassettes").join(format!("{name}.json")),
        |c| dir.join(c),
    ));
    let runs_as_written = variant.model.is_none() && same_file(&policy_path, &own_policy);
    let (cassette_path, info) = if variant.name.is_empty() {
        (own_cassette, None)
    } else {
        let info = VariantInfo {
            name: variant.name.clone(),
            policy: policy_path.display().to_string(),
            model: variant.model.clone(),
        };
        let cassette = if runs_as_written {
            own_cassette
        } else {
            variant_cassette(&own_cassette, &variant.name)
        };
        (cassette, Some(info))
    };
    Ok(Suite {
        snapshot_dir: clean(
            &file
                .snapshots
                .as_ref()
                .map_or_else(|| dir.join("snapshots").join(&name), |s| dir.join(s)),
        ),
        cassette_path,
        name,
        path: path.to_path_buf(),
        workflow_path,
        policy_path,
        cases: CaseSource {
            file: Arc::clone(&loaded),
            analysis: Arc::clone(&analysis),
            policy: Arc::clone(&policy),
        },
        analysis,
        policy,
        case_count,
        variant: info,
    })
}

/// Where a variant's recordings live: beside the suite's, in a folder named
/// after the suite's cassette (`cassettes/triage.json` →
/// `cassettes/triage/<variant>.json`). The key of a recording is the
/// request, and two policies may send the same request to models that
/// answer differently (a provider alias pointing at another server): one
/// file per variant means a comparison never replays another variant's
/// answers. A variant that is the suite as written (its own policy file, no
/// pin) is the same run as `tollgate test` and uses the suite's recordings.
pub fn variant_cassette(own: &Path, variant: &str) -> PathBuf {
    own.with_extension("").join(format!("{variant}.json"))
}

/// Are two paths the same file (after symlinks), or the same text when
/// one cannot be resolved?
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The suite's workflow (analysed) and policy (compiled); the problems of
/// both at once.
fn load_referenced(
    doc: &Document,
    workflow_path: &Path,
    policy_path: &Path,
    variant: &Variant,
) -> Result<(Analysis, Arc<Policy>), Vec<Diagnostic>> {
    let referenced = |what: &str, p: &Path, ptr: &str| -> Option<Diagnostic> {
        (!p.is_file()).then(|| {
            Diagnostic::error(
                "missing-file",
                format!("the {what} `{}` does not exist", p.display()),
            )
            .at(doc.span(ptr))
            .with_help("paths in a suite are relative to the suite file")
        })
    };
    // A variant's policy was loaded (and its problems reported) by the
    // caller, once for every suite.
    let mut diags: Vec<Diagnostic> = referenced("workflow", workflow_path, "/workflow")
        .into_iter()
        .chain(
            variant
                .policy
                .is_none()
                .then(|| referenced("policy", policy_path, "/policy"))
                .flatten(),
        )
        .collect();
    if !diags.is_empty() {
        return Err(diags);
    }
    let analysis = workflow::load(workflow_path).and_then(|mut w| {
        if let Some(m) = &variant.model {
            // `--model M`: every step pinned to M, whatever it was pinned
            // to; routing still applies the gate and M's fallbacks.
            for step in w.value.steps.values_mut() {
                step.model = Some(m.clone());
            }
        }
        analyze::analyze(w, &analyze::project_root(workflow_path))
    });
    let policy = match &variant.policy {
        Some((_, p)) => Ok(Arc::clone(p)),
        None => policy::load(policy_path).map(|(_, p)| Arc::new(p)),
    };
    match (analysis, policy) {
        // A typo in a task falls to the catch-all rule silently: refused
        // here as `plan` and `run` refuse it.
        (Ok(a), Ok(p)) => {
            let mut problems = analyze::check_tasks(&a, &p.tasks);
            if let Some(m) = variant
                .model
                .as_ref()
                .filter(|m| !p.models.contains_key(*m))
            {
                problems.push(unknown_model(m, &p, policy_path));
            }
            if problems.is_empty() {
                Ok((a, p))
            } else {
                Err(problems)
            }
        }
        (a, p) => {
            diags.extend(a.err().unwrap_or_default());
            diags.extend(p.err().unwrap_or_default());
            Err(diags)
        }
    }
}

/// `--model M` names no model of the policy a suite runs under.
pub fn unknown_model(model: &str, policy: &Policy, policy_path: &Path) -> Diagnostic {
    let names = || policy.models.keys().map(String::as_str);
    Diagnostic::error(
        "unknown-model",
        format!(
            "--model {model}: policy `{}` has no model `{model}`",
            policy.name
        ),
    )
    .in_file(policy_path)
    .with_help(
        did_you_mean(model, names()).unwrap_or_else(|| format!("its models: {}", one_of(names()))),
    )
}

/// Every case with a way to locate its parts, handed to `visit` one at a
/// time: inline ones first, then the JSONL files' lines, then the CSV
/// files' rows, each kind in the order `cases_from` lists the files.
fn gather_cases(
    file: &SuiteFile,
    doc: &Document,
    dir: &Path,
    w: &Workflow,
    diags: &mut Vec<Diagnostic>,
    mut visit: impl FnMut(RawCase<'_>, &mut Vec<Diagnostic>),
) {
    for (i, c) in file.cases.iter().enumerate() {
        let rc = RawCase {
            value: c.clone(),
            locate: Locator::Suite {
                doc,
                base: format!("/cases/{i}"),
            },
        };
        visit(rc, diags);
    }
    let sources: Vec<(String, String)> = match &file.cases_from {
        Some(Value::String(s)) => vec![(s.clone(), "/cases_from".to_owned())],
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((v.as_str()?.to_owned(), format!("/cases_from/{i}"))))
            .collect(),
        _ => Vec::new(),
    };
    #[derive(PartialEq)]
    enum Kind {
        Jsonl,
        Csv,
    }
    let kind_of = |rel: &str| match Path::new(rel).extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson") => Some(Kind::Jsonl),
        Some("csv") => Some(Kind::Csv),
        _ => None,
    };
    for (rel, ptr) in &sources {
        if kind_of(rel).is_none() {
            diags.push(
                Diagnostic::error(
                    "case-file",
                    format!("`{rel}`: case files are .jsonl or .csv"),
                )
                .at(doc.span(ptr)),
            );
        }
    }
    // A JSONL case file is read line by line, a CSV file record by record
    // (each at most `files::MAX_TEXT_BYTES`), one file at a time: a case
    // file's cases are never held whole.
    for pass in [Kind::Jsonl, Kind::Csv] {
        for (rel, ptr) in &sources {
            if kind_of(rel).as_ref() != Some(&pass) {
                continue;
            }
            let p = dir.join(rel);
            let cannot_read = |err: crate::files::ReadError| {
                Diagnostic::error("case-file", format!("cannot read `{}`: {err}", p.display()))
                    .at(doc.span(ptr))
                    .with_help(
                        err.hint()
                            .unwrap_or("paths in a suite are relative to the suite file"),
                    )
            };
            if pass == Kind::Jsonl {
                // Read line by line: a JSONL file's cases are never held
                // whole (memory flat in the number of cases).
                let read = crate::files::TextLines::open(&p, crate::files::MAX_TEXT_BYTES)
                    .and_then(|mut lines| {
                        jsonl_cases(&p, &mut lines, diags, |c, diags| {
                            visit(
                                RawCase {
                                    value: c.value,
                                    locate: Locator::Line {
                                        path: &p,
                                        line: c.line,
                                        text: c.text,
                                        doc: std::cell::OnceCell::new(),
                                    },
                                },
                                diags,
                            );
                        })
                    });
                if let Err(err) = read {
                    diags.push(cannot_read(err));
                }
                continue;
            }
            // Read record by record (a record may span lines): the file's
            // cases are never held whole.
            match crate::files::BoundedFile::open(&p, crate::files::MAX_TEXT_BYTES) {
                Ok(file) => csv_cases(&p, file, w, diags, |value, origin, diags| {
                    visit(
                        RawCase {
                            value,
                            locate: Locator::Row { origin },
                        },
                        diags,
                    );
                }),
                Err(err) => diags.push(cannot_read(err)),
            }
        }
    }
}

/// One case compiled: the defaults merged, inputs typed, expectations
/// checked against the workflow's steps and the policy.
fn compile_case(
    file: &SuiteFile,
    doc: &Document,
    w: &Workflow,
    policy: &Policy,
    rc: &RawCase<'_>,
    index: usize,
    diags: &mut Vec<Diagnostic>,
) -> Case {
    let obj = rc.value.as_object().cloned().unwrap_or_default();
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut given = file.defaults.inputs.clone();
    if let Some(Value::Object(i)) = obj.get("inputs") {
        given.extend(i.clone());
    }
    let base = doc
        .file
        .path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let input_values = inputs::from_values(w, &given, &base, |n| match n {
        Some(n) if obj.get("inputs").and_then(|i| i.get(n)).is_some() => {
            rc.locate.span(&format!("/inputs{}", pointer([n])))
        }
        Some(n) => doc.span(&format!("/defaults/inputs{}", pointer([n]))),
        None => rc
            .locate
            .span("/inputs")
            .or_else(|| rc.locate.span("/name")),
    });
    let mut inputs = match input_values {
        Ok(v) => v,
        Err(d) => {
            diags.extend(d.into_iter().map(|d| rc.locate.mark(d)));
            Inputs::new()
        }
    };
    let mut expect = case_expectations(file, doc, w, policy, rc, &obj, diags);
    // A suite keeps every compiled case until it ends, and an IndexMap
    // grown by inserts reserves room for three entries or more: at 100,000
    // cases of one step that spare room was 1.5 KiB per case, most of the
    // suite's memory (heaptrack). Kept exactly as big as it is.
    inputs.shrink_to_fit();
    expect.shrink_to_fit();
    let plan_only = obj.get("plan_only").and_then(Value::as_bool) == Some(true);
    if plan_only {
        check_plan_only(file, rc, &obj, diags);
    }
    Case {
        plan_only,
        name,
        index,
        inputs,
        expect,
        pass_threshold: obj
            .get("pass_threshold")
            .and_then(Value::as_f64)
            .unwrap_or(file.pass_threshold.unwrap_or(1.0)),
        origin: rc.locate.origin(),
    }
}

/// A `plan_only` case calls no model: every expectation it has (its own,
/// or the defaults' for a step it does not set) may check the route only.
fn check_plan_only(
    file: &SuiteFile,
    rc: &RawCase<'_>,
    obj: &Map<String, Value>,
    diags: &mut Vec<Diagnostic>,
) {
    let own = obj.get("expect").and_then(Value::as_object);
    let answer_checks = |spec: &Value| {
        spec.as_object()
            .is_some_and(|o| o.keys().any(|k| k != "route"))
    };
    let mut refuse = |step: &str, ptr: Option<String>| {
        diags.push(
            rc.locate.mark(
                Diagnostic::error(
                    "plan-only-assertion",
                    format!("a `plan_only` case calls no model, so it cannot check the answer of step `{step}`"),
                )
                .at(ptr
                    .and_then(|p| rc.locate.span(&p))
                    .or_else(|| rc.locate.span("/plan_only")))
                .with_help("a plan_only case checks `route:` only; move answer checks (equals, contains, snapshot, judge, …) to a case that runs, or out of `defaults.expect`"),
            ),
        );
    };
    for (step, spec) in own.into_iter().flatten() {
        if answer_checks(spec) {
            refuse(step, Some(format!("/expect{}", pointer([step.as_str()]))));
        }
    }
    for (step, spec) in &file.defaults.expect {
        if !own.is_some_and(|o| o.contains_key(step)) && answer_checks(spec) {
            refuse(step, None);
        }
    }
}

/// A case's expectations, step by step: the defaults' unless the case sets
/// its own for that step; each for a step the workflow has.
fn case_expectations(
    file: &SuiteFile,
    doc: &Document,
    w: &Workflow,
    policy: &Policy,
    rc: &RawCase<'_>,
    obj: &Map<String, Value>,
    diags: &mut Vec<Diagnostic>,
) -> IndexMap<String, Expectations> {
    let mut expect: IndexMap<String, Expectations> = IndexMap::new();
    let mut specs: Vec<(String, Value, String)> = file
        .defaults
        .expect
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone(),
                format!("/defaults/expect{}", pointer([k])),
            )
        })
        .collect();
    if let Some(Value::Object(e)) = obj.get("expect") {
        for (k, v) in e {
            // A case's expectations for a step replace the defaults' for it.
            specs.retain(|(s, _, _)| s != k);
            specs.push((k.clone(), v.clone(), format!("/expect{}", pointer([k]))));
        }
    }
    let step_ids = || w.steps.keys().map(String::as_str);
    for (step, spec, ptr) in specs {
        let from_defaults = ptr.starts_with("/defaults");
        let at = |sub: &str| {
            if from_defaults {
                doc.span(&format!("{ptr}{sub}"))
            } else {
                rc.locate.span(&format!("{ptr}{sub}"))
            }
        };
        if !w.steps.contains_key(&step) {
            let key_span = if from_defaults {
                doc.key_span(&ptr)
            } else {
                rc.locate.key_span(&ptr)
            };
            diags.push(
                Diagnostic::error(
                    "unknown-step",
                    format!("the workflow `{}` has no step `{step}`", w.name),
                )
                .at(key_span.or_else(|| at("")))
                .with_help(
                    did_you_mean(&step, step_ids())
                        .unwrap_or_else(|| format!("its steps: {}", one_of(step_ids()))),
                ),
            );
            continue;
        }
        match Expectations::compile(&spec, policy, &at) {
            Ok(e) => {
                expect.insert(step, e);
            }
            Err(d) => diags.extend(d.into_iter().map(|d| rc.locate.mark(d))),
        }
    }
    expect
}

/// `evals/../workflows/x.yaml` → `workflows/x.yaml`, for messages and
/// reports — unless a symlinked folder makes the two different files.
pub(super) fn clean(p: &Path) -> PathBuf {
    let lexical = clean_lexically(p);
    match (std::fs::canonicalize(p), std::fs::canonicalize(&lexical)) {
        (Ok(a), Ok(b)) if a != b => p.to_path_buf(),
        _ => lexical,
    }
}

fn clean_lexically(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.last(), Some(Component::Normal(_)))
                    && !out
                        .last()
                        .is_some_and(|l| Path::new(l.as_os_str()).is_symlink()) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

struct RawCase<'a> {
    value: Value,
    locate: Locator<'a>,
}

/// Where a case's parts are written.
enum Locator<'a> {
    /// Inline in the suite file, under `base`.
    Suite { doc: &'a Document, base: String },
    /// A JSONL line. Positions inside it come from parsing the line as its
    /// own YAML document padded to its real line number — only when a
    /// problem needs one: padding every line would cost O(lines²).
    Line {
        path: &'a Path,
        /// 1-based.
        line: usize,
        text: &'a str,
        doc: std::cell::OnceCell<Option<Document>>,
    },
    /// A CSV row: no positions inside it, just `file:row`.
    Row { origin: String },
}

impl Locator<'_> {
    fn span(&self, ptr: &str) -> Option<Span> {
        match self {
            Locator::Suite { doc, base } => doc.span(&format!("{base}{ptr}")),
            Locator::Line { .. } => {
                let doc = self.line_doc()?;
                doc.span(ptr).or_else(|| doc.span(""))
            }
            Locator::Row { .. } => None,
        }
    }

    fn key_span(&self, ptr: &str) -> Option<Span> {
        match self {
            Locator::Suite { doc, base } => doc.key_span(&format!("{base}{ptr}")),
            Locator::Line { .. } => self.line_doc()?.key_span(ptr),
            Locator::Row { .. } => None,
        }
    }

    fn origin(&self) -> String {
        match self {
            Locator::Suite { doc, base } => doc
                .span(base)
                .map(|s| s.location())
                .unwrap_or_else(|| doc.file.display_path()),
            Locator::Line { path, line, .. } => format!("{}:{line}", path.display()),
            Locator::Row { origin } => origin.clone(),
        }
    }

    fn line_doc(&self) -> Option<&Document> {
        let Locator::Line {
            path,
            line,
            text,
            doc,
        } = self
        else {
            return None;
        };
        doc.get_or_init(|| padded_line(path, *line, text).ok())
            .as_ref()
    }

    /// CSV problems have no span: say which row in the message.
    fn mark(&self, mut d: Diagnostic) -> Diagnostic {
        if let Locator::Row { origin } = self {
            if d.span.is_none() {
                d.message = format!("{origin}: {}", d.message);
            }
        }
        d
    }
}

struct JsonlCase<'t> {
    line: usize,
    text: &'t str,
    value: Value,
}

/// One JSONL line as a YAML document (JSON is YAML) preceded by blank lines,
/// so its positions carry the line's real number.
fn padded_line(path: &Path, line: usize, text: &str) -> Result<Document, Vec<Diagnostic>> {
    let padded = format!("{}{text}\n", "\n".repeat(line.saturating_sub(1)));
    Document::parse(SourceFile::new(path, padded))
}

/// Each non-blank line of a JSONL file, checked against the case schema
/// and handed to `visit`; a line with problems is reported at its own line
/// and column.
fn jsonl_cases(
    path: &Path,
    lines: &mut crate::files::TextLines,
    diags: &mut Vec<Diagnostic>,
    mut visit: impl FnMut(JsonlCase<'_>, &mut Vec<Diagnostic>),
) -> Result<(), crate::files::ReadError> {
    let (_, validator) = Format::Case.validator();
    // Built once, and only when a line is not JSON (for its position).
    let mut whole: Option<Arc<SourceFile>> = None;
    let mut n = 0;
    while let Some(line) = lines.next_line()? {
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let value = match serde_json::from_str::<Value>(line) {
            Ok(v) => v,
            Err(err) => {
                // The file is read again, whole, to show the line in place
                // (an error only; read line by line it is never held).
                let file = whole.get_or_insert_with(|| {
                    let text = crate::files::read_text(path)
                        .unwrap_or_else(|_| format!("{}{line}", "\n".repeat(n - 1)));
                    SourceFile::new(path, text)
                });
                let offset = file.offset_of(n, err.column().saturating_sub(1));
                diags.push(
                    Diagnostic::error("case-file", format!("line {n} is not JSON: {err}"))
                        .at(Some(file.span(offset, 1)))
                        .with_help("a JSONL case file has one JSON object per line"),
                );
                continue;
            }
        };
        if !validator.is_valid(&value) {
            match padded_line(path, n, line) {
                Ok(doc) => diags.extend(schema::validate(&doc, Format::Case)),
                Err(d) => diags.extend(d),
            }
            continue;
        }
        visit(
            JsonlCase {
                line: n,
                text: line,
                value,
            },
            diags,
        );
    }
    Ok(())
}

/// CSV rows as case objects, handed to `visit` one at a time with their
/// origin (`file:row`): `name`, input columns (coerced to the input's
/// declared type) and `expect.<step>.<assertion>` columns. Empty cells are
/// absent values. A row with a problem is reported (every problem of every
/// row) and not visited.
fn csv_cases(
    path: &Path,
    file: impl std::io::Read,
    w: &Workflow,
    diags: &mut Vec<Diagnostic>,
    mut visit: impl FnMut(Value, String, &mut Vec<Diagnostic>),
) {
    let mut reader = csv::Reader::from_reader(file);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(err) => {
            diags.push(
                Diagnostic::error("case-file", format!("cannot read the CSV header: {err}"))
                    .in_file(path),
            );
            return;
        }
    };
    for (n, record) in reader.records().enumerate() {
        // Row 1 is the header.
        let origin = format!("{}:{}", path.display(), n + 2);
        let record = match record {
            Ok(r) => r,
            // A read that failed (past the size bound, or the disk's error)
            // ends the file: one error, not one per retry.
            Err(err) if matches!(err.kind(), csv::ErrorKind::Io(_)) => {
                let mut d =
                    Diagnostic::error("case-file", format!("{origin}: {err}")).in_file(path);
                if matches!(err.kind(), csv::ErrorKind::Io(e) if e.kind() == std::io::ErrorKind::FileTooLarge)
                {
                    d = d.with_help("the file is far larger than any suite needs; check the path, or split the file");
                }
                diags.push(d);
                return;
            }
            Err(err) => {
                diags
                    .push(Diagnostic::error("case-file", format!("{origin}: {err}")).in_file(path));
                continue;
            }
        };
        let problems = diags.len();
        let mut case = Map::new();
        let mut inputs = Map::new();
        let mut expect: Map<String, Value> = Map::new();
        for (h, cell) in headers.iter().zip(record.iter()) {
            if cell.is_empty() {
                continue;
            }
            if h == "name" || h == "description" {
                case.insert(h.to_owned(), Value::String(cell.to_owned()));
            } else if h == "pass_threshold" {
                match cell.parse::<f64>() {
                    Ok(v) => {
                        case.insert(h.to_owned(), Value::from(v));
                    }
                    Err(_) => diags.push(
                        Diagnostic::error(
                            "case-file",
                            format!("{origin}: pass_threshold `{cell}` is not a number"),
                        )
                        .in_file(path),
                    ),
                }
            } else if let Some(rest) = h.strip_prefix("expect.") {
                let Some((step, assertion)) = rest.split_once('.') else {
                    diags.push(
                        Diagnostic::error(
                            "case-file",
                            format!("column `{h}`: expected `expect.<step>.<assertion>`"),
                        )
                        .in_file(path),
                    );
                    continue;
                };
                // Numbers and booleans are written as such in a CSV cell.
                let value = match assertion {
                    "max_tokens" | "max_latency_ms" | "max_cost_usd" | "ignore_case"
                    | "snapshot" => serde_json::from_str(cell)
                        .unwrap_or_else(|_| Value::String(cell.to_owned())),
                    _ => Value::String(cell.to_owned()),
                };
                expect
                    .entry(step.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .map(|m| m.insert(assertion.to_owned(), value));
            } else {
                let kind = w.inputs.get(h).map(|d| d.kind).unwrap_or_default();
                match inputs::coerce(kind, cell) {
                    Ok(v) => {
                        inputs.insert(h.to_owned(), v);
                    }
                    Err(why) => diags.push(
                        Diagnostic::error("case-file", format!("{origin}: column `{h}`: {why}"))
                            .in_file(path),
                    ),
                }
            }
        }
        case.insert("inputs".to_owned(), Value::Object(inputs));
        if !expect.is_empty() {
            case.insert("expect".to_owned(), Value::Object(expect));
        }
        let value = Value::Object(case);
        let (_, validator) = Format::Case.validator();
        for err in validator.iter_errors(&value) {
            let at = err.instance_path().as_str().to_owned();
            diags.push(
                Diagnostic::error(
                    "case-file",
                    format!(
                        "{origin}: {}{err}",
                        if at.is_empty() {
                            String::new()
                        } else {
                            format!("{at}: ")
                        }
                    ),
                )
                .in_file(path),
            );
        }
        if diags.len() == problems {
            visit(value, origin, diags);
        }
    }
}
