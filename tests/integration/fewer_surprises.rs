//! Saying the truth early (issue 15): models past or near their providers'
//! retirement dates, tier labels far from a model's price.

use insta_cmd::assert_cmd_snapshot;

use crate::support::*;

const WORKFLOW: &str = "version: 1\nname: w\ninputs:\n  x: {type: string}\nsteps:\n  a: {task: summarize, prompt: 'Summarize {{ inputs.x }}'}\n";

/// gpt-4.1-nano retires on 2026-10-23 (successor gpt-5.6-luna in the
/// catalog); gpt-5.4-mini has no date.
const POLICY: &str = r#"version: 1
name: dated
providers:
  openai: { kind: openai, api_key_env: TEST_OPENAI_KEY }
models:
  nano: { provider: openai, model: gpt-4.1-nano, tier: budget }
  mini: { provider: openai, model: gpt-5.4-mini, tier: workhorse }
rules:
  - name: all
    use: nano
fallbacks:
  nano: [mini]
"#;

fn project() -> Project {
    Project::new(POLICY, WORKFLOW)
}

/// Months before the date: nothing is said (the tests' default day).
#[test]
fn a_model_far_from_its_retirement_says_nothing() {
    let project = project();
    let out = project
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(!stderr(&out).contains("retire"), "{}", transcript(&out));
}

/// Within 90 days of the date: a located warning in `check` and `plan`,
/// naming the date and the successor; the exit code does not change.
#[test]
fn a_model_retiring_soon_is_a_warning_naming_its_successor() {
    let project = project();
    for args in [
        &["check", "wf.yaml", "policy.yaml"][..],
        &["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"][..],
    ] {
        let out = project
            .tollgate(args)
            .env("TOLLGATE_TEST_TODAY", "2026-09-01")
            .output();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", transcript(&out));
        let err = stderr(&out);
        assert_eq!(
            err.matches("`gpt-4.1-nano` retires on 2026-10-23").count(),
            1,
            "{args:?}: {err}"
        );
        assert!(err.contains("policy.yaml:6:"), "{err}");
        assert!(err.contains("in 52 days"), "{err}");
        assert!(err.contains("`gpt-5.6-luna`"), "{err}");
    }
    stable_output(project.path()).bind(|| {
        assert_cmd_snapshot!(
            "retiring_model_check",
            project
                .tollgate(&["check", "wf.yaml", "policy.yaml"])
                .env("TOLLGATE_TEST_TODAY", "2026-09-01")
                .into_std()
        );
    });
}

/// From the date on: an error in `check`, `plan` and `run` (exit 2, no
/// call made), naming the successor.
#[test]
fn a_retired_model_is_an_error() {
    let project = project();
    for args in [
        &["check", "wf.yaml", "policy.yaml"][..],
        &["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"][..],
        &["run", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"][..],
    ] {
        let out = project
            .tollgate(args)
            .env("TOLLGATE_TEST_TODAY", "2026-10-23")
            .output();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", transcript(&out));
        let err = stderr(&out);
        assert!(
            err.contains("`gpt-4.1-nano` was retired on 2026-10-23"),
            "{args:?}: {err}"
        );
        assert!(err.contains("retired today: calls to it fail"), "{err}");
        assert!(err.contains("set `model: gpt-5.6-luna`"), "{err}");
    }
    stable_output(project.path()).bind(|| {
        assert_cmd_snapshot!(
            "retired_model_plan",
            project
                .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"])
                .env("TOLLGATE_TEST_TODAY", "2026-12-07")
                .into_std()
        );
    });
}

/// A malformed test day is an error, not a silent fall back to the clock.
#[test]
fn a_bad_test_day_is_an_error() {
    let out = project()
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .env("TOLLGATE_TEST_TODAY", "tomorrow")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(stderr(&out).contains("TOLLGATE_TEST_TODAY"));
}

/// A flagship-priced model labelled `budget`: a located warning in `check`
/// (and wherever the policy is loaded), exit code unchanged.
#[test]
fn a_flagship_priced_model_labelled_budget_is_a_warning() {
    let policy = POLICY.replace(
        "model: gpt-4.1-nano, tier: budget",
        "model: claude-opus-5, tier: budget",
    );
    let policy = policy.replace(
        "  openai: { kind: openai, api_key_env: TEST_OPENAI_KEY }\n",
        "  openai: { kind: openai, api_key_env: TEST_OPENAI_KEY }\n  anthropic: { kind: anthropic, api_key_env: TEST_ANTHROPIC_KEY }\n",
    );
    let policy = policy.replace(
        "provider: openai, model: claude",
        "provider: anthropic, model: claude",
    );
    let project = Project::new(&policy, WORKFLOW);
    let out = project
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("model `nano` is labelled `budget` but `claude-opus-5` is flagship-priced"),
        "{err}"
    );
    assert!(err.contains("policy.yaml:7:"), "{err}");
    assert!(err.contains("set `tier: flagship`"), "{err}");
}

