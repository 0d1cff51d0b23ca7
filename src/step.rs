//! A step's meaning, in one place: whether it runs (`when`), the calls it
//! makes (`for_each`), what each call says (its system prompt and prompt,
//! rendered with exactly the context [`StepInfo::context`] builds), the
//! sensitivity label of what was rendered, its tags (workflow's and step's)
//! and the facts routing decides on.
//!
//! `plan` calls [`expand`] with estimated upstream outputs
//! ([`Upstream::Estimated`]), `run` with the real ones ([`Upstream::Real`]).
//! Neither decides any of this itself, so the dry run predicts the run: the
//! only differences are the ones written down here, each keyed on which kind
//! of upstream values the caller has:
//!
//! - a `when` or `for_each` that reads upstream outputs cannot be decided
//!   from estimates: the plan calls the step conditional, and fans out over
//!   the list the estimates give (one stand-in item if they give none);
//! - a skipped step is still rendered for the plan (so `plan` checks its
//!   templates and shows where it would go) but not for the run.
//!
//! Plan-only concerns (estimates, token ranges, prices, tier shares in
//! execution order) stay in `plan`; run-only ones (calls, retries, the
//! budget) stay in `run`.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::analyze::{Analysis, RenderContext, StepInfo};
use crate::attachment::{self, Attached};
use crate::context::history::{self, ChatMessage};
use crate::context::retrieval::{self, Retrieved};
use crate::context::{ContextSpec, Effect, InputCut, budget};
use crate::diagnostic::Diagnostic;
use crate::policy::Policy;
use crate::route::Facts;
use crate::streamed::StreamedList;
use crate::template::{self, ForEachList, Source};
use crate::tokens::{self, Tokenizer};
use crate::workflow::{InputType, Step, Workflow};
use crate::yaml::Document;

/// The tokenizer rule conditions (`input_tokens`) are evaluated with, so a
/// rule means the same thing whichever model it picks.
pub const RULE_TOKENIZER: Tokenizer = Tokenizer::O200kBase;

/// What a step's templates see of the steps it reads.
pub enum Upstream<'a> {
    /// The run: the real outputs of the steps it reads (a missing one, as
    /// of a failed `continue_on_error` step, is null).
    Real(&'a Map<String, Value>),
    /// The plan: the outputs are not known yet.
    Estimated(&'a dyn Estimates),
}

/// Stand-ins for upstream outputs while planning.
pub trait Estimates {
    /// A value shaped like step `dep`'s output.
    fn output(&self, dep: &str) -> Value;
    /// The one item a `for_each` over step `dep`'s output is planned with
    /// when the list cannot be evaluated over the estimates.
    fn unknown_item(&self, dep: &str) -> Value;
}

/// Whether a step runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum When {
    Runs,
    /// Runs only if a condition known at run time holds (plan only: the run
    /// always knows).
    Conditional(String),
    Skipped(String),
}

impl When {
    pub fn is_skipped(&self) -> bool {
        matches!(self, When::Skipped(_))
    }
}

/// The size of a step's fan-out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanOut {
    pub items: u64,
    /// False when the list comes from a step's output and the values are
    /// estimates (its size is known only at run time).
    pub known: bool,
}

/// One call's rendered text.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedCall {
    pub system: Option<String>,
    /// Chat turns sent before the prompt (a step's `history`), user and
    /// assistant only: its system messages are in `system`.
    pub history: Vec<ChatMessage>,
    pub prompt: String,
    /// The step's attachments, sent with the prompt (every call of the
    /// step sends the same ones). In a plan, an attachment without its
    /// file is estimated from its declared kind.
    pub attachments: Arc<Vec<Attached>>,
    /// Bytes at the start of `prompt` that every call of the step shares
    /// (whole lines; 0 with one call, or when their system prompts differ):
    /// the prefix a provider's prompt cache can serve after the first call.
    pub shared_prefix: usize,
}

impl RenderedCall {
    /// The messages in the order they are sent: the system prompt, if any,
    /// the history's turns, then the prompt.
    pub fn messages(&self) -> impl Iterator<Item = &str> {
        self.system
            .as_deref()
            .into_iter()
            .chain(self.history.iter().map(|m| m.content.as_str()))
            .chain(std::iter::once(self.prompt.as_str()))
    }

    /// Tokens of what a cache breakpoint on the shared prefix covers: the
    /// system prompt, the history's turns and the prompt's shared prefix.
    pub fn prefix_tokens(&self, tok: Tokenizer) -> usize {
        self.system.as_deref().map_or(0, |s| tok.count(s))
            + self
                .history
                .iter()
                .map(|m| tok.count(&m.content))
                .sum::<usize>()
            + self
                .prompt
                .get(..self.shared_prefix)
                .map_or(0, |p| tok.count(p))
    }

    fn len(&self) -> usize {
        self.prompt.len()
            + self.system.as_ref().map_or(0, String::len)
            + self.history.iter().map(|m| m.content.len()).sum::<usize>()
    }
}

/// A step expanded: the decision, its calls, and what routing needs.
///
/// Invariant: the step has no call ([`Expanded::len`] 0) when it makes
/// none (an empty `for_each`, or skipped in a run); otherwise one call per
/// item (one without `for_each`), in item order ([`Expanded::calls`]).
#[derive(Debug)]
pub struct Expanded {
    pub when: When,
    pub fan_out: Option<FanOut>,
    calls: Calls,
    /// The step's effective sensitivity (from the analysis).
    pub level: usize,
    /// The level of what was actually rendered (`sensitivity::of_context`
    /// over the step's context, which every call's shares; never below
    /// `level`): the label the requests carry to the provider boundary.
    pub rendered_level: usize,
    /// The workflow's tags and the step's, merged.
    pub tags: BTreeSet<String>,
    /// What context management did (a step with `context:` that makes calls).
    pub context: Option<Effect>,
    /// What the step's `retrieve` did: the documents' tokens and the
    /// retrieved ones (the plan's before and after).
    pub retrieval: Option<retrieval::Stats>,
    /// What the step's `history` did: turns sent, summarized or dropped,
    /// and their tokens before and after.
    pub history: Option<history::Stats>,
    /// Each of the policy's routers' score of the calls (the highest of a
    /// fan-out's), by `Policy::routers` slot: what a `router:` rule
    /// condition compares, the same in plan and run.
    pub router_scores: Vec<f64>,
    /// The step's attachments (`attachments:`), what routing checks each
    /// candidate can take.
    pub attachments: Arc<Vec<Attached>>,
    /// The bytes the calls' messages render to, together (what a plan's
    /// bound on rendered text counts).
    rendered_bytes: usize,
    /// The largest call's token count, per tokenizer, counted on first use
    /// for every tokenizer in `tokenizers` in one pass over the calls:
    /// routing asks per call and per candidate, and recounting every item
    /// each time made a fan-out quadratic.
    max_tokens: [OnceLock<u64>; 3],
    /// The tokenizers of the policy's models, and the rules'.
    tokenizers: Vec<Tokenizer>,
}

/// A step's calls: held, or rendered again when they are made.
///
/// A fan-out's calls are rendered once by [`expand`] for what it keeps of
/// them (router scores, shared prefix, bytes; an item that fails to render
/// is the step's error there), and then again one at a time
/// ([`Expanded::calls`]) by whoever needs their text: the token counts
/// (`max_tokens`, the plan's) and the run's calls. Holding every item's
/// prompt until the step's calls were made cost memory in proportion to
/// the fan-out. Rendering is deterministic (the same compiled template over
/// the same context and item), so a later rendering is the first one's text.
enum Calls {
    /// Every call held: a single call, and a step whose `context:` trims
    /// or chunks its calls or that sends a `history` (their calls are
    /// bounded: a chunked text, a trimmed prompt).
    Kept(Vec<RenderedCall>),
    /// A fan-out over more than one item, rendered on demand.
    Lazy(Box<Lazy>),
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Calls::Kept(calls) => f.debug_tuple("Kept").field(calls).finish(),
            Calls::Lazy(l) => f
                .debug_struct("Lazy")
                .field("items", &l.items.len())
                .field("streamed", &matches!(l.items, ItemSource::Streamed { .. }))
                .field("first", &l.first)
                .finish_non_exhaustive(),
        }
    }
}

