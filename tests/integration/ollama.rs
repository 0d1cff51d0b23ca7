//! Ollama's native API (`kind: ollama`, `/api/chat`) against the fake's
//! Ollama flavour: what is sent (options, keep_alive, format), the NDJSON
//! stream and its counts, its errors and what they tell the user, and that
//! it is a local provider. The bounded reads (endless stream, endless line,
//! huge bodies) are in `hostile`, which runs every dialect, Ollama's too.

use std::time::Duration;

use fake_llm::{FakeServer, Hostile, Reply};
use serde_json::json;
use tollgate::provider::{ChatRequest, ClientConfig, ErrorKind, Http, ProviderKind, client_for};

use crate::support::*;

fn ollama_policy(base: &str) -> String {
    format!(
        r#"version: 1
name: ollama
sensitivity: {{ levels: [public, internal, confidential, secret], cloud_max: public }}
providers:
  ollama: {{ kind: ollama, base_url: "{base}", keep_alive: "10m" }}
models:
  qwen: {{ provider: ollama, model: "qwen3:8b", tier: local, context_window: 8192 }}
rules:
  - {{ name: all, use: qwen }}
"#
    )
}

const WORKFLOW: &str = r#"version: 1
name: triage
inputs:
  ticket: { type: string, sensitivity: confidential }
steps:
  label:
    task: classify
    system: "Answer with JSON."
    prompt: "Label this ticket: {{ inputs.ticket }}"
    max_output_tokens: 50
    temperature: 0.3
    output:
      schema: { type: object, properties: { label: { type: string } }, required: [label] }
"#;

#[tokio::test]
async fn a_step_goes_to_api_chat_with_num_ctx_keep_alive_and_format() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text(r#"{"label": "bug"}"#).usage(26, 7));
    let project = Project::new(&ollama_policy(&fake.base_url()), WORKFLOW);
    for streamed in [true, false] {
        let mut args = vec![
            "-i",
            "ticket=the app crashes",
            "--format",
            "json",
            "--no-cache",
        ];
        if !streamed {
            args.push("--no-stream");
        }
        // No key anywhere: a local Ollama needs none.
        let out = project.run_env(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        let seen = fake.last_request();
        assert_eq!(seen.path, "/api/chat");
        assert!(seen.header("authorization").is_none());
        assert_eq!(
            seen.body,
            json!({
                "model": "qwen3:8b",
                "messages": [
                    {"role": "system", "content": "Answer with JSON."},
                    {"role": "user", "content": "Label this ticket: the app crashes"}
                ],
                "stream": streamed,
                // The context the plan counted with, not Ollama's small default.
                "options": {"num_ctx": 8192, "num_predict": 50, "temperature": 0.3},
                "keep_alive": "10m",
                "format": {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
            })
        );
        let r = report(&out);
        let s = step(&r, "label");
        assert_eq!(s["output"], json!({"label": "bug"}), "{s}");
        let usage = &s["calls"][0]["usage"];
        assert_eq!(
            (&usage["input_tokens"], &usage["output_tokens"]),
            (&json!(26), &json!(7)),
            "{s}"
        );
    }
    // Confidential data may go to it: loopback Ollama is local.
    let out = project
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "-i",
            "ticket=x",
        ])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("qwen → ollama qwen3:8b (local tier, local)"),
        "{}",
        stdout(&out)
    );
}

fn client(base: &str) -> std::sync::Arc<dyn tollgate::provider::Provider> {
    let mut config = ClientConfig::new(base);
    config.request_timeout = Duration::from_secs(20);
    config.stream_idle_timeout = Duration::from_secs(10);
    config.model_context.insert("qwen3:8b".into(), 4096);
    client_for(
        ProviderKind::Ollama,
        config,
        Http::without_proxy(Duration::from_secs(2)),
    )
}

fn request(stream: bool) -> ChatRequest {
    ChatRequest {
        stream,
        max_output_tokens: 64,
        ..ChatRequest::new("qwen3:8b", "hi")
    }
}

#[tokio::test]
async fn the_stream_is_read_line_by_line_with_thinking_apart_and_counts_from_the_last_line() {
    let fake = FakeServer::start().await;
    fake.set_default(
        Reply::text("Hello there, friend")
            .thinking("let me think")
            .usage(31, 12),
    );
    for stream in [true, false] {
        let r = client(&fake.base_url())
            .send(&request(stream))
            .await
            .unwrap();
        assert_eq!(r.text, "Hello there, friend");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (31, 12));
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.model, "qwen3:8b");
        assert_eq!(r.time_to_first_token.is_some(), stream);
        assert_eq!(fake.last_request().body["options"]["num_ctx"], 4096);
    }
    // `length` is a cut answer; counts absent when zero are zero.
    fake.push(Reply::text("cut").truncated().usage(0, 0));
    let r = client(&fake.base_url()).send(&request(true)).await.unwrap();
    assert!(r.truncated());
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (0, 0));
}

