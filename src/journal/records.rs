//! What the journal writes and reads back: a run about to start and the
//! identities it is resumed by (hashes of the workflow, its prompts and the
//! policy), a run's row, a call attempt, a finished call, a cached answer.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Millis;
use crate::outcome::AttemptOutcome;
use crate::usage::Usage;

/// The identity of a workflow for `--resume`: its file and every prompt it
/// renders (prompt files included). Answers to one version of a prompt must
/// not be mixed with calls made for another.
pub fn fingerprint(analysis: &crate::analyze::Analysis) -> String {
    let prompts: Vec<[Option<&str>; 2]> = analysis
        .steps
        .values()
        .map(|s| {
            [
                Some(s.prompt.text.as_str()),
                s.system.as_ref().map(|x| x.text.as_str()),
            ]
        })
        .collect();
    sha256_json(&serde_json::json!({
        "workflow": &*analysis.doc().file.text,
        "prompts": prompts,
    }))
}

/// The identity of a policy file (its text).
pub fn policy_hash(path: &Path) -> String {
    // Through the bounded reader: the path is the user's, read a second time.
    let text = crate::files::read_text(path).unwrap_or_default();
    sha256_json(&text)
}

/// A path as written in the journal: absolute where it exists.
fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The journal's record of a run about to start.
pub fn new_run(
    analysis: &crate::analyze::Analysis,
    workflow_path: &Path,
    policy: &crate::policy::Policy,
    policy_path: &Path,
    inputs: &crate::inputs::Inputs,
    plan: &crate::plan::Plan,
) -> NewRun {
    NewRun {
        workflow: analysis.workflow.value.name.clone(),
        workflow_path: absolute(workflow_path),
        workflow_hash: fingerprint(analysis),
        policy: policy.name.clone(),
        policy_path: absolute(policy_path),
        policy_hash: policy_hash(policy_path),
        inputs_json: String::new(),
        estimate_usd: 0.0,
        estimate_max_usd: 0.0,
        steps: Vec::new(),
    }
    .with_case(inputs, plan)
}

impl NewRun {
    /// The record of another run of the same workflow and policy files,
    /// with its own inputs and plan. The files' paths and identities are
    /// taken from `self` rather than resolved, read and hashed again: a
    /// suite journals a run per case, and doing that work per case cost
    /// more CPU than running the case (issue 12).
    pub fn with_case(&self, inputs: &crate::inputs::Inputs, plan: &crate::plan::Plan) -> NewRun {
        NewRun {
            workflow: self.workflow.clone(),
            workflow_path: self.workflow_path.clone(),
            workflow_hash: self.workflow_hash.clone(),
            policy: self.policy.clone(),
            policy_path: self.policy_path.clone(),
            policy_hash: self.policy_hash.clone(),
            inputs_json: crate::inputs::journal_json(inputs),
            estimate_usd: plan.totals.cost.low,
            estimate_max_usd: plan.totals.cost.high,
            steps: plan
                .steps
                .iter()
                .map(|s| PlannedStep {
                    id: s.id.clone(),
                    model: s.model.as_ref().map(|m| m.alias.clone()),
                    calls: s.calls,
                    estimate_usd: s.cost.low,
                    estimate_max_usd: s.cost.high,
                    flagship_estimate_usd: s.flagship_cost.low,
                    context: s.context.as_ref().map(|c| PlannedContext {
                        tokens_before: c.effect.tokens_before,
                        tokens_after: c.effect.tokens_after,
                        saved_usd: c.saved_usd,
                    }),
                })
                .collect(),
        }
    }
}

/// Identifies what a call of a step was asked: its rendered system prompt
/// and prompt. The model is left out — a resumed call may be routed to
/// another model of the chain, and its journaled answer still stands.
pub fn prompt_hash(system: Option<&str>, prompt: &str) -> String {
    sha256_json(&serde_json::json!([system, prompt]))
}

/// A hash of anything serialisable, as hex (for request and file identities).
pub fn sha256_json(v: &impl Serialize) -> String {
    sha256_text(&serde_json::to_string(v).unwrap_or_default())
}

/// The SHA-256 of JSON text already serialised, as hex: what
/// [`sha256_json`] gives for the value it was serialised from.
pub fn sha256_text(json: &str) -> String {
    format!("{:x}", Sha256::digest(json.as_bytes()))
}

/// What is known about a run when it starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: String,
    pub workflow_path: String,
    /// Identity of the workflow and its prompt files: a resume refuses to
    /// mix answers to different prompts.
    pub workflow_hash: String,
    pub policy: String,
    pub policy_path: String,
    pub policy_hash: String,
    /// The resolved inputs as JSON text (a resume reads them back, so `@-`
    /// works too): serialised once from the inputs themselves, never
    /// copied into a second tree of values (a 100,000-item list was held
    /// twice more while the run began).
    pub inputs_json: String,
    pub estimate_usd: f64,
    pub estimate_max_usd: f64,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub id: String,
    pub model: Option<String>,
    pub calls: u64,
    pub estimate_usd: f64,
    pub estimate_max_usd: f64,
    pub flagship_estimate_usd: f64,
    /// What context management does to the step, as planned.
    pub context: Option<PlannedContext>,
}

/// A step's context management as its plan priced it: `report` sums it
/// over the steps that succeeded as its own lever.
#[derive(Debug, Clone, Default)]
pub struct PlannedContext {
    pub tokens_before: u64,
    pub tokens_after: u64,
    pub saved_usd: f64,
}

