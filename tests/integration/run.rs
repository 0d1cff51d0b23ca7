//! `tollgate run` end to end: the binary, a temporary project, and the
//! loopback fakes of the provider APIs. Every test asserts what a user sees:
//! the exit code, the summary, the outputs, what the fake was (not) sent.
//! Scenarios whose fake is plain data (answers by model or by prompt) live
//! in `tests/inputs/run/` (see `data_driven::run_scenarios`); the ones here
//! script the fake in code or check files and request bodies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_llm::{FakeServer, Reply};
use serde_json::Value;

use crate::support::{KEY, Project, assert_no_key, policy, report, step, transcript};

/// Every try of the first call of a step.
fn attempts(report: &Value, id: &str) -> Vec<Value> {
    step(report, id)["calls"][0]["attempts"]
        .as_array()
        .unwrap()
        .clone()
}

const TRIAGE: &str = r#"version: 1
name: triage
inputs:
  ticket: { type: string, sensitivity: internal }
  logs: { type: string, sensitivity: confidential, default: "" }
steps:
  summarize:
    task: summarize
    prompt: "Summarize: {{ inputs.ticket }}"
    max_output_tokens: 100
  classify:
    task: classify
    prompt: "bug, feature or question? {{ steps.summarize.output }}"
    max_output_tokens: 5
    output: { schema: { type: string, enum: [bug, feature, question] } }
  fix_plan:
    task: debug
    reasoning: deep
    when: "steps.classify.output == 'bug'"
    prompt: "Plan a fix. {{ steps.summarize.output }} Logs: {{ inputs.logs }}"
  reply:
    task: write
    prompt: "Write a reply to the customer about: {{ steps.summarize.output }}"
"#;

