//! Keys go only where they belong, and answers are read within bounds,
//! against servers that misbehave on purpose (`fake_llm::HostileServer`)
//! and fakes that echo the key back. Loopback only; no timed assertions.

use std::sync::Arc;
use std::time::Duration;

use fake_llm::{FakeServer, HostileServer, Misbehaviour, Reply};
use tollgate::provider::batch::{BatchItem, ItemOutcome, batch_client_for};
use tollgate::provider::{
    ChatRequest, ClientConfig, ErrorKind, Http, LimitOverrides, Provider, ProviderError,
    ProviderKind, client_for,
};

use crate::support::{Cmd, Project, transcript};

const KEY: &str = "sk-test-HOSTILE-9c2e41f07ab3d5e8";

/// Every kind, so every key header is covered: `authorization` (the OpenAI
/// family, local servers included), `x-api-key` (Anthropic),
/// `x-goog-api-key` (Gemini).
const KINDS: [ProviderKind; 6] = [
    ProviderKind::Openai,
    ProviderKind::OpenaiCompatible,
    ProviderKind::Mistral,
    ProviderKind::Openrouter,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
];

const DIALECTS: [ProviderKind; 4] = [
    ProviderKind::Openai,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
    ProviderKind::Ollama,
];

fn base(root: &str, kind: ProviderKind) -> String {
    match kind {
        ProviderKind::Anthropic | ProviderKind::Ollama => root.to_owned(),
        ProviderKind::Gemini => format!("{root}/v1beta"),
        _ => format!("{root}/v1"),
    }
}

fn config(root: &str, kind: ProviderKind) -> ClientConfig {
    let mut c = ClientConfig::new(base(root, kind)).with_api_key(KEY);
    c.request_timeout = Duration::from_secs(60);
    c.stream_idle_timeout = Duration::from_secs(30);
    c
}

fn http() -> Http {
    Http::without_proxy(Duration::from_secs(2))
}

fn client(root: &str, kind: ProviderKind) -> Arc<dyn Provider> {
    client_for(kind, config(root, kind), http())
}

fn model(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "claude-sonnet-4-5",
        ProviderKind::Gemini => "gemini-2.5-flash",
        ProviderKind::Ollama => "qwen3:8b",
        _ => "gpt-4o-mini",
    }
}

fn request(kind: ProviderKind, stream: bool) -> ChatRequest {
    ChatRequest {
        stream,
        max_output_tokens: 256,
        ..ChatRequest::new(model(kind), "hello")
    }
}

fn assert_key_free(text: &str) {
    assert!(!text.contains(KEY), "the API key leaked: {text}");
    assert!(
        !text.contains("HOSTILE-9c2e"),
        "part of the key leaked: {text}"
    );
}

fn assert_error_key_free(e: &ProviderError) {
    for text in [
        e.to_string(),
        format!("{e:?}"),
        e.body.clone().unwrap_or_default(),
    ] {
        assert_key_free(&text);
    }
}

async fn send(root: &str, kind: ProviderKind, stream: bool) -> Result<String, ProviderError> {
    client(root, kind)
        .send(&request(kind, stream))
        .await
        .map(|r| r.text)
}

// ---------------------------------------------------------------------------
// Redirects.

#[tokio::test]
async fn no_redirect_is_followed_whatever_header_carries_the_key() {
    let target = FakeServer::start().await;
    for kind in KINDS {
        for status in [301, 302, 303, 307, 308] {
            for stream in [false, true] {
                let hostile = HostileServer::start(Misbehaviour::Redirect {
                    status,
                    // Same path on another origin: a client that followed
                    // it would be answered normally there.
                    location: format!("{}/v1/chat/completions", target.base_url()),
                })
                .await;
                let e = send(&hostile.base_url(), kind, stream).await.unwrap_err();
                assert_eq!(e.kind, ErrorKind::Redirect, "{kind:?} {status}: {e:?}");
                assert_eq!(e.status, Some(status));
                assert!(!e.is_retryable());
                assert_error_key_free(&e);
                assert_eq!(hostile.seen().len(), 1, "{kind:?} {status}");
            }
        }
    }
    assert_eq!(
        target.request_count(),
        0,
        "a redirect was followed: {:?}",
        target.requests().first().map(|r| &r.headers)
    );
}