/// A run as the journal has it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub workflow_path: String,
    #[serde(skip)]
    pub workflow_hash: String,
    pub policy: String,
    pub policy_path: String,
    #[serde(skip)]
    pub policy_hash: String,
    #[serde(skip)]
    pub inputs: Value,
    pub started: String,
    pub started_ms: Millis,
    pub finished_ms: Option<Millis>,
    /// `running`, `succeeded`, `failed`, `cancelled`, `timed_out`, or
    /// `interrupted` (journaled as running, but its process is gone).
    pub status: String,
    pub steps_done: u64,
    pub steps_total: u64,
    pub cost_usd: f64,
    pub estimate_usd: f64,
    #[serde(skip)]
    pub pid: u32,
    pub sessions: u32,
    /// Who started it ("" for runs journaled before this was recorded; see
    /// `journal::who`). Read back bounded and without control characters.
    pub user: String,
    pub machine: String,
    /// The CI system it ran under, "" outside CI.
    pub ci: String,
}

/// One attempt of one call, as it is written.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    pub step: String,
    pub item: Option<usize>,
    pub attempt: u32,
    pub request_hash: Option<String>,
    /// See [`prompt_hash`].
    pub prompt_hash: Option<String>,
    pub model: String,
    pub provider: String,
    pub provider_model: String,
    pub tier: String,
    pub local: bool,
    pub started_ms: Millis,
    pub latency_ms: u64,
    /// How the attempt ended; stored as its word ([`AttemptOutcome::as_str`]).
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// The same usage at the model's standard (non-batch) prices.
    pub list_cost_usd: f64,
    /// The same usage on the policy's flagship model.
    pub flagship_cost_usd: f64,
    /// The plan's expected cost of this call.
    pub estimate_usd: f64,
    /// A cache hit: what the answer cost when it was first bought.
    pub saved_usd: f64,
    /// Sent through a provider's batch API (at its batch price).
    pub batch: bool,
    pub from_cache: bool,
    /// May answer identical requests later: a whole, valid answer.
    pub cacheable: bool,
    /// The raw answer text (what the cache serves).
    pub response: Option<String>,
    /// The call's final output; set only when this attempt finished it.
    pub output: Option<Value>,
    /// Why the answer's usage or cost was not taken as-is (see
    /// [`crate::cost::charge`]); `tollgate report` counts these calls.
    pub usage_flag: Option<String>,
    /// A call of a cascade (its first call, or the escalated one — the
    /// latter with `escalated_from`): the rule's name.
    pub cascade_rule: Option<String>,
    /// Outcome `escalated`: the model the call escalates to.
    pub escalate_to: Option<String>,
    /// An escalated call: the model whose answer failed the check.
    pub escalated_from: Option<String>,
    /// A pool's call: the endpoint that answered (its URL without
    /// credentials or query, see `provider::pool`).
    pub endpoint: Option<String>,
}

/// A call whose first answer failed its cascade's check (outcome
/// `escalated`).
#[derive(Debug, Clone)]
pub struct EscalatedCall {
    pub prompt_hash: Option<String>,
    /// The model that answered first.
    pub model: String,
    /// The escalation target.
    pub to: String,
    /// Why it escalated.
    pub reason: String,
    pub cost_usd: f64,
}

/// A call a run already finished.
#[derive(Debug, Clone)]
pub struct FinishedCall {
    /// What the call was asked (see [`prompt_hash`]); `None` in rows of
    /// older builds.
    pub prompt_hash: Option<String>,
    pub model: String,
    pub output: Value,
    pub usage: Usage,
    pub cost_usd: f64,
}

/// A cached answer to an identical request.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub text: String,
    pub usage: Usage,
    /// What the answer cost when it was bought.
    pub cost_usd: f64,
    pub run_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use crate::inputs::{InputValue, Inputs, ValueSource};
    use crate::schema::Format;
    use crate::yaml::Document;

    fn inputs(ticket: &str) -> Inputs {
        [(
            "ticket".to_owned(),
            InputValue {
                value: Value::String(ticket.to_owned()),
                source: ValueSource::Given,
                attachment: None,
                stream: None,
            },
        )]
        .into_iter()
        .collect()
    }

    /// A suite's runs copy the files' identities from its first run: each
    /// must be the record `new_run` would have built for that case.
    #[test]
    fn a_record_for_another_case_is_the_one_built_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (wf_path, policy_path) = (dir.path().join("w.yaml"), dir.path().join("p.yaml"));
        let text = "version: 1\nname: t\ninputs:\n  ticket: {type: string}\nsteps:\n  classify:\n    task: classify\n    prompt: \"Label: {{ inputs.ticket }}\"\n    max_output_tokens: 5\n";
        std::fs::write(&wf_path, text).unwrap();
        let doc = Document::parse(SourceFile::new(&wf_path, text.to_owned())).unwrap();
        let w = crate::workflow::from_document(doc, Format::Workflow).unwrap();
        let analysis = crate::analyze::analyze(w, dir.path()).unwrap();
        let (_, policy) = crate::policy::load_builtin().unwrap();
        std::fs::write(&policy_path, "version: 1\n").unwrap();
        let plan_of = |i: &Inputs| crate::plan::build(&analysis, &policy, "p", i).unwrap();
        let (a, b) = (inputs("short"), inputs(&"a much longer ticket ".repeat(50)));
        let (plan_a, plan_b) = (plan_of(&a), plan_of(&b));
        let first = new_run(&analysis, &wf_path, &policy, &policy_path, &a, &plan_a);
        let whole = new_run(&analysis, &wf_path, &policy, &policy_path, &b, &plan_b);
        let copied = first.with_case(&b, &plan_b);
        assert_eq!(format!("{copied:?}"), format!("{whole:?}"));
        // Not vacuous: the cases' records differ where their cases do.
        assert_ne!(first.inputs_json, copied.inputs_json);
        assert_eq!(copied.policy_hash, sha256_json(&"version: 1\n"));
    }
}