/// Three items on the local model, which takes one call at a time: each
/// answer takes the fake 150 ms, so the second and third calls wait for a
/// slot. The report tells that queueing from the calls' own time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_table_separates_queueing_from_the_calls_own_latency() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("ok").delay(std::time::Duration::from_millis(150)));
    let workflow = "version: 1\nname: q\ninputs:\n  xs: {type: array, default: [a, b, c]}\nsteps:\n  each:\n    task: summarize\n    sensitivity: secret\n    for_each: inputs.xs\n    prompt: 'Summarize {{ item }}'\n    max_output_tokens: 5\n";
    let project = Project::new(&policy(&fake, ""), workflow);
    let out = project.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "each");
    let calls = s["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    // Every call spent at least the fake's delay in its HTTP call; the
    // step's figures are the calls' sums.
    let ms = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    for c in calls {
        assert!(ms(c, "call_ms") >= 150, "{c}");
    }
    let queued: u64 = calls.iter().map(|c| ms(c, "queued_ms")).sum();
    let in_calls: u64 = calls.iter().map(|c| ms(c, "call_ms")).sum();
    assert_eq!(ms(s, "queued_ms"), queued);
    assert_eq!(ms(s, "call_ms"), in_calls);
    // One slot: whichever call went last waited for both others' answers.
    let most = calls.iter().map(|c| ms(c, "queued_ms")).max().unwrap();
    assert!(most >= 300, "{calls:?}");
    // The text table has both columns and the run's split.
    let text = project.run(&["--no-cache"]).await;
    // The summary goes to stderr; stdout is the answer.
    let t = stderr(&text);
    assert!(t.contains("QUEUED") && t.contains("LATENCY"), "{t}");
    assert!(
        t.contains("queued for slots, rate limits and budget"),
        "{t}"
    );
}