/// What rendering a fan-out's calls again takes: the templates, the
/// step's context (shared by every item) and the items.
struct Lazy {
    /// The analysis's environment (a clone shares its functions; the
    /// templates are compiled once per pass over the calls).
    env: minijinja::Environment<'static>,
    step: String,
    system: Option<Source>,
    prompt: Source,
    ctx: RenderContext,
    items: ItemSource,
    /// The first call as sent (shared prefix and attachments set): what the
    /// plan hashes and measures for prompt caching.
    first: RenderedCall,
}

/// Where a fan-out's items come from.
enum ItemSource {
    /// Evaluated from the step's context (`None`: the one call of a step
    /// without `for_each`).
    Held(Vec<Option<Item>>),
    /// A streamed input given as a file ([`crate::streamed`]): read again
    /// on each pass, each block checked against the first reading.
    Streamed {
        list: Arc<StreamedList>,
        input: String,
        /// The step's `for_each`, where a failed reading is located.
        for_each: Source,
    },
}

/// One pass over a step's items, in order.
type ItemIter<'a> = Box<dyn Iterator<Item = Result<Cow<'a, Option<Item>>, StepError>> + Send + 'a>;

/// A `for_each` item as templates see it: the evaluated list's own element
/// (sharing its data with the context), or a streamed line's value.
type Item = minijinja::Value;

impl ItemSource {
    fn len(&self) -> usize {
        match self {
            ItemSource::Held(items) => items.len(),
            ItemSource::Streamed { list, .. } => usize::try_from(list.len()).unwrap_or(usize::MAX),
        }
    }

    fn iter(&self) -> ItemIter<'_> {
        match self {
            ItemSource::Held(items) => Box::new(items.iter().map(|i| Ok(Cow::Borrowed(i)))),
            ItemSource::Streamed {
                list,
                input,
                for_each,
            } => Box::new(list.items().map(move |item| {
                item.map(|v| Cow::Owned(Some(Item::from_serialize(&v))))
                    .map_err(|e| StepError::Invalid {
                        source: for_each.clone(),
                        message: format!(
                            "streamed input `{input}` ({}): {e}",
                            list.path().display()
                        ),
                        help: e.hint(),
                    })
            })),
        }
    }

    /// The bound on what the step's calls render together: a held fan-out's
    /// is what memory and a plan can take; a streamed one's calls are never
    /// held, so its bound is on the work alone.
    fn rendered_bound(&self) -> usize {
        match self {
            ItemSource::Held(_) => template::MAX_STEP_RENDERED_BYTES,
            ItemSource::Streamed { .. } => template::MAX_STREAMED_STEP_RENDERED_BYTES,
        }
    }
}

/// The calls of a step in item order ([`Expanded::calls`]). A call of a
/// streamed list can fail: its file is read again and may have changed.
pub struct CallIter<'a> {
    inner: IterInner<'a>,
}

enum IterInner<'a> {
    Kept(std::slice::Iter<'a, RenderedCall>),
    Lazy {
        lazy: &'a Lazy,
        templates: Templates<'a>,
        items: ItemIter<'a>,
        failed: bool,
    },
}

impl<'a> Iterator for CallIter<'a> {
    type Item = Result<Cow<'a, RenderedCall>, StepError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            IterInner::Kept(calls) => calls.next().map(|c| Ok(Cow::Borrowed(c))),
            IterInner::Lazy {
                lazy,
                templates,
                items,
                failed,
            } => {
                if *failed {
                    return None;
                }
                let call = items.next()?.and_then(|item| {
                    // `expand` rendered this item with the same templates
                    // and context (and, for a streamed list, the same
                    // checked bytes): rendering is deterministic, so this
                    // fails only if that invariant is broken — an error,
                    // not a panic, all the same.
                    render_call(templates, &lazy.ctx, item.as_ref().as_ref(), &NO_TURNS)
                        .map_err(|f| lazy.failed(f))
                });
                let Ok(mut call) = call else {
                    *failed = true;
                    return Some(call.map(Cow::Owned));
                };
                call.shared_prefix = lazy.first.shared_prefix;
                call.attachments = Arc::clone(&lazy.first.attachments);
                Some(Ok(Cow::Owned(call)))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            IterInner::Kept(calls) => calls.size_hint(),
            IterInner::Lazy { items, .. } => items.size_hint(),
        }
    }
}

impl Lazy {
    fn failed(&self, f: Failed) -> StepError {
        let (source, error, what) = match f {
            Failed::System(e) => (
                self.system.clone().expect("a system prompt failed"),
                e,
                "the system prompt",
            ),
            Failed::Prompt(e) => (self.prompt.clone(), e, "the prompt"),
        };
        StepError::Template {
            step: self.step.clone(),
            source,
            error,
            what,
        }
    }
}

/// A step without `history` sends no turns.
static NO_TURNS: history::Window = history::Window {
    system: Vec::new(),
    older: Vec::new(),
    recent: Vec::new(),
};

impl Expanded {
    /// One call made on a step's behalf that no workflow declares (a
    /// cascade's judge): it runs, at the `level` of what it reads.
    pub fn single(call: RenderedCall, level: usize) -> Expanded {
        Expanded {
            when: When::Runs,
            fan_out: None,
            rendered_bytes: call.len(),
            calls: Calls::Kept(vec![call]),
            level,
            rendered_level: level,
            tags: BTreeSet::new(),
            context: None,
            retrieval: None,
            history: None,
            router_scores: Vec::new(),
            attachments: Arc::default(),
            max_tokens: Default::default(),
            tokenizers: Vec::new(),
        }
    }

    /// How many calls were rendered: 0 when the step makes none.
    pub fn len(&self) -> usize {
        match &self.calls {
            Calls::Kept(calls) => calls.len(),
            Calls::Lazy(l) => l.items.len(),
        }
    }

    /// The step makes no call.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first call, without rendering the others.
    pub fn first(&self) -> Option<&RenderedCall> {
        match &self.calls {
            Calls::Kept(calls) => calls.first(),
            Calls::Lazy(l) => Some(&l.first),
        }
    }

    /// Every call in item order, each rendered when the iterator reaches
    /// it (a fan-out's are not held: see [`Calls`]). Only a streamed
    /// list's calls can fail (its file changed since `expand` read it);
    /// the iterator ends after an error.
    pub fn calls<'a>(&'a self) -> CallIter<'a> {
        let inner = match &self.calls {
            Calls::Kept(calls) => IterInner::Kept(calls.iter()),
            Calls::Lazy(l) => {
                let compile = |text: &'a str| {
                    template::compile(&l.env, text)
                        // `expand` compiled the same text in the same environment.
                        .unwrap_or_else(|e| panic!("a template compiles again: {e}"))
                };
                IterInner::Lazy {
                    lazy: l,
                    templates: Templates {
                        system: l.system.as_ref().map(|s| compile(&s.text)),
                        prompt: compile(&l.prompt.text),
                    },
                    items: l.items.iter(),
                    failed: false,
                }
            }
        };
        CallIter { inner }
    }

    /// The step's items come from a streamed input's file: its calls are
    /// neither held nor bounded as a plan's are.
    pub fn is_streamed(&self) -> bool {
        matches!(&self.calls, Calls::Lazy(l) if matches!(l.items, ItemSource::Streamed { .. }))
    }

    /// The bytes of every call's messages, together.
    pub fn rendered_bytes(&self) -> usize {
        self.rendered_bytes
    }

    /// Calls the step makes when it runs: one per item with `for_each`.
    pub fn call_count(&self) -> u64 {
        self.fan_out.as_ref().map_or(1, |f| f.items)
    }

    /// Tokens of the largest call by `tok` (chat overhead included). The
    /// route of a fan-out is decided by its largest item.
    pub fn max_tokens(&self, tok: Tokenizer) -> u64 {
        let slot = token_slot(tok);
        if let Some(&n) = self.max_tokens[slot].get() {
            return n;
        }
        // Every tokenizer routing may ask about, in one pass: a fan-out's
        // calls are rendered again for it.
        let mut toks = self.tokenizers.clone();
        if !toks.contains(&tok) {
            toks.push(tok);
        }
        let mut max = vec![0u64; toks.len()];
        for c in self.calls() {
            let Ok(c) = c else {
                // Only a streamed list can fail here, and a run counts its
                // calls for every tokenizer of the policy while `expand`
                // reads it; a call that cannot be read again fits nothing.
                return u64::MAX;
            };
            raise_to(&mut max, &toks, &c);
        }
        for (t, m) in toks.iter().zip(max) {
            // Another thread may have counted the same first: same number.
            let _ = self.max_tokens[token_slot(*t)].set(m);
        }
        self.max_tokens[slot].get().copied().unwrap_or(0)
    }

    /// The facts routing decides on. `input_tokens` is the largest call as
    /// rule conditions count it ([`RULE_TOKENIZER`]): the plan counts
    /// estimates of upstream outputs in, the run [`Expanded::max_tokens`].
    pub fn facts<'a>(&'a self, step: &'a Step, input_tokens: u64) -> Facts<'a> {
        Facts {
            task: &step.task,
            sensitivity: self.level,
            input_tokens,
            reasoning: step.reasoning,
            latency: step.latency,
            tags: &self.tags,
            pin: step.model.as_deref(),
            max_output_tokens: u64::from(step.max_output_tokens()),
            calls: self.call_count(),
            router_scores: &self.router_scores,
            attachments: &self.attachments,
        }
    }
}

