//! Cascades (`escalate:` on a rule) end to end against the loopback fake:
//! a first answer that passes its checks stays cheap; one that fails
//! (invalid output, a low mean logprob, no match, logprobs that cannot be
//! believed) escalates through the gate, the budget and the journal; a
//! confidential step never escalates to the cloud; a resume after a kill
//! between the two calls does not pay for the first one again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_llm::{FakeServer, LogprobShape, Recorded, Reply};
use serde_json::Value;

use crate::support::{Ledger, Project, report, stdout, step, transcript};

/// A local model, a paid budget model (both OpenAI dialect: they return
/// logprobs), a cloud workhorse and a second local model; `rules` and
/// `extra` complete it.
fn policy(fake: &FakeServer, rules: &str, extra: &str) -> String {
    let base = fake.base_url();
    format!(
        r#"version: 1
name: cascades
sensitivity: {{ levels: [public, internal, confidential, secret], cloud_max: internal }}
providers:
  local:     {{ kind: openai-compatible, base_url: "{base}/v1" }}
  openai:    {{ kind: openai, base_url: "{base}/v1", api_key_env: TEST_OPENAI_KEY }}
  anthropic: {{ kind: anthropic, base_url: "{base}", api_key_env: TEST_ANTHROPIC_KEY }}
models:
  local:     {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}
  big-local: {{ provider: local, model: big-local-llm, tier: local, context_window: 8192 }}
  budget:    {{ provider: openai, model: gpt-4.1-nano, tier: budget }}
  workhorse: {{ provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }}
rules:
{rules}
  - name: rest
    use: workhorse
{extra}"#
    )
}

/// Summaries on the local model, escalated to the workhorse on an invalid
/// answer or a mean logprob below -0.8.
const SUMMARIES: &str = r#"  - name: summaries
    when: { task: summarize }
    use: local
    escalate:
      to: workhorse
      when: [invalid_output, low_confidence]
      confidence: { min_mean_logprob: -0.8 }"#;

const WORKFLOW: &str = r#"version: 1
name: cascade
inputs:
  ticket: { type: string, sensitivity: internal, default: "It crashes on save." }
steps:
  summarize:
    task: summarize
    prompt: "Summarize as JSON: {{ inputs.ticket }}"
    max_output_tokens: 50
    output:
      schema: { type: object, properties: { summary: { type: string } }, required: [summary] }
"#;

const GOOD: &str = r#"{"summary": "crash on save"}"#;