#[tokio::test]
async fn batch_calls_and_downloads_never_follow_a_redirect() {
    let target = FakeServer::start().await;
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let hostile = HostileServer::start(Misbehaviour::Redirect {
            status: 307,
            location: format!("{}/v1/batches", target.base_url()),
        })
        .await;
        let api = batch_client_for(kind, config(&hostile.base_url(), kind), http()).unwrap();
        let items = [BatchItem {
            custom_id: "a".into(),
            request: request(kind, false),
        }];
        let e = api.submit(&items).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Redirect, "{kind:?} {e:?}");
        let e = api.poll("batch_1").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Redirect, "{kind:?} {e:?}");
        let e = api.results("batch_1").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Redirect, "{kind:?} {e:?}");
        assert_error_key_free(&e);
    }
    assert_eq!(target.request_count(), 0);
}

// ---------------------------------------------------------------------------
// A key echoed back.

#[tokio::test]
async fn a_key_echoed_in_an_answer_a_stream_or_an_error_never_leaves_the_client() {
    for kind in DIALECTS {
        let fake = FakeServer::start().await;
        fake.set_handler(|r| {
            let key = r.presented_key().unwrap_or_default();
            Reply::text(format!("your key is {key} ok")).model(format!("model-{key}"))
        });
        for stream in [false, true] {
            let resp = client(&fake.base_url(), kind)
                .send(&request(kind, stream))
                .await
                .unwrap();
            assert!(resp.text.contains("your key is [redacted] ok"), "{resp:?}");
            assert_key_free(&format!("{resp:?}"));
        }
        // In an error body, and in the message quoted from it.
        let body = serde_json::json!({"error": {"type": "invalid_request_error",
            "message": format!("bad key {KEY}")}});
        fake.push(Reply::raw(400, "application/json", body.to_string()));
        let e = send(&fake.base_url(), kind, false).await.unwrap_err();
        assert!(e.message.contains("[redacted]"), "{e:?}");
        assert_error_key_free(&e);
        // Inside a stream, after HTTP 200.
        let event = serde_json::json!({"type": "error", "error": {"type": "api_error",
            "message": format!("boom {KEY}")}});
        fake.push(Reply::raw(
            200,
            "text/event-stream",
            format!("event: error\ndata: {event}\n\n"),
        ));
        let e = send(&fake.base_url(), kind, true).await.unwrap_err();
        assert_error_key_free(&e);
    }
}

#[tokio::test]
async fn a_key_echoed_in_batch_results_is_scrubbed() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let fake = FakeServer::start().await;
        fake.set_default(Reply::text(format!("echo {KEY}")));
        let root = fake.base_url();
        let api = batch_client_for(kind, config(&root, kind), http()).unwrap();
        let items = [BatchItem {
            custom_id: "a".into(),
            request: request(kind, false),
        }];
        let id = api.submit(&items).await.unwrap();
        while !matches!(
            api.poll(&id).await.unwrap(),
            tollgate::provider::batch::BatchState::Ended { .. }
        ) {}
        let results = api.results(&id).await.unwrap();
        let ItemOutcome::Answer(a) = &results["a"] else {
            panic!("{kind:?}: no answer: {results:?}");
        };
        assert_eq!(a.text, "echo [redacted]");
    }
}

// ---------------------------------------------------------------------------
// Bounded answers.

/// What a misbehaving answer does to a call of `kind`.
async fn against(
    behaviour: Misbehaviour,
    kind: ProviderKind,
    stream: bool,
) -> (ProviderError, u64) {
    let hostile = HostileServer::start(behaviour.clone()).await;
    let result = send(&hostile.base_url(), kind, stream).await;
    let e = match result {
        Ok(text) => panic!("{kind:?} {behaviour:?}: an answer of {} bytes", text.len()),
        Err(e) => e,
    };
    assert_error_key_free(&e);
    (e, hostile.bytes_sent())
}