/// Answers by model, so each provider's reply is recognisable.
fn by_model(fake: &FakeServer) {
    fake.set_handler(|r| match r.model().as_str() {
        "gpt-4.1-nano" if r.raw_body.contains("bug, feature or question") => {
            Reply::text("bug").usage(30, 1)
        }
        "gpt-4.1-nano" => Reply::text("The app crashes on save.").usage(40, 8),
        "claude-sonnet-4-6" => Reply::text("Dear customer, we are on it.").usage(50, 10),
        "gemini-2.5-pro" => Reply::text("Check the 2 GB write path.").usage(60, 12),
        "local-llm" => Reply::text("Look at the logs: OOM at 2 GB.").usage(70, 14),
        other => Reply::text(format!("unexpected model {other}")),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_each_step_to_its_provider_and_reports_costs() {
    let fake = FakeServer::start().await;
    by_model(&fake);
    let p = Project::new(&policy(&fake, ""), TRIAGE);
    let out = p
        .run(&[
            "--input",
            "ticket=It crashes when I save 2 GB files.",
            "--format",
            "json",
            "--out",
            "out",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(step(&r, "summarize")["model"], "budget");
    assert_eq!(step(&r, "classify")["output"], "bug");
    // logs are confidential (even when empty): fix_plan stays local although
    // its rule would pick the flagship.
    assert_eq!(step(&r, "fix_plan")["model"], "local");
    assert_eq!(step(&r, "reply")["model"], "workhorse");
    assert_eq!(step(&r, "reply")["output"], "Dear customer, we are on it.");
    // Costs come from usage and catalog prices: gpt-4.1-nano is $0.10/$0.40 per Mtok.
    let cost = step(&r, "summarize")["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (40.0 * 0.1 + 8.0 * 0.4) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    assert_eq!(step(&r, "fix_plan")["cost_usd"].as_f64(), Some(0.0));
    // Outputs and run.json were written.
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/classify.txt")).unwrap(),
        "bug"
    );
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/reply.txt")).unwrap(),
        "Dear customer, we are on it."
    );
    let run_json = std::fs::read_to_string(p.path().join("out/run.json")).unwrap();
    assert!(run_json.contains("\"status\": \"succeeded\""));
    // Each provider got its own dialect, and the key only in a header.
    let apis: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| format!("{:?}", r.api))
        .collect();
    assert!(apis.contains(&"OpenAi".to_owned()) && apis.contains(&"Anthropic".to_owned()));
    for req in fake.requests() {
        assert!(!req.raw_body.contains(KEY));
    }
    assert_no_key(&out, &run_json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_honour_every_retry_header_then_succeed() {
    for (name, reply) in [
        ("retry-after-ms", Reply::rate_limited().retry_after_ms(20.0)),
        (
            "retry-after seconds",
            Reply::rate_limited().retry_after_secs(0.05),
        ),
        (
            "retry-after date",
            Reply::rate_limited().retry_after_date(Duration::from_millis(0)),
        ),
        ("529 overloaded", Reply::overloaded().retry_after_ms(10.0)),
        ("500", Reply::server_error().retry_after_ms(10.0)),
    ] {
        let fake = FakeServer::start().await;
        fake.push(reply);
        fake.set_default(Reply::text("fine").usage(5, 1));
        let wf = "version: 1\nname: one\nsteps:\n  a: { task: summarize, prompt: hi, max_output_tokens: 10 }\n";
        let p = Project::new(&policy(&fake, ""), wf);
        let out = p.run(&["--format", "json"]).await;
        assert_eq!(out.status.code(), Some(0), "{name}: {}", transcript(&out));
        let r = report(&out);
        let attempts = attempts(&r, "a");
        assert_eq!(attempts.len(), 2, "{name}: {attempts:?}");
        assert_ne!(attempts[0]["outcome"], "ok", "{name}");
        assert!(attempts[0]["waited_ms"].as_u64().is_some(), "{name}");
        assert_eq!(attempts[1]["outcome"], "ok", "{name}");
        assert_eq!(fake.request_count(), 2, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_errors_move_to_a_larger_window() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| match r.model().as_str() {
        "local-llm" => Reply::llamacpp_context_length(),
        _ => Reply::text("summarized on the big window").usage(900, 20),
    });
    let wf =
        "version: 1\nname: one\nsteps:\n  a: { task: write, prompt: hi, max_output_tokens: 10 }\n";
    // `rest` picks the local model, whose server says the prompt is too long;
    // its chain offers a smaller local window (skipped) and then budget.
    let pol = policy(&fake, "fallbacks:\n  local: [small, budget]\n")
        .replace("  - name: rest\n    use: workhorse", "  - name: rest\n    use: local")
        .replace(
            "  budget:    {",
            "  small:     { provider: local, model: small-llm, tier: local, context_window: 4096 }\n  budget:    {",
        );
    let p2 = Project::new(&pol, wf);
    let out = p2.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let a = step(&r, "a");
    assert_eq!(
        a["model"], "budget",
        "the smaller local window is skipped after a context-length error"
    );
    let models: Vec<String> = fake.requests().iter().map(|r| r.model()).collect();
    assert_eq!(models, vec!["local-llm", "gpt-4.1-nano"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_stops_a_call_that_could_cross_it_but_never_a_free_one() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("ok").usage(10, 10));
    // gemini-2.5-pro: $1.25 / $10 per Mtok; 100k output tokens worst case = $1.
    let wf = r#"version: 1
name: budget
inputs:
  notes: { type: string, sensitivity: confidential, default: "n" }
steps:
  expensive: { task: debug, reasoning: deep, prompt: "think hard", max_output_tokens: 60000 }
  free: { task: debug, prompt: "{{ inputs.notes }}", max_output_tokens: 60000 }
"#;
    let p = Project::new(
        &policy(&fake, "budgets:\n  run_usd: 0.10\n")
            .replace("context_window: 8192", "context_window: 100000"),
        wf,
    );
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    let e = step(&r, "expensive");
    assert_eq!(e["status"], "failed");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("would cross the run budget"),
        "{e}"
    );
    assert_eq!(step(&r, "free")["status"], "succeeded");
    assert!(
        fake.requests().iter().all(|r| r.model() == "local-llm"),
        "the over-budget call was made"
    );
    assert!(r["cost_usd"].as_f64().unwrap() <= 0.10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_is_validated_and_asked_again_once() {
    let fake = FakeServer::start().await;
    fake.push(Reply::text("{\"label\": \"maybe\"}").usage(5, 3));
    fake.push(Reply::text("{\"label\": \"bug\"}").usage(9, 3));
    let wf = r#"version: 1
name: schema
steps:
  label:
    task: classify
    prompt: "Label it"
    max_output_tokens: 20
    output: { schema: { type: object, required: [label], properties: { label: { enum: [bug, feature] } } } }
"#;
    let p = Project::new(&policy(&fake, ""), wf);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(
        step(&report(&out), "label")["output"],
        serde_json::json!({"label": "bug"})
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    // The provider was asked for JSON natively, and the retry carried the error.
    assert!(
        reqs[0].body["response_format"]["type"] == "json_schema",
        "{}",
        reqs[0].body
    );
    assert!(
        reqs[1]
            .raw_body
            .contains("does not match the required JSON Schema"),
        "{}",
        reqs[1].raw_body
    );

    // Wrong twice: the step fails with the error and the raw answer.
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("{\"label\": \"maybe\"}").usage(5, 3));
    let p = Project::new(&policy(&fake, ""), wf);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let detail = step(&report(&out), "label")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("does not match the output schema") && detail.contains("maybe"),
        "{detail}"
    );
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_are_retried() {
    for (name, reply) in [
        (
            "cut before its terminator",
            Reply::text("partial answer that never ends")
                .streamed()
                .cut_after(1),
        ),
        ("malformed JSON", Reply::malformed()),
        ("error inside a 200 stream", Reply::overloaded().in_stream()),
    ] {
        let fake = FakeServer::start().await;
        fake.push(reply);
        fake.set_default(Reply::text("whole answer").usage(4, 2));
        let wf = "version: 1\nname: one\nsteps:\n  a: { task: write, prompt: hi, max_output_tokens: 10 }\n";
        let p = Project::new(&policy(&fake, ""), wf);
        let out = p.run(&["--format", "json"]).await;
        let r = report(&out);
        let a = step(&r, "a");
        let attempts = attempts(&r, "a");
        match name {
            // A malformed body is not retryable: the step fails, and says so.
            "malformed JSON" => {
                assert_eq!(out.status.code(), Some(1), "{name}: {}", transcript(&out));
                assert_eq!(attempts[0]["outcome"], "malformed", "{name}");
            }
            _ => {
                assert_eq!(out.status.code(), Some(0), "{name}: {}", transcript(&out));
                assert_eq!(a["output"], "whole answer", "{name}");
                assert_eq!(attempts.len(), 2, "{name}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_times_out_and_is_retried() {
    let fake = FakeServer::start().await;
    fake.push(
        Reply::text("never finishes")
            .streamed()
            .stall_after(1)
            .stall_for(Duration::from_secs(30)),
    );
    fake.set_default(Reply::text("second try").usage(4, 2));
    let wf = "version: 1\nname: one\nsteps:\n  a: { task: write, prompt: hi, max_output_tokens: 10, timeout: 1s }\n";
    let p = Project::new(&policy(&fake, ""), wf);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let attempts = attempts(&r, "a");
    assert_eq!(attempts[0]["outcome"], "timeout");
    assert_eq!(step(&r, "a")["output"], "second try");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_steps_with_twenty_percent_transient_failures_lose_nothing() {
    let fake = FakeServer::start().await;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (s, t) = (Arc::clone(&seen), Arc::clone(&tries));
    fake.set_handler(move |r| {
        let id = r
            .raw_body
            .split("STEP-")
            .nth(1)
            .and_then(|t| t.split('.').next())
            .unwrap_or("?")
            .to_owned();
        let n: usize = id.parse().unwrap_or(0);
        let attempt = {
            let mut t = t.lock().unwrap();
            let e = t.entry(id.clone()).or_default();
            *e += 1;
            *e
        };
        // One step in five fails transiently (one in twenty-five twice), in
        // rotating forms; decided per step, so the test cannot be unlucky.
        let fails = if n % 25 == 0 {
            2
        } else if n % 5 == 0 {
            1
        } else {
            0
        };
        if attempt <= fails {
            return match (n / 5) % 3 {
                0 => Reply::rate_limited().retry_after_ms(5.0),
                1 => Reply::server_error().retry_after_ms(5.0),
                _ => Reply::overloaded().retry_after_ms(5.0),
            };
        }
        *s.lock().unwrap().entry(id.clone()).or_default() += 1;
        Reply::text(format!("out-{id}")).usage(10, 3)
    });
    let mut wf = String::from("version: 1\nname: big\nsteps:\n");
    for i in 0..200 {
        let dep = if i >= 10 {
            format!(" after {{{{ steps.s{}.output }}}}", i - 10)
        } else {
            String::new()
        };
        wf.push_str(&format!("  s{i}: {{ task: write, prompt: \"STEP-{i}.{dep}\", max_output_tokens: 10, retries: 4 }}\n"));
    }
    let p = Project::new(&policy(&fake, ""), &wf);
    let out = p
        .run(&["--format", "json", "--quiet", "--concurrency", "16"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    for i in 0..200 {
        assert_eq!(step(&r, &format!("s{i}"))["output"], format!("out-{i}"));
    }
    // Every step was answered exactly once: nothing lost, nothing paid twice.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|&n| n == 1));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_in_flight_calls_and_still_prints_the_summary() {
    for signal in ["-INT", "-TERM"] {
        interrupt_with(signal).await;
    }
}

async fn interrupt_with(signal: &str) {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("slow").delay(Duration::from_secs(60)));
    let wf = "version: 1\nname: slow\nsteps:\n  a: { task: write, prompt: hi, max_output_tokens: 10 }\n  b: { task: write, prompt: \"{{ steps.a.output }}\", max_output_tokens: 10 }\n";
    let p = Project::new(&policy(&fake, ""), wf);
    let child = p
        .run(&[])
        .into_tokio()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the call is in flight, then interrupt.
    for _ in 0..200 {
        if fake.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(fake.request_count(), 1);
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CANCELLED"), "{err}");
    assert!(err.contains("a: cancelled: interrupted"), "{err}");
    assert!(err.contains("b: not started"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_server_takes_one_call_at_a_time_while_cloud_calls_run_in_parallel() {
    // Local steps queue on the server's one slot; the cloud model has none.
    let local = FakeServer::start().await;
    local.set_default(
        Reply::text("local")
            .usage(3, 1)
            .delay(Duration::from_millis(150)),
    );
    let cloud = FakeServer::start().await;
    cloud.set_default(
        Reply::text("cloud")
            .usage(3, 1)
            .delay(Duration::from_millis(150)),
    );
    let pol = policy(&cloud, "").replace(
        &format!(
            "local:     {{ kind: openai-compatible, base_url: \"{}/v1\" }}",
            cloud.base_url()
        ),
        &format!(
            "local:     {{ kind: openai-compatible, base_url: \"{}/v1\" }}",
            local.base_url()
        ),
    );
    let mut wf = String::from(
        "version: 1\nname: mixed\ninputs:\n  s: { type: string, sensitivity: secret, default: x }\nsteps:\n",
    );
    for i in 0..4 {
        wf.push_str(&format!("  local{i}: {{ task: write, prompt: \"{{{{ inputs.s }}}} {i}\", max_output_tokens: 5 }}\n"));
        wf.push_str(&format!(
            "  cloud{i}: {{ task: write, prompt: \"c{i}\", max_output_tokens: 5 }}\n"
        ));
    }
    let p = Project::new(&pol, &wf);
    let out = p.run(&["--format", "json", "--quiet"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(local.request_count(), 4);
    assert_eq!(cloud.request_count(), 4);
    assert_eq!(
        local.max_in_flight(),
        1,
        "the local server was given more than its one slot"
    );
    assert!(
        cloud.max_in_flight() > 1,
        "cloud calls did not run in parallel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_concurrency_limit_is_respected() {
    let fake = FakeServer::start().await;
    fake.set_default(
        Reply::text("ok")
            .usage(3, 1)
            .delay(Duration::from_millis(100)),
    );
    let pol = policy(&fake, "").replace(
        "workhorse: { provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }",
        "workhorse: { provider: anthropic, model: claude-sonnet-4-6, tier: workhorse, limits: { concurrency: 2, rpm: 6000 } }",
    );
    let mut wf = String::from("version: 1\nname: many\nsteps:\n");
    for i in 0..8 {
        wf.push_str(&format!(
            "  w{i}: {{ task: write, prompt: \"w{i}\", max_output_tokens: 5 }}\n"
        ));
    }
    let p = Project::new(&pol, &wf);
    let out = p.run(&["--format", "json", "--quiet"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(fake.request_count(), 8);
    assert_eq!(fake.max_in_flight(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_reported_cost_is_what_the_run_charges() {
    let fake = FakeServer::start().await;
    // Above the worst case reserved (about $0.000005) but believable for
    // the call (OpenRouter may route to a pricier upstream): charged as
    // reported, and flagged (see money::a_huge_reported_cost_…).
    fake.set_default(Reply::text("ok").usage(30, 10).cost(0.0001));
    let wf = "version: 1\nname: one\nsteps:\n  a: { task: summarize, prompt: hi, max_output_tokens: 10 }\n";
    let pol = policy(&fake, "").replace("kind: openai, base_url", "kind: openrouter, base_url");
    let p = Project::new(&pol, wf);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "a")["cost_usd"].as_f64(), Some(0.0001));
    assert_eq!(r["cost_usd"].as_f64(), Some(0.0001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_holds_when_a_local_server_cannot_start() {
    // Regression: a fallback after a candidate that was skipped without a
    // call (its server would not start) must still pass the gate.
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("cloud saw it"));
    let pol = policy(&fake, "fallbacks:\n  local: [budget]\n").replace(
        &format!("local:     {{ kind: openai-compatible, base_url: \"{}/v1\" }}", fake.base_url()),
        "local:     { kind: openai-compatible, base_url: \"http://127.0.0.1:9/v1\", launch: { binary: /nonexistent/llama-server, model: /nonexistent/m.gguf } }",
    );
    let wf = "version: 1\nname: one\ninputs:\n  logs: { type: string, sensitivity: secret, default: TOPSECRET }\nsteps:\n  a: { task: debug, prompt: \"{{ inputs.logs }}\", max_output_tokens: 10 }\n";
    let p = Project::new(&pol, wf);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert_eq!(fake.request_count(), 0, "secret data reached a cloud model");
    let detail = step(&report(&out), "a")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("above cloud_max"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_launch_arguments_is_never_printed() {
    let fake = FakeServer::start().await;
    let secret = "sk-llama-do-not-print-9c2f";
    let pol = policy(&fake, "").replace(
        &format!("local:     {{ kind: openai-compatible, base_url: \"{}/v1\" }}", fake.base_url()),
        "local:     { kind: openai-compatible, base_url: \"http://127.0.0.1:9/v1\", launch: { binary: /bin/false, model: /bin/sh, args: [\"--api-key\", \"${TOLLGATE_TEST_LLAMA_KEY}\"] } }",
    );
    let wf = "version: 1\nname: one\ninputs:\n  s: { type: string, sensitivity: secret, default: x }\nsteps:\n  a: { task: debug, prompt: \"{{ inputs.s }}\", max_output_tokens: 10 }\n";
    let p = Project::new(&pol, wf);
    let out = p
        .run_env(
            &["--format", "json", "--out", "out"],
            &[("TOLLGATE_TEST_LLAMA_KEY", secret)],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let detail = step(&report(&out), "a")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("${TOLLGATE_TEST_LLAMA_KEY}"), "{detail}");
    let run_json = std::fs::read_to_string(p.path().join("out/run.json")).unwrap();
    let all = format!(
        "{}{}{run_json}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(secret), "the launch secret was printed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_does_not_crash_the_run() {
    let fake = FakeServer::start().await;
    fake.push(Reply::rate_limited().header("retry-after", "1e20"));
    fake.set_default(Reply::text("fine").usage(5, 1));
    let wf = "version: 1\nname: one\nsteps:\n  a: { task: summarize, prompt: hi, max_output_tokens: 10 }\n";
    let p = Project::new(&policy(&fake, ""), wf);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(step(&report(&out), "a")["output"], "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_reservations_instead_of_failing_when_they_fit() {
    // Worst case per call ≈ $0.30 (claude-sonnet-4-6, 20k output tokens at
    // $15/Mtok); the real cost is tiny, so all eight fit in $1 — but never
    // more than three reservations at once.
    let fake = FakeServer::start().await;
    fake.set_default(
        Reply::text("ok")
            .usage(10, 5)
            .delay(Duration::from_millis(50)),
    );
    let wf = r#"version: 1
name: many
inputs:
  items: { type: array, default: [1, 2, 3, 4, 5, 6, 7, 8] }
steps:
  each: { task: write, for_each: inputs.items, prompt: "item {{ item }}", max_output_tokens: 20000 }
"#;
    let p = Project::new(&policy(&fake, "budgets:\n  run_usd: 1.00\n"), wf);
    let out = p.run(&["--format", "json", "--concurrency", "8"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(fake.request_count(), 8);
    assert!(
        fake.max_in_flight() <= 3,
        "reservations over the budget were in flight at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_never_keeps_a_stale_answer_from_an_earlier_run() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        if r.raw_body.contains("BREAK") {
            Reply::status(400)
        } else {
            Reply::text("fresh").usage(3, 1)
        }
    });
    let wf = "version: 1\nname: one\nsteps:\n  a: { task: write, prompt: \"{{ 'BREAK' if false else 'ok' }}\", max_output_tokens: 10 }\n";
    let p = Project::new(&policy(&fake, ""), wf);
    std::fs::create_dir(p.path().join("out")).unwrap();
    std::fs::write(p.path().join("out/a.txt"), "stale answer").unwrap();
    let out = p.run(&["--out", "out", "--quiet"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(
        std::fs::read_to_string(p.path().join("out/a.txt")).unwrap(),
        "fresh"
    );
    // Now the step fails: its old answer must not survive.
    let p2 = Project::new(
        &policy(&fake, ""),
        &wf.replace("'ok'", "'BREAK'").replace("if false", "if true"),
    );
    std::fs::create_dir(p2.path().join("out")).unwrap();
    std::fs::write(p2.path().join("out/a.txt"), "stale answer").unwrap();
    let out = p2.run(&["--out", "out", "--quiet"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        !p2.path().join("out/a.txt").exists(),
        "a failed step left an earlier answer in --out"
    );
    assert!(p2.path().join("out/run.json").exists());
}