/// Raises each tokenizer's largest call (`max`, by `toks`) to `call`'s
/// count: the one count both passes that find the largest call make.
fn raise_to(max: &mut [u64], toks: &[Tokenizer], call: &RenderedCall) {
    let messages: Vec<&str> = call.messages().collect();
    for (m, t) in max.iter_mut().zip(toks) {
        *m = (*m).max(tokens::count_chat(*t, &messages) as u64);
    }
}

/// Where [`Expanded::max_tokens`] keeps a tokenizer's count.
fn token_slot(tok: Tokenizer) -> usize {
    match tok {
        Tokenizer::O200kBase => 0,
        Tokenizer::Cl100kBase => 1,
        Tokenizer::Estimate => 2,
    }
}

/// The workflow's tags and the step's, merged.
pub fn tags(workflow: &Workflow, step: &Step) -> BTreeSet<String> {
    workflow
        .tags
        .iter()
        .chain(step.tags.iter())
        .cloned()
        .collect()
}

/// Which step, with what values.
pub struct Scope<'a> {
    pub analysis: &'a Analysis,
    pub policy: &'a Policy,
    /// The step's index in `analysis.steps`.
    pub index: usize,
    /// Every input's value; the context takes only what the step reads.
    pub inputs: &'a Map<String, Value>,
    /// The bytes of the `image` / `file` inputs that were given (a plan
    /// may have none: it routes and estimates by the declared kind).
    pub files: &'a crate::inputs::Files,
    /// The streamed inputs that were given as files.
    pub streams: &'a crate::inputs::Streams,
    /// Effective sensitivity levels, by step index.
    pub levels: &'a [usize],
    pub upstream: Upstream<'a>,
}

impl Scope<'_> {
    fn info(&self) -> &StepInfo {
        &self.analysis.steps[self.index]
    }

    /// The step's render context: exactly what the analysis says the step
    /// reads. Built once per expansion; each item's context adds only the
    /// item ([`RenderContext::for_item`]).
    fn context(&self) -> RenderContext {
        self.context_with(self.inputs)
    }

    /// The same context over other input values (trimmed ones).
    fn context_with(&self, inputs: &Map<String, Value>) -> RenderContext {
        self.info().context(inputs, |dep| match &self.upstream {
            Upstream::Real(outputs) => outputs.get(dep).cloned().unwrap_or(Value::Null),
            Upstream::Estimated(e) => e.output(dep),
        })
    }

    /// The estimates `s` reads, if it reads upstream outputs and they are
    /// estimates (only then does it matter: real values can be evaluated).
    fn estimates_read(&self, s: &Source) -> Result<Option<&dyn Estimates>, StepError> {
        let Upstream::Estimated(e) = &self.upstream else {
            return Ok(None);
        };
        let refs = s
            .references(&self.analysis.env)
            .map_err(|e| self.template(s, e, "an expression"))?;
        Ok(refs.iter().any(|r| r.starts_with("steps.")).then_some(*e))
    }

    fn template(&self, source: &Source, error: minijinja::Error, what: &'static str) -> StepError {
        StepError::Template {
            step: self.info().id.clone(),
            source: source.clone(),
            error,
            what,
        }
    }
}

/// Why a step cannot be expanded: bad input, located in its template.
#[derive(Debug)]
pub enum StepError {
    /// A template or expression failed to evaluate or render.
    Template {
        step: String,
        source: Source,
        error: minijinja::Error,
        /// Which of the step's templates (`` `when` ``, `the prompt`, …).
        what: &'static str,
    },
    /// It evaluated, to something the step cannot use.
    Invalid {
        source: Source,
        message: String,
        help: &'static str,
    },
    /// The step's calls cannot be brought under its `context` budget;
    /// located at the setting (a JSON pointer into the workflow).
    Context {
        ptr: String,
        message: String,
        help: String,
    },
}

impl StepError {
    /// The located diagnostic (`plan` reports it; `run` shows its message).
    pub fn diagnostic(&self, doc: &Document) -> Diagnostic {
        match self {
            StepError::Template {
                step,
                source,
                error,
                what,
            } => source.error(doc, error, &format!("{what} of step `{step}`")),
            StepError::Invalid {
                source,
                message,
                help,
            } => Diagnostic::error("plan", message.clone())
                .at(source.span(doc, 0, source.text.len()))
                .with_help(*help),
            StepError::Context { ptr, message, help } => {
                Diagnostic::error("context-budget", message.clone())
                    .at(doc.span(ptr))
                    .with_help(help.clone())
            }
        }
    }

    /// The one wording of the error, for a step's report.
    pub fn message(&self, doc: &Document) -> String {
        self.diagnostic(doc).message
    }
}

/// Expands a step: decides `when` (unless `inherited`, what its
/// dependencies already decided, skips it), expands `for_each` and renders
/// every call, within the bounds of [`template`].
pub fn expand(scope: &Scope<'_>, inherited: When) -> Result<Expanded, StepError> {
    let info = scope.info();
    let step = &scope.analysis.workflow.value.steps[&info.id];
    let level = scope.levels[scope.index];
    let mut out = Expanded {
        when: inherited,
        fan_out: None,
        calls: Calls::Kept(Vec::new()),
        rendered_bytes: 0,
        level,
        rendered_level: level,
        tags: tags(&scope.analysis.workflow.value, step),
        context: None,
        retrieval: None,
        history: None,
        router_scores: Vec::new(),
        attachments: Arc::new(attached(scope, step)?),
        max_tokens: Default::default(),
        tokenizers: std::iter::once(RULE_TOKENIZER)
            .chain(scope.policy.models.values().map(|m| m.tokenizer))
            .fold(Vec::new(), |mut v, t| {
                if !v.contains(&t) {
                    v.push(t);
                }
                v
            }),
    };
    let ctx = scope.context();
    let base = ctx.base();
    out.when = decide(scope, out.when, &base)?;
    if out.when.is_skipped() && matches!(scope.upstream, Upstream::Real(_)) {
        return Ok(out);
    }
    // What the step receives decides its level: the labels of the chunks
    // it retrieved, not of every document it could have.
    let mut received = level;
    let ctx = match retrieve(scope, &base)? {
        Some(found) => {
            received = received.max(found.level);
            out.level = received;
            out.retrieval = Some(found.stats);
            ctx.with_retrieved(&found.chunks)
        }
        None => ctx,
    };
    let (turns, history_stats) = turns(scope)?;
    out.history = history_stats;
    let found = items(scope, &base)?;
    if let Items::List(_, fan_out) | Items::Stream(_, fan_out) = &found {
        out.fan_out = Some(fan_out.clone());
        if fan_out.items == 0 {
            // Nothing to render: the step makes no call.
            if !out.when.is_skipped() {
                out.when = When::Skipped("for_each list is empty".to_owned());
            }
            return Ok(out);
        }
    }
    let items = match found {
        Items::One => vec![None],
        Items::List(list, _) => list.into_iter().map(Some).collect(),
        Items::Stream(list, _) => {
            // The analysis refuses `context:` and `history` on a streamed
            // step: their calls are kept.
            let source = ItemSource::Streamed {
                list,
                input: info.streamed.clone().unwrap_or_default(),
                for_each: info.for_each.clone().expect("a streamed step has for_each"),
            };
            return render_lazily(scope, out, ctx, source, received);
        }
    };
    if items.len() > 1 && step.context.is_none() && step.history.is_none() {
        return render_lazily(scope, out, ctx, ItemSource::Held(items), received);
    }
    let (mut calls, rendered_level) = render(scope, &ctx, &items, &turns)?;
    out.rendered_level = rendered_level.max(received);
    if let Some(spec) = &step.context {
        let (managed, effect) = manage(scope, spec, &ctx, &items, &turns, calls)?;
        calls = managed;
        out.context = Some(effect);
    }
    let mut tally = FirstPass::new(scope);
    for c in &mut calls {
        c.attachments = Arc::clone(&out.attachments);
        tally.add(c);
    }
    tally.finish(&mut out);
    out.calls = Calls::Kept(calls);
    Ok(out)
}