/// Far below what the misbehaving server would send (GiBs), far above the
/// default limits of a 256-token call (about 1.25 MiB).
const READ_AT_MOST: u64 = 64 << 20;

#[tokio::test]
async fn an_endless_stream_fails_cleanly_after_a_bounded_read() {
    for kind in DIALECTS {
        let (e, sent) = against(Misbehaviour::EndlessStream, kind, true).await;
        assert_eq!(e.kind, ErrorKind::ResponseTooLarge, "{kind:?}: {e:?}");
        assert!(!e.is_retryable());
        assert!(sent < READ_AT_MOST, "{kind:?}: {sent} bytes were read");
    }
}

#[tokio::test]
async fn a_one_gigabyte_body_fails_cleanly_after_a_bounded_read() {
    for kind in DIALECTS {
        for behaviour in [
            Misbehaviour::HugeBody { bytes: 1 << 30 },
            Misbehaviour::HugeBodyWithLength { bytes: 1 << 30 },
        ] {
            let (e, sent) = against(behaviour.clone(), kind, false).await;
            assert_eq!(e.kind, ErrorKind::ResponseTooLarge, "{kind:?}: {e:?}");
            assert!(sent < READ_AT_MOST, "{kind:?} {behaviour:?}: {sent} bytes");
        }
    }
}

#[tokio::test]
async fn one_sse_line_that_never_ends_fails_cleanly() {
    for kind in DIALECTS {
        let (e, sent) = against(Misbehaviour::HugeLine, kind, true).await;
        assert_eq!(e.kind, ErrorKind::ResponseTooLarge, "{kind:?}: {e:?}");
        assert!(e.message.contains("line"), "{e:?}");
        assert!(sent < READ_AT_MOST, "{kind:?}: {sent} bytes");
    }
}

#[tokio::test]
async fn a_slow_drip_of_keep_alives_ends_at_the_request_timeout() {
    let hostile = HostileServer::start(Misbehaviour::SlowDrip {
        every: Duration::from_millis(20),
    })
    .await;
    for kind in DIALECTS {
        let mut c = config(&hostile.base_url(), kind);
        // Each drip resets the idle timer; only the whole call's bound ends it.
        c.request_timeout = Duration::from_millis(500);
        let e = client_for(kind, c, http())
            .send(&request(kind, true))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout, "{kind:?}: {e:?}");
    }
}

#[tokio::test]
async fn a_huge_error_body_is_read_only_in_part_and_truncated() {
    for kind in DIALECTS {
        let (e, sent) = against(
            Misbehaviour::HugeErrorBody {
                status: 500,
                bytes: 1 << 30,
            },
            kind,
            false,
        )
        .await;
        assert_eq!(e.status, Some(500), "{e:?}");
        assert!(sent < READ_AT_MOST, "{kind:?}: {sent} bytes");
        assert!(
            e.body.as_deref().unwrap_or_default().len() <= tollgate::provider::MAX_ERROR_BODY + 3,
            "{}",
            e.body.as_deref().unwrap_or_default().len()
        );
        assert!(e.message.len() < 1024, "{}", e.message.len());
    }
}

