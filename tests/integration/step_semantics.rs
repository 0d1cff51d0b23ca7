//! The dry run predicts the run: for every example workflow
//! (`workflows/*.yaml`, with the example inputs `plan` uses), the prompts
//! `plan` renders are the prompts `run` sends to the loopback fake — call
//! by call, system prompt and prompt.
//!
//! Steps that read upstream outputs are compared too, not skipped: the plan
//! renders them with stand-ins for those outputs (a marker for text, a
//! sample of the schema for structured output), so the fake answers every
//! call with exactly the stand-in the plan used for that call
//! (`plan::estimated_output` of the step and item). Then the upstream
//! values are the same on both sides, and any difference in the prompts can
//! only come from how plan and run give a step its meaning — its context,
//! `when`, `for_each`, rendering. A different context, a lost `item`, a
//! `when` decided differently or a fan-out of another size fails here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use fake_llm::{FakeServer, Reply};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tollgate::catalog::Catalog;
use tollgate::diagnostic::SourceFile;
use tollgate::plan::{self, Plan, Status};
use tollgate::policy::{self, Policy, PolicyFile};
use tollgate::run::{self, Providers, RunOptions, StepStatus};
use tollgate::schema::Format;
use tollgate::workflow::{self, Loaded};
use tollgate::yaml::Document;
use tollgate::{analyze, inputs};

use crate::support::root;

/// Local models on the fake (a local model passes every sensitivity gate):
/// one for steps tagged `few-shot` — by the workflow or the step, so the
/// tags routing sees are checked too — one named `local`, which examples
/// pin steps to (every example policy has it), and one for the rest.
fn policy(fake: &FakeServer) -> Policy {
    let text = format!(
        r#"version: 1
name: fake
sensitivity: {{ levels: [public, internal, confidential, secret], cloud_max: internal }}
providers:
  fake: {{ kind: openai-compatible, base_url: "{}/v1" }}
models:
  m: {{ provider: fake, model: fake-model, tier: local, context_window: 1000000 }}
  shots: {{ provider: fake, model: fake-shots, tier: local, context_window: 1000000 }}
  local: {{ provider: fake, model: fake-local, tier: local, context_window: 1000000 }}
rules:
  - {{ name: few-shot, when: {{ tags: few-shot }}, use: shots }}
  - {{ name: all, use: m }}
"#,
        fake.base_url()
    );
    let doc = Document::parse(SourceFile::new("policy.yaml", text)).expect("policy parses");
    let file: Loaded<PolicyFile> =
        workflow::from_document(doc, Format::Policy).expect("policy loads");
    let (policy, diags) = policy::compile(&file.value, &file.doc, Catalog::builtin());
    assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
    policy
}

/// The plan's hash of one call's messages, from the request the fake got.
fn request_sha256(body: &Value) -> String {
    let mut h = Sha256::new();
    for m in body["messages"].as_array().expect("chat messages") {
        h.update(m["content"].as_str().expect("text content").as_bytes());
        h.update([0u8]);
    }
    format!("{:x}", h.finalize())
}

/// Every call of the plan by its hash: (step, item) — and what the fake
/// answers it with: the stand-in the plan rendered that output as.
fn answers(
    plan: &Plan,
    hashes: &BTreeMap<String, Vec<String>>,
    wf: &workflow::Workflow,
) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for s in &plan.steps {
        for (n, hash) in hashes[&s.id].iter().enumerate() {
            let value = plan::estimated_output(&s.id, wf.steps[&s.id].output_schema(), n as u64);
            let text = match value {
                Value::String(t) => t,
                other => other.to_string(),
            };
            out.insert(hash.clone(), (s.id.clone(), text));
        }
    }
    out
}

fn check_example(path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = FakeServer::start().await;
        let policy = Arc::new(policy(&fake));
        let loaded = workflow::load(path).expect("example loads");
        let analysis =
            Arc::new(analyze::analyze(loaded, &analyze::project_root(path)).expect("analyses"));
        let inputs = inputs::placeholders(&analysis.workflow.value);
        let plan = plan::build(&analysis, &policy, "policy.yaml", &inputs).expect("plans");
        // Every call the plan renders, by step (a plan keeps only the
        // first's hash: a fan-out's calls are rendered again for these).
        let hashes = plan::calls_sha256(&analysis, &policy, &inputs).expect("plans");
        let by_hash = Arc::new(answers(&plan, &hashes, &analysis.workflow.value));
        let handler_map = Arc::clone(&by_hash);
        fake.set_handler(move |r| match handler_map.get(&request_sha256(&r.body)) {
            Some((_, text)) => Reply::text(text.clone()),
            // A prompt the plan never rendered: the comparison below says
            // which; answer so the run goes on.
            None => Reply::text("not a planned prompt"),
        });
        let options = RunOptions {
            retries: 0,
            stream: false,
            ..RunOptions::default()
        };
        let report = run::execute(
            run::Job {
                analysis: Arc::clone(&analysis),
                policy: Arc::clone(&policy),
                plan: &plan,
                inputs: std::borrow::Cow::Borrowed(&inputs),
            },
            Providers::from_env(&policy),
            options,
            CancellationToken::new(),
            None,
        )
        .await;

        // What the run sent, by step (through the plan's hashes).
        let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in fake.requests() {
            let hash = request_sha256(&r.body);
            let step = by_hash.get(&hash).map_or_else(
                || {
                    panic!(
                        "{name}: the run sent a prompt the plan did not render: {}",
                        r.body
                    )
                },
                |(s, _)| s.clone(),
            );
            sent.entry(step).or_default().push(hash);
        }
        let reports: HashMap<&str, &run::StepReport> =
            report.steps.iter().map(|s| (s.id.as_str(), s)).collect();
        for s in &plan.steps {
            let ran = reports[s.id.as_str()];
            match (&s.status, ran.status) {
                (Status::Runs, StepStatus::Succeeded) => {}
                (Status::Conditional(_), StepStatus::Succeeded | StepStatus::Skipped) => {}
                (Status::Skipped(_), StepStatus::Skipped) => {}
                (planned, ran_as) => panic!(
                    "{name}: step `{}` planned {planned:?} but {ran_as:?}: {:?}",
                    s.id, ran.detail
                ),
            }
            let mut got = sent.remove(&s.id).unwrap_or_default();
            if ran.status != StepStatus::Succeeded {
                assert!(got.is_empty(), "{name}: step `{}` sent calls", s.id);
                continue;
            }
            // Calls go out concurrently: compare as sets of (hash, count).
            let mut want = hashes[&s.id].clone();
            got.sort();
            want.sort();
            assert_eq!(
                got, want,
                "{name}: step `{}`: the run's prompts differ from the plan's",
                s.id
            );
            assert_eq!(ran.calls.len() as u64, s.calls, "{name}: step `{}`", s.id);
            assert_eq!(
                ran.model.as_deref(),
                s.model.as_ref().map(|m| m.alias.as_str()),
                "{name}: step `{}` was routed elsewhere than planned",
                s.id
            );
        }
        assert!(
            sent.is_empty(),
            "{name}: calls of unplanned steps: {sent:?}"
        );
    });
}

#[test]
fn every_example_runs_the_prompts_its_plan_shows() {
    let mut workflows: Vec<_> = std::fs::read_dir(root().join("workflows"))
        .expect("workflows/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    workflows.sort();
    assert!(workflows.len() >= 6, "the examples cover the task table");
    for path in &workflows {
        check_example(path);
    }
}