/// A batch that failed one of its items: that item is answered
/// synchronously at full price, and the run says so with what the batch
/// discount would have saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_falling_back_to_synchronous_calls_says_what_the_discount_was() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("bug").usage(20, 1));
    fake.set_batch_script(fake_llm::BatchScript {
        polls_before_done: 1,
        failed_ids: vec!["item-1".into()],
        ..fake_llm::BatchScript::default()
    });
    let workflow = "version: 1\nname: b\ninputs:\n  xs: {type: array, default: [a, b]}\nsteps:\n  label:\n    task: classify\n    latency: batch\n    for_each: inputs.xs\n    prompt: 'Label {{ item }}'\n    max_output_tokens: 5\n";
    let project = Project::new(&policy(&fake, ""), workflow);
    let out = project
        .run(&["--format", "json", "--batch-poll-interval", "10ms"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let calls = step(&r, "label")["calls"].as_array().unwrap().clone();
    assert_eq!(calls[0]["batch_fallback"], false);
    assert_eq!(calls[1]["batch_fallback"], true);
    // gpt-4.1-nano: $0.10 / $0.40 per million, half in a batch; 20 in, 1 out.
    let lost = calls[1]["lost_discount_usd"].as_f64().unwrap();
    let expected = (20.0 * 0.05 + 0.2) / 1e6;
    assert!((lost - expected).abs() < 1e-12, "{lost} vs {expected}");

    let fake2 = fake_llm::FakeServer::start().await;
    fake2.set_default(fake_llm::Reply::text("bug").usage(20, 1));
    fake2.set_batch_script(fake_llm::BatchScript {
        polls_before_done: 1,
        failed_ids: vec!["item-1".into()],
        ..fake_llm::BatchScript::default()
    });
    let project = Project::new(&policy(&fake2, ""), workflow);
    let out = project.run(&["--batch-poll-interval", "10ms"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stderr(&out);
    assert!(
        text.contains(
            "batch: 1 call the batch did not answer went synchronously, at full price: $0.0000012 more than at batch prices"
        ),
        "{text}"
    );
}

/// `test SUITE --accept` promotes the pending snapshots of that suite's
/// cases only: in a snapshot folder two suites share, the other suite's
/// pending file stays pending, and a file no case owns is named.
#[test]
fn test_accept_promotes_only_the_given_suites_pending_snapshots() {
    let policy = "version: 1\nname: p\nproviders:\n  local: { kind: openai-compatible, base_url: \"http://127.0.0.1:9/v1\" }\nmodels:\n  local: { provider: local, model: m, tier: local, context_window: 8192 }\nrules:\n  - { name: all, use: local }\n";
    let workflow = "version: 1\nname: w\ninputs:\n  x: {type: string}\nsteps:\n  s: {task: summarize, prompt: 'Summarize {{ inputs.x }}'}\n";
    let suite = |case: &str| {
        format!(
            "workflow: ../wf.yaml\npolicy: ../policy.yaml\nsnapshots: shared\ncases:\n  - name: {case}\n    inputs: {{ x: hello }}\n    expect:\n      s: {{ snapshot: true }}\n"
        )
    };
    let project = Project::new(policy, workflow)
        .with("evals/a.yaml", &suite("case-a"))
        .with("evals/b.yaml", &suite("case-b"))
        .with("evals/shared/case-a.s.snap.new", "a\n---\nA\n")
        .with("evals/shared/case-b.s.snap.new", "b\n---\nB\n")
        .with("evals/shared/renamed.s.snap.new", "r\n---\nR\n");
    let out = project
        .tollgate(&["test", "evals/a.yaml", "--accept"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(
        text.contains("accepted evals/shared/case-a.s.snap"),
        "{text}"
    );
    assert!(project.exists("evals/shared/case-a.s.snap"));
    assert!(project.exists("evals/shared/case-b.s.snap.new"), "{text}");
    assert!(
        text.contains("left evals/shared/case-b.s.snap.new")
            && text.contains("left evals/shared/renamed.s.snap.new"),
        "{text}"
    );
    // Both suites: case-b's is theirs now; the renamed case's is nobody's.
    let out = project.tollgate(&["test", "evals", "--accept"]).output();
    let text = stdout(&out);
    assert!(
        text.contains("accepted evals/shared/case-b.s.snap"),
        "{text}"
    );
    assert!(!text.contains("left evals/shared/case-b"), "{text}");
    assert!(
        text.contains("left evals/shared/renamed.s.snap.new"),
        "{text}"
    );
    // Nothing left to accept: the folder looked in is named.
    let out = project
        .tollgate(&["test", "evals/a.yaml", "--accept=case-a"])
        .output();
    assert!(
        stdout(&out).contains("no pending snapshots of case `case-a` in evals/shared"),
        "{}",
        transcript(&out)
    );
}

/// OpenRouter's provider preferences in the policy reach every request as
/// its `provider` object, as OpenRouter expects; other providers' requests
/// carry none; and on another kind of provider they are a located error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openrouter_routing_preferences_are_sent_with_every_call() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("ok").usage(12, 1));
    let base = fake.base_url();
    let policy = format!(
        r#"version: 1
name: or
providers:
  openrouter:
    kind: openrouter
    base_url: "{base}/v1"
    api_key_env: TEST_OPENAI_KEY
    allow_insecure: true
    routing: {{ order: [anthropic, amazon-bedrock], allow_fallbacks: false, data_collection: deny, zdr: true }}
  openai: {{ kind: openai, base_url: "{base}/v1", api_key_env: TEST_OPENAI_KEY, allow_insecure: true }}
models:
  sonnet: {{ provider: openrouter, model: anthropic/claude-sonnet-4-6, tier: workhorse }}
  nano: {{ provider: openai, model: gpt-5.4-nano, tier: budget }}
rules:
  - {{ name: short, when: {{ task: [classify] }}, use: nano }}
  - {{ name: rest, use: sonnet }}
"#
    );
    let workflow = "version: 1\nname: o\ninputs:\n  x: {type: string}\nsteps:\n  a: {task: summarize, prompt: 'Summarize {{ inputs.x }}', max_output_tokens: 5}\n  b: {task: classify, prompt: 'Label {{ inputs.x }}', max_output_tokens: 5}\n";
    let project = Project::new(&policy, workflow);
    let out = project.run(&["-i", "x=hi", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let requests = fake.requests();
    let sent = |model: &str| {
        requests
            .iter()
            .find(|r| r.body["model"] == model)
            .unwrap_or_else(|| panic!("no request for {model}"))
            .body
            .clone()
    };
    assert_eq!(
        sent("anthropic/claude-sonnet-4-6")["provider"],
        serde_json::json!({
            "order": ["anthropic", "amazon-bedrock"],
            "allow_fallbacks": false,
            "data_collection": "deny",
            "zdr": true
        })
    );
    assert!(sent("gpt-5.4-nano").get("provider").is_none());
    // Priced from the catalog through the vendor part of the id.
    let r = report(&out);
    assert!(step(&r, "a")["cost_usd"].as_f64().unwrap() > 0.0, "{r}");

    let wrong = policy.replace(
        "  openai: { kind: openai,",
        "  openai: { kind: openai, routing: { zdr: true },",
    );
    let project = Project::new(&wrong, workflow);
    let out = project
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`routing` only applies to openrouter providers, not openai"),
        "{err}"
    );
    assert!(err.contains("policy.yaml:10:27"), "{err}");
}

/// A suite whose policy routes to a retired model fails before any call,
/// as `plan` would (also in replay: the recordings would answer, the
/// provider no longer does).
#[test]
fn a_suite_on_a_retired_model_is_refused() {
    let project = project().with(
        "evals/s.yaml",
        "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases:\n  - name: one\n    inputs: { x: hello }\n    expect: { a: { contains: hello } }\n",
    );
    let out = project
        .tollgate(&["test", "--replay"])
        .env("TOLLGATE_TEST_TODAY", "2026-10-24")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`gpt-4.1-nano` was retired on 2026-10-23"),
        "{err}"
    );
    // Before the date the same suite gets past the check (it then lacks a
    // recording, a different error).
    let before = project.tollgate(&["test", "--replay"]).output();
    assert!(
        !stderr(&before).contains("retired"),
        "{}",
        transcript(&before)
    );
}

/// `plan --compare` holds the baseline to the retirement dates too: a
/// baseline on a retired model is an error naming the baseline's file.
#[test]
fn plan_compare_refuses_a_baseline_on_a_retired_model() {
    let fresh = POLICY
        .replace("gpt-4.1-nano", "gpt-5.4-mini")
        .replace("name: dated", "name: fresh");
    let project = Project::new(&fresh, WORKFLOW).with("baseline.yaml", POLICY);
    let out = project
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--compare",
            "baseline.yaml",
            "-i",
            "x=1",
        ])
        .env("TOLLGATE_TEST_TODAY", "2026-10-23")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`gpt-4.1-nano` was retired on 2026-10-23"),
        "{err}"
    );
    assert!(err.contains("baseline.yaml:"), "{err}");
    assert!(!err.contains("policy.yaml:"), "{err}");
}