#[tokio::test]
async fn the_policy_overrides_the_limits_per_provider_and_per_model() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("word ".repeat(400)));
    let kind = ProviderKind::Openai;
    for stream in [false, true] {
        // The provider's limit: 1000 bytes, less than the 2000-byte answer.
        let mut c = config(&fake.base_url(), kind);
        c.response_limits = LimitOverrides {
            max_response_bytes: Some(1000),
            max_stream_events: None,
        };
        let p = client_for(kind, c.clone(), http());
        let e = p.send(&request(kind, stream)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResponseTooLarge, "{e:?}");
        // The model's own limit wins over the provider's.
        c.model_response_limits.insert(
            model(kind).to_owned(),
            LimitOverrides {
                max_response_bytes: Some(10 << 20),
                max_stream_events: None,
            },
        );
        let p = client_for(kind, c.clone(), http());
        p.send(&request(kind, stream)).await.unwrap();
        // Streams: the number of events.
        if stream {
            c.model_response_limits.insert(
                model(kind).to_owned(),
                LimitOverrides {
                    max_response_bytes: None,
                    max_stream_events: Some(5),
                },
            );
            let e = client_for(kind, c, http())
                .send(&request(kind, true))
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::ResponseTooLarge, "{e:?}");
            assert!(e.message.contains("events"), "{e:?}");
        }
    }
}

#[tokio::test]
async fn a_batch_results_download_is_bounded() {
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let fake = FakeServer::start().await;
        fake.set_default(Reply::text("x".repeat(4000)));
        let mut c = config(&fake.base_url(), kind);
        c.max_batch_download_bytes = 8000;
        let api = batch_client_for(kind, c, http()).unwrap();
        let items: Vec<BatchItem> = (0..4)
            .map(|n| BatchItem {
                custom_id: format!("i{n}"),
                request: request(kind, false),
            })
            .collect();
        let id = api.submit(&items).await.unwrap();
        while !matches!(
            api.poll(&id).await.unwrap(),
            tollgate::provider::batch::BatchState::Ended { .. }
        ) {}
        let e = api.results(&id).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResponseTooLarge, "{kind:?}: {e:?}");
    }
}

// ---------------------------------------------------------------------------
// End to end: the binary.

/// A one-provider policy on `root` (OpenAI dialect).
fn openai_policy(root: &str, extra_provider: &str) -> String {
    format!(
        "version: 1\nproviders:\n  openai: {{ kind: openai, base_url: \"{root}/v1\", api_key_env: TEST_OPENAI_KEY{extra_provider} }}\nmodels:\n  budget: {{ provider: openai, model: gpt-4.1-nano, tier: budget }}\nrules:\n  - {{ name: all, use: budget }}\n"
    )
}

const TWO_STEPS: &str = "version: 1\nname: echo\nsteps:\n  first:\n    task: summarize\n    prompt: \"say it\"\n    max_output_tokens: 64\n  second:\n    task: summarize\n    needs: [first]\n    prompt: \"fail now: {{ steps.first.output }}\"\n    max_output_tokens: 64\n";

/// Every byte under `dir` (outputs, run.json, the journal and its WAL,
/// logs), as lossy text.
fn everything_under(dir: &std::path::Path) -> String {
    let mut all = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                all.push_str(&format!("\n=== {}\n", path.display()));
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    all
}

#[tokio::test]
async fn a_key_a_server_echoes_reaches_no_output_file_or_journal() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        let key = r.presented_key().unwrap_or_default();
        if r.raw_body.contains("fail now") {
            let body = serde_json::json!({"error": {"type": "invalid_request_error",
                "message": format!("the key {key} may not say that")}});
            Reply::raw(400, "application/json", body.to_string())
        } else {
            Reply::text(format!("the key is {key}"))
        }
    });
    for mode in [&[][..], &["--no-stream"][..], &["--format", "json"][..]] {
        let project = Project::new(&openai_policy(&fake.base_url(), ""), TWO_STEPS);
        let mut args = vec!["--out", "out", "--no-cache"];
        args.extend_from_slice(mode);
        let out = project.run_env(&args, &[("TEST_OPENAI_KEY", KEY)]).await;
        let text = transcript(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        assert_key_free(&text);
        let files = everything_under(project.path());
        assert!(files.contains("the key is [redacted]"), "{files}");
        assert_key_free(&files);
    }
    assert!(fake.request_count() >= 6);
}