/// A fan-out's calls, rendered once for what routing and the plan need
/// (kept as totals), then left to be rendered again when they are made
/// ([`Calls::Lazy`]). Every item is rendered here, so an item that cannot
/// be is this step's error, as if its calls were kept.
///
/// A run also counts a streamed list's tokens here, for every tokenizer
/// routing asks about ([`Expanded::max_tokens`]): reading the file again
/// for them would be one more pass that could find it changed.
fn render_lazily(
    scope: &Scope<'_>,
    mut out: Expanded,
    ctx: RenderContext,
    items: ItemSource,
    received: usize,
) -> Result<Expanded, StepError> {
    let mut tally = FirstPass::new(scope);
    let mut prefix = SharedPrefix::default();
    let mut first = None;
    let count =
        matches!(items, ItemSource::Streamed { .. }) && matches!(scope.upstream, Upstream::Real(_));
    let toks = if count {
        out.tokenizers.clone()
    } else {
        Vec::new()
    };
    let mut max = vec![0u64; toks.len()];
    let bound = items.rendered_bound();
    let rendered_level = render_each(scope, &ctx, items.iter(), &NO_TURNS, bound, &mut |call| {
        tally.add(&call);
        prefix.add(&call);
        if !toks.is_empty() {
            raise_to(&mut max, &toks, &call);
        }
        if first.is_none() {
            first = Some(call);
        }
    })?;
    for (t, m) in toks.iter().zip(max) {
        let _ = out.max_tokens[token_slot(*t)].set(m);
    }
    out.rendered_level = rendered_level.max(received);
    tally.finish(&mut out);
    let mut first = first.expect("a fan-out of at least one item renders a first call");
    first.shared_prefix = prefix.finish();
    first.attachments = Arc::clone(&out.attachments);
    let info = scope.info();
    out.calls = Calls::Lazy(Box::new(Lazy {
        env: scope.analysis.env.clone(),
        step: info.id.clone(),
        system: info.system.clone(),
        prompt: info.prompt.clone(),
        ctx,
        items,
        first,
    }));
    Ok(out)
}

/// What `expand` keeps of a step's calls as it renders them: their bytes
/// and each router's highest score. (Tokens are counted later, once the
/// step and the plan are known to be within their bounds on rendered
/// text: counting a huge prompt is the slow part.)
struct FirstPass<'p> {
    policy: &'p Policy,
    bytes: usize,
    router_scores: Vec<f64>,
}

