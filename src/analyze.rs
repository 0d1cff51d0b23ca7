//! Semantic checks of a workflow, and the facts later stages need.
//!
//! Turns a schema-valid [`Workflow`] into an [`Analysis`]: every template
//! compiled and its references checked (strict: an unknown name is an error
//! here, not an empty string at run time), prompt files read from inside the
//! project only, dependencies collected from `needs` *and* from template
//! references, and the DAG sealed. Every problem is reported at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use minijinja::Environment;

use crate::diagnostic::{Diagnostic, SourceFile, closest, did_you_mean, one_of};
use crate::graph::Dag;
use crate::template::{self, Origin, Source};
use crate::workflow::{KNOWN_TASKS, Loaded, Step, Workflow, unknown_task};
use crate::yaml::{Document, pointer};

/// What the analysis knows about one step.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub id: String,
    pub prompt: Source,
    pub system: Option<Source>,
    pub when: Option<Source>,
    pub for_each: Option<Source>,
    /// The query of the step's `retrieve`, a template.
    pub retrieve_query: Option<Source>,
    /// Inputs the step's templates read (directly).
    pub reads_inputs: BTreeSet<String>,
    /// Steps whose outputs the templates read (these carry data, and so
    /// sensitivity).
    pub reads_steps: BTreeSet<String>,
    /// Steps that must finish first: `needs` plus `reads_steps`.
    pub deps: BTreeSet<String>,
    /// The streamed input (`stream: true`) that is this step's whole
    /// `for_each`: its items come from its file when it was given as one
    /// ([`crate::streamed`]).
    pub streamed: Option<String>,
}

impl StepInfo {
    /// The render context of this step's prompt, system prompt, `when` and
    /// `for_each`: the **only** function that builds one (`plan`, `run`,
    /// judges and every generated step go through it).
    ///
    /// Invariant (the gate is sound by construction): the context holds
    /// exactly what the analysis says the step reads — the inputs in
    /// [`StepInfo::reads_inputs`], the outputs of the steps in
    /// [`StepInfo::reads_steps`] and, for a `for_each` step, `item` — which is
    /// exactly what [`crate::sensitivity::propagate`] counts. A bare `inputs`
    /// (`{{ inputs | tojson }}`) counts as reading every input, so every input
    /// is here and every label counts; `steps` as a whole is refused by the
    /// analysis. Whatever the reference analysis did not see is simply not in
    /// the context, and strict undefined makes reading it an error: a hole in
    /// the analysis fails closed, never open. `item` is added per call by
    /// [`RenderContext::for_item`], which the context carries.
    pub fn context(
        &self,
        inputs: &serde_json::Map<String, serde_json::Value>,
        output_of: impl Fn(&str) -> serde_json::Value,
    ) -> RenderContext {
        #[cfg(test)]
        CONTEXTS_BUILT.with(|n| n.set(n.get() + 1));
        // By reference: serialised straight into template values, never
        // cloned (an input may be the fan-out's whole list).
        let inputs: IndexMap<&str, &serde_json::Value> = self
            .reads_inputs
            .iter()
            .filter_map(|name| inputs.get(name).map(|v| (name.as_str(), v)))
            .collect();
        let steps: serde_json::Map<String, serde_json::Value> = self
            .reads_steps
            .iter()
            .map(|dep| (dep.clone(), serde_json::json!({ "output": output_of(dep) })))
            .collect();
        RenderContext {
            inputs: minijinja::Value::from_serialize(&inputs),
            steps: minijinja::Value::from_serialize(&steps),
            takes_item: self.for_each.is_some(),
            retrieved: None,
        }
    }
}

/// A step's render context, built once per expansion by
/// [`StepInfo::context`] (and only there): the inputs and step outputs the
/// step reads, converted to template values once. minijinja values share
/// their data behind `Arc`s, so the context of each `for_each` item
/// ([`RenderContext::for_item`]) costs the item's size, not the step's: a
/// fan-out over n items that rebuilt the whole context per item was
/// quadratic.
#[derive(Debug, Clone)]
pub struct RenderContext {
    inputs: minijinja::Value,
    steps: minijinja::Value,
    /// The step has `for_each`: only then may a context hold `item`.
    takes_item: bool,
    /// The chunks the step's `retrieve` found (`step` adds them, and only
    /// for a step with `retrieve`: the analysis refuses `retrieved`
    /// elsewhere).
    retrieved: Option<minijinja::Value>,
}

impl RenderContext {
    /// This context with the chunks a `retrieve` found, as `retrieved`.
    pub fn with_retrieved(mut self, chunks: &impl serde::Serialize) -> Self {
        self.retrieved = Some(minijinja::Value::from_serialize(chunks));
        self
    }

    /// The same `retrieved` as `other` (a context rebuilt over trimmed
    /// inputs keeps what the step retrieved).
    pub fn with_retrieved_of(mut self, other: &RenderContext) -> Self {
        self.retrieved.clone_from(&other.retrieved);
        self
    }

    /// The context without `item`: what `when` and `for_each` see.
    pub fn base(&self) -> minijinja::Value {
        self.for_item(None)
    }