#[tokio::test]
async fn an_endless_stream_fails_the_step_and_is_journaled_at_its_worst_case() {
    let hostile = HostileServer::start(Misbehaviour::EndlessStream).await;
    let wf = "version: 1\nname: endless\nsteps:\n  only:\n    task: summarize\n    prompt: \"go\"\n    max_output_tokens: 64\n    retries: 0\n";
    let project = Project::new(&openai_policy(&hostile.base_url(), ""), wf);
    let out = project
        .run_env(&["--format", "json"], &[("TEST_OPENAI_KEY", KEY)])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let report = crate::support::report(&out);
    let step = crate::support::step(&report, "only");
    assert_eq!(step["status"], "failed", "{step}");
    let text = step.to_string();
    assert!(text.contains("response_too_large"), "{text}");
    // Usage is unknown: the call is counted at its worst case.
    let cost = report["cost_usd"].as_f64().unwrap_or_default();
    assert!(cost > 0.0, "{report}");
    assert!(hostile.bytes_sent() < READ_AT_MOST);
}

#[tokio::test]
async fn a_cloud_provider_on_plain_http_is_a_warning_at_check_and_plan_and_an_error_at_run() {
    let remote = "http://api.example.invalid";
    let project = Project::new(&openai_policy(remote, ""), TWO_STEPS);
    // Exit 0 with a warning located at the provider (policy.yaml:3), at
    // check and at plan.
    insta_cmd::assert_cmd_snapshot!(
        "plain_http_check",
        project.tollgate(&["check", "policy.yaml"]).into_std()
    );
    insta_cmd::assert_cmd_snapshot!(
        "plain_http_plan",
        project
            .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
            .into_std()
    );
    let run = project.run_env(&[], &[("TEST_OPENAI_KEY", KEY)]).await;
    let text = transcript(&run);
    assert_eq!(run.status.code(), Some(2), "{text}");
    assert!(text.contains("allow_insecure"), "{text}");
    // Allowed by the policy: no warning.
    let allowed = Project::new(&openai_policy(remote, ", allow_insecure: true"), TWO_STEPS);
    let check = crate::support::tollgate_in(allowed.path(), &["check", "policy.yaml"]);
    assert!(!transcript(&check).contains("plain http://"));
    // Loopback needs no permission, and a userinfo trick is not loopback.
    let local = Project::new(&openai_policy("http://127.0.0.1:9", ""), TWO_STEPS);
    let check = crate::support::tollgate_in(local.path(), &["check", "policy.yaml"]);
    assert!(!transcript(&check).contains("plain http://"));
    let tricked = Project::new(
        &openai_policy("http://127.0.0.1:9@api.example.invalid", ""),
        TWO_STEPS,
    );
    let check = crate::support::tollgate_in(tricked.path(), &["check", "policy.yaml"]);
    assert!(transcript(&check).contains("plain http://"));
}

#[test]
fn a_key_pasted_where_a_name_belongs_is_masked_in_every_diagnostic() {
    let key = "sk-proj-Zq81abcdefghijklmnopqrstuvwxyz0123";
    let bearer = "sk-ant-api03-Xy7zzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
    let policy = format!(
        "version: 1\nproviders:\n  oa:\n    kind: openai\n    api_key_env: {key}\n    headers:\n      Authorization: \"Bearer {bearer}\"\nmodels:\n  m: {{ provider: oa, model: gpt-4o-mini, tier: budget }}\nrules:\n  - {{ name: all, use: m }}\n"
    );
    every_command_refuses_and_masks(
        &policy,
        "api_key_env",
        &[key, bearer, "Zq81abcdefghij", "Xy7zzzzzzzzz"],
    );
    // A key that is also a valid variable name passes the schema: it is
    // refused as a key, and masked there too.
    let google = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW";
    let policy = format!(
        "version: 1\nproviders:\n  g:\n    kind: gemini\n    api_key_env: {google}\nmodels:\n  m: {{ provider: g, model: gemini-2.5-flash, tier: budget }}\nrules:\n  - {{ name: all, use: m }}\n"
    );
    every_command_refuses_and_masks(&policy, "looks like an API key", &["SyA1b2C3d4E5"]);
}