impl<'p> FirstPass<'p> {
    fn new(scope: &Scope<'p>) -> FirstPass<'p> {
        FirstPass {
            policy: scope.policy,
            bytes: 0,
            router_scores: Vec::new(),
        }
    }

    fn add(&mut self, call: &RenderedCall) {
        self.bytes += call.len();
        if !self.policy.routers.is_empty() {
            // One call's scores, the highest kept router by router: the
            // same as scoring every call at once.
            let scores = self
                .policy
                .router_scores(std::iter::once(crate::router::text(call.messages())));
            if self.router_scores.is_empty() {
                self.router_scores = scores;
            } else {
                for (have, s) in self.router_scores.iter_mut().zip(scores) {
                    *have = have.max(s);
                }
            }
        }
    }

    fn finish(self, out: &mut Expanded) {
        out.rendered_bytes = self.bytes;
        out.router_scores = self.router_scores;
    }
}

/// The step's attachments with their bytes; in a run, an attachment
/// without its file (a resumed run whose journal holds only the
/// descriptor) is an error rather than a call without it.
fn attached(scope: &Scope<'_>, step: &Step) -> Result<Vec<Attached>, StepError> {
    let w = &scope.analysis.workflow.value;
    let mut out = Vec::with_capacity(step.attachments.len());
    for name in &step.attachments {
        let kind = match w.inputs.get(name).map(|d| d.kind) {
            Some(InputType::Image) => attachment::Kind::Image,
            Some(InputType::File) => attachment::Kind::Pdf,
            // The analysis refused it.
            _ => continue,
        };
        let file = scope.files.get(name).cloned();
        if file.is_none() && matches!(scope.upstream, Upstream::Real(_)) {
            return Err(StepError::Context {
                ptr: crate::yaml::pointer(["steps", scope.info().id.as_str(), "attachments"]),
                message: format!(
                    "step `{}` attaches input `{name}`, and its file was not given",
                    scope.info().id
                ),
                help: "give every image and file input with --input NAME=@PATH (a resumed run needs them again: the journal keeps no file's bytes)".to_owned(),
            });
        }
        out.push(Attached {
            input: name.clone(),
            kind,
            file,
        });
    }
    Ok(out)
}

/// Input tokens of a call as routing rules count them.
fn rule_tokens(call: &RenderedCall) -> u64 {
    tokens::count_chat(RULE_TOKENIZER, &call.messages().collect::<Vec<_>>()) as u64
}

/// Input tokens of a call as the budget counts them (conservatively).
fn budget_tokens(call: &RenderedCall) -> u64 {
    budget::count_chat(&call.messages().collect::<Vec<_>>()) as u64
}

/// How many times trimming re-renders to fit a prompt that reads a cut
/// input more than once (each pass shrinks by the excess it measured).
const TRIM_PASSES: usize = 4;

/// Context management over a step's rendered calls: the budget check,
/// trimming of the inputs it may cut, and what chunking did. The trimmed
/// values are the same inputs, so the label of what is rendered is
/// unchanged (computed once, over the untrimmed context).
fn manage(
    scope: &Scope<'_>,
    spec: &ContextSpec,
    ctx: &RenderContext,
    items: &[Option<Item>],
    turns: &history::Window,
    calls: Vec<RenderedCall>,
) -> Result<(Vec<RenderedCall>, Effect), StepError> {
    let id = &scope.info().id;
    let before: u64 = calls.iter().map(rule_tokens).sum();
    let mut effect = Effect {
        strategy: "within budget".to_owned(),
        tokens_before: before,
        tokens_after: before,
        cut: Vec::new(),
        chunks: None,
    };
    if let Some(chunk) = &spec.chunk {
        // Before: one call holding the whole input in place of the chunk.
        let doc = scope
            .inputs
            .get(&chunk.input)
            .and_then(Value::as_str)
            .unwrap_or("");
        let first = items
            .first()
            .and_then(|i| i.as_ref())
            .and_then(Item::as_str);
        let one = calls.first().map_or(0, rule_tokens);
        let chunk_tokens = first.map_or(0, |c| RULE_TOKENIZER.count(c)) as u64;
        effect.strategy = "chunk".to_owned();
        effect.chunks = Some(calls.len() as u64);
        effect.tokens_before = one.saturating_sub(chunk_tokens) + RULE_TOKENIZER.count(doc) as u64;
    }
    let Some(max) = spec.max_input_tokens else {
        return Ok((calls, effect));
    };
    let ptr = |key: &str| crate::yaml::pointer(["steps", id.as_str(), "context", key]);
    let largest = calls.iter().map(budget_tokens).max().unwrap_or(0);
    if largest <= max {
        return Ok((calls, effect));
    }
    let Some(trim) = spec.trim() else {
        return Err(StepError::Context {
            ptr: ptr("max_input_tokens"),
            message: format!(
                "a call of step `{id}` takes {largest} input tokens, over its max_input_tokens of {max}"
            ),
            help: "name the input(s) that may be cut (`input: NAME`), or raise max_input_tokens"
                .to_owned(),
        });
    };
    // The texts that may be cut (an optional input not given is not there).
    let cuttable: Vec<(&str, &str)> = spec
        .input
        .iter()
        .filter_map(|n| Some((n.as_str(), scope.inputs.get(n)?.as_str()?)))
        .collect();
    // The part kept intact: every call rendered with the cut inputs empty.
    let mut emptied = scope.inputs.clone();
    for (name, _) in &cuttable {
        emptied.insert((*name).to_owned(), Value::String(String::new()));
    }
    let (fixed_calls, _) = render(
        scope,
        &scope.context_with(&emptied).with_retrieved_of(ctx),
        items,
        turns,
    )?;
    let fixed = fixed_calls.iter().map(budget_tokens).max().unwrap_or(0);
    let reserve = budget::marker_reserve() as u64;
    let room = max.saturating_sub(fixed + reserve * cuttable.len() as u64);
    if room == 0 {
        return Err(StepError::Context {
            ptr: ptr("max_input_tokens"),
            message: format!(
                "the parts of step `{id}`'s prompt kept intact take {fixed} tokens, leaving no room under max_input_tokens of {max}"
            ),
            help: "raise max_input_tokens, or let more inputs be cut".to_owned(),
        });
    }
    let sizes: Vec<usize> = cuttable.iter().map(|(_, t)| budget::count(t)).collect();
    let mut room = room as usize;
    for _ in 0..TRIM_PASSES {
        let shares = budget::share(room, &sizes);
        let mut trimmed = scope.inputs.clone();
        let mut cut = Vec::new();
        for (((name, text), size), share) in cuttable.iter().zip(&sizes).zip(&shares) {
            if size <= share {
                continue;
            }
            let c = budget::cut(text, share + reserve as usize, trim);
            cut.push(InputCut {
                input: (*name).to_owned(),
                tokens_before: c.tokens_before as u64,
                tokens_kept: c.tokens_kept as u64,
            });
            trimmed.insert((*name).to_owned(), Value::String(c.text));
        }
        let (new_calls, _) = render(
            scope,
            &scope.context_with(&trimmed).with_retrieved_of(ctx),
            items,
            turns,
        )?;
        let largest = new_calls.iter().map(budget_tokens).max().unwrap_or(0);
        if largest <= max {
            effect.strategy = match &spec.chunk {
                Some(_) => format!("chunk, trim: {}", trim.name()),
                None => format!("trim: {}", trim.name()),
            };
            effect.tokens_after = new_calls.iter().map(rule_tokens).sum();
            effect.cut = cut;
            return Ok((new_calls, effect));
        }
        // Shrink in proportion: a prompt reading a cut input k times grows
        // k tokens per token kept, and so shrinks k times faster too.
        let used = largest.saturating_sub(fixed).max(1);
        let avail = max.saturating_sub(fixed);
        room = ((room as u64 * avail / used) as usize).min(room.saturating_sub(1));
        if room == 0 {
            break;
        }
    }
    Err(StepError::Context {
        ptr: ptr("input"),
        message: format!("trimming could not bring step `{id}` under max_input_tokens of {max}"),
        help: "a prompt that reads a cut input several times needs more room: read it once, or raise max_input_tokens".to_owned(),
    })
}

/// What a step's `retrieve` found.
struct Found {
    chunks: Vec<Retrieved>,
    /// The highest label among the chunks' documents (in a plan whose query
    /// reads estimated outputs: among every set's, since the run's query,
    /// and so its chunks, are not known yet).
    level: usize,
    stats: retrieval::Stats,
}

/// Runs the step's `retrieve`, if it has one: renders the query, chunks
/// every document of its sets and ranks the chunks with BM25.
fn retrieve(scope: &Scope<'_>, base: &minijinja::Value) -> Result<Option<Found>, StepError> {
    let info = scope.info();
    let a = scope.analysis;
    let Some(r) = &a.workflow.value.steps[&info.id].retrieve else {
        return Ok(None);
    };
    let Some(q) = &info.retrieve_query else {
        return Ok(None);
    };
    let invalid = |message: String, help: &'static str| StepError::Invalid {
        source: q.clone(),
        message,
        help,
    };
    let query = template::render(&a.env, &q.text, base)
        .map_err(|e| scope.template(q, e, "the retrieval query"))?;
    let mut docs = Vec::new();
    let mut doc_levels = Vec::new();
    for set in &r.from {
        let level = crate::sensitivity::documents_level(a, scope.policy, set);
        let of_set: Vec<std::borrow::Cow<'_, retrieval::Document>> = match a
            .workflow
            .value
            .documents
            .get(set)
            .and_then(|d| d.input.as_ref())
        {
            Some(input) => {
                let value = scope.inputs.get(input).unwrap_or(&Value::Null);
                retrieval::from_input(input, value)
                    .map_err(|m| {
                        invalid(
                            format!("document set `{set}` of step `{}`: {m}", info.id),
                            "an input of documents is a list of strings or of {text, source}",
                        )
                    })?
                    .into_iter()
                    .map(std::borrow::Cow::Owned)
                    .collect()
            }
            // The files read at analysis, borrowed: a set may be 64 MiB.
            None => a
                .documents
                .get(set)
                .map(|d| d.iter().map(std::borrow::Cow::Borrowed).collect())
                .unwrap_or_default(),
        };
        doc_levels.extend(std::iter::repeat_n(level, of_set.len()));
        docs.extend(of_set);
        if docs.len() > retrieval::MAX_DOCUMENTS {
            return Err(invalid(
                format!(
                    "step `{}` retrieves from more than {} documents",
                    info.id,
                    retrieval::MAX_DOCUMENTS
                ),
                "retrieve from fewer or larger documents",
            ));
        }
    }
    let chunks = retrieval::chunk_all(&docs, r.chunk_tokens as usize).map_err(|m| {
        invalid(
            format!("step `{}`: {m}", info.id),
            "raise `chunk_tokens` or retrieve from fewer documents",
        )
    })?;
    let hits = retrieval::rank(&chunks, &query, r.top_k as usize);
    let mut level = hits
        .iter()
        .map(|h| doc_levels[chunks[h.chunk].doc])
        .max()
        .unwrap_or(0);
    if scope.estimates_read(q)?.is_some() {
        level = level.max(doc_levels.iter().copied().max().unwrap_or(0));
    }
    let stats = retrieval::Stats {
        documents: docs.len(),
        chunks: chunks.len(),
        document_tokens: chunks.iter().map(|c| c.tokens as u64).sum(),
        retrieved: hits.len(),
        retrieved_tokens: hits.iter().map(|h| chunks[h.chunk].tokens as u64).sum(),
    };
    let chunks = hits
        .iter()
        .map(|h| {
            let c = &chunks[h.chunk];
            Retrieved {
                text: c.text.clone(),
                source: docs[c.doc].source.clone(),
                // Three decimals: enough to order by, stable to print.
                score: (f64::from(h.score) * 1000.0).round() / 1000.0,
            }
        })
        .collect();
    Ok(Some(Found {
        chunks,
        level,
        stats,
    }))
}

