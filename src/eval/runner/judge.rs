//! The LLM judge of `judge:` expectations and `snapshot: judge`: a
//! generated one-step workflow, run through the policy and the executor like
//! any other, so the sensitivity gate applies to what it reads.

use std::sync::Arc;

use serde_json::Value;

use super::error::CheckError;
use super::{Ctx, finish_journaled, journaled};
use crate::analyze::{self, Analysis};
use crate::diagnostic::SourceFile;
use crate::inputs::{InputValue, Inputs, ValueSource};
use crate::plan;
use crate::run::{self, StepStatus};
use crate::schema::Format;
use crate::workflow::{self, Workflow};
use crate::yaml::Document;

/// What the judge said about one answer, and what asking it cost.
pub(super) struct Verdict {
    pub(super) pass: bool,
    pub(super) reason: String,
    pub(super) model: String,
    pub(super) cost_usd: f64,
    pub(super) usage: crate::provider::Usage,
}

/// The judge workflow: one step of task `judge` whose answer input carries
/// the judged step's sensitivity, so the policy routes it like any other
/// step and the gate keeps confidential outputs local.
fn judge_workflow(
    level: &str,
    pin: Option<&str>,
    root: &std::path::Path,
) -> Result<Analysis, CheckError> {
    let pin = pin
        .map(|m| {
            format!(
                "    model: {}\n",
                serde_json::to_string(m).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let text = format!(
        r#"version: 1
name: judge
inputs:
  rubric: {{ type: string }}
  answer: {{ type: string, sensitivity: {level} }}
steps:
  grade:
    task: judge
{pin}    temperature: 0
    max_output_tokens: 400
    system: |
      You grade an answer against a rubric. Be strict: the verdict is pass only if the answer meets every point of the rubric.
      Reply with JSON only: {{"verdict": "pass" or "fail", "reason": "one sentence"}}.
    prompt: |
      Rubric:
      {{{{ inputs.rubric }}}}

      Answer to grade:
      <answer>
      {{{{ inputs.answer }}}}
      </answer>
    output:
      schema:
        type: object
        required: [verdict, reason]
        properties:
          verdict: {{ enum: [pass, fail] }}
          reason: {{ type: string }}
"#,
        level = serde_json::to_string(level).unwrap_or_default(),
    );
    let doc =
        Document::parse(SourceFile::new("<judge>", text)).map_err(CheckError::JudgeWorkflow)?;
    let w = workflow::from_document::<Workflow>(doc, Format::Workflow)
        .map_err(CheckError::JudgeWorkflow)?;
    analyze::analyze(w, root).map_err(CheckError::JudgeWorkflow)
}

/// Asks the judge (through the policy, like any step) whether `answer`
/// meets `rubric`.
pub(super) async fn judge(
    ctx: &Ctx<'_>,
    level: &str,
    pin: Option<&str>,
    rubric: &str,
    answer: &str,
) -> Result<Verdict, CheckError> {
    let analysis = {
        let key = (level.to_owned(), pin.map(str::to_owned));
        let mut judges = ctx.judges.lock().unwrap_or_else(|e| e.into_inner());
        match judges.get(&key) {
            Some(a) => Arc::clone(a),
            None => {
                let root = analyze::project_root(&ctx.suite.path);
                let a = Arc::new(judge_workflow(level, pin, &root)?);
                judges.insert(key, Arc::clone(&a));
                a
            }
        }
    };
    let inputs: Inputs = [("rubric", rubric), ("answer", answer)]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_owned(),
                InputValue {
                    value: Value::String(v.to_owned()),
                    source: ValueSource::Given,
                    attachment: None,
                    stream: None,
                },
            )
        })
        .collect();
    let plan = plan::build(&analysis, &ctx.policy, "judge", &inputs).map_err(|diagnostics| {
        CheckError::JudgeUnroutable {
            level: level.to_owned(),
            diagnostics,
        }
    })?;
    let (options, run_id) = journaled(
        ctx,
        &analysis,
        std::path::Path::new("<judge>"),
        &inputs,
        &plan,
    )
    .await?;
    let report = run::execute_in(
        Arc::clone(&ctx.resources),
        run::Job {
            analysis: Arc::clone(&analysis),
            policy: Arc::clone(&ctx.policy),
            plan: &plan,
            inputs: std::borrow::Cow::Borrowed(&inputs),
        },
        ctx.providers.clone(),
        options,
        ctx.cancel.clone(),
        None,
    )
    .await;
    finish_journaled(ctx, run_id, report.status);
    let step = report.steps.first().ok_or(CheckError::JudgeDidNotRun)?;
    // A judge is one call: its output is always held.
    let out = match (&step.status, step.output.as_ref().and_then(|o| o.held())) {
        (StepStatus::Succeeded, Some(v)) => v.clone(),
        _ => {
            return Err(CheckError::JudgeFailed(step.detail.clone()));
        }
    };
    let get = |k: &str| {
        out.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Verdict {
        pass: get("verdict") == "pass",
        reason: get("reason"),
        model: step.model.clone().unwrap_or_default(),
        cost_usd: report.cost_usd,
        usage: step.usage,
    })
}