/// `check` (text and JSON), `plan` and `run` of a two-step workflow under
/// `policy`: each exits 2, says `expect`, and shows none of `secrets`.
fn every_command_refuses_and_masks(policy: &str, expect: &str, secrets: &[&str]) {
    let project = Project::new(policy, TWO_STEPS);
    for args in [
        &["check", "policy.yaml"][..],
        &["check", "policy.yaml", "--format", "json"][..],
        &["plan", "wf.yaml", "--policy", "policy.yaml"][..],
        &["run", "wf.yaml", "--policy", "policy.yaml"][..],
    ] {
        let out = crate::support::tollgate_in(project.path(), args);
        let text = transcript(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains(expect), "{text}");
        for secret in secrets {
            assert!(!text.contains(secret), "{args:?} leaked {secret}: {text}");
        }
    }
}

/// `tollgate test` in `dir` with the test key set.
async fn suite_test(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["test"];
    all.extend_from_slice(args);
    Cmd::new(dir, &all).env("TEST_OPENAI_KEY", KEY).await
}

const ONE_STEP: &str = "version: 1\nname: echo\nsteps:\n  first:\n    task: summarize\n    prompt: \"say it\"\n    max_output_tokens: 64\n";

const SUITE: &str = "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases:\n  - name: echo\n    expect:\n      first: { contains: key, snapshot: true }\n";

#[tokio::test]
async fn a_key_a_server_echoes_reaches_no_snapshot_cassette_or_results_file() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        Reply::text(format!(
            "the key is {}",
            r.presented_key().unwrap_or_default()
        ))
    });
    let project = Project::new(&openai_policy(&fake.base_url(), ""), ONE_STEP);
    let project = project.with("evals/echo.yaml", SUITE);
    let dir = project.path();
    for args in [
        &[
            "--record",
            "--junit",
            "junit.xml",
            "--results",
            "results.json",
        ][..],
        &[
            "--junit",
            "junit2.xml",
            "--results",
            "results2.json",
            "--format",
            "json",
        ][..],
    ] {
        let out = suite_test(dir, args).await;
        assert_key_free(&transcript(&out));
    }
    let files = everything_under(dir);
    assert!(
        files.contains("junit.xml") && files.contains(".snap"),
        "{files}"
    );
    assert!(files.contains("the key is [redacted]"), "{files}");
    assert_key_free(&files);
}

#[tokio::test]
async fn a_live_suite_refuses_a_cloud_provider_on_plain_http() {
    let project = Project::new(&openai_policy("http://api.example.invalid", ""), ONE_STEP);
    let project = project.with("evals/echo.yaml", SUITE);
    let dir = project.path();
    let out = suite_test(dir, &[]).await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("plain http://"), "{text}");
}

#[tokio::test]
async fn a_local_provider_is_called_directly_never_through_a_proxy() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("local answer"));
    // A "proxy" that would record what it is sent.
    let proxy = HostileServer::start(Misbehaviour::HugeErrorBody {
        status: 502,
        bytes: 10,
    })
    .await;
    let policy = format!(
        "version: 1\nproviders:\n  local: {{ kind: openai-compatible, base_url: \"{}/v1\" }}\nmodels:\n  m: {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}\nrules:\n  - {{ name: all, use: m }}\n",
        fake.base_url()
    );
    let project = Project::new(&policy, ONE_STEP);
    let p = proxy.base_url();
    let out = project
        .run_env(
            &["--no-cache"],
            &[
                ("HTTP_PROXY", &p),
                ("http_proxy", &p),
                ("ALL_PROXY", &p),
                ("all_proxy", &p),
                ("NO_PROXY", ""),
                ("no_proxy", ""),
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(transcript(&out).contains("local answer"));
    assert_eq!(proxy.seen().len(), 0, "{:?}", proxy.seen());
    assert_eq!(fake.request_count(), 1);
}