/// The step's `history`, if it has one: the kept turns and the system
/// messages, from its `messages` input (validated again: a default or a
/// suite's value reaches here too).
fn turns(scope: &Scope<'_>) -> Result<(history::Window, Option<history::Stats>), StepError> {
    let info = scope.info();
    let Some(h) = &scope.analysis.workflow.value.steps[&info.id].history else {
        return Ok((history::Window::default(), None));
    };
    let value = scope.inputs.get(&h.from).unwrap_or(&Value::Null);
    let messages = history::parse(value).map_err(|m| StepError::Invalid {
        source: info.prompt.clone(),
        message: format!(
            "the history of step `{}` (input `{}`): {m}",
            info.id, h.from
        ),
        help: "a history is a list of {role: system|user|assistant, content}",
    })?;
    let mut window = history::window(messages, h.keep_last.map(|k| k as usize));
    let count = |m: &[ChatMessage]| -> u64 {
        m.iter()
            .map(|t| RULE_TOKENIZER.count(&t.content) as u64)
            .sum()
    };
    let mut stats = history::Stats {
        turns: window.older.len() + window.recent.len(),
        sent: window.recent.len(),
        tokens_before: count(&window.older) + count(&window.recent),
        ..history::Stats::default()
    };
    if h.summarize_older {
        stats.summarized = window.older.len();
    } else {
        stats.dropped = window.older.len();
    }
    if h.summarize_older && !window.older.is_empty() {
        // The generated step's answer stands for the older turns (the
        // analysis made this step read it, so its label counts).
        let id = history::summary_step_id(&info.id);
        let summary = match &scope.upstream {
            Upstream::Real(outputs) => outputs.get(&id).cloned().unwrap_or(Value::Null),
            Upstream::Estimated(e) => e.output(&id),
        };
        let text = match summary {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        window.recent.insert(
            0,
            ChatMessage {
                role: history::Role::User,
                content: history::summary_message(&text),
            },
        );
    }
    stats.tokens_after = count(&window.recent);
    Ok((window, Some(stats)))
}

/// `when`, over the step's base context.
fn decide(scope: &Scope<'_>, inherited: When, base: &minijinja::Value) -> Result<When, StepError> {
    let Some(when) = &scope.info().when else {
        return Ok(inherited);
    };
    if inherited.is_skipped() {
        return Ok(inherited);
    }
    if scope.estimates_read(when)?.is_some() {
        return Ok(When::Conditional(format!("when: {}", when.text.trim())));
    }
    let v = template::eval(&scope.analysis.env, &when.text, base)
        .map_err(|e| scope.template(when, e, "`when`"))?;
    Ok(if v.is_true() {
        inherited
    } else {
        When::Skipped(format!("when is false: {}", when.text.trim()))
    })
}

enum Items {
    /// No `for_each`: one call.
    One,
    List(Vec<Item>, FanOut),
    /// A streamed input's file.
    Stream(Arc<StreamedList>, FanOut),
}

/// `for_each`, over the step's base context.
fn items(scope: &Scope<'_>, base: &minijinja::Value) -> Result<Items, StepError> {
    let Some(fe) = &scope.info().for_each else {
        return Ok(Items::One);
    };
    // A streamed input given as a file (given as a JSON array, it is
    // evaluated as any list is).
    let streamed = scope.info().streamed.as_ref();
    if let Some(list) = streamed.and_then(|name| scope.streams.get(name)) {
        let fan_out = FanOut {
            items: list.len(),
            known: true,
        };
        return Ok(Items::Stream(Arc::clone(list), fan_out));
    }
    let env = &scope.analysis.env;
    if let Some(estimates) = scope.estimates_read(fe)? {
        // The list comes from upstream outputs: evaluated over their
        // estimates, which have the right shape (a sample per schema, one
        // entry per known fan-out item); its size is known only at run time.
        let list = match template::eval_list(env, &fe.text, base).ok() {
            Some(ForEachList::List(list)) if !list.is_empty() => list,
            _ => {
                let source = fe
                    .references(env)
                    .ok()
                    .and_then(|r| {
                        r.iter().find_map(|r| {
                            r.strip_prefix("steps.")
                                .and_then(|x| x.split('.').next())
                                .map(str::to_owned)
                        })
                    })
                    .unwrap_or_default();
                vec![Item::from_serialize(estimates.unknown_item(&source))]
            }
        };
        let fan_out = FanOut {
            items: list.len() as u64,
            known: false,
        };
        return Ok(Items::List(list, fan_out));
    }
    let list = template::eval_list(env, &fe.text, base)
        .map_err(|e| scope.template(fe, e, "`for_each`"))?;
    let list = match list {
        ForEachList::List(list) => list,
        ForEachList::NotAList(kind) => {
            return Err(StepError::Invalid {
                source: fe.clone(),
                message: format!(
                    "`for_each` of step `{}` must give a list, got {kind}",
                    scope.info().id,
                ),
                help: "for_each takes an expression such as `inputs.files` that evaluates to a list",
            });
        }
    };
    let fan_out = FanOut {
        items: list.len() as u64,
        known: true,
    };
    Ok(Items::List(list, fan_out))
}

/// A step's templates, compiled once for a pass over its calls.
struct Templates<'a> {
    system: Option<template::Compiled<'a, 'a>>,
    prompt: template::Compiled<'a, 'a>,
}

/// Which of a call's templates failed to render.
#[derive(Debug)]
enum Failed {
    System(minijinja::Error),
    Prompt(minijinja::Error),
}

/// One call: its system prompt and prompt rendered over the step's
/// context with `item`, the history's turns and system messages added.
/// The one rendering of a call, in `expand`'s pass and on demand.
fn render_call(
    t: &Templates<'_>,
    ctx: &RenderContext,
    item: Option<&Item>,
    turns: &history::Window,
) -> Result<RenderedCall, Failed> {
    let ctx = ctx.for_item(item);
    let system = t
        .system
        .as_ref()
        .map(|s| s.render(&ctx))
        .transpose()
        .map_err(Failed::System)?;
    let prompt = t.prompt.render(&ctx).map_err(Failed::Prompt)?;
    // The history's system messages follow the step's own system prompt.
    let system = if turns.system.is_empty() {
        system
    } else {
        Some(
            system
                .into_iter()
                .chain(turns.system.iter().cloned())
                .collect::<Vec<_>>()
                .join("\n\n"),
        )
    };
    Ok(RenderedCall {
        system,
        history: turns.recent.clone(),
        prompt,
        // Set by `expand` once the calls are final.
        attachments: Arc::default(),
        shared_prefix: 0,
    })
}

/// Every call's system prompt and prompt, and the level of what they hold.
fn render(
    scope: &Scope<'_>,
    ctx: &RenderContext,
    items: &[Option<Item>],
    turns: &history::Window,
) -> Result<(Vec<RenderedCall>, usize), StepError> {
    let mut calls = Vec::with_capacity(items.len());
    let items = items.iter().map(|i| Ok(Cow::Borrowed(i)));
    let bound = template::MAX_STEP_RENDERED_BYTES;
    let level = render_each(scope, ctx, Box::new(items), turns, bound, &mut |c| {
        calls.push(c)
    })?;
    let shared = shared_prefix(&calls);
    for c in &mut calls {
        c.shared_prefix = shared;
    }
    Ok((calls, level))
}

/// Renders every call in item order, handing each to `each`; returns the
/// level of what they hold.
///
/// O(item + its prompt) per item: the templates are compiled once, the
/// context's shared part (`ctx`) was converted once and is shared by every
/// item's context, and the level is the shared part's, computed once.
fn render_each(
    scope: &Scope<'_>,
    ctx: &RenderContext,
    items: ItemIter<'_>,
    turns: &history::Window,
    bound: usize,
    each: &mut dyn FnMut(RenderedCall),
) -> Result<usize, StepError> {
    let info = scope.info();
    let env = &scope.analysis.env;
    let own = scope.levels[scope.index];
    // The label of what is rendered: the inputs and step outputs the
    // context holds. An item adds nothing to it: it is an element of the
    // `for_each` list, which was evaluated over this same context (or, in a
    // plan, a stand-in that holds no data).
    let level =
        crate::sensitivity::of_context(ctx, own, scope.analysis, scope.policy, scope.levels);
    let system = info
        .system
        .as_ref()
        .map(|s| {
            template::compile(env, &s.text).map_err(|e| scope.template(s, e, "the system prompt"))
        })
        .transpose()?;
    let prompt = template::compile(env, &info.prompt.text)
        .map_err(|e| scope.template(&info.prompt, e, "the prompt"))?;
    let templates = Templates { system, prompt };
    let mut total = 0usize;
    for item in items {
        let item = item?;
        let call =
            render_call(&templates, ctx, item.as_ref().as_ref(), turns).map_err(|f| match f {
                Failed::System(e) => {
                    let s = info.system.as_ref().expect("a system prompt failed");
                    scope.template(s, e, "the system prompt")
                }
                Failed::Prompt(e) => scope.template(&info.prompt, e, "the prompt"),
            })?;
        // A bound on the work (and, for calls that are kept, the memory) of
        // a step's rendering: a fan-out's calls are rendered twice.
        total += call.len();
        if total > bound {
            return Err(StepError::Invalid {
                source: info.prompt.clone(),
                message: format!(
                    "the calls of step `{}` render more than {bound} bytes together",
                    info.id,
                ),
                help: "a step's prompts (one per for_each item) are bounded as a whole: fan out over fewer or smaller items",
            });
        }
        each(call);
    }
    Ok(level)
}

/// The bytes every call's prompt starts with, cut back to the end of a
/// line (a cached block ends cleanly, never inside a character); 0 unless
/// there are several calls with the same system prompt and history, since
/// only then is it one prefix a cache can serve.
fn shared_prefix(calls: &[RenderedCall]) -> usize {
    let mut p = SharedPrefix::default();
    for c in calls {
        p.add(c);
    }
    p.finish()
}