    /// The context of one call: the base plus, for a `for_each` step, its
    /// `item` (ignored for a step without `for_each`, whose templates may
    /// not read `item`).
    pub fn for_item(&self, item: Option<&minijinja::Value>) -> minijinja::Value {
        let mut ctx = vec![
            ("inputs", self.inputs.clone()),
            ("steps", self.steps.clone()),
        ];
        if let (Some(item), true) = (item, self.takes_item) {
            ctx.push(("item", item.clone()));
        }
        if let Some(r) = &self.retrieved {
            ctx.push(("retrieved", r.clone()));
        }
        ctx.into_iter().collect()
    }

    /// The names of the inputs the context holds, as it holds them.
    pub fn input_names(&self) -> impl Iterator<Item = String> + '_ {
        keys(&self.inputs)
    }

    /// The ids of the steps whose outputs the context holds.
    pub fn step_ids(&self) -> impl Iterator<Item = String> + '_ {
        keys(&self.steps)
    }
}

/// The keys of a map value (none for anything else).
fn keys(map: &minijinja::Value) -> impl Iterator<Item = String> + '_ {
    map.try_iter()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_owned))
}

#[cfg(test)]
thread_local! {
    /// How many contexts [`StepInfo::context`] built on this thread: a
    /// fan-out must build its step's context once, not once per item
    /// (`step`'s tests count).
    pub(crate) static CONTEXTS_BUILT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A workflow that passed every check.
#[derive(Debug)]
pub struct Analysis {
    pub workflow: Loaded<Workflow>,
    pub steps: IndexMap<String, StepInfo>,
    pub dag: Dag,
    pub env: Environment<'static>,
    /// Every warning the checks found (the errors stop [`analyze`]; these
    /// do not), for the CLI to show once after loading. None of today's
    /// checks warns; a check that does only pushes a
    /// [`Diagnostic::warning`] and it reaches the user.
    pub warnings: Vec<Diagnostic>,
    /// The documents of every file set of `documents` (read once, here);
    /// sets over an input take theirs from its value at expansion.
    pub documents: IndexMap<String, Vec<crate::context::retrieval::Document>>,
}

impl Analysis {
    pub fn doc(&self) -> &Document {
        &self.workflow.doc
    }

    pub fn step(&self, id: &str) -> &Step {
        &self.workflow.value.steps[id]
    }

    /// Step ids in execution order.
    pub fn order(&self) -> impl Iterator<Item = &str> {
        self.dag
            .order()
            .iter()
            .map(|&i| self.steps.get_index(i).map_or("", |(k, _)| k.as_str()))
    }
}

/// The folder that prompt files must stay inside: the nearest ancestor of the
/// workflow that holds `.git`, else the workflow's own folder.
///
/// Never the current directory: where the command happens to run from (`/`,
/// a home folder) must not widen what a workflow may read.
pub fn project_root(workflow_path: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(workflow_path)
        .or_else(|_| std::path::absolute(workflow_path))
        .unwrap_or_else(|_| workflow_path.to_path_buf());
    let parent = abs.parent();
    parent
        .and_then(git_root)
        .or(parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The nearest folder from `dir` up that holds `.git` (a repository, or a
/// worktree's `.git` file): what "the project" means for prompt files, the
/// journal's folder and the default policy.
pub fn git_root(dir: &Path) -> Option<&Path> {
    dir.ancestors().find(|d| d.join(".git").exists())
}

/// An input no step reads (prompt, system prompt, `when`, `for_each`) is
/// a warning: usually a typo in a template's name for it, or a leftover the
/// user still pays attention to (and may still label confidential).
fn unused_inputs(
    workflow: &Loaded<Workflow>,
    steps: &IndexMap<String, StepInfo>,
    diags: &mut Vec<Diagnostic>,
) {
    for name in workflow.value.inputs.keys() {
        if steps.values().any(|s| s.reads_inputs.contains(name))
            || (workflow.value.documents.values())
                .any(|d| d.input.as_deref() == Some(name.as_str()))
        {
            continue;
        }
        diags.push(
            Diagnostic::warning("unused-input", format!("no step reads input `{name}`"))
                .at(workflow.doc.key_span(&pointer(["inputs", name.as_str()])))
                .with_help(format!(
                    "read it in a template as `{{{{ inputs.{name} }}}}`, or remove it"
                )),
        );
    }
}

/// Checks a workflow. `root` is the project folder prompt files must stay in.
pub fn analyze(workflow: Loaded<Workflow>, root: &Path) -> Result<Analysis, Vec<Diagnostic>> {
    let env = template::environment();
    let mut diags = Vec::new();
    let mut workflow = workflow;
    generate_summary_steps(&mut workflow, &mut diags);
    check_inputs(&workflow.value, &workflow.doc, &mut diags);
    let documents = load_documents(&workflow, root, &mut diags);
    let mut steps = IndexMap::new();
    for (id, step) in &workflow.value.steps {
        let info = analyze_step(&workflow, id, step, &env, root, &mut diags);
        steps.insert(id.clone(), info);
    }
    let dag = seal_dag(&workflow, &steps, &mut diags);
    // Only over a workflow whose every template was read: a template that
    // failed to analyze would make its inputs look unused.
    if !diags.iter().any(Diagnostic::is_error) {
        unused_inputs(&workflow, &steps, &mut diags);
    }
    match dag {
        Some(dag) if !diags.iter().any(Diagnostic::is_error) => Ok(Analysis {
            workflow,
            steps,
            dag,
            env,
            warnings: diags,
            documents,
        }),
        _ => Err(diags),
    }
}

/// One step: its templates compiled, linted and their references checked
/// (what it reads, what it depends on), `needs`, the output schema and the
/// token expectations.
fn analyze_step(
    workflow: &Loaded<Workflow>,
    id: &str,
    step: &Step,
    env: &Environment<'static>,
    root: &Path,
    diags: &mut Vec<Diagnostic>,
) -> StepInfo {
    let w = &workflow.value;
    let doc = &workflow.doc;
    let sp = |key: &str| pointer(["steps", id, key]);
    let prompt = step_prompt(workflow, id, step, root, diags);
    let system = step
        .system
        .as_deref()
        .map(|s| Source::inline(s, sp("system")));
    let when = step
        .when
        .as_deref()
        .map(|s| Source::expression(s, sp("when")));
    // `context.chunk` is a `for_each` over the input's chunks, located at
    // the `chunk` mapping (the expression is generated, not written).
    let chunked = step.context.as_ref().and_then(|c| c.chunk.as_ref());
    let for_each = match (step.for_each.as_deref(), chunked) {
        (Some(s), _) => Some(Source::expression(s, sp("for_each"))),
        // An unknown input is `context::check`'s located error; the step
        // still fans out (over nothing) so `item` reads are not errors too.
        (None, Some(chunk)) => Some(Source::expression(
            &if w.inputs.contains_key(&chunk.input) {
                chunk.for_each()
            } else {
                "[]".to_owned()
            },
            pointer(["steps", id, "context", "chunk"]),
        )),
        (None, None) => None,
    };
    let retrieve_query = step
        .retrieve
        .as_ref()
        .map(|r| Source::inline(&r.query, pointer(["steps", id, "retrieve", "query"])));

    let mut info = StepInfo {
        id: id.to_owned(),
        prompt: prompt
            .clone()
            .unwrap_or_else(|| Source::inline("", sp("prompt"))),
        system: system.clone(),
        when: when.clone(),
        for_each: for_each.clone(),
        retrieve_query: retrieve_query.clone(),
        reads_inputs: BTreeSet::new(),
        reads_steps: BTreeSet::new(),
        deps: BTreeSet::new(),
        streamed: None,
    };

    // Built-in functions (`range`, `namespace`, `dict`, …) are not variables.
    let globals: BTreeSet<String> = env.globals().map(|(k, _)| k.to_owned()).collect();
    // The workflow's steps as a map, not a list made per step: a lookup per
    // reference, and the names listed only for an error (a list per step
    // made analysing 10,000 steps quadratic).
    let steps = &w.steps;
    let input_names: Vec<&str> = w.inputs.keys().map(String::as_str).collect();
    let streamed: Vec<&str> = w
        .inputs
        .iter()
        .filter(|(_, d)| d.stream)
        .map(|(n, _)| n.as_str())
        .collect();
    info.streamed = for_each
        .as_ref()
        .and_then(|fe| streamed_source(&fe.text))
        .filter(|name| streamed.contains(name))
        .map(str::to_owned);
    let whole_for_each = info.streamed.clone();
    if let Some(name) = &info.streamed {
        // Their calls are kept whole (trimmed, chunked, with turns), which a
        // list that is never held cannot give them.
        for (key, set) in [
            ("context", step.context.is_some()),
            ("history", step.history.is_some()),
        ] {
            if set {
                diags.push(
                    Diagnostic::error(
                        "streamed-input",
                        format!("step `{id}` fans out over streamed input `{name}` and has `{key}`"),
                    )
                    .at(doc.key_span(&sp(key)))
                    .with_help(format!("a streamed list's calls are made one at a time and never held: remove `{key}` from the step, or `stream: true` from the input")),
                );
            }
        }
    }
    let sources = [
        (prompt.as_ref(), "the prompt", true),
        (system.as_ref(), "the system prompt", true),
        (when.as_ref(), "`when`", false),
        (for_each.as_ref(), "`for_each`", false),
        (retrieve_query.as_ref(), "the retrieval query", false),
    ];
    for (source, what, item_allowed) in sources {
        let Some(source) = source else { continue };
        let refs = match source.references(env) {
            Ok(r) => r,
            Err(err) => {
                diags.push(source.error(doc, &err, &format!("{what} of step `{id}`")));
                continue;
            }
        };
        // Never by running the template: that would execute its loops.
        match source.lint(env) {
            Ok(found) => diags.extend(
                found
                    .iter()
                    .map(|f| source.error_at(doc, f, &format!("{what} of step `{id}`"))),
            ),
            Err(err) => {
                diags.push(source.error(doc, &err, &format!("{what} of step `{id}`")));
                continue;
            }
        }
        let item_ok = item_allowed && for_each.is_some();
        let retrieved_ok = item_allowed && step.retrieve.is_some();
        for r in refs {
            check_reference(
                &r,
                source,
                &Ctx {
                    doc,
                    id,
                    what,
                    item_ok,
                    retrieved_ok,
                    steps,
                    input_names: &input_names,
                    streamed: &streamed,
                    whole_for_each: whole_for_each.as_deref().filter(|_| what == "`for_each`"),
                    globals: &globals,
                },
                &mut info,
                diags,
            );
        }
    }
    check_needs(w, doc, id, step, &mut info, diags);
    check_output(doc, id, step, diags);
    if let Some(spec) = &step.context {
        let inputs: Vec<crate::context::DeclaredInput> = w
            .inputs
            .iter()
            .map(|(name, d)| crate::context::DeclaredInput {
                name,
                is_string: d.kind == crate::workflow::InputType::String,
                kind: d.kind.name(),
            })
            .collect();
        crate::context::check(
            &inputs,
            doc,
            id,
            spec,
            &info.reads_inputs,
            step.for_each.is_some(),
            diags,
        );
    }
    check_retrieval_and_history(w, doc, id, step, &mut info, diags);
    check_attachments(w, doc, id, step, &mut info, diags);
    info
}

/// The input a `for_each` expression is exactly (`inputs.NAME`, spaces
/// around it allowed): the only expression a streamed input may be.
fn streamed_source(text: &str) -> Option<&str> {
    let name = text.trim().strip_prefix("inputs.")?;
    (!name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(name)
}

/// Adds the summary step of every `history` with `summarize_older` (just
/// before the step it serves), so routing, the gate, the journal, resume
/// and the plan treat it as any step; refuses a written step id that would
/// pass for a generated one.
fn generate_summary_steps(workflow: &mut Loaded<Workflow>, diags: &mut Vec<Diagnostic>) {
    use crate::context::history;
    let doc = &workflow.doc;
    let mut generated = Vec::new();
    for (i, (id, step)) in workflow.value.steps.iter().enumerate() {
        if history::is_summary_step(id) {
            diags.push(
                Diagnostic::error(
                    "reserved-step-id",
                    format!("step id `{id}` ends with `{}`", history::SUMMARY_SUFFIX),
                )
                .at(doc.key_span(&pointer(["steps", id.as_str()])))
                .with_help("ids ending so name the summary steps tollgate generates for `history`; rename the step"),
            );
        }
        let Some(h) = step.history.as_ref().filter(|h| h.summarize_older) else {
            continue;
        };
        let Some(keep) = h.keep_last else {
            diags.push(
                Diagnostic::error(
                    "history-summary",
                    format!("the history of step `{id}` summarizes older turns but keeps them all"),
                )
                .at(doc.span(&pointer([
                    "steps",
                    id.as_str(),
                    "history",
                    "summarize_older",
                ])))
                .with_help("add `keep_last: N`: the turns before the last N are summarized"),
            );
            continue;
        };
        let value = history::summary_step(&h.from, keep as usize, h.summarize_with.as_deref());
        match serde_json::from_value::<Step>(value) {
            Ok(s) => generated.push((i, history::summary_step_id(id), s)),
            Err(e) => diags.push(Diagnostic::error(
                "history-summary",
                format!("the summary step of `{id}` is invalid: {e}"),
            )),
        }
    }
    // Later indices first, so earlier ones stay right.
    for (i, id, step) in generated.into_iter().rev() {
        workflow.value.steps.shift_insert(i, id, step);
    }
}

/// `retrieve` names known document sets; `history` an input of type
/// `messages`, which the step then reads (its turns are sent).
fn check_retrieval_and_history(
    w: &Workflow,
    doc: &Document,
    id: &str,
    step: &Step,
    info: &mut StepInfo,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(r) = &step.retrieve {
        let sets = || w.documents.keys().map(String::as_str);
        for (i, set) in r.from.iter().enumerate() {
            if w.documents.contains_key(set) {
                continue;
            }
            let ptr = if r.from.len() == 1
                && doc
                    .span(&pointer(["steps", id, "retrieve", "from", "0"]))
                    .is_none()
            {
                pointer(["steps", id, "retrieve", "from"])
            } else {
                pointer(["steps", id, "retrieve", "from", &i.to_string()])
            };
            diags.push(
                Diagnostic::error(
                    "unknown-documents",
                    format!("step `{id}` retrieves from unknown document set `{set}`"),
                )
                .at(doc.span(&ptr))
                .with_label("not a set of `documents`")
                .with_help(did_you_mean(set, sets()).unwrap_or_else(|| {
                    "declare it at the top level: `documents: { NAME: { files: [\"docs/*.md\"] } }`".to_owned()
                })),
            );
        }
    }
    if let Some(h) = &step.history {
        let summary = crate::context::history::summary_step_id(id);
        if h.summarize_older && w.steps.contains_key(&summary) {
            info.reads_steps.insert(summary.clone());
            info.deps.insert(summary);
        }
        let at = doc.span(&pointer(["steps", id, "history", "from"]));
        match w.inputs.get(&h.from) {
            Some(decl) if decl.kind == crate::workflow::InputType::Messages => {
                info.reads_inputs.insert(h.from.clone());
            }
            Some(decl) => diags.push(
                Diagnostic::error(
                    "history-input",
                    format!(
                        "the history of step `{id}` is input `{}`, of type {}",
                        h.from,
                        decl.kind.name()
                    ),
                )
                .at(at)
                .with_help("declare the input with `type: messages` (a list of {role, content})"),
            ),
            None => diags.push(
                Diagnostic::error(
                    "unknown-input",
                    format!("the history of step `{id}` is unknown input `{}`", h.from),
                )
                .at(at)
                .with_help(
                    did_you_mean(&h.from, w.inputs.keys().map(String::as_str))
                        .unwrap_or_else(|| "declare an input with `type: messages`".to_owned()),
                ),
            ),
        }
    }
}

/// A step's `attachments:` name inputs of type image or file; each counts
/// as read (its sensitivity is the step's).
fn check_attachments(
    w: &Workflow,
    doc: &Document,
    id: &str,
    step: &Step,
    info: &mut StepInfo,
    diags: &mut Vec<Diagnostic>,
) {
    for (i, name) in step.attachments.iter().enumerate() {
        let at = doc.span(&pointer(["steps", id, "attachments", &i.to_string()]));
        match w.inputs.get(name) {
            Some(decl) if decl.kind.is_attachment() => {
                info.reads_inputs.insert(name.clone());
            }
            Some(decl) => diags.push(
                Diagnostic::error(
                    "attachment-input",
                    format!(
                        "step `{id}` attaches input `{name}`, of type {}",
                        decl.kind.name()
                    ),
                )
                .at(at)
                .with_help(
                    "only inputs of type image (PNG, JPEG, GIF, WebP) or file (PDF) are attached; a text input goes into the prompt with {{ inputs.NAME }}",
                ),
            ),
            None => {
                let attachable = w
                    .inputs
                    .iter()
                    .filter(|(_, d)| d.kind.is_attachment())
                    .map(|(n, _)| n.as_str());
                diags.push(
                    Diagnostic::error(
                        "unknown-input",
                        format!("step `{id}` attaches unknown input `{name}`"),
                    )
                    .at(at)
                    .with_help(did_you_mean(name, attachable).unwrap_or_else(|| {
                        "declare an input with `type: image` or `type: file`".to_owned()
                    })),
                )
            }
        }
    }
}

/// Every document set checked (an input set names an array input) and every
/// file set read, from inside the project only.
fn load_documents(
    workflow: &Loaded<Workflow>,
    root: &Path,
    diags: &mut Vec<Diagnostic>,
) -> IndexMap<String, Vec<crate::context::retrieval::Document>> {
    let w = &workflow.value;
    let doc = &workflow.doc;
    let mut out = IndexMap::new();
    for (name, set) in &w.documents {
        let sp = |key: &str| pointer(["documents", name.as_str(), key]);
        if set.input.is_some() != set.files.is_empty() {
            diags.push(
                Diagnostic::error(
                    "documents",
                    format!("document set `{name}` needs either `files` or `input`"),
                )
                .at(doc.key_span(&pointer(["documents", name.as_str()])))
                .with_help("`files: [\"docs/*.md\"]` (globs relative to the workflow) or `input: NAME` (an array input), not both"),
            );
            continue;
        }
        if let Some(input) = &set.input {
            match w.inputs.get(input) {
                Some(decl) if decl.stream => diags.push(
                    Diagnostic::error(
                        "streamed-input",
                        format!("document set `{name}` is input `{input}`, which is streamed"),
                    )
                    .at(doc.span(&sp("input")))
                    .with_help("retrieval reads every document at once: remove `stream: true` from the input, or use another one"),
                ),
                Some(decl) if decl.kind == crate::workflow::InputType::Array => {}
                Some(decl) => diags.push(
                    Diagnostic::error(
                        "documents-input",
                        format!(
                            "document set `{name}` is input `{input}`, of type {}",
                            decl.kind.name()
                        ),
                    )
                    .at(doc.span(&sp("input")))
                    .with_help("declare the input with `type: array` (strings, or {text, source})"),
                ),
                None => diags.push(
                    Diagnostic::error(
                        "unknown-input",
                        format!("document set `{name}` is unknown input `{input}`"),
                    )
                    .at(doc.span(&sp("input")))
                    .with_help(
                        did_you_mean(input, w.inputs.keys().map(String::as_str)).unwrap_or_else(
                            || "declare it under `inputs:` with `type: array`".to_owned(),
                        ),
                    ),
                ),
            }
            continue;
        }
        match crate::context::retrieval::load_files(&set.files, &workflow.dir(), root) {
            Ok(docs) => {
                out.insert(name.clone(), docs);
            }
            Err(e) => {
                let ptr = match e.pattern {
                    Some(i) => pointer(["documents", name.as_str(), "files", &i.to_string()]),
                    None => sp("files"),
                };
                diags.push(
                    Diagnostic::error("documents", format!("document set `{name}`: {}", e.message))
                        .at(doc.span(&ptr))
                        .with_help(e.hint),
                );
            }
        }
    }
    out
}

/// The step's prompt: inline, or read from its `prompt_file`; exactly one.
fn step_prompt(
    workflow: &Loaded<Workflow>,
    id: &str,
    step: &Step,
    root: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<Source> {
    let doc = &workflow.doc;
    let sp = |key: &str| pointer(["steps", id, key]);
    match (&step.prompt, &step.prompt_file) {
        (Some(p), None) => Some(Source::inline(p, sp("prompt"))),
        (None, Some(f)) => {
            read_prompt_file(f, &workflow.dir(), root, doc, &sp("prompt_file"), diags)
        }
        (Some(_), Some(_)) => {
            diags.push(
                Diagnostic::error(
                    "prompt-conflict",
                    format!("step `{id}` has both `prompt` and `prompt_file`"),
                )
                .at(doc.key_span(&sp("prompt_file")))
                .with_help("keep one of them"),
            );
            None
        }
        (None, None) => {
            diags.push(
                Diagnostic::error("missing-prompt", format!("step `{id}` has no prompt"))
                    .at(doc.key_span(&pointer(["steps", id])))
                    .with_help("add `prompt:` (a template) or `prompt_file:` (a path relative to the workflow)"),
            );
            None
        }
    }
}

/// `needs`: known steps other than itself, added to the step's deps.
fn check_needs(
    w: &Workflow,
    doc: &Document,
    id: &str,
    step: &Step,
    info: &mut StepInfo,
    diags: &mut Vec<Diagnostic>,
) {
    let step_ids = || w.steps.keys().map(String::as_str);
    for (i, need) in step.needs.iter().enumerate() {
        let at = doc.span(&pointer(["steps", id, "needs", &i.to_string()]));
        if need == id {
            diags.push(
                Diagnostic::error("self-dependency", format!("step `{id}` needs itself"))
                    .at(at)
                    .with_help("remove it from `needs`"),
            );
        } else if w.steps.contains_key(need) {
            info.deps.insert(need.clone());
        } else {
            diags.push(
                Diagnostic::error(
                    "unknown-step",
                    format!("step `{id}` needs unknown step `{need}`"),
                )
                .at(at)
                .with_label("no step with this id")
                .with_help(
                    did_you_mean(need, step_ids())
                        .unwrap_or_else(|| format!("steps are {}", one_of(step_ids()))),
                ),
            );
        }
    }
}

/// The output schema is a valid JSON Schema; the expected output fits the
/// maximum.
fn check_output(doc: &Document, id: &str, step: &Step, diags: &mut Vec<Diagnostic>) {
    if let Some(schema) = step.output_schema() {
        if let Err(err) = jsonschema::validator_for(schema) {
            diags.push(
                Diagnostic::error(
                    "invalid-output-schema",
                    format!("the output schema of step `{id}` is not a valid JSON Schema: {err}"),
                )
                .at(doc.span(&pointer(["steps", id, "output", "schema"])))
                .with_help("see https://json-schema.org for the format"),
            );
        }
    }
    if let (Some(exp), max) = (step.expected_output_tokens, step.max_output_tokens()) {
        if exp > max {
            diags.push(
                Diagnostic::error(
                    "expected-over-max",
                    format!("step `{id}` expects {exp} output tokens but allows at most {max}"),
                )
                .at(doc.span(&pointer(["steps", id, "expected_output_tokens"])))
                .with_help("raise `max_output_tokens` or lower `expected_output_tokens`"),
            );
        }
    }
}

/// The DAG, built only from references that resolved; `None` (reported)
/// when it has a cycle.
fn seal_dag(
    workflow: &Loaded<Workflow>,
    steps: &IndexMap<String, StepInfo>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Dag> {
    let step_ids: Vec<&str> = steps.keys().map(String::as_str).collect();
    let deps: Vec<BTreeSet<usize>> = steps
        .values()
        .map(|s| {
            s.deps
                .iter()
                .filter_map(|d| steps.get_index_of(d))
                .collect()
        })
        .collect();
    match Dag::build(steps.len(), &deps) {
        Ok(dag) => Some(dag),
        Err(cycles) => {
            for c in cycles {
                let names: Vec<&str> = c.0.iter().map(|&i| step_ids[i]).collect();
                let first = names[0];
                let shown = if names.len() == 1 {
                    format!("{first} → {first}")
                } else {
                    format!("{} → {first}", names.join(" → "))
                };
                diags.push(
                    Diagnostic::error("dependency-cycle", format!("dependency cycle: {shown}"))
                        .at(workflow.doc.key_span(&pointer(["steps", first])))
                        .with_label("each step here waits for the next one")
                        .with_help("a step reads another's output through `steps.<id>.output` or `needs`; break the cycle by removing one of these references"),
                );
            }
            None
        }
    }
}

struct Ctx<'a> {
    globals: &'a BTreeSet<String>,
    doc: &'a Document,
    id: &'a str,
    what: &'a str,
    item_ok: bool,
    /// The step has `retrieve` and this is its prompt or system prompt.
    retrieved_ok: bool,
    steps: &'a IndexMap<String, Step>,
    input_names: &'a [&'a str],
    /// The inputs declared `stream: true`.
    streamed: &'a [&'a str],
    /// This is the step's `for_each` and it is exactly `inputs.NAME`: the
    /// one way a streamed input may be read.
    whole_for_each: Option<&'a str>,
}

impl Ctx<'_> {
    fn step_ids(&self) -> impl Iterator<Item = &str> + Clone {
        self.steps.keys().map(String::as_str)
    }
}

fn check_reference(
    r: &str,
    source: &Source,
    ctx: &Ctx<'_>,
    info: &mut StepInfo,
    diags: &mut Vec<Diagnostic>,
) {
    let parts = template::split(r);
    let undefined = |msg: String, help: String| {
        Diagnostic::error("undefined-variable", msg)
            .at(source.span_of_name(ctx.doc, r))
            .with_label("not defined")
            .with_help(help)
    };
    match parts.as_slice() {
        ["inputs"] if !ctx.streamed.is_empty() => diags.push(streamed_read(r, source, ctx)),
        ["inputs", name, ..]
            if ctx.streamed.contains(name) && ctx.whole_for_each != Some(*name) =>
        {
            diags.push(streamed_read(r, source, ctx));
        }
        ["inputs"] => {
            // The whole mapping is read (e.g. `inputs | tojson`).
            info.reads_inputs
                .extend(ctx.input_names.iter().map(|s| (*s).to_owned()));
        }
        ["inputs", name, ..] => {
            if ctx.input_names.contains(name) {
                info.reads_inputs.insert((*name).to_owned());
            } else {
                diags.push(undefined(
                    format!(
                        "undefined input `{name}` in {} of step `{}`",
                        ctx.what, ctx.id
                    ),
                    closest(name, ctx.input_names.iter().copied()).map_or_else(
                        || {
                            format!(
                                "declared inputs: {}; declare it under `inputs:`",
                                one_of(ctx.input_names.iter().copied())
                            )
                        },
                        |c| format!("did you mean `inputs.{c}`?"),
                    ),
                ));
            }
        }
        ["steps", step, rest @ ..] => {
            if !ctx.steps.contains_key(*step) {
                diags.push(undefined(
                    format!("unknown step `{step}` in {} of step `{}`", ctx.what, ctx.id),
                    did_you_mean(step, ctx.step_ids())
                        .unwrap_or_else(|| format!("steps are {}", one_of(ctx.step_ids()))),
                ));
            } else if *step == ctx.id {
                diags.push(
                    Diagnostic::error(
                        "self-dependency",
                        format!("step `{}` reads its own output", ctx.id),
                    )
                    .at(source.span_of_name(ctx.doc, r))
                    .with_help("a step can read only the outputs of other steps"),
                );
            } else if rest.first().is_some_and(|f| *f != "output") {
                diags.push(undefined(
                    format!(
                        "`{r}` in {} of step `{}`: a step has only `output`",
                        ctx.what, ctx.id
                    ),
                    format!("write `steps.{step}.output`"),
                ));
            } else {
                info.reads_steps.insert((*step).to_owned());
                info.deps.insert((*step).to_owned());
            }
        }
        ["steps"] => diags.push(
            Diagnostic::error(
                "dynamic-step-reference",
                format!("{} of step `{}` reads `steps` as a whole", ctx.what, ctx.id),
            )
            .at(source.span_of_name(ctx.doc, "steps"))
            .with_help(
                "name the step: `steps.<id>.output`, so its dependencies are known before the run",
            ),
        ),
        ["item", ..] if ctx.item_ok => {}
        ["item", ..] => diags.push(undefined(
            format!(
                "`item` in {} of step `{}`, which has no `for_each`",
                ctx.what, ctx.id
            ),
            "`item` is the current element of `for_each`; add `for_each:` to the step".to_owned(),
        )),
        ["retrieved", ..] if ctx.retrieved_ok => {}
        ["retrieved", ..] => diags.push(undefined(
            format!(
                "`retrieved` in {} of step `{}`, which has no `retrieve`",
                ctx.what, ctx.id
            ),
            "`retrieved` is the list of chunks `retrieve:` found; add `retrieve: {from: SET, query: ...}` to the step".to_owned(),
        )),
        [root, ..] if ctx.globals.contains(*root) => {}
        // Removed builtins (`debug`) are reported by the template scan.
        [root, ..] if template::REMOVED_FUNCTIONS.contains(root) => {}
        _ => diags.push(undefined(
            format!(
                "undefined variable `{r}` in {} of step `{}`",
                ctx.what, ctx.id
            ),
            template::hint_for_unknown_root(
                r,
                ctx.input_names.iter().copied(),
                ctx.step_ids(),
            ),
        )),
    }
}

/// A streamed input read other than as a step's whole `for_each`: its
/// items are never in memory together, so nothing else can read them.
fn streamed_read(r: &str, source: &Source, ctx: &Ctx<'_>) -> Diagnostic {
    let name = match template::split(r).as_slice() {
        [_, name, ..] => (*name).to_owned(),
        _ => ctx.streamed.join("`, `"),
    };
    Diagnostic::error(
        "streamed-input",
        format!(
            "{} of step `{}` reads `{r}`, but input `{name}` is streamed",
            ctx.what, ctx.id
        ),
    )
    .at(source.span_of_name(ctx.doc, r))
    .with_label("read here")
    .with_help(format!(
        "a streamed input (`stream: true`) is read a line at a time, only as a whole list: `for_each: inputs.{name}`, each line then `item`; remove `stream: true` to read it otherwise"
    ))
}

fn check_inputs(w: &Workflow, doc: &Document, diags: &mut Vec<Diagnostic>) {
    for (name, decl) in &w.inputs {
        if decl.stream && decl.kind != crate::workflow::InputType::Array {
            diags.push(
                Diagnostic::error(
                    "input-type",
                    format!(
                        "input `{name}` is of type {}: only an array can be streamed",
                        decl.kind.name()
                    ),
                )
                .at(doc.span(&pointer(["inputs", name.as_str(), "stream"])))
                .with_help(
                    "`stream: true` goes with `type: array` (a JSON Lines file, one item per line)",
                ),
            );
        }
        for key in ["default", "example"] {
            let value = if key == "default" {
                &decl.default
            } else {
                &decl.example
            };
            if let Some(v) = value {
                if decl.kind.is_attachment() {
                    diags.push(
                        Diagnostic::error(
                            "input-type",
                            format!(
                                "input `{name}` is of type {}: it has no {key}",
                                decl.kind.name()
                            ),
                        )
                        .at(doc.span(&pointer(["inputs", name.as_str(), key])))
                        .with_help(format!(
                            "an {} input is a file given with --input {name}=@PATH (in a suite, a path relative to the suite); remove `{key}:`",
                            decl.kind.name()
                        )),
                    );
                } else if !decl.kind.accepts(v) {
                    diags.push(
                        Diagnostic::error(
                            "input-type",
                            format!(
                                "the {key} of input `{name}` is not of type {}",
                                decl.kind.name()
                            ),
                        )
                        .at(doc.span(&pointer(["inputs", name.as_str(), key])))
                        .with_help(format!(
                            "give a {} value or change `type`",
                            decl.kind.name()
                        )),
                    );
                }
            }
        }
    }
}

/// Reads a prompt file, refusing paths that leave the project folder.
fn read_prompt_file(
    rel: &str,
    dir: &Path,
    root: &Path,
    doc: &Document,
    ptr: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Source> {
    let path = dir.join(rel);
    let at = doc.span(ptr);
    let root_lexical = normalize(&std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()));
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let outside = |why: &str| {
        Diagnostic::error("prompt-file-outside-project", format!("prompt file `{rel}` is outside the project"))
            .at(at.clone())
            .with_label(why.to_owned())
            .with_help("prompt files must be inside the project folder (the nearest folder with .git); move the file into the project")
    };
    // First lexically, so `../../etc/passwd` is refused whether or not it
    // exists; then after resolving symlinks, so a link cannot smuggle it out.
    let lexical = normalize(&std::path::absolute(&path).unwrap_or_else(|_| path.clone()));
    if !lexical.starts_with(&root) && !lexical.starts_with(&root_lexical) {
        diags.push(outside("this path leads out of the project folder"));
        return None;
    }
    let canonical = match std::fs::canonicalize(&path) {
        Ok(p) => p,
        Err(err) => {
            diags.push(
                Diagnostic::error(
                    "prompt-file",
                    format!("cannot read prompt file `{rel}`: {}", err_reason(&err)),
                )
                .at(at)
                .with_help("the path is relative to the workflow file"),
            );
            return None;
        }
    };
    if !canonical.starts_with(&root) {
        diags.push(outside(
            "resolves (through a link) outside the project folder",
        ));
        return None;
    }
    // Read what was checked: the resolved path, not the link again.
    match SourceFile::read_resolved(&path, &canonical) {
        Ok(file) => Some(Source {
            text: file.text.to_string(),
            origin: Origin::File(file),
            is_expression: false,
        }),
        Err(d) => {
            diags.push(d.at(at));
            None
        }
    }
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn err_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => err.to_string(),
    }
}

/// Every step's `task` is a known one ([`KNOWN_TASKS`]), one the workflow
/// declares (`tasks:`), or one `policy_tasks` adds (the policy's `tasks:`
/// and the tasks its rules name). An unknown task would silently fall to
/// the policy's catch-all rule; it needs the policy, so it is checked where
/// a workflow meets one (`check`, `plan`, `run`), not in [`analyze`].
pub fn check_tasks(analysis: &Analysis, policy_tasks: &BTreeSet<String>) -> Vec<Diagnostic> {
    let w = &analysis.workflow.value;
    let known = || {
        KNOWN_TASKS
            .iter()
            .copied()
            .chain(w.tasks.iter().map(String::as_str))
            .chain(policy_tasks.iter().map(String::as_str))
    };
    w.steps
        .iter()
        .filter(|(_, step)| !known().any(|k| k == step.task))
        .map(|(id, step)| {
            unknown_task(&step.task, known(), "the workflow").at(analysis.doc().span(&pointer([
                "steps",
                id.as_str(),
                "task",
            ])))
        })
        .collect()
}