#[tokio::test]
async fn a_missing_model_says_to_pull_it_and_errors_keep_their_kind() {
    let fake = FakeServer::start().await;
    for stream in [true, false] {
        fake.push(Reply::not_found());
        let e = client(&fake.base_url())
            .send(&request(stream))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
        assert!(
            e.message.contains("model \"qwen3:8b\" not found")
                && e.message.contains("run `ollama pull qwen3:8b`"),
            "{}",
            e.message
        );
        assert!(!e.is_retryable());
    }
    // An error line after HTTP 200, mid-stream.
    fake.push(Reply::server_error().in_stream());
    let e = client(&fake.base_url())
        .send(&request(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Server, "{e:?}");
    assert!(
        e.message
            .contains("an error was encountered while running the model")
    );
    // A stream that ends before its `done: true` line was cut.
    fake.push(Reply::text("a long answer here").cut_after(2));
    let e = client(&fake.base_url())
        .send(&request(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::StreamBroken, "{e:?}");
    // A line that is not JSON.
    fake.push(Reply::malformed());
    let e = client(&fake.base_url())
        .send(&request(true))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed, "{e:?}");
}

#[tokio::test]
async fn a_stopped_ollama_says_to_run_ollama_serve_and_is_not_retried() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let project = Project::new(
        &ollama_policy(&format!("http://127.0.0.1:{port}")),
        WORKFLOW,
    );
    let out = project
        .run_env(&["-i", "ticket=x", "--format", "json"], &[])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let all = transcript(&out);
    assert!(
        all.contains(&format!("nothing is listening at http://127.0.0.1:{port}"))
            && all.contains("`ollama serve`"),
        "{all}"
    );
    let r = report(&out);
    let attempts = step(&r, "label")["calls"][0]["attempts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(attempts, 1, "a refused connection is not retried: {all}");
}

#[tokio::test]
async fn absurd_counts_are_judged_not_believed() {
    let fake = FakeServer::start().await;
    let project = Project::new(&ollama_policy(&fake.base_url()), WORKFLOW);
    for stream in [true, false] {
        fake.set_default(
            Reply::text(r#"{"label": "bug"}"#)
                .usage(26, 7)
                .hostile(Hostile::default().output(json!(u64::MAX)).input(json!(-5))),
        );
        let mut args = vec!["-i", "ticket=x", "--format", "json", "--no-cache"];
        if !stream {
            args.push("--no-stream");
        }
        let out = project.run_env(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        let r = report(&out);
        let usage = &step(&r, "label")["calls"][0]["usage"];
        let output = usage["output_tokens"].as_u64().unwrap();
        // Never more than the call was allowed (50), whatever was reported.
        assert!(output <= 50, "{usage}");
        assert_eq!(r["cost_usd"], json!(0.0), "{r}");
    }
}

#[test]
fn keep_alive_belongs_to_ollama_and_ollama_has_no_completions_route() {
    let policy = "version: 1\nname: p\nproviders:\n  o: { kind: openai-compatible, base_url: \"http://127.0.0.1:8080/v1\", keep_alive: 5m }\n  n: { kind: ollama }\nmodels:\n  m: { provider: o, model: x, tier: local, context_window: 4096 }\n  b: { provider: n, model: y, tier: local, context_window: 4096, endpoint: completions }\nrules:\n  - { name: all, use: m }\n";
    let project = Project::new(
        policy,
        "version: 1\nname: w\nsteps:\n  a: { task: t, prompt: hi }\n",
    );
    let out = project
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let all = transcript(&out);
    assert!(
        all.contains("`keep_alive` only applies to ollama providers"),
        "{all}"
    );
    assert!(all.contains("ollama has no completions endpoint"), "{all}");
}

#[tokio::test]
async fn launch_without_the_ollama_binary_says_how_to_install_it() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let policy = ollama_policy(&format!("http://127.0.0.1:{port}")).replace(
        "keep_alive: \"10m\" }",
        "keep_alive: \"10m\", launch: { binary: no-such-ollama-7f3a } }",
    );
    let project = Project::new(&policy, WORKFLOW);
    let out = project
        .run_env(&["-i", "ticket=x", "--format", "json"], &[])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let all = transcript(&out);
    assert!(
        all.contains("`no-such-ollama-7f3a` was not found") && all.contains("install Ollama"),
        "{all}"
    );
}

#[tokio::test]
async fn a_reasoning_model_declared_in_the_policy_gets_think() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("ok").thinking("hmm").usage(5, 9));
    let policy = ollama_policy(&fake.base_url()).replace(
        "context_window: 8192 }",
        "context_window: 8192, supports_reasoning: true }",
    );
    let workflow = "version: 1\nname: r\nsteps:\n  a: { task: debug, prompt: 'p-none', reasoning: none, max_output_tokens: 20 }\n  b: { task: debug, prompt: 'p-deep', reasoning: deep, max_output_tokens: 20 }\n  c: { task: debug, prompt: 'p-standard', max_output_tokens: 20 }\n";
    let project = Project::new(&policy, workflow);
    let out = project.run_env(&["--format", "json"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let requests = fake.requests();
    let body = |prompt: &str| {
        requests
            .iter()
            .find(|r| r.raw_body.contains(prompt))
            .unwrap_or_else(|| panic!("no request for {prompt}"))
            .body
            .clone()
    };
    assert_eq!(body("p-none")["think"], json!(false));
    assert_eq!(body("p-none")["options"]["num_predict"], 20);
    assert_eq!(body("p-deep")["think"], json!("high"));
    // Thinking is spent inside num_predict: the budget is added to it.
    assert_eq!(body("p-deep")["options"]["num_predict"], 20 + 16384);
    assert!(body("p-standard").get("think").is_none());
    // The thinking is not the answer.
    assert_eq!(step(&report(&out), "b")["output"], json!("ok"));
}