/// [`shared_prefix`], one call at a time (a fan-out's calls are not held):
/// the first call and how much of its prompt every later one shares.
#[derive(Default)]
struct SharedPrefix {
    first: Option<(Option<String>, Vec<ChatMessage>, String)>,
    shared: usize,
    calls: usize,
}

impl SharedPrefix {
    fn add(&mut self, c: &RenderedCall) {
        self.calls += 1;
        let Some((system, history, prompt)) = &self.first else {
            self.shared = c.prompt.len();
            self.first = Some((c.system.clone(), c.history.clone(), c.prompt.clone()));
            return;
        };
        if self.shared == 0 {
            return;
        }
        if c.system != *system || c.history != *history {
            self.shared = 0;
            return;
        }
        let a = &prompt.as_bytes()[..self.shared];
        self.shared = a
            .iter()
            .zip(c.prompt.as_bytes())
            .take_while(|(x, y)| x == y)
            .count();
    }

    fn finish(self) -> usize {
        let Some((_, _, prompt)) = self.first else {
            return 0;
        };
        if self.calls < 2 || self.shared == 0 {
            return 0;
        }
        prompt.as_bytes()[..self.shared]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
    }
}

/// What kind of value a `for_each` gave, for its error.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use crate::schema::Format;
    use serde_json::json;

    fn analysis(steps: &str) -> Analysis {
        let text = format!(
            "version: 1\nname: t\ninputs:\n  files: {{type: array}}\n  flag: {{type: boolean}}\n  secret: {{type: string, sensitivity: confidential}}\nsteps:\n{steps}"
        );
        let doc = Document::parse(SourceFile::new("w.yaml", text)).unwrap();
        let w = crate::workflow::from_document::<Workflow>(doc, Format::Workflow).unwrap();
        crate::analyze::analyze(w, &std::env::temp_dir()).unwrap()
    }

    fn policy() -> Policy {
        let doc = Document::parse(SourceFile::new(
            "p.yaml",
            "version: 1\nsensitivity: {levels: [public, internal, confidential], cloud_max: internal}\nproviders: {o: {kind: openai-compatible, base_url: 'http://127.0.0.1:1/v1'}}\nmodels: {m: {provider: o, model: x, tier: local, context_window: 1000}}\nrules: [{name: all, use: m}]\n",
        ))
        .unwrap();
        let f: crate::workflow::Loaded<crate::policy::PolicyFile> =
            crate::workflow::from_document(doc, Format::Policy).unwrap();
        crate::policy::compile(&f.value, &f.doc, crate::catalog::Catalog::builtin()).0
    }

    struct Marks;

    impl Estimates for Marks {
        fn output(&self, dep: &str) -> Value {
            json!({"label": format!("<{dep}>")})
        }

        fn unknown_item(&self, dep: &str) -> Value {
            json!(format!("<item of {dep}>"))
        }
    }

    /// Expands step `id` with `inputs` and, for its upstream, `real`
    /// outputs (or the estimates when `None`).
    fn expand_with(
        a: &Analysis,
        id: &str,
        inputs: Value,
        real: Option<&Map<String, Value>>,
    ) -> Result<Expanded, StepError> {
        let p = policy();
        let levels = crate::sensitivity::propagate(a, &p)
            .into_iter()
            .map(|e| e.level)
            .collect::<Vec<_>>();
        let inputs = inputs.as_object().cloned().unwrap_or_default();
        let scope = Scope {
            analysis: a,
            policy: &p,
            index: a.steps.get_index_of(id).unwrap(),
            inputs: &inputs,
            files: &Default::default(),
            streams: &Default::default(),
            levels: &levels,
            upstream: match real {
                Some(r) => Upstream::Real(r),
                None => Upstream::Estimated(&Marks),
            },
        };
        expand(&scope, When::Runs)
    }

    #[test]
    fn for_each_renders_one_call_per_item_in_order() {
        let a = analysis(
            "  s: {task: t, for_each: inputs.files, system: 'S', prompt: 'file {{ item }}'}\n",
        );
        let e = expand_with(&a, "s", json!({"files": ["a", "b"]}), Some(&Map::new())).unwrap();
        assert_eq!(e.when, When::Runs);
        assert_eq!(
            e.fan_out,
            Some(FanOut {
                items: 2,
                known: true
            })
        );
        let calls: Vec<_> = e.calls().map(Result::unwrap).collect();
        let prompts: Vec<&str> = calls.iter().map(|c| c.prompt.as_str()).collect();
        assert_eq!(prompts, ["file a", "file b"]);
        assert_eq!(calls[0].messages().collect::<Vec<_>>(), ["S", "file a"]);
        assert_eq!(e.call_count(), 2);
    }

    #[test]
    fn an_empty_list_skips_and_a_non_list_is_a_located_error() {
        let a = analysis("  s: {task: t, for_each: inputs.files, prompt: '{{ item }}'}\n");
        let e = expand_with(&a, "s", json!({"files": []}), Some(&Map::new())).unwrap();
        assert_eq!(e.when, When::Skipped("for_each list is empty".into()));
        assert!(e.is_empty() && e.calls().next().is_none());
        let err = expand_with(&a, "s", json!({"files": "x"}), Some(&Map::new())).unwrap_err();
        let d = err.diagnostic(a.doc());
        assert_eq!(
            d.message,
            "`for_each` of step `s` must give a list, got a string"
        );
        assert!(d.span.is_some(), "located");
    }

    #[test]
    fn when_skips_a_run_before_rendering_but_the_plan_still_renders() {
        // The prompt would fail to render (`item` outside for_each): a
        // skipped step in a run never gets that far; the plan reports it.
        let a = analysis("  s: {task: t, when: inputs.flag, prompt: '{{ inputs.files[5] }}'}\n");
        let e = expand_with(
            &a,
            "s",
            json!({"flag": false, "files": []}),
            Some(&Map::new()),
        )
        .unwrap();
        assert_eq!(e.when, When::Skipped("when is false: inputs.flag".into()));
        assert!(e.is_empty());
        let err = expand_with(&a, "s", json!({"flag": false, "files": []}), None).unwrap_err();
        assert!(
            err.message(a.doc()).contains("the prompt of step `s`"),
            "{}",
            err.message(a.doc())
        );
    }

    #[test]
    fn upstream_conditions_are_conditional_in_the_plan_and_decided_in_the_run() {
        let a = analysis(
            "  up: {task: t, prompt: p, output: {schema: {type: object, properties: {label: {type: string}, items: {type: array}}}}}\n  s: {task: t, when: \"steps.up.output.label == 'bug'\", for_each: 'steps.up.output.items', prompt: '{{ item }}'}\n",
        );
        let e = expand_with(&a, "s", json!({}), None).unwrap();
        assert_eq!(
            e.when,
            When::Conditional("when: steps.up.output.label == 'bug'".into())
        );
        // The estimate has no `items`: one stand-in item, size unknown.
        assert_eq!(
            e.fan_out,
            Some(FanOut {
                items: 1,
                known: false
            })
        );
        assert_eq!(e.first().unwrap().prompt, "<item of up>");
        let mut real = Map::new();
        real.insert("up".into(), json!({"label": "bug", "items": [1, 2, 3]}));
        let e = expand_with(&a, "s", json!({}), Some(&real)).unwrap();
        assert_eq!(e.when, When::Runs);
        assert_eq!(
            e.fan_out,
            Some(FanOut {
                items: 3,
                known: true
            })
        );
        real.insert("up".into(), json!({"label": "feature", "items": [1]}));
        let e = expand_with(&a, "s", json!({}), Some(&real)).unwrap();
        assert!(e.when.is_skipped());
    }

    #[test]
    fn template_errors_name_the_template_and_the_step() {
        let a = analysis("  s: {task: t, when: 'inputs.flag.nope.deeper', prompt: p}\n");
        let err = expand_with(&a, "s", json!({"flag": true}), Some(&Map::new())).unwrap_err();
        assert!(
            err.message(a.doc()).contains("`when` of step `s`"),
            "{}",
            err.message(a.doc())
        );
    }

    #[test]
    fn tags_merge_and_the_label_is_what_was_rendered() {
        let a = analysis("  s: {task: t, tags: [b, a], prompt: '{{ inputs.secret }}'}\n");
        let e = expand_with(&a, "s", json!({"secret": "x"}), Some(&Map::new())).unwrap();
        assert_eq!(e.tags.iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(e.rendered_level, 2, "confidential");
        let step = &a.workflow.value.steps["s"];
        let f = e.facts(step, 7);
        assert_eq!((f.sensitivity, f.input_tokens, f.calls), (2, 7, 1));
    }

    #[test]
    fn the_largest_call_is_counted_once_per_tokenizer() {
        let a = analysis("  s: {task: t, for_each: inputs.files, prompt: '{{ item }}'}\n");
        let e = expand_with(
            &a,
            "s",
            json!({"files": ["one", "one two three four five"]}),
            Some(&Map::new()),
        )
        .unwrap();
        let big = tokens::count_chat(Tokenizer::O200kBase, &["one two three four five"]) as u64;
        assert_eq!(e.max_tokens(Tokenizer::O200kBase), big);
        assert!(e.max_tokens[0].get().is_some() && e.max_tokens[1].get().is_none());
        assert_eq!(e.max_tokens(Tokenizer::O200kBase), big);
    }

    /// A fan-out's cost per item must not grow with the fan-out: the
    /// step's context (which holds the whole list it iterates) is built
    /// and converted once, and each template compiled once, however many
    /// items there are. Counted, not timed: rebuilding either per item (the
    /// quadratic plan of issue 12) fails here.
    #[test]
    fn a_fan_out_builds_its_context_and_compiles_its_templates_once() {
        let a = analysis(
            "  s: {task: t, for_each: inputs.files, system: 'of {{ inputs.files | length }}', prompt: 'file {{ item }}'}\n",
        );
        for n in [1usize, 10, 1000] {
            let files: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
            let contexts = crate::analyze::CONTEXTS_BUILT.with(std::cell::Cell::get);
            let compiled = template::COMPILED.with(std::cell::Cell::get);
            let e = expand_with(&a, "s", json!({ "files": files }), Some(&Map::new())).unwrap();
            let calls: Vec<_> = e.calls().map(Result::unwrap).collect();
            assert_eq!((e.len(), calls.len()), (n, n));
            assert_eq!(calls[n - 1].prompt, format!("file f{}", n - 1));
            assert_eq!(calls[0].system.as_deref(), Some(format!("of {n}").as_str()));
            let contexts = crate::analyze::CONTEXTS_BUILT.with(std::cell::Cell::get) - contexts;
            let compiled = template::COMPILED.with(std::cell::Cell::get) - compiled;
            // A fan-out's calls are rendered twice (see `Calls`): each pass
            // compiles its two templates once.
            let passes = if n == 1 { 1 } else { 2 };
            assert_eq!((contexts, compiled), (1, 2 * passes), "{n} items");
        }
    }

    #[test]
    fn trimming_fits_a_prompt_that_reads_the_cut_input_twice_and_keeps_its_label() {
        let a = analysis(
            "  s: {task: t, prompt: 'A: {{ inputs.secret }} B: {{ inputs.secret }}', context: {max_input_tokens: 200, trim: middle, input: secret}}\n",
        );
        let long = "word ".repeat(5000);
        let e = expand_with(&a, "s", json!({ "secret": long }), Some(&Map::new())).unwrap();
        let sent = &e.first().unwrap().prompt;
        assert!(
            budget::count_chat(&[sent]) <= 200,
            "{}",
            budget::count_chat(&[sent])
        );
        assert_eq!(sent.matches("tokens cut").count(), 2, "{sent}");
        assert_eq!(e.rendered_level, 2, "still confidential");
        let effect = e.context.unwrap();
        assert_eq!(effect.strategy, "trim: middle");
        assert_eq!(effect.cut[0].input, "secret");
        assert!(effect.tokens_after <= 200 && effect.tokens_before > 5000);
    }

    #[test]
    fn a_budget_the_kept_part_cannot_fit_is_a_located_error() {
        let a = analysis(&format!(
            "  s: {{task: t, prompt: '{} {{{{ inputs.secret }}}}', context: {{max_input_tokens: 50, input: secret}}}}\n",
            "intact ".repeat(100)
        ));
        let err = expand_with(&a, "s", json!({ "secret": "x" }), Some(&Map::new())).unwrap_err();
        let d = err.diagnostic(a.doc());
        assert!(d.message.contains("kept intact take"), "{}", d.message);
        assert!(d.span.is_some(), "located at max_input_tokens");
    }

    #[test]
    fn an_item_is_only_in_a_for_each_steps_context() {
        // `item` outside for_each stays an undefined-variable error even
        // when a caller hands the context one.
        let a = analysis("  s: {task: t, prompt: '{{ inputs.flag }}'}\n");
        let inputs = json!({"flag": true, "secret": "x"});
        let ctx = a.steps["s"].context(inputs.as_object().unwrap(), |_| Value::Null);
        let with_item = ctx.for_item(Some(&Item::from("leak")));
        let env = &a.env;
        assert!(template::render(env, "{{ item }}", &with_item).is_err());
        assert!(template::render(env, "{{ inputs.secret }}", &with_item).is_err());
        assert_eq!(
            template::render(env, "{{ inputs.flag }}", &with_item).unwrap(),
            "True"
        );
    }

    /// A fan-out's calls are not held: the calls made are rendered again,
    /// and must be the calls a kept rendering gives, with the shared prefix
    /// found over all of them and the totals `expand` kept.
    #[test]
    fn a_fan_outs_calls_rendered_again_are_the_first_passs() {
        let a = analysis(
            "  s: {task: t, for_each: inputs.files, system: 'S {{ inputs.files | length }}', prompt: \"Shared line\\nfile {{ item }}\"}\n",
        );
        let files = json!({"files": ["a", "b", {"k": [1, 2]}, "d"]});
        let p = policy();
        let levels = vec![0; a.steps.len()];
        let inputs = files.as_object().cloned().unwrap();
        let real = Map::new();
        let scope = Scope {
            analysis: &a,
            policy: &p,
            index: a.steps.get_index_of("s").unwrap(),
            inputs: &inputs,
            files: &Default::default(),
            streams: &Default::default(),
            levels: &levels,
            upstream: Upstream::Real(&real),
        };
        let e = expand(&scope, When::Runs).unwrap();
        // The calls rendered and kept, as a step without `for_each` keeps
        // its one call.
        let items: Vec<Option<Item>> = files["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| Some(Item::from_serialize(v)))
            .collect();
        let (seen, _) = render(&scope, &scope.context(), &items, &NO_TURNS).unwrap();
        assert!(matches!(e.calls, Calls::Lazy(_)), "{:?}", e.calls);
        let again: Vec<RenderedCall> = e.calls().map(|c| c.unwrap().into_owned()).collect();
        assert_eq!(again.len(), 4);
        let shared = shared_prefix(&seen);
        assert_eq!(shared, "Shared line\n".len());
        for (first, second) in seen.iter().zip(&again) {
            assert_eq!(
                (&first.system, &first.history, &first.prompt),
                (&second.system, &second.history, &second.prompt)
            );
            assert_eq!(second.shared_prefix, shared);
        }
        assert_eq!(again[2].prompt, "Shared line\nfile {\"k\": [1, 2]}");
        assert_eq!(e.first(), Some(&again[0]));
        assert_eq!(
            e.rendered_bytes(),
            seen.iter().map(RenderedCall::len).sum::<usize>()
        );
        let big = again
            .iter()
            .map(|c| tokens::count_chat(RULE_TOKENIZER, &c.messages().collect::<Vec<_>>()) as u64)
            .max();
        assert_eq!(Some(e.max_tokens(RULE_TOKENIZER)), big);
    }

    /// The shared prefix, one call at a time, is the prefix of all of them.
    #[test]
    fn the_shared_prefix_ends_at_a_line_and_needs_the_same_system_prompt() {
        let call = |system: &str, prompt: &str| RenderedCall {
            system: Some(system.to_owned()),
            history: Vec::new(),
            prompt: prompt.to_owned(),
            attachments: Arc::default(),
            shared_prefix: 0,
        };
        let same = [
            call("s", "ab\ncd\nx"),
            call("s", "ab\ncd\ny"),
            call("s", "ab\nce"),
        ];
        assert_eq!(shared_prefix(&same), 3);
        assert_eq!(shared_prefix(&same[..1]), 0, "one call shares nothing");
        let other = [call("s", "ab\ncd"), call("t", "ab\ncd")];
        assert_eq!(shared_prefix(&other), 0);
        assert_eq!(shared_prefix(&[call("s", "x\n"), call("s", "y\n")]), 0);
    }
}