/// The local model answers `local`, the workhorse a valid summary.
fn answers(fake: &FakeServer, local: impl Fn() -> Reply + Send + Sync + 'static) {
    fake.set_handler(move |r: &Recorded| match r.model().as_str() {
        "local-llm" | "gpt-4.1-nano" => local(),
        _ => Reply::text(r#"{"summary": "the workhorse's summary"}"#).usage(40, 10),
    });
}

fn models_asked(fake: &FakeServer) -> Vec<String> {
    fake.requests().iter().map(Recorded::model).collect()
}

async fn run_json(p: &Project) -> std::process::Output {
    p.run(&["--format", "json"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confident_valid_answer_stays_cheap() {
    let fake = FakeServer::start().await;
    answers(&fake, || {
        Reply::text(GOOD).logprobs(vec![-0.1, -0.3, -0.2], LogprobShape::OpenAi)
    });
    let p = Project::new(&policy(&fake, SUMMARIES, ""), WORKFLOW);
    let out = run_json(&p).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    assert_eq!(s["model"], "local");
    assert_eq!(s["output"]["summary"], "crash on save");
    assert!(s["calls"][0].get("escalation").is_none(), "{s}");
    assert_eq!(models_asked(&fake), ["local-llm"]);
    // The first call asked for logprobs.
    assert_eq!(fake.requests()[0].body["logprobs"], true);
    assert_eq!(fake.requests()[0].body["top_logprobs"], 1);
}

async fn an_invalid_answer_escalates_and_both_calls_are_journaled(ledger: Ledger) {
    let fake = FakeServer::start().await;
    answers(&fake, || {
        Reply::text("crash on save, I think").logprobs(vec![-0.1], LogprobShape::OpenAi)
    });
    let p = Project::new(&policy(&fake, SUMMARIES, ""), WORKFLOW).on(&ledger);
    let out = run_json(&p).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    assert_eq!(s["model"], "workhorse");
    assert_eq!(s["output"]["summary"], "the workhorse's summary");
    let call = &s["calls"][0];
    assert_eq!(call["escalation"]["from"], "local");
    assert_eq!(call["escalation"]["to"], "workhorse");
    assert_eq!(call["escalation"]["rule"], "summaries");
    let reason = call["escalation"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("invalid_output: not JSON"), "{reason}");
    // No schema re-ask on the cheap model: one call each.
    assert_eq!(models_asked(&fake), ["local-llm", "claude-sonnet-4-6"]);
    let outcomes: Vec<&str> = call["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["escalated", "ok"]);
    // The escalated call is priced and counted.
    assert!(s["cost_usd"].as_f64().unwrap() > 0.0);
    // The journal keeps both, with from → to and why.
    let j = p.journal();
    let run = j.run("last").unwrap().unwrap();
    let left = j.escalated_calls(&run.id).unwrap();
    let first = &left[&("summarize".to_owned(), None)];
    assert_eq!(
        (first.model.as_str(), first.to.as_str()),
        ("local", "workhorse")
    );
    assert!(first.reason.starts_with("invalid_output"));
    let done = j.finished_calls(&run.id).unwrap();
    assert_eq!(done[&("summarize".to_owned(), None)].model, "workhorse");
    let history = j.escalation_history("cascades", 0).unwrap();
    assert_eq!(history["summaries"], (1, 1));
    drop(j);
    // The table says so, and the next plan estimates from the history.
    let text = p.run(&[]).await;
    assert!(
        transcript(&text).contains("escalated 1 of 1 calls"),
        "{}",
        transcript(&text)
    );
    let plan = p
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .await;
    let plan = stdout(&plan);
    assert!(plan.contains("cascade      local → workhorse"), "{plan}");
    assert!(
        plan.contains("100% escalate (2 of 2 first answers in the journal)"),
        "{plan}"
    );
    // `report`: the rule's escalation rate, and what it cost against
    // sending everything to the target.
    let out = p.tollgate(&["report"]).await;
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("cascades/summaries"))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1..4], ["2", "2", "100%"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_mean_logprob_escalates_in_either_shape() {
    for shape in [LogprobShape::OpenAi, LogprobShape::LlamaCpp] {
        let fake = FakeServer::start().await;
        answers(&fake, move || {
            Reply::text(GOOD).logprobs(vec![-0.5, -2.5, -1.0], shape)
        });
        let p = Project::new(&policy(&fake, SUMMARIES, ""), WORKFLOW);
        let out = run_json(&p).await;
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        let r = report(&out);
        let call = &step(&r, "summarize")["calls"][0];
        let reason = call["escalation"]["reason"].as_str().unwrap();
        assert_eq!(
            reason, "low_confidence: mean logprob -1.333 over 3 tokens is below -0.8",
            "{shape:?}"
        );
        assert_eq!(models_asked(&fake), ["local-llm", "claude-sonnet-4-6"]);
    }
}

/// Logprobs a server should never send: the run goes on, the check says
/// the confidence is unknown and escalates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_logprobs_escalate_and_never_break_the_run() {
    let huge = format!("[{}]", vec![r#"{"logprob":-0.1}"#; 140_000].join(","));
    for (logprobs, why) in [
        (
            r#"{"content": [{"logprob": "NaN"}]}"#.to_owned(),
            "not a number",
        ),
        (
            r#"{"content": [{"logprob": 1e300}]}"#.to_owned(),
            "at most 0",
        ),
        (r#"{"content": {"logprob": -0.1}}"#.to_owned(), "not a list"),
        (r#"{"content": []}"#.to_owned(), "empty"),
        (r#"null"#.to_owned(), "no logprobs"),
        (format!(r#"{{"content": {huge}}}"#), "more token logprobs"),
    ] {
        let fake = FakeServer::start().await;
        let body = format!(
            r#"{{"id":"x","object":"chat.completion","model":"local-llm","choices":[{{"index":0,"finish_reason":"stop","message":{{"role":"assistant","content":{}}},"logprobs":{logprobs}}}],"usage":{{"prompt_tokens":5,"completion_tokens":5}}}}"#,
            serde_json::to_string(GOOD).unwrap()
        );
        fake.set_handler(move |r: &Recorded| match r.model().as_str() {
            "local-llm" => Reply::raw(200, "application/json", body.clone()),
            _ => Reply::text(r#"{"summary": "sure"}"#).usage(40, 10),
        });
        let p = Project::new(
            &policy(
                &fake,
                SUMMARIES,
                "",
            )
            .replace(
                "local:     { provider: local, model: local-llm, tier: local, context_window: 8192 }",
                "local:     { provider: local, model: local-llm, tier: local, context_window: 8192, limits: { max_response_bytes: 8000000 } }",
            ),
            WORKFLOW,
        );
        let out = run_json(&p).await;
        assert_eq!(out.status.code(), Some(0), "{why}: {}", transcript(&out));
        let r = report(&out);
        let call = &step(&r, "summarize")["calls"][0];
        let reason = call["escalation"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("low_confidence: confidence unknown") && reason.contains(why),
            "{why}: {reason}"
        );
    }
}

/// The workflow with a confidential input the summary reads.
const CONFIDENTIAL: &str = r#"version: 1
name: cascade
inputs:
  logs: { type: string, sensitivity: confidential, default: "db password hunter2hunter2" }
steps:
  summarize:
    task: summarize
    prompt: "Summarize as JSON: {{ inputs.logs }}"
    max_output_tokens: 50
    output:
      schema: { type: object, properties: { summary: { type: string } }, required: [summary] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_steps_cascade_never_reaches_the_cloud() {
    // Plan time: the only target is in the cloud — refused, nothing sent.
    let fake = FakeServer::start().await;
    answers(&fake, || Reply::text("not json"));
    let p = Project::new(&policy(&fake, SUMMARIES, ""), CONFIDENTIAL);
    for cmd in [
        vec!["plan", "wf.yaml", "--policy", "policy.yaml"],
        vec!["run", "wf.yaml", "--policy", "policy.yaml"],
    ] {
        let out = p.tollgate(&cmd).keys().await;
        assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
        let text = transcript(&out);
        assert!(
            text.contains("step `summarize` cannot escalate from local to workhorse"),
            "{text}"
        );
        assert!(text.contains("escalate it to a local model"), "{text}");
    }
    assert_eq!(fake.request_count(), 0);

    // Run time: the target falls back to a local model; the escalation goes
    // there, through the gate, never to the cloud.
    let p = Project::new(
        &policy(&fake, SUMMARIES, "fallbacks:\n  workhorse: [big-local]\n"),
        CONFIDENTIAL,
    );
    fake.set_handler(|r: &Recorded| match r.model().as_str() {
        "local-llm" => Reply::text("not json").logprobs(vec![-0.1], LogprobShape::OpenAi),
        "big-local-llm" => Reply::text(r#"{"summary": "kept local"}"#),
        other => Reply::text(format!("the cloud saw it: {other}")),
    });
    let out = run_json(&p).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    assert_eq!(s["output"]["summary"], "kept local");
    assert_eq!(s["calls"][0]["escalation"]["to"], "big-local");
    assert_eq!(models_asked(&fake), ["local-llm", "big-local-llm"]);
}

/// The budget model answers first (paid), the workhorse is the target.
const CLASSIFY: &str = r#"  - name: summaries
    when: { task: summarize }
    use: budget
    escalate: { to: workhorse }"#;

async fn the_budget_holds_the_escalation_to_its_worst_case(ledger: Ledger) {
    let fake = FakeServer::start().await;
    answers(&fake, || Reply::text("not json").usage(20, 5));
    // Room for the budget model's worst case, not for the workhorse's.
    let p = Project::new(
        &policy(&fake, CLASSIFY, "budgets: { run_usd: 0.0002 }\n"),
        WORKFLOW,
    )
    .on(&ledger);
    let out = run_json(&p).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    let outcomes: Vec<&str> = s["calls"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["escalated", "over_budget"], "{s}");
    assert_eq!(models_asked(&fake), ["gpt-4.1-nano"]);
    assert!(r["cost_usd"].as_f64().unwrap() <= 0.0002);
    let detail = s["detail"].as_str().unwrap();
    assert!(detail.contains("escalating to workhorse"), "{detail}");
}

async fn a_resume_after_a_kill_between_the_calls_does_not_pay_twice(ledger: Ledger) {
    let fake = FakeServer::start().await;
    let workhorse_calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&workhorse_calls);
    fake.set_handler(move |r: &Recorded| match r.model().as_str() {
        "gpt-4.1-nano" => Reply::text("not json").usage(20, 5),
        _ => {
            // The killed run's escalation is held until the kill.
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let reply = Reply::text(r#"{"summary": "escalated"}"#).usage(40, 10);
            if n == 0 {
                reply.delay(Duration::from_secs(300))
            } else {
                reply
            }
        }
    });
    let p = Project::new(&policy(&fake, CLASSIFY, ""), WORKFLOW).on(&ledger);
    let mut child = p
        .run(&["--format", "json"])
        .into_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while workhorse_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the escalation was never sent");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let j = p.journal();
    let run = j.run("last").unwrap().unwrap();
    assert_eq!(run.status, "interrupted");
    assert_eq!(j.escalated_calls(&run.id).unwrap().len(), 1);
    drop(j);

    let out = p
        .tollgate(&["run", "--resume", &run.id, "--format", "json", "--no-cache"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    assert_eq!(s["output"]["summary"], "escalated");
    assert_eq!(s["calls"][0]["escalation"]["from"], "budget");
    // The budget model was paid once, in the killed session.
    let asked = models_asked(&fake);
    assert_eq!(
        asked.iter().filter(|m| *m == "gpt-4.1-nano").count(),
        1,
        "{asked:?}"
    );
    assert_eq!(workhorse_calls.load(Ordering::SeqCst), 2);
    let first = &s["calls"][0]["attempts"][0];
    assert_eq!(first["outcome"], "escalated");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .starts_with("in an earlier session: invalid_output"),
        "{first}"
    );
    let _: &Value = &r;
}

// The cascade's journal reads (escalated calls, escalation history, the
// report's rates) are SQL of each dialect: both run them.
crate::on_both_ledgers!(
    an_invalid_answer_escalates_and_both_calls_are_journaled,
    the_budget_holds_the_escalation_to_its_worst_case,
    a_resume_after_a_kill_between_the_calls_does_not_pay_twice,
);

/// Summaries on the local model, judged by a model the policy routes task
/// `judge` to (the budget model, else the big local one), escalated to
/// `to` below a score of 0.7.
fn judged(to: &str) -> String {
    format!(
        r#"  - name: judges
    when: {{ task: judge }}
    use: budget
  - name: summaries
    when: {{ task: summarize }}
    use: local
    escalate:
      to: {to}
      when: [judge]
      judge: {{ rubric: "Names the crash and when it happens.", min_score: 0.7 }}"#
    )
}

const TEXT_WORKFLOW: &str = r#"version: 1
name: judged
inputs:
  ticket: { type: string, sensitivity: internal, default: "It crashes on save." }
steps:
  summarize:
    task: summarize
    prompt: "Summarize: {{ inputs.ticket }}"
    max_output_tokens: 50
"#;

/// The local model summarizes, a judge (recognised by its rubric) scores
/// `score`, the workhorse and the big local model answer escalations.
fn judged_answers(fake: &FakeServer, score: f64) {
    fake.set_handler(move |r: &Recorded| {
        if r.raw_body.contains("Names the crash") {
            return Reply::text(format!(r#"{{"score": {score}, "reason": "graded"}}"#))
                .usage(60, 12);
        }
        match r.model().as_str() {
            "local-llm" => Reply::text("A crash.").usage(10, 3),
            "big-local-llm" => Reply::text("The big local summary.").usage(10, 5),
            _ => Reply::text("It crashes whenever a file is saved.").usage(40, 10),
        }
    });
}

/// The judge's requests (recognised by the rubric): the models they went to.
fn judges_asked(fake: &FakeServer) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.raw_body.contains("Names the crash"))
        .map(Recorded::model)
        .collect()
}

async fn a_judge_below_the_minimum_score_escalates(ledger: Ledger) {
    let fake = FakeServer::start().await;
    judged_answers(&fake, 0.2);
    let p = Project::new(&policy(&fake, &judged("workhorse"), ""), TEXT_WORKFLOW).on(&ledger);
    // The plan shows the judge, where it goes and what it costs.
    let plan = p
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .output();
    let text = stdout(&plan);
    assert!(
        text.contains("judge        budget gpt-4.1-nano (budget tier, cloud, rule judges) on every first answer: $"),
        "{}",
        transcript(&plan)
    );
    // The judging is money on the judge's tier, the escalations on the
    // target's.
    assert!(text.contains("budget    cascades only  $"), "{text}");
    assert!(text.contains("workhorse cascades only  $"), "{text}");
    let out = run_json(&p).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    assert_eq!(s["output"], "It crashes whenever a file is saved.");
    assert_eq!(s["model"], "workhorse");
    let escalation = &s["calls"][0]["escalation"];
    assert_eq!(escalation["from"], "local");
    assert_eq!(
        escalation["reason"], "judge: score 0.20 is below 0.7: graded",
        "{s}"
    );
    assert_eq!(
        models_asked(&fake),
        ["local-llm", "gpt-4.1-nano", "claude-sonnet-4-6"]
    );
    // The judge is paid for like any call: its cost is on the run's bill.
    let judge_cost = 60.0 * 0.1e-6 + 12.0 * 0.4e-6;
    assert!(r["cost_usd"].as_f64().unwrap() > judge_cost, "{r}");
    // The journal keeps the judge's call under `<step>__judge`, and one
    // escalation of the rule.
    let j = p.journal();
    let run = j.run("last").unwrap().unwrap();
    let finished = j.finished_calls(&run.id).unwrap();
    assert!(finished.contains_key(&("summarize__judge".to_owned(), None)));
    assert_eq!(j.escalated_calls(&run.id).unwrap().len(), 1);
    let history = j.escalation_history("cascades", 0).unwrap();
    assert_eq!(history.get("summaries"), Some(&(1, 1)), "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_at_the_minimum_score_keeps_the_cheap_answer() {
    let fake = FakeServer::start().await;
    judged_answers(&fake, 0.7);
    let p = Project::new(&policy(&fake, &judged("workhorse"), ""), TEXT_WORKFLOW);
    let out = run_json(&p).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    assert_eq!(s["output"], "A crash.");
    assert!(s["calls"][0].get("escalation").is_none(), "{s}");
    assert_eq!(models_asked(&fake), ["local-llm", "gpt-4.1-nano"]);
    // The local answer is free; the judge is not.
    assert!(r["cost_usd"].as_f64().unwrap() > 0.0, "{r}");
    let j = p.journal();
    let history = j.escalation_history("cascades", 0).unwrap();
    assert_eq!(history.get("summaries"), Some(&(0, 1)), "{history:?}");
}

/// A confidential step's judge is routed through the gate: the budget
/// model is passed over for the big local one, and nothing reaches the
/// cloud — not the answer, not the judge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_steps_judge_stays_local() {
    let fake = FakeServer::start().await;
    judged_answers(&fake, 0.1);
    let wf = TEXT_WORKFLOW.replace("sensitivity: internal", "sensitivity: confidential");
    let p = Project::new(
        &policy(
            &fake,
            &judged("big-local"),
            "fallbacks:\n  budget: [big-local]\n",
        ),
        &wf,
    );
    let plan = p
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .output();
    assert!(
        stdout(&plan).contains("judge        big-local big-local-llm (local tier, local"),
        "{}",
        transcript(&plan)
    );
    let out = run_json(&p).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let s = step(&report(&out), "summarize").clone();
    assert_eq!(s["output"], "The big local summary.");
    assert_eq!(judges_asked(&fake), ["big-local-llm"]);
    let asked = models_asked(&fake);
    assert!(
        asked.iter().all(|m| m.ends_with("local-llm")),
        "a cloud model was asked: {asked:?}"
    );
}

/// Killed while the escalation is in flight (after the judge answered):
/// the resume escalates without asking the first model or the judge again.
async fn a_resume_after_a_kill_between_the_judge_and_the_escalation_pays_nothing_twice(
    ledger: Ledger,
) {
    let fake = FakeServer::start().await;
    let workhorse_calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&workhorse_calls);
    fake.set_handler(move |r: &Recorded| {
        if r.raw_body.contains("Names the crash") {
            return Reply::text(r#"{"score": 0.1, "reason": "too short"}"#).usage(60, 12);
        }
        match r.model().as_str() {
            "local-llm" => Reply::text("A crash.").usage(10, 3),
            _ => {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let reply = Reply::text("The escalated summary.").usage(40, 10);
                if n == 0 {
                    reply.delay(Duration::from_secs(300))
                } else {
                    reply
                }
            }
        }
    });
    let p = Project::new(&policy(&fake, &judged("workhorse"), ""), TEXT_WORKFLOW).on(&ledger);
    let mut child = p
        .run(&["--format", "json"])
        .into_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while workhorse_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the escalation was never sent");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let before = models_asked(&fake);
    assert_eq!(before, ["local-llm", "gpt-4.1-nano", "claude-sonnet-4-6"]);

    let out = p
        .tollgate(&["run", "--resume", "last", "--format", "json", "--no-cache"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "summarize");
    assert_eq!(s["output"], "The escalated summary.");
    assert_eq!(s["calls"][0]["escalation"]["from"], "local");
    // Only the escalation was sent again.
    let asked = models_asked(&fake);
    assert_eq!(asked[before.len()..], ["claude-sonnet-4-6"], "{asked:?}");
    let first = &s["calls"][0]["attempts"][0];
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .starts_with("in an earlier session: judge: score 0.10"),
        "{first}"
    );
}

/// Killed while the judge is in flight: the first answer was journaled
/// before the judge was asked, so the resume asks only the judge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_a_kill_during_the_judge_does_not_pay_the_first_answer_again() {
    let fake = FakeServer::start().await;
    let judge_calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&judge_calls);
    fake.set_handler(move |r: &Recorded| {
        if r.raw_body.contains("Names the crash") {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let reply = Reply::text(r#"{"score": 0.9, "reason": "fine"}"#).usage(60, 12);
            return if n == 0 {
                reply.delay(Duration::from_secs(300))
            } else {
                reply
            };
        }
        Reply::text("A crash.").usage(10, 3)
    });
    let p = Project::new(&policy(&fake, &judged("workhorse"), ""), TEXT_WORKFLOW);
    let mut child = p
        .run(&["--format", "json"])
        .into_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while judge_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the judge was never asked");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    assert_eq!(models_asked(&fake), ["local-llm", "gpt-4.1-nano"]);

    let out = p
        .tollgate(&["run", "--resume", "last", "--format", "json", "--no-cache"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let s = step(&report(&out), "summarize").clone();
    assert_eq!(s["output"], "A crash.");
    assert_eq!(
        models_asked(&fake),
        ["local-llm", "gpt-4.1-nano", "gpt-4.1-nano"],
        "only the judge is asked again"
    );
    assert_eq!(s["calls"][0]["attempts"][0]["outcome"], "resumed", "{s}");
}

crate::on_both_ledgers!(
    a_judge_below_the_minimum_score_escalates,
    a_resume_after_a_kill_between_the_judge_and_the_escalation_pays_nothing_twice,
);
